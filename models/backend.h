/* The compute backends behind model_stage_t (internal to models/): a const table of
 * function pointers per backend, chosen by the text of --compute. model.c does the
 * validation, slot bookkeeping and data; a backend does the arithmetic or the waiting. */
#ifndef PN_MODELS_BACKEND_H
#define PN_MODELS_BACKEND_H

#include "models/model.h"

typedef struct model_backend {
    const char *name;
    int modelled; /* its times come from a model (emulate), so they are known before a run */
    /* arg: what followed "NAME:" in --compute ("" if nothing). Checks only, no memory. */
    int (*check)(const char *arg, char *err, size_t errlen);
    /* A line for headers: what the argument means (device peak and efficiency, ...). */
    void (*describe)(const char *arg, char *buf, size_t len);
    /* Allocates what the backend needs; st's sizes, layers and tensor table are set. */
    int (*init)(model_stage_t *st, const char *arg, char *err, size_t errlen);
    /* slot: index of the activation slot of this micro-batch. */
    int (*forward)(model_stage_t *st, int slot, const float *in, float *out);
    int (*backward)(model_stage_t *st, int slot, const float *dout, float *din);
    /* B: computes din from dout (the last stage from its loss) and keeps in the slot what
     * W needs; touches no parameter gradient. */
    int (*backward_input)(model_stage_t *st, int slot, const float *dout, float *din);
    /* W: adds the slot's parameter gradients into grads (after its B). backward(slot) ==
     * backward_input(slot) then backward_weights(slot), bit for bit on the cpu. */
    int (*backward_weights)(model_stage_t *st, int slot);
    int (*step)(model_stage_t *st);
    void (*destroy)(model_stage_t *st);
    /* optional: model_stage_reset zeroes gradients the backend holds outside st->grads */
    void (*reset)(model_stage_t *st);
    /* optional, for backends that set st->loss_scaling: 1 if the gradients the backend
     * holds outside st->grads have an inf/NaN, 0 if not (NULL: checks st->grads). */
    int (*overflow)(model_stage_t *st);
    /* optional: the device memory the stage holds (bytes, measured); NULL: none, the
     * peak-memory columns then report the process's resident memory. */
    size_t (*device_bytes)(const model_stage_t *st);
    /* optional: the precision arg computes in (a model_prec_t), -1 if arg is invalid;
     * NULL: fp32. */
    int (*precision)(const char *arg);
    /* optional, for a backend whose gradients live on a device (--dp through host memory):
     * grads_host copies the fp32 gradient block, the tied twin's part included, into the
     * host mirror st->grads that model_stage_grads returns, and returns once it is there,
     * asleep meanwhile; grads_upload copies the mirror (averaged meanwhile) back before the
     * step. NULL: st->grads is the block itself (cpu) or emulate's stand-in. */
    int (*grads_host)(model_stage_t *st);
    int (*grads_upload)(model_stage_t *st);
} model_backend_t;

extern const model_backend_t model_backend_cpu;
extern const model_backend_t model_backend_emulate;
#ifdef PN_HAVE_CUDA
extern const model_backend_t model_backend_cuda;   /* models/cuda.cu */
#endif

/* Per-layer tensor order of the parameter table (12 tensors per transformer layer). */
enum {
    MODEL_T_LN1W, MODEL_T_LN1B, MODEL_T_QKVW, MODEL_T_QKVB, MODEL_T_ATTPROJW, MODEL_T_ATTPROJB,
    MODEL_T_LN2W, MODEL_T_LN2B, MODEL_T_FCW, MODEL_T_FCB, MODEL_T_FCPROJW, MODEL_T_FCPROJB,
    MODEL_T_PER_LAYER
};

/* Shared by the backends. */
/* Turns dynamic loss scaling on for a stage in a precision that needs it (fp16): init calls it. */
void model_stage_loss_scaling_on(model_stage_t *st);
/* Zeroes every gradient the stage holds (host blocks, the tied buffer, the backend's own). */
void model_stage_grads_zero(model_stage_t *st);
double model_stage_fwd_flops(const model_stage_t *st);   /* per micro-batch, the formula */
/* A backward adding parameter gradients is done with those from float lo to the end of
 * the block: tells the data-parallel hook, if one is set (model_stage_grads_hook). */
static inline void model_stage_grads_final(model_stage_t *st, size_t lo)
{
    if (st->grads_final)
        st->grads_final(st->grads_final_arg, lo);
}

/* The cpu layout of the activation block (floats); the accounting reports it for every
 * backend, since it is what a real implementation of this model holds. */
size_t model_layer_act_floats(const model_stage_t *st);  /* one layer, everything saved */
size_t model_slot_floats(const model_stage_t *st);       /* per in-flight micro-batch */
size_t model_scratch_floats(const model_stage_t *st);    /* shared by all micro-batches */

#endif
