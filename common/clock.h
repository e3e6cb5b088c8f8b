/* The one clock the project measures with: CLOCK_MONOTONIC in seconds, and the
 * process's own CPU time for "how much did waiting cost" checks; and the conversions and
 * sleeps on that clock, so that no module converts seconds to a timespec by hand. */
#ifndef PN_COMMON_CLOCK_H
#define PN_COMMON_CLOCK_H

#include <time.h>

double pn_now(void);      /* CLOCK_MONOTONIC, seconds */
double pn_cpu_now(void);  /* CLOCK_PROCESS_CPUTIME_ID, seconds */

/* Seconds (a time on pn_now()'s clock, or a duration) as a timespec, nanoseconds below
 * one second: for pthread_cond_timedwait on a CLOCK_MONOTONIC condition and the like. */
struct timespec pn_timespec(double seconds);

/* Sleeps until pn_now() reaches t: an absolute deadline, so that a sleep interrupted by
 * a signal resumes without drift. Returns at once when t has passed. */
void pn_sleep_until(double t);

/* Sleeps for s seconds (pn_sleep_until(pn_now() + s)). */
void pn_sleep(double s);

#endif
