/* Synthetic sweep results for the bench tests: a GPipe-shaped op trace per cell written
 * from closed-form start times (not a simulator: only the shape and the arithmetic
 * matter here), with metrics computed by bench/metrics so the files are self-consistent. */
#ifndef PN_TESTS_BENCH_SYNTH_H
#define PN_TESTS_BENCH_SYNTH_H

#include "bench/metrics.h"
#include "bench/results.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static inline int synth_op(results_t *r, int cell, int rank, int it, const char *op, int mb,
                           double start, double end, long long bytes)
{
    results_op_t o = {.cell = cell, .repeat = 0, .rank = rank, .iteration = it, .micro_batch = mb,
                      .start = start, .end = end, .bytes = bytes};
    snprintf(o.op, sizeof o.op, "%s", op);
    return results_op_add(r, &o);
}

/* The ops of one cell: S stages, M micro-batches, fwd f, bwd b, link time c per message,
 * opt step 0.2 f; iteration k runs (1 + 0.01 k) slower so statistics are not degenerate. */
static inline int synth_trace(results_t *r, int cell, int S, int M, int iters, double f, double b, double c)
{
    int rc = 0;
    double t0 = 0.001, o = 0.2 * f;
    for (int k = 0; k < iters && !rc; k++) {
        double g = 1.0 + 0.01 * k, fk = f * g, bk = b * g;
        double tf = (S - 1) * (fk + c) + M * fk; /* last forward ends */
        double end = t0;
        for (int s = 0; s < S && !rc; s++) {
            for (int m = 0; m < M && !rc; m++) {
                double fs = t0 + s * (fk + c) + m * fk;
                if (s > 0)
                    rc |= synth_op(r, cell, s, k, "RECV_ACT", m, fs - c, fs, 1024);
                rc |= synth_op(r, cell, s, k, "FWD", m, fs, fs + fk, 0);
                if (s < S - 1)
                    rc |= synth_op(r, cell, s, k, "SEND_ACT", m, fs + fk, fs + fk + c, 1024);
            }
            for (int m = 0; m < M && !rc; m++) {
                double bs = t0 + tf + (S - 1 - s) * (bk + c) + m * bk;
                if (s < S - 1)
                    rc |= synth_op(r, cell, s, k, "RECV_GRAD", m, bs - c, bs, 1024);
                rc |= synth_op(r, cell, s, k, "BWD", m, bs, bs + bk, 0);
                if (s > 0)
                    rc |= synth_op(r, cell, s, k, "SEND_GRAD", m, bs + bk, bs + bk + c, 1024);
            }
            double os = t0 + tf + (S - 1 - s) * (bk + c) + M * bk;
            rc |= synth_op(r, cell, s, k, "OPT_STEP", -1, os, os + o, 0);
            end = fmax(end, os + o);
        }
        t0 = end;
    }
    return rc;
}

/* One cell with its ops, iterations and metrics (FLOPs 1e9 M (s+1) per stage, peak 1e11). */
static inline int synth_cell(results_t *r, int cell, const char *schedule, int mbs, const char *profile,
                             const char *label, int S, int batch, int iters, double f, double b, double c)
{
    int M = batch / mbs;
    int rc = synth_trace(r, cell, S, M, iters, f, b, c);
    if (rc)
        return rc;
    results_cell_t cl;
    results_cell_clear(&cl, cell);
    snprintf(cl.schedule, sizeof cl.schedule, "%s", schedule);
    cl.micro_batch_size = mbs;
    snprintf(cl.profile, sizeof cl.profile, "%s", profile);
    snprintf(cl.label, sizeof cl.label, "%s", label);
    snprintf(cl.model, sizeof cl.model, "tiny");
    cl.stages = S;
    cl.batch_size = batch;
    cl.seq_len = 32;
    cl.micro_batches = M;
    cl.iters = iters - 1; /* measured, after one warm-up */
    cl.warmup = 1;
    cl.repeats = 1;
    snprintf(cl.compute, sizeof cl.compute, "emulate:fwd=%gms,bwd=%gms", f * 1e3, b * 1e3);
    snprintf(cl.emulator, sizeof cl.emulator, "synthetic");
    double flop[RESULTS_MAX_STAGES];
    for (int s = 0; s < S; s++)
        flop[s] = 1e9 * M * (1 + s);
    metrics_params_t p = {.warmup = 1, .batch_size = batch, .seq_len = 32, .flop_per_iter = flop,
                          .peak_flops = 1e11};
    char err[256];
    rc = metrics_cell_compute(r, &p, &cl, err, sizeof err);
    if (rc) {
        fprintf(stderr, "synth: %s\n", err);
        return rc;
    }
    cl.predicted = cl.iter_median * 0.97;
    cl.predicted_apriori = cl.iter_median * 0.91;
    cl.ideal = cl.iter_median * 0.95;
    cl.imbalance = 1.0 + 0.1 * S;
    cl.straggler_stage = cell % S;
    metrics_straggler(cl.iter_median, cl.ideal, &cl.straggler_delay, &cl.straggler_slowdown);
    for (int s = 0; s < S; s++)
        cl.mem_peak[s] = 3.0 * (1 << 20) * (s + 1) * mbs, cl.mem_model[s] = 5.0 * (1 << 20) * (S - s) * M;
    cl.final_loss = 5.5 - 0.01 * cell;
    cl.wall = 1.0;
    return results_cell_add(r, &cl);
}

/* The integration-sized grid: 2 schedules x 2 micro-batch sizes x 2 profiles, 3 stages. */
static inline int synth_sweep(results_t *r)
{
    static const char *const sched[] = {"gpipe", "1f1b"};
    static const int mbs[] = {1, 2};
    static const char *const prof[] = {"default", "10ms/1Gbps"};
    static const char *const label[] = {"default", "delay 10ms  bandwidth 1Gbps"};
    int cell = 0, rc = 0;
    for (int a = 0; a < 2 && !rc; a++)
        for (int p = 0; p < 2 && !rc; p++)
            for (int m = 0; m < 2 && !rc; m++, cell++)
                rc = synth_cell(r, cell, sched[a], mbs[m], prof[p], label[p], 3, 8, 4,
                                0.010 * mbs[m] * (a ? 0.9 : 1.0), 0.020 * mbs[m], p ? 0.012 : 0.0005);
    return rc;
}

#endif
