/* The results directory of a run or sweep: runs.csv (one row per cell), iterations.csv
 * (one row per iteration), ops.csv (the stages' op traces), command.txt and
 * environment.txt. Everything is held in memory, rewritten whole through a temporary name
 * and rename after every cell, and read back (strictly) by `report` and `--resume`. */
#ifndef PN_BENCH_RESULTS_H
#define PN_BENCH_RESULTS_H

#include <stddef.h>

#include "common/limits.h"
#include "pipeline/exec.h"

#define RESULTS_MAX_STAGES PN_MAX_STAGES /* per-stage columns of runs.csv */

/* One cell of a sweep: its configuration and what was measured. NaN = not available. */
typedef struct {
    int cell;                      /* index in the sweep grid, from 0 */
    char schedule[32];
    int micro_batch_size;
    char profile[96];              /* as given: "default", "10ms/1Gbps" */
    char label[128];               /* for tables: "delay 10ms  bandwidth 1Gbps" */
    char model[32];
    int stages, batch_size, seq_len, micro_batches;
    int iters, warmup, repeats;    /* measured iterations per run, after `warmup` more */
    char compute[96];              /* compute backend, e.g. "emulate:v100" */
    char emulator[32];             /* network emulator backend used, e.g. "netem", "shaper" */
    char transport[16];            /* how the stages exchanged tensors: "ucx", "nccl" */
    int straggler_rank;            /* -1 = none */
    double straggler_factor;       /* 1 = none */
    double iter_median, iter_mean, iter_min, iter_max, iter_stdev;  /* s, warm-up excluded */
    double predicted_apriori;      /* s, the simulator from the compute and link models alone */
    double predicted;              /* s, the simulator on this cell's measured costs (replay) */
    double ideal;                  /* s, the what-if replay: each stage's compute at its
                                    * FLOPs times the typical rate (bench/predict.h) */
    double imbalance;              /* ideal over the same with an evenly loaded partition */
    int straggler_stage;           /* stage of the slowest compute rate; -1 = unknown */
    double tokens_per_s;
    double flops[RESULTS_MAX_STAGES];    /* achieved FLOP/s per stage */
    double mfu;                          /* 0..1 */
    double mem_peak[RESULTS_MAX_STAGES]; /* bytes per stage: measured resident memory (cpu,
                                          * emulate) or measured device memory (cuda): mem_kind */
    double mem_model[RESULTS_MAX_STAGES]; /* bytes per stage: modelled device memory (emulate):
                                           * parameters, gradients, optimizer state and the
                                           * activations held at the schedule's peak, fp32 */
    double bubble[RESULTS_MAX_STAGES];   /* idle share of the iteration per stage */
    double straggler_delay, straggler_slowdown;
    double final_loss;
    char mem_kind[16];             /* what mem_peak is: "device" (measured, cuda) or "resident"
                                    * (the stage process's peak RSS: cpu, emulate); "" if unknown */
    int skipped_steps;             /* optimizer steps skipped for an fp16 overflow, summed over
                                    * repeats (every stage skips together); 0 without loss scaling */
    double wall;                   /* s the cell took, set-up included (for ETAs) */
    int dp, dp_overlap;            /* --dp replicas of the pipeline (rank = d*stages + s), --dp-overlap */
    char net_dp[96];               /* --net-dp profile between replicas; "" = the cell's profile */
    int global_batch;              /* sequences per iteration over all replicas: dp x batch_size */
    int dp_bucket_bytes;           /* --dp-bucket: the all-reduce's bucket size (dp > 1); 0 without one */
    double dp_straggler[RESULTS_MAX_STAGES]; /* per stage: its slowest replica's compute per
                                              * iteration over the median of the other D-1 */
} results_cell_t;

/* One measured iteration; iterations with warmup = 1 are not in the statistics. */
typedef struct {
    int cell, repeat, iteration, warmup;
    double time;                   /* s */
    double loss_scale;             /* the fp16 loss scale of its gradients; NaN without */
} results_iter_t;

/* One traced op: the per-rank trace row plus the cell and repeat it belongs to. */
typedef struct {
    int cell, repeat, rank, iteration;
    char op[16];                   /* sched_op_kind_name: "FWD", "SEND_ACT", ... */
    int micro_batch;               /* -1 for OPT_STEP */
    double start, end;             /* s on rank 0's clock, from the run's start */
    long long bytes;
} results_op_t;

typedef struct {
    results_cell_t *cells;
    size_t n_cells, cap_cells;
    results_iter_t *iters;
    size_t n_iters, cap_iters;
    results_op_t *ops;
    size_t n_ops, cap_ops;
} results_t;

void results_init(results_t *r);
void results_destroy(results_t *r);
/* A cell with every number NaN, no straggler, and the given index. */
void results_cell_clear(results_cell_t *c, int index);
int results_cell_add(results_t *r, const results_cell_t *c) __attribute__((warn_unused_result));
int results_iter_add(results_t *r, const results_iter_t *it) __attribute__((warn_unused_result));
int results_op_add(results_t *r, const results_op_t *op) __attribute__((warn_unused_result));
/* The cell with index `cell`, or NULL. */
const results_cell_t *results_cell_find(const results_t *r, int cell);
/* Drops the cells, iterations and ops of cell `cell` (to re-run it). */
void results_cell_remove(results_t *r, int cell);
/* Sorts cells, iterations and ops by cell (stable), the order the files are written in. */
void results_sort(results_t *r);

/* Writes runs.csv, iterations.csv and ops.csv into dir (which must exist). */
int results_write(const results_t *r, const char *dir, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Reads the three files of dir into an initialized, empty r. A missing iterations.csv or
 * ops.csv reads as empty; a missing runs.csv is -ENOENT. Malformed input is -EINVAL with
 * a message naming the file, line and column. */
int results_read(const char *dir, results_t *r, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Appends the rows of one rank's trace file (header rank,iteration,op,micro_batch,
 * start_s,end_s,bytes) to r as belonging to (cell, repeat). */
int results_trace_read(const char *path, int cell, int repeat, results_t *r, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Writes a trace file in the per-rank format (rows of `cell` and `repeat` only; rank < 0 = all). */
int results_trace_write(const results_t *r, int cell, int repeat, int rank, const char *path,
                        char *err, size_t errlen) __attribute__((warn_unused_result));
/* Writes a job's gathered trace rows (pipeline/exec.h) as a trace file of the same format,
 * to a temporary name then renamed: what `run --trace`, `stage --trace` and a sweep cell
 * save. */
int results_exec_trace_save(const char *path, const exec_row_t *rows, size_t n, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* How results_argv_write lays out the words: shell-quoted on one line, or one word a
 * line (a word with a line break is refused). */
typedef enum { RESULTS_ARGV_SHELL, RESULTS_ARGV_LINES } results_argv_style_t;
/* DIR/NAME: the words of argv in that style, written to a temporary name then renamed. */
int results_argv_write(const char *dir, const char *name, int argc, char **argv, results_argv_style_t style,
                       char *err, size_t errlen) __attribute__((warn_unused_result));
/* command.txt: the command line, shell-quoted, one line. */
int results_command_write(const char *dir, int argc, char **argv, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* environment.txt: pipenem's git revision, compiler, kernel, library versions, gnuplot,
 * and the compute and emulator backends of the run. */
int results_env_write(const char *dir, const char *compute, const char *emulator, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
