/* bench with --dp: the sweep's replica axis (cell numbering and configuration), runs.csv's
 * dp columns written and read back, tokens/s counting every replica, the DP straggler
 * figure, table.md's Megatron-style table (and its absence with one replica), and the
 * replayed prediction of a --dp cell adding its traced buckets' all-reduce; --dp-bucket:
 * the cut of a block in the runtime's pieces, sim's use of it, a sweep cell's (runs.csv,
 * ops.csv and the a-priori prediction), and its usage errors in run, sim and sweep. */
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
#include "bench/predict.h"
#include "bench/results.h"
#include "bench/sweep.h"
#include "bench/table.h"
#include "schedules/sim.h"
#include "tests/test_bench_synth.h"
#include "tests/testutil.h"

#define TOL 1e-9

static double worst;

static void check(double got, double want, const char *what)
{
    double d = fabs(got - want) / fmax(fabs(want), 1e-300);
    if (!(d <= worst))
        worst = isfinite(d) ? d : INFINITY;
    if (!(d <= TOL))
        fail_msg("%s: got %.12g want %.12g (relative difference %.3g beyond %g)", what, got, want, d, TOL);
}

/* --dp-sizes: the replica count is the outermost axis; one count keeps the old numbering. */
static void test_grid(void **state)
{
    (void)state;
    sweep_spec_t s;
    char err[256];
    assert_int_equal(sweep_spec_default(&s, err, sizeof err), 0);
    assert_int_equal(sweep_cells(&s), 24);
    results_cell_t one[24], c;
    for (int i = 0; i < 24; i++)
        sweep_cell_config(&s, i, &one[i]);
    assert_int_equal(sweep_dp_sizes_parse("1,2", &s, err, sizeof err), 0);
    assert_int_equal(sweep_cells(&s), 48);
    for (int i = 0; i < 48; i++) {
        sweep_cell_config(&s, i, &c);
        const results_cell_t *o = &one[i % 24];
        assert_string_equal(c.schedule, o->schedule);
        assert_string_equal(c.profile, o->profile);
        assert_int_equal(c.micro_batch_size, o->micro_batch_size);
        assert_int_equal(c.dp, i < 24 ? 1 : 2);
        assert_int_equal(c.global_batch, c.dp * 64);
    }
    assert_int_not_equal(sweep_dp_sizes_parse("1,0", &s, err, sizeof err), 0);
    assert_non_null(strstr(err, "'0' (item 2) is not a replica count"));
    assert_int_not_equal(sweep_dp_sizes_parse("2,2", &s, err, sizeof err), 0);
    assert_non_null(strstr(err, "listed twice"));
    /* --dp-bucket: the replicated cells carry it, the one-replica cells have no all-reduce */
    s.dp_bucket = 64 << 20;
    sweep_cell_config(&s, 3, &c);
    assert_int_equal(c.dp_bucket_bytes, 0);
    sweep_cell_config(&s, 27, &c);
    assert_int_equal(c.dp_bucket_bytes, 64 << 20);
    s.dp_bucket = 0;
    sweep_cell_config(&s, 27, &c);
    assert_int_equal(c.dp_bucket_bytes, 25 << 20); /* the runtime's default, recorded */
    assert_int_equal(sweep_dp_sizes_parse("1", &s, err, sizeof err), 0);
    s.dp_bucket = 4096;
    assert_int_not_equal(sweep_spec_check(&s, err, sizeof err), 0);
    assert_non_null(strstr(err, "--dp-bucket applies to --dp D with D > 1"));
    s.dp_bucket = 0;
    assert_int_equal(sweep_dp_sizes_parse("4", &s, err, sizeof err), 0);
    s.stages = 5000;
    assert_int_not_equal(sweep_spec_check(&s, err, sizeof err), 0);
}

/* Replica d of every stage: rank d*S + s, the same ops as replica 0, compute scaled by
 * slow[d * S + s]. */
static void add_replicas(results_t *r, int cell, int S, int D, const double *slow)
{
    size_t n = r->n_ops;
    for (int d = 1; d < D; d++)
        for (size_t i = 0; i < n; i++) {
            results_op_t o = r->ops[i];
            if (o.cell != cell)
                continue;
            o.rank += d * S;
            if (metrics_op_lane(o.op) == METRICS_LANE_COMPUTE)
                o.end = o.start + (o.end - o.start) * slow[o.rank];
            assert_int_equal(results_op_add(r, &o), 0);
        }
}

/* tokens/s counts every replica; the DP straggler is the slowest replica over its peers. */
static void test_metrics(void **state)
{
    (void)state;
    results_t r;
    results_init(&r);
    assert_int_equal(synth_cell(&r, 0, "gpipe", 1, "10ms/1Gbps", "delay 10ms  bandwidth 1Gbps", 2, 4, 3, 0.01,
                                0.02, 0.001), 0);
    double one = r.cells[0].tokens_per_s;
    /* D = 3: replica 2's stage 0 computes 1.5x slower, replica 1's stage 1 1.2x */
    double slow[6] = {1, 1, 1, 1.2, 1.5, 1};
    add_replicas(&r, 0, 2, 3, slow);
    /* replica 0 waits 0.3 s in its all-reduce for the slow ones, inside its OPT_STEP row as
     * the runtime traces it: that is not compute */
    size_t n = r.n_ops;
    for (size_t i = 0; i < n; i++)
        if (r.ops[i].rank < 2 && !strcmp(r.ops[i].op, "OPT_STEP")) {
            r.ops[i].end += 0.3;
            assert_int_equal(synth_op(&r, 0, r.ops[i].rank, r.ops[i].iteration, METRICS_OP_ALLREDUCE, 0,
                                      r.ops[i].start, r.ops[i].start + 0.3, 1000), 0);
        }
    results_cell_t c = r.cells[0];
    c.dp = 3;
    r.n_iters = 0;
    metrics_params_t p = {.warmup = 1, .batch_size = 4, .seq_len = 32};
    char err[256];
    assert_int_equal(metrics_cell_compute(&r, &p, &c, err, sizeof err), 0);
    check(c.tokens_per_s, 3 * 4 * 32 / c.iter_median, "tokens/s, 3 replicas");
    assert_true(c.tokens_per_s > 2.5 * one); /* replica 0 paces the median iteration */
    int who[RESULTS_MAX_STAGES];
    metrics_dp_straggler(&r, &c, who);
    check(c.dp_straggler[0], 1.5, "stage 0: replica 2 over its peers");
    check(c.dp_straggler[1], 1.2, "stage 1: replica 1 over its peers");
    assert_int_equal(who[0], 2);
    assert_int_equal(who[1], 1);
    c.dp = 1;
    metrics_dp_straggler(&r, &c, who);
    assert_true(isnan(c.dp_straggler[0]));
    print_message("tokens/s and DP straggler: largest relative difference %.3g (tolerance %g)\n", worst, TOL);
    results_destroy(&r);
}

/* runs.csv carries dp, dp_overlap, net_dp, global_batch, dp_bucket_bytes and
 * dp_straggler_stageS; a file from before dp_bucket_bytes reads its --dp rows as the one
 * bucket size there was then (25 MiB). */
static void test_results_roundtrip(void **state)
{
    (void)state;
    results_t r, back;
    results_init(&r);
    results_init(&back);
    assert_int_equal(synth_cell(&r, 0, "gpipe", 1, "default", "default", 2, 4, 3, 0.01, 0.02, 0.001), 0);
    r.cells[0].dp = 2;
    r.cells[0].dp_overlap = 1;
    snprintf(r.cells[0].net_dp, sizeof r.cells[0].net_dp, "10ms/1Gbps");
    r.cells[0].global_batch = 8;
    r.cells[0].dp_bucket_bytes = 64 << 20;
    r.cells[0].dp_straggler[0] = 1.25;
    r.cells[0].dp_straggler[1] = 1.0;
    char dir[] = "/tmp/pn-test-bench-dp-XXXXXX", err[512];
    assert_non_null(mkdtemp(dir));
    assert_int_equal(results_write(&r, dir, err, sizeof err), 0);
    assert_int_equal(results_read(dir, &back, err, sizeof err), 0);
    const results_cell_t *c = &back.cells[0];
    assert_int_equal(c->dp, 2);
    assert_int_equal(c->dp_overlap, 1);
    assert_string_equal(c->net_dp, "10ms/1Gbps");
    assert_int_equal(c->global_batch, 8);
    assert_int_equal(c->dp_bucket_bytes, 64 << 20);
    check(c->dp_straggler[0], 1.25, "dp_straggler_stage0 read back");
    char cmd[256];
    snprintf(cmd, sizeof cmd, "sed -i '1s/,dp_bucket_bytes,/,some_later_column,/' '%s/runs.csv'", dir);
    assert_int_equal(system(cmd), 0);
    results_destroy(&back);
    results_init(&back);
    assert_int_equal(results_read(dir, &back, err, sizeof err), 0);
    assert_int_equal(back.cells[0].dp_bucket_bytes, 25 << 20);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    results_destroy(&r);
    results_destroy(&back);
}

/* The DP x PP table: Nodes = DP x PP, GBS = DP x batch, aggregate = per GPU x nodes. */
static void test_table(void **state)
{
    (void)state;
    results_t r;
    results_init(&r);
    for (int d = 0; d < 2; d++)
        assert_int_equal(synth_cell(&r, d, "gpipe", 1, "10ms/1Gbps", "delay 10ms  bandwidth 1Gbps", 3, 8, 3, 0.01,
                                    0.02, 0.001), 0);
    char *md = NULL;
    assert_int_equal(table_markdown(&r, &md), 0);
    assert_null(strstr(md, "Data parallel x pipeline parallel"));
    free(md);
    results_cell_t *c = &r.cells[1];
    c->dp = 2;
    c->global_batch = 16;
    c->dp_bucket_bytes = 25 << 20;
    c->dp_straggler[0] = 1.5, c->dp_straggler[1] = 1, c->dp_straggler[2] = 1.25;
    assert_int_equal(table_markdown(&r, &md), 0);
    assert_non_null(strstr(md, "## Data parallel x pipeline parallel"));
    /* synth: FLOPs 1e9 M (s+1) per stage: the mean over 3 stages is 2e9 M per iteration */
    double per_gpu = 2e9 * c->micro_batches / c->iter_median * 1e-12;
    char want[512], a[64], b[64], t[64];
    table_format_sig3(per_gpu, a, sizeof a);
    table_format_sig3(per_gpu * 6, b, sizeof b);
    table_format_sig3(c->iter_median, t, sizeof t);
    snprintf(want, sizeof want, "| gpipe | delay 10ms  bandwidth 1Gbps | 6 | 2 | 3 | 1 | 16 | 25.0 MiB | ");
    const char *row = strstr(md, want);
    if (!row)
        fail_msg("no DP row '%s' in\n%s", want, md);
    snprintf(want, sizeof want, " | %s | %s | %s | 1.50 / 1.00 / 1.25 |", t, a, b);
    const char *eol = strchr(row, '\n');
    if (!strstr(row, want) || strstr(row, want) > eol)
        fail_msg("DP row '%.*s' lacks '%s'", (int)(eol - row), row, want);
    assert_non_null(strstr(md, "| gpipe, DP 2 | delay 10ms  bandwidth 1Gbps | 1 | "));
    free(md);
    c->dp_overlap = 1;
    assert_int_equal(table_markdown(&r, &md), 0);
    assert_non_null(strstr(md, "| 6 | 2 | 3 | 1 | 16 | 25.0 MiB overlapped | "));
    free(md);
    results_destroy(&r);
}

/* The replayed prediction of a --dp cell: the traced buckets' ring all-reduce over the
 * DP link on top of the pipeline; here stage 0 ends last, so the difference is its one
 * bucket's time, 2(D-1) x (delay + bytes/D over the goodput). */
static void test_predict_dp(void **state)
{
    (void)state;
    results_t r;
    results_init(&r);
    assert_int_equal(synth_cell(&r, 0, "gpipe", 1, "10ms/1Gbps", "delay 10ms  bandwidth 1Gbps", 2, 4, 3, 0.01,
                                0.02, 0.001), 0);
    netem_profile_t p;
    char err[256];
    assert_int_equal(netem_profile_parse("10ms/1Gbps", &p, err, sizeof err), 0);
    double t1, t2;
    assert_int_equal(predict_time(&r, &r.cells[0], 0, &p, &t1, err, sizeof err), 0);
    size_t n = r.n_ops;
    /* one bucket after each stage's last backward, inside its OPT_STEP row as the runtime
     * traces it (the step's row spans the all-reduce: the prediction must not count it twice) */
    for (size_t i = 0; i < n; i++)
        if (!strcmp(r.ops[i].op, "OPT_STEP")) {
            r.ops[i].end += 0.05;
            assert_int_equal(synth_op(&r, 0, r.ops[i].rank, r.ops[i].iteration, METRICS_OP_ALLREDUCE, 0,
                                      r.ops[i].start, r.ops[i].start + 0.05, 8000000), 0);
        }
    double same[4] = {1, 1, 1, 1};
    add_replicas(&r, 0, 2, 2, same);
    r.cells[0].dp = 2;
    assert_int_equal(predict_time(&r, &r.cells[0], 0, &p, &t2, err, sizeof err), 0);
    sim_link_t l;
    predict_link(&p, &l);
    double bucket = sim_dp_bucket_time(&l, 2, 8e6);
    print_message("replayed: one replica %.6f s, two %.6f s, bucket %.6f s\n", t1, t2, bucket);
    check(t2 - t1, bucket, "replayed prediction grows by stage 0's all-reduce");
    r.cells[0].dp = 1; /* one replica: the rows are not modelled (here the step just got longer) */
    assert_int_equal(predict_time(&r, &r.cells[0], 0, &p, &t2, err, sizeof err), 0);
    check(t2, t1 + 0.05, "allreduce rows skipped by the replay");
    results_destroy(&r);
}

/* The runtime's cut of a block with no tensors (sim --param-bytes): 100 MB in 30 MB
 * pieces is 10, 30, 30, 30 MB last piece first, each ready once the backward has passed its
 * bytes and those after it. */
static void test_bucket_cut(void **state)
{
    (void)state;
    static predict_buckets_t b;
    predict_dp_buckets_bytes(100e6, 30e6, &b);
    assert_int_equal(b.n, 4);
    const double bytes[4] = {10e6, 30e6, 30e6, 30e6}, ready[4] = {0.1, 0.4, 0.7, 1};
    for (int k = 0; k < 4; k++) {
        check(b.bytes[k], bytes[k], "piece bytes");
        check(b.ready[k], ready[k], "piece ready");
    }
    check(b.total, 100e6, "total");
    predict_dp_buckets_bytes(100e6, 0, &b); /* 0: the runtime's 25 MiB */
    assert_int_equal(b.n, 4);
    check(b.bytes[1], 25 << 20, "a full default piece");
    print_message("bucket cut: largest relative difference %.3g (tolerance %g)\n", worst, TOL);
}

static double sim_time(const char *args)
{
    static char text[16384];
    int rc = tu_pipenem_run(text, sizeof text, "sim -s gpipe --stages 2 --micro-batches 2 --fwd-ms 1000 --bwd-ms 2000 "
                            "--opt-ms 500 --dp 4 --param-bytes 100MB --net-dp 10ms/1Gbps %s", args);
    const char *row = strstr(text, "\n         gpipe");
    double t = NAN;
    if (rc != 0 || !row || sscanf(row, " gpipe - %lf", &t) != 1)
        fail_msg("pipenem sim ... %s: exit %d\n%s", args, rc, text);
    return t;
}

/* sim: --dp-bucket cuts --param-bytes as the runtime does (two 50 MB pieces are
 * test_sim_dp's hand-computed --buckets 2 case, 10820 ms); without either option the
 * runtime's 25 MiB; each piece pays the ring's delays. */
static void test_sim_bucket(void **state)
{
    (void)state;
    check(sim_time("--dp-bucket 50MB"), 10820, "--dp-bucket 50MB = --buckets 2");
    check(sim_time("--dp-bucket 50MB"), sim_time("--buckets 2"), "the same as --buckets 2");
    check(sim_time(""), sim_time("--dp-bucket 25MiB"), "the default is 25 MiB");
    /* without --dp-overlap every piece waits for the last backward: 25 pieces instead of one
     * move the same bytes and pay the ring's 2(D-1) = 6 delays of 10 ms 24 times more */
    check(sim_time("--dp-bucket 4MB") - sim_time("--dp-bucket 100MB"), 24 * 6 * 10, "25 pieces vs 1");
    print_message("sim --dp-bucket: largest relative difference %.3g (tolerance %g)\n", worst, TOL);
}

/* A tiny sweep cell with --dp 2 and DP links of 1 ms/1 Gbit/s: measured with the bucket in
 * `bucket` (NULL: the default) into dir; its runs.csv and ops.csv into r. */
static void dp_cell(const char *bucket, char *dir, results_t *r)
{
    static char text[1 << 16];
    char err[512];
    assert_non_null(mkdtemp(dir));
    int rc = tu_pipenem_run(text, sizeof text, "sweep --model tiny --stages 2 --dp 2 --net-dp 1ms/1Gbps --schedule "
                            "gpipe --micro-batch-sizes 1 --profiles default --batch-size 4 --seq-len 16 --iters 1 "
                            "--warmup 0 --no-plots --out %s/out %s%s", dir, bucket ? "--dp-bucket " : "",
                            bucket ? bucket : "");
    if (rc)
        fail_msg("sweep (--dp-bucket %s) exited %d:\n%s", bucket ? bucket : "default", rc, text);
    char path[128];
    snprintf(path, sizeof path, "%s/out", dir);
    results_init(r);
    if (results_read(path, r, err, sizeof err))
        fail_msg("%s: %s", path, err);
    snprintf(text, sizeof text, "rm -rf '%s'", dir);
    assert_int_equal(system(text), 0);
}

/* The sweep hands --dp-bucket to its cells: runs.csv says it, ops.csv has one ALLREDUCE
 * row per bucket (all full but the last), and the a-priori prediction cuts the gradients
 * the same way. Without --dp-overlap each stage's extra buckets each pay the ring's 2(D-1)
 * delays of 1 ms, so the prediction grows by (n_s - 1) x 2 ms for one of the stages s
 * (the one that ends the iteration): between the smallest and the largest of those. */
static void test_sweep_bucket(void **state)
{
    (void)state;
    char d1[] = "/tmp/pn-test-dp-bucket-XXXXXX", d2[] = "/tmp/pn-test-dp-bucket-XXXXXX";
    results_t def, small;
    dp_cell(NULL, d1, &def);
    dp_cell("4KiB", d2, &small);
    assert_int_equal(def.n_cells, 1);
    assert_int_equal(small.n_cells, 1);
    assert_int_equal(def.cells[0].dp_bucket_bytes, 25 << 20);
    assert_int_equal(small.cells[0].dp_bucket_bytes, 4096);
    int rows[4] = {0}, full[4] = {0};
    for (size_t i = 0; i < small.n_ops; i++) {
        const results_op_t *o = &small.ops[i];
        if (strcmp(o->op, METRICS_OP_ALLREDUCE) || o->iteration != 0)
            continue;
        assert_true(o->rank >= 0 && o->rank < 4 && o->bytes > 0 && o->bytes <= 4096);
        rows[o->rank]++;
        full[o->rank] += o->bytes == 4096;
    }
    double lo = INFINITY, hi = 0, delta = small.cells[0].predicted_apriori - def.cells[0].predicted_apriori;
    for (int k = 0; k < 4; k++) {
        assert_true(rows[k] > 1);
        assert_true(full[k] >= rows[k] - 1);
        assert_int_equal(rows[k], rows[k % 2]); /* replica 1 as replica 0 */
        lo = fmin(lo, (rows[k] - 1) * 2 * 1e-3);
        hi = fmax(hi, (rows[k] - 1) * 2 * 1e-3);
    }
    print_message("sweep: %d and %d ALLREDUCE rows on stages 0 and 1 with 4 KiB buckets; the a-priori prediction "
                  "grows by %.6f s (want %.6f..%.6f s), measured %.3f s vs %.3f s\n", rows[0], rows[1], delta, lo, hi,
                  small.cells[0].iter_median, def.cells[0].iter_median);
    if (!(delta >= lo - 1e-9 && delta <= hi + 1e-9))
        fail_msg("the prediction grew by %.9f s, outside [%.9f, %.9f] s", delta, lo, hi);
    results_destroy(&def);
    results_destroy(&small);
}

/* --dp-bucket's values and combinations in run, sim and sweep, each with its own message
 * (exit 2). */
static void test_bucket_errors(void **state)
{
    (void)state;
    const struct {
        const char *args, *want;
    } bad[] = {
        {"run --model tiny --stages 2 --dp-bucket 1MB", "--dp-bucket applies to --dp D with D > 1"},
        {"run --model tiny --stages 2 --dp 2 --dp-bucket 6", "want whole fp32s (a multiple of 4)"},
        {"run --model tiny --stages 2 --dp 2 --dp-bucket 0", "want whole fp32s"},
        {"run --model tiny --stages 2 --dp 2 --dp-bucket 2GiB", "from 4 bytes to 1GiB"},
        {"run --model tiny --stages 2 --dp 2 --dp-bucket 64XB", "expected a size such as 64MB"},
        {"run --model tiny --stages 2 --dp 4 --dp-bucket 12", "want at least 16 bytes (one fp32 each)"},
        {"sim --fwd-ms 1 --bwd-ms 2 --dp-bucket 4MB", "--dp-bucket applies to --dp D with D > 1"},
        {"sim --fwd-ms 1 --bwd-ms 2 --dp 2 --param-bytes 1MB --buckets 2 --dp-bucket 4MB", "not both"},
        {"sim --fwd-ms 1 --bwd-ms 2 --dp 4 --param-bytes 1MB --dp-bucket 8", "want at least 16 bytes"},
        {"sim --fwd-ms 1 --bwd-ms 2 --dp 2 --param-bytes 1MB --dp-bucket 7", "want whole fp32s"},
        {"sweep --dp-bucket 4MB", "--dp-bucket applies to --dp D with D > 1"},
        {"sweep --dp-sizes 1,2 --dp-bucket 1.5GiB", "from 4 bytes to 1GiB"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (!tu_expect_exit(2, bad[i].want, bad[i].args))
            fail();
    print_message("%zu bad uses of --dp-bucket refused with their messages\n", sizeof bad / sizeof *bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grid),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_results_roundtrip),
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_predict_dp),
        cmocka_unit_test(test_bucket_cut),
        cmocka_unit_test(test_sim_bucket),
        cmocka_unit_test(test_sweep_bucket),
        cmocka_unit_test(test_bucket_errors),
    };
    return cmocka_run_group_tests_name("bench_dp", tests, NULL, NULL);
}
