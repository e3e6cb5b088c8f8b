/* The sweep: the grid of schedules x network profiles x micro-batch sizes, its parsing
 * (one specific message per bad value), and the loop that measures every missing cell,
 * rewrites the results directory after each one and stops cleanly when asked to. How a
 * cell is measured is the caller's function, so the loop works on any backend. */
#ifndef PN_BENCH_SWEEP_H
#define PN_BENCH_SWEEP_H

#include "bench/report.h"
#include "bench/results.h"

#include <signal.h>
#include <stddef.h>

#define SWEEP_MAX_AXIS 32 /* values per grid axis */

typedef struct {
    char schedules[SWEEP_MAX_AXIS][32];
    int n_sched;
    int mbs[SWEEP_MAX_AXIS];              /* micro-batch sizes, as given */
    int n_mbs;
    char profiles[SWEEP_MAX_AXIS][96];    /* canonical text (netem_profile_format) */
    char labels[SWEEP_MAX_AXIS][128];     /* netem_profile_label */
    int n_prof;
    char model[32];
    int stages, batch_size, seq_len;
    int iters, warmup;                    /* measured iterations, after `warmup` more */
    int repeats, slack;
    int chunks;                           /* --chunks of interleaved-1f1b cells (0 = its default) */
    char compute[96];                     /* compute backend spec */
    char emulator[32];                    /* network emulator backend requested */
    char transport[16];                   /* --transport of every cell: "ucx" or "nccl" */
    int dp, dp_overlap;                   /* --dp replicas (the first of dps) and --dp-overlap */
    int dps[SWEEP_MAX_AXIS];              /* --dp-sizes: the replica axis (--dp D: just D) */
    int n_dp;
    char net_dp[96];                      /* --net-dp of every cell ("" = as its --net) */
    size_t dp_bucket;                     /* --dp-bucket bytes of every --dp cell (0 = the runtime's default) */
    int straggler_rank;                   /* -1 = none */
    double straggler_factor;              /* 1 = none */
    char timeout[32];                     /* --timeout of every stage ("" = pipeline's default) */
    char user[64];                        /* stage processes run as this user ("" = as started) */
} sweep_spec_t;

/* The defaults, DT-FM's GPT-3 small table: gpipe,1f1b x 1,2,4 x default,1ms/5Gbps,
 * 5ms/2Gbps,10ms/1Gbps; gpt3-small, 3 stages, batch 64, seq 2048, 10 measured iterations
 * after 1 warm-up, 1 repeat, emulate:v100, emulator auto, no straggler. */
int sweep_spec_default(sweep_spec_t *s, char *err, size_t errlen) __attribute__((warn_unused_result));

/* Comma lists; each replaces the axis. Errors name the bad item and its position. */
int sweep_schedules_parse(const char *text, sweep_spec_t *s, char *err, size_t errlen)
    __attribute__((warn_unused_result));
int sweep_mbs_parse(const char *text, sweep_spec_t *s, char *err, size_t errlen)
    __attribute__((warn_unused_result));
int sweep_profiles_parse(const char *text, sweep_spec_t *s, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* --dp-sizes 1,2: replica counts, each 1..PN_MAX_WORLD. */
int sweep_dp_sizes_parse(const char *text, sweep_spec_t *s, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* RANK:FACTOR, FACTOR > 0 (1.5 = that stage computes 1.5x slower). */
int sweep_straggler_parse(const char *text, int *rank, double *factor, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Checks the combination: every micro-batch size divides the batch, the straggler rank is
 * a stage, warm-up leaves a measured iteration, ... */
int sweep_spec_check(const sweep_spec_t *s, char *err, size_t errlen) __attribute__((warn_unused_result));

/* Cells in the grid; with G = n_sched n_prof n_mbs, cell i is replica count i / G,
 * schedule (i % G) / (n_prof n_mbs), profile (i / n_mbs) % n_prof, micro-batch size
 * i % n_mbs (one replica count: the numbering of a grid without --dp-sizes). */
int sweep_cells(const sweep_spec_t *s);
/* A results_cell_t with cell i's configuration filled and every measurement NaN. */
void sweep_cell_config(const sweep_spec_t *s, int i, results_cell_t *c);

/* Measures one cell: network set up, stages run, network restored, and then adds to r
 * the cell's ops (cell->cell, repeats 0..) and iterations and fills cell's measurements.
 * workdir is an empty directory the cell may use. -EINTR when *stop was raised;
 * -ENOSYS when no cell can be measured here (the loop stops with its message). */
typedef int (*sweep_measure_fn)(void *ctx, const sweep_spec_t *s, results_cell_t *cell, const char *workdir,
                                volatile sig_atomic_t *stop, results_t *r, char *err, size_t errlen);

/* After each attempted cell: its 1-based position among the cells this run measures, how
 * many that is, the ETA of the rest (s) and the outcome (0, or the negative error with err). */
typedef void (*sweep_progress_fn)(void *ctx, const results_cell_t *cell, int position, int todo, double eta,
                                  int status, const char *err);

typedef struct {
    const char *dir;                      /* the results directory (exists) */
    sweep_measure_fn measure;
    void *measure_ctx;
    sweep_progress_fn progress;           /* may be NULL */
    void *progress_ctx;
    const report_opts_t *report;          /* NULL = no table.md, trace.json or plots */
    volatile sig_atomic_t *stop;          /* raised by a signal handler; may be NULL */
} sweep_loop_t;

typedef struct {
    int measured, failed, skipped;        /* skipped: already in r (resume) */
    int interrupted;
} sweep_summary_t;

/* Runs every cell of s that r does not hold yet (r: empty, or what --resume read; it
 * must describe the same grid), rewriting the CSVs and the report after each cell. A
 * failed cell is reported and left out (a later --resume retries it); a raised *stop ends
 * the loop after the current cell's clean-up, keeping every finished cell. Errors: a
 * mismatch between r and s, or a results directory that cannot be written. */
int sweep_run(const sweep_spec_t *s, const sweep_loop_t *loop, results_t *r, sweep_summary_t *sum,
              char *err, size_t errlen) __attribute__((warn_unused_result));

/* DIR/sweep.args: the sweep's arguments (without the command words), one per line, which
 * --resume parses again. */
int sweep_args_write(const char *dir, int argc, char **argv, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* *argv is malloc'd (one block, free it alone); argv[argc] is NULL. */
int sweep_args_read(const char *dir, int *argc, char ***argv, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
