/* The builder of results/reference/dtfm-gpt3-small/table.md (compare.sh): on a small
 * synthetic published table and runs.csv, every published cell gets its own row with the
 * published, measured and predicted times and their ratios, the fitted cell is marked, a
 * cell the sweep lacks reads "not run", and malformed input fails with a message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "tests/testutil.h"

#include <stdlib.h>

#define COMPARE "bash results/reference/dtfm-gpt3-small/compare.sh"

static char dir[256];
static char out[1 << 16];

static int put(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int rc = fputs(text, f) < 0;
    return fclose(f) || rc ? -1 : 0;
}

/* Runs a shell command with its stdout and stderr to DIR/out, then reads that file into
 * out; returns the command's exit status. */
static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
    char cmd[2048], path[300];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(path, sizeof path, "%s/out", dir);
    if (n < 0 || snprintf(cmd + n, sizeof cmd - (size_t)n, " >%s 2>&1", path) >= (int)(sizeof cmd - (size_t)n))
        return -1;
    int st = system(cmd);
    FILE *f = fopen(path, "r");
    size_t got = f ? fread(out, 1, sizeof out - 1, f) : 0;
    out[got] = '\0';
    if (f)
        fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Shaped like ../shared/reference/dtfm-gpt3-small.md: DT-FM's names for the settings
 * (with its double spaces), seconds with a unit. */
static const char *REF =
    "# Published reference\n\nprose | with a bar\n\n## GPipe\n"
    "| Network setting                     | Micro batch size: 1 | Micro batch size: 2 |\n"
    "|-------------------------------------|--------------------|---------------------|\n"
    "| default (about 0.1ms; up to 10Gbps) | 6.00 s             | 8.00 s              |\n"
    "| delay 10ms  bandwidth 1Gbps         | 9.00 s             | 10.00 s             |\n"
    "\n## 1F1B\n"
    "| Network setting                     | Micro batch size: 1 | Micro batch size: 2 |\n"
    "|-------------------------------------|---------------------|---------------------|\n"
    "| default (about 0.1ms; up to 10Gbps) | 5.00 s              | 4.00 s              |\n"
    "| delay 10ms  bandwidth 1Gbps         | 12.00 s             | 11.00 s             |\n";

/* Columns in pipenem's order with others between them, the compute spec quoted (it holds
 * commas); 1f1b / 10ms / 2 is missing, as in a sweep that has not finished. */
static const char *RUNS =
    "cell,schedule,micro_batch_size,profile,label,iters,warmup,compute,iter_median_s,predicted_apriori_s,x\n"
    "0,gpipe,1,default,default,3,1,\"emulate:v100,fp32,eff=0.5\",6.6,6,1\n"
    "1,gpipe,2,default,default,3,1,\"emulate:v100,fp32,eff=0.5\",8.4,8.8,1\n"
    "2,gpipe,1,10ms/1Gbps,delay 10ms  bandwidth 1Gbps,3,1,\"emulate:v100,fp32,eff=0.5\",9.9,8.1,1\n"
    "3,gpipe,2,10ms/1Gbps,delay 10ms  bandwidth 1Gbps,3,1,\"emulate:v100,fp32,eff=0.5\",10,10.5,1\n"
    "4,1f1b,1,default,default,3,1,\"emulate:v100,fp32,eff=0.5\",5.5,5,1\n"
    "5,1f1b,2,default,default,3,1,\"emulate:v100,fp32,eff=0.5\",4.4,3.6,1\n"
    "6,1f1b,1,10ms/1Gbps,delay 10ms  bandwidth 1Gbps,3,1,\"emulate:v100,fp32,eff=0.5\",9.6,10.8,1\n";

static const char *SIM = "schedule,micro_batch_size,profile,sim_blocking_s\n"
                         "gpipe,1,default,6\n1f1b,1,10ms/1Gbps,13.2\n";

static const char *FIT = "fitted_schedule: gpipe\nfitted_setting: default\nfitted_mbs: 1\n"
                         "published_s: 6.00\ncompute: emulate:v100,fp32,eff=0.5\napriori_s: 6\n";

/* One expected row: the published cell and what compare.sh must put beside it. */
typedef struct {
    const char *sched, *setting;
    int mbs;
    double pub, meas, apr, blk; /* 0: "not run" / "n/a" expected */
    int fitted;
} row_t;

static const row_t ROWS[] = {
    {"gpipe", "default", 1, 6, 6.6, 6, 6, 1},
    {"gpipe", "default", 2, 8, 8.4, 8.8, 0, 0},
    {"gpipe", "delay 10ms bandwidth 1Gbps", 1, 9, 9.9, 8.1, 0, 0},
    {"gpipe", "delay 10ms bandwidth 1Gbps", 2, 10, 10, 10.5, 0, 0},
    {"1f1b", "default", 1, 5, 5.5, 5, 0, 0},
    {"1f1b", "default", 2, 4, 4.4, 3.6, 0, 0},
    {"1f1b", "delay 10ms bandwidth 1Gbps", 1, 12, 9.6, 10.8, 13.2, 0},
    {"1f1b", "delay 10ms bandwidth 1Gbps", 2, 11, 0, 0, 0, 0},
};
#define N_ROWS ((int)(sizeof ROWS / sizeof *ROWS))

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/pn-test-dtfm-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    return put("ref.md", REF) || put("runs.csv", RUNS) || put("sim.csv", SIM) || put("fit.txt", FIT) ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) ? -1 : 0;
}

/* The cell text "6.60 s" or "6.60 s (fitted)" as seconds; -1 for "not run" / "n/a". */
static double cell_s(const char *c)
{
    double v;
    return sscanf(c, " %lf", &v) == 1 ? v : -1;
}

/* Checks one table row (its cells split at '|') against the expected; returns the largest
 * relative difference of a time or ratio, or 1 on a wrong name or marker. */
static double check_row(char *line, const row_t *r)
{
    char *cell[16];
    int n = 0;
    for (char *s = strtok(line, "|"); s && n < 16; s = strtok(NULL, "|"))
        cell[n++] = s;
    if (n != 10 || strstr(cell[0], r->sched) == NULL || strstr(cell[1], r->setting) == NULL ||
        atoi(cell[2]) != r->mbs || (strstr(cell[3], "(fitted)") != NULL) != r->fitted) {
        print_message("row '%s' does not match %s / %s / %d%s\n", line, r->sched, r->setting, r->mbs,
                      r->fitted ? " (fitted)" : "");
        return 1;
    }
    double want[7] = {r->pub, r->meas, r->meas / r->pub, r->apr, r->apr / r->pub, r->blk, r->blk / r->pub};
    double worst = 0;
    for (int i = 0; i < 7; i++) {
        double got = cell_s(cell[3 + i]), w = want[i] > 0 ? want[i] : -1;
        double d = tu_reldiff(got, w, 1e-9);
        if (d > worst)
            worst = d;
        if (d > 5e-3)
            print_message("%s / %s / %d column %d: %g, expected %g\n", r->sched, r->setting, r->mbs, 4 + i, got, w);
    }
    return worst;
}

static void test_compare_rows(void **state)
{
    (void)state;
    int rc = run(COMPARE " %s/ref.md %s/runs.csv %s/sim.csv %s/fit.txt", dir, dir, dir, dir);
    /* the lines are split in place below: what spans lines is checked first */
    if (rc)
        print_message("%s", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "7 of 8 published cells measured."));
    assert_non_null(strstr(out, "`--compute emulate:v100,fp32,eff=0.5`"));
    int seen = 0, ranges = 0;
    double worst = 0;
    for (char *p = out, *eol; *p; p = eol + 1) {
        eol = strchr(p, '\n');
        if (!eol)
            break;
        *eol = '\0';
        if ((!strncmp(p, "| gpipe ", 8) || !strncmp(p, "| 1f1b ", 7)) && seen < N_ROWS) {
            double d = check_row(p, &ROWS[seen++]);
            worst = d > worst ? d : worst;
        } else if (!strncmp(p, "- Measured / published:", 23)) {
            ranges++;
            /* ranges over the measured cells, the fitted one left out in the last */
            assert_non_null(strstr(p, "gpipe 1.000-1.100 over 4 cells"));
            assert_non_null(strstr(p, "1f1b 0.800-1.100 over 3 cells"));
            assert_non_null(strstr(p, "fitted cell left out 0.800-1.100 over 6 cells"));
        }
    }
    print_message("%d rows, largest relative difference %.2e (tolerance 5e-3: two decimals of seconds)\n", seen,
                  worst);
    assert_int_equal(seen, N_ROWS);
    assert_true(worst <= 5e-3);
    assert_int_equal(ranges, 1);
}

static void test_compare_bad_input(void **state)
{
    (void)state;
    assert_int_equal(put("bad.md", "## GPipe\n| Network setting | Micro batch size: 1 |\n| default | fast |\n"), 0);
    assert_int_equal(run(COMPARE " %s/bad.md %s/runs.csv", dir, dir), 1);
    print_message("a cell that is not a time: %s", out);
    assert_non_null(strstr(out, "cell \"fast\" of gpipe / default is not a time in seconds"));

    assert_int_equal(put("none.md", "# nothing\n"), 0);
    assert_int_equal(run(COMPARE " %s/none.md %s/runs.csv", dir, dir), 1);
    assert_non_null(strstr(out, "no published cell"));

    assert_int_equal(put("short.csv", "cell,schedule\n0,gpipe\n"), 0);
    assert_int_not_equal(run(COMPARE " %s/ref.md %s/short.csv", dir, dir), 0);
    assert_non_null(strstr(out, "no column micro_batch_size"));

    assert_int_equal(run(COMPARE " %s/ref.md", dir), 2);
    assert_non_null(strstr(out, "usage: compare.sh"));
    assert_int_equal(run(COMPARE " %s/missing.md %s/runs.csv", dir, dir), 2);
    assert_non_null(strstr(out, "cannot read"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compare_rows),
        cmocka_unit_test(test_compare_bad_input),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
