/* Parsing and checking of the model/compute option group, so that every subcommand
 * that builds stages accepts the same words and rejects bad ones with the same message. */
#include "models/options.h"
#include "common/limits.h"
#include "common/parse.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const model_option_t model_options_group[] = {
    {"model", 0, MODEL_OPT_MODEL, "NAME", "model config: {models}", "gpt3-small"},
    {"layers", 0, MODEL_OPT_LAYERS, "N", "transformer layers (overrides the config)", "the config's"},
    {"hidden", 0, MODEL_OPT_HIDDEN, "D", "model width (overrides the config)", "the config's"},
    {"heads", 0, MODEL_OPT_HEADS, "H", "attention heads, must divide --hidden (overrides the config)", "the config's"},
    {"vocab", 0, MODEL_OPT_VOCAB, "V", "vocabulary size (overrides the config)", "the config's"},
    {"seq-len", 'T', MODEL_OPT_SEQ_LEN, "T", "tokens per sequence", "the model's context"},
    {"stages", 'P', MODEL_OPT_STAGES, "P", "pipeline stages, the layers split evenly",
     "the number of --partition entries, else 1"},
    {"partition", 0, MODEL_OPT_PARTITION, "A,B,..", "layers per stage (must sum to the layer count)", "even split"},
    {"batch-size", 0, MODEL_OPT_BATCH_SIZE, "N", "sequences per iteration",
     "8, so that a cpu run of gpt3-small takes minutes"},
    {"micro-batch-size", 'u', MODEL_OPT_MICRO_BATCH_SIZE, "b", "sequences per micro-batch: N / b micro-batches",
     "1"},
    {"compute", 'c', MODEL_OPT_COMPUTE, "SPEC",
     "cpu (real training) | cuda[:fp32|tf32|fp16|bf16] (GPU) | emulate:DEV[,PREC][,eff=X]\n"
     "(DEV: {devices}) | emulate:fwd=25ms,bwd=75ms[,opt=T]\n"
     "| emulate:FILE (written by `pipenem calibrate`); emulate sleeps for the modelled time\n"
     "on real-size tensors instead of computing",
     "cpu, real training on this machine"},
    {"dataset", 0, MODEL_OPT_DATASET, "D", "random or a text file (byte tokens)", "random"},
    {"recompute", 0, MODEL_OPT_RECOMPUTE, NULL, "keep only each layer's input, recompute the rest in backward", NULL},
    {"tied-embeddings", 0, MODEL_OPT_TIED_EMBEDDINGS, NULL,
     "one embedding/head matrix, gradients summed across the first and last stage", NULL},
    {"threads", 0, MODEL_OPT_THREADS, "N", "OpenMP and OpenBLAS threads per stage (cpu)", "the libraries' default"},
    {"seed", 0, MODEL_OPT_SEED, "S", "parameter and data seed", "1234"},
    {"lr", 0, MODEL_OPT_LR, "X", "AdamW learning rate", "6e-4"},
    {"device", 0, MODEL_OPT_DEVICE, "N", "cuda: the GPU", "the launcher's local rank, else the stage index"},
    {NULL, 0, 0, NULL, NULL, NULL},
};

void model_options_defaults(model_options_t *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->model, sizeof o->model, "gpt3-small");
    o->batch_size = 8;
    o->micro_batch_size = 1;
    snprintf(o->compute, sizeof o->compute, "cpu");
    snprintf(o->dataset, sizeof o->dataset, "random");
    o->seed = 1234;
    o->lr = 6e-4f;
    o->device = -1;
}

int model_options_getopt(struct option *dst, size_t cap, const struct option *own,
                         const model_option_t *const *groups, size_t n_groups)
{
    size_t n = 0;
    while (own && own[n].name)
        n++;
    if (n + 1 > cap)
        return -ENOSPC;
    if (n) /* own may be NULL */
        memcpy(dst, own, n * sizeof *dst);
    for (size_t g = 0; g < n_groups; g++)
        for (const model_option_t *o = groups[g]; o->name; o++, n++) {
            if (n + 2 > cap)
                return -ENOSPC;
            dst[n] = (struct option){o->name, o->arg ? required_argument : no_argument, NULL, o->val};
        }
    memset(&dst[n], 0, sizeof *dst);
    return (int)n;
}

int model_options_table(struct option *dst, size_t cap, const struct option *own)
{
    const model_option_t *const groups[] = {model_options_group};
    return model_options_getopt(dst, cap, own, groups, 1);
}

static const char *opt_name(int opt)
{
    for (const model_option_t *g = model_options_group; g->name; g++)
        if (g->val == opt)
            return g->name;
    return "?";
}

/* A whole-string integer in [lo, hi]. */
static int parse_int(int opt, const char *arg, int lo, int hi, int *out, char *err, size_t errlen)
{
    if (pn_parse_int(arg, lo, hi, out))
        return pn_err(err, errlen, -EINVAL, "--%s: expected an integer %d..%d, got '%s'", opt_name(opt), lo, hi, arg);
    return 0;
}

/* --partition A,B,...: layer counts, each >= 1, one per stage. */
static int parse_partition(model_options_t *o, const char *arg, char *err, size_t errlen)
{
    int n = 0;
    const char *s = arg;
    while (1) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 1 || v > MODEL_MAX_LAYERS || (*end && *end != ','))
            return pn_err(err, errlen, -EINVAL, "--partition: expected layer counts like 4,4,4 (each >= 1), "
                          "bad entry %d in '%s'", n, arg);
        if (n == PN_MAX_STAGES)
            return pn_err(err, errlen, -EINVAL, "--partition: more than %d stages", PN_MAX_STAGES);
        o->partition[n++] = (int)v;
        if (!*end)
            break;
        s = end + 1;
    }
    o->n_partition = n;
    return 0;
}

int model_options_parse(model_options_t *o, int opt, const char *arg, char *err, size_t errlen)
{
    int rc = 0;
    switch (opt) {
    case MODEL_OPT_MODEL: {
        model_config_t c;
        rc = model_config_get(arg, &c, err, errlen);
        if (!rc) {
            snprintf(o->model, sizeof o->model, "%s", arg);
        } else {
            char msg[256];
            snprintf(msg, sizeof msg, "%s", err);
            snprintf(err, errlen, "--model: %s", msg);
        }
        break;
    }
    case MODEL_OPT_LAYERS:
        rc = parse_int(opt, arg, 1, MODEL_MAX_LAYERS, &o->layers, err, errlen);
        break;
    case MODEL_OPT_HIDDEN:
        rc = parse_int(opt, arg, 1, 1 << 16, &o->hidden, err, errlen);
        break;
    case MODEL_OPT_HEADS:
        rc = parse_int(opt, arg, 1, 1 << 12, &o->heads, err, errlen);
        break;
    case MODEL_OPT_VOCAB:
        rc = parse_int(opt, arg, 2, 1 << 24, &o->vocab, err, errlen);
        break;
    case MODEL_OPT_SEQ_LEN:
        rc = parse_int(opt, arg, 1, 1 << 20, &o->seq_len, err, errlen);
        break;
    case MODEL_OPT_STAGES:
        rc = parse_int(opt, arg, 1, PN_MAX_STAGES, &o->stages, err, errlen);
        break;
    case MODEL_OPT_PARTITION:
        rc = parse_partition(o, arg, err, errlen);
        break;
    case MODEL_OPT_BATCH_SIZE:
        rc = parse_int(opt, arg, 1, INT_MAX, &o->batch_size, err, errlen);
        break;
    case MODEL_OPT_MICRO_BATCH_SIZE:
        rc = parse_int(opt, arg, 1, INT_MAX, &o->micro_batch_size, err, errlen);
        break;
    case MODEL_OPT_COMPUTE:
        rc = model_compute_check(arg, err, errlen);
        if (!rc) {
            if (strlen(arg) >= sizeof o->compute) {
                snprintf(err, errlen, "--compute: value too long");
                return -EINVAL;
            }
            snprintf(o->compute, sizeof o->compute, "%s", arg);
        } else {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", err);
            snprintf(err, errlen, "--compute: %s", msg);
        }
        break;
    case MODEL_OPT_DATASET:
        if (strcmp(arg, "random") && access(arg, R_OK)) {
            snprintf(err, errlen, "--dataset: cannot read '%s': %s (use 'random' or a text file)",
                     arg, strerror(errno));
            return -EINVAL;
        }
        if (strlen(arg) >= sizeof o->dataset) {
            snprintf(err, errlen, "--dataset: path too long");
            return -EINVAL;
        }
        snprintf(o->dataset, sizeof o->dataset, "%s", arg);
        break;
    case MODEL_OPT_RECOMPUTE:
        o->recompute = 1;
        break;
    case MODEL_OPT_TIED_EMBEDDINGS:
        o->tied_embeddings = 1;
        break;
    case MODEL_OPT_THREADS:
        rc = parse_int(opt, arg, 1, 1024, &o->threads, err, errlen);
        break;
    case MODEL_OPT_DEVICE:
        rc = parse_int(opt, arg, 0, 1023, &o->device, err, errlen);
        break;
    case MODEL_OPT_SEED: {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(arg, &end, 0);
        if (end == arg || *end || errno || arg[0] == '-') {
            snprintf(err, errlen, "--seed: expected a non-negative integer, got '%s'", arg);
            return -EINVAL;
        }
        o->seed = v;
        break;
    }
    case MODEL_OPT_LR: {
        char *end;
        errno = 0;
        double v = strtod(arg, &end);
        if (end == arg || *end || errno || !(v >= 0) || !isfinite(v)) {
            snprintf(err, errlen, "--lr: expected a non-negative number, got '%s'", arg);
            return -EINVAL;
        }
        o->lr = (float)v;
        break;
    }
    default:
        return 0;
    }
    return rc ? rc : 1;
}

int model_options_finish(model_options_t *o, model_stage_params_t *p, char *err, size_t errlen)
{
    model_config_t cfg;
    int rc = model_config_get(o->model, &cfg, err, errlen);
    if (rc)
        return rc;
    if (o->layers)
        cfg.layers = o->layers;
    if (o->hidden)
        cfg.hidden = o->hidden;
    if (o->heads)
        cfg.heads = o->heads;
    if (o->vocab)
        cfg.vocab = o->vocab;
    if (cfg.hidden % cfg.heads) {
        snprintf(err, errlen, "--heads %d does not divide --hidden %d (%s)", cfg.heads, cfg.hidden, cfg.name);
        return -EINVAL;
    }
    rc = model_config_check(&cfg, err, errlen);
    if (rc)
        return rc;
    int T = o->seq_len ? o->seq_len : cfg.context;
    if (T > cfg.context) {
        snprintf(err, errlen, "--seq-len %d is above the context %d of %s", T, cfg.context, cfg.name);
        return -EINVAL;
    }
    if (o->batch_size % o->micro_batch_size) {
        snprintf(err, errlen, "--batch-size %d is not divisible by --micro-batch-size %d",
                 o->batch_size, o->micro_batch_size);
        return -EINVAL;
    }
    int stages = o->stages ? o->stages : (o->n_partition ? o->n_partition : 1);
    if (o->n_partition) {
        if (o->n_partition != stages) {
            snprintf(err, errlen, "--partition has %d entries but --stages is %d", o->n_partition, stages);
            return -EINVAL;
        }
        int sum = 0;
        for (int i = 0; i < o->n_partition; i++)
            sum += o->partition[i];
        if (sum != cfg.layers) {
            snprintf(err, errlen, "--partition sums to %d layers but %s has %d", sum, cfg.name, cfg.layers);
            return -EINVAL;
        }
    }
    if (stages > cfg.layers) {
        snprintf(err, errlen, "--stages %d is more than the %d layers of %s", stages, cfg.layers, cfg.name);
        return -EINVAL;
    }
    if (o->device >= 0) {
        /* --device N becomes part of the compute spec (cuda:PREC,dev=N), which every
         * stage process receives */
        size_t n = strlen(o->compute);
        if (strncmp(o->compute, "cuda", 4) || (o->compute[4] && o->compute[4] != ':')) {
            snprintf(err, errlen, "--device %d needs --compute cuda[:PREC], not '%s'", o->device, o->compute);
            return -EINVAL;
        }
        if (n + 16 >= sizeof o->compute) {
            snprintf(err, errlen, "--compute: value too long");
            return -EINVAL;
        }
        snprintf(o->compute + n, sizeof o->compute - n, "%sdev=%d", o->compute[4] ? "," : ":", o->device);
        o->device = -1;
    }
    rc = model_compute_check(o->compute, err, errlen);
    if (rc)
        return rc;
    if (strcmp(o->dataset, "random")) {
        if (access(o->dataset, R_OK)) {
            snprintf(err, errlen, "--dataset: cannot read '%s': %s", o->dataset, strerror(errno));
            return -EINVAL;
        }
        if (cfg.vocab < 256) {
            snprintf(err, errlen, "--dataset %s has byte tokens but --vocab is %d (needs >= 256)",
                     o->dataset, cfg.vocab);
            return -EINVAL;
        }
    }
    memset(p, 0, sizeof *p);
    p->cfg = cfg;
    p->seq_len = T;
    p->micro_batch_size = o->micro_batch_size;
    p->micro_batches = o->batch_size / o->micro_batch_size;
    p->stages = stages;
    p->stage = 0;
    p->partition = o->n_partition ? o->partition : NULL;
    p->max_inflight = 0;
    p->compute = o->compute;
    p->dataset = o->dataset;
    p->seed = o->seed;
    p->threads = o->threads;
    p->recompute = o->recompute;
    p->tied_embeddings = o->tied_embeddings;
    p->lr = o->lr;
    return 0;
}
