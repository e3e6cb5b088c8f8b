/* The ring all-reduce (pipeline/allreduce.h) among D = 2, 3, 4 UCX transports over TCP on
 * loopback, one thread per member: random fp32 buffers of 1 KB to 64 MB come back as the
 * mean, compared with the mean computed in double; a pipeline message with the same
 * iteration is not taken by the all-reduce; a member that goes away fails the others
 * within the timeout, its neighbour naming it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "pipeline/allreduce.h"
#include "pipeline/ucx.h"
#include "tests/testutil.h"

#define MAXD 4

typedef struct {
    transport_t t[MAXD];
    int d;
} ring_t;

typedef struct {
    ring_t *ring;
    int index;
    float *buf;
    size_t n;
    size_t bucket_bytes;
    double timeout;
    int leave;           /* this member destroys its transport instead of taking part */
    int rc;
    double took;
    char err[512];
} member_t;

static int ring_open(ring_t *r, int d)
{
    char err[256];
    memset(r, 0, sizeof *r);
    r->d = d;
    for (int i = 0; i < d; i++) {
        ucx_params_t prm = {.rank = i, .size = d, .tls = "tcp", .net_devices = "lo"};
        if (ucx_transport_open(&prm, &r->t[i], err, sizeof err)) {
            print_message("ucx_transport_open: %s\n", err);
            return -1;
        }
    }
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            const void *blob;
            size_t len;
            if (i == j)
                continue;
            if (r->t[j].ops->address(r->t[j].impl, &blob, &len) ||
                r->t[i].ops->connect(r->t[i].impl, j, blob, len, err, sizeof err)) {
                print_message("connect: %s\n", err);
                return -1;
            }
        }
    return 0;
}

static void ring_close(ring_t *r)
{
    for (int i = 0; i < r->d; i++)
        transport_quiesce(&r->t[i]);
    for (int i = 0; i < r->d; i++)
        transport_destroy(&r->t[i]);
}

static void *member_main(void *arg)
{
    member_t *m = arg;
    int ranks[MAXD];
    for (int i = 0; i < m->ring->d; i++)
        ranks[i] = i;
    if (m->leave) {
        transport_destroy(&m->ring->t[m->index]);
        return NULL;
    }
    allreduce_t a;
    allreduce_params_t p = {&m->ring->t[m->index], m->ring->d, m->index, ranks, m->bucket_bytes, m->timeout};
    double t0 = pn_now();
    m->rc = allreduce_init(&a, &p, m->err, sizeof m->err);
    if (!m->rc)
        m->rc = allreduce_mean(&a, m->buf, m->n, 3, 0, m->err, sizeof m->err);
    m->took = pn_now() - t0;
    allreduce_destroy(&a);
    return NULL;
}

static void run_members(member_t *m, int d)
{
    pthread_t th[MAXD];
    for (int i = 0; i < d; i++)
        assert_int_equal(pthread_create(&th[i], NULL, member_main, &m[i]), 0);
    for (int i = 0; i < d; i++)
        pthread_join(th[i], NULL);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float rnd(void)  /* uniform in [-1, 1), xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (float)((double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0 * 2 - 1);
}

/* Every member holds the mean to within fp32 rounding: the ring makes D-1 additions and
 * one division, each off by at most half an ulp (2^-24 relative) of a value no larger than
 * sum|x| (the division: than the mean), so |got - mean| <= D 2^-24 sum|x| / D; and every
 * member holds the same bits. */
static void check_mean(int d, size_t bytes, size_t bucket)
{
    size_t n = bytes / sizeof(float);
    ring_t r;
    assert_int_equal(ring_open(&r, d), 0);
    member_t m[MAXD];
    double *ref = malloc(n * sizeof *ref), *mag = malloc(n * sizeof *mag);
    assert_non_null(ref);
    assert_non_null(mag);
    memset(ref, 0, n * sizeof *ref);
    memset(mag, 0, n * sizeof *mag);
    for (int i = 0; i < d; i++) {
        m[i] = (member_t){.ring = &r, .index = i, .n = n, .bucket_bytes = bucket, .timeout = 60};
        assert_non_null(m[i].buf = malloc(n * sizeof(float)));
        for (size_t j = 0; j < n; j++) {
            m[i].buf[j] = rnd() * (j % 7 == 0 ? 1000.0f : 1.0f);
            ref[j] += m[i].buf[j];
            mag[j] += fabs(m[i].buf[j]);
        }
    }
    run_members(m, d);
    double worst = 0, worst_rel = 0, took = 0;
    size_t differ = 0;
    for (int i = 0; i < d; i++) {
        if (m[i].rc)
            fail_msg("D=%d %zu bytes: member %d: %s", d, bytes, i, m[i].err);
        took = m[i].took > took ? m[i].took : took;
        for (size_t j = 0; j < n; j++) {
            double e = fabs(m[i].buf[j] - ref[j] / d), tol = d * ldexp(1, -24) * mag[j] / d;
            if (tol > 0 && e / tol > worst)
                worst = e / tol;
            if (ref[j] != 0 && e / fabs(ref[j] / d) > worst_rel && mag[j] < 4 * fabs(ref[j]))
                worst_rel = e / fabs(ref[j] / d);
            differ += memcmp(&m[i].buf[j], &m[0].buf[j], sizeof(float)) != 0;
        }
    }
    print_message("D=%d %9zu bytes bucket %8zu: largest error %.3f of the bound D*2^-24*sum|x|/D, largest relative "
                  "error %.2e (where |sum| > sum|x|/4), %zu values differ between members, %.3f s\n",
                  d, bytes, bucket ? bucket : (size_t)ALLREDUCE_BUCKET_DEFAULT, worst, worst_rel, differ, took);
    assert_true(worst <= 1.0);
    assert_int_equal(differ, 0);
    for (int i = 0; i < d; i++)
        free(m[i].buf);
    free(ref);
    free(mag);
    ring_close(&r);
}

static void test_mean_sizes(void **state)
{
    (void)state;
    static const size_t sizes[] = {1024, 4096 + 12, 1 << 20, (3 << 20) + 4 * 7};
    for (int d = 2; d <= MAXD; d++)
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++)
            check_mean(d, sizes[k], 0);
    check_mean(3, (1 << 20) + 4 * 5, 256 << 10); /* several pieces of one bucket size */
}

static void test_mean_64mb(void **state)
{
    (void)state;
    for (int d = 2; d <= MAXD; d++)
        check_mean(d, 64u << 20, 64u << 20);
}

/* A pipeline message of the same iteration from a ring neighbour waits for its own
 * receive: the all-reduce's keys never take it. */
static void test_own_key_space(void **state)
{
    (void)state;
    ring_t r;
    assert_int_equal(ring_open(&r, 2), 0);
    float g = 42, got = 0, x[2][64];
    transport_req_t s, rv;
    transport_key_t key = {TRANSPORT_GRAD, 3, 0};
    assert_int_equal(transport_send(&r.t[0], 1, key, &g, sizeof g, &s), 0);
    member_t m[2];
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 64; j++)
            x[i][j] = (float)(i + j);
        m[i] = (member_t){.ring = &r, .index = i, .buf = x[i], .n = 64, .timeout = 20};
    }
    run_members(m, 2);
    assert_int_equal(m[0].rc, 0);
    assert_int_equal(m[1].rc, 0);
    for (int j = 0; j < 64; j++)
        assert_true(x[0][j] == (float)j + 0.5f && x[1][j] == x[0][j]);
    assert_int_equal(transport_recv(&r.t[1], 0, key, &got, sizeof got, &rv), 0);
    assert_int_equal(transport_wait(&r.t[1], &rv, 10), 0);
    assert_int_equal(transport_wait(&r.t[0], &s, 10), 0);
    assert_true(got == 42);
    print_message("the pipeline's message of iteration 3 came through after the all-reduce of iteration 3\n");
    ring_close(&r);
}

/* Member 2 of 3 goes away: members 0 and 1 fail within the timeout + 10 s, and member 0,
 * whose left neighbour it was, names it. */
static void test_lost_member(void **state)
{
    (void)state;
    ring_t r;
    assert_int_equal(ring_open(&r, 3), 0);
    const double timeout = 3;
    member_t m[3];
    for (int i = 0; i < 3; i++) {
        m[i] = (member_t){.ring = &r, .index = i, .n = 1 << 20, .timeout = timeout, .leave = i == 2};
        assert_non_null(m[i].buf = calloc(m[i].n, sizeof(float)));
    }
    double t0 = pn_now();
    run_members(m, 3);
    double took = pn_now() - t0;
    for (int i = 0; i < 2; i++) {
        print_message("member %d: rc %d after %.2f s: %s\n", i, m[i].rc, m[i].took, m[i].err);
        assert_true(m[i].rc != 0);
        assert_true(m[i].took <= timeout + 10);
    }
    assert_non_null(strstr(m[0].err, "rank 2"));
    assert_true(took <= timeout + 10);
    for (int i = 0; i < 3; i++)
        free(m[i].buf);
    r.t[2].ops = NULL;
    ring_close(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mean_sizes),
        cmocka_unit_test(test_own_key_space),
        cmocka_unit_test(test_lost_member),
        cmocka_unit_test(test_mean_64mb),
    };
    return cmocka_run_group_tests_name("pipeline_allreduce", tests, NULL, NULL);
}
