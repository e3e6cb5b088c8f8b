/* Benchmark of the cpu backend: one gpt3-small stage of 4 layers (the middle of three),
 * seq 256, micro-batch 4, forward + backward, against the FLOP/s of exactly the same
 * sgemm calls (shapes and buffers) replayed alone in the same run, best of 3 rounds,
 * on 1 and on 2 threads. Target: at least 60% of it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/model.h"
#include "tests/testutil.h"

#define TARGET 0.60
#define ROUNDS 3

static void bench_stage_vs_sgemm(int threads)
{
    model_stage_params_t p;
    memset(&p, 0, sizeof p);
    char err[512];
    assert_int_equal(model_config_get("gpt3-small", &p.cfg, err, sizeof err), 0);
    p.seq_len = 256;
    p.micro_batch_size = 4;
    p.micro_batches = 1;
    p.stages = 3;
    p.stage = 1;
    p.compute = "cpu";
    p.dataset = "random";
    p.seed = 1;
    p.lr = 1e-4f;
    p.threads = threads;
    model_stage_t st;
    if (model_stage_init(&st, &p, err, sizeof err))
        fail_msg("%s", err);
    model_account_t a;
    model_stage_account(&st, &a);
    size_t nb = model_stage_act_bytes(&st);
    float *in = malloc(nb), *out = malloc(nb);
    assert_non_null(in);
    assert_non_null(out);
    for (size_t i = 0; i < nb / sizeof(float); i++)
        in[i] = 0.01f * (float)(i % 97) - 0.5f;
    /* warm-up: page in the blocks, start the thread pools */
    assert_int_equal(model_stage_forward(&st, 0, 0, in, out), 0);
    assert_int_equal(model_stage_backward(&st, 0, 0, out, in), 0);
    double best_model = INFINITY, best_ref = INFINITY, ref_flops = 0;
    for (int r = 0; r < ROUNDS; r++) {
        /* alternate the two so that both see the same load from other processes */
        model_stage_prof_reset(&st);
        assert_int_equal(model_stage_forward(&st, 1, 0, in, out), 0);
        assert_int_equal(model_stage_backward(&st, 1, 0, out, in), 0);
        best_model = fmin(best_model, st.prof.fwd + st.prof.bwd);
        double f, s;
        assert_int_equal(model_stage_gemm_reference(&st, 1, &f, &s), 0);
        best_ref = fmin(best_ref, s);
        ref_flops = f;
    }
    double model_rate = (a.fwd_flops + a.bwd_flops) / best_model, ref_rate = ref_flops / best_ref;
    double ratio = model_rate / ref_rate;
    print_message("# gpt3-small stage 1/3 (4 layers), seq 256, micro-batch 4, %d threads, best of %d\n",
                  p.threads, ROUNDS);
    print_message("#  fwd+bwd %.3f s  %.1f GFLOP (6N+6LTd)  %.2f GFLOP/s\n", best_model,
                  (a.fwd_flops + a.bwd_flops) * 1e-9, model_rate * 1e-9);
    print_message("#  sgemm   %.3f s  %.1f GFLOP (same calls)  %.2f GFLOP/s\n", best_ref, ref_flops * 1e-9,
                  ref_rate * 1e-9);
    print_message("ratio %.1f%% of GEMM peak (target %.0f%%)\n", 100 * ratio, 100 * TARGET);
    free(in);
    free(out);
    model_stage_destroy(&st);
    if (!(ratio >= TARGET))   /* NaN fails too */
        fail_msg("forward + backward reached %.1f%% of the sgemm FLOP/s, below %.0f%%", 100 * ratio, 100 * TARGET);
}

static void bench_1_thread(void **state)
{
    (void)state;
    bench_stage_vs_sgemm(1);
}

/* OpenMP elementwise kernels and OpenBLAS threading both in play */
static void bench_2_threads(void **state)
{
    (void)state;
    bench_stage_vs_sgemm(2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bench_1_thread),
        cmocka_unit_test(bench_2_threads),
    };
    return cmocka_run_group_tests_name("bench_models", tests, NULL, NULL);
}
