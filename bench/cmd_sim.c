/* pipenem sim: predict iteration time and bubble fraction of a configuration.
 * Not landed yet: answers --help and reports itself as not implemented. */
#include "bench/cli.h"

int cmd_sim(int argc, char **argv)
{
    return cli_pending("usage: pipenem sim [options]\npredict iteration time and bubble fraction of a configuration.\n(not implemented yet)\n", argc, argv);
}
