/* The validator: per-rank rules (placement, order within a rank, local hand-offs), FIFO
 * order on each channel between two ranks, and a buffered dry run that finds wait
 * cycles. Messages name the stage (rank), the op, its micro-batch and, where a rank holds
 * several chunks, the chunk. */
#include "schedules/sched_priv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The geometry a list is checked against. */
typedef struct {
    int P, M, C, v;
    sched_place_t pl;
} shape_t;

static shape_t plan_shape(const sched_plan_t *p)
{
    int C = sched_plan_chunks(p);
    return (shape_t){p->stages, p->micro_batches, C, C / p->stages, p->place};
}

static int rank_of(const shape_t *sh, int c) { return sched_chunk_rank(sh->pl, sh->P, c); }

/* The index among the rank's own chunks (0..v-1). */
static int local_of(const shape_t *sh, int c)
{
    switch (sh->pl) {
    case SCHED_PLACE_INTERLEAVED: return c / sh->P;
    case SCHED_PLACE_V: return c >= sh->P;
    default: return 0;
    }
}

int sched_ops_peak_inflight(const sched_op_t *ops, size_t n_ops)
{
    int held = 0, peak = 0;
    for (size_t i = 0; i < n_ops; i++) {
        if (ops[i].kind == SCHED_FWD && ++held > peak)
            peak = held;
        else if ((ops[i].kind == SCHED_BWD || ops[i].kind == SCHED_BWD_WEIGHT) && held > 0)
            held--;
    }
    return peak;
}

/* "stage 1 op 5 FWD(2)", with " chunk 4" where ranks hold several chunks. */
static void op_where(char *buf, size_t len, const shape_t *sh, int s, size_t i, const sched_op_t *op)
{
    if (op->kind == SCHED_OPT_STEP)
        snprintf(buf, len, "stage %d op %zu OPT_STEP", s, i);
    else if (sh->C == sh->P)
        snprintf(buf, len, "stage %d op %zu %s(%d)", s, i, sched_op_kind_name(op->kind), op->mb);
    else
        snprintf(buf, len, "stage %d op %zu %s(%d) chunk %d", s, i, sched_op_kind_name(op->kind), op->mb,
                 op->chunk);
}

/* err = "stage S op I KIND(mb): " + the formatted reason; formatting only happens on
 * failure, as validation runs over every op of every stage. Returns -EINVAL. */
static int op_fail(char *err, size_t errlen, const shape_t *sh, int s, size_t i, const sched_op_t *op,
                   const char *fmt, ...) PN_PRINTF(7, 8);
static int op_fail(char *err, size_t errlen, const shape_t *sh, int s, size_t i, const sched_op_t *op,
                   const char *fmt, ...)
{
    if (!err || !errlen)
        return -EINVAL;
    char where[128];
    op_where(where, sizeof where, sh, s, i, op);
    int n = snprintf(err, errlen, "%s: ", where);
    if (n < 0 || (size_t)n >= errlen)
        return -EINVAL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* " chunk C" where ranks hold several chunks, "" otherwise (for messages). */
static const char *chunk_note(const shape_t *sh, int c, char *buf, size_t len)
{
    if (sh->C == sh->P)
        return "";
    snprintf(buf, len, " chunk %d", c);
    return buf;
}

/* Why a send or receive of kind k on chunk c must not exist on rank s, or NULL if it
 * may: at the ends of the model, or where the neighbouring chunk is on the same rank. */
static const char *comm_forbidden(const shape_t *sh, sched_op_kind_t k, int c, int s)
{
    int prev = k == SCHED_RECV_ACT || k == SCHED_SEND_GRAD;
    if (k != SCHED_RECV_ACT && k != SCHED_SEND_GRAD && k != SCHED_SEND_ACT && k != SCHED_RECV_GRAD)
        return NULL;
    int nb = prev ? c - 1 : c + 1;
    if (nb < 0 || nb >= sh->C) {
        static const char *const end[SCHED_OP_KINDS] = {
            [SCHED_RECV_ACT] = "the first stage receives no activations",
            [SCHED_SEND_GRAD] = "the first stage sends no gradients",
            [SCHED_SEND_ACT] = "the last stage sends no activations",
            [SCHED_RECV_GRAD] = "the last stage receives no gradients",
        };
        static const char *const end_chunk[SCHED_OP_KINDS] = {
            [SCHED_RECV_ACT] = "the first chunk receives no activations",
            [SCHED_SEND_GRAD] = "the first chunk sends no gradients",
            [SCHED_SEND_ACT] = "the last chunk sends no activations",
            [SCHED_RECV_GRAD] = "the last chunk receives no gradients",
        };
        return sh->C == sh->P ? end[k] : end_chunk[k];
    }
    if (rank_of(sh, nb) == s)
        return "the neighbouring chunk is on this stage: a local hand-off, not a message";
    return NULL;
}

/* Per-rank state: seen[(mb * v + local chunk) * KINDS + kind] = op index + 1. */
typedef struct {
    const shape_t *sh;
    int s;
    size_t *seen;
    size_t done, opt_at;
} rank_chk_t;

static size_t *seen_at(rank_chk_t *r, int mb, int c, int k)
{
    return &r->seen[((size_t)mb * r->sh->v + local_of(r->sh, c)) * SCHED_OP_KINDS + k];
}

static int need(rank_chk_t *r, int mb, int c, int k) { return *seen_at(r, mb, c, k) != 0; }

/* The op's prerequisites on this rank; 0 or -EINVAL with the message. */
static int check_prereq(rank_chk_t *r, size_t i, const sched_op_t *op, char *err, size_t errlen)
{
    const shape_t *sh = r->sh;
    int s = r->s, mb = op->mb, c = op->chunk;
    char cn[32];
    switch (op->kind) {
    case SCHED_FWD:
        if (c > 0 && rank_of(sh, c - 1) != s && !need(r, mb, c, SCHED_RECV_ACT))
            return op_fail(err, errlen, sh, s, i, op, "no RECV_ACT(%d) before it (missing receive)", mb);
        if (c > 0 && rank_of(sh, c - 1) == s && !need(r, mb, c - 1, SCHED_FWD))
            return op_fail(err, errlen, sh, s, i, op, "no FWD(%d)%s before it (local hand-off)", mb,
                           chunk_note(sh, c - 1, cn, sizeof cn));
        return 0;
    case SCHED_SEND_ACT:
        return need(r, mb, c, SCHED_FWD) ? 0 : op_fail(err, errlen, sh, s, i, op, "no FWD(%d) before it", mb);
    case SCHED_BWD:
    case SCHED_BWD_INPUT: {
        int last = c == sh->C - 1, remote = !last && rank_of(sh, c + 1) != s;
        if (remote && !need(r, mb, c, SCHED_RECV_GRAD))
            return op_fail(err, errlen, sh, s, i, op, "no RECV_GRAD(%d) before it (missing receive)", mb);
        if (!need(r, mb, c, SCHED_FWD))
            return op_fail(err, errlen, sh, s, i, op, "backward before FWD(%d)", mb);
        if (!last && !remote && !need(r, mb, c + 1, SCHED_BWD) && !need(r, mb, c + 1, SCHED_BWD_INPUT))
            return op_fail(err, errlen, sh, s, i, op, "no backward of (%d)%s before it (local hand-off)", mb,
                           chunk_note(sh, c + 1, cn, sizeof cn));
        int other = op->kind == SCHED_BWD ? SCHED_BWD_INPUT : SCHED_BWD;
        if (need(r, mb, c, other))
            return op_fail(err, errlen, sh, s, i, op, "second backward (%s at op %zu)",
                           sched_op_kind_name((sched_op_kind_t)other), *seen_at(r, mb, c, other) - 1);
        return 0;
    }
    case SCHED_SEND_GRAD:
        return need(r, mb, c, SCHED_BWD) || need(r, mb, c, SCHED_BWD_INPUT)
                   ? 0 : op_fail(err, errlen, sh, s, i, op, "no BWD(%d) before it", mb);
    case SCHED_BWD_WEIGHT:
        return need(r, mb, c, SCHED_BWD_INPUT)
                   ? 0 : op_fail(err, errlen, sh, s, i, op, "W before its B: no BWD_INPUT(%d) before it", mb);
    default:
        return 0;
    }
}

/* The first (mb, chunk) of this rank whose backward is not complete, as "BWD(mb)". */
static void first_incomplete(rank_chk_t *r, char *buf, size_t len)
{
    char cn[32];
    for (int mb = 0; mb < r->sh->M; mb++)
        for (int j = 0; j < r->sh->v; j++) {
            int c = sched_rank_chunk(r->sh->pl, r->sh->P, r->sh->C, r->s, j);
            if (!need(r, mb, c, SCHED_BWD) && !need(r, mb, c, SCHED_BWD_WEIGHT)) {
                snprintf(buf, len, "%s(%d)%s", need(r, mb, c, SCHED_BWD_INPUT) ? "BWD_WEIGHT" : "BWD", mb,
                         chunk_note(r->sh, c, cn, sizeof cn));
                return;
            }
        }
    snprintf(buf, len, "?");
}

static int check_op(rank_chk_t *r, size_t i, const sched_op_t *op, char *err, size_t errlen)
{
    const shape_t *sh = r->sh;
    int s = r->s;
    if ((unsigned)op->kind >= SCHED_OP_KINDS)
        return pn_err(err, errlen, -EINVAL, "stage %d op %zu: unknown op kind %d", s, i, (int)op->kind);
    if (op->kind == SCHED_OPT_STEP) {
        char what[64];
        if (op->mb != -1)
            return op_fail(err, errlen, sh, s, i, op, "OPT_STEP takes micro-batch -1, not %d", op->mb);
        if (r->opt_at)
            return op_fail(err, errlen, sh, s, i, op, "second OPT_STEP (first is op %zu)", r->opt_at - 1);
        if (r->done < (size_t)sh->M * sh->v) {
            first_incomplete(r, what, sizeof what);
            return op_fail(err, errlen, sh, s, i, op, "comes before %s; the step needs every gradient", what);
        }
        r->opt_at = i + 1;
        return 0;
    }
    if (op->mb < 0 || op->mb >= sh->M)
        return op_fail(err, errlen, sh, s, i, op, "micro-batch %d out of range 0..%d", op->mb, sh->M - 1);
    if (op->chunk < 0 || op->chunk >= sh->C)
        return op_fail(err, errlen, sh, s, i, op, "chunk %d out of range 0..%d", op->chunk, sh->C - 1);
    if (rank_of(sh, op->chunk) != s)
        return op_fail(err, errlen, sh, s, i, op, "chunk %d is on stage %d (%s placement), not on stage %d",
                       op->chunk, rank_of(sh, op->chunk), sched_place_name(sh->pl), s);
    const char *why = comm_forbidden(sh, op->kind, op->chunk, s);
    if (why)
        return op_fail(err, errlen, sh, s, i, op, "%s", why);
    size_t *slot = seen_at(r, op->mb, op->chunk, op->kind);
    if (*slot)
        return op_fail(err, errlen, sh, s, i, op, "duplicate (first at op %zu)", *slot - 1);
    int rc = check_prereq(r, i, op, err, errlen);
    if (rc)
        return rc;
    r->done += op->kind == SCHED_BWD || op->kind == SCHED_BWD_WEIGHT;
    *slot = i + 1;
    return 0;
}

/* Everything each (mb, chunk) needs on this rank is there. */
static int check_complete(rank_chk_t *r, char *err, size_t errlen)
{
    const shape_t *sh = r->sh;
    char cn[32];
    for (int j = 0; j < sh->v; j++) {
        int c = sched_rank_chunk(sh->pl, sh->P, sh->C, r->s, j);
        /* the kinds every micro-batch of this chunk needs, besides its backward */
        unsigned needed = 1u << SCHED_FWD;
        for (int k = 0; k < SCHED_OP_KINDS; k++)
            if ((k == SCHED_RECV_ACT || k == SCHED_SEND_ACT || k == SCHED_RECV_GRAD || k == SCHED_SEND_GRAD) &&
                !comm_forbidden(sh, (sched_op_kind_t)k, c, r->s))
                needed |= 1u << k;
        for (int mb = 0; mb < sh->M; mb++) {
            unsigned want = needed | (need(r, mb, c, SCHED_BWD_INPUT)
                                          ? (1u << SCHED_BWD_INPUT) | (1u << SCHED_BWD_WEIGHT)
                                          : 1u << SCHED_BWD);
            for (int k = 0; k < SCHED_OP_KINDS; k++) {
                if (!(want & (1u << k)) || need(r, mb, c, k))
                    continue;
                return pn_err(err, errlen, -EINVAL, "stage %d: %s(%d)%s missing%s", r->s,
                              sched_op_kind_name((sched_op_kind_t)k), mb, chunk_note(sh, c, cn, sizeof cn),
                              k == SCHED_RECV_ACT || k == SCHED_RECV_GRAD ? " (missing receive)" : "");
            }
        }
    }
    if (!r->opt_at)
        return pn_err(err, errlen, -EINVAL, "stage %d: OPT_STEP missing", r->s);
    return 0;
}

static int validate_rank(const shape_t *sh, int s, const sched_op_t *ops, size_t n_ops, char *err, size_t errlen)
{
    if (sh->P < 1 || sh->M < 1 || s < 0 || s >= sh->P || sh->v < 1 || sh->C != sh->v * sh->P)
        return pn_err(err, errlen, -EINVAL, "bad shape: stages %d, micro-batches %d, chunks %d, stage %d", sh->P,
                      sh->M, sh->C, s);
    if (n_ops && !ops)
        return pn_err(err, errlen, -EINVAL, "stage %d: NULL op list", s);
    rank_chk_t r = {sh, s, calloc((size_t)sh->M * sh->v * SCHED_OP_KINDS, sizeof(size_t)), 0, 0};
    if (!r.seen)
        return pn_err(err, errlen, -ENOMEM, "stage %d: out of memory", s);
    int rc = 0;
    for (size_t i = 0; i < n_ops && !rc; i++)
        rc = check_op(&r, i, &ops[i], err, errlen);
    if (!rc)
        rc = check_complete(&r, err, errlen);
    free(r.seen);
    return rc;
}

int sched_ops_validate(int stages, int micro_batches, int stage, const sched_op_t *ops,
                       size_t n_ops, char *err, size_t errlen)
{
    shape_t sh = {stages, micro_batches, stages, 1, SCHED_PLACE_PLAIN};
    return validate_rank(&sh, stage, ops, n_ops, err, errlen);
}

/* ---- channels ---- */

static int is_send(sched_op_kind_t k) { return k == SCHED_SEND_ACT || k == SCHED_SEND_GRAD; }
static int is_recv(sched_op_kind_t k) { return k == SCHED_RECV_ACT || k == SCHED_RECV_GRAD; }

/* The other end of a send or receive: its rank, and the chunk the message is for. */
static int peer_rank(const shape_t *sh, const sched_op_t *op)
{
    int toward_prev = op->kind == SCHED_RECV_ACT || op->kind == SCHED_SEND_GRAD;
    return rank_of(sh, toward_prev ? op->chunk - 1 : op->chunk + 1);
}

static int dest_chunk(const sched_op_t *op) { return op->kind == SCHED_SEND_ACT ? op->chunk + 1 : op->chunk - 1; }

/* The k-th send of rank a to rank b of one direction must be b's k-th receive from a of
 * that direction, for the same micro-batch and chunk. ptr: [P] scratch. Receives beyond
 * the sends are found by check_channel_counts. */
static int check_channels_from(const sched_plan_t *p, const shape_t *sh, int a, size_t *ptr, char *err,
                               size_t errlen)
{
    for (int dir = 0; dir < 2; dir++) {
        sched_op_kind_t sk = dir ? SCHED_SEND_GRAD : SCHED_SEND_ACT, rk = dir ? SCHED_RECV_GRAD : SCHED_RECV_ACT;
        memset(ptr, 0, (size_t)sh->P * 2 * sizeof *ptr);
        size_t *count = ptr + sh->P;
        char where[128], cn[32];
        for (size_t i = 0; i < p->n_ops[a]; i++) {
            const sched_op_t *so = &p->ops[a][i];
            if (so->kind != sk)
                continue;
            int b = peer_rank(sh, so);
            size_t k = count[b]++, j = ptr[b];
            while (j < p->n_ops[b] && !(p->ops[b][j].kind == rk && peer_rank(sh, &p->ops[b][j]) == a))
                j++;
            if (j == p->n_ops[b] || p->ops[b][j].mb != so->mb || p->ops[b][j].chunk != dest_chunk(so))
                op_where(where, sizeof where, sh, a, i, so); /* formatted only on failure */
            if (j == p->n_ops[b])
                return pn_err(err, errlen, -EINVAL, "%s: send #%zu to stage %d, which receives only %zu %s from stage %d",
                              where, k + 1, b, k, sched_op_kind_name(rk), a);
            const sched_op_t *ro = &p->ops[b][j];
            if (ro->mb != so->mb || ro->chunk != dest_chunk(so))
                return pn_err(err, errlen, -EINVAL,
                              "%s: send #%zu to stage %d, but stage %d op %zu receives %s(%d)%s as #%zu "
                              "(send order differs from receive order)",
                              where, k + 1, b, b, j, sched_op_kind_name(rk), ro->mb,
                              chunk_note(sh, ro->chunk, cn, sizeof cn), k + 1);
            ptr[b] = j + 1;
        }
    }
    return 0;
}

/* Every receive has a send on its channel: counts per [(from * P + to) * 2 + dir]. */
static int check_channel_counts(const sched_plan_t *p, const shape_t *sh, char *err, size_t errlen)
{
    int P = sh->P, rc = 0;
    size_t *sent = calloc((size_t)P * P * 2, sizeof *sent), *recvd = calloc((size_t)P * P * 2, sizeof *recvd);
    if (!sent || !recvd)
        rc = pn_err(err, errlen, -ENOMEM, "out of memory checking channels");
    for (int s = 0; s < P && !rc; s++)
        for (size_t i = 0; i < p->n_ops[s]; i++) {
            const sched_op_t *op = &p->ops[s][i];
            int dir = op->kind == SCHED_SEND_GRAD || op->kind == SCHED_RECV_GRAD;
            if (is_send(op->kind))
                sent[((size_t)s * P + peer_rank(sh, op)) * 2 + dir]++;
        }
    /* recvd now counts again, receive by receive, to name the first one too many */
    if (!rc)
        memset(recvd, 0, (size_t)P * P * 2 * sizeof *recvd);
    for (int s = 0; s < P && !rc; s++)
        for (size_t i = 0; i < p->n_ops[s] && !rc; i++) {
            const sched_op_t *op = &p->ops[s][i];
            if (!is_recv(op->kind))
                continue;
            int from = peer_rank(sh, op), dir = op->kind == SCHED_RECV_GRAD;
            size_t ch = ((size_t)from * P + s) * 2 + dir;
            if (++recvd[ch] > sent[ch]) {
                char where[128];
                op_where(where, sizeof where, sh, s, i, op);
                rc = pn_err(err, errlen, -EINVAL, "%s: stage %d sends only %zu %s to stage %d", where, from, sent[ch],
                            sched_op_kind_name(dir ? SCHED_SEND_GRAD : SCHED_SEND_ACT), s);
            }
        }
    free(sent);
    free(recvd);
    return rc;
}

/* Runs every rank with buffered FIFO sends: a receive proceeds once its channel has
 * carried more messages than were received. If some rank never finishes, reports the
 * wait. sent/recvd: [(from * P + to) * 2 + dir]. */
static int check_progress(const sched_plan_t *p, const shape_t *sh, char *err, size_t errlen)
{
    int P = sh->P;
    size_t *pc = calloc((size_t)P, sizeof *pc);
    size_t *sent = calloc((size_t)P * P * 2, sizeof *sent), *recvd = calloc((size_t)P * P * 2, sizeof *recvd);
    int rc = 0;
    if (!pc || !sent || !recvd) {
        rc = pn_err(err, errlen, -ENOMEM, "out of memory checking progress");
        goto out;
    }
    for (int moved = 1; moved;) {
        moved = 0;
        for (int s = 0; s < P; s++)
            for (; pc[s] < p->n_ops[s]; pc[s]++, moved = 1) {
                const sched_op_t *op = &p->ops[s][pc[s]];
                int dir = op->kind == SCHED_SEND_GRAD || op->kind == SCHED_RECV_GRAD;
                if (is_send(op->kind)) {
                    sent[((size_t)s * P + peer_rank(sh, op)) * 2 + dir]++;
                } else if (is_recv(op->kind)) {
                    size_t ch = ((size_t)peer_rank(sh, op) * P + s) * 2 + dir;
                    if (recvd[ch] >= sent[ch])
                        break;
                    recvd[ch]++;
                }
            }
    }
    for (int s = 0; s < P && !rc; s++) {
        if (pc[s] == p->n_ops[s])
            continue;
        char where[128], pwhere[128] = "its end";
        const sched_op_t *op = &p->ops[s][pc[s]];
        op_where(where, sizeof where, sh, s, pc[s], op);
        int peer = peer_rank(sh, op);
        if (pc[peer] < p->n_ops[peer])
            op_where(pwhere, sizeof pwhere, sh, peer, pc[peer], &p->ops[peer][pc[peer]]);
        rc = pn_err(err, errlen, -EINVAL, "deadlock: %s waits for stage %d, which is stuck at %s", where, peer,
                    pwhere);
    }
out:
    free(pc);
    free(sent);
    free(recvd);
    return rc;
}

int sched_plan_validate(const sched_plan_t *plan, int *peak, char *err, size_t errlen)
{
    if (!plan || plan->stages < 1 || plan->micro_batches < 1 || !plan->ops || !plan->n_ops)
        return pn_err(err, errlen, -EINVAL, "empty plan");
    shape_t sh = plan_shape(plan);
    if ((unsigned)plan->place >= SCHED_PLACES || sh.C % sh.P || (plan->place == SCHED_PLACE_PLAIN && sh.C != sh.P) ||
        (plan->place == SCHED_PLACE_V && sh.C != 2 * sh.P))
        return pn_err(err, errlen, -EINVAL, "placement %s with %d chunks over %d stages is not one",
                      sched_place_name(plan->place), sh.C, sh.P);
    int rc;
    for (int s = 0; s < sh.P; s++)
        if ((rc = validate_rank(&sh, s, plan->ops[s], plan->n_ops[s], err, errlen)))
            return rc;
    size_t *ptr = malloc((size_t)sh.P * 2 * sizeof *ptr);
    if (!ptr)
        return pn_err(err, errlen, -ENOMEM, "out of memory checking channels");
    rc = 0;
    for (int a = 0; a < sh.P && !rc; a++)
        rc = check_channels_from(plan, &sh, a, ptr, err, errlen);
    free(ptr);
    if (rc || (rc = check_channel_counts(plan, &sh, err, errlen)) || (rc = check_progress(plan, &sh, err, errlen)))
        return rc;
    for (int s = 0; peak && s < sh.P; s++)
        peak[s] = sched_ops_peak_inflight(plan->ops[s], plan->n_ops[s]);
    return 0;
}
