/* The tc controller's root qdiscs: apply a profile with the kind the qdisc table picks,
 * save a device's original root before the first change and restore it exactly, read a
 * root back, and probe the kernel's qdisc kinds. Per-source trees live in tc_tree.c,
 * each kind's options in qdisc.c, the netlink plumbing in tcnl.c. */
#include "netem/tc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <netlink/attr.h>
#include <netlink/msg.h>

#include "netem/qdisc.h"
#include "netem/state.h"
#include "netem/tcnl.h"
#include "netem/topo.h"

int netem_dev_init(netem_dev_t *d, const char *netns, const char *ifname, char *err, size_t errlen)
{
    if (!ifname || !*ifname || strlen(ifname) >= sizeof d->ifname)
        return pn_err(err, errlen, -EINVAL, "device name '%s' is empty or longer than %zu characters",
                    ifname ? ifname : "", sizeof d->ifname - 1);
    if (netns && strlen(netns) >= sizeof d->netns)
        return pn_err(err, errlen, -EINVAL, "namespace name '%s' is too long", netns);
    if (netns && (strchr(netns, '/') || strchr(netns, ' ')))
        return pn_err(err, errlen, -EINVAL, "namespace name '%s' contains '/' or a space", netns);
    memset(d, 0, sizeof *d);
    snprintf(d->netns, sizeof d->netns, "%s", netns ? netns : "");
    snprintf(d->ifname, sizeof d->ifname, "%s", ifname);
    return 0;
}

int netem_tc_may_change(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    int ok = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long cap;
        if (sscanf(line, "CapEff: %llx", &cap) == 1)
            ok = (cap >> 12) & 1;   /* CAP_NET_ADMIN */
    }
    fclose(f);
    return ok;
}

int netem_tc_save(const netem_dev_t *d, netem_qdisc_saved_t *out, char *err, size_t errlen)
{
    tcnl_dump_t dp;
    char name[96];
    tcnl_dev_name(d, name, sizeof name);
    int rc = tcnl_dump_dev(d, &dp, err, errlen);
    if (rc < 0)
        return rc;
    if (!dp.have_root) {
        memset(out, 0, sizeof *out);
        snprintf(out->kind, sizeof out->kind, "none");
        out->is_default = 1;
        return 0;
    }
    if (dp.children > 0 && !dp.root.is_default)
        return pn_err(err, errlen, -EBUSY,
                    "%s has a classful qdisc tree (%s %x: with %d child qdiscs such as %s) that "
                    "pipenem could not put back exactly; remove it first", name, dp.root.kind,
                    dp.root.handle >> 16, dp.children, dp.child_kind);
    if (dp.root.optlen == UINT16_MAX)
        return pn_err(err, errlen, -EBUSY, "%s: the options of its %s root qdisc are too large to save",
                    name, dp.root.kind);
    *out = dp.root;
    return 0;
}

int netem_tc_errmsg(const netem_dev_t *d, int rc, const char *what, char *err, size_t errlen)
{
    char name[96];
    tcnl_dev_name(d, name, sizeof name);
    if (rc == -EPERM)
        return pn_err(err, errlen, rc, "%s on %s: permission denied (changing qdiscs needs root or "
                    "CAP_NET_ADMIN)", what, name);
    return pn_err(err, errlen, rc, "%s on %s: %s", what, name, strerror(-rc));
}

int netem_tc_restore(const netem_dev_t *d, const netem_qdisc_saved_t *s, char *err, size_t errlen)
{
    tcnl_conn_t c;
    int rc = tcnl_open(d, 1, &c, err, errlen);
    if (rc < 0)
        return rc;
    /* Deleting the root hands the device back to its kernel default (noqueue, mq, ...). */
    struct nl_msg *msg = tcnl_msg(RTM_DELQDISC, 0, c.ifindex, TC_H_ROOT, 0);
    rc = msg ? tcnl_call(&c, msg) : -ENOMEM;
    if (rc == -ENOENT || rc == -EINVAL)
        rc = 0;   /* already the default */
    if (rc == 0 && !s->is_default) {
        msg = tcnl_msg(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, c.ifindex, TC_H_ROOT, s->handle);
        if (!msg || nla_put_string(msg, TCA_KIND, s->kind) < 0 ||
            (s->optlen && nla_put(msg, TCA_OPTIONS, s->optlen, s->opts) < 0)) {
            nlmsg_free(msg);
            rc = -ENOMEM;
        } else {
            rc = tcnl_call(&c, msg);
        }
    }
    tcnl_close(&c);
    if (rc < 0) {
        char what[64];
        snprintf(what, sizeof what, "restoring the %s root qdisc", s->kind);
        return netem_tc_errmsg(d, rc, what, err, errlen);
    }
    return 0;
}

int netem_tc_clear(const netem_dev_t *d, char *err, size_t errlen)
{
    netem_state_entry_t e;
    netem_state_change_begin();
    int rc = 0;
    if (netem_state_find_qdisc(d, &e)) {
        rc = netem_tc_restore(d, &e.saved, err, errlen);
        if (rc == 0 || rc == -ENODEV || rc == -ENOENT) {
            netem_state_forget_qdisc(d);
            rc = 0;
        }
    }
    netem_state_change_end();
    return rc;
}

int netem_tc_save_first(const netem_dev_t *d, int flags, int *recorded, char *err, size_t errlen)
{
    netem_state_entry_t e;
    *recorded = 0;
    if ((flags & NETEM_TC_EPHEMERAL) || netem_state_find_qdisc(d, &e))
        return 0;
    memset(&e, 0, sizeof e);
    e.kind = NETEM_STATE_QDISC;
    e.dev = *d;
    int rc = netem_tc_save(d, &e.saved, err, errlen);
    if (rc == 0)
        rc = netem_state_add(&e, flags & NETEM_TC_PERSIST, err, errlen);
    *recorded = rc == 0;
    return rc;
}

int netem_tc_apply(const netem_dev_t *d, const netem_profile_t *p, int flags,
                   netem_tc_applied_t *out, char *err, size_t errlen)
{
    netem_tc_applied_t res = {0};
    char name[96];
    tcnl_dev_name(d, name, sizeof name);
    if (netem_profile_is_default(p)) {
        int rc = (flags & NETEM_TC_EPHEMERAL) ? netem_tc_restore_default(d, err, errlen)
                                              : netem_tc_clear(d, err, errlen);
        if (rc == 0)
            *out = res;
        return rc;
    }
    if (!netem_tc_may_change())
        return pn_err(err, errlen, -EPERM, "shaping %s: permission denied (changing qdiscs needs root "
                    "or CAP_NET_ADMIN); nothing was changed", name);
    const netem_qdisc_ops_t *q = netem_qdisc_for(p);
    if (q->id == NETEM_QDISC_NETEM && ((flags & NETEM_TC_NO_NETEM) || !netem_tc_have_netem()))
        return pn_err(err, errlen, -EOPNOTSUPP, "this kernel has no sch_netem: delay, jitter and loss "
                    "need it (load sch_netem, or use --emulator shim)");
    tcnl_conn_t c;
    int rc = tcnl_open(d, 1, &c, err, errlen);
    if (rc < 0)
        return rc;
    int recorded = 0;
    netem_state_change_begin();
    if ((rc = netem_tc_save_first(d, flags, &recorded, err, errlen)) < 0)
        goto out;
    struct nl_msg *msg = tcnl_msg(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, c.ifindex, TC_H_ROOT, 0);
    if (!msg) {
        rc = -ENOMEM;
        goto undo;
    }
    rc = q->put(msg, p, &res);
    if (rc < 0) {
        nlmsg_free(msg);
        goto undo;
    }
    rc = tcnl_call(&c, msg);
    if (rc < 0) {
        char what[64];
        snprintf(what, sizeof what, "adding a %s root qdisc", q->kind);
        netem_tc_errmsg(d, rc, what, err, errlen);
        goto undo;
    }
    netem_state_change_end();
    tcnl_close(&c);
    *out = res;
    return 0;
undo:
    if (recorded)
        netem_state_forget_qdisc(d);   /* nothing was changed */
out:
    netem_state_change_end();
    tcnl_close(&c);
    return rc;
}

int netem_tc_show(const netem_dev_t *d, netem_profile_t *p, char *kind, size_t kindlen,
                  uint32_t *limit, char *err, size_t errlen)
{
    tcnl_dump_t dp;
    int rc = tcnl_dump_dev(d, &dp, err, errlen);
    if (rc < 0)
        return rc;
    netem_profile_t prof = {0};
    uint32_t lim = 0;
    const netem_qdisc_ops_t *q = dp.have_root ? netem_qdisc_find(dp.root.kind) : NULL;
    if (q && q->parse)
        q->parse(&dp.root, &prof, &lim);
    snprintf(kind, kindlen, "%s", dp.have_root ? dp.root.kind : "none");
    *p = prof;
    *limit = lim;
    return 0;
}

/* ---- probe ---- */

/* Installs q with its sample setting as the root and removes it again. */
static int probe_one(tcnl_conn_t *c, const netem_qdisc_ops_t *q)
{
    struct nl_msg *msg = tcnl_msg(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, c->ifindex, TC_H_ROOT, 0x10000);
    if (!msg)
        return -ENOMEM;
    netem_tc_applied_t a = {0};
    int rc = q->put(msg, &q->sample, &a);
    if (rc < 0) {
        nlmsg_free(msg);
        return rc;
    }
    rc = tcnl_call(c, msg);
    if (rc == 0) {
        msg = tcnl_msg(RTM_DELQDISC, 0, c->ifindex, TC_H_ROOT, 0);
        if (msg)
            (void)tcnl_call(c, msg);
    }
    return rc;
}

int netem_tc_probe(netem_tc_probe_t *out, char *err, size_t errlen)
{
    netem_tc_probe_t res;
    memset(&res, 0, sizeof res);
    res.may_change = netem_tc_may_change();
    if (!res.may_change)
        return pn_err(err, errlen, -EPERM, "probing qdiscs needs a scratch network namespace: "
                    "permission denied (needs root or CAP_NET_ADMIN)");
    char ns[64];
    netem_dev_t d;
    snprintf(ns, sizeof ns, "pn%ld-probe", (long)getpid());
    int rc = netem_topo_scratch_create(ns, "pnprobe0", err, errlen);
    if (rc < 0)
        return rc;
    if ((rc = netem_dev_init(&d, ns, "pnprobe0", err, errlen)) == 0) {
        tcnl_conn_t c;
        if ((rc = tcnl_open(&d, 1, &c, err, errlen)) == 0) {
            const netem_qdisc_ops_t *q;
            int k = 0;
            for (size_t i = 0; (q = netem_qdisc_at(i)) && k < NETEM_TC_PROBE_KINDS; i++) {
                if (!q->probed)
                    continue;
                res.rows[k].kind = q->kind;
                res.rows[k++].rc = probe_one(&c, q);
            }
            tcnl_close(&c);
        }
    }
    char e2[256];
    int rc2 = netem_topo_scratch_destroy(ns, e2, sizeof e2);
    if (rc == 0 && rc2 < 0)
        rc = pn_err(err, errlen, rc2, "%s", e2);
    if (rc == 0)
        *out = res;
    return rc;
}

int netem_tc_have_netem(void)
{
    static int cached = -1;
    if (cached >= 0)
        return cached;
    netem_tc_probe_t pr;
    char err[256];
    if (netem_tc_probe(&pr, err, sizeof err) < 0)
        return 0;   /* unknown: not cached, a later call with root may find it */
    const char *netem = netem_qdisc_of(NETEM_QDISC_NETEM)->kind;
    cached = 0;
    for (int i = 0; i < NETEM_TC_PROBE_KINDS; i++)
        if (pr.rows[i].kind == netem)
            cached = pr.rows[i].rc == 0;
    return cached;
}

int netem_tc_restore_default(const netem_dev_t *d, char *err, size_t errlen)
{
    static const netem_qdisc_saved_t dflt = {.kind = "default", .is_default = 1};
    return netem_tc_restore(d, &dflt, err, errlen);
}
