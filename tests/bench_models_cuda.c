/* Benchmark of the cuda backend: one gpt3-small stage of 4 layers (the middle of three),
 * seq 2048, micro-batch 1..4, forward + backward in each precision, against the FLOP/s of
 * exactly the same cuBLAS calls (shapes, types and buffers) replayed alone in the same run,
 * best of 3 rounds. Targets: 60% of it in fp32/tf32, 50% in fp16/bf16. MFU is against the
 * device's dense peak for the precision (models/precision.c). SKIP with the reason where
 * no GPU is usable. PN_GPU_QUICK=1: micro-batch 1 and 4 only. */
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

#define ROUNDS 3

#ifdef PN_HAVE_CUDA
/* 1 if the row met its target; -1 if the precision cannot run here */
static int bench_one(const char *prec, int mbs, double target)
{
    char compute[32], err[512], name[256];
    snprintf(compute, sizeof compute, "cuda:%s", prec);
    if (model_cuda_probe(prec, name, sizeof name, err, sizeof err)) {
        print_message("# SKIP %s: %s\n", prec, err);
        return -1;
    }
    model_stage_params_t p;
    memset(&p, 0, sizeof p);
    assert_int_equal(model_config_get("gpt3-small", &p.cfg, err, sizeof err), 0);
    p.seq_len = 2048;
    p.micro_batch_size = mbs;
    p.micro_batches = 1;
    p.stages = 3;
    p.stage = 1;
    p.compute = compute;
    p.dataset = "random";
    p.seed = 1;
    p.lr = 1e-4f;
    model_stage_t st;
    if (model_stage_init(&st, &p, err, sizeof err))
        fail_msg("%s", err);
    model_account_t a;
    model_stage_account(&st, &a);
    size_t nb = model_stage_act_bytes(&st);
    void *in = calloc(1, nb), *out = calloc(1, nb);
    assert_non_null(in);
    assert_non_null(out);
    /* warm-up: cuBLAS picks its kernels, the clocks come up */
    assert_int_equal(model_stage_forward(&st, 0, 0, in, out), 0);
    assert_int_equal(model_stage_backward(&st, 0, 0, out, in), 0);
    double best_model = INFINITY, best_ref = INFINITY, ref_flops = 0;
    for (int r = 0; r < ROUNDS; r++) {
        model_stage_prof_reset(&st);
        assert_int_equal(model_stage_forward(&st, 1, 0, in, out), 0);
        assert_int_equal(model_stage_backward(&st, 1, 0, out, in), 0);
        best_model = fmin(best_model, st.prof.fwd + st.prof.bwd);
        double f, s;
        assert_int_equal(model_cuda_gemm_reference(&st, 3, &f, &s), 0);
        best_ref = fmin(best_ref, s);
        ref_flops = f;
    }
    double rate = (a.fwd_flops + a.bwd_flops) / best_model, ref_rate = ref_flops / best_ref;
    double ratio = rate / ref_rate, mfu = st.peak_flops > 0 ? rate / st.peak_flops : NAN;
    print_message("  %5s %3d %10.3f %10.1f %10.1f %10.1f %8.1f %8.1f %10.1f  %s\n", prec, mbs, best_model * 1e3,
                  (a.fwd_flops + a.bwd_flops) * 1e-9, rate * 1e-12, ref_rate * 1e-12, 100 * ratio, 100 * mfu,
                  model_cuda_device_bytes(&st) / 1048576.0, ratio >= target ? "OK" : "BELOW TARGET");
    free(in);
    free(out);
    model_stage_destroy(&st);
    return ratio >= target;
}

static void bench_stage_vs_cublas(void **state)
{
    (void)state;
    char name[256], why[512];
    if (model_cuda_probe("", name, sizeof name, why, sizeof why)) {
        print_message("SKIP: no usable GPU: %s\n", why);
        skip();
    }
    int quick = getenv("PN_GPU_QUICK") && atoi(getenv("PN_GPU_QUICK"));
    const char *precs[] = {"fp32", "tf32", "fp16", "bf16"};
    const double target[] = {0.60, 0.60, 0.50, 0.50};
    print_message("# gpt3-small stage 1/3 (4 layers), seq 2048, forward + backward on %s, best of %d\n", name, ROUNDS);
    print_message("#  %5s %3s %10s %10s %10s %10s %8s %8s %10s\n", "prec", "mbs", "time", "work", "stage", "cuBLAS",
                  "ratio", "MFU", "device");
    print_message("#  %5s %3s %10s %10s %10s %10s %8s %8s %10s\n", "", "", "(ms)", "(GFLOP)", "(TFLOP/s)", "(TFLOP/s)",
                  "(%)", "(%)", "(MiB)");
    int below = 0, rows = 0;
    for (int i = 0; i < 4; i++)
        for (int mbs = 1; mbs <= 4; mbs++) {
            if (quick && mbs != 1 && mbs != 4)
                continue;
            int r = bench_one(precs[i], mbs, target[i]);
            if (r < 0)
                break;
            below += !r;
            rows++;
        }
    print_message("# %d rows, %d below target: %s\n", rows, below, below ? "FAILED" : "OK");
    if (below)
        fail_msg("%d of %d rows below the FLOP/s target", below, rows);
}
#endif

int main(void)
{
#ifdef PN_HAVE_CUDA
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bench_stage_vs_cublas),
    };
    return cmocka_run_group_tests_name("bench_models_cuda", tests, NULL, NULL);
#else
    printf("SKIP: built without CUDA (no nvcc)\n[  SKIPPED ] 1 test(s).\n");
    return 0;
#endif
}
