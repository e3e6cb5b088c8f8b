/* pipenem sweep: measures schedules x network profiles x micro-batch sizes, one cell at
 * a time (topology, profile, run, collect, restore), and keeps the results directory
 * complete after every cell: CSVs, table.md, trace.json, plots. Ctrl-C stops after
 * restoring the network; --resume DIR measures only the missing cells. */
#include "bench/cell.h"
#include "bench/cli.h"
#include "bench/report.h"
#include "bench/results.h"
#include "bench/sweep.h"
#include "bench/table.h"
#include "pipeline/privs.h"
#include "pipeline/runcfg.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static const char usage[] =
    "usage: pipenem sweep [options]\n"
    "       pipenem sweep --resume DIR\n"
    "Measures every cell of schedules x network profiles x micro-batch sizes and writes a results\n"
    "directory: runs.csv, iterations.csv, ops.csv, table.md, trace.json, plots/, command.txt,\n"
    "environment.txt. Default: the issue 5 default sweep (24 cells).\n"
    "grid:\n"
    "  -s, --schedules LIST          gpipe,1f1b (known: gpipe, 1f1b, 1f1b-slack)\n"
    "  -b, --micro-batch-sizes LIST  1,2,4 (each must divide the batch size)\n"
    "  -p, --profiles LIST           default,1ms/5Gbps,5ms/2Gbps,10ms/1Gbps; key=value profiles\n"
    "                                go between ';' (default;delay=5ms,rate=1gbit)\n"
    "configuration (every cell):\n"
    "  -m, --model NAME              gpt3-small\n"
    "  -P, --stages N                3 (one host per stage)\n"
    "  -B, --batch-size N            64 (sequences per iteration)\n"
    "  -T, --seq-len N               2048\n"
    "  -n, --iters N                 10 measured iterations per run,\n"
    "  -w, --warmup N                after 1 warm-up iteration (not counted)\n"
    "  -r, --repeat N                1 run per cell (iterations of all runs are pooled)\n"
    "  -c, --compute SPEC            emulate:v100 (cpu, emulate:v100|a100|h100, emulate:fwd=25ms,bwd=75ms)\n"
    "  -e, --emulator NAME           auto (network emulator backend)\n"
    "  -K, --slack K                 1 (extra micro-batches in flight per hop of 1f1b-slack)\n"
    "      --straggler RANK:FACTOR   stage RANK computes FACTOR times slower (1:1.5)\n"
    "      --timeout S               seconds a single wait of a stage may take before its cell fails\n"
    "      --user NAME               started as root: stage processes run as NAME (e.g. nobody)\n"
    "output:\n"
    "  -o, --out DIR                 results/sweep-YYYYmmdd-HHMMSS (must not hold a sweep yet)\n"
    "      --resume DIR              finish the sweep in DIR (its own arguments, missing cells only)\n"
    "  -i, --iteration N             iteration shown in trace.json and timelines (default: last)\n"
    "  -t, --timeline LIST           cells to draw timelines of: all, none, 0,3 (default: per schedule,\n"
    "                                smallest micro-batch size on the first and last profile)\n"
    "      --no-plots                no gnuplot plots\n"
    "  -h, --help                    this text\n";

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

typedef struct {
    sweep_spec_t spec;
    char out[4096];
    int iteration, plots;
    char timeline[256];
    int have_timeline;
} opts_t;

static int copy_opt(const char *cmd, const char *opt, const char *text, char *dst, size_t len)
{
    if (!*text)
        return cli_usage_error(cmd, "%s: empty value", opt);
    if (strlen(text) >= len)
        return cli_usage_error(cmd, "%s: '%s' is longer than %zu characters", opt, text, len - 1);
    strcpy(dst, text);
    return 0;
}

/* Parses the sweep's own options (argv[0] is the command word). */
static int parse(int argc, char **argv, opts_t *o, const char **resume)
{
    static const struct option lopts[] = {
        {"schedules", required_argument, NULL, 's'}, {"micro-batch-sizes", required_argument, NULL, 'b'},
        {"profiles", required_argument, NULL, 'p'},  {"model", required_argument, NULL, 'm'},
        {"stages", required_argument, NULL, 'P'},    {"batch-size", required_argument, NULL, 'B'},
        {"seq-len", required_argument, NULL, 'T'},   {"iters", required_argument, NULL, 'n'},
        {"warmup", required_argument, NULL, 'w'},    {"repeat", required_argument, NULL, 'r'},
        {"compute", required_argument, NULL, 'c'},   {"emulator", required_argument, NULL, 'e'},
        {"slack", required_argument, NULL, 'K'},     {"straggler", required_argument, NULL, 'S'},
        {"out", required_argument, NULL, 'o'},       {"resume", required_argument, NULL, 'R'},
        {"iteration", required_argument, NULL, 'i'}, {"timeline", required_argument, NULL, 't'},
        {"no-plots", no_argument, NULL, 'N'},        {"help", no_argument, NULL, 'h'},
        {"timeout", required_argument, NULL, 'O'},   {"user", required_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "sweep";
    char err[1024] = "";
    int c, rc = 0, n_opts = 0;
    optind = 1;
    while (!rc && (c = cli_getopt(cmd, argc, argv, "s:b:p:m:P:B:T:n:w:r:c:e:K:o:i:t:h", lopts)) != -1) {
        n_opts += c != 'R';
        switch (c) {
        case 's':
            if (sweep_schedules_parse(optarg, &o->spec, err, sizeof err))
                rc = cli_usage_error(cmd, "%s", err);
            break;
        case 'b':
            if (sweep_mbs_parse(optarg, &o->spec, err, sizeof err))
                rc = cli_usage_error(cmd, "%s", err);
            break;
        case 'p':
            if (sweep_profiles_parse(optarg, &o->spec, err, sizeof err))
                rc = cli_usage_error(cmd, "%s", err);
            break;
        case 'm':
            rc = copy_opt(cmd, "--model", optarg, o->spec.model, sizeof o->spec.model);
            break;
        case 'P':
            rc = cli_parse_int(cmd, "--stages", optarg, 1, INT_MAX, &o->spec.stages);
            break;
        case 'B':
            rc = cli_parse_int(cmd, "--batch-size", optarg, 1, INT_MAX, &o->spec.batch_size);
            break;
        case 'T':
            rc = cli_parse_int(cmd, "--seq-len", optarg, 1, INT_MAX, &o->spec.seq_len);
            break;
        case 'n':
            rc = cli_parse_int(cmd, "--iters", optarg, 1, INT_MAX, &o->spec.iters);
            break;
        case 'w':
            rc = cli_parse_int(cmd, "--warmup", optarg, 0, INT_MAX, &o->spec.warmup);
            break;
        case 'r':
            rc = cli_parse_int(cmd, "--repeat", optarg, 1, INT_MAX, &o->spec.repeats);
            break;
        case 'c':
            rc = copy_opt(cmd, "--compute", optarg, o->spec.compute, sizeof o->spec.compute);
            break;
        case 'e':
            rc = copy_opt(cmd, "--emulator", optarg, o->spec.emulator, sizeof o->spec.emulator);
            break;
        case 'K':
            rc = cli_parse_int(cmd, "--slack", optarg, 0, INT_MAX, &o->spec.slack);
            break;
        case 'S':
            if (sweep_straggler_parse(optarg, &o->spec.straggler_rank, &o->spec.straggler_factor, err, sizeof err))
                rc = cli_usage_error(cmd, "%s", err);
            break;
        case 'O': {
            runcfg_t scratch; /* checked by the parser every stage uses */
            runcfg_defaults(&scratch);
            if (runcfg_option(&scratch, RUNCFG_OPT_TIMEOUT, optarg, err, sizeof err) < 0)
                rc = cli_usage_error(cmd, "%s", err);
            else
                rc = copy_opt(cmd, "--timeout", optarg, o->spec.timeout, sizeof o->spec.timeout);
            break;
        }
        case 'U':
            if (!(rc = copy_opt(cmd, "--user", optarg, o->spec.user, sizeof o->spec.user)) &&
                privs_check_user(optarg, err, sizeof err))
                rc = cli_usage_error(cmd, "%s", err);
            break;
        case 'o':
            rc = copy_opt(cmd, "--out", optarg, o->out, sizeof o->out);
            break;
        case 'R':
            *resume = optarg;
            break;
        case 'i':
            rc = cli_parse_int(cmd, "--iteration", optarg, 0, INT_MAX, &o->iteration);
            break;
        case 't':
            rc = copy_opt(cmd, "--timeline", optarg, o->timeline, sizeof o->timeline);
            o->have_timeline = 1;
            break;
        case 'N':
            o->plots = 0;
            break;
        case 'h':
            fputs(usage, stdout);
            return -1;
        default:
            return CLI_USAGE;
        }
    }
    if (rc)
        return rc;
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (*resume && n_opts)
        return cli_usage_error(cmd, "--resume DIR takes the sweep's arguments from DIR/sweep.args; "
                                    "give no other option with it");
    if (sweep_spec_check(&o->spec, err, sizeof err) || cell_check(&o->spec, err, sizeof err))
        return cli_usage_error(cmd, "%s", err);
    return 0;
}

static void fmt_duration(double s, char *buf, size_t len)
{
    if (isnan(s))
        snprintf(buf, len, "?");
    else if (s < 60)
        snprintf(buf, len, "%.0fs", s);
    else if (s < 3600)
        snprintf(buf, len, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(buf, len, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
}

static void progress(void *ctx, const results_cell_t *c, int position, int todo, double eta, int status,
                     const char *why)
{
    (void)ctx;
    char eta_s[32], row[512];
    fmt_duration(eta, eta_s, sizeof eta_s);
    if (status) {
        printf("[%*d/%d] cell %d (%s, micro batch %d, %s) %s: %s\n", todo >= 10 ? 2 : 1, position, todo, c->cell,
               c->schedule, c->micro_batch_size, c->label, status == -EINTR ? "INTERRUPTED" : "FAILED", why);
    } else {
        report_row_format(c, row, sizeof row);
        printf("[%*d/%d]%s  ETA %s\n", todo >= 10 ? 2 : 1, position, todo, row, eta_s);
    }
    fflush(stdout);
}

int cmd_sweep(int argc, char **argv)
{
    opts_t o = {.iteration = -1, .plots = 1};
    char err[1024] = "";
    if (sweep_spec_default(&o.spec, err, sizeof err)) {
        fprintf(stderr, "pipenem sweep: %s\n", err);
        return CLI_FAIL;
    }
    const char *resume = NULL;
    int rc = parse(argc, argv, &o, &resume);
    if (rc)
        return rc < 0 ? CLI_OK : rc;
    char **saved = NULL;
    int n_saved = 0;
    if (resume) {
        if (sweep_args_read(resume, &n_saved, &saved, err, sizeof err)) {
            fprintf(stderr, "pipenem sweep: --resume %s: %s\n", resume, err);
            return CLI_FAIL;
        }
        /* The saved words parse exactly as they did the first time. */
        char **av = calloc((size_t)n_saved + 2, sizeof *av);
        if (!av) {
            free(saved);
            return CLI_FAIL;
        }
        av[0] = argv[0];
        memcpy(av + 1, saved, (size_t)n_saved * sizeof *av);
        const char *again = NULL;
        rc = sweep_spec_default(&o.spec, err, sizeof err);
        if (!rc)
            rc = parse(n_saved + 1, av, &o, &again);
        free(av);
        if (rc || again) {
            fprintf(stderr, "pipenem sweep: --resume %s: its sweep.args no longer parse\n", resume);
            free(saved);
            return CLI_FAIL;
        }
        snprintf(o.out, sizeof o.out, "%s", resume);
    }
    if (!o.out[0]) {
        time_t t = time(NULL);
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(o.out, sizeof o.out, "results/sweep-%Y%m%d-%H%M%S", &tm);
        mkdir("results", 0755);
    }
    results_t r;
    results_init(&r);
    int *tl = NULL, tl_all = 0;
    size_t tl_n = 0;
    if (o.have_timeline && report_timeline_parse(o.timeline, &tl, &tl_n, &tl_all, err, sizeof err)) {
        free(saved);
        return cli_usage_error("sweep", "%s", err);
    }
    if (tl_all || !o.have_timeline) {
        /* Chosen on the whole grid, not on the cells finished so far, so the plots of an
         * unfinished sweep are the ones it will end with, and `report` picks the same. */
        results_t grid;
        results_init(&grid);
        int n = sweep_cells(&o.spec), ok = 1;
        for (int i = 0; i < n && ok; i++) {
            results_cell_t c;
            sweep_cell_config(&o.spec, i, &c);
            ok = results_cell_add(&grid, &c) == 0;
        }
        free(tl);
        tl = malloc((size_t)n * sizeof *tl);
        tl_n = 0;
        if (tl && ok && tl_all)
            for (int i = 0; i < n; i++)
                tl[tl_n++] = i;
        else if (tl && ok)
            report_timeline_default(&grid, tl, &tl_n);
        results_destroy(&grid);
        if (!tl || !ok) {
            free(saved);
            fprintf(stderr, "pipenem sweep: out of memory\n");
            return CLI_FAIL;
        }
    }
    int status = CLI_FAIL;
    if (resume) {
        if (results_read(o.out, &r, err, sizeof err)) {
            fprintf(stderr, "pipenem sweep: --resume %s: %s\n", o.out, err);
            goto out;
        }
    } else {
        char runs[4200];
        snprintf(runs, sizeof runs, "%s/runs.csv", o.out);
        if (access(runs, F_OK) == 0) {
            status = cli_usage_error("sweep", "--out %s already holds a sweep (use --resume %s, or another --out)",
                                     o.out, o.out);
            goto out;
        }
        if (mkdir(o.out, 0755) && errno != EEXIST) {
            fprintf(stderr, "pipenem sweep: --out %s: cannot create: %s\n", o.out, strerror(errno));
            goto out;
        }
        if (sweep_args_write(o.out, argc - 1, argv + 1, err, sizeof err) ||
            results_command_write(o.out, argc, argv, err, sizeof err)) {
            fprintf(stderr, "pipenem sweep: %s\n", err);
            goto out;
        }
    }
    char emu[96];
    snprintf(emu, sizeof emu, "%s asked; the backend each cell used is runs.csv's emulator column", o.spec.emulator);
    if (results_env_write(o.out, o.spec.compute, emu, err, sizeof err)) {
        fprintf(stderr, "pipenem sweep: %s\n", err);
        goto out;
    }

    const sweep_spec_t *s = &o.spec;
    printf("# pipenem sweep: %d schedule(s) x %d profile(s) x %d micro-batch size(s) = %d cells%s\n", s->n_sched,
           s->n_prof, s->n_mbs, sweep_cells(s), resume ? " (resumed)" : "");
    printf("# model %s, %d stages, batch %d, sequence %d, %d measured iterations after %d warm-up, %d repeat(s), "
           "compute %s, "
           "emulator %s", s->model, s->stages, s->batch_size, s->seq_len, s->iters, s->warmup, s->repeats,
           s->compute, s->emulator);
    if (s->straggler_rank >= 0)
        printf(", straggler: stage %d x%g", s->straggler_rank, s->straggler_factor);
    printf("\n# results: %s\n", o.out);
    if (r.n_cells)
        printf("# %zu cell(s) already measured, kept\n", r.n_cells);
    char names[256], units[256];
    report_row_header(names, units, sizeof names);
    printf("#      %s\n#      %s\n", names + 1, units + 1);
    fflush(stdout);

    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    report_opts_t ro = {.iteration = o.iteration, .timeline = tl, .n_timeline = tl_n, .plots = o.plots};
    sweep_loop_t loop = {.dir = o.out, .measure = cell_measure, .progress = progress, .report = &ro,
                         .stop = &stop_flag};
    sweep_summary_t sum = {0};
    rc = sweep_run(s, &loop, &r, &sum, err, sizeof err);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (rc) {
        fprintf(stderr, "pipenem sweep: %s\n", err);
        printf("# FAILED: %s\n", err);
        goto out;
    }
    char *md = NULL;
    if (!sum.interrupted && table_markdown(&r, &md) == 0) {
        printf("#\n# %s/table.md:\n\n%s\n", o.out, md);
        free(md);
    }
    printf("# %d measured, %d failed, %d kept from before; files in %s\n", sum.measured, sum.failed, sum.skipped,
           o.out);
    if (sum.interrupted)
        printf("# INTERRUPTED: network restored, finished cells kept; continue with: pipenem sweep --resume %s\n",
               o.out);
    else if (sum.failed)
        printf("# FAILED: %d cell(s) failed; pipenem sweep --resume %s retries them\n", sum.failed, o.out);
    else
        printf("# OK\n");
    status = sum.interrupted || sum.failed ? CLI_FAIL : CLI_OK;
out:
    free(tl);
    free(saved);
    results_destroy(&r);
    return status;
}
