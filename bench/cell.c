/* One sweep cell on this machine: a namespace per stage joined by a switch (netem/topo),
 * the cell's profile on every link, the stages started and supervised by pipeline's
 * launcher (one process per host, UCX/TCP on the veths), rank 0's gathered trace and
 * per-rank counters taken from the launcher's summary, the network restored; then
 * metrics, the simulator's prediction and the straggler replay. Without root (no namespaces) the
 * stages run over loopback and only the in-transport shaper can emulate a profile. */
#include "bench/cell.h"
#include "common/err.h"

#include "bench/csvio.h"
#include "bench/metrics.h"
#include "bench/predict.h"
#include "models/model.h"
#include "netem/emulator.h"
#include "netem/profile.h"
#include "netem/topo.h"
#include "pipeline/exec.h"
#include "pipeline/launch.h"
#include "pipeline/runcfg.h"
#include "pipeline/stage.h"
#include "pipeline/transport.h"
#include "schedules/sched.h"

#include "models/options.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The pipeline configuration of the cell, through runcfg's own option parser so that the
 * sweep and `pipenem run` agree on every field and check. */
int cell_runcfg(const sweep_spec_t *s, const results_cell_t *c, const char *net, const char *emulator,
                runcfg_t *cfg, char *err, size_t errlen)
{
    char stages[16], batch[16], mbs[16], seq[16], iters[16], warmup[16], slack[16], chunks[16], threads[24], dp[16],
        bucket[24];
    /* The stages share this machine's cores: one OpenMP team per core each would fight. */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN), procs = (long)s->stages * c->dp;
    snprintf(threads, sizeof threads, "%ld", ncpu > procs ? ncpu / procs : 1);
    snprintf(dp, sizeof dp, "%d", c->dp);
    snprintf(bucket, sizeof bucket, "%d", c->dp_bucket_bytes);
    snprintf(stages, sizeof stages, "%d", s->stages);
    snprintf(batch, sizeof batch, "%d", s->batch_size);
    snprintf(mbs, sizeof mbs, "%d", c->micro_batch_size);
    snprintf(seq, sizeof seq, "%d", s->seq_len);
    snprintf(iters, sizeof iters, "%d", s->iters);
    snprintf(warmup, sizeof warmup, "%d", s->warmup);
    snprintf(slack, sizeof slack, s->slack < 0 ? "auto" : "%d", s->slack);
    snprintf(chunks, sizeof chunks, "%d", s->chunks);
    const struct {
        int opt;
        const char *arg;
    } set[] = {
        {MODEL_OPT_MODEL, s->model},          {MODEL_OPT_SEQ_LEN, seq},
        {MODEL_OPT_STAGES, stages},           {MODEL_OPT_BATCH_SIZE, batch},
        {MODEL_OPT_MICRO_BATCH_SIZE, mbs},    {MODEL_OPT_COMPUTE, s->compute},
        {RUNCFG_OPT_SCHEDULE, c->schedule},   {RUNCFG_OPT_SLACK, slack},
        {RUNCFG_OPT_ITERS, iters},            {RUNCFG_OPT_WARMUP, warmup},
        {RUNCFG_OPT_NET, net},                {RUNCFG_OPT_EMULATOR, emulator},
        {MODEL_OPT_THREADS, threads},         {RUNCFG_OPT_TIMEOUT, s->timeout},
        {RUNCFG_OPT_TRANSPORT, s->transport},
        {RUNCFG_OPT_CHUNKS, chunks},          {RUNCFG_OPT_DP, dp},
        {RUNCFG_OPT_NET_DP, c->net_dp},       {RUNCFG_OPT_DP_OVERLAP, ""},
        {RUNCFG_OPT_DP_BUCKET, bucket},
    };
    runcfg_defaults(cfg);
    for (size_t i = 0; i < sizeof set / sizeof *set; i++) {
        if (set[i].opt == RUNCFG_OPT_SLACK && sched_uses_slack(c->schedule) != 1)
            continue; /* only 1f1b-slack takes a K */
        if (set[i].opt == RUNCFG_OPT_CHUNKS && (!s->chunks || sched_uses_chunks(c->schedule) != 1))
            continue; /* only interleaved-1f1b takes a chunk count */
        if ((set[i].opt == RUNCFG_OPT_TIMEOUT && !s->timeout[0]) || (set[i].opt == RUNCFG_OPT_NET_DP && !c->net_dp[0]) ||
            (set[i].opt == RUNCFG_OPT_DP_OVERLAP && !c->dp_overlap) ||
            (set[i].opt == RUNCFG_OPT_DP_BUCKET && c->dp < 2))
            continue;
        int rc = runcfg_option(cfg, set[i].opt, set[i].arg, err, errlen);
        if (rc < 0)
            return rc;
        if (rc == 0) {
            return pn_err(err, errlen, -EINVAL, "internal: runcfg does not take option %d", set[i].opt);
        }
    }
    return runcfg_finish(cfg, err, errlen);
}

/* The straggler's compute: its modelled per-micro-batch times (emulate) times factor. */
static int straggler_compute(const runcfg_t *cfg, int rank, double factor, char *out, size_t len, char *err,
                             size_t errlen)
{
    model_stage_params_t mp = cfg->stage_params;
    mp.stage = rank;
    model_stage_t *st = calloc(1, sizeof *st);
    if (!st)
        return -ENOMEM;
    int rc = model_stage_init(st, &mp, err, errlen);
    if (rc) {
        free(st);
        return rc;
    }
    model_account_t a;
    model_stage_account(st, &a);
    model_stage_destroy(st);
    free(st);
    if (!(a.fwd_s > 0)) {
        return pn_err(err, errlen, -EINVAL, "--straggler needs an emulated compute backend (emulate:...), not '%s'", mp.compute);
    }
    snprintf(out, len, "emulate:fwd=%.9gms,bwd=%.9gms,opt=%.9gms", 1e3 * factor * a.fwd_s, 1e3 * factor * a.bwd_s,
             1e3 * factor * a.opt_s);
    return 0;
}

/* One repeat of the cell's job where h runs its stages, the straggler getting its own
 * compute. The trace goes through the per-rank trace format into r; the counters are
 * folded into the per-stage FLOPs, peak FLOP/s and peak memory (the maximum over
 * repeats), the loss, each iteration's loss scale and the cell's skipped steps. */
static int run_repeat(const cell_hosts_t *h, void *hctx, const runcfg_t *cfg, const sweep_spec_t *s,
                      const char *workdir, volatile sig_atomic_t *stop, results_t *r, int cell, int rep,
                      double *flop_mb, double *peak, double *mem, double *loss, double *scale,
                      results_cell_t *rc_cell, char *err, size_t errlen)
{
    char compute[256];
    const char *rank_compute[RESULTS_MAX_STAGES] = {0};
    int rc = 0;
    if (s->straggler_rank >= 0 && s->straggler_rank < cfg->stages && s->straggler_factor != 1.0) {
        if ((rc = straggler_compute(cfg, s->straggler_rank, s->straggler_factor, compute, sizeof compute, err,
                                    errlen)))
            return rc;
        rank_compute[s->straggler_rank] = compute;
    }
    stage_summary_t sum = {0};
    if ((rc = h->run(hctx, cfg, s, rank_compute, stop, &sum, err, errlen)))
        return rc;
    char path[4200];
    snprintf(path, sizeof path, "%s/trace.csv", workdir);
    rc = results_exec_trace_save(path, sum.rows, sum.n_rows, err, errlen);
    if (!rc)
        rc = results_trace_read(path, cell, rep, r, err, errlen);
    for (int q = 0; q < sum.stages && !rc; q++) {
        const stage_rank_t *k = &sum.ranks[q];
        mem[q] = isnan(mem[q]) ? (double)k->peak_mem : fmax(mem[q], (double)k->peak_mem);
        snprintf(rc_cell->mem_kind, sizeof rc_cell->mem_kind, "%s", model_mem_kind_name((model_mem_kind_t)k->mem_kind));
        flop_mb[q] = k->fwd_flops + k->bwd_flops;
        peak[q] = k->peak_flops;
    }
    if (!rc && sum.warmup + sum.iters > 0)
        *loss = sum.loss[sum.warmup + sum.iters - 1];
    for (int i = 0; !rc && i < sum.warmup + sum.iters && i < cfg->warmup + cfg->iters; i++)
        scale[i] = sum.loss_scale[i];
    rc_cell->skipped_steps += rc ? 0 : (int)sum.skipped;
    stage_summary_destroy(&sum);
    return rc;
}

/* This machine: a namespace per rank (root; D x P with --dp), else loopback with only the shim. */
typedef struct {
    netem_topo_t *topo;
    const netem_emulator_t *emu;
    netem_profile_t links[NETEM_TOPO_MAX_HOSTS];
} local_t;

/* --dp on the topology: pipeline pairs get the cell's profile, replica pairs its
 * --net-dp (default: the pipeline's), other pairs nothing (launch_pair_profile). */
static int dp_apply(local_t *l, int P, const results_cell_t *cell, const netem_profile_t *prof, const char *asked,
                    char *err, size_t errlen)
{
    launch_pairs_t pairs = {.stages = P, .dp = cell->dp, .links = l->links, .dp_link = *prof};
    int rc = cell->net_dp[0] ? netem_profile_parse(cell->net_dp, &pairs.dp_link, err, errlen) : 0;
    return rc ? rc : netem_topo_apply_pairs(l->topo, launch_pair_profile, &pairs, asked, err, errlen);
}

static int local_setup(void *ctx, const sweep_spec_t *s, const netem_profile_t *prof, results_cell_t *cell,
                       const char **cfg_net, const char **cfg_emulator, char *err, size_t errlen)
{
    local_t *l = ctx;
    int P = s->stages, rc;
    /* one host per rank: D replicas of P stages (rank = d*P + s), all joined by the topology */
    int hosts = P * (cell->dp > 1 ? cell->dp : 1);
    if (hosts > NETEM_TOPO_MAX_HOSTS)
        return pn_err(err, errlen, -EINVAL, "--dp %d x %d stages: the local topology holds at most %d hosts", cell->dp,
                      P, NETEM_TOPO_MAX_HOSTS);
    for (int i = 0; i < hosts; i++)
        l->links[i] = *prof;
    /* Which backend emulates the links: the topology chooses (netem_topo_apply) where
     * there is one; without root there are no namespaces and only the shim can shape. */
    int have_ns = geteuid() == 0 && hosts > 1;
    const char *asked = transport_emulator_asked(s->transport, s->emulator, have_ns);
    char why[256] = "";
    if (have_ns) {
        l->topo = calloc(1, sizeof *l->topo);
        if (!l->topo)
            return -ENOMEM;
        rc = netem_topo_create(l->topo, hosts, err, errlen);
        if (!rc && cell->dp > 1)
            rc = dp_apply(l, P, cell, prof, asked, err, errlen);
        else if (!rc)
            rc = netem_topo_apply(l->topo, l->links, asked, err, errlen);
        l->emu = l->topo->emulator;
    } else {
        rc = netem_emulator_choose(asked, l->links, hosts > 1 ? hosts - 1 : 0, &l->emu, why, sizeof why, err, errlen);
    }
    if (!rc && !l->emu)
        rc = pn_err(err, errlen, -EINVAL, "internal: no emulator was chosen for %s", cell->profile);
    if (rc)
        return rc;
    snprintf(cell->emulator, sizeof cell->emulator, "%s", l->emu->name);
    *cfg_net = hosts > 1 ? cell->profile : "default";
    *cfg_emulator = l->emu->shapes ? l->emu->name : "auto";
    return 0;
}

/* Pipeline's launcher: the same supervision, culprit naming and clean-up as `pipenem run`. */
static int local_run(void *ctx, const runcfg_t *cfg, const sweep_spec_t *s, const char *const *rank_compute,
                     volatile sig_atomic_t *stop, stage_summary_t *sum, char *err, size_t errlen)
{
    local_t *l = ctx;
    launch_params_t lp = {.cfg = cfg, .topo = l->topo, .shim_links = l->emu->in_transport ? l->links : NULL,
                          .stop = stop, .rank_compute = rank_compute, .user = s->user[0] ? s->user : NULL};
    launch_failure_t fail;
    return launch_run(&lp, sum, &fail, err, errlen);
}

static void local_teardown(void *ctx)
{
    local_t *l = ctx;
    if (l->topo)
        netem_topo_destroy(l->topo);
    free(l->topo);
    l->topo = NULL;
}

static const cell_hosts_t local_hosts = {"local", local_setup, local_run, local_teardown};

/* Stage q's all-reduce buckets (predict_dp_buckets) from its model under cfg. */
static int stage_buckets(const runcfg_t *cfg, int q, predict_buckets_t *b, char *err, size_t errlen)
{
    model_stage_params_t mp = cfg->stage_params;
    mp.stage = q;
    model_stage_t *st = calloc(1, sizeof *st);
    if (!st)
        return -ENOMEM;
    int rc = model_stage_init(st, &mp, err, errlen);
    if (!rc) {
        predict_dp_buckets(st, (double)runcfg_dp_bucket(cfg), b);
        model_stage_destroy(st);
    }
    free(st);
    return rc;
}

/* The a-priori prediction, with the replicas' all-reduce where the cell has them. */
static int cell_apriori(const runcfg_t *cfg, results_cell_t *cell, int slack, int chunks, const sim_cost_t *cost,
                        double boundary, const netem_profile_t *prof, char *err, size_t errlen)
{
    int P = cfg->stages, rc = 0;
    if (cell->dp < 2)
        return predict_apriori(cell, slack, chunks, cost, boundary, prof, &cell->predicted_apriori, err, errlen);
    netem_profile_t dpp = *prof;
    if (cell->net_dp[0] && (rc = netem_profile_parse(cell->net_dp, &dpp, err, errlen)))
        return rc;
    predict_buckets_t *b = calloc((size_t)P, sizeof *b);
    if (!b)
        return -ENOMEM;
    for (int q = 0; q < P && !rc; q++)
        rc = stage_buckets(cfg, q, &b[q], err, errlen);
    if (!rc)
        rc = predict_apriori_dp(cell, slack, chunks, cost, boundary, prof, cell->dp, cell->dp_overlap, &dpp, b,
                                &cell->predicted_apriori, err, errlen);
    free(b);
    return rc;
}

/* What the compute model says of the cell before it runs (emulate only: real compute has
 * no model to ask): each stage's modelled compute seconds per iteration (work[], the
 * straggler's expectation is the un-slowed stage), its modelled device memory, and the
 * a-priori prediction (the injected straggler included: it is part of the configuration).
 * Leaves work[] and the cell's fields NaN where there is no model. */
static int cell_modelled(const runcfg_t *cfg, const sweep_spec_t *s, results_cell_t *cell, int slack, int chunks,
                         const netem_profile_t *prof, double *work, char *err, size_t errlen)
{
    int P = cfg->stages, rc = 0;
    for (int q = 0; q < P; q++)
        work[q] = NAN;
    if (!model_compute_modelled(cfg->stage_params.compute))
        return 0;
    model_account_t *a = calloc((size_t)P, sizeof *a);
    if (!a)
        return -ENOMEM;
    sim_cost_t cost[RESULTS_MAX_STAGES];
    sched_spec_t spec = {cell->schedule, P, cell->micro_batches, slack, chunks};
    int v = 1;
    if (!(rc = runcfg_stage_accounts(cfg, a, err, errlen)))
        rc = sched_spec_check(&spec, &v, err, errlen);
    for (int q = 0; q < P && !rc; q++) {
        double x = q == s->straggler_rank ? s->straggler_factor : 1.0;
        work[q] = cell->micro_batches * (a[q].fwd_s + a[q].bwd_s) + a[q].opt_s;
        cost[q] = (sim_cost_t){x * a[q].fwd_s, x * a[q].bwd_s, x * a[q].opt_s};
        sched_op_t *ops = NULL;
        size_t n = 0;
        if ((rc = sched_ops_build_spec(&spec, q, &ops, &n, err, errlen)))
            break;
        /* v chunks each hold 1/v of the stage's activations per micro-batch */
        double held = (double)sched_ops_peak_inflight(ops, n) / v;
        free(ops);
        /* fp32 parameters and gradients, AdamW's m and v: 16 bytes a parameter (emulate
         * allocates none of them, so the allocated blocks say nothing of a device). */
        cell->mem_model[q] = 16.0 * (double)a[q].params + held * (double)a[q].saved_bytes_per_mb;
    }
    /* Chunked stages: the account is the whole process's; its split over chunks is the
     * runtime's (see predict_time_chunks), so no a-priori figure for them yet. */
    if (!rc && v == 1)
        rc = cell_apriori(cfg, cell, slack, chunks, cost, (double)a[0].boundary_bytes, prof, err, errlen);
    free(a);
    return rc;
}

/* n doubles, each NaN; NULL without memory */
static double *nan_array(size_t n)
{
    double *a = malloc(sizeof *a * (n ? n : 1));
    for (size_t i = 0; a && i < n; i++)
        a[i] = NAN;
    return a;
}

int cell_measure(void *ctx, const sweep_spec_t *s, results_cell_t *cell, const char *workdir,
                 volatile sig_atomic_t *stop, results_t *r, char *err, size_t errlen)
{
    (void)ctx;
    local_t l = {0};
    return cell_measure_on(&local_hosts, &l, s, cell, workdir, stop, r, err, errlen);
}

int cell_measure_on(const cell_hosts_t *h, void *hctx, const sweep_spec_t *s, results_cell_t *cell,
                    const char *workdir, volatile sig_atomic_t *stop, results_t *r, char *err, size_t errlen)
{
    int P = s->stages, rc;
    char cell_no[16];
    snprintf(cell_no, sizeof cell_no, "%d", cell->cell);
    setenv("PIPENEM_CELL", cell_no, 1); /* the stages' fault hook can aim at one cell (pipeline/fault.h) */
    netem_profile_t prof;
    if ((rc = netem_profile_parse(cell->profile, &prof, err, errlen)))
        return rc;
    const char *cfg_net = "default", *cfg_emulator = "auto";
    rc = h->setup(hctx, s, &prof, cell, &cfg_net, &cfg_emulator, err, errlen);
    runcfg_t *cfg = NULL;
    int slack = s->slack; /* as the cell resolved it (auto: the simulator's K) */
    if (!rc && !(cfg = calloc(1, sizeof *cfg)))
        rc = -ENOMEM;
    if (!rc)
        rc = cell_runcfg(s, cell, cfg_net, cfg_emulator, cfg, err, errlen);
    if (!rc)
        slack = cfg->slack;
    double work[RESULTS_MAX_STAGES];
    int chunks = sched_uses_chunks(cell->schedule) == 1 ? s->chunks : 0;
    if (!rc)
        rc = cell_modelled(cfg, s, cell, slack, chunks, &prof, work, err, errlen);
    double flop_mb[RESULTS_MAX_STAGES], peak[RESULTS_MAX_STAGES], mem[RESULTS_MAX_STAGES], loss = NAN;
    for (int q = 0; q < P; q++)
        flop_mb[q] = peak[q] = mem[q] = NAN;
    int n_it = cfg ? cfg->warmup + cfg->iters : 0; /* the loss scale of each repeat's iterations */
    double *scale = !rc ? nan_array((size_t)(s->repeats > 0 ? s->repeats : 1) * (size_t)n_it) : NULL;
    rc = rc ? rc : scale ? 0 : -ENOMEM;
    cell->skipped_steps = 0;
    for (int rep = 0; rep < s->repeats && !rc; rep++) {
        rc = run_repeat(h, hctx, cfg, s, workdir, stop, r, cell->cell, rep, flop_mb, peak, mem, &loss,
                        scale + (size_t)rep * (size_t)n_it, cell, err, errlen);
    }
    h->teardown(hctx); /* restore before anything else can fail or stop */
    free(cfg);
    if (rc) {
        free(scale);
        return rc;
    }

    double flop_iter[RESULTS_MAX_STAGES], pk = 0;
    int have_flops = 1;
    for (int q = 0; q < P; q++) {
        flop_iter[q] = flop_mb[q] * cell->micro_batches;
        have_flops &= isfinite(flop_iter[q]) && flop_iter[q] > 0;
        pk = isfinite(peak[q]) && peak[q] > pk ? peak[q] : pk;
        cell->mem_peak[q] = mem[q];
    }
    metrics_params_t mp = {.warmup = s->warmup, .batch_size = s->batch_size, .seq_len = s->seq_len,
                           .flop_per_iter = have_flops ? flop_iter : NULL, .peak_flops = pk, .loss_scale = scale,
                           .scale_iters = n_it};
    rc = metrics_cell_compute(r, &mp, cell, err, errlen);
    free(scale);
    if (rc)
        return rc;
    metrics_dp_straggler(r, cell, NULL);
    cell->final_loss = loss;
    /* The trace names no chunk, so a stage of several chunks cannot be replayed yet: no ideal time. */
    sched_spec_t spec = {cell->schedule, P, cell->micro_batches, slack, chunks};
    int v = 1;
    if (sched_spec_check(&spec, &v, err, errlen))
        return -EINVAL;
    cell->ideal = NAN;
    if ((rc = predict_time_chunks(r, cell, slack, spec.chunks, &prof, &cell->predicted, err, errlen)))
        return rc;
    /* The what-if needs each stage's expected work: its modelled time, else its FLOPs. */
    predict_whatif_t w;
    const double *expect = isfinite(work[0]) ? work : have_flops ? flop_iter : NULL;
    if (v == 1 && expect) {
        if ((rc = predict_whatif(r, cell, &prof, expect, &w, err, errlen)))
            return rc;
        cell->ideal = w.expected;
        cell->imbalance = w.imbalance;
        cell->straggler_stage = w.slow_stage;
        metrics_straggler(w.as_measured, w.expected, &cell->straggler_delay, &cell->straggler_slowdown);
    }
    return 0;
}

int cell_check(const sweep_spec_t *s, char *err, size_t errlen)
{
    for (int m = 0; m < s->n_mbs; m++) {
        char stages[16], batch[16], mbs[16], seq[16], why[512] = "";
        snprintf(stages, sizeof stages, "%d", s->stages);
        snprintf(batch, sizeof batch, "%d", s->batch_size);
        snprintf(mbs, sizeof mbs, "%d", s->mbs[m]);
        snprintf(seq, sizeof seq, "%d", s->seq_len);
        const struct {
            int opt;
            const char *arg;
        } set[] = {
            {MODEL_OPT_MODEL, s->model},       {MODEL_OPT_SEQ_LEN, seq},          {MODEL_OPT_STAGES, stages},
            {MODEL_OPT_BATCH_SIZE, batch},     {MODEL_OPT_MICRO_BATCH_SIZE, mbs}, {MODEL_OPT_COMPUTE, s->compute},
        };
        model_options_t o;
        model_stage_params_t p;
        model_options_defaults(&o);
        int rc = 0;
        for (size_t i = 0; i < sizeof set / sizeof *set && !rc; i++)
            if (model_options_parse(&o, set[i].opt, set[i].arg, why, sizeof why) != 1)
                rc = -EINVAL;
        if (!rc)
            rc = model_options_finish(&o, &p, why, sizeof why);
        if (rc) {
            snprintf(err, errlen, "micro-batch size %d: %s", s->mbs[m], why);
            return -EINVAL;
        }
    }
    return 0;
}
