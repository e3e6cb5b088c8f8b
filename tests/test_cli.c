/* The command line's contract: every subcommand is listed and answers --help, and
 * unknown words exit 2 with a message naming them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "bench/cli.h"
#include "tests/testutil.h"

static char out[1 << 16];

static void test_help_lists_every_command(void **state)
{
    (void)state;
    assert_int_equal(tu_pipenem_run(out, sizeof out, "--help"), 0);
    for (const cli_cmd_t *c = cli_cmds; c->name; c++) {
        char line[64];
        snprintf(line, sizeof line, "  %s ", c->name);
        if (!strstr(out, line))
            fail_msg("pipenem --help does not list '%s':\n%s", c->name, out);
    }
    static const char *const required[] = {"run", "sweep", "sim", "schedule", "netem",
                                           "stage", "report", "calibrate"};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++) {
        int found = 0;
        for (const cli_cmd_t *c = cli_cmds; c->name; c++)
            found |= !strcmp(c->name, required[i]);
        if (!found)
            fail_msg("subcommand '%s' is missing from the table", required[i]);
    }
}

static void test_every_command_has_help(void **state)
{
    (void)state;
    for (const cli_cmd_t *c = cli_cmds; c->name; c++) {
        int rc = tu_pipenem_run(out, sizeof out, "%s --help", c->name);
        if (rc != 0 || !strstr(out, "usage: pipenem"))
            fail_msg("pipenem %s --help exited %d:\n%s", c->name, rc, out);
    }
}

static void test_unknown_command(void **state)
{
    (void)state;
    assert_int_equal(tu_pipenem_run(out, sizeof out, "bogus"), 2);
    assert_non_null(strstr(out, "'bogus'"));
    assert_int_equal(tu_pipenem_run(out, sizeof out, "%s", ""), 2);
}

static void test_unknown_option_named(void **state)
{
    (void)state;
    for (const cli_cmd_t *c = cli_cmds; c->name; c++) {
        int rc = tu_pipenem_run(out, sizeof out, "%s --bogus", c->name);
        if (rc != 2 || !strstr(out, "--bogus"))
            fail_msg("pipenem %s --bogus exited %d without naming it:\n%s", c->name, rc, out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_lists_every_command),
        cmocka_unit_test(test_every_command_has_help),
        cmocka_unit_test(test_unknown_command),
        cmocka_unit_test(test_unknown_option_named),
    };
    return cmocka_run_group_tests_name("cli", tests, NULL, NULL);
}
