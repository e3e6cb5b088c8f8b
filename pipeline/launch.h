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
    const netem_topo_t *topo;            /* stage r runs in host r's namespace; NULL = loopback. With
                                            --dp above 1 and kernel shaping it must have been applied
                                            per pair (netem_topo_apply_pairs, launch_pair_profile) */
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

/* The links of a --dp job (rank = d*P + s, runcfg.h) per ordered pair of ranks, for
 * netem_topo_apply_pairs: the pairs the in-transport shim shapes (pipeline/shim.c), so
 * both emulators shape the same traffic. */
typedef struct {
    int stages, dp;
    const netem_profile_t *links;   /* [stages-1]: links[s] joins stages s and s+1 of each replica */
    netem_profile_t dp_link;        /* between a stage and the same stage of replicas d+-1 (the ring) */
} launch_pairs_t;

/* A netem_topo_pair_fn over a launch_pairs_t: stages s and s+1 of one replica get
 * links[s] both ways; with more than 2 stages the first and last stage of a replica (the
 * tied-embedding exchange) get links[P-2] from the first to the last and links[0] back;
 * a stage and the same stage of its ring neighbours (replicas d+-1 mod D) get dp_link;
 * every other pair is default (unshaped). */
void launch_pair_profile(void *arg, int src, int dst, netem_profile_t *out);

/* Runs the job. 0 and the summary when every stage succeeded; otherwise an error naming
 * the dead rank, *fail filled, and no stage process left. Each stage prints its own
 * error, if any, to stderr as "pipenem: rank R: ...". */
int launch_run(const launch_params_t *p, stage_summary_t *out, launch_failure_t *fail, char *err,
               size_t errlen) PN_WUR;

#endif
