/* Privileges: `pipenem run --user NAME` started as root runs every stage process as NAME
 * (uid, gid and groups of NAME, no capabilities, no_new_privs) and the run still works,
 * over loopback and in the namespace topology; an unknown user is a usage error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/testutil.h"

/* "Uid:\t65534\t65534..." of /proc/PID/status: the field's first number, or -1. */
static long status_field(int pid, const char *name, int base)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    long v = -1;
    size_t n = strlen(name);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, name, n) && line[n] == ':')
            v = strtol(line + n + 1, NULL, base);
    if (f)
        fclose(f);
    return v;
}

static void stages_run_as_user(const char *net)
{
    if (geteuid() != 0) {
        print_message("SKIP: not root: there is no privilege to drop\n");
        skip();
    }
    struct passwd *pw = getpwnam("nobody");
    if (!pw) {
        print_message("SKIP: this machine has no user 'nobody'\n");
        skip();
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s run --model tiny --layers 3 --stages 3 --compute emulate:fwd=40ms,bwd=40ms --iters 3 --user nobody %s 2>&1",
             tu_pipenem(), net);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    char line[1024], out[16384] = "";
    int checked = 0, dropped = 0;
    while (fgets(line, sizeof line, f)) {
        strncat(out, line, sizeof out - strlen(out) - 1);
        int r, pid;
        if (sscanf(line, "# rank %d: pid %d", &r, &pid) != 2)
            continue;
        long uid = status_field(pid, "Uid", 10), gid = status_field(pid, "Gid", 10);
        long cap = status_field(pid, "CapEff", 16), nnp = status_field(pid, "NoNewPrivs", 10);
        if (uid < 0) /* already gone: cannot tell */
            continue;
        checked++;
        /* the fork may not have dropped yet: give it a moment */
        for (int k = 0; k < 50 && uid == 0; k++) {
            usleep(20000);
            uid = status_field(pid, "Uid", 10);
            gid = status_field(pid, "Gid", 10);
            cap = status_field(pid, "CapEff", 16);
            nnp = status_field(pid, "NoNewPrivs", 10);
        }
        print_message("rank %d (pid %d): uid %ld gid %ld CapEff %lx NoNewPrivs %ld\n", r, pid, uid, gid, cap, nnp);
        if (uid == (long)pw->pw_uid && gid == (long)pw->pw_gid && cap == 0 && nnp == 1)
            dropped++;
    }
    int st = pclose(f);
    print_message("%s", out);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_non_null(strstr(out, "# OK"));
    print_message("%d of %d stage processes checked run as nobody without capabilities\n", dropped, checked);
    assert_true(checked >= 1);
    assert_int_equal(dropped, checked);
}

static void test_stages_run_as_user(void **state)
{
    (void)state;
    stages_run_as_user("");
}

/* With the namespace topology: the stage enters its namespace as root, then drops. */
static void test_stages_run_as_user_in_namespaces(void **state)
{
    (void)state;
    stages_run_as_user("--net rate=1gbit --emulator netem");
}

static void test_unknown_user_is_usage_error(void **state)
{
    (void)state;
    char out[4096];
    int rc = tu_pipenem_run(out, sizeof out, "run --model tiny --layers 3 --stages 2 --user pn-no-such-user-x");
    print_message("%s", out);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "pn-no-such-user-x"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stages_run_as_user),
        cmocka_unit_test(test_stages_run_as_user_in_namespaces),
        cmocka_unit_test(test_unknown_user_is_usage_error),
    };
    return cmocka_run_group_tests_name("hardening_privs", tests, NULL, NULL);
}
