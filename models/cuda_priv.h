/* Internal to the cuda backend (C++): the per-stage device state shared by models/cuda.cu
 * (set-up, optimizer, the backend table) and models/cuda_model.cu (the layers). */
#ifndef PN_MODELS_CUDA_PRIV_H
#define PN_MODELS_CUDA_PRIV_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "models/backend.h"
#include "models/precision.h"
}

/* cuBLAS, loaded with dlopen at the first cuda stage: a pipenem that never computes on a
 * GPU neither needs nor maps it (600 MB with cuBLASLt), and its absence is an error
 * message, not a loader failure. */
typedef struct {
    decltype(&cublasCreate_v2) create;
    decltype(&cublasDestroy_v2) destroy;
    decltype(&cublasSetStream_v2) set_stream;
    decltype(&cublasSetWorkspace_v2) set_workspace;
    /* the C symbols (compute type cublasComputeType_t), not the header's C++ overloads */
    cublasStatus_t (*gemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                           const void *, cudaDataType, int, const void *, cudaDataType, int, const void *, void *,
                           cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
    cublasStatus_t (*gemm_batched)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                                   const void *, cudaDataType, int, long long, const void *, cudaDataType, int,
                                   long long, const void *, void *, cudaDataType, int, long long, int,
                                   cublasComputeType_t, cublasGemmAlgo_t);
    decltype(&cublasGetStatusString) status_string;
} cuda_blas_t;
extern cuda_blas_t cuda_blas;
/* Loads it once (thread-safe); -ENOENT naming the library and the loader's reason. */
int cuda_blas_load(char *err, size_t errlen);

/* Saved activations of one layer, in the order of models/cpu.c. */
enum { CA_LN1, CA_LN1_MEAN, CA_LN1_RSTD, CA_QKV, CA_ATTY, CA_ATT, CA_RES2, CA_LN2, CA_LN2_MEAN,
       CA_LN2_RSTD, CA_FCH, CA_FCH_GELU, CA_RES3, CA_N };

/* Events per forward/backward: embeddings, each layer, head, and the start. */
enum { CUDA_MAX_EVENTS = MODEL_MAX_LAYERS + 3 };

/* One recorded cuBLAS call (the GEMM reference of the benchmark), in column-major terms. */
typedef struct {
    cublasOperation_t opa, opb;
    int m, n, k, lda, ldb, ldc, count;
    long long sa, sb, sc;
    float alpha, beta;
    const void *A, *B;
    void *C;
    cudaDataType_t ctype;
} cuda_gemm_t;

typedef struct {
    int dev, cc;                        /* device index, compute capability major*10+minor */
    char name[256];
    model_prec_t prec;
    const model_prec_info_t *pi;
    size_t es;                          /* bytes of a stored element (4 or 2) */
    cudaDataType_t dt;                  /* cuBLAS operand type */
    cublasComputeType_t ct;             /* cuBLAS compute type */
    cudaStream_t s;
    cublasHandle_t blas;
    void *ws; size_t ws_bytes;          /* cuBLAS workspace */
    /* one device allocation each */
    float *params;                      /* (n_params) fp32 master, then (n_params) compute copy if fp16/bf16 */
    void *wc;                           /* the weights GEMMs read: params itself, or the compute copy */
    float *grads;                       /* (n_params) */
    float *opt;                         /* (2 n_params): m then v */
    unsigned char *acts;                /* misc, scratch, max_inflight slots */
    size_t act_bytes, scratch_bytes, slot_bytes, layer_bytes, misc_bytes;
    size_t dev_bytes;                   /* all of the above */
    int *tok, *tgt;                     /* (B,T) in misc */
    double *loss;                       /* in misc */
    int *flag;                          /* in misc */
    /* pinned host staging: a boundary tensor, tokens, targets, loss, flag */
    unsigned char *pin; size_t pin_bytes;
    int uploaded;                       /* host parameters copied to the device */
    int tied_twin;                      /* tensor index of wte/head when its gradient is exchanged, else -1 */
    int adam_t;                         /* AdamW steps applied (skipped fp16 steps do not count) */
    int tied_uploaded;                  /* the twin's gradient is on the device for this step */
    cudaEvent_t ev[CUDA_MAX_EVENTS];
    void *wstash; size_t wstash_elems;  /* the split backward's per-slot W inputs (first B) */
    /* set while model_cuda_gemm_reference records one forward + backward */
    cuda_gemm_t *rec; size_t rec_n, rec_cap; int recording, rec_failed;
} cuda_t;

static inline cuda_t *cuda_of(const model_stage_t *st) { return (cuda_t *)st->backend_priv; }

/* Writes "cuda: WHAT: cudaGetErrorString" to stderr and returns -EIO (the backend table has
 * no error buffer past init). */
int cuda_fail(const char *what, cudaError_t e);
int cuda_blas_fail(const char *what, cublasStatus_t e);

/* Return from the calling function with cuda_fail / cuda_blas_fail / the status. */
#define PN_CUDA_CHECK_(type, ok, fail, call)                                                           \
    do {                                                                                               \
        type e_ = (call);                                                                              \
        if (e_ != (ok))                                                                                \
            return fail(#call, e_);                                                                    \
    } while (0)
#define CK(call) PN_CUDA_CHECK_(cudaError_t, cudaSuccess, cuda_fail, call)
#define CB(call) PN_CUDA_CHECK_(cublasStatus_t, CUBLAS_STATUS_SUCCESS, cuda_blas_fail, call)
#define TRY(call)                                                                                      \
    do {                                                                                               \
        int r_ = (call);                                                                               \
        if (r_)                                                                                        \
            return r_;                                                                                 \
    } while (0)

/* Activation layout (bytes, each piece rounded to 256 for aligned GEMM operands). */
void   cuda_layer_sizes(const model_stage_t *st, size_t es, size_t bytes[CA_N]);
size_t cuda_layer_bytes(const model_stage_t *st, size_t es);
size_t cuda_slot_bytes(const model_stage_t *st, size_t es);
size_t cuda_scratch_bytes(const model_stage_t *st, size_t es);
size_t cuda_misc_bytes(const model_stage_t *st);
size_t cuda_pin_bytes(const model_stage_t *st, size_t es);   /* pinned staging */

/* Issues one recorded call again (models/cuda_model.cu). */
int cuda_gemm_replay(const cuda_t *c, const cuda_gemm_t *g);

/* The layers (models/cuda_model.cu), dispatched on the precision. */
int cuda_stage_forward(model_stage_t *st, int slot, const void *in, void *out);
int cuda_stage_backward(model_stage_t *st, int slot, const void *dout, void *din);
int cuda_stage_backward_input(model_stage_t *st, int slot, const void *dout, void *din);   /* B */
int cuda_stage_backward_weights(model_stage_t *st, int slot);                              /* W */

#endif
