/* pipenem run: one configuration on this machine. Forks one stage process per stage
 * (rendezvous on loopback, a fresh job token), lets rank 0 print the job's table, and
 * supervises: the first rank to die is named, the rest get 10 s to notice and exit on
 * their own, then anything left is killed, so no process outlives the run. */
#include "bench/cli.h"
#include "bench/privs.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pwd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pipeline/runcfg.h"
#include "pipeline/stage.h"

static const char usage[] =
    "usage: pipenem run --stages P [options]\n"
    "run one configuration with one stage process per stage on this machine, print per-iteration\n"
    "time, loss and tokens/s, then throughput and memory per stage.\n\n"
    "  --user NAME                   started as root: stage processes run as NAME (e.g. nobody);\n"
    "                                only the launcher keeps root (network emulation)\n";

enum { GRACE_S = 10 };

static volatile sig_atomic_t got_signal;

static void on_signal(int sig) { got_signal = sig; }

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int child_main(const runcfg_t *cfg, int rank, int lfd, int port, const char *token, const char *user)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* the launcher's death takes its stages along */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (user) {
        char e[256];
        if (privs_drop(user, SIGKILL, e, sizeof e)) {
            fprintf(stderr, "pipenem run: rank %d: %s\n", rank, e);
            return 1;
        }
    }
    if (rank != 0 && lfd >= 0)
        close(lfd);
    stage_params_t sp = {.cfg = cfg, .rank = rank, .token = token, .port = port, .listen_fd = rank == 0 ? lfd : -1};
    snprintf(sp.host, sizeof sp.host, "127.0.0.1");
    stage_summary_t sum = {0};
    char err[1024];
    int rc = stage_run(&sp, &sum, err, sizeof err);
    if (rc) {
        fprintf(stderr, "pipenem run: %s\n", err);
        return 1;
    }
    if (rank == 0) {
        stage_summary_print(&sum, cfg, stdout);
        if (cfg->trace[0]) {
            FILE *f = fopen(cfg->trace, "w");
            int bad = !f || exec_trace_write(f, sum.rows, sum.n_rows, 1) != 0;
            if (f && fclose(f))
                bad = 1;
            if (bad) {
                fprintf(stderr, "pipenem run: cannot write the trace to %s\n", cfg->trace);
                rc = 1;
            }
        }
        stage_summary_destroy(&sum);
    }
    fflush(stdout);
    return rc ? 1 : 0;
}

static void describe_status(int st, char *buf, size_t len)
{
    if (WIFSIGNALED(st))
        snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(st));
}

int cmd_run(int argc, char **argv)
{
    enum { OPT_USER = 0x7000 };
    static const struct option own[] = {{"help", no_argument, NULL, 'h'},
                                         {"user", required_argument, NULL, OPT_USER},
                                         {NULL, 0, NULL, 0}};
    struct option opts[96];
    runcfg_t cfg;
    char err[1024];
    const char *user = NULL;
    runcfg_defaults(&cfg);
    if (runcfg_options_table(opts, sizeof opts / sizeof *opts, own) < 0)
        return cli_usage_error(argv[0], "internal: option table too small");
    optind = 1;
    int c;
    while ((c = cli_getopt(argv[0], argc, argv, "h", opts)) != -1) {
        if (c == -2)
            return CLI_USAGE;
        if (c == 'h') {
            printf("%s%s", usage, runcfg_help());
            return CLI_OK;
        }
        if (c == OPT_USER) {
            if (!*optarg)
                return cli_usage_error(argv[0], "--user needs a user name");
            user = optarg;
            continue;
        }
        if (c == RUNCFG_OPT_DIST_URL || c == RUNCFG_OPT_RANK || c == RUNCFG_OPT_WORLD_SIZE || c == RUNCFG_OPT_TOKEN)
            for (const struct option *o = opts; o->name; o++)
                if (o->val == c)
                    return cli_usage_error(argv[0], "--%s is for `pipenem stage` (multi-host); run starts every "
                                                    "stage itself", o->name);
        int rc = runcfg_option(&cfg, c, optarg, err, sizeof err);
        if (rc < 0)
            return cli_usage_error(argv[0], "%s", err);
        if (rc == 0)
            return cli_usage_error(argv[0], "option '%s' is not handled", argv[optind - 1]);
    }
    if (optind < argc)
        return cli_usage_error(argv[0], "unexpected argument '%s'", argv[optind]);
    if (runcfg_finish(&cfg, err, sizeof err))
        return cli_usage_error(argv[0], "%s", err);
    /* Every stage is on this machine: UCX's TCP transport listens on each device it may
     * use, so without this it would accept connections on every interface of the host. */
    if (!cfg.ucx_devices[0])
        snprintf(cfg.ucx_devices, sizeof cfg.ucx_devices, "lo");
    if (user && !getpwnam(user) && !(strspn(user, "0123456789") == strlen(user) && getpwuid((uid_t)atol(user))))
        return cli_usage_error(argv[0], "--user %s: no such user", user);
    /* Stages share this machine's cores: without a limit each would start one (spinning)
     * OpenMP thread per core and they would fight over them. */
    if (!cfg.model.threads) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        int t = ncpu > cfg.stages ? (int)(ncpu / cfg.stages) : 1;
        cfg.model.threads = cfg.stage_params.threads = t;
    }
    if (strcmp(cfg.net, "default"))
        return cli_usage_error(argv[0], "--net %s: emulated links need netem's topology (--emulator tc) or the "
                                        "in-transport shaper (--emulator shim), neither is in this build yet", cfg.net);
    unsigned char rnd[16];
    char token[64];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        fprintf(stderr, "pipenem run: getrandom: %s\n", strerror(errno));
        return CLI_FAIL;
    }
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(token + 2 * i, 3, "%02x", rnd[i]);
    /* Bound before forking, so rank 0 needs no free-port guess and nobody races for it. */
    int lfd = -1, port = 0;
    if (cfg.stages > 1) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof a;
        if ((lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) ||
            listen(lfd, 128) || getsockname(lfd, (struct sockaddr *)&a, &al)) {
            fprintf(stderr, "pipenem run: cannot listen on 127.0.0.1: %s\n", strerror(errno));
            return CLI_FAIL;
        }
        port = ntohs(a.sin_port);
    }
    char line[4096];
    runcfg_format(&cfg, line, sizeof line);
    printf("# pipenem run: %d stage processes on this machine, links over loopback (UCX %s)\n# %s\n", cfg.stages,
           cfg.ucx_tls[0] ? cfg.ucx_tls : "default transports", line);
    fflush(stdout);
    fflush(stderr);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    pid_t *pids = calloc((size_t)cfg.stages, sizeof *pids);
    int *status = calloc((size_t)cfg.stages, sizeof *status);
    if (!pids || !status) {
        fprintf(stderr, "pipenem run: out of memory\n");
        return CLI_FAIL;
    }
    int live = 0;
    for (int r = 0; r < cfg.stages; r++) {
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "pipenem run: fork: %s\n", strerror(errno));
            break;
        }
        if (pid == 0)
            _exit(child_main(&cfg, r, lfd, port, token, user));
        pids[r] = pid;
        live++;
    }
    for (int r = 0; r < cfg.stages; r++)
        if (pids[r] > 0)
            printf("# rank %d: pid %d\n", r, (int)pids[r]);
    fflush(stdout);
    if (lfd >= 0)
        close(lfd);
    /* The culprit is the first rank killed by a signal, else the first one stopped (a
     * SIGSTOPped rank makes its neighbours time out first), else the first to fail: a
     * survivor may be reaped before the rank whose death made it exit. */
    int first_bad = live == cfg.stages ? -1 : cfg.stages, signalled = -1, stopped = -1;
    double kill_at = first_bad >= 0 ? mono() : 0;
    int killed = 0;
    while (live > 0) {
        int st;
        pid_t pid = waitpid(-1, &st, WUNTRACED | (kill_at > 0 || got_signal ? WNOHANG : 0));
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid > 0) {
            for (int r = 0; r < cfg.stages; r++)
                if (pids[r] == pid && WIFSTOPPED(st)) {
                    if (stopped < 0)
                        stopped = r;
                    fprintf(stderr, "pipenem run: rank %d (pid %d) was stopped by signal %d (%s)\n", r, (int)pid,
                            WSTOPSIG(st), strsignal(WSTOPSIG(st)));
                } else if (pids[r] == pid) {
                    status[r] = st;
                    pids[r] = 0;
                    live--;
                    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
                        break;
                    if (first_bad < 0) {
                        first_bad = r;
                        kill_at = mono() + GRACE_S;
                    }
                    if (WIFSIGNALED(st) && signalled < 0 && !killed)
                        signalled = r;
                }
            continue;
        }
        if (got_signal && !killed) {
            fprintf(stderr, "pipenem run: %s: stopping every stage\n", strsignal(got_signal));
            for (int r = 0; r < cfg.stages; r++)
                if (pids[r] > 0)
                    kill(pids[r], SIGKILL);
            killed = 1;
            if (first_bad < 0)
                first_bad = cfg.stages;
        }
        if (kill_at > 0 && mono() >= kill_at && !killed) {
            for (int r = 0; r < cfg.stages; r++)
                if (pids[r] > 0) {
                    fprintf(stderr, "pipenem run: rank %d (pid %d) did not exit %d s after the failure: killing it\n",
                            r, (int)pids[r], GRACE_S);
                    kill(pids[r], SIGKILL);
                }
            killed = 1;
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (signalled >= 0)
        first_bad = signalled;
    else if (stopped >= 0 && first_bad >= 0)
        first_bad = stopped;
    if (first_bad >= 0 && first_bad < cfg.stages) {
        char how[128];
        if (first_bad == stopped) /* its status is our SIGKILL; the stop is the cause */
            snprintf(how, sizeof how, "was stopped (SIGSTOP) and stopped answering");
        else
            describe_status(status[first_bad], how, sizeof how);
        fprintf(stderr, "pipenem run: FAILED: rank %d %s; every other rank stopped%s\n", first_bad, how,
                killed ? " (stragglers were killed)" : " on its own");
    }
    int ok = first_bad < 0;
    printf("# %s\n", ok ? "OK" : "FAILED");
    free(pids);
    free(status);
    return ok ? CLI_OK : CLI_FAIL;
}
