/* The runtime's own overhead: 3 stage processes with emulated compute (fwd 20 ms, bwd
 * 40 ms per micro-batch), 16 micro-batches, free local links. The measured median
 * iteration must be within 5% of the simulator's prediction for the same costs, and each
 * stage process must use under 10% of a core while it waits for tensors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/model.h"
#include "pipeline/runcfg.h"
#include "schedules/sched.h"
#include "schedules/sim.h"
#include "tests/testutil.h"

#define ARGS "--model tiny --layers 3 --stages 3 --batch-size 16 --micro-batch-size 1 --compute emulate:fwd=20ms,bwd=40ms"

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

int main(void)
{
    static const char *const schedules[] = {"gpipe", "1f1b"};
    int failed = 0;
    printf("# emulated compute fwd 20 ms bwd 40 ms, P=3, M=16, local links: measured vs simulated\n");
    printf("#  %-8s %12s %12s %8s %8s %22s %8s\n", "schedule", "measured", "predicted", "ratio", "target",
           "wait cpu per stage", "target");
    printf("#  %-8s %12s %12s %8s %8s %22s %8s\n", "", "(s)", "(s)", "", "", "(% of a core)", "");
    for (size_t i = 0; i < sizeof schedules / sizeof *schedules; i++) {
        char err[512];
        double pred;
        if (predict(schedules[i], &pred, err, sizeof err)) {
            printf("   %-8s prediction failed: %s\n", schedules[i], err);
            failed++;
            continue;
        }
        int rc = tu_pipenem_run(out, sizeof out, "run " ARGS " --schedule %s --iters 5 --warmup 1", schedules[i]);
        const char *m = strstr(out, "median iteration time ");
        double meas = 0;
        if (rc || !m || sscanf(m, "median iteration time %lf", &meas) != 1) {
            printf("   %-8s run failed (%d):\n%s\n", schedules[i], rc, out);
            failed++;
            continue;
        }
        double wait[3] = {0};
        const char *p = strstr(out, "(% of a core)");
        for (int s = 0; p && s < 3; s++) {
            p = strchr(p, '\n');
            if (!p)
                break;
            p++;
            int st;
            double tf, mem, w;
            char mfu[16];
            if (sscanf(p, "%d %lf %15s %lf %lf", &st, &tf, mfu, &mem, &w) == 5 && st == s)
                wait[s] = w;
            else
                wait[s] = NAN;
        }
        double worst = fmax(wait[0], fmax(wait[1], wait[2]));
        double ratio = meas / pred;
        int ok = ratio <= 1.05 && worst < 10 && !isnan(worst);
        failed += !ok;
        char w[64];
        snprintf(w, sizeof w, "%.2f %.2f %.2f", wait[0], wait[1], wait[2]);
        printf("   %-8s %12.4f %12.4f %8.3f %8s %22s %8s %s\n", schedules[i], meas, pred, ratio, "<=1.05", w, "<10",
               ok ? "ok" : "MISSED");
    }
    printf("# %s\n", failed ? "FAILED" : "OK");
    return failed ? 1 : 0;
}
