/* The emulator backends and auto's choice between them. */
#include "netem/emulator.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "netem/tc.h"

static int all_default(const netem_profile_t *l, int n)
{
    for (int i = 0; i < n; i++)
        if (!netem_profile_is_default(&l[i]))
            return 0;
    return 1;
}

static int same(const netem_profile_t *a, const netem_profile_t *b)
{
    return a->delay == b->delay && a->jitter == b->jitter && a->loss == b->loss &&
           a->rate == b->rate && a->limit == b->limit;
}

/* The profile of the traffic entering host j: from j-1 over links[j-1], from j+1 over
 * links[j]. -1 when the two differ (then per-source classes sort it; traffic from
 * hosts further away passes that port unshaped). */
static int port_profile(const netem_profile_t *l, int n, int j, netem_profile_t *out)
{
    const netem_profile_t *left = j > 0 ? &l[j - 1] : NULL, *right = j < n ? &l[j] : NULL;
    if (left && right && !same(left, right))
        return -1;
    *out = left ? *left : right ? *right : (netem_profile_t){0};
    return 0;
}

static int kernel_usable(const netem_profile_t *l, int n, char *why, size_t whylen)
{
    int delay = 0;
    for (int i = 0; i < n; i++)
        delay |= l[i].delay > 0 || l[i].jitter > 0 || l[i].loss > 0 || l[i].limit > 0;
    if (!netem_tc_may_change())
        return snprintf(why, whylen, "tc needs root or CAP_NET_ADMIN"), 0;
    if (delay && !netem_tc_have_netem())
        return snprintf(why, whylen, "this kernel has no sch_netem, needed for delay/jitter/loss"), 0;
    snprintf(why, whylen, "%s", delay ? "kernel netem qdiscs" : "kernel TBF (rate only)");
    return 1;
}

static int kernel_apply(netem_topo_t *t, const netem_profile_t *l, char *err, size_t errlen)
{
    int n = t->hosts - 1;
    for (int j = 0; j <= n && n > 0; j++) {
        netem_profile_t p;
        netem_dev_t d;
        netem_tc_applied_t a;
        int rc = netem_dev_init(&d, t->sw_ns, t->port_if[j], err, errlen);
        if (rc < 0)
            return rc;
        if (port_profile(l, n, j, &p) == 0) {
            rc = netem_tc_apply(&d, &p, NETEM_TC_EPHEMERAL, &a, err, errlen);
        } else {
            /* Two links with different profiles meet at host j: sort by the sender. */
            const char *src[2] = {t->host_addr[j - 1], t->host_addr[j + 1]};
            netem_profile_t prof[2] = {l[j - 1], l[j]};
            rc = netem_tc_apply_by_source(&d, 2, src, prof, NETEM_TC_EPHEMERAL, err, errlen);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int shim_usable(const netem_profile_t *l, int n, char *why, size_t whylen)
{
    for (int i = 0; i < n; i++)
        if (l[i].jitter > 0 || l[i].loss > 0)
            return snprintf(why, whylen, "the shim models delay and rate only (link %d-%d has "
                            "jitter or loss)", i, i + 1), 0;
    snprintf(why, whylen, "in-transport shaper (pipeline messages only)");
    return 1;
}

/* The kernel is left unshaped: the pipeline's transport applies the links itself. */
static int shim_apply(netem_topo_t *t, const netem_profile_t *l, char *err, size_t errlen)
{
    (void)l;
    if (!netem_tc_may_change())
        return 0;
    static const netem_profile_t none;
    return kernel_apply(t, (const netem_profile_t[NETEM_TOPO_MAX_HOSTS]){none}, err, errlen);
}

static int none_usable(const netem_profile_t *l, int n, char *why, size_t whylen)
{
    snprintf(why, whylen, all_default(l, n) ? "default profile: unshaped" : "links are not default");
    return all_default(l, n);
}

/* Ordered by fidelity: auto takes the first usable entry (none is usable only for
 * all-default links, which auto settles before the loop). */
static const netem_emulator_t emulators[] = {
    {.name = "netem", .summary = "kernel qdiscs: netem for delay/jitter/loss/rate, TBF for rate only",
     .fidelity = 2, .changes_kernel = 1, .shapes = 1, .usable = kernel_usable, .apply = kernel_apply},
    {.name = "shim", .summary = "in-transport shaper: delay and rate on the pipeline's own messages",
     .fidelity = 1, .in_transport = 1, .shapes = 1, .usable = shim_usable, .apply = shim_apply},
    {.name = "none", .summary = "nothing shaped (all links default)", .fidelity = 0, .usable = none_usable,
     .apply = shim_apply},
};

#define N_EMULATORS (sizeof emulators / sizeof *emulators)

/* Built once from the table: "auto" and every entry that can be asked for. */
static char names[64];
static pthread_once_t names_once = PTHREAD_ONCE_INIT;

static void names_build(void)
{
    size_t at = (size_t)snprintf(names, sizeof names, "auto");
    for (size_t i = 0; i < N_EMULATORS && at < sizeof names; i++)
        if (emulators[i].shapes)
            at += (size_t)snprintf(names + at, sizeof names - at, ", %s", emulators[i].name);
}

const char *netem_emulator_names(void)
{
    pthread_once(&names_once, names_build);
    return names;
}

/* The entry for all-default links (the one that does not shape). */
static const netem_emulator_t *unshaped(void)
{
    for (size_t i = 0; i < N_EMULATORS; i++)
        if (!emulators[i].shapes)
            return &emulators[i];
    return NULL;
}

/* Only entries that shape can be asked for by name. */
const netem_emulator_t *netem_emulator_find(const char *name)
{
    for (size_t i = 0; name && i < N_EMULATORS; i++)
        if (emulators[i].shapes && !strcmp(emulators[i].name, name))
            return &emulators[i];
    return NULL;
}

const netem_emulator_t *netem_emulator_of_kind(int in_transport)
{
    for (size_t i = 0; i < N_EMULATORS; i++)   /* ordered by fidelity */
        if (emulators[i].shapes && emulators[i].in_transport == !!in_transport)
            return &emulators[i];
    return NULL;
}

int netem_emulator_choose(const char *asked, const netem_profile_t *links, int n,
                          const netem_emulator_t **out, char *why, size_t whylen, char *err,
                          size_t errlen)
{
    char r[160];
    if (!asked || !strcmp(asked, "auto")) {
        if (all_default(links, n)) {
            *out = unshaped();
            snprintf(why, whylen, "auto: default profile, nothing to emulate");
            return 0;
        }
        char rejected[200] = "";
        for (size_t i = 0; i < N_EMULATORS; i++) {   /* ordered by fidelity */
            if (emulators[i].usable(links, n, r, sizeof r)) {
                *out = &emulators[i];
                snprintf(why, whylen, "auto: %s%s%s", r, rejected[0] ? "; " : "", rejected);
                return 0;
            }
            size_t at = strlen(rejected);
            snprintf(rejected + at, sizeof rejected - at, "%s%s not usable: %s", at ? "; " : "",
                     emulators[i].name, r);
        }
        return pn_err(err, errlen, -EOPNOTSUPP, "no emulator can do these links here: %s", rejected);
    }
    const netem_emulator_t *e = netem_emulator_find(asked);
    if (!e)
        return pn_err(err, errlen, -EINVAL, "unknown emulator '%s' (%s)", asked, netem_emulator_names());
    if (!all_default(links, n) && !e->usable(links, n, r, sizeof r))
        return pn_err(err, errlen, -EOPNOTSUPP, "emulator '%s' cannot do these links here: %s", asked, r);
    if (all_default(links, n))
        snprintf(r, sizeof r, "default profile: unshaped");
    *out = e;
    snprintf(why, whylen, "asked: %s", r);
    return 0;
}
