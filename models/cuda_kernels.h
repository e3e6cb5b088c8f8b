/* The elementwise and reduction kernels of the cuda backend (C++, included by the .cu files
 * only): the non-GEMM halves of the layer pairs in models/cuda.cu, templated over the
 * element type of activations and compute-precision weights (float, __half,
 * __nv_bfloat16). Statistics, gradients of parameters and optimizer state are fp32. Every
 * launcher enqueues on `s` and returns cudaGetLastError(). */
#ifndef PN_MODELS_CUDA_KERNELS_H
#define PN_MODELS_CUDA_KERNELS_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>

namespace cuk {

template <typename T> cudaError_t encoder_forward(cudaStream_t s, T *out, const int *tok, const T *wte, const T *wpe,
                                                  int BT, int T_, int C);
template <typename T> cudaError_t encoder_backward(cudaStream_t s, float *dwte, float *dwpe, const T *dout,
                                                   const int *tok, int BT, int T_, int C);
template <typename T> cudaError_t layernorm_forward(cudaStream_t s, T *out, float *mean, float *rstd, const T *inp,
                                                    const T *w, const T *b, int N, int C);
/* dinp += ; dw, db += (dinp NULL: weights only; dw and db NULL: input only) */
template <typename T> cudaError_t layernorm_backward(cudaStream_t s, T *dinp, float *dw, float *db, const T *dout,
                                                     const T *inp, const T *w, const float *mean, const float *rstd,
                                                     int N, int C);
template <typename T> cudaError_t bias_fill(cudaStream_t s, T *out, const T *bias, int N, int OC);
/* db += column sums of dout (N, OC) */
template <typename T> cudaError_t bias_backward(cudaStream_t s, float *db, const T *dout, int N, int OC);
template <typename T> cudaError_t gelu_forward(cudaStream_t s, T *out, const T *inp, size_t n);
/* in place: d *= gelu'(inp) */
template <typename T> cudaError_t gelu_backward(cudaStream_t s, T *d, const T *inp, size_t n);
/* out += a */
template <typename T> cudaError_t residual_add(cudaStream_t s, T *out, const T *a, size_t n);
template <typename T> cudaError_t copy(cudaStream_t s, T *dst, const T *src, size_t n);
/* rows of length T_ (row r is query r % T_): softmax over keys 0..t, zeros above */
template <typename T> cudaError_t softmax_causal_forward(cudaStream_t s, T *att, size_t rows, int T_);
/* in place: datt = att * (datt - <att, datt>) * scale, zeros above the diagonal */
template <typename T> cudaError_t softmax_causal_backward(cudaStream_t s, T *datt, const T *att, size_t rows, int T_,
                                                          float scale);
/* logits -> probabilities in place; loss_sum += sum over rows of -log p[target] */
template <typename T> cudaError_t crossentropy_forward(cudaStream_t s, T *probs, const int *targets,
                                                       double *loss_sum, int N, int V);
/* in place: dlogits = (probs - onehot(target)) * dloss */
template <typename T> cudaError_t crossentropy_backward(cudaStream_t s, T *probs, const int *targets, int N, int V,
                                                        float dloss);
template <typename T> cudaError_t cast_from_float(cudaStream_t s, T *dst, const float *src, size_t n);

/* *flag = 1 if any g[i] is inf or NaN (flag is not cleared here) */
cudaError_t nonfinite(cudaStream_t s, const float *g, size_t n, int *flag);
/* AdamW (b1 0.9, b2 0.95, eps 1e-8) on g * gscale; zeroes g */
cudaError_t adamw(cudaStream_t s, float *p, float *g, float *m, float *v, size_t n, float lr, float decay, float ic1,
                  float ic2, float gscale);

} // namespace cuk

#endif
