/* pipenem report: regenerate the tables and plots of a results directory.
 * Not landed yet: answers --help and reports itself as not implemented. */
#include "bench/cli.h"

int cmd_report(int argc, char **argv)
{
    return cli_pending("usage: pipenem report [options]\nregenerate the tables and plots of a results directory.\n(not implemented yet)\n", argc, argv);
}
