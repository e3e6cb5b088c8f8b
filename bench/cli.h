/* The pipenem command line: the subcommand table and the helpers every subcommand
 * shares, so that usage errors look and exit the same everywhere (status 2). */
#ifndef PN_BENCH_CLI_H
#define PN_BENCH_CLI_H

#include <getopt.h>

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

typedef struct {
    const char *name;
    const char *summary;                 /* one line for `pipenem --help` */
    int (*main)(int argc, char **argv);  /* argv[0] is the subcommand name */
} cli_cmd_t;

/* The subcommands, in the order `pipenem --help` lists them; NULL-name terminated. */
extern const cli_cmd_t cli_cmds[];

/* Prints "pipenem CMD: MSG" to stderr and returns CLI_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Runs getopt_long over argv with the given options, with getopt's own messages
 * silenced: an unknown option or a missing argument yields a message naming it and
 * -2 ('?' is never returned). Returns the option value, or -1 at the end. */
int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
               const struct option *longopts);

/* A whole-string integer in [lo, hi] into *out (0), or a usage error naming the option
 * and the value (CLI_USAGE, *out unchanged); with hi INT_MAX it says "not a whole number
 * >= lo". */
int cli_parse_int(const char *cmd, const char *opt, const char *s, int lo, int hi, int *out);

/* The message and status of a subcommand whose capability has not landed yet. */
int cli_not_implemented(const char *cmd);

/* A subcommand that has not landed yet: answers --help with `usage`, rejects any
 * other argument as unknown, and otherwise reports "not implemented yet" (status 2). */
int cli_pending(const char *usage, int argc, char **argv);

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
