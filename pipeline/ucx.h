/* The UCX implementation of the pipeline transport: one UCP worker per stage process, tag
 * send/receive of whole tensors to neighbour endpoints, a progress thread that sleeps on
 * the worker's event fd, and a size check before any byte lands in a tensor. */
#ifndef PN_PIPELINE_UCX_H
#define PN_PIPELINE_UCX_H

#include <stdint.h>

#include "common/err.h"
#include "pipeline/transport.h"

typedef struct {
    int rank, size;
    /* UCX_TLS / UCX_NET_DEVICES to force; NULL keeps UCX's choice (or the environment's).
     * Emulated links need "tcp" and the host's interface: UCX would otherwise pick shared
     * memory between processes of one box and bypass the emulated link. */
    const char *tls;
    const char *net_devices;
} ucx_params_t;

/* The tag of a message from rank src: direction (2 bits), source rank (14), iteration
 * (24), micro-batch (24). Exposed for tests. */
uint64_t ucx_tag_make(int src, transport_key_t key);

int ucx_transport_open(const ucx_params_t *p, transport_t *out, char *err, size_t errlen)
    PN_WUR;

#endif
