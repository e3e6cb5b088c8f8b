/* The rendezvous: rank 0 listens on the --dist-url address, every other rank connects,
 * presents (rank, size, config hash, token, transport address) and gets the address table
 * and its clock offset back. The sockets then carry failure notices and the final barrier,
 * read by one watcher thread per rank that sleeps in poll(). Every length read from the
 * wire is capped before anything is allocated. */
#include "pipeline/boot.h"

#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BOOT_MAGIC 0x504e4231u /* "PNB1" */
#define BOOT_VERSION 1u

enum { MSG_HELLO = 1, MSG_WELCOME, MSG_REFUSE, MSG_CLOCK_REQ, MSG_CLOCK_REP, MSG_TABLE, MSG_ABORT,
       MSG_DONE, MSG_RELEASE };

enum { CLOCK_ROUNDS = 16, TEXT_MAX = 1024 };

struct boot {
    int rank, size;
    int *fds;               /* rank 0: fds[r] for each other rank; others: fds[0] */
    void **blobs;
    size_t *bloblens;
    double offset, rtt, start;
    pthread_mutex_t lock, wlock;
    pthread_cond_t cond;
    int sync_ready;
    pthread_t watcher;
    int watching, wake_fd, stop;
    void (*on_fail)(void *, int, const char *);
    void *on_fail_arg;
    int failed, fail_rank;
    char fail_why[512];
    int arrived, released;
    void **gathered;
    size_t *gatherlens;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

int boot_token_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    /* Walk the full maximum length whatever the inputs, so timing does not leak a prefix. */
    for (size_t i = 0; i < BOOT_TOKEN_MAX; i++) {
        unsigned char x = i < la ? (unsigned char)a[i] : 0;
        unsigned char y = i < lb ? (unsigned char)b[i] : 0;
        diff |= x ^ y;
    }
    return diff == 0;
}

/* ---- environment and URL ---- */

static int env_int(const char *name, int *out, char *err, size_t errlen)
{
    const char *v = getenv(name);
    if (!v)
        return -ENOENT;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < 0 || x > BOOT_RANKS_MAX) {
        snprintf(err, errlen, "%s='%s' is not a rank/size between 0 and %d", name, v, BOOT_RANKS_MAX);
        return -EINVAL;
    }
    *out = (int)x;
    return 0;
}

int boot_env_rank(int *rank, int *size, const char **source, char *err, size_t errlen)
{
    static const char *const fam[][3] = {
        {"SLURM_PROCID", "SLURM_NTASKS", "Slurm"},
        {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "Open MPI"},
        {"PMI_RANK", "PMI_SIZE", "PMI"},
    };
    for (size_t i = 0; i < sizeof fam / sizeof *fam; i++) {
        int r, s, rc;
        if ((rc = env_int(fam[i][0], &r, err, errlen)) == -ENOENT)
            continue;
        if (rc)
            return rc;
        if ((rc = env_int(fam[i][1], &s, err, errlen)) != 0) {
            if (rc == -ENOENT)
                snprintf(err, errlen, "%s is set but %s is not", fam[i][0], fam[i][1]);
            return -EINVAL;
        }
        if (s < 1 || r >= s) {
            snprintf(err, errlen, "%s=%d is not below %s=%d", fam[i][0], r, fam[i][1], s);
            return -EINVAL;
        }
        *rank = r;
        *size = s;
        *source = fam[i][2];
        return 0;
    }
    return -ENOENT;
}

int boot_env_token(const char **token)
{
    static char buf[BOOT_TOKEN_MAX];
    const char *v;
    if ((v = getenv("PIPENEM_TOKEN")) && *v) {
        *token = v;
        return 0;
    }
    if ((v = getenv("SLURM_JOB_ID")) && *v) {
        const char *step = getenv("SLURM_STEP_ID");
        snprintf(buf, sizeof buf, "slurm-%s.%s", v, step ? step : "");
        *token = buf;
        return 0;
    }
    if ((v = getenv("PMIX_NAMESPACE")) && *v) {
        snprintf(buf, sizeof buf, "pmix-%s", v);
        *token = buf;
        return 0;
    }
    if ((v = getenv("OMPI_MCA_ess_base_jobid")) && *v) {
        snprintf(buf, sizeof buf, "ompi-%s", v);
        *token = buf;
        return 0;
    }
    return -ENOENT;
}

int boot_url_parse(const char *url, char *host, size_t hostlen, int *port, char *err, size_t errlen)
{
    const char *p = url;
    if (strncmp(p, "tcp://", 6) != 0) {
        snprintf(err, errlen, "--dist-url '%s' must start with tcp://", url);
        return -EINVAL;
    }
    p += 6;
    const char *hs = p, *he, *colon;
    if (*p == '[') {
        hs = p + 1;
        he = strchr(hs, ']');
        if (!he || he[1] != ':') {
            snprintf(err, errlen, "--dist-url '%s': expected tcp://[IPV6]:PORT", url);
            return -EINVAL;
        }
        colon = he + 1;
    } else {
        colon = strrchr(p, ':');
        he = colon;
    }
    if (!colon || he == hs) {
        snprintf(err, errlen, "--dist-url '%s': expected tcp://HOST:PORT", url);
        return -EINVAL;
    }
    if ((size_t)(he - hs) >= hostlen) {
        snprintf(err, errlen, "--dist-url '%s': host name too long", url);
        return -EINVAL;
    }
    char *end;
    errno = 0;
    long v = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || v < 1 || v > 65535) {
        snprintf(err, errlen, "--dist-url '%s': port '%s' is not 1..65535", url, colon + 1);
        return -EINVAL;
    }
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    *port = (int)v;
    return 0;
}

int boot_route_ifname(const char *host, int port, char *ifname, size_t len, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM}, *ai = NULL;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int g = getaddrinfo(host, service, &hints, &ai);
    if (g) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(g));
        return -EHOSTUNREACH;
    }
    struct sockaddr_storage local;
    socklen_t ll = sizeof local;
    int fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0), rc = 0;
    /* connect() on a datagram socket only picks the route and the source address */
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) || getsockname(fd, (struct sockaddr *)&local, &ll)) {
        rc = -errno;
        snprintf(err, errlen, "no route to %s: %s", host, strerror(errno));
    }
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    if (rc)
        return rc;
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs)) {
        rc = -errno;
        snprintf(err, errlen, "cannot list the network interfaces: %s", strerror(errno));
        return rc;
    }
    rc = -ENODEV;
    for (struct ifaddrs *i = ifs; i && rc; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != local.ss_family)
            continue;
        int same = local.ss_family == AF_INET
                       ? ((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr ==
                             ((struct sockaddr_in *)&local)->sin_addr.s_addr
                       : !memcmp(&((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr,
                                 &((struct sockaddr_in6 *)&local)->sin6_addr, sizeof(struct in6_addr));
        if (same && strlen(i->ifa_name) < len) {
            snprintf(ifname, len, "%s", i->ifa_name);
            rc = 0;
        }
    }
    freeifaddrs(ifs);
    if (rc)
        snprintf(err, errlen, "no interface of this host holds the address that reaches %s", host);
    return rc;
}

/* ---- wire ---- */

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t n, double deadline)
{
    char *p = buf;
    while (n) {
        double left = deadline - now();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int r = poll(&pf, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            continue;
        ssize_t k = recv(fd, p, n, 0);
        if (k == 0)
            return -ECONNRESET;
        if (k < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int msg_send(boot_t *b, int fd, int type, const void *payload, size_t len)
{
    uint32_t h[3] = {htobe32(BOOT_MAGIC), htobe32((uint32_t)type), htobe32((uint32_t)len)};
    if (b)
        pthread_mutex_lock(&b->wlock);
    int rc = write_all(fd, h, sizeof h);
    if (!rc && len)
        rc = write_all(fd, payload, len);
    if (b)
        pthread_mutex_unlock(&b->wlock);
    return rc;
}

int boot_header_parse(const void *hdr, size_t max, int *type, size_t *len)
{
    uint32_t h[3];
    memcpy(h, hdr, sizeof h);
    if (be32toh(h[0]) != BOOT_MAGIC)
        return -EPROTO;
    size_t n = be32toh(h[2]);
    if (n > max)
        return -EMSGSIZE;
    *type = (int)be32toh(h[1]);
    *len = n;
    return 0;
}

/* Reads one message; *payload is malloc'd (NUL-terminated for text use). The length is
 * checked against max before allocating. */
static int msg_recv(int fd, int *type, char **payload, size_t *len, size_t max, double deadline)
{
    uint32_t h[3];
    int rc = read_all(fd, h, sizeof h, deadline);
    if (rc)
        return rc;
    int t;
    size_t n;
    if ((rc = boot_header_parse(h, max, &t, &n)) != 0)
        return rc;
    char *p = malloc(n + 1);
    if (!p)
        return -ENOMEM;
    if (n && (rc = read_all(fd, p, n, deadline)) != 0) {
        free(p);
        return rc;
    }
    p[n] = '\0';
    *type = t;
    *payload = p;
    *len = n;
    return 0;
}

/* A tiny cursor for the fixed-layout payloads. */
typedef struct {
    char *p;
    size_t len, off;
    int bad;
} cur_t;

static void put(cur_t *c, const void *x, size_t n)
{
    if (c->p && c->off + n <= c->len)
        memcpy(c->p + c->off, x, n);
    c->off += n;
}
static void put32(cur_t *c, uint32_t v) { v = htobe32(v); put(c, &v, 4); }
static void put64(cur_t *c, uint64_t v) { v = htobe64(v); put(c, &v, 8); }
static void putf(cur_t *c, double d) { uint64_t v; memcpy(&v, &d, 8); put64(c, v); }

static const void *get(cur_t *c, size_t n)
{
    if (c->bad || c->off + n > c->len || c->off + n < c->off) {
        c->bad = 1;
        return NULL;
    }
    c->off += n;
    return c->p + c->off - n;
}
static uint32_t get32(cur_t *c) { const void *p = get(c, 4); uint32_t v = 0; if (p) memcpy(&v, p, 4); return be32toh(v); }
static uint64_t get64(cur_t *c) { const void *p = get(c, 8); uint64_t v = 0; if (p) memcpy(&v, p, 8); return be64toh(v); }
static double getf(cur_t *c) { uint64_t v = get64(c); double d; memcpy(&d, &v, 8); return d; }

static int text_send(boot_t *b, int fd, int type, int origin, const char *text)
{
    char buf[TEXT_MAX + 4];
    cur_t c = {buf, sizeof buf, 0, 0};
    size_t n = strnlen(text, TEXT_MAX - 1);
    put32(&c, (uint32_t)origin);
    put(&c, text, n);
    return msg_send(b, fd, type, buf, c.off);
}

void boot_text_parse(const void *pl, size_t len, int *origin, char *out, size_t outlen)
{
    const char *payload = pl;
    cur_t c = {(char *)payload, len, 0, 0};
    *origin = (int)get32(&c);
    size_t n = c.bad ? 0 : len - 4;
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, payload + (c.bad ? 0 : 4), n);
    out[n] = '\0';
    for (size_t i = 0; i < n; i++) /* a peer's text reaches a terminal: keep it printable */
        if ((unsigned char)out[i] < 0x20 || (unsigned char)out[i] == 0x7f)
            out[i] = '?';
}

static void sock_tune(int fd)
{
    int one = 1, idle = 2, intvl = 1, cnt = 5;
    unsigned utimeout = 7000;
    /* A host that vanishes without a FIN is noticed within ~7 s by keepalive. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &utimeout, sizeof utimeout);
}

/* ---- the handshake ---- */

static int hello_build(const boot_params_t *p, const void *blob, size_t bloblen, char **out, size_t *outlen)
{
    size_t tl = strlen(p->token);
    cur_t c = {NULL, 0, 0, 0};
    for (int pass = 0; pass < 2; pass++) {
        put32(&c, BOOT_VERSION);
        put32(&c, (uint32_t)p->rank);
        put32(&c, (uint32_t)p->size);
        put64(&c, p->config_hash);
        put32(&c, (uint32_t)tl);
        put(&c, p->token, tl);
        put32(&c, (uint32_t)bloblen);
        put(&c, blob, bloblen);
        if (pass == 0) {
            c.len = c.off;
            c.off = 0;
            if (!(c.p = malloc(c.len)))
                return -ENOMEM;
        }
    }
    *out = c.p;
    *outlen = c.len;
    return 0;
}

/* Checks a HELLO against rank 0's own parameters; fills why and the peer's rank. The
 * token is checked before anything else, so an outsider learns nothing of the job. */
int boot_hello_check(const boot_params_t *p, const void *pl, size_t len, const int *seen, int *rank, void **blob,
                     size_t *bloblen, char *why, size_t whylen)
{
    cur_t c = {(char *)pl, len, 0, 0};
    uint32_t ver = get32(&c), r = get32(&c), s = get32(&c);
    uint64_t hash = get64(&c);
    uint32_t tl = get32(&c);
    const char *tok = tl <= BOOT_TOKEN_MAX ? get(&c, tl) : NULL;
    uint32_t bl = get32(&c);
    const void *bp = bl <= BOOT_BLOB_MAX ? get(&c, bl) : NULL;
    if (c.bad || !tok || !bp || c.off != len) {
        snprintf(why, whylen, "a malformed hello (not a pipenem %u stage?)", BOOT_VERSION);
        return -EPROTO;
    }
    if (ver != BOOT_VERSION) {
        snprintf(why, whylen, "a peer speaks bootstrap version %u, this is %u", ver, BOOT_VERSION);
        return -EPROTO;
    }
    char tbuf[BOOT_TOKEN_MAX + 1];
    memcpy(tbuf, tok, tl);
    tbuf[tl] = '\0';
    if (!boot_token_equal(tbuf, p->token)) {
        snprintf(why, whylen, "a peer claiming rank %u presented a different job token", r);
        return -EACCES;
    }
    if ((int)s != p->size || s > BOOT_RANKS_MAX) {
        snprintf(why, whylen, "rank %u says the world size is %u, rank 0 says %d", r, s, p->size);
        return -EINVAL;
    }
    if (r == 0 || r >= s) {
        snprintf(why, whylen, "a peer claims rank %u of %d", r, p->size);
        return -EINVAL;
    }
    if (seen[r]) {
        snprintf(why, whylen, "two processes claim rank %u", r);
        return -EINVAL;
    }
    if (hash != p->config_hash) {
        snprintf(why, whylen, "rank %u has a different run configuration (hash %016llx, rank 0 has %016llx)", r,
                 (unsigned long long)hash, (unsigned long long)p->config_hash);
        return -EINVAL;
    }
    if (!(*blob = malloc(bl ? bl : 1)))
        return -ENOMEM;
    memcpy(*blob, bp, bl);
    *bloblen = bl;
    *rank = (int)r;
    return 0;
}

int boot_welcome_parse(const void *pl, size_t len, uint64_t *hash, char *token)
{
    cur_t c = {(char *)pl, len, 0, 0};
    uint64_t h = get64(&c);
    uint32_t tl = get32(&c);
    const char *tok = tl <= BOOT_TOKEN_MAX ? get(&c, tl) : NULL;
    if (c.bad || !tok || c.off != len)
        return -EPROTO;
    memcpy(token, tok, tl);
    token[tl] = '\0';
    *hash = h;
    return 0;
}

int boot_table_parse(const void *pl, size_t len, int size, double *clock, void **blobs, size_t *bloblens)
{
    cur_t c = {(char *)pl, len, 0, 0};
    double t[3];
    for (int i = 0; i < 3; i++)
        t[i] = getf(&c);
    int q = 0, rc = 0;
    for (; q < size && !c.bad; q++) {
        uint32_t bl = get32(&c);
        const void *bp = bl <= BOOT_BLOB_MAX ? get(&c, bl) : NULL;
        if (!bp) {
            c.bad = 1;
            break;
        }
        if (!(blobs[q] = malloc(bl ? bl : 1))) {
            rc = -ENOMEM;
            break;
        }
        memcpy(blobs[q], bp, bl);
        bloblens[q] = bl;
    }
    if (!rc && (c.bad || c.off != len))
        rc = -EPROTO;
    if (rc) {
        while (q-- > 0) {
            free(blobs[q]);
            blobs[q] = NULL;
            bloblens[q] = 0;
        }
        return rc;
    }
    memcpy(clock, t, sizeof t);
    return 0;
}

static int listen_open(const boot_params_t *p, char *err, size_t errlen)
{
    if (p->listen_fd >= 0)
        return p->listen_fd;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV},
                    *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", p->port);
    int rc = getaddrinfo(p->host, port, &hints, &ai);
    if (rc) {
        snprintf(err, errlen, "rank 0 cannot resolve '%s': %s", p->host, gai_strerror(rc));
        return -EINVAL;
    }
    int fd = -1, e = 0;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 128) == 0)
            break;
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        snprintf(err, errlen, "rank 0 cannot listen on %s:%d: %s", p->host, p->port, strerror(e));
        return -EADDRINUSE;
    }
    return fd;
}

static int connect_retry(const boot_params_t *p, double deadline, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV},
                    *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", p->port);
    int rc = getaddrinfo(p->host, port, &hints, &ai);
    if (rc) {
        snprintf(err, errlen, "rank %d cannot resolve '%s': %s", p->rank, p->host, gai_strerror(rc));
        return -EINVAL;
    }
    int e = 0;
    for (;;) {
        for (struct addrinfo *a = ai; a; a = a->ai_next) {
            int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, 0);
            if (fd < 0)
                continue;
            if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
                freeaddrinfo(ai);
                return fd;
            }
            e = errno;
            close(fd);
        }
        if (now() >= deadline)
            break;
        /* rank 0 may not be listening yet */
        sleep_s(0.05);
    }
    freeaddrinfo(ai);
    snprintf(err, errlen, "rank %d could not reach rank 0 at %s:%d: %s", p->rank, p->host, p->port, strerror(e));
    return -ETIMEDOUT;
}

static int alloc_state(boot_t *b, int size)
{
    b->rank = -1;
    b->wake_fd = -1;
    int nfd = size;
    if (!(b->fds = malloc(sizeof *b->fds * (size_t)nfd)) || !(b->blobs = calloc((size_t)size, sizeof *b->blobs)) ||
        !(b->bloblens = calloc((size_t)size, sizeof *b->bloblens)) ||
        !(b->gathered = calloc((size_t)size, sizeof *b->gathered)) ||
        !(b->gatherlens = calloc((size_t)size, sizeof *b->gatherlens)))
        return -ENOMEM;
    for (int i = 0; i < nfd; i++)
        b->fds[i] = -1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&b->lock, NULL);
    pthread_mutex_init(&b->wlock, NULL);
    pthread_cond_init(&b->cond, &ca);
    pthread_condattr_destroy(&ca);
    b->sync_ready = 1;
    return 0;
}

static void refuse_all(boot_t *b, const char *why)
{
    for (int r = 1; r < b->size; r++)
        if (b->fds[r] >= 0)
            (void)text_send(b, b->fds[r], MSG_REFUSE, 0, why);
}

static int root_open(boot_t *b, const boot_params_t *p, char *err, size_t errlen)
{
    int lfd = listen_open(p, err, errlen);
    if (lfd < 0)
        return lfd;
    int *seen = calloc((size_t)p->size, sizeof *seen);
    int rc = seen ? 0 : -ENOMEM, joined = 0, arrived = 0;
    char first_why[768] = "", last_refused[256] = "";
    double deadline = now() + p->timeout;
    while (!rc && arrived < p->size - 1) {
        double left = deadline - now();
        if (left <= 0)
            break;
        struct pollfd pf = {.fd = lfd, .events = POLLIN};
        if (poll(&pf, 1, (int)(left * 1000) + 1) <= 0)
            continue;
        struct sockaddr_storage sa;
        socklen_t salen = sizeof sa;
        int fd = accept4(lfd, (struct sockaddr *)&sa, &salen, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        sock_tune(fd);
        int type = 0, r = -1;
        char *pl = NULL, why[512] = "";
        size_t len = 0;
        void *blob = NULL;
        size_t bloblen = 0;
        double hd = now() + 5.0 < deadline ? now() + 5.0 : deadline;
        int hrc = msg_recv(fd, &type, &pl, &len, 16 + BOOT_TOKEN_MAX + BOOT_BLOB_MAX + 16, hd);
        if (hrc)
            snprintf(why, sizeof why, "an unreadable hello (%s)",
                     hrc == -ECONNRESET ? "connection closed" : hrc == -EPROTO ? "bad magic" : strerror(-hrc));
        else if (type != MSG_HELLO)
            snprintf(why, sizeof why, "message type %d instead of a hello", type);
        else
            hrc = boot_hello_check(p, pl, len, seen, &r, &blob, &bloblen, why, sizeof why);
        free(pl);
        if (hrc && hrc != -EINVAL && hrc != -ENOMEM) {
            /* Not (yet) a member of this job: a stray, a scanner, or a rank with another
             * token. Refuse this connection only, so an outsider cannot stop the job. */
            char host[NI_MAXHOST] = "?";
            getnameinfo((struct sockaddr *)&sa, salen, host, sizeof host, NULL, 0, NI_NUMERICHOST);
            fprintf(stderr, "pipenem: rank 0 refused a connection from %s: %s\n", host, why);
            snprintf(last_refused, sizeof last_refused, "%s", why);
            if (hrc != -ETIMEDOUT && hrc != -ECONNRESET)
                (void)text_send(b, fd, MSG_REFUSE, 0, why);
            close(fd);
            continue;
        }
        arrived++;
        if (!hrc) {
            char wbuf[8 + 4 + BOOT_TOKEN_MAX];
            cur_t c = {wbuf, sizeof wbuf, 0, 0};
            size_t tl = strlen(p->token);
            put64(&c, p->config_hash);
            put32(&c, (uint32_t)tl);
            put(&c, p->token, tl);
            seen[r] = 1;
            b->fds[r] = fd;
            b->blobs[r] = blob;
            b->bloblens[r] = bloblen;
            joined++;
            if (msg_send(b, fd, MSG_WELCOME, wbuf, c.off))
                snprintf(why, sizeof why, "rank %d hung up during the handshake", r);
        }
        if (*why) {
            if (!*first_why)
                snprintf(first_why, sizeof first_why, "%s", why);
            if (r < 0 || b->fds[r] != fd) {
                (void)text_send(b, fd, MSG_REFUSE, 0, why);
                close(fd);
            }
        }
    }
    if (!rc && !*first_why && joined < p->size - 1) {
        int n = snprintf(first_why, sizeof first_why, "rendezvous timed out after %.0f s; missing rank(s)", p->timeout);
        for (int r = 1; r < p->size && n < (int)sizeof first_why - 8; r++)
            if (!seen[r])
                n += snprintf(first_why + n, sizeof first_why - (size_t)n, " %d", r);
        if (*last_refused && n < (int)sizeof first_why - 8)
            snprintf(first_why + n, sizeof first_why - (size_t)n, "; refused a connection: %s", last_refused);
    }
    if (!rc && *first_why) {
        refuse_all(b, first_why);
        snprintf(err, errlen, "rank 0 refused the job: %s", first_why);
        rc = -ECONNREFUSED;
    }
    free(seen);
    if (p->listen_fd < 0)
        close(lfd);
    if (rc)
        return rc;
    /* Clocks: rank 0 pings each rank and keeps the sample with the shortest round trip. */
    double *offsets = calloc((size_t)p->size, sizeof *offsets), *rtts = calloc((size_t)p->size, sizeof *rtts);
    if (!offsets || !rtts) {
        free(offsets);
        free(rtts);
        return -ENOMEM;
    }
    for (int r = 1; r < p->size && !rc; r++) {
        double best = 1e9;
        for (int k = 0; k < CLOCK_ROUNDS && !rc; k++) {
            double t0 = now();
            int type;
            char *pl = NULL;
            size_t len;
            if ((rc = msg_send(b, b->fds[r], MSG_CLOCK_REQ, NULL, 0)) != 0 ||
                (rc = msg_recv(b->fds[r], &type, &pl, &len, TEXT_MAX + 4, now() + 10)) != 0) {
                snprintf(err, errlen, "rank 0 lost rank %d while aligning clocks: %s", r, strerror(-rc));
                break;
            }
            double t1 = now();
            if (type == MSG_REFUSE || type == MSG_ABORT) {
                int origin;
                char why[TEXT_MAX];
                boot_text_parse(pl, len, &origin, why, sizeof why);
                snprintf(err, errlen, "rank %d refused the job: %s", r, why);
                rc = -ECONNREFUSED;
            } else if (type != MSG_CLOCK_REP || len != 8) {
                snprintf(err, errlen, "rank %d answered a clock ping with message type %d", r, type);
                rc = -EPROTO;
            } else {
                cur_t c = {pl, len, 0, 0};
                double tr = getf(&c);
                if (t1 - t0 < best) {
                    best = t1 - t0;
                    rtts[r] = best;
                    offsets[r] = tr - (t0 + t1) / 2;
                }
            }
            free(pl);
        }
    }
    if (rc) {
        refuse_all(b, err);
        free(offsets);
        free(rtts);
        return rc;
    }
    b->start = now();
    size_t total = 24;
    for (int r = 0; r < p->size; r++)
        total += 4 + b->bloblens[r];
    char *table = malloc(total);
    for (int r = 1; r < p->size && table && !rc; r++) {
        cur_t c = {table, total, 0, 0};
        putf(&c, offsets[r]);
        putf(&c, b->start + offsets[r]);
        putf(&c, rtts[r]);
        for (int q = 0; q < p->size; q++) {
            put32(&c, (uint32_t)b->bloblens[q]);
            put(&c, b->blobs[q], b->bloblens[q]);
        }
        if ((rc = msg_send(b, b->fds[r], MSG_TABLE, table, c.off)) != 0)
            snprintf(err, errlen, "rank 0 lost rank %d while sending the address table", r);
    }
    if (!table) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
    }
    free(table);
    free(offsets);
    free(rtts);
    return rc;
}

static int peer_open(boot_t *b, const boot_params_t *p, const char *hello, size_t hellolen, char *err,
                     size_t errlen)
{
    double deadline = now() + p->timeout;
    int fd = connect_retry(p, deadline, err, errlen);
    if (fd < 0)
        return fd;
    b->fds[0] = fd;
    sock_tune(fd);
    int rc = msg_send(b, fd, MSG_HELLO, hello, hellolen);
    int welcomed = 0;
    while (!rc) {
        int type;
        char *pl = NULL;
        size_t len;
        size_t cap = 24 + (size_t)p->size * (4 + BOOT_BLOB_MAX);
        if ((rc = msg_recv(fd, &type, &pl, &len, cap, deadline)) != 0) {
            snprintf(err, errlen, "rank %d lost rank 0 during the rendezvous: %s", p->rank,
                     rc == -ECONNRESET ? "connection closed" : strerror(-rc));
            break;
        }
        if (type == MSG_REFUSE || type == MSG_ABORT) {
            int origin;
            char why[TEXT_MAX];
            boot_text_parse(pl, len, &origin, why, sizeof why);
            snprintf(err, errlen, "rank 0 refused rank %d: %s", p->rank, why);
            rc = -ECONNREFUSED;
        } else if (type == MSG_WELCOME) {
            uint64_t hash = 0;
            char tbuf[BOOT_TOKEN_MAX + 1];
            char why[256] = "";
            if (boot_welcome_parse(pl, len, &hash, tbuf) != 0)
                snprintf(why, sizeof why, "rank 0 sent a malformed welcome");
            else if (!boot_token_equal(tbuf, p->token))
                snprintf(why, sizeof why, "rank 0 has a different job token");
            else if (hash != p->config_hash)
                snprintf(why, sizeof why, "rank 0 has a different run configuration (hash %016llx, rank %d has %016llx)",
                         (unsigned long long)hash, p->rank, (unsigned long long)p->config_hash);
            if (*why) {
                (void)text_send(b, fd, MSG_REFUSE, p->rank, why);
                snprintf(err, errlen, "rank %d refused the job: %s", p->rank, why);
                rc = -ECONNREFUSED;
            }
            welcomed = 1;
        } else if (type == MSG_CLOCK_REQ && welcomed) {
            char buf[8];
            cur_t o = {buf, 8, 0, 0};
            putf(&o, now());
            rc = msg_send(b, fd, MSG_CLOCK_REP, buf, 8);
        } else if (type == MSG_TABLE && welcomed) {
            double clock[3];
            /* the table carries this rank's own address too: replace our copy */
            free(b->blobs[p->rank]);
            b->blobs[p->rank] = NULL;
            if ((rc = boot_table_parse(pl, len, p->size, clock, b->blobs, b->bloblens)) != 0) {
                snprintf(err, errlen, "rank 0 sent a malformed address table");
            } else {
                b->offset = clock[0];
                b->start = clock[1];
                b->rtt = clock[2];
            }
            free(pl);
            break;
        } else {
            snprintf(err, errlen, "rank 0 sent an unexpected message (type %d)", type);
            rc = -EPROTO;
        }
        free(pl);
    }
    return rc;
}

int boot_open(const boot_params_t *p, const void *blob, size_t bloblen, boot_t **out, char *err, size_t errlen)
{
    if (p->size < 1 || p->size > BOOT_RANKS_MAX || p->rank < 0 || p->rank >= p->size) {
        snprintf(err, errlen, "rank %d is not within world size %d (at most %d)", p->rank, p->size, BOOT_RANKS_MAX);
        return -EINVAL;
    }
    if (!p->token || strlen(p->token) > BOOT_TOKEN_MAX) {
        snprintf(err, errlen, "the job token is missing or longer than %d bytes", BOOT_TOKEN_MAX);
        return -EINVAL;
    }
    if (bloblen > BOOT_BLOB_MAX) {
        snprintf(err, errlen, "transport address of %zu bytes exceeds %d", bloblen, BOOT_BLOB_MAX);
        return -EINVAL;
    }
    boot_t *b = calloc(1, sizeof *b);
    int rc = b ? alloc_state(b, p->size) : -ENOMEM;
    char *hello = NULL;
    size_t hellolen = 0;
    if (rc) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    b->rank = p->rank;
    b->size = p->size;
    if (!(b->blobs[p->rank] = malloc(bloblen ? bloblen : 1))) {
        rc = -ENOMEM;
        goto fail;
    }
    memcpy(b->blobs[p->rank], blob, bloblen);
    b->bloblens[p->rank] = bloblen;
    if (p->size == 1) {
        b->start = now();
    } else if (p->rank == 0) {
        if ((rc = root_open(b, p, err, errlen)) != 0)
            goto fail;
    } else {
        if ((rc = hello_build(p, blob, bloblen, &hello, &hellolen)) != 0 ||
            (rc = peer_open(b, p, hello, hellolen, err, errlen)) != 0)
            goto fail;
    }
    free(hello);
    *out = b;
    return 0;
fail:
    free(hello);
    boot_close(b);
    return rc;
}

int boot_rank(const boot_t *b) { return b->rank; }
int boot_size(const boot_t *b) { return b->size; }

const void *boot_blob(const boot_t *b, int rank, size_t *len)
{
    if (rank < 0 || rank >= b->size)
        return NULL;
    *len = b->bloblens[rank];
    return b->blobs[rank];
}

/* b->start is the job's start on this rank's own clock, so the offset cancels here. */
double boot_time(const boot_t *b, double local) { return local - b->start; }

double boot_clock_offset(const boot_t *b, double *rtt)
{
    if (rtt)
        *rtt = b->rtt;
    return b->offset;
}

/* ---- the control plane ---- */

static void note_fail(boot_t *b, int rank, const char *why)
{
    int first = 0;
    pthread_mutex_lock(&b->lock);
    if (!b->failed && !b->released) {
        b->failed = 1;
        b->fail_rank = rank;
        snprintf(b->fail_why, sizeof b->fail_why, "%s", why);
        first = 1;
    }
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
    if (first && b->on_fail)
        b->on_fail(b->on_fail_arg, rank, why);
}

static void root_release_if_complete(boot_t *b)
{
    /* lock held */
    if (b->arrived == b->size && !b->released && !b->failed) {
        for (int r = 1; r < b->size; r++)
            if (b->fds[r] >= 0)
                (void)msg_send(b, b->fds[r], MSG_RELEASE, NULL, 0);
        b->released = 1;
        pthread_cond_broadcast(&b->cond);
    }
}

static void root_forward_abort(boot_t *b, int origin, const char *why)
{
    for (int r = 1; r < b->size; r++)
        if (r != origin && b->fds[r] >= 0)
            (void)text_send(b, b->fds[r], MSG_ABORT, origin, why);
}

static void *watch_main(void *arg)
{
    boot_t *b = arg;
    int n = b->rank == 0 ? b->size : 1;
    struct pollfd *pf = calloc((size_t)n + 1, sizeof *pf);
    int *who = calloc((size_t)n + 1, sizeof *who);
    if (!pf || !who) {
        free(pf);
        free(who);
        note_fail(b, b->rank, "out of memory in the control-plane watcher");
        return NULL;
    }
    for (;;) {
        int k = 0;
        pf[k++] = (struct pollfd){.fd = b->wake_fd, .events = POLLIN};
        for (int i = 0; i < n; i++) {
            int r = b->rank == 0 ? i : 0;
            if ((b->rank == 0 && r == 0) || b->fds[r] < 0)
                continue;
            who[k] = r;
            pf[k++] = (struct pollfd){.fd = b->fds[r], .events = POLLIN};
        }
        if (poll(pf, (nfds_t)k, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pf[0].revents)
            break;
        for (int i = 1; i < k; i++) {
            if (!pf[i].revents)
                continue;
            int r = who[i], type = 0;
            char *pl = NULL;
            size_t len = 0;
            int rc = msg_recv(b->fds[r], &type, &pl, &len, BOOT_PAYLOAD_MAX + TEXT_MAX, now() + 60);
            if (rc) {
                pthread_mutex_lock(&b->lock);
                int expected = b->released;
                pthread_mutex_unlock(&b->lock);
                pthread_mutex_lock(&b->wlock);
                close(b->fds[r]);
                b->fds[r] = -1;
                pthread_mutex_unlock(&b->wlock);
                if (!expected) {
                    char why[256];
                    if (b->rank == 0) {
                        snprintf(why, sizeof why, "rank %d disconnected (%s: killed or crashed?)", r,
                                 rc == -ECONNRESET ? "connection closed" : strerror(-rc));
                        root_forward_abort(b, r, why);
                    } else {
                        snprintf(why, sizeof why, "lost the connection to rank 0 (%s: killed or crashed?)",
                                 rc == -ECONNRESET ? "connection closed" : strerror(-rc));
                    }
                    note_fail(b, r, why);
                }
                continue;
            }
            if (type == MSG_ABORT || type == MSG_REFUSE) {
                int origin;
                char why[TEXT_MAX];
                boot_text_parse(pl, len, &origin, why, sizeof why);
                if (origin < 0 || origin >= b->size)
                    origin = r;
                if (b->rank == 0)
                    root_forward_abort(b, origin, why);
                note_fail(b, origin, why);
            } else if (type == MSG_DONE && b->rank == 0) {
                pthread_mutex_lock(&b->lock);
                if (!b->gathered[r]) {
                    b->gathered[r] = pl;
                    b->gatherlens[r] = len;
                    pl = NULL;
                    b->arrived++;
                }
                root_release_if_complete(b);
                pthread_mutex_unlock(&b->lock);
            } else if (type == MSG_RELEASE && b->rank != 0) {
                pthread_mutex_lock(&b->lock);
                b->released = 1;
                pthread_cond_broadcast(&b->cond);
                pthread_mutex_unlock(&b->lock);
            }
            free(pl);
        }
    }
    free(pf);
    free(who);
    return NULL;
}

int boot_watch(boot_t *b, void (*on_fail)(void *arg, int rank, const char *why), void *arg)
{
    if (b->watching)
        return -EALREADY;
    b->on_fail = on_fail;
    b->on_fail_arg = arg;
    if (b->size == 1)
        return 0;
    if ((b->wake_fd = eventfd(0, EFD_CLOEXEC)) < 0)
        return -errno;
    int rc = pthread_create(&b->watcher, NULL, watch_main, b);
    if (rc)
        return -rc;
    b->watching = 1;
    return 0;
}

void boot_abort(boot_t *b, const char *why)
{
    if (!b || b->size == 1)
        return;
    if (b->rank == 0)
        root_forward_abort(b, 0, why);
    else if (b->fds[0] >= 0)
        (void)text_send(b, b->fds[0], MSG_ABORT, b->rank, why);
}

int boot_wait_failure(boot_t *b, double wait, char *why, size_t len)
{
    if (!b || b->size == 1)
        return -1;
    double end = now() + wait;
    struct timespec ts = {(time_t)end, (long)((end - (double)(time_t)end) * 1e9)};
    pthread_mutex_lock(&b->lock);
    while (!b->failed && b->watching && now() < end)
        if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT)
            break;
    int rank = b->failed ? b->fail_rank : -1;
    if (rank >= 0)
        snprintf(why, len, "%s", b->fail_why);
    pthread_mutex_unlock(&b->lock);
    return rank;
}

int boot_finish(boot_t *b, const void *payload, size_t len, double timeout, char *err, size_t errlen)
{
    if (len > BOOT_PAYLOAD_MAX) {
        snprintf(err, errlen, "final report of %zu bytes exceeds %d", len, BOOT_PAYLOAD_MAX);
        return -EMSGSIZE;
    }
    if (!b->watching && b->size > 1) {
        int rc = boot_watch(b, NULL, NULL);
        if (rc) {
            snprintf(err, errlen, "control-plane watcher: %s", strerror(-rc));
            return rc;
        }
    }
    int rc = 0;
    pthread_mutex_lock(&b->lock);
    if (b->rank == 0) {
        if (!b->gathered[0]) {
            b->gathered[0] = malloc(len ? len : 1);
            if (!b->gathered[0])
                rc = -ENOMEM;
            else {
                if (len)
                    memcpy(b->gathered[0], payload, len);
                b->gatherlens[0] = len;
                b->arrived++;
            }
        }
        if (!rc)
            root_release_if_complete(b);
    } else {
        pthread_mutex_unlock(&b->lock);
        rc = msg_send(b, b->fds[0], MSG_DONE, payload, len);
        pthread_mutex_lock(&b->lock);
        if (rc && !b->failed)
            snprintf(err, errlen, "lost rank 0 while finishing");
    }
    double deadline = timeout > 0 ? now() + timeout : 0;
    while (!rc && !b->released && !b->failed) {
        if (deadline > 0) {
            struct timespec ts = {(time_t)deadline, (long)((deadline - (double)(time_t)deadline) * 1e9)};
            if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT && !b->released && !b->failed) {
                snprintf(err, errlen, "the final barrier timed out after %.0f s", timeout);
                rc = -ETIMEDOUT;
            }
        } else {
            pthread_cond_wait(&b->cond, &b->lock);
        }
    }
    if (!rc && !b->released && b->failed) {
        snprintf(err, errlen, "%s", b->fail_why);
        rc = -ECONNRESET;
    }
    pthread_mutex_unlock(&b->lock);
    return rc;
}

const void *boot_gathered(const boot_t *b, int rank, size_t *len)
{
    if (b->rank != 0 || rank < 0 || rank >= b->size || !b->gathered[rank])
        return NULL;
    *len = b->gatherlens[rank];
    return b->gathered[rank];
}

void boot_close(boot_t *b)
{
    if (!b)
        return;
    if (b->watching) {
        uint64_t one = 1;
        if (write(b->wake_fd, &one, sizeof one) < 0) {
            /* cannot happen for a fresh eventfd; the join below would then hang */
        }
        pthread_join(b->watcher, NULL);
    }
    if (b->wake_fd >= 0)
        close(b->wake_fd);
    if (b->fds)
        for (int i = 0; i < b->size; i++)
            if (b->fds[i] >= 0)
                close(b->fds[i]);
    for (int i = 0; b->blobs && i < b->size; i++)
        free(b->blobs[i]);
    for (int i = 0; b->gathered && i < b->size; i++)
        free(b->gathered[i]);
    if (b->sync_ready) {
        pthread_cond_destroy(&b->cond);
        pthread_mutex_destroy(&b->lock);
        pthread_mutex_destroy(&b->wlock);
    }
    free(b->fds);
    free(b->blobs);
    free(b->bloblens);
    free(b->gathered);
    free(b->gatherlens);
    free(b);
}
