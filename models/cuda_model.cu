/* The cuda backend's layers: models/cpu.c's mirrored forward/backward pairs on the GPU,
 * every matrix product through cublasGemmEx / cublasGemmStridedBatchedEx (row-major
 * products issued as their column-major transposes), the rest in models/cuda_kernels.cu.
 * Templated over the stored element type T (float for fp32/tf32, __half, __nv_bfloat16);
 * statistics, parameter gradients and the loss are fp32. */
#include "models/cuda_priv.h"
#include "models/cuda_layout.h"
#include "models/cuda_kernels.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

extern "C" {
#include "common/clock.h"
}

/* Causal attention in row blocks of this many queries, each against only the keys it can
 * see (as cpu.c, with larger blocks: each block is one batched GEMM over the heads). */
enum { ATT_BLOCK = 256 };

/* ---------------------------------------------------------------- GEMM (row-major view) */

static void gemm_record(const cuda_t *c, const cuda_gemm_t *g)
{
    cuda_t *w = (cuda_t *)c; /* the log only: the GEMM itself leaves the state alone */
    if (w->rec_n == w->rec_cap) {
        size_t cap = w->rec_cap ? 2 * w->rec_cap : 256;
        cuda_gemm_t *r = (cuda_gemm_t *)realloc(w->rec, cap * sizeof *r);
        if (!r) {
            w->rec_failed = 1;
            return;
        }
        w->rec = r;
        w->rec_cap = cap;
    }
    w->rec[w->rec_n++] = *g;
}

int cuda_gemm_replay(const cuda_t *c, const cuda_gemm_t *g)
{
    if (g->count == 1)
        CB(cuda_blas.gemm(c->blas, g->opa, g->opb, g->m, g->n, g->k, &g->alpha, g->A, c->dt, g->lda, g->B, c->dt, g->ldb,
                        &g->beta, g->C, g->ctype, g->ldc, c->ct, CUBLAS_GEMM_DEFAULT));
    else
        CB(cuda_blas.gemm_batched(c->blas, g->opa, g->opb, g->m, g->n, g->k, &g->alpha, g->A, c->dt, g->lda, g->sa,
                                      g->B, c->dt, g->ldb, g->sb, &g->beta, g->C, g->ctype, g->ldc, g->sc, g->count,
                                      c->ct, CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* C (M,N) = alpha op(A) op(B) + beta C, all row-major, issued as the column-major
 * C^T = op(B)^T op(A)^T; over `count` problems at element strides sa/sb/sc (heads).
 * ctype is the output's type: the compute type for activations, fp32 for parameter
 * gradients (batched products are activations only). */
static int gemm_batched(const cuda_t *c, int ta, int tb, int M, int N, int K, float alpha, const void *A, int lda,
                        long long sa, const void *B, int ldb, long long sb, float beta, void *Cm, int ldc, long long sc,
                        int count, cudaDataType_t ctype)
{
    cuda_gemm_t g = {tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, ldb, lda, ldc, count,
                     sb, sa, sc, alpha, beta, B, A, Cm, ctype};
    if (c->recording)
        gemm_record(c, &g);
    return cuda_gemm_replay(c, &g);
}

static int gemm(const cuda_t *c, int ta, int tb, int M, int N, int K, float alpha, const void *A, int lda,
                const void *B, int ldb, float beta, void *Cm, cudaDataType_t ctype, int ldc)
{
    return gemm_batched(c, ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, Cm, ldc, 0, 1, ctype);
}

/* ---------------------------------------------------------------- layers */

template <typename T>
static int matmul_forward(const cuda_t *c, T *out,   // (N,OC)
                          const T *inp,               // (N,C)
                          const T *w,                 // (OC,C)
                          const T *bias,              // (OC) or NULL
                          int N, int C, int OC)
{
    if (bias)
        CK(cuk::bias_fill(c->s, out, bias, N, OC));
    return gemm(c, 0, 1, N, OC, C, 1.0f, inp, C, w, C, bias ? 1.0f : 0.0f, out, c->dt, OC);
}

/* the input half (B) of matmul_backward: dinp (N,C) = dout (N,OC) w (OC,C), overwritten */
template <typename T> static int matmul_backward_input(const cuda_t *c, T *dinp, const T *dout, const T *w, int N, int C, int OC)
{
    return gemm(c, 0, 0, N, C, OC, 1.0f, dout, OC, w, C, 0.0f, dinp, c->dt, C);
}

/* the weight half (W): dw (OC,C) += dout^T inp, db (OC) += column sums of dout */
template <typename T>
static int matmul_backward_weights(const cuda_t *c, float *dw, float *db, const T *dout, const T *inp, int N, int C, int OC)
{
    TRY(gemm(c, 1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, CUDA_R_32F, C));
    if (db)
        CK(cuk::bias_backward(c->s, db, dout, N, OC));
    return 0;
}

template <typename T>
static int matmul_backward(const cuda_t *c, T *dinp,  // (N,C) overwritten
                           float *dw,                  // (OC,C) +=
                           float *db,                  // (OC) += or NULL
                           const T *dout,              // (N,OC)
                           const T *inp,               // (N,C)
                           const T *w,                 // (OC,C)
                           int N, int C, int OC)
{
    TRY(matmul_backward_input(c, dinp, dout, w, N, C, OC));
    return matmul_backward_weights(c, dw, db, dout, inp, N, C, OC);
}

/* Calls f(b, r0, r1) for every batch row b and query block [r0, r1): the causal
 * attention's products, each block against only the keys it can see. */
template <typename F> static int att_blocks(int B, int T_, F f)
{
    for (int b = 0; b < B; b++)
        for (int r0 = 0; r0 < T_; r0 += ATT_BLOCK)
            TRY(f(b, r0, r0 + ATT_BLOCK < T_ ? r0 + ATT_BLOCK : T_));
    return 0;
}

template <typename T>
static int attention_forward(const cuda_t *c, T *out, // (B,T,C)
                             T *att,                   // (B,NH,T,T) softmaxed, zero above the diagonal
                             const T *qkv,             // (B,T,3C)
                             int B, int T_, int C, int NH)
{
    int hs = C / NH, C3 = 3 * C;
    long long TT = (long long)T_ * T_;
    float scale = 1.0f / sqrtf((float)hs);
    /* att[r0:r1, 0:r1] = scale q[r0:r1] k[0:r1]^T */
    TRY(att_blocks(B, T_, [&](int b, int r0, int r1) {
        const T *q = qkv + (size_t)b * T_ * C3, *k = q + C;
        return gemm_batched(c, 0, 1, r1 - r0, r1, hs, scale, q + (size_t)r0 * C3, C3, hs, k, C3, hs, 0.0f,
                            att + (size_t)b * NH * TT + (size_t)r0 * T_, T_, TT, NH, c->dt);
    }));
    CK(cuk::softmax_causal_forward(c->s, att, (size_t)B * NH * T_, T_));
    /* out[r0:r1] = att[r0:r1, 0:r1] v[0:r1] */
    return att_blocks(B, T_, [&](int b, int r0, int r1) {
        const T *v = qkv + (size_t)b * T_ * C3 + 2 * C, *a = att + (size_t)b * NH * TT;
        return gemm_batched(c, 0, 0, r1 - r0, hs, r1, 1.0f, a + (size_t)r0 * T_, T_, TT, v, C3, hs, 0.0f,
                            out + (size_t)b * T_ * C + (size_t)r0 * C, C, hs, NH, c->dt);
    });
}

template <typename T>
static int attention_backward(const cuda_t *c, T *dqkv, // (B,T,3C) overwritten
                              T *datt,                   // (B,NH,T,T) scratch
                              const T *dout,             // (B,T,C)
                              const T *qkv,              // (B,T,3C)
                              const T *att,              // (B,NH,T,T)
                              int B, int T_, int C, int NH)
{
    int hs = C / NH, C3 = 3 * C;
    long long TT = (long long)T_ * T_;
    float scale = 1.0f / sqrtf((float)hs);
    TRY(att_blocks(B, T_, [&](int b, int r0, int r1) {
        size_t qo = (size_t)b * T_ * C3;
        const T *v = qkv + qo + 2 * C, *d = dout + (size_t)b * T_ * C, *a = att + (size_t)b * NH * TT;
        T *da = datt + (size_t)b * NH * TT, *dv = dqkv + qo + 2 * C;
        /* datt[r0:r1, 0:r1] = dout[r0:r1] v[0:r1]^T */
        TRY(gemm_batched(c, 0, 1, r1 - r0, r1, hs, 1.0f, d + (size_t)r0 * C, C, hs, v, C3, hs, 0.0f,
                         da + (size_t)r0 * T_, T_, TT, NH, c->dt));
        /* dv[r0:r1] = att[r0:T, r0:r1]^T dout[r0:T] */
        return gemm_batched(c, 1, 0, r1 - r0, hs, T_ - r0, 1.0f, a + (size_t)r0 * T_ + r0, T_, TT,
                            d + (size_t)r0 * C, C, hs, 0.0f, dv + (size_t)r0 * C3, C3, hs, NH, c->dt);
    }));
    CK(cuk::softmax_causal_backward(c->s, datt, att, (size_t)B * NH * T_, T_, scale));
    /* dq[r0:r1] = datt[r0:r1, 0:r1] k[0:r1]; dk[r0:r1] = datt[r0:T, r0:r1]^T q[r0:T] */
    return att_blocks(B, T_, [&](int b, int r0, int r1) {
        size_t qo = (size_t)b * T_ * C3;
        const T *q = qkv + qo, *k = q + C, *da = datt + (size_t)b * NH * TT;
        T *dq = dqkv + qo, *dk = dq + C;
        TRY(gemm_batched(c, 0, 0, r1 - r0, hs, r1, 1.0f, da + (size_t)r0 * T_, T_, TT, k, C3, hs, 0.0f,
                         dq + (size_t)r0 * C3, C3, hs, NH, c->dt));
        return gemm_batched(c, 1, 0, r1 - r0, hs, T_ - r0, 1.0f, da + (size_t)r0 * T_ + r0, T_, TT,
                            q + (size_t)r0 * C3, C3, hs, 0.0f, dk + (size_t)r0 * C3, C3, hs, NH, c->dt);
    });
}

/* ---------------------------------------------------------------- one block */

#define AT(i) ((T *)a[i])
#define AF(i) ((float *)a[i])

template <typename T>
static int block_forward(const cuda_t *c, void *a[CA_N], const T *x, T *w[MODEL_T_PER_LAYER], int B, int T_, int C,
                         int NH)
{
    int BT = B * T_;
    size_t n = (size_t)BT * C;
    CK(cuk::layernorm_forward(c->s, AT(CA_LN1), AF(CA_LN1_MEAN), AF(CA_LN1_RSTD), x, w[MODEL_T_LN1W],
                              w[MODEL_T_LN1B], BT, C));
    TRY(matmul_forward(c, AT(CA_QKV), AT(CA_LN1), w[MODEL_T_QKVW], w[MODEL_T_QKVB], BT, C, 3 * C));
    TRY(attention_forward(c, AT(CA_ATTY), AT(CA_ATT), AT(CA_QKV), B, T_, C, NH));
    TRY(matmul_forward(c, AT(CA_RES2), AT(CA_ATTY), w[MODEL_T_ATTPROJW], w[MODEL_T_ATTPROJB], BT, C, C));
    CK(cuk::residual_add(c->s, AT(CA_RES2), x, n));
    CK(cuk::layernorm_forward(c->s, AT(CA_LN2), AF(CA_LN2_MEAN), AF(CA_LN2_RSTD), AT(CA_RES2), w[MODEL_T_LN2W],
                              w[MODEL_T_LN2B], BT, C));
    TRY(matmul_forward(c, AT(CA_FCH), AT(CA_LN2), w[MODEL_T_FCW], w[MODEL_T_FCB], BT, C, 4 * C));
    CK(cuk::gelu_forward(c->s, AT(CA_FCH_GELU), AT(CA_FCH), 4 * n));
    TRY(matmul_forward(c, AT(CA_RES3), AT(CA_FCH_GELU), w[MODEL_T_FCPROJW], w[MODEL_T_FCPROJB], BT, 4 * C, C));
    CK(cuk::residual_add(c->s, AT(CA_RES3), AT(CA_RES2), n));
    return 0;
}

/* dx: gradient wrt the block input (overwritten; may be dy's buffer). dres2: scratch. */
template <typename T>
static int block_backward(const cuda_t *c, T *dx, T *dres2, const scratch_t<T> *s, float *dw[MODEL_T_PER_LAYER],
                          const T *dy, void *a[CA_N], const T *x, T *w[MODEL_T_PER_LAYER], int B, int T_, int C, int NH)
{
    int BT = B * T_;
    size_t n = (size_t)BT * C;
    TRY(matmul_backward(c, s->dfch, dw[MODEL_T_FCPROJW], dw[MODEL_T_FCPROJB], dy, AT(CA_FCH_GELU),
                        w[MODEL_T_FCPROJW], BT, 4 * C, C));
    CK(cuk::gelu_backward(c->s, s->dfch, AT(CA_FCH), 4 * n));
    TRY(matmul_backward(c, s->dln, dw[MODEL_T_FCW], dw[MODEL_T_FCB], s->dfch, AT(CA_LN2), w[MODEL_T_FCW], BT, C, 4 * C));
    CK(cuk::copy(c->s, dres2, dy, n));
    CK(cuk::layernorm_backward(c->s, dres2, dw[MODEL_T_LN2W], dw[MODEL_T_LN2B], s->dln, AT(CA_RES2), w[MODEL_T_LN2W],
                               AF(CA_LN2_MEAN), AF(CA_LN2_RSTD), BT, C));
    TRY(matmul_backward(c, s->datty, dw[MODEL_T_ATTPROJW], dw[MODEL_T_ATTPROJB], dres2, AT(CA_ATTY),
                        w[MODEL_T_ATTPROJW], BT, C, C));
    TRY(attention_backward(c, s->dqkv, s->datt, s->datty, AT(CA_QKV), AT(CA_ATT), B, T_, C, NH));
    TRY(matmul_backward(c, s->dln, dw[MODEL_T_QKVW], dw[MODEL_T_QKVB], s->dqkv, AT(CA_LN1), w[MODEL_T_QKVW], BT, C, 3 * C));
    CK(cuk::copy(c->s, dx, dres2, n));
    CK(cuk::layernorm_backward(c->s, dx, dw[MODEL_T_LN1W], dw[MODEL_T_LN1B], s->dln, x, w[MODEL_T_LN1W],
                               AF(CA_LN1_MEAN), AF(CA_LN1_RSTD), BT, C));
    return 0;
}

/* What W needs of one layer, saved by B (as cpu.c): the gradients at the outputs of the
 * four matmuls and the two LayerNorms, 11 B*T*C elements. */
enum { G_FCPROJ, G_FC, G_LN2, G_ATTPROJ, G_QKV, G_LN1, G_N, G_LAYER_BTC = 11 };

template <typename T> static void layer_wgrads(T *base, size_t BTC, T *g[G_N])
{
    static const int mult[G_N] = {1, 4, 1, 1, 3, 1};
    for (int i = 0; i < G_N; i++) {
        g[i] = base;
        base += mult[i] * BTC;
    }
}

/* B of one block: dx as block_backward, and g filled for block_backward_weights. */
template <typename T>
static int block_backward_input(const cuda_t *c, T *dx, const scratch_t<T> *s, T *g[G_N], const T *dy, void *a[CA_N],
                                const T *x, T *w[MODEL_T_PER_LAYER], int B, int T_, int C, int NH)
{
    int BT = B * T_;
    size_t n = (size_t)BT * C;
    CK(cuk::copy(c->s, g[G_FCPROJ], dy, n));
    TRY(matmul_backward_input(c, g[G_FC], dy, w[MODEL_T_FCPROJW], BT, 4 * C, C));
    CK(cuk::gelu_backward(c->s, g[G_FC], AT(CA_FCH), 4 * n));
    TRY(matmul_backward_input(c, g[G_LN2], g[G_FC], w[MODEL_T_FCW], BT, C, 4 * C));
    T *dres2 = g[G_ATTPROJ];
    CK(cuk::copy(c->s, dres2, dy, n));
    CK(cuk::layernorm_backward<T>(c->s, dres2, NULL, NULL, g[G_LN2], AT(CA_RES2), w[MODEL_T_LN2W], AF(CA_LN2_MEAN),
                                  AF(CA_LN2_RSTD), BT, C));
    TRY(matmul_backward_input(c, s->datty, dres2, w[MODEL_T_ATTPROJW], BT, C, C));
    TRY(attention_backward(c, g[G_QKV], s->datt, s->datty, AT(CA_QKV), AT(CA_ATT), B, T_, C, NH));
    TRY(matmul_backward_input(c, g[G_LN1], g[G_QKV], w[MODEL_T_QKVW], BT, C, 3 * C));
    CK(cuk::copy(c->s, dx, dres2, n));
    CK(cuk::layernorm_backward<T>(c->s, dx, NULL, NULL, g[G_LN1], x, w[MODEL_T_LN1W], AF(CA_LN1_MEAN),
                                  AF(CA_LN1_RSTD), BT, C));
    return 0;
}

/* W of one block, in block_backward's order of gradient additions. */
template <typename T>
static int block_backward_weights(const cuda_t *c, float *dw[MODEL_T_PER_LAYER], T *g[G_N], void *a[CA_N], const T *x,
                                  T *w[MODEL_T_PER_LAYER], int B, int T_, int C)
{
    int BT = B * T_;
    TRY(matmul_backward_weights(c, dw[MODEL_T_FCPROJW], dw[MODEL_T_FCPROJB], g[G_FCPROJ], AT(CA_FCH_GELU), BT, 4 * C, C));
    TRY(matmul_backward_weights(c, dw[MODEL_T_FCW], dw[MODEL_T_FCB], g[G_FC], AT(CA_LN2), BT, C, 4 * C));
    CK(cuk::layernorm_backward<T>(c->s, NULL, dw[MODEL_T_LN2W], dw[MODEL_T_LN2B], g[G_LN2], AT(CA_RES2),
                                  w[MODEL_T_LN2W], AF(CA_LN2_MEAN), AF(CA_LN2_RSTD), BT, C));
    TRY(matmul_backward_weights(c, dw[MODEL_T_ATTPROJW], dw[MODEL_T_ATTPROJB], g[G_ATTPROJ], AT(CA_ATTY), BT, C, C));
    TRY(matmul_backward_weights(c, dw[MODEL_T_QKVW], dw[MODEL_T_QKVB], g[G_QKV], AT(CA_LN1), BT, C, 3 * C));
    CK(cuk::layernorm_backward<T>(c->s, NULL, dw[MODEL_T_LN1W], dw[MODEL_T_LN1B], g[G_LN1], x, w[MODEL_T_LN1W],
                                  AF(CA_LN1_MEAN), AF(CA_LN1_RSTD), BT, C));
    return 0;
}

/* ---------------------------------------------------------------- the stage */

/* Adds the event-timed parts of the call that just finished into the profile: ev[0] is
 * the start, then one event after each part in the order recorded. */
static int prof_add(cuda_t *c, int n_parts, double *const part[])
{
    for (int i = 0; i < n_parts; i++) {
        float ms;
        CK(cudaEventElapsedTime(&ms, c->ev[i], c->ev[i + 1]));
        *part[i] += ms * 1e-3;
    }
    return 0;
}

template <typename T> static int stage_forward(model_stage_t *st, int slot, const void *in, void *out)
{
    cuda_t *c = cuda_of(st);
    int B = st->B, T_ = st->T, C = st->C, NH = st->NH, V = st->V, BT = B * T_, nl = st->layer_end - st->layer_begin;
    size_t nb = (size_t)BT * C * sizeof(T);
    T *x0 = slot_base<T>(st, slot);
    double *part[CUDA_MAX_EVENTS];
    int np = 0;
    if (st->first) {
        CK(cudaEventRecord(c->ev[0], c->s));
        TRY(stage_ints(c, c->tok, pin_tok(st), st->tokens, BT));
        CK(cuk::encoder_forward(c->s, x0, c->tok, wparam<T>(st, 0), wparam<T>(st, 1), BT, T_, C));
        part[np++] = &st->prof.embed_fwd;
        CK(cudaEventRecord(c->ev[np], c->s));
    } else {
        memcpy(c->pin, in, nb);
        CK(cudaMemcpyAsync(x0, c->pin, nb, cudaMemcpyHostToDevice, c->s));
        CK(cudaEventRecord(c->ev[0], c->s)); /* the layers' times leave the copy out */
    }
    for (int l = 0; l < nl; l++) {
        void *a[CA_N];
        T *w[MODEL_T_PER_LAYER];
        layer_acts<T>(st, slot, l, a);
        layer_params<T>(st, l, w, NULL);
        TRY(block_forward<T>(c, a, layer_input<T>(st, slot, l), w, B, T_, C, NH));
        part[np++] = &st->prof.layer_fwd[l];
        CK(cudaEventRecord(c->ev[np], c->s));
    }
    const T *y = layer_input<T>(st, slot, nl);
    if (!st->last) {
        CK(cudaMemcpyAsync(c->pin, y, nb, cudaMemcpyDeviceToHost, c->s));
        CK(cudaStreamSynchronize(c->s));
        memcpy(out, c->pin, nb);
        return prof_add(c, np, part);
    }
    head_t<T> h = head_acts<T>(st, slot);
    int lnw = (int)(model_stage_tensor_find(st, "lnf.w") - st->tensors);
    TRY(stage_ints(c, c->tgt, pin_tgt(st), st->targets, BT));
    CK(cudaMemsetAsync(c->loss, 0, sizeof(double), c->s));
    CK(cuk::layernorm_forward(c->s, h.lnf, h.mean, h.rstd, y, wparam<T>(st, lnw), wparam<T>(st, lnw) + C, BT, C));
    TRY(matmul_forward<T>(c, h.probs, h.lnf, wparam<T>(st, head_index(st)), NULL, BT, C, V));
    CK(cuk::crossentropy_forward(c->s, h.probs, c->tgt, c->loss, BT, V));
    double *lp = pin_loss(st);
    CK(cudaMemcpyAsync(lp, c->loss, sizeof(double), cudaMemcpyDeviceToHost, c->s));
    part[np++] = &st->prof.head_fwd;
    CK(cudaEventRecord(c->ev[np], c->s));
    CK(cudaStreamSynchronize(c->s));
    st->loss_sum += *lp / BT;
    st->loss_count++;
    return prof_add(c, np, part);
}

/* Ends a backward half: din from the device (not stage 0), the tied twin's gradient to the
 * host (after W), the stream drained, the events read. */
template <typename T> static int backward_end(model_stage_t *st, const T *dy, void *din, int tied, int np, double *part[])
{
    cuda_t *c = cuda_of(st);
    size_t nb = (size_t)st->B * st->T * st->C * sizeof(T);
    if (din)
        CK(cudaMemcpyAsync(c->pin, dy, nb, cudaMemcpyDeviceToHost, c->s));
    if (tied) {
        const model_tensor_t *t = &st->tensors[c->tied_twin];
        CK(cudaMemcpyAsync(st->tied_grad, c->grads + t->offset, t->numel * sizeof(float), cudaMemcpyDeviceToHost, c->s));
    }
    CK(cudaStreamSynchronize(c->s));
    if (din)
        memcpy(din, c->pin, nb);
    return prof_add(c, np, part);
}

/* Layer l of a backward: its saved activations (recomputed from its input under
 * --recompute), its weights and, when dw, their gradients; its input in *x. */
template <typename T>
static int layer_backward_prep(model_stage_t *st, int slot, int l, void *a[CA_N], T *w[MODEL_T_PER_LAYER],
                               float *dw[MODEL_T_PER_LAYER], const T **x)
{
    layer_acts<T>(st, slot, l, a);
    layer_params<T>(st, l, w, dw);
    *x = layer_input<T>(st, slot, l);
    if (st->p.recompute)
        TRY(block_forward<T>(cuda_of(st), a, *x, w, st->B, st->T, st->C, st->NH));
    return 0;
}

template <typename T> static int stage_backward(model_stage_t *st, int slot, const void *dout, void *din)
{
    cuda_t *c = cuda_of(st);
    int B = st->B, T_ = st->T, C = st->C, NH = st->NH, V = st->V, BT = B * T_, nl = st->layer_end - st->layer_begin;
    size_t nb = (size_t)BT * C * sizeof(T);
    scratch_t<T> s = scratch_get<T>(st);
    T *dy = s.dA, *dres2 = s.dB;
    double *part[CUDA_MAX_EVENTS];
    int np = 0;
    if (st->last) {
        CK(cudaEventRecord(c->ev[0], c->s));
        head_t<T> h = head_acts<T>(st, slot);
        int lnw = (int)(model_stage_tensor_find(st, "lnf.w") - st->tensors), hi = head_index(st);
        TRY(stage_ints(c, c->tgt, pin_tgt(st), st->targets, BT));
        /* the mean over M micro-batches of B*T tokens, times the fp16 loss scale */
        float scale = st->loss_scaling ? st->ls.scale : 1.0f;
        CK(cuk::crossentropy_backward(c->s, h.probs, c->tgt, BT, V, scale / ((float)BT * st->p.micro_batches)));
        TRY(matmul_backward<T>(c, s.dln, wgrad(st, hi), NULL, h.probs, h.lnf, wparam<T>(st, hi), BT, C, V));
        CK(cudaMemsetAsync(dy, 0, nb, c->s));
        CK(cuk::layernorm_backward(c->s, dy, wgrad(st, lnw), wgrad(st, lnw) + C, s.dln, layer_input<T>(st, slot, nl),
                                   wparam<T>(st, lnw), h.mean, h.rstd, BT, C));
        part[np++] = &st->prof.head_bwd;
        CK(cudaEventRecord(c->ev[np], c->s));
    } else {
        memcpy(c->pin, dout, nb);
        CK(cudaMemcpyAsync(dy, c->pin, nb, cudaMemcpyHostToDevice, c->s));
        CK(cudaEventRecord(c->ev[0], c->s));
    }
    for (int l = nl - 1; l >= 0; l--) {
        void *a[CA_N];
        T *w[MODEL_T_PER_LAYER];
        float *dw[MODEL_T_PER_LAYER];
        const T *x;
        TRY(layer_backward_prep<T>(st, slot, l, a, w, dw, &x));
        TRY(block_backward<T>(c, dy, dres2, &s, dw, dy, a, x, w, B, T_, C, NH));
        part[np++] = &st->prof.layer_bwd[l];
        CK(cudaEventRecord(c->ev[np], c->s));
    }
    if (st->first) {
        /* the tokens again: another micro-batch may have been forwarded since this one */
        TRY(stage_ints(c, c->tok, pin_tok(st), st->tokens, BT));
        CK(cuk::encoder_backward(c->s, wgrad(st, 0), wgrad(st, 1), dy, c->tok, BT, T_, C));
        part[np++] = &st->prof.embed_bwd;
        CK(cudaEventRecord(c->ev[np], c->s));
    }
    return backward_end<T>(st, dy, st->first ? NULL : din, c->tied_twin >= 0, np, part);
}

/* The W area of a slot (G_LAYER_BTC B*T*C elements per layer, then lnf's and the
 * embeddings' output gradients), allocated once, on the first B: only the zero-bubble
 * schedules split the backward. */
template <typename T> static T *wstash(model_stage_t *st, int slot)
{
    cuda_t *c = cuda_of(st);
    size_t BTC = (size_t)st->B * st->T * st->C, nl = st->layer_end - st->layer_begin;
    if (!c->wstash) {
        c->wstash_elems = BTC * (G_LAYER_BTC * nl + (st->last ? 1 : 0) + (st->first ? 1 : 0));
        size_t bytes = (size_t)st->max_inflight * c->wstash_elems * sizeof(T);
        cudaError_t e = cudaMalloc((void **)&c->wstash, bytes);
        if (e != cudaSuccess) {
            c->wstash = NULL;
            cuda_fail("the split backward's per-slot gradients (cudaMalloc)", e);
            return NULL;
        }
        c->dev_bytes += bytes;
    }
    return (T *)c->wstash + (size_t)slot * c->wstash_elems;
}

template <typename T> static int stage_backward_input(model_stage_t *st, int slot, const void *dout, void *din)
{
    cuda_t *c = cuda_of(st);
    int B = st->B, T_ = st->T, C = st->C, NH = st->NH, V = st->V, BT = B * T_, nl = st->layer_end - st->layer_begin;
    size_t BTC = (size_t)BT * C;
    T *gw = wstash<T>(st, slot);
    if (!gw)
        return -ENOMEM;
    scratch_t<T> s = scratch_get<T>(st);
    T *dy = s.dA;
    double *part[CUDA_MAX_EVENTS];
    int np = 0;
    if (st->last) {
        CK(cudaEventRecord(c->ev[0], c->s));
        head_t<T> h = head_acts<T>(st, slot);
        int lnw = (int)(model_stage_tensor_find(st, "lnf.w") - st->tensors);
        T *glnf = gw + G_LAYER_BTC * BTC * nl;
        TRY(stage_ints(c, c->tgt, pin_tgt(st), st->targets, BT));
        float scale = st->loss_scaling ? st->ls.scale : 1.0f;
        /* the probabilities become the logits' gradient in place, which W reads */
        CK(cuk::crossentropy_backward(c->s, h.probs, c->tgt, BT, V, scale / ((float)BT * st->p.micro_batches)));
        TRY(matmul_backward_input<T>(c, glnf, h.probs, wparam<T>(st, head_index(st)), BT, C, V));
        CK(cudaMemsetAsync(dy, 0, BTC * sizeof(T), c->s));
        CK(cuk::layernorm_backward<T>(c->s, dy, NULL, NULL, glnf, layer_input<T>(st, slot, nl), wparam<T>(st, lnw),
                                      h.mean, h.rstd, BT, C));
        part[np++] = &st->prof.head_bwd;
        CK(cudaEventRecord(c->ev[np], c->s));
    } else {
        memcpy(c->pin, dout, BTC * sizeof(T));
        CK(cudaMemcpyAsync(dy, c->pin, BTC * sizeof(T), cudaMemcpyHostToDevice, c->s));
        CK(cudaEventRecord(c->ev[0], c->s));
    }
    for (int l = nl - 1; l >= 0; l--) {
        void *a[CA_N];
        T *w[MODEL_T_PER_LAYER], *g[G_N];
        const T *x;
        layer_wgrads<T>(gw + G_LAYER_BTC * BTC * l, BTC, g);
        TRY(layer_backward_prep<T>(st, slot, l, a, w, NULL, &x));
        TRY(block_backward_input<T>(c, dy, &s, g, dy, a, x, w, B, T_, C, NH));
        part[np++] = &st->prof.layer_bwd[l];
        CK(cudaEventRecord(c->ev[np], c->s));
    }
    if (st->first)
        CK(cuk::copy(c->s, gw + G_LAYER_BTC * BTC * nl + (st->last ? BTC : 0), dy, BTC));
    return backward_end<T>(st, dy, st->first ? NULL : din, 0, np, part);
}

template <typename T> static int stage_backward_weights(model_stage_t *st, int slot)
{
    cuda_t *c = cuda_of(st);
    int B = st->B, T_ = st->T, C = st->C, BT = B * T_, nl = st->layer_end - st->layer_begin;
    size_t BTC = (size_t)BT * C;
    T *gw = wstash<T>(st, slot);
    if (!gw)
        return -ENOMEM;
    double *part[CUDA_MAX_EVENTS];
    int np = 0;
    CK(cudaEventRecord(c->ev[0], c->s));
    if (st->last) {
        head_t<T> h = head_acts<T>(st, slot);
        int lnw = (int)(model_stage_tensor_find(st, "lnf.w") - st->tensors), hi = head_index(st);
        TRY(matmul_backward_weights<T>(c, wgrad(st, hi), NULL, h.probs, h.lnf, BT, C, st->V));
        CK(cuk::layernorm_backward<T>(c->s, NULL, wgrad(st, lnw), wgrad(st, lnw) + C, gw + G_LAYER_BTC * BTC * nl,
                                      layer_input<T>(st, slot, nl), wparam<T>(st, lnw), h.mean, h.rstd, BT, C));
        part[np++] = &st->prof.head_bwd;
        CK(cudaEventRecord(c->ev[np], c->s));
    }
    for (int l = nl - 1; l >= 0; l--) {
        void *a[CA_N];
        T *w[MODEL_T_PER_LAYER], *g[G_N];
        float *dw[MODEL_T_PER_LAYER];
        const T *x;
        layer_wgrads<T>(gw + G_LAYER_BTC * BTC * l, BTC, g);
        TRY(layer_backward_prep<T>(st, slot, l, a, w, dw, &x));
        TRY(block_backward_weights<T>(c, dw, g, a, x, w, B, T_, C));
        part[np++] = &st->prof.layer_bwd[l];
        CK(cudaEventRecord(c->ev[np], c->s));
    }
    if (st->first) {
        TRY(stage_ints(c, c->tok, pin_tok(st), st->tokens, BT));
        CK(cuk::encoder_backward(c->s, wgrad(st, 0), wgrad(st, 1), gw + G_LAYER_BTC * BTC * nl + (st->last ? BTC : 0),
                                 c->tok, BT, T_, C));
        part[np++] = &st->prof.embed_bwd;
        CK(cudaEventRecord(c->ev[np], c->s));
    }
    return backward_end<T>(st, (const T *)NULL, NULL, c->tied_twin >= 0, np, part);
}

/* The stage entry points: the element type follows the precision. */
#define BY_PREC(fn, st, ...)                                                                           \
    switch (cuda_of(st)->prec) {                                                                       \
    case MODEL_PREC_FP16:                                                                              \
        return fn<__half>(st, __VA_ARGS__);                                                            \
    case MODEL_PREC_BF16:                                                                              \
        return fn<__nv_bfloat16>(st, __VA_ARGS__);                                                     \
    default:                                                                                           \
        return fn<float>(st, __VA_ARGS__);                                                             \
    }

int cuda_stage_forward(model_stage_t *st, int slot, const void *in, void *out)
{
    BY_PREC(stage_forward, st, slot, in, out)
}

int cuda_stage_backward(model_stage_t *st, int slot, const void *dout, void *din)
{
    BY_PREC(stage_backward, st, slot, dout, din)
}

int cuda_stage_backward_input(model_stage_t *st, int slot, const void *dout, void *din)
{
    BY_PREC(stage_backward_input, st, slot, dout, din)
}

int cuda_stage_backward_weights(model_stage_t *st, int slot)
{
    BY_PREC(stage_backward_weights, st, slot)
}
