/* The PIPENEM_FAULT hook: parses the variable once and performs the fault in-process, so
 * the fault matrix can hit bootstrap, a given iteration or the optimizer step exactly,
 * which an outside `kill` cannot time. */
#include "pipeline/fault.h"

#include <dirent.h>
#include <net/if.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    int parsed, active, done;
    char action[16];
    int rank, iter;
    fault_at_t at;
} fault_spec_t;

static fault_spec_t spec;

static void spec_load(void)
{
    spec.parsed = 1;
    const char *f = getenv("PIPENEM_FAULT");
    char when[16];
    int n = 0;
    if (!f || sscanf(f, "%15[a-z]:%d:%15[a-z0-9]%n", spec.action, &spec.rank, when, &n) != 3)
        return;
    if (f[n] == '@') {
        /* only in one cell of a sweep */
        const char *cell = getenv("PIPENEM_CELL");
        char *end;
        long want = strtol(f + n + 1, &end, 10);
        if (*end || end == f + n + 1 || !cell || strtol(cell, NULL, 10) != want)
            return;
    } else if (f[n]) {
        return;
    }
    if (!strcmp(when, "boot")) {
        spec.at = FAULT_AT_BOOT;
    } else if (!strcmp(when, "opt")) {
        spec.at = FAULT_AT_OPT;
        spec.iter = 1;
    } else if (!strcmp(when, "allreduce")) {
        spec.at = FAULT_AT_ALLREDUCE;
        spec.iter = 1;
    } else {
        char *end;
        spec.iter = (int)strtol(when, &end, 10);
        if (*end)
            return;
        spec.at = FAULT_AT_ITER;
    }
    spec.active = 1;
}

static void sockets_shutdown(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        int fd = atoi(e->d_name);
        struct stat st;
        if (e->d_name[0] != '.' && fd != dirfd(d) && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode))
            shutdown(fd, SHUT_RDWR);
    }
    closedir(d);
}

static void links_down(void)
{
    struct if_nameindex *ifs = if_nameindex();
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    for (struct if_nameindex *i = ifs; ifs && s >= 0 && i->if_index; i++) {
        struct ifreq r = {0};
        snprintf(r.ifr_name, sizeof r.ifr_name, "%s", i->if_name);
        if (ioctl(s, SIOCGIFFLAGS, &r) || (r.ifr_flags & IFF_LOOPBACK))
            continue;
        r.ifr_flags &= ~IFF_UP;
        if (ioctl(s, SIOCSIFFLAGS, &r))
            perror("PIPENEM_FAULT linkdown");
    }
    if (s >= 0)
        close(s);
    if (ifs)
        if_freenameindex(ifs);
}

void fault_point(int rank, fault_at_t at, int iter)
{
    if (!spec.parsed)
        spec_load();
    if (!spec.active || spec.done || spec.rank != rank || spec.at != at || (at != FAULT_AT_BOOT && spec.iter != iter))
        return;
    spec.done = 1;
    fprintf(stderr, "pipenem: PIPENEM_FAULT: rank %d: %s\n", rank, getenv("PIPENEM_FAULT"));
    fflush(stderr);
    if (!strcmp(spec.action, "kill"))
        raise(SIGKILL);
    else if (!strcmp(spec.action, "stop"))
        raise(SIGSTOP);
    else if (!strcmp(spec.action, "close"))
        sockets_shutdown();
    else if (!strcmp(spec.action, "linkdown"))
        links_down();
}
