/* The SPMD sweep (see sweep_dist.h): rank 0's side (admitting the ranks, the cell hosts
 * that drive them: apply, run, clear) and the other ranks' loop. The control protocol is
 * one text line per command and per reply over one TCP connection per rank:
 *   rank -> 0   hello RANK TOKEN
 *   0 -> rank   welcome SPECSIZE STAGETOKEN ADDR0 ... ADDR(P-1), then the grid (binary)
 *   0 -> rank   apply CELL EMULATOR | run CELL REP COMPUTE | clear | end
 *   rank -> 0   ok | fail MESSAGE                                                       */
#include "bench/sweep_dist.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/cell.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/limits.h"
#include "netem/emulator.h"
#include "netem/state.h"
#include "netem/tc.h"
#include "pipeline/jobenv.h"
#include "pipeline/stage.h"

#define ADMIT_S 120.0     /* every rank must have come by then */
#define REPLY_S 60.0      /* apply and clear */

struct sweep_dist {
    int P, port, lfd;
    int fd[PN_MAX_WORLD];            /* [0] unused */
    char addr[PN_MAX_WORLD][64];     /* each rank's address as the others reach it */
    char host0[256];
    char token[40];                  /* the stages' job token, fresh per sweep */
    const netem_emulator_t *emu;     /* the cell's backend */
    netem_dev_t dev[2];              /* rank 0's shaped devices */
    int ndev;
    netem_profile_t links[PN_MAX_WORLD];
};

/* ---- lines over a socket ---- */

static int send_all(int fd, const void *buf, size_t n)
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

static int send_line(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int send_line(int fd, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= (int)sizeof buf - 1)
        return -EMSGSIZE;
    buf[n++] = '\n';
    return send_all(fd, buf, (size_t)n);
}

/* Reads exactly n bytes, waiting at most until deadline (0: no limit) and giving up
 * when *stop is raised. 0, -ETIMEDOUT, -EINTR, or -ECONNRESET at EOF. */
static int recv_exact(int fd, void *buf, size_t n, double deadline, volatile sig_atomic_t *stop)
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

/* One line (without its newline), read a byte at a time: nothing past it is consumed. */
static int recv_line(int fd, char *buf, size_t len, double deadline, volatile sig_atomic_t *stop)
{
    for (size_t i = 0; i + 1 < len; i++) {
        int rc = recv_exact(fd, buf + i, 1, deadline, stop);
        if (rc)
            return rc;
        if (buf[i] == '\n') {
            buf[i] = '\0';
            return 0;
        }
    }
    return -EMSGSIZE;
}

/* ---- shaping one rank's traffic to its neighbours ---- */

/* Puts p on this rank's traffic to ranks rank-1 and rank+1 (each through the device
 * that reaches it; one tree per device), recorded for the exit paths. */
static int shape_neighbours(int rank, int P, char addr[][64], int port, const netem_profile_t *p,
                            netem_dev_t *dev, int *ndev, char *err, size_t errlen)
{
    netem_tc_peer_t peer[2][2];
    int npeer[2] = {0, 0};
    *ndev = 0;
    for (int q = rank - 1; q <= rank + 1; q += 2) {
        if (q < 0 || q >= P)
            continue;
        char ifname[64];
        int rc = jobenv_route_ifname(addr[q], port, ifname, sizeof ifname, err, errlen);
        if (rc)
            return rc;
        int k = 0;
        while (k < *ndev && strcmp(dev[k].ifname, ifname))
            k++;
        if (k == *ndev && (rc = netem_dev_init(&dev[(*ndev)++], NULL, ifname, err, errlen)))
            return rc;
        netem_tc_peer_t *e = &peer[k][npeer[k]++];
        memset(e, 0, sizeof *e);
        snprintf(e->addr, sizeof e->addr, "%s", addr[q]);
        e->profile = *p;
    }
    for (int k = 0; k < *ndev; k++) {
        int rc = netem_tc_apply_by_dest(&dev[k], npeer[k], peer[k], 0, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

static int unshape(netem_dev_t *dev, int *ndev, char *err, size_t errlen)
{
    int rc = 0;
    for (int k = 0; k < *ndev; k++) {
        int r = netem_tc_clear(&dev[k], err, errlen);
        rc = rc ? rc : r;
    }
    *ndev = 0;
    return rc;
}

/* ---- one rank's stage, in a child process (as pipeline's launcher runs them) ---- */

typedef struct {
    const runcfg_t *cfg;
    int rank;
    const char *host, *token, *compute;
    int port;
    const netem_profile_t *shim_links;
} stage_job_t;

/* Runs the stage in a child; on rank 0 its summary comes back through reports. The
 * child's error (if any) into err; stop kills it. */
static int stage_in_child(const stage_job_t *j, volatile sig_atomic_t *stop, stage_summary_t *sum, char *err,
                          size_t errlen)
{
    FILE *reports = j->rank == 0 ? tmpfile() : NULL;
    int ep[2];
    if ((j->rank == 0 && !reports) || pipe(ep)) {
        if (reports)
            fclose(reports);
        return pn_err(err, errlen, -EIO, "rank %d: cannot set up its stage: %s", j->rank, strerror(errno));
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(ep[0]);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        netem_state_guard_child();
        runcfg_t own = *j->cfg;
        if (j->compute)
            own.stage_params.compute = j->compute;
        char e[1024] = "", ifname[64];
        stage_params_t sp = {.cfg = &own, .rank = j->rank, .token = j->token, .port = j->port, .listen_fd = -1,
                             .shim_links = j->shim_links, .reports_out = reports};
        snprintf(sp.host, sizeof sp.host, "%s", j->host);
        int rc = jobenv_route_ifname(j->host, j->port, ifname, sizeof ifname, e, sizeof e);
        if (!rc) {
            sp.ucx_devices = ifname;
            stage_summary_t s = {0};
            rc = stage_run(&sp, &s, e, sizeof e);
            stage_summary_destroy(&s);
        }
        if (rc && write(ep[1], e, strlen(e)) < 0)
            _exit(3);
        _exit(rc ? 1 : 0);
    }
    close(ep[1]);
    int rc = 0, st = 0;
    if (pid < 0)
        rc = pn_err(err, errlen, -errno, "rank %d: fork: %s", j->rank, strerror(errno));
    while (pid > 0) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid || (w < 0 && errno != EINTR))
            break;
        if (stop && *stop)
            kill(pid, SIGKILL);
        pn_sleep(0.05);
    }
    char e[1024];
    ssize_t n = pid > 0 ? read(ep[0], e, sizeof e - 1) : 0;
    e[n > 0 ? n : 0] = '\0';
    close(ep[0]);
    if (!rc && stop && *stop)
        rc = pn_err(err, errlen, -EINTR, "stopped by a signal; rank %d's stage was killed", j->rank);
    else if (!rc && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        rc = pn_err(err, errlen, -ECHILD, "rank %d: %s", j->rank,
                    e[0] ? e : WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "its stage failed");
    if (!rc && reports) {
        rewind(reports);
        rc = stage_summary_read(j->cfg, reports, sum, err, errlen);
    }
    if (reports)
        fclose(reports);
    return rc;
}

/* ---- rank 0: admitting the ranks ---- */

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

/* One connection's hello: its rank into *rank, checked against what rank 0 knows. */
static int admit_one(sweep_dist_t *d, int fd, const char *want_token, char *err, size_t errlen)
{
    char line[512], tok[300];
    int r = -1;
    int rc = recv_line(fd, line, sizeof line, pn_now() + 10, NULL);
    if (rc || sscanf(line, "hello %d %299s", &r, tok) != 2)
        return pn_err(err, errlen, -EPROTO, "a connection to the sweep's port did not say hello (%s)",
                      rc ? strerror(-rc) : line);
    if (r < 1 || r >= d->P)
        return pn_err(err, errlen, -EPROTO, "rank %d came, but the sweep has ranks 1 to %d besides rank 0 "
                      "(--stages %d: one rank per stage)", r, d->P - 1, d->P);
    if (d->fd[r] >= 0)
        return pn_err(err, errlen, -EPROTO, "rank %d came twice", r);
    if (strcmp(tok, want_token))
        return pn_err(err, errlen, -EACCES, "rank %d belongs to another job (token '%s', rank 0's '%s')", r, tok,
                      want_token);
    struct sockaddr_in peer, self;
    socklen_t pl = sizeof peer, sl = sizeof self;
    if (getpeername(fd, (struct sockaddr *)&peer, &pl) || getsockname(fd, (struct sockaddr *)&self, &sl))
        return pn_err(err, errlen, -errno, "rank %d: %s", r, strerror(errno));
    inet_ntop(AF_INET, &peer.sin_addr, d->addr[r], sizeof d->addr[r]);
    inet_ntop(AF_INET, &self.sin_addr, d->addr[0], sizeof d->addr[0]);
    d->fd[r] = fd;
    return 0;
}

int sweep_dist_open(sweep_dist_t **out, const char *url, const sweep_spec_t *s, char *err, size_t errlen)
{
    int rank = 0, size = s->stages, rc;
    const char *src = "", *launcher_token = NULL;
    rc = jobenv_rank(&rank, &size, &src, err, errlen);
    if (rc && rc != -ENOENT)
        return rc;
    if (rc == 0 && size != s->stages)
        return pn_err(err, errlen, -EINVAL, "the launcher started %d ranks (%s) but the sweep has %d stages: "
                      "one rank per stage", size, src, s->stages);
    sweep_dist_t *d = calloc(1, sizeof *d);
    if (!d)
        return -ENOMEM;
    d->P = s->stages;
    d->lfd = -1;
    for (int q = 0; q < PN_MAX_WORLD; q++)
        d->fd[q] = -1;
    if ((rc = jobenv_url_parse(url, d->host0, sizeof d->host0, &d->port, err, errlen)))
        goto fail;
    unsigned char rnd[16];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        rc = pn_err(err, errlen, -EIO, "getrandom: %s", strerror(errno));
        goto fail;
    }
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(d->token + 2 * i, 3, "%02x", rnd[i]);
    if (jobenv_token(&launcher_token))
        launcher_token = "-";
    if ((rc = d->lfd = listen_on(d->port, err, errlen)) < 0)
        goto fail;
    double deadline = pn_now() + ADMIT_S;
    for (int n = 1; n < d->P; n++) {
        struct pollfd p = {.fd = d->lfd, .events = POLLIN};
        int left = (int)(1000 * (deadline - pn_now()));
        if (left <= 0 || poll(&p, 1, left) <= 0) {
            char missing[256] = "";
            for (int q = 1; q < d->P; q++)
                if (d->fd[q] < 0)
                    snprintf(missing + strlen(missing), sizeof missing - strlen(missing), " %d", q);
            rc = pn_err(err, errlen, -ETIMEDOUT, "rank(s)%s did not reach rank 0 at %s within %.0f s", missing,
                        url, ADMIT_S);
            goto fail;
        }
        int fd = accept4(d->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0 || (rc = admit_one(d, fd, launcher_token, err, errlen))) {
            if (fd >= 0)
                close(fd);
            rc = fd < 0 ? pn_err(err, errlen, -errno, "accept: %s", strerror(errno)) : rc;
            goto fail;
        }
    }
    char line[2048];
    int n = snprintf(line, sizeof line, "welcome %zu %s", sizeof *s, d->token);
    for (int q = 0; q < d->P && n < (int)sizeof line; q++)
        n += snprintf(line + n, sizeof line - (size_t)n, " %s", d->addr[q]);
    for (int q = 1; q < d->P && !rc; q++)
        if (send_line(d->fd[q], "%s", line) || send_all(d->fd[q], s, sizeof *s))
            rc = pn_err(err, errlen, -EPIPE, "rank %d: lost while sending it the grid", q);
    if (rc)
        goto fail;
    *out = d;
    return 0;
fail:
    sweep_dist_close(d);
    return rc;
}

void sweep_dist_close(sweep_dist_t *d)
{
    if (!d)
        return;
    for (int q = 1; q < d->P; q++)
        if (d->fd[q] >= 0) {
            if (send_line(d->fd[q], "end") == 0) {
                char line[64];   /* its goodbye, so no rank is left mid-clean-up */
                if (recv_line(d->fd[q], line, sizeof line, pn_now() + 5, NULL)) {
                }
            }
            close(d->fd[q]);
        }
    if (d->lfd >= 0)
        close(d->lfd);
    free(d);
}

/* ---- rank 0: the cell hosts ---- */

/* Every other rank's reply to the command just sent: 0 when all said ok, else the
 * first failure's error with every failing rank named in err. */
static int collect(sweep_dist_t *d, const char *what, double deadline, volatile sig_atomic_t *stop, char *err,
                   size_t errlen)
{
    int rc = 0;
    size_t used = 0;
    for (int q = 1; q < d->P; q++) {
        char line[1200];
        int r = d->fd[q] < 0 ? -ECONNRESET : recv_line(d->fd[q], line, sizeof line, deadline, stop);
        if (!r && !strcmp(line, "ok"))
            continue;
        if (!r && strncmp(line, "fail ", 5))
            r = -EPROTO;
        int e = r ? r : -EIO;
        rc = rc ? rc : e;
        if (used < errlen)
            used += (size_t)snprintf(err + used, errlen - used, "%srank %d %s: %s", used ? "; " : "", q, what,
                                     r == -ECONNRESET ? "lost (its sweep process ended)" :
                                     r ? strerror(-r) : line + 5);
        if (r == -ECONNRESET && d->fd[q] >= 0) {
            close(d->fd[q]);
            d->fd[q] = -1;
        }
    }
    return rc;
}

static int broadcast(sweep_dist_t *d, const char *line)
{
    int rc = 0;
    for (int q = 1; q < d->P; q++)
        if (d->fd[q] < 0 || send_line(d->fd[q], "%s", line))
            rc = -EPIPE;
    return rc;
}

static int dist_setup(void *ctx, const sweep_spec_t *s, const netem_profile_t *p, results_cell_t *cell,
                      const char **cfg_net, const char **cfg_emulator, char *err, size_t errlen)
{
    sweep_dist_t *d = ctx;
    char why[256], line[256];
    for (int q = 0; q < d->P; q++)
        d->links[q] = *p;
    /* The kernel per-destination tree (netem) unless the shim is asked or auto finds no
     * root here; every rank uses what rank 0 chose (one backend per cell, recorded). */
    int rc = netem_emulator_choose(s->emulator, d->links, d->P - 1, &d->emu, why, sizeof why, err, errlen);
    if (rc)
        return rc;
    snprintf(cell->emulator, sizeof cell->emulator, "%s", d->emu->name);
    *cfg_net = d->P > 1 ? cell->profile : "default";
    *cfg_emulator = d->emu->shapes ? d->emu->name : "auto";
    snprintf(line, sizeof line, "apply %d %s", cell->cell, d->emu->name);
    if (broadcast(d, line))
        return pn_err(err, errlen, -EPIPE, "a rank was lost before cell %d", cell->cell);
    int own = 0;
    char own_err[512] = "";
    if (d->emu->changes_kernel)
        own = shape_neighbours(0, d->P, d->addr, d->port, p, d->dev, &d->ndev, own_err, sizeof own_err);
    rc = collect(d, "shaping", pn_now() + REPLY_S, NULL, err, errlen);
    if (own) {
        size_t n = strlen(err);
        snprintf(err + n, errlen - n, "%srank 0 shaping: %s", n ? "; " : "", own_err);
        rc = own;
    }
    return rc;
}

static int dist_run(void *ctx, const runcfg_t *cfg, const sweep_spec_t *s, const char *const *rank_compute,
                    volatile sig_atomic_t *stop, stage_summary_t *sum, char *err, size_t errlen)
{
    sweep_dist_t *d = ctx;
    (void)s;
    const char *cell = getenv("PIPENEM_CELL");
    for (int q = 1; q < d->P; q++) {
        if (d->fd[q] < 0 || send_line(d->fd[q], "run %s %s", cell ? cell : "0",
                                      rank_compute[q] ? rank_compute[q] : "-"))
            return pn_err(err, errlen, -EPIPE, "rank %d was lost", q);
    }
    stage_job_t j = {.cfg = cfg, .rank = 0, .host = d->addr[0], .token = d->token, .compute = rank_compute[0],
                     .port = d->port + 1, .shim_links = d->emu->in_transport ? d->links : NULL};
    char own_err[1024] = "";
    int own = stage_in_child(&j, stop, sum, own_err, sizeof own_err);
    int rc = collect(d, "stage", 0, NULL, err, errlen);
    if (own) {
        size_t n = strlen(err);
        snprintf(err + n, errlen - n, "%s%s", n ? "; " : "", own_err);
        stage_summary_destroy(sum);
        return own;
    }
    if (rc)
        stage_summary_destroy(sum);
    return rc;
}

static void dist_teardown(void *ctx)
{
    sweep_dist_t *d = ctx;
    char err[1024] = "";
    int rc = broadcast(d, "clear");
    if (unshape(d->dev, &d->ndev, err, sizeof err))
        fprintf(stderr, "pipenem sweep: rank 0: %s\n", err);
    if (!rc && collect(d, "clearing", pn_now() + REPLY_S, NULL, err, sizeof err))
        fprintf(stderr, "pipenem sweep: %s\n", err);
}

static const cell_hosts_t dist_hosts = {"ranks", dist_setup, dist_run, dist_teardown};

int sweep_dist_measure(void *ctx, const sweep_spec_t *s, results_cell_t *cell, const char *workdir,
                       volatile sig_atomic_t *stop, results_t *r, char *err, size_t errlen)
{
    return cell_measure_on(&dist_hosts, ctx, s, cell, workdir, stop, r, err, errlen);
}

/* ---- ranks > 0 ---- */

/* The --dist-url among the words, or NULL. */
static const char *url_in(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--dist-url") && i + 1 < argc)
            return argv[i + 1];
        if (!strncmp(argv[i], "--dist-url=", 11))
            return argv[i] + 11;
    }
    return NULL;
}

/* Connects to rank 0 (which may start later: retried for ADMIT_S) and says hello. */
static int worker_connect(const char *host, int port, int rank, char *err, size_t errlen)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
        return pn_err(err, errlen, -EINVAL, "--dist-url host '%s': give rank 0's IPv4 address", host);
    const char *tok = NULL;
    if (jobenv_token(&tok))
        tok = "-";
    for (double until = pn_now() + ADMIT_S; pn_now() < until; pn_sleep(0.2)) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
            if (send_line(fd, "hello %d %s", rank, tok) == 0)
                return fd;
        }
        close(fd);
    }
    return pn_err(err, errlen, -ETIMEDOUT, "rank %d: rank 0 did not answer at %s:%d within %.0f s", rank, host,
                  port, ADMIT_S);
}

typedef struct {
    int rank, P, port, fd;
    sweep_spec_t spec;
    char host0[256], token[40];
    char addr[PN_MAX_WORLD][64];
    const netem_emulator_t *emu;
    netem_dev_t dev[2];
    int ndev;
    netem_profile_t links[PN_MAX_WORLD];
    results_cell_t cell;
} worker_t;

static int worker_welcome(worker_t *w, char *err, size_t errlen)
{
    char line[2048];
    size_t size = 0;
    int rc = recv_line(w->fd, line, sizeof line, pn_now() + ADMIT_S, NULL);
    if (rc)
        return pn_err(err, errlen, rc, "rank %d: rank 0 sent no grid: %s", w->rank, strerror(-rc));
    char *save = NULL, *t = strtok_r(line, " ", &save);
    if (!t || strcmp(t, "welcome") || !(t = strtok_r(NULL, " ", &save)) || sscanf(t, "%zu", &size) != 1 ||
        !(t = strtok_r(NULL, " ", &save)))
        return pn_err(err, errlen, -EPROTO, "rank %d: rank 0 said '%s'", w->rank, line);
    snprintf(w->token, sizeof w->token, "%s", t);
    int q = 0;
    while ((t = strtok_r(NULL, " ", &save)) && q < PN_MAX_WORLD)
        snprintf(w->addr[q++], sizeof w->addr[0], "%s", t);
    if (size != sizeof w->spec)
        return pn_err(err, errlen, -EPROTO, "rank %d: rank 0 runs another pipenem build (grid of %zu bytes, "
                      "this one %zu)", w->rank, size, sizeof w->spec);
    if ((rc = recv_exact(w->fd, &w->spec, sizeof w->spec, pn_now() + REPLY_S, NULL)))
        return pn_err(err, errlen, rc, "rank %d: the grid did not arrive", w->rank);
    w->P = w->spec.stages;
    if (q != w->P || w->rank >= w->P)
        return pn_err(err, errlen, -EPROTO, "rank %d: %d addresses for %d stages", w->rank, q, w->P);
    return 0;
}

/* One command from rank 0 carried out; its reply sent. 1 at "end". */
static int worker_command(worker_t *w, char *line)
{
    char err[1024] = "", what[64] = "", arg[512] = "";
    int cell = -1, rc = 0;
    if (sscanf(line, "%63s %d %511s", what, &cell, arg) < 1)
        rc = pn_err(err, sizeof err, -EPROTO, "unknown command '%s'", line);
    else if (!strcmp(what, "end")) {
        rc = unshape(w->dev, &w->ndev, err, sizeof err);
        send_line(w->fd, rc ? "fail %s" : "ok", err);
        return 1;
    } else if (!strcmp(what, "apply")) {
        netem_profile_t p;
        sweep_cell_config(&w->spec, cell, &w->cell);
        w->emu = netem_emulator_find(arg);
        if (!(rc = netem_profile_parse(w->cell.profile, &p, err, sizeof err))) {
            for (int q = 0; q < w->P; q++)
                w->links[q] = p;
            if (!w->emu && strcmp(arg, "none"))
                rc = pn_err(err, sizeof err, -EINVAL, "unknown emulator '%s'", arg);
            else if (w->emu && w->emu->changes_kernel)
                rc = shape_neighbours(w->rank, w->P, w->addr, w->port, &p, w->dev, &w->ndev, err, sizeof err);
        }
    } else if (!strcmp(what, "run")) {
        runcfg_t cfg;
        char no[16];
        snprintf(no, sizeof no, "%d", cell);
        setenv("PIPENEM_CELL", no, 1); /* the stages' fault hook can aim at one cell */
        int in_transport = w->emu && w->emu->in_transport;
        const char *emu = w->emu && w->emu->shapes ? w->emu->name : "auto";
        rc = cell_runcfg(&w->spec, &w->cell, w->P > 1 ? w->cell.profile : "default", emu, &cfg, err, sizeof err);
        stage_job_t j = {.cfg = &cfg, .rank = w->rank, .host = w->addr[0], .token = w->token,
                         .compute = strcmp(arg, "-") ? arg : NULL, .port = w->port + 1,
                         .shim_links = in_transport ? w->links : NULL};
        if (!rc)
            rc = stage_in_child(&j, NULL, NULL, err, sizeof err);
    } else if (!strcmp(what, "clear")) {
        rc = unshape(w->dev, &w->ndev, err, sizeof err);
    } else {
        rc = pn_err(err, sizeof err, -EPROTO, "unknown command '%s'", what);
    }
    for (char *c = err; *c; c++)
        *c = *c == '\n' ? ' ' : *c;
    if (rc)
        fprintf(stderr, "pipenem sweep: rank %d: %s\n", w->rank, err);
    return send_line(w->fd, rc ? "fail %s" : "ok", err) ? -EPIPE : 0;
}

int sweep_dist_worker(int argc, char **argv)
{
    int rank, size, rc;
    const char *src;
    char err[1024];
    if (jobenv_rank(&rank, &size, &src, err, sizeof err) || size < 2 || rank == 0)
        return SWEEP_DIST_NOT_WORKER;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return SWEEP_DIST_NOT_WORKER;   /* every rank prints it */
    const char *url = url_in(argc, argv);
    char **saved = NULL;
    int n_saved = 0;
    for (int i = 0; i + 1 < argc && !url; i++)
        if (!strcmp(argv[i], "--resume") && sweep_args_read(argv[i + 1], &n_saved, &saved, err, sizeof err) == 0)
            url = url_in(n_saved, saved);
    if (!url) {
        free(saved);
        fprintf(stderr, "pipenem sweep: rank %d of %d (%s): a sweep under a launcher needs --dist-url "
                "tcp://RANK0_ADDRESS:PORT on every rank\n", rank, size, src);
        return 2;
    }
    worker_t *w = calloc(1, sizeof *w);
    if (!w || netem_state_guard_start() < 0) {
        free(w);
        free(saved);
        return 1;
    }
    w->rank = rank;
    w->fd = -1;
    if ((rc = jobenv_url_parse(url, w->host0, sizeof w->host0, &w->port, err, sizeof err)) == 0 &&
        (rc = w->fd = worker_connect(w->host0, w->port, rank, err, sizeof err)) >= 0)
        rc = worker_welcome(w, err, sizeof err);
    free(saved);
    char line[1024];
    while (rc >= 0 && (rc = recv_line(w->fd, line, sizeof line, 0, NULL)) == 0)
        if ((rc = worker_command(w, line)) == 1)
            break;
    if (rc < 0 && rc != -ECONNRESET && err[0])
        fprintf(stderr, "pipenem sweep: %s\n", err);
    else if (rc == -ECONNRESET)
        fprintf(stderr, "pipenem sweep: rank %d: rank 0 went away before the end of the sweep\n", rank);
    char e2[256];
    if (unshape(w->dev, &w->ndev, e2, sizeof e2))
        fprintf(stderr, "pipenem sweep: rank %d: %s\n", rank, e2);
    if (w->fd >= 0)
        close(w->fd);
    free(w);
    return rc == 1 ? 0 : 1;
}
