/* The simulator's view of a measured cell: the predicted iteration time from the measured
 * per-op compute costs and the profile's link model, and the ideal time of the straggler
 * metrics (the measured trace replayed with every op at the median of its kind). */
#ifndef PN_BENCH_PREDICT_H
#define PN_BENCH_PREDICT_H

#include "bench/results.h"
#include "models/model.h"
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

/* The a-priori prediction: sim_run of cell's schedule from modelled per-micro-batch costs
 * per stage (cost[stages], e.g. emulate's model_stage_account) and the profile's link model
 * (predict_link) with boundary_bytes per message each way; nothing measured in the cell. */
int predict_apriori(const results_cell_t *cell, int slack, int chunks, const sim_cost_t *cost, double boundary_bytes,
                    const netem_profile_t *p, double *predicted, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* The what-if replays of the straggler metrics (after "Understanding Stragglers in Large
 * Model Training Using What-if Analysis", OSDI 2025). Each stage's measured rate is its
 * compute seconds per iteration over its expected work per iteration (work[s]: its FLOPs,
 * or its modelled compute seconds where the compute is modelled, so that explicit
 * per-stage times count as the expectation they are); the typical rate is the median over
 * the stages (the lower middle one for an even count).
 * as_measured: each measured iteration replayed with its measured compute durations.
 * expected: the same with every compute op of stage s scaled by typical / rate_s, i.e.
 *   the stage's own work at the typical rate (a slow stage made typical, the partition
 *   left as it is); slowdown = as_measured / expected, both replays, so that what the
 *   simulator leaves out (runtime overheads between ops) is in neither and cancels.
 * even: the same with every stage's compute scaled to the mean over the stages of its
 *   expected compute, i.e. an evenly loaded partition; expected / even is the partition
 *   imbalance (the LM head's extra FLOPs show here, not as a straggler).
 * slow_stage is the stage of the slowest rate, slow_factor its rate over the typical one.
 * Micro-batch to micro-batch variation inside a stage is kept as measured. */
typedef struct {
    double as_measured, expected, even; /* s, medians over the measured iterations */
    double slowdown;                    /* as_measured / expected */
    double imbalance;                   /* expected / even */
    int slow_stage;
    double slow_factor;
} predict_whatif_t;

int predict_whatif(const results_t *r, const results_cell_t *cell, const netem_profile_t *p,
                   const double *work, predict_whatif_t *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* The all-reduce buckets of one stage as the simulator takes them (sim_dp_t), laid out as
 * pipeline's DP runtime cuts them: the stage's fp32 gradient block (its tensors in order)
 * in pieces of cap bytes (0: ALLREDUCE_BUCKET_DEFAULT, 25 MiB), at most
 * PREDICT_MAX_BUCKETS (the last one takes the rest). Listed last piece first, the order
 * the backward finalises them; piece k is ready (with --dp-overlap) once the backward has
 * passed every tensor from the piece on, in proportion to their matrix parameters (a
 * layer's backward FLOPs are its matrices'; the embeddings' gather adds none). Without
 * overlap the order is immaterial: every piece waits for the last backward. */
#define PREDICT_MAX_BUCKETS 1024
typedef struct {
    int n;
    double bytes[PREDICT_MAX_BUCKETS], ready[PREDICT_MAX_BUCKETS];
    double total;                       /* bytes, all buckets */
} predict_buckets_t;
void predict_dp_buckets(const model_stage_t *st, double cap, predict_buckets_t *out);
/* The same cut of a block of `total` bytes that has no tensors to say where the layers lie
 * (sim --param-bytes): piece k ready once the backward has passed its bytes and those after. */
void predict_dp_buckets_bytes(double total, double cap, predict_buckets_t *out);

/* The a-priori prediction with D replicas: predict_apriori plus each stage's all-reduce
 * over the DP links of profile dp_prof (predict_link), buckets[stages]; overlap as
 * --dp-overlap. D = 1 is predict_apriori exactly. */
int predict_apriori_dp(const results_cell_t *cell, int slack, int chunks, const sim_cost_t *cost,
                       double boundary_bytes, const netem_profile_t *p, int dp, int overlap,
                       const netem_profile_t *dp_prof, const predict_buckets_t *buckets, double *predicted,
                       char *err, size_t errlen) __attribute__((warn_unused_result));

/* Fills a sim_dp_t from buckets[stages] (the rows point into buckets). */
void predict_dp_model(const predict_buckets_t *buckets, int stages, int dp, int overlap, const sim_link_t *link,
                      int *n, const double **bytes, const double **ready, sim_dp_t *out);

#endif
