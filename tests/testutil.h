/* Helpers shared by the test programs: running the pipenem binary and capturing its
 * output or checking its exit status and message, a free loopback port, and comparing numbers with a stated tolerance while reporting the worst case. */
#ifndef PN_TESTS_TESTUTIL_H
#define PN_TESTS_TESTUTIL_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

/* The binary under test: $PIPENEM, or ./pipenem (tests run from the repository root). */
static inline const char *tu_pipenem(void)
{
    const char *p = getenv("PIPENEM");
    return p && *p ? p : "./pipenem";
}

/* A TCP port on loopback that was free a moment ago (bound, read, released), or -1. */
static inline int tu_free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    if (fd >= 0 && !bind(fd, (struct sockaddr *)&a, sizeof a) && !getsockname(fd, (struct sockaddr *)&a, &al))
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* Runs `pipenem ARGS` through the shell with stderr merged into stdout; stores up to
 * outlen-1 bytes of the output in out and returns the exit status (128+N on signal N). */
static inline __attribute__((format(printf, 3, 4)))
int tu_pipenem_run(char *out, size_t outlen, const char *fmt, ...)
{
    char args[4096], cmd[4608];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", tu_pipenem(), args);
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    size_t n = fread(out, 1, outlen - 1, f);
    out[n] = '\0';
    while (fgetc(f) != EOF) /* drain so the child never blocks on a full pipe */
        ;
    int st = pclose(f);
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
}

/* Runs `pipenem ARGS` and checks that it exits want_rc (2: a usage error) with needle in
 * its output (needle NULL: any output): 1 if so, else 0 after printing the command, the
 * status and the output, for the caller to fail. */
static inline int tu_expect_exit(int want_rc, const char *needle, const char *args)
{
    static char out[1 << 18];
    int rc = tu_pipenem_run(out, sizeof out, "%s", args);
    if (rc == want_rc && (!needle || strstr(out, needle)))
        return 1;
    fprintf(stderr, "pipenem %s: exit %d (want %d), output lacks '%s':\n%s\n", args, rc, want_rc, needle ? needle : "",
            out);
    return 0;
}

/* Starts `pipenem ARGS` (split on spaces, no quoting) in a child whose stdout and stderr
 * go to logpath; returns its pid, -1 when fork fails. */
static inline pid_t tu_pipenem_spawn(const char *logpath, const char *args)
{
    char buf[2048], *argv[64];
    int n = 0;
    snprintf(buf, sizeof buf, "%s", args);
    argv[n++] = (char *)tu_pipenem();
    for (char *t = strtok(buf, " "); t && n < 63; t = strtok(NULL, " "))
        argv[n++] = t;
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* In a cmocka test: skips it, saying why, unless this process is root. */
#define TU_NEED_ROOT()                                                                   \
    do {                                                                                 \
        if (geteuid() != 0) {                                                            \
            print_message("SKIP: needs root for network namespaces and qdiscs\n");       \
            skip();                                                                      \
        }                                                                                \
    } while (0)

/* Runs a shell command line with stderr merged into stdout; stores up to len-1 bytes
 * of the output in buf and returns the exit status (-1 when it did not exit). */
static inline __attribute__((format(printf, 3, 4)))
int tu_sh(char *buf, size_t len, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    strncat(cmd, " 2>&1", sizeof cmd - strlen(cmd) - 1);
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    while (fgetc(f) != EOF) /* drain so the child never blocks on a full pipe */
        ;
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Relative difference |a-b| / max(|a|, |b|, floor), the measure the tolerances use. */
static inline double tu_reldiff(double a, double b, double floor)
{
    double m = fmax(fmax(fabs(a), fabs(b)), floor);
    return fabs(a - b) / m;
}

/* The largest tu_reldiff of a[i] and b[i] (i < n); a NaN in either is infinitely far. */
static inline double tu_worst_reldiff(const double *a, const double *b, int n, double floor)
{
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double d = tu_reldiff(a[i], b[i], floor);
        if (d > worst || isnan(d))
            worst = isnan(d) ? INFINITY : d;
    }
    return worst;
}

/* The losses of `pipenem run`'s rows "  iteration time loss tokens/s", in iteration
 * order from 0, at most max; returns how many. */
static inline int tu_parse_losses(const char *text, double *loss, int max)
{
    int n = 0;
    for (const char *p = text; p && *p;) {
        const char *eol = strchr(p, '\n');
        int it;
        double t, l, tok;
        if (p[0] != '#' && sscanf(p, "%d %lf %lf %lf", &it, &t, &l, &tok) == 4 && it == n && n < max)
            loss[n++] = l;
        p = eol ? eol + 1 : NULL;
    }
    return n;
}

#endif
