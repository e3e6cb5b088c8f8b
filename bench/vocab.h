/* The option groups only `pipenem` itself parses: the sweep's grid, where results go and
 * how they are drawn, the local launch, and the analysis options of sim and schedule.
 * The model, pipeline and network groups are models/options.h's and pipeline/runcfg.h's;
 * bench/cli.h builds each command's options and --help from all of them. */
#ifndef PN_BENCH_VOCAB_H
#define PN_BENCH_VOCAB_H

#include "models/options.h"

enum {
    VOCAB_OPT_MICRO_BATCH_SIZES = 0x3000, VOCAB_OPT_PROFILES, VOCAB_OPT_REPEAT, VOCAB_OPT_STRAGGLER,
    VOCAB_OPT_OUT, VOCAB_OPT_RESUME, VOCAB_OPT_ITERATION, VOCAB_OPT_TIMELINE, VOCAB_OPT_NO_PLOTS,
    VOCAB_OPT_USER, VOCAB_OPT_MICRO_BATCHES,
};

extern const model_option_t vocab_grid_group[];      /* what a sweep varies and repeats */
extern const model_option_t vocab_output_group[];    /* results directory, traces, plots */
extern const model_option_t vocab_local_group[];     /* stage processes on this machine */
extern const model_option_t vocab_analysis_group[];  /* sim and schedule without a model */

#endif
