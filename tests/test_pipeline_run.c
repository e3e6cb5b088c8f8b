/* `pipenem run` and `pipenem stage` end to end: a 3-stage pipeline trains to the same
 * per-iteration losses as one stage, a stage killed with SIGKILL stops the whole job
 * (named, nothing left behind), and mismatched ranks are refused on both sides. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/testutil.h"

static char out[1 << 18];

/* The model of the acceptance command: tiny (4 layers) split over 3 stages. */
#define MODEL "--model tiny"

enum { MAXIT = 64 };

static void losses_match(const char *schedule, const char *extra)
{
    double ref[MAXIT], got[MAXIT];
    int rc = tu_pipenem_run(out, sizeof out, "run " MODEL " --stages 1 --compute cpu --schedule %s --iters 5 %s",
                            schedule, extra);
    if (rc)
        fail_msg("1 stage exited %d:\n%s", rc, out);
    int n1 = tu_parse_losses(out, ref, MAXIT);
    rc = tu_pipenem_run(out, sizeof out, "run " MODEL " --stages 3 --compute cpu --schedule %s --iters 5 %s", schedule,
                        extra);
    if (rc)
        fail_msg("3 stages exited %d:\n%s", rc, out);
    int n3 = tu_parse_losses(out, got, MAXIT);
    assert_int_equal(n1, 6); /* 1 warm-up + 5 */
    assert_int_equal(n3, n1);
    double worst = tu_worst_reldiff(ref, got, n1, 1e-30); /* a NaN loss fails */
    print_message("%s %s: 3 stages vs 1 stage, %d iterations, largest relative loss difference %.3g (tolerance 1e-5)\n",
                  schedule, extra, n1, worst);
    assert_true(worst <= 1e-5);
}

static void test_losses_gpipe(void **state)
{
    (void)state;
    losses_match("gpipe", "");
}

static void test_losses_1f1b(void **state)
{
    (void)state;
    losses_match("1f1b", "");
}

/* The first and last stage swap their tied-embedding gradients before each step. */
static void test_losses_tied(void **state)
{
    (void)state;
    losses_match("1f1b", "--tied-embeddings");
}

static int pid_alive(int pid)
{
    return kill(pid, 0) == 0 || errno != ESRCH;
}

/* The header shows the configuration as it resolved, not the options as given. */
static void test_header_shows_resolved_config(void **state)
{
    (void)state;
    int rc = tu_pipenem_run(out, sizeof out, "run " MODEL " --stages 3 --compute emulate:fwd=1ms,bwd=2ms --iters 2");
    print_message("%s", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "# model=tiny layers=4 hidden=64 heads=4 vocab=256 seq_len=128 stages=3 "
                                "partition=2,1,1 batch=8 micro_batch=1 "));
}

/* The race behind a wrong name: rank 2 is stopped while rank 0 dies, so by the time it runs
 * again its neighbour rank 1 has given up and gone too, and its own receive fails on rank 1.
 * It must still say that rank 0 failed first (the control plane's verdict). */
static void test_blame_reaches_past_the_neighbour(void **state)
{
    (void)state;
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s run " MODEL " --stages 3 --compute emulate:fwd=20ms,bwd=40ms --schedule 1f1b --iters 20 "
             "--batch-size 8 2>&1",
             tu_pipenem());
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    char line[2048], rank2[2048] = "";
    int pid[3] = {0, 0, 0}, have = 0, r, p;
    size_t used = 0;
    out[0] = '\0';
    while (fgets(line, sizeof line, f)) {
        used += (size_t)snprintf(out + used, sizeof out - used, "%s", line);
        if (used >= sizeof out)
            used = sizeof out - 1;
        if (sscanf(line, "# rank %d: pid %d", &r, &p) == 2 && r >= 0 && r < 3 && !pid[r]) {
            pid[r] = p;
            if (++have == 3) {
                usleep(500000); /* into the iterations */
                kill(pid[2], SIGSTOP);
                kill(pid[0], SIGKILL);
                usleep(1000000); /* rank 1 notices and exits meanwhile (the launcher kills a
                                  * rank still stopped 3 s after the first failure) */
                kill(pid[2], SIGCONT);
            }
        }
        if (!strncmp(line, "pipenem: rank 2:", 16))
            snprintf(rank2, sizeof rank2, "%s", line);
    }
    int st = pclose(f);
    print_message("%s", out);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    assert_non_null(strstr(out, "FAILED: rank 0 was killed by signal 9"));
    if (!strstr(rank2, "rank 0"))
        fail_msg("rank 2 does not name rank 0: %s", rank2);
}

static void test_kill_any_stage(void **state)
{
    (void)state;
    for (int victim = 0; victim < 3; victim++) {
        struct timespec t0, t1;
        char cmd[1024];
        snprintf(cmd, sizeof cmd,
                 "PIPENEM_FAULT=kill:%d:2 %s run " MODEL " --stages 3 --compute emulate:fwd=5ms,bwd=10ms "
                 "--schedule 1f1b --iters 6 --batch-size 8 2>&1",
                 victim, tu_pipenem());
        clock_gettime(CLOCK_MONOTONIC, &t0);
        FILE *f = popen(cmd, "r");
        assert_non_null(f);
        size_t n = fread(out, 1, sizeof out - 1, f);
        out[n] = '\0';
        int st = pclose(f);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
        print_message("kill rank %d in iteration 2: exit %d after %.2f s\n%s\n", victim,
                      WIFEXITED(st) ? WEXITSTATUS(st) : -1, secs, out);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
        char want[64];
        snprintf(want, sizeof want, "FAILED: rank %d was killed by signal 9", victim);
        if (!strstr(out, want))
            fail_msg("the launcher does not name rank %d as the dead one", victim);
        /* every other rank stopped by itself, having named the dead rank */
        if (!strstr(out, "every other rank stopped on its own"))
            fail_msg("some rank had to be killed by the launcher");
        char named[64];
        snprintf(named, sizeof named, "rank %d", victim);
        int survivors_naming = 0;
        for (const char *p = out; (p = strstr(p, "pipenem: rank ")); p++) {
            const char *eol = strchr(p, '\n');
            size_t len = eol ? (size_t)(eol - p) : strlen(p);
            char line[1024];
            snprintf(line, sizeof line, "%.*s", (int)len, p);
            if (strstr(line, "FAILED"))
                continue;
            if (strstr(line + strlen("pipenem: rank "), named) && (strstr(line, "RECV") || strstr(line, "SEND") || strstr(line, "final")))
                survivors_naming++;
        }
        print_message("%d of 2 surviving ranks named rank %d and their op (tolerance: all)\n", survivors_naming, victim);
        assert_int_equal(survivors_naming, 2);
        /* nothing left behind */
        for (const char *p = out; (p = strstr(p, "# rank ")); p++) {
            int r, pid;
            if (sscanf(p, "# rank %d: pid %d", &r, &pid) == 2 && pid_alive(pid))
                fail_msg("rank %d (pid %d) is still alive", r, pid);
        }
        assert_true(secs < 10 + 5);
    }
}

/* Two `pipenem stage` processes that disagree: both must refuse, naming the reason. */
static void stage_pair(const char *extra0, const char *extra1, const char *reason)
{
    int port = 30000 + getpid() % 20000;
    char out0[8192], out1[8192], cmd[2][1024];
    const char *extra[2] = {extra0, extra1};
    FILE *f[2];
    for (int r = 0; r < 2; r++) {
        snprintf(cmd[r], sizeof cmd[r],
                 "%s stage " MODEL " --stages 2 --compute emulate:fwd=1ms,bwd=1ms --iters 2 --dist-url tcp://127.0.0.1:%d "
                 "--world-size 2 --rank %d --timeout 20 %s 2>&1",
                 tu_pipenem(), port, r, extra[r]);
        f[r] = popen(cmd[r], "r");
        assert_non_null(f[r]);
    }
    char *o[2] = {out0, out1};
    int st[2];
    for (int r = 0; r < 2; r++) {
        size_t n = fread(o[r], 1, 8191, f[r]);
        o[r][n] = '\0';
        st[r] = pclose(f[r]);
        print_message("rank %d (%s): exit %d\n%s", r, extra[r], WIFEXITED(st[r]) ? WEXITSTATUS(st[r]) : -1, o[r]);
    }
    for (int r = 0; r < 2; r++) {
        assert_true(WIFEXITED(st[r]) && WEXITSTATUS(st[r]) == 1);
        if (!strstr(o[r], reason) || !strstr(o[r], "refused"))
            fail_msg("rank %d does not say it was refused for its %s", r, reason);
    }
}

static void test_wrong_token_refused(void **state)
{
    (void)state;
    stage_pair("--token right", "--token wrong", "token");
}

static void test_other_config_refused(void **state)
{
    (void)state;
    stage_pair("--token t --schedule gpipe", "--token t --schedule 1f1b", "configuration");
}

static void test_stage_pair_ok(void **state)
{
    (void)state;
    /* the same pair, agreeing, runs and rank 0 prints the table */
    int port = 30000 + (getpid() + 7) % 20000;
    char cmd[2][1024], o[2][16384];
    FILE *f[2];
    for (int r = 0; r < 2; r++) {
        snprintf(cmd[r], sizeof cmd[r],
                 "%s stage " MODEL " --stages 2 --compute cpu --threads 1 --iters 2 --dist-url tcp://127.0.0.1:%d "
                 "--world-size 2 --rank %d --token same --timeout 20 2>&1",
                 tu_pipenem(), port, r);
        f[r] = popen(cmd[r], "r");
    }
    for (int r = 0; r < 2; r++) {
        size_t n = fread(o[r], 1, sizeof o[r] - 1, f[r]);
        o[r][n] = '\0';
        int st = pclose(f[r]);
        print_message("rank %d: exit %d\n%s", r, WEXITSTATUS(st), o[r]);
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    assert_non_null(strstr(o[0], "# OK"));
    double loss[MAXIT];
    assert_int_equal(tu_parse_losses(o[0], loss, MAXIT), 3);
}

static void test_usage_errors(void **state)
{
    (void)state;
    static const char *const bad[][2] = {
        {"run --stages 3 --schedule nope", "nope"},
        {"run --stages 2 --iters 0", "--iters"},
        {"run --stages 2 --rank 1", "--rank"},
        {"run --stages 2 --slack 2 --schedule 1f1b", "--slack"},
        {"run --stages 2 --emulator foo", "foo"},
        {"run --stages 2 --timeout -1", "--timeout"},
        {"stage " MODEL " --stages 2 --world-size 2 --rank 0 --token t", "--dist-url"},
        {"stage " MODEL " --stages 2 --world-size 2 --rank 0 --dist-url 1.2.3.4:5 --token t", "tcp://"},
        {"stage " MODEL " --stages 2 --world-size 3 --rank 0 --dist-url tcp://127.0.0.1:1 --token t", "--world-size"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = tu_pipenem_run(out, sizeof out, "%s", bad[i][0]);
        print_message("pipenem %s -> %d: %s", bad[i][0], rc, out);
        assert_int_equal(rc, 2);
        assert_non_null(strstr(out, bad[i][1]));
    }
}

static void test_trace_file(void **state)
{
    (void)state;
    char path[] = "/tmp/pn-trace-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    int rc = tu_pipenem_run(out, sizeof out,
                            "run " MODEL " --stages 3 --compute emulate:fwd=1ms,bwd=2ms --schedule gpipe --iters 2 "
                            "--warmup 0 --batch-size 4 --trace %s",
                            path);
    if (rc)
        fail_msg("exit %d:\n%s", rc, out);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[512];
    assert_non_null(fgets(line, sizeof line, f));
    assert_string_equal(line, "rank,iteration,op,micro_batch,start_s,end_s,bytes\n");
    int rows = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        int r, it, mb;
        char op[32];
        double s, e;
        size_t b;
        if (sscanf(line, "%d,%d,%31[A-Z_],%d,%lf,%lf,%zu", &r, &it, op, &mb, &s, &e, &b) != 7 || e < s)
            bad++;
        rows++;
    }
    fclose(f);
    unlink(path);
    /* per iteration: stage 0 4x(F,Sa,Rg,B)+OPT = 17, stage 1 4x6+1 = 25, stage 2 4x(Ra,F,B,Sg)+1 = 17 */
    print_message("trace rows %d (expected %d), malformed %d\n", rows, 2 * (17 + 25 + 17), bad);
    assert_int_equal(bad, 0);
    assert_int_equal(rows, 2 * (17 + 25 + 17));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_losses_gpipe),
        cmocka_unit_test(test_losses_1f1b),
        cmocka_unit_test(test_losses_tied),
        cmocka_unit_test(test_trace_file),
        cmocka_unit_test(test_stage_pair_ok),
        cmocka_unit_test(test_wrong_token_refused),
        cmocka_unit_test(test_other_config_refused),
        cmocka_unit_test(test_kill_any_stage),
        cmocka_unit_test(test_blame_reaches_past_the_neighbour),
        cmocka_unit_test(test_header_shows_resolved_config),
    };
    return cmocka_run_group_tests_name("pipenem run and stage", tests, NULL, NULL);
}
