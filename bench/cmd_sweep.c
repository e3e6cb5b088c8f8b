/* pipenem sweep: measures schedules x network profiles x micro-batch sizes, one cell at
 * a time (topology, profile, run, collect, restore), and keeps the results directory
 * complete after every cell: CSVs, table.md, trace.json, plots. Ctrl-C stops after
 * restoring the network; --resume DIR measures only the missing cells. */
#include "bench/cell.h"
#include "bench/cli.h"
#include "bench/report.h"
#include "bench/results.h"
#include "bench/sweep.h"
#include "bench/sweep_dist.h"
#include "bench/table.h"
#include "bench/vocab.h"
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

static const int schedule_only[] = {RUNCFG_OPT_SCHEDULE, 0};
static const int model_only[] = {MODEL_OPT_MODEL, MODEL_OPT_STAGES, MODEL_OPT_BATCH_SIZE, MODEL_OPT_SEQ_LEN,
                                 MODEL_OPT_COMPUTE, 0};
static const int pipeline_only[] = {RUNCFG_OPT_ITERS, RUNCFG_OPT_WARMUP, RUNCFG_OPT_SLACK, RUNCFG_OPT_CHUNKS,
                                    RUNCFG_OPT_TIMEOUT, RUNCFG_OPT_DP, RUNCFG_OPT_DP_OVERLAP,
                                    RUNCFG_OPT_DP_BUCKET, 0};
static const int network_only[] = {RUNCFG_OPT_EMULATOR, RUNCFG_OPT_TRANSPORT, RUNCFG_OPT_NET_DP, 0};
static const int dist_only[] = {RUNCFG_OPT_DIST_URL, 0};

/* The replica axis is the sweep's own: run and stage take one --dp. */
enum { SWEEP_OPT_DP_SIZES = 0x3400 };
static const model_option_t dp_grid_group[] = {
    {"dp-sizes", 0, SWEEP_OPT_DP_SIZES, "LIST",
     "data-parallel replica counts, a grid axis: each cell runs D x --stages processes (rank = d*P + s) "
     "and table.md gains a Megatron-style DP x PP table; --dp D is --dp-sizes D", "1"},
    {NULL, 0, 0, NULL, NULL, NULL},
};

static const cli_section_t sections[] = {
    {"grid", runcfg_pipeline_group, schedule_only, NULL, 0},
    {NULL, vocab_grid_group, NULL, NULL, 0},
    {NULL, dp_grid_group, NULL, NULL, 0},
    {"configuration (every cell)", model_options_group, model_only, NULL, 0},
    {NULL, runcfg_pipeline_group, pipeline_only, NULL, 0},
    {NULL, runcfg_network_group, network_only, NULL, 0},
    {NULL, vocab_local_group, NULL, NULL, 0},
    {"multi-host (one rank per stage of each replica under srun or mpirun, every rank with the same options)",
     runcfg_multihost_group, dist_only, NULL, 0},
    {"output", vocab_output_group, NULL, NULL, 0},
    {NULL, NULL, NULL, NULL, 0},
};

static const cli_override_t overrides[] = {
    {RUNCFG_OPT_SCHEDULE, "LIST", "schedules to compare: {schedules}", "gpipe,1f1b"},
    {MODEL_OPT_STAGES, NULL, "pipeline stages, one host each", "3, DT-FM's 3 hosts"},
    {MODEL_OPT_BATCH_SIZE, NULL, NULL, "64, as in DT-FM's table"},
    {MODEL_OPT_SEQ_LEN, NULL, NULL, "2048, as in DT-FM's table"},
    {MODEL_OPT_COMPUTE, NULL, NULL, "emulate:v100, DT-FM's V100s modelled: real gpt3-small compute on a CPU "
                                    "would take hours per cell"},
    {RUNCFG_OPT_TIMEOUT, NULL, "a single wait of a stage longer than this fails its cell", NULL},
    {RUNCFG_OPT_NET_DP, NULL, "profile of the links between the replicas of a stage (--dp) in every cell",
     "the cell's profile"},
    {RUNCFG_OPT_EMULATOR, NULL,
     "how the profiles are applied: {emulators}. netem: kernel qdiscs in one network namespace per "
     "stage (needs root); shim: the transport itself holds back and paces each message (no root); "
     "auto: the most faithful one usable here", NULL},
    {RUNCFG_OPT_DIST_URL, NULL,
     "rank 0's address and control port (each cell's stages meet at PORT + 1); every rank shapes its own\n"
     "traffic to its pipeline neighbours, rank 0 writes the results directory", "none: this machine alone"},
    {0, NULL, NULL, NULL},
};

static const cli_deprecated_t deprecated[] = {
    {0, "schedules", RUNCFG_OPT_SCHEDULE},
    {'m', NULL, MODEL_OPT_MODEL},
    {'B', NULL, MODEL_OPT_BATCH_SIZE},
    {'K', NULL, RUNCFG_OPT_SLACK},
    {0, NULL, 0},
};

static const cli_spec_t spec = {
    "sweep",
    "usage: pipenem sweep [options]\n"
    "       pipenem sweep --resume DIR\n"
    "Measures every cell of schedules x network profiles x micro-batch sizes and writes a results\n"
    "directory: runs.csv, iterations.csv, ops.csv, table.md, trace.json, plots/, command.txt,\n"
    "environment.txt. With no options: the 24 cells of DT-FM's GPT-3 small table (gpipe and 1f1b,\n"
    "micro-batch sizes 1, 2 and 4, four network settings; 3 stages, batch 64, V100s).\n\n",
    sections, overrides, deprecated, NULL,
};

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
    char dist_url[300];                   /* SPMD under a launcher: rank 0's control address */
    const char *dp_given;  /* "--dp" or "--dp-sizes" once one was given */
} opts_t;

/* An option every cell passes on as text, checked by the parser every stage uses. */
static int runcfg_checked_copy(int opt, const char *name, const char *arg, char *dst, size_t cap)
{
    runcfg_t scratch;
    char err[1024];
    runcfg_defaults(&scratch);
    if (runcfg_option(&scratch, opt, arg, err, sizeof err) < 0)
        return cli_usage_error("sweep", "%s", err);
    return cli_copy("sweep", name, arg, dst, cap);
}

/* One option into o (argv parsed by the caller): 0 or CLI_USAGE after a message. */
static int sweep_option(opts_t *o, int c, const char *arg, const char **resume)
{
    const char *cmd = "sweep";
    sweep_spec_t *s = &o->spec;
    char err[1024] = "";
    int rc = 0;
    switch (c) {
    case RUNCFG_OPT_SCHEDULE: rc = sweep_schedules_parse(arg, s, err, sizeof err); break;
    case VOCAB_OPT_MICRO_BATCH_SIZES: rc = sweep_mbs_parse(arg, s, err, sizeof err); break;
    case VOCAB_OPT_PROFILES: rc = sweep_profiles_parse(arg, s, err, sizeof err); break;
    case VOCAB_OPT_STRAGGLER:
        rc = sweep_straggler_parse(arg, &s->straggler_rank, &s->straggler_factor, err, sizeof err);
        break;
    case MODEL_OPT_MODEL: return cli_copy(cmd, "--model", arg, s->model, sizeof s->model);
    case MODEL_OPT_STAGES: return cli_parse_int(cmd, "--stages", arg, 1, INT_MAX, &s->stages);
    case MODEL_OPT_BATCH_SIZE: return cli_parse_int(cmd, "--batch-size", arg, 1, INT_MAX, &s->batch_size);
    case MODEL_OPT_SEQ_LEN: return cli_parse_int(cmd, "--seq-len", arg, 1, INT_MAX, &s->seq_len);
    case RUNCFG_OPT_ITERS: return cli_parse_int(cmd, "--iters", arg, 1, INT_MAX, &s->iters);
    case RUNCFG_OPT_WARMUP: return cli_parse_int(cmd, "--warmup", arg, 0, INT_MAX, &s->warmup);
    case VOCAB_OPT_REPEAT: return cli_parse_int(cmd, "--repeat", arg, 1, INT_MAX, &s->repeats);
    case MODEL_OPT_COMPUTE: return cli_copy(cmd, "--compute", arg, s->compute, sizeof s->compute);
    case RUNCFG_OPT_EMULATOR: return cli_copy(cmd, "--emulator", arg, s->emulator, sizeof s->emulator);
    case RUNCFG_OPT_TRANSPORT: return cli_copy(cmd, "--transport", arg, s->transport, sizeof s->transport);
    case RUNCFG_OPT_SLACK:
        if (!strcmp(arg, "auto")) {
            s->slack = -1;
            return 0;
        }
        return cli_parse_int(cmd, "--slack", arg, 0, INT_MAX, &s->slack);
    case RUNCFG_OPT_CHUNKS: return cli_parse_int(cmd, "--chunks", arg, 1, 64, &s->chunks);
    case RUNCFG_OPT_DP: /* one replica count: the axis of one value */
    case SWEEP_OPT_DP_SIZES:
        if (o->dp_given && strcmp(o->dp_given, c == RUNCFG_OPT_DP ? "--dp" : "--dp-sizes"))
            return cli_usage_error(cmd, "give --dp or --dp-sizes, not both");
        o->dp_given = c == RUNCFG_OPT_DP ? "--dp" : "--dp-sizes";
        if (c == RUNCFG_OPT_DP && strchr(arg, ','))
            return cli_usage_error(cmd, "--dp '%s': one replica count; a list is --dp-sizes", arg);
        rc = sweep_dp_sizes_parse(arg, s, err, sizeof err);
        break;
    case RUNCFG_OPT_DP_OVERLAP: s->dp_overlap = 1; return 0;
    case RUNCFG_OPT_DP_BUCKET: { /* the parser every stage uses; the cells pass the bytes on */
        runcfg_t scratch;
        runcfg_defaults(&scratch);
        if (runcfg_option(&scratch, c, arg, err, sizeof err) < 0)
            return cli_usage_error(cmd, "%s", err);
        s->dp_bucket = scratch.dp_bucket;
        return 0;
    }
    case RUNCFG_OPT_NET_DP: return runcfg_checked_copy(RUNCFG_OPT_NET_DP, "--net-dp", arg, s->net_dp, sizeof s->net_dp);
    case RUNCFG_OPT_TIMEOUT:
        return runcfg_checked_copy(RUNCFG_OPT_TIMEOUT, "--timeout", arg, s->timeout, sizeof s->timeout);
    case VOCAB_OPT_USER:
        if ((rc = cli_copy(cmd, "--user", arg, s->user, sizeof s->user)))
            return rc;
        rc = privs_check_user(arg, err, sizeof err);
        break;
    case VOCAB_OPT_OUT: return cli_copy(cmd, "--out", arg, o->out, sizeof o->out);
    case RUNCFG_OPT_DIST_URL: return cli_copy(cmd, "--dist-url", arg, o->dist_url, sizeof o->dist_url);
    case VOCAB_OPT_RESUME: *resume = arg; return 0;
    case VOCAB_OPT_ITERATION: return cli_parse_int(cmd, "--iteration", arg, 0, INT_MAX, &o->iteration);
    case VOCAB_OPT_TIMELINE:
        o->have_timeline = 1;
        return cli_copy(cmd, "--timeline", arg, o->timeline, sizeof o->timeline);
    case VOCAB_OPT_NO_PLOTS: o->plots = 0; return 0;
    default: return cli_usage_error(cmd, "option '%s' is not handled", cli_opt_name(&spec, c));
    }
    return rc ? cli_usage_error(cmd, "%s", err) : 0;
}

/* Parses the sweep's options (argv[0] is the command word): 0, -1 after --help, or
 * CLI_USAGE after a message. */
static int parse(int argc, char **argv, opts_t *o, const char **resume)
{
    cli_parser_t p;
    if (cli_parser_init(&p, &spec))
        return cli_usage_error("sweep", "internal: the option table is inconsistent");
    int c, rc = 0, n_opts = 0;
    while (!rc && (c = cli_next(&p, argc, argv)) != -1) {
        if (c == -2)
            return CLI_USAGE;
        if (c == CLI_OPT_HELP) {
            cli_help(&spec, stdout);
            return -1;
        }
        n_opts += c != VOCAB_OPT_RESUME && c != RUNCFG_OPT_DIST_URL; /* rank 0's address may change */
        rc = sweep_option(o, c, optarg, resume);
    }
    if (rc)
        return rc;
    char err[1024] = "";
    if (optind < argc)
        return cli_usage_error("sweep", "unexpected argument '%s'", argv[optind]);
    if (*resume && n_opts)
        return cli_usage_error("sweep", "--resume DIR takes the sweep's arguments from DIR/sweep.args; "
                                        "give no other option with it");
    if (sweep_spec_check(&o->spec, err, sizeof err) || cell_check(&o->spec, err, sizeof err))
        return cli_usage_error("sweep", "%s", err);
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

/* --resume DIR: the saved words parse exactly as they did the first time. */
static int load_resume(const char *dir, char *cmd_word, opts_t *o, char ***saved)
{
    char err[1024] = "";
    int n_saved = 0;
    if (sweep_args_read(dir, &n_saved, saved, err, sizeof err)) {
        fprintf(stderr, "pipenem sweep: --resume %s: %s\n", dir, err);
        return CLI_FAIL;
    }
    char **av = calloc((size_t)n_saved + 2, sizeof *av);
    if (!av)
        return CLI_FAIL;
    av[0] = cmd_word;
    memcpy(av + 1, *saved, (size_t)n_saved * sizeof *av);
    const char *again = NULL;
    char url[sizeof o->dist_url]; /* given with --resume: rank 0's new address wins */
    snprintf(url, sizeof url, "%s", o->dist_url);
    int rc = sweep_spec_default(&o->spec, err, sizeof err);
    if (!rc)
        rc = parse(n_saved + 1, av, o, &again);
    if (url[0])
        snprintf(o->dist_url, sizeof o->dist_url, "%s", url);
    free(av);
    if (rc || again) {
        fprintf(stderr, "pipenem sweep: --resume %s: its sweep.args no longer parse\n", dir);
        return CLI_FAIL;
    }
    snprintf(o->out, sizeof o->out, "%s", dir);
    return 0;
}

/* The cells to draw timelines of: --timeline's, or chosen on the whole grid (not on the
 * cells finished so far, so the plots of an unfinished sweep are the ones it will end
 * with, and `report` picks the same). */
static int timeline_cells(const opts_t *o, int **tl, size_t *tl_n)
{
    char err[1024] = "";
    int all = 0;
    *tl = NULL;
    *tl_n = 0;
    if (o->have_timeline && report_timeline_parse(o->timeline, tl, tl_n, &all, err, sizeof err))
        return cli_usage_error("sweep", "%s", err);
    if (o->have_timeline && !all)
        return 0;
    results_t grid;
    results_init(&grid);
    int n = sweep_cells(&o->spec), ok = 1;
    for (int i = 0; i < n && ok; i++) {
        results_cell_t c;
        sweep_cell_config(&o->spec, i, &c);
        ok = results_cell_add(&grid, &c) == 0;
    }
    free(*tl);
    *tl = malloc((size_t)n * sizeof **tl);
    *tl_n = 0;
    if (*tl && ok && all)
        for (int i = 0; i < n; i++)
            (*tl)[(*tl_n)++] = i;
    else if (*tl && ok)
        report_timeline_default(&grid, *tl, tl_n);
    results_destroy(&grid);
    if (!*tl || !ok) {
        fprintf(stderr, "pipenem sweep: out of memory\n");
        return CLI_FAIL;
    }
    return 0;
}

/* The results directory: what --resume finds there, or a new one with the arguments. */
static int open_out(const opts_t *o, int resume, int argc, char **argv, results_t *r)
{
    char err[1024] = "";
    if (resume) {
        if (results_read(o->out, r, err, sizeof err)) {
            fprintf(stderr, "pipenem sweep: --resume %s: %s\n", o->out, err);
            return CLI_FAIL;
        }
    } else {
        char runs[4200];
        snprintf(runs, sizeof runs, "%s/runs.csv", o->out);
        if (access(runs, F_OK) == 0)
            return cli_usage_error("sweep", "--out %s already holds a sweep (use --resume %s, or another --out)",
                                   o->out, o->out);
        if (mkdir(o->out, 0755) && errno != EEXIST) {
            fprintf(stderr, "pipenem sweep: --out %s: cannot create: %s\n", o->out, strerror(errno));
            return CLI_FAIL;
        }
        if (sweep_args_write(o->out, argc - 1, argv + 1, err, sizeof err) ||
            results_command_write(o->out, argc, argv, err, sizeof err)) {
            fprintf(stderr, "pipenem sweep: %s\n", err);
            return CLI_FAIL;
        }
    }
    char emu[96];
    snprintf(emu, sizeof emu, "%s asked; the backend each cell used is runs.csv's emulator column", o->spec.emulator);
    if (results_env_write(o->out, o->spec.compute, emu, err, sizeof err)) {
        fprintf(stderr, "pipenem sweep: %s\n", err);
        return CLI_FAIL;
    }
    return 0;
}

static void print_header(const opts_t *o, int resume, const results_t *r)
{
    const sweep_spec_t *s = &o->spec;
    char dps[64] = "";
    if (s->n_dp > 1 || s->dps[0] > 1)
        snprintf(dps, sizeof dps, " x %d replica count(s)", s->n_dp);
    printf("# pipenem sweep: %d schedule(s) x %d profile(s) x %d micro-batch size(s)%s = %d cells%s\n", s->n_sched,
           s->n_prof, s->n_mbs, dps, sweep_cells(s), resume ? " (resumed)" : "");
    printf("# model %s, %d stages, batch %d, sequence %d, %d measured iterations after %d warm-up, %d repeat(s), "
           "compute %s, "
           "emulator %s", s->model, s->stages, s->batch_size, s->seq_len, s->iters, s->warmup, s->repeats,
           s->compute, s->emulator);
    if (s->straggler_rank >= 0)
        printf(", straggler: stage %d x%g", s->straggler_rank, s->straggler_factor);
    printf("\n# results: %s\n", o->out);
    if (r->n_cells)
        printf("# %zu cell(s) already measured, kept\n", r->n_cells);
    char names[256], units[256];
    report_row_header(names, units, sizeof names);
    printf("#      %s\n#      %s\n", names + 1, units + 1);
    fflush(stdout);
}

/* The loop over the missing cells, Ctrl-C stopping it after the current cell's clean-up,
 * then the table and the verdict. */
static int measure(const opts_t *o, const int *tl, size_t tl_n, results_t *r)
{
    char err[1024] = "";
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    report_opts_t ro = {.iteration = o->iteration, .timeline = tl, .n_timeline = tl_n, .plots = o->plots};
    sweep_loop_t loop = {.dir = o->out, .measure = cell_measure, .progress = progress, .report = &ro,
                         .stop = &stop_flag};
    sweep_summary_t sum = {0};
    sweep_dist_t *dist = NULL;
    int rc = o->dist_url[0] ? sweep_dist_open(&dist, o->dist_url, &o->spec, err, sizeof err) : 0;
    if (dist) {
        loop.measure = sweep_dist_measure;
        loop.measure_ctx = dist;
    }
    if (!rc)
        rc = sweep_run(&o->spec, &loop, r, &sum, err, sizeof err);
    sweep_dist_close(dist);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (rc) {
        fprintf(stderr, "pipenem sweep: %s\n", err);
        printf("# FAILED: %s\n", err);
        return CLI_FAIL;
    }
    char *md = NULL;
    if (!sum.interrupted && table_markdown(r, &md) == 0) {
        printf("#\n# %s/table.md:\n\n%s\n", o->out, md);
        free(md);
    }
    printf("# %d measured, %d failed, %d kept from before; files in %s\n", sum.measured, sum.failed, sum.skipped,
           o->out);
    if (sum.interrupted)
        printf("# INTERRUPTED: network restored, finished cells kept; continue with: pipenem sweep --resume %s\n",
               o->out);
    else if (sum.failed)
        printf("# FAILED: %d cell(s) failed; pipenem sweep --resume %s retries them\n", sum.failed, o->out);
    else
        printf("# OK\n");
    return sum.interrupted || sum.failed ? CLI_FAIL : CLI_OK;
}

int cmd_sweep(int argc, char **argv)
{
    opts_t o = {.iteration = -1, .plots = 1};
    char err[1024] = "";
    int wrc = sweep_dist_worker(argc, argv);   /* rank > 0 of an SPMD sweep: serves rank 0 */
    if (wrc != SWEEP_DIST_NOT_WORKER)
        return wrc;
    if (sweep_spec_default(&o.spec, err, sizeof err)) {
        fprintf(stderr, "pipenem sweep: %s\n", err);
        return CLI_FAIL;
    }
    const char *resume = NULL;
    int rc = parse(argc, argv, &o, &resume);
    if (rc)
        return rc < 0 ? CLI_OK : rc;
    char **saved = NULL;
    if (resume && (rc = load_resume(resume, argv[0], &o, &saved))) {
        free(saved);
        return rc;
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
    int *tl = NULL;
    size_t tl_n = 0;
    rc = timeline_cells(&o, &tl, &tl_n);
    if (!rc)
        rc = open_out(&o, resume != NULL, argc, argv, &r);
    if (!rc) {
        print_header(&o, resume != NULL, &r);
        rc = measure(&o, tl, tl_n, &r);
    }
    free(tl);
    free(saved);
    results_destroy(&r);
    return rc;
}
