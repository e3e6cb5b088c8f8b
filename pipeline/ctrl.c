/* The control plane: after the rendezvous each rank's sockets to rank 0 carry failure
 * notices (ABORT), the final reports (DONE) and rank 0's RELEASE, read by one watcher
 * thread per rank that sleeps in poll() until a message or the wake eventfd. */
#include "pipeline/ctrl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/err.h"
#include "pipeline/boot_int.h"
#include "pipeline/wire.h"

static void note_fail(boot_t *b, int rank, const char *why)
{
    int first = 0;
    pthread_mutex_lock(&b->lock);
    if (!b->failed && !b->released) {
        b->failed = 1;
        b->fail_rank = rank;
        snprintf(b->fail_why, sizeof b->fail_why, "%s", why);
        first = 1;
    }
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
    if (first && b->on_fail)
        b->on_fail(b->on_fail_arg, rank, why);
}

static void root_release_if_complete(boot_t *b)
{
    /* lock held */
    if (b->arrived == b->size && !b->released && !b->failed) {
        for (int r = 1; r < b->size; r++)
            if (b->fds[r] >= 0)
                (void)boot_send(b, b->fds[r], WIRE_RELEASE, NULL, 0);
        b->released = 1;
        pthread_cond_broadcast(&b->cond);
    }
}

/* Rank 0: rank r's flag for iteration iter; the last arrival answers every rank. A flag
 * for another iteration than the round's means a rank is out of step: a failure. */
static void root_agree_arrive(boot_t *b, int r, int iter, int flag)
{
    /* lock held */
    if (b->agree_count > 0 && iter != b->agree_iter) {
        char why[160];
        snprintf(why, sizeof why, "rank %d agreed on iteration %d while the others were at %d", r, iter, b->agree_iter);
        pthread_mutex_unlock(&b->lock);
        note_fail(b, r, why);
        pthread_mutex_lock(&b->lock);
        return;
    }
    b->agree_iter = iter;
    b->agree_any |= flag != 0;
    if (++b->agree_count < b->size)
        return;
    uint32_t msg[2] = {htonl((uint32_t)iter), htonl((uint32_t)b->agree_any)};
    for (int q = 1; q < b->size; q++)
        if (b->fds[q] >= 0)
            (void)boot_send(b, b->fds[q], WIRE_AGREED, msg, sizeof msg);
    b->agreed_n = iter + 1;
    b->agreed_any = b->agree_any;
    b->agree_count = 0;
    b->agree_any = 0;
    pthread_cond_broadcast(&b->cond);
}

/* A WIRE_AGREE / WIRE_AGREED payload: iteration and flag, network order. */
static int agree_parse(const char *pl, size_t len, int *iter, int *flag)
{
    uint32_t m[2];
    if (len != sizeof m)
        return -EPROTO;
    memcpy(m, pl, sizeof m);
    *iter = (int)ntohl(m[0]);
    *flag = (int)ntohl(m[1]);
    return *iter >= 0 ? 0 : -EPROTO;
}

/* An agreement message from rank r: a flag for rank 0 to gather, or the result for the others. */
static void agree_msg(boot_t *b, int r, int type, const char *pl, size_t len)
{
    int iter, flag;
    if (agree_parse(pl, len, &iter, &flag) || (type == WIRE_AGREE) != (b->rank == 0)) {
        note_fail(b, r, "a malformed agreement message on the control plane");
        return;
    }
    pthread_mutex_lock(&b->lock);
    if (type == WIRE_AGREE) {
        root_agree_arrive(b, r, iter, flag);
    } else {
        b->agreed_n = iter + 1;
        b->agreed_any = flag;
        pthread_cond_broadcast(&b->cond);
    }
    pthread_mutex_unlock(&b->lock);
}

static void root_forward_abort(boot_t *b, int origin, const char *why)
{
    for (int r = 1; r < b->size; r++)
        if (r != origin && b->fds[r] >= 0)
            (void)boot_send_text(b, b->fds[r], WIRE_ABORT, origin, why);
}

static void *watch_main(void *arg)
{
    boot_t *b = arg;
    int n = b->rank == 0 ? b->size : 1;
    struct pollfd *pf = calloc((size_t)n + 1, sizeof *pf);
    int *who = calloc((size_t)n + 1, sizeof *who);
    if (!pf || !who) {
        free(pf);
        free(who);
        note_fail(b, b->rank, "out of memory in the control-plane watcher");
        return NULL;
    }
    for (;;) {
        int k = 0;
        pf[k++] = (struct pollfd){.fd = b->wake_fd, .events = POLLIN};
        for (int i = 0; i < n; i++) {
            int r = b->rank == 0 ? i : 0;
            if ((b->rank == 0 && r == 0) || b->fds[r] < 0)
                continue;
            who[k] = r;
            pf[k++] = (struct pollfd){.fd = b->fds[r], .events = POLLIN};
        }
        if (poll(pf, (nfds_t)k, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pf[0].revents)
            break;
        for (int i = 1; i < k; i++) {
            if (!pf[i].revents)
                continue;
            int r = who[i], type = 0;
            char *pl = NULL;
            size_t len = 0;
            int rc = wire_msg_recv(b->fds[r], &type, &pl, &len, BOOT_PAYLOAD_MAX + WIRE_TEXT_MAX, pn_now() + 60);
            if (rc) {
                pthread_mutex_lock(&b->lock);
                int expected = b->released;
                pthread_mutex_unlock(&b->lock);
                pthread_mutex_lock(&b->wlock);
                close(b->fds[r]);
                b->fds[r] = -1;
                pthread_mutex_unlock(&b->wlock);
                if (!expected) {
                    char why[256];
                    if (b->rank == 0) {
                        snprintf(why, sizeof why, "rank %d disconnected (%s: killed or crashed?)", r,
                                 rc == -ECONNRESET ? "connection closed" : strerror(-rc));
                        root_forward_abort(b, r, why);
                    } else {
                        snprintf(why, sizeof why, "lost the connection to rank 0 (%s: killed or crashed?)",
                                 rc == -ECONNRESET ? "connection closed" : strerror(-rc));
                    }
                    note_fail(b, r, why);
                }
                continue;
            }
            if (type == WIRE_ABORT || type == WIRE_REFUSE) {
                int origin;
                char why[WIRE_TEXT_MAX];
                wire_text_parse(pl, len, &origin, why, sizeof why);
                if (origin < 0 || origin >= b->size)
                    origin = r;
                if (b->rank == 0)
                    root_forward_abort(b, origin, why);
                note_fail(b, origin, why);
            } else if (type == WIRE_DONE && b->rank == 0) {
                pthread_mutex_lock(&b->lock);
                if (!b->gathered[r]) {
                    b->gathered[r] = pl;
                    b->gatherlens[r] = len;
                    pl = NULL;
                    b->arrived++;
                }
                root_release_if_complete(b);
                pthread_mutex_unlock(&b->lock);
            } else if (type == WIRE_AGREE || type == WIRE_AGREED) {
                agree_msg(b, r, type, pl, len);
            } else if (type == WIRE_RELEASE && b->rank != 0) {
                pthread_mutex_lock(&b->lock);
                b->released = 1;
                pthread_cond_broadcast(&b->cond);
                pthread_mutex_unlock(&b->lock);
            }
            free(pl);
        }
    }
    free(pf);
    free(who);
    return NULL;
}

int ctrl_watch(boot_t *b, void (*on_fail)(void *arg, int rank, const char *why), void *arg)
{
    if (b->watching)
        return -EALREADY;
    b->on_fail = on_fail;
    b->on_fail_arg = arg;
    if (b->size == 1)
        return 0;
    if ((b->wake_fd = eventfd(0, EFD_CLOEXEC)) < 0)
        return -errno;
    int rc = pthread_create(&b->watcher, NULL, watch_main, b);
    if (rc)
        return -rc;
    b->watching = 1;
    return 0;
}

void ctrl_abort(boot_t *b, const char *why)
{
    if (!b || b->size == 1)
        return;
    if (b->rank == 0)
        root_forward_abort(b, 0, why);
    else if (b->fds[0] >= 0)
        (void)boot_send_text(b, b->fds[0], WIRE_ABORT, b->rank, why);
}

int ctrl_wait_failure(boot_t *b, double wait, char *why, size_t len)
{
    if (!b || b->size == 1)
        return -1;
    double end = pn_now() + wait;
    struct timespec ts = pn_timespec(end);
    pthread_mutex_lock(&b->lock);
    while (!b->failed && b->watching && pn_now() < end)
        if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT)
            break;
    int rank = b->failed ? b->fail_rank : -1;
    if (rank >= 0)
        snprintf(why, len, "%s", b->fail_why);
    pthread_mutex_unlock(&b->lock);
    return rank;
}

int ctrl_finish(boot_t *b, const void *payload, size_t len, double timeout, char *err, size_t errlen)
{
    if (len > BOOT_PAYLOAD_MAX) {
        snprintf(err, errlen, "final report of %zu bytes exceeds %d", len, BOOT_PAYLOAD_MAX);
        return -EMSGSIZE;
    }
    if (!b->watching && b->size > 1) {
        int rc = ctrl_watch(b, NULL, NULL);
        if (rc) {
            snprintf(err, errlen, "control-plane watcher: %s", strerror(-rc));
            return rc;
        }
    }
    int rc = 0;
    pthread_mutex_lock(&b->lock);
    if (b->rank == 0) {
        if (!b->gathered[0]) {
            b->gathered[0] = malloc(len ? len : 1);
            if (!b->gathered[0])
                rc = -ENOMEM;
            else {
                if (len)
                    memcpy(b->gathered[0], payload, len);
                b->gatherlens[0] = len;
                b->arrived++;
            }
        }
        if (!rc)
            root_release_if_complete(b);
    } else {
        pthread_mutex_unlock(&b->lock);
        rc = boot_send(b, b->fds[0], WIRE_DONE, payload, len);
        pthread_mutex_lock(&b->lock);
        if (rc && !b->failed)
            snprintf(err, errlen, "lost rank 0 while finishing");
    }
    double deadline = timeout > 0 ? pn_now() + timeout : 0;
    while (!rc && !b->released && !b->failed) {
        if (deadline > 0) {
            struct timespec ts = pn_timespec(deadline);
            if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT && !b->released && !b->failed) {
                snprintf(err, errlen, "the final barrier timed out after %.0f s", timeout);
                rc = -ETIMEDOUT;
            }
        } else {
            pthread_cond_wait(&b->cond, &b->lock);
        }
    }
    if (!rc && !b->released && b->failed) {
        snprintf(err, errlen, "%s", b->fail_why);
        rc = -ECONNRESET;
    }
    pthread_mutex_unlock(&b->lock);
    return rc;
}

int ctrl_agree(boot_t *b, int iter, int flag, int *any, double timeout, char *err, size_t errlen)
{
    if (b->size == 1) {
        *any = flag != 0;
        return 0;
    }
    if (!b->watching)
        return pn_err(err, errlen, -EINVAL, "internal: ctrl_agree before ctrl_watch");
    int rc = 0;
    if (b->rank == 0) {
        pthread_mutex_lock(&b->lock);
        root_agree_arrive(b, 0, iter, flag);
        pthread_mutex_unlock(&b->lock);
    } else {
        uint32_t msg[2] = {htonl((uint32_t)iter), htonl((uint32_t)(flag != 0))};
        if ((rc = boot_send(b, b->fds[0], WIRE_AGREE, msg, sizeof msg)) != 0)
            return pn_err(err, errlen, rc, "lost rank 0 while agreeing on iteration %d: %s", iter, strerror(-rc));
    }
    double deadline = timeout > 0 ? pn_now() + timeout : 0;
    struct timespec ts = pn_timespec(deadline);
    pthread_mutex_lock(&b->lock);
    while (b->agreed_n <= iter && !b->failed && !rc) {
        if (!deadline)
            pthread_cond_wait(&b->cond, &b->lock);
        else if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT && b->agreed_n <= iter && !b->failed)
            rc = pn_err(err, errlen, -ETIMEDOUT, "the stages' agreement on iteration %d timed out after %.0f s", iter,
                        timeout);
    }
    if (!rc && b->agreed_n <= iter)
        rc = pn_err(err, errlen, -ECONNRESET, "%s", b->fail_why);
    else if (!rc)
        *any = b->agreed_any;
    pthread_mutex_unlock(&b->lock);
    return rc;
}

const void *ctrl_gathered(const boot_t *b, int rank, size_t *len)
{
    if (b->rank != 0 || rank < 0 || rank >= b->size || !b->gathered[rank])
        return NULL;
    *len = b->gatherlens[rank];
    return b->gathered[rank];
}


void ctrl_stop(boot_t *b)
{
    if (b->watching) {
        uint64_t one = 1;
        if (write(b->wake_fd, &one, sizeof one) < 0) {
            /* cannot happen for a fresh eventfd; the join below would then hang */
        }
        pthread_join(b->watcher, NULL);
        b->watching = 0;
    }
    if (b->wake_fd >= 0)
        close(b->wake_fd);
    b->wake_fd = -1;
}
