/* Emulated links: the in-transport shaper delivers each tensor when its link's delay and
 * serialisation say (neighbours, and the first and last rank's tied exchange) (in one process, then in a 3-stage run's trace), and a run over
 * netem's namespace topology succeeds and leaves no namespace behind. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "netem/emulator.h"
#include "netem/profile.h"
#include "netem/shaper.h"
#include "pipeline/shim.h"
#include "pipeline/transport.h"
#include "pipeline/ucx.h"
#include "tests/testutil.h"

static char out[1 << 18];

/* Two ranks in this process over UCX, each wrapped in the shim over one link. */
static void shim_pair_open(const netem_profile_t *link, transport_t t[2])
{
    char err[256];
    static double offset = 0;
    for (int r = 0; r < 2; r++) {
        transport_t raw;
        ucx_params_t p = {.rank = r, .size = 2};
        assert_int_equal(ucx_transport_open(&p, &raw, err, sizeof err), 0);
        assert_int_equal(shim_transport_wrap(&raw, link, &offset, &t[r], err, sizeof err), 0);
    }
    for (int r = 0; r < 2; r++) {
        const void *b;
        size_t l;
        t[1 - r].ops->address(t[1 - r].impl, &b, &l);
        assert_int_equal(t[r].ops->connect(t[r].impl, 1 - r, b, l, err, sizeof err), 0);
    }
}

static void test_shim_loopback(void **state)
{
    (void)state;
    netem_profile_t link = {.delay = 0.05, .rate = 80e6};
    transport_t t[2];
    shim_pair_open(&link, t);
    enum { BYTES = 1 << 20 };
    static float a[BYTES / 4], b1[BYTES / 4], b2[BYTES / 4];
    for (size_t i = 0; i < BYTES / 4; i++)
        a[i] = (float)i;
    transport_req_t s1, s2, r1, r2;
    assert_int_equal(transport_recv(&t[1], 0, (transport_key_t){TRANSPORT_ACT, 0, 0}, b1, BYTES, &r1), 0);
    assert_int_equal(transport_recv(&t[1], 0, (transport_key_t){TRANSPORT_ACT, 0, 1}, b2, BYTES, &r2), 0);
    double t0 = pn_now();
    assert_int_equal(transport_send(&t[0], 1, (transport_key_t){TRANSPORT_ACT, 0, 0}, a, BYTES, &s1), 0);
    assert_int_equal(transport_send(&t[0], 1, (transport_key_t){TRANSPORT_ACT, 0, 1}, a, BYTES, &s2), 0);
    assert_int_equal(transport_wait(&t[1], &r1, 10), 0);
    double d1 = pn_now() - t0;
    assert_int_equal(transport_wait(&t[1], &r2, 10), 0);
    double d2 = pn_now() - t0;
    assert_int_equal(transport_wait(&t[0], &s1, 10), 0);
    assert_int_equal(transport_wait(&t[0], &s2, 10), 0);
    /* one message: serialisation of the wire bytes the shim charges (Ethernet frames of a
     * TCP stream at MTU 1500, as the kernel's shaper would count them) at 80 Mbit/s +
     * delay; the second queues behind the first on the link. Both within 5%, both ways. */
    double ser = (double)netem_shaper_wire_bytes(BYTES, 1500) * 8 / 80e6;
    double w1 = ser + 0.05, w2 = 2 * ser + 0.05;
    double e1 = tu_reldiff(d1, w1, 1e-9), e2 = tu_reldiff(d2, w2, 1e-9);
    print_message("first delivered after %.4f s (expected %.4f), second after %.4f s (expected %.4f); "
                  "largest relative difference %.2f%% (tolerance 5%%)\n", d1, w1, d2, w2, fmax(e1, e2) * 100);
    assert_true(e1 <= 0.05);
    assert_true(e2 <= 0.05);
    assert_memory_equal(a, b2, BYTES);
    for (int r = 0; r < 2; r++) {
        transport_quiesce(&t[r]);
        transport_destroy(&t[r]);
    }
}

/* No message is delivered before its time: 400 small messages over a 100 us link, each
 * received no earlier than its hand-over + serialisation + delay (the shim reads the
 * clock after the hand-over stamp, so this holds exactly; an aim early by the timer's mean
 * lateness released about half of them early). Prints the least and the mean margin. */
static void test_shim_never_early(void **state)
{
    (void)state;
    netem_profile_t link = {.delay = 100e-6, .rate = 10e9};
    transport_t t[2];
    shim_pair_open(&link, t);
    enum { N = 400 };
    char a[64] = {0}, b[64];
    double least = 1e9, sum = 0;
    double want = link.delay + (double)netem_shaper_wire_bytes(sizeof a, 1500) * 8 / link.rate;
    int early = 0;
    for (int i = 0; i < N; i++) {
        transport_req_t s, r;
        transport_key_t key = {TRANSPORT_ACT, i, 0};
        assert_int_equal(transport_recv(&t[1], 0, key, b, sizeof b, &r), 0);
        double t0 = pn_now();
        assert_int_equal(transport_send(&t[0], 1, key, a, sizeof a, &s), 0);
        assert_int_equal(transport_wait(&t[1], &r, 10), 0);
        double margin = pn_now() - t0 - want;
        early += margin < 0;
        least = fmin(least, margin);
        sum += margin;
        assert_int_equal(transport_wait(&t[0], &s, 10), 0);
    }
    print_message("%d messages over 100us/10Gbps: delivered %.1f us after their time at least, %.1f us on "
                  "average; %d early (tolerance 0)\n", N, least * 1e6, sum / N * 1e6, early);
    assert_int_equal(early, 0);
    for (int r = 0; r < 2; r++) {
        transport_quiesce(&t[r]);
        transport_destroy(&t[r]);
    }
}

/* The tied-embedding exchange between the first and last of 3 ranks, which are not
 * neighbours: shaped as the switch's port of the receiver would (its one link's
 * profile), each way, within 5%. */
static void test_shim_tied_twin(void **state)
{
    (void)state;
    char err[256];
    netem_profile_t links[2] = {{.delay = 0.03, .rate = 80e6}, {.delay = 0.01, .rate = 40e6}};
    static double offset = 0;
    transport_t t[2];   /* ranks 0 and 2 of 3 */
    for (int i = 0; i < 2; i++) {
        transport_t raw;
        ucx_params_t p = {.rank = 2 * i, .size = 3};
        assert_int_equal(ucx_transport_open(&p, &raw, err, sizeof err), 0);
        assert_int_equal(shim_transport_wrap(&raw, links, &offset, &t[i], err, sizeof err), 0);
    }
    for (int i = 0; i < 2; i++) {
        const void *b;
        size_t l;
        t[1 - i].ops->address(t[1 - i].impl, &b, &l);
        assert_int_equal(t[i].ops->connect(t[i].impl, 2 * (1 - i), b, l, err, sizeof err), 0);
    }
    enum { BYTES = 1 << 19 };
    static float a[BYTES / 4], b[BYTES / 4];
    double worst = 0;
    for (int from = 0; from < 2; from++) {
        int to = 1 - from;
        const netem_profile_t *rx = to == 1 ? &links[1] : &links[0];   /* the receiver's link */
        transport_req_t s, r;
        transport_key_t key = {TRANSPORT_TIED, from, 0};
        assert_int_equal(transport_recv(&t[to], 2 * from, key, b, BYTES, &r), 0);
        double t0 = pn_now();
        assert_int_equal(transport_send(&t[from], 2 * to, key, a, BYTES, &s), 0);
        assert_int_equal(transport_wait(&t[to], &r, 10), 0);
        double d = pn_now() - t0;
        assert_int_equal(transport_wait(&t[from], &s, 10), 0);
        double want = (double)netem_shaper_wire_bytes(BYTES, 1500) * 8 / rx->rate + rx->delay;
        double e = tu_reldiff(d, want, 1e-9);
        worst = fmax(worst, e);
        print_message("tied exchange rank %d -> %d: delivered after %.4f s, expected %.4f s (%.2f%%)\n", 2 * from,
                      2 * to, d, want, e * 100);
    }
    print_message("largest relative difference %.2f%% (tolerance 5%%)\n", worst * 100);
    assert_true(worst <= 0.05);
    for (int i = 0; i < 2; i++) {
        transport_quiesce(&t[i]);
        transport_destroy(&t[i]);
    }
}

/* The trace of a shimmed 3-stage run: each RECV ends no earlier than its SEND started
 * plus the link's delay (clocks aligned at bootstrap, tolerance 1 ms for that), and no
 * more than 10 ms after that or after the stage reached the receive, whichever is later. */
static void test_shim_run_trace(void **state)
{
    (void)state;
    char path[] = "/tmp/pn-shim-trace-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    int rc = tu_pipenem_run(out, sizeof out,
                            "run --model tiny --stages 3 --compute emulate:fwd=2ms,bwd=4ms --batch-size 4 "
                            "--iters 2 --net 0-1=20ms/1Gbps,1-2=5ms/1Gbps --emulator shim --trace %s",
                            path);
    if (rc)
        fail_msg("exit %d:\n%s", rc, out);
    enum { MAXR = 4096 };
    static struct { int rank, it, mb; char op[16]; double s, e; } rows[MAXR];
    int n = 0;
    FILE *f = fopen(path, "r");
    char line[256];
    assert_non_null(fgets(line, sizeof line, f));
    while (n < MAXR && fgets(line, sizeof line, f)) {
        size_t b;
        if (sscanf(line, "%d,%d,%15[A-Z_],%d,%lf,%lf,%zu", &rows[n].rank, &rows[n].it, rows[n].op, &rows[n].mb,
                   &rows[n].s, &rows[n].e, &b) == 7)
            n++;
    }
    fclose(f);
    unlink(path);
    int checked = 0;
    double worst = 1e9, late = 0;
    for (int i = 0; i < n; i++) {
        int act = !strcmp(rows[i].op, "RECV_ACT"), grad = !strcmp(rows[i].op, "RECV_GRAD");
        if (!act && !grad)
            continue;
        int from = act ? rows[i].rank - 1 : rows[i].rank + 1;
        double delay = (act ? from : rows[i].rank) == 0 ? 0.020 : 0.005;
        for (int j = 0; j < n; j++)
            if (rows[j].rank == from && rows[j].it == rows[i].it && rows[j].mb == rows[i].mb &&
                !strcmp(rows[j].op, act ? "SEND_ACT" : "SEND_GRAD")) {
                double margin = rows[i].e - (rows[j].s + delay);
                if (margin < worst)
                    worst = margin;
                /* and no later than the delivery or the stage's arrival at the receive */
                late = fmax(late, rows[i].e - fmax(rows[j].s + delay, rows[i].s));
                checked++;
            }
    }
    print_message("%d receives checked; smallest (arrival - send - delay) %.6f s (must be >= -0.001); largest "
                  "(arrival - max(send + delay, receive reached)) %.6f s (must be <= 0.010)\n", checked, worst, late);
    assert_int_equal(checked, 3 * 4 * 4); /* (1 warm-up + 2) iterations x 4 micro-batches x 4 link directions */
    assert_true(worst >= -0.001);
    assert_true(late <= 0.010);
}

static void test_netem_topology_run(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        print_message("SKIP: needs root for namespaces\n");
        skip();
    }
    /* The one capability this needs: kernel qdiscs (TBF) for a rate-only profile. The
     * emulator says so with -EOPNOTSUPP; anything else going wrong is a failure. */
    netem_profile_t rate[2] = {{.rate = 200e6}, {.rate = 200e6}};
    const netem_emulator_t *e;
    char why[256], err[256];
    int can = netem_emulator_choose("netem", rate, 2, &e, why, sizeof why, err, sizeof err);
    if (can == -EOPNOTSUPP) {
        print_message("SKIP: the kernel emulator cannot shape these links here: %s\n", err);
        skip();
    }
    assert_int_equal(can, 0);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "sh -c 'echo launcher $$; exec %s run --model tiny --stages 3 --compute emulate:fwd=2ms,bwd=4ms "
             "--batch-size 4 --iters 2 --net rate=200mbit --emulator netem' 2>&1",
             tu_pipenem());
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = '\0';
    int st = pclose(f);
    print_message("%s", out);
    int pid = 0;
    assert_int_equal(sscanf(out, "launcher %d", &pid), 1);
    if (WEXITSTATUS(st) != 0 || !strstr(out, "one network namespace per stage") ||
        !strstr(out, "emulator: netem"))
        fail_msg("exit %d; the end of the output:\n%s", WEXITSTATUS(st), n > 1500 ? out + n - 1500 : out);
    char ls[256];
    snprintf(ls, sizeof ls, "ip netns list | grep -c '^pn%d' ", pid);
    f = popen(ls, "r");
    int left = -1;
    assert_int_equal(fscanf(f, "%d", &left), 1);
    pclose(f);
    print_message("namespaces of launcher %d left: %d (must be 0)\n", pid, left);
    assert_int_equal(left, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shim_loopback),
        cmocka_unit_test(test_shim_tied_twin),
        cmocka_unit_test(test_shim_never_early),
        cmocka_unit_test(test_shim_run_trace),
        cmocka_unit_test(test_netem_topology_run),
    };
    return cmocka_run_group_tests_name("pipeline over emulated links", tests, NULL, NULL);
}
