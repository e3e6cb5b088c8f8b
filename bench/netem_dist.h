/* `pipenem netem selftest --dist-url tcp://RANK0:PORT --net PROFILE ...` under a launcher
 * (one rank per host, rank and size from its environment): for each profile every rank
 * shapes its traffic to its pipeline neighbours as the sweep does (bench/distctl.h), and
 * each link's two ends measure it: rank L the round trip of small messages and rank L+1
 * the goodput of one TCP stream from L (port PORT + 2). Rank 0 prints configured vs
 * measured per profile and link, with the same tolerance as the local self-test. */
#ifndef PN_BENCH_NETEM_DIST_H
#define PN_BENCH_NETEM_DIST_H

#include "netem/profile.h"

/* Runs this rank's part; rank 0 prints the table. The exit status: 0 every judged figure
 * within tolerance, 1 failed (a message on stderr), 2 usage (no launcher environment). */
int netem_dist_selftest(const char *url, const netem_profile_t *prof, int n);

#endif
