/* The data-parallel gradient all-reduce: a ring (reduce-scatter, then all-gather) of fp32
 * buffers among the D replicas of a stage, over the pipeline's own transport, in a key
 * space of its own so its messages never match the pipeline's. The result is the mean. */
#ifndef PN_PIPELINE_ALLREDUCE_H
#define PN_PIPELINE_ALLREDUCE_H

#include <stddef.h>

#include "common/err.h"
#include "pipeline/transport.h"

/* Buckets are at most this large unless the caller says otherwise: PyTorch DDP's
 * default bucket_cap_mb (25 MiB), so a stage's gradients overlap backward in a few
 * pieces and a 64 MB layer is still a handful of ring passes. */
enum { ALLREDUCE_BUCKET_DEFAULT = 25 << 20 };

/* The micro-batch field of the transport key: the all-reduce uses [MB_BASE, MB_END), above
 * every micro-batch a schedule can number, and below what the shim's header key can hold
 * (4 x mb < TRANSPORT_MB_MAX). */
enum { ALLREDUCE_MB_BASE = PN_MAX_MICRO_BATCHES, ALLREDUCE_MB_END = TRANSPORT_MB_MAX / 4 };
_Static_assert((long)PN_MAX_MICRO_BATCHES <= (long)ALLREDUCE_MB_BASE, "micro-batches stay below the DP keys");

/* What every other request of the transport fails with (its why) once a step of the
 * all-reduce has failed: a thread that sees it knows the all-reduce's own error is the
 * cause (--dp-overlap's thread runs beside the pipeline's). */
#define ALLREDUCE_FAILED "the all-reduce failed"

typedef struct {
    transport_t *t;          /* connected to ranks[index - 1] and ranks[index + 1] (mod n) */
    int n;                   /* ring members: D */
    int index;               /* this rank's place in the ring */
    const int *ranks;        /* [n] their transport ranks (copied) */
    size_t bucket_bytes;     /* 0 = ALLREDUCE_BUCKET_DEFAULT */
    double timeout;          /* seconds one step may wait; <= 0 = forever */
} allreduce_params_t;

typedef struct {
    transport_t *t;
    int n, index, *ranks;
    size_t bucket_bytes;
    double timeout;
    float *scratch;          /* one chunk of the largest bucket */
    size_t scratch_n;
} allreduce_t;

int allreduce_init(allreduce_t *a, const allreduce_params_t *p, char *err, size_t errlen) PN_WUR;
/* Accepts a zeroed or half-built a. */
void allreduce_destroy(allreduce_t *a);

/* The mean over the ring of buf[n] (every member calls it with the same n, iter and
 * key0), in place: every member ends with the same bits. The call uses the keys key0 ..
 * key0 + allreduce_keys(n) - 1 of iteration iter; calls of one iteration take disjoint
 * ranges, so they never match each other. Larger than bucket_bytes, buf goes round in
 * pieces of that size. Errors name the step and the ring neighbour (its rank) that
 * failed or went silent. */
int allreduce_mean(allreduce_t *a, float *buf, size_t n, int iter, int key0, char *err, size_t errlen) PN_WUR;

/* How many keys a call of n floats uses. */
int allreduce_keys(const allreduce_t *a, size_t n);

#endif
