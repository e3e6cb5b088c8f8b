/* pipenem sweep: sweep schedules x micro-batch sizes x profiles and write tables, CSV, plots and traces.
 * Not landed yet: answers --help and reports itself as not implemented. */
#include "bench/cli.h"

int cmd_sweep(int argc, char **argv)
{
    return cli_pending("usage: pipenem sweep [options]\nsweep schedules x micro-batch sizes x profiles and write tables, CSV, plots and traces.\n(not implemented yet)\n", argc, argv);
}
