/* Internal to the cuda backend (C++): where a stage's tensors live in its device blocks and
 * pinned staging (typed views of models/cuda_layout.cu's sizes), shared by the layer code. */
#ifndef PN_MODELS_CUDA_LAYOUT_H
#define PN_MODELS_CUDA_LAYOUT_H

#include <string.h>

#include "models/cuda_priv.h"

size_t cuda_last_part_bytes(const model_stage_t *st, size_t es); /* the head's part of a slot */

/* ---------------------------------------------------------------- layout */

static inline size_t up(size_t n) { return (n + 255) & ~(size_t)255; }

template <typename T> struct scratch_t {
    T *dA, *dB, *dln, *datty, *dqkv, *dfch, *datt;
    unsigned char *recomp;
};

template <typename T> static scratch_t<T> scratch_get(const model_stage_t *st)
{
    const cuda_t *c = cuda_of(st);
    size_t BTC = (size_t)st->B * st->T * st->C, es = sizeof(T);
    unsigned char *p = c->acts + c->misc_bytes;
    scratch_t<T> x;
    T **four[4] = {&x.dA, &x.dB, &x.dln, &x.datty};
    for (int i = 0; i < 4; i++, p += up(BTC * es))
        *four[i] = (T *)p;
    x.dqkv = (T *)p;
    p += up(3 * BTC * es);
    x.dfch = (T *)p;
    p += up(4 * BTC * es);
    x.datt = (T *)p;
    x.recomp = p + up((size_t)st->B * st->NH * st->T * st->T * es);
    return x;
}

template <typename T> static T *slot_base(const model_stage_t *st, int slot)
{
    const cuda_t *c = cuda_of(st);
    return (T *)(c->acts + c->misc_bytes + c->scratch_bytes + (size_t)slot * c->slot_bytes);
}

/* layer l's activations in a slot (with recompute: the output in the slot, the rest in the
 * scratch); a[] are typed pointers, the statistics cast by the caller */
template <typename T> static void layer_acts(const model_stage_t *st, int slot, int l, void *a[CA_N])
{
    size_t b[CA_N], btc = up((size_t)st->B * st->T * st->C * sizeof(T));
    cuda_layer_sizes(st, sizeof(T), b);
    unsigned char *base = (unsigned char *)slot_base<T>(st, slot) + btc;
    unsigned char *p = st->p.recompute ? scratch_get<T>(st).recomp : base + (size_t)l * cuda_layer_bytes(st, sizeof(T));
    for (int i = 0; i < CA_N; i++) {
        a[i] = p;
        p += b[i];
    }
    if (st->p.recompute)
        a[CA_RES3] = base + (size_t)l * btc;
}

template <typename T> static T *layer_input(const model_stage_t *st, int slot, int l)
{
    if (l == 0)
        return slot_base<T>(st, slot);
    void *a[CA_N];
    layer_acts<T>(st, slot, l - 1, a);
    return (T *)a[CA_RES3];
}

/* the head's saved tensors: final LayerNorm output and statistics, probabilities */
template <typename T> struct head_t {
    T *lnf;
    float *mean, *rstd;
    T *probs;
};

template <typename T> static head_t<T> head_acts(const model_stage_t *st, int slot)
{
    size_t BT = (size_t)st->B * st->T;
    unsigned char *p = (unsigned char *)slot_base<T>(st, slot) + cuda_of(st)->slot_bytes - cuda_last_part_bytes(st, sizeof(T));
    head_t<T> h;
    h.lnf = (T *)p;
    p += up(BT * st->C * sizeof(T));
    h.mean = (float *)p;
    p += up(BT * sizeof(float));
    h.rstd = (float *)p;
    p += up(BT * sizeof(float));
    h.probs = (T *)p;
    return h;
}

/* parameter k of tensor table entry i: the compute copy (what GEMMs read) or the gradient */
template <typename T> static T *wparam(const model_stage_t *st, int i)
{
    return (T *)cuda_of(st)->wc + st->tensors[i].offset;
}

static inline float *wgrad(const model_stage_t *st, int i)
{
    return cuda_of(st)->grads + st->tensors[i].offset;
}

static inline int layer_base(const model_stage_t *st, int l) { return (st->first ? 2 : 0) + l * MODEL_T_PER_LAYER; }

static inline int head_index(const model_stage_t *st)
{
    const model_tensor_t *t = model_stage_tensor_find(st, "head");
    if (!t)
        t = model_stage_tensor_find(st, "wte"); /* tied, single stage */
    return (int)(t - st->tensors);
}

template <typename T> static inline void layer_params(const model_stage_t *st, int l, T *w[MODEL_T_PER_LAYER], float *dw[MODEL_T_PER_LAYER])
{
    int base = layer_base(st, l);
    for (int k = 0; k < MODEL_T_PER_LAYER; k++) {
        w[k] = wparam<T>(st, base + k);
        if (dw)
            dw[k] = wgrad(st, base + k);
    }
}

/* Pinned staging, one region per use so that one call never overwrites what an earlier
 * copy of the same call may still be reading: the boundary tensor, tokens, targets, loss.
 * Every call ends with a stream synchronisation, so calls do not overlap. */
static inline unsigned char *pin_at(const model_stage_t *st, int k)
{
    size_t BT = (size_t)st->B * st->T, nb = up(BT * st->C * cuda_of(st)->es);
    return cuda_of(st)->pin + (k > 0 ? nb : 0) + (k > 1 ? up(BT * sizeof(int)) : 0) + (k > 2 ? up(BT * sizeof(int)) : 0);
}
static inline int *pin_tok(const model_stage_t *st) { return (int *)pin_at(st, 1); }
static inline int *pin_tgt(const model_stage_t *st) { return (int *)pin_at(st, 2); }
static inline double *pin_loss(const model_stage_t *st) { return (double *)pin_at(st, 3); }

/* (B,T) ints from the host through pinned memory to the device */
static inline int stage_ints(const cuda_t *c, int *dst, int *pin, const int *src, int n)
{
    memcpy(pin, src, (size_t)n * sizeof(int));
    CK(cudaMemcpyAsync(dst, pin, (size_t)n * sizeof(int), cudaMemcpyHostToDevice, c->s));
    return 0;
}


#endif
