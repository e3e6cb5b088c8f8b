/* Local topology over iproute2 (`ip netns`, `ip link`, `ip addr`), with each namespace
 * recorded in the state file before it exists so no exit path can leak it. */
#include "netem/topo.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include "netem/emulator.h"
#include "netem/state.h"
#include "netem/tc.h"

/* Names are checked to fit at create time (ids are at most 11 characters). */
static void name_set(char *dst, size_t cap, const char *fmt, ...) PN_PRINTF(3, 4);

static void name_set(char *dst, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, cap, fmt, ap);
    va_end(ap);
}

int netem_topo_ip(char *err, size_t errlen, const char *arg, ...)
{
    const char *argv[32];
    int n = 0;
    argv[n++] = "ip";
    va_list ap;
    va_start(ap, arg);
    for (const char *a = arg; a && n < 31; a = va_arg(ap, const char *))
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return pn_err(err, errlen, -errno, "pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return pn_err(err, errlen, -errno, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);   /* the guard's mask must not reach ip */
        int nul = open("/dev/null", O_RDWR);
        dup2(nul, 0);
        dup2(nul, 1);
        dup2(pfd[1], 2);
        execvp("ip", (char *const *)argv);
        fprintf(stderr, "cannot run ip (iproute2): %s", strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    char out[512];
    size_t got = 0;
    ssize_t r;
    while ((r = read(pfd[0], out + got, sizeof out - 1 - got)) > 0 && got < sizeof out - 1)
        got += (size_t)r;
    while (r > 0)
        r = read(pfd[0], (char[256]){0}, 256);
    out[got] = '\0';
    while (got && (out[got - 1] == '\n' || out[got - 1] == ' '))
        out[--got] = '\0';
    close(pfd[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    char cmd[256] = "";
    size_t at = 0;
    for (int i = 0; argv[i] && at < sizeof cmd - 1; i++)
        at += (size_t)snprintf(cmd + at, sizeof cmd - at, "%s%s", i ? " " : "", argv[i]);
    int rc = strstr(out, "Operation not permitted") || strstr(out, "Permission denied") ? -EPERM : -EIO;
    return pn_err(err, errlen, rc, "'%s' failed: %s", cmd, got ? out : "(no message)");
}

static int netns_exists(const char *name)
{
    char path[128];
    snprintf(path, sizeof path, "/run/netns/%s", name);
    return access(path, F_OK) == 0;
}

int netem_topo_netns_delete(const char *name, char *err, size_t errlen)
{
    if (!netns_exists(name))
        return 0;
    return netem_topo_ip(err, errlen, "netns", "del", name, NULL);
}

/* Records, then creates: a crash in between leaves a record of nothing, never the reverse. */
static int netns_make(const char *name, char *err, size_t errlen)
{
    netem_state_entry_t e;
    memset(&e, 0, sizeof e);
    e.kind = NETEM_STATE_NETNS;
    snprintf(e.netns, sizeof e.netns, "%s", name);
    if (!netem_tc_may_change())
        return pn_err(err, errlen, -EPERM, "creating network namespace %s: permission denied "
                    "(needs root or CAP_NET_ADMIN); nothing was changed", name);
    if (netns_exists(name))
        return pn_err(err, errlen, -EEXIST, "network namespace %s already exists", name);
    int rc = netem_state_add(&e, 0, err, errlen);
    if (rc < 0)
        return rc;
    rc = netem_topo_ip(err, errlen, "netns", "add", name, NULL);
    if (rc < 0)
        netem_state_forget_netns(name);
    return rc;
}

static void netns_remove(const char *name)
{
    char err[256];
    if (netem_topo_netns_delete(name, err, sizeof err) < 0)
        fprintf(stderr, "pipenem: %s\n", err);
    else
        netem_state_forget_netns(name);
}

int netem_topo_scratch_create(const char *netns, const char *ifname, char *err, size_t errlen)
{
    char peer[16];
    snprintf(peer, sizeof peer, "%.13s-p", ifname);
    int rc = netns_make(netns, err, errlen);
    if (rc < 0)
        return rc;
    if ((rc = netem_topo_ip(err, errlen, "-n", netns, "link", "add", ifname, "type", "veth", "peer",
                            "name", peer, NULL)) < 0 ||
        (rc = netem_topo_ip(err, errlen, "-n", netns, "link", "set", ifname, "up", NULL)) < 0 ||
        (rc = netem_topo_ip(err, errlen, "-n", netns, "link", "set", peer, "up", NULL)) < 0)
        netns_remove(netns);
    return rc;
}

int netem_topo_scratch_destroy(const char *netns, char *err, size_t errlen)
{
    int rc = netem_topo_netns_delete(netns, err, errlen);
    if (rc == 0)
        netem_state_forget_netns(netns);
    return rc;
}

/* Writes a sysctl of namespace ns (/proc/sys/net follows the opener's namespace). TCP
 * buffers big enough for the bandwidth-delay products of the profiles (up to 32 MiB):
 * otherwise the window, not the emulated link, would limit the goodput. */
static void ns_sysctl(const char *ns, const char *path, const char *value)
{
    char nspath[128];
    snprintf(nspath, sizeof nspath, "/run/netns/%s", ns);
    int target = open(nspath, O_RDONLY | O_CLOEXEC);
    int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (target >= 0 && self >= 0 && setns(target, CLONE_NEWNET) == 0) {
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            if (write(fd, value, strlen(value)) < 0)
                fprintf(stderr, "pipenem: %s in %s: %s\n", path, ns, strerror(errno));
            close(fd);
        }
        if (setns(self, CLONE_NEWNET) < 0)
            abort();   /* this thread would act in the wrong namespace from now on */
    }
    if (target >= 0)
        close(target);
    if (self >= 0)
        close(self);
}

int netem_topo_create(netem_topo_t *t, int hosts, char *err, size_t errlen)
{
    static int seq;
    memset(t, 0, sizeof *t);
    if (hosts < 1 || hosts > NETEM_TOPO_MAX_HOSTS)
        return pn_err(err, errlen, -EINVAL, "a topology has 1 to %d hosts, not %d", NETEM_TOPO_MAX_HOSTS,
                    hosts);
    int k = __atomic_fetch_add(&seq, 1, __ATOMIC_RELAXED);
    if (k == 0)
        name_set(t->id, sizeof t->id, "pn%ld", (long)getpid());
    else
        name_set(t->id, sizeof t->id, "pn%ld%c", (long)getpid(), 'a' + (k - 1) % 26);
    t->hosts = hosts;
    name_set(t->sw_ns, sizeof t->sw_ns, "%s-sw", t->id);
    name_set(t->bridge, sizeof t->bridge, "%s-br", t->id);
    for (int i = 0; i < hosts; i++) {
        name_set(t->host_ns[i], sizeof t->host_ns[i], "%s-h%d", t->id, i);
        name_set(t->host_if[i], sizeof t->host_if[i], "%s-h%d", t->id, i);
        name_set(t->port_if[i], sizeof t->port_if[i], "%s-s%d", t->id, i);
        snprintf(t->host_addr[i], sizeof t->host_addr[i], "198.18.0.%d", i + 1);
    }
    int rc = netns_make(t->sw_ns, err, errlen);
    if (rc < 0)
        goto fail;
    t->made = 1;
    for (int i = 0; i < hosts; i++) {
        if ((rc = netns_make(t->host_ns[i], err, errlen)) < 0)
            goto fail;
        t->made++;
    }
    if ((rc = netem_topo_ip(err, errlen, "-n", t->sw_ns, "link", "add", t->bridge, "type", "bridge",
                            NULL)) < 0 ||
        (rc = netem_topo_ip(err, errlen, "-n", t->sw_ns, "link", "set", t->bridge, "up", NULL)) < 0)
        goto fail;
    for (int i = 0; i < hosts; i++) {
        char cidr[24];
        snprintf(cidr, sizeof cidr, "%s/24", t->host_addr[i]);
        if ((rc = netem_topo_ip(err, errlen, "-n", t->sw_ns, "link", "add", t->port_if[i], "type",
                                "veth", "peer", "name", t->host_if[i], "netns", t->host_ns[i], NULL)) < 0 ||
            (rc = netem_topo_ip(err, errlen, "-n", t->sw_ns, "link", "set", t->port_if[i], "master",
                                t->bridge, "up", NULL)) < 0 ||
            (rc = netem_topo_ip(err, errlen, "-n", t->host_ns[i], "addr", "add", cidr, "dev",
                                t->host_if[i], NULL)) < 0 ||
            (rc = netem_topo_ip(err, errlen, "-n", t->host_ns[i], "link", "set", t->host_if[i], "up",
                                NULL)) < 0 ||
            (rc = netem_topo_ip(err, errlen, "-n", t->host_ns[i], "link", "set", "lo", "up", NULL)) < 0)
            goto fail;
        ns_sysctl(t->host_ns[i], "/proc/sys/net/ipv4/tcp_rmem", "4096 131072 33554432");
        ns_sysctl(t->host_ns[i], "/proc/sys/net/ipv4/tcp_wmem", "4096 16384 33554432");
    }
    return 0;
fail:
    netem_topo_destroy(t);
    return rc;
}

const char *netem_topo_host_ns(const netem_topo_t *t, int host)
{
    return host >= 0 && host < t->hosts ? t->host_ns[host] : NULL;
}

const char *netem_topo_host_addr(const netem_topo_t *t, int host)
{
    return host >= 0 && host < t->hosts ? t->host_addr[host] : NULL;
}

const char *netem_topo_host_ifname(const netem_topo_t *t, int host)
{
    return host >= 0 && host < t->hosts ? t->host_if[host] : NULL;
}

int netem_topo_enter(const netem_topo_t *t, int host)
{
    if (host < 0 || host >= t->hosts)
        return -EINVAL;
    char path[128];
    snprintf(path, sizeof path, "/run/netns/%s", t->host_ns[host]);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = setns(fd, CLONE_NEWNET) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

int netem_topo_become_host(const netem_topo_t *t, int host, char *err, size_t errlen)
{
    int rc = netem_topo_enter(t, host);
    if (rc) {
        snprintf(err, errlen, "cannot enter namespace %s: %s", host >= 0 && host < t->hosts ? t->host_ns[host] : "?",
                 strerror(-rc));
        return rc;
    }
    if (unshare(CLONE_NEWNS) || mount("", "/", NULL, MS_SLAVE | MS_REC, NULL) || umount2("/sys", MNT_DETACH) ||
        mount("sysfs", "/sys", "sysfs", 0, NULL)) {
        rc = -errno;
        snprintf(err, errlen, "cannot remount /sys in namespace %s: %s", t->host_ns[host], strerror(errno));
        return rc;
    }
    return 0;
}

int netem_topo_apply(netem_topo_t *t, const netem_profile_t *links, const char *emulator,
                     char *err, size_t errlen)
{
    const netem_emulator_t *e;
    char why[sizeof t->why];
    int n = t->hosts - 1;
    int rc = netem_emulator_choose(emulator, links, n, &e, why, sizeof why, err, errlen);
    if (rc < 0)
        return rc;
    if ((rc = e->apply(t, links, err, errlen)) < 0)
        return rc;
    for (int i = 0; i < n; i++)
        t->links[i] = links[i];
    t->pairs = 0;
    t->emulator = e;
    snprintf(t->why, sizeof t->why, "%s", why);
    return 0;
}

/* The sources that send to host dst with a profile that is not default, into src[] and
 * prof[]: how many, or -EINVAL past max (err names the host). */
#define TOPO_MAX_SOURCES 16
static int pair_sources(const netem_topo_t *t, netem_topo_pair_fn pair, void *arg, int dst, const char **src,
                        netem_profile_t *prof, char *err, size_t errlen)
{
    int k = 0;
    for (int i = 0; i < t->hosts; i++) {
        netem_profile_t p = {0};
        if (i == dst)
            continue;
        pair(arg, i, dst, &p);
        if (netem_profile_is_default(&p))
            continue;
        if (k == TOPO_MAX_SOURCES)
            return pn_err(err, errlen, -EINVAL, "host %d hears from more than %d shaped sources: a per-source tree "
                          "holds %d", dst, TOPO_MAX_SOURCES, TOPO_MAX_SOURCES);
        src[k] = t->host_addr[i];
        prof[k++] = p;
    }
    return k;
}

int netem_topo_apply_pairs(netem_topo_t *t, netem_topo_pair_fn pair, void *arg, const char *emulator, char *err,
                           size_t errlen)
{
    const char *src[TOPO_MAX_SOURCES];
    netem_profile_t *all = calloc((size_t)t->hosts * TOPO_MAX_SOURCES + 1, sizeof *all);
    int n = 0, rc = 0;
    if (!all)
        return pn_err(err, errlen, -ENOMEM, "out of memory");
    for (int j = 0; j < t->hosts && rc >= 0; j++)
        n += (rc = pair_sources(t, pair, arg, j, src, all + n, err, errlen)) > 0 ? rc : 0;
    const netem_emulator_t *e = NULL;
    char why[sizeof t->why];
    if (rc >= 0)
        rc = netem_emulator_choose(emulator, all, n, &e, why, sizeof why, err, errlen);
    /* Each port: its sources' tree where the kernel shapes, else its default qdisc. */
    for (int j = 0; j < t->hosts && rc >= 0; j++) {
        netem_dev_t d;
        netem_tc_applied_t a;
        static const netem_profile_t none;
        int k = pair_sources(t, pair, arg, j, src, all, err, errlen);
        if ((rc = k < 0 ? k : netem_dev_init(&d, t->sw_ns, t->port_if[j], err, errlen)) < 0)
            break;
        if (e->changes_kernel && k > 0)
            rc = netem_tc_apply_by_source(&d, k, src, all, NETEM_TC_EPHEMERAL, err, errlen);
        else
            rc = netem_tc_apply(&d, &none, NETEM_TC_EPHEMERAL, &a, err, errlen);
    }
    free(all);
    if (rc < 0)
        return rc;
    memset(t->links, 0, sizeof t->links);
    t->pairs = 1;
    t->emulator = e;
    snprintf(t->why, sizeof t->why, "%s", why);
    return 0;
}

const char *netem_topo_emulator(const netem_topo_t *t)
{
    return t->emulator ? t->emulator->name : NULL;
}

void netem_topo_destroy(netem_topo_t *t)
{
    if (!t || t->made == 0)
        return;
    for (int i = t->made - 2; i >= 0; i--)
        netns_remove(t->host_ns[i]);
    netns_remove(t->sw_ns);
    t->made = 0;
}

int netem_topo_leftovers(const char *prefix, char *buf, size_t len)
{
    int n = 0;
    size_t at = 0;
    size_t pl = strlen(prefix);
    if (len)
        buf[0] = '\0';
    DIR *d = opendir("/run/netns");
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)))
            if (!strncmp(de->d_name, prefix, pl)) {
                n++;
                if (at < len)
                    at += (size_t)snprintf(buf + at, len - at, "netns %s\n", de->d_name);
            }
        closedir(d);
    }
    struct if_nameindex *ifs = if_nameindex();
    for (struct if_nameindex *i = ifs; i && i->if_index; i++)
        if (!strncmp(i->if_name, prefix, pl)) {
            n++;
            if (at < len)
                at += (size_t)snprintf(buf + at, len - at, "link %s\n", i->if_name);
        }
    if (ifs)
        if_freenameindex(ifs);
    return n;
}
