/* Benchmark: building, validating and simulating the largest pipeline the harness
 * plans for (P = 64 stages, M = 1024 micro-batches) must take under a second. Prints
 * each time and its ratio to the 1 s target; exits 1 when the target is missed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "schedules/sim.h"

enum { P = 64, M = 1024 };
#define TARGET_S 1.0

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void bench_one(const char *sched, int slack)
{
    static sim_cost_t cost[P];
    static sim_link_t link[P - 1];
    for (int s = 0; s < P; s++)
        cost[s] = (sim_cost_t){0.025, 0.075, 0.01};
    for (int i = 0; i < P - 1; i++)
        link[i] = (sim_link_t){0.010, 1e9, 5e-6};
    sim_config_t c = {sched, P, M, slack, cost, link, link, 6.3e6, 6.3e6, SIM_SEND_PIPELINED};
    char err[256];
    sim_result_t r;
    double t0 = now();
    if (sim_run(&c, &r, err, sizeof err))
        fail_msg("%s: %s", sched, err);
    double dt = now() - t0;
    size_t ops = 0;
    for (int s = 0; s < P; s++)
        ops += r.plan.n_ops[s];
    print_message("%-16s slack %-4s P=%d M=%d: %zu ops, predicted %.3f s, simulated in %.4f s, "
                  "ratio to the %.0f s target %.4f\n", sched, slack == SIM_SLACK_AUTO ? "auto" : "-",
                  P, M, ops, r.time, dt, TARGET_S, dt / TARGET_S);
    sim_result_destroy(&r);
    if (dt > TARGET_S)
        fail_msg("%s took %.3f s, target %.1f s", sched, dt, TARGET_S);
}

static void bench_gpipe(void **state) { (void)state; bench_one("gpipe", 0); }
static void bench_1f1b(void **state) { (void)state; bench_one("1f1b", 0); }
/* auto simulates K = 0..8 and then the chosen K: ten runs under one target */
static void bench_slack_auto(void **state) { (void)state; bench_one("1f1b-slack", SIM_SLACK_AUTO); }
static void bench_interleaved(void **state) { (void)state; bench_one("interleaved-1f1b", 0); }
static void bench_zbh1(void **state) { (void)state; bench_one("zb-h1", 0); }
static void bench_zbv(void **state) { (void)state; bench_one("zb-v", 0); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bench_gpipe),
        cmocka_unit_test(bench_1f1b),
        cmocka_unit_test(bench_slack_auto),
        cmocka_unit_test(bench_interleaved),
        cmocka_unit_test(bench_zbh1),
        cmocka_unit_test(bench_zbv),
    };
    return cmocka_run_group_tests_name("bench_sched", tests, NULL, NULL);
}
