/* GPT-2/3 models split into pipeline stages: configs, one stage's forward/backward/AdamW
 * over real (cpu) or modelled (emulate) compute, deterministic data, and the FLOP and
 * memory accounting the benchmarks report. One stage per model_stage_t. */
#ifndef PN_MODELS_MODEL_H
#define PN_MODELS_MODEL_H

#include <stddef.h>

#include "common/err.h"
#include "common/limits.h"
#include "models/precision.h"

enum {
    MODEL_MAX_LAYERS = 256,
};

typedef struct {
    char name[32];
    int layers, hidden, heads, vocab, context;
} model_config_t;

/* Known names: gpt3-small, gpt3-medium, gpt3-large, gpt3-xl, gpt3-2.7b, tiny. */
int model_config_get(const char *name, model_config_t *out, char *err, size_t errlen) PN_WUR;
/* The partition used when none is given: layers/stages each, the first layers % stages
 * stages one more. */
void model_partition_even(int layers, int stages, int *part);
/* "gpt3-small, gpt3-medium, ..." for --help and error messages */
const char *model_config_names(void);
/* heads dividing hidden, positive sizes: -EINVAL with the bad part named. */
int model_config_check(const model_config_t *cfg, char *err, size_t errlen) PN_WUR;

typedef struct {
    model_config_t cfg;
    int seq_len, micro_batch_size, micro_batches;  /* M = batch / micro_batch_size */
    int stages, stage; const int *partition;       /* NULL = even split */
    int max_inflight;         /* micro-batches whose activations are held at once; 0 = M */
    const char *compute;      /* "cpu", "cuda:bf16", "emulate:v100[,fp16]", "emulate:fwd=25ms,bwd=75ms", "emulate:FILE" */
    const char *dataset;      /* "random" or a text file path */
    unsigned long long seed; int threads; int recompute; int tied_embeddings;
    float lr;
    int process_chunks;       /* chunks of the model this process holds (0 = 1): see below */
    int data_mb_offset;       /* data parallelism: micro-batch mb reads the data of mb + this */
} model_stage_params_t;
/* Notes on the fields:
 * - partition: `stages` layer counts (each >= 1, summing to cfg.layers); copied by init.
 * - process_chunks: with several chunks per process (interleaved, V-shape), `stages` counts
 *   chunks and each chunk is one model_stage_t; emulate's explicit fwd=/bwd=/opt= times,
 *   which are per process, are then shared out evenly among its chunks.
 * - max_inflight: the schedule's peak of micro-batches between forward and backward on
 *   this stage (GPipe: M; 1F1B: min(stages - stage, M)); cpu allocates that many slots.
 * - threads: > 0 sets the OpenMP threads for the whole process; 0 leaves OpenMP's
 *   default. cpu runs OpenBLAS at one thread and splits each product over the OpenMP
 *   threads itself (two pools polling between calls competed for the same cores).
 *   Stages sharing cores should use 1.
 * - compute "emulate:...": sleeps for the modelled time (see model_account_t), leaves
 *   the caller's boundary buffers untouched (a GPU would produce them without host CPU),
 *   holds no parameters or activations, and reports NAN as loss.
 * - seed: parameters depend only on (seed, tensor name), data only on (seed, iter, mb),
 *   so any split of the model initialises and trains identically to the unsplit one.
 * - data_mb_offset: replica d of D data-parallel replicas of M micro-batches each sets
 *   d*M, so the D shards together read exactly the micro-batches 0..D*M-1 of one run
 *   with D times the batch. */

/* One parameter tensor of a stage: a view into the stage's parameter and gradient blocks
 * (both NULL under emulate, which holds no parameters). Names are global across stages:
 * "wte", "wpe", "h3.qkvw", "lnf.w", "head", so split and unsplit models can be compared. */
typedef struct {
    char name[24];
    size_t offset, numel;   /* in floats, into the parameter block */
    int decay;              /* AdamW weight decay applies (matrices, not biases/LayerNorm) */
    int gemm;               /* a matrix product's weight (its gradient is a GEMM's), not an embedding table */
    float *param, *grad;
} model_tensor_t;

/* Deterministic token source: every stage derives the same batch of (iter, mb). */
typedef struct {
    int random;                 /* 1: uniform random tokens, 0: bytes of text */
    unsigned char *text; size_t len;
    int vocab;
    unsigned long long seed;
    int mb_offset;              /* this shard's first micro-batch of the data (model_stage_params_t) */
} model_data_t;

/* Measured compute time, accumulated by the cpu backend (seconds, all calls since init
 * or the last model_stage_prof_reset). Layer index is local to the stage. */
typedef struct {
    double embed_fwd, embed_bwd, head_fwd, head_bwd, opt;
    double layer_fwd[MODEL_MAX_LAYERS], layer_bwd[MODEL_MAX_LAYERS];
    double fwd, bwd;            /* whole stage forward / backward calls */
    int n_fwd, n_bwd, n_opt;
} model_prof_t;

struct model_backend;

/* Defined here so the caller can allocate it; fields are read-only outside models/. */
typedef struct model_stage {
    model_stage_params_t p;          /* copy; p.partition points at part */
    int part[PN_MAX_STAGES];      /* layers per stage */
    int layer_begin, layer_end;      /* global layers [begin, end) held here */
    int first, last;                 /* holds the embeddings / the head and loss */
    int B, T, C, NH, V;
    const struct model_backend *backend;
    char backend_arg[512];
    /* parameters, gradients and AdamW state: one block each, described by tensors[] */
    model_tensor_t *tensors; int n_tensors;
    size_t n_params;
    float *params, *grads, *opt_m, *opt_v;   /* (n_params) each; NULL under emulate */
    float *tied_grad;                /* emulate: the (V, C) buffer a tied exchange moves */
    float *dp_grad;                  /* emulate: the (n_params) buffer a data-parallel all-reduce moves */
    /* activations: scratch, then max_inflight slots of slot_floats, one block */
    float *acts; size_t scratch_floats, slot_floats, act_floats;
    int max_inflight;
    int *slot_iter, *slot_mb;        /* (iter, mb) held by each slot; mb -1 = free */
    int *slot_phase;                 /* 1: the slot's B ran, its W has not */
    int *tokens, *targets;           /* (B, T) scratch for the current batch */
    model_data_t data;
    double loss_sum; int loss_count; double last_loss;
    int steps;
    /* emulate: modelled seconds per micro-batch of this stage, and the device */
    double emu_fwd_s, emu_bwd_s, emu_opt_s, peak_flops, efficiency, mem_bw;
    double emu_bwd_w_s;              /* the W part of emu_bwd_s (B is the rest) */
    /* cpu: what W needs, saved by B: max_inflight slots of wgrad_floats, on first B */
    float *wgrads; size_t wgrad_floats;
    char device[16];
    model_prof_t prof;
    /* cuda: the backend's own state; bytes of a boundary element (0 = 4, fp32) */
    void *backend_priv;
    int act_elem_bytes;
    /* dynamic loss scaling (fp16: cuda:fp16, emulate:DEV,fp16), see model_stage_overflow */
    int loss_scaling;                /* 0: the loss is not scaled (ls.scale 1) */
    model_loss_scale_t ls;
    float grad_scale;                /* the scale the gradients being stepped carry */
    int force_overflow;              /* test hook: the next overflow check reports one */
    /* data-parallel overlap: see model_stage_grads_hook */
    void (*grads_final)(void *arg, size_t lo);
    void *grads_final_arg;
} model_stage_t;

int    model_stage_init(model_stage_t *st, const model_stage_params_t *p, char *err, size_t errlen) PN_WUR;
/* The boundary tensor (B,T,C) of one micro-batch, in the compute precision (fp32: 4 bytes an
 * element; cuda:fp16|bf16 and emulate:DEV,fp16|bf16: 2, see models/precision.h). */
size_t model_stage_act_bytes(const model_stage_t *st);
/* Stage 0 ignores `in` and reads tokens of (iter, mb) from the dataset itself; the last
 * stage ignores `out` and computes the loss against the targets of (iter, mb). Every
 * stage derives the same (iter, mb) batch from the seed, so no tokens cross stages.
 * Errors: -EINVAL (mb out of range, missing buffer), -EEXIST ((iter, mb) already in
 * flight), -ENOSPC (max_inflight micro-batches already in flight). */
int    model_stage_forward(model_stage_t *st, int iter, int mb, const float *in, float *out) PN_WUR;
/* Last stage ignores dout (starts from the loss); stage 0 ignores din. Adds into grads.
 * Releases the micro-batch's slot. -ENOENT if (iter, mb) was not forwarded. */
int    model_stage_backward(model_stage_t *st, int iter, int mb, const float *dout, float *din) PN_WUR;
/* The backward split in two (zero-bubble schedules). B: the input gradient din (stage 0:
 * none) from dout (last stage: from the loss); the slot stays held. -ENOENT if (iter, mb)
 * was not forwarded or its B already ran. W: adds the parameter gradients of a micro-batch
 * whose B ran and releases its slot; -ENOENT otherwise. -ENOTSUP where the backend has no
 * split backward. model_stage_backward equals B then W bit for bit on the cpu. */
int    model_stage_backward_input(model_stage_t *st, int iter, int mb, const float *dout, float *din) PN_WUR;
int    model_stage_backward_weights(model_stage_t *st, int iter, int mb) PN_WUR;
/* AdamW on grads averaged over M, then zero. -EBUSY if micro-batches are still in flight.
 * With loss scaling, model_stage_overflow then model_stage_step_agreed on this stage alone. */
int    model_stage_step(model_stage_t *st, int iter) PN_WUR;
/* Dynamic loss scaling (fp16), split so that the stages of one model agree before stepping
 * (a step skipped on one stage and applied on another would split the model's weights):
 * model_stage_overflow says whether this stage's gradients hold an inf/NaN (1, else 0;
 * always 0 without loss scaling; negative on a backend error); the caller ORs the flags of
 * every stage and hands the result to model_stage_step_agreed, which with overflow != 0
 * skips the update (gradients zeroed) and halves the scale, else steps (gradients divided
 * by the scale they carry) and grows the scale after its clean-step interval. */
int    model_stage_overflow(model_stage_t *st) PN_WUR;
int    model_stage_step_agreed(model_stage_t *st, int iter, int overflow) PN_WUR;
/* The loss scale the next backward uses (1 without loss scaling) and the steps skipped
 * for overflow so far (optional output). */
double model_stage_loss_scale(const model_stage_t *st, long *skipped);
/* Test hook: the next model_stage_overflow of a loss-scaling stage reports an overflow
 * (the cuda backend plants a real inf in its gradients for its check to find). */
void   model_stage_force_overflow(model_stage_t *st);
double model_stage_loss(const model_stage_t *st);       /* last stage: mean loss of the last stepped iteration; NAN otherwise or under emulate */
void   model_stage_destroy(model_stage_t *st);

/* Mean loss of the micro-batches forwarded since the last step (last stage, cpu; NAN otherwise). */
double model_stage_loss_pending(const model_stage_t *st);
/* Drops every in-flight micro-batch and the pending loss, and zeroes the gradients. */
void   model_stage_reset(model_stage_t *st);
/* Tensor i of this stage (0 <= i < n_tensors), or NULL. */
const model_tensor_t *model_stage_tensor(const model_stage_t *st, int i);
const model_tensor_t *model_stage_tensor_find(const model_stage_t *st, const char *name);

/* --tied-embeddings with stages > 1: stage 0's wte and the last stage's head are one
 * matrix held twice. Before model_stage_step, each of the two stages adds its twin's
 * gradient into the buffer this returns (V*C floats), so both apply the same update.
 * -ENOENT on a stage that holds no twin (middle stages, untied, or a single stage). */
int    model_stage_tied_grad(model_stage_t *st, float **grad, size_t *numel) PN_WUR;

/* The stage's parameter gradients as one fp32 host array (n_params floats, in the
 * order of tensors[]), to be averaged across data-parallel replicas before
 * model_stage_step. cpu: the gradient block itself; emulate: a real-size buffer of the
 * stage's parameter count (its values mean nothing; its size is the network's cost);
 * cuda: the pinned host mirror of the device block, current only between
 * model_stage_grads_host and model_stage_grads_upload; -ENOMEM. The array stays put for
 * the stage's life. */
int    model_stage_grads(model_stage_t *st, float **grad, size_t *numel) PN_WUR;
/* Around the all-reduce, after the iteration's last backward and before the step: _host
 * brings a device block (fp32; fp16: the master gradients, still carrying the loss scale,
 * and the tied twin's part) into the array model_stage_grads gives, sleeping until it is
 * there; _upload copies that array back to the device. 0 and nothing done where the
 * gradients are host memory already (cpu, emulate); negative on a device error. */
int    model_stage_grads_host(model_stage_t *st) PN_WUR;
int    model_stage_grads_upload(model_stage_t *st) PN_WUR;
/* --dp-overlap: while fn is set, every backward that adds parameter gradients
 * (model_stage_backward, model_stage_backward_weights; not the B part) calls fn(arg, lo)
 * each time it is done with the gradients from float lo to the end of that block, lo
 * decreasing (the block's order is the backward's reversed: head, last layer, ...,
 * embeddings), and fn(arg, 0) as it returns. That backward writes nothing of [lo, end)
 * after the call, so another thread may all-reduce it meanwhile. NULL fn: no calls. */
void   model_stage_grads_hook(model_stage_t *st, void (*fn)(void *arg, size_t lo), void *arg);

/* Accounting. FLOPs follow the convention of DESIGN.md: 6*N_matmul + 6*L*T*d per token
 * for training (forward a third of it, backward two thirds; recompute not counted). */
typedef struct {
    size_t params;               /* parameters held by this stage */
    size_t params_total;         /* whole model */
    size_t params_matmul;        /* N_matmul of the whole model (12 L d^2 + V d) */
    double flops_per_token;      /* whole model, training */
    double fwd_flops, bwd_flops; /* this stage, per micro-batch */
    size_t boundary_bytes;       /* the (B, T, C) tensor crossing a stage boundary */
    size_t saved_bytes_per_mb;   /* activations held per in-flight micro-batch */
    size_t param_bytes, grad_bytes, opt_bytes, act_bytes;  /* allocated blocks */
    double fwd_s, bwd_s, opt_s;  /* emulate: modelled seconds per micro-batch; cpu: 0 */
    double peak_flops, efficiency; /* emulate device model; 0 otherwise */
} model_account_t;
void   model_stage_account(const model_stage_t *st, model_account_t *out);
/* Peak resident memory of this process so far (getrusage), bytes. */
size_t model_peak_rss_bytes(void);
/* What the peak-memory columns report for a stage, by backend: the device memory it
 * holds, measured (cuda: its allocations plus the cuBLAS workspace, all made at init, so
 * also the peak), or where the backend holds no device memory the process's peak resident
 * memory (cpu; emulate, whose device memory is modelled a priori, see bench's mem_model). */
typedef enum { MODEL_MEM_RESIDENT, MODEL_MEM_DEVICE } model_mem_kind_t;
size_t model_stage_peak_mem(const model_stage_t *st, model_mem_kind_t *kind);
const char *model_mem_kind_name(model_mem_kind_t kind);  /* "resident", "device" */
/* "cpu (OpenBLAS sgemm, OpenMP elementwise), 1 threads" or "emulate:a100 (peak 312.0
 * TFLOP/s dense fp16/bf16, efficiency 0.50, memory 1555 GB/s)": for headers. */
void   model_stage_describe(const model_stage_t *st, char *buf, size_t len);

/* Clears the measured times in st->prof. */
void   model_stage_prof_reset(model_stage_t *st);
/* The GEMM reference of the benchmarks (cpu backend only): records the sgemm calls of one
 * forward + backward of micro-batch 0, then replays exactly those calls (same shapes,
 * transposes, strides and buffers; no other work) `reps` times. Outputs the FLOPs of one
 * replay and the mean seconds per replay. Ends with model_stage_reset (gradients zeroed,
 * nothing in flight); parameters are untouched. */
int    model_stage_gemm_reference(model_stage_t *st, int reps, double *flops, double *seconds) PN_WUR;

/* The same for a compute argument alone (no threads), e.g. before any stage exists. */
void   model_compute_describe(const char *compute, char *buf, size_t len);
/* 1 if the compute backend's times come from a model (emulate): a stage's costs are then
 * known before it runs (model_stage_account); 0 otherwise, and for an invalid argument. */
int    model_compute_modelled(const char *compute);
/* 1 if the compute trains with dynamic loss scaling (fp16: cuda:fp16, emulate:DEV,fp16),
 * so the stages of a run agree on overflows before stepping; 0 otherwise. */
int    model_compute_loss_scaling(const char *compute);
/* The compute argument alone: -EINVAL naming an unknown backend, an unknown device, a
 * bad fwd=/bwd= time or an unreadable calibration file. */
int    model_compute_check(const char *compute, char *err, size_t errlen) PN_WUR;

/* Data: tokens and targets (next tokens) of micro-batch (iter, mb), each (B, T). */
int    model_data_open(model_data_t *d, const char *dataset, int vocab, int seq_len,
                       unsigned long long seed, char *err, size_t errlen) PN_WUR;
void   model_data_batch(const model_data_t *d, int iter, int mb, int B, int T, int *tokens, int *targets);
void   model_data_close(model_data_t *d);

#endif
