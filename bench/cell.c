/* One sweep cell on this machine. Running stages needs pipeline/'s local runner and
 * netem/'s topology; until both are part of the build this says so, and the sweep stops
 * with that message instead of pretending to measure. */
#include "bench/cell.h"

#include <errno.h>
#include <stdio.h>

int cell_measure(void *ctx, const sweep_spec_t *s, results_cell_t *cell, const char *workdir,
                 volatile sig_atomic_t *stop, results_t *r, char *err, size_t errlen)
{
    (void)ctx, (void)s, (void)cell, (void)workdir, (void)stop, (void)r;
    snprintf(err, errlen, "measuring a cell is not available yet: it needs pipeline/'s local runner and "
                          "netem/'s topology, which have not landed in this build");
    return -ENOSYS;
}
