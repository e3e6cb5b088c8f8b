/* Data parallelism (#15) on this machine: 2 replicas x 3 stages of gpt3-small under
 * emulated V100 compute (real-size gradient buffers), the replicas' links and the
 * pipeline's shaped to 10ms/1Gbps by the shim (DT-FM's slowest setting; free links on
 * this 2-core machine are TCP between 6 busy processes, which no link model covers).
 * Issue #15's acceptance is the run with `--dp-bucket 64MB`; the runtime's default 25 MiB
 * buckets run too. In each, the measured median iteration must be within 5% of the
 * simulator's a-priori prediction (the compute model, the all-reduce of each stage's
 * gradient block cut in the run's buckets over the link model), and the all-reduce must
 * reach at least 0.9 of the link's modelled goodput: per full bucket, a ring member sends
 * 2(D-1)/D of the bucket in 2(D-1) steps, each paying the delay once, so achieved =
 * 2(D-1)/D x bytes x 8 / (duration - 2(D-1) x delay), the median over the full buckets
 * that do not open an iteration (those also wait for the other replica's backward). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/metrics.h"
#include "common/clock.h"
#include "bench/predict.h"
#include "bench/results.h"
#include "models/model.h"
#include "models/options.h"
#include "netem/profile.h"
#include "pipeline/allreduce.h"
#include "pipeline/runcfg.h"
#include "schedules/sim.h"
#include "tests/testutil.h"

#define D 2
#define P 3
#define PROFILE "10ms/1Gbps"
#define ARGS "--model gpt3-small --stages 3 --batch-size 8 --micro-batch-size 1 --compute emulate:v100 " \
             "--schedule gpipe --dp 2 --net " PROFILE " --net-dp " PROFILE

static char out[1 << 18];

/* The a-priori prediction: per-stage costs and buckets of `bucket` bytes from the model, the
 * DP link model. */
static int predict(double bucket, double *t, char *err, size_t errlen)
{
    static runcfg_t cfg;
    const struct {
        int opt;
        const char *arg;
    } set[] = {{MODEL_OPT_MODEL, "gpt3-small"}, {MODEL_OPT_STAGES, "3"}, {MODEL_OPT_BATCH_SIZE, "8"},
               {MODEL_OPT_MICRO_BATCH_SIZE, "1"}, {MODEL_OPT_COMPUTE, "emulate:v100"},
               {RUNCFG_OPT_SCHEDULE, "gpipe"}};
    runcfg_defaults(&cfg);
    for (size_t i = 0; i < sizeof set / sizeof *set; i++)
        if (runcfg_option(&cfg, set[i].opt, set[i].arg, err, errlen) != 1)
            return -1;
    if (runcfg_finish(&cfg, err, errlen))
        return -1;
    sim_cost_t cost[P];
    static predict_buckets_t b[P];
    double act = 0;
    for (int s = 0; s < P; s++) {
        static model_stage_t st;
        model_stage_params_t p = cfg.stage_params;
        p.stage = s;
        if (model_stage_init(&st, &p, err, errlen))
            return -1;
        model_account_t a;
        model_stage_account(&st, &a);
        cost[s] = (sim_cost_t){a.fwd_s, a.bwd_s, a.opt_s};
        act = (double)a.boundary_bytes;
        predict_dp_buckets(&st, bucket, &b[s]);
        model_stage_destroy(&st);
    }
    netem_profile_t prof;
    if (netem_profile_parse(PROFILE, &prof, err, errlen))
        return -1;
    sim_link_t link;
    predict_link(&prof, &link);
    int n[P];
    const double *bytes[P], *ready[P];
    sim_dp_t dp;
    predict_dp_model(b, P, D, 0, &link, n, bytes, ready, &dp);
    sim_link_t pl[P] = {link, link, link};
    sim_config_t sc = {.schedule = "gpipe", .stages = P, .micro_batches = cfg.micro_batches, .cost = cost,
                       .link_fwd = pl, .link_bwd = pl, .act_bytes = act, .grad_bytes = act,
                       .send_mode = SIM_SEND_PIPELINED};
    sim_result_t r = {0};
    if (sim_run_dp(&sc, 0, &dp, &r, err, errlen))
        return -1;
    *t = r.time;
    sim_result_destroy(&r);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median achieved all-reduce bandwidth (bit/s) of the trace's full buckets (of
 * `bucket` bytes) that do not open an iteration on their rank. */
static double allreduce_bandwidth(const char *trace, double delay, long long bucket, int *samples)
{
    results_t r;
    char err[512];
    results_init(&r);
    if (results_trace_read(trace, 0, 0, &r, err, sizeof err))
        fail_msg("%s: %s", trace, err);
    double *bw = calloc(r.n_ops + 1, sizeof *bw);
    size_t n = 0;
    for (size_t i = 0; i < r.n_ops; i++) {
        const results_op_t *o = &r.ops[i];
        if (strcmp(o->op, METRICS_OP_ALLREDUCE) || o->micro_batch == 0 || o->bytes != bucket)
            continue;
        double t = o->end - o->start - 2.0 * (D - 1) * delay;
        if (t > 0)
            bw[n++] = 2.0 * (D - 1) / D * (double)o->bytes * 8.0 / t;
    }
    qsort(bw, n, sizeof *bw, cmp_double);
    double med = n ? (n % 2 ? bw[n / 2] : 0.5 * (bw[n / 2 - 1] + bw[n / 2])) : NAN;
    *samples = (int)n;
    free(bw);
    results_destroy(&r);
    return med;
}

/* One run with buckets of `bucket` bytes (--dp-bucket `arg`): 0 when within the targets. */
static int bench_case(const char *arg, long long bucket)
{
    char err[512], trace[] = "/tmp/pn-bench-dp-XXXXXX";
    double pred = NAN;
    if (predict((double)bucket, &pred, err, sizeof err))
        fail_msg("prediction failed: %s", err);
    int fd = mkstemp(trace);
    assert_true(fd >= 0);
    close(fd);
    double t0 = pn_now();
    int rc = tu_pipenem_run(out, sizeof out, "run " ARGS " --dp-bucket %s --iters 3 --warmup 1 --trace %s", arg,
                            trace);
    double wall = pn_now() - t0;
    const char *m = strstr(out, "median iteration time ");
    double meas = 0;
    if (rc || !m || sscanf(m, "median iteration time %lf", &meas) != 1) {
        unlink(trace);
        fail_msg("run --dp-bucket %s failed (%d):\n%s", arg, rc, out);
    }
    netem_profile_t prof;
    assert_int_equal(netem_profile_parse(PROFILE, &prof, err, sizeof err), 0);
    sim_link_t link;
    predict_link(&prof, &link);
    int samples = 0;
    double bw = allreduce_bandwidth(trace, prof.delay, bucket, &samples);
    unlink(trace);
    double ratio = meas / pred, share = bw / link.bandwidth;
    print_message("--dp-bucket %s (%lld B): gpipe %d x %d processes, gpt3-small batch 8 on emulate:v100, --net and "
                  "--net-dp %s: measured %.4f s, simulator (a-priori, with the all-reduce) %.4f s, ratio %.3f (target "
                  "within [0.95, 1.05]); the run took %.0f s\n", arg, bucket, D, P, PROFILE, meas, pred, ratio, wall);
    print_message("--dp-bucket %s: all-reduce of %d full buckets: median %.3f Gbit/s achieved, link goodput %.3f "
                  "Gbit/s, share %.3f (target >= 0.9)\n", arg, samples, bw / 1e9, link.bandwidth / 1e9, share);
    int bad = 0;
    if (!(ratio >= 0.95 && ratio <= 1.05)) { /* NaN fails too */
        print_message("--dp-bucket %s: FAILED: ratio %.3f outside [0.95, 1.05]\n", arg, ratio);
        bad = 1;
    }
    if (!(share >= 0.9)) {
        print_message("--dp-bucket %s: FAILED: the all-reduce reached %.3f of the link's goodput\n", arg, share);
        bad = 1;
    }
    return bad;
}

/* Issue #15's 64 MB buckets, then the runtime's default ones; both are judged, after both
 * ran. Each run takes 15-16 s here (the pair 31 s on the 2 cores, other builds running),
 * so the 25 MiB case stays: it is the runtime's default, which bench_dp judged before. */
static void bench_dp(void **state)
{
    (void)state;
    int bad = bench_case("64MB", 64000000);
    bad |= bench_case("25MiB", ALLREDUCE_BUCKET_DEFAULT);
    if (bad)
        fail_msg("a target was missed (above)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bench_dp),
    };
    return cmocka_run_group_tests_name("bench_dp", tests, NULL, NULL);
}
