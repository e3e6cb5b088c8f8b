/* Chrome trace event JSON for one iteration per cell. Complete ("X") events carry the op,
 * micro-batch and bytes; metadata ("M") events name and order the processes and lanes. */
#include "bench/chrome.h"

#include "bench/csvio.h"
#include "bench/metrics.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int chrome_iteration_pick(const results_t *r, int cell, int iteration, int *out)
{
    int last = -1, found = 0;
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        if (o->cell != cell || o->repeat != 0)
            continue;
        last = o->iteration > last ? o->iteration : last;
        found |= o->iteration == iteration;
    }
    if (last < 0)
        return -ENOENT;
    *out = found ? iteration : last;
    return 0;
}

static void put_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void put_meta(FILE *f, int *first, const char *name, int pid, int tid, const char *key,
                     const char *sval, long ival)
{
    fprintf(f, "%s\n{\"name\":\"%s\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{\"%s\":", *first ? "" : ",",
            name, pid, tid, key);
    if (sval)
        put_json_string(f, sval);
    else
        fprintf(f, "%ld", ival);
    fputs("}}", f);
    *first = 0;
}

int chrome_trace_write(const results_t *r, int iteration, const char *path, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return -ENOMEM;
    static const char *const lane_name[METRICS_LANES] = {"compute", "send", "receive", "allreduce"};
    int first = 1;
    fputs("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[", f);
    for (size_t ci = 0; ci < r->n_cells; ci++) {
        const results_cell_t *c = &r->cells[ci];
        int it;
        if (chrome_iteration_pick(r, c->cell, iteration, &it))
            continue;
        double t0 = INFINITY;
        for (size_t i = 0; i < r->n_ops; i++) {
            const results_op_t *o = &r->ops[i];
            if (o->cell == c->cell && o->repeat == 0 && o->iteration == it)
                t0 = fmin(t0, o->start);
        }
        /* One process per rank (rank = d*stages + s); the all-reduce lane only with --dp. */
        int D = c->dp > 1 ? c->dp : 1, lanes = D > 1 ? METRICS_LANES : METRICS_LANE_ALLREDUCE;
        for (int q = 0; q < D * c->stages; q++) {
            int pid = 100 * c->cell + q + 1, s = q % c->stages;
            char name[400], replica[32] = "";
            if (D > 1)
                snprintf(replica, sizeof replica, "replica %d, ", q / c->stages);
            snprintf(name, sizeof name, "cell %d: %s, micro batch %d, %s, %sstage %d (iteration %d)", c->cell,
                     c->schedule, c->micro_batch_size, c->label, replica, s, it);
            put_meta(f, &first, "process_name", pid, 0, "name", name, 0);
            put_meta(f, &first, "process_sort_index", pid, 0, "sort_index", NULL, pid);
            for (int l = 0; l < lanes; l++) {
                put_meta(f, &first, "thread_name", pid, l + 1, "name", lane_name[l], 0);
                put_meta(f, &first, "thread_sort_index", pid, l + 1, "sort_index", NULL, l + 1);
            }
        }
        for (size_t i = 0; i < r->n_ops; i++) {
            const results_op_t *o = &r->ops[i];
            if (o->cell != c->cell || o->repeat != 0 || o->iteration != it)
                continue;
            int lane = metrics_op_lane(o->op);
            if (lane < 0)
                lane = METRICS_LANE_COMPUTE;
            fprintf(f, "%s\n{\"name\":", first ? "" : ",");
            char name[48];
            if (o->micro_batch >= 0)
                snprintf(name, sizeof name, "%s %d", o->op, o->micro_batch);
            else
                snprintf(name, sizeof name, "%s", o->op);
            put_json_string(f, name);
            fprintf(f, ",\"cat\":\"%s\",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,\"pid\":%d,\"tid\":%d,"
                       "\"args\":{\"op\":",
                    lane_name[lane], (o->start - t0) * 1e6, (o->end - o->start) * 1e6, 100 * c->cell + o->rank + 1,
                    lane + 1);
            put_json_string(f, o->op);
            fprintf(f, ",\"micro_batch\":%d,\"iteration\":%d,\"bytes\":%lld}}", o->micro_batch, o->iteration, o->bytes);
            first = 0;
        }
    }
    fputs("\n]}\n", f);
    int bad = ferror(f);
    fclose(f);
    int rc = bad ? -ENOMEM : csvio_file_write_atomic(path, buf, len, err, errlen);
    free(buf);
    return rc;
}
