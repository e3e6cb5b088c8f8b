/* The host side of the cuda backend, on any machine: precision and device tables, the fp16
 * loss-scale state machine, the `cuda:PREC,dev=N` argument, the GPU choice from --device
 * or the launcher's local rank, and what `--compute cuda` says where no GPU is usable. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include "models/model.h"
#include "models/options.h"
#include "models/precision.h"
#ifdef PN_HAVE_CUDA
#include "models/cuda.h"
#endif
#include "tests/testutil.h"

static void test_precision_table(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        int bytes, master, scaling;
        const char *dtype, *compute;
    } want[] = {
        {"fp32", 4, 0, 0, "CUDA_R_32F", "CUBLAS_COMPUTE_32F"},
        {"tf32", 4, 0, 0, "CUDA_R_32F", "CUBLAS_COMPUTE_32F_FAST_TF32"},
        {"fp16", 2, 1, 1, "CUDA_R_16F", "CUBLAS_COMPUTE_32F"},
        {"bf16", 2, 1, 0, "CUDA_R_16BF", "CUBLAS_COMPUTE_32F"},
    };
    for (int i = 0; i < MODEL_PREC_N; i++) {
        model_prec_t p;
        char err[256] = "";
        assert_int_equal(model_prec_parse(want[i].name, &p, err, sizeof err), 0);
        const model_prec_info_t *in = model_prec_info(p);
        assert_non_null(in);
        assert_string_equal(in->name, want[i].name);
        assert_int_equal(in->elem_bytes, want[i].bytes);
        assert_int_equal(in->master_fp32, want[i].master);
        assert_int_equal(in->loss_scaling, want[i].scaling);
        assert_string_equal(in->data_type, want[i].dtype);
        assert_string_equal(in->compute, want[i].compute);
    }
    model_prec_t p;
    char err[256] = "";
    assert_int_equal(model_prec_parse("fp8", &p, err, sizeof err), -EINVAL);
    print_message("fp8 -> %s\n", err);
    assert_non_null(strstr(err, "unknown precision 'fp8'"));
    assert_null(model_prec_info(MODEL_PREC_N));
}

static void test_device_table(void **state)
{
    (void)state;
    /* names as cudaGetDeviceProperties reports them */
    static const struct {
        const char *name, *key;
        double fp16;
    } want[] = {
        {"Tesla V100-SXM2-16GB", "v100", 125e12},  {"Tesla V100-PCIE-32GB", "v100-pcie", 112e12},
        {"Tesla T4", "t4", 65e12},                 {"NVIDIA A100-SXM4-80GB", "a100", 312e12},
        {"NVIDIA H100 80GB HBM3", "h100", 989e12}, {"NVIDIA H100 PCIe", "h100-pcie", 756e12},
        {"NVIDIA H200", "h200", 989e12},           {"NVIDIA L4", "l4", 121e12},
        {"NVIDIA L40S", "l40s", 362e12},           {"h100", "h100", 989e12},
        {"A100", "a100", 312e12},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const model_device_t *d = model_device_find(want[i].name);
        print_message("%-24s -> %s\n", want[i].name, d ? d->key : "(none)");
        assert_non_null(d);
        assert_string_equal(d->key, want[i].key);
        assert_true(fabs(d->peak[MODEL_PREC_FP16] - want[i].fp16) < 1e6);
    }
    assert_null(model_device_find("NVIDIA GeForce RTX 4090"));
    assert_null(model_device_find(NULL));
    /* every entry: fp32 below the tensor-core rates, tf32 (where present) at most fp16,
     * bf16 either absent or equal to fp16, a bandwidth and an efficiency in (0, 1) */
    int n = 0;
    for (const model_device_t *d; (d = model_device_at(n)); n++) {
        assert_true(d->peak[MODEL_PREC_FP32] > 0 && d->peak[MODEL_PREC_FP32] < d->peak[MODEL_PREC_FP16]);
        assert_true(d->peak[MODEL_PREC_TF32] <= d->peak[MODEL_PREC_FP16]);
        assert_true(d->peak[MODEL_PREC_BF16] == 0 || d->peak[MODEL_PREC_BF16] == d->peak[MODEL_PREC_FP16]);
        assert_true(d->mem_bw > 0 && d->efficiency > 0 && d->efficiency < 1);
        assert_ptr_equal(model_device_find(d->key), d);
        assert_non_null(strstr(model_device_keys(), d->key));
    }
    assert_true(n >= 8);
}

static void test_loss_scale(void **state)
{
    (void)state;
    model_loss_scale_t ls;
    model_loss_scale_init(&ls, 65536.0f, 3);
    /* overflow: skip, halve */
    assert_int_equal(model_loss_scale_update(&ls, 1), 0);
    assert_true(ls.scale == 32768.0f && ls.skipped == 1 && ls.applied == 0);
    /* two clean steps: applied, unchanged; the third doubles */
    assert_int_equal(model_loss_scale_update(&ls, 0), 1);
    assert_int_equal(model_loss_scale_update(&ls, 0), 1);
    assert_true(ls.scale == 32768.0f);
    assert_int_equal(model_loss_scale_update(&ls, 0), 1);
    assert_true(ls.scale == 65536.0f && ls.applied == 3);
    /* an overflow resets the run of clean steps */
    assert_int_equal(model_loss_scale_update(&ls, 0), 1);
    assert_int_equal(model_loss_scale_update(&ls, 0), 1);
    assert_int_equal(model_loss_scale_update(&ls, 1), 0);
    assert_int_equal(model_loss_scale_update(&ls, 0), 1);
    assert_int_equal(model_loss_scale_update(&ls, 0), 1);
    assert_true(ls.scale == 32768.0f);
    /* floors at 1, caps at 2^24 */
    for (int i = 0; i < 40; i++)
        assert_int_equal(model_loss_scale_update(&ls, 1), 0);
    assert_true(ls.scale == 1.0f);
    for (int i = 0; i < 3 * 40; i++)
        assert_int_equal(model_loss_scale_update(&ls, 0), 1);
    assert_true(ls.scale == 16777216.0f);
    print_message("after %ld skipped and %ld applied steps the scale is %g\n", ls.skipped, ls.applied, ls.scale);
}

static void test_cuda_arg(void **state)
{
    (void)state;
    static const struct {
        const char *arg;
        model_prec_t prec;
        int dev;
    } ok[] = {
        {"", MODEL_PREC_FP32, -1},       {"fp16", MODEL_PREC_FP16, -1},  {"bf16,dev=1", MODEL_PREC_BF16, 1},
        {"dev=2", MODEL_PREC_FP32, 2},   {"dev=0,tf32", MODEL_PREC_TF32, 0},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        model_cuda_arg_t a;
        char err[256] = "";
        assert_int_equal(model_cuda_arg_parse(ok[i].arg, &a, err, sizeof err), 0);
        assert_int_equal(a.prec, ok[i].prec);
        assert_int_equal(a.device, ok[i].dev);
    }
    static const struct {
        const char *arg, *needle;
    } bad[] = {
        {"fp17", "unknown part 'fp17'"},      {"fp16,bf16", "two precisions"}, {"dev=x", "dev=N"},
        {"dev=1,dev=2", "given once"},        {"fp16,", "empty part"},         {",fp16", "empty part"},
        {"dev=-1", "dev=N"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        model_cuda_arg_t a = {MODEL_PREC_BF16, 7};
        char err[256] = "";
        assert_int_equal(model_cuda_arg_parse(bad[i].arg, &a, err, sizeof err), -EINVAL);
        print_message("cuda:%-12s -> %s\n", bad[i].arg, err);
        assert_non_null(strstr(err, bad[i].needle));
        assert_int_equal(a.prec, MODEL_PREC_BF16); /* untouched on failure */
    }
}

/* A fake environment for model_gpu_pick: "NAME=value" entries. */
static const char *fake_env_tab[4];
static const char *fake_env(const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < 4 && fake_env_tab[i]; i++)
        if (!strncmp(fake_env_tab[i], name, n) && fake_env_tab[i][n] == '=')
            return fake_env_tab[i] + n + 1;
    return NULL;
}

static int pick_stage(int req, int count, int stage, const char *e0, const char *e1, int *dev, char *err,
                      size_t errlen)
{
    fake_env_tab[0] = e0;
    fake_env_tab[1] = e1;
    fake_env_tab[2] = NULL;
    *dev = -7;
    return model_gpu_pick(req, count, stage, fake_env, dev, err, errlen);
}

static int pick(int req, int count, const char *e0, const char *e1, int *dev, char *err, size_t errlen)
{
    return pick_stage(req, count, 0, e0, e1, dev, err, errlen);
}

static void test_gpu_pick(void **state)
{
    (void)state;
    char err[256] = "";
    int dev;
    assert_int_equal(pick(-1, 4, NULL, NULL, &dev, err, sizeof err), 0);
    assert_int_equal(dev, 0);
    assert_int_equal(pick(2, 4, "LOCAL_RANK=3", NULL, &dev, err, sizeof err), 0);
    assert_int_equal(dev, 2); /* --device wins over the launcher */
    assert_int_equal(pick(-1, 4, "LOCAL_RANK=3", NULL, &dev, err, sizeof err), 0);
    assert_int_equal(dev, 3);
    /* Open MPI's variable comes before Slurm's and torchrun's */
    assert_int_equal(pick(-1, 4, "LOCAL_RANK=3", "OMPI_COMM_WORLD_LOCAL_RANK=1", &dev, err, sizeof err), 0);
    assert_int_equal(dev, 1);
    assert_int_equal(pick(-1, 2, "SLURM_LOCALID=5", NULL, &dev, err, sizeof err), 0);
    assert_int_equal(dev, 1); /* more ranks than GPUs: they share, round robin */
    assert_int_equal(pick(-1, 1, "SLURM_LOCALID=2", NULL, &dev, err, sizeof err), 0);
    assert_int_equal(dev, 0);

    /* no launcher (pipenem run): the stage index spreads the stages over the GPUs */
    assert_int_equal(pick_stage(-1, 4, 5, NULL, NULL, &dev, err, sizeof err), 0);
    assert_int_equal(dev, 1);
    assert_int_equal(pick_stage(-1, 4, 5, "LOCAL_RANK=2", NULL, &dev, err, sizeof err), 0);
    assert_int_equal(dev, 2);
    assert_int_equal(pick_stage(0, 4, 5, NULL, NULL, &dev, err, sizeof err), 0);
    assert_int_equal(dev, 0);

    assert_int_equal(pick(3, 2, NULL, NULL, &dev, err, sizeof err), -EINVAL);
    print_message("%s\n", err);
    assert_non_null(strstr(err, "device 3 is absent: 2 CUDA devices are visible"));
    assert_int_equal(dev, -7);
    assert_int_equal(pick(-1, 0, NULL, NULL, &dev, err, sizeof err), -ENODEV);
    print_message("%s\n", err);
    assert_non_null(strstr(err, "no CUDA device"));
    assert_int_equal(pick(-1, 2, "LOCAL_RANK=abc", NULL, &dev, err, sizeof err), -EINVAL);
    print_message("%s\n", err);
    assert_non_null(strstr(err, "LOCAL_RANK='abc' is not a local rank"));
}

static void test_half_conversion(void **state)
{
    (void)state;
    /* exact bit patterns, rounding to nearest even, overflow, subnormals */
    static const struct {
        float x;
        uint16_t h, b;
    } want[] = {
        {1.0f, 0x3c00, 0x3f80},        {-2.5f, 0xc100, 0xc020},      {65504.0f, 0x7bff, 0x4780},
        {70000.0f, 0x7c00, 0x4789},    {0.0f, 0x0000, 0x0000},       {5.9604644775390625e-8f, 0x0001, 0x3380},
        {1e-9f, 0x0000, 0x3089},       {1.00048828125f, 0x3c00, 0x3f80}, /* 1 + 2^-11: ties to even */
        {1.0f + 3.0f / 2048, 0x3c02, 0x3f80}, {1.01171875f, 0x3c0c, 0x3f82}, /* 1 + 3*2^-8: bf16 ties up */
        {INFINITY, 0x7c00, 0x7f80},
    };
    float worst_h = 0, worst_b = 0;
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        uint16_t h, b;
        model_prec_from_float(MODEL_PREC_FP16, &want[i].x, &h, 1);
        model_prec_from_float(MODEL_PREC_BF16, &want[i].x, &b, 1);
        if (h != want[i].h || b != want[i].b)
            fail_msg("%g: fp16 %#06x (want %#06x), bf16 %#06x (want %#06x)", want[i].x, h, want[i].h, b, want[i].b);
    }
    /* round trips of a spread of values: relative error within half an ulp */
    for (int i = -2000; i <= 2000; i++) {
        float x = (float)i * 0.0137f * (i % 7 + 1), y, z;
        uint16_t h, b;
        model_prec_from_float(MODEL_PREC_FP16, &x, &h, 1);
        model_prec_to_float(MODEL_PREC_FP16, &h, &y, 1);
        model_prec_from_float(MODEL_PREC_BF16, &x, &b, 1);
        model_prec_to_float(MODEL_PREC_BF16, &b, &z, 1);
        if (x != 0) {
            worst_h = fmaxf(worst_h, fabsf(y - x) / fabsf(x));
            worst_b = fmaxf(worst_b, fabsf(z - x) / fabsf(x));
        }
    }
    print_message("largest relative round-trip error: fp16 %.3g (bound %.3g), bf16 %.3g (bound %.3g)\n", worst_h,
                  1.0 / 2048, worst_b, 1.0 / 256);
    assert_true(worst_h <= 1.0f / 2048 && worst_b <= 1.0f / 256);
    float f[3] = {1, 2, 3}, g[3];
    model_prec_from_float(MODEL_PREC_TF32, f, g, 3);
    assert_memory_equal(f, g, sizeof f);
}

#ifdef PN_HAVE_CUDA
/* --device N joins the compute spec; it needs cuda */
static int device_opts(const char *compute, const char *device, model_stage_params_t *p, char *err, size_t errlen)
{
    static model_options_t o;
    model_options_defaults(&o);
    int rc;
    if ((rc = model_options_parse(&o, MODEL_OPT_MODEL, "tiny", err, errlen)) != 1 ||
        (rc = model_options_parse(&o, MODEL_OPT_COMPUTE, compute, err, errlen)) != 1 ||
        (device && (rc = model_options_parse(&o, MODEL_OPT_DEVICE, device, err, errlen)) != 1))
        return rc;
    return model_options_finish(&o, p, err, errlen);
}

static void test_device_option(void **state)
{
    (void)state;
    static const struct {
        const char *compute, *device, *want;
    } ok[] = {
        {"cuda", "1", "cuda:dev=1"}, {"cuda:fp16", "0", "cuda:fp16,dev=0"}, {"cuda:bf16", NULL, "cuda:bf16"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        model_stage_params_t p;
        char err[512] = "";
        if (device_opts(ok[i].compute, ok[i].device, &p, err, sizeof err))
            fail_msg("%s --device %s: %s", ok[i].compute, ok[i].device, err);
        assert_string_equal(p.compute, ok[i].want);
    }
    static const struct {
        const char *compute, *device, *needle;
    } bad[] = {
        {"cpu", "1", "--device 1 needs --compute cuda[:PREC], not 'cpu'"},
        {"emulate:v100", "0", "needs --compute cuda"},
        {"cuda", "x", "--device: expected an integer 0..1023"},
        {"cuda:dev=1", "2", "given once"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        model_stage_params_t p;
        char err[512] = "";
        assert_true(device_opts(bad[i].compute, bad[i].device, &p, err, sizeof err) < 0);
        print_message("--compute %s --device %s -> %s\n", bad[i].compute, bad[i].device, err);
        assert_non_null(strstr(err, bad[i].needle));
    }
}

#endif

/* emulate speaks the same precisions: the device's peak for it and its boundary bytes */
static int emu_stage(model_stage_t *st, const char *compute, char *err, size_t errlen)
{
    model_stage_params_t p = {0};
    if (model_config_get("gpt3-small", &p.cfg, err, errlen))
        return -EINVAL;
    p.seq_len = 1024, p.micro_batch_size = 2, p.micro_batches = 4, p.stages = 2, p.stage = 0;
    p.compute = compute, p.dataset = "random", p.seed = 1, p.lr = 1e-3f;
    return model_stage_init(st, &p, err, errlen);
}

static void test_emulate_precision(void **state)
{
    (void)state;
    static const struct {
        const char *compute;
        double peak;
        size_t elem;
        const char *desc;
    } ok[] = {
        {"emulate:v100", 125e12, 4, "peak 125.0 TFLOP/s dense fp16/bf16"},
        {"emulate:v100,fp16", 125e12, 2, "emulate:v100,fp16 (peak 125.0 TFLOP/s dense fp16"},
        {"emulate:v100,fp32", 15.7e12, 4, "peak 15.7 TFLOP/s dense fp32"},
        {"emulate:a100,eff=0.3,tf32", 156e12, 4, "efficiency 0.30"},
        {"emulate:h200,bf16", 989e12, 2, "peak 989.0 TFLOP/s dense bf16"},
        {"emulate:l4,fp16,eff=0.5", 121e12, 2, "efficiency 0.50"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        model_stage_t st;
        char err[512] = "", desc[256];
        if (emu_stage(&st, ok[i].compute, err, sizeof err))
            fail_msg("%s: %s", ok[i].compute, err);
        model_account_t a;
        model_stage_account(&st, &a);
        model_stage_describe(&st, desc, sizeof desc);
        print_message("%-28s %s; boundary %zu bytes\n", ok[i].compute, desc, a.boundary_bytes);
        assert_true(fabs(a.peak_flops - ok[i].peak) < 1e6);
        assert_int_equal(model_stage_act_bytes(&st), (size_t)2 * 1024 * 768 * ok[i].elem);
        assert_int_equal(a.boundary_bytes, model_stage_act_bytes(&st));
        assert_non_null(strstr(desc, ok[i].desc));
        model_stage_destroy(&st);
    }
    static const struct {
        const char *compute, *needle;
    } bad[] = {
        {"emulate:v100,bf16", "no dense peak for this precision"},
        {"emulate:t4,tf32", "no dense peak for this precision"},
        {"emulate:a100,fp16,bf16", "two precisions"},
        {"emulate:a100,fp8", "expected ',eff=X' with 0 < X <= 1 or a precision"},
        {"emulate:b300", "known: v100, v100-pcie, t4"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char err[512] = "";
        assert_int_equal(model_compute_check(bad[i].compute, err, sizeof err), -EINVAL);
        print_message("%-28s -> %s\n", bad[i].compute, err);
        assert_non_null(strstr(err, bad[i].needle));
    }
    /* a calibration file measured on cuda:fp16 replays with fp16 boundaries */
    char path[] = "/tmp/pn-calib-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "pipenem-calibration 1\nhidden 768\nheads 12\nvocab 50257\nseq_len 1024\nmicro_batch_size 2\n"
               "recompute 0\nprecision fp16\nembed 0.001 0.002\nhead 0.003 0.006\nopt_per_param 1e-12\n");
    for (int l = 0; l < 12; l++)
        fprintf(f, "layer %d 0.001 0.002\n", l);
    fclose(f);
    char compute[64], err[512] = "";
    snprintf(compute, sizeof compute, "emulate:%s", path);
    model_stage_t st;
    int rc = emu_stage(&st, compute, err, sizeof err);
    unlink(path);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(model_stage_act_bytes(&st), (size_t)2 * 1024 * 768 * 2);
    model_stage_destroy(&st);
}

#ifdef PN_HAVE_CUDA
/* Where no GPU is usable (this is the case CI sees), `--compute cuda` fails at init with
 * the cause named, in the library and in the command's exit status; on a GPU machine
 * the probe succeeds and these checks are skipped (tests/gpu/check.sh covers that side). */
static void test_cuda_unusable(void **state)
{
    (void)state;
    char name[256] = "", err[512] = "";
    int rc = model_cuda_probe("fp32", name, sizeof name, err, sizeof err);
    if (rc == 0) {
        print_message("a GPU is usable here (%s): the no-GPU error paths are not reachable\n", name);
        skip();
    }
    print_message("probe: %d %s\n", rc, err);
    assert_true(rc == -ENODEV);
    assert_true(strstr(err, "no usable NVIDIA driver") || strstr(err, "no CUDA device is visible"));

    model_stage_params_t p = {0};
    char e2[512] = "";
    model_stage_t st;
    assert_int_equal(model_config_get("tiny", &p.cfg, e2, sizeof e2), 0);
    p.seq_len = 16, p.micro_batch_size = 1, p.micro_batches = 2, p.stages = 1, p.compute = "cuda:bf16";
    p.dataset = "random", p.seed = 1, p.lr = 1e-3f;
    assert_int_equal(model_stage_init(&st, &p, e2, sizeof e2), -ENODEV);
    print_message("init: %s\n", e2);
    assert_string_equal(e2, err);
    /* a bad argument is refused before the device is looked for */
    p.compute = "cuda:fp9";
    assert_int_equal(model_stage_init(&st, &p, e2, sizeof e2), -EINVAL);
    assert_non_null(strstr(e2, "unknown part 'fp9'"));

    char out[4096];
    rc = tu_pipenem_run(out, sizeof out, "run --stages 1 --model tiny --seq-len 16 --batch-size 2 --iters 1 "
                                         "--compute cuda:fp16");
    print_message("pipenem run --compute cuda:fp16 -> exit %d\n%s", rc, out);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, err));
    rc = tu_pipenem_run(out, sizeof out, "run --stages 1 --model tiny --compute cuda:fp32,fp16");
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "two precisions"));
}
#endif

/* One stage of tiny (2 stages, micro-batch 2 of 32 tokens, 2 micro-batches) on compute. */
static void stage_of(model_stage_t *st, const char *compute)
{
    model_stage_params_t p;
    memset(&p, 0, sizeof p);
    char err[512];
    assert_int_equal(model_config_get("tiny", &p.cfg, err, sizeof err), 0);
    p.seq_len = 32;
    p.micro_batch_size = 2;
    p.micro_batches = 2;
    p.stages = 2;
    p.stage = 1;
    p.compute = compute;
    p.dataset = "random";
    p.seed = 1;
    p.lr = 1e-3f;
    if (model_stage_init(st, &p, err, sizeof err))
        fail_msg("model_stage_init(%s): %s", compute, err);
}

/* The fp16 loss scale as the stage keeps it (emulate:DEV,fp16 scales as the device would):
 * a local overflow skips and halves; an overflow agreed from another stage does the same
 * to a stage whose own gradients are finite; fp32 scales nothing and steps regardless. */
static void test_stage_loss_scaling(void **state)
{
    (void)state;
    assert_int_equal(model_compute_loss_scaling("emulate:v100,fp16"), 1);
    assert_int_equal(model_compute_loss_scaling("emulate:v100,bf16"), 0);
    assert_int_equal(model_compute_loss_scaling("emulate:v100"), 0);
    assert_int_equal(model_compute_loss_scaling("cpu"), 0);
    assert_int_equal(model_compute_loss_scaling("cuda:fp16"), 1);
    assert_int_equal(model_compute_loss_scaling("cuda"), 0);
    assert_int_equal(model_compute_loss_scaling("nonsense"), 0);
    model_stage_t st;
    stage_of(&st, "emulate:v100,fp16");
    long sk;
    double s0 = model_stage_loss_scale(&st, &sk);
    assert_true(s0 == 65536.0 && sk == 0);
    assert_int_equal(model_stage_overflow(&st), 0);
    model_stage_force_overflow(&st);
    assert_int_equal(model_stage_overflow(&st), 1);
    assert_int_equal(model_stage_overflow(&st), 0); /* the hook fires once */
    model_stage_force_overflow(&st);
    assert_int_equal(model_stage_step(&st, 0), 0);  /* local overflow: skipped */
    double s1 = model_stage_loss_scale(&st, &sk);
    print_message("fp16: scale %g -> %g after a local overflow, skipped %ld\n", s0, s1, sk);
    assert_true(s1 == s0 / 2 && sk == 1);
    assert_int_equal(model_stage_step_agreed(&st, 1, 1), 0); /* another stage's overflow */
    double s2 = model_stage_loss_scale(&st, &sk);
    print_message("fp16: scale %g -> %g after another stage's overflow, skipped %ld\n", s1, s2, sk);
    assert_true(s2 == s1 / 2 && sk == 2);
    assert_int_equal(model_stage_step_agreed(&st, 2, 0), 0);
    assert_true(model_stage_loss_scale(&st, &sk) == s2 && sk == 2 && st.steps == 3);
    model_stage_destroy(&st);
    stage_of(&st, "emulate:v100");
    model_stage_force_overflow(&st);
    assert_int_equal(model_stage_overflow(&st), 0); /* no loss scaling: nothing to report */
    assert_int_equal(model_stage_step_agreed(&st, 0, 1), 0);
    assert_true(model_stage_loss_scale(&st, &sk) == 1.0 && sk == 0 && st.steps == 1);
    model_stage_destroy(&st);
}

/* The memory a stage reports: the process's resident memory where the backend holds no
 * device memory (cpu, emulate; the cuda backend's device_bytes is exercised on a GPU). */
static void test_stage_peak_mem(void **state)
{
    (void)state;
    const char *computes[] = {"cpu", "emulate:v100,fp16"};
    for (int i = 0; i < 2; i++) {
        model_stage_t st;
        stage_of(&st, computes[i]);
        model_mem_kind_t kind = MODEL_MEM_DEVICE;
        size_t before = model_peak_rss_bytes(), mem = model_stage_peak_mem(&st, &kind), after = model_peak_rss_bytes();
        print_message("%s: %s memory %.1f MiB\n", computes[i], model_mem_kind_name(kind), mem / 1048576.0);
        assert_int_equal(kind, MODEL_MEM_RESIDENT);
        assert_string_equal(model_mem_kind_name(kind), "resident");
        assert_true(mem >= before && mem <= after && mem > 0);
        model_stage_destroy(&st);
    }
    assert_string_equal(model_mem_kind_name(MODEL_MEM_DEVICE), "device");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_precision_table), cmocka_unit_test(test_device_table),
        cmocka_unit_test(test_loss_scale),      cmocka_unit_test(test_cuda_arg),
        cmocka_unit_test(test_gpu_pick),        cmocka_unit_test(test_half_conversion),
        cmocka_unit_test(test_emulate_precision), cmocka_unit_test(test_stage_loss_scaling),
        cmocka_unit_test(test_stage_peak_mem),
#ifdef PN_HAVE_CUDA
        cmocka_unit_test(test_device_option),
        cmocka_unit_test(test_cuda_unusable),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
