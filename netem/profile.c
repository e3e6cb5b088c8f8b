/* Profile text <-> netem_profile_t. Every rejection names the part of the text that is
 * wrong, because profiles are typed by hand on command lines and in sweep grids. */
#include "netem/profile.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROFILE_TEXT_MAX 512

typedef struct {
    const char *name;
    double scale;
} unit_t;

static const unit_t time_units[] = {
    {"ns", 1e-9}, {"us", 1e-6}, {"ms", 1e-3}, {"s", 1.0}, {NULL, 0},
};

/* Bits per second. Lower-case "mbps"/"gbps" are refused rather than guessed: tc reads
 * them as megabytes and gigabytes per second, a factor of 8 nobody should get silently. */
static const unit_t rate_units[] = {
    {"bps", 1.0},  {"bit", 1.0},  {"kbps", 1e3},  {"Kbps", 1e3}, {"kbit", 1e3},
    {"Kbit", 1e3}, {"Mbps", 1e6}, {"mbit", 1e6},  {"Mbit", 1e6}, {"Gbps", 1e9},
    {"gbit", 1e9}, {"Gbit", 1e9}, {"Tbps", 1e12}, {"tbit", 1e12}, {"Tbit", 1e12},
    {NULL, 0},
};

/* Splits "12.5ms" into 12.5 and "ms"; rejects signs, exponents, hex and missing digits. */
static int number_split(const char *s, double *val, const char **unit)
{
    const char *p = s;
    int digits = 0, dot = 0;
    while (isdigit((unsigned char)*p) || (*p == '.' && !dot)) {
        if (*p == '.')
            dot = 1;
        else
            digits++;
        p++;
    }
    if (!digits)
        return -1;
    char num[64];
    size_t n = (size_t)(p - s);
    if (n >= sizeof num)
        return -1;
    memcpy(num, s, n);
    num[n] = '\0';
    *val = strtod(num, NULL);
    *unit = p;
    return 0;
}

static int unit_value(const char *what, const char *s, const unit_t *units,
                      const char *unit_list, double *out, char *err, size_t errlen)
{
    double v;
    const char *u;
    if (!*s)
        return pn_err(err, errlen, -EINVAL, "%s is empty", what);
    if (*s == '-')
        return pn_err(err, errlen, -EINVAL, "%s '%s' is negative", what, s);
    if (number_split(s, &v, &u) < 0)
        return pn_err(err, errlen, -EINVAL, "%s '%s' is not a number with a unit (%s)", what, s, unit_list);
    if (!*u)
        return pn_err(err, errlen, -EINVAL, "%s '%s' has no unit (%s)", what, s, unit_list);
    for (const unit_t *t = units; t->name; t++) {
        if (!strcmp(u, t->name)) {
            *out = v * t->scale;
            if (!isfinite(*out))
                return pn_err(err, errlen, -EINVAL, "%s '%s' is out of range", what, s);
            return 0;
        }
    }
    if (units == rate_units && (!strcmp(u, "mbps") || !strcmp(u, "gbps") || !strcmp(u, "MBps") ||
                                !strcmp(u, "GBps") || !strcmp(u, "KBps") || !strcmp(u, "tbps")))
        return pn_err(err, errlen, -EINVAL, "%s '%s': unit '%s' is ambiguous (tc reads it as bytes/s); "
                    "write Mbps/Gbps or mbit/gbit", what, s, u);
    return pn_err(err, errlen, -EINVAL, "%s '%s' has unknown unit '%s' (%s)", what, s, u, unit_list);
}

#define TIME_UNITS "us, ms, s"
#define RATE_UNITS "bps, kbps, Mbps, Gbps, kbit, mbit, gbit"

static int parse_time(const char *what, const char *s, double *out, char *err, size_t errlen)
{
    if (!strcmp(s, "0")) {
        *out = 0;
        return 0;
    }
    return unit_value(what, s, time_units, TIME_UNITS, out, err, errlen);
}

static int parse_rate(const char *what, const char *s, double *out, char *err, size_t errlen)
{
    int rc = unit_value(what, s, rate_units, RATE_UNITS, out, err, errlen);
    if (rc < 0)
        return rc;
    if (*out <= 0)
        return pn_err(err, errlen, -EINVAL, "%s '%s' must be above zero (leave it out for unlimited)", what, s);
    if (*out < 8)
        return pn_err(err, errlen, -EINVAL, "%s '%s' is below 1 byte per second", what, s);
    if (*out > 1e15) /* like the one-hour delay cap: keeps every rate printable with a unit */
        return pn_err(err, errlen, -EINVAL, "%s '%s' is above 1000 Tbit/s", what, s);
    return 0;
}

static int parse_loss(const char *s, double *out, char *err, size_t errlen)
{
    double v;
    const char *u;
    if (!*s)
        return pn_err(err, errlen, -EINVAL, "loss is empty");
    if (*s == '-')
        return pn_err(err, errlen, -EINVAL, "loss '%s' is negative", s);
    if (number_split(s, &v, &u) < 0 || (*u && strcmp(u, "%")))
        return pn_err(err, errlen, -EINVAL, "loss '%s' is not a percentage like 0.1%% or a fraction like 0.001", s);
    if (*u)
        v /= 100.0;
    if (v > 1.0)
        return pn_err(err, errlen, -EINVAL, "loss '%s' is above 100%%%s", s, *u ? "" : " (write 5% for a percentage)");
    *out = v;
    return 0;
}

static int parse_limit(const char *s, uint32_t *out, char *err, size_t errlen)
{
    if (!*s)
        return pn_err(err, errlen, -EINVAL, "limit is empty");
    for (const char *p = s; *p; p++)
        if (!isdigit((unsigned char)*p))
            return pn_err(err, errlen, -EINVAL, "limit '%s' is not a whole number of packets", s);
    errno = 0;
    unsigned long long v = strtoull(s, NULL, 10);
    if (errno || v == 0 || v > UINT32_MAX)
        return pn_err(err, errlen, -EINVAL, "limit '%s' must be between 1 and %u packets", s, UINT32_MAX);
    *out = (uint32_t)v;
    return 0;
}

static int parse_keyvalues(char *text, netem_profile_t *p, char *err, size_t errlen)
{
    static const char *const keys[] = {"delay", "jitter", "loss", "rate", "limit"};
    int seen[5] = {0};
    char *save = NULL;
    if (text[strlen(text) - 1] == ',')
        return pn_err(err, errlen, -EINVAL, "profile '%s' ends with a comma", text);
    if (text[0] == ',' || strstr(text, ",,"))
        return pn_err(err, errlen, -EINVAL, "profile '%s' has an empty item between commas", text);
    for (char *item = strtok_r(text, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq)
            return pn_err(err, errlen, -EINVAL, "'%s' is not key=value (keys: delay, jitter, loss, rate, limit)", item);
        *eq = '\0';
        const char *key = item, *val = eq + 1;
        int k = -1;
        for (int i = 0; i < 5; i++)
            if (!strcmp(key, keys[i]))
                k = i;
        if (k < 0)
            return pn_err(err, errlen, -EINVAL, "unknown key '%s' (keys: delay, jitter, loss, rate, limit)", key);
        if (seen[k]++)
            return pn_err(err, errlen, -EINVAL, "key '%s' is given twice", key);
        int rc;
        switch (k) {
        case 0: rc = parse_time("delay", val, &p->delay, err, errlen); break;
        case 1: rc = parse_time("jitter", val, &p->jitter, err, errlen); break;
        case 2: rc = parse_loss(val, &p->loss, err, errlen); break;
        case 3: rc = parse_rate("rate", val, &p->rate, err, errlen); break;
        default: rc = parse_limit(val, &p->limit, err, errlen); break;
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

int netem_profile_parse(const char *text, netem_profile_t *out, char *err, size_t errlen)
{
    netem_profile_t p = {0};
    char buf[PROFILE_TEXT_MAX];
    if (!text || !*text)
        return pn_err(err, errlen, -EINVAL, "profile is empty (use 'default', DELAY/RATE or key=value)");
    if (strlen(text) >= sizeof buf)
        return pn_err(err, errlen, -EINVAL, "profile '%.32s...' is too long", text);
    for (const char *c = text; *c; c++)
        if (isspace((unsigned char)*c))
            return pn_err(err, errlen, -EINVAL, "profile '%s' contains a space", text);
    strcpy(buf, text);
    int rc;
    if (!strcmp(buf, "default")) {
        rc = 0;
    } else if (strchr(buf, '=')) {
        rc = parse_keyvalues(buf, &p, err, errlen);
    } else if (strchr(buf, '/')) {
        char *slash = strchr(buf, '/');
        *slash = '\0';
        if (strchr(slash + 1, '/'))
            return pn_err(err, errlen, -EINVAL, "profile '%s' has more than one '/' (DELAY/RATE)", text);
        rc = parse_time("delay", buf, &p.delay, err, errlen);
        if (rc == 0)
            rc = parse_rate("rate", slash + 1, &p.rate, err, errlen);
    } else {
        return pn_err(err, errlen, -EINVAL, "profile '%s' is not 'default', DELAY/RATE (10ms/1Gbps) or "
                    "key=value (delay=10ms,rate=1gbit)", text);
    }
    if (rc < 0)
        return rc;
    if (p.jitter > 0 && p.jitter > p.delay)
        return pn_err(err, errlen, -EINVAL, "jitter %gms exceeds delay %gms in '%s'", p.jitter * 1e3,
                    p.delay * 1e3, text);
    if (p.delay > 3600)
        return pn_err(err, errlen, -EINVAL, "delay in '%s' is above one hour", text);
    *out = p;
    return 0;
}

int netem_profile_is_default(const netem_profile_t *p)
{
    return p->delay == 0 && p->jitter == 0 && p->loss == 0 && p->rate == 0 && p->limit == 0;
}

/* Largest unit that shows the value without a fraction, else microseconds with %g. */
static void time_text(double s, char *buf, size_t len)
{
    double ns = round(s * 1e9);
    if (ns == 0)
        snprintf(buf, len, "0");
    else if (fmod(ns, 1e9) == 0)
        snprintf(buf, len, "%.0fs", ns / 1e9);
    else if (fmod(ns, 1e6) == 0)
        snprintf(buf, len, "%.0fms", ns / 1e6);
    else if (fmod(ns, 1e3) == 0)
        snprintf(buf, len, "%.0fus", ns / 1e3);
    else
        snprintf(buf, len, "%.0fns", ns);
}

static void rate_text(double bps, char *buf, size_t len)
{
    double b = round(bps);
    if (b >= 1e9 && fmod(b, 1e9) == 0)
        snprintf(buf, len, "%.0fGbps", b / 1e9);
    else if (b >= 1e6 && fmod(b, 1e6) == 0)
        snprintf(buf, len, "%.0fMbps", b / 1e6);
    else if (b >= 1e3 && fmod(b, 1e3) == 0)
        snprintf(buf, len, "%.0fkbps", b / 1e3);
    else
        snprintf(buf, len, "%.0fbps", b);
}

static int put(char *buf, size_t len, size_t *at, const char *fmt, ...)
    PN_PRINTF(4, 5);

static int put(char *buf, size_t len, size_t *at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *at, *at < len ? len - *at : 0, fmt, ap);
    va_end(ap);
    if (n < 0 || *at + (size_t)n >= len)
        return -ENOSPC;
    *at += (size_t)n;
    return 0;
}

/* How a profile is written: the canonical text, which parses back to the same profile,
 * or the label that tables and plots show. */
typedef struct {
    const char *sep, *eq; /* between fields; between a field's name and its value */
    const char *rate;     /* the rate field's name */
    int compact;          /* DELAY/RATE where only those two are set */
    int plain_loss;       /* loss in plain decimals (the parser takes no exponent), else %.6g */
} profile_style_t;

static const profile_style_t style_canonical = {",", "=", "rate", 1, 1};
static const profile_style_t style_label = {"  ", " ", "bandwidth", 0, 0};

/* The loss as a percentage: six significant digits, as %g, but with `plain`, without an
 * exponent (1e-06% would not read back). */
static void loss_text(double loss, int plain, char *buf, size_t len)
{
    double v = loss * 100;
    if (!plain) {
        snprintf(buf, len, "%.6g%%", v);
        return;
    }
    int dec = 5 - (int)floor(log10(v));
    snprintf(buf, len, "%.*f", dec < 0 ? 0 : dec > 15 ? 15 : dec, v);
    for (char *e = buf + strlen(buf) - 1; strchr(buf, '.') && (*e == '0' || *e == '.'); e--) {
        int dot = *e == '.';
        *e = '\0';
        if (dot)
            break;
    }
    size_t n = strlen(buf);
    snprintf(buf + n, len - n, "%%");
}

static int profile_write(const netem_profile_t *p, const profile_style_t *st, char *buf, size_t len)
{
    char d[32], j[32], l[64] = "", r[32], lim[16];
    size_t at = 0;
    int rc = 0;
    if (!len)
        return -ENOSPC;
    buf[0] = '\0';
    if (netem_profile_is_default(p)) {
        rc = put(buf, len, &at, "default");
        return rc < 0 ? rc : (int)at;
    }
    time_text(p->delay, d, sizeof d);
    rate_text(p->rate, r, sizeof r);
    if (st->compact && p->delay > 0 && p->rate > 0 && p->jitter == 0 && p->loss == 0 && p->limit == 0) {
        rc = put(buf, len, &at, "%s/%s", d, r);
        return rc < 0 ? rc : (int)at;
    }
    time_text(p->jitter, j, sizeof j);
    if (p->loss > 0)
        loss_text(p->loss, st->plain_loss, l, sizeof l);
    snprintf(lim, sizeof lim, "%u", p->limit);
    const struct {
        int on;
        const char *name, *value;
    } f[] = {
        {p->delay > 0, "delay", d}, {p->jitter > 0, "jitter", j}, {p->loss > 0, "loss", l},
        {p->rate > 0, st->rate, r}, {p->limit > 0, "limit", lim},
    };
    const char *sep = "";
    for (size_t i = 0; rc == 0 && i < sizeof f / sizeof f[0]; i++) {
        if (!f[i].on)
            continue;
        rc = put(buf, len, &at, "%s%s%s%s", sep, f[i].name, st->eq, f[i].value);
        sep = st->sep;
    }
    return rc < 0 ? rc : (int)at;
}

int netem_profile_format(const netem_profile_t *p, char *buf, size_t len)
{
    return profile_write(p, &style_canonical, buf, len);
}

int netem_profile_label(const netem_profile_t *p, char *buf, size_t len)
{
    return profile_write(p, &style_label, buf, len);
}

/* True where a per-link item starts: "<digits>-<digits>=". */
static int link_item_at(const char *s)
{
    const char *p = s;
    if (!isdigit((unsigned char)*p))
        return 0;
    while (isdigit((unsigned char)*p))
        p++;
    if (*p++ != '-' || !isdigit((unsigned char)*p))
        return 0;
    while (isdigit((unsigned char)*p))
        p++;
    return *p == '=';
}

int netem_net_parse(const char *text, int hosts, netem_profile_t *links, char *err, size_t errlen)
{
    char perr[256];
    if (hosts < 1)
        return pn_err(err, errlen, -EINVAL, "--net needs at least one host (got %d)", hosts);
    if (!text || !*text)
        return pn_err(err, errlen, -EINVAL, "--net is empty (use a profile or 0-1=PROFILE,1-2=PROFILE)");
    int n = hosts - 1;
    if (!link_item_at(text)) {
        netem_profile_t p;
        int rc = netem_profile_parse(text, &p, perr, sizeof perr);
        if (rc < 0)
            return pn_err(err, errlen, -EINVAL, "--net: %s", perr);
        for (int i = 0; i < n; i++)
            links[i] = p;
        return 0;
    }
    if (strlen(text) >= 4096)
        return pn_err(err, errlen, -EINVAL, "--net '%.32s...' is too long", text);
    netem_profile_t tmp[n > 0 ? n : 1];
    char seen[n > 0 ? n : 1];
    memset(tmp, 0, sizeof tmp);
    memset(seen, 0, sizeof seen);
    const char *s = text;
    while (*s) {
        if (!link_item_at(s))
            return pn_err(err, errlen, -EINVAL, "--net item '%s' does not start with a link like 0-1=", s);
        char *end;
        long a = strtol(s, &end, 10);
        long b = strtol(end + 1, &end, 10);
        const char *prof = end + 1;
        /* The profile runs until the next ",<i>-<j>=" (key=value profiles contain commas). */
        const char *stop = prof;
        while (*stop && !(*stop == ',' && link_item_at(stop + 1)))
            stop++;
        char item[512];
        size_t plen = (size_t)(stop - prof);
        if (plen >= sizeof item)
            return pn_err(err, errlen, -EINVAL, "--net profile of link %ld-%ld is too long", a, b);
        memcpy(item, prof, plen);
        item[plen] = '\0';
        if (a == LONG_MAX || b != a + 1) /* strtol saturates: a + 1 would overflow */
            return pn_err(err, errlen, -EINVAL, "--net link '%ld-%ld' does not join neighbouring hosts (i-(i+1))", a, b);
        if (b >= hosts)
            return pn_err(err, errlen, -EINVAL, "--net link '%ld-%ld' names host %ld, but there are %d hosts (0-%d)",
                        a, b, b, hosts, hosts - 1);
        if (seen[a]++)
            return pn_err(err, errlen, -EINVAL, "--net link '%ld-%ld' is given twice", a, b);
        if (netem_profile_parse(item, &tmp[a], perr, sizeof perr) < 0)
            return pn_err(err, errlen, -EINVAL, "--net link %ld-%ld: %s", a, b, perr);
        s = *stop ? stop + 1 : stop;
    }
    for (int i = 0; i < n; i++)
        links[i] = tmp[i];
    return 0;
}

double netem_profile_goodput(double rate, int mtu)
{
    /* IPv4 20 + TCP 20 + timestamps 12 inside the MTU; the Ethernet header (14) is
     * counted by the qdisc, preamble and FCS are not (skb->len). */
    if (mtu <= 52)
        return 0;
    return rate * (double)(mtu - 52) / (double)(mtu + 14);
}
