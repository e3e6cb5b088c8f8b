/* Fidelity self-test: between hosts 0 and 1 of a topology, measures the round trip of
 * small messages and the goodput of one large TCP transfer, unshaped first (the base
 * path) and then under a profile, and compares them with what the profile promises.
 * Plain TCP sockets made inside the host namespaces; no external tools. */
#ifndef PN_NETEM_SELFTEST_H
#define PN_NETEM_SELFTEST_H

#include <stddef.h>

#include "common/err.h"
#include "netem/profile.h"
#include "netem/topo.h"

#define NETEM_SELFTEST_TOLERANCE 0.05

typedef struct {
    double rtt_base;          /* s: minimum TCP round trip, unshaped */
    double rtt_configured;    /* s: 2 x delay + rtt_base (kernel: the delay adds), 2 x delay (shim) */
    double rtt_host;          /* s: the least round trip this host's own path allows under the
                               * profile: rtt_configured (kernel); for the shim, which cannot
                               * deliver before the data arrives, the least over the unshaped
                               * round trips of max(out leg, delay) + max(back leg, delay) */
    double rtt_measured;      /* s: minimum under the profile (median when it has jitter) */
    double rtt_median;        /* s: median under the profile */
    double rtt_err;           /* relative */
    int rtt_judged;
    int rtt_host_limited;     /* the rtt failed, and rtt_host alone is off by more than the tolerance */
    double ceiling;           /* bit/s: unshaped goodput, median window (0 when not measured;
                               * measured when asked or when the goodput falls short) */
    double goodput_expected;  /* bit/s: what the rate allows after headers (MTU 1500) */
    double goodput_measured;  /* bit/s: median of 6 windows of 0.5 s after slow start */
    double goodput_mean;      /* bit/s: over the 6 windows */
    double goodput_err;
    int goodput_judged;
    int ok;                   /* every judged figure within NETEM_SELFTEST_TOLERANCE */
    int goodput_host_limited; /* the goodput failed, and this host cannot carry it even unshaped */
    int host_limited;         /* failed, and every failed figure is the host's (the two above) */
    char emulator[16];        /* backend used */
    char meter[16];           /* how it was measured: "tcp" or the shim meter's name */
    char why[192];
} netem_selftest_result_t;

/* How the two measurements are taken between hosts 0 and 1 of t. The kernel backends
 * are measured with plain TCP sockets (built in); the shim shapes only the pipeline's
 * transport, so whoever links that transport supplies a meter running over it (netem/
 * cannot depend on pipeline/). p is the profile the links carry (the shim applies it
 * itself; the TCP meter ignores it, the kernel does the shaping). */
typedef struct {
    const char *name;
    /* 1: the emulated delay adds to the real path (kernel qdiscs); 0: it hides it (the
     * shim delivers at max(arrival, hand-over + serialisation + delay)) */
    int delay_adds;
    /* n small-message round trips: their minimum and median, seconds; and where the meter
     * times each leg (0 otherwise), the least over the round trips of max(out leg, hold) +
     * max(back leg, hold): what a shaper that holds every message for `hold` seconds
     * after it was handed over, and cannot deliver it before it arrives, would show */
    int (*rtt)(const netem_topo_t *t, const netem_profile_t *p, int n, double hold, double *min, double *median,
               double *held, char *err, size_t errlen);
    /* one bulk stream: after `warm` seconds, 6 windows of `win` seconds; bit/s */
    int (*goodput)(const netem_topo_t *t, const netem_profile_t *p, double warm, double win,
                   double *median, double *mean, char *err, size_t errlen);
} netem_selftest_meter_t;

/* The built-in meter: TCP sockets made inside the host namespaces. */
extern const netem_selftest_meter_t netem_selftest_tcp;

/* t has at least 2 hosts; the profile is applied to every link with `emulator` and left
 * applied afterwards. with_ceiling also measures the unshaped goodput. shim_meter is used
 * when the emulator is the shim. Errors: -ENOSYS for the shim without a shim_meter. */
int netem_selftest_run(netem_topo_t *t, const netem_profile_t *p, const char *emulator,
                       int with_ceiling, const netem_selftest_meter_t *shim_meter,
                       netem_selftest_result_t *out, char *err, size_t errlen)
    PN_WUR;

#endif
