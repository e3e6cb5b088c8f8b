/* Number, size, duration and rate parsers (see parse.h). */
#include "common/parse.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int pn_parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    if (!s || !*s)
        return -EINVAL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return -EINVAL;
    *out = v;
    return 0;
}

int pn_parse_int(const char *s, long lo, long hi, int *out)
{
    long v;
    if (lo < -2147483647L - 1 || hi > 2147483647L || pn_parse_long(s, lo, hi, &v))
        return -EINVAL;
    *out = (int)v;
    return 0;
}

/* A non-negative finite number followed by a unit; *unit points at the rest. */
static int parse_number(const char *s, double *v, const char **unit)
{
    char *end;
    if (!s || !*s)
        return -EINVAL;
    errno = 0;
    double x = strtod(s, &end);
    if (end == s || errno || !(x >= 0) || isinf(x))
        return -EINVAL;
    *v = x;
    *unit = end;
    return 0;
}

typedef struct {
    const char *unit;
    double scale;
} unit_t;

static int scaled(const char *s, const unit_t *units, int icase, double *out)
{
    double v;
    const char *u;
    if (parse_number(s, &v, &u))
        return -EINVAL;
    for (const unit_t *t = units; t->unit; t++)
        if (icase ? !strcasecmp(u, t->unit) : !strcmp(u, t->unit)) {
            *out = v * t->scale;
            return 0;
        }
    return -EINVAL;
}

int pn_parse_duration(const char *s, double *out)
{
    static const unit_t units[] = {{"s", 1}, {"ms", 1e-3}, {"us", 1e-6}, {"ns", 1e-9}, {NULL, 0}};
    return scaled(s, units, 0, out);
}

int pn_parse_size(const char *s, uint64_t *out)
{
    static const unit_t units[] = {
        {"", 1},          {"B", 1},          {"k", 1e3},       {"K", 1e3},
        {"KB", 1e3},      {"KiB", 1024.0},   {"M", 1e6},       {"MB", 1e6},
        {"MiB", 1048576.0}, {"G", 1e9},      {"GB", 1e9},      {"GiB", 1073741824.0},
        {NULL, 0},
    };
    double v;
    if (scaled(s, units, 0, &v) || v > 1.8e19 || v != floor(v))
        return -EINVAL;
    *out = (uint64_t)v;
    return 0;
}

int pn_parse_rate(const char *s, double *out)
{
    static const unit_t units[] = {
        {"bps", 1},    {"bit", 1},    {"kbps", 1e3}, {"kbit", 1e3}, {"mbps", 1e6},
        {"mbit", 1e6}, {"gbps", 1e9}, {"gbit", 1e9}, {"tbps", 1e12}, {"tbit", 1e12},
        {NULL, 0},
    };
    double v;
    if (scaled(s, units, 1, &v) || !(v > 0))
        return -EINVAL;
    *out = v;
    return 0;
}
