/* The self-test's two measurements over real TCP between host namespaces. Sockets are
 * created inside each namespace and keep it, so one process drives both ends: the
 * server side runs in a thread (echo or sink), the client in the caller's thread. */
#include "netem/selftest.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "netem/emulator.h"

#define PORT 5299
#define PING_BYTES 64
#define CHUNK (256 * 1024)

/* A TCP socket created inside namespace ns; -errno on failure. */
static int socket_in(const char *ns)
{
    char path[128];
    snprintf(path, sizeof path, "/run/netns/%s", ns);
    int target = open(path, O_RDONLY | O_CLOEXEC);
    int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    int fd = -EINVAL;
    if (target >= 0 && self >= 0 && setns(target, CLONE_NEWNET) == 0) {
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            fd = -errno;
        if (setns(self, CLONE_NEWNET) < 0) {
            if (fd >= 0)
                close(fd);
            fd = -errno;
        }
    } else {
        fd = -errno;
    }
    if (target >= 0)
        close(target);
    if (self >= 0)
        close(self);
    return fd;
}

static struct sockaddr_in addr_of(const char *ip)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(PORT)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static int full_io(int fd, void *buf, size_t n, int wr)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = wr ? send(fd, (char *)buf + done, n - done, MSG_NOSIGNAL)
                       : recv(fd, (char *)buf + done, n - done, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

#define WINDOWS 6

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}


typedef struct {
    int lfd;
    int sink;         /* 0 echo, 1 count bytes */
    double warm;      /* sink: seconds after the first byte before measuring */
    double win;       /* sink: length of each measuring window */
    double median;    /* sink result, bit/s: the median window */
    double mean;      /* sink result, bit/s: over all windows */
    int rc;
} server_t;

static void *server_main(void *arg)
{
    server_t *s = arg;
    int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        s->rc = -errno;
        return NULL;
    }
    if (!s->sink) {
        char buf[PING_BYTES];
        while (full_io(fd, buf, sizeof buf, 0) == 0 && full_io(fd, buf, sizeof buf, 1) == 0)
            ;
    } else {
        /* Checkpoints at the window boundaries after the warm-up: mark[k] bytes at tk[k]. */
        char *buf = malloc(CHUNK);
        double t0 = 0, tk[WINDOWS + 1] = {0};
        unsigned long long total = 0, mark[WINDOWS + 1] = {0};
        int k = 0;
        ssize_t r;
        while (buf && k <= WINDOWS && (r = recv(fd, buf, CHUNK, 0)) != 0) {
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                break;
            }
            double t = pn_now();
            if (total == 0)
                t0 = t;
            total += (unsigned long long)r;
            if (t >= t0 + s->warm + k * s->win) {
                tk[k] = t;
                mark[k++] = total;
            }
        }
        while (buf && recv(fd, buf, CHUNK, 0) > 0)   /* drain until the sender closes */
            ;
        free(buf);
        double w[WINDOWS];
        for (int i = 0; i < k - 1; i++)
            w[i] = (double)(mark[i + 1] - mark[i]) * 8.0 / (tk[i + 1] - tk[i]);
        if (k > 1) {
            qsort(w, (size_t)(k - 1), sizeof *w, cmp_double);
            s->median = (k - 1) % 2 ? w[(k - 1) / 2] : 0.5 * (w[(k - 1) / 2 - 1] + w[(k - 1) / 2]);
        }
        if (k > 1)
            s->mean = (double)(mark[k - 1] - mark[0]) * 8.0 / (tk[k - 1] - tk[0]);
        if (k < WINDOWS + 1)
            s->rc = -EIO;
    }
    close(fd);
    return NULL;
}

/* One exchange: a listening socket in host 1, a connected client in host 0, the server
 * thread running; the caller drives the client and joins. */
typedef struct {
    int lfd, cfd;
    pthread_t th;
    server_t srv;
} pair_t;

static int pair_open(const netem_topo_t *t, int sink, double warm, double win, pair_t *p, char *err,
                     size_t errlen)
{
    memset(p, 0, sizeof *p);
    p->lfd = p->cfd = -1;
    struct sockaddr_in sa = addr_of(netem_topo_host_addr(t, 1));
    int one = 1;
    p->lfd = socket_in(netem_topo_host_ns(t, 1));
    if (p->lfd < 0)
        return pn_err(err, errlen, p->lfd, "socket in %s: %s", netem_topo_host_ns(t, 1), strerror(-p->lfd));
    setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(p->lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(p->lfd, 1) < 0) {
        int rc = -errno;
        close(p->lfd);
        return pn_err(err, errlen, rc, "listen on %s: %s", netem_topo_host_addr(t, 1), strerror(-rc));
    }
    p->srv = (server_t){.lfd = p->lfd, .sink = sink, .warm = warm, .win = win};
    if (pthread_create(&p->th, NULL, server_main, &p->srv) != 0) {
        close(p->lfd);
        return pn_err(err, errlen, -EAGAIN, "cannot start the server thread");
    }
    p->cfd = socket_in(netem_topo_host_ns(t, 0));
    if (p->cfd >= 0) {
        setsockopt(p->cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct timeval tv = {.tv_sec = 20};
        setsockopt(p->cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(p->cfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(p->cfd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return 0;
    }
    int rc = p->cfd < 0 ? p->cfd : -errno;
    pn_err(err, errlen, rc, "connect %s -> %s: %s", netem_topo_host_addr(t, 0), netem_topo_host_addr(t, 1),
         strerror(-rc));
    shutdown(p->lfd, SHUT_RDWR);   /* wakes accept */
    if (p->cfd >= 0)
        close(p->cfd);
    pthread_join(p->th, NULL);
    close(p->lfd);
    return rc;
}

static int pair_close(pair_t *p)
{
    close(p->cfd);
    pthread_join(p->th, NULL);
    close(p->lfd);
    return p->srv.rc;
}

/* Round trips of small messages: the minimum estimates the path's latency without the
 * host's scheduling noise (netem's delay is constant, so any excess over it is noise of
 * the measuring machine: large under user-mode Linux on a busy host); the median is
 * kept too, and used when the profile has jitter. */
static int measure_rtt(const netem_topo_t *t, const netem_profile_t *prof, int n, double hold, double *min,
                       double *median, double *held, char *err, size_t errlen)
{
    (void)prof;   /* the kernel shapes */
    (void)hold;   /* and its delay adds to the path: no leg is hidden behind it */
    *held = 0;
    pair_t p;
    int rc = pair_open(t, 0, 0, 0, &p, err, errlen);
    if (rc < 0)
        return rc;
    double *s = calloc((size_t)n, sizeof *s);
    char buf[PING_BYTES] = {0};
    int got = 0;
    for (int i = 0; s && i < n; i++) {
        double t0 = pn_now();
        if (full_io(p.cfd, buf, sizeof buf, 1) < 0 || full_io(p.cfd, buf, sizeof buf, 0) < 0)
            break;
        s[got++] = pn_now() - t0;
    }
    pair_close(&p);
    if (got < n) {
        free(s);
        return pn_err(err, errlen, -EIO, "round-trip exchange stopped after %d of %d messages", got, n);
    }
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    *min = s[0];
    *median = s[n / 2];
    free(s);
    return 0;
}

/* One TCP stream: after the warm-up (slow start), WINDOWS windows of `win` seconds.
 * The median window is the figure judged: on a busy host a few windows stall (the
 * measuring host's fault, not the link's) and late timers release bursts into others;
 * the median ignores both. The mean over all windows is reported beside it. */
static int measure_goodput(const netem_topo_t *t, const netem_profile_t *prof, double warm, double win,
                           double *median, double *mean, char *err, size_t errlen)
{
    (void)prof;
    pair_t p;
    int rc = pair_open(t, 1, warm, win, &p, err, errlen);
    if (rc < 0)
        return rc;
    char *buf = calloc(1, CHUNK);
    /* Send a little past the last window: the receiver sees it end a round trip later. */
    double end = pn_now() + warm + WINDOWS * win + 0.2 + 4 * warm / 30;
    while (buf && pn_now() < end)
        if (full_io(p.cfd, buf, CHUNK, 1) < 0) {
            rc = pn_err(err, errlen, -EIO, "bulk send failed: %s", strerror(errno));
            break;
        }
    free(buf);
    shutdown(p.cfd, SHUT_WR);
    int src = pair_close(&p);
    if (rc == 0 && src < 0)
        rc = pn_err(err, errlen, src, "the receiver did not see %d full windows", WINDOWS);
    if (rc == 0) {
        *median = p.srv.median;
        *mean = p.srv.mean;
    }
    return rc;
}

const netem_selftest_meter_t netem_selftest_tcp = {"tcp", 1, measure_rtt, measure_goodput};

static int apply_all(netem_topo_t *t, const netem_profile_t *p, const char *emulator, char *err,
                     size_t errlen)
{
    netem_profile_t links[NETEM_TOPO_MAX_HOSTS];
    for (int i = 0; i < t->hosts - 1; i++)
        links[i] = *p;
    return netem_topo_apply(t, links, emulator, err, errlen);
}

int netem_selftest_run(netem_topo_t *t, const netem_profile_t *p, const char *emulator,
                       int with_ceiling, const netem_selftest_meter_t *shim_meter,
                       netem_selftest_result_t *out, char *err, size_t errlen)
{
    netem_selftest_result_t r;
    memset(&r, 0, sizeof r);
    if (t->hosts < 2)
        return pn_err(err, errlen, -EINVAL, "the self-test needs a topology of at least 2 hosts");
    static const netem_profile_t unshaped;
    /* Which backend, first: the meter (and so the base path) depends on it. */
    int rc = apply_all(t, p, emulator, err, errlen);
    if (rc < 0)
        return rc;
    const netem_selftest_meter_t *m = &netem_selftest_tcp;
    const netem_emulator_t *chosen = t->emulator;
    int shim = chosen->in_transport;
    snprintf(r.emulator, sizeof r.emulator, "%s", t->emulator->name);
    snprintf(r.why, sizeof r.why, "%s", t->why);
    if (shim) {
        if (!shim_meter)
            return pn_err(err, errlen, -ENOSYS, "emulator shim (%s): its self-test needs the pipeline "
                        "transport, which this program does not link", t->why);
        m = shim_meter;
    }
    snprintf(r.meter, sizeof r.meter, "%s", m->name);
    /* The base path, unshaped: the kernel without qdiscs, or the shim with default links. */
    if ((rc = apply_all(t, &unshaped, shim ? chosen->name : "auto", err, errlen)) < 0)
        return rc;
    double base_median, ceil_mean, held;
    if ((rc = m->rtt(t, &unshaped, 200, p->delay, &r.rtt_base, &base_median, &held, err, errlen)) < 0)
        return rc;
    if (with_ceiling && (rc = m->goodput(t, &unshaped, 0.3, 0.25, &r.ceiling, &ceil_mean, err, errlen)) < 0)
        return rc;
    if ((rc = apply_all(t, p, emulator, err, errlen)) < 0)
        return rc;
    /* The kernel's delay adds to the path; the shim's hides it, so its round trip is twice
     * the delay, and where the path's own legs exceed the delay the shim can only deliver
     * when they arrive: the host's share, which the unshaped legs measure (rtt_host). */
    double rtt_cfg = m->delay_adds ? 2.0 * p->delay + r.rtt_base : 2.0 * p->delay;
    r.rtt_host = m->delay_adds || held <= 0 ? fmax(rtt_cfg, r.rtt_base) : held;
    int n = (int)fmin(500, fmax(20, 0.6 / fmax(rtt_cfg, r.rtt_base)));
    double rtt_min, unused;
    if ((rc = m->rtt(t, p, n, 0, &rtt_min, &r.rtt_median, &unused, err, errlen)) < 0)
        return rc;
    r.rtt_measured = p->jitter > 0 ? r.rtt_median : rtt_min;
    r.rtt_configured = rtt_cfg;
    r.rtt_err = rtt_cfg > 0 ? fabs(r.rtt_measured - rtt_cfg) / rtt_cfg : 0;
    r.rtt_judged = p->delay > 0;
    double warm = fmax(0.3, 30.0 * rtt_cfg);
    if ((rc = m->goodput(t, p, warm, 0.5, &r.goodput_measured, &r.goodput_mean, err, errlen)) < 0)
        return rc;
    r.goodput_expected = p->rate > 0 ? netem_profile_goodput(p->rate, 1500) : 0;
    r.goodput_judged = p->rate > 0 && p->loss == 0;
    if (r.goodput_expected > 0)
        r.goodput_err = fabs(r.goodput_measured - r.goodput_expected) / r.goodput_expected;
    r.ok = (!r.rtt_judged || r.rtt_err <= NETEM_SELFTEST_TOLERANCE) &&
           (!r.goodput_judged || r.goodput_err <= NETEM_SELFTEST_TOLERANCE);
    /* A goodput short of the mark: could this host carry it at all? Measure unshaped. */
    if (r.goodput_judged && r.goodput_measured < r.goodput_expected * (1 - NETEM_SELFTEST_TOLERANCE) &&
        r.ceiling == 0) {
        double mean;
        if ((rc = apply_all(t, &unshaped, shim ? chosen->name : "auto", err, errlen)) < 0 ||
            (rc = m->goodput(t, &unshaped, 0.3, 0.25, &r.ceiling, &mean, err, errlen)) < 0 ||
            (rc = apply_all(t, p, emulator, err, errlen)) < 0)
            return rc;
    }
    r.goodput_host_limited = r.goodput_judged && r.goodput_err > NETEM_SELFTEST_TOLERANCE && r.ceiling > 0 &&
                             r.ceiling < r.goodput_expected * (1 + NETEM_SELFTEST_TOLERANCE);
    r.rtt_host_limited = r.rtt_judged && r.rtt_err > NETEM_SELFTEST_TOLERANCE &&
                         r.rtt_host > rtt_cfg * (1 + NETEM_SELFTEST_TOLERANCE);
    r.host_limited = !r.ok && (!r.rtt_judged || r.rtt_err <= NETEM_SELFTEST_TOLERANCE || r.rtt_host_limited) &&
                     (!r.goodput_judged || r.goodput_err <= NETEM_SELFTEST_TOLERANCE || r.goodput_host_limited);
    *out = r;
    return 0;
}
