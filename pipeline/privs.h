/* Privileges of stage processes: only the netem controller and the local topology need
 * root (tc, namespaces, veths). A launcher running as root hands its stage processes to an
 * unprivileged user once their namespace is entered, so a bug in the stage protocol or the
 * model code runs without root. */
#ifndef PN_PIPELINE_PRIVS_H
#define PN_PIPELINE_PRIVS_H

#include <stddef.h>

#include "common/err.h"

/* Becomes user (a name or a numeric uid) for good: supplementary groups dropped, the
 * user's primary group, then the uid, no_new_privs set, and regaining root is checked to
 * fail. A no-op returning 0 when not running as root. Keeps the parent-death signal
 * (which a credential change clears). -EINVAL for an unknown user, -EPERM otherwise,
 * with the reason. */
/* Checks, before anything starts, that user (a name or a numeric uid) exists and is not
 * root: 0, or -EINVAL with "--user NAME: ..." in err. */
int privs_check_user(const char *user, char *err, size_t errlen) PN_WUR;

int privs_drop(const char *user, int pdeath_signal, char *err, size_t errlen) PN_WUR;

#endif
