/* UCX transport: UCP tag messages between neighbouring stages. A progress thread owns the
 * worker: it issues every send and receive, polls while a transfer streams (at most
 * UCX_POLL_WINDOW after the last event) and otherwise sleeps in epoll on the worker's
 * event fd, so that rendezvous transfers advance while the stage computes.
 *
 * The stage thread never waits for the worker: a send or receive goes into a command
 * queue (its own small lock) and wakes the progress thread only if it sleeps; a wait
 * sleeps on the gate until a completion, published with release order, marks its request
 * done. The rare calls that need the worker itself (connect, fail, quiesce) announce that
 * they want the lock (app_lock) and the progress thread hands it over between two
 * progress calls (hand_off). Lock order: lock, then gate or cmd_lock. Any number of
 * application threads may post, wait and fail at once (the executor and --dp-overlap's
 * all-reduce thread): posting is under cmd_lock, a wait sleeps on the gate for its own
 * request, and app_lock counts every thread that wants the lock. */
#include "pipeline/ucx.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#include "common/clock.h"
#include "pipeline/ucx_int.h"

/* seconds of polling after the last event while transfers are in flight */
#define UCX_POLL_WINDOW 100e-6

uint64_t ucx_tag_make(int src, transport_key_t key)
{
    return ((uint64_t)(key.dir & 3) << 62) | ((uint64_t)(src & 0x3fff) << 48) |
           ((uint64_t)(key.iter & 0xffffff) << 24) | (uint64_t)(key.mb & 0xffffff);
}

static int status_errno(ucs_status_t st)
{
    switch (st) {
    case UCS_OK: return 0;
    case UCS_ERR_CANCELED: return -ECANCELED;
    case UCS_ERR_MESSAGE_TRUNCATED: return -EMSGSIZE;
    case UCS_ERR_TIMED_OUT: return -ETIMEDOUT;
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_REJECTED: return -ECONNRESET;
    case UCS_ERR_NO_MEMORY: return -ENOMEM;
    default: return -EIO;
    }
}

void ucx_wake(ucx_t *u)
{
    uint64_t one = 1;
    if (write(u->wake_fd, &one, sizeof one) < 0) {
        /* EAGAIN: the counter is saturated, so the thread is already due to wake. */
    }
}

static void gate_broadcast(ucx_t *u)
{
    pthread_mutex_lock(&u->gate);
    pthread_cond_broadcast(&u->gate_cond);
    pthread_mutex_unlock(&u->gate);
}

/* Wakes every waiter: something completed or failed. Called with the lock held. */
static void notify(ucx_t *u)
{
    atomic_fetch_add(&u->done_gen, 1);
    gate_broadcast(u);
}

/* The lock for a stage thread: announced, so the progress thread hands it over. */
static void app_lock(ucx_t *u)
{
    atomic_fetch_add(&u->want, 1);
    pthread_mutex_lock(&u->lock);
    atomic_fetch_sub(&u->want, 1);
    atomic_fetch_add(&u->taken, 1);
    if (atomic_load(&u->handing))
        gate_broadcast(u);
}

/* Progress thread, lock held once: lets a waiting stage thread have the lock, and takes
 * it back after that thread got it (it may then have to wait until it is released). */
static void hand_off(ucx_t *u)
{
    unsigned seen = atomic_load(&u->taken);
    pthread_mutex_lock(&u->gate);
    atomic_store(&u->handing, 1);
    pthread_mutex_unlock(&u->lock);
    while (atomic_load(&u->want) > 0 && atomic_load(&u->taken) == seen)
        pthread_cond_wait(&u->gate_cond, &u->gate);
    atomic_store(&u->handing, 0);
    pthread_mutex_unlock(&u->gate);
    pthread_mutex_lock(&u->lock);
}

/* Completes req; called with the lock held. */
static void req_complete(ucx_t *u, transport_req_t *req, int status, const char *why)
{
    if (req->state == TRANSPORT_REQ_DONE)
        return;
    req->status = status;
    if (why)
        snprintf(req->why, sizeof req->why, "%s", why);
    req->done_at = pn_now();
    req->impl = NULL;
    __atomic_store_n(&req->state, TRANSPORT_REQ_DONE, __ATOMIC_RELEASE); /* ucx_wait reads it unlocked */
    notify(u);
}

static ucx_slot_t *slot_new(ucx_t *u, transport_req_t *req)
{
    ucx_slot_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->u = u;
    s->req = req;
    s->next = u->slots;
    if (u->slots)
        u->slots->prev = s;
    u->slots = s;
    return s;
}

void ucx_slot_free(ucx_t *u, ucx_slot_t *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        u->slots = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s);
}

static void slot_done(ucx_slot_t *s, void *request, ucs_status_t st, size_t got)
{
    ucx_t *u = s->u;
    pthread_mutex_lock(&u->lock);
    transport_req_t *req = s->req;
    if (req) {
        char why[160] = "";
        int rc = status_errno(st);
        if (st != UCS_OK)
            snprintf(why, sizeof why, "UCX %s %s rank %d failed: %s", req->is_recv ? "receive from" : "send to",
                     transport_dir_name(req->key.dir), req->peer, ucs_status_string(st));
        else if (req->is_recv && got != req->bytes) {
            rc = -EMSGSIZE;
            snprintf(why, sizeof why, "rank %d sent %zu bytes, expected %zu", req->peer, got, req->bytes);
        }
        req_complete(u, req, rc, rc ? why : NULL);
    }
    ucx_slot_free(u, s);
    ucp_request_free(request);
    pthread_mutex_unlock(&u->lock);
}

static void send_cb(void *request, ucs_status_t st, void *user_data)
{
    slot_done(user_data, request, st, 0);
}

static void recv_cb(void *request, ucs_status_t st, const ucp_tag_recv_info_t *info, void *user_data)
{
    slot_done(user_data, request, st, info ? info->length : 0);
}

/* Hands a UCX request (or immediate status) over to req; lock held. */
static int track(ucx_t *u, transport_req_t *req, ucs_status_ptr_t sp, ucx_slot_t *slot)
{
    if (sp == NULL) {
        ucx_slot_free(u, slot);
        req_complete(u, req, 0, NULL);
        return 0;
    }
    if (UCS_PTR_IS_ERR(sp)) {
        char why[160];
        ucx_slot_free(u, slot);
        snprintf(why, sizeof why, "UCX %s rank %d failed: %s", req->is_recv ? "receive from" : "send to",
                 req->peer, ucs_status_string(UCS_PTR_STATUS(sp)));
        req_complete(u, req, status_errno(UCS_PTR_STATUS(sp)), why);
        return req->status;
    }
    req->impl = sp;
    slot->ucx_req = sp;
    return 0;
}

/* Hands req to UCX (a send, or the receive of the probed message msg) with a slot its
 * callback finds it by; lock held. */
static void issue(ucx_t *u, transport_req_t *req, ucp_tag_message_h msg)
{
    ucx_slot_t *slot = slot_new(u, req);
    if (!slot) {
        req_complete(u, req, -ENOMEM, "out of memory");
        return;
    }
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .user_data = slot,
    };
    ucs_status_ptr_t sp;
    if (req->is_recv) {
        prm.cb.recv = recv_cb;
        sp = ucp_tag_msg_recv_nbx(u->worker, req->buf, req->bytes, msg, &prm);
    } else {
        prm.cb.send = send_cb;
        sp = ucp_tag_send_nbx(u->peers[req->peer].ep, req->buf, req->bytes, ucx_tag_make(u->rank, req->key), &prm);
    }
    track(u, req, sp, slot);
}

/* Starts receiving a probed message into req, unless its size is wrong; lock held. */
static void recv_start(ucx_t *u, transport_req_t *req, ucx_unexp_t *m)
{
    if (m->info.length != req->bytes) {
        char why[160];
        snprintf(why, sizeof why, "rank %d sent a %s message of %zu bytes, expected %zu: rejected unread",
                 req->peer, transport_dir_name(req->key.dir), m->info.length, req->bytes);
        m->next = u->rejected;
        u->rejected = m;
        req_complete(u, req, -EMSGSIZE, why);
        return;
    }
    issue(u, req, m->msg);
    free(m);
}

/* Takes every arrived message out of UCX's queue and matches it; lock held. */
static void probe_all(ucx_t *u)
{
    for (;;) {
        ucp_tag_recv_info_t info;
        ucp_tag_message_h msg = ucp_tag_probe_nb(u->worker, 0, 0, 1, &info);
        if (!msg)
            return;
        ucx_unexp_t *m = calloc(1, sizeof *m);
        if (!m) {
            /* Cannot keep it: leave the run failed rather than lose a message silently. */
            ucx_fail_locked(u, -ENOMEM, "out of memory for an arrived message");
            return;
        }
        m->msg = msg;
        m->info = info;
        transport_req_t **pp = &u->posted;
        while (*pp && ucx_tag_make((*pp)->peer, (*pp)->key) != info.sender_tag)
            pp = &(*pp)->next;
        if (*pp) {
            transport_req_t *req = *pp;
            *pp = req->next;
            req->next = NULL;
            recv_start(u, req, m);
        } else {
            if (u->unexp_tail)
                u->unexp_tail->next = m;
            else
                u->unexp = m;
            u->unexp_tail = m;
        }
    }
}

void ucx_fail_locked(ucx_t *u, int status, const char *why)
{
    if (!u->failed) {
        u->fail_status = status;
        snprintf(u->fail_why, sizeof u->fail_why, "%s", why);
        __atomic_store_n(&u->failed, 1, __ATOMIC_RELEASE);
    }
    for (transport_req_t *r = u->posted; r;) {
        transport_req_t *next = r->next;
        r->next = NULL;
        req_complete(u, r, status, why);
        r = next;
    }
    u->posted = NULL;
    pthread_mutex_lock(&u->cmd_lock);
    transport_req_t *q = u->cmds;
    u->cmds = u->cmds_tail = NULL;
    atomic_store(&u->cmd_pending, 0);
    pthread_mutex_unlock(&u->cmd_lock);
    for (transport_req_t *r; (r = q) != NULL;) {
        q = r->next;
        r->next = NULL;
        req_complete(u, r, status, why);
    }
    for (ucx_slot_t *s = u->slots; s; s = s->next)
        if (s->req) {
            req_complete(u, s->req, status, why);
            s->req = NULL;
        }
    notify(u);
}

static void peer_lost(ucx_t *u, ucx_peer_t *p, const char *why)
{
    p->lost = 1;
    /* Receives from this peer can never match now; sends to it are failed by UCX. */
    transport_req_t **pp = &u->posted;
    while (*pp) {
        transport_req_t *r = *pp;
        if (r->peer == p->rank) {
            *pp = r->next;
            r->next = NULL;
            req_complete(u, r, -ECONNRESET, why);
        } else {
            pp = &r->next;
        }
    }
    for (ucx_slot_t *s = u->slots; s; s = s->next)
        if (s->req && s->req->peer == p->rank) {
            req_complete(u, s->req, -ECONNRESET, why);
            s->req = NULL;
        }
}

static void ep_error(void *arg, ucp_ep_h ep, ucs_status_t st)
{
    (void)ep;
    ucx_peer_t *p = arg;
    ucx_t *u = p->u;
    pthread_mutex_lock(&u->lock);
    if (!u->quiet && !p->lost) {
        char why[160];
        snprintf(why, sizeof why, "connection to rank %d lost (%s)", p->rank, ucs_status_string(st));
        peer_lost(u, p, why);
    }
    p->lost = 1;
    pthread_mutex_unlock(&u->lock);
}

static int ucx_address(void *impl, const void **blob, size_t *len)
{
    ucx_t *u = impl;
    *blob = u->addr;
    *len = u->addr_len;
    return 0;
}

static int ucx_connect(void *impl, int peer, const void *blob, size_t len, char *err, size_t errlen)
{
    ucx_t *u = impl;
    (void)len;
    if (peer < 0 || peer >= u->size || peer == u->rank) {
        snprintf(err, errlen, "cannot connect rank %d to rank %d", u->rank, peer);
        return -EINVAL;
    }
    ucx_peer_t *p = &u->peers[peer];
    ucp_ep_params_t ep = {
        .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .address = blob,
        /* UCX 1.13 (`ucx_info -e -u te`) keeps in UCP_ERR_HANDLING_MODE_PEER only the
         * transports that report a peer's failure: no shared memory or CMA between local
         * processes (0.44 of `ucx_perftest -t tag_bw` with UCX's defaults, against 0.93
         * without), so UCX's own choice of transports runs without it. With TLS tcp alone (the
         * namespaces' veths) peer mode is kept: without it rendezvous takes tcp's RMA lane,
         * where the receiver's GETs wait for the sender's progress thread, which sleeps
         * between bursts while its stage computes: the default sweep's unshaped cells ran
         * 1.56-1.65 s against 1.27-1.45 s in peer mode (1f1b, gpt3-small, 3 namespaces).
         * Either way a dead peer is caught: the control plane (ctrl.c) sees its socket close
         * and fails this transport (stage.c on_peer_fail), and UCX calls ep_error where a
         * transport reports the loss (tcp). Tested by killing a rank mid-transfer:
         * test_pipeline_ucx_fault. */
        .err_mode = u->peer_errors ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE,
        .err_handler = {.cb = ep_error, .arg = p},
    };
    app_lock(u);
    ucs_status_t st = p->ep ? UCS_ERR_ALREADY_EXISTS : ucp_ep_create(u->worker, &ep, &p->ep);
    pthread_mutex_unlock(&u->lock);
    ucx_wake(u);
    if (st != UCS_OK) {
        snprintf(err, errlen, "UCX endpoint from rank %d to rank %d: %s", u->rank, peer, ucs_status_string(st));
        return -ECONNREFUSED;
    }
    return 0;
}

/* Issues a send taken from the command queue; lock held (progress thread). */
static void send_locked(ucx_t *u, transport_req_t *req)
{
    ucx_peer_t *p = &u->peers[req->peer];
    if (u->failed) {
        req_complete(u, req, u->fail_status, u->fail_why);
    } else if (!p->ep || p->lost) {
        char why[160];
        snprintf(why, sizeof why, p->ep ? "connection to rank %d lost" : "rank %d is not connected", req->peer);
        req_complete(u, req, p->ep ? -ECONNRESET : -ENOTCONN, why);
    } else {
        issue(u, req, NULL);
    }
}

/* Matches a receive taken from the command queue; lock held (progress thread). */
static void recv_locked(ucx_t *u, transport_req_t *req)
{
    uint64_t tag = ucx_tag_make(req->peer, req->key);
    ucx_unexp_t **mp = &u->unexp, *prev = NULL;
    while (*mp && (*mp)->info.sender_tag != tag) {
        prev = *mp;
        mp = &(*mp)->next;
    }
    if (*mp) {
        ucx_unexp_t *m = *mp;
        *mp = m->next;
        if (u->unexp_tail == m)
            u->unexp_tail = prev;
        m->next = NULL;
        recv_start(u, req, m);
    } else if (u->failed) {
        req_complete(u, req, u->fail_status, u->fail_why);
    } else if (u->peers[req->peer].lost) {
        char why[160];
        snprintf(why, sizeof why, "connection to rank %d lost", req->peer);
        req_complete(u, req, -ECONNRESET, why);
    } else {
        req->next = u->posted;
        u->posted = req;
    }
}

/* Issues what the stage threads queued, in order; lock held (progress thread). */
static void cmds_drain(ucx_t *u)
{
    if (!atomic_load(&u->cmd_pending))
        return;
    pthread_mutex_lock(&u->cmd_lock);
    transport_req_t *q = u->cmds;
    u->cmds = u->cmds_tail = NULL;
    atomic_store(&u->cmd_pending, 0);
    pthread_mutex_unlock(&u->cmd_lock);
    while (q) {
        transport_req_t *r = q;
        q = q->next;
        r->next = NULL;
        if (r->is_recv)
            recv_locked(u, r);
        else
            send_locked(u, r);
    }
}

/* Progresses until the worker has been quiet for UCX_POLL_WINDOW seconds with transfers in
 * flight, or at once without any: a transfer's next fragment usually follows within
 * microseconds, and sleeping in epoll between fragments (a wake-up and two system calls
 * each) is where half of the bandwidth went. A wait for a peer that is not sending ends
 * in epoll after one window, so an idle stage does not spin. Lock held. */
static void progress_burst(ucx_t *u)
{
    double last = pn_now();
    for (;;) {
        cmds_drain(u);
        unsigned n = ucp_worker_progress(u->worker);
        if (atomic_load(&u->want) > 0)
            hand_off(u);
        /* A rendezvous message waits for its receive's answer: match arrivals while the
         * previous message still streams in, not after it, or the link idles between. */
        if (n && u->posted)
            probe_all(u);
        if (n) {
            last = pn_now();
            continue;
        }
        probe_all(u);
        if ((!u->slots || pn_now() - last > UCX_POLL_WINDOW) && !atomic_load(&u->cmd_pending))
            return;
    }
}

static void *progress_main(void *arg)
{
    ucx_t *u = arg;
    pthread_mutex_lock(&u->lock);
    while (!u->stop) {
        progress_burst(u);
        /* Announce the sleep before the last look at the queue: a post after the look
         * sees sleeping and writes the eventfd. */
        atomic_store(&u->sleeping, 1);
        if (atomic_load(&u->cmd_pending)) {
            atomic_store(&u->sleeping, 0);
            continue;
        }
        ucs_status_t st = ucp_worker_arm(u->worker);
        if (st == UCS_ERR_BUSY) {
            atomic_store(&u->sleeping, 0);
            continue;
        }
        pthread_mutex_unlock(&u->lock);
        struct epoll_event ev[4];
        /* The timeout is only a safety net; every real event arrives through the fds. */
        int n = epoll_wait(u->epfd, ev, 4, 1000);
        atomic_store(&u->sleeping, 0);
        for (int i = 0; i < n; i++)
            if (ev[i].data.fd == u->wake_fd) {
                uint64_t v;
                if (read(u->wake_fd, &v, sizeof v) < 0) {
                    /* EAGAIN: already drained */
                }
            }
        pthread_mutex_lock(&u->lock);
    }
    pthread_mutex_unlock(&u->lock);
    return NULL;
}

/* A send or receive goes to the progress thread through a queue of its own: the stage
 * thread never waits for the worker lock (a hand-off costs two context switches, and on
 * a busy machine each can cost a time slice, during which no byte moves). */
static int cmd_post(ucx_t *u, transport_req_t *req)
{
    pthread_mutex_lock(&u->cmd_lock);
    if (__atomic_load_n(&u->failed, __ATOMIC_ACQUIRE)) {
        /* ucx_fail_locked has emptied the queue for the last time (it sets failed
         * first): this request is failed here, in no list */
        pthread_mutex_unlock(&u->cmd_lock);
        req_complete(u, req, u->fail_status, u->fail_why);
        return 0;
    }
    req->next = NULL;
    if (u->cmds_tail)
        u->cmds_tail->next = req;
    else
        u->cmds = req;
    u->cmds_tail = req;
    atomic_store(&u->cmd_pending, 1);
    pthread_mutex_unlock(&u->cmd_lock);
    if (atomic_load(&u->sleeping))
        ucx_wake(u);
    return 0;
}

static int ucx_send(void *impl, transport_req_t *req)
{
    return cmd_post(impl, req);
}

static int ucx_recv(void *impl, transport_req_t *req)
{
    return cmd_post(impl, req);
}

/* Sleeps on the gate until req is done; takes the lock (a hand-off from the progress
 * thread) only where the transport has failed: a completion is published with release
 * order, so a done request is read without one. */
static int ucx_wait(void *impl, transport_req_t *req, double deadline)
{
    ucx_t *u = impl;
    struct timespec ts = pn_timespec(deadline);
    for (;;) {
        unsigned gen = atomic_load(&u->done_gen);
        if (__atomic_load_n(&req->state, __ATOMIC_ACQUIRE) == TRANSPORT_REQ_DONE)
            return req->status;
        if (__atomic_load_n(&u->failed, __ATOMIC_ACQUIRE)) {
            /* ucx_fail_locked completes every request it finds, and cmd_post every later
             * one: once its lock is released, req is done. */
            app_lock(u);
            pthread_mutex_unlock(&u->lock);
            if (__atomic_load_n(&req->state, __ATOMIC_ACQUIRE) == TRANSPORT_REQ_DONE)
                return req->status;
        }
        int timed_out = 0;
        pthread_mutex_lock(&u->gate);
        while (atomic_load(&u->done_gen) == gen && !timed_out) {
            if (deadline > 0)
                timed_out = pthread_cond_timedwait(&u->gate_cond, &u->gate, &ts) == ETIMEDOUT;
            else
                pthread_cond_wait(&u->gate_cond, &u->gate);
        }
        pthread_mutex_unlock(&u->gate);
        if (timed_out && __atomic_load_n(&req->state, __ATOMIC_ACQUIRE) != TRANSPORT_REQ_DONE)
            return -ETIMEDOUT;
    }
}

static void ucx_fail(void *impl, int status, const char *why)
{
    ucx_t *u = impl;
    app_lock(u);
    ucx_fail_locked(u, status, why);
    pthread_mutex_unlock(&u->lock);
    ucx_wake(u);
}

static void ucx_quiesce(void *impl)
{
    ucx_t *u = impl;
    app_lock(u);
    u->quiet = 1;
    pthread_mutex_unlock(&u->lock);
}

static const transport_ops_t ucx_ops = {
    .name = "ucx",
    .address = ucx_address,
    .connect = ucx_connect,
    .send = ucx_send,
    .recv = ucx_recv,
    .wait = ucx_wait,
    .fail = ucx_fail,
    .quiesce = ucx_quiesce,
    .destroy = ucx_destroy,
};

int ucx_transport_open(const ucx_params_t *p, transport_t *out, char *err, size_t errlen)
{
    if (p->size < 1 || p->size > TRANSPORT_RANK_MAX || p->rank < 0 || p->rank >= p->size) {
        snprintf(err, errlen, "rank %d of %d is out of range (at most %d ranks)", p->rank, p->size,
                 TRANSPORT_RANK_MAX);
        return -EINVAL;
    }
    int rc = -ENOMEM;
    ucx_t *u = calloc(1, sizeof *u);
    if (!u || !(u->peers = calloc((size_t)p->size, sizeof *u->peers))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    u->rank = p->rank;
    u->size = p->size;
    u->efd = u->wake_fd = u->epfd = -1;
    for (int i = 0; i < p->size; i++) {
        u->peers[i].u = u;
        u->peers[i].rank = i;
    }
    if ((rc = ucx_setup(u, p, err, errlen)) != 0)
        goto fail;
    if ((rc = pthread_create(&u->thread, NULL, progress_main, u)) != 0) {
        snprintf(err, errlen, "progress thread: %s", strerror(rc));
        rc = -rc;
        goto fail;
    }
    u->thread_started = 1;
    out->ops = &ucx_ops;
    out->impl = u;
    out->rank = p->rank;
    out->size = p->size;
    return 0;
fail:
    if (u)
        ucx_destroy(u);
    return rc;
}
