/* The bootstrap across processes: ranks forked on loopback meet at rank 0, exchange
 * addresses, align clocks and pass the final barrier; a wrong token or a different
 * configuration is refused on both sides; a rank that dies is named by the others. */
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
#include <time.h>
#include <unistd.h>

#include "pipeline/boot.h"
#include "pipeline/ctrl.h"
#include "pipeline/handshake.h"
#include "pipeline/jobenv.h"
#include "tests/testutil.h"

enum { MAXR = 4 };

typedef struct {
    int rc;
    int fail_rank;
    double offset, rtt, fail_after;
    char err[512];
    char fail_why[512];
} result_t;

typedef struct {
    int size, port, lfd;
    const char *tokens[MAXR];
    uint64_t hashes[MAXR];
    int die_rank;          /* this rank exits right after the rendezvous */
    result_t *res;         /* shared with the children */
} job_t;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void on_fail(void *arg, int rank, const char *why)
{
    result_t *r = arg;
    r->fail_rank = rank;
    snprintf(r->fail_why, sizeof r->fail_why, "%s", why);
}

static int rank_main(job_t *j, int rank)
{
    result_t *res = &j->res[rank];
    boot_params_t p = {.rank = rank, .size = j->size, .port = j->port, .listen_fd = rank == 0 ? j->lfd : -1,
                       .token = j->tokens[rank], .config_hash = j->hashes[rank], .timeout = 10};
    snprintf(p.host, sizeof p.host, "127.0.0.1");
    char blob[32];
    snprintf(blob, sizeof blob, "address-of-%d", rank);
    boot_t *b = NULL;
    res->fail_rank = -1;
    int rc = boot_open(&p, blob, strlen(blob) + 1, &b, res->err, sizeof res->err);
    if (rc)
        return res->rc = rc, 1;
    for (int q = 0; q < j->size; q++) {
        size_t len;
        const char *got = boot_blob(b, q, &len);
        char want[32];
        snprintf(want, sizeof want, "address-of-%d", q);
        if (!got || len != strlen(want) + 1 || strcmp(got, want)) {
            snprintf(res->err, sizeof res->err, "blob of rank %d is wrong", q);
            boot_close(b);
            return res->rc = -EPROTO, 1;
        }
    }
    res->offset = boot_clock_offset(b, &res->rtt);
    if ((rc = ctrl_watch(b, on_fail, res)) != 0)
        return res->rc = rc, 1;
    if (rank == j->die_rank) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        raise(SIGKILL);
    }
    char payload[32];
    snprintf(payload, sizeof payload, "report-%d", rank);
    double t0 = mono();
    rc = ctrl_finish(b, payload, strlen(payload) + 1, 20, res->err, sizeof res->err);
    res->fail_after = mono() - t0;
    if (!rc && rank == 0)
        for (int q = 0; q < j->size; q++) {
            size_t len;
            const char *got = ctrl_gathered(b, q, &len);
            char want[32];
            snprintf(want, sizeof want, "report-%d", q);
            if (!got || strcmp(got, want)) {
                snprintf(res->err, sizeof res->err, "gathered report of rank %d is wrong", q);
                rc = -EPROTO;
            }
        }
    boot_close(b);
    res->rc = rc;
    return rc ? 1 : 0;
}

/* Forks the ranks; returns each one's exit status in st. */
static void job_run(job_t *j, int *st)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    j->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(j->lfd >= 0);
    assert_int_equal(bind(j->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(j->lfd, 16), 0);
    assert_int_equal(getsockname(j->lfd, (struct sockaddr *)&a, &al), 0);
    j->port = ntohs(a.sin_port);
    j->res = mmap(NULL, sizeof(result_t) * MAXR, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(j->res != MAP_FAILED);
    memset(j->res, 0, sizeof(result_t) * MAXR);
    pid_t pids[MAXR];
    for (int r = 0; r < j->size; r++) {
        pids[r] = fork();
        assert_true(pids[r] >= 0);
        if (pids[r] == 0)
            _exit(rank_main(j, r));
    }
    close(j->lfd);
    for (int r = 0; r < j->size; r++) {
        int s;
        waitpid(pids[r], &s, 0);
        st[r] = WIFEXITED(s) ? WEXITSTATUS(s) : 128 + WTERMSIG(s);
        print_message("rank %d: exit %d rc %d err '%s' offset %.6f s rtt %.6f s fail(rank %d) '%s'\n", r, st[r],
                      j->res[r].rc, j->res[r].err, j->res[r].offset, j->res[r].rtt, j->res[r].fail_rank,
                      j->res[r].fail_why);
    }
}

static void job_done(job_t *j)
{
    munmap(j->res, sizeof(result_t) * MAXR);
}

static void test_rendezvous_ok(void **state)
{
    (void)state;
    job_t j = {.size = 3, .tokens = {"tok", "tok", "tok"}, .hashes = {7, 7, 7}, .die_rank = -1};
    int st[MAXR];
    job_run(&j, st);
    for (int r = 0; r < 3; r++) {
        assert_int_equal(st[r], 0);
        /* One box, one monotonic clock: the estimate is off by at most half the round trip. */
        if (r > 0 && fabs(j.res[r].offset) > j.res[r].rtt / 2 + 1e-4)
            fail_msg("rank %d clock offset %.6f s exceeds half its round trip %.6f s", r, j.res[r].offset, j.res[r].rtt);
    }
    job_done(&j);
}

static void test_wrong_token_refused_both_sides(void **state)
{
    (void)state;
    job_t j = {.size = 2, .tokens = {"right", "wrong"}, .hashes = {7, 7}, .die_rank = -1};
    int st[MAXR];
    job_run(&j, st);
    assert_int_not_equal(st[0], 0);
    assert_int_not_equal(st[1], 0);
    assert_non_null(strstr(j.res[0].err, "token"));
    assert_non_null(strstr(j.res[1].err, "token"));
    assert_non_null(strstr(j.res[1].err, "refused"));
    job_done(&j);
}

static void test_different_config_refused_both_sides(void **state)
{
    (void)state;
    job_t j = {.size = 3, .tokens = {"t", "t", "t"}, .hashes = {7, 7, 8}, .die_rank = -1};
    int st[MAXR];
    job_run(&j, st);
    for (int r = 0; r < 3; r++) {
        assert_int_not_equal(st[r], 0);
        if (!strstr(j.res[r].err, "configuration"))
            fail_msg("rank %d's error does not name the configuration: %s", r, j.res[r].err);
    }
    assert_non_null(strstr(j.res[0].err, "rank 2"));
    job_done(&j);
}

static void test_dead_rank_named(void **state)
{
    (void)state;
    for (int die = 0; die < 3; die++) {
        job_t j = {.size = 3, .tokens = {"t", "t", "t"}, .hashes = {1, 1, 1}, .die_rank = die};
        int st[MAXR];
        job_run(&j, st);
        char name[16];
        snprintf(name, sizeof name, "rank %d", die);
        for (int r = 0; r < 3; r++) {
            if (r == die) {
                assert_int_equal(st[r], 128 + SIGKILL);
                continue;
            }
            assert_int_not_equal(st[r], 0);
            if (!strstr(j.res[r].err, name) && !(die == 0 && strstr(j.res[r].err, "rank 0")))
                fail_msg("rank %d's error does not name %s: %s", r, name, j.res[r].err);
            assert_int_equal(j.res[r].fail_rank, die);
            print_message("rank %d noticed %s dying after %.3f s of waiting (limit 10 s)\n", r, name,
                          j.res[r].fail_after);
            assert_true(j.res[r].fail_after < 10);
        }
        job_done(&j);
    }
}

static void test_parse(void **state)
{
    (void)state;
    char host[64], err[256];
    int port;
    assert_int_equal(jobenv_url_parse("tcp://10.0.0.1:29500", host, sizeof host, &port, err, sizeof err), 0);
    assert_string_equal(host, "10.0.0.1");
    assert_int_equal(port, 29500);
    assert_int_equal(jobenv_url_parse("tcp://[fe80::1]:1", host, sizeof host, &port, err, sizeof err), 0);
    assert_string_equal(host, "fe80::1");
    static const char *const bad[] = {"10.0.0.1:29500", "tcp://host", "tcp://:80", "tcp://h:0", "tcp://h:65536",
                                      "tcp://h:12x", "tcp://[::1]80", "udp://h:1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = jobenv_url_parse(bad[i], host, sizeof host, &port, err, sizeof err);
        print_message("%s -> %s\n", bad[i], err);
        assert_int_equal(rc, -EINVAL);
        assert_non_null(strstr(err, bad[i]));
    }
    int r, s;
    const char *src;
    unsetenv("SLURM_PROCID");
    unsetenv("OMPI_COMM_WORLD_RANK");
    unsetenv("PMI_RANK");
    assert_int_equal(jobenv_rank(&r, &s, &src, err, sizeof err), -ENOENT);
    setenv("OMPI_COMM_WORLD_RANK", "2", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "3", 1);
    assert_int_equal(jobenv_rank(&r, &s, &src, err, sizeof err), 0);
    assert_int_equal(r, 2);
    assert_int_equal(s, 3);
    setenv("OMPI_COMM_WORLD_RANK", "3", 1);
    assert_int_equal(jobenv_rank(&r, &s, &src, err, sizeof err), -EINVAL);
    setenv("OMPI_COMM_WORLD_RANK", "x", 1);
    assert_int_equal(jobenv_rank(&r, &s, &src, err, sizeof err), -EINVAL);
    print_message("bad env -> %s\n", err);
    unsetenv("OMPI_COMM_WORLD_RANK");
    unsetenv("OMPI_COMM_WORLD_SIZE");
    assert_true(handshake_token_equal("abc", "abc"));
    assert_false(handshake_token_equal("abc", "abd"));
    assert_false(handshake_token_equal("abc", "abcd"));
    assert_false(handshake_token_equal("", "a"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_rendezvous_ok),
        cmocka_unit_test(test_wrong_token_refused_both_sides),
        cmocka_unit_test(test_different_config_refused_both_sides),
        cmocka_unit_test(test_dead_rank_named),
    };
    return cmocka_run_group_tests_name("pipeline bootstrap across processes", tests, NULL, NULL);
}
