/* The results directory layer: what is written reads back equal, field for field, and a
 * damaged file is rejected with a message that names the file, the line and the column. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "bench/csvio.h"
#include "bench/results.h"
#include "tests/test_bench_synth.h"
#include "tests/testutil.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/pn-test-results-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd);
}

static int same_double(double a, double b)
{
    return (isnan(a) && isnan(b)) || a == b;
}

static void test_round_trip(void **state)
{
    (void)state;
    results_t r, back;
    results_init(&r);
    results_init(&back);
    assert_int_equal(synth_sweep(&r), 0);
    /* Strings a CSV writer must quote, and values that need all 17 digits. */
    snprintf(r.cells[1].label, sizeof r.cells[1].label, "delay \"5ms\",  rate 1Gbps ");
    r.cells[2].iter_mean = 0.1 + 0.2;
    r.cells[3].final_loss = NAN;
    r.cells[3].straggler_rank = 1;
    r.cells[3].straggler_factor = 1.5;
    /* a cuda cell: device memory, fp16 steps skipped, a loss scale per iteration */
    snprintf(r.cells[0].mem_kind, sizeof r.cells[0].mem_kind, "device");
    snprintf(r.cells[1].mem_kind, sizeof r.cells[1].mem_kind, "resident");
    r.cells[0].skipped_steps = 3;
    r.iters[0].loss_scale = 32768;
    r.iters[1].loss_scale = NAN;
    char err[512] = "";
    int rc = results_write(&r, dir, err, sizeof err);
    if (rc)
        fail_msg("write: %s", err);
    rc = results_read(dir, &back, err, sizeof err);
    if (rc)
        fail_msg("read: %s", err);
    assert_int_equal(back.n_cells, r.n_cells);
    assert_int_equal(back.n_iters, r.n_iters);
    assert_int_equal(back.n_ops, r.n_ops);
    size_t diffs = 0;
    for (size_t i = 0; i < r.n_cells; i++) {
        const results_cell_t *a = &r.cells[i], *b = &back.cells[i];
        diffs += a->cell != b->cell || strcmp(a->schedule, b->schedule) || a->micro_batch_size != b->micro_batch_size ||
                 strcmp(a->profile, b->profile) || strcmp(a->label, b->label) || strcmp(a->model, b->model) ||
                 a->stages != b->stages || a->batch_size != b->batch_size || a->seq_len != b->seq_len ||
                 a->micro_batches != b->micro_batches || a->iters != b->iters || a->warmup != b->warmup ||
                 a->repeats != b->repeats || strcmp(a->compute, b->compute) || strcmp(a->emulator, b->emulator) ||
                 a->straggler_rank != b->straggler_rank || a->straggler_stage != b->straggler_stage ||
                 strcmp(a->mem_kind, b->mem_kind) || a->skipped_steps != b->skipped_steps;
        const double da[] = {a->straggler_factor, a->iter_median, a->iter_mean, a->iter_min, a->iter_max,
                             a->iter_stdev, a->predicted, a->predicted_apriori, a->ideal, a->imbalance, a->tokens_per_s, a->mfu,
                             a->straggler_delay, a->straggler_slowdown, a->final_loss, a->wall};
        const double db[] = {b->straggler_factor, b->iter_median, b->iter_mean, b->iter_min, b->iter_max,
                             b->iter_stdev, b->predicted, b->predicted_apriori, b->ideal, b->imbalance, b->tokens_per_s, b->mfu,
                             b->straggler_delay, b->straggler_slowdown, b->final_loss, b->wall};
        for (size_t k = 0; k < sizeof da / sizeof *da; k++)
            diffs += !same_double(da[k], db[k]);
        for (int s = 0; s < RESULTS_MAX_STAGES; s++)
            diffs += !same_double(a->flops[s], b->flops[s]) + !same_double(a->mem_peak[s], b->mem_peak[s]) +
                     !same_double(a->bubble[s], b->bubble[s]) + !same_double(a->mem_model[s], b->mem_model[s]);
    }
    for (size_t i = 0; i < r.n_iters; i++) {
        const results_iter_t *a = &r.iters[i], *b = &back.iters[i];
        diffs += a->cell != b->cell || a->repeat != b->repeat || a->iteration != b->iteration ||
                 a->warmup != b->warmup || a->time != b->time || !same_double(a->loss_scale, b->loss_scale);
    }
    assert_string_equal(back.cells[0].mem_kind, "device");
    assert_true(back.cells[0].skipped_steps == 3 && back.iters[0].loss_scale == 32768 && isnan(back.iters[1].loss_scale));
    for (size_t i = 0; i < r.n_ops; i++) {
        const results_op_t *a = &r.ops[i], *b = &back.ops[i];
        diffs += a->cell != b->cell || a->repeat != b->repeat || a->rank != b->rank ||
                 a->iteration != b->iteration || strcmp(a->op, b->op) || a->micro_batch != b->micro_batch ||
                 a->start != b->start || a->end != b->end || a->bytes != b->bytes;
    }
    print_message("round trip: %zu cells, %zu iterations, %zu ops; %zu fields differ (tolerance 0)\n",
                  r.n_cells, r.n_iters, r.n_ops, diffs);
    assert_int_equal(diffs, 0);

    /* A per-rank trace file reads back as the same rows of its cell. */
    char path[512];
    snprintf(path, sizeof path, "%s/rank1.csv", dir);
    rc = results_trace_write(&r, 2, 0, 1, path, err, sizeof err);
    if (rc)
        fail_msg("trace write: %s", err);
    results_t tr;
    results_init(&tr);
    rc = results_trace_read(path, 2, 0, &tr, err, sizeof err);
    if (rc)
        fail_msg("trace read: %s", err);
    size_t want = 0;
    for (size_t i = 0; i < r.n_ops; i++)
        want += r.ops[i].cell == 2 && r.ops[i].rank == 1;
    assert_int_equal(tr.n_ops, want);
    assert_true(want > 0);
    for (size_t i = 0; i < tr.n_ops; i++)
        assert_true(tr.ops[i].cell == 2 && tr.ops[i].rank == 1);
    results_destroy(&tr);
    results_destroy(&r);
    results_destroy(&back);
}

/* Replaces field `col` (0-based) of line `line` (1-based) of dir/name with `text`. */
static void damage(const char *name, int line, int col, const char *text)
{
    char path[512], *data;
    size_t len;
    char err[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_int_equal(csvio_file_read(path, &data, &len, err, sizeof err), 0);
    char *p = data;
    for (int l = 1; l < line; l++)
        p = strchr(p, '\n') + 1;
    for (int c = 0; c < col; c++, p++) /* skips quoted commas */
        for (int q = 0; *p != ',' || q; p++)
            q ^= *p == '"';
    char *end = p;
    for (int q = 0; (*end != ',' && *end != '\n') || q; end++)
        q ^= *end == '"';
    char *out = malloc(len + strlen(text) + 1);
    size_t head = (size_t)(p - data);
    memcpy(out, data, head);
    strcpy(out + head, text);
    strcat(out, end);
    assert_int_equal(csvio_file_write_atomic(path, out, strlen(out), err, sizeof err), 0);
    free(out);
    free(data);
}

static void expect_rejected(const char *what, const char *file, const char *needle)
{
    results_t r;
    results_init(&r);
    char err[512] = "";
    int rc = results_read(dir, &r, err, sizeof err);
    results_destroy(&r);
    print_message("%s: %s\n", what, err);
    if (rc != -EINVAL || !strstr(err, file) || !strstr(err, needle))
        fail_msg("%s: status %d, message '%s' (wanted %s and '%s')", what, rc, err, file, needle);
}

static void write_clean(void)
{
    results_t r;
    results_init(&r);
    assert_int_equal(synth_sweep(&r), 0);
    char err[512];
    assert_int_equal(results_write(&r, dir, err, sizeof err), 0);
    results_destroy(&r);
}

static void test_malformed_rejected(void **state)
{
    (void)state;
    write_clean();
    damage("runs.csv", 3, 17, "abc"); /* column 18: iter_median_s */
    expect_rejected("not a number", "runs.csv", "line 3, column 18 (iter_median_s): 'abc' is not a number");

    write_clean();
    damage("runs.csv", 4, 1, "gp\"ipe"); /* a quote inside an unquoted field */
    expect_rejected("stray quote", "runs.csv", "line 4, column 5: malformed CSV");

    write_clean();
    damage("runs.csv", 2, 2, "1,2"); /* one field too many */
    expect_rejected("ragged row", "runs.csv", "line 2, column");

    write_clean();
    damage("iterations.csv", 5, 3, "2"); /* warmup must be 0 or 1 */
    expect_rejected("out of range", "iterations.csv", "line 5, column 4 (warmup): 2 is outside 0..1");

    write_clean();
    damage("ops.csv", 7, 4, "");
    expect_rejected("empty op", "ops.csv", "line 7, column 5 (op): empty op name");

    write_clean();
    damage("ops.csv", 9, 7, "-1");
    expect_rejected("ends before start", "ops.csv", "line 9, column 8 (end_s)");

    write_clean();
    damage("runs.csv", 1, 0, "index");
    expect_rejected("missing column", "runs.csv", "line 1: missing column 'cell'");

    write_clean();
    damage("runs.csv", 9, 38, "\"0.5"); /* the last field of the last row */
    expect_rejected("unclosed quote", "runs.csv", "line 9: malformed CSV: a quoted field is not closed");

    write_clean();
    damage("runs.csv", 2, 0, "3"); /* cell 3 twice */
    expect_rejected("duplicate cell", "runs.csv", "cell 3 appears twice");
}

static void test_missing_dir(void **state)
{
    (void)state;
    results_t r;
    results_init(&r);
    char err[512] = "";
    assert_int_equal(results_read("/nonexistent/pn", &r, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "/nonexistent/pn/runs.csv"));
    results_destroy(&r);
}

static void test_double_format_shortest(void **state)
{
    (void)state;
    char buf[40];
    csvio_format_double(6.64, buf, sizeof buf);
    assert_string_equal(buf, "6.64");
    csvio_format_double(0.1 + 0.2, buf, sizeof buf);
    assert_true(strtod(buf, NULL) == 0.1 + 0.2);
    csvio_format_double(NAN, buf, sizeof buf);
    assert_string_equal(buf, "");
}

static void test_command_and_environment(void **state)
{
    (void)state;
    char err[256], path[512], *data;
    size_t len;
    char *argv[] = {"pipenem", "sweep", "--profiles", "default,10ms/1Gbps", "--out", "a b", "it's", NULL};
    assert_int_equal(results_command_write(dir, 7, argv, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/command.txt", dir);
    assert_int_equal(csvio_file_read(path, &data, &len, err, sizeof err), 0);
    assert_string_equal(data, "pipenem sweep --profiles default,10ms/1Gbps --out 'a b' 'it'\\''s'\n");
    free(data);
    assert_int_equal(results_env_write(dir, "emulate:v100", "netem", err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/environment.txt", dir);
    assert_int_equal(csvio_file_read(path, &data, &len, err, sizeof err), 0);
    const char *keys[] = {"kernel: Linux", "ucx: ", "libnl: ", "libcsv: ", "openblas: ", "compiler: ",
                          "compute_backend: emulate:v100", "emulator_backend: netem"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (!strstr(data, keys[i]))
            fail_msg("environment.txt lacks '%s':\n%s", keys[i], data);
    free(data);
    /* No temporary file is left behind. */
    char cmd[600], out[256];
    snprintf(cmd, sizeof cmd, "ls '%s' | grep -c tmp", dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(fgets(out, sizeof out, p));
    pclose(p);
    assert_int_equal(atoi(out), 0);
}

/* A runs.csv written before the a-priori, imbalance, slow-stage and modelled-memory columns
 * (its replayed time still named predicted_s) reads with those fields missing. */
static void test_older_columns(void **state)
{
    (void)state;
    results_t r, back;
    results_init(&r);
    results_init(&back);
    assert_int_equal(synth_sweep(&r), 0);
    char err[512], path[512], *data;
    size_t len;
    assert_int_equal(results_write(&r, dir, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/runs.csv", dir);
    assert_int_equal(csvio_file_read(path, &data, &len, err, sizeof err), 0);
    /* Renamed in the header line only: the reader then finds no column of the new names. */
    static const char *const from[] = {",replayed_s,", ",predicted_apriori_s,", ",partition_imbalance,",
                                       ",straggler_stage,", ",mem_model_bytes_stage", ",mem_kind,",
                                       ",skipped_steps"};
    char *nl = strchr(data, '\n');
    for (size_t i = 1; i < sizeof from / sizeof *from; i++)
        for (char *p = strstr(data, from[i]); p && p < nl; p = strstr(p + 1, from[i]))
            p[1] = 'X'; /* an unknown column */
    char *rp = strstr(data, from[0]), *out = malloc(len + 2);
    assert_true(rp && rp < nl && out);
    size_t head = (size_t)(rp - data);
    memcpy(out, data, head);
    strcpy(out + head, ",predicted_s,");
    strcat(out, rp + strlen(from[0]));
    free(data);
    data = out;
    len = strlen(out);
    assert_int_equal(csvio_file_write_atomic(path, data, len, err, sizeof err), 0);
    free(data);
    if (results_read(dir, &back, err, sizeof err))
        fail_msg("older runs.csv: %s", err);
    assert_int_equal(back.n_cells, r.n_cells);
    for (size_t i = 0; i < r.n_cells; i++) {
        const results_cell_t *a = &r.cells[i], *b = &back.cells[i];
        assert_true(same_double(a->predicted, b->predicted)); /* from predicted_s */
        assert_true(isnan(b->predicted_apriori) && isnan(b->imbalance) && isnan(b->mem_model[0]));
        assert_int_equal(b->straggler_stage, -1);
        assert_true(same_double(a->mem_peak[1], b->mem_peak[1]));
        assert_true(b->mem_kind[0] == '\0' && b->skipped_steps == 0);
    }
    /* an iterations.csv from before the loss_scale column */
    snprintf(path, sizeof path, "%s/iterations.csv", dir);
    assert_int_equal(csvio_file_read(path, &data, &len, err, sizeof err), 0);
    char *ls = strstr(data, ",loss_scale");
    assert_true(ls && ls < strchr(data, '\n'));
    ls[1] = 'X';
    assert_int_equal(csvio_file_write_atomic(path, data, len, err, sizeof err), 0);
    free(data);
    results_destroy(&back);
    results_init(&back);
    if (results_read(dir, &back, err, sizeof err))
        fail_msg("older iterations.csv: %s", err);
    assert_int_equal(back.n_iters, r.n_iters);
    for (size_t i = 0; i < back.n_iters; i++)
        assert_true(isnan(back.iters[i].loss_scale) && back.iters[i].time == r.iters[i].time);
    results_destroy(&r);
    results_destroy(&back);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_malformed_rejected),
        cmocka_unit_test(test_older_columns),
        cmocka_unit_test(test_missing_dir),
        cmocka_unit_test(test_double_format_shortest),
        cmocka_unit_test(test_command_and_environment),
    };
    return cmocka_run_group_tests_name("bench_results", tests, setup, teardown);
}
