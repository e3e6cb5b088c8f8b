/* The run configuration every stage of a job must agree on (model, batch, schedule,
 * compute, network, iterations) plus the per-process launch options, with the option
 * table and parser that `pipenem run`, `stage` and `sweep` share. The model/compute group
 * is models/options.h's; its canonical text is hashed for the bootstrap handshake. */
#ifndef PN_PIPELINE_RUNCFG_H
#define PN_PIPELINE_RUNCFG_H

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/limits.h"
#include "models/options.h"

/* getopt values of the pipeline group (the model group owns 0x1000..0x1fff). */
enum {
    RUNCFG_OPT_SCHEDULE = 0x2000, RUNCFG_OPT_SLACK, RUNCFG_OPT_ITERS, RUNCFG_OPT_WARMUP,
    RUNCFG_OPT_NET, RUNCFG_OPT_EMULATOR, RUNCFG_OPT_DIST_URL, RUNCFG_OPT_WORLD_SIZE,
    RUNCFG_OPT_RANK, RUNCFG_OPT_TOKEN, RUNCFG_OPT_TIMEOUT, RUNCFG_OPT_TRACE,
    RUNCFG_OPT_UCX_TLS, RUNCFG_OPT_UCX_DEVICES, RUNCFG_OPT_TRANSPORT, RUNCFG_OPT_CHUNKS, RUNCFG_OPT_DP,
    RUNCFG_OPT_DP_OVERLAP, RUNCFG_OPT_NET_DP, RUNCFG_OPT_DP_BUCKET, RUNCFG_OPT_END
};

typedef struct runcfg {
    /* ---- shared by every rank (hashed) ---- */
    model_options_t model;   /* --model ... --lr (models/options.h) */
    char schedule[32];
    int slack;               /* K of 1f1b-slack; -1 until runcfg_finish = the default */
    int chunks;              /* model chunks per stage (--chunks); 0 = the schedule's default */
    int iters, warmup;       /* measured iterations after warm-up ones */
    char net[512];           /* --net: "default", a profile, or a per-link list */
    char emulator[16];       /* how --net is applied: "auto", "netem" or "shim" */
    char transport[16];      /* how stages exchange tensors: "ucx" or "nccl" (transport.h) */
    int dp;                  /* --dp: data-parallel replicas of the pipeline (rank = d*P + s) */
    int dp_overlap;          /* --dp-overlap: a layer's all-reduce starts when its gradients are final */
    char net_dp[512];        /* --net-dp: profile of the links between replicas; "" = as --net */
    size_t dp_bucket;        /* --dp-bucket: bytes per all-reduce bucket, whole fp32s; 0 = not given */
    /* ---- per process (not hashed) ---- */
    char dist_url[300];
    int world_size, rank;    /* -1 = from the launcher's environment */
    char token[257];         /* "" = from the launcher's environment */
    double timeout;          /* seconds a single wait may take before the job fails */
    char trace[512];         /* this rank's trace CSV ("" = none) */
    char ucx_tls[64], ucx_devices[64];
    /* ---- derived by runcfg_finish ---- */
    int stages, micro_batches;
    model_stage_params_t stage_params;  /* for stage 0; the caller sets stage, max_inflight */
} runcfg_t;

void runcfg_defaults(runcfg_t *c);

/* The caller's own long options (may be NULL) followed by the model group's and the
 * pipeline group's, terminated, into dst. Returns the entry count or -ENOSPC. */
int runcfg_options_table(struct option *dst, size_t cap, const struct option *own) PN_WUR;
/* The option groups this module parses (name-NULL terminated): schedule and iterations,
 * the links and their emulation, and the multi-host launch of `pipenem stage`. */
extern const model_option_t runcfg_pipeline_group[];
extern const model_option_t runcfg_network_group[];
extern const model_option_t runcfg_multihost_group[];

/* Applies one parsed option: 1 if it belongs to either group, 0 if not, -EINVAL with a
 * message naming the option and the bad value. */
int runcfg_option(runcfg_t *c, int opt, const char *arg, char *err, size_t errlen) PN_WUR;

/* Cross-field checks and derived values: the model group's checks, schedule name and
 * slack, warmup below iters, --net against the stage count and emulator, --dp and
 * --net-dp, world size against D x stages. -EINVAL naming the combination that is wrong. */
int runcfg_finish(runcfg_t *c, char *err, size_t errlen) PN_WUR;

/* The rank layout of --dp: rank = d*P + s, replica d of stage s; world = D*P. */
static inline int runcfg_world(const runcfg_t *c) { return c->dp * c->stages; }
static inline int runcfg_replica(const runcfg_t *c, int rank) { return rank / c->stages; }
static inline int runcfg_stage_of(const runcfg_t *c, int rank) { return rank % c->stages; }
static inline int runcfg_rank_of(const runcfg_t *c, int replica, int stage) { return replica * c->stages + stage; }

/* The profile of the links between replicas (after runcfg_finish): --net-dp, or --net
 * when that is one profile for every pipeline link. */
const char *runcfg_net_dp(const runcfg_t *c);

/* The all-reduce's bucket size in bytes: --dp-bucket, else ALLREDUCE_BUCKET_DEFAULT (25 MiB). */
size_t runcfg_dp_bucket(const runcfg_t *c);
/* The largest --dp-bucket (a bucket's bytes fit an int in runs.csv). */
#define RUNCFG_DP_BUCKET_MAX ((size_t)1 << 30)

/* model_stage_account of every stage (out[stages]) as c's model and compute build it, one
 * micro-batch in flight: FLOPs, boundary bytes, the memory blocks and, with a modelled
 * compute (emulate), the modelled seconds. After runcfg_finish. */
int runcfg_stage_accounts(const runcfg_t *c, model_account_t *out, char *err, size_t errlen) PN_WUR;

/* "model=tiny seq_len=... " of the shared fields as given (0 = the model's default), in a
 * fixed order: what ranks compare. */
int runcfg_format(const runcfg_t *c, char *buf, size_t len);
/* The same fields as they resolved (after runcfg_finish): the model's real sizes, the
 * batch and the compute backend, for a run's header. */
int runcfg_describe(const runcfg_t *c, char *buf, size_t len);
/* FNV-1a 64 of runcfg_format: equal exactly when ranks agree. */
uint64_t runcfg_hash(const runcfg_t *c);

#endif
