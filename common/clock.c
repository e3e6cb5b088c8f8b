/* Monotonic and process-CPU clocks in seconds (see clock.h). */
#include "common/clock.h"

#include <time.h>

static double read_clock(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double pn_now(void) { return read_clock(CLOCK_MONOTONIC); }
double pn_cpu_now(void) { return read_clock(CLOCK_PROCESS_CPUTIME_ID); }
