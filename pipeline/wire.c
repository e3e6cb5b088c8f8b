/* The bootstrap's framing and payload codec (see wire.h). */
#include "pipeline/wire.h"

#include <endian.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/clock.h"

int wire_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    int sock = 1;
    while (n) {
        /* send() so a closed peer is an error, not SIGPIPE; a pipe is written with write() */
        ssize_t k = sock ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
        if (k < 0 && errno == ENOTSOCK && sock) {
            sock = 0;
            continue;
        }
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

int wire_read_all(int fd, void *buf, size_t n, double deadline)
{
    char *p = buf;
    while (n) {
        double left = deadline > 0 ? deadline - pn_now() : -1;
        if (deadline > 0 && left <= 0)
            return -ETIMEDOUT;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int r = poll(&pf, 1, deadline > 0 ? (int)(left * 1000) + 1 : -1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            continue;
        ssize_t k = read(fd, p, n);
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

int wire_msg_send(int fd, int type, const void *payload, size_t len)
{
    uint32_t h[3] = {htobe32(WIRE_MAGIC), htobe32((uint32_t)type), htobe32((uint32_t)len)};
    int rc = wire_write_all(fd, h, sizeof h);
    if (!rc && len)
        rc = wire_write_all(fd, payload, len);
    return rc;
}

int wire_header_parse(const void *hdr, size_t max, int *type, size_t *len)
{
    uint32_t h[3];
    memcpy(h, hdr, sizeof h);
    if (be32toh(h[0]) != WIRE_MAGIC)
        return -EPROTO;
    size_t n = be32toh(h[2]);
    if (n > max)
        return -EMSGSIZE;
    *type = (int)be32toh(h[1]);
    *len = n;
    return 0;
}

int wire_msg_recv(int fd, int *type, char **payload, size_t *len, size_t max, double deadline)
{
    uint32_t h[3];
    int rc = wire_read_all(fd, h, sizeof h, deadline);
    if (rc)
        return rc;
    int t;
    size_t n;
    if ((rc = wire_header_parse(h, max, &t, &n)) != 0)
        return rc;
    char *p = malloc(n + 1);
    if (!p)
        return -ENOMEM;
    if (n && (rc = wire_read_all(fd, p, n, deadline)) != 0) {
        free(p);
        return rc;
    }
    p[n] = '\0';
    *type = t;
    *payload = p;
    *len = n;
    return 0;
}

void wire_put(wire_cur_t *c, const void *x, size_t n)
{
    if (c->p && c->off + n <= c->len)
        memcpy(c->p + c->off, x, n);
    c->off += n;
}
void wire_put32(wire_cur_t *c, uint32_t v) { v = htobe32(v); wire_put(c, &v, 4); }
void wire_put64(wire_cur_t *c, uint64_t v) { v = htobe64(v); wire_put(c, &v, 8); }
void wire_putf(wire_cur_t *c, double d) { uint64_t v; memcpy(&v, &d, 8); wire_put64(c, v); }

const void *wire_get(wire_cur_t *c, size_t n)
{
    if (c->bad || c->off + n > c->len || c->off + n < c->off) {
        c->bad = 1;
        return NULL;
    }
    c->off += n;
    return c->p + c->off - n;
}
uint32_t wire_get32(wire_cur_t *c) { const void *p = wire_get(c, 4); uint32_t v = 0; if (p) memcpy(&v, p, 4); return be32toh(v); }
uint64_t wire_get64(wire_cur_t *c) { const void *p = wire_get(c, 8); uint64_t v = 0; if (p) memcpy(&v, p, 8); return be64toh(v); }
double wire_getf(wire_cur_t *c) { uint64_t v = wire_get64(c); double d; memcpy(&d, &v, 8); return d; }

size_t wire_text_build(char *buf, int origin, const char *text)
{
    wire_cur_t c = {buf, WIRE_TEXT_MAX + 4, 0, 0};
    size_t n = strnlen(text, WIRE_TEXT_MAX - 1);
    wire_put32(&c, (uint32_t)origin);
    wire_put(&c, text, n);
    return c.off;
}

void wire_text_parse(const void *pl, size_t len, int *origin, char *out, size_t outlen)
{
    const char *payload = pl;
    wire_cur_t c = {(char *)payload, len, 0, 0};
    *origin = (int)wire_get32(&c);
    size_t n = c.bad ? 0 : len - 4;
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, payload + (c.bad ? 0 : 4), n);
    out[n] = '\0';
    for (size_t i = 0; i < n; i++) /* a peer's text reaches a terminal: keep it printable */
        if ((unsigned char)out[i] < 0x20 || (unsigned char)out[i] == 0x7f)
            out[i] = '?';
}

void wire_sock_tune(int fd)
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
