/* Virtual-clock link model used by the shim emulator: serialisation at the link rate,
 * queueing behind earlier messages, then the propagation delay. */
#include "netem/shaper.h"

void netem_shaper_init(netem_shaper_t *s, const netem_profile_t *p)
{
    s->delay = p->delay;
    s->rate = p->rate;
    s->free_at = 0;
}

double netem_shaper_deliver(netem_shaper_t *s, double t, size_t bytes)
{
    double start = t > s->free_at ? t : s->free_at;
    double done = s->rate > 0 ? start + (double)bytes * 8.0 / s->rate : start;
    s->free_at = done;
    return done + s->delay;
}

size_t netem_shaper_wire_bytes(size_t bytes, int mtu)
{
    if (mtu <= 52)
        return bytes;
    size_t mss = (size_t)mtu - 52;
    size_t packets = (bytes + mss - 1) / mss;
    return bytes + packets * 66;   /* 14 Ethernet + 20 IPv4 + 20 TCP + 12 timestamps */
}
