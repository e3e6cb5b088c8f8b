/* pipenem netem: apply, show, clear, probe and self-test network emulation profiles.
 * Not landed yet: answers --help and reports itself as not implemented. */
#include "bench/cli.h"

int cmd_netem(int argc, char **argv)
{
    return cli_pending("usage: pipenem netem [options]\napply, show, clear, probe and self-test network emulation profiles.\n(not implemented yet)\n", argc, argv);
}
