/* The cpu backend's sgemm, logged on request (internal to models/): cpu.c computes
 * every matrix product through model_sgemm, and model_stage_gemm_reference (model.h)
 * records one forward + backward and replays exactly those calls. And what `pipenem
 * calibrate` calls: one stage measured alone, and the file that emulate:FILE replays. */
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

/* One stage's calibration: seconds per micro-batch (optimizer: per step), the FLOPs of
 * the accounting formula and the sgemm reference of the same GEMM shapes. */
typedef struct {
    int layers;                          /* of this stage */
    double fwd, bwd, opt;                /* seconds per micro-batch / per step */
    double embed_fwd, embed_bwd, head_fwd, head_bwd;
    double flops;                        /* fwd + bwd, the accounting formula */
    double gemm_flops, gemm_s;           /* the sgemm reference; 0 if none */
    size_t params, saved_bytes;
    size_t device_bytes;                 /* cuda: the stage's device allocations; 0 otherwise */
    char precision[8];                   /* cuda: the compute precision the file records; "" otherwise */
} model_calib_stage_t;

/* Runs warmup + iters iterations of one micro-batch on stage s of base and fills r and
 * the per-layer times (indexed by global layer). */
int model_calib_stage(const model_stage_params_t *base, int s, int iters, int warmup, model_calib_stage_t *r,
                      double *layer_fwd, double *layer_bwd, char *err, size_t errlen) PN_WUR;
/* The calibration file of all p->stages results (r[0] holds the embeddings, r[last] the
 * head), with argv as the command that made it; to a temporary name, then renamed. */
int model_calib_write(const char *path, const model_stage_params_t *p, const model_calib_stage_t *r,
                      const double *layer_fwd, const double *layer_bwd, int argc, char **argv, char *err,
                      size_t errlen) PN_WUR;

#endif
