/* Metrics of a measured cell, from its op trace: iteration times (warm-up excluded) and
 * their statistics, tokens/s, FLOP/s per stage and MFU (FLOPs and the device peak come
 * from models), the measured bubble fraction per stage and the straggler metrics. */
#ifndef PN_BENCH_METRICS_H
#define PN_BENCH_METRICS_H

#include "bench/results.h"

#include <stddef.h>

typedef struct {
    double median, mean, min, max, stdev; /* stdev: sample (n-1); 0 for one value */
    size_t n;
} metrics_stats_t;

/* Statistics of n values; every field NaN (and n = 0) when n is 0. */
void metrics_stats(const double *x, size_t n, metrics_stats_t *out);

/* Which lane of a timeline an op belongs to, from its name (sched_op_kind_name). */
typedef enum {
    METRICS_LANE_COMPUTE, METRICS_LANE_SEND, METRICS_LANE_RECV,
    METRICS_LANE_ALLREDUCE, /* the data-parallel gradient all-reduce (--dp), one row per bucket */
    METRICS_LANES
} metrics_lane_t;
/* The op name of an all-reduce bucket in a trace (pipeline's DP runtime writes it). */
#define METRICS_OP_ALLREDUCE "ALLREDUCE"
/* FWD, BWD, OPT_STEP -> compute; SEND_* -> send; RECV_* -> recv; allreduce -> allreduce;
 * anything else -1. */
int metrics_op_lane(const char *op);

/* An op's compute seconds for busy-time sums: its duration for a compute op, minus it for
 * an ALLREDUCE (the runtime's OPT_STEP row spans the step's all-reduce, waiting for the
 * slowest replica included), else 0. Summed over an iteration's ops of a rank, the
 * all-reduce drops out. */
double metrics_op_compute(const results_op_t *o);
/* With --dp-overlap a bucket's ALLREDUCE row starts inside the backward and only its end
 * lies in the rank's OPT_STEP row, so the sum of metrics_op_compute over a rank's ops takes
 * too much away: this gives, per (iteration, rank) of cell `cell`, the seconds of its
 * ALLREDUCE rows before its OPT_STEP row starts (0 without overlap), for the sum to add
 * back. out[iteration * ranks + rank], iterations 0..iters-1, ranks 0..ranks-1, of repeat
 * `repeat` (-1: every repeat, summed); calloc'd by the call, NULL without memory. */
double *metrics_allreduce_early(const results_t *r, int cell, int repeat, int iters, int ranks);

/* Iteration i of one repeat lasts from the end of iteration i-1 (its last op on any
 * stage) to its own last op's end; iteration 0 starts at its first op. Measured from
 * end to end because a stage may post the next iteration's receive before the pipeline
 * has drained. *times is malloc'd, (*n) = highest iteration + 1; an iteration with no
 * ops is -EINVAL. */
int metrics_iter_times(const results_t *r, int cell, int repeat, double **times, int *n,
                       char *err, size_t errlen) __attribute__((warn_unused_result));

typedef struct {
    int warmup;                    /* leading iterations of each repeat not counted */
    int batch_size, seq_len;       /* tokens per iteration = cell->dp * batch_size * seq_len */
    const double *flop_per_iter;   /* FLOPs per stage per iteration; NULL = unknown */
    double peak_flops;             /* device peak FLOP/s per stage; 0 = unknown */
    const double *loss_scale;      /* [repeat * scale_iters + iteration]: the fp16 loss scale of
                                    * each iteration (NaN without); NULL = none recorded */
    int scale_iters;
} metrics_params_t;

/* From the ops of cell->cell in r (all of its repeats 0 .. cell->repeats-1): appends its
 * iterations to r and fills cell's iteration statistics, tokens_per_s, flops, mfu and
 * bubble (mean idle share of the measured iterations per stage: 1 - compute time / T_i).
 * MFU = sum of per-stage FLOP/s / (stages * peak). Needs at least one measured iteration. */
int metrics_cell_compute(results_t *r, const metrics_params_t *p, results_cell_t *cell,
                         char *err, size_t errlen) __attribute__((warn_unused_result));

/* Median duration of op kind `op` over every rank and measured iteration of a cell; the
 * durations the ideal replay gives every op of that kind. -ENOENT when there is none. */
int metrics_kind_median(const results_t *r, int cell, int warmup, const char *op, double *out)
    __attribute__((warn_unused_result));

/* The data-parallel straggler figure of a cell with D = cell->dp > 1 replicas: for each
 * stage s, each replica's compute seconds per measured iteration (rank d*stages + s, all
 * repeats, warm-up excluded), and cell->dp_straggler[s] = the slowest replica's over the
 * median of its D-1 peers doing the same work (1 = no straggler). slow_replica[s] (may be
 * NULL) is that replica. NaN for D = 1 or a stage whose replicas were not all traced. */
void metrics_dp_straggler(const results_t *r, results_cell_t *cell, int *slow_replica);

/* slowdown = t / t_ideal, delay = 1 - t_ideal / t (so slowdown = 1 / (1 - delay)). */
void metrics_straggler(double t, double t_ideal, double *delay, double *slowdown);

#endif
