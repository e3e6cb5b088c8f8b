/* Profile and --net parsing: valid strings give the expected numbers and print back to
 * themselves; every invalid string is refused with a message naming the bad part. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "netem/profile.h"
#include "netem/shaper.h"

typedef struct {
    const char *text;
    double delay, jitter, loss, rate;
    unsigned limit;
    const char *canon;   /* what netem_profile_format prints */
} valid_t;

static const valid_t valid[] = {
    {"default", 0, 0, 0, 0, 0, "default"},
    {"10ms/1Gbps", 10e-3, 0, 0, 1e9, 0, "10ms/1Gbps"},
    {"500us/10Gbps", 500e-6, 0, 0, 10e9, 0, "500us/10Gbps"},
    {"100us/10Gbps", 100e-6, 0, 0, 10e9, 0, "100us/10Gbps"},
    {"1ms/5Gbps", 1e-3, 0, 0, 5e9, 0, "1ms/5Gbps"},
    {"5ms/2Gbps", 5e-3, 0, 0, 2e9, 0, "5ms/2Gbps"},
    {"1s/100Mbps", 1, 0, 0, 100e6, 0, "1s/100Mbps"},
    {"2.5ms/1.5Gbps", 2.5e-3, 0, 0, 1.5e9, 0, "2500us/1500Mbps"},
    {"10ms/1000000bps", 10e-3, 0, 0, 1e6, 0, "10ms/1Mbps"},
    {"10ms/64kbps", 10e-3, 0, 0, 64e3, 0, "10ms/64kbps"},
    {"10ms/64kbit", 10e-3, 0, 0, 64e3, 0, "10ms/64kbps"},
    {"20ms/100mbit", 20e-3, 0, 0, 100e6, 0, "20ms/100Mbps"},
    {"20ms/10gbit", 20e-3, 0, 0, 10e9, 0, "20ms/10Gbps"},
    {"0/1Gbps", 0, 0, 0, 1e9, 0, "rate=1Gbps"},
    {"0ms/1Gbps", 0, 0, 0, 1e9, 0, "rate=1Gbps"},
    {"delay=10ms", 10e-3, 0, 0, 0, 0, "delay=10ms"},
    {"rate=1gbit", 0, 0, 0, 1e9, 0, "rate=1Gbps"},
    {"delay=10ms,rate=1gbit", 10e-3, 0, 0, 1e9, 0, "10ms/1Gbps"},
    {"rate=1gbit,delay=10ms", 10e-3, 0, 0, 1e9, 0, "10ms/1Gbps"},
    {"delay=10ms,jitter=1ms,loss=0.1%,rate=1gbit,limit=5000", 10e-3, 1e-3, 0.001, 1e9, 5000,
     "delay=10ms,jitter=1ms,loss=0.1%,rate=1Gbps,limit=5000"},
    {"delay=10ms,loss=0.01", 10e-3, 0, 0.01, 0, 0, "delay=10ms,loss=1%"},
    {"loss=100%", 0, 0, 1, 0, 0, "loss=100%"},
    {"delay=1.5ms,jitter=500us", 1.5e-3, 500e-6, 0, 0, 0, "delay=1500us,jitter=500us"},
    {"delay=250ns", 250e-9, 0, 0, 0, 0, "delay=250ns"},
    {"limit=1000", 0, 0, 0, 0, 1000, "limit=1000"},
    {"delay=0,rate=2Gbps", 0, 0, 0, 2e9, 0, "rate=2Gbps"},
};

typedef struct {
    const char *text;
    const char *names;   /* the message must contain this */
} invalid_t;

static const invalid_t invalid[] = {
    {"", "empty"},
    {"Default", "'Default' is not"},
    {"fast", "'fast' is not"},
    {"10ms", "'10ms' is not"},
    {"10ms/", "rate is empty"},
    {"/1Gbps", "delay is empty"},
    {"10/1Gbps", "delay '10' has no unit"},
    {"10ms/1", "rate '1' has no unit"},
    {"10xs/1Gbps", "unknown unit 'xs'"},
    {"10ms/1Gbs", "unknown unit 'Gbs'"},
    {"10ms/1gbps", "unit 'gbps' is ambiguous"},
    {"10ms/100mbps", "unit 'mbps' is ambiguous"},
    {"10ms/1GBps", "unit 'GBps' is ambiguous"},
    {"-5ms/1Gbps", "delay '-5ms' is negative"},
    {"10ms/-1Gbps", "rate '-1Gbps' is negative"},
    {"10ms/0Gbps", "rate '0Gbps' must be above zero"},
    {"10ms/1Gbps/2", "more than one '/'"},
    {"ms/1Gbps", "delay 'ms' is not a number"},
    {"1e3ms/1Gbps", "unknown unit 'e3ms'"},
    {"10 ms/1Gbps", "contains a space"},
    {"delay=10ms,rate=1gbit,", "ends with a comma"},
    {"delay=10ms,,rate=1gbit", "empty item between commas"},
    {"delay=", "delay is empty"},
    {"delay=10", "delay '10' has no unit"},
    {"bandwidth=1gbit", "unknown key 'bandwidth'"},
    {"delay=10ms,delay=20ms", "key 'delay' is given twice"},
    {"delay=10ms,rate", "'rate' is not key=value"},
    {"loss=5", "loss '5' is above 100%"},
    {"loss=101%", "loss '101%' is above 100%"},
    {"loss=-1%", "loss '-1%' is negative"},
    {"loss=abc", "loss 'abc' is not a percentage"},
    {"loss=5%%", "loss '5%%' is not a percentage"},
    {"limit=0", "limit '0' must be between"},
    {"limit=-3", "limit '-3' is not a whole number"},
    {"limit=1.5", "limit '1.5' is not a whole number"},
    {"limit=99999999999", "limit '99999999999' must be between"},
    {"jitter=1ms", "jitter 1ms exceeds delay 0ms"},
    {"delay=1ms,jitter=2ms", "jitter 2ms exceeds delay 1ms"},
    {"rate=0bit", "rate '0bit' must be above zero"},
    {"rate=4bps", "below 1 byte per second"},
    {"delay=2h", "unknown unit 'h'"},
    {"delay=7200s", "above one hour"},
    {"10..5ms/1Gbps", "unknown unit '.5ms'"},
};

static void test_valid_profiles(void **state)
{
    (void)state;
    double worst = 0;
    for (size_t i = 0; i < sizeof valid / sizeof *valid; i++) {
        const valid_t *v = &valid[i];
        netem_profile_t p;
        char err[256] = "", buf[256];
        if (netem_profile_parse(v->text, &p, err, sizeof err) != 0)
            fail_msg("'%s' was refused: %s", v->text, err);
        double want[4] = {v->delay, v->jitter, v->loss, v->rate};
        double got[4] = {p.delay, p.jitter, p.loss, p.rate};
        for (int k = 0; k < 4; k++) {
            double d = fabs(want[k] - got[k]) / fmax(fabs(want[k]), 1e-12);
            worst = fmax(worst, d);
            if (d > 1e-12)
                fail_msg("'%s' field %d: got %g, want %g", v->text, k, got[k], want[k]);
        }
        assert_int_equal(p.limit, v->limit);
        assert_true(netem_profile_format(&p, buf, sizeof buf) > 0);
        if (strcmp(buf, v->canon))
            fail_msg("'%s' prints as '%s', want '%s'", v->text, buf, v->canon);
        netem_profile_t back;
        if (netem_profile_parse(buf, &back, err, sizeof err) != 0)
            fail_msg("printed '%s' does not parse back: %s", buf, err);
        assert_memory_equal(&back, &p, sizeof p);
        assert_int_equal(netem_profile_is_default(&p), !strcmp(v->text, "default"));
    }
    print_message("%zu valid profiles, largest relative difference %g (tolerance 1e-12)\n",
                  sizeof valid / sizeof *valid, worst);
}

static void test_invalid_profiles(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof invalid / sizeof *invalid; i++) {
        netem_profile_t p = {.delay = 42};
        char err[256] = "";
        int rc = netem_profile_parse(invalid[i].text, &p, err, sizeof err);
        if (rc != -EINVAL)
            fail_msg("'%s' gave %d, want -EINVAL", invalid[i].text, rc);
        if (!strstr(err, invalid[i].names))
            fail_msg("'%s': message '%s' does not name '%s'", invalid[i].text, err, invalid[i].names);
        assert_true(p.delay == 42);   /* output untouched on error */
    }
    print_message("%zu invalid profiles refused with a message naming the bad part\n",
                  sizeof invalid / sizeof *invalid);
}

static void test_label(void **state)
{
    (void)state;
    netem_profile_t p = {.delay = 10e-3, .rate = 1e9};
    char buf[128];
    assert_true(netem_profile_label(&p, buf, sizeof buf) > 0);
    assert_string_equal(buf, "delay 10ms  bandwidth 1Gbps");
    netem_profile_t d = {0};
    assert_true(netem_profile_label(&d, buf, sizeof buf) > 0);
    assert_string_equal(buf, "default");
    assert_int_equal(netem_profile_format(&p, buf, 4), -ENOSPC);
    assert_int_equal(netem_profile_label(&p, buf, 4), -ENOSPC);
}

static void test_net_lists(void **state)
{
    (void)state;
    netem_profile_t links[4];
    char err[256] = "";
    assert_int_equal(netem_net_parse("10ms/1Gbps", 4, links, err, sizeof err), 0);
    for (int i = 0; i < 3; i++)
        assert_true(links[i].delay == 10e-3 && links[i].rate == 1e9);
    assert_int_equal(netem_net_parse("0-1=10ms/1Gbps,1-2=default", 4, links, err, sizeof err), 0);
    assert_true(links[0].delay == 10e-3 && netem_profile_is_default(&links[1]) &&
                netem_profile_is_default(&links[2]));
    assert_int_equal(netem_net_parse("1-2=delay=5ms,jitter=1ms,rate=1gbit,0-1=1ms/5Gbps", 3, links,
                                     err, sizeof err), 0);
    assert_true(links[1].delay == 5e-3 && links[1].jitter == 1e-3 && links[1].rate == 1e9);
    assert_true(links[0].delay == 1e-3 && links[0].rate == 5e9);
    assert_int_equal(netem_net_parse("delay=1ms,rate=1gbit", 2, links, err, sizeof err), 0);
    assert_true(links[0].delay == 1e-3 && links[0].rate == 1e9);

    static const invalid_t bad[] = {
        {"", "--net is empty"},
        {"0-2=10ms/1Gbps", "'0-2' does not join neighbouring"},
        {"2-3=10ms/1Gbps", "names host 3, but there are 3 hosts"},
        {"0-1=10ms/1Gbps,0-1=default", "'0-1' is given twice"},
        {"0-1=10ms/1Gbps,x", "link 0-1: rate '1Gbps,x' has unknown unit"},
        {"0-1=fast", "link 0-1: profile 'fast' is not"},
        {"0-1=", "link 0-1: profile is empty"},
        {"10ms/1Tbs", "--net: rate '1Tbs' has unknown unit 'Tbs'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = '\0';
        if (netem_net_parse(bad[i].text, 3, links, err, sizeof err) != -EINVAL)
            fail_msg("--net '%s' was accepted", bad[i].text);
        if (!strstr(err, bad[i].names))
            fail_msg("--net '%s': message '%s' does not name '%s'", bad[i].text, err, bad[i].names);
    }
}

static void test_goodput(void **state)
{
    (void)state;
    double g = netem_profile_goodput(1e9, 1500);
    print_message("goodput at 1 Gbit/s, MTU 1500: %.4f Gbit/s (%.2f%%)\n", g / 1e9, g / 1e7);
    assert_true(fabs(g / 1e9 - 1448.0 / 1514.0) < 1e-12);
    assert_int_equal(netem_shaper_wire_bytes(1448, 1500), 1514);
    assert_int_equal(netem_shaper_wire_bytes(1449, 1500), 1449 + 132);
}

static void test_shaper_clock(void **state)
{
    (void)state;
    netem_profile_t p = {.delay = 10e-3, .rate = 1e9};
    netem_shaper_t s;
    netem_shaper_init(&s, &p);
    /* 1 MB at 1 Gbit/s takes 8 ms to serialise, then 10 ms of flight. */
    double t1 = netem_shaper_deliver(&s, 0.0, 1000000);
    assert_true(fabs(t1 - 0.018) < 1e-12);
    assert_true(fabs(s.free_at - 0.008) < 1e-12);
    /* A message handed over while the link is busy queues behind the first. */
    double t2 = netem_shaper_deliver(&s, 0.001, 125000);
    assert_true(fabs(t2 - (0.008 + 0.001 + 0.010)) < 1e-12);
    /* After an idle gap the link starts at the hand-over time. */
    double t3 = netem_shaper_deliver(&s, 1.0, 0);
    assert_true(fabs(t3 - 1.010) < 1e-12);
    assert_true(fabs(s.free_at - 1.0) < 1e-12);
    /* Unlimited rate: only the delay. */
    netem_profile_t d = {.delay = 1e-3};
    netem_shaper_init(&s, &d);
    assert_true(fabs(netem_shaper_deliver(&s, 2.0, 1 << 30) - 2.001) < 1e-12);
    /* Default: delivered at once. */
    netem_profile_t z = {0};
    netem_shaper_init(&s, &z);
    assert_true(netem_shaper_deliver(&s, 3.0, 4096) == 3.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_profiles), cmocka_unit_test(test_invalid_profiles),
        cmocka_unit_test(test_label),          cmocka_unit_test(test_net_lists),
        cmocka_unit_test(test_goodput),        cmocka_unit_test(test_shaper_clock),
    };
    return cmocka_run_group_tests_name("netem_profile", tests, NULL, NULL);
}
