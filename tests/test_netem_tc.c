/* The tc controller and the local topology against the real kernel, inside scratch
 * namespaces this test makes (pn<pid>-...): apply/show/clear round trips, exact
 * restoration of a non-default original, refusals that change nothing, restoration on
 * normal exit and on SIGINT/SIGTERM, emulator choice, and no leftovers at the end.
 * Cross-checked with iproute2's `tc` where the kernel's own view matters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "netem/emulator.h"
#include "netem/profile.h"
#include "netem/state.h"
#include "netem/tc.h"
#include "netem/topo.h"
#include "tests/testutil.h"

static char ns[64], prefix[32], statedir[128];
static char out[1 << 16];
static netem_topo_t topo;   /* destroyed by the group teardown too, should a test fail */

/* Output of a command (stderr merged). */
static const char *tc_show(void)
{
    static char buf[4096];
    tu_sh(buf, sizeof buf, "tc -n %s qdisc show dev pnt0", ns);
    return buf;
}

/* qdisc records in all state files (the scratch namespace's own record is not one). */
static int state_files(void)
{
    char buf[4096];
    tu_sh(buf, sizeof buf, "cat %s/*.state 2>/dev/null | grep -c '^qdisc '", statedir);
    return atoi(buf);
}

static int setup(void **state)
{
    (void)state;
    char err[256];
    if (geteuid() != 0) {
        print_message("SKIP: needs root for network namespaces and qdiscs\n");
        return 0;
    }
    snprintf(prefix, sizeof prefix, "pn%ld", (long)getpid());
    snprintf(ns, sizeof ns, "%s-tc", prefix);
    snprintf(statedir, sizeof statedir, "/tmp/%s-state", prefix);
    setenv("PIPENEM_STATE_DIR", statedir, 1);
    if (netem_topo_scratch_create(ns, "pnt0", err, sizeof err) < 0) {
        print_message("cannot make the scratch namespace: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char err[256];
    if (geteuid() != 0)
        return 0;
    netem_topo_destroy(&topo);
    if (netem_topo_scratch_destroy(ns, err, sizeof err) < 0)
        print_message("teardown: %s\n", err);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", statedir);
    return system(cmd) == 0 ? 0 : -1;
}

static netem_dev_t dev(void)
{
    netem_dev_t d;
    char err[128];
    assert_int_equal(netem_dev_init(&d, ns, "pnt0", err, sizeof err), 0);
    return d;
}

static void test_tbf_round_trip(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    netem_dev_t d = dev();
    char err[256], kind[32], text[128];
    netem_profile_t p, back;
    netem_tc_applied_t a;
    uint32_t limit;
    assert_int_equal(netem_profile_parse("rate=1Gbps", &p, err, sizeof err), 0);
    if (netem_tc_apply(&d, &p, 0, &a, err, sizeof err) != 0)
        fail_msg("apply: %s", err);
    assert_int_equal(a.kind, NETEM_QDISC_TBF);
    assert_non_null(strstr(tc_show(), "tbf"));
    assert_non_null(strstr(tc_show(), "rate 1Gbit"));
    assert_int_equal(netem_tc_show(&d, &back, kind, sizeof kind, &limit, err, sizeof err), 0);
    assert_string_equal(kind, "tbf");
    netem_profile_format(&back, text, sizeof text);
    print_message("applied rate=1Gbps, read back '%s' (tbf limit %u bytes, burst %u)\n", text, limit, a.burst);
    assert_string_equal(text, "rate=1Gbps");
    assert_int_equal(state_files(), 1);
    /* A second apply replaces ours and keeps the first saved original. */
    assert_int_equal(netem_profile_parse("rate=25Gbps", &p, err, sizeof err), 0);
    assert_int_equal(netem_tc_apply(&d, &p, 0, &a, err, sizeof err), 0);
    assert_int_equal(netem_tc_show(&d, &back, kind, sizeof kind, &limit, err, sizeof err), 0);
    netem_profile_format(&back, text, sizeof text);
    assert_string_equal(text, "rate=25Gbps");   /* above 32 bits of bytes/s: RATE64 */
    assert_int_equal(netem_tc_clear(&d, err, sizeof err), 0);
    assert_non_null(strstr(tc_show(), "noqueue"));
    assert_int_equal(state_files(), 0);
}

static void test_restores_exact_original(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    netem_dev_t d = dev();
    char err[256];
    netem_profile_t p = {.rate = 100e6};
    netem_tc_applied_t a;
    assert_int_equal(tu_sh(out, sizeof out, "tc -n %s qdisc replace dev pnt0 root handle 5: pfifo limit 123", ns), 0);
    char before[4096];
    snprintf(before, sizeof before, "%s", tc_show());
    assert_int_equal(netem_tc_apply(&d, &p, 0, &a, err, sizeof err), 0);
    assert_null(strstr(tc_show(), "pfifo"));
    assert_int_equal(netem_tc_clear(&d, err, sizeof err), 0);
    print_message("before: %safter:  %s", before, tc_show());
    assert_string_equal(tc_show(), before);
    assert_non_null(strstr(before, "pfifo 5: root"));
    assert_non_null(strstr(before, "limit 123p"));
    assert_int_equal(tu_sh(out, sizeof out, "tc -n %s qdisc del dev pnt0 root", ns), 0);
}

static void test_refusals_change_nothing(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    netem_dev_t d = dev();
    char err[256] = "";
    netem_profile_t p = {.delay = 10e-3, .rate = 1e9};
    netem_tc_applied_t a;
    char before[4096];
    snprintf(before, sizeof before, "%s", tc_show());
    /* netem missing (forced here; on this kernel it is missing anyway). */
    assert_int_equal(netem_tc_apply(&d, &p, NETEM_TC_NO_NETEM, &a, err, sizeof err), -EOPNOTSUPP);
    print_message("no netem: %s\n", err);
    assert_non_null(strstr(err, "no sch_netem"));
    assert_string_equal(tc_show(), before);
    assert_int_equal(state_files(), 0);
    /* A device that does not exist. */
    netem_dev_t bad;
    assert_int_equal(netem_dev_init(&bad, ns, "pnnope", err, sizeof err), 0);
    p = (netem_profile_t){.rate = 1e9};
    assert_int_equal(netem_tc_apply(&bad, &p, 0, &a, err, sizeof err), -ENODEV);
    assert_non_null(strstr(err, "pnnope"));
    /* A namespace that does not exist. */
    assert_int_equal(netem_dev_init(&bad, "pn-no-such-ns", "pnt0", err, sizeof err), 0);
    assert_int_equal(netem_tc_apply(&bad, &p, 0, &a, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "pn-no-such-ns"));
    /* A classful tree we could not put back exactly. */
    assert_int_equal(tu_sh(out, sizeof out, "tc -n %s qdisc add dev pnt0 root handle 1: htb default 10 && "
                         "tc -n %s class add dev pnt0 parent 1: classid 1:10 htb rate 1gbit && "
                         "tc -n %s qdisc add dev pnt0 parent 1:10 handle 10: pfifo", ns, ns, ns), 0);
    snprintf(before, sizeof before, "%s", tc_show());
    assert_int_equal(netem_tc_apply(&d, &p, 0, &a, err, sizeof err), -EBUSY);
    print_message("classful: %s\n", err);
    assert_non_null(strstr(err, "classful"));
    assert_string_equal(tc_show(), before);
    assert_int_equal(state_files(), 0);
    assert_int_equal(tu_sh(out, sizeof out, "tc -n %s qdisc del dev pnt0 root", ns), 0);
}

static void test_without_root(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    char before[4096];
    snprintf(before, sizeof before, "%s", tc_show());
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    if (pid == 0) {
        char err[256] = "";
        netem_dev_t d = dev();
        netem_profile_t p = {.rate = 1e9};
        netem_tc_applied_t a;
        if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
            _exit(3);
        int rc = netem_tc_apply(&d, &p, 0, &a, err, sizeof err);
        if (write(pfd[1], err, strlen(err) + 1) < 0)
            _exit(4);
        _exit(rc == -EPERM ? 0 : 1);
    }
    close(pfd[1]);
    char err[256] = "";
    ssize_t n = read(pfd[0], err, sizeof err - 1);
    err[n > 0 ? n : 0] = '\0';
    close(pfd[0]);
    int st;
    waitpid(pid, &st, 0);
    print_message("as nobody: %s\n", err);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_non_null(strstr(err, "permission denied"));
    assert_string_equal(tc_show(), before);
    assert_int_equal(state_files(), 0);
}

/* A child applies a profile (not persistent) and then exits or is signalled. */
static void child_exit_restores(int how)
{
    char before[4096];
    snprintf(before, sizeof before, "%s", tc_show());
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    if (pid == 0) {
        char err[256];
        netem_dev_t d = dev();
        netem_profile_t p = {.rate = 1e9};
        netem_tc_applied_t a;
        if (netem_state_guard_start() < 0 || netem_tc_apply(&d, &p, 0, &a, err, sizeof err) < 0)
            _exit(3);
        if (write(pfd[1], "x", 1) < 0)
            _exit(4);
        if (how == 0)
            exit(0);
        pause();
        _exit(5);
    }
    close(pfd[1]);
    char c;
    assert_int_equal(read(pfd[0], &c, 1), 1);
    close(pfd[0]);
    if (how == 0) {
    } else {
        assert_non_null(strstr(tc_show(), "tbf"));
        kill(pid, how);
    }
    int st;
    waitpid(pid, &st, 0);
    if (how == 0)
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    else
        assert_true(WIFSIGNALED(st) && WTERMSIG(st) == how);
    print_message("after %s: %s", how == 0 ? "exit(0)" : strsignal(how), tc_show());
    assert_string_equal(tc_show(), before);
    assert_int_equal(state_files(), 0);
}

static void test_exit_and_signals_restore(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    child_exit_restores(0);
    child_exit_restores(SIGINT);
    child_exit_restores(SIGTERM);
}

static void test_cli_apply_show_clear(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    int rc = tu_pipenem_run(out, sizeof out, "netem apply --netns %s pnt0 rate=2Gbps", ns);
    if (rc != 0)
        fail_msg("apply exited %d:\n%s", rc, out);
    assert_non_null(strstr(out, "qdisc tbf"));
    /* It persists after the command exits. */
    assert_non_null(strstr(tc_show(), "rate 2Gbit"));
    assert_int_equal(tu_pipenem_run(out, sizeof out, "netem show --netns %s pnt0", ns), 0);
    assert_non_null(strstr(out, "rate=2Gbps"));
    rc = tu_pipenem_run(out, sizeof out, "netem apply --netns %s pnt0 10ms/1Gbps", ns);
    if (!netem_tc_have_netem()) {
        assert_int_equal(rc, 1);
        assert_non_null(strstr(out, "no sch_netem"));
    }
    assert_int_equal(tu_pipenem_run(out, sizeof out, "netem clear --netns %s pnt0", ns), 0);
    assert_non_null(strstr(tc_show(), "noqueue"));
    assert_int_equal(state_files(), 0);
    /* Usage errors name the bad part. */
    assert_int_equal(tu_pipenem_run(out, sizeof out, "netem apply --netns %s pnt0 10ms/1gbps", ns), 2);
    assert_non_null(strstr(out, "'gbps' is ambiguous"));
    assert_int_equal(tu_pipenem_run(out, sizeof out, "netem apply pnt0"), 2);
    assert_int_equal(tu_pipenem_run(out, sizeof out, "netem frob"), 2);
    assert_non_null(strstr(out, "'frob'"));
    assert_int_equal(tu_pipenem_run(out, sizeof out, "netem selftest --net 10ms/1Gbps --emulator fast"), 2);
    assert_non_null(strstr(out, "'fast'"));
    assert_int_equal(tu_pipenem_run(out, sizeof out, "netem show --all pnt0"), 2);
}

static void test_probe(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    int rc = tu_pipenem_run(out, sizeof out, "netem probe");
    print_message("%s", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "tbf        yes"));
    assert_non_null(strstr(out, netem_tc_have_netem() ? "netem      yes" : "netem      no"));
}

static void test_emulator_choice(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    const netem_emulator_t *e;
    char why[256], err[256];
    netem_profile_t delay = {.delay = 10e-3, .rate = 1e9}, rate = {.rate = 1e9}, dflt = {0};
    assert_int_equal(netem_emulator_choose("auto", &delay, 1, &e, why, sizeof why, err, sizeof err), 0);
    print_message("auto for 10ms/1Gbps: %s (%s)\n", e->name, why);
    assert_string_equal(e->name, netem_tc_have_netem() ? "netem" : "shim");
    assert_int_equal(netem_emulator_choose("auto", &rate, 1, &e, why, sizeof why, err, sizeof err), 0);
    assert_string_equal(e->name, "netem");
    assert_int_equal(netem_emulator_choose("auto", &dflt, 1, &e, why, sizeof why, err, sizeof err), 0);
    assert_string_equal(e->name, "none");
    assert_int_equal(netem_emulator_choose("shim", &delay, 1, &e, why, sizeof why, err, sizeof err), 0);
    assert_string_equal(e->name, "shim");
    assert_int_equal(netem_emulator_choose("bogus", &delay, 1, &e, why, sizeof why, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "'bogus'"));
    assert_null(netem_emulator_find("none"));
    assert_int_equal(netem_emulator_choose("none", &dflt, 1, &e, why, sizeof why, err, sizeof err), -EINVAL);
    if (!netem_tc_have_netem()) {
        assert_int_equal(netem_emulator_choose("netem", &delay, 1, &e, why, sizeof why, err, sizeof err),
                         -EOPNOTSUPP);
        assert_non_null(strstr(err, "sch_netem"));
    }
    netem_profile_t jitter = {.delay = 10e-3, .jitter = 1e-3};
    if (netem_emulator_choose("shim", &jitter, 1, &e, why, sizeof why, err, sizeof err) != -EOPNOTSUPP)
        fail_msg("shim accepted jitter");
}

/* 1 when one line of text contains both a and b. */
static int line_has(const char *text, const char *a, const char *b)
{
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        size_t n = strcspn(l, "\n");
        char line[512];
        snprintf(line, sizeof line, "%.*s", (int)n, l);
        if (strstr(line, a) && strstr(line, b))
            return 1;
    }
    return 0;
}

/* Packets counted by class `classid` on the switch port of host 1. */
static long class_packets(const netem_topo_t *t, const char *classid)
{
    char buf[4096];
    tu_sh(buf, sizeof buf, "tc -s -n %s class show dev %s classid %s", t->sw_ns, t->port_if[1], classid);
    const char *p = strstr(buf, "Sent ");
    long bytes = 0, pkts = -1;
    if (p && sscanf(p, "Sent %ld bytes %ld pkt", &bytes, &pkts) == 2)
        return pkts;
    return -1;
}

static void test_topology(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    netem_topo_t *t = &topo;
    char err[256];
    if (netem_topo_create(t, 3, err, sizeof err) < 0)
        fail_msg("topology: %s", err);
    assert_string_equal(netem_topo_host_addr(t, 2), "198.18.0.3");
    assert_non_null(strstr(netem_topo_host_ns(t, 1), prefix));
    assert_true(strlen(netem_topo_host_ifname(t, 2)) < 16);
    /* Host 0 reaches host 2 through the bridge. */
    int rc = tu_sh(out, sizeof out, "ip netns exec %s ping -c 1 -W 2 %s", netem_topo_host_ns(t, 0),
                 netem_topo_host_addr(t, 2));
    if (rc != 0)
        fail_msg("ping across the bridge failed:\n%s", out);
    /* Rate on every link: TBF on each switch port, none on the hosts' own veths. */
    netem_profile_t links[2] = {{.rate = 1e9}, {.rate = 1e9}};
    if (netem_topo_apply(t, links, "netem", err, sizeof err) < 0)
        fail_msg("apply: %s", err);
    assert_string_equal(netem_topo_emulator(t), "netem");
    for (int i = 0; i < 3; i++) {
        tu_sh(out, sizeof out, "tc -n %s qdisc show dev %s", t->sw_ns, t->port_if[i]);
        assert_non_null(strstr(out, "tbf"));
        tu_sh(out, sizeof out, "tc -n %s qdisc show dev %s", t->host_ns[i], t->host_if[i]);
        assert_null(strstr(out, "tbf"));
    }
    /* Different links meeting at host 1: its port sorts by sender into two classes. */
    links[1].rate = 2e9;
    if (netem_topo_apply(t, links, "netem", err, sizeof err) < 0)
        fail_msg("per-link apply: %s", err);
    tu_sh(out, sizeof out, "tc -n %s qdisc show dev %s", t->sw_ns, t->port_if[1]);
    print_message("host 1's port:\n%s", out);
    assert_non_null(strstr(out, "qdisc htb 1: root"));
    assert_non_null(strstr(out, "qdisc tbf 10: parent 1:2 rate 1Gbit"));
    assert_non_null(strstr(out, "qdisc tbf 11: parent 1:3 rate 2Gbit"));
    tu_sh(out, sizeof out, "tc -n %s filter show dev %s", t->sw_ns, t->port_if[1]);
    assert_non_null(strstr(out, "flowid 1:2"));
    assert_non_null(strstr(out, "match c6120001/ffffffff at 12"));   /* 198.18.0.1 */
    assert_non_null(strstr(out, "match c6120003/ffffffff at 12"));   /* 198.18.0.3 */
    /* show reads the tree back: each sender's class with its profile. */
    assert_int_equal(tu_pipenem_run(out, sizeof out, "netem show --netns %s %s", t->sw_ns, t->port_if[1]), 0);
    print_message("%s", out);
    assert_true(line_has(out, "rate=1Gbps ", "from 198.18.0.1"));
    assert_true(line_has(out, "rate=2Gbps ", "from 198.18.0.3"));
    /* The end ports keep one profile each. */
    tu_sh(out, sizeof out, "tc -n %s qdisc show dev %s", t->sw_ns, t->port_if[2]);
    assert_non_null(strstr(out, "tbf"));
    assert_non_null(strstr(out, "rate 2Gbit"));
    /* Packets from host 0 land in 1:2, from host 2 in 1:3. */
    assert_int_equal(class_packets(t, "1:2"), 0);
    assert_int_equal(tu_sh(out, sizeof out, "ip netns exec %s ping -c 3 -i 0.05 -W 2 %s", t->host_ns[0],
                         t->host_addr[1]), 0);
    long from0 = class_packets(t, "1:2"), from2 = class_packets(t, "1:3");
    assert_int_equal(tu_sh(out, sizeof out, "ip netns exec %s ping -c 5 -i 0.05 -W 2 %s", t->host_ns[2],
                         t->host_addr[1]), 0);
    print_message("class 1:2 (from host 0) %ld packets, 1:3 (from host 2) %ld before and %ld after "
                  "5 pings from host 2\n", from0, from2, class_packets(t, "1:3"));
    assert_true(from0 >= 3);
    assert_int_equal(from2, 0);
    assert_true(class_packets(t, "1:3") >= 5);
    assert_int_equal(class_packets(t, "1:2"), from0);
    /* Back to default: every port unshaped again. */
    memset(links, 0, sizeof links);
    assert_int_equal(netem_topo_apply(t, links, "auto", err, sizeof err), 0);
    assert_string_equal(t->emulator->name, "none");
    tu_sh(out, sizeof out, "tc -n %s qdisc show dev %s", t->sw_ns, t->port_if[1]);
    assert_non_null(strstr(out, "noqueue"));
    char names[3][32], sw[32];
    for (int i = 0; i < 3; i++)
        snprintf(names[i], sizeof names[i], "%s", t->host_ns[i]);
    memcpy(sw, t->sw_ns, sizeof sw);
    netem_topo_destroy(t);
    netem_topo_destroy(t);   /* idempotent */
    char left[1024];
    assert_int_equal(netem_topo_leftovers(sw, left, sizeof left), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(netem_topo_leftovers(names[i], left, sizeof left), 0);
    assert_int_equal(state_files(), 0);
}

static void test_nothing_left(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    char left[2048];
    /* Only the scratch namespace of this suite is still there (teardown removes it). */
    int n = netem_topo_leftovers(prefix, left, sizeof left);
    print_message("left with prefix %s: %d (%s)\n", prefix, n, left);
    assert_int_equal(n, 1);
    assert_non_null(strstr(left, ns));
    assert_int_equal(state_files(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tbf_round_trip),
        cmocka_unit_test(test_restores_exact_original),
        cmocka_unit_test(test_refusals_change_nothing),
        cmocka_unit_test(test_without_root),
        cmocka_unit_test(test_exit_and_signals_restore),
        cmocka_unit_test(test_cli_apply_show_clear),
        cmocka_unit_test(test_probe),
        cmocka_unit_test(test_emulator_choice),
        cmocka_unit_test(test_topology),
        cmocka_unit_test(test_nothing_left),
    };
    return cmocka_run_group_tests_name("netem_tc", tests, setup, teardown);
}
