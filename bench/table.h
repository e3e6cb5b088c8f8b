/* table.md: the sweep's tables in markdown, made only from the cells of a results_t (so
 * `pipenem report` rebuilds them byte for byte from the CSVs): one iteration-time table per
 * schedule (rows = network settings, default first; columns = micro-batch sizes), the
 * schedule comparison, predicted versus measured, and the per-cell metrics. */
#ifndef PN_BENCH_TABLE_H
#define PN_BENCH_TABLE_H

#include "bench/results.h"

#include <stddef.h>

/* The whole table.md as a malloc'd string. */
int table_markdown(const results_t *r, char **text) __attribute__((warn_unused_result));

/* Three significant digits without an exponent ("6.64", "0.0123", "1234"); NaN is "n/a".
 * Every number in table.md goes through this, so a reader knows the precision shown. */
void table_format_sig3(double v, char *buf, size_t len);

/* Orders of the grid's axes as the tables show them: schedules and profiles in the order
 * of their first cell, except that the default profile comes first; micro-batch sizes
 * ascending. Each out array has room for r->n_cells entries; the counts are returned. */
void table_axes(const results_t *r, const char **schedules, size_t *n_sched, int *mbs, size_t *n_mbs,
                const results_cell_t **profiles, size_t *n_prof);

/* The cell of (schedule, micro-batch size, profile), or NULL when it has not run; of
 * several replica counts (--dp-sizes), the fewest replicas'. */
const results_cell_t *table_cell_find(const results_t *r, const char *schedule, int mbs, const char *profile);
/* The same with `dp` replicas (0: the fewest). */
const results_cell_t *table_cell_find_dp(const results_t *r, const char *schedule, int mbs, const char *profile, int dp);

#endif
