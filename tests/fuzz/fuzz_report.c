/* libFuzzer target: the final report a rank sends rank 0 over the control plane (text
 * records R/L/T), parsed by stage_report_parse. Every index it stores must be in range. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/stage.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    stage_summary_t s = {0};
    s.stages = 3;
    s.warmup = data[0] & 1;
    s.iters = 1 + (data[0] >> 1) % 4;
    int n = s.warmup + s.iters;
    s.loss = malloc(sizeof *s.loss * (size_t)n);
    s.ranks = calloc((size_t)s.stages, sizeof *s.ranks);
    if (!s.loss || !s.ranks)
        goto out;
    for (int i = 0; i < n; i++)
        s.loss[i] = NAN;
    char err[256];
    int q = (data[0] >> 4) % 3;
    if (stage_report_parse(&s, q, (const char *)data + 1, size - 1, err, sizeof err) == 0)
        for (size_t k = 0; k < s.n_rows; k++) {
            const exec_row_t *w = &s.rows[k];
            if (w->iter < 0 || w->iter >= n || w->mb < -1 || (int)w->kind < 0 || w->kind >= SCHED_OP_KINDS)
                abort();
        }
out:
    stage_summary_destroy(&s);
    return 0;
}
