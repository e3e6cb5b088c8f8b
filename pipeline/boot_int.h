/* The job object shared by the bootstrap's files: boot.c (open, accessors, close),
 * handshake.c (the rendezvous) and ctrl.c (the control plane). Not an API: nothing
 * outside those three files includes it. */
#ifndef PN_PIPELINE_BOOT_INT_H
#define PN_PIPELINE_BOOT_INT_H

#include <pthread.h>
#include <stddef.h>

#include "pipeline/boot.h"

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
    /* ctrl_agree: rank 0 ORs the round's flags (agree_count arrived so far); every rank
     * learns the result of round agreed_n - 1 (rounds are iterations, from 0) */
    int agree_iter, agree_count, agree_any;
    int agreed_n, agreed_any;
    void **gathered;
    size_t *gatherlens;
};

/* One message on fd, writers serialised by b->wlock (the watcher and the caller's thread
 * both write to the control sockets). */
int boot_send(boot_t *b, int fd, int type, const void *payload, size_t len);
/* A REFUSE/ABORT message from origin with text. */
int boot_send_text(boot_t *b, int fd, int type, int origin, const char *text);

#endif
