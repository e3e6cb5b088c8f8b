/* The runtime's own overhead: 3 stage processes with emulated compute (fwd 20 ms, bwd
 * 40 ms per micro-batch), 16 micro-batches, free local links. The measured median
 * iteration must be within 5% of the simulator's prediction for the same costs (ratio in
 * [0.95, 1.05], NaN failing), and each
 * stage process must use under 10% of a core while it waits for tensors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/model.h"
#include "pipeline/runcfg.h"
#include "schedules/sched.h"
#include "schedules/sim.h"
#include "tests/testutil.h"

#define ARGS "--model tiny --stages 3 --batch-size 16 --micro-batch-size 1 --compute emulate:fwd=20ms,bwd=40ms"

static char out[1 << 18];

/* The simulator's iteration time for the costs the emulate backend models. */
static int predict(const char *schedule, double *t, char *err, size_t errlen)
{
    runcfg_t cfg;
    runcfg_defaults(&cfg);
    const char *argv[][2] = {{"model", "tiny"}, {"layers", "3"}, {"stages", "3"}, {"batch-size", "16"},
                             {"micro-batch-size", "1"}, {"compute", "emulate:fwd=20ms,bwd=40ms"},
                             {"schedule", schedule}};
    struct option opts[96];
    if (runcfg_options_table(opts, 96, NULL) < 0)
        return -1;
    for (size_t i = 0; i < sizeof argv / sizeof *argv; i++)
        for (const struct option *o = opts; o->name; o++)
            if (!strcmp(o->name, argv[i][0]) && runcfg_option(&cfg, o->val, argv[i][1], err, errlen) < 0)
                return -1;
    if (runcfg_finish(&cfg, err, errlen))
        return -1;
    sim_cost_t cost[3];
    double act = 0;
    for (int s = 0; s < 3; s++) {
        model_stage_t st;
        model_stage_params_t p = cfg.stage_params;
        p.stage = s;
        if (model_stage_init(&st, &p, err, errlen))
            return -1;
        model_account_t a;
        model_stage_account(&st, &a);
        cost[s] = (sim_cost_t){a.fwd_s, a.bwd_s, a.opt_s};
        act = (double)a.boundary_bytes;
        model_stage_destroy(&st);
    }
    sim_config_t sc = {.schedule = schedule, .stages = 3, .micro_batches = cfg.micro_batches, .cost = cost,
                       .act_bytes = act, .grad_bytes = act, .send_mode = SIM_SEND_PIPELINED};
    sim_result_t r = {0};
    if (sim_run(&sc, &r, err, errlen))
        return -1;
    *t = r.time;
    sim_result_destroy(&r);
    return 0;
}

static void bench_schedule(const char *schedule)
{
    char err[512];
    double pred;
    if (predict(schedule, &pred, err, sizeof err))
        fail_msg("%s: prediction failed: %s", schedule, err);
    int rc = tu_pipenem_run(out, sizeof out, "run " ARGS " --schedule %s --iters 5 --warmup 1", schedule);
    const char *m = strstr(out, "median iteration time ");
    double meas = 0;
    if (rc || !m || sscanf(m, "median iteration time %lf", &meas) != 1)
        fail_msg("%s: run failed (%d):\n%s", schedule, rc, out);
    double wait[3];
    const char *p = strstr(out, "(% of a core)");
    for (int s = 0; s < 3; s++) {
        wait[s] = NAN;
        p = p ? strchr(p, '\n') : NULL;
        if (!p)
            break;
        p++;
        int st;
        double tf, mem, w;
        char mfu[16];
        if (sscanf(p, "%d %lf %15s %lf %lf", &st, &tf, mfu, &mem, &w) == 5 && st == s)
            wait[s] = w;
    }
    double worst = 0;
    for (int s = 0; s < 3; s++) {
        if (isnan(wait[s]))   /* fmax would pass over a missing figure */
            fail_msg("no wait CPU figure for stage %d in the output:\n%s", s, out);
        worst = fmax(worst, wait[s]);
    }
    double ratio = meas / pred;
    print_message("%s P=3 M=16 fwd 20 ms bwd 40 ms: measured %.4f s, simulator %.4f s, ratio %.3f (target within "
                  "[0.95, 1.05]); CPU while waiting %.2f %.2f %.2f %% of a core (target < 10)\n",
                  schedule, meas, pred, ratio, wait[0], wait[1], wait[2]);
    if (!(ratio >= 0.95 && ratio <= 1.05))   /* NaN fails too */
        fail_msg("ratio %.3f outside [0.95, 1.05]", ratio);
    if (worst >= 10)
        fail_msg("a stage used %.2f%% of a core while waiting", worst);
}

static void bench_gpipe(void **state)
{
    (void)state;
    bench_schedule("gpipe");
}

static void bench_1f1b(void **state)
{
    (void)state;
    bench_schedule("1f1b");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bench_gpipe),
        cmocka_unit_test(bench_1f1b),
    };
    return cmocka_run_group_tests_name("bench_pipeline_emulate", tests, NULL, NULL);
}
