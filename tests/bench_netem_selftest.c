/* Fidelity of the emulator this machine's `auto` picks, measured with `pipenem netem
 * selftest` between two namespaces: the issue's profiles 100us/10Gbps, 1ms/5Gbps,
 * 5ms/2Gbps and 10ms/1Gbps, and the rates alone (TBF). Target: every judged figure
 * within 5% of the configured one (the self-test's own verdict); `default` is reported,
 * not judged. Where auto picks the shim (no sch_netem) it is measured over the pipeline
 * transport wrapped in the shim; a profile whose rate this host cannot carry even
 * unshaped, or (shim) whose delay this host's own path outlasts, is marked FAILED(host),
 * with the host's share of the error, and fails the target all the same. Needs root. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tests/testutil.h"

static char out[1 << 16];

static void run_selftest(const char *nets)
{
    if (geteuid() != 0) {
        print_message("SKIP: needs root for network namespaces and qdiscs\n");
        skip();
    }
    int rc = tu_pipenem_run(out, sizeof out, "netem selftest --ceiling %s", nets);
    fputs(out, stdout);   /* print_message truncates long text */
    fflush(stdout);
    if (rc != 0)
        fail_msg("selftest %s exited %d", nets, rc);
}

static void bench_issue_profiles(void **state)
{
    (void)state;
    run_selftest("--net 100us/10Gbps --net 1ms/5Gbps --net 5ms/2Gbps --net 10ms/1Gbps --net default");
}

static void bench_rates_alone(void **state)
{
    (void)state;
    run_selftest("--net rate=1Gbps --net rate=2Gbps --net rate=5Gbps");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bench_rates_alone),
        cmocka_unit_test(bench_issue_profiles),
    };
    return cmocka_run_group_tests_name("bench_netem_selftest", tests, NULL, NULL);
}
