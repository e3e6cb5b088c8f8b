/* Local launcher: forks one stage process per stage on this machine (over loopback, or
 * each in its host namespace of a netem topology), rendezvous on a pre-bound socket with a
 * fresh job token, and supervises them: the first rank to die is named, survivors get a
 * grace period to notice and stop on their own, then anything left is killed. Used by
 * `pipenem run` and by the sweep's cells. */
#ifndef PN_PIPELINE_LAUNCH_H
#define PN_PIPELINE_LAUNCH_H

#include <signal.h>

#include "common/err.h"
#include "netem/profile.h"
#include "netem/topo.h"
#include "pipeline/runcfg.h"
#include "pipeline/stage.h"

typedef struct {
    const runcfg_t *cfg;                 /* finished (runcfg_finish) */
    const netem_topo_t *topo;            /* stage r runs in host r's namespace; NULL = loopback */
    const netem_profile_t *shim_links;   /* links shaped inside the transport, or NULL */
    volatile sig_atomic_t *stop;         /* the caller's signal flag: nonzero kills every stage */
    void (*on_start)(void *arg, int rank, int pid);  /* optional, called after every fork */
    void *arg;
    double grace;                        /* seconds survivors get after a death; 0 = 10 */
    const char *user;                    /* started as root: each stage becomes this user once
                                            in its namespace (pipeline/privs.h); NULL = keep */
    const char *const *rank_compute;     /* [stages] or NULL: a rank's own compute backend
                                            (a straggler); NULL entries keep cfg's. Only the
                                            rank's costs change: the config hash stays equal */
} launch_params_t;

typedef struct {
    int dead_rank;     /* the rank that died first (killed by a signal, else the first to fail); -1 */
    int wait_status;   /* its waitpid status */
    int killed;        /* stragglers (or everyone, on stop) had to be killed */
} launch_failure_t;

/* Runs the job. 0 and the summary when every stage succeeded; otherwise an error naming
 * the dead rank, *fail filled, and no stage process left. Each stage prints its own
 * error, if any, to stderr as "pipenem: rank R: ...". */
int launch_run(const launch_params_t *p, stage_summary_t *out, launch_failure_t *fail, char *err,
               size_t errlen) PN_WUR;

#endif
