/* The Makefile's choice of GPU architectures, driven with a fake nvcc that reports a CUDA 12
 * or a CUDA 13 release: sm_70 (V100) only for 12.x, since CUDA 13 dropped Volta; GENCODE=
 * overrides; and the README tells V100/p3 users that they need a CUDA 12 toolkit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* A fake CUDA_HOME: bin/nvcc printing `release VER`, and an empty lib64/libcublas.so (what
 * the Makefile looks for beside it). Returns the directory (static buffer). */
static const char *fake_cuda(const char *ver)
{
    static char dir[64];
    char path[160];
    snprintf(dir, sizeof dir, "/tmp/pn-gencode.XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/bin", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/lib64", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/lib64/libcublas.so", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(path, sizeof path, "%s/bin/nvcc", dir);
    assert_non_null(f = fopen(path, "w"));
    fprintf(f, "#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
               "echo 'Cuda compilation tools, release %s, V%s.99'\n", ver, ver);
    fclose(f);
    assert_int_equal(chmod(path, 0755), 0);
    return dir;
}

/* `make gencode` with the fake nvcc of version ver (and extra make arguments): its one line
 * of output, in out. The make running this test (make test) passes its command-line
 * variables (CI's GENCODE=...) down through MAKEFLAGS: cleared, so only ours count. */
static void make_gencode(const char *ver, const char *extra, char *out, size_t outlen)
{
    const char *dir = fake_cuda(ver);
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u GENCODE -u CUDA_HOME -u NVCC -u CUDA "
             "make -s --no-print-directory -f Makefile BUILD=/nonexistent NVCC=%s/bin/nvcc %s gencode 2>&1",
             dir, extra);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, outlen - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    print_message("release %s%s%s: %s", ver, *extra ? ", " : "", extra, out);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* Each of the NUL-separated architectures in want is in out, and sm_70 is or is not. */
static void expect_archs(const char *ver, const char *out, const char *want, int volta)
{
    for (const char *sm = want; *sm; sm += strlen(sm) + 1)
        if (!strstr(out, sm))
            fail_msg("CUDA %s builds no %s: %s", ver, sm, out);
    if (!volta && (strstr(out, "sm_70") || strstr(out, "compute_70")))
        fail_msg("CUDA %s has no Volta, yet the Makefile asks it for sm_70: %s", ver, out);
}

static void test_cuda12_builds_volta(void **state)
{
    (void)state;
    char out[1024];
    make_gencode("12.4", "", out, sizeof out);
    assert_non_null(strstr(out, "nvcc 12.x gencode:"));
    expect_archs("12.4", out, "sm_70\0sm_80\0sm_90\0compute_90\0", 1);
}

static void test_cuda13_drops_volta(void **state)
{
    (void)state;
    char out[1024];
    make_gencode("13.0", "", out, sizeof out);
    assert_non_null(strstr(out, "nvcc 13.x gencode:"));
    expect_archs("13.0", out, "sm_75\0sm_80\0sm_90\0compute_90\0", 0);
}

static void test_gencode_override(void **state)
{
    (void)state;
    char out[1024];
    make_gencode("12.4", "GENCODE=-arch=sm_80", out, sizeof out);
    assert_string_equal(out, "nvcc 12.x gencode: -arch=sm_80\n");
}

static void test_readme_says_v100_needs_cuda12(void **state)
{
    (void)state;
    FILE *f = fopen("README.md", "r");
    assert_non_null(f);
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    const char *want = "V100 (AWS p3) needs a CUDA 12 toolkit";
    if (!strstr(text, want))
        fail_msg("README.md does not say '%s'", want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cuda12_builds_volta),
        cmocka_unit_test(test_cuda13_drops_volta),
        cmocka_unit_test(test_gencode_override),
        cmocka_unit_test(test_readme_says_v100_needs_cuda12),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
