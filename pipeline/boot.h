/* Bootstrap of a pipeline job: the job object that the rendezvous (handshake.h) opens,
 * holding every rank's transport address and the clock alignment to rank 0, and whose
 * sockets stay open as the job's control plane (ctrl.h): failure notices and the final
 * barrier. Rank, size and token come from flags or the launcher's environment (jobenv.h). */
#ifndef PN_PIPELINE_BOOT_H
#define PN_PIPELINE_BOOT_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/limits.h"

enum {
    BOOT_TOKEN_MAX = 256,            /* bytes of a job token */
    BOOT_BLOB_MAX = 64 * 1024,       /* bytes of one rank's transport address */
    BOOT_PAYLOAD_MAX = 64 << 20,     /* bytes one rank may hand to ctrl_finish */
};

typedef struct {
    int rank, size;      /* size at most PN_MAX_WORLD */
    char host[256];      /* rank 0's address from --dist-url; rank 0 listens on it only */
    int port;
    int listen_fd;       /* rank 0: an already bound listening socket, or -1 to bind host:port */
    const char *token;   /* job token, compared in constant time */
    uint64_t config_hash;
    double timeout;      /* seconds to wait for the rendezvous to complete */
} boot_params_t;

typedef struct boot boot_t;

/* Joins the rendezvous and publishes blob (this rank's transport address). On success
 * every rank's blob is available through boot_blob. A mismatch of size, rank, config
 * hash or token is an error on every rank, with the reason. */
int boot_open(const boot_params_t *p, const void *blob, size_t bloblen, boot_t **out, char *err,
              size_t errlen) PN_WUR;

int boot_rank(const boot_t *b);
int boot_size(const boot_t *b);
const void *boot_blob(const boot_t *b, int rank, size_t *len);
/* Local monotonic seconds -> seconds on rank 0's clock since the job's start. */
double boot_time(const boot_t *b, double local);
/* This rank's clock minus rank 0's, and the round trip of the best sample (seconds). */
double boot_clock_offset(const boot_t *b, double *rtt);

/* Accepts NULL and half-built jobs. */
void boot_close(boot_t *b);

#endif
