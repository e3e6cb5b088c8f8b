/* models/: the analytic gradients of every parameter tensor against central finite
 * differences, and split equivalence: P = 1..4 stages chained in one process, driven in
 * GPipe and 1F1B order, give the unsplit model's loss and gradients. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/model.h"
#include "tests/testutil.h"

/* tiny, narrowed further; T = 70 > the 64-row attention block, so both block paths run */
static model_stage_params_t small_params(int layers, int T, int B, int M, int stages, int stage)
{
    model_stage_params_t p;
    memset(&p, 0, sizeof p);
    char err[256];
    if (model_config_get("tiny", &p.cfg, err, sizeof err))
        fail_msg("%s", err);
    p.cfg.layers = layers;
    p.cfg.hidden = 32;
    p.cfg.heads = 4;
    p.seq_len = T;
    p.micro_batch_size = B;
    p.micro_batches = M;
    p.stages = stages;
    p.stage = stage;
    p.compute = "cpu";
    p.dataset = "random";
    p.seed = 42;
    p.threads = 1;
    p.lr = 1e-3f;
    return p;
}

static void stage_init_ok(model_stage_t *st, const model_stage_params_t *p)
{
    char err[512];
    int rc = model_stage_init(st, p, err, sizeof err);
    if (rc)
        fail_msg("model_stage_init: %d %s", rc, err);
}

/* The loss of micro-batch 0 of iteration 0 at the current parameters, forward only. */
static double loss_at(model_stage_t *st)
{
    model_stage_reset(st);
    assert_int_equal(model_stage_forward(st, 0, 0, NULL, NULL), 0);
    double l = model_stage_loss_pending(st);
    model_stage_reset(st);
    return l;
}

/* Tolerance of the finite-difference check in fp32. Measured here: largest error ~3e-4
 * (the finite differences' own rounding and curvature), so 3e-3 leaves a 10x margin for
 * other BLAS kernels while still catching a gradient that is 1% off. */
#define GRADCHECK_TOL 3e-3

static void gradcheck(int tied, int recompute, int hidden, int B, int threads)
{
    model_stage_params_t p = small_params(2, 70, B, 1, 1, 0);
    p.cfg.hidden = hidden;
    p.tied_embeddings = tied;
    p.recompute = recompute;
    p.threads = threads;
    model_stage_t st;
    stage_init_ok(&st, &p);
    model_stage_reset(&st);
    assert_int_equal(model_stage_forward(&st, 0, 0, NULL, NULL), 0);
    assert_int_equal(model_stage_backward(&st, 0, 0, NULL, NULL), 0);
    float *g = malloc(st.n_params * sizeof(float)), *save = malloc(st.n_params * sizeof(float));
    assert_non_null(g);
    assert_non_null(save);
    memcpy(g, st.grads, st.n_params * sizeof(float));
    memcpy(save, st.params, st.n_params * sizeof(float));
    double worst = 0;
    const char *worst_name = "";
    for (int k = 0; k < st.n_tensors; k++) {
        const model_tensor_t *t = model_stage_tensor(&st, k);
        float *th = t->param, *gt = g + t->offset, *th0 = save + t->offset;
        double gn = 0;
        size_t imax = 0;
        for (size_t i = 0; i < t->numel; i++) {
            gn += (double)gt[i] * gt[i];
            if (fabsf(gt[i]) > fabsf(gt[imax]))
                imax = i;
        }
        gn = sqrt(gn);
        if (gn == 0)
            fail_msg("tensor %s has an all-zero gradient", t->name);
        /* 0: a step along the gradient direction; 1: the largest single entry */
        for (int mode = 0; mode < 2; mode++) {
            /* steps sized to move the loss by ~2e-5: far above its rounding (~1e-8 here),
             * small enough that the third-order term stays below ~1e-4 relative */
            double gmag = mode == 0 ? gn : fabs(gt[imax]);
            double eps = fmin(fmax(2e-5 / gmag, 1e-3), 5e-2), an = 0, lp, lm;
            if (mode == 0) {
                for (size_t i = 0; i < t->numel; i++)
                    th[i] = th0[i] + (float)(eps * gt[i] / gn);
                lp = loss_at(&st);
                for (size_t i = 0; i < t->numel; i++)
                    th[i] = th0[i] - (float)(eps * gt[i] / gn);
                lm = loss_at(&st);
                /* predict from the perturbation actually stored in fp32 */
                for (size_t i = 0; i < t->numel; i++) {
                    float up = th0[i] + (float)(eps * gt[i] / gn), dn = th0[i] - (float)(eps * gt[i] / gn);
                    an += (double)gt[i] * ((double)up - dn);
                }
            } else {
                float up = th0[imax] + (float)eps, dn = th0[imax] - (float)eps;
                th[imax] = up;
                lp = loss_at(&st);
                th[imax] = dn;
                lm = loss_at(&st);
                an = (double)gt[imax] * ((double)up - dn);
            }
            memcpy(th, th0, t->numel * sizeof(float));
            double fd = lp - lm, rel = tu_reldiff(fd, an, 1e-6);
            if (rel > worst || isnan(rel)) {
                worst = rel;
                worst_name = t->name;
            }
            if (!(rel <= GRADCHECK_TOL))   /* NaN fails too */
                fail_msg("%s (%s): finite difference %.6e vs analytic %.6e, relative error %.3e > %.0e",
                         t->name, mode ? "largest entry" : "gradient direction", fd, an, rel, GRADCHECK_TOL);
        }
    }
    print_message("gradcheck%s%s (hidden %d, micro-batch %d, %d threads): %d tensors, largest relative "
                  "error %.3e (%s), tolerance %.0e\n", tied ? " tied" : "", recompute ? " recompute" : "", hidden,
                  B, threads, st.n_tensors, worst, worst_name, GRADCHECK_TOL);
    free(g);
    free(save);
    model_stage_destroy(&st);
}

static void test_gradcheck(void **state)
{
    (void)state;
    gradcheck(0, 0, 32, 2, 1);
}

/* wide enough (B*T*C > 32768) that the OpenMP loops run on two threads */
static void test_gradcheck_tied_recompute(void **state)
{
    (void)state;
    gradcheck(1, 1, 128, 4, 2);
}

/* ---------------------------------------------------------------- split equivalence */

enum { ORDER_GPIPE, ORDER_1F1B };
enum { EQ_LAYERS = 4, EQ_T = 70, EQ_B = 2, EQ_M = 5 };

typedef struct {
    char kind;  /* 'F' or 'B' */
    int mb;
} op_t;

/* GPipe: all forwards, then all backwards. 1F1B (Megatron): stage s warms up with
 * min(P-s-1, M) forwards, then alternates one forward and one backward, then drains. */
static int order_build(int order, int P, int s, int M, op_t *ops)
{
    int n = 0;
    if (order == ORDER_GPIPE) {
        for (int m = 0; m < M; m++)
            ops[n++] = (op_t){'F', m};
        for (int m = 0; m < M; m++)
            ops[n++] = (op_t){'B', m};
        return n;
    }
    int warm = P - s - 1 < M ? P - s - 1 : M;
    for (int m = 0; m < warm; m++)
        ops[n++] = (op_t){'F', m};
    for (int i = 0; i < M - warm; i++) {
        ops[n++] = (op_t){'F', warm + i};
        ops[n++] = (op_t){'B', i};
    }
    for (int m = M - warm; m < M; m++)
        ops[n++] = (op_t){'B', m};
    return n;
}

typedef struct {
    int n_tensors;
    char name[64][24];
    float *grad[64];
    size_t numel[64];
    double loss;
} snapshot_t;

static void snap_add(snapshot_t *s, const model_stage_t *st, int params)
{
    for (int k = 0; k < st->n_tensors; k++) {
        const model_tensor_t *t = model_stage_tensor(st, k);
        int i = s->n_tensors++;
        assert_true(i < 64);
        snprintf(s->name[i], sizeof s->name[i], "%s", t->name);
        s->numel[i] = t->numel;
        s->grad[i] = malloc(t->numel * sizeof(float));
        memcpy(s->grad[i], params ? t->param : t->grad, t->numel * sizeof(float));
    }
}

static void snap_free(snapshot_t *s)
{
    for (int i = 0; i < s->n_tensors; i++)
        free(s->grad[i]);
    s->n_tensors = 0;
}

/* Runs one iteration over P chained stages in the given order. A stage runs its next op
 * only once its neighbour has produced the input (forward: activation from s-1,
 * backward: gradient from s+1), like the pipeline executor. Outputs the gradients before
 * the step, the parameters after it and the loss of the iteration. */
static void run_split(int P, int order, int recompute, int tied, const int *partition, snapshot_t *grads,
                      snapshot_t *params)
{
    model_stage_t st[EQ_LAYERS];
    size_t nb = (size_t)EQ_B * EQ_T * 32;
    float *act[EQ_LAYERS][EQ_M], *grd[EQ_LAYERS][EQ_M];
    int act_ready[EQ_LAYERS][EQ_M] = {{0}}, grd_ready[EQ_LAYERS][EQ_M] = {{0}};
    op_t ops[EQ_LAYERS][2 * EQ_M];
    int n_ops[EQ_LAYERS], next[EQ_LAYERS] = {0};
    for (int s = 0; s < P; s++) {
        model_stage_params_t p = small_params(EQ_LAYERS, EQ_T, EQ_B, EQ_M, P, s);
        p.recompute = recompute;
        p.tied_embeddings = tied;
        p.partition = partition;
        /* 1F1B holds at most P-s micro-batches: give it exactly that many slots */
        p.max_inflight = order == ORDER_1F1B ? (P - s < EQ_M ? P - s : EQ_M) : EQ_M;
        stage_init_ok(&st[s], &p);
        n_ops[s] = order_build(order, P, s, EQ_M, ops[s]);
        for (int m = 0; m < EQ_M; m++) {
            act[s][m] = calloc(nb, sizeof(float));
            grd[s][m] = calloc(nb, sizeof(float));
        }
    }
    for (int iter = 0; iter < 2; iter++) {
        memset(act_ready, 0, sizeof act_ready);
        memset(grd_ready, 0, sizeof grd_ready);
        memset(next, 0, sizeof next);
        int done = 0, total = 0;
        for (int s = 0; s < P; s++)
            total += n_ops[s];
        while (done < total) {
            int progress = 0;
            for (int s = 0; s < P; s++) {
                if (next[s] == n_ops[s])
                    continue;
                op_t o = ops[s][next[s]];
                if (o.kind == 'F') {
                    if (s > 0 && !act_ready[s - 1][o.mb])
                        continue;
                    int rc = model_stage_forward(&st[s], iter, o.mb, s > 0 ? act[s - 1][o.mb] : NULL,
                                                 s < P - 1 ? act[s][o.mb] : NULL);
                    if (rc)
                        fail_msg("P=%d stage %d forward mb %d: %d", P, s, o.mb, rc);
                    act_ready[s][o.mb] = 1;
                } else {
                    if (s < P - 1 && !grd_ready[s + 1][o.mb])
                        continue;
                    int rc = model_stage_backward(&st[s], iter, o.mb, s < P - 1 ? grd[s + 1][o.mb] : NULL,
                                                  s > 0 ? grd[s][o.mb] : NULL);
                    if (rc)
                        fail_msg("P=%d stage %d backward mb %d: %d", P, s, o.mb, rc);
                    grd_ready[s][o.mb] = 1;
                }
                next[s]++;
                done++;
                progress = 1;
            }
            if (!progress)
                fail_msg("P=%d order %d deadlocked", P, order);
        }
        if (tied && P > 1) {
            /* the exchange the pipeline does: both twins end up with the sum */
            float *g0, *gl;
            size_t n0, nl;
            assert_int_equal(model_stage_tied_grad(&st[0], &g0, &n0), 0);
            assert_int_equal(model_stage_tied_grad(&st[P - 1], &gl, &nl), 0);
            assert_int_equal(n0, nl);
            for (size_t i = 0; i < n0; i++)
                g0[i] = gl[i] = g0[i] + gl[i];
        }
        if (iter == 0 && grads)
            for (int s = 0; s < P; s++)
                snap_add(grads, &st[s], 0);
        for (int s = 0; s < P; s++)
            assert_int_equal(model_stage_step(&st[s], iter), 0);
        if (iter == 0 && params)
            for (int s = 0; s < P; s++)
                snap_add(params, &st[s], 1);
        if (iter == 1 && grads)
            grads->loss = model_stage_loss(&st[P - 1]);
    }
    for (int s = 0; s < P; s++) {
        model_stage_destroy(&st[s]);
        for (int m = 0; m < EQ_M; m++) {
            free(act[s][m]);
            free(grd[s][m]);
        }
    }
}

#define SPLIT_TOL 1e-5

/* Largest per-tensor difference relative to the tensor's largest magnitude. */
static double snap_compare(const snapshot_t *ref, const snapshot_t *got, const char *what, char *worst, size_t wl)
{
    double mx = 0;
    for (int i = 0; i < ref->n_tensors; i++) {
        int j = 0;
        const char *want = ref->name[i];
        while (j < got->n_tensors && strcmp(got->name[j], want))
            j++;
        if (j == got->n_tensors)
            fail_msg("%s: tensor %s missing from the split model", what, want);
        assert_int_equal(ref->numel[i], got->numel[j]);
        double scale = 0, d = 0;
        for (size_t k = 0; k < ref->numel[i]; k++)
            scale = fmax(scale, fabs(ref->grad[i][k]));
        for (size_t k = 0; k < ref->numel[i]; k++)
            d = fmax(d, fabs((double)ref->grad[i][k] - got->grad[j][k]));
        double rel = d / fmax(scale, 1e-30);
        if (rel > mx) {
            mx = rel;
            snprintf(worst, wl, "%s", want);
        }
    }
    return mx;
}

static void split_equivalence(int recompute, int tied)
{
    snapshot_t rg = {0}, rp = {0};
    run_split(1, ORDER_GPIPE, 0, tied, NULL, &rg, &rp);
    double worst = 0;
    for (int P = 1; P <= 4; P++)
        for (int order = 0; order < 2; order++) {
            snapshot_t g = {0}, pa = {0};
            run_split(P, order, recompute, tied, NULL, &g, &pa);
            char wg[32] = "", wp[32] = "";
            double dg = snap_compare(&rg, &g, "grads", wg, sizeof wg);
            double dp = snap_compare(&rp, &pa, "params", wp, sizeof wp);
            double dl = tu_reldiff(rg.loss, g.loss, 1e-30);
            print_message("P=%d %-5s%s%s: loss %.7f vs %.7f (rel %.2e), grads max rel %.2e (%s), "
                          "params after step %.2e\n", P, order ? "1f1b" : "gpipe",
                          recompute ? " recompute" : "", tied ? " tied" : "", g.loss, rg.loss, dl, dg, wg, dp);
            if (!(dl <= SPLIT_TOL) || dg > SPLIT_TOL || dp > SPLIT_TOL)
                fail_msg("P=%d order %d differs from the unsplit model beyond %.0e", P, order, SPLIT_TOL);
            worst = fmax(worst, fmax(dl, fmax(dg, dp)));
            snap_free(&g);
            snap_free(&pa);
        }
    /* a stage must hold every gradient it owns: the split saw all reference tensors */
    print_message("split equivalence: largest relative difference %.2e, tolerance %.0e\n", worst, SPLIT_TOL);
    snap_free(&rg);
    snap_free(&rp);
}

static void test_split_equivalence(void **state)
{
    (void)state;
    split_equivalence(0, 0);
}

/* explicit, uneven partitions */
static void test_split_partitions(void **state)
{
    (void)state;
    static const int parts[][4] = {{1, 3}, {3, 1}, {1, 1, 2}, {2, 1, 1}};
    static const int n[] = {2, 2, 3, 3};
    snapshot_t rg = {0}, rp = {0};
    run_split(1, ORDER_GPIPE, 0, 0, NULL, &rg, &rp);
    for (size_t i = 0; i < sizeof n / sizeof *n; i++) {
        snapshot_t g = {0}, pa = {0};
        run_split(n[i], ORDER_1F1B, 0, 0, parts[i], &g, &pa);
        char wg[32] = "", wp[32] = "";
        double dg = snap_compare(&rg, &g, "grads", wg, sizeof wg), dp = snap_compare(&rp, &pa, "params", wp, sizeof wp);
        double dl = tu_reldiff(rg.loss, g.loss, 1e-30);
        char label[32] = "";
        for (int k = 0; k < n[i]; k++)
            snprintf(label + strlen(label), sizeof label - strlen(label), "%s%d", k ? "," : "", parts[i][k]);
        print_message("partition %s 1f1b: loss rel %.2e, grads %.2e, params %.2e\n", label, dl, dg, dp);
        if (!(dl <= SPLIT_TOL) || dg > SPLIT_TOL || dp > SPLIT_TOL)
            fail_msg("partition %zu differs from the unsplit model beyond %.0e", i, SPLIT_TOL);
        snap_free(&g);
        snap_free(&pa);
    }
    snap_free(&rg);
    snap_free(&rp);
}

static void test_split_equivalence_recompute_tied(void **state)
{
    (void)state;
    split_equivalence(1, 1);
}

/* ---------------------------------------------------------------- slots */

static void test_inflight_slots(void **state)
{
    (void)state;
    model_stage_params_t p = small_params(2, 16, 1, 4, 2, 1);
    p.max_inflight = 2;
    model_stage_t st;
    stage_init_ok(&st, &p);
    size_t nb = model_stage_act_bytes(&st);
    assert_int_equal(nb, 16 * 32 * sizeof(float));
    float *in = calloc(nb, 1), *d = calloc(nb, 1);
    assert_int_equal(model_stage_forward(&st, 0, 0, in, NULL), 0);
    assert_int_equal(model_stage_forward(&st, 0, 0, in, NULL), -EEXIST);
    assert_int_equal(model_stage_forward(&st, 0, 1, in, NULL), 0);
    assert_int_equal(model_stage_forward(&st, 0, 2, in, NULL), -ENOSPC);
    assert_int_equal(model_stage_forward(&st, 0, 4, in, NULL), -EINVAL);
    assert_int_equal(model_stage_step(&st, 0), -EBUSY);
    assert_int_equal(model_stage_backward(&st, 0, 3, NULL, d), -ENOENT);
    assert_int_equal(model_stage_backward(&st, 0, 1, NULL, d), 0);
    assert_int_equal(model_stage_forward(&st, 0, 2, in, NULL), 0);
    assert_int_equal(model_stage_backward(&st, 0, 0, NULL, d), 0);
    assert_int_equal(model_stage_backward(&st, 0, 2, NULL, d), 0);
    assert_int_equal(model_stage_step(&st, 0), 0);
    assert_true(isfinite(model_stage_loss(&st)));
    free(in);
    free(d);
    model_stage_destroy(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradcheck),
        cmocka_unit_test(test_gradcheck_tied_recompute),
        cmocka_unit_test(test_split_equivalence),
        cmocka_unit_test(test_split_equivalence_recompute_tied),
        cmocka_unit_test(test_split_partitions),
        cmocka_unit_test(test_inflight_slots),
    };
    return cmocka_run_group_tests_name("models", tests, NULL, NULL);
}
