/* State files: one text line per change pipenem made, written (tmp + rename + fsync)
 * before the change, removed once undone. Readers and writers hold an flock on
 * DIR/.lock, so concurrent runs and `clear --all` never see half a file. */
#include "netem/state.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "netem/topo.h"

#define STATE_MAX_ENTRIES 256

typedef struct {
    long pid;
    unsigned long long start;
    int n;
    netem_state_entry_t e[STATE_MAX_ENTRIES];
} state_file_t;

static pthread_mutex_t state_mu = PTHREAD_MUTEX_INITIALIZER;
/* Held across each change of the machine (netem_state_change_begin/end) and by the
 * signal guard while it undoes: a signal in the middle of building a qdisc tree waits
 * for the tree to be complete (and recorded), so the undo never races the build and
 * leaves a tree that no record describes. Recursive: an apply may clear first. */
static pthread_mutex_t change_mu = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

void netem_state_change_begin(void)
{
    pthread_mutex_lock(&change_mu);
}

void netem_state_change_end(void)
{
    pthread_mutex_unlock(&change_mu);
}

const char *netem_state_dir(void)
{
    const char *d = getenv("PIPENEM_STATE_DIR");
    return d && *d ? d : "/run/pipenem";
}

/* Field 22 of /proc/PID/stat: tells a live owner from a recycled pid; 0 when the process is
 * gone or a zombie (killed, its parent not reaping it: it can undo nothing). */
static unsigned long long proc_start(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    unsigned long long v = 0;
    int field = 2;
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " "))
        if (++field == 3 && (*tok == 'Z' || *tok == 'X'))
            return 0; /* dead, not yet reaped: it can undo nothing any more */
        else if (field == 22) {
            v = strtoull(tok, NULL, 10);
            break;
        }
    return v;
}

static void run_path(long pid, char *buf, size_t len)
{
    snprintf(buf, len, "%s/run-%ld.state", netem_state_dir(), pid);
}

static void persist_path(char *buf, size_t len)
{
    snprintf(buf, len, "%s/applied.state", netem_state_dir());
}

static int lock_dir(char *err, size_t errlen)
{
    char path[512];
    const char *dir = netem_state_dir();
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return pn_err(err, errlen, -errno, "cannot create state directory %s: %s%s", dir,
                    strerror(errno), errno == EACCES ? " (changing the network needs root)" : "");
    snprintf(path, sizeof path, "%s/.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return pn_err(err, errlen, -errno, "cannot open %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX) < 0) {
        int e = errno;
        close(fd);
        return pn_err(err, errlen, -e, "cannot lock %s: %s", path, strerror(e));
    }
    return fd;
}

static void unlock_dir(int fd)
{
    if (fd >= 0)
        close(fd);
}

static void hex_put(FILE *f, const unsigned char *b, size_t n)
{
    if (!n) {
        fputc('-', f);
        return;
    }
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%02x", b[i]);
}

static int hex_get(const char *s, unsigned char *b, size_t cap, uint16_t *n)
{
    if (!strcmp(s, "-")) {
        *n = 0;
        return 0;
    }
    size_t len = strlen(s);
    if (len % 2 || len / 2 > cap)
        return -1;
    for (size_t i = 0; i < len / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return -1;
        b[i] = (unsigned char)v;
    }
    *n = (uint16_t)(len / 2);
    return 0;
}

/* A missing file reads as empty. Unparseable lines are skipped (and so never replayed:
 * a record we cannot read is one we cannot undo). */
static int file_load(const char *path, state_file_t *sf)
{
    memset(sf, 0, sizeof *sf);
    FILE *f = fopen(path, "r");
    if (!f)
        return errno == ENOENT ? 0 : -errno;
    char line[5120];
    while (fgets(line, sizeof line, f) && sf->n < STATE_MAX_ENTRIES) {
        char a[64], b[16], c[16], hex[4200];
        unsigned handle;
        int def;
        netem_state_entry_t *e = &sf->e[sf->n];
        memset(e, 0, sizeof *e);
        if (sscanf(line, "owner %ld %llu", &sf->pid, &sf->start) == 2)
            continue;
        if (sscanf(line, "netns %63s", a) == 1) {
            e->kind = NETEM_STATE_NETNS;
            snprintf(e->netns, sizeof e->netns, "%s", a);
            sf->n++;
        } else if (sscanf(line, "qdisc %63s %15s %15s %x %d %4199s", a, b, c, &handle, &def, hex) == 6) {
            e->kind = NETEM_STATE_QDISC;
            snprintf(e->dev.netns, sizeof e->dev.netns, "%s", strcmp(a, "-") ? a : "");
            snprintf(e->dev.ifname, sizeof e->dev.ifname, "%s", b);
            snprintf(e->saved.kind, sizeof e->saved.kind, "%s", c);
            e->saved.handle = handle;
            e->saved.is_default = def;
            if (hex_get(hex, e->saved.opts, sizeof e->saved.opts, &e->saved.optlen) == 0)
                sf->n++;
        }
    }
    fclose(f);
    return 0;
}

static int file_store(const char *path, const state_file_t *sf, char *err, size_t errlen)
{
    if (sf->n == 0) {
        if (unlink(path) < 0 && errno != ENOENT)
            return pn_err(err, errlen, -errno, "cannot remove %s: %s", path, strerror(errno));
        return 0;
    }
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return pn_err(err, errlen, -errno, "cannot write %s: %s", tmp, strerror(errno));
    fprintf(f, "owner %ld %llu\n", sf->pid, sf->start);
    for (int i = 0; i < sf->n; i++) {
        const netem_state_entry_t *e = &sf->e[i];
        if (e->kind == NETEM_STATE_NETNS) {
            fprintf(f, "netns %s\n", e->netns);
        } else {
            fprintf(f, "qdisc %s %s %s %x %d ", e->dev.netns[0] ? e->dev.netns : "-",
                    e->dev.ifname, e->saved.kind, e->saved.handle, e->saved.is_default);
            hex_put(f, e->saved.opts, e->saved.optlen);
            fputc('\n', f);
        }
    }
    int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return pn_err(err, errlen, -e, "cannot write %s: %s", path, strerror(e));
    }
    return 0;
}

static int same_dev(const netem_dev_t *a, const netem_dev_t *b)
{
    return !strcmp(a->netns, b->netns) && !strcmp(a->ifname, b->ifname);
}

static void guard_install_once(void);

int netem_state_add(const netem_state_entry_t *e, int persist, char *err, size_t errlen)
{
    char path[512];
    static state_file_t sf;   /* large: kept off the stack, used under state_mu */
    int rc;
    pthread_mutex_lock(&state_mu);
    int lk = lock_dir(err, errlen);
    if (lk < 0) {
        rc = lk;
        goto out;
    }
    if (persist)
        persist_path(path, sizeof path);
    else
        run_path(getpid(), path, sizeof path);
    if ((rc = file_load(path, &sf)) < 0) {
        pn_err(err, errlen, rc, "cannot read %s: %s", path, strerror(-rc));
        goto unlock;
    }
    if (sf.n >= STATE_MAX_ENTRIES) {
        rc = pn_err(err, errlen, -ENOSPC, "state file %s is full (%d records)", path, sf.n);
        goto unlock;
    }
    sf.pid = persist ? 0 : getpid();
    sf.start = persist ? 0 : proc_start(getpid());
    sf.e[sf.n++] = *e;
    rc = file_store(path, &sf, err, errlen);
unlock:
    unlock_dir(lk);
out:
    pthread_mutex_unlock(&state_mu);
    if (rc == 0 && !persist)
        guard_install_once();
    return rc;
}

/* Calls fn on every state file path in the directory (the lock is held by the caller). */
static void each_file(void (*fn)(const char *path, void *arg), void *arg)
{
    DIR *d = opendir(netem_state_dir());
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n < 7 || strcmp(de->d_name + n - 6, ".state"))
            continue;
        char path[768];
        snprintf(path, sizeof path, "%s/%s", netem_state_dir(), de->d_name);
        fn(path, arg);
    }
    closedir(d);
}

typedef struct {
    const netem_dev_t *dev;
    netem_state_entry_t *out;
    int found;
    int forget;
    state_file_t sf;
} find_arg_t;

static void find_in(const char *path, void *argp)
{
    find_arg_t *a = argp;
    if (file_load(path, &a->sf) < 0)
        return;
    for (int i = 0; i < a->sf.n; i++) {
        netem_state_entry_t *e = &a->sf.e[i];
        if (e->kind != NETEM_STATE_QDISC || !same_dev(&e->dev, a->dev))
            continue;
        if (a->forget) {
            memmove(e, e + 1, (size_t)(a->sf.n - i - 1) * sizeof *e);
            a->sf.n--;
            i--;
            (void)file_store(path, &a->sf, NULL, 0);
        } else if (!a->found) {
            *a->out = *e;
            a->found = 1;
        }
    }
}

static find_arg_t find_arg;   /* large; used under state_mu */

int netem_state_find_qdisc(const netem_dev_t *d, netem_state_entry_t *out)
{
    pthread_mutex_lock(&state_mu);
    int lk = lock_dir(NULL, 0);
    int found = 0;
    if (lk >= 0) {
        memset(&find_arg, 0, sizeof find_arg);
        find_arg.dev = d;
        find_arg.out = out;
        each_file(find_in, &find_arg);
        found = find_arg.found;
        unlock_dir(lk);
    }
    pthread_mutex_unlock(&state_mu);
    return found;
}

void netem_state_forget_qdisc(const netem_dev_t *d)
{
    netem_state_entry_t dummy;
    pthread_mutex_lock(&state_mu);
    int lk = lock_dir(NULL, 0);
    if (lk >= 0) {
        memset(&find_arg, 0, sizeof find_arg);
        find_arg.dev = d;
        find_arg.out = &dummy;
        find_arg.forget = 1;
        each_file(find_in, &find_arg);
        unlock_dir(lk);
    }
    pthread_mutex_unlock(&state_mu);
}

void netem_state_forget_netns(const char *netns)
{
    char path[512];
    static state_file_t sf;
    pthread_mutex_lock(&state_mu);
    int lk = lock_dir(NULL, 0);
    if (lk >= 0) {
        run_path(getpid(), path, sizeof path);
        if (file_load(path, &sf) == 0) {
            for (int i = 0; i < sf.n; i++)
                if (sf.e[i].kind == NETEM_STATE_NETNS && !strcmp(sf.e[i].netns, netns)) {
                    memmove(&sf.e[i], &sf.e[i + 1], (size_t)(sf.n - i - 1) * sizeof sf.e[0]);
                    sf.n--;
                    i--;
                }
            (void)file_store(path, &sf, NULL, 0);
        }
        unlock_dir(lk);
    }
    pthread_mutex_unlock(&state_mu);
}

/* Undoes one record. A device or namespace that no longer exists is already undone. */
static int entry_undo(const netem_state_entry_t *e, char *line, size_t linelen)
{
    char err[256] = "";
    int rc;
    if (e->kind == NETEM_STATE_NETNS) {
        rc = netem_topo_netns_delete(e->netns, err, sizeof err);
        snprintf(line, linelen, "netns %s: %s", e->netns, rc == 0 ? "removed" : err);
    } else {
        rc = netem_tc_restore(&e->dev, &e->saved, err, sizeof err);
        if (rc == -ENODEV || rc == -ENOENT)
            rc = 0;
        snprintf(line, linelen, "qdisc %s%s%s: %s", e->dev.netns, e->dev.netns[0] ? "/" : "",
                 e->dev.ifname, rc == 0 ? (e->saved.is_default ? "default restored" : "original restored") : err);
    }
    return rc;
}

/* Undoes a whole file newest first; the file keeps only what could not be undone. */
static int file_undo(const char *path, state_file_t *sf, int *undone,
                     void (*log)(const char *, void *), void *arg, char *err, size_t errlen)
{
    int first = 0;
    char line[512];
    if (file_load(path, sf) < 0)
        return 0;
    for (int i = sf->n - 1; i >= 0; i--) {
        int rc = entry_undo(&sf->e[i], line, sizeof line);
        if (log)
            log(line, arg);
        if (rc == 0) {
            memmove(&sf->e[i], &sf->e[i + 1], (size_t)(sf->n - i - 1) * sizeof sf->e[0]);
            sf->n--;
            if (undone)
                (*undone)++;
        } else if (!first) {
            first = rc;
            pn_err(err, errlen, rc, "%s", line);
        }
    }
    int rc = file_store(path, sf, first ? NULL : err, errlen);
    return first ? first : rc;
}

int netem_state_undo_mine(char *err, size_t errlen)
{
    char path[512];
    static state_file_t sf;
    pthread_mutex_lock(&state_mu);
    run_path(getpid(), path, sizeof path);
    int rc = 0;
    if (access(path, F_OK) == 0) {
        int lk = lock_dir(err, errlen);
        if (lk < 0) {
            rc = lk;
        } else {
            rc = file_undo(path, &sf, NULL, NULL, NULL, err, errlen);
            unlock_dir(lk);
        }
    }
    pthread_mutex_unlock(&state_mu);
    return rc;
}

typedef struct {
    int *undone, *live, rc;
    void (*log)(const char *, void *);
    void *arg;
    char *err;
    size_t errlen;
    state_file_t sf;
} all_arg_t;

static void undo_in(const char *path, void *argp)
{
    all_arg_t *a = argp;
    if (file_load(path, &a->sf) < 0)
        return;
    if (a->sf.pid > 0 && a->sf.pid != getpid() && proc_start(a->sf.pid) == a->sf.start &&
        a->sf.start != 0) {
        (*a->live)++;
        if (a->log) {
            char line[600];
            snprintf(line, sizeof line, "%s: owner pid %ld is still running, left alone", path, a->sf.pid);
            a->log(line, a->arg);
        }
        return;
    }
    int rc = file_undo(path, &a->sf, a->undone, a->log, a->arg, a->err, a->errlen);
    if (rc < 0 && a->rc == 0)
        a->rc = rc;
}

static all_arg_t all_arg;

int netem_state_undo_all(int *undone, int *live, void (*log)(const char *line, void *arg),
                         void *arg, char *err, size_t errlen)
{
    int u = 0, l = 0;
    pthread_mutex_lock(&state_mu);
    int lk = lock_dir(err, errlen);
    if (lk < 0) {
        pthread_mutex_unlock(&state_mu);
        return lk;
    }
    memset(&all_arg, 0, sizeof all_arg);
    all_arg.undone = &u;
    all_arg.live = &l;
    all_arg.log = log;
    all_arg.arg = arg;
    all_arg.err = err;
    all_arg.errlen = errlen;
    each_file(undo_in, &all_arg);
    int rc = all_arg.rc;
    unlock_dir(lk);
    pthread_mutex_unlock(&state_mu);
    *undone = u;
    *live = l;
    return rc;
}

/* ---- guards: normal exit and signals ---- */

static pthread_once_t guard_once = PTHREAD_ONCE_INIT;
static pthread_once_t atexit_once = PTHREAD_ONCE_INIT;

static void undo_at_exit(void)
{
    /* A forked child inherits this handler: it undoes only its own run file, if any. */
    char err[256];
    if (netem_state_undo_mine(err, sizeof err) < 0)
        fprintf(stderr, "pipenem: restoring the network at exit: %s\n", err);
}

static void atexit_install(void)
{
    atexit(undo_at_exit);
}

static void guard_install_once(void)
{
    pthread_once(&atexit_once, atexit_install);
}

static sigset_t guard_set(void)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGINT);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGHUP);
    return s;
}

static void *guard_thread(void *arg)
{
    (void)arg;
    sigset_t s = guard_set();
    int sig = 0;
    if (sigwait(&s, &sig) != 0)
        return NULL;
    char err[256];
    netem_state_change_begin();   /* kept: nothing changes the machine after the undo */
    if (netem_state_undo_mine(err, sizeof err) < 0)
        fprintf(stderr, "pipenem: restoring the network after signal %d: %s\n", sig, err);
    /* Die of the same signal so the parent sees what happened. */
    signal(sig, SIG_DFL);
    pthread_sigmask(SIG_UNBLOCK, &s, NULL);
    raise(sig);
    _exit(128 + sig);
}

static int guard_rc;

static void guard_start_once(void)
{
    sigset_t s = guard_set();
    pthread_t t;
    guard_install_once();
    if ((guard_rc = -pthread_sigmask(SIG_BLOCK, &s, NULL)) != 0)
        return;
    if ((guard_rc = -pthread_create(&t, NULL, guard_thread, NULL)) != 0) {
        pthread_sigmask(SIG_UNBLOCK, &s, NULL);
        return;
    }
    pthread_detach(t);
}

int netem_state_guard_start(void)
{
    pthread_once(&guard_once, guard_start_once);
    return guard_rc;
}

void netem_state_guard_child(void)
{
    sigset_t s = guard_set();
    pthread_sigmask(SIG_UNBLOCK, &s, NULL);
}
