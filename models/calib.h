/* The cpu backend's sgemm, logged on request (internal to models/): cpu.c computes
 * every matrix product through model_sgemm, and model_stage_gemm_reference (model.h)
 * records one forward + backward and replays exactly those calls. */
#ifndef PN_MODELS_CALIB_H
#define PN_MODELS_CALIB_H

#include "models/backend.h"

/* cblas_sgemm, row-major, ta/tb: transpose A/B; recorded while a reference runs. */
void model_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *Cm, int ldc);

/* Per-kernel timings of the cpu backend, off unless a benchmark turns them on: each
 * kernel's outermost call is timed on the calling thread (the stage's), a kernel's
 * products counted in the kernel (attention) and not again under GEMM. */
typedef enum {
    MODEL_K_GEMM, MODEL_K_ATTENTION, MODEL_K_LAYERNORM, MODEL_K_GELU, MODEL_K_RESIDUAL, MODEL_K_BIAS,
    MODEL_K_ENCODER, MODEL_K_XENT, MODEL_K_ADAMW, MODEL_K_N
} model_kernel_t;

extern const char *const model_kernel_names[MODEL_K_N];

/* on: 1 starts (and zeroes) the timings, 0 stops them. */
void   model_kprof_enable(int on);
/* Seconds per kernel since the last enable. */
void   model_kprof_get(double s[MODEL_K_N]);
double model_kprof_start(void);
void   model_kprof_stop(model_kernel_t k, double t0);

#endif
