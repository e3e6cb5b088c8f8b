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
#include "bench/vocab.h"
#include "pipeline/runcfg.h"
#include "common/limits.h"
#include "schedules/sched.h"
#include "schedules/sim.h"

#define CMD "schedule"
/* The timeline's costs: one column per unit. B = 2F as in the usual diagrams. */
#define UNIT_FWD 1.0
#define UNIT_BWD 2.0

enum { SCHEDULE_OPT_OPS = 0x3200, SCHEDULE_OPT_CHECK, SCHEDULE_OPT_NO_TIMELINE };

static const model_option_t own_group[] = {
    {"ops", 0, SCHEDULE_OPT_OPS, "FILE",
     "check op lists from FILE instead of building a schedule: one line per stage, tokens as printed "
     "('stage N:' lines of this command's output are picked out); '-' = stdin", "none"},
    {"check", 0, SCHEDULE_OPT_CHECK, NULL, "validate every stage and link; exit 0 if valid, 1 if not", NULL},
    {"no-timeline", 0, SCHEDULE_OPT_NO_TIMELINE, NULL, "skip the timeline", NULL},
    {NULL, 0, 0, NULL, NULL, NULL},
};

static const int sched_only[] = {RUNCFG_OPT_SCHEDULE, RUNCFG_OPT_SLACK, RUNCFG_OPT_CHUNKS, 0};
static const int stages_only[] = {MODEL_OPT_STAGES, 0};

static const cli_section_t sections[] = {
    {"schedule", runcfg_pipeline_group, sched_only, NULL, 0},
    {NULL, model_options_group, stages_only, NULL, 0},
    {NULL, vocab_analysis_group, NULL, NULL, 0},
    {"checking", own_group, NULL, NULL, 0},
    {NULL, NULL, NULL, NULL, 0},
};

static const cli_override_t overrides[] = {
    {RUNCFG_OPT_SLACK, "K|auto", "extra micro-batches in flight per hop of 1f1b-slack, or auto: the smallest "
     "K with the least idle time", "1"},
    {MODEL_OPT_STAGES, NULL, "pipeline stages", "4"},
    {0, NULL, NULL, NULL},
};

static const cli_deprecated_t deprecated[] = {
    {'p', NULL, MODEL_OPT_STAGES},
    {'c', NULL, SCHEDULE_OPT_CHECK},
    {0, NULL, 0},
};

static const cli_spec_t spec = {
    CMD,
    "usage: pipenem schedule [options]\n"
    "print each stage's op order and a textbook timeline of a pipeline schedule.\n\n",
    sections, overrides, deprecated,
    "\nTimeline: forward 1 unit, backward 2 units (B and W 1 each where split) per micro-batch\n"
    "and chunk, optimizer 0, free links; one column per unit, Fi / Bi / Wi = forward /\n"
    "backward (input part where split) / weight part of micro-batch i, lower case on a\n"
    "stage's later chunks, '.' = idle.\n",
};

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

/* Keeps only the "stage N: ..." lines (and a "placement" line) when there are any, so
 * the output of `pipenem schedule` can be fed back to --ops as it is. */
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
        if (!(sscanf(l, "stage %*d%n", &n) >= 0 && n > 0 && l[n] == ':') && strncmp(l, "placement ", 10))
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
    printf("#\n# op order (F/B forward/backward, Bi/W its input/weight parts, Ra/Sa receive/send activation, "
           "Rg/Sg receive/send gradient, OPT optimizer step%s)\n", p->chunks > p->stages ? ", @C chunk C" : "");
    if (p->chunks > p->stages)
        printf("placement %s %d\n", sched_place_name(p->place), p->chunks);
    for (int s = 0; s < p->stages; s++) {
        printf("stage %d:", s);
        for (size_t j = 0; j < p->n_ops[s]; j++) {
            char tok[32];
            sched_plan_op_format(p, s, j, tok, sizeof tok);
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
    printf("#\n# timeline (Fi/Bi/Wi = forward/backward/weight part of micro-batch i, lower case on a stage's later "
           "chunks, one cell per time unit, '.' = idle)\n");
    for (int s = 0; s < r->plan.stages; s++) {
        size_t len = (size_t)units * (size_t)(w + 1);
        memset(row, ' ', len);
        for (long u = 0; u < units; u++)
            memset(row + u * (w + 1), '.', (size_t)w);
        for (size_t j = 0; j < r->plan.n_ops[s]; j++) {
            const sched_op_t *op = &r->plan.ops[s][j];
            if (op->kind != SCHED_FWD && op->kind != SCHED_BWD && op->kind != SCHED_BWD_INPUT &&
                op->kind != SCHED_BWD_WEIGHT)
                continue;
            char letter = op->kind == SCHED_FWD ? 'F' : op->kind == SCHED_BWD_WEIGHT ? 'W' : 'B';
            if (op->chunk != sched_rank_chunk(r->plan.place, r->plan.stages, r->plan.chunks, s, 0))
                letter = (char)(letter - 'A' + 'a'); /* a later chunk of this stage */
            for (long u = lround(r->span[s][j].start); u < lround(r->span[s][j].end) && u < units; u++) {
                char cell[32];
                snprintf(cell, sizeof cell, "%c%-*d", letter, w - 1, op->mb);
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

typedef struct {
    const char *schedule, *ops_path, *slack_arg;
    int P, M, K, V, check, timeline, have_p, have_m;
} sched_args_t;

/* 0, -1 after --help, or CLI_USAGE after a message. */
static int parse(int argc, char **argv, sched_args_t *a)
{
    cli_parser_t p;
    if (cli_parser_init(&p, &spec))
        return cli_usage_error(CMD, "internal: the option table is inconsistent");
    int c;
    while ((c = cli_next(&p, argc, argv)) != -1) {
        switch (c) {
        case -2: return CLI_USAGE;
        case CLI_OPT_HELP: cli_help(&spec, stdout); return -1;
        case RUNCFG_OPT_SCHEDULE: a->schedule = optarg; break;
        case MODEL_OPT_STAGES:
            if (cli_parse_int(CMD, "--stages", optarg, 1, PN_MAX_STAGES, &a->P))
                return CLI_USAGE;
            a->have_p = 1;
            break;
        case VOCAB_OPT_MICRO_BATCHES:
            if (cli_parse_int(CMD, "--micro-batches", optarg, 1, PN_MAX_MICRO_BATCHES, &a->M))
                return CLI_USAGE;
            a->have_m = 1;
            break;
        case RUNCFG_OPT_SLACK: a->slack_arg = optarg; break;
        case RUNCFG_OPT_CHUNKS:
            if (cli_parse_int(CMD, "--chunks", optarg, 1, 64, &a->V))
                return CLI_USAGE;
            break;
        case SCHEDULE_OPT_OPS: a->ops_path = optarg; break;
        case SCHEDULE_OPT_CHECK: a->check = 1; break;
        case SCHEDULE_OPT_NO_TIMELINE: a->timeline = 0; break;
        default: return cli_usage_error(CMD, "option '%s' is not handled", cli_opt_name(&spec, c));
        }
    }
    if (optind < argc)
        return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (a->ops_path && (a->schedule || a->slack_arg || a->have_p || a->V))
        return cli_usage_error(CMD, "--ops takes the stages and order from the file; drop %s",
                               a->schedule ? "--schedule" : a->slack_arg ? "--slack" : a->V ? "--chunks" : "--stages");
    if (!a->schedule)
        a->schedule = "1f1b";
    if (!a->ops_path && sched_uses_slack(a->schedule) < 0)
        return cli_usage_error(CMD, "unknown schedule '%s' (known: %s)", a->schedule, sched_names());
    if (a->slack_arg && sched_uses_slack(a->schedule) == 0)
        return cli_usage_error(CMD, "--slack applies to 1f1b-slack, not %s", a->schedule);
    if (a->slack_arg && strcmp(a->slack_arg, "auto") &&
        cli_parse_int(CMD, "--slack", a->slack_arg, 0, PN_MAX_SLACK, &a->K))
        return CLI_USAGE;
    char err[256];
    sched_spec_t sp = {a->schedule, a->P, a->M, a->K, a->V};
    int v;
    if (!a->ops_path && sched_spec_check(&sp, &v, err, sizeof err))
        return cli_usage_error(CMD, "%s", err);
    return 0;
}

/* The plan: read from --ops, or built (slack auto: unit costs on free links). */
static int load_plan(sched_args_t *a, sched_plan_t *plan, char *label, size_t labellen)
{
    char err[512] = "";
    if (a->ops_path) {
        char *text = read_all(a->ops_path, err, sizeof err);
        if (!text) {
            fprintf(stderr, "pipenem %s: %s\n", CMD, err);
            return CLI_FAIL;
        }
        keep_op_lines(text);
        int prc = sched_plan_parse(text, a->have_m ? a->M : 0, plan, err, sizeof err);
        free(text);
        if (prc) {
            fprintf(stderr, "pipenem %s: %s: %s\n", CMD, a->ops_path, err);
            return CLI_FAIL;
        }
        snprintf(label, labellen, "op lists from %s", a->ops_path);
        return 0;
    }
    int auto_k = a->slack_arg && !strcmp(a->slack_arg, "auto");
    if (auto_k) {
        sim_cost_t *unit = calloc((size_t)a->P, sizeof *unit);
        if (!unit)
            return CLI_FAIL;
        for (int s = 0; s < a->P; s++)
            unit[s] = (sim_cost_t){UNIT_FWD, UNIT_BWD, 0};
        sim_config_t cfg = {a->schedule, a->P, a->M, a->K, unit, NULL, NULL, 0, 0, SIM_SEND_PIPELINED};
        int rc = sim_slack_auto(&cfg, &a->K, NULL, err, sizeof err);
        free(unit);
        if (rc) {
            fprintf(stderr, "pipenem %s: %s\n", CMD, err);
            return CLI_FAIL;
        }
    }
    sched_spec_t sp = {a->schedule, a->P, a->M, a->K, a->V};
    if (sched_plan_build_spec(&sp, plan, err, sizeof err)) {
        fprintf(stderr, "pipenem %s: %s\n", CMD, err);
        return CLI_FAIL;
    }
    if (sched_uses_slack(a->schedule) > 0)
        snprintf(label, labellen, "%s, slack %d%s", a->schedule, a->K, auto_k ? " (auto)" : "");
    else
        snprintf(label, labellen, "%s", a->schedule);
    return 0;
}

/* The plan on unit costs and free links (the timeline's times). */
static int simulate_units(const sched_plan_t *plan, sim_result_t *res, char *err, size_t errlen)
{
    int P = plan->stages;
    double **dur = calloc((size_t)P, sizeof *dur), **bytes = calloc((size_t)P, sizeof *bytes);
    int ok = dur && bytes;
    for (int s = 0; ok && s < P; s++) {
        dur[s] = calloc(plan->n_ops[s] + 1, sizeof **dur);
        bytes[s] = calloc(plan->n_ops[s] + 1, sizeof **bytes);
        ok = dur[s] && bytes[s];
        for (size_t j = 0; ok && j < plan->n_ops[s]; j++)
            switch (plan->ops[s][j].kind) {
            case SCHED_FWD: dur[s][j] = UNIT_FWD; break;
            case SCHED_BWD: dur[s][j] = UNIT_BWD; break;
            case SCHED_BWD_INPUT:
            case SCHED_BWD_WEIGHT: dur[s][j] = UNIT_BWD / 2; break;
            default: break;
            }
    }
    sim_graph_t g = {plan, (const double *const *)dur, (const double *const *)bytes, NULL, NULL, SIM_SEND_PIPELINED};
    int rc = ok ? sim_graph_run(&g, res, err, errlen) : -ENOMEM;
    for (int s = 0; dur && bytes && s < P; s++) {
        free(dur[s]);
        free(bytes[s]);
    }
    free(dur);
    free(bytes);
    return rc;
}

static void print_stages(const sched_args_t *a, const sched_plan_t *plan, const sim_result_t *res, int valid,
                         const char *stage_err)
{
    int P = plan->stages, M = plan->micro_batches;
    printf("#\n#%6s %7s %7s %9s %8s %8s  %s\n", "stage", "ops", "warmup", "peak_act", "busy", "bubble",
           "check");
    printf("#%6s %7s %7s %9s %8s %8s\n", "(id)", "(n)", "(mb)", "(mb)", "(units)", "(%)");
    for (int s = 0; s < P; s++) {
        char warm[16] = "-", busy[16] = "-", bub[16] = "-", pk[16];
        int w = a->ops_path ? -1 : sched_warmup(a->schedule, P, M, a->K, s, NULL, 0);
        if (w >= 0) /* interleaved and zero-bubble schedules have no single warm-up count */
            snprintf(warm, sizeof warm, "%d", w);
        if (valid) {
            snprintf(busy, sizeof busy, "%.0f", res->busy[s]);
            snprintf(bub, sizeof bub, "%.2f", 100 * res->bubble[s]);
        }
        snprintf(pk, sizeof pk, "%d", sched_ops_peak_inflight(plan->ops[s], plan->n_ops[s]));
        const char *verdict = stage_err[(size_t)s * 256] ? stage_err + (size_t)s * 256 : "ok";
        printf(" %6d %7zu %7s %9s %8s %8s  %s\n", s, plan->n_ops[s], warm, pk, busy, bub, verdict);
    }
}

int cmd_schedule(int argc, char **argv)
{
    sched_args_t a = {.P = 4, .M = 8, .K = 1, .timeline = 1};
    int rc = parse(argc, argv, &a);
    if (rc)
        return rc < 0 ? CLI_OK : rc;
    char err[512] = "", label[64];
    sched_plan_t plan = {0};
    sim_result_t res = {0};
    char *stage_err = NULL;
    int *peak = NULL, valid = 0, stages_ok = 1;
    if ((rc = load_plan(&a, &plan, label, sizeof label)))
        return rc;
    rc = CLI_FAIL;
    int P = plan.stages, M = plan.micro_batches;
    peak = calloc((size_t)P, sizeof *peak);
    stage_err = calloc((size_t)P, 256);
    if (!peak || !stage_err)
        goto out;
    /* Each stage alone first, so every broken stage gets its own verdict (one chunk per
     * stage; with several, the whole plan's check names the stage). */
    for (int s = 0; s < P && plan.chunks == P; s++)
        if (sched_ops_validate(P, M, s, plan.ops[s], plan.n_ops[s], stage_err + (size_t)s * 256, 256))
            stages_ok = 0;
    valid = stages_ok && !sched_plan_validate(&plan, peak, err, sizeof err);
    if (valid && simulate_units(&plan, &res, err, sizeof err)) {
        fprintf(stderr, "pipenem %s: simulating: %s\n", CMD, err[0] ? err : "out of memory");
        goto out;
    }
    printf("# pipenem schedule: %s, %d stages, %d micro-batches\n", label, P, M);
    printf("# unit costs: forward %g, backward %g per micro-batch, optimizer 0, links free\n", UNIT_FWD,
           UNIT_BWD);
    print_stages(&a, &plan, &res, valid, stage_err);
    print_op_order(&plan);
    if (valid && a.timeline && print_timeline(&res))
        goto out;
    printf("#\n");
    if (valid)
        printf("# iteration %.0f units, bubble %.2f %% (GPipe/1F1B closed form (P-1)/(M+P-1) = %.2f %%)\n",
               res.time, 100 * res.bubble_mean, 100.0 * (P - 1) / (M + P - 1));
    else
        printf("# %s\n", stages_ok ? err : "see the check column");
    if (a.check || !valid)
        printf("# check: %s\n", valid ? "OK" : "FAILED");
    else
        printf("# OK\n");
    rc = valid ? CLI_OK : CLI_FAIL;
out:
    free(stage_err);
    free(peak);
    sim_result_destroy(&res);
    sched_plan_destroy(&plan);
    return rc;
}
