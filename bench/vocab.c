/* The grid, output, local and analysis option groups (see vocab.h). */
#include "bench/vocab.h"

const model_option_t vocab_grid_group[] = {
    {"micro-batch-sizes", 'b', VOCAB_OPT_MICRO_BATCH_SIZES, "LIST", "micro-batch sizes, each dividing --batch-size",
     "1,2,4"},
    {"profiles", 'p', VOCAB_OPT_PROFILES, "LIST",
     "network profiles, one per row of the tables; separate key=value profiles with ';' as in "
     "default;delay=5ms,rate=1gbit",
     "default,1ms/5Gbps,5ms/2Gbps,10ms/1Gbps"},
    {"repeat", 'r', VOCAB_OPT_REPEAT, "N", "runs per cell (their iterations are pooled)", "1"},
    {"straggler", 0, VOCAB_OPT_STRAGGLER, "RANK:FACTOR", "stage RANK computes FACTOR times slower (1:1.5)", "none"},
    {NULL, 0, 0, NULL, NULL, NULL},
};

const model_option_t vocab_output_group[] = {
    {"out", 'o', VOCAB_OPT_OUT, "DIR", "results directory (must not hold a sweep yet)",
     "results/sweep-YYYYmmdd-HHMMSS"},
    {"resume", 0, VOCAB_OPT_RESUME, "DIR", "finish the sweep in DIR: its own arguments, missing cells only", "none"},
    {"iteration", 'i', VOCAB_OPT_ITERATION, "N", "iteration shown in trace.json and the timelines",
     "each cell's last"},
    {"timeline", 't', VOCAB_OPT_TIMELINE, "LIST", "cells to draw timelines of: all, none or 0,3,...",
     "per schedule, the smallest micro-batch size on the first and last profile"},
    {"no-plots", 0, VOCAB_OPT_NO_PLOTS, NULL, "skip gnuplot even when it is installed", NULL},
    {NULL, 0, 0, NULL, NULL, NULL},
};

const model_option_t vocab_local_group[] = {
    {"user", 0, VOCAB_OPT_USER, "NAME",
     "started as root: the stage processes run as NAME (e.g. nobody); only the\n"
     "launcher keeps root, for the network emulation",
     "as started"},
    {NULL, 0, 0, NULL, NULL, NULL},
};

const model_option_t vocab_analysis_group[] = {
    {"micro-batches", 'm', VOCAB_OPT_MICRO_BATCHES, "M", "micro-batches per iteration", "8"},
    {NULL, 0, 0, NULL, NULL, NULL},
};
