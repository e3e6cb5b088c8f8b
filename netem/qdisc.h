/* The qdisc kinds pipenem knows, as a const table in the style of iproute2's struct
 * qdisc_util: each entry says what it is (a shaper of ours, a kernel's default root, the
 * root of a per-source tree, a kind the probe tries), builds its options into a request
 * (put) and reads them back into a profile (parse). Callers look an entry up by the kind
 * the kernel reports and act on its fields, never on the name. */
#ifndef PN_NETEM_QDISC_H
#define PN_NETEM_QDISC_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "netem/profile.h"
#include "netem/tc.h"

struct nl_msg;

typedef struct netem_qdisc_ops {
    const char *kind;            /* the kernel's name: TCA_KIND */
    netem_qdisc_kind_t id;       /* what netem_tc_apply reports installing, NONE for the rest */
    const char *limit_unit;      /* unit of the queue limit parse reads ("packets", "bytes"), or NULL */
    int kernel_default;          /* a kernel's own default root (noqueue, mq, ...): the default profile */
    int per_source;              /* may be the root of a per-source tree (netem_tc_apply_by_source) */
    int probed;                  /* netem_tc_probe tries it, in table order */
    netem_profile_t sample;      /* the probe's setting for put */
    /* Appends TCA_KIND and TCA_OPTIONS for profile p; what it installed goes into *a.
     * NULL for kinds pipenem never creates. */
    int (*put)(struct nl_msg *msg, const netem_profile_t *p, netem_tc_applied_t *a);
    /* Saved options back to the profile they implement (p->limit only when it differs
     * from the derived one) and the queue limit. NULL: nothing of ours to read. */
    void (*parse)(const netem_qdisc_saved_t *r, netem_profile_t *p, uint32_t *limit);
    /* Appends a class of this (classful) kind that only sorts: the per-source tree's. */
    int (*put_class)(struct nl_msg *msg);
    /* One line on what put installed, for `netem apply`. */
    void (*describe)(const netem_tc_applied_t *a, char *buf, size_t len);
} netem_qdisc_ops_t;

/* The entry of a kind ("netem", "noqueue", ... and "none" for a device without a root),
 * or NULL for a kind pipenem does not know. */
const netem_qdisc_ops_t *netem_qdisc_find(const char *kind);

/* The entry with this id (NETEM_QDISC_NETEM or NETEM_QDISC_TBF), NULL for NONE. */
const netem_qdisc_ops_t *netem_qdisc_of(netem_qdisc_kind_t id);

/* The shaper for a profile, at a root or a leaf: netem where delay, jitter, loss or a
 * limit is asked, TBF for a rate alone. */
const netem_qdisc_ops_t *netem_qdisc_for(const netem_profile_t *p);

/* The root kind of per-source trees (the entry with per_source set). */
const netem_qdisc_ops_t *netem_qdisc_tree(void);

/* The i-th entry, NULL past the end (to walk the table). */
const netem_qdisc_ops_t *netem_qdisc_at(size_t i);

/* What netem_tc_apply installed, one line: "qdisc netem, limit 1000 packets (...)",
 * "qdisc tbf, burst ...", or "default: original root qdisc restored". */
void netem_qdisc_describe(const netem_tc_applied_t *a, char *buf, size_t len);

#endif
