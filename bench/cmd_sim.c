/* pipenem sim: predict the iteration time, bubble fraction and per-stage busy share of
 * one configuration for each schedule asked for, with the discrete-event simulator
 * (schedules/sim.h). Costs come from the command line or from a model under the emulate
 * backend's device model (models/); links from --net (netem/profile.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench/cli.h"
#include "common/limits.h"
#include "models/model.h"
#include "netem/profile.h"
#include "schedules/sched.h"
#include "schedules/sim.h"

#define CMD "sim"
#define MAX_SCHEDULES 16

static const char usage[] =
    "usage: pipenem sim [options]\n"
    "predict iteration time, bubble fraction and per-stage busy share with the simulator.\n"
    "\n"
    "  -s, --schedule LIST        comma-separated schedules: %s\n"
    "                             (default: all of them)\n"
    "  -p, --stages P             pipeline stages (default 3)\n"
    "  -m, --micro-batches M      micro-batches per iteration; or\n"
    "  -b, --batch-size N         global batch (default 64) with\n"
    "  -u, --micro-batch-size U   micro-batch size (default 1): M = N / U\n"
    "  -f, --fwd-ms T[,T...]      forward time per micro-batch, ms: one value or one per stage\n"
    "  -B, --bwd-ms T[,T...]      backward time per micro-batch, ms: one value or one per stage\n"
    "      --opt-ms T[,T...]      optimizer step per iteration, ms (default 0)\n"
    "      --bytes SIZE           bytes per activation message, e.g. 6.3MB, 4MiB (default 0)\n"
    "      --grad-bytes SIZE      bytes per gradient message (default: --bytes)\n"
    "      --model NAME           take costs and message sizes from a model instead: %s\n"
    "      --seq-len T            sequence length of --model (default: its context)\n"
    "      --compute emulate:...  device model of --model: emulate:v100|a100|h100[,eff=X],\n"
    "                             emulate:fwd=25ms,bwd=75ms or emulate:FILE (default emulate:v100)\n"
    "  -n, --net PROFILE          link profile between neighbouring stages: 10ms/1Gbps,\n"
    "                             delay=..,rate=.., or 0-1=P,1-2=P (default: free links)\n"
    "      --overhead-us T        per-message overhead occupying the link, us (default 0)\n"
    "      --send-mode MODE       pipelined (default) or blocking: the next send of a stage\n"
    "                             waits until the previous one was delivered\n"
    "  -k, --slack K|auto         slack of 1f1b-slack (default auto: smallest K in 0..%d within\n"
    "                             1%% of the best)\n"
    "      --critical-path        list the ops on each schedule's critical path\n"
    "  -h, --help                 this text\n"
    "\n"
    "Times are printed in ms. no_delay is the same configuration on free links.\n";

/* One value, or one per stage, each a finite number >= 0; scaled by `unit`. */
static int parse_list(const char *opt, const char *s, int P, double unit, double *out)
{
    int n = 0;
    const char *p = s;
    double vals[PN_MAX_STAGES];
    while (1) {
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || (*end && *end != ',') || errno || !isfinite(v) || v < 0)
            return cli_usage_error(CMD, "%s '%s': '%.*s' is not a number >= 0", opt, s,
                                   (int)strcspn(p, ","), p);
        if (n == PN_MAX_STAGES)
            return cli_usage_error(CMD, "%s: more than %d values", opt, PN_MAX_STAGES);
        vals[n++] = v * unit;
        if (!*end)
            break;
        p = end + 1;
    }
    if (n != 1 && n != P)
        return cli_usage_error(CMD, "%s has %d values; want 1 or %d (one per stage)", opt, n, P);
    for (int i = 0; i < P; i++)
        out[i] = vals[n == 1 ? 0 : i];
    return 0;
}

/* A byte count with an optional unit: B, kB/KB, MB, GB (powers of 1000), KiB, MiB,
 * GiB (powers of 1024), or k/K/M/G alone. */
static int parse_size(const char *opt, const char *s, double *out)
{
    static const struct {
        const char *unit;
        double mult;
    } units[] = {{"", 1}, {"B", 1}, {"k", 1e3}, {"K", 1e3}, {"kB", 1e3}, {"KB", 1e3},
                 {"M", 1e6}, {"MB", 1e6}, {"G", 1e9}, {"GB", 1e9}, {"KiB", 1024.0},
                 {"MiB", 1048576.0}, {"GiB", 1073741824.0}};
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end != s && !errno && isfinite(v) && v >= 0)
        for (size_t i = 0; i < sizeof units / sizeof *units; i++)
            if (!strcmp(end, units[i].unit)) {
                *out = v * units[i].mult;
                return 0;
            }
    return cli_usage_error(CMD, "%s '%s': want a size >= 0 such as 6300000, 6.3MB or 4MiB", opt, s);
}

static void print_critical(const char *name, const sim_result_t *r, int list)
{
    double prev = 0, compute = 0, comm = 0;
    size_t hops = 0;
    for (size_t i = 0; i < r->n_critical; i++) {
        sim_ref_t c = r->critical[i];
        sched_op_kind_t k = r->plan.ops[c.stage][c.op].kind;
        double end = r->span[c.stage][c.op].end;
        if (k == SCHED_SEND_ACT || k == SCHED_SEND_GRAD) {
            comm += end - prev;
            hops++;
        } else {
            compute += end - prev;
        }
        prev = end;
    }
    printf("# critical path %s: %zu ops, compute %.3f ms, communication %.3f ms over %zu messages\n",
           name, r->n_critical, compute * 1e3, comm * 1e3, hops);
    if (!list)
        return;
    int col = 0;
    for (size_t i = 0; i < r->n_critical; i++) {
        sim_ref_t c = r->critical[i];
        char tok[32];
        sched_op_format(&r->plan.ops[c.stage][c.op], tok, sizeof tok);
        if (col == 0 || col > 96)
            col = printf("%s#  ", col ? "\n" : "");
        col += printf(" s%d:%s", c.stage, tok);
    }
    putchar('\n');
}

/* Per-stage costs and the boundary tensor size of a model under an emulate device
 * model: each stage is built (emulate holds no parameters or activations) and its
 * modelled seconds read back. Returns 0, or CLI_USAGE with the models' message. */
static int model_costs(const char *name, int seq_len, const char *compute, int P, int M, int mbs,
                       sim_cost_t *cost, double *bytes, char *label, size_t labellen)
{
    char err[512];
    model_stage_params_t p;
    memset(&p, 0, sizeof p);
    if (model_config_get(name, &p.cfg, err, sizeof err))
        return cli_usage_error(CMD, "--model: %s", err);
    p.seq_len = seq_len ? seq_len : p.cfg.context;
    p.micro_batch_size = mbs;
    p.micro_batches = M;
    p.stages = P;
    p.max_inflight = 1;
    p.compute = compute;
    p.dataset = "random";
    p.seed = 1;
    p.threads = 1;
    p.lr = 1e-4f;
    for (int s = 0; s < P; s++) {
        model_stage_t st;
        p.stage = s;
        if (model_stage_init(&st, &p, err, sizeof err))
            return cli_usage_error(CMD, "--model %s --compute %s, stage %d: %s", name, compute, s, err);
        model_account_t a;
        model_stage_account(&st, &a);
        cost[s] = (sim_cost_t){a.fwd_s, a.bwd_s, a.opt_s};
        *bytes = (double)a.boundary_bytes;
        if (s == 0)
            model_stage_describe(&st, label, labellen);
        model_stage_destroy(&st);
    }
    char dev[160];
    snprintf(dev, sizeof dev, "%.159s", label);
    snprintf(label, labellen, "%.32s seq %d micro-batch %d on %s", name, p.seq_len, mbs, dev);
    return 0;
}

int cmd_sim(int argc, char **argv)
{
    enum { O_OPT = 256, O_BYTES, O_GRAD, O_OVERHEAD, O_MODE, O_CRIT, O_MODEL, O_SEQ, O_COMPUTE };
    static const struct option opts[] = {
        {"schedule", required_argument, NULL, 's'},
        {"stages", required_argument, NULL, 'p'},
        {"micro-batches", required_argument, NULL, 'm'},
        {"batch-size", required_argument, NULL, 'b'},
        {"micro-batch-size", required_argument, NULL, 'u'},
        {"fwd-ms", required_argument, NULL, 'f'},
        {"bwd-ms", required_argument, NULL, 'B'},
        {"opt-ms", required_argument, NULL, O_OPT},
        {"bytes", required_argument, NULL, O_BYTES},
        {"grad-bytes", required_argument, NULL, O_GRAD},
        {"net", required_argument, NULL, 'n'},
        {"overhead-us", required_argument, NULL, O_OVERHEAD},
        {"send-mode", required_argument, NULL, O_MODE},
        {"slack", required_argument, NULL, 'k'},
        {"critical-path", no_argument, NULL, O_CRIT},
        {"model", required_argument, NULL, O_MODEL},
        {"seq-len", required_argument, NULL, O_SEQ},
        {"compute", required_argument, NULL, O_COMPUTE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *sched_arg = NULL, *fwd_arg = NULL, *bwd_arg = NULL, *opt_arg = "0", *net = NULL;
    const char *slack_arg = "auto", *grad_arg = NULL, *model = NULL, *compute = NULL;
    const char *bytes_arg = NULL;
    int seq_len = 0;
    int P = 3, M = 0, batch = 64, mbs = 1, have_b = 0, have_u = 0, list_path = 0, c;
    double act_bytes = 0, grad_bytes = 0, overhead_us = 0;
    sim_send_mode_t mode = SIM_SEND_PIPELINED;
    optind = 1;
    while ((c = cli_getopt(CMD, argc, argv, "s:p:m:b:u:f:B:n:k:h", opts)) != -1) {
        switch (c) {
        case -2: return CLI_USAGE;
        case 'h': printf(usage, sched_names(), model_config_names(), SIM_SLACK_AUTO_MAX); return CLI_OK;
        case 's': sched_arg = optarg; break;
        case 'p':
            if (cli_parse_int(CMD, "--stages", optarg, 1, PN_MAX_STAGES, &P))
                return CLI_USAGE;
            break;
        case 'm':
            if (cli_parse_int(CMD, "--micro-batches", optarg, 1, PN_MAX_MICRO_BATCHES, &M))
                return CLI_USAGE;
            break;
        case 'b':
            if (cli_parse_int(CMD, "--batch-size", optarg, 1, 1 << 30, &batch))
                return CLI_USAGE;
            have_b = 1;
            break;
        case 'u':
            if (cli_parse_int(CMD, "--micro-batch-size", optarg, 1, 1 << 30, &mbs))
                return CLI_USAGE;
            have_u = 1;
            break;
        case 'f': fwd_arg = optarg; break;
        case 'B': bwd_arg = optarg; break;
        case O_OPT: opt_arg = optarg; break;
        case O_BYTES:
            if (parse_size("--bytes", optarg, &act_bytes))
                return CLI_USAGE;
            bytes_arg = optarg;
            break;
        case O_GRAD: grad_arg = optarg; break;
        case 'n': net = optarg; break;
        case O_OVERHEAD: {
            char *end;
            overhead_us = strtod(optarg, &end);
            if (end == optarg || *end || !isfinite(overhead_us) || overhead_us < 0)
                return cli_usage_error(CMD, "--overhead-us '%s': want a number >= 0", optarg);
            break;
        }
        case O_MODE:
            if (sim_send_mode_parse(optarg, &mode))
                return cli_usage_error(CMD, "--send-mode '%s': want pipelined or blocking", optarg);
            break;
        case 'k': slack_arg = optarg; break;
        case O_CRIT: list_path = 1; break;
        case O_MODEL: model = optarg; break;
        case O_SEQ:
            if (cli_parse_int(CMD, "--seq-len", optarg, 1, 1 << 20, &seq_len))
                return CLI_USAGE;
            break;
        case O_COMPUTE: compute = optarg; break;
        }
    }
    if (optind < argc)
        return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (!model && (seq_len || compute))
        return cli_usage_error(CMD, "%s applies to --model", seq_len ? "--seq-len" : "--compute");
    if (model && (fwd_arg || bwd_arg || strcmp(opt_arg, "0") || bytes_arg || grad_arg))
        return cli_usage_error(CMD, "--model gives the costs and sizes; drop %s",
                               fwd_arg ? "--fwd-ms" : bwd_arg ? "--bwd-ms" : bytes_arg ? "--bytes"
                               : grad_arg ? "--grad-bytes" : "--opt-ms");
    if (compute && strncmp(compute, "emulate", 7))
        return cli_usage_error(CMD, "--compute '%s': the simulator needs modelled times, "
                               "use emulate:DEVICE, emulate:fwd=..,bwd=.. or emulate:FILE", compute);
    if (M && (have_b || have_u)) {
        if (have_b && have_u && batch / mbs != M)
            return cli_usage_error(CMD, "--micro-batches %d contradicts --batch-size %d / "
                                   "--micro-batch-size %d", M, batch, mbs);
        if (!(have_b && have_u))
            return cli_usage_error(CMD, "give --micro-batches, or --batch-size with --micro-batch-size, "
                                   "not both");
    }
    int derived = !M;
    if (!M) {
        if (batch % mbs)
            return cli_usage_error(CMD, "--batch-size %d is not a multiple of --micro-batch-size %d",
                                   batch, mbs);
        M = batch / mbs;
    }
    if (!model && (!fwd_arg || !bwd_arg))
        return cli_usage_error(CMD, "%s is required (time per micro-batch per stage, ms)",
                               !fwd_arg ? "--fwd-ms" : "--bwd-ms");
    int K = SIM_SLACK_AUTO;
    if (strcmp(slack_arg, "auto") && cli_parse_int(CMD, "--slack", slack_arg, 0, PN_MAX_SLACK, &K))
        return CLI_USAGE;
    grad_bytes = act_bytes;
    if (grad_arg && parse_size("--grad-bytes", grad_arg, &grad_bytes))
        return CLI_USAGE;

    /* schedules */
    char sched_buf[512];
    const char *scheds[MAX_SCHEDULES];
    int n_sched = 0;
    snprintf(sched_buf, sizeof sched_buf, "%s", sched_arg ? sched_arg : sched_names());
    for (char *save = NULL, *t = strtok_r(sched_buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        if (sched_uses_slack(t) < 0)
            return cli_usage_error(CMD, "unknown schedule '%s' (known: %s)", t, sched_names());
        if (n_sched == MAX_SCHEDULES)
            return cli_usage_error(CMD, "more than %d schedules", MAX_SCHEDULES);
        scheds[n_sched++] = t;
    }
    if (!n_sched)
        return cli_usage_error(CMD, "--schedule is empty (known: %s)", sched_names());

    int rc = CLI_FAIL;
    sim_cost_t *cost = calloc((size_t)P, sizeof *cost);
    double *tmp = calloc((size_t)P, sizeof *tmp);
    sim_link_t *links = calloc((size_t)P, sizeof *links);
    netem_profile_t *profiles = NULL;
    sim_result_t *res = calloc((size_t)n_sched, sizeof *res);
    if (!cost || !tmp || !links || !res)
        goto out;
    char model_label[320] = "";
    if (model) {
        if (!compute)
            compute = "emulate:v100";
        if ((rc = model_costs(model, seq_len, compute, P, M, mbs, cost, &act_bytes, model_label,
                              sizeof model_label)))
            goto out;
        grad_bytes = act_bytes;
        rc = CLI_FAIL;
    } else {
        if (parse_list("--fwd-ms", fwd_arg, P, 1e-3, tmp)) {
            rc = CLI_USAGE;
            goto out;
        }
        for (int s = 0; s < P; s++)
            cost[s].fwd = tmp[s];
        if (parse_list("--bwd-ms", bwd_arg, P, 1e-3, tmp)) {
            rc = CLI_USAGE;
            goto out;
        }
        for (int s = 0; s < P; s++)
            cost[s].bwd = tmp[s];
        if (parse_list("--opt-ms", opt_arg, P, 1e-3, tmp)) {
            rc = CLI_USAGE;
            goto out;
        }
        for (int s = 0; s < P; s++)
            cost[s].opt = tmp[s];
    }
    /* Both directions of a link share its profile: rate is per direction (full duplex).
     * Jitter and loss have no counterpart in the model and are reported as ignored. */
    int ignored = 0;
    if (net) {
        char perr[256];
        if (!(profiles = calloc((size_t)P, sizeof *profiles)))
            goto out;
        if (netem_net_parse(net, P, profiles, perr, sizeof perr)) {
            rc = cli_usage_error(CMD, "--net '%s': %s", net, perr);
            goto out;
        }
        for (int i = 0; i + 1 < P; i++) {
            links[i].delay = profiles[i].delay;
            links[i].bandwidth = profiles[i].rate;
            ignored |= profiles[i].jitter > 0 || profiles[i].loss > 0;
        }
    }
    for (int i = 0; i + 1 < P; i++)
        links[i].overhead = overhead_us * 1e-6;

    printf("# pipenem sim: %d stages, %d micro-batches", P, M);
    if (derived)
        printf(" (batch %d / micro-batch size %d)", batch, mbs);
    if (model) {
        printf("\n# costs from %s; per micro-batch, stage by stage:\n#   forward", model_label);
        for (int s = 0; s < P; s++)
            printf("%s%.3f", s ? "/" : " ", cost[s].fwd * 1e3);
        printf(" ms, backward");
        for (int s = 0; s < P; s++)
            printf("%s%.3f", s ? "/" : " ", cost[s].bwd * 1e3);
        printf(" ms, optimizer");
        for (int s = 0; s < P; s++)
            printf("%s%.3f", s ? "/" : " ", cost[s].opt * 1e3);
        printf(" ms per iteration\n");
    } else {
        printf("\n# costs per micro-batch: forward %s ms, backward %s ms; optimizer %s ms per iteration\n",
               fwd_arg, bwd_arg, opt_arg);
    }
    printf("# links:");
    for (int i = 0; i + 1 < P; i++) {
        char label[128] = "free";
        if (profiles && !netem_profile_is_default(&profiles[i]) &&
            netem_profile_label(&profiles[i], label, sizeof label) < 0)
            snprintf(label, sizeof label, "?");
        if (i < 8 || i + 2 == P)
            printf("%s %d-%d %s", i ? "," : "", i, i + 1, label);
        else if (i == 8)
            printf(", ...");
    }
    if (P == 1)
        printf(" none (one stage)");
    printf("\n# messages %.0f B activations, %.0f B gradients; overhead %g us; send mode %s\n",
           act_bytes, grad_bytes, overhead_us, sim_send_mode_name(mode));
    if (ignored)
        printf("# note: the simulator models delay and rate; jitter and loss in --net are ignored\n");
    printf("#\n#%13s %6s %12s %12s %8s %9s  %s\n", "schedule", "slack", "iter_time", "no_delay",
           "bubble", "peak_act", "busy share per stage");
    printf("#%13s %6s %12s %12s %8s %9s  %s\n", "", "(K)", "(ms)", "(ms)", "(%)", "(mb)", "(%)");
    int failed = 0;
    char err[512];
    for (int i = 0; i < n_sched; i++) {
        sim_config_t cfg = {scheds[i], P, M, K, cost, links, links, act_bytes, grad_bytes, mode};
        sim_config_t free_cfg = cfg;
        free_cfg.link_fwd = free_cfg.link_bwd = NULL;
        sim_result_t nd;
        double times[SIM_SLACK_AUTO_MAX + 1];
        int auto_k = -1;
        if (sched_uses_slack(scheds[i]) > 0 && K == SIM_SLACK_AUTO &&
            sim_slack_auto(&cfg, &auto_k, times, err, sizeof err)) {
            printf("%14s  failed: %s\n", scheds[i], err);
            failed = 1;
            continue;
        }
        if (auto_k >= 0)
            cfg.slack = free_cfg.slack = auto_k;
        if (sim_run(&cfg, &res[i], err, sizeof err) || sim_run(&free_cfg, &nd, err, sizeof err)) {
            printf("%14s  failed: %s\n", scheds[i], err);
            failed = 1;
            continue;
        }
        char slack[16] = "-";
        if (res[i].slack >= 0)
            snprintf(slack, sizeof slack, "%d", res[i].slack);
        int peak = 0;
        for (int s = 0; s < P; s++)
            peak = res[i].peak_inflight[s] > peak ? res[i].peak_inflight[s] : peak;
        printf(" %13s %6s %12.3f %12.3f %8.2f %9d ", scheds[i], slack, res[i].time * 1e3, nd.time * 1e3,
               100 * res[i].bubble_mean, peak);
        for (int s = 0; s < P; s++)
            printf("%s%.1f", s ? "/" : " ", res[i].time > 0 ? 100 * res[i].busy[s] / res[i].time : 0);
        putchar('\n');
        sim_result_destroy(&nd);
        if (auto_k >= 0) {
            printf("#%13s slack auto:", "");
            for (int k = 0; k <= SIM_SLACK_AUTO_MAX; k++)
                printf(" K=%d %.3f", k, times[k] * 1e3);
            printf(" ms -> K=%d\n", auto_k);
        }
    }
    printf("#\n");
    for (int i = 0; i < n_sched; i++)
        if (res[i].span)
            print_critical(scheds[i], &res[i], list_path);
    printf("# %s\n", failed ? "FAILED" : "OK");
    rc = failed ? CLI_FAIL : CLI_OK;
out:
    for (int i = 0; res && i < n_sched; i++)
        sim_result_destroy(&res[i]);
    free(res);
    free(profiles);
    free(links);
    free(tmp);
    free(cost);
    return rc;
}
