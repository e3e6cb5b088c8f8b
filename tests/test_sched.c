/* schedules/sched: the op lists of gpipe, 1f1b and 1f1b-slack, the validator (and that
 * it rejects hand-broken lists naming stage and op), peak activations held, and
 * invalid input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schedules/sched.h"

static int imin(int a, int b) { return a < b ? a : b; }

/* Space-separated compact tokens of one stage's list. */
static void ops_to_text(const sched_op_t *ops, size_t n, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && off < len; i++) {
        char tok[32];
        sched_op_format(&ops[i], tok, sizeof tok);
        off += (size_t)snprintf(buf + off, len - off, "%s%s", i ? " " : "", tok);
    }
}

/* A plan from one text line per stage (compact tokens), through sched_plan_parse. */
static void plan_from_text(sched_plan_t *p, int M, int P, const char *const *lines)
{
    char text[4096] = "", err[256];
    for (int s = 0; s < P; s++) {
        strncat(text, lines[s], sizeof text - strlen(text) - 2);
        strcat(text, "\n");
    }
    if (sched_plan_parse(text, M, p, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(p->stages, P);
}

/* The text form: prefixes, comments, blank lines, commas; M from the largest
 * micro-batch; each error names line and token. */
static void test_plan_parse(void **state)
{
    (void)state;
    sched_plan_t p;
    char err[256];
    assert_int_equal(sched_plan_parse("# two stages\nstage 0: F0, Sa0 F1 Sa1 OPT\n\n1: Ra0 FWD(0) RECV_ACT(1) F1 OPT_STEP # end\n",
                                      0, &p, err, sizeof err), 0);
    assert_int_equal(p.stages, 2);
    assert_int_equal(p.micro_batches, 2);
    assert_int_equal(p.n_ops[0], 5);
    assert_int_equal(p.n_ops[1], 5);
    assert_int_equal(p.ops[1][1].kind, SCHED_FWD);
    assert_int_equal(p.ops[1][4].kind, SCHED_OPT_STEP);
    sched_plan_destroy(&p);
    assert_int_equal(sched_plan_parse("F0 OPT\n", 7, &p, err, sizeof err), 0);
    assert_int_equal(p.micro_batches, 7);
    sched_plan_destroy(&p);
    static const struct {
        const char *text, *needle;
    } bad[] = {
        {"F0 OPT\nstage 3: F0\n", "line 2"},
        {"F0 OPT\n\nF0 Q1\n", "line 3 (stage 1): bad op 'Q1'"},
        {"# nothing\n\n", "no op lists"},
        {"OPT\n", "no micro-batch"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = '\0';
        if (sched_plan_parse(bad[i].text, 0, &p, err, sizeof err) != -EINVAL || !strstr(err, bad[i].needle))
            fail_msg("case %zu: '%s' lacks '%s'", i, err, bad[i].needle);
    }
    assert_int_equal(sched_plan_parse(NULL, 0, &p, err, sizeof err), -EINVAL);
}

static void test_names_and_tokens(void **state)
{
    (void)state;
    assert_string_equal(sched_names(), "gpipe, 1f1b, 1f1b-slack, interleaved-1f1b, zb-h1, zb-v");
    for (int k = 0; k < SCHED_OP_KINDS; k++) {
        sched_op_kind_t back;
        assert_int_equal(sched_op_kind_parse(sched_op_kind_name((sched_op_kind_t)k), &back), 0);
        assert_int_equal(back, k);
        sched_op_t op = {(sched_op_kind_t)k, k == SCHED_OPT_STEP ? -1 : 17, -1}, parsed;
        char tok[32], full[32];
        sched_op_format(&op, tok, sizeof tok);
        assert_int_equal(sched_op_parse(tok, &parsed), 0);
        assert_int_equal(parsed.kind, op.kind);
        assert_int_equal(parsed.mb, op.mb);
        snprintf(full, sizeof full, "%s(%d)", sched_op_kind_name(op.kind), op.mb);
        if (k != SCHED_OPT_STEP) {
            assert_int_equal(sched_op_parse(full, &parsed), 0);
            assert_int_equal(parsed.mb, 17);
        }
    }
    assert_string_equal(sched_op_kind_name(SCHED_OP_KINDS), "?");
    sched_op_kind_t k;
    sched_op_t op;
    assert_int_equal(sched_op_kind_parse("FORWARD", &k), -EINVAL);
    assert_int_equal(sched_op_kind_parse(NULL, &k), -EINVAL);
    static const char *const bad[] = {"", "F", "Fx", "F-1", "X3", "FWD(3", "FWD()", "OPT_STEP(1)", "Sa99999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (sched_op_parse(bad[i], &op) != -EINVAL)
            fail_msg("token '%s' parsed", bad[i]);
    assert_int_equal(sched_uses_slack("1f1b-slack"), 1);
    assert_int_equal(sched_uses_slack("gpipe"), 0);
    assert_int_equal(sched_uses_slack("pipedream"), -EINVAL);
}

/* Literal lists of a small case, written out by hand from the definitions: 1F1B stage 0
 * of P=2, M=3 warms up with min(P-s-1, M) = 1 forward. */
static void test_literal_lists(void **state)
{
    (void)state;
    static const struct {
        const char *sched;
        int P, M, K, s;
        const char *want;
    } cases[] = {
        {"1f1b", 2, 3, 0, 0, "F0 Sa0 F1 Sa1 Rg0 B0 F2 Sa2 Rg1 B1 Rg2 B2 OPT"},
        {"1f1b", 2, 3, 0, 1, "Ra0 F0 B0 Sg0 Ra1 F1 B1 Sg1 Ra2 F2 B2 Sg2 OPT"},
        {"gpipe", 2, 2, 0, 0, "F0 Sa0 F1 Sa1 Rg0 B0 Rg1 B1 OPT"},
        {"gpipe", 3, 2, 0, 1, "Ra0 F0 Sa0 Ra1 F1 Sa1 Rg0 B0 Sg0 Rg1 B1 Sg1 OPT"},
        {"gpipe", 1, 2, 0, 0, "F0 F1 B0 B1 OPT"},
        /* warm-up min(M, (P-1-s)(1+K)) = min(4, 1*2) = 2 */
        {"1f1b-slack", 2, 4, 1, 0, "F0 Sa0 F1 Sa1 F2 Sa2 Rg0 B0 F3 Sa3 Rg1 B1 Rg2 B2 Rg3 B3 OPT"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        sched_op_t *ops = NULL;
        size_t n = 0;
        char err[256], got[1024];
        assert_int_equal(sched_ops_build(cases[c].sched, cases[c].P, cases[c].M, cases[c].K,
                                         cases[c].s, &ops, &n, err, sizeof err), 0);
        ops_to_text(ops, n, got, sizeof got);
        if (strcmp(got, cases[c].want))
            fail_msg("%s P=%d M=%d K=%d stage %d:\n got  %s\n want %s", cases[c].sched,
                     cases[c].P, cases[c].M, cases[c].K, cases[c].s, got, cases[c].want);
        free(ops);
    }
}

/* Every built-in plan for P 1..8, M 1..64 validates; its shape follows the definitions:
 * forwards before the first backward = min(warmup + 1, M) with warmup M (gpipe),
 * min(P-s-1, M) (1f1b), min(M, (P-1-s)(1+K)) (1f1b-slack); op count M*(2 + sends and
 * receives of that stage) + 1; peak activations GPipe M, 1F1B min(P-s, M), 1f1b-slack
 * at most min(M, (P-1-s)(1+K) + 1). */
static void test_builtin_plans_valid_and_peaks(void **state)
{
    (void)state;
    static const char *const scheds[] = {"gpipe", "1f1b", "1f1b-slack"};
    int checked = 0;
    for (size_t si = 0; si < 3; si++)
        for (int K = 0; K <= (si == 2 ? 3 : 0); K++)
            for (int P = 1; P <= 8; P++)
                for (int M = 1; M <= 64; M++) {
                    sched_plan_t plan;
                    char err[256];
                    int peak[8];
                    if (sched_plan_build(scheds[si], P, M, K, &plan, err, sizeof err) ||
                        sched_plan_validate(&plan, peak, err, sizeof err))
                        fail_msg("%s P=%d M=%d K=%d: %s", scheds[si], P, M, K, err);
                    for (int s = 0; s < P; s++) {
                        int w = si == 0 ? M : si == 1 ? imin(P - s - 1, M) : imin(M, (P - 1 - s) * (1 + K));
                        int got_w = sched_warmup(scheds[si], P, M, K, s, err, sizeof err);
                        assert_int_equal(got_w, w);
                        size_t fwd_before = 0, j = 0;
                        for (; j < plan.n_ops[s] && plan.ops[s][j].kind != SCHED_BWD; j++)
                            fwd_before += plan.ops[s][j].kind == SCHED_FWD;
                        assert_int_equal(fwd_before, imin(w + 1, M));
                        size_t comm = (s > 0) * 2 + (s < P - 1) * 2;
                        assert_int_equal(plan.n_ops[s], (size_t)M * (2 + comm) + 1);
                        int want_peak = si == 0 ? M : si == 1 ? imin(P - s, M)
                                                              : imin(M, (P - 1 - s) * (1 + K) + 1);
                        if (peak[s] != want_peak)
                            fail_msg("%s P=%d M=%d K=%d stage %d: peak %d, want %d", scheds[si], P,
                                     M, K, s, peak[s], want_peak);
                        checked++;
                    }
                    sched_plan_destroy(&plan);
                }
    print_message("checked %d stage lists\n", checked);
}

/* 1f1b-slack with K = 0 is 1f1b; with a warm-up that reaches M it is gpipe. */
static void test_slack_limits(void **state)
{
    (void)state;
    for (int P = 1; P <= 6; P++)
        for (int M = 1; M <= 12; M++)
            for (int s = 0; s < P; s++) {
                sched_op_t *a, *b, *c;
                size_t na, nb, nc;
                char err[128];
                assert_int_equal(sched_ops_build("1f1b", P, M, 0, s, &a, &na, err, sizeof err), 0);
                assert_int_equal(sched_ops_build("1f1b-slack", P, M, 0, s, &b, &nb, err, sizeof err), 0);
                assert_int_equal(na, nb);
                assert_memory_equal(a, b, na * sizeof *a);
                assert_int_equal(sched_ops_build("gpipe", P, M, 0, s, &c, &nc, err, sizeof err), 0);
                free(b);
                /* (P-1-s)(1+K) >= M for K = M: equal to gpipe on all but the last stage,
                 * whose warm-up is 0 in every 1F1B variant. */
                assert_int_equal(sched_ops_build("1f1b-slack", P, M, M, s, &b, &nb, err, sizeof err), 0);
                if (s < P - 1) {
                    assert_int_equal(nb, nc);
                    assert_memory_equal(b, c, nb * sizeof *b);
                }
                free(a);
                free(b);
                free(c);
            }
    /* A huge K saturates instead of overflowing. */
    char err[128];
    assert_int_equal(sched_warmup("1f1b-slack", 8, 64, 2147483647, 0, err, sizeof err), 64);
}

/* A broken plan must fail validation with a message containing every `needles` entry. */
static void expect_invalid(int P, int M, const char *const *lines, const char *const *needles)
{
    sched_plan_t p;
    char err[512] = "";
    plan_from_text(&p, M, P, lines);
    int rc = sched_plan_validate(&p, NULL, err, sizeof err);
    sched_plan_destroy(&p);
    if (rc != -EINVAL)
        fail_msg("plan accepted (rc %d); first line: %s", rc, lines[0]);
    for (; *needles; needles++)
        if (!strstr(err, *needles))
            fail_msg("message lacks '%s': %s", *needles, err);
    print_message("rejected: %s\n", err);
}

static void test_validator_rejects_broken_lists(void **state)
{
    (void)state;
    /* The correct P=2, M=2 gpipe, as the base every case breaks in one place. */
    static const char *const ok[] = {"F0 Sa0 F1 Sa1 Rg0 B0 Rg1 B1 OPT",
                                     "Ra0 F0 Ra1 F1 B0 Sg0 B1 Sg1 OPT"};
    sched_plan_t p;
    char err[256];
    plan_from_text(&p, 2, 2, ok);
    assert_int_equal(sched_plan_validate(&p, NULL, err, sizeof err), 0);
    sched_plan_destroy(&p);

    /* swapped send order: stage 0 sends 1 before 0, stage 1 receives 0 first */
    static const char *const swapped[] = {"F0 F1 Sa1 Sa0 Rg0 B0 Rg1 B1 OPT", ok[1]};
    expect_invalid(2, 2, swapped, (const char *const[]){"stage 0 op 2 SEND_ACT(1)", "stage 1", "order", NULL});
    /* swapped gradient sends on stage 1 (backwards may run in any order, sends not) */
    static const char *const swapped_g2[] = {ok[0], "Ra0 F0 Ra1 F1 B0 B1 Sg1 Sg0 OPT"};
    expect_invalid(2, 2, swapped_g2, (const char *const[]){"stage 1 op 6 SEND_GRAD(1)", "stage 0", NULL});
    /* backward before forward */
    static const char *const bwd_first[] = {ok[0], "Ra0 Ra1 B0 Sg0 F0 F1 B1 Sg1 OPT"};
    expect_invalid(2, 2, bwd_first, (const char *const[]){"stage 1 op 2 BWD(0)", "before FWD(0)", NULL});
    /* a missing receive */
    static const char *const no_recv[] = {ok[0], "Ra0 F0 F1 B0 Sg0 B1 Sg1 OPT"};
    expect_invalid(2, 2, no_recv, (const char *const[]){"stage 1 op 2 FWD(1)", "RECV_ACT(1)", "missing receive", NULL});
    static const char *const no_grad[] = {"F0 Sa0 F1 Sa1 Rg0 B0 B1 OPT", ok[1]};
    expect_invalid(2, 2, no_grad, (const char *const[]){"stage 0 op 6 BWD(1)", "RECV_GRAD(1)", NULL});
    /* a receive the first stage must not have */
    static const char *const recv_on_first[] = {"Ra0 F0 Sa0 F1 Sa1 Rg0 B0 Rg1 B1 OPT", ok[1]};
    expect_invalid(2, 2, recv_on_first, (const char *const[]){"stage 0 op 0 RECV_ACT(0)", NULL});
    /* a send that never happens at all */
    static const char *const no_send[] = {"F0 Sa0 F1 Rg0 B0 Rg1 B1 OPT", ok[1]};
    expect_invalid(2, 2, no_send, (const char *const[]){"stage 0", "SEND_ACT(1) missing", NULL});
    /* duplicate forward, out-of-range micro-batch, OPT_STEP too early or missing */
    static const char *const dup[] = {"F0 Sa0 F0 F1 Sa1 Rg0 B0 Rg1 B1 OPT", ok[1]};
    expect_invalid(2, 2, dup, (const char *const[]){"stage 0 op 2 FWD(0)", "duplicate", NULL});
    static const char *const range[] = {"F0 Sa0 F1 Sa1 F2 Rg0 B0 Rg1 B1 OPT", ok[1]};
    expect_invalid(2, 2, range, (const char *const[]){"stage 0 op 4 FWD(2)", "out of range", NULL});
    static const char *const early_opt[] = {"F0 Sa0 F1 Sa1 Rg0 B0 OPT Rg1 B1", ok[1]};
    expect_invalid(2, 2, early_opt, (const char *const[]){"stage 0 op 6 OPT_STEP", "BWD(1)", NULL});
    static const char *const no_opt[] = {ok[0], "Ra0 F0 Ra1 F1 B0 Sg0 B1 Sg1"};
    expect_invalid(2, 2, no_opt, (const char *const[]){"stage 1", "OPT_STEP missing", NULL});
    /* matching orders, but stage 0 waits for a gradient before sending the activation
     * that produces it: a wait cycle only the dry run finds */
    static const char *const cycle[] = {"F0 Rg0 Sa0 B0 F1 Sa1 Rg1 B1 OPT",
                                        "Ra0 F0 B0 Sg0 Ra1 F1 B1 Sg1 OPT"};
    expect_invalid(2, 2, cycle, (const char *const[]){"deadlock", "stage 0 op 1 RECV_GRAD(0)", "stage 1 op 0 RECV_ACT(0)", NULL});
}

static void test_invalid_input(void **state)
{
    (void)state;
    sched_op_t *ops = NULL;
    size_t n = 0;
    char err[256];
    static const struct {
        const char *sched;
        int P, M, K, s;
        const char *needle;
    } bad[] = {
        {"1f1b", 0, 4, 0, 0, "stages must be >= 1"},
        {"1f1b", -3, 4, 0, 0, "stages"},
        {"1f1b", 4, 0, 0, 0, "micro-batches must be >= 1"},
        {"gpipe", 4, -1, 0, 0, "micro-batches"},
        {"1f1b", 4, 8, 0, 4, "stage 4 out of range 0..3"},
        {"1f1b", 4, 8, 0, -1, "stage -1"},
        {"pipedream", 4, 8, 0, 0, "unknown schedule 'pipedream'"},
        {NULL, 4, 8, 0, 0, "unknown schedule"},
        {"1f1b-slack", 4, 8, -2, 0, "slack"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = '\0';
        int rc = sched_ops_build(bad[i].sched, bad[i].P, bad[i].M, bad[i].K, bad[i].s, &ops, &n,
                                 err, sizeof err);
        if (rc != -EINVAL || !strstr(err, bad[i].needle))
            fail_msg("case %zu: rc %d, message '%s' lacks '%s'", i, rc, err, bad[i].needle);
        assert_int_equal(sched_warmup(bad[i].sched, bad[i].P, bad[i].M, bad[i].K, bad[i].s, err,
                                      sizeof err), -EINVAL);
    }
    assert_null(ops); /* outputs untouched on error */
    sched_plan_t p = {0};
    assert_int_equal(sched_plan_build("1f1b", 0, 4, 0, &p, err, sizeof err), -EINVAL);
    assert_null(p.ops);
    sched_plan_destroy(&p); /* zeroed plan is fine */
    sched_plan_destroy(NULL);
    assert_int_equal(sched_plan_validate(NULL, NULL, err, sizeof err), -EINVAL);
    assert_int_equal(sched_plan_validate(&p, NULL, err, sizeof err), -EINVAL);
    assert_int_equal(sched_ops_validate(2, 2, 2, NULL, 0, err, sizeof err), -EINVAL);
    /* NULL err buffers are allowed */
    assert_int_equal(sched_ops_build("x", 1, 1, 0, 0, &ops, &n, NULL, 0), -EINVAL);
    /* an op kind out of range is named, not indexed */
    sched_op_t weird[] = {{(sched_op_kind_t)42, 0, 0}};
    assert_int_equal(sched_ops_validate(1, 1, 0, weird, 1, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "stage 0 op 0"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_tokens),
        cmocka_unit_test(test_plan_parse),
        cmocka_unit_test(test_literal_lists),
        cmocka_unit_test(test_builtin_plans_valid_and_peaks),
        cmocka_unit_test(test_slack_limits),
        cmocka_unit_test(test_validator_rejects_broken_lists),
        cmocka_unit_test(test_invalid_input),
    };
    return cmocka_run_group_tests_name("sched", tests, NULL, NULL);
}
