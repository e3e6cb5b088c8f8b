/* --dp on the local topology with kernel qdiscs (#15): every ordered pair of ranks gets
 * its profile (netem_topo_apply_pairs with launch_pair_profile), read back per source at
 * each switch port; a `pipenem run --dp 3 --emulator netem` whose all-reduce reaches the
 * --net-dp rate and whose pipeline transfers reach the --net rate (6x apart, so a swapped
 * or missing class fails); auto's choice and the sch_netem error with --dp; and nothing
 * left after a run, nor after SIGKILL + `netem clear --all`. This machine's kernel has
 * TBF and HTB but no sch_netem, so the shaped profiles are rate-only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/metrics.h"
#include "bench/results.h"
#include "netem/profile.h"
#include "netem/state.h"
#include "netem/tc.h"
#include "netem/topo.h"
#include "pipeline/launch.h"
#include "tests/testutil.h"

#define PIPE_RATE 600e6   /* --net */
#define DP_RATE 100e6     /* --net-dp, 6x below */
#define RUN_ARGS "--model tiny --hidden 256 --compute emulate:fwd=1ms,bwd=2ms --batch-size 64 " \
                 "--micro-batch-size 16 --schedule gpipe --emulator netem --net rate=600mbit --net-dp rate=100mbit"

static char statedir[128], out[1 << 17];

static int setup(void **state)
{
    (void)state;
    if (geteuid() != 0)
        return 0;
    snprintf(statedir, sizeof statedir, "/tmp/pn%ld-dpstate", (long)getpid());
    setenv("PIPENEM_STATE_DIR", statedir, 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (!statedir[0])
        return 0;
    tu_sh(out, sizeof out, "%s netem clear --all", tu_pipenem());   /* what a failed test left */
    return tu_sh(out, sizeof out, "rm -rf %s", statedir) == 0 ? 0 : -1;
}

/* The classes of host h's switch port: how many, each source's rate into rate[host]
 * (0 for a host not among them); fails the test on anything but TBF leaves. */
static int port_rates(const netem_topo_t *t, int h, double *rate)
{
    netem_dev_t d;
    netem_tc_class_t cls[16];
    char err[256];
    int n = 0;
    assert_int_equal(netem_dev_init(&d, t->sw_ns, t->port_if[h], err, sizeof err), 0);
    if (netem_tc_show_by_source(&d, cls, 16, &n, err, sizeof err))
        fail_msg("%s", err);
    for (int i = 0; i < t->hosts; i++)
        rate[i] = 0;
    for (int k = 0; k < n; k++) {
        int src = -1;
        for (int i = 0; i < t->hosts; i++)
            if (!strcmp(cls[k].src, t->host_addr[i]))
                src = i;
        if (src < 0 || strcmp(cls[k].kind, "tbf"))
            fail_msg("port of host %d: class for '%s' with a %s leaf", h, cls[k].src, cls[k].kind);
        rate[src] = cls[k].profile.rate;
    }
    return n;
}

/* Expected, by hand for P = 3, D = 3 (rank = d*3 + s; links 0-1 300 Mbit/s, 1-2 200,
 * replicas 50): the sources each port sorts and their rates. */
static const struct {
    int host;
    double rate[9];
} by_hand[] = {
    /* stage 0 of replica 0: stage 1 over 0-1, the last stage (tied embeddings) over the
     * link into stage 0 (0-1), the ring neighbours 3 and 6 */
    {0, {0, 300e6, 300e6, 50e6, 0, 0, 50e6, 0, 0}},
    /* stage 2 of replica 0: stage 1 over 1-2, stage 0 over the link into stage 2 (1-2) */
    {2, {200e6, 200e6, 0, 0, 0, 50e6, 0, 0, 50e6}},
    /* stage 1 of replica 1: stages 0 and 2 of its replica, stage 1 of replicas 0 and 2 */
    {4, {0, 50e6, 0, 300e6, 0, 200e6, 0, 50e6, 0}},
    /* stage 0 of replica 2: ring neighbours 0 and 3 */
    {6, {50e6, 0, 0, 50e6, 0, 0, 0, 300e6, 300e6}},
};

static void test_pairs_read_back(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    netem_topo_t t;
    char err[512];
    netem_profile_t links[2] = {{.rate = 300e6}, {.rate = 200e6}};
    launch_pairs_t pairs = {.stages = 3, .dp = 3, .links = links, .dp_link = {.rate = 50e6}};
    assert_int_equal(netem_state_guard_start(), 0);
    if (netem_topo_create(&t, 9, err, sizeof err))
        fail_msg("%s", err);
    int rc = netem_topo_apply_pairs(&t, launch_pair_profile, &pairs, "auto", err, sizeof err);
    if (rc) {
        netem_topo_destroy(&t);
        fail_msg("%s", err);
    }
    print_message("auto chose %s (%s)\n", netem_topo_emulator(&t), t.why);
    double worst = 0, rate[9];
    int bad = strcmp(netem_topo_emulator(&t), "netem") != 0;
    for (size_t k = 0; k < sizeof by_hand / sizeof *by_hand && !bad; k++) {
        int n = port_rates(&t, by_hand[k].host, rate), want = 0;
        for (int i = 0; i < 9; i++) {
            want += by_hand[k].rate[i] > 0;
            if ((rate[i] > 0) != (by_hand[k].rate[i] > 0)) {
                print_message("port of host %d: source %d has rate %.0f, expected %.0f\n", by_hand[k].host, i, rate[i],
                              by_hand[k].rate[i]);
                bad = 1;
            } else if (rate[i] > 0) {
                worst = fmax(worst, tu_reldiff(rate[i], by_hand[k].rate[i], 1));
            }
        }
        print_message("port of host %d: %d classes (expected %d)\n", by_hand[k].host, n, want);
        bad |= n != want;
    }
    /* every port: 2 ring neighbours plus its stage's pipeline neighbours (and the twin) */
    for (int h = 0; h < 9 && !bad; h++)
        bad |= port_rates(&t, h, rate) != 4;
    print_message("largest relative difference of a read-back rate: %.2g (tolerance 0.01)\n", worst);
    netem_topo_destroy(&t);
    assert_false(bad);
    assert_true(worst <= 0.01);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* What the run with launcher pid left: namespaces and links named pn<pid>, state files. */
static void assert_nothing_left(pid_t pid)
{
    char id[32], left[2048];
    snprintf(id, sizeof id, "pn%d", (int)pid);
    int n = netem_topo_leftovers(id, left, sizeof left);
    if (n)
        fail_msg("%d things of %s left:\n%s", n, id, left);
    tu_sh(out, sizeof out, "ls %s 2>/dev/null | grep -c '[.]state$'", statedir);
    assert_int_equal(atoi(out), 0);
}

/* Achieved rates from the trace (D x 2 ranks, gpipe): per stage and iteration, the ring
 * all-reduce sends 2(D-1)/D of the bucket from when the last replica starts it until it
 * ends on each; per replica and iteration, the M activations go from stage 0's first send
 * to stage 1's last receive (and the gradients back the same way). The medians, bit/s. */
static void trace_rates(const char *trace, int D, double *dp, double *pipe)
{
    results_t r;
    char err[512];
    results_init(&r);
    if (results_trace_read(trace, 0, 0, &r, err, sizeof err))
        fail_msg("%s: %s", trace, err);
    double a[64], b[64];
    int na = 0, nb = 0, iters = 0;
    for (size_t i = 0; i < r.n_ops; i++)
        iters = r.ops[i].iteration + 1 > iters ? r.ops[i].iteration + 1 : iters;
    for (int it = 1; it < iters; it++) {   /* iteration 0: warm-up */
        for (int s = 0; s < 2 && na < 64; s++) {
            double start = 0, end = 0, bytes = 0;
            for (size_t i = 0; i < r.n_ops; i++) {
                const results_op_t *o = &r.ops[i];
                if (o->iteration != it || o->rank % 2 != s || strcmp(o->op, METRICS_OP_ALLREDUCE))
                    continue;
                start = fmax(start, o->start);
                end = fmax(end, o->end);
                bytes = (double)o->bytes;
            }
            if (end > start)
                a[na++] = 2.0 * (D - 1) / D * bytes * 8 / (end - start);
        }
        for (int d = 0; d < D && nb < 62; d++)
            for (int dir = 0; dir < 2; dir++) {   /* activations, then gradients */
                int from = d * 2 + dir, to = d * 2 + 1 - dir;
                const char *snd = dir ? "SEND_GRAD" : "SEND_ACT", *rcv = dir ? "RECV_GRAD" : "RECV_ACT";
                double start = INFINITY, end = 0, bytes = 0;
                for (size_t i = 0; i < r.n_ops; i++) {
                    const results_op_t *o = &r.ops[i];
                    if (o->iteration == it && o->rank == from && !strcmp(o->op, snd))
                        start = fmin(start, o->start);
                    if (o->iteration == it && o->rank == to && !strcmp(o->op, rcv)) {
                        end = fmax(end, o->end);
                        bytes += (double)o->bytes;
                    }
                }
                if (end > start)
                    b[nb++] = bytes * 8 / (end - start);
            }
    }
    results_destroy(&r);
    qsort(a, (size_t)na, sizeof *a, cmp_double);
    qsort(b, (size_t)nb, sizeof *b, cmp_double);
    print_message("all-reduce: %d samples, %.1f .. %.1f Mbit/s; pipeline: %d samples, %.1f .. %.1f Mbit/s\n", na,
                  na ? a[0] / 1e6 : NAN, na ? a[na - 1] / 1e6 : NAN, nb, nb ? b[0] / 1e6 : NAN,
                  nb ? b[nb - 1] / 1e6 : NAN);
    *dp = na ? a[na / 2] : NAN;
    *pipe = nb ? b[nb / 2] : NAN;
}

static void test_run_rates(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    char log[160], trace[160];
    snprintf(log, sizeof log, "%s-rates.log", statedir);
    snprintf(trace, sizeof trace, "%s-rates.csv", statedir);
    const int D = 3;
    char args[512];
    snprintf(args, sizeof args, "run " RUN_ARGS " --stages 2 --dp %d --iters 3 --warmup 1 --trace %s", D, trace);
    pid_t pid = tu_pipenem_spawn(log, args);
    int st;
    waitpid(pid, &st, 0);
    tu_sh(out, sizeof out, "cat %s", log);
    unlink(log);
    print_message("%s", out);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("the run failed");
    assert_non_null(strstr(out, "# emulator: netem"));
    assert_nothing_left(pid);
    double dp, pipe;
    trace_rates(trace, D, &dp, &pipe);
    unlink(trace);
    /* TCP over a shaper that counts whole frames reaches the goodput, not the rate */
    double gdp = netem_profile_goodput(DP_RATE, 1500), gpipe = netem_profile_goodput(PIPE_RATE, 1500);
    print_message("all-reduce (--dp %d): median %.1f Mbit/s, --net-dp goodput %.1f Mbit/s, ratio %.3f "
                  "(tolerance [0.85, 1.10])\n", D, dp / 1e6, gdp / 1e6, dp / gdp);
    print_message("pipeline transfers: median %.1f Mbit/s, --net goodput %.1f Mbit/s, ratio %.3f "
                  "(tolerance [0.80, 1.15])\n", pipe / 1e6, gpipe / 1e6, pipe / gpipe);
    if (!(dp / gdp >= 0.85 && dp / gdp <= 1.10))
        fail_msg("the all-reduce does not run at the --net-dp rate");
    if (!(pipe / gpipe >= 0.80 && pipe / gpipe <= 1.15))
        fail_msg("the pipeline does not run at the --net rate");
}

/* The "# emulator:" line of a run's output (or all of it, when there is none). */
static void print_emulator(const char *what, const char *text)
{
    const char *e = strstr(text, "# emulator:");
    print_message("%s: %.*s\n", what, e ? (int)strcspn(e, "\n") : (int)strlen(text), e ? e : text);
}

/* auto with --dp: the kernel for rate-only links (as for --dp 1), the shim for delay
 * where the kernel has no sch_netem; --emulator netem with delay: the sch_netem error. */
static void test_choice(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    const char *base = "run --model tiny --compute emulate:fwd=1ms,bwd=1ms --stages 2 --dp 2 --batch-size 4 --iters 1 "
                       "--warmup 0";
    int rc = tu_pipenem_run(out, sizeof out, "%s --net rate=500mbit --net-dp rate=100mbit", base);
    print_emulator("auto, rate only", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "# emulator: netem"));
    if (netem_tc_have_netem()) {
        print_message("this kernel has sch_netem: the delay cases are not the kernel-less ones\n");
        return;
    }
    rc = tu_pipenem_run(out, sizeof out, "%s --net 1ms/500mbit --net-dp 2ms/100mbit", base);
    print_emulator("auto, delay", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "# emulator: shim"));
    rc = tu_pipenem_run(out, sizeof out, "%s --net rate=500mbit --net-dp 2ms/100mbit --emulator netem", base);
    print_message("netem, delay: exit %d: %s", rc, out);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "no sch_netem"));
}

/* A --dp run over kernel-shaped pairs killed with SIGKILL: its trees are read back while
 * it runs, then `netem clear --all` removes its namespaces and state file. */
static void test_sigkill_clear_all(void **state)
{
    (void)state;
    TU_NEED_ROOT();
    char log[160];
    snprintf(log, sizeof log, "%s-kill.log", statedir);
    pid_t pid = tu_pipenem_spawn(log, "run " RUN_ARGS " --stages 2 --dp 2 --iters 1000 --warmup 0");
    netem_topo_t t;   /* the run's names, to read its ports back */
    memset(&t, 0, sizeof t);
    t.hosts = 4;
    snprintf(t.sw_ns, sizeof t.sw_ns, "pn%d-sw", (int)pid);
    for (int h = 0; h < 4; h++) {
        snprintf(t.port_if[h], sizeof t.port_if[h], "pn%d-s%d", (int)pid, h);
        snprintf(t.host_addr[h], sizeof t.host_addr[h], "198.18.0.%d", h + 1);
    }
    int ready = 0;
    for (int i = 0; i < 600 && !ready; i++) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        ready = tu_sh(out, sizeof out, "grep -q 'rank 3: pid' %s", log) == 0;
    }
    double rate[4];
    int bad = !ready;
    /* rank = d*2 + s: each port sorts its pipeline neighbour and its replica twin */
    for (int h = 0; h < 4 && ready; h++) {
        int n = port_rates(&t, h, rate), pipe = h ^ 1, dp = h ^ 2;
        print_message("port of host %d: %d classes, from %d %.0f Mbit/s, from %d %.0f Mbit/s\n", h, n, pipe,
                      rate[pipe] / 1e6, dp, rate[dp] / 1e6);
        bad |= n != 2 || tu_reldiff(rate[pipe], PIPE_RATE, 1) > 0.01 || tu_reldiff(rate[dp], DP_RATE, 1) > 0.01;
    }
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    tu_sh(out, sizeof out, "cat %s", log);
    unlink(log);
    if (bad)
        fail_msg("the run's trees are not as asked (ready %d):\n%s", ready, out);
    char id[32], left[2048];
    snprintf(id, sizeof id, "pn%d", (int)pid);
    int n = netem_topo_leftovers(id, left, sizeof left);
    print_message("after SIGKILL: %d namespaces/links left\n", n);
    assert_int_equal(n, 5);   /* the switch and 4 hosts */
    struct timespec ts = {0, 300 * 1000 * 1000};   /* the stages die with the launcher */
    nanosleep(&ts, NULL);
    int rc = tu_pipenem_run(out, sizeof out, "netem clear --all");
    print_message("%s", out);
    assert_int_equal(rc, 0);
    assert_nothing_left(pid);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pairs_read_back),
        cmocka_unit_test(test_run_rates),
        cmocka_unit_test(test_choice),
        cmocka_unit_test(test_sigkill_clear_all),
    };
    return cmocka_run_group_tests_name("netem_dp", tests, setup, teardown);
}
