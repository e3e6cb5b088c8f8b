/* The pipeline simulator: times every stage's op list for given compute costs and link
 * models (or for a measured trace with chosen durations replaced), and reports each
 * op's start and end, the iteration time, busy time and bubbles per stage, and the
 * critical path. Pure C, no processes, no network.
 *
 * Semantics. Compute (FWD, BWD, BWD_INPUT, BWD_WEIGHT, OPT_STEP) on one stage is serial,
 * in list order; a hand-off between chunks on one stage is the order of its ops. A
 * receive waits until its message has arrived and takes no time of its own. A send is
 * handed to its link when the ops before it on the stage are done and takes no stage
 * time. Each direction of each link is independent (full duplex) and carries its
 * messages in FIFO order, each occupying it for overhead + bytes*8/bandwidth; a message
 * leaves when it was handed over and the direction is free, and arrives `delay` after
 * its last bit left, so messages are in flight concurrently (latency is pipelined).
 * SIM_SEND_BLOCKING models runtimes whose next send waits until the previous one was
 * delivered: one send stream per stage serves both directions in list order; compute
 * still proceeds. Time 0 is when every stage starts the iteration. */
#ifndef PN_SCHEDULES_SIM_H
#define PN_SCHEDULES_SIM_H

#include <stddef.h>

#include "schedules/sched.h"

#include "common/err.h"

typedef enum { SIM_SEND_PIPELINED, SIM_SEND_BLOCKING } sim_send_mode_t;
const char *sim_send_mode_name(sim_send_mode_t m); /* "pipelined", "blocking" */
int sim_send_mode_parse(const char *name, sim_send_mode_t *out) PN_WUR;

/* Compute cost of one stage (rank), seconds: per micro-batch (fwd, bwd), per iteration
 * (opt). Schedules that split the backward take half of bwd for B and half for W (the
 * emulate backend's model). A rank holding v chunks spends 1/v of fwd and bwd on each. */
typedef struct {
    double fwd, bwd, opt;
} sim_cost_t;

/* One direction of the link between neighbouring stages. All zero = a free link.
 * Links are physical directions: stage i -> i+1 (link_fwd[i]) and i+1 -> i (link_bwd[i])
 * carry every message going that way, activations and gradients alike; with interleaved
 * chunks the last stage also sends to stage 0 (modelled as link_fwd[0]) and stage 0 to
 * the last (as link_bwd[0]). */
typedef struct {
    double delay;     /* one-way, seconds */
    double bandwidth; /* bits per second; 0 = unlimited */
    double overhead;  /* seconds per message, occupies the link like the payload */
} sim_link_t;

/* Seconds one message of `bytes` occupies the link: overhead + bytes*8/bandwidth. */
double sim_link_occupancy(const sim_link_t *l, double bytes);

/* --slack auto: try K = 0..SIM_SLACK_AUTO_MAX, take the smallest K whose predicted time
 * is within SIM_SLACK_AUTO_TOL of the best. */
#define SIM_SLACK_AUTO (-1)
#define SIM_SLACK_AUTO_MAX 8
#define SIM_SLACK_AUTO_TOL 0.01

/* Data parallelism (--dp D): D replicas of the pipeline; before its optimizer step, each
 * stage's gradients are averaged across its D replicas by a ring all-reduce
 * (reduce-scatter then all-gather) over the DP links, in buckets. A bucket of B bytes
 * takes 2(D-1) steps, each sending B/D bytes to the next replica while receiving as much
 * from the previous one, so each step pays the link's one-way delay plus its occupancy of
 * B/D bytes: sim_dp_bucket_time. A stage's buckets go one after another on its ring (the
 * replicas compute in lockstep: every replica of a stage has the same costs). Without
 * overlap every bucket is ready when the stage's last backward ends (BWD, or BWD_WEIGHT
 * where the backward is split); with overlap bucket k is ready once the fraction
 * ready[k] of that last backward has run (a layer's gradients are final when its
 * backward of the last micro-batch ends; buckets in the order the backward finishes
 * them, last layer first). The stage's OPT_STEP starts no earlier than its last bucket's
 * end. Per rank, not per chunk: with interleaved chunks every chunk's gradients count as
 * final at the rank's last backward. replicas 0 or 1 = no all-reduce: times unchanged. */
typedef struct {
    int replicas;                       /* D */
    int overlap;                        /* --dp-overlap */
    const sim_link_t *link;             /* one hop of the ring, each direction; NULL = free */
    const int *n_buckets;               /* [stages], >= 1 each */
    const double *const *bucket_bytes;  /* [stage][k]: gradient bytes of bucket k */
    const double *const *bucket_ready;  /* [stage][k]: non-decreasing in (0, 1], the last
                                         * 1; NULL = in proportion to the bytes so far */
} sim_dp_t;

/* Seconds one bucket of `bytes` takes across `replicas`: 2(D-1) x (delay + occupancy of
 * bytes/D); 0 for D <= 1. */
double sim_dp_bucket_time(const sim_link_t *l, int replicas, double bytes);

/* A configuration to predict from costs. */
typedef struct {
    const char *schedule;        /* a sched_names() entry */
    int stages, micro_batches;
    int slack;                   /* K of 1f1b-slack, or SIM_SLACK_AUTO; ignored by others */
    const sim_cost_t *cost;      /* [stages] */
    const sim_link_t *link_fwd;  /* [stages-1]: entry i carries stage i -> i+1; NULL = free */
    const sim_link_t *link_bwd;  /* [stages-1]: entry i carries stage i+1 -> i; NULL = free */
    double act_bytes, grad_bytes; /* per message */
    sim_send_mode_t send_mode;
} sim_config_t;

/* The generic input: op lists with a duration per op. Used by sim_run and sim_replay,
 * and directly by anyone with their own op lists. */
typedef struct {
    const sched_plan_t *plan;
    /* [stage][op]. Compute ops: seconds. Sends: NaN = time the message with the link
     * model, else seconds from leaving to arrival (the link is then not occupied: the
     * measured time already includes what the link did). Receives: ignored. */
    const double *const *dur;
    const double *const *bytes;  /* [stage][op]: message size of sends; other ops ignored */
    const sim_link_t *link_fwd;  /* as in sim_config_t */
    const sim_link_t *link_bwd;
    sim_send_mode_t send_mode;
} sim_graph_t;

typedef struct {
    double start, end;
} sim_span_t;

typedef struct {
    int stage;
    size_t op;
} sim_ref_t;

typedef struct {
    sched_plan_t plan;    /* the op lists simulated (owned) */
    int slack;            /* K used (after auto); -1 if the schedule takes none, and for
                           * sim_graph_run and sim_replay */
    /* [stage][op]. Compute: when it ran. Send: when it left (started occupying the link)
     * and when it arrived. Receive: when the stage reached it and when it could go on
     * (max of that and the arrival). */
    sim_span_t **span;
    double time;          /* iteration time: the last end of any op */
    double *busy;         /* [stage]: seconds of compute */
    double *bubble;       /* [stage]: 1 - busy/time */
    double bubble_mean;   /* 1 - sum(busy) / (stages * time) */
    int *peak_inflight;   /* [stage]: (mb, chunk) activations held at once */
    /* The chain of ops, first to last, whose ends determine the iteration time: each
     * started as soon as its predecessor in the chain ended. The ends' increments add
     * up to `time`. */
    sim_ref_t *critical;
    size_t n_critical;
    /* [stage] with a sim_dp_t of D > 1, else NULL: the all-reduce, from its first
     * bucket's start to its last bucket's end. */
    sim_span_t *allreduce;
} sim_result_t;

/* Validates the configuration (names the bad field), builds the plan, simulates. */
int sim_run(const sim_config_t *cfg, sim_result_t *out, char *err, size_t errlen) PN_WUR;
/* The same with `chunks` per rank (--chunks of interleaved-1f1b; 0 = the schedule's
 * default); sim_run is chunks = 0. */
int sim_run_chunks(const sim_config_t *cfg, int chunks, sim_result_t *out, char *err, size_t errlen) PN_WUR;

/* The same with D replicas all-reducing each stage's gradients (dp NULL or one replica:
 * exactly sim_run_chunks). With slack auto, K is picked with the all-reduce included. */
int sim_run_dp(const sim_config_t *cfg, int chunks, const sim_dp_t *dp, sim_result_t *out, char *err,
               size_t errlen) PN_WUR;

/* The predicted times of 1f1b-slack for K = 0..SIM_SLACK_AUTO_MAX (cfg->schedule and
 * cfg->slack are ignored) and the K that --slack auto picks. */
int sim_slack_auto(const sim_config_t *cfg, int *slack, double times[SIM_SLACK_AUTO_MAX + 1],
                   char *err, size_t errlen) PN_WUR;
/* The same with the all-reduce of dp in every run (NULL: sim_slack_auto). */
int sim_slack_auto_dp(const sim_config_t *cfg, const sim_dp_t *dp, int *slack, double times[SIM_SLACK_AUTO_MAX + 1],
                      char *err, size_t errlen) PN_WUR;

/* Validates the op lists (sched_plan_validate: names stage and op), the numbers and the
 * links, then simulates. The result holds a copy of the plan. */
int sim_graph_run(const sim_graph_t *g, sim_result_t *out, char *err, size_t errlen) PN_WUR;
/* The same with the all-reduce of dp (NULL: sim_graph_run). */
int sim_graph_run_dp(const sim_graph_t *g, const sim_dp_t *dp, sim_result_t *out, char *err, size_t errlen) PN_WUR;

/* Frees a result; accepts a zeroed or half-built one; leaves it zeroed. */
void sim_result_destroy(sim_result_t *r);

/* ---- replay of a measured trace ---- */

/* One measured op, in the order the stage executed it (trace rows of one iteration). */
typedef struct {
    sched_op_kind_t kind;
    int mb;        /* -1 for OPT_STEP */
    double start, end; /* seconds, any common origin */
    double bytes;  /* message size of sends */
} sim_trace_op_t;

typedef struct {
    int stages, micro_batches;
    const sim_trace_op_t *const *ops; /* [stage] */
    const size_t *n_ops;              /* [stage] */
} sim_trace_t;

#define SIM_KIND_BIT(k) (1u << (k))
#define SIM_REPLACE_COMPUTE                                                                        \
    (SIM_KIND_BIT(SCHED_FWD) | SIM_KIND_BIT(SCHED_BWD) | SIM_KIND_BIT(SCHED_OPT_STEP) |         \
     SIM_KIND_BIT(SCHED_BWD_INPUT) | SIM_KIND_BIT(SCHED_BWD_WEIGHT))

typedef enum {
    SIM_MEDIAN_PER_STAGE, /* over the op's own stage: removes slow micro-batches */
    SIM_MEDIAN_ALL,       /* over every stage: also removes a slow stage */
} sim_median_scope_t;

/* How sends are timed in a replay (sim_replay_t.comm_measured). */
enum {
    SIM_COMM_LINK = 0,    /* the link model (link_fwd/link_bwd) with the trace's bytes */
    SIM_COMM_SEND = 1,    /* each send's own measured end - start, as its time in flight */
    SIM_COMM_ARRIVAL = 2, /* from the send's start to the matching receive's end */
};

/* How to replay. Compute ops take their measured duration, or the median duration of
 * their kind when their bit is set in `replace`. Communication is, by default
 * (SIM_COMM_LINK), timed with the link model: a send's measured duration includes
 * waiting caused by the very stragglers the replay removes, so it cannot be reused as
 * is. Where no link model is known (e.g. a real cluster), a measured time in flight
 * can be used instead, with the link not modelled (no FIFO serialisation on top):
 * SIM_COMM_SEND takes the send row's own span, which is right for runtimes whose send
 * completes on delivery but near zero for ones that only post it (pipeline/ records
 * the post); SIM_COMM_ARRIVAL takes the span from the send's start to the end of the
 * neighbour's matching receive (k-th send = k-th receive), which is the arrival when
 * the receiver was already waiting and an upper bound otherwise, and needs the trace
 * times on one clock (as pipeline/ writes them). With SIM_KIND_BIT(SEND_*) in
 * `replace`, sends take the median of those times instead. Receive durations are
 * always recomputed: they are waits. */
typedef struct {
    unsigned replace;             /* SIM_KIND_BIT(kind) | ... */
    sim_median_scope_t scope;
    int comm_measured;            /* SIM_COMM_LINK, SIM_COMM_SEND or SIM_COMM_ARRIVAL */
    const sim_link_t *link_fwd;   /* [stages-1], NULL = free (SIM_COMM_LINK only) */
    const sim_link_t *link_bwd;
    sim_send_mode_t send_mode;
} sim_replay_t;

/* Validates the trace's op order like a plan (names stage and op), then simulates it. */
int sim_replay(const sim_trace_t *trace, const sim_replay_t *how, sim_result_t *out,
               char *err, size_t errlen) PN_WUR;

#endif
