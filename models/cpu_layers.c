/* The cpu backend's layer kernels in fp32 (see cpu_layers.h). Every matrix product
 * (attention included, as per-head strided GEMMs over causal row blocks) goes through
 * OpenBLAS sgemm (calib.c's model_sgemm); the elementwise kernels use OpenMP. */
#include "models/cpu_layers.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

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
#pragma omp parallel for schedule(static) if ((size_t)B * T * C >= PAR_MIN)
    for (int bt = 0; bt < B * T; bt++) {
        const float *e = wte + (size_t)tok[bt] * C, *p = wpe + (size_t)(bt % T) * C;
        float *o = out + (size_t)bt * C;
        for (int i = 0; i < C; i++)
            o[i] = e[i] + p[i];
    }
}

void encoder_backward(float *dwte,        // (V,C)
                      float *dwpe,        // (context,C)
                      const float *dout,  // (B,T,C)
                      const int *tok, int B, int T, int C)
{
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
}

void layernorm_forward(float *out,        // (N,C)
                       float *mean,       // (N)
                       float *rstd,       // (N)
                       const float *inp,  // (N,C)
                       const float *w, const float *b, // (C)
                       int N, int C)
{
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float m = 0, v = 0;
        for (int i = 0; i < C; i++)
            m += x[i];
        m /= C;
        for (int i = 0; i < C; i++)
            v += (x[i] - m) * (x[i] - m);
        float s = 1.0f / sqrtf(v / C + 1e-5f);
        float *o = out + (size_t)n * C;
        for (int i = 0; i < C; i++)
            o[i] = (x[i] - m) * s * w[i] + b[i];
        mean[n] = m;
        rstd[n] = s;
    }
}

/* The input half of the LayerNorm backward (B). */
void layernorm_backward_input(float *dinp,       // (N,C) +=
                              const float *dout, // (N,C)
                              const float *inp,  // (N,C)
                              const float *w, const float *mean, const float *rstd,
                              int N, int C)
{
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *d = dout + (size_t)n * C, *x = inp + (size_t)n * C;
        float m = mean[n], s = rstd[n], dnorm_mean = 0, dnorm_norm_mean = 0;
        for (int i = 0; i < C; i++) {
            float dn = w[i] * d[i];
            dnorm_mean += dn;
            dnorm_norm_mean += dn * (x[i] - m) * s;
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        float *di = dinp + (size_t)n * C;
        for (int i = 0; i < C; i++) {
            float norm = (x[i] - m) * s;
            di[i] += (w[i] * d[i] - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
}

/* The weight half of the LayerNorm backward (W). */
void layernorm_backward_weights(float *dw, float *db,  // (C) +=
                                const float *dout,     // (N,C)
                                const float *inp,      // (N,C)
                                const float *mean, const float *rstd, int N, int C)
{
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int c0 = 0; c0 < C; c0 += 16) {
        int c1 = c0 + 16 < C ? c0 + 16 : C;
        float aw[16] = {0}, ab[16] = {0};
        for (int n = 0; n < N; n++) {
            const float *d = dout + (size_t)n * C, *x = inp + (size_t)n * C;
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
#pragma omp parallel for schedule(static) if ((size_t)N * OC >= PAR_MIN)
        for (int n = 0; n < N; n++)
            memcpy(out + (size_t)n * OC, bias, OC * sizeof(float));
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
#pragma omp parallel for schedule(static) if ((size_t)N * OC >= PAR_MIN)
        for (int o0 = 0; o0 < OC; o0 += 64) {
            int o1 = o0 + 64 < OC ? o0 + 64 : OC;
            float acc[64] = {0};
            for (int n = 0; n < N; n++) {
                const float *d = dout + (size_t)n * OC;
                for (int o = o0; o < o1; o++)
                    acc[o - o0] += d[o];
            }
            for (int o = o0; o < o1; o++)
                db[o] += acc[o - o0];
        }
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

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */

/* tanh through expf: within 2e-7 of tanhf and several times faster, which matters
 * because GELU runs on 4*B*T*C elements per layer and direction. */
static inline float fast_tanhf(float u)
{
    return 1.0f - 2.0f / (1.0f + expf(2.0f * u));
}

void gelu_forward(float *out, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + fast_tanhf(GELU_SCALE * (x + 0.044715f * x * x * x)));
    }
}

/* in place: dx[i] = dy[i] * gelu'(inp[i]) */
void gelu_backward(float *d, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        float th = fast_tanhf(u), sech2 = 1.0f - th * th;
        float g = 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        d[i] *= g;
    }
}

void residual_add(float *out, const float *a, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] += a[i];
}

void attention_forward(float *out,       // (B,T,C)
                       float *att,       // (B,NH,T,T) softmaxed, zero above the diagonal
                       const float *qkv, // (B,T,3C)
                       int B, int T, int C, int NH)
{
    int hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * C3 + h * hs, *k = q + C;
            float *a = att + ((size_t)b * NH + h) * T * T;
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
                gemm(0, 1, r1 - r0, r1, hs, scale, q + (size_t)r0 * C3, C3, k, C3, 0.0f,
                     a + (size_t)r0 * T, T);
            }
        }
#pragma omp parallel for schedule(static) if ((size_t)B * NH * T * T >= PAR_MIN)
    for (size_t r = 0; r < (size_t)B * NH * T; r++) {
        int t = (int)(r % T);
        float *a = att + r * T, mx = -INFINITY, sum = 0;
        for (int j = 0; j <= t; j++)
            mx = a[j] > mx ? a[j] : mx;
        for (int j = 0; j <= t; j++) {
            a[j] = expf(a[j] - mx);
            sum += a[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j <= t; j++)
            a[j] *= inv;
        for (int j = t + 1; j < T; j++)
            a[j] = 0.0f;
    }
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *v = qkv + (size_t)b * T * C3 + h * hs + 2 * C;
            const float *a = att + ((size_t)b * NH + h) * T * T;
            float *o = out + (size_t)b * T * C + h * hs;
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
                gemm(0, 0, r1 - r0, hs, r1, 1.0f, a + (size_t)r0 * T, T, v, C3, 0.0f,
                     o + (size_t)r0 * C, C);
            }
        }
}

void attention_backward(float *dqkv,        // (B,T,3C) overwritten
                        float *datt,        // (B,NH,T,T) scratch
                        const float *dout,  // (B,T,C)
                        const float *qkv,   // (B,T,3C)
                        const float *att,   // (B,NH,T,T)
                        int B, int T, int C, int NH)
{
    int hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            size_t qo = (size_t)b * T * C3 + h * hs;
            const float *v = qkv + qo + 2 * C, *d = dout + (size_t)b * T * C + h * hs;
            const float *a = att + ((size_t)b * NH + h) * T * T;
            float *da = datt + ((size_t)b * NH + h) * T * T, *dv = dqkv + qo + 2 * C;
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
                /* datt[r0:r1, 0:r1] = dout[r0:r1] v[0:r1]^T */
                gemm(0, 1, r1 - r0, r1, hs, 1.0f, d + (size_t)r0 * C, C, v, C3, 0.0f,
                     da + (size_t)r0 * T, T);
                /* dv[r0:r1] = att[r0:T, r0:r1]^T dout[r0:T] (rows above r0 see no key >= r0) */
                gemm(1, 0, r1 - r0, hs, T - r0, 1.0f, a + (size_t)r0 * T + r0, T, d + (size_t)r0 * C, C,
                     0.0f, dv + (size_t)r0 * C3, C3);
            }
        }
#pragma omp parallel for schedule(static) if ((size_t)B * NH * T * T >= PAR_MIN)
    for (size_t r = 0; r < (size_t)B * NH * T; r++) {
        int t = (int)(r % T);
        const float *a = att + r * T;
        float *da = datt + r * T, dot = 0;
        for (int j = 0; j <= t; j++)
            dot += a[j] * da[j];
        for (int j = 0; j <= t; j++)
            da[j] = a[j] * (da[j] - dot) * scale;
        for (int j = t + 1; j < T; j++)
            da[j] = 0.0f;
    }
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            size_t qo = (size_t)b * T * C3 + h * hs;
            const float *q = qkv + qo, *k = q + C;
            const float *da = datt + ((size_t)b * NH + h) * T * T;
            float *dq = dqkv + qo, *dk = dq + C;
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
                gemm(0, 0, r1 - r0, hs, r1, 1.0f, da + (size_t)r0 * T, T, k, C3, 0.0f,
                     dq + (size_t)r0 * C3, C3);
                gemm(1, 0, r1 - r0, hs, T - r0, 1.0f, da + (size_t)r0 * T + r0, T, q + (size_t)r0 * C3, C3,
                     0.0f, dk + (size_t)r0 * C3, C3);
            }
        }
}

/* Softmax of the logits in place and the summed loss against the targets. */
double crossentropy_forward(float *probs, const int *targets, int N, int V)
{
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
    return loss;
}

/* in place: dlogits = (probs - onehot(target)) * dloss */
void crossentropy_backward(float *probs, const int *targets, int N, int V, float dloss)
{
#pragma omp parallel for schedule(static) if ((size_t)N * V >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *p = probs + (size_t)n * V;
        p[targets[n]] -= 1.0f;
        for (int i = 0; i < V; i++)
            p[i] *= dloss;
    }
}

