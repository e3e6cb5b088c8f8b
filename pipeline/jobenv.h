/* Where a stage learns who it is before any socket opens: rank and world size from the
 * launcher's environment (Slurm, Open MPI, PMI), the job token, the --dist-url address and
 * the interface that reaches it. Pure reads of the environment and the routing table. */
#ifndef PN_PIPELINE_JOBENV_H
#define PN_PIPELINE_JOBENV_H

#include <stddef.h>

#include "common/err.h"

/* Rank and size from the launcher's environment: SLURM_PROCID/SLURM_NTASKS,
 * OMPI_COMM_WORLD_RANK/SIZE, PMI_RANK/PMI_SIZE. Returns 0 and the variable family's name
 * in *source, -ENOENT when none is set, -EINVAL (with a message) when one is malformed. */
int jobenv_rank(int *rank, int *size, const char **source, char *err, size_t errlen) PN_WUR;

/* A job token from the launcher's environment (PIPENEM_TOKEN, SLURM_JOB_ID+STEP,
 * PMIX_NAMESPACE, OMPI_MCA_ess_base_jobid): 0 and a static or environment string, or
 * -ENOENT. */
int jobenv_token(const char **token) PN_WUR;

/* "tcp://HOST:PORT" (HOST may be [IPv6]) into host and port. */
int jobenv_url_parse(const char *url, char *host, size_t hostlen, int *port, char *err, size_t errlen) PN_WUR;

/* The name of this host's network interface that traffic to HOST:PORT leaves through (the
 * kernel's route choice; no packet is sent), e.g. "eth0", or "lo" for a loopback HOST: the
 * one network a multi-host job uses, so that UCX listens there and nowhere else. */
int jobenv_route_ifname(const char *host, int port, char *ifname, size_t len, char *err, size_t errlen) PN_WUR;

#endif
