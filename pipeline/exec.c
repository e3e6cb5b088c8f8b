/* The executor's loop. Boundary tensors live in four rings (activations and gradients,
 * received and to send); the k-th receive of a kind across the whole run uses slot k mod
 * W and is posted as soon as that slot is free, so receives run ahead of the op list by
 * up to W (the stage's peak in-flight micro-batches + 1) and transfers overlap compute. */
#include "pipeline/exec.h"
#include "pipeline/fault.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"

typedef struct {
    int w;                 /* slots */
    float **buf;           /* [w] */
    transport_req_t *req;  /* [w] */
    int *busy;             /* [w]: posted or holding data not yet consumed */
} ring_t;

/* The receives of one kind in run order: which (iter, mb) the k-th one is. */
typedef struct {
    ring_t ring;
    sched_op_kind_t kind;
    transport_dir_t dir;
    int peer;
    long total, posted, waited;
    int per_iter;
    int *mb_of;            /* [per_iter]: mb of the j-th receive in the op list */
    int *slot_of_mb;       /* [M]: slot holding mb of the current iteration, -1 none */
} recvq_t;

typedef struct {
    const exec_params_t *p;
    exec_result_t *out;
    size_t bytes;
    int M, iters;
} ctx_t;

static double clock_job(const ctx_t *c, double local)
{
    return c->p->boot ? boot_time(c->p->boot, local) : local;
}

static int ring_init(ring_t *r, int w, size_t bytes)
{
    r->w = w;
    r->buf = calloc((size_t)w, sizeof *r->buf);
    r->req = calloc((size_t)w, sizeof *r->req);
    r->busy = calloc((size_t)w, sizeof *r->busy);
    if (!r->buf || !r->req || !r->busy)
        return -ENOMEM;
    for (int i = 0; i < w; i++)
        if (!(r->buf[i] = aligned_alloc(64, (bytes + 63) / 64 * 64)))
            return -ENOMEM;
    return 0;
}

static void ring_destroy(ring_t *r)
{
    for (int i = 0; r->buf && i < r->w; i++)
        free(r->buf[i]);
    free(r->buf);
    free(r->req);
    free(r->busy);
    memset(r, 0, sizeof *r);
}

static int row_add(ctx_t *c, int iter, sched_op_kind_t kind, int mb, double t0, double t1, size_t bytes)
{
    exec_result_t *o = c->out;
    if (o->n_rows == o->cap_rows) {
        size_t cap = o->cap_rows ? 2 * o->cap_rows : 1024;
        exec_row_t *n = realloc(o->rows, cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        o->rows = n;
        o->cap_rows = cap;
    }
    o->rows[o->n_rows++] = (exec_row_t){c->p->stage, iter, kind, mb, clock_job(c, t0), clock_job(c, t1), bytes};
    return 0;
}

/* Posts receives of q while their slots are free. */
static int recvq_fill(ctx_t *c, recvq_t *q)
{
    while (q->posted < q->total) {
        int s = (int)(q->posted % q->ring.w);
        if (q->ring.busy[s])
            return 0;
        int iter = (int)(q->posted / q->per_iter), mb = q->mb_of[q->posted % q->per_iter];
        transport_key_t key = {q->dir, iter, mb};
        int rc = transport_recv(c->p->t, q->peer, key, q->ring.buf[s], c->bytes, &q->ring.req[s]);
        if (rc)
            return rc;
        q->ring.busy[s] = 1;
        q->posted++;
    }
    return 0;
}

static int wait_req(ctx_t *c, transport_req_t *req)
{
    double w0 = pn_now(), c0 = pn_cpu_now();
    int rc = transport_wait(c->p->t, req, c->p->cfg->timeout);
    c->out->wait_wall += pn_now() - w0;
    c->out->wait_cpu += pn_cpu_now() - c0;
    return rc;
}

static void fail_text(ctx_t *c, int iter, const sched_op_t *op, const transport_req_t *req, int rc, char *err,
                      size_t errlen)
{
    char what[64];
    sched_op_format(op, what, sizeof what);
    if (rc == -ETIMEDOUT)
        snprintf(err, errlen, "rank %d: waited %.0f s in %s(mb %d) of iteration %d for rank %d: timed out",
                 c->p->stage, c->p->cfg->timeout, sched_op_kind_name(op->kind), op->mb, iter, req->peer);
    else
        snprintf(err, errlen, "rank %d: %s(mb %d) of iteration %d failed: %s", c->p->stage,
                 sched_op_kind_name(op->kind), op->mb, iter, req->why[0] ? req->why : strerror(-rc));
}

static int recvq_init(recvq_t *q, const sched_op_t *ops, size_t n, sched_op_kind_t kind, transport_dir_t dir,
                      int peer, int M, int iters, int w, size_t bytes)
{
    memset(q, 0, sizeof *q);
    q->kind = kind;
    q->dir = dir;
    q->peer = peer;
    q->mb_of = calloc(n ? n : 1, sizeof *q->mb_of);
    q->slot_of_mb = malloc(sizeof *q->slot_of_mb * (size_t)M);
    if (!q->mb_of || !q->slot_of_mb)
        return -ENOMEM;
    for (int i = 0; i < M; i++)
        q->slot_of_mb[i] = -1;
    for (size_t i = 0; i < n; i++)
        if (ops[i].kind == kind)
            q->mb_of[q->per_iter++] = ops[i].mb;
    q->total = (long)q->per_iter * iters;
    return q->per_iter ? ring_init(&q->ring, w, bytes) : 0;
}

static void recvq_destroy(recvq_t *q)
{
    ring_destroy(&q->ring);
    free(q->mb_of);
    free(q->slot_of_mb);
}

/* The send ring's slot for the next producer; waits for its previous send first. */
static int send_slot(ctx_t *c, ring_t *r, long *next, int iter, const sched_op_t *op, int *slot, char *err,
                     size_t errlen)
{
    int s = (int)(*next % r->w);
    if (r->busy[s]) {
        int rc = wait_req(c, &r->req[s]);
        if (rc) {
            /* what it was waiting on is the earlier send still holding this buffer */
            const transport_req_t *q = &r->req[s];
            sched_op_t sent = {q->key.dir == TRANSPORT_ACT ? SCHED_SEND_ACT : SCHED_SEND_GRAD, q->key.mb};
            char before[64];
            sched_op_format(op, before, sizeof before);
            fail_text(c, q->key.iter, &sent, q, rc, err, errlen);
            size_t n = strlen(err);
            snprintf(err + n, errlen > n ? errlen - n : 0, " (before %s of iteration %d)", before, iter);
            return rc;
        }
        r->busy[s] = 0;
    }
    (*next)++;
    *slot = s;
    return 0;
}

/* --tied-embeddings across stages: the first and last stage each hold the shared matrix
 * and swap their gradients before stepping, so both apply the same update. */
static int tied_exchange(ctx_t *c, int it, char *err, size_t errlen)
{
    const exec_params_t *p = c->p;
    int P = p->cfg->stages, s = p->stage;
    float *g;
    size_t n;
    if (!p->cfg->model.tied_embeddings || P < 2 || (s != 0 && s != P - 1) || model_stage_tied_grad(p->st, &g, &n))
        return 0;
    float *tmp = malloc(n * sizeof *tmp);
    if (!tmp) {
        snprintf(err, errlen, "rank %d: out of memory for the tied-embedding gradient", s);
        return -ENOMEM;
    }
    int twin = s == 0 ? P - 1 : 0, rc;
    transport_key_t key = {TRANSPORT_TIED, it, 0};
    transport_req_t rr, sr;
    sched_op_t op = {SCHED_OPT_STEP, -1};
    if ((rc = transport_recv(p->t, twin, key, tmp, n * sizeof *tmp, &rr)) == 0 &&
        (rc = transport_send(p->t, twin, key, g, n * sizeof *g, &sr)) == 0) {
        /* the send reads g: it must be done before the twin's gradient is added in */
        if ((rc = wait_req(c, &sr)) != 0)
            fail_text(c, it, &op, &sr, rc, err, errlen);
        else if ((rc = wait_req(c, &rr)) != 0)
            fail_text(c, it, &op, &rr, rc, err, errlen);
        else
            for (size_t i = 0; i < n; i++)
                g[i] += tmp[i];
    } else {
        snprintf(err, errlen, "rank %d: tied-embedding exchange of iteration %d: %s", s, it, strerror(-rc));
    }
    if (rc) {
        /* a pending receive may still write into tmp: leave it to the process's exit */
        return rc;
    }
    free(tmp);
    return 0;
}

int exec_run(const exec_params_t *p, exec_result_t *out, char *err, size_t errlen)
{
    const runcfg_t *cfg = p->cfg;
    int P = cfg->stages, s = p->stage, M = cfg->micro_batches, iters = cfg->warmup + cfg->iters;
    exec_result_t r = {0};
    ctx_t c = {p, &r, model_stage_act_bytes(p->st), M, iters};
    sched_op_t *ops = NULL;
    size_t n = 0;
    recvq_t ra = {0}, rg = {0};
    ring_t sa = {0}, sg = {0};
    int *sa_slot = NULL, *sg_slot = NULL;
    long sa_next = 0, sg_next = 0;
    int rc = sched_ops_build(cfg->schedule, P, M, cfg->slack, s, &ops, &n, err, errlen);
    if (rc)
        return rc;
    if (P > 1 && !p->t) {
        snprintf(err, errlen, "rank %d: %d stages need a transport", s, P);
        rc = -EINVAL;
        goto out;
    }
    int peak = sched_ops_peak_inflight(ops, n);
    int w = (peak > 0 ? peak : 1) + 1;
    if (w > M + 1)
        w = M + 1;
    r.iters = iters;
    if (!(r.loss = malloc(sizeof *r.loss * (size_t)iters)) || !(sa_slot = malloc(sizeof *sa_slot * (size_t)M)) ||
        !(sg_slot = malloc(sizeof *sg_slot * (size_t)M)) ||
        (rc = recvq_init(&ra, ops, n, SCHED_RECV_ACT, TRANSPORT_ACT, s - 1, M, iters, w, c.bytes)) ||
        (rc = recvq_init(&rg, ops, n, SCHED_RECV_GRAD, TRANSPORT_GRAD, s + 1, M, iters, w, c.bytes)) ||
        (s < P - 1 && (rc = ring_init(&sa, w, c.bytes))) || (s > 0 && (rc = ring_init(&sg, w, c.bytes)))) {
        snprintf(err, errlen, "rank %d: out of memory for %d boundary buffers of %zu bytes", s, 4 * w, c.bytes);
        rc = -ENOMEM;
        goto out;
    }
    for (int i = 0; i < iters; i++)
        r.loss[i] = NAN;
    double run_w0 = pn_now(), run_c0 = pn_cpu_now();
    if (P > 1 && ((rc = recvq_fill(&c, &ra)) || (rc = recvq_fill(&c, &rg)))) {
        snprintf(err, errlen, "rank %d: posting receives: %s", s, strerror(-rc));
        goto out;
    }
    for (int it = 0; it < iters; it++) {
        for (int i = 0; i < M; i++)
            sa_slot[i] = sg_slot[i] = -1;
        for (size_t k = 0; k < n; k++) {
            const sched_op_t *op = &ops[k];
            if (k == n / 2)
                fault_point(s, FAULT_AT_ITER, it);
            if (op->kind == SCHED_OPT_STEP)
                fault_point(s, FAULT_AT_OPT, it);
            double t0 = pn_now();
            size_t bytes = 0;
            switch (op->kind) {
            case SCHED_RECV_ACT:
            case SCHED_RECV_GRAD: {
                recvq_t *q = op->kind == SCHED_RECV_ACT ? &ra : &rg;
                int slot = (int)(q->waited % q->ring.w);
                if (q->waited >= q->posted) {
                    /* the window is full of unconsumed tensors: the op list consumes out of order */
                    snprintf(err, errlen, "rank %d: %s(mb %d) of iteration %d has no receive buffer free", s,
                             sched_op_kind_name(op->kind), op->mb, it);
                    rc = -ENOBUFS;
                    goto out;
                }
                rc = wait_req(&c, &q->ring.req[slot]);
                if (rc) {
                    fail_text(&c, it, op, &q->ring.req[slot], rc, err, errlen);
                    goto out;
                }
                q->waited++;
                q->slot_of_mb[op->mb] = slot;
                bytes = c.bytes;
                break;
            }
            case SCHED_FWD: {
                const float *in = NULL;
                float *o = NULL;
                int rs = -1, ss = -1;
                if (s > 0) {
                    rs = ra.slot_of_mb[op->mb];
                    if (rs < 0) {
                        snprintf(err, errlen, "rank %d: FWD(mb %d) of iteration %d before its RECV_ACT", s, op->mb, it);
                        rc = -EPROTO;
                        goto out;
                    }
                    in = ra.ring.buf[rs];
                }
                if (s < P - 1) {
                    if ((rc = send_slot(&c, &sa, &sa_next, it, op, &ss, err, errlen)) != 0)
                        goto out;
                    o = sa.buf[ss];
                    sa_slot[op->mb] = ss;
                }
                t0 = pn_now();
                rc = model_stage_forward(p->st, it, op->mb, in, o);
                if (rc) {
                    snprintf(err, errlen, "rank %d: FWD(mb %d) of iteration %d: %s", s, op->mb, it, strerror(-rc));
                    goto out;
                }
                if (rs >= 0) {
                    ra.ring.busy[rs] = 0;
                    ra.slot_of_mb[op->mb] = -1;
                    if ((rc = recvq_fill(&c, &ra)) != 0)
                        goto out;
                }
                break;
            }
            case SCHED_BWD: {
                const float *dout = NULL;
                float *din = NULL;
                int rs = -1, ss = -1;
                if (s < P - 1) {
                    rs = rg.slot_of_mb[op->mb];
                    if (rs < 0) {
                        snprintf(err, errlen, "rank %d: BWD(mb %d) of iteration %d before its RECV_GRAD", s, op->mb, it);
                        rc = -EPROTO;
                        goto out;
                    }
                    dout = rg.ring.buf[rs];
                }
                if (s > 0) {
                    if ((rc = send_slot(&c, &sg, &sg_next, it, op, &ss, err, errlen)) != 0)
                        goto out;
                    din = sg.buf[ss];
                    sg_slot[op->mb] = ss;
                }
                t0 = pn_now();
                rc = model_stage_backward(p->st, it, op->mb, dout, din);
                if (rc) {
                    snprintf(err, errlen, "rank %d: BWD(mb %d) of iteration %d: %s", s, op->mb, it, strerror(-rc));
                    goto out;
                }
                if (rs >= 0) {
                    rg.ring.busy[rs] = 0;
                    rg.slot_of_mb[op->mb] = -1;
                    if ((rc = recvq_fill(&c, &rg)) != 0)
                        goto out;
                }
                break;
            }
            case SCHED_SEND_ACT:
            case SCHED_SEND_GRAD: {
                int act = op->kind == SCHED_SEND_ACT;
                ring_t *rr = act ? &sa : &sg;
                int slot = (act ? sa_slot : sg_slot)[op->mb];
                if (slot < 0) {
                    snprintf(err, errlen, "rank %d: %s(mb %d) of iteration %d before its producer", s,
                             sched_op_kind_name(op->kind), op->mb, it);
                    rc = -EPROTO;
                    goto out;
                }
                transport_key_t key = {act ? TRANSPORT_ACT : TRANSPORT_GRAD, it, op->mb};
                rc = transport_send(p->t, act ? s + 1 : s - 1, key, rr->buf[slot], c.bytes, &rr->req[slot]);
                if (rc) {
                    snprintf(err, errlen, "rank %d: %s(mb %d) of iteration %d: %s", s, sched_op_kind_name(op->kind),
                             op->mb, it, strerror(-rc));
                    goto out;
                }
                rr->busy[slot] = 1;
                bytes = c.bytes;
                break;
            }
            case SCHED_OPT_STEP:
                if ((rc = tied_exchange(&c, it, err, errlen)) != 0)
                    goto out;
                rc = model_stage_step(p->st, it);
                if (rc) {
                    snprintf(err, errlen, "rank %d: OPT_STEP of iteration %d: %s", s, it, strerror(-rc));
                    goto out;
                }
                if (s == P - 1)
                    r.loss[it] = model_stage_loss(p->st);
                break;
            default:
                snprintf(err, errlen, "rank %d: unknown op kind %d", s, (int)op->kind);
                rc = -EPROTO;
                goto out;
            }
            if ((rc = row_add(&c, it, op->kind, op->mb, t0, pn_now(), bytes)) != 0) {
                snprintf(err, errlen, "rank %d: out of memory for the trace", s);
                goto out;
            }
        }
    }
    /* Every send must have left before the buffers go. */
    for (int k = 0; k < 2; k++) {
        ring_t *rr = k ? &sg : &sa;
        for (int i = 0; i < rr->w; i++)
            if (rr->busy[i]) {
                sched_op_t op = {k ? SCHED_SEND_GRAD : SCHED_SEND_ACT, rr->req[i].key.mb};
                if ((rc = wait_req(&c, &rr->req[i])) != 0) {
                    fail_text(&c, rr->req[i].key.iter, &op, &rr->req[i], rc, err, errlen);
                    goto out;
                }
                rr->busy[i] = 0;
            }
    }
    r.run_wall = pn_now() - run_w0;
    r.run_cpu = pn_cpu_now() - run_c0;
out:
    if (rc && p->t) {
        /* UCX may still be writing into the rings (a rendezvous in progress): fail the
         * requests and leave the buffers to the process's exit rather than free them. */
        transport_fail(p->t, -ECANCELED, "the executor stopped");
    } else {
        recvq_destroy(&ra);
        recvq_destroy(&rg);
        ring_destroy(&sa);
        ring_destroy(&sg);
    }
    free(sa_slot);
    free(sg_slot);
    free(ops);
    if (rc) {
        exec_result_destroy(&r);
        return rc;
    }
    *out = r;
    return 0;
}

void exec_result_destroy(exec_result_t *r)
{
    free(r->rows);
    free(r->loss);
    memset(r, 0, sizeof *r);
}

int exec_trace_write(FILE *f, const exec_row_t *rows, size_t n, int header)
{
    if (header)
        fputs("rank,iteration,op,micro_batch,start_s,end_s,bytes\n", f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%d,%d,%s,%d,%.9f,%.9f,%zu\n", rows[i].rank, rows[i].iter, sched_op_kind_name(rows[i].kind),
                rows[i].mb, rows[i].start, rows[i].end, rows[i].bytes);
    return ferror(f) ? -EIO : 0;
}
