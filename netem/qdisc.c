/* Each qdisc kind's options, built into a request and read back (see qdisc.h). */
#include "netem/qdisc.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <netlink/attr.h>
#include <netlink/msg.h>

#include "netem/tcnl.h"

#define FRAME_BYTES 1514
#define HTB_DEFCLS 0xffff /* no such class: unclassified packets take the direct queue */
#define SORT_RATE 100e9   /* HTB classes only sort; their leaves shape */

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
        .latency = (uint32_t)fmin((double)lat / TCNL_TICK_NS, UINT32_MAX),
        .jitter = (uint32_t)fmin((double)jit / TCNL_TICK_NS, UINT32_MAX),
        .limit = limit,
        .loss = (uint32_t)llround(p->loss * UINT32_MAX),
    };
    if (nla_put_string(msg, TCA_KIND, "netem") < 0)
        return -ENOMEM;
    struct nlattr *o = tcnl_opts_begin(msg);
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
    tcnl_opts_end(msg, o);
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
    q.buffer = (uint32_t)fmin(b * 8.0 / rate_bps * 1e9 / TCNL_TICK_NS, UINT32_MAX);
    *limit = q.limit;
    *burst = (uint32_t)b;
    if (nla_put_string(msg, TCA_KIND, "tbf") < 0)
        return -ENOMEM;
    struct nlattr *o = tcnl_opts_begin(msg);
    if (!o || nla_put(msg, TCA_TBF_PARMS, sizeof q, &q) < 0 ||
        nla_put_u32(msg, TCA_TBF_BURST, *burst) < 0)
        return -ENOMEM;
    if (bytes >= UINT32_MAX && nla_put_u64(msg, TCA_TBF_RATE64, bytes) < 0)
        return -ENOMEM;
    tcnl_opts_end(msg, o);
    return 0;
}

static int netem_put(struct nl_msg *msg, const netem_profile_t *p, netem_tc_applied_t *a)
{
    a->kind = NETEM_QDISC_NETEM;
    a->limit_derived = p->limit == 0;
    a->limit = p->limit ? p->limit : netem_tc_limit(p);
    return put_netem(msg, p, a->limit);
}

static int tbf_put(struct nl_msg *msg, const netem_profile_t *p, netem_tc_applied_t *a)
{
    a->kind = NETEM_QDISC_TBF;
    return put_tbf(msg, p->rate, &a->limit, &a->burst);
}

/* The root of a per-source tree: classes sort, unclassified packets take the direct
 * queue (defcls names no class). */
static int htb_put(struct nl_msg *msg, const netem_profile_t *p, netem_tc_applied_t *a)
{
    (void)p;
    (void)a;
    struct tc_htb_glob g = {.version = 3, .rate2quantum = 10, .defcls = HTB_DEFCLS};
    struct nlattr *o = NULL;
    if (nla_put_string(msg, TCA_KIND, "htb") < 0 || !(o = tcnl_opts_begin(msg)) ||
        nla_put(msg, TCA_HTB_INIT, sizeof g, &g) < 0)
        return -ENOMEM;
    tcnl_opts_end(msg, o);
    return 0;
}

static int htb_put_class(struct nl_msg *msg)
{
    uint64_t bytes = (uint64_t)(SORT_RATE / 8);
    struct tc_htb_opt o;
    memset(&o, 0, sizeof o);
    o.rate.rate = o.ceil.rate = bytes >= UINT32_MAX ? UINT32_MAX : (uint32_t)bytes;
    o.rate.linklayer = o.ceil.linklayer = TC_LINKLAYER_ETHERNET;
    o.buffer = o.cbuffer = (uint32_t)(1e-3 * 1e9 / TCNL_TICK_NS);   /* 1 ms */
    o.quantum = 60000;
    if (nla_put_string(msg, TCA_KIND, "htb") < 0)
        return -ENOMEM;
    struct nlattr *a = tcnl_opts_begin(msg);
    if (!a || nla_put(msg, TCA_HTB_PARMS, sizeof o, &o) < 0 ||
        nla_put_u64(msg, TCA_HTB_RATE64, bytes) < 0 || nla_put_u64(msg, TCA_HTB_CEIL64, bytes) < 0)
        return -ENOMEM;
    tcnl_opts_end(msg, a);
    return 0;
}

static int prio_put(struct nl_msg *msg, const netem_profile_t *p, netem_tc_applied_t *a)
{
    (void)p;
    (void)a;
    struct tc_prio_qopt q = {.bands = 3, .priomap = {1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1}};
    if (nla_put_string(msg, TCA_KIND, "prio") < 0 || nla_put(msg, TCA_OPTIONS, sizeof q, &q) < 0)
        return -ENOMEM;
    return 0;
}

static int pfifo_put(struct nl_msg *msg, const netem_profile_t *p, netem_tc_applied_t *a)
{
    (void)p;
    (void)a;
    struct tc_fifo_qopt q = {.limit = 1000};
    if (nla_put_string(msg, TCA_KIND, "pfifo") < 0 || nla_put(msg, TCA_OPTIONS, sizeof q, &q) < 0)
        return -ENOMEM;
    return 0;
}

/* fq_codel with the kernel's defaults: the kind alone. */
static int fq_codel_put(struct nl_msg *msg, const netem_profile_t *p, netem_tc_applied_t *a)
{
    (void)p;
    (void)a;
    return nla_put_string(msg, TCA_KIND, "fq_codel") < 0 ? -ENOMEM : 0;
}

static void parse_netem(const netem_qdisc_saved_t *r, netem_profile_t *p, uint32_t *limit)
{
    struct tc_netem_qopt q;
    size_t hdr = NLA_ALIGN(sizeof q);
    memset(&q, 0, sizeof q);
    memcpy(&q, r->opts, r->optlen < sizeof q ? r->optlen : sizeof q);
    p->delay = (double)q.latency * TCNL_TICK_NS * 1e-9;
    p->jitter = (double)q.jitter * TCNL_TICK_NS * 1e-9;
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

/* A limit other than the one derived from the profile was given: part of it. */
static void netem_parse(const netem_qdisc_saved_t *r, netem_profile_t *p, uint32_t *limit)
{
    parse_netem(r, p, limit);
    if (*limit != netem_tc_limit(p))
        p->limit = *limit;
}

static void netem_describe(const netem_tc_applied_t *a, char *buf, size_t len)
{
    snprintf(buf, len, "qdisc netem, limit %u packets%s", a->limit,
             a->limit_derived ? " (derived: 2 x rate x (delay + jitter) / 1514 B + 1000)" : " (given)");
}

static void tbf_describe(const netem_tc_applied_t *a, char *buf, size_t len)
{
    snprintf(buf, len, "qdisc tbf, burst %u bytes, queue limit %u bytes (20 ms at the rate + burst)", a->burst,
             a->limit);
}

/* The probe's order is the table's: netem tbf htb prio fq_codel pfifo. */
static const netem_qdisc_ops_t qdiscs[] = {
    {.kind = "netem", .id = NETEM_QDISC_NETEM, .limit_unit = "packets", .probed = 1,
     .sample = {.delay = 1e-3, .limit = 1000}, .put = netem_put, .parse = netem_parse, .describe = netem_describe},
    {.kind = "tbf", .id = NETEM_QDISC_TBF, .limit_unit = "bytes", .probed = 1, .sample = {.rate = 1e9},
     .put = tbf_put, .parse = parse_tbf, .describe = tbf_describe},
    {.kind = "htb", .per_source = 1, .probed = 1, .put = htb_put, .put_class = htb_put_class},
    {.kind = "prio", .probed = 1, .put = prio_put},
    {.kind = "fq_codel", .kernel_default = 1, .probed = 1, .put = fq_codel_put},
    {.kind = "pfifo", .probed = 1, .put = pfifo_put},
    {.kind = "noqueue", .kernel_default = 1},
    {.kind = "mq", .kernel_default = 1},
    {.kind = "pfifo_fast", .kernel_default = 1},
    {.kind = "noop", .kernel_default = 1},
    {.kind = "none", .kernel_default = 1},   /* no root qdisc at all */
};

#define N_QDISCS (sizeof qdiscs / sizeof *qdiscs)

const netem_qdisc_ops_t *netem_qdisc_at(size_t i)
{
    return i < N_QDISCS ? &qdiscs[i] : NULL;
}

const netem_qdisc_ops_t *netem_qdisc_find(const char *kind)
{
    for (size_t i = 0; kind && i < N_QDISCS; i++)
        if (!strcmp(qdiscs[i].kind, kind))
            return &qdiscs[i];
    return NULL;
}

const netem_qdisc_ops_t *netem_qdisc_of(netem_qdisc_kind_t id)
{
    for (size_t i = 0; id != NETEM_QDISC_NONE && i < N_QDISCS; i++)
        if (qdiscs[i].id == id)
            return &qdiscs[i];
    return NULL;
}

const netem_qdisc_ops_t *netem_qdisc_tree(void)
{
    for (size_t i = 0; i < N_QDISCS; i++)
        if (qdiscs[i].per_source)
            return &qdiscs[i];
    return NULL;
}

const netem_qdisc_ops_t *netem_qdisc_for(const netem_profile_t *p)
{
    int netem = p->delay > 0 || p->jitter > 0 || p->loss > 0 || p->limit > 0;
    return netem_qdisc_of(netem ? NETEM_QDISC_NETEM : NETEM_QDISC_TBF);
}

void netem_qdisc_describe(const netem_tc_applied_t *a, char *buf, size_t len)
{
    const netem_qdisc_ops_t *q = netem_qdisc_of(a->kind);
    if (q && q->describe)
        q->describe(a, buf, len);
    else
        snprintf(buf, len, "default: original root qdisc restored");
}
