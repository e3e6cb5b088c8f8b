/* schedules/: the schedules over chunks and split backwards (interleaved-1f1b, zb-h1,
 * zb-v). Literal lists derived by hand from each definition; every generated plan of
 * P 1..8, M 1..64, v 1..4 (where allowed) validates and holds the activations its bound
 * says; hand-broken plans are rejected naming stage, chunk and op; the text form round
 * trips; and the simulator's bubble with unit costs and free links equals the closed
 * forms derived below; mutated plans never crash the validator or the simulator, which
 * agree on what can run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schedules/sim.h"

static int imin(int a, int b) { return a < b ? a : b; }

static sched_plan_t build(const char *sched, int P, int M, int v)
{
    sched_spec_t sp = {sched, P, M, 0, v};
    sched_plan_t p;
    char err[256];
    if (sched_plan_build_spec(&sp, &p, err, sizeof err))
        fail_msg("%s P=%d M=%d v=%d: %s", sched, P, M, v, err);
    return p;
}

/* The compute ops of one rank (sends and receives left out), as tokens with @chunk. */
static void compute_text(const sched_plan_t *p, int s, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < p->n_ops[s] && off < len; i++) {
        if (!sched_op_is_compute(p->ops[s][i].kind))
            continue;
        char tok[32];
        sched_plan_op_format(p, s, i, tok, sizeof tok);
        off += (size_t)snprintf(buf + off, len - off, "%s%s", off ? " " : "", tok);
    }
}

/* Literal lists from the definitions (see sched.c):
 * - interleaved-1f1b P=2 M=4 v=2, rank 0: warm-up 2(P-1) + (v-1)P = 4 forwards; the k-th
 *   forward runs mb (k/4)*2 + k%2 on chunk ((k%4)/2)*2, the k-th backward the same mb on
 *   the mirrored chunk; then 1F1B pairs and the remaining backwards.
 * - zb-h1 P=2 M=3: rank 0 warms up with 1 forward and holds back no W; rank 1 holds back
 *   up to 1 W, which it runs after the next B; the last Ws fill the end.
 * - zb-v P=2 M=4, rank 1 (chunks 1 and 2): warm-up 2(P-1)-1 = 1 forward of chunk 1,
 *   1 pair of forwards (chunk 2, chunk 1), P-1 = 1 round F B W on chunk 2; steady rounds
 *   F B W on chunk 1 then chunk 2 while forwards remain; cool-down 1 pair of Bs, 1 round
 *   B W on chunk 1 (W of its oldest held-back B), then the held-back Ws of chunk 2, then
 *   of chunk 1. */
static void test_literal_lists(void **state)
{
    (void)state;
    static const struct {
        const char *sched;
        int P, M, v, s;
        const char *want;
    } cases[] = {
        {"interleaved-1f1b", 2, 4, 2, 0,
         "F0@0 F1@0 F0@2 F1@2 F2@0 B0@2 F3@0 B1@2 F2@2 B0@0 F3@2 B1@0 B2@2 B3@2 B2@0 B3@0 OPT"},
        {"interleaved-1f1b", 2, 2, 2, 1, "F0@1 F1@1 F0@3 F1@3 B0@3 B1@3 B0@1 B1@1 OPT"},
        {"zb-h1", 2, 3, 0, 0, "F0 F1 Bi0 W0 F2 Bi1 W1 Bi2 W2 OPT"},
        {"zb-h1", 2, 3, 0, 1, "F0 Bi0 F1 Bi1 W0 F2 Bi2 W1 W2 OPT"},
        {"zb-v", 2, 4, 0, 1,
         "F0@1 F0@2 F1@1 F1@2 Bi0@2 W0@2 F2@1 Bi0@1 W0@1 F2@2 Bi1@2 W1@2 F3@1 Bi1@1 W1@1 F3@2 Bi2@2 W2@2 "
         "Bi2@1 Bi3@2 Bi3@1 W2@1 W3@2 W3@1 OPT"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        sched_plan_t p = build(cases[c].sched, cases[c].P, cases[c].M, cases[c].v);
        char got[1024], err[256];
        compute_text(&p, cases[c].s, got, sizeof got);
        if (strcmp(got, cases[c].want))
            fail_msg("%s P=%d M=%d v=%d stage %d:\n got  %s\n want %s", cases[c].sched, cases[c].P,
                     cases[c].M, cases[c].v, cases[c].s, got, cases[c].want);
        if (sched_plan_validate(&p, NULL, err, sizeof err))
            fail_msg("%s: %s", cases[c].sched, err);
        sched_plan_destroy(&p);
    }
}

/* The peak of (mb, chunk) activations rank s holds, by definition:
 * - interleaved-1f1b: its warm-up forwards + 1 (Megatron's count), all v*M when M == P;
 *   with v = 1 it is 1F1B's min(P-s, M). Each chunk activation is 1/v of a stage's.
 * - zb-h1: min(P, M) on every rank, the largest 1F1B peak (its rank 0): a rank s holds
 *   back at most s Ws after 1F1B's P-s-1 warm-up forwards.
 * - zb-v: 2P chunk activations (two chunks of half a stage each: P stages' worth, again
 *   1F1B's largest peak). */
static int peak_bound(int si, int P, int M, int v, int s)
{
    switch (si) {
    case 0: return v == 1 ? imin(P - s, M) : M == P ? v * M : imin(v * M, 2 * (P - s - 1) + (v - 1) * P + 1);
    case 1: return imin(P, M);
    default: return 2 * P;
    }
}

static void test_generated_plans_valid_and_peaks(void **state)
{
    (void)state;
    static const char *const scheds[] = {"interleaved-1f1b", "zb-h1", "zb-v"};
    int checked = 0, refused = 0;
    for (int si = 0; si < 3; si++)
        for (int v = 1; v <= (si == 0 ? 4 : 1); v++)
            for (int P = 1; P <= 8; P++)
                for (int M = 1; M <= 64; M++) {
                    sched_spec_t sp = {scheds[si], P, M, 0, si == 0 ? v : 0};
                    int allowed = si == 0 ? (v == 1 || M % P == 0) : si == 1 ? 1 : M >= 2 * P, vv = 0;
                    char err[256];
                    int rc = sched_spec_check(&sp, &vv, err, sizeof err);
                    if (!allowed) {
                        if (rc != -EINVAL || !strstr(err, scheds[si]))
                            fail_msg("%s P=%d M=%d v=%d accepted or unnamed: %s", scheds[si], P, M, v, err);
                        refused++;
                        continue;
                    }
                    sched_plan_t p = build(scheds[si], P, M, si == 0 ? v : 0);
                    int peak[8], w = si == 0 ? v : si == 1 ? 1 : 2;
                    assert_int_equal(p.chunks, w * P);
                    if (sched_plan_validate(&p, peak, err, sizeof err))
                        fail_msg("%s P=%d M=%d v=%d: %s", scheds[si], P, M, v, err);
                    for (int s = 0; s < P; s++)
                        if (peak[s] != peak_bound(si, P, M, w, s))
                            fail_msg("%s P=%d M=%d v=%d stage %d: peak %d, bound %d", scheds[si], P, M, v, s,
                                     peak[s], peak_bound(si, P, M, w, s));
                    sched_plan_destroy(&p);
                    checked++;
                }
    print_message("validated %d plans with their peaks; %d shapes refused with a message\n", checked, refused);
}

/* A generated plan broken in one place must fail naming every needle. */
static void expect_broken(sched_plan_t *p, const char *what, const char *const *needles)
{
    char err[512] = "";
    int rc = sched_plan_validate(p, NULL, err, sizeof err);
    if (rc != -EINVAL)
        fail_msg("%s: accepted (rc %d)", what, rc);
    for (; *needles; needles++)
        if (!strstr(err, *needles))
            fail_msg("%s: message lacks '%s': %s", what, *needles, err);
    print_message("%s: %s\n", what, err);
}

/* The index of the first op of rank s of kind k (and mb, chunk if >= 0). */
static size_t find(const sched_plan_t *p, int s, sched_op_kind_t k, int mb, int chunk)
{
    for (size_t i = 0; i < p->n_ops[s]; i++)
        if (p->ops[s][i].kind == k && (mb < 0 || p->ops[s][i].mb == mb) && (chunk < 0 || p->ops[s][i].chunk == chunk))
            return i;
    fail_msg("no %s(%d) chunk %d on stage %d", sched_op_kind_name(k), mb, chunk, s);
    return 0;
}

static void swap(sched_plan_t *p, int s, size_t a, size_t b)
{
    sched_op_t t = p->ops[s][a];
    p->ops[s][a] = p->ops[s][b];
    p->ops[s][b] = t;
}

static void test_validator_rejects_broken(void **state)
{
    (void)state;
    /* W before its B (zb-h1, rank 0) */
    sched_plan_t p = build("zb-h1", 2, 3, 0);
    swap(&p, 0, find(&p, 0, SCHED_BWD_INPUT, 0, -1), find(&p, 0, SCHED_BWD_WEIGHT, 0, -1));
    expect_broken(&p, "W before B", (const char *const[]){"stage 0 op", "BWD_WEIGHT(0)", "W before its B", NULL});
    sched_plan_destroy(&p);
    /* B before its F (zb-v, rank 0's second chunk: its first B comes right after its F) */
    p = build("zb-v", 2, 4, 0);
    swap(&p, 0, find(&p, 0, SCHED_FWD, 0, 3), find(&p, 0, SCHED_BWD_INPUT, 0, 3));
    expect_broken(&p, "B before F", (const char *const[]){"stage 0 op", "BWD_INPUT(0) chunk 3", "before FWD(0)", NULL});
    sched_plan_destroy(&p);
    /* a chunk on the wrong rank (interleaved P=2: chunk 1 lives on rank 1) */
    p = build("interleaved-1f1b", 2, 2, 2);
    p.ops[0][find(&p, 0, SCHED_FWD, 1, 2)].chunk = 1;
    expect_broken(&p, "wrong rank",
                  (const char *const[]){"stage 0 op", "FWD(1) chunk 1", "chunk 1 is on stage 1 (interleaved", NULL});
    sched_plan_destroy(&p);
    /* a message where the hand-off is local (zb-v rank 1 holds chunks 1 and 2) */
    p = build("zb-v", 2, 4, 0);
    p.ops[1][find(&p, 1, SCHED_FWD, 0, 2)].kind = SCHED_RECV_ACT;
    expect_broken(&p, "local hand-off", (const char *const[]){"stage 1 op", "RECV_ACT(0) chunk 2", "local hand-off", NULL});
    sched_plan_destroy(&p);
    /* the unsplit backward and B of the same (mb, chunk) */
    p = build("zb-h1", 1, 2, 0);
    p.ops[0][find(&p, 0, SCHED_BWD_WEIGHT, 1, -1)].kind = SCHED_BWD;
    expect_broken(&p, "B and BWD", (const char *const[]){"stage 0 op", "BWD(1)", "second backward", NULL});
    sched_plan_destroy(&p);
    /* a W that never comes */
    p = build("zb-h1", 2, 2, 0);
    size_t w = find(&p, 1, SCHED_BWD_WEIGHT, 1, -1);
    memmove(&p.ops[1][w], &p.ops[1][w + 1], (p.n_ops[1] - w - 1) * sizeof *p.ops[1]);
    p.n_ops[1]--;
    expect_broken(&p, "missing W", (const char *const[]){"stage 1", "BWD_WEIGHT(1)", NULL});
    sched_plan_destroy(&p);
    /* send order on the wrap-around channel differs from the receive order: rank 1 starts
     * Ra0 F0 Sa0 Ra1 F1 Sa1 (chunk 1), made Ra0 F0 Ra1 F1 Sa1 Sa0 */
    p = build("interleaved-1f1b", 2, 2, 2);
    sched_op_t first6[6];
    memcpy(first6, p.ops[1], sizeof first6);
    sched_op_t reordered[6] = {first6[0], first6[1], first6[3], first6[4], first6[5], first6[2]};
    memcpy(p.ops[1], reordered, sizeof reordered);
    expect_broken(&p, "channel order",
                  (const char *const[]){"stage 1 op 4 SEND_ACT(1) chunk 1", "RECV_ACT(0) chunk 2", "order", NULL});
    sched_plan_destroy(&p);
    /* a wait cycle: rank 0 waits for chunk 2's input before sending chunk 0's output */
    p = build("interleaved-1f1b", 2, 2, 2);
    size_t ra = find(&p, 0, SCHED_RECV_ACT, 0, 2);
    sched_op_t op = p.ops[0][ra];
    memmove(&p.ops[0][1], &p.ops[0][0], ra * sizeof op);
    p.ops[0][0] = op;
    expect_broken(&p, "deadlock",
                  (const char *const[]){"deadlock", "stage 0 op 0 RECV_ACT(0) chunk 2", "waits for stage 1", NULL});
    sched_plan_destroy(&p);
}

/* The text form with @chunk and a placement line reads back into the same plan. */
static void test_text_round_trip(void **state)
{
    (void)state;
    static const struct {
        const char *sched;
        int P, M, v;
    } cases[] = {{"interleaved-1f1b", 3, 6, 2}, {"zb-v", 2, 4, 0}, {"zb-h1", 3, 4, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        sched_plan_t p = build(cases[c].sched, cases[c].P, cases[c].M, cases[c].v), q;
        char text[8192], err[256];
        size_t off = (size_t)snprintf(text, sizeof text, "placement %s %d\n", sched_place_name(p.place), p.chunks);
        for (int s = 0; s < p.stages; s++) {
            off += (size_t)snprintf(text + off, sizeof text - off, "stage %d:", s);
            for (size_t i = 0; i < p.n_ops[s]; i++) {
                char tok[32];
                sched_plan_op_format(&p, s, i, tok, sizeof tok);
                off += (size_t)snprintf(text + off, sizeof text - off, " %s", tok);
            }
            off += (size_t)snprintf(text + off, sizeof text - off, "\n");
        }
        assert_true(off < sizeof text);
        if (sched_plan_parse(text, 0, &q, err, sizeof err))
            fail_msg("%s: %s\n%s", cases[c].sched, err, text);
        assert_int_equal(q.stages, p.stages);
        assert_int_equal(q.micro_batches, p.micro_batches);
        assert_int_equal(q.chunks, p.chunks);
        assert_int_equal(q.place, p.place);
        for (int s = 0; s < p.stages; s++) {
            assert_int_equal(q.n_ops[s], p.n_ops[s]);
            assert_memory_equal(q.ops[s], p.ops[s], p.n_ops[s] * sizeof *p.ops[s]);
        }
        if (sched_plan_validate(&q, NULL, err, sizeof err))
            fail_msg("%s read back: %s", cases[c].sched, err);
        sched_plan_destroy(&p);
        sched_plan_destroy(&q);
    }
    sched_plan_t q;
    char err[256];
    static const char *const bad[][2] = {
        {"placement diagonal 4\nF0 OPT\n", "want 'placement"},
        {"placement v 3\nF0 OPT\n", "placement v holds 2 chunks"},
        {"F0@x OPT\n", "bad op 'F0@x'"},
        {"OPT@1\n", "bad op 'OPT@1'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (sched_plan_parse(bad[i][0], 0, &q, err, sizeof err) != -EINVAL || !strstr(err, bad[i][1]))
            fail_msg("'%s': message '%s' lacks '%s'", bad[i][0], err, bad[i][1]);
}

/* Usage errors name the rule. */
static void test_spec_errors(void **state)
{
    (void)state;
    static const struct {
        sched_spec_t sp;
        const char *needle;
    } bad[] = {
        {{"interleaved-1f1b", 3, 8, 0, 2}, "divisible by the stages, as in Megatron-LM (got 8 micro-batches for 3"},
        {{"interleaved-1f1b", 2, 4, 0, 99}, "chunks per rank must be 1..64"},
        {{"zb-v", 4, 7, 0, 0}, "zb-v needs at least 2 micro-batches per stage (8 for 4 stages; got 7)"},
        {{"zb-v", 4, 8, 0, 3}, "zb-v runs 2 chunks per rank, not 3"},
        {{"1f1b", 4, 8, 0, 2}, "1f1b runs 1 chunk per rank, not 2 (--chunks is for interleaved-1f1b)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int v = -7;
        char err[256] = "";
        if (sched_spec_check(&bad[i].sp, &v, err, sizeof err) != -EINVAL || !strstr(err, bad[i].needle))
            fail_msg("case %zu: '%s' lacks '%s'", i, err, bad[i].needle);
        assert_int_equal(v, -7);
    }
    assert_int_equal(sched_uses_chunks("interleaved-1f1b"), 1);
    assert_int_equal(sched_uses_chunks("zb-v"), 0);
    assert_int_equal(sched_splits_backward("zb-v"), 1);
    assert_int_equal(sched_splits_backward("1f1b"), 0);
    assert_int_equal(sched_splits_backward("x"), -EINVAL);
    char err[128];
    assert_int_equal(sched_warmup("zb-h1", 2, 4, 0, 0, err, sizeof err), -ENOTSUP);
}

/* Bubbles with unit costs and free links. Per stage (rank) and micro-batch F = 1 and
 * B = W = 1 (the unsplit backward B + W = 2); a rank of v chunks spends 1/v of each on a
 * chunk. Every rank does the same work, M (F + B + W), so its idle time is the iteration
 * time minus that, the same on every rank:
 * - 1F1B: (P-1)(F+B+W): the first micro-batch's forward and whole backward cross the
 *   P-1 other stages before the last backward of stage 0 can start.
 * - ZB-H1: (P-1)(F+B-W): only F and B lie on that chain, and a W runs in each of the
 *   P-1 gaps of the cool-down, so one W per hop comes off.
 * - interleaved 1F1B with v chunks: 1F1B's bubble / v: the chain crosses P-1 hops of a
 *   chunk, each 1/v of a stage (Narayanan et al., 2021).
 * - ZB-V (v = 2): (P-1) F/2: the time the first micro-batch's forward takes to reach the
 *   last rank through P-1 chunks of half a stage; no schedule can do better, since the
 *   last rank has nothing to run before that, and ZB-V leaves no other idle time.
 * Checked for P 2..8 and every M from P (2P for zb-v) to 48 the schedule allows. */
static void test_bubble_closed_forms(void **state)
{
    (void)state;
    static const char *const scheds[] = {"1f1b", "zb-h1", "interleaved-1f1b", "zb-v"};
    const double F = 1, B = 1, W = 1;
    double worst = 0;
    char where[128] = "";
    int cells = 0;
    for (int si = 0; si < 4; si++)
        for (int v = 1; v <= (si == 2 ? 4 : 1); v++)
            for (int P = 2; P <= 8; P++)
                for (int M = si == 3 ? 2 * P : P; M <= 48; M++) {
                    if (si == 2 && M % P)
                        continue;
                    sim_cost_t cost[8];
                    for (int s = 0; s < P; s++)
                        cost[s] = (sim_cost_t){F, B + W, 0};
                    sim_config_t c = {scheds[si], P, M, 0, cost, NULL, NULL, 0, 0, SIM_SEND_PIPELINED};
                    sim_result_t r;
                    char err[256];
                    if (sim_run_chunks(&c, si == 2 ? v : 0, &r, err, sizeof err))
                        fail_msg("%s P=%d M=%d v=%d: %s", scheds[si], P, M, v, err);
                    double want = si == 0 ? (P - 1) * (F + B + W)
                                  : si == 1 ? (P - 1) * (F + B - W)
                                  : si == 2 ? (P - 1) * (F + B + W) / v
                                            : (P - 1) * F / 2;
                    for (int s = 0; s < P; s++) {
                        double idle = r.time - r.busy[s], d = fabs(idle - want);
                        if (d > worst) {
                            worst = d;
                            snprintf(where, sizeof where, "%s P=%d M=%d v=%d stage %d: idle %.9g, closed form %.9g",
                                     scheds[si], P, M, v, s, idle, want);
                        }
                    }
                    sim_result_destroy(&r);
                    cells++;
                }
    print_message("%d cells; largest |idle - closed form| %.3g units%s%s (tolerance 1e-9)\n", cells, worst,
                  worst > 0 ? " at " : "", where);
    if (worst > 1e-9)
        fail_msg("bubble differs from its closed form by %.3g at %s", worst, where);
}

/* Latency-bound links: interleaving multiplies the messages on the critical chain, so
 * with a large delay interleaved-1f1b is slower than 1f1b, and zb-h1 never slower than
 * 1f1b (it runs the same chain with W moved off it). */
static void test_delay_orders(void **state)
{
    (void)state;
    int P = 4, M = 8;
    sim_cost_t cost[4];
    sim_link_t link[3];
    for (int s = 0; s < P; s++)
        cost[s] = (sim_cost_t){1, 2, 0};
    for (int l = 0; l < P - 1; l++)
        link[l] = (sim_link_t){5, 0, 0};
    double t[3];
    static const char *const scheds[] = {"1f1b", "interleaved-1f1b", "zb-h1"};
    for (int i = 0; i < 3; i++) {
        sim_config_t c = {scheds[i], P, M, 0, cost, link, link, 0, 0, SIM_SEND_PIPELINED};
        sim_result_t r;
        char err[256];
        if (sim_run(&c, &r, err, sizeof err))
            fail_msg("%s: %s", scheds[i], err);
        t[i] = r.time;
        sim_result_destroy(&r);
    }
    print_message("delay 5 units: 1f1b %.1f, interleaved-1f1b %.1f, zb-h1 %.1f\n", t[0], t[1], t[2]);
    assert_true(t[1] > t[0]);
    assert_true(t[2] <= t[0]);
}

static unsigned long long rng_state = 0x9e3779b97f4a7c15ull;
static unsigned rnd(unsigned n)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)(rng_state >> 33) % n;
}

/* Mutated plans (ops swapped, dropped, duplicated, rewritten) must never crash the
 * validator or the simulator, and whatever the validator accepts the simulator must run
 * to the end: the validator's dry run and the simulator agree on what can deadlock. */
static void test_mutated_plans(void **state)
{
    (void)state;
    static const char *const scheds[] = {"gpipe", "1f1b", "1f1b-slack", "interleaved-1f1b", "zb-h1", "zb-v"};
    int accepted = 0, rejected = 0;
    for (int iter = 0; iter < 6000; iter++) {
        int P = 1 + (int)rnd(4), M = 1 + (int)rnd(4), si = (int)rnd(6);
        sched_plan_t p;
        char err[512];
        if (si == 3)
            M = P * (1 + (int)rnd(2)); /* Megatron's divisibility rule */
        if (si == 5)
            M += 2 * P;
        sched_spec_t spec = {scheds[si], P, M, (int)rnd(3), si == 3 ? 1 + (int)rnd(3) : 0};
        if (sched_plan_build_spec(&spec, &p, err, sizeof err))
            fail_msg("%s P=%d M=%d: %s", scheds[si], P, M, err);
        for (int k = 1 + (int)rnd(3); k > 0; k--) {
            int s = (int)rnd((unsigned)P);
            size_t n = p.n_ops[s];
            sched_op_t *o = p.ops[s];
            if (n == 0)
                continue;
            size_t a = rnd((unsigned)n), b = rnd((unsigned)n);
            switch (rnd(4)) {
            case 0: { sched_op_t t = o[a]; o[a] = o[b]; o[b] = t; break; }
            case 1: memmove(o + a, o + a + 1, (n - a - 1) * sizeof *o); p.n_ops[s]--; break;
            case 2: o[a] = o[b]; break;
            default:
                o[a] = (sched_op_t){(sched_op_kind_t)rnd(SCHED_OP_KINDS + 1), (int)rnd((unsigned)M + 2) - 1,
                                    (int)rnd((unsigned)p.chunks + 2) - 1};
                break;
            }
        }
        double **dur = calloc((size_t)P, sizeof *dur), **bytes = calloc((size_t)P, sizeof *bytes);
        assert_true(dur && bytes);
        for (int s = 0; s < P; s++) {
            dur[s] = calloc(p.n_ops[s] + 1, sizeof **dur);
            bytes[s] = calloc(p.n_ops[s] + 1, sizeof **bytes);
            assert_true(dur[s] && bytes[s]);
            for (size_t j = 0; j < p.n_ops[s]; j++)
                dur[s][j] = (p.ops[s][j].kind == SCHED_SEND_ACT || p.ops[s][j].kind == SCHED_SEND_GRAD) ? NAN : 1.0 + rnd(3);
        }
        sim_link_t links[8];
        for (int l = 0; l < 8; l++)
            links[l] = (sim_link_t){0.5, 1e3, 0.1};
        sim_graph_t g = {&p, (const double *const *)dur, (const double *const *)bytes, links, links,
                         rnd(2) ? SIM_SEND_BLOCKING : SIM_SEND_PIPELINED};
        int valid = sched_plan_validate(&p, NULL, err, sizeof err) == 0;
        sim_result_t r;
        int rc = sim_graph_run(&g, &r, err, sizeof err);
        if (valid && rc)
            fail_msg("iteration %d: validator accepted, simulator failed: %s", iter, err);
        if (!valid && rc != -EINVAL)
            fail_msg("iteration %d: validator rejected, simulator returned %d", iter, rc);
        if (!rc) {
            assert_true(isfinite(r.time) && r.time > 0);
            sim_result_destroy(&r);
        }
        valid ? accepted++ : rejected++;
        for (int s = 0; s < P; s++) {
            free(dur[s]);
            free(bytes[s]);
        }
        free(dur);
        free(bytes);
        sched_plan_destroy(&p);
    }
    print_message("mutated plans: %d accepted and simulated, %d rejected\n", accepted, rejected);
    assert_true(accepted > 100 && rejected > 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literal_lists),
        cmocka_unit_test(test_generated_plans_valid_and_peaks),
        cmocka_unit_test(test_validator_rejects_broken),
        cmocka_unit_test(test_text_round_trip),
        cmocka_unit_test(test_spec_errors),
        cmocka_unit_test(test_bubble_closed_forms),
        cmocka_unit_test(test_delay_orders),
        cmocka_unit_test(test_mutated_plans),
    };
    return cmocka_run_group_tests_name("sched_chunks", tests, NULL, NULL);
}
