/* The rendezvous of a job: every rank presents (rank, size, config hash, token, transport
 * address) to rank 0, which checks them, measures each rank's clock offset and sends back
 * the address table. The message builders and parsers are pure functions of bytes (no
 * I/O), exposed for the fuzz targets and protocol tests. */
#ifndef PN_PIPELINE_HANDSHAKE_H
#define PN_PIPELINE_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "pipeline/boot.h"

/* Constant-time equality of two tokens (lengths compared too, without early exit). */
int handshake_token_equal(const char *a, const char *b);

/* Rank 0's side: accepts, checks and welcomes every other rank, aligns clocks and sends
 * the table. A failure is sent to every rank that joined. */
int handshake_root(boot_t *b, const boot_params_t *p, char *err, size_t errlen) PN_WUR;
/* Any other rank's side: presents blob to rank 0 and waits for the table. */
int handshake_peer(boot_t *b, const boot_params_t *p, const void *blob, size_t bloblen, char *err,
                   size_t errlen) PN_WUR;

/* Rank 0's check of a HELLO payload against its own parameters. seen[r] marks ranks that
 * already joined. Returns 0 with *rank and a malloc'd copy of the peer's address, or:
 * -EPROTO (malformed), -EACCES (wrong token: not a member of the job), -EINVAL (a member
 * that disagrees on size, rank or configuration), with the reason in why. */
int handshake_hello_check(const boot_params_t *p, const void *pl, size_t len, const int *seen, int *rank,
                          void **blob, size_t *bloblen, char *why, size_t whylen) PN_WUR;
/* A WELCOME: rank 0's config hash and token (token has room for BOOT_TOKEN_MAX + 1). */
int handshake_welcome_parse(const void *pl, size_t len, uint64_t *hash, char *token) PN_WUR;
/* The address TABLE of size ranks: clock[3] = offset, start, rtt; blobs[q] malloc'd.
 * On failure nothing is left allocated. */
int handshake_table_parse(const void *pl, size_t len, int size, double *clock, void **blobs,
                          size_t *bloblens) PN_WUR;

#endif
