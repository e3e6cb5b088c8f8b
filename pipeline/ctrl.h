/* The control plane of a job: after the rendezvous its sockets carry failure notices and
 * the final barrier, read by one watcher thread per rank that sleeps in poll(). */
#ifndef PN_PIPELINE_CTRL_H
#define PN_PIPELINE_CTRL_H

#include <stddef.h>

#include "common/err.h"
#include "pipeline/boot.h"

/* Starts watching the control plane: on_fail(arg, rank, why) is called once, from the
 * watcher thread, when any rank dies, disconnects or aborts before ctrl_finish. */
int ctrl_watch(boot_t *b, void (*on_fail)(void *arg, int rank, const char *why), void *arg) PN_WUR;

/* Tells every rank this one is giving up (why is shown by all of them). */
void ctrl_abort(boot_t *b, const char *why);

/* The first failure the control plane reported (after ctrl_watch), waiting up to `wait`
 * seconds for one: its rank, why into why[], or -1 when there was none. A rank whose
 * neighbour vanished asks before it blames that neighbour, which may only have given up
 * because of another rank (whose name is then in the text). */
int ctrl_wait_failure(boot_t *b, double wait, char *why, size_t len);

/* The final barrier: hands payload to rank 0 and returns once every rank has arrived.
 * On rank 0, ctrl_gathered then returns each rank's payload. Fails (naming the rank) if
 * a rank dies first, or after timeout seconds (<= 0: no limit). */
int ctrl_finish(boot_t *b, const void *payload, size_t len, double timeout, char *err, size_t errlen) PN_WUR;
const void *ctrl_gathered(const boot_t *b, int rank, size_t *len);

/* An agreement of all ranks on one flag per iteration: returns in *any the OR of every
 * rank's flag for iteration iter (rank 0 gathers them, then answers all), once every rank
 * has called it for iter; iterations are agreed in order from 0. The fp16 overflow check
 * uses it, so that every stage skips a step together. Needs ctrl_watch first with more than
 * one rank; fails naming the cause if a rank dies first, or after timeout seconds (<= 0:
 * no limit). */
int ctrl_agree(boot_t *b, int iter, int flag, int *any, double timeout, char *err, size_t errlen) PN_WUR;

/* Stops the watcher thread (boot_close calls it). */
void ctrl_stop(boot_t *b);

#endif
