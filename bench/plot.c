/* gnuplot plots. Data and script are written first (atomically), then gnuplot renders
 * each terminal to a temporary name that is renamed on success, so an interrupted or
 * failed render never leaves a half image under the final name. */
#include "bench/plot.h"
#include "common/err.h"

#include "bench/chrome.h"
#include "bench/csvio.h"
#include "bench/metrics.h"
#include "bench/table.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs `gnuplot SCRIPT` in dir with stdout and stderr to dir/gnuplot.log; 0 when it exits 0. */
static int run_gnuplot(const char *dir, const char *script, char *err, size_t errlen)
{
    pid_t pid = fork();
    if (pid < 0) {
        int rc = -errno;
        return pn_err(err, errlen, rc, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        if (chdir(dir) != 0)
            _exit(126);
        FILE *log = freopen("gnuplot.log", "w", stdout);
        if (log)
            dup2(fileno(stdout), 2);
        execlp("gnuplot", "gnuplot", script, (char *)NULL);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -errno;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        return pn_err(err, errlen, -EIO, "gnuplot %s/%s failed (status %d); see %s/gnuplot.log", dir, script,
             WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), dir);
    }
    return 0;
}

int plot_gnuplot_found(void)
{
    FILE *p = popen("gnuplot -e 'set terminal' 2>&1", "r");
    if (!p)
        return 0;
    char line[256];
    int png = 0, svg = 0;
    while (fgets(line, sizeof line, p)) {
        char word[64];
        if (sscanf(line, " %63s", word) == 1) {
            png |= !strcmp(word, "pngcairo");
            svg |= !strcmp(word, "svg");
        }
    }
    return pclose(p) == 0 && png && svg;
}

/* Writes NAME.dat and NAME.gp (whose body draws to the terminal set before it), renders
 * NAME.png and NAME.svg, and renames them into place. */
static int render(const char *dir, const char *name, const char *data, size_t dlen, const char *body,
                  int width, int height, char *err, size_t errlen)
{
    char pdir[4096], path[4200];
    snprintf(pdir, sizeof pdir, "%s/plots", dir);
    if (mkdir(pdir, 0755) != 0 && errno != EEXIST) {
        int rc = -errno;
        return pn_err(err, errlen, rc, "%s: cannot create: %s", pdir, strerror(errno));
    }
    snprintf(path, sizeof path, "%s/%s.dat", pdir, name);
    int rc = csvio_file_write_atomic(path, data, dlen, err, errlen);
    if (rc)
        return rc;
    char *script = NULL;
    size_t slen = 0;
    FILE *f = open_memstream(&script, &slen);
    if (!f)
        return -ENOMEM;
    fprintf(f, "# %s: written by pipenem (report regenerates it); run `gnuplot %s.gp` in this folder\n"
               "set encoding utf8\n",
            name, name);
    fprintf(f, "set terminal pngcairo size %d,%d font 'sans,10'\nset output '%s.png.tmp'\n%s\nunset output\n",
            width, height, name, body);
    fprintf(f, "set terminal svg size %d,%d font 'sans,10'\nset output '%s.svg.tmp'\n%s\nunset output\n",
            width, height, name, body);
    fclose(f);
    snprintf(path, sizeof path, "%s/%s.gp", pdir, name);
    rc = csvio_file_write_atomic(path, script, slen, err, errlen);
    free(script);
    if (rc)
        return rc;
    char gp[300];
    snprintf(gp, sizeof gp, "%s.gp", name);
    rc = run_gnuplot(pdir, gp, err, errlen);
    static const char *const ext[] = {"png", "svg"};
    for (int i = 0; i < 2; i++) {
        char tmp[4300], fin[4300];
        snprintf(tmp, sizeof tmp, "%s/%s.%s.tmp", pdir, name, ext[i]);
        snprintf(fin, sizeof fin, "%s/%s.%s", pdir, name, ext[i]);
        if (!rc && rename(tmp, fin) != 0) {
            rc = -errno;
            pn_err(err, errlen, 0, "%s: cannot rename: %s", tmp, strerror(errno));
        }
        unlink(tmp);
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s/gnuplot.log", pdir);
        unlink(path);
    }
    return rc;
}

/* A plot being written: its data (NAME.dat) and its script body, both in memory. */
typedef struct {
    char *data, *body;
    size_t dlen, blen;
    FILE *d, *b;
} plot_text_t;

static int text_open(plot_text_t *t)
{
    memset(t, 0, sizeof *t);
    t->d = open_memstream(&t->data, &t->dlen);
    t->b = open_memstream(&t->body, &t->blen);
    return t->d && t->b ? 0 : -ENOMEM;
}

/* Closes both streams, renders NAME when they hold blocks, frees the text (also after a
 * failed text_open; a second call does nothing). */
static int text_render(plot_text_t *t, int blocks, const char *dir, const char *name, int width, int height,
                       char *err, size_t errlen)
{
    int bad = (t->d && fclose(t->d)) | (t->b && fclose(t->b)) | !t->d | !t->b;
    int rc = bad ? -ENOMEM : blocks ? render(dir, name, t->data, t->dlen, t->body, width, height, err, errlen) : 0;
    free(t->data);
    free(t->body);
    memset(t, 0, sizeof *t);
    return rc;
}

/* A label safe inside a gnuplot single-quoted string. */
static void gp_quote(char *out, size_t len, const char *s)
{
    size_t k = 0;
    for (; *s && k + 2 < len; s++) {
        if (*s == '\'')
            out[k++] = '\'';
        out[k++] = *s;
    }
    out[k] = '\0';
}

int plot_iteration_time(const results_t *r, const char *dir, char *err, size_t errlen)
{
    if (!r->n_cells)
        return 0;
    size_t n = r->n_cells, ns, nm, np;
    const char **sched = calloc(n, sizeof *sched);
    int *mbs = calloc(n, sizeof *mbs);
    const results_cell_t **prof = calloc(n, sizeof *prof);
    plot_text_t t;
    int rc = text_open(&t);
    FILE *d = t.d, *b = t.b;
    if (!sched || !mbs || !prof || rc) {
        rc = -ENOMEM;
        goto out;
    }
    table_axes(r, sched, &ns, mbs, &nm, prof, &np);
    fprintf(b, "set title 'Iteration time per network setting' noenhanced\nset ylabel 'iteration time (s)'\n"
               "set xlabel 'network setting'\nset grid ytics\nset key outside right top noenhanced\n"
               "set yrange [0:*]\nset xrange [-0.5:%zu.5]\nset xtics (",
            np - 1);
    for (size_t p = 0; p < np; p++) {
        char q[300];
        gp_quote(q, sizeof q, prof[p]->label);
        fprintf(b, "%s'%s' %zu", p ? ", " : "", q, p);
    }
    fputs(") noenhanced\nset xtics rotate by -20\nplot ", b);
    int block = 0;
    for (size_t a = 0; a < ns; a++)
        for (size_t m = 0; m < nm; m++) {
            int rows = 0;
            for (size_t p = 0; p < np; p++) {
                const results_cell_t *c = table_cell_find(r, sched[a], mbs[m], prof[p]->profile);
                if (!c || isnan(c->iter_median))
                    continue;
                if (!rows)
                    fprintf(d, "# %s, micro batch size %d: x median min max\n", sched[a], mbs[m]);
                fprintf(d, "%zu %.9g %.9g %.9g\n", p, c->iter_median, c->iter_min, c->iter_max);
                rows++;
            }
            if (!rows)
                continue;
            fputs("\n\n", d);
            fprintf(b, "%s'iteration_time.dat' index %d using 1:2:3:4 with yerrorlines lw 2 pt 7 dt %d "
                       "title '%s, micro batch %d'",
                    block ? ", \\\n     " : "", block, a % 2 ? 2 : 1, sched[a], mbs[m]);
            block++;
        }
    fputc('\n', b);
    rc = text_render(&t, block, dir, "iteration_time", 900, 520, err, errlen);
out:
    text_render(&t, 0, dir, NULL, 0, 0, NULL, 0);
    free(sched);
    free(mbs);
    free(prof);
    return rc;
}

/* The timeline's block kinds: one data block and style each. */
static const struct {
    const char *op, *title, *color;
    double lo, hi; /* vertical extent around the stage's row */
} kinds[] = {
    {"FWD", "forward", "#4e79a7", -0.28, 0.28},
    {"BWD", "backward", "#59a14f", -0.28, 0.28},
    {"OPT_STEP", "optimizer step", "#9c755f", -0.28, 0.28},
    {"SEND_", "transfer (sent .. received)", "#f28e2b", 0.31, 0.43},
    {"RECV_", "receive (posted .. arrived)", "#e15759", -0.43, -0.31},
};
#define N_KINDS (sizeof kinds / sizeof *kinds)

static int kind_of(const char *op)
{
    for (size_t k = 0; k < N_KINDS; k++)
        if (kinds[k].op[strlen(kinds[k].op) - 1] == '_' ? !strncmp(op, kinds[k].op, strlen(kinds[k].op))
                                                         : !strcmp(op, kinds[k].op))
            return (int)k;
    return -1;
}

/* The end of the receive matching send `o` on the neighbour it goes to (the arrival,
 * when the receiver was waiting), or o->end when there is none. */
static double arrival_of(const results_t *r, const results_op_t *o)
{
    int grad = !strcmp(o->op, "SEND_GRAD");
    const char *want = grad ? "RECV_GRAD" : "RECV_ACT";
    int peer = o->rank + (grad ? -1 : 1);
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *q = &r->ops[i];
        if (q->cell == o->cell && q->repeat == o->repeat && q->iteration == o->iteration && q->rank == peer &&
            q->micro_batch == o->micro_batch && !strcmp(q->op, want))
            return q->end;
    }
    return o->end;
}

int plot_timeline(const results_t *r, int cell, int iteration, const char *dir, char *err, size_t errlen)
{
    const results_cell_t *c = results_cell_find(r, cell);
    int it;
    if (!c || chrome_iteration_pick(r, cell, iteration, &it)) {
        return pn_err(err, errlen, -ENOENT, "timeline: cell %d has no traced ops", cell);
    }
    double t0 = INFINITY, t1 = -INFINITY;
    int mb_max = 0;
    for (size_t i = 0; i < r->n_ops; i++) {
        const results_op_t *o = &r->ops[i];
        if (o->cell == cell && o->repeat == 0 && o->iteration == it) {
            t0 = fmin(t0, o->start);
            t1 = fmax(t1, o->end);
            mb_max = o->micro_batch > mb_max ? o->micro_batch : mb_max;
        }
    }
    plot_text_t t;
    if (text_open(&t))
        return text_render(&t, 0, dir, NULL, 0, 0, NULL, 0), -ENOMEM;
    FILE *d = t.d, *b = t.b;
    char q[300], num[64];
    gp_quote(q, sizeof q, c->label);
    table_format_sig3(t1 - t0, num, sizeof num);
    /* The span of the iteration's ops on all stages, which overlaps its neighbours (a stage
     * starts the next one before the pipeline drains): not the table's iteration time. */
    fprintf(b, "set title '%s, micro batch %d, %s: ops of iteration %d on all stages, %s s first start to last end "
               "(overlaps its neighbours; not the table iteration time)' noenhanced\n"
               "set xlabel 'time from the first op of the iteration on any stage (s)'\nset yrange [%d.5:-0.5]\n"
               "set xrange [0:%.9g]\nset ytics (",
            c->schedule, c->micro_batch_size, q, it, num, c->stages - 1, (t1 - t0) * 1.02);
    for (int s = 0; s < c->stages; s++)
        fprintf(b, "%s'stage %d' %d", s ? ", " : "", s, s);
    fputs(")\nset grid xtics\nset key outside bottom center horizontal noenhanced\n"
          "set style fill solid 1.0 noborder\n", b);
    int blocks = 0;
    const char *sep = "plot ";
    for (size_t k = 0; k < N_KINDS; k++) {
        int rows = 0;
        for (size_t i = 0; i < r->n_ops; i++) {
            const results_op_t *o = &r->ops[i];
            if (o->cell != cell || o->repeat != 0 || o->iteration != it || kind_of(o->op) != (int)k)
                continue;
            double xs = o->start - t0, xe = o->end - t0;
            if (!strncmp(o->op, "SEND_", 5)) /* a send row is the post: draw until the data arrived */
                xe = fmax(xe, arrival_of(r, o) - t0);
            fprintf(d, "%.9g %d %.9g %.9g %.9g %.9g %d\n", 0.5 * (xs + xe), o->rank, xs, xe,
                    o->rank + kinds[k].lo, o->rank + kinds[k].hi, o->micro_batch);
            rows++;
        }
        if (!rows)
            continue;
        fputs("\n\n", d);
        fprintf(b, "%s'timeline_cell%d.dat' index %d using 1:2:3:4:5:6 with boxxyerror lc rgb '%s' title '%s'",
                sep, cell, blocks, kinds[k].color, kinds[k].title);
        sep = ", \\\n     ";
        /* Micro-batch numbers on forward and backward blocks while they fit. */
        if (k < 2 && mb_max < 16)
            fprintf(b, ", \\\n     'timeline_cell%d.dat' index %d using 1:2:(sprintf('%%d', $7)) with labels "
                       "tc rgb 'white' font 'sans,8' notitle",
                    cell, blocks);
        blocks++;
    }
    fputc('\n', b);
    char name[64];
    snprintf(name, sizeof name, "timeline_cell%d", cell);
    return text_render(&t, blocks, dir, name, 1100, 140 + 90 * c->stages, err, errlen);
}
