/* The sweep grid and loop. The grid is parsed with a message per bad value; the loop
 * keeps the results directory complete after every cell (CSV rewritten through a
 * temporary name, tables and plots regenerated) so that an interrupt loses at most the
 * cell that was running, and --resume measures exactly the cells that are missing. */
#include "bench/sweep.h"
#include "common/err.h"
#include "common/parse.h"

#include "bench/csvio.h"
#include "models/model.h"
#include "netem/emulator.h"
#include "pipeline/allreduce.h"
#include "pipeline/transport.h"
#include "netem/profile.h"
#include "netem/state.h"
#include "schedules/sched.h"

#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Splits a comma list into items (copied into `buf`); with `join_kv`, an item of the
 * form key=value following another key=value item belongs to it (profiles such as
 * `delay=10ms,rate=1gbit`), unless the list uses ';' between items. */
static int split_list(const char *opt, const char *text, int join_kv, char *buf, size_t buflen,
                      char *items[SWEEP_MAX_AXIS], int *n, char *err, size_t errlen)
{
    if (strlen(text) >= buflen) {
        return pn_err(err, errlen, -EINVAL, "%s: the list is too long", opt);
    }
    strcpy(buf, text);
    char sep = join_kv && strchr(text, ';') ? ';' : ',';
    int k = 0;
    char *p = buf;
    for (;;) {
        char *e = strchr(p, sep);
        if (e)
            *e = '\0';
        if (join_kv && sep == ',' && k > 0 && strchr(p, '=') && strchr(items[k - 1], '=')) {
            p[-1] = ','; /* glue back onto the previous item */
        } else {
            if (!*p) {
                return pn_err(err, errlen, -EINVAL, "%s: item %d is empty (in '%s')", opt, k + 1, text);
            }
            if (k == SWEEP_MAX_AXIS) {
                return pn_err(err, errlen, -EINVAL, "%s: more than %d items", opt, SWEEP_MAX_AXIS);
            }
            items[k++] = p;
        }
        if (!e)
            break;
        p = e + 1;
    }
    *n = k;
    return 0;
}

/* One grid axis given as a list: the option (for messages), whether key=value items
 * join (split_list), how one item is checked, and what two items must not share. */
typedef struct {
    const char *opt;
    int join_kv;
    /* Checks item i and writes its key: what is compared for repeats and named in the
     * message (ctx keeps anything else the item parses to). */
    int (*key)(const char *item, int i, char *key, size_t keylen, void *ctx, char *err, size_t errlen);
    const char *same; /* NULL: "KEY is listed twice"; else "items J and I are the same SAME (KEY)" */
} axis_t;

#define AXIS_KEY 96

static int axis_split(const axis_t *a, const char *text, char *buf, size_t buflen, char *items[SWEEP_MAX_AXIS],
                      char keys[SWEEP_MAX_AXIS][AXIS_KEY], void *ctx, int *n, char *err, size_t errlen)
{
    int rc = split_list(a->opt, text, a->join_kv, buf, buflen, items, n, err, errlen);
    for (int i = 0; !rc && i < *n; i++) {
        rc = a->key(items[i], i, keys[i], AXIS_KEY, ctx, err, errlen);
        for (int j = 0; !rc && j < i; j++) {
            if (strcmp(keys[j], keys[i]))
                continue;
            if (a->same)
                return pn_err(err, errlen, -EINVAL, "%s: items %d and %d are the same %s (%s)", a->opt, j + 1, i + 1,
                              a->same, keys[i]);
            return pn_err(err, errlen, -EINVAL, "%s: %s is listed twice (items %d and %d)", a->opt, keys[i], j + 1, i + 1);
        }
    }
    return rc;
}

static int schedule_key(const char *item, int i, char *key, size_t keylen, void *ctx, char *err, size_t errlen)
{
    (void)ctx;
    if (sched_uses_slack(item) < 0 || strlen(item) >= sizeof ((sweep_spec_t *)0)->schedules[0]) {
        return pn_err(err, errlen, -EINVAL, "--schedule: unknown schedule '%s' (item %d; known: %s)", item, i + 1, sched_names());
    }
    snprintf(key, keylen, "'%s'", item);
    return 0;
}

int sweep_schedules_parse(const char *text, sweep_spec_t *s, char *err, size_t errlen)
{
    static const axis_t axis = {"--schedule", 0, schedule_key, NULL};
    char buf[1024], *items[SWEEP_MAX_AXIS], keys[SWEEP_MAX_AXIS][AXIS_KEY];
    int n;
    int rc = axis_split(&axis, text, buf, sizeof buf, items, keys, NULL, &n, err, errlen);
    if (rc)
        return rc;
    for (int i = 0; i < n; i++)
        snprintf(s->schedules[i], sizeof s->schedules[i], "%s", items[i]);
    s->n_sched = n;
    return 0;
}

static int mbs_key(const char *item, int i, char *key, size_t keylen, void *ctx, char *err, size_t errlen)
{
    int *v = ctx;
    if (pn_parse_int(item, 1, 1 << 20, &v[i])) {
        return pn_err(err, errlen, -EINVAL, "--micro-batch-sizes: '%s' (item %d) is not a positive whole number", item, i + 1);
    }
    snprintf(key, keylen, "%d", v[i]);
    return 0;
}

/* A list of whole numbers into out[] (*n of them), each checked by axis->key. */
static int int_axis_parse(const axis_t *axis, const char *text, int *out, int *n, char *err, size_t errlen)
{
    char buf[1024], *items[SWEEP_MAX_AXIS], keys[SWEEP_MAX_AXIS][AXIS_KEY];
    int k, v[SWEEP_MAX_AXIS];
    int rc = axis_split(axis, text, buf, sizeof buf, items, keys, v, &k, err, errlen);
    if (rc)
        return rc;
    memcpy(out, v, (size_t)k * sizeof *v);
    *n = k;
    return 0;
}

int sweep_mbs_parse(const char *text, sweep_spec_t *s, char *err, size_t errlen)
{
    static const axis_t axis = {"--micro-batch-sizes", 0, mbs_key, NULL};
    return int_axis_parse(&axis, text, s->mbs, &s->n_mbs, err, errlen);
}

static int dp_key(const char *item, int i, char *key, size_t keylen, void *ctx, char *err, size_t errlen)
{
    int *v = ctx;
    if (pn_parse_int(item, 1, PN_MAX_WORLD, &v[i]))
        return pn_err(err, errlen, -EINVAL, "--dp-sizes: '%s' (item %d) is not a replica count 1..%d", item, i + 1,
                      PN_MAX_WORLD);
    snprintf(key, keylen, "%d", v[i]);
    return 0;
}

int sweep_dp_sizes_parse(const char *text, sweep_spec_t *s, char *err, size_t errlen)
{
    static const axis_t axis = {"--dp-sizes", 0, dp_key, NULL};
    int rc = int_axis_parse(&axis, text, s->dps, &s->n_dp, err, errlen);
    if (!rc)
        s->dp = s->dps[0];
    return rc;
}

static int profile_key(const char *item, int i, char *key, size_t keylen, void *ctx, char *err, size_t errlen)
{
    char (*label)[128] = ctx;
    netem_profile_t p;
    char why[256] = "";
    if (netem_profile_parse(item, &p, why, sizeof why)) {
        return pn_err(err, errlen, -EINVAL, "--profiles: item %d '%s': %s", i + 1, item, why);
    }
    if (netem_profile_format(&p, key, keylen) < 0 || netem_profile_label(&p, label[i], sizeof label[i]) < 0) {
        return pn_err(err, errlen, -EINVAL, "--profiles: item %d '%s' is too long to print", i + 1, item);
    }
    return 0;
}

int sweep_profiles_parse(const char *text, sweep_spec_t *s, char *err, size_t errlen)
{
    static const axis_t axis = {"--profiles", 1, profile_key, "profile"};
    char buf[4096], *items[SWEEP_MAX_AXIS], canon[SWEEP_MAX_AXIS][AXIS_KEY], label[SWEEP_MAX_AXIS][128];
    int n;
    int rc = axis_split(&axis, text, buf, sizeof buf, items, canon, label, &n, err, errlen);
    if (rc)
        return rc;
    for (int i = 0; i < n; i++) {
        memcpy(s->profiles[i], canon[i], sizeof canon[i]);
        memcpy(s->labels[i], label[i], sizeof label[i]);
    }
    s->n_prof = n;
    return 0;
}

int sweep_straggler_parse(const char *text, int *rank, double *factor, char *err, size_t errlen)
{
    const char *colon = strchr(text, ':');
    char *end;
    if (!colon) {
        return pn_err(err, errlen, -EINVAL, "--straggler: '%s' is not RANK:FACTOR (e.g. 1:1.5)", text);
    }
    errno = 0;
    long r = strtol(text, &end, 10);
    if (end != colon || end == text || errno || r < 0 || r >= RESULTS_MAX_STAGES) {
        return pn_err(err, errlen, -EINVAL, "--straggler: rank '%.*s' is not a stage number (0..%d)", (int)(colon - text), text,
             RESULTS_MAX_STAGES - 1);
    }
    double f = strtod(colon + 1, &end);
    if (*end || end == colon + 1 || !isfinite(f) || f <= 0) {
        return pn_err(err, errlen, -EINVAL, "--straggler: factor '%s' is not a positive number (1.5 = 1.5x slower compute)", colon + 1);
    }
    *rank = (int)r;
    *factor = f;
    return 0;
}

int sweep_spec_default(sweep_spec_t *s, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    snprintf(s->model, sizeof s->model, "gpt3-small");
    s->stages = 3;
    s->batch_size = 64;
    s->seq_len = 2048;
    s->iters = 10;
    s->warmup = 1;
    s->repeats = 1;
    s->slack = -1; /* auto: each 1f1b-slack cell's own K (runcfg) */
    snprintf(s->compute, sizeof s->compute, "emulate:v100");
    snprintf(s->emulator, sizeof s->emulator, "auto");
    snprintf(s->transport, sizeof s->transport, "ucx");
    s->dp = 1;
    s->dps[0] = 1; /* --dp-sizes: one replica */
    s->n_dp = 1;
    s->straggler_rank = -1;
    s->straggler_factor = 1.0;
    int rc = sweep_schedules_parse("gpipe,1f1b", s, err, errlen);
    if (!rc)
        rc = sweep_mbs_parse("1,2,4", s, err, errlen);
    if (!rc)
        rc = sweep_profiles_parse("default,1ms/5Gbps,5ms/2Gbps,10ms/1Gbps", s, err, errlen);
    return rc;
}

int sweep_spec_check(const sweep_spec_t *s, char *err, size_t errlen)
{
    if (s->stages < 1 || s->stages > RESULTS_MAX_STAGES) {
        return pn_err(err, errlen, -EINVAL, "--stages %d: must be 1..%d", s->stages, RESULTS_MAX_STAGES);
    }
    if (s->batch_size < 1) {
        return pn_err(err, errlen, -EINVAL, "--batch-size %d: must be positive", s->batch_size);
    }
    if (s->seq_len < 1) {
        return pn_err(err, errlen, -EINVAL, "--seq-len %d: must be positive", s->seq_len);
    }
    if (s->iters < 1 || s->warmup < 0) {
        return pn_err(err, errlen, -EINVAL, "--iters %d --warmup %d: need at least one measured iteration and no negative warm-up",
             s->iters, s->warmup);
    }
    if (s->repeats < 1) {
        return pn_err(err, errlen, -EINVAL, "--repeat %d: must be at least 1", s->repeats);
    }
    if (s->slack < -1) {
        return pn_err(err, errlen, -EINVAL, "--slack %d: must be 0 or more, or auto", s->slack);
    }
    for (int i = 0; i < s->n_mbs; i++)
        if (s->batch_size % s->mbs[i]) {
            return pn_err(err, errlen, -EINVAL, "--micro-batch-sizes: %d does not divide --batch-size %d", s->mbs[i], s->batch_size);
        }
    if (s->straggler_rank >= s->stages) {
        return pn_err(err, errlen, -EINVAL, "--straggler %d:%g: there are only stages 0..%d", s->straggler_rank,
             s->straggler_factor, s->stages - 1);
    }
    model_config_t mc;
    char why[512];
    if (model_config_get(s->model, &mc, why, sizeof why)) {
        return pn_err(err, errlen, -EINVAL, "--model: %s", why);
    }
    if (model_compute_check(s->compute, why, sizeof why)) {
        return pn_err(err, errlen, -EINVAL, "--compute: %s", why);
    }
    if (strcmp(s->emulator, "auto") && !netem_emulator_find(s->emulator)) {
        return pn_err(err, errlen, -EINVAL, "--emulator: unknown emulator '%s' (known: %s)", s->emulator, netem_emulator_names());
    }
    if (transport_kind_check(s->transport, s->compute, s->emulator, why, sizeof why))
        return pn_err(err, errlen, -EINVAL, "%s", why);
    for (int i = 0; i < s->n_dp; i++)
        if ((long)s->dps[i] * s->stages > PN_MAX_WORLD)
            return pn_err(err, errlen, -EINVAL, "--dp-sizes: %d replicas x %d stages = %ld processes; at most %d",
                          s->dps[i], s->stages, (long)s->dps[i] * s->stages, PN_MAX_WORLD);
    int replicated = 0;
    for (int i = 0; i < s->n_dp; i++)
        replicated |= s->dps[i] > 1;
    if (s->dp_bucket && !replicated)
        return pn_err(err, errlen, -EINVAL, "--dp-bucket applies to --dp D with D > 1, and no cell has more than "
                      "one replica (give --dp-sizes with a count above 1)");
    if (!s->n_sched || !s->n_mbs || !s->n_prof || !s->n_dp) {
        return pn_err(err, errlen, -EINVAL, "the grid is empty");
    }
    return 0;
}

int sweep_cells(const sweep_spec_t *s)
{
    return s->n_sched * s->n_prof * s->n_mbs * (s->n_dp > 0 ? s->n_dp : 1);
}

void sweep_cell_config(const sweep_spec_t *s, int i, results_cell_t *c)
{
    /* the replica count outermost: one replica's grid keeps its cell numbers */
    int per_dp = s->n_sched * s->n_prof * s->n_mbs, d = i / per_dp;
    int m = i % s->n_mbs, p = (i / s->n_mbs) % s->n_prof, a = (i % per_dp) / (s->n_mbs * s->n_prof);
    results_cell_clear(c, i);
    snprintf(c->schedule, sizeof c->schedule, "%s", s->schedules[a]);
    c->micro_batch_size = s->mbs[m];
    snprintf(c->profile, sizeof c->profile, "%s", s->profiles[p]);
    snprintf(c->label, sizeof c->label, "%s", s->labels[p]);
    snprintf(c->model, sizeof c->model, "%s", s->model);
    c->stages = s->stages;
    c->batch_size = s->batch_size;
    c->seq_len = s->seq_len;
    c->micro_batches = s->batch_size / s->mbs[m];
    c->iters = s->iters;
    c->warmup = s->warmup;
    c->repeats = s->repeats;
    snprintf(c->compute, sizeof c->compute, "%s", s->compute);
    snprintf(c->emulator, sizeof c->emulator, "%s", s->emulator);
    snprintf(c->transport, sizeof c->transport, "%s", s->transport);
    c->straggler_rank = s->straggler_rank;
    c->straggler_factor = s->straggler_factor;
    c->dp = s->n_dp > 0 ? s->dps[d] : 1;
    c->dp_overlap = c->dp > 1 && s->dp_overlap;
    snprintf(c->net_dp, sizeof c->net_dp, "%s", c->dp > 1 ? s->net_dp : "");
    c->dp_bucket_bytes = c->dp > 1 ? (int)(s->dp_bucket ? s->dp_bucket : ALLREDUCE_BUCKET_DEFAULT) : 0;
    c->global_batch = c->dp * s->batch_size;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void rm_tree(const char *path)
{
    /* Nothing to do when it is not there; a leftover is only disk space. */
    (void)nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Cells read back must be the cells this grid would make, or --resume would mix sweeps. */
static int check_resumed(const sweep_spec_t *s, results_t *r, char *err, size_t errlen)
{
    int total = sweep_cells(s);
    for (size_t i = 0; i < r->n_cells; i++) {
        const results_cell_t *c = &r->cells[i];
        results_cell_t want;
        if (c->cell < 0 || c->cell >= total) {
            return pn_err(err, errlen, -EINVAL, "runs.csv has cell %d but this sweep has cells 0..%d", c->cell, total - 1);
        }
        sweep_cell_config(s, c->cell, &want);
        if (strcmp(c->schedule, want.schedule) || c->micro_batch_size != want.micro_batch_size ||
            strcmp(c->profile, want.profile) || strcmp(c->model, want.model) || c->stages != want.stages ||
            c->batch_size != want.batch_size || c->seq_len != want.seq_len || c->dp != want.dp ||
            c->dp_bucket_bytes != want.dp_bucket_bytes) {
            return pn_err(err, errlen, -EINVAL, "runs.csv cell %d is %s, micro-batch size %d, %s (%s, %d stages, batch %d, seq %d, "
                 "dp %d, bucket %d B) but this sweep's cell %d is %s, micro-batch size %d, %s (%s, %d stages, "
                 "batch %d, seq %d, dp %d, bucket %d B)", c->cell, c->schedule, c->micro_batch_size, c->profile, c->model,
                 c->stages, c->batch_size, c->seq_len, c->dp, c->dp_bucket_bytes, c->cell, want.schedule,
                 want.micro_batch_size, want.profile, want.model, want.stages, want.batch_size, want.seq_len, want.dp,
                 want.dp_bucket_bytes);
        }
    }
    /* Ops or iterations of a cell without a runs.csv row are from an interrupted cell. */
    for (int cell = 0; cell < total; cell++)
        if (!results_cell_find(r, cell))
            results_cell_remove(r, cell);
    return 0;
}

static int write_all(const results_t *r, const sweep_loop_t *loop, char *err, size_t errlen)
{
    int rc = results_write(r, loop->dir, err, errlen);
    if (!rc && loop->report)
        rc = report_write(r, loop->dir, loop->report, NULL, err, errlen);
    return rc;
}

int sweep_run(const sweep_spec_t *s, const sweep_loop_t *loop, results_t *r, sweep_summary_t *sum,
              char *err, size_t errlen)
{
    sweep_summary_t out = {0};
    int rc = check_resumed(s, r, err, errlen);
    if (rc)
        return rc;
    /* A sweep (or run) killed by SIGKILL could not undo its namespaces and qdiscs; their
     * records name a dead owner: undo them first, as `pipenem netem clear --all` would
     * (live runs' records are left alone). Without access to the state directory there
     * is nothing this sweep could undo anyway. */
    int undone = 0, live = 0;
    char uerr[256];
    if (netem_state_undo_all(&undone, &live, NULL, NULL, uerr, sizeof uerr) == 0 && undone > 0)
        fprintf(stderr, "pipenem sweep: undid %d change(s) a killed run left behind (state files in %s)\n", undone,
                netem_state_dir());
    int total = sweep_cells(s), todo = 0;
    for (int i = 0; i < total; i++)
        todo += !results_cell_find(r, i);
    out.skipped = total - todo;
    results_sort(r);
    rc = write_all(r, loop, err, errlen);
    if (rc)
        return rc;
    double spent = 0;
    int position = 0;
    char work[4096];
    snprintf(work, sizeof work, "%s/.cells", loop->dir);
    for (int i = 0; i < total && !rc; i++) {
        if (results_cell_find(r, i))
            continue;
        if (loop->stop && *loop->stop) {
            out.interrupted = 1;
            break;
        }
        position++;
        results_cell_t cell;
        sweep_cell_config(s, i, &cell);
        char cdir[4200], why[1024] = "";
        snprintf(cdir, sizeof cdir, "%s/cell%d", work, i);
        rm_tree(cdir);
        if ((mkdir(work, 0755) && errno != EEXIST) || mkdir(cdir, 0755)) {
            rc = -errno;
            pn_err(err, errlen, 0, "%s: cannot create: %s", cdir, strerror(errno));
            break;
        }
        double t0 = now();
        int st = loop->measure(loop->measure_ctx, s, &cell, cdir, loop->stop, r, why, sizeof why);
        double wall = now() - t0;
        rm_tree(cdir);
        if (st == 0) {
            cell.wall = wall;
            st = results_cell_add(r, &cell);
        }
        if (st == -ENOSYS) { /* the machine or build cannot measure at all: stop here */
            results_cell_remove(r, i);
            rc = st;
            pn_err(err, errlen, 0, "%s", why);
            break;
        }
        if (st) {
            results_cell_remove(r, i); /* nothing half-measured reaches the files */
            if (st == -EINTR || (loop->stop && *loop->stop))
                out.interrupted = 1;
            else
                out.failed++;
        } else {
            out.measured++;
            spent += wall;
            results_sort(r);
            rc = write_all(r, loop, err, errlen);
        }
        int left = todo - position;
        double eta = out.measured ? spent / out.measured * left : NAN;
        if (loop->progress)
            loop->progress(loop->progress_ctx, &cell, position, todo, eta, st, st ? why : "");
        if (out.interrupted)
            break;
    }
    rmdir(work);
    if (sum)
        *sum = out;
    return rc;
}

int sweep_args_write(const char *dir, int argc, char **argv, char *err, size_t errlen)
{
    return results_argv_write(dir, "sweep.args", argc, argv, RESULTS_ARGV_LINES, err, errlen);
}

int sweep_args_read(const char *dir, int *argc, char ***argv, char *err, size_t errlen)
{
    char path[4096], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/sweep.args", dir);
    int rc = csvio_file_read(path, &text, &len, err, errlen);
    if (rc)
        return rc;
    if (len && text[len - 1] != '\n') {
        pn_err(err, errlen, 0, "%s: the last line is cut off (no line break)", path);
        free(text);
        return -EINVAL;
    }
    int n = 0;
    for (size_t i = 0; i < len; i++)
        n += text[i] == '\n';
    /* One block: the pointer array followed by the text. */
    char **v = malloc((size_t)(n + 1) * sizeof *v + len + 1);
    if (!v) {
        free(text);
        return -ENOMEM;
    }
    char *copy = (char *)(v + n + 1);
    memcpy(copy, text, len + 1);
    free(text);
    int k = 0;
    for (char *p = copy; k < n; k++) {
        char *nl = strchr(p, '\n');
        *nl = '\0';
        v[k] = p;
        p = nl + 1;
    }
    v[n] = NULL;
    *argc = n;
    *argv = v;
    return 0;
}
