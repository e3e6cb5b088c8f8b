/* The stage protocol under hostile input: a running rank 0 (`pipenem stage`) is sent a
 * hello with a wrong token, a truncated header, a header whose size field is 2^63 and a
 * hello with a negative rank index; each is refused with a log line and the rendezvous
 * carries on. A real rank 1 then joins and hands in a final report with a negative
 * micro-batch index: rank 0 rejects it and stops with a message naming the rank. Also:
 * rank 0 listens only on the address of --dist-url. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "models/model.h"
#include "pipeline/boot.h"
#include "pipeline/ctrl.h"
#include "pipeline/wire.h"
#include "pipeline/exec.h"
#include "pipeline/runcfg.h"
#include "pipeline/ucx.h"
#include "schedules/sched.h"
#include "tests/testutil.h"

#define TOKEN "right-token"
static const char *const job_args[] = {"--model", "tiny", "--layers", "3", "--stages", "2", "--compute",
                                       "emulate:fwd=1ms,bwd=1ms", "--iters", "2", "--timeout", "20"};
enum { N_JOB_ARGS = sizeof job_args / sizeof *job_args };
enum { MSG_HELLO = 1, MSG_REFUSE = 3 };
#define BOOT_MAGIC 0x504e4231u

typedef struct {
    pid_t pid;
    int port;
    char log[64];
} rank0_t;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The job's configuration as every rank derives it, for the handshake's hash. */
static void job_cfg(runcfg_t *cfg)
{
    struct option opts[128];
    char *argv[N_JOB_ARGS + 2] = {"test"}, err[512];
    for (int i = 0; i < N_JOB_ARGS; i++)
        argv[i + 1] = (char *)job_args[i];
    assert_true(runcfg_options_table(opts, 128, NULL) > 0);
    runcfg_defaults(cfg);
    optind = 0;
    opterr = 0;
    int o;
    while ((o = getopt_long(N_JOB_ARGS + 1, argv, ":", opts, NULL)) != -1)
        assert_int_equal(runcfg_option(cfg, o, optarg, err, sizeof err), 1);
    if (runcfg_finish(cfg, err, sizeof err))
        fail_msg("runcfg_finish: %s", err);
}

static void rank0_start(rank0_t *r)
{
    r->port = tu_free_port();
    assert_true(r->port > 0);
    snprintf(r->log, sizeof r->log, "/tmp/pn-test-proto-%d-%d.log", (int)getpid(), r->port);
    char url[64], port[16];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", r->port);
    snprintf(port, sizeof port, "%d", r->port);
    r->pid = fork();
    assert_true(r->pid >= 0);
    if (r->pid == 0) {
        int fd = open(r->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        char *argv[N_JOB_ARGS + 16];
        int n = 0;
        argv[n++] = (char *)tu_pipenem();
        argv[n++] = "stage";
        for (int i = 0; i < N_JOB_ARGS; i++)
            argv[n++] = (char *)job_args[i];
        const char *more[] = {"--world-size", "2", "--rank", "0", "--token", TOKEN, "--dist-url", url};
        for (size_t i = 0; i < sizeof more / sizeof *more; i++)
            argv[n++] = (char *)more[i];
        argv[n] = NULL;
        execv(argv[0], argv);
        _exit(127);
    }
    /* wait until rank 0 listens */
    for (double t0 = mono(); mono() - t0 < 15;) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd); /* a stray that says nothing: rank 0 must shrug it off too */
        if (ok)
            return;
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
    }
    fail_msg("rank 0 never listened on port %d", r->port);
}

/* Waits for rank 0 (at most limit seconds, then kills it); returns its exit status and
 * its output in out. */
static int rank0_finish(rank0_t *r, double limit, char *out, size_t outlen)
{
    int st = 0;
    double t0 = mono();
    while (waitpid(r->pid, &st, WNOHANG) == 0) {
        if (mono() - t0 > limit) {
            kill(r->pid, SIGKILL);
            waitpid(r->pid, &st, 0);
            break;
        }
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
    }
    FILE *f = fopen(r->log, "r");
    size_t n = f ? fread(out, 1, outlen - 1, f) : 0;
    out[n] = '\0';
    if (f)
        fclose(f);
    unlink(r->log);
    print_message("rank 0 (exit %d after %.1f s):\n%s", WIFEXITED(st) ? WEXITSTATUS(st) : -1, mono() - t0, out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int dial(const char *addr, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, addr, &a.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static void put32(uint8_t **p, uint32_t v) { v = htobe32(v); memcpy(*p, &v, 4); *p += 4; }
static void put64(uint8_t **p, uint64_t v) { v = htobe64(v); memcpy(*p, &v, 8); *p += 8; }

/* A whole HELLO message (header + payload) into buf; returns its length. */
static size_t hello_make(uint8_t *buf, uint32_t rank, uint64_t hash, const char *token)
{
    uint8_t *p = buf + 12, *h = buf;
    size_t tl = strlen(token);
    put32(&p, 1);
    put32(&p, rank);
    put32(&p, 2);
    put64(&p, hash);
    put32(&p, (uint32_t)tl);
    memcpy(p, token, tl);
    p += tl;
    put32(&p, 4);
    memcpy(p, "addr", 4);
    p += 4;
    size_t len = (size_t)(p - buf);
    put32(&h, BOOT_MAGIC);
    put32(&h, MSG_HELLO);
    put32(&h, (uint32_t)(len - 12));
    return len;
}

/* Reads what rank 0 answers until it closes: the type of the first message (or -1) and
 * its text. Fails the test if rank 0 keeps the connection open for 10 s. */
static int answer(int fd, char *text, size_t textlen)
{
    uint8_t buf[2048];
    size_t got = 0;
    double t0 = mono();
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (mono() - t0 > 10)
            fail_msg("rank 0 kept a refused connection open");
        if (poll(&pf, 1, 200) <= 0)
            continue;
        ssize_t k = recv(fd, buf + got, sizeof buf - got, 0);
        if (k <= 0)
            break;
        got += (size_t)k;
        if (got == sizeof buf)
            break;
    }
    close(fd);
    text[0] = '\0';
    if (got < 12)
        return -1;
    int type, origin;
    size_t len;
    if (wire_header_parse(buf, sizeof buf, &type, &len))
        return -1;
    wire_text_parse(buf + 12, got - 12 < len ? got - 12 : len, &origin, text, textlen);
    return type;
}

/* Rank 1 as the real stage would run it, except that its final report names micro-batch
 * -7. Runs in a child process (UCX and the model stay out of the test runner). */
static int evil_rank1(int port)
{
    runcfg_t cfg;
    job_cfg(&cfg);
    char err[1024];
    transport_t t = {0};
    ucx_params_t up = {.rank = 1, .size = 2, .tls = cfg.ucx_tls, .net_devices = cfg.ucx_devices};
    if (ucx_transport_open(&up, &t, err, sizeof err))
        return fprintf(stderr, "rank 1: %s\n", err), 2;
    const void *blob;
    size_t bloblen;
    t.ops->address(t.impl, &blob, &bloblen);
    boot_params_t bp = {.rank = 1, .size = 2, .port = port, .listen_fd = -1, .token = TOKEN,
                        .config_hash = runcfg_hash(&cfg), .timeout = 20};
    snprintf(bp.host, sizeof bp.host, "127.0.0.1");
    boot_t *b = NULL;
    if (boot_open(&bp, blob, bloblen, &b, err, sizeof err))
        return fprintf(stderr, "rank 1: %s\n", err), 3;
    size_t len;
    const void *pb = boot_blob(b, 0, &len);
    if (t.ops->connect(t.impl, 0, pb, len, err, sizeof err))
        return fprintf(stderr, "rank 1: %s\n", err), 4;
    model_stage_params_t mp = cfg.stage_params;
    mp.stage = 1;
    sched_op_t *ops = NULL;
    size_t n = 0;
    if (sched_ops_build(cfg.schedule, 2, cfg.micro_batches, cfg.slack, 1, &ops, &n, err, sizeof err))
        return fprintf(stderr, "rank 1: %s\n", err), 5;
    mp.max_inflight = sched_ops_peak_inflight(ops, n);
    free(ops);
    model_stage_t *st = calloc(1, sizeof *st);
    if (!st || model_stage_init(st, &mp, err, sizeof err))
        return fprintf(stderr, "rank 1: model: %s\n", err), 6;
    exec_params_t ep = {.cfg = &cfg, .st = st, .t = &t, .boot = b, .stage = 1};
    exec_result_t r = {0};
    if (exec_run(&ep, &r, err, sizeof err))
        return fprintf(stderr, "rank 1: %s\n", err), 7;
    char report[256];
    int rl = snprintf(report, sizeof report, "R 0 0 0 0 0 0 0 0 0 %d 1\nT 0 1 -7 0.1 0.2 0\n", cfg.warmup + cfg.iters);
    int rc = ctrl_finish(b, report, (size_t)rl, 20, err, sizeof err);
    transport_quiesce(&t);
    exec_result_destroy(&r);
    model_stage_destroy(st);
    free(st);
    boot_close(b);
    transport_destroy(&t);
    return rc ? 8 : 0;
}

/* Is the listening socket on port bound to 127.0.0.1 only (per /proc/net/tcp)? */
static int listens_on_loopback_only(int port)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    if (!f)
        return -1;
    char line[512];
    int found = 0, other = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned addr, p, state;
        if (sscanf(line, " %*d: %x:%x %*x:%*x %x", &addr, &p, &state) != 3 || (int)p != port || state != 0x0A)
            continue;
        if (addr == htonl(INADDR_LOOPBACK))
            found = 1;
        else
            other = 1;
    }
    fclose(f);
    return found && !other;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static void test_hostile_peers_refused_run_continues(void **state)
{
    (void)state;
    runcfg_t cfg;
    job_cfg(&cfg);
    uint64_t hash = runcfg_hash(&cfg);
    rank0_t r0;
    rank0_start(&r0);
    char text[1100];

    /* only the --dist-url address */
    assert_int_equal(listens_on_loopback_only(r0.port), 1);
    int fd = dial("127.0.0.2", r0.port);
    if (fd >= 0)
        close(fd);
    assert_int_equal(fd, -ECONNREFUSED);

    uint8_t msg[512];
    /* 1: a well-formed hello with the wrong token */
    assert_true((fd = dial("127.0.0.1", r0.port)) >= 0);
    size_t n = hello_make(msg, 1, hash, "wrong-token");
    assert_int_equal(send(fd, msg, n, MSG_NOSIGNAL), (ssize_t)n);
    assert_int_equal(answer(fd, text, sizeof text), MSG_REFUSE);
    print_message("wrong token -> refused: %s\n", text);
    assert_non_null(strstr(text, "token"));

    /* 2: half a header, then the connection ends */
    assert_true((fd = dial("127.0.0.1", r0.port)) >= 0);
    assert_int_equal(send(fd, msg, 6, MSG_NOSIGNAL), 6);
    shutdown(fd, SHUT_WR);
    answer(fd, text, sizeof text);

    /* 3: a header whose size field is 2^63 (64 bits where the protocol has 32) */
    assert_true((fd = dial("127.0.0.1", r0.port)) >= 0);
    uint8_t *p = msg;
    put32(&p, BOOT_MAGIC);
    put32(&p, MSG_HELLO);
    put64(&p, UINT64_C(1) << 63);
    assert_int_equal(send(fd, msg, 16, MSG_NOSIGNAL), 16);
    /* rank 0 stops reading at the length, so closing may reset the connection before
     * its refusal arrives: the log line below is the check */
    int type = answer(fd, text, sizeof text);
    assert_true(type == MSG_REFUSE || type == -1);
    print_message("size 2^63 -> %s: %s\n", type == MSG_REFUSE ? "refused" : "reset", text);

    /* 4: a negative rank index, without the token */
    assert_true((fd = dial("127.0.0.1", r0.port)) >= 0);
    n = hello_make(msg, (uint32_t)-1, hash, "not-the-token");
    assert_int_equal(send(fd, msg, n, MSG_NOSIGNAL), (ssize_t)n);
    assert_int_equal(answer(fd, text, sizeof text), MSG_REFUSE);
    print_message("rank -1 -> refused: %s\n", text);
    assert_null(strstr(text, "world size")); /* an outsider learns nothing about the job */

    /* The rendezvous is still open: a real rank 1 joins; its report names micro-batch -7. */
    pid_t evil = fork();
    assert_true(evil >= 0);
    if (evil == 0)
        _exit(evil_rank1(r0.port));
    char out[16384];
    int rc0 = rank0_finish(&r0, 60, out, sizeof out);
    int st;
    waitpid(evil, &st, 0);
    print_message("rank 1 exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0); /* it joined: the job went on */
    assert_int_equal(rc0, 1);
    assert_int_equal(count(out, "refused a connection"), 5); /* the stray probe, then 1-4 */
    assert_non_null(strstr(out, "different job token"));
    assert_non_null(strstr(out, "too long"));
    assert_non_null(strstr(out, "rank 1 sent a malformed final report"));
    assert_non_null(strstr(out, "# FAILED"));
}

/* A peer with the token that claims rank -1 is a member that disagrees: the job stops
 * at once on rank 0, with the reason, instead of waiting for the timeout. */
static void test_member_with_negative_rank_stops_job(void **state)
{
    (void)state;
    runcfg_t cfg;
    job_cfg(&cfg);
    rank0_t r0;
    rank0_start(&r0);
    uint8_t msg[512];
    char text[1100], out[8192];
    int fd = dial("127.0.0.1", r0.port);
    assert_true(fd >= 0);
    size_t n = hello_make(msg, (uint32_t)-1, runcfg_hash(&cfg), TOKEN);
    assert_int_equal(send(fd, msg, n, MSG_NOSIGNAL), (ssize_t)n);
    assert_int_equal(answer(fd, text, sizeof text), MSG_REFUSE);
    print_message("rank -1 with the token -> %s\n", text);
    assert_non_null(strstr(text, "claims rank 4294967295"));
    double t0 = mono();
    assert_int_equal(rank0_finish(&r0, 30, out, sizeof out), 1);
    assert_true(mono() - t0 < 10);
    assert_non_null(strstr(out, "refused the job"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostile_peers_refused_run_continues),
        cmocka_unit_test(test_member_with_negative_rank_stops_job),
    };
    return cmocka_run_group_tests_name("hardening_protocol", tests, NULL, NULL);
}
