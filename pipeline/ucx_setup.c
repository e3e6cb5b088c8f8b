/* The UCX transport's setup and teardown: UCP context and worker with the caller's
 * TLS/NET_DEVICES, the event fds the progress thread sleeps on, and a destroy that
 * closes endpoints, releases rejected messages and cancels requests UCX still holds. */
#include "pipeline/ucx_int.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"

static int sync_init(ucx_t *u)
{
    pthread_mutexattr_t ma;
    pthread_condattr_t ca;
    pthread_mutexattr_init(&ma);
    /* Error callbacks may arrive while this thread already holds the lock in progress. */
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_mutex_init(&u->lock, &ma);
    if (!rc) {
        if ((rc = pthread_mutex_init(&u->gate, NULL)) == 0 && (rc = pthread_cond_init(&u->gate_cond, &ca)) != 0)
            pthread_mutex_destroy(&u->gate);
        if (!rc && (rc = pthread_mutex_init(&u->cmd_lock, NULL)) != 0) {
            pthread_cond_destroy(&u->gate_cond);
            pthread_mutex_destroy(&u->gate);
        }
        if (rc)
            pthread_mutex_destroy(&u->lock);
    }
    pthread_mutexattr_destroy(&ma);
    pthread_condattr_destroy(&ca);
    if (rc)
        return -rc;
    u->sync_ready = 1;
    return 0;
}

/* Waits (progressing by hand: the thread is gone) for a close request, at most 2 s. */
static void close_wait(ucx_t *u, ucs_status_ptr_t sp)
{
    if (sp == NULL || UCS_PTR_IS_ERR(sp))
        return;
    double end = pn_now() + 2.0;
    while (ucp_request_check_status(sp) == UCS_INPROGRESS && pn_now() < end) {
        if (ucp_worker_progress(u->worker))
            continue;
        if (ucp_worker_arm(u->worker) == UCS_OK) {
            struct epoll_event ev;
            epoll_wait(u->epfd, &ev, 1, 10);
        }
    }
    if (ucp_request_check_status(sp) == UCS_INPROGRESS)
        ucp_request_cancel(u->worker, sp);
    ucp_request_free(sp);
}

void ucx_destroy(void *impl)
{
    ucx_t *u = impl;
    if (!u)
        return;
    if (u->thread_started) {
        pthread_mutex_lock(&u->lock);
        u->stop = 1;
        u->quiet = 1;
        pthread_mutex_unlock(&u->lock);
        ucx_wake(u);
        pthread_join(u->thread, NULL);
    }
    int failed = u->failed;
    if (u->sync_ready) {
        pthread_mutex_lock(&u->lock);
        ucx_fail_locked(u, -ECANCELED, "transport closed");
        pthread_mutex_unlock(&u->lock);
    }
    if (u->peers && u->worker) {
        for (int i = 0; i < u->size; i++)
            if (u->peers[i].ep) {
                /* UCX defines a forced close only with peer error handling on both sides
                 * (ucx_connect says why ours have none): a finished run flushes; a failed
                 * one, whose peer may be gone and never answer a flush, forces. */
                ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                           .flags = failed || u->peers[i].lost ? UCP_EP_CLOSE_FLAG_FORCE : 0};
                close_wait(u, ucp_ep_close_nbx(u->peers[i].ep, &prm));
                u->peers[i].ep = NULL;
            }
    }
    /* Rejected messages are released by receiving them into zero bytes: UCX reports the
     * truncation without writing anything and returns its buffers. */
    if (u->worker)
        for (ucx_unexp_t *m = u->rejected; m; m = m->next) {
            static char none;
            ucp_request_param_t prm = {.op_attr_mask = 0};
            close_wait(u, ucp_tag_msg_recv_nbx(u->worker, &none, 0, m->msg, &prm));
        }
    /* Requests still in UCX (e.g. receives whose peer vanished) are cancelled; their
     * callbacks free the slots. */
    if (u->worker) {
        for (ucx_slot_t *s = u->slots, *next; s; s = next) {
            next = s->next;
            if (s->ucx_req)
                ucp_request_cancel(u->worker, s->ucx_req);
        }
        for (int i = 0; i < 100 && u->slots; i++)
            ucp_worker_progress(u->worker);
        while (u->slots)
            ucx_slot_free(u, u->slots); /* UCX never called back: leak its request, not ours */
    }
    for (ucx_unexp_t *m = u->unexp, *n; m; m = n) {
        n = m->next;
        free(m);
    }
    for (ucx_unexp_t *m = u->rejected, *n; m; m = n) {
        n = m->next;
        free(m);
    }
    if (u->addr)
        ucp_worker_release_address(u->worker, u->addr);
    if (u->epfd >= 0)
        close(u->epfd);
    if (u->wake_fd >= 0)
        close(u->wake_fd);
    if (u->worker)
        ucp_worker_destroy(u->worker);
    if (u->ctx)
        ucp_cleanup(u->ctx);
    if (u->sync_ready) {
        pthread_cond_destroy(&u->gate_cond);
        pthread_mutex_destroy(&u->gate);
        pthread_mutex_destroy(&u->cmd_lock);
        pthread_mutex_destroy(&u->lock);
    }
    free(u->peers);
    free(u);
}

/* 1 when this process is in a named network namespace (one of /run/netns: `ip netns`,
 * pipenem's emulated hosts), whose peers on this machine are in namespaces of their own;
 * 0 in the machine's own namespace or a container's. */
static int in_named_netns(void)
{
    struct stat self, ns;
    DIR *d = opendir("/run/netns");
    int found = 0;
    if (!d)
        return 0;
    if (stat("/proc/self/ns/net", &self) == 0)
        for (struct dirent *e; !found && (e = readdir(d));) {
            char path[300];
            snprintf(path, sizeof path, "/run/netns/%s", e->d_name);
            found = e->d_name[0] != '.' && stat(path, &ns) == 0 && ns.st_dev == self.st_dev &&
                    ns.st_ino == self.st_ino;
        }
    closedir(d);
    return found;
}

/* The transports UCX's own choice must leave out here, as a TLS value ("^a,b") into
 * buf: 0 when none.
 * - cma, in a stage that changed uid (--user): it is not dumpable, no process may read
 *   its memory, so process_vm_readv would fail mid-transfer between two stages.
 * - posix and sysv (shared memory) in a named network namespace: they wake a sleeping
 *   peer through an abstract Unix socket, which lives in the sender's network namespace,
 *   so between namespaces of one machine every wake-up is lost and each message waits
 *   for the progress thread's timeout (2.24 s iterations instead of 0.31 s measured). */
static int ucx_tls_excluded(char *buf, size_t len)
{
    int cma = prctl(PR_GET_DUMPABLE) == 0, shm = in_named_netns();
    if (!cma && !shm)
        return 0;
    snprintf(buf, len, "^%s%s%s", cma ? "cma" : "", cma && shm ? "," : "", shm ? "posix,sysv" : "");
    return 1;
}

/* The context, worker and event fds of one transport (see ucx_int.h). */
int ucx_setup(ucx_t *u, const ucx_params_t *p, char *err, size_t errlen)
{
    int rc;
    ucp_config_t *cfg = NULL;
    char excl[64];
    if ((rc = sync_init(u)) != 0) {
        snprintf(err, errlen, "pthread init: %s", strerror(-rc));
        return rc;
    }
    /* A blocking TCP connect to a peer whose link is down holds the worker for the
     * kernel's SYN retries (~2 min), past every timeout of ours: connect without blocking
     * and let a failed connection surface as a peer error. UCX reads this one from the
     * environment only (ucp_config_modify refuses transport keys); the user's value wins. */
    setenv("UCX_TCP_CONN_NB", "y", 0);
    ucs_status_t st = ucp_config_read(NULL, NULL, &cfg);
    u->peer_errors = p->tls && !strcmp(p->tls, "tcp");
    if (st == UCS_OK && p->tls && *p->tls)
        st = ucp_config_modify(cfg, "TLS", p->tls);
    else if (st == UCS_OK && !getenv("UCX_TLS") && ucx_tls_excluded(excl, sizeof excl))
        st = ucp_config_modify(cfg, "TLS", excl);
    if (st == UCS_OK && p->net_devices && *p->net_devices)
        st = ucp_config_modify(cfg, "NET_DEVICES", p->net_devices);
    if (st != UCS_OK) {
        snprintf(err, errlen, "UCX configuration (TLS=%s NET_DEVICES=%s): %s", p->tls ? p->tls : "default",
                 p->net_devices ? p->net_devices : "default", ucs_status_string(st));
        rc = -EINVAL;
        goto out;
    }
    ucp_params_t prm = {
        .field_mask = UCP_PARAM_FIELD_FEATURES,
        .features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP,
    };
    if ((st = ucp_init(&prm, cfg, &u->ctx)) != UCS_OK) {
        snprintf(err, errlen, "UCX init: %s", ucs_status_string(st));
        rc = -EIO;
        goto out;
    }
    ucp_worker_params_t wp = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        /* The progress thread and the caller take turns under our own lock. */
        .thread_mode = UCS_THREAD_MODE_SERIALIZED,
    };
    if ((st = ucp_worker_create(u->ctx, &wp, &u->worker)) != UCS_OK ||
        (st = ucp_worker_get_address(u->worker, &u->addr, &u->addr_len)) != UCS_OK ||
        (st = ucp_worker_get_efd(u->worker, &u->efd)) != UCS_OK) {
        snprintf(err, errlen, "UCX worker: %s", ucs_status_string(st));
        rc = -EIO;
        goto out;
    }
    struct epoll_event ev = {.events = EPOLLIN};
    if ((u->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0 ||
        (u->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
        (ev.data.fd = u->efd, epoll_ctl(u->epfd, EPOLL_CTL_ADD, u->efd, &ev)) < 0 ||
        (ev.data.fd = u->wake_fd, epoll_ctl(u->epfd, EPOLL_CTL_ADD, u->wake_fd, &ev)) < 0) {
        rc = -errno;
        snprintf(err, errlen, "event fds: %s", strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (cfg)
        ucp_config_release(cfg);
    return rc;
}
