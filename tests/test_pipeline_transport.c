/* The UCX transport over loopback inside one process: two workers (rank 0 and 1) talk to
 * each other, over shared memory and over TCP on lo. Checks matching by key, early and late
 * receives, the size check that leaves the tensor untouched, timeouts and peer loss. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "pipeline/transport.h"
#include "pipeline/ucx.h"
#include "tests/testutil.h"

typedef struct {
    transport_t t[2];
    const char *tls, *dev;
} pair_t;

static pair_t pair_tcp = {.tls = "tcp", .dev = "lo"};
static pair_t pair_default = {.tls = NULL, .dev = NULL};

static int pair_open(void **state)
{
    pair_t *p = *state;
    char err[256];
    for (int r = 0; r < 2; r++) {
        ucx_params_t prm = {.rank = r, .size = 2, .tls = p->tls, .net_devices = p->dev};
        if (ucx_transport_open(&prm, &p->t[r], err, sizeof err)) {
            print_message("ucx_transport_open: %s\n", err);
            return -1;
        }
    }
    for (int r = 0; r < 2; r++) {
        const void *blob;
        size_t len;
        if (p->t[1 - r].ops->address(p->t[1 - r].impl, &blob, &len) ||
            p->t[r].ops->connect(p->t[r].impl, 1 - r, blob, len, err, sizeof err)) {
            print_message("connect: %s\n", err);
            return -1;
        }
    }
    return 0;
}

static int pair_close(void **state)
{
    pair_t *p = *state;
    transport_quiesce(&p->t[0]);
    transport_quiesce(&p->t[1]);
    transport_destroy(&p->t[0]);
    transport_destroy(&p->t[1]);
    return 0;
}

static void fill(float *x, size_t n, float seed)
{
    for (size_t i = 0; i < n; i++)
        x[i] = seed + (float)(i % 1009) * 0.5f;
}

static size_t count_bad(const float *x, size_t n, float seed)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += x[i] != seed + (float)(i % 1009) * 0.5f;
    return bad;
}

/* Sizes from eager to rendezvous, receive posted before and after the message arrives. */
static void test_roundtrip_sizes(void **state)
{
    pair_t *p = *state;
    static const size_t sizes[] = {4, 4096, 65536, 1 << 20, 25u << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k] / sizeof(float);
        float *src = malloc(sizes[k]), *dst = malloc(sizes[k]);
        assert_non_null(src);
        assert_non_null(dst);
        fill(src, n, (float)k);
        for (int late = 0; late < 2; late++) {
            memset(dst, 0xff, sizes[k]);
            transport_req_t s, r;
            transport_key_t key = {TRANSPORT_ACT, 3 + late, (int)k};
            if (!late)
                assert_int_equal(transport_recv(&p->t[1], 0, key, dst, sizes[k], &r), 0);
            assert_int_equal(transport_send(&p->t[0], 1, key, src, sizes[k], &s), 0);
            if (late) {
                /* Give the message time to arrive unexpected before the receive exists. */
                struct timespec ts = {0, 20 * 1000 * 1000};
                nanosleep(&ts, NULL);
                assert_int_equal(transport_recv(&p->t[1], 0, key, dst, sizes[k], &r), 0);
            }
            int rc = transport_wait(&p->t[1], &r, 30);
            if (rc)
                fail_msg("receive of %zu bytes (late=%d): %d %s", sizes[k], late, rc, r.why);
            assert_int_equal(transport_wait(&p->t[0], &s, 30), 0);
            size_t bad = count_bad(dst, n, (float)k);
            print_message("%zu bytes late=%d: %zu wrong floats (tolerance 0)\n", sizes[k], late, bad);
            assert_int_equal(bad, 0);
        }
        free(src);
        free(dst);
    }
}

/* Messages are matched by (direction, iteration, micro-batch), not by arrival order. */
static void test_matching_by_key(void **state)
{
    pair_t *p = *state;
    enum { N = 6, LEN = 300000 };
    static float src[N][LEN / 4], dst[N][LEN / 4];
    transport_req_t s[N], r[N];
    transport_key_t keys[N];
    for (int i = 0; i < N; i++) {
        keys[i] = (transport_key_t){i % 2 ? TRANSPORT_GRAD : TRANSPORT_ACT, i / 2, (i * 7) % 5};
        fill(src[i], LEN / 4, (float)(10 * i));
    }
    /* rank 1 sends in one order, rank 0 receives in the reverse order */
    for (int i = 0; i < N; i++)
        assert_int_equal(transport_send(&p->t[1], 0, keys[i], src[i], LEN, &s[i]), 0);
    for (int i = N - 1; i >= 0; i--)
        assert_int_equal(transport_recv(&p->t[0], 1, keys[i], dst[i], LEN, &r[i]), 0);
    size_t bad = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(transport_wait(&p->t[0], &r[i], 30), 0);
        assert_int_equal(transport_wait(&p->t[1], &s[i], 30), 0);
        bad += count_bad(dst[i], LEN / 4, (float)(10 * i));
    }
    print_message("%d messages out of order: %zu wrong floats (tolerance 0)\n", N, bad);
    assert_int_equal(bad, 0);
}

/* A message of the wrong size fails the receive and never touches its buffer, whether
 * it arrives before or after the receive is posted, larger or smaller. */
static void test_size_mismatch_rejected(void **state)
{
    pair_t *p = *state;
    static const size_t sent[] = {1000, 600, 3 << 20, 1 << 20};
    static const size_t want[] = {800, 800, 2 << 20, 2 << 20};
    for (size_t k = 0; k < 4; k++) {
        for (int late = 0; late < 2; late++) {
            /* The sender's request stays pending (the message is never received) until the
             * transport closes, so its buffer must outlive the test body. */
            static unsigned char srcs[4][2][3 << 20];
            static transport_req_t sends[4][2];
            unsigned char *src = srcs[k][late], *dst = malloc(want[k]);
            memset(src, 0x5a, sent[k]);
            memset(dst, 0xc3, want[k]);
            transport_req_t r;
            transport_req_t *sp = &sends[k][late];
            transport_key_t key = {TRANSPORT_GRAD, 100 + (int)k, late};
            if (!late)
                assert_int_equal(transport_recv(&p->t[0], 1, key, dst, want[k], &r), 0);
            assert_int_equal(transport_send(&p->t[1], 0, key, src, sent[k], sp), 0);
            if (late) {
                struct timespec ts = {0, 20 * 1000 * 1000};
                nanosleep(&ts, NULL);
                assert_int_equal(transport_recv(&p->t[0], 1, key, dst, want[k], &r), 0);
            }
            int rc = transport_wait(&p->t[0], &r, 10);
            size_t touched = 0;
            for (size_t i = 0; i < want[k]; i++)
                touched += dst[i] != 0xc3;
            print_message("sent %zu expected %zu late=%d: status %d (%s), %zu bytes touched\n", sent[k],
                          want[k], late, rc, r.why, touched);
            assert_int_equal(rc, -EMSGSIZE);
            assert_int_equal(touched, 0);
            free(dst);
        }
    }
}

static void test_timeout_and_fail(void **state)
{
    pair_t *p = *state;
    float x[4];
    transport_req_t r;
    transport_key_t key = {TRANSPORT_ACT, 999, 0};
    assert_int_equal(transport_recv(&p->t[1], 0, key, x, sizeof x, &r), 0);
    double t0 = pn_now();
    assert_int_equal(transport_wait(&p->t[1], &r, 0.2), -ETIMEDOUT);
    double waited = pn_now() - t0;
    print_message("timeout 0.2 s waited %.3f s\n", waited);
    assert_true(waited >= 0.19);
    /* fail() wakes a waiter and fails the pending receive with the reason given */
    transport_fail(&p->t[1], -ECANCELED, "rank 7 died");
    assert_int_equal(transport_wait(&p->t[1], &r, 5), -ECANCELED);
    assert_non_null(strstr(r.why, "rank 7 died"));
    transport_req_t r2;
    assert_int_equal(transport_recv(&p->t[1], 0, key, x, sizeof x, &r2), 0);
    assert_int_equal(transport_wait(&p->t[1], &r2, 5), -ECANCELED);
}

/* Rank 1 goes away while rank 0 waits on it: rank 0's receive fails, naming rank 1. */
static void test_peer_lost(void **state)
{
    pair_t *p = *state;
    float x[1024];
    transport_req_t r;
    transport_key_t key = {TRANSPORT_GRAD, 5, 5};
    assert_int_equal(transport_recv(&p->t[0], 1, key, x, sizeof x, &r), 0);
    transport_destroy(&p->t[1]);
    double t0 = pn_now();
    int rc = transport_wait(&p->t[0], &r, 20);
    print_message("peer closed: status %d after %.2f s (%s)\n", rc, pn_now() - t0, r.why);
    assert_int_equal(rc, -ECONNRESET);
    assert_non_null(strstr(r.why, "rank 1"));
}

static void test_tag_layout(void **state)
{
    (void)state;
    transport_key_t a = {TRANSPORT_ACT, 1, 2}, b = {TRANSPORT_GRAD, 1, 2}, c = {TRANSPORT_ACT, 2, 1};
    assert_true(ucx_tag_make(0, a) != ucx_tag_make(0, b));
    assert_true(ucx_tag_make(0, a) != ucx_tag_make(0, c));
    assert_true(ucx_tag_make(0, a) != ucx_tag_make(1, a));
    transport_key_t big = {TRANSPORT_GRAD, TRANSPORT_ITER_MAX - 1, TRANSPORT_MB_MAX - 1};
    assert_true(ucx_tag_make(TRANSPORT_RANK_MAX - 1, big) != ucx_tag_make(TRANSPORT_RANK_MAX - 2, big));
}

static void test_bad_arguments(void **state)
{
    pair_t *p = *state;
    float x[4] = {0};
    transport_req_t r;
    assert_int_equal(transport_send(&p->t[0], 0, (transport_key_t){TRANSPORT_ACT, 0, 0}, x, 16, &r), -EINVAL);
    assert_int_equal(transport_send(&p->t[0], 2, (transport_key_t){TRANSPORT_ACT, 0, 0}, x, 16, &r), -EINVAL);
    assert_int_equal(transport_recv(&p->t[0], 1, (transport_key_t){TRANSPORT_ACT, -1, 0}, x, 16, &r), -EINVAL);
    assert_int_equal(transport_recv(&p->t[0], 1, (transport_key_t){TRANSPORT_ACT, 0, TRANSPORT_MB_MAX}, x, 16, &r),
                     -EINVAL);
    char err[256];
    transport_t t;
    ucx_params_t bad = {.rank = 2, .size = 2};
    assert_int_equal(ucx_transport_open(&bad, &t, err, sizeof err), -EINVAL);
    ucx_params_t badtl = {.rank = 0, .size = 1, .tls = "tcp", .net_devices = "pnnosuchdev0"};
    int rc = ucx_transport_open(&badtl, &t, err, sizeof err);
    print_message("nonexistent device: %d %s\n", rc, rc ? err : "(opened)");
    if (rc == 0)
        transport_destroy(&t);
    assert_int_not_equal(rc, 0);
}

int main(void)
{
    const struct CMUnitTest tcp[] = {
        cmocka_unit_test(test_tag_layout),
        cmocka_unit_test_prestate_setup_teardown(test_roundtrip_sizes, pair_open, pair_close, &pair_tcp),
        cmocka_unit_test_prestate_setup_teardown(test_matching_by_key, pair_open, pair_close, &pair_tcp),
        cmocka_unit_test_prestate_setup_teardown(test_size_mismatch_rejected, pair_open, pair_close, &pair_tcp),
        cmocka_unit_test_prestate_setup_teardown(test_timeout_and_fail, pair_open, pair_close, &pair_tcp),
        cmocka_unit_test_prestate_setup_teardown(test_peer_lost, pair_open, pair_close, &pair_tcp),
        cmocka_unit_test_prestate_setup_teardown(test_bad_arguments, pair_open, pair_close, &pair_tcp),
    };
    const struct CMUnitTest shm[] = {
        cmocka_unit_test_prestate_setup_teardown(test_roundtrip_sizes, pair_open, pair_close, &pair_default),
        cmocka_unit_test_prestate_setup_teardown(test_matching_by_key, pair_open, pair_close, &pair_default),
        cmocka_unit_test_prestate_setup_teardown(test_size_mismatch_rejected, pair_open, pair_close, &pair_default),
    };
    int fails = cmocka_run_group_tests_name("pipeline transport over tcp/lo", tcp, NULL, NULL);
    fails += cmocka_run_group_tests_name("pipeline transport over UCX defaults", shm, NULL, NULL);
    return fails;
}
