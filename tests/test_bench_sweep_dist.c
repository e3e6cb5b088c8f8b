/* The SPMD sweep under a real launcher: Debian's Open MPI starts three `pipenem sweep`
 * ranks, each in its own "host" (a network namespace of a 3-host topology: veths and a
 * bridge, 198.18.0.0/15) through a wrapper that enters namespace $OMPI_COMM_WORLD_RANK.
 * A 2-profile x 2-schedule sweep writes one results directory whose cells match a
 * one-box sweep of the same grid (iteration time within 10%: the rate profile makes the
 * links matter); `report` regenerates it; after SIGKILL of rank 1 mid-sweep (mpirun then
 * ends the others), `netem clear --all` on each host puts its qdiscs back and a
 * `--resume` finishes the missing cells. Replicas across hosts: 2 stages x --dp-sizes 1,2
 * on four ranks match the one-box sweep too. Every host's qdiscs end as they began. SKIP
 * where mpirun is absent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/results.h"
#include "netem/profile.h"
#include "netem/state.h"
#include "netem/topo.h"
#include "tests/testutil.h"

#define TOL 0.10
#define HOSTS 4   /* three for the grids below, four for two replicas of two stages */
#define GRID "--model tiny --stages 3 --batch-size 8 --seq-len 128 --compute emulate:fwd=20ms,bwd=40ms " \
             "--schedule gpipe,1f1b --profiles default,rate=3mbit --micro-batch-sizes 2 --warmup 1 " \
             "--timeout 15 --no-plots"
/* The in-transport shim across hosts. */
#define SHIM_GRID "--model tiny --stages 3 --batch-size 8 --seq-len 128 --compute emulate:fwd=20ms,bwd=40ms " \
                  "--schedule gpipe --profiles rate=10mbit --emulator shim --micro-batch-sizes 2 --warmup 1 " \
                  "--iters 3 --timeout 15 --no-plots"
/* Replicas across hosts: 2 stages x --dp-sizes 1,2 on four ranks (two sit out the first
 * cell), the replicas' links shaped like the pipeline's. */
#define DP_GRID "--model tiny --stages 2 --dp-sizes 1,2 --batch-size 8 --seq-len 128 " \
                "--compute emulate:fwd=20ms,bwd=40ms --schedule 1f1b --profiles rate=10mbit --net-dp rate=10mbit " \
                "--micro-batch-sizes 2 --warmup 1 --iters 5 --timeout 15 --no-plots"

static char base[128], wrap[160], skip_reason[256], qdisc_before[HOSTS][2048];
static netem_topo_t topo;
static int topo_made, port;

static void qdiscs(int host, char *buf, size_t len)
{
    tu_sh(buf, len, "tc -n %s qdisc show; tc -n %s filter show dev %s", netem_topo_host_ns(&topo, host),
       netem_topo_host_ns(&topo, host), netem_topo_host_ifname(&topo, host));
}

static int setup(void **state)
{
    (void)state;
    char err[256], out[512];
    if (geteuid() != 0) {
        snprintf(skip_reason, sizeof skip_reason, "needs root for network namespaces and qdiscs");
        return 0;
    }
    if (tu_sh(out, sizeof out, "command -v mpirun") != 0) {
        snprintf(skip_reason, sizeof skip_reason, "mpirun is absent (apt-get install openmpi-bin)");
        return 0;
    }
    snprintf(base, sizeof base, "/tmp/pn%ld-dist", (long)getpid());
    if (mkdir(base, 0755) && errno != EEXIST)
        return -1;
    setenv("PIPENEM_STATE_DIR", base, 1);
    if (netem_state_guard_start() < 0 || netem_topo_create(&topo, HOSTS, err, sizeof err) < 0) {
        print_message("cannot make the %d-host topology: %s\n", HOSTS, err);
        return -1;
    }
    topo_made = 1;
    for (int h = 0; h < HOSTS; h++)
        qdiscs(h, qdisc_before[h], sizeof qdisc_before[h]);
    /* Each rank in its host, with the host's own state directory (as on real hosts). */
    snprintf(wrap, sizeof wrap, "%s/wrap.sh", base);
    FILE *f = fopen(wrap, "w");
    if (!f)
        return -1;
    fprintf(f, "#!/bin/sh\nr=$OMPI_COMM_WORLD_RANK\nmkdir -p %s/state-h$r\n"
            "export PIPENEM_STATE_DIR=%s/state-h$r\nexec ip netns exec %s-h$r \"$@\"\n", base, base, topo.id);
    fclose(f);
    chmod(wrap, 0755);
    port = 29400 + (int)(getpid() % 500) * 2;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char out[4096];
    if (topo_made) {
        for (int h = 0; h < HOSTS; h++)   /* whatever a failed test left on a host */
            tu_sh(out, sizeof out, "PIPENEM_STATE_DIR=%s/state-h%d ip netns exec %s %s netem clear --all", base, h,
               netem_topo_host_ns(&topo, h), tu_pipenem());
        tu_sh(out, sizeof out, "for h in $(seq 0 %d); do ip netns pids %s-h$h | xargs -r kill -9; done", HOSTS - 1,
              topo.id);
        tu_sh(out, sizeof out, "sh tests/dist/slurm-private.sh down %s/slurm", base);   /* a failed srun test's */
        netem_topo_destroy(&topo);
    }
    if (base[0])
        tu_sh(out, sizeof out, "rm -rf %s", base);
    return 0;
}

#define NEED_MPI()                                                                        \
    do {                                                                                  \
        if (skip_reason[0]) {                                                             \
            print_message("SKIP: %s\n", skip_reason);                                     \
            skip();                                                                       \
        }                                                                                 \
    } while (0)

/* `mpirun -np NP WRAP pipenem sweep ARGS` in the background, output to log. */
static pid_t mpirun_np(int np, const char *log, const char *args)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "exec mpirun --allow-run-as-root --oversubscribe -np %d %s %s sweep %s > %s 2>&1", np,
             wrap, tu_pipenem(), args, log);
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Waits for pid at most timeout s (then kills its group): its exit status, or -1. */
static int wait_for(pid_t pid, double timeout)
{
    for (int i = 0; i < (int)(timeout * 10); i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(-pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static void show_log(const char *log)
{
    char out[1 << 14];
    tu_sh(out, sizeof out, "tail -c 3000 %s", log);
    print_message("%s\n", out);
}

/* `mpirun -np NP ... sweep ARGS` to its end within 240 s, or the test fails with its log. */
static void mpirun_ok(int np, const char *log, const char *args)
{
    int rc = wait_for(mpirun_np(np, log, args), 240);
    if (rc != 0) {
        show_log(log);
        fail_msg("mpirun -np %d sweep %.60s...: exit %d", np, args, rc);
    }
}

static void hosts_as_before(void)
{
    for (int h = 0; h < HOSTS; h++) {
        char now[2048];
        qdiscs(h, now, sizeof now);
        if (strcmp(now, qdisc_before[h]))
            fail_msg("host %d's qdiscs changed:\nbefore:\n%s\nafter:\n%s", h, qdisc_before[h], now);
    }
}

/* The grid swept by NP ranks under mpirun (rank 0's control port: ctl) into dist, every
 * host's qdiscs then as before, and by one box into local. */
static void sweep_both(int np, const char *grid, int ctl, const char *dist, const char *local)
{
    char log[300], args[1024], out[1 << 14];
    snprintf(log, sizeof log, "%s.log", dist);
    snprintf(args, sizeof args, "--dist-url tcp://%s:%d %s --out %s", netem_topo_host_addr(&topo, 0), ctl, grid,
             dist);
    mpirun_ok(np, log, args);
    hosts_as_before();
    int rc = tu_pipenem_run(out, sizeof out, "sweep %s --out %s", grid, local);
    if (rc != 0)
        fail_msg("one-box sweep: exit %d\n%s", rc, out);
}

/* The distributed and the one-box results, n cells each, the same configuration cell by
 * cell (the emulator too: none, or netem (TBF) for a rate), their times printed: the
 * largest relative difference of the median iteration, or with by_min of the fastest;
 * *a keeps the distributed cells. */
static double vs_one_box(const char *dist, const char *local, size_t n, int by_min, results_t *a)
{
    char err[512];
    results_t b;
    results_init(a);
    results_init(&b);
    if (results_read(dist, a, err, sizeof err) || results_read(local, &b, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(a->n_cells, n);
    assert_int_equal(b.n_cells, n);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        const results_cell_t *x = &a->cells[i], *y = &b.cells[i];
        assert_string_equal(x->schedule, y->schedule);
        assert_string_equal(x->profile, y->profile);
        assert_int_equal(x->dp, y->dp);
        assert_string_equal(x->emulator, y->emulator);
        double tx = by_min ? x->iter_min : x->iter_median, ty = by_min ? y->iter_min : y->iter_median;
        double d = tu_reldiff(tx, ty, 1e-9);
        worst = d > worst ? d : worst;
        print_message("cell %d %s %s DP %d [%s]: %s iteration distributed %.4f s, one box %.4f s, difference "
                      "%.2f%% (medians %.4f s and %.4f s)\n", x->cell, x->schedule, x->profile, x->dp, x->emulator,
                      by_min ? "fastest" : "median", tx, ty, d * 100, x->iter_median, y->iter_median);
    }
    results_destroy(&b);
    return worst;
}

static void test_matches_one_box(void **state)
{
    (void)state;
    NEED_MPI();
    char dist[200], local[200], out[1 << 14];
    snprintf(dist, sizeof dist, "%s/dist", base);
    snprintf(local, sizeof local, "%s/local", base);
    sweep_both(3, GRID " --iters 4", port, dist, local);
    /* The same files. */
    static const char *const files[] = {"runs.csv", "iterations.csv", "ops.csv", "table.md", "trace.json",
                                        "command.txt", "environment.txt", "sweep.args"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char p[300];
        snprintf(p, sizeof p, "%s/%s", dist, files[i]);
        if (access(p, R_OK))
            fail_msg("the distributed sweep wrote no %s", files[i]);
    }
    results_t a;
    double worst = vs_one_box(dist, local, 4, 0, &a);
    /* The link matters: the rate cells are slower than the unshaped ones. */
    assert_true(a.cells[1].iter_median > 1.1 * a.cells[0].iter_median);
    results_destroy(&a);
    print_message("largest difference %.2f%% (tolerance %.0f%%)\n", worst * 100, TOL * 100);
    assert_true(worst <= TOL);
    /* `report` regenerates it. */
    char p[300];
    snprintf(p, sizeof p, "%s/table.md", dist);
    assert_int_equal(unlink(p), 0);
    int rc = tu_pipenem_run(out, sizeof out, "report %s --no-plots", dist);
    if (rc != 0)
        fail_msg("report: exit %d\n%s", rc, out);
    assert_int_equal(access(p, R_OK), 0);
}

static int cells_in(const char *dir)
{
    char out[64];
    tu_sh(out, sizeof out, "test -f %s/runs.csv && tail -n +2 %s/runs.csv | grep -c .", dir, dir);
    return atoi(out);
}

static void test_resume_after_killing_rank1(void **state)
{
    (void)state;
    NEED_MPI();
    char dir[200], log[200], args[1024], out[1 << 14], err[512];
    snprintf(dir, sizeof dir, "%s/killed", base);
    snprintf(log, sizeof log, "%s/killed.log", base);
    snprintf(args, sizeof args, "--dist-url tcp://%s:%d " GRID " --iters 6 --out %s", netem_topo_host_addr(&topo, 0),
             port + 20, dir);
    pid_t pid = mpirun_np(3, log, args);
    /* Mid-sweep: a cell finished and the next (the rate profile) shaping host 1. */
    int n = 0, shaped = 0;
    for (int i = 0; i < 1200 && !(n >= 1 && shaped); i++) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        n = cells_in(dir);
        shaped = tu_sh(out, sizeof out, "tc -n %s qdisc show | grep -q htb", netem_topo_host_ns(&topo, 1)) == 0;
    }
    if (n < 1 || !shaped) {
        wait_for(pid, 0.1);
        show_log(log);
        fail_msg("no cell finished, or host 1 was never shaped");
    }
    /* Rank 1 and its stage, SIGKILLed: no handler runs. */
    tu_sh(out, sizeof out, "ip netns pids %s | xargs -r kill -9", netem_topo_host_ns(&topo, 1));
    int rc = wait_for(pid, 120);
    show_log(log);
    print_message("mpirun after SIGKILL of rank 1: exit %d; cells kept %d\n", rc, cells_in(dir));
    assert_true(rc != 0);
    n = cells_in(dir);
    assert_true(n >= 1 && n < 4);
    /* mpirun ends the other ranks too (SIGTERM, then SIGKILL), but a rank's own child may
     * outlive it for a moment: SIGKILL whatever is left in every host (the acceptance's
     * "every rank killed"), wait until each host is empty, then on every host clear --all
     * puts back whatever a killed rank left. */
    for (int h = 0; h < 3; h++) /* killed, and each of them gone or a zombie (at most 5 s) */
        tu_sh(out, sizeof out,
              "p=$(ip netns pids %s); [ -z \"$p\" ] || kill -9 $p; for i in $(seq 100); do a=; for q in $p; do "
              "s=$(awk '{print $3}' /proc/$q/stat 2>/dev/null); [ -n \"$s\" ] && [ \"$s\" != Z ] && a=1; done; "
              "[ -z \"$a\" ] && break; sleep 0.05; done",
              netem_topo_host_ns(&topo, h));
    for (int h = 0; h < 3; h++) {
        rc = tu_sh(out, sizeof out, "PIPENEM_STATE_DIR=%s/state-h%d ip netns exec %s %s netem clear --all", base, h,
                netem_topo_host_ns(&topo, h), tu_pipenem());
        print_message("host %d: %s", h, out);
        assert_int_equal(rc, 0);
        if (h == 1)   /* killed while shaped: its tree stayed until now */
            assert_non_null(strstr(out, "undone 1 record,"));
    }
    hosts_as_before();

    snprintf(log, sizeof log, "%s/resume.log", base);
    snprintf(args, sizeof args, "--resume %s", dir);
    mpirun_ok(3, log, args);
    results_t r;
    results_init(&r);
    if (results_read(dir, &r, err, sizeof err))
        fail_msg("%s", err);
    print_message("after --resume: %zu cells (%d kept from the killed run)\n", r.n_cells, n);
    assert_int_equal(r.n_cells, 4);
    results_destroy(&r);
    hosts_as_before();
}

/* `pipenem netem selftest --dist-url` under mpirun: each link's two ends measure it under
 * the per-destination shaping; the command judges the goodput against rate x 1448/1514
 * (5%) itself, and this test reads every row back. */
static void test_selftest_across_hosts(void **state)
{
    (void)state;
    NEED_MPI();
    char log[200], cmd[1024], out[1 << 14];
    snprintf(log, sizeof log, "%s/selftest.log", base);
    snprintf(cmd, sizeof cmd, "exec mpirun --allow-run-as-root --oversubscribe -np 3 %s %s netem selftest --dist-url "
             "tcp://%s:%d --net rate=50mbit --net rate=200mbit > %s 2>&1", wrap, tu_pipenem(),
             netem_topo_host_addr(&topo, 0), port + 40, log);
    int rc = tu_sh(out, sizeof out, "%s", cmd);
    show_log(log);
    assert_int_equal(rc, 0);
    tu_sh(out, sizeof out, "cat %s", log);
    static const char *const rows[] = {"rate=50Mbps", "rate=200Mbps"};
    static const double rates[] = {50e6, 200e6};
    double worst = 0;
    for (int i = 0; i < 2; i++)
        for (int L = 0; L < 2; L++) {
            char pat[64], name[32], link[8], verdict[16];
            double v[9];
            snprintf(pat, sizeof pat, "  %-22s %d-%-3d", rows[i], L, L + 1);
            const char *p = strstr(out, pat);
            if (!p || sscanf(p, "%31s %7s %lf %lf %lf %lf %lf %lf %lf %lf %15s", name, link, &v[0], &v[1], &v[2],
                             &v[3], &v[4], &v[5], &v[6], &v[7], verdict) != 11)
                fail_msg("no row for %s on link %d-%d", rows[i], L, L + 1);
            double want = netem_profile_goodput(rates[i], 1500), d = tu_reldiff(v[6] * 1e9, want, 1);
            worst = d > worst ? d : worst;
            assert_string_equal(verdict, "ok");
        }
    print_message("largest goodput difference %.2f%% (tolerance 5%%)\n", worst * 100);
    assert_true(worst <= 0.05);
    hosts_as_before();
}

/* Replicas across hosts: each cell on its D x 2 ranks (the others sit it out), every
 * rank shaping its traffic to its pipeline neighbour and to its stage's other replica;
 * both cells match the one-box sweep (D x P namespaces shaped per pair), and the second
 * replica's all-reduce through 10 Mbit/s shows. A launcher of the wrong size is named. */
static void test_dp_across_hosts(void **state)
{
    (void)state;
    NEED_MPI();
    char dist[200], local[200], log[200], args[1024], out[1 << 14];
    snprintf(dist, sizeof dist, "%s/dp-dist", base);
    snprintf(local, sizeof local, "%s/dp-local", base);
    snprintf(log, sizeof log, "%s/dp.log", base);
    snprintf(args, sizeof args, "--dist-url tcp://%s:%d " DP_GRID " --out %s", netem_topo_host_addr(&topo, 0),
             port + 80, dist);
    int rc = wait_for(mpirun_np(3, log, args), 60);
    tu_sh(out, sizeof out, "cat %s", log);
    print_message("3 ranks for 2 stages x 2 replicas: exit %d\n", rc);
    if (rc == 0 || !strstr(out, "the launcher started 3 ranks") || !strstr(out, "needs 4"))
        fail_msg("a launcher of 3 ranks was not refused by name (exit %d):\n%s", rc, out);
    tu_sh(out, sizeof out, "rm -rf %s", dist);
    sweep_both(4, DP_GRID, port + 80, dist, local);
    results_t a;
    /* The fastest iterations: the one-box topology shapes the replicas' pairs at the
     * switch's ports, where a full TBF queue drops packets TCP must recover (+1-12% on
     * some iterations), while each rank here shapes its own egress, whose drops TCP sees
     * at once; the shaping itself is the same. */
    double worst = vs_one_box(dist, local, 2, 1, &a);
    assert_int_equal(a.cells[0].dp, 1);
    assert_int_equal(a.cells[1].dp, 2);
    /* the all-reduce crossed the shaped replica link */
    assert_true(a.cells[1].iter_median > 1.3 * a.cells[0].iter_median);
    results_destroy(&a);
    print_message("largest difference %.2f%% (tolerance %.0f%%)\n", worst * 100, TOL * 100);
    assert_true(worst <= TOL);
}

/* The shim across hosts: UCX picks its own transports there, and between namespaces of
 * one machine its shared memory would lose every wake-up (2.24 s iterations instead of
 * 0.31 s, measured): the cell matches the one-box sweep's shim. */
static void test_shim_across_hosts(void **state)
{
    (void)state;
    NEED_MPI();
    char dist[200], local[200];
    snprintf(dist, sizeof dist, "%s/shim-dist", base);
    snprintf(local, sizeof local, "%s/shim-local", base);
    sweep_both(3, SHIM_GRID, port + 100, dist, local);
    results_t a;
    double worst = vs_one_box(dist, local, 1, 0, &a);
    assert_string_equal(a.cells[0].emulator, "shim");
    results_destroy(&a);
    print_message("largest difference %.2f%% (tolerance %.0f%%)\n", worst * 100, TOL * 100);
    assert_true(worst <= TOL);
}

/* The grid's gpipe half under Slurm's own launcher: a private one-node Slurm (tests/dist/
 * slurm-private.sh: munged, slurmctld and slurmd on their own ports and files), `srun -n3`
 * of the wrapper, which enters namespace $SLURM_PROCID; rank, size and token come from
 * SLURM_*. SKIP where slurm-wlm is not installed. */
static void test_srun_sweep(void **state)
{
    (void)state;
    NEED_MPI();
    char dir[200], sl[200], swrap[200], log[200], out[1 << 14], err[512];
    snprintf(sl, sizeof sl, "%s/slurm", base);
    int rc = tu_sh(out, sizeof out, "sh tests/dist/slurm-private.sh up %s", sl);
    if (rc == 3) {
        print_message("%s", out);
        skip();
    }
    if (rc != 0) {
        tu_sh(out + strlen(out), sizeof out - strlen(out), "sh tests/dist/slurm-private.sh down %s", sl);
        fail_msg("cannot start a private Slurm: %s", out);
    }
    snprintf(swrap, sizeof swrap, "%s/swrap.sh", base);
    FILE *f = fopen(swrap, "w");
    assert_non_null(f);
    fprintf(f, "#!/bin/sh\nr=$SLURM_PROCID\nmkdir -p %s/state-h$r\nexport PIPENEM_STATE_DIR=%s/state-h$r\n"
            "exec ip netns exec %s-h$r \"$@\"\n", base, base, topo.id);
    fclose(f);
    chmod(swrap, 0755);
    snprintf(dir, sizeof dir, "%s/srun", base);
    snprintf(log, sizeof log, "%s/srun.log", base);
    rc = tu_sh(out, sizeof out, "SLURM_CONF=%s/slurm.conf timeout 240 srun -n3 --overcommit %s %s sweep --dist-url "
               "tcp://%s:%d " GRID " --schedule gpipe --iters 3 --out %s > %s 2>&1", sl, swrap, tu_pipenem(),
               netem_topo_host_addr(&topo, 0), port + 60, dir, log);
    tu_sh(out, sizeof out, "sh tests/dist/slurm-private.sh down %s", sl);
    if (rc != 0) {
        show_log(log);
        fail_msg("srun sweep: exit %d", rc);
    }
    results_t r;
    results_init(&r);
    if (results_read(dir, &r, err, sizeof err))
        fail_msg("%s", err);
    print_message("srun -n3 sweep (gpipe): %zu cells; rate cell %.3f s, unshaped %.3f s\n", r.n_cells,
                  r.cells[1].iter_median, r.cells[0].iter_median);
    assert_int_equal(r.n_cells, 2);
    assert_true(r.cells[1].iter_median > 1.1 * r.cells[0].iter_median);
    results_destroy(&r);
    hosts_as_before();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_one_box),
        cmocka_unit_test(test_resume_after_killing_rank1),
        cmocka_unit_test(test_selftest_across_hosts),
        cmocka_unit_test(test_dp_across_hosts),
        cmocka_unit_test(test_shim_across_hosts),
        cmocka_unit_test(test_srun_sweep),
    };
    return cmocka_run_group_tests_name("bench_sweep_dist", tests, setup, teardown);
}
