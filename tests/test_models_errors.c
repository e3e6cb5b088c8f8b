/* models/: every bad input gets its own message naming the bad part, both through the
 * shared option parser (models/options.h) and through model_stage_init directly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "models/model.h"
#include "models/options.h"
#include "tests/testutil.h"

/* Parses argv with getopt over the group's table, then finishes; returns the first error. */
static int parse_args(int argc, char **argv, model_stage_params_t *p, model_options_t *o, char *err, size_t errlen)
{
    struct option table[64];
    assert_true(model_options_table(table, 64, NULL) > 0);
    model_options_defaults(o);
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", table, NULL)) != -1) {
        if (c == '?')
            return -100;
        int rc = model_options_parse(o, c, optarg, err, errlen);
        if (rc < 0)
            return rc;
        assert_int_equal(rc, 1);
    }
    return model_options_finish(o, p, err, errlen);
}

#define ARGS(...) ((char *[]){"x", __VA_ARGS__, NULL})
#define NARGS(...) ((int)(sizeof((char *[]){"x", __VA_ARGS__}) / sizeof(char *)))

static void expect_error(int argc, char **argv, const char *needle)
{
    model_stage_params_t p;
    model_options_t o;
    char err[512] = "";
    int rc = parse_args(argc, argv, &p, &o, err, sizeof err);
    print_message("%-60s -> %s\n", argv[1], err);
    if (rc != -EINVAL || !strstr(err, needle))
        fail_msg("expected -EINVAL with '%s', got %d '%s'", needle, rc, err);
}

#define EXPECT(needle, ...) expect_error(NARGS(__VA_ARGS__), ARGS(__VA_ARGS__), needle)

static void test_options_bad_inputs(void **state)
{
    (void)state;
    EXPECT("--heads 7 does not divide --hidden 768", "--heads=7");
    EXPECT("--partition sums to 11 layers but gpt3-small has 12", "--partition=4,4,3");
    EXPECT("--partition has 3 entries but --stages is 4", "--partition=4,4,4", "--stages=4");
    EXPECT("--stages 5 is more than the 4 layers of tiny", "--model=tiny", "--stages=5");
    EXPECT("--seq-len 4096 is above the context 2048 of gpt3-small", "--seq-len=4096");
    EXPECT("--batch-size 10 is not divisible by --micro-batch-size 4", "--batch-size=10", "--micro-batch-size=4");
    EXPECT("unknown device 'tpu'", "--compute=emulate:tpu");
    EXPECT("unknown compute backend 'gpu'", "--compute=gpu");
    EXPECT("emulate: bad time 'fwd=25parsecs'", "--compute=emulate:fwd=25parsecs");
    EXPECT("unknown model 'gpt5'", "--model=gpt5");
    EXPECT("--layers: expected an integer", "--layers=zero");
    EXPECT("--partition: expected layer counts", "--partition=4,,4");
    EXPECT("--dataset: cannot read '/nonexistent/text'", "--dataset=/nonexistent/text");
    EXPECT("has byte tokens but --vocab is 100", "--dataset=tests/data/genesis-kjv.txt", "--vocab=100");
    EXPECT("--lr: expected a non-negative number", "--lr=-1");
}

static void test_options_good(void **state)
{
    (void)state;
    model_stage_params_t p;
    model_options_t o;
    char err[512] = "";
    char **argv = ARGS("--model=gpt3-medium", "--partition=6,6,6,6", "--seq-len=1024", "--batch-size=16",
                       "--micro-batch-size=2", "--compute=emulate:a100,eff=0.3", "--recompute",
                       "--tied-embeddings", "--threads=2", "--seed=9", "--lr=1e-3", "--layers=24");
    int rc = parse_args(NARGS("--model=gpt3-medium", "--partition=6,6,6,6", "--seq-len=1024", "--batch-size=16",
                              "--micro-batch-size=2", "--compute=emulate:a100,eff=0.3", "--recompute",
                              "--tied-embeddings", "--threads=2", "--seed=9", "--lr=1e-3", "--layers=24"),
                        argv, &p, &o, err, sizeof err);
    if (rc)
        fail_msg("%d %s", rc, err);
    assert_int_equal(p.cfg.layers, 24);
    assert_int_equal(p.cfg.hidden, 1024);
    assert_int_equal(p.stages, 4);
    assert_int_equal(p.partition[3], 6);
    assert_int_equal(p.seq_len, 1024);
    assert_int_equal(p.micro_batches, 8);
    assert_int_equal(p.micro_batch_size, 2);
    assert_string_equal(p.compute, "emulate:a100,eff=0.3");
    assert_true(p.recompute && p.tied_embeddings && p.threads == 2 && p.seed == 9);
    p.stage = 3;
    model_stage_t st;
    rc = model_stage_init(&st, &p, err, sizeof err);
    if (rc)
        fail_msg("%d %s", rc, err);
    assert_int_equal(st.layer_begin, 18);
    assert_true(st.efficiency == 0.3);
    model_stage_destroy(&st);
}

static void test_init_bad_inputs(void **state)
{
    (void)state;
    model_stage_params_t p;
    memset(&p, 0, sizeof p);
    char err[512];
    assert_int_equal(model_config_get("gpt3-small", &p.cfg, err, sizeof err), 0);
    p.seq_len = 128;
    p.micro_batch_size = 1;
    p.micro_batches = 2;
    p.stages = 2;
    p.compute = "emulate:v100";
    p.dataset = "random";
    model_stage_t st;
    static const struct {
        const char *needle;
        int what;
    } cases[] = {
        {"heads (12) must divide the hidden width (100)", 0},
        {"partition sums to 11 layers but the model has 12", 1},
        {"more stages (13) than layers (12)", 2},
        {"seq-len 4096 must be 1..2048", 3},
        {"unknown device 'm1'", 4},
        {"stage 2 is outside 0..1", 5},
    };
    static const int part[2] = {5, 6};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        model_stage_params_t q = p;
        switch (cases[i].what) {
        case 0: q.cfg.hidden = 100; break;
        case 1: q.partition = part; break;
        case 2: q.stages = 13; break;
        case 3: q.seq_len = 4096; break;
        case 4: q.compute = "emulate:m1"; break;
        case 5: q.stage = 2; break;
        }
        err[0] = '\0';
        int rc = model_stage_init(&st, &q, err, sizeof err);
        print_message("init case %zu -> %s\n", i, err);
        if (rc != -EINVAL || !strstr(err, cases[i].needle))
            fail_msg("case %zu: expected '%s', got %d '%s'", i, cases[i].needle, rc, err);
    }
}

/* pipenem calibrate end to end: the table, the file, and its replay by emulate:FILE. */
static void test_calibrate_cli(void **state)
{
    (void)state;
    static char out[1 << 16];
    char path[64];
    snprintf(path, sizeof path, "/tmp/pn-models-cal-%d.txt", (int)getpid());
    int rc = tu_pipenem_run(out, sizeof out, "calibrate --model tiny --seq-len 32 --micro-batch-size 2 "
                            "--stages 2 --threads 1 --iters 2 --out %s", path);
    if (rc != 0 || !strstr(out, "peak_%") || !strstr(out, "# OK") || access(path, R_OK))
        fail_msg("calibrate exited %d:\n%s", rc, out);
    print_message("calibrate tiny, 2 stages: exit 0, wrote %s\n", path);
    rc = tu_pipenem_run(out, sizeof out, "calibrate --model tiny --seq-len 32 --micro-batch-size 2 "
                        "--stages 2 --iters 1 --warmup 0 --compute emulate:%s", path);
    if (rc != 0 || !strstr(out, "# OK"))
        fail_msg("calibrate replaying %s exited %d:\n%s", path, rc, out);
    rc = tu_pipenem_run(out, sizeof out, "calibrate --model tiny --seq-len 16 --micro-batch-size 2 "
                        "--compute emulate:%s", path);
    unlink(path);
    if (rc != 1 || !strstr(out, "measured with seq-len 32, this run has 16"))
        fail_msg("a mismatching replay exited %d:\n%s", rc, out);
    static const struct {
        const char *args, *needle;
    } bad[] = {
        {"--model tiny --heads 5", "--heads 5 does not divide --hidden 64"},
        {"--model tiny --seq-len 129", "--seq-len 129 is above the context 128 of tiny"},
        {"--model tiny --stages 5", "--stages 5 is more than the 4 layers of tiny"},
        {"--model tiny --partition 1,2", "--partition sums to 3 layers but tiny has 4"},
        {"--model tiny --compute emulate:k80", "unknown device 'k80'"},
        {"--model tiny --iters 0", "--iters: expected an integer >= 1"},
        {"--model tiny --compute emulate:v100 --out /tmp/x", "--out needs measured compute"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char args[256];
        snprintf(args, sizeof args, "calibrate %s", bad[i].args);
        if (!tu_expect_exit(2, bad[i].needle, args))
            fail();
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options_bad_inputs),
        cmocka_unit_test(test_options_good),
        cmocka_unit_test(test_init_bad_inputs),
        cmocka_unit_test(test_calibrate_cli),
    };
    return cmocka_run_group_tests_name("models_errors", tests, NULL, NULL);
}
