/* The sweep measuring for real (issue 5's acceptance): a small sweep (tiny model, 2
 * schedules x 2 micro-batch sizes x 2 profiles) writes every file, table.md has the
 * expected rows and columns and the CSV's numbers, `report` regenerates it identically;
 * SIGINT then --resume gives the same cells as one uninterrupted sweep with nothing left
 * on the machine in between; and --straggler 1:1.5 reports the slowdown the simulator
 * expects within 3% and names stage 1; without one the slowdown is about 1 and the
 * modelled memory follows the schedule; the 10ms/1Gbps cells are slower than the default
 * ones by what the link model says (within 10%) and record the emulator auto picks here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "bench/csvio.h"
#include "bench/plot.h"
#include "bench/results.h"
#include "models/options.h"
#include "netem/emulator.h"
#include "netem/profile.h"
#include "netem/topo.h"
#include "schedules/sim.h"
#include "tests/testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define GRID "--model tiny --stages 2 --batch-size 4 --seq-len 16 --schedule gpipe,1f1b " \
             "--micro-batch-sizes 1,2 --profiles default,10ms/1Gbps --iters 3 --warmup 1 "     \
             "--compute emulate:fwd=5ms,bwd=10ms"

static char base[128], full[256];
static char out[1 << 16];
static int have_runner = -1;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int setup(void **state)
{
    (void)state;
    snprintf(base, sizeof base, "/tmp/pn-test-sweeprun-XXXXXX");
    if (!mkdtemp(base))
        return -1;
    snprintf(full, sizeof full, "%s/full", base);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return sh("rm -rf '%s'", base);
}

static void no_leftovers(pid_t pid)
{
    char prefix[32], list[1024] = "";
    snprintf(prefix, sizeof prefix, "pn%d", (int)pid);
    int n = netem_topo_leftovers(prefix, list, sizeof list);
    print_message("namespaces and links left by the sweep (pid %d): %d %s\n", (int)pid, n, list);
    assert_int_equal(n, 0);
}

/* The sweep of the integration test, once; later tests compare against it. */
static int run_full(void)
{
    if (have_runner >= 0)
        return have_runner;
    char log[300], args[1024];
    snprintf(log, sizeof log, "%s/full.log", base);
    snprintf(args, sizeof args, "sweep " GRID " --out %s", full);
    pid_t pid = tu_pipenem_spawn(log, args);
    int st;
    waitpid(pid, &st, 0);
    char *text = NULL;
    size_t len;
    have_runner = 0;   /* until it is known to have worked: the other tests fail, not rerun it */
    if (csvio_file_read(log, &text, &len, NULL, 0))
        fail_msg("no log");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("pipenem %s failed (status %d):\n%s", args, st, text);
    print_message("%s", strstr(text, "[8/8]") ? strstr(text, "[8/8]") : text);
    no_leftovers(pid);
    have_runner = 1;
    free(text);
    return have_runner;
}

/* Every test below reads the one full sweep, run once by whichever test comes first. */
#define NEED_RUNNER()                                                                              \
    do {                                                                                           \
        if (!run_full())                                                                           \
            fail_msg("the full sweep failed (see the first test that ran it)");                   \
    } while (0)

/* The displayed number equals v to the digits shown. */
static void same_shown(const char *text, double v)
{
    char *end;
    double x = strtod(text, &end);
    const char *dot = strchr(text, '.');
    int dec = dot && dot < end ? (int)(end - dot - 1) : 0;
    if (end == text || fabs(x - v) > 0.5 * pow(10, -dec) * (1 + 1e-9))
        fail_msg("table.md shows '%s', runs.csv has %.17g", text, v);
}

static void test_sweep_writes_every_file(void **state)
{
    (void)state;
    NEED_RUNNER();
    static const char *const files[] = {"runs.csv", "iterations.csv", "ops.csv", "table.md", "trace.json",
                                        "command.txt", "environment.txt", "sweep.args"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++)
        if (sh("test -s '%s/%s'", full, files[i]))
            fail_msg("%s/%s is missing or empty", full, files[i]);
    if (plot_gnuplot_found()) {
        assert_int_equal(sh("test -s '%s/plots/iteration_time.png' && test -s '%s/plots/iteration_time.svg'", full,
                            full), 0);
        /* Timelines of the grid's choice only (per schedule: micro-batch size 1 on the first
         * and the last profile), none left over from the sweep's intermediate states. */
        assert_int_equal(sh("cd '%s/plots' && test \"$(ls timeline_cell*.png | tr '\\n' ' ')\" = "
                            "'timeline_cell0.png timeline_cell2.png timeline_cell4.png timeline_cell6.png '", full), 0);
    } else
        print_message("SKIP: plots: gnuplot not found\n");
    results_t r;
    results_init(&r);
    char err[512];
    if (results_read(full, &r, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(r.n_cells, 8);
    for (size_t i = 0; i < r.n_cells; i++) {
        const results_cell_t *c = &r.cells[i];
        size_t iters = 0, ops = 0;
        for (size_t k = 0; k < r.n_iters; k++)
            iters += r.iters[k].cell == c->cell;
        for (size_t k = 0; k < r.n_ops; k++)
            ops += r.ops[k].cell == c->cell;
        print_message("cell %d %s b=%d %s: median %.4f s, predicted %.4f s, emulator %s, %zu iterations, %zu ops\n",
                      c->cell, c->schedule, c->micro_batch_size, c->profile, c->iter_median, c->predicted,
                      c->emulator, iters, ops);
        assert_int_equal(iters, 4);
        assert_true(ops > 0);
        assert_true(c->iter_median > 0);
    }
    /* table.md: the rows and columns, and each iteration time equal to the CSV's. */
    char path[300], *md;
    size_t len;
    snprintf(path, sizeof path, "%s/table.md", full);
    assert_int_equal(csvio_file_read(path, &md, &len, NULL, 0), 0);
    static const char *const labels[] = {"default", "delay 10ms  bandwidth 1Gbps"};
    int checked = 0;
    for (int a = 0; a < 2; a++) {
        const char *sched = a ? "1f1b" : "gpipe";
        char head[64];
        snprintf(head, sizeof head, "## Schedule: %s\n", sched);
        char *p = strstr(md, head);
        assert_non_null(p);
        p += strlen(head) + 1; /* past the blank line: the header row */
        if (strncmp(p, "| Network setting | Micro batch size: 1 | Micro batch size: 2 |\n", 64))
            fail_msg("%s's table header is '%.*s'", sched, (int)strcspn(p, "\n"), p);
        p = strchr(p, '\n') + 1;
        p = strchr(p, '\n') + 1; /* past the --- row */
        for (int l = 0; l < 2; l++) {
            char want[64];
            snprintf(want, sizeof want, "| %s | ", labels[l]);
            if (strncmp(p, want, strlen(want)))
                fail_msg("row %d of %s's table is '%.*s'", l, sched, (int)strcspn(p, "\n"), p);
            char *cell = p + strlen(want);
            for (int m = 0; m < 2; m++) {
                const results_cell_t *c = NULL;
                for (size_t i = 0; i < r.n_cells; i++)
                    if (!strcmp(r.cells[i].schedule, sched) && r.cells[i].micro_batch_size == m + 1 &&
                        !strcmp(r.cells[i].label, labels[l]))
                        c = &r.cells[i];
                assert_non_null(c);
                same_shown(cell, c->iter_median);
                checked++;
                cell = strstr(cell, "| ") + 2;
            }
            p = strchr(p, '\n') + 1;
        }
    }
    print_message("%d iteration times of table.md equal runs.csv to the digits shown\n", checked);
    free(md);
    results_destroy(&r);
    /* `report` regenerates the derived files identically. */
    assert_int_equal(sh("rm -rf '%s.copy' && cp -r '%s' '%s.copy' && rm -rf '%s/table.md' '%s/trace.json' '%s/plots'",
                        full, full, full, full, full, full), 0);
    int rc = tu_pipenem_run(out, sizeof out, "report '%s'", full);
    if (rc)
        fail_msg("report exited %d:\n%s", rc, out);
    assert_int_equal(sh("diff -r '%s.copy' '%s' >&2", full, full), 0);
}

/* Returns once runs.csv at path holds `cells` rows (fails after 300 s). */
static void wait_cells(const char *path, size_t cells)
{
    double waited = 0;
    for (;;) {
        char *text = NULL;
        size_t len = 0, lines = 0;
        if (csvio_file_read(path, &text, &len, NULL, 0) == 0) {
            for (size_t i = 0; i < len; i++)
                lines += text[i] == '\n';
            free(text);
        }
        if (lines >= cells + 1)
            return;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        waited += 0.02;
        if (waited > 300)
            fail_msg("the sweep wrote no %zu cells in 300 s", cells);
    }
}

static void test_sigint_then_resume(void **state)
{
    (void)state;
    NEED_RUNNER();
    char dir[300], log[300], args[1024], path[320];
    snprintf(dir, sizeof dir, "%s/part", base);
    snprintf(log, sizeof log, "%s/part.log", base);
    snprintf(path, sizeof path, "%s/runs.csv", dir);
    snprintf(args, sizeof args, "sweep " GRID " --out %s", dir);
    pid_t pid = tu_pipenem_spawn(log, args);
    wait_cells(path, 2);   /* interrupt once two cells are in runs.csv */
    kill(pid, SIGINT);
    int st;
    waitpid(pid, &st, 0);
    print_message("after SIGINT: %s %d\n", WIFSIGNALED(st) ? "killed by signal" : "exit status",
                  WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    assert_true(WIFSIGNALED(st) || WEXITSTATUS(st) != 0);
    no_leftovers(pid);
    results_t r;
    results_init(&r);
    char err[512];
    if (results_read(dir, &r, err, sizeof err))
        fail_msg("%s", err);
    size_t kept = r.n_cells;
    print_message("cells kept after the interrupt: %zu of 8\n", kept);
    assert_true(kept >= 2 && kept < 8);
    for (size_t i = 0; i < r.n_ops; i++)
        assert_non_null(results_cell_find(&r, r.ops[i].cell)); /* nothing of an unfinished cell */
    results_destroy(&r);

    snprintf(log, sizeof log, "%s/resume.log", base);
    snprintf(args, sizeof args, "sweep --resume %s", dir);
    pid = tu_pipenem_spawn(log, args);
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    no_leftovers(pid);

    results_t a, b;
    results_init(&a);
    results_init(&b);
    if (results_read(full, &a, err, sizeof err) || results_read(dir, &b, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(a.n_cells, b.n_cells);
    assert_int_equal(a.n_iters, b.n_iters);
    assert_int_equal(a.n_ops, b.n_ops);
    for (size_t i = 0; i < a.n_cells; i++) {
        const results_cell_t *x = &a.cells[i], *y = &b.cells[i];
        assert_int_equal(x->cell, y->cell);
        assert_string_equal(x->schedule, y->schedule);
        assert_int_equal(x->micro_batch_size, y->micro_batch_size);
        assert_string_equal(x->profile, y->profile);
        assert_string_equal(x->emulator, y->emulator);
    }
    print_message("resumed sweep: %zu cells, %zu iterations, %zu ops, as the uninterrupted one\n", b.n_cells,
                  b.n_iters, b.n_ops);
    results_destroy(&a);
    results_destroy(&b);
}

/* SIGKILL of the sweep process itself while it measures its second cell (no handler
 * runs: its namespaces, qdisc records and scratch folder stay behind), then --resume:
 * it finishes the missing cell, undoes what the killed sweep left, and leaves no
 * temporary file, no namespace or link of either sweep and no state file of the killed
 * one. */
static void test_sigkill_then_resume(void **state)
{
    (void)state;
    char dir[300], log[300], args[1024], path[320];
    snprintf(dir, sizeof dir, "%s/killed", base);
    snprintf(log, sizeof log, "%s/killed.log", base);
    snprintf(path, sizeof path, "%s/runs.csv", dir);
    snprintf(args, sizeof args, "sweep --model tiny --stages 2 --batch-size 4 --seq-len 16 --schedules gpipe "
             "--micro-batch-sizes 1 --profiles default,10ms/1Gbps --iters 20 --warmup 1 "
             "--compute emulate:fwd=5ms,bwd=10ms --no-plots --out %s", dir);
    pid_t pid = tu_pipenem_spawn(log, args);
    wait_cells(path, 1);
    struct timespec ts = {0, 500 * 1000 * 1000};   /* into cell 1's 2 s of iterations */
    nanosleep(&ts, NULL);
    assert_int_equal(kill(pid, SIGKILL), 0);
    int st;
    waitpid(pid, &st, 0);
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL) {
        sh("cat '%s' >&2", log);
        fail_msg("the sweep was not killed mid-cell (status %d; its output above)", st);
    }
    char prefix[32], list[1024] = "";
    snprintf(prefix, sizeof prefix, "pn%d", (int)pid);
    int left = netem_topo_leftovers(prefix, list, sizeof list);
    print_message("after SIGKILL of the sweep (pid %d): %d namespaces/links left (%s); its files: ", (int)pid, left,
                  list);
    sh("ls -A '%s' | tr '\\n' ' ' >&2; echo >&2", dir);

    snprintf(log, sizeof log, "%s/killed-resume.log", base);
    snprintf(args, sizeof args, "sweep --resume %s", dir);
    pid_t rpid = tu_pipenem_spawn(log, args);
    waitpid(rpid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("--resume after SIGKILL exited %d; see %s", WIFEXITED(st) ? WEXITSTATUS(st) : -1, log);
    no_leftovers(pid);
    no_leftovers(rpid);
    /* nothing half-written or scratch: no *.tmp* file, no .cells folder */
    int stale = sh("cd '%s' && test -z \"$(find . -name '*.tmp*' -o -name .cells)\"", dir);
    if (stale)
        sh("cd '%s' && find . -name '*.tmp*' -o -name .cells >&2", dir);
    assert_int_equal(stale, 0);
    /* the killed sweep's state file is gone (its records undone) */
    const char *sd = getenv("PIPENEM_STATE_DIR");
    assert_int_equal(sh("test ! -e '%s/run-%d.state'", sd && *sd ? sd : "/run/pipenem", (int)pid), 0);
    results_t r;
    results_init(&r);
    char err[512];
    if (results_read(dir, &r, err, sizeof err))
        fail_msg("%s", err);
    print_message("resumed after SIGKILL: %zu cells, %zu iterations\n", r.n_cells, r.n_iters);
    assert_int_equal(r.n_cells, 2);
    assert_int_equal(r.n_iters, 2 * 21);
    results_destroy(&r);
}

/* The largest SEND_ACT and SEND_GRAD bytes of a cell's trace. */
static void cell_bytes(const results_t *r, int cell, double *act, double *grad)
{
    *act = *grad = 0;
    for (size_t k = 0; k < r->n_ops; k++) {
        const results_op_t *o = &r->ops[k];
        if (o->cell != cell)
            continue;
        if (!strcmp(o->op, "SEND_ACT"))
            *act = fmax(*act, (double)o->bytes);
        if (!strcmp(o->op, "SEND_GRAD"))
            *grad = fmax(*grad, (double)o->bytes);
    }
}

/* The simulator's iteration time of a cell of GRID (2 stages, fwd 5 ms, bwd 10 ms per
 * micro-batch) over links of the given profile (NULL: free links). */
static double sim_time(const results_cell_t *c, const netem_profile_t *p, double act, double grad)
{
    sim_cost_t cost[2] = {{0.005, 0.010, 0}, {0.005, 0.010, 0}};
    sim_link_t l = {0};
    if (p)
        l = (sim_link_t){.delay = p->delay, .bandwidth = netem_profile_goodput(p->rate, 1500)};
    sim_config_t cfg = {.schedule = c->schedule, .stages = 2, .micro_batches = c->micro_batches, .cost = cost,
                        .link_fwd = p ? &l : NULL, .link_bwd = p ? &l : NULL, .act_bytes = act,
                        .grad_bytes = grad};
    sim_result_t res = {0};
    char err[256];
    if (sim_run(&cfg, &res, err, sizeof err))
        fail_msg("%s", err);
    double t = res.time;
    sim_result_destroy(&res);
    return t;
}

/* The profiles matter: each 10ms/1Gbps cell is slower than its default cell by the extra
 * time the simulator gives for that link (10 ms one way, TCP goodput of 1 Gbit/s, the
 * cell's message sizes) on the emulated costs; summed over the four cell pairs, within
 * 10%. The emulator column names what was used: none for default, for 10ms/1Gbps what
 * auto picks on this machine. */
static void test_profiles_effect(void **state)
{
    (void)state;
    NEED_RUNNER();
    results_t r;
    results_init(&r);
    char err[512], why[256];
    if (results_read(full, &r, err, sizeof err))
        fail_msg("%s", err);
    netem_profile_t slow[1];
    assert_int_equal(netem_net_parse("10ms/1Gbps", 2, slow, err, sizeof err), 0);
    const netem_emulator_t *e;
    assert_int_equal(netem_emulator_choose("auto", slow, 1, &e, why, sizeof why, err, sizeof err), 0);
    double meas = 0, want = 0;
    int pairs = 0;
    for (size_t i = 0; i < r.n_cells; i++) {
        const results_cell_t *d = &r.cells[i], *c = NULL;
        if (strcmp(d->profile, "default"))
            continue;
        assert_string_equal(d->emulator, "none");
        for (size_t j = 0; j < r.n_cells; j++)
            if (!strcmp(r.cells[j].profile, "10ms/1Gbps") && !strcmp(r.cells[j].schedule, d->schedule) &&
                r.cells[j].micro_batch_size == d->micro_batch_size)
                c = &r.cells[j];
        assert_non_null(c);
        if (strcmp(c->emulator, e->name))
            fail_msg("cell %d (%s) records emulator '%s'; auto picks '%s' here (%s)", c->cell, c->profile,
                     c->emulator, e->name, why);
        double act, grad;
        cell_bytes(&r, c->cell, &act, &grad);
        double extra = sim_time(c, slow, act, grad) - sim_time(c, NULL, act, grad);
        print_message("%s b=%d: default %.4f s, 10ms/1Gbps %.4f s (%s): %.4f s slower, the link model says %.4f s\n",
                      d->schedule, d->micro_batch_size, d->iter_median, c->iter_median, c->emulator,
                      c->iter_median - d->iter_median, extra);
        meas += c->iter_median - d->iter_median;
        want += extra;
        pairs++;
    }
    results_destroy(&r);
    assert_int_equal(pairs, 4);
    double rd = fabs(meas - want) / want;
    print_message("10ms/1Gbps over default, summed over %d cell pairs: %.4f s measured, %.4f s modelled, "
                  "difference %.1f%% (tolerance 10%%)\n", pairs, meas, want, rd * 100);
    assert_true(want > 0.05);
    assert_true(rd <= 0.10);
}

/* Runs the two-schedule gpt3-small sweep of the straggler tests (`extra`: more options)
 * into base/name and reads its results. */
static void small_sweep(const char *name, int M, const char *extra, results_t *r)
{
    char dir[300], err[512];
    snprintf(dir, sizeof dir, "%s/%s", base, name);
    int rc = tu_pipenem_run(out, sizeof out,
                            "sweep --model gpt3-small --stages 3 --batch-size %d --seq-len 16 --schedule gpipe,1f1b "
                            "--micro-batch-sizes 1 --profiles default --iters 3 --warmup 1 "
                            "--compute emulate:fwd=20ms,bwd=40ms %s --no-plots --out %s",
                            M, extra, dir);
    if (rc)
        fail_msg("%s sweep exited %d:\n%s", name, rc, out);
    results_init(r);
    if (results_read(dir, r, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(r->n_cells, 2);
}

static void test_straggler_slowdown(void **state)
{
    (void)state;
    NEED_RUNNER();
    const int M = 8;
    const double f = 0.020, b = 0.040, k = 1.5;
    results_t r;
    char err[512];
    small_sweep("straggler", M, "--straggler 1:1.5", &r);
    double worst = 0;
    for (size_t i = 0; i < r.n_cells; i++) {
        const results_cell_t *c = &r.cells[i];
        /* Three stages, so that the median of a kind over the stages is a typical stage's. */
        sim_cost_t slow[3] = {{f, b, 0}, {k * f, k * b, 0}, {f, b, 0}}, even[3] = {{f, b, 0}, {f, b, 0}, {f, b, 0}};
        double t[2];
        for (int j = 0; j < 2; j++) {
            sim_config_t cfg = {.schedule = c->schedule, .stages = 3, .micro_batches = M, .cost = j ? even : slow};
            sim_result_t res = {0};
            if (sim_run(&cfg, &res, err, sizeof err))
                fail_msg("%s", err);
            t[j] = res.time;
            sim_result_destroy(&res);
        }
        double want = t[0] / t[1], d = tu_reldiff(c->straggler_slowdown, want, 1e-9);
        worst = isnan(d) ? INFINITY : fmax(worst, d);   /* a NaN cell fails */
        print_message("%s: reported slowdown %.4f (delay %.4f), simulator expects %.4f: relative difference %.4f "
                      "(tolerance 0.03); slow stage %d (want 1)\n", c->schedule, c->straggler_slowdown,
                      c->straggler_delay, want, d, c->straggler_stage);
        assert_int_equal(c->straggler_stage, 1);
    }
    results_destroy(&r);
    assert_true(worst <= 0.03);
}

/* No straggler, every stage the same explicit times: the slowdown and the partition
 * imbalance are about 1 (the LM head's imbalance is checked against the simulator in
 * test_bench_predict, where machine noise cannot blur it); the modelled memory of each
 * stage is its parameters, gradients and AdamW state (16 bytes a parameter) plus the
 * activations held at the schedule's peak (GPipe M, 1F1B P - s), from the model's own
 * parameter count and activation size. */
static void test_balanced_head_and_memory(void **state)
{
    (void)state;
    NEED_RUNNER();
    const int P = 3, M = 6;
    results_t r;
    small_sweep("balanced", M, "", &r);
    double worst = 0;
    for (size_t i = 0; i < r.n_cells; i++) {
        const results_cell_t *c = &r.cells[i];
        int gpipe = !strcmp(c->schedule, "gpipe");
        print_message("%s: slowdown %.4f (want 0.95..1.05), partition imbalance %.4f (want 0.95..1.05), a-priori / "
                      "measured %.4f\n", c->schedule, c->straggler_slowdown, c->imbalance,
                      c->predicted_apriori / c->iter_median);
        assert_true(c->straggler_slowdown >= 0.95 && c->straggler_slowdown <= 1.05);
        assert_true(c->imbalance >= 0.95 && c->imbalance <= 1.05);
        assert_true(isfinite(c->predicted_apriori));
        for (int s = 0; s < P; s++) {
            model_options_t o;
            model_stage_params_t mp;
            model_stage_t st;
            model_account_t a;
            char e[256];
            model_options_defaults(&o);
            const struct {
                int opt;
                const char *arg;
            } set[] = {{MODEL_OPT_MODEL, "gpt3-small"}, {MODEL_OPT_SEQ_LEN, "16"}, {MODEL_OPT_STAGES, "3"},
                       {MODEL_OPT_BATCH_SIZE, "6"}, {MODEL_OPT_MICRO_BATCH_SIZE, "1"},
                       {MODEL_OPT_COMPUTE, "emulate:fwd=20ms,bwd=40ms"}};
            for (size_t k = 0; k < sizeof set / sizeof *set; k++)
                assert_int_equal(model_options_parse(&o, set[k].opt, set[k].arg, e, sizeof e), 1);
            assert_int_equal(model_options_finish(&o, &mp, e, sizeof e), 0);
            mp.stage = s;
            mp.max_inflight = 1;
            if (model_stage_init(&st, &mp, e, sizeof e))
                fail_msg("stage %d: %s", s, e);
            model_stage_account(&st, &a);
            model_stage_destroy(&st);
            int held = gpipe ? M : P - s;
            /* fp32 parameter, gradient, AdamW m and v: 16 bytes per parameter */
            double want = 16.0 * (double)a.params + held * (double)a.saved_bytes_per_mb;
            double d = tu_reldiff(c->mem_model[s], want, 1e-12);
            worst = d > worst ? d : worst;
            print_message("%s stage %d: modelled memory %.0f bytes, reference %.0f (%d micro-batches held; relative "
                          "difference %.2g, tolerance 1e-9)\n", c->schedule, s, c->mem_model[s], want, held, d);
        }
    }
    const results_cell_t *g = &r.cells[0], *f = &r.cells[1];
    if (strcmp(g->schedule, "gpipe"))
        g = &r.cells[1], f = &r.cells[0];
    assert_true(g->mem_model[0] > f->mem_model[0]); /* GPipe holds M = 6 on stage 0, 1F1B P = 3 */
    results_destroy(&r);
    assert_true(worst <= 1e-9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sweep_writes_every_file),
        cmocka_unit_test(test_profiles_effect),
        cmocka_unit_test(test_sigint_then_resume),
        cmocka_unit_test(test_sigkill_then_resume),
        cmocka_unit_test(test_straggler_slowdown),
        cmocka_unit_test(test_balanced_head_and_memory),
    };
    return cmocka_run_group_tests_name("bench_sweep_run", tests, setup, teardown);
}
