/* The optimizer step of a stage with its dynamic loss scaling (fp16), split into the
 * overflow check and the agreed step so that all stages of a pipeline skip together, and
 * the memory figure a stage reports (device memory where the backend measures it). */
#include "models/model.h"
#include "common/clock.h"
#include "models/backend.h"

#include <errno.h>
#include <stdio.h>
#include <math.h>
#include <string.h>

/* fp16: the loss scale starts at 2^16 and doubles after this many clean steps (as
 * PyTorch's GradScaler) */
enum { LOSS_SCALE_GROWTH = 2000 };
#define LOSS_SCALE_INIT 65536.0f

void model_stage_loss_scaling_on(model_stage_t *st)
{
    st->loss_scaling = 1;
    model_loss_scale_init(&st->ls, LOSS_SCALE_INIT, LOSS_SCALE_GROWTH);
}

int model_stage_overflow(model_stage_t *st)
{
    if (!st->backend)
        return -EINVAL;
    if (!st->loss_scaling)
        return 0;
    int rc = 0;
    if (st->backend->overflow) {
        rc = st->backend->overflow(st); /* cuda plants a real inf on force_overflow, for its check to find */
    } else {
        rc = st->force_overflow;
        for (size_t i = 0; st->grads && i < st->n_params && !rc; i++)
            rc = !isfinite(st->grads[i]);
    }
    st->force_overflow = 0;
    return rc;
}

void model_stage_force_overflow(model_stage_t *st)
{
    st->force_overflow = 1;
}

int model_stage_step_agreed(model_stage_t *st, int iter, int overflow)
{
    (void)iter;
    if (!st->backend)
        return -EINVAL;
    for (int i = 0; i < st->max_inflight; i++)
        if (st->slot_mb[i] >= 0)
            return -EBUSY;
    double t0 = pn_now();
    int rc = 0;
    st->grad_scale = st->loss_scaling ? st->ls.scale : 1.0f;
    if (st->loss_scaling && !model_loss_scale_update(&st->ls, overflow != 0)) {
        /* skipped: this or another stage overflowed; the scale was halved */
        fprintf(stderr, "%s: stage %d: fp16 gradients overflowed (on this stage or another): step skipped, loss scale %g -> %g\n",
                st->backend->name, st->p.stage, st->grad_scale,
                st->ls.scale);
        model_stage_grads_zero(st);
    } else {
        rc = st->backend->step(st);
    }
    st->prof.opt += pn_now() - t0;
    st->prof.n_opt++;
    if (rc)
        return rc;
    st->steps++;
    st->last_loss = st->loss_count ? st->loss_sum / st->loss_count : NAN;
    st->loss_sum = 0;
    st->loss_count = 0;
    return 0;
}

int model_stage_step(model_stage_t *st, int iter)
{
    int ov = model_stage_overflow(st);
    return ov < 0 ? ov : model_stage_step_agreed(st, iter, ov);
}

double model_stage_loss_scale(const model_stage_t *st, long *skipped)
{
    if (skipped)
        *skipped = st->loss_scaling ? st->ls.skipped : 0;
    return st->loss_scaling ? st->ls.scale : 1.0;
}

size_t model_stage_peak_mem(const model_stage_t *st, model_mem_kind_t *kind)
{
    if (st->backend && st->backend->device_bytes) {
        *kind = MODEL_MEM_DEVICE;
        return st->backend->device_bytes(st);
    }
    *kind = MODEL_MEM_RESIDENT;
    return model_peak_rss_bytes();
}

const char *model_mem_kind_name(model_mem_kind_t kind)
{
    return kind == MODEL_MEM_DEVICE ? "device" : "resident";
}
