/* Ring all-reduce (see allreduce.h). Each piece of a bucket is cut into n chunks; in
 * n-1 reduce-scatter steps every member sends one chunk right and adds the one from the
 * left, so member i ends with the whole sum of chunk i+1, divides it by n, and n-1
 * all-gather steps pass the finished chunks round. Each step moves bytes/n each way. */
#include "pipeline/allreduce.h"
#include "pipeline/fault.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int allreduce_init(allreduce_t *a, const allreduce_params_t *p, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    if (!p->t || p->n < 1 || p->index < 0 || p->index >= p->n || !p->ranks)
        return pn_err(err, errlen, -EINVAL, "all-reduce: bad ring (member %d of %d)", p->index, p->n);
    a->t = p->t;
    a->n = p->n;
    a->index = p->index;
    a->bucket_bytes = p->bucket_bytes ? p->bucket_bytes : ALLREDUCE_BUCKET_DEFAULT;
    a->bucket_bytes -= a->bucket_bytes % sizeof(float);
    if (a->bucket_bytes < sizeof(float) * (size_t)p->n)
        return pn_err(err, errlen, -EINVAL, "all-reduce: bucket of %zu bytes is smaller than one float per member",
                      p->bucket_bytes);
    a->timeout = p->timeout;
    if (!(a->ranks = malloc((size_t)p->n * sizeof *a->ranks)))
        return pn_err(err, errlen, -ENOMEM, "all-reduce: out of memory");
    memcpy(a->ranks, p->ranks, (size_t)p->n * sizeof *a->ranks);
    return 0;
}

void allreduce_destroy(allreduce_t *a)
{
    if (!a)
        return;
    free(a->ranks);
    free(a->scratch);
    memset(a, 0, sizeof *a);
}

static size_t pieces(const allreduce_t *a, size_t n)
{
    size_t per = a->bucket_bytes / sizeof(float);
    return n ? (n + per - 1) / per : 0;
}

int allreduce_keys(const allreduce_t *a, size_t n)
{
    return (int)pieces(a, n) * 2 * (a->n - 1);
}

/* Chunk c of a piece of m floats: [off, off + len). */
static void chunk(size_t m, int n, int c, size_t *off, size_t *len)
{
    size_t lo = m * (size_t)c / (size_t)n, hi = m * (size_t)(c + 1) / (size_t)n;
    *off = lo;
    *len = hi - lo;
}

static int mod(int x, int n) { return ((x % n) + n) % n; }

/* One ring step: send chunk sc of x right, receive chunk rc from the left into dst. */
static int step(allreduce_t *a, float *x, size_t m, int sc, int rc_, float *dst, transport_key_t key, int s,
                char *err, size_t errlen)
{
    int right = a->ranks[mod(a->index + 1, a->n)], left = a->ranks[mod(a->index - 1, a->n)];
    size_t soff, slen, roff, rlen;
    chunk(m, a->n, sc, &soff, &slen);
    chunk(m, a->n, rc_, &roff, &rlen);
    transport_req_t rr, sr;
    int rc = transport_recv(a->t, left, key, dst ? dst : x + roff, rlen * sizeof(float), &rr);
    if (rc)
        return pn_err(err, errlen, rc, "all-reduce step %d: cannot post the receive from rank %d", s, left);
    if ((rc = transport_send(a->t, right, key, x + soff, slen * sizeof(float), &sr))) {
        transport_fail(a->t, rc, "all-reduce send could not be posted");
        int gone = transport_wait(a->t, &rr, 1); /* failed by now: only its buffer must be let go */
        (void)gone;
        return pn_err(err, errlen, rc, "all-reduce step %d: cannot post the send to rank %d", s, right);
    }
    /* On a failure every request of the transport is failed, so neither of these, on this
     * stack, is still pending when the step returns. */
    int r1 = transport_wait(a->t, &rr, a->timeout);
    if (r1)
        transport_fail(a->t, r1, ALLREDUCE_FAILED);
    int r2 = transport_wait(a->t, &sr, r1 ? 5 : a->timeout);
    if (r2 && !r1)
        transport_fail(a->t, r2, ALLREDUCE_FAILED);
    if (r1 == -ETIMEDOUT)
        return pn_err(err, errlen, r1, "all-reduce step %d: nothing from rank %d for %.0f s", s, left, a->timeout);
    if (r1)
        return pn_err(err, errlen, r1, "all-reduce step %d: receive from rank %d failed: %s", s, left,
                      rr.why[0] ? rr.why : "transport failed");
    if (r2 == -ETIMEDOUT)
        return pn_err(err, errlen, r2, "all-reduce step %d: rank %d took nothing for %.0f s", s, right, a->timeout);
    if (r2)
        return pn_err(err, errlen, r2, "all-reduce step %d: send to rank %d failed: %s", s, right,
                      sr.why[0] ? sr.why : "transport failed");
    return 0;
}

/* One piece of m floats, keys from mb on. */
static int ring(allreduce_t *a, float *x, size_t m, int iter, int mb, char *err, size_t errlen)
{
    int n = a->n, i = a->index, rc;
    size_t off, len;
    for (int k = 0; k < n - 1; k++) { /* reduce-scatter */
        int rcv = mod(i - k - 1, n);
        transport_key_t key = {TRANSPORT_GRAD, iter, mb + k};
        if ((rc = step(a, x, m, mod(i - k, n), rcv, a->scratch, key, k, err, errlen)))
            return rc;
        if (k == 0)
            fault_point(a->ranks[i], FAULT_AT_ALLREDUCE, iter);
        chunk(m, n, rcv, &off, &len);
        for (size_t j = 0; j < len; j++)
            x[off + j] += a->scratch[j];
    }
    chunk(m, n, mod(i + 1, n), &off, &len);
    float inv = 1.0f / (float)n;
    int pow2 = (n & (n - 1)) == 0;
    for (size_t j = 0; j < len; j++) /* by a power of two exactly; else the correctly rounded quotient */
        x[off + j] = pow2 ? x[off + j] * inv : x[off + j] / (float)n;
    for (int k = 0; k < n - 1; k++) { /* all-gather */
        transport_key_t key = {TRANSPORT_GRAD, iter, mb + n - 1 + k};
        if ((rc = step(a, x, m, mod(i + 1 - k, n), mod(i - k, n), NULL, key, n - 1 + k, err, errlen)))
            return rc;
    }
    return 0;
}

int allreduce_mean(allreduce_t *a, float *buf, size_t n, int iter, int key0, char *err, size_t errlen)
{
    if (a->n == 1 || n == 0)
        return 0;
    size_t per = a->bucket_bytes / sizeof(float), np = pieces(a, n);
    long keys = (long)np * 2 * (a->n - 1);
    if (key0 < 0 || (long)ALLREDUCE_MB_BASE + (long)key0 + keys > (long)ALLREDUCE_MB_END)
        return pn_err(err, errlen, -E2BIG, "all-reduce: keys %d + %ld are past the %d keys of an iteration", key0,
                      keys, ALLREDUCE_MB_END - ALLREDUCE_MB_BASE);
    size_t need = (per < n ? per : n) / (size_t)a->n + 1;
    if (need > a->scratch_n) {
        float *s = realloc(a->scratch, need * sizeof *s);
        if (!s)
            return pn_err(err, errlen, -ENOMEM, "all-reduce: out of memory for %zu bytes", need * sizeof *s);
        a->scratch = s;
        a->scratch_n = need;
    }
    for (size_t p = 0; p < np; p++) {
        size_t lo = p * per, m = n - lo < per ? n - lo : per;
        int rc = ring(a, buf + lo, m, iter, ALLREDUCE_MB_BASE + key0 + (int)p * 2 * (a->n - 1), err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}
