/* schedules/sim: the data-parallel all-reduce (sim_dp_t). One replica changes nothing
 * (spans bit for bit); a hand-computed GPipe case at D = 2 and 4 without and with
 * overlap; overlap is never slower than no overlap over every schedule, and equal where
 * the buckets cannot overlap (one bucket, or every bucket ready at the end). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schedules/sim.h"
#include "tests/testutil.h"

#define TOL 1e-12 /* relative, floor 1: every hand time below is a sum of a few exact terms */

static double worst_diff;
static char worst_at[256];

static void check(double got, double want, const char *what)
{
    double d = fabs(got - want) / fmax(fmax(fabs(got), fabs(want)), 1.0);
    if (!(d <= worst_diff)) {
        worst_diff = isfinite(d) ? d : INFINITY;
        snprintf(worst_at, sizeof worst_at, "%s: got %.12g want %.12g", what, got, want);
    }
}

static void report(const char *what)
{
    print_message("%s: largest relative difference %.3g (tolerance %g)%s%s\n", what, worst_diff, TOL,
                  worst_diff > 0 ? " at " : "", worst_diff > 0 ? worst_at : "");
    if (!(worst_diff <= TOL))
        fail_msg("%s: difference %.3g beyond %g at %s", what, worst_diff, TOL, worst_at);
    worst_diff = 0;
    worst_at[0] = '\0';
}

#define MAXB 8
static double bytes_buf[16][MAXB], ready_buf[16][MAXB];
static const double *bytes_row[16], *ready_row[16];
static int nb[16];

/* Every stage: n buckets of `each` bytes; ready fractions k+1/n when `ready` is set. */
static sim_dp_t dp_of(int P, int D, int overlap, const sim_link_t *l, int n, double each, int ready)
{
    for (int s = 0; s < P; s++) {
        nb[s] = n;
        for (int k = 0; k < n; k++) {
            bytes_buf[s][k] = each;
            ready_buf[s][k] = (double)(k + 1) / n;
        }
        bytes_row[s] = bytes_buf[s];
        ready_row[s] = ready_buf[s];
    }
    return (sim_dp_t){D, overlap, l, nb, bytes_row, ready ? ready_row : NULL};
}

static void run_dp(const sim_config_t *c, int chunks, const sim_dp_t *dp, sim_result_t *r)
{
    char err[256];
    if (sim_run_dp(c, chunks, dp, r, err, sizeof err))
        fail_msg("%s P=%d M=%d D=%d: %s", c->schedule, c->stages, c->micro_batches, dp ? dp->replicas : 1, err);
}

static const char *const scheds[] = {"gpipe", "1f1b", "1f1b-slack", "interleaved-1f1b", "zb-h1", "zb-v"};

/* D = 1 (and no dp at all) gives the same spans, bit for bit, and no all-reduce. */
static void test_one_replica_changes_nothing(void **state)
{
    (void)state;
    sim_cost_t cost[4] = {{0.011, 0.023, 0.005}, {0.013, 0.029, 0.004}, {0.010, 0.020, 0.003}, {0.012, 0.031, 0.006}};
    sim_link_t l[4] = {{0.005, 2e9, 1e-5}, {0.005, 2e9, 1e-5}, {0.005, 2e9, 1e-5}, {0.005, 2e9, 1e-5}};
    sim_link_t dl = {0.010, 1e9, 0};
    size_t compared = 0;
    for (size_t i = 0; i < sizeof scheds / sizeof *scheds; i++)
        for (int M = 8; M <= 16; M += 8) {
            sim_config_t c = {scheds[i], 4, M, SIM_SLACK_AUTO, cost, l, l, 6.3e6, 6.3e6, SIM_SEND_PIPELINED};
            sim_dp_t dp = dp_of(4, 1, 1, &dl, 3, 5e7, 0);
            sim_result_t a, b;
            char err[256];
            if (sim_run_chunks(&c, 0, &a, err, sizeof err))
                fail_msg("%s: %s", scheds[i], err);
            run_dp(&c, 0, &dp, &b);
            assert_null(b.allreduce);
            assert_int_equal(a.slack, b.slack);
            assert_true(a.time == b.time);
            for (int s = 0; s < 4; s++) {
                assert_int_equal(a.plan.n_ops[s], b.plan.n_ops[s]);
                assert_memory_equal(a.span[s], b.span[s], a.plan.n_ops[s] * sizeof *a.span[s]);
                compared += a.plan.n_ops[s];
            }
            sim_result_destroy(&a);
            sim_result_destroy(&b);
        }
    print_message("D=1: %zu op spans equal bit for bit over %zu schedules\n", compared, sizeof scheds / sizeof *scheds);
}

/* GPipe, 2 stages, 2 micro-batches, F = 1 s, B = 2 s, optimizer 0.5 s, free pipeline
 * links. Stage 1: F F at [1,2] [2,3], B B at [3,5] [5,7]; stage 0: F F at [0,1] [1,2],
 * B B at [5,7] [7,9] (each waits for stage 1's gradient). Two buckets of 50 MB per stage
 * over 10 ms / 1 Gbit/s: at D = 2 a bucket is 2 x (0.01 + 25e6*8/1e9) = 0.42 s, at
 * D = 4 6 x (0.01 + 12.5e6*8/1e9) = 0.66 s.
 *   no overlap, D=2: stage 0 all-reduce [9, 9.84], step [9.84, 10.34]; stage 1 [7, 7.84]
 *   no overlap, D=4: stage 0 [9, 10.32], step ends 10.82
 *   overlap, D=2: stage 0 bucket 0 ready at 8 (half of [7,9]) -> [8, 8.42], bucket 1
 *     [9, 9.42], step ends 9.92; stage 1 bucket 0 ready at 6 -> [6, 6.42], [7, 7.42]
 *   overlap, D=4: stage 0 [8, 8.66], [9, 9.66], step ends 10.16 */
static void test_hand_computed(void **state)
{
    (void)state;
    sim_cost_t cost[2] = {{1, 2, 0.5}, {1, 2, 0.5}};
    sim_link_t dl = {0.010, 1e9, 0};
    sim_config_t c = {"gpipe", 2, 2, 0, cost, NULL, NULL, 0, 0, SIM_SEND_PIPELINED};
    const struct {
        int D, overlap;
        double ar0_start, ar0_end, ar1_start, ar1_end, time;
    } want[] = {
        {2, 0, 9, 9.84, 7, 7.84, 10.34},
        {4, 0, 9, 10.32, 7, 8.32, 10.82},
        {2, 1, 8, 9.42, 6, 7.42, 9.92},
        {4, 1, 8, 9.66, 6, 7.66, 10.16},
    };
    check(sim_dp_bucket_time(&dl, 2, 5e7), 0.42, "bucket D=2");
    check(sim_dp_bucket_time(&dl, 4, 5e7), 0.66, "bucket D=4");
    check(sim_dp_bucket_time(&dl, 1, 5e7), 0, "bucket D=1");
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        sim_dp_t dp = dp_of(2, want[i].D, want[i].overlap, &dl, 2, 5e7, 0);
        sim_result_t r;
        run_dp(&c, 0, &dp, &r);
        char what[64];
        snprintf(what, sizeof what, "D=%d overlap=%d", want[i].D, want[i].overlap);
        assert_non_null(r.allreduce);
        check(r.allreduce[0].start, want[i].ar0_start, what);
        check(r.allreduce[0].end, want[i].ar0_end, what);
        check(r.allreduce[1].start, want[i].ar1_start, what);
        check(r.allreduce[1].end, want[i].ar1_end, what);
        check(r.time, want[i].time, what);
        /* The step of each stage starts at its all-reduce's end. */
        for (int s = 0; s < 2; s++)
            for (size_t j = 0; j < r.plan.n_ops[s]; j++)
                if (r.plan.ops[s][j].kind == SCHED_OPT_STEP)
                    check(r.span[s][j].start, r.allreduce[s].end, what);
        sim_result_destroy(&r);
    }
    report("hand-computed all-reduce");
}

/* Overlap is never slower, and equal where nothing can overlap: one bucket, or every
 * bucket ready only at the end of the last backward. */
static void test_overlap_never_slower(void **state)
{
    (void)state;
    sim_cost_t cost[4] = {{0.011, 0.023, 0.005}, {0.013, 0.029, 0.004}, {0.010, 0.020, 0.003}, {0.012, 0.031, 0.006}};
    sim_link_t l[4] = {{0.001, 5e9, 0}, {0.001, 5e9, 0}, {0.001, 5e9, 0}, {0.001, 5e9, 0}};
    const sim_link_t dls[] = {{0.010, 1e9, 0}, {0.0001, 1e11, 0}, {0.050, 1e8, 1e-4}};
    double gain_max = 0;
    int cases = 0;
    for (size_t i = 0; i < sizeof scheds / sizeof *scheds; i++)
        for (size_t li = 0; li < sizeof dls / sizeof *dls; li++)
            for (int D = 2; D <= 4; D++)
                for (int n = 1; n <= 4; n++) {
                    sim_config_t c = {scheds[i], 4, 8, 1, cost, l, l, 6.3e6, 6.3e6, SIM_SEND_PIPELINED};
                    sim_dp_t off = dp_of(4, D, 0, &dls[li], n, 2e7, 0), on = off;
                    on.overlap = 1;
                    sim_result_t a, b;
                    run_dp(&c, 0, &off, &a);
                    run_dp(&c, 0, &on, &b);
                    if (b.time > a.time * (1 + 1e-12))
                        fail_msg("%s D=%d %d buckets link %zu: overlap %.9g s slower than none %.9g s", scheds[i],
                                 D, n, li, b.time, a.time);
                    if (n == 1)
                        check(b.time, a.time, "one bucket");
                    gain_max = fmax(gain_max, a.time - b.time);
                    sim_result_destroy(&b);
                    /* Every bucket ready at the end: nothing to overlap. */
                    for (int s = 0; s < 4; s++)
                        for (int k = 0; k < n; k++)
                            ready_buf[s][k] = 1;
                    on.bucket_ready = ready_row;
                    run_dp(&c, 0, &on, &b);
                    check(b.time, a.time, "ready at the end");
                    sim_result_destroy(&a);
                    sim_result_destroy(&b);
                    cases++;
                }
    print_message("%d cases; overlap saved up to %.3f ms\n", cases, gain_max * 1e3);
    assert_true(gain_max > 0); /* with several buckets it must save something somewhere */
    report("overlap equal where buckets cannot overlap");
}

static void test_invalid(void **state)
{
    (void)state;
    sim_cost_t cost[2] = {{1, 2, 0.5}, {1, 2, 0.5}};
    sim_link_t dl = {0.010, 1e9, 0}, bad = {-1, 1e9, 0};
    sim_config_t c = {"gpipe", 2, 2, 0, cost, NULL, NULL, 0, 0, SIM_SEND_PIPELINED};
    char err[256];
    sim_result_t r;
    sim_dp_t dp = dp_of(2, -1, 0, &dl, 2, 5e7, 0);
    assert_int_not_equal(sim_run_dp(&c, 0, &dp, &r, err, sizeof err), 0);
    assert_non_null(strstr(err, "replicas -1"));
    dp = dp_of(2, 2, 0, &bad, 2, 5e7, 0);
    assert_int_not_equal(sim_run_dp(&c, 0, &dp, &r, err, sizeof err), 0);
    assert_non_null(strstr(err, "data-parallel link delay"));
    dp = dp_of(2, 2, 1, &dl, 2, 5e7, 1);
    ready_buf[1][0] = 1.5;
    assert_int_not_equal(sim_run_dp(&c, 0, &dp, &r, err, sizeof err), 0);
    assert_non_null(strstr(err, "stage 1 bucket 0"));
    dp = dp_of(2, 2, 1, &dl, 2, NAN, 0);
    assert_int_not_equal(sim_run_dp(&c, 0, &dp, &r, err, sizeof err), 0);
    assert_non_null(strstr(err, "stage 0 bucket 0"));
    dp = dp_of(2, 2, 1, &dl, 0, 5e7, 0);
    assert_int_not_equal(sim_run_dp(&c, 0, &dp, &r, err, sizeof err), 0);
    assert_non_null(strstr(err, "buckets"));
}

/* The gpipe row's iter_time (ms) of `pipenem sim ARGS`, NAN if absent. */
static double sim_cli_time(const char *args, char *out, size_t len)
{
    int rc = tu_pipenem_run(out, len, "sim -s gpipe --stages 2 --micro-batches 2 --fwd-ms 1000 --bwd-ms 2000 "
                            "--opt-ms 500 %s", args);
    const char *row = strstr(out, "\n         gpipe");
    double t = NAN;
    if (rc != 0 || !row || sscanf(row, " gpipe - %lf", &t) != 1)
        print_message("pipenem sim %s: exit %d\n%s", args, rc, out);
    return t;
}

/* pipenem sim --dp: the hand-computed case above through the command line, --dp 1 the
 * same output as no --dp, and the usage errors. */
static void test_cli(void **state)
{
    (void)state;
    static char a[16384], b[16384];
    check(sim_cli_time("--dp 4 --param-bytes 100MB --buckets 2 --net-dp 10ms/1Gbps", a, sizeof a), 10820, "D=4 cli");
    check(sim_cli_time("--dp 2 --param-bytes 100MB --buckets 2 --net-dp 10ms/1Gbps --dp-overlap", a, sizeof a), 9920,
          "D=2 overlap cli");
    report("pipenem sim --dp");
    sim_cli_time("--net 10ms/1Gbps --bytes 6MB", a, sizeof a);
    sim_cli_time("--net 10ms/1Gbps --bytes 6MB --dp 1", b, sizeof b);
    assert_string_equal(a, b);
    assert_int_equal(tu_pipenem_run(a, sizeof a, "sim --fwd-ms 1 --bwd-ms 2 --dp 2"), 2);
    assert_non_null(strstr(a, "--dp 2 needs --param-bytes"));
    assert_int_equal(tu_pipenem_run(a, sizeof a, "sim --fwd-ms 1 --bwd-ms 2 --dp-overlap"), 2);
    assert_non_null(strstr(a, "--dp-overlap applies to --dp D with D > 1"));
    assert_int_equal(tu_pipenem_run(a, sizeof a, "sim --fwd-ms 1 --bwd-ms 2 --dp 2 --param-bytes 1MB,2MB"), 2);
    assert_non_null(strstr(a, "--param-bytes has 2 values; want 1 or 3"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_replica_changes_nothing),
        cmocka_unit_test(test_hand_computed),
        cmocka_unit_test(test_overlap_never_slower),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests_name("sim_dp", tests, NULL, NULL);
}
