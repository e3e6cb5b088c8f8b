/* The variant tables callers act on instead of names: the emulator entries' flags and
 * derived name list, and the qdisc ops table (lookups, the shaper chosen per profile, the
 * probe's order, what `netem apply` says it installed). No root needed: nothing here
 * touches the kernel. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "netem/emulator.h"
#include "netem/qdisc.h"
#include "netem/tc.h"

static void test_emulator_flags(void **state)
{
    (void)state;
    const netem_emulator_t *netem = netem_emulator_find("netem"), *shim = netem_emulator_find("shim");
    assert_non_null(netem);
    assert_non_null(shim);
    assert_true(netem->changes_kernel && !netem->in_transport && netem->shapes);
    assert_true(shim->in_transport && !shim->changes_kernel && shim->shapes);
    /* the all-default entry: chosen by auto, never by name, shapes nothing */
    assert_null(netem_emulator_find("none"));
    netem_profile_t dflt = {0};
    const netem_emulator_t *e = NULL;
    char why[256], err[256];
    assert_int_equal(netem_emulator_choose("auto", &dflt, 1, &e, why, sizeof why, err, sizeof err), 0);
    assert_non_null(e);
    assert_false(e->shapes || e->in_transport || e->changes_kernel);
    assert_string_equal(netem_emulator_names(), "auto, netem, shim");
    assert_int_equal(netem_emulator_choose("bogus", &dflt, 1, &e, why, sizeof why, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "auto, netem, shim"));
}

static void test_qdisc_lookup(void **state)
{
    (void)state;
    const netem_qdisc_ops_t *q = netem_qdisc_find("netem");
    assert_non_null(q);
    assert_int_equal(q->id, NETEM_QDISC_NETEM);
    assert_string_equal(q->limit_unit, "packets");
    assert_non_null(q->put);
    assert_non_null(q->parse);
    assert_ptr_equal(netem_qdisc_of(NETEM_QDISC_NETEM), q);
    q = netem_qdisc_find("tbf");
    assert_non_null(q);
    assert_int_equal(q->id, NETEM_QDISC_TBF);
    assert_string_equal(q->limit_unit, "bytes");
    assert_null(netem_qdisc_of(NETEM_QDISC_NONE));
    assert_null(netem_qdisc_find("cake"));
    assert_null(netem_qdisc_find(NULL));
    static const char *const defaults[] = {"noqueue", "mq", "pfifo_fast", "fq_codel", "noop", "none"};
    for (size_t i = 0; i < sizeof defaults / sizeof *defaults; i++) {
        q = netem_qdisc_find(defaults[i]);
        assert_non_null(q);
        assert_true(q->kernel_default);
        assert_null(q->parse);
    }
    q = netem_qdisc_tree();
    assert_non_null(q);
    assert_string_equal(q->kind, "htb");
    assert_true(q->per_source);
    assert_non_null(q->put_class);
}

static void test_qdisc_for_profile(void **state)
{
    (void)state;
    static const struct {
        netem_profile_t p;
        netem_qdisc_kind_t want;
    } cases[] = {
        {{.delay = 10e-3, .rate = 1e9}, NETEM_QDISC_NETEM},
        {{.jitter = 1e-3}, NETEM_QDISC_NETEM},
        {{.loss = 0.01}, NETEM_QDISC_NETEM},
        {{.rate = 1e9, .limit = 100}, NETEM_QDISC_NETEM},
        {{.rate = 1e9}, NETEM_QDISC_TBF},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        assert_int_equal(netem_qdisc_for(&cases[i].p)->id, cases[i].want);
}

/* The probe walks the table: its rows keep the order `netem probe` has always printed. */
static void test_probe_order(void **state)
{
    (void)state;
    static const char *const want[NETEM_TC_PROBE_KINDS] = {"netem", "tbf", "htb", "prio", "fq_codel", "pfifo"};
    const netem_qdisc_ops_t *q;
    int k = 0;
    for (size_t i = 0; (q = netem_qdisc_at(i)) != NULL; i++)
        if (q->probed) {
            assert_true(k < NETEM_TC_PROBE_KINDS);
            assert_string_equal(q->kind, want[k]);
            assert_non_null(q->put);
            k++;
        }
    assert_int_equal(k, NETEM_TC_PROBE_KINDS);
}

static void test_describe(void **state)
{
    (void)state;
    char buf[256];
    netem_tc_applied_t a = {.kind = NETEM_QDISC_NETEM, .limit = 1234, .limit_derived = 1};
    netem_qdisc_describe(&a, buf, sizeof buf);
    assert_string_equal(buf, "qdisc netem, limit 1234 packets (derived: 2 x rate x (delay + jitter) / 1514 B + 1000)");
    a.limit_derived = 0;
    netem_qdisc_describe(&a, buf, sizeof buf);
    assert_string_equal(buf, "qdisc netem, limit 1234 packets (given)");
    a = (netem_tc_applied_t){.kind = NETEM_QDISC_TBF, .limit = 3125000, .burst = 625000};
    netem_qdisc_describe(&a, buf, sizeof buf);
    assert_string_equal(buf, "qdisc tbf, burst 625000 bytes, queue limit 3125000 bytes (20 ms at the rate + burst)");
    a = (netem_tc_applied_t){.kind = NETEM_QDISC_NONE};
    netem_qdisc_describe(&a, buf, sizeof buf);
    assert_string_equal(buf, "default: original root qdisc restored");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_emulator_flags), cmocka_unit_test(test_qdisc_lookup),
        cmocka_unit_test(test_qdisc_for_profile), cmocka_unit_test(test_probe_order),
        cmocka_unit_test(test_describe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
