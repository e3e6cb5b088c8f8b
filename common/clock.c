/* Monotonic and process-CPU clocks in seconds, and sleeps on them (see clock.h). */
#include "common/clock.h"

#include <errno.h>

static double read_clock(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double pn_now(void) { return read_clock(CLOCK_MONOTONIC); }
double pn_cpu_now(void) { return read_clock(CLOCK_PROCESS_CPUTIME_ID); }

struct timespec pn_timespec(double seconds)
{
    if (!(seconds > 0))
        return (struct timespec){0, 0};
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

void pn_sleep_until(double t)
{
    struct timespec ts = pn_timespec(t);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

void pn_sleep(double s)
{
    pn_sleep_until(pn_now() + s);
}
