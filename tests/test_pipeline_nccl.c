/* The transport table and the NCCL transport's host side, on any machine: names and the
 * checks of --transport against --compute and --emulator, the address blob that carries
 * the unique ids (round trip and every refusal), what --emulator auto narrows to per
 * transport, the message header (round trip, sizes
 * over 4 GiB, a key of another message, a wrong size, garbage), the choice of the GPU,
 * and --transport nccl failing with its reason where there is no GPU. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/nccl.h"
#include "pipeline/transport.h"
#include "tests/testutil.h"

static void test_table(void **state)
{
    (void)state;
    const transport_kind_t *u = transport_kind_find("ucx"), *n = transport_kind_find("nccl");
    assert_non_null(u);
    assert_non_null(n);
    assert_null(transport_kind_find("UCX"));
    assert_null(transport_kind_find(""));
    assert_null(transport_kind_find(NULL));
    assert_string_equal(transport_kind_names(), "ucx, nccl");
    assert_int_equal(u->needs_cuda, 0);
    assert_int_equal(u->shim_ok, 1);
    assert_int_equal(n->needs_cuda, 1);
    assert_int_equal(n->shim_ok, 0);
    assert_non_null(u->open);
    assert_non_null(n->open);
}

static void kind_check(const char *t, const char *compute, const char *emulator, int want, const char *needle)
{
    char err[512] = "";
    int rc = transport_kind_check(t, compute, emulator, err, sizeof err);
    print_message("  %s / %s / %s -> %d %s\n", t, compute, emulator, rc, err);
    assert_int_equal(rc, want);
    if (needle)
        assert_non_null(strstr(err, needle));
}

static void test_check(void **state)
{
    (void)state;
    kind_check("ucx", "cpu", "auto", 0, NULL);
    kind_check("ucx", "emulate:v100", "shim", 0, NULL);
    kind_check("ucx", "cuda:fp16", "netem", 0, NULL);
    kind_check("nccl", "cuda", "auto", 0, NULL);
    kind_check("nccl", "cuda:bf16,dev=1", "netem", 0, NULL);
    kind_check("nccl", "cpu", "auto", -EINVAL, "needs --compute cuda (got --compute cpu)");
    kind_check("nccl", "emulate:v100", "auto", -EINVAL, "needs --compute cuda");
    kind_check("nccl", "cudax", "auto", -EINVAL, "needs --compute cuda");
    kind_check("nccl", "cuda", "shim", -EINVAL, "the in-transport shim cannot act on nccl's traffic");
    kind_check("tcp", "cpu", "auto", -EINVAL, "expected ucx, nccl, got 'tcp'");
}

/* What auto narrows to before the emulator is chosen: the kernel's for nccl (the shim
 * cannot see its traffic), the shim without namespaces, else auto itself. */
static void test_emulator_asked(void **state)
{
    (void)state;
    const struct {
        const char *transport, *asked;
        int have_ns;
        const char *want;
    } cases[] = {
        {"ucx", "auto", 1, "auto"},   {"ucx", "auto", 0, "shim"},   {"nccl", "auto", 1, "netem"},
        {"nccl", "auto", 0, "netem"}, {"ucx", "netem", 0, "netem"}, {"nccl", "shim", 1, "shim"},
        {"ucx", "shim", 1, "shim"},   {"bogus", "auto", 0, "shim"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *got = transport_emulator_asked(cases[i].transport, cases[i].asked, cases[i].have_ns);
        print_message("  %s / %s / namespaces %d -> %s\n", cases[i].transport, cases[i].asked, cases[i].have_ns, got);
        assert_string_equal(got, cases[i].want);
    }
    assert_null(transport_emulator_asked("ucx", NULL, 1));
}

static void test_blob_round_trip(void **state)
{
    (void)state;
    int peers[2];
    assert_int_equal(nccl_blob_peers(0, 1, peers), 0);
    assert_int_equal(nccl_blob_peers(0, 2, peers), 1);
    assert_int_equal(peers[0], 1);
    assert_int_equal(nccl_blob_peers(0, 4, peers), 2);
    assert_int_equal(peers[1], 3);
    assert_int_equal(nccl_blob_peers(2, 4, peers), 1);
    assert_int_equal(nccl_blob_peers(3, 4, peers), 0);
    nccl_blob_t b = {.rank = 0, .size = 4, .n = 4};
    int ch[4][2] = {{0, 1}, {1, 0}, {0, 3}, {3, 0}};
    for (int i = 0; i < 4; i++) {
        b.ids[i].src = ch[i][0];
        b.ids[i].dst = ch[i][1];
        for (int k = 0; k < NCCL_ID_BYTES; k++)
            b.ids[i].id[k] = (unsigned char)(i * 31 + k);
    }
    unsigned char buf[1024];
    int len = nccl_blob_encode(&b, buf, sizeof buf);
    assert_int_equal(len, (int)nccl_blob_size(&b));
    assert_int_equal(nccl_blob_encode(&b, buf, (size_t)len - 1), -ENOSPC);
    nccl_blob_t d;
    char err[256] = "";
    assert_int_equal(nccl_blob_decode(buf, (size_t)len, &d, err, sizeof err), 0);
    assert_int_equal(d.rank, 0);
    assert_int_equal(d.size, 4);
    assert_int_equal(d.n, 4);
    assert_memory_equal(d.ids, b.ids, sizeof b.ids);
    const nccl_chan_id_t *c = nccl_blob_find(&d, 3, 0);
    assert_non_null(c);
    assert_int_equal(c->id[0], 3 * 31);
    assert_null(nccl_blob_find(&d, 1, 2));
}

static void expect_refused(const unsigned char *buf, size_t len, const char *needle)
{
    nccl_blob_t d;
    char err[256] = "";
    int rc = nccl_blob_decode(buf, len, &d, err, sizeof err);
    print_message("  refused: %s\n", err);
    assert_int_equal(rc, -EPROTO);
    assert_non_null(strstr(err, needle));
}

static void test_blob_refusals(void **state)
{
    (void)state;
    nccl_blob_t b = {.rank = 1, .size = 3, .n = 2};
    b.ids[0] = (nccl_chan_id_t){.src = 1, .dst = 2};
    b.ids[1] = (nccl_chan_id_t){.src = 2, .dst = 1};
    unsigned char buf[1024], bad[1024];
    int len = nccl_blob_encode(&b, buf, sizeof buf);
    assert_true(len > 0);
    expect_refused(buf, 3, "without pipenem's NCCL magic");
    expect_refused((const unsigned char *)"ucx-address-of-some-peer", 24, "without pipenem's NCCL magic");
    expect_refused(buf, (size_t)len - 1, "2 ids in");
    memcpy(bad, buf, (size_t)len);
    bad[6] = 9; /* version */
    expect_refused(bad, (size_t)len, "version 9");
    memcpy(bad, buf, (size_t)len);
    bad[8] = 7; /* rank 7 of 3 */
    expect_refused(bad, (size_t)len, "rank 7 of 3 is out of range");
    memcpy(bad, buf, (size_t)len);
    bad[16] = 0; /* first id: channel 0 -> 2, not touching rank 1 */
    expect_refused(bad, (size_t)len, "id 0 is for channel 0 -> 2");
    memcpy(bad, buf, (size_t)len);
    bad[16 + 4] = 1; /* first id: channel 1 -> 1 */
    expect_refused(bad, (size_t)len, "channel 1 -> 1");
}

static void test_header(void **state)
{
    (void)state;
    transport_key_t key = {TRANSPORT_GRAD, 123456, 789}, k;
    size_t sizes[] = {0, 1, 25u << 20, (size_t)5 << 32 | 12345u}, got;
    char err[256] = "";
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        nccl_hdr_t h;
        nccl_hdr_make(key, sizes[i], &h);
        assert_int_equal(nccl_hdr_parse(&h, &k, &got, err, sizeof err), 0);
        assert_int_equal(k.dir, key.dir);
        assert_int_equal(k.iter, key.iter);
        assert_int_equal(k.mb, key.mb);
        assert_true(got == sizes[i]);
    }
    nccl_hdr_t h;
    nccl_hdr_make(key, 4096, &h);
    transport_req_t r = {.peer = 2, .key = key, .bytes = 4096, .is_recv = 1};
    assert_int_equal(nccl_hdr_check(&h, &r, err, sizeof err), 1);
    r.key.mb = 788; /* another message's header: kept for its own receive */
    assert_int_equal(nccl_hdr_check(&h, &r, err, sizeof err), 0);
    r.key.mb = 789;
    r.key.dir = TRANSPORT_ACT;
    assert_int_equal(nccl_hdr_check(&h, &r, err, sizeof err), 0);
    r.key.dir = TRANSPORT_GRAD;
    r.bytes = 4092;
    assert_int_equal(nccl_hdr_check(&h, &r, err, sizeof err), -EMSGSIZE);
    print_message("  size: %s\n", err);
    assert_non_null(strstr(err, "rank 2 sent a gradient message (iteration 123456, micro-batch 789) of 4096 bytes, "
                                "expected 4092"));
    memset(&h, 0x5a, sizeof h);
    assert_int_equal(nccl_hdr_check(&h, &r, err, sizeof err), -EPROTO);
    print_message("  garbage: %s\n", err);
    assert_non_null(strstr(err, "out of step"));
}


static void test_device_pick(void **state)
{
    (void)state;
    char err[256] = "";
    int dev = -1;
    unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
    unsetenv("SLURM_LOCALID");
    unsetenv("LOCAL_RANK");
    assert_int_equal(nccl_device_pick("cuda", -1, 4, 0, &dev, err, sizeof err), 0);
    assert_int_equal(dev, 0);
    assert_int_equal(nccl_device_pick("cuda:fp16,dev=2", -1, 4, 0, &dev, err, sizeof err), 0);
    assert_int_equal(dev, 2);
    assert_int_equal(nccl_device_pick("cuda:dev=2", 3, 4, 0, &dev, err, sizeof err), 0);
    assert_int_equal(dev, 3);
    setenv("LOCAL_RANK", "5", 1);
    assert_int_equal(nccl_device_pick("cuda", -1, 4, 0, &dev, err, sizeof err), 0);
    assert_int_equal(dev, 1); /* local rank 5 on 4 GPUs */
    unsetenv("LOCAL_RANK");
    assert_int_equal(nccl_device_pick("cuda", -1, 4, 6, &dev, err, sizeof err), 0);
    assert_int_equal(dev, 2); /* no launcher: the stage index 6 on 4 GPUs */
    assert_int_equal(nccl_device_pick("cuda", -1, 0, 0, &dev, err, sizeof err), -ENODEV);
    print_message("  no GPU: %s\n", err);
    assert_int_not_equal(nccl_device_pick("cuda:dev=7", -1, 2, 0, &dev, err, sizeof err), 0);
    print_message("  absent GPU: %s\n", err);
}

/* Where this machine has no GPU (or the build no CUDA), opening says why; with a GPU the
 * open must succeed as far as ids (two ranks are never connected here). */
static void test_open(void **state)
{
    (void)state;
    char err[512] = "";
    transport_t t = {0};
    transport_params_t p = {.rank = 0, .size = 2, .compute = "cuda", .device = -1, .root_host = "127.0.0.1",
                            .root_port = 1, .timeout = 5};
    int rc = transport_open("nccl", &p, &t, err, sizeof err);
    print_message("  nccl open: %d %s\n", rc, rc ? err : "ok");
    if (rc == 0) {
        const void *blob;
        size_t len;
        nccl_blob_t b;
        assert_int_equal(t.ops->address(t.impl, &blob, &len), 0);
        assert_int_equal(nccl_blob_decode(blob, len, &b, err, sizeof err), 0);
        assert_int_equal(b.n, 2);
        transport_destroy(&t);
        return;
    }
    assert_true(rc == -ENODEV || rc == -ENOSYS || rc == -ELIBACC);
    assert_true(strstr(err, "needs a GPU") || strstr(err, "built without") || strstr(err, "libnccl"));
    p.size = 1;
    assert_int_equal(transport_open("nccl", &p, &t, err, sizeof err), -EINVAL);
    assert_int_equal(transport_open("tcp", &p, &t, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "unknown transport 'tcp'"));
}

/* The command line: usage errors exit 2, a missing GPU exits 1 naming it. */
static void test_cli(void **state)
{
    (void)state;
    char out[8192];
    int rc = tu_pipenem_run(out, sizeof out, "run --model tiny --stages 2 --transport nccl --iters 1");
    print_message("  cpu + nccl: %d %s", rc, out);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "needs --compute cuda"));
    rc = tu_pipenem_run(out, sizeof out, "run --model tiny --stages 2 --transport nccl --compute cuda "
                                          "--net 1ms/1Gbps --emulator shim --iters 1");
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "shim cannot act on nccl's traffic"));
    rc = tu_pipenem_run(out, sizeof out, "sweep --transport nccl --iters 1 --out /nonexistent/pn");
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "needs --compute cuda"));
    rc = tu_pipenem_run(out, sizeof out, "stage --transport tcp --rank 0 --world-size 1");
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "--transport: expected ucx, nccl, got 'tcp'"));
    int ngpu = system("nvidia-smi -L 2>/dev/null | grep -q GPU") == 0;
    if (ngpu) {
        print_message("  a GPU is here: the no-GPU failure is not checked\n");
        return;
    }
    rc = tu_pipenem_run(out, sizeof out, "run --model tiny --stages 2 --transport nccl --compute cuda --iters 1 "
                                          "--timeout 30");
    print_message("  no GPU: exit %d\n%s", rc, out);
    assert_int_equal(rc, 1);
    assert_true(strstr(out, "--transport nccl needs a GPU") || strstr(out, "built without"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),          cmocka_unit_test(test_check),
        cmocka_unit_test(test_emulator_asked),
        cmocka_unit_test(test_blob_round_trip), cmocka_unit_test(test_blob_refusals),
        cmocka_unit_test(test_header),         cmocka_unit_test(test_device_pick),
        cmocka_unit_test(test_open),           cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests_name("pipeline_nccl", tests, NULL, NULL);
}
