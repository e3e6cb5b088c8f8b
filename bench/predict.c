/* Predicted and ideal iteration times of a measured cell through schedules/sim. The
 * measured costs come from the cell's own trace, so the prediction differs from the
 * measurement only by what the simulator does not model (runtime overheads, jitter). */
#include "bench/predict.h"
#include "common/err.h"

#include "bench/metrics.h"
#include "pipeline/allreduce.h"
#include "schedules/sched.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void predict_link(const netem_profile_t *p, sim_link_t *out)
{
    memset(out, 0, sizeof *out);
    out->delay = p->delay;
    out->bandwidth = p->rate > 0 ? netem_profile_goodput(p->rate, 1500) : 0;
}

/* Which measured iterations a statistic is over: one (repeat, iteration), or with
 * iteration -1 every measured iteration of every repeat. Warm-up never counts. */
typedef struct {
    int repeat, iteration;
} sel_t;

static const sel_t ALL_MEASURED = {-1, -1};

static int in_sel(const results_op_t *o, const results_cell_t *cell, sel_t sel)
{
    return o->cell == cell->cell && o->iteration >= cell->warmup &&
           (sel.iteration < 0 || (o->repeat == sel.repeat && o->iteration == sel.iteration));
}

/* Median (or mean) of a measured quantity over the ops of `cell` on `rank` (-1 = all) of
 * kind `op` in the selected iterations: the duration, or the bytes. NaN when there is none. */
static double stat_of(const results_t *r, const results_cell_t *cell, sel_t sel, int rank, const char *op, int bytes,
                      int mean)
{
    size_t n = 0;
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        n += in_sel(o, cell, sel) && (rank < 0 || o->rank == rank) && !strcmp(o->op, op);
    }
    if (!n)
        return NAN;
    double *v = malloc(n * sizeof *v);
    if (!v)
        return NAN;
    size_t k = 0;
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        if (in_sel(o, cell, sel) && (rank < 0 || o->rank == rank) && !strcmp(o->op, op))
            v[k++] = bytes ? (double)o->bytes : o->end - o->start;
    }
    metrics_stats_t st;
    metrics_stats(v, n, &st);
    free(v);
    return mean ? st.mean : st.median;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Orders receive rows by (repeat, iteration, rank, micro-batch) for matching. */
static int cmp_key(const void *a, const void *b)
{
    const results_op_t *x = *(const results_op_t *const *)a, *y = *(const results_op_t *const *)b;
    int d[4] = {x->repeat - y->repeat, x->iteration - y->iteration, x->rank - y->rank, x->micro_batch - y->micro_batch};
    for (int i = 0; i < 4; i++)
        if (d[i])
            return d[i] < 0 ? -1 : 1;
    return 0;
}

double predict_path_bandwidth(const results_t *r, const results_cell_t *cell, int backward, double delay)
{
    const sel_t sel = ALL_MEASURED;
    const char *send = backward ? "SEND_GRAD" : "SEND_ACT", *recv = backward ? "RECV_GRAD" : "RECV_ACT";
    size_t nr = 0, ns = 0;
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        if (!in_sel(o, cell, sel))
            continue;
        nr += !strcmp(o->op, recv);
        ns += !strcmp(o->op, send);
    }
    if (!nr || !ns)
        return NAN;
    const results_op_t **rv = malloc(nr * sizeof *rv);
    double *bw = malloc(ns * sizeof *bw);
    if (!rv || !bw) {
        free(rv);
        free(bw);
        return NAN;
    }
    size_t k = 0, n = 0;
    for (size_t i = 0; i < r->n_ops; i++)
        if (in_sel(&r->ops[i], cell, sel) && !strcmp(r->ops[i].op, recv))
            rv[k++] = &r->ops[i];
    qsort(rv, nr, sizeof *rv, cmp_key);
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        if (!in_sel(o, cell, sel) || strcmp(o->op, send) || o->bytes <= 0)
            continue;
        results_op_t key = *o;
        key.rank += backward ? -1 : 1;
        const results_op_t *kp = &key, **hit = bsearch(&kp, rv, nr, sizeof *rv, cmp_key);
        /* Only where the receiver was already waiting is its end the arrival. */
        if (!hit || (*hit)->start > o->start)
            continue;
        double t = (*hit)->end - o->start - delay;
        if (t > 0)
            bw[n++] = 8.0 * (double)o->bytes / t;
    }
    double out = NAN;
    if (n) {
        /* Queueing behind earlier messages only makes a sample slower: take the upper quartile. */
        qsort(bw, n, sizeof *bw, cmp_double);
        out = bw[(3 * (n - 1)) / 4];
    }
    free(rv);
    free(bw);
    return out;
}

void predict_cell_links(const results_t *r, const results_cell_t *cell, const netem_profile_t *p, sim_link_t *fwd,
                        sim_link_t *bwd)
{
    for (int dir = 0; dir < 2; dir++) {
        sim_link_t *l = dir ? bwd : fwd;
        predict_link(p, l);
        double path = predict_path_bandwidth(r, cell, dir, p->delay);
        if (isfinite(path) && path > 0 && (l->bandwidth == 0 || path < l->bandwidth))
            l->bandwidth = path;
    }
}

/* Seconds of ALLREDUCE rows of `rank` per OPT_STEP row in the selected iterations, the
 * part before the step's row left out (--dp-overlap: it ran beside the backward). */
static double allreduce_per_step(const results_t *r, const results_cell_t *cell, sel_t sel, int rank)
{
    double sum = 0;
    size_t steps = 0;
    int span = cell->warmup + cell->iters;
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        if (!in_sel(o, cell, sel) || o->rank != rank)
            continue;
        if (!strcmp(o->op, METRICS_OP_ALLREDUCE))
            sum += o->end - o->start;
        steps += !strcmp(o->op, "OPT_STEP");
        span = o->iteration >= span ? o->iteration + 1 : span;
    }
    double *early = metrics_allreduce_early(r, cell->cell, sel.iteration < 0 ? -1 : sel.repeat, span, rank + 1);
    for (int it = cell->warmup; early && it < span; it++)
        sum -= sel.iteration < 0 || it == sel.iteration ? early[(size_t)it * (size_t)(rank + 1) + (size_t)rank] : 0;
    free(early);
    return steps ? sum / (double)steps : 0;
}

/* What a sim_dp_t of a measured cell points into. */
typedef struct {
    predict_buckets_t b[RESULTS_MAX_STAGES];
    sim_link_t link;
    int n[RESULTS_MAX_STAGES];
    const double *bytes[RESULTS_MAX_STAGES], *ready[RESULTS_MAX_STAGES];
} dp_store_t;

/* The all-reduce of a measured --dp iteration: each stage's buckets the bytes of replica
 * 0's allreduce rows in that iteration (in trace order), ready in proportion to the bytes
 * (the trace does not say which layers a bucket holds); the DP links of --net-dp, or of
 * the cell's profile. *store (malloc'd) backs *out. */
static int dp_from_trace(const results_t *r, const results_cell_t *cell, sel_t sel, const netem_profile_t *p,
                         dp_store_t **store, sim_dp_t *out, char *err, size_t errlen)
{
    int S = cell->stages;
    netem_profile_t dpp = *p;
    if (cell->net_dp[0] && netem_profile_parse(cell->net_dp, &dpp, err, errlen))
        return -EINVAL;
    dp_store_t *st = calloc(1, sizeof *st);
    if (!st)
        return -ENOMEM;
    predict_buckets_t *b = st->b;
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        if (in_sel(o, cell, sel) && o->rank >= 0 && o->rank < S && !strcmp(o->op, METRICS_OP_ALLREDUCE) &&
            b[o->rank].n < PREDICT_MAX_BUCKETS)
            b[o->rank].bytes[b[o->rank].n++] = (double)o->bytes;
    }
    for (int s = 0; s < S; s++) {
        if (!b[s].n) {
            free(st);
            return pn_err(err, errlen, -EINVAL, "cell %d: --dp %d but stage %d traced no %s in iteration %d",
                          cell->cell, cell->dp, s, METRICS_OP_ALLREDUCE, sel.iteration);
        }
        for (int k = 0; k < b[s].n; k++)
            b[s].total += b[s].bytes[k];
        double upto = 0;
        for (int k = 0; k < b[s].n; k++) {
            upto += b[s].bytes[k];
            b[s].ready[k] = k + 1 == b[s].n || !(b[s].total > 0) ? 1 : fmax(upto / b[s].total, 1e-12);
        }
    }
    predict_link(&dpp, &st->link);
    predict_dp_model(b, S, cell->dp, cell->dp_overlap, &st->link, st->n, st->bytes, st->ready, out);
    *store = st;
    return 0;
}

/* sim_run of one measured iteration: its own compute costs, the cell's links (a single
 * iteration has too few sends that met a waiting receiver to measure a path on its own).
 * -ENOENT when the iteration has no compute op (a repeat that did not trace it). */
static int predict_one(const results_t *r, const results_cell_t *cell, sel_t sel, int slack, int chunks,
                       const netem_profile_t *p, double *predicted, char *err, size_t errlen)
{
    int S = cell->stages, v = 1;
    sched_spec_t spec = {cell->schedule, S, cell->micro_batches, slack, chunks};
    if (sched_spec_check(&spec, &v, err, errlen))
        return -EINVAL;
    sim_cost_t cost[RESULTS_MAX_STAGES];
    for (int s = 0; s < S; s++) {
        /* Means: a few slow ops (a busy machine) add to the iteration as much as they cost. */
        cost[s].fwd = v * stat_of(r, cell, sel, s, "FWD", 0, 1);
        cost[s].bwd = stat_of(r, cell, sel, s, "BWD", 0, 1);
        if (isnan(cost[s].bwd)) /* split: B + W */
            cost[s].bwd = stat_of(r, cell, sel, s, "BWD_INPUT", 0, 1) + stat_of(r, cell, sel, s, "BWD_WEIGHT", 0, 1);
        cost[s].bwd *= v;
        cost[s].opt = stat_of(r, cell, sel, s, "OPT_STEP", 0, 1);
        if (isnan(cost[s].fwd) && isnan(cost[s].bwd) && s == 0)
            return -ENOENT;
        if (isnan(cost[s].fwd) || isnan(cost[s].bwd)) {
            return pn_err(err, errlen, -EINVAL, "cell %d: stage %d has no measured FWD or BWD in iteration %d to take its cost from",
                 cell->cell, s, sel.iteration);
        }
        if (isnan(cost[s].opt))
            cost[s].opt = 0;
        if (cell->dp > 1) /* the runtime's OPT_STEP row spans its all-reduce: the model adds its own */
            cost[s].opt = fmax(0, cost[s].opt - allreduce_per_step(r, cell, sel, s));
    }
    sim_link_t fwd, bwd, link_fwd[RESULTS_MAX_STAGES], link_bwd[RESULTS_MAX_STAGES];
    predict_cell_links(r, cell, p, &fwd, &bwd);
    for (int s = 0; s < S; s++)
        link_fwd[s] = fwd, link_bwd[s] = bwd;
    double act = S > 1 ? stat_of(r, cell, ALL_MEASURED, -1, "SEND_ACT", 1, 0) : 0;
    double grad = S > 1 ? stat_of(r, cell, ALL_MEASURED, -1, "SEND_GRAD", 1, 0) : 0;
    sim_config_t cfg = {
        .schedule = cell->schedule, .stages = S, .micro_batches = cell->micro_batches, .slack = slack,
        .cost = cost, .link_fwd = link_fwd, .link_bwd = link_bwd, .act_bytes = isnan(act) ? 0 : act,
        .grad_bytes = isnan(grad) ? 0 : grad, .send_mode = SIM_SEND_PIPELINED,
    };
    dp_store_t *b = NULL;
    sim_dp_t dpm = {0};
    int rc = cell->dp > 1 ? dp_from_trace(r, cell, sel, p, &b, &dpm, err, errlen) : 0;
    sim_result_t res = {0};
    if (!rc)
        rc = sim_run_dp(&cfg, chunks, cell->dp > 1 ? &dpm : NULL, &res, err, errlen);
    if (!rc)
        *predicted = res.time;
    sim_result_destroy(&res);
    free(b);
    return rc;
}

/* One value per measured iteration (all repeats, warm-up excluded) from each(ctx, repeat,
 * iteration, &value): 0, -ENOENT for an iteration that was not traced (skipped), or an
 * error (returned). *median is their median; none_why is the error when none had one. */
typedef int (*per_iteration_fn)(const void *ctx, int repeat, int it, double *value, char *err, size_t errlen);

static int median_over_iterations(const results_cell_t *cell, per_iteration_fn each, const void *ctx,
                                  const char *none_why, double *median, char *err, size_t errlen)
{
    int repeats = cell->repeats > 0 ? cell->repeats : 1;
    size_t cap = (size_t)repeats * (size_t)(cell->iters > 0 ? cell->iters : 1), n = 0;
    double *t = malloc(cap * sizeof *t);
    if (!t)
        return -ENOMEM;
    int rc = 0;
    for (int rep = 0; rep < repeats && !rc; rep++)
        for (int it = cell->warmup; it < cell->warmup + cell->iters && !rc && n < cap; it++) {
            rc = each(ctx, rep, it, &t[n], err, errlen);
            if (rc == -ENOENT)
                rc = 0;
            else if (!rc)
                n++;
        }
    if (!rc && !n) {
        rc = pn_err(err, errlen, -EINVAL, "cell %d: %s", cell->cell, none_why);
    }
    if (!rc) {
        metrics_stats_t st;
        metrics_stats(t, n, &st);
        *median = st.median;
    }
    free(t);
    return rc;
}

typedef struct {
    const results_t *r;
    const results_cell_t *cell;
    int slack, chunks;
    const netem_profile_t *p;
    const sim_replay_t *how;
    const double *scale; /* per stage, or NULL */
} iter_ctx_t;

static int predict_each(const void *ctx, int rep, int it, double *value, char *err, size_t errlen)
{
    const iter_ctx_t *c = ctx;
    return predict_one(c->r, c->cell, (sel_t){rep, it}, c->slack, c->chunks, c->p, value, err, errlen);
}

int predict_time(const results_t *r, const results_cell_t *cell, int slack, const netem_profile_t *p,
                 double *predicted, char *err, size_t errlen)
{
    return predict_time_chunks(r, cell, slack, 0, p, predicted, err, errlen);
}

int predict_time_chunks(const results_t *r, const results_cell_t *cell, int slack, int chunks,
                        const netem_profile_t *p, double *predicted, char *err, size_t errlen)
{
    int S = cell->stages;
    if (S < 1 || S > RESULTS_MAX_STAGES) {
        return pn_err(err, errlen, -EINVAL, "cell %d: %d stages", cell->cell, S);
    }
    /* The median, like the measured time it is set against: each iteration predicted from
     * what that iteration's ops cost on a machine whose load varies. */
    iter_ctx_t c = {.r = r, .cell = cell, .slack = slack, .chunks = chunks, .p = p};
    return median_over_iterations(cell, predict_each, &c, "stage 0 has no measured FWD or BWD to take its cost from",
                                  predicted, err, errlen);
}

/* Replays iteration `it` of `repeat`; *time is its replayed length. With scale (one
 * factor per stage), each compute op of stage s lasts its measured duration times scale[s]. */
static int replay_one(const results_t *r, const results_cell_t *cell, int repeat, int it, const sim_replay_t *how,
                      const double *scale, double *time, char *err, size_t errlen)
{
    int S = cell->stages;
    sim_trace_op_t *ops[RESULTS_MAX_STAGES] = {0};
    size_t n[RESULTS_MAX_STAGES] = {0}, cap = 0;
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        if (o->cell == cell->cell && o->repeat == repeat && o->iteration == it && o->rank < S &&
            strcmp(o->op, METRICS_OP_ALLREDUCE)) /* the replay is of the pipeline's ops */
            n[o->rank]++, cap++;
    }
    if (!cap)
        return -ENOENT;
    int rc = 0;
    for (int s = 0; s < S && !rc; s++)
        if (!(ops[s] = malloc((n[s] ? n[s] : 1) * sizeof *ops[s])))
            rc = -ENOMEM;
    size_t k[RESULTS_MAX_STAGES] = {0};
    for (size_t i = 0; i < r->n_ops && !rc; i++) {
        const results_op_t *o = &r->ops[i];
        if (o->cell != cell->cell || o->repeat != repeat || o->iteration != it || o->rank >= S ||
            !strcmp(o->op, METRICS_OP_ALLREDUCE))
            continue;
        sim_trace_op_t *t = &ops[o->rank][k[o->rank]++];
        if (sched_op_kind_parse(o->op, &t->kind)) {
            rc = pn_err(err, errlen, -EINVAL, "cell %d rank %d iteration %d: unknown op '%s'", cell->cell, o->rank, it, o->op);
            break;
        }
        t->mb = o->micro_batch;
        t->start = o->start;
        t->end = o->end;
        if (scale && sched_op_is_compute(t->kind))
            t->end = o->start + (o->end - o->start) * scale[o->rank];
        t->bytes = (double)o->bytes;
    }
    if (!rc) {
        sim_trace_t tr = {.stages = S, .micro_batches = cell->micro_batches,
                          .ops = (const sim_trace_op_t *const *)ops, .n_ops = n};
        sim_result_t res = {0};
        rc = sim_replay(&tr, how, &res, err, errlen);
        if (!rc)
            *time = res.time;
        sim_result_destroy(&res);
    }
    for (int s = 0; s < S; s++)
        free(ops[s]);
    return rc;
}

static int replay_each(const void *ctx, int rep, int it, double *value, char *err, size_t errlen)
{
    const iter_ctx_t *c = ctx;
    return replay_one(c->r, c->cell, rep, it, c->how, c->scale, value, err, errlen); /* -ENOENT: not traced */
}

/* The replay every what-if shares: communication timed by the links of predict_cell_links. */
static int replay_median(const results_t *r, const results_cell_t *cell, const netem_profile_t *p, unsigned replace,
                         const double *scale, double *out, char *err, size_t errlen)
{
    int S = cell->stages;
    if (S < 1 || S > RESULTS_MAX_STAGES) {
        return pn_err(err, errlen, -EINVAL, "cell %d: %d stages", cell->cell, S);
    }
    sim_link_t fwd, bwd, link_fwd[RESULTS_MAX_STAGES], link_bwd[RESULTS_MAX_STAGES];
    predict_cell_links(r, cell, p, &fwd, &bwd);
    for (int s = 0; s < S; s++)
        link_fwd[s] = fwd, link_bwd[s] = bwd;
    sim_replay_t how = {.replace = replace, .scope = SIM_MEDIAN_ALL, .comm_measured = SIM_COMM_LINK,
                        .link_fwd = link_fwd, .link_bwd = link_bwd, .send_mode = SIM_SEND_PIPELINED};
    iter_ctx_t c = {.r = r, .cell = cell, .how = &how, .scale = scale};
    return median_over_iterations(cell, replay_each, &c, "no measured iteration to replay", out, err, errlen);
}

int predict_ideal(const results_t *r, const results_cell_t *cell, const netem_profile_t *p, double *ideal,
                  char *err, size_t errlen)
{
    return replay_median(r, cell, p, SIM_REPLACE_COMPUTE, NULL, ideal, err, errlen);
}

/* Each stage's measured compute seconds per measured iteration (all repeats, warm-up
 * excluded): the sum of its compute ops over the iterations it traced. */
static int stage_compute(const results_t *r, const results_cell_t *cell, double *per_iter, char *err, size_t errlen)
{
    int S = cell->stages, repeats = cell->repeats > 0 ? cell->repeats : 1, span = cell->warmup + cell->iters;
    if (span < 1)
        return pn_err(err, errlen, -EINVAL, "cell %d: no measured iteration", cell->cell);
    unsigned char *seen = calloc((size_t)S * (size_t)repeats * (size_t)span, 1);
    if (!seen)
        return -ENOMEM;
    double sum[RESULTS_MAX_STAGES] = {0}, *early = metrics_allreduce_early(r, cell->cell, -1, span, S);
    int n[RESULTS_MAX_STAGES] = {0};
    if (!early) {
        free(seen);
        return -ENOMEM;
    }
    for (int it = cell->warmup; it < span; it++) /* --dp-overlap: the buckets beside the backward */
        for (int s = 0; s < S; s++)
            sum[s] += early[(size_t)it * (size_t)S + (size_t)s];
    free(early);
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        sched_op_kind_t k;
        if (!in_sel(o, cell, ALL_MEASURED) || o->rank < 0 || o->rank >= S || o->repeat < 0 || o->repeat >= repeats ||
            o->iteration >= span || sched_op_kind_parse(o->op, &k) ||
            !(sched_op_is_compute(k) || k == SCHED_ALLREDUCE))
            continue;
        unsigned char *f = &seen[((size_t)o->rank * (size_t)repeats + (size_t)o->repeat) * (size_t)span + (size_t)o->iteration];
        n[o->rank] += !*f;
        *f = 1;
        sum[o->rank] += metrics_op_compute(o); /* the step's row less its all-reduce */
    }
    free(seen);
    for (int s = 0; s < S; s++) {
        if (!n[s] || !(sum[s] > 0)) {
            return pn_err(err, errlen, -EINVAL, "cell %d: stage %d has no measured compute op", cell->cell, s);
        }
        per_iter[s] = sum[s] / n[s];
    }
    return 0;
}

int predict_whatif(const results_t *r, const results_cell_t *cell, const netem_profile_t *p,
                   const double *work, predict_whatif_t *out, char *err, size_t errlen)
{
    int S = cell->stages;
    if (S < 1 || S > RESULTS_MAX_STAGES) {
        return pn_err(err, errlen, -EINVAL, "cell %d: %d stages", cell->cell, S);
    }
    for (int s = 0; s < S; s++)
        if (!work || !isfinite(work[s]) || work[s] <= 0) {
            return pn_err(err, errlen, -EINVAL, "cell %d: stage %d has no FLOP count or modelled time to set its expected compute time",
                          cell->cell, s);
        }
    double c[RESULTS_MAX_STAGES], rate[RESULTS_MAX_STAGES], sorted[RESULTS_MAX_STAGES];
    int rc = stage_compute(r, cell, c, err, errlen);
    if (rc)
        return rc;
    for (int s = 0; s < S; s++)
        sorted[s] = rate[s] = c[s] / work[s]; /* s per unit of work */
    qsort(sorted, (size_t)S, sizeof *sorted, cmp_double);
    /* The typical rate: the median, the lower middle one for an even count (a straggler
     * only ever slows a stage, so of two stages the faster one is the typical one). */
    double typical = sorted[(S - 1) / 2], expected[RESULTS_MAX_STAGES], even[RESULTS_MAX_STAGES], mean = 0;
    predict_whatif_t w = {.slow_stage = 0};
    for (int s = 0; s < S; s++) {
        expected[s] = typical / rate[s];
        mean += typical * work[s] / S;
        if (rate[s] > rate[w.slow_stage])
            w.slow_stage = s;
    }
    for (int s = 0; s < S; s++)
        even[s] = mean / c[s];
    w.slow_factor = rate[w.slow_stage] / typical;
    if ((rc = replay_median(r, cell, p, 0, NULL, &w.as_measured, err, errlen)) ||
        (rc = replay_median(r, cell, p, 0, expected, &w.expected, err, errlen)) ||
        (rc = replay_median(r, cell, p, 0, even, &w.even, err, errlen)))
        return rc;
    w.imbalance = w.expected / w.even;
    w.slowdown = w.as_measured / w.expected;
    *out = w;
    return 0;
}

/* The pieces of `total` bytes in buckets of cap (0: the default), last piece first; each
 * ready once the backward has passed it (bytes from the piece on over all of them). */
void predict_dp_buckets_bytes(double total, double cap, predict_buckets_t *out)
{
    memset(out, 0, sizeof *out);
    if (!(cap > 0))
        cap = ALLREDUCE_BUCKET_DEFAULT;
    double pieces = total > 0 ? ceil(total / cap) : 1;
    out->n = pieces < PREDICT_MAX_BUCKETS ? (int)pieces : PREDICT_MAX_BUCKETS;
    out->total = total;
    for (int k = 0; k < out->n; k++) {
        double lo = (out->n - 1 - k) * cap, hi = k == 0 ? total : fmin(total, lo + cap);
        out->bytes[k] = hi - lo;
        out->ready[k] = k + 1 == out->n || !(total > 0) ? 1 : fmax((total - lo) / total, 1e-12);
    }
}

void predict_dp_buckets(const model_stage_t *st, double cap, predict_buckets_t *out)
{
    double total = 0, total_w = 0;
    if (!(cap > 0))
        cap = ALLREDUCE_BUCKET_DEFAULT;
    for (int i = 0; i < st->n_tensors; i++) {
        const model_tensor_t *t = &st->tensors[i];
        total += 4.0 * (double)t->numel;
        if (t->gemm) /* matrices; the embeddings' backward is a scatter */
            total_w += (double)t->numel;
    }
    predict_dp_buckets_bytes(total, cap, out);
    for (int k = 0; k < out->n; k++) {
        double lo = (out->n - 1 - k) * cap, w = 0;
        for (int i = 0; i < st->n_tensors; i++) { /* tensors from this piece on */
            const model_tensor_t *t = &st->tensors[i];
            if (4.0 * (double)(t->offset + t->numel) > lo && t->gemm)
                w += (double)t->numel;
        }
        out->ready[k] = k + 1 == out->n || !(total_w > 0) ? 1 : fmax(fmin(1, w / total_w), 1e-12);
    }
}

void predict_dp_model(const predict_buckets_t *buckets, int stages, int dp, int overlap, const sim_link_t *link,
                      int *n, const double **bytes, const double **ready, sim_dp_t *out)
{
    for (int s = 0; s < stages; s++) {
        n[s] = buckets[s].n;
        bytes[s] = buckets[s].bytes;
        ready[s] = buckets[s].ready;
    }
    *out = (sim_dp_t){dp, overlap, link, n, bytes, ready};
}

int predict_apriori(const results_cell_t *cell, int slack, int chunks, const sim_cost_t *cost, double boundary_bytes,
                    const netem_profile_t *p, double *predicted, char *err, size_t errlen)
{
    return predict_apriori_dp(cell, slack, chunks, cost, boundary_bytes, p, 1, 0, NULL, NULL, predicted, err, errlen);
}

int predict_apriori_dp(const results_cell_t *cell, int slack, int chunks, const sim_cost_t *cost,
                       double boundary_bytes, const netem_profile_t *p, int dp, int overlap,
                       const netem_profile_t *dp_prof, const predict_buckets_t *buckets, double *predicted,
                       char *err, size_t errlen)
{
    int S = cell->stages;
    if (S < 1 || S > RESULTS_MAX_STAGES) {
        return pn_err(err, errlen, -EINVAL, "cell %d: %d stages", cell->cell, S);
    }
    sim_link_t link[RESULTS_MAX_STAGES];
    for (int s = 0; s < S; s++)
        predict_link(p, &link[s]);
    sim_config_t cfg = {
        .schedule = cell->schedule, .stages = S, .micro_batches = cell->micro_batches, .slack = slack,
        .cost = cost, .link_fwd = link, .link_bwd = link, .act_bytes = S > 1 ? boundary_bytes : 0,
        .grad_bytes = S > 1 ? boundary_bytes : 0, .send_mode = SIM_SEND_PIPELINED,
    };
    sim_link_t dl;
    int n[RESULTS_MAX_STAGES];
    const double *bytes[RESULTS_MAX_STAGES], *ready[RESULTS_MAX_STAGES];
    sim_dp_t dpm = {0};
    if (dp > 1) {
        if (!buckets || !dp_prof)
            return pn_err(err, errlen, -EINVAL, "cell %d: --dp %d without gradient buckets or a DP link", cell->cell,
                          dp);
        predict_link(dp_prof, &dl);
        predict_dp_model(buckets, S, dp, overlap, &dl, n, bytes, ready, &dpm);
    }
    sim_result_t res = {0};
    int rc = sim_run_dp(&cfg, chunks, dp > 1 ? &dpm : NULL, &res, err, errlen);
    if (!rc)
        *predicted = res.time;
    sim_result_destroy(&res);
    return rc;
}
