/* Binding a server's addresses: every distinct address its hosts resolve to
 * gets one listening socket, as asyncio's create_server binds them. */
#include "create/create.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int listen_socket(const struct addrinfo *ai, const tpio_server_opts_t *o, int *out)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (tpio__flag(o->reuse_address, true) &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        goto fail;
    if (tpio__flag(o->reuse_port, false) > 0 &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto fail;
    /* One socket per family, as asyncio: an IPv6 socket must not also claim
     * the IPv4 port. */
    if (ai->ai_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0)
        goto fail;
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
        goto fail;
    *out = fd;
    return 0;
fail:;
    int err = -errno;
    close(fd);
    return err;
}

/* The addresses bound so far, over every host: one named twice (the same
 * host listed twice, or two names of one address) is bound once. */
struct bound {
    struct sockaddr_storage *addrs;
    socklen_t *lens;
    int *fds;
    size_t n, cap;
};

static bool seen(const struct bound *b, const struct addrinfo *ai)
{
    for (size_t i = 0; i < b->n; i++)
        if (b->lens[i] == ai->ai_addrlen && memcmp(&b->addrs[i], ai->ai_addr, ai->ai_addrlen) == 0)
            return true;
    return false;
}

static int add(struct bound *b, const struct addrinfo *ai, int fd)
{
    if (b->n == b->cap) {
        size_t c = b->cap ? b->cap * 2 : 4;
        struct sockaddr_storage *a = tpio__realloc(b->addrs, c * sizeof *a);
        if (a)
            b->addrs = a;
        socklen_t *l = a ? tpio__realloc(b->lens, c * sizeof *l) : NULL;
        if (l)
            b->lens = l;
        int *f = l ? tpio__realloc(b->fds, c * sizeof *f) : NULL;
        if (!f)
            return -ENOMEM;
        b->fds = f;
        b->cap = c;
    }
    memcpy(&b->addrs[b->n], ai->ai_addr, ai->ai_addrlen);
    b->lens[b->n] = ai->ai_addrlen;
    b->fds[b->n++] = fd;
    return 0;
}

int tpio__bind_hosts(const tpio_server_opts_t *o, int **fds, size_t *n)
{
    const char *one[1] = {o->host};
    const char *const *hosts = o->nhosts ? o->hosts : one;
    size_t nhosts = o->nhosts ? o->nhosts : 1;
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)o->port);
    struct addrinfo hints = {
        .ai_family = o->family,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_PASSIVE | o->flags,
    };
    struct bound b = {0};
    int rc = 0;
    for (size_t h = 0; h < nhosts && rc == 0; h++) {
        if (o->nhosts && !hosts[h]) {
            rc = -EINVAL;
            break;
        }
        struct addrinfo *res = NULL;
        rc = tpio__getaddrinfo(hosts[h], port, &hints, &res);
        for (struct addrinfo *ai = res; ai && rc == 0; ai = ai->ai_next) {
            if (ai->ai_addrlen > sizeof(struct sockaddr_storage) || seen(&b, ai))
                continue;
            int fd = -1;
            rc = listen_socket(ai, o, &fd);
            if (rc == 0 && (rc = add(&b, ai, fd)) < 0)
                close(fd);
        }
        if (res)
            freeaddrinfo(res);
    }
    if (rc == 0 && b.n == 0)
        rc = -EADDRNOTAVAIL;
    tpio__free(b.addrs);
    tpio__free(b.lens);
    /* On failure the caller closes what is in *fds. */
    *fds = b.fds;
    *n = b.n;
    return rc;
}
