/* The derived files of a results directory, in one place so that a sweep and a later
 * `pipenem report` cannot disagree about what they contain. */
#include "bench/report.h"

#include "bench/chrome.h"
#include "bench/csvio.h"
#include "bench/plot.h"
#include "bench/table.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void report_timeline_default(const results_t *r, int *cells, size_t *n)
{
    size_t k = 0;
    if (!r->n_cells) {
        *n = 0;
        return;
    }
    size_t nc = r->n_cells, ns, nm, np;
    const char **sched = calloc(nc, sizeof *sched);
    int *mbs = calloc(nc, sizeof *mbs);
    const results_cell_t **prof = calloc(nc, sizeof *prof);
    if (sched && mbs && prof) {
        table_axes(r, sched, &ns, mbs, &nm, prof, &np);
        for (size_t a = 0; a < ns; a++) {
            const results_cell_t *first = NULL, *last = NULL;
            for (size_t m = 0; m < nm && !first; m++)
                for (size_t p = 0; p < np; p++) {
                    const results_cell_t *c = table_cell_find(r, sched[a], mbs[m], prof[p]->profile);
                    if (c && !first)
                        first = c;
                    if (c)
                        last = c;
                }
            if (first)
                cells[k++] = first->cell;
            if (last && last != first)
                cells[k++] = last->cell;
        }
    }
    free(sched);
    free(mbs);
    free(prof);
    *n = k;
}

#define ROW_FMT "%5s  %-10s %5s  %-28s %10s %10s %10s %9s %10s %9s %7s %9s %5s %9s"

void report_row_header(char *names, char *units, size_t len)
{
    snprintf(names, len, "#" ROW_FMT, "cell", "schedule", "mbs", "network", "median", "stdev", "a-priori",
             "apr/meas", "replayed", "rep/meas", "MFU", "slowdown", "slow", "imbalance");
    snprintf(units, len, "#" ROW_FMT, "", "", "", "", "(s)", "(s)", "(s)", "", "(s)", "", "(%)", "", "stage", "");
}

void report_row_format(const results_cell_t *c, char *buf, size_t len)
{
    char idx[16], mbs[16], med[32], sd[32], apr[32], aratio[32], pred[32], ratio[32], mfu[32], slow[32], stage[16],
        imb[32];
    snprintf(idx, sizeof idx, "%d", c->cell);
    snprintf(mbs, sizeof mbs, "%d", c->micro_batch_size);
    table_format_sig3(c->iter_median, med, sizeof med);
    table_format_sig3(c->iter_stdev, sd, sizeof sd);
    table_format_sig3(c->predicted_apriori, apr, sizeof apr);
    table_format_sig3(c->predicted_apriori / c->iter_median, aratio, sizeof aratio);
    table_format_sig3(c->predicted, pred, sizeof pred);
    table_format_sig3(c->predicted / c->iter_median, ratio, sizeof ratio);
    table_format_sig3(c->mfu * 100, mfu, sizeof mfu);
    table_format_sig3(c->straggler_slowdown, slow, sizeof slow);
    table_format_sig3(c->imbalance, imb, sizeof imb);
    if (c->straggler_stage >= 0)
        snprintf(stage, sizeof stage, "%d", c->straggler_stage);
    else
        snprintf(stage, sizeof stage, "n/a");
    snprintf(buf, len, " " ROW_FMT, idx, c->schedule, mbs, c->label, med, sd, apr, aratio, pred, ratio, mfu, slow,
             stage, imb);
}

int report_timeline_parse(const char *text, int **cells, size_t *n, int *all, char *err, size_t errlen)
{
    *all = !strcmp(text, "all");
    if (*all) {
        *cells = NULL;
        *n = 0;
        return 0;
    }
    size_t cap = 1;
    for (const char *p = text; *p; p++)
        cap += *p == ',';
    int *v = malloc(cap * sizeof *v);
    if (!v)
        return -ENOMEM;
    size_t k = 0;
    if (strcmp(text, "none")) {
        const char *p = text;
        for (;;) {
            char *end;
            long c = strtol(p, &end, 10);
            if (end == p || c < 0 || c > 1000000 || (*end != ',' && *end)) {
                snprintf(err, errlen, "--timeline: '%.*s' is not a cell index (want all, none or a list like 0,3)",
                         (int)strcspn(p, ","), p);
                free(v);
                return -EINVAL;
            }
            v[k++] = (int)c;
            if (!*end)
                break;
            p = end + 1;
        }
    }
    *cells = v;
    *n = k;
    return 0;
}

int report_write(const results_t *r, const char *dir, const report_opts_t *o, report_done_t *done,
                 char *err, size_t errlen)
{
    report_done_t d = {0};
    char path[4096];
    char *text = NULL;
    int rc = table_markdown(r, &text);
    if (rc)
        return rc;
    snprintf(path, sizeof path, "%s/table.md", dir);
    rc = csvio_file_write_atomic(path, text, strlen(text), err, errlen);
    free(text);
    if (rc)
        return rc;
    snprintf(path, sizeof path, "%s/trace.json", dir);
    rc = chrome_trace_write(r, o->iteration, path, err, errlen);
    if (rc)
        return rc;
    if (o->plots && plot_gnuplot_found()) {
        rc = plot_iteration_time(r, dir, err, errlen);
        int *def = NULL;
        const int *cells = o->timeline;
        size_t n = o->n_timeline;
        if (!rc && !cells && r->n_cells) {
            def = malloc(r->n_cells * sizeof *def);
            if (!def)
                rc = -ENOMEM;
            else
                report_timeline_default(r, def, &n);
            cells = def;
        }
        for (size_t i = 0; i < n && !rc; i++) {
            if (!results_cell_find(r, cells[i]))
                continue; /* a chosen cell that has not run yet */
            rc = plot_timeline(r, cells[i], o->iteration, dir, err, errlen);
            d.timelines += !rc;
        }
        free(def);
        d.plots_made = !rc;
    }
    if (!rc && done)
        *done = d;
    return rc;
}
