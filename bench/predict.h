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

/* sim_run of cell's schedule with each stage's cost the median of its measured FWD, BWD
 * and OPT_STEP durations (warm-up excluded, all repeats), message sizes the median bytes
 * of the measured SEND_ACT and SEND_GRAD, and every link under profile p. */
int predict_time(const results_t *r, const results_cell_t *cell, int slack, const netem_profile_t *p,
                 double *predicted, char *err, size_t errlen) __attribute__((warn_unused_result));

/* T_ideal: each measured iteration (repeat 0.., warm-up excluded) replayed with every
 * compute op at the median duration of its kind over all stages (so a slow stage is
 * made typical), communication timed by the link model of p, or as measured under the
 * default profile (whose link has no model); the median over the iterations. */
int predict_ideal(const results_t *r, const results_cell_t *cell, const netem_profile_t *p, double *ideal,
                  char *err, size_t errlen) __attribute__((warn_unused_result));

#endif
