/* rtnetlink requests built and parsed with libnl's message API (see tcnl.h): libnl-route
 * has no setter for netem's rate nor for the 64-bit nanosecond latency and jitter, and we
 * need the raw TCA_OPTIONS of whatever qdisc we replace so we can put it back exactly. */
#include "netem/tcnl.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <netlink/attr.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/socket.h>

void tcnl_dev_name(const netem_dev_t *d, char *buf, size_t len)
{
    snprintf(buf, len, "%s%s%s", d->netns, d->netns[0] ? "/" : "", d->ifname);
}

void tcnl_close(tcnl_conn_t *c)
{
    if (c->sk)
        nl_socket_free(c->sk);
    c->sk = NULL;
}

static int on_error(struct sockaddr_nl *who, struct nlmsgerr *e, void *arg)
{
    (void)who;
    ((tcnl_conn_t *)arg)->kerr = e->error;
    return NL_STOP;
}

int tcnl_open(const netem_dev_t *d, int need_dev, tcnl_conn_t *c, char *err, size_t errlen)
{
    char name[96];
    int self = -1, target = -1, rc = 0;
    memset(c, 0, sizeof *c);
    tcnl_dev_name(d, name, sizeof name);
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
        tcnl_close(c);
    return rc;
}

int tcnl_call(tcnl_conn_t *c, struct nl_msg *msg)
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

int tcnl_call_built(tcnl_conn_t *c, struct nl_msg *msg, int built)
{
    if (built == 0)
        return tcnl_call(c, msg);
    nlmsg_free(msg);
    return built;
}

struct nl_msg *tcnl_msg(int type, int flags, int ifindex, uint32_t parent, uint32_t handle)
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

struct nlattr *tcnl_opts_begin(struct nl_msg *msg)
{
    struct nlattr *a = (struct nlattr *)nlmsg_tail(nlmsg_hdr(msg));
    if (nla_put(msg, TCA_OPTIONS, 0, NULL) < 0)
        return NULL;
    return a;
}

void tcnl_opts_end(struct nl_msg *msg, struct nlattr *a)
{
    a->nla_len = (uint16_t)((char *)nlmsg_tail(nlmsg_hdr(msg)) - (char *)a);
}

static int on_qdisc(struct nl_msg *msg, void *arg)
{
    tcnl_dump_t *d = arg;
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
        if (d->n_leaves < TCNL_DUMP_LEAVES && tb[TCA_OPTIONS] &&
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

int tcnl_dump(tcnl_conn_t *c, tcnl_dump_t *out)
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

int tcnl_dump_dev(const netem_dev_t *d, tcnl_dump_t *out, char *err, size_t errlen)
{
    tcnl_conn_t c;
    char name[96];
    tcnl_dev_name(d, name, sizeof name);
    int rc = tcnl_open(d, 1, &c, err, errlen);
    if (rc < 0)
        return rc;
    rc = tcnl_dump(&c, out);
    tcnl_close(&c);
    if (rc < 0)
        return pn_err(err, errlen, rc, "cannot read the qdiscs of %s: %s", name, strerror(-rc));
    return 0;
}
