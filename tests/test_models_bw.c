/* models/: the split backward. B (input gradient) then W (parameter gradients) equals the
 * unsplit backward bit for bit on the cpu, for the first, a middle and the last stage,
 * with recompute and tied embeddings, also when W is deferred past the next micro-batch's
 * B as the zero-bubble schedules do; and the slot rules of B and W. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/model.h"

enum { M = 3 };

static model_stage_params_t params(int stages, int stage, int recompute, int tied)
{
    model_stage_params_t p;
    memset(&p, 0, sizeof p);
    char err[256];
    if (model_config_get("tiny", &p.cfg, err, sizeof err))
        fail_msg("%s", err);
    p.cfg.layers = 3;
    p.cfg.hidden = 32;
    p.cfg.heads = 4;
    p.seq_len = 70; /* > the 64-row attention block: both block paths run */
    p.micro_batch_size = 2;
    p.micro_batches = M;
    p.stages = stages;
    p.stage = stage;
    p.compute = "cpu";
    p.dataset = "random";
    p.seed = 7;
    p.threads = 1;
    p.lr = 1e-3f;
    p.recompute = recompute;
    p.tied_embeddings = tied;
    return p;
}

/* Deterministic boundary tensors: the input and output gradient of micro-batch mb. */
static void fill(float *x, size_t n, unsigned seed)
{
    unsigned s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 0.1f;
    }
}

/* order 0: the unsplit backward per micro-batch; 1: B then W per micro-batch; 2: every
 * B first, then every W (W deferred). Fills grads (n_params) and din (M boundary tensors). */
static void run(const model_stage_params_t *p, int order, float *grads, float *din)
{
    model_stage_t st;
    char err[512];
    int rc = model_stage_init(&st, p, err, sizeof err);
    if (rc)
        fail_msg("model_stage_init: %d %s", rc, err);
    size_t nf = model_stage_act_bytes(&st) / sizeof(float);
    float *in = malloc(nf * sizeof(float)), *out = malloc(nf * sizeof(float)),
          *dout = malloc(nf * sizeof(float));
    assert_non_null(in);
    assert_non_null(out);
    assert_non_null(dout);
    for (int mb = 0; mb < M; mb++) {
        fill(in, nf, 100 + mb);
        assert_int_equal(model_stage_forward(&st, 0, mb, st.first ? NULL : in, st.last ? NULL : out), 0);
    }
    for (int mb = 0; mb < M; mb++) {
        fill(dout, nf, 200 + mb);
        const float *d = st.last ? NULL : dout;
        float *di = st.first ? NULL : din + (size_t)mb * nf;
        if (order == 0) {
            assert_int_equal(model_stage_backward(&st, 0, mb, d, di), 0);
        } else {
            assert_int_equal(model_stage_backward_input(&st, 0, mb, d, di), 0);
            if (order == 1)
                assert_int_equal(model_stage_backward_weights(&st, 0, mb), 0);
        }
    }
    if (order == 2)
        for (int mb = 0; mb < M; mb++)
            assert_int_equal(model_stage_backward_weights(&st, 0, mb), 0);
    memcpy(grads, st.grads, st.n_params * sizeof(float));
    assert_int_equal(model_stage_step(&st, 0), 0);
    free(in);
    free(out);
    free(dout);
    model_stage_destroy(&st);
}

/* Bitwise comparison; prints how many values differ and the largest difference. */
static size_t differ(const char *what, const float *a, const float *b, size_t n)
{
    size_t bad = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float))) {
            bad++;
            worst = fmax(worst, fabs((double)a[i] - b[i]));
        }
    print_message("  %s: %zu of %zu values differ bitwise, largest difference %.3g\n", what, bad, n, worst);
    return bad;
}

static void check(int stages, int stage, int recompute, int tied)
{
    model_stage_params_t p = params(stages, stage, recompute, tied);
    model_stage_t probe;
    char err[512];
    if (model_stage_init(&probe, &p, err, sizeof err))
        fail_msg("%s", err);
    size_t np = probe.n_params, nf = model_stage_act_bytes(&probe) / sizeof(float);
    model_stage_destroy(&probe);
    float *g[3], *d[3];
    for (int o = 0; o < 3; o++) {
        g[o] = malloc(np * sizeof(float));
        d[o] = calloc((size_t)M * nf, sizeof(float));
        assert_non_null(g[o]);
        assert_non_null(d[o]);
        run(&p, o, g[o], d[o]);
    }
    print_message("stage %d of %d, recompute %d, tied %d:\n", stage, stages, recompute, tied);
    size_t bad = 0;
    for (int o = 1; o < 3; o++) {
        bad += differ(o == 1 ? "B,W gradients" : "B..,W.. gradients", g[0], g[o], np);
        bad += differ(o == 1 ? "B,W input gradients" : "B..,W.. input gradients", d[0], d[o], (size_t)M * nf);
    }
    double gn = 0;
    for (size_t i = 0; i < np; i++)
        gn += fabs(g[0][i]);
    for (int o = 0; o < 3; o++) {
        free(g[o]);
        free(d[o]);
    }
    if (bad)
        fail_msg("the split backward differs from the unsplit one in %zu values", bad);
    if (!(gn > 0))
        fail_msg("the gradients are all zero: the comparison proves nothing");
}

static void test_bw_equals_backward(void **state)
{
    (void)state;
    check(1, 0, 0, 0);
    check(3, 0, 0, 0);
    check(3, 1, 0, 0);
    check(3, 2, 0, 0);
}

static void test_bw_equals_backward_recompute_tied(void **state)
{
    (void)state;
    check(1, 0, 1, 1);
    check(2, 0, 1, 1);
    check(2, 1, 1, 1);
}

static void test_bw_slots(void **state)
{
    (void)state;
    model_stage_params_t p = params(2, 1, 0, 0);
    p.max_inflight = 2;
    model_stage_t st;
    char err[512];
    if (model_stage_init(&st, &p, err, sizeof err))
        fail_msg("%s", err);
    size_t nb = model_stage_act_bytes(&st);
    float *in = calloc(nb, 1), *d = calloc(nb, 1);
    assert_int_equal(model_stage_forward(&st, 0, 0, in, NULL), 0);
    assert_int_equal(model_stage_backward_weights(&st, 0, 0), -ENOENT);   /* W before B */
    assert_int_equal(model_stage_backward_input(&st, 0, 1, NULL, d), -ENOENT); /* B before F */
    assert_int_equal(model_stage_backward_input(&st, 0, 0, NULL, d), 0);
    assert_int_equal(model_stage_backward_input(&st, 0, 0, NULL, d), -ENOENT); /* B twice */
    assert_int_equal(model_stage_backward(&st, 0, 0, NULL, d), -ENOENT);       /* after B */
    assert_int_equal(model_stage_forward(&st, 0, 1, in, NULL), 0);
    /* the slot stays held until W */
    assert_int_equal(model_stage_forward(&st, 0, 2, in, NULL), -ENOSPC);
    assert_int_equal(model_stage_step(&st, 0), -EBUSY);
    assert_int_equal(model_stage_backward_weights(&st, 0, 0), 0);
    assert_int_equal(model_stage_backward_weights(&st, 0, 0), -ENOENT);
    assert_int_equal(model_stage_backward(&st, 0, 1, NULL, d), 0);
    assert_int_equal(model_stage_step(&st, 0), 0);
    assert_true(isfinite(model_stage_loss(&st)));
    free(in);
    free(d);
    model_stage_destroy(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bw_equals_backward),
        cmocka_unit_test(test_bw_equals_backward_recompute_tied),
        cmocka_unit_test(test_bw_slots),
    };
    return cmocka_run_group_tests_name("models_bw", tests, NULL, NULL);
}
