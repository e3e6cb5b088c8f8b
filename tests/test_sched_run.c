/* The new schedules through `pipenem run`: zb-h1 (split backward, one chunk per stage)
 * trains the tiny model on 2 and 3 stages with the same loss per iteration as on one
 * stage, to 1e-5 relative; the schedules of several chunks per stage, which the
 * executor does not run yet, fail with a message that says so. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "tests/testutil.h"

static char out[1 << 18];

enum { MAXIT = 64 };

static int run_losses(const char *schedule, int stages, double *loss)
{
    int rc = tu_pipenem_run(out, sizeof out,
                            "run --model tiny --compute cpu --threads 1 --stages %d --schedule %s --iters 4", stages,
                            schedule);
    if (rc)
        fail_msg("%s on %d stages exited %d:\n%s", schedule, stages, rc, out);
    return tu_parse_losses(out, loss, MAXIT);
}

static void test_zbh1_losses(void **state)
{
    (void)state;
    double ref[MAXIT], got[MAXIT];
    int n1 = run_losses("1f1b", 1, ref);
    assert_int_equal(n1, 5); /* 1 warm-up + 4 */
    for (int P = 2; P <= 3; P++) {
        int n = run_losses("zb-h1", P, got);
        assert_int_equal(n, n1);
        double worst = 0;
        for (int i = 0; i < n; i++) {
            double d = tu_reldiff(ref[i], got[i], 1e-30);
            if (d > worst)
                worst = d;
        }
        print_message("zb-h1 on %d stages vs 1 stage: %d iterations, largest relative loss difference %.3g "
                      "(tolerance 1e-5)\n", P, n, worst);
        if (!(worst <= 1e-5))
            fail_msg("zb-h1 on %d stages: loss differs by %.3g", P, worst);
    }
}

static void test_chunked_refused(void **state)
{
    (void)state;
    static const char *const scheds[] = {"interleaved-1f1b", "zb-v"};
    for (int i = 0; i < 2; i++) {
        int rc = tu_pipenem_run(out, sizeof out,
                                "run --model tiny --compute cpu --threads 1 --stages 2 --schedule %s --iters 1",
                                scheds[i]);
        if (rc != 1 || !strstr(out, "places 2 model chunks on each stage; the executor runs one chunk per stage"))
            fail_msg("%s: exit %d, output:\n%s", scheds[i], rc, out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zbh1_losses),
        cmocka_unit_test(test_chunked_refused),
    };
    return cmocka_run_group_tests_name("sched_run", tests, NULL, NULL);
}
