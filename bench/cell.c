/* One sweep cell on this machine, and the check of every cell's model configuration.
 * Running stages needs pipeline/'s stage runner; until it is part of the build this says
 * so, and the sweep stops with that message instead of pretending to measure. */
#include "bench/cell.h"

#include "models/options.h"

#include <errno.h>
#include <stdio.h>

int cell_measure(void *ctx, const sweep_spec_t *s, results_cell_t *cell, const char *workdir,
                 volatile sig_atomic_t *stop, results_t *r, char *err, size_t errlen)
{
    (void)ctx, (void)s, (void)cell, (void)workdir, (void)stop, (void)r;
    snprintf(err, errlen, "measuring a cell is not available yet: it needs pipeline/'s stage runner "
                          "(stage_run), which has not landed in this build");
    return -ENOSYS;
}

int cell_check(const sweep_spec_t *s, char *err, size_t errlen)
{
    for (int m = 0; m < s->n_mbs; m++) {
        char stages[16], batch[16], mbs[16], seq[16], why[512] = "";
        snprintf(stages, sizeof stages, "%d", s->stages);
        snprintf(batch, sizeof batch, "%d", s->batch_size);
        snprintf(mbs, sizeof mbs, "%d", s->mbs[m]);
        snprintf(seq, sizeof seq, "%d", s->seq_len);
        const struct {
            int opt;
            const char *arg;
        } set[] = {
            {MODEL_OPT_MODEL, s->model},       {MODEL_OPT_SEQ_LEN, seq},          {MODEL_OPT_STAGES, stages},
            {MODEL_OPT_BATCH_SIZE, batch},     {MODEL_OPT_MICRO_BATCH_SIZE, mbs}, {MODEL_OPT_COMPUTE, s->compute},
        };
        model_options_t o;
        model_stage_params_t p;
        model_options_defaults(&o);
        int rc = 0;
        for (size_t i = 0; i < sizeof set / sizeof *set && !rc; i++)
            if (model_options_parse(&o, set[i].opt, set[i].arg, why, sizeof why) != 1)
                rc = -EINVAL;
        if (!rc)
            rc = model_options_finish(&o, &p, why, sizeof why);
        if (rc) {
            snprintf(err, errlen, "micro-batch size %d: %s", s->mbs[m], why);
            return -EINVAL;
        }
    }
    return 0;
}
