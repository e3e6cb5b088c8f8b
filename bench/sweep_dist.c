/* The SPMD sweep (see sweep_dist.h): rank 0's cell hosts that drive the ranks (apply,
 * run, clear) and the other ranks' loop, over bench/distctl.h's control channel:
 *   0 -> rank   welcome SPECSIZE STAGETOKEN ADDR0 ... ADDR(P-1), then the grid (binary)
 *   0 -> rank   apply CELL EMULATOR | run CELL COMPUTE | clear | end
 *   rank -> 0   ok | fail MESSAGE                                                       */
#include "bench/sweep_dist.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/cell.h"
#include "bench/distctl.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/limits.h"
#include "netem/emulator.h"
#include "netem/state.h"
#include "netem/tc.h"
#include "pipeline/jobenv.h"
#include "pipeline/launch.h"
#include "pipeline/stage.h"
#include "pipeline/transport.h"


struct sweep_dist {
    distctl_t c;
    char token[40];                  /* the stages' job token, fresh per sweep */
    const netem_emulator_t *emu;     /* the cell's backend */
    netem_dev_t dev[DISTCTL_MAX_DEVS]; /* rank 0's shaped devices */
    int ndev;
    netem_profile_t links[PN_MAX_WORLD];
};

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
                             .shim_links = j->shim_links, .reports_out = reports,
                             /* the kernel shapes sockets only: no shared memory or RDMA
                              * around it (and every cell, default too, on the same path) */
                             .ucx_tls = j->shim_links ? NULL : "tcp"};
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

int sweep_dist_world(const sweep_spec_t *s)
{
    int dmax = 1;
    for (int i = 0; i < s->n_dp; i++)
        dmax = s->dps[i] > dmax ? s->dps[i] : dmax;
    return s->stages * dmax;
}

/* A cell's links as every rank shapes them (launch_pair_profile, the pairs the shim
 * shapes): its profile between pipeline neighbours, --net-dp (default: the profile)
 * between the replicas of a stage. links[stages] is filled. */
static int cell_pairs(const results_cell_t *cell, int stages, netem_profile_t *links, launch_pairs_t *pairs,
                      char *err, size_t errlen)
{
    netem_profile_t p;
    int rc = netem_profile_parse(cell->profile, &p, err, errlen);
    for (int q = 0; !rc && q < stages; q++)
        links[q] = p;
    *pairs = (launch_pairs_t){.stages = stages, .dp = cell->dp > 1 ? cell->dp : 1, .links = links, .dp_link = p};
    if (!rc && pairs->dp > 1 && cell->net_dp[0])
        rc = netem_profile_parse(cell->net_dp, &pairs->dp_link, err, errlen);
    return rc;
}

/* How a cell's per-destination trees group peers, as the one-box sweep's topology does:
 * with replicas a link per pair of ranks (netem_topo_apply_pairs), else one class per
 * profile, the host's link capacity shared by its neighbours (netem_topo_apply). */
static int cell_tree_flags(const results_cell_t *cell)
{
    return cell->dp > 1 ? NETEM_TC_CLASS_PER_PEER : 0;
}

/* The ranks a cell runs on: D x stages of the sweep's world (the rest sit it out). */
static int cell_ranks(const results_cell_t *cell, int stages)
{
    return stages * (cell->dp > 1 ? cell->dp : 1);
}

int sweep_dist_open(sweep_dist_t **out, const char *url, const sweep_spec_t *s, char *err, size_t errlen)
{
    char what[128];
    int world = sweep_dist_world(s);
    if (world == s->stages)
        snprintf(what, sizeof what, "the sweep (one rank per stage, --stages %d)", s->stages);
    else
        snprintf(what, sizeof what, "the sweep (--stages %d x %d replicas, the largest of --dp-sizes)", s->stages,
                 world / s->stages);
    sweep_dist_t *d = calloc(1, sizeof *d);
    if (!d)
        return -ENOMEM;
    unsigned char rnd[16];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        free(d);
        return pn_err(err, errlen, -EIO, "getrandom: %s", strerror(errno));
    }
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(d->token + 2 * i, 3, "%02x", rnd[i]);
    int rc = distctl_open(&d->c, url, world, what, err, errlen);
    if (!rc && (rc = distctl_welcome(&d->c, d->token, s, sizeof *s, err, errlen)))
        distctl_close(&d->c);
    if (rc) {
        free(d);
        return rc;
    }
    *out = d;
    return 0;
}

void sweep_dist_close(sweep_dist_t *d)
{
    if (!d)
        return;
    distctl_close(&d->c);
    free(d);
}

/* ---- rank 0: the cell hosts ---- */

static int dist_setup(void *ctx, const sweep_spec_t *s, const netem_profile_t *p, results_cell_t *cell,
                      const char **cfg_net, const char **cfg_emulator, char *err, size_t errlen)
{
    sweep_dist_t *d = ctx;
    char why[256], line[256];
    launch_pairs_t pairs;
    netem_profile_t all[PN_MAX_WORLD + 1];
    (void)p;
    int rc = cell_pairs(cell, s->stages, d->links, &pairs, err, errlen), n = s->stages - 1;
    memcpy(all, d->links, (size_t)n * sizeof *all);
    if (pairs.dp > 1)
        all[n++] = pairs.dp_link;
    /* The kernel per-destination tree (netem) unless the shim is asked or auto finds no
     * root here; every rank uses what rank 0 chose (one backend per cell, recorded). */
    if (!rc)
        rc = netem_emulator_choose(transport_emulator_asked(s->transport, s->emulator, 1), all, n, &d->emu, why,
                                   sizeof why, err, errlen);
    if (rc)
        return rc;
    snprintf(cell->emulator, sizeof cell->emulator, "%s", d->emu->name);
    *cfg_net = s->stages > 1 ? cell->profile : "default";
    *cfg_emulator = d->emu->shapes ? d->emu->name : "auto";
    snprintf(line, sizeof line, "apply %d %s", cell->cell, d->emu->name);
    if (distctl_broadcast(&d->c, line))
        return pn_err(err, errlen, -EPIPE, "a rank was lost before cell %d", cell->cell);
    int own = 0;
    char own_err[512] = "";
    if (d->emu->changes_kernel)
        own = distctl_shape_pairs(&d->c, 0, cell_ranks(cell, s->stages), launch_pair_profile, &pairs,
                                  cell_tree_flags(cell), d->dev, &d->ndev, own_err, sizeof own_err);
    rc = distctl_collect(&d->c, "shaping", pn_now() + DISTCTL_REPLY_S, NULL, NULL, err, errlen);
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
    for (int q = 1; q < d->c.P; q++) {
        if (d->c.fd[q] < 0 || distctl_send_line(d->c.fd[q], "run %s %s", cell ? cell : "0",
                                      rank_compute[q] ? rank_compute[q] : "-"))
            return pn_err(err, errlen, -EPIPE, "rank %d was lost", q);
    }
    stage_job_t j = {.cfg = cfg, .rank = 0, .host = d->c.addr[0], .token = d->token, .compute = rank_compute[0],
                     .port = d->c.port + 1, .shim_links = d->emu->in_transport ? d->links : NULL};
    char own_err[1024] = "";
    int own = stage_in_child(&j, stop, sum, own_err, sizeof own_err);
    int rc = distctl_collect(&d->c, "stage", 0, NULL, NULL, err, errlen);
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
    int rc = distctl_broadcast(&d->c, "clear");
    if (distctl_unshape(d->dev, &d->ndev, err, sizeof err))
        fprintf(stderr, "pipenem sweep: rank 0: %s\n", err);
    if (!rc && distctl_collect(&d->c, "clearing", pn_now() + DISTCTL_REPLY_S, NULL, NULL, err, sizeof err))
        fprintf(stderr, "pipenem sweep: %s\n", err);
}

static const cell_hosts_t dist_hosts = {"ranks", dist_setup, dist_run, dist_teardown};

int sweep_dist_measure(void *ctx, const sweep_spec_t *s, results_cell_t *cell, const char *workdir,
                       volatile sig_atomic_t *stop, results_t *r, char *err, size_t errlen)
{
    return cell_measure_on(&dist_hosts, ctx, s, cell, workdir, stop, r, err, errlen);
}

/* ---- ranks > 0 ---- */

typedef struct {
    int rank, P, fd;        /* P: the stages of one replica */
    distctl_t c;
    sweep_spec_t spec;
    char token[40];
    const netem_emulator_t *emu;
    netem_dev_t dev[DISTCTL_MAX_DEVS];
    int ndev;
    netem_profile_t links[PN_MAX_WORLD];
    results_cell_t cell;
} worker_t;

/* One command from rank 0 carried out; its reply sent. 1 at "end". */
static int worker_command(worker_t *w, char *line)
{
    char err[1024] = "", what[64] = "", arg[512] = "";
    int cell = -1, rc = 0;
    if (sscanf(line, "%63s %d %511s", what, &cell, arg) < 1)
        rc = pn_err(err, sizeof err, -EPROTO, "unknown command '%s'", line);
    else if (!strcmp(what, "end")) {
        rc = distctl_unshape(w->dev, &w->ndev, err, sizeof err);
        return distctl_send_line(w->fd, rc ? "fail %s" : "ok", err) ? -EPIPE : 1;
    } else if (!strcmp(what, "apply")) {
        launch_pairs_t pairs;
        sweep_cell_config(&w->spec, cell, &w->cell);
        w->emu = netem_emulator_find(arg);
        if (!(rc = cell_pairs(&w->cell, w->P, w->links, &pairs, err, sizeof err))) {
            if (!w->emu && strcmp(arg, "none"))
                rc = pn_err(err, sizeof err, -EINVAL, "unknown emulator '%s'", arg);
            else if (w->emu && w->emu->changes_kernel && w->rank < cell_ranks(&w->cell, w->P))
                rc = distctl_shape_pairs(&w->c, w->rank, cell_ranks(&w->cell, w->P), launch_pair_profile, &pairs,
                                         cell_tree_flags(&w->cell), w->dev, &w->ndev, err, sizeof err);
        }
    } else if (!strcmp(what, "run")) {
        runcfg_t cfg;
        char no[16];
        snprintf(no, sizeof no, "%d", cell);
        setenv("PIPENEM_CELL", no, 1); /* the stages' fault hook can aim at one cell */
        int in_transport = w->emu && w->emu->in_transport;
        const char *emu = w->emu && w->emu->shapes ? w->emu->name : "auto";
        rc = cell_runcfg(&w->spec, &w->cell, w->P > 1 ? w->cell.profile : "default", emu, &cfg, err, sizeof err);
        stage_job_t j = {.cfg = &cfg, .rank = w->rank, .host = w->c.addr[0], .token = w->token,
                         .compute = strcmp(arg, "-") ? arg : NULL, .port = w->c.port + 1,
                         .shim_links = in_transport ? w->links : NULL};
        if (!rc && w->rank < cell_ranks(&w->cell, w->P)) /* else this cell has fewer replicas */
            rc = stage_in_child(&j, NULL, NULL, err, sizeof err);
    } else if (!strcmp(what, "clear")) {
        rc = distctl_unshape(w->dev, &w->ndev, err, sizeof err);
    } else {
        rc = pn_err(err, sizeof err, -EPROTO, "unknown command '%s'", what);
    }
    for (char *c = err; *c; c++)
        *c = *c == '\n' ? ' ' : *c;
    if (rc)
        fprintf(stderr, "pipenem sweep: rank %d: %s\n", w->rank, err);
    return distctl_send_line(w->fd, rc ? "fail %s" : "ok", err) ? -EPIPE : 0;
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
    const char *url = distctl_url_in(argc, argv);
    char **saved = NULL;
    int n_saved = 0;
    for (int i = 0; i + 1 < argc && !url; i++)
        if (!strcmp(argv[i], "--resume") && sweep_args_read(argv[i + 1], &n_saved, &saved, err, sizeof err) == 0)
            url = distctl_url_in(n_saved, saved);
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
    rc = w->fd = distctl_join(&w->c, url, rank, w->token, sizeof w->token, &w->spec, sizeof w->spec, err,
                              sizeof err);
    w->P = w->spec.stages;
    if (rc >= 0 && w->c.P != sweep_dist_world(&w->spec))
        rc = pn_err(err, sizeof err, -EPROTO, "rank %d: %d addresses for %d ranks", rank, w->c.P,
                    sweep_dist_world(&w->spec));
    free(saved);
    char line[1024];
    while (rc >= 0 && (rc = distctl_recv_line(w->fd, line, sizeof line, 0, NULL)) == 0)
        if ((rc = worker_command(w, line)) == 1)
            break;
    if (rc < 0 && rc != -ECONNRESET && err[0])
        fprintf(stderr, "pipenem sweep: %s\n", err);
    else if (rc == -ECONNRESET)
        fprintf(stderr, "pipenem sweep: rank %d: rank 0 went away before the end of the sweep\n", rank);
    char e2[256];
    if (distctl_unshape(w->dev, &w->ndev, e2, sizeof e2))
        fprintf(stderr, "pipenem sweep: rank %d: %s\n", rank, e2);
    if (w->fd >= 0)
        close(w->fd);
    free(w);
    return rc == 1 ? 0 : 1;
}
