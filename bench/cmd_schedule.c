/* pipenem schedule: print each stage's op order and a textbook timeline of a schedule
 * (simulated with unit costs on free links), and with --check validate every stage and
 * link. --ops FILE checks hand-written op lists instead of a built-in schedule. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/cli.h"
#include "common/limits.h"
#include "schedules/sched.h"
#include "schedules/sim.h"

#define CMD "schedule"
/* The timeline's costs: one column per unit. B = 2F as in the usual diagrams. */
#define UNIT_FWD 1.0
#define UNIT_BWD 2.0

static const char usage[] =
    "usage: pipenem schedule [options]\n"
    "print each stage's op order and a textbook timeline of a pipeline schedule.\n"
    "\n"
    "  -s, --schedule NAME       schedule: %s (default 1f1b)\n"
    "  -p, --stages P            pipeline stages, >= 1 (default 4)\n"
    "  -m, --micro-batches M     micro-batches per iteration, >= 1 (default 8)\n"
    "  -k, --slack K|auto        extra micro-batches in flight per hop (1f1b-slack; default 1)\n"
    "      --ops FILE            check op lists from FILE instead of building a schedule: one line\n"
    "                            per stage, tokens as printed ('stage N:' lines of this command's\n"
    "                            output are picked out); '-' = stdin\n"
    "  -c, --check               validate every stage and link; exit 0 if valid, 1 if not\n"
    "      --no-timeline         skip the timeline\n"
    "  -h, --help                this text\n"
    "\n"
    "Timeline: forward 1 unit, backward 2 units per micro-batch, optimizer 0, free links;\n"
    "one column per unit, Fi / Bi = forward / backward of micro-batch i, '.' = idle.\n";

static char *read_all(const char *path, char *err, size_t errlen)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "r") : stdin;
    if (!f) {
        snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (n + 1 < cap)
            break;
        char *nb = realloc(buf, cap *= 2);
        if (!nb) {
            free(buf);
            buf = NULL;
        }
        buf = nb;
    }
    int bad = ferror(f);
    if (f != stdin)
        fclose(f);
    if (!buf || bad) {
        snprintf(err, errlen, "cannot read '%s'", path);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* Keeps only the "stage N: ..." lines when there are any, so the output of
 * `pipenem schedule` can be fed back to --ops as it is. */
static void keep_op_lines(char *text)
{
    int any = 0;
    for (char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        int n = 0;
        if (sscanf(l, "stage %*d%n", &n) >= 0 && n > 0 && l[n] == ':')
            any = 1;
    }
    if (!any)
        return;
    for (char *l = text; l && *l;) {
        char *nl = strchr(l, '\n');
        int n = 0;
        if (!(sscanf(l, "stage %*d%n", &n) >= 0 && n > 0 && l[n] == ':'))
            memset(l, ' ', nl ? (size_t)(nl - l) : strlen(l));
        l = nl ? nl + 1 : NULL;
    }
}

static int digits(int v)
{
    int d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

static void print_op_order(const sched_plan_t *p)
{
    printf("#\n# op order (F/B forward/backward, Ra/Sa receive/send activation, Rg/Sg receive/send gradient, OPT optimizer step)\n");
    for (int s = 0; s < p->stages; s++) {
        printf("stage %d:", s);
        for (size_t j = 0; j < p->n_ops[s]; j++) {
            char tok[32];
            sched_op_format(&p->ops[s][j], tok, sizeof tok);
            printf(" %s", tok);
        }
        putchar('\n');
    }
}

/* One row per stage; each time unit is a cell "F3", "B3" or dots, as wide as the
 * largest label, so the columns of all stages line up. */
static int print_timeline(const sim_result_t *r)
{
    int M = r->plan.micro_batches, w = 1 + digits(M - 1);
    long units = lround(r->time);
    if (units <= 0)
        return 0;
    char *row = malloc((size_t)units * (size_t)(w + 1) + 1);
    if (!row)
        return -ENOMEM;
    printf("#\n# timeline (Fi/Bi = forward/backward of micro-batch i, one cell per time unit, '.' = idle)\n");
    for (int s = 0; s < r->plan.stages; s++) {
        size_t len = (size_t)units * (size_t)(w + 1);
        memset(row, ' ', len);
        for (long u = 0; u < units; u++)
            memset(row + u * (w + 1), '.', (size_t)w);
        for (size_t j = 0; j < r->plan.n_ops[s]; j++) {
            const sched_op_t *op = &r->plan.ops[s][j];
            if (op->kind != SCHED_FWD && op->kind != SCHED_BWD)
                continue;
            for (long u = lround(r->span[s][j].start); u < lround(r->span[s][j].end) && u < units; u++) {
                char cell[32];
                snprintf(cell, sizeof cell, "%c%-*d", op->kind == SCHED_FWD ? 'F' : 'B', w - 1, op->mb);
                memcpy(row + u * (w + 1), cell, (size_t)w);
            }
        }
        while (len > 0 && row[len - 1] == ' ')
            len--;
        row[len] = '\0';
        printf("stage %-*d| %s\n", digits(r->plan.stages - 1), s, row);
    }
    free(row);
    return 0;
}

int cmd_schedule(int argc, char **argv)
{
    static const struct option opts[] = {
        {"schedule", required_argument, NULL, 's'},
        {"stages", required_argument, NULL, 'p'},
        {"micro-batches", required_argument, NULL, 'm'},
        {"slack", required_argument, NULL, 'k'},
        {"ops", required_argument, NULL, 'O'},
        {"check", no_argument, NULL, 'c'},
        {"no-timeline", no_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *schedule = NULL, *ops_path = NULL, *slack_arg = NULL;
    int P = 4, M = 8, K = 1, check = 0, timeline = 1, have_p = 0, have_m = 0, c;
    optind = 1;
    while ((c = cli_getopt(CMD, argc, argv, "s:p:m:k:ch", opts)) != -1) {
        switch (c) {
        case -2: return CLI_USAGE;
        case 'h': printf(usage, sched_names()); return CLI_OK;
        case 's': schedule = optarg; break;
        case 'p':
            if (cli_parse_int(CMD, "--stages", optarg, 1, PN_MAX_STAGES, &P))
                return CLI_USAGE;
            have_p = 1;
            break;
        case 'm':
            if (cli_parse_int(CMD, "--micro-batches", optarg, 1, PN_MAX_MICRO_BATCHES, &M))
                return CLI_USAGE;
            have_m = 1;
            break;
        case 'k': slack_arg = optarg; break;
        case 'O': ops_path = optarg; break;
        case 'c': check = 1; break;
        case 'T': timeline = 0; break;
        }
    }
    if (optind < argc)
        return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (ops_path && (schedule || slack_arg || have_p))
        return cli_usage_error(CMD, "--ops takes the stages and order from the file; drop %s",
                               schedule ? "--schedule" : slack_arg ? "--slack" : "--stages");
    if (!schedule)
        schedule = "1f1b";
    if (!ops_path && sched_uses_slack(schedule) < 0)
        return cli_usage_error(CMD, "unknown schedule '%s' (known: %s)", schedule, sched_names());
    if (slack_arg && sched_uses_slack(schedule) == 0)
        return cli_usage_error(CMD, "--slack applies to 1f1b-slack, not %s", schedule);
    if (slack_arg && strcmp(slack_arg, "auto") && cli_parse_int(CMD, "--slack", slack_arg, 0, PN_MAX_SLACK, &K))
        return CLI_USAGE;

    char err[512] = "";
    sched_plan_t plan = {0};
    sim_result_t res = {0};
    int *peak = NULL, rc = CLI_FAIL, valid;
    char label[64];
    if (ops_path) {
        char *text = read_all(ops_path, err, sizeof err);
        if (!text) {
            fprintf(stderr, "pipenem %s: %s\n", CMD, err);
            return CLI_FAIL;
        }
        keep_op_lines(text);
        int prc = sched_plan_parse(text, have_m ? M : 0, &plan, err, sizeof err);
        free(text);
        if (prc) {
            fprintf(stderr, "pipenem %s: %s: %s\n", CMD, ops_path, err);
            return CLI_FAIL;
        }
        snprintf(label, sizeof label, "op lists from %s", ops_path);
    } else {
        sim_cost_t *unit = calloc((size_t)P, sizeof *unit);
        if (!unit)
            return CLI_FAIL;
        for (int s = 0; s < P; s++)
            unit[s] = (sim_cost_t){UNIT_FWD, UNIT_BWD, 0};
        sim_config_t cfg = {schedule, P, M, K, unit, NULL, NULL, 0, 0, SIM_SEND_PIPELINED};
        int auto_k = slack_arg && !strcmp(slack_arg, "auto");
        /* auto with unit costs on free links: K = 0 already has no extra idle time */
        if (auto_k && sim_slack_auto(&cfg, &K, NULL, err, sizeof err)) {
            free(unit);
            fprintf(stderr, "pipenem %s: %s\n", CMD, err);
            return CLI_FAIL;
        }
        free(unit);
        if (sched_plan_build(schedule, P, M, K, &plan, err, sizeof err)) {
            fprintf(stderr, "pipenem %s: %s\n", CMD, err);
            return CLI_FAIL;
        }
        if (sched_uses_slack(schedule) > 0)
            snprintf(label, sizeof label, "%s, slack %d%s", schedule, K, auto_k ? " (auto)" : "");
        else
            snprintf(label, sizeof label, "%s", schedule);
    }
    P = plan.stages;
    M = plan.micro_batches;
    peak = calloc((size_t)P, sizeof *peak);
    if (!peak)
        goto out;

    /* Each stage alone first, so every broken stage gets its own verdict. */
    char *stage_err = calloc((size_t)P, 256);
    if (!stage_err)
        goto out;
    int stages_ok = 1;
    for (int s = 0; s < P; s++)
        if (sched_ops_validate(P, M, s, plan.ops[s], plan.n_ops[s], stage_err + (size_t)s * 256, 256))
            stages_ok = 0;
    valid = stages_ok && !sched_plan_validate(&plan, peak, err, sizeof err);
    if (valid) {
        double **dur = calloc((size_t)P, sizeof *dur), **bytes = calloc((size_t)P, sizeof *bytes);
        int ok = dur && bytes;
        for (int s = 0; ok && s < P; s++) {
            dur[s] = calloc(plan.n_ops[s] + 1, sizeof **dur);
            bytes[s] = calloc(plan.n_ops[s] + 1, sizeof **bytes);
            ok = dur[s] && bytes[s];
            for (size_t j = 0; ok && j < plan.n_ops[s]; j++)
                dur[s][j] = plan.ops[s][j].kind == SCHED_FWD ? UNIT_FWD
                            : plan.ops[s][j].kind == SCHED_BWD ? UNIT_BWD : 0;
        }
        sim_graph_t g = {&plan, (const double *const *)dur, (const double *const *)bytes, NULL, NULL,
                         SIM_SEND_PIPELINED};
        int src = ok ? sim_graph_run(&g, &res, err, sizeof err) : -ENOMEM;
        for (int s = 0; dur && bytes && s < P; s++) {
            free(dur[s]);
            free(bytes[s]);
        }
        free(dur);
        free(bytes);
        if (src) {
            fprintf(stderr, "pipenem %s: simulating: %s\n", CMD, err[0] ? err : "out of memory");
            free(stage_err);
            goto out;
        }
    }

    printf("# pipenem schedule: %s, %d stages, %d micro-batches\n", label, P, M);
    printf("# unit costs: forward %g, backward %g per micro-batch, optimizer 0, links free\n", UNIT_FWD,
           UNIT_BWD);
    printf("#\n#%6s %7s %7s %9s %8s %8s  %s\n", "stage", "ops", "warmup", "peak_act", "busy", "bubble",
           "check");
    printf("#%6s %7s %7s %9s %8s %8s\n", "(id)", "(n)", "(mb)", "(mb)", "(units)", "(%)");
    for (int s = 0; s < P; s++) {
        char warm[16] = "-", busy[16] = "-", bub[16] = "-", pk[16];
        if (!ops_path)
            snprintf(warm, sizeof warm, "%d", sched_warmup(schedule, P, M, K, s, NULL, 0));
        if (valid) {
            snprintf(busy, sizeof busy, "%.0f", res.busy[s]);
            snprintf(bub, sizeof bub, "%.2f", 100 * res.bubble[s]);
        }
        snprintf(pk, sizeof pk, "%d", sched_ops_peak_inflight(plan.ops[s], plan.n_ops[s]));
        const char *verdict = stage_err[(size_t)s * 256] ? stage_err + (size_t)s * 256 : "ok";
        printf(" %6d %7zu %7s %9s %8s %8s  %s\n", s, plan.n_ops[s], warm, pk, busy, bub, verdict);
    }
    free(stage_err);
    print_op_order(&plan);
    if (valid && timeline && print_timeline(&res))
        goto out;
    printf("#\n");
    if (valid)
        printf("# iteration %.0f units, bubble %.2f %% (GPipe/1F1B closed form (P-1)/(M+P-1) = %.2f %%)\n",
               res.time, 100 * res.bubble_mean, 100.0 * (P - 1) / (M + P - 1));
    else
        printf("# %s\n", stages_ok ? err : "see the check column");
    if (check || !valid)
        printf("# check: %s\n", valid ? "OK" : "FAILED");
    else
        printf("# OK\n");
    rc = valid ? CLI_OK : CLI_FAIL;
out:
    free(peak);
    sim_result_destroy(&res);
    sched_plan_destroy(&plan);
    return rc;
}
