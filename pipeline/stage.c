/* A stage process's life: open the transport, meet the other ranks, connect to the
 * neighbours, build the model partition, execute, and hand the trace to rank 0, which
 * assembles the job summary. Control-plane failures are turned into transport failures
 * so that a rank blocked on a dead neighbour's tensor wakes up at once. */
#include "pipeline/stage.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/allreduce.h"
#include "pipeline/boot.h"
#include "pipeline/ctrl.h"
#include "pipeline/fault.h"
#include "pipeline/shim.h"

/* Whether text names a rank ("rank N") that err does not. */
static int names_another_rank(const char *text, const char *err)
{
    for (const char *p = text; (p = strstr(p, "rank ")); p += 5) {
        int r;
        if (sscanf(p + 5, "%d", &r) != 1)
            continue;
        char name[32];
        int n = snprintf(name, sizeof name, "rank %d", r);
        const char *q = err;
        int found = 0;
        while (!found && (q = strstr(q, name))) {
            found = q[n] < '0' || q[n] > '9'; /* "rank 1" is not in "rank 12" */
            q += n;
        }
        if (!found)
            return 1;
    }
    return 0;
}

static void on_peer_fail(void *arg, int rank, const char *why)
{
    (void)rank;
    transport_fail(arg, -ECONNRESET, why);
}

/* ---- the report each rank sends to rank 0 (text, one record per line) ---- */

static char *report_build(const stage_rank_t *me, const exec_result_t *r, size_t *len)
{
    size_t cap = 256 + (size_t)r->iters * 96 + r->n_rows * 96;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    size_t n = (size_t)snprintf(buf, cap, "R %zu %.17g %.17g %.17g %.17g %.17g %.17g %.17g %zu %d %zu\n",
                                me->peak_mem, me->fwd_flops, me->bwd_flops, me->peak_flops, me->wait_wall,
                                me->wait_cpu, me->run_wall, me->run_cpu, me->params, r->iters, r->n_rows);
    n += (size_t)snprintf(buf + n, cap - n, "M %d %ld\n", me->mem_kind, me->skipped);
    for (int i = 0; i < r->iters && n < cap; i++) {
        n += (size_t)snprintf(buf + n, cap - n, "L %d %.17g\n", i, r->loss[i]);
        if (n < cap && isfinite(r->loss_scale[i]))
            n += (size_t)snprintf(buf + n, cap - n, "S %d %.17g\n", i, r->loss_scale[i]);
    }
    for (size_t i = 0; i < r->n_rows && n < cap; i++) {
        const exec_row_t *w = &r->rows[i];
        n += (size_t)snprintf(buf + n, cap - n, "T %d %d %d %.9f %.9f %zu\n", w->iter, (int)w->kind, w->mb, w->start,
                              w->end, w->bytes);
    }
    if (n >= cap) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* Parses rank q's report into s; every number is range-checked (it came off the wire). */
int stage_report_parse(stage_summary_t *s, int q, const char *text, size_t len, char *err, size_t errlen)
{
    char *copy = strndup(text, len), *save = NULL;
    if (!copy)
        return -ENOMEM;
    int rc = 0, iters = 0;
    size_t rows = 0, got_rows = 0;
    for (char *line = strtok_r(copy, "\n", &save); line && !rc; line = strtok_r(NULL, "\n", &save)) {
        stage_rank_t *m = &s->ranks[q];
        if (line[0] == 'R') {
            if (sscanf(line, "R %zu %lg %lg %lg %lg %lg %lg %lg %zu %d %zu", &m->peak_mem, &m->fwd_flops,
                       &m->bwd_flops, &m->peak_flops, &m->wait_wall, &m->wait_cpu, &m->run_wall, &m->run_cpu,
                       &m->params, &iters, &rows) != 11 ||
                iters != s->warmup + s->iters || rows > len / 14) {
                rc = -EPROTO;
                break;
            }
            exec_row_t *nr = realloc(s->rows, (s->n_rows + rows + 1) * sizeof *nr);
            if (!nr) {
                rc = -ENOMEM;
                break;
            }
            s->rows = nr;
        } else if (line[0] == 'L') {
            int i;
            double v;
            if (sscanf(line, "L %d %lg", &i, &v) != 2 || i < 0 || i >= s->warmup + s->iters) {
                rc = -EPROTO;
                break;
            }
            if (!isnan(v)) /* the rank holding the model's last chunk; with --dp, one per replica */
                s->loss[i] = isnan(s->loss[i]) ? v : s->loss[i] + v;
        } else if (line[0] == 'M') { /* memory kind and skipped steps (optional: resident, 0) */
            if (sscanf(line, "M %d %ld", &m->mem_kind, &m->skipped) != 2 || m->mem_kind < MODEL_MEM_RESIDENT ||
                m->mem_kind > MODEL_MEM_DEVICE || m->skipped < 0) {
                rc = -EPROTO;
                break;
            }
        } else if (line[0] == 'S') { /* the loss scale of iteration i (optional) */
            int i;
            double v;
            if (sscanf(line, "S %d %lg", &i, &v) != 2 || i < 0 || i >= s->warmup + s->iters || !(v > 0) ||
                !isfinite(v)) {
                rc = -EPROTO;
                break;
            }
            if (s->loss_scale)
                s->loss_scale[i] = v;
        } else if (line[0] == 'T') {
            exec_row_t w = {.rank = q};
            int kind;
            if (!iters || got_rows >= rows ||
                sscanf(line, "T %d %d %d %lg %lg %zu", &w.iter, &kind, &w.mb, &w.start, &w.end, &w.bytes) != 6 ||
                w.iter < 0 || w.iter >= iters || kind < 0 || kind >= SCHED_OP_KINDS || w.mb < -1 ||
                w.mb >= TRANSPORT_MB_MAX || (w.mb == -1) != (kind == SCHED_OPT_STEP) || !isfinite(w.start) ||
                !isfinite(w.end)) {
                rc = -EPROTO;
                break;
            }
            w.kind = (sched_op_kind_t)kind;
            s->rows[s->n_rows++] = w;
            got_rows++;
        } else {
            rc = -EPROTO;
        }
    }
    if (!rc && (!iters || got_rows != rows))
        rc = -EPROTO;
    if (rc == -EPROTO)
        snprintf(err, errlen, "rank %d sent a malformed final report", q);
    free(copy);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* get(arg, rank, &len) returns each rank's report text. */
static int summary_build(stage_summary_t *s, const runcfg_t *cfg, const char *(*get)(const void *, int, size_t *),
                         const void *arg, char *err, size_t errlen)
{
    int n = cfg->warmup + cfg->iters, W = runcfg_world(cfg);
    s->stages = W;
    s->iters = cfg->iters;
    s->warmup = cfg->warmup;
    s->tokens_per_iter =
        (double)cfg->dp * cfg->stage_params.micro_batch_size * cfg->micro_batches * cfg->stage_params.seq_len;
    s->iter_time = calloc((size_t)n, sizeof *s->iter_time);
    s->loss = malloc(sizeof *s->loss * (size_t)n);
    s->loss_scale = malloc(sizeof *s->loss_scale * (size_t)n);
    s->ranks = calloc((size_t)W, sizeof *s->ranks);
    double *first = malloc(sizeof *first * (size_t)n), *last = malloc(sizeof *last * (size_t)n);
    int rc = 0;
    if (!s->iter_time || !s->loss || !s->loss_scale || !s->ranks || !first || !last) {
        rc = -ENOMEM;
        goto out;
    }
    for (int i = 0; i < n; i++) {
        s->loss[i] = s->loss_scale[i] = NAN;
        first[i] = INFINITY;
        last[i] = -INFINITY;
    }
    for (int q = 0; q < W && !rc; q++) {
        size_t len;
        const char *text = get(arg, q, &len);
        if (!text) {
            snprintf(err, errlen, "rank %d's final report is missing", q);
            rc = -EPROTO;
            break;
        }
        rc = stage_report_parse(s, q, text, len, err, errlen);
        if (!rc && s->ranks[q].skipped > s->skipped)
            s->skipped = s->ranks[q].skipped;
    }
    if (rc)
        goto out;
    for (int i = 0; i < n; i++) /* the global batch's mean: each replica's last stage gave its shard's */
        s->loss[i] /= cfg->dp;
    for (size_t k = 0; k < s->n_rows; k++) {
        const exec_row_t *w = &s->rows[k];
        if (w->start < first[w->iter])
            first[w->iter] = w->start;
        if (w->end > last[w->iter])
            last[w->iter] = w->end;
    }
    for (int i = 0; i < n; i++)
        s->iter_time[i] = last[i] - (i ? last[i - 1] : first[0]);
    double *m = malloc(sizeof *m * (size_t)cfg->iters);
    if (!m) {
        rc = -ENOMEM;
        goto out;
    }
    memcpy(m, s->iter_time + cfg->warmup, sizeof *m * (size_t)cfg->iters);
    qsort(m, (size_t)cfg->iters, sizeof *m, cmp_double);
    s->median_time = cfg->iters % 2 ? m[cfg->iters / 2] : (m[cfg->iters / 2 - 1] + m[cfg->iters / 2]) / 2;
    s->tokens_per_s = s->tokens_per_iter / s->median_time;
    free(m);
out:
    free(first);
    free(last);
    if (rc == -ENOMEM)
        snprintf(err, errlen, "out of memory for the job summary");
    return rc;
}

static const char *gathered_get(const void *arg, int rank, size_t *len)
{
    return ctrl_gathered(arg, rank, len);
}

/* Every rank's report, framed "len\n" + text, for a launcher in another process. */
static int reports_write(const boot_t *b, int P, FILE *f)
{
    for (int q = 0; q < P; q++) {
        size_t len;
        const char *t = ctrl_gathered(b, q, &len);
        if (!t)
            return -EPROTO;
        fprintf(f, "%zu\n", len);
        fwrite(t, 1, len, f);
    }
    return fflush(f) || ferror(f) ? -EIO : 0;
}

typedef struct {
    char **text;
    size_t *len;
    int n;
} reports_t;

static const char *reports_get(const void *arg, int rank, size_t *len)
{
    const reports_t *r = arg;
    if (rank >= r->n || !r->text[rank])
        return NULL;
    *len = r->len[rank];
    return r->text[rank];
}

int stage_summary_read(const runcfg_t *cfg, FILE *f, stage_summary_t *out, char *err, size_t errlen)
{
    int P = runcfg_world(cfg), rc = 0;
    reports_t r = {calloc((size_t)P, sizeof(char *)), calloc((size_t)P, sizeof(size_t)), P};
    if (!r.text || !r.len) {
        rc = -ENOMEM;
        snprintf(err, errlen, "out of memory");
    }
    for (int q = 0; q < P && !rc; q++) {
        size_t len;
        if (fscanf(f, "%zu", &len) != 1 || fgetc(f) != '\n' || len > BOOT_PAYLOAD_MAX) {
            snprintf(err, errlen, "the report of rank %d is missing or malformed", q);
            rc = -EPROTO;
            break;
        }
        if (!(r.text[q] = malloc(len + 1)) || fread(r.text[q], 1, len, f) != len) {
            snprintf(err, errlen, "the report of rank %d is truncated", q);
            rc = r.text[q] ? -EPROTO : -ENOMEM;
            break;
        }
        r.len[q] = len;
    }
    stage_summary_t sum = {0};
    if (!rc && (rc = summary_build(&sum, cfg, reports_get, &r, err, errlen)) == 0)
        *out = sum;
    else
        stage_summary_destroy(&sum);
    for (int q = 0; r.text && q < P; q++)
        free(r.text[q]);
    free(r.text);
    free(r.len);
    return rc;
}

void stage_summary_destroy(stage_summary_t *s)
{
    free(s->iter_time);
    free(s->loss);
    free(s->loss_scale);
    free(s->ranks);
    free(s->rows);
    memset(s, 0, sizeof *s);
}

void stage_summary_print(const stage_summary_t *s, const runcfg_t *cfg, FILE *f)
{
    int scaled = 0; /* fp16: the loss scale column */
    for (int i = 0; i < s->warmup + s->iters; i++)
        scaled |= isfinite(s->loss_scale[i]);
    fprintf(f, "#\n#  %9s %12s %16s %12s%s\n", "iteration", "time", "loss", "tokens/s", scaled ? "   loss_scale" : "");
    fprintf(f, "#  %9s %12s %16s %12s%s\n", "", "(s)", "", "(tok/s)", scaled ? "       (fp16)" : "");
    for (int i = 0; i < s->warmup + s->iters; i++) {
        fprintf(f, "   %9d %12.6f %16.9g %12.1f", i, s->iter_time[i], s->loss[i], s->tokens_per_iter / s->iter_time[i]);
        if (scaled)
            fprintf(f, " %12.9g", s->loss_scale[i]);
        fprintf(f, "%s\n", i < s->warmup ? "  (warm-up)" : "");
    }
    fprintf(f, "#\n# median iteration time %.6f s over %d iterations (after %d warm-up), %.1f tokens/s\n",
            s->median_time, s->iters, s->warmup, s->tokens_per_s);
    if (scaled)
        fprintf(f, "# fp16 dynamic loss scaling: %ld step%s skipped for an overflow (every stage skips together)\n",
                s->skipped, s->skipped == 1 ? "" : "s");
    fprintf(f, "#  %5s %12s %8s %14s %14s %9s %8s\n", "stage", "TFLOP/s", "MFU", "peak_mem", "wait_cpu", "memory",
            "skipped");
    fprintf(f, "#  %5s %12s %8s %14s %14s %9s %8s\n", "", "", "(%)", "(MiB)", "(% of a core)", "(kind)", "(steps)");
    for (int q = 0; q < s->stages; q++) {
        const stage_rank_t *m = &s->ranks[q];
        double tflops = (m->fwd_flops + m->bwd_flops) * cfg->micro_batches / s->median_time / 1e12;
        char mfu[16] = "-";
        if (m->peak_flops > 0)
            snprintf(mfu, sizeof mfu, "%.2f", 100.0 * tflops * 1e12 / m->peak_flops);
        fprintf(f, "   %5d %12.6f %8s %14.1f %14.2f %9s %8ld\n", q, tflops, mfu, (double)m->peak_mem / 1048576.0,
                m->wait_wall > 0 ? 100.0 * m->wait_cpu / m->wait_wall : 0.0,
                model_mem_kind_name((model_mem_kind_t)m->mem_kind), m->skipped);
    }
    fprintf(f, "# memory: device = the stage's device allocations plus the cuBLAS workspace (measured); resident = "
               "the stage process's peak RSS (cpu; under emulate not the emulated device's)\n");
}

/* The transport of this rank (--transport), wrapped in the shim when the links are shaped
 * there (the shim reads *clock_offset at every message). */
static int transport_make(const stage_params_t *p, double *clock_offset, transport_t *t, char *err, size_t errlen)
{
    const runcfg_t *cfg = p->cfg;
    transport_params_t tp = {.rank = p->rank, .size = runcfg_world(cfg),
                             .ucx_tls = p->ucx_tls && *p->ucx_tls ? p->ucx_tls : cfg->ucx_tls,
                             .ucx_devices = p->ucx_devices && *p->ucx_devices ? p->ucx_devices : cfg->ucx_devices,
                             .root_host = p->host, .root_port = p->port, .compute = cfg->model.compute,
                             .device = cfg->model.device, .timeout = cfg->timeout};
    char e[384];
    int rc = transport_open(cfg->transport, &tp, t, e, sizeof e);
    netem_profile_t dp_link = {0};
    if (rc == 0 && p->shim_links && cfg->dp > 1)
        rc = netem_profile_parse(runcfg_net_dp(cfg), &dp_link, e, sizeof e);
    if (rc == 0 && p->shim_links) {
        transport_t raw = *t;
        if ((rc = shim_transport_wrap_dp(&raw, cfg->stages, p->shim_links, &dp_link, clock_offset, t, e, sizeof e))) {
            transport_destroy(&raw);
            memset(t, 0, sizeof *t);
        }
    }
    if (rc)
        snprintf(err, errlen, "rank %d: %s", p->rank, e);
    return rc;
}

/* Connects to the neighbours, to the twin of the tied-embedding exchange, and for
 * interleaved chunks the last stage to the first, all in this rank's replica; with --dp,
 * to the stage's ring neighbours among the replicas too. */
static int peers_connect(const runcfg_t *cfg, int rank, const boot_t *b, transport_t *t, char *err, size_t errlen)
{
    int P = cfg->stages, D = cfg->dp, s = runcfg_stage_of(cfg, rank), d = runcfg_replica(cfg, rank), base = d * P;
    int peers[5], np = 0, rc = 0;
    if (s > 0)
        peers[np++] = base + s - 1;
    if (s < P - 1)
        peers[np++] = base + s + 1;
    /* interleaved chunks also go from the last stage back to the first */
    if ((cfg->model.tied_embeddings || sched_uses_chunks(cfg->schedule) > 0) && P > 2 && (s == 0 || s == P - 1))
        peers[np++] = base + (s == 0 ? P - 1 : 0);
    if (D > 1)
        peers[np++] = runcfg_rank_of(cfg, (d + 1) % D, s);
    if (D > 2)
        peers[np++] = runcfg_rank_of(cfg, (d + D - 1) % D, s);
    for (int i = 0; i < np && !rc; i++) {
        int q = peers[i];
        size_t len;
        const void *pb = boot_blob(b, q, &len);
        rc = t->ops->connect(t->impl, q, pb, len, err, errlen);
    }
    return rc;
}

/* (mb, chunk) activations of `chunk` held at once in a rank's op list. */
static int chunk_peak(const sched_op_t *ops, size_t n, int chunk)
{
    int held = 0, peak = 0;
    for (size_t i = 0; i < n; i++)
        if (ops[i].chunk != chunk)
            continue;
        else if (ops[i].kind == SCHED_FWD && ++held > peak)
            peak = held;
        else if (ops[i].kind == SCHED_BWD || ops[i].kind == SCHED_BWD_WEIGHT)
            held--;
    return peak;
}

/* The rank's model: stage `rank` of P, or with several chunks per stage (interleaved-1f1b,
 * zb-v) its v chunks of the model split evenly into all chunks, in model order; each
 * keeps room for what its part of the op list holds in flight. *ready counts those
 * initialised. */
static int model_make(const runcfg_t *cfg, int grank, model_stage_t *st, int *ready, char *err, size_t errlen)
{
    int rank = runcfg_stage_of(cfg, grank);
    sched_spec_t spec = {cfg->schedule, cfg->stages, cfg->micro_batches, cfg->slack, cfg->chunks};
    sched_plan_t plan;
    int rc = sched_plan_build_spec(&spec, &plan, err, errlen);
    if (rc)
        return rc;
    int v = plan.chunks / plan.stages;
    if (v > 1 && cfg->stage_params.partition)
        rc = pn_err(err, errlen, -EINVAL, "rank %d: --partition gives each stage's layers; %s splits the layers "
                    "evenly over its %d chunks", rank, cfg->schedule, plan.chunks);
    for (int j = 0; j < v && !rc; j++) {
        model_stage_params_t mp = cfg->stage_params;
        int c = sched_rank_chunk(plan.place, plan.stages, plan.chunks, rank, j);
        char e[384];
        mp.stages = plan.chunks;
        mp.stage = c;
        mp.process_chunks = v;
        mp.data_mb_offset = runcfg_replica(cfg, grank) * cfg->micro_batches; /* this replica's shard */
        if (v > 1)
            mp.partition = NULL;
        mp.max_inflight = chunk_peak(plan.ops[rank], plan.n_ops[rank], c);
        if ((rc = model_stage_init(&st[j], &mp, e, sizeof e)) != 0)
            snprintf(err, errlen, "rank %d: model%s: %s", rank, v > 1 ? " chunk" : "", e);
        else
            (*ready)++;
    }
    sched_plan_destroy(&plan);
    return rc;
}

/* The accounting of a stage of v chunks: the work and parameters of all of them. */
static void model_account_all(model_stage_t *st, int v, model_account_t *acc)
{
    model_stage_account(&st[0], acc);
    for (int j = 1; j < v; j++) {
        model_account_t more;
        model_stage_account(&st[j], &more);
        acc->fwd_flops += more.fwd_flops;
        acc->bwd_flops += more.bwd_flops;
        acc->params += more.params;
    }
}

/* --dp-bucket: the buckets of the stage's v chunks and their 2(D-1) ring steps each must
 * fit the all-reduce's keys of an iteration; said now, not after millions of tiny steps. */
static int dp_keys_check(const runcfg_t *cfg, int rank, model_stage_t *st, int v, char *err, size_t errlen)
{
    long per = (long)(runcfg_dp_bucket(cfg) / sizeof(float)), steps = 2L * (cfg->dp - 1), keys = 0;
    size_t params = 0;
    for (int j = 0; j < v; j++) {
        model_account_t a;
        model_stage_account(&st[j], &a);
        params += a.params;
        keys += ((long)a.params + per - 1) / per * steps;
    }
    long cap = (ALLREDUCE_MB_END - ALLREDUCE_MB_BASE) / steps - v; /* buckets an iteration can number */
    if (keys <= ALLREDUCE_MB_END - ALLREDUCE_MB_BASE)
        return 0;
    return pn_err(err, errlen, -E2BIG, "rank %d: --dp-bucket %zu cuts this stage's %zu gradient bytes in %ld buckets, "
                  "%ld ring steps, more than the %d an iteration can number; give --dp-bucket %zu or more", rank,
                  runcfg_dp_bucket(cfg), params * sizeof(float), keys / steps, keys,
                  ALLREDUCE_MB_END - ALLREDUCE_MB_BASE, sizeof(float) * ((params + (size_t)cap - 1) / (size_t)cap));
}

/* --dp: the ring of this stage's replicas, in replica order. */
static int dp_ring(const runcfg_t *cfg, int rank, transport_t *t, allreduce_t *ar, char *err, size_t errlen)
{
    int *ranks = malloc((size_t)cfg->dp * sizeof *ranks);
    if (!ranks)
        return pn_err(err, errlen, -ENOMEM, "rank %d: out of memory", rank);
    for (int d = 0; d < cfg->dp; d++)
        ranks[d] = runcfg_rank_of(cfg, d, runcfg_stage_of(cfg, rank));
    allreduce_params_t ap = {t, cfg->dp, runcfg_replica(cfg, rank), ranks, runcfg_dp_bucket(cfg), cfg->timeout};
    char e[256];
    int rc = allreduce_init(ar, &ap, e, sizeof e);
    free(ranks);
    return rc ? pn_err(err, errlen, rc, "rank %d: %s", rank, e) : 0;
}

int stage_run(const stage_params_t *p, stage_summary_t *out, char *err, size_t errlen)
{
    const runcfg_t *cfg = p->cfg;
    int P = runcfg_world(cfg), rank = p->rank, rc; /* P: every process of the job (D x stages) */
    transport_t t = {0};
    allreduce_t ar = {0};
    boot_t *b = NULL;
    model_stage_t *st = NULL, **chunks = NULL;
    int st_ready = 0, v = 0;
    exec_result_t r = {0};
    char *report = NULL;
    stage_summary_t sum = {0};
    double clock_offset = 0; /* read by the shim at every message */
    sched_spec_t spec = {cfg->schedule, cfg->stages, cfg->micro_batches, cfg->slack, cfg->chunks};
    if (errlen)
        err[0] = '\0';   /* a failure always leaves its text: see the end */
    if ((rc = sched_spec_check(&spec, &v, err, errlen)) != 0)
        return rc;
    if (!(st = calloc((size_t)v, sizeof *st)) || !(chunks = calloc((size_t)v, sizeof *chunks))) {
        free(st);
        return pn_err(err, errlen, -ENOMEM, "out of memory");
    }
    for (int j = 0; j < v; j++)
        chunks[j] = &st[j];
    const void *blob = "";
    size_t bloblen = 0;
    if (P > 1 && (rc = transport_make(p, &clock_offset, &t, err, errlen)) != 0)
        goto out;
    if (P > 1)
        t.ops->address(t.impl, &blob, &bloblen);
    boot_params_t bp = {.rank = rank, .size = P, .port = p->port, .listen_fd = p->listen_fd, .token = p->token,
                        .config_hash = runcfg_hash(cfg), .timeout = cfg->timeout < 60 ? cfg->timeout : 60};
    snprintf(bp.host, sizeof bp.host, "%s", p->host);
    if ((rc = boot_open(&bp, blob, bloblen, &b, err, errlen)) != 0)
        goto out;
    fault_point(rank, FAULT_AT_BOOT, 0);
    clock_offset = boot_clock_offset(b, NULL);
    if ((rc = peers_connect(cfg, rank, b, &t, err, errlen)) != 0)
        goto fail_all;
    if (P > 1 && (rc = ctrl_watch(b, on_peer_fail, &t)) != 0) {
        snprintf(err, errlen, "rank %d: control-plane watcher: %s", rank, strerror(-rc));
        goto fail_all;
    }
    if ((rc = model_make(cfg, rank, st, &st_ready, err, errlen)) != 0)
        goto fail_all;
    if (cfg->dp > 1 && ((rc = dp_keys_check(cfg, rank, st, v, err, errlen)) != 0 ||
                        (rc = dp_ring(cfg, rank, &t, &ar, err, errlen)) != 0))
        goto fail_all;
    exec_params_t ep = {.cfg = cfg, .st = st, .chunks = v > 1 ? chunks : NULL, .n_chunks = v > 1 ? v : 0,
                        .t = P > 1 ? &t : NULL, .boot = b, .stage = runcfg_stage_of(cfg, rank),
                        .rank_base = runcfg_rank_of(cfg, runcfg_replica(cfg, rank), 0), .dp = cfg->dp > 1 ? &ar : NULL};
    if ((rc = exec_run(&ep, &r, err, errlen)) != 0)
        goto fail_all;
    model_account_t acc;
    model_account_all(st, v, &acc);
    model_mem_kind_t kind;
    size_t mem = model_stage_peak_mem(&st[0], &kind);
    for (int j = 1; j < v && kind == MODEL_MEM_DEVICE; j++) /* chunks: their device memory together (RSS is the process's) */
        mem += model_stage_peak_mem(&st[j], &kind);
    stage_rank_t me = {.peak_mem = mem, .mem_kind = kind, .skipped = r.skipped, .fwd_flops = acc.fwd_flops, .bwd_flops = acc.bwd_flops,
                       .peak_flops = acc.peak_flops, .wait_wall = r.wait_wall, .wait_cpu = r.wait_cpu,
                       .run_wall = r.run_wall, .run_cpu = r.run_cpu, .params = acc.params};
    size_t replen = 0;
    if (!(report = report_build(&me, &r, &replen))) {
        snprintf(err, errlen, "rank %d: out of memory for the final report", rank);
        rc = -ENOMEM;
        goto fail_all;
    }
    if ((rc = ctrl_finish(b, report, replen, cfg->timeout, err, errlen)) != 0)
        goto out;
    if (P > 1)
        transport_quiesce(&t);
    if (rank == 0 && p->reports_out && (rc = reports_write(b, P, p->reports_out)) != 0) {
        snprintf(err, errlen, "rank 0: cannot hand the reports to the launcher: %s", strerror(-rc));
        goto out;
    }
    if (rank == 0 && (rc = summary_build(&sum, cfg, gathered_get, b, err, errlen)) != 0)
        goto out;
    if (rank == 0)
        *out = sum;
    goto out;
fail_all:
    /* A neighbour that vanished may have given up because of another rank: the control
     * plane's first failure says which (it is in the text when it is not this one's). */
    if (P > 1 && b && (rc == -ECONNRESET || rc == -ECANCELED || rc == -EPIPE)) {
        char why[512];
        int first = ctrl_wait_failure(b, 1.0, why, sizeof why);
        size_t n = strlen(err);
        if (first >= 0 && first != rank && names_another_rank(why, err))
            snprintf(err + n, errlen > n ? errlen - n : 0, "; the first failure: %s", why);
    }
    ctrl_abort(b, err);
out:
    if (rc)
        stage_summary_destroy(&sum);
    free(report);
    exec_result_destroy(&r);
    allreduce_destroy(&ar);
    transport_destroy(&t);
    for (int j = 0; j < st_ready; j++)
        model_stage_destroy(&st[j]);
    free(st);
    free(chunks);
    boot_close(b);
    if (rc && errlen && !err[0])   /* the caller exits 1 on it and must say why */
        snprintf(err, errlen, "rank %d failed: %s (no further reason given)", rank, strerror(rc < 0 ? -rc : rc));
    return rc;
}
