/* models/: the emulate backend sleeps for exactly the modelled time without using the
 * CPU, holds no parameters or activations (so full-scale models fit), and takes its
 * durations from a device, from explicit times or from a calibration file; plus the
 * accounting against known parameter counts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "models/model.h"
#include "tests/testutil.h"

static model_stage_params_t params_for(const char *model, int T, int B, int M, int P, int s, const char *compute)
{
    model_stage_params_t p;
    memset(&p, 0, sizeof p);
    char err[256];
    if (model_config_get(model, &p.cfg, err, sizeof err))
        fail_msg("%s", err);
    p.seq_len = T;
    p.micro_batch_size = B;
    p.micro_batches = M;
    p.stages = P;
    p.stage = s;
    p.compute = compute;
    p.dataset = "random";
    p.seed = 1;
    p.lr = 1e-4f;
    return p;
}

static void init_ok(model_stage_t *st, const model_stage_params_t *p)
{
    char err[512];
    int rc = model_stage_init(st, p, err, sizeof err);
    if (rc)
        fail_msg("model_stage_init(%s): %d %s", p->compute, rc, err);
}

static double ts_sec(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define DUR_TOL 0.02   /* measured duration within 2% of the model */
#define CPU_TOL 0.05   /* CPU time under 5% of the wall time while waiting */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Times `reps` forward+backward pairs against the modelled seconds. The median deviation
 * must be within 2%. On a loaded 2-core host a wake-up comes late by up to a scheduler
 * slice (~3 ms measured at load 9), noise of the host rather than of the model, so the
 * modelled durations here are 0.3 s and longer (the worst case is printed). */
static void check_durations(model_stage_t *st, int reps, const char *what)
{
    model_account_t a;
    model_stage_account(st, &a);
    size_t nb = model_stage_act_bytes(st);
    float *in = malloc(nb), *out = malloc(nb);
    double *dev = calloc(2 * reps, sizeof *dev);
    assert_non_null(in);
    assert_non_null(out);
    double wall = 0, cpu = 0, mean_signed = 0;
    for (int r = 0; r < reps; r++)
        for (int kind = 0; kind < 2; kind++) {
            double w0 = ts_sec(CLOCK_MONOTONIC), c0 = ts_sec(CLOCK_THREAD_CPUTIME_ID);
            int rc = kind == 0 ? model_stage_forward(st, 0, r, in, out) : model_stage_backward(st, 0, r, out, in);
            double w = ts_sec(CLOCK_MONOTONIC) - w0, c = ts_sec(CLOCK_THREAD_CPUTIME_ID) - c0;
            assert_int_equal(rc, 0);
            double model = kind == 0 ? a.fwd_s : a.bwd_s;
            if (w < model)
                fail_msg("%s: %s returned after %.3f ms, before the modelled %.3f ms", what,
                         kind ? "backward" : "forward", w * 1e3, model * 1e3);
            dev[2 * r + kind] = (w - model) / model;
            mean_signed += dev[2 * r + kind] / (2 * reps);
            wall += w;
            cpu += c;
        }
    qsort(dev, 2 * reps, sizeof *dev, cmp_double);
    double median = dev[reps], worst = dev[2 * reps - 1];
    print_message("%s: fwd %.3f ms bwd %.3f ms modelled; deviation median %.3f%% worst %.3f%%, CPU %.3f%% "
                  "of a core over %.0f ms (limits %.0f%%, %.0f%%)\n", what, a.fwd_s * 1e3, a.bwd_s * 1e3,
                  100 * median, 100 * worst, 100 * cpu / wall, wall * 1e3, 100 * DUR_TOL, 100 * CPU_TOL);
    if (median > DUR_TOL)
        fail_msg("%s: the median call took %.2f%% longer than modelled (limit %.0f%%)", what, 100 * median,
                 100 * DUR_TOL);
    if (cpu / wall > CPU_TOL)
        fail_msg("%s used %.2f%% of a core while waiting", what, 100 * cpu / wall);
    free(dev);
    free(in);
    free(out);
}

static void test_emulate_explicit_times(void **state)
{
    (void)state;
    model_stage_params_t p = params_for("tiny", 64, 2, 4, 2, 1, "emulate:fwd=300ms,bwd=600ms,opt=5ms");
    model_stage_t st;
    init_ok(&st, &p);
    model_account_t a;
    model_stage_account(&st, &a);
    assert_true(a.fwd_s == 300e-3 && a.bwd_s == 600e-3 && a.opt_s == 5e-3);
    check_durations(&st, 3, "emulate:fwd=300ms,bwd=600ms");
    double t0 = ts_sec(CLOCK_MONOTONIC);
    assert_int_equal(model_stage_step(&st, 0), 0);
    double d = ts_sec(CLOCK_MONOTONIC) - t0;
    print_message("step: %.3f ms (modelled 5 ms)\n", d * 1e3);
    assert_true(d >= 5e-3);
    assert_true(isnan(model_stage_loss(&st)));
    model_stage_destroy(&st);
}

/* A full-size stage: gpt3-2.7b, seq 2048, micro-batch 16, a100. Nothing but the tables is
 * allocated, and the modelled time is the FLOP count over peak x efficiency. */
static void test_emulate_device_full_scale(void **state)
{
    (void)state;
    size_t rss0 = model_peak_rss_bytes();
    model_stage_params_t p = params_for("gpt3-2.7b", 2048, 16, 8, 4, 1, "emulate:a100");
    model_stage_t st;
    init_ok(&st, &p);
    model_account_t a;
    model_stage_account(&st, &a);
    char desc[256];
    model_stage_describe(&st, desc, sizeof desc);
    print_message("%s: stage 1/4 %zu params, fwd %.2f TFLOP -> %.3f ms, bwd %.3f ms, opt %.3f ms\n", desc,
                  a.params, a.fwd_flops * 1e-12, a.fwd_s * 1e3, a.bwd_s * 1e3, a.opt_s * 1e3);
    assert_non_null(strstr(desc, "312.0 TFLOP/s"));
    char desc2[256];
    model_compute_describe("emulate:a100", desc2, sizeof desc2);
    assert_string_equal(desc, desc2);
    assert_non_null(strstr(desc, "efficiency 0.50"));
    assert_true(a.peak_flops == 312e12 && a.efficiency == 0.5);
    assert_true(fabs(a.fwd_s - a.fwd_flops / (312e12 * 0.5)) < 1e-12);
    assert_true(fabs(a.bwd_s - 2 * a.fwd_s) < 1e-12);
    assert_int_equal(a.param_bytes + a.grad_bytes + a.opt_bytes + a.act_bytes, 0);
    check_durations(&st, 2, "emulate:a100 gpt3-2.7b stage");
    model_stage_destroy(&st);
    size_t grown = model_peak_rss_bytes() - rss0;
    print_message("peak RSS grew by %.1f MiB\n", grown / 1048576.0);
}

/* gpt3-small at seq 2048 with 64 micro-batches in flight on every stage fits: emulate
 * allocates no activations, though the accounting reports what a real stage would hold. */
static void test_emulate_memory(void **state)
{
    (void)state;
    size_t rss0 = model_peak_rss_bytes();
    double saved = 0;
    for (int s = 0; s < 4; s++) {
        model_stage_params_t p = params_for("gpt3-small", 2048, 1, 64, 4, s, "emulate:v100");
        p.max_inflight = 64;
        model_stage_t st;
        init_ok(&st, &p);
        model_account_t a;
        model_stage_account(&st, &a);
        assert_int_equal(a.act_bytes, 0);
        assert_int_equal(a.param_bytes, 0);
        assert_int_equal(a.boundary_bytes, (size_t)2048 * 768 * 4);
        saved += 64.0 * a.saved_bytes_per_mb;
        model_stage_destroy(&st);
    }
    size_t grown = model_peak_rss_bytes() - rss0;
    print_message("gpt3-small seq 2048, 4 stages x 64 in flight: a real run would hold %.1f GiB of "
                  "activations; emulate grew the peak RSS by %.1f MiB (limit 64 MiB)\n",
                  saved / 1073741824.0, grown / 1048576.0);
    assert_true(grown < 64u << 20);
}

static void test_emulate_calibration_replay(void **state)
{
    (void)state;
    char path[] = "/tmp/pn-models-calib-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "# test\npipenem-calibration 1\nmodel tiny\nlayers 2\nhidden 64\nheads 4\nvocab 256\n"
               "seq_len 64\nmicro_batch_size 2\nrecompute 0\nembed 0.001 0.002\nlayer 0 0.010 0.020\n"
               "layer 1 0.151 0.302\nhead 0.145 0.289\nopt_per_param 1e-9\n");
    fclose(f);
    char compute[64];
    snprintf(compute, sizeof compute, "emulate:%s", path);
    model_stage_t st;
    model_stage_params_t p = params_for("tiny", 64, 2, 2, 2, 0, compute);
    p.cfg.layers = 2; /* the calibration file measured a 2-layer tiny */
    init_ok(&st, &p);
    model_account_t a;
    model_stage_account(&st, &a);
    assert_true(fabs(a.fwd_s - 0.011) < 1e-12 && fabs(a.bwd_s - 0.022) < 1e-12);
    model_stage_destroy(&st);
    p = params_for("tiny", 64, 2, 2, 2, 1, compute);
    p.cfg.layers = 2; /* the calibration file measured a 2-layer tiny */
    init_ok(&st, &p);
    model_stage_account(&st, &a);
    assert_true(fabs(a.fwd_s - 0.296) < 1e-12 && fabs(a.bwd_s - 0.591) < 1e-12);
    check_durations(&st, 2, "emulate:FILE stage 1");
    model_stage_destroy(&st);
    /* a run that does not match what was measured is refused, naming the difference */
    char err[512];
    p = params_for("tiny", 32, 2, 2, 2, 1, compute);
    p.cfg.layers = 2; /* the calibration file measured a 2-layer tiny */
    assert_int_equal(model_stage_init(&st, &p, err, sizeof err), -EINVAL);
    print_message("mismatch: %s\n", err);
    assert_non_null(strstr(err, "seq-len 64"));
    unlink(path);
}

/* GPT-2 small (tied, context 1024) has 124,439,808 parameters. */
static void test_accounting(void **state)
{
    (void)state;
    size_t total = 0;
    for (int s = 0; s < 3; s++) {
        model_stage_params_t p = params_for("gpt3-small", 1024, 1, 1, 3, s, "emulate:h100");
        p.cfg.context = 1024;
        p.tied_embeddings = 1;
        model_stage_t st;
        init_ok(&st, &p);
        model_account_t a;
        model_stage_account(&st, &a);
        total += a.params - (s == 2 ? (size_t)50257 * 768 : 0); /* the head twin is wte again */
        if (s == 0)
            assert_int_equal(a.params_total, 124439808);
        if (s == 0 || s == 2) {
            float *g;
            size_t n;
            assert_int_equal(model_stage_tied_grad(&st, &g, &n), 0);
            assert_int_equal(n, (size_t)50257 * 768);
        } else {
            float *g;
            size_t n;
            assert_int_equal(model_stage_tied_grad(&st, &g, &n), -ENOENT);
        }
        model_stage_destroy(&st);
    }
    assert_int_equal(total, 124439808);
    /* FLOPs per token of gpt3-small at T = 2048: 6 N_matmul + 6 L T d */
    model_stage_params_t p = params_for("gpt3-small", 2048, 4, 1, 1, 0, "emulate:v100");
    model_stage_t st;
    init_ok(&st, &p);
    model_account_t a;
    model_stage_account(&st, &a);
    double nm = 12.0 * 12 * 768 * 768 + 50257.0 * 768, fpt = 6 * nm + 6.0 * 12 * 2048 * 768;
    print_message("gpt3-small: %zu params (untied), N_matmul %zu, %.4g FLOPs/token, fwd+bwd %.4g FLOPs "
                  "per micro-batch of 4x2048, activations %.1f MiB per in-flight micro-batch\n",
                  a.params_total, a.params_matmul, a.flops_per_token, a.fwd_flops + a.bwd_flops,
                  a.saved_bytes_per_mb / 1048576.0);
    assert_int_equal(a.params_matmul, (size_t)nm);
    /* --recompute keeps one (B, T, C) tensor per layer instead of all of them */
    model_stage_params_t pr = p;
    pr.recompute = 1;
    model_stage_t sr;
    init_ok(&sr, &pr);
    model_account_t ar;
    model_stage_account(&sr, &ar);
    print_message("activations per in-flight micro-batch: %.1f MiB, with --recompute %.1f MiB\n",
                  a.saved_bytes_per_mb / 1048576.0, ar.saved_bytes_per_mb / 1048576.0);
    /* a layer saves 16 (B,T,C) tensors (ln1, qkv x3, atty, res2, ln2, fch x4, gelu x4,
     * out), 4 (B,T) statistics and the (B,NH,T,T) attention; recompute keeps only `out` */
    double B = 4, T = 2048, C = 768, NH = 12;
    double layer = 16 * B * T * C + 4 * B * T + B * NH * T * T;
    assert_true((double)a.saved_bytes_per_mb - ar.saved_bytes_per_mb == 12 * (layer - B * T * C) * 4);
    model_stage_destroy(&sr);
    assert_true(fabs(a.flops_per_token - fpt) < 1);
    assert_true(fabs((a.fwd_flops + a.bwd_flops) - fpt * 4 * 2048) / (fpt * 4 * 2048) < 1e-12);
    model_stage_destroy(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_emulate_explicit_times),
        cmocka_unit_test(test_emulate_device_full_scale),
        cmocka_unit_test(test_emulate_memory),
        cmocka_unit_test(test_emulate_calibration_replay),
        cmocka_unit_test(test_accounting),
    };
    return cmocka_run_group_tests_name("models_emulate", tests, NULL, NULL);
}
