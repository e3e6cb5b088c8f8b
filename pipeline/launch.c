/* The local launcher. Rank 0's reports come back through an unlinked temporary file the
 * children inherit; waiting for children sleeps in waitpid (or 50 ms naps once a deadline
 * is running), and every child dies with the launcher (PR_SET_PDEATHSIG). */
#include "pipeline/launch.h"
#include "netem/emulator.h"
#include "pipeline/privs.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"

/* The rendezvous socket on an ephemeral port: on loopback, or on host 0's address
 * inside its namespace (a socket stays in the namespace it was made in). */
static int listen_open(const netem_topo_t *topo, int *port, char *err, size_t errlen)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int self = -1, fd = -1, rc = 0;
    if (topo) {
        if ((self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) < 0 || (rc = netem_topo_enter(topo, 0)) != 0 ||
            inet_pton(AF_INET, netem_topo_host_addr(topo, 0), &a.sin_addr) != 1) {
            snprintf(err, errlen, "cannot enter %s: %s", netem_topo_host_ns(topo, 0), strerror(rc ? -rc : errno));
            if (self >= 0)
                close(self);
            return -1;
        }
    }
    if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
        listen(fd, 128) || getsockname(fd, (struct sockaddr *)&a, &al)) {
        snprintf(err, errlen, "cannot listen for the rendezvous: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    if (self >= 0) {
        if (setns(self, CLONE_NEWNET)) {
            snprintf(err, errlen, "cannot return to the launcher's namespace: %s", strerror(errno));
            if (fd >= 0)
                close(fd);
            fd = -1;
        }
        close(self);
    }
    if (fd >= 0)
        *port = ntohs(a.sin_port);
    return fd;
}

static int child_main(const launch_params_t *p, int rank, int lfd, int port, const char *token, FILE *reports)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* the launcher's death takes its stages along */
    if (getppid() == 1) {             /* it died before the line above */
        fprintf(stderr, "pipenem: rank %d: the launcher is gone; not starting\n", rank);
        return 1;
    }
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (rank != 0 && lfd >= 0)
        close(lfd);
    char err[1024] = "";
    runcfg_t own = *p->cfg;
    int stage = runcfg_stage_of(p->cfg, rank); /* rank_compute is per stage: every replica's */
    if (p->rank_compute && p->rank_compute[stage])
        own.stage_params.compute = p->rank_compute[stage];
    stage_params_t sp = {.cfg = &own, .rank = rank, .token = token, .port = port,
                         .listen_fd = rank == 0 ? lfd : -1, .shim_links = p->shim_links,
                         .reports_out = rank == 0 ? reports : NULL};
    snprintf(sp.host, sizeof sp.host, "127.0.0.1");
    if (p->topo) {
        if (netem_topo_become_host(p->topo, rank, err, sizeof err)) {
            fprintf(stderr, "pipenem: rank %d: %s\n", rank, err);
            return 1;
        }
        snprintf(sp.host, sizeof sp.host, "%s", netem_topo_host_addr(p->topo, 0));
        sp.ucx_tls = "tcp";
        sp.ucx_devices = netem_topo_host_ifname(p->topo, rank);
    } else if (!p->cfg->ucx_devices[0]) {
        /* Every stage is on this machine: UCX's TCP transport listens on each device it
         * may use, so without this it would accept connections on every interface. */
        sp.ucx_devices = "lo";
    }
    if (p->user && privs_drop(p->user, SIGKILL, err, sizeof err)) {
        fprintf(stderr, "pipenem: rank %d: %s\n", rank, err);
        return 1;
    }
    stage_summary_t sum = {0};
    int rc = stage_run(&sp, &sum, err, sizeof err);
    if (rc) {
        fprintf(stderr, "pipenem: %s\n", err);   /* stage_run always leaves a reason */
        return 1;
    }
    stage_summary_destroy(&sum);
    return 0;
}

static void describe_status(int st, char *buf, size_t len)
{
    if (WIFSIGNALED(st))
        snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(st));
}

/* Seconds a rank found stopped (SIGSTOP) at the first failure may stay so before it is
 * killed, short of the grace: it cannot exit by itself. */
#define LAUNCH_STOPPED_GRACE_S 3.0
/* Reaps every child (kill_at > 0: SIGKILL the survivors from then on; *p->stop: at
 * once). Returns the culprit rank or -1, and the first stopped rank in *stopped_rank.
 * The culprit is the first rank killed by a signal, else the first one stopped (a
 * SIGSTOPped rank makes its neighbours time out first), else the first to fail: a
 * survivor may be reaped before the rank whose death made it exit. */
static int reap(const launch_params_t *p, pid_t *pids, int *status, int live, double kill_at, double grace,
                launch_failure_t *fail, int *stopped_rank)
{
    int P = runcfg_world(p->cfg), first_bad = -1, signalled = -1, stopped = -1;
    double kill_stopped_at = 0;
    while (live > 0) {
        int st;
        pid_t pid = waitpid(-1, &st, WUNTRACED | (kill_at > 0 || (p->stop && *p->stop) ? WNOHANG : 0));
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid > 0) {
            for (int r = 0; r < P; r++)
                if (pids[r] == pid && WIFSTOPPED(st)) {
                    if (stopped < 0)
                        stopped = r;
                    fprintf(stderr, "pipenem: rank %d (pid %d) was stopped by signal %d (%s)\n", r, (int)pid,
                            WSTOPSIG(st), strsignal(WSTOPSIG(st)));
                } else if (pids[r] == pid) {
                    status[r] = st;
                    pids[r] = 0;
                    live--;
                    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
                        break;
                    if (first_bad < 0) {
                        first_bad = r;
                        kill_at = pn_now() + grace;
                        /* A stopped rank cannot exit on its own: the full grace after the
                         * others' timeout would end the run past the documented bound
                         * (timeout + 10 s). It gets a short while to be continued. */
                        if (stopped >= 0)
                            kill_stopped_at = pn_now() + LAUNCH_STOPPED_GRACE_S;
                    }
                    if (WIFSIGNALED(st) && signalled < 0 && !fail->killed)
                        signalled = r;
                }
            continue;
        }
        if (pid < 0 && errno == ECHILD)
            break;
        if (kill_stopped_at > 0 && pn_now() >= kill_stopped_at) {
            if (pids[stopped] > 0)
                kill(pids[stopped], SIGKILL);   /* its status stays the cause */
            kill_stopped_at = 0;
        }
        int stop = p->stop && *p->stop;
        if (!fail->killed && (stop || (kill_at > 0 && pn_now() >= kill_at))) {
            for (int r = 0; r < P; r++)
                if (pids[r] > 0) {
                    if (!stop)
                        fprintf(stderr, "pipenem: rank %d (pid %d) did not stop %.0f s after the failure: killing it\n",
                                r, (int)pids[r], grace);
                    kill(pids[r], SIGKILL);
                }
            fail->killed = 1;
            if (kill_at <= 0)
                kill_at = pn_now();
        }
        pn_sleep(0.05);
    }
    if (signalled >= 0)
        first_bad = signalled;
    else if (stopped >= 0 && first_bad >= 0)
        first_bad = stopped;
    *stopped_rank = stopped;
    return first_bad;
}

void launch_pair_profile(void *arg, int src, int dst, netem_profile_t *out)
{
    const launch_pairs_t *l = arg;
    int P = l->stages, D = l->dp, s = src % P, t = dst % P, d = src / P, e = dst / P;
    *out = (netem_profile_t){0};
    if (d == e && (t == s + 1 || t == s - 1))
        *out = l->links[s < t ? s : t];
    else if (d == e && P > 2 && ((s == 0 && t == P - 1) || (s == P - 1 && t == 0)))
        *out = l->links[s == 0 ? P - 2 : 0];   /* as the shim's twin shaper */
    else if (s == t && d != e && (e == (d + 1) % D || e == (d + D - 1) % D))
        *out = l->dp_link;
}

int launch_run(const launch_params_t *p, stage_summary_t *out, launch_failure_t *fail, char *err, size_t errlen)
{
    const runcfg_t *cfg = p->cfg;
    int P = runcfg_world(cfg), lfd = -1, port = 0, rc = 0; /* every process: D x stages */
    double grace = p->grace > 0 ? p->grace : 10;
    *fail = (launch_failure_t){.dead_rank = -1};
    /* Namespaces join all D x P hosts; kernel qdiscs tell a replica's link from a pipeline
     * link only when applied per ordered pair (a chain would shape host P-1 to P, say) */
    int kernel = p->topo && p->topo->emulator && p->topo->emulator->changes_kernel;
    if (cfg->dp > 1 && p->topo && (p->topo->hosts < P || (kernel && !p->topo->pairs)))
        return pn_err(err, errlen, -ENOTSUP, "--dp %d: the local topology %s", cfg->dp,
                      p->topo->hosts < P ? "has fewer hosts than the D x P processes"
                                         : "was shaped as one chain of links, not per pair of ranks "
                                           "(netem_topo_apply_pairs with launch_pair_profile)");
    if (cfg->dp > 1 && !p->shim_links && !kernel && strcmp(runcfg_net_dp(cfg), "default"))
        return pn_err(err, errlen, -EINVAL, "--dp %d --net-dp %s: nothing shapes the replicas' links (neither "
                      "launch_params_t.shim_links nor a topology with kernel qdiscs)", cfg->dp, runcfg_net_dp(cfg));
    unsigned char rnd[16];
    char token[40];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        snprintf(err, errlen, "getrandom: %s", strerror(errno));
        return -EIO;
    }
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(token + 2 * i, 3, "%02x", rnd[i]);
    /* Bound before forking, so rank 0 needs no free-port guess and nobody races for it. */
    if (P > 1 && (lfd = listen_open(p->topo, &port, err, errlen)) < 0)
        return -EADDRNOTAVAIL;
    FILE *reports = tmpfile();
    pid_t *pids = calloc((size_t)P, sizeof *pids);
    int *status = calloc((size_t)P, sizeof *status);
    if (!reports || !pids || !status) {
        snprintf(err, errlen, "cannot set up the stages: %s", strerror(errno ? errno : ENOMEM));
        rc = -ENOMEM;
        goto out;
    }
    fflush(stdout);
    fflush(stderr);
    int live = 0;
    for (int r = 0; r < P; r++) {
        pid_t pid = fork();
        if (pid < 0) {
            snprintf(err, errlen, "fork: %s", strerror(errno));
            rc = -errno;
            break;
        }
        if (pid == 0)
            _exit(child_main(p, r, lfd, port, token, reports));
        pids[r] = pid;
        live++;
        if (p->on_start)
            p->on_start(p->arg, r, (int)pid);
    }
    if (lfd >= 0)
        close(lfd);
    lfd = -1;
    int stopped = -1;
    int first_bad = reap(p, pids, status, live, rc ? pn_now() : 0, grace, fail, &stopped);
    if (!rc && p->stop && *p->stop) {
        snprintf(err, errlen, "stopped by a signal; every stage was killed");
        rc = -EINTR;
    } else if (!rc && first_bad >= 0) {
        char how[128];
        if (first_bad == stopped) /* its status is our SIGKILL; the stop is the cause */
            snprintf(how, sizeof how, "was stopped (SIGSTOP) and stopped answering");
        else
            describe_status(status[first_bad], how, sizeof how);
        fail->dead_rank = first_bad;
        fail->wait_status = status[first_bad];
        snprintf(err, errlen, "rank %d %s; every other rank stopped%s", first_bad, how,
                 fail->killed ? " (stragglers were killed)" : " on its own");
        rc = -ECHILD;
    } else if (!rc) {
        rewind(reports);
        rc = stage_summary_read(cfg, reports, out, err, errlen);
    }
out:
    if (lfd >= 0)
        close(lfd);
    if (reports)
        fclose(reports);
    free(pids);
    free(status);
    return rc;
}
