/* The GEMM reference of the benchmarks and `pipenem calibrate`: the cpu backend's sgemm
 * calls of one forward + backward, recorded as they run and replayed alone, so that a
 * stage's measured time can be set against what its matrix products alone take. */
#include "models/calib.h"

#include <cblas.h>
#include <errno.h>
#include <stdlib.h>

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

/* Set only while model_stage_gemm_reference records one forward + backward. */
static gemm_log_t *gemm_recording;

void model_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *Cm, int ldc)
{
    gemm_log_t *lg = gemm_recording;
    if (lg) {
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
            lg->calls[lg->n++] = (gemm_call_t){ta, tb, M, N, K, lda, ldb, ldc, alpha, beta, A, B, Cm};
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, Cm, ldc);
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
    double t0 = pn_now();
    for (int r = 0; r < reps; r++)
        for (size_t i = 0; i < lg.n; i++) {
            const gemm_call_t *c = &lg.calls[i];
            cblas_sgemm(CblasRowMajor, c->ta ? CblasTrans : CblasNoTrans, c->tb ? CblasTrans : CblasNoTrans,
                        c->M, c->N, c->K, c->alpha, c->A, c->lda, c->B, c->ldb, c->beta, c->C, c->ldc);
        }
    *seconds = (pn_now() - t0) / reps;
    *flops = f;
    rc = 0;
out:
    model_stage_reset(st);
    free(lg.calls);
    free(in);
    free(out);
    return rc;
}
