/* pipenem: the only main. Dispatches to a subcommand from the table in bench/cli.c. */
#include "bench/cli.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: pipenem <command> [options]   (pipenem <command> --help for its options)\n\n"
                 "Measures GPipe and 1F1B pipeline-parallel training over emulated slow networks.\n\n"
                 "commands:\n");
    for (const cli_cmd_t *c = cli_cmds; c->name; c++)
        fprintf(out, "  %-10s %s\n", c->name, c->summary);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    const char *word = argv[1];
    if (!strcmp(word, "--help") || !strcmp(word, "-h") || !strcmp(word, "help")) {
        usage(stdout);
        return CLI_OK;
    }
    for (const cli_cmd_t *c = cli_cmds; c->name; c++)
        if (!strcmp(word, c->name))
            return c->main(argc - 1, argv + 1);
    fprintf(stderr, "pipenem: unknown command '%s' (see pipenem --help)\n", word);
    return CLI_USAGE;
}
