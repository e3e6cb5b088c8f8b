/* The shared run configuration: option table, parsing with a message per bad value,
 * cross-field checks, and the canonical text whose hash every rank compares. */
#include "pipeline/runcfg.h"
#include "common/parse.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netem/emulator.h"
#include "netem/profile.h"
#include "pipeline/allreduce.h"
#include "pipeline/transport.h"
#include "schedules/sched.h"
#include "schedules/sim.h"

const model_option_t runcfg_pipeline_group[] = {
    {"schedule", 's', RUNCFG_OPT_SCHEDULE, "S", "pipeline schedule: {schedules}", "1f1b"},
    {"slack", 'k', RUNCFG_OPT_SLACK, "K|auto", "extra micro-batches in flight per hop (1f1b-slack only); auto: the "
     "simulator's K for this run's emulated costs and links (1 with real compute, whose costs are unknown before "
     "the run)", "auto with 1f1b-slack, else 0"},
    {"chunks", 0, RUNCFG_OPT_CHUNKS, "V", "model chunks per stage (interleaved-1f1b; zb-v holds 2)",
     "2 with interleaved-1f1b and zb-v, else 1"},
    {"iters", 'n', RUNCFG_OPT_ITERS, "N", "measured iterations", "10"},
    {"warmup", 'w', RUNCFG_OPT_WARMUP, "W", "iterations run first and left out of the figures", "1"},
    {"timeout", 0, RUNCFG_OPT_TIMEOUT, "SECONDS", "a single wait of a stage longer than this fails the job", "300"},
    {"dp", 0, RUNCFG_OPT_DP, "D",
     "data-parallel replicas of the pipeline: D x P stage processes (rank = d*P + s), each\n"
     "replica on its own data shard, so the global batch is D x --batch-size; each stage's\n"
     "gradients are averaged over its D replicas (ring all-reduce) before the optimizer step",
     "1"},
    {"dp-overlap", 0, RUNCFG_OPT_DP_OVERLAP, NULL,
     "start each gradient bucket's all-reduce as soon as the iteration's last backward has\n"
     "finalised it (the buckets of the last layers first), overlapping the rest of that backward", NULL},
    {"dp-bucket", 0, RUNCFG_OPT_DP_BUCKET, "SIZE",
     "bytes per bucket of the gradient all-reduce (--dp above 1), whole fp32s: 64MB, 25MiB, 4KiB;\n"
     "each stage's gradients go round the ring in pieces of this size", "25MiB, PyTorch DDP's bucket_cap_mb"},
    {"trace", 0, RUNCFG_OPT_TRACE, "FILE", "write the per-op trace as CSV (rank, iteration, op, micro-batch, times)",
     "none"},
    {NULL, 0, 0, NULL, NULL, NULL},
};

const model_option_t runcfg_network_group[] = {
    {"net", 'N', RUNCFG_OPT_NET, "NET",
     "link profiles: default | PROFILE | 0-1=PROFILE,1-2=PROFILE, where PROFILE is\n"
     "DELAY/RATE (10ms/1Gbps) or delay=10ms,jitter=1ms,loss=0.1%,rate=1gbit",
     "default (no shaping)"},
    {"net-dp", 0, RUNCFG_OPT_NET_DP, "PROFILE",
     "profile of the links between the replicas of a stage (--dp): DELAY/RATE or key=value",
     "--net's profile where that is one profile for every link"},
    {"emulator", 'e', RUNCFG_OPT_EMULATOR, "E",
     "how --net is applied: {emulators}. netem: kernel qdiscs in one network\n"
     "namespace per stage (needs root); shim: the transport itself holds back and paces\n"
     "each message (no root); auto: the most faithful one usable here",
     "auto"},
    {"transport", 0, RUNCFG_OPT_TRANSPORT, "T",
     "how stages exchange tensors: {transports}. ucx: host memory, any cluster, every\n"
     "emulator; nccl: GPU memory (needs --compute cuda), shaped by netem only",
     "ucx"},
    {"ucx-tls", 0, RUNCFG_OPT_UCX_TLS, "T", "UCX transports to use (UCX_TLS)",
     "UCX's own choice; tcp between namespaces"},
    {"ucx-devices", 0, RUNCFG_OPT_UCX_DEVICES, "D", "the only network devices UCX listens on (UCX_NET_DEVICES)",
     "lo, or, with one network namespace per stage, that stage's own virtual link (veth)"},
    {NULL, 0, 0, NULL, NULL, NULL},
};

const model_option_t runcfg_multihost_group[] = {
    {"dist-url", 0, RUNCFG_OPT_DIST_URL, "tcp://HOST:PORT", "rank 0's rendezvous address (rank 0 listens there only)",
     "none; needed with more than one rank"},
    {"world-size", 0, RUNCFG_OPT_WORLD_SIZE, "P", "ranks of the job",
     "SLURM_NTASKS, OMPI_COMM_WORLD_SIZE or PMI_SIZE"},
    {"rank", 0, RUNCFG_OPT_RANK, "R", "this process's rank", "SLURM_PROCID, OMPI_COMM_WORLD_RANK or PMI_RANK"},
    {"token", 0, RUNCFG_OPT_TOKEN, "T", "job token shared by all ranks", "PIPENEM_TOKEN, or the launcher's job id"},
    {NULL, 0, 0, NULL, NULL, NULL},
};

void runcfg_defaults(runcfg_t *c)
{
    memset(c, 0, sizeof *c);
    model_options_defaults(&c->model);
    snprintf(c->schedule, sizeof c->schedule, "1f1b");
    c->slack = -1;   /* runcfg_finish: 1 for 1f1b-slack, else 0 */
    c->iters = 10;
    c->warmup = 1;
    snprintf(c->net, sizeof c->net, "default");
    snprintf(c->emulator, sizeof c->emulator, "auto");
    snprintf(c->transport, sizeof c->transport, "ucx");
    c->dp = 1;
    c->world_size = -1;
    c->rank = -1;
    c->timeout = 300;
}

int runcfg_options_table(struct option *dst, size_t cap, const struct option *own)
{
    const model_option_t *const groups[] = {runcfg_pipeline_group, runcfg_network_group, runcfg_multihost_group,
                                            model_options_group};
    return model_options_getopt(dst, cap, own, groups, sizeof groups / sizeof *groups);
}

static int parse_int(const char *name, const char *arg, int lo, int hi, int *out, char *err, size_t errlen)
{
    if (pn_parse_int(arg, lo, hi, out))
        return pn_err(err, errlen, -EINVAL, "--%s: expected an integer %d..%d, got '%s'", name, lo, hi, arg);
    return 0;
}

static int copy_str(const char *name, const char *arg, char *dst, size_t cap, char *err, size_t errlen)
{
    if (!*arg || strlen(arg) >= cap) {
        snprintf(err, errlen, "--%s: value %s", name, *arg ? "too long" : "is empty");
        return -EINVAL;
    }
    memcpy(dst, arg, strlen(arg) + 1);
    return 0;
}

/* --dp-bucket SIZE: whole fp32s (the ring cuts floats), at most RUNCFG_DP_BUCKET_MAX. */
static int parse_dp_bucket(const char *arg, size_t *out, char *err, size_t errlen)
{
    uint64_t v;
    if (pn_parse_size(arg, &v))
        return pn_err(err, errlen, -EINVAL, "--dp-bucket: expected a size such as 64MB, 25MiB or 4096, got '%s'", arg);
    if (v < sizeof(float) || v % sizeof(float) || v > RUNCFG_DP_BUCKET_MAX)
        return pn_err(err, errlen, -EINVAL, "--dp-bucket %s = %llu bytes: want whole fp32s (a multiple of %zu), "
                      "from %zu bytes to 1GiB", arg, (unsigned long long)v, sizeof(float), sizeof(float));
    *out = (size_t)v;
    return 0;
}

int runcfg_option(runcfg_t *c, int opt, const char *arg, char *err, size_t errlen)
{
    int rc = model_options_parse(&c->model, opt, arg, err, errlen);
    if (rc)
        return rc;
    switch (opt) {
    case RUNCFG_OPT_SCHEDULE:
        if (sched_uses_slack(arg) < 0) {
            snprintf(err, errlen, "--schedule: unknown schedule '%s' (known: %s)", arg, sched_names());
            return -EINVAL;
        }
        rc = copy_str("schedule", arg, c->schedule, sizeof c->schedule, err, errlen);
        break;
    case RUNCFG_OPT_SLACK:
        if (!strcmp(arg, "auto"))
            c->slack = -1;
        else
            rc = parse_int("slack", arg, 0, PN_MAX_SLACK, &c->slack, err, errlen);
        break;
    case RUNCFG_OPT_CHUNKS: rc = parse_int("chunks", arg, 1, 64, &c->chunks, err, errlen); break;
    case RUNCFG_OPT_ITERS: rc = parse_int("iters", arg, 1, PN_MAX_ITERS, &c->iters, err, errlen); break;
    case RUNCFG_OPT_WARMUP: rc = parse_int("warmup", arg, 0, PN_MAX_ITERS, &c->warmup, err, errlen); break;
    case RUNCFG_OPT_NET: rc = copy_str("net", arg, c->net, sizeof c->net, err, errlen); break;
    case RUNCFG_OPT_DP: rc = parse_int("dp", arg, 1, PN_MAX_WORLD, &c->dp, err, errlen); break;
    case RUNCFG_OPT_DP_OVERLAP: c->dp_overlap = 1; break;
    case RUNCFG_OPT_DP_BUCKET: rc = parse_dp_bucket(arg, &c->dp_bucket, err, errlen); break;
    case RUNCFG_OPT_NET_DP: {
        netem_profile_t pr;
        char why[200];
        if (netem_profile_parse(arg, &pr, why, sizeof why))
            return pn_err(err, errlen, -EINVAL, "--net-dp: %s", why);
        rc = copy_str("net-dp", arg, c->net_dp, sizeof c->net_dp, err, errlen);
        break;
    }
    case RUNCFG_OPT_EMULATOR:
        if (strcmp(arg, "auto") && !netem_emulator_find(arg)) {
            snprintf(err, errlen, "--emulator: expected %s, got '%s'", netem_emulator_names(), arg);
            return -EINVAL;
        }
        rc = copy_str("emulator", arg, c->emulator, sizeof c->emulator, err, errlen);
        break;
    case RUNCFG_OPT_TRANSPORT:
        if (!transport_kind_find(arg))
            return pn_err(err, errlen, -EINVAL, "--transport: expected %s, got '%s'", transport_kind_names(), arg);
        rc = copy_str("transport", arg, c->transport, sizeof c->transport, err, errlen);
        break;
    case RUNCFG_OPT_DIST_URL: rc = copy_str("dist-url", arg, c->dist_url, sizeof c->dist_url, err, errlen); break;
    case RUNCFG_OPT_WORLD_SIZE: rc = parse_int("world-size", arg, 1, PN_MAX_WORLD, &c->world_size, err, errlen); break;
    case RUNCFG_OPT_RANK: rc = parse_int("rank", arg, 0, PN_MAX_WORLD - 1, &c->rank, err, errlen); break;
    case RUNCFG_OPT_TOKEN: rc = copy_str("token", arg, c->token, sizeof c->token, err, errlen); break;
    case RUNCFG_OPT_TIMEOUT: {
        char *end;
        double v = strtod(arg, &end);
        if (end == arg || *end || !(v > 0) || v > 1e6) {
            snprintf(err, errlen, "--timeout: expected seconds > 0, got '%s'", arg);
            return -EINVAL;
        }
        c->timeout = v;
        break;
    }
    case RUNCFG_OPT_TRACE: rc = copy_str("trace", arg, c->trace, sizeof c->trace, err, errlen); break;
    case RUNCFG_OPT_UCX_TLS: rc = copy_str("ucx-tls", arg, c->ucx_tls, sizeof c->ucx_tls, err, errlen); break;
    case RUNCFG_OPT_UCX_DEVICES:
        rc = copy_str("ucx-devices", arg, c->ucx_devices, sizeof c->ucx_devices, err, errlen);
        break;
    default:
        return 0;
    }
    return rc ? rc : 1;
}

int runcfg_stage_accounts(const runcfg_t *c, model_account_t *out, char *err, size_t errlen)
{
    model_stage_t *st = calloc(1, sizeof *st);
    if (!st)
        return pn_err(err, errlen, -ENOMEM, "stage accounting: out of memory");
    int rc = 0;
    for (int s = 0; s < c->stage_params.stages && !rc; s++) {
        model_stage_params_t mp = c->stage_params;
        char e[256];
        mp.stage = s;
        mp.max_inflight = 1;
        if ((rc = model_stage_init(st, &mp, e, sizeof e))) {
            rc = pn_err(err, errlen, rc, "stage %d: %s", s, e);
            break;
        }
        model_stage_account(st, &out[s]);
        model_stage_destroy(st);
    }
    free(st);
    return rc;
}

/* --slack auto: the smallest K whose simulated iteration is within 1% of the best, for
 * each stage's emulated costs, the --net links and this model's boundary tensors. With
 * real compute the costs are unknown before the run: K = 1. */
static int slack_auto(runcfg_t *c, char *err, size_t errlen)
{
    int P = c->stages, rc = 0;
    c->slack = 1;
    if (!model_compute_modelled(c->stage_params.compute))
        return 0;
    sim_cost_t *cost = calloc((size_t)P, sizeof *cost);
    sim_link_t *link = calloc((size_t)P, sizeof *link);
    netem_profile_t *prof = calloc((size_t)P, sizeof *prof);
    model_account_t *a = calloc((size_t)P, sizeof *a);
    double bytes = 0;
    if (!cost || !link || !prof || !a)
        rc = pn_err(err, errlen, -ENOMEM, "--slack auto: out of memory");
    char why[320];
    if (!rc && (rc = runcfg_stage_accounts(c, a, why, sizeof why)))
        rc = pn_err(err, errlen, rc, "--slack auto: %s", why);
    for (int s = 0; s < P && !rc; s++) {
        cost[s] = (sim_cost_t){a[s].fwd_s, a[s].bwd_s, a[s].opt_s};
        bytes = (double)a[s].boundary_bytes;
    }
    if (!rc && P > 1)
        rc = netem_net_parse(c->net, P, prof, err, errlen);
    for (int l = 0; !rc && l + 1 < P; l++)
        link[l] = (sim_link_t){prof[l].delay, prof[l].rate > 0 ? netem_profile_goodput(prof[l].rate, 1500) : 0, 0};
    sim_config_t cfg = {c->schedule, P, c->micro_batches, SIM_SLACK_AUTO, cost, link, link, bytes, bytes,
                        SIM_SEND_PIPELINED};
    if (!rc)
        rc = sim_slack_auto(&cfg, &c->slack, NULL, err, errlen);
    free(cost);
    free(link);
    free(prof);
    free(a);
    return rc;
}

size_t runcfg_dp_bucket(const runcfg_t *c)
{
    return c->dp_bucket ? c->dp_bucket : ALLREDUCE_BUCKET_DEFAULT;
}

const char *runcfg_net_dp(const runcfg_t *c)
{
    return c->net_dp[0] ? c->net_dp : c->net;
}

/* --dp and --net-dp: D x P processes within the world limit; the DP links take --net when
 * it is one profile, and a per-link --net leaves them to an explicit --net-dp. */
static int dp_finish(const runcfg_t *c, char *err, size_t errlen)
{
    if (c->dp < 1)
        return pn_err(err, errlen, -EINVAL, "--dp %d: expected 1 or more replicas", c->dp);
    if ((long)c->dp * c->stages > PN_MAX_WORLD)
        return pn_err(err, errlen, -EINVAL, "--dp %d x %d stages = %ld processes; at most %d", c->dp, c->stages,
                      (long)c->dp * c->stages, PN_MAX_WORLD);
    /* cuda stages all-reduce through pinned host mirrors over UCX, once per step */
    if (c->dp > 1 && !strcmp(c->transport, "nccl"))
        return pn_err(err, errlen, -EINVAL, "--dp %d with --transport nccl: the gradient all-reduce over NCCL "
                      "(ncclAllReduce on a per-stage communicator) is not built yet; use --transport ucx", c->dp);
    if (c->dp > 1 && c->dp_overlap && !strncmp(c->model.compute, "cuda", 4))
        return pn_err(err, errlen, -EINVAL, "--dp-overlap with --compute %s: the overlap hands each layer's "
                      "gradients to the all-reduce as the backward finalises them in host memory; cuda's reach "
                      "the host in one copy at the step, so there is nothing to overlap yet; drop --dp-overlap",
                      c->model.compute);
    if (c->dp == 1 && c->dp_bucket)
        return pn_err(err, errlen, -EINVAL, "--dp-bucket applies to --dp D with D > 1 (one replica has no "
                      "all-reduce)");
    if (c->dp > 1 && runcfg_dp_bucket(c) < sizeof(float) * (size_t)c->dp)
        return pn_err(err, errlen, -EINVAL, "--dp-bucket %zu bytes with --dp %d: the ring cuts a bucket in %d "
                      "pieces; want at least %zu bytes (one fp32 each)", c->dp_bucket, c->dp, c->dp,
                      sizeof(float) * (size_t)c->dp);
    if (c->dp == 1 || c->net_dp[0])
        return 0;
    netem_profile_t pr;
    if (netem_profile_parse(c->net, &pr, NULL, 0))
        return pn_err(err, errlen, -EINVAL,
                      "--dp %d with the per-link --net %s: give the replicas' links a profile with --net-dp", c->dp,
                      c->net);
    return 0;
}

int runcfg_finish(runcfg_t *c, char *err, size_t errlen)
{
    int rc = model_options_finish(&c->model, &c->stage_params, err, errlen);
    if (rc)
        return rc;
    c->stages = c->stage_params.stages;
    c->micro_batches = c->stage_params.micro_batches;
    if (c->warmup >= c->iters + c->warmup) {
        snprintf(err, errlen, "--warmup %d leaves no measured iteration", c->warmup);
        return -EINVAL;
    }
    if (c->iters + c->warmup > (1 << 24)) {
        snprintf(err, errlen, "--iters + --warmup exceeds %d", 1 << 24);
        return -EINVAL;
    }
    /* The transport's tag holds 24 bits of micro-batch, and every op list is built up
     * front: a typo like --batch-size 255251522 must not spend minutes building one. */
    if (c->micro_batches > PN_MAX_MICRO_BATCHES) {
        snprintf(err, errlen, "--batch-size / --micro-batch-size give %d micro-batches; at most %d", c->micro_batches,
                 PN_MAX_MICRO_BATCHES);
        return -EINVAL;
    }
    if (c->slack < 0 && sched_uses_slack(c->schedule) != 1)
        c->slack = 0;
    else if (c->slack < 0 && (rc = slack_auto(c, err, errlen)))
        return rc;
    if (c->slack && sched_uses_slack(c->schedule) != 1) {
        snprintf(err, errlen, "--slack %d needs --schedule 1f1b-slack (got %s)", c->slack, c->schedule);
        return -EINVAL;
    }
    sched_spec_t spec = {c->schedule, c->stages, c->micro_batches, c->slack, c->chunks};
    int v;
    if ((rc = sched_spec_check(&spec, &v, err, errlen)))
        return rc;
    if (c->stages > 1) {
        netem_profile_t *links = calloc((size_t)c->stages - 1, sizeof *links);
        if (!links)
            return -ENOMEM;
        rc = netem_net_parse(c->net, c->stages, links, err, errlen);
        free(links);
        if (rc)
            return rc;
    } else if (strcmp(c->net, "default")) {
        snprintf(err, errlen, "--net %s needs at least 2 stages (there is no link with --stages 1)", c->net);
        return -EINVAL;
    }
    if ((rc = transport_kind_check(c->transport, c->model.compute, c->emulator, err, errlen)) != 0)
        return rc;
    if ((rc = dp_finish(c, err, errlen)) != 0)
        return rc;
    if (c->world_size > 0 && c->world_size != runcfg_world(c)) {
        if (c->dp > 1)
            return pn_err(err, errlen, -EINVAL, "--world-size %d differs from --dp %d x %d stages (one process each)",
                          c->world_size, c->dp, c->stages);
        snprintf(err, errlen, "--world-size %d differs from the %d stages (one process per stage)", c->world_size,
                 c->stages);
        return -EINVAL;
    }
    if (c->rank >= 0 && c->world_size > 0 && c->rank >= c->world_size) {
        snprintf(err, errlen, "--rank %d is not below --world-size %d", c->rank, c->world_size);
        return -EINVAL;
    }
    return 0;
}

int runcfg_format(const runcfg_t *c, char *buf, size_t len)
{
    const model_options_t *m = &c->model;
    int n = snprintf(buf, len,
                     "model=%s layers=%d hidden=%d heads=%d vocab=%d seq_len=%d stages=%d partition=", m->model,
                     m->layers, m->hidden, m->heads, m->vocab, m->seq_len, c->stages);
    for (int i = 0; i < m->n_partition && n >= 0 && (size_t)n < len; i++)
        n += snprintf(buf + n, len - (size_t)n, "%s%d", i ? "," : "", m->partition[i]);
    if (n >= 0 && (size_t)n < len)
        n += snprintf(buf + n, len - (size_t)n,
                      " batch=%d micro_batch=%d compute=%s dataset=%s recompute=%d tied=%d seed=%llu lr=%.9g"
                      " schedule=%s slack=%d iters=%d warmup=%d net=%s emulator=%s",
                      m->batch_size, m->micro_batch_size, m->compute, m->dataset, m->recompute, m->tied_embeddings,
                      m->seed, (double)m->lr, c->schedule, c->slack, c->iters, c->warmup, c->net, c->emulator);
    if (strcmp(c->transport, "ucx") && n >= 0 && (size_t)n < len) /* as chunks: the default keeps older hashes */
        n += snprintf(buf + n, len - (size_t)n, " transport=%s", c->transport);
    if (c->chunks && n >= 0 && (size_t)n < len) /* only where given: older runs keep their hash */
        n += snprintf(buf + n, len - (size_t)n, " chunks=%d", c->chunks);
    if (c->dp > 1 && n >= 0 && (size_t)n < len) /* as chunks: one replica keeps the older hash */
        n += snprintf(buf + n, len - (size_t)n, " dp=%d dp_overlap=%d net_dp=%s", c->dp, c->dp_overlap,
                      runcfg_net_dp(c));
    if (c->dp > 1 && n >= 0 && (size_t)n < len)
        n += snprintf(buf + n, len - (size_t)n, " dp_bucket=%zu", runcfg_dp_bucket(c));
    return n;
}

int runcfg_describe(const runcfg_t *c, char *buf, size_t len)
{
    const model_stage_params_t *p = &c->stage_params;
    runcfg_t r = *c;
    r.model.layers = p->cfg.layers;
    r.model.hidden = p->cfg.hidden;
    r.model.heads = p->cfg.heads;
    r.model.vocab = p->cfg.vocab;
    r.model.seq_len = p->seq_len;
    r.model.micro_batch_size = p->micro_batch_size;
    r.model.batch_size = p->micro_batch_size * p->micro_batches;
    sched_spec_t spec = {c->schedule, c->stages, c->micro_batches, c->slack, c->chunks};
    int v = 1;
    if (sched_spec_check(&spec, &v, NULL, 0) == 0 && v > 1)
        r.chunks = v; /* several chunks per stage: the layers split evenly over all of them */
    else if (!r.model.n_partition && c->stages <= PN_MAX_STAGES) {
        model_partition_even(p->cfg.layers, c->stages, r.model.partition);
        r.model.n_partition = c->stages;
    }
    return runcfg_format(&r, buf, len);
}

uint64_t runcfg_hash(const runcfg_t *c)
{
    char buf[4096];
    int n = runcfg_format(c, buf, sizeof buf);
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < n && i < (int)sizeof buf; i++) {
        h ^= (unsigned char)buf[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
