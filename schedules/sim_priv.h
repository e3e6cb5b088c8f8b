/* Internal to schedules/: what sim.c and sim_replay.c share. */
#ifndef PN_SCHEDULES_SIM_PRIV_H
#define PN_SCHEDULES_SIM_PRIV_H

#include <math.h>

#include "schedules/sim.h"

/* err's text; the status is returned separately where this is used. */
#define seterr(err, errlen, ...) ((void)pn_err(err, errlen, 0, __VA_ARGS__))

static inline int bad_seconds(double v) { return !isfinite(v) || v < 0; }
static inline int is_send(sched_op_kind_t k) { return k == SCHED_SEND_ACT || k == SCHED_SEND_GRAD; }

/* Per-op durations and sizes of a plan; one block each, pointers per stage. */
typedef struct {
    double **dur, **bytes;
} opvals_t;

int sim_opvals_alloc(const sched_plan_t *p, opvals_t *v) PN_WUR;
void sim_opvals_free(opvals_t *v);

/* sim_dp.c: whether dp asks for an all-reduce (D > 1); its validation (names the bad
 * field); one stage's all-reduce after its last backward spanned last_bwd: *ar is its
 * span, the return its end. */
int sim_dp_active(const sim_dp_t *dp);
int sim_dp_check(const sim_dp_t *dp, int stages, char *err, size_t errlen) PN_WUR;
double sim_dp_stage(const sim_dp_t *dp, int s, sim_span_t last_bwd, sim_span_t *ar);

#endif
