/* Dropping root in a forked stage process: group list, gid, uid, in that order (once the
 * uid is gone the groups cannot be changed), then a check that it cannot come back. */
#include "pipeline/privs.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static struct passwd *lookup(const char *user, char *err, size_t errlen)
{
    struct passwd *pw = getpwnam(user);
    if (!pw) {
        char *end;
        long id = strtol(user, &end, 10);
        if (*user && !*end && id > 0)
            pw = getpwuid((uid_t)id);
        if (!pw) {
            snprintf(err, errlen, "--user %s: no such user", user);
            return NULL;
        }
    }
    if (pw->pw_uid == 0) {
        snprintf(err, errlen, "--user %s is root: nothing would be dropped", user);
        return NULL;
    }
    return pw;
}

int privs_check_user(const char *user, char *err, size_t errlen)
{
    return lookup(user, err, errlen) ? 0 : -EINVAL;
}

int privs_drop(const char *user, int pdeath_signal, char *err, size_t errlen)
{
    if (geteuid() != 0)
        return 0;
    struct passwd *pw = lookup(user, err, errlen);
    if (!pw)
        return -EINVAL;
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    if (setgroups(1, &gid) || setresgid(gid, gid, gid) || setresuid(uid, uid, uid)) {
        snprintf(err, errlen, "cannot become %s (uid %u): %s", user, (unsigned)uid, strerror(errno));
        return -EPERM;
    }
    if (setuid(0) == 0 || seteuid(0) == 0) {
        snprintf(err, errlen, "still able to regain root after becoming %s", user);
        return -EPERM;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
        (pdeath_signal && prctl(PR_SET_PDEATHSIG, pdeath_signal, 0, 0, 0))) {
        snprintf(err, errlen, "prctl after becoming %s: %s", user, strerror(errno));
        return -EPERM;
    }
    return 0;
}
