/* The bootstrap's wire format: framed messages (magic, type, payload length) over a TCP
 * socket, a cursor for their fixed-layout big-endian payloads, the rank-stamped text
 * messages (refusals, aborts), and the whole-buffer socket read/write loops. The parsers
 * are pure functions of received bytes, exposed for the fuzz targets and protocol tests;
 * every length read from the wire is capped before anything is allocated. */
#ifndef PN_PIPELINE_WIRE_H
#define PN_PIPELINE_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define WIRE_MAGIC 0x504e4231u /* "PNB1" */

enum { WIRE_HEADER_BYTES = 12, WIRE_TEXT_MAX = 1024 };

/* Message types of the bootstrap protocol. */
enum { WIRE_HELLO = 1, WIRE_WELCOME, WIRE_REFUSE, WIRE_CLOCK_REQ, WIRE_CLOCK_REP, WIRE_TABLE, WIRE_ABORT,
       WIRE_DONE, WIRE_RELEASE, WIRE_AGREE, WIRE_AGREED };

/* The one pair of whole-buffer loops for sockets and pipes. All n bytes or a negative
 * errno (a socket's closed peer is -EPIPE, not SIGPIPE; EINTR retried). */
int wire_write_all(int fd, const void *buf, size_t n) PN_WUR;
/* All n bytes by deadline (pn_now() seconds; <= 0: no limit), sleeping in poll():
 * -ETIMEDOUT, -ECONNRESET on EOF, or -errno. */
int wire_read_all(int fd, void *buf, size_t n, double deadline) PN_WUR;

/* A message header (magic, type, payload length): -EPROTO on a wrong magic, -EMSGSIZE
 * when the length exceeds max (checked before anything is allocated). */
int wire_header_parse(const void *hdr, size_t max, int *type, size_t *len) PN_WUR;
/* One message. The caller serialises writers on one socket. */
int wire_msg_send(int fd, int type, const void *payload, size_t len) PN_WUR;
/* Reads one message; *payload is malloc'd (NUL-terminated for text use), its length
 * checked against max before allocating. */
int wire_msg_recv(int fd, int *type, char **payload, size_t *len, size_t max, double deadline) PN_WUR;

/* A REFUSE/ABORT payload: the origin rank, then the text (cut at WIRE_TEXT_MAX - 1). The
 * _build form writes into buf (WIRE_TEXT_MAX + 4 bytes) and returns the length. */
size_t wire_text_build(char *buf, int origin, const char *text);
/* A REFUSE/ABORT text: origin rank and the reason, made printable. */
void wire_text_parse(const void *pl, size_t len, int *origin, char *out, size_t outlen);

/* TCP_NODELAY and keepalive so a host that vanishes without a FIN is noticed in ~7 s. */
void wire_sock_tune(int fd);

/* A cursor over a fixed-layout payload. Writing with p == NULL only counts (off); a read
 * past len sets bad and returns NULL/0 from then on. */
typedef struct {
    char *p;
    size_t len, off;
    int bad;
} wire_cur_t;

void wire_put(wire_cur_t *c, const void *x, size_t n);
void wire_put32(wire_cur_t *c, uint32_t v);
void wire_put64(wire_cur_t *c, uint64_t v);
void wire_putf(wire_cur_t *c, double d);
const void *wire_get(wire_cur_t *c, size_t n);
uint32_t wire_get32(wire_cur_t *c);
uint64_t wire_get64(wire_cur_t *c);
double wire_getf(wire_cur_t *c);

#endif
