/* The tc controller: puts a profile on a network device as its root qdisc (netem, or
 * TBF where only a rate is asked or netem is missing) over rtnetlink with libnl, reads
 * it back, and restores the device's original root qdisc. Every device is saved to the
 * state file (netem/state.h) before its first change, so nothing stays shaped. The
 * qdisc kinds themselves are the table in netem/qdisc.h. */
#ifndef PN_NETEM_TC_H
#define PN_NETEM_TC_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "netem/profile.h"

/* A device: ifname inside the named network namespace (/run/netns/NAME), or inside the
 * caller's namespace when netns is NULL or "". */
typedef struct {
    char netns[64];
    char ifname[16];
} netem_dev_t;

/* What netem_tc_apply installs (netem_qdisc_of maps it to its table entry). */
typedef enum {
    NETEM_QDISC_NONE,   /* default profile: the original qdisc */
    NETEM_QDISC_NETEM,
    NETEM_QDISC_TBF,
} netem_qdisc_kind_t;

/* What netem_tc_apply installed. */
typedef struct {
    netem_qdisc_kind_t kind;
    uint32_t limit;      /* netem: packets (derived or given); TBF: bytes queued */
    uint32_t burst;      /* TBF: bytes */
    int limit_derived;   /* 1 when the limit came from rate x delay */
} netem_tc_applied_t;

enum {
    NETEM_TC_PERSIST = 1,   /* keep the shaping after this process exits (`netem apply`) */
    NETEM_TC_NO_NETEM = 2,  /* pretend sch_netem is missing (tests of the TBF path) */
    NETEM_TC_EPHEMERAL = 4, /* the device dies with a namespace pipenem removes: no save */
    NETEM_TC_CLASS_PER_PEER = 8, /* by_dest: every peer its own class, even of one profile */
};

int netem_dev_init(netem_dev_t *d, const char *netns, const char *ifname, char *err,
                   size_t errlen) PN_WUR;

/* The netem packet limit for a profile: the packets in flight over rate x (delay +
 * jitter) at MTU-sized frames, doubled for headroom, plus netem's default of 1000. */
uint32_t netem_tc_limit(const netem_profile_t *p);

/* Applies p as the root qdisc of d (replacing what pipenem put there before); the
 * default profile restores the original. Errors: -EPERM without CAP_NET_ADMIN (nothing
 * changed), -ENODEV, -EOPNOTSUPP when the profile needs netem and the kernel lacks it,
 * -EBUSY when d has a classful qdisc tree pipenem could not restore exactly. */
int netem_tc_apply(const netem_dev_t *d, const netem_profile_t *p, int flags,
                   netem_tc_applied_t *out, char *err, size_t errlen)
    PN_WUR;

/* Per-source shaping on one device: packets whose IPv4 source is src[i] get profile
 * p[i] (default profiles are skipped), all others pass unshaped. An HTB root 1: whose
 * classes 1:(2+i) only sort (100 Gbit/s), each with the leaf netem_tc_apply would make
 * for p[i] (netem, or TBF for a rate alone), and u32 filters on the source address;
 * unclassified packets take HTB's direct queue. Used where two links with different
 * profiles meet at one host. Same saving, flags and errors as netem_tc_apply. */
int netem_tc_apply_by_source(const netem_dev_t *d, int n, const char *const *src,
                             const netem_profile_t *p, int flags, char *err, size_t errlen)
    PN_WUR;

/* One peer of a per-destination tree: packets to IPv4 addr (and, when port is not 0,
 * to or from that TCP/UDP port: the job's own) get profile. */
#define NETEM_TC_MAX_PEERS 16
typedef struct {
    char addr[16];
    uint16_t port;
    netem_profile_t profile;
} netem_tc_peer_t;

/* Per-destination shaping of a real host's device: the same tree as by_source, but the
 * u32 filters match the destination address (and port), so only the job's traffic to
 * each peer is shaped, with that link's profile; everything else (ssh, the scheduler's
 * own traffic) takes HTB's direct queue untouched. Egress only: each host shapes what it
 * sends, so a link's two directions are set on its two ends. Peers given the same
 * profile share one class and leaf (a rate is the host's link capacity, shared by its
 * traffic to all of them, as the local topology's switch port shares it), unless flags
 * has NETEM_TC_CLASS_PER_PEER (a link per pair of hosts, as the local topology's
 * per-source trees of --dp shape them). Default
 * profiles are skipped. Same saving (the original root goes to the state file first), flags and
 * errors as netem_tc_apply; -EINVAL for a bad or repeated peer. */
int netem_tc_apply_by_dest(const netem_dev_t *d, int n, const netem_tc_peer_t *peer, int flags,
                           char *err, size_t errlen) PN_WUR;

/* Reads d's root qdisc back from the kernel: kind is its name ("netem", "tbf",
 * "noqueue", ...); *p the profile it implements (all zero for anything else), with
 * p->limit set only when it differs from the derived one; *limit the queue limit. */
int netem_tc_show(const netem_dev_t *d, netem_profile_t *p, char *kind, size_t kindlen,
                  uint32_t *limit, char *err, size_t errlen) PN_WUR;

/* One class of a per-source or per-destination tree read back from the kernel. */
typedef struct {
    char src[16];            /* IPv4 source the u32 filter sorts into this class, or "" */
    char dst[16];            /* IPv4 destination (per-destination trees), or "" */
    uint16_t port;           /* the port matched as well, 0 for any */
    char kind[16];           /* its leaf: "netem" or "tbf" */
    netem_profile_t profile;
} netem_tc_class_t;

/* Reads back a per-source or per-destination tree on d: up to max classes into out, their count in *n
 * (0 when d's root is not such a tree). */
int netem_tc_show_by_source(const netem_dev_t *d, netem_tc_class_t *out, int max, int *n,
                            char *err, size_t errlen) PN_WUR;

/* Restores d's saved original root qdisc and forgets it. 0 also when d was never
 * changed (nothing to do). */
int netem_tc_clear(const netem_dev_t *d, char *err, size_t errlen)
    PN_WUR;

/* Root qdisc of d as a raw netlink record (the unit of save and restore). */
typedef struct {
    char kind[16];
    uint32_t handle;
    int is_default;          /* handle 0: created by the kernel; restore = delete ours */
    uint16_t optlen;
    unsigned char opts[2048];  /* TCA_OPTIONS payload, replayed verbatim */
} netem_qdisc_saved_t;

int netem_tc_save(const netem_dev_t *d, netem_qdisc_saved_t *out, char *err, size_t errlen)
    PN_WUR;
int netem_tc_restore(const netem_dev_t *d, const netem_qdisc_saved_t *s, char *err,
                     size_t errlen) PN_WUR;

/* Which qdisc kinds this kernel offers, tried on a veth in a scratch namespace. */
typedef struct {
    const char *kind;
    int rc;              /* 0 supported, else the negative errno of the attempt */
} netem_tc_probe_row_t;

#define NETEM_TC_PROBE_KINDS 6
typedef struct {
    netem_tc_probe_row_t rows[NETEM_TC_PROBE_KINDS];  /* netem tbf htb prio fq_codel pfifo */
    int may_change;      /* 1 when this process has CAP_NET_ADMIN */
} netem_tc_probe_t;

int netem_tc_probe(netem_tc_probe_t *out, char *err, size_t errlen)
    PN_WUR;

/* 1 when the kernel has sch_netem (probed once per process, cached). */
int netem_tc_have_netem(void);

/* 1 when this process has CAP_NET_ADMIN. */
int netem_tc_may_change(void);

#endif
