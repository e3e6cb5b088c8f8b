/* The cpu backend's sgemm, logged on request (internal to models/): cpu.c computes
 * every matrix product through model_sgemm, and model_stage_gemm_reference (model.h)
 * records one forward + backward and replays exactly those calls. */
#ifndef PN_MODELS_CALIB_H
#define PN_MODELS_CALIB_H

#include "models/backend.h"

/* cblas_sgemm, row-major, ta/tb: transpose A/B; recorded while a reference runs. */
void model_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *Cm, int ldc);

#endif
