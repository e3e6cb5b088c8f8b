/* Privileges: `pipenem run --user NAME` started as root runs every stage process as NAME
 * (uid, gid and groups of NAME, no capabilities, no_new_privs) and the run still works,
 * over loopback and in the namespace topology; so does `pipenem sweep --user NAME`, whose
 * cells build the topology as root; an unknown user is a usage error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
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

static void unknown_user_is_usage_error(const char *args)
{
    char out[4096];
    int rc = tu_pipenem_run(out, sizeof out, "%s --user pn-no-such-user-x", args);
    print_message("%s", out);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "pn-no-such-user-x"));
}

static void test_unknown_user_is_usage_error(void **state)
{
    (void)state;
    unknown_user_is_usage_error("run --model tiny --layers 3 --stages 2");
}

/* The sweep's stage processes are its forked children: found through /proc while it runs. */
static void test_sweep_stages_run_as_user(void **state)
{
    (void)state;
    struct passwd *pw = getpwnam("nobody");
    if (geteuid() != 0 || !pw) {
        print_message("SKIP: needs root and a user 'nobody'\n");
        skip();
    }
    char dir[] = "/tmp/pn-test-privs-XXXXXX", out[300];
    assert_non_null(mkdtemp(dir));
    snprintf(out, sizeof out, "%s/sweep", dir);
    pid_t sweep = fork();
    assert_true(sweep >= 0);
    if (sweep == 0) {
        if (!freopen("/dev/null", "w", stdout))
            _exit(127);
        execl(tu_pipenem(), "pipenem", "sweep", "--model", "tiny", "--stages", "3", "--batch-size", "4", "--seq-len",
              "16", "--schedule", "gpipe", "--micro-batch-sizes", "1", "--profiles", "default", "--compute",
              "emulate:fwd=40ms,bwd=40ms", "--iters", "3", "--no-plots", "--user", "nobody", "--out", out,
              (char *)NULL);
        _exit(127);
    }
    int checked = 0, dropped = 0, st = 0, seen[64] = {0}, n_seen = 0;
    while (waitpid(sweep, &st, WNOHANG) == 0) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            int pid = atoi(e->d_name), known = 0;
            if (pid <= 0 || status_field(pid, "PPid", 10) != sweep)
                continue;
            for (int i = 0; i < n_seen; i++)
                known |= seen[i] == pid;
            long uid = status_field(pid, "Uid", 10);
            if (known || uid != (long)pw->pw_uid || n_seen >= 64)
                continue; /* still root: not dropped yet, look again */
            seen[n_seen++] = pid;
            long gid = status_field(pid, "Gid", 10), cap = status_field(pid, "CapEff", 16);
            long nnp = status_field(pid, "NoNewPrivs", 10);
            print_message("stage pid %d: uid %ld gid %ld CapEff %lx NoNewPrivs %ld\n", pid, uid, gid, cap, nnp);
            checked++;
            dropped += gid == (long)pw->pw_gid && cap == 0 && nnp == 1;
        }
        if (d)
            closedir(d);
        usleep(10000);
    }
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    print_message("%d stage processes seen as nobody, %d without capabilities\n", checked, dropped);
    assert_int_equal(checked, 3);
    assert_int_equal(dropped, checked);
}

static void test_sweep_unknown_user_is_usage_error(void **state)
{
    (void)state;
    unknown_user_is_usage_error("sweep --model tiny --stages 2");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stages_run_as_user),
        cmocka_unit_test(test_stages_run_as_user_in_namespaces),
        cmocka_unit_test(test_unknown_user_is_usage_error),
        cmocka_unit_test(test_sweep_stages_run_as_user),
        cmocka_unit_test(test_sweep_unknown_user_is_usage_error),
    };
    return cmocka_run_group_tests_name("hardening_privs", tests, NULL, NULL);
}
