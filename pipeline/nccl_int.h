/* The NCCL transport's objects, shared by nccl.c (channels, progress thread, send,
 * receive, wait) and nccl_setup.c (libnccl, GPU, ids, communicators, teardown). Not an
 * API: nothing else includes it, and only builds with CUDA and nccl.h do. */
#ifndef PN_PIPELINE_NCCL_INT_H
#define PN_PIPELINE_NCCL_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "pipeline/nccl.h"

#ifndef PN_NCCL_LIB
#define PN_NCCL_LIB "libnccl.so.2"
#endif

/* libnccl's entry points, resolved once by nccl_setup.c. */
typedef struct {
    ncclResult_t (*GetUniqueId)(ncclUniqueId *);
    ncclResult_t (*CommInitRankConfig)(ncclComm_t *, int, ncclUniqueId, int, ncclConfig_t *);
    ncclResult_t (*CommGetAsyncError)(ncclComm_t, ncclResult_t *);
    ncclResult_t (*CommAbort)(ncclComm_t);
    ncclResult_t (*CommFinalize)(ncclComm_t);
    ncclResult_t (*CommDestroy)(ncclComm_t);
    ncclResult_t (*Send)(const void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
    ncclResult_t (*Recv)(void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
    ncclResult_t (*GroupStart)(void);
    ncclResult_t (*GroupEnd)(void);
    const char *(*GetErrorString)(ncclResult_t);
    const char *(*GetLastError)(ncclComm_t);
} nccl_lib_t;
extern nccl_lib_t nccl_lib;
typedef struct nccl nccl_t;

typedef struct chan {
    nccl_t *n;
    int peer, sending;       /* sending: this rank is rank 0 of the communicator */
    ncclComm_t comm;         /* NULL once handed to an abort */
    cudaStream_t stream;
    int ready;               /* the non-blocking init finished */
    int busy;                /* 0 idle, 1 a header is being received, 2 a payload is moving */
    double busy_since;
    atomic_int fired;        /* the stream reached the host function (set under n->sig) */
    transport_req_t *queue;  /* send: FIFO of sends; receive: posted receives */
    transport_req_t *cur;    /* the request whose payload is moving */
    nccl_hdr_t *hdr_host;    /* pinned */
    void *hdr_dev;
    int have_hdr;            /* receive: a header arrived and waits for its receive */
    int staged;              /* cur's tensor is in host memory: it moves through bounce */
    void *bounce;            /* device staging for tensors in host memory */
    size_t bounce_cap;
} chan_t;

struct nccl {
    int rank, size, device;
    double timeout;
    pthread_mutex_t lock;    /* everything below; waiters sleep on cond */
    pthread_cond_t cond;
    pthread_mutex_t sig;     /* host functions and kicks; never held with a CUDA call */
    pthread_cond_t sig_cond;
    int kicked, sync_ready;
    pthread_t thread;
    int thread_started, stop;
    unsigned char blob[16 + NCCL_BLOB_MAX_IDS * (8 + NCCL_ID_BYTES)];
    size_t blob_len;
    nccl_blob_t mine;
    chan_t *chans[8];        /* two per peer: neighbours, and first <-> last */
    int n_chans;
    ncclComm_t to_abort[8];
    int n_abort;
    int failed, fail_status, quiet;
    char fail_why[160];
};

/* nccl.c */
extern const transport_ops_t nccl_ops;
const char *nccl_why(ncclComm_t c, ncclResult_t r, char *buf, size_t len);
void nccl_kick(nccl_t *n);
/* Fails every request, now and later; queues the communicators for abort_queued. */
void nccl_fail_locked(nccl_t *n, int status, const char *why);
/* Aborts what fail_locked queued; lock held, dropped meanwhile. */
void nccl_abort_queued(nccl_t *n);
void *nccl_progress_main(void *arg);

/* nccl_setup.c */
int nccl_connect(void *impl, int peer, const void *blob, size_t len, char *err, size_t errlen);
void nccl_destroy(void *impl);

#endif
