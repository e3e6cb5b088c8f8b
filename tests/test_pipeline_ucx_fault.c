/* A rank killed in the middle of a 25 MB transfer over the UCX transport, whose endpoints
 * have no UCX peer error handling (it would cost shared memory, CMA and tcp's RMA lane):
 * the survivor must still see its wait fail, naming the dead rank, within a few seconds
 * (the control plane's socket closes and fails the transport, as stage.c wires it), and
 * tear down without hanging. Over UCX's own transports (shared memory, CMA) and tcp. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

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
#include <unistd.h>

#include "common/clock.h"
#include "pipeline/boot.h"
#include "pipeline/ctrl.h"
#include "pipeline/transport.h"
#include "pipeline/ucx.h"

enum { BYTES = 25 << 20, W = 3, DIES_AT = 2 };
/* seconds: the survivor's failure after the kill, and its teardown (the promise is the
 * job's --timeout plus 10 s; the control plane sees a closed socket at once) */
#define FAIL_BOUND 5.0
#define DESTROY_BOUND 5.0

typedef struct {
    double killed_at;          /* rank 1, just before it kills itself */
    double failed_at, destroy_s;
    int status, moved;         /* rank 0: the failed wait's status, messages done before */
    char why[160], err[256];
} shared_t;

typedef struct {
    const char *tls, *dev;
    int victim_sends;          /* rank 1 (the victim) sends, rank 0 receives; else reverse */
} case_t;

static void on_fail(void *arg, int rank, const char *why)
{
    (void)rank;
    transport_fail(arg, -ECONNRESET, why);
}

/* Streams messages until the failure (rank 0) or until it dies at message DIES_AT (rank 1). */
static void stream(transport_t *t, int rank, const case_t *c, shared_t *sh)
{
    float *buf[W];
    transport_req_t req[W];
    for (int i = 0; i < W; i++) {
        buf[i] = malloc(BYTES);
        memset(buf[i], 1, BYTES);
    }
    int sends = (rank == 1) == c->victim_sends;
    for (int k = 0; k < 1000; k++) {
        int s = k % W, rc = 0;
        if (k >= W && (rc = transport_wait(t, &req[s], 60)) != 0) {
            sh->status = rc;
            sh->failed_at = pn_now();
            snprintf(sh->why, sizeof sh->why, "%s", req[s].why);
            sh->moved = k - W;
            break;
        }
        transport_key_t key = {TRANSPORT_ACT, k, 0};
        rc = sends ? transport_send(t, 1 - rank, key, buf[s], BYTES, &req[s])
                   : transport_recv(t, 1 - rank, key, buf[s], BYTES, &req[s]);
        if (rc)
            break;
        if (rank == 1 && k == DIES_AT + W - 1) {
            /* the message DIES_AT streams now (its predecessors are done) */
            pn_sleep(0.002);
            sh->killed_at = pn_now();
            raise(SIGKILL);
        }
    }
    for (int i = 0; i < W; i++)
        free(buf[i]);
}

static int rank_main(int rank, int lfd, int port, const case_t *c, shared_t *sh)
{
    transport_t t = {0};
    boot_t *b = NULL;
    char *err = sh->err;
    size_t errlen = sizeof sh->err;
    ucx_params_t up = {.rank = rank, .size = 2, .tls = c->tls, .net_devices = c->dev};
    int rc = ucx_transport_open(&up, &t, err, errlen);
    if (!rc) {
        const void *blob;
        size_t bl;
        t.ops->address(t.impl, &blob, &bl);
        boot_params_t bp = {.rank = rank, .size = 2, .port = port, .listen_fd = rank == 0 ? lfd : -1,
                            .token = "fault", .config_hash = 1, .timeout = 30};
        snprintf(bp.host, sizeof bp.host, "127.0.0.1");
        if (!(rc = boot_open(&bp, blob, bl, &b, err, errlen))) {
            const void *pb = boot_blob(b, 1 - rank, &bl);
            rc = t.ops->connect(t.impl, 1 - rank, pb, bl, err, errlen);
        }
    }
    if (!rc && (rc = ctrl_watch(b, on_fail, &t)) != 0)
        snprintf(err, errlen, "control-plane watcher: %s", strerror(-rc));
    if (!rc)
        stream(&t, rank, c, sh);
    double t0 = pn_now();
    transport_destroy(&t);
    boot_close(b);
    if (rank == 0)
        sh->destroy_s = pn_now() - t0;
    return rc ? 1 : 0;
}

static void run_case(const case_t *c)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(lfd, 4), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &al), 0);
    shared_t *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(sh != MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    pid_t pid[2];
    for (int r = 0; r < 2; r++)
        if ((pid[r] = fork()) == 0)
            _exit(rank_main(r, lfd, ntohs(a.sin_port), c, sh));
    close(lfd);
    int st[2];
    for (int r = 0; r < 2; r++)
        waitpid(pid[r], &st[r], 0);
    shared_t s = *sh;
    munmap(sh, sizeof *sh);
    double after = s.failed_at - s.killed_at;
    print_message("%s, the victim %s: survivor exit %s %d, wait status %d after %d messages, %.3f s after the kill "
                  "(bound %.0f s): \"%s\"; teardown %.3f s (bound %.0f s)%s%s\n", c->tls ? c->tls : "UCX's defaults",
                  c->victim_sends ? "sends" : "receives", WIFEXITED(st[0]) ? "code" : "signal",
                  WIFEXITED(st[0]) ? WEXITSTATUS(st[0]) : WTERMSIG(st[0]), s.status, s.moved, after, FAIL_BOUND, s.why,
                  s.destroy_s, DESTROY_BOUND, s.err[0] ? "; error: " : "", s.err);
    assert_true(WIFSIGNALED(st[1]) && WTERMSIG(st[1]) == SIGKILL);
    assert_true(WIFEXITED(st[0]) && WEXITSTATUS(st[0]) == 0);
    assert_true(s.killed_at > 0);
    assert_int_not_equal(s.status, 0);
    assert_true(after >= 0 && after < FAIL_BOUND);
    assert_non_null(strstr(s.why, "rank 1"));
    assert_true(s.destroy_s < DESTROY_BOUND);
}

static void test_default_sender_killed(void **state)
{
    (void)state;
    run_case(&(case_t){NULL, NULL, 1});
}

static void test_default_receiver_killed(void **state)
{
    (void)state;
    run_case(&(case_t){NULL, NULL, 0});
}

static void test_tcp_sender_killed(void **state)
{
    (void)state;
    run_case(&(case_t){"tcp", "lo", 1});
}

static void test_tcp_receiver_killed(void **state)
{
    (void)state;
    run_case(&(case_t){"tcp", "lo", 0});
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_sender_killed),
        cmocka_unit_test(test_default_receiver_killed),
        cmocka_unit_test(test_tcp_sender_killed),
        cmocka_unit_test(test_tcp_receiver_killed),
    };
    return cmocka_run_group_tests_name("pipeline UCX transport: a rank killed mid-transfer", tests, NULL, NULL);
}
