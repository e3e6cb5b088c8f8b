/* The text form of a plan: one rank's op list per line, as `pipenem schedule` prints
 * it, with an optional "placement NAME CHUNKS" line for plans of several chunks per rank. */
#include "schedules/sched_priv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/limits.h"
#include "common/parse.h"

enum {
    PLAN_MB_MAX = 1 << 20,     /* micro-batch numbers an op-list file may name */
    PLAN_CHUNKS_MAX = 1 << 12, /* chunks a placement line may declare */
};

/* The op tokens of one line after an optional "stage N:" / "N:" prefix; appends to
 * b and raises *max_mb. Chunks left unnamed are -1 (the caller resolves them). */
static int parse_line(char *line, int lineno, int stage, sched_opbuf_t *b, int *max_mb, char *err,
                      size_t errlen)
{
    char *colon = strchr(line, ':');
    if (colon) {
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!strncasecmp(p, "stage", 5))
            p += 5;
        char *end;
        long n = strtol(p, &end, 10);
        while (*end == ' ' || *end == '\t')
            end++;
        if (end == p || end != colon || n != stage)
            return pn_err(err, errlen, -EINVAL, "line %d: prefix '%.*s' is not 'stage %d:'", lineno,
                          (int)(colon - line), line, stage);
        line = colon + 1;
    }
    char *save = NULL;
    for (char *t = strtok_r(line, " \t,\r", &save); t; t = strtok_r(NULL, " \t,\r", &save)) {
        sched_op_t op;
        if (sched_op_parse(t, &op))
            return pn_err(err, errlen, -EINVAL,
                          "line %d (stage %d): bad op '%s' (want e.g. F3 B3 Bi3 W3 Ra3 Sa3 Rg3 Sg3 OPT, "
                          "optionally @CHUNK)", lineno, stage, t);
        /* The plan's size (and the validator's tables) follow the largest micro-batch
         * named: one token like B129999986 must not ask for gigabytes. */
        if (op.mb >= PLAN_MB_MAX)
            return pn_err(err, errlen, -EINVAL, "line %d (stage %d): micro-batch %d in '%s' exceeds %d",
                          lineno, stage, op.mb, t, PLAN_MB_MAX - 1);
        if (op.chunk >= PLAN_CHUNKS_MAX)
            return pn_err(err, errlen, -EINVAL, "line %d (stage %d): chunk %d in '%s' exceeds %d", lineno,
                          stage, op.chunk, t, PLAN_CHUNKS_MAX - 1);
        if (sched_opbuf_push(b, op.kind, op.mb, op.chunk))
            return pn_err(err, errlen, -ENOMEM, "out of memory");
        if (op.mb > *max_mb)
            *max_mb = op.mb;
    }
    return 0;
}

/* "placement NAME CHUNKS": 1 if the line is one (and parsed into *pl, *chunks), 0 if it
 * is not, negative on a malformed one. */
static int parse_placement(const char *line, int lineno, sched_place_t *pl, int *chunks, char *err,
                           size_t errlen)
{
    char word[16], name[16], num[16], extra[2];
    int n = sscanf(line, " %15s %15s %15s %1s", word, name, num, extra);
    if (n < 1 || strcasecmp(word, "placement"))
        return 0;
    int place = -1, c = 0;
    for (int i = 0; n >= 2 && i < SCHED_PLACES; i++)
        if (!strcasecmp(name, sched_place_name((sched_place_t)i)))
            place = i;
    if (n != 3 || place < 0 || pn_parse_int(num, 1, PLAN_CHUNKS_MAX, &c))
        return pn_err(err, errlen, -EINVAL, "line %d: want 'placement plain|interleaved|v CHUNKS', got '%s'",
                      lineno, line);
    *pl = (sched_place_t)place;
    *chunks = c;
    return 1;
}

/* Unnamed chunks are the rank's first chunk. */
static void resolve_chunks(sched_plan_t *p)
{
    for (int s = 0; s < p->stages; s++)
        for (size_t i = 0; i < p->n_ops[s]; i++)
            if (p->ops[s][i].chunk < 0 && p->ops[s][i].kind != SCHED_OPT_STEP)
                p->ops[s][i].chunk = sched_rank_chunk(p->place, p->stages, sched_plan_chunks(p), s, 0);
}

/* Copies the parsed lines into a plan; bufs[s].ops move into it. */
static int plan_from_lines(sched_opbuf_t *bufs, int stages, int M, sched_place_t place, int chunks,
                           sched_plan_t *out, char *err, size_t errlen)
{
    if (M < 1)
        return pn_err(err, errlen, -EINVAL, "no micro-batch named in the op lists");
    if (chunks && chunks % stages)
        return pn_err(err, errlen, -EINVAL, "placement of %d chunks over %d stages: not a whole number per stage",
                      chunks, stages);
    if (place == SCHED_PLACE_V && chunks && chunks != 2 * stages)
        return pn_err(err, errlen, -EINVAL, "placement v holds 2 chunks per stage: %d for %d stages, not %d",
                      2 * stages, stages, chunks);
    sched_plan_t p;
    if (sched_plan_alloc(stages, M, &p))
        return pn_err(err, errlen, -ENOMEM, "out of memory");
    p.place = place;
    p.chunks = chunks ? chunks : place == SCHED_PLACE_V ? 2 * stages : stages;
    for (int s = 0; s < stages; s++) {
        p.ops[s] = bufs[s].ops;
        p.n_ops[s] = bufs[s].n;
        bufs[s].ops = NULL;
    }
    resolve_chunks(&p);
    *out = p;
    return 0;
}

int sched_plan_parse(const char *text, int micro_batches, sched_plan_t *out, char *err,
                     size_t errlen)
{
    if (!text)
        return pn_err(err, errlen, -EINVAL, "no op lists");
    int rc = 0, stages = 0, max_mb = -1, lineno = 0, chunks = 0;
    sched_place_t place = SCHED_PLACE_PLAIN;
    sched_opbuf_t *bufs = NULL;
    char *copy = strdup(text);
    if (!copy)
        return pn_err(err, errlen, -ENOMEM, "out of memory");
    /* strtok_r would merge empty lines and so miscount them; split by hand. */
    for (char *line = copy, *next; line; line = next) {
        lineno++;
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        if (strspn(line, " \t\r,") == strlen(line))
            continue;
        if ((rc = parse_placement(line, lineno, &place, &chunks, err, errlen))) {
            if (rc < 0)
                goto out;
            rc = 0;
            continue;
        }
        if (stages >= PN_MAX_STAGES) {
            rc = pn_err(err, errlen, -EINVAL, "line %d: more than %d stages", lineno, PN_MAX_STAGES);
            goto out;
        }
        sched_opbuf_t *nb = realloc(bufs, (size_t)(stages + 1) * sizeof *nb);
        if (!nb) {
            rc = pn_err(err, errlen, -ENOMEM, "out of memory");
            goto out;
        }
        bufs = nb;
        bufs[stages] = (sched_opbuf_t){0};
        rc = parse_line(line, lineno, stages, &bufs[stages], &max_mb, err, errlen);
        stages++;
        if (rc)
            goto out;
    }
    if (!stages) {
        rc = pn_err(err, errlen, -EINVAL, "no op lists (one line per stage)");
        goto out;
    }
    rc = plan_from_lines(bufs, stages, micro_batches > 0 ? micro_batches : max_mb + 1, place, chunks, out,
                         err, errlen);
out:
    for (int s = 0; s < stages; s++)
        free(bufs[s].ops);
    free(bufs);
    free(copy);
    return rc;
}
