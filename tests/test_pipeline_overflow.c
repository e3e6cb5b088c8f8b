/* fp16 dynamic loss scaling across a pipeline: when one stage's gradients overflow, every
 * stage must skip that step and halve its scale in the same iteration (a step applied on
 * some stages only would leave them on weights of different iterations). Three stage
 * processes on emulated fp16 compute (emulate:v100,fp16 scales its loss as the device
 * would); PIPENEM_FAULT=overflow:RANK:ITER makes one stage report an overflow there. The
 * run's table must show the scale halved from the next iteration on and one skipped step
 * on every stage; without a fault, none; without loss scaling (fp32), no scale column. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/testutil.h"

#define RUN "run --model tiny --stages 3 --seq-len 64 --batch-size 4 --micro-batch-size 2 --iters 4 --warmup 0 " \
            "--net default --timeout 60"
enum { P = 3, ITERS = 4, RANKS_MAX = 4 };
#define SCALE0 65536.0

static char out[1 << 17];

/* The loss-scale column of the iteration rows (NAN where there is none), each of the
 * ranks' skipped steps (-1 where missing) and memory kind ("" where missing; emulate:
 * "resident"). */
static void parse(int ranks, double scale[ITERS], long skipped[RANKS_MAX], char kind[RANKS_MAX][16])
{
    for (int i = 0; i < ITERS; i++)
        scale[i] = NAN;
    for (int q = 0; q < ranks; q++)
        skipped[q] = -1, kind[q][0] = '\0';
    const char *p = strstr(out, "tokens/s");
    for (int i = 0; p && i < ITERS; i++) {
        char line[256];
        int it;
        double t, loss, tok, s;
        while ((p = strchr(p, '\n')) && p[1] == '#')
            p++;
        if (!p || sscanf(++p, "%255[^\n]", line) != 1)
            break;
        int n = sscanf(line, "%d %lf %lf %lf %lf", &it, &t, &loss, &tok, &s);
        if (n >= 4 && it == i)
            scale[i] = n == 5 ? s : NAN;
    }
    p = strstr(out, "(steps)");
    for (int q = 0; p && q < ranks; q++) {
        p = strchr(p, '\n');
        if (!p)
            break;
        p++;
        int st;
        double tf, mem, w;
        char mfu[16], k[16];
        long sk;
        if (sscanf(p, "%d %lf %15s %lf %lf %15s %ld", &st, &tf, mfu, &mem, &w, k, &sk) == 7 && st == q && mem > 0) {
            skipped[q] = sk;
            snprintf(kind[q], sizeof kind[q], "%s", k);
        }
    }
}

/* Runs the pipeline with PIPENEM_FAULT=fault (NULL: none) and checks that every stage
 * skipped `want_skip` steps and that the scale halves after iteration `at` (-1: never). */
static void run_case(const char *schedule, const char *compute, const char *fault, int at, int want_skip)
{
    if (fault)
        setenv("PIPENEM_FAULT", fault, 1);
    else
        unsetenv("PIPENEM_FAULT");
    int rc = tu_pipenem_run(out, sizeof out, RUN " --schedule %s --compute %s", schedule, compute);
    unsetenv("PIPENEM_FAULT");
    if (rc)
        fail_msg("pipenem run (%s, %s, %s) exited %d:\n%s", schedule, compute, fault ? fault : "no fault", rc, out);
    double scale[ITERS];
    long skipped[RANKS_MAX];
    char kind[RANKS_MAX][16];
    parse(P, scale, skipped, kind);
    print_message("%s %s %s: loss scale %g %g %g %g, skipped per stage %ld %ld %ld\n", schedule, compute,
                  fault ? fault : "(no fault)", scale[0], scale[1], scale[2], scale[3], skipped[0], skipped[1],
                  skipped[2]);
    int bad = 0;
    for (int q = 0; q < P; q++)
        bad |= skipped[q] != want_skip || strcmp(kind[q], "resident"); /* emulate holds no device memory */
    for (int i = 0; i < ITERS; i++) {
        double want = at < 0 || i <= at ? SCALE0 : SCALE0 / 2;
        bad |= strstr(compute, "fp16") ? scale[i] != want : !isnan(scale[i]);
    }
    if (bad)
        fail_msg("the stages did not skip together (want %d skipped on every stage, the scale halved after "
                 "iteration %d):\n%s", want_skip, at, out);
}

static void test_middle_stage_overflow_1f1b(void **state)
{
    (void)state;
    run_case("1f1b", "emulate:v100,fp16", "overflow:1:1", 1, 1);
}

static void test_first_stage_overflow_gpipe(void **state)
{
    (void)state;
    run_case("gpipe", "emulate:v100,fp16", "overflow:0:2", 2, 1);
}

static void test_last_stage_overflow_gpipe(void **state)
{
    (void)state;
    run_case("gpipe", "emulate:v100,fp16", "overflow:2:0", 0, 1);
}

static void test_no_overflow(void **state)
{
    (void)state;
    run_case("1f1b", "emulate:v100,fp16", NULL, -1, 0);
}

/* fp32 scales nothing: no scale column, nothing skipped even when a stage "overflows" */
static void test_fp32_has_no_loss_scale(void **state)
{
    (void)state;
    run_case("1f1b", "emulate:v100,fp32", "overflow:1:1", -1, 0);
}

/* --dp: the replicas of a stage must skip together too (the all-reduce averages their
 * gradients, but each decides its own step): PIPENEM_FAULT=overflow:RANK:ITER on one rank
 * of one replica must skip the step on every rank of every replica and halve the scale
 * printed (replica 0's) from the next iteration on. */
static void run_dp_case(int stages, int dp, const char *fault, int at)
{
    int ranks = stages * dp;
    setenv("PIPENEM_FAULT", fault, 1);
    int rc = tu_pipenem_run(out, sizeof out, "run --model tiny --stages %d --dp %d --seq-len 64 --batch-size 4 "
                            "--micro-batch-size 2 --iters 4 --warmup 0 --net default --timeout 60 --schedule 1f1b "
                            "--compute emulate:v100,fp16", stages, dp);
    unsetenv("PIPENEM_FAULT");
    if (rc)
        fail_msg("pipenem run --stages %d --dp %d (%s) exited %d:\n%s", stages, dp, fault, rc, out);
    double scale[ITERS];
    long skipped[RANKS_MAX];
    char kind[RANKS_MAX][16];
    parse(ranks, scale, skipped, kind);
    print_message("--stages %d --dp %d %s: loss scale %g %g %g %g, skipped per rank %ld %ld %ld %ld\n", stages, dp,
                  fault, scale[0], scale[1], scale[2], scale[3], skipped[0], skipped[1], ranks > 2 ? skipped[2] : 0,
                  ranks > 3 ? skipped[3] : 0);
    int bad = 0;
    for (int q = 0; q < ranks; q++)
        bad |= skipped[q] != 1;
    for (int i = 0; i < ITERS; i++)
        bad |= scale[i] != (i <= at ? SCALE0 : SCALE0 / 2);
    if (bad)
        fail_msg("the replicas did not skip together (want 1 skipped on each of the %d ranks, the scale halved "
                 "after iteration %d):\n%s", ranks, at, out);
}

/* one stage: before the agreement took in the replicas, it was skipped with a pipeline of 1 */
static void test_dp_replica_overflow_one_stage(void **state)
{
    (void)state;
    run_dp_case(1, 2, "overflow:1:1", 1);
}

/* rank 2 = replica 1's stage 0 (rank = d * stages + s): replica 0 must skip with it */
static void test_dp_replica_overflow_two_stages(void **state)
{
    (void)state;
    run_dp_case(2, 2, "overflow:2:2", 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_middle_stage_overflow_1f1b),
        cmocka_unit_test(test_first_stage_overflow_gpipe),
        cmocka_unit_test(test_last_stage_overflow_gpipe),
        cmocka_unit_test(test_no_overflow),
        cmocka_unit_test(test_fp32_has_no_loss_scale),
        cmocka_unit_test(test_dp_replica_overflow_one_stage),
        cmocka_unit_test(test_dp_replica_overflow_two_stages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
