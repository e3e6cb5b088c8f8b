/* Emulated links: the in-transport shaper delivers no tensor before its link's delay and
 * serialisation allow (in one process, then in a 3-stage run's trace), and a run over
 * netem's namespace topology succeeds and leaves no namespace behind. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "netem/profile.h"
#include "pipeline/shim.h"
#include "pipeline/transport.h"
#include "pipeline/ucx.h"
#include "tests/testutil.h"

static char out[1 << 18];

static void test_shim_loopback(void **state)
{
    (void)state;
    char err[256];
    netem_profile_t link = {.delay = 0.05, .rate = 80e6};
    static double offset = 0;
    transport_t t[2];
    for (int r = 0; r < 2; r++) {
        transport_t raw;
        ucx_params_t p = {.rank = r, .size = 2};
        assert_int_equal(ucx_transport_open(&p, &raw, err, sizeof err), 0);
        assert_int_equal(shim_transport_wrap(&raw, &link, &offset, &t[r], err, sizeof err), 0);
    }
    for (int r = 0; r < 2; r++) {
        const void *b;
        size_t l;
        t[1 - r].ops->address(t[1 - r].impl, &b, &l);
        assert_int_equal(t[r].ops->connect(t[r].impl, 1 - r, b, l, err, sizeof err), 0);
    }
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
    /* one message: serialisation (wire bytes at 80 Mbit/s) + delay; the second queues
     * behind the first on the link */
    double ser = (double)BYTES * 8 / 80e6;
    print_message("first delivered after %.4f s (>= %.4f), second after %.4f s (>= %.4f)\n", d1, ser + 0.05, d2,
                  2 * ser + 0.05);
    assert_true(d1 >= ser + 0.05);
    assert_true(d2 >= 2 * ser + 0.05);
    assert_memory_equal(a, b2, BYTES);
    for (int r = 0; r < 2; r++) {
        transport_quiesce(&t[r]);
        transport_destroy(&t[r]);
    }
}

/* The trace of a shimmed 3-stage run: each RECV ends no earlier than its SEND started
 * plus the link's delay (clocks aligned at bootstrap, tolerance 1 ms for that). */
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
    double worst = 1e9;
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
                checked++;
            }
    }
    print_message("%d receives checked; smallest (arrival - send - delay) %.6f s (must be >= -0.001)\n", checked, worst);
    assert_int_equal(checked, 3 * 4 * 4); /* (1 warm-up + 2) iterations x 4 micro-batches x 4 link directions */
    assert_true(worst >= -0.001);
}

static void test_netem_topology_run(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        print_message("SKIP: needs root for namespaces\n");
        skip();
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "sh -c 'echo launcher $$; exec %s run --model tiny --stages 3 --compute emulate:fwd=2ms,bwd=4ms "
             "--batch-size 4 --iters 2 --net rate=200mbit' 2>&1",
             tu_pipenem());
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = '\0';
    int st = pclose(f);
    print_message("%s", out);
    int pid = 0;
    assert_int_equal(sscanf(out, "launcher %d", &pid), 1);
    if (strstr(out, "cannot do these links") || strstr(out, "network emulation:")) {
        print_message("SKIP: the kernel emulator is not usable here\n");
        skip();
    }
    if (WEXITSTATUS(st) != 0 || !strstr(out, "one network namespace per stage"))
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
        cmocka_unit_test(test_shim_run_trace),
        cmocka_unit_test(test_netem_topology_run),
    };
    return cmocka_run_group_tests_name("pipeline over emulated links", tests, NULL, NULL);
}
