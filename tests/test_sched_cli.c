/* `pipenem schedule` and `pipenem sim` from the outside: output layout (header, units
 * row, rows, OK/FAILED footer), the textbook timeline, --check exit codes, and a
 * specific message with exit 2 for each bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdlib.h>
#include <unistd.h>

#include "tests/testutil.h"

static char out[1 << 18];

static void expect(int rc_want, const char *needle, const char *args)
{
    int rc = tu_pipenem_run(out, sizeof out, "%s", args);
    if (rc != rc_want || (needle && !strstr(out, needle)))
        fail_msg("pipenem %s: exit %d (want %d), output lacks '%s':\n%s", args, rc, rc_want,
                 needle ? needle : "", out);
}

/* Every schedule checks OK; the timeline of GPipe P=3, M=4 (F=1, B=2) is the textbook
 * one: stage s idles s units, runs its 4 forwards, waits for the first gradient, runs its
 * 4 backwards (2 units each) and idles 2s units at the end; 18 units in all. */
static void test_schedule_check_and_timeline(void **state)
{
    (void)state;
    expect(0, "# check: OK", "schedule -s gpipe -P 3 -m 4 --check");
    assert_non_null(strstr(out, "(units)"));
    assert_non_null(strstr(out, "stage 0| F0 F1 F2 F3 .. .. .. .. .. .. B0 B0 B1 B1 B2 B2 B3 B3\n"));
    assert_non_null(strstr(out, "stage 1| .. F0 F1 F2 F3 .. .. .. B0 B0 B1 B1 B2 B2 B3 B3 .. ..\n"));
    assert_non_null(strstr(out, "stage 2| .. .. F0 F1 F2 F3 B0 B0 B1 B1 B2 B2 B3 B3 .. .. .. ..\n"));
    assert_non_null(strstr(out, "iteration 18 units"));
    assert_non_null(strstr(out, "stage 1: Ra0 F0 Sa0 Ra1 F1 Sa1"));
    static const char *const ok[] = {
        "schedule -s 1f1b -P 8 -m 16 --check", "schedule -s 1f1b-slack -k 2 -P 5 -m 9 --check",
        "schedule -s 1f1b-slack -k auto -P 4 -m 4 --check --no-timeline", "schedule -P 1 -m 1 --check",
        "schedule",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
        expect(0, "OK\n", ok[i]);
}

/* --ops: the command's own output feeds back; hand-broken lists fail with the stage and
 * op named and exit 1. */
static void test_schedule_ops_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/pn_sched_cli_XXXXXX", path[64], args[1024];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/ops", dir);
    snprintf(args, sizeof args, "schedule -s 1f1b -P 3 -m 5 > %s && %s schedule --ops %s --check",
             path, tu_pipenem(), path);
    expect(0, "# check: OK", args);
    static const struct {
        const char *text, *needle;
    } broken[] = {
        {"F0 F1 Sa1 Sa0 Rg0 B0 Rg1 B1 OPT\nRa0 F0 Ra1 F1 B0 Sg0 B1 Sg1 OPT\n", "stage 0 op 2 SEND_ACT(1)"},
        {"F0 Sa0 F1 Sa1 Rg0 B0 Rg1 B1 OPT\nRa0 Ra1 B0 Sg0 F0 F1 B1 Sg1 OPT\n", "stage 1 op 2 BWD(0): backward before FWD(0)"},
        {"F0 Sa0 F1 Sa1 Rg0 B0 Rg1 B1 OPT\nRa0 F0 F1 B0 Sg0 B1 Sg1 OPT\n", "stage 1 op 2 FWD(1): no RECV_ACT(1)"},
    };
    for (size_t i = 0; i < sizeof broken / sizeof *broken; i++) {
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(broken[i].text, f);
        fclose(f);
        snprintf(args, sizeof args, "schedule --ops %s --check", path);
        expect(1, broken[i].needle, args);
        assert_non_null(strstr(out, "# check: FAILED"));
    }
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("F0 X9\n", f);
    fclose(f);
    snprintf(args, sizeof args, "schedule --ops %s", path);
    expect(1, "bad op 'X9'", args);
    unlink(path);
    rmdir(dir);
    expect(1, "cannot open '/nonexistent/pn'", "schedule --ops /nonexistent/pn");
}

static void test_schedule_usage_errors(void **state)
{
    (void)state;
    static const struct {
        const char *args, *needle;
    } bad[] = {
        {"schedule -P 0", "--stages '0'"},
        {"schedule -m -3", "--micro-batches '-3'"},
        {"schedule -m 4x", "--micro-batches '4x'"},
        {"schedule -s pipedream", "unknown schedule 'pipedream'"},
        {"schedule -s gpipe -k 1", "--slack applies to 1f1b-slack"},
        {"schedule -s 1f1b-slack -k many", "--slack 'many'"},
        {"schedule --ops x -P 3", "drop --stages"},
        {"schedule stray", "unexpected argument 'stray'"},
        {"schedule --bogus", "'--bogus'"},
        {"schedule -p", "needs a value"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        expect(2, bad[i].needle, bad[i].args);
    expect(0, "usage: pipenem schedule", "schedule --help");
}

/* sim on free links with unit-free costs: (M+P-1)(F+B) = 66 x 100 ms for every schedule;
 * blocking sends with a per-message overhead add to it. */
static void test_sim_output(void **state)
{
    (void)state;
    expect(0, "# OK", "sim -P 3 -m 64 -f 25 -B 75 --bytes 6.3MB");
    assert_non_null(strstr(out, "(ms)"));
    for (const char *s = "gpipe\0" "1f1b\0" "1f1b-slack\0"; *s; s += strlen(s) + 1) {
        char row[64];
        snprintf(row, sizeof row, " %s ", s);
        if (!strstr(out, row))
            fail_msg("no row for %s:\n%s", s, out);
    }
    assert_non_null(strstr(out, "6600.000"));
    assert_non_null(strstr(out, "slack auto:"));
    assert_non_null(strstr(out, "critical path gpipe"));
    expect(0, "# pipenem sim: 2 stages, 4 micro-batches (batch 64 / micro-batch size 16)",
           "sim -P 2 -u 16 -f 1 -B 2 -s gpipe --critical-path");
    assert_non_null(strstr(out, "s0:F0"));
    expect(0, "# OK", "sim -P 2 -m 4 -f 1,2 -B 2,4 --opt-ms 1 -s 1f1b --send-mode blocking --overhead-us 5 --bytes 4KiB");
}

/* The acceptance scenario through the command line: 1f1b-slack with --slack auto is
 * predicted faster than GPipe and 1F1B on 10 ms / 1 Gbit/s links (P=3, M=64, 25/75 ms,
 * 6.3 MB). The rows are parsed back: name, slack, iteration time in ms. */
static void test_sim_net_slack_auto(void **state)
{
    (void)state;
    expect(0, "# OK", "sim -P 3 -m 64 -f 25 -B 75 --bytes 6.3MB --net 10ms/1Gbps");
    assert_non_null(strstr(out, "0-1 delay 10ms"));
    double t[3] = {0};
    static const char *const names[] = {"gpipe", "1f1b", "1f1b-slack"};
    for (char *line = out; line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        char name[32], slack[16];
        double ms;
        if (line[0] == '#' || sscanf(line, "%31s %15s %lf", name, slack, &ms) != 3)
            continue;
        for (int i = 0; i < 3; i++)
            if (!strcmp(name, names[i]))
                t[i] = ms;
    }
    print_message("gpipe %.1f ms, 1f1b %.1f ms, 1f1b-slack (auto) %.1f ms\n", t[0], t[1], t[2]);
    if (!(t[0] > 0 && t[1] > 0 && t[2] > 0 && t[2] < t[0] && t[2] < t[1]))
        fail_msg("1f1b-slack is not the fastest:\n%s", out);
    expect(2, "--net '10qs'", "sim -f 25 -B 75 --net 10qs");
    expect(2, "--net", "sim -P 2 -f 25 -B 75 --net 0-5=10ms/1Gbps");
}

/* --model: the costs and message size come from the models module (emulate device
 * model); gpt3-small's boundary tensor at seq 2048, micro-batch 1 is 2048*768*4 bytes. */
static void test_sim_model(void **state)
{
    (void)state;
    expect(0, "# OK", "sim --model gpt3-small -P 3 -m 8 --compute emulate:v100 -s 1f1b");
    assert_non_null(strstr(out, "costs from gpt3-small seq 2048 micro-batch 1 on emulate:v100"));
    assert_non_null(strstr(out, "messages 6291456 B activations"));
    expect(2, "drop --fwd-ms", "sim --model gpt3-small -f 25");
    expect(2, "--seq-len applies to --model", "sim -f 25 -B 75 --seq-len 128");
    expect(2, "--compute 'cpu'", "sim --model tiny --compute cpu");
    expect(2, "--model", "sim --model gpt5 -P 2");
}

static void test_sim_usage_errors(void **state)
{
    (void)state;
    static const struct {
        const char *args, *needle;
    } bad[] = {
        {"sim -B 75", "--fwd-ms is required"},
        {"sim -f 25", "--bwd-ms is required"},
        {"sim -f -1 -B 75", "--fwd-ms '-1'"},
        {"sim -f nan -B 75", "--fwd-ms 'nan'"},
        {"sim -f 25 -B 75,1", "--bwd-ms has 2 values; want 1 or 3"},
        {"sim -f 25 -B 75 -P 0", "--stages '0'"},
        {"sim -f 25 -B 75 -m 0", "--micro-batches '0'"},
        {"sim -f 25 -B 75 --batch-size 10 -u 3", "not a multiple"},
        {"sim -f 25 -B 75 -m 8 -u 2", "not both"},
        {"sim -f 25 -B 75 -s gpipe,zb", "unknown schedule 'zb'"},
        {"sim -f 25 -B 75 --bytes 6.3XB", "--bytes '6.3XB'"},
        {"sim -f 25 -B 75 --grad-bytes -4", "--grad-bytes '-4'"},
        {"sim -f 25 -B 75 --send-mode async", "--send-mode 'async'"},
        {"sim -f 25 -B 75 -k x", "--slack 'x'"},
        {"sim -f 25 -B 75 --overhead-us -1", "--overhead-us '-1'"},
        {"sim --wat", "'--wat'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        expect(2, bad[i].needle, bad[i].args);
    expect(0, "usage: pipenem sim", "sim --help");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedule_check_and_timeline),
        cmocka_unit_test(test_schedule_ops_file),
        cmocka_unit_test(test_schedule_usage_errors),
        cmocka_unit_test(test_sim_output),
        cmocka_unit_test(test_sim_net_slack_auto),
        cmocka_unit_test(test_sim_model),
        cmocka_unit_test(test_sim_usage_errors),
    };
    return cmocka_run_group_tests_name("sched_cli", tests, NULL, NULL);
}
