/* Error text and status conventions shared by every module: library code returns 0 or a
 * negative errno-style code and writes one line of text naming the problem into the
 * caller's buffer; only main decides what to print and how to exit. */
#ifndef PN_COMMON_ERR_H
#define PN_COMMON_ERR_H

#include <stddef.h>

/* Marks a function whose status must be checked. */
#define PN_WUR __attribute__((warn_unused_result))
/* printf-style argument checking for a format at position f, arguments from a. */
#define PN_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Writes the formatted message into err (if err and errlen) and returns rc, so that a
 * failure reads `return pn_err(err, errlen, -EINVAL, "--stages: ...", ...);`. */
int pn_err(char *err, size_t errlen, int rc, const char *fmt, ...) PN_PRINTF(4, 5);

/* Prepends "prefix: " to the message already in err (no-op without a buffer). */
void pn_err_prefix(char *err, size_t errlen, const char *prefix);

#endif
