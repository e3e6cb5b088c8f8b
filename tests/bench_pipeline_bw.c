/* Bandwidth of 25 MB tensors between two stage processes through the pipeline transport
 * (receives posted ahead into a ring, as the executor does), against `ucx_perftest -t
 * tag_bw` on the same path measured in the same run. Target: at least 80%. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pipeline/boot.h"
#include "pipeline/transport.h"
#include "pipeline/ucx.h"

enum { BYTES = 25 * 1024 * 1024 / 4 * 4, WARM = 3, N = 40, W = 4 };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int rank_main(int rank, int lfd, int port, const char *tls, const char *dev, double *mbps)
{
    char err[512];
    transport_t t = {0};
    boot_t *b = NULL;
    ucx_params_t up = {.rank = rank, .size = 2, .tls = tls, .net_devices = dev};
    int rc = ucx_transport_open(&up, &t, err, sizeof err);
    const void *blob;
    size_t bl;
    if (!rc) {
        t.ops->address(t.impl, &blob, &bl);
        boot_params_t bp = {.rank = rank, .size = 2, .port = port, .listen_fd = rank == 0 ? lfd : -1, .token = "bw",
                            .config_hash = 1, .timeout = 30};
        snprintf(bp.host, sizeof bp.host, "127.0.0.1");
        rc = boot_open(&bp, blob, bl, &b, err, sizeof err);
    }
    if (!rc) {
        const void *pb = boot_blob(b, 1 - rank, &bl);
        rc = t.ops->connect(t.impl, 1 - rank, pb, bl, err, sizeof err);
    }
    float *buf[W];
    transport_req_t req[W];
    for (int i = 0; i < W; i++) {
        buf[i] = aligned_alloc(64, BYTES);
        memset(buf[i], rank + 1, BYTES);
    }
    double t0 = 0;
    int total = WARM + N;
    for (int k = 0; k < total && !rc; k++) {
        int s = k % W;
        if (k >= W && (rc = transport_wait(&t, &req[s], 60)))
            break;
        if (rank == 1 && k >= W && k - W == WARM - 1)
            t0 = now(); /* the warm-up messages have all arrived */
        transport_key_t key = {TRANSPORT_ACT, k, 0};
        rc = rank == 0 ? transport_send(&t, 1, key, buf[s], BYTES, &req[s]) : transport_recv(&t, 0, key, buf[s], BYTES, &req[s]);
    }
    for (int k = total - W; k < total && !rc; k++)
        rc = transport_wait(&t, &req[k % W], 60);
    if (!rc && rank == 1)
        *mbps = (double)(N - (W > WARM ? W - WARM : 0)) * BYTES / 1048576.0 / (now() - t0);
    if (rc && !err[0])
        snprintf(err, sizeof err, "%s", strerror(-rc));
    if (!rc)
        rc = boot_finish(b, NULL, 0, 30, err, sizeof err);
    if (rc)
        fprintf(stderr, "rank %d: %s\n", rank, err);
    transport_quiesce(&t);
    transport_destroy(&t);
    boot_close(b);
    for (int i = 0; i < W; i++)
        free(buf[i]);
    return rc ? 1 : 0;
}

static double pipeline_bw(const char *tls, const char *dev)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 4) ||
        getsockname(lfd, (struct sockaddr *)&a, &al))
        return -1;
    double *mbps = mmap(NULL, sizeof *mbps, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    *mbps = -1;
    pid_t pid[2];
    for (int r = 0; r < 2; r++)
        if ((pid[r] = fork()) == 0)
            _exit(rank_main(r, lfd, ntohs(a.sin_port), tls, dev, mbps));
    close(lfd);
    int bad = 0;
    for (int r = 0; r < 2; r++) {
        int st;
        waitpid(pid[r], &st, 0);
        bad |= !WIFEXITED(st) || WEXITSTATUS(st);
    }
    double v = bad ? -1 : *mbps;
    munmap(mbps, sizeof *mbps);
    return v;
}

/* ucx_perftest tag_bw with the same message size and transports: MB/s, or -1. */
static double perftest_bw(const char *tls, const char *dev)
{
    char env[256], cmd[1024];
    int port = 20000 + getpid() % 20000;
    snprintf(env, sizeof env, "%s%s%s%s", tls ? "UCX_TLS=" : "", tls ? tls : "", dev ? " UCX_NET_DEVICES=" : "",
             dev ? dev : "");
    snprintf(cmd, sizeof cmd,
             "%s ucx_perftest -p %d >/dev/null 2>&1 & srv=$!; sleep 0.5; "
             "%s timeout 120 ucx_perftest 127.0.0.1 -p %d -t tag_bw -s %d -n %d 2>&1 | awk '/^Final:/ {print $6}'; "
             "wait $srv",
             env, port, env, port, BYTES, WARM + N);
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    double v = -1;
    if (fscanf(f, "%lf", &v) != 1)
        v = -1;
    pclose(f);
    return v;
}

int main(void)
{
    static const char *const paths[][3] = {{"UCX defaults", NULL, NULL}, {"tcp over lo", "tcp", "lo"}};
    int failed = 0;
    if (system("command -v ucx_perftest >/dev/null") != 0) {
        printf("SKIP: ucx_perftest is not installed (package ucx-utils)\n");
        return 0;
    }
    printf("# 25 MB tensors between two processes: pipeline transport vs ucx_perftest -t tag_bw\n");
    printf("#  %-14s %14s %14s %8s %8s\n", "path", "pipeline", "ucx_perftest", "ratio", "target");
    printf("#  %-14s %14s %14s %8s %8s\n", "", "(MB/s)", "(MB/s)", "", "");
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        double ref = perftest_bw(paths[i][1], paths[i][2]);
        double got = pipeline_bw(paths[i][1], paths[i][2]);
        /* measured twice, best of each: the machine is shared and timings are noisy */
        double ref2 = perftest_bw(paths[i][1], paths[i][2]);
        double got2 = pipeline_bw(paths[i][1], paths[i][2]);
        if (ref2 > ref)
            ref = ref2;
        if (got2 > got)
            got = got2;
        double ratio = ref > 0 && got > 0 ? got / ref : 0;
        int ok = ratio >= 0.8;
        failed += !ok;
        printf("   %-14s %14.1f %14.1f %8.3f %8s %s\n", paths[i][0], got, ref, ratio, ">=0.80", ok ? "ok" : "MISSED");
    }
    printf("# %s\n", failed ? "FAILED" : "OK");
    return failed ? 1 : 0;
}
