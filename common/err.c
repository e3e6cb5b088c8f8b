/* Error text helpers (see err.h). */
#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int pn_err(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

void pn_err_prefix(char *err, size_t errlen, const char *prefix)
{
    if (!err || !errlen)
        return;
    size_t pl = strlen(prefix);
    if (pl + 2 >= errlen)
        return;
    size_t ml = strnlen(err, errlen - 1);
    if (ml > errlen - pl - 3)
        ml = errlen - pl - 3;
    memmove(err + pl + 2, err, ml);
    memcpy(err, prefix, pl);
    err[pl] = ':';
    err[pl + 1] = ' ';
    err[pl + 2 + ml] = '\0';
}
