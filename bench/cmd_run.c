/* pipenem run: one configuration on this machine. Sets up the network emulation the
 * configuration asks for (netem's namespace topology, or the in-transport shim), starts
 * one stage process per stage through pipeline/launch.h and prints the job's table. */
#include "bench/cli.h"
#include "bench/results.h"

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

static const char usage[] =
    "usage: pipenem run --stages P [options]\n"
    "run one configuration with one stage process per stage on this machine, print per-iteration\n"
    "time, loss and tokens/s, then throughput and memory per stage.\n\n"
    "  --user NAME                   started as root: stage processes run as NAME (e.g. nobody);\n"
    "                                only the launcher keeps root (network emulation)\n";

static volatile sig_atomic_t got_signal;

static void on_signal(int sig) { got_signal = sig; }

static void on_start(void *arg, int rank, int pid)
{
    (void)arg;
    printf("# rank %d: pid %d\n", rank, pid);
    fflush(stdout);
}

int cmd_run(int argc, char **argv)
{
    enum { OPT_USER = 0x7000 };
    static const struct option own[] = {{"help", no_argument, NULL, 'h'},
                                         {"user", required_argument, NULL, OPT_USER},
                                         {NULL, 0, NULL, 0}};
    struct option opts[96];
    runcfg_t cfg;
    char err[1024];
    const char *user = NULL;
    runcfg_defaults(&cfg);
    if (runcfg_options_table(opts, sizeof opts / sizeof *opts, own) < 0)
        return cli_usage_error(argv[0], "internal: option table too small");
    optind = 1;
    int c;
    while ((c = cli_getopt(argv[0], argc, argv, "h", opts)) != -1) {
        if (c == -2)
            return CLI_USAGE;
        if (c == 'h') {
            printf("%s%s", usage, runcfg_help());
            return CLI_OK;
        }
        if (c == OPT_USER) {
            if (!*optarg)
                return cli_usage_error(argv[0], "--user needs a user name");
            user = optarg;
            continue;
        }
        if (c == RUNCFG_OPT_DIST_URL || c == RUNCFG_OPT_RANK || c == RUNCFG_OPT_WORLD_SIZE || c == RUNCFG_OPT_TOKEN)
            for (const struct option *o = opts; o->name; o++)
                if (o->val == c)
                    return cli_usage_error(argv[0], "--%s is for `pipenem stage` (multi-host); run starts every "
                                                    "stage itself", o->name);
        int rc = runcfg_option(&cfg, c, optarg, err, sizeof err);
        if (rc < 0)
            return cli_usage_error(argv[0], "%s", err);
        if (rc == 0)
            return cli_usage_error(argv[0], "option '%s' is not handled", argv[optind - 1]);
    }
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
        int t = ncpu > cfg.stages ? (int)(ncpu / cfg.stages) : 1;
        cfg.model.threads = cfg.stage_params.threads = t;
    }
    launch_params_t l = {0};
    netem_profile_t links[NETEM_TOPO_MAX_HOSTS];
    netem_topo_t topo;
    memset(&topo, 0, sizeof topo);
    const netem_emulator_t *em = NULL;
    char why[256] = "default links: nothing emulated";
    if (strcmp(cfg.net, "default")) {
        if (cfg.stages > NETEM_TOPO_MAX_HOSTS)
            return cli_usage_error(argv[0], "--net with %d stages: the local topology holds at most %d hosts",
                                   cfg.stages, NETEM_TOPO_MAX_HOSTS);
        if (netem_net_parse(cfg.net, cfg.stages, links, err, sizeof err))
            return cli_usage_error(argv[0], "%s", err);
        if (netem_emulator_choose(cfg.emulator, links, cfg.stages - 1, &em, why, sizeof why, err, sizeof err))
            return cli_usage_error(argv[0], "%s", err);
        if (!strcmp(em->name, "shim")) {
            l.shim_links = links;
        } else if (strcmp(em->name, "none")) {
            if (netem_topo_create(&topo, cfg.stages, err, sizeof err) ||
                netem_topo_apply(&topo, links, em->name, err, sizeof err)) {
                fprintf(stderr, "pipenem run: network emulation: %s\n", err);
                netem_topo_destroy(&topo);
                return CLI_FAIL;
            }
            l.topo = &topo;
        }
    }
    char line[4096];
    runcfg_describe(&cfg, line, sizeof line);
    printf("# pipenem run: %d stage processes on this machine, %s\n# %s\n# emulator: %s (%s)\n", cfg.stages,
           l.topo ? "one network namespace per stage, UCX over tcp on each host's veth" : "links over loopback",
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
