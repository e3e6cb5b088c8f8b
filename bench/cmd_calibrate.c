/* pipenem calibrate: measures forward and backward time per layer and per stage, the
 * achieved FLOP/s and, in the same run, the sgemm FLOP/s of the same GEMM shapes; --out
 * writes the per-layer times as a file that `--compute emulate:FILE` replays. */
#include "bench/cli.h"
#include "common/limits.h"
#include "common/parse.h"
#include "models/calib.h"
#include "models/model.h"
#include "models/options.h"
#include "bench/vocab.h"
#include "pipeline/runcfg.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One micro-batch is measured at a time, so no batch; data and learning rate do not
 * change the time of a step. */
static const int model_except[] = {MODEL_OPT_BATCH_SIZE, MODEL_OPT_DATASET, MODEL_OPT_LR, 0};
static const int pipeline_only[] = {RUNCFG_OPT_ITERS, RUNCFG_OPT_WARMUP, 0};
static const int output_only[] = {VOCAB_OPT_OUT, 0};

static const cli_section_t sections[] = {
    {"model and compute", model_options_group, NULL, model_except, 0},
    {"measurement", runcfg_pipeline_group, pipeline_only, NULL, 0},
    {"output", vocab_output_group, output_only, NULL, 0},
    {NULL, model_options_group, model_except, NULL, 1},   /* accepted for one more release, with a note */
    {NULL, NULL, NULL, NULL, 0},
};

static const cli_override_t overrides[] = {
    {RUNCFG_OPT_ITERS, NULL, "measured iterations per stage, one micro-batch each", "3"},
    {RUNCFG_OPT_WARMUP, NULL, "unmeasured iterations first", NULL},
    {VOCAB_OPT_OUT, "FILE", "write the per-layer times, for --compute emulate:FILE", "none"},
    {0, NULL, NULL, NULL},
};

static const cli_spec_t spec = {
    "calibrate",
    "usage: pipenem calibrate --model M --seq-len T --micro-batch-size b --compute cpu|cuda[:PREC]\n"
    "                         [--stages P | --partition A,B,..] [--iters N] [--warmup W] [--out FILE]\n"
    "Measures forward and backward time per layer and per stage, the achieved FLOP/s, and\n"
    "the sgemm FLOP/s of the same GEMM shapes in the same run (\"% of GEMM peak\").\n\n",
    sections, overrides, NULL, NULL,
};


static int parse_count(const char *cmd, const char *name, const char *arg, int lo, int *out)
{
    if (pn_parse_int(arg, lo, PN_MAX_ITERS, out))
        return cli_usage_error(cmd, "--%s: expected an integer >= %d, got '%s'", name, lo, arg);
    return 0;
}

static void print_header(const model_stage_params_t *p, int iters, int warmup)
{
    printf("# pipenem calibrate: %s  layers %d  hidden %d  heads %d  vocab %d\n", p->cfg.name, p->cfg.layers,
           p->cfg.hidden, p->cfg.heads, p->cfg.vocab);
    char desc[256];
    model_compute_describe(p->compute, desc, sizeof desc);
    char threads[16] = "default";
    if (p->threads > 0)
        snprintf(threads, sizeof threads, "%d", p->threads);
    printf("# seq-len %d  micro-batch-size %d  stages %d  recompute %d  threads %s\n# compute %s\n", p->seq_len,
           p->micro_batch_size, p->stages, p->recompute, threads, desc);
    printf("# %d measured iterations per stage after %d warm-up; times are per micro-batch\n", iters, warmup);
    printf("# FLOPs: 6*N_matmul + 6*L*T*d per token (fwd 1/3, bwd 2/3); sgemm: the stage's own GEMM calls replayed alone\n");
    printf("#\n# %5s %7s %10s %10s %10s %10s %10s %10s %10s %8s %10s\n", "stage", "layers", "params", "fwd", "bwd",
           "opt", "fwd+bwd", "achieved", "sgemm", "of_GEMM", "saved_act");
    printf("# %5s %7s %10s %10s %10s %10s %10s %10s %10s %8s %10s\n", "", "", "M", "ms", "ms", "ms", "GFLOP",
           "GFLOP/s", "GFLOP/s", "peak_%", "MiB/mb");
}

static void print_layers(const model_stage_params_t *p, const model_calib_stage_t *r, const double *lf, const double *lb)
{
    printf("#\n# per layer (ms per micro-batch)\n# %7s %10s %10s\n", "part", "fwd", "bwd");
    printf("  %7s %10.3f %10.3f\n", "embed", r[0].embed_fwd * 1e3, r[0].embed_bwd * 1e3);
    for (int l = 0; l < p->cfg.layers; l++) {
        char nm[16];
        snprintf(nm, sizeof nm, "h%d", l);
        printf("  %7s %10.3f %10.3f\n", nm, lf[l] * 1e3, lb[l] * 1e3);
    }
    printf("  %7s %10.3f %10.3f\n", "head", r[p->stages - 1].head_fwd * 1e3, r[p->stages - 1].head_bwd * 1e3);
}

int cmd_calibrate(int argc, char **argv)
{
    const char *cmd = argv[0];
    cli_parser_t cp;
    if (cli_parser_init(&cp, &spec))
        return cli_usage_error(cmd, "internal: the option table is inconsistent");
    model_options_t mo;
    model_options_defaults(&mo);
    mo.batch_size = 1;
    int iters = 3, warmup = 1, c;
    const char *out_path = NULL;
    char err[1024];
    while ((c = cli_next(&cp, argc, argv)) != -1) {
        if (c == -2)
            return CLI_USAGE;
        for (const int *x = model_except; *x; x++)
            if (*x == c)
                fprintf(stderr, "pipenem calibrate: note: %s does not change what calibrate measures; it is "
                                "ignored and goes away in the next release\n", cli_opt_name(&spec, c));
        int r = model_options_parse(&mo, c, optarg, err, sizeof err);
        if (r < 0)
            return cli_usage_error(cmd, "%s", err);
        if (r > 0)
            continue;
        switch (c) {
        case CLI_OPT_HELP:
            cli_help(&spec, stdout);
            return CLI_OK;
        case RUNCFG_OPT_ITERS:
            if (parse_count(cmd, "iters", optarg, 1, &iters))
                return CLI_USAGE;
            break;
        case RUNCFG_OPT_WARMUP:
            if (parse_count(cmd, "warmup", optarg, 0, &warmup))
                return CLI_USAGE;
            break;
        case VOCAB_OPT_OUT:
            out_path = optarg;
            break;
        default:
            return cli_usage_error(cmd, "unexpected option");
        }
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    /* one micro-batch is measured at a time: the batch is just that micro-batch */
    mo.batch_size = mo.micro_batch_size;
    model_stage_params_t p;
    if (model_options_finish(&mo, &p, err, sizeof err))
        return cli_usage_error(cmd, "%s", err);
    if (out_path && model_compute_modelled(p.compute))
        return cli_usage_error(cmd, "--out needs measured compute (--compute cpu or cuda[:PREC]), not '%s'", p.compute);

    model_calib_stage_t *r = calloc(p.stages, sizeof *r);
    double *lf = calloc(p.cfg.layers, sizeof *lf), *lb = calloc(p.cfg.layers, sizeof *lb);
    if (!r || !lf || !lb) {
        free(r), free(lf), free(lb);
        fprintf(stderr, "pipenem calibrate: out of memory\n");
        return CLI_FAIL;
    }
    int status = CLI_OK;
    print_header(&p, iters, warmup);
    int begin = 0;
    for (int s = 0; s < p.stages; s++) {
        fflush(stdout);
        if (model_calib_stage(&p, s, iters, warmup, &r[s], lf, lb, err, sizeof err)) {
            fprintf(stderr, "pipenem calibrate: %s\n", err);
            status = CLI_FAIL;
            break;
        }
        double rate = r[s].flops / (r[s].fwd + r[s].bwd);
        char range[32], sg[16] = "-", pk[16] = "-";
        snprintf(range, sizeof range, "%d-%d", begin, begin + r[s].layers - 1);
        begin += r[s].layers;
        if (r[s].gemm_s > 0) {
            double g = r[s].gemm_flops / r[s].gemm_s;
            snprintf(sg, sizeof sg, "%.2f", g * 1e-9);
            snprintf(pk, sizeof pk, "%.1f", 100 * rate / g);
        }
        printf("  %5d %7s %10.3f %10.3f %10.3f %10.3f %10.2f %10.2f %10s %8s %10.1f\n", s, range, r[s].params * 1e-6,
               r[s].fwd * 1e3, r[s].bwd * 1e3, r[s].opt * 1e3, r[s].flops * 1e-9, rate * 1e-9, sg, pk,
               r[s].saved_bytes / 1048576.0);
    }
    if (status == CLI_OK) {
        print_layers(&p, r, lf, lb);
        printf("# peak memory %.1f MiB\n", model_peak_rss_bytes() / 1048576.0);
        size_t dev = 0;
        for (int s = 0; s < p.stages; s++)
            dev = r[s].device_bytes > dev ? r[s].device_bytes : dev;
        if (dev)
            printf("# peak device memory %.1f MiB (the largest stage: its allocations and cuBLAS workspace)\n",
                   dev / 1048576.0);
        if (out_path) {
            if (model_calib_write(out_path, &p, r, lf, lb, argc, argv, err, sizeof err)) {
                fprintf(stderr, "pipenem calibrate: %s\n", err);
                status = CLI_FAIL;
            } else {
                printf("# wrote %s (use --compute emulate:%s)\n", out_path, out_path);
            }
        }
    }
    printf("# %s\n", status == CLI_OK ? "OK" : "FAILED");
    free(r);
    free(lf);
    free(lb);
    return status;
}
