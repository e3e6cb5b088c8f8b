/* Shared command-line plumbing: the subcommand table and uniform usage errors. */
#include "bench/cli.h"
#include "common/parse.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

const cli_cmd_t cli_cmds[] = {
    {"run", "run one configuration: fork the stage processes here, print per-iteration times", cmd_run},
    {"sweep", "sweep schedules x micro-batch sizes x network profiles, write tables and plots", cmd_sweep},
    {"sim", "predict iteration time and bubbles of a configuration with the simulator", cmd_sim},
    {"schedule", "print and check each stage's op order and a textbook timeline", cmd_schedule},
    {"netem", "apply, show, clear, probe and self-test network emulation profiles", cmd_netem},
    {"stage", "run one stage process (multi-host: one per host, any launcher)", cmd_stage},
    {"report", "regenerate every table and plot of a results directory from its CSVs", cmd_report},
    {"calibrate", "measure per-layer compute time and FLOP/s for the emulated backend", cmd_calibrate},
    {NULL, NULL, NULL},
};

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "pipenem %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return CLI_USAGE;
}

int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
               const struct option *longopts)
{
    char spec[256];
    /* A leading ':' makes getopt report a missing argument as ':' rather than '?'. */
    snprintf(spec, sizeof spec, ":%s", shortopts);
    opterr = 0;
    int prev = optind;
    int c = getopt_long(argc, argv, spec, longopts, NULL);
    if (c == '?' || c == ':') {
        const char *word = (prev < argc) ? argv[prev] : "";
        if (optopt && optopt != '-' && word[0] == '-' && word[1] != '-')
            cli_usage_error(cmd, c == '?' ? "unknown option '-%c'" : "option '-%c' needs a value", optopt);
        else if (c == '?')
            cli_usage_error(cmd, "unknown option '%s'", word);
        else
            cli_usage_error(cmd, "option '%s' needs a value", word);
        return -2;
    }
    return c;
}

int cli_not_implemented(const char *cmd)
{
    fprintf(stderr, "pipenem: %s: not implemented yet\n", cmd);
    return CLI_USAGE;
}

int cli_pending(const char *usage, int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    while ((c = cli_getopt(argv[0], argc, argv, "h", opts)) != -1) {
        if (c == -2)
            return CLI_USAGE;
        if (c == 'h') {
            fputs(usage, stdout);
            return CLI_OK;
        }
    }
    if (optind < argc)
        return cli_usage_error(argv[0], "unexpected argument '%s'", argv[optind]);
    return cli_not_implemented(argv[0]);
}

int cli_parse_int(const char *cmd, const char *opt, const char *s, int lo, int hi, int *out)
{
    if (pn_parse_int(s, lo, hi, out)) {
        if (hi == INT_MAX)
            return cli_usage_error(cmd, "%s: '%s' is not a whole number >= %d", opt, s, lo);
        return cli_usage_error(cmd, "%s '%s': want an integer in %d..%d", opt, s, lo, hi);
    }
    return 0;
}
