/* CSV reading and writing for the results directory, over libcsv. The parser is fed one
 * line at a time so that every row and every parse error can be placed by line and
 * column, which is what `report` and `--resume` need to reject a damaged file clearly. */
#include "bench/csvio.h"
#include "common/grow.h"
#include "common/err.h"

#include <csv.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Parser state shared with the libcsv callbacks. */
typedef struct {
    char **field;
    size_t n_field, cap_field;
    size_t *line;
    size_t rows, cap_rows, cols;
    size_t row_fields;   /* fields seen in the current row */
    size_t cur_line;     /* line being fed */
    size_t row_line;     /* line where the current row started */
    int oom;
    size_t bad_line, bad_count; /* first ragged row */
} reader_t;

static void on_field(void *s, size_t len, void *data)
{
    reader_t *r = data;
    if (r->oom || r->bad_line)
        return;
    if (r->row_fields == 0)
        r->row_line = r->cur_line;
    char **f = pn_grow(r->field, &r->cap_field, r->n_field, sizeof *f, 256);
    if (!f) {
        r->oom = 1;
        return;
    }
    r->field = f;
    char *copy = malloc(len + 1);
    if (!copy) {
        r->oom = 1;
        return;
    }
    if (len)
        memcpy(copy, s, len);
    copy[len] = '\0';
    r->field[r->n_field++] = copy;
    r->row_fields++;
}

static void on_row(int c, void *data)
{
    (void)c;
    reader_t *r = data;
    if (r->oom || r->bad_line)
        return;
    if (r->row_fields == 0)
        return;
    if (r->rows == 0)
        r->cols = r->row_fields;
    else if (r->row_fields != r->cols) {
        r->bad_line = r->row_line;
        r->bad_count = r->row_fields;
        return;
    }
    size_t *l = pn_grow(r->line, &r->cap_rows, r->rows, sizeof *l, 64);
    if (!l) {
        r->oom = 1;
        return;
    }
    r->line = l;
    r->line[r->rows++] = r->row_line;
    r->row_fields = 0;
}

static void reader_free(reader_t *r)
{
    for (size_t i = 0; i < r->n_field; i++)
        free(r->field[i]);
    free(r->field);
    free(r->line);
}

int csvio_file_read(const char *path, char **data, size_t *len, char *err, size_t errlen)
{
    int rc;
    FILE *f = fopen(path, "rb");
    if (!f) {
        rc = -errno;
        return pn_err(err, errlen, rc, "%s: cannot open: %s", path, strerror(errno));
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return -ENOMEM;
    }
    for (;;) {
        if (n + 1 >= cap) {
            char *b = realloc(buf, cap * 2);
            if (!b) {
                free(buf);
                fclose(f);
                return -ENOMEM;
            }
            buf = b;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - 1 - n, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        rc = -EIO;
        pn_err(err, errlen, 0, "%s: read error", path);
        free(buf);
        fclose(f);
        return rc;
    }
    fclose(f);
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return 0;
}

int csvio_read(const char *path, csvio_table_t *out, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    int rc = csvio_file_read(path, &text, &len, err, errlen);
    if (rc)
        return rc;
    if (memchr(text, '\0', len)) {
        size_t off = (size_t)((char *)memchr(text, '\0', len) - text), line = 1, col = 1;
        for (size_t i = 0; i < off; i++, col++)
            if (text[i] == '\n')
                line++, col = 0;
        pn_err(err, errlen, 0, "%s, line %zu, column %zu: malformed CSV: a NUL byte", path, line, col);
        free(text);
        return -EINVAL;
    }

    reader_t r = {0};
    struct csv_parser p;
    if (csv_init(&p, CSV_STRICT | CSV_STRICT_FINI) != 0) {
        free(text);
        return -ENOMEM;
    }
    rc = 0;
    size_t pos = 0;
    r.cur_line = 1;
    while (pos < len && !rc) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t chunk = nl ? (size_t)(nl - (text + pos)) + 1 : len - pos;
        size_t done = csv_parse(&p, text + pos, chunk, on_field, on_row, &r);
        if (r.oom) {
            rc = -ENOMEM;
        } else if (done != chunk) {
            rc = pn_err(err, errlen, -EINVAL, "%s, line %zu, column %zu: malformed CSV: %s (a quote inside an unquoted "
                 "field, or text after a closing quote)", path, r.cur_line, done + 1,
                 csv_strerror(csv_error(&p)));
        }
        pos += chunk;
        if (nl)
            r.cur_line++;
        if (!rc && r.bad_line)
            break;
    }
    if (!rc && !r.bad_line && csv_fini(&p, on_field, on_row, &r) != 0) {
        rc = pn_err(err, errlen, -EINVAL, "%s, line %zu: malformed CSV: a quoted field is not closed before the end of the file",
             path, r.row_fields ? r.row_line : r.cur_line);
    }
    csv_free(&p);
    if (!rc && r.oom)
        rc = -ENOMEM;
    if (!rc && r.bad_line) {
        rc = pn_err(err, errlen, -EINVAL, "%s, line %zu, column %zu: %zu fields where the header has %zu", path,
             r.bad_line, r.bad_count > r.cols ? r.cols + 1 : r.bad_count, r.bad_count, r.cols);
    }
    if (!rc && r.rows == 0) {
        rc = pn_err(err, errlen, -EINVAL, "%s, line 1: empty file (no header row)", path);
    }
    for (size_t c = 0; !rc && c < r.cols; c++)
        if (!r.field[c][0]) {
            rc = pn_err(err, errlen, -EINVAL, "%s, line 1, column %zu: empty column name", path, c + 1);
        }
    free(text);
    if (rc) {
        reader_free(&r);
        return rc;
    }
    char *p_copy = strdup(path);
    if (!p_copy) {
        reader_free(&r);
        return -ENOMEM;
    }
    out->path = p_copy;
    out->field = r.field;
    out->line = r.line;
    out->rows = r.rows;
    out->cols = r.cols;
    return 0;
}

void csvio_free(csvio_table_t *t)
{
    if (!t)
        return;
    if (t->field)
        for (size_t i = 0; i < t->rows * t->cols; i++)
            free(t->field[i]);
    free(t->field);
    free(t->line);
    free(t->path);
    memset(t, 0, sizeof *t);
}

const char *csvio_get(const csvio_table_t *t, size_t row, size_t col)
{
    if (row >= t->rows || col >= t->cols)
        return NULL;
    return t->field[row * t->cols + col];
}

int csvio_col(const csvio_table_t *t, const char *name)
{
    for (size_t c = 0; c < t->cols; c++)
        if (!strcmp(t->field[c], name))
            return (int)c;
    return -1;
}

int csvio_col_require(const csvio_table_t *t, const char *name, size_t *col, char *err, size_t errlen)
{
    int c = csvio_col(t, name);
    if (c < 0) {
        return pn_err(err, errlen, -EINVAL, "%s, line 1: missing column '%s'", t->path, name);
    }
    *col = (size_t)c;
    return 0;
}

int csvio_get_double(const csvio_table_t *t, size_t row, size_t col, double *out, char *err, size_t errlen)
{
    const char *s = csvio_get(t, row, col);
    if (!s)
        return -EINVAL;
    if (!*s) {
        *out = NAN;
        return 0;
    }
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno == ERANGE) {
        return pn_err(err, errlen, -EINVAL, "%s, line %zu, column %zu (%s): '%s' is not a number", t->path, t->line[row],
             col + 1, t->field[col], s);
    }
    *out = v;
    return 0;
}

int csvio_get_int(const csvio_table_t *t, size_t row, size_t col, long long min, long long max,
                  long long *out, char *err, size_t errlen)
{
    const char *s = csvio_get(t, row, col);
    if (!s)
        return -EINVAL;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || end == s || *end || errno == ERANGE) {
        return pn_err(err, errlen, -EINVAL, "%s, line %zu, column %zu (%s): '%s' is not a whole number", t->path,
             t->line[row], col + 1, t->field[col], s);
    }
    if (v < min || v > max) {
        return pn_err(err, errlen, -EINVAL, "%s, line %zu, column %zu (%s): %lld is outside %lld..%lld", t->path,
             t->line[row], col + 1, t->field[col], v, min, max);
    }
    *out = v;
    return 0;
}

void csvio_format_double(double v, char *buf, size_t len)
{
    if (isnan(v)) {
        snprintf(buf, len, "%s", "");
        return;
    }
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

static char *tmp_name(const char *path)
{
    size_t n = strlen(path) + 32;
    char *t = malloc(n);
    if (t)
        snprintf(t, n, "%s.tmp.%ld", path, (long)getpid());
    return t;
}

int csvio_writer_open(csvio_writer_t *w, const char *path, char *err, size_t errlen)
{
    memset(w, 0, sizeof *w);
    w->path = strdup(path);
    w->tmp = tmp_name(path);
    if (!w->path || !w->tmp) {
        csvio_writer_abort(w);
        return -ENOMEM;
    }
    w->f = fopen(w->tmp, "w");
    if (!w->f) {
        int rc = -errno;
        pn_err(err, errlen, 0, "%s: cannot create: %s", w->tmp, strerror(errno));
        csvio_writer_abort(w);
        return rc;
    }
    w->first = 1;
    return 0;
}

static void sep(csvio_writer_t *w)
{
    if (!w->first && fputc(',', w->f) == EOF)
        w->error = EIO;
    w->first = 0;
}

void csvio_put_str(csvio_writer_t *w, const char *s)
{
    sep(w);
    size_t n = strlen(s);
    /* Quote only when a reader would otherwise split or trim the field. */
    int quote = n && (s[0] == ' ' || s[n - 1] == ' ');
    for (size_t i = 0; i < n && !quote; i++)
        quote = s[i] == ',' || s[i] == '"' || s[i] == '\n' || s[i] == '\r';
    if (quote ? csv_fwrite(w->f, s, n) != 0 : fwrite(s, 1, n, w->f) != n)
        w->error = EIO;
}

void csvio_put_double(csvio_writer_t *w, double v)
{
    char buf[40];
    csvio_format_double(v, buf, sizeof buf);
    sep(w);
    if (fputs(buf, w->f) == EOF && buf[0])
        w->error = EIO;
}

void csvio_put_int(csvio_writer_t *w, long long v)
{
    sep(w);
    if (fprintf(w->f, "%lld", v) < 0)
        w->error = EIO;
}

void csvio_row_end(csvio_writer_t *w)
{
    if (fputc('\n', w->f) == EOF)
        w->error = EIO;
    w->first = 1;
}

int csvio_writer_commit(csvio_writer_t *w, char *err, size_t errlen)
{
    int rc = 0;
    if (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0)
        w->error = errno ? errno : EIO;
    if (fclose(w->f) != 0 && !w->error)
        w->error = errno ? errno : EIO;
    w->f = NULL;
    if (w->error) {
        rc = -w->error;
        pn_err(err, errlen, 0, "%s: write failed: %s", w->tmp, strerror(w->error));
    } else if (rename(w->tmp, w->path) != 0) {
        rc = -errno;
        pn_err(err, errlen, 0, "%s: cannot rename to %s: %s", w->tmp, w->path, strerror(errno));
    } else {
        free(w->tmp);
        w->tmp = NULL;
    }
    csvio_writer_abort(w);
    return rc;
}

void csvio_writer_abort(csvio_writer_t *w)
{
    if (w->f)
        fclose(w->f);
    if (w->tmp)
        unlink(w->tmp);
    free(w->tmp);
    free(w->path);
    memset(w, 0, sizeof *w);
}

int csvio_file_write_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen)
{
    csvio_writer_t w;
    int rc = csvio_writer_open(&w, path, err, errlen);
    if (rc)
        return rc;
    if (len && fwrite(data, 1, len, w.f) != len)
        w.error = EIO;
    return csvio_writer_commit(&w, err, errlen);
}
