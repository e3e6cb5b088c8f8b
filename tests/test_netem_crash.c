/* A run holding shaped links dies of SIGKILL (no handler can run); `pipenem netem clear
 * --all` must then restore every qdisc it changed (exactly, a non-default original
 * included) and remove every namespace, veth and bridge it made, while leaving a live
 * run's records alone; the same after SIGKILL of a real `pipenem run` over TBF-shaped
 * links. The suite ends by checking that nothing it made is left. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "netem/state.h"
#include "netem/tc.h"
#include "netem/topo.h"
#include "tests/testutil.h"

static char ns[64], prefix[32], statedir[128];
static char out[1 << 16];
static int scratch_made;

static const char *qdisc_of(const char *dev)
{
    static char buf[4096];
    tu_sh(buf, sizeof buf, "tc -n %s qdisc show dev %s", ns, dev);
    return buf;
}

static int setup(void **state)
{
    (void)state;
    char err[256];
    if (geteuid() != 0)
        return 0;
    snprintf(prefix, sizeof prefix, "pn%ld", (long)getpid());
    snprintf(ns, sizeof ns, "%s-nic", prefix);
    snprintf(statedir, sizeof statedir, "/tmp/%s-state", prefix);
    setenv("PIPENEM_STATE_DIR", statedir, 1);
    if (netem_topo_scratch_create(ns, "pnc0", err, sizeof err) < 0) {
        print_message("cannot make the scratch namespace: %s\n", err);
        return -1;
    }
    scratch_made = 1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char err[256];
    if (scratch_made && netem_topo_scratch_destroy(ns, err, sizeof err) < 0)
        print_message("teardown: %s\n", err);
    if (statedir[0]) {
        /* a test that failed midway may have left a killed run's records: undo them */
        tu_sh(out, sizeof out, "%s netem clear --all", tu_pipenem());
        char cmd[256];
        snprintf(cmd, sizeof cmd, "rm -rf %s", statedir);
        if (system(cmd) != 0)
            return -1;
    }
    return 0;
}

/* The doomed run: a 2-host topology with rate on its links, plus the stand-in NIC pnc0
 * shaped for the run only. Reports its pid once everything is in place, then waits. */
static void doomed_run(int fd)
{
    char err[256];
    netem_topo_t t;
    netem_dev_t d;
    netem_tc_applied_t a;
    netem_profile_t links[1] = {{.rate = 1e9}}, nic = {.rate = 500e6};
    if (netem_state_guard_start() < 0 || netem_topo_create(&t, 2, err, sizeof err) < 0 ||
        netem_topo_apply(&t, links, "netem", err, sizeof err) < 0 ||
        netem_dev_init(&d, ns, "pnc0", err, sizeof err) < 0 ||
        netem_tc_apply(&d, &nic, 0, &a, err, sizeof err) < 0) {
        dprintf(fd, "error %s\n", err);
        _exit(3);
    }
    dprintf(fd, "ready %s\n", t.id);
    for (;;)
        pause();
}

static void test_sigkill_then_clear_all(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    /* Non-default originals: pfifo 7: limit 77 on pnc0; the default on its peer. */
    assert_int_equal(tu_sh(out, sizeof out, "tc -n %s qdisc replace dev pnc0 root handle 7: pfifo limit 77", ns), 0);
    char orig0[4096], orig1[4096];
    snprintf(orig0, sizeof orig0, "%s", qdisc_of("pnc0"));
    snprintf(orig1, sizeof orig1, "%s", qdisc_of("pnc0-p"));
    /* A persistent `netem apply` on the peer, as a user would leave it. */
    int rc = tu_pipenem_run(out, sizeof out, "netem apply --netns %s pnc0-p rate=300Mbps", ns);
    if (rc != 0)
        fail_msg("netem apply: %s", out);

    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        setpgid(0, 0);
        doomed_run(pfd[1]);
    }
    close(pfd[1]);
    char line[256] = "", id[32] = "";
    FILE *f = fdopen(pfd[0], "r");
    if (!fgets(line, sizeof line, f) || sscanf(line, "ready %31s", id) != 1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fclose(f);
        fail_msg("the run did not get ready: %s", line);
    }
    fclose(f);
    assert_non_null(strstr(qdisc_of("pnc0"), "tbf"));
    assert_int_equal(kill(pid, SIGKILL), 0);
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);

    /* The crash left everything behind. */
    char left[2048];
    int n = netem_topo_leftovers(id, left, sizeof left);
    print_message("after SIGKILL of %s: %d namespaces/links left:\n%s", id, n, left);
    assert_int_equal(n, 3);   /* switch + 2 hosts */
    assert_non_null(strstr(qdisc_of("pnc0"), "tbf"));
    assert_non_null(strstr(qdisc_of("pnc0-p"), "rate 300Mbit"));

    rc = tu_pipenem_run(out, sizeof out, "netem clear --all");
    print_message("%s", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "1 live run left alone"));   /* this test process itself */

    n = netem_topo_leftovers(id, left, sizeof left);
    if (n)
        fail_msg("clear --all left %d things of %s:\n%s", n, id, left);
    assert_string_equal(qdisc_of("pnc0"), orig0);
    assert_string_equal(qdisc_of("pnc0-p"), orig1);
    assert_non_null(strstr(orig0, "pfifo 7: root"));
    assert_non_null(strstr(orig0, "limit 77p"));
    /* The live run's namespace was left alone. */
    assert_int_equal(netem_topo_leftovers(ns, left, sizeof left), 1);
    /* A second clear --all finds nothing more to do. */
    assert_int_equal(tu_pipenem_run(out, sizeof out, "netem clear --all"), 0);
    assert_non_null(strstr(out, "undone 0 records"));
}

/* The same for the real command: `pipenem run` over rate-shaped links (TBF on the
 * switch ports) killed with SIGKILL mid-run; its stages die with it, its namespaces and
 * qdiscs stay, and `pipenem netem clear --all` removes them and its state file. */
static void test_sigkill_real_run(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    char log[160];
    snprintf(log, sizeof log, "%s-run.log", statedir);
    pid_t pid = tu_pipenem_spawn(log, "run --model tiny --stages 3 --compute emulate:fwd=5ms,bwd=10ms --batch-size 4 "
                                      "--iters 1000 --net rate=200mbit --emulator netem");
    assert_true(pid >= 0);
    /* running once every stage is up over the shaped links (the rows are buffered) */
    char id[32];
    snprintf(id, sizeof id, "pn%d", (int)pid);
    int ready = 0, tbf = 0;
    for (int i = 0; i < 300 && !ready; i++) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        tu_sh(out, sizeof out, "for n in $(ip netns list | awk '{print $1}' | grep '^%s'); do tc -n $n qdisc show; "
            "done | grep -c '^qdisc tbf'", id);
        tbf = atoi(out);
        ready = tbf > 0 && tu_sh(out, sizeof out, "grep -q 'rank 2: pid' %s", log) == 0;
    }
    struct timespec mid = {1, 0};   /* into the iterations */
    nanosleep(&mid, NULL);
    assert_int_equal(kill(pid, SIGKILL), 0);
    int st;
    waitpid(pid, &st, 0);
    tu_sh(out, sizeof out, "cat %s", log);
    unlink(log);
    if (!ready)
        fail_msg("the run did not get its stages up over shaped links:\n%s", out);
    print_message("pipenem run (pid %d) killed mid-run; %d TBF qdiscs on its links\n", (int)pid, tbf);
    assert_true(tbf >= 1);
    char left[2048];
    int n = netem_topo_leftovers(id, left, sizeof left);
    print_message("after SIGKILL: %d namespaces/links left:\n%s", n, left);
    assert_true(n >= 1);
    struct timespec ts = {0, 300 * 1000 * 1000};   /* the stages die with the launcher */
    nanosleep(&ts, NULL);
    tu_sh(out, sizeof out, "pgrep -f -- '--iters 100[0] --net rate=200mbit' | wc -l");   /* [0]: not this shell */
    assert_int_equal(atoi(out), 0);

    int rc = tu_pipenem_run(out, sizeof out, "netem clear --all");
    print_message("%s", out);
    assert_int_equal(rc, 0);
    n = netem_topo_leftovers(id, left, sizeof left);
    if (n)
        fail_msg("clear --all left %d things of %s:\n%s", n, id, left);
    assert_int_equal(tu_sh(out, sizeof out, "test ! -e %s/run-%d.state", statedir, (int)pid), 0);
}

static void test_nothing_left(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    char err[256], left[2048];
    assert_int_equal(netem_topo_scratch_destroy(ns, err, sizeof err), 0);
    scratch_made = 0;
    int n = netem_topo_leftovers(prefix, left, sizeof left);
    print_message("left with prefix %s: %d %s\n", prefix, n, left);
    assert_int_equal(n, 0);
    tu_sh(out, sizeof out, "ls %s | grep -c '[.]state$'", statedir);
    assert_int_equal(atoi(out), 0);   /* no state file left */
    /* Everything any pipenem test made carries the pn prefix and 198.18/15: list
     * whatever of this suite's own might still be around, by namespace name. */
    tu_sh(out, sizeof out, "ip netns list | grep -c '^%s'", prefix);
    assert_int_equal(atoi(out), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigkill_then_clear_all),
        cmocka_unit_test(test_sigkill_real_run),
        cmocka_unit_test(test_nothing_left),
    };
    return cmocka_run_group_tests_name("netem_crash", tests, setup, teardown);
}
