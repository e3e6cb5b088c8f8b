/* The NCCL transport (see nccl.h). One two-rank communicator per directed channel
 * (this rank -> peer, peer -> this rank), not one per neighbour pair: NCCL runs the
 * operations of one communicator in order on its stream, and the executor pre-posts
 * receives (a ring of them) before it sends; with one communicator per pair, a posted
 * receive of a gradient would hold the stream until the peer sends it, and the
 * activation send queued behind it could never leave: both ranks would wait for each
 * other. With a channel per direction, a queued operation only ever waits for traffic
 * in its own direction, which the peer produces in order.
 *
 * Every message is a 16-byte header (key and size) and then the payload. A receive
 * channel receives the next header as soon as any receive is posted, and receives the
 * payload only into the receive whose key it names, after checking the size: messages
 * may arrive in any order of keys (as UCX's tags allow) and a wrong size never lands in
 * a tensor. Completion comes back through cudaLaunchHostFunc, which signals a condition
 * variable; a progress thread issues the next operations and watches every
 * communicator's async error; nothing spins. libnccl is dlopen'ed at the first open, so
 * no binary depends on it unless it runs --transport nccl. */
#include "pipeline/nccl.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#if defined(PN_HAVE_CUDA) && defined(PN_HAVE_NCCL)

#include <stdlib.h>
#include <time.h>

#include "common/clock.h"
#include "pipeline/nccl_int.h"

const char *nccl_why(ncclComm_t c, ncclResult_t r, char *buf, size_t len)
{
    const char *last = nccl_lib.GetLastError ? nccl_lib.GetLastError(c) : "";
    snprintf(buf, len, "%s%s%s", nccl_lib.GetErrorString(r), last && *last ? ": " : "", last ? last : "");
    return buf;
}

void nccl_kick(nccl_t *n)
{
    pthread_mutex_lock(&n->sig);
    n->kicked = 1;
    pthread_cond_broadcast(&n->sig_cond);
    pthread_mutex_unlock(&n->sig);
}

static void CUDART_CB host_fired(void *arg)
{
    chan_t *c = arg;
    pthread_mutex_lock(&c->n->sig);
    atomic_store(&c->fired, 1);
    pthread_cond_broadcast(&c->n->sig_cond);
    pthread_mutex_unlock(&c->n->sig);
}

static void req_complete(nccl_t *n, transport_req_t *r, int status, const char *why)
{
    if (r->state == TRANSPORT_REQ_DONE)
        return;
    r->status = status;
    if (status && why)
        snprintf(r->why, sizeof r->why, "%s", why);
    r->done_at = pn_now();
    r->impl = NULL;
    r->next = NULL;
    r->state = TRANSPORT_REQ_DONE;
    pthread_cond_broadcast(&n->cond);
}

/* Fails every request, now and later, and queues every communicator for an abort (done
 * by whoever releases the lock next: an abort must not run under it). Lock held. */
void nccl_fail_locked(nccl_t *n, int status, const char *why)
{
    if (!n->failed) {
        n->failed = 1;
        n->fail_status = status;
        snprintf(n->fail_why, sizeof n->fail_why, "%s", why);
    }
    for (int i = 0; i < n->n_chans; i++) {
        chan_t *c = n->chans[i];
        for (transport_req_t *r = c->queue, *next; r; r = next) {
            next = r->next;
            req_complete(n, r, status, why);
        }
        c->queue = NULL;
        if (c->cur)
            req_complete(n, c->cur, status, why);
        c->cur = NULL;
        if (c->comm && n->n_abort < (int)(sizeof n->to_abort / sizeof *n->to_abort)) {
            n->to_abort[n->n_abort++] = c->comm;
            c->comm = NULL;
        }
    }
    pthread_cond_broadcast(&n->cond);
}

/* Aborts what fail_locked queued; called with the lock held, drops it meanwhile. */
void nccl_abort_queued(nccl_t *n)
{
    while (n->n_abort > 0) {
        ncclComm_t c = n->to_abort[--n->n_abort];
        pthread_mutex_unlock(&n->lock);
        nccl_lib.CommAbort(c);
        pthread_mutex_lock(&n->lock);
    }
}

static void chan_fail(chan_t *c, const char *what, const char *detail)
{
    char why[160];
    snprintf(why, sizeof why, "NCCL %s rank %d: %.24s: %.96s", c->sending ? "channel to" : "channel from", c->peer, what,
             detail);
    nccl_fail_locked(c->n, -ECONNRESET, why);
}

/* Waits until the operations just issued on a non-blocking communicator are enqueued on
 * its stream (ncclInProgress until then), so that the host function lands behind them.
 * Enqueueing takes microseconds; the sleeps keep even a slow one off the core. */
static int enqueued(chan_t *c, ncclResult_t r)
{
    char buf[128];
    struct timespec ts = {0, 20000};
    double end = pn_now() + 10;
    while (r == ncclInProgress && pn_now() < end) {
        nanosleep(&ts, NULL);
        if (nccl_lib.CommGetAsyncError(c->comm, &r) != ncclSuccess)
            break;
    }
    if (r != ncclSuccess) {
        chan_fail(c, "enqueue", r == ncclInProgress ? "still in progress after 10 s" : nccl_why(c->comm, r, buf,
                                                                                             sizeof buf));
        return -EIO;
    }
    cudaError_t ce = cudaLaunchHostFunc(c->stream, host_fired, c);
    if (ce != cudaSuccess) {
        chan_fail(c, "cudaLaunchHostFunc", cudaGetErrorString(ce));
        return -EIO;
    }
    return 0;
}

/* Device memory for req's tensor: the tensor itself, or the channel's staging buffer when
 * it lives in host memory (the cuda backend hands the executor host buffers today;
 * device-resident ones go straight through). */
static void *dev_buf(chan_t *c, transport_req_t *r, int *staged)
{
    struct cudaPointerAttributes a;
    *staged = 0;
    if (!r->bytes)
        return c->hdr_dev; /* any device address; zero bytes move */
    if (cudaPointerGetAttributes(&a, r->buf) == cudaSuccess &&
        (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged))
        return r->buf;
    (void)cudaGetLastError();
    if (c->bounce_cap < r->bytes) {
        cudaFree(c->bounce);
        c->bounce = NULL;
        c->bounce_cap = 0;
        if (cudaMalloc(&c->bounce, r->bytes) != cudaSuccess)
            return NULL;
        c->bounce_cap = r->bytes;
    }
    *staged = 1;
    return c->bounce;
}

static void send_start(chan_t *c, transport_req_t *r)
{
    int staged;
    c->cur = r; /* from here a failure of the channel completes it */
    void *d = dev_buf(c, r, &staged);
    if (!d) {
        chan_fail(c, "send", "cudaMalloc of the staging buffer failed");
        return;
    }
    nccl_hdr_make(r->key, r->bytes, c->hdr_host);
    cudaError_t ce = cudaMemcpyAsync(c->hdr_dev, c->hdr_host, sizeof *c->hdr_host, cudaMemcpyHostToDevice, c->stream);
    if (ce == cudaSuccess && staged)
        ce = cudaMemcpyAsync(d, r->buf, r->bytes, cudaMemcpyHostToDevice, c->stream);
    if (ce != cudaSuccess) {
        chan_fail(c, "send", cudaGetErrorString(ce));
        return;
    }
    nccl_lib.GroupStart();
    ncclResult_t nr = nccl_lib.Send(c->hdr_dev, sizeof *c->hdr_host, ncclUint8, 1, c->comm, c->stream);
    if (nr == ncclSuccess || nr == ncclInProgress)
        nr = nccl_lib.Send(d, r->bytes, ncclUint8, 1, c->comm, c->stream);
    ncclResult_t ge = nccl_lib.GroupEnd();
    if (enqueued(c, nr == ncclSuccess || nr == ncclInProgress ? ge : nr) == 0) {
        c->busy = 2;
        c->busy_since = pn_now();
    }
}

/* Receives bytes into dev, then (host_dst) copies them to host memory, then fires. */
static void recv_issue(chan_t *c, void *dev, size_t bytes, int busy, void *host_dst)
{
    ncclResult_t nr = nccl_lib.Recv(dev, bytes, ncclUint8, 0, c->comm, c->stream);
    cudaError_t ce = cudaSuccess;
    if (host_dst && (nr == ncclSuccess || nr == ncclInProgress))
        ce = cudaMemcpyAsync(host_dst, dev, bytes, cudaMemcpyDeviceToHost, c->stream);
    if (ce != cudaSuccess) {
        chan_fail(c, "receive", cudaGetErrorString(ce));
        return;
    }
    if (enqueued(c, nr) == 0) {
        c->busy = busy;
        c->busy_since = pn_now();
    }
}

/* A header has arrived: the payload goes into the receive it names, once posted. */
static void recv_match(chan_t *c)
{
    char why[160];
    for (transport_req_t **pp = &c->queue; *pp; pp = &(*pp)->next) {
        int m = nccl_hdr_check(c->hdr_host, *pp, why, sizeof why);
        if (m == 0)
            continue;
        if (m < 0) { /* the payload is already on its way: the channel cannot continue */
            nccl_fail_locked(c->n, m, why);
            return;
        }
        transport_req_t *r = *pp;
        *pp = r->next;
        r->next = NULL;
        void *d = dev_buf(c, r, &c->staged);
        if (!d) {
            req_complete(c->n, r, -ENOMEM, "cudaMalloc of the staging buffer failed");
            chan_fail(c, "receive", "out of device memory");
            return;
        }
        c->have_hdr = 0;
        c->cur = r;
        /* A host tensor is copied back once the payload is in (busy 3): a copy queued
         * now could block this thread until the peer sends, if the memory is pageable. */
        recv_issue(c, d, r->bytes, 2, NULL);
        return;
    }
}

/* What a fired host function means for the channel's request; lock held. */
static void chan_fired(chan_t *c)
{
    nccl_t *n = c->n;
    if (c->busy == 1) {
        c->busy = 0;
        c->have_hdr = 1;
    } else if (c->busy == 2 && !c->sending && c->staged) {
        cudaError_t ce = cudaMemcpyAsync(c->cur->buf, c->bounce, c->cur->bytes, cudaMemcpyDeviceToHost, c->stream);
        if (ce == cudaSuccess)
            ce = cudaLaunchHostFunc(c->stream, host_fired, c);
        if (ce != cudaSuccess)
            chan_fail(c, "copy to host memory", cudaGetErrorString(ce));
        else
            c->busy = 3;
    } else if (c->busy >= 2) {
        transport_req_t *r = c->cur;
        c->cur = NULL;
        c->busy = 0;
        if (r)
            req_complete(n, r, 0, NULL);
    }
}

/* One turn of the progress thread for channel c: init, watchdog, completions, the next
 * operation. Lock held. */
static void chan_step(chan_t *c)
{
    nccl_t *n = c->n;
    char buf[160];
    ncclResult_t r = ncclInternalError; /* if the query itself fails */
    if (n->failed || !c->comm)
        return;
    if (nccl_lib.CommGetAsyncError(c->comm, &r) != ncclSuccess || (r != ncclSuccess && r != ncclInProgress)) {
        if (!n->quiet)
            chan_fail(c, c->ready ? "communicator failed" : "communicator set-up", nccl_why(c->comm, r, buf, sizeof buf));
        return;
    }
    if (!c->ready) {
        if (r == ncclInProgress)
            return;
        c->ready = 1;
    }
    if (atomic_exchange(&c->fired, 0))
        chan_fired(c);
    if (c->busy && n->timeout > 0 && pn_now() - c->busy_since > n->timeout) {
        snprintf(buf, sizeof buf, "no progress for %.0f s (the peer stopped or is gone)", n->timeout);
        chan_fail(c, "watchdog", buf);
        return;
    }
    if (c->busy || n->failed)
        return;
    if (c->sending && c->queue) {
        transport_req_t *q = c->queue;
        c->queue = q->next;
        q->next = NULL;
        send_start(c, q);
    } else if (!c->sending && c->have_hdr) {
        recv_match(c);
    } else if (!c->sending && c->queue) {
        recv_issue(c, c->hdr_dev, sizeof *c->hdr_host, 1, c->hdr_host);
    }
}

void *nccl_progress_main(void *arg)
{
    nccl_t *n = arg;
    cudaSetDevice(n->device);
    pthread_mutex_lock(&n->lock);
    while (!n->stop) {
        int pending = 0;
        for (int i = 0; i < n->n_chans; i++) {
            chan_step(n->chans[i]);
            pending |= n->chans[i]->comm && !n->chans[i]->ready;
        }
        nccl_abort_queued(n);
        pthread_mutex_unlock(&n->lock);
        /* Host functions and new requests kick us; the timeout only paces the watchdog
         * (and the polling NCCL asks for while a non-blocking init runs). */
        struct timespec ts = pn_timespec(pn_now() + (pending ? 0.005 : 0.1));
        pthread_mutex_lock(&n->sig);
        int any = n->kicked;
        for (int i = 0; i < n->n_chans && !any; i++)
            any = atomic_load(&n->chans[i]->fired);
        if (!any)
            pthread_cond_timedwait(&n->sig_cond, &n->sig, &ts);
        n->kicked = 0;
        pthread_mutex_unlock(&n->sig);
        pthread_mutex_lock(&n->lock);
    }
    pthread_mutex_unlock(&n->lock);
    return NULL;
}

static int nccl_address(void *impl, const void **blob, size_t *len)
{
    nccl_t *n = impl;
    *blob = n->blob;
    *len = n->blob_len;
    return 0;
}

static chan_t *chan_find(nccl_t *n, int peer, int sending)
{
    for (int i = 0; i < n->n_chans; i++)
        if (n->chans[i]->peer == peer && n->chans[i]->sending == sending)
            return n->chans[i];
    return NULL;
}

/* Queues req on its channel (sends in order, receives matched by header). */
static int post(nccl_t *n, transport_req_t *req, int sending)
{
    pthread_mutex_lock(&n->lock);
    chan_t *c = chan_find(n, req->peer, sending);
    if (n->failed) {
        req_complete(n, req, n->fail_status, n->fail_why);
    } else if (!c || !c->comm) {
        char why[96];
        snprintf(why, sizeof why, "rank %d is not connected over NCCL", req->peer);
        req_complete(n, req, -ENOTCONN, why);
    } else {
        transport_req_t **pp = &c->queue;
        while (*pp)
            pp = &(*pp)->next;
        *pp = req;
        req->impl = c;
    }
    pthread_mutex_unlock(&n->lock);
    nccl_kick(n);
    return 0;
}

static int nccl_send(void *impl, transport_req_t *req)
{
    return post(impl, req, 1);
}

static int nccl_recv(void *impl, transport_req_t *req)
{
    return post(impl, req, 0);
}

static int nccl_wait(void *impl, transport_req_t *req, double deadline)
{
    nccl_t *n = impl;
    int rc = 0;
    struct timespec ts = pn_timespec(deadline);
    pthread_mutex_lock(&n->lock);
    while (req->state != TRANSPORT_REQ_DONE && !rc) {
        if (n->failed)
            req_complete(n, req, n->fail_status, n->fail_why);
        else if (deadline > 0)
            rc = pthread_cond_timedwait(&n->cond, &n->lock, &ts) == ETIMEDOUT &&
                 req->state != TRANSPORT_REQ_DONE ? -ETIMEDOUT : 0;
        else
            pthread_cond_wait(&n->cond, &n->lock);
    }
    if (!rc)
        rc = req->status;
    pthread_mutex_unlock(&n->lock);
    return rc;
}

static void nccl_fail(void *impl, int status, const char *why)
{
    nccl_t *n = impl;
    pthread_mutex_lock(&n->lock);
    nccl_fail_locked(n, status, why);
    nccl_abort_queued(n);
    pthread_mutex_unlock(&n->lock);
    nccl_kick(n);
}

static void nccl_quiesce(void *impl)
{
    nccl_t *n = impl;
    pthread_mutex_lock(&n->lock);
    n->quiet = 1;
    pthread_mutex_unlock(&n->lock);
}

const transport_ops_t nccl_ops = {
    .name = "nccl",
    .address = nccl_address,
    .connect = nccl_connect,
    .send = nccl_send,
    .recv = nccl_recv,
    .wait = nccl_wait,
    .fail = nccl_fail,
    .quiesce = nccl_quiesce,
    .destroy = nccl_destroy,
};


#else /* no CUDA or no nccl.h in this build */

int nccl_transport_open(const transport_params_t *p, transport_t *out, char *err, size_t errlen)
{
    (void)p;
    (void)out;
    return pn_err(err, errlen, -ENOSYS, "--transport nccl: this pipenem was built without %s (rebuild where nvcc "
                  "and nccl.h exist: make CUDA=yes)",
#ifdef PN_HAVE_CUDA
                  "nccl.h"
#else
                  "CUDA"
#endif
    );
}

#endif
