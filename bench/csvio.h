/* CSV files of a results directory, read and written through libcsv. The reader keeps
 * the line of every row so that a bad value can be named by file, line and column; the
 * writer goes to a temporary name and renames on commit, so a reader never sees half a file. */
#ifndef PN_BENCH_CSVIO_H
#define PN_BENCH_CSVIO_H

#include <stdio.h>
#include <stddef.h>

/* A whole CSV file in memory: row 0 is the header; every row has `cols` fields. */
typedef struct {
    char *path;      /* as given to csvio_read, for messages */
    char **field;    /* rows * cols strings, row-major */
    size_t *line;    /* line in the file where each row starts (from 1) */
    size_t rows, cols;
} csvio_table_t;

/* Reads and checks a CSV file: strict quoting, every row as wide as the header, no empty
 * header name. Errors: -errno for I/O, -EINVAL for malformed input with a message naming
 * the file, the line and the column. */
int csvio_read(const char *path, csvio_table_t *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));
void csvio_free(csvio_table_t *t);
const char *csvio_get(const csvio_table_t *t, size_t row, size_t col);
/* Index of the header column named `name`, or -1. */
int csvio_col(const csvio_table_t *t, const char *name);
/* The column named `name`, or -EINVAL with "FILE, line 1: missing column 'NAME'". */
int csvio_col_require(const csvio_table_t *t, const char *name, size_t *col, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Field (row, col) as a number: an empty field is NaN (not available); anything that is
 * not a whole number (or, for ints, out of range) is -EINVAL naming file, line and column. */
int csvio_get_double(const csvio_table_t *t, size_t row, size_t col, double *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));
int csvio_get_int(const csvio_table_t *t, size_t row, size_t col, long long min, long long max,
                  long long *out, char *err, size_t errlen) __attribute__((warn_unused_result));

/* Writes one file: fields are added left to right, csvio_row_end closes a row. Errors
 * are sticky and surface at commit, so a writer loop needs no check per field. */
typedef struct {
    FILE *f;
    char *path, *tmp;
    int first, error;
} csvio_writer_t;

int  csvio_writer_open(csvio_writer_t *w, const char *path, char *err, size_t errlen)
    __attribute__((warn_unused_result));
void csvio_put_str(csvio_writer_t *w, const char *s);
/* The shortest text that reads back to the same double; NaN as an empty field. */
void csvio_put_double(csvio_writer_t *w, double v);
void csvio_put_int(csvio_writer_t *w, long long v);
void csvio_row_end(csvio_writer_t *w);
/* Flushes, syncs and renames the temporary file over `path`; on any error removes it. */
int  csvio_writer_commit(csvio_writer_t *w, char *err, size_t errlen) __attribute__((warn_unused_result));
/* Drops the temporary file (safe after commit and on a half-opened writer). */
void csvio_writer_abort(csvio_writer_t *w);

/* Shortest "%.Ng" rendering of v that strtod reads back exactly; NaN gives "". */
void csvio_format_double(double v, char *buf, size_t len);

/* Writes `len` bytes to `path` through a temporary name and rename. */
int csvio_file_write_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Reads a whole file into a NUL-terminated malloc'd buffer. */
int csvio_file_read(const char *path, char **data, size_t *len, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
