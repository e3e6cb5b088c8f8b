/* models/: `tiny` really learns. 200 AdamW steps on the shipped public-domain text, split
 * into two stages driven 1F1B, must lower the loss by at least 30%. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/model.h"
#include "tests/testutil.h"

#define TEXT "tests/data/genesis-kjv.txt"
#define STEPS 200
#define MIN_DROP 0.30

static void test_train_tiny_on_text(void **state)
{
    (void)state;
    enum { P = 2, M = 2 };
    model_stage_t st[P];
    char err[512];
    for (int s = 0; s < P; s++) {
        model_stage_params_t p;
        memset(&p, 0, sizeof p);
        assert_int_equal(model_config_get("tiny", &p.cfg, err, sizeof err), 0);
        p.seq_len = 64;
        p.micro_batch_size = 4;
        p.micro_batches = M;
        p.stages = P;
        p.stage = s;
        p.compute = "cpu";
        p.dataset = TEXT;
        p.seed = 7;
        p.threads = 1;
        p.lr = 3e-3f;
        if (model_stage_init(&st[s], &p, err, sizeof err))
            fail_msg("init stage %d: %s", s, err);
    }
    size_t nb = model_stage_act_bytes(&st[0]);
    float *act[M], *grd[M];
    for (int m = 0; m < M; m++) {
        act[m] = malloc(nb);
        grd[m] = malloc(nb);
    }
    double first = NAN, tail = 0;
    for (int it = 0; it < STEPS; it++) {
        /* 1F1B on two stages: stage 0 runs F0 F1 B0 B1 as its neighbour hands back gradients */
        for (int m = 0; m < M; m++) {
            assert_int_equal(model_stage_forward(&st[0], it, m, NULL, act[m]), 0);
            assert_int_equal(model_stage_forward(&st[1], it, m, act[m], NULL), 0);
            assert_int_equal(model_stage_backward(&st[1], it, m, NULL, grd[m]), 0);
        }
        for (int m = 0; m < M; m++)
            assert_int_equal(model_stage_backward(&st[0], it, m, grd[m], NULL), 0);
        for (int s = 0; s < P; s++)
            assert_int_equal(model_stage_step(&st[s], it), 0);
        double l = model_stage_loss(&st[P - 1]);
        assert_true(isfinite(l));
        if (it == 0)
            first = l;
        if (it >= STEPS - 10)
            tail += l / 10;
        if (it % 50 == 0 || it == STEPS - 1)
            print_message("step %3d loss %.4f\n", it, l);
    }
    double drop = 1 - tail / first;
    print_message("loss %.4f -> %.4f (mean of the last 10 steps): lowered by %.1f%% (required %.0f%%)\n",
                  first, tail, 100 * drop, 100 * MIN_DROP);
    for (int m = 0; m < M; m++) {
        free(act[m]);
        free(grd[m]);
    }
    for (int s = 0; s < P; s++)
        model_stage_destroy(&st[s]);
    if (drop < MIN_DROP)
        fail_msg("the loss fell by %.1f%% only", 100 * drop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_tiny_on_text),
    };
    return cmocka_run_group_tests_name("models_train", tests, NULL, NULL);
}
