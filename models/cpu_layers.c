/* The cpu backend's layer kernels in fp32 (see cpu_layers.h). Every matrix product
 * (attention included, as per-head strided GEMMs over causal row blocks) goes through
 * OpenBLAS sgemm (calib.c's model_sgemm); the elementwise kernels use OpenMP. */
#include "models/cpu_layers.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Lets the loops below vectorize without changing a value: no errno from sqrtf, and
 * comparisons that may not trap, so that exp_vec's clamps become selects. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-math-errno", "no-trapping-math")
#endif

/* Causal attention is computed in row blocks of this many queries, each against only
 * the keys it can see, which skips most of the masked upper triangle. */
enum { ATT_BLOCK = 64 };

/* ---------------------------------------------------------------- layers */

void encoder_forward(float *out,          // (B,T,C)
                     const int *tok,      // (B,T)
                     const float *wte,    // (V,C)
                     const float *wpe,    // (context,C)
                     int B, int T, int C)
{
    double t0 = model_kprof_start();
#pragma omp parallel for schedule(static) if ((size_t)B * T * C >= PAR_MIN)
    for (int bt = 0; bt < B * T; bt++) {
        const float *e = wte + (size_t)tok[bt] * C, *p = wpe + (size_t)(bt % T) * C;
        float *o = out + (size_t)bt * C;
        for (int i = 0; i < C; i++)
            o[i] = e[i] + p[i];
    }
    model_kprof_stop(MODEL_K_ENCODER, t0);
}

void encoder_backward(float *dwte,        // (V,C)
                      float *dwpe,        // (context,C)
                      const float *dout,  // (B,T,C)
                      const int *tok, int B, int T, int C)
{
    double t0 = model_kprof_start();
    /* split by channel so that no two threads add into the same row element */
#pragma omp parallel for schedule(static) if ((size_t)B * T * C >= PAR_MIN)
    for (int c0 = 0; c0 < C; c0 += 16) {
        int c1 = c0 + 16 < C ? c0 + 16 : C;
        for (int bt = 0; bt < B * T; bt++) {
            const float *d = dout + (size_t)bt * C;
            float *e = dwte + (size_t)tok[bt] * C, *p = dwpe + (size_t)(bt % T) * C;
            for (int i = c0; i < c1; i++) {
                e[i] += d[i];
                p[i] += d[i];
            }
        }
    }
    model_kprof_stop(MODEL_K_ENCODER, t0);
}

void layernorm_forward(float *out,        // (N,C)
                       float *mean,       // (N)
                       float *rstd,       // (N)
                       const float *inp,  // (N,C)
                       const float *w, const float *b, // (C)
                       int N, int C)
{
    double t0 = model_kprof_start();
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float m = 0, v = 0;
        /* the row sums in vector lanes: the order depends on C only, not on the threads */
#pragma omp simd reduction(+ : m)
        for (int i = 0; i < C; i++)
            m += x[i];
        m /= C;
#pragma omp simd reduction(+ : v)
        for (int i = 0; i < C; i++)
            v += (x[i] - m) * (x[i] - m);
        float s = 1.0f / sqrtf(v / C + 1e-5f);
        float *o = out + (size_t)n * C;
#pragma omp simd
        for (int i = 0; i < C; i++)
            o[i] = (x[i] - m) * s * w[i] + b[i];
        mean[n] = m;
        rstd[n] = s;
    }
    model_kprof_stop(MODEL_K_LAYERNORM, t0);
}

/* The input half of the LayerNorm backward (B). */
void layernorm_backward_input(float *dinp,       // (N,C) +=
                              const float *dout, // (N,C)
                              const float *inp,  // (N,C)
                              const float *w, const float *mean, const float *rstd,
                              int N, int C)
{
    double t0 = model_kprof_start();
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *d = dout + (size_t)n * C, *x = inp + (size_t)n * C;
        float m = mean[n], s = rstd[n], dnorm_mean = 0, dnorm_norm_mean = 0;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
        for (int i = 0; i < C; i++) {
            float dn = w[i] * d[i];
            dnorm_mean += dn;
            dnorm_norm_mean += dn * (x[i] - m) * s;
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        float *di = dinp + (size_t)n * C;
#pragma omp simd
        for (int i = 0; i < C; i++) {
            float norm = (x[i] - m) * s;
            di[i] += (w[i] * d[i] - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
    model_kprof_stop(MODEL_K_LAYERNORM, t0);
}

/* The weight half of the LayerNorm backward (W). */
void layernorm_backward_weights(float *dw, float *db,  // (C) +=
                                const float *dout,     // (N,C)
                                const float *inp,      // (N,C)
                                const float *mean, const float *rstd, int N, int C)
{
    double t0 = model_kprof_start();
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int c0 = 0; c0 < C; c0 += 16) {
        int c1 = c0 + 16 < C ? c0 + 16 : C;
        float aw[16] = {0}, ab[16] = {0};
        for (int n = 0; n < N; n++) {
            const float *d = dout + (size_t)n * C, *x = inp + (size_t)n * C;
#pragma omp simd
            for (int i = c0; i < c1; i++) {
                aw[i - c0] += d[i] * (x[i] - mean[n]) * rstd[n];
                ab[i - c0] += d[i];
            }
        }
        for (int i = c0; i < c1; i++) {
            dw[i] += aw[i - c0];
            db[i] += ab[i - c0];
        }
    }
    model_kprof_stop(MODEL_K_LAYERNORM, t0);
}

void layernorm_backward(float *dinp,       // (N,C) +=
                        float *dw, float *db, // (C) +=
                        const float *dout, // (N,C)
                        const float *inp,  // (N,C)
                        const float *w, const float *mean, const float *rstd,
                        int N, int C)
{
    layernorm_backward_input(dinp, dout, inp, w, mean, rstd, N, C);
    layernorm_backward_weights(dw, db, dout, inp, mean, rstd, N, C);
}

void matmul_forward(float *out,        // (N,OC)
                    const float *inp,  // (N,C)
                    const float *w,    // (OC,C)
                    const float *bias, // (OC) or NULL
                    int N, int C, int OC)
{
    if (bias) {
        double t0 = model_kprof_start();
#pragma omp parallel for schedule(static) if ((size_t)N * OC >= PAR_MIN)
        for (int n = 0; n < N; n++)
            memcpy(out + (size_t)n * OC, bias, OC * sizeof(float));
        model_kprof_stop(MODEL_K_BIAS, t0);
    }
    gemm(0, 1, N, OC, C, 1.0f, inp, C, w, C, bias ? 1.0f : 0.0f, out, OC);
}

/* The weight half of the matmul backward (W). */
void matmul_backward_weights(float *dw,          // (OC,C) +=
                             float *db,          // (OC) += or NULL
                             const float *dout,  // (N,OC)
                             const float *inp,   // (N,C)
                             int N, int C, int OC)
{
    gemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, C);
    if (db) {
        double t0 = model_kprof_start();
#pragma omp parallel for schedule(static) if ((size_t)N * OC >= PAR_MIN)
        for (int o0 = 0; o0 < OC; o0 += 64) {
            int o1 = o0 + 64 < OC ? o0 + 64 : OC;
            float acc[64] = {0};
            for (int n = 0; n < N; n++) {
                const float *d = dout + (size_t)n * OC;
#pragma omp simd
                for (int o = o0; o < o1; o++)
                    acc[o - o0] += d[o];
            }
            for (int o = o0; o < o1; o++)
                db[o] += acc[o - o0];
        }
        model_kprof_stop(MODEL_K_BIAS, t0);
    }
}

/* The input half (B): dinp (N,C) overwritten = dout (N,OC) w (OC,C). */
void matmul_backward_input(float *dinp, const float *dout, const float *w, int N, int C, int OC)
{
    gemm(0, 0, N, C, OC, 1.0f, dout, OC, w, C, 0.0f, dinp, C);
}

void matmul_backward(float *dinp,        // (N,C) overwritten
                     float *dw,          // (OC,C) +=
                     float *db,          // (OC) += or NULL
                     const float *dout,  // (N,OC)
                     const float *inp,   // (N,C)
                     const float *w,     // (OC,C)
                     int N, int C, int OC)
{
    matmul_backward_input(dinp, dout, w, N, C, OC);
    matmul_backward_weights(dw, db, dout, inp, N, C, OC);
}

/* exp for the elementwise loops, in a form the compiler vectorizes (libm's expf is a call
 * per element; GELU and the attention softmax spent most of their time in it): Cephes'
 * expf, 2^n times a degree-6 polynomial on [-ln2/2, ln2/2], within 2 ulp of expf for
 * x in [-87, 88]; the input is clamped there, so exp of very negative numbers is 1e-38,
 * not 0, and nothing overflows. */
static inline float exp_vec(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* n = round(x / ln2) through the 1.5 * 2^23 trick (no SSE4.1 round needed) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        int i;
        float f;
    } two_n = {.i = ((int)n + 127) << 23};
    return p * two_n.f;
}

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */

/* tanh through exp: within 3e-7 of tanhf */
static inline float tanh_vec(float u)
{
    return 1.0f - 2.0f / (1.0f + exp_vec(2.0f * u));
}

/* The exp-heavy loops are built twice, for AVX2 and for the x86-64 baseline, the one
 * that the CPU runs chosen at load time: twice the lanes. Without FMA contraction (C11
 * mode turns it off) both compute the same elementwise values; a sum over vector lanes
 * (the softmax rows) is ordered by the lane count, the same on every run of one machine. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define VEC_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VEC_CLONES
#endif

/* GELU runs on the threads in chunks of this many elements. */
enum { GELU_CHUNK = 4096 };

VEC_CLONES static void gelu_forward_range(float *out, const float *inp, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanh_vec(GELU_SCALE * (x + 0.044715f * x * x * x)));
    }
}

/* range(x, inp, n) over the threads, GELU_CHUNK elements at a time: forward and backward. */
static void gelu_chunked(void (*range)(float *x, const float *inp, size_t n), float *x, const float *inp, size_t n)
{
    double t0 = model_kprof_start();
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t c = 0; c < n; c += GELU_CHUNK)
        range(x + c, inp + c, n - c < GELU_CHUNK ? n - c : GELU_CHUNK);
    model_kprof_stop(MODEL_K_GELU, t0);
}

void gelu_forward(float *out, const float *inp, size_t n)
{
    gelu_chunked(gelu_forward_range, out, inp, n);
}

VEC_CLONES static void gelu_backward_range(float *d, const float *inp, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        float th = tanh_vec(u), sech2 = 1.0f - th * th;
        float g = 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        d[i] *= g;
    }
}

/* in place: dx[i] = dy[i] * gelu'(inp[i]) */
void gelu_backward(float *d, const float *inp, size_t n)
{
    gelu_chunked(gelu_backward_range, d, inp, n);
}

void residual_add(float *out, const float *a, size_t n)
{
    double t0 = model_kprof_start();
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] += a[i];
    model_kprof_stop(MODEL_K_RESIDUAL, t0);
}

/* Row t of a causal softmax in place: keys 0..t, zeros after. */
VEC_CLONES static void softmax_causal_row(float *ar, int t, int T)
{
    float mx = -INFINITY, sum = 0;
    /* clang keeps NaN-exact compares here and fails (an error under -Werror) to vectorize */
#if !defined(__clang__)
#pragma omp simd reduction(max : mx)
#endif
    for (int j = 0; j <= t; j++)
        mx = ar[j] > mx ? ar[j] : mx;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j <= t; j++) {
        ar[j] = exp_vec(ar[j] - mx);
        sum += ar[j];
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j <= t; j++)
        ar[j] *= inv;
    for (int j = t + 1; j < T; j++)
        ar[j] = 0.0f;
}

/* dr (row t of the probabilities' gradient) becomes the scores' gradient, times scale. */
VEC_CLONES static void softmax_causal_row_backward(float *dr, const float *ar, int t, int T, float scale)
{
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j <= t; j++)
        dot += ar[j] * dr[j];
#pragma omp simd
    for (int j = 0; j <= t; j++)
        dr[j] = ar[j] * (dr[j] - dot) * scale;
    for (int j = t + 1; j < T; j++)
        dr[j] = 0.0f;
}

/* One (sequence, head) of the attention forward, a row block at a time: the scores of
 * the block's queries against the keys they can see, their softmax while the block is
 * in cache, and its share of the output. */
static void attention_head_forward(float *o,       // (T,C) strided, this head's columns
                                   float *a,       // (T,T)
                                   const float *q, // (T,3C) strided, this head's q; k and v follow
                                   int T, int C, int hs, float scale)
{
    int C3 = 3 * C;
    const float *k = q + C, *v = q + 2 * C;
    for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
        gemm(0, 1, r1 - r0, r1, hs, scale, q + (size_t)r0 * C3, C3, k, C3, 0.0f, a + (size_t)r0 * T, T);
        for (int t = r0; t < r1; t++)
            softmax_causal_row(a + (size_t)t * T, t, T);
        gemm(0, 0, r1 - r0, hs, r1, 1.0f, a + (size_t)r0 * T, T, v, C3, 0.0f, o + (size_t)r0 * C, C);
    }
}

/* The heads run in parallel, each on one thread with single-threaded products: a head's
 * blocks are too small to split, and its (T,T) scores stay in that core's cache from
 * the product through the softmax to the next product. `head` does sequence b, head h
 * (bh = b * NH + h) with the tensors in `args`; forward and backward share this loop. */
typedef void attention_head_fn(const void *args, int b, int h, int bh, int T, int C, int hs, float scale);

static void attention_heads(attention_head_fn *head, const void *args, int B, int T, int C, int NH)
{
    double t0 = model_kprof_start();
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static) if ((size_t)B * NH * T * T >= PAR_MIN)
    for (int bh = 0; bh < B * NH; bh++)
        head(args, bh / NH, bh % NH, bh, T, C, hs, scale);
    model_kprof_stop(MODEL_K_ATTENTION, t0);
}

typedef struct {
    float *out;       // (B,T,C)
    float *att;       // (B,NH,T,T)
    const float *qkv; // (B,T,3C)
} attention_fwd_args_t;

static void attention_fwd_head(const void *args, int b, int h, int bh, int T, int C, int hs, float scale)
{
    const attention_fwd_args_t *x = args;
    attention_head_forward(x->out + (size_t)b * T * C + h * hs, x->att + (size_t)bh * T * T,
                           x->qkv + (size_t)b * T * 3 * C + h * hs, T, C, hs, scale);
}

void attention_forward(float *out,       // (B,T,C)
                       float *att,       // (B,NH,T,T) softmaxed, zero above the diagonal
                       const float *qkv, // (B,T,3C)
                       int B, int T, int C, int NH)
{
    attention_fwd_args_t args = {out, att, qkv};
    attention_heads(attention_fwd_head, &args, B, T, C, NH);
}

/* One (sequence, head) of the attention backward. First pass, per row block: the
 * gradient at the probabilities, through the softmax to the scores, and dq, which
 * needs only the block's rows. Second pass: dv and dk, which need the rows below. */
static void attention_head_backward(float *dq,       // (T,3C) strided, this head's dq; dk and dv follow
                                    float *da,       // (T,T) scratch
                                    const float *d,  // (T,C) strided, this head's dout
                                    const float *q,  // (T,3C) strided, this head's q; k and v follow
                                    const float *a,  // (T,T)
                                    int T, int C, int hs, float scale)
{
    int C3 = 3 * C;
    const float *k = q + C, *v = q + 2 * C;
    float *dk = dq + C, *dv = dq + 2 * C;
    for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
        /* da[r0:r1, 0:r1] = dout[r0:r1] v[0:r1]^T */
        gemm(0, 1, r1 - r0, r1, hs, 1.0f, d + (size_t)r0 * C, C, v, C3, 0.0f, da + (size_t)r0 * T, T);
        for (int t = r0; t < r1; t++)
            softmax_causal_row_backward(da + (size_t)t * T, a + (size_t)t * T, t, T, scale);
        gemm(0, 0, r1 - r0, hs, r1, 1.0f, da + (size_t)r0 * T, T, k, C3, 0.0f, dq + (size_t)r0 * C3, C3);
    }
    for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
        /* dv[r0:r1] = att[r0:T, r0:r1]^T dout[r0:T] (rows above r0 see no key >= r0) */
        gemm(1, 0, r1 - r0, hs, T - r0, 1.0f, a + (size_t)r0 * T + r0, T, d + (size_t)r0 * C, C, 0.0f,
             dv + (size_t)r0 * C3, C3);
        gemm(1, 0, r1 - r0, hs, T - r0, 1.0f, da + (size_t)r0 * T + r0, T, q + (size_t)r0 * C3, C3, 0.0f,
             dk + (size_t)r0 * C3, C3);
    }
}

typedef struct {
    float *dqkv;       // (B,T,3C)
    float *datt;       // (B,NH,T,T)
    const float *dout; // (B,T,C)
    const float *qkv;  // (B,T,3C)
    const float *att;  // (B,NH,T,T)
} attention_bwd_args_t;

static void attention_bwd_head(const void *args, int b, int h, int bh, int T, int C, int hs, float scale)
{
    const attention_bwd_args_t *x = args;
    size_t qo = (size_t)b * T * 3 * C + h * hs;
    attention_head_backward(x->dqkv + qo, x->datt + (size_t)bh * T * T, x->dout + (size_t)b * T * C + h * hs,
                            x->qkv + qo, x->att + (size_t)bh * T * T, T, C, hs, scale);
}

void attention_backward(float *dqkv,        // (B,T,3C) overwritten
                        float *datt,        // (B,NH,T,T) scratch
                        const float *dout,  // (B,T,C)
                        const float *qkv,   // (B,T,3C)
                        const float *att,   // (B,NH,T,T)
                        int B, int T, int C, int NH)
{
    attention_bwd_args_t args = {dqkv, datt, dout, qkv, att};
    attention_heads(attention_bwd_head, &args, B, T, C, NH);
}

/* Softmax of the logits in place and the summed loss against the targets. */
double crossentropy_forward(float *probs, const int *targets, int N, int V)
{
    double t0 = model_kprof_start();
    double loss = 0;
#pragma omp parallel for schedule(static) reduction(+ : loss) if ((size_t)N * V >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *p = probs + (size_t)n * V, mx = -INFINITY;
        for (int i = 0; i < V; i++)
            mx = p[i] > mx ? p[i] : mx;
        double sum = 0;
        for (int i = 0; i < V; i++) {
            p[i] = expf(p[i] - mx);
            sum += p[i];
        }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < V; i++)
            p[i] *= inv;
        loss += -log(fmax(p[targets[n]], 1e-30));
    }
    model_kprof_stop(MODEL_K_XENT, t0);
    return loss;
}

/* in place: dlogits = (probs - onehot(target)) * dloss */
void crossentropy_backward(float *probs, const int *targets, int N, int V, float dloss)
{
    double t0 = model_kprof_start();
#pragma omp parallel for schedule(static) if ((size_t)N * V >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *p = probs + (size_t)n * V;
        p[targets[n]] -= 1.0f;
        for (int i = 0; i < V; i++)
            p[i] *= dloss;
    }
    model_kprof_stop(MODEL_K_XENT, t0);
}

