/* The model/compute option group shared by `pipenem run | stage | sweep | calibrate`:
 * one parser for --model --layers --hidden --heads --vocab --seq-len --stages --partition
 * --batch-size --micro-batch-size --compute --dataset --recompute --tied-embeddings
 * --threads --seed --lr, with a specific message for every bad value or combination. */
#ifndef PN_MODELS_OPTIONS_H
#define PN_MODELS_OPTIONS_H

#include <getopt.h>

#include "common/err.h"
#include "common/limits.h"
#include "models/model.h"

/* One option of the command-line vocabulary. Every option group is a table of these (the
 * model group below, the pipeline, network and multi-host groups in pipeline/runcfg.h, the
 * grid, output and local groups in bench/), and `pipenem` builds each command's getopt
 * table and --help text from them, so a spelling means one thing in every command. */
typedef struct {
    const char *name;   /* long option, without "--" */
    int letter;         /* short option, or 0 */
    int val;            /* what the group's parser switches on (unique across groups) */
    const char *arg;    /* the value's name in --help ("N"); NULL = a flag */
    const char *help;   /* what it does; a '\n' starts a continuation line */
    const char *def;    /* the default as --help shows it; NULL = none */
} model_option_t;

/* getopt values of the group (above every short option, below 0x2000). */
enum {
    MODEL_OPT_MODEL = 0x1000, MODEL_OPT_LAYERS, MODEL_OPT_HIDDEN, MODEL_OPT_HEADS,
    MODEL_OPT_VOCAB, MODEL_OPT_SEQ_LEN, MODEL_OPT_STAGES, MODEL_OPT_PARTITION,
    MODEL_OPT_BATCH_SIZE, MODEL_OPT_MICRO_BATCH_SIZE, MODEL_OPT_COMPUTE, MODEL_OPT_DATASET,
    MODEL_OPT_RECOMPUTE, MODEL_OPT_TIED_EMBEDDINGS, MODEL_OPT_THREADS, MODEL_OPT_SEED,
    MODEL_OPT_LR, MODEL_OPT_DEVICE, MODEL_OPT_END
};

typedef struct {
    char model[32];
    int layers, hidden, heads, vocab;   /* overrides of the config; 0 = the config's */
    int seq_len;                        /* 0 = the config's context */
    int stages;                         /* 0 = the number of --partition entries, else 1 */
    int partition[PN_MAX_STAGES];
    int n_partition;                    /* 0 = even split */
    int batch_size, micro_batch_size;   /* micro-batches per iteration = batch / micro-batch */
    char compute[512];
    char dataset[1024];
    int recompute, tied_embeddings, threads;
    int device;                         /* --device N for cuda, -1 = not given */
    unsigned long long seed;
    float lr;
} model_options_t;

/* gpt3-small, seq-len = context, batch 8, micro-batch 1, cpu, random data, seed 1234,
 * lr 6e-4, threads 0 (the libraries' default). Callers may change defaults afterwards. */
void model_options_defaults(model_options_t *o);

/* The model and compute group (name-NULL terminated). */
extern const model_option_t model_options_group[];

/* getopt_long's table: the caller's own long options (NULL-name terminated, may be NULL),
 * then every option of the groups, terminated, into dst. Returns the number of entries
 * without the terminator, or -ENOSPC if cap is too small. */
int model_options_getopt(struct option *dst, size_t cap, const struct option *own,
                         const model_option_t *const *groups, size_t n_groups) PN_WUR;

/* The caller's own long options (NULL-name terminated, may be NULL) followed by the
 * group's, terminated, into dst. Returns the number of entries without the terminator,
 * or -ENOSPC if cap is too small (cap >= own + MODEL_OPT_END - MODEL_OPT_MODEL + 1). */
int model_options_table(struct option *dst, size_t cap, const struct option *own)
    PN_WUR;

/* Consumes one getopt result: 1 if `opt` belongs to the group and `arg` was valid,
 * 0 if it is not one of the group's, -EINVAL with a message naming the option. */
int model_options_parse(model_options_t *o, int opt, const char *arg, char *err, size_t errlen)
    PN_WUR;

/* Resolves the config and overrides and checks every combination (heads dividing the
 * width, seq-len above the context, batch not divisible by micro-batch, partition not
 * summing to the layers or not matching --stages, more stages than layers, unknown
 * compute backend or device, unreadable dataset). Fills p for stage 0 with max_inflight 0
 * (all); the caller sets p->stage and p->max_inflight. p->partition points into o. */
int model_options_finish(model_options_t *o, model_stage_params_t *p, char *err, size_t errlen)
    PN_WUR;

#endif
