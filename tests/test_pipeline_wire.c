/* The bootstrap's wire codec and the one pair of whole-buffer loops: frames round-trip
 * over a socket pair, bad headers are refused before anything is allocated, peer text is
 * made printable, the loops serve pipes as well as sockets, a closed peer is an error
 * (not SIGPIPE), and a read that gets nothing times out. Also the clock helpers the
 * waiting relies on (pn_timespec, pn_sleep_until). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "pipeline/wire.h"

static void test_frame_round_trip(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    char payload[3000];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (char)(i * 31);
    assert_int_equal(wire_msg_send(sv[0], WIRE_TABLE, payload, sizeof payload), 0);
    assert_int_equal(wire_msg_send(sv[0], WIRE_DONE, NULL, 0), 0);
    int type = 0;
    char *got = NULL;
    size_t len = 0;
    assert_int_equal(wire_msg_recv(sv[1], &type, &got, &len, sizeof payload, pn_now() + 5), 0);
    assert_int_equal(type, WIRE_TABLE);
    assert_int_equal(len, sizeof payload);
    assert_memory_equal(got, payload, sizeof payload);
    assert_int_equal(got[len], '\0');
    free(got);
    assert_int_equal(wire_msg_recv(sv[1], &type, &got, &len, 0, pn_now() + 5), 0);
    assert_int_equal(type, WIRE_DONE);
    assert_int_equal(len, 0);
    free(got);
    /* a frame longer than the reader allows is refused from its header alone */
    assert_int_equal(wire_msg_send(sv[0], WIRE_TABLE, payload, sizeof payload), 0);
    assert_int_equal(wire_msg_recv(sv[1], &type, &got, &len, sizeof payload - 1, pn_now() + 5), -EMSGSIZE);
    close(sv[0]);
    close(sv[1]);
}

static void test_header_parse(void **state)
{
    (void)state;
    uint32_t h[3] = {htobe32(WIRE_MAGIC), htobe32(WIRE_HELLO), htobe32(100)};
    int type;
    size_t len;
    assert_int_equal(wire_header_parse(h, 100, &type, &len), 0);
    assert_int_equal(type, WIRE_HELLO);
    assert_int_equal(len, 100);
    assert_int_equal(wire_header_parse(h, 99, &type, &len), -EMSGSIZE);
    h[0] = htobe32(WIRE_MAGIC ^ 1);
    assert_int_equal(wire_header_parse(h, 100, &type, &len), -EPROTO);
}

static void test_text(void **state)
{
    (void)state;
    char buf[WIRE_TEXT_MAX + 4], out[64];
    int origin = -1;
    size_t n = wire_text_build(buf, 7, "rank 7\x1b[31m gave up\n");
    wire_text_parse(buf, n, &origin, out, sizeof out);
    assert_int_equal(origin, 7);
    assert_string_equal(out, "rank 7?[31m gave up?");
    /* too short for an origin: nothing, and no read past the end */
    wire_text_parse(buf, 3, &origin, out, sizeof out);
    assert_string_equal(out, "");
    /* longer than the frame allows: cut */
    char *lng = malloc(2 * WIRE_TEXT_MAX);
    assert_non_null(lng);
    memset(lng, 'x', 2 * WIRE_TEXT_MAX - 1);
    lng[2 * WIRE_TEXT_MAX - 1] = '\0';
    assert_int_equal(wire_text_build(buf, 1, lng), 4 + WIRE_TEXT_MAX - 1);
    free(lng);
}

static void test_cursor(void **state)
{
    (void)state;
    char buf[20];
    wire_cur_t c = {NULL, 0, 0, 0};
    wire_put32(&c, 1);
    wire_put64(&c, 2);
    wire_putf(&c, 0.5);
    assert_int_equal(c.off, 20); /* counting pass */
    c = (wire_cur_t){buf, sizeof buf, 0, 0};
    wire_put32(&c, 0xdeadbeef);
    wire_put64(&c, 0x0123456789abcdefull);
    wire_putf(&c, -2.25);
    c = (wire_cur_t){buf, sizeof buf, 0, 0};
    assert_int_equal(wire_get32(&c), 0xdeadbeef);
    assert_true(wire_get64(&c) == 0x0123456789abcdefull);
    assert_true(wire_getf(&c) == -2.25);
    assert_false(c.bad);
    assert_int_equal(wire_get32(&c), 0);
    assert_true(c.bad);
    assert_null(wire_get(&c, 1));
}

static void test_pipe_and_peer_gone(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    const char msg[] = "through a pipe";
    char got[sizeof msg];
    assert_int_equal(wire_write_all(p[1], msg, sizeof msg), 0);
    assert_int_equal(wire_read_all(p[0], got, sizeof got, 0), 0); /* no deadline */
    assert_string_equal(got, msg);
    close(p[1]);
    assert_int_equal(wire_read_all(p[0], got, 1, pn_now() + 5), -ECONNRESET);
    close(p[0]);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    close(sv[1]);
    assert_int_equal(wire_write_all(sv[0], msg, sizeof msg), -EPIPE); /* and this process lives */
    close(sv[0]);
}

static double thread_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void test_read_timeout(void **state)
{
    (void)state;
    int sv[2];
    char c;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    /* this thread's CPU: the process's also counts runtime threads (OpenMP's pool spinning
     * down after an earlier parallel region, sanitizer helpers) that the wait does not run */
    double t0 = pn_now(), cpu0 = thread_cpu_now();
    assert_int_equal(wire_read_all(sv[0], &c, 1, t0 + 0.2), -ETIMEDOUT);
    double waited = pn_now() - t0, cpu = thread_cpu_now() - cpu0;
    print_message("waited %.3f s for a 0.2 s deadline, %.3f s of CPU (limits: 0.2..5 s, 0.1 s)\n", waited, cpu);
    assert_true(waited >= 0.2 && waited < 5);
    assert_true(cpu < 0.1); /* slept in poll, did not spin */
    close(sv[0]);
    close(sv[1]);
}

static void test_clock_helpers(void **state)
{
    (void)state;
    struct timespec ts = pn_timespec(12.9999999999);
    assert_true(ts.tv_nsec >= 0 && ts.tv_nsec < 1000000000L);
    ts = pn_timespec(3.25);
    assert_int_equal(ts.tv_sec, 3);
    assert_int_equal(ts.tv_nsec, 250000000L);
    ts = pn_timespec(-1);
    assert_int_equal(ts.tv_sec, 0);
    assert_int_equal(ts.tv_nsec, 0);
    double worst = 0;
    for (int i = 0; i < 5; i++) {
        double t = pn_now() + 0.01;
        pn_sleep_until(t);
        double late = pn_now() - t;
        assert_true(late >= 0); /* never wakes early */
        worst = late > worst ? late : worst;
    }
    print_message("pn_sleep_until woke at most %.6f s late (limit 1 s)\n", worst);
    assert_true(worst < 1);
    double t0 = pn_now();
    pn_sleep_until(t0 - 1); /* past: returns at once */
    assert_true(pn_now() - t0 < 0.5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frame_round_trip), cmocka_unit_test(test_header_parse),
        cmocka_unit_test(test_text),             cmocka_unit_test(test_cursor),
        cmocka_unit_test(test_pipe_and_peer_gone), cmocka_unit_test(test_read_timeout),
        cmocka_unit_test(test_clock_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
