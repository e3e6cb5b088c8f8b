/* Plots of a results directory through gnuplot (PNG and SVG, with the data and script
 * kept next to them in DIR/plots so a plot can be restyled by hand): iteration time per
 * network profile for each schedule and micro-batch size, and pipeline timelines. */
#ifndef PN_BENCH_PLOT_H
#define PN_BENCH_PLOT_H

#include "bench/results.h"

#include <stddef.h>

/* 1 when a gnuplot with the png and svg terminals can be run. */
int plot_gnuplot_found(void);

/* plots/iteration_time.{png,svg}: x = network settings (table order), one line per
 * schedule and micro-batch size, median with min..max bars. */
int plot_iteration_time(const results_t *r, const char *dir, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* plots/timeline_cell<N>.{png,svg}: one row per stage of cell N's chosen iteration
 * (see chrome_iteration_pick): forward and backward blocks, optimizer steps, send and
 * receive lanes (a transfer is drawn from its send to its receive's end); white space is
 * idle time. */
int plot_timeline(const results_t *r, int cell, int iteration, const char *dir, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
