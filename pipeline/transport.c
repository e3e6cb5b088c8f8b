/* The transport handle's dispatch: fills a request and forwards to the variant's table,
 * so callers never touch an implementation directly; and the table of transports
 * (`--transport`) with the checks of their combination with compute and emulator. */
#include "pipeline/transport.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "netem/emulator.h"
#include "pipeline/nccl.h"
#include "pipeline/ucx.h"

static int ucx_open(const transport_params_t *p, transport_t *out, char *err, size_t errlen)
{
    ucx_params_t up = {.rank = p->rank, .size = p->size, .tls = p->ucx_tls, .net_devices = p->ucx_devices};
    return ucx_transport_open(&up, out, err, errlen);
}

static const transport_kind_t kinds[] = {
    {"ucx", "UCX tag messages of host-memory tensors: any cluster, every emulator", 0, 1, ucx_open},
    {"nccl", "ncclSend/ncclRecv of GPU-resident tensors (--compute cuda); tc netem shapes its sockets", 1, 0,
     nccl_transport_open},
};
#define N_KINDS (sizeof kinds / sizeof *kinds)

const transport_kind_t *transport_kind_find(const char *name)
{
    for (size_t i = 0; name && i < N_KINDS; i++)
        if (!strcmp(kinds[i].name, name))
            return &kinds[i];
    return NULL;
}

const char *transport_kind_names(void)
{
    static char buf[128];
    if (!buf[0])
        for (size_t i = 0, n = 0; i < N_KINDS && n < sizeof buf; i++)
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", i ? ", " : "", kinds[i].name);
    return buf;
}

int transport_kind_check(const char *name, const char *compute, const char *emulator, char *err, size_t errlen)
{
    const transport_kind_t *k = transport_kind_find(name);
    if (!k)
        return pn_err(err, errlen, -EINVAL, "--transport: expected %s, got '%s'", transport_kind_names(),
                      name ? name : "");
    int cuda = compute && !strncmp(compute, "cuda", 4) && (compute[4] == '\0' || compute[4] == ':');
    if (k->needs_cuda && !cuda)
        return pn_err(err, errlen, -EINVAL,
                      "--transport %s moves GPU-resident tensors and needs --compute cuda (got --compute %s)",
                      k->name, compute && *compute ? compute : "cpu");
    const netem_emulator_t *em = emulator ? netem_emulator_find(emulator) : NULL;
    if (em && em->in_transport && !k->shim_ok)
        return pn_err(err, errlen, -EINVAL,
                      "--emulator %s with --transport %s: the in-transport shim cannot act on %s's traffic "
                      "(it moves GPU to GPU without passing through pipenem); use --emulator netem or auto",
                      em->name, k->name, k->name);
    return 0;
}

const char *transport_emulator_asked(const char *name, const char *asked, int have_ns)
{
    const transport_kind_t *k = transport_kind_find(name);
    int shim_ok = !k || k->shim_ok;
    if (!asked || strcmp(asked, "auto") || (shim_ok && have_ns))
        return asked;
    const netem_emulator_t *kind = netem_emulator_of_kind(shim_ok);
    return kind ? kind->name : asked;
}

int transport_open(const char *name, const transport_params_t *p, transport_t *out, char *err, size_t errlen)
{
    const transport_kind_t *k = transport_kind_find(name);
    if (!k)
        return pn_err(err, errlen, -EINVAL, "unknown transport '%s' (known: %s)", name ? name : "",
                      transport_kind_names());
    return k->open(p, out, err, errlen);
}

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
