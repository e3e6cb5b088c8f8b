/* What a running job exposes: every TCP socket a stage process listens on (the rendezvous
 * and UCX's own) must be bound to the job's network, never to all interfaces or to the
 * host's other addresses: loopback for `pipenem run`, and for a multi-host `pipenem stage`
 * job the interface that reaches rank 0 (here loopback too), without --ucx-devices. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/testutil.h"

enum { MAX_INODES = 512 };

static int socket_inodes(int pid, unsigned long *ino, int max)
{
    char path[64], link[128];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) && n < max) {
        char fd[400];
        snprintf(fd, sizeof fd, "%s/%s", path, e->d_name);
        ssize_t k = readlink(fd, link, sizeof link - 1);
        if (k <= 0)
            continue;
        link[k] = '\0';
        if (sscanf(link, "socket:[%lu]", &ino[n]) == 1)
            n++;
    }
    if (d)
        closedir(d);
    return n;
}

/* Counts the LISTEN sockets among ino[] in /proc/net/tcp{,6}; *exposed those not bound to
 * 127.0.0.0/8 or ::1 (their text goes into what). */
static int listeners(const unsigned long *ino, int n, int *exposed, char *what, size_t whatlen)
{
    static const char *const files[] = {"/proc/net/tcp", "/proc/net/tcp6"};
    int count = 0;
    for (int f = 0; f < 2; f++) {
        FILE *fp = fopen(files[f], "r");
        char line[512];
        while (fp && fgets(line, sizeof line, fp)) {
            char local[64];
            unsigned state;
            unsigned long inode;
            if (sscanf(line, " %*d: %63[0-9A-Fa-f:] %*s %x %*s %*s %*s %*s %*s %lu", local, &state, &inode) != 3 ||
                state != 0x0A)
                continue;
            int mine = 0;
            for (int i = 0; i < n; i++)
                mine |= ino[i] == inode;
            if (!mine)
                continue;
            count++;
            /* v4: "0100007F:PORT" (little-endian 127.0.0.1); v6 loopback ends in 01000000 */
            int loop = f == 0 ? !strncmp(local + 6, "7F", 2)
                              : !strncmp(local, "00000000000000000000000001000000", 32);
            if (!loop) {
                (*exposed)++;
                size_t l = strlen(what);
                snprintf(what + l, whatlen - l, " %s", local);
            }
        }
        if (fp)
            fclose(fp);
    }
    return count;
}

static void test_run_listens_on_loopback_only(void **state)
{
    (void)state;
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s run --model tiny --layers 3 --stages 3 --compute emulate:fwd=60ms,bwd=60ms --iters 3 2>&1",
             tu_pipenem());
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    char line[1024], what[1024] = "";
    int pids[8], np = 0, seen = 0, exposed = 0;
    while (fgets(line, sizeof line, f)) {
        int r, pid;
        if (sscanf(line, "# rank %d: pid %d", &r, &pid) == 2 && np < 8)
            pids[np++] = pid;
        if (np == 3 && !seen) {
            /* until every stage has its transport up (or the run is over) */
            for (int tries = 0; tries < 100; tries++) {
                int total = 0, alive = 0;
                exposed = 0;
                what[0] = '\0';
                for (int i = 0; i < np; i++) {
                    unsigned long ino[MAX_INODES];
                    int n = socket_inodes(pids[i], ino, MAX_INODES);
                    alive += kill(pids[i], 0) == 0;
                    int l = listeners(ino, n, &exposed, what, sizeof what);
                    total += l > 0;
                }
                if (total == np || !alive) {
                    seen = total;
                    break;
                }
                usleep(50000);
            }
            print_message("%d of %d stage processes seen listening; %d listening sockets not on loopback:%s\n", seen,
                          np, exposed, what);
        }
    }
    int st = pclose(f);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(seen, 3);
    assert_int_equal(exposed, 0);
}

static void test_stage_listens_on_the_job_network_only(void **state)
{
    (void)state;
    char url[64];
    int port = tu_free_port();
    assert_true(port > 0);
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
    pid_t pid[2];
    for (int r = 0; r < 2; r++) {
        char rank[8];
        snprintf(rank, sizeof rank, "%d", r);
        pid[r] = fork();
        assert_true(pid[r] >= 0);
        if (pid[r] == 0) {
            if (!freopen("/dev/null", "w", stdout))
                _exit(127);
            execl(tu_pipenem(), "pipenem", "stage", "--dist-url", url, "--world-size", "2", "--rank", rank,
                  "--token", "listen-test", "--model", "tiny", "--stages", "2", "--compute",
                  "emulate:fwd=60ms,bwd=60ms", "--iters", "3", (char *)NULL);
            _exit(127);
        }
    }
    char what[1024] = "";
    int seen = 0, exposed = 0;
    for (int tries = 0; tries < 100; tries++) {
        int total = 0, alive = 0;
        exposed = 0;
        what[0] = '\0';
        for (int i = 0; i < 2; i++) {
            unsigned long ino[MAX_INODES];
            int n = socket_inodes(pid[i], ino, MAX_INODES);
            alive += kill(pid[i], 0) == 0;
            total += listeners(ino, n, &exposed, what, sizeof what) > 0;
        }
        if (total == 2 || !alive) {
            seen = total;
            break;
        }
        usleep(50000);
    }
    print_message("%d of 2 stage processes seen listening; %d listening sockets not on loopback:%s\n", seen, exposed,
                  what);
    for (int r = 0; r < 2; r++) {
        int st;
        assert_int_equal(waitpid(pid[r], &st, 0), pid[r]);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    assert_int_equal(seen, 2);
    assert_int_equal(exposed, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_listens_on_loopback_only),
        cmocka_unit_test(test_stage_listens_on_the_job_network_only),
    };
    return cmocka_run_group_tests_name("hardening_listen", tests, NULL, NULL);
}
