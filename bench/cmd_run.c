/* pipenem run: run one configuration with one stage process per host on this machine.
 * Not landed yet: answers --help and reports itself as not implemented. */
#include "bench/cli.h"

int cmd_run(int argc, char **argv)
{
    return cli_pending("usage: pipenem run [options]\nrun one configuration with one stage process per host on this machine.\n(not implemented yet)\n", argc, argv);
}
