/* rtnetlink qdisc requests built and parsed with libnl's message API: libnl-route has
 * no setter for netem's rate nor for the 64-bit nanosecond latency and jitter, and we
 * need the raw TCA_OPTIONS of whatever qdisc we replace so we can put it back exactly. */
#include "netem/tc.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <netlink/attr.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/socket.h>

#include "netem/state.h"
#include "netem/topo.h"

#define TICK_NS 64   /* PSCHED_SHIFT 6: the kernel's tick for tc time fields */
#define FRAME_BYTES 1514

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

static void dev_name(const netem_dev_t *d, char *buf, size_t len)
{
    snprintf(buf, len, "%s%s%s", d->netns, d->netns[0] ? "/" : "", d->ifname);
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

/* ---- sockets bound to a namespace ---- */

typedef struct {
    struct nl_sock *sk;
    int ifindex;
    int kerr;   /* errno of the last NLMSG_ERROR, negative */
} conn_t;

static void conn_close(conn_t *c)
{
    if (c->sk)
        nl_socket_free(c->sk);
    c->sk = NULL;
}

static int on_error(struct sockaddr_nl *who, struct nlmsgerr *e, void *arg)
{
    (void)who;
    ((conn_t *)arg)->kerr = e->error;
    return NL_STOP;
}

/* The socket is created inside the namespace (a netlink socket stays bound to the
 * namespace it was made in), then this thread returns to its own. */
static int conn_open(const netem_dev_t *d, int need_dev, conn_t *c, char *err, size_t errlen)
{
    char name[96];
    int self = -1, target = -1, rc = 0;
    memset(c, 0, sizeof *c);
    dev_name(d, name, sizeof name);
    if (d->netns[0]) {
        char path[128];
        snprintf(path, sizeof path, "/run/netns/%s", d->netns);
        target = open(path, O_RDONLY | O_CLOEXEC);
        if (target < 0)
            return pn_err(err, errlen, -ENOENT, "network namespace '%s' does not exist", d->netns);
        self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (self < 0 || setns(target, CLONE_NEWNET) < 0) {
            rc = pn_err(err, errlen, -errno, "cannot enter network namespace '%s': %s", d->netns,
                      strerror(errno));
            goto out;
        }
    }
    c->sk = nl_socket_alloc();
    if (!c->sk || nl_connect(c->sk, NETLINK_ROUTE) < 0) {
        rc = pn_err(err, errlen, -ENOMEM, "cannot open a netlink socket");
        goto back;
    }
    nl_socket_modify_err_cb(c->sk, NL_CB_CUSTOM, on_error, c);
    if (need_dev) {
        c->ifindex = (int)if_nametoindex(d->ifname);
        if (c->ifindex == 0)
            rc = pn_err(err, errlen, -ENODEV, "no network device '%s'", name);
    }
back:
    if (self >= 0 && setns(self, CLONE_NEWNET) < 0 && rc == 0)
        rc = pn_err(err, errlen, -errno, "cannot return from namespace '%s'", d->netns);
out:
    if (self >= 0)
        close(self);
    if (target >= 0)
        close(target);
    if (rc < 0)
        conn_close(c);
    return rc;
}

/* Sends msg (consumed) and waits for the kernel's answer: 0 or its negative errno. */
static int conn_call(conn_t *c, struct nl_msg *msg)
{
    c->kerr = 0;
    int rc = nl_send_auto(c->sk, msg);
    nlmsg_free(msg);
    if (rc < 0)
        return -EIO;
    rc = nl_wait_for_ack(c->sk);
    if (c->kerr)
        return c->kerr;
    return rc < 0 ? -EIO : 0;
}

/* conn_call for a message whose building may have failed: built is 0 or the error of
 * building it (msg is then freed, and may be NULL). */
static int conn_call_built(conn_t *c, struct nl_msg *msg, int built)
{
    if (built == 0)
        return conn_call(c, msg);
    nlmsg_free(msg);
    return built;
}

static struct nl_msg *qdisc_msg(int type, int flags, int ifindex, uint32_t parent, uint32_t handle)
{
    struct tcmsg tcm = {.tcm_family = AF_UNSPEC, .tcm_ifindex = ifindex, .tcm_parent = parent,
                        .tcm_handle = handle};
    struct nl_msg *msg = nlmsg_alloc_simple(type, flags | NLM_F_REQUEST | NLM_F_ACK);
    if (msg && nlmsg_append(msg, &tcm, sizeof tcm, NLMSG_ALIGNTO) < 0) {
        nlmsg_free(msg);
        return NULL;
    }
    return msg;
}

/* TCA_OPTIONS opened and closed by hand: netem's options are a struct followed by
 * attributes, not a plain nest, and older kernels reject NLA_F_NESTED on it. */
static struct nlattr *opts_begin(struct nl_msg *msg)
{
    struct nlattr *a = (struct nlattr *)nlmsg_tail(nlmsg_hdr(msg));
    if (nla_put(msg, TCA_OPTIONS, 0, NULL) < 0)
        return NULL;
    return a;
}

static void opts_end(struct nl_msg *msg, struct nlattr *a)
{
    a->nla_len = (uint16_t)((char *)nlmsg_tail(nlmsg_hdr(msg)) - (char *)a);
}

uint32_t netem_tc_limit(const netem_profile_t *p)
{
    /* Delay-only profiles carry whatever the host sends: count it as 10 Gbit/s. */
    double rate = p->rate > 0 ? p->rate : 10e9;
    double inflight = rate / 8.0 * (p->delay + p->jitter) / FRAME_BYTES;
    double lim = 2.0 * ceil(inflight) + 1000.0;
    return lim > UINT32_MAX ? UINT32_MAX : (uint32_t)lim;
}

static int put_netem(struct nl_msg *msg, const netem_profile_t *p, uint32_t limit)
{
    int64_t lat = (int64_t)llround(p->delay * 1e9), jit = (int64_t)llround(p->jitter * 1e9);
    struct tc_netem_qopt q = {
        .latency = (uint32_t)fmin((double)lat / TICK_NS, UINT32_MAX),
        .jitter = (uint32_t)fmin((double)jit / TICK_NS, UINT32_MAX),
        .limit = limit,
        .loss = (uint32_t)llround(p->loss * UINT32_MAX),
    };
    if (nla_put_string(msg, TCA_KIND, "netem") < 0)
        return -ENOMEM;
    struct nlattr *o = opts_begin(msg);
    if (!o || nlmsg_append(msg, &q, sizeof q, NLMSG_ALIGNTO) < 0)
        return -ENOMEM;
    if (nla_put(msg, TCA_NETEM_LATENCY64, sizeof lat, &lat) < 0 ||
        nla_put(msg, TCA_NETEM_JITTER64, sizeof jit, &jit) < 0)
        return -ENOMEM;
    if (p->rate > 0) {
        uint64_t bytes = (uint64_t)llround(p->rate / 8.0);
        struct tc_netem_rate r = {.rate = bytes >= UINT32_MAX ? UINT32_MAX : (uint32_t)bytes};
        if (nla_put(msg, TCA_NETEM_RATE, sizeof r, &r) < 0)
            return -ENOMEM;
        if (bytes >= UINT32_MAX && nla_put_u64(msg, TCA_NETEM_RATE64, bytes) < 0)
            return -ENOMEM;
    }
    opts_end(msg, o);
    return 0;
}

/* TBF with an Ethernet link layer (no rate table needed), a burst of at least two
 * 64 KiB GSO packets or 5 ms at the rate (timer wake-ups on a busy host come late
 * and a smaller bucket would overflow meanwhile, losing rate), and a queue of 20 ms at the rate. */
static int put_tbf(struct nl_msg *msg, double rate_bps, uint32_t *limit, uint32_t *burst)
{
    uint64_t bytes = (uint64_t)llround(rate_bps / 8.0);
    double b = fmax(2.0 * 65536 + 2 * FRAME_BYTES, (double)bytes * 5e-3);
    double l = (double)bytes * 20e-3 + b;
    struct tc_tbf_qopt q;
    memset(&q, 0, sizeof q);
    q.rate.rate = bytes >= UINT32_MAX ? UINT32_MAX : (uint32_t)bytes;
    q.rate.linklayer = TC_LINKLAYER_ETHERNET;
    q.limit = l > UINT32_MAX ? UINT32_MAX : (uint32_t)l;
    q.buffer = (uint32_t)fmin(b * 8.0 / rate_bps * 1e9 / TICK_NS, UINT32_MAX);
    *limit = q.limit;
    *burst = (uint32_t)b;
    if (nla_put_string(msg, TCA_KIND, "tbf") < 0)
        return -ENOMEM;
    struct nlattr *o = opts_begin(msg);
    if (!o || nla_put(msg, TCA_TBF_PARMS, sizeof q, &q) < 0 ||
        nla_put_u32(msg, TCA_TBF_BURST, *burst) < 0)
        return -ENOMEM;
    if (bytes >= UINT32_MAX && nla_put_u64(msg, TCA_TBF_RATE64, bytes) < 0)
        return -ENOMEM;
    opts_end(msg, o);
    return 0;
}

/* ---- dumps ---- */

#define DUMP_LEAVES 16

typedef struct {
    int ifindex;
    int have_root;
    netem_qdisc_saved_t root;
    int children;            /* qdiscs below the root with a handle of their own */
    char child_kind[16];
    int n_leaves;            /* the first children, kept whole (per-source trees) */
    uint32_t leaf_parent[DUMP_LEAVES];
    netem_qdisc_saved_t leaf[DUMP_LEAVES];
} dump_t;

static int on_qdisc(struct nl_msg *msg, void *arg)
{
    dump_t *d = arg;
    struct nlmsghdr *nlh = nlmsg_hdr(msg);
    struct tcmsg *tcm = nlmsg_data(nlh);
    struct nlattr *tb[TCA_MAX + 1];
    if (nlmsg_parse(nlh, sizeof *tcm, tb, TCA_MAX, NULL) < 0 || tcm->tcm_ifindex != d->ifindex ||
        !tb[TCA_KIND])
        return NL_OK;
    if (tcm->tcm_parent == TC_H_ROOT) {
        d->have_root = 1;
        snprintf(d->root.kind, sizeof d->root.kind, "%s", nla_get_string(tb[TCA_KIND]));
        d->root.handle = tcm->tcm_handle;
        d->root.is_default = tcm->tcm_handle == 0;
        d->root.optlen = 0;
        if (tb[TCA_OPTIONS] && (size_t)nla_len(tb[TCA_OPTIONS]) <= sizeof d->root.opts) {
            d->root.optlen = (uint16_t)nla_len(tb[TCA_OPTIONS]);
            memcpy(d->root.opts, nla_data(tb[TCA_OPTIONS]), d->root.optlen);
        } else if (tb[TCA_OPTIONS]) {
            d->root.optlen = UINT16_MAX;   /* too large to keep: refused by save */
        }
    } else if (tcm->tcm_parent != TC_H_INGRESS && tcm->tcm_handle != 0) {
        d->children++;
        snprintf(d->child_kind, sizeof d->child_kind, "%s", nla_get_string(tb[TCA_KIND]));
        if (d->n_leaves < DUMP_LEAVES && tb[TCA_OPTIONS] &&
            (size_t)nla_len(tb[TCA_OPTIONS]) <= sizeof d->leaf[0].opts) {
            netem_qdisc_saved_t *l = &d->leaf[d->n_leaves];
            d->leaf_parent[d->n_leaves++] = tcm->tcm_parent;
            snprintf(l->kind, sizeof l->kind, "%s", nla_get_string(tb[TCA_KIND]));
            l->handle = tcm->tcm_handle;
            l->optlen = (uint16_t)nla_len(tb[TCA_OPTIONS]);
            memcpy(l->opts, nla_data(tb[TCA_OPTIONS]), l->optlen);
        }
    }
    return NL_OK;
}

static int dump_dev(conn_t *c, dump_t *out)
{
    struct tcmsg tcm = {.tcm_family = AF_UNSPEC, .tcm_ifindex = c->ifindex};
    memset(out, 0, sizeof *out);
    out->ifindex = c->ifindex;
    c->kerr = 0;
    if (nl_send_simple(c->sk, RTM_GETQDISC, NLM_F_DUMP, &tcm, sizeof tcm) < 0)
        return -EIO;
    nl_socket_modify_cb(c->sk, NL_CB_VALID, NL_CB_CUSTOM, on_qdisc, out);
    int rc = nl_recvmsgs_default(c->sk);
    if (c->kerr)
        return c->kerr;
    return rc < 0 ? -EIO : 0;
}

int netem_tc_save(const netem_dev_t *d, netem_qdisc_saved_t *out, char *err, size_t errlen)
{
    conn_t c;
    dump_t dp;
    char name[96];
    dev_name(d, name, sizeof name);
    int rc = conn_open(d, 1, &c, err, errlen);
    if (rc < 0)
        return rc;
    rc = dump_dev(&c, &dp);
    conn_close(&c);
    if (rc < 0)
        return pn_err(err, errlen, rc, "cannot read the qdiscs of %s: %s", name, strerror(-rc));
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

static int errmsg(const netem_dev_t *d, int rc, const char *what, char *err, size_t errlen)
{
    char name[96];
    dev_name(d, name, sizeof name);
    if (rc == -EPERM)
        return pn_err(err, errlen, rc, "%s on %s: permission denied (changing qdiscs needs root or "
                    "CAP_NET_ADMIN)", what, name);
    return pn_err(err, errlen, rc, "%s on %s: %s", what, name, strerror(-rc));
}

int netem_tc_restore(const netem_dev_t *d, const netem_qdisc_saved_t *s, char *err, size_t errlen)
{
    conn_t c;
    int rc = conn_open(d, 1, &c, err, errlen);
    if (rc < 0)
        return rc;
    /* Deleting the root hands the device back to its kernel default (noqueue, mq, ...). */
    struct nl_msg *msg = qdisc_msg(RTM_DELQDISC, 0, c.ifindex, TC_H_ROOT, 0);
    rc = msg ? conn_call(&c, msg) : -ENOMEM;
    if (rc == -ENOENT || rc == -EINVAL)
        rc = 0;   /* already the default */
    if (rc == 0 && !s->is_default) {
        msg = qdisc_msg(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, c.ifindex, TC_H_ROOT, s->handle);
        if (!msg || nla_put_string(msg, TCA_KIND, s->kind) < 0 ||
            (s->optlen && nla_put(msg, TCA_OPTIONS, s->optlen, s->opts) < 0)) {
            nlmsg_free(msg);
            rc = -ENOMEM;
        } else {
            rc = conn_call(&c, msg);
        }
    }
    conn_close(&c);
    if (rc < 0) {
        char what[64];
        snprintf(what, sizeof what, "restoring the %s root qdisc", s->kind);
        return errmsg(d, rc, what, err, errlen);
    }
    return 0;
}

int netem_tc_clear(const netem_dev_t *d, char *err, size_t errlen)
{
    netem_state_entry_t e;
    if (!netem_state_find_qdisc(d, &e))
        return 0;
    int rc = netem_tc_restore(d, &e.saved, err, errlen);
    if (rc == 0 || rc == -ENODEV || rc == -ENOENT) {
        netem_state_forget_qdisc(d);
        rc = 0;
    }
    return rc;
}

static int needs_netem(const netem_profile_t *p)
{
    return p->delay > 0 || p->jitter > 0 || p->loss > 0 || p->limit > 0;
}

/* Saves d's original root qdisc in the state file unless it is saved already (or the
 * device is ephemeral). *recorded says whether this call added the record. */
static int save_first(const netem_dev_t *d, int flags, int *recorded, char *err, size_t errlen)
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
    dev_name(d, name, sizeof name);
    if (netem_profile_is_default(p)) {
        static const netem_qdisc_saved_t dflt = {.kind = "default", .is_default = 1};
        int rc = (flags & NETEM_TC_EPHEMERAL) ? netem_tc_restore(d, &dflt, err, errlen)
                                              : netem_tc_clear(d, err, errlen);
        if (rc == 0)
            *out = res;
        return rc;
    }
    if (!netem_tc_may_change())
        return pn_err(err, errlen, -EPERM, "shaping %s: permission denied (changing qdiscs needs root "
                    "or CAP_NET_ADMIN); nothing was changed", name);
    int use_netem = needs_netem(p);
    if (use_netem && ((flags & NETEM_TC_NO_NETEM) || !netem_tc_have_netem()))
        return pn_err(err, errlen, -EOPNOTSUPP, "this kernel has no sch_netem: delay, jitter and loss "
                    "need it (load sch_netem, or use --emulator shim)");
    conn_t c;
    int rc = conn_open(d, 1, &c, err, errlen);
    if (rc < 0)
        return rc;
    int recorded = 0;
    if ((rc = save_first(d, flags, &recorded, err, errlen)) < 0)
        goto out;
    struct nl_msg *msg = qdisc_msg(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, c.ifindex, TC_H_ROOT, 0);
    if (!msg) {
        rc = -ENOMEM;
        goto undo;
    }
    if (use_netem) {
        res.kind = NETEM_QDISC_NETEM;
        res.limit_derived = p->limit == 0;
        res.limit = p->limit ? p->limit : netem_tc_limit(p);
        rc = put_netem(msg, p, res.limit);
    } else {
        res.kind = NETEM_QDISC_TBF;
        rc = put_tbf(msg, p->rate, &res.limit, &res.burst);
    }
    if (rc < 0) {
        nlmsg_free(msg);
        goto undo;
    }
    rc = conn_call(&c, msg);
    if (rc < 0) {
        errmsg(d, rc, use_netem ? "adding a netem root qdisc" : "adding a tbf root qdisc", err, errlen);
        goto undo;
    }
    conn_close(&c);
    *out = res;
    return 0;
undo:
    if (recorded)
        netem_state_forget_qdisc(d);   /* nothing was changed */
out:
    conn_close(&c);
    return rc;
}

/* ---- per-source classes ---- */

#define SORT_RATE 100e9   /* HTB classes only sort; their leaves shape */
#define HTB_DEFCLS 0xffff /* no such class: unclassified packets take the direct queue */

static int put_htb_class(struct nl_msg *msg)
{
    uint64_t bytes = (uint64_t)(SORT_RATE / 8);
    struct tc_htb_opt o;
    memset(&o, 0, sizeof o);
    o.rate.rate = o.ceil.rate = bytes >= UINT32_MAX ? UINT32_MAX : (uint32_t)bytes;
    o.rate.linklayer = o.ceil.linklayer = TC_LINKLAYER_ETHERNET;
    o.buffer = o.cbuffer = (uint32_t)(1e-3 * 1e9 / TICK_NS);   /* 1 ms */
    o.quantum = 60000;
    if (nla_put_string(msg, TCA_KIND, "htb") < 0)
        return -ENOMEM;
    struct nlattr *a = opts_begin(msg);
    if (!a || nla_put(msg, TCA_HTB_PARMS, sizeof o, &o) < 0 ||
        nla_put_u64(msg, TCA_HTB_RATE64, bytes) < 0 || nla_put_u64(msg, TCA_HTB_CEIL64, bytes) < 0)
        return -ENOMEM;
    opts_end(msg, a);
    return 0;
}

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
    struct nlattr *a = opts_begin(msg);
    if (!a || nla_put_u32(msg, TCA_U32_CLASSID, classid) < 0 || nla_put(msg, TCA_U32_SEL, sizeof sel, sel) < 0)
        return -ENOMEM;
    opts_end(msg, a);
    return 0;
}

int netem_tc_apply_by_source(const netem_dev_t *d, int n, const char *const *src,
                             const netem_profile_t *p, int flags, char *err, size_t errlen)
{
    char name[96];
    struct in_addr addr[16];
    dev_name(d, name, sizeof name);
    if (n < 1 || n > 16)
        return pn_err(err, errlen, -EINVAL, "%d sources on %s: 1 to 16", n, name);
    int any_netem = 0;
    for (int i = 0; i < n; i++) {
        if (inet_pton(AF_INET, src[i], &addr[i]) != 1)
            return pn_err(err, errlen, -EINVAL, "source '%s' is not an IPv4 address", src[i]);
        any_netem |= needs_netem(&p[i]);
    }
    if (!netem_tc_may_change())
        return pn_err(err, errlen, -EPERM, "shaping %s: permission denied (changing qdiscs needs root "
                    "or CAP_NET_ADMIN); nothing was changed", name);
    if (any_netem && ((flags & NETEM_TC_NO_NETEM) || !netem_tc_have_netem()))
        return pn_err(err, errlen, -EOPNOTSUPP, "this kernel has no sch_netem: delay, jitter and loss "
                    "need it (load sch_netem, or use --emulator shim)");
    conn_t c;
    int recorded = 0, rc = conn_open(d, 1, &c, err, errlen);
    if (rc < 0)
        return rc;
    if ((rc = save_first(d, flags, &recorded, err, errlen)) < 0)
        goto out;
    /* A fresh tree: whatever pipenem put there before goes first. */
    struct nl_msg *msg = qdisc_msg(RTM_DELQDISC, 0, c.ifindex, TC_H_ROOT, 0);
    rc = msg ? conn_call(&c, msg) : -ENOMEM;
    if (rc == -ENOENT || rc == -EINVAL)
        rc = 0;
    const char *what = "removing the old root qdisc";
    if (rc == 0) {
        what = "adding the htb root";
        struct tc_htb_glob g = {.version = 3, .rate2quantum = 10, .defcls = HTB_DEFCLS};
        msg = qdisc_msg(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, c.ifindex, TC_H_ROOT, 0x10000);
        struct nlattr *a = NULL;
        if (!msg || nla_put_string(msg, TCA_KIND, "htb") < 0 || !(a = opts_begin(msg)) ||
            nla_put(msg, TCA_HTB_INIT, sizeof g, &g) < 0) {
            nlmsg_free(msg);
            rc = -ENOMEM;
        } else {
            opts_end(msg, a);
            rc = conn_call(&c, msg);
        }
    }
    for (int i = 0; i < n && rc == 0; i++) {
        if (netem_profile_is_default(&p[i]))
            continue;
        uint32_t classid = 0x10000 | (uint32_t)(2 + i);
        what = "adding an htb class";
        msg = qdisc_msg(RTM_NEWTCLASS, NLM_F_CREATE | NLM_F_EXCL, c.ifindex, 0x10000, classid);
        rc = conn_call_built(&c, msg, !msg ? -ENOMEM : put_htb_class(msg));
        if (rc < 0)
            break;
        what = needs_netem(&p[i]) ? "adding a netem leaf" : "adding a tbf leaf";
        msg = qdisc_msg(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, c.ifindex, classid,
                        (uint32_t)(0x10 + i) << 16);
        uint32_t l, b;
        rc = conn_call_built(&c, msg,
                             !msg ? -ENOMEM
                             : needs_netem(&p[i]) ? put_netem(msg, &p[i], p[i].limit ? p[i].limit : netem_tc_limit(&p[i]))
                                                  : put_tbf(msg, p[i].rate, &l, &b));
        if (rc < 0)
            break;
        what = "adding a u32 filter";
        msg = qdisc_msg(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, c.ifindex, 0x10000, 0);
        if (msg)
            ((struct tcmsg *)nlmsg_data(nlmsg_hdr(msg)))->tcm_info = TC_H_MAKE(1u << 16, htons(ETH_P_IP));
        rc = conn_call_built(&c, msg, !msg ? -ENOMEM : put_u32_src(msg, addr[i], classid));
    }
    if (rc < 0) {
        errmsg(d, rc, what, err, errlen);
        /* Leave no half tree: back to the original. */
        netem_state_entry_t e;
        char e2[128];
        if (recorded && netem_state_find_qdisc(d, &e)) {
            if (netem_tc_restore(d, &e.saved, e2, sizeof e2) == 0)
                netem_state_forget_qdisc(d);
        } else if (flags & NETEM_TC_EPHEMERAL) {
            static const netem_qdisc_saved_t dflt = {.kind = "default", .is_default = 1};
            if (netem_tc_restore(d, &dflt, e2, sizeof e2) < 0)
                fprintf(stderr, "pipenem: %s\n", e2);
        }
    }
out:
    conn_close(&c);
    return rc;
}

/* ---- read back ---- */

static void parse_netem(const netem_qdisc_saved_t *r, netem_profile_t *p, uint32_t *limit)
{
    struct tc_netem_qopt q;
    size_t hdr = NLA_ALIGN(sizeof q);
    memset(&q, 0, sizeof q);
    memcpy(&q, r->opts, r->optlen < sizeof q ? r->optlen : sizeof q);
    p->delay = (double)q.latency * TICK_NS * 1e-9;
    p->jitter = (double)q.jitter * TICK_NS * 1e-9;
    p->loss = (double)q.loss / UINT32_MAX;
    *limit = q.limit;
    if (r->optlen <= hdr)
        return;
    struct nlattr *tb[TCA_NETEM_MAX + 1];
    if (nla_parse(tb, TCA_NETEM_MAX, (struct nlattr *)(r->opts + hdr), (int)(r->optlen - hdr), NULL) < 0)
        return;
    int64_t v;
    if (tb[TCA_NETEM_LATENCY64] && nla_len(tb[TCA_NETEM_LATENCY64]) == sizeof v) {
        memcpy(&v, nla_data(tb[TCA_NETEM_LATENCY64]), sizeof v);
        p->delay = (double)v * 1e-9;
    }
    if (tb[TCA_NETEM_JITTER64] && nla_len(tb[TCA_NETEM_JITTER64]) == sizeof v) {
        memcpy(&v, nla_data(tb[TCA_NETEM_JITTER64]), sizeof v);
        p->jitter = (double)v * 1e-9;
    }
    if (tb[TCA_NETEM_RATE]) {
        struct tc_netem_rate rt;
        memcpy(&rt, nla_data(tb[TCA_NETEM_RATE]), sizeof rt);
        p->rate = (double)rt.rate * 8.0;
    }
    if (tb[TCA_NETEM_RATE64])
        p->rate = (double)nla_get_u64(tb[TCA_NETEM_RATE64]) * 8.0;
}

static void parse_tbf(const netem_qdisc_saved_t *r, netem_profile_t *p, uint32_t *limit)
{
    struct nlattr *tb[TCA_TBF_MAX + 1];
    if (nla_parse(tb, TCA_TBF_MAX, (struct nlattr *)r->opts, r->optlen, NULL) < 0 || !tb[TCA_TBF_PARMS])
        return;
    struct tc_tbf_qopt q;
    memcpy(&q, nla_data(tb[TCA_TBF_PARMS]), sizeof q);
    p->rate = (double)q.rate.rate * 8.0;
    if (tb[TCA_TBF_RATE64])
        p->rate = (double)nla_get_u64(tb[TCA_TBF_RATE64]) * 8.0;
    *limit = q.limit;
}

int netem_tc_show(const netem_dev_t *d, netem_profile_t *p, char *kind, size_t kindlen,
                  uint32_t *limit, char *err, size_t errlen)
{
    conn_t c;
    dump_t dp;
    char name[96];
    dev_name(d, name, sizeof name);
    int rc = conn_open(d, 1, &c, err, errlen);
    if (rc < 0)
        return rc;
    rc = dump_dev(&c, &dp);
    conn_close(&c);
    if (rc < 0)
        return pn_err(err, errlen, rc, "cannot read the qdiscs of %s: %s", name, strerror(-rc));
    netem_profile_t prof = {0};
    uint32_t lim = 0;
    if (!strcmp(dp.root.kind, "netem")) {
        parse_netem(&dp.root, &prof, &lim);
        /* A limit other than the one derived from the profile was given: part of it. */
        if (lim != netem_tc_limit(&prof))
            prof.limit = lim;
    }
    else if (!strcmp(dp.root.kind, "tbf"))
        parse_tbf(&dp.root, &prof, &lim);
    snprintf(kind, kindlen, "%s", dp.have_root ? dp.root.kind : "none");
    *p = prof;
    *limit = lim;
    return 0;
}

typedef struct {
    int ifindex, n;
    uint32_t classid[DUMP_LEAVES];
    struct in_addr src[DUMP_LEAVES];
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
        !ub[TCA_U32_SEL] || f->n >= DUMP_LEAVES)
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
    conn_t c;
    static dump_t dp;   /* large */
    filters_t f = {0};
    char name[96];
    dev_name(d, name, sizeof name);
    int rc = conn_open(d, 1, &c, err, errlen);
    if (rc < 0)
        return rc;
    rc = dump_dev(&c, &dp);
    if (rc == 0 && !strcmp(dp.root.kind, "htb")) {
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
    conn_close(&c);
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
            if (!strcmp(o->kind, "netem")) {
                parse_netem(&dp.leaf[j], &o->profile, &lim);
                if (lim != netem_tc_limit(&o->profile))
                    o->profile.limit = lim;
            } else if (!strcmp(o->kind, "tbf")) {
                parse_tbf(&dp.leaf[j], &o->profile, &lim);
            }
            break;
        }
    *n = k;
    return 0;
}

/* ---- probe ---- */

static const char *const probe_kinds[NETEM_TC_PROBE_KINDS] = {"netem", "tbf", "htb", "prio",
                                                              "fq_codel", "pfifo"};

static int probe_one(conn_t *c, const char *kind)
{
    struct nl_msg *msg = qdisc_msg(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, c->ifindex, TC_H_ROOT,
                                   0x10000);
    if (!msg)
        return -ENOMEM;
    int rc = 0;
    uint32_t l, b;
    if (!strcmp(kind, "netem")) {
        netem_profile_t p = {.delay = 1e-3};
        rc = put_netem(msg, &p, 1000);
    } else if (!strcmp(kind, "tbf")) {
        rc = put_tbf(msg, 1e9, &l, &b);
    } else {
        struct nlattr *o;
        rc = nla_put_string(msg, TCA_KIND, kind) < 0 ? -ENOMEM : 0;
        if (rc == 0 && !strcmp(kind, "htb")) {
            struct tc_htb_glob g = {.version = 3, .rate2quantum = 10};
            if (!(o = opts_begin(msg)) || nla_put(msg, TCA_HTB_INIT, sizeof g, &g) < 0)
                rc = -ENOMEM;
            else
                opts_end(msg, o);
        } else if (rc == 0 && !strcmp(kind, "prio")) {
            struct tc_prio_qopt q = {.bands = 3, .priomap = {1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1}};
            rc = nla_put(msg, TCA_OPTIONS, sizeof q, &q) < 0 ? -ENOMEM : 0;
        } else if (rc == 0 && !strcmp(kind, "pfifo")) {
            struct tc_fifo_qopt q = {.limit = 1000};
            rc = nla_put(msg, TCA_OPTIONS, sizeof q, &q) < 0 ? -ENOMEM : 0;
        }
    }
    if (rc < 0) {
        nlmsg_free(msg);
        return rc;
    }
    rc = conn_call(c, msg);
    if (rc == 0) {
        msg = qdisc_msg(RTM_DELQDISC, 0, c->ifindex, TC_H_ROOT, 0);
        if (msg)
            (void)conn_call(c, msg);
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
        conn_t c;
        if ((rc = conn_open(&d, 1, &c, err, errlen)) == 0) {
            for (int i = 0; i < NETEM_TC_PROBE_KINDS; i++) {
                res.rows[i].kind = probe_kinds[i];
                res.rows[i].rc = probe_one(&c, probe_kinds[i]);
            }
            conn_close(&c);
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
    cached = pr.rows[0].rc == 0;
    return cached;
}
