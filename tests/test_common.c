/* The base layer's helpers: the parsers take the whole string and refuse what is out of
 * range or trailed by junk, leaving *out untouched; pn_grow doubles, keeps what was there,
 * and leaves the array usable when it cannot grow. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/grow.h"
#include "common/parse.h"

static void test_grow(void **state)
{
    (void)state;
    int *a = NULL;
    size_t cap = 0;
    for (size_t n = 0; n < 1000; n++) {
        int *g = pn_grow(a, &cap, n, sizeof *a, 4);
        assert_non_null(g);
        a = g;
        assert_true(cap > n);
        a[n] = (int)n * 3;
    }
    /* Doubling from 4: the capacities are 4, 8, ..., 1024. */
    assert_int_equal(cap, 1024);
    for (size_t n = 0; n < 1000; n++)
        assert_int_equal(a[n], (int)n * 3);
    /* Room already there: the same array, the capacity unchanged. */
    assert_ptr_equal(pn_grow(a, &cap, 10, sizeof *a, 4), a);
    assert_int_equal(cap, 1024);
    /* An impossible size: NULL, and the array and its capacity as they were. */
    assert_null(pn_grow(a, &cap, 1024, SIZE_MAX / 2, 4));
    assert_int_equal(cap, 1024);
    assert_int_equal(a[999], 2997);
    free(a);
}

static void test_parsers(void **state)
{
    (void)state;
    int i = 7;
    assert_int_equal(pn_parse_int("12", 1, 32, &i), 0);
    assert_int_equal(i, 12);
    assert_int_equal(pn_parse_int("33", 1, 32, &i), -EINVAL);
    assert_int_equal(pn_parse_int("3x", 1, 32, &i), -EINVAL);
    assert_int_equal(pn_parse_int("", 1, 32, &i), -EINVAL);
    assert_int_equal(i, 12);
    double d = -1;
    assert_int_equal(pn_parse_duration("25ms", &d), 0);
    assert_true(fabs(d - 25e-3) < 1e-15);
    assert_int_equal(pn_parse_duration("25 parsecs", &d), -EINVAL);
    assert_int_equal(pn_parse_rate("10Gbps", &d), 0);
    assert_true(d == 10e9);
    uint64_t sz = 0;
    assert_int_equal(pn_parse_size("64MiB", &sz), 0);
    assert_int_equal(sz, 64u << 20);
    assert_int_equal(pn_parse_size("64MiBs", &sz), -EINVAL);
    assert_int_equal(sz, 64u << 20);
}

static void test_err(void **state)
{
    (void)state;
    char err[32];
    assert_int_equal(pn_err(err, sizeof err, -EINVAL, "--stages: %d", 99), -EINVAL);
    assert_string_equal(err, "--stages: 99");
    pn_err_prefix(err, sizeof err, "run");
    assert_string_equal(err, "run: --stages: 99");
    assert_int_equal(pn_err(NULL, 0, -ENOMEM, "x"), -ENOMEM);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grow),
        cmocka_unit_test(test_parsers),
        cmocka_unit_test(test_err),
    };
    return cmocka_run_group_tests_name("common", tests, NULL, NULL);
}
