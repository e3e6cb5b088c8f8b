/* The GEMM reference of the benchmarks and `pipenem calibrate`: the cpu backend's sgemm
 * calls of one forward + backward, recorded as they run and replayed alone, so that a
 * stage's measured time can be set against what its matrix products alone take. */
#include "models/calib.h"

#include <cblas.h>
#include <errno.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"

typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc;
    float alpha, beta;
    const float *A, *B;
    float *C;
} gemm_call_t;

typedef struct {
    gemm_call_t *calls;
    size_t n, cap;
    int failed;
} gemm_log_t;

const char *const model_kernel_names[MODEL_K_N] = {"gemm", "attention", "layernorm", "gelu", "residual",
                                                    "bias", "encoder", "crossentropy", "adamw"};

static int kprof_on, kprof_depth;
static double kprof_s[MODEL_K_N];

void model_kprof_enable(int on)
{
    if (on)
        memset(kprof_s, 0, sizeof kprof_s);
    kprof_on = on;
    kprof_depth = 0;
}

void model_kprof_get(double s[MODEL_K_N])
{
    memcpy(s, kprof_s, sizeof kprof_s);
}

/* 0 when off or nested in another timed kernel. */
double model_kprof_start(void)
{
    if (!kprof_on || omp_in_parallel())
        return 0;
    return kprof_depth++ ? 0 : pn_now();
}

void model_kprof_stop(model_kernel_t k, double t0)
{
    if (!kprof_on || omp_in_parallel())
        return;
    if (kprof_depth > 0)
        kprof_depth--;
    if (t0 > 0)
        kprof_s[k] += pn_now() - t0;
}

/* Set only while model_stage_gemm_reference records one forward + backward. */
static gemm_log_t *gemm_recording;

static void gemm_record(gemm_log_t *lg, const gemm_call_t *call)
{
    if (lg->n == lg->cap) {
        size_t cap = lg->cap ? 2 * lg->cap : 256;
        gemm_call_t *c = realloc(lg->calls, cap * sizeof *c);
        if (!c)
            lg->failed = 1;
        else {
            lg->calls = c;
            lg->cap = cap;
        }
    }
    if (lg->n < lg->cap)
        lg->calls[lg->n++] = *call;
}

static void sgemm1(const gemm_call_t *c)
{
    cblas_sgemm(CblasRowMajor, c->ta ? CblasTrans : CblasNoTrans, c->tb ? CblasTrans : CblasNoTrans, c->M,
                c->N, c->K, c->alpha, c->A, c->lda, c->B, c->ldb, c->beta, c->C, c->ldc);
}

/* Products below this many multiply-adds stay on one thread: the split's fork/join and
 * the second copy of the shared operand's packing cost more than they save. */
#define SPLIT_MIN (1 << 21)
/* Piece boundaries on multiples of the sgemm micro-kernels' unrolling. */
enum { SPLIT_ALIGN = 32 };

/* Piece i of n of [0, len), on SPLIT_ALIGN boundaries. */
static void split_range(int len, int i, int n, int *lo, int *hi)
{
    int units = (len + SPLIT_ALIGN - 1) / SPLIT_ALIGN;
    int a = (int)((long)units * i / n) * SPLIT_ALIGN, b = (int)((long)units * (i + 1) / n) * SPLIT_ALIGN;
    *lo = a < len ? a : len;
    *hi = b < len ? b : len;
}

/* One product on the OpenMP threads: the rows (or columns) of C are cut into one piece
 * per thread and each piece is a single-threaded sgemm. The cpu backend keeps OpenBLAS
 * at one thread so that OpenMP is the only thread pool: OpenBLAS's pthreads workers
 * poll for ~0.1 s after each call and libgomp's for a while after each region, and two
 * pools polling on the same cores took a third of the time at two threads. A piece
 * computes each element of C with the same k-order as the whole call, so the result
 * does not depend on the thread count. */
static void sgemm_split(const gemm_call_t *c, int nt)
{
    int by_rows = c->M >= c->N, len = by_rows ? c->M : c->N;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int i = 0; i < nt; i++) {
        int lo, hi;
        split_range(len, i, nt, &lo, &hi);
        if (lo >= hi)
            continue;
        gemm_call_t p = *c;
        if (by_rows) {
            p.M = hi - lo;
            p.A = c->ta ? c->A + lo : c->A + (size_t)lo * c->lda;
            p.C = c->C + (size_t)lo * c->ldc;
        } else {
            p.N = hi - lo;
            p.B = c->tb ? c->B + (size_t)lo * c->ldb : c->B + lo;
            p.C = c->C + lo;
        }
        sgemm1(&p);
    }
}

void model_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *Cm, int ldc)
{
    gemm_call_t c = {ta, tb, M, N, K, lda, ldb, ldc, alpha, beta, A, B, Cm};
    if (gemm_recording) {
        /* attention calls this from inside its parallel loop over heads */
#pragma omp critical(pn_gemm_record)
        gemm_record(gemm_recording, &c);
    }
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    double t0 = model_kprof_start();
    if (nt > 1 && (double)M * N * K >= SPLIT_MIN && (M >= nt * SPLIT_ALIGN || N >= nt * SPLIT_ALIGN))
        sgemm_split(&c, nt);
    else
        sgemm1(&c);
    model_kprof_stop(MODEL_K_GEMM, t0);
}

int model_stage_gemm_reference(model_stage_t *st, int reps, double *flops, double *seconds)
{
    if (st->backend != &model_backend_cpu || reps < 1)
        return -EINVAL;
    size_t nb = (size_t)st->B * st->T * st->C;
    float *in = calloc(nb, sizeof(float)), *out = calloc(nb, sizeof(float));
    gemm_log_t lg = {0};
    int rc = -ENOMEM;
    if (!in || !out)
        goto out;
    for (size_t i = 0; i < nb; i++)
        in[i] = out[i] = 0.01f * (float)((i * 7919) % 101) - 0.5f;
    model_stage_reset(st);
    gemm_recording = &lg;
    rc = model_stage_forward(st, 0, 0, in, out);
    if (!rc)
        rc = model_stage_backward(st, 0, 0, out, in);
    gemm_recording = NULL;
    if (rc)
        goto out;
    rc = -ENOMEM;
    if (lg.failed)
        goto out;
    /* Replayed on the very buffers the stage used, so that operands come from the same
     * places in the memory hierarchy; only the stage's other work is missing. The
     * activations and gradients it overwrites are dropped by the reset below. */
    double f = 0;
    for (size_t i = 0; i < lg.n; i++)
        f += 2.0 * lg.calls[i].M * lg.calls[i].N * lg.calls[i].K;
    /* The yardstick is OpenBLAS's own threaded sgemm, each call whole, on as many
     * threads as the stage's OpenMP (the backend runs OpenBLAS at one thread and splits
     * the products itself, see sgemm_split). */
    openblas_set_num_threads(omp_get_max_threads());
    double t0 = pn_now();
    for (int r = 0; r < reps; r++)
        for (size_t i = 0; i < lg.n; i++)
            sgemm1(&lg.calls[i]);
    *seconds = (pn_now() - t0) / reps;
    openblas_set_num_threads(1);
    *flops = f;
    rc = 0;
out:
    model_stage_reset(st);
    free(lg.calls);
    free(in);
    free(out);
    return rc;
}
