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

#include "common/clock.h"
#include "models/calib.h"
#include "models/cpu_layers.h"

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

/* Where local layer l's gradients begin in the block (its first tensor); l = the layer
 * count: the final layernorm's, on the last stage. For the data-parallel hook. */
static size_t layer_grad_lo(const model_stage_t *st, int l)
{
    return st->tensors[(st->first ? 2 : 0) + l * MODEL_T_PER_LAYER].offset;
}

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
    if (st->p.threads > 0)
        omp_set_num_threads(st->p.threads);
    /* OpenMP is the one thread pool: the products are split over its threads (calib.c) */
    openblas_set_num_threads(1);
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
    double t0 = pn_now();
    if (st->first) {
        encoder_forward(x0, st->tokens, st->params + st->tensors[0].offset,
                        st->params + st->tensors[1].offset, B, T, C);
        st->prof.embed_fwd += pn_now() - t0;
    } else {
        memcpy(x0, in, (size_t)BT * C * sizeof(float));
    }
    for (int l = 0; l < nl; l++) {
        float *a[A_N], *w[MODEL_T_PER_LAYER];
        double tl = pn_now();
        layer_acts(st, slot, l, a);
        layer_params(st, l, 0, w);
        block_forward(a, layer_input(st, slot, l), w, B, T, C, NH);
        st->prof.layer_fwd[l] += pn_now() - tl;
    }
    const float *y = layer_input(st, slot, nl); /* the last layer's output */
    if (!st->last) {
        memcpy(out, y, (size_t)BT * C * sizeof(float));
        return 0;
    }
    double th = pn_now();
    const model_tensor_t *lnw = model_stage_tensor_find(st, "lnf.w");
    float *lp = slot_base(st, slot) + st->slot_floats - last_part_floats(st);
    float *lnf = lp, *mean = lp + (size_t)BT * C, *rstd = mean + BT, *probs = rstd + BT;
    layernorm_forward(lnf, mean, rstd, y, lnw->param, lnw->param + C, BT, C);
    matmul_forward(probs, lnf, head_weight(st, 0), NULL, BT, C, V);
    st->loss_sum += crossentropy_forward(probs, st->targets, BT, V) / BT;
    st->loss_count++;
    st->prof.head_fwd += pn_now() - th;
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
        double th = pn_now();
        const model_tensor_t *lnw = model_stage_tensor_find(st, "lnf.w");
        head_acts_t h = head_acts(st, slot);
        float *lnf = h.lnf, *mean = h.mean, *rstd = h.rstd, *probs = h.probs;
        /* the iteration's loss is the mean over M micro-batches of B*T tokens */
        crossentropy_backward(probs, st->targets, BT, V, 1.0f / ((float)BT * st->p.micro_batches));
        matmul_backward(s.dln, (float *)head_weight(st, 1), NULL, probs, lnf, head_weight(st, 0), BT, C, V);
        memset(dy, 0, (size_t)BT * C * sizeof(float));
        layernorm_backward(dy, lnw->grad, lnw->grad + C, s.dln, layer_input(st, slot, nl), lnw->param,
                           mean, rstd, BT, C);
        st->prof.head_bwd += pn_now() - th;
        model_stage_grads_final(st, layer_grad_lo(st, nl));
    } else {
        memcpy(dy, dout, (size_t)BT * C * sizeof(float));
    }
    for (int l = nl - 1; l >= 0; l--) {
        float *a[A_N], *w[MODEL_T_PER_LAYER], *dw[MODEL_T_PER_LAYER];
        double tl = pn_now();
        layer_acts(st, slot, l, a);
        layer_params(st, l, 0, w);
        layer_params(st, l, 1, dw);
        const float *x = layer_input(st, slot, l);
        if (st->p.recompute)
            block_forward(a, x, w, B, T, C, NH);
        block_backward(dy, dres2, &s, dw, dy, a, x, w, B, T, C, NH);
        st->prof.layer_bwd[l] += pn_now() - tl;
        model_stage_grads_final(st, layer_grad_lo(st, l));
    }
    if (st->first) {
        double t0 = pn_now();
        encoder_backward(st->grads + st->tensors[0].offset, st->grads + st->tensors[1].offset, dy,
                         st->tokens, B, T, C);
        st->prof.embed_bwd += pn_now() - t0;
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

/* The last stage's head (final layernorm, projection, loss) backward into the W area gw
 * of a slot: with dy, its input part (the logits' gradient, which the weight part reads,
 * and dy at the last layer's output); without, its weight part. */
static void head_backward(model_stage_t *st, int slot, float *gw, float *dy)
{
    int BT = st->B * st->T, C = st->C, V = st->V, nl = st->layer_end - st->layer_begin;
    size_t BTC = (size_t)BT * C;
    double th = pn_now();
    const model_tensor_t *lnw = model_stage_tensor_find(st, "lnf.w");
    head_acts_t h = head_acts(st, slot);
    float *glnf = gw + G_LAYER_BTC * BTC * nl;
    if (dy) {
        /* the probabilities become the logits' gradient in place, which W reads */
        crossentropy_backward(h.probs, st->targets, BT, V, 1.0f / ((float)BT * st->p.micro_batches));
        matmul_backward_input(glnf, h.probs, head_weight(st, 0), BT, C, V);
        memset(dy, 0, BTC * sizeof(float));
        layernorm_backward_input(dy, glnf, layer_input(st, slot, nl), lnw->param, h.mean, h.rstd, BT, C);
    } else {
        matmul_backward_weights((float *)head_weight(st, 1), NULL, h.probs, h.lnf, BT, C, V);
        layernorm_backward_weights(lnw->grad, lnw->grad + C, glnf, layer_input(st, slot, nl), h.mean,
                                   h.rstd, BT, C);
    }
    st->prof.head_bwd += pn_now() - th;
}

/* B (weights 0: the input's gradient into din, and what W needs into the slot's W area)
 * or W (weights 1: the parameters' gradients from that area) of one micro-batch; B then
 * W is the whole backward. */
static int backward_part(model_stage_t *st, int slot, const float *dout, float *din, int weights)
{
    int B = st->B, T = st->T, C = st->C, NH = st->NH, BT = B * T;
    int nl = st->layer_end - st->layer_begin;
    size_t BTC = (size_t)BT * C;
    float *gw = wgrad_base(st, slot);
    if (!gw)
        return -ENOMEM;
    scratch_t s = scratch_get(st);
    float *dy = weights ? NULL : s.dA;
    threads_apply(st);
    if (st->last) {
        head_backward(st, slot, gw, dy);
        if (weights)
            model_stage_grads_final(st, layer_grad_lo(st, nl));
    } else if (!weights)
        memcpy(dy, dout, BTC * sizeof(float));
    for (int l = nl - 1; l >= 0; l--) {
        float *a[A_N], *w[MODEL_T_PER_LAYER], *dw[MODEL_T_PER_LAYER], *g[G_N];
        double tl = pn_now();
        layer_acts(st, slot, l, a);
        layer_wgrads(gw + G_LAYER_BTC * BTC * l, BTC, g);
        const float *x = layer_input(st, slot, l);
        if (!weights || st->p.recompute)
            layer_params(st, l, 0, w);
        if (st->p.recompute)
            block_forward(a, x, w, B, T, C, NH);
        if (weights) {
            layer_params(st, l, 1, dw);
            block_backward_weights(dw, g, a, x, B, T, C);
        } else {
            block_backward_input(dy, &s, g, dy, a, x, w, B, T, C, NH);
        }
        st->prof.layer_bwd[l] += pn_now() - tl;
        if (weights)
            model_stage_grads_final(st, layer_grad_lo(st, l));
    }
    float *gemb = gw + G_LAYER_BTC * BTC * nl + (st->last ? BTC : 0); /* the embeddings' output gradient */
    if (!weights) {
        memcpy(st->first ? gemb : din, dy, BTC * sizeof(float));
    } else if (st->first) {
        double t0 = pn_now();
        encoder_backward(st->grads + st->tensors[0].offset, st->grads + st->tensors[1].offset, gemb, st->tokens, B,
                         T, C);
        st->prof.embed_bwd += pn_now() - t0;
    }
    return 0;
}

static int cpu_backward_input(model_stage_t *st, int slot, const float *dout, float *din)
{
    return backward_part(st, slot, dout, din, 0);
}

static int cpu_backward_weights(model_stage_t *st, int slot)
{
    return backward_part(st, slot, NULL, NULL, 1);
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
#if defined(__clang__) /* keeps sqrtf's errno and cannot vectorize: -Werror refuses a failed simd */
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
#else
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
#endif
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
    double t0 = model_kprof_start();
    for (int k = 0; k < st->n_tensors; k++) {
        const model_tensor_t *tn = &st->tensors[k];
        size_t o = tn->offset;
        adamw_update(st->params + o, st->grads + o, st->opt_m + o, st->opt_v + o, tn->numel, st->p.lr,
                     tn->decay ? wd : 0.0f, ic1, ic2);
    }
    model_kprof_stop(MODEL_K_ADAMW, t0);
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
