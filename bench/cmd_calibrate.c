/* pipenem calibrate: measure compute time per layer and stage for the emulated backend.
 * Not landed yet: answers --help and reports itself as not implemented. */
#include "bench/cli.h"

int cmd_calibrate(int argc, char **argv)
{
    return cli_pending("usage: pipenem calibrate [options]\nmeasure compute time per layer and stage for the emulated backend.\n(not implemented yet)\n", argc, argv);
}
