/* The UCX transport's object, shared by its two files: ucx.c (matching, the progress
 * thread, send/receive/wait) and ucx_setup.c (context, worker and event fds; teardown).
 * Not an API: nothing else includes it. */
#ifndef PN_PIPELINE_UCX_INT_H
#define PN_PIPELINE_UCX_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include <ucp/api/ucp.h>

#include "pipeline/ucx.h"

typedef struct ucx ucx_t;

typedef struct {
    ucx_t *u;
    int rank;
    ucp_ep_h ep;
    int lost;
} ucx_peer_t;

/* A message UCX has handed us (probed and removed) before its receive was posted. */
typedef struct ucx_unexp {
    ucp_tag_message_h msg;
    ucp_tag_recv_info_t info;
    struct ucx_unexp *next;
} ucx_unexp_t;

/* One in-flight UCX request. The callback finds the caller's request through it, and a
 * failure can detach the caller's request while UCX still owns the operation. */
typedef struct ucx_slot {
    ucx_t *u;
    transport_req_t *req;
    void *ucx_req;
    struct ucx_slot *prev, *next;
} ucx_slot_t;

struct ucx {
    int rank, size;
    int peer_errors;                  /* endpoints in UCX's peer error mode (TLS tcp alone) */
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_address_t *addr;
    size_t addr_len;
    int efd, wake_fd, epfd;
    pthread_mutex_t lock;
    pthread_mutex_t gate;             /* guards sleeping on gate_cond (taken after lock) */
    pthread_cond_t gate_cond;         /* completions, and hand-offs of the lock */
    atomic_uint done_gen;             /* completions so far */
    atomic_int want;                  /* stage threads waiting for the lock */
    atomic_uint taken;                /* times a stage thread got it */
    atomic_int handing;               /* the progress thread waits for a hand-off */
    pthread_mutex_t cmd_lock;         /* the command queue (taken alone, or after lock) */
    transport_req_t *cmds, *cmds_tail;/* sends and receives for the progress thread */
    atomic_int cmd_pending;           /* cmds is not empty */
    atomic_int sleeping;              /* the progress thread is (about to be) in epoll */
    int sync_ready;
    pthread_t thread;
    int thread_started, stop;
    ucx_peer_t *peers;
    transport_req_t *posted;          /* receives waiting for their message */
    ucx_unexp_t *unexp, *unexp_tail;  /* messages waiting for their receive */
    ucx_unexp_t *rejected;            /* wrong-size messages, never received */
    ucx_slot_t *slots;                /* requests UCX still owns */
    int failed, fail_status, quiet;
    char fail_why[160];
};

/* Wakes the progress thread out of epoll. */
void ucx_wake(ucx_t *u);
/* Fails every request and all later ones with status and why; lock held. */
void ucx_fail_locked(ucx_t *u, int status, const char *why);
/* Unlinks and frees a slot; lock held. */
void ucx_slot_free(ucx_t *u, ucx_slot_t *s);

/* Locks, context, worker, its address and event fds; u->rank, size, peers set. On
 * failure, what was made is left for ucx_destroy. */
int ucx_setup(ucx_t *u, const ucx_params_t *p, char *err, size_t errlen) PN_WUR;
/* Stops the progress thread, cancels what UCX still holds, frees u (half-built too). */
void ucx_destroy(void *impl);

#endif
