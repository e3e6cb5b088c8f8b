/* The emulate backend: each forward, backward and step sleeps (clock_nanosleep on an
 * absolute deadline, never spinning) for a modelled duration and moves real-size
 * boundary tensors (the caller's buffers), so a full-scale model's pipeline can be studied
 * without its compute.
 * It holds no parameters or activations; only the tied-embedding gradient is real. */
#include "models/backend.h"
#include "models/precision.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/parse.h"

/* Devices (peaks per precision, HBM bandwidth, efficiency): the table the cuda backend
 * reads its MFU from (models/precision.c), so emulated and real runs use the same numbers. */

/* AdamW in fp32 reads and writes parameter, m and v, reads the gradient and zeroes it. */
#define OPT_BYTES_PER_PARAM 32.0

typedef struct {
    int hidden, heads, vocab, seq_len, mbs, recompute, n_layers;
    double embed_fwd, embed_bwd, head_fwd, head_bwd, opt_per_param;
    double layer_fwd[MODEL_MAX_LAYERS], layer_bwd[MODEL_MAX_LAYERS];
    int prec;                   /* "precision NAME" (cuda calibrations), -1 if absent: fp32 */
} calib_t;

static int calib_read(const char *path, calib_t *c, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        snprintf(err, errlen, "calibration file '%s': %s", path, strerror(e));
        return -e;
    }
    memset(c, 0, sizeof *c);
    c->hidden = c->heads = c->vocab = c->seq_len = c->mbs = c->recompute = c->prec = -1;
    char line[512];
    int lineno = 0, rc = 0, magic = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char key[64];
        int n = 0;
        if (line[0] == '#' || sscanf(line, "%63s%n", key, &n) != 1)
            continue;
        const char *rest = line + n;
        int li, ok = 1;
        double a, b;
        if (!strcmp(key, "pipenem-calibration"))
            magic = 1;
        else if (!strcmp(key, "model") || !strcmp(key, "layers") || !strcmp(key, "tied_embeddings") ||
                 !strcmp(key, "threads") || !strcmp(key, "stage"))
            ; /* informational */
        else if (!strcmp(key, "hidden"))
            ok = sscanf(rest, "%d", &c->hidden) == 1;
        else if (!strcmp(key, "heads"))
            ok = sscanf(rest, "%d", &c->heads) == 1;
        else if (!strcmp(key, "vocab"))
            ok = sscanf(rest, "%d", &c->vocab) == 1;
        else if (!strcmp(key, "seq_len"))
            ok = sscanf(rest, "%d", &c->seq_len) == 1;
        else if (!strcmp(key, "micro_batch_size"))
            ok = sscanf(rest, "%d", &c->mbs) == 1;
        else if (!strcmp(key, "recompute"))
            ok = sscanf(rest, "%d", &c->recompute) == 1;
        else if (!strcmp(key, "precision")) {
            char pn[16];
            model_prec_t pr;
            ok = sscanf(rest, "%15s", pn) == 1 && !model_prec_parse(pn, &pr, NULL, 0);
            c->prec = ok ? (int)pr : -1;
        } else if (!strcmp(key, "embed"))
            ok = sscanf(rest, "%lf %lf", &c->embed_fwd, &c->embed_bwd) == 2;
        else if (!strcmp(key, "head"))
            ok = sscanf(rest, "%lf %lf", &c->head_fwd, &c->head_bwd) == 2;
        else if (!strcmp(key, "opt_per_param"))
            ok = sscanf(rest, "%lf", &c->opt_per_param) == 1;
        else if (!strcmp(key, "layer")) {
            ok = sscanf(rest, "%d %lf %lf", &li, &a, &b) == 3 && li >= 0 && li < MODEL_MAX_LAYERS && a >= 0 && b >= 0;
            if (ok) {
                c->layer_fwd[li] = a;
                c->layer_bwd[li] = b;
                c->n_layers = li + 1 > c->n_layers ? li + 1 : c->n_layers;
            }
        } else {
            snprintf(err, errlen, "calibration file '%s' line %d: unknown key '%s'", path, lineno, key);
            rc = -EINVAL;
            break;
        }
        if (!ok) {
            snprintf(err, errlen, "calibration file '%s' line %d: bad value for '%s'", path, lineno, key);
            rc = -EINVAL;
            break;
        }
    }
    fclose(f);
    if (!rc && !magic) {
        snprintf(err, errlen, "'%s' is not a calibration file (written by pipenem calibrate --out)", path);
        rc = -EINVAL;
    }
    if (!rc && (c->hidden < 0 || c->heads < 0 || c->vocab < 0 || c->seq_len < 0 || c->mbs < 0 || !c->n_layers)) {
        snprintf(err, errlen, "calibration file '%s' lacks hidden, heads, vocab, seq_len, "
                 "micro_batch_size or layer lines", path);
        rc = -EINVAL;
    }
    return rc;
}

typedef enum { EMU_DEVICE, EMU_TIMES, EMU_FILE } emu_kind_t;

typedef struct {
    emu_kind_t kind;
    const model_device_t *dev;
    int prec;                  /* a model_prec_t after the device, -1 if none was given */
    double efficiency, fwd, bwd, opt;
    calib_t calib;
} emu_spec_t;

/* ",eff=X" and ",fp32|tf32|fp16|bf16" after a device name, in any order */
static int device_parse(const char *o, const model_device_t *d, emu_spec_t *s, char *err, size_t errlen)
{
    s->kind = EMU_DEVICE;
    s->dev = d;
    s->prec = -1;
    s->efficiency = d->efficiency;
    while (*o == ',') {
        o++;
        size_t n = strcspn(o, ",");
        char item[32], *end;
        model_prec_t pr;
        snprintf(item, sizeof item, "%.*s", (int)(n < 31 ? n : 31), o);
        if (!model_prec_parse(item, &pr, NULL, 0)) {
            if (s->prec >= 0 || d->peak[pr] <= 0)
                return pn_err(err, errlen, -EINVAL, "emulate:%s: %s", d->key, s->prec >= 0 ? "two precisions" :
                              "the device has no dense peak for this precision (no such tensor cores)");
            s->prec = (int)pr;
        } else if (strncmp(item, "eff=", 4) || (s->efficiency = strtod(item + 4, &end), end == item + 4) ||
                   !(s->efficiency > 0 && s->efficiency <= 1) || *end) {
            return pn_err(err, errlen, -EINVAL, "emulate:%s: expected ',eff=X' with 0 < X <= 1 or a precision "
                          "(fp32, tf32, fp16, bf16) after the device, got '%s'", d->key, item);
        }
        o += n;
    }
    return 0;
}

static int spec_parse(const char *arg, emu_spec_t *s, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    if (!*arg) {
        snprintf(err, errlen, "emulate needs a device (emulate:DEV[,eff=0.5], DEV one of %s), times "
                 "(emulate:fwd=25ms,bwd=75ms[,opt=5ms]) or a calibration file (emulate:FILE)", model_device_keys());
        return -EINVAL;
    }
    size_t tok = strcspn(arg, ",");
    char key[32];
    snprintf(key, sizeof key, "%.*s", (int)(tok < 31 ? tok : 31), arg);
    const model_device_t *d = model_device_find(key);
    if (d && !strcmp(d->key, key))
        return device_parse(arg + tok, d, s, err, errlen);
    if (memchr(arg, '=', tok)) {
        s->kind = EMU_TIMES;
        int have_fwd = 0, have_bwd = 0;
        const char *o = arg;
        while (*o) {
            size_t n = strcspn(o, ",");
            char item[64];
            snprintf(item, sizeof item, "%.*s", (int)(n < 63 ? n : 63), o);
            char *eq = strchr(item, '=');
            double v;
            if (!eq || pn_parse_duration(eq + 1, &v)) {
                snprintf(err, errlen, "emulate: bad time '%s' (expected fwd=25ms, bwd=75ms or opt=5ms; "
                         "units s, ms, us, ns)", item);
                return -EINVAL;
            }
            *eq = '\0';
            if (!strcmp(item, "fwd"))
                s->fwd = v, have_fwd = 1;
            else if (!strcmp(item, "bwd"))
                s->bwd = v, have_bwd = 1;
            else if (!strcmp(item, "opt"))
                s->opt = v;
            else {
                snprintf(err, errlen, "emulate: unknown time '%s' (known: fwd, bwd, opt)", item);
                return -EINVAL;
            }
            o += n;
            if (*o == ',')
                o++;
        }
        if (!have_fwd) {
            snprintf(err, errlen, "emulate:%s: fwd= is required (bwd= defaults to twice fwd)", arg);
            return -EINVAL;
        }
        if (!have_bwd)
            s->bwd = 2 * s->fwd;
        return 0;
    }
    if (access(arg, F_OK) == 0 || strchr(arg, '/') || strchr(arg, '.')) {
        s->kind = EMU_FILE;
        return calib_read(arg, &s->calib, err, errlen);
    }
    snprintf(err, errlen, "unknown device '%s' (known: %s; or fwd=/bwd= times, or a calibration file)", arg,
             model_device_keys());
    return -EINVAL;
}

/* Without a precision the device's fp16/bf16 tensor-core peak, with fp32 boundaries (as
 * before precisions existed); with one, that precision's peak and element size. */
static double device_peak(const emu_spec_t *s)
{
    return s->dev->peak[s->prec >= 0 ? s->prec : MODEL_PREC_FP16];
}

static int emu_check(const char *arg, char *err, size_t errlen)
{
    emu_spec_t s;
    return spec_parse(arg, &s, err, errlen);
}

static int emu_precision(const char *arg)
{
    emu_spec_t s;
    if (spec_parse(arg, &s, NULL, 0))
        return -1;
    return s.kind == EMU_DEVICE && s.prec >= 0 ? s.prec : MODEL_PREC_FP32;
}

static void emu_describe(const char *arg, char *buf, size_t len)
{
    emu_spec_t s;
    char err[256];
    if (spec_parse(arg, &s, err, sizeof err))
        snprintf(buf, len, "emulate:%s (%s)", arg, err);
    else if (s.kind == EMU_DEVICE)
        snprintf(buf, len, "emulate:%s%s%s (peak %.1f TFLOP/s dense %s, efficiency %.2f, memory %.0f GB/s)",
                 s.dev->key, s.prec >= 0 ? "," : "", s.prec >= 0 ? model_prec_info(s.prec)->name : "",
                 device_peak(&s) * 1e-12, s.prec >= 0 ? model_prec_info(s.prec)->name : "fp16/bf16", s.efficiency,
                 s.dev->mem_bw * 1e-9);
    else if (s.kind == EMU_TIMES)
        snprintf(buf, len, "emulate (fwd %.3f ms, bwd %.3f ms, opt %.3f ms per micro-batch and stage)",
                 s.fwd * 1e3, s.bwd * 1e3, s.opt * 1e3);
    else
        snprintf(buf, len, "emulate (replaying calibration file %s)", arg);
}

static int emu_init(model_stage_t *st, const char *arg, char *err, size_t errlen)
{
    emu_spec_t s;
    int rc = spec_parse(arg, &s, err, errlen);
    if (rc)
        return rc;
    int nl = st->layer_end - st->layer_begin;
    if (s.kind == EMU_DEVICE) {
        snprintf(st->device, sizeof st->device, "%s", s.dev->key);
        st->peak_flops = device_peak(&s);
        st->efficiency = s.efficiency;
        st->mem_bw = s.dev->mem_bw;
        st->act_elem_bytes = s.prec >= 0 ? model_prec_info(s.prec)->elem_bytes : 4;
        if (s.prec >= 0 && model_prec_info(s.prec)->loss_scaling)
            model_stage_loss_scaling_on(st); /* the scale's schedule as on the device; no gradient overflows */
        double rate = st->peak_flops * st->efficiency;
        double fwd = model_stage_fwd_flops(st);
        st->emu_fwd_s = fwd / rate;
        st->emu_bwd_s = 2 * fwd / rate;
        /* W (dW = dout^T x per matmul) is half the backward's FLOPs; B the other half,
         * plus any recompute, which B needs and W reuses */
        st->emu_bwd_w_s = fwd / rate;
        if (st->p.recompute) {
            /* recompute repeats the layers' forward (not the head's) inside backward */
            double C = st->C, T = st->T, tokens = (double)st->B * st->T;
            st->emu_bwd_s += tokens * nl * (24.0 * C * C + 2.0 * T * C) / rate;
        }
        st->emu_opt_s = st->n_params * OPT_BYTES_PER_PARAM / st->mem_bw;
    } else if (s.kind == EMU_TIMES) {
        double share = st->p.process_chunks > 1 ? 1.0 / st->p.process_chunks : 1.0;
        st->emu_fwd_s = s.fwd * share;
        st->emu_bwd_s = s.bwd * share;
        st->emu_opt_s = s.opt * share;
        st->emu_bwd_w_s = s.bwd * share / 2;
    } else {
        const calib_t *c = &s.calib;
        const char *what = NULL;
        int have = 0, want = 0;
        if (c->hidden != st->C)
            what = "hidden", have = c->hidden, want = st->C;
        else if (c->heads != st->NH)
            what = "heads", have = c->heads, want = st->NH;
        else if (c->vocab != st->V)
            what = "vocab", have = c->vocab, want = st->V;
        else if (c->seq_len != st->T)
            what = "seq-len", have = c->seq_len, want = st->T;
        else if (c->mbs != st->B)
            what = "micro-batch-size", have = c->mbs, want = st->B;
        else if (c->recompute >= 0 && c->recompute != st->p.recompute)
            what = "recompute", have = c->recompute, want = st->p.recompute;
        if (what) {
            snprintf(err, errlen, "calibration file '%s' was measured with %s %d, this run has %d",
                     arg, what, have, want);
            return -EINVAL;
        }
        if (st->layer_end > c->n_layers) {
            snprintf(err, errlen, "calibration file '%s' has %d layers, this stage needs layer %d",
                     arg, c->n_layers, st->layer_end - 1);
            return -EINVAL;
        }
        for (int l = st->layer_begin; l < st->layer_end; l++) {
            st->emu_fwd_s += c->layer_fwd[l];
            st->emu_bwd_s += c->layer_bwd[l];
        }
        if (st->first)
            st->emu_fwd_s += c->embed_fwd, st->emu_bwd_s += c->embed_bwd;
        if (st->last)
            st->emu_fwd_s += c->head_fwd, st->emu_bwd_s += c->head_bwd;
        st->emu_opt_s = c->opt_per_param * st->n_params;
        st->emu_bwd_w_s = st->emu_bwd_s / 2; /* the calibration measured whole backwards */
        if (c->prec >= 0) /* a cuda calibration: its boundary tensors were in that precision */
            st->act_elem_bytes = model_prec_info(c->prec)->elem_bytes;
    }
    if (st->p.tied_embeddings && st->p.stages > 1 && (st->first || st->last)) {
        st->tied_grad = calloc((size_t)st->V * st->C, sizeof(float));
        if (!st->tied_grad) {
            snprintf(err, errlen, "out of memory for the tied embedding gradient");
            return -ENOMEM;
        }
    }
    return 0;
}

static void emu_destroy(model_stage_t *st)
{
    free(st->tied_grad);
    free(st->dp_grad);
    st->tied_grad = st->dp_grad = NULL;
}

/* The host gradients for the data-parallel all-reduce (model.h): the cpu's own block, or
 * emulate's real-size stand-in, made on first use. */
int model_stage_grads(model_stage_t *st, float **grad, size_t *numel)
{
    if (st->grads) {
        *grad = st->grads;
    } else if (st->backend && st->backend->destroy == emu_destroy) {
        if (!st->dp_grad && st->n_params && !(st->dp_grad = calloc(st->n_params, sizeof(float))))
            return -ENOMEM;
        *grad = st->dp_grad;
    } else {
        return -ENOTSUP;
    }
    *numel = st->n_params;
    return 0;
}

/* Sleeps until start + seconds on the monotonic clock: an absolute deadline, so that an
 * interrupted sleep resumes without drift. */
static void sleep_until(double start, double seconds)
{
    pn_sleep_until(start + seconds);
}

/* The boundary tensors are the caller's real-size buffers; emulate leaves their contents
 * alone, since a GPU producing them would cost the host no CPU time either. */
static int emu_forward(model_stage_t *st, int slot, const float *in, float *out)
{
    (void)slot, (void)in, (void)out;
    sleep_until(pn_now(), st->emu_fwd_s);
    return 0;
}

/* A backward that adds parameter gradients: one sleep, or with the data-parallel hook set
 * (model_stage_grads_hook) the tensors from the end of the block back, each taking the
 * share of the sleep its matrix parameters have (a layer's backward FLOPs are its
 * matrices'; the embeddings' gather adds none), the hook told after each: the readiness
 * the simulator gives the buckets (bench/predict.c predict_dp_buckets). */
static void weights_sleep(model_stage_t *st, double seconds)
{
    double t0 = pn_now(), total = 0, done = 0;
    for (int i = 0; st->grads_final && i < st->n_tensors; i++)
        total += st->tensors[i].gemm ? (double)st->tensors[i].numel : 0;
    for (int i = st->n_tensors - 1; i > 0 && total > 0; i--) {
        if (st->tensors[i].gemm) {
            done += (double)st->tensors[i].numel;
            sleep_until(t0, seconds * done / total);
        }
        model_stage_grads_final(st, st->tensors[i].offset);
    }
    sleep_until(t0, seconds);
}

static int emu_backward(model_stage_t *st, int slot, const float *dout, float *din)
{
    (void)slot, (void)dout, (void)din;
    weights_sleep(st, st->emu_bwd_s);
    return 0;
}

static int emu_backward_input(model_stage_t *st, int slot, const float *dout, float *din)
{
    (void)slot, (void)dout, (void)din;
    sleep_until(pn_now(), st->emu_bwd_s - st->emu_bwd_w_s);
    return 0;
}

static int emu_backward_weights(model_stage_t *st, int slot)
{
    (void)slot;
    weights_sleep(st, st->emu_bwd_w_s);
    return 0;
}

static int emu_step(model_stage_t *st)
{
    sleep_until(pn_now(), st->emu_opt_s);
    return 0;
}

const model_backend_t model_backend_emulate = {
    .name = "emulate",
    .modelled = 1,
    .check = emu_check,
    .describe = emu_describe,
    .init = emu_init,
    .forward = emu_forward,
    .backward = emu_backward,
    .backward_input = emu_backward_input,
    .backward_weights = emu_backward_weights,
    .step = emu_step,
    .precision = emu_precision,
    .destroy = emu_destroy,
};
