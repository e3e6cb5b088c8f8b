/* The rtnetlink plumbing under the tc controller, shared by tc.c (root qdiscs, save and
 * restore), tc_tree.c (per-source trees) and qdisc.c (each kind's options): a netlink
 * socket opened inside a device's namespace, request/ack, qdisc messages, TCA_OPTIONS
 * framing and the dump of a device's qdiscs. Internal to netem/. */
#ifndef PN_NETEM_TCNL_H
#define PN_NETEM_TCNL_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "netem/tc.h"

struct nl_msg;
struct nl_sock;
struct nlattr;

#define TCNL_TICK_NS 64   /* PSCHED_SHIFT 6: the kernel's tick for tc time fields */
#define TCNL_DUMP_LEAVES 16

typedef struct {
    struct nl_sock *sk;
    int ifindex;
    int kerr;   /* errno of the last NLMSG_ERROR, negative */
} tcnl_conn_t;

/* "NS/IF" (or "IF") for messages. */
void tcnl_dev_name(const netem_dev_t *d, char *buf, size_t len);

/* A socket made inside d's namespace (it stays bound there), the calling thread back
 * in its own; need_dev resolves d's ifindex too. */
int tcnl_open(const netem_dev_t *d, int need_dev, tcnl_conn_t *c, char *err, size_t errlen) PN_WUR;
void tcnl_close(tcnl_conn_t *c);

/* Sends msg (consumed) and waits for the kernel's answer: 0 or its negative errno. */
int tcnl_call(tcnl_conn_t *c, struct nl_msg *msg);
/* tcnl_call for a message whose building may have failed: built is 0 or the error of
 * building it (msg is then freed, and may be NULL). */
int tcnl_call_built(tcnl_conn_t *c, struct nl_msg *msg, int built);

/* A tcmsg request (qdisc, class or filter) of type with flags | REQUEST | ACK; NULL
 * when out of memory. */
struct nl_msg *tcnl_msg(int type, int flags, int ifindex, uint32_t parent, uint32_t handle);

/* TCA_OPTIONS opened and closed by hand: netem's options are a struct followed by
 * attributes, not a plain nest, and older kernels reject NLA_F_NESTED on it. */
struct nlattr *tcnl_opts_begin(struct nl_msg *msg);
void tcnl_opts_end(struct nl_msg *msg, struct nlattr *a);

/* A device's qdiscs: the root whole, the first leaves below it whole. */
typedef struct {
    int ifindex;
    int have_root;
    netem_qdisc_saved_t root;
    int children;            /* qdiscs below the root with a handle of their own */
    char child_kind[16];
    int n_leaves;            /* the first children, kept whole (per-source trees) */
    uint32_t leaf_parent[TCNL_DUMP_LEAVES];
    netem_qdisc_saved_t leaf[TCNL_DUMP_LEAVES];
} tcnl_dump_t;

int tcnl_dump(tcnl_conn_t *c, tcnl_dump_t *out);
/* tcnl_dump on a connection of its own, with the message "cannot read the qdiscs of
 * NS/IF: ..." on failure. */
int tcnl_dump_dev(const netem_dev_t *d, tcnl_dump_t *out, char *err, size_t errlen) PN_WUR;

/* Shared by tc.c and tc_tree.c (defined in tc.c). */
/* Saves d's original root qdisc in the state file unless it is saved already (or the
 * device is ephemeral). *recorded says whether this call added the record. */
int netem_tc_save_first(const netem_dev_t *d, int flags, int *recorded, char *err, size_t errlen) PN_WUR;
/* "WHAT on NS/IF: reason" into err, returning rc (EPERM says what it needs). */
int netem_tc_errmsg(const netem_dev_t *d, int rc, const char *what, char *err, size_t errlen);
/* Back to the kernel's default root qdisc (pipenem's own root deleted). */
int netem_tc_restore_default(const netem_dev_t *d, char *err, size_t errlen) PN_WUR;

#endif
