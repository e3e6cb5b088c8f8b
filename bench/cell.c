/* One sweep cell on this machine: a namespace per stage joined by a switch (netem/topo),
 * the cell's profile on every link, one forked stage process per host running pipeline's
 * stage_run over UCX/TCP on the veths, rank 0's gathered trace and per-rank counters
 * collected through files in the cell's work folder, the network restored; then metrics,
 * the simulator's prediction and the straggler replay. Without root (no namespaces) the
 * stages run over loopback and only the in-transport shaper can emulate a profile. */
#include "bench/cell.h"

#include "bench/csvio.h"
#include "bench/metrics.h"
#include "bench/predict.h"
#include "models/model.h"
#include "netem/emulator.h"
#include "netem/profile.h"
#include "netem/state.h"
#include "netem/topo.h"
#include "pipeline/exec.h"
#include "pipeline/runcfg.h"
#include "pipeline/stage.h"
#include "schedules/sched.h"

#include "models/options.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
    CELL_GRACE_S = 10, /* after one rank fails, the others get this long to notice */
};

static void errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The pipeline configuration of the cell, through runcfg's own option parser so that the
 * sweep and `pipenem run` agree on every field and check. */
static int cell_runcfg(const sweep_spec_t *s, const results_cell_t *c, const char *net, const char *emulator,
                       runcfg_t *cfg, char *err, size_t errlen)
{
    char stages[16], batch[16], mbs[16], seq[16], iters[16], warmup[16], slack[16], threads[24];
    /* The stages share this machine's cores: one OpenMP team per core each would fight. */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(threads, sizeof threads, "%ld", ncpu > s->stages ? ncpu / s->stages : 1);
    snprintf(stages, sizeof stages, "%d", s->stages);
    snprintf(batch, sizeof batch, "%d", s->batch_size);
    snprintf(mbs, sizeof mbs, "%d", c->micro_batch_size);
    snprintf(seq, sizeof seq, "%d", s->seq_len);
    snprintf(iters, sizeof iters, "%d", s->iters);
    snprintf(warmup, sizeof warmup, "%d", s->warmup);
    snprintf(slack, sizeof slack, "%d", s->slack);
    const struct {
        int opt;
        const char *arg;
    } set[] = {
        {MODEL_OPT_MODEL, s->model},          {MODEL_OPT_SEQ_LEN, seq},
        {MODEL_OPT_STAGES, stages},           {MODEL_OPT_BATCH_SIZE, batch},
        {MODEL_OPT_MICRO_BATCH_SIZE, mbs},    {MODEL_OPT_COMPUTE, s->compute},
        {RUNCFG_OPT_SCHEDULE, c->schedule},   {RUNCFG_OPT_SLACK, slack},
        {RUNCFG_OPT_ITERS, iters},            {RUNCFG_OPT_WARMUP, warmup},
        {RUNCFG_OPT_NET, net},                {RUNCFG_OPT_EMULATOR, emulator},
        {MODEL_OPT_THREADS, threads},
    };
    runcfg_defaults(cfg);
    for (size_t i = 0; i < sizeof set / sizeof *set; i++) {
        if (set[i].opt == RUNCFG_OPT_SLACK && sched_uses_slack(c->schedule) != 1)
            continue; /* only 1f1b-slack takes a K */
        int rc = runcfg_option(cfg, set[i].opt, set[i].arg, err, errlen);
        if (rc < 0)
            return rc;
        if (rc == 0) {
            errf(err, errlen, "internal: runcfg does not take option %d", set[i].opt);
            return -EINVAL;
        }
    }
    return runcfg_finish(cfg, err, errlen);
}

/* The straggler's compute: its modelled per-micro-batch times (emulate) times factor. */
static int straggler_compute(const runcfg_t *cfg, int rank, double factor, char *out, size_t len, char *err,
                             size_t errlen)
{
    model_stage_params_t mp = cfg->stage_params;
    mp.stage = rank;
    model_stage_t *st = calloc(1, sizeof *st);
    if (!st)
        return -ENOMEM;
    int rc = model_stage_init(st, &mp, err, errlen);
    if (rc) {
        free(st);
        return rc;
    }
    model_account_t a;
    model_stage_account(st, &a);
    model_stage_destroy(st);
    free(st);
    if (!(a.fwd_s > 0)) {
        errf(err, errlen, "--straggler needs an emulated compute backend (emulate:...), not '%s'", mp.compute);
        return -EINVAL;
    }
    snprintf(out, len, "emulate:fwd=%.9gms,bwd=%.9gms,opt=%.9gms", 1e3 * factor * a.fwd_s, 1e3 * factor * a.bwd_s,
             1e3 * factor * a.opt_s);
    return 0;
}

/* Rank 0's files for the parent: the trace, and per rank its counters (summary.csv). */
static int write_rank0(const stage_summary_t *sum, const char *workdir, char *err, size_t errlen)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/trace.csv", workdir);
    csvio_writer_t w;
    int rc = csvio_writer_open(&w, path, err, errlen);
    if (rc)
        return rc;
    if (exec_trace_write(w.f, sum->rows, sum->n_rows, 1) != 0)
        w.error = EIO;
    if ((rc = csvio_writer_commit(&w, err, errlen)))
        return rc;
    snprintf(path, sizeof path, "%s/summary.csv", workdir);
    if ((rc = csvio_writer_open(&w, path, err, errlen)))
        return rc;
    static const char *const cols[] = {"rank", "peak_rss_bytes", "fwd_flops", "bwd_flops", "peak_flops"};
    for (size_t i = 0; i < sizeof cols / sizeof *cols; i++)
        csvio_put_str(&w, cols[i]);
    csvio_row_end(&w);
    for (int q = 0; q < sum->stages; q++) {
        csvio_put_int(&w, q);
        csvio_put_double(&w, (double)sum->ranks[q].peak_rss);
        csvio_put_double(&w, sum->ranks[q].fwd_flops);
        csvio_put_double(&w, sum->ranks[q].bwd_flops);
        csvio_put_double(&w, sum->ranks[q].peak_flops);
        csvio_row_end(&w);
    }
    if ((rc = csvio_writer_commit(&w, err, errlen)))
        return rc;
    snprintf(path, sizeof path, "%s/loss.csv", workdir);
    if ((rc = csvio_writer_open(&w, path, err, errlen)))
        return rc;
    csvio_put_str(&w, "iteration");
    csvio_put_str(&w, "loss");
    csvio_row_end(&w);
    for (int i = 0; i < sum->warmup + sum->iters; i++) {
        csvio_put_int(&w, i);
        csvio_put_double(&w, sum->loss[i]);
        csvio_row_end(&w);
    }
    return csvio_writer_commit(&w, err, errlen);
}

/* A stage process: into its namespace, then pipeline's stage_run. Never returns. */
static void child(runcfg_t *cfg, int rank, const netem_topo_t *topo, const netem_profile_t *shim_links, int lfd,
                  int port, const char *token, const sweep_spec_t *s, const char *workdir)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* the sweep's death takes its stages along */
    netem_state_guard_child();
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    char err[2048] = "", path[4200], compute[256];
    int rc = 0;
    if (rank != 0 && lfd >= 0)
        close(lfd);
    stage_params_t sp = {.cfg = cfg, .rank = rank, .token = token, .port = port, .listen_fd = rank == 0 ? lfd : -1,
                         .shim_links = shim_links};
    if (topo) {
        char why[256];
        if ((rc = netem_topo_become_host(topo, rank, why, sizeof why)) != 0)
            errf(err, sizeof err, "rank %d: %s", rank, why);
        snprintf(sp.host, sizeof sp.host, "%s", netem_topo_host_addr(topo, 0));
        /* TCP on the veth: shared-memory transports would bypass the emulated links. */
        sp.ucx_tls = "tcp";
        sp.ucx_devices = netem_topo_host_ifname(topo, rank);
    } else {
        snprintf(sp.host, sizeof sp.host, "127.0.0.1");
    }
    if (!rc && rank == s->straggler_rank && s->straggler_factor != 1.0) {
        rc = straggler_compute(cfg, rank, s->straggler_factor, compute, sizeof compute, err, sizeof err);
        if (!rc)
            cfg->stage_params.compute = compute; /* this rank only; the hashed options stay equal */
    }
    stage_summary_t sum = {0};
    if (!rc)
        rc = stage_run(&sp, &sum, err, sizeof err);
    if (!rc && rank == 0) {
        rc = write_rank0(&sum, workdir, err, sizeof err);
        stage_summary_destroy(&sum);
    }
    if (rc) {
        snprintf(path, sizeof path, "%s/rank%d.err", workdir, rank);
        if (csvio_file_write_atomic(path, err, strlen(err), NULL, 0))
            fprintf(stderr, "pipenem sweep: %s\n", err); /* the parent then names only the exit status */
    }
    _exit(rc ? 1 : 0);
}

/* The first line a failed rank left behind, for the cell's error message. */
static void rank_error(const char *workdir, int rank, char *out, size_t len)
{
    char path[4200], *text = NULL;
    size_t n = 0;
    snprintf(path, sizeof path, "%s/rank%d.err", workdir, rank);
    if (csvio_file_read(path, &text, &n, NULL, 0) == 0) {
        snprintf(out, len, "%.*s", (int)strcspn(text, "\n"), text);
        free(text);
    } else {
        out[0] = '\0';
    }
}

/* Rank 0's rendezvous socket, bound before forking (inside host 0's namespace when there
 * is a topology) so that no port has to be guessed and nobody races for it. */
static int listen_open(const netem_topo_t *topo, int *lfd, int *port, char *err, size_t errlen)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int self = -1, fd = -1, rc = 0;
    if (topo) {
        if ((self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) < 0) {
            rc = -errno;
            errf(err, errlen, "cannot open this process's network namespace: %s", strerror(errno));
            return rc;
        }
        if ((rc = netem_topo_enter(topo, 0)) != 0 || inet_pton(AF_INET, netem_topo_host_addr(topo, 0), &a.sin_addr) != 1) {
            errf(err, errlen, "cannot enter %s: %s", netem_topo_host_ns(topo, 0), strerror(rc ? -rc : EINVAL));
            close(self);
            return rc ? rc : -EINVAL;
        }
    }
    if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
        listen(fd, 128) || getsockname(fd, (struct sockaddr *)&a, &al)) {
        rc = -errno;
        errf(err, errlen, "cannot listen for the rendezvous: %s", strerror(errno));
    }
    if (self >= 0) {
        if (setns(self, CLONE_NEWNET) != 0 && !rc) {
            rc = -errno;
            errf(err, errlen, "cannot return to this process's network namespace: %s", strerror(errno));
        }
        close(self);
    }
    if (rc) {
        if (fd >= 0)
            close(fd);
        return rc;
    }
    *lfd = fd;
    *port = ntohs(a.sin_port);
    return 0;
}

/* Forks the stages, supervises them (the first failure gives the rest CELL_GRACE_S, a
 * raised *stop kills them at once) and reaps every one. */
static int run_stages(runcfg_t *cfg, const netem_topo_t *topo, const netem_profile_t *shim_links,
                      const sweep_spec_t *s, const char *workdir,
                      volatile sig_atomic_t *stop, char *err, size_t errlen)
{
    int P = cfg->stages;
    unsigned char rnd[16];
    char token[40];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        return -errno;
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(token + 2 * i, 3, "%02x", rnd[i]);
    pid_t pids[RESULTS_MAX_STAGES] = {0};
    int status[RESULTS_MAX_STAGES] = {0}, live = 0, first_bad = -1, killed = 0, lfd = -1, port = 0;
    if (P > 1) {
        int rc = listen_open(topo, &lfd, &port, err, errlen);
        if (rc)
            return rc;
    }
    fflush(stdout);
    fflush(stderr);
    for (int q = 0; q < P; q++) {
        pid_t pid = fork();
        if (pid < 0) {
            errf(err, errlen, "fork: %s", strerror(errno));
            first_bad = P;
            break;
        }
        if (pid == 0)
            child(cfg, q, topo, shim_links, lfd, port, token, s, workdir);
        pids[q] = pid;
        live++;
    }
    if (lfd >= 0)
        close(lfd);
    double kill_at = first_bad >= 0 ? mono() : 0;
    while (live > 0) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid > 0) {
            for (int q = 0; q < P; q++)
                if (pids[q] == pid) {
                    pids[q] = 0;
                    status[q] = st;
                    live--;
                    if ((!WIFEXITED(st) || WEXITSTATUS(st)) && first_bad < 0) {
                        first_bad = q;
                        kill_at = mono() + CELL_GRACE_S;
                    }
                }
            continue;
        }
        if (pid < 0 && errno != EINTR)
            break;
        if (!killed && ((stop && *stop) || (kill_at > 0 && mono() >= kill_at))) {
            for (int q = 0; q < P; q++)
                if (pids[q] > 0)
                    kill(pids[q], SIGKILL);
            killed = 1;
        }
        struct timespec ts = {0, 20 * 1000 * 1000}; /* sleep between polls: the stages need the cores */
        nanosleep(&ts, NULL);
    }
    if (stop && *stop) {
        errf(err, errlen, "interrupted");
        return -EINTR;
    }
    if (first_bad >= 0 && first_bad < P) {
        char why[1024];
        rank_error(workdir, first_bad, why, sizeof why);
        int st = status[first_bad];
        if (why[0])
            errf(err, errlen, "%s", why);
        else if (WIFSIGNALED(st))
            errf(err, errlen, "rank %d was killed by signal %d (%s)", first_bad, WTERMSIG(st), strsignal(WTERMSIG(st)));
        else
            errf(err, errlen, "rank %d exited with status %d", first_bad, WEXITSTATUS(st));
        return -EIO;
    }
    return first_bad >= 0 ? -EAGAIN : 0;
}

/* Reads rank 0's summary.csv and loss.csv of one repeat into the per-stage FLOPs, peak
 * FLOP/s and peak memory (kept as the maximum over repeats), and the last loss. */
static int collect_counters(const char *workdir, int P, double *flop_mb, double *peak, double *mem, double *loss,
                            char *err, size_t errlen)
{
    char path[4200];
    csvio_table_t t = {0};
    snprintf(path, sizeof path, "%s/summary.csv", workdir);
    int rc = csvio_read(path, &t, err, errlen);
    if (rc)
        return rc;
    size_t c[5];
    static const char *const cols[] = {"rank", "peak_rss_bytes", "fwd_flops", "bwd_flops", "peak_flops"};
    for (int i = 0; i < 5 && !rc; i++)
        rc = csvio_col_require(&t, cols[i], &c[i], err, errlen);
    for (size_t row = 1; row < t.rows && !rc; row++) {
        long long q;
        double v[4];
        rc = csvio_get_int(&t, row, c[0], 0, P - 1, &q, err, errlen);
        for (int i = 0; i < 4 && !rc; i++)
            rc = csvio_get_double(&t, row, c[i + 1], &v[i], err, errlen);
        if (rc)
            break;
        mem[q] = isnan(mem[q]) ? v[0] : fmax(mem[q], v[0]);
        flop_mb[q] = v[1] + v[2];
        peak[q] = v[3];
    }
    csvio_free(&t);
    if (rc)
        return rc;
    snprintf(path, sizeof path, "%s/loss.csv", workdir);
    if ((rc = csvio_read(path, &t, err, errlen)))
        return rc;
    size_t lc;
    rc = csvio_col_require(&t, "loss", &lc, err, errlen);
    if (!rc && t.rows > 1)
        rc = csvio_get_double(&t, t.rows - 1, lc, loss, err, errlen);
    csvio_free(&t);
    return rc;
}

int cell_measure(void *ctx, const sweep_spec_t *s, results_cell_t *cell, const char *workdir,
                 volatile sig_atomic_t *stop, results_t *r, char *err, size_t errlen)
{
    (void)ctx;
    int P = s->stages, rc;
    netem_profile_t prof;
    if ((rc = netem_profile_parse(cell->profile, &prof, err, errlen)))
        return rc;
    netem_profile_t links[RESULTS_MAX_STAGES];
    for (int i = 0; i < P; i++)
        links[i] = prof;
    /* Which backend emulates the links: the topology chooses (netem_topo_apply) where
     * there is one; without root there are no namespaces and only the shim can shape. */
    int have_ns = geteuid() == 0 && P > 1;
    const netem_emulator_t *emu = NULL;
    char why[256] = "";
    netem_topo_t *topo = NULL;
    if (have_ns) {
        topo = calloc(1, sizeof *topo);
        if (!topo)
            return -ENOMEM;
        rc = netem_topo_create(topo, P, err, errlen);
        if (!rc)
            rc = netem_topo_apply(topo, links, s->emulator, err, errlen);
        emu = topo->emulator;
    } else {
        const char *asked = strcmp(s->emulator, "auto") ? s->emulator : "shim";
        rc = netem_emulator_choose(asked, links, P > 1 ? P - 1 : 0, &emu, why, sizeof why, err, errlen);
    }
    runcfg_t *cfg = NULL;
    if (!rc && !emu) {
        errf(err, errlen, "internal: no emulator was chosen for %s", cell->profile);
        rc = -EINVAL;
    }
    if (!rc) {
        snprintf(cell->emulator, sizeof cell->emulator, "%s", emu->name);
        if (!(cfg = calloc(1, sizeof *cfg)))
            rc = -ENOMEM;
    }
    if (!rc)
        rc = cell_runcfg(s, cell, P > 1 ? cell->profile : "default", strcmp(emu->name, "none") ? emu->name : "auto",
                         cfg, err, errlen);
    double flop_mb[RESULTS_MAX_STAGES], peak[RESULTS_MAX_STAGES], mem[RESULTS_MAX_STAGES], loss = NAN;
    for (int q = 0; q < P; q++)
        flop_mb[q] = peak[q] = mem[q] = NAN;
    for (int rep = 0; rep < s->repeats && !rc; rep++) {
        rc = run_stages(cfg, topo, strcmp(emu->name, "shim") ? NULL : links, s, workdir, stop, err, errlen);
        if (!rc) {
            char trace[4200];
            snprintf(trace, sizeof trace, "%s/trace.csv", workdir);
            rc = results_trace_read(trace, cell->cell, rep, r, err, errlen);
        }
        if (!rc)
            rc = collect_counters(workdir, P, flop_mb, peak, mem, &loss, err, errlen);
    }
    if (topo) /* restore before anything else can fail or stop */
        netem_topo_destroy(topo);
    free(topo);
    free(cfg);
    if (rc)
        return rc;

    double flop_iter[RESULTS_MAX_STAGES], pk = 0;
    int have_flops = 1;
    for (int q = 0; q < P; q++) {
        flop_iter[q] = flop_mb[q] * cell->micro_batches;
        have_flops &= isfinite(flop_iter[q]) && flop_iter[q] > 0;
        pk = isfinite(peak[q]) && peak[q] > pk ? peak[q] : pk;
        cell->mem_peak[q] = mem[q];
    }
    metrics_params_t mp = {.warmup = s->warmup, .batch_size = s->batch_size, .seq_len = s->seq_len,
                           .flop_per_iter = have_flops ? flop_iter : NULL, .peak_flops = pk};
    if ((rc = metrics_cell_compute(r, &mp, cell, err, errlen)))
        return rc;
    cell->final_loss = loss;
    if ((rc = predict_time(r, cell, s->slack, &prof, &cell->predicted, err, errlen)) ||
        (rc = predict_ideal(r, cell, &prof, &cell->ideal, err, errlen)))
        return rc;
    metrics_straggler(cell->iter_median, cell->ideal, &cell->straggler_delay, &cell->straggler_slowdown);
    return 0;
}

int cell_check(const sweep_spec_t *s, char *err, size_t errlen)
{
    for (int m = 0; m < s->n_mbs; m++) {
        char stages[16], batch[16], mbs[16], seq[16], why[512] = "";
        snprintf(stages, sizeof stages, "%d", s->stages);
        snprintf(batch, sizeof batch, "%d", s->batch_size);
        snprintf(mbs, sizeof mbs, "%d", s->mbs[m]);
        snprintf(seq, sizeof seq, "%d", s->seq_len);
        const struct {
            int opt;
            const char *arg;
        } set[] = {
            {MODEL_OPT_MODEL, s->model},       {MODEL_OPT_SEQ_LEN, seq},          {MODEL_OPT_STAGES, stages},
            {MODEL_OPT_BATCH_SIZE, batch},     {MODEL_OPT_MICRO_BATCH_SIZE, mbs}, {MODEL_OPT_COMPUTE, s->compute},
        };
        model_options_t o;
        model_stage_params_t p;
        model_options_defaults(&o);
        int rc = 0;
        for (size_t i = 0; i < sizeof set / sizeof *set && !rc; i++)
            if (model_options_parse(&o, set[i].opt, set[i].arg, why, sizeof why) != 1)
                rc = -EINVAL;
        if (!rc)
            rc = model_options_finish(&o, &p, why, sizeof why);
        if (rc) {
            snprintf(err, errlen, "micro-batch size %d: %s", s->mbs[m], why);
            return -EINVAL;
        }
    }
    return 0;
}
