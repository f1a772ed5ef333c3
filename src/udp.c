/* The datagram transport (UDP and Unix datagram sockets) and
 * create_datagram_endpoint. Modelled on asyncio's _SelectorDatagramTransport
 * (3.13): one datagram per readiness event, send at once when nothing is
 * queued, queue copies otherwise, errors to error_received. */
#include "internal.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* asyncio 3.13 counts a header per queued datagram so that empty datagrams
 * still weigh on flow control. */
#define DGRAM_HEADER 8

struct dq {
    struct dq *next;
    size_t len;
    socklen_t alen;
    struct sockaddr_storage addr;
    unsigned char data[];
};

struct dgram {
    struct tpio_transport base;
    struct tpio__io io;
    bool made, paused;
    struct dq *qhead, *qtail;
    size_t qsize;
    struct sockaddr_storage peer, self;
    socklen_t peerlen, selflen; /* peerlen 0: not connected */
    tpio_connect_cb cb;
    void *cb_arg;
    tpio_protocol_t *first_proto;
};

#define D(t) ((struct dgram *)(t))

static void update_io(struct dgram *d)
{
    uint32_t want = 0;
    if (!d->base.lost_scheduled) {
        if (d->made && !d->paused && !d->base.closing)
            want |= TPIO__IN;
        if (d->qhead)
            want |= TPIO__OUT;
    }
    int rc = tpio__io_set(d->base.loop, &d->io, want);
    if (rc < 0 && want)
        tpio__schedule_lost(&d->base, rc);
}

static void queue_clear(struct dgram *d)
{
    while (d->qhead) {
        struct dq *e = d->qhead;
        d->qhead = e->next;
        free(e);
    }
    d->qtail = NULL;
    d->qsize = 0;
}

static void call_error_received(struct dgram *d, int err)
{
    tpio_protocol_t *p = d->base.proto;
    if (p && !d->base.lost_scheduled && p->ops->error_received)
        p->ops->error_received(p, err);
}

struct deferred_error {
    struct dgram *d;
    int err;
};

static void deliver_error(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct deferred_error *e = arg;
    call_error_received(e->d, e->err);
    tpio__transport_unref(&e->d->base);
    free(e);
}

/* A send error found inside sendto(): asyncio calls error_received right
 * there; we queue it so that no protocol callback runs inside the user's
 * call. If even that cannot be allocated, the error is dropped, as an
 * undeliverable datagram would be. */
static void defer_error(struct dgram *d, int err)
{
    struct deferred_error *e = malloc(sizeof *e);
    if (!e)
        return;
    e->d = d;
    e->err = err;
    tpio__transport_ref(&d->base);
    if (tpio_call_soon(d->base.loop, deliver_error, e, NULL) < 0) {
        tpio__transport_unref(&d->base);
        free(e);
    }
}

static ssize_t send_one(struct dgram *d, const void *data, size_t len,
                        const struct sockaddr *addr, socklen_t alen)
{
    ssize_t n;
    do {
        if (d->peerlen)
            n = send(d->io.fd, data, len, MSG_NOSIGNAL);
        else
            n = sendto(d->io.fd, data, len, MSG_NOSIGNAL, addr, alen);
    } while (n < 0 && errno == EINTR);
    return n;
}

static void do_read(struct dgram *d)
{
    struct sockaddr_storage from;
    socklen_t flen = sizeof from;
    unsigned char *buf = d->base.loop->rbuf;
    ssize_t n = recvfrom(d->io.fd, buf, TPIO__READ_SIZE, 0, (struct sockaddr *)&from, &flen);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            call_error_received(d, -errno);
        return;
    }
    tpio_protocol_t *p = d->base.proto;
    if (p->ops->datagram_received)
        p->ops->datagram_received(p, buf, (size_t)n, flen ? (struct sockaddr *)&from : NULL,
                                  flen);
}

static void flush(struct dgram *d)
{
    while (d->qhead) {
        struct dq *e = d->qhead;
        ssize_t n = send_one(d, e->data, e->len, (struct sockaddr *)&e->addr, e->alen);
        if (n < 0 && errno == EAGAIN)
            break;
        d->qhead = e->next;
        if (!d->qhead)
            d->qtail = NULL;
        d->qsize -= e->len + DGRAM_HEADER;
        free(e);
        if (n < 0) {
            call_error_received(d, -errno);
            if (d->base.lost_scheduled)
                return;
            break; /* asyncio stops here and waits for the next event */
        }
    }
    tpio__maybe_resume_protocol(&d->base);
    if (d->base.lost_scheduled)
        return;
    update_io(d);
    if (!d->qhead && d->base.closing)
        tpio__schedule_lost(&d->base, 0);
}

static void dgram_io(tpio_loop_t *loop, struct tpio__io *io, uint32_t events)
{
    (void)loop;
    struct dgram *d = tpio_container_of(io, struct dgram, io);
    tpio__transport_ref(&d->base);
    if ((events & (TPIO__IN | TPIO__ERR | TPIO__HUP)) && d->made && !d->paused &&
        !d->base.closing)
        do_read(d);
    if ((events & (TPIO__OUT | TPIO__ERR)) && d->qhead && !d->base.lost_scheduled)
        flush(d);
    tpio__transport_unref(&d->base);
}

/* Equal as asyncio compares address tuples: by content, whatever length the
 * caller passed for its sockaddr buffer. */
static bool same_addr(const struct sockaddr *a, socklen_t alen, const struct sockaddr_storage *b,
                      socklen_t blen)
{
    if (alen < sizeof(sa_family_t) || a->sa_family != b->ss_family)
        return false;
    switch (a->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return alen >= sizeof *x && x->sin_port == y->sin_port &&
               x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return alen >= sizeof *x && x->sin6_port == y->sin6_port &&
               x->sin6_scope_id == y->sin6_scope_id &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    case AF_UNIX: {
        size_t off = offsetof(struct sockaddr_un, sun_path);
        const char *x = ((const struct sockaddr_un *)a)->sun_path;
        const char *y = ((const struct sockaddr_un *)b)->sun_path;
        size_t xl = alen > off ? alen - off : 0, yl = blen > off ? blen - off : 0;
        if (xl && x[0]) /* a path: up to its NUL */
            xl = strnlen(x, xl);
        if (yl && y[0])
            yl = strnlen(y, yl);
        return xl == yl && memcmp(x, y, xl) == 0;
    }
    default:
        return alen == blen && memcmp(a, b, alen) == 0;
    }
}

static int dgram_sendto(tpio_transport_t *t, const void *data, size_t len,
                        const struct sockaddr *addr, socklen_t alen)
{
    struct dgram *d = D(t);
    if (d->peerlen) {
        if (addr && !same_addr(addr, alen, &d->peer, d->peerlen))
            return -EINVAL;
        addr = NULL;
        alen = 0;
    } else if (!addr) {
        return -EDESTADDRREQ;
    } else if (alen > sizeof(struct sockaddr_storage)) {
        return -EINVAL;
    }
    if (t->closing)
        return 0;
    if (!d->qhead) {
        ssize_t n = send_one(d, data, len, addr, alen);
        if (n >= 0)
            return 0;
        if (errno != EAGAIN) {
            defer_error(d, -errno);
            return 0;
        }
    }
    struct dq *e = malloc(sizeof *e + len);
    if (!e)
        return -ENOMEM;
    e->next = NULL;
    e->len = len;
    e->alen = alen;
    if (alen)
        memcpy(&e->addr, addr, alen);
    if (len)
        memcpy(e->data, data, len);
    if (d->qtail)
        d->qtail->next = e;
    else
        d->qhead = e;
    d->qtail = e;
    d->qsize += len + DGRAM_HEADER;
    update_io(d);
    tpio__maybe_pause_protocol(t);
    return 0;
}

static int dgram_close(tpio_transport_t *t)
{
    struct dgram *d = D(t);
    if (t->closing)
        return 0;
    t->closing = true;
    update_io(d);
    if (!d->qhead)
        tpio__schedule_lost(t, 0);
    return 0;
}

static int dgram_abort(tpio_transport_t *t)
{
    if (t->lost_scheduled)
        return 0;
    queue_clear(D(t));
    tpio__schedule_lost(t, 0);
    return 0;
}

static int dgram_pause_reading(tpio_transport_t *t)
{
    struct dgram *d = D(t);
    if (t->closing || d->paused)
        return 0;
    d->paused = true;
    update_io(d);
    return 0;
}

static int dgram_resume_reading(tpio_transport_t *t)
{
    struct dgram *d = D(t);
    if (t->closing || !d->paused)
        return 0;
    d->paused = false;
    update_io(d);
    return 0;
}

static bool dgram_is_reading(const tpio_transport_t *t) { return !D(t)->paused && !t->closing; }

static size_t dgram_buffer_size(const tpio_transport_t *t) { return D(t)->qsize; }

static int dgram_fd(const tpio_transport_t *t) { return D(t)->io.fd >= 0 ? D(t)->io.fd : -EBADF; }

static int dgram_extra(const tpio_transport_t *t, const char *name, tpio_extra_t *out)
{
    const struct dgram *d = D(t);
    if (d->io.fd < 0)
        return -ENOENT;
    if (strcmp(name, "socket") == 0) {
        out->type = TPIO_EXTRA_FD;
        out->fd = d->io.fd;
        return 0;
    }
    const struct sockaddr_storage *a = NULL;
    socklen_t alen = 0;
    if (strcmp(name, "peername") == 0) {
        a = &d->peer;
        alen = d->peerlen;
    } else if (strcmp(name, "sockname") == 0) {
        a = &d->self;
        alen = d->selflen;
    }
    if (!a || !alen)
        return -ENOENT;
    out->type = TPIO_EXTRA_ADDR;
    out->addr = (const struct sockaddr *)a;
    out->addrlen = alen;
    return 0;
}

static void dgram_quiesce(tpio_transport_t *t) { update_io(D(t)); }

static void dgram_teardown(tpio_transport_t *t)
{
    struct dgram *d = D(t);
    tpio__io_set(t->loop, &d->io, 0);
    if (d->io.fd >= 0)
        close(d->io.fd);
    d->io.fd = -1;
}

static void dgram_destroy(tpio_transport_t *t)
{
    queue_clear(D(t));
    free(t);
}

static const struct tpio__transport_vt dgram_vt = {
    .close = dgram_close,
    .abort = dgram_abort,
    .pause_reading = dgram_pause_reading,
    .resume_reading = dgram_resume_reading,
    .is_reading = dgram_is_reading,
    .write_buffer_size = dgram_buffer_size,
    .sendto = dgram_sendto,
    .extra_info = dgram_extra,
    .fd = dgram_fd,
    .quiesce = dgram_quiesce,
    .teardown = dgram_teardown,
    .destroy = dgram_destroy,
};

static void dgram_start(tpio_loop_t *loop, void *arg)
{
    struct dgram *d = arg;
    tpio_transport_t *t = &d->base;
    tpio_protocol_t *p = t->proto;
    if (p->ops->connection_made)
        p->ops->connection_made(p, t);
    d->made = true;
    update_io(d);
    if (d->cb)
        d->cb(loop, t, d->first_proto, 0, d->cb_arg);
    tpio__transport_unref(t);
}

/* Wrap a ready SOCK_DGRAM socket (a tpio__make_fn); takes the fd on success. */
static int dgram_new(tpio_loop_t *loop, int fd, int kind, tpio_protocol_t *p,
                     tpio_connect_cb cb, void *cb_arg)
{
    (void)kind;
    struct dgram *d = calloc(1, sizeof *d);
    if (!d)
        return -ENOMEM;
    tpio__transport_init(&d->base, loop, &dgram_vt, TPIO_TRANSPORT_DATAGRAM, p);
    tpio__io_init(&d->io, fd, dgram_io);
    d->cb = cb;
    d->cb_arg = cb_arg;
    d->first_proto = p;
    d->peerlen = sizeof d->peer;
    if (getpeername(fd, (struct sockaddr *)&d->peer, &d->peerlen) < 0)
        d->peerlen = 0;
    d->selflen = sizeof d->self;
    if (getsockname(fd, (struct sockaddr *)&d->self, &d->selflen) < 0)
        d->selflen = 0;
    tpio__transport_ref(&d->base); /* held by the scheduled start */
    if (tpio_call_soon(loop, dgram_start, d, NULL) < 0) {
        tpio__transport_abandon(&d->base);
        free(d);
        return -ENOMEM;
    }
    return 0;
}

/* ---- create_datagram_endpoint ------------------------------------------------- */

struct dg_req {
    tpio_loop_t *loop;
    tpio_protocol_factory_t factory;
    void *factory_arg;
    tpio_connect_cb cb;
    void *cb_arg;
    bool reuse_port, allow_broadcast, want_local, want_remote;
    struct tpio__resolve r; /* host = remote, local_host = local */
};

static void dg_free(struct dg_req *q)
{
    if (q->r.res)
        freeaddrinfo(q->r.res);
    if (q->r.local_res)
        freeaddrinfo(q->r.local_res);
    free(q->r.host);
    free(q->r.local_host);
    q->loop->npending--;
    free(q);
}

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
    struct dg_req *q = tpio_container_of(r, struct dg_req, r);
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
                int rc = open_socket(fam, q->r.hints.ai_protocol,
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
        if (fd >= 0) {
            tpio_protocol_t *p = q->factory(q->factory_arg);
            err = !p || !p->ops ? -ECONNABORTED : dgram_new(q->loop, fd, 0, p, q->cb, q->cb_arg);
            if (err)
                close(fd);
        }
    }
    tpio_connect_cb cb = q->cb;
    void *arg = q->cb_arg;
    tpio_loop_t *loop = q->loop;
    dg_free(q);
    if (err)
        cb(loop, NULL, NULL, err, arg);
}

static int unix_addr(const char *path, struct sockaddr_un *sun, socklen_t *len)
{
    size_t n = strlen(path);
    if (n == 0)
        return -EINVAL;
    if (n + 1 > sizeof sun->sun_path)
        return -ENAMETOOLONG;
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path, path, n);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}

static int endpoint_sync(tpio_loop_t *loop, int fd, tpio_protocol_factory_t factory,
                         void *factory_arg, tpio_connect_cb cb, void *cb_arg)
{
    int rc = tpio__adopt(loop, fd, 0, dgram_new, factory, factory_arg, cb, cb_arg);
    if (rc)
        close(fd);
    return rc;
}

static int endpoint_unix(tpio_loop_t *loop, tpio_protocol_factory_t factory, void *factory_arg,
                         const tpio_datagram_opts_t *o, tpio_connect_cb cb, void *cb_arg)
{
    struct sockaddr_un l, r;
    socklen_t llen = 0, rlen = 0;
    int rc;
    if (o->local_path && (rc = unix_addr(o->local_path, &l, &llen)) < 0)
        return rc;
    if (o->remote_path && (rc = unix_addr(o->remote_path, &r, &rlen)) < 0)
        return rc;
    if (o->local_path) {
        struct stat st;
        if (stat(o->local_path, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(o->local_path); /* stale socket file, as asyncio */
    }
    int fd = open_socket(AF_UNIX, o->proto, o->local_path ? (struct sockaddr *)&l : NULL, llen,
                         o->remote_path ? (struct sockaddr *)&r : NULL, rlen, o->reuse_port,
                         o->allow_broadcast);
    if (fd < 0)
        return fd;
    return endpoint_sync(loop, fd, factory, factory_arg, cb, cb_arg);
}

int tpio_create_datagram_endpoint(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                                  void *factory_arg, const tpio_datagram_opts_t *o,
                                  tpio_connect_cb cb, void *cb_arg)
{
    if (!loop || !factory || !o || !cb)
        return -EINVAL;
    bool inet_opts = o->local_host || o->remote_host || o->local_port || o->remote_port;
    bool unix_opts = o->local_path || o->remote_path;
    if (o->use_sock) {
        if (inet_opts || unix_opts || o->family || o->proto || o->flags || o->reuse_port ||
            o->allow_broadcast)
            return -EINVAL; /* asyncio: sock excludes every other option */
        struct stat st;
        int type = 0;
        socklen_t tl = sizeof type;
        if (o->sock < 0)
            return -EBADF;
        if (fstat(o->sock, &st) < 0)
            return -errno;
        if (!S_ISSOCK(st.st_mode))
            return -ENOTSOCK;
        if (getsockopt(o->sock, SOL_SOCKET, SO_TYPE, &type, &tl) < 0)
            return -errno;
        if (type != SOCK_DGRAM)
            return -EPROTOTYPE;
        int fl = fcntl(o->sock, F_GETFL);
        if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(o->sock, F_SETFL, fl | O_NONBLOCK) < 0))
            return -errno;
        return tpio__adopt(loop, o->sock, 0, dgram_new, factory, factory_arg, cb, cb_arg);
    }
    if (o->family == AF_UNIX || unix_opts) {
        if (inet_opts || (o->family && o->family != AF_UNIX))
            return -EINVAL;
        return endpoint_unix(loop, factory, factory_arg, o, cb, cb_arg);
    }
    if (o->family != AF_UNSPEC && o->family != AF_INET && o->family != AF_INET6)
        return -EAFNOSUPPORT;
    if (!o->local_host && !o->remote_host) {
        /* asyncio: with no address the family decides the socket */
        if (o->family == AF_UNSPEC)
            return -EINVAL;
        int fd = open_socket(o->family, o->proto, NULL, 0, NULL, 0, o->reuse_port,
                             o->allow_broadcast);
        if (fd < 0)
            return fd;
        return endpoint_sync(loop, fd, factory, factory_arg, cb, cb_arg);
    }
    struct dg_req *q = calloc(1, sizeof *q);
    if (!q)
        return -ENOMEM;
    q->loop = loop;
    q->factory = factory;
    q->factory_arg = factory_arg;
    q->cb = cb;
    q->cb_arg = cb_arg;
    q->reuse_port = o->reuse_port;
    q->allow_broadcast = o->allow_broadcast;
    q->want_local = o->local_host != NULL;
    q->want_remote = o->remote_host != NULL;
    q->r.loop = loop;
    q->r.done = dg_resolved;
    q->r.host = o->remote_host ? strdup(o->remote_host) : NULL;
    q->r.local_host = o->local_host ? strdup(o->local_host) : NULL;
    snprintf(q->r.port, sizeof q->r.port, "%u", (unsigned)o->remote_port);
    snprintf(q->r.local_port, sizeof q->r.local_port, "%u", (unsigned)o->local_port);
    q->r.hints.ai_family = o->family;
    q->r.hints.ai_socktype = SOCK_DGRAM;
    q->r.hints.ai_protocol = o->proto;
    q->r.hints.ai_flags = o->flags;
    loop->npending++;
    if ((o->remote_host && !q->r.host) || (o->local_host && !q->r.local_host)) {
        dg_free(q);
        return -ENOMEM;
    }
    int rc = tpio__resolve_start(&q->r);
    if (rc < 0) {
        dg_free(q);
        return rc;
    }
    return 0;
}
