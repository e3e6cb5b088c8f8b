/* The in-transport shaper (`--emulator shim`): a transport wrapped around another that
 * delivers every tensor no earlier than an emulated link would. The sender runs the
 * link's virtual clock (netem/shaper.h) for its outgoing direction and sends the delivery
 * time, on rank 0's clock, in a small header message ahead of the tensor; the receiver
 * completes the receive once both arrived and that time has come, sleeping until then. */
#ifndef PN_PIPELINE_SHIM_H
#define PN_PIPELINE_SHIM_H

#include "common/err.h"
#include "netem/profile.h"
#include "pipeline/transport.h"

/* Takes over *inner (on success it belongs to the shim). links[i] joins ranks i and i+1
 * (size-1 entries); messages between the first and last rank (the tied-embedding
 * exchange) are shaped by the receiver's link, as the namespace switch's port would. *clock_offset is this rank's clock minus rank 0's (seconds), read at
 * every send and receive, so it may be filled in after the bootstrap. */
int shim_transport_wrap(transport_t *inner, const netem_profile_t *links, const double *clock_offset,
                        transport_t *out, char *err, size_t errlen) PN_WUR;
/* The same for --dp replicas of a pipeline of `stages` ranks (rank = d*stages + s): links
 * are one pipeline's (stages-1 entries), applied inside every replica, and dp_link (NULL =
 * unshaped) shapes what this rank sends to the same stage of another replica. */
int shim_transport_wrap_dp(transport_t *inner, int stages, const netem_profile_t *links, const netem_profile_t *dp_link,
                           const double *clock_offset, transport_t *out, char *err, size_t errlen) PN_WUR;

#endif
