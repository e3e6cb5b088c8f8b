/* Emulator backends (`--emulator auto|netem|shim`) as a const table: `netem` puts
 * qdiscs in the kernel (netem, TBF for rate only), `shim` leaves the kernel alone and
 * the pipeline's transport delays messages with netem/shaper.h, `none` is what links
 * that are all default get. `auto` picks the most faithful backend this machine allows
 * and says why. Callers act on the entry's flags, never on its name. */
#ifndef PN_NETEM_EMULATOR_H
#define PN_NETEM_EMULATOR_H

#include <stddef.h>

#include "common/err.h"

#include "netem/profile.h"
#include "netem/topo.h"

typedef struct netem_emulator {
    const char *name;
    const char *summary;
    int fidelity;   /* auto prefers the highest usable */
    int in_transport;   /* shapes inside the pipeline's transport (the shim) */
    int changes_kernel; /* puts qdiscs in the kernel */
    int shapes;         /* 0 for the entry of all-default links: nothing shaped, never asked for */
    /* 1 when the backend can emulate these links here, else 0 and why. */
    int (*usable)(const netem_profile_t *links, int n, char *why, size_t whylen);
    /* Puts the links on the topology (shim: nothing in the kernel). */
    int (*apply)(netem_topo_t *t, const netem_profile_t *links, char *err, size_t errlen);
} netem_emulator_t;

/* "auto, netem, shim" (auto, then every entry that can be asked for), for --help and
 * messages; derived from the table. */
const char *netem_emulator_names(void);

/* The backend called name ("netem" or "shim"), or NULL. (A topology whose links are all
 * default records the entry whose shapes is 0, "none", which cannot be asked for.) */
const netem_emulator_t *netem_emulator_find(const char *name);

/* The most faithful entry that can be asked for and shapes inside the transport
 * (in_transport 1) or does not (0): what auto narrows to where the transport cannot carry
 * the in-transport shaper, or where the kernel's cannot be used; NULL if none. */
const netem_emulator_t *netem_emulator_of_kind(int in_transport);

/* Resolves asked ("auto", "netem", "shim") for these links: the chosen backend and a
 * one-line reason. Errors: -EINVAL unknown name, -EOPNOTSUPP the asked backend cannot
 * emulate the links here (message says why and what would). */
int netem_emulator_choose(const char *asked, const netem_profile_t *links, int n,
                          const netem_emulator_t **out, char *why, size_t whylen, char *err,
                          size_t errlen) PN_WUR;

#endif
