/* Parsing and checking of the model/compute option group, so that every subcommand
 * that builds stages accepts the same words and rejects bad ones with the same message. */
#include "models/options.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct option group[] = {
    {"model", required_argument, NULL, MODEL_OPT_MODEL},
    {"layers", required_argument, NULL, MODEL_OPT_LAYERS},
    {"hidden", required_argument, NULL, MODEL_OPT_HIDDEN},
    {"heads", required_argument, NULL, MODEL_OPT_HEADS},
    {"vocab", required_argument, NULL, MODEL_OPT_VOCAB},
    {"seq-len", required_argument, NULL, MODEL_OPT_SEQ_LEN},
    {"stages", required_argument, NULL, MODEL_OPT_STAGES},
    {"partition", required_argument, NULL, MODEL_OPT_PARTITION},
    {"batch-size", required_argument, NULL, MODEL_OPT_BATCH_SIZE},
    {"micro-batch-size", required_argument, NULL, MODEL_OPT_MICRO_BATCH_SIZE},
    {"compute", required_argument, NULL, MODEL_OPT_COMPUTE},
    {"dataset", required_argument, NULL, MODEL_OPT_DATASET},
    {"recompute", no_argument, NULL, MODEL_OPT_RECOMPUTE},
    {"tied-embeddings", no_argument, NULL, MODEL_OPT_TIED_EMBEDDINGS},
    {"threads", required_argument, NULL, MODEL_OPT_THREADS},
    {"seed", required_argument, NULL, MODEL_OPT_SEED},
    {"lr", required_argument, NULL, MODEL_OPT_LR},
    {"device", required_argument, NULL, MODEL_OPT_DEVICE},
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

int model_options_table(struct option *dst, size_t cap, const struct option *own)
{
    size_t n = 0, ng = sizeof group / sizeof *group;
    while (own && own[n].name)
        n++;
    if (n + ng + 1 > cap)
        return -ENOSPC;
    if (n)
        memcpy(dst, own, n * sizeof *dst);
    memcpy(dst + n, group, ng * sizeof *dst);
    memset(&dst[n + ng], 0, sizeof *dst);
    return (int)(n + ng);
}

static const char *opt_name(int opt)
{
    for (size_t i = 0; i < sizeof group / sizeof *group; i++)
        if (group[i].val == opt)
            return group[i].name;
    return "?";
}

/* A whole-string integer in [lo, hi]. */
static int parse_int(int opt, const char *arg, int lo, int hi, int *out, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (end == arg || *end || errno || v < lo || v > hi) {
        snprintf(err, errlen, "--%s: expected an integer %d..%d, got '%s'", opt_name(opt), lo, hi, arg);
        return -EINVAL;
    }
    *out = (int)v;
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
        rc = parse_int(opt, arg, 1, MODEL_MAX_STAGES, &o->stages, err, errlen);
        break;
    case MODEL_OPT_PARTITION: {
        int n = 0;
        const char *s = arg;
        while (1) {
            char *end;
            errno = 0;
            long v = strtol(s, &end, 10);
            if (end == s || errno || v < 1 || v > MODEL_MAX_LAYERS || (*end && *end != ',')) {
                snprintf(err, errlen, "--partition: expected layer counts like 4,4,4 (each >= 1), "
                         "bad entry %d in '%s'", n, arg);
                return -EINVAL;
            }
            if (n == MODEL_MAX_STAGES) {
                snprintf(err, errlen, "--partition: more than %d stages", MODEL_MAX_STAGES);
                return -EINVAL;
            }
            o->partition[n++] = (int)v;
            if (!*end)
                break;
            s = end + 1;
        }
        o->n_partition = n;
        break;
    }
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

const char *model_options_help(void)
{
    return "model and compute:\n"
           "  --model NAME            gpt3-small (default), gpt3-medium, gpt3-large, gpt3-xl, gpt3-2.7b, tiny\n"
           "  --layers N --hidden D --heads H --vocab V   override the config\n"
           "  --seq-len T             tokens per sequence (default: the model's context)\n"
           "  --stages P              pipeline stages, layers split evenly\n"
           "  --partition A,B,...     layers per stage (must sum to the layer count)\n"
           "  --batch-size N          sequences per iteration (default 8)\n"
           "  --micro-batch-size b    sequences per micro-batch (default 1); N/b micro-batches\n"
           "  --compute C             cpu | emulate:v100|a100|h100[,eff=X] | emulate:fwd=25ms,bwd=75ms[,opt=T]\n"
           "                          | emulate:FILE (written by pipenem calibrate --out)\n"
           "                          | cuda[:fp32|tf32|fp16|bf16] (GPU; emulate:DEV,PREC models one)\n"
           "  --device N              cuda: the GPU (default: the launcher's local rank, else 0)\n"
           "  --dataset D             random (default) or a text file (byte tokens)\n"
           "  --recompute             keep only each layer's input, recompute in backward\n"
           "  --tied-embeddings       one embedding/head matrix, gradients summed across first and last stage\n"
           "  --threads N             OpenMP and OpenBLAS threads (cpu)\n"
           "  --seed S                parameter and data seed (default 1234)\n"
           "  --lr X                  AdamW learning rate (default 6e-4)\n";
}
