/* The transport interface between pipeline stages: non-blocking send and receive of whole
 * tensors to a neighbouring rank, matched by (direction, iteration, micro-batch). Variants
 * (UCX, the netem in-transport shaper wrapped around another transport, NCCL) are const
 * tables of operations behind one handle, chosen at run time. */
#ifndef PN_PIPELINE_TRANSPORT_H
#define PN_PIPELINE_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/limits.h"

/* What a message carries; with the iteration and micro-batch it is the matching key. */
/* TIED: the tied-embedding gradient exchanged between the first and last stage. */
typedef enum { TRANSPORT_ACT = 0, TRANSPORT_GRAD = 1, TRANSPORT_CTRL = 2, TRANSPORT_TIED = 3 } transport_dir_t;

typedef struct {
    transport_dir_t dir;
    int iter;   /* 0 .. TRANSPORT_ITER_MAX-1 */
    int mb;     /* 0 .. TRANSPORT_MB_MAX-1 */
} transport_key_t;

/* What a message key can carry (the bits of the UCX tag); the job's limits must fit. */
enum { TRANSPORT_RANK_MAX = 1 << 14, TRANSPORT_ITER_MAX = 1 << 24, TRANSPORT_MB_MAX = 1 << 24 };
_Static_assert((long)PN_MAX_WORLD <= (long)TRANSPORT_RANK_MAX, "a rank must fit the key");
_Static_assert((long)PN_MAX_ITERS <= (long)TRANSPORT_ITER_MAX, "an iteration must fit the key");
_Static_assert((long)PN_MAX_MICRO_BATCHES <= (long)TRANSPORT_MB_MAX, "a micro-batch must fit the key");

typedef enum { TRANSPORT_REQ_IDLE = 0, TRANSPORT_REQ_PENDING, TRANSPORT_REQ_DONE } transport_req_state_t;

/* One send or receive, owned by the caller and valid until it is done (or the transport is
 * destroyed). The implementation fills the fields below the line. */
typedef struct transport_req {
    int peer;
    transport_key_t key;
    void *buf;
    size_t bytes;
    int is_recv;
    /* ---- written by the transport ---- */
    volatile transport_req_state_t state;
    int status;          /* 0, or -ECONNRESET (peer lost), -EMSGSIZE (size mismatch), -ECANCELED */
    double done_at;      /* local monotonic seconds when it completed */
    char why[160];       /* what went wrong, when status != 0 */
    void *impl;          /* implementation handle */
    struct transport_req *next;
} transport_req_t;

typedef struct {
    const char *name;
    /* This rank's connection blob, published to every rank by the bootstrap. */
    int (*address)(void *impl, const void **blob, size_t *len);
    /* Connects to peer given its blob (called for the neighbours only). */
    int (*connect)(void *impl, int peer, const void *blob, size_t len, char *err, size_t errlen);
    int (*send)(void *impl, transport_req_t *req);
    int (*recv)(void *impl, transport_req_t *req);
    /* Sleeps until req is done, the deadline (monotonic seconds) passes (-ETIMEDOUT), or
     * the transport has failed. Returns req->status or the reason it stopped waiting. */
    int (*wait)(void *impl, transport_req_t *req, double deadline);
    /* Marks every pending and future request failed with status and why (a peer died as
     * seen by the bootstrap, or the run is being torn down) and wakes every waiter. */
    void (*fail)(void *impl, int status, const char *why);
    /* Stops treating peer disconnects as failures (every rank has finished). */
    void (*quiesce)(void *impl);
    void (*destroy)(void *impl);
} transport_ops_t;

typedef struct {
    const transport_ops_t *ops;
    void *impl;
    int rank, size;
} transport_t;

/* What opening a transport on this rank needs; each variant reads its own fields. */
typedef struct {
    int rank, size;
    const char *ucx_tls, *ucx_devices;   /* ucx: UCX_TLS / UCX_NET_DEVICES, NULL = UCX's choice */
    const char *root_host;               /* nccl: rank 0's rendezvous host: NCCL_SOCKET_IFNAME is */
    int root_port;                       /*   the interface that reaches it (unless set already) */
    const char *compute;                 /* nccl: the --compute text (cuda[:ARG]: which GPU) */
    int device;                          /* nccl: --device, -1 = not given */
    double timeout;                      /* nccl: the watchdog aborts a channel silent this long */
} transport_params_t;

/* The transports as a const table (`--transport`): adding one adds an entry. */
typedef struct transport_kind {
    const char *name;
    const char *summary;
    int needs_cuda;        /* carries GPU-resident tensors: only with --compute cuda */
    int shim_ok;           /* the in-transport shaper (netem shim) can wrap it */
    int (*open)(const transport_params_t *p, transport_t *out, char *err, size_t errlen);
} transport_kind_t;

/* The entry called name, or NULL. */
const transport_kind_t *transport_kind_find(const char *name);
/* "ucx, nccl", derived from the table, for --help and messages. */
const char *transport_kind_names(void);
/* The combination of a transport with the compute spec and the emulator asked for
 * ("auto", "netem", "shim"): -EINVAL naming what is wrong (unknown transport, nccl
 * without cuda compute, the shim asked to shape traffic it cannot see). */
int transport_kind_check(const char *name, const char *compute, const char *emulator, char *err,
                         size_t errlen) PN_WUR;
/* What --emulator asked narrows to for this transport, before netem_emulator_choose: auto
 * becomes the kernel's backend where the transport cannot carry the in-transport shaper
 * (nccl), and the shim where there are no namespaces for the kernel's to act on (have_ns
 * 0); anything else stays as asked. */
const char *transport_emulator_asked(const char *name, const char *asked, int have_ns);
/* Opens the transport called name (transport_kind_check first). */
int transport_open(const char *name, const transport_params_t *p, transport_t *out, char *err,
                   size_t errlen) PN_WUR;

/* Fills req for a send/receive of bytes at buf with peer and posts it. */
int transport_send(transport_t *t, int peer, transport_key_t key, const void *buf, size_t bytes,
                   transport_req_t *req) PN_WUR;
int transport_recv(transport_t *t, int peer, transport_key_t key, void *buf, size_t bytes,
                   transport_req_t *req) PN_WUR;
/* Waits at most timeout seconds (<= 0: forever). */
int transport_wait(transport_t *t, transport_req_t *req, double timeout) PN_WUR;
void transport_fail(transport_t *t, int status, const char *why);
void transport_quiesce(transport_t *t);
/* Accepts a half-built or NULL transport. */
void transport_destroy(transport_t *t);

const char *transport_dir_name(transport_dir_t d);

#endif
