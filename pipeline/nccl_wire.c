/* The NCCL transport's host-side encodings, built and tested everywhere: the address blob
 * that carries the communicators' unique ids through the rendezvous, the header in front
 * of every message, and the choice of the GPU. */
#include "pipeline/nccl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/precision.h"

enum { BLOB_MAGIC = 0x43434e50u /* "PNCC" */, BLOB_VERSION = 1, HDR_MAGIC = 0x4d434e50u /* "PNCM" */ };
enum { BLOB_HEAD = 16, BLOB_ENTRY = 8 + NCCL_ID_BYTES };

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int nccl_blob_peers(int rank, int size, int peers[2])
{
    int n = 0;
    if (rank + 1 < size)
        peers[n++] = rank + 1;
    if (rank == 0 && size > 2)
        peers[n++] = size - 1;
    return n;
}

size_t nccl_blob_size(const nccl_blob_t *b)
{
    return BLOB_HEAD + (size_t)b->n * BLOB_ENTRY;
}

int nccl_blob_encode(const nccl_blob_t *b, void *buf, size_t cap)
{
    if (b->n < 0 || b->n > NCCL_BLOB_MAX_IDS || cap < nccl_blob_size(b))
        return -ENOSPC;
    unsigned char *p = buf;
    put32(p, BLOB_MAGIC);
    put32(p + 4, (BLOB_VERSION << 16) | (uint32_t)b->n);
    put32(p + 8, (uint32_t)b->rank);
    put32(p + 12, (uint32_t)b->size);
    p += BLOB_HEAD;
    for (int i = 0; i < b->n; i++, p += BLOB_ENTRY) {
        put32(p, (uint32_t)b->ids[i].src);
        put32(p + 4, (uint32_t)b->ids[i].dst);
        memcpy(p + 8, b->ids[i].id, NCCL_ID_BYTES);
    }
    return (int)nccl_blob_size(b);
}

int nccl_blob_decode(const void *buf, size_t len, nccl_blob_t *out, char *err, size_t errlen)
{
    const unsigned char *p = buf;
    if (!buf || len < BLOB_HEAD || get32(p) != BLOB_MAGIC)
        return pn_err(err, errlen, -EPROTO, "NCCL address blob: %zu bytes without pipenem's NCCL magic "
                      "(is the peer running another transport?)", len);
    uint32_t vn = get32(p + 4);
    nccl_blob_t b = {.rank = (int)get32(p + 8), .size = (int)get32(p + 12), .n = (int)(vn & 0xffff)};
    if (vn >> 16 != BLOB_VERSION)
        return pn_err(err, errlen, -EPROTO, "NCCL address blob: version %u, this build speaks %d", vn >> 16,
                      BLOB_VERSION);
    if (b.size < 1 || b.size > TRANSPORT_RANK_MAX || b.rank < 0 || b.rank >= b.size)
        return pn_err(err, errlen, -EPROTO, "NCCL address blob: rank %d of %d is out of range", b.rank, b.size);
    if (b.n > NCCL_BLOB_MAX_IDS || len != nccl_blob_size(&b))
        return pn_err(err, errlen, -EPROTO, "NCCL address blob: %d ids in %zu bytes (expected %zu, at most %d ids)",
                      b.n, len, nccl_blob_size(&b), NCCL_BLOB_MAX_IDS);
    p += BLOB_HEAD;
    for (int i = 0; i < b.n; i++, p += BLOB_ENTRY) {
        nccl_chan_id_t *c = &b.ids[i];
        c->src = (int)get32(p);
        c->dst = (int)get32(p + 4);
        memcpy(c->id, p + 8, NCCL_ID_BYTES);
        if (c->src < 0 || c->src >= b.size || c->dst < 0 || c->dst >= b.size || c->src == c->dst ||
            (c->src != b.rank && c->dst != b.rank))
            return pn_err(err, errlen, -EPROTO, "NCCL address blob of rank %d: id %d is for channel %d -> %d",
                          b.rank, i, c->src, c->dst);
    }
    *out = b;
    return 0;
}

const nccl_chan_id_t *nccl_blob_find(const nccl_blob_t *b, int src, int dst)
{
    for (int i = 0; i < b->n; i++)
        if (b->ids[i].src == src && b->ids[i].dst == dst)
            return &b->ids[i];
    return NULL;
}

void nccl_hdr_make(transport_key_t key, size_t bytes, nccl_hdr_t *out)
{
    /* Written byte by byte: the peer reads it the same way whatever its byte order. */
    unsigned char *p = (unsigned char *)out;
    put32(p, HDR_MAGIC);
    put32(p + 4, (uint32_t)(key.dir & 3) << 30 | ((uint32_t)key.iter & 0xffffff));
    put32(p + 8, (uint32_t)key.mb);
    put32(p + 12, (uint32_t)bytes);
    /* sizes over 4 GiB: the high half rides in the spare bits of the iteration word */
    p[7] = (unsigned char)((p[7] & 0xc0) | ((uint64_t)bytes >> 32 & 0x3f));
}

int nccl_hdr_parse(const nccl_hdr_t *h, transport_key_t *key, size_t *bytes, char *err, size_t errlen)
{
    const unsigned char *p = (const unsigned char *)h;
    if (get32(p) != HDR_MAGIC)
        return pn_err(err, errlen, -EPROTO, "message header without pipenem's magic (0x%08x): the channel is out "
                      "of step", get32(p));
    uint32_t di = get32(p + 4), mb = get32(p + 8);
    if (mb >= TRANSPORT_MB_MAX)
        return pn_err(err, errlen, -EPROTO, "message header: micro-batch %u out of range", mb);
    key->dir = (transport_dir_t)(di >> 30);
    key->iter = (int)(di & 0xffffff);
    key->mb = (int)mb;
    *bytes = (size_t)get32(p + 12) | (size_t)((uint64_t)(p[7] & 0x3f) << 32);
    return 0;
}

int nccl_hdr_check(const nccl_hdr_t *h, const transport_req_t *req, char *err, size_t errlen)
{
    transport_key_t k;
    size_t bytes;
    int rc = nccl_hdr_parse(h, &k, &bytes, err, errlen);
    if (rc)
        return rc;
    if (k.dir != req->key.dir || k.iter != req->key.iter || k.mb != req->key.mb)
        return 0;
    if (bytes != req->bytes)
        return pn_err(err, errlen, -EMSGSIZE, "rank %d sent a %s message (iteration %d, micro-batch %d) of %zu "
                      "bytes, expected %zu", req->peer, transport_dir_name(k.dir), k.iter, k.mb, bytes, req->bytes);
    return 1;
}

static const char *env_get(const char *name)
{
    return getenv(name);
}

int nccl_device_pick(const char *compute, int device, int count, int fallback, int *out, char *err, size_t errlen)
{
    model_cuda_arg_t a = {.device = -1};
    const char *arg = compute && !strncmp(compute, "cuda:", 5) ? compute + 5 : "";
    int rc = model_cuda_arg_parse(arg, &a, err, errlen);
    if (rc)
        return rc;
    return model_gpu_pick(device >= 0 ? device : a.device, count, fallback, env_get, out, err, errlen);
}
