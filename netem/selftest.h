/* Fidelity self-test: between hosts 0 and 1 of a topology, measures the round trip of
 * small messages and the goodput of one large TCP transfer, unshaped first (the base
 * path) and then under a profile, and compares them with what the profile promises.
 * Plain TCP sockets made inside the host namespaces; no external tools. */
#ifndef PN_NETEM_SELFTEST_H
#define PN_NETEM_SELFTEST_H

#include <stddef.h>

#include "netem/profile.h"
#include "netem/topo.h"

#define NETEM_SELFTEST_TOLERANCE 0.05

typedef struct {
    double rtt_base;          /* s: minimum TCP round trip, unshaped */
    double rtt_configured;    /* s: 2 x delay + rtt_base */
    double rtt_measured;      /* s: minimum under the profile (median when it has jitter) */
    double rtt_median;        /* s: median under the profile */
    double rtt_err;           /* relative */
    int rtt_judged;
    double ceiling;           /* bit/s: unshaped goodput, median window (0 when not measured;
                               * measured when asked or when the goodput falls short) */
    double goodput_expected;  /* bit/s: what the rate allows after headers (MTU 1500) */
    double goodput_measured;  /* bit/s: median of 6 windows of 0.5 s after slow start */
    double goodput_mean;      /* bit/s: over the 6 windows */
    double goodput_err;
    int goodput_judged;
    int ok;                   /* every judged figure within NETEM_SELFTEST_TOLERANCE */
    int host_limited;         /* this host's own unshaped goodput is below what is expected */
    char emulator[16];        /* backend used */
    char why[192];
} netem_selftest_result_t;

/* t has at least 2 hosts; the profile is applied to every link with `emulator` and left
 * applied afterwards. with_ceiling also measures the unshaped goodput. Errors:
 * -ENOSYS for the shim (it shapes the pipeline transport, not these sockets). */
int netem_selftest_run(netem_topo_t *t, const netem_profile_t *p, const char *emulator,
                       int with_ceiling, netem_selftest_result_t *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
