/* Pipeline schedules: where the model's chunks live (a chunk->rank placement) and the
 * ordered op list each rank executes over (chunk, micro-batch, kind), for GPipe, 1F1B,
 * 1F1B with slack, interleaved 1F1B, ZB-H1 and ZB-V; and the validator that proves a set
 * of op lists can run over FIFO links without deadlock. Pure functions of (schedule,
 * ranks, micro-batches, chunks per rank, rank). A rank is called a stage where the model
 * has one chunk per rank, which is what gpipe, 1f1b and 1f1b-slack run. */
#ifndef PN_SCHEDULES_SCHED_H
#define PN_SCHEDULES_SCHED_H

#include <stddef.h>

#include "common/err.h"

struct sched_plan;

typedef enum {
    SCHED_RECV_ACT,  /* receive the input activation of (mb, chunk) from chunk-1's rank */
    SCHED_FWD,
    SCHED_SEND_ACT,  /* send the output activation of (mb, chunk) to chunk+1's rank */
    SCHED_RECV_GRAD, /* receive the output gradient of (mb, chunk) from chunk+1's rank */
    SCHED_BWD,       /* the whole backward of (mb, chunk) */
    SCHED_SEND_GRAD, /* send the input gradient of (mb, chunk) to chunk-1's rank */
    SCHED_OPT_STEP,
    SCHED_BWD_INPUT,  /* B: the input gradient only (zero-bubble schedules) */
    SCHED_BWD_WEIGHT, /* W: the parameter gradients of a B that ran */
    SCHED_ALLREDUCE,  /* data parallelism: one bucket of the stage's gradients averaged over its
                         replicas (a trace row, mb = the bucket; no schedule generates it) */
    SCHED_OP_KINDS
} sched_op_kind_t;

/* chunk: the model chunk (0..chunks-1, global; chunk c+1 follows chunk c). With one chunk
 * per rank, chunk == rank. Handing a tensor between chunks on one rank is local: the
 * lists carry no send or receive for it. */
typedef struct {
    sched_op_kind_t kind;
    int mb; /* micro-batch 0..M-1; -1 for OPT_STEP */
    int chunk;
} sched_op_t;

/* Where chunk c lives. plain: chunks == ranks, c on rank c. interleaved: v chunks per
 * rank, c on rank c % P (rank r holds r, r+P, r+2P, ...). v: two per rank, rank r holds
 * r and 2P-1-r (the last chunk, with the loss, is on rank 0). */
typedef enum { SCHED_PLACE_PLAIN, SCHED_PLACE_INTERLEAVED, SCHED_PLACE_V, SCHED_PLACES } sched_place_t;
const char *sched_place_name(sched_place_t pl); /* "plain", "interleaved", "v" */
/* The rank of chunk c (0 <= c < chunks) among `ranks`. */
int sched_chunk_rank(sched_place_t pl, int ranks, int c);
/* The j-th chunk rank r holds (0 <= j < chunks/ranks), in model order. */
int sched_rank_chunk(sched_place_t pl, int ranks, int chunks, int r, int j);

/* "RECV_ACT", "FWD", ...; "?" for a value out of range. */
const char *sched_op_kind_name(sched_op_kind_t k);
/* Parses the names sched_op_kind_name prints (case-insensitive); -EINVAL otherwise. */
int sched_op_kind_parse(const char *name, sched_op_kind_t *out) PN_WUR;
/* 1 for FWD, BWD, BWD_INPUT, BWD_WEIGHT and OPT_STEP. */
int sched_op_is_compute(sched_op_kind_t k);

/* The compact token of one op, as `pipenem schedule` prints it: F3 B3 Bi3 W3 Ra3 Sa3 Rg3
 * Sg3 OPT (R/S = receive/send, a/g = activation/gradient, B = whole backward, Bi = its
 * input half, W = its weight half). Returns snprintf's count. */
int sched_op_format(const sched_op_t *op, char *buf, size_t len);
/* The same with the chunk where the plan has more chunks than ranks: "F3@5". */
int sched_plan_op_format(const struct sched_plan *plan, int rank, size_t i, char *buf, size_t len);
/* Parses a compact token (or KIND(mb), e.g. "FWD(3)", "OPT_STEP"), optionally followed by
 * "@CHUNK"; chunk is -1 where none is named. -EINVAL otherwise. */
int sched_op_parse(const char *token, sched_op_t *out) PN_WUR;

/* What a schedule is built from. chunks: chunks per rank (v); 0 = the schedule's default
 * (interleaved-1f1b 2, zb-v 2, the others 1). slack: K of 1f1b-slack (>= 0; ignored by
 * the others). */
typedef struct {
    const char *schedule;
    int ranks, micro_batches, slack, chunks;
} sched_spec_t;

/* Schedule names for --help and error messages: "gpipe, 1f1b, ...". */
const char *sched_names(void);
/* The schedules a comparison runs when none are named: those of one chunk per rank and
 * an unsplit backward, which run at any stage and micro-batch count ("gpipe, 1f1b,
 * 1f1b-slack"). */
const char *sched_default_names(void);
/* 1 if the schedule takes a slack K (1f1b-slack), 0 if not, -EINVAL if unknown. */
int sched_uses_slack(const char *schedule);
/* 1 if the schedule takes --chunks (interleaved-1f1b), 0 if not, -EINVAL if unknown. */
int sched_uses_chunks(const char *schedule);
/* 1 if it splits the backward into B and W (zb-h1, zb-v), 0 if not, -EINVAL if unknown. */
int sched_splits_backward(const char *schedule);
/* Checks a spec (names the bad field: unknown schedule, ranks, micro-batches, slack,
 * chunks, and Megatron's rule that interleaved-1f1b needs M divisible by the ranks) and
 * fills the chunks per rank it resolves to. */
int sched_spec_check(const sched_spec_t *spec, int *chunks_per_rank, char *err, size_t errlen) PN_WUR;

/* Forward passes stage `stage` runs before its first backward (GPipe: M; 1F1B:
 * min(P-s-1, M); 1f1b-slack: min(M, (P-1-s)(1+K))), or a negative errno; -ENOTSUP for
 * schedules without one count (interleaved, zero-bubble). */
int sched_warmup(const char *schedule, int stages, int micro_batches, int slack, int stage,
                 char *err, size_t errlen) PN_WUR;

/* The ordered op list of one stage of a one-chunk-per-rank schedule (chunks = 0); *ops
 * is malloc'd, caller frees. Errors: -EINVAL with a message naming the bad input, -ENOMEM. */
int sched_ops_build(const char *schedule, int stages, int micro_batches, int slack,
                    int stage, sched_op_t **ops, size_t *n_ops, char *err,
                    size_t errlen) PN_WUR;
/* The same for any spec. */
int sched_ops_build_spec(const sched_spec_t *spec, int rank, sched_op_t **ops, size_t *n_ops,
                         char *err, size_t errlen) PN_WUR;

/* (micro-batch, chunk) activations one rank holds at once at its peak: counted from a
 * FWD to the BWD, or the BWD_WEIGHT, of the same (mb, chunk). With one chunk per rank it
 * is micro-batches; with v chunks each is 1/v of a stage's activations. */
int sched_ops_peak_inflight(const sched_op_t *ops, size_t n_ops);

/* Checks one stage's list of a plain plan on its own (see sched_plan_validate). */
int sched_ops_validate(int stages, int micro_batches, int stage, const sched_op_t *ops,
                       size_t n_ops, char *err, size_t errlen) PN_WUR;

/* The op lists of every rank of one pipeline and where the chunks live. */
typedef struct sched_plan {
    int stages, micro_batches; /* stages: ranks */
    sched_op_t **ops; /* [stages] */
    size_t *n_ops;    /* [stages] */
    int chunks;       /* model chunks; 0 is read as `stages` (plain) */
    sched_place_t place;
} sched_plan_t;

/* Builds every rank's list. *out is set only on success; destroy it with
 * sched_plan_destroy. */
int sched_plan_build(const char *schedule, int stages, int micro_batches, int slack,
                     sched_plan_t *out, char *err, size_t errlen) PN_WUR;
int sched_plan_build_spec(const sched_spec_t *spec, sched_plan_t *out, char *err,
                          size_t errlen) PN_WUR;
/* An empty plain plan of `stages` lists the caller fills (ops[s] malloc'd, n_ops[s] set). */
int sched_plan_alloc(int stages, int micro_batches, sched_plan_t *out) PN_WUR;
/* Parses op lists written one rank per line, as `pipenem schedule` prints them: compact
 * tokens (or KIND(mb)), each optionally with @CHUNK, separated by spaces or commas,
 * optionally after "stage N:"; blank lines and '#' comments are skipped. A line
 * "placement interleaved|v|plain CHUNKS" sets the placement (default plain); a token
 * without @ names the rank's first chunk. The plan has as many ranks as op lines and
 * M = micro_batches if > 0, else 1 + the largest micro-batch named. Not validated.
 * Errors name the line and token. */
int sched_plan_parse(const char *text, int micro_batches, sched_plan_t *out, char *err,
                     size_t errlen) PN_WUR;
/* Frees the lists; accepts a zeroed or half-built plan; leaves it zeroed. */
void sched_plan_destroy(sched_plan_t *plan);

/* Validates a whole pipeline. Per rank: every chunk named lives on that rank; each
 * (mb, chunk) it holds is forwarded once and backwarded once after its forward (BWD, or
 * BWD_INPUT then BWD_WEIGHT); every receive present and before its use, every send after
 * its producer, and none where the neighbouring chunk is on the same rank (a local
 * hand-off: the producing op itself must come first); one OPT_STEP after every backward.
 * Then each channel (sender rank, receiver rank, activations or gradients): its k-th
 * send is the receiver's k-th receive, so a FIFO transport delivers what is expected;
 * then a run with buffered sends must reach every op (no wait cycle). Errors: -EINVAL
 * with "stage S op I KIND(mb)[ chunk C]: why". On success fills peak[s] (if not NULL)
 * with sched_ops_peak_inflight of each rank. */
int sched_plan_validate(const sched_plan_t *plan, int *peak, char *err, size_t errlen) PN_WUR;

#endif
