/* Schedules as a const table (one entry and one generator per schedule), chunk
 * placements, op kinds and their tokens, and building plans. The text parser is in
 * sched_text.c, the validator in sched_check.c. */
#include "schedules/sched_priv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <threads.h>

#include "common/limits.h"

/* ---- op kinds and tokens ---- */

static const char *const kind_names[SCHED_OP_KINDS] = {
    "RECV_ACT", "FWD", "SEND_ACT", "RECV_GRAD", "BWD", "SEND_GRAD", "OPT_STEP", "BWD_INPUT", "BWD_WEIGHT",
    "ALLREDUCE",
};
/* Compact prefixes, in kind order; OPT_STEP carries no micro-batch. */
static const char *const kind_tokens[SCHED_OP_KINDS] = {"Ra", "F", "Sa", "Rg", "B", "Sg", "OPT", "Bi", "W", "AR"};

const char *sched_op_kind_name(sched_op_kind_t k)
{
    return (unsigned)k < SCHED_OP_KINDS ? kind_names[k] : "?";
}

int sched_op_kind_parse(const char *name, sched_op_kind_t *out)
{
    for (int k = 0; k < SCHED_OP_KINDS; k++)
        if (name && !strcasecmp(name, kind_names[k])) {
            *out = (sched_op_kind_t)k;
            return 0;
        }
    return -EINVAL;
}

int sched_op_is_compute(sched_op_kind_t k)
{
    return k == SCHED_FWD || k == SCHED_BWD || k == SCHED_OPT_STEP || k == SCHED_BWD_INPUT ||
           k == SCHED_BWD_WEIGHT;
}

int sched_op_format(const sched_op_t *op, char *buf, size_t len)
{
    if ((unsigned)op->kind >= SCHED_OP_KINDS)
        return snprintf(buf, len, "?");
    if (op->kind == SCHED_OPT_STEP)
        return snprintf(buf, len, "%s", kind_tokens[op->kind]);
    return snprintf(buf, len, "%s%d", kind_tokens[op->kind], op->mb);
}

int sched_plan_op_format(const sched_plan_t *plan, int rank, size_t i, char *buf, size_t len)
{
    const sched_op_t *op = &plan->ops[rank][i];
    int n = sched_op_format(op, buf, len);
    if (sched_plan_chunks(plan) == plan->stages || op->kind == SCHED_OPT_STEP || n < 0 || (size_t)n >= len)
        return n;
    return n + snprintf(buf + n, len - (size_t)n, "@%d", op->chunk);
}

/* A non-negative decimal of at most 9 digits that is the whole of [s, end); -1 otherwise. */
static int parse_uint(const char *s, const char *end)
{
    if (s == end || end - s > 9)
        return -1;
    int v = 0;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

/* KIND(mb) or a compact token, in [token, end). */
static int parse_kind_mb(const char *token, const char *end, sched_op_t *out)
{
    size_t n = (size_t)(end - token);
    const char *lp = memchr(token, '(', n);
    if (lp) {
        char name[16];
        size_t nl = (size_t)(lp - token);
        if (nl == 0 || nl >= sizeof name || end[-1] != ')')
            return -EINVAL;
        memcpy(name, token, nl);
        name[nl] = '\0';
        sched_op_kind_t k;
        if (sched_op_kind_parse(name, &k) || k == SCHED_OPT_STEP)
            return -EINVAL;
        int mb = parse_uint(lp + 1, end - 1);
        if (mb < 0)
            return -EINVAL;
        *out = (sched_op_t){k, mb, -1};
        return 0;
    }
    /* The longest prefix that leaves a number: "Bi3" is BWD_INPUT, not B of "i3". */
    int best = -1;
    size_t best_len = 0;
    for (int k = 0; k < SCHED_OP_KINDS; k++) {
        size_t pl = strlen(kind_tokens[k]);
        if (k != SCHED_OPT_STEP && n > pl && !strncmp(token, kind_tokens[k], pl) && pl > best_len &&
            parse_uint(token + pl, end) >= 0)
            best = k, best_len = pl;
    }
    if (best < 0)
        return -EINVAL;
    *out = (sched_op_t){(sched_op_kind_t)best, parse_uint(token + best_len, end), -1};
    return 0;
}

int sched_op_parse(const char *token, sched_op_t *out)
{
    if (!token || !*token)
        return -EINVAL;
    const char *at = strchr(token, '@'), *end = at ? at : token + strlen(token);
    int chunk = -1;
    if (at && (chunk = parse_uint(at + 1, at + strlen(at))) < 0)
        return -EINVAL;
    sched_op_t op;
    size_t n = (size_t)(end - token);
    if ((n == 3 && !strncasecmp(token, "OPT", 3)) || (n == 8 && !strncasecmp(token, "OPT_STEP", 8))) {
        if (at)
            return -EINVAL;
        op = (sched_op_t){SCHED_OPT_STEP, -1, -1};
    } else if (parse_kind_mb(token, end, &op)) {
        return -EINVAL;
    }
    op.chunk = chunk;
    *out = op;
    return 0;
}

/* ---- placements ---- */

static const char *const place_names[SCHED_PLACES] = {"plain", "interleaved", "v"};

const char *sched_place_name(sched_place_t pl)
{
    return (unsigned)pl < SCHED_PLACES ? place_names[pl] : "?";
}

int sched_chunk_rank(sched_place_t pl, int ranks, int c)
{
    switch (pl) {
    case SCHED_PLACE_INTERLEAVED: return c % ranks;
    case SCHED_PLACE_V: return c < ranks ? c : 2 * ranks - 1 - c;
    default: return c;
    }
}

int sched_rank_chunk(sched_place_t pl, int ranks, int chunks, int r, int j)
{
    (void)chunks;
    switch (pl) {
    case SCHED_PLACE_INTERLEAVED: return j * ranks + r;
    case SCHED_PLACE_V: return j ? 2 * ranks - 1 - r : r;
    default: return r;
    }
}

/* ---- generators ---- */

int sched_opbuf_push(sched_opbuf_t *b, sched_op_kind_t kind, int mb, int chunk)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        sched_op_t *p = realloc(b->ops, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        b->ops = p;
        b->cap = cap;
    }
    b->ops[b->n++] = (sched_op_t){kind, mb, chunk};
    return 0;
}

/* What a generator builds: rank s of P ranks, M micro-batches, v chunks per rank, K. */
typedef struct {
    int P, M, K, v, s;
    sched_place_t place;
    sched_opbuf_t *b;
    int rc;
} gen_t;

static int rank_of(const gen_t *g, int c) { return sched_chunk_rank(g->place, g->P, c); }

static void push(gen_t *g, sched_op_kind_t kind, int mb, int c)
{
    if (!g->rc)
        g->rc = sched_opbuf_push(g->b, kind, mb, c);
}

/* A forward of (mb, chunk c) with the receive and send its neighbours on other ranks
 * need; a neighbour on this rank is a local hand-off. */
static void push_forward(gen_t *g, int mb, int c)
{
    int C = g->P * g->v;
    if (c > 0 && rank_of(g, c - 1) != g->s)
        push(g, SCHED_RECV_ACT, mb, c);
    push(g, SCHED_FWD, mb, c);
    if (c < C - 1 && rank_of(g, c + 1) != g->s)
        push(g, SCHED_SEND_ACT, mb, c);
}

/* kind: SCHED_BWD or SCHED_BWD_INPUT, with the gradient's receive and send. */
static void push_backward(gen_t *g, sched_op_kind_t kind, int mb, int c)
{
    int C = g->P * g->v;
    if (c < C - 1 && rank_of(g, c + 1) != g->s)
        push(g, SCHED_RECV_GRAD, mb, c);
    push(g, kind, mb, c);
    if (c > 0 && rank_of(g, c - 1) != g->s)
        push(g, SCHED_SEND_GRAD, mb, c);
}

static int min_int(int a, int b) { return a < b ? a : b; }

/* `warmup` forwards, then one-forward-one-backward, then the remaining backwards
 * (Megatron-LM's order). GPipe is the case warmup = M. */
static void emit_warmup_1f1b(gen_t *g, int warmup)
{
    int M = g->M, s = g->s;
    for (int i = 0; i < warmup; i++)
        push_forward(g, i, s);
    for (int j = 0; j < M - warmup; j++) {
        push_forward(g, warmup + j, s);
        push_backward(g, SCHED_BWD, j, s);
    }
    for (int j = M - warmup; j < M; j++)
        push_backward(g, SCHED_BWD, j, s);
    push(g, SCHED_OPT_STEP, -1, -1);
}

static int warmup_gpipe(int P, int M, int K, int s)
{
    (void)P, (void)K, (void)s;
    return M;
}

static int warmup_1f1b(int P, int M, int K, int s)
{
    (void)K;
    return min_int(P - s - 1, M);
}

/* (P-1-s)(1+K) in 64 bits: a large K must saturate at M, not overflow. */
static int warmup_slack(int P, int M, int K, int s)
{
    long long w = (long long)(P - 1 - s) * (1LL + K);
    return w < M ? (int)w : M;
}

static void gen_gpipe(gen_t *g) { emit_warmup_1f1b(g, warmup_gpipe(g->P, g->M, g->K, g->s)); }
static void gen_1f1b(gen_t *g) { emit_warmup_1f1b(g, warmup_1f1b(g->P, g->M, g->K, g->s)); }
static void gen_slack(gen_t *g) { emit_warmup_1f1b(g, warmup_slack(g->P, g->M, g->K, g->s)); }

/* Megatron-LM's interleaved 1F1B (forward_backward_pipelining_with_interleaving): the
 * k-th forward of a rank runs micro-batch (k / Pv) P + k % P on its chunk (k % Pv) / P,
 * the k-th backward the same micro-batch on the mirrored chunk; warm-up
 * 2(P-s-1) + (v-1)P forwards (all of them when M == P), then one forward one backward,
 * then the remaining backwards. v = 1 is plain 1F1B. */
static void gen_interleaved(gen_t *g)
{
    int P = g->P, M = g->M, v = g->v, total = M * v, group = P * v;
    int warmup = v == 1 ? min_int(P - g->s - 1, M)
                 : M == P ? total
                          : min_int(2 * (P - g->s - 1) + (v - 1) * P, total);
#define MB_OF(k) ((k) / group * P + (k) % P)
#define CHUNK_OF(k, fwd) \
    (((fwd) ? ((k) % group) / P : v - 1 - ((k) % group) / P) * P + g->s)
    for (int k = 0; k < warmup; k++)
        push_forward(g, MB_OF(k), CHUNK_OF(k, 1));
    for (int k = 0; k < total - warmup; k++) {
        push_forward(g, MB_OF(k + warmup), CHUNK_OF(k + warmup, 1));
        push_backward(g, SCHED_BWD, MB_OF(k), CHUNK_OF(k, 0));
    }
    for (int k = total - warmup; k < total; k++)
        push_backward(g, SCHED_BWD, MB_OF(k), CHUNK_OF(k, 0));
#undef MB_OF
#undef CHUNK_OF
    push(g, SCHED_OPT_STEP, -1, -1);
}

/* ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism", 2023): 1F1B's warm-up of
 * min(P-s-1, M) forwards, then F B per micro-batch with rank s holding back up to s
 * W ops (so no rank holds more than P micro-batches, 1F1B's peak), then in the
 * cool-down each B is followed by one held-back W, and the rest of the Ws fill the end. */
static void gen_zbh1(gen_t *g)
{
    int M = g->M, s = g->s, w = min_int(g->P - s - 1, M), next_w = 0;
    for (int i = 0; i < w; i++)
        push_forward(g, i, s);
    for (int j = 0; j < M - w; j++) {
        push_forward(g, w + j, s);
        push_backward(g, SCHED_BWD_INPUT, j, s);
        if (j + 1 - next_w > s)
            push(g, SCHED_BWD_WEIGHT, next_w++, s);
    }
    for (int j = M - w; j < M; j++) {
        push_backward(g, SCHED_BWD_INPUT, j, s);
        push(g, SCHED_BWD_WEIGHT, next_w++, s);
    }
    while (next_w < M)
        push(g, SCHED_BWD_WEIGHT, next_w++, s);
    push(g, SCHED_OPT_STEP, -1, -1);
}

/* ZB-V (Qi et al., 2024, as in torch.distributed.pipelining's ScheduleZBVZeroBubble):
 * rank s holds chunk s (going down) and chunk 2P-1-s (coming back). Warm-up:
 * 2(P-s)-1 forwards of the first chunk, s pairs of forwards of both, P-s rounds of F B W
 * on the second; steady rounds of F B W on each chunk; cool-down: s pairs of Bs, P-s
 * rounds of B W on the first chunk, then the held-back Ws. Needs M >= 2P. */
static void gen_zbv(gen_t *g)
{
    int P = g->P, M = g->M, s = g->s, c0 = s, c1 = 2 * P - 1 - s;
    int f0 = 0, f1 = 0, b0 = 0, b1 = 0;
    for (int i = 0; i < 2 * (P - s) - 1; i++)
        push_forward(g, f0++, c0);
    for (int i = 0; i < s; i++) {
        push_forward(g, f1++, c1);
        push_forward(g, f0++, c0);
    }
    for (int i = 0; i < P - s; i++) {
        push_forward(g, f1++, c1);
        push_backward(g, SCHED_BWD_INPUT, b1, c1);
        push(g, SCHED_BWD_WEIGHT, b1++, c1);
    }
    while (f1 < f0 || f0 < M) {
        if (f0 < M)
            push_forward(g, f0++, c0);
        push_backward(g, SCHED_BWD_INPUT, b0, c0);
        push(g, SCHED_BWD_WEIGHT, b0++, c0);
        push_forward(g, f1++, c1);
        push_backward(g, SCHED_BWD_INPUT, b1, c1);
        push(g, SCHED_BWD_WEIGHT, b1++, c1);
    }
    int w0 = b0, w1 = b1;
    for (int i = 0; i < s; i++) {
        push_backward(g, SCHED_BWD_INPUT, b0++, c0);
        push_backward(g, SCHED_BWD_INPUT, b1++, c1);
    }
    for (int i = 0; i < P - s; i++) {
        push_backward(g, SCHED_BWD_INPUT, b0++, c0);
        push(g, SCHED_BWD_WEIGHT, w0++, c0);
    }
    while (w1 < b1)
        push(g, SCHED_BWD_WEIGHT, w1++, c1);
    while (w0 < b0)
        push(g, SCHED_BWD_WEIGHT, w0++, c0);
    push(g, SCHED_OPT_STEP, -1, -1);
}

/* One schedule. `warmup` (NULL where one count does not describe it) is what
 * sched_warmup reports; min_mb_per_rank: M must be at least this many per rank;
 * mb_multiple: M must be a multiple of the ranks. A new schedule is one new entry. */
typedef struct {
    const char *name;
    int uses_slack, uses_chunks, splits_backward;
    sched_place_t place;
    int default_chunks; /* chunks per rank */
    int min_mb_per_rank, mb_multiple;
    int (*warmup)(int P, int M, int K, int s);
    void (*gen)(gen_t *g);
} sched_def_t;

static const sched_def_t schedules[] = {
    {"gpipe", 0, 0, 0, SCHED_PLACE_PLAIN, 1, 0, 0, warmup_gpipe, gen_gpipe},
    {"1f1b", 0, 0, 0, SCHED_PLACE_PLAIN, 1, 0, 0, warmup_1f1b, gen_1f1b},
    {"1f1b-slack", 1, 0, 0, SCHED_PLACE_PLAIN, 1, 0, 0, warmup_slack, gen_slack},
    {"interleaved-1f1b", 0, 1, 0, SCHED_PLACE_INTERLEAVED, 2, 0, 1, NULL, gen_interleaved},
    {"zb-h1", 0, 0, 1, SCHED_PLACE_PLAIN, 1, 0, 0, NULL, gen_zbh1},
    {"zb-v", 0, 0, 1, SCHED_PLACE_V, 2, 2, 0, NULL, gen_zbv},
};
enum { N_SCHEDULES = sizeof schedules / sizeof *schedules, MAX_CHUNKS_PER_RANK = 64 };

static char names_buf[2][256];
static once_flag names_once = ONCE_FLAG_INIT;

static void names_fill(void)
{
    for (int which = 0; which < 2; which++) {
        size_t off = 0;
        for (int i = 0; i < N_SCHEDULES && off < sizeof names_buf[which]; i++) {
            const sched_def_t *d = &schedules[i];
            if (which && (d->place != SCHED_PLACE_PLAIN || d->splits_backward))
                continue;
            off += (size_t)snprintf(names_buf[which] + off, sizeof names_buf[which] - off, "%s%s",
                                    off ? ", " : "", d->name);
        }
    }
}

const char *sched_names(void)
{
    call_once(&names_once, names_fill);
    return names_buf[0];
}

const char *sched_default_names(void)
{
    call_once(&names_once, names_fill);
    return names_buf[1];
}

static const sched_def_t *lookup(const char *name)
{
    for (int i = 0; name && i < N_SCHEDULES; i++)
        if (!strcmp(name, schedules[i].name))
            return &schedules[i];
    return NULL;
}

int sched_uses_slack(const char *schedule)
{
    const sched_def_t *d = lookup(schedule);
    return d ? d->uses_slack : -EINVAL;
}

int sched_uses_chunks(const char *schedule)
{
    const sched_def_t *d = lookup(schedule);
    return d ? d->uses_chunks : -EINVAL;
}

int sched_splits_backward(const char *schedule)
{
    const sched_def_t *d = lookup(schedule);
    return d ? d->splits_backward : -EINVAL;
}

/* The checks every entry point shares; the message names the bad input. Sets *v. */
static const sched_def_t *check_spec(const sched_spec_t *sp, int s, int *v, char *err, size_t errlen)
{
    const sched_def_t *d = lookup(sp->schedule);
    int P = sp->ranks, M = sp->micro_batches, V = sp->chunks ? sp->chunks : d ? d->default_chunks : 1;
    if (!d)
        pn_err(err, errlen, 0, "unknown schedule '%s' (known: %s)", sp->schedule ? sp->schedule : "(null)",
               sched_names());
    else if (P < 1 || P > PN_MAX_STAGES)
        pn_err(err, errlen, 0, "stages must be >= 1 and <= %d (got %d)", PN_MAX_STAGES, P);
    else if (M < 1)
        pn_err(err, errlen, 0, "micro-batches must be >= 1 (got %d)", M);
    else if (s < 0 || s >= P)
        pn_err(err, errlen, 0, "stage %d out of range 0..%d", s, P - 1);
    else if (d->uses_slack && sp->slack < 0)
        pn_err(err, errlen, 0, "slack K of %s must be >= 0 (got %d; 'auto' is resolved by the simulator)",
               d->name, sp->slack);
    else if (V < 1 || V > MAX_CHUNKS_PER_RANK)
        pn_err(err, errlen, 0, "chunks per rank must be 1..%d (got %d)", MAX_CHUNKS_PER_RANK, V);
    else if (!d->uses_chunks && V != d->default_chunks)
        pn_err(err, errlen, 0, "%s runs %d chunk%s per rank, not %d (--chunks is for interleaved-1f1b)",
               d->name, d->default_chunks, d->default_chunks > 1 ? "s" : "", V);
    else if (d->mb_multiple && V > 1 && M % P)
        pn_err(err, errlen, 0, "%s needs micro-batches divisible by the stages, as in Megatron-LM "
               "(got %d micro-batches for %d stages)", d->name, M, P);
    else if (M < d->min_mb_per_rank * P)
        pn_err(err, errlen, 0, "%s needs at least %d micro-batches per stage (%d for %d stages; got %d)",
               d->name, d->min_mb_per_rank, d->min_mb_per_rank * P, P, M);
    else {
        *v = V;
        return d;
    }
    return NULL;
}

int sched_spec_check(const sched_spec_t *spec, int *chunks_per_rank, char *err, size_t errlen)
{
    int v = 0;
    if (!spec || !check_spec(spec, 0, &v, err, errlen))
        return -EINVAL;
    *chunks_per_rank = v;
    return 0;
}

int sched_warmup(const char *schedule, int stages, int micro_batches, int slack, int stage,
                 char *err, size_t errlen)
{
    sched_spec_t sp = {schedule, stages, micro_batches, slack, 0};
    int v;
    const sched_def_t *d = check_spec(&sp, stage, &v, err, errlen);
    if (!d)
        return -EINVAL;
    if (!d->warmup)
        return pn_err(err, errlen, -ENOTSUP, "schedule %s has no single warm-up count", d->name);
    return d->warmup(stages, micro_batches, slack, stage);
}

int sched_ops_build_spec(const sched_spec_t *spec, int rank, sched_op_t **ops, size_t *n_ops,
                         char *err, size_t errlen)
{
    int v;
    const sched_def_t *d = spec ? check_spec(spec, rank, &v, err, errlen) : NULL;
    if (!d)
        return -EINVAL;
    sched_opbuf_t b = {0};
    gen_t g = {spec->ranks, spec->micro_batches, spec->slack, v, rank, d->place, &b, 0};
    d->gen(&g);
    if (g.rc) {
        free(b.ops);
        return pn_err(err, errlen, g.rc, "out of memory building stage %d of %s", rank, d->name);
    }
    *ops = b.ops;
    *n_ops = b.n;
    return 0;
}

int sched_ops_build(const char *schedule, int stages, int micro_batches, int slack,
                    int stage, sched_op_t **ops, size_t *n_ops, char *err, size_t errlen)
{
    sched_spec_t sp = {schedule, stages, micro_batches, slack, 0};
    return sched_ops_build_spec(&sp, stage, ops, n_ops, err, errlen);
}

/* ---- plans ---- */

int sched_plan_alloc(int stages, int micro_batches, sched_plan_t *out)
{
    if (stages < 1 || micro_batches < 1)
        return -EINVAL;
    sched_plan_t p = {stages, micro_batches, calloc((size_t)stages, sizeof *p.ops),
                      calloc((size_t)stages, sizeof *p.n_ops), stages, SCHED_PLACE_PLAIN};
    if (!p.ops || !p.n_ops) {
        sched_plan_destroy(&p);
        return -ENOMEM;
    }
    *out = p;
    return 0;
}

void sched_plan_destroy(sched_plan_t *plan)
{
    if (!plan)
        return;
    for (int s = 0; plan->ops && s < plan->stages; s++)
        free(plan->ops[s]);
    free(plan->ops);
    free(plan->n_ops);
    memset(plan, 0, sizeof *plan);
}

int sched_plan_build_spec(const sched_spec_t *spec, sched_plan_t *out, char *err, size_t errlen)
{
    int v;
    const sched_def_t *d = spec ? check_spec(spec, 0, &v, err, errlen) : NULL;
    if (!d)
        return -EINVAL;
    sched_plan_t p;
    int rc = sched_plan_alloc(spec->ranks, spec->micro_batches, &p);
    if (rc)
        return pn_err(err, errlen, rc, "out of memory for %d stages", spec->ranks);
    p.chunks = spec->ranks * v;
    p.place = d->place;
    for (int s = 0; s < spec->ranks; s++)
        if ((rc = sched_ops_build_spec(spec, s, &p.ops[s], &p.n_ops[s], err, errlen))) {
            sched_plan_destroy(&p);
            return rc;
        }
    *out = p;
    return 0;
}

int sched_plan_build(const char *schedule, int stages, int micro_batches, int slack,
                     sched_plan_t *out, char *err, size_t errlen)
{
    sched_spec_t sp = {schedule, stages, micro_batches, slack, 0};
    return sched_plan_build_spec(&sp, out, err, errlen);
}
