/* What the cuda backend offers beyond the backend table (C API, built only with
 * PN_HAVE_CUDA): the device probe behind `--compute cuda` errors, copying the device's
 * parameters and gradients to the stage's host tensors for comparisons, the fp16 loss
 * scale, and the device memory the stage holds. The device is the truth for a cuda stage:
 * st->params / st->grads on the host (and every tensor's param/grad view) hold the state
 * as of the last model_cuda_sync_host, or the initial parameters before the first
 * forward. Boundary tensors (in/out/dout/din) are model_stage_act_bytes() bytes in the
 * compute precision (fp16/bf16: 2 bytes an element; see model_prec_to_float). */
#ifndef PN_MODELS_CUDA_H
#define PN_MODELS_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "common/err.h"
#include "models/model.h"

/* 0 if `--compute cuda:ARG` can run here; otherwise a negative code with the cause named
 * in err: no driver (-ENODEV), no device (-ENODEV), device N absent (-EINVAL), a
 * precision the device lacks (-ENOTSUP). name (may be NULL) gets the device's name. */
int model_cuda_probe(const char *arg, char *name, size_t namelen, char *err, size_t errlen) PN_WUR;

/* Device parameters and gradients -> st->params, st->grads (fp32). */
int model_cuda_sync_host(model_stage_t *st) PN_WUR;

/* Device bytes allocated by this stage (parameters, compute copy, gradients, optimizer
 * state, activations, cuBLAS workspace): allocated once at init, so also the peak. */
size_t model_cuda_device_bytes(const model_stage_t *st);

/* The GEMM reference of the benchmark, as model_stage_gemm_reference does for cpu: records
 * the cuBLAS calls of one forward + backward of micro-batch 0, replays exactly those calls
 * `reps` times (after one warm-up pass) timed by CUDA events; outputs the FLOPs of one
 * replay and the mean seconds per replay. Ends with model_stage_reset. */
int model_cuda_gemm_reference(model_stage_t *st, int reps, double *flops, double *seconds) PN_WUR;

#ifdef __cplusplus
}
#endif

#endif
