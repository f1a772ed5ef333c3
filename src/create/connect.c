/* create_connection and connect_accepted_socket: resolve, then try each
 * address in turn (or race them, RFC 8305 happy eyeballs), and give the
 * winner to the constructor (a stream transport, or TLS on one). */
#include "create/create.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct attempt {
    struct tpio__io io;
    struct tpio__op cop; /* the kernel's connect (io_uring), or idle */
    struct conn_req *req;
    bool active;
};

struct conn_req {
    struct tpio__pending p; /* loop, completion, addresses, cancelling */
    const struct tpio__ctor *ctor;
    const struct addrinfo **addrs;
    struct attempt *att;
    size_t naddrs, next, nactive;
    double delay;
    int interleave;
    tpio_handle_t timer;
    int first_err;
    struct addrinfo *fixed; /* one address given directly (malloc'd), not resolved */
};

/* The memory, once the loop and a resolver thread are both done with it. */
static void req_release(struct tpio__resolve *r)
{
    struct conn_req *q = tpio_container_of(r, struct conn_req, p.r);
    if (q->fixed)
        tpio__free(q->fixed);
    else if (q->p.r.res)
        freeaddrinfo(q->p.r.res);
    if (q->p.r.local_res)
        freeaddrinfo(q->p.r.local_res);
    tpio__free(q->p.r.host);
    tpio__free(q->p.r.local_host);
    tpio__free(q->addrs);
    tpio__free(q->att);
    tpio__ctor_release(q->ctor);
    tpio__free(q);
}

static void req_free(struct conn_req *q) { tpio__pending_end(&q->p); }

/* An attempt's socket is the library's, claimed like a transport's: a
 * watcher left on its number by the user is stale, and the user cannot
 * watch it. */
static void close_fd(struct conn_req *q, int fd)
{
    tpio__fd_release(q->p.loop, fd);
    close(fd);
}

static void stop_attempt(struct conn_req *q, struct attempt *a)
{
    if (!a->active)
        return;
    tpio__op_drop(q->p.loop->backend, &a->cop); /* the kernel lets go before the close */
    tpio__watch(q->p.loop, &a->io, 0);
    close_fd(q, a->io.fd);
    a->io.fd = -1;
    a->active = false;
    q->nactive--;
}

static void fail(struct conn_req *q, int err) { tpio__pending_fail(&q->p, err); }

static void record_error(struct conn_req *q, int err)
{
    if (!q->first_err)
        q->first_err = err;
}

static void win(struct conn_req *q, struct attempt *a)
{
    if (q->timer)
        tpio_loop_cancel(q->p.loop, q->timer);
    q->timer = 0;
    int fd = a->io.fd;
    tpio__watch(q->p.loop, &a->io, 0);
    a->active = false;
    q->nactive--;
    /* The losers never reach the user: closed before the winner is built. */
    for (size_t i = 0; i < q->naddrs; i++)
        stop_attempt(q, &q->att[i]);
    tpio_transport_kind_t kind = tpio__sock_kind(fd);
    tpio__sock_tune(fd, kind);
    tpio__fd_release(q->p.loop, fd); /* the transport claims it for good */
    /* the request goes to the constructor (retired, or kept by a TLS layer) */
    q->p.conn.req = q->p.req;
    q->p.req = 0;
    int err = q->ctor->build(q->ctor, q->p.loop, fd, kind, NULL, 0, &q->p.conn);
    if (err) {
        tpio__request_done(q->p.loop, q->p.conn.req);
        close(fd);
        fail(q, err);
        return;
    }
    req_free(q);
}

static void start_next(struct conn_req *q);

/* How attempt a ended: 0 connected, or -errno. */
static void attempt_done(struct attempt *a, int err)
{
    struct conn_req *q = a->req;
    if (err == 0) {
        win(q, a);
        return;
    }
    record_error(q, err);
    stop_attempt(q, a);
    /* A failed attempt starts the next one at once (staggered_race). */
    if (q->timer)
        tpio_loop_cancel(q->p.loop, q->timer);
    q->timer = 0;
    start_next(q);
}

static void attempt_ready(tpio_loop_t *loop, struct tpio__io *io, uint32_t events)
{
    (void)loop;
    (void)events;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    attempt_done(tpio_container_of(io, struct attempt, io), -err);
}

static void connect_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                         bool more)
{
    (void)loop, (void)data, (void)more;
    attempt_done(tpio_container_of(op, struct attempt, cop), res);
}

static void delay_expired(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct conn_req *q = arg;
    q->timer = 0;
    start_next(q);
}

static int bind_local(struct conn_req *q, int fd, int family)
{
    int err = -EADDRNOTAVAIL; /* no local address of this family */
    for (struct addrinfo *l = q->p.r.local_res; l; l = l->ai_next) {
        if (l->ai_family != family)
            continue;
        if (bind(fd, l->ai_addr, l->ai_addrlen) == 0)
            return 0;
        err = -errno;
    }
    return err;
}

/* 1: connected at once, 0: in progress, <0: failed. */
static int start_attempt(struct conn_req *q, struct attempt *a, const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -errno;
    int rc = tpio__fd_claim_new(q->p.loop, fd);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    if (q->p.r.local_host) {
        rc = bind_local(q, fd, ai->ai_family);
        if (rc < 0) {
            close_fd(q, fd);
            return rc;
        }
    }
    tpio__io_init(&a->io, fd, attempt_ready);
    a->req = q;
    struct tpio__backend *b = q->p.loop->backend;
    if (tpio__backend_has_ops(b)) {
        /* The kernel connects, and says when: even a connection made at
         * once (a Unix socket) is won from the loop, as a TCP one is. */
        a->cop.tag = 0;
        rc = tpio__op_connect(b, &a->cop, fd, ai->ai_addr, ai->ai_addrlen, connect_done);
        if (rc < 0) {
            close_fd(q, fd);
            return rc;
        }
        a->active = true;
        q->nactive++;
        return 0;
    }
    do
        rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    while (rc < 0 && errno == EINTR);
    if (rc == 0) {
        a->active = true;
        q->nactive++;
        return 1;
    }
    if (errno != EINPROGRESS) {
        rc = -errno;
        close_fd(q, fd);
        return rc;
    }
    rc = tpio__watch(q->p.loop, &a->io, TPIO__OUT);
    if (rc < 0) {
        close_fd(q, fd);
        return rc;
    }
    a->active = true;
    q->nactive++;
    return 0;
}

static void start_next(struct conn_req *q)
{
    while (q->next < q->naddrs) {
        size_t i = q->next++;
        int rc = start_attempt(q, &q->att[i], q->addrs[i]);
        if (rc == 1) {
            win(q, &q->att[i]);
            return;
        }
        if (rc == 0) {
            if (q->delay > 0 && q->next < q->naddrs &&
                tpio_loop_call_later(q->p.loop, q->delay, delay_expired, q, &q->timer) < 0)
                q->timer = 0; /* no race then: the next address waits for this one */
            return;
        }
        record_error(q, rc);
    }
    if (q->nactive == 0)
        fail(q, q->first_err ? q->first_err : -ECONNREFUSED);
}

/* asyncio's _interleave_addrinfos: first_count of the first family, then
 * alternate families. */
static void order_addresses(struct conn_req *q)
{
    size_t n = 0;
    for (struct addrinfo *ai = q->p.r.res; ai; ai = ai->ai_next)
        q->addrs[n++] = ai;
    q->naddrs = n;
    if (q->interleave <= 0)
        return;
    int fams[8];
    size_t nf = 0;
    for (size_t i = 0; i < n; i++) {
        size_t f;
        for (f = 0; f < nf && fams[f] != q->addrs[i]->ai_family; f++)
            ;
        if (f == nf && nf < 8)
            fams[nf++] = q->addrs[i]->ai_family;
    }
    if (nf < 2)
        return;
    const struct addrinfo **out = tpio__malloc(n * sizeof *out);
    size_t *pos = tpio__calloc(nf, sizeof *pos);
    if (!out || !pos) {
        tpio__free(out);
        tpio__free(pos);
        return; /* keep resolver order */
    }
    size_t m = 0;
    /* next address of family f at or after pos[f] */
#define NEXT_OF(f)                                                                  \
    ({                                                                              \
        const struct addrinfo *r_ = NULL;                                           \
        while (pos[f] < n && q->addrs[pos[f]]->ai_family != fams[f])                \
            pos[f]++;                                                               \
        if (pos[f] < n)                                                             \
            r_ = q->addrs[pos[f]++];                                                \
        r_;                                                                         \
    })
    for (int k = 1; k < q->interleave; k++) {
        const struct addrinfo *a = NEXT_OF(0);
        if (!a)
            break;
        out[m++] = a;
    }
    while (m < n) {
        for (size_t f = 0; f < nf && m < n; f++) {
            const struct addrinfo *a = NEXT_OF(f);
            if (a)
                out[m++] = a;
        }
    }
#undef NEXT_OF
    memcpy(q->addrs, out, n * sizeof *out);
    tpio__free(out);
    tpio__free(pos);
}

static void resolved(struct tpio__resolve *r)
{
    struct conn_req *q = tpio_container_of(r, struct conn_req, p.r);
    if (!tpio__pending_arrived(&q->p))
        return;
    if (r->err) {
        fail(q, r->err);
        return;
    }
    size_t n = 0;
    for (struct addrinfo *ai = r->res; ai; ai = ai->ai_next)
        n++;
    if (n == 0) {
        fail(q, TPIO_EAI_NODATA);
        return;
    }
    q->addrs = tpio__malloc(n * sizeof *q->addrs);
    q->att = tpio__calloc(n, sizeof *q->att);
    if (!q->addrs || !q->att) {
        fail(q, -ENOMEM);
        return;
    }
    order_addresses(q);
    start_next(q);
}

/* A connected stream socket of the user's. */
static int wrap_socket(tpio_loop_t *loop, tpio_protocol_factory_t factory, void *factory_arg,
                       int sock, const tpio_tls_opts_t *tls, bool server, tpio_connect_cb_t cb,
                       void *cb_arg, tpio_handle_t *request)
{
    int rc = tpio__sock_check(sock, SOCK_STREAM);
    if (rc < 0)
        return rc;
    const struct tpio__ctor *ctor;
    if ((rc = tpio__ctor_for(tls, server, NULL, &ctor)) < 0)
        return rc;
    tpio_transport_kind_t kind = tpio__sock_kind(sock);
    struct tpio__conn conn = {factory, factory_arg, cb, cb_arg, NULL, 0};
    return tpio__adopt(loop, sock, kind, ctor, &conn, request);
}

int tpio__wrap_socket(tpio_loop_t *loop, tpio_protocol_factory_t factory, void *factory_arg,
                      int sock, const tpio_tls_opts_t *tls, tpio_connect_cb_t cb, void *cb_arg,
                      tpio_handle_t *request)
{
    return wrap_socket(loop, factory, factory_arg, sock, tls, false, cb, cb_arg, request);
}

/* Cancelled: the attempts end now (the completion follows from the loop). */
static void req_stop(struct tpio__pending *p)
{
    struct conn_req *q = tpio_container_of(p, struct conn_req, p);
    if (q->timer)
        tpio_loop_cancel(q->p.loop, q->timer);
    q->timer = 0;
    for (size_t i = 0; i < q->naddrs; i++)
        stop_attempt(q, &q->att[i]);
}

/* The request owns ctor from here on (released on failure too). */
static struct conn_req *req_new(tpio_loop_t *loop, const struct tpio__ctor *ctor,
                                tpio_protocol_factory_t factory, void *factory_arg,
                                tpio_connect_cb_t cb, void *cb_arg)
{
    struct conn_req *q = tpio__calloc(1, sizeof *q);
    if (!q) {
        tpio__ctor_release(ctor);
        return NULL;
    }
    struct tpio__conn conn = {factory, factory_arg, cb, cb_arg, NULL, 0};
    if (tpio__pending_init(&q->p, loop, &conn, req_release, req_stop) < 0) {
        tpio__ctor_release(ctor);
        tpio__free(q);
        return NULL;
    }
    q->ctor = ctor;
    return q;
}

/* tpio_connect_opts_t as of 0.2 (0.3 added tls). */
#define CONNECT_OPTS_V1 offsetof(tpio_connect_opts_t, tls)

int tpio_loop_create_connection(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                                void *factory_arg, const tpio_connect_opts_t *opts,
                                tpio_connect_cb_t cb, void *cb_arg, tpio_handle_t *request)
{
    if (!loop || !factory || !opts || !cb)
        return -EINVAL;
    tpio_connect_opts_t o;
    int rc = TPIO__OPTS_COPY(&o, opts, CONNECT_OPTS_V1);
    if (rc < 0)
        return rc;
    int use_sock = tpio__flag(o.use_sock, false);
    if (use_sock < 0)
        return use_sock;
    if (use_sock) {
        if (o.host || o.local_host)
            return -EINVAL; /* asyncio: host/port and sock are exclusive */
        return wrap_socket(loop, factory, factory_arg, o.sock, o.tls, false, cb, cb_arg,
                           request);
    }
    if (!o.host || !*o.host || !(o.happy_eyeballs_delay >= 0) || o.interleave < 0 ||
        (o.family != AF_UNSPEC && o.family != AF_INET && o.family != AF_INET6))
        return -EINVAL;
    const struct tpio__ctor *ctor;
    if ((rc = tpio__ctor_for(o.tls, false, o.host, &ctor)) < 0)
        return rc;
    struct conn_req *q = req_new(loop, ctor, factory, factory_arg, cb, cb_arg);
    if (!q)
        return -ENOMEM;
    q->delay = o.happy_eyeballs_delay;
    q->interleave = o.interleave ? o.interleave : (q->delay > 0 ? 1 : 0);
    q->p.r.done = resolved;
    q->p.r.host = tpio__strdup(o.host);
    q->p.r.local_host = o.local_host ? tpio__strdup(o.local_host) : NULL;
    snprintf(q->p.r.port, sizeof q->p.r.port, "%u", (unsigned)o.port);
    snprintf(q->p.r.local_port, sizeof q->p.r.local_port, "%u", (unsigned)o.local_port);
    q->p.r.hints.ai_family = o.family;
    q->p.r.hints.ai_socktype = SOCK_STREAM;
    q->p.r.hints.ai_protocol = IPPROTO_TCP;
    q->p.r.hints.ai_flags = o.flags;
    if (!q->p.r.host || (o.local_host && !q->p.r.local_host)) {
        req_free(q);
        return -ENOMEM;
    }
    rc = tpio__resolve_start(&q->p.r);
    if (rc < 0) {
        req_free(q);
        return rc;
    }
    if (request)
        *request = q->p.req;
    return 0;
}

int tpio_loop_connect_accepted_socket(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                                      void *factory_arg, int sock, const tpio_tls_opts_t *tls,
                                      tpio_connect_cb_t cb, void *cb_arg,
                                      tpio_handle_t *request)
{
    if (!loop || !factory || !cb)
        return -EINVAL;
    return wrap_socket(loop, factory, factory_arg, sock, tls, true, cb, cb_arg, request);
}

static void start_fixed(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct conn_req *q = arg;
    resolved(&q->p.r);
}

int tpio__connect_addrs(tpio_loop_t *loop, const struct tpio__ctor *ctor,
                        tpio_protocol_factory_t factory, void *factory_arg,
                        const struct addrinfo *list, double happy_eyeballs_delay,
                        tpio_connect_cb_t cb, void *cb_arg, tpio_handle_t *request)
{
    size_t n = 0;
    bool too_long = false;
    for (const struct addrinfo *a = list; a; a = a->ai_next, n++)
        too_long |= a->ai_addrlen > sizeof(struct sockaddr_storage);
    /* one block: n addrinfo entries, then n address buffers */
    struct addrinfo *ai = NULL;
    int rc = n == 0 || too_long ? -EINVAL : 0;
    if (rc == 0 && !(ai = tpio__calloc(n, sizeof *ai + sizeof(struct sockaddr_storage))))
        rc = -ENOMEM;
    if (rc < 0) {
        tpio__ctor_release(ctor);
        return rc;
    }
    struct sockaddr_storage *addrs = (struct sockaddr_storage *)(ai + n);
    size_t i = 0;
    for (const struct addrinfo *a = list; a; a = a->ai_next, i++) {
        ai[i].ai_family = a->ai_family;
        ai[i].ai_socktype = SOCK_STREAM;
        ai[i].ai_protocol = a->ai_protocol;
        ai[i].ai_addr = (struct sockaddr *)&addrs[i];
        ai[i].ai_addrlen = a->ai_addrlen;
        memcpy(&addrs[i], a->ai_addr, a->ai_addrlen);
        ai[i].ai_next = i + 1 < n ? &ai[i + 1] : NULL;
    }
    struct conn_req *q = req_new(loop, ctor, factory, factory_arg, cb, cb_arg);
    if (!q) {
        tpio__free(ai);
        return -ENOMEM;
    }
    q->delay = happy_eyeballs_delay;
    q->fixed = ai;
    q->p.r.res = ai;
    rc = tpio_loop_call_soon(loop, start_fixed, q, NULL);
    if (rc < 0)
        req_free(q);
    else if (request)
        *request = q->p.req;
    return rc;
}
