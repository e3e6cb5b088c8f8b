/* Rank, size and job token from the launcher's environment, the --dist-url parser and the
 * route lookup that names the interface a multi-host job talks over. */
#include "pipeline/jobenv.h"

#include <errno.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/limits.h"
#include "common/parse.h"
#include "pipeline/boot.h"

static int env_int(const char *name, int *out, char *err, size_t errlen)
{
    const char *v = getenv(name);
    if (!v)
        return -ENOENT;
    if (pn_parse_int(v, 0, PN_MAX_WORLD, out))
        return pn_err(err, errlen, -EINVAL, "%s='%s' is not a rank/size between 0 and %d", name, v, PN_MAX_WORLD);
    return 0;
}

int jobenv_rank(int *rank, int *size, const char **source, char *err, size_t errlen)
{
    static const char *const fam[][3] = {
        {"SLURM_PROCID", "SLURM_NTASKS", "Slurm"},
        {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "Open MPI"},
        {"PMI_RANK", "PMI_SIZE", "PMI"},
    };
    for (size_t i = 0; i < sizeof fam / sizeof *fam; i++) {
        int r, s, rc;
        if ((rc = env_int(fam[i][0], &r, err, errlen)) == -ENOENT)
            continue;
        if (rc)
            return rc;
        if ((rc = env_int(fam[i][1], &s, err, errlen)) != 0) {
            if (rc == -ENOENT)
                snprintf(err, errlen, "%s is set but %s is not", fam[i][0], fam[i][1]);
            return -EINVAL;
        }
        if (s < 1 || r >= s) {
            snprintf(err, errlen, "%s=%d is not below %s=%d", fam[i][0], r, fam[i][1], s);
            return -EINVAL;
        }
        *rank = r;
        *size = s;
        *source = fam[i][2];
        return 0;
    }
    return -ENOENT;
}

int jobenv_token(const char **token)
{
    static char buf[BOOT_TOKEN_MAX];
    const char *v;
    if ((v = getenv("PIPENEM_TOKEN")) && *v) {
        *token = v;
        return 0;
    }
    if ((v = getenv("SLURM_JOB_ID")) && *v) {
        const char *step = getenv("SLURM_STEP_ID");
        snprintf(buf, sizeof buf, "slurm-%s.%s", v, step ? step : "");
        *token = buf;
        return 0;
    }
    if ((v = getenv("PMIX_NAMESPACE")) && *v) {
        snprintf(buf, sizeof buf, "pmix-%s", v);
        *token = buf;
        return 0;
    }
    if ((v = getenv("OMPI_MCA_ess_base_jobid")) && *v) {
        snprintf(buf, sizeof buf, "ompi-%s", v);
        *token = buf;
        return 0;
    }
    return -ENOENT;
}

int jobenv_url_parse(const char *url, char *host, size_t hostlen, int *port, char *err, size_t errlen)
{
    const char *p = url;
    if (strncmp(p, "tcp://", 6) != 0) {
        snprintf(err, errlen, "--dist-url '%s' must start with tcp://", url);
        return -EINVAL;
    }
    p += 6;
    const char *hs = p, *he, *colon;
    if (*p == '[') {
        hs = p + 1;
        he = strchr(hs, ']');
        if (!he || he[1] != ':') {
            snprintf(err, errlen, "--dist-url '%s': expected tcp://[IPV6]:PORT", url);
            return -EINVAL;
        }
        colon = he + 1;
    } else {
        colon = strrchr(p, ':');
        he = colon;
    }
    if (!colon || he == hs) {
        snprintf(err, errlen, "--dist-url '%s': expected tcp://HOST:PORT", url);
        return -EINVAL;
    }
    if ((size_t)(he - hs) >= hostlen) {
        snprintf(err, errlen, "--dist-url '%s': host name too long", url);
        return -EINVAL;
    }
    int v;
    if (pn_parse_int(colon + 1, 1, 65535, &v))
        return pn_err(err, errlen, -EINVAL, "--dist-url '%s': port '%s' is not 1..65535", url, colon + 1);
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    *port = v;
    return 0;
}

int jobenv_route_ifname(const char *host, int port, char *ifname, size_t len, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM}, *ai = NULL;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int g = getaddrinfo(host, service, &hints, &ai);
    if (g) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(g));
        return -EHOSTUNREACH;
    }
    struct sockaddr_storage local;
    socklen_t ll = sizeof local;
    int fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0), rc = 0;
    /* connect() on a datagram socket only picks the route and the source address */
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) || getsockname(fd, (struct sockaddr *)&local, &ll)) {
        rc = -errno;
        snprintf(err, errlen, "no route to %s: %s", host, strerror(errno));
    }
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    if (rc)
        return rc;
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs)) {
        rc = -errno;
        snprintf(err, errlen, "cannot list the network interfaces: %s", strerror(errno));
        return rc;
    }
    rc = -ENODEV;
    for (struct ifaddrs *i = ifs; i && rc; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != local.ss_family)
            continue;
        int same = local.ss_family == AF_INET
                       ? ((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr ==
                             ((struct sockaddr_in *)&local)->sin_addr.s_addr
                       : !memcmp(&((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr,
                                 &((struct sockaddr_in6 *)&local)->sin6_addr, sizeof(struct in6_addr));
        if (same && strlen(i->ifa_name) < len) {
            snprintf(ifname, len, "%s", i->ifa_name);
            rc = 0;
        }
    }
    freeifaddrs(ifs);
    if (rc)
        snprintf(err, errlen, "no interface of this host holds the address that reaches %s", host);
    return rc;
}
