/* libFuzzer target: the command line as far as it runs without side effects: the option
 * table and checks `run`, `stage` and `sweep` share (runcfg_option, runcfg_finish), the
 * sweep grid parsers, an op-list file (sched_plan_parse), --dist-url and report's
 * --timeline. The first byte picks the parser; the rest is lines = arguments. Run options
 * with a '/' are skipped, so no device or absolute path is ever opened (libFuzzer reads
 * its corpus lazily by relative path, so the process cannot move to an empty folder). */
#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/report.h"
#include "bench/sweep.h"
#include "pipeline/jobenv.h"
#include "pipeline/runcfg.h"
#include "schedules/sched.h"

enum { MAX_ARGS = 64 };

static int split(char *text, char **argv, int max)
{
    int n = 0;
    for (char *save = NULL, *t = strtok_r(text, "\n", &save); t && n < max; t = strtok_r(NULL, "\n", &save))
        argv[n++] = t;
    return n;
}

static void fuzz_runcfg(char *text)
{
    char *argv[MAX_ARGS + 2] = {"pipenem-run"};
    int argc = 1 + split(text, argv + 1, MAX_ARGS);
    argv[argc] = NULL;
    struct option opts[128];
    if (runcfg_options_table(opts, sizeof opts / sizeof *opts, NULL) < 0)
        abort();
    runcfg_t c;
    char err[1024];
    runcfg_defaults(&c);
    optind = 0; /* GNU: a full reset of getopt's state between inputs */
    opterr = 0;
    int o;
    while ((o = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        if (o == '?' || o == ':')
            return;
        int rc = runcfg_option(&c, o, optarg, err, sizeof err);
        if (rc < 0 && !err[0])
            abort(); /* every refusal says why */
        if (rc <= 0)
            return;
    }
    err[0] = '\0';
    if (runcfg_finish(&c, err, sizeof err) != 0) {
        if (!err[0])
            abort();
        return;
    }
    char buf[4096];
    (void)runcfg_format(&c, buf, sizeof buf);
    (void)runcfg_hash(&c);
}

static void fuzz_sweep(char *text)
{
    char *lines[6] = {0};
    int n = split(text, lines, 6);
    sweep_spec_t s;
    char err[512];
    if (sweep_spec_default(&s, err, sizeof err))
        abort();
    int rank;
    double factor;
    for (int i = 0; i < n; i++) {
        switch (i) {
        case 0: (void)sweep_schedules_parse(lines[i], &s, err, sizeof err); break;
        case 1: (void)sweep_mbs_parse(lines[i], &s, err, sizeof err); break;
        case 2: (void)sweep_profiles_parse(lines[i], &s, err, sizeof err); break;
        case 3:
            if (sweep_straggler_parse(lines[i], &rank, &factor, err, sizeof err) == 0) {
                s.straggler_rank = rank;
                s.straggler_factor = factor;
            }
            break;
        default: {
            int *cells = NULL, all = 0;
            size_t nc = 0;
            if (report_timeline_parse(lines[i], &cells, &nc, &all, err, sizeof err) == 0)
                free(cells);
        }
        }
    }
    if (sweep_spec_check(&s, err, sizeof err) == 0) {
        int cells = sweep_cells(&s);
        if (cells <= 0)
            abort();
        results_cell_t c;
        sweep_cell_config(&s, cells - 1, &c);
    }
}

static void fuzz_plan(char *text, int m)
{
    sched_plan_t plan;
    char err[512];
    if (sched_plan_parse(text, m, &plan, err, sizeof err) != 0)
        return;
    int *peak = calloc((size_t)plan.stages + 1, sizeof *peak);
    if (peak && sched_plan_validate(&plan, peak, err, sizeof err) == 0) {
        /* nothing more: a valid plan is what `pipenem sim --plan` would run */
    }
    free(peak);
    sched_plan_destroy(&plan);
}

static void fuzz_url(char *text)
{
    char host[256], err[512];
    int port;
    if (jobenv_url_parse(text, host, sizeof host, &port, err, sizeof err) == 0 && (port < 1 || port > 65535))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 8192)
        return 0;
    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    switch (data[0] % 4) {
    case 0:
        if (!strchr(text, '/'))
            fuzz_runcfg(text);
        break;
    case 1: fuzz_sweep(text); break;
    case 2: fuzz_plan(text, data[0] >> 2); break;
    default: fuzz_url(text); break;
    }
    free(text);
    return 0;
}
