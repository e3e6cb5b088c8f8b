/* Network emulation profiles: the text users write (`default`, `10ms/1Gbps`,
 * `delay=10ms,jitter=1ms,loss=0.1%,rate=1gbit,limit=N`) and per-link `--net` lists,
 * parsed into seconds, fractions and bits per second, and printed back the same way. */
#ifndef PN_NETEM_PROFILE_H
#define PN_NETEM_PROFILE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct {
    double delay;    /* one-way, seconds */
    double jitter;   /* seconds */
    double loss;     /* fraction 0..1 */
    double rate;     /* bits per second; 0 = unlimited */
    uint32_t limit;  /* netem packet limit; 0 = derive from rate x delay */
} netem_profile_t;   /* all zero = `default` (unshaped) */

/* Parses one profile. Errors: -EINVAL with a message naming the bad part. */
int netem_profile_parse(const char *text, netem_profile_t *out, char *err, size_t errlen)
    PN_WUR;

/* "10ms/1Gbps", "default", or a key=value list; the output parses back to the same
 * profile. Returns the length written, or -ENOSPC when buf is too small. */
int netem_profile_format(const netem_profile_t *p, char *buf, size_t len);

int netem_profile_is_default(const netem_profile_t *p);

/* A human label for tables: "default", "delay 10ms  bandwidth 1Gbps". Returns the
 * length written, or -ENOSPC. */
int netem_profile_label(const netem_profile_t *p, char *buf, size_t len);

/* --net: one PROFILE for every link, or "0-1=P,1-2=P" per neighbouring link.
 * links[i] is the link between host i and i+1 (hosts-1 entries); unnamed links default.
 * Errors: -EINVAL with a message naming the bad part. */
int netem_net_parse(const char *text, int hosts, netem_profile_t *links, char *err,
                    size_t errlen) PN_WUR;

/* Goodput a TCP stream can reach over a link of `rate` bits/s whose shaper counts
 * whole Ethernet frames (netem, TBF): MSS / frame = 1448 / 1514 of the rate at MTU
 * 1500 (IPv4 + TCP with timestamps), about 95.6%. */
double netem_profile_goodput(double rate, int mtu);

#endif
