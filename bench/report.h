/* Everything in a results directory that is derived from its CSVs: table.md, trace.json
 * and the plots. The sweep calls this after every cell and `pipenem report` calls it on
 * what it reads back, so both produce the same files from the same cells. */
#ifndef PN_BENCH_REPORT_H
#define PN_BENCH_REPORT_H

#include "bench/results.h"

#include <stddef.h>

typedef struct {
    int iteration;          /* iteration shown in trace.json and timelines; -1 = each cell's last */
    const int *timeline;    /* cells to draw timelines of; NULL = report_timeline_default */
    size_t n_timeline;
    int plots;              /* 0 = no plots even when gnuplot is found */
} report_opts_t;

/* What report_write produced, for the caller to print. */
typedef struct {
    int plots_made;         /* 0 when gnuplot was not found or plots were off */
    int timelines;          /* timeline plots drawn */
} report_done_t;

/* The default timeline cells: per schedule, the smallest micro-batch size on the first and
 * the last network setting of the tables. cells has room for r->n_cells entries. */
void report_timeline_default(const results_t *r, int *cells, size_t *n);

/* The nccl-tests style listing of cells both `sweep` and `report` print: two header lines
 * (names, units) and one row per cell, each without a trailing newline. */
void report_row_header(char *names, char *units, size_t len);
void report_row_format(const results_cell_t *c, char *buf, size_t len);

/* --timeline: "all", "none" or a list of cell indices "0,3". "all" sets *all (cells NULL);
 * otherwise *cells is malloc'd (non-NULL even for "none", n = 0). */
int report_timeline_parse(const char *text, int **cells, size_t *n, int *all, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Writes DIR/table.md and DIR/trace.json, and the plots when gnuplot is found. */
int report_write(const results_t *r, const char *dir, const report_opts_t *o, report_done_t *done,
                 char *err, size_t errlen) __attribute__((warn_unused_result));

#endif
