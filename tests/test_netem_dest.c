/* Per-destination shaping of a real host (netem_tc_apply_by_dest, `netem apply --to`):
 * on host 0's own device, only the traffic to host 1 is shaped; traffic to host 2 and
 * what host 1 sends back pass untouched (measured, a small TCP transfer each); after
 * SIGKILL of the process holding such a tree, `pipenem netem clear --all` leaves the
 * device's qdiscs exactly as before. The user-mode Linux variant with netem delay is in
 * tests/test_netem_uml.c (--perdest). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "netem/profile.h"
#include "netem/state.h"
#include "netem/tc.h"
#include "netem/topo.h"
#include "tests/testutil.h"

#define RATE 50e6               /* the shaped link to host 1 */
#define BYTES (8u << 20)        /* one transfer: 1.4 s at RATE */
#define PORT 5311
#define TOL 0.10                /* shaped goodput vs rate x 1448/1514; the TBF burst adds ~2% */
#define UNSHAPED_FACTOR 5.0     /* an unshaped transfer is at least this much faster */

static char prefix[32], statedir[128], out[1 << 16];
static netem_topo_t topo;
static int topo_made;

static int setup(void **state)
{
    (void)state;
    char err[256];
    if (geteuid() != 0)
        return 0;
    snprintf(prefix, sizeof prefix, "pn%ld", (long)getpid());
    snprintf(statedir, sizeof statedir, "/tmp/%s-dstate", prefix);
    setenv("PIPENEM_STATE_DIR", statedir, 1);
    if (netem_state_guard_start() < 0)
        return -1;
    if (netem_topo_create(&topo, 3, err, sizeof err) < 0) {
        print_message("cannot make the 3-host topology: %s\n", err);
        return -1;
    }
    topo_made = 1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char err[256];
    if (topo_made)
        netem_topo_destroy(&topo);
    if (netem_state_undo_mine(err, sizeof err) < 0)
        print_message("teardown: %s\n", err);
    if (statedir[0]) {
        tu_pipenem_run(out, sizeof out, "netem clear --all");   /* a killed child's records */
        tu_sh(out, sizeof out, "rm -rf %s", statedir);
    }
    return 0;
}

/* One TCP transfer of BYTES from host `from` to host `to` of the topology; the
 * receiver's goodput (first to last byte), bit/s. */
typedef struct {
    int host, lfd, rc;
    const char *to_addr;
    double bps;
} side_t;

static void *receiver(void *arg)
{
    side_t *s = arg;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0) {
        s->rc = -errno;
        return NULL;
    }
    static char buf[1 << 16];
    size_t total = 0;
    double t0 = 0, t1 = 0;
    ssize_t r;
    while ((r = recv(fd, buf, sizeof buf, 0)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        t1 = pn_now();
        if (!total)
            t0 = t1;
        total += (size_t)r;
    }
    close(fd);
    s->rc = total == BYTES ? 0 : -EIO;
    s->bps = t1 > t0 ? (double)(total - sizeof buf) * 8.0 / (t1 - t0) : 0;
    return NULL;
}

static void *sender(void *arg)
{
    side_t *s = arg;
    static char buf[1 << 16];
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(PORT)};
    inet_pton(AF_INET, s->to_addr, &a.sin_addr);
    int fd = -1;
    if ((s->rc = netem_topo_enter(&topo, s->host)) < 0 || (fd = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
        connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        s->rc = s->rc ? s->rc : -errno;
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    for (size_t done = 0; done < BYTES; done += sizeof buf)
        if (send(fd, buf, sizeof buf, MSG_NOSIGNAL) != (ssize_t)sizeof buf) {
            s->rc = -EIO;
            break;
        }
    close(fd);
    return NULL;
}

/* Listening socket made in host `to` by a thread (setns is per thread). */
static void *listener(void *arg)
{
    side_t *s = arg;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(PORT)};
    inet_pton(AF_INET, s->to_addr, &a.sin_addr);
    int one = 1;
    if ((s->rc = netem_topo_enter(&topo, s->host)) < 0)
        return NULL;
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (s->lfd < 0 || setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(s->lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(s->lfd, 1) < 0)
        s->rc = -errno;
    return NULL;
}

static double transfer(int from, int to)
{
    side_t rx = {.host = to, .lfd = -1, .to_addr = netem_topo_host_addr(&topo, to)};
    side_t tx = {.host = from, .to_addr = rx.to_addr};
    pthread_t a, b;
    assert_int_equal(pthread_create(&a, NULL, listener, &rx), 0);
    pthread_join(a, NULL);
    if (rx.rc < 0)
        fail_msg("listening in host %d: %s", to, strerror(-rx.rc));
    assert_int_equal(pthread_create(&a, NULL, receiver, &rx), 0);
    assert_int_equal(pthread_create(&b, NULL, sender, &tx), 0);
    pthread_join(b, NULL);
    pthread_join(a, NULL);
    close(rx.lfd);
    if (tx.rc < 0 || rx.rc < 0)
        fail_msg("transfer host %d -> %d: %s", from, to, strerror(-(tx.rc ? tx.rc : rx.rc)));
    return rx.bps;
}

static void test_only_the_peer_is_shaped(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    char err[256];
    netem_dev_t d;
    netem_tc_peer_t peer = {.profile = {.rate = RATE}};
    snprintf(peer.addr, sizeof peer.addr, "%s", netem_topo_host_addr(&topo, 1));
    assert_int_equal(netem_dev_init(&d, netem_topo_host_ns(&topo, 0), netem_topo_host_ifname(&topo, 0), err,
                                     sizeof err), 0);
    if (netem_tc_apply_by_dest(&d, 1, &peer, 0, err, sizeof err) < 0)
        fail_msg("apply_by_dest: %s", err);
    /* Read back: one TBF class, to host 1. */
    netem_tc_class_t cl[4];
    int n = 0;
    assert_int_equal(netem_tc_show_by_source(&d, cl, 4, &n, err, sizeof err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(cl[0].dst, peer.addr);
    assert_string_equal(cl[0].kind, "tbf");
    assert_true(tu_reldiff(cl[0].profile.rate, RATE, 1) < 1e-6);

    double want = netem_profile_goodput(RATE, 1500);
    double to1 = transfer(0, 1), to2 = transfer(0, 2), back = transfer(1, 0);
    double d1 = tu_reldiff(to1, want, 1);
    print_message("host 0 -> host 1 (shaped, TBF %.0f Mbit/s): %.1f Mbit/s, expected %.1f (x 1448/1514), "
                  "difference %.2f%% (tolerance %.0f%%)\n", RATE / 1e6, to1 / 1e6, want / 1e6, d1 * 100, TOL * 100);
    print_message("host 0 -> host 2 (unrelated address, same namespace): %.1f Mbit/s; host 1 -> host 0 "
                  "(other direction): %.1f Mbit/s; each must be >= %.0f x the shaped %.1f Mbit/s\n", to2 / 1e6,
                  back / 1e6, UNSHAPED_FACTOR, to1 / 1e6);
    assert_true(d1 <= TOL);
    assert_true(to2 >= UNSHAPED_FACTOR * to1);
    assert_true(back >= UNSHAPED_FACTOR * to1);
    assert_int_equal(netem_tc_clear(&d, err, sizeof err), 0);
    tu_sh(out, sizeof out, "tc -n %s qdisc show dev %s", netem_topo_host_ns(&topo, 0), netem_topo_host_ifname(&topo, 0));
    assert_null(strstr(out, "htb"));
}

/* Two peers of one profile share a class (the host's link capacity), or with
 * NETEM_TC_CLASS_PER_PEER get one each (a link per pair); both read back the same. */
static void test_class_per_peer(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    char err[256], cls[4096];
    netem_dev_t d;
    netem_tc_peer_t peer[2] = {{.profile = {.rate = RATE}}, {.profile = {.rate = RATE}}};
    for (int i = 0; i < 2; i++)
        snprintf(peer[i].addr, sizeof peer[i].addr, "%s", netem_topo_host_addr(&topo, i + 1));
    assert_int_equal(netem_dev_init(&d, netem_topo_host_ns(&topo, 0), netem_topo_host_ifname(&topo, 0), err,
                                     sizeof err), 0);
    static const int flags[] = {0, NETEM_TC_CLASS_PER_PEER};
    for (int f = 0; f < 2; f++) {
        if (netem_tc_apply_by_dest(&d, 2, peer, flags[f], err, sizeof err) < 0)
            fail_msg("apply_by_dest: %s", err);
        tu_sh(cls, sizeof cls, "tc -n %s class show dev %s | grep -c '^class htb'", netem_topo_host_ns(&topo, 0),
              netem_topo_host_ifname(&topo, 0));
        netem_tc_class_t cl[4];
        int n = 0;
        assert_int_equal(netem_tc_show_by_source(&d, cl, 4, &n, err, sizeof err), 0);
        print_message("%s: %d HTB class(es) for 2 peers at %.0f Mbit/s; %d read back\n",
                      flags[f] ? "NETEM_TC_CLASS_PER_PEER" : "shared", atoi(cls), RATE / 1e6, n);
        assert_int_equal(atoi(cls), flags[f] ? 2 : 1);
        assert_int_equal(n, 2);
    }
    assert_int_equal(netem_tc_clear(&d, err, sizeof err), 0);
}

/* The doomed process: a per-destination tree on host 0's device recorded in its own run
 * file, then it waits to be killed. */
static void doomed(int fd)
{
    char err[256];
    netem_dev_t d;
    netem_tc_peer_t peer[2] = {{.port = PORT, .profile = {.rate = 200e6}}, {.profile = {.rate = 100e6}}};
    snprintf(peer[0].addr, sizeof peer[0].addr, "%s", netem_topo_host_addr(&topo, 1));
    snprintf(peer[1].addr, sizeof peer[1].addr, "%s", netem_topo_host_addr(&topo, 2));
    if (netem_dev_init(&d, netem_topo_host_ns(&topo, 0), netem_topo_host_ifname(&topo, 0), err, sizeof err) < 0 ||
        netem_tc_apply_by_dest(&d, 2, peer, 0, err, sizeof err) < 0) {
        dprintf(fd, "error %s\n", err);
        _exit(3);
    }
    dprintf(fd, "ready\n");
    for (;;)
        pause();
}

static void test_sigkill_then_clear_all(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    const char *ns = netem_topo_host_ns(&topo, 0), *dev = netem_topo_host_ifname(&topo, 0);
    /* A non-default original, so that "restored" cannot mean "deleted". */
    assert_int_equal(tu_sh(out, sizeof out, "tc -n %s qdisc replace dev %s root handle 7: pfifo limit 77", ns, dev), 0);
    char before[4096], after[4096];
    tu_sh(before, sizeof before, "tc -n %s qdisc show dev %s; tc -n %s filter show dev %s", ns, dev, ns, dev);
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        doomed(pfd[1]);
    }
    close(pfd[1]);
    char line[512] = "";
    FILE *f = fdopen(pfd[0], "r");
    int ready = f && fgets(line, sizeof line, f) && !strncmp(line, "ready", 5);
    if (f)
        fclose(f);
    if (!ready) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("the doomed process did not get ready: %s", line);
    }
    tu_sh(out, sizeof out, "tc -n %s qdisc show dev %s; tc -n %s filter show dev %s", ns, dev, ns, dev);
    print_message("while shaped:\n%s", out);
    assert_non_null(strstr(out, "qdisc htb 1: root"));
    char match[64];
    snprintf(match, sizeof match, "match %08x/0000ffff at 20", PORT);   /* the port as destination */
    assert_non_null(strstr(out, match));
    snprintf(match, sizeof match, "match %08x/ffff0000 at 20", PORT << 16);   /* and as source */
    assert_non_null(strstr(out, match));
    assert_int_equal(kill(pid, SIGKILL), 0);
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    tu_sh(out, sizeof out, "tc -n %s qdisc show dev %s", ns, dev);
    assert_non_null(strstr(out, "htb"));   /* SIGKILL: nothing could undo it */

    int rc = tu_pipenem_run(out, sizeof out, "netem clear --all");
    print_message("%s", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "undone 1 record"));
    tu_sh(after, sizeof after, "tc -n %s qdisc show dev %s; tc -n %s filter show dev %s", ns, dev, ns, dev);
    print_message("before:\n%safter clear --all:\n%s", before, after);
    assert_string_equal(before, after);
}

static void test_bad_peers(void **state)
{
    (void)state;
    char err[256];
    netem_dev_t d;
    netem_tc_peer_t p[2] = {{.addr = "198.18.0.2", .profile = {.rate = 1e6}},
                            {.addr = "198.18.0.2", .profile = {.rate = 2e6}}};
    assert_int_equal(netem_dev_init(&d, NULL, "pnnone0", err, sizeof err), 0);
    assert_int_equal(netem_tc_apply_by_dest(&d, 2, p, 0, err, sizeof err), -EINVAL);
    print_message("repeated peer: %s\n", err);
    assert_non_null(strstr(err, "named twice"));
    snprintf(p[1].addr, sizeof p[1].addr, "198.18.0");
    assert_int_equal(netem_tc_apply_by_dest(&d, 2, p, 0, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "not an IPv4 address"));
    assert_int_equal(netem_tc_apply_by_dest(&d, 0, p, 0, err, sizeof err), -EINVAL);
    /* The command line names the bad part and exits 2. */
    assert_int_equal(tu_pipenem_run(out, sizeof out, "netem apply pnnone0 --to 198.18.0.2:70000=rate=1mbit"), 2);
    assert_non_null(strstr(out, "port '70000' is not 1 to 65535"));
    assert_int_equal(tu_pipenem_run(out, sizeof out, "netem apply pnnone0 --to 198.18.0.2"), 2);
    assert_non_null(strstr(out, "expected PEER[:PORT]=PROFILE"));
    assert_int_equal(tu_pipenem_run(out, sizeof out, "netem apply pnnone0 10ms/1Gbps --to 198.18.0.2=rate=1mbit"), 2);
    assert_int_equal(tu_pipenem_run(out, sizeof out, "netem show pnnone0 --to 198.18.0.2=rate=1mbit"), 2);
    assert_non_null(strstr(out, "--to belongs to apply"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_peers),
        cmocka_unit_test(test_only_the_peer_is_shaped),
        cmocka_unit_test(test_class_per_peer),
        cmocka_unit_test(test_sigkill_then_clear_all),
    };
    return cmocka_run_group_tests_name("netem_dest", tests, setup, teardown);
}
