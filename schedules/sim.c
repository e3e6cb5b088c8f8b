/* The discrete-event simulator behind `pipenem sim`, the timeline of `pipenem schedule`
 * and the harness's predicted and ideal (replayed) iteration times. See sim.h for the
 * semantics. Events are processed per stage in list order: every time in the model is
 * fixed by program order (a link direction carries one stage's sends, in that stage's
 * order), so a dataflow pass over the ops gives the same times as a priority queue. */
#include "schedules/sim.h"
#include "schedules/sched_priv.h"
#include "schedules/sim_priv.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>


static const char *const send_mode_names[] = {"pipelined", "blocking"};

const char *sim_send_mode_name(sim_send_mode_t m)
{
    return (unsigned)m < 2 ? send_mode_names[m] : "?";
}

int sim_send_mode_parse(const char *name, sim_send_mode_t *out)
{
    for (int m = 0; m < 2; m++)
        if (name && !strcasecmp(name, send_mode_names[m])) {
            *out = (sim_send_mode_t)m;
            return 0;
        }
    return -EINVAL;
}

double sim_link_occupancy(const sim_link_t *l, double bytes)
{
    if (!l)
        return 0;
    return l->overhead + (l->bandwidth > 0 ? bytes * 8.0 / l->bandwidth : 0);
}


/* Checks stages-1 links of one direction; `dir` names it in the message. */
static int check_links(const sim_link_t *l, int stages, const char *dir, char *err,
                       size_t errlen)
{
    for (int i = 0; l && i + 1 < stages; i++) {
        const struct {
            const char *name;
            double v;
        } f[] = {{"delay", l[i].delay}, {"bandwidth", l[i].bandwidth}, {"overhead", l[i].overhead}};
        for (size_t k = 0; k < sizeof f / sizeof *f; k++)
            if (bad_seconds(f[k].v)) {
                seterr(err, errlen, "link %d-%d (%s) %s %g: must be a finite number >= 0", i, i + 1,
                       dir, f[k].name, f[k].v);
                return -EINVAL;
            }
    }
    return 0;
}

void sim_result_destroy(sim_result_t *r)
{
    if (!r)
        return;
    if (r->span)
        free(r->span[0]); /* one block for every stage */
    free(r->span);
    free(r->busy);
    free(r->bubble);
    free(r->peak_inflight);
    free(r->critical);
    free(r->allreduce);
    sched_plan_destroy(&r->plan);
    memset(r, 0, sizeof *r);
}

static int plan_copy(const sched_plan_t *src, sched_plan_t *dst)
{
    sched_plan_t p;
    int rc = sched_plan_alloc(src->stages, src->micro_batches, &p);
    if (rc)
        return rc;
    for (int s = 0; s < src->stages; s++) {
        size_t n = src->n_ops[s];
        p.ops[s] = malloc((n ? n : 1) * sizeof *p.ops[s]);
        if (!p.ops[s]) {
            sched_plan_destroy(&p);
            return -ENOMEM;
        }
        if (n)
            memcpy(p.ops[s], src->ops[s], n * sizeof *p.ops[s]);
        p.n_ops[s] = n;
    }
    p.chunks = src->chunks;
    p.place = src->place;
    *dst = p;
    return 0;
}

/* State of one run. Ops are addressed by a flat index off[s] + i. Physical link
 * directions: id l < P is stage l -> l+1 (l = P-1: the last stage -> 0), id P + l is
 * l+1 -> l (l = P-1: 0 -> the last); a channel is a direction times the message kind
 * (activation, gradient), matched in FIFO order as the validator guarantees. */
typedef struct {
    const sim_graph_t *g;
    const sched_plan_t *p;
    int P;
    size_t *off;
    sim_span_t *span;
    long *pred;           /* flat index of the op whose end fixed this op's end, -1: none */
    size_t *pc;           /* next op per stage */
    double *clock;        /* when each stage's next op may start */
    long *setter;         /* op that set clock */
    double *stream_free;  /* blocking mode: when each stage's send stream is free */
    long *stream_last;
    double *link_free;    /* [2P] per direction */
    long *link_last;
    size_t **chan_send;   /* [4P][k]: flat index of the k-th message's send */
    size_t *n_sent, *n_recv; /* [4P] */
    int *waiting;
    int *work;
    int n_work;
    const sim_dp_t *dp;
    sim_span_t *allreduce; /* [P] with an active sim_dp_t, else NULL (owned by the result) */
} run_t;

static int link_id(int P, int from, int to)
{
    if (to == from + 1)
        return from;
    if (to == from - 1)
        return P + to;
    return from == P - 1 ? P - 1 : 2 * P - 1; /* the wrap-around of interleaved chunks */
}

static const sim_link_t *link_model(const sim_graph_t *g, int P, int id)
{
    int back = id >= P, l = back ? id - P : id;
    const sim_link_t *arr = back ? g->link_bwd : g->link_fwd;
    if (l < P - 1)
        return arr ? &arr[l] : NULL;
    return arr ? &arr[0] : NULL; /* the wrap-around: as link 0 */
}

/* The rank at the other end of a send or receive. */
static int peer_of(const sched_plan_t *p, const sched_op_t *op)
{
    int prev = op->kind == SCHED_RECV_ACT || op->kind == SCHED_SEND_GRAD;
    return sched_chunk_rank(p->place, p->stages, prev ? op->chunk - 1 : op->chunk + 1);
}

static int chan_of(int P, int from, int to, sched_op_kind_t k)
{
    int grad = k == SCHED_RECV_GRAD || k == SCHED_SEND_GRAD;
    return link_id(P, from, to) * 2 + grad;
}

static void wake(run_t *r, int s)
{
    if (r->waiting[s]) {
        r->waiting[s] = 0;
        r->work[r->n_work++] = s;
    }
}

static void receive(run_t *r, int s, size_t i, int ch)
{
    size_t k = r->n_recv[ch]++;
    size_t from = r->chan_send[ch][k];
    double arrive = r->span[from].end, t = r->clock[s];
    r->span[i] = (sim_span_t){t, arrive > t ? arrive : t};
    r->pred[i] = arrive > t ? (long)from : r->setter[s];
    r->clock[s] = r->span[i].end;
    r->setter[s] = (long)i;
}

static void send(run_t *r, int s, size_t i, int to, int ch, double dur, double bytes)
{
    int link = ch / 2;
    const sim_link_t *lm = link_model(r->g, r->P, link);
    double dep = r->clock[s];
    long pred = r->setter[s];
    int blocking = r->g->send_mode == SIM_SEND_BLOCKING;
    if (blocking && r->stream_free[s] > dep) {
        dep = r->stream_free[s];
        pred = r->stream_last[s];
    }
    double end;
    if (!isnan(dur)) {
        end = dep + dur;
    } else {
        if (r->link_free[link] > dep) {
            dep = r->link_free[link];
            pred = r->link_last[link];
        }
        double occ = sim_link_occupancy(lm, bytes);
        r->link_free[link] = dep + occ;
        r->link_last[link] = (long)i;
        end = dep + occ + (lm ? lm->delay : 0);
    }
    if (blocking) {
        r->stream_free[s] = end;
        r->stream_last[s] = (long)i;
    }
    r->span[i] = (sim_span_t){dep, end};
    r->pred[i] = pred;
    r->chan_send[ch][r->n_sent[ch]++] = i;
    wake(r, to);
}

/* Before stage s's OPT_STEP (op j): its all-reduce, after its last backward; the step
 * waits for the last bucket (its chain goes on from the stage's previous op). */
static void allreduce(run_t *r, int s, size_t j)
{
    sim_span_t last = {r->clock[s], r->clock[s]};
    for (size_t k = j; k-- > 0;) {
        sched_op_kind_t kind = r->p->ops[s][k].kind;
        if (kind == SCHED_BWD || kind == SCHED_BWD_WEIGHT) {
            last = r->span[r->off[s] + k];
            break;
        }
    }
    double end = sim_dp_stage(r->dp, s, last, &r->allreduce[s]);
    if (end > r->clock[s])
        r->clock[s] = end;
}

/* Runs stage s until it finishes or waits for a message not yet sent. */
static void advance(run_t *r, int s)
{
    const sched_op_t *ops = r->p->ops[s];
    while (r->pc[s] < r->p->n_ops[s]) {
        size_t j = r->pc[s], i = r->off[s] + j;
        const sched_op_t *op = &ops[j];
        double dur = r->g->dur[s][j];
        if (op->kind == SCHED_RECV_ACT || op->kind == SCHED_RECV_GRAD) {
            int ch = chan_of(r->P, peer_of(r->p, op), s, op->kind);
            if (r->n_recv[ch] == r->n_sent[ch]) {
                r->waiting[s] = 1;
                return;
            }
            receive(r, s, i, ch);
        } else if (op->kind == SCHED_SEND_ACT || op->kind == SCHED_SEND_GRAD) {
            int to = peer_of(r->p, op);
            send(r, s, i, to, chan_of(r->P, s, to, op->kind), dur, r->g->bytes[s][j]);
        } else { /* compute */
            if (op->kind == SCHED_OPT_STEP && r->allreduce)
                allreduce(r, s, j);
            r->span[i] = (sim_span_t){r->clock[s], r->clock[s] + dur};
            r->pred[i] = r->setter[s];
            r->clock[s] = r->span[i].end;
            r->setter[s] = (long)i;
        }
        r->pc[s]++;
    }
}

static void run_free(run_t *r)
{
    for (int c = 0; r->chan_send && c < 4 * r->P; c++)
        free(r->chan_send[c]);
    free(r->chan_send);
    free(r->n_sent);
    free(r->n_recv);
    free(r->link_free);
    free(r->link_last);
    free(r->off);
    free(r->pred);
    free(r->pc);
    free(r->clock);
    free(r->setter);
    free(r->stream_free);
    free(r->stream_last);
    free(r->waiting);
    free(r->work);
}

/* Durations and sizes must be usable numbers; the message names stage and op. */
static int check_graph_numbers(const sim_graph_t *g, char *err, size_t errlen)
{
    const sched_plan_t *p = g->plan;
    for (int s = 0; s < p->stages; s++)
        for (size_t j = 0; j < p->n_ops[s]; j++) {
            sched_op_kind_t k = p->ops[s][j].kind;
            double d = g->dur[s][j];
            char tok[32] = "";
            int bad = (sched_op_is_compute(k) && bad_seconds(d)) || (is_send(k) && !isnan(d) && bad_seconds(d)) ||
                      (is_send(k) && bad_seconds(g->bytes[s][j]));
            if (!bad)
                continue;
            sched_op_format(&p->ops[s][j], tok, sizeof tok);
            if (sched_op_is_compute(k) && bad_seconds(d)) {
                seterr(err, errlen, "stage %d op %zu %s: duration %g s must be a finite number >= 0",
                       s, j, tok, d);
                return -EINVAL;
            }
            if (is_send(k) && !isnan(d) && bad_seconds(d)) {
                seterr(err, errlen, "stage %d op %zu %s: transfer time %g s must be >= 0 (or NaN for the link model)",
                       s, j, tok, d);
                return -EINVAL;
            }
            if (is_send(k) && bad_seconds(g->bytes[s][j])) {
                seterr(err, errlen, "stage %d op %zu %s: message size %g bytes must be a finite number >= 0",
                       s, j, tok, g->bytes[s][j]);
                return -EINVAL;
            }
        }
    return 0;
}

/* The link and channel tables of a run: 2P directions, 4P channels. */
static int links_alloc(run_t *r)
{
    int P = r->P;
    r->chan_send = calloc(4 * (size_t)P, sizeof *r->chan_send);
    r->n_sent = calloc(4 * (size_t)P, sizeof *r->n_sent);
    r->n_recv = calloc(4 * (size_t)P, sizeof *r->n_recv);
    r->link_free = calloc(2 * (size_t)P, sizeof *r->link_free);
    r->link_last = malloc(2 * (size_t)P * sizeof *r->link_last);
    if (!r->chan_send || !r->n_sent || !r->n_recv || !r->link_free || !r->link_last)
        return -ENOMEM;
    for (int l = 0; l < 2 * P; l++)
        r->link_last[l] = -1;
    /* A channel carries at most one message per (micro-batch, chunk of the rank). */
    size_t per_chan = (size_t)r->p->micro_batches * (size_t)(sched_plan_chunks(r->p) / P);
    for (int c = 0; c < 4 * P; c++)
        if (!(r->chan_send[c] = malloc(per_chan * sizeof **r->chan_send)))
            return -ENOMEM;
    return 0;
}

/* Totals, and the critical path back from the op that ends last. */
static int result_fill(const run_t *r, sim_result_t *res)
{
    const sched_plan_t *p = r->p;
    int P = r->P;
    long last = -1;
    for (int s = 0; s < P; s++)
        for (size_t j = 0; j < p->n_ops[s]; j++) {
            size_t i = r->off[s] + j;
            if (sched_op_is_compute(p->ops[s][j].kind))
                res->busy[s] += r->span[i].end - r->span[i].start;
            if (last < 0 || r->span[i].end > r->span[last].end)
                last = (long)i;
        }
    res->time = last >= 0 ? r->span[last].end : 0;
    double busy_all = 0;
    for (int s = 0; s < P; s++) {
        res->bubble[s] = res->time > 0 ? 1 - res->busy[s] / res->time : 0;
        busy_all += res->busy[s];
    }
    res->bubble_mean = res->time > 0 ? 1 - busy_all / (P * res->time) : 0;
    size_t n_path = 0;
    for (long i = last; i >= 0; i = r->pred[i])
        n_path++;
    res->critical = malloc((n_path ? n_path : 1) * sizeof *res->critical);
    if (!res->critical)
        return -ENOMEM;
    size_t k = n_path;
    for (long i = last; i >= 0; i = r->pred[i]) {
        int s = P - 1;
        while (r->off[s] > (size_t)i)
            s--;
        res->critical[--k] = (sim_ref_t){s, (size_t)i - r->off[s]};
    }
    res->n_critical = n_path;
    return 0;
}

/* Everything a run needs besides the links; spans go to res->span as well. */
static int run_alloc(run_t *r, sim_result_t *res)
{
    int P = r->P;
    size_t N = 0;
    r->off = malloc((size_t)P * sizeof *r->off);
    if (!r->off)
        return -ENOMEM;
    for (int s = 0; s < P; s++) {
        r->off[s] = N;
        N += r->p->n_ops[s];
    }
    res->span = calloc((size_t)P, sizeof *res->span);
    r->span = calloc(N ? N : 1, sizeof *r->span);
    if (!res->span || !r->span)
        return -ENOMEM;
    for (int s = 0; s < P; s++)
        res->span[s] = r->span + r->off[s];
    r->pred = malloc((N ? N : 1) * sizeof *r->pred);
    r->pc = calloc((size_t)P, sizeof *r->pc);
    r->clock = calloc((size_t)P, sizeof *r->clock);
    r->setter = malloc((size_t)P * sizeof *r->setter);
    r->stream_free = calloc((size_t)P, sizeof *r->stream_free);
    r->stream_last = malloc((size_t)P * sizeof *r->stream_last);
    r->waiting = calloc((size_t)P, sizeof *r->waiting);
    r->work = malloc((size_t)P * sizeof *r->work);
    if (sim_dp_active(r->dp) && !(r->allreduce = res->allreduce = calloc((size_t)P, sizeof *res->allreduce)))
        return -ENOMEM;
    res->busy = calloc((size_t)P, sizeof *res->busy);
    res->bubble = calloc((size_t)P, sizeof *res->bubble);
    if (!r->pred || !r->pc || !r->clock || !r->setter || !r->stream_free || !r->stream_last ||
        !r->waiting || !r->work || !res->busy || !res->bubble)
        return -ENOMEM;
    return links_alloc(r);
}

/* built: the plan comes from a schedule's own generator, whose plans the tests validate
 * for every shape they cover: the validator's second pass over it is skipped (a plan
 * that still could not run ends in "internal: stage S stopped", never a hang). */
static int graph_run(const sim_graph_t *g, const sim_dp_t *dp, int built, sim_result_t *out, char *err,
                     size_t errlen)
{
    if (!g || !g->plan || !g->dur || !g->bytes) {
        seterr(err, errlen, "simulator input missing (plan, durations or sizes)");
        return -EINVAL;
    }
    const sched_plan_t *p = g->plan;
    int P = p->stages, rc;
    if (g->send_mode != SIM_SEND_PIPELINED && g->send_mode != SIM_SEND_BLOCKING) {
        seterr(err, errlen, "unknown send mode %d", (int)g->send_mode);
        return -EINVAL;
    }
    sim_result_t res = {0};
    run_t r = {.g = g, .p = p, .P = P, .dp = dp};
    int *peak = calloc((size_t)(P > 0 ? P : 1), sizeof *peak);
    if (!peak) {
        seterr(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (int s = 0; built && s < P; s++)
        peak[s] = sched_ops_peak_inflight(p->ops[s], p->n_ops[s]);
    if ((!built && (rc = sched_plan_validate(p, peak, err, errlen))) ||
        (rc = check_links(g->link_fwd, P, "activations", err, errlen)) ||
        (rc = check_links(g->link_bwd, P, "gradients", err, errlen)) ||
        (rc = check_graph_numbers(g, err, errlen)) || (rc = sim_dp_check(dp, P, err, errlen))) {
        free(peak);
        return rc;
    }
    res.peak_inflight = peak;
    res.slack = -1;
    if ((rc = run_alloc(&r, &res)))
        goto fail;
    for (int s = 0; s < P; s++) {
        r.setter[s] = -1;
        r.stream_last[s] = -1;
        r.work[r.n_work++] = P - 1 - s; /* stage 0 first: it never waits */
    }
    while (r.n_work > 0)
        advance(&r, r.work[--r.n_work]);
    for (int s = 0; s < P; s++)
        if (r.pc[s] != p->n_ops[s]) { /* the validator rules this out; say so if it happens */
            seterr(err, errlen, "internal: stage %d stopped at op %zu", s, r.pc[s]);
            rc = -EPROTO;
            goto fail;
        }
    if ((rc = result_fill(&r, &res)) || (rc = plan_copy(p, &res.plan)))
        goto fail;
    run_free(&r);
    *out = res;
    return 0;
fail:
    if (rc == -ENOMEM)
        seterr(err, errlen, "out of memory simulating %d stages", P);
    run_free(&r);
    if (res.span)
        res.span[0] = r.span; /* so destroy frees the block */
    else
        free(r.span);
    sim_result_destroy(&res);
    return rc;
}

int sim_graph_run(const sim_graph_t *g, sim_result_t *out, char *err, size_t errlen)
{
    return graph_run(g, NULL, 0, out, err, errlen);
}

int sim_graph_run_dp(const sim_graph_t *g, const sim_dp_t *dp, sim_result_t *out, char *err, size_t errlen)
{
    return graph_run(g, dp, 0, out, err, errlen);
}

static int check_config(const sim_config_t *c, char *err, size_t errlen)
{
    if (!c) {
        seterr(err, errlen, "no configuration");
        return -EINVAL;
    }
    if (sched_uses_slack(c->schedule) < 0) {
        seterr(err, errlen, "unknown schedule '%s' (known: %s)", c->schedule ? c->schedule : "(null)",
               sched_names());
        return -EINVAL;
    }
    if (c->stages < 1) {
        seterr(err, errlen, "stages must be >= 1 (got %d)", c->stages);
        return -EINVAL;
    }
    if (c->micro_batches < 1) {
        seterr(err, errlen, "micro-batches must be >= 1 (got %d)", c->micro_batches);
        return -EINVAL;
    }
    if (!c->cost) {
        seterr(err, errlen, "no per-stage costs");
        return -EINVAL;
    }
    for (int s = 0; s < c->stages; s++) {
        const struct {
            const char *name;
            double v;
        } f[] = {{"forward", c->cost[s].fwd}, {"backward", c->cost[s].bwd}, {"optimizer", c->cost[s].opt}};
        for (size_t k = 0; k < sizeof f / sizeof *f; k++)
            if (bad_seconds(f[k].v)) {
                seterr(err, errlen, "stage %d %s cost %g s: must be a finite number >= 0", s,
                       f[k].name, f[k].v);
                return -EINVAL;
            }
    }
    if (bad_seconds(c->act_bytes) || bad_seconds(c->grad_bytes)) {
        seterr(err, errlen, "%s size %g bytes: must be a finite number >= 0",
               bad_seconds(c->act_bytes) ? "activation" : "gradient",
               bad_seconds(c->act_bytes) ? c->act_bytes : c->grad_bytes);
        return -EINVAL;
    }
    if (c->send_mode != SIM_SEND_PIPELINED && c->send_mode != SIM_SEND_BLOCKING) {
        seterr(err, errlen, "unknown send mode %d", (int)c->send_mode);
        return -EINVAL;
    }
    int rc = check_links(c->link_fwd, c->stages, "activations", err, errlen);
    return rc ? rc : check_links(c->link_bwd, c->stages, "gradients", err, errlen);
}

/* Durations of a built plan from per-rank costs: each of a rank's v chunks takes 1/v. */
static void durations_from_costs(const sim_config_t *c, const sched_plan_t *plan, opvals_t *v)
{
    double per = (double)plan->stages / sched_plan_chunks(plan);
    for (int s = 0; s < plan->stages; s++)
        for (size_t j = 0; j < plan->n_ops[s]; j++) {
            const sim_cost_t *k = &c->cost[s];
            double w = k->bwd / 2;
            switch (plan->ops[s][j].kind) {
            case SCHED_FWD: v->dur[s][j] = k->fwd * per; break;
            case SCHED_BWD: v->dur[s][j] = k->bwd * per; break;
            case SCHED_BWD_INPUT: v->dur[s][j] = (k->bwd - w) * per; break;
            case SCHED_BWD_WEIGHT: v->dur[s][j] = w * per; break;
            case SCHED_OPT_STEP: v->dur[s][j] = k->opt; break;
            case SCHED_SEND_ACT: v->dur[s][j] = NAN; v->bytes[s][j] = c->act_bytes; break;
            case SCHED_SEND_GRAD: v->dur[s][j] = NAN; v->bytes[s][j] = c->grad_bytes; break;
            default: break;
            }
        }
}

static int run_fixed_slack(const sim_config_t *c, const sim_dp_t *dp, int slack, int chunks, sim_result_t *out,
                           char *err, size_t errlen)
{
    sched_plan_t plan = {0};
    opvals_t v = {0};
    sched_spec_t spec = {c->schedule, c->stages, c->micro_batches, slack, chunks};
    int rc = sched_plan_build_spec(&spec, &plan, err, errlen);
    if (rc)
        return rc;
    if ((rc = sim_opvals_alloc(&plan, &v))) {
        seterr(err, errlen, "out of memory");
        goto out;
    }
    durations_from_costs(c, &plan, &v);
    sim_graph_t g = {&plan, (const double *const *)v.dur, (const double *const *)v.bytes,
                     c->link_fwd, c->link_bwd, c->send_mode};
    rc = graph_run(&g, dp, 1, out, err, errlen);
    if (!rc)
        out->slack = sched_uses_slack(c->schedule) > 0 ? slack : -1;
out:
    sim_opvals_free(&v);
    sched_plan_destroy(&plan);
    return rc;
}

static int slack_auto(const sim_config_t *cfg, const sim_dp_t *dp, int *slack, double times[SIM_SLACK_AUTO_MAX + 1],
                      char *err, size_t errlen)
{
    if (!cfg) {
        seterr(err, errlen, "no configuration");
        return -EINVAL;
    }
    sim_config_t c = *cfg;
    c.schedule = "1f1b-slack";
    int rc = check_config(&c, err, errlen);
    if (rc)
        return rc;
    double t[SIM_SLACK_AUTO_MAX + 1], best = INFINITY;
    for (int k = 0; k <= SIM_SLACK_AUTO_MAX; k++) {
        sim_result_t r;
        if ((rc = run_fixed_slack(&c, dp, k, 0, &r, err, errlen)))
            return rc;
        t[k] = r.time;
        sim_result_destroy(&r);
        if (t[k] < best)
            best = t[k];
    }
    int pick = 0;
    while (t[pick] > best * (1 + SIM_SLACK_AUTO_TOL))
        pick++;
    *slack = pick;
    if (times)
        memcpy(times, t, sizeof t);
    return 0;
}

int sim_slack_auto(const sim_config_t *cfg, int *slack, double times[SIM_SLACK_AUTO_MAX + 1],
                   char *err, size_t errlen)
{
    return slack_auto(cfg, NULL, slack, times, err, errlen);
}

int sim_slack_auto_dp(const sim_config_t *cfg, const sim_dp_t *dp, int *slack, double times[SIM_SLACK_AUTO_MAX + 1],
                      char *err, size_t errlen)
{
    return slack_auto(cfg, dp, slack, times, err, errlen);
}

int sim_run_dp(const sim_config_t *cfg, int chunks, const sim_dp_t *dp, sim_result_t *out, char *err,
               size_t errlen)
{
    int rc = check_config(cfg, err, errlen);
    if (rc)
        return rc;
    int slack = cfg->slack;
    if (sched_uses_slack(cfg->schedule) > 0 && slack == SIM_SLACK_AUTO &&
        (rc = slack_auto(cfg, dp, &slack, NULL, err, errlen)))
        return rc;
    return run_fixed_slack(cfg, dp, slack, chunks, out, err, errlen);
}

int sim_run_chunks(const sim_config_t *cfg, int chunks, sim_result_t *out, char *err, size_t errlen)
{
    return sim_run_dp(cfg, chunks, NULL, out, err, errlen);
}

int sim_run(const sim_config_t *cfg, sim_result_t *out, char *err, size_t errlen)
{
    return sim_run_chunks(cfg, 0, out, err, errlen);
}

void sim_opvals_free(opvals_t *v)
{
    if (v->dur)
        free(v->dur[0]);
    if (v->bytes)
        free(v->bytes[0]);
    free(v->dur);
    free(v->bytes);
    memset(v, 0, sizeof *v);
}

int sim_opvals_alloc(const sched_plan_t *p, opvals_t *v)
{
    size_t N = 0;
    for (int s = 0; s < p->stages; s++)
        N += p->n_ops[s];
    v->dur = calloc((size_t)p->stages, sizeof *v->dur);
    v->bytes = calloc((size_t)p->stages, sizeof *v->bytes);
    double *d = calloc(N ? N : 1, sizeof *d), *b = calloc(N ? N : 1, sizeof *b);
    if (!v->dur || !v->bytes || !d || !b) {
        free(d);
        free(b);
        sim_opvals_free(v);
        return -ENOMEM;
    }
    for (int s = 0; s < p->stages; s++) {
        v->dur[s] = d;
        v->bytes[s] = b;
        d += p->n_ops[s];
        b += p->n_ops[s];
    }
    return 0;
}

