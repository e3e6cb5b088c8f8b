/* Internal to schedules/: the growable op buffer the generators and the text parser
 * fill, shared by sched.c, sched_text.c and sched_check.c. */
#ifndef PN_SCHEDULES_SCHED_PRIV_H
#define PN_SCHEDULES_SCHED_PRIV_H

#include "schedules/sched.h"

typedef struct {
    sched_op_t *ops;
    size_t n, cap;
} sched_opbuf_t;

int sched_opbuf_push(sched_opbuf_t *b, sched_op_kind_t kind, int mb, int chunk) PN_WUR;

/* The plan's chunk count, 0 read as one chunk per rank. */
static inline int sched_plan_chunks(const sched_plan_t *p)
{
    return p->chunks > 0 ? p->chunks : p->stages;
}

#endif
