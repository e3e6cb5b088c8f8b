/* The UCX transport across processes, bootstrapped by the rendezvous: over UCX's own
 * choice, over TCP on loopback, and over TCP on a veth pair between two network
 * namespaces, where the interface byte counters prove the tensors crossed that link
 * (UCX would otherwise take shared memory and bypass it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pipeline/boot.h"
#include "pipeline/ctrl.h"
#include "pipeline/transport.h"
#include "pipeline/ucx.h"
#include "tests/testutil.h"

enum { BYTES = 25 << 20, ROUNDS = 2 };

typedef struct {
    int rc;
    unsigned long long wrong;
    unsigned long long if_rx0, if_tx0, if_rx1, if_tx1; /* the interface's counters, inside its namespace */
    char err[512];
} result_t;

typedef struct {
    const char *tls, *dev;      /* UCX forcing, NULL = UCX's choice */
    const char *ns[2];          /* namespace per rank, NULL = this one */
    const char *ifname[2];      /* interface whose counters to read */
    char host[64];
    int port;
    result_t *res;
} job_t;

/* rx and tx bytes of ifname in the calling process's network namespace. */
static int if_bytes(const char *ifname, unsigned long long *rx, unsigned long long *tx)
{
    FILE *f = fopen("/proc/self/net/dev", "r");
    if (!f)
        return -1;
    char line[512];
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        *colon = '\0';
        char *name = line + strspn(line, " ");
        if (strcmp(name, ifname))
            continue;
        unsigned long long v[16];
        if (sscanf(colon + 1, "%llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                   &v[5], &v[6], &v[7], &v[8]) == 9) {
            *rx = v[0];
            *tx = v[8];
            found = 0;
        }
    }
    fclose(f);
    return found;
}

static int enter_ns(const char *ns)
{
    char path[256];
    snprintf(path, sizeof path, "/run/netns/%s", ns);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = setns(fd, CLONE_NEWNET);
    close(fd);
    if (rc)
        return -errno;
    /* UCX finds interfaces through /sys/class/net, which shows the namespace of whoever
     * mounted sysfs: remount it privately, as `ip netns exec` does. */
    if (unshare(CLONE_NEWNS) || mount("", "/", NULL, MS_SLAVE | MS_REC, NULL) ||
        umount2("/sys", MNT_DETACH) || mount("sysfs", "/sys", "sysfs", 0, NULL))
        return -errno;
    return 0;
}

static int rank_main(job_t *j, int rank)
{
    result_t *res = &j->res[rank];
    if (j->ns[rank] && (res->rc = enter_ns(j->ns[rank])) != 0) {
        snprintf(res->err, sizeof res->err, "setns %s: %s", j->ns[rank], strerror(-res->rc));
        return 1;
    }
    char err[512];
    transport_t t = {0};
    boot_t *b = NULL;
    float *buf = malloc(BYTES), *in = malloc(BYTES);
    ucx_params_t up = {.rank = rank, .size = 2, .tls = j->tls, .net_devices = j->dev};
    int rc = ucx_transport_open(&up, &t, err, sizeof err);
    if (rc)
        goto out;
    const void *blob;
    size_t bl;
    t.ops->address(t.impl, &blob, &bl);
    boot_params_t bp = {.rank = rank, .size = 2, .port = j->port, .listen_fd = -1, .token = "x", .config_hash = 1,
                        .timeout = 20};
    snprintf(bp.host, sizeof bp.host, "%s", j->host);
    if ((rc = boot_open(&bp, blob, bl, &b, err, sizeof err)) != 0)
        goto out;
    int peer = 1 - rank;
    const void *pb = boot_blob(b, peer, &bl);
    if ((rc = t.ops->connect(t.impl, peer, pb, bl, err, sizeof err)) != 0)
        goto out;
    if (j->ifname[rank])
        if_bytes(j->ifname[rank], &res->if_rx0, &res->if_tx0);
    size_t n = BYTES / sizeof(float);
    for (int round = 0; round < ROUNDS && !rc; round++) {
        /* rank 0 sends an activation, rank 1 answers with a gradient */
        transport_req_t s, r;
        transport_key_t ka = {TRANSPORT_ACT, round, 0}, kg = {TRANSPORT_GRAD, round, 0};
        if (rank == 0) {
            for (size_t i = 0; i < n; i++)
                buf[i] = (float)(i % 4093) + (float)round;
            if ((rc = transport_recv(&t, 1, kg, in, BYTES, &r)) || (rc = transport_send(&t, 1, ka, buf, BYTES, &s)) ||
                (rc = transport_wait(&t, &s, 30)) || (rc = transport_wait(&t, &r, 30)))
                break;
            for (size_t i = 0; i < n; i++)
                res->wrong += in[i] != -((float)(i % 4093) + (float)round);
        } else {
            if ((rc = transport_recv(&t, 0, ka, in, BYTES, &r)) || (rc = transport_wait(&t, &r, 30)))
                break;
            for (size_t i = 0; i < n; i++) {
                res->wrong += in[i] != (float)(i % 4093) + (float)round;
                buf[i] = -in[i];
            }
            if ((rc = transport_send(&t, 0, kg, buf, BYTES, &s)) || (rc = transport_wait(&t, &s, 30)))
                break;
        }
    }
    if (rc)
        snprintf(err, sizeof err, "transfer failed: %s", strerror(-rc));
    /* After the barrier: a send completes once its bytes are in the socket buffer, before
     * the interface has carried them; the peer has received them by now. */
    if (!rc)
        rc = ctrl_finish(b, NULL, 0, 30, err, sizeof err);
    if (j->ifname[rank])
        if_bytes(j->ifname[rank], &res->if_rx1, &res->if_tx1);
    transport_quiesce(&t);
out:
    transport_destroy(&t);
    boot_close(b);
    free(buf);
    free(in);
    res->rc = rc;
    if (rc)
        snprintf(res->err, sizeof res->err, "%s", err);
    return rc ? 1 : 0;
}

static void job_run(job_t *j)
{
    j->res = mmap(NULL, 2 * sizeof(result_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(j->res != MAP_FAILED);
    memset(j->res, 0, 2 * sizeof(result_t));
    if (!j->port)
        j->port = 20000 + (getpid() % 20000);
    pid_t pids[2];
    for (int r = 0; r < 2; r++) {
        pids[r] = fork();
        assert_true(pids[r] >= 0);
        if (pids[r] == 0)
            _exit(rank_main(j, r));
    }
    int bad = 0;
    for (int r = 0; r < 2; r++) {
        int s;
        waitpid(pids[r], &s, 0);
        result_t *x = &j->res[r];
        print_message("rank %d: exit %d, %llu wrong floats (tolerance 0), %s rx +%llu tx +%llu bytes %s\n", r,
                      WIFEXITED(s) ? WEXITSTATUS(s) : -1, x->wrong, j->ifname[r] ? j->ifname[r] : "-",
                      x->if_rx1 - x->if_rx0, x->if_tx1 - x->if_tx0, x->err);
        bad |= !WIFEXITED(s) || WEXITSTATUS(s) || x->wrong;
    }
    if (bad)
        fail_msg("a rank failed");
}

static void test_ucx_default(void **state)
{
    (void)state;
    job_t j = {.host = "127.0.0.1"};
    job_run(&j);
    munmap(j.res, 2 * sizeof(result_t));
}

static void test_tcp_loopback_counters(void **state)
{
    (void)state;
    job_t j = {.tls = "tcp", .dev = "lo", .ifname = {"lo", NULL}, .host = "127.0.0.1"};
    job_run(&j);
    unsigned long long tx = j.res[0].if_tx1 - j.res[0].if_tx0;
    unsigned long long need = 2ull * ROUNDS * BYTES;
    print_message("lo carried %llu bytes during the transfers, payload %llu (must be >=)\n", tx, need);
    assert_true(tx >= need);
    munmap(j.res, 2 * sizeof(result_t));
}

/* ---- two namespaces joined by a veth pair ---- */

static char ns_a[32], ns_b[32], veth_a[16], veth_b[16];
static int ns_made;

static void ns_cleanup(void)
{
    char cmd[256];
    if (!ns_made)
        return;
    snprintf(cmd, sizeof cmd, "ip netns del %s 2>/dev/null; ip netns del %s 2>/dev/null", ns_a, ns_b);
    if (system(cmd)) {
        /* already gone */
    }
    ns_made = 0;
}

static void on_signal(int sig)
{
    ns_cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void test_tcp_veth_counters(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        print_message("SKIP: needs root to create network namespaces\n");
        skip();
    }
    int id = getpid();
    snprintf(ns_a, sizeof ns_a, "pn%d-xa", id);
    snprintf(ns_b, sizeof ns_b, "pn%d-xb", id);
    snprintf(veth_a, sizeof veth_a, "pn%da", id % 100000);
    snprintf(veth_b, sizeof veth_b, "pn%db", id % 100000);
    atexit(ns_cleanup);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    char cmd[1024];
    ns_made = 1;
    snprintf(cmd, sizeof cmd,
             "set -e; ip netns add %1$s; ip netns add %2$s; ip link add %3$s type veth peer name %4$s;"
             "ip link set %3$s netns %1$s; ip link set %4$s netns %2$s;"
             "ip -n %1$s addr add 198.18.200.1/24 dev %3$s; ip -n %2$s addr add 198.18.200.2/24 dev %4$s;"
             "ip -n %1$s link set %3$s up; ip -n %2$s link set %4$s up;"
             "ip -n %1$s link set lo up; ip -n %2$s link set lo up",
             ns_a, ns_b, veth_a, veth_b);
    if (system(cmd) != 0) {
        ns_cleanup();
        print_message("SKIP: cannot create namespaces and a veth pair (%s)\n", cmd);
        skip();
    }
    job_t j = {.tls = "tcp", .ns = {ns_a, ns_b}, .ifname = {veth_a, veth_b}, .host = "198.18.200.1"};
    /* Both ranks run the same code; UCX_NET_DEVICES lists both names, each side finds its own. */
    char both[40];
    snprintf(both, sizeof both, "%s,%s", veth_a, veth_b);
    j.dev = both;
    job_run(&j);
    unsigned long long a_tx = j.res[0].if_tx1 - j.res[0].if_tx0, b_rx = j.res[1].if_rx1 - j.res[1].if_rx0;
    unsigned long long b_tx = j.res[1].if_tx1 - j.res[1].if_tx0, a_rx = j.res[0].if_rx1 - j.res[0].if_rx0;
    unsigned long long need = 1ull * ROUNDS * BYTES;
    print_message("veth %s tx +%llu rx +%llu, %s tx +%llu rx +%llu bytes; payload each way %llu (each must be >=)\n",
                  veth_a, a_tx, a_rx, veth_b, b_tx, b_rx, need);
    munmap(j.res, 2 * sizeof(result_t));
    ns_cleanup();
    assert_true(a_tx >= need && b_rx >= need && b_tx >= need && a_rx >= need);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ucx_default),
        cmocka_unit_test(test_tcp_loopback_counters),
        cmocka_unit_test(test_tcp_veth_counters),
    };
    return cmocka_run_group_tests_name("pipeline transport across processes", tests, NULL, NULL);
}
