/* The control channel of the multi-host commands and the neighbour shaping every rank
 * does (see distctl.h). */
#include "bench/distctl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/clock.h"
#include "pipeline/jobenv.h"

int distctl_send_all(int fd, const void *buf, size_t n)
{
    for (size_t done = 0; done < n;) {
        ssize_t w = send(fd, (const char *)buf + done, n - done, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -EPIPE;
        done += (size_t)w;
    }
    return 0;
}

int distctl_send_line(int fd, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= (int)sizeof buf - 1)
        return -EMSGSIZE;
    buf[n++] = '\n';
    return distctl_send_all(fd, buf, (size_t)n);
}

int distctl_recv_exact(int fd, void *buf, size_t n, double deadline, volatile sig_atomic_t *stop)
{
    for (size_t done = 0; done < n;) {
        if (stop && *stop)
            return -EINTR;
        double left = deadline > 0 ? deadline - pn_now() : 0.25;
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(1000 * (left < 0.25 ? left : 0.25)) + 1);
        if (pr < 0 && errno != EINTR)
            return -errno;
        if (pr <= 0)
            continue;
        ssize_t r = recv(fd, (char *)buf + done, n - done, 0);
        if (r == 0)
            return -ECONNRESET;
        if (r < 0 && errno != EINTR)
            return -errno;
        done += r > 0 ? (size_t)r : 0;
    }
    return 0;
}

/* A byte at a time: nothing past the line is consumed (a payload may follow). */
int distctl_recv_line(int fd, char *buf, size_t len, double deadline, volatile sig_atomic_t *stop)
{
    for (size_t i = 0; i + 1 < len; i++) {
        int rc = distctl_recv_exact(fd, buf + i, 1, deadline, stop);
        if (rc)
            return rc;
        if (buf[i] == '\n') {
            buf[i] = '\0';
            return 0;
        }
    }
    return -EMSGSIZE;
}

/* ---- rank 0 ---- */

static int listen_on(int port, char *err, size_t errlen)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = INADDR_ANY};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, PN_MAX_WORLD)) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return pn_err(err, errlen, -e, "rank 0 cannot listen on port %d: %s", port, strerror(e));
    }
    return fd;
}

/* One connection's hello, checked against what rank 0 knows. */
static int admit_one(distctl_t *c, int fd, const char *want_token, const char *what, char *err, size_t errlen)
{
    char line[512], tok[300];
    int r = -1;
    int rc = distctl_recv_line(fd, line, sizeof line, pn_now() + 10, NULL);
    if (rc || sscanf(line, "hello %d %299s", &r, tok) != 2)
        return pn_err(err, errlen, -EPROTO, "a connection to %s's port did not say hello (%s)", what,
                      rc ? strerror(-rc) : line);
    if (r < 1 || r >= c->P)
        return pn_err(err, errlen, -EPROTO, "rank %d came, but %s has ranks 1 to %d besides rank 0", r, what,
                      c->P - 1);
    if (c->fd[r] >= 0)
        return pn_err(err, errlen, -EPROTO, "rank %d came twice", r);
    if (strcmp(tok, want_token))
        return pn_err(err, errlen, -EACCES, "rank %d belongs to another job (token '%s', rank 0's '%s')", r, tok,
                      want_token);
    struct sockaddr_in peer, self;
    socklen_t pl = sizeof peer, sl = sizeof self;
    if (getpeername(fd, (struct sockaddr *)&peer, &pl) || getsockname(fd, (struct sockaddr *)&self, &sl))
        return pn_err(err, errlen, -errno, "rank %d: %s", r, strerror(errno));
    inet_ntop(AF_INET, &peer.sin_addr, c->addr[r], sizeof c->addr[r]);
    inet_ntop(AF_INET, &self.sin_addr, c->addr[0], sizeof c->addr[0]);
    c->fd[r] = fd;
    return 0;
}

int distctl_open(distctl_t *c, const char *url, int P, const char *what, char *err, size_t errlen)
{
    int rank = 0, size = P, rc;
    const char *src = "", *token = NULL;
    memset(c, 0, sizeof *c);
    c->P = P;
    c->lfd = -1;
    for (int q = 0; q < PN_MAX_WORLD; q++)
        c->fd[q] = -1;
    rc = jobenv_rank(&rank, &size, &src, err, errlen);
    if (rc && rc != -ENOENT)
        return rc;
    if (rc == 0 && size != P)
        return pn_err(err, errlen, -EINVAL, "the launcher started %d ranks (%s) but %s needs %d", size, src,
                      what, P);
    if (P < 2 || P > PN_MAX_WORLD)
        return pn_err(err, errlen, -EINVAL, "%s across hosts needs 2 to %d ranks, not %d", what, PN_MAX_WORLD, P);
    if ((rc = jobenv_url_parse(url, c->host0, sizeof c->host0, &c->port, err, errlen)))
        return rc;
    if (jobenv_token(&token))
        token = "-";
    if ((c->lfd = listen_on(c->port, err, errlen)) < 0)
        return c->lfd;
    double deadline = pn_now() + DISTCTL_ADMIT_S;
    for (int n = 1; n < P && !rc; n++) {
        struct pollfd p = {.fd = c->lfd, .events = POLLIN};
        int left = (int)(1000 * (deadline - pn_now()));
        if (left <= 0 || poll(&p, 1, left) <= 0) {
            char missing[256] = "";
            for (int q = 1; q < P; q++)
                if (c->fd[q] < 0)
                    snprintf(missing + strlen(missing), sizeof missing - strlen(missing), " %d", q);
            rc = pn_err(err, errlen, -ETIMEDOUT, "rank(s)%s did not reach rank 0 at %s within %.0f s", missing, url,
                        DISTCTL_ADMIT_S);
            break;
        }
        int fd = accept4(c->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            rc = pn_err(err, errlen, -errno, "accept: %s", strerror(errno));
        else if ((rc = admit_one(c, fd, token, what, err, errlen)))
            close(fd);
    }
    if (rc)
        distctl_close(c);
    return rc;
}

int distctl_welcome(distctl_t *c, const char *word, const void *payload, size_t size, char *err, size_t errlen)
{
    char line[2048];
    int n = snprintf(line, sizeof line, "welcome %zu %s", size, word);
    for (int q = 0; q < c->P && n < (int)sizeof line; q++)
        n += snprintf(line + n, sizeof line - (size_t)n, " %s", c->addr[q]);
    for (int q = 1; q < c->P; q++)
        if (distctl_send_line(c->fd[q], "%s", line) || distctl_send_all(c->fd[q], payload, size))
            return pn_err(err, errlen, -EPIPE, "rank %d: lost while sending it its work", q);
    return 0;
}

int distctl_broadcast(distctl_t *c, const char *line)
{
    int rc = 0;
    for (int q = 1; q < c->P; q++)
        if (c->fd[q] < 0 || distctl_send_line(c->fd[q], "%s", line))
            rc = -EPIPE;
    return rc;
}

int distctl_collect(distctl_t *c, const char *what, double deadline, volatile sig_atomic_t *stop,
                    char (*reply)[256], char *err, size_t errlen)
{
    int rc = 0;
    size_t used = 0;
    for (int q = 1; q < c->P; q++) {
        char line[1200];
        int r = c->fd[q] < 0 ? -ECONNRESET : distctl_recv_line(c->fd[q], line, sizeof line, deadline, stop);
        if (!r && (!strcmp(line, "ok") || !strncmp(line, "ok ", 3))) {
            if (reply)
                snprintf(reply[q], sizeof reply[q], "%.255s", line[2] ? line + 3 : "");
            continue;
        }
        if (!r && strncmp(line, "fail ", 5))
            r = -EPROTO;
        rc = rc ? rc : r ? r : -EIO;
        if (used < errlen)
            used += (size_t)snprintf(err + used, errlen - used, "%srank %d %s: %s", used ? "; " : "", q, what,
                                     r == -ECONNRESET ? "lost (its process ended)" : r ? strerror(-r) : line + 5);
        if (r == -ECONNRESET && c->fd[q] >= 0) {
            close(c->fd[q]);
            c->fd[q] = -1;
        }
    }
    return rc;
}

void distctl_close(distctl_t *c)
{
    for (int q = 1; q < c->P; q++)
        if (c->fd[q] >= 0) {
            char line[64];   /* its goodbye, so no rank is left mid-clean-up */
            if (distctl_send_line(c->fd[q], "end") == 0 &&
                distctl_recv_line(c->fd[q], line, sizeof line, pn_now() + 5, NULL) < 0)
                fprintf(stderr, "pipenem: rank %d did not say goodbye\n", q);
            close(c->fd[q]);
            c->fd[q] = -1;
        }
    if (c->lfd >= 0)
        close(c->lfd);
    c->lfd = -1;
}

/* ---- ranks > 0 ---- */

const char *distctl_url_in(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--dist-url") && i + 1 < argc)
            return argv[i + 1];
        if (!strncmp(argv[i], "--dist-url=", 11))
            return argv[i] + 11;
    }
    return NULL;
}

static int connect_hello(const distctl_t *c, int rank, char *err, size_t errlen)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    if (inet_pton(AF_INET, c->host0, &a.sin_addr) != 1)
        return pn_err(err, errlen, -EINVAL, "--dist-url host '%s': give rank 0's IPv4 address", c->host0);
    const char *tok = NULL;
    if (jobenv_token(&tok))
        tok = "-";
    for (double until = pn_now() + DISTCTL_ADMIT_S; pn_now() < until; pn_sleep(0.2)) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && distctl_send_line(fd, "hello %d %s", rank, tok) == 0)
            return fd;
        close(fd);
    }
    return pn_err(err, errlen, -ETIMEDOUT, "rank %d: rank 0 did not answer at %s:%d within %.0f s", rank, c->host0,
                  c->port, DISTCTL_ADMIT_S);
}

int distctl_join(distctl_t *c, const char *url, int rank, char *word, size_t wordlen, void *payload, size_t size,
                 char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    c->lfd = -1;
    int rc = jobenv_url_parse(url, c->host0, sizeof c->host0, &c->port, err, errlen);
    int fd = rc ? rc : connect_hello(c, rank, err, errlen);
    if (fd < 0)
        return fd;
    char line[2048];
    size_t got = 0;
    if ((rc = distctl_recv_line(fd, line, sizeof line, pn_now() + DISTCTL_ADMIT_S, NULL))) {
        close(fd);
        return pn_err(err, errlen, rc, "rank %d: rank 0 sent nothing: %s", rank, strerror(-rc));
    }
    char *save = NULL, *t = strtok_r(line, " ", &save);
    if (!t || strcmp(t, "welcome") || !(t = strtok_r(NULL, " ", &save)) || sscanf(t, "%zu", &got) != 1 ||
        !(t = strtok_r(NULL, " ", &save))) {
        close(fd);
        return pn_err(err, errlen, -EPROTO, "rank %d: rank 0 said '%s'", rank, line);
    }
    snprintf(word, wordlen, "%s", t);
    while ((t = strtok_r(NULL, " ", &save)) && c->P < PN_MAX_WORLD)
        snprintf(c->addr[c->P++], sizeof c->addr[0], "%s", t);
    rc = got != size ? pn_err(err, errlen, -EPROTO, "rank %d: rank 0 runs another pipenem build (%zu bytes of "
                              "work, this one expects %zu)", rank, got, size) : 0;
    if (!rc && (rc = distctl_recv_exact(fd, payload, size, pn_now() + DISTCTL_REPLY_S, NULL)))
        pn_err(err, errlen, rc, "rank %d: its work did not arrive", rank);
    if (!rc && rank >= c->P)
        rc = pn_err(err, errlen, -EPROTO, "rank %d: only %d ranks' addresses came", rank, c->P);
    if (rc) {
        close(fd);
        return rc;
    }
    return fd;
}

/* ---- shaping ---- */

int distctl_shape_pairs(const distctl_t *c, int rank, int n, netem_topo_pair_fn pair, void *arg, int flags,
                        netem_dev_t *dev, int *ndev, char *err, size_t errlen)
{
    netem_tc_peer_t peer[DISTCTL_MAX_DEVS][NETEM_TC_MAX_PEERS];
    int npeer[DISTCTL_MAX_DEVS] = {0};
    *ndev = 0;
    for (int q = 0; q < n && q < c->P; q++) {
        netem_profile_t p;
        if (q == rank)
            continue;
        pair(arg, rank, q, &p);
        if (netem_profile_is_default(&p))
            continue;
        char ifname[64];
        int rc = jobenv_route_ifname(c->addr[q], c->port, ifname, sizeof ifname, err, errlen);
        if (rc)
            return rc;
        int k = 0;
        while (k < *ndev && strcmp(dev[k].ifname, ifname))
            k++;
        if (k == DISTCTL_MAX_DEVS)
            return pn_err(err, errlen, -ENOTSUP, "rank %d reaches its peers through more than %d devices (%s is "
                          "one more)", rank, DISTCTL_MAX_DEVS, ifname);
        if (k == *ndev && (rc = netem_dev_init(&dev[(*ndev)++], NULL, ifname, err, errlen)))
            return rc;
        if (npeer[k] == NETEM_TC_MAX_PEERS)
            return pn_err(err, errlen, -ENOTSUP, "rank %d shapes more than %d peers on %s", rank,
                          NETEM_TC_MAX_PEERS, ifname);
        netem_tc_peer_t *e = &peer[k][npeer[k]++];
        memset(e, 0, sizeof *e);
        snprintf(e->addr, sizeof e->addr, "%s", c->addr[q]);
        e->profile = p;
    }
    for (int k = 0; k < *ndev; k++) {
        int rc = netem_tc_apply_by_dest(&dev[k], npeer[k], peer[k], flags, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

/* A netem_topo_pair_fn: the profile at arg between pipeline neighbours. */
static void neighbour_pair(void *arg, int src, int dst, netem_profile_t *out)
{
    static const netem_profile_t none;
    *out = dst == src - 1 || dst == src + 1 ? *(const netem_profile_t *)arg : none;
}

int distctl_shape(const distctl_t *c, int rank, const netem_profile_t *p, netem_dev_t *dev, int *ndev, char *err,
                  size_t errlen)
{
    return distctl_shape_pairs(c, rank, c->P, neighbour_pair, (void *)p, 0, dev, ndev, err, errlen);
}

int distctl_unshape(netem_dev_t *dev, int *ndev, char *err, size_t errlen)
{
    int rc = 0;
    for (int k = 0; k < *ndev; k++) {
        int r = netem_tc_clear(&dev[k], err, errlen);
        rc = rc ? rc : r;
    }
    *ndev = 0;
    return rc;
}
