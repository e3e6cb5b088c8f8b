/* Per-source and per-destination shaping on one device (netem_tc_apply_by_source and
 * netem_tc_apply_by_dest in tc.h): an HTB root whose classes only sort, each with the
 * leaf the qdisc table picks for its profile, and u32 filters on the IPv4 source or
 * destination (and port); and the read-back of such a tree. */
#include "netem/tc.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <netlink/attr.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/socket.h>

#include "netem/qdisc.h"
#include "netem/state.h"
#include "netem/tcnl.h"

/* What one class of a tree sorts: IPv4 source (off 12) or destination (off 16), and
 * optionally a TCP/UDP port (the 32-bit word at 20: source port high, destination low;
 * an IP header without options, as iproute2's `match ip dport` assumes). */
typedef struct {
    struct in_addr addr;
    int off;             /* 12 source, 16 destination */
    uint32_t port_mask;  /* network order; 0: any port */
    uint32_t port_val;
    int cls;             /* the class it sorts into (matches may share one) */
} tree_match_t;

/* The u32 filter of one match into classid. */
static int put_u32(struct nl_msg *msg, const tree_match_t *m, uint32_t classid)
{
    unsigned char sel[sizeof(struct tc_u32_sel) + 2 * sizeof(struct tc_u32_key)];
    struct tc_u32_sel s;
    struct tc_u32_key k[2];
    memset(&s, 0, sizeof s);
    memset(k, 0, sizeof k);
    s.flags = TC_U32_TERMINAL;
    s.nkeys = m->port_mask ? 2 : 1;
    k[0].mask = 0xffffffffu;
    k[0].val = m->addr.s_addr;
    k[0].off = m->off;
    k[1].mask = m->port_mask;
    k[1].val = m->port_val;
    k[1].off = 20;
    memcpy(sel, &s, sizeof s);
    memcpy(sel + sizeof s, k, s.nkeys * sizeof k[0]);
    if (nla_put_string(msg, TCA_KIND, "u32") < 0)
        return -ENOMEM;
    struct nlattr *a = tcnl_opts_begin(msg);
    if (!a || nla_put_u32(msg, TCA_U32_CLASSID, classid) < 0 ||
        nla_put(msg, TCA_U32_SEL, (int)(sizeof s + s.nkeys * sizeof k[0]), sel) < 0)
        return -ENOMEM;
    tcnl_opts_end(msg, a);
    return 0;
}

static int add_filter(tcnl_conn_t *c, const tree_match_t *m, uint32_t classid)
{
    struct nl_msg *msg = tcnl_msg(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, c->ifindex, 0x10000, 0);
    if (msg)
        ((struct tcmsg *)nlmsg_data(nlmsg_hdr(msg)))->tcm_info = TC_H_MAKE(1u << 16, htons(ETH_P_IP));
    return tcnl_call_built(c, msg, !msg ? -ENOMEM : put_u32(msg, m, classid));
}

/* Class i below the tree root and its shaping leaf for p; what names the step that failed. */
static int tree_class(tcnl_conn_t *c, const netem_qdisc_ops_t *tree, int i, const netem_profile_t *p, char *what,
                      size_t whatlen)
{
    uint32_t classid = 0x10000 | (uint32_t)(2 + i);
    snprintf(what, whatlen, "adding an %s class", tree->kind);
    struct nl_msg *msg = tcnl_msg(RTM_NEWTCLASS, NLM_F_CREATE | NLM_F_EXCL, c->ifindex, 0x10000, classid);
    int rc = tcnl_call_built(c, msg, !msg ? -ENOMEM : tree->put_class(msg));
    if (rc < 0)
        return rc;
    const netem_qdisc_ops_t *leaf = netem_qdisc_for(p);
    netem_tc_applied_t a = {0};
    snprintf(what, whatlen, "adding a %s leaf", leaf->kind);
    msg = tcnl_msg(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, c->ifindex, classid, (uint32_t)(0x10 + i) << 16);
    return tcnl_call_built(c, msg, !msg ? -ENOMEM : leaf->put(msg, p, &a));
}

/* The u32 filters of a match into its class: one, or with a port two (the port as
 * destination and as source). */
static int tree_filters(tcnl_conn_t *c, const tree_match_t *m, char *what, size_t whatlen)
{
    uint32_t classid = 0x10000 | (uint32_t)(2 + m->cls);
    snprintf(what, whatlen, "adding a u32 filter");
    if (!m->port_mask)
        return add_filter(c, m, classid);
    uint32_t port = ntohl(m->port_val) & 0xffffu;
    tree_match_t to = *m, from = *m;
    to.port_mask = htonl(0x0000ffffu);
    to.port_val = htonl(port);
    from.port_mask = htonl(0xffff0000u);
    from.port_val = htonl(port << 16);
    int rc = add_filter(c, &to, classid);
    return rc < 0 ? rc : add_filter(c, &from, classid);
}

/* A fresh tree: whatever pipenem put there before goes first, then the root, one class
 * per shaped profile p[cls] and the filters of every match into its class. */
static int tree_build(tcnl_conn_t *c, int n, const tree_match_t *m, const netem_profile_t *p, char *what,
                      size_t whatlen)
{
    const netem_qdisc_ops_t *tree = netem_qdisc_tree();
    snprintf(what, whatlen, "removing the old root qdisc");
    struct nl_msg *msg = tcnl_msg(RTM_DELQDISC, 0, c->ifindex, TC_H_ROOT, 0);
    int rc = msg ? tcnl_call(c, msg) : -ENOMEM;
    if (rc == -ENOENT || rc == -EINVAL)
        rc = 0;
    if (rc < 0)
        return rc;
    snprintf(what, whatlen, "adding the %s root", tree->kind);
    netem_tc_applied_t a = {0};
    msg = tcnl_msg(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, c->ifindex, TC_H_ROOT, 0x10000);
    rc = tcnl_call_built(c, msg, !msg ? -ENOMEM : tree->put(msg, NULL, &a));
    for (int i = 0; i < n && rc == 0; i++) {
        if (netem_profile_is_default(&p[m[i].cls]))
            continue;
        int first = 1;
        for (int j = 0; j < i; j++)
            first &= m[j].cls != m[i].cls;
        if (first)
            rc = tree_class(c, tree, m[i].cls, &p[m[i].cls], what, whatlen);
        if (rc == 0)
            rc = tree_filters(c, &m[i], what, whatlen);
    }
    return rc;
}

/* Builds the tree of n matches on d: checks, saving the original, and on failure the
 * way back to it (no half tree is left). */
static int tree_apply(const netem_dev_t *d, int n, const tree_match_t *m, const netem_profile_t *p, int flags,
                      char *err, size_t errlen)
{
    char name[96];
    tcnl_dev_name(d, name, sizeof name);
    int any_netem = 0;
    for (int i = 0; i < n; i++)
        any_netem |= netem_qdisc_for(&p[i])->id == NETEM_QDISC_NETEM;
    if (!netem_tc_may_change())
        return pn_err(err, errlen, -EPERM, "shaping %s: permission denied (changing qdiscs needs root "
                    "or CAP_NET_ADMIN); nothing was changed", name);
    if (any_netem && ((flags & NETEM_TC_NO_NETEM) || !netem_tc_have_netem()))
        return pn_err(err, errlen, -EOPNOTSUPP, "this kernel has no sch_netem: delay, jitter and loss "
                    "need it (load sch_netem, or use --emulator shim)");
    tcnl_conn_t c;
    int recorded = 0, rc = tcnl_open(d, 1, &c, err, errlen);
    if (rc < 0)
        return rc;
    netem_state_change_begin();
    if ((rc = netem_tc_save_first(d, flags, &recorded, err, errlen)) < 0)
        goto out;
    char what[64];
    if ((rc = tree_build(&c, n, m, p, what, sizeof what)) < 0) {
        netem_tc_errmsg(d, rc, what, err, errlen);
        /* Leave no half tree: back to the original. */
        netem_state_entry_t e;
        char e2[128];
        if (recorded && netem_state_find_qdisc(d, &e)) {
            if (netem_tc_restore(d, &e.saved, e2, sizeof e2) == 0)
                netem_state_forget_qdisc(d);
        } else if ((flags & NETEM_TC_EPHEMERAL) && netem_tc_restore_default(d, e2, sizeof e2) < 0) {
            fprintf(stderr, "pipenem: %s\n", e2);
        }
    }
out:
    netem_state_change_end();
    tcnl_close(&c);
    return rc;
}

int netem_tc_apply_by_source(const netem_dev_t *d, int n, const char *const *src,
                             const netem_profile_t *p, int flags, char *err, size_t errlen)
{
    char name[96];
    tree_match_t m[16];
    tcnl_dev_name(d, name, sizeof name);
    if (n < 1 || n > 16)
        return pn_err(err, errlen, -EINVAL, "%d sources on %s: 1 to 16", n, name);
    memset(m, 0, sizeof m);
    for (int i = 0; i < n; i++) {
        if (inet_pton(AF_INET, src[i], &m[i].addr) != 1)
            return pn_err(err, errlen, -EINVAL, "source '%s' is not an IPv4 address", src[i]);
        m[i].off = 12;
        m[i].cls = i;
    }
    return tree_apply(d, n, m, p, flags, err, errlen);
}

int netem_tc_apply_by_dest(const netem_dev_t *d, int n, const netem_tc_peer_t *peer, int flags,
                           char *err, size_t errlen)
{
    char name[96];
    tree_match_t m[NETEM_TC_MAX_PEERS];
    netem_profile_t p[NETEM_TC_MAX_PEERS];
    tcnl_dev_name(d, name, sizeof name);
    if (n < 1 || n > NETEM_TC_MAX_PEERS)
        return pn_err(err, errlen, -EINVAL, "%d peers on %s: 1 to %d", n, name, NETEM_TC_MAX_PEERS);
    memset(m, 0, sizeof m);
    for (int i = 0; i < n; i++) {
        if (inet_pton(AF_INET, peer[i].addr, &m[i].addr) != 1)
            return pn_err(err, errlen, -EINVAL, "peer '%s' is not an IPv4 address", peer[i].addr);
        for (int j = 0; j < i; j++)
            if (m[j].addr.s_addr == m[i].addr.s_addr && peer[j].port == peer[i].port)
                return pn_err(err, errlen, -EINVAL, "peer %s%s%.0u named twice on %s", peer[i].addr,
                              peer[i].port ? " port " : "", peer[i].port, name);
        m[i].off = 16;
        if (peer[i].port) {
            m[i].port_mask = htonl(0x0000ffffu);
            m[i].port_val = htonl(peer[i].port);
        }
        /* Peers of one profile share its class: a rate is the host's link capacity,
         * shared by its traffic to all of them as a NIC's is (unless a link per pair). */
        m[i].cls = i;
        for (int j = 0; j < i && m[i].cls == i && !(flags & NETEM_TC_CLASS_PER_PEER); j++)
            if (peer[j].profile.delay == peer[i].profile.delay && peer[j].profile.jitter == peer[i].profile.jitter &&
                peer[j].profile.loss == peer[i].profile.loss && peer[j].profile.rate == peer[i].profile.rate &&
                peer[j].profile.limit == peer[i].profile.limit)
                m[i].cls = m[j].cls;
        p[i] = peer[i].profile;
    }
    return tree_apply(d, n, m, p, flags, err, errlen);
}

typedef struct {
    int ifindex, n;
    uint32_t classid[TCNL_DUMP_LEAVES];
    tree_match_t m[TCNL_DUMP_LEAVES];
} filters_t;

/* One of our u32 filters (an address key at 12 or 16, perhaps a port key at 20) into
 * f; the second filter of an address with a port (the port as source) adds nothing. */
static int on_filter(struct nl_msg *msg, void *arg)
{
    filters_t *f = arg;
    struct nlmsghdr *nlh = nlmsg_hdr(msg);
    struct tcmsg *tcm = nlmsg_data(nlh);
    struct nlattr *tb[TCA_MAX + 1], *ub[TCA_U32_MAX + 1];
    if (nlmsg_parse(nlh, sizeof *tcm, tb, TCA_MAX, NULL) < 0 || tcm->tcm_ifindex != f->ifindex ||
        !tb[TCA_KIND] || strcmp(nla_get_string(tb[TCA_KIND]), "u32") || !tb[TCA_OPTIONS] ||
        nla_parse_nested(ub, TCA_U32_MAX, tb[TCA_OPTIONS], NULL) < 0 || !ub[TCA_U32_CLASSID] ||
        !ub[TCA_U32_SEL] || f->n >= TCNL_DUMP_LEAVES)
        return NL_OK;
    struct tc_u32_sel sel;
    struct tc_u32_key key[2];
    size_t len = (size_t)nla_len(ub[TCA_U32_SEL]);
    if (len < sizeof sel + sizeof key[0])
        return NL_OK;
    memcpy(&sel, nla_data(ub[TCA_U32_SEL]), sizeof sel);
    if (sel.nkeys < 1 || sel.nkeys > 2 || len < sizeof sel + sel.nkeys * sizeof key[0])
        return NL_OK;
    memcpy(key, (char *)nla_data(ub[TCA_U32_SEL]) + sizeof sel, sel.nkeys * sizeof key[0]);
    if ((key[0].off != 12 && key[0].off != 16) || key[0].mask != 0xffffffffu ||
        (sel.nkeys == 2 && key[1].off != 20))
        return NL_OK;   /* not one of ours */
    uint32_t classid = nla_get_u32(ub[TCA_U32_CLASSID]);
    for (int i = 0; i < f->n; i++)   /* a port's second filter (the port as source) */
        if (f->classid[i] == classid && f->m[i].addr.s_addr == key[0].val)
            return NL_OK;
    tree_match_t *m = &f->m[f->n];
    memset(m, 0, sizeof *m);
    m->addr.s_addr = key[0].val;
    m->off = key[0].off;
    if (sel.nkeys == 2) {
        m->port_mask = key[1].mask;
        m->port_val = key[1].val;
    }
    f->classid[f->n++] = classid;
    return NL_OK;
}

/* The port of a match (0 for none), whichever half of the word it sits in. */
static uint16_t match_port(const tree_match_t *m)
{
    uint32_t v = ntohl(m->port_val), mask = ntohl(m->port_mask);
    return (uint16_t)(mask == 0xffffu ? v : mask == 0xffff0000u ? v >> 16 : 0);
}

int netem_tc_show_by_source(const netem_dev_t *d, netem_tc_class_t *out, int max, int *n,
                            char *err, size_t errlen)
{
    tcnl_conn_t c;
    static tcnl_dump_t dp;   /* large */
    filters_t f = {0};
    char name[96];
    tcnl_dev_name(d, name, sizeof name);
    int rc = tcnl_open(d, 1, &c, err, errlen);
    if (rc < 0)
        return rc;
    rc = tcnl_dump(&c, &dp);
    const netem_qdisc_ops_t *root = netem_qdisc_find(dp.root.kind);
    if (rc == 0 && dp.have_root && root && root->per_source) {
        struct tcmsg tcm = {.tcm_family = AF_UNSPEC, .tcm_ifindex = c.ifindex, .tcm_parent = dp.root.handle};
        f.ifindex = c.ifindex;
        c.kerr = 0;
        if (nl_send_simple(c.sk, RTM_GETTFILTER, NLM_F_DUMP, &tcm, sizeof tcm) < 0) {
            rc = -EIO;
        } else {
            nl_socket_modify_cb(c.sk, NL_CB_VALID, NL_CB_CUSTOM, on_filter, &f);
            rc = nl_recvmsgs_default(c.sk) < 0 ? (c.kerr ? c.kerr : -EIO) : 0;
        }
    }
    tcnl_close(&c);
    if (rc < 0)
        return pn_err(err, errlen, rc, "cannot read the qdiscs and filters of %s: %s", name, strerror(-rc));
    int k = 0;
    for (int i = 0; i < f.n && k < max; i++)
        for (int j = 0; j < dp.n_leaves; j++) {
            if (dp.leaf_parent[j] != f.classid[i])
                continue;
            netem_tc_class_t *o = &out[k++];
            uint32_t lim = 0;
            memset(o, 0, sizeof *o);
            inet_ntop(AF_INET, &f.m[i].addr, f.m[i].off == 12 ? o->src : o->dst, sizeof o->src);
            o->port = match_port(&f.m[i]);
            snprintf(o->kind, sizeof o->kind, "%s", dp.leaf[j].kind);
            const netem_qdisc_ops_t *q = netem_qdisc_find(o->kind);
            if (q && q->parse)
                q->parse(&dp.leaf[j], &o->profile, &lim);
            break;
        }
    *n = k;
    return 0;
}

