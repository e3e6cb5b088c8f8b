/* The cpu backend: GPT-2/3 layers in fp32 as llm.c-style mirrored forward/backward pairs.
 * Every matrix product (attention included, as per-head strided GEMMs over causal row
 * blocks) goes through OpenBLAS sgemm; the elementwise kernels use OpenMP. */
#include "models/backend.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Causal attention is computed in row blocks of this many queries, each against only
 * the keys it can see, which skips most of the masked upper triangle. */
enum { ATT_BLOCK = 64 };

/* Elementwise loops over fewer elements than this run on one thread: below it the
 * fork/join costs more than the work (it dominated `tiny` before). */
#define PAR_MIN ((size_t)1 << 15)

/* ---------------------------------------------------------------- sgemm, logged */

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

static void gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *Cm, int ldc)
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

/* ---------------------------------------------------------------- layers */

static void encoder_forward(float *out,          // (B,T,C)
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

static void encoder_backward(float *dwte,        // (V,C)
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

static void layernorm_forward(float *out,        // (N,C)
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
static void layernorm_backward_input(float *dinp,       // (N,C) +=
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
static void layernorm_backward_weights(float *dw, float *db,  // (C) +=
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

static void layernorm_backward(float *dinp,       // (N,C) +=
                               float *dw, float *db, // (C) +=
                               const float *dout, // (N,C)
                               const float *inp,  // (N,C)
                               const float *w, const float *mean, const float *rstd,
                               int N, int C)
{
    layernorm_backward_input(dinp, dout, inp, w, mean, rstd, N, C);
    layernorm_backward_weights(dw, db, dout, inp, mean, rstd, N, C);
}

static void matmul_forward(float *out,        // (N,OC)
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
static void matmul_backward_weights(float *dw,          // (OC,C) +=
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
static void matmul_backward_input(float *dinp, const float *dout, const float *w, int N, int C, int OC)
{
    gemm(0, 0, N, C, OC, 1.0f, dout, OC, w, C, 0.0f, dinp, C);
}

static void matmul_backward(float *dinp,        // (N,C) overwritten
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

static void gelu_forward(float *out, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + fast_tanhf(GELU_SCALE * (x + 0.044715f * x * x * x)));
    }
}

/* in place: dx[i] = dy[i] * gelu'(inp[i]) */
static void gelu_backward(float *d, const float *inp, size_t n)
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

static void residual_add(float *out, const float *a, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] += a[i];
}

static void attention_forward(float *out,       // (B,T,C)
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

static void attention_backward(float *dqkv,        // (B,T,3C) overwritten
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
static double crossentropy_forward(float *probs, const int *targets, int N, int V)
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
static void crossentropy_backward(float *probs, const int *targets, int N, int V, float dloss)
{
#pragma omp parallel for schedule(static) if ((size_t)N * V >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *p = probs + (size_t)n * V;
        p[targets[n]] -= 1.0f;
        for (int i = 0; i < V; i++)
            p[i] *= dloss;
    }
}

/* ---------------------------------------------------------------- activation layout */

enum { A_LN1, A_LN1_MEAN, A_LN1_RSTD, A_QKV, A_ATTY, A_ATT, A_RES2, A_LN2, A_LN2_MEAN,
       A_LN2_RSTD, A_FCH, A_FCH_GELU, A_RES3, A_N };

static void layer_act_sizes(const model_stage_t *st, size_t sz[A_N])
{
    size_t BT = (size_t)st->B * st->T, C = st->C;
    size_t s[A_N] = {BT * C, BT, BT, 3 * BT * C, BT * C, (size_t)st->B * st->NH * st->T * st->T,
                     BT * C, BT * C, BT, BT, 4 * BT * C, 4 * BT * C, BT * C};
    memcpy(sz, s, sizeof s);
}

size_t model_layer_act_floats(const model_stage_t *st)
{
    size_t sz[A_N], n = 0;
    layer_act_sizes(st, sz);
    for (int i = 0; i < A_N; i++)
        n += sz[i];
    return n;
}

static size_t last_part_floats(const model_stage_t *st)
{
    size_t BT = (size_t)st->B * st->T;
    return st->last ? BT * st->C + 2 * BT + BT * st->V : 0;
}

size_t model_slot_floats(const model_stage_t *st)
{
    size_t BTC = (size_t)st->B * st->T * st->C, nl = st->layer_end - st->layer_begin;
    size_t per_layer = st->p.recompute ? BTC : model_layer_act_floats(st);
    return BTC + nl * per_layer + last_part_floats(st);
}

/* dA, dB, dln, datty (BTC each), dqkv (3BTC), dfch (4BTC), datt (B,NH,T,T), and with
 * recompute one layer's full activations. */
size_t model_scratch_floats(const model_stage_t *st)
{
    size_t BTC = (size_t)st->B * st->T * st->C;
    return 11 * BTC + (size_t)st->B * st->NH * st->T * st->T +
           (st->p.recompute ? model_layer_act_floats(st) : 0);
}

typedef struct {
    float *dA, *dB, *dln, *datty, *dqkv, *dfch, *datt, *recomp;
} scratch_t;

static scratch_t scratch_get(const model_stage_t *st)
{
    size_t BTC = (size_t)st->B * st->T * st->C;
    float *s = st->acts;
    scratch_t x;
    x.dA = s;
    x.dB = s + BTC;
    x.dln = s + 2 * BTC;
    x.datty = s + 3 * BTC;
    x.dqkv = s + 4 * BTC;
    x.dfch = s + 7 * BTC;
    x.datt = s + 11 * BTC;
    x.recomp = x.datt + (size_t)st->B * st->NH * st->T * st->T;
    return x;
}

static float *slot_base(const model_stage_t *st, int slot)
{
    return st->acts + st->scratch_floats + (size_t)slot * st->slot_floats;
}

/* Pointers to layer l's (local index) activations in a slot: all saved, or with
 * recompute only the output in the slot and the rest in the shared scratch. */
static void layer_acts(const model_stage_t *st, int slot, int l, float *a[A_N])
{
    size_t sz[A_N], BTC = (size_t)st->B * st->T * st->C;
    layer_act_sizes(st, sz);
    float *base = slot_base(st, slot) + BTC;
    float *p = st->p.recompute ? scratch_get(st).recomp : base + (size_t)l * model_layer_act_floats(st);
    for (int i = 0; i < A_N; i++) {
        a[i] = p;
        p += sz[i];
    }
    if (st->p.recompute)
        a[A_RES3] = base + (size_t)l * BTC;
}

static const float *layer_input(const model_stage_t *st, int slot, int l)
{
    if (l == 0)
        return slot_base(st, slot);
    float *a[A_N];
    layer_acts(st, slot, l - 1, a);
    return a[A_RES3];
}

static void layer_params(const model_stage_t *st, int l, int grads, float *w[MODEL_T_PER_LAYER])
{
    int base = (st->first ? 2 : 0) + l * MODEL_T_PER_LAYER;
    for (int k = 0; k < MODEL_T_PER_LAYER; k++)
        w[k] = (grads ? st->grads : st->params) + st->tensors[base + k].offset;
}

/* ---------------------------------------------------------------- one block */

static void block_forward(float *a[A_N], const float *x, float *w[MODEL_T_PER_LAYER],
                          int B, int T, int C, int NH)
{
    int BT = B * T;
    layernorm_forward(a[A_LN1], a[A_LN1_MEAN], a[A_LN1_RSTD], x, w[MODEL_T_LN1W], w[MODEL_T_LN1B], BT, C);
    matmul_forward(a[A_QKV], a[A_LN1], w[MODEL_T_QKVW], w[MODEL_T_QKVB], BT, C, 3 * C);
    attention_forward(a[A_ATTY], a[A_ATT], a[A_QKV], B, T, C, NH);
    matmul_forward(a[A_RES2], a[A_ATTY], w[MODEL_T_ATTPROJW], w[MODEL_T_ATTPROJB], BT, C, C);
    residual_add(a[A_RES2], x, (size_t)BT * C);
    layernorm_forward(a[A_LN2], a[A_LN2_MEAN], a[A_LN2_RSTD], a[A_RES2], w[MODEL_T_LN2W], w[MODEL_T_LN2B], BT, C);
    matmul_forward(a[A_FCH], a[A_LN2], w[MODEL_T_FCW], w[MODEL_T_FCB], BT, C, 4 * C);
    gelu_forward(a[A_FCH_GELU], a[A_FCH], (size_t)BT * 4 * C);
    matmul_forward(a[A_RES3], a[A_FCH_GELU], w[MODEL_T_FCPROJW], w[MODEL_T_FCPROJB], BT, 4 * C, C);
    residual_add(a[A_RES3], a[A_RES2], (size_t)BT * C);
}

/* dx: gradient wrt the block input (overwritten; may be the same buffer as dy).
 * dres2: scratch for the gradient at the attention residual. */
static void block_backward(float *dx, float *dres2, const scratch_t *s, float *dw[MODEL_T_PER_LAYER],
                           const float *dy, float *a[A_N], const float *x, float *w[MODEL_T_PER_LAYER],
                           int B, int T, int C, int NH)
{
    int BT = B * T;
    matmul_backward(s->dfch, dw[MODEL_T_FCPROJW], dw[MODEL_T_FCPROJB], dy, a[A_FCH_GELU], w[MODEL_T_FCPROJW], BT, 4 * C, C);
    gelu_backward(s->dfch, a[A_FCH], (size_t)BT * 4 * C);
    matmul_backward(s->dln, dw[MODEL_T_FCW], dw[MODEL_T_FCB], s->dfch, a[A_LN2], w[MODEL_T_FCW], BT, C, 4 * C);
    memcpy(dres2, dy, (size_t)BT * C * sizeof(float));
    layernorm_backward(dres2, dw[MODEL_T_LN2W], dw[MODEL_T_LN2B], s->dln, a[A_RES2], w[MODEL_T_LN2W],
                       a[A_LN2_MEAN], a[A_LN2_RSTD], BT, C);
    matmul_backward(s->datty, dw[MODEL_T_ATTPROJW], dw[MODEL_T_ATTPROJB], dres2, a[A_ATTY], w[MODEL_T_ATTPROJW], BT, C, C);
    attention_backward(s->dqkv, s->datt, s->datty, a[A_QKV], a[A_ATT], B, T, C, NH);
    matmul_backward(s->dln, dw[MODEL_T_QKVW], dw[MODEL_T_QKVB], s->dqkv, a[A_LN1], w[MODEL_T_QKVW], BT, C, 3 * C);
    memcpy(dx, dres2, (size_t)BT * C * sizeof(float));
    layernorm_backward(dx, dw[MODEL_T_LN1W], dw[MODEL_T_LN1B], s->dln, x, w[MODEL_T_LN1W],
                       a[A_LN1_MEAN], a[A_LN1_RSTD], BT, C);
}

/* What W needs of one layer, saved by B: the gradients at the outputs of the four
 * matmuls and the two LayerNorms (11 B*T*C floats). */
enum { G_FCPROJ, G_FC, G_LN2, G_ATTPROJ, G_QKV, G_LN1, G_N };

static void layer_wgrads(float *base, size_t BTC, float *g[G_N])
{
    static const int mult[G_N] = {1, 4, 1, 1, 3, 1};
    for (int i = 0; i < G_N; i++) {
        g[i] = base;
        base += mult[i] * BTC;
    }
}

enum { G_LAYER_BTC = 11 };

/* B of one block: dx as block_backward, and g filled for block_backward_weights. */
static void block_backward_input(float *dx, const scratch_t *s, float *g[G_N], const float *dy,
                                 float *a[A_N], const float *x, float *w[MODEL_T_PER_LAYER],
                                 int B, int T, int C, int NH)
{
    int BT = B * T;
    memcpy(g[G_FCPROJ], dy, (size_t)BT * C * sizeof(float));
    matmul_backward_input(g[G_FC], dy, w[MODEL_T_FCPROJW], BT, 4 * C, C);
    gelu_backward(g[G_FC], a[A_FCH], (size_t)BT * 4 * C);
    matmul_backward_input(g[G_LN2], g[G_FC], w[MODEL_T_FCW], BT, C, 4 * C);
    float *dres2 = g[G_ATTPROJ];
    memcpy(dres2, dy, (size_t)BT * C * sizeof(float));
    layernorm_backward_input(dres2, g[G_LN2], a[A_RES2], w[MODEL_T_LN2W], a[A_LN2_MEAN], a[A_LN2_RSTD], BT, C);
    matmul_backward_input(s->datty, dres2, w[MODEL_T_ATTPROJW], BT, C, C);
    attention_backward(g[G_QKV], s->datt, s->datty, a[A_QKV], a[A_ATT], B, T, C, NH);
    matmul_backward_input(g[G_LN1], g[G_QKV], w[MODEL_T_QKVW], BT, C, 3 * C);
    memcpy(dx, dres2, (size_t)BT * C * sizeof(float));
    layernorm_backward_input(dx, g[G_LN1], x, w[MODEL_T_LN1W], a[A_LN1_MEAN], a[A_LN1_RSTD], BT, C);
}

/* W of one block, in block_backward's order of gradient additions. */
static void block_backward_weights(float *dw[MODEL_T_PER_LAYER], float *g[G_N], float *a[A_N],
                                   const float *x, int B, int T, int C)
{
    int BT = B * T;
    matmul_backward_weights(dw[MODEL_T_FCPROJW], dw[MODEL_T_FCPROJB], g[G_FCPROJ], a[A_FCH_GELU], BT, 4 * C, C);
    matmul_backward_weights(dw[MODEL_T_FCW], dw[MODEL_T_FCB], g[G_FC], a[A_LN2], BT, C, 4 * C);
    layernorm_backward_weights(dw[MODEL_T_LN2W], dw[MODEL_T_LN2B], g[G_LN2], a[A_RES2], a[A_LN2_MEAN],
                               a[A_LN2_RSTD], BT, C);
    matmul_backward_weights(dw[MODEL_T_ATTPROJW], dw[MODEL_T_ATTPROJB], g[G_ATTPROJ], a[A_ATTY], BT, C, C);
    matmul_backward_weights(dw[MODEL_T_QKVW], dw[MODEL_T_QKVB], g[G_QKV], a[A_LN1], BT, C, 3 * C);
    layernorm_backward_weights(dw[MODEL_T_LN1W], dw[MODEL_T_LN1B], g[G_LN1], x, a[A_LN1_MEAN],
                               a[A_LN1_RSTD], BT, C);
}

/* ---------------------------------------------------------------- the backend */

static const float *head_weight(const model_stage_t *st, int grads)
{
    const model_tensor_t *t = model_stage_tensor_find(st, "head");
    if (!t)
        t = model_stage_tensor_find(st, "wte"); /* tied, single stage */
    return (grads ? st->grads : st->params) + t->offset;
}

static int cpu_check(const char *arg, char *err, size_t errlen)
{
    if (*arg) {
        snprintf(err, errlen, "compute 'cpu' takes no argument, got 'cpu:%s' (use --threads)", arg);
        return -EINVAL;
    }
    return 0;
}

static void cpu_describe(const char *arg, char *buf, size_t len)
{
    (void)arg;
    snprintf(buf, len, "cpu (OpenBLAS sgemm, OpenMP elementwise)");
}

static int cpu_init(model_stage_t *st, const char *arg, char *err, size_t errlen)
{
    int rc = cpu_check(arg, err, errlen);
    if (rc)
        return rc;
    if (st->p.threads > 0) {
        omp_set_num_threads(st->p.threads);
        openblas_set_num_threads(st->p.threads);
    }
    size_t n = st->n_params;
    st->params = malloc(n * sizeof(float));
    st->grads = calloc(n, sizeof(float));
    st->opt_m = calloc(n, sizeof(float));
    st->opt_v = calloc(n, sizeof(float));
    st->scratch_floats = model_scratch_floats(st);
    st->slot_floats = model_slot_floats(st);
    st->act_floats = st->scratch_floats + (size_t)st->max_inflight * st->slot_floats;
    st->acts = malloc(st->act_floats * sizeof(float));
    if (!st->params || !st->grads || !st->opt_m || !st->opt_v || !st->acts) {
        snprintf(err, errlen, "out of memory: %.1f MiB of parameters/state and %.1f MiB of "
                 "activations (%d micro-batches in flight)", 4.0 * n * sizeof(float) / 1048576.0,
                 st->act_floats * sizeof(float) / 1048576.0, st->max_inflight);
        return -ENOMEM;
    }
    return 0;
}

/* omp_set_num_threads only reaches the calling thread's ICV: a stage driven from another
 * thread than the one that initialised it would otherwise run on the default count. */
static void threads_apply(const model_stage_t *st)
{
    if (st->p.threads > 0 && omp_get_max_threads() != st->p.threads)
        omp_set_num_threads(st->p.threads);
}

static void cpu_destroy(model_stage_t *st)
{
    free(st->params);
    free(st->grads);
    free(st->opt_m);
    free(st->opt_v);
    free(st->acts);
    free(st->wgrads);
    st->params = st->grads = st->opt_m = st->opt_v = st->acts = st->wgrads = NULL;
}

/* The last stage's head pointers inside a slot. */
typedef struct {
    float *lnf, *mean, *rstd, *probs;
} head_acts_t;

static head_acts_t head_acts(const model_stage_t *st, int slot)
{
    size_t BTC = (size_t)st->B * st->T * st->C, BT = (size_t)st->B * st->T;
    float *lp = slot_base(st, slot) + st->slot_floats - last_part_floats(st);
    return (head_acts_t){lp, lp + BTC, lp + BTC + BT, lp + BTC + 2 * BT};
}

static int cpu_forward(model_stage_t *st, int slot, const float *in, float *out)
{
    int B = st->B, T = st->T, C = st->C, NH = st->NH, V = st->V, BT = B * T;
    int nl = st->layer_end - st->layer_begin;
    float *x0 = slot_base(st, slot);
    threads_apply(st);
    double t0 = model_now();
    if (st->first) {
        encoder_forward(x0, st->tokens, st->params + st->tensors[0].offset,
                        st->params + st->tensors[1].offset, B, T, C);
        st->prof.embed_fwd += model_now() - t0;
    } else {
        memcpy(x0, in, (size_t)BT * C * sizeof(float));
    }
    for (int l = 0; l < nl; l++) {
        float *a[A_N], *w[MODEL_T_PER_LAYER];
        double tl = model_now();
        layer_acts(st, slot, l, a);
        layer_params(st, l, 0, w);
        block_forward(a, layer_input(st, slot, l), w, B, T, C, NH);
        st->prof.layer_fwd[l] += model_now() - tl;
    }
    const float *y = layer_input(st, slot, nl); /* the last layer's output */
    if (!st->last) {
        memcpy(out, y, (size_t)BT * C * sizeof(float));
        return 0;
    }
    double th = model_now();
    const model_tensor_t *lnw = model_stage_tensor_find(st, "lnf.w");
    float *lp = slot_base(st, slot) + st->slot_floats - last_part_floats(st);
    float *lnf = lp, *mean = lp + (size_t)BT * C, *rstd = mean + BT, *probs = rstd + BT;
    layernorm_forward(lnf, mean, rstd, y, lnw->param, lnw->param + C, BT, C);
    matmul_forward(probs, lnf, head_weight(st, 0), NULL, BT, C, V);
    st->loss_sum += crossentropy_forward(probs, st->targets, BT, V) / BT;
    st->loss_count++;
    st->prof.head_fwd += model_now() - th;
    return 0;
}

static int cpu_backward(model_stage_t *st, int slot, const float *dout, float *din)
{
    int B = st->B, T = st->T, C = st->C, NH = st->NH, V = st->V, BT = B * T;
    int nl = st->layer_end - st->layer_begin;
    scratch_t s = scratch_get(st);
    float *dy = s.dA, *dres2 = s.dB;
    threads_apply(st);
    if (st->last) {
        double th = model_now();
        const model_tensor_t *lnw = model_stage_tensor_find(st, "lnf.w");
        head_acts_t h = head_acts(st, slot);
        float *lnf = h.lnf, *mean = h.mean, *rstd = h.rstd, *probs = h.probs;
        /* the iteration's loss is the mean over M micro-batches of B*T tokens */
        crossentropy_backward(probs, st->targets, BT, V, 1.0f / ((float)BT * st->p.micro_batches));
        matmul_backward(s.dln, (float *)head_weight(st, 1), NULL, probs, lnf, head_weight(st, 0), BT, C, V);
        memset(dy, 0, (size_t)BT * C * sizeof(float));
        layernorm_backward(dy, lnw->grad, lnw->grad + C, s.dln, layer_input(st, slot, nl), lnw->param,
                           mean, rstd, BT, C);
        st->prof.head_bwd += model_now() - th;
    } else {
        memcpy(dy, dout, (size_t)BT * C * sizeof(float));
    }
    for (int l = nl - 1; l >= 0; l--) {
        float *a[A_N], *w[MODEL_T_PER_LAYER], *dw[MODEL_T_PER_LAYER];
        double tl = model_now();
        layer_acts(st, slot, l, a);
        layer_params(st, l, 0, w);
        layer_params(st, l, 1, dw);
        const float *x = layer_input(st, slot, l);
        if (st->p.recompute)
            block_forward(a, x, w, B, T, C, NH);
        block_backward(dy, dres2, &s, dw, dy, a, x, w, B, T, C, NH);
        st->prof.layer_bwd[l] += model_now() - tl;
    }
    if (st->first) {
        double t0 = model_now();
        encoder_backward(st->grads + st->tensors[0].offset, st->grads + st->tensors[1].offset, dy,
                         st->tokens, B, T, C);
        st->prof.embed_bwd += model_now() - t0;
    } else {
        memcpy(din, dy, (size_t)BT * C * sizeof(float));
    }
    return 0;
}

/* The W area of a slot: G_LAYER_BTC B*T*C floats per layer, then lnf's (last stage) and
 * the embeddings' (first stage) output gradients; allocated on the first B. */
static float *wgrad_base(model_stage_t *st, int slot)
{
    size_t BTC = (size_t)st->B * st->T * st->C, nl = st->layer_end - st->layer_begin;
    if (!st->wgrads) {
        st->wgrad_floats = BTC * (G_LAYER_BTC * nl + (st->last ? 1 : 0) + (st->first ? 1 : 0));
        st->wgrads = malloc((size_t)st->max_inflight * st->wgrad_floats * sizeof(float));
        if (!st->wgrads)
            return NULL;
    }
    return st->wgrads + (size_t)slot * st->wgrad_floats;
}

static int cpu_backward_input(model_stage_t *st, int slot, const float *dout, float *din)
{
    int B = st->B, T = st->T, C = st->C, NH = st->NH, V = st->V, BT = B * T;
    int nl = st->layer_end - st->layer_begin;
    size_t BTC = (size_t)BT * C;
    float *gw = wgrad_base(st, slot);
    if (!gw)
        return -ENOMEM;
    scratch_t s = scratch_get(st);
    float *dy = s.dA;
    threads_apply(st);
    if (st->last) {
        double th = model_now();
        const model_tensor_t *lnw = model_stage_tensor_find(st, "lnf.w");
        head_acts_t h = head_acts(st, slot);
        float *glnf = gw + G_LAYER_BTC * BTC * nl;
        /* the probabilities become the logits' gradient in place, which W reads */
        crossentropy_backward(h.probs, st->targets, BT, V, 1.0f / ((float)BT * st->p.micro_batches));
        matmul_backward_input(glnf, h.probs, head_weight(st, 0), BT, C, V);
        memset(dy, 0, BTC * sizeof(float));
        layernorm_backward_input(dy, glnf, layer_input(st, slot, nl), lnw->param, h.mean, h.rstd, BT, C);
        st->prof.head_bwd += model_now() - th;
    } else {
        memcpy(dy, dout, BTC * sizeof(float));
    }
    for (int l = nl - 1; l >= 0; l--) {
        float *a[A_N], *w[MODEL_T_PER_LAYER], *g[G_N];
        double tl = model_now();
        layer_acts(st, slot, l, a);
        layer_params(st, l, 0, w);
        layer_wgrads(gw + G_LAYER_BTC * BTC * l, BTC, g);
        const float *x = layer_input(st, slot, l);
        if (st->p.recompute)
            block_forward(a, x, w, B, T, C, NH);
        block_backward_input(dy, &s, g, dy, a, x, w, B, T, C, NH);
        st->prof.layer_bwd[l] += model_now() - tl;
    }
    if (st->first)
        memcpy(gw + G_LAYER_BTC * BTC * nl + (st->last ? BTC : 0), dy, BTC * sizeof(float));
    else
        memcpy(din, dy, BTC * sizeof(float));
    return 0;
}

static int cpu_backward_weights(model_stage_t *st, int slot)
{
    int B = st->B, T = st->T, C = st->C, NH = st->NH, BT = B * T;
    int nl = st->layer_end - st->layer_begin;
    size_t BTC = (size_t)BT * C;
    float *gw = wgrad_base(st, slot);
    if (!gw)
        return -ENOMEM;
    threads_apply(st);
    if (st->last) {
        double th = model_now();
        const model_tensor_t *lnw = model_stage_tensor_find(st, "lnf.w");
        head_acts_t h = head_acts(st, slot);
        float *glnf = gw + G_LAYER_BTC * BTC * nl;
        matmul_backward_weights((float *)head_weight(st, 1), NULL, h.probs, h.lnf, BT, C, st->V);
        layernorm_backward_weights(lnw->grad, lnw->grad + C, glnf, layer_input(st, slot, nl), h.mean,
                                   h.rstd, BT, C);
        st->prof.head_bwd += model_now() - th;
    }
    for (int l = nl - 1; l >= 0; l--) {
        float *a[A_N], *w[MODEL_T_PER_LAYER], *dw[MODEL_T_PER_LAYER], *g[G_N];
        double tl = model_now();
        layer_acts(st, slot, l, a);
        layer_params(st, l, 1, dw);
        layer_wgrads(gw + G_LAYER_BTC * BTC * l, BTC, g);
        const float *x = layer_input(st, slot, l);
        if (st->p.recompute) {
            layer_params(st, l, 0, w);
            block_forward(a, x, w, B, T, C, NH);
        }
        block_backward_weights(dw, g, a, x, B, T, C);
        st->prof.layer_bwd[l] += model_now() - tl;
    }
    if (st->first) {
        double t0 = model_now();
        encoder_backward(st->grads + st->tensors[0].offset, st->grads + st->tensors[1].offset,
                         gw + G_LAYER_BTC * BTC * nl + (st->last ? BTC : 0), st->tokens, B, T, C);
        st->prof.embed_bwd += model_now() - t0;
    }
    return 0;
}

/* AdamW over one tensor. sqrtf's errno path is the only thing keeping this memory-bound
 * loop from vectorizing, and v is never negative, so math-errno is off here alone. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-math-errno")
#endif
static void adamw_update(float *restrict p, float *restrict g, float *restrict m, float *restrict v, size_t n,
                         float lr, float decay, float ic1, float ic2)
{
    const float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f;
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        float mi = b1 * m[i] + (1 - b1) * gi, vi = b2 * v[i] + (1 - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= lr * (mi * ic1 / (sqrtf(vi * ic2) + eps) + decay * p[i]);
        g[i] = 0.0f;
    }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

static int cpu_step(model_stage_t *st)
{
    const float wd = 0.1f;
    int t = st->steps + 1;
    float ic1 = 1.0f / (1.0f - powf(0.9f, t)), ic2 = 1.0f / (1.0f - powf(0.95f, t));
    threads_apply(st);
    for (int k = 0; k < st->n_tensors; k++) {
        const model_tensor_t *tn = &st->tensors[k];
        size_t o = tn->offset;
        adamw_update(st->params + o, st->grads + o, st->opt_m + o, st->opt_v + o, tn->numel, st->p.lr,
                     tn->decay ? wd : 0.0f, ic1, ic2);
    }
    return 0;
}

const model_backend_t model_backend_cpu = {
    .name = "cpu",
    .check = cpu_check,
    .describe = cpu_describe,
    .init = cpu_init,
    .forward = cpu_forward,
    .backward = cpu_backward,
    .backward_input = cpu_backward_input,
    .backward_weights = cpu_backward_weights,
    .step = cpu_step,
    .destroy = cpu_destroy,
};

/* ---------------------------------------------------------------- GEMM reference */

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
    double t0 = model_now();
    for (int r = 0; r < reps; r++)
        for (size_t i = 0; i < lg.n; i++) {
            const gemm_call_t *c = &lg.calls[i];
            cblas_sgemm(CblasRowMajor, c->ta ? CblasTrans : CblasNoTrans, c->tb ? CblasTrans : CblasNoTrans,
                        c->M, c->N, c->K, c->alpha, c->A, c->lda, c->B, c->ldb, c->beta, c->C, c->ldc);
        }
    *seconds = (model_now() - t0) / reps;
    *flops = f;
    rc = 0;
out:
    model_stage_reset(st);
    free(lg.calls);
    free(in);
    free(out);
    return rc;
}
