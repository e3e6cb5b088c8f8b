/* Benchmark of the cpu backend: one gpt3-small stage of 4 layers (the middle of three),
 * seq 256, micro-batch 4, forward + backward, against the FLOP/s of exactly the same
 * sgemm calls (shapes and buffers) replayed alone on OpenBLAS's own threads in the same
 * run, best of ROUNDS rounds, on 1 and on 2 threads, with the time per kernel of the
 * best round. Targets: 85% of it on 1 thread, 80% on 2; the gradients of 1 and 2
 * threads agree within GRAD_TOL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/calib.h"
#include "models/model.h"
#include "tests/testutil.h"

#define ROUNDS 5
/* Relative to the largest gradient entry: the products are cut into per-thread pieces,
 * which OpenBLAS blocks differently (measured 2.8e-7, as OpenBLAS's own threading). */
#define GRAD_TOL 1e-5

typedef struct {
    double model_s, ref_s, kernel_s[MODEL_K_N];
    float *grads;
    size_t n_params;
} result_t;

static result_t results[3]; /* by thread count */

static void load_print(const char *when)
{
    char buf[128] = "?";
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (!fgets(buf, sizeof buf, f))
            snprintf(buf, sizeof buf, "?\n");
        fclose(f);
    }
    print_message("#  load average %s: %s", when, buf);
}

static void stage_make(model_stage_t *st, int threads)
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
    if (model_stage_init(st, &p, err, sizeof err))
        fail_msg("%s", err);
}

/* Seconds of kernel k, or with k == MODEL_K_N what no kernel timed (copies, the layer loop). */
static double kernel_s(const result_t *r, int k)
{
    if (k < MODEL_K_N)
        return r->kernel_s[k];
    double s = r->model_s;
    for (int i = 0; i < MODEL_K_N; i++)
        s -= r->kernel_s[i];
    return s;
}

static void kernels_print(const result_t *r, const result_t *one)
{
    print_message("#  %-14s %9s %7s%s\n", "kernel (best)", "ms", "share", one ? "  speedup vs 1 thread" : "");
    for (int k = 0; k <= MODEL_K_N; k++) {
        double s = kernel_s(r, k);
        if (s <= 0 && k < MODEL_K_N)
            continue;
        char sp[32] = "";
        if (one && s > 0)
            snprintf(sp, sizeof sp, "  %.2fx", kernel_s(one, k) / s);
        print_message("#  %-14s %9.1f %6.1f%%%s\n", k < MODEL_K_N ? model_kernel_names[k] : "other (copies)",
                      s * 1e3, 100 * s / r->model_s, sp);
    }
}

static void bench_stage_vs_sgemm(int threads, double target)
{
    model_stage_t st;
    stage_make(&st, threads);
    model_account_t a;
    model_stage_account(&st, &a);
    size_t nb = model_stage_act_bytes(&st);
    float *in = malloc(nb), *out = malloc(nb);
    assert_non_null(in);
    assert_non_null(out);
    for (size_t i = 0; i < nb / sizeof(float); i++)
        in[i] = 0.01f * (float)(i % 97) - 0.5f;
    /* warm-up: page in the blocks, start the thread pools; its gradients are compared
     * between thread counts */
    assert_int_equal(model_stage_forward(&st, 0, 0, in, out), 0);
    assert_int_equal(model_stage_backward(&st, 0, 0, out, in), 0);
    result_t *res = &results[threads];
    res->n_params = st.n_params;
    res->grads = malloc(st.n_params * sizeof(float));
    assert_non_null(res->grads);
    memcpy(res->grads, st.grads, st.n_params * sizeof(float));
    load_print("before");
    res->model_s = res->ref_s = INFINITY;
    double ref_flops = 0;
    for (int r = 0; r < ROUNDS; r++) {
        /* alternate the two so that both see the same load from other processes */
        model_stage_prof_reset(&st);
        model_kprof_enable(1);
        assert_int_equal(model_stage_forward(&st, 1, 0, in, out), 0);
        assert_int_equal(model_stage_backward(&st, 1, 0, out, in), 0);
        model_kprof_enable(0);
        if (st.prof.fwd + st.prof.bwd < res->model_s) {
            res->model_s = st.prof.fwd + st.prof.bwd;
            model_kprof_get(res->kernel_s);
        }
        double f, s;
        assert_int_equal(model_stage_gemm_reference(&st, 1, &f, &s), 0);
        res->ref_s = fmin(res->ref_s, s);
        ref_flops = f;
    }
    double model_rate = (a.fwd_flops + a.bwd_flops) / res->model_s, ref_rate = ref_flops / res->ref_s;
    double ratio = model_rate / ref_rate;
    print_message("# gpt3-small stage 1/3 (4 layers), seq 256, micro-batch 4, %d threads, best of %d\n", threads,
                  ROUNDS);
    print_message("#  fwd+bwd %.3f s  %.1f GFLOP (6N+6LTd)  %.2f GFLOP/s\n", res->model_s,
                  (a.fwd_flops + a.bwd_flops) * 1e-9, model_rate * 1e-9);
    print_message("#  sgemm   %.3f s  %.1f GFLOP (same calls, OpenBLAS threads)  %.2f GFLOP/s\n", res->ref_s,
                  ref_flops * 1e-9, ref_rate * 1e-9);
    kernels_print(res, threads > 1 && results[1].model_s > 0 ? &results[1] : NULL);
    load_print("after");
    print_message("ratio %d thread%s %.1f%% of sgemm (target %.0f%%)\n", threads, threads > 1 ? "s" : "",
                  100 * ratio, 100 * target);
    free(in);
    free(out);
    model_stage_destroy(&st);
    if (!(ratio >= target))   /* NaN fails too */
        fail_msg("forward + backward reached %.1f%% of the sgemm FLOP/s, below %.0f%%", 100 * ratio, 100 * target);
}

static void bench_1_thread(void **state)
{
    (void)state;
    bench_stage_vs_sgemm(1, 0.85);
}

/* the products split over the OpenMP threads, elementwise kernels on them too */
static void bench_2_threads(void **state)
{
    (void)state;
    bench_stage_vs_sgemm(2, 0.80);
}

/* the same first forward + backward on 1 and on 2 threads */
static void bench_grads_1_vs_2_threads(void **state)
{
    (void)state;
    const result_t *a = &results[1], *b = &results[2];
    if (!a->grads || !b->grads || a->n_params != b->n_params)
        fail_msg("the 1- and 2-thread benchmarks did not both run");
    double worst = 0, amax = 0;
    size_t differ = 0;
    for (size_t i = 0; i < a->n_params; i++) {
        double d = fabs((double)a->grads[i] - b->grads[i]);
        worst = fmax(worst, d);
        amax = fmax(amax, fabs(a->grads[i]));
        differ += a->grads[i] != b->grads[i];
    }
    print_message("gradients 1 vs 2 threads: %zu of %zu differ, largest difference %.3g (%.3g of the largest "
                  "entry, tolerance %.0e)\n", differ, a->n_params, worst, worst / amax, GRAD_TOL);
    if (worst > GRAD_TOL * amax)
        fail_msg("the 2-thread gradients differ from the 1-thread ones by %.3g of the largest entry", worst / amax);
}

static int teardown(void **state)
{
    (void)state;
    for (int t = 0; t < 3; t++)
        free(results[t].grads);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bench_1_thread),
        cmocka_unit_test(bench_2_threads),
        cmocka_unit_test(bench_grads_1_vs_2_threads),
    };
    return cmocka_run_group_tests_name("bench_models", tests, NULL, teardown);
}
