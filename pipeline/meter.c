/* The shim's meter for `pipenem netem selftest`: the pipeline's own transport (UCX over
 * TCP on each host's veth) wrapped in the shim, one forked process per host as `pipenem
 * run` places stages, measuring round trips and bulk goodput between two hosts. */
#include "pipeline/meter.h"
#include "common/err.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "netem/state.h"
#include "pipeline/shim.h"
#include "pipeline/transport.h"
#include "pipeline/ucx.h"
#include "pipeline/wire.h"

#define SHIM_BULK (4u << 20)   /* bytes per bulk message */
#define SHIM_DEPTH 8           /* bulk messages in flight */
#define SHIM_WINDOWS 6
#define SHIM_TIMEOUT 120.0     /* seconds: a meter that hangs is killed */

typedef struct {
    int mode;                  /* 0 round trips, 1 bulk */
    int n;                     /* round trips */
    double hold;               /* round trips: each leg's hold for the third figure */
    double warm, win;          /* bulk */
    netem_profile_t link;
} shim_job_t;

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Round trips from rank 0: an activation out, a gradient back, 64 bytes each. Each
 * carries when it was handed over (both ranks read the same monotonic clock), so each leg
 * is timed too: the gradient brings the activation's leg back. res: the least and the
 * median round trip, and the least max(out, hold) + max(back, hold). */
static int shim_rtt(transport_t *t, int rank, int n, double hold, double res[3], char *err, size_t errlen)
{
    double out[8] = {0}, in[8] = {0};   /* [0] handed over at, [1] the activation's leg */
    double *s = rank == 0 ? calloc((size_t)n, sizeof *s) : NULL, held = 1e30;
    int rc = rank == 0 && !s ? -ENOMEM : 0;
    for (int i = 0; i < n && rc == 0; i++) {
        transport_req_t a, b;
        transport_key_t ka = {TRANSPORT_ACT, i, 0}, kg = {TRANSPORT_GRAD, i, 0};
        if (rank == 0) {
            /* the gradient's receive is posted before the clock starts: a round trip is
             * from the activation's hand-over to the gradient's delivery, as on a link */
            if ((rc = transport_recv(t, 1, kg, in, sizeof in, &b)) == 0 &&
                (out[0] = pn_now(), rc = transport_send(t, 1, ka, out, sizeof out, &a)) == 0 &&
                (rc = transport_wait(t, &b, 30)) == 0) {
                double now = pn_now();
                s[i] = now - out[0];
                held = fmin(held, fmax(in[1], hold) + fmax(now - in[0], hold));
            }
            if (rc == 0)
                rc = transport_wait(t, &a, 30);
        } else {
            if ((rc = transport_recv(t, 0, ka, in, sizeof in, &a)) == 0 && (rc = transport_wait(t, &a, 30)) == 0) {
                out[1] = pn_now() - in[0];
                out[0] = pn_now();
                if ((rc = transport_send(t, 0, kg, out, sizeof out, &b)) == 0)
                    rc = transport_wait(t, &b, 30);
            }
        }
    }
    if (rc)
        pn_err(err, errlen, -EIO, "round trip over the shim: %s", strerror(-rc));
    else if (rank == 0) {
        qsort(s, (size_t)n, sizeof *s, cmp_dbl);
        res[0] = s[0];
        res[1] = s[n / 2];
        res[2] = held;
    }
    free(s);
    return rc;
}

/* Bulk from rank 0 to rank 1 until rank 0's deadline, then a gradient carrying the count;
 * rank 1 times each completion and reports the median and mean of its windows. */
static int shim_bulk(transport_t *t, int rank, double warm, double win, double res[3], char *err,
                     size_t errlen)
{
    /* Receives posted past the end stay with the transport until it is destroyed, so
     * they and their buffers live as long as this (forked, short-lived) process. */
    static transport_req_t req[SHIM_DEPTH], end;
    static long long count;
    static char *buf;
    if (!buf)
        buf = malloc((size_t)SHIM_BULK * SHIM_DEPTH);
    int rc = buf ? 0 : -ENOMEM;
    transport_key_t kend = {TRANSPORT_GRAD, 0, 0};
    if (rc == 0 && rank == 0) {
        memset(buf, 1, (size_t)SHIM_BULK * SHIM_DEPTH);
        double deadline = pn_now() + warm + SHIM_WINDOWS * win + 0.5;
        long long posted = 0;
        while (rc == 0 && (posted < SHIM_DEPTH || pn_now() < deadline)) {
            int slot = (int)(posted % SHIM_DEPTH);
            if (posted >= SHIM_DEPTH && (rc = transport_wait(t, &req[slot], SHIM_TIMEOUT)) != 0)
                break;
            transport_key_t k = {TRANSPORT_ACT, (int)(posted % TRANSPORT_ITER_MAX), 0};
            rc = transport_send(t, 1, k, buf + (size_t)slot * SHIM_BULK, SHIM_BULK, &req[slot]);
            posted++;
        }
        for (long long i = posted > SHIM_DEPTH ? posted - SHIM_DEPTH : 0; rc == 0 && i < posted; i++)
            rc = transport_wait(t, &req[i % SHIM_DEPTH], SHIM_TIMEOUT);
        count = posted;
        if (rc == 0 && (rc = transport_send(t, 1, kend, &count, sizeof count, &end)) == 0)
            rc = transport_wait(t, &end, SHIM_TIMEOUT);
    } else if (rc == 0) {
        double first = 0, tk[SHIM_WINDOWS + 1] = {0};
        long long done = 0, mark[SHIM_WINDOWS + 1] = {0};
        int k = 0, have_end = 0;
        if ((rc = transport_recv(t, 0, kend, &count, sizeof count, &end)) != 0)
            goto out;
        for (long long i = 0; i < SHIM_DEPTH && rc == 0; i++)
            rc = transport_recv(t, 0, (transport_key_t){TRANSPORT_ACT, (int)i, 0},
                                buf + (size_t)i * SHIM_BULK, SHIM_BULK, &req[i]);
        while (rc == 0 && !(have_end && done == count)) {
            int slot = (int)(done % SHIM_DEPTH);
            int w = transport_wait(t, &req[slot], 0.05);
            if (w == -ETIMEDOUT) {
                if (!have_end && transport_wait(t, &end, 1e-6) == 0)
                    have_end = 1;
                continue;
            }
            if ((rc = w) != 0)
                break;
            double now = pn_now();
            if (++done == 1)
                first = now;
            if (k <= SHIM_WINDOWS && now >= first + warm + k * win) {
                tk[k] = now;
                mark[k++] = done;
            }
            if (!have_end && transport_wait(t, &end, 1e-6) == 0)
                have_end = 1;
            long long next = done + SHIM_DEPTH - 1;   /* into the slot just freed */
            if (!have_end || next < count)
                rc = transport_recv(t, 0, (transport_key_t){TRANSPORT_ACT, (int)(next % TRANSPORT_ITER_MAX), 0},
                                    buf + (size_t)slot * SHIM_BULK, SHIM_BULK, &req[slot]);
        }
        if (rc == 0 && k < SHIM_WINDOWS + 1)
            rc = -EAGAIN;
        if (rc == 0) {
            double w[SHIM_WINDOWS];
            for (int i = 0; i < SHIM_WINDOWS; i++)
                w[i] = (double)(mark[i + 1] - mark[i]) * SHIM_BULK * 8.0 / (tk[i + 1] - tk[i]);
            qsort(w, SHIM_WINDOWS, sizeof *w, cmp_dbl);
            res[0] = 0.5 * (w[SHIM_WINDOWS / 2 - 1] + w[SHIM_WINDOWS / 2]);
            res[1] = (double)(mark[SHIM_WINDOWS] - mark[0]) * SHIM_BULK * 8.0 / (tk[SHIM_WINDOWS] - tk[0]);
        }
    }
out:
    if (rc == -EAGAIN)
        pn_err(err, errlen, -EIO, "bulk over the shim ended before %d windows of %.2f s", SHIM_WINDOWS, win);
    else if (rc)
        pn_err(err, errlen, -EIO, "bulk over the shim: %s", strerror(-rc));
    return rc;
}

/* One rank, in its host's namespace: transport up, blobs swapped through the pipes, the
 * job, results (two doubles, or an error text) written to res_fd. */
static void shim_rank(const netem_topo_t *topo, int rank, const shim_job_t *job, int to_peer, int from_peer,
                      int res_fd)
{
    char err[384] = "";
    transport_t raw = {0}, t = {0};
    double res[3] = {0}, zero = 0;
    netem_state_guard_child();
    prctl(PR_SET_PDEATHSIG, SIGKILL);   /* the self-test's death takes its ranks along */
    /* The shim sleeps until each delivery time: with the default 50 us timer slack every
     * wake-up would come late by up to that (the transport's threads inherit this). */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    int rc = netem_topo_become_host(topo, rank, err, sizeof err);
    if (rc)
        goto out;
    ucx_params_t up = {.rank = rank, .size = 2, .tls = "tcp", .net_devices = netem_topo_host_ifname(topo, rank)};
    if ((rc = ucx_transport_open(&up, &raw, err, sizeof err)) != 0)
        goto out;
    if ((rc = shim_transport_wrap(&raw, &job->link, &zero, &t, err, sizeof err)) != 0) {
        transport_destroy(&raw);
        goto out;
    }
    const void *blob;
    size_t len, plen;
    char peer[4096];
    if ((rc = t.ops->address(t.impl, &blob, &len)) != 0 || wire_write_all(to_peer, &len, sizeof len) ||
        wire_write_all(to_peer, blob, len) || wire_read_all(from_peer, &plen, sizeof plen, 0) || plen > sizeof peer ||
        wire_read_all(from_peer, peer, plen, 0)) {
        snprintf(err, sizeof err, "exchanging transport addresses failed");
        rc = -EIO;
        goto close;
    }
    if ((rc = t.ops->connect(t.impl, 1 - rank, peer, plen, err, sizeof err)) != 0)
        goto close;
    rc = job->mode == 0 ? shim_rtt(&t, rank, job->n, job->hold, res, err, sizeof err)
                        : shim_bulk(&t, rank, job->warm, job->win, res, err, sizeof err);
    /* Neither rank goes away before both are done: a peer leaving early would fail the
     * receives the shim still holds back for their delivery time. The barrier goes over
     * the pipes, not the transport, so no message is left in flight when the sockets close
     * (a close with unread data resets the connection under the peer's last receive). */
    if (rc == 0) {
        char byte = 0;
        if (wire_write_all(to_peer, &byte, 1) || wire_read_all(from_peer, &byte, 1, 0)) {
            snprintf(err, sizeof err, "closing barrier: the other rank is gone");
            rc = -EPIPE;
        }
    }
close:
    transport_quiesce(&t);
    transport_destroy(&t);
out:;
    /* nothing is left to tell if the parent is gone: it then reads "died without a word" */
    int wrc = 0;
    if (rc == 0 && ((job->mode == 0 && rank == 0) || (job->mode == 1 && rank == 1)))
        wrc = wire_write_all(res_fd, res, sizeof res);
    else if (rc)
        wrc = wire_write_all(res_fd, err, strlen(err) + 1);
    (void)wrc;
    _exit(rc ? 1 : 0);
}

static int shim_job(const netem_topo_t *topo, const shim_job_t *job, double res[3], char *err, size_t errlen)
{
    int p01[2], p10[2], rp[2][2];
    pid_t pid[2] = {-1, -1};
    if (pipe(p01) || pipe(p10) || pipe(rp[0]) || pipe(rp[1]))
        return pn_err(err, errlen, -EIO, "pipe: %s", strerror(errno));
    fflush(stdout);
    for (int r = 0; r < 2; r++) {
        pid[r] = fork();
        if (pid[r] == 0) {
            close(rp[0][0]), close(rp[1][0]), close(rp[1 - r][1]);
            shim_rank(topo, r, job, r == 0 ? p01[1] : p10[1], r == 0 ? p10[0] : p01[0], rp[r][1]);
        }
    }
    close(p01[0]), close(p01[1]), close(p10[0]), close(p10[1]), close(rp[0][1]), close(rp[1][1]);
    /* Each rank has its own result pipe, so an error is told with the rank it came from
     * and never mixed into the other rank's numbers. */
    char buf[2][512];
    size_t got[2] = {0, 0};
    int open_fds = 2, killed = 0;
    struct pollfd pf[2] = {{.fd = rp[0][0], .events = POLLIN}, {.fd = rp[1][0], .events = POLLIN}};
    /* Bounded: ranks that hang are killed after SHIM_TIMEOUT (the pipes then close). */
    double deadline = pn_now() + SHIM_TIMEOUT;
    while (open_fds > 0) {
        int left = (int)((deadline - pn_now()) * 1000);
        if (left <= 0 || poll(pf, 2, left) == 0) {
            for (int r = 0; r < 2; r++)
                if (pid[r] > 0)
                    kill(pid[r], SIGKILL);
            killed = 1;
            break;
        }
        for (int r = 0; r < 2; r++) {
            if (pf[r].fd < 0 || !(pf[r].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t n = read(pf[r].fd, buf[r] + got[r], sizeof buf[r] - 1 - got[r]);
            if (n > 0)
                got[r] += (size_t)n;
            if (n <= 0 || got[r] >= sizeof buf[r] - 1) {
                close(pf[r].fd);
                pf[r].fd = -1;
                open_fds--;
            }
        }
    }
    for (int r = 0; r < 2; r++)
        if (pf[r].fd >= 0)
            close(pf[r].fd);
    int st[2] = {0, 0};
    for (int r = 0; r < 2; r++)
        if (pid[r] > 0)
            while (waitpid(pid[r], &st[r], 0) < 0 && errno == EINTR)
                ;
    if (killed)
        return pn_err(err, errlen, -EIO, "shim meter: no answer within %.0f s, ranks killed", SHIM_TIMEOUT);
    for (int r = 0; r < 2; r++) {
        if (pid[r] > 0 && WIFEXITED(st[r]) && WEXITSTATUS(st[r]) == 0)
            continue;
        buf[r][got[r]] = '\0';
        return pn_err(err, errlen, -EIO, "shim meter: rank %d (%s): %s", r, netem_topo_host_ns(topo, r),
                            pid[r] < 0 ? "fork failed" : got[r] ? buf[r] : "died without a word");
    }
    int r = job->mode == 0 ? 0 : 1;   /* the rank that measures */
    if (got[r] != sizeof(double) * 3)
        return pn_err(err, errlen, -EIO, "shim meter: rank %d sent %zu bytes of results, not %zu", r, got[r],
                            sizeof(double) * 3);
    memcpy(res, buf[r], sizeof(double) * 3);
    return 0;
}

static int shim_meter_rtt(const netem_topo_t *t, const netem_profile_t *p, int n, double hold, double *min,
                          double *median, double *held, char *err, size_t errlen)
{
    shim_job_t job = {.mode = 0, .n = n, .hold = hold, .link = *p};
    double res[3];
    int rc = shim_job(t, &job, res, err, errlen);
    if (rc == 0) {
        *min = res[0];
        *median = res[1];
        *held = res[2];
    }
    return rc;
}

static int shim_meter_goodput(const netem_topo_t *t, const netem_profile_t *p, double warm, double win,
                              double *median, double *mean, char *err, size_t errlen)
{
    shim_job_t job = {.mode = 1, .warm = warm, .win = win, .link = *p};
    double res[3];
    int rc = shim_job(t, &job, res, err, errlen);
    if (rc == 0) {
        *median = res[0];
        *mean = res[1];
    }
    return rc;
}

const netem_selftest_meter_t meter_ucx_shim = {"ucx+shim", 0, shim_meter_rtt, shim_meter_goodput};
