/* The rendezvous: rank 0 listens on the --dist-url address, every other rank connects,
 * presents (rank, size, config hash, token, transport address) and gets the address table
 * and its clock offset back. Every length read from the wire is capped before anything is
 * allocated. */
#include "pipeline/handshake.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/limits.h"
#include "pipeline/boot_int.h"
#include "pipeline/wire.h"

#define HANDSHAKE_VERSION 1u

enum { CLOCK_ROUNDS = 16 };

int handshake_token_equal(const char *a, const char *b)
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

static int hello_build(const boot_params_t *p, const void *blob, size_t bloblen, char **out, size_t *outlen)
{
    size_t tl = strlen(p->token);
    wire_cur_t c = {NULL, 0, 0, 0};
    for (int pass = 0; pass < 2; pass++) {
        wire_put32(&c, HANDSHAKE_VERSION);
        wire_put32(&c, (uint32_t)p->rank);
        wire_put32(&c, (uint32_t)p->size);
        wire_put64(&c, p->config_hash);
        wire_put32(&c, (uint32_t)tl);
        wire_put(&c, p->token, tl);
        wire_put32(&c, (uint32_t)bloblen);
        wire_put(&c, blob, bloblen);
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
int handshake_hello_check(const boot_params_t *p, const void *pl, size_t len, const int *seen, int *rank, void **blob,
                     size_t *bloblen, char *why, size_t whylen)
{
    wire_cur_t c = {(char *)pl, len, 0, 0};
    uint32_t ver = wire_get32(&c), r = wire_get32(&c), s = wire_get32(&c);
    uint64_t hash = wire_get64(&c);
    uint32_t tl = wire_get32(&c);
    const char *tok = tl <= BOOT_TOKEN_MAX ? wire_get(&c, tl) : NULL;
    uint32_t bl = wire_get32(&c);
    const void *bp = bl <= BOOT_BLOB_MAX ? wire_get(&c, bl) : NULL;
    if (c.bad || !tok || !bp || c.off != len) {
        snprintf(why, whylen, "a malformed hello (not a pipenem %u stage?)", HANDSHAKE_VERSION);
        return -EPROTO;
    }
    if (ver != HANDSHAKE_VERSION) {
        snprintf(why, whylen, "a peer speaks bootstrap version %u, this is %u", ver, HANDSHAKE_VERSION);
        return -EPROTO;
    }
    char tbuf[BOOT_TOKEN_MAX + 1];
    memcpy(tbuf, tok, tl);
    tbuf[tl] = '\0';
    if (!handshake_token_equal(tbuf, p->token)) {
        snprintf(why, whylen, "a peer claiming rank %u presented a different job token", r);
        return -EACCES;
    }
    if ((int)s != p->size || s > PN_MAX_WORLD) {
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

int handshake_welcome_parse(const void *pl, size_t len, uint64_t *hash, char *token)
{
    wire_cur_t c = {(char *)pl, len, 0, 0};
    uint64_t h = wire_get64(&c);
    uint32_t tl = wire_get32(&c);
    const char *tok = tl <= BOOT_TOKEN_MAX ? wire_get(&c, tl) : NULL;
    if (c.bad || !tok || c.off != len)
        return -EPROTO;
    memcpy(token, tok, tl);
    token[tl] = '\0';
    *hash = h;
    return 0;
}

int handshake_table_parse(const void *pl, size_t len, int size, double *clock, void **blobs, size_t *bloblens)
{
    wire_cur_t c = {(char *)pl, len, 0, 0};
    double t[3];
    for (int i = 0; i < 3; i++)
        t[i] = wire_getf(&c);
    int q = 0, rc = 0;
    for (; q < size && !c.bad; q++) {
        uint32_t bl = wire_get32(&c);
        const void *bp = bl <= BOOT_BLOB_MAX ? wire_get(&c, bl) : NULL;
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
        if (pn_now() >= deadline)
            break;
        /* rank 0 may not be listening yet */
        pn_sleep(0.05);
    }
    freeaddrinfo(ai);
    snprintf(err, errlen, "rank %d could not reach rank 0 at %s:%d: %s", p->rank, p->host, p->port, strerror(e));
    return -ETIMEDOUT;
}

static void refuse_all(boot_t *b, const char *why)
{
    for (int r = 1; r < b->size; r++)
        if (b->fds[r] >= 0)
            (void)boot_send_text(b, b->fds[r], WIRE_REFUSE, 0, why);
}

/* One connection to rank 0: reads and checks its hello. Returns 0 with a member's rank
 * and address, -EINVAL/-ENOMEM for a member that must be refused (why set), or another
 * code for a stranger (why set). */
static int root_hello_read(const boot_params_t *p, int fd, const int *seen, double deadline, int *r, void **blob,
                           size_t *bloblen, char *why, size_t whylen)
{
    int type = 0, hrc;
    char *pl = NULL;
    size_t len = 0;
    double hd = pn_now() + 5.0 < deadline ? pn_now() + 5.0 : deadline;
    hrc = wire_msg_recv(fd, &type, &pl, &len, 16 + BOOT_TOKEN_MAX + BOOT_BLOB_MAX + 16, hd);
    if (hrc)
        snprintf(why, whylen, "an unreadable hello (%s)",
                 hrc == -ECONNRESET ? "connection closed" : hrc == -EPROTO ? "bad magic" : strerror(-hrc));
    else if (type != WIRE_HELLO)
        snprintf(why, whylen, "message type %d instead of a hello", type);
    else
        hrc = handshake_hello_check(p, pl, len, seen, r, blob, bloblen, why, whylen);
    free(pl);
    return hrc;
}

/* Not (yet) a member of this job: a stray, a scanner, or a rank with another token.
 * Refuse this connection only, so an outsider cannot stop the job. */
static void root_stranger(boot_t *b, int fd, int hrc, const struct sockaddr_storage *sa, socklen_t salen,
                          const char *why, char *last_refused, size_t lrlen)
{
    char host[NI_MAXHOST] = "?";
    getnameinfo((const struct sockaddr *)sa, salen, host, sizeof host, NULL, 0, NI_NUMERICHOST);
    fprintf(stderr, "pipenem: rank 0 refused a connection from %s: %s\n", host, why);
    snprintf(last_refused, lrlen, "%s", why);
    if (hrc != -ETIMEDOUT && hrc != -ECONNRESET)
        (void)boot_send_text(b, fd, WIRE_REFUSE, 0, why);
    close(fd);
}

/* A member joined: keep its socket and address, send the welcome. */
static void root_welcome(boot_t *b, const boot_params_t *p, int fd, int r, void *blob, size_t bloblen, char *why,
                         size_t whylen)
{
    char wbuf[8 + 4 + BOOT_TOKEN_MAX];
    wire_cur_t c = {wbuf, sizeof wbuf, 0, 0};
    size_t tl = strlen(p->token);
    wire_put64(&c, p->config_hash);
    wire_put32(&c, (uint32_t)tl);
    wire_put(&c, p->token, tl);
    b->fds[r] = fd;
    b->blobs[r] = blob;
    b->bloblens[r] = bloblen;
    if (boot_send(b, fd, WIRE_WELCOME, wbuf, c.off))
        snprintf(why, whylen, "rank %d hung up during the handshake", r);
}

/* The reason a rendezvous that ended without a refusal failed: the missing ranks. */
static void root_missing(const boot_params_t *p, const int *seen, const char *last_refused, char *why,
                         size_t whylen)
{
    int n = snprintf(why, whylen, "rendezvous timed out after %.0f s; missing rank(s)", p->timeout);
    for (int r = 1; r < p->size && n < (int)whylen - 8; r++)
        if (!seen[r])
            n += snprintf(why + n, whylen - (size_t)n, " %d", r);
    if (*last_refused && n < (int)whylen - 8)
        snprintf(why + n, whylen - (size_t)n, "; refused a connection: %s", last_refused);
}

/* Accepts until every other rank has presented a hello or the timeout passes; the
 * first member's problem (or the missing ranks) refuses the whole job. */
static int root_admit(boot_t *b, const boot_params_t *p, int lfd, int *seen, char *err, size_t errlen)
{
    int joined = 0, arrived = 0;
    char first_why[768] = "", last_refused[256] = "";
    double deadline = pn_now() + p->timeout;
    while (arrived < p->size - 1) {
        double left = deadline - pn_now();
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
        wire_sock_tune(fd);
        int r = -1;
        char why[512] = "";
        void *blob = NULL;
        size_t bloblen = 0;
        int hrc = root_hello_read(p, fd, seen, deadline, &r, &blob, &bloblen, why, sizeof why);
        if (hrc && hrc != -EINVAL && hrc != -ENOMEM) {
            root_stranger(b, fd, hrc, &sa, salen, why, last_refused, sizeof last_refused);
            continue;
        }
        arrived++;
        if (!hrc) {
            seen[r] = 1;
            joined++;
            root_welcome(b, p, fd, r, blob, bloblen, why, sizeof why);
        }
        if (*why) {
            if (!*first_why)
                snprintf(first_why, sizeof first_why, "%s", why);
            if (r < 0 || b->fds[r] != fd) {
                (void)boot_send_text(b, fd, WIRE_REFUSE, 0, why);
                close(fd);
            }
        }
    }
    if (!*first_why && joined < p->size - 1)
        root_missing(p, seen, last_refused, first_why, sizeof first_why);
    if (*first_why) {
        refuse_all(b, first_why);
        snprintf(err, errlen, "rank 0 refused the job: %s", first_why);
        return -ECONNREFUSED;
    }
    return 0;
}

/* Clocks: rank 0 pings rank r and keeps the sample with the shortest round trip. */
static int root_clock(boot_t *b, int r, double *offset, double *rtt, char *err, size_t errlen)
{
    double best = 1e9;
    int rc = 0;
    for (int k = 0; k < CLOCK_ROUNDS && !rc; k++) {
        double t0 = pn_now();
        int type;
        char *pl = NULL;
        size_t len;
        if ((rc = boot_send(b, b->fds[r], WIRE_CLOCK_REQ, NULL, 0)) != 0 ||
            (rc = wire_msg_recv(b->fds[r], &type, &pl, &len, WIRE_TEXT_MAX + 4, pn_now() + 10)) != 0) {
            snprintf(err, errlen, "rank 0 lost rank %d while aligning clocks: %s", r, strerror(-rc));
            break;
        }
        double t1 = pn_now();
        if (type == WIRE_REFUSE || type == WIRE_ABORT) {
            int origin;
            char why[WIRE_TEXT_MAX];
            wire_text_parse(pl, len, &origin, why, sizeof why);
            snprintf(err, errlen, "rank %d refused the job: %s", r, why);
            rc = -ECONNREFUSED;
        } else if (type != WIRE_CLOCK_REP || len != 8) {
            snprintf(err, errlen, "rank %d answered a clock ping with message type %d", r, type);
            rc = -EPROTO;
        } else {
            wire_cur_t c = {pl, len, 0, 0};
            double tr = wire_getf(&c);
            if (t1 - t0 < best) {
                best = t1 - t0;
                *rtt = best;
                *offset = tr - (t0 + t1) / 2;
            }
        }
        free(pl);
    }
    return rc;
}

/* The address table, with each rank's own clock offset, start and round trip. */
static int root_table_send(boot_t *b, const boot_params_t *p, const double *offsets, const double *rtts, char *err,
                           size_t errlen)
{
    int rc = 0;
    size_t total = 24;
    for (int r = 0; r < p->size; r++)
        total += 4 + b->bloblens[r];
    char *table = malloc(total);
    for (int r = 1; r < p->size && table && !rc; r++) {
        wire_cur_t c = {table, total, 0, 0};
        wire_putf(&c, offsets[r]);
        wire_putf(&c, b->start + offsets[r]);
        wire_putf(&c, rtts[r]);
        for (int q = 0; q < p->size; q++) {
            wire_put32(&c, (uint32_t)b->bloblens[q]);
            wire_put(&c, b->blobs[q], b->bloblens[q]);
        }
        if ((rc = boot_send(b, b->fds[r], WIRE_TABLE, table, c.off)) != 0)
            snprintf(err, errlen, "rank 0 lost rank %d while sending the address table", r);
    }
    if (!table) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
    }
    free(table);
    return rc;
}

int handshake_root(boot_t *b, const boot_params_t *p, char *err, size_t errlen)
{
    int lfd = listen_open(p, err, errlen);
    if (lfd < 0)
        return lfd;
    int *seen = calloc((size_t)p->size, sizeof *seen);
    int rc = seen ? root_admit(b, p, lfd, seen, err, errlen)
                  : pn_err(err, errlen, -ENOMEM, "rank 0: out of memory for the rendezvous");
    free(seen);
    if (p->listen_fd < 0)
        close(lfd);
    if (rc)
        return rc;
    double *offsets = calloc((size_t)p->size, sizeof *offsets), *rtts = calloc((size_t)p->size, sizeof *rtts);
    if (!offsets || !rtts) {
        free(offsets);
        free(rtts);
        return pn_err(err, errlen, -ENOMEM, "rank 0: out of memory for the clock table");
    }
    for (int r = 1; r < p->size && !rc; r++)
        rc = root_clock(b, r, &offsets[r], &rtts[r], err, errlen);
    if (rc) {
        refuse_all(b, err);
    } else {
        b->start = pn_now();
        rc = root_table_send(b, p, offsets, rtts, err, errlen);
    }
    free(offsets);
    free(rtts);
    return rc;
}

static int peer_open(boot_t *b, const boot_params_t *p, const char *hello, size_t hellolen, char *err,
                     size_t errlen)
{
    double deadline = pn_now() + p->timeout;
    int fd = connect_retry(p, deadline, err, errlen);
    if (fd < 0)
        return fd;
    b->fds[0] = fd;
    wire_sock_tune(fd);
    int rc = boot_send(b, fd, WIRE_HELLO, hello, hellolen);
    if (rc)
        snprintf(err, errlen, "rank %d lost rank 0 sending its hello: %s", p->rank, strerror(-rc));
    int welcomed = 0;
    while (!rc) {
        int type;
        char *pl = NULL;
        size_t len;
        size_t cap = 24 + (size_t)p->size * (4 + BOOT_BLOB_MAX);
        if ((rc = wire_msg_recv(fd, &type, &pl, &len, cap, deadline)) != 0) {
            snprintf(err, errlen, "rank %d lost rank 0 during the rendezvous: %s", p->rank,
                     rc == -ECONNRESET ? "connection closed" : strerror(-rc));
            break;
        }
        if (type == WIRE_REFUSE || type == WIRE_ABORT) {
            int origin;
            char why[WIRE_TEXT_MAX];
            wire_text_parse(pl, len, &origin, why, sizeof why);
            snprintf(err, errlen, "rank 0 refused rank %d: %s", p->rank, why);
            rc = -ECONNREFUSED;
        } else if (type == WIRE_WELCOME) {
            uint64_t hash = 0;
            char tbuf[BOOT_TOKEN_MAX + 1];
            char why[256] = "";
            if (handshake_welcome_parse(pl, len, &hash, tbuf) != 0)
                snprintf(why, sizeof why, "rank 0 sent a malformed welcome");
            else if (!handshake_token_equal(tbuf, p->token))
                snprintf(why, sizeof why, "rank 0 has a different job token");
            else if (hash != p->config_hash)
                snprintf(why, sizeof why, "rank 0 has a different run configuration (hash %016llx, rank %d has %016llx)",
                         (unsigned long long)hash, p->rank, (unsigned long long)p->config_hash);
            if (*why) {
                (void)boot_send_text(b, fd, WIRE_REFUSE, p->rank, why);
                snprintf(err, errlen, "rank %d refused the job: %s", p->rank, why);
                rc = -ECONNREFUSED;
            }
            welcomed = 1;
        } else if (type == WIRE_CLOCK_REQ && welcomed) {
            char buf[8];
            wire_cur_t o = {buf, 8, 0, 0};
            wire_putf(&o, pn_now());
            if ((rc = boot_send(b, fd, WIRE_CLOCK_REP, buf, 8)) != 0)
                snprintf(err, errlen, "rank %d lost rank 0 while aligning clocks: %s", p->rank, strerror(-rc));
        } else if (type == WIRE_TABLE && welcomed) {
            double clock[3];
            /* the table carries this rank's own address too: replace our copy */
            free(b->blobs[p->rank]);
            b->blobs[p->rank] = NULL;
            if ((rc = handshake_table_parse(pl, len, p->size, clock, b->blobs, b->bloblens)) != 0) {
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

int handshake_peer(boot_t *b, const boot_params_t *p, const void *blob, size_t bloblen, char *err, size_t errlen)
{
    char *hello = NULL;
    size_t hellolen = 0;
    int rc = hello_build(p, blob, bloblen, &hello, &hellolen);
    if (rc)
        snprintf(err, errlen, "rank %d: out of memory for its hello", p->rank);
    else
        rc = peer_open(b, p, hello, hellolen, err, errlen);
    free(hello);
    return rc;
}
