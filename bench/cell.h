/* Measuring one sweep cell on this machine: the topology of one namespace per stage, the
 * cell's profile on every link, one stage process per host through pipeline's runner,
 * the traces collected, the network restored; then the metrics, the simulator's
 * prediction and the straggler replay. The sweep loop calls it through sweep_measure_fn. */
#ifndef PN_BENCH_CELL_H
#define PN_BENCH_CELL_H

#include "bench/results.h"
#include "bench/sweep.h"
#include "netem/profile.h"
#include "pipeline/runcfg.h"
#include "pipeline/stage.h"

#include <signal.h>
#include <stddef.h>

/* Where a cell's stages run: this machine (cell_measure: a namespace per stage, pipeline's
 * launcher) or real hosts (bench/sweep_dist.c: one rank per host under a launcher). The
 * rest of a cell (its configuration, the model's expectations, the traces, metrics,
 * predictions) is the same code for both. */
typedef struct cell_hosts {
    const char *name;
    /* Puts profile p on the cell's links; the backend used into cell->emulator, the --net
     * and --emulator every stage's configuration records into *cfg_net, *cfg_emulator. */
    int (*setup)(void *ctx, const sweep_spec_t *s, const netem_profile_t *p, results_cell_t *cell,
                 const char **cfg_net, const char **cfg_emulator, char *err, size_t errlen);
    /* One repeat: every stage of cfg run (rank_compute[q] non-NULL: stage q's own compute),
     * rank 0's summary of the job into *sum. A failure names the rank. */
    int (*run)(void *ctx, const runcfg_t *cfg, const sweep_spec_t *s, const char *const *rank_compute,
               volatile sig_atomic_t *stop, stage_summary_t *sum, char *err, size_t errlen);
    /* Restores the network; also after a failed setup. */
    void (*teardown)(void *ctx);
} cell_hosts_t;

/* A cell measured with h (its context hctx); cell_measure is this on this machine. */
int cell_measure_on(const cell_hosts_t *h, void *hctx, const sweep_spec_t *s, results_cell_t *cell,
                    const char *workdir, volatile sig_atomic_t *stop, results_t *r, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* The pipeline configuration of cell c (runcfg_finish'ed), as every stage of it runs. */
int cell_runcfg(const sweep_spec_t *s, const results_cell_t *c, const char *net, const char *emulator,
                runcfg_t *cfg, char *err, size_t errlen) __attribute__((warn_unused_result));

/* A sweep_measure_fn (ctx unused). */
int cell_measure(void *ctx, const sweep_spec_t *s, results_cell_t *cell, const char *workdir,
                 volatile sig_atomic_t *stop, results_t *r, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Checks, before anything runs, that models/ accepts every cell's configuration (model,
 * sequence length, stages, batch and micro-batch size, compute): -EINVAL naming the
 * first micro-batch size whose configuration is refused and why. */
int cell_check(const sweep_spec_t *s, char *err, size_t errlen) __attribute__((warn_unused_result));

#endif
