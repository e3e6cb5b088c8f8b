/* Data parallelism (--dp) is the same training as one replica on the union of the shards:
 * `pipenem run --stages 2 --dp 2` gives per iteration the loss of `--stages 1` with twice
 * the batch (gpipe and 1f1b, 1e-5 relative), and in one process two replicas whose
 * gradients are averaged through model_stage_grads hold, after every step, the parameters
 * of one model stepped on both shards' micro-batches: 1e-5 relative in the 2-norm of each
 * stage's parameters. Element by element, AdamW divides a near-zero gradient by its own
 * running scale, so a rounding difference in it moves that parameter by a fraction of a
 * learning-rate step: the largest single difference is printed in such steps. With
 * --dp-bucket, each bucket is one ALLREDUCE row and the training does not change. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/results.h"
#include "models/model.h"
#include "pipeline/allreduce.h"
#include "tests/testutil.h"

static char out[1 << 18];

enum { MAXIT = 64 };

static void dp_losses_match(const char *schedule)
{
    double ref[MAXIT], got[MAXIT];
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
            for (int d = 0; d < D; d++)
                assert_int_equal(model_stage_grads(&rep[d][s], &g[d], &n[d]), 0);
            assert_int_equal(n[0], rep[0][s].n_params);
            for (size_t j = 0; j < n[0]; j++) { /* what the all-reduce leaves on every replica */
                float mean = (g[0][j] + g[1][j]) * 0.5f;
                g[0][j] = g[1][j] = mean;
            }
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dp_params),
        cmocka_unit_test(test_dp_grads_emulate),
        cmocka_unit_test(test_dp_losses_gpipe),
        cmocka_unit_test(test_dp_losses_1f1b),
        cmocka_unit_test(test_dp_bucket_rows),
        cmocka_unit_test(test_dp_bucket_keys),
    };
    return cmocka_run_group_tests_name("pipeline_dp", tests, NULL, NULL);
}
