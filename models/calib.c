/* The GEMM reference of the benchmarks and `pipenem calibrate`: the cpu backend's sgemm
 * calls of one forward + backward, recorded as they run and replayed alone, so that a
 * stage's measured time can be set against what its matrix products alone take; and the
 * calibration itself: each stage measured alone, and the file emulate:FILE replays. */
#include "models/calib.h"

#include <cblas.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <unistd.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "models/precision.h"
#ifdef PN_HAVE_CUDA
#include "models/cuda.h"
#endif

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

const char *const model_kernel_names[MODEL_K_N] = {"gemm", "attention", "layernorm", "gelu", "residual",
                                                    "bias", "encoder", "crossentropy", "adamw"};

static int kprof_on, kprof_depth;
static double kprof_s[MODEL_K_N];

void model_kprof_enable(int on)
{
    if (on)
        memset(kprof_s, 0, sizeof kprof_s);
    kprof_on = on;
    kprof_depth = 0;
}

void model_kprof_get(double s[MODEL_K_N])
{
    memcpy(s, kprof_s, sizeof kprof_s);
}

/* 0 when off or nested in another timed kernel. */
double model_kprof_start(void)
{
    if (!kprof_on || omp_in_parallel())
        return 0;
    return kprof_depth++ ? 0 : pn_now();
}

void model_kprof_stop(model_kernel_t k, double t0)
{
    if (!kprof_on || omp_in_parallel())
        return;
    if (kprof_depth > 0)
        kprof_depth--;
    if (t0 > 0)
        kprof_s[k] += pn_now() - t0;
}

/* Set only while model_stage_gemm_reference records one forward + backward. */
static gemm_log_t *gemm_recording;

static void gemm_record(gemm_log_t *lg, const gemm_call_t *call)
{
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
        lg->calls[lg->n++] = *call;
}

static void sgemm1(const gemm_call_t *c)
{
    cblas_sgemm(CblasRowMajor, c->ta ? CblasTrans : CblasNoTrans, c->tb ? CblasTrans : CblasNoTrans, c->M,
                c->N, c->K, c->alpha, c->A, c->lda, c->B, c->ldb, c->beta, c->C, c->ldc);
}

/* Products below this many multiply-adds stay on one thread: the split's fork/join and
 * the second copy of the shared operand's packing cost more than they save. */
#define SPLIT_MIN (1 << 21)
/* Piece boundaries on multiples of the sgemm micro-kernels' unrolling. */
enum { SPLIT_ALIGN = 32 };

/* Piece i of n of [0, len), on SPLIT_ALIGN boundaries. */
static void split_range(int len, int i, int n, int *lo, int *hi)
{
    int units = (len + SPLIT_ALIGN - 1) / SPLIT_ALIGN;
    int a = (int)((long)units * i / n) * SPLIT_ALIGN, b = (int)((long)units * (i + 1) / n) * SPLIT_ALIGN;
    *lo = a < len ? a : len;
    *hi = b < len ? b : len;
}

/* One product on the OpenMP threads: the rows (or columns) of C are cut into one piece
 * per thread and each piece is a single-threaded sgemm. The cpu backend keeps OpenBLAS
 * at one thread so that OpenMP is the only thread pool: OpenBLAS's pthreads workers
 * poll for ~0.1 s after each call and libgomp's for a while after each region, and two
 * pools polling on the same cores took a third of the time at two threads. A piece
 * computes each element of C with the same k-order as the whole call, so the result
 * does not depend on the thread count. */
static void sgemm_split(const gemm_call_t *c, int nt)
{
    int by_rows = c->M >= c->N, len = by_rows ? c->M : c->N;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int i = 0; i < nt; i++) {
        int lo, hi;
        split_range(len, i, nt, &lo, &hi);
        if (lo >= hi)
            continue;
        gemm_call_t p = *c;
        if (by_rows) {
            p.M = hi - lo;
            p.A = c->ta ? c->A + lo : c->A + (size_t)lo * c->lda;
            p.C = c->C + (size_t)lo * c->ldc;
        } else {
            p.N = hi - lo;
            p.B = c->tb ? c->B + (size_t)lo * c->ldb : c->B + lo;
            p.C = c->C + lo;
        }
        sgemm1(&p);
    }
}

void model_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *Cm, int ldc)
{
    gemm_call_t c = {ta, tb, M, N, K, lda, ldb, ldc, alpha, beta, A, B, Cm};
    if (gemm_recording) {
        /* attention calls this from inside its parallel loop over heads */
#pragma omp critical(pn_gemm_record)
        gemm_record(gemm_recording, &c);
    }
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    double t0 = model_kprof_start();
    if (nt > 1 && (double)M * N * K >= SPLIT_MIN && (M >= nt * SPLIT_ALIGN || N >= nt * SPLIT_ALIGN))
        sgemm_split(&c, nt);
    else
        sgemm1(&c);
    model_kprof_stop(MODEL_K_GEMM, t0);
}

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
    /* The yardstick is OpenBLAS's own threaded sgemm, each call whole, on as many
     * threads as the stage's OpenMP (the backend runs OpenBLAS at one thread and splits
     * the products itself, see sgemm_split). */
    openblas_set_num_threads(omp_get_max_threads());
    double t0 = pn_now();
    for (int r = 0; r < reps; r++)
        for (size_t i = 0; i < lg.n; i++)
            sgemm1(&lg.calls[i]);
    *seconds = (pn_now() - t0) / reps;
    openblas_set_num_threads(1);
    *flops = f;
    rc = 0;
out:
    model_stage_reset(st);
    free(lg.calls);
    free(in);
    free(out);
    return rc;
}

/* ---------------------------------------------------------------- calibration */

/* Runs warmup + iters iterations of one micro-batch on stage s and fills r and the
 * per-layer times (indexed globally). */
int model_calib_stage(const model_stage_params_t *base, int s, int iters, int warmup, model_calib_stage_t *r,
                      double *layer_fwd, double *layer_bwd, char *err, size_t errlen)
{
    model_stage_params_t p = *base;
    p.stage = s;
    p.micro_batches = 1;
    p.max_inflight = 1;
    model_stage_t st;
    int rc = model_stage_init(&st, &p, err, errlen);
    if (rc)
        return rc;
    size_t nb = model_stage_act_bytes(&st);
    float *in = malloc(nb), *out = malloc(nb);
    if (!in || !out) {
        snprintf(err, errlen, "out of memory for the boundary tensors");
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < nb / sizeof(float); i++)
        in[i] = out[i] = 0.01f * (float)(i % 89) - 0.4f;
    if (nb != (size_t)st.B * st.T * st.C * sizeof(float)) /* fp16/bf16 boundaries: zeros, not float bits */
        memset(in, 0, nb), memset(out, 0, nb);
    for (int it = 0; it < warmup + iters; it++) {
        if (it == warmup)
            model_stage_prof_reset(&st);
        if ((rc = model_stage_forward(&st, it, 0, in, out)) || (rc = model_stage_backward(&st, it, 0, out, in)) ||
            (rc = model_stage_step(&st, it))) {
            snprintf(err, errlen, "stage %d iteration %d failed: %s", s, it, strerror(-rc));
            goto out;
        }
    }
    model_account_t a;
    model_stage_account(&st, &a);
    memset(r, 0, sizeof *r);
    r->layers = st.layer_end - st.layer_begin;
    r->fwd = st.prof.fwd / iters;
    r->bwd = st.prof.bwd / iters;
    r->opt = st.prof.opt / iters;
    r->embed_fwd = st.prof.embed_fwd / iters;
    r->embed_bwd = st.prof.embed_bwd / iters;
    r->head_fwd = st.prof.head_fwd / iters;
    r->head_bwd = st.prof.head_bwd / iters;
    r->flops = a.fwd_flops + a.bwd_flops;
    r->params = a.params;
    r->saved_bytes = a.saved_bytes_per_mb;
#ifdef PN_HAVE_CUDA
    r->device_bytes = model_cuda_device_bytes(&st);
    model_cuda_arg_t ca;
    if (st.backend == &model_backend_cuda && !model_cuda_arg_parse(st.backend_arg, &ca, NULL, 0))
        snprintf(r->precision, sizeof r->precision, "%s", model_prec_info(ca.prec)->name);
#endif
    for (int l = 0; l < r->layers; l++) {
        layer_fwd[st.layer_begin + l] = st.prof.layer_fwd[l] / iters;
        layer_bwd[st.layer_begin + l] = st.prof.layer_bwd[l] / iters;
    }
    if (a.fwd_s > 0) {
        /* emulate: the layers are not timed separately; report the stage's modelled split */
        for (int l = 0; l < r->layers; l++) {
            layer_fwd[st.layer_begin + l] = r->fwd / r->layers;
            layer_bwd[st.layer_begin + l] = r->bwd / r->layers;
        }
    } else {
#ifdef PN_HAVE_CUDA
        if (st.backend == &model_backend_cuda)
            rc = model_cuda_gemm_reference(&st, 3, &r->gemm_flops, &r->gemm_s);
        else
#endif
        rc = model_stage_gemm_reference(&st, 1, &r->gemm_flops, &r->gemm_s);
        if (rc) {
            snprintf(err, errlen, "stage %d: the sgemm reference failed: %s", s, strerror(-rc));
            goto out;
        }
    }
out:
    free(in);
    free(out);
    model_stage_destroy(&st);
    return rc;
}

int model_calib_write(const char *path, const model_stage_params_t *p, const model_calib_stage_t *r,
                      const double *layer_fwd, const double *layer_bwd, int argc, char **argv, char *err, size_t errlen)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) {
        snprintf(err, errlen, "--out %s: %s", path, strerror(errno));
        return -errno;
    }
    size_t params = 0;
    double opt = 0;
    for (int s = 0; s < p->stages; s++)
        params += r[s].params, opt += r[s].opt;
    fprintf(f, "# pipenem calibration: seconds per micro-batch, replayed by --compute emulate:FILE\n# command:");
    for (int i = 0; i < argc; i++)
        fprintf(f, " %s", argv[i]);
    fprintf(f, "\npipenem-calibration 1\nmodel %s\nlayers %d\nhidden %d\nheads %d\nvocab %d\nseq_len %d\n"
               "micro_batch_size %d\nrecompute %d\ntied_embeddings %d\nthreads %d\n",
            p->cfg.name, p->cfg.layers, p->cfg.hidden, p->cfg.heads, p->cfg.vocab, p->seq_len,
            p->micro_batch_size, p->recompute, p->tied_embeddings, p->threads);
    if (r[0].precision[0])
        fprintf(f, "precision %s\n", r[0].precision); /* the replay's boundary bytes */
    fprintf(f, "embed %.9g %.9g\n", r[0].embed_fwd, r[0].embed_bwd);
    for (int l = 0; l < p->cfg.layers; l++)
        fprintf(f, "layer %d %.9g %.9g\n", l, layer_fwd[l], layer_bwd[l]);
    fprintf(f, "head %.9g %.9g\n", r[p->stages - 1].head_fwd, r[p->stages - 1].head_bwd);
    fprintf(f, "opt_per_param %.9g\n", params ? opt / params : 0.0);
    if (fclose(f) || rename(tmp, path)) {
        snprintf(err, errlen, "--out %s: %s", path, strerror(errno));
        unlink(tmp);
        return -EIO;
    }
    return 0;
}
