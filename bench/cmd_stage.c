/* pipenem stage: one stage process of a multi-host job (one per host or GPU, started by
 * hand, by mpirun or by srun). Rank 0 prints the job's table once every rank is done. */
#include "bench/cli.h"
#include "bench/results.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/limits.h"
#include "netem/emulator.h"
#include "netem/profile.h"
#include "pipeline/jobenv.h"
#include "pipeline/runcfg.h"
#include "pipeline/stage.h"

static const cli_section_t sections[] = {
    {"multi-host", runcfg_multihost_group, NULL, NULL, 0},
    {"model and compute", model_options_group, NULL, NULL, 0},
    {"pipeline", runcfg_pipeline_group, NULL, NULL, 0},
    {"network", runcfg_network_group, NULL, NULL, 0},
    {NULL, NULL, NULL, NULL, 0},
};

static const cli_override_t overrides[] = {
    {MODEL_OPT_STAGES, NULL, NULL, "the world size: one stage per rank"},
    {RUNCFG_OPT_EMULATOR, NULL,
     "how --net is applied: on real hosts only shim shapes inside the job (the transport\n"
     "itself holds back and paces each message); kernel shaping is `pipenem netem apply`\n"
     "on each host",
     NULL},
    {RUNCFG_OPT_UCX_TLS, NULL, NULL, "UCX's own choice"},
    {RUNCFG_OPT_UCX_DEVICES, NULL, NULL, "the interface that reaches rank 0"},
    {0, NULL, NULL, NULL},
};

static const cli_spec_t spec = {
    "stage",
    "usage: pipenem stage --dist-url tcp://HOST:PORT [--world-size P --rank R] [--token T] [options]\n"
    "run one pipeline stage of a multi-host job; rank 0 listens on HOST:PORT and prints the results.\n"
    "Every rank must get the same options.\n\n",
    sections, overrides, NULL, NULL,
};

int cmd_stage(int argc, char **argv)
{
    runcfg_t cfg;
    char err[1024];
    runcfg_defaults(&cfg);
    int prc = cli_parse_runcfg(&spec, argc, argv, &cfg, NULL, NULL);
    if (prc)
        return prc < 0 ? CLI_OK : prc;
    if (optind < argc)
        return cli_usage_error(argv[0], "unexpected argument '%s'", argv[optind]);
    if (cfg.rank < 0 || cfg.world_size < 0) {
        int r, s;
        const char *src;
        int rc = jobenv_rank(&r, &s, &src, err, sizeof err);
        if (rc == -ENOENT)
            return cli_usage_error(argv[0], "no rank: pass --rank and --world-size, or start under srun or mpirun");
        if (rc)
            return cli_usage_error(argv[0], "%s", err);
        if (cfg.rank < 0)
            cfg.rank = r;
        if (cfg.world_size < 0)
            cfg.world_size = s;
    }
    if (!cfg.model.stages && !cfg.model.n_partition) /* --dp D: D replicas of world/D stages */
        cfg.model.stages = cfg.world_size % cfg.dp ? cfg.world_size : cfg.world_size / cfg.dp;
    if (runcfg_finish(&cfg, err, sizeof err))
        return cli_usage_error(argv[0], "%s", err);
    if (cfg.rank >= cfg.world_size)
        return cli_usage_error(argv[0], "rank %d is not below world size %d", cfg.rank, cfg.world_size);
    /* Real hosts: the kernel emulator is applied to the NIC by `pipenem netem apply` on
     * each host; inside the job only the shim can shape. */
    static netem_profile_t links[PN_MAX_WORLD];
    stage_params_t sp = {.cfg = &cfg, .rank = cfg.rank, .listen_fd = -1};
    if (strcmp(cfg.net, "default")) {
        const netem_emulator_t *em = netem_emulator_find(cfg.emulator);
        if (!em || !em->in_transport)
            return cli_usage_error(argv[0], "--net %s with --emulator %s: on real hosts apply the profile with "
                                            "`pipenem netem apply` on each host, or shape inside the job with "
                                            "--emulator shim", cfg.net, cfg.emulator);
        if (netem_net_parse(cfg.net, cfg.stages, links, err, sizeof err))
            return cli_usage_error(argv[0], "%s", err);
        sp.shim_links = links;
    }
    if (cfg.world_size > 1) {
        if (!cfg.dist_url[0])
            return cli_usage_error(argv[0], "--dist-url tcp://HOST:PORT is required with %d ranks", cfg.world_size);
        if (jobenv_url_parse(cfg.dist_url, sp.host, sizeof sp.host, &sp.port, err, sizeof err))
            return cli_usage_error(argv[0], "%s", err);
        /* UCX's TCP transport listens on every device it may use: unless told otherwise,
         * only on the interface of the job's network (the one that reaches rank 0). */
        if (!cfg.ucx_devices[0]) {
            static char ifname[64];
            if (jobenv_route_ifname(sp.host, sp.port, ifname, sizeof ifname, err, sizeof err)) {
                fprintf(stderr, "pipenem stage: rank %d: %s (give --ucx-devices)\n", cfg.rank, err);
                return CLI_FAIL;
            }
            sp.ucx_devices = ifname;
        }
    }
    sp.token = cfg.token;
    if (!cfg.token[0] && jobenv_token(&sp.token) != 0)
        return cli_usage_error(argv[0], "no job token: pass the same --token to every rank (or set PIPENEM_TOKEN)");
    if (cfg.rank == 0) {
        char line[4096];
        runcfg_describe(&cfg, line, sizeof line);
        printf("# pipenem stage: %d ranks, rendezvous %s, UCX on %s\n# %s\n", cfg.world_size,
               cfg.dist_url[0] ? cfg.dist_url : "(single process)",
               sp.ucx_devices ? sp.ucx_devices : cfg.ucx_devices[0] ? cfg.ucx_devices : "UCX's own choice", line);
        fflush(stdout);
    }
    stage_summary_t sum = {0};
    int rc = stage_run(&sp, &sum, err, sizeof err);
    if (rc) {
        fprintf(stderr, "pipenem stage: %s\n", err);
        if (cfg.rank == 0)
            printf("# FAILED\n");
        return CLI_FAIL;
    }
    if (cfg.rank == 0) {
        stage_summary_print(&sum, &cfg, stdout);
        if (cfg.trace[0] && results_exec_trace_save(cfg.trace, sum.rows, sum.n_rows, err, sizeof err)) {
            fprintf(stderr, "pipenem stage: cannot write the trace: %s\n", err);
            printf("# FAILED\n");
            stage_summary_destroy(&sum);
            return CLI_FAIL;
        }
        printf("# OK\n");
        stage_summary_destroy(&sum);
    }
    return CLI_OK;
}
