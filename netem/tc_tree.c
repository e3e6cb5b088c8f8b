/* Per-source shaping on one device (see netem_tc_apply_by_source in tc.h): an HTB root
 * whose classes only sort, each with the leaf the qdisc table picks for its profile, and
 * u32 filters on the IPv4 source; and the read-back of such a tree. */
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

/* u32 match of the IPv4 source address (offset 12 of the IP header). */
static int put_u32_src(struct nl_msg *msg, struct in_addr src, uint32_t classid)
{
    unsigned char sel[sizeof(struct tc_u32_sel) + sizeof(struct tc_u32_key)];
    struct tc_u32_sel s;
    struct tc_u32_key k;
    memset(&s, 0, sizeof s);
    memset(&k, 0, sizeof k);
    s.flags = TC_U32_TERMINAL;
    s.nkeys = 1;
    k.mask = 0xffffffffu;
    k.val = src.s_addr;
    k.off = 12;
    memcpy(sel, &s, sizeof s);
    memcpy(sel + sizeof s, &k, sizeof k);
    if (nla_put_string(msg, TCA_KIND, "u32") < 0)
        return -ENOMEM;
    struct nlattr *a = tcnl_opts_begin(msg);
    if (!a || nla_put_u32(msg, TCA_U32_CLASSID, classid) < 0 || nla_put(msg, TCA_U32_SEL, sizeof sel, sel) < 0)
        return -ENOMEM;
    tcnl_opts_end(msg, a);
    return 0;
}

/* Source i's class below the tree root, its shaping leaf and the u32 filter that sorts
 * into it; what names the step that failed. */
static int tree_source(tcnl_conn_t *c, const netem_qdisc_ops_t *tree, int i, struct in_addr addr,
                       const netem_profile_t *p, char *what, size_t whatlen)
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
    rc = tcnl_call_built(c, msg, !msg ? -ENOMEM : leaf->put(msg, p, &a));
    if (rc < 0)
        return rc;
    snprintf(what, whatlen, "adding a u32 filter");
    msg = tcnl_msg(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, c->ifindex, 0x10000, 0);
    if (msg)
        ((struct tcmsg *)nlmsg_data(nlmsg_hdr(msg)))->tcm_info = TC_H_MAKE(1u << 16, htons(ETH_P_IP));
    return tcnl_call_built(c, msg, !msg ? -ENOMEM : put_u32_src(msg, addr, classid));
}

/* A fresh tree: whatever pipenem put there before goes first, then the root and one
 * class per shaped source. */
static int tree_build(tcnl_conn_t *c, int n, const struct in_addr *addr, const netem_profile_t *p, char *what,
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
    for (int i = 0; i < n && rc == 0; i++)
        if (!netem_profile_is_default(&p[i]))
            rc = tree_source(c, tree, i, addr[i], &p[i], what, whatlen);
    return rc;
}

int netem_tc_apply_by_source(const netem_dev_t *d, int n, const char *const *src,
                             const netem_profile_t *p, int flags, char *err, size_t errlen)
{
    char name[96];
    struct in_addr addr[16];
    tcnl_dev_name(d, name, sizeof name);
    if (n < 1 || n > 16)
        return pn_err(err, errlen, -EINVAL, "%d sources on %s: 1 to 16", n, name);
    int any_netem = 0;
    for (int i = 0; i < n; i++) {
        if (inet_pton(AF_INET, src[i], &addr[i]) != 1)
            return pn_err(err, errlen, -EINVAL, "source '%s' is not an IPv4 address", src[i]);
        any_netem |= netem_qdisc_for(&p[i])->id == NETEM_QDISC_NETEM;
    }
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
    if ((rc = netem_tc_save_first(d, flags, &recorded, err, errlen)) < 0)
        goto out;
    char what[64];
    if ((rc = tree_build(&c, n, addr, p, what, sizeof what)) < 0) {
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
    tcnl_close(&c);
    return rc;
}

typedef struct {
    int ifindex, n;
    uint32_t classid[TCNL_DUMP_LEAVES];
    struct in_addr src[TCNL_DUMP_LEAVES];
} filters_t;

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
    struct tc_u32_key key;
    if ((size_t)nla_len(ub[TCA_U32_SEL]) < sizeof sel + sizeof key)
        return NL_OK;
    memcpy(&sel, nla_data(ub[TCA_U32_SEL]), sizeof sel);
    memcpy(&key, (char *)nla_data(ub[TCA_U32_SEL]) + sizeof sel, sizeof key);
    if (sel.nkeys != 1 || key.off != 12 || key.mask != 0xffffffffu)
        return NL_OK;   /* not one of ours */
    f->classid[f->n] = nla_get_u32(ub[TCA_U32_CLASSID]);
    f->src[f->n++].s_addr = key.val;
    return NL_OK;
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
            inet_ntop(AF_INET, &f.src[i], o->src, sizeof o->src);
            snprintf(o->kind, sizeof o->kind, "%s", dp.leaf[j].kind);
            const netem_qdisc_ops_t *q = netem_qdisc_find(o->kind);
            if (q && q->parse)
                q->parse(&dp.leaf[j], &o->profile, &lim);
            break;
        }
    *n = k;
    return 0;
}

