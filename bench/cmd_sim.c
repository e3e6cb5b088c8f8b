/* pipenem sim: predict the iteration time, bubble fraction and per-stage busy share of
 * one configuration for each schedule asked for, with the discrete-event simulator
 * (schedules/sim.h). Costs come from the command line or from a model under the emulate
 * backend's device model (models/); links from --net (netem/profile.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench/cli.h"
#include "bench/predict.h"
#include "bench/vocab.h"
#include "common/parse.h"
#include "pipeline/allreduce.h"
#include "pipeline/runcfg.h"
#include "common/limits.h"
#include "models/model.h"
#include "netem/profile.h"
#include "schedules/sched.h"
#include "schedules/sim.h"

#define CMD "sim"
#define MAX_SCHEDULES 16
#define STR_(x) #x
#define STR(x) STR_(x)

enum {
    SIM_OPT_FWD = 0x3100, SIM_OPT_BWD, SIM_OPT_OPT, SIM_OPT_BYTES, SIM_OPT_GRAD, SIM_OPT_OVERHEAD, SIM_OPT_MODE,
    SIM_OPT_CRIT, SIM_OPT_PARAM_BYTES, SIM_OPT_BUCKETS,
};

static const model_option_t cost_group[] = {
    {"fwd-ms", 'f', SIM_OPT_FWD, "T[,T..]", "forward time per micro-batch, ms: one value or one per stage",
     "none: required without --model"},
    {"bwd-ms", 'B', SIM_OPT_BWD, "T[,T..]", "backward time per micro-batch, ms: one value or one per stage",
     "none: required without --model"},
    {"opt-ms", 0, SIM_OPT_OPT, "T[,T..]", "optimizer step per iteration, ms", "0"},
    {"bytes", 0, SIM_OPT_BYTES, "SIZE", "bytes per activation message, e.g. 6.3MB, 4MiB", "0"},
    {"grad-bytes", 0, SIM_OPT_GRAD, "SIZE", "bytes per gradient message", "--bytes"},
    {"param-bytes", 0, SIM_OPT_PARAM_BYTES, "SIZE[,SIZE..]",
     "with --dp: gradient bytes each stage all-reduces per iteration, one value or one per stage",
     "none: required with --dp and without --model"},
    {"buckets", 0, SIM_OPT_BUCKETS, "N", "with --dp and --param-bytes: N equal all-reduce buckets per stage, "
     "ready in turn over the last backward, instead of --dp-bucket's pieces", "none: --dp-bucket's pieces"},
    {NULL, 0, 0, NULL, NULL, NULL},
};

static const model_option_t link_group[] = {
    {"overhead-us", 0, SIM_OPT_OVERHEAD, "T", "per-message overhead occupying the link, us", "0"},
    {"send-mode", 0, SIM_OPT_MODE, "MODE",
     "pipelined, or blocking: the next send of a stage waits until the previous one was delivered", "pipelined"},
    {"critical-path", 0, SIM_OPT_CRIT, NULL, "list the ops on each schedule's critical path", NULL},
    {NULL, 0, 0, NULL, NULL, NULL},
};

static const int sched_only[] = {RUNCFG_OPT_SCHEDULE, RUNCFG_OPT_SLACK, RUNCFG_OPT_CHUNKS, RUNCFG_OPT_DP,
                                 RUNCFG_OPT_DP_OVERLAP, RUNCFG_OPT_DP_BUCKET, 0};
static const int size_only[] = {MODEL_OPT_STAGES, MODEL_OPT_BATCH_SIZE, MODEL_OPT_MICRO_BATCH_SIZE, 0};
static const int model_only[] = {MODEL_OPT_MODEL, MODEL_OPT_SEQ_LEN, MODEL_OPT_COMPUTE, 0};
static const int net_only[] = {RUNCFG_OPT_NET, RUNCFG_OPT_NET_DP, 0};

static const cli_section_t sections[] = {
    {"schedules and sizes", runcfg_pipeline_group, sched_only, NULL, 0},
    {NULL, model_options_group, size_only, NULL, 0},
    {NULL, vocab_analysis_group, NULL, NULL, 0},
    {"costs, given", cost_group, NULL, NULL, 0},
    {"or costs from a model", model_options_group, model_only, NULL, 0},
    {"links", runcfg_network_group, net_only, NULL, 0},
    {NULL, link_group, NULL, NULL, 0},
    {NULL, NULL, NULL, NULL, 0},
};

static const cli_override_t overrides[] = {
    {RUNCFG_OPT_SCHEDULE, "LIST", "comma-separated schedules: {schedules}", "all of them"},
    {RUNCFG_OPT_SLACK, "K|auto", "extra micro-batches in flight per hop of 1f1b-slack, or auto: the smallest K in 0.."
     STR(SIM_SLACK_AUTO_MAX) " within 1% of the best", "auto"},
    {MODEL_OPT_STAGES, NULL, "pipeline stages", "3"},
    {MODEL_OPT_BATCH_SIZE, NULL, "sequences per iteration; with --micro-batch-size b, M = N / b", "64"},
    {VOCAB_OPT_MICRO_BATCHES, NULL, "micro-batches per iteration, instead of --batch-size / --micro-batch-size",
     "64 / 1"},
    {MODEL_OPT_MODEL, NULL, "take costs and message sizes from a model: {models}", "none"},
    {MODEL_OPT_SEQ_LEN, NULL, "sequence length of --model", NULL},
    {MODEL_OPT_COMPUTE, "emulate:..", "device model of --model: emulate:DEV[,eff=X] (DEV: {devices}), "
     "emulate:fwd=25ms,bwd=75ms or emulate:FILE", "emulate:v100"},
    {RUNCFG_OPT_NET, NULL, "link profile between neighbouring stages: 10ms/1Gbps, delay=..,rate=.., or "
     "0-1=P,1-2=P", "free links"},
    {RUNCFG_OPT_DP, NULL, "data-parallel replicas of the pipeline: each stage's gradients are ring all-reduced "
     "over its D replicas (2(D-1) steps of bytes/D) before its optimizer step", "1"},
    {RUNCFG_OPT_NET_DP, NULL, "profile of the links between replicas (--dp)", "--net where that is one profile, "
     "else free links"},
    {RUNCFG_OPT_DP_BUCKET, NULL, "bytes per all-reduce bucket (--dp), whole fp32s: each stage's gradients (of "
     "--model, or --param-bytes) cut in pieces of this size, as the runtime cuts them", "25MiB"},
    {0, NULL, NULL, NULL},
};

static const cli_deprecated_t deprecated[] = {
    {'p', NULL, MODEL_OPT_STAGES},
    {'b', NULL, MODEL_OPT_BATCH_SIZE},
    {'n', NULL, RUNCFG_OPT_NET},
    {0, NULL, 0},
};

static const cli_spec_t spec = {
    CMD,
    "usage: pipenem sim [options]\n"
    "predict iteration time, bubble fraction and per-stage busy share with the simulator.\n\n",
    sections, overrides, deprecated,
    "\nTimes are printed in ms. The no_delay column is the same configuration on free links\n"
    "(no delay, no rate limit).\n",
};

/* One value, or one per stage, each a finite number >= 0; scaled by `unit`. */
static int parse_list(const char *opt, const char *s, int P, double unit, double *out)
{
    int n = 0;
    const char *p = s;
    double vals[PN_MAX_STAGES];
    while (1) {
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || (*end && *end != ',') || errno || !isfinite(v) || v < 0)
            return cli_usage_error(CMD, "%s '%s': '%.*s' is not a number >= 0", opt, s,
                                   (int)strcspn(p, ","), p);
        if (n == PN_MAX_STAGES)
            return cli_usage_error(CMD, "%s: more than %d values", opt, PN_MAX_STAGES);
        vals[n++] = v * unit;
        if (!*end)
            break;
        p = end + 1;
    }
    if (n != 1 && n != P)
        return cli_usage_error(CMD, "%s has %d values; want 1 or %d (one per stage)", opt, n, P);
    for (int i = 0; i < P; i++)
        out[i] = vals[n == 1 ? 0 : i];
    return 0;
}

/* A byte count with an optional unit (common/parse.h). */
static int parse_size(const char *opt, const char *s, double *out)
{
    uint64_t v;
    if (pn_parse_size(s, &v))
        return cli_usage_error(CMD, "%s '%s': want a size >= 0 such as 6300000, 6.3MB or 4MiB", opt, s);
    *out = (double)v;
    return 0;
}

static void print_critical(const char *name, const sim_result_t *r, int list)
{
    double prev = 0, compute = 0, comm = 0;
    size_t hops = 0;
    for (size_t i = 0; i < r->n_critical; i++) {
        sim_ref_t c = r->critical[i];
        sched_op_kind_t k = r->plan.ops[c.stage][c.op].kind;
        double end = r->span[c.stage][c.op].end;
        if (k == SCHED_SEND_ACT || k == SCHED_SEND_GRAD) {
            comm += end - prev;
            hops++;
        } else {
            compute += end - prev;
        }
        prev = end;
    }
    printf("# critical path %s: %zu ops, compute %.3f ms, communication %.3f ms over %zu messages\n",
           name, r->n_critical, compute * 1e3, comm * 1e3, hops);
    if (!list)
        return;
    int col = 0;
    for (size_t i = 0; i < r->n_critical; i++) {
        sim_ref_t c = r->critical[i];
        char tok[32];
        sched_op_format(&r->plan.ops[c.stage][c.op], tok, sizeof tok);
        if (col == 0 || col > 96)
            col = printf("%s#  ", col ? "\n" : "");
        col += printf(" s%d:%s", c.stage, tok);
    }
    putchar('\n');
}

/* Per-stage costs and the boundary tensor size of a model under an emulate device
 * model: each stage is built (emulate holds no parameters or activations) and its
 * modelled seconds read back. Returns 0, or CLI_USAGE with the models' message. */
static int model_costs(const char *name, int seq_len, const char *compute, int P, int M, int mbs, double cap,
                       sim_cost_t *cost, double *bytes, predict_buckets_t *buckets, char *label, size_t labellen)
{
    char err[512];
    model_stage_params_t p;
    memset(&p, 0, sizeof p);
    if (model_config_get(name, &p.cfg, err, sizeof err))
        return cli_usage_error(CMD, "--model: %s", err);
    p.seq_len = seq_len ? seq_len : p.cfg.context;
    p.micro_batch_size = mbs;
    p.micro_batches = M;
    p.stages = P;
    p.max_inflight = 1;
    p.compute = compute;
    p.dataset = "random";
    p.seed = 1;
    p.threads = 1;
    p.lr = 1e-4f;
    for (int s = 0; s < P; s++) {
        model_stage_t st;
        p.stage = s;
        if (model_stage_init(&st, &p, err, sizeof err))
            return cli_usage_error(CMD, "--model %s --compute %s, stage %d: %s", name, compute, s, err);
        model_account_t a;
        model_stage_account(&st, &a);
        cost[s] = (sim_cost_t){a.fwd_s, a.bwd_s, a.opt_s};
        *bytes = (double)a.boundary_bytes;
        predict_dp_buckets(&st, cap, &buckets[s]);
        if (s == 0)
            model_stage_describe(&st, label, labellen);
        model_stage_destroy(&st);
    }
    char dev[160];
    snprintf(dev, sizeof dev, "%.159s", label);
    snprintf(label, labellen, "%.32s seq %d micro-batch %d on %s", name, p.seq_len, mbs, dev);
    return 0;
}

typedef struct {
    const char *sched_arg, *fwd_arg, *bwd_arg, *opt_arg, *net, *slack_arg, *grad_arg, *model, *compute, *bytes_arg;
    const char *net_dp, *param_arg, *bucket_arg;
    int seq_len, P, M, batch, mbs, have_b, have_u, list_path, K, V, derived;
    int dp, dp_overlap, n_buckets;
    double act_bytes, grad_bytes, overhead_us, dp_bucket; /* dp_bucket: bytes, 0 = the runtime's default */
    sim_send_mode_t mode;
    char sched_buf[512];
    const char *scheds[MAX_SCHEDULES];
    int n_sched;
} sim_args_t;

static int sim_option(sim_args_t *a, int c, const char *arg)
{
    switch (c) {
    case RUNCFG_OPT_SCHEDULE: a->sched_arg = arg; return 0;
    case MODEL_OPT_STAGES: return cli_parse_int(CMD, "--stages", arg, 1, PN_MAX_STAGES, &a->P);
    case VOCAB_OPT_MICRO_BATCHES: return cli_parse_int(CMD, "--micro-batches", arg, 1, PN_MAX_MICRO_BATCHES, &a->M);
    case MODEL_OPT_BATCH_SIZE:
        a->have_b = 1;
        return cli_parse_int(CMD, "--batch-size", arg, 1, 1 << 30, &a->batch);
    case MODEL_OPT_MICRO_BATCH_SIZE:
        a->have_u = 1;
        return cli_parse_int(CMD, "--micro-batch-size", arg, 1, 1 << 30, &a->mbs);
    case SIM_OPT_FWD: a->fwd_arg = arg; return 0;
    case SIM_OPT_BWD: a->bwd_arg = arg; return 0;
    case SIM_OPT_OPT: a->opt_arg = arg; return 0;
    case SIM_OPT_BYTES: a->bytes_arg = arg; return parse_size("--bytes", arg, &a->act_bytes);
    case SIM_OPT_GRAD: a->grad_arg = arg; return 0;
    case RUNCFG_OPT_NET: a->net = arg; return 0;
    case SIM_OPT_OVERHEAD: {
        char *end;
        a->overhead_us = strtod(arg, &end);
        if (end == arg || *end || !isfinite(a->overhead_us) || a->overhead_us < 0)
            return cli_usage_error(CMD, "--overhead-us '%s': want a number >= 0", arg);
        return 0;
    }
    case SIM_OPT_MODE:
        if (sim_send_mode_parse(arg, &a->mode))
            return cli_usage_error(CMD, "--send-mode '%s': want pipelined or blocking", arg);
        return 0;
    case RUNCFG_OPT_SLACK: a->slack_arg = arg; return 0;
    case RUNCFG_OPT_CHUNKS: return cli_parse_int(CMD, "--chunks", arg, 1, 64, &a->V);
    case SIM_OPT_CRIT: a->list_path = 1; return 0;
    case RUNCFG_OPT_DP: return cli_parse_int(CMD, "--dp", arg, 1, PN_MAX_WORLD, &a->dp);
    case RUNCFG_OPT_DP_OVERLAP: a->dp_overlap = 1; return 0;
    case RUNCFG_OPT_NET_DP: a->net_dp = arg; return 0;
    case SIM_OPT_PARAM_BYTES: a->param_arg = arg; return 0;
    case SIM_OPT_BUCKETS: return cli_parse_int(CMD, "--buckets", arg, 1, PREDICT_MAX_BUCKETS, &a->n_buckets);
    case RUNCFG_OPT_DP_BUCKET: { /* run's parser: the same sizes and messages */
        runcfg_t scratch;
        char err[256];
        runcfg_defaults(&scratch);
        if (runcfg_option(&scratch, c, arg, err, sizeof err) < 0)
            return cli_usage_error(CMD, "%s", err);
        a->bucket_arg = arg;
        a->dp_bucket = (double)scratch.dp_bucket;
        return 0;
    }
    case MODEL_OPT_MODEL: a->model = arg; return 0;
    case MODEL_OPT_SEQ_LEN: return cli_parse_int(CMD, "--seq-len", arg, 1, 1 << 20, &a->seq_len);
    case MODEL_OPT_COMPUTE: a->compute = arg; return 0;
    default: return cli_usage_error(CMD, "option '%s' is not handled", cli_opt_name(&spec, c));
    }
}

/* The combinations: costs from the flags or from --model, M given or derived. */
static int sim_check(sim_args_t *a)
{
    if (!a->model && (a->seq_len || a->compute))
        return cli_usage_error(CMD, "%s applies to --model", a->seq_len ? "--seq-len" : "--compute");
    if (a->model && (a->fwd_arg || a->bwd_arg || strcmp(a->opt_arg, "0") || a->bytes_arg || a->grad_arg))
        return cli_usage_error(CMD, "--model gives the costs and sizes; drop %s",
                               a->fwd_arg ? "--fwd-ms" : a->bwd_arg ? "--bwd-ms" : a->bytes_arg ? "--bytes"
                               : a->grad_arg ? "--grad-bytes" : "--opt-ms");
    if (a->dp == 1 && (a->dp_overlap || a->net_dp || a->param_arg || a->n_buckets || a->bucket_arg))
        return cli_usage_error(CMD, "%s applies to --dp D with D > 1", a->dp_overlap ? "--dp-overlap"
                               : a->net_dp ? "--net-dp" : a->param_arg ? "--param-bytes"
                               : a->n_buckets ? "--buckets" : "--dp-bucket");
    if (a->n_buckets && a->bucket_arg)
        return cli_usage_error(CMD, "give --buckets N (equal buckets) or --dp-bucket SIZE (the runtime's pieces), "
                               "not both");
    if (a->bucket_arg && a->dp_bucket < 4.0 * a->dp)
        return cli_usage_error(CMD, "--dp-bucket %s with --dp %d: the ring cuts a bucket in %d pieces; want at "
                               "least %d bytes (one fp32 each)", a->bucket_arg, a->dp, a->dp, 4 * a->dp);
    if (a->model && (a->param_arg || a->n_buckets))
        return cli_usage_error(CMD, "--model gives the gradient buckets; drop %s",
                               a->param_arg ? "--param-bytes" : "--buckets");
    if (a->dp > 1 && !a->model && !a->param_arg)
        return cli_usage_error(CMD, "--dp %d needs --param-bytes (gradient bytes per stage) or --model", a->dp);
    if (a->compute && !model_compute_modelled(a->compute))
        return cli_usage_error(CMD, "--compute '%s': the simulator needs modelled times, "
                               "use emulate:DEVICE, emulate:fwd=..,bwd=.. or emulate:FILE", a->compute);
    if (a->M && (a->have_b || a->have_u)) {
        if (a->have_b && a->have_u && a->batch / a->mbs != a->M)
            return cli_usage_error(CMD, "--micro-batches %d contradicts --batch-size %d / "
                                   "--micro-batch-size %d", a->M, a->batch, a->mbs);
        if (!(a->have_b && a->have_u))
            return cli_usage_error(CMD, "give --micro-batches, or --batch-size with --micro-batch-size, "
                                   "not both");
    }
    a->derived = !a->M;
    if (!a->M) {
        if (a->batch % a->mbs)
            return cli_usage_error(CMD, "--batch-size %d is not a multiple of --micro-batch-size %d",
                                   a->batch, a->mbs);
        a->M = a->batch / a->mbs;
    }
    if (!a->model && (!a->fwd_arg || !a->bwd_arg))
        return cli_usage_error(CMD, "%s is required (time per micro-batch per stage, ms)",
                               !a->fwd_arg ? "--fwd-ms" : "--bwd-ms");
    a->K = SIM_SLACK_AUTO;
    if (strcmp(a->slack_arg, "auto") && cli_parse_int(CMD, "--slack", a->slack_arg, 0, PN_MAX_SLACK, &a->K))
        return CLI_USAGE;
    a->grad_bytes = a->act_bytes;
    if (a->grad_arg && parse_size("--grad-bytes", a->grad_arg, &a->grad_bytes))
        return CLI_USAGE;
    snprintf(a->sched_buf, sizeof a->sched_buf, "%s", a->sched_arg ? a->sched_arg : sched_default_names());
    for (char *save = NULL, *t = strtok_r(a->sched_buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        if (sched_uses_slack(t) < 0)
            return cli_usage_error(CMD, "unknown schedule '%s' (known: %s)", t, sched_names());
        if (a->n_sched == MAX_SCHEDULES)
            return cli_usage_error(CMD, "more than %d schedules", MAX_SCHEDULES);
        a->scheds[a->n_sched++] = t;
    }
    if (!a->n_sched)
        return cli_usage_error(CMD, "--schedule is empty (known: %s)", sched_names());
    return 0;
}

/* 0, -1 after --help, or CLI_USAGE after a message. */
static int sim_parse(int argc, char **argv, sim_args_t *a)
{
    cli_parser_t p;
    if (cli_parser_init(&p, &spec))
        return cli_usage_error(CMD, "internal: the option table is inconsistent");
    int c;
    while ((c = cli_next(&p, argc, argv)) != -1) {
        if (c == -2)
            return CLI_USAGE;
        if (c == CLI_OPT_HELP) {
            cli_help(&spec, stdout);
            return -1;
        }
        if (sim_option(a, c, optarg))
            return CLI_USAGE;
    }
    if (optind < argc)
        return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    return sim_check(a);
}

/* --param-bytes into buckets: --buckets equal ones per stage, ready in turn, or else the
 * runtime's pieces of --dp-bucket bytes. */
static int param_buckets(const sim_args_t *a, predict_buckets_t *b)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", a->param_arg);
    int n = 0, k = a->n_buckets;
    double v[PN_MAX_STAGES];
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        uint64_t x;
        if (pn_parse_size(t, &x))
            return cli_usage_error(CMD, "--param-bytes '%s': '%s' is not a size such as 85MB or 4MiB", a->param_arg, t);
        if (n == PN_MAX_STAGES)
            return cli_usage_error(CMD, "--param-bytes: more than %d values", PN_MAX_STAGES);
        v[n++] = (double)x;
    }
    if (n != 1 && n != a->P)
        return cli_usage_error(CMD, "--param-bytes has %d values; want 1 or %d (one per stage)", n, a->P);
    for (int s = 0; s < a->P; s++) {
        if (!k) {
            predict_dp_buckets_bytes(v[n == 1 ? 0 : s], a->dp_bucket, &b[s]);
            continue;
        }
        b[s].n = k;
        b[s].total = v[n == 1 ? 0 : s];
        for (int i = 0; i < k; i++) {
            b[s].bytes[i] = b[s].total / k;
            b[s].ready[i] = (double)(i + 1) / k;
        }
    }
    return 0;
}

/* Per-stage costs: from --model, or from the --fwd-ms/--bwd-ms/--opt-ms lists; with
 * --dp, each stage's all-reduce buckets. */
static int sim_costs(sim_args_t *a, sim_cost_t *cost, predict_buckets_t *buckets, char *label, size_t labellen)
{
    if (a->model) {
        if (!a->compute)
            a->compute = "emulate:v100";
        int rc = model_costs(a->model, a->seq_len, a->compute, a->P, a->M, a->mbs, a->dp_bucket, cost,
                             &a->act_bytes, buckets, label, labellen);
        a->grad_bytes = a->act_bytes;
        return rc;
    }
    if (a->dp > 1 && param_buckets(a, buckets))
        return CLI_USAGE;
    const char *args[3] = {a->fwd_arg, a->bwd_arg, a->opt_arg}, *names[3] = {"--fwd-ms", "--bwd-ms", "--opt-ms"};
    double *tmp = calloc((size_t)a->P, sizeof *tmp);
    if (!tmp)
        return CLI_FAIL;
    for (int k = 0; k < 3; k++) {
        if (parse_list(names[k], args[k], a->P, 1e-3, tmp)) {
            free(tmp);
            return CLI_USAGE;
        }
        for (int s = 0; s < a->P; s++)
            *(k == 0 ? &cost[s].fwd : k == 1 ? &cost[s].bwd : &cost[s].opt) = tmp[s];
    }
    free(tmp);
    return 0;
}

/* Both directions of a link share its profile: rate is per direction (full duplex).
 * Jitter and loss have no counterpart in the model; *ignored says they were given. */
static int sim_links(const sim_args_t *a, sim_link_t *links, netem_profile_t *profiles, int *ignored)
{
    *ignored = 0;
    if (a->net) {
        char perr[256];
        if (netem_net_parse(a->net, a->P, profiles, perr, sizeof perr))
            return cli_usage_error(CMD, "--net '%s': %s", a->net, perr);
        for (int i = 0; i + 1 < a->P; i++) {
            links[i].delay = profiles[i].delay;
            links[i].bandwidth = profiles[i].rate;
            *ignored |= profiles[i].jitter > 0 || profiles[i].loss > 0;
        }
    }
    for (int i = 0; i + 1 < a->P; i++)
        links[i].overhead = a->overhead_us * 1e-6;
    return 0;
}

/* The links between replicas: --net-dp, or --net where it is one profile, else free;
 * modelled like the pipeline's links (delay, rate, --overhead-us). *label names them. */
static int sim_dp_link(const sim_args_t *a, sim_link_t *l, char *label, size_t len, int *ignored)
{
    const char *src = a->net_dp ? a->net_dp : a->net;
    netem_profile_t pr;
    char perr[256];
    memset(l, 0, sizeof *l);
    l->overhead = a->overhead_us * 1e-6;
    snprintf(label, len, "free");
    if (!src)
        return 0;
    if (netem_profile_parse(src, &pr, perr, sizeof perr)) {
        if (a->net_dp)
            return cli_usage_error(CMD, "--net-dp '%s': %s", a->net_dp, perr);
        snprintf(label, len, "free (--net is per link: give --net-dp)");
        return 0;
    }
    l->delay = pr.delay;
    l->bandwidth = pr.rate;
    *ignored |= pr.jitter > 0 || pr.loss > 0;
    if (!netem_profile_is_default(&pr) && netem_profile_label(&pr, label, len) < 0)
        snprintf(label, len, "?");
    return 0;
}

static void print_costs(const char *what, const sim_cost_t *cost, int P, int k)
{
    printf("%s", what);
    for (int s = 0; s < P; s++)
        printf("%s%.3f", s ? "/" : " ", (k == 0 ? cost[s].fwd : k == 1 ? cost[s].bwd : cost[s].opt) * 1e3);
}

/* With --dp: the replicas, their links and each stage's buckets. */
static void print_dp(const sim_args_t *a, const char *dp_label, const predict_buckets_t *b)
{
    if (a->dp < 2)
        return;
    printf("# data parallel: %d replicas (%d processes, rank = d*%d + s), global batch %d x %d; ring all-reduce "
           "over %s, %s\n#  gradient MB per stage (buckets", a->dp, a->dp * a->P, a->P, a->dp, a->M * a->mbs, dp_label,
           a->dp_overlap ? "overlapped with the backward (--dp-overlap)" : "after the last backward");
    if (a->n_buckets)
        printf(", %d equal ones):", a->n_buckets);
    else
        printf(" of %.0f B):", a->dp_bucket > 0 ? a->dp_bucket : (double)ALLREDUCE_BUCKET_DEFAULT);
    for (int s = 0; s < a->P; s++)
        if (s < 8 || s + 1 == a->P)
            printf("%s %.1f (%d)", s ? "," : "", b[s].total / 1e6, b[s].n);
        else if (s == 8)
            printf(", ...");
    putchar('\n');
}

static void print_header(const sim_args_t *a, const sim_cost_t *cost, const netem_profile_t *profiles,
                         const char *model_label, int ignored, const char *dp_label, const predict_buckets_t *b)
{
    int P = a->P;
    printf("# pipenem sim: %d stages, %d micro-batches", P, a->M);
    if (a->derived)
        printf(" (batch %d / micro-batch size %d)", a->batch, a->mbs);
    if (a->model) {
        printf("\n# costs from %s; per micro-batch, stage by stage:\n#  ", model_label);
        print_costs(" forward", cost, P, 0);
        print_costs(" ms, backward", cost, P, 1);
        print_costs(" ms, optimizer", cost, P, 2);
        printf(" ms per iteration\n");
    } else {
        printf("\n# costs per micro-batch: forward %s ms, backward %s ms; optimizer %s ms per iteration\n",
               a->fwd_arg, a->bwd_arg, a->opt_arg);
    }
    printf("# links:");
    for (int i = 0; i + 1 < P; i++) {
        char label[128] = "free";
        if (a->net && !netem_profile_is_default(&profiles[i]) &&
            netem_profile_label(&profiles[i], label, sizeof label) < 0)
            snprintf(label, sizeof label, "?");
        if (i < 8 || i + 2 == P)
            printf("%s %d-%d %s", i ? "," : "", i, i + 1, label);
        else if (i == 8)
            printf(", ...");
    }
    if (P == 1)
        printf(" none (one stage)");
    printf("\n# messages %.0f B activations, %.0f B gradients; overhead %g us; send mode %s\n",
           a->act_bytes, a->grad_bytes, a->overhead_us, sim_send_mode_name(a->mode));
    print_dp(a, dp_label, b);
    if (ignored)
        printf("# note: the simulator models delay and rate; jitter and loss in --net are ignored\n");
    printf("#\n#%13s %6s %12s %12s %8s %9s  %s\n", "schedule", "slack", "iter_time", "no_delay",
           "bubble", "peak_act", "busy share per stage");
    printf("#%13s %6s %12s %12s %8s %9s  %s\n", "", "(K)", "(ms)", "(ms)", "(%)", "(mb)", "(%)");
}

/* With --dp: each stage's all-reduce span, ms. */
static void print_allreduce(const sim_result_t *r, int P)
{
    if (!r->allreduce)
        return;
    printf("#%13s allreduce per stage (ms):", "");
    for (int s = 0; s < P; s++)
        if (s < 8 || s + 1 == P)
            printf("%s %.3f-%.3f", s ? "," : "", r->allreduce[s].start * 1e3, r->allreduce[s].end * 1e3);
        else if (s == 8)
            printf(", ...");
    putchar('\n');
}

/* One schedule's row (and its slack search): 0, or 1 after printing why it failed. */
static int sim_row(const sim_args_t *a, const char *name, const sim_cost_t *cost, const sim_link_t *links,
                   const sim_dp_t *dp, sim_result_t *res)
{
    int P = a->P;
    char err[512];
    sim_config_t cfg = {name, P, a->M, a->K, cost, links, links, a->act_bytes, a->grad_bytes, a->mode};
    sim_config_t free_cfg = cfg;
    free_cfg.link_fwd = free_cfg.link_bwd = NULL;
    sim_result_t nd;
    double times[SIM_SLACK_AUTO_MAX + 1];
    int auto_k = -1;
    /* free links: the replicas' too */
    sim_dp_t free_dp = dp ? *dp : (sim_dp_t){0};
    free_dp.link = NULL;
    if (sched_uses_slack(name) > 0 && a->K == SIM_SLACK_AUTO &&
        sim_slack_auto_dp(&cfg, dp, &auto_k, times, err, sizeof err)) {
        printf("%14s  failed: %s\n", name, err);
        return 1;
    }
    if (auto_k >= 0)
        cfg.slack = free_cfg.slack = auto_k;
    int v = sched_uses_chunks(name) > 0 ? a->V : 0; /* --chunks: the interleaved schedule's */
    if (sim_run_dp(&cfg, v, dp, res, err, sizeof err) ||
        sim_run_dp(&free_cfg, v, dp ? &free_dp : NULL, &nd, err, sizeof err)) {
        printf("%14s  failed: %s\n", name, err);
        return 1;
    }
    char slack[16] = "-";
    if (res->slack >= 0)
        snprintf(slack, sizeof slack, "%d", res->slack);
    int peak = 0;
    for (int s = 0; s < P; s++)
        peak = res->peak_inflight[s] > peak ? res->peak_inflight[s] : peak;
    printf(" %13s %6s %12.3f %12.3f %8.2f %9d ", name, slack, res->time * 1e3, nd.time * 1e3,
           100 * res->bubble_mean, peak);
    for (int s = 0; s < P; s++)
        printf("%s%.1f", s ? "/" : " ", res->time > 0 ? 100 * res->busy[s] / res->time : 0);
    putchar('\n');
    sim_result_destroy(&nd);
    print_allreduce(res, P);
    if (auto_k >= 0) {
        printf("#%13s slack auto:", "");
        for (int k = 0; k <= SIM_SLACK_AUTO_MAX; k++)
            printf(" K=%d %.3f", k, times[k] * 1e3);
        printf(" ms -> K=%d\n", auto_k);
    }
    return 0;
}

int cmd_sim(int argc, char **argv)
{
    sim_args_t a = {.opt_arg = "0", .slack_arg = "auto", .P = 3, .batch = 64, .mbs = 1,
                    .mode = SIM_SEND_PIPELINED, .dp = 1};
    int rc = sim_parse(argc, argv, &a);
    if (rc)
        return rc < 0 ? CLI_OK : rc;
    rc = CLI_FAIL;
    sim_cost_t *cost = calloc((size_t)a.P, sizeof *cost);
    sim_link_t *links = calloc((size_t)a.P, sizeof *links);
    netem_profile_t *profiles = calloc((size_t)a.P, sizeof *profiles);
    sim_result_t *res = calloc((size_t)a.n_sched, sizeof *res);
    predict_buckets_t *buckets = calloc((size_t)a.P, sizeof *buckets);
    int *nb = calloc((size_t)a.P, sizeof *nb);
    const double **bb = calloc((size_t)a.P, sizeof *bb), **br = calloc((size_t)a.P, sizeof *br);
    char model_label[320] = "", dp_label[128] = "";
    int ignored = 0, failed = 0;
    sim_link_t dp_link;
    sim_dp_t dp;
    if (!cost || !links || !profiles || !res || !buckets || !nb || !bb || !br)
        goto out;
    if ((rc = sim_costs(&a, cost, buckets, model_label, sizeof model_label)) ||
        (rc = sim_links(&a, links, profiles, &ignored)) ||
        (rc = sim_dp_link(&a, &dp_link, dp_label, sizeof dp_label, &ignored)))
        goto out;
    predict_dp_model(buckets, a.P, a.dp, a.dp_overlap, &dp_link, nb, bb, br, &dp);
    print_header(&a, cost, profiles, model_label, ignored, dp_label, buckets);
    for (int i = 0; i < a.n_sched; i++)
        failed |= sim_row(&a, a.scheds[i], cost, links, a.dp > 1 ? &dp : NULL, &res[i]);
    printf("#\n");
    for (int i = 0; i < a.n_sched; i++)
        if (res[i].span)
            print_critical(a.scheds[i], &res[i], a.list_path);
    printf("# %s\n", failed ? "FAILED" : "OK");
    rc = failed ? CLI_FAIL : CLI_OK;
out:
    for (int i = 0; res && i < a.n_sched; i++)
        sim_result_destroy(&res[i]);
    free(res);
    free(buckets);
    free(nb);
    free(bb);
    free(br);
    free(profiles);
    free(links);
    free(cost);
    return rc;
}
