/* The shim's meter: round trips and bulk goodput between two hosts of a namespace
 * topology over the pipeline's transport (UCX) wrapped in the in-transport shaper, for
 * netem's fidelity self-test, where the kernel's TCP would not see the shim at all. */
#ifndef PN_PIPELINE_METER_H
#define PN_PIPELINE_METER_H

#include "netem/selftest.h"

/* "ucx+shim": each measurement forks one process per host (hosts 0 and 1 of the topology),
 * bounded by a timeout after which both are killed. */
extern const netem_selftest_meter_t meter_ucx_shim;

#endif
