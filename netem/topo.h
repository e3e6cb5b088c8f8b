/* The local topology: H hosts as network namespaces pn<id>-h<i>, each joined by a veth
 * to a bridge in a switch namespace pn<id>-sw, addresses 198.18.0.<i+1>/24. Profiles go
 * on the switch side of each veth, so a host's traffic is shaped once per direction and
 * never on the sender's own interface (where TCP small queues would throttle it).
 * Namespaces, veths and bridges are made with iproute2's `ip` (simpler and as robust as
 * hand-built link netlink); qdiscs with libnl (netem/tc.h). Every namespace is recorded
 * in the state file before it is made, so any exit path, or `netem clear --all` after a
 * crash, removes it, and with it the veths and the bridge inside. */
#ifndef PN_NETEM_TOPO_H
#define PN_NETEM_TOPO_H

#include <stddef.h>

#include "common/err.h"
#include "netem/profile.h"

#define NETEM_TOPO_MAX_HOSTS 64

struct netem_emulator;

typedef struct {
    char id[12];                 /* "pn<pid>" (+ a letter for a second topology) */
    int hosts;
    int made;                    /* namespaces created so far (switch first) */
    char sw_ns[32], bridge[16];
    char host_ns[NETEM_TOPO_MAX_HOSTS][32];
    char host_if[NETEM_TOPO_MAX_HOSTS][16];    /* inside the host namespace */
    char port_if[NETEM_TOPO_MAX_HOSTS][16];    /* switch side, where shaping happens */
    char host_addr[NETEM_TOPO_MAX_HOSTS][16];
    netem_profile_t links[NETEM_TOPO_MAX_HOSTS];   /* as applied; links[i] joins i and i+1 */
    int pairs;                                     /* 1: applied per ordered pair (netem_topo_apply_pairs),
                                                      links[] unused */
    const struct netem_emulator *emulator;         /* what netem_topo_apply(_pairs) chose */
    char why[192];                                 /* and why */
} netem_topo_t;

/* Builds the namespaces, veths and bridge; on error everything made so far is removed. */
int netem_topo_create(netem_topo_t *t, int hosts, char *err, size_t errlen)
    PN_WUR;

const char *netem_topo_host_ns(const netem_topo_t *t, int host);
const char *netem_topo_host_addr(const netem_topo_t *t, int host);   /* dotted IPv4 */
const char *netem_topo_host_ifname(const netem_topo_t *t, int host); /* for UCX_NET_DEVICES */

/* setns of the calling thread into the host's namespace (for a while: callers come back). */
int netem_topo_enter(const netem_topo_t *t, int host) PN_WUR;

/* Moves a forked process into the host for good: its namespace, and a private /sys
 * mounted there. UCX lists interfaces from /sys/class/net, which shows the namespace of
 * whoever mounted sysfs, so without this (as `ip netns exec` does it) UCX would not see
 * the host's veth. The message names the namespace and the step that failed. */
int netem_topo_become_host(const netem_topo_t *t, int host, char *err, size_t errlen)
    PN_WUR;

/* Puts links[0..hosts-2] on the topology with the emulator named "auto", "netem" or
 * "shim" (see netem/emulator.h); t->emulator and t->why say what was chosen. */
int netem_topo_apply(netem_topo_t *t, const netem_profile_t *links, const char *emulator,
                     char *err, size_t errlen) PN_WUR;

/* The profile of what host src sends to host dst (src != dst); a default profile
 * leaves that ordered pair unshaped. */
typedef void (*netem_topo_pair_fn)(void *arg, int src, int dst, netem_profile_t *out);

/* Puts a profile on every ordered pair of hosts (pair(arg, src, dst)), for topologies
 * whose hosts do not form one chain (the D x P hosts of --dp). The emulator is chosen as
 * netem_topo_apply does, over the distinct non-default profiles. A kernel emulator gives
 * each host's switch port a per-source tree (netem_tc_apply_by_source): one class per
 * source whose profile to that host is not default, so each ordered pair is its own
 * link with its own rate (as the in-transport shim shapes each peer), and traffic of
 * every other pair passes unshaped. Other emulators leave the kernel unshaped. The
 * qdiscs live in the switch namespace, recorded in the state file with it. -EINVAL when
 * a host hears from more sources than a tree holds (16). */
int netem_topo_apply_pairs(netem_topo_t *t, netem_topo_pair_fn pair, void *arg, const char *emulator,
                           char *err, size_t errlen) PN_WUR;

/* The backend netem_topo_apply chose ("netem", "shim", "none"), NULL before any apply;
 * what every result records. */
const char *netem_topo_emulator(const netem_topo_t *t);

/* Removes everything; idempotent, accepts a half-built or zeroed topology. */
void netem_topo_destroy(netem_topo_t *t);

/* Runs `ip ARGS...` (NULL-terminated), no shell; its stderr goes into err. */
int netem_topo_ip(char *err, size_t errlen, const char *arg, ...)
    __attribute__((sentinel)) PN_WUR;

/* Deletes a namespace by name; 0 when it does not exist. */
int netem_topo_netns_delete(const char *name, char *err, size_t errlen)
    PN_WUR;

/* A scratch namespace with one veth pair (ifname up, peer ifname-p), recorded in the
 * state file; and its removal. Used by probes and tests. */
int netem_topo_scratch_create(const char *netns, const char *ifname, char *err, size_t errlen)
    PN_WUR;
int netem_topo_scratch_destroy(const char *netns, char *err, size_t errlen)
    PN_WUR;

/* Every namespace and host link whose name starts with prefix (e.g. "pn1234"): how many
 * are left on the machine, listed into buf. For leak checks. */
int netem_topo_leftovers(const char *prefix, char *buf, size_t len);

#endif
