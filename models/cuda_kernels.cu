/* The cuda backend's own kernels (everything but the matrix products, which are cuBLAS):
 * one kernel per elementwise or reduction step of models/cpu.c, with the same arithmetic
 * in fp32 whatever the storage type, instantiated for float, __half and __nv_bfloat16. */
#include "models/cuda_kernels.h"

#include <math.h>

namespace cuk {

__device__ __forceinline__ float tof(float x) { return x; }
__device__ __forceinline__ float tof(__half x) { return __half2float(x); }
__device__ __forceinline__ float tof(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T fromf(float x);
template <> __device__ __forceinline__ float fromf<float>(float x) { return x; }
template <> __device__ __forceinline__ __half fromf<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 fromf<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

static unsigned blocks_for(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 65535u * 32u ? (b ? b : 1) : 65535u * 32u);
}

/* Launches the grid-stride kernel k over n elements, 256 threads a block, on stream s. */
template <typename... P, typename... A> static cudaError_t launch_n(void (*k)(P...), cudaStream_t s, size_t n, A... args)
{
    k<<<blocks_for(n, 256), 256, 0, s>>>(args...);
    return cudaGetLastError();
}

#define GRID_STRIDE(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* ---------------------------------------------------------------- embeddings */

template <typename T> __global__ void k_encoder_fwd(T *out, const int *tok, const T *wte, const T *wpe, int BT, int T_, int C)
{
    GRID_STRIDE(i, (size_t)BT * C)
    {
        size_t bt = i / C, c = i % C;
        out[i] = fromf<T>(tof(wte[(size_t)tok[bt] * C + c]) + tof(wpe[(bt % T_) * C + c]));
    }
}

template <typename T> __global__ void k_encoder_bwd(float *dwte, float *dwpe, const T *dout, const int *tok, int BT, int T_, int C)
{
    GRID_STRIDE(i, (size_t)BT * C)
    {
        size_t bt = i / C, c = i % C;
        float d = tof(dout[i]);
        atomicAdd(&dwte[(size_t)tok[bt] * C + c], d);
        atomicAdd(&dwpe[(bt % T_) * C + c], d);
    }
}

template <typename T> cudaError_t encoder_forward(cudaStream_t s, T *out, const int *tok, const T *wte, const T *wpe, int BT, int T_, int C)
{
    return launch_n(k_encoder_fwd<T>, s, (size_t)BT * C, out, tok, wte, wpe, BT, T_, C);
}

template <typename T> cudaError_t encoder_backward(cudaStream_t s, float *dwte, float *dwpe, const T *dout, const int *tok, int BT, int T_, int C)
{
    return launch_n(k_encoder_bwd<T>, s, (size_t)BT * C, dwte, dwpe, dout, tok, BT, T_, C);
}

/* ---------------------------------------------------------------- layernorm: a warp per row */

template <typename T> __global__ void k_ln_fwd(T *out, float *mean, float *rstd, const T *inp, const T *w, const T *b, int N, int C)
{
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N)
        return;
    const T *x = inp + (size_t)row * C;
    float m = 0, v = 0;
    for (int i = lane; i < C; i += 32)
        m += tof(x[i]);
    m = warp_sum(m) / C;
    for (int i = lane; i < C; i += 32) {
        float d = tof(x[i]) - m;
        v += d * d;
    }
    float sd = rsqrtf(warp_sum(v) / C + 1e-5f);
    T *o = out + (size_t)row * C;
    for (int i = lane; i < C; i += 32)
        o[i] = fromf<T>((tof(x[i]) - m) * sd * tof(w[i]) + tof(b[i]));
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = sd;
    }
}

/* Each block's warps take rows in turn and sum dw/db in shared memory (2C floats), added
 * to the global gradients once per block. dinp NULL: weights only (W); dw NULL: the
 * input gradient only (B). */
template <typename T>
__global__ void k_ln_bwd(T *dinp, float *dw, float *db, const T *dout, const T *inp, const T *w, const float *mean,
                         const float *rstd, int N, int C)
{
    extern __shared__ float sh[];
    float *sdw = sh, *sdb = sh + C;
    for (int i = threadIdx.x; i < 2 * C; i += blockDim.x)
        sh[i] = 0;
    __syncthreads();
    int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    for (int row = blockIdx.x * warps + threadIdx.x / 32; row < N; row += gridDim.x * warps) {
        const T *d = dout + (size_t)row * C, *x = inp + (size_t)row * C;
        float m = mean[row], sd = rstd[row];
        if (dinp) {
            float dnm = 0, dnnm = 0;
            for (int i = lane; i < C; i += 32) {
                float dn = tof(w[i]) * tof(d[i]);
                dnm += dn;
                dnnm += dn * (tof(x[i]) - m) * sd;
            }
            dnm = warp_sum(dnm) / C;
            dnnm = warp_sum(dnnm) / C;
            T *di = dinp + (size_t)row * C;
            for (int i = lane; i < C; i += 32) {
                float norm = (tof(x[i]) - m) * sd;
                di[i] = fromf<T>(tof(di[i]) + (tof(w[i]) * tof(d[i]) - dnm - norm * dnnm) * sd);
            }
        }
        if (dw)
            for (int i = lane; i < C; i += 32) {
                float dv = tof(d[i]);
                atomicAdd(&sdw[i], dv * (tof(x[i]) - m) * sd);
                atomicAdd(&sdb[i], dv);
            }
    }
    __syncthreads();
    for (int i = threadIdx.x; dw && i < C; i += blockDim.x) {
        atomicAdd(&dw[i], sdw[i]);
        atomicAdd(&db[i], sdb[i]);
    }
}

template <typename T> cudaError_t layernorm_forward(cudaStream_t s, T *out, float *mean, float *rstd, const T *inp, const T *w, const T *b, int N, int C)
{
    k_ln_fwd<<<(N + 7) / 8, 256, 0, s>>>(out, mean, rstd, inp, w, b, N, C);
    return cudaGetLastError();
}

template <typename T>
cudaError_t layernorm_backward(cudaStream_t s, T *dinp, float *dw, float *db, const T *dout, const T *inp, const T *w,
                               const float *mean, const float *rstd, int N, int C)
{
    int blocks = (N + 7) / 8 < 264 ? (N + 7) / 8 : 264;
    size_t shmem = 2 * (size_t)C * sizeof(float);
    if (shmem > 48 * 1024)
        return cudaErrorInvalidConfiguration; /* C above 6144: not a configuration we ship */
    k_ln_bwd<<<blocks, 256, shmem, s>>>(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
    return cudaGetLastError();
}

/* ---------------------------------------------------------------- bias */

template <typename T> __global__ void k_bias_fill(T *out, const T *bias, int N, int OC)
{
    GRID_STRIDE(i, (size_t)N * OC)
    out[i] = bias[i % OC];
}

/* block (32, 8): 32 columns, 8 row lanes; grid.y splits the rows */
template <typename T> __global__ void k_bias_bwd(float *db, const T *dout, int N, int OC)
{
    __shared__ float acc[8][33];
    int o = blockIdx.x * 32 + threadIdx.x;
    float a = 0;
    if (o < OC)
        for (int n = blockIdx.y * 8 + threadIdx.y; n < N; n += gridDim.y * 8)
            a += tof(dout[(size_t)n * OC + o]);
    acc[threadIdx.y][threadIdx.x] = a;
    __syncthreads();
    if (threadIdx.y == 0 && o < OC) {
        for (int j = 1; j < 8; j++)
            a += acc[j][threadIdx.x];
        atomicAdd(&db[o], a);
    }
}

template <typename T> cudaError_t bias_fill(cudaStream_t s, T *out, const T *bias, int N, int OC)
{
    return launch_n(k_bias_fill<T>, s, (size_t)N * OC, out, bias, N, OC);
}

template <typename T> cudaError_t bias_backward(cudaStream_t s, float *db, const T *dout, int N, int OC)
{
    dim3 block(32, 8), grid((OC + 31) / 32, N / 256 > 1 ? (N / 256 < 32 ? N / 256 : 32) : 1);
    k_bias_bwd<<<grid, block, 0, s>>>(db, dout, N, OC);
    return cudaGetLastError();
}

/* ---------------------------------------------------------------- gelu, residual */

#define GELU_SCALE 0.7978845608028654f

template <typename T> __global__ void k_gelu_fwd(T *out, const T *inp, size_t n)
{
    GRID_STRIDE(i, n)
    {
        float x = tof(inp[i]);
        out[i] = fromf<T>(0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + 0.044715f * x * x * x))));
    }
}

template <typename T> __global__ void k_gelu_bwd(T *d, const T *inp, size_t n)
{
    GRID_STRIDE(i, n)
    {
        float x = tof(inp[i]);
        float th = tanhf(GELU_SCALE * (x + 0.044715f * x * x * x)), sech2 = 1.0f - th * th;
        float g = 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        d[i] = fromf<T>(tof(d[i]) * g);
    }
}

template <typename T> __global__ void k_residual(T *out, const T *a, size_t n)
{
    GRID_STRIDE(i, n)
    out[i] = fromf<T>(tof(out[i]) + tof(a[i]));
}

template <typename T> __global__ void k_copy(T *dst, const T *src, size_t n)
{
    GRID_STRIDE(i, n)
    dst[i] = src[i];
}

template <typename T> __global__ void k_cast(T *dst, const float *src, size_t n)
{
    GRID_STRIDE(i, n)
    dst[i] = fromf<T>(src[i]);
}

template <typename T> cudaError_t gelu_forward(cudaStream_t s, T *out, const T *inp, size_t n)
{
    return launch_n(k_gelu_fwd<T>, s, n, out, inp, n);
}

template <typename T> cudaError_t gelu_backward(cudaStream_t s, T *d, const T *inp, size_t n)
{
    return launch_n(k_gelu_bwd<T>, s, n, d, inp, n);
}

template <typename T> cudaError_t residual_add(cudaStream_t s, T *out, const T *a, size_t n)
{
    return launch_n(k_residual<T>, s, n, out, a, n);
}

template <typename T> cudaError_t copy(cudaStream_t s, T *dst, const T *src, size_t n)
{
    return launch_n(k_copy<T>, s, n, dst, src, n);
}

template <typename T> cudaError_t cast_from_float(cudaStream_t s, T *dst, const float *src, size_t n)
{
    return launch_n(k_cast<T>, s, n, dst, src, n);
}


/* ---------------------------------------------------------------- causal softmax: a warp per row */

template <typename T> __global__ void k_softmax_fwd(T *att, size_t rows, int T_)
{
    size_t r = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= rows)
        return;
    int t = (int)(r % T_);
    T *a = att + r * T_;
    float mx = -INFINITY, sum = 0;
    for (int j = lane; j <= t; j += 32)
        mx = fmaxf(mx, tof(a[j]));
    mx = warp_max(mx);
    for (int j = lane; j <= t; j += 32)
        sum += expf(tof(a[j]) - mx);
    float inv = 1.0f / warp_sum(sum);
    for (int j = lane; j < T_; j += 32)
        a[j] = fromf<T>(j <= t ? expf(tof(a[j]) - mx) * inv : 0.0f);
}

template <typename T> __global__ void k_softmax_bwd(T *datt, const T *att, size_t rows, int T_, float scale)
{
    size_t r = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= rows)
        return;
    int t = (int)(r % T_);
    const T *a = att + r * T_;
    T *da = datt + r * T_;
    float dot = 0;
    for (int j = lane; j <= t; j += 32)
        dot += tof(a[j]) * tof(da[j]);
    dot = warp_sum(dot);
    for (int j = lane; j < T_; j += 32)
        da[j] = fromf<T>(j <= t ? tof(a[j]) * (tof(da[j]) - dot) * scale : 0.0f);
}

template <typename T> cudaError_t softmax_causal_forward(cudaStream_t s, T *att, size_t rows, int T_)
{
    return launch_n(k_softmax_fwd<T>, s, rows * 32, att, rows, T_);
}

template <typename T> cudaError_t softmax_causal_backward(cudaStream_t s, T *datt, const T *att, size_t rows, int T_, float scale)
{
    return launch_n(k_softmax_bwd<T>, s, rows * 32, datt, att, rows, T_, scale);
}

/* ---------------------------------------------------------------- cross-entropy: a block per row */

__device__ float block_reduce(float v, int is_max)
{
    __shared__ float part[32];
    int lane = threadIdx.x % 32, w = threadIdx.x / 32, nw = blockDim.x / 32;
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads(); /* part[] may still be read from the previous call */
    if (lane == 0)
        part[w] = v;
    __syncthreads();
    v = lane < nw ? part[lane] : (is_max ? -INFINITY : 0.0f);
    return is_max ? warp_max(v) : warp_sum(v);
}

template <typename T> __global__ void k_ce_fwd(T *probs, const int *targets, double *loss_sum, int V)
{
    T *p = probs + (size_t)blockIdx.x * V;
    float mx = -INFINITY, sum = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        mx = fmaxf(mx, tof(p[i]));
    mx = block_reduce(mx, 1);
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        sum += expf(tof(p[i]) - mx);
    sum = block_reduce(sum, 0);
    int tgt = targets[blockIdx.x];
    /* the target's probability from the logit, before the store rounds it */
    float pt = expf(tof(p[tgt]) - mx) / sum;
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        p[i] = fromf<T>(expf(tof(p[i]) - mx) / sum);
    if (threadIdx.x == 0)
        atomicAdd(loss_sum, -log(fmax((double)pt, 1e-30)));
}

template <typename T> __global__ void k_ce_bwd(T *probs, const int *targets, int N, int V, float dloss)
{
    GRID_STRIDE(i, (size_t)N * V)
    {
        float v = tof(probs[i]);
        if ((int)(i % V) == targets[i / V])
            v -= 1.0f;
        probs[i] = fromf<T>(v * dloss);
    }
}

template <typename T> cudaError_t crossentropy_forward(cudaStream_t s, T *probs, const int *targets, double *loss_sum, int N, int V)
{
    k_ce_fwd<<<N, 512, 0, s>>>(probs, targets, loss_sum, V);
    return cudaGetLastError();
}

template <typename T> cudaError_t crossentropy_backward(cudaStream_t s, T *probs, const int *targets, int N, int V, float dloss)
{
    return launch_n(k_ce_bwd<T>, s, (size_t)N * V, probs, targets, N, V, dloss);
}

/* ---------------------------------------------------------------- optimizer */

__global__ void k_nonfinite(const float *g, size_t n, int *flag)
{
    int bad = 0;
    GRID_STRIDE(i, n)
    bad |= !isfinite(g[i]);
    if (__any_sync(0xffffffffu, bad) && threadIdx.x % 32 == 0)
        atomicOr(flag, 1);
}

__global__ void k_adamw(float *p, float *g, float *m, float *v, size_t n, float lr, float decay, float ic1, float ic2,
                        float gscale)
{
    const float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f;
    GRID_STRIDE(i, n)
    {
        float gi = g[i] * gscale;
        float mi = b1 * m[i] + (1 - b1) * gi, vi = b2 * v[i] + (1 - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= lr * (mi * ic1 / (sqrtf(vi * ic2) + eps) + decay * p[i]);
        g[i] = 0.0f;
    }
}

cudaError_t nonfinite(cudaStream_t s, const float *g, size_t n, int *flag)
{
    k_nonfinite<<<blocks_for(n, 256) < 4096 ? blocks_for(n, 256) : 4096, 256, 0, s>>>(g, n, flag);
    return cudaGetLastError();
}

cudaError_t adamw(cudaStream_t s, float *p, float *g, float *m, float *v, size_t n, float lr, float decay, float ic1,
                  float ic2, float gscale)
{
    return launch_n(k_adamw, s, n, p, g, m, v, n, lr, decay, ic1, ic2, gscale);
}

/* ---------------------------------------------------------------- instantiations */

#define INSTANTIATE(T)                                                                                          \
    template cudaError_t encoder_forward<T>(cudaStream_t, T *, const int *, const T *, const T *, int, int, int); \
    template cudaError_t encoder_backward<T>(cudaStream_t, float *, float *, const T *, const int *, int, int, int); \
    template cudaError_t layernorm_forward<T>(cudaStream_t, T *, float *, float *, const T *, const T *, const T *, \
                                              int, int);                                                        \
    template cudaError_t layernorm_backward<T>(cudaStream_t, T *, float *, float *, const T *, const T *, const T *, \
                                               const float *, const float *, int, int);                         \
    template cudaError_t bias_fill<T>(cudaStream_t, T *, const T *, int, int);                                  \
    template cudaError_t bias_backward<T>(cudaStream_t, float *, const T *, int, int);                          \
    template cudaError_t gelu_forward<T>(cudaStream_t, T *, const T *, size_t);                                 \
    template cudaError_t gelu_backward<T>(cudaStream_t, T *, const T *, size_t);                                \
    template cudaError_t residual_add<T>(cudaStream_t, T *, const T *, size_t);                                 \
    template cudaError_t copy<T>(cudaStream_t, T *, const T *, size_t);                                         \
    template cudaError_t softmax_causal_forward<T>(cudaStream_t, T *, size_t, int);                             \
    template cudaError_t softmax_causal_backward<T>(cudaStream_t, T *, const T *, size_t, int, float);          \
    template cudaError_t crossentropy_forward<T>(cudaStream_t, T *, const int *, double *, int, int);           \
    template cudaError_t crossentropy_backward<T>(cudaStream_t, T *, const int *, int, int, float);             \
    template cudaError_t cast_from_float<T>(cudaStream_t, T *, const float *, size_t);

INSTANTIATE(float)
INSTANTIATE(__half)
INSTANTIATE(__nv_bfloat16)

} // namespace cuk
