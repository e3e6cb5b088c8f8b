/* The control channel of the multi-host commands (the SPMD sweep, the netem self-test
 * across hosts): rank 0 listens on the --dist-url port and admits the other ranks (each
 * says hello with its rank and the launcher's job token), learns every rank's address
 * from the connections, and sends each a welcome line (a word, the addresses) and a
 * binary payload; then one text line per command and per reply ("ok ..." or "fail
 * MESSAGE"). Also the shaping every rank does: a per-destination tree on its traffic to
 * its pipeline neighbours (netem_tc_apply_by_dest). */
#ifndef PN_BENCH_DISTCTL_H
#define PN_BENCH_DISTCTL_H

#include <signal.h>
#include <stddef.h>

#include "common/err.h"
#include "common/limits.h"
#include "netem/profile.h"
#include "netem/tc.h"
#include "netem/topo.h"

#define DISTCTL_ADMIT_S 120.0   /* every rank must have come by then */
#define DISTCTL_REPLY_S 60.0    /* replies to quick commands */

typedef struct {
    int P, port, lfd;
    int fd[PN_MAX_WORLD];            /* rank 0: each rank's connection ([0] unused), -1 when lost */
    char addr[PN_MAX_WORLD][64];     /* each rank's address as the others reach it */
    char host0[256];
} distctl_t;

int distctl_send_all(int fd, const void *buf, size_t n) PN_WUR;
int distctl_send_line(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3))) PN_WUR;
/* Exactly n bytes / one line without its newline, until deadline (0: none) or *stop:
 * 0, -ETIMEDOUT, -EINTR, -ECONNRESET at EOF. */
int distctl_recv_exact(int fd, void *buf, size_t n, double deadline, volatile sig_atomic_t *stop) PN_WUR;
int distctl_recv_line(int fd, char *buf, size_t len, double deadline, volatile sig_atomic_t *stop) PN_WUR;

/* Rank 0: P ranks in all (the launcher's world size must agree), admitted within
 * DISTCTL_ADMIT_S; `what` names the command in messages ("the sweep"). */
int distctl_open(distctl_t *c, const char *url, int P, const char *what, char *err, size_t errlen) PN_WUR;
/* Rank 0: "welcome SIZE WORD ADDR0..ADDR(P-1)" and the payload to every rank. */
int distctl_welcome(distctl_t *c, const char *word, const void *payload, size_t size, char *err,
                    size_t errlen) PN_WUR;
/* Rank 0: line to every rank; -EPIPE when one is lost. */
int distctl_broadcast(distctl_t *c, const char *line) PN_WUR;
/* Rank 0: every rank's reply to what was just sent: 0 when all said "ok" (the rest of
 * each ok line into reply[q] when reply is not NULL), else the first failure's error and
 * every failing rank named in err. */
int distctl_collect(distctl_t *c, const char *what, double deadline, volatile sig_atomic_t *stop,
                    char (*reply)[256], char *err, size_t errlen) PN_WUR;
/* Rank 0: "end" to every rank, its goodbye awaited, everything closed. */
void distctl_close(distctl_t *c);

/* Rank > 0: the --dist-url in the words, or NULL. */
const char *distctl_url_in(int argc, char **argv);
/* Rank > 0: connects to rank 0 (retried for DISTCTL_ADMIT_S) and says hello; then the
 * welcome: its word into word, the addresses into c, payload of exactly size bytes.
 * Returns the connection or a negative error. */
int distctl_join(distctl_t *c, const char *url, int rank, char *word, size_t wordlen, void *payload,
                 size_t size, char *err, size_t errlen) PN_WUR;

#define DISTCTL_MAX_DEVS 2   /* devices one rank shapes (those that reach its peers) */

/* Puts pair(arg, rank, q) on rank's traffic to each rank q < n (a default profile leaves
 * q unshaped), one per-destination tree per device that reaches them (recorded for every
 * exit path; flags as netem_tc_apply_by_dest's); dev[DISTCTL_MAX_DEVS] and *ndev say
 * what to clear. */
int distctl_shape_pairs(const distctl_t *c, int rank, int n, netem_topo_pair_fn pair, void *arg, int flags,
                        netem_dev_t *dev, int *ndev, char *err, size_t errlen) PN_WUR;
/* The same with p on rank's traffic to ranks rank-1 and rank+1 only. */
int distctl_shape(const distctl_t *c, int rank, const netem_profile_t *p, netem_dev_t *dev, int *ndev,
                  char *err, size_t errlen) PN_WUR;
int distctl_unshape(netem_dev_t *dev, int *ndev, char *err, size_t errlen) PN_WUR;

#endif
