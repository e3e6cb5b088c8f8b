/* The pipenem command line: the subcommand table, the option vocabulary's parser and
 * --help generator, and the helpers every subcommand shares, so that usage errors look
 * and exit the same everywhere (status 2). Each command describes its options as
 * sections of the shared option groups (models/options.h, pipeline/runcfg.h,
 * bench/vocab.h) plus its own; the getopt table and the --help text are built from that. */
#ifndef PN_BENCH_CLI_H
#define PN_BENCH_CLI_H

#include <getopt.h>
#include <stdio.h>

#include "common/err.h"
#include "models/options.h"

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

typedef struct {
    const char *name;
    const char *summary;                 /* one line for `pipenem --help` */
    int (*main)(int argc, char **argv);  /* argv[0] is the subcommand name */
} cli_cmd_t;

/* The subcommands, in the order `pipenem --help` lists them; NULL-name terminated. */
extern const cli_cmd_t cli_cmds[];

/* ---- a command's options ---- */

enum {
    CLI_OPT_HELP = 0x0fff,     /* -h, --help: every command has it */
    CLI_MAX_OPTS = 96,         /* options of one command, deprecated spellings included */
};

/* One heading of a command's --help and the options it takes from one group. */
typedef struct {
    const char *title;               /* "model and compute" */
    const model_option_t *group;     /* a group's table; NULL ends the list */
    const int *only;                 /* 0-terminated vals to take; NULL = every one ... */
    const int *except;               /* ... but these (0-terminated; may be NULL) */
    int hidden;                      /* parsed, but not in --help (to refuse with a reason) */
} cli_section_t;

/* How a command shows one option when it differs from the group's table: its own value
 * name (a list), help or default; the help says why a default differs. */
typedef struct {
    int val;                         /* 0 ends the list */
    const char *arg, *help, *def;    /* NULL = the group's */
} cli_override_t;

/* An old spelling that keeps working for one release, with a one-line note on stderr. */
typedef struct {
    int letter;                      /* the old short option, or 0 */
    const char *name;                /* the old long option, or NULL */
    int val;                         /* what it means now; 0 ends the list */
} cli_deprecated_t;

typedef struct {
    const char *name;                     /* the subcommand */
    const char *usage;                    /* usage lines and what the command does */
    const cli_section_t *sections;
    const cli_override_t *overrides;      /* may be NULL */
    const cli_deprecated_t *deprecated;   /* may be NULL */
    const char *footer;                   /* printed after the options; may be NULL */
} cli_spec_t;

typedef struct {
    const cli_spec_t *spec;
    struct option longopts[CLI_MAX_OPTS + 1];
    char shortopts[3 * CLI_MAX_OPTS + 1];
    int letter_val[128];                  /* short letter -> val */
} cli_parser_t;

/* Builds the getopt tables of spec; -ENOSPC past CLI_MAX_OPTS, -EINVAL for a letter or
 * long name given twice (a bug in the tables). Resets getopt (optind = 1). */
int cli_parser_init(cli_parser_t *p, const cli_spec_t *spec) PN_WUR;

/* The next option's val (a short letter yields its long option's val; an old spelling
 * prints its note and yields the current option's val), CLI_OPT_HELP, -1 at the end, or
 * -2 after an unknown option or a missing value (message printed). The value is optarg. */
int cli_next(cli_parser_t *p, int argc, char **argv);

/* The command's --help: usage, one section per group with each option's letter, long
 * name, value, help and default, then the footer. */
void cli_help(const cli_spec_t *spec, FILE *out);

/* "--stages" for a val of spec (a static buffer), for messages. */
const char *cli_opt_name(const cli_spec_t *spec, int val);

/* A command's own handling of one option: 1 taken, 0 not its own, or CLI_USAGE after a
 * message. */
typedef int (*cli_own_fn)(void *ctx, int val, const char *arg);

/* Parses argv with spec: each option goes to own first (may be NULL), then to
 * runcfg_option. 0 when done (positional arguments left at optind), -1 after printing
 * --help, or CLI_USAGE after a message. */
struct runcfg;
int cli_parse_runcfg(const cli_spec_t *spec, int argc, char **argv, struct runcfg *cfg, cli_own_fn own,
                     void *ctx);

/* ---- shared helpers ---- */

/* Prints "pipenem CMD: MSG" to stderr and returns CLI_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) PN_PRINTF(2, 3);

/* Runs getopt_long over argv with the given options, with getopt's own messages
 * silenced: an unknown option or a missing argument yields a message naming it and
 * -2 ('?' is never returned). Returns the option value, or -1 at the end. */
int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
               const struct option *longopts);

/* A whole-string integer in [lo, hi] into *out (0), or a usage error naming the option
 * and the value (CLI_USAGE, *out unchanged); with hi INT_MAX it says "not a whole number
 * >= lo". */
int cli_parse_int(const char *cmd, const char *opt, const char *s, int lo, int hi, int *out);

/* A value copied into dst (0), or a usage error for an empty or too long one. */
int cli_copy(const char *cmd, const char *opt, const char *text, char *dst, size_t len);

/* Each subcommand's entry point (bench/cmd_NAME.c). */
int cmd_run(int argc, char **argv);
int cmd_sweep(int argc, char **argv);
int cmd_sim(int argc, char **argv);
int cmd_schedule(int argc, char **argv);
int cmd_netem(int argc, char **argv);
int cmd_stage(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);

#endif
