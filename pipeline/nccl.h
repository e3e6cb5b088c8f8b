/* The NCCL transport: ncclSend/ncclRecv of GPU-resident tensors between neighbouring
 * stages, one two-rank communicator per directed channel, unique ids carried in the
 * transport's address blob through pipenem's own rendezvous, every message preceded by a
 * header checked on arrival. Built where CUDA and nccl.h exist; elsewhere opening it fails
 * with a message. The blob and header code below is plain C, tested on any machine. */
#ifndef PN_PIPELINE_NCCL_H
#define PN_PIPELINE_NCCL_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "pipeline/transport.h"

enum { NCCL_ID_BYTES = 128, NCCL_BLOB_MAX_IDS = 4 };

/* One communicator's unique id: the channel from rank `src` to rank `dst`. */
typedef struct {
    int src, dst;
    unsigned char id[NCCL_ID_BYTES];
} nccl_chan_id_t;

/* A rank's address blob: the ids of the channels it is the lower rank of. */
typedef struct {
    int rank, size;
    int n;
    nccl_chan_id_t ids[NCCL_BLOB_MAX_IDS];
} nccl_blob_t;

/* The peers whose channel ids rank creates: rank+1, and for rank 0 also size-1 (the
 * tied-embedding and interleaved wrap-around link). Returns how many (0..2). */
int nccl_blob_peers(int rank, int size, int peers[2]);
/* Bytes of the encoding of b; encodes into buf (cap bytes) and returns the length, or
 * -ENOSPC. */
size_t nccl_blob_size(const nccl_blob_t *b);
int nccl_blob_encode(const nccl_blob_t *b, void *buf, size_t cap) PN_WUR;
/* Decodes and checks a peer's blob (magic, version, counts, ranks in range, each id for a
 * channel that touches the blob's rank): -EPROTO naming what is wrong. */
int nccl_blob_decode(const void *buf, size_t len, nccl_blob_t *out, char *err, size_t errlen) PN_WUR;
/* The id of the channel src -> dst in b, or NULL. */
const nccl_chan_id_t *nccl_blob_find(const nccl_blob_t *b, int src, int dst);

/* What precedes every message on a channel (16 bytes on the wire, little-endian). */
typedef struct {
    uint32_t magic;
    uint32_t dir_iter;   /* direction (2 bits) << 30 | iteration (24 bits) */
    uint32_t mb;
    uint32_t bytes_lo;   /* the payload's size in bytes, low and high 32 bits */
} nccl_hdr_t;
_Static_assert(sizeof(nccl_hdr_t) == 16, "the header is 16 bytes on the wire");

void nccl_hdr_make(transport_key_t key, size_t bytes, nccl_hdr_t *out);
/* The key and size a header carries: -EPROTO (bad magic or fields) with a message. */
int nccl_hdr_parse(const nccl_hdr_t *h, transport_key_t *key, size_t *bytes, char *err, size_t errlen) PN_WUR;
/* Whether an arrived header h belongs to the receive req (same key) and has its size:
 * 1 it matches, 0 another key (keep it for a later receive), -EMSGSIZE same key but
 * another size, -EPROTO unreadable; the message says what arrived and what was expected. */
int nccl_hdr_check(const nccl_hdr_t *h, const transport_req_t *req, char *err, size_t errlen);

/* The CUDA device of a stage: --device if >= 0, else dev= of `cuda:ARG`, else the
 * launcher's local rank, else fallback (the stage index), modulo count: the cuda
 * backend's rule (models/precision.h), so the tensors and the channels share a GPU. */
int nccl_device_pick(const char *compute, int device, int count, int fallback, int *out, char *err,
                     size_t errlen) PN_WUR;

/* Opens the transport (see transport.h's transport_params_t): -ENOSYS in a build
 * without CUDA/NCCL, -ENODEV without a usable GPU, -ELIBACC when libnccl cannot be
 * loaded; each with a message. */
int nccl_transport_open(const transport_params_t *p, transport_t *out, char *err, size_t errlen) PN_WUR;

#endif
