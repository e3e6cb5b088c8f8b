/* The cuda backend against the cpu backend, on a machine with a GPU (SKIP with the reason
 * elsewhere): the loss, every parameter's gradient by name and the parameters after 3
 * AdamW steps, as relative L2 error within 1e-5 (fp32), 5e-3 (tf32), 3e-2 (fp16/bf16) and
 * elementwise |a-b| <= atol + rtol|b| (rtol 10x that, atol 10x that times the tensor's
 * rms); the largest error is printed per tensor. Models: `tiny` in 2 stages and a d=768,
 * T=256, 2-layer config split one layer per stage; variants plain, --recompute and
 * --tied-embeddings; plus a forced fp16 overflow (step skipped, scale halved) and the split
 * backward (B then W) against the whole one.
 * PN_GPU_QUICK=1 keeps every precision and variant on `tiny` and the plain variant (every
 * precision) on d=768, whose cpu reference is the slow part. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/model.h"
#include "models/precision.h"
#include "tests/testutil.h"
#ifdef PN_HAVE_CUDA
#include "models/cuda.h"
#endif

#ifdef PN_HAVE_CUDA

enum { P = 2, M = 2, ITERS = 3 };

typedef struct {
    const char *model;        /* "tiny" or "d768" */
    const char *prec;
    int recompute, tied;
} case_t;

static const double tol_of[MODEL_PREC_N] = {1e-5, 5e-3, 3e-2, 3e-2};

static char gpu_name[256];
static int gpu_ok = -1;
static char gpu_why[512];

static int have_gpu(void)
{
    if (gpu_ok < 0)
        gpu_ok = model_cuda_probe("", gpu_name, sizeof gpu_name, gpu_why, sizeof gpu_why) == 0;
    return gpu_ok;
}

static void stages_init(model_stage_t st[P], const case_t *k, const char *compute)
{
    char err[512];
    for (int s = 0; s < P; s++) {
        model_stage_params_t p;
        memset(&p, 0, sizeof p);
        if (!strcmp(k->model, "tiny")) {
            assert_int_equal(model_config_get("tiny", &p.cfg, err, sizeof err), 0);
            p.seq_len = 64;
            p.micro_batch_size = 2;
        } else {
            assert_int_equal(model_config_get("gpt3-small", &p.cfg, err, sizeof err), 0);
            p.cfg.layers = 2;
            p.seq_len = 256;
            p.micro_batch_size = 1;
        }
        p.micro_batches = M;
        p.stages = P;
        p.stage = s;
        p.compute = compute;
        p.dataset = "random";
        p.seed = 11;
        p.threads = 0;
        p.recompute = k->recompute;
        p.tied_embeddings = k->tied;
        p.lr = 6e-4f;
        if (model_stage_init(&st[s], &p, err, sizeof err))
            fail_msg("%s stage %d: %s", compute, s, err);
    }
}

/* Relative L2 and the elementwise check of a (divided by scale_a) against the reference b;
 * prints one line. gref (may be NULL): elements whose reference gradient is below the
 * gradient check's own atol are left out (and counted): AdamW moves such an element by
 * about +-lr whatever its size, so a sign inside the tolerance decides its direction. The
 * k part of qkvb is the case in point: its gradient is zero up to rounding. */
static int compare_masked(const char *what, const char *name, const float *a, const float *b, size_t n,
                          double scale_a, double tol, const float *gref)
{
    double d2 = 0, r2 = 0, worst = 0, worst_ratio = 0, g2 = 0;
    size_t wi = 0, masked = 0;
    for (size_t i = 0; i < n; i++) {
        r2 += (double)b[i] * b[i];
        if (gref)
            g2 += (double)gref[i] * gref[i];
    }
    double rms = sqrt(r2 / (n ? n : 1)), atol = 10 * tol * rms, rtol = 10 * tol;
    double gmask = gref ? 10 * tol * sqrt(g2 / (n ? n : 1)) : -1;
    for (size_t i = 0; i < n; i++) {
        if (gref && fabs(gref[i]) < gmask) {
            masked++;
            continue;
        }
        double d = a[i] / scale_a - b[i];
        d2 += d * d;
        double ratio = fabs(d) / (atol + rtol * fabs(b[i]) + 1e-30);
        if (ratio > worst_ratio)
            worst_ratio = ratio, worst = fabs(d), wi = i;
    }
    double rel = sqrt(d2) / (sqrt(r2) + 1e-30);
    int ok = (rel <= tol || (r2 == 0 && d2 == 0)) && worst_ratio <= 1;
    char mk[96] = "";
    if (masked)
        snprintf(mk, sizeof mk, "  (%zu of %zu at gradient noise left out)", masked, n);
    print_message("  %-6s %-12s rel_l2 %.3e (tol %.0e)  max|d| %.3e at %zu (%.2f of atol+rtol|b|)%s%s\n", what, name,
                  rel, tol, worst, wi, worst_ratio, mk, ok ? "" : "  FAIL");
    return ok;
}

static int compare(const char *what, const char *name, const float *a, const float *b, size_t n, double scale_a,
                   double tol)
{
    return compare_masked(what, name, a, b, n, scale_a, tol, NULL);
}

/* Forward and backward of every micro-batch of iteration `it` through the P stages of
 * one backend, the tied exchange, then (if step) the optimizer. Boundary buffers are the
 * backend's own bytes (fp16/bf16 for cuda). */
static void iteration_split(model_stage_t st[P], int it, int step, int split)
{
    size_t nb = model_stage_act_bytes(&st[0]);
    void *act[M], *grd[M];
    for (int m = 0; m < M; m++) {
        act[m] = malloc(nb);
        grd[m] = malloc(nb);
        assert_int_equal(model_stage_forward(&st[0], it, m, NULL, act[m]), 0);
        assert_int_equal(model_stage_forward(&st[1], it, m, act[m], NULL), 0);
    }
    for (int m = 0; m < M && !split; m++) {
        assert_int_equal(model_stage_backward(&st[1], it, m, NULL, grd[m]), 0);
        assert_int_equal(model_stage_backward(&st[0], it, m, grd[m], NULL), 0);
    }
    /* zero-bubble order: every B first, the Ws after */
    for (int m = 0; m < M && split; m++) {
        assert_int_equal(model_stage_backward_input(&st[1], it, m, NULL, grd[m]), 0);
        assert_int_equal(model_stage_backward_input(&st[0], it, m, grd[m], NULL), 0);
    }
    for (int m = 0; m < M && split; m++)
        for (int s = 0; s < P; s++)
            assert_int_equal(model_stage_backward_weights(&st[s], it, m), 0);
    for (int m = 0; m < M; m++) {
        free(act[m]);
        free(grd[m]);
    }
    if (!step)
        return;
    float *g0, *g1;
    size_t n0, n1;
    if (!model_stage_tied_grad(&st[0], &g0, &n0) && !model_stage_tied_grad(&st[P - 1], &g1, &n1)) {
        assert_int_equal(n0, n1);
        for (size_t i = 0; i < n0; i++) {
            float a = g0[i];
            g0[i] += g1[i];
            g1[i] += a;
        }
    }
    /* the stages agree on an fp16 overflow before any of them steps, as the pipeline does */
    int overflow = 0;
    for (int s = 0; s < P; s++) {
        int ov = model_stage_overflow(&st[s]);
        assert_true(ov >= 0);
        overflow |= ov;
    }
    for (int s = 0; s < P; s++)
        assert_int_equal(model_stage_step_agreed(&st[s], it, overflow), 0);
}

static void iteration(model_stage_t st[P], int it, int step)
{
    iteration_split(st, it, step, 0);
}

static int run_case(const case_t *k)
{
    model_prec_t prec;
    char compute[64], err[256];
    assert_int_equal(model_prec_parse(k->prec, &prec, err, sizeof err), 0);
    double tol = tol_of[prec];
    snprintf(compute, sizeof compute, "cuda:%s", k->prec);
    print_message("# %s %s%s%s on %s\n", k->model, compute, k->recompute ? " --recompute" : "",
                  k->tied ? " --tied-embeddings" : "", gpu_name);
    model_stage_t ref[P], gpu[P];
    stages_init(ref, k, "cpu");
    stages_init(gpu, k, compute);
    int ok = 1;
    /* gradients of iteration 0, before any step */
    iteration(ref, 0, 0);
    iteration(gpu, 0, 0);
    float *g0[P];
    for (int s = 0; s < P; s++) {
        long skipped;
        double scale = model_stage_loss_scale(&gpu[s], &skipped);
        assert_int_equal(model_cuda_sync_host(&gpu[s]), 0);
        for (int i = 0; i < ref[s].n_tensors; i++) {
            const model_tensor_t *a = model_stage_tensor_find(&gpu[s], ref[s].tensors[i].name);
            assert_non_null(a);
            ok &= compare("grad", a->name, a->grad, ref[s].tensors[i].grad, a->numel, scale, tol);
        }
        g0[s] = malloc(ref[s].n_params * sizeof(float)); /* the parameter check's mask */
        assert_non_null(g0[s]);
        memcpy(g0[s], ref[s].grads, ref[s].n_params * sizeof(float));
    }
    double lr = model_stage_loss_pending(&ref[P - 1]), lg = model_stage_loss_pending(&gpu[P - 1]);
    print_message("  loss   iteration 0: cpu %.6f cuda %.6f rel %.2e\n", lr, lg, fabs(lg - lr) / lr);
    ok &= fabs(lg - lr) <= tol * fabs(lr);
    /* the optimizer: finish iteration 0 (step), then 2 more */
    model_stage_reset(&ref[0]), model_stage_reset(&ref[1]), model_stage_reset(&gpu[0]), model_stage_reset(&gpu[1]);
    for (int it = 0; it < ITERS; it++) {
        iteration(ref, it, 1);
        iteration(gpu, it, 1);
        lr = model_stage_loss(&ref[P - 1]);
        lg = model_stage_loss(&gpu[P - 1]);
        print_message("  loss   iteration %d: cpu %.6f cuda %.6f rel %.2e\n", it, lr, lg, fabs(lg - lr) / lr);
        ok &= fabs(lg - lr) <= tol * fabs(lr);
    }
    for (int s = 0; s < P; s++) {
        long skipped;
        (void)model_stage_loss_scale(&gpu[s], &skipped);
        if (skipped) {
            print_message("  stage %d skipped %ld fp16 steps for overflow: the parameters cannot match\n", s, skipped);
            ok = 0;
        }
        assert_int_equal(model_cuda_sync_host(&gpu[s]), 0);
        for (int i = 0; i < ref[s].n_tensors; i++) {
            const model_tensor_t *a = model_stage_tensor_find(&gpu[s], ref[s].tensors[i].name);
            ok &= compare_masked("param", a->name, a->param, ref[s].tensors[i].param, a->numel, 1.0, tol,
                                 g0[s] + ref[s].tensors[i].offset);
        }
        free(g0[s]);
        model_stage_destroy(&ref[s]);
        model_stage_destroy(&gpu[s]);
    }
    print_message("# %s %s%s%s: %s\n", k->model, compute, k->recompute ? " --recompute" : "",
                  k->tied ? " --tied-embeddings" : "", ok ? "OK" : "FAILED");
    return ok;
}

static void run_cases(const char *model)
{
    if (!have_gpu()) {
        print_message("SKIP: no usable GPU: %s\n", gpu_why);
        skip();
    }
    int quick = getenv("PN_GPU_QUICK") && atoi(getenv("PN_GPU_QUICK"));
    const char *precs[] = {"fp32", "tf32", "fp16", "bf16"};
    int failed = 0, ran = 0;
    for (int v = 0; v < 3; v++)
        for (int i = 0; i < 4; i++) {
            if (quick && v && strcmp(model, "tiny"))
                continue;
            char arg[32], why[512];
            snprintf(arg, sizeof arg, "%s", precs[i]);
            if (model_cuda_probe(arg, NULL, 0, why, sizeof why)) {
                print_message("# SKIP %s %s: %s\n", model, precs[i], why);
                continue;
            }
            case_t k = {model, precs[i], v == 1, v == 2};
            failed += !run_case(&k);
            ran++;
        }
    if (failed)
        fail_msg("%d of %d cases outside tolerance", failed, ran);
}

static void test_cuda_vs_cpu_tiny(void **state)
{
    (void)state;
    run_cases("tiny");
}

static void test_cuda_vs_cpu_d768(void **state)
{
    (void)state;
    run_cases("d768");
}

/* B then W (zero-bubble schedules) against the whole backward, on the GPU: the same
 * gradients (up to the order of atomic additions) and, after a step, parameters */
static void test_split_backward(void **state)
{
    (void)state;
    if (!have_gpu()) {
        print_message("SKIP: no usable GPU: %s\n", gpu_why);
        skip();
    }
    const char *precs[] = {"fp32", "bf16"};
    int ok = 1;
    for (int v = 0; v < 2; v++)
        for (int i = 0; i < 2; i++) {
            char compute[32], why[256];
            if (model_cuda_probe(precs[i], NULL, 0, why, sizeof why))
                continue;
            snprintf(compute, sizeof compute, "cuda:%s", precs[i]);
            case_t k = {"tiny", precs[i], v, 0};
            model_stage_t a[P], b[P];
            stages_init(a, &k, compute);
            stages_init(b, &k, compute);
            iteration_split(a, 0, 0, 0);
            iteration_split(b, 0, 0, 1);
            print_message("# %s%s: B then W vs backward\n", compute, v ? " --recompute" : "");
            double tol = i ? 1e-2 : 1e-6;
            for (int s = 0; s < P; s++) {
                assert_int_equal(model_cuda_sync_host(&a[s]), 0);
                assert_int_equal(model_cuda_sync_host(&b[s]), 0);
                for (int t = 0; t < a[s].n_tensors; t++)
                    ok &= compare("grad", b[s].tensors[t].name, b[s].tensors[t].grad, a[s].tensors[t].grad,
                                  a[s].tensors[t].numel, 1.0, tol);
                model_stage_destroy(&a[s]);
                model_stage_destroy(&b[s]);
            }
        }
    if (!ok)
        fail_msg("B then W differs from the whole backward");
}

static void test_fp16_overflow(void **state)
{
    (void)state;
    if (!have_gpu()) {
        print_message("SKIP: no usable GPU: %s\n", gpu_why);
        skip();
    }
    case_t k = {"tiny", "fp16", 0, 0};
    model_stage_t st[P];
    stages_init(st, &k, "cuda:fp16");
    iteration(st, 0, 1);
    assert_int_equal(model_cuda_sync_host(&st[0]), 0);
    size_t n = st[0].n_params;
    float *before = malloc(n * sizeof(float));
    memcpy(before, st[0].params, n * sizeof(float));
    long sk0[P], sk1[P];
    double s0[P], s1[P];
    for (int s = 0; s < P; s++)
        s0[s] = model_stage_loss_scale(&st[s], &sk0[s]);
    /* the last stage overflows; stage 0, whose gradients are finite, skips with it */
    model_stage_force_overflow(&st[P - 1]);
    iteration(st, 1, 1);
    int agreed = 1;
    for (int s = 0; s < P; s++) {
        s1[s] = model_stage_loss_scale(&st[s], &sk1[s]);
        print_message("stage %d: scale %g -> %g, skipped %ld -> %ld\n", s, s0[s], s1[s], sk0[s], sk1[s]);
        agreed &= s1[s] == s0[s] / 2 && sk1[s] == sk0[s] + 1;
    }
    assert_int_equal(model_cuda_sync_host(&st[0]), 0);
    double moved = 0;
    for (size_t i = 0; i < n; i++)
        moved = fmax(moved, fabs(st[0].params[i] - before[i]));
    print_message("forced overflow on stage %d: stage 0's largest parameter change %g (want 0)\n", P - 1, moved);
    assert_true(agreed && moved == 0);
    /* and the next clean step applies */
    iteration(st, 2, 1);
    assert_int_equal(model_cuda_sync_host(&st[0]), 0);
    moved = 0;
    for (size_t i = 0; i < n; i++)
        moved = fmax(moved, fabs(st[0].params[i] - before[i]));
    print_message("next step: largest parameter change %g (want > 0)\n", moved);
    assert_true(moved > 0);
    free(before);
    for (int s = 0; s < P; s++)
        model_stage_destroy(&st[s]);
}
#endif

int main(void)
{
#ifdef PN_HAVE_CUDA
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp16_overflow),
        cmocka_unit_test(test_split_backward),
        cmocka_unit_test(test_cuda_vs_cpu_tiny),
        cmocka_unit_test(test_cuda_vs_cpu_d768),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
#else
    printf("SKIP: built without CUDA (no nvcc): nothing to compare\n[  SKIPPED ] 1 test(s).\n");
    return 0;
#endif
}
