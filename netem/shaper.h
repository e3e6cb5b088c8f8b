/* The in-transport shaper: a virtual clock per link and direction that tells the
 * pipeline when a message would arrive over an emulated link (`--emulator shim`).
 * Pure arithmetic: no root, no tc, works over any transport. */
#ifndef PN_NETEM_SHAPER_H
#define PN_NETEM_SHAPER_H

#include <stddef.h>

#include "netem/profile.h"

typedef struct {
    double delay;    /* one-way, seconds */
    double rate;     /* bits per second; 0 = unlimited */
    double free_at;  /* seconds: when the link has finished serialising what it holds */
} netem_shaper_t;    /* one direction of one link */

void netem_shaper_init(netem_shaper_t *s, const netem_profile_t *p);

/* n bytes handed over at t (seconds): returns the delivery time
 * max(t, free_at) + n*8/rate + delay and marks the link busy until max(t, free_at) + n*8/rate */
double netem_shaper_deliver(netem_shaper_t *s, double t, size_t bytes);

/* Wire bytes a TCP stream of `bytes` payload occupies at this MTU under a shaper that
 * counts Ethernet frames (netem, TBF), so the shim can charge what the kernel would. */
size_t netem_shaper_wire_bytes(size_t bytes, int mtu);

#endif
