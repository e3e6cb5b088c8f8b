/* pipenem stage: run one pipeline stage (multi-host use).
 * Not landed yet: answers --help and reports itself as not implemented. */
#include "bench/cli.h"

int cmd_stage(int argc, char **argv)
{
    return cli_pending("usage: pipenem stage [options]\nrun one pipeline stage (multi-host use).\n(not implemented yet)\n", argc, argv);
}
