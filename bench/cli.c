/* Shared command-line plumbing: the subcommand table, each command's getopt table and
 * --help text built from its option sections, deprecated spellings, uniform usage errors. */
#include "bench/cli.h"
#include "common/parse.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "models/model.h"
#include "models/precision.h"
#include "netem/emulator.h"
#include "pipeline/runcfg.h"
#include "pipeline/transport.h"
#include "schedules/sched.h"

const cli_cmd_t cli_cmds[] = {
    {"run", "run one configuration: fork the stage processes here, print per-iteration times", cmd_run},
    {"sweep", "sweep schedules x micro-batch sizes x network profiles, write tables and plots", cmd_sweep},
    {"sim", "predict iteration time and bubbles of a configuration with the simulator", cmd_sim},
    {"schedule", "print and check each stage's op order and a textbook timeline", cmd_schedule},
    {"netem", "apply, show, clear, probe and self-test network emulation profiles", cmd_netem},
    {"stage", "run one stage process (multi-host: one per host, any launcher)", cmd_stage},
    {"report", "regenerate every table and plot of a results directory from its CSVs", cmd_report},
    {"calibrate", "measure per-layer compute time and FLOP/s for the emulated backend", cmd_calibrate},
    {NULL, NULL, NULL},
};

enum { CLI_DEPRECATED = 0x7f00 };   /* + index into spec->deprecated */

static const model_option_t help_opt[] = {
    {"help", 'h', CLI_OPT_HELP, NULL, "this text", NULL},
    {NULL, 0, 0, NULL, NULL, NULL},
};

static int has_val(const int *list, int val)
{
    for (; list && *list; list++)
        if (*list == val)
            return 1;
    return 0;
}

static int section_takes(const cli_section_t *s, const model_option_t *o)
{
    return (!s->only || has_val(s->only, o->val)) && !has_val(s->except, o->val);
}

/* The option of spec with this val, as the command shows it (overrides applied). */
static const model_option_t *spec_find(const cli_spec_t *spec, int val, model_option_t *buf)
{
    const model_option_t *hit = NULL;
    for (const cli_section_t *s = spec->sections; s->group && !hit; s++)
        for (const model_option_t *o = s->group; o->name && !hit; o++)
            if (o->val == val && section_takes(s, o))
                hit = o;
    if (!hit && val == CLI_OPT_HELP)
        hit = help_opt;
    if (!hit)
        return NULL;
    *buf = *hit;
    for (const cli_override_t *v = spec->overrides; v && v->val; v++)
        if (v->val == val) {
            buf->arg = v->arg ? v->arg : buf->arg;
            buf->help = v->help ? v->help : buf->help;
            buf->def = v->def ? v->def : buf->def;
        }
    return buf;
}

const char *cli_opt_name(const cli_spec_t *spec, int val)
{
    static char name[64];
    model_option_t o;
    snprintf(name, sizeof name, "--%s", spec_find(spec, val, &o) ? o.name : "?");
    return name;
}

static int add(cli_parser_t *p, size_t *n, const char *name, int letter, int has_arg, int val)
{
    if (*n == CLI_MAX_OPTS)
        return -ENOSPC;
    for (size_t i = 0; name && i < *n; i++)
        if (!strcmp(p->longopts[i].name, name))
            return -EINVAL;
    if (letter) {
        if (letter >= 128 || p->letter_val[letter])
            return -EINVAL;
        size_t k = strlen(p->shortopts);
        p->shortopts[k++] = (char)letter;
        if (has_arg)
            p->shortopts[k++] = ':';
        p->shortopts[k] = '\0';
        p->letter_val[letter] = val;
    }
    if (name)
        p->longopts[(*n)++] = (struct option){name, has_arg ? required_argument : no_argument, NULL, val};
    return 0;
}

int cli_parser_init(cli_parser_t *p, const cli_spec_t *spec)
{
    memset(p, 0, sizeof *p);
    p->spec = spec;
    size_t n = 0;
    int rc = add(p, &n, "help", 'h', 0, CLI_OPT_HELP);
    for (const cli_section_t *s = spec->sections; s->group && !rc; s++)
        for (const model_option_t *o = s->group; o->name && !rc; o++)
            if (section_takes(s, o))
                rc = add(p, &n, o->name, o->letter, o->arg != NULL, o->val);
    for (int i = 0; spec->deprecated && spec->deprecated[i].val && !rc; i++) {
        const cli_deprecated_t *d = &spec->deprecated[i];
        model_option_t o;
        if (!spec_find(spec, d->val, &o))
            return -EINVAL;
        rc = add(p, &n, d->name, d->letter, o.arg != NULL, CLI_DEPRECATED + i);
    }
    optind = 1;
    return rc;
}

int cli_next(cli_parser_t *p, int argc, char **argv)
{
    int c = cli_getopt(p->spec->name, argc, argv, p->shortopts, p->longopts);
    if (c < 0)
        return c;
    if (c < 128 && p->letter_val[c])
        c = p->letter_val[c];
    if (c >= CLI_DEPRECATED && c < CLI_DEPRECATED + CLI_MAX_OPTS) {
        const cli_deprecated_t *d = &p->spec->deprecated[c - CLI_DEPRECATED];
        model_option_t o;
        char old[64], now[64];
        spec_find(p->spec, d->val, &o);
        if (d->letter)
            snprintf(old, sizeof old, "-%c", d->letter);
        else
            snprintf(old, sizeof old, "--%s", d->name);
        if (o.letter)
            snprintf(now, sizeof now, "-%c (--%s)", o.letter, o.name);
        else
            snprintf(now, sizeof now, "--%s", o.name);
        fprintf(stderr, "pipenem %s: note: %s is an old spelling that goes away in the next release; use %s\n",
                p->spec->name, old, now);
        c = d->val;
    }
    return c;
}

/* The emulate device table's keys, in table order, built once: adding a device there
 * adds it to every --help. */
static char device_list[256];
static pthread_once_t device_list_once = PTHREAD_ONCE_INIT;

static void device_list_build(void)
{
    size_t at = 0;
    const model_device_t *d;
    for (int i = 0; (d = model_device_at(i)) && at < sizeof device_list; i++)
        at += (size_t)snprintf(device_list + at, sizeof device_list - at, "%s%s", i ? ", " : "", d->key);
}

static const char *device_names(void)
{
    pthread_once(&device_list_once, device_list_build);
    return device_list;
}

/* Help text with the names of the variant tables filled in, into buf. */
static void expand(char *buf, size_t cap, const char *text)
{
    static const struct {
        const char *key;
        const char *(*names)(void);
    } lists[] = {{"{models}", model_config_names}, {"{schedules}", sched_names},
                 {"{emulators}", netem_emulator_names}, {"{transports}", transport_kind_names},
                 {"{devices}", device_names}};
    size_t n = 0;
    buf[0] = '\0';
    while (*text && n + 1 < cap) {
        size_t i = 0;
        while (*text == '{' && i < sizeof lists / sizeof *lists && strncmp(text, lists[i].key, strlen(lists[i].key)))
            i++;
        if (*text == '{' && i < sizeof lists / sizeof *lists) {
            n += (size_t)snprintf(buf + n, cap - n, "%s", lists[i].names());
            text += strlen(lists[i].key);
        } else {   /* the text is wrapped anew: a line break is a space */
            buf[n++] = *text == '\n' ? ' ' : *text;
            text++;
            buf[n] = '\0';
        }
        if (n >= cap)
            n = cap - 1;
    }
}

enum { HELP_COL = 30, HELP_WIDTH = 100 };

/* "  -x, --name ARG" and the help (its default last), wrapped at HELP_WIDTH. */
static void put_option(FILE *out, const model_option_t *o)
{
    char head[128], text[2048];
    int n = snprintf(head, sizeof head, "  %s%c%s--%s%s%s", o->letter ? "-" : "", o->letter ? o->letter : ' ',
                     o->letter ? ", " : "   ", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
    fputs(head, out);
    int col = n;
    if (col >= HELP_COL - 1) {
        fputc('\n', out);
        col = 0;
    }
    expand(text, sizeof text, o->help);
    if (o->def)
        snprintf(text + strlen(text), sizeof text - strlen(text), " (default: %s)", o->def);
    for (char *w = text; *w;) {
        size_t len = strcspn(w, " ");
        int newline = col > HELP_COL && col + 1 + (int)len > HELP_WIDTH;
        if (newline || col < HELP_COL) {
            fprintf(out, "%s%*s", newline ? "\n" : "", HELP_COL - (newline ? 0 : col), "");
            col = HELP_COL;
        } else {
            fputc(' ', out);
            col++;
        }
        fwrite(w, 1, len, out);
        col += (int)len;
        w += len;
        while (*w == ' ')
            w++;
    }
    fputc('\n', out);
}

void cli_help(const cli_spec_t *spec, FILE *out)
{
    fputs(spec->usage, out);
    for (const cli_section_t *s = spec->sections; s->group; s++) {
        if (s->hidden)
            continue;
        if (s->title)
            fprintf(out, "%s:\n", s->title);
        for (const model_option_t *g = s->group; g->name; g++) {
            model_option_t o;
            if (section_takes(s, g) && spec_find(spec, g->val, &o))
                put_option(out, &o);
        }
    }
    put_option(out, help_opt);
    if (spec->footer)
        fputs(spec->footer, out);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "pipenem %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return CLI_USAGE;
}

int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
               const struct option *longopts)
{
    char spec[512];
    /* A leading ':' makes getopt report a missing argument as ':' rather than '?'. */
    snprintf(spec, sizeof spec, ":%s", shortopts);
    opterr = 0;
    int prev = optind;
    int c = getopt_long(argc, argv, spec, longopts, NULL);
    if (c == '?' || c == ':') {
        const char *word = (prev < argc) ? argv[prev] : "";
        if (optopt && optopt != '-' && optopt < 128 && word[0] == '-' && word[1] != '-')
            cli_usage_error(cmd, c == '?' ? "unknown option '-%c'" : "option '-%c' needs a value", optopt);
        else if (c == '?')
            cli_usage_error(cmd, "unknown option '%s'", word);
        else
            cli_usage_error(cmd, "option '%s' needs a value", word);
        return -2;
    }
    return c;
}

int cli_parse_int(const char *cmd, const char *opt, const char *s, int lo, int hi, int *out)
{
    if (pn_parse_int(s, lo, hi, out)) {
        if (hi == INT_MAX)
            return cli_usage_error(cmd, "%s: '%s' is not a whole number >= %d", opt, s, lo);
        return cli_usage_error(cmd, "%s '%s': want an integer in %d..%d", opt, s, lo, hi);
    }
    return 0;
}

int cli_copy(const char *cmd, const char *opt, const char *text, char *dst, size_t len)
{
    if (!*text)
        return cli_usage_error(cmd, "%s: empty value", opt);
    if (strlen(text) >= len)
        return cli_usage_error(cmd, "%s: '%s' is longer than %zu characters", opt, text, len - 1);
    strcpy(dst, text);
    return 0;
}

int cli_parse_runcfg(const cli_spec_t *spec, int argc, char **argv, struct runcfg *cfg, cli_own_fn own, void *ctx)
{
    cli_parser_t p;
    char err[1024];
    if (cli_parser_init(&p, spec))
        return cli_usage_error(spec->name, "internal: the option table is inconsistent");
    int c;
    while ((c = cli_next(&p, argc, argv)) != -1) {
        if (c == -2)
            return CLI_USAGE;
        if (c == CLI_OPT_HELP) {
            cli_help(spec, stdout);
            return -1;
        }
        int rc = own ? own(ctx, c, optarg) : 0;
        if (rc == CLI_USAGE)
            return rc;
        if (rc == 0)
            rc = runcfg_option(cfg, c, optarg, err, sizeof err);
        if (rc < 0)
            return cli_usage_error(spec->name, "%s", err);
        if (rc == 0)
            return cli_usage_error(spec->name, "option '%s' is not handled", argv[optind - 1]);
    }
    return 0;
}
