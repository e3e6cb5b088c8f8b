/* Model configs, stage partitioning, the parameter table, deterministic data, slot
 * bookkeeping for in-flight micro-batches and the accounting; the arithmetic itself is
 * in the backends (cpu.c, emulate.c) reached through a const table. */
#include "models/model.h"
#include "common/clock.h"
#include "models/backend.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "common/clock.h"

static const model_config_t configs[] = {
    {"gpt3-small", 12, 768, 12, 50257, 2048},
    {"gpt3-medium", 24, 1024, 16, 50257, 2048},
    {"gpt3-large", 24, 1536, 16, 50257, 2048},
    {"gpt3-xl", 24, 2048, 32, 50257, 2048},
    {"gpt3-2.7b", 32, 2560, 32, 50257, 2048},
    /* byte vocabulary, so it trains on the shipped text in seconds */
    {"tiny", 4, 64, 4, 256, 128},
};

static const struct {
    const char *prefix;   /* "cpu" or "emulate" */
    const model_backend_t *b;
} backends[] = {
    {"cpu", &model_backend_cpu},
    {"emulate", &model_backend_emulate},
#ifdef PN_HAVE_CUDA
    {"cuda", &model_backend_cuda},
#endif
};

/* Built once from the table. */
static char config_names[256];
static pthread_once_t config_names_once = PTHREAD_ONCE_INIT;

static void config_names_build(void)
{
    size_t at = 0;
    for (size_t i = 0; i < sizeof configs / sizeof *configs && at < sizeof config_names; i++)
        at += (size_t)snprintf(config_names + at, sizeof config_names - at, "%s%s", i ? ", " : "", configs[i].name);
}

const char *model_config_names(void)
{
    pthread_once(&config_names_once, config_names_build);
    return config_names;
}

void model_partition_even(int layers, int stages, int *part)
{
    for (int i = 0; i < stages; i++)
        part[i] = layers / stages + (i < layers % stages); /* the first L % P take one more */
}

int model_config_get(const char *name, model_config_t *out, char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof configs / sizeof *configs; i++)
        if (!strcmp(configs[i].name, name)) {
            *out = configs[i];
            return 0;
        }
    snprintf(err, errlen, "unknown model '%s' (known: %s)", name, model_config_names());
    return -EINVAL;
}

int model_config_check(const model_config_t *c, char *err, size_t errlen)
{
    if (c->layers < 1 || c->layers > MODEL_MAX_LAYERS) {
        snprintf(err, errlen, "layers must be 1..%d, got %d", MODEL_MAX_LAYERS, c->layers);
        return -EINVAL;
    }
    if (c->hidden < 1 || c->heads < 1 || c->vocab < 2 || c->context < 1) {
        snprintf(err, errlen, "hidden, heads, context must be positive and vocab at least 2 "
                 "(got hidden %d, heads %d, vocab %d, context %d)", c->hidden, c->heads,
                 c->vocab, c->context);
        return -EINVAL;
    }
    if (c->hidden % c->heads) {
        snprintf(err, errlen, "heads (%d) must divide the hidden width (%d)", c->heads, c->hidden);
        return -EINVAL;
    }
    return 0;
}

/* ---------------------------------------------------------------- small helpers */

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t hash4(uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    return mix64(mix64(mix64(mix64(a) ^ b) ^ c) ^ d);
}

/* ---------------------------------------------------------------- data */

int model_data_open(model_data_t *d, const char *dataset, int vocab, int seq_len,
                    unsigned long long seed, char *err, size_t errlen)
{
    memset(d, 0, sizeof *d);
    d->vocab = vocab;
    d->seed = seed;
    if (!dataset || !strcmp(dataset, "random")) {
        d->random = 1;
        return 0;
    }
    if (vocab < 256) {
        snprintf(err, errlen, "dataset '%s' has byte tokens (0..255) but the vocabulary is %d",
                 dataset, vocab);
        return -EINVAL;
    }
    FILE *f = fopen(dataset, "rb");
    if (!f) {
        int e = errno;
        snprintf(err, errlen, "dataset '%s': %s (use 'random' or a text file)", dataset, strerror(e));
        return -e;
    }
    int rc = 0;
    if (fseek(f, 0, SEEK_END) || ftell(f) < 0) {
        snprintf(err, errlen, "dataset '%s': cannot determine its size", dataset);
        rc = -EIO;
        goto out;
    }
    long n = ftell(f);
    rewind(f);
    if (n < (long)seq_len + 2) {
        snprintf(err, errlen, "dataset '%s' has %ld bytes, fewer than seq-len %d + 2", dataset, n, seq_len);
        rc = -EINVAL;
        goto out;
    }
    d->text = malloc(n);
    if (!d->text) {
        rc = -ENOMEM;
        snprintf(err, errlen, "dataset '%s': out of memory", dataset);
        goto out;
    }
    if (fread(d->text, 1, n, f) != (size_t)n) {
        snprintf(err, errlen, "dataset '%s': short read", dataset);
        free(d->text);
        d->text = NULL;
        rc = -EIO;
        goto out;
    }
    d->len = n;
out:
    fclose(f);
    return rc;
}

void model_data_batch(const model_data_t *d, int iter, int mb, int B, int T, int *tokens, int *targets)
{
    for (int b = 0; b < B; b++) {
        int *tok = tokens + (size_t)b * T, *tgt = targets + (size_t)b * T;
        if (d->random) {
            /* a row is T+1 tokens; the targets are the row shifted by one */
            uint64_t row = hash4(d->seed, 0x72616e64ull + iter, mb + d->mb_offset, b);
            for (int t = 0; t <= T; t++) {
                int v = (int)(mix64(row ^ (uint64_t)t) % (uint64_t)d->vocab);
                if (t < T)
                    tok[t] = v;
                if (t > 0)
                    tgt[t - 1] = v;
            }
        } else {
            size_t off = hash4(d->seed, 0x74657874ull + iter, mb + d->mb_offset, b) % (d->len - T);
            for (int t = 0; t < T; t++) {
                tok[t] = d->text[off + t];
                tgt[t] = d->text[off + t + 1];
            }
        }
    }
}

void model_data_close(model_data_t *d)
{
    free(d->text);
    d->text = NULL;
}

/* ---------------------------------------------------------------- compute names */

static int backend_lookup(const char *compute, const model_backend_t **b, const char **arg,
                          char *err, size_t errlen)
{
    if (!compute || !*compute)
        compute = "cpu";
    for (size_t i = 0; i < sizeof backends / sizeof *backends; i++) {
        size_t n = strlen(backends[i].prefix);
        if (!strncmp(compute, backends[i].prefix, n) && (compute[n] == '\0' || compute[n] == ':')) {
            *b = backends[i].b;
            *arg = compute[n] ? compute + n + 1 : "";
            return 0;
        }
    }
    if (!strncmp(compute, "cuda", 4))
        snprintf(err, errlen, "compute backend 'cuda' is not in this build: it was built without "
                 "nvcc (CUDA=no or no CUDA toolkit); use cpu or emulate:v100|a100|h100");
    else
        snprintf(err, errlen, "unknown compute backend '%s' (known: cpu, %semulate:v100|a100|h100, "
                 "emulate:fwd=25ms,bwd=75ms, emulate:CALIBRATION_FILE)", compute,
#ifdef PN_HAVE_CUDA
                 "cuda[:fp32|tf32|fp16|bf16], "
#else
                 ""
#endif
                 );
    return -EINVAL;
}

void model_compute_describe(const char *compute, char *buf, size_t len)
{
    const model_backend_t *b;
    const char *arg;
    char err[256];
    if (backend_lookup(compute, &b, &arg, err, sizeof err))
        snprintf(buf, len, "%s", err);
    else
        b->describe(arg, buf, len);
}

int model_compute_modelled(const char *compute)
{
    const model_backend_t *b;
    const char *arg;
    return backend_lookup(compute, &b, &arg, NULL, 0) == 0 && b->modelled;
}

int model_compute_loss_scaling(const char *compute)
{
    const model_backend_t *b;
    const char *arg;
    if (backend_lookup(compute, &b, &arg, NULL, 0))
        return 0;
    int p = b->precision ? b->precision(arg) : MODEL_PREC_FP32;
    return p >= 0 && p < MODEL_PREC_N && model_prec_info((model_prec_t)p)->loss_scaling;
}

int model_compute_check(const char *compute, char *err, size_t errlen)
{
    const model_backend_t *b;
    const char *arg;
    int rc = backend_lookup(compute, &b, &arg, err, errlen);
    if (rc)
        return rc;
    return b->check(arg, err, errlen);
}

/* ---------------------------------------------------------------- the stage */

static size_t stage_tensor_count(const model_stage_t *st)
{
    int nl = st->layer_end - st->layer_begin;
    size_t n = (size_t)nl * MODEL_T_PER_LAYER;
    if (st->first)
        n += 2;
    if (st->last)
        n += (st->p.tied_embeddings && st->p.stages == 1) ? 2 : 3;
    return n;
}

/* The tensor table: name, size, init seed id and decay flag, at increasing offsets. */
static void stage_tensors_build(model_stage_t *st, uint64_t *ids, int *kinds)
{
    static const char *const lname[MODEL_T_PER_LAYER] = {
        "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
        "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb"};
    size_t C = st->C, off = 0;
    int k = 0;
    /* kinds: 0 zero, 1 one, 2 normal, 3 normal scaled for the residual projections */
#define ADD(nm, n, id, kind, dec, mm)                                                        \
    do {                                                                                   \
        model_tensor_t *t = &st->tensors[k];                                               \
        snprintf(t->name, sizeof t->name, "%s", nm);                                       \
        t->offset = off;                                                                   \
        t->numel = (n);                                                                    \
        t->decay = (dec);                                                                  \
        t->gemm = (mm);                                                                    \
        ids[k] = (id);                                                                     \
        kinds[k] = (kind);                                                                 \
        off += t->numel;                                                                   \
        k++;                                                                               \
    } while (0)
    if (st->first) {
        ADD("wte", (size_t)st->V * C, 1, 2, 1, 0);
        ADD("wpe", (size_t)st->p.cfg.context * C, 2, 2, 1, 0);
    }
    size_t lsz[MODEL_T_PER_LAYER] = {C, C, 3 * C * C, 3 * C, C * C, C, C, C, 4 * C * C, 4 * C, 4 * C * C, C};
    int lkind[MODEL_T_PER_LAYER] = {1, 0, 2, 0, 3, 0, 1, 0, 2, 0, 3, 0};
    for (int l = st->layer_begin; l < st->layer_end; l++)
        for (int j = 0; j < MODEL_T_PER_LAYER; j++) {
            char nm[24];
            snprintf(nm, sizeof nm, "h%d.%s", l, lname[j]);
            ADD(nm, lsz[j], 16 + (uint64_t)l * 16 + j, lkind[j], lkind[j] >= 2, lkind[j] >= 2);
        }
    if (st->last) {
        ADD("lnf.w", C, 3, 1, 0, 0);
        ADD("lnf.b", C, 4, 0, 0, 0);
        if (!(st->p.tied_embeddings && st->p.stages == 1))
            /* a tied head starts as a copy of wte: same seed id */
            ADD("head", (size_t)st->V * C, st->p.tied_embeddings ? 1 : 5, 2, 1, 1);
    }
#undef ADD
    st->n_tensors = k;
    st->n_params = off;
}

static void tensor_init(float *x, size_t n, uint64_t seed, int kind, float std)
{
    if (kind <= 1) {
        for (size_t i = 0; i < n; i++)
            x[i] = (float)kind;
        return;
    }
    /* Box-Muller over a counter hash: the values depend only on (seed, index), so every
     * split of the model initialises identically. */
    for (size_t i = 0; i < n; i += 2) {
        uint64_t h1 = mix64(seed ^ (i * 0x9e3779b97f4a7c15ull)), h2 = mix64(h1 + 1);
        double u1 = ((h1 >> 11) + 1.0) / 9007199254740993.0, u2 = (h2 >> 11) / 9007199254740992.0;
        double r = sqrt(-2.0 * log(u1));
        x[i] = (float)(std * r * cos(2 * M_PI * u2));
        if (i + 1 < n)
            x[i + 1] = (float)(std * r * sin(2 * M_PI * u2));
    }
}

static int stage_partition(model_stage_t *st, const model_stage_params_t *p, char *err, size_t errlen)
{
    int L = p->cfg.layers, P = p->stages;
    if (P < 1 || P > PN_MAX_STAGES) {
        snprintf(err, errlen, "stages must be 1..%d, got %d", PN_MAX_STAGES, P);
        return -EINVAL;
    }
    if (P > L) {
        snprintf(err, errlen, "more stages (%d) than layers (%d): every stage needs a layer", P, L);
        return -EINVAL;
    }
    if (p->stage < 0 || p->stage >= P) {
        snprintf(err, errlen, "stage %d is outside 0..%d", p->stage, P - 1);
        return -EINVAL;
    }
    if (p->partition) {
        int sum = 0;
        for (int i = 0; i < P; i++) {
            if (p->partition[i] < 1) {
                snprintf(err, errlen, "partition entry %d is %d: every stage needs at least one layer",
                         i, p->partition[i]);
                return -EINVAL;
            }
            sum += p->partition[i];
            st->part[i] = p->partition[i];
        }
        if (sum != L) {
            snprintf(err, errlen, "partition sums to %d layers but the model has %d", sum, L);
            return -EINVAL;
        }
    } else {
        model_partition_even(L, P, st->part);
    }
    int begin = 0;
    for (int i = 0; i < p->stage; i++)
        begin += st->part[i];
    st->layer_begin = begin;
    st->layer_end = begin + st->part[p->stage];
    return 0;
}

int model_stage_init(model_stage_t *st, const model_stage_params_t *p, char *err, size_t errlen)
{
    memset(st, 0, sizeof *st);
    int rc = model_config_check(&p->cfg, err, errlen);
    if (rc)
        return rc;
    if (p->seq_len < 1 || p->seq_len > p->cfg.context) {
        snprintf(err, errlen, "seq-len %d must be 1..%d (the context of %s)", p->seq_len,
                 p->cfg.context, p->cfg.name[0] ? p->cfg.name : "the model");
        return -EINVAL;
    }
    if (p->micro_batch_size < 1 || p->micro_batches < 1) {
        snprintf(err, errlen, "micro-batch size (%d) and micro-batch count (%d) must be positive",
                 p->micro_batch_size, p->micro_batches);
        return -EINVAL;
    }
    if (p->max_inflight < 0 || p->max_inflight > p->micro_batches) {
        snprintf(err, errlen, "max in-flight micro-batches %d must be 0..%d (0 = all)",
                 p->max_inflight, p->micro_batches);
        return -EINVAL;
    }
    if (!(p->lr >= 0)) {
        snprintf(err, errlen, "learning rate must be a non-negative number");
        return -EINVAL;
    }
    const model_backend_t *b;
    const char *arg;
    rc = backend_lookup(p->compute, &b, &arg, err, errlen);
    if (rc)
        return rc;
    rc = stage_partition(st, p, err, errlen);
    if (rc)
        return rc;
    st->p = *p;
    st->p.partition = st->part;
    snprintf(st->backend_arg, sizeof st->backend_arg, "%s", arg);
    st->first = p->stage == 0;
    st->last = p->stage == p->stages - 1;
    st->B = p->micro_batch_size;
    st->T = p->seq_len;
    st->C = p->cfg.hidden;
    st->NH = p->cfg.heads;
    st->V = p->cfg.vocab;
    st->max_inflight = p->max_inflight ? p->max_inflight : p->micro_batches;
    st->last_loss = NAN;

    size_t nt = stage_tensor_count(st);
    uint64_t *ids = calloc(nt, sizeof *ids);
    int *kinds = calloc(nt, sizeof *kinds);
    st->tensors = calloc(nt, sizeof *st->tensors);
    st->slot_iter = malloc(st->max_inflight * sizeof(int));
    st->slot_mb = malloc(st->max_inflight * sizeof(int));
    st->slot_phase = calloc(st->max_inflight, sizeof(int));
    st->tokens = calloc((size_t)st->B * st->T, sizeof(int));
    st->targets = calloc((size_t)st->B * st->T, sizeof(int));
    if (!ids || !kinds || !st->tensors || !st->slot_iter || !st->slot_mb || !st->slot_phase || !st->tokens || !st->targets) {
        snprintf(err, errlen, "out of memory for the stage tables");
        rc = -ENOMEM;
        goto fail;
    }
    for (int i = 0; i < st->max_inflight; i++)
        st->slot_mb[i] = -1;
    stage_tensors_build(st, ids, kinds);
    rc = model_data_open(&st->data, p->dataset, st->V, st->T, p->seed, err, errlen);
    if (rc)
        goto fail;
    st->data.mb_offset = p->data_mb_offset;
    st->backend = b;
    rc = b->init(st, arg, err, errlen);
    if (rc)
        goto fail;
    if (st->params) {
        float std = 0.02f, pstd = 0.02f / sqrtf(2.0f * p->cfg.layers);
        for (int i = 0; i < st->n_tensors; i++) {
            model_tensor_t *t = &st->tensors[i];
            t->param = st->params + t->offset;
            t->grad = st->grads + t->offset;
            tensor_init(t->param, t->numel, mix64(p->seed) ^ mix64(ids[i] * 0x632be59bd9b4e019ull),
                        kinds[i], kinds[i] == 3 ? pstd : std);
        }
    }
    free(ids);
    free(kinds);
    return 0;
fail:
    free(ids);
    free(kinds);
    model_stage_destroy(st);
    return rc;
}

void model_stage_destroy(model_stage_t *st)
{
    if (st->backend && st->backend->destroy)
        st->backend->destroy(st);
    st->backend = NULL;
    model_data_close(&st->data);
    free(st->tensors);
    free(st->slot_iter);
    free(st->slot_mb);
    free(st->slot_phase);
    free(st->tokens);
    free(st->targets);
    st->tensors = NULL;
    st->slot_iter = st->slot_mb = st->slot_phase = st->tokens = st->targets = NULL;
    st->n_tensors = 0;
}

size_t model_stage_act_bytes(const model_stage_t *st)
{
    return (size_t)st->B * st->T * st->C * (st->act_elem_bytes ? (size_t)st->act_elem_bytes : sizeof(float));
}

static int slot_find(const model_stage_t *st, int iter, int mb)
{
    for (int i = 0; i < st->max_inflight; i++)
        if (st->slot_mb[i] == mb && st->slot_iter[i] == iter)
            return i;
    return -1;
}

int model_stage_forward(model_stage_t *st, int iter, int mb, const float *in, float *out)
{
    if (!st->backend || mb < 0 || mb >= st->p.micro_batches || (!st->first && !in) || (!st->last && !out))
        return -EINVAL;
    if (slot_find(st, iter, mb) >= 0)
        return -EEXIST;
    int slot = 0;
    while (slot < st->max_inflight && st->slot_mb[slot] >= 0)
        slot++;
    if (slot == st->max_inflight)
        return -ENOSPC;
    if (st->params && (st->first || st->last))
        model_data_batch(&st->data, iter, mb, st->B, st->T, st->tokens, st->targets);
    double t0 = pn_now();
    int rc = st->backend->forward(st, slot, in, out);
    st->prof.fwd += pn_now() - t0;
    st->prof.n_fwd++;
    if (rc)
        return rc;
    st->slot_iter[slot] = iter;
    st->slot_mb[slot] = mb;
    return 0;
}

/* kind 0: the whole backward of (iter, mb); 1: its B; 2: its W (after its B). */
static int backward_op(model_stage_t *st, int iter, int mb, const float *dout, float *din, int kind)
{
    const model_backend_t *b = st->backend;
    if (!b || mb < 0 || mb >= st->p.micro_batches ||
        (kind < 2 && ((!st->last && !dout) || (!st->first && !din))))
        return -EINVAL;
    if (kind && (!b->backward_input || !b->backward_weights))
        return -ENOTSUP;
    int slot = slot_find(st, iter, mb);
    if (slot < 0 || st->slot_phase[slot] != (kind == 2))
        return -ENOENT;
    if (st->params && (st->first || st->last))
        model_data_batch(&st->data, iter, mb, st->B, st->T, st->tokens, st->targets);
    double t0 = pn_now();
    int rc = kind == 2 ? b->backward_weights(st, slot) : (kind ? b->backward_input : b->backward)(st, slot, dout, din);
    st->prof.bwd += pn_now() - t0;
    st->prof.n_bwd += kind != 1;
    if (rc)
        return rc;
    if (kind != 1)
        model_stage_grads_final(st, 0);
    st->slot_phase[slot] = kind == 1;
    if (kind != 1)
        st->slot_mb[slot] = -1;
    return 0;
}

int model_stage_backward(model_stage_t *st, int iter, int mb, const float *dout, float *din)
{
    return backward_op(st, iter, mb, dout, din, 0);
}

int model_stage_backward_input(model_stage_t *st, int iter, int mb, const float *dout, float *din)
{
    return backward_op(st, iter, mb, dout, din, 1);
}

int model_stage_backward_weights(model_stage_t *st, int iter, int mb)
{
    return backward_op(st, iter, mb, NULL, NULL, 2);
}

double model_stage_loss(const model_stage_t *st)
{
    return st->last ? st->last_loss : NAN;
}

double model_stage_loss_pending(const model_stage_t *st)
{
    return st->last && st->loss_count ? st->loss_sum / st->loss_count : NAN;
}

void model_stage_reset(model_stage_t *st)
{
    for (int i = 0; i < st->max_inflight; i++)
        st->slot_mb[i] = -1, st->slot_phase[i] = 0;
    st->loss_sum = 0;
    st->loss_count = 0;
    model_stage_grads_zero(st);
}

void model_stage_grads_zero(model_stage_t *st)
{
    if (st->grads)
        memset(st->grads, 0, st->n_params * sizeof(float));
    if (st->tied_grad)
        memset(st->tied_grad, 0, (size_t)st->V * st->C * sizeof(float));
    if (st->backend && st->backend->reset)
        st->backend->reset(st);
}

const model_tensor_t *model_stage_tensor(const model_stage_t *st, int i)
{
    return i >= 0 && i < st->n_tensors ? &st->tensors[i] : NULL;
}

const model_tensor_t *model_stage_tensor_find(const model_stage_t *st, const char *name)
{
    for (int i = 0; i < st->n_tensors; i++)
        if (!strcmp(st->tensors[i].name, name))
            return &st->tensors[i];
    return NULL;
}

int model_stage_tied_grad(model_stage_t *st, float **grad, size_t *numel)
{
    if (!st->p.tied_embeddings || st->p.stages == 1 || !(st->first || st->last))
        return -ENOENT;
    float *g = st->tied_grad;
    if (!g) {
        const model_tensor_t *t = model_stage_tensor_find(st, st->first ? "wte" : "head");
        if (!t || !t->grad)
            return -ENOENT;
        g = t->grad;
    }
    *grad = g;
    *numel = (size_t)st->V * st->C;
    return 0;
}

void model_stage_grads_hook(model_stage_t *st, void (*fn)(void *arg, size_t lo), void *arg)
{
    st->grads_final = fn;
    st->grads_final_arg = arg;
}

int model_stage_grads_host(model_stage_t *st) { return st->backend->grads_host ? st->backend->grads_host(st) : 0; }
int model_stage_grads_upload(model_stage_t *st) { return st->backend->grads_upload ? st->backend->grads_upload(st) : 0; }

/* ---------------------------------------------------------------- accounting */

double model_stage_fwd_flops(const model_stage_t *st)
{
    double C = st->C, T = st->T, tokens = (double)st->B * st->T;
    double nl = st->layer_end - st->layer_begin;
    double matmul = 12.0 * C * C * nl + (st->last ? (double)st->V * C : 0);
    return tokens * (2.0 * matmul + 2.0 * nl * T * C);
}

void model_stage_account(const model_stage_t *st, model_account_t *o)
{
    memset(o, 0, sizeof *o);
    double C = st->C, L = st->p.cfg.layers, V = st->V;
    for (int i = 0; i < st->n_tensors; i++)
        o->params += st->tensors[i].numel;
    o->params_matmul = (size_t)(12.0 * L * C * C + V * C);
    o->params_total = (size_t)(V * C + (double)st->p.cfg.context * C + L * (12.0 * C * C + 13.0 * C) +
                               2.0 * C + (st->p.tied_embeddings ? 0 : V * C));
    o->flops_per_token = 6.0 * o->params_matmul + 6.0 * L * st->T * C;
    o->fwd_flops = model_stage_fwd_flops(st);
    o->bwd_flops = 2.0 * o->fwd_flops;
    o->boundary_bytes = model_stage_act_bytes(st);
    o->saved_bytes_per_mb = model_slot_floats(st) * sizeof(float);
    size_t pb = st->params ? st->n_params * sizeof(float) : 0;
    o->param_bytes = pb;
    o->grad_bytes = st->grads ? pb : (st->tied_grad ? (size_t)st->V * st->C * sizeof(float) : 0);
    o->opt_bytes = st->opt_m ? 2 * pb : 0;
    o->act_bytes = st->act_floats * sizeof(float);
    o->fwd_s = st->emu_fwd_s;
    o->bwd_s = st->emu_bwd_s;
    o->opt_s = st->emu_opt_s;
    o->peak_flops = st->peak_flops;
    o->efficiency = st->efficiency;
}

size_t model_peak_rss_bytes(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru))
        return 0;
    return (size_t)ru.ru_maxrss * 1024;
}

void model_stage_describe(const model_stage_t *st, char *buf, size_t len)
{
    if (!st->backend) {
        snprintf(buf, len, "(not initialised)");
        return;
    }
    st->backend->describe(st->backend_arg, buf, len);
    size_t n = strlen(buf);
    if (st->backend == &model_backend_cpu && n < len) {
        if (st->p.threads > 0)
            snprintf(buf + n, len - n, ", %d threads", st->p.threads);
        else
            snprintf(buf + n, len - n, ", default threads");
    }
}

void model_stage_prof_reset(model_stage_t *st)
{
    memset(&st->prof, 0, sizeof st->prof);
}
