/* The job object of a pipeline job: opened by the rendezvous (handshake.c), watched and
 * closed by the control plane (ctrl.c); this file holds its life cycle and accessors. */
#include "pipeline/boot.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/limits.h"
#include "pipeline/boot_int.h"
#include "pipeline/ctrl.h"
#include "pipeline/handshake.h"
#include "pipeline/wire.h"

int boot_send(boot_t *b, int fd, int type, const void *payload, size_t len)
{
    pthread_mutex_lock(&b->wlock);
    int rc = wire_msg_send(fd, type, payload, len);
    pthread_mutex_unlock(&b->wlock);
    return rc;
}

int boot_send_text(boot_t *b, int fd, int type, int origin, const char *text)
{
    char buf[WIRE_TEXT_MAX + 4];
    return boot_send(b, fd, type, buf, wire_text_build(buf, origin, text));
}

static int alloc_state(boot_t *b, int size)
{
    b->rank = -1;
    b->wake_fd = -1;
    int nfd = size;
    if (!(b->fds = malloc(sizeof *b->fds * (size_t)nfd)) || !(b->blobs = calloc((size_t)size, sizeof *b->blobs)) ||
        !(b->bloblens = calloc((size_t)size, sizeof *b->bloblens)) ||
        !(b->gathered = calloc((size_t)size, sizeof *b->gathered)) ||
        !(b->gatherlens = calloc((size_t)size, sizeof *b->gatherlens)))
        return -ENOMEM;
    for (int i = 0; i < nfd; i++)
        b->fds[i] = -1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&b->lock, NULL);
    pthread_mutex_init(&b->wlock, NULL);
    pthread_cond_init(&b->cond, &ca);
    pthread_condattr_destroy(&ca);
    b->sync_ready = 1;
    return 0;
}

int boot_open(const boot_params_t *p, const void *blob, size_t bloblen, boot_t **out, char *err, size_t errlen)
{
    if (p->size < 1 || p->size > PN_MAX_WORLD || p->rank < 0 || p->rank >= p->size) {
        snprintf(err, errlen, "rank %d is not within world size %d (at most %d)", p->rank, p->size, PN_MAX_WORLD);
        return -EINVAL;
    }
    if (!p->token || strlen(p->token) > BOOT_TOKEN_MAX) {
        snprintf(err, errlen, "the job token is missing or longer than %d bytes", BOOT_TOKEN_MAX);
        return -EINVAL;
    }
    if (bloblen > BOOT_BLOB_MAX) {
        snprintf(err, errlen, "transport address of %zu bytes exceeds %d", bloblen, BOOT_BLOB_MAX);
        return -EINVAL;
    }
    boot_t *b = calloc(1, sizeof *b);
    int rc = b ? alloc_state(b, p->size) : -ENOMEM;
    if (rc) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    b->rank = p->rank;
    b->size = p->size;
    if (!(b->blobs[p->rank] = malloc(bloblen ? bloblen : 1))) {
        rc = pn_err(err, errlen, -ENOMEM, "rank %d: out of memory", p->rank);
        goto fail;
    }
    memcpy(b->blobs[p->rank], blob, bloblen);
    b->bloblens[p->rank] = bloblen;
    if (p->size == 1) {
        b->start = pn_now();
    } else if (p->rank == 0) {
        if ((rc = handshake_root(b, p, err, errlen)) != 0)
            goto fail;
    } else {
        if ((rc = handshake_peer(b, p, blob, bloblen, err, errlen)) != 0)
            goto fail;
    }
    *out = b;
    return 0;
fail:
    boot_close(b);
    return rc;
}

int boot_rank(const boot_t *b) { return b->rank; }
int boot_size(const boot_t *b) { return b->size; }

const void *boot_blob(const boot_t *b, int rank, size_t *len)
{
    if (rank < 0 || rank >= b->size)
        return NULL;
    *len = b->bloblens[rank];
    return b->blobs[rank];
}

/* b->start is the job's start on this rank's own clock, so the offset cancels here. */
double boot_time(const boot_t *b, double local) { return local - b->start; }

double boot_clock_offset(const boot_t *b, double *rtt)
{
    if (rtt)
        *rtt = b->rtt;
    return b->offset;
}

void boot_close(boot_t *b)
{
    if (!b)
        return;
    ctrl_stop(b);
    if (b->fds)
        for (int i = 0; i < b->size; i++)
            if (b->fds[i] >= 0)
                close(b->fds[i]);
    for (int i = 0; b->blobs && i < b->size; i++)
        free(b->blobs[i]);
    for (int i = 0; b->gathered && i < b->size; i++)
        free(b->gathered[i]);
    if (b->sync_ready) {
        pthread_cond_destroy(&b->cond);
        pthread_mutex_destroy(&b->lock);
        pthread_mutex_destroy(&b->wlock);
    }
    free(b->fds);
    free(b->blobs);
    free(b->bloblens);
    free(b->gathered);
    free(b->gatherlens);
    free(b);
}
