/* trace.json: one chosen iteration of every cell in the Chrome trace event format (opens
 * in Perfetto and chrome://tracing). Each stage of each cell is a process (pid =
 * 100 * cell + stage + 1) with three threads: compute (1), send (2) and receive (3). */
#ifndef PN_BENCH_CHROME_H
#define PN_BENCH_CHROME_H

#include "bench/results.h"

#include <stddef.h>

enum { CHROME_TID_COMPUTE = 1, CHROME_TID_SEND = 2, CHROME_TID_RECV = 3 };

/* The iteration a trace or timeline shows for a cell: `iteration` if the cell's repeat 0
 * has it, else (and for -1) its last iteration. -ENOENT when the cell has no ops. */
int chrome_iteration_pick(const results_t *r, int cell, int iteration, int *out)
    __attribute__((warn_unused_result));

/* Writes the events of the picked iteration of every cell to path (temporary + rename);
 * times are microseconds from the iteration's first op in that cell. */
int chrome_trace_write(const results_t *r, int iteration, const char *path, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
