/* pipenem schedule: print and check the op order of every stage of a schedule.
 * Not landed yet: answers --help and reports itself as not implemented. */
#include "bench/cli.h"

int cmd_schedule(int argc, char **argv)
{
    return cli_pending("usage: pipenem schedule [options]\nprint and check the op order of every stage of a schedule.\n(not implemented yet)\n", argc, argv);
}
