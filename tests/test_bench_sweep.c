/* The sweep grid and loop: each bad value of the grid gets its own message; the loop,
 * driven here by a synthetic measurement, writes every file after each cell, keeps
 * finished cells when stopped, and a resume measures exactly the missing cells and ends
 * with the same cells as an uninterrupted sweep. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "bench/sweep.h"
#include "tests/test_bench_synth.h"
#include "tests/testutil.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static void expect_bad(int rc, const char *err, const char *needle)
{
    print_message("%s\n", err);
    if (rc != -EINVAL || !strstr(err, needle))
        fail_msg("status %d, message '%s' (wanted '%s')", rc, err, needle);
}

static void test_grid_parse(void **state)
{
    (void)state;
    sweep_spec_t s;
    char err[512];
    assert_int_equal(sweep_spec_default(&s, err, sizeof err), 0);
    assert_int_equal(sweep_cells(&s), 24);
    assert_string_equal(s.labels[0], "default");
    assert_string_equal(s.labels[3], "delay 10ms  bandwidth 1Gbps");
    assert_int_equal(sweep_spec_check(&s, err, sizeof err), 0);

    expect_bad(sweep_schedules_parse("gpipe,zb", &s, err, sizeof err), err, "unknown schedule 'zb' (item 2");
    expect_bad(sweep_schedules_parse("gpipe,,1f1b", &s, err, sizeof err), err, "item 2 is empty");
    expect_bad(sweep_schedules_parse("1f1b,1f1b", &s, err, sizeof err), err, "'1f1b' is listed twice");
    expect_bad(sweep_mbs_parse("1,2x", &s, err, sizeof err), err, "'2x' (item 2) is not a positive whole number");
    expect_bad(sweep_mbs_parse("0", &s, err, sizeof err), err, "'0' (item 1)");
    expect_bad(sweep_mbs_parse("4,4", &s, err, sizeof err), err, "4 is listed twice");
    expect_bad(sweep_profiles_parse("default,5ms/2Gbit/s", &s, err, sizeof err), err, "item 2 '5ms/2Gbit/s'");
    expect_bad(sweep_profiles_parse("10ms/1Gbps,delay=10ms,rate=1gbit", &s, err, sizeof err), err,
               "items 1 and 2 are the same profile");
    int rank;
    double factor;
    expect_bad(sweep_straggler_parse("1", &rank, &factor, err, sizeof err), err, "'1' is not RANK:FACTOR");
    expect_bad(sweep_straggler_parse("a:1.5", &rank, &factor, err, sizeof err), err, "rank 'a'");
    expect_bad(sweep_straggler_parse("1:-2", &rank, &factor, err, sizeof err), err, "factor '-2'");
    assert_int_equal(sweep_straggler_parse("1:1.5", &rank, &factor, err, sizeof err), 0);
    assert_int_equal(rank, 1);
    assert_true(factor == 1.5);

    /* key=value profiles: glued back together after a comma split, or separated by ';' */
    assert_int_equal(sweep_profiles_parse("default,delay=5ms,rate=1gbit,10ms/1Gbps", &s, err, sizeof err), 0);
    assert_int_equal(s.n_prof, 3);
    print_message("profiles: %s | %s | %s\n", s.profiles[0], s.profiles[1], s.profiles[2]);
    assert_int_equal(sweep_profiles_parse("delay=5ms,rate=1gbit;delay=1ms", &s, err, sizeof err), 0);
    assert_int_equal(s.n_prof, 2);

    /* combinations */
    assert_int_equal(sweep_spec_default(&s, err, sizeof err), 0);
    assert_int_equal(sweep_mbs_parse("1,3", &s, err, sizeof err), 0);
    expect_bad(sweep_spec_check(&s, err, sizeof err), err, "3 does not divide --batch-size 64");
    assert_int_equal(sweep_spec_default(&s, err, sizeof err), 0);
    s.straggler_rank = 3;
    expect_bad(sweep_spec_check(&s, err, sizeof err), err, "only stages 0..2");
    assert_int_equal(sweep_spec_default(&s, err, sizeof err), 0);
    s.iters = 0;
    expect_bad(sweep_spec_check(&s, err, sizeof err), err, "at least one measured iteration");
}

static void test_cell_order(void **state)
{
    (void)state;
    sweep_spec_t s;
    char err[512];
    assert_int_equal(sweep_spec_default(&s, err, sizeof err), 0);
    results_cell_t c;
    sweep_cell_config(&s, 0, &c);
    assert_string_equal(c.schedule, "gpipe");
    assert_int_equal(c.micro_batch_size, 1);
    assert_string_equal(c.profile, "default");
    assert_int_equal(c.micro_batches, 64);
    sweep_cell_config(&s, 23, &c);
    assert_string_equal(c.schedule, "1f1b");
    assert_int_equal(c.micro_batch_size, 4);
    assert_string_equal(c.profile, "10ms/1Gbps");
    assert_int_equal(c.micro_batches, 16);
    sweep_cell_config(&s, 5, &c); /* gpipe, second profile, third size */
    assert_string_equal(c.profile, "1ms/5Gbps");
    assert_int_equal(c.micro_batch_size, 4);
}

/* The synthetic measurement: deterministic per cell; raises *stop after `stop_after`
 * cells, and fails cell `fail_cell` once. */
typedef struct {
    int calls, stop_after, fail_cell, failed_once;
} fake_t;

static int fake_measure(void *ctx, const sweep_spec_t *s, results_cell_t *cell, const char *workdir,
                        volatile sig_atomic_t *stop, results_t *r, char *err, size_t errlen)
{
    fake_t *f = ctx;
    f->calls++;
    if (access(workdir, W_OK) != 0) {
        snprintf(err, errlen, "workdir %s missing", workdir);
        return -EIO;
    }
    if (cell->cell == f->fail_cell && !f->failed_once) {
        f->failed_once = 1;
        int rc = synth_trace(r, cell->cell, s->stages, cell->micro_batches, s->warmup + s->iters, 0.01, 0.02, 0.001);
        snprintf(err, errlen, "synthetic failure of cell %d", cell->cell);
        return rc ? rc : -EIO; /* leaves ops behind, which the loop must drop */
    }
    double f_s = 0.001 * cell->micro_batch_size * (1 + cell->cell % 3);
    int rc = synth_trace(r, cell->cell, s->stages, cell->micro_batches, s->warmup + s->iters, f_s, 2 * f_s,
                         0.0005 * (1 + cell->cell));
    if (rc)
        return rc;
    metrics_params_t p = {.warmup = s->warmup, .batch_size = s->batch_size, .seq_len = s->seq_len};
    rc = metrics_cell_compute(r, &p, cell, err, errlen);
    if (!rc && f->stop_after && f->calls >= f->stop_after)
        *stop = 1;
    return rc;
}

static void small_spec(sweep_spec_t *s)
{
    char err[512];
    assert_int_equal(sweep_spec_default(s, err, sizeof err), 0);
    assert_int_equal(sweep_schedules_parse("gpipe,1f1b", s, err, sizeof err), 0);
    assert_int_equal(sweep_mbs_parse("1,2", s, err, sizeof err), 0);
    assert_int_equal(sweep_profiles_parse("default,10ms/1Gbps", s, err, sizeof err), 0);
    snprintf(s->model, sizeof s->model, "tiny");
    s->batch_size = 4;
    s->seq_len = 16;
    s->iters = 2;
}

static void mkdir_tmp(char *dir, size_t len, const char *tag)
{
    snprintf(dir, len, "/tmp/pn-test-sweep-%s-XXXXXX", tag);
    assert_non_null(mkdtemp(dir));
}

static void rm_dir(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static int run_loop(const sweep_spec_t *s, const char *dir, fake_t *f, volatile sig_atomic_t *stop,
                    results_t *r, sweep_summary_t *sum)
{
    report_opts_t ro = {.iteration = -1, .plots = 0};
    sweep_loop_t loop = {.dir = dir, .measure = fake_measure, .measure_ctx = f, .report = &ro, .stop = stop};
    char err[512] = "";
    int rc = sweep_run(s, &loop, r, sum, err, sizeof err);
    if (rc)
        print_message("sweep_run: %s\n", err);
    return rc;
}

/* Compares the measured cells of two results directories, wall time aside. */
static void same_cells(const char *a, const char *b)
{
    results_t ra, rb;
    results_init(&ra);
    results_init(&rb);
    char err[512];
    if (results_read(a, &ra, err, sizeof err) || results_read(b, &rb, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(ra.n_cells, rb.n_cells);
    assert_int_equal(ra.n_iters, rb.n_iters);
    assert_int_equal(ra.n_ops, rb.n_ops);
    for (size_t i = 0; i < ra.n_cells; i++) {
        results_cell_t x = ra.cells[i], y = rb.cells[i];
        x.wall = y.wall = 0;
        if (memcmp(&x, &y, sizeof x))
            fail_msg("cell %d differs between %s and %s", x.cell, a, b);
    }
    for (size_t i = 0; i < ra.n_ops; i++)
        if (memcmp(&ra.ops[i], &rb.ops[i], sizeof ra.ops[i]))
            fail_msg("op row %zu differs", i);
    print_message("%zu cells, %zu iterations, %zu ops identical\n", ra.n_cells, ra.n_iters, ra.n_ops);
    results_destroy(&ra);
    results_destroy(&rb);
}

static void test_loop_interrupt_and_resume(void **state)
{
    (void)state;
    sweep_spec_t s;
    small_spec(&s);
    char full[128], part[128];
    mkdir_tmp(full, sizeof full, "full");
    mkdir_tmp(part, sizeof part, "part");

    /* One uninterrupted sweep. */
    fake_t f = {.fail_cell = -1};
    volatile sig_atomic_t stop = 0;
    results_t r;
    results_init(&r);
    sweep_summary_t sum;
    assert_int_equal(run_loop(&s, full, &f, &stop, &r, &sum), 0);
    assert_int_equal(sum.measured, 8);
    assert_int_equal(f.calls, 8);
    results_destroy(&r);

    /* Stopped after 3 cells: 3 kept, nothing else in the files. */
    fake_t g = {.stop_after = 3, .fail_cell = -1};
    results_init(&r);
    assert_int_equal(run_loop(&s, part, &g, &stop, &r, &sum), 0);
    assert_true(sum.interrupted);
    assert_int_equal(sum.measured, 3);
    results_destroy(&r);
    results_init(&r);
    char err[512];
    assert_int_equal(results_read(part, &r, err, sizeof err), 0);
    assert_int_equal(r.n_cells, 3);
    for (size_t i = 0; i < r.n_ops; i++)
        assert_true(r.ops[i].cell < 3);
    char path[300];
    snprintf(path, sizeof path, "%s/table.md", part);
    assert_int_equal(access(path, F_OK), 0);

    /* Resumed: only the 5 missing cells are measured, and the result equals the full sweep. */
    stop = 0;
    fake_t h = {.fail_cell = -1};
    assert_int_equal(run_loop(&s, part, &h, &stop, &r, &sum), 0);
    assert_int_equal(h.calls, 5);
    assert_int_equal(sum.skipped, 3);
    assert_int_equal(sum.measured, 5);
    results_destroy(&r);
    same_cells(full, part);
    snprintf(path, sizeof path, "%s/.cells", part);
    assert_int_equal(access(path, F_OK), -1); /* work folders are gone */
    rm_dir(full);
    rm_dir(part);
}

static void test_failed_cell_retried(void **state)
{
    (void)state;
    sweep_spec_t s;
    small_spec(&s);
    char dir[128], ref[128];
    mkdir_tmp(dir, sizeof dir, "fail");
    mkdir_tmp(ref, sizeof ref, "ref");
    volatile sig_atomic_t stop = 0;
    results_t r;
    sweep_summary_t sum;
    fake_t f = {.fail_cell = 2};
    results_init(&r);
    assert_int_equal(run_loop(&s, dir, &f, &stop, &r, &sum), 0);
    assert_int_equal(sum.failed, 1);
    assert_int_equal(sum.measured, 7);
    assert_null(results_cell_find(&r, 2));
    for (size_t i = 0; i < r.n_ops; i++)
        assert_true(r.ops[i].cell != 2); /* the failed cell's partial trace was dropped */
    results_destroy(&r);
    /* A resume (read back from the files) retries just that cell. */
    results_init(&r);
    char err[512];
    assert_int_equal(results_read(dir, &r, err, sizeof err), 0);
    int calls = f.calls;
    assert_int_equal(run_loop(&s, dir, &f, &stop, &r, &sum), 0);
    assert_int_equal(f.calls - calls, 1);
    assert_int_equal(sum.measured, 1);
    results_destroy(&r);
    fake_t g = {.fail_cell = -1};
    results_init(&r);
    assert_int_equal(run_loop(&s, ref, &g, &stop, &r, &sum), 0);
    results_destroy(&r);
    same_cells(ref, dir);
    rm_dir(dir);
    rm_dir(ref);
}

static void test_resume_other_grid_rejected(void **state)
{
    (void)state;
    sweep_spec_t s;
    small_spec(&s);
    char dir[128];
    mkdir_tmp(dir, sizeof dir, "grid");
    volatile sig_atomic_t stop = 0;
    results_t r;
    sweep_summary_t sum;
    fake_t f = {.fail_cell = -1};
    results_init(&r);
    assert_int_equal(run_loop(&s, dir, &f, &stop, &r, &sum), 0);
    char err[512] = "";
    assert_int_equal(sweep_mbs_parse("1,4", &s, err, sizeof err), 0);
    report_opts_t ro = {.iteration = -1};
    sweep_loop_t loop = {.dir = dir, .measure = fake_measure, .measure_ctx = &f, .report = &ro};
    assert_int_equal(sweep_run(&s, &loop, &r, &sum, err, sizeof err), -EINVAL);
    print_message("%s\n", err);
    assert_non_null(strstr(err, "runs.csv cell 1 is gpipe, micro-batch size 2"));
    results_destroy(&r);
    rm_dir(dir);
}

static void test_args_round_trip(void **state)
{
    (void)state;
    char dir[128], err[256];
    mkdir_tmp(dir, sizeof dir, "args");
    char *argv[] = {"--profiles", "default;delay=5ms,rate=1gbit", "--out", "a b", ""};
    assert_int_equal(sweep_args_write(dir, 5, argv, err, sizeof err), 0);
    int argc;
    char **back;
    assert_int_equal(sweep_args_read(dir, &argc, &back, err, sizeof err), 0);
    assert_int_equal(argc, 5);
    for (int i = 0; i < 5; i++)
        assert_string_equal(back[i], argv[i]);
    assert_null(back[5]);
    free(back);
    char *bad[] = {"a\nb"};
    assert_int_equal(sweep_args_write(dir, 1, bad, err, sizeof err), -EINVAL);
    rm_dir(dir);
}

static void test_cli_errors(void **state)
{
    (void)state;
    static const struct {
        const char *args, *needle;
    } cases[] = {
        {"sweep --schedules gpipe,zb", "unknown schedule 'zb'"},
        {"sweep --micro-batch-sizes 1,x", "'x' (item 2)"},
        {"sweep --micro-batch-sizes 3", "3 does not divide --batch-size 64"},
        {"sweep --profiles default,5ms/xGbps", "item 2 '5ms/xGbps'"},
        {"sweep --straggler 7:1.5", "only stages 0..2"},
        {"sweep --straggler 1:x", "factor 'x'"},
        {"sweep --model gpt9", "--model: unknown model 'gpt9'"},
        {"sweep --compute emulate:z100", "--compute: unknown device 'z100'"},
        {"sweep --emulator foo", "--emulator: unknown emulator 'foo'"},
        {"sweep --iters 0", "--iters: '0' is not a whole number >= 1"},
        {"sweep --warmup -1", "--warmup: '-1'"},
        {"sweep --repeat 0", "--repeat: '0'"},
        {"sweep --resume /tmp --stages 2", "give no other option with it"},
        {"sweep --timeline 1,y", "'y' is not a cell index"},
        {"sweep extra", "unexpected argument 'extra'"},
        {"sweep --model tiny --stages 2", "micro-batch size 1: --seq-len 2048 is above the context"},
        {"sweep --model tiny --stages 9 --seq-len 16", "micro-batch size 1: --stages 9 is more than"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        if (!tu_expect_exit(2, cases[i].needle, cases[i].args))
            fail();
    if (!tu_expect_exit(1, "/nonexistent/pn/sweep.args", "sweep --resume /nonexistent/pn"))
        fail();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grid_parse),
        cmocka_unit_test(test_cell_order),
        cmocka_unit_test(test_loop_interrupt_and_resume),
        cmocka_unit_test(test_failed_cell_retried),
        cmocka_unit_test(test_resume_other_grid_rejected),
        cmocka_unit_test(test_args_round_trip),
        cmocka_unit_test(test_cli_errors),
    };
    return cmocka_run_group_tests_name("bench_sweep", tests, NULL, NULL);
}
