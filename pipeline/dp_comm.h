/* The data-parallel gradient all-reduce of one stage, bucket by bucket: each chunk's
 * gradient block (model_stage_grads) cut into pieces of the all-reduce's bucket size. Without
 * overlap the stage's thread all-reduces every bucket at its optimizer step; with
 * --dp-overlap a communication thread all-reduces each bucket as soon as the iteration's last
 * backward of its chunk has finalised it (model_stage_grads_hook), while that backward goes
 * on, and the step only waits for what is left. */
#ifndef PN_PIPELINE_DP_COMM_H
#define PN_PIPELINE_DP_COMM_H

#include <pthread.h>
#include <stddef.h>

#include "common/err.h"
#include "models/model.h"
#include "pipeline/allreduce.h"
#include "schedules/sched.h"

/* One bucket: floats [lo, lo + n) of chunk's block, all-reduced under keys key0.. of the
 * iteration. Numbered (index) as the block's pieces in chunk order: a trace row's mb. */
typedef struct {
    int chunk;
    float *buf;            /* the chunk's block */
    size_t lo, n;
    int key0;
    int held;              /* holds part of the tied-embedding gradient: waits for the step */
    int queued, done;      /* this iteration */
    double t0, t1;         /* when its all-reduce ran (local monotonic seconds) */
} dp_bucket_t;

typedef struct dp_comm dp_comm_t;

typedef struct {
    dp_comm_t *c;
    int chunk;
} dp_hook_t;

struct dp_comm {
    allreduce_t *a;
    model_stage_t *const *st; /* [v]: the chunks, kept by the caller */
    int overlap;
    dp_bucket_t *b;        /* [nb] in index order */
    int nb, v, rank;
    dp_hook_t *hook;       /* [v]: the argument of each chunk's hook */
    const sched_op_t **last; /* [v]: each chunk's last op of the list adding parameter gradients */
    int *queue;            /* [nb]: bucket indices in the order they became final */
    int q_head, q_tail, n_done;
    int iter;
    int rc;                /* the first failure, its text in err */
    char err[512];
    int stop;
    pthread_mutex_t lock;
    pthread_cond_t work, done;
    pthread_t thread;
    int started;
};

/* Cuts the v chunks' blocks into buckets; with overlap starts the thread and finds in the
 * rank's op list (ops[n], one iteration, kept by the caller) each chunk's last backward
 * that adds parameter gradients (BWD, or BWD_WEIGHT where it is split). The tied-embedding
 * gradient of a chunk (model_stage_tied_grad), when it lies in the block, is exchanged with
 * the twin stage at the step: buckets holding part of it wait for the step. rank: for
 * messages. */
int dp_comm_init(dp_comm_t *c, allreduce_t *a, int overlap, model_stage_t *const *st, int v, const sched_op_t *ops,
                 size_t n, int rank, char *err, size_t errlen) PN_WUR;
/* Before the op running on local chunk j (stage st) of iteration iter: 1 if it is that
 * chunk's last backward adding parameter gradients with overlap on, so that its buckets
 * go to the thread as it finalises them (then call dp_comm_disarm after it); else 0. */
int  dp_comm_arm(dp_comm_t *c, model_stage_t *st, int j, const sched_op_t *op, int iter);
void dp_comm_disarm(model_stage_t *st);
/* The step of iteration iter: every bucket not yet all-reduced is, and this returns once
 * all are (sleeping meanwhile). Without overlap, gradients on a device (cuda) are brought
 * to their host mirrors first and copied back after (model_stage_grads_host/_upload); the
 * overlap's per-layer hook needs them in host memory as the backward writes them. On a failure err names the bucket, the iteration and the
 * ring neighbour; the transport has then been failed. The buckets' t0/t1 are then the
 * trace's ALLREDUCE rows. */
int dp_comm_step(dp_comm_t *c, int iter, char *err, size_t errlen) PN_WUR;
/* The communication thread's failure, if any (0 if none): a failed op of the stage's
 * thread may be its echo. Stops the thread first (the transport must have been failed
 * or be idle). */
int dp_comm_failure(dp_comm_t *c, char *err, size_t errlen);
/* Stops the thread (the transport must have been failed or be idle); accepts a zeroed or
 * half-built c. */
void dp_comm_destroy(dp_comm_t *c);

#endif
