/* Internal to models/: the cpu backend's layer kernels (cpu_layers.c), llm.c-style
 * mirrored forward/backward pairs, each backward also in its input half (B) and weight
 * half (W). Not an API outside models/. */
#ifndef PN_MODELS_CPU_LAYERS_H
#define PN_MODELS_CPU_LAYERS_H

#include <stddef.h>

#include "models/calib.h"

/* Elementwise loops over fewer elements than this run on one thread: below it the
 * fork/join costs more than the work (it dominated `tiny` before). */
#define PAR_MIN ((size_t)1 << 15)

/* Every product goes through calib.c's sgemm, which the GEMM reference records and
 * replays; the short name keeps the kernels readable. */
static inline void gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *Cm, int ldc)
{
    model_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, Cm, ldc);
}

void encoder_forward(float *out, const int *tok, const float *wte, const float *wpe, int B, int T, int C);
void encoder_backward(float *dwte, float *dwpe, const float *dout, const int *tok, int B, int T, int C);
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
                       int N, int C);
void layernorm_backward_input(float *dinp, const float *dout, const float *inp, const float *w,
                              const float *mean, const float *rstd, int N, int C);
void layernorm_backward_weights(float *dw, float *db, const float *dout, const float *inp, const float *mean,
                                const float *rstd, int N, int C);
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                        const float *mean, const float *rstd, int N, int C);
void matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N, int C, int OC);
void matmul_backward_weights(float *dw, float *db, const float *dout, const float *inp, int N, int C, int OC);
void matmul_backward_input(float *dinp, const float *dout, const float *w, int N, int C, int OC);
void matmul_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                     int N, int C, int OC);
void gelu_forward(float *out, const float *inp, size_t n);
void gelu_backward(float *d, const float *inp, size_t n);
void residual_add(float *out, const float *a, size_t n);
void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH);
void attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                        int B, int T, int C, int NH);
double crossentropy_forward(float *probs, const int *targets, int N, int V);
void crossentropy_backward(float *probs, const int *targets, int N, int V, float dloss);

#endif
