/* The stage's data-parallel all-reduce in buckets (dp_comm.h). With overlap, the backward's
 * hook queues each bucket as it becomes final and one communication thread all-reduces
 * the queue in that order. The replicas of a stage run the same op list over the same
 * layout, so every member of a ring queues the same buckets in the same order, which the
 * ring needs (a member's step of one bucket waits for its neighbour's of the same). */
#include "pipeline/dp_comm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"

/* Whether [lo, lo + n) of chunk's block overlaps the tied-embedding gradient kept there. */
static int tied_overlaps(model_stage_t *st, const float *g, size_t lo, size_t n)
{
    float *t;
    size_t tn;
    if (model_stage_tied_grad(st, &t, &tn) || t < g || t >= g + st->n_params)
        return 0;
    size_t tlo = (size_t)(t - g);
    return lo < tlo + tn && tlo < lo + n;
}

/* The buckets in the non-overlapped order (chunk by chunk, each block from its start):
 * with keys and numbers exactly as the step's all-reduce has always used them. */
static int buckets_build(dp_comm_t *c, model_stage_t *const *st, char *err, size_t errlen)
{
    size_t per = c->a->bucket_bytes / sizeof(float), total = 0;
    float *g[PN_MAX_STAGES];
    size_t n[PN_MAX_STAGES];
    for (int j = 0; j < c->v; j++) {
        int rc = model_stage_grads(st[j], &g[j], &n[j]);
        if (rc)
            return pn_err(err, errlen, rc, "rank %d: --dp needs the gradients in host memory: %s (compute %s)",
                          c->rank, strerror(-rc), st[j]->p.compute);
        total += (n[j] + per - 1) / per;
    }
    if (!(c->b = calloc(total ? total : 1, sizeof *c->b)) || !(c->queue = calloc(total ? total : 1, sizeof(int))))
        return pn_err(err, errlen, -ENOMEM, "rank %d: out of memory for the all-reduce buckets", c->rank);
    int key = 0;
    for (int j = 0; j < c->v; j++)
        for (size_t lo = 0; lo < n[j]; lo += per) {
            size_t m = n[j] - lo < per ? n[j] - lo : per;
            c->b[c->nb++] = (dp_bucket_t){.chunk = j, .buf = g[j], .lo = lo, .n = m, .key0 = key,
                                          .held = tied_overlaps(st[j], g[j], lo, m)};
            key += allreduce_keys(c->a, m);
        }
    return 0;
}

static int bucket_run(dp_comm_t *c, int k, int iter, char *err, size_t errlen)
{
    dp_bucket_t *b = &c->b[k];
    char e[384];
    b->t0 = pn_now();
    int rc = allreduce_mean(c->a, b->buf + b->lo, b->n, iter, b->key0, e, sizeof e);
    b->t1 = pn_now();
    if (rc)
        return pn_err(err, errlen, rc, "rank %d: ALLREDUCE(bucket %d) of iteration %d: %s", c->rank, k, iter, e);
    return 0;
}

/* The communication thread: the queue in order, until stopped or failed. It inherits the
 * stage thread's 1 ns timer slack (the shim sleeps until delivery times on it too). */
static void *comm_main(void *arg)
{
    dp_comm_t *c = arg;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (!c->stop && (c->rc || c->q_head == c->q_tail))
            pthread_cond_wait(&c->work, &c->lock);
        if (c->stop)
            break;
        int k = c->queue[c->q_head++], iter = c->iter;
        pthread_mutex_unlock(&c->lock);
        char e[512];
        int rc = bucket_run(c, k, iter, e, sizeof e);
        pthread_mutex_lock(&c->lock);
        c->b[k].done = 1;
        c->n_done++;
        if (rc && !c->rc) {
            c->rc = rc;
            snprintf(c->err, sizeof c->err, "%s", e);
        }
        pthread_cond_broadcast(&c->done);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* Queues bucket k; lock held. */
static void enqueue(dp_comm_t *c, int k)
{
    c->b[k].queued = 1;
    c->queue[c->q_tail++] = k;
}

/* The backward's hook: the chunk's buckets from lo on are final, last piece first. */
static void on_final(void *arg, size_t lo)
{
    dp_hook_t *h = arg;
    dp_comm_t *c = h->c;
    int any = 0;
    pthread_mutex_lock(&c->lock);
    for (int k = c->nb - 1; k >= 0; k--) {
        dp_bucket_t *b = &c->b[k];
        if (b->chunk != h->chunk)
            continue;
        if (b->lo < lo)
            break; /* a chunk's buckets are consecutive, in block order */
        if (!b->queued && !b->held) {
            enqueue(c, k);
            any = 1;
        }
    }
    if (any)
        pthread_cond_signal(&c->work);
    pthread_mutex_unlock(&c->lock);
}

/* Each chunk's last BWD or BWD_WEIGHT in the op list. */
static int last_find(dp_comm_t *c, const sched_op_t *ops, size_t n)
{
    int found = 0;
    if (!(c->last = calloc((size_t)c->v, sizeof *c->last)))
        return -ENOMEM;
    for (size_t k = 0; k < n; k++) {
        if (ops[k].kind != SCHED_BWD && ops[k].kind != SCHED_BWD_WEIGHT)
            continue;
        int i = 0;
        while (i < found && c->last[i]->chunk != ops[k].chunk)
            i++;
        if (i == c->v)
            return -EPROTO;
        found += i == found;
        c->last[i] = &ops[k];
    }
    return 0;
}

int dp_comm_init(dp_comm_t *c, allreduce_t *a, int overlap, model_stage_t *const *st, int v, const sched_op_t *ops,
                 size_t n, int rank, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    c->a = a;
    c->st = st;
    c->overlap = overlap;
    c->v = v;
    c->rank = rank;
    if (v < 1 || v > PN_MAX_STAGES)
        return pn_err(err, errlen, -EINVAL, "rank %d: %d chunks for the all-reduce", rank, v);
    int rc = buckets_build(c, st, err, errlen);
    if (rc || !overlap)
        return rc;
    if ((rc = last_find(c, ops, n)))
        return pn_err(err, errlen, rc, "rank %d: %s", rank, rc == -EPROTO ? "the op list has backwards of more "
                      "chunks than the rank holds" : "out of memory");
    if (!(c->hook = calloc((size_t)v, sizeof *c->hook)))
        return pn_err(err, errlen, -ENOMEM, "rank %d: out of memory for the all-reduce buckets", rank);
    for (int j = 0; j < v; j++)
        c->hook[j] = (dp_hook_t){c, j};
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->work, NULL);
    pthread_cond_init(&c->done, NULL);
    if ((rc = pthread_create(&c->thread, NULL, comm_main, c)) != 0) {
        pthread_cond_destroy(&c->done);
        pthread_cond_destroy(&c->work);
        pthread_mutex_destroy(&c->lock);
        return pn_err(err, errlen, -rc, "rank %d: the all-reduce thread: %s", rank, strerror(rc));
    }
    c->started = 1;
    return 0;
}

int dp_comm_arm(dp_comm_t *c, model_stage_t *st, int j, const sched_op_t *op, int iter)
{
    int last = 0;
    for (int i = 0; c->started && i < c->v; i++)
        last |= c->last[i] == op;
    if (!last)
        return 0;
    pthread_mutex_lock(&c->lock);
    c->iter = iter;
    pthread_mutex_unlock(&c->lock);
    model_stage_grads_hook(st, on_final, &c->hook[j]);
    return 1;
}

void dp_comm_disarm(model_stage_t *st)
{
    model_stage_grads_hook(st, NULL, NULL);
}

/* A device's gradient blocks (cuda) to or from their host mirrors around the buckets. */
static int blocks_move(dp_comm_t *c, int up, int iter, char *err, size_t errlen)
{
    for (int j = 0; j < c->v; j++) {
        int rc = up ? model_stage_grads_upload(c->st[j]) : model_stage_grads_host(c->st[j]);
        if (rc)
            return pn_err(err, errlen, rc, "rank %d: ALLREDUCE of iteration %d: copying chunk %d's gradients %s the "
                          "device: %s", c->rank, iter, j, up ? "back to" : "from", strerror(-rc));
    }
    return 0;
}

int dp_comm_step(dp_comm_t *c, int iter, char *err, size_t errlen)
{
    if (!c->started) {
        int rc = blocks_move(c, 0, iter, err, errlen);
        for (int k = 0; k < c->nb && !rc; k++)
            rc = bucket_run(c, k, iter, err, errlen);
        return rc ? rc : blocks_move(c, 1, iter, err, errlen);
    }
    pthread_mutex_lock(&c->lock);
    c->iter = iter;
    for (int k = c->nb - 1; k >= 0; k--) /* held back, or never reached by a hook */
        if (!c->b[k].queued)
            enqueue(c, k);
    pthread_cond_signal(&c->work);
    while (!c->rc && c->n_done < c->nb)
        pthread_cond_wait(&c->done, &c->lock);
    int rc = c->rc;
    if (rc) {
        snprintf(err, errlen, "%s", c->err);
    } else {
        for (int k = 0; k < c->nb; k++)
            c->b[k].queued = c->b[k].done = 0;
        c->q_head = c->q_tail = c->n_done = 0;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static void thread_stop(dp_comm_t *c)
{
    if (!c->started)
        return;
    pthread_mutex_lock(&c->lock);
    c->stop = 1;
    pthread_cond_broadcast(&c->work);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->thread, NULL);
    pthread_cond_destroy(&c->done);
    pthread_cond_destroy(&c->work);
    pthread_mutex_destroy(&c->lock);
    c->started = 0;
}

int dp_comm_failure(dp_comm_t *c, char *err, size_t errlen)
{
    thread_stop(c);
    if (c->rc)
        snprintf(err, errlen, "%s", c->err);
    return c->rc;
}

void dp_comm_destroy(dp_comm_t *c)
{
    if (!c)
        return;
    thread_stop(c);
    free(c->b);
    free(c->queue);
    free(c->hook);
    free(c->last);
    memset(c, 0, sizeof *c);
}
