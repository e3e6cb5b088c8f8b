/* Data parallelism (--dp) is the same training as one replica on the union of the shards:
 * `pipenem run --stages 2 --dp 2` gives per iteration the loss of `--stages 1` with twice
 * the batch (gpipe and 1f1b, 1e-5 relative), and in one process two replicas whose
 * gradients are averaged through model_stage_grads hold, after every step, the parameters
 * of one model stepped on both shards' micro-batches: 1e-5 relative in the 2-norm of each
 * stage's parameters. Element by element, AdamW divides a near-zero gradient by its own
 * running scale, so a rounding difference in it moves that parameter by a fraction of a
 * learning-rate step: the largest single difference is printed in such steps. With
 * --dp-bucket, each bucket is one ALLREDUCE row and the training does not change. With
 * --compute cuda, --dp is accepted over UCX only, without --dp-overlap (the GPU run itself
 * is tests/gpu/check.sh's dp step). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/results.h"
#include "common/clock.h"
#include "models/model.h"
#include "pipeline/allreduce.h"
#include "pipeline/exec.h"
#include "pipeline/ucx.h"
#include "tests/testutil.h"

static char out[1 << 18];

enum { MAXIT = 64 };

static void dp_losses_match(const char *schedule)
{
    double ref[MAXIT], got[MAXIT], ovl[MAXIT];
    int rc = tu_pipenem_run(out, sizeof out,
                            "run --model tiny --compute cpu --stages 1 --batch-size 16 --schedule %s --iters 5",
                            schedule);
    if (rc)
        fail_msg("1 stage, batch 16 exited %d:\n%s", rc, out);
    int n1 = tu_parse_losses(out, ref, MAXIT);
    rc = tu_pipenem_run(out, sizeof out,
                        "run --model tiny --compute cpu --stages 2 --dp 2 --batch-size 8 --schedule %s --iters 5",
                        schedule);
    if (rc)
        fail_msg("2 stages x 2 replicas exited %d:\n%s", rc, out);
    if (!strstr(out, "dp=2"))
        fail_msg("the run's header does not say dp=2:\n%s", out);
    int n2 = tu_parse_losses(out, got, MAXIT);
    assert_int_equal(n1, 6); /* 1 warm-up + 5 */
    assert_int_equal(n2, n1);
    double worst = tu_worst_reldiff(ref, got, n1, 1e-30); /* a NaN loss fails */
    print_message("%s: 2 stages x --dp 2 (batch 8 each) vs 1 stage with batch 16, %d iterations, largest relative "
                  "loss difference %.3g (tolerance 1e-5)\n", schedule, n1, worst);
    assert_true(worst <= 1e-5);
    rc = tu_pipenem_run(out, sizeof out,
                        "run --model tiny --compute cpu --stages 2 --dp 2 --batch-size 8 --schedule %s --iters 5 "
                        "--dp-overlap", schedule);
    if (rc)
        fail_msg("2 stages x 2 replicas with --dp-overlap exited %d:\n%s", rc, out);
    int n3 = tu_parse_losses(out, ovl, MAXIT), same = n3 == n2;
    for (int i = 0; same && i < n2; i++)
        same = ovl[i] == got[i];
    print_message("%s: --dp-overlap prints %s losses as without it (tolerance: equal as printed)\n", schedule,
                  same ? "the same" : "other");
    assert_true(same);
}

static void test_dp_losses_gpipe(void **state)
{
    (void)state;
    dp_losses_match("gpipe");
}

static void test_dp_losses_1f1b(void **state)
{
    (void)state;
    dp_losses_match("1f1b");
}

enum { P = 2, M = 2, D = 2, ITERS = 3 };

/* Stage s of P of model over m micro-batches of 2 x seq sequences, reading the data from
 * micro-batch offset on. */
static void stage_init(model_stage_t *st, const char *model, const char *compute, int seq, int s, int m, int offset)
{
    model_stage_params_t p;
    char err[512];
    memset(&p, 0, sizeof p);
    assert_int_equal(model_config_get(model, &p.cfg, err, sizeof err), 0);
    p.seq_len = seq;
    p.micro_batch_size = 2;
    p.micro_batches = m;
    p.stages = P;
    p.stage = s;
    p.compute = compute;
    p.dataset = "random";
    p.seed = 11;
    p.threads = 1;
    p.lr = 1e-3f;
    p.data_mb_offset = offset;
    if (model_stage_init(st, &p, err, sizeof err))
        fail_msg("init stage %d: %s", s, err);
}

/* One iteration of a 2-stage model over m micro-batches, without the step. */
static void run_pipeline(model_stage_t *st, int it, int m, float *act, float *grd)
{
    for (int k = 0; k < m; k++) {
        assert_int_equal(model_stage_forward(&st[0], it, k, NULL, act), 0);
        assert_int_equal(model_stage_forward(&st[1], it, k, act, NULL), 0);
        assert_int_equal(model_stage_backward(&st[1], it, k, NULL, grd), 0);
        assert_int_equal(model_stage_backward(&st[0], it, k, grd, NULL), 0);
    }
}

static void test_dp_params(void **state)
{
    (void)state;
    model_stage_t ref[P], rep[D][P];
    for (int s = 0; s < P; s++) {
        stage_init(&ref[s], "tiny", "cpu", 32, s, D * M, 0);
        for (int d = 0; d < D; d++)
            stage_init(&rep[d][s], "tiny", "cpu", 32, s, M, d * M);
    }
    size_t nb = model_stage_act_bytes(&ref[0]);
    float *act = malloc(nb), *grd = malloc(nb);
    assert_non_null(act);
    assert_non_null(grd);
    double worst = 0, worst_abs = 0;
    for (int it = 0; it < ITERS; it++) {
        run_pipeline(ref, it, D * M, act, grd);
        for (int d = 0; d < D; d++)
            run_pipeline(rep[d], it, M, act, grd);
        for (int s = 0; s < P; s++) {
            float *g[D];
            size_t n[D];
            for (int d = 0; d < D; d++) /* as dp_comm_step: _host, average, _upload (no-ops on cpu) */
                assert_int_equal(model_stage_grads(&rep[d][s], &g[d], &n[d]) || model_stage_grads_host(&rep[d][s]), 0);
            assert_int_equal(n[0], rep[0][s].n_params);
            for (size_t j = 0; j < n[0]; j++) { /* what the all-reduce leaves on every replica */
                float mean = (g[0][j] + g[1][j]) * 0.5f;
                g[0][j] = g[1][j] = mean;
            }
            for (int d = 0; d < D; d++)
                assert_int_equal(model_stage_grads_upload(&rep[d][s]), 0);
            assert_int_equal(model_stage_step(&ref[s], it), 0);
            for (int d = 0; d < D; d++)
                assert_int_equal(model_stage_step(&rep[d][s], it), 0);
            for (int d = 0; d < D; d++) {
                double dd = 0, pp = 0;
                for (size_t j = 0; j < ref[s].n_params; j++) {
                    double e = (double)ref[s].params[j] - rep[d][s].params[j];
                    dd += e * e;
                    pp += (double)ref[s].params[j] * ref[s].params[j];
                    worst_abs = fabs(e) > worst_abs ? fabs(e) : worst_abs;
                }
                double e = sqrt(dd / pp);
                worst = e > worst || isnan(e) ? (isnan(e) ? INFINITY : e) : worst;
            }
        }
        print_message("iteration %d: loss %.6f (one model, %d micro-batches) vs %.6f, %.6f (the replicas' shards); "
                      "largest relative parameter difference so far |p - p_ref| / |p_ref| per stage %.3g (tolerance "
                      "1e-5), largest single parameter off by %.3g (%.2g learning-rate steps)\n",
                      it, model_stage_loss(&ref[P - 1]), D * M, model_stage_loss(&rep[0][P - 1]),
                      model_stage_loss(&rep[1][P - 1]), worst, worst_abs, worst_abs / 1e-3);
        double mean = (model_stage_loss(&rep[0][P - 1]) + model_stage_loss(&rep[1][P - 1])) / 2;
        assert_true(tu_reldiff(mean, model_stage_loss(&ref[P - 1]), 1e-30) <= 1e-6);
    }
    assert_true(worst <= 1e-5);
    free(act);
    free(grd);
    for (int s = 0; s < P; s++) {
        model_stage_destroy(&ref[s]);
        for (int d = 0; d < D; d++)
            model_stage_destroy(&rep[d][s]);
    }
}

/* emulate: a real-size buffer of the stage's parameter count, so the all-reduce's network
 * cost is real. */
static void test_dp_grads_emulate(void **state)
{
    (void)state;
    model_stage_t st;
    stage_init(&st, "gpt3-small", "emulate:v100", 2048, 1, 4, 0);
    float *g;
    size_t n;
    assert_int_equal(model_stage_grads(&st, &g, &n), 0);
    model_account_t a;
    model_stage_account(&st, &a);
    print_message("emulate gpt3-small stage 1 of 2: all-reduce buffer of %zu floats, %zu parameters\n", n, a.params);
    assert_int_equal(n, a.params);
    assert_true(n > 1000000);
    g[0] = g[n - 1] = 1; /* writable to its end */
    model_stage_destroy(&st);
}

/* --dp-bucket SIZE: each stage's gradients go round the ring in pieces of SIZE, one
 * ALLREDUCE trace row each (ceil(4 x parameters / SIZE) per rank and iteration, every
 * piece but the last full), and the training is the same as with the default buckets
 * (the same sums: 1e-6 relative on every loss). */
static void test_dp_bucket_rows(void **state)
{
    (void)state;
    enum { BUCKET = 4096, RANKS = 4, IT = 3 }; /* 2 stages x 2 replicas; 1 warm-up + 2 */
    const char *args = "run --model tiny --compute cpu --stages 2 --dp 2 --batch-size 8 --iters 2";
    double ref[MAXIT], got[MAXIT];
    int rc = tu_pipenem_run(out, sizeof out, "%s", args);
    if (rc)
        fail_msg("default buckets exited %d:\n%s", rc, out);
    int n1 = tu_parse_losses(out, ref, MAXIT);
    char trace[] = "/tmp/pn-test-dp-bucket-XXXXXX";
    int fd = mkstemp(trace);
    assert_true(fd >= 0);
    close(fd);
    rc = tu_pipenem_run(out, sizeof out, "%s --dp-bucket 4KiB --trace %s", args, trace);
    if (rc || !strstr(out, "dp_bucket=4096")) {
        unlink(trace);
        fail_msg("--dp-bucket 4KiB exited %d (or its header lacks dp_bucket=4096):\n%s", rc, out);
    }
    int n2 = tu_parse_losses(out, got, MAXIT);
    assert_int_equal(n1, IT);
    assert_int_equal(n2, n1);
    double worst = tu_worst_reldiff(ref, got, n1, 1e-30);
    results_t r;
    char err[512];
    results_init(&r);
    rc = results_trace_read(trace, 0, 0, &r, err, sizeof err);
    unlink(trace);
    if (rc)
        fail_msg("the trace: %s", err);
    long rows[RANKS][IT] = {{0}}, bytes[RANKS][IT] = {{0}}, short_rows[RANKS][IT] = {{0}};
    for (size_t i = 0; i < r.n_ops; i++) {
        const results_op_t *o = &r.ops[i];
        if (strcmp(o->op, "ALLREDUCE"))
            continue;
        assert_true(o->rank >= 0 && o->rank < RANKS && o->iteration >= 0 && o->iteration < IT);
        assert_int_equal(o->micro_batch, rows[o->rank][o->iteration]); /* numbered in order */
        rows[o->rank][o->iteration]++;
        bytes[o->rank][o->iteration] += o->bytes;
        short_rows[o->rank][o->iteration] += o->bytes < BUCKET;
        assert_true(o->bytes > 0 && o->bytes <= BUCKET);
    }
    results_destroy(&r);
    for (int s = 0; s < 2; s++) {
        model_stage_t st;
        stage_init(&st, "tiny", "cpu", 128, s, 1, 0);
        float *g;
        size_t n;
        assert_int_equal(model_stage_grads(&st, &g, &n), 0);
        model_stage_destroy(&st);
        long want = (long)((4 * n + BUCKET - 1) / BUCKET);
        print_message("stage %d: %zu gradient bytes, %ld ALLREDUCE rows of at most %d bytes per rank and "
                      "iteration (ranks %d and %d: %ld and %ld in iteration 1)\n", s, 4 * n, want, BUCKET, s, s + 2,
                      rows[s][1], rows[s + 2][1]);
        for (int d = 0; d < 2; d++)
            for (int it = 0; it < IT; it++) {
                assert_int_equal(rows[s + 2 * d][it], want);
                assert_int_equal(bytes[s + 2 * d][it], (long)(4 * n));
                assert_true(short_rows[s + 2 * d][it] <= 1); /* only the last piece may be short */
            }
    }
    print_message("losses with 4 KiB buckets vs the default 25 MiB: largest relative difference %.3g (tolerance "
                  "1e-6)\n", worst);
    assert_true(worst <= 1e-6);
}

/* Buckets so small that an iteration's ring steps outrun the all-reduce's keys fail every
 * rank before the first step, naming the smallest bucket that fits (not after millions of
 * 8-byte steps). */
static void test_dp_bucket_keys(void **state)
{
    (void)state;
    int rc = tu_pipenem_run(out, sizeof out, "run --model gpt3-small --compute emulate:v100 --stages 3 --dp 2 "
                            "--batch-size 3 --iters 1 --warmup 0 --dp-bucket 8");
    char want[160];
    snprintf(want, sizeof want, "ring steps, more than the %d an iteration can number; give --dp-bucket ",
             ALLREDUCE_MB_END - ALLREDUCE_MB_BASE);
    const char *m = strstr(out, want), *line = m;
    if (rc != 1 || !m)
        fail_msg("--dp-bucket 8 on gpt3-small: exit %d (want 1) and '%s' in:\n%s", rc, want, out);
    while (line > out && line[-1] != '\n')
        line--;
    print_message("%.*s\n", (int)strcspn(line, "\n"), line);
}

/* --dp-overlap against the same job without it, in one process: the P x D ranks of a cpu
 * tiny job are threads, each with its own UCX transport over TCP on loopback and its own
 * ring of replicas, running the executor itself (pipeline/exec.h) with buckets of 16 KiB, so
 * that each stage's gradient block is some 30 buckets, most of them all-reduced while the
 * backward is still running. Averaging is elementwise, so the order of the buckets changes
 * no bit: every loss and every parameter must be bit-identical (tolerance 0). */
enum { XW = P * D, XBUCKET = 16 << 10 };

typedef struct {
    const runcfg_t *cfg;
    transport_t *t;
    allreduce_t ar;
    model_stage_t st;
    int rank, rc;
    exec_result_t r;
    char err[1024];
} xrank_t;

static void *xrank_main(void *arg)
{
    xrank_t *x = arg;
    exec_params_t ep = {.cfg = x->cfg, .st = &x->st, .t = x->t, .stage = runcfg_stage_of(x->cfg, x->rank),
                        .rank_base = runcfg_rank_of(x->cfg, runcfg_replica(x->cfg, x->rank), 0), .dp = &x->ar};
    x->rc = exec_run(&ep, &x->r, x->err, sizeof x->err);
    return NULL;
}

static void xcfg(runcfg_t *cfg, const char *schedule, int overlap, int tied)
{
    char sched[64], err[512];
    snprintf(sched, sizeof sched, "--schedule=%s", schedule);
    char *argv[] = {"test", "--model=tiny", "--compute=cpu", "--stages=2", "--dp=2", "--batch-size=8",
                    "--micro-batch-size=2", sched, "--iters=3", "--warmup=1", "--threads=1", "--timeout=60",
                    overlap ? "--dp-overlap" : "--iters=3", tied ? "--tied-embeddings" : "--iters=3"};
    int argc = (int)(sizeof argv / sizeof *argv), o;
    struct option opts[160];
    assert_true(runcfg_options_table(opts, 160, NULL) > 0);
    runcfg_defaults(cfg);
    optind = 0;
    opterr = 0;
    while ((o = getopt_long(argc, argv, ":", opts, NULL)) != -1)
        assert_int_equal(runcfg_option(cfg, o, optarg, err, sizeof err), 1);
    if (runcfg_finish(cfg, err, sizeof err))
        fail_msg("runcfg_finish: %s", err);
    assert_int_equal(cfg->dp_overlap, overlap);
}

/* The whole job; x[] keeps each rank's stage and result (xjob_free). */
static void xjob_run(const char *schedule, int overlap, int tied, runcfg_t *cfg, xrank_t *x)
{
    transport_t t[XW];
    char err[512];
    xcfg(cfg, schedule, overlap, tied);
    for (int i = 0; i < XW; i++) {
        ucx_params_t prm = {.rank = i, .size = XW, .tls = "tcp", .net_devices = "lo"};
        if (ucx_transport_open(&prm, &t[i], err, sizeof err))
            fail_msg("ucx_transport_open: %s", err);
    }
    for (int i = 0; i < XW; i++)
        for (int j = 0; j < XW; j++) {
            const void *blob;
            size_t len;
            if (i != j && (t[j].ops->address(t[j].impl, &blob, &len) ||
                           t[i].ops->connect(t[i].impl, j, blob, len, err, sizeof err)))
                fail_msg("connect %d to %d: %s", i, j, err);
        }
    pthread_t th[XW];
    for (int i = 0; i < XW; i++) {
        memset(&x[i], 0, sizeof x[i]);
        x[i].cfg = cfg;
        x[i].t = &t[i];
        x[i].rank = i;
        model_stage_params_t mp = cfg->stage_params;
        mp.stage = runcfg_stage_of(cfg, i);
        mp.data_mb_offset = runcfg_replica(cfg, i) * cfg->micro_batches;
        if (model_stage_init(&x[i].st, &mp, err, sizeof err))
            fail_msg("rank %d: model: %s", i, err);
        int ring[D];
        for (int d = 0; d < D; d++)
            ring[d] = runcfg_rank_of(cfg, d, mp.stage);
        allreduce_params_t ap = {&t[i], D, runcfg_replica(cfg, i), ring, XBUCKET, cfg->timeout};
        if (allreduce_init(&x[i].ar, &ap, err, sizeof err))
            fail_msg("rank %d: %s", i, err);
    }
    for (int i = 0; i < XW; i++)
        assert_int_equal(pthread_create(&th[i], NULL, xrank_main, &x[i]), 0);
    for (int i = 0; i < XW; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < XW; i++)
        if (x[i].rc)
            fail_msg("%s%s: rank %d failed: %s", schedule, overlap ? " --dp-overlap" : "", i, x[i].err);
    for (int i = 0; i < XW; i++)
        transport_quiesce(&t[i]);
    for (int i = 0; i < XW; i++) {
        allreduce_destroy(&x[i].ar);
        transport_destroy(&t[i]);
    }
}

static void xjob_free(xrank_t *x)
{
    for (int i = 0; i < XW; i++) {
        exec_result_destroy(&x[i].r);
        model_stage_destroy(&x[i].st);
    }
}

/* Per rank and iteration: ALLREDUCE rows, and those that started before the rank's last
 * BWD / BWD_WEIGHT row of the iteration ended. */
static void xrows(const exec_result_t *r, int iter, int *n_ar, int *early)
{
    double bwd_end = -INFINITY;
    for (size_t k = 0; k < r->n_rows; k++)
        if (r->rows[k].iter == iter && (r->rows[k].kind == SCHED_BWD || r->rows[k].kind == SCHED_BWD_WEIGHT))
            bwd_end = fmax(bwd_end, r->rows[k].end);
    *n_ar = *early = 0;
    for (size_t k = 0; k < r->n_rows; k++)
        if (r->rows[k].iter == iter && r->rows[k].kind == SCHED_ALLREDUCE) {
            (*n_ar)++;
            *early += r->rows[k].start < bwd_end;
        }
}

static void overlap_identical(const char *schedule, int tied)
{
    runcfg_t cfg[2];
    xrank_t *x[2] = {calloc(XW, sizeof(xrank_t)), calloc(XW, sizeof(xrank_t))};
    assert_non_null(x[0]);
    assert_non_null(x[1]);
    xjob_run(schedule, 0, tied, &cfg[0], x[0]);
    xjob_run(schedule, 1, tied, &cfg[1], x[1]);
    int iters = cfg[0].warmup + cfg[0].iters, diff_params = 0, diff_loss = 0, early = 0, rows = 0;
    double worst = 0;
    for (int i = 0; i < XW; i++) {
        const model_stage_t *a = &x[0][i].st, *b = &x[1][i].st;
        assert_int_equal(a->n_params, b->n_params);
        for (size_t j = 0; j < a->n_params; j++)
            if (memcmp(&a->params[j], &b->params[j], sizeof(float))) {
                diff_params++;
                worst = fmax(worst, fabs((double)a->params[j] - b->params[j]));
            }
        for (int it = 0; it < iters; it++) {
            double la = x[0][i].r.loss[it], lb = x[1][i].r.loss[it];
            diff_loss += memcmp(&la, &lb, sizeof la) != 0;
            int n0, e0, n1, e1;
            xrows(&x[0][i].r, it, &n0, &e0);
            xrows(&x[1][i].r, it, &n1, &e1);
            if (n0 != n1 || n0 < 2)
                fail_msg("rank %d iteration %d: %d ALLREDUCE rows without overlap, %d with; want the same, >= 2", i,
                         it, n0, n1);
            rows += n1;
            early += e1;
        }
    }
    print_message("%s%s, 2 stages x --dp 2, %d iterations, buckets of %d KiB (%d ALLREDUCE rows with overlap, %d of "
                  "them started before their rank's last backward row ended): %d parameters and %d losses differ "
                  "from the run without --dp-overlap, largest parameter difference %.3g (tolerance: bit-identical)\n",
                  schedule, tied ? " --tied-embeddings" : "", iters, XBUCKET >> 10, rows, early, diff_params, diff_loss, worst);
    assert_int_equal(diff_params, 0);
    assert_int_equal(diff_loss, 0);
    for (int i = 0; i < 2; i++) {
        xjob_free(x[i]);
        free(x[i]);
    }
}

static void test_dp_overlap_identical_gpipe(void **state)
{
    (void)state;
    overlap_identical("gpipe", 0);
}

static void test_dp_overlap_identical_1f1b(void **state)
{
    (void)state;
    overlap_identical("1f1b", 0);
}

static void test_dp_overlap_identical_zb_h1(void **state)
{
    (void)state;
    overlap_identical("zb-h1", 0);
}

/* The buckets holding the tied matrix's gradient wait for the exchange at the step. */
static void test_dp_overlap_identical_tied(void **state)
{
    (void)state;
    overlap_identical("1f1b", 1);
}

/* --dp-overlap under emulated compute with a shaped DP link (`pipenem run`, 2 stages x 2
 * replicas, emulate:fwd=50ms,bwd=300ms, 3 buckets a stage through 2ms/1Gbps): with overlap an
 * ALLREDUCE row starts before its rank's last backward row of the iteration ends, without
 * none does, and the iteration is shorter with overlap (the difference printed; asserted on
 * the shortest iteration of each run, which a busy moment of the shared machine does not
 * move as it can the median of three). */
#define EMU_RUN "run --model gpt3-small --layers 8 --hidden 512 --heads 8 --vocab 4096 -T 128 --stages 2 --dp 2 " \
                "--batch-size 2 --compute emulate:fwd=50ms,bwd=300ms --net-dp 2ms/1Gbps --iters 3 --warmup 1 " \
                "--schedule 1f1b --timeout 60"

/* (rank, iteration) pairs of a trace CSV whose first ALLREDUCE starts before their last
 * BWD / BWD_WEIGHT ends, out of *pairs with any ALLREDUCE. */
static int trace_early(const char *path, int *pairs)
{
    enum { R = 8, I = 16 };
    double bwd_end[R][I], ar_start[R][I];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < I; i++)
            bwd_end[r][i] = -INFINITY, ar_start[r][i] = INFINITY;
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("no trace %s", path);
    char line[256], op[32];
    int r, it, mb;
    double t0, t1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "%d,%d,%31[^,],%d,%lf,%lf", &r, &it, op, &mb, &t0, &t1) == 6 && r >= 0 && r < R && it >= 0 &&
            it < I) {
            if (!strcmp(op, "BWD") || !strcmp(op, "BWD_WEIGHT"))
                bwd_end[r][it] = fmax(bwd_end[r][it], t1);
            else if (!strcmp(op, "ALLREDUCE"))
                ar_start[r][it] = fmin(ar_start[r][it], t0);
        }
    fclose(f);
    int early = 0;
    *pairs = 0;
    for (r = 0; r < R; r++)
        for (it = 0; it < I; it++)
            if (isfinite(ar_start[r][it])) {
                (*pairs)++;
                early += ar_start[r][it] < bwd_end[r][it];
            }
    return early;
}

/* The median and the shortest of the measured iterations (after the one warm-up). */
static void iteration_times(const char *text, double *median, double *least)
{
    const char *m = strstr(text, "# median iteration time ");
    if (!m || sscanf(m, "# median iteration time %lf", median) != 1)
        fail_msg("no median iteration time in:\n%s", text);
    *least = INFINITY;
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        int it;
        double t, l, tok;
        if (p[0] != '#' && sscanf(p, "%d %lf %lf %lf", &it, &t, &l, &tok) == 4 && it >= 1)
            *least = fmin(*least, t);
    }
    if (!isfinite(*least))
        fail_msg("no measured iteration in:\n%s", text);
}

static void test_dp_overlap_emulate(void **state)
{
    (void)state;
    char path[2][128];
    double med[2], least[2];
    int early[2], pairs[2];
    for (int o = 0; o < 2; o++) {
        snprintf(path[o], sizeof path[o], "/tmp/pn-test-dp-overlap-%d-%d.csv", (int)getpid(), o);
        int rc = tu_pipenem_run(out, sizeof out, EMU_RUN " --trace %s%s", path[o], o ? " --dp-overlap" : "");
        if (rc)
            fail_msg("%s exited %d:\n%s", o ? "--dp-overlap" : "without overlap", rc, out);
        iteration_times(out, &med[o], &least[o]);
        early[o] = trace_early(path[o], &pairs[o]);
        unlink(path[o]);
    }
    print_message("emulate 2 stages x --dp 2, DP link 2ms/1Gbps: (rank, iteration) pairs with an ALLREDUCE started "
                  "before the rank's last backward ended: %d of %d without overlap, %d of %d with; median iteration "
                  "%.3f s without, %.3f s with --dp-overlap: %.0f ms (%.1f%%) shorter; shortest %.3f s and %.3f s: "
                  "%.0f ms shorter\n", early[0], pairs[0], early[1], pairs[1], med[0], med[1], (med[0] - med[1]) * 1e3,
                  100 * (med[0] - med[1]) / med[0], least[0], least[1], (least[0] - least[1]) * 1e3);
    assert_true(pairs[0] >= 4 && pairs[1] == pairs[0]);
    assert_int_equal(early[0], 0);
    assert_true(early[1] > 0);
    assert_true(least[1] < least[0]);
}

/* A replica's stage killed in its first overlapped all-reduce of iteration 1 (the bucket
 * the last backward finalised first, while that backward still runs) fails the run, every
 * rank stopping on its own, naming the killed rank, within --timeout + 10 s. */
static void test_dp_overlap_fault(void **state)
{
    (void)state;
    const char *cases[] = {"kill:1:allreduce", "close:2:allreduce"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char want[3][64];
        int r = cases[i][strlen(cases[i]) - 11] - '0';
        snprintf(want[0], sizeof want[0], "FAILED: rank %d ", r); /* as the fault matrix's dp cases */
        snprintf(want[1], sizeof want[1], "rank %d disconnected", r);
        snprintf(want[2], sizeof want[2], "connection to rank %d ", r);
        setenv("PIPENEM_FAULT", cases[i], 1);
        double t0 = pn_now();
        int rc = tu_pipenem_run(out, sizeof out, EMU_RUN " --dp-overlap --timeout 10");
        double took = pn_now() - t0;
        unsetenv("PIPENEM_FAULT");
        const char *failed = strstr(out, "FAILED: ");
        print_message("PIPENEM_FAULT=%s with --dp-overlap: exit %d after %.1f s (bound 20 s): %.*s\n", cases[i], rc,
                      took, failed ? (int)strcspn(failed, "\n") : 4, failed ? failed : "none");
        if (rc != 1 || !failed || !(strstr(out, want[0]) || strstr(out, want[1]) || strstr(out, want[2])) || took > 20)
            fail_msg("want exit 1 naming rank %d within 20 s:\n%s", r, out);
    }
}

/* runcfg_finish of `--model tiny --stages 2 --dp 2` with the given options: its status,
 * the message in err. */
static int dp_opts_finish(const char *compute, const char *extra, char *err, size_t errlen)
{
    char comp[64];
    snprintf(comp, sizeof comp, "--compute=%s", compute);
    char *argv[] = {"test", "--model=tiny", comp, "--stages=2", "--dp=2", (char *)(extra ? extra : "--iters=3")};
    int argc = (int)(sizeof argv / sizeof *argv), o;
    struct option opts[160];
    runcfg_t cfg;
    assert_true(runcfg_options_table(opts, 160, NULL) > 0);
    runcfg_defaults(&cfg);
    optind = 0;
    opterr = 0;
    err[0] = '\0';
    while ((o = getopt_long(argc, argv, ":", opts, NULL)) != -1)
        assert_int_equal(runcfg_option(&cfg, o, optarg, err, errlen), 1);
    return runcfg_finish(&cfg, err, errlen);
}

/* --dp with --compute cuda: accepted over UCX (the all-reduce through pinned host mirrors,
 * in every precision); refused, each with its own message, over NCCL (ncclAllReduce is
 * not built) and with --dp-overlap (cuda's gradients reach the host at the step only);
 * --dp-overlap stays accepted on the cpu. The CLI says it with exit 2. */
static void test_dp_cuda_options(void **state)
{
    (void)state;
    char err[512];
    const char *ok[] = {"cuda", "cuda:tf32", "cuda:fp16", "cuda:bf16"};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
        if (dp_opts_finish(ok[i], "--transport=ucx", err, sizeof err))
            fail_msg("--compute %s --dp 2 --transport ucx refused: %s", ok[i], err);
    struct {
        const char *compute, *extra, *want[2];
    } bad[] = {
        {"cuda", "--transport=nccl", {"--dp 2 with --transport nccl", "ncclAllReduce on a per-stage communicator"}},
        {"cuda:fp16", "--dp-overlap", {"--dp-overlap with --compute cuda:fp16", "drop --dp-overlap"}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = dp_opts_finish(bad[i].compute, bad[i].extra, err, sizeof err);
        print_message("--compute %s --dp 2 %s: %d, %s\n", bad[i].compute, bad[i].extra, rc, err);
        if (rc != -EINVAL || !strstr(err, bad[i].want[0]) || !strstr(err, bad[i].want[1]))
            fail_msg("want -EINVAL with '%s' and '%s'", bad[i].want[0], bad[i].want[1]);
    }
    if (dp_opts_finish("cpu", "--dp-overlap", err, sizeof err))
        fail_msg("--compute cpu --dp 2 --dp-overlap refused: %s", err);
    if (!tu_expect_exit(2, "ncclAllReduce", "run --model tiny --compute cuda --stages 2 --dp 2 --transport nccl"))
        fail();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dp_overlap_identical_gpipe),
        cmocka_unit_test(test_dp_overlap_identical_1f1b),
        cmocka_unit_test(test_dp_overlap_identical_zb_h1),
        cmocka_unit_test(test_dp_overlap_identical_tied),
        cmocka_unit_test(test_dp_overlap_emulate),
        cmocka_unit_test(test_dp_overlap_fault),
        cmocka_unit_test(test_dp_params),
        cmocka_unit_test(test_dp_grads_emulate),
        cmocka_unit_test(test_dp_losses_gpipe),
        cmocka_unit_test(test_dp_losses_1f1b),
        cmocka_unit_test(test_dp_bucket_rows),
        cmocka_unit_test(test_dp_bucket_keys),
        cmocka_unit_test(test_dp_cuda_options),
    };
    return cmocka_run_group_tests_name("pipeline_dp", tests, NULL, NULL);
}
