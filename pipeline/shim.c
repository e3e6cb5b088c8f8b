/* Shim transport: header + tensor per message over the inner transport; receives wait
 * for the header's delivery time. Only the sending side of a link direction runs its
 * shaper, so link occupancy needs no coordination between processes. Two threads of a
 * stage may use it at once (the executor, and --dp-overlap's all-reduce thread): the
 * list of pending headers, the shapers and the wake-up statistics are under one lock. */
#include "pipeline/shim.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "common/clock.h"
#include "netem/shaper.h"

#define SHIM_MAGIC 0x50534831u /* "PSH1" */
#define SHIM_MTU 1500           /* frames charged like the kernel shaper would */
#define SHIM_LATE_WINDOW 32     /* recent wake-ups whose smallest lateness is the floor */

typedef struct {
    double deliver;    /* rank 0's clock */
    uint32_t magic, pad;
} shim_hdr_t;

/* A header in flight, tied to the caller's request. */
typedef struct shim_pend {
    transport_req_t *user;
    transport_req_t hreq;
    shim_hdr_t hdr;
    struct shim_pend *next;
} shim_pend_t;

typedef struct {
    transport_t inner;
    int rank, size;
    int stages;              /* of one replica: rank = d*stages + s */
    netem_shaper_t to_next, to_prev;
    netem_shaper_t to_dp[2]; /* to the same stage of the next and the previous replica */
    netem_shaper_t to_twin;  /* the tied-embedding exchange between the first and last rank */
    int twin;                /* that peer, or -1 */
    const double *offset;
    shim_pend_t *pend;
    double late[SHIM_LATE_WINDOW];  /* seconds: how late recent sleeps until a time woke up */
    int late_n, late_next;
    pthread_mutex_t lock;    /* pend, the shapers, late */
} shim_t;

static transport_key_t hdr_key(transport_key_t k)
{
    return (transport_key_t){TRANSPORT_CTRL, k.iter, k.mb * 4 + (int)k.dir};
}

static int shim_address(void *impl, const void **blob, size_t *len)
{
    shim_t *s = impl;
    return s->inner.ops->address(s->inner.impl, blob, len);
}

static int shim_connect(void *impl, int peer, const void *blob, size_t len, char *err, size_t errlen)
{
    shim_t *s = impl;
    return s->inner.ops->connect(s->inner.impl, peer, blob, len, err, errlen);
}

static shim_pend_t *pend_new(shim_t *s, transport_req_t *user)
{
    shim_pend_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->user = user;
    p->next = s->pend;
    s->pend = p;
    return p;
}

static shim_pend_t *pend_take(shim_t *s, transport_req_t *user)
{
    for (shim_pend_t **pp = &s->pend; *pp; pp = &(*pp)->next)
        if ((*pp)->user == user) {
            shim_pend_t *p = *pp;
            *pp = p->next;
            return p;
        }
    return NULL;
}

static int shim_send(void *impl, transport_req_t *req)
{
    shim_t *s = impl;
    if (req->key.mb >= TRANSPORT_MB_MAX / 4)
        return -EINVAL;
    int P = s->stages, st = s->rank % P, D = s->size / P, d = s->rank / P;
    netem_shaper_t *sh = req->peer == s->rank + 1 && st + 1 < P       ? &s->to_next
                         : req->peer == s->rank - 1 && st > 0         ? &s->to_prev
                         : req->peer == s->twin                       ? &s->to_twin
                         : req->peer == (d + 1) % D * P + st          ? &s->to_dp[0]
                         : req->peer == (d + D - 1) % D * P + st      ? &s->to_dp[1]
                                                                      : NULL;
    pthread_mutex_lock(&s->lock);
    shim_pend_t *p = pend_new(s, req);
    if (!p) {
        pthread_mutex_unlock(&s->lock);
        return -ENOMEM;
    }
    double t0 = pn_now() - *s->offset;
    /* Neighbours over their link; the first and last rank's tied-embedding exchange as
     * the namespace topology's switch shapes it: by the receiver's port, whose profile
     * is that of the receiver's one link. */
    p->hdr.deliver = sh ? netem_shaper_deliver(sh, t0, netem_shaper_wire_bytes(req->bytes, SHIM_MTU)) : t0;
    p->hdr.magic = SHIM_MAGIC;
    pthread_mutex_unlock(&s->lock);
    int rc = transport_send(&s->inner, req->peer, hdr_key(req->key), &p->hdr, sizeof p->hdr, &p->hreq);
    if (!rc)
        rc = s->inner.ops->send(s->inner.impl, req);
    return rc;
}

static int shim_recv(void *impl, transport_req_t *req)
{
    shim_t *s = impl;
    if (req->key.mb >= TRANSPORT_MB_MAX / 4)
        return -EINVAL;
    pthread_mutex_lock(&s->lock);
    shim_pend_t *p = pend_new(s, req);
    pthread_mutex_unlock(&s->lock);
    if (!p)
        return -ENOMEM;
    int rc = transport_recv(&s->inner, req->peer, hdr_key(req->key), &p->hdr, sizeof p->hdr, &p->hreq);
    if (!rc)
        rc = s->inner.ops->recv(s->inner.impl, req);
    return rc;
}

/* Sleep until a delivery time and never wake before it: a link delivers no earlier than
 * its delay (netem's own timer only ever fires late). A timer wakes a thread late by at
 * least the host's wake-up latency (5-8 us on this project's VMs: 5-8% of a 100 us link),
 * so the shim aims early by the smallest lateness of its recent wake-ups, a floor that
 * nearly every wake-up exceeds; one that comes early anyway sleeps again until the time.
 * (Aiming early by the mean lateness released half the receives of a 100 us link up to
 * 13 us early, and the round trip measured 11% short.) It never spins. */
static void sleep_until(shim_t *s, double at)
{
    double now = pn_now();
    if (now >= at)
        return;
    pthread_mutex_lock(&s->lock);
    double least = s->late_n ? s->late[0] : 0;
    for (int i = 1; i < s->late_n; i++)
        least = fmin(least, s->late[i]);
    pthread_mutex_unlock(&s->lock);
    double aim = at - least > now ? at - least : at;   /* closer than a wake-up: aim at the time */
    pn_sleep_until(aim);
    double woke = pn_now();
    pthread_mutex_lock(&s->lock);
    s->late[s->late_next] = woke - aim;
    s->late_next = (s->late_next + 1) % SHIM_LATE_WINDOW;
    if (s->late_n < SHIM_LATE_WINDOW)
        s->late_n++;
    pthread_mutex_unlock(&s->lock);
    if (woke < at)
        pn_sleep_until(at);
}

static int shim_wait(void *impl, transport_req_t *req, double deadline)
{
    shim_t *s = impl;
    int rc = s->inner.ops->wait(s->inner.impl, req, deadline);
    pthread_mutex_lock(&s->lock);
    shim_pend_t *p = pend_take(s, req);
    pthread_mutex_unlock(&s->lock);
    if (!p)
        return rc;
    int hrc = rc ? 0 : s->inner.ops->wait(s->inner.impl, &p->hreq, deadline);
    if (!rc && hrc) {
        rc = hrc;
        snprintf(req->why, sizeof req->why, "%s", p->hreq.why);
    }
    if (!rc && req->is_recv) {
        if (p->hdr.magic != SHIM_MAGIC) {
            snprintf(req->why, sizeof req->why, "rank %d sent a malformed shim header", req->peer);
            rc = -EPROTO;
        } else {
            sleep_until(s, p->hdr.deliver + *s->offset);
            req->done_at = pn_now();
        }
    }
    if (rc)
        req->status = rc;
    if (__atomic_load_n(&p->hreq.state, __ATOMIC_ACQUIRE) != TRANSPORT_REQ_DONE) {
        /* The header was never waited for (the tensor's wait failed first): the inner
         * transport may still be filling p->hreq, so p stays on the list, matched by no
         * request, until shim_destroy frees it after the inner transport is gone. */
        pthread_mutex_lock(&s->lock);
        p->user = NULL;
        p->next = s->pend;
        s->pend = p;
        pthread_mutex_unlock(&s->lock);
        return rc;
    }
    free(p);
    return rc;
}

static void shim_fail(void *impl, int status, const char *why)
{
    shim_t *s = impl;
    s->inner.ops->fail(s->inner.impl, status, why);
}

static void shim_quiesce(void *impl)
{
    shim_t *s = impl;
    s->inner.ops->quiesce(s->inner.impl);
}

static void shim_destroy(void *impl)
{
    shim_t *s = impl;
    /* the inner transport cancels what is pending before the headers go */
    transport_destroy(&s->inner);
    for (shim_pend_t *p = s->pend, *n; p; p = n) {
        n = p->next;
        free(p);
    }
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static const transport_ops_t shim_ops = {
    .name = "shim",
    .address = shim_address,
    .connect = shim_connect,
    .send = shim_send,
    .recv = shim_recv,
    .wait = shim_wait,
    .fail = shim_fail,
    .quiesce = shim_quiesce,
    .destroy = shim_destroy,
};

int shim_transport_wrap(transport_t *inner, const netem_profile_t *links, const double *clock_offset,
                        transport_t *out, char *err, size_t errlen)
{
    return shim_transport_wrap_dp(inner, inner->size, links, NULL, clock_offset, out, err, errlen);
}

int shim_transport_wrap_dp(transport_t *inner, int stages, const netem_profile_t *links, const netem_profile_t *dp_link,
                           const double *clock_offset, transport_t *out, char *err, size_t errlen)
{
    if (stages < 1 || inner->size % stages) {
        snprintf(err, errlen, "shim: %d ranks are not replicas of %d stages", inner->size, stages);
        return -EINVAL;
    }
    shim_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->inner = *inner;
    s->rank = inner->rank;
    s->size = inner->size;
    s->stages = stages;
    s->offset = clock_offset;
    netem_profile_t none = {0};
    int P = stages, st = s->rank % P, base = s->rank - st; /* links of this rank's replica */
    netem_shaper_init(&s->to_next, st + 1 < P ? &links[st] : &none);
    netem_shaper_init(&s->to_prev, st > 0 ? &links[st - 1] : &none);
    s->twin = P > 2 && st == 0 ? base + P - 1 : P > 2 && st == P - 1 ? base : -1;
    netem_shaper_init(&s->to_twin, s->twin < 0 ? &none : st == P - 1 ? &links[0] : &links[P - 2]);
    netem_shaper_init(&s->to_dp[0], dp_link ? dp_link : &none);
    netem_shaper_init(&s->to_dp[1], dp_link ? dp_link : &none);
    /* The default 50 us timer slack would make every sleep until a delivery time wake up
     * to 50 us late: a quarter of a 100 us link delay. The executor's thread, which calls
     * this and later waits, gets 1 ns slack. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    memset(inner, 0, sizeof *inner);
    *out = (transport_t){&shim_ops, s, s->rank, s->size};
    return 0;
}
