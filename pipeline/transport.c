/* The transport handle's dispatch: fills a request and forwards to the variant's table,
 * so callers never touch an implementation directly. */
#include "pipeline/transport.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"

const char *transport_dir_name(transport_dir_t d)
{
    switch (d) {
    case TRANSPORT_ACT: return "activation";
    case TRANSPORT_GRAD: return "gradient";
    case TRANSPORT_CTRL: return "control";
    case TRANSPORT_TIED: return "tied-embedding gradient";
    }
    return "?";
}

static int req_fill(transport_t *t, int peer, transport_key_t key, void *buf, size_t bytes,
                    int is_recv, transport_req_t *req)
{
    if (!t || !t->ops || !req || peer < 0 || peer >= t->size || peer == t->rank ||
        key.iter < 0 || key.iter >= TRANSPORT_ITER_MAX || key.mb < 0 || key.mb >= TRANSPORT_MB_MAX ||
        (bytes && !buf))
        return -EINVAL;
    memset(req, 0, sizeof *req);
    req->peer = peer;
    req->key = key;
    req->buf = buf;
    req->bytes = bytes;
    req->is_recv = is_recv;
    req->state = TRANSPORT_REQ_PENDING;
    return 0;
}

int transport_send(transport_t *t, int peer, transport_key_t key, const void *buf, size_t bytes,
                   transport_req_t *req)
{
    int rc = req_fill(t, peer, key, (void *)buf, bytes, 0, req);
    return rc ? rc : t->ops->send(t->impl, req);
}

int transport_recv(transport_t *t, int peer, transport_key_t key, void *buf, size_t bytes,
                   transport_req_t *req)
{
    int rc = req_fill(t, peer, key, buf, bytes, 1, req);
    return rc ? rc : t->ops->recv(t->impl, req);
}

int transport_wait(transport_t *t, transport_req_t *req, double timeout)
{
    if (!req || req->state == TRANSPORT_REQ_IDLE)
        return -EINVAL;
    double deadline = timeout > 0 ? pn_now() + timeout : 0;
    return t->ops->wait(t->impl, req, deadline);
}

void transport_fail(transport_t *t, int status, const char *why)
{
    if (t && t->ops)
        t->ops->fail(t->impl, status, why);
}

void transport_quiesce(transport_t *t)
{
    if (t && t->ops)
        t->ops->quiesce(t->impl);
}

void transport_destroy(transport_t *t)
{
    if (!t || !t->ops)
        return;
    t->ops->destroy(t->impl);
    t->ops = NULL;
    t->impl = NULL;
}
