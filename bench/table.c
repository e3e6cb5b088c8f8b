/* Markdown tables from the cells of a sweep. Everything printed is a field of runs.csv
 * (or a ratio of two) shown with three significant digits, which is what lets a test
 * check each number in table.md against the CSV. */
#include "bench/table.h"
#include "models/model.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void table_format_sig3(double v, char *buf, size_t len)
{
    if (isnan(v) || isinf(v)) {
        snprintf(buf, len, "n/a");
        return;
    }
    int dec = 2;
    if (v != 0) {
        dec = 2 - (int)floor(log10(fabs(v)));
        dec = dec < 0 ? 0 : dec > 12 ? 12 : dec;
    }
    snprintf(buf, len, "%.*f", dec, v);
}

static int is_default(const results_cell_t *c)
{
    return !strcmp(c->profile, "default");
}

void table_axes(const results_t *r, const char **schedules, size_t *n_sched, int *mbs, size_t *n_mbs,
                const results_cell_t **profiles, size_t *n_prof)
{
    size_t ns = 0, nm = 0, np = 0;
    /* Cells are visited in index order, whatever order they are stored in. */
    for (int pass = 0; pass < 2; pass++) {
        long prev = LONG_MIN;
        for (size_t k = 0; k < r->n_cells; k++) {
            const results_cell_t *c = NULL;
            for (size_t i = 0; i < r->n_cells; i++)
                if (r->cells[i].cell > prev && (!c || r->cells[i].cell < c->cell))
                    c = &r->cells[i];
            if (!c)
                break;
            prev = c->cell;
            if (pass == 0) {
                size_t i;
                for (i = 0; i < ns && strcmp(schedules[i], c->schedule); i++)
                    ;
                if (i == ns)
                    schedules[ns++] = c->schedule;
                for (i = 0; i < nm && mbs[i] != c->micro_batch_size; i++)
                    ;
                if (i == nm)
                    mbs[nm++] = c->micro_batch_size;
            }
            /* Profiles: the default ones on the first pass, the rest on the second. */
            if (is_default(c) != (pass == 0))
                continue;
            size_t i;
            for (i = 0; i < np && strcmp(profiles[i]->profile, c->profile); i++)
                ;
            if (i == np)
                profiles[np++] = c;
        }
    }
    for (size_t i = 1; i < nm; i++) /* insertion sort: a handful of sizes */
        for (size_t j = i; j > 0 && mbs[j - 1] > mbs[j]; j--) {
            int t = mbs[j];
            mbs[j] = mbs[j - 1];
            mbs[j - 1] = t;
        }
    *n_sched = ns;
    *n_mbs = nm;
    *n_prof = np;
}

const results_cell_t *table_cell_find(const results_t *r, const char *schedule, int mbs, const char *profile)
{
    return table_cell_find_dp(r, schedule, mbs, profile, 0);
}

const results_cell_t *table_cell_find_dp(const results_t *r, const char *schedule, int mbs, const char *profile, int dp)
{
    const results_cell_t *best = NULL;
    for (size_t i = 0; i < r->n_cells; i++) {
        const results_cell_t *c = &r->cells[i];
        if (!strcmp(c->schedule, schedule) && c->micro_batch_size == mbs && !strcmp(c->profile, profile) &&
            (dp ? c->dp == dp : !best || c->dp < best->dp))
            best = c;
    }
    return best;
}

/* v with three significant digits and a unit suffix ("6.64 s", "45.1%"). */
static void put_num(FILE *f, double v, const char *unit)
{
    char b[64];
    table_format_sig3(v, b, sizeof b);
    fprintf(f, "%s%s", b, isnan(v) ? "" : unit);
}

static void put_stages(FILE *f, const double *v, int stages, double scale, const char *unit)
{
    for (int s = 0; s < stages; s++) {
        if (s)
            fputs(" / ", f);
        put_num(f, v[s] * scale, unit);
    }
}

/* Peak memory per stage in MiB below a GiB, else GiB: small test models stay readable. */
static void put_memory(FILE *f, const double *v, int stages)
{
    double mx = 0;
    for (int s = 0; s < stages; s++)
        mx = isnan(v[s]) ? mx : fmax(mx, v[s]);
    if (mx >= 1024.0 * 1024 * 1024)
        put_stages(f, v, stages, 1.0 / (1024.0 * 1024 * 1024), " GiB");
    else
        put_stages(f, v, stages, 1.0 / (1024.0 * 1024), " MiB");
}

static void put_header(FILE *f, const char *first, const int *mbs, size_t nm)
{
    fprintf(f, "| %s |", first);
    for (size_t m = 0; m < nm; m++)
        fprintf(f, " Micro batch size: %d |", mbs[m]);
    fputs("\n| --- |", f);
    for (size_t m = 0; m < nm; m++)
        fputs(" ---: |", f);
    fputc('\n', f);
}

/* The table's axes, in the order the tables list them. */
typedef struct {
    const results_t *r;
    const char **sched;
    int *mbs;
    const results_cell_t **prof;
    size_t ns, nm, np;
    int *dp;              /* replica counts, ascending */
    size_t nd;
} axes_t;

/* The replica counts of the cells, ascending (a handful). */
static void dp_axis(axes_t *x)
{
    x->nd = 0;
    for (size_t i = 0; i < x->r->n_cells; i++) {
        int d = x->r->cells[i].dp, k = 0;
        while ((size_t)k < x->nd && x->dp[k] != d)
            k++;
        if ((size_t)k == x->nd)
            x->dp[x->nd++] = d;
    }
    for (size_t i = 1; i < x->nd; i++)
        for (size_t j = i; j > 0 && x->dp[j - 1] > x->dp[j]; j--) {
            int t = x->dp[j];
            x->dp[j] = x->dp[j - 1];
            x->dp[j - 1] = t;
        }
}

static int is_emulated(const results_cell_t *c)
{
    return model_compute_modelled(c->compute);
}

/* The range of a/b over the micro-batch sizes both schedules measured at setting p. */
static int pair_range(const axes_t *x, size_t a, size_t b, size_t p, double *lo, double *hi)
{
    int n = 0;
    *lo = INFINITY, *hi = -INFINITY;
    for (size_t m = 0; m < x->nm; m++) {
        const results_cell_t *ca = table_cell_find(x->r, x->sched[a], x->mbs[m], x->prof[p]->profile);
        const results_cell_t *cb = table_cell_find(x->r, x->sched[b], x->mbs[m], x->prof[p]->profile);
        if (!ca || !cb || !(ca->iter_median > 0) || !(cb->iter_median > 0))
            continue;
        double v = ca->iter_median / cb->iter_median;
        *lo = fmin(*lo, v), *hi = fmax(*hi, v);
        n++;
    }
    return n;
}

/* One line per schedule pair: at each setting, which is faster and by how much. */
static void put_headlines(FILE *f, const axes_t *x)
{
    for (size_t a = 1; a < x->ns; a++) {
        fprintf(f, "- %s vs %s (iteration time ratio %s / %s over the micro-batch sizes):", x->sched[a], x->sched[0],
                x->sched[a], x->sched[0]);
        for (size_t p = 0, k = 0; p < x->np; p++) {
            double lo, hi;
            if (!pair_range(x, a, 0, p, &lo, &hi))
                continue;
            const char *who = hi < 1 ? x->sched[a] : lo > 1 ? x->sched[0] : NULL;
            fprintf(f, "%s %s: %s faster, ", k++ ? ";" : "", x->prof[p]->label, who ? who : "neither always");
            put_num(f, lo, "");
            if (hi != lo) {
                fputs("-", f);
                put_num(f, hi, "");
            }
        }
        fputs("\n", f);
    }
    double lo = INFINITY, hi = -INFINITY;
    int n = 0;
    for (size_t i = 0; i < x->r->n_cells; i++) {
        double v = x->r->cells[i].predicted_apriori / x->r->cells[i].iter_median;
        if (isfinite(v))
            lo = fmin(lo, v), hi = fmax(hi, v), n++;
    }
    if (n) {
        fprintf(f, "- A-priori predicted / measured over %d cell(s): ", n);
        put_num(f, lo, "");
        fputs(" to ", f);
        put_num(f, hi, "");
        fputs(" (every cell in \"Predicted vs measured\").\n", f);
    }
}

static void put_intro(FILE *f, const axes_t *x)
{
    fputs("# pipenem sweep\n\n", f);
    if (!x->r->n_cells) {
        fputs("No cell has finished yet.\n", f);
        return;
    }
    const results_cell_t *c0 = x->prof[0];
    fprintf(f, "Model %s, %d stages, batch %d, sequence %d, %d measured iterations after %d warm-up, %d repeat(s), "
               "compute %s", c0->model, c0->stages, c0->batch_size, c0->seq_len, c0->iters, c0->warmup,
            c0->repeats, c0->compute);
    if (c0->straggler_rank >= 0)
        fprintf(f, ", straggler: stage %d computes %gx slower", c0->straggler_rank, c0->straggler_factor);
    fputs(".\nNetwork emulator per setting:", f);
    for (size_t p = 0; p < x->np; p++)
        fprintf(f, "%s %s: %s", p ? ";" : "", x->prof[p]->label, x->prof[p]->emulator);
    fputs(".\nEach cell is the median iteration time of the measured iterations; "
          "\"not run\" marks a cell the sweep has not finished.\n\n", f);
    if (x->nd > 1 || (x->nd && x->dp[0] > 1))
        fprintf(f, "Data parallel: %d replica counts; the tables per micro-batch size show the %d-replica cells "
                   "(rank = d x %d + s), every cell is in \"Predicted vs measured\", \"Metrics\" and \"Data "
                   "parallel x pipeline parallel\". Tokens/s counts every replica.\n\n",
                (int)x->nd, x->dp[0], c0->stages);
    fprintf(f, "Legend: `default` is unshaped TCP between the stage processes on one machine (loopback or veths "
               "in namespaces), not a datacenter network. A delay is one-way (RTT = 2 x delay) and a bandwidth is "
               "each link's capacity in each direction; `netem` is the kernel's qdisc on each veth, `shim` the "
               "in-transport shaper of pipenem's own transport. Measured: iteration times, tokens/s, resident "
               "memory. Modelled: %s.\n\n",
            is_emulated(c0) ? "the compute time itself (emulate sleeps for the device model's durations), hence "
                              "TFLOP/s and MFU, device memory, and the a-priori prediction"
                            : "device memory and the a-priori prediction (where the compute has a model)");
    put_headlines(f, x);
}

/* Network setting x micro-batch size of schedule a: its median iteration time, or with
 * base >= 0 that divided by schedule base's. */
static void put_grid(FILE *f, const axes_t *x, size_t a, long base)
{
    put_header(f, "Network setting", x->mbs, x->nm);
    for (size_t p = 0; p < x->np; p++) {
        fprintf(f, "| %s |", x->prof[p]->label);
        for (size_t m = 0; m < x->nm; m++) {
            const results_cell_t *c = table_cell_find(x->r, x->sched[a], x->mbs[m], x->prof[p]->profile);
            const results_cell_t *b =
                base >= 0 ? table_cell_find(x->r, x->sched[base], x->mbs[m], x->prof[p]->profile) : NULL;
            fputc(' ', f);
            if (c && base < 0)
                put_num(f, c->iter_median, " s");
            else if (c && b)
                put_num(f, c->iter_median / b->iter_median, "");
            else
                fputs("not run", f);
            fputs(" |", f);
        }
        fputc('\n', f);
    }
}

static void row_predicted(FILE *f, const results_cell_t *c)
{
    put_num(f, c->iter_median, " s");
    fputs(" | ", f);
    put_num(f, c->predicted_apriori, " s");
    fputs(" | ", f);
    put_num(f, c->predicted_apriori / c->iter_median, "");
    fputs(" | ", f);
    put_num(f, c->predicted, " s");
    fputs(" | ", f);
    put_num(f, c->predicted / c->iter_median, "");
}

static void row_metrics(FILE *f, const results_cell_t *c)
{
    put_num(f, c->iter_median, " s");
    fputs(" | ", f);
    put_num(f, c->iter_stdev, " s");
    fputs(" | ", f);
    put_num(f, c->tokens_per_s, "");
    fputs(" | ", f);
    put_stages(f, c->flops, c->stages, 1e-12, "");
    fputs(" | ", f);
    put_num(f, c->mfu * 100, "%");
    fputs(" | ", f);
    put_memory(f, c->mem_peak, c->stages);
    if (c->mem_kind[0] && strcmp(c->mem_kind, "resident"))
        fprintf(f, " (%s)", c->mem_kind);
    fputs(" | ", f);
    put_memory(f, c->mem_model, c->stages);
    fputs(" | ", f);
    put_stages(f, c->bubble, c->stages, 100, "%");
    fputs(" | ", f);
    put_num(f, c->straggler_slowdown, "");
    fputs(" | ", f);
    if (c->straggler_stage >= 0)
        fprintf(f, "%d", c->straggler_stage);
    else
        fputs("n/a", f);
    fputs(" | ", f);
    put_num(f, c->imbalance, "");
    fputs(" | ", f);
    put_num(f, c->final_loss, "");
}

/* One row per finished cell: replica count, schedule, then setting, then micro-batch
 * size; a schedule with replicas reads "gpipe, DP 2". */
static void put_rows(FILE *f, const axes_t *x, void (*row)(FILE *, const results_cell_t *))
{
    for (size_t d = 0; d < x->nd; d++)
        for (size_t a = 0; a < x->ns; a++)
            for (size_t p = 0; p < x->np; p++)
                for (size_t m = 0; m < x->nm; m++) {
                    const results_cell_t *c =
                        table_cell_find_dp(x->r, x->sched[a], x->mbs[m], x->prof[p]->profile, x->dp[d]);
                    if (!c)
                        continue;
                    fprintf(f, "| %s", c->schedule);
                    if (c->dp > 1)
                        fprintf(f, ", DP %d", c->dp);
                    fprintf(f, " | %s | %d | ", c->label, c->micro_batch_size);
                    row(f, c);
                    fputs(" |\n", f);
                }
}

/* Megatron's table: one row per cell, the replicas of every configuration side by side. */
static void put_dp_table(FILE *f, const axes_t *x)
{
    if (x->nd < 2 && (!x->nd || x->dp[0] < 2))
        return;
    fputs("\n## Data parallel x pipeline parallel\n\nIn the style of Megatron-LM's tables: Nodes = DP x PP (one "
          "process, one device each), MBS the micro-batch size, GBS the global batch (DP x batch), Bucket the "
          "gradients' all-reduce bucket (--dp-bucket; \"overlapped\" with --dp-overlap). Mem: device "
          "memory per device, the largest stage's (modelled where the compute is emulated, else measured). "
          "TFLOP/s per GPU: the mean over the stages of one replica (every replica does the same work); "
          "aggregate: that times DP x PP. DP straggler: per stage, the slowest replica's compute over the "
          "median of its peers (1 = none).\n\n"
          "| Schedule | Network setting | Nodes | DP | PP | MBS | GBS | Bucket | Mem | Sec/it | TFLOP/s per GPU | "
          "Aggregate TFLOP/s | DP straggler per stage |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n", f);
    for (size_t a = 0; a < x->ns; a++)
        for (size_t p = 0; p < x->np; p++)
            for (size_t m = 0; m < x->nm; m++)
                for (size_t d = 0; d < x->nd; d++) {
                    const results_cell_t *c =
                        table_cell_find_dp(x->r, x->sched[a], x->mbs[m], x->prof[p]->profile, x->dp[d]);
                    if (!c)
                        continue;
                    double mem = 0, tf = 0;
                    int nf = 0;
                    const double *mv = isfinite(c->mem_model[0]) ? c->mem_model : c->mem_peak;
                    for (int s = 0; s < c->stages; s++) {
                        mem = isfinite(mv[s]) ? fmax(mem, mv[s]) : mem;
                        if (isfinite(c->flops[s]))
                            tf += c->flops[s], nf++;
                    }
                    tf = nf == c->stages ? tf / nf : NAN;
                    int gbs = c->global_batch > 0 ? c->global_batch : c->dp * c->batch_size;
                    fprintf(f, "| %s | %s | %d | %d | %d | %d | %d | ", c->schedule, c->label, c->dp * c->stages,
                            c->dp, c->stages, c->micro_batch_size, gbs);
                    if (c->dp > 1)
                        put_num(f, c->dp_bucket_bytes / (1024.0 * 1024), c->dp_overlap ? " MiB overlapped" : " MiB");
                    else
                        fputs("-", f);
                    fputs(" | ", f);
                    put_num(f, mem > 0 ? mem / (1024.0 * 1024 * 1024) : NAN, " GiB");
                    fputs(" | ", f);
                    put_num(f, c->iter_median, "");
                    fputs(" | ", f);
                    put_num(f, tf * 1e-12, "");
                    fputs(" | ", f);
                    put_num(f, tf * 1e-12 * c->dp * c->stages, "");
                    fputs(" | ", f);
                    put_stages(f, c->dp_straggler, c->stages, 1, "");
                    fputs(" |\n", f);
                }
}

static void put_tables(FILE *f, const axes_t *x)
{
    put_intro(f, x);
    for (size_t a = 0; a < x->ns; a++) {
        fprintf(f, "\n## Schedule: %s\n\n", x->sched[a]);
        put_grid(f, x, a, -1);
    }
    if (x->ns > 1) {
        fprintf(f, "\n## Schedule comparison\n\nIteration time of each schedule divided by %s's "
                   "(below 1: faster than %s).\n", x->sched[0], x->sched[0]);
        for (size_t a = 1; a < x->ns; a++) {
            fprintf(f, "\n### %s / %s\n\n", x->sched[a], x->sched[0]);
            put_grid(f, x, a, 0);
        }
    }
    fputs("\n## Predicted vs measured\n\nA-priori: the simulator's iteration time from the compute model alone "
          "(the emulated device or times; an injected straggler included) and the profile's link model (its "
          "delay and the TCP goodput of its rate), with nothing measured in the cell: how well pipenem predicts "
          "a configuration it has not run (n/a where the compute has no model). Replayed: the same simulator on "
          "the cell's own measured compute costs (mean per op kind and stage, each measured iteration from its "
          "own costs, the median of those) and links capped by the bandwidth the path reached: whether the "
          "runtime executes the schedule it claims.\n\n"
          "| Schedule | Network setting | Micro batch size | Measured | A-priori | A-priori / measured | Replayed | "
          "Replayed / measured |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n", f);
    put_rows(f, x, row_predicted);
    const char *mod = x->r->n_cells && is_emulated(x->prof[0]) ? "Modelled " : "";
    fprintf(f, "\n## Metrics\n\nPer stage values are listed stage 0 first. Bubble: idle share of the "
               "iteration. %sTFLOP/s and MFU are FLOPs over measured time%s. Measured memory: the peak RSS of the "
               "stage process (cpu; under emulate not the device's), or marked (device) under cuda the device "
               "memory the stage allocated plus the cuBLAS workspace. Device memory (modelled, emulate "
               "only): parameters, gradients and AdamW state plus the activations the schedule holds at its "
               "peak, fp32. Straggler slowdown: measured time over a replay with each stage's compute at its "
               "expected duration (its modelled time, or its FLOPs, at the typical rate across stages); about 1 "
               "without a straggler. Slow stage: the stage of the slowest rate. Partition imbalance: that replay "
               "over one with every stage's compute at the mean (an evenly loaded partition); above 1 where one "
               "stage's share of the work (e.g. the LM head) paces the pipeline.\n\n"
               "| Schedule | Network setting | Micro batch size | Iteration time | Stdev | Tokens/s | "
               "%sTFLOP/s per stage | %sMFU | Measured memory per stage (resident, or device) | "
               "Device memory per stage (modelled) | Bubble per stage | Straggler slowdown | Slow stage | Partition imbalance | "
               "Final loss |\n"
               "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
               "---: |\n",
            mod, *mod ? ", where the time is the emulated device's (set by its assumed efficiency)" : "", mod, mod);
    put_rows(f, x, row_metrics);
    put_dp_table(f, x);
}

int table_markdown(const results_t *r, char **text)
{
    size_t n = r->n_cells ? r->n_cells : 1;
    axes_t x = {.r = r};
    x.sched = calloc(n, sizeof *x.sched);
    x.mbs = calloc(n, sizeof *x.mbs);
    x.prof = calloc(n, sizeof *x.prof);
    x.dp = calloc(n, sizeof *x.dp);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    int bad = !x.sched || !x.mbs || !x.prof || !x.dp || !f;
    if (!bad) {
        table_axes(r, x.sched, &x.ns, x.mbs, &x.nm, x.prof, &x.np);
        dp_axis(&x);
        put_tables(f, &x);
        bad = ferror(f);
    }
    if (f)
        fclose(f);
    free(x.sched);
    free(x.mbs);
    free(x.prof);
    free(x.dp);
    if (bad) {
        free(buf);
        return -ENOMEM;
    }
    *text = buf;
    return 0;
}
