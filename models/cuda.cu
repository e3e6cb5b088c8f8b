/* The cuda backend: set-up (device choice, one device allocation each for parameters,
 * gradients, optimizer state and activations, pinned staging, cuBLAS), the optimizer
 * step with fp32 master weights and fp16 dynamic loss scaling, and the backend table.
 * The layers are in models/cuda_model.cu, the kernels in models/cuda_kernels.cu. */
#include "models/cuda.h"
#include "models/cuda_kernels.h"
#include "models/cuda_priv.h"
#include "models/cuda_layout.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* cuBLAS workspace: what its Hopper kernels ask for (32 MiB), set once so that no GEMM
 * allocates during the iterations. */
#define CUBLAS_WS_BYTES ((size_t)32 << 20)

int cuda_fail(const char *what, cudaError_t e)
{
    fprintf(stderr, "cuda: %s: %s (%s)\n", what, cudaGetErrorString(e), cudaGetErrorName(e));
    return -EIO;
}

int cuda_blas_fail(const char *what, cublasStatus_t e)
{
    fprintf(stderr, "cuda: %s: %s\n", what, cuda_blas.status_string(e));
    return -EIO;
}

/* ---------------------------------------------------------------- cuBLAS */

cuda_blas_t cuda_blas;
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static char blas_err[512];

#define BLAS_SONAME_(m) "libcublas.so." #m
#define BLAS_SONAME(m) BLAS_SONAME_(m)

static void blas_open(void)
{
    /* the soname of the headers built against; the rpath set at link time is searched */
    const char *so = BLAS_SONAME(CUBLAS_VER_MAJOR);
    void *h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(blas_err, sizeof blas_err, "cuda: cannot load %s: %s (install the CUDA toolkit's cuBLAS or the "
                 "nvidia-cublas wheel, or add its folder to LD_LIBRARY_PATH)", so, dlerror());
        return;
    }
    static const char *const names[] = {"cublasCreate_v2", "cublasDestroy_v2", "cublasSetStream_v2",
                                        "cublasSetWorkspace_v2", "cublasGemmEx", "cublasGemmStridedBatchedEx",
                                        "cublasGetStatusString"};
    void **slot = (void **)&cuda_blas;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!(slot[i] = dlsym(h, names[i]))) {
            snprintf(blas_err, sizeof blas_err, "cuda: %s lacks %s: not the cuBLAS %d this was built for", so, names[i],
                     CUBLAS_VER_MAJOR);
            memset(&cuda_blas, 0, sizeof cuda_blas);
            return;
        }
}

int cuda_blas_load(char *err, size_t errlen)
{
    static_assert(sizeof(cuda_blas_t) == 7 * sizeof(void *), "one slot per name in blas_open");
    pthread_once(&blas_once, blas_open);
    return blas_err[0] ? pn_err(err, errlen, -ENOENT, "%s", blas_err) : 0;
}

/* ---------------------------------------------------------------- device choice */

static const char *env_get(const char *name) { return getenv(name); }

/* The device the argument selects, with the reason named when there is none. */
static int device_open(const model_cuda_arg_t *a, int stage, int *dev, cudaDeviceProp *prop, char *err, size_t errlen)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaErrorInsufficientDriver)
        return pn_err(err, errlen, -ENODEV, "cuda: no usable NVIDIA driver (libcuda missing or older than this "
                      "CUDA %d.%d runtime)", CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
    if (e == cudaErrorNoDevice)
        n = 0;
    else if (e != cudaSuccess)
        return pn_err(err, errlen, -ENODEV, "cuda: the driver cannot list devices: %s (%s)", cudaGetErrorString(e),
                      cudaGetErrorName(e));
    char why[256];
    int rc = model_gpu_pick(a->device, n, stage, env_get, dev, why, sizeof why);
    if (rc)
        return pn_err(err, errlen, rc, "cuda: %s", why);
    if ((e = cudaGetDeviceProperties(prop, *dev)) != cudaSuccess)
        return pn_err(err, errlen, -ENODEV, "cuda: device %d: %s", *dev, cudaGetErrorString(e));
    const model_prec_info_t *pi = model_prec_info(a->prec);
    int cc = prop->major * 10 + prop->minor;
    if (cc < pi->min_sm)
        return pn_err(err, errlen, -ENOTSUP, "cuda: %s needs compute capability %d.%d or newer; device %d '%s' is %d.%d",
                      pi->name, pi->min_sm / 10, pi->min_sm % 10, *dev, prop->name, prop->major, prop->minor);
    return 0;
}

extern "C" int model_cuda_probe(const char *arg, char *name, size_t namelen, char *err, size_t errlen)
{
    model_cuda_arg_t a;
    cudaDeviceProp prop;
    int dev, rc = model_cuda_arg_parse(arg ? arg : "", &a, err, errlen);
    if (!rc)
        rc = device_open(&a, 0, &dev, &prop, err, errlen);
    if (!rc)
        rc = cuda_blas_load(err, errlen);
    if (!rc && name)
        snprintf(name, namelen, "%s", prop.name);
    return rc;
}

/* ---------------------------------------------------------------- the table's entries */

static int cuda_check(const char *arg, char *err, size_t errlen)
{
    model_cuda_arg_t a;
    return model_cuda_arg_parse(arg, &a, err, errlen);
}

static int cuda_precision(const char *arg)
{
    model_cuda_arg_t a;
    return model_cuda_arg_parse(arg, &a, NULL, 0) ? -1 : (int)a.prec;
}

static void cuda_describe(const char *arg, char *buf, size_t len)
{
    model_cuda_arg_t a;
    if (model_cuda_arg_parse(arg, &a, NULL, 0)) {
        snprintf(buf, len, "cuda:%s (invalid)", arg);
        return;
    }
    const model_prec_info_t *pi = model_prec_info(a.prec);
    snprintf(buf, len, "cuda:%s (cuBLAS GemmEx %s operands, %s%s%s)", pi->name, pi->data_type, pi->compute,
             pi->master_fp32 ? ", fp32 master weights" : "", pi->loss_scaling ? ", dynamic loss scale from 65536" : "");
}

static void cuda_destroy(model_stage_t *st)
{
    cuda_t *c = cuda_of(st);
    if (c) {
        /* errors are of no use here: everything goes whatever they say */
        if (c->s) /* set up far enough to hold device memory */
            (void)cudaSetDevice(c->dev);
        for (int i = 0; i < CUDA_MAX_EVENTS; i++)
            if (c->ev[i])
                (void)cudaEventDestroy(c->ev[i]);
        if (c->blas)
            (void)cuda_blas.destroy(c->blas);
        if (c->s)
            (void)cudaStreamDestroy(c->s);
        (void)cudaFree(c->ws);
        (void)cudaFree(c->acts);
        (void)cudaFree(c->wstash);
        (void)cudaFree(c->opt);
        (void)cudaFree(c->grads);
        (void)cudaFree(c->params);
        (void)cudaFreeHost(c->pin);
        (void)cudaFreeHost(st->tied_grad);
        (void)cudaFreeHost(st->grads);
        free(c->rec);
        free(c);
    }
    free(st->params);
    st->params = st->grads = st->tied_grad = NULL;
    st->backend_priv = NULL;
}

/* cudaMalloc with the stage's bookkeeping and a message naming what did not fit */
static int dev_alloc(cuda_t *c, void **p, size_t bytes, const char *what, char *err, size_t errlen)
{
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        (void)cudaMemGetInfo(&fr, &tot);
        *p = NULL;
        return pn_err(err, errlen, -ENOMEM, "cuda: %s: %.1f MiB do not fit on device %d '%s' (%.1f MiB free of %.1f MiB "
                      "after %.1f MiB for this stage): %s", what, bytes / 1048576.0, c->dev, c->name, fr / 1048576.0,
                      tot / 1048576.0, c->dev_bytes / 1048576.0, cudaGetErrorString(e));
    }
    c->dev_bytes += bytes;
    return 0;
}

static int cuda_setup(model_stage_t *st, cuda_t *c, char *err, size_t errlen)
{
    size_t n = st->n_params, BT = (size_t)st->B * st->T;
    cudaError_t e;
    if ((e = cudaStreamCreateWithFlags(&c->s, cudaStreamNonBlocking)) != cudaSuccess)
        return pn_err(err, errlen, -EIO, "cuda: device %d '%s': cannot create a stream: %s", c->dev, c->name,
                      cudaGetErrorString(e));
    for (int i = 0; i < CUDA_MAX_EVENTS; i++)
        if ((e = cudaEventCreateWithFlags(&c->ev[i], cudaEventBlockingSync)) != cudaSuccess)
            return pn_err(err, errlen, -EIO, "cuda: cudaEventCreate: %s", cudaGetErrorString(e));
    cublasStatus_t b = cuda_blas.create(&c->blas);
    if (b != CUBLAS_STATUS_SUCCESS)
        return pn_err(err, errlen, -EIO, "cuda: cublasCreate: %s", cuda_blas.status_string(b));
    int rc;
    size_t wc = c->pi->master_fp32 ? n * c->es : 0;
    c->misc_bytes = cuda_misc_bytes(st);
    c->scratch_bytes = cuda_scratch_bytes(st, c->es);
    c->slot_bytes = cuda_slot_bytes(st, c->es);
    c->layer_bytes = cuda_layer_bytes(st, c->es);
    c->act_bytes = c->misc_bytes + c->scratch_bytes + (size_t)st->max_inflight * c->slot_bytes;
    if ((rc = dev_alloc(c, &c->ws, CUBLAS_WS_BYTES, "cuBLAS workspace", err, errlen)) ||
        (rc = dev_alloc(c, (void **)&c->params, n * sizeof(float) + wc, "parameters", err, errlen)) ||
        (rc = dev_alloc(c, (void **)&c->grads, n * sizeof(float), "gradients", err, errlen)) ||
        (rc = dev_alloc(c, (void **)&c->opt, 2 * n * sizeof(float), "AdamW state", err, errlen)) ||
        (rc = dev_alloc(c, (void **)&c->acts, c->act_bytes, "activations", err, errlen)))
        return rc;
    c->wc = c->pi->master_fp32 ? (void *)(c->params + n) : (void *)c->params;
    /* the misc part of the activation block (cuda_misc_bytes) */
    c->tok = (int *)c->acts;
    c->tgt = (int *)(c->acts + up(BT * sizeof(int)));
    c->loss = (double *)((unsigned char *)c->tgt + up(BT * sizeof(int)));
    c->flag = (int *)((unsigned char *)c->loss + up(sizeof(double)));
    if ((b = cuda_blas.set_stream(c->blas, c->s)) != CUBLAS_STATUS_SUCCESS ||
        (b = cuda_blas.set_workspace(c->blas, c->ws, CUBLAS_WS_BYTES)) != CUBLAS_STATUS_SUCCESS)
        return pn_err(err, errlen, -EIO, "cuda: cuBLAS set-up: %s", cuda_blas.status_string(b));
    if ((e = cudaMemsetAsync(c->grads, 0, n * sizeof(float), c->s)) != cudaSuccess ||
        (e = cudaMemsetAsync(c->opt, 0, 2 * n * sizeof(float), c->s)) != cudaSuccess ||
        (e = cudaStreamSynchronize(c->s)) != cudaSuccess)
        return pn_err(err, errlen, -EIO, "cuda: zeroing the gradients: %s", cudaGetErrorString(e));
    c->pin_bytes = cuda_pin_bytes(st, c->es);
    if ((e = cudaMallocHost((void **)&c->pin, c->pin_bytes)) != cudaSuccess)
        return pn_err(err, errlen, -ENOMEM, "cuda: %.1f MiB of pinned host memory: %s", c->pin_bytes / 1048576.0,
                      cudaGetErrorString(e));
    if (c->tied_twin >= 0 && (e = cudaMallocHost((void **)&st->tied_grad, (size_t)st->V * st->C * sizeof(float))) != cudaSuccess)
        return pn_err(err, errlen, -ENOMEM, "cuda: pinned tied-embedding gradient: %s", cudaGetErrorString(e));
    return 0;
}

static int cuda_init(model_stage_t *st, const char *arg, char *err, size_t errlen)
{
    model_cuda_arg_t a;
    int rc = model_cuda_arg_parse(arg, &a, err, errlen);
    if (rc)
        return rc;
    cuda_t *c = (cuda_t *)calloc(1, sizeof *c);
    if (!c)
        return pn_err(err, errlen, -ENOMEM, "cuda: out of memory for the stage state");
    st->backend_priv = c;
    c->tied_twin = -1;
    cudaDeviceProp prop;
    if ((rc = device_open(&a, st->p.stage, &c->dev, &prop, err, errlen)) || (rc = cuda_blas_load(err, errlen)))
        return rc;
    /* A waiting stage sleeps in the driver instead of spinning a core: the flag must be
     * given before the device's context exists (another stage of this process may have
     * made it already, with the same flag). */
#if CUDART_VERSION >= 12000
    cudaError_t e = cudaInitDevice(c->dev, cudaDeviceScheduleBlockingSync, 0);
    if (e == cudaSuccess || e == cudaErrorSetOnActiveProcess)
        e = cudaSetDevice(c->dev);
#else
    cudaError_t e = cudaSetDevice(c->dev);
    if (e == cudaSuccess && (e = cudaSetDeviceFlags(cudaDeviceScheduleBlockingSync)) == cudaErrorSetOnActiveProcess)
        e = cudaSuccess;
#endif
    (void)cudaGetLastError();
    if (e != cudaSuccess)
        return pn_err(err, errlen, -ENODEV, "cuda: device %d: %s", c->dev, cudaGetErrorString(e));
    snprintf(c->name, sizeof c->name, "%s", prop.name);
    c->cc = prop.major * 10 + prop.minor;
    c->prec = a.prec;
    c->pi = model_prec_info(a.prec);
    c->es = (size_t)c->pi->elem_bytes;
    c->dt = a.prec == MODEL_PREC_FP16 ? CUDA_R_16F : a.prec == MODEL_PREC_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    c->ct = a.prec == MODEL_PREC_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    if (c->pi->loss_scaling)
        model_stage_loss_scaling_on(st);
    if (st->p.tied_embeddings && st->p.stages > 1 && (st->first || st->last)) {
        const model_tensor_t *t = model_stage_tensor_find(st, st->first ? "wte" : "head");
        c->tied_twin = t ? (int)(t - st->tensors) : -1;
    }
    /* the host copies: model.c initialises the parameters there; sync_host reads back.
     * The gradients' is pinned: --dp all-reduces it (cuda_grads_host), one DMA each way. */
    st->params = (float *)malloc(st->n_params * sizeof(float));
    if (!st->params)
        return pn_err(err, errlen, -ENOMEM, "cuda: out of host memory for %.1f MiB of parameters",
                      st->n_params * 4.0 / 1048576.0);
    if ((e = cudaMallocHost((void **)&st->grads, st->n_params * sizeof(float))) != cudaSuccess) {
        st->grads = NULL;
        return pn_err(err, errlen, -ENOMEM, "cuda: %.1f MiB of pinned host memory for the gradients: %s",
                      st->n_params * 4.0 / 1048576.0, cudaGetErrorString(e));
    }
    memset(st->grads, 0, st->n_params * sizeof(float));
    if ((rc = cuda_setup(st, c, err, errlen)))
        return rc;
    const model_device_t *d = model_device_find(c->name);
    st->peak_flops = d ? d->peak[a.prec] : 0;
    snprintf(st->device, sizeof st->device, "%s", d ? d->key : "cuda");
    st->act_elem_bytes = (int)c->es;
    st->act_floats = (c->act_bytes + 3) / 4; /* accounted in fp32 units */
    return 0;
}

/* The host parameters model.c initialised (or a test changed) go to the device before
 * the first forward. */
static int params_upload(model_stage_t *st)
{
    cuda_t *c = cuda_of(st);
    size_t n = st->n_params;
    CK(cudaMemcpyAsync(c->params, st->params, n * sizeof(float), cudaMemcpyHostToDevice, c->s));
    if (c->prec == MODEL_PREC_FP16)
        CK(cuk::cast_from_float(c->s, (__half *)c->wc, c->params, n));
    else if (c->prec == MODEL_PREC_BF16)
        CK(cuk::cast_from_float(c->s, (__nv_bfloat16 *)c->wc, c->params, n));
    CK(cudaStreamSynchronize(c->s));
    c->uploaded = 1;
    return 0;
}

/* Every entry first makes the stage's GPU current (the runtime's current device is per
 * thread, and one process may hold stages on several GPUs) and, before the first
 * forward or step, uploads the parameters. */
static int enter(model_stage_t *st)
{
    CK(cudaSetDevice(cuda_of(st)->dev));
    return cuda_of(st)->uploaded ? 0 : params_upload(st);
}

static int cuda_forward(model_stage_t *st, int slot, const float *in, float *out)
{
    int rc = enter(st);
    return rc ? rc : cuda_stage_forward(st, slot, in, out);
}

static int cuda_backward(model_stage_t *st, int slot, const float *dout, float *din)
{
    int rc = enter(st);
    return rc ? rc : cuda_stage_backward(st, slot, dout, din);
}

static int cuda_backward_input(model_stage_t *st, int slot, const float *dout, float *din)
{
    int rc = enter(st);
    return rc ? rc : cuda_stage_backward_input(st, slot, dout, din);
}

static int cuda_backward_weights(model_stage_t *st, int slot)
{
    int rc = enter(st);
    return rc ? rc : cuda_stage_backward_weights(st, slot);
}

/* The twin's gradient of --tied-embeddings, added into the host copy by the exchange,
 * uploaded once before the overflow check or the step, whichever comes first. */
static int tied_upload(model_stage_t *st)
{
    cuda_t *c = cuda_of(st);
    if (c->tied_twin < 0 || c->tied_uploaded)
        return 0;
    const model_tensor_t *t = &st->tensors[c->tied_twin];
    CK(cudaMemcpyAsync(c->grads + t->offset, st->tied_grad, t->numel * sizeof(float), cudaMemcpyHostToDevice, c->s));
    c->tied_uploaded = 1;
    return 0;
}

/* fp16: 1 if a gradient is not finite (model_stage_overflow; the step is decided by all stages) */
static int cuda_overflow(model_stage_t *st)
{
    cuda_t *c = cuda_of(st);
    int rc = enter(st);
    if (!rc)
        rc = tied_upload(st);
    if (rc)
        return rc;
    int *hf = (int *)c->pin;
    CK(cudaMemsetAsync(c->flag, 0, sizeof(int), c->s));
    if (st->force_overflow) { /* the test hook: a real inf for the check below to find */
        float *inf = (float *)(c->pin + sizeof(int));
        *inf = INFINITY;
        CK(cudaMemcpyAsync(c->grads, inf, sizeof *inf, cudaMemcpyHostToDevice, c->s));
    }
    CK(cuk::nonfinite(c->s, c->grads, st->n_params, c->flag));
    CK(cudaMemcpyAsync(hf, c->flag, sizeof(int), cudaMemcpyDeviceToHost, c->s));
    CK(cudaStreamSynchronize(c->s));
    return *hf != 0;
}

/* AdamW on the gradients divided by the loss scale they carry (model_stage_step_agreed) */
static int cuda_step(model_stage_t *st)
{
    cuda_t *c = cuda_of(st);
    size_t n = st->n_params;
    int rc = enter(st);
    if (!rc)
        rc = tied_upload(st);
    if (rc)
        return rc;
    c->tied_uploaded = 0;
    float scale = st->grad_scale > 0 ? st->grad_scale : 1.0f;
    const float wd = 0.1f;
    int t = ++c->adam_t;
    float ic1 = 1.0f / (1.0f - powf(0.9f, (float)t)), ic2 = 1.0f / (1.0f - powf(0.95f, (float)t));
    for (int k = 0; k < st->n_tensors; k++) {
        const model_tensor_t *tn = &st->tensors[k];
        size_t o = tn->offset;
        CK(cuk::adamw(c->s, c->params + o, c->grads + o, c->opt + o, c->opt + n + o, tn->numel, st->p.lr,
                      tn->decay ? wd : 0.0f, ic1, ic2, 1.0f / scale));
    }
    if (c->prec == MODEL_PREC_FP16)
        CK(cuk::cast_from_float(c->s, (__half *)c->wc, c->params, n));
    else if (c->prec == MODEL_PREC_BF16)
        CK(cuk::cast_from_float(c->s, (__nv_bfloat16 *)c->wc, c->params, n));
    CK(cudaStreamSynchronize(c->s));
    return 0;
}

/* --dp (model_stage_grads_host, _upload): one copy of the gradient block between the
 * device and the pinned mirror st->grads, waited for asleep (the device's blocking-sync
 * flag). Down, the twin's part of --tied-embeddings goes up first so the mirror holds it;
 * fp16: the master gradients with the loss scale they carry, which every replica shares
 * (their overflow checks agree). Up, waited for so that the host may write the mirror
 * again at once (a skipped step zeroes it). */
static int grads_copy(model_stage_t *st, int to_device)
{
    cuda_t *c = cuda_of(st);
    int rc = enter(st);
    if (!rc && !to_device)
        rc = tied_upload(st);
    if (rc)
        return rc;
    size_t bytes = st->n_params * sizeof(float);
    CK(to_device ? cudaMemcpyAsync(c->grads, st->grads, bytes, cudaMemcpyHostToDevice, c->s)
                 : cudaMemcpyAsync(st->grads, c->grads, bytes, cudaMemcpyDeviceToHost, c->s));
    CK(cudaStreamSynchronize(c->s));
    return 0;
}

static int cuda_grads_host(model_stage_t *st) { return grads_copy(st, 0); }
static int cuda_grads_upload(model_stage_t *st) { return grads_copy(st, 1); }

static void cuda_reset(model_stage_t *st)
{
    cuda_t *c = cuda_of(st);
    if (c)
        c->tied_uploaded = 0; /* a skipped step drops the twin's gradient with the rest */
    if (c && c->grads && (cudaSetDevice(c->dev) != cudaSuccess || cudaMemsetAsync(c->grads, 0, st->n_params * sizeof(float), c->s) != cudaSuccess ||
                          cudaStreamSynchronize(c->s) != cudaSuccess))
        fprintf(stderr, "cuda: zeroing the gradients failed: %s\n", cudaGetErrorString(cudaGetLastError()));
}

extern "C" const model_backend_t model_backend_cuda = {
    .name = "cuda",
    .modelled = 0, /* measured on the device */
    .check = cuda_check,
    .describe = cuda_describe,
    .init = cuda_init,
    .forward = cuda_forward,
    .backward = cuda_backward,
    .backward_input = cuda_backward_input,
    .backward_weights = cuda_backward_weights,
    .step = cuda_step,
    .destroy = cuda_destroy,
    .reset = cuda_reset,
    .overflow = cuda_overflow,
    .device_bytes = model_cuda_device_bytes,
    .precision = cuda_precision,
    .grads_host = cuda_grads_host,
    .grads_upload = cuda_grads_upload,
};

/* ---------------------------------------------------------------- cuda.h */

extern "C" int model_cuda_sync_host(model_stage_t *st)
{
    cuda_t *c = cuda_of(st);
    if (st->backend != &model_backend_cuda || !c)
        return -EINVAL;
    if (!c->uploaded)
        return 0; /* the host holds the initial parameters and zero gradients */
    CK(cudaSetDevice(c->dev));
    CK(cudaMemcpyAsync(st->params, c->params, st->n_params * sizeof(float), cudaMemcpyDeviceToHost, c->s));
    CK(cudaMemcpyAsync(st->grads, c->grads, st->n_params * sizeof(float), cudaMemcpyDeviceToHost, c->s));
    CK(cudaStreamSynchronize(c->s));
    return 0;
}

extern "C" size_t model_cuda_device_bytes(const model_stage_t *st)
{
    const cuda_t *c = st->backend == &model_backend_cuda ? cuda_of(st) : NULL;
    return c ? c->dev_bytes : 0;
}

extern "C" int model_cuda_gemm_reference(model_stage_t *st, int reps, double *flops, double *seconds)
{
    cuda_t *c = st->backend == &model_backend_cuda ? cuda_of(st) : NULL;
    if (!c || reps < 1)
        return -EINVAL;
    size_t nb = model_stage_act_bytes(st);
    void *in = calloc(1, nb), *out = calloc(1, nb);
    int rc = -ENOMEM;
    if (!in || !out)
        goto out;
    model_stage_reset(st);
    c->rec_n = 0;
    c->rec_failed = 0;
    c->recording = 1;
    rc = model_stage_forward(st, 0, 0, (const float *)in, (float *)out);
    if (!rc)
        rc = model_stage_backward(st, 0, 0, (const float *)out, (float *)in);
    c->recording = 0;
    if (!rc && c->rec_failed)
        rc = -ENOMEM;
    if (!rc) {
        /* the same calls on the same buffers, nothing else: one pass to warm up, then reps */
        double f = 0;
        float ms = 0;
        for (size_t i = 0; i < c->rec_n; i++)
            f += 2.0 * c->rec[i].m * c->rec[i].n * c->rec[i].k * c->rec[i].count;
        for (int r = -1; r < reps && !rc; r++) {
            if (r == 0 && cudaEventRecord(c->ev[0], c->s) != cudaSuccess)
                rc = -EIO;
            for (size_t i = 0; i < c->rec_n && !rc; i++)
                rc = cuda_gemm_replay(c, &c->rec[i]);
        }
        if (!rc && (cudaEventRecord(c->ev[1], c->s) != cudaSuccess || cudaEventSynchronize(c->ev[1]) != cudaSuccess ||
                    cudaEventElapsedTime(&ms, c->ev[0], c->ev[1]) != cudaSuccess))
            rc = cuda_fail("timing the GEMM reference", cudaGetLastError());
        *flops = f;
        *seconds = ms * 1e-3 / reps;
    }
out:
    model_stage_reset(st);
    free(in);
    free(out);
    return rc;
}
