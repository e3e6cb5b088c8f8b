/* The data-parallel all-reduce in the simulator (sim_dp_t in sim.h): a ring of D
 * replicas per stage, its buckets one after another, each ready at the end of the
 * stage's last backward or, with overlap, when its layers' backward ends. */
#include "schedules/sim.h"
#include "schedules/sim_priv.h"

#include <errno.h>
#include <math.h>

double sim_dp_bucket_time(const sim_link_t *l, int replicas, double bytes)
{
    if (replicas <= 1)
        return 0;
    double step = (l ? l->delay : 0) + sim_link_occupancy(l, bytes / replicas);
    return 2.0 * (replicas - 1) * step;
}

int sim_dp_active(const sim_dp_t *dp)
{
    return dp && dp->replicas > 1;
}

int sim_dp_check(const sim_dp_t *dp, int stages, char *err, size_t errlen)
{
    if (!dp)
        return 0;
    if (dp->replicas < 0)
        return pn_err(err, errlen, -EINVAL, "data-parallel replicas %d: must be >= 1", dp->replicas);
    if (!sim_dp_active(dp))
        return 0;
    if (dp->link) {
        const struct {
            const char *name;
            double v;
        } f[] = {{"delay", dp->link->delay}, {"bandwidth", dp->link->bandwidth}, {"overhead", dp->link->overhead}};
        for (size_t k = 0; k < sizeof f / sizeof *f; k++)
            if (bad_seconds(f[k].v))
                return pn_err(err, errlen, -EINVAL, "data-parallel link %s %g: must be a finite number >= 0",
                              f[k].name, f[k].v);
    }
    if (!dp->n_buckets || !dp->bucket_bytes)
        return pn_err(err, errlen, -EINVAL, "data-parallel all-reduce without buckets");
    for (int s = 0; s < stages; s++) {
        if (dp->n_buckets[s] < 1 || !dp->bucket_bytes[s])
            return pn_err(err, errlen, -EINVAL, "stage %d: %d all-reduce buckets; want >= 1", s, dp->n_buckets[s]);
        double prev = 0;
        for (int k = 0; k < dp->n_buckets[s]; k++) {
            if (bad_seconds(dp->bucket_bytes[s][k]))
                return pn_err(err, errlen, -EINVAL, "stage %d bucket %d: %g bytes must be a finite number >= 0", s, k,
                              dp->bucket_bytes[s][k]);
            if (!dp->bucket_ready)
                continue;
            double f = dp->bucket_ready[s] ? dp->bucket_ready[s][k] : NAN;
            int last = k + 1 == dp->n_buckets[s];
            if (!(f > 0 && f <= 1) || f < prev || (last && f != 1))
                return pn_err(err, errlen, -EINVAL, "stage %d bucket %d: ready at %g of the last backward; want "
                              "non-decreasing fractions in (0, 1] ending at 1", s, k, f);
            prev = f;
        }
    }
    return 0;
}

/* The fraction of the last backward after which bucket k of stage s is final. */
static double ready_at(const sim_dp_t *dp, int s, int k)
{
    if (dp->bucket_ready)
        return dp->bucket_ready[s][k];
    double total = 0, upto = 0;
    for (int i = 0; i < dp->n_buckets[s]; i++) {
        total += dp->bucket_bytes[s][i];
        if (i <= k)
            upto += dp->bucket_bytes[s][i];
    }
    return total > 0 ? upto / total : 1;
}

double sim_dp_stage(const sim_dp_t *dp, int s, sim_span_t last_bwd, sim_span_t *ar)
{
    double free_at = -INFINITY, first = NAN;
    for (int k = 0; k < dp->n_buckets[s]; k++) {
        double ready = last_bwd.end;
        if (dp->overlap && k + 1 < dp->n_buckets[s])
            ready = last_bwd.start + ready_at(dp, s, k) * (last_bwd.end - last_bwd.start);
        double start = ready > free_at ? ready : free_at;
        if (k == 0)
            first = start;
        free_at = start + sim_dp_bucket_time(dp->link, dp->replicas, dp->bucket_bytes[s][k]);
    }
    *ar = (sim_span_t){first, free_at};
    return free_at;
}
