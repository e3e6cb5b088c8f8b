/* Benchmark: the new schedules measured against the simulator. `pipenem sweep` runs
 * zb-h1, interleaved-1f1b and zb-v (and 1f1b as the reference) on 2 stages with emulated
 * compute (fwd 20 ms, bwd 40 ms per micro-batch and stage), 8 micro-batches, at the
 * default network and at 10ms/1Gbps; each cell's median iteration must be within 5% of
 * the simulator's prediction from that cell's measured costs. Prints every ratio. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/testutil.h"

#define TOL 0.05

static char out[1 << 18];

/* Column `want` (0-based) of a CSV line whose quoted fields hold no quotes. */
static int csv_field(const char *line, int want, char *buf, size_t len)
{
    int col = 0, quoted = 0;
    size_t n = 0;
    for (const char *p = line; *p && *p != '\n'; p++) {
        if (*p == '"') {
            quoted = !quoted;
            continue;
        }
        if (*p == ',' && !quoted) {
            col++;
            continue;
        }
        if (col == want && n + 1 < len)
            buf[n++] = *p;
    }
    buf[n] = '\0';
    return col >= want ? 0 : -1;
}

static int column_of(const char *header, const char *name)
{
    char f[64];
    for (int c = 0; csv_field(header, c, f, sizeof f) == 0; c++)
        if (!strcmp(f, name))
            return c;
    return -1;
}

static void bench_measured_vs_predicted(void **state)
{
    (void)state;
    char dir[] = "/tmp/pn_bench_sched_XXXXXX", path[96];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/out", dir);
    int rc = tu_pipenem_run(out, sizeof out,
                            "sweep -s 1f1b,zb-h1,interleaved-1f1b,zb-v -b 1 -p default,10ms/1Gbps --model gpt3-small "
                            "-T 512 -P 2 --batch-size 8 -c emulate:fwd=20ms,bwd=40ms -n 5 -w 1 --no-plots -o %s",
                            path);
    if (rc)
        fail_msg("sweep exited %d:\n%s", rc, out);
    snprintf(path, sizeof path, "%s/out/runs.csv", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char header[4096], line[4096];
    assert_non_null(fgets(header, sizeof header, f));
    int c_sched = column_of(header, "schedule"), c_prof = column_of(header, "profile");
    int c_meas = column_of(header, "iter_median_s"), c_pred = column_of(header, "replayed_s");
    assert_true(c_sched >= 0 && c_prof >= 0 && c_meas >= 0 && c_pred >= 0);
    double worst = 0;
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        char sched[64], prof[96], meas[64], pred[64];
        if (csv_field(line, c_sched, sched, sizeof sched) || csv_field(line, c_prof, prof, sizeof prof) ||
            csv_field(line, c_meas, meas, sizeof meas) || csv_field(line, c_pred, pred, sizeof pred))
            fail_msg("short row: %s", line);
        double m = atof(meas), p = atof(pred), ratio = p / m;
        print_message("%-17s %-12s measured %.4f s predicted %.4f s predicted/measured %.3f\n", sched, prof, m, p,
                      ratio);
        if (!(fabs(ratio - 1) <= worst))
            worst = fabs(ratio - 1);
        rows++;
    }
    fclose(f);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        print_message("could not remove %s\n", dir);
    assert_int_equal(rows, 8);
    print_message("largest |predicted/measured - 1| %.3f (tolerance %.2f)\n", worst, TOL);
    if (!(worst <= TOL))
        fail_msg("a cell's prediction is %.1f%% off", 100 * worst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bench_measured_vs_predicted),
    };
    return cmocka_run_group_tests_name("bench_sched_measured", tests, NULL, NULL);
}
