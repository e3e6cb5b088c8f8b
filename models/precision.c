/* Precision and device tables, the fp16 loss-scale state machine, the cuda argument and
 * the GPU choice: the host-side half of the cuda backend, plain C so that it is tested
 * (and used by emulate) on machines without CUDA. */
#include "models/precision.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/parse.h"

static const model_prec_info_t precs[MODEL_PREC_N] = {
    [MODEL_PREC_FP32] = {"fp32", 4, "CUDA_R_32F", "CUBLAS_COMPUTE_32F", 0, 0, 0},
    [MODEL_PREC_TF32] = {"tf32", 4, "CUDA_R_32F", "CUBLAS_COMPUTE_32F_FAST_TF32", 80, 0, 0},
    [MODEL_PREC_FP16] = {"fp16", 2, "CUDA_R_16F", "CUBLAS_COMPUTE_32F", 70, 1, 1},
    [MODEL_PREC_BF16] = {"bf16", 2, "CUDA_R_16BF", "CUBLAS_COMPUTE_32F", 80, 1, 0},
};

const model_prec_info_t *model_prec_info(model_prec_t p)
{
    return (unsigned)p < MODEL_PREC_N ? &precs[p] : NULL;
}

int model_prec_parse(const char *s, model_prec_t *out, char *err, size_t errlen)
{
    for (int i = 0; i < MODEL_PREC_N; i++)
        if (!strcmp(s, precs[i].name)) {
            *out = (model_prec_t)i;
            return 0;
        }
    return pn_err(err, errlen, -EINVAL, "unknown precision '%s' (known: fp32, tf32, fp16, bf16)", s);
}

/* ---------------------------------------------------------------- fp16 / bf16 on the host */

static float bits_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f)
        return bits_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0) /* zero or subnormal: man * 2^-24 */
        return (sign ? -1.0f : 1.0f) * (float)man * 5.9604644775390625e-8f;
    return bits_float(sign | ((exp + 112) << 23) | (man << 13));
}

static uint16_t float_to_half(float f)
{
    uint32_t u = float_bits(f), sign = (u >> 16) & 0x8000;
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf, NaN */
        return (uint16_t)(sign | 0x7c00 | (a > 0x7f800000u ? 0x200 : 0));
    if (a >= 0x477ff000u) /* rounds to above 65504 */
        return (uint16_t)(sign | 0x7c00);
    if (a < 0x38800000u) { /* below 2^-14: subnormal, in units of 2^-24, nearest even */
        float m = bits_float(a) * 16777216.0f;
        uint32_t q = (uint32_t)m;
        float r = m - (float)q;
        q += r > 0.5f || (r == 0.5f && (q & 1));
        return (uint16_t)(sign | q);
    }
    uint32_t e = (a >> 23) - 112, man = a & 0x7fffff;
    uint32_t h = (e << 10) | (man >> 13), rest = man & 0x1fff;
    h += rest > 0x1000 || (rest == 0x1000 && (h & 1));
    return (uint16_t)(sign | h);
}

static uint16_t float_to_bf16(float f)
{
    uint32_t u = float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

void model_prec_to_float(model_prec_t p, const void *src, float *dst, size_t n)
{
    const uint16_t *h = src;
    if (precs[p].elem_bytes == 4)
        memmove(dst, src, n * sizeof(float));
    else if (p == MODEL_PREC_FP16)
        for (size_t i = 0; i < n; i++)
            dst[i] = half_to_float(h[i]);
    else
        for (size_t i = 0; i < n; i++)
            dst[i] = bits_float((uint32_t)h[i] << 16);
}

void model_prec_from_float(model_prec_t p, const float *src, void *dst, size_t n)
{
    uint16_t *h = dst;
    if (precs[p].elem_bytes == 4)
        memmove(dst, src, n * sizeof(float));
    else
        for (size_t i = 0; i < n; i++)
            h[i] = p == MODEL_PREC_FP16 ? float_to_half(src[i]) : float_to_bf16(src[i]);
}

/* Dense peaks from the vendors' datasheets (SXM parts unless named; the sparse figures
 * are twice these). fp32 is the CUDA-core rate; tf32/fp16/bf16 the tensor cores, 0 where
 * the generation has none for that type. More specific names come first: the match is
 * by substring. Efficiencies as emulate has always assumed for a tuned GPT layer. */
static const model_device_t devices[] = {
    /* key          match        fp32     tf32      fp16      bf16      HBM B/s  eff */
    {"v100-pcie", "V100-PCIE", {14.0e12, 0, 112e12, 0}, 900e9, 0.40},
    {"v100", "V100", {15.7e12, 0, 125e12, 0}, 900e9, 0.40},
    {"t4", " T4", {8.1e12, 0, 65e12, 0}, 320e9, 0.40},
    {"a100", "A100", {19.5e12, 156e12, 312e12, 312e12}, 1555e9, 0.50},
    {"l40s", "L40S", {91.6e12, 183e12, 362e12, 362e12}, 864e9, 0.45},
    {"l40", "L40", {90.5e12, 90.5e12, 181e12, 181e12}, 864e9, 0.45},
    {"l4", "L4", {30.3e12, 60e12, 121e12, 121e12}, 300e9, 0.45},
    {"h100-pcie", "H100 PCIe", {51e12, 378e12, 756e12, 756e12}, 2000e9, 0.40},
    {"h100", "H100", {67e12, 494.5e12, 989e12, 989e12}, 3350e9, 0.40},
    {"h200", "H200", {67e12, 494.5e12, 989e12, 989e12}, 4800e9, 0.40},
};
#define N_DEVICES ((int)(sizeof devices / sizeof *devices))

static int contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (!strncasecmp(hay, needle, n))
            return 1;
    return 0;
}

const model_device_t *model_device_find(const char *name)
{
    if (!name)
        return NULL;
    for (int i = 0; i < N_DEVICES; i++)
        if (!strcasecmp(name, devices[i].key))
            return &devices[i];
    for (int i = 0; i < N_DEVICES; i++)
        if (contains_nocase(name, devices[i].match))
            return &devices[i];
    return NULL;
}

const model_device_t *model_device_at(int i)
{
    return i >= 0 && i < N_DEVICES ? &devices[i] : NULL;
}

const char *model_device_keys(void)
{
    return "v100, v100-pcie, t4, a100, l40s, l40, l4, h100, h100-pcie, h200";
}

/* ---------------------------------------------------------------- loss scale */

void model_loss_scale_init(model_loss_scale_t *ls, float initial, int growth_interval)
{
    memset(ls, 0, sizeof *ls);
    ls->scale = initial;
    ls->min_scale = 1.0f;
    ls->max_scale = 16777216.0f; /* 2^24: beyond it fp16 gradients overflow on any batch */
    ls->growth_interval = growth_interval > 0 ? growth_interval : 1;
}

int model_loss_scale_update(model_loss_scale_t *ls, int overflow)
{
    if (overflow) {
        ls->scale = ls->scale / 2 > ls->min_scale ? ls->scale / 2 : ls->min_scale;
        ls->clean_steps = 0;
        ls->skipped++;
        return 0;
    }
    ls->applied++;
    if (++ls->clean_steps >= ls->growth_interval) {
        ls->scale = ls->scale * 2 < ls->max_scale ? ls->scale * 2 : ls->max_scale;
        ls->clean_steps = 0;
    }
    return 1;
}

/* ---------------------------------------------------------------- argument, GPU choice */

int model_cuda_arg_parse(const char *arg, model_cuda_arg_t *out, char *err, size_t errlen)
{
    model_cuda_arg_t a = {MODEL_PREC_FP32, -1};
    int have_prec = 0;
    char buf[128];
    if (strlen(arg) >= sizeof buf)
        return pn_err(err, errlen, -EINVAL, "compute 'cuda:%.40s...': argument too long", arg);
    if (*arg && (arg[0] == ',' || arg[strlen(arg) - 1] == ',' || strstr(arg, ",,")))
        return pn_err(err, errlen, -EINVAL, "compute 'cuda:%s': empty part", arg);
    snprintf(buf, sizeof buf, "%s", arg);
    char *save = NULL;
    for (char *tok = *buf ? strtok_r(buf, ",", &save) : NULL; tok; tok = strtok_r(NULL, ",", &save)) {
        if (!strncmp(tok, "dev=", 4)) {
            if (a.device >= 0 || pn_parse_int(tok + 4, 0, 1023, &a.device))
                return pn_err(err, errlen, -EINVAL, "compute 'cuda:%s': '%s' must be dev=N, N 0..1023, given once",
                              arg, tok);
            continue;
        }
        if (have_prec)
            return pn_err(err, errlen, -EINVAL, "compute 'cuda:%s': two precisions ('%s' after '%s')", arg, tok,
                          precs[a.prec].name);
        if (model_prec_parse(tok, &a.prec, NULL, 0))
            return pn_err(err, errlen, -EINVAL, "compute 'cuda:%s': unknown part '%s' (use cuda[:fp32|tf32|fp16|bf16]"
                          "[,dev=N])", arg, tok);
        have_prec = 1;
    }
    *out = a;
    return 0;
}

int model_gpu_pick(int requested, int count, int fallback, const char *(*env)(const char *name), int *out,
                   char *err, size_t errlen)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK"};
    if (count < 1)
        return pn_err(err, errlen, -ENODEV, "no CUDA device is visible (the driver reports none%s)",
                      env && env("CUDA_VISIBLE_DEVICES") ? "; CUDA_VISIBLE_DEVICES is set" : "");
    if (requested >= 0) {
        if (requested >= count)
            return pn_err(err, errlen, -EINVAL, "device %d is absent: %d CUDA device%s visible (0..%d)", requested,
                          count, count == 1 ? " is" : "s are", count - 1);
        *out = requested;
        return 0;
    }
    for (size_t i = 0; env && i < sizeof vars / sizeof *vars; i++) {
        const char *v = env(vars[i]);
        int r;
        if (!v)
            continue;
        if (pn_parse_int(v, 0, 1 << 20, &r))
            return pn_err(err, errlen, -EINVAL, "%s='%s' is not a local rank (a number >= 0)", vars[i], v);
        *out = r % count;
        return 0;
    }
    *out = (fallback > 0 ? fallback : 0) % count;
    return 0;
}
