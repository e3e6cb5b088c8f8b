/* The netem self-test across hosts (see netem_dist.h). Commands from rank 0 over the
 * control channel: shape K (profile K on the neighbour links, -1 none), serve L (listen
 * for link L's client, "ok" once listening, then "ok GOODPUT" when the stream ended),
 * measure L (round trips to rank L+1 and the stream, "ok RTTMIN RTTMEDIAN"), clear, end. */
#include "bench/netem_dist.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench/distctl.h"
#include "common/clock.h"
#include "netem/selftest.h"
#include "netem/state.h"
#include "pipeline/jobenv.h"

#define PINGS 40
#define PING_BYTES 64
#define WARM_S 0.5
#define WIN_S 0.5
#define WINDOWS 6

typedef struct {
    int n;
    netem_profile_t p[16];
} work_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int tcp_listen(const char *addr, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || inet_pton(AF_INET, addr, &a.sin_addr) != 1 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) || bind(fd, (struct sockaddr *)&a, sizeof a) ||
        listen(fd, 1)) {
        int e = errno ? errno : EINVAL;
        if (fd >= 0)
            close(fd);
        return -e;
    }
    return fd;
}

/* The server end of a link: echoes the pings, then the stream's goodput (bit/s, the
 * median of WINDOWS windows after WARM_S) until the client closes. */
static int serve(int lfd, double *gp, char *err, size_t errlen)
{
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    if (poll(&p, 1, 30000) <= 0)
        return pn_err(err, errlen, -ETIMEDOUT, "the link's client did not connect within 30 s");
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC), one = 1;
    if (fd < 0)
        return pn_err(err, errlen, -errno, "accept: %s", strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char ping[PING_BYTES];
    int rc = 0;
    while (!(rc = distctl_recv_exact(fd, ping, sizeof ping, pn_now() + 30, NULL)) && ping[0] != 'B')
        if ((rc = distctl_send_all(fd, ping, sizeof ping)))
            break;
    static char buf[1 << 16];
    double t0 = pn_now(), tk[WINDOWS + 1], w[WINDOWS];
    unsigned long long total = 0, mark[WINDOWS + 1];
    int k = 0;
    ssize_t r;
    while (!rc && (r = recv(fd, buf, sizeof buf, 0)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        total += (unsigned long long)r;
        double t = pn_now();
        if (k <= WINDOWS && t >= t0 + WARM_S + k * WIN_S) {
            tk[k] = t;
            mark[k++] = total;
        }
    }
    close(fd);
    if (rc || k < 3)
        return pn_err(err, errlen, rc ? rc : -EIO, "the link's stream ended early (%d windows)", k - 1);
    for (int i = 0; i < k - 1; i++)
        w[i] = (double)(mark[i + 1] - mark[i]) * 8.0 / (tk[i + 1] - tk[i]);
    *gp = median(w, k - 1);
    return 0;
}

/* The client end: PINGS round trips (minimum and median, s), then the stream. */
static int measure(const char *addr, int port, double *rtt_min, double *rtt_med, char *err, size_t errlen)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    inet_pton(AF_INET, addr, &a.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return pn_err(err, errlen, -e, "cannot reach %s:%d: %s", addr, port, strerror(e));
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char ping[PING_BYTES] = "p";
    double rtt[PINGS];
    int rc = 0;
    for (int i = 0; i < PINGS && !rc; i++) {
        double t = pn_now();
        rc = distctl_send_all(fd, ping, sizeof ping);
        if (!rc)
            rc = distctl_recv_exact(fd, ping, sizeof ping, pn_now() + 30, NULL);
        rtt[i] = pn_now() - t;
    }
    ping[0] = 'B';
    if (!rc)
        rc = distctl_send_all(fd, ping, sizeof ping);
    static char buf[1 << 16];
    for (double end = pn_now() + WARM_S + (WINDOWS + 0.5) * WIN_S; !rc && pn_now() < end;)
        rc = distctl_send_all(fd, buf, sizeof buf);
    close(fd);
    if (rc)
        return pn_err(err, errlen, rc, "the link to %s broke: %s", addr, strerror(-rc));
    *rtt_med = median(rtt, PINGS);
    *rtt_min = rtt[0];
    return 0;
}

/* ---- ranks > 0 ---- */

typedef struct {
    distctl_t c;
    int rank, fd, ndev;
    work_t work;
    netem_dev_t dev[DISTCTL_MAX_DEVS];
} worker_t;

/* One command carried out and answered; 1 at "end". */
static int worker_command(worker_t *w, const char *line)
{
    char what[32] = "", err[512] = "", reply[128] = "";
    int arg = 0, rc = 0;
    if (sscanf(line, "%31s %d", what, &arg) < 1) {
        rc = pn_err(err, sizeof err, -EPROTO, "unknown command '%s'", line);
    } else if (!strcmp(what, "shape")) {
        if (arg >= w->work.n)
            rc = pn_err(err, sizeof err, -EPROTO, "no profile %d", arg);
        else if (arg >= 0)
            rc = distctl_shape(&w->c, w->rank, &w->work.p[arg], w->dev, &w->ndev, err, sizeof err);
    } else if (!strcmp(what, "serve")) {
        int lfd = tcp_listen(w->c.addr[w->rank], w->c.port + 2);
        if (lfd < 0)
            rc = pn_err(err, sizeof err, lfd, "cannot listen on %s:%d: %s", w->c.addr[w->rank], w->c.port + 2,
                        strerror(-lfd));
        else if ((rc = distctl_send_line(w->fd, "ok")) == 0) {
            double gp = 0;
            rc = serve(lfd, &gp, err, sizeof err);
            snprintf(reply, sizeof reply, " %.6g", gp);
        }
        if (lfd >= 0)
            close(lfd);
    } else if (!strcmp(what, "measure")) {
        double mn = 0, md = 0;
        if (arg + 1 >= w->c.P)
            rc = pn_err(err, sizeof err, -EPROTO, "no link %d", arg);
        else
            rc = measure(w->c.addr[arg + 1], w->c.port + 2, &mn, &md, err, sizeof err);
        snprintf(reply, sizeof reply, " %.9g %.9g", mn, md);
    } else if (!strcmp(what, "clear") || !strcmp(what, "end")) {
        rc = distctl_unshape(w->dev, &w->ndev, err, sizeof err);
    } else {
        rc = pn_err(err, sizeof err, -EPROTO, "unknown command '%s'", what);
    }
    if (rc)
        fprintf(stderr, "pipenem netem: rank %d: %s\n", w->rank, err);
    if (distctl_send_line(w->fd, rc ? "fail %s" : "ok%s", rc ? err : reply))
        return -EPIPE;
    return strcmp(what, "end") ? 0 : 1;
}

static int worker(const char *url, int rank)
{
    char err[512], word[32];
    worker_t *w = calloc(1, sizeof *w);
    if (!w)
        return 1;
    w->rank = rank;
    int rc = w->fd = distctl_join(&w->c, url, rank, word, sizeof word, &w->work, sizeof w->work, err, sizeof err);
    char line[256];
    while (rc >= 0 && (rc = distctl_recv_line(w->fd, line, sizeof line, 0, NULL)) == 0)
        if ((rc = worker_command(w, line)) == 1)
            break;
    if (rc < 0 && rc != -ECONNRESET)
        fprintf(stderr, "pipenem netem: %s\n", w->fd < 0 ? err : strerror(-rc));
    if (distctl_unshape(w->dev, &w->ndev, err, sizeof err))
        fprintf(stderr, "pipenem netem: rank %d: %s\n", rank, err);
    if (w->fd >= 0)
        close(w->fd);
    free(w);
    return rc == 1 ? 0 : 1;
}

/* ---- rank 0 ---- */

/* One reply line from rank q: "ok REST" into rest, else the error in err. */
static int reply_of(distctl_t *c, int q, char *rest, size_t len, char *err, size_t errlen)
{
    char line[600];
    int rc = c->fd[q] < 0 ? -ECONNRESET : distctl_recv_line(c->fd[q], line, sizeof line, pn_now() + 60, NULL);
    if (rc)
        return pn_err(err, errlen, rc, "rank %d: %s", q, rc == -ECONNRESET ? "lost" : strerror(-rc));
    if (strncmp(line, "ok", 2))
        return pn_err(err, errlen, -EIO, "rank %d: %s", q, strncmp(line, "fail ", 5) ? line : line + 5);
    snprintf(rest, len, "%.200s", line[2] ? line + 3 : "");
    return 0;
}

/* Link L measured: RTT by rank L, goodput by rank L+1. */
static int link_measure(distctl_t *c, int L, double *mn, double *md, double *gp, char *err, size_t errlen)
{
    char rest[256];
    int rc = distctl_send_line(c->fd[L + 1], "serve %d", L);
    if (rc || (rc = reply_of(c, L + 1, rest, sizeof rest, err, errlen)))
        return rc ? rc : -EPIPE;
    if (L == 0) {
        rc = measure(c->addr[1], c->port + 2, mn, md, err, errlen);
    } else if (!(rc = distctl_send_line(c->fd[L], "measure %d", L)) &&
               !(rc = reply_of(c, L, rest, sizeof rest, err, errlen)) && sscanf(rest, "%lf %lf", mn, md) != 2) {
        rc = pn_err(err, errlen, -EPROTO, "rank %d sent '%s'", L, rest);
    }
    char e2[256];
    int r2 = reply_of(c, L + 1, rest, sizeof rest, e2, sizeof e2);
    if (!rc && !r2 && sscanf(rest, "%lf", gp) != 1)
        r2 = pn_err(e2, sizeof e2, -EPROTO, "rank %d sent '%s'", L + 1, rest);
    if (!rc && r2)
        snprintf(err, errlen, "%s", e2);
    return rc ? rc : r2;
}

/* Profile k (-1: none) on every rank's neighbour links. */
static int shape_all(distctl_t *c, const work_t *wk, int k, netem_dev_t *dev, int *ndev, char *err, size_t errlen)
{
    char line[32];
    snprintf(line, sizeof line, "shape %d", k);
    if (distctl_broadcast(c, line))
        return pn_err(err, errlen, -EPIPE, "a rank was lost");
    int own = k >= 0 ? distctl_shape(c, 0, &wk->p[k], dev, ndev, err, errlen) : 0;
    char e2[512] = "";
    int rc = distctl_collect(c, "shaping", pn_now() + DISTCTL_REPLY_S, NULL, NULL, e2, sizeof e2);
    if (rc && !own)
        snprintf(err, errlen, "%s", e2);
    return own ? own : rc;
}

static int clear_all(distctl_t *c, netem_dev_t *dev, int *ndev, char *err, size_t errlen)
{
    int rc = distctl_broadcast(c, "clear");
    int own = distctl_unshape(dev, ndev, err, errlen);
    char e2[512] = "";
    if (!rc && (rc = distctl_collect(c, "clearing", pn_now() + DISTCTL_REPLY_S, NULL, NULL, e2, sizeof e2)) && !own)
        snprintf(err, errlen, "%s", e2);
    return own ? own : rc;
}

static void print_row(const netem_profile_t *p, int L, double base, double mn, double md, double gp, int *failed)
{
    char text[128];
    netem_profile_format(p, text, sizeof text);
    double cfg = 2 * p->delay + base, exp = p->rate > 0 ? netem_profile_goodput(p->rate, 1500) : 0;
    double meas = p->jitter > 0 ? md : mn;
    int rj = p->delay > 0, gj = p->rate > 0;
    double re = rj ? (meas - cfg) / cfg : 0, ge = gj ? (gp - exp) / exp : 0;
    int ok = (!rj || re <= NETEM_SELFTEST_TOLERANCE) && (!gj || (ge < 0 ? -ge : ge) <= NETEM_SELFTEST_TOLERANCE);
    *failed += !ok;
    printf("  %-22s %d-%-3d %9.3f %9.3f %9.3f %9.3f %7.2f %9.3f %9.3f %7.2f  %s\n", text, L, L + 1, base * 1e3,
           cfg * 1e3, meas * 1e3, md * 1e3, re * 100, exp / 1e9, gp / 1e9, ge * 100,
           !rj && !gj ? "not-judged" : ok ? "ok" : "FAILED");
    fflush(stdout);
}

static int coordinator(const char *url, int P, const work_t *wk)
{
    distctl_t c;
    char err[1024] = "";
    netem_dev_t dev[DISTCTL_MAX_DEVS];
    int ndev = 0, failed = 0, rc = distctl_open(&c, url, P, "the self-test (one rank per host)", err, sizeof err);
    if (!rc && (rc = distctl_welcome(&c, "selftest", wk, sizeof *wk, err, sizeof err)))
        distctl_close(&c);
    if (rc) {
        fprintf(stderr, "pipenem netem: %s\n", err);
        return 1;
    }
    printf("# pipenem netem selftest across %d hosts: each link measured by its two ends (rank L: round trips,\n"
           "#   rank L+1: one TCP stream's goodput, median of %d windows of %.1f s); per-destination shaping on\n"
           "#   each host as the sweep does; tolerance %.0f%%\n", P, WINDOWS, WIN_S, NETEM_SELFTEST_TOLERANCE * 100);
    printf("# %-22s %-5s %9s %9s %9s %9s %7s %9s %9s %7s  %s\n", "profile", "link", "rtt_base", "rtt_cfg", "rtt_meas",
           "rtt_med", "rtt_err", "gp_exp", "gp_meas", "gp_err", "verdict");
    printf("# %-22s %-5s %9s %9s %9s %9s %7s %9s %9s %7s\n", "", "", "(ms)", "(ms)", "(ms)", "(ms)", "(%)", "(Gbit/s)",
           "(Gbit/s)", "(%)");
    double base[PN_MAX_WORLD], mn, md, gp;
    for (int k = -1; k < wk->n && !rc; k++) {
        rc = shape_all(&c, wk, k, dev, &ndev, err, sizeof err);
        for (int L = 0; L + 1 < P && !rc; L++) {
            if (!(rc = link_measure(&c, L, &mn, &md, &gp, err, sizeof err)) && k < 0)
                base[L] = mn;
            else if (!rc)
                print_row(&wk->p[k], L, base[L], mn, md, gp, &failed);
        }
        char e2[512] = "";
        int cr = clear_all(&c, dev, &ndev, e2, sizeof e2);
        if (cr && !rc)
            snprintf(err, sizeof err, "%s", e2);
        rc = rc ? rc : cr;
    }
    distctl_close(&c);
    if (rc)
        fprintf(stderr, "pipenem netem: %s\n", err);
    printf("# %s\n", rc || failed ? "FAILED" : "OK");
    return rc || failed ? 1 : 0;
}

int netem_dist_selftest(const char *url, const netem_profile_t *prof, int n)
{
    int rank, size;
    const char *src;
    char err[512];
    if (jobenv_rank(&rank, &size, &src, err, sizeof err) || size < 2) {
        fprintf(stderr, "pipenem netem: selftest --dist-url runs one rank per host under a launcher (srun, "
                "mpirun): no rank and size of 2 or more in the environment\n");
        return 2;
    }
    if (netem_state_guard_start() < 0)
        return 1;
    work_t wk = {.n = n};
    memcpy(wk.p, prof, (size_t)n * sizeof *prof);
    return rank == 0 ? coordinator(url, size, &wk) : worker(url, rank);
}
