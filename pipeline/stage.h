/* One stage process from start to end: transport, rendezvous, neighbour endpoints, the
 * model partition, the executor, and the final gather at rank 0 of every rank's trace
 * and counters into a job summary (iteration times, losses, throughput, memory). */
#ifndef PN_PIPELINE_STAGE_H
#define PN_PIPELINE_STAGE_H

#include <stdio.h>

#include "common/err.h"
#include "netem/profile.h"
#include "pipeline/exec.h"
#include "pipeline/runcfg.h"

typedef struct {
    const runcfg_t *cfg;     /* finished (runcfg_finish) */
    int rank;
    const char *token;
    char host[256];          /* rank 0's rendezvous address */
    int port;
    int listen_fd;           /* rank 0: a bound listening socket, or -1 */
    const char *ucx_tls, *ucx_devices;   /* NULL/"" = cfg's or UCX's own choice */
    const netem_profile_t *shim_links;   /* stages-1 links to emulate in the transport, or NULL */
    FILE *reports_out;       /* rank 0: every rank's raw report goes here too (for a launcher) */
} stage_params_t;

/* What one rank reports at the end. */
typedef struct {
    size_t peak_mem;         /* bytes: see mem_kind */
    int mem_kind;            /* model_mem_kind_t: MODEL_MEM_DEVICE (cuda: measured device
                              * memory) or MODEL_MEM_RESIDENT (the process's peak RSS) */
    long skipped;            /* optimizer steps skipped for an fp16 overflow */
    double fwd_flops, bwd_flops, peak_flops;   /* per micro-batch; peak 0 = unknown */
    double wait_wall, wait_cpu, run_wall, run_cpu;
    size_t params;
} stage_rank_t;

/* The job, assembled at rank 0. Iteration i's time is the end of its last op on any
 * rank minus the same for iteration i-1 (iteration 0: minus its first start). */
typedef struct {
    int stages, iters, warmup;
    double *iter_time;       /* [warmup + iters] seconds */
    double *loss;            /* [warmup + iters] last stage's mean loss; NAN if not cpu */
    double *loss_scale;      /* [warmup + iters] the fp16 loss scale of each iteration's
                              * gradients (a skipped step halves the next); NAN without */
    long skipped;            /* steps skipped for an fp16 overflow (the stages agree) */
    double tokens_per_iter;
    double median_time, tokens_per_s;
    stage_rank_t *ranks;     /* [stages] */
    exec_row_t *rows;        /* every rank's trace */
    size_t n_rows;
} stage_summary_t;

/* Runs this rank. On rank 0 (only), fills *out on success. A failure anywhere makes
 * every rank return an error naming the rank and op involved. */
int stage_run(const stage_params_t *p, stage_summary_t *out, char *err, size_t errlen) PN_WUR;
void stage_summary_destroy(stage_summary_t *s);

/* The summary from the reports rank 0 wrote to stage_params_t.reports_out. */
int stage_summary_read(const runcfg_t *cfg, FILE *f, stage_summary_t *out, char *err, size_t errlen) PN_WUR;

/* nccl-tests-style table of the summary onto f: '#' header, units row, one row per
 * iteration (iteration, time, loss, tokens/s, and with fp16 loss scaling the scale), then
 * per-stage throughput, memory (and which kind) and skipped steps. */
void stage_summary_print(const stage_summary_t *s, const runcfg_t *cfg, FILE *f);

/* Parses rank q's final report (as it arrived at rank 0) into s, which has stages,
 * iters, warmup, loss[warmup + iters] and ranks[stages] set (loss_scale may be NULL). Every count, index and
 * micro-batch number is range-checked before use: -EPROTO with a message otherwise.
 * Exposed for the fuzz target. */
int stage_report_parse(stage_summary_t *s, int q, const char *text, size_t len, char *err, size_t errlen) PN_WUR;

#endif
