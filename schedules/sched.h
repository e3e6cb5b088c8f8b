/* Pipeline schedules: the ordered op list each stage executes (GPipe, 1F1B, 1F1B with
 * slack), and the validator that proves a set of op lists can run over FIFO links
 * without deadlock. Pure functions of (schedule, stages, micro-batches, stage). */
#ifndef PN_SCHEDULES_SCHED_H
#define PN_SCHEDULES_SCHED_H

#include <stddef.h>

#define SCHED_WUR __attribute__((warn_unused_result))

typedef enum {
    SCHED_RECV_ACT,  /* receive the activation of micro-batch mb from stage s-1 */
    SCHED_FWD,
    SCHED_SEND_ACT,  /* send the activation of mb to stage s+1 */
    SCHED_RECV_GRAD, /* receive the gradient of mb from stage s+1 */
    SCHED_BWD,
    SCHED_SEND_GRAD, /* send the gradient of mb to stage s-1 */
    SCHED_OPT_STEP,
    SCHED_OP_KINDS
} sched_op_kind_t;

typedef struct {
    sched_op_kind_t kind;
    int mb; /* micro-batch 0..M-1; -1 for OPT_STEP */
} sched_op_t;

/* "RECV_ACT", "FWD", ...; "?" for a value out of range. */
const char *sched_op_kind_name(sched_op_kind_t k);
/* Parses the names sched_op_kind_name prints (case-insensitive); -EINVAL otherwise. */
int sched_op_kind_parse(const char *name, sched_op_kind_t *out) SCHED_WUR;

/* The compact token of one op, as `pipenem schedule` prints it: F3 B3 Ra3 Sa3 Rg3 Sg3
 * OPT (R/S = receive/send, a/g = activation/gradient). Returns snprintf's count. */
int sched_op_format(const sched_op_t *op, char *buf, size_t len);
/* Parses a compact token (or KIND(mb), e.g. "FWD(3)", "OPT_STEP"); -EINVAL otherwise. */
int sched_op_parse(const char *token, sched_op_t *out) SCHED_WUR;

/* Schedule names for --help and error messages: "gpipe, 1f1b, 1f1b-slack". */
const char *sched_names(void);
/* 1 if the schedule takes a slack K (1f1b-slack), 0 if not, -EINVAL if unknown. */
int sched_uses_slack(const char *schedule);
/* Forward passes stage `stage` runs before its first backward (GPipe: M; 1F1B:
 * min(P-s-1, M); 1f1b-slack: min(M, (P-1-s)(1+K))), or a negative errno. */
int sched_warmup(const char *schedule, int stages, int micro_batches, int slack, int stage,
                 char *err, size_t errlen) SCHED_WUR;

/* The ordered op list of one stage; *ops is malloc'd, caller frees. slack is K of
 * 1f1b-slack (ignored by the others, must be >= 0 there). Errors: -EINVAL with a
 * message naming the bad input, -ENOMEM. */
int sched_ops_build(const char *schedule, int stages, int micro_batches, int slack,
                    int stage, sched_op_t **ops, size_t *n_ops, char *err,
                    size_t errlen) SCHED_WUR;

/* Micro-batches whose activations one stage holds at once at its peak: counted from
 * the end of FWD(i) to the end of BWD(i). */
int sched_ops_peak_inflight(const sched_op_t *ops, size_t n_ops);

/* Checks one stage's list on its own: micro-batches in range, each forwarded once and
 * backwarded once after its forward, every receive the stage needs present and before
 * its use, every send after its producer, no send/receive the stage must not have
 * (the first stage receives no activations, the last sends none and receives no
 * gradients), one OPT_STEP after every backward. -EINVAL with "stage S op I KIND(mb):
 * why" in err. */
int sched_ops_validate(int stages, int micro_batches, int stage, const sched_op_t *ops,
                       size_t n_ops, char *err, size_t errlen) SCHED_WUR;

/* The op lists of every stage of one pipeline. */
typedef struct {
    int stages, micro_batches;
    sched_op_t **ops; /* [stages] */
    size_t *n_ops;    /* [stages] */
} sched_plan_t;

/* Builds every stage's list. *out is set only on success; destroy it with
 * sched_plan_destroy. */
int sched_plan_build(const char *schedule, int stages, int micro_batches, int slack,
                     sched_plan_t *out, char *err, size_t errlen) SCHED_WUR;
/* An empty plan of `stages` lists the caller fills (ops[s] malloc'd, n_ops[s] set). */
int sched_plan_alloc(int stages, int micro_batches, sched_plan_t *out) SCHED_WUR;
/* Parses op lists written one stage per line, as `pipenem schedule` prints them:
 * compact tokens (or KIND(mb)) separated by spaces or commas, optionally after
 * "stage N:"; blank lines and '#' comments are skipped. The plan has as many stages as
 * lines and M = micro_batches if > 0, else 1 + the largest micro-batch named. Not
 * validated. Errors name the line and token. */
int sched_plan_parse(const char *text, int micro_batches, sched_plan_t *out, char *err,
                     size_t errlen) SCHED_WUR;
/* Frees the lists; accepts a zeroed or half-built plan; leaves it zeroed. */
void sched_plan_destroy(sched_plan_t *plan);

/* Validates a whole pipeline: every stage (sched_ops_validate), then each link: the
 * k-th send of stage s to a neighbour must be that neighbour's k-th receive from s, so
 * a FIFO transport delivers what is expected; then a run with buffered sends must
 * reach every op (no wait cycle). On success fills peak[s] (if peak is not NULL)
 * with sched_ops_peak_inflight of each stage. */
int sched_plan_validate(const sched_plan_t *plan, int *peak, char *err,
                        size_t errlen) SCHED_WUR;

#endif
