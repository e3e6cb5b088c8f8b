/* The executor's result once a run is over: freeing it, and its rows as the trace CSV that
 * bench/ reads back (results_trace_read). */
#include "pipeline/exec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void exec_result_destroy(exec_result_t *r)
{
    free(r->rows);
    free(r->loss);
    free(r->loss_scale);
    memset(r, 0, sizeof *r);
}

int exec_trace_write(FILE *f, const exec_row_t *rows, size_t n, int header)
{
    if (header)
        fputs("rank,iteration,op,micro_batch,start_s,end_s,bytes\n", f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%d,%d,%s,%d,%.9f,%.9f,%zu\n", rows[i].rank, rows[i].iter, sched_op_kind_name(rows[i].kind),
                rows[i].mb, rows[i].start, rows[i].end, rows[i].bytes);
    return ferror(f) ? -EIO : 0;
}
