/* The simulator's view of a measured cell: the predicted iteration time from the measured
 * per-op compute costs and the profile's link model, and the ideal time of the straggler
 * metrics (the measured trace replayed with every op at the median of its kind). */
#ifndef PN_BENCH_PREDICT_H
#define PN_BENCH_PREDICT_H

#include "bench/results.h"
#include "netem/profile.h"
#include "schedules/sim.h"

#include <stddef.h>

/* One direction of a link under profile p: its one-way delay and the TCP goodput of its
 * rate (what a transfer over the emulated link can reach); unlimited when p has no rate. */
void predict_link(const netem_profile_t *p, sim_link_t *out);

/* The bandwidth (bit/s) the path between neighbouring stages reached in a cell, one
 * direction (backward = gradients): each send whose matching receive was already posted
 * gives bytes / (receive end - send start - delay); the upper quartile, since queueing
 * behind earlier messages only slows a sample. NaN when no send qualifies. */
double predict_path_bandwidth(const results_t *r, const results_cell_t *cell, int backward, double delay);

/* The links a cell's predictions use: the profile's delay and goodput (predict_link),
 * capped by the bandwidth the path reached in the cell. For the default profile the
 * measured path is the only model there is; for a shaped one the cap matters only where
 * the machine cannot carry the profile's rate. */
void predict_cell_links(const results_t *r, const results_cell_t *cell, const netem_profile_t *p, sim_link_t *fwd,
                        sim_link_t *bwd);

/* The median over the measured iterations (warm-up excluded, all repeats) of sim_run of
 * cell's schedule for that iteration: each stage's cost the mean of the iteration's
 * FWD, BWD and OPT_STEP durations on it, message sizes the median bytes of the measured
 * SEND_ACT and SEND_GRAD, and the links of predict_cell_links. Per iteration, so that an
 * iteration slowed by the machine is predicted from its own costs, like the median it is
 * compared with. */
int predict_time(const results_t *r, const results_cell_t *cell, int slack, const netem_profile_t *p,
                 double *predicted, char *err, size_t errlen) __attribute__((warn_unused_result));
/* The same with `chunks` per stage (--chunks of interleaved-1f1b; 0 = the schedule's
 * default). A stage's cost is the sum over its chunks (each chunk's op mean times the
 * chunks per stage); where the backward is split, BWD_INPUT + BWD_WEIGHT. */
int predict_time_chunks(const results_t *r, const results_cell_t *cell, int slack, int chunks,
                        const netem_profile_t *p, double *predicted, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* T_ideal: each measured iteration (repeat 0.., warm-up excluded) replayed with every
 * compute op at the median duration of its kind over all stages (so a slow stage is
 * made typical), communication timed by the links of predict_cell_links; the median
 * over the iterations. */
int predict_ideal(const results_t *r, const results_cell_t *cell, const netem_profile_t *p, double *ideal,
                  char *err, size_t errlen) __attribute__((warn_unused_result));

#endif
