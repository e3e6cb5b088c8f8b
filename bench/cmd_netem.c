/* pipenem netem: apply, show and clear a profile on a device, clear everything a crashed
 * run left, probe the kernel's qdiscs, and self-test a profile between two namespaces. */
#include "bench/cli.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "netem/emulator.h"
#include "netem/profile.h"
#include "netem/selftest.h"
#include "netem/state.h"
#include "netem/tc.h"
#include "netem/topo.h"
#include "pipeline/shim.h"
#include "pipeline/transport.h"
#include "pipeline/ucx.h"

#define CMD "netem"

static const char usage[] =
    "usage: pipenem netem apply [--netns NS] DEV PROFILE\n"
    "       pipenem netem show  [--netns NS] DEV\n"
    "       pipenem netem clear [--netns NS] DEV | --all\n"
    "       pipenem netem probe\n"
    "       pipenem netem selftest --net PROFILE [--net PROFILE ...] [--emulator auto|netem|shim] [--ceiling]\n"
    "apply, show, clear, probe and self-test network emulation profiles.\n"
    "PROFILE: default | DELAY/RATE (10ms/1Gbps, 500us/10Gbps) |\n"
    "         delay=10ms,jitter=1ms,loss=0.1%,rate=1gbit,limit=N\n"
    "  apply     put PROFILE on DEV as its root qdisc (netem; TBF for a rate alone); the\n"
    "            original root qdisc is saved first and stays saved after exit\n"
    "  show      read DEV's root qdisc back and print it as a profile\n"
    "  clear     restore DEV's original root qdisc; --all: undo everything recorded by\n"
    "            runs that are gone (after a crash) and by apply\n"
    "  probe     which qdiscs this kernel supports (tried in a scratch namespace)\n"
    "  selftest  two hosts as namespaces: RTT and TCP goodput, configured vs measured;\n"
    "            exit 1 when a judged figure is off by more than 5%\n"
    "options:\n"
    "  -n, --netns NS        the device lives in network namespace NS\n"
    "  -a, --all             (clear) everything in the state files\n"
    "      --net PROFILE     (selftest) a profile to test; repeat for several\n"
    "  -e, --emulator E      (selftest) auto (default), netem or shim\n"
    "      --ceiling         (selftest) also measure the unshaped goodput\n"
    "  -h, --help\n"
    "state files: $PIPENEM_STATE_DIR or /run/pipenem\n";

/* ---- the shim's meter: the pipeline transport (UCX over TCP on each host's veth)
 * wrapped in the shim, one forked process per host, as `pipenem run` places stages ---- */

#define SHIM_BULK (4u << 20)   /* bytes per bulk message */
#define SHIM_DEPTH 8           /* bulk messages in flight */
#define SHIM_WINDOWS 6
#define SHIM_TIMEOUT 120.0     /* seconds: a meter that hangs is killed */

typedef struct {
    int mode;                  /* 0 round trips, 1 bulk */
    int n;                     /* round trips */
    double warm, win;          /* bulk */
    netem_profile_t link;
} shim_job_t;

static int fdprintf_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fdprintf_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -EIO;
}

static int full_write(int fd, const void *b, size_t n)
{
    for (size_t d = 0; d < n;) {
        ssize_t r = write(fd, (const char *)b + d, n - d);
        if (r <= 0)
            return -1;
        d += (size_t)r;
    }
    return 0;
}

static int full_read(int fd, void *b, size_t n)
{
    for (size_t d = 0; d < n;) {
        ssize_t r = read(fd, (char *)b + d, n - d);
        if (r <= 0)
            return -1;
        d += (size_t)r;
    }
    return 0;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Round trips from rank 0: an activation out, a gradient back, 64 bytes each. */
static int shim_rtt(transport_t *t, int rank, int n, double res[2], char *err, size_t errlen)
{
    char buf[64] = {0};
    double *s = rank == 0 ? calloc((size_t)n, sizeof *s) : NULL;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        transport_req_t a, b;
        transport_key_t ka = {TRANSPORT_ACT, i, 0}, kg = {TRANSPORT_GRAD, i, 0};
        if (rank == 0) {
            double t0 = pn_now();
            if ((rc = transport_recv(t, 1, kg, buf, sizeof buf, &b)) == 0 &&
                (rc = transport_send(t, 1, ka, buf, sizeof buf, &a)) == 0 &&
                (rc = transport_wait(t, &b, 30)) == 0)
                s[i] = pn_now() - t0;
            if (rc == 0)
                rc = transport_wait(t, &a, 30);
        } else {
            if ((rc = transport_recv(t, 0, ka, buf, sizeof buf, &a)) == 0 && (rc = transport_wait(t, &a, 30)) == 0 &&
                (rc = transport_send(t, 0, kg, buf, sizeof buf, &b)) == 0)
                rc = transport_wait(t, &b, 30);
        }
    }
    if (rc)
        fdprintf_err(err, errlen, "round trip over the shim: %s", strerror(-rc));
    else if (rank == 0) {
        qsort(s, (size_t)n, sizeof *s, cmp_dbl);
        res[0] = s[0];
        res[1] = s[n / 2];
    }
    free(s);
    return rc;
}

/* Bulk from rank 0 to rank 1 until rank 0's deadline, then a gradient carrying the count;
 * rank 1 times each completion and reports the median and mean of its windows. */
static int shim_bulk(transport_t *t, int rank, double warm, double win, double res[2], char *err,
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
        fdprintf_err(err, errlen, "bulk over the shim ended before %d windows of %.2f s", SHIM_WINDOWS, win);
    else if (rc)
        fdprintf_err(err, errlen, "bulk over the shim: %s", strerror(-rc));
    return rc;
}

/* One rank, in its host's namespace: transport up, blobs swapped through the pipes, the
 * job, results (two doubles, or an error text) written to res_fd. */
static void shim_rank(const netem_topo_t *topo, int rank, const shim_job_t *job, int to_peer, int from_peer,
                      int res_fd)
{
    char err[384] = "";
    transport_t raw = {0}, t = {0};
    double res[2] = {0}, zero = 0;
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
    if ((rc = t.ops->address(t.impl, &blob, &len)) != 0 || full_write(to_peer, &len, sizeof len) ||
        full_write(to_peer, blob, len) || full_read(from_peer, &plen, sizeof plen) || plen > sizeof peer ||
        full_read(from_peer, peer, plen)) {
        snprintf(err, sizeof err, "exchanging transport addresses failed");
        rc = -EIO;
        goto close;
    }
    if ((rc = t.ops->connect(t.impl, 1 - rank, peer, plen, err, sizeof err)) != 0)
        goto close;
    rc = job->mode == 0 ? shim_rtt(&t, rank, job->n, res, err, sizeof err)
                        : shim_bulk(&t, rank, job->warm, job->win, res, err, sizeof err);
    /* Neither rank goes away before both are done: a peer leaving early would fail the
     * receives the shim still holds back for their delivery time. The barrier goes over
     * the pipes, not the transport, so no message is left in flight when the sockets close
     * (a close with unread data resets the connection under the peer's last receive). */
    if (rc == 0) {
        char byte = 0;
        if (full_write(to_peer, &byte, 1) || full_read(from_peer, &byte, 1)) {
            snprintf(err, sizeof err, "closing barrier: the other rank is gone");
            rc = -EPIPE;
        }
    }
close:
    transport_quiesce(&t);
    transport_destroy(&t);
out:
    if (rc == 0 && ((job->mode == 0 && rank == 0) || (job->mode == 1 && rank == 1)))
        (void)full_write(res_fd, res, sizeof res);
    else if (rc)
        (void)full_write(res_fd, err, strlen(err) + 1);
    _exit(rc ? 1 : 0);
}

static int shim_job(const netem_topo_t *topo, const shim_job_t *job, double res[2], char *err, size_t errlen)
{
    int p01[2], p10[2], rp[2][2];
    pid_t pid[2] = {-1, -1};
    if (pipe(p01) || pipe(p10) || pipe(rp[0]) || pipe(rp[1]))
        return fdprintf_err(err, errlen, "pipe: %s", strerror(errno));
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
        return fdprintf_err(err, errlen, "shim meter: no answer within %.0f s, ranks killed", SHIM_TIMEOUT);
    for (int r = 0; r < 2; r++) {
        if (pid[r] > 0 && WIFEXITED(st[r]) && WEXITSTATUS(st[r]) == 0)
            continue;
        buf[r][got[r]] = '\0';
        return fdprintf_err(err, errlen, "shim meter: rank %d (%s): %s", r, netem_topo_host_ns(topo, r),
                            pid[r] < 0 ? "fork failed" : got[r] ? buf[r] : "died without a word");
    }
    int r = job->mode == 0 ? 0 : 1;   /* the rank that measures */
    if (got[r] != sizeof(double) * 2)
        return fdprintf_err(err, errlen, "shim meter: rank %d sent %zu bytes of results, not %zu", r, got[r],
                            sizeof(double) * 2);
    memcpy(res, buf[r], sizeof(double) * 2);
    return 0;
}

static int shim_meter_rtt(const netem_topo_t *t, const netem_profile_t *p, int n, double *min, double *median,
                          char *err, size_t errlen)
{
    shim_job_t job = {.mode = 0, .n = n, .link = *p};
    double res[2];
    int rc = shim_job(t, &job, res, err, errlen);
    if (rc == 0) {
        *min = res[0];
        *median = res[1];
    }
    return rc;
}

static int shim_meter_goodput(const netem_topo_t *t, const netem_profile_t *p, double warm, double win,
                              double *median, double *mean, char *err, size_t errlen)
{
    shim_job_t job = {.mode = 1, .warm = warm, .win = win, .link = *p};
    double res[2];
    int rc = shim_job(t, &job, res, err, errlen);
    if (rc == 0) {
        *median = res[0];
        *mean = res[1];
    }
    return rc;
}

static const netem_selftest_meter_t shim_meter = {"ucx+shim", 0, shim_meter_rtt, shim_meter_goodput};

static int runtime_error(const char *msg)
{
    fprintf(stderr, "pipenem netem: %s\n", msg);
    return CLI_FAIL;
}

static int do_apply(const char *ns, int argc, char **argv)
{
    char err[512], text[256];
    netem_profile_t p;
    netem_dev_t d;
    netem_tc_applied_t a;
    if (argc != 2)
        return cli_usage_error(CMD, "apply needs DEV and PROFILE (got %d argument%s)", argc, argc == 1 ? "" : "s");
    if (netem_dev_init(&d, ns, argv[0], err, sizeof err) < 0)
        return cli_usage_error(CMD, "%s", err);
    if (netem_profile_parse(argv[1], &p, err, sizeof err) < 0)
        return cli_usage_error(CMD, "%s", err);
    if (netem_tc_apply(&d, &p, NETEM_TC_PERSIST, &a, err, sizeof err) < 0)
        return runtime_error(err);
    netem_profile_format(&p, text, sizeof text);
    printf("# pipenem netem apply: %s%s%s <- %s\n", ns ? ns : "", ns ? "/" : "", d.ifname, text);
    if (a.kind == NETEM_QDISC_NETEM)
        printf("# qdisc netem, limit %u packets%s\n", a.limit,
               a.limit_derived ? " (derived: 2 x rate x (delay + jitter) / 1514 B + 1000)" : " (given)");
    else if (a.kind == NETEM_QDISC_TBF)
        printf("# qdisc tbf, burst %u bytes, queue limit %u bytes (20 ms at the rate + burst)\n",
               a.burst, a.limit);
    else
        printf("# default: original root qdisc restored\n");
    printf("# original root qdisc recorded in %s; `pipenem netem clear %s%s%s%s` restores it\n",
           netem_state_dir(), ns ? "--netns " : "", ns ? ns : "", ns ? " " : "", d.ifname);
    printf("# OK\n");
    return CLI_OK;
}

static int do_show(const char *ns, int argc, char **argv)
{
    char err[512], kind[32], text[256];
    netem_profile_t p;
    netem_dev_t d;
    uint32_t limit;
    if (argc != 1)
        return cli_usage_error(CMD, "show needs exactly one DEV");
    if (netem_dev_init(&d, ns, argv[0], err, sizeof err) < 0)
        return cli_usage_error(CMD, "%s", err);
    if (netem_tc_show(&d, &p, kind, sizeof kind, &limit, err, sizeof err) < 0)
        return runtime_error(err);
    printf("# %-16s %-8s %-24s %s\n", "device", "qdisc", "profile", "limit");
    static const char *const kernel_defaults[] = {"noqueue", "mq", "pfifo_fast", "fq_codel", "noop", "none"};
    snprintf(text, sizeof text, "-");   /* someone else's qdisc: no profile of ours */
    if (!strcmp(kind, "netem") || !strcmp(kind, "tbf"))
        netem_profile_format(&p, text, sizeof text);
    for (size_t i = 0; i < sizeof kernel_defaults / sizeof *kernel_defaults; i++)
        if (!strcmp(kind, kernel_defaults[i]))
            snprintf(text, sizeof text, "default");
    printf("  %-16s %-8s %-24s %u%s\n", d.ifname, kind, text, limit,
           !strcmp(kind, "tbf") ? " bytes" : !strcmp(kind, "netem") ? " packets" : "");
    if (!strcmp(kind, "htb")) {   /* perhaps a per-source tree of ours */
        netem_tc_class_t cl[16];
        int n = 0;
        if (netem_tc_show_by_source(&d, cl, 16, &n, err, sizeof err) < 0)
            return runtime_error(err);
        for (int i = 0; i < n; i++) {
            netem_profile_format(&cl[i].profile, text, sizeof text);
            printf("  %-16s %-8s %-24s from %s\n", d.ifname, cl[i].kind, text, cl[i].src);
        }
    }
    return CLI_OK;
}

static void log_line(const char *line, void *arg)
{
    (void)arg;
    printf("  %s\n", line);
}

static int do_clear(const char *ns, int all, int argc, char **argv)
{
    char err[512];
    if (all) {
        if (argc || ns)
            return cli_usage_error(CMD, "clear --all takes no device or --netns");
        int undone = 0, live = 0;
        printf("# pipenem netem clear --all: state files in %s\n", netem_state_dir());
        int rc = netem_state_undo_all(&undone, &live, log_line, NULL, err, sizeof err);
        printf("# undone %d record%s, %d live run%s left alone\n", undone, undone == 1 ? "" : "s",
               live, live == 1 ? "" : "s");
        if (rc < 0)
            return runtime_error(err);
        printf("# OK\n");
        return CLI_OK;
    }
    if (argc != 1)
        return cli_usage_error(CMD, "clear needs exactly one DEV, or --all");
    netem_dev_t d;
    if (netem_dev_init(&d, ns, argv[0], err, sizeof err) < 0)
        return cli_usage_error(CMD, "%s", err);
    netem_state_entry_t e;
    if (!netem_state_find_qdisc(&d, &e)) {
        printf("# %s: nothing recorded, left as it is\n# OK\n", d.ifname);
        return CLI_OK;
    }
    if (netem_tc_clear(&d, err, sizeof err) < 0)
        return runtime_error(err);
    printf("# %s: %s root qdisc restored\n# OK\n", d.ifname,
           e.saved.is_default ? "default" : e.saved.kind);
    return CLI_OK;
}

static int do_probe(int argc)
{
    char err[512];
    netem_tc_probe_t pr;
    if (argc)
        return cli_usage_error(CMD, "probe takes no arguments");
    if (netem_tc_probe(&pr, err, sizeof err) < 0)
        return runtime_error(err);
    printf("# pipenem netem probe: qdiscs tried on a veth in a scratch namespace\n");
    printf("# %-10s %-10s %s\n", "qdisc", "supported", "detail");
    for (int i = 0; i < NETEM_TC_PROBE_KINDS; i++)
        printf("  %-10s %-10s %s\n", pr.rows[i].kind, pr.rows[i].rc == 0 ? "yes" : "no",
               pr.rows[i].rc == 0 ? "" : strerror(-pr.rows[i].rc));
    printf("# may change qdiscs here: %s\n", pr.may_change ? "yes (CAP_NET_ADMIN)" : "no");
    int netem = pr.rows[0].rc == 0, tbf = pr.rows[1].rc == 0;
    printf("# emulators: netem %s, shim yes (no kernel support needed)\n",
           netem ? "yes" : tbf ? "rate only (TBF; delay needs the shim)" : "no");
    printf("# OK\n");
    return CLI_OK;
}

static int do_selftest(char **nets, int nnets, const char *emulator, int ceiling, int argc)
{
    char err[512];
    netem_profile_t prof[16];
    if (argc)
        return cli_usage_error(CMD, "selftest takes no positional arguments");
    if (nnets == 0)
        return cli_usage_error(CMD, "selftest needs --net PROFILE");
    for (int i = 0; i < nnets; i++)
        if (netem_profile_parse(nets[i], &prof[i], err, sizeof err) < 0)
            return cli_usage_error(CMD, "--net: %s", err);
    if (strcmp(emulator, "auto") && !netem_emulator_find(emulator))
        return cli_usage_error(CMD, "unknown emulator '%s' (%s)", emulator, netem_emulator_names());
    netem_topo_t t;
    if (netem_topo_create(&t, 2, err, sizeof err) < 0)
        return runtime_error(err);
    int failed = 0, rc = 0;
    printf("# pipenem netem selftest: %s (%s) -> %s (%s), TCP, tolerance %.0f%%\n",
           netem_topo_host_ns(&t, 0), netem_topo_host_addr(&t, 0), netem_topo_host_ns(&t, 1),
           netem_topo_host_addr(&t, 1), NETEM_SELFTEST_TOLERANCE * 100);
    printf("# rtt: small-message round trips; configured = 2 x delay + unshaped base (minimum) for kernel\n"
           "#   qdiscs, max(2 x delay, base) for the shim (its delay hides the real path);\n"
           "#   measured = minimum (median when the profile has jitter): the excess of single round\n"
           "#   trips over a constant delay is scheduling noise of the measuring host, shown as rtt_med\n");
    printf("# goodput: one TCP stream after slow start, median of 6 windows of 0.5 s (robust to a busy\n"
           "#   host's stalls; gp_mean is all six); expected = rate x 1448/1514 = %.2f%% of the rate\n"
           "#   (MTU 1500: IPv4+TCP+timestamps 52 B per packet, Ethernet 14 B counted by the qdisc)\n",
           netem_profile_goodput(1.0, 1500) * 100);
    printf("# %-22s %-8s %9s %9s %9s %9s %7s %9s %9s %9s %9s %7s  %s\n", "profile", "emulator", "rtt_base",
           "rtt_cfg", "rtt_meas", "rtt_med", "rtt_err", "rate", "gp_exp", "gp_meas", "gp_mean", "gp_err", "verdict");
    printf("# %-22s %-8s %9s %9s %9s %9s %7s %9s %9s %9s %9s %7s\n", "", "", "(ms)", "(ms)", "(ms)", "(ms)",
           "(%)", "(Gbit/s)", "(Gbit/s)", "(Gbit/s)", "(Gbit/s)", "(%)");
    for (int i = 0; i < nnets; i++) {
        netem_selftest_result_t r;
        char text[128];
        netem_profile_format(&prof[i], text, sizeof text);
        if (netem_selftest_run(&t, &prof[i], emulator, ceiling, &shim_meter, &r, err, sizeof err) < 0) {
            fprintf(stderr, "pipenem netem: selftest %s: %s\n", text, err);
            rc = 1;
            failed++;
            continue;
        }
        if (i == 0 || ceiling)
            printf("# emulator %s (%s), measured over %s%s", r.emulator, r.why, r.meter, ceiling ? "" : "\n");
        if (ceiling)
            printf("; unshaped goodput ceiling %.3f Gbit/s\n", r.ceiling / 1e9);
        const char *verdict = (!r.rtt_judged && !r.goodput_judged) ? "not-judged"
                              : r.ok ? "ok" : r.host_limited ? "FAILED(host)" : "FAILED";
        printf("  %-22s %-8s %9.3f %9.3f %9.3f %9.3f %7.2f %9.3f %9.3f %9.3f %9.3f %7.2f  %s\n", text, r.emulator,
               r.rtt_base * 1e3, r.rtt_configured * 1e3, r.rtt_measured * 1e3, r.rtt_median * 1e3,
               r.rtt_judged ? r.rtt_err * 100 : 0.0, prof[i].rate / 1e9, r.goodput_expected / 1e9,
               r.goodput_measured / 1e9, r.goodput_mean / 1e9, r.goodput_judged ? r.goodput_err * 100 : 0.0, verdict);
        if (r.host_limited)
            printf("#   %s: this host carries only %.3f Gbit/s unshaped, below the expected %.3f: "
                   "the shortfall is the host's (too slow or busy), not the emulator's\n", text,
                   r.ceiling / 1e9, r.goodput_expected / 1e9);
        fflush(stdout);
        failed += !r.ok;
    }
    netem_topo_destroy(&t);
    printf("# %s\n", failed ? "FAILED" : "OK");
    return failed || rc ? CLI_FAIL : CLI_OK;
}

int cmd_netem(int argc, char **argv)
{
    static const struct option opts[] = {
        {"netns", required_argument, NULL, 'n'}, {"all", no_argument, NULL, 'a'},
        {"net", required_argument, NULL, 'N'},   {"emulator", required_argument, NULL, 'e'},
        {"ceiling", no_argument, NULL, 'C'},     {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *ns = NULL, *emulator = "auto";
    char *nets[16];
    int nnets = 0, all = 0, ceiling = 0, c;
    optind = 1;
    while ((c = cli_getopt(CMD, argc, argv, "n:ae:h", opts)) != -1) {
        switch (c) {
        case 'n': ns = optarg; break;
        case 'a': all = 1; break;
        case 'e': emulator = optarg; break;
        case 'C': ceiling = 1; break;
        case 'N':
            if (nnets == 16)
                return cli_usage_error(CMD, "at most 16 --net profiles");
            nets[nnets++] = optarg;
            break;
        case 'h': fputs(usage, stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (optind >= argc)
        return cli_usage_error(CMD, "missing action (apply, show, clear, probe, selftest)");
    const char *act = argv[optind];
    int rest = argc - optind - 1;
    char **rv = argv + optind + 1;
    int is_selftest = !strcmp(act, "selftest"), is_clear = !strcmp(act, "clear");
    if (!is_selftest && (nnets || ceiling || strcmp(emulator, "auto")))
        return cli_usage_error(CMD, "--net, --emulator and --ceiling belong to selftest, not %s", act);
    if (!is_clear && all)
        return cli_usage_error(CMD, "--all belongs to clear, not %s", act);
    if ((is_selftest || !strcmp(act, "probe")) && ns)
        return cli_usage_error(CMD, "--netns does not apply to %s", act);
    if (netem_state_guard_start() < 0)
        return runtime_error("cannot start the signal guard");
    if (!strcmp(act, "apply"))
        return do_apply(ns, rest, rv);
    if (!strcmp(act, "show"))
        return do_show(ns, rest, rv);
    if (is_clear)
        return do_clear(ns, all, rest, rv);
    if (!strcmp(act, "probe"))
        return do_probe(rest);
    if (is_selftest)
        return do_selftest(nets, nnets, emulator, ceiling, rest);
    return cli_usage_error(CMD, "unknown action '%s' (apply, show, clear, probe, selftest)", act);
}
