/* pipenem report DIR: regenerates table.md, trace.json and the plots of a results directory
 * from its CSVs (what a sweep writes after every cell), after checking every field. */
#include "bench/cli.h"
#include "bench/report.h"
#include "bench/results.h"
#include "bench/vocab.h"
#include "common/limits.h"
#include "common/parse.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int output_only[] = {VOCAB_OPT_ITERATION, VOCAB_OPT_TIMELINE, VOCAB_OPT_NO_PLOTS, 0};

static const cli_section_t sections[] = {
    {"options", vocab_output_group, output_only, NULL, 0},
    {NULL, NULL, NULL, NULL, 0},
};

static const cli_spec_t spec = {
    "report",
    "usage: pipenem report DIR [options]\n"
    "Regenerates DIR/table.md, DIR/trace.json and DIR/plots/ from DIR/runs.csv, iterations.csv and ops.csv.\n",
    sections, NULL, NULL, NULL,
};

int cmd_report(int argc, char **argv)
{
    report_opts_t o = {.iteration = -1, .plots = 1};
    const char *timeline = NULL;
    int c;
    cli_parser_t p;
    if (cli_parser_init(&p, &spec))
        return cli_usage_error(argv[0], "internal: the option table is inconsistent");
    while ((c = cli_next(&p, argc, argv)) != -1) {
        switch (c) {
        case VOCAB_OPT_ITERATION:
            if (pn_parse_int(optarg, 0, PN_MAX_ITERS, &o.iteration))
                return cli_usage_error(argv[0], "--iteration: '%s' is not an iteration number (0, 1, ...)", optarg);
            break;
        case VOCAB_OPT_TIMELINE:
            timeline = optarg;
            break;
        case VOCAB_OPT_NO_PLOTS:
            o.plots = 0;
            break;
        case CLI_OPT_HELP:
            cli_help(&spec, stdout);
            return CLI_OK;
        default:
            return CLI_USAGE;
        }
    }
    if (optind >= argc)
        return cli_usage_error(argv[0], "needs a results directory (pipenem report DIR)");
    if (optind + 1 < argc)
        return cli_usage_error(argv[0], "unexpected argument '%s' (one results directory only)", argv[optind + 1]);
    const char *dir = argv[optind];
    char err[1024] = "";
    int *cells = NULL, all = 0;
    size_t n = 0;
    if (timeline && report_timeline_parse(timeline, &cells, &n, &all, err, sizeof err))
        return cli_usage_error(argv[0], "%s", err);

    results_t r;
    results_init(&r);
    int rc = results_read(dir, &r, err, sizeof err);
    if (rc) {
        fprintf(stderr, "pipenem report: %s\n", err);
        free(cells);
        results_destroy(&r);
        return CLI_FAIL;
    }
    results_sort(&r);
    if (all) {
        cells = malloc((r.n_cells ? r.n_cells : 1) * sizeof *cells);
        for (size_t i = 0; cells && i < r.n_cells; i++)
            cells[n++] = r.cells[i].cell;
    }
    o.timeline = cells;
    o.n_timeline = n;
    report_done_t done = {0};
    printf("# pipenem report %s\n# %zu cells, %zu iterations, %zu ops\n", dir, r.n_cells, r.n_iters, r.n_ops);
    char names[256], units[256], row[512];
    report_row_header(names, units, sizeof names);
    printf("%s\n%s\n", names, units);
    for (size_t i = 0; i < r.n_cells; i++) {
        report_row_format(&r.cells[i], row, sizeof row);
        printf("%s\n", row);
    }
    rc = report_write(&r, dir, &o, &done, err, sizeof err);
    free(cells);
    results_destroy(&r);
    if (rc) {
        fprintf(stderr, "pipenem report: %s\n", err[0] ? err : strerror(-rc));
        printf("# FAILED\n");
        return CLI_FAIL;
    }
    printf("# wrote %s/table.md, %s/trace.json", dir, dir);
    if (done.plots_made)
        printf(", %s/plots/ (iteration_time, %d timeline%s; png and svg)", dir, done.timelines,
               done.timelines == 1 ? "" : "s");
    else
        printf(" (no plots: %s)", o.plots ? "gnuplot with png and svg terminals not found" : "--no-plots");
    printf("\n# OK\n");
    return CLI_OK;
}
