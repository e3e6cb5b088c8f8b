/* pipenem run: one configuration on this machine. Sets up the network emulation the
 * configuration asks for (netem's namespace topology, or the in-transport shim), starts
 * one stage process per stage through pipeline/launch.h and prints the job's table. */
#include "bench/cli.h"
#include "bench/results.h"
#include "bench/vocab.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "netem/emulator.h"
#include "netem/topo.h"
#include "pipeline/privs.h"
#include "pipeline/launch.h"
#include "pipeline/runcfg.h"
#include "pipeline/stage.h"
#include "pipeline/transport.h"

static const cli_section_t sections[] = {
    {"model and compute", model_options_group, NULL, NULL, 0},
    {"pipeline", runcfg_pipeline_group, NULL, NULL, 0},
    {"network", runcfg_network_group, NULL, NULL, 0},
    {"stage processes", vocab_local_group, NULL, NULL, 0},
    {NULL, runcfg_multihost_group, NULL, NULL, 1},   /* refused with a pointer to `stage` */
    {NULL, NULL, NULL, NULL, 0},
};

static const cli_override_t overrides[] = {
    {MODEL_OPT_THREADS, NULL, NULL, "the cores divided among the stages"},
    {MODEL_OPT_STAGES, NULL, NULL, "the number of --partition entries, else 1; sweep's is 3, DT-FM's hosts"},
    {0, NULL, NULL, NULL},
};

static const cli_spec_t spec = {
    "run",
    "usage: pipenem run --stages P [options]\n"
    "run one configuration with one stage process per stage on this machine, print per-iteration\n"
    "time, loss and tokens/s, then throughput and memory per stage.\n\n",
    sections, overrides, NULL, NULL,
};

static volatile sig_atomic_t got_signal;

static void on_signal(int sig) { got_signal = sig; }

static void on_start(void *arg, int rank, int pid)
{
    (void)arg;
    printf("# rank %d: pid %d\n", rank, pid);
    fflush(stdout);
}

/* run's own options: --user, and the multi-host ones refused with a reason. */
static int own_option(void *ctx, int val, const char *arg)
{
    if (val == VOCAB_OPT_USER) {
        if (!*arg)
            return cli_usage_error("run", "--user needs a user name");
        *(const char **)ctx = arg;
        return 1;
    }
    for (const model_option_t *o = runcfg_multihost_group; o->name; o++)
        if (o->val == val)
            return cli_usage_error("run", "--%s is for `pipenem stage` (multi-host); run starts every stage itself",
                                   o->name);
    return 0;
}

/* --dp above 1: the pipeline's links (--net) and the replicas' (--net-dp) per pair of
 * ranks (launch_pair_profile), shaped in the transport (the shim) or on one namespace per
 * rank with kernel qdiscs (topo, to be destroyed by the caller). As setup_links. */
static int setup_dp_links(const runcfg_t *cfg, netem_profile_t *links, netem_topo_t *topo, launch_params_t *l,
                          const netem_emulator_t **em, char *why, size_t whylen)
{
    char err[1024];
    int P = cfg->stages, world = runcfg_world(cfg);
    netem_profile_t all[NETEM_TOPO_MAX_HOSTS + 1];
    launch_pairs_t pairs = {.stages = P, .dp = cfg->dp, .links = links};
    memset(links, 0, sizeof *links * NETEM_TOPO_MAX_HOSTS);
    if ((P > 1 && netem_net_parse(cfg->net, P, links, err, sizeof err)) ||
        netem_profile_parse(runcfg_net_dp(cfg), &pairs.dp_link, err, sizeof err))
        return cli_usage_error("run", "%s", err);
    /* chosen over every profile in use, as the topology chooses */
    for (int i = 0; i + 1 < P; i++)
        all[i] = links[i];
    all[P - 1] = pairs.dp_link;
    /* all[] is the pipeline's links then the replicas': the message's link numbers are its */
    const char *asked = transport_emulator_asked(cfg->transport, cfg->emulator, 1);
    if (netem_emulator_choose(asked, all, P, em, why, whylen, err, sizeof err))
        return cli_usage_error("run", "--net %s with --net-dp %s (link %d-%d below: the replicas'): %s", cfg->net,
                               runcfg_net_dp(cfg), P - 1, P, err);
    if ((*em)->in_transport)
        l->shim_links = links;
    if (!(*em)->changes_kernel)
        return 0;
    if (world > NETEM_TOPO_MAX_HOSTS)
        return cli_usage_error("run", "--dp %d x %d stages with kernel shaping: the local topology holds at most %d "
                               "hosts", cfg->dp, P, NETEM_TOPO_MAX_HOSTS);
    if (netem_topo_create(topo, world, err, sizeof err) ||
        netem_topo_apply_pairs(topo, launch_pair_profile, &pairs, (*em)->name, err, sizeof err)) {
        fprintf(stderr, "pipenem run: network emulation: %s\n", err);
        netem_topo_destroy(topo);
        return CLI_FAIL;
    }
    snprintf(why, whylen, "%s", topo->why);
    l->topo = topo;
    return 0;
}

/* The links --net asks for: shaped in the transport (the shim), or on one network
 * namespace per stage with kernel qdiscs (topo, to be destroyed by the caller), or not at
 * all. 0, or CLI_USAGE / CLI_FAIL after a message. */
static int setup_links(const runcfg_t *cfg, netem_profile_t *links, netem_topo_t *topo, launch_params_t *l,
                       const netem_emulator_t **em, char *why, size_t whylen)
{
    char err[1024];
    if (cfg->dp > 1 && (strcmp(cfg->net, "default") || strcmp(runcfg_net_dp(cfg), "default")))
        return setup_dp_links(cfg, links, topo, l, em, why, whylen);
    if (!strcmp(cfg->net, "default"))
        return 0;
    if (cfg->stages > NETEM_TOPO_MAX_HOSTS)
        return cli_usage_error("run", "--net with %d stages: the local topology holds at most %d hosts", cfg->stages,
                               NETEM_TOPO_MAX_HOSTS);
    if (netem_net_parse(cfg->net, cfg->stages, links, err, sizeof err))
        return cli_usage_error("run", "%s", err);
    const char *asked = transport_emulator_asked(cfg->transport, cfg->emulator, 1);
    if (netem_emulator_choose(asked, links, cfg->stages - 1, em, why, whylen, err, sizeof err))
        return cli_usage_error("run", "%s", err);
    if ((*em)->in_transport) {
        l->shim_links = links;
    } else if ((*em)->changes_kernel) {
        if (netem_topo_create(topo, cfg->stages, err, sizeof err) ||
            netem_topo_apply(topo, links, (*em)->name, err, sizeof err)) {
            fprintf(stderr, "pipenem run: network emulation: %s\n", err);
            netem_topo_destroy(topo);
            return CLI_FAIL;
        }
        l->topo = topo;
    }
    return 0;
}

int cmd_run(int argc, char **argv)
{
    runcfg_t cfg;
    char err[1024];
    const char *user = NULL;
    runcfg_defaults(&cfg);
    int prc = cli_parse_runcfg(&spec, argc, argv, &cfg, own_option, &user);
    if (prc)
        return prc < 0 ? CLI_OK : prc;
    if (optind < argc)
        return cli_usage_error(argv[0], "unexpected argument '%s'", argv[optind]);
    if (runcfg_finish(&cfg, err, sizeof err))
        return cli_usage_error(argv[0], "%s", err);
    if (user && privs_check_user(user, err, sizeof err))
        return cli_usage_error(argv[0], "%s", err);
    /* Stages share this machine's cores: without a limit each would start one (spinning)
     * OpenMP thread per core and they would fight over them. */
    if (!cfg.model.threads) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        int t = ncpu > runcfg_world(&cfg) ? (int)(ncpu / runcfg_world(&cfg)) : 1;
        cfg.model.threads = cfg.stage_params.threads = t;
    }
    launch_params_t l = {0};
    netem_profile_t links[NETEM_TOPO_MAX_HOSTS];
    netem_topo_t topo;
    memset(&topo, 0, sizeof topo);
    const netem_emulator_t *em = NULL;
    char why[256] = "default links: nothing emulated";
    int nrc = setup_links(&cfg, links, &topo, &l, &em, why, sizeof why);
    if (nrc)
        return nrc;
    char line[4096];
    runcfg_describe(&cfg, line, sizeof line);
    printf("# pipenem run: %d stage processes on this machine, %s\n# %s\n# emulator: %s (%s)\n", runcfg_world(&cfg),
           !l.topo ? "links over loopback"
           : cfg.dp > 1 ? "one network namespace per rank (D x P), UCX over tcp on each host's veth"
                        : "one network namespace per stage, UCX over tcp on each host's veth",
           line, em ? em->name : "none", why);
    fflush(stdout);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    l.cfg = &cfg;
    l.user = user;
    l.stop = &got_signal;
    l.on_start = on_start;
    stage_summary_t sum = {0};
    launch_failure_t fail;
    int rc = launch_run(&l, &sum, &fail, err, sizeof err);
    netem_topo_destroy(&topo);
    if (rc) {
        fprintf(stderr, "pipenem run: FAILED: %s\n", err);
        printf("# FAILED\n");
        return CLI_FAIL;
    }
    stage_summary_print(&sum, &cfg, stdout);
    int ok = 1;
    if (cfg.trace[0] && results_exec_trace_save(cfg.trace, sum.rows, sum.n_rows, err, sizeof err)) {
        fprintf(stderr, "pipenem run: cannot write the trace: %s\n", err);
        ok = 0;
    }
    stage_summary_destroy(&sum);
    printf("# %s\n", ok ? "OK" : "FAILED");
    return ok ? CLI_OK : CLI_FAIL;
}
