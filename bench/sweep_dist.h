/* The SPMD sweep: `pipenem sweep --dist-url tcp://HOST0:PORT ...` started once per host by
 * any launcher (srun, mpirun; rank and size from its environment as `pipenem stage`
 * reads them). Rank 0 runs the ordinary sweep loop and writes the results directory; its
 * cells are measured through bench/cell.h with hosts that are the ranks: for each cell
 * every rank of it (D x stages, rank = d x stages + s, of a world sized for the largest
 * --dp-sizes) puts the cell's profile on its own traffic to its pipeline neighbours and
 * --net-dp on its traffic to the same stage of replicas d+-1 (netem_tc_apply_by_dest,
 * the pairs of launch_pair_profile), runs its stage (the trace and counters gather at rank 0 as
 * in `pipenem stage`), and clears the profile; failures come back by rank. The control
 * connection is PORT; each cell's stage rendezvous is PORT + 1. */
#ifndef PN_BENCH_SWEEP_DIST_H
#define PN_BENCH_SWEEP_DIST_H

#include <signal.h>
#include <stddef.h>

#include "bench/results.h"
#include "bench/sweep.h"

/* What sweep_dist_worker returns when this process is not a rank > 0 of a distributed
 * sweep (the caller goes on as an ordinary sweep or as rank 0). */
#define SWEEP_DIST_NOT_WORKER (-1000)

/* If the launcher's environment makes this process rank R > 0 and the arguments (or
 * --resume DIR's saved ones) name a --dist-url: serves rank 0 until it ends the sweep
 * and returns the exit status (0, 1 failed, 2 usage). Otherwise SWEEP_DIST_NOT_WORKER. */
int sweep_dist_worker(int argc, char **argv);

typedef struct sweep_dist sweep_dist_t;

/* The ranks a sweep needs: the stages times the largest --dp-sizes. */
int sweep_dist_world(const sweep_spec_t *s);

/* Rank 0: listens on the URL's port and admits the other ranks (the launcher's world
 * size must be sweep_dist_world), sends each the grid and everyone's address.
 * Errors name what is missing (a rank that did not come within 120 s, a token or build
 * mismatch). */
int sweep_dist_open(sweep_dist_t **out, const char *url, const sweep_spec_t *s, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* A sweep_measure_fn (ctx: the sweep_dist_t). */
int sweep_dist_measure(void *ctx, const sweep_spec_t *s, results_cell_t *cell, const char *workdir,
                       volatile sig_atomic_t *stop, results_t *r, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Tells every rank the sweep is over and closes; accepts NULL. */
void sweep_dist_close(sweep_dist_t *d);

#endif
