/* pipenem netem: apply, show and clear a profile on a device, clear everything a crashed
 * run left, probe the kernel's qdiscs, and self-test a profile between two namespaces. */
#include "bench/cli.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>

#include "bench/netem_dist.h"
#include "common/parse.h"
#include "netem/emulator.h"
#include "netem/profile.h"
#include "netem/qdisc.h"
#include "netem/selftest.h"
#include "netem/state.h"
#include "netem/tc.h"
#include "netem/topo.h"
#include "pipeline/meter.h"
#include "pipeline/runcfg.h"

#define CMD "netem"

enum { NETEM_OPT_NETNS = 0x3300, NETEM_OPT_ALL, NETEM_OPT_CEILING, NETEM_OPT_TO };

static const model_option_t own_group[] = {
    {"netns", 0, NETEM_OPT_NETNS, "NS", "the device lives in network namespace NS", "the current namespace"},
    {"all", 'a', NETEM_OPT_ALL, NULL, "(clear) everything in the state files", NULL},
    {"ceiling", 0, NETEM_OPT_CEILING, NULL, "(selftest) also measure the unshaped goodput", NULL},
    {"to", 0, NETEM_OPT_TO, "PEER[:PORT]=PROFILE", "(apply) shape only what DEV sends to PEER (and to or from PORT); "
     "repeat per peer, other traffic passes untouched", "the whole device"},
    {NULL, 0, 0, NULL, NULL, NULL},
};

static const int net_only[] = {RUNCFG_OPT_NET, RUNCFG_OPT_EMULATOR, 0};
static const int dist_only[] = {RUNCFG_OPT_DIST_URL, 0};

static const cli_section_t sections[] = {
    {"options", own_group, NULL, NULL, 0},
    {NULL, runcfg_network_group, net_only, NULL, 0},
    {NULL, runcfg_multihost_group, dist_only, NULL, 0},
    {NULL, NULL, NULL, NULL, 0},
};

static const cli_override_t overrides[] = {
    {RUNCFG_OPT_NET, "PROFILE", "(selftest) a profile to test; repeat for several", "none"},
    {RUNCFG_OPT_EMULATOR, NULL, "(selftest) {emulators}: netem puts kernel qdiscs on the link, shim makes the "
     "pipeline's own transport hold back and pace each message", NULL},
    {RUNCFG_OPT_DIST_URL, NULL, "(selftest) across hosts, one rank per host under srun or mpirun: rank 0's "
     "address and port (PORT + 2 carries the measurements); each link measured by its two ends", "this machine's "
     "namespaces"},
    {0, NULL, NULL, NULL},
};

static const cli_deprecated_t deprecated[] = {
    {'n', NULL, NETEM_OPT_NETNS},
    {0, NULL, 0},
};

static const cli_spec_t spec = {
    CMD,
    "usage: pipenem netem apply [--netns NS] DEV PROFILE\n"
    "       pipenem netem apply [--netns NS] DEV --to PEER[:PORT]=PROFILE [--to ...]\n"
    "       pipenem netem show  [--netns NS] DEV\n"
    "       pipenem netem clear [--netns NS] DEV | --all\n"
    "       pipenem netem probe\n"
    "       pipenem netem selftest --net PROFILE [--net PROFILE ...] [--emulator auto|netem|shim] [--ceiling]\n"
    "       pipenem netem selftest --dist-url tcp://RANK0:PORT --net PROFILE [...]   (one rank per host)\n"
    "apply, show, clear, probe and self-test network emulation profiles.\n"
    "PROFILE: default | DELAY/RATE (10ms/1Gbps, 500us/10Gbps) |\n"
    "         delay=10ms,jitter=1ms,loss=0.1%,rate=1gbit,limit=N\n"
    "  apply     put PROFILE on DEV as its root qdisc (netem; TBF for a rate alone); the\n"
    "            original root qdisc is saved first and stays saved after exit; with --to,\n"
    "            a per-destination tree: only traffic to each PEER gets its PROFILE\n"
    "  show      read DEV's root qdisc back and print it as a profile\n"
    "  clear     restore DEV's original root qdisc; --all: undo everything recorded by\n"
    "            runs that are gone (after a crash) and by apply\n"
    "  probe     which qdiscs this kernel supports (tried in a scratch namespace)\n"
    "  selftest  two hosts as namespaces: RTT and TCP goodput, configured vs measured;\n"
    "            exit 1 when a judged figure is off by more than 5%\n",
    sections, overrides, deprecated,
    "state files: $PIPENEM_STATE_DIR or /run/pipenem\n",
};

static int runtime_error(const char *msg)
{
    fprintf(stderr, "pipenem netem: %s\n", msg);
    return CLI_FAIL;
}

static int do_apply(const char *ns, int argc, char **argv)
{
    char err[512], text[256];
    netem_profile_t p;
    netem_dev_t d;
    netem_tc_applied_t a;
    if (argc != 2)
        return cli_usage_error(CMD, "apply needs DEV and PROFILE (got %d argument%s)", argc, argc == 1 ? "" : "s");
    if (netem_dev_init(&d, ns, argv[0], err, sizeof err) < 0)
        return cli_usage_error(CMD, "%s", err);
    if (netem_profile_parse(argv[1], &p, err, sizeof err) < 0)
        return cli_usage_error(CMD, "%s", err);
    if (netem_tc_apply(&d, &p, NETEM_TC_PERSIST, &a, err, sizeof err) < 0)
        return runtime_error(err);
    netem_profile_format(&p, text, sizeof text);
    printf("# pipenem netem apply: %s%s%s <- %s\n", ns ? ns : "", ns ? "/" : "", d.ifname, text);
    netem_qdisc_describe(&a, text, sizeof text);
    printf("# %s\n", text);
    printf("# original root qdisc recorded in %s; `pipenem netem clear %s%s%s%s` restores it\n",
           netem_state_dir(), ns ? "--netns " : "", ns ? ns : "", ns ? " " : "", d.ifname);
    printf("# OK\n");
    return CLI_OK;
}

/* ADDR[:PORT]=PROFILE into a peer. */
static int peer_parse(const char *text, netem_tc_peer_t *out, char *err, size_t errlen)
{
    const char *eq = strchr(text, '=');
    char host[64];
    memset(out, 0, sizeof *out);
    if (!eq || eq == text || (size_t)(eq - text) >= sizeof host)
        return pn_err(err, errlen, -EINVAL, "--to '%s': expected PEER[:PORT]=PROFILE", text);
    snprintf(host, sizeof host, "%.*s", (int)(eq - text), text);
    char *colon = strchr(host, ':');
    if (colon) {
        int port;
        *colon = '\0';
        if (pn_parse_int(colon + 1, 1, 65535, &port) < 0)
            return pn_err(err, errlen, -EINVAL, "--to '%s': port '%s' is not 1 to 65535", text, colon + 1);
        out->port = (uint16_t)port;
    }
    struct in_addr a;
    if (inet_pton(AF_INET, host, &a) != 1 || strlen(host) >= sizeof out->addr)
        return pn_err(err, errlen, -EINVAL, "--to '%s': peer '%s' is not an IPv4 address", text, host);
    snprintf(out->addr, sizeof out->addr, "%s", host);
    char e2[256];
    if (netem_profile_parse(eq + 1, &out->profile, e2, sizeof e2) < 0)
        return pn_err(err, errlen, -EINVAL, "--to '%s': %s", text, e2);
    return 0;
}

static int do_apply_to(const char *ns, char **to, int nto, int argc, char **argv)
{
    char err[512], text[256];
    netem_dev_t d;
    netem_tc_peer_t peer[NETEM_TC_MAX_PEERS];
    if (argc != 1)
        return cli_usage_error(CMD, "apply --to needs exactly one DEV and no PROFILE (got %d argument%s)", argc,
                               argc == 1 ? "" : "s");
    if (netem_dev_init(&d, ns, argv[0], err, sizeof err) < 0)
        return cli_usage_error(CMD, "%s", err);
    for (int i = 0; i < nto; i++)
        if (peer_parse(to[i], &peer[i], err, sizeof err) < 0)
            return cli_usage_error(CMD, "%s", err);
    if (netem_tc_apply_by_dest(&d, nto, peer, NETEM_TC_PERSIST, err, sizeof err) < 0)
        return runtime_error(err);
    printf("# pipenem netem apply: %s%s%s, per destination (other traffic untouched)\n", ns ? ns : "",
           ns ? "/" : "", d.ifname);
    for (int i = 0; i < nto; i++) {
        netem_profile_format(&peer[i].profile, text, sizeof text);
        printf("#   to %s%s%.0u <- %s (%s)\n", peer[i].addr, peer[i].port ? ":" : "", peer[i].port, text,
               netem_profile_is_default(&peer[i].profile) ? "unshaped" : netem_qdisc_for(&peer[i].profile)->kind);
    }
    printf("# original root qdisc recorded in %s; `pipenem netem clear %s%s%s%s` restores it\n",
           netem_state_dir(), ns ? "--netns " : "", ns ? ns : "", ns ? " " : "", d.ifname);
    printf("# OK\n");
    return CLI_OK;
}

static int do_show(const char *ns, int argc, char **argv)
{
    char err[512], kind[32], text[256];
    netem_profile_t p;
    netem_dev_t d;
    uint32_t limit;
    if (argc != 1)
        return cli_usage_error(CMD, "show needs exactly one DEV");
    if (netem_dev_init(&d, ns, argv[0], err, sizeof err) < 0)
        return cli_usage_error(CMD, "%s", err);
    if (netem_tc_show(&d, &p, kind, sizeof kind, &limit, err, sizeof err) < 0)
        return runtime_error(err);
    printf("# %-16s %-8s %-24s %s\n", "device", "qdisc", "profile", "limit");
    /* the kind's table entry: a shaper of ours reads back as a profile, a kernel's default
     * root is the default profile, anything else is someone else's ("-") */
    const netem_qdisc_ops_t *q = netem_qdisc_find(kind);
    snprintf(text, sizeof text, "-");
    if (q && q->parse)
        netem_profile_format(&p, text, sizeof text);
    if (q && q->kernel_default)
        snprintf(text, sizeof text, "default");
    printf("  %-16s %-8s %-24s %u%s%s\n", d.ifname, kind, text, limit, q && q->limit_unit ? " " : "",
           q && q->limit_unit ? q->limit_unit : "");
    if (q && q->per_source) {   /* perhaps a per-source tree of ours */
        netem_tc_class_t cl[16];
        int n = 0;
        if (netem_tc_show_by_source(&d, cl, 16, &n, err, sizeof err) < 0)
            return runtime_error(err);
        for (int i = 0; i < n; i++) {
            netem_profile_format(&cl[i].profile, text, sizeof text);
            if (cl[i].src[0])
                printf("  %-16s %-8s %-24s from %s\n", d.ifname, cl[i].kind, text, cl[i].src);
            else
                printf("  %-16s %-8s %-24s to %s%s%.0u\n", d.ifname, cl[i].kind, text, cl[i].dst,
                       cl[i].port ? ":" : "", cl[i].port);
        }
    }
    return CLI_OK;
}

static void log_line(const char *line, void *arg)
{
    (void)arg;
    printf("  %s\n", line);
}

static int do_clear(const char *ns, int all, int argc, char **argv)
{
    char err[512];
    if (all) {
        if (argc || ns)
            return cli_usage_error(CMD, "clear --all takes no device or --netns");
        int undone = 0, live = 0;
        printf("# pipenem netem clear --all: state files in %s\n", netem_state_dir());
        int rc = netem_state_undo_all(&undone, &live, log_line, NULL, err, sizeof err);
        printf("# undone %d record%s, %d live run%s left alone\n", undone, undone == 1 ? "" : "s",
               live, live == 1 ? "" : "s");
        if (rc < 0)
            return runtime_error(err);
        printf("# OK\n");
        return CLI_OK;
    }
    if (argc != 1)
        return cli_usage_error(CMD, "clear needs exactly one DEV, or --all");
    netem_dev_t d;
    if (netem_dev_init(&d, ns, argv[0], err, sizeof err) < 0)
        return cli_usage_error(CMD, "%s", err);
    netem_state_entry_t e;
    if (!netem_state_find_qdisc(&d, &e)) {
        printf("# %s: nothing recorded, left as it is\n# OK\n", d.ifname);
        return CLI_OK;
    }
    if (netem_tc_clear(&d, err, sizeof err) < 0)
        return runtime_error(err);
    printf("# %s: %s root qdisc restored\n# OK\n", d.ifname,
           e.saved.is_default ? "default" : e.saved.kind);
    return CLI_OK;
}

static int do_probe(int argc)
{
    char err[512];
    netem_tc_probe_t pr;
    if (argc)
        return cli_usage_error(CMD, "probe takes no arguments");
    if (netem_tc_probe(&pr, err, sizeof err) < 0)
        return runtime_error(err);
    printf("# pipenem netem probe: qdiscs tried on a veth in a scratch namespace\n");
    printf("# %-10s %-10s %s\n", "qdisc", "supported", "detail");
    for (int i = 0; i < NETEM_TC_PROBE_KINDS; i++)
        printf("  %-10s %-10s %s\n", pr.rows[i].kind, pr.rows[i].rc == 0 ? "yes" : "no",
               pr.rows[i].rc == 0 ? "" : strerror(-pr.rows[i].rc));
    printf("# may change qdiscs here: %s\n", pr.may_change ? "yes (CAP_NET_ADMIN)" : "no");
    int netem = 0, tbf = 0;
    for (int i = 0; i < NETEM_TC_PROBE_KINDS; i++) {
        const netem_qdisc_ops_t *q = netem_qdisc_find(pr.rows[i].kind);
        netem |= q && q->id == NETEM_QDISC_NETEM && pr.rows[i].rc == 0;
        tbf |= q && q->id == NETEM_QDISC_TBF && pr.rows[i].rc == 0;
    }
    printf("# emulators: netem %s, shim yes (no kernel support needed)\n",
           netem ? "yes" : tbf ? "rate only (TBF; delay needs the shim)" : "no");
    printf("# OK\n");
    return CLI_OK;
}

static int do_selftest(char **nets, int nnets, const char *emulator, int ceiling, const char *url, int argc)
{
    char err[512];
    netem_profile_t prof[16];
    if (argc)
        return cli_usage_error(CMD, "selftest takes no positional arguments");
    if (nnets == 0)
        return cli_usage_error(CMD, "selftest needs --net PROFILE");
    for (int i = 0; i < nnets; i++)
        if (netem_profile_parse(nets[i], &prof[i], err, sizeof err) < 0)
            return cli_usage_error(CMD, "--net: %s", err);
    if (strcmp(emulator, "auto") && !netem_emulator_find(emulator))
        return cli_usage_error(CMD, "unknown emulator '%s' (%s)", emulator, netem_emulator_names());
    if (url && (ceiling || (strcmp(emulator, "auto") && !netem_emulator_find(emulator)->changes_kernel)))
        return cli_usage_error(CMD, "selftest --dist-url measures the kernel's per-destination shaping: no "
                               "--ceiling, --emulator netem or auto only (the shim shapes the pipeline's own transport)");
    if (url)
        return netem_dist_selftest(url, prof, nnets);
    netem_topo_t t;
    if (netem_topo_create(&t, 2, err, sizeof err) < 0)
        return runtime_error(err);
    int failed = 0, rc = 0;
    printf("# pipenem netem selftest: %s (%s) -> %s (%s), TCP, tolerance %.0f%%\n",
           netem_topo_host_ns(&t, 0), netem_topo_host_addr(&t, 0), netem_topo_host_ns(&t, 1),
           netem_topo_host_addr(&t, 1), NETEM_SELFTEST_TOLERANCE * 100);
    printf("# rtt: small-message round trips; configured = 2 x delay + unshaped base (minimum) for kernel\n"
           "#   qdiscs, 2 x delay for the shim (its delay hides the real path, which it cannot beat: where\n"
           "#   the unshaped legs outlast the delay, the excess is the host's, told below the row);\n"
           "#   measured = minimum (median when the profile has jitter): the excess of single round\n"
           "#   trips over a constant delay is scheduling noise of the measuring host, shown as rtt_med\n");
    printf("# goodput: one TCP stream after slow start, median of 6 windows of 0.5 s (robust to a busy\n"
           "#   host's stalls; gp_mean is all six); expected = rate x 1448/1514 = %.2f%% of the rate\n"
           "#   (MTU 1500: IPv4+TCP+timestamps 52 B per packet, Ethernet 14 B counted by the qdisc)\n",
           netem_profile_goodput(1.0, 1500) * 100);
    printf("# %-22s %-8s %9s %9s %9s %9s %7s %9s %9s %9s %9s %7s  %s\n", "profile", "emulator", "rtt_base",
           "rtt_cfg", "rtt_meas", "rtt_med", "rtt_err", "rate", "gp_exp", "gp_meas", "gp_mean", "gp_err", "verdict");
    printf("# %-22s %-8s %9s %9s %9s %9s %7s %9s %9s %9s %9s %7s\n", "", "", "(ms)", "(ms)", "(ms)", "(ms)",
           "(%)", "(Gbit/s)", "(Gbit/s)", "(Gbit/s)", "(Gbit/s)", "(%)");
    for (int i = 0; i < nnets; i++) {
        netem_selftest_result_t r;
        char text[128];
        netem_profile_format(&prof[i], text, sizeof text);
        if (netem_selftest_run(&t, &prof[i], emulator, ceiling, &meter_ucx_shim, &r, err, sizeof err) < 0) {
            fprintf(stderr, "pipenem netem: selftest %s: %s\n", text, err);
            rc = 1;
            failed++;
            continue;
        }
        if (i == 0 || ceiling)
            printf("# emulator %s (%s), measured over %s%s", r.emulator, r.why, r.meter, ceiling ? "" : "\n");
        if (ceiling)
            printf("; unshaped goodput ceiling %.3f Gbit/s\n", r.ceiling / 1e9);
        const char *verdict = (!r.rtt_judged && !r.goodput_judged) ? "not-judged"
                              : r.ok ? "ok" : r.host_limited ? "FAILED(host)" : "FAILED";
        printf("  %-22s %-8s %9.3f %9.3f %9.3f %9.3f %7.2f %9.3f %9.3f %9.3f %9.3f %7.2f  %s\n", text, r.emulator,
               r.rtt_base * 1e3, r.rtt_configured * 1e3, r.rtt_measured * 1e3, r.rtt_median * 1e3,
               r.rtt_judged ? r.rtt_err * 100 : 0.0, prof[i].rate / 1e9, r.goodput_expected / 1e9,
               r.goodput_measured / 1e9, r.goodput_mean / 1e9, r.goodput_judged ? r.goodput_err * 100 : 0.0, verdict);
        if (r.rtt_host_limited)
            printf("#   %s: this host's own path, unshaped, allows no round trip under %.3f ms with each leg\n"
                   "#     held to the delay (the shim cannot deliver before the data arrives): %.3f ms of the\n"
                   "#     error is the host's (too slow or busy), %.3f ms the emulator's\n", text,
                   r.rtt_host * 1e3, (r.rtt_host - r.rtt_configured) * 1e3, (r.rtt_measured - r.rtt_host) * 1e3);
        if (r.goodput_host_limited)
            printf("#   %s: this host carries only %.3f Gbit/s unshaped, below the expected %.3f: "
                   "the shortfall is the host's (too slow or busy), not the emulator's\n", text,
                   r.ceiling / 1e9, r.goodput_expected / 1e9);
        fflush(stdout);
        failed += !r.ok;
    }
    netem_topo_destroy(&t);
    printf("# %s\n", failed ? "FAILED" : "OK");
    return failed || rc ? CLI_FAIL : CLI_OK;
}

int cmd_netem(int argc, char **argv)
{
    const char *ns = NULL, *emulator = "auto", *url = NULL;
    char *nets[16], *to[NETEM_TC_MAX_PEERS];
    int nto = 0, nnets = 0, all = 0, ceiling = 0, c;
    cli_parser_t p;
    if (cli_parser_init(&p, &spec))
        return cli_usage_error(CMD, "internal: the option table is inconsistent");
    while ((c = cli_next(&p, argc, argv)) != -1) {
        switch (c) {
        case NETEM_OPT_NETNS: ns = optarg; break;
        case NETEM_OPT_ALL: all = 1; break;
        case RUNCFG_OPT_EMULATOR: emulator = optarg; break;
        case NETEM_OPT_CEILING: ceiling = 1; break;
        case RUNCFG_OPT_DIST_URL: url = optarg; break;
        case NETEM_OPT_TO:
            if (nto == NETEM_TC_MAX_PEERS)
                return cli_usage_error(CMD, "at most %d --to peers", NETEM_TC_MAX_PEERS);
            to[nto++] = optarg;
            break;
        case RUNCFG_OPT_NET:
            if (nnets == 16)
                return cli_usage_error(CMD, "at most 16 --net profiles");
            nets[nnets++] = optarg;
            break;
        case CLI_OPT_HELP: cli_help(&spec, stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (optind >= argc)
        return cli_usage_error(CMD, "missing action (apply, show, clear, probe, selftest)");
    const char *act = argv[optind];
    int rest = argc - optind - 1;
    char **rv = argv + optind + 1;
    int is_selftest = !strcmp(act, "selftest"), is_clear = !strcmp(act, "clear");
    if (!is_selftest && (nnets || ceiling || url || strcmp(emulator, "auto")))
        return cli_usage_error(CMD, "--net, --emulator, --ceiling and --dist-url belong to selftest, not %s", act);
    if (nto && strcmp(act, "apply"))
        return cli_usage_error(CMD, "--to belongs to apply, not %s", act);
    if (!is_clear && all)
        return cli_usage_error(CMD, "--all belongs to clear, not %s", act);
    if ((is_selftest || !strcmp(act, "probe")) && ns)
        return cli_usage_error(CMD, "--netns does not apply to %s", act);
    if (netem_state_guard_start() < 0)
        return runtime_error("cannot start the signal guard");
    if (!strcmp(act, "apply"))
        return nto ? do_apply_to(ns, to, nto, rest, rv) : do_apply(ns, rest, rv);
    if (!strcmp(act, "show"))
        return do_show(ns, rest, rv);
    if (is_clear)
        return do_clear(ns, all, rest, rv);
    if (!strcmp(act, "probe"))
        return do_probe(rest);
    if (is_selftest)
        return do_selftest(nets, nnets, emulator, ceiling, url, rest);
    return cli_usage_error(CMD, "unknown action '%s' (apply, show, clear, probe, selftest)", act);
}
