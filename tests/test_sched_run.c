/* The new schedules through `pipenem run`: zb-h1 (split backward), interleaved-1f1b and
 * zb-v (two chunks per stage, local hand-offs, the wrap-around link of interleaving)
 * train the tiny model on 2, 3 and 4 stages with the same loss per iteration as on one
 * stage, to 1e-5 relative; shapes a schedule does not allow fail naming the rule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "pipeline/runcfg.h"
#include "tests/testutil.h"

static char out[1 << 18];

enum { MAXIT = 64 };

/* The acceptance model: tiny with 8 layers (8 chunks fit for 4 stages of 2 chunks), 12
 * micro-batches (divisible by 2, 3 and 4; at least 2 per stage for zb-v). */
#define RUN "run --model tiny --layers 8 --batch-size 12 --compute cpu --threads 1 --iters 3"

static int run_losses(const char *schedule, int stages, double *loss)
{
    int rc = tu_pipenem_run(out, sizeof out, RUN " --stages %d --schedule %s", stages, schedule);
    if (rc)
        fail_msg("%s on %d stages exited %d:\n%s", schedule, stages, rc, out);
    return tu_parse_losses(out, loss, MAXIT);
}

/* Every new schedule on 2, 3 and 4 stages (interleaved-1f1b and zb-v with 2 chunks per
 * stage: 4, 6 and 8 chunks) gives the losses of one stage, to 1e-5 relative. */
static void test_losses_match_one_stage(void **state)
{
    (void)state;
    static const char *const scheds[] = {"zb-h1", "interleaved-1f1b", "zb-v"};
    double ref[MAXIT], got[MAXIT];
    int n1 = run_losses("1f1b", 1, ref);
    assert_int_equal(n1, 4); /* 1 warm-up + 3 */
    for (int si = 0; si < 3; si++)
        for (int P = 2; P <= 4; P++) {
            int n = run_losses(scheds[si], P, got);
            assert_int_equal(n, n1);
            double worst = 0;
            for (int i = 0; i < n; i++) {
                double d = tu_reldiff(ref[i], got[i], 1e-30);
                if (d > worst)
                    worst = d;
            }
            print_message("%s on %d stages vs 1 stage: %d iterations, largest relative loss difference %.3g "
                          "(tolerance 1e-5)\n", scheds[si], P, n, worst);
            if (!(worst <= 1e-5))
                fail_msg("%s on %d stages: loss differs by %.3g", scheds[si], P, worst);
        }
}

/* Shapes a schedule does not allow fail with its rule. */
static void test_shape_refused(void **state)
{
    (void)state;
    int rc = tu_pipenem_run(out, sizeof out, RUN " --stages 5 --schedule interleaved-1f1b");
    if (rc == 0 || !strstr(out, "divisible by the stages, as in Megatron-LM (got 12 micro-batches for 5 stages)"))
        fail_msg("exit %d, output:\n%s", rc, out);
    rc = tu_pipenem_run(out, sizeof out, RUN " --stages 4 --schedule zb-v --batch-size 6");
    if (rc == 0 || !strstr(out, "zb-v needs at least 2 micro-batches per stage (8 for 4 stages; got 6)"))
        fail_msg("exit %d, output:\n%s", rc, out);
}

/* --slack auto, the default with 1f1b-slack: the example (GPT-3 small shapes,
 * fwd 25 ms, bwd 75 ms per micro-batch, 3 stages, 10ms/1Gbps) resolves to K = 2; real
 * compute (costs unknown before the run) to 1; a given K stays. */
static int slack_of(const char *compute, const char *net, const char *slack)
{
    runcfg_t cfg;
    runcfg_defaults(&cfg);
    const char *set[][2] = {{"model", "gpt3-small"}, {"stages", "3"},   {"schedule", "1f1b-slack"},
                            {"compute", compute},     {"net", net},      {"slack", slack}};
    struct option opts[128];
    char err[512];
    assert_true(runcfg_options_table(opts, 128, NULL) > 0);
    for (size_t i = 0; i < sizeof set / sizeof *set; i++)
        for (const struct option *o = opts; set[i][1] && o->name; o++)
            if (!strcmp(o->name, set[i][0]) && runcfg_option(&cfg, o->val, set[i][1], err, sizeof err) < 0)
                fail_msg("--%s %s: %s", set[i][0], set[i][1], err);
    if (runcfg_finish(&cfg, err, sizeof err))
        fail_msg("%s", err);
    return cfg.slack;
}

static void test_slack_auto(void **state)
{
    (void)state;
    int k = slack_of("emulate:fwd=25ms,bwd=75ms", "10ms/1Gbps", NULL);
    print_message("1f1b-slack on gpt3-small shapes, fwd 25 ms bwd 75 ms, 10ms/1Gbps: auto K = %d (want 2)\n", k);
    assert_int_equal(k, 2);
    assert_int_equal(slack_of("emulate:fwd=25ms,bwd=75ms", "10ms/1Gbps", "auto"), 2);
    assert_int_equal(slack_of("cpu", "default", NULL), 1);
    assert_int_equal(slack_of("emulate:fwd=25ms,bwd=75ms", "10ms/1Gbps", "3"), 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_losses_match_one_stage),
        cmocka_unit_test(test_shape_refused),
        cmocka_unit_test(test_slack_auto),
    };
    return cmocka_run_group_tests_name("sched_run", tests, NULL, NULL);
}
