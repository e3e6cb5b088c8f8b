/* The results directory: in-memory tables of cells, iterations and ops, written as CSV
 * through csvio (temporary name + rename) and read back with every field checked. The
 * columns of runs.csv come from one table so that writer and reader cannot drift apart. */
#include "bench/results.h"
#include "common/err.h"

#include "bench/csvio.h"
#include "pipeline/allreduce.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

#include <cblas.h>
#include <csv.h>
#include <netlink/version.h>
#include <ucp/api/ucp.h>

enum { COL_INT, COL_DOUBLE, COL_STR };

typedef struct {
    const char *name;
    int type;
    size_t off, size; /* size: buffer size of a string field */
    const char *old;  /* a column added later: read from this older name, or left as cleared
                       * when the file has neither ("" = no older name) */
} col_t;

#define CI(f) {#f, COL_INT, offsetof(results_cell_t, f), 0, NULL}
#define CD(name, f) {name, COL_DOUBLE, offsetof(results_cell_t, f), 0, NULL}
#define CS(f) {#f, COL_STR, offsetof(results_cell_t, f), sizeof(((results_cell_t *)0)->f), NULL}
#define CIN(f) {#f, COL_INT, offsetof(results_cell_t, f), 0, ""}
#define CSN(f) {#f, COL_STR, offsetof(results_cell_t, f), sizeof(((results_cell_t *)0)->f), ""}
#define CDN(name, f, old) {name, COL_DOUBLE, offsetof(results_cell_t, f), 0, old}

/* runs.csv, before the per-stage columns; times in seconds, rates per second. */
static const col_t run_cols[] = {
    CI(cell), CS(schedule), CI(micro_batch_size), CS(profile), CS(label), CS(model), CI(stages),
    CI(batch_size), CI(seq_len), CI(micro_batches), CI(iters), CI(warmup), CI(repeats),
    CS(compute), CS(emulator), CI(straggler_rank), CD("straggler_factor", straggler_factor),
    CD("iter_median_s", iter_median), CD("iter_mean_s", iter_mean), CD("iter_min_s", iter_min),
    CD("iter_max_s", iter_max), CD("iter_stdev_s", iter_stdev), CDN("predicted_apriori_s", predicted_apriori, ""),
    CDN("replayed_s", predicted, "predicted_s"), CD("ideal_s", ideal), CDN("partition_imbalance", imbalance, ""),
    CIN(straggler_stage), CD("tokens_per_s", tokens_per_s), CD("mfu", mfu),
    CD("straggler_delay", straggler_delay), CD("straggler_slowdown", straggler_slowdown),
    CD("final_loss", final_loss), CD("wall_s", wall), CS(transport), CSN(mem_kind), CIN(skipped_steps),
    CIN(dp), CIN(dp_overlap), CSN(net_dp), CIN(global_batch), CIN(dp_bucket_bytes),
};
#define N_RUN_COLS (sizeof run_cols / sizeof *run_cols)

/* Per-stage columns, NAME_stageS for S = 0 .. stages-1. */
static const struct {
    const char *name;
    size_t off;
    int optional; /* added later: an older runs.csv without it reads as NaN */
} stage_cols[] = {
    {"flops_per_s", offsetof(results_cell_t, flops), 0},
    {"mem_peak_bytes", offsetof(results_cell_t, mem_peak), 0},
    {"bubble", offsetof(results_cell_t, bubble), 0},
    {"mem_model_bytes", offsetof(results_cell_t, mem_model), 1},
    {"dp_straggler", offsetof(results_cell_t, dp_straggler), 1},
};
#define N_STAGE_COLS (sizeof stage_cols / sizeof *stage_cols)

/* the last, loss_scale, was added later: an older iterations.csv without it reads as NaN */
static const char *const iter_cols[] = {"cell", "repeat", "iteration", "warmup", "time_s", "loss_scale"};
static const char *const op_cols[] = {"cell", "repeat", "rank", "iteration", "op",
                                      "micro_batch", "start_s", "end_s", "bytes"};
#define N_ITER_COLS (sizeof iter_cols / sizeof *iter_cols)
#define N_OP_COLS (sizeof op_cols / sizeof *op_cols)
#define N_TRACE_COLS (N_OP_COLS - 2) /* a per-rank trace has no cell or repeat */

void results_init(results_t *r)
{
    memset(r, 0, sizeof *r);
}

void results_destroy(results_t *r)
{
    if (!r)
        return;
    free(r->cells);
    free(r->iters);
    free(r->ops);
    memset(r, 0, sizeof *r);
}

void results_cell_clear(results_cell_t *c, int index)
{
    memset(c, 0, sizeof *c);
    c->cell = index;
    c->straggler_rank = -1;
    c->straggler_factor = 1.0;
    c->straggler_stage = -1;
    for (size_t i = 0; i < N_RUN_COLS; i++)
        if (run_cols[i].type == COL_DOUBLE && strcmp(run_cols[i].name, "straggler_factor"))
            *(double *)((char *)c + run_cols[i].off) = NAN;
    for (int s = 0; s < RESULTS_MAX_STAGES; s++)
        c->flops[s] = c->mem_peak[s] = c->bubble[s] = c->mem_model[s] = c->dp_straggler[s] = NAN;
    c->dp = 1; /* a runs.csv from before --dp reads as one replica */
}

static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t nc = *cap ? 2 * *cap : 64;
    void *p = realloc(*arr, nc * elem);
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = nc;
    return 0;
}

int results_cell_add(results_t *r, const results_cell_t *c)
{
    if (grow((void **)&r->cells, &r->cap_cells, r->n_cells, sizeof *c))
        return -ENOMEM;
    r->cells[r->n_cells++] = *c;
    return 0;
}

int results_iter_add(results_t *r, const results_iter_t *it)
{
    if (grow((void **)&r->iters, &r->cap_iters, r->n_iters, sizeof *it))
        return -ENOMEM;
    r->iters[r->n_iters++] = *it;
    return 0;
}

int results_op_add(results_t *r, const results_op_t *op)
{
    if (grow((void **)&r->ops, &r->cap_ops, r->n_ops, sizeof *op))
        return -ENOMEM;
    r->ops[r->n_ops++] = *op;
    return 0;
}

const results_cell_t *results_cell_find(const results_t *r, int cell)
{
    for (size_t i = 0; i < r->n_cells; i++)
        if (r->cells[i].cell == cell)
            return &r->cells[i];
    return NULL;
}

void results_cell_remove(results_t *r, int cell)
{
    size_t k = 0;
    for (size_t i = 0; i < r->n_cells; i++)
        if (r->cells[i].cell != cell)
            r->cells[k++] = r->cells[i];
    r->n_cells = k;
    k = 0;
    for (size_t i = 0; i < r->n_iters; i++)
        if (r->iters[i].cell != cell)
            r->iters[k++] = r->iters[i];
    r->n_iters = k;
    k = 0;
    for (size_t i = 0; i < r->n_ops; i++)
        if (r->ops[i].cell != cell)
            r->ops[k++] = r->ops[i];
    r->n_ops = k;
}

/* Stable sort by cell index: a counting pass over the distinct cells, since qsort is not stable. */
static int sort_by_cell(void *arr, size_t n, size_t elem, size_t cell_off)
{
    if (n < 2)
        return 0;
    char *src = arr, *dst = malloc(n * elem);
    if (!dst)
        return -ENOMEM;
    int lo = INT_MAX, hi = INT_MIN;
    for (size_t i = 0; i < n; i++) {
        int c = *(int *)(src + i * elem + cell_off);
        lo = c < lo ? c : lo;
        hi = c > hi ? c : hi;
    }
    size_t k = 0;
    for (long c = lo; c <= hi && k < n; c++)
        for (size_t i = 0; i < n; i++)
            if (*(int *)(src + i * elem + cell_off) == c)
                memcpy(dst + (k++) * elem, src + i * elem, elem);
    memcpy(arr, dst, n * elem);
    free(dst);
    return 0;
}

void results_sort(results_t *r)
{
    /* Out of memory leaves the order as it was, which is still a valid file. */
    (void)sort_by_cell(r->cells, r->n_cells, sizeof *r->cells, offsetof(results_cell_t, cell));
    (void)sort_by_cell(r->iters, r->n_iters, sizeof *r->iters, offsetof(results_iter_t, cell));
    (void)sort_by_cell(r->ops, r->n_ops, sizeof *r->ops, offsetof(results_op_t, cell));
}

static int max_stages(const results_t *r)
{
    int s = 0;
    for (size_t i = 0; i < r->n_cells; i++)
        if (r->cells[i].stages > s)
            s = r->cells[i].stages;
    return s > RESULTS_MAX_STAGES ? RESULTS_MAX_STAGES : s;
}

static int write_runs(const results_t *r, const char *path, char *err, size_t errlen)
{
    csvio_writer_t w;
    int rc = csvio_writer_open(&w, path, err, errlen);
    if (rc)
        return rc;
    int ns = max_stages(r);
    char name[64];
    for (size_t i = 0; i < N_RUN_COLS; i++)
        csvio_put_str(&w, run_cols[i].name);
    for (size_t k = 0; k < N_STAGE_COLS; k++)
        for (int s = 0; s < ns; s++) {
            snprintf(name, sizeof name, "%s_stage%d", stage_cols[k].name, s);
            csvio_put_str(&w, name);
        }
    csvio_row_end(&w);
    for (size_t j = 0; j < r->n_cells; j++) {
        const char *c = (const char *)&r->cells[j];
        for (size_t i = 0; i < N_RUN_COLS; i++) {
            const col_t *col = &run_cols[i];
            if (col->type == COL_INT)
                csvio_put_int(&w, *(const int *)(c + col->off));
            else if (col->type == COL_DOUBLE)
                csvio_put_double(&w, *(const double *)(c + col->off));
            else
                csvio_put_str(&w, c + col->off);
        }
        for (size_t k = 0; k < N_STAGE_COLS; k++)
            for (int s = 0; s < ns; s++)
                csvio_put_double(&w, ((const double *)(c + stage_cols[k].off))[s]);
        csvio_row_end(&w);
    }
    return csvio_writer_commit(&w, err, errlen);
}

static int write_iters(const results_t *r, const char *path, char *err, size_t errlen)
{
    csvio_writer_t w;
    int rc = csvio_writer_open(&w, path, err, errlen);
    if (rc)
        return rc;
    for (size_t i = 0; i < N_ITER_COLS; i++)
        csvio_put_str(&w, iter_cols[i]);
    csvio_row_end(&w);
    for (size_t j = 0; j < r->n_iters; j++) {
        const results_iter_t *it = &r->iters[j];
        csvio_put_int(&w, it->cell);
        csvio_put_int(&w, it->repeat);
        csvio_put_int(&w, it->iteration);
        csvio_put_int(&w, it->warmup);
        csvio_put_double(&w, it->time);
        csvio_put_double(&w, it->loss_scale);
        csvio_row_end(&w);
    }
    return csvio_writer_commit(&w, err, errlen);
}

/* Writes op rows; with_cell = 0 gives the per-rank trace format. */
static int write_ops(const results_t *r, int with_cell, int cell, int repeat, int rank,
                     const char *path, char *err, size_t errlen)
{
    csvio_writer_t w;
    int rc = csvio_writer_open(&w, path, err, errlen);
    if (rc)
        return rc;
    for (size_t i = with_cell ? 0 : 2; i < N_OP_COLS; i++)
        csvio_put_str(&w, op_cols[i]);
    csvio_row_end(&w);
    for (size_t j = 0; j < r->n_ops; j++) {
        const results_op_t *o = &r->ops[j];
        if (!with_cell && (o->cell != cell || o->repeat != repeat || (rank >= 0 && o->rank != rank)))
            continue;
        if (with_cell) {
            csvio_put_int(&w, o->cell);
            csvio_put_int(&w, o->repeat);
        }
        csvio_put_int(&w, o->rank);
        csvio_put_int(&w, o->iteration);
        csvio_put_str(&w, o->op);
        csvio_put_int(&w, o->micro_batch);
        csvio_put_double(&w, o->start);
        csvio_put_double(&w, o->end);
        csvio_put_int(&w, o->bytes);
        csvio_row_end(&w);
    }
    return csvio_writer_commit(&w, err, errlen);
}

static void join(char *buf, size_t len, const char *dir, const char *name)
{
    snprintf(buf, len, "%s/%s", dir, name);
}

int results_write(const results_t *r, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    join(path, sizeof path, dir, "runs.csv");
    int rc = write_runs(r, path, err, errlen);
    if (!rc) {
        join(path, sizeof path, dir, "iterations.csv");
        rc = write_iters(r, path, err, errlen);
    }
    if (!rc) {
        join(path, sizeof path, dir, "ops.csv");
        rc = write_ops(r, 1, 0, 0, -1, path, err, errlen);
    }
    return rc;
}

int results_trace_write(const results_t *r, int cell, int repeat, int rank, const char *path,
                        char *err, size_t errlen)
{
    return write_ops(r, 0, cell, repeat, rank, path, err, errlen);
}

static int get_int(const csvio_table_t *t, size_t row, size_t col, long long lo, long long hi,
                   int *out, char *err, size_t errlen)
{
    long long v;
    int rc = csvio_get_int(t, row, col, lo, hi, &v, err, errlen);
    if (!rc)
        *out = (int)v;
    return rc;
}

static int get_str(const csvio_table_t *t, size_t row, size_t col, char *out, size_t size,
                   char *err, size_t errlen)
{
    const char *s = csvio_get(t, row, col);
    if (strlen(s) >= size) {
        return pn_err(err, errlen, -EINVAL, "%s, line %zu, column %zu (%s): longer than %zu characters", t->path,
             t->line[row], col + 1, csvio_get(t, 0, col), size - 1);
    }
    strcpy(out, s);
    return 0;
}

/* A number column must hold a finite value unless NaN (empty) is allowed there. */
static int get_double(const csvio_table_t *t, size_t row, size_t col, double *out, char *err, size_t errlen)
{
    int rc = csvio_get_double(t, row, col, out, err, errlen);
    if (!rc && isinf(*out)) {
        rc = pn_err(err, errlen, -EINVAL, "%s, line %zu, column %zu (%s): infinite", t->path, t->line[row], col + 1,
             csvio_get(t, 0, col));
    }
    return rc;
}

static int read_runs(const char *path, results_t *r, char *err, size_t errlen)
{
    csvio_table_t t = {0};
    int rc = csvio_read(path, &t, err, errlen);
    if (rc)
        return rc;
    size_t idx[N_RUN_COLS], bucket_col = 0;
    int have[N_RUN_COLS];
    for (size_t i = 0; i < N_RUN_COLS && !rc; i++) {
        const col_t *col = &run_cols[i];
        if (!strcmp(col->name, "dp_bucket_bytes"))
            bucket_col = i;
        int k = col->old ? csvio_col(&t, col->name) : 0;
        if (k < 0 && *col->old)
            k = csvio_col(&t, col->old);
        have[i] = k >= 0;
        if (!col->old)
            rc = csvio_col_require(&t, col->name, &idx[i], err, errlen);
        else
            idx[i] = have[i] ? (size_t)k : 0;
    }
    int sidx[N_STAGE_COLS][RESULTS_MAX_STAGES];
    int ns = 0;
    char name[64];
    for (size_t k = 0; k < N_STAGE_COLS && !rc; k++)
        for (int s = 0; s < RESULTS_MAX_STAGES; s++) {
            snprintf(name, sizeof name, "%s_stage%d", stage_cols[k].name, s);
            sidx[k][s] = csvio_col(&t, name);
            if (sidx[k][s] < 0) {
                if (k == 0)
                    ns = s;
                else if (s < ns && !stage_cols[k].optional)
                    rc = csvio_col_require(&t, name, &(size_t){0}, err, errlen);
                break;
            }
        }
    for (size_t row = 1; row < t.rows && !rc; row++) {
        results_cell_t c;
        results_cell_clear(&c, 0);
        char *base = (char *)&c;
        for (size_t i = 0; i < N_RUN_COLS && !rc; i++) {
            const col_t *col = &run_cols[i];
            if (!have[i])
                continue;
            if (col->type == COL_INT)
                rc = get_int(&t, row, idx[i], INT_MIN / 2, INT_MAX, (int *)(base + col->off), err, errlen);
            else if (col->type == COL_DOUBLE)
                rc = get_double(&t, row, idx[i], (double *)(base + col->off), err, errlen);
            else
                rc = get_str(&t, row, idx[i], base + col->off, col->size, err, errlen);
        }
        if (!rc && (c.stages < 1 || c.stages > ns)) {
            rc = pn_err(err, errlen, -EINVAL, "%s, line %zu, column %zu (stages): %d stages but the file has per-stage "
                 "columns for %d", t.path, t.line[row], idx[6] + 1, c.stages, ns);
        }
        for (size_t k = 0; k < N_STAGE_COLS && !rc; k++)
            for (int s = 0; s < ns && !rc && sidx[k][s] >= 0; s++)
                rc = get_double(&t, row, (size_t)sidx[k][s], (double *)(base + stage_cols[k].off) + s, err, errlen);
        if (!rc && !have[bucket_col] && c.dp > 1) /* from before --dp-bucket: the one bucket size then */
            c.dp_bucket_bytes = ALLREDUCE_BUCKET_DEFAULT;
        if (!rc && results_cell_find(r, c.cell)) {
            rc = pn_err(err, errlen, -EINVAL, "%s, line %zu, column %zu (cell): cell %d appears twice", t.path,
                 t.line[row], idx[0] + 1, c.cell);
        }
        if (!rc)
            rc = results_cell_add(r, &c);
    }
    csvio_free(&t);
    return rc;
}

static int require_cols(const csvio_table_t *t, const char *const *names, size_t n, size_t *idx,
                        char *err, size_t errlen)
{
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = csvio_col_require(t, names[i], &idx[i], err, errlen);
    return rc;
}

static int read_iters(const char *path, results_t *r, char *err, size_t errlen)
{
    csvio_table_t t = {0};
    int rc = csvio_read(path, &t, err, errlen);
    if (rc)
        return rc;
    size_t idx[N_ITER_COLS];
    rc = require_cols(&t, iter_cols, N_ITER_COLS - 1, idx, err, errlen);
    int scale_col = csvio_col(&t, iter_cols[N_ITER_COLS - 1]);
    for (size_t row = 1; row < t.rows && !rc; row++) {
        results_iter_t it = {.loss_scale = NAN};
        rc = get_int(&t, row, idx[0], 0, INT_MAX, &it.cell, err, errlen);
        if (!rc)
            rc = get_int(&t, row, idx[1], 0, INT_MAX, &it.repeat, err, errlen);
        if (!rc)
            rc = get_int(&t, row, idx[2], 0, INT_MAX, &it.iteration, err, errlen);
        if (!rc)
            rc = get_int(&t, row, idx[3], 0, 1, &it.warmup, err, errlen);
        if (!rc)
            rc = get_double(&t, row, idx[4], &it.time, err, errlen);
        if (!rc && scale_col >= 0)
            rc = get_double(&t, row, (size_t)scale_col, &it.loss_scale, err, errlen);
        if (!rc)
            rc = results_iter_add(r, &it);
    }
    csvio_free(&t);
    return rc;
}

static int read_ops(const char *path, int with_cell, int cell, int repeat, results_t *r,
                    char *err, size_t errlen)
{
    csvio_table_t t = {0};
    int rc = csvio_read(path, &t, err, errlen);
    if (rc)
        return rc;
    size_t idx[N_OP_COLS] = {0};
    size_t first = with_cell ? 0 : 2;
    rc = require_cols(&t, op_cols + first, N_OP_COLS - first, idx + first, err, errlen);
    for (size_t row = 1; row < t.rows && !rc; row++) {
        results_op_t o = {.cell = cell, .repeat = repeat};
        if (with_cell) {
            rc = get_int(&t, row, idx[0], 0, INT_MAX, &o.cell, err, errlen);
            if (!rc)
                rc = get_int(&t, row, idx[1], 0, INT_MAX, &o.repeat, err, errlen);
        }
        if (!rc)
            rc = get_int(&t, row, idx[2], 0, RESULTS_MAX_STAGES - 1, &o.rank, err, errlen);
        if (!rc)
            rc = get_int(&t, row, idx[3], 0, INT_MAX, &o.iteration, err, errlen);
        if (!rc)
            rc = get_str(&t, row, idx[4], o.op, sizeof o.op, err, errlen);
        if (!rc && !o.op[0]) {
            rc = pn_err(err, errlen, -EINVAL, "%s, line %zu, column %zu (op): empty op name", t.path, t.line[row], idx[4] + 1);
        }
        if (!rc)
            rc = get_int(&t, row, idx[5], -1, INT_MAX, &o.micro_batch, err, errlen);
        if (!rc)
            rc = get_double(&t, row, idx[6], &o.start, err, errlen);
        if (!rc)
            rc = get_double(&t, row, idx[7], &o.end, err, errlen);
        if (!rc && (isnan(o.start) || isnan(o.end) || o.end < o.start)) {
            rc = pn_err(err, errlen, -EINVAL, "%s, line %zu, column %zu (end_s): the op ends before it starts or has no time",
                 t.path, t.line[row], idx[7] + 1);
        }
        if (!rc) {
            long long b;
            rc = csvio_get_int(&t, row, idx[8], 0, LLONG_MAX, &b, err, errlen);
            o.bytes = b;
        }
        if (!rc)
            rc = results_op_add(r, &o);
    }
    csvio_free(&t);
    return rc;
}

int results_read(const char *dir, results_t *r, char *err, size_t errlen)
{
    char path[4096];
    join(path, sizeof path, dir, "runs.csv");
    int rc = read_runs(path, r, err, errlen);
    if (!rc) {
        join(path, sizeof path, dir, "iterations.csv");
        rc = read_iters(path, r, err, errlen);
        if (rc == -ENOENT)
            rc = 0;
    }
    if (!rc) {
        join(path, sizeof path, dir, "ops.csv");
        rc = read_ops(path, 1, 0, 0, r, err, errlen);
        if (rc == -ENOENT)
            rc = 0;
    }
    return rc;
}

int results_trace_read(const char *path, int cell, int repeat, results_t *r, char *err, size_t errlen)
{
    return read_ops(path, 0, cell, repeat, r, err, errlen);
}

/* Quotes a word for a POSIX shell only when it needs it. */
static void put_shell_word(FILE *f, const char *s)
{
    int plain = *s != '\0';
    for (const char *p = s; *p && plain; p++)
        plain = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=,@%+", *p) != NULL;
    if (plain) {
        fputs(s, f);
        return;
    }
    fputc('\'', f);
    for (const char *p = s; *p; p++)
        if (*p == '\'')
            fputs("'\\''", f);
        else
            fputc(*p, f);
    fputc('\'', f);
}

static int write_text(const char *dir, const char *name, char *buf, size_t len, char *err, size_t errlen)
{
    char path[4096];
    join(path, sizeof path, dir, name);
    return csvio_file_write_atomic(path, buf, len, err, errlen);
}

int results_argv_write(const char *dir, const char *name, int argc, char **argv, results_argv_style_t style,
                       char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return -ENOMEM;
    for (int i = 0; i < argc; i++) {
        if (style == RESULTS_ARGV_SHELL) {
            if (i)
                fputc(' ', f);
            put_shell_word(f, argv[i]);
        } else if (strchr(argv[i], '\n')) {
            fclose(f);
            free(buf);
            return pn_err(err, errlen, -EINVAL, "argument %d contains a line break, which %s cannot keep", i + 1, name);
        } else {
            fprintf(f, "%s\n", argv[i]);
        }
    }
    if (style == RESULTS_ARGV_SHELL)
        fputc('\n', f);
    fclose(f);
    int rc = write_text(dir, name, buf, len, err, errlen);
    free(buf);
    return rc;
}

int results_command_write(const char *dir, int argc, char **argv, char *err, size_t errlen)
{
    return results_argv_write(dir, "command.txt", argc, argv, RESULTS_ARGV_SHELL, err, errlen);
}

/* First line of a command's output, or "not found". */
static void first_line_of(const char *cmd, char *out, size_t len)
{
    snprintf(out, len, "not found");
    FILE *p = popen(cmd, "r");
    if (!p)
        return;
    char line[256];
    if (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0])
            snprintf(out, len, "%s", line);
    }
    while (fgets(line, sizeof line, p))
        ;
    pclose(p);
}

int results_env_write(const char *dir, const char *compute, const char *emulator, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return -ENOMEM;
    struct utsname u;
    char line[256];
    fprintf(f, "# the machine and software a results directory was measured with\n");
    first_line_of("git rev-parse --short HEAD 2>/dev/null", line, sizeof line);
    fprintf(f, "pipenem_revision: %s\n", line);
    fprintf(f, "compiler: %s\n", __VERSION__);
    if (uname(&u) == 0)
        fprintf(f, "kernel: %s %s %s %s\n", u.sysname, u.release, u.version, u.machine);
    first_line_of("grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//'", line, sizeof line);
    fprintf(f, "cpu: %s\n", line);
    first_line_of("nproc 2>/dev/null", line, sizeof line);
    fprintf(f, "cpus: %s\n", line);
    first_line_of("grep -m1 PRETTY_NAME /etc/os-release 2>/dev/null | cut -d= -f2 | tr -d '\"'", line, sizeof line);
    fprintf(f, "os: %s\n", line);
    fprintf(f, "ucx: %s\n", ucp_get_version_string());
    fprintf(f, "libnl: %s\n", LIBNL_STRING);
    fprintf(f, "libcsv: %d.%d.%d\n", CSV_MAJOR, CSV_MINOR, CSV_RELEASE);
    fprintf(f, "openblas: %s\n", openblas_get_config());
    first_line_of("gnuplot --version 2>/dev/null", line, sizeof line);
    fprintf(f, "gnuplot: %s\n", line);
    first_line_of("tc -V 2>/dev/null", line, sizeof line);
    fprintf(f, "tc: %s\n", line);
    fprintf(f, "compute_backend: %s\n", compute && *compute ? compute : "unknown");
    fprintf(f, "emulator_backend: %s\n", emulator && *emulator ? emulator : "unknown");
    fclose(f);
    int rc = write_text(dir, "environment.txt", buf, len, err, errlen);
    free(buf);
    return rc;
}

int results_exec_trace_save(const char *path, const exec_row_t *rows, size_t n, char *err, size_t errlen)
{
    csvio_writer_t w;
    int rc = csvio_writer_open(&w, path, err, errlen);
    if (rc)
        return rc;
    if (exec_trace_write(w.f, rows, n, 1) != 0)
        w.error = EIO;
    return csvio_writer_commit(&w, err, errlen);
}
