/* Predicted and ideal iteration times from measured traces, against closed forms of
 * GPipe: with free links T = (M + S - 1)(f + b) + opt, and each hop of a link with delay d
 * adds d (plus the message's time on the wire) to the forward and to the backward pass;
 * one stage computing k times slower makes T = sum_s f_s + (M - 1) max f + the same for b.
 * The straggler metrics must match the simulator's expectation (its time with the slow
 * stage over its time without) for both schedules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "bench/predict.h"
#include "schedules/sched.h"
#include "tests/test_bench_synth.h"
#include "tests/testutil.h"

#include <errno.h>

static double worst;

static void near(const char *what, double got, double want, double tol)
{
    double d = tu_reldiff(got, want, 1e-12);
    worst = isnan(d) ? INFINITY : fmax(worst, d);
    print_message("%s: %.9g, reference %.9g (relative difference %.2g, tolerance %.0e)\n", what, got, want, d, tol);
    if (!(d <= tol))   /* NaN fails too */
        fail_msg("%s: %.12g vs %.12g", what, got, want);
}

/* iters: measured iterations, after `warmup` more. */
static void cell_of(results_cell_t *c, const char *schedule, int S, int M, int iters, int warmup)
{
    results_cell_clear(c, 0);
    snprintf(c->schedule, sizeof c->schedule, "%s", schedule);
    c->stages = S;
    c->micro_batches = M;
    c->iters = iters;
    c->warmup = warmup;
    c->repeats = 1;
}

static void test_predicted_gpipe_closed_form(void **state)
{
    (void)state;
    const int S = 3, M = 4;
    const double f = 0.010, b = 0.020;
    results_t r;
    results_init(&r);
    assert_int_equal(synth_trace(&r, 0, S, M, 3, f, b, 0.0), 0);
    results_cell_t c;
    cell_of(&c, "gpipe", S, M, 2, 1);
    /* Iterations 1 and 2 run 1.01 and 1.02 times f and b: their median is 1.015. */
    double fm = 1.015 * f, bm = 1.015 * b, opt = 0.2 * f;
    netem_profile_t p;
    char err[512];
    double t;
    worst = 0;
    assert_int_equal(netem_profile_parse("default", &p, err, sizeof err), 0);
    if (predict_time(&r, &c, 0, &p, &t, err, sizeof err))
        fail_msg("%s", err);
    near("gpipe, free links", t, (M + S - 1) * (fm + bm) + opt, 1e-9);

    assert_int_equal(netem_profile_parse("10ms/1Gbps", &p, err, sizeof err), 0);
    sim_link_t l;
    predict_link(&p, &l);
    assert_true(l.delay == 0.010);
    double wire = 1024 * 8 / l.bandwidth;
    print_message("goodput of 1 Gbit/s: %.4g bit/s\n", l.bandwidth);
    assert_true(l.bandwidth > 0.9e9 && l.bandwidth < 1e9);
    if (predict_time(&r, &c, 0, &p, &t, err, sizeof err))
        fail_msg("%s", err);
    near("gpipe, 10ms/1Gbps", t, (M + S - 1) * (fm + bm) + 2 * (S - 1) * (0.010 + wire) + opt, 1e-9);
    results_destroy(&r);
}

/* Under the default profile the link's only model is the path the transfers measured:
 * with every message 5 ms from send to the waiting receiver, the link carries 1024 bytes
 * per 5 ms, and each hop adds 5 ms to both passes. */
static void test_measured_path(void **state)
{
    (void)state;
    const int S = 3, M = 4;
    const double f = 0.010, b = 0.020, c = 0.005;
    results_t r;
    results_init(&r);
    assert_int_equal(synth_trace(&r, 0, S, M, 3, f, b, c), 0);
    results_cell_t cl;
    cell_of(&cl, "gpipe", S, M, 2, 1);
    worst = 0;
    near("path bandwidth, activations", predict_path_bandwidth(&r, &cl, 0, 0), 1024 * 8 / c, 1e-9);
    near("path bandwidth, gradients", predict_path_bandwidth(&r, &cl, 1, 0), 1024 * 8 / c, 1e-9);
    netem_profile_t p;
    char err[512];
    double t;
    assert_int_equal(netem_profile_parse("default", &p, err, sizeof err), 0);
    if (predict_time(&r, &cl, 0, &p, &t, err, sizeof err))
        fail_msg("%s", err);
    near("gpipe, measured path", t, (M + S - 1) * 1.015 * (f + b) + 2 * (S - 1) * c + 0.2 * f, 1e-9);
    /* A profile slower than the path keeps its own rate: 1 Mbit/s is below 1.6 Mbit/s. */
    assert_int_equal(netem_profile_parse("0ms/1Mbps", &p, err, sizeof err), 0);
    sim_link_t fwd, bwd;
    predict_cell_links(&r, &cl, &p, &fwd, &bwd);
    near("1 Mbit/s profile", fwd.bandwidth, netem_profile_goodput(1e6, 1500), 1e-12);
    results_destroy(&r);
}

/* One measured iteration whose compute ran three times slower (a busy machine) moves the
 * prediction of that iteration, not of the others: the predicted time is the median of the
 * per-iteration predictions, here iteration 3's (GPipe closed form at 1.03 f and b),
 * where costs averaged over the iterations would give 1.7 times that. */
static void test_predicted_per_iteration(void **state)
{
    (void)state;
    const int S = 3, M = 4;
    const double f = 0.010, b = 0.020;
    results_t r;
    results_init(&r);
    assert_int_equal(synth_trace(&r, 0, S, M, 4, f, b, 0.0), 0);
    for (size_t i = 0; i < r.n_ops; i++) {
        results_op_t *o = &r.ops[i];
        if (o->iteration == 2 && (!strcmp(o->op, "FWD") || !strcmp(o->op, "BWD")))
            o->end = o->start + 3 * (o->end - o->start);
    }
    results_cell_t c;
    cell_of(&c, "gpipe", S, M, 3, 1);
    netem_profile_t p;
    char err[512];
    double t;
    worst = 0;
    assert_int_equal(netem_profile_parse("default", &p, err, sizeof err), 0);
    if (predict_time(&r, &c, 0, &p, &t, err, sizeof err))
        fail_msg("%s", err);
    near("gpipe, one slow iteration of three", t, (M + S - 1) * 1.03 * (f + b) + 0.2 * f, 1e-9);
    results_destroy(&r);
}

/* The trace a perfectly modelled run would record: sim_run's spans as trace rows. */
static void trace_from_sim(results_t *r, const char *schedule, int S, int M, const sim_cost_t *cost, int iters)
{
    sim_config_t cfg = {.schedule = schedule, .stages = S, .micro_batches = M, .cost = cost,
                        .act_bytes = 4096, .grad_bytes = 4096};
    sim_result_t res = {0};
    char err[512];
    if (sim_run(&cfg, &res, err, sizeof err))
        fail_msg("%s", err);
    double t0 = 0.5;
    for (int k = 0; k < iters; k++) {
        for (int s = 0; s < S; s++)
            for (size_t j = 0; j < res.plan.n_ops[s]; j++) {
                const sched_op_t *op = &res.plan.ops[s][j];
                results_op_t o = {.cell = 0, .repeat = 0, .rank = s, .iteration = k, .micro_batch = op->mb,
                                  .start = t0 + res.span[s][j].start, .end = t0 + res.span[s][j].end,
                                  .bytes = op->kind == SCHED_SEND_ACT || op->kind == SCHED_SEND_GRAD ? 4096 : 0};
                snprintf(o.op, sizeof o.op, "%s", sched_op_kind_name(op->kind));
                assert_int_equal(results_op_add(r, &o), 0);
            }
        t0 += res.time;
    }
    sim_result_destroy(&res);
}

static const double f = 0.010, b = 0.020, opt = 0.001, k = 1.5;

/* sim_run's iteration time; cost NULL = every stage (f, b, opt). */
static double sim_time(const char *schedule, int S, int M, const sim_cost_t *cost)
{
    sim_cost_t even[8];
    for (int s = 0; s < S; s++)
        even[s] = (sim_cost_t){f, b, opt};
    sim_config_t cfg = {.schedule = schedule, .stages = S, .micro_batches = M, .cost = cost ? cost : even,
                        .act_bytes = 4096, .grad_bytes = 4096};
    sim_result_t res = {0};
    char err[512];
    if (sim_run(&cfg, &res, err, sizeof err))
        fail_msg("%s", err);
    double t = res.time;
    sim_result_destroy(&res);
    return t;
}

static void test_straggler_replay(void **state)
{
    (void)state;
    const int S = 3, M = 8;
    sim_cost_t cost[3] = {{f, b, opt}, {k * f, k * b, opt}, {f, b, opt}};
    netem_profile_t p;
    char err[512];
    assert_int_equal(netem_profile_parse("default", &p, err, sizeof err), 0);
    worst = 0;
    for (int a = 0; a < 2; a++) {
        const char *schedule = a ? "1f1b" : "gpipe";
        results_t r;
        results_init(&r);
        trace_from_sim(&r, schedule, S, M, cost, 3);
        results_cell_t c;
        cell_of(&c, schedule, S, M, 2, 1);
        c.stages = S;
        metrics_params_t mp = {.warmup = 1, .batch_size = M, .seq_len = 1};
        if (metrics_cell_compute(&r, &mp, &c, err, sizeof err))
            fail_msg("%s", err);
        double ideal, delay, slowdown;
        if (predict_ideal(&r, &c, &p, &ideal, err, sizeof err))
            fail_msg("%s", err);
        metrics_straggler(c.iter_median, ideal, &delay, &slowdown);
        /* The simulator's expectation for this configuration: its time with the slow
         * stage over its time without; for GPipe also the closed form (the slow stage
         * paces the steady state of both passes). */
        double t = sim_time(schedule, S, M, cost), t_ideal = sim_time(schedule, S, M, NULL);
        if (!a) {
            near("gpipe closed form, straggler", t, (2 * f + k * f) + (M - 1) * k * f + (2 * b + k * b) +
                 (M - 1) * k * b + opt, 1e-9);
            near("gpipe closed form, even", t_ideal, (M + S - 1) * (f + b) + opt, 1e-9);
        }
        char what[64];
        snprintf(what, sizeof what, "%s measured", schedule);
        near(what, c.iter_median, t, 1e-9);
        snprintf(what, sizeof what, "%s ideal", schedule);
        near(what, ideal, t_ideal, 1e-9);
        snprintf(what, sizeof what, "%s slowdown", schedule);
        near(what, slowdown, t / t_ideal, 1e-9);
        assert_true(fabs(slowdown - 1 / (1 - delay)) < 1e-12);
        results_destroy(&r);
    }
    /* With nobody slow the replay gives back the measurement. */
    sim_cost_t even[3] = {{f, b, opt}, {f, b, opt}, {f, b, opt}};
    results_t r;
    results_init(&r);
    trace_from_sim(&r, "1f1b", S, M, even, 2);
    results_cell_t c;
    cell_of(&c, "1f1b", S, M, 1, 1);
    double ideal;
    if (predict_ideal(&r, &c, &p, &ideal, err, sizeof err))
        fail_msg("%s", err);
    near("no straggler: ideal", ideal, (M + S - 1) * (f + b) + opt, 1e-9);
    results_destroy(&r);
    print_message("largest relative difference %.2g\n", worst);
}

/* The what-if straggler metrics on traces a perfectly modelled run would record: stage
 * S-1 carries an LM head (twice the FLOPs and the time of the others), optionally stage 1
 * computes k times slower. Reference: the simulator's time of the same configuration with
 * the slow stage at the typical rate (slowdown), and with every stage's compute scaled to
 * the mean (imbalance). */
static void whatif_case(const char *schedule, int S, int M, int slow, int head, netem_profile_t *p)
{
    sim_cost_t cost[8], expect[8], even[8];
    double flop[8], c[8], mean = 0, rate = 1e-12; /* s per FLOP at the typical rate */
    for (int s = 0; s < S; s++) {
        double w = head && s == S - 1 ? 2.0 : 1.0;
        flop[s] = w * (M * (f + b) + opt) / rate;
        expect[s] = (sim_cost_t){w * f, w * b, w * opt};
        double x = s == slow ? k : 1.0;
        cost[s] = (sim_cost_t){x * w * f, x * w * b, x * w * opt};
        c[s] = M * (cost[s].fwd + cost[s].bwd) + cost[s].opt;
        mean += rate * flop[s] / S;
    }
    for (int s = 0; s < S; s++) {
        double g = mean / c[s];
        even[s] = (sim_cost_t){g * cost[s].fwd, g * cost[s].bwd, g * cost[s].opt};
    }
    results_t r;
    results_init(&r);
    trace_from_sim(&r, schedule, S, M, cost, 3);
    results_cell_t cl;
    cell_of(&cl, schedule, S, M, 2, 1);
    char err[512];
    metrics_params_t mp = {.warmup = 1, .batch_size = M, .seq_len = 1};
    if (metrics_cell_compute(&r, &mp, &cl, err, sizeof err))
        fail_msg("%s", err);
    predict_whatif_t w;
    if (predict_whatif(&r, &cl, p, flop, &w, err, sizeof err))
        fail_msg("%s", err);
    double slowdown = w.slowdown;
    near("replay as measured", w.as_measured, cl.iter_median, 1e-9);
    double t = sim_time(schedule, S, M, cost), te = sim_time(schedule, S, M, expect), tv = sim_time(schedule, S, M, even);
    char what[96];
    snprintf(what, sizeof what, "%s S=%d slow=%d head=%d: slowdown", schedule, S, slow, head);
    near(what, slowdown, t / te, 1e-9);
    snprintf(what, sizeof what, "%s S=%d slow=%d head=%d: imbalance", schedule, S, slow, head);
    near(what, w.imbalance, te / tv, 1e-9);
    if (slow < 0) {
        assert_true(fabs(slowdown - 1.0) < 1e-9);
    } else {
        assert_int_equal(w.slow_stage, slow);
        near("slow stage's rate over the typical one", w.slow_factor, k, 1e-9);
        assert_true(slowdown > 1.0); /* small where the head's stage paces anyway */
    }
    if (head)
        assert_true(w.imbalance > 1.05);
    else if (slow < 0)
        assert_true(fabs(w.imbalance - 1.0) < 1e-9);
    results_destroy(&r);
}

static void test_whatif(void **state)
{
    (void)state;
    netem_profile_t p;
    char err[512];
    static const char *const schedules[] = {"gpipe", "1f1b"};
    worst = 0;
    assert_int_equal(netem_profile_parse("default", &p, err, sizeof err), 0);
    for (size_t a = 0; a < 2; a++) {
        const char *schedule = schedules[a];
        whatif_case(schedule, 4, 8, -1, 1, &p); /* balanced, LM head: slowdown 1, imbalance > 1 */
        whatif_case(schedule, 4, 8, -1, 0, &p); /* nothing: both 1 */
        whatif_case(schedule, 4, 8, 1, 1, &p);  /* --straggler 1:1.5 with the head */
        whatif_case(schedule, 2, 4, 1, 0, &p);  /* two stages: the faster is the typical */
    }
    print_message("largest relative difference %.2g\n", worst);
    /* No FLOPs, no expected time. */
    results_t r;
    results_init(&r);
    results_cell_t cl;
    cell_of(&cl, "gpipe", 2, 2, 1, 1);
    predict_whatif_t w;
    assert_int_equal(predict_whatif(&r, &cl, &p, NULL, &w, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "no FLOP count"));
    double flop[2] = {1e9, 1e9};
    assert_int_equal(predict_whatif(&r, &cl, &p, flop, &w, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "no measured compute op"));
    results_destroy(&r);
}

static void test_errors(void **state)
{
    (void)state;
    results_t r;
    results_init(&r);
    results_cell_t c;
    cell_of(&c, "gpipe", 2, 2, 2, 1);
    netem_profile_t p = {0};
    char err[512] = "";
    double t;
    assert_int_equal(predict_time(&r, &c, 0, &p, &t, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "stage 0 has no measured FWD"));
    assert_int_equal(predict_ideal(&r, &c, &p, &t, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "no measured iteration"));
    results_op_t o = {.cell = 0, .rank = 0, .iteration = 1, .micro_batch = 0, .start = 0, .end = 1};
    snprintf(o.op, sizeof o.op, "WARP");
    assert_int_equal(results_op_add(&r, &o), 0);
    assert_int_equal(predict_ideal(&r, &c, &p, &t, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "unknown op 'WARP'"));
    results_destroy(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_predicted_gpipe_closed_form),
        cmocka_unit_test(test_measured_path),
        cmocka_unit_test(test_predicted_per_iteration),
        cmocka_unit_test(test_straggler_replay),
        cmocka_unit_test(test_whatif),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests_name("bench_predict", tests, NULL, NULL);
}
