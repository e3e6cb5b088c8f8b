/* Parsers for the numbers users type: whole numbers in a range, sizes ("64MiB"),
 * durations ("25ms") and rates ("1Gbps"). Each takes the whole string (no trailing
 * junk), sets *out only on success and returns 0 or -EINVAL; the caller words the
 * message, since only it knows which option the text came from. */
#ifndef PN_COMMON_PARSE_H
#define PN_COMMON_PARSE_H

#include <stdint.h>

#include "common/err.h"

/* A decimal integer in [lo, hi]. */
int pn_parse_int(const char *s, long lo, long hi, int *out) PN_WUR;
int pn_parse_long(const char *s, long lo, long hi, long *out) PN_WUR;
/* Seconds from a number with a unit: "1.5s", "25ms", "300us", "10ns". */
int pn_parse_duration(const char *s, double *out) PN_WUR;
/* Bytes from a number with an optional unit: B, k/K/KB (1000), KiB (1024), M/MB/MiB,
 * G/GB/GiB; no unit means bytes. */
int pn_parse_size(const char *s, uint64_t *out) PN_WUR;
/* Bits per second from "10Gbps", "1gbit", "500Mbit", "100kbps", "8bps" (SI, case of the
 * prefix ignored; "bps" and "bit" both mean bits per second, as tc's "gbit"). */
int pn_parse_rate(const char *s, double *out) PN_WUR;

#endif
