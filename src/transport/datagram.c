/* The datagram transport (UDP and Unix datagram sockets). Modelled on
 * asyncio's _SelectorDatagramTransport (3.13): one datagram per readiness
 * event, send at once when nothing is queued, queue copies otherwise, errors
 * to error_received. On a completion backend (io_uring) the kernel receives
 * (one multishot recvmsg) and sends (one sendmsg in flight, from the
 * queue) instead: see "operations" below. */
#include "transport/transport.h"

#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

/* asyncio 3.13 counts a header per queued datagram so that empty datagrams
 * still weigh on flow control. */
#define DGRAM_HEADER 8

struct dq {
    struct dq *next;
    size_t len;
    socklen_t alen;
    int err; /* ops, held: an error met while reading was paused (no data) */
    struct sockaddr_storage addr;
    struct msghdr msg; /* ops: what the send in flight names */
    struct iovec iov;
    unsigned char data[];
};

struct dgram {
    struct tpio_transport base;
    struct tpio__io io;
    struct dq *qhead, *qtail; /* base.wsize counts them, headers included */
    struct sockaddr_storage peer, self;
    socklen_t peerlen, selflen; /* peerlen 0: not connected */
    /* ops: the receive and the send in flight (the send reads qhead), and
     * what came while reading was paused, delivered after resume_reading */
    bool ops, rstop, held_queued;
    struct tpio__op rop, wop;
    struct dq *hhead, *htail;
    struct tpio__node held_node;
};

#define D(t) ((struct dgram *)(t))

static void update_ops(struct dgram *d);
static bool dgram_busy(const tpio_transport_t *t);

static void update_io(struct dgram *d)
{
    if (d->ops) {
        update_ops(d);
        return;
    }
    uint32_t want = 0;
    if (!d->base.lost_scheduled) {
        if (tpio__reading_allowed(&d->base))
            want |= TPIO__IN;
        if (d->qhead)
            want |= TPIO__OUT;
    }
    int rc = tpio__watch(d->base.loop, &d->io, want);
    if (rc < 0 && want)
        tpio__schedule_lost(&d->base, rc);
}

static void list_free(struct dq *e)
{
    while (e) {
        struct dq *n = e->next;
        tpio__free(e);
        e = n;
    }
}

static void queue_clear(struct dgram *d)
{
    /* the kernel lets go of the send first: it reads the head */
    tpio__op_drop(d->base.loop->backend, &d->wop);
    list_free(d->qhead);
    d->qhead = d->qtail = NULL;
    d->base.wsize = 0;
}

static struct dq *dq_new(const void *data, size_t len, const struct sockaddr *addr,
                         socklen_t alen)
{
    struct dq *e = tpio__malloc(sizeof *e + len);
    if (!e)
        return NULL;
    e->next = NULL;
    e->len = len;
    e->alen = alen;
    e->err = 0;
    if (alen)
        memcpy(&e->addr, addr, alen);
    if (len)
        memcpy(e->data, data, len);
    return e;
}

static void call_error_received(struct dgram *d, int err)
{
    if (d->base.proto && !d->base.lost_scheduled)
        TPIO__UPCALL(&d->base, error_received, err);
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
    tpio__free(e);
}

/* A send error found inside sendto(): asyncio calls error_received right
 * there; we queue it so that no protocol callback runs inside the user's
 * call. If even that cannot be allocated, the error is dropped, as an
 * undeliverable datagram would be. */
static void defer_error(struct dgram *d, int err)
{
    struct deferred_error *e = tpio__malloc(sizeof *e);
    if (!e)
        return;
    e->d = d;
    e->err = err;
    tpio__transport_ref(&d->base);
    if (tpio_loop_call_soon(d->base.loop, deliver_error, e, NULL) < 0) {
        tpio__transport_unref(&d->base);
        tpio__free(e);
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
    TPIO__UPCALL(&d->base, datagram_received, buf, (size_t)n,
                 flen ? (struct sockaddr *)&from : NULL, flen);
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
        d->base.wsize -= e->len + DGRAM_HEADER;
        tpio__free(e);
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

/* No reference here, as for streams: the upcalls hold their own. */
static void dgram_io(tpio_loop_t *loop, struct tpio__io *io, uint32_t events)
{
    (void)loop;
    struct dgram *d = tpio_container_of(io, struct dgram, io);
    if ((events & (TPIO__IN | TPIO__ERR | TPIO__HUP)) && tpio__reading_allowed(&d->base))
        do_read(d);
    if ((events & (TPIO__OUT | TPIO__ERR)) && d->qhead && !d->base.lost_scheduled)
        flush(d);
}

/* ---- operations: the kernel receives and sends (io_uring) ---------------------
 * A multishot recvmsg stays in the kernel while reading is allowed, and
 * each completion is one datagram, lent from the backend's buffers. A
 * datagram is sent at once when nothing is queued, as on epoll; the queue,
 * once the kernel pushed back, is sent from its head, one sendmsg in flight.
 * As for streams: what the kernel received after pause_reading is held and
 * delivered after resume_reading, and connection_lost waits until the
 * kernel let go of both (dgram_busy). */

static bool ops_reading(const struct dgram *d)
{
    return tpio__reading_allowed(&d->base) && !d->base.lost_scheduled && !d->base.closing;
}

static void hold(struct dgram *d, struct dq *e)
{
    if (!e)
        return; /* out of memory: dropped, as the kernel drops what does not fit */
    if (d->htail)
        d->htail->next = e;
    else
        d->hhead = e;
    d->htail = e;
}

static void deliver(struct dgram *d, const void *data, size_t len, const struct sockaddr *addr,
                    socklen_t alen, int err)
{
    if (err)
        call_error_received(d, err);
    else
        TPIO__UPCALL(&d->base, datagram_received, data, len, alen ? addr : NULL, alen);
}

static void held_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct dgram *d = tpio_container_of(arg, struct dgram, held_node);
    d->held_queued = false;
    while (d->hhead && ops_reading(d)) {
        struct dq *e = d->hhead;
        d->hhead = e->next;
        if (!d->hhead)
            d->htail = NULL;
        deliver(d, e->data, e->len, (struct sockaddr *)&e->addr, e->alen, e->err);
        tpio__free(e);
    }
    update_io(d);
    tpio__transport_unref(&d->base);
}

static void rop_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                     bool more)
{
    (void)loop;
    struct dgram *d = tpio_container_of(op, struct dgram, rop);
    const struct tpio__dgram *g = data;
    if (!more)
        d->rstop = false;
    if (res != -ECANCELED && !d->base.lost_scheduled && !d->base.closing) {
        int err = res < 0 ? res : 0;
        const void *p = g ? g->data : NULL;
        size_t len = g ? g->len : 0;
        const struct sockaddr *a = g ? g->addr : NULL;
        socklen_t alen = g ? g->alen : 0;
        if (ops_reading(d) && !d->hhead) {
            deliver(d, p, len, a, alen, err);
        } else {
            struct dq *e = dq_new(p, len, a, alen);
            if (e)
                e->err = err;
            hold(d, e);
        }
    }
    if (!more) {
        update_io(d);
        if (d->base.lost_scheduled && !tpio__op_busy(&d->wop))
            tpio__transport_ops_done(&d->base);
    }
}

static void wop_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                     bool more);

static void send_head(struct dgram *d)
{
    struct dq *e = d->qhead;
    e->iov = (struct iovec){.iov_base = e->data, .iov_len = e->len};
    e->msg = (struct msghdr){.msg_iov = &e->iov, .msg_iovlen = 1};
    if (!d->peerlen && e->alen) {
        e->msg.msg_name = &e->addr;
        e->msg.msg_namelen = e->alen;
    }
    int rc = tpio__op_sendmsg(d->base.loop->backend, &d->wop, d->io.fd, &e->msg, wop_done);
    if (rc < 0)
        tpio__schedule_lost(&d->base, rc);
}

/* The head went (or failed: asyncio drops it and tells error_received). */
static void wop_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                     bool more)
{
    (void)loop, (void)data, (void)more;
    struct dgram *d = tpio_container_of(op, struct dgram, wop);
    if (!d->base.lost_scheduled && d->qhead && res != -ECANCELED) {
        if (res == -EAGAIN || res == -EINTR) {
            send_head(d);
            return;
        }
        struct dq *e = d->qhead;
        d->qhead = e->next;
        if (!d->qhead)
            d->qtail = NULL;
        d->base.wsize -= e->len + DGRAM_HEADER;
        tpio__free(e);
        if (res < 0)
            call_error_received(d, res);
        tpio__maybe_resume_protocol(&d->base);
        if (!d->base.lost_scheduled && !d->qhead && d->base.closing)
            tpio__schedule_lost(&d->base, 0);
        else
            update_io(d);
    }
    if (d->base.lost_scheduled && !dgram_busy(&d->base))
        tpio__transport_ops_done(&d->base);
}

static void update_ops(struct dgram *d)
{
    tpio_transport_t *t = &d->base;
    struct tpio__backend *b = t->loop->backend;
    bool reading = ops_reading(d);
    if (t->lost_scheduled) {
        tpio__op_drop(b, &d->rop);
        tpio__op_drop(b, &d->wop);
        d->rstop = false;
        return;
    }
    if (reading && d->hhead && !d->held_queued) {
        d->held_queued = true;
        d->held_node.cb = held_cb;
        tpio__transport_ref(t);
        tpio__call_soon_node(t->loop, &d->held_node);
    }
    bool receive = reading && !d->hhead;
    if (receive && !tpio__op_busy(&d->rop)) {
        int rc = tpio__op_recvmsg(b, &d->rop, d->io.fd, rop_done);
        if (rc < 0) {
            tpio__schedule_lost(t, rc);
            return;
        }
    } else if (!receive && tpio__op_busy(&d->rop) && !d->rstop) {
        d->rstop = true;
        tpio__op_cancel(b, &d->rop);
    }
    if (d->qhead && !tpio__op_busy(&d->wop))
        send_head(d);
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
    /* io_uring too: an idle socket sends now (asyncio's sendto), and an
     * error or a refusal is known at once; only the queue is the kernel's */
    if (!d->qhead) {
        ssize_t n = send_one(d, data, len, addr, alen);
        if (n >= 0)
            return 0;
        if (errno != EAGAIN) {
            defer_error(d, -errno);
            return 0;
        }
    }
    struct dq *e = dq_new(data, len, addr, alen);
    if (!e)
        return -ENOMEM;
    if (d->qtail)
        d->qtail->next = e;
    else
        d->qhead = e;
    d->qtail = e;
    t->wsize += len + DGRAM_HEADER;
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

static void dgram_reading_changed(tpio_transport_t *t) { update_io(D(t)); }

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

static void dgram_teardown(tpio_transport_t *t) { tpio__transport_close_fd(t, &D(t)->io); }

static void dgram_destroy(tpio_transport_t *t)
{
    tpio__transport_leave_fd(t, &D(t)->io); /* never started: the fd is the caller's */
    queue_clear(D(t));
    list_free(D(t)->hhead);
    tpio__free(t);
}

static bool dgram_busy(const tpio_transport_t *t)
{
    return tpio__op_busy(&D(t)->rop) || tpio__op_busy(&D(t)->wop);
}

static const struct tpio__transport_vt dgram_vt = {
    .close = dgram_close,
    .abort = dgram_abort,
    .reading_changed = dgram_reading_changed,
    .sendto = dgram_sendto,
    .extra_info = dgram_extra,
    .fd = dgram_fd,
    .started = dgram_reading_changed,
    .quiesce = dgram_quiesce,
    .teardown = dgram_teardown,
    .destroy = dgram_destroy,
    .busy = dgram_busy,
};

static int dgram_build(const struct tpio__ctor *self, tpio_loop_t *loop, int fd,
                       tpio_transport_kind_t kind, const struct sockaddr *peer,
                       socklen_t peerlen, const struct tpio__conn *conn)
{
    (void)self;
    (void)kind;
    (void)peer;
    (void)peerlen;
    struct dgram *d = tpio__calloc(1, sizeof *d);
    if (!d)
        return -ENOMEM;
    tpio__transport_init(&d->base, loop, &dgram_vt, TPIO_TRANSPORT_DATAGRAM);
    int rc = tpio__transport_take_fd(&d->base, &d->io, fd, dgram_io);
    if (rc < 0) {
        tpio__transport_abandon(&d->base);
        return rc;
    }
    d->peerlen = sizeof d->peer;
    if (getpeername(fd, (struct sockaddr *)&d->peer, &d->peerlen) < 0)
        d->peerlen = 0;
    d->selflen = sizeof d->self;
    if (getsockname(fd, (struct sockaddr *)&d->self, &d->selflen) < 0)
        d->selflen = 0;
    d->ops = tpio__backend_has_ops(loop->backend);
    rc = tpio__transport_open(&d->base, conn);
    if (rc < 0)
        tpio__transport_abandon(&d->base);
    return rc;
}

const struct tpio__ctor tpio__datagram_ctor = {dgram_build, NULL};
