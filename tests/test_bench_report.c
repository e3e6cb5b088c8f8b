/* The derived files of a results directory: every number in table.md equals the CSV's
 * (to the digits shown), the tables have the expected rows and columns, `pipenem report`
 * regenerates table.md, trace.json and the plots byte for byte, and trace.json is valid
 * Chrome trace JSON with one complete event per traced op of the chosen iteration. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "bench/chrome.h"
#include "bench/csvio.h"
#include "bench/plot.h"
#include "bench/report.h"
#include "bench/table.h"
#include "tests/test_bench_synth.h"
#include "tests/testutil.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static char dir[256];
static char out[1 << 16];

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

/* A results directory as a sweep leaves it: CSVs plus every derived file. */
static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/pn-test-report-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    results_t r;
    results_init(&r);
    char err[512];
    report_opts_t o = {.iteration = -1, .plots = 1};
    int rc = synth_sweep(&r);
    if (!rc)
        rc = results_write(&r, dir, err, sizeof err);
    if (!rc)
        rc = report_write(&r, dir, &o, NULL, err, sizeof err);
    if (rc)
        fprintf(stderr, "setup: %s\n", err);
    results_destroy(&r);
    return rc;
}

static int teardown(void **state)
{
    (void)state;
    return sh("rm -rf '%s'", dir);
}

static char *slurp(const char *name)
{
    char path[512], err[256], *data;
    size_t len;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (csvio_file_read(path, &data, &len, err, sizeof err))
        fail_msg("%s", err);
    return data;
}

/* Splits a markdown table row "| a | b |" into trimmed cells; returns the count. */
static int row_cells(const char *line, char cells[][160], int max)
{
    if (line[0] != '|')
        return 0;
    int n = 0;
    const char *p = line + 1;
    while (*p && *p != '\n' && n < max) {
        const char *e = strchr(p, '|');
        if (!e)
            break;
        const char *a = p, *b = e;
        while (a < b && *a == ' ')
            a++;
        while (b > a && b[-1] == ' ')
            b--;
        snprintf(cells[n++], 160, "%.*s", (int)(b - a), a);
        p = e + 1;
    }
    return n;
}

static double worst;  /* largest |table - csv| as a share of the half-unit shown */
static int compared;

/* The number printed in `text` (with an optional unit after it) equals v to the digits
 * shown: |x - v| <= half a unit of the last printed digit. "n/a" stands for NaN. */
static void check_num(const char *where, const char *text, double v)
{
    if (!strcmp(text, "n/a")) {
        if (!isnan(v))
            fail_msg("%s: table says n/a, CSV has %.17g", where, v);
        compared++;
        return;
    }
    char *end;
    double x = strtod(text, &end);
    if (end == text)
        fail_msg("%s: '%s' is not a number", where, text);
    const char *dot = strchr(text, '.');
    int dec = 0;
    if (dot && dot < end)
        dec = (int)(end - dot - 1);
    double half = 0.5 * pow(10, -dec);
    double d = fabs(x - v) / half;
    if (d > worst)
        worst = d;
    if (!(fabs(x - v) <= half * (1 + 1e-9)))
        fail_msg("%s: table '%s', CSV %.17g: off by more than half a unit of the last digit", where, text, v);
    compared++;
}

/* "a / b / c" per-stage lists: each part against v[s] * scale. */
static void check_stages(const char *where, const char *text, const double *v, int stages, double scale)
{
    const char *p = text;
    for (int s = 0; s < stages; s++) {
        char part[64];
        size_t n = strcspn(p, "/");
        snprintf(part, sizeof part, "%.*s", (int)n, p);
        check_num(where, part + strspn(part, " "), v[s] * scale);
        p += n;
        if (*p == '/')
            p++;
        else if (s + 1 < stages)
            fail_msg("%s: '%s' lists fewer than %d stages", where, text, stages);
    }
}

static const results_cell_t *find(const results_t *r, const char *sched, const char *label, int mbs)
{
    for (size_t i = 0; i < r->n_cells; i++)
        if (!strcmp(r->cells[i].schedule, sched) && !strcmp(r->cells[i].label, label) &&
            r->cells[i].micro_batch_size == mbs)
            return &r->cells[i];
    fail_msg("no CSV cell for %s / %s / %d", sched, label, mbs);
    return NULL;
}

static void test_table_numbers_equal_csv(void **state)
{
    (void)state;
    results_t r;
    results_init(&r);
    char err[512];
    if (results_read(dir, &r, err, sizeof err))
        fail_msg("%s", err);
    char *md = slurp("table.md");
    worst = 0;
    compared = 0;
    char section[64] = "", sched[32] = "", base[32] = "", cells[16][160];
    int mbs_of_col[16] = {0}, sched_tables = 0, rows_in_table = 0, header_seen = 0;
    const char *want_labels[] = {"default", "delay 10ms  bandwidth 1Gbps"};
    for (char *line = md; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (!strncmp(line, "## Schedule: ", 13)) {
            sscanf(line + 13, "%31s", sched);
            snprintf(section, sizeof section, "schedule");
            sched_tables++;
            rows_in_table = header_seen = 0;
            continue;
        }
        if (!strncmp(line, "### ", 4)) {
            sscanf(line + 4, "%31s / %31s", sched, base);
            snprintf(section, sizeof section, "comparison");
            rows_in_table = header_seen = 0;
            continue;
        }
        if (!strncmp(line, "## ", 3)) {
            snprintf(section, sizeof section, "%.*s", (int)strcspn(line + 3, "\n"), line + 3);
            header_seen = 0;
            continue;
        }
        int n = row_cells(line, cells, 16);
        if (n == 0 || !strncmp(cells[0], "---", 3))
            continue;
        char where[256];
        snprintf(where, sizeof where, "table.md line '%.*s'", (int)strcspn(line, "\n"), line);
        if (!header_seen) { /* the header row */
            header_seen = 1;
            if (!strcmp(section, "schedule") || !strcmp(section, "comparison")) {
                assert_string_equal(cells[0], "Network setting");
                assert_int_equal(n, 3);
                for (int k = 1; k < n; k++) {
                    if (sscanf(cells[k], "Micro batch size: %d", &mbs_of_col[k]) != 1)
                        fail_msg("%s: column '%s'", where, cells[k]);
                }
                assert_int_equal(mbs_of_col[1], 1);
                assert_int_equal(mbs_of_col[2], 2);
            }
            continue;
        }
        if (!strcmp(section, "schedule") || !strcmp(section, "comparison")) {
            assert_true(rows_in_table < 2);
            assert_string_equal(cells[0], want_labels[rows_in_table]); /* default first */
            rows_in_table++;
            for (int k = 1; k < n; k++) {
                const results_cell_t *c = find(&r, sched, cells[0], mbs_of_col[k]);
                if (!strcmp(section, "schedule")) {
                    if (!strstr(cells[k], " s"))
                        fail_msg("%s: '%s' has no unit", where, cells[k]);
                    check_num(where, cells[k], c->iter_median);
                } else {
                    check_num(where, cells[k], c->iter_median / find(&r, base, cells[0], mbs_of_col[k])->iter_median);
                }
            }
        } else if (!strcmp(section, "Predicted vs measured")) {
            assert_int_equal(n, 8);
            const results_cell_t *c = find(&r, cells[0], cells[1], atoi(cells[2]));
            check_num(where, cells[3], c->iter_median);
            check_num(where, cells[4], c->predicted_apriori);
            check_num(where, cells[5], c->predicted_apriori / c->iter_median);
            check_num(where, cells[6], c->predicted);
            check_num(where, cells[7], c->predicted / c->iter_median);
        } else if (!strcmp(section, "Metrics")) {
            assert_int_equal(n, 15);
            const results_cell_t *c = find(&r, cells[0], cells[1], atoi(cells[2]));
            check_num(where, cells[3], c->iter_median);
            check_num(where, cells[4], c->iter_stdev);
            check_num(where, cells[5], c->tokens_per_s);
            check_stages(where, cells[6], c->flops, c->stages, 1e-12);
            check_num(where, cells[7], c->mfu * 100);
            check_stages(where, cells[8], c->mem_peak, c->stages,
                         strstr(cells[8], "GiB") ? 1.0 / (1 << 30) : 1.0 / (1 << 20));
            check_stages(where, cells[9], c->mem_model, c->stages,
                         strstr(cells[9], "GiB") ? 1.0 / (1 << 30) : 1.0 / (1 << 20));
            check_stages(where, cells[10], c->bubble, c->stages, 100);
            check_num(where, cells[11], c->straggler_slowdown);
            if (c->straggler_stage >= 0)
                assert_int_equal(atoi(cells[12]), c->straggler_stage);
            else
                assert_string_equal(cells[12], "n/a");
            check_num(where, cells[13], c->imbalance);
            check_num(where, cells[14], c->final_loss);
        }
    }
    assert_int_equal(sched_tables, 2);
    /* 2 schedule tables x 4 + 1 comparison x 4 + 8 cells x 5 predicted (median, a-priori and
     * replayed with their ratios) + 8 cells x 19 metrics (median, stdev, tokens/s, MFU,
     * slowdown, imbalance, loss and three stages of FLOP/s, two memories, bubble) */
    int want = 2 * 4 + 4 + 8 * 5 + 8 * 19;
    print_message("%d numbers of table.md checked against runs.csv; largest difference %.3f of half "
                  "a unit of the last digit shown (tolerance 1)\n", compared, worst);
    assert_int_equal(compared, want);
    free(md);
    results_destroy(&r);
}

static void test_report_regenerates_identical(void **state)
{
    (void)state;
    int plots = plot_gnuplot_found();
    assert_int_equal(sh("rm -rf '%s.orig' && mkdir '%s.orig' && cp -r '%s'/. '%s.orig'/", dir, dir, dir, dir), 0);
    assert_int_equal(sh("rm -rf '%s/table.md' '%s/trace.json' '%s/plots'", dir, dir, dir), 0);
    int rc = tu_pipenem_run(out, sizeof out, "report '%s'", dir);
    if (rc != 0 || !strstr(out, "# OK"))
        fail_msg("pipenem report exited %d:\n%s", rc, out);
    print_message("%s\n", strstr(out, "# wrote") ? strstr(out, "# wrote") : out);
    int diff = sh("diff -r '%s.orig' '%s' >&2", dir, dir);
    sh("rm -rf '%s.orig'", dir);
    assert_int_equal(diff, 0);
    assert_int_equal(sh("test -s '%s/table.md' && test -s '%s/trace.json'", dir, dir), 0);
    if (!plots) {
        print_message("SKIP: plots: gnuplot with pngcairo and svg terminals not found (the rest passed)\n");
        skip();
    }
    /* iteration_time plus the default timelines: 2 schedules x (first, last profile) */
    assert_int_equal(sh("test -s '%s/plots/iteration_time.png' && test -s '%s/plots/iteration_time.svg'", dir, dir), 0);
    for (int cell = 0; cell < 8; cell++) {
        int want = cell == 0 || cell == 2 || cell == 4 || cell == 6;
        int have = sh("test -s '%s/plots/timeline_cell%d.png' && test -s '%s/plots/timeline_cell%d.svg'",
                      dir, cell, dir, cell) == 0;
        if (want != have)
            fail_msg("timeline of cell %d: %s", cell, have ? "drawn but not chosen" : "missing");
    }
    assert_int_equal(sh("ls '%s/plots' | grep -q tmp", dir), 1);
}

static void test_trace_json_valid(void **state)
{
    (void)state;
    results_t r;
    results_init(&r);
    char err[512];
    if (results_read(dir, &r, err, sizeof err))
        fail_msg("%s", err);
    /* Expected: one X event per op of each cell's last iteration (repeat 0). */
    long want_x = 0, want_proc = 0;
    for (size_t i = 0; i < r.n_cells; i++) {
        int it;
        assert_int_equal(chrome_iteration_pick(&r, r.cells[i].cell, -1, &it), 0);
        assert_int_equal(it, r.cells[i].warmup + r.cells[i].iters - 1);
        want_proc += r.cells[i].stages;
        for (size_t k = 0; k < r.n_ops; k++)
            want_x += r.ops[k].cell == r.cells[i].cell && r.ops[k].iteration == it && r.ops[k].repeat == 0;
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "python3 -c '\n"
             "import json, sys\n"
             "d = json.load(open(sys.argv[1]))\n"
             "ev = d[\"traceEvents\"]\n"
             "x = [e for e in ev if e[\"ph\"] == \"X\"]\n"
             "procs = {e[\"pid\"] for e in ev if e[\"ph\"] == \"M\" and e[\"name\"] == \"process_name\"}\n"
             "lanes = {(e[\"args\"][\"name\"]) for e in ev if e[\"ph\"] == \"M\" and e[\"name\"] == \"thread_name\"}\n"
             "bad = [e for e in x if e[\"dur\"] < 0 or e[\"ts\"] < 0 or e[\"pid\"] not in procs or e[\"tid\"] not in (1, 2, 3)]\n"
             "lane_ok = all((e[\"tid\"] == 1) == (e[\"args\"][\"op\"] in (\"FWD\", \"BWD\", \"OPT_STEP\")) for e in x)\n"
             "print(len(x), len(procs), len(bad), int(lane_ok), \",\".join(sorted(lanes)))\n"
             "' '%s/trace.json'", dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    long nx = -1, np = -1, nbad = -1, lane_ok = 0;
    char lanes[128] = "";
    int got = fscanf(p, "%ld %ld %ld %ld %127s", &nx, &np, &nbad, &lane_ok, lanes);
    int st = pclose(p);
    if (got != 5 || st != 0)
        fail_msg("python3 could not load trace.json as JSON (status %d)", st);
    print_message("trace.json: %ld complete events (want %ld), %ld processes (want %ld), lanes %s\n", nx,
                  want_x, np, want_proc, lanes);
    assert_int_equal(nx, want_x);
    assert_int_equal(np, want_proc);
    assert_int_equal(nbad, 0);
    assert_int_equal(lane_ok, 1);
    assert_string_equal(lanes, "compute,receive,send");
    results_destroy(&r);
}

static void test_report_cli_errors(void **state)
{
    (void)state;
    assert_int_equal(tu_pipenem_run(out, sizeof out, "report"), 2);
    assert_non_null(strstr(out, "results directory"));
    assert_int_equal(tu_pipenem_run(out, sizeof out, "report /nonexistent/pn"), 1);
    assert_non_null(strstr(out, "/nonexistent/pn/runs.csv"));
    assert_int_equal(tu_pipenem_run(out, sizeof out, "report --timeline 1,x '%s'", dir), 2);
    assert_non_null(strstr(out, "'x'"));
    assert_int_equal(tu_pipenem_run(out, sizeof out, "report --iteration -3 '%s'", dir), 2);
    assert_non_null(strstr(out, "'-3'"));
    /* A damaged CSV is named with its file, line and column. */
    char bad[300];
    snprintf(bad, sizeof bad, "%s.bad", dir);
    assert_int_equal(sh("rm -rf '%s' && cp -r '%s' '%s' && sed -i '3s/^1,/x,/' '%s/runs.csv'", bad, dir, bad, bad), 0);
    assert_int_equal(tu_pipenem_run(out, sizeof out, "report '%s'", bad), 1);
    print_message("%s", out);
    assert_non_null(strstr(out, "runs.csv, line 3, column 1 (cell): 'x' is not a whole number"));
    sh("rm -rf '%s'", bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_numbers_equal_csv),
        cmocka_unit_test(test_trace_json_valid),
        cmocka_unit_test(test_report_cli_errors),
        cmocka_unit_test(test_report_regenerates_identical),
    };
    return cmocka_run_group_tests_name("bench_report", tests, setup, teardown);
}
