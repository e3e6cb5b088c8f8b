/* The replay of a measured trace: the measured op order as a plan, with measured,
 * median or link-model durations, through the simulator (sim_graph_run). */
#include "schedules/sim.h"
#include "schedules/sim_priv.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- replay ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of the durations of kind k on stage s (or every stage if s < 0); buf holds
 * enough room for all ops. NaN when there are none. */
static double median_of(const sched_plan_t *p, double *const *dur, int s, sched_op_kind_t k,
                        double *buf)
{
    size_t n = 0;
    for (int st = s < 0 ? 0 : s; st < (s < 0 ? p->stages : s + 1); st++)
        for (size_t j = 0; j < p->n_ops[st]; j++)
            if (p->ops[st][j].kind == k)
                buf[n++] = dur[st][j];
    if (!n)
        return NAN;
    qsort(buf, n, sizeof *buf, cmp_double);
    return n % 2 ? buf[n / 2] : 0.5 * (buf[n / 2 - 1] + buf[n / 2]);
}

/* SIM_COMM_ARRIVAL: the k-th send of a channel is the k-th receive of its neighbour
 * (FIFO); its time in flight is the receive's end minus the send's start, never below
 * zero (clock alignment is imperfect). Channels whose counts differ are left alone: the
 * validator rejects them. */
static void flights_from_receives(const sim_trace_t *t, double *const *dur)
{
    for (int l = 0; l + 1 < t->stages; l++)
        for (int dir = 0; dir < 2; dir++) {
            int from = dir ? l + 1 : l, to = dir ? l : l + 1;
            sched_op_kind_t sk = dir ? SCHED_SEND_GRAD : SCHED_SEND_ACT;
            sched_op_kind_t rk = dir ? SCHED_RECV_GRAD : SCHED_RECV_ACT;
            size_t ns = 0, nr = 0;
            for (size_t j = 0; j < t->n_ops[from]; j++)
                ns += t->ops[from][j].kind == sk;
            for (size_t j = 0; j < t->n_ops[to]; j++)
                nr += t->ops[to][j].kind == rk;
            if (ns != nr)
                continue;
            size_t r = 0;
            for (size_t j = 0; j < t->n_ops[from]; j++) {
                if (t->ops[from][j].kind != sk)
                    continue;
                while (t->ops[to][r].kind != rk)
                    r++;
                double f = t->ops[to][r].end - t->ops[from][j].start;
                dur[from][j] = isfinite(f) && f > 0 ? f : 0;
                r++;
            }
        }
}

int sim_replay(const sim_trace_t *trace, const sim_replay_t *how, sim_result_t *out, char *err,
               size_t errlen)
{
    if (!trace || !how || !trace->ops || !trace->n_ops || trace->stages < 1 ||
        trace->micro_batches < 1) {
        seterr(err, errlen, "replay needs a trace with stages >= 1 and micro-batches >= 1");
        return -EINVAL;
    }
    if (how->scope != SIM_MEDIAN_PER_STAGE && how->scope != SIM_MEDIAN_ALL) {
        seterr(err, errlen, "unknown median scope %d", (int)how->scope);
        return -EINVAL;
    }
    if (how->comm_measured < SIM_COMM_LINK || how->comm_measured > SIM_COMM_ARRIVAL) {
        seterr(err, errlen, "unknown communication timing %d", how->comm_measured);
        return -EINVAL;
    }
    int P = trace->stages, rc;
    sched_plan_t plan = {0};
    opvals_t v = {0};
    double *buf = NULL, *med = NULL;
    size_t N = 0;
    if ((rc = sched_plan_alloc(P, trace->micro_batches, &plan)))
        goto nomem;
    for (int s = 0; s < P; s++) {
        size_t n = trace->n_ops[s];
        if (n && !trace->ops[s]) {
            seterr(err, errlen, "stage %d: no ops but a count of %zu", s, n);
            rc = -EINVAL;
            goto out;
        }
        N += n;
        plan.n_ops[s] = n;
        plan.ops[s] = malloc((n ? n : 1) * sizeof *plan.ops[s]);
        if (!plan.ops[s])
            goto nomem;
        for (size_t j = 0; j < n; j++) {
            const sim_trace_op_t *o = &trace->ops[s][j];
            plan.ops[s][j] = (sched_op_t){o->kind, o->mb, o->kind == SCHED_OPT_STEP ? -1 : s};
            double d = o->end - o->start;
            if ((unsigned)o->kind < SCHED_OP_KINDS && (sched_op_is_compute(o->kind) || is_send(o->kind)) &&
                (!isfinite(o->start) || !isfinite(o->end) || d < 0)) {
                seterr(err, errlen, "stage %d op %zu %s(%d): measured start %g end %g is not a "
                       "finite interval", s, j, sched_op_kind_name(o->kind), o->mb, o->start, o->end);
                rc = -EINVAL;
                goto out;
            }
        }
    }
    if ((rc = sim_opvals_alloc(&plan, &v)))
        goto nomem;
    buf = malloc((N ? N : 1) * sizeof *buf);
    med = malloc(((size_t)P + 1) * SCHED_OP_KINDS * sizeof *med);
    if (!buf || !med)
        goto nomem;
    /* Measured durations first (what a send "measured" depends on the mode), then the
     * medians over them, then the replacements. */
    for (int s = 0; s < P; s++)
        for (size_t j = 0; j < trace->n_ops[s]; j++) {
            const sim_trace_op_t *o = &trace->ops[s][j];
            int timed = (unsigned)o->kind < SCHED_OP_KINDS && (sched_op_is_compute(o->kind) || is_send(o->kind));
            v.dur[s][j] = timed ? o->end - o->start : 0;
            v.bytes[s][j] = o->bytes;
        }
    if (how->comm_measured == SIM_COMM_ARRIVAL)
        flights_from_receives(trace, v.dur);
    /* med[(s+1)*KINDS + k], row 0 = all stages. */
    for (int k = 0; k < SCHED_OP_KINDS; k++) {
        if (!(how->replace & SIM_KIND_BIT(k)))
            continue;
        med[k] = median_of(&plan, v.dur, -1, (sched_op_kind_t)k, buf);
        for (int s = 0; s < P; s++)
            med[(size_t)(s + 1) * SCHED_OP_KINDS + k] = median_of(&plan, v.dur, s, (sched_op_kind_t)k, buf);
    }
    for (int s = 0; s < P; s++)
        for (size_t j = 0; j < trace->n_ops[s]; j++) {
            sched_op_kind_t k = trace->ops[s][j].kind;
            if ((unsigned)k >= SCHED_OP_KINDS)
                continue; /* the validator names it */
            if (how->replace & SIM_KIND_BIT(k))
                v.dur[s][j] = med[(size_t)(how->scope == SIM_MEDIAN_ALL ? 0 : s + 1) * SCHED_OP_KINDS + k];
            if (is_send(k) && how->comm_measured == SIM_COMM_LINK)
                v.dur[s][j] = NAN;
        }
    sim_graph_t g = {&plan, (const double *const *)v.dur, (const double *const *)v.bytes,
                     how->comm_measured ? NULL : how->link_fwd,
                     how->comm_measured ? NULL : how->link_bwd, how->send_mode};
    rc = sim_graph_run(&g, out, err, errlen);
    goto out;
nomem:
    rc = -ENOMEM;
    seterr(err, errlen, "out of memory replaying %d stages", P);
out:
    free(buf);
    free(med);
    sim_opvals_free(&v);
    sched_plan_destroy(&plan);
    return rc;
}
