/* The one clock the project measures with: CLOCK_MONOTONIC in seconds, and the
 * process's own CPU time for "how much did waiting cost" checks. */
#ifndef PN_COMMON_CLOCK_H
#define PN_COMMON_CLOCK_H

double pn_now(void);      /* CLOCK_MONOTONIC, seconds */
double pn_cpu_now(void);  /* CLOCK_PROCESS_CPUTIME_ID, seconds */

#endif
