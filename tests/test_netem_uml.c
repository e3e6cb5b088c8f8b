/* The real-kernel test: boots Debian's user-mode Linux (which has sch_netem, unlike the
 * host) on the host file system with tests/netem/uml-init.sh as init, which drives the
 * tc controller and the self-test with the netem backend and prints what it measured;
 * this program judges it. Run as `test_netem_uml --insmod FILE...` it loads kernel
 * modules (finit_module), so the guest needs no kmod. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <sys/prctl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "netem/profile.h"
#include "tests/testutil.h"

#define UML_TIMEOUT_S 420
#define TOL 0.05

static char console[1 << 20];
static char skip_reason[256];

static int insmod(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) != 0) {
            perror(argv[i]);
            return 1;
        }
        close(fd);
    }
    return 0;
}

/* The value after "PNUML key " on its first line, or NULL. */
static const char *value(const char *key)
{
    static char buf[4][1024];
    static int slot;
    char pat[64];
    snprintf(pat, sizeof pat, "PNUML %s", key);
    const char *p = console;
    while ((p = strstr(p, pat)) && p[strlen(pat)] != ' ' && p[strlen(pat)] != '\n' && p[strlen(pat)] != '\r')
        p++;
    if (!p)
        return NULL;
    p += strlen(pat);
    p += *p == ' ';
    size_t n = strcspn(p, "\r\n");
    char *b = buf[slot++ % 4];
    snprintf(b, sizeof buf[0], "%.*s", (int)n, p);
    return b;
}

static int boot(void **state)
{
    (void)state;
    char exe[512], repo[512], moddir[512], cmd[4096];
    if (access("/usr/bin/linux.uml", X_OK) != 0) {
        snprintf(skip_reason, sizeof skip_reason, "linux.uml is missing (apt-get install user-mode-linux)");
        return 0;
    }
    FILE *f = popen("dpkg -L user-mode-linux 2>/dev/null | grep '/kernel/net/sched/sch_netem.ko$'", "r");
    if (!f || !fgets(moddir, sizeof moddir, f)) {
        if (f)
            pclose(f);
        snprintf(skip_reason, sizeof skip_reason, "user-mode-linux ships no sch_netem.ko");
        return 0;
    }
    pclose(f);
    *strstr(moddir, "/kernel/net/sched/") = '\0';
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0 || !getcwd(repo, sizeof repo))
        return -1;
    exe[n] = '\0';
    if (strchr(repo, ' ') || strchr(exe, ' ')) {
        snprintf(skip_reason, sizeof skip_reason, "paths with spaces cannot go on the UML command line");
        return 0;
    }
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/pn%ld-uml", (long)getpid());
    /* Unknown key=value kernel parameters become init's environment. No stdin: CI. */
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s && timeout -k 10 %d linux.uml umid=pn%ld uml_dir=%s mem=1G root=/dev/root "
             "rootfstype=hostfs rootflags=/ rw init=%s/tests/netem/uml-init.sh con=null con0=null,fd:1 "
             "PN_REPO=%s PN_TESTBIN=%s PN_MODDIR=%s </dev/null 2>&1; rm -rf %s",
             dir, UML_TIMEOUT_S, (long)getpid(), dir, repo, repo, exe, moddir, dir);
    /* Inherited by the UML process: its timers (netem's delay) fire on time, not up to
     * 50 us late, each time it sleeps on the host. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    f = popen(cmd, "r");
    if (!f)
        return -1;
    size_t got = fread(console, 1, sizeof console - 1, f);
    console[got] = '\0';
    while (fgetc(f) != EOF)
        ;
    pclose(f);
    /* Show the guest's own report in the test log. */
    for (char *l = strstr(console, "PNUML"); l; l = strstr(l + 1, "\nPNUML")) {
        if (*l == '\n')
            l++;
        print_message("%.*s\n", (int)strcspn(l, "\r\n"), l);
    }
    if (!value("done"))
        print_message("user-mode Linux did not finish (timeout %d s); console tail:\n%s\n", UML_TIMEOUT_S,
                      got > 3000 ? console + got - 3000 : console);
    return 0;
}

#define NEED_UML()                                                                       \
    do {                                                                                 \
        if (skip_reason[0]) {                                                            \
            print_message("SKIP: %s\n", skip_reason);                                    \
            skip();                                                                      \
        }                                                                                \
        if (!value("done"))                                                              \
            fail_msg("user-mode Linux did not run the script to its end");              \
    } while (0)

static void test_controller_in_uml(void **state)
{
    (void)state;
    NEED_UML();
    const char *err = value("error");
    if (err)
        fail_msg("guest: %s", err);
    /* Read back the same profile from the kernel on both ends. */
    const char *a = value("show_a"), *b = value("show_b");
    assert_non_null(a);
    assert_non_null(b);
    if (!strstr(a, " netem ") || !strstr(a, " 10ms/1Gbps ") || !strstr(b, " 10ms/1Gbps "))
        fail_msg("show does not read back 10ms/1Gbps: '%s' / '%s'", a, b);
    /* tc agrees: latency 10ms, rate 1Gbit, our derived limit. */
    const char *tc = value("tc_a");
    assert_non_null(tc);
    if (!strstr(tc, "delay 10ms") || !strstr(tc, "rate 1Gbit"))
        fail_msg("tc shows '%s'", tc);
    /* Ping round trip 20 ms +- 1 ms. */
    const char *ping = value("ping_avg_ms");
    assert_non_null(ping);
    double rtt = atof(ping);
    print_message("ping RTT %.3f ms, configured 20 ms, tolerance +-1 ms, difference %.3f ms\n", rtt,
                  fabs(rtt - 20.0));
    assert_true(fabs(rtt - 20.0) <= 1.0);
    /* TCP goodput within 5% of what 1 Gbit/s allows after headers. */
    const char *gp = value("goodput_mbps");
    assert_non_null(gp);
    double want = netem_profile_goodput(1e9, 1500) / 1e6, got = atof(gp);
    double d = tu_reldiff(got, want, 1);
    print_message("iperf3 goodput %.1f Mbit/s, expected %.1f Mbit/s (1 Gbit/s x 1448/1514), "
                  "difference %.2f%% (tolerance 5%%)\n", got, want, d * 100);
    assert_true(d <= TOL);
    /* Clear restores exactly the original qdisc on both ends. */
    const char *ba = value("before_a"), *aa = value("after_a"), *bb = value("before_b"), *ab = value("after_b");
    assert_non_null(ba);
    assert_non_null(aa);
    assert_non_null(bb);
    assert_non_null(ab);
    print_message("va before '%s' after '%s'\n", ba, aa);
    assert_string_equal(ba, aa);
    assert_non_null(strstr(aa, "pfifo 9: root"));
    assert_string_equal(bb, ab);
}

/* The self-test's row for a profile in attempt `tag` ("selftest" or "retry"), and the
 * unshaped ceiling measured just before it. 0 when the attempt has no such row. */
static int selftest_row(const char *tag, const char *profile, double *rtt_err, double *gp_err,
                        double *gp_meas, double *ceiling, char *verdict)
{
    char pat[96], cpat[64];
    snprintf(pat, sizeof pat, "PNUML %s   %s ", tag, profile);
    snprintf(cpat, sizeof cpat, "PNUML %s # emulator", tag);
    const char *p = strstr(console, pat);
    if (!p)
        return 0;
    *ceiling = 0;
    for (const char *c = strstr(console, cpat); c && c < p; c = strstr(c + 1, cpat)) {
        const char *g = strstr(c, "goodput ceiling ");
        if (g && g < p)
            *ceiling = atof(g + strlen("goodput ceiling ")) * 1e9;
    }
    char prof[32], emu[16];
    double base, cfg, meas, med, rate, exp, mean;
    if (sscanf(p + strlen("PNUML ") + strlen(tag), "%31s %15s %lf %lf %lf %lf %lf %lf %lf %lf %lf %lf %15s",
               prof, emu, &base, &cfg, &meas, &med, rtt_err, &rate, &exp, gp_meas, &mean, gp_err, verdict) != 13)
        fail_msg("cannot read the self-test row: %.200s", p);
    assert_string_equal(emu, "netem");
    return 1;
}

/* 1 when the attempt's row for the profile is within tolerance. */
static int judge(const char *tag, const char *profile, double rate, double *worst)
{
    double re, ge, gm, ceil_bps;
    char verdict[16];
    if (!selftest_row(tag, profile, &re, &ge, &gm, &ceil_bps, verdict))
        return 0;
    double want = netem_profile_goodput(rate, 1500);
    print_message("%s %s: rtt error %.2f%%, goodput %.3f Gbit/s (expected %.3f), error %.2f%% -> %s; "
                  "UML's unshaped ceiling just before: %.3f Gbit/s\n", tag, profile, re, gm, want / 1e9, ge,
                  verdict, ceil_bps / 1e9);
    int ok = re <= TOL * 100 && ge <= TOL * 100;
    if (ok)
        *worst = fmax(*worst, fmax(re, ge));
    return ok;
}

static void test_selftest_in_uml(void **state)
{
    (void)state;
    NEED_UML();
    const char *ceil = strstr(console, "unshaped goodput ceiling");
    if (ceil)
        print_message("user-mode Linux's own throughput ceiling (unshaped veth, one TCP stream, one "
                      "emulated CPU): %.*s\n", (int)strcspn(ceil + 25, "\r\n"), ceil + 25);
    static const char *const profiles[] = {"10ms/1Gbps", "5ms/2Gbps"};
    static const double rates[] = {1e9, 2e9};
    double worst = 0;
    for (int i = 0; i < 2; i++) {
        if (judge("selftest", profiles[i], rates[i], &worst))
            continue;
        /* UML is one emulated CPU sharing a busy host: one retry, reported. */
        if (!judge("retry", profiles[i], rates[i], &worst))
            fail_msg("%s is not within 5%% in user-mode Linux (both attempts above)", profiles[i]);
    }
    print_message("largest self-test error %.2f%% (tolerance 5%%)\n", worst);
    const char *left = value("leftover_netns");
    assert_non_null(left);
    assert_string_equal(left, "0");
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--insmod"))
        return insmod(argc - 2, argv + 2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_controller_in_uml),
        cmocka_unit_test(test_selftest_in_uml),
    };
    return cmocka_run_group_tests_name("netem_uml", tests, boot, NULL);
}
