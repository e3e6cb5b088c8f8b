/* Benchmark: the sweep's prediction against its measurement. A small sweep (GPT-3 small
 * shapes at sequence 64, emulated compute, 3 stages, both schedules, micro-batch sizes 1
 * and 2, the default and two shaped profiles) is measured, and each cell's predicted /
 * measured ratio (the simulator on the same run's measured costs and the profile's link
 * model) is printed; the target is within 10% in every cell, as issue 5 asks of the
 * default sweep. Skips while cells cannot be measured in this build. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "bench/results.h"
#include "tests/testutil.h"

#include <stdlib.h>
#include <unistd.h>

#define TOLERANCE 0.10

static char out[1 << 16];

static void bench_predicted_vs_measured(void **state)
{
    (void)state;
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/pn-bench-sweep-XXXXXX");
    assert_non_null(mkdtemp(dir));
    int rc = tu_pipenem_run(out, sizeof out,
                            "sweep --model gpt3-small --stages 3 --seq-len 64 --batch-size 8 --schedule gpipe,1f1b "
                            "--micro-batch-sizes 1,2 --profiles default,5ms/2Gbps,10ms/1Gbps --iters 4 --warmup 1 "
                            "--compute emulate:fwd=10ms,bwd=20ms --no-plots --out %s/run",
                            dir);
    if (strstr(out, "not available yet")) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        assert_int_equal(system(cmd), 0);
        print_message("SKIP: measuring a cell is not available in this build\n");
        skip();
    }
    if (rc)
        fail_msg("sweep exited %d:\n%s", rc, out);
    results_t r;
    results_init(&r);
    char err[512], path[128];
    snprintf(path, sizeof path, "%s/run", dir);
    if (results_read(path, &r, err, sizeof err))
        fail_msg("%s", err);
    double worst = 0;
    for (size_t i = 0; i < r.n_cells; i++) {
        const results_cell_t *c = &r.cells[i];
        double ratio = c->predicted / c->iter_median;
        double d = fabs(ratio - 1);
        worst = d > worst ? d : worst;
        print_message("cell %2d %-5s b=%d %-28s measured %.4f s predicted %.4f s ratio %.3f\n", c->cell, c->schedule,
                      c->micro_batch_size, c->label, c->iter_median, c->predicted, ratio);
    }
    print_message("largest |predicted / measured - 1| = %.3f (target %.2f)\n", worst, TOLERANCE);
    results_destroy(&r);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    assert_true(worst <= TOLERANCE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(bench_predicted_vs_measured)};
    return cmocka_run_group_tests_name("bench_bench_sweep", tests, NULL, NULL);
}
