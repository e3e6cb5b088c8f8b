/* The stage executor: walks one stage's op list for every iteration, computing through
 * models/ and moving boundary tensors through a transport, with receives posted ahead as
 * far as the buffers allow, and one trace row per op. */
#ifndef PN_PIPELINE_EXEC_H
#define PN_PIPELINE_EXEC_H

#include <stdio.h>

#include "common/err.h"
#include "models/model.h"
#include "pipeline/allreduce.h"
#include "pipeline/boot.h"
#include "pipeline/runcfg.h"
#include "pipeline/transport.h"
#include "schedules/sched.h"

/* One trace row: times in seconds on rank 0's clock since the job's start. */
typedef struct {
    int rank, iter;
    sched_op_kind_t kind;
    int mb;
    double start, end;
    size_t bytes;
} exec_row_t;

typedef struct {
    const runcfg_t *cfg;
    model_stage_t *st;     /* initialised for this stage (one chunk per stage) */
    /* With several chunks per stage (interleaved-1f1b, zb-v): the stage's chunks in model
     * order, each initialised as chunk c of the model split into all chunks; st unused. */
    model_stage_t *const *chunks;
    int n_chunks;          /* 0: st alone */
    transport_t *t;        /* connected to the neighbours; NULL with one stage */
    const boot_t *boot;    /* clock alignment; NULL = this process's clock */
    int stage;
    int rank_base;         /* transport rank of this replica's stage 0 (--dp: d*P); 0 */
    allreduce_t *dp;       /* the stage's replicas (--dp > 1), or NULL */
} exec_params_t;

typedef struct {
    exec_row_t *rows;
    size_t n_rows, cap_rows;
    int iters;             /* warmup + measured */
    double *loss;          /* [iters]: last stage's mean loss of each iteration, NAN elsewhere */
    double wait_wall, wait_cpu;   /* seconds spent waiting on the transport, and the
                                     process's CPU seconds meanwhile (all threads) */
    double run_wall, run_cpu;     /* the same over the whole run */
} exec_result_t;

/* Runs cfg->warmup + cfg->iters iterations. On a failure, err names this rank, the op
 * and iteration it was in and why; the caller tells the other ranks (ctrl_abort). */
int exec_run(const exec_params_t *p, exec_result_t *out, char *err, size_t errlen) PN_WUR;
void exec_result_destroy(exec_result_t *r);

/* The trace CSV: header `rank,iteration,op,micro_batch,start_s,end_s,bytes`. */
int exec_trace_write(FILE *f, const exec_row_t *rows, size_t n, int header) PN_WUR;

#endif
