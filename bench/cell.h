/* Measuring one sweep cell on this machine: the topology of one namespace per stage, the
 * cell's profile on every link, one stage process per host through pipeline's runner,
 * the traces collected, the network restored; then the metrics, the simulator's
 * prediction and the straggler replay. The sweep loop calls it through sweep_measure_fn. */
#ifndef PN_BENCH_CELL_H
#define PN_BENCH_CELL_H

#include "bench/results.h"
#include "bench/sweep.h"

#include <signal.h>
#include <stddef.h>

/* A sweep_measure_fn (ctx unused). */
int cell_measure(void *ctx, const sweep_spec_t *s, results_cell_t *cell, const char *workdir,
                 volatile sig_atomic_t *stop, results_t *r, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Checks, before anything runs, that models/ accepts every cell's configuration (model,
 * sequence length, stages, batch and micro-batch size, compute): -EINVAL naming the
 * first micro-batch size whose configuration is refused and why. */
int cell_check(const sweep_spec_t *s, char *err, size_t errlen) __attribute__((warn_unused_result));

#endif
