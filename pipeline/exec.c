/* The executor's loop. Boundary tensors live in four rings (activations and gradients,
 * received and to send); the k-th receive of a kind across the whole run uses slot k mod
 * W and is posted as soon as that slot is free, so receives run ahead of the op list by
 * up to W (the stage's peak in-flight micro-batches + 1) and transfers overlap compute. */
#include "pipeline/exec.h"
#include "pipeline/ctrl.h"
#include "pipeline/dp_comm.h"
#include "pipeline/fault.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/grow.h"
#include "common/clock.h"

typedef struct {
    int w;                 /* slots */
    float **buf;           /* [w] */
    transport_req_t *req;  /* [w] */
    int *busy;             /* [w]: posted or holding data not yet consumed */
} ring_t;

/* Messages are matched by (direction, iteration, key): the key is the micro-batch, and
 * with several chunks per rank mb + M * (the receiving chunk), so that the tensors of
 * one micro-batch for two chunks on one rank stay apart. */

/* The receives of one direction from one peer in run order: which key the k-th one is. */
typedef struct {
    ring_t ring;
    transport_dir_t dir;
    int peer;
    long total, posted, waited;
    int per_iter;
    int *key_of;           /* [per_iter]: key of the j-th receive in the op list */
    int *slot_of;          /* [keys]: slot holding that key's tensor this iteration, -1 none */
} recvq_t;

/* The sends of one direction to one peer. */
typedef struct {
    ring_t ring;
    transport_dir_t dir;
    int peer;
    long next;
    int *slot_of;          /* [keys]: send slot holding the key's tensor this iteration, -1 none */
} sendq_t;

enum { EXEC_QUEUES = 4 }; /* (activations, gradients) x (two neighbouring ranks) */

typedef struct {
    const exec_params_t *p;
    exec_result_t *out;
    size_t bytes;
    int M, iters, P, s, v, C, keys;
    sched_place_t place;
    model_stage_t *const *st; /* [v]: the rank's chunks in model order */
    recvq_t rq[EXEC_QUEUES];
    sendq_t sq[EXEC_QUEUES];
    int n_rq, n_sq;
    float **local[2];      /* [keys]: hand-offs between chunks of this rank (activations, gradients) */
    dp_comm_t dpc;         /* --dp: the all-reduce's buckets */
} ctx_t;

static int key_of(const ctx_t *c, int mb, int chunk) { return c->v > 1 ? mb + c->M * chunk : mb; }
static int rank_of(const ctx_t *c, int chunk) { return sched_chunk_rank(c->place, c->P, chunk); }

/* The index among this rank's chunks. */
static int local_of(const ctx_t *c, int chunk)
{
    for (int j = 0; j < c->v; j++)
        if (sched_rank_chunk(c->place, c->P, c->C, c->s, j) == chunk)
            return j;
    return 0;
}

static recvq_t *recvq_find(ctx_t *c, transport_dir_t dir, int peer)
{
    for (int i = 0; i < c->n_rq; i++)
        if (c->rq[i].dir == dir && c->rq[i].peer == peer)
            return &c->rq[i];
    return NULL;
}

static sendq_t *sendq_find(ctx_t *c, transport_dir_t dir, int peer)
{
    for (int i = 0; i < c->n_sq; i++)
        if (c->sq[i].dir == dir && c->sq[i].peer == peer)
            return &c->sq[i];
    return NULL;
}

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
    exec_row_t *rows = pn_grow(o->rows, &o->cap_rows, o->n_rows, sizeof *rows, 1024);
    if (!rows)
        return -ENOMEM;
    o->rows = rows;
    o->rows[o->n_rows++] =
        (exec_row_t){c->p->rank_base + c->p->stage, iter, kind, mb, clock_job(c, t0), clock_job(c, t1), bytes};
    return 0;
}

/* Posts receives of q while their slots are free. */
static int recvq_fill(ctx_t *c, recvq_t *q)
{
    while (q->posted < q->total) {
        int s = (int)(q->posted % q->ring.w);
        if (q->ring.busy[s])
            return 0;
        int iter = (int)(q->posted / q->per_iter), key_mb = q->key_of[q->posted % q->per_iter];
        transport_key_t key = {q->dir, iter, key_mb};
        int rc = transport_recv(c->p->t, c->p->rank_base + q->peer, key, q->ring.buf[s], c->bytes, &q->ring.req[s]);
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

static void recvq_destroy(recvq_t *q)
{
    ring_destroy(&q->ring);
    free(q->key_of);
    free(q->slot_of);
}

static void sendq_destroy(sendq_t *q)
{
    ring_destroy(&q->ring);
    free(q->slot_of);
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
            sched_op_t sent = {q->key.dir == TRANSPORT_ACT ? SCHED_SEND_ACT : SCHED_SEND_GRAD, q->key.mb % c->M, c->s};
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
    sched_op_t op = {SCHED_OPT_STEP, -1, -1};
    if ((rc = transport_recv(p->t, p->rank_base + twin, key, tmp, n * sizeof *tmp, &rr)) == 0 &&
        (rc = transport_send(p->t, p->rank_base + twin, key, g, n * sizeof *g, &sr)) == 0) {
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

static int op_recv(ctx_t *c, int it, const sched_op_t *op, char *err, size_t errlen)
{
    int act = op->kind == SCHED_RECV_ACT;
    recvq_t *q = recvq_find(c, act ? TRANSPORT_ACT : TRANSPORT_GRAD, rank_of(c, act ? op->chunk - 1 : op->chunk + 1));
    if (!q)
        return pn_err(err, errlen, -EPROTO, "rank %d: %s(mb %d) has no receive queue", c->s,
                      sched_op_kind_name(op->kind), op->mb);
    int slot = (int)(q->waited % q->ring.w);
    if (q->waited >= q->posted) {
        /* the window is full of unconsumed tensors: the op list consumes out of order */
        snprintf(err, errlen, "rank %d: %s(mb %d) of iteration %d has no receive buffer free", c->s,
                 sched_op_kind_name(op->kind), op->mb, it);
        return -ENOBUFS;
    }
    int rc = wait_req(c, &q->ring.req[slot]);
    if (rc) {
        fail_text(c, it, op, &q->ring.req[slot], rc, err, errlen);
        return rc;
    }
    q->waited++;
    q->slot_of[key_of(c, op->mb, op->chunk)] = slot;
    return 0;
}

/* Where a compute op's input tensor is: a received one (*q, *rs), a local hand-off
 * (*local), or none at the model's ends. */
typedef struct {
    const float *buf;
    recvq_t *q;
    int rs;
    float **local;
} input_t;

static int input_get(ctx_t *c, int it, const sched_op_t *op, input_t *in, char *err, size_t errlen)
{
    int fwd = op->kind == SCHED_FWD, from = fwd ? op->chunk - 1 : op->chunk + 1, key = key_of(c, op->mb, op->chunk);
    *in = (input_t){NULL, NULL, -1, NULL};
    if (from < 0 || from >= c->C)
        return 0;
    if (rank_of(c, from) == c->s) {
        in->local = &c->local[!fwd][key];
        in->buf = *in->local;
    } else if ((in->q = recvq_find(c, fwd ? TRANSPORT_ACT : TRANSPORT_GRAD, rank_of(c, from)))) {
        in->rs = in->q->slot_of[key];
        in->buf = in->rs >= 0 ? in->q->ring.buf[in->rs] : NULL;
    }
    if (!in->buf)
        return pn_err(err, errlen, -EPROTO, "rank %d: %s(mb %d) of iteration %d before its %s", c->s,
                      sched_op_kind_name(op->kind), op->mb, it,
                      in->local ? "local hand-off" : fwd ? "RECV_ACT" : "RECV_GRAD");
    return 0;
}

/* Frees a consumed input: a receive slot (posting the next receive into it) or a local buffer. */
static int input_release(ctx_t *c, input_t *in, int key)
{
    if (in->local) {
        free(*in->local);
        *in->local = NULL;
        return 0;
    }
    if (!in->q)
        return 0;
    in->q->ring.busy[in->rs] = 0;
    in->q->slot_of[key] = -1;
    return recvq_fill(c, in->q);
}

/* The buffer a compute op writes its output tensor to: a send slot, a new local
 * hand-off buffer, or none at the model's ends. */
static int output_get(ctx_t *c, int it, const sched_op_t *op, float **out, char *err, size_t errlen)
{
    int fwd = op->kind == SCHED_FWD, to = fwd ? op->chunk + 1 : op->chunk - 1, key = key_of(c, op->mb, to), rc, ss;
    *out = NULL;
    if (to < 0 || to >= c->C)
        return 0;
    if (rank_of(c, to) == c->s) {
        float **l = &c->local[!fwd][key];
        if (!*l && !(*l = malloc(c->bytes)))
            return pn_err(err, errlen, -ENOMEM, "rank %d: out of memory for a local hand-off", c->s);
        *out = *l;
        return 0;
    }
    sendq_t *q = sendq_find(c, fwd ? TRANSPORT_ACT : TRANSPORT_GRAD, rank_of(c, to));
    if (!q)
        return pn_err(err, errlen, -EPROTO, "rank %d: %s(mb %d) has no send queue", c->s,
                      sched_op_kind_name(op->kind), op->mb);
    if ((rc = send_slot(c, &q->ring, &q->next, it, op, &ss, err, errlen)))
        return rc;
    q->slot_of[key] = ss;
    *out = q->ring.buf[ss];
    return 0;
}

/* BWD or BWD_WEIGHT: with --dp-overlap, the chunk's last one of the iteration hands its
 * gradient buckets to the all-reduce thread as it finalises them. */
static int grads_backward(ctx_t *c, int it, const sched_op_t *op, const float *dout, float *din)
{
    int j = local_of(c, op->chunk), arm = dp_comm_arm(&c->dpc, c->st[j], j, op, it), rc;
    rc = op->kind == SCHED_BWD ? model_stage_backward(c->st[j], it, op->mb, dout, din)
                               : model_stage_backward_weights(c->st[j], it, op->mb);
    if (arm)
        dp_comm_disarm(c->st[j]);
    return rc;
}

/* FWD, or BWD / BWD_INPUT (input gradient to the previous chunk); *t0 is reset to when
 * the compute starts (after any wait for a send buffer). */
static int op_compute(ctx_t *c, int it, const sched_op_t *op, double *t0, char *err, size_t errlen)
{
    model_stage_t *st = c->st[local_of(c, op->chunk)];
    input_t in;
    float *o;
    int rc;
    if ((rc = input_get(c, it, op, &in, err, errlen)) || (rc = output_get(c, it, op, &o, err, errlen)))
        return rc;
    *t0 = pn_now();
    if (op->kind == SCHED_FWD)
        rc = model_stage_forward(st, it, op->mb, in.buf, o);
    else if (op->kind == SCHED_BWD)
        rc = grads_backward(c, it, op, in.buf, o);
    else
        rc = model_stage_backward_input(st, it, op->mb, in.buf, o);
    if (rc) {
        snprintf(err, errlen, "rank %d: %s(mb %d) of iteration %d: %s", c->s, sched_op_kind_name(op->kind), op->mb,
                 it, strerror(-rc));
        return rc;
    }
    return input_release(c, &in, key_of(c, op->mb, op->chunk));
}

static int op_send(ctx_t *c, int it, const sched_op_t *op, char *err, size_t errlen)
{
    int act = op->kind == SCHED_SEND_ACT, s = c->s, to = act ? op->chunk + 1 : op->chunk - 1;
    int peer = rank_of(c, to), key = key_of(c, op->mb, to);
    sendq_t *q = sendq_find(c, act ? TRANSPORT_ACT : TRANSPORT_GRAD, peer);
    int slot = q ? q->slot_of[key] : -1;
    if (slot < 0) {
        snprintf(err, errlen, "rank %d: %s(mb %d) of iteration %d before its producer", s,
                 sched_op_kind_name(op->kind), op->mb, it);
        return -EPROTO;
    }
    transport_key_t tk = {act ? TRANSPORT_ACT : TRANSPORT_GRAD, it, key};
    int rc = transport_send(c->p->t, c->p->rank_base + peer, tk, q->ring.buf[slot], c->bytes, &q->ring.req[slot]);
    if (rc) {
        snprintf(err, errlen, "rank %d: %s(mb %d) of iteration %d: %s", s, sched_op_kind_name(op->kind), op->mb, it,
                 strerror(-rc));
        return rc;
    }
    q->ring.busy[slot] = 1;
    return 0;
}

/* fp16: whether any chunk of any stage of any replica overflowed in iteration it
 * (PIPENEM_FAULT=overflow:RANK fakes one on the job's rank RANK). Every rank then skips its
 * step, or none does: a step skipped on one stage only would leave the model's stages on
 * weights of different iterations, and on one replica only the replicas on different
 * weights (--dp averages the gradients, not the decision). */
static int overflow_agree(ctx_t *c, int it, int *any, char *err, size_t errlen)
{
    int local = 0, rc;
    for (int j = 0; j < c->v; j++) {
        if ((rc = model_stage_overflow(c->st[j])) < 0)
            return pn_err(err, errlen, rc, "rank %d: the overflow check of iteration %d: %s", c->s, it, strerror(-rc));
        local |= rc;
    }
    local |= fault_overflow(c->p->rank_base + c->s, it);
    *any = local;
    if (runcfg_world(c->p->cfg) == 1 || !model_compute_loss_scaling(c->p->cfg->model.compute))
        return 0;
    char e[512];
    if ((rc = ctrl_agree(c->p->boot, it, local, any, c->p->cfg->timeout, e, sizeof e)))
        snprintf(err, errlen, "rank %d: OPT_STEP of iteration %d: %s", c->s, it, e);
    return rc;
}

/* --dp: each chunk's gradients averaged over the stage's replicas (dp_comm.h); a trace row
 * ALLREDUCE per bucket (mb = the bucket), its real times (with overlap inside BWD rows). */
static int dp_average(ctx_t *c, int it, char *err, size_t errlen)
{
    if (!c->p->dp)
        return 0;
    int rc = dp_comm_step(&c->dpc, it, err, errlen);
    for (int k = 0; !rc && k < c->dpc.nb; k++) {
        const dp_bucket_t *b = &c->dpc.b[k];
        if ((rc = row_add(c, it, SCHED_ALLREDUCE, k, b->t0, b->t1, b->n * sizeof(float))))
            return pn_err(err, errlen, rc, "rank %d: out of memory for the trace", c->p->rank_base + c->s);
    }
    return rc;
}

/* OPT_STEP: every chunk of the rank steps; the one holding the model's last chunk has the loss. */
static int op_step(ctx_t *c, int it, char *err, size_t errlen)
{
    int rc, overflow = 0;
    if ((rc = tied_exchange(c, it, err, errlen)) != 0 || (rc = overflow_agree(c, it, &overflow, err, errlen)) != 0)
        return rc;
    c->out->skipped += overflow && c->st[0]->loss_scaling;
    if ((rc = dp_average(c, it, err, errlen)) != 0)
        return rc;
    for (int j = 0; j < c->v; j++) {
        if (c->st[j]->loss_scaling)
            c->out->loss_scale[it] = c->st[j]->ls.scale;
        if ((rc = model_stage_step_agreed(c->st[j], it, overflow))) {
            snprintf(err, errlen, "rank %d: OPT_STEP of iteration %d: %s", c->s, it, strerror(-rc));
            return rc;
        }
        if (c->st[j]->last)
            c->out->loss[it] = model_stage_loss(c->st[j]);
    }
    return 0;
}

static int op_other(ctx_t *c, int it, const sched_op_t *op, char *err, size_t errlen)
{
    int rc, s = c->s;
    switch (op->kind) {
    case SCHED_BWD_WEIGHT:
        if ((rc = grads_backward(c, it, op, NULL, NULL)))
            snprintf(err, errlen, "rank %d: BWD_WEIGHT(mb %d) of iteration %d: %s", s, op->mb, it, strerror(-rc));
        return rc;
    case SCHED_OPT_STEP:
        return op_step(c, it, err, errlen);
    default:
        snprintf(err, errlen, "rank %d: unknown op kind %d", s, (int)op->kind);
        return -EPROTO;
    }
}

/* One op of iteration it, and its trace row. */
static int op_run(ctx_t *c, int it, const sched_op_t *op, char *err, size_t errlen)
{
    double t0 = pn_now();
    size_t bytes = 0;
    int rc;
    switch (op->kind) {
    case SCHED_RECV_ACT:
    case SCHED_RECV_GRAD:
        rc = op_recv(c, it, op, err, errlen);
        bytes = c->bytes;
        break;
    case SCHED_FWD:
    case SCHED_BWD:
    case SCHED_BWD_INPUT:
        rc = op_compute(c, it, op, &t0, err, errlen);
        break;
    case SCHED_SEND_ACT:
    case SCHED_SEND_GRAD:
        rc = op_send(c, it, op, err, errlen);
        bytes = c->bytes;
        break;
    default:
        rc = op_other(c, it, op, err, errlen);
        break;
    }
    if (!rc && (rc = row_add(c, it, op->kind, op->mb, t0, pn_now(), bytes)) != 0)
        snprintf(err, errlen, "rank %d: out of memory for the trace", c->s);
    return rc;
}

/* Every send must have left before the buffers go. */
static int sends_drain(ctx_t *c, char *err, size_t errlen)
{
    for (int k = 0; k < c->n_sq; k++) {
        ring_t *rr = &c->sq[k].ring;
        for (int i = 0; i < rr->w; i++)
            if (rr->busy[i]) {
                sched_op_t op = {c->sq[k].dir == TRANSPORT_GRAD ? SCHED_SEND_GRAD : SCHED_SEND_ACT,
                                 rr->req[i].key.mb, c->s};
                int rc = wait_req(c, &rr->req[i]);
                if (rc) {
                    fail_text(c, rr->req[i].key.iter, &op, &rr->req[i], rc, err, errlen);
                    return rc;
                }
                rr->busy[i] = 0;
            }
    }
    return 0;
}

/* The receive and send queues this rank's op list needs, one per (direction, peer),
 * each with w slots; receives in list order. */
static int queues_init(ctx_t *c, const sched_op_t *ops, size_t n, int w)
{
    for (size_t i = 0; i < n; i++) {
        sched_op_kind_t k = ops[i].kind;
        int recv = k == SCHED_RECV_ACT || k == SCHED_RECV_GRAD, send = k == SCHED_SEND_ACT || k == SCHED_SEND_GRAD;
        if (!recv && !send)
            continue;
        int act = k == SCHED_RECV_ACT || k == SCHED_SEND_ACT, prev = k == SCHED_RECV_ACT || k == SCHED_SEND_GRAD;
        int peer = rank_of(c, prev ? ops[i].chunk - 1 : ops[i].chunk + 1);
        transport_dir_t dir = act ? TRANSPORT_ACT : TRANSPORT_GRAD;
        if (recv) {
            recvq_t *q = recvq_find(c, dir, peer);
            if (!q) {
                if (c->n_rq == EXEC_QUEUES)
                    return -EPROTO;
                q = &c->rq[c->n_rq++];
                *q = (recvq_t){.dir = dir, .peer = peer, .key_of = malloc(n * sizeof(int)),
                               .slot_of = malloc((size_t)c->keys * sizeof(int))};
                if (!q->key_of || !q->slot_of || ring_init(&q->ring, w, c->bytes))
                    return -ENOMEM;
                for (int j = 0; j < c->keys; j++)
                    q->slot_of[j] = -1;
            }
            q->key_of[q->per_iter++] = key_of(c, ops[i].mb, ops[i].chunk);
        } else if (!sendq_find(c, dir, peer)) {
            if (c->n_sq == EXEC_QUEUES)
                return -EPROTO;
            sendq_t *q = &c->sq[c->n_sq++];
            *q = (sendq_t){.dir = dir, .peer = peer, .slot_of = malloc((size_t)c->keys * sizeof(int))};
            if (!q->slot_of || ring_init(&q->ring, w, c->bytes))
                return -ENOMEM;
        }
    }
    for (int i = 0; i < c->n_rq; i++)
        c->rq[i].total = (long)c->rq[i].per_iter * c->iters;
    return 0;
}

static int ctx_init(ctx_t *c, const sched_op_t *ops, size_t n, char *err, size_t errlen)
{
    int peak = sched_ops_peak_inflight(ops, n);
    int w = (peak > 0 ? peak : 1) + 1, rc;
    if (w > c->M * c->v + 1)
        w = c->M * c->v + 1;
    c->keys = c->M * (c->v > 1 ? c->C : 1);
    if (!(c->out->loss = malloc(sizeof *c->out->loss * (size_t)c->iters)) ||
        !(c->out->loss_scale = malloc(sizeof *c->out->loss_scale * (size_t)c->iters)) ||
        !(c->local[0] = calloc((size_t)c->keys, sizeof(float *))) ||
        !(c->local[1] = calloc((size_t)c->keys, sizeof(float *))) || (rc = queues_init(c, ops, n, w)) == -ENOMEM)
        return pn_err(err, errlen, -ENOMEM, "rank %d: out of memory for boundary buffers of %zu bytes", c->s,
                      c->bytes);
    if (rc)
        return pn_err(err, errlen, rc, "rank %d: the op list talks to more than two ranks", c->s);
    for (int i = 0; i < c->iters; i++)
        c->out->loss[i] = c->out->loss_scale[i] = NAN;
    return 0;
}

static void ctx_destroy(ctx_t *c)
{
    for (int i = 0; i < c->n_rq; i++)
        recvq_destroy(&c->rq[i]);
    for (int i = 0; i < c->n_sq; i++)
        sendq_destroy(&c->sq[i]);
    for (int d = 0; d < 2; d++) {
        for (int k = 0; c->local[d] && k < c->keys; k++)
            free(c->local[d][k]);
        free(c->local[d]);
    }
}

/* This rank's op list and its chunks' models. */
static int ops_get(ctx_t *c, sched_op_t **ops, size_t *n, char *err, size_t errlen)
{
    const exec_params_t *p = c->p;
    const runcfg_t *cfg = p->cfg;
    sched_spec_t spec = {cfg->schedule, cfg->stages, cfg->micro_batches, cfg->slack, cfg->chunks};
    sched_plan_t probe = {0};
    int rc = sched_spec_check(&spec, &c->v, err, errlen);
    if (rc)
        return rc;
    if (c->v != (p->n_chunks ? p->n_chunks : 1))
        return pn_err(err, errlen, -EINVAL, "rank %d: %s places %d model chunks on each stage, the stage built %d",
                      p->stage, cfg->schedule, c->v, p->n_chunks ? p->n_chunks : 1);
    if (c->v > 1 && cfg->model.tied_embeddings)
        return pn_err(err, errlen, -ENOTSUP, "rank %d: --tied-embeddings with %s (several chunks per stage) is "
                      "not supported", p->stage, cfg->schedule);
    if ((rc = sched_plan_build_spec(&spec, &probe, err, errlen)))
        return rc;
    c->C = probe.chunks;
    c->place = probe.place;
    if (c->v > 1 && (long long)c->M * c->C >= TRANSPORT_MB_MAX) {
        sched_plan_destroy(&probe);
        return pn_err(err, errlen, -EINVAL, "rank %d: %d micro-batches x %d chunks exceed the message key's %d",
                      p->stage, c->M, c->C, TRANSPORT_MB_MAX);
    }
    *ops = probe.ops[p->stage];
    *n = probe.n_ops[p->stage];
    probe.ops[p->stage] = NULL;
    sched_plan_destroy(&probe);
    c->st = p->n_chunks ? p->chunks : &p->st;
    return 0;
}

int exec_run(const exec_params_t *p, exec_result_t *out, char *err, size_t errlen)
{
    const runcfg_t *cfg = p->cfg;
    int P = cfg->stages, s = p->stage, iters = cfg->warmup + cfg->iters;
    exec_result_t r = {0};
    ctx_t c = {.p = p, .out = &r, .M = cfg->micro_batches, .iters = iters, .P = P, .s = s};
    sched_op_t *ops = NULL;
    size_t n = 0;
    int rc = ops_get(&c, &ops, &n, err, errlen);
    if (rc)
        return rc;
    c.bytes = model_stage_act_bytes(c.st[0]);
    r.iters = iters;
    if (P > 1 && !p->t)
        rc = pn_err(err, errlen, -EINVAL, "rank %d: %d stages need a transport", s, P);
    else if (!(rc = ctx_init(&c, ops, n, err, errlen)) && p->dp)
        rc = dp_comm_init(&c.dpc, p->dp, cfg->dp_overlap, c.st, c.v, ops, n, p->rank_base + s, err, errlen);
    if (rc)
        goto out;
    double run_w0 = pn_now(), run_c0 = pn_cpu_now();
    for (int i = 0; i < c.n_rq && !rc; i++)
        if ((rc = recvq_fill(&c, &c.rq[i])))
            snprintf(err, errlen, "rank %d: posting receives: %s", s, strerror(-rc));
    for (int it = 0; it < iters && !rc; it++) {
        for (int i = 0; i < c.n_sq; i++)
            for (int k = 0; k < c.keys; k++)
                c.sq[i].slot_of[k] = -1;
        for (size_t k = 0; k < n && !rc; k++) {
            if (k == n / 2)
                fault_point(s, FAULT_AT_ITER, it);
            if (ops[k].kind == SCHED_OPT_STEP)
                fault_point(s, FAULT_AT_OPT, it);
            rc = op_run(&c, it, &ops[k], err, errlen);
        }
    }
    if (rc || (rc = sends_drain(&c, err, errlen)))
        goto out;
    r.run_wall = pn_now() - run_w0;
    r.run_cpu = pn_cpu_now() - run_c0;
out:
    if (rc && p->t) {
        /* UCX may still be writing into the rings (a rendezvous in progress): fail the
         * requests and leave the buffers to the process's exit rather than free them. */
        transport_fail(p->t, -ECANCELED, "the executor stopped");
        if (strstr(err, ALLREDUCE_FAILED)) /* the echo of the all-reduce thread's failure: its own words */
            dp_comm_failure(&c.dpc, err, errlen);
    } else {
        ctx_destroy(&c);
    }
    dp_comm_destroy(&c.dpc); /* after the transport failed: its thread is not left waiting */
    free(ops);
    if (rc) {
        exec_result_destroy(&r);
        return rc;
    }
    *out = r;
    return 0;
}
