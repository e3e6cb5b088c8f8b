/* Schedules as a const table (one entry per schedule), the op-list builders, and the
 * validator: per-stage rules, FIFO order across each link, and a buffered dry run that
 * finds wait cycles. */
#include "schedules/sched.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <threads.h>

/* ---- op kinds and tokens ---- */

static const char *const kind_names[SCHED_OP_KINDS] = {
    "RECV_ACT", "FWD", "SEND_ACT", "RECV_GRAD", "BWD", "SEND_GRAD", "OPT_STEP",
};
/* Compact prefixes, in kind order; OPT_STEP carries no micro-batch. */
static const char *const kind_tokens[SCHED_OP_KINDS] = {"Ra", "F", "Sa", "Rg", "B", "Sg", "OPT"};

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

int sched_op_format(const sched_op_t *op, char *buf, size_t len)
{
    if ((unsigned)op->kind >= SCHED_OP_KINDS)
        return snprintf(buf, len, "?");
    if (op->kind == SCHED_OPT_STEP)
        return snprintf(buf, len, "%s", kind_tokens[op->kind]);
    return snprintf(buf, len, "%s%d", kind_tokens[op->kind], op->mb);
}

/* A non-negative decimal that is the whole of [s, end); -1 otherwise. */
static int parse_mb(const char *s, const char *end)
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

int sched_op_parse(const char *token, sched_op_t *out)
{
    if (!token || !*token)
        return -EINVAL;
    size_t n = strlen(token);
    if (!strcasecmp(token, "OPT") || !strcasecmp(token, "OPT_STEP")) {
        *out = (sched_op_t){SCHED_OPT_STEP, -1};
        return 0;
    }
    const char *lp = strchr(token, '(');
    if (lp) { /* KIND(mb) */
        char name[16];
        size_t nl = (size_t)(lp - token);
        if (nl == 0 || nl >= sizeof name || token[n - 1] != ')')
            return -EINVAL;
        memcpy(name, token, nl);
        name[nl] = '\0';
        sched_op_kind_t k;
        if (sched_op_kind_parse(name, &k) || k == SCHED_OPT_STEP)
            return -EINVAL;
        int mb = parse_mb(lp + 1, token + n - 1);
        if (mb < 0)
            return -EINVAL;
        *out = (sched_op_t){k, mb};
        return 0;
    }
    /* Longest prefix first: "Sa" before "S" would matter if both existed. */
    for (int k = 0; k < SCHED_OPT_STEP; k++) {
        size_t pl = strlen(kind_tokens[k]);
        if (n > pl && !strncmp(token, kind_tokens[k], pl)) {
            int mb = parse_mb(token + pl, token + n);
            if (mb < 0)
                return -EINVAL;
            *out = (sched_op_t){(sched_op_kind_t)k, mb};
            return 0;
        }
    }
    return -EINVAL;
}

/* ---- building op lists ---- */

typedef struct {
    sched_op_t *ops;
    size_t n, cap;
} opbuf_t;

static int opbuf_push(opbuf_t *b, sched_op_kind_t kind, int mb)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        sched_op_t *p = realloc(b->ops, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        b->ops = p;
        b->cap = cap;
    }
    b->ops[b->n++] = (sched_op_t){kind, mb};
    return 0;
}

static int push_forward(opbuf_t *b, int P, int s, int mb)
{
    int rc = 0;
    if (s > 0)
        rc = opbuf_push(b, SCHED_RECV_ACT, mb);
    if (!rc)
        rc = opbuf_push(b, SCHED_FWD, mb);
    if (!rc && s < P - 1)
        rc = opbuf_push(b, SCHED_SEND_ACT, mb);
    return rc;
}

static int push_backward(opbuf_t *b, int P, int s, int mb)
{
    int rc = 0;
    if (s < P - 1)
        rc = opbuf_push(b, SCHED_RECV_GRAD, mb);
    if (!rc)
        rc = opbuf_push(b, SCHED_BWD, mb);
    if (!rc && s > 0)
        rc = opbuf_push(b, SCHED_SEND_GRAD, mb);
    return rc;
}

/* `warmup` forwards, then one-forward-one-backward, then the remaining backwards
 * (Megatron-LM's order). GPipe is the case warmup = M. */
static int emit_warmup_1f1b(opbuf_t *b, int P, int M, int s, int warmup)
{
    int rc = 0;
    for (int i = 0; !rc && i < warmup; i++)
        rc = push_forward(b, P, s, i);
    for (int j = 0; !rc && j < M - warmup; j++) {
        rc = push_forward(b, P, s, warmup + j);
        if (!rc)
            rc = push_backward(b, P, s, j);
    }
    for (int j = M - warmup; !rc && j < M; j++)
        rc = push_backward(b, P, s, j);
    if (!rc)
        rc = opbuf_push(b, SCHED_OPT_STEP, -1);
    return rc;
}

static int min_int(int a, int b) { return a < b ? a : b; }

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

/* One schedule. `build` appends stage s's whole list; `warmup` (NULL where the notion
 * does not apply) is what sched_warmup reports. A new schedule is one new entry. */
typedef struct {
    const char *name;
    int uses_slack;
    int (*warmup)(int P, int M, int K, int s);
    int (*build)(opbuf_t *b, int P, int M, int K, int s);
} sched_def_t;

static int build_gpipe(opbuf_t *b, int P, int M, int K, int s)
{
    return emit_warmup_1f1b(b, P, M, s, warmup_gpipe(P, M, K, s));
}

static int build_1f1b(opbuf_t *b, int P, int M, int K, int s)
{
    return emit_warmup_1f1b(b, P, M, s, warmup_1f1b(P, M, K, s));
}

static int build_slack(opbuf_t *b, int P, int M, int K, int s)
{
    return emit_warmup_1f1b(b, P, M, s, warmup_slack(P, M, K, s));
}

static const sched_def_t schedules[] = {
    {"gpipe", 0, warmup_gpipe, build_gpipe},
    {"1f1b", 0, warmup_1f1b, build_1f1b},
    {"1f1b-slack", 1, warmup_slack, build_slack},
};
enum { N_SCHEDULES = sizeof schedules / sizeof *schedules };

static char names_buf[256];
static once_flag names_once = ONCE_FLAG_INIT;

static void names_fill(void)
{
    size_t off = 0;
    for (int i = 0; i < N_SCHEDULES && off < sizeof names_buf; i++)
        off += (size_t)snprintf(names_buf + off, sizeof names_buf - off, "%s%s",
                                i ? ", " : "", schedules[i].name);
}

const char *sched_names(void)
{
    call_once(&names_once, names_fill);
    return names_buf;
}

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
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

/* The checks every entry point shares; the message names the bad input. */
static const sched_def_t *check_shape(const char *schedule, int P, int M, int K, int s,
                                      char *err, size_t errlen)
{
    const sched_def_t *d = lookup(schedule);
    if (!d)
        seterr(err, errlen, "unknown schedule '%s' (known: %s)", schedule ? schedule : "(null)",
               sched_names());
    else if (P < 1)
        seterr(err, errlen, "stages must be >= 1 (got %d)", P);
    else if (M < 1)
        seterr(err, errlen, "micro-batches must be >= 1 (got %d)", M);
    else if (s < 0 || s >= P)
        seterr(err, errlen, "stage %d out of range 0..%d", s, P - 1);
    else if (d->uses_slack && K < 0)
        seterr(err, errlen, "slack K of %s must be >= 0 (got %d; 'auto' is resolved by the simulator)",
               d->name, K);
    else
        return d;
    return NULL;
}

int sched_warmup(const char *schedule, int stages, int micro_batches, int slack, int stage,
                 char *err, size_t errlen)
{
    const sched_def_t *d = check_shape(schedule, stages, micro_batches, slack, stage, err, errlen);
    if (!d)
        return -EINVAL;
    if (!d->warmup) {
        seterr(err, errlen, "schedule %s has no single warm-up count", d->name);
        return -ENOTSUP;
    }
    return d->warmup(stages, micro_batches, slack, stage);
}

int sched_ops_build(const char *schedule, int stages, int micro_batches, int slack,
                    int stage, sched_op_t **ops, size_t *n_ops, char *err, size_t errlen)
{
    const sched_def_t *d = check_shape(schedule, stages, micro_batches, slack, stage, err, errlen);
    if (!d)
        return -EINVAL;
    opbuf_t b = {0};
    int rc = d->build(&b, stages, micro_batches, slack, stage);
    if (rc) {
        free(b.ops);
        seterr(err, errlen, "out of memory building stage %d of %s", stage, d->name);
        return rc;
    }
    *ops = b.ops;
    *n_ops = b.n;
    return 0;
}

/* ---- plans ---- */

int sched_plan_alloc(int stages, int micro_batches, sched_plan_t *out)
{
    if (stages < 1 || micro_batches < 1)
        return -EINVAL;
    sched_plan_t p = {stages, micro_batches, calloc((size_t)stages, sizeof *p.ops),
                      calloc((size_t)stages, sizeof *p.n_ops)};
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

int sched_plan_build(const char *schedule, int stages, int micro_batches, int slack,
                     sched_plan_t *out, char *err, size_t errlen)
{
    if (!check_shape(schedule, stages, micro_batches, slack, 0, err, errlen))
        return -EINVAL;
    sched_plan_t p;
    int rc = sched_plan_alloc(stages, micro_batches, &p);
    if (rc) {
        seterr(err, errlen, "out of memory for %d stages", stages);
        return rc;
    }
    for (int s = 0; s < stages; s++) {
        rc = sched_ops_build(schedule, stages, micro_batches, slack, s, &p.ops[s], &p.n_ops[s],
                             err, errlen);
        if (rc)
            goto fail;
    }
    *out = p;
    return 0;
fail:
    sched_plan_destroy(&p);
    return rc;
}

/* The op tokens of one line after an optional "stage N:" / "N:" prefix; appends to
 * b and raises *max_mb. */
enum { PLAN_MB_MAX = 1 << 20 }; /* micro-batch numbers an op-list file may name */

static int parse_line(char *line, int lineno, int stage, opbuf_t *b, int *max_mb, char *err,
                      size_t errlen)
{
    char *colon = strchr(line, ':');
    if (colon) {
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!strncasecmp(p, "stage", 5))
            p += 5;
        char *end;
        long n = strtol(p, &end, 10);
        while (*end == ' ' || *end == '\t')
            end++;
        if (end == p || end != colon || n != stage) {
            seterr(err, errlen, "line %d: prefix '%.*s' is not 'stage %d:'", lineno,
                   (int)(colon - line), line, stage);
            return -EINVAL;
        }
        line = colon + 1;
    }
    char *save = NULL;
    for (char *t = strtok_r(line, " \t,\r", &save); t; t = strtok_r(NULL, " \t,\r", &save)) {
        sched_op_t op;
        if (sched_op_parse(t, &op)) {
            seterr(err, errlen, "line %d (stage %d): bad op '%s' (want e.g. F3 B3 Ra3 Sa3 Rg3 Sg3 OPT)",
                   lineno, stage, t);
            return -EINVAL;
        }
        /* The plan's size (and the validator's tables) follow the largest micro-batch
         * named: one token like B129999986 must not ask for gigabytes. */
        if (op.mb >= PLAN_MB_MAX) {
            seterr(err, errlen, "line %d (stage %d): micro-batch %d in '%s' exceeds %d", lineno, stage, op.mb, t,
                   PLAN_MB_MAX - 1);
            return -EINVAL;
        }
        if (opbuf_push(b, op.kind, op.mb)) {
            seterr(err, errlen, "out of memory");
            return -ENOMEM;
        }
        if (op.mb > *max_mb)
            *max_mb = op.mb;
    }
    return 0;
}

int sched_plan_parse(const char *text, int micro_batches, sched_plan_t *out, char *err,
                     size_t errlen)
{
    if (!text) {
        seterr(err, errlen, "no op lists");
        return -EINVAL;
    }
    int rc = 0, stages = 0, max_mb = -1, lineno = 0;
    opbuf_t *bufs = NULL;
    char *copy = strdup(text);
    if (!copy) {
        seterr(err, errlen, "out of memory");
        return -ENOMEM;
    }
    /* strtok_r would merge empty lines and so miscount them; split by hand. */
    for (char *line = copy, *next; line; line = next) {
        lineno++;
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        if (strspn(line, " \t\r,") == strlen(line))
            continue;
        opbuf_t *nb = realloc(bufs, (size_t)(stages + 1) * sizeof *nb);
        if (!nb) {
            seterr(err, errlen, "out of memory");
            rc = -ENOMEM;
            goto out;
        }
        bufs = nb;
        bufs[stages] = (opbuf_t){0};
        if ((rc = parse_line(line, lineno, stages, &bufs[stages], &max_mb, err, errlen))) {
            stages++;
            goto out;
        }
        stages++;
    }
    if (!stages) {
        seterr(err, errlen, "no op lists (one line per stage)");
        rc = -EINVAL;
        goto out;
    }
    int M = micro_batches > 0 ? micro_batches : max_mb + 1;
    if (M < 1) {
        seterr(err, errlen, "no micro-batch named in the op lists");
        rc = -EINVAL;
        goto out;
    }
    sched_plan_t p;
    if ((rc = sched_plan_alloc(stages, M, &p))) {
        seterr(err, errlen, "out of memory");
        goto out;
    }
    for (int s = 0; s < stages; s++) {
        p.ops[s] = bufs[s].ops;
        p.n_ops[s] = bufs[s].n;
        bufs[s].ops = NULL;
    }
    *out = p;
out:
    for (int s = 0; s < stages; s++)
        free(bufs[s].ops);
    free(bufs);
    free(copy);
    return rc;
}

/* ---- validation ---- */

int sched_ops_peak_inflight(const sched_op_t *ops, size_t n_ops)
{
    int held = 0, peak = 0;
    for (size_t i = 0; i < n_ops; i++) {
        if (ops[i].kind == SCHED_FWD && ++held > peak)
            peak = held;
        else if (ops[i].kind == SCHED_BWD && held > 0)
            held--;
    }
    return peak;
}

/* "stage 1 op 5 FWD(2)" for error messages. */
static void op_where(char *buf, size_t len, int s, size_t i, const sched_op_t *op)
{
    if (op->kind == SCHED_OPT_STEP)
        snprintf(buf, len, "stage %d op %zu OPT_STEP", s, i);
    else
        snprintf(buf, len, "stage %d op %zu %s(%d)", s, i, sched_op_kind_name(op->kind), op->mb);
}

/* Which op of a micro-batch must precede kind k on the same stage (-1: none). */
static int local_prereq(sched_op_kind_t k)
{
    switch (k) {
    case SCHED_FWD: return SCHED_RECV_ACT;
    case SCHED_SEND_ACT: return SCHED_FWD;
    case SCHED_BWD: return SCHED_RECV_GRAD;
    case SCHED_SEND_GRAD: return SCHED_BWD;
    default: return -1;
    }
}

/* Whether stage s of P has ops of kind k at all. */
static int kind_on_stage(sched_op_kind_t k, int P, int s)
{
    switch (k) {
    case SCHED_RECV_ACT:
    case SCHED_SEND_GRAD: return s > 0;
    case SCHED_SEND_ACT:
    case SCHED_RECV_GRAD: return s < P - 1;
    default: return 1;
    }
}

/* err = "stage S op I KIND(mb): " + the formatted reason; formatting only happens on
 * failure, as validation runs over every op of every stage. */
static void op_fail(char *err, size_t errlen, int s, size_t i, const sched_op_t *op,
                    const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void op_fail(char *err, size_t errlen, int s, size_t i, const sched_op_t *op,
                    const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    char where[96];
    op_where(where, sizeof where, s, i, op);
    int n = snprintf(err, errlen, "%s: ", where);
    if (n < 0 || (size_t)n >= errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

int sched_ops_validate(int stages, int micro_batches, int stage, const sched_op_t *ops,
                       size_t n_ops, char *err, size_t errlen)
{
    int P = stages, M = micro_batches, s = stage;
    if (P < 1 || M < 1 || s < 0 || s >= P) {
        seterr(err, errlen, "bad shape: stages %d, micro-batches %d, stage %d", P, M, s);
        return -EINVAL;
    }
    if (n_ops && !ops) {
        seterr(err, errlen, "stage %d: NULL op list", s);
        return -EINVAL;
    }
    /* seen[mb * KINDS + kind]: op index + 1 where it appeared. */
    size_t *seen = calloc((size_t)M * SCHED_OP_KINDS, sizeof *seen);
    if (!seen) {
        seterr(err, errlen, "stage %d: out of memory", s);
        return -ENOMEM;
    }
    int rc = -EINVAL;
    size_t opt_at = 0, bwd_done = 0;
    for (size_t i = 0; i < n_ops; i++) {
        const sched_op_t *op = &ops[i];
        if ((unsigned)op->kind >= SCHED_OP_KINDS) {
            seterr(err, errlen, "stage %d op %zu: unknown op kind %d", s, i, (int)op->kind);
            goto out;
        }
        if (op->kind == SCHED_OPT_STEP) {
            if (op->mb != -1) {
                op_fail(err, errlen, s, i, op, "OPT_STEP takes micro-batch -1, not %d", op->mb);
                goto out;
            }
            if (opt_at) {
                op_fail(err, errlen, s, i, op, "second OPT_STEP (first is op %zu)", opt_at - 1);
                goto out;
            }
            if (bwd_done < (size_t)M) {
                int missing = 0;
                while (missing < M && seen[(size_t)missing * SCHED_OP_KINDS + SCHED_BWD])
                    missing++;
                op_fail(err, errlen, s, i, op, "comes before BWD(%d); the step needs every gradient",
                        missing);
                goto out;
            }
            opt_at = i + 1;
            continue;
        }
        if (op->mb < 0 || op->mb >= M) {
            op_fail(err, errlen, s, i, op, "micro-batch %d out of range 0..%d", op->mb, M - 1);
            goto out;
        }
        if (!kind_on_stage(op->kind, P, s)) {
            static const char *const why[SCHED_OP_KINDS] = {
                [SCHED_RECV_ACT] = "the first stage receives no activations",
                [SCHED_SEND_GRAD] = "the first stage sends no gradients",
                [SCHED_SEND_ACT] = "the last stage sends no activations",
                [SCHED_RECV_GRAD] = "the last stage receives no gradients",
            };
            op_fail(err, errlen, s, i, op, "%s", why[op->kind]);
            goto out;
        }
        size_t *slot = &seen[(size_t)op->mb * SCHED_OP_KINDS + op->kind];
        if (*slot) {
            op_fail(err, errlen, s, i, op, "duplicate (first at op %zu)", *slot - 1);
            goto out;
        }
        int pre = local_prereq(op->kind);
        if (pre >= 0 && kind_on_stage((sched_op_kind_t)pre, P, s) &&
            !seen[(size_t)op->mb * SCHED_OP_KINDS + pre]) {
            op_fail(err, errlen, s, i, op, "no %s(%d) before it%s",
                   sched_op_kind_name((sched_op_kind_t)pre), op->mb,
                   pre == SCHED_RECV_ACT || pre == SCHED_RECV_GRAD ? " (missing receive)" : "");
            goto out;
        }
        if (op->kind == SCHED_BWD && !seen[(size_t)op->mb * SCHED_OP_KINDS + SCHED_FWD]) {
            op_fail(err, errlen, s, i, op, "backward before FWD(%d)", op->mb);
            goto out;
        }
        if (op->kind == SCHED_BWD)
            bwd_done++;
        *slot = i + 1;
    }
    /* Everything a micro-batch needs on this stage must be there. */
    for (int mb = 0; mb < M; mb++)
        for (int k = 0; k < SCHED_OPT_STEP; k++)
            if (kind_on_stage((sched_op_kind_t)k, P, s) && !seen[(size_t)mb * SCHED_OP_KINDS + k]) {
                seterr(err, errlen, "stage %d: %s(%d) missing%s", s,
                       sched_op_kind_name((sched_op_kind_t)k), mb,
                       k == SCHED_RECV_ACT || k == SCHED_RECV_GRAD ? " (missing receive)" : "");
                goto out;
            }
    if (!opt_at) {
        seterr(err, errlen, "stage %d: OPT_STEP missing", s);
        goto out;
    }
    rc = 0;
out:
    free(seen);
    return rc;
}

/* The indices of one stage's ops of one kind, in list order. */
static size_t *ops_of_kind(const sched_op_t *ops, size_t n, sched_op_kind_t k, size_t *count)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ops[i].kind == k;
    size_t *idx = malloc((c ? c : 1) * sizeof *idx);
    if (!idx)
        return NULL;
    c = 0;
    for (size_t i = 0; i < n; i++)
        if (ops[i].kind == k)
            idx[c++] = i;
    *count = c;
    return idx;
}

/* The k-th send of `from` (kind sk) must be the k-th receive of `to` (kind rk). */
static int check_link(const sched_plan_t *p, int from, sched_op_kind_t sk, int to,
                      sched_op_kind_t rk, char *err, size_t errlen)
{
    size_t ns = 0, nr = 0;
    int rc = -ENOMEM;
    size_t *si = ops_of_kind(p->ops[from], p->n_ops[from], sk, &ns);
    size_t *ri = ops_of_kind(p->ops[to], p->n_ops[to], rk, &nr);
    if (!si || !ri) {
        seterr(err, errlen, "out of memory checking stages %d -> %d", from, to);
        goto out;
    }
    rc = -EINVAL;
    char where[96];
    for (size_t k = 0; k < ns && k < nr; k++) {
        const sched_op_t *so = &p->ops[from][si[k]], *ro = &p->ops[to][ri[k]];
        if (so->mb != ro->mb) {
            op_where(where, sizeof where, from, si[k], so);
            seterr(err, errlen,
                   "%s: send #%zu to stage %d, but stage %d op %zu receives %s(%d) as #%zu "
                   "(send order differs from receive order)",
                   where, k + 1, to, to, ri[k], sched_op_kind_name(rk), ro->mb, k + 1);
            goto out;
        }
    }
    if (ns != nr) {
        seterr(err, errlen, "stage %d sends %zu %s to stage %d, which receives %zu", from, ns,
               sched_op_kind_name(sk), to, nr);
        goto out;
    }
    rc = 0;
out:
    free(si);
    free(ri);
    return rc;
}

/* Runs every stage with buffered FIFO sends: a receive proceeds once its matching send
 * (by position on the link) has run. If some stage never finishes, reports the waits. */
static int check_progress(const sched_plan_t *p, char *err, size_t errlen)
{
    int P = p->stages;
    /* Per stage: next op, sends made so far per direction, receives done per direction. */
    size_t *pc = calloc((size_t)P, sizeof *pc);
    size_t *sent_act = calloc((size_t)P, sizeof *sent_act);
    size_t *sent_grad = calloc((size_t)P, sizeof *sent_grad);
    size_t *recv_act = calloc((size_t)P, sizeof *recv_act);
    size_t *recv_grad = calloc((size_t)P, sizeof *recv_grad);
    int rc = -ENOMEM;
    if (!pc || !sent_act || !sent_grad || !recv_act || !recv_grad) {
        seterr(err, errlen, "out of memory checking progress");
        goto out;
    }
    for (int moved = 1; moved;) {
        moved = 0;
        for (int s = 0; s < P; s++) {
            while (pc[s] < p->n_ops[s]) {
                const sched_op_t *op = &p->ops[s][pc[s]];
                if (op->kind == SCHED_RECV_ACT) {
                    if (recv_act[s] >= sent_act[s - 1])
                        break;
                    recv_act[s]++;
                } else if (op->kind == SCHED_RECV_GRAD) {
                    if (recv_grad[s] >= sent_grad[s + 1])
                        break;
                    recv_grad[s]++;
                } else if (op->kind == SCHED_SEND_ACT) {
                    sent_act[s]++;
                } else if (op->kind == SCHED_SEND_GRAD) {
                    sent_grad[s]++;
                }
                pc[s]++;
                moved = 1;
            }
        }
    }
    rc = 0;
    for (int s = 0; s < P; s++) {
        if (pc[s] == p->n_ops[s])
            continue;
        char where[96];
        const sched_op_t *op = &p->ops[s][pc[s]];
        op_where(where, sizeof where, s, pc[s], op);
        int peer = op->kind == SCHED_RECV_ACT ? s - 1 : s + 1;
        size_t pp = pc[peer];
        char pwhere[96] = "its end";
        if (pp < p->n_ops[peer])
            op_where(pwhere, sizeof pwhere, peer, pp, &p->ops[peer][pp]);
        seterr(err, errlen, "deadlock: %s waits for stage %d, which is stuck at %s", where, peer,
               pwhere);
        rc = -EINVAL;
        break;
    }
out:
    free(pc);
    free(sent_act);
    free(sent_grad);
    free(recv_act);
    free(recv_grad);
    return rc;
}

int sched_plan_validate(const sched_plan_t *plan, int *peak, char *err, size_t errlen)
{
    if (!plan || plan->stages < 1 || plan->micro_batches < 1 || !plan->ops || !plan->n_ops) {
        seterr(err, errlen, "empty plan");
        return -EINVAL;
    }
    int P = plan->stages, rc;
    for (int s = 0; s < P; s++)
        if ((rc = sched_ops_validate(P, plan->micro_batches, s, plan->ops[s], plan->n_ops[s], err,
                                     errlen)))
            return rc;
    for (int s = 0; s + 1 < P; s++) {
        if ((rc = check_link(plan, s, SCHED_SEND_ACT, s + 1, SCHED_RECV_ACT, err, errlen)))
            return rc;
        if ((rc = check_link(plan, s + 1, SCHED_SEND_GRAD, s, SCHED_RECV_GRAD, err, errlen)))
            return rc;
    }
    if ((rc = check_progress(plan, err, errlen)))
        return rc;
    for (int s = 0; peak && s < P; s++)
        peak[s] = sched_ops_peak_inflight(plan->ops[s], plan->n_ops[s]);
    return 0;
}
