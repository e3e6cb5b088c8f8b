/* The record of everything pipenem changed on this machine (qdiscs, namespaces), kept
 * in a state file so that it is undone on clear, normal exit, SIGINT/SIGTERM (a signal
 * thread) and, after a crash, by `pipenem netem clear --all` replaying the file.
 * Directory: $PIPENEM_STATE_DIR, else /run/pipenem. One file per run (run-PID.state)
 * and one for `netem apply`'s persistent changes (applied.state). */
#ifndef PN_NETEM_STATE_H
#define PN_NETEM_STATE_H

#include <stddef.h>

#include "common/err.h"
#include "netem/tc.h"

typedef enum { NETEM_STATE_QDISC, NETEM_STATE_NETNS } netem_state_kind_t;

typedef struct {
    netem_state_kind_t kind;
    netem_dev_t dev;              /* QDISC: the device */
    netem_qdisc_saved_t saved;    /* QDISC: its original root qdisc */
    char netns[64];               /* NETNS: the namespace pipenem created */
} netem_state_entry_t;

/* The state directory in use. */
const char *netem_state_dir(void);

/* Records e before the change it undoes is made (persist: `netem apply`'s file, else
 * this process's run file). Installs the exit and signal guards on first use. */
int netem_state_add(const netem_state_entry_t *e, int persist, char *err, size_t errlen)
    PN_WUR;

/* The recorded original of a device, from any state file: 1 found, 0 not. */
int netem_state_find_qdisc(const netem_dev_t *d, netem_state_entry_t *out);

/* Forgets a record after it was undone. */
void netem_state_forget_qdisc(const netem_dev_t *d);
void netem_state_forget_netns(const char *netns);

/* Undoes every record of this process's run file (newest first) and removes it. */
int netem_state_undo_mine(char *err, size_t errlen) PN_WUR;

/* `clear --all`: undoes every record of every state file whose owning process is gone
 * (and of applied.state), newest first. Files of live runs are left alone and counted
 * in *live. Prints one line per undone record to `log` when not NULL. */
int netem_state_undo_all(int *undone, int *live, void (*log)(const char *line, void *arg),
                         void *arg, char *err, size_t errlen) PN_WUR;

/* Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and the threads it creates
 * later) and starts a thread that, on one of them, undoes this process's records and
 * then dies of that signal. Call early, before other threads exist. Idempotent. */
int netem_state_guard_start(void) PN_WUR;

/* Brackets one change of the machine (a qdisc applied or cleared): the signal guard
 * waits for the change to end before it undoes the records. Nests. */
void netem_state_change_begin(void);
void netem_state_change_end(void);

/* In a forked child that owns nothing: unblock the guarded signals again. */
void netem_state_guard_child(void);

#endif
