/* create_datagram_endpoint: resolve and bind/connect a SOCK_DGRAM socket
 * (UDP or Unix), then hand it to the datagram transport's constructor. */
#include "create/create.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct dg_req {
    struct tpio__pending p; /* r: host = remote, local_host = local */
    bool reuse_port, allow_broadcast, want_local, want_remote;
};

/* The memory, once the loop and a resolver thread are both done with it. */
static void dg_release(struct tpio__resolve *r)
{
    struct dg_req *q = tpio_container_of(r, struct dg_req, p.r);
    if (q->p.r.res)
        freeaddrinfo(q->p.r.res);
    if (q->p.r.local_res)
        freeaddrinfo(q->p.r.local_res);
    tpio__free(q->p.r.host);
    tpio__free(q->p.r.local_host);
    tpio__free(q);
}

static void dg_free(struct dg_req *q) { tpio__pending_end(&q->p); }

static int set_options(int fd, bool reuse_port, bool allow_broadcast)
{
    int one = 1;
    if (reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        return -errno;
    if (allow_broadcast && setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one) < 0)
        return -errno;
    return 0;
}

/* One socket of `family`, bound to `local` and connected to `remote` (each
 * may be NULL). Returns the fd or -errno. */
static int open_socket(int family, int proto, const struct sockaddr *local, socklen_t llen,
                       const struct sockaddr *remote, socklen_t rlen, bool reuse_port,
                       bool allow_broadcast)
{
    int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
    if (fd < 0)
        return -errno;
    int rc = set_options(fd, reuse_port, allow_broadcast);
    if (rc == 0 && local && bind(fd, local, llen) < 0)
        rc = -errno;
    if (rc == 0 && remote && connect(fd, remote, rlen) < 0)
        rc = -errno;
    if (rc) {
        close(fd);
        return rc;
    }
    return fd;
}

static void dg_resolved(struct tpio__resolve *r)
{
    struct dg_req *q = tpio_container_of(r, struct dg_req, p.r);
    if (!tpio__pending_arrived(&q->p))
        return;
    int err = r->err;
    int fd = -1;
    if (!err) {
        /* Every (local, remote) pair of one family, in resolver order. */
        err = -EADDRNOTAVAIL;
        struct addrinfo none = {0};
        struct addrinfo *locals = q->want_local ? r->local_res : &none;
        struct addrinfo *remotes = q->want_remote ? r->res : &none;
        for (struct addrinfo *l = locals; l && fd < 0; l = l->ai_next) {
            for (struct addrinfo *m = remotes; m && fd < 0; m = m->ai_next) {
                int fam = q->want_local ? l->ai_family : m->ai_family;
                if (q->want_local && q->want_remote && l->ai_family != m->ai_family)
                    continue;
                int rc = open_socket(fam, q->p.r.hints.ai_protocol,
                                     q->want_local ? l->ai_addr : NULL,
                                     q->want_local ? l->ai_addrlen : 0,
                                     q->want_remote ? m->ai_addr : NULL,
                                     q->want_remote ? m->ai_addrlen : 0, q->reuse_port,
                                     q->allow_broadcast);
                if (rc >= 0)
                    fd = rc;
                else
                    err = rc;
            }
        }
        tpio__pending_retire(&q->p); /* the factory runs in build */
        if (fd >= 0) {
            err = tpio__datagram_ctor.build(&tpio__datagram_ctor, q->p.loop, fd,
                                            TPIO_TRANSPORT_DATAGRAM, NULL, 0, &q->p.conn);
            if (err)
                close(fd);
        }
    }
    tpio_connect_cb_t cb = q->p.conn.cb;
    void *arg = q->p.conn.cb_arg;
    tpio_loop_t *loop = q->p.loop;
    dg_free(q);
    if (err)
        cb(loop, NULL, NULL, err, arg);
}

/* A socket ready at once (a Unix path, no address, sock=): the transport is
 * built from the loop all the same. */
static int endpoint_sync(tpio_loop_t *loop, int fd, const struct tpio__conn *conn,
                         tpio_handle_t *request)
{
    return tpio__adopt(loop, fd, TPIO_TRANSPORT_DATAGRAM, &tpio__datagram_ctor, conn, request);
}

static int endpoint_unix(tpio_loop_t *loop, const tpio_datagram_opts_t *o,
                         const struct tpio__conn *conn, bool reuse_port, bool allow_broadcast,
                         tpio_handle_t *request)
{
    struct sockaddr_un l, r;
    socklen_t llen = 0, rlen = 0;
    int rc;
    /* the flags were checked by the caller */
    bool la = o->local_abstract == TPIO_ON, ra = o->remote_abstract == TPIO_ON;
    if (o->local_path && (rc = tpio__unix_addr(o->local_path, o->local_path_len, la, &l, &llen)) < 0)
        return rc;
    if (o->remote_path &&
        (rc = tpio__unix_addr(o->remote_path, o->remote_path_len, ra, &r, &rlen)) < 0)
        return rc;
    if (o->local_path)
        tpio__unix_remove_stale(&l, llen);
    int fd = open_socket(AF_UNIX, o->proto, o->local_path ? (struct sockaddr *)&l : NULL, llen,
                         o->remote_path ? (struct sockaddr *)&r : NULL, rlen, reuse_port,
                         allow_broadcast);
    if (fd < 0)
        return fd;
    rc = endpoint_sync(loop, fd, conn, request);
    if (rc)
        close(fd);
    return rc;
}

/* tpio_datagram_opts_t as of 0.2. */
#define DATAGRAM_OPTS_V1 sizeof(tpio_datagram_opts_t)

int tpio_loop_create_datagram_endpoint(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                                       void *factory_arg, const tpio_datagram_opts_t *opts,
                                       tpio_connect_cb_t cb, void *cb_arg,
                                       tpio_handle_t *request)
{
    if (!loop || !factory || !opts || !cb)
        return -EINVAL;
    tpio_datagram_opts_t o;
    int rc = TPIO__OPTS_COPY(&o, opts, DATAGRAM_OPTS_V1);
    if (rc < 0)
        return rc;
    int use_sock = tpio__flag(o.use_sock, false), reuse_port = tpio__flag(o.reuse_port, false),
        allow_broadcast = tpio__flag(o.allow_broadcast, false),
        local_abstract = tpio__flag(o.local_abstract, false),
        remote_abstract = tpio__flag(o.remote_abstract, false);
    if (use_sock < 0 || reuse_port < 0 || allow_broadcast < 0 || local_abstract < 0 ||
        remote_abstract < 0)
        return -EINVAL;
    struct tpio__conn conn = {factory, factory_arg, cb, cb_arg, NULL, 0};
    bool inet_opts = o.local_host || o.remote_host || o.local_port || o.remote_port;
    bool unix_opts = o.local_path || o.remote_path || o.local_path_len || o.remote_path_len ||
                     local_abstract || remote_abstract;
    if (use_sock) {
        if (inet_opts || unix_opts || o.family || o.proto || o.flags || reuse_port ||
            allow_broadcast)
            return -EINVAL; /* asyncio: sock excludes every other option */
        if ((rc = tpio__sock_check(o.sock, SOCK_DGRAM)) < 0)
            return rc;
        return endpoint_sync(loop, o.sock, &conn, request);
    }
    if (o.family == AF_UNIX || unix_opts) {
        if (inet_opts || (o.family && o.family != AF_UNIX))
            return -EINVAL;
        return endpoint_unix(loop, &o, &conn, reuse_port, allow_broadcast, request);
    }
    if (o.family != AF_UNSPEC && o.family != AF_INET && o.family != AF_INET6)
        return -EAFNOSUPPORT;
    if (!o.local_host && !o.remote_host) {
        /* asyncio: with no address the family decides the socket */
        if (o.family == AF_UNSPEC)
            return -EINVAL;
        int fd = open_socket(o.family, o.proto, NULL, 0, NULL, 0, reuse_port, allow_broadcast);
        if (fd < 0)
            return fd;
        rc = endpoint_sync(loop, fd, &conn, request);
        if (rc)
            close(fd);
        return rc;
    }
    struct dg_req *q = tpio__calloc(1, sizeof *q);
    if (!q)
        return -ENOMEM;
    if ((rc = tpio__pending_init(&q->p, loop, &conn, dg_release, NULL)) < 0) {
        tpio__free(q);
        return rc;
    }
    q->reuse_port = reuse_port;
    q->allow_broadcast = allow_broadcast;
    q->want_local = o.local_host != NULL;
    q->want_remote = o.remote_host != NULL;
    q->p.r.done = dg_resolved;
    q->p.r.host = o.remote_host ? tpio__strdup(o.remote_host) : NULL;
    q->p.r.local_host = o.local_host ? tpio__strdup(o.local_host) : NULL;
    snprintf(q->p.r.port, sizeof q->p.r.port, "%u", (unsigned)o.remote_port);
    snprintf(q->p.r.local_port, sizeof q->p.r.local_port, "%u", (unsigned)o.local_port);
    q->p.r.hints.ai_family = o.family;
    q->p.r.hints.ai_socktype = SOCK_DGRAM;
    q->p.r.hints.ai_protocol = o.proto;
    q->p.r.hints.ai_flags = o.flags;
    if ((o.remote_host && !q->p.r.host) || (o.local_host && !q->p.r.local_host)) {
        dg_free(q);
        return -ENOMEM;
    }
    rc = tpio__resolve_start(&q->p.r);
    if (rc < 0) {
        dg_free(q);
        return rc;
    }
    if (request)
        *request = q->p.req;
    return 0;
}
