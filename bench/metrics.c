/* Metrics from a cell's op trace. Iteration boundaries come from the ops themselves
 * (every op carries its iteration), so nothing depends on how the stages were launched. */
#include "bench/metrics.h"
#include "schedules/sched.h"
#include "common/err.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void metrics_stats(const double *x, size_t n, metrics_stats_t *out)
{
    metrics_stats_t s = {NAN, NAN, NAN, NAN, NAN, 0};
    double *v = n ? malloc(n * sizeof *v) : NULL;
    if (!v) {
        *out = s;
        return;
    }
    memcpy(v, x, n * sizeof *v);
    qsort(v, n, sizeof *v, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    s.n = n;
    s.min = v[0];
    s.max = v[n - 1];
    s.mean = sum / (double)n;
    s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += (v[i] - s.mean) * (v[i] - s.mean);
    s.stdev = n > 1 ? sqrt(ss / (double)(n - 1)) : 0.0;
    free(v);
    *out = s;
}

int metrics_op_lane(const char *op)
{
    sched_op_kind_t k;
    if (!strcmp(op, METRICS_OP_ALLREDUCE))
        return METRICS_LANE_ALLREDUCE;
    if (sched_op_kind_parse(op, &k))
        return -1;
    if (sched_op_is_compute(k))
        return METRICS_LANE_COMPUTE;
    if (k == SCHED_SEND_ACT || k == SCHED_SEND_GRAD)
        return METRICS_LANE_SEND;
    if (k == SCHED_RECV_ACT || k == SCHED_RECV_GRAD)
        return METRICS_LANE_RECV;
    return -1;
}

double metrics_op_compute(const results_op_t *o)
{
    int lane = metrics_op_lane(o->op);
    double d = o->end - o->start;
    return lane == METRICS_LANE_COMPUTE ? d : lane == METRICS_LANE_ALLREDUCE ? -d : 0;
}

double *metrics_allreduce_early(const results_t *r, int cell, int repeat, int iters, int ranks)
{
    size_t n = iters > 0 && ranks > 0 ? (size_t)iters * (size_t)ranks : 1;
    double *early = calloc(n, sizeof *early);
    if (!early)
        return NULL;
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        if (o->cell != cell || (repeat >= 0 && o->repeat != repeat) || o->iteration < 0 || o->iteration >= iters ||
            o->rank < 0 || o->rank >= ranks || strcmp(o->op, METRICS_OP_ALLREDUCE))
            continue;
        /* its rank's OPT_STEP row of the iteration: the runtime lists it after the buckets (in
         * order of start, only the buckets that start inside it follow it, and they need nothing) */
        for (size_t j = i + 1; j < r->n_ops; j++) {
            const results_op_t *q = &r->ops[j];
            if (q->cell == o->cell && q->repeat == o->repeat && q->iteration == o->iteration && q->rank == o->rank &&
                !strcmp(q->op, "OPT_STEP")) {
                if (o->start < q->start)
                    early[(size_t)o->iteration * (size_t)ranks + (size_t)o->rank] += fmin(o->end, q->start) - o->start;
                break;
            }
        }
    }
    return early;
}

int metrics_iter_times(const results_t *r, int cell, int repeat, double **times, int *n,
                       char *err, size_t errlen)
{
    int iters = 0;
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        if (o->cell == cell && o->repeat == repeat && o->iteration + 1 > iters)
            iters = o->iteration + 1;
    }
    if (iters == 0) {
        return pn_err(err, errlen, -EINVAL, "cell %d repeat %d has no traced ops", cell, repeat);
    }
    double *first = malloc((size_t)iters * sizeof *first), *last = malloc((size_t)iters * sizeof *last);
    double *t = malloc((size_t)iters * sizeof *t);
    if (!first || !last || !t) {
        free(first);
        free(last);
        free(t);
        return -ENOMEM;
    }
    for (int k = 0; k < iters; k++)
        first[k] = INFINITY, last[k] = -INFINITY;
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        if (o->cell != cell || o->repeat != repeat)
            continue;
        first[o->iteration] = fmin(first[o->iteration], o->start);
        last[o->iteration] = fmax(last[o->iteration], o->end);
    }
    int rc = 0;
    for (int k = 0; k < iters && !rc; k++) {
        if (isinf(last[k])) {
            rc = pn_err(err, errlen, -EINVAL, "cell %d repeat %d: iteration %d has no traced ops", cell, repeat, k);
        } else {
            t[k] = last[k] - (k ? last[k - 1] : first[k]);
        }
    }
    free(first);
    free(last);
    if (rc) {
        free(t);
        return rc;
    }
    *times = t;
    *n = iters;
    return 0;
}

int metrics_cell_compute(results_t *r, const metrics_params_t *p, results_cell_t *cell,
                         char *err, size_t errlen)
{
    int stages = cell->stages;
    if (stages < 1 || stages > RESULTS_MAX_STAGES) {
        return pn_err(err, errlen, -EINVAL, "cell %d: %d stages (1..%d)", cell->cell, stages, RESULTS_MAX_STAGES);
    }
    size_t cap = 0, n = 0;
    double *measured = NULL;
    double bubble_sum[RESULTS_MAX_STAGES] = {0};
    int rc = 0;
    size_t first_iter_row = r->n_iters;
    for (int rep = 0; rep < (cell->repeats > 0 ? cell->repeats : 1) && !rc; rep++) {
        double *t = NULL;
        int iters = 0;
        rc = metrics_iter_times(r, cell->cell, rep, &t, &iters, err, errlen);
        if (rc)
            break;
        double *busy = calloc((size_t)iters * (size_t)stages, sizeof *busy);
        double *grown = realloc(measured, (cap + (size_t)iters) * sizeof *measured);
        if (!busy || !grown) {
            free(busy);
            free(grown ? grown : measured);
            measured = NULL;
            free(t);
            rc = -ENOMEM;
            break;
        }
        measured = grown;
        cap += (size_t)iters;
        double *early = metrics_allreduce_early(r, cell->cell, rep, iters, stages);
        if (!early) {
            free(busy);
            free(t);
            rc = -ENOMEM;
            break;
        }
        for (size_t i = 0; i < r->n_ops; i++) {
            const results_op_t *o = &r->ops[i];
            if (o->cell == cell->cell && o->repeat == rep && o->rank < stages)
                busy[(size_t)o->iteration * (size_t)stages + (size_t)o->rank] += metrics_op_compute(o);
        }
        for (size_t k = 0; k < (size_t)iters * (size_t)stages; k++)
            busy[k] += early[k];
        free(early);
        for (int k = 0; k < iters && !rc; k++) {
            int warm = k < p->warmup;
            results_iter_t it = {cell->cell, rep, k, warm, t[k], NAN};
            if (p->loss_scale && k < p->scale_iters)
                it.loss_scale = p->loss_scale[(size_t)rep * (size_t)p->scale_iters + (size_t)k];
            rc = results_iter_add(r, &it);
            if (warm)
                continue;
            measured[n++] = t[k];
            for (int s = 0; s < stages; s++)
                bubble_sum[s] += 1.0 - busy[(size_t)k * (size_t)stages + (size_t)s] / t[k];
        }
        free(busy);
        free(t);
    }
    if (!rc && n == 0) {
        rc = pn_err(err, errlen, -EINVAL, "cell %d: no measured iteration (every traced iteration is warm-up: --warmup %d)",
             cell->cell, p->warmup);
    }
    if (rc) {
        r->n_iters = first_iter_row;
        free(measured);
        return rc;
    }
    metrics_stats_t st;
    metrics_stats(measured, n, &st);
    free(measured);
    cell->iter_median = st.median;
    cell->iter_mean = st.mean;
    cell->iter_min = st.min;
    cell->iter_max = st.max;
    cell->iter_stdev = st.stdev;
    /* every replica trains its own batch */
    cell->tokens_per_s = (cell->dp > 1 ? cell->dp : 1) * (double)p->batch_size * (double)p->seq_len / st.median;
    double total = 0;
    for (int s = 0; s < stages; s++) {
        cell->bubble[s] = bubble_sum[s] / (double)n;
        cell->flops[s] = p->flop_per_iter ? p->flop_per_iter[s] / st.median : NAN;
        total += cell->flops[s];
    }
    cell->mfu = p->flop_per_iter && p->peak_flops > 0 ? total / ((double)stages * p->peak_flops) : NAN;
    return 0;
}

int metrics_kind_median(const results_t *r, int cell, int warmup, const char *op, double *out)
{
    size_t n = 0;
    for (size_t i = 0; i < r->n_ops; i++)
        n += r->ops[i].cell == cell && r->ops[i].iteration >= warmup && !strcmp(r->ops[i].op, op);
    if (!n)
        return -ENOENT;
    double *d = malloc(n * sizeof *d);
    if (!d)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        if (o->cell == cell && o->iteration >= warmup && !strcmp(o->op, op))
            d[k++] = o->end - o->start;
    }
    metrics_stats_t st;
    metrics_stats(d, n, &st);
    free(d);
    *out = st.median;
    return 0;
}

void metrics_straggler(double t, double t_ideal, double *delay, double *slowdown)
{
    *slowdown = t / t_ideal;
    *delay = 1.0 - t_ideal / t;
}

void metrics_dp_straggler(const results_t *r, results_cell_t *cell, int *slow_replica)
{
    int P = cell->stages, D = cell->dp;
    for (int s = 0; s < RESULTS_MAX_STAGES; s++) {
        cell->dp_straggler[s] = NAN;
        if (slow_replica)
            slow_replica[s] = -1;
    }
    if (D < 2 || P < 1 || P > RESULTS_MAX_STAGES)
        return;
    int span = cell->warmup + cell->iters;
    double *sum = calloc((size_t)D * (size_t)P, sizeof *sum), *peers = malloc((size_t)D * sizeof *peers);
    double *early = metrics_allreduce_early(r, cell->cell, -1, span, D * P);
    if (!sum || !peers || !early) {
        free(sum);
        free(peers);
        free(early);
        return;
    }
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        if (o->cell == cell->cell && o->iteration >= cell->warmup && o->rank >= 0 && o->rank < D * P)
            sum[o->rank] += metrics_op_compute(o);
    }
    for (int it = cell->warmup; it < span; it++)
        for (int k = 0; k < D * P; k++)
            sum[k] += early[(size_t)it * (size_t)(D * P) + (size_t)k];
    free(early);
    for (int s = 0; s < P; s++) {
        int slow = 0, traced = 1;
        for (int d = 0; d < D; d++) {
            traced &= sum[d * P + s] > 0;
            if (sum[d * P + s] > sum[slow * P + s])
                slow = d;
        }
        if (!traced)
            continue;
        size_t n = 0;
        for (int d = 0; d < D; d++)
            if (d != slow)
                peers[n++] = sum[d * P + s];
        metrics_stats_t st;
        metrics_stats(peers, n, &st);
        /* the same number of iterations on every replica: the sums' ratio is the per-iteration one */
        cell->dp_straggler[s] = sum[slow * P + s] / st.median;
        if (slow_replica)
            slow_replica[s] = slow;
    }
    free(sum);
    free(peers);
}
