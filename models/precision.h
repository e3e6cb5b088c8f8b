/* Host-side tables and state machines of GPU compute, free of any CUDA header so they are
 * unit tested on machines without a GPU: the precisions (bytes of a boundary element, the
 * cuBLAS data and compute types), the dense peak FLOP/s of known devices per precision,
 * the dynamic loss scale of fp16 training, the parsing of the `cuda:PREC[,dev=N]` argument
 * and the choice of the GPU from --device or the launcher's local rank. */
#ifndef PN_MODELS_PRECISION_H
#define PN_MODELS_PRECISION_H

#include <stddef.h>

#include "common/err.h"

typedef enum { MODEL_PREC_FP32, MODEL_PREC_TF32, MODEL_PREC_FP16, MODEL_PREC_BF16, MODEL_PREC_N } model_prec_t;

typedef struct {
    const char *name;        /* "fp32", "tf32", "fp16", "bf16" */
    int elem_bytes;          /* a stored activation / boundary element: 4 or 2 */
    const char *data_type;   /* the cuBLAS operand type: "CUDA_R_32F", "CUDA_R_16F", "CUDA_R_16BF" */
    const char *compute;     /* the cuBLAS compute type: "CUBLAS_COMPUTE_32F[_FAST_TF32]" */
    int min_sm;              /* lowest compute capability (major*10+minor) that runs it natively */
    int master_fp32;         /* fp32 master weights beside a low-precision copy */
    int loss_scaling;        /* dynamic loss scaling (fp16's narrow exponent) */
} model_prec_info_t;

const model_prec_info_t *model_prec_info(model_prec_t p);
/* "fp16" -> MODEL_PREC_FP16; -EINVAL naming the known ones. */
int model_prec_parse(const char *s, model_prec_t *out, char *err, size_t errlen) PN_WUR;

/* Boundary tensors in the compute precision <-> fp32 on the host (round to nearest even;
 * fp32/tf32 are plain copies). */
void model_prec_to_float(model_prec_t p, const void *src, float *dst, size_t n);
void model_prec_from_float(model_prec_t p, const float *src, void *dst, size_t n);

/* A device of the peak table: dense (no sparsity) peaks per precision in FLOP/s (0: the
 * precision has no tensor-core path there), HBM bandwidth and the fraction of peak a tuned
 * GPT layer typically sustains (what emulate assumes). */
typedef struct {
    const char *key;         /* short name for emulate: "v100", "a100", "h100", ... */
    const char *match;       /* substring of cudaGetDeviceProperties().name, matched case-insensitively */
    double peak[MODEL_PREC_N];
    double mem_bw, efficiency;
} model_device_t;

/* By short key ("h100") or by the driver's name ("NVIDIA H100 80GB HBM3"); NULL if unknown. */
const model_device_t *model_device_find(const char *name_or_key);
const model_device_t *model_device_at(int i);   /* table order; NULL past the end */
/* "v100, t4, a100, ..." for messages */
const char *model_device_keys(void);

/* Dynamic loss scaling (fp16): the loss is multiplied by `scale` before backward; a step
 * whose gradients hold an inf/NaN is skipped and halves the scale; `growth_interval`
 * clean steps in a row double it. */
typedef struct {
    float scale, min_scale, max_scale;
    int growth_interval, clean_steps;
    long skipped, applied;
} model_loss_scale_t;

void model_loss_scale_init(model_loss_scale_t *ls, float initial, int growth_interval);
/* After a backward pass: overflow != 0 if any gradient was not finite. Returns 1 if the
 * optimizer step is to be applied (gradients divided by the scale in use before this
 * call), 0 if it is to be skipped. */
int model_loss_scale_update(model_loss_scale_t *ls, int overflow);

/* The argument of `--compute cuda:ARG`: "", "fp16", "bf16,dev=1", "dev=0". device is -1
 * when not given. */
typedef struct {
    model_prec_t prec;
    int device;
} model_cuda_arg_t;
int model_cuda_arg_parse(const char *arg, model_cuda_arg_t *out, char *err, size_t errlen) PN_WUR;

/* Which GPU a stage uses: `requested` (>= 0, from --device or dev=) if given, else the
 * launcher's local rank (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID, LOCAL_RANK, first set
 * wins), else `fallback` (the stage index: `pipenem run` starts its stages without a
 * launcher), either modulo the device count (several stages may share one GPU). env(name)
 * returns a variable's value or NULL (getenv in use, a table in tests). Errors: -ENODEV
 * with no device, -EINVAL for a requested device that is absent or a malformed local rank. */
int model_gpu_pick(int requested, int count, int fallback, const char *(*env)(const char *name), int *out,
                   char *err, size_t errlen) PN_WUR;

#endif
