/* The NCCL transport's setup and teardown: libnccl loaded with dlopen (no binary depends
 * on it unless it opens this transport), the GPU, NCCL_SOCKET_IFNAME, this rank's channel
 * ids, the non-blocking communicators of a peer, and a close that flushes healthy
 * communicators and aborts the rest. */
#include "pipeline/nccl.h"

#if defined(PN_HAVE_CUDA) && defined(PN_HAVE_NCCL)

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "pipeline/jobenv.h"
#include "pipeline/nccl_int.h"

nccl_lib_t nccl_lib;
static pthread_once_t nccl_lib_once = PTHREAD_ONCE_INIT;
static char nccl_lib_err[256];

static void nccl_lib_load(void)
{
    void *h = dlopen(PN_NCCL_LIB, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(nccl_lib_err, sizeof nccl_lib_err, "cannot load libnccl (%s): %s", PN_NCCL_LIB, dlerror());
        return;
    }
    struct {
        void **fn;
        const char *name;
    } syms[] = {
        {(void **)&nccl_lib.GetUniqueId, "ncclGetUniqueId"}, {(void **)&nccl_lib.CommInitRankConfig, "ncclCommInitRankConfig"},
        {(void **)&nccl_lib.CommGetAsyncError, "ncclCommGetAsyncError"}, {(void **)&nccl_lib.CommAbort, "ncclCommAbort"},
        {(void **)&nccl_lib.CommFinalize, "ncclCommFinalize"}, {(void **)&nccl_lib.CommDestroy, "ncclCommDestroy"},
        {(void **)&nccl_lib.Send, "ncclSend"}, {(void **)&nccl_lib.Recv, "ncclRecv"}, {(void **)&nccl_lib.GroupStart, "ncclGroupStart"},
        {(void **)&nccl_lib.GroupEnd, "ncclGroupEnd"}, {(void **)&nccl_lib.GetErrorString, "ncclGetErrorString"},
        {(void **)&nccl_lib.GetLastError, "ncclGetLastError"},
    };
    for (size_t i = 0; i < sizeof syms / sizeof *syms; i++)
        if (!(*syms[i].fn = dlsym(h, syms[i].name))) {
            snprintf(nccl_lib_err, sizeof nccl_lib_err, "libnccl (%s) lacks %s: NCCL 2.14 or newer is needed", PN_NCCL_LIB,
                     syms[i].name);
            nccl_lib.GetLastError = NULL;
            return;
        }
}

/* A channel's stream, header buffers and (non-blocking) communicator. */
static int chan_open(nccl_t *n, int peer, int sending, const unsigned char *id, char *err, size_t errlen)
{
    char buf[160];
    chan_t *c = calloc(1, sizeof *c);
    if (!c)
        return pn_err(err, errlen, -ENOMEM, "out of memory");
    c->n = n;
    c->peer = peer;
    c->sending = sending;
    cudaError_t ce = cudaSetDevice(n->device);
    if (ce == cudaSuccess)
        ce = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (ce == cudaSuccess)
        ce = cudaMallocHost((void **)&c->hdr_host, sizeof *c->hdr_host);
    if (ce == cudaSuccess)
        ce = cudaMalloc(&c->hdr_dev, sizeof *c->hdr_host);
    ncclResult_t r = ncclSuccess;
    if (ce == cudaSuccess) {
        ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
        cfg.blocking = 0;
        ncclUniqueId uid;
        memcpy(uid.internal, id, sizeof uid.internal);
        r = nccl_lib.CommInitRankConfig(&c->comm, 2, uid, sending ? 0 : 1, &cfg);
    }
    pthread_mutex_lock(&n->lock);
    if (n->n_chans < (int)(sizeof n->chans / sizeof *n->chans))
        n->chans[n->n_chans++] = c; /* destroy frees it, half-built or not */
    pthread_mutex_unlock(&n->lock);
    nccl_kick(n);
    if (ce != cudaSuccess)
        return pn_err(err, errlen, -EIO, "NCCL channel %s rank %d: %s", sending ? "to" : "from", peer,
                      cudaGetErrorString(ce));
    if (r != ncclSuccess && r != ncclInProgress)
        return pn_err(err, errlen, -EIO, "NCCL communicator %s rank %d: %s", sending ? "to" : "from", peer,
                      nccl_why(c->comm, r, buf, sizeof buf));
    return 0;
}

int nccl_connect(void *impl, int peer, const void *blob, size_t len, char *err, size_t errlen)
{
    nccl_t *n = impl;
    if (peer < 0 || peer >= n->size || peer == n->rank)
        return pn_err(err, errlen, -EINVAL, "cannot connect rank %d to rank %d", n->rank, peer);
    for (int i = 0; i < n->n_chans; i++)
        if (n->chans[i]->peer == peer)
            return pn_err(err, errlen, -EALREADY, "rank %d is already connected to rank %d", n->rank, peer);
    nccl_blob_t theirs;
    const nccl_blob_t *b = &n->mine;
    if (peer < n->rank) { /* the lower rank of a pair made its ids */
        int rc = nccl_blob_decode(blob, len, &theirs, err, errlen);
        if (rc)
            return rc;
        if (theirs.rank != peer || theirs.size != n->size)
            return pn_err(err, errlen, -EPROTO, "the address of rank %d says rank %d of %d (this job has %d)", peer,
                          theirs.rank, theirs.size, n->size);
        b = &theirs;
    }
    const nccl_chan_id_t *out = nccl_blob_find(b, n->rank, peer), *in = nccl_blob_find(b, peer, n->rank);
    if (!out || !in)
        return pn_err(err, errlen, -EPROTO, "no NCCL id for the channels between rank %d and rank %d (NCCL "
                      "connects neighbours and the first and last stage only)", n->rank, peer);
    /* the lower rank's outgoing channel first on both sides: the inits pair up in order */
    int first = n->rank < peer; /* 1: this rank's outgoing channel first */
    int rc = chan_open(n, peer, first, first ? out->id : in->id, err, errlen);
    if (!rc)
        rc = chan_open(n, peer, !first, first ? in->id : out->id, err, errlen);
    return rc;
}

/* Closes a communicator: flushed and destroyed when it is idle and healthy (at most 5 s),
 * aborted otherwise. */
static void comm_close(chan_t *c)
{
    ncclResult_t r = ncclInProgress;
    if (c->ready && !c->busy && !c->queue && nccl_lib.CommFinalize(c->comm) != ncclInternalError) {
        struct timespec ts = {0, 1000000};
        double end = pn_now() + 5;
        while (nccl_lib.CommGetAsyncError(c->comm, &r) == ncclSuccess && r == ncclInProgress && pn_now() < end)
            nanosleep(&ts, NULL);
    }
    if (r == ncclSuccess)
        nccl_lib.CommDestroy(c->comm);
    else
        nccl_lib.CommAbort(c->comm);
    c->comm = NULL;
}

void nccl_destroy(void *impl)
{
    nccl_t *n = impl;
    if (!n)
        return;
    if (n->thread_started) {
        pthread_mutex_lock(&n->lock);
        n->stop = 1;
        pthread_mutex_unlock(&n->lock);
        nccl_kick(n);
        pthread_join(n->thread, NULL);
    }
    if (n->sync_ready) {
        pthread_mutex_lock(&n->lock);
        for (int i = 0; i < n->n_chans; i++)
            if (n->chans[i]->busy || n->chans[i]->queue)
                nccl_fail_locked(n, -ECANCELED, "transport closed");
        nccl_abort_queued(n);
        pthread_mutex_unlock(&n->lock);
    }
    for (int i = 0; i < n->n_chans; i++) {
        chan_t *c = n->chans[i];
        if (c->comm)
            comm_close(c);
        if (c->stream) {
            /* its host functions point at c: let the (aborted) work drain first */
            cudaStreamSynchronize(c->stream);
            cudaStreamDestroy(c->stream);
        }
        cudaFreeHost(c->hdr_host);
        cudaFree(c->hdr_dev);
        cudaFree(c->bounce);
        free(c);
    }
    if (n->sync_ready) {
        pthread_cond_destroy(&n->cond);
        pthread_cond_destroy(&n->sig_cond);
        pthread_mutex_destroy(&n->lock);
        pthread_mutex_destroy(&n->sig);
    }
    free(n);
}

/* NCCL_SOCKET_IFNAME: the interface that reaches rank 0, as UCX's devices are chosen
 * (the user's own setting wins). */
static int socket_ifname(const transport_params_t *p, char *err, size_t errlen)
{
    if (getenv("NCCL_SOCKET_IFNAME") || !p->root_host || !*p->root_host)
        return 0;
    char ifname[64];
    int rc = jobenv_route_ifname(p->root_host, p->root_port, ifname, sizeof ifname, err, errlen);
    if (rc)
        return rc;
    setenv("NCCL_SOCKET_IFNAME", ifname, 1);
    return 0;
}

/* The GPU, libnccl and this rank's channel ids (n->device, n->mine, n->blob). */
static int nccl_setup(nccl_t *n, const transport_params_t *p, char *err, size_t errlen)
{
    int count = 0, rc;
    cudaError_t ce = cudaGetDeviceCount(&count);
    if (ce != cudaSuccess || count < 1)
        return pn_err(err, errlen, -ENODEV, "--transport nccl needs a GPU: %s",
                      ce != cudaSuccess ? cudaGetErrorString(ce) : "no CUDA device");
    if ((rc = nccl_device_pick(p->compute, p->device, count, p->rank, &n->device, err, errlen)) != 0)
        return rc;
    if ((ce = cudaSetDevice(n->device)) != cudaSuccess)
        return pn_err(err, errlen, -ENODEV, "GPU %d: %s", n->device, cudaGetErrorString(ce));
    if ((rc = socket_ifname(p, err, errlen)) != 0)
        return rc;
    pthread_once(&nccl_lib_once, nccl_lib_load);
    if (!nccl_lib.GetLastError)
        return pn_err(err, errlen, -ELIBACC, "%s", nccl_lib_err);
    int peers[2], np = nccl_blob_peers(n->rank, n->size, peers);
    n->mine = (nccl_blob_t){.rank = n->rank, .size = n->size};
    for (int i = 0; i < np; i++)
        for (int d = 0; d < 2; d++) {
            nccl_chan_id_t *c = &n->mine.ids[n->mine.n++];
            ncclUniqueId uid;
            ncclResult_t r = nccl_lib.GetUniqueId(&uid);
            if (r != ncclSuccess)
                return pn_err(err, errlen, -EIO, "ncclGetUniqueId: %s", nccl_lib.GetErrorString(r));
            c->src = d ? peers[i] : n->rank;
            c->dst = d ? n->rank : peers[i];
            memcpy(c->id, uid.internal, NCCL_ID_BYTES);
        }
    int len = nccl_blob_encode(&n->mine, n->blob, sizeof n->blob);
    if (len < 0)
        return pn_err(err, errlen, len, "internal: the NCCL address does not fit");
    n->blob_len = (size_t)len;
    return 0;
}

int nccl_transport_open(const transport_params_t *p, transport_t *out, char *err, size_t errlen)
{
    if (p->size < 2 || p->size > TRANSPORT_RANK_MAX || p->rank < 0 || p->rank >= p->size)
        return pn_err(err, errlen, -EINVAL, "rank %d of %d is out of range for NCCL", p->rank, p->size);
    nccl_t *n = calloc(1, sizeof *n);
    if (!n)
        return pn_err(err, errlen, -ENOMEM, "out of memory");
    n->rank = p->rank;
    n->size = p->size;
    n->timeout = p->timeout;
    int rc = -ENOMEM;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (pthread_mutex_init(&n->lock, NULL) || pthread_mutex_init(&n->sig, NULL) || pthread_cond_init(&n->cond, &ca) ||
        pthread_cond_init(&n->sig_cond, &ca)) {
        pthread_condattr_destroy(&ca);
        free(n);
        return pn_err(err, errlen, -ENOMEM, "pthread init failed");
    }
    pthread_condattr_destroy(&ca);
    n->sync_ready = 1;
    if ((rc = nccl_setup(n, p, err, errlen)) != 0)
        goto fail;
    if ((rc = pthread_create(&n->thread, NULL, nccl_progress_main, n)) != 0) {
        rc = pn_err(err, errlen, -rc, "progress thread: %s", strerror(rc));
        goto fail;
    }
    n->thread_started = 1;
    *out = (transport_t){.ops = &nccl_ops, .impl = n, .rank = p->rank, .size = p->size};
    return 0;
fail:
    nccl_destroy(n);
    return rc;
}

#else
/* nccl.c says what this build lacks. */
typedef int pn_nccl_setup_unused_t;
#endif
