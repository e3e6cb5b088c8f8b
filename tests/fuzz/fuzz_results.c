/* libFuzzer target: the CSV reader behind `pipenem report` and `sweep --resume`
 * (results_read over runs.csv, iterations.csv, ops.csv through csvio) and a rank's trace
 * file (results_trace_read). The input is split at NUL bytes into the files, which are
 * written to a private temporary folder made once. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/results.h"

static char dir[64];

static void cleanup(void)
{
    static const char *const names[] = {"runs.csv", "iterations.csv", "ops.csv", "trace.csv"};
    char path[128];
    for (size_t i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void put(const char *name, const uint8_t *p, size_t n)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        abort();
    if (n && fwrite(p, 1, n, f) != n)
        abort();
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/pn-fuzz-results-XXXXXX");
        if (!mkdtemp(dir))
            abort();
        atexit(cleanup);
    }
    if (size > 1 << 16)
        return 0;
    static const char *const names[] = {"runs.csv", "iterations.csv", "ops.csv", "trace.csv"};
    const uint8_t *p = data, *end = data + size;
    for (size_t i = 0; i < 4; i++) {
        const uint8_t *z = memchr(p, 0, (size_t)(end - p));
        const uint8_t *e = z ? z : end;
        put(names[i], p, (size_t)(e - p));
        p = z ? z + 1 : end;
    }
    char err[512], path[128];
    results_t r;
    results_init(&r);
    (void)results_read(dir, &r, err, sizeof err);
    results_destroy(&r);
    results_init(&r);
    snprintf(path, sizeof path, "%s/trace.csv", dir);
    (void)results_trace_read(path, 0, 0, &r, err, sizeof err);
    results_destroy(&r);
    return 0;
}
