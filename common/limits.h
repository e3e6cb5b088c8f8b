/* The project's named limits, each defined once: every parser, table and buffer that
 * bounds one of these quantities uses the name, so the limits cannot disagree. */
#ifndef PN_COMMON_LIMITS_H
#define PN_COMMON_LIMITS_H

enum {
    PN_MAX_STAGES = 256,          /* pipeline stages (ranks of one pipeline) */
    PN_MAX_MICRO_BATCHES = 1 << 16, /* micro-batches per iteration */
    PN_MAX_SLACK = 1 << 16,       /* K of 1f1b-slack: extra micro-batches in flight per hop */
    PN_MAX_ITERS = 1 << 20,       /* measured or warm-up iterations */
    PN_MAX_WORLD = 16384,         /* processes of one job */
};

#endif
