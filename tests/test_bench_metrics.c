/* Metrics on a hand-written trace: 2 stages, 1 micro-batch, 4 iterations (the first is
 * warm-up). Every expected value below is worked out by hand from the op times. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "bench/metrics.h"
#include "tests/testutil.h"

#include <errno.h>

/* Iteration starting at B: stage 0's first FWD is `a` slower, its BWD `x` slower.
 * Stage 0: FWD [B, B+1+a], SEND_ACT, RECV_GRAD [.., B+5+a], BWD [B+5+a, B+7+a+x], OPT 0.5.
 * Stage 1: RECV_ACT [B, B+1.5+a], FWD 1, BWD 2, SEND_GRAD, OPT [B+5+a, B+5.5+a].
 * The iteration ends with stage 0's OPT_STEP at B + 7.5 + a + x. */
static double add_iteration(results_t *r, int it, double B, double a, double x)
{
    struct { int rank; const char *op; int mb; double s, e; long long bytes; } rows[] = {
        {0, "FWD", 0, B, B + 1 + a, 0},
        {0, "SEND_ACT", 0, B + 1 + a, B + 1.5 + a, 4096},
        {0, "RECV_GRAD", 0, B + 1.5 + a, B + 5 + a, 4096},
        {0, "BWD", 0, B + 5 + a, B + 7 + a + x, 0},
        {0, "OPT_STEP", -1, B + 7 + a + x, B + 7.5 + a + x, 0},
        {1, "RECV_ACT", 0, B, B + 1.5 + a, 4096},
        {1, "FWD", 0, B + 1.5 + a, B + 2.5 + a, 0},
        {1, "BWD", 0, B + 2.5 + a, B + 4.5 + a, 0},
        {1, "SEND_GRAD", 0, B + 4.5 + a, B + 5 + a, 4096},
        {1, "OPT_STEP", -1, B + 5 + a, B + 5.5 + a, 0},
    };
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        results_op_t o = {.cell = 7, .repeat = 0, .rank = rows[i].rank, .iteration = it,
                          .micro_batch = rows[i].mb, .start = rows[i].s, .end = rows[i].e, .bytes = rows[i].bytes};
        snprintf(o.op, sizeof o.op, "%s", rows[i].op);
        assert_int_equal(results_op_add(r, &o), 0);
    }
    return B + 7.5 + a + x;
}

static void build(results_t *r)
{
    double e = add_iteration(r, 0, 0.2, 2.5, 0.0); /* warm-up: 10 s */
    e = add_iteration(r, 1, e, 0, 0.0);            /* 7.5 s */
    e = add_iteration(r, 2, e, 0, 1.0);            /* 8.5 s */
    (void)add_iteration(r, 3, e, 0, 0.5);          /* 8.0 s */
}

static double worst;

static void near(const char *what, double got, double want)
{
    double d = tu_reldiff(got, want, 1e-12);
    if (d > worst || isnan(d))
        worst = d;
    if (!(d <= 1e-9))   /* NaN fails too */
        fail_msg("%s: got %.12g, want %.12g (relative difference %.3g > 1e-9)", what, got, want, d);
}

static void test_hand_trace(void **state)
{
    (void)state;
    results_t r;
    results_init(&r);
    build(&r);
    results_cell_t c;
    results_cell_clear(&c, 7);
    c.stages = 2;
    c.repeats = 1;
    const double flop[2] = {8e12, 4e12};
    metrics_params_t p = {.warmup = 1, .batch_size = 4, .seq_len = 16, .flop_per_iter = flop, .peak_flops = 2e12};
    char err[256] = "";
    int rc = metrics_cell_compute(&r, &p, &c, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    worst = 0;
    assert_int_equal(r.n_iters, 4);
    const double times[] = {10.0, 7.5, 8.5, 8.0};
    for (int k = 0; k < 4; k++) {
        near("iteration time", r.iters[k].time, times[k]);
        assert_int_equal(r.iters[k].warmup, k == 0);
        assert_int_equal(r.iters[k].iteration, k);
    }
    near("median", c.iter_median, 8.0);
    near("mean", c.iter_mean, 8.0);
    near("min", c.iter_min, 7.5);
    near("max", c.iter_max, 8.5);
    near("stdev", c.iter_stdev, 0.5);              /* sqrt((0.25 + 0.25 + 0) / 2) */
    near("tokens/s", c.tokens_per_s, 4 * 16 / 8.0);
    near("FLOP/s stage 0", c.flops[0], 8e12 / 8.0);
    near("FLOP/s stage 1", c.flops[1], 4e12 / 8.0);
    near("MFU", c.mfu, (1e12 + 0.5e12) / (2 * 2e12));
    /* busy = FWD + BWD + OPT_STEP: stage 0 3.5 + x, stage 1 3.5 */
    near("bubble stage 0", c.bubble[0], ((1 - 3.5 / 7.5) + (1 - 4.5 / 8.5) + (1 - 4.0 / 8.0)) / 3);
    near("bubble stage 1", c.bubble[1], ((1 - 3.5 / 7.5) + (1 - 3.5 / 8.5) + (1 - 3.5 / 8.0)) / 3);

    double m;
    assert_int_equal(metrics_kind_median(&r, 7, 1, "BWD", &m), 0);
    near("median BWD", m, 2.0);       /* 2, 3, 2.5 on stage 0 and 2, 2, 2 on stage 1 */
    assert_int_equal(metrics_kind_median(&r, 7, 1, "RECV_GRAD", &m), 0);
    near("median RECV_GRAD", m, 3.5);
    assert_int_equal(metrics_kind_median(&r, 7, 0, "FWD", &m), 0);
    near("median FWD with warm-up", m, 1.0); /* 3.5 once among seven 1s */
    assert_int_equal(metrics_kind_median(&r, 7, 1, "SEND_NOTHING", &m), -ENOENT);

    double delay, slowdown;
    metrics_straggler(8.0, 6.4, &delay, &slowdown);
    near("slowdown", slowdown, 1.25);
    near("delay", delay, 0.2);
    near("slowdown = 1/(1-delay)", slowdown, 1 / (1 - delay));
    print_message("largest relative difference %.3g (tolerance 1e-9)\n", worst);
    results_destroy(&r);
}

static void test_unknown_inputs_are_nan(void **state)
{
    (void)state;
    results_t r;
    results_init(&r);
    build(&r);
    results_cell_t c;
    results_cell_clear(&c, 7);
    c.stages = 2;
    c.repeats = 1;
    metrics_params_t p = {.warmup = 1, .batch_size = 4, .seq_len = 16};
    char err[256];
    assert_int_equal(metrics_cell_compute(&r, &p, &c, err, sizeof err), 0);
    assert_true(isnan(c.flops[0]) && isnan(c.mfu));
    near("median", c.iter_median, 8.0);
    results_destroy(&r);
}

static void test_all_warmup_rejected(void **state)
{
    (void)state;
    results_t r;
    results_init(&r);
    build(&r);
    results_cell_t c;
    results_cell_clear(&c, 7);
    c.stages = 2;
    c.repeats = 1;
    metrics_params_t p = {.warmup = 4, .batch_size = 4, .seq_len = 16};
    char err[256] = "";
    assert_int_equal(metrics_cell_compute(&r, &p, &c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "no measured iteration"));
    assert_int_equal(r.n_iters, 0);
    /* A cell without ops says which. */
    c.cell = 8;
    p.warmup = 1;
    assert_int_equal(metrics_cell_compute(&r, &p, &c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "cell 8"));
    results_destroy(&r);
}

static void test_repeats_pooled(void **state)
{
    (void)state;
    results_t r;
    results_init(&r);
    build(&r);
    size_t n = r.n_ops;
    for (size_t i = 0; i < n; i++) { /* repeat 1: the same trace, 2 s later */
        results_op_t o = r.ops[i];
        o.repeat = 1;
        o.start += 2;
        o.end += 2;
        assert_int_equal(results_op_add(&r, &o), 0);
    }
    results_cell_t c;
    results_cell_clear(&c, 7);
    c.stages = 2;
    c.repeats = 2;
    metrics_params_t p = {.warmup = 1, .batch_size = 4, .seq_len = 16};
    char err[256];
    assert_int_equal(metrics_cell_compute(&r, &p, &c, err, sizeof err), 0);
    assert_int_equal(r.n_iters, 8);
    near("pooled median", c.iter_median, 8.0);
    near("pooled stdev", c.iter_stdev, sqrt((4 * 0.25) / 5.0));
    results_destroy(&r);
}

static void test_stats(void **state)
{
    (void)state;
    metrics_stats_t s;
    const double x[] = {4, 1, 3, 2};
    metrics_stats(x, 4, &s);
    near("even median", s.median, 2.5);
    metrics_stats(x, 1, &s);
    near("single stdev", s.stdev, 0);
    metrics_stats(x, 0, &s);
    assert_true(isnan(s.median) && s.n == 0);
    assert_int_equal(metrics_op_lane("FWD"), METRICS_LANE_COMPUTE);
    assert_int_equal(metrics_op_lane("OPT_STEP"), METRICS_LANE_COMPUTE);
    assert_int_equal(metrics_op_lane("SEND_GRAD"), METRICS_LANE_SEND);
    assert_int_equal(metrics_op_lane("RECV_ACT"), METRICS_LANE_RECV);
    assert_int_equal(metrics_op_lane("NOP"), -1);
}

/* --dp-overlap: rank 0's buckets 0 and 1 start inside its backward [0, 2], bucket 2 inside
 * its OPT_STEP [2, 2.5]; rank 1 all-reduces inside its step only. What the step's row does
 * not hold of the buckets (rank 0: 0.5 + 0.5 s) is added back, so a rank's compute is its
 * BWD plus the step's own time: rank 0 2 + (0.5 - 0.3 - 0.1) = 2.1 s, rank 1 2 + 0.2 s. In
 * trace order, and with the rows sorted by start (bucket 2 after the step). */
static void test_overlap_allreduce_early(void **state)
{
    (void)state;
    struct { int rank; const char *op; int mb; double s, e; } rows[2][7] = {
        {{0, "BWD", 0, 0, 2}, {0, "ALLREDUCE", 0, 0.5, 1.0}, {0, "ALLREDUCE", 1, 1.5, 2.3},
         {0, "ALLREDUCE", 2, 2.3, 2.4}, {0, "OPT_STEP", -1, 2.0, 2.5}, {1, "BWD", 0, 0, 2},
         {1, "ALLREDUCE", 0, 2.0, 2.2}},
        {{0, "BWD", 0, 0, 2}, {0, "ALLREDUCE", 0, 0.5, 1.0}, {0, "ALLREDUCE", 1, 1.5, 2.3},
         {0, "OPT_STEP", -1, 2.0, 2.5}, {0, "ALLREDUCE", 2, 2.3, 2.4}, {1, "BWD", 0, 0, 2},
         {1, "ALLREDUCE", 0, 2.0, 2.2}},
    };
    worst = 0;
    for (int order = 0; order < 2; order++) {
        results_t r;
        results_init(&r);
        for (int i = 0; i < 8; i++) {
            results_op_t o = {.cell = 9, .repeat = 0, .iteration = 0};
            if (i == 7) { /* rank 1's step */
                o.rank = 1, o.micro_batch = -1, o.start = 2.0, o.end = 2.4;
                snprintf(o.op, sizeof o.op, "OPT_STEP");
            } else {
                o.rank = rows[order][i].rank, o.micro_batch = rows[order][i].mb;
                o.start = rows[order][i].s, o.end = rows[order][i].e;
                snprintf(o.op, sizeof o.op, "%s", rows[order][i].op);
            }
            assert_int_equal(results_op_add(&r, &o), 0);
        }
        double *early = metrics_allreduce_early(&r, 9, 0, 1, 2), compute[2] = {0, 0};
        assert_non_null(early);
        for (size_t i = 0; i < r.n_ops; i++)
            compute[r.ops[i].rank] += metrics_op_compute(&r.ops[i]);
        print_message("%s: early all-reduce %.3f s and %.3f s, compute %.3f s and %.3f s\n",
                      order ? "sorted by start" : "trace order", early[0], early[1], compute[0] + early[0],
                      compute[1] + early[1]);
        near("rank 0's buckets before its step", early[0], 1.0);
        near("rank 1's buckets before its step", early[1] + 1, 1.0);
        near("rank 0's compute", compute[0] + early[0], 2.1);
        near("rank 1's compute", compute[1] + early[1], 2.2);
        free(early);
        results_destroy(&r);
    }
    print_message("largest relative difference %.3g (tolerance 1e-9)\n", worst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_trace),
        cmocka_unit_test(test_unknown_inputs_are_nan),
        cmocka_unit_test(test_all_warmup_rejected),
        cmocka_unit_test(test_repeats_pooled),
        cmocka_unit_test(test_stats),
        cmocka_unit_test(test_overlap_allreduce_early),
    };
    return cmocka_run_group_tests_name("bench_metrics", tests, NULL, NULL);
}
