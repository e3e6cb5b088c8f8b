/* Bootstrap of a pipeline job: rank and world size from flags or the launcher's
 * environment, a TCP rendezvous at rank 0 that checks every rank's configuration hash and
 * job token, exchanges transport addresses and aligns clocks to rank 0. The rendezvous
 * sockets stay open as the job's control plane: failure notices and the final barrier. */
#ifndef PN_PIPELINE_BOOT_H
#define PN_PIPELINE_BOOT_H

#include <stddef.h>
#include <stdint.h>

#define BOOT_WUR __attribute__((warn_unused_result))

enum {
    BOOT_TOKEN_MAX = 256,            /* bytes of a job token */
    BOOT_BLOB_MAX = 64 * 1024,       /* bytes of one rank's transport address */
    BOOT_PAYLOAD_MAX = 64 << 20,     /* bytes one rank may hand to boot_finish */
    BOOT_RANKS_MAX = 1 << 14,
};

typedef struct {
    int rank, size;
    char host[256];      /* rank 0's address from --dist-url; rank 0 listens on it only */
    int port;
    int listen_fd;       /* rank 0: an already bound listening socket, or -1 to bind host:port */
    const char *token;   /* job token, compared in constant time */
    uint64_t config_hash;
    double timeout;      /* seconds to wait for the rendezvous to complete */
} boot_params_t;

typedef struct boot boot_t;

/* Rank and size from the launcher's environment: SLURM_PROCID/SLURM_NTASKS,
 * OMPI_COMM_WORLD_RANK/SIZE, PMI_RANK/PMI_SIZE. Returns 0 and the variable family's name
 * in *source, -ENOENT when none is set, -EINVAL (with a message) when one is malformed. */
int boot_env_rank(int *rank, int *size, const char **source, char *err, size_t errlen) BOOT_WUR;

/* A job token from the launcher's environment (PIPENEM_TOKEN, SLURM_JOB_ID+STEP,
 * PMIX_NAMESPACE, OMPI_MCA_ess_base_jobid): 0 and a static or environment string, or
 * -ENOENT. */
int boot_env_token(const char **token) BOOT_WUR;

/* "tcp://HOST:PORT" (HOST may be [IPv6]) into host and port. */
int boot_url_parse(const char *url, char *host, size_t hostlen, int *port, char *err, size_t errlen) BOOT_WUR;

/* The name of this host's network interface that traffic to HOST:PORT leaves through (the
 * kernel's route choice; no packet is sent), e.g. "eth0", or "lo" for a loopback HOST: the
 * one network a multi-host job uses, so that UCX listens there and nowhere else. */
int boot_route_ifname(const char *host, int port, char *ifname, size_t len, char *err, size_t errlen) BOOT_WUR;

/* Joins the rendezvous and publishes blob (this rank's transport address). On success
 * every rank's blob is available through boot_blob. A mismatch of size, rank, config
 * hash or token is an error on every rank, with the reason. */
int boot_open(const boot_params_t *p, const void *blob, size_t bloblen, boot_t **out, char *err,
              size_t errlen) BOOT_WUR;

int boot_rank(const boot_t *b);
int boot_size(const boot_t *b);
const void *boot_blob(const boot_t *b, int rank, size_t *len);
/* Local monotonic seconds -> seconds on rank 0's clock since the job's start. */
double boot_time(const boot_t *b, double local);
/* This rank's clock minus rank 0's, and the round trip of the best sample (seconds). */
double boot_clock_offset(const boot_t *b, double *rtt);

/* Starts watching the control plane: on_fail(arg, rank, why) is called once, from the
 * watcher thread, when any rank dies, disconnects or aborts before boot_finish. */
int boot_watch(boot_t *b, void (*on_fail)(void *arg, int rank, const char *why), void *arg) BOOT_WUR;

/* Tells every rank this one is giving up (why is shown by all of them). */
void boot_abort(boot_t *b, const char *why);

/* The first failure the control plane reported (after boot_watch), waiting up to `wait`
 * seconds for one: its rank, why into why[], or -1 when there was none. A rank whose
 * neighbour vanished asks before it blames that neighbour, which may only have given up
 * because of another rank (whose name is then in the text). */
int boot_wait_failure(boot_t *b, double wait, char *why, size_t len);

/* The final barrier: hands payload to rank 0 and returns once every rank has arrived.
 * On rank 0, boot_gathered then returns each rank's payload. Fails (naming the rank) if
 * a rank dies first, or after timeout seconds (<= 0: no limit). */
int boot_finish(boot_t *b, const void *payload, size_t len, double timeout, char *err, size_t errlen) BOOT_WUR;
const void *boot_gathered(const boot_t *b, int rank, size_t *len);

/* Accepts NULL and half-built jobs. */
void boot_close(boot_t *b);

/* Constant-time equality of two tokens (lengths compared too, without early exit). */
int boot_token_equal(const char *a, const char *b);

/* ---- the wire parsers: pure functions of received bytes (no I/O), used by the protocol
 * and exposed for the fuzz targets and protocol tests ---- */
enum { BOOT_HEADER_BYTES = 12 };
/* A message header (magic, type, payload length): -EPROTO on a wrong magic, -EMSGSIZE
 * when the length exceeds max (checked before anything is allocated). */
int boot_header_parse(const void *hdr, size_t max, int *type, size_t *len) BOOT_WUR;
/* Rank 0's check of a HELLO payload against its own parameters. seen[r] marks ranks that
 * already joined. Returns 0 with *rank and a malloc'd copy of the peer's address, or:
 * -EPROTO (malformed), -EACCES (wrong token: not a member of the job), -EINVAL (a member
 * that disagrees on size, rank or configuration), with the reason in why. */
int boot_hello_check(const boot_params_t *p, const void *pl, size_t len, const int *seen, int *rank,
                     void **blob, size_t *bloblen, char *why, size_t whylen) BOOT_WUR;
/* A WELCOME: rank 0's config hash and token (token has room for BOOT_TOKEN_MAX + 1). */
int boot_welcome_parse(const void *pl, size_t len, uint64_t *hash, char *token) BOOT_WUR;
/* The address TABLE of size ranks: clock[3] = offset, start, rtt; blobs[q] malloc'd.
 * On failure nothing is left allocated. */
int boot_table_parse(const void *pl, size_t len, int size, double *clock, void **blobs, size_t *bloblens) BOOT_WUR;
/* A REFUSE/ABORT text: origin rank and the reason, made printable. */
void boot_text_parse(const void *pl, size_t len, int *origin, char *out, size_t outlen);

#endif
