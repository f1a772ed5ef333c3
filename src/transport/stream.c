/* The stream transport: one read path and one write path for every
 * connected byte stream (TCP, Unix stream sockets, pipes). Modelled on
 * asyncio's _SelectorSocketTransport: send at once when nothing is buffered,
 * buffer only the rest, flush with one writev per writability event, and end
 * every connection with exactly one connection_lost from the ready queue.
 * Unlike asyncio, a read that fills the buffer is followed by another in the
 * same readiness event (bounded), as libuv does. On a completion backend
 * (io_uring) a socket's receives and sends are the kernel's operations
 * instead: see "operations" below; the buffering, the upcalls and the end
 * of a connection are the same code. */
#include "transport/transport.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

/* What the descriptor is used for: both ways (a socket), or one way (a
 * pipe end: read pipes never write, write pipes never read). */
enum { MODE_DUPLEX, MODE_READ_PIPE, MODE_WRITE_PIPE };

struct stream {
    struct tpio_transport base;
    struct tpio__io io;
    uint8_t mode;
    bool is_socket;     /* the fd is a socket: send() with MSG_NOSIGNAL */
    bool direct;        /* a socket this transport sends to itself (not ops) */
    bool watch_reader;  /* write pipe: poll for readability to see the reader go */
    bool unwatchable;   /* write pipe on a device epoll refuses (/dev/null): never waits */
    bool read_eof;      /* EOF seen: nothing more to read */
    bool ops;           /* the backend receives and sends (io_uring): see below */
    bool rstop;         /* ops: the receive was asked to stop */
    uint8_t wblock;     /* the user's writes are refused: WB_EOF, WB_WRITER */
    uint8_t peerlen;    /* see peer (at most a sockaddr_storage) */
    /* ops: the receive and the send in flight. The order of the fields
     * keeps the struct at 216 bytes, a 224-byte malloc chunk: the idle
     * connection's memory that make bench holds against libuv's. */
    struct tpio__op rop;
    struct tpio__wbuf wbuf;
    struct tpio__op wop;
    /* peername is cached when the connection is made (asyncio: it survives a
     * reset); IP addresses fit inline, longer ones (Unix paths) and the
     * sockname, asked for rarely, go to `more`, allocated on demand. */
    union {
        struct sockaddr sa;
        struct sockaddr_in6 in6;
    } peer;
    struct stream_more *more;
};

#if defined(__x86_64__) && defined(__LP64__)
_Static_assert(sizeof(struct stream) <= 216, "an idle connection's memory: see the field order");
#endif

enum { WB_EOF = 1, WB_WRITER = 2 };

/* What few connections need, allocated on demand: a long peer address (a
 * Unix path), the sockname once asked for, a writer in the transport's
 * place (sendfile). */
struct stream_more {
    struct sockaddr_storage peer, self;
    socklen_t selflen;
    struct tpio__stream_writer *writer;
    /* ops: the chunk a send still reads after the buffer was dropped under
     * it (abort), when the kernel could not let go at once */
    struct tpio__chunk *orphan;
    /* ops: what the kernel received after pause_reading (the receive was
     * already under way), delivered after resume_reading from `held_node` */
    struct tpio__wbuf held;
    size_t held_size;
    bool held_eof, held_queued;
    int held_err;
    struct tpio__node held_node;
    struct stream *owner;
};

#define S(t) ((struct stream *)(t))

static struct stream_more *more_of(struct stream *s)
{
    if (!s->more && (s->more = tpio__calloc(1, sizeof *s->more)))
        s->more->owner = s;
    return s->more;
}

static void set_peer(struct stream *s, const struct sockaddr *a, socklen_t len)
{
    if (len <= sizeof s->peer) {
        memcpy(&s->peer, a, len);
        s->peerlen = (uint8_t)len;
    } else if (len <= sizeof(struct sockaddr_storage) && more_of(s)) {
        memcpy(&s->more->peer, a, len);
        s->peerlen = (uint8_t)len;
    }
}

static const struct sockaddr *peer_addr(const struct stream *s)
{
    return s->peerlen <= sizeof s->peer ? &s->peer.sa : (const struct sockaddr *)&s->more->peer;
}

static bool reading_active(const struct stream *s)
{
    return s->mode != MODE_WRITE_PIPE && tpio__reading_allowed(&s->base) && !s->read_eof;
}

static void update_ops(struct stream *s);
static bool stream_busy(const tpio_transport_t *t);

static void update_io(struct stream *s)
{
    if (s->ops) {
        update_ops(s);
        return;
    }
    uint32_t want = 0;
    if (!s->base.lost_scheduled) {
        if (reading_active(s) || (s->watch_reader && s->base.made))
            want |= TPIO__IN;
        if (s->base.wsize || (s->wblock & WB_WRITER))
            want |= TPIO__OUT;
    }
    if (want == s->io.registered || __builtin_expect(s->unwatchable, 0))
        return;
    int rc = tpio__watch(s->base.loop, &s->io, want);
    if (rc < 0 && want) /* the kernel refused to watch the fd: it cannot work */
        tpio__schedule_lost(&s->base, rc);
}

static void stream_reading_changed(tpio_transport_t *t) { update_io(S(t)); }

/* ---- the end of a connection ----------------------------------------------- */

static void schedule_lost(struct stream *s, int err) { tpio__schedule_lost(&s->base, err); }

/* The writer in the transport's place goes (NULL if there was none). */
static struct tpio__stream_writer *drop_writer(struct stream *s)
{
    if (!(s->wblock & WB_WRITER))
        return NULL;
    struct tpio__stream_writer *w = s->more->writer;
    s->more->writer = NULL;
    s->wblock &= (uint8_t)~WB_WRITER;
    return w;
}

/* A writer attached in the transport's place hears that it is over. */
static void end_writer(struct stream *s, int err)
{
    struct tpio__stream_writer *w = drop_writer(s);
    if (w)
        w->ended(w, err);
}

static void stream_quiesce(tpio_transport_t *t)
{
    struct stream *s = S(t);
    end_writer(s, t->lost_err ? t->lost_err : -ECONNABORTED);
    update_io(s);
}

static void stream_teardown(tpio_transport_t *t) { tpio__transport_close_fd(t, &S(t)->io); }

/* asyncio's _force_close: drop the buffer, stop everything, connection_lost. */
static void force_close(struct stream *s, int err)
{
    if (s->base.lost_scheduled)
        return;
    /* the send in flight reads the head: it outlives the buffer until the
     * kernel let go of it, which schedule_lost's drop does at once */
    struct tpio__chunk *head =
        tpio__op_busy(&s->wop) ? tpio__wbuf_take_head(&s->wbuf, &s->base.wsize) : NULL;
    tpio__wbuf_clear(&s->wbuf, &s->base.wsize);
    schedule_lost(s, err);
    if (head && tpio__op_busy(&s->wop)) {
        /* It could not: the send's completion frees it. Never freed under
         * the kernel (kept, if even that cannot be recorded). */
        struct stream_more *m = more_of(s);
        if (m)
            m->orphan = head;
    } else {
        tpio__free(head);
    }
}

/* asyncio reports to the error handler only what is not an OSError (its own
 * errors and the protocol's), plus read-pipe errors other than EIO (a closed
 * terminal); anything else reaches connection_lost alone. */
static void fatal_error(struct stream *s, int err, const char *msg)
{
    if (err <= TPIO__OWN_ERROR_BASE || err == -ENOMEM ||
        (s->mode == MODE_READ_PIPE && err != -EIO))
        tpio__transport_report(&s->base, msg, err);
    force_close(s, err);
}

/* ---- reading ------------------------------------------------------------------ */

static void on_eof(struct stream *s)
{
    tpio_transport_t *t = &s->base;
    s->read_eof = true;
    if (s->mode == MODE_READ_PIPE) {
        /* A pipe has no half-close: EOF ends it whatever the protocol says. */
        t->closing = true;
        update_io(s);
        TPIO__UPCALL_VALUE(t, false, eof_received);
        schedule_lost(s, 0);
        return;
    }
    update_io(s);
    if (!TPIO__UPCALL_VALUE(t, false, eof_received))
        tpio_transport_close(t);
}

/* A BufferedProtocol's buffer for the next bytes; NULL when the transport
 * closed inside get_buffer or the protocol gave none (the transport has
 * failed then, as asyncio's does). */
static void *ask_buffer(struct stream *s, size_t *len)
{
    tpio_transport_t *t = &s->base;
    *len = 0;
    void *buf = TPIO__UPCALL_VALUE(t, (void *)NULL, get_buffer, -1, len);
    if (t->closing)
        return NULL;
    if (!buf || *len == 0) {
        fatal_error(s, TPIO_EPROTOCOL_BUFFER, "Fatal error: protocol.get_buffer() call failed.");
        return NULL;
    }
    return buf;
}

/* A read that got no bytes: EOF, or an error (none for EAGAIN). Out of
 * line: the read paths keep only their common case. */
static __attribute__((noinline)) void read_failed(struct stream *s, ssize_t n)
{
    if (n == 0) {
        on_eof(s);
        return;
    }
    if (errno == EAGAIN || errno == EINTR)
        return;
    fatal_error(s, -errno, s->is_socket ? "Fatal read error on socket transport"
                                        : "Fatal read error on pipe transport");
}

/* A BufferedProtocol's read: into the buffer its get_buffer gives, which
 * fails the transport (as asyncio's) when it is none. One reference holds
 * the transport across both upcalls. */
static inline __attribute__((always_inline)) size_t read_buffered(struct stream *s)
{
    tpio_transport_t *t = &s->base;
    tpio_protocol_t *p = t->proto;
    size_t len = 0, ret = 0;
    tpio__transport_ref(t);
    void *buf = p->ops->get_buffer(p, -1, &len);
    ssize_t n;
    if (t->closing) {
        ;
    } else if (!buf || len == 0) {
        fatal_error(s, TPIO_EPROTOCOL_BUFFER, "Fatal error: protocol.get_buffer() call failed.");
    } else if ((n = read(s->io.fd, buf, len)) <= 0) {
        read_failed(s, n);
    } else {
        p = t->proto; /* get_buffer may have switched protocols */
        if (!p->ops->get_buffer)
            TPIO__UPCALL(t, data_received, buf, (size_t)n);
        else if (p->ops->buffer_updated)
            p->ops->buffer_updated(p, (size_t)n);
        ret = (size_t)n == len && reading_active(s) && !t->lost_scheduled ? len : 0;
    }
    tpio__transport_unref(t);
    return ret;
}

/* Returns the bytes read when they filled the whole buffer and reading may go
 * on (more is probably waiting), else 0. Inlined into both of its callers:
 * called, it costs 14 more instructions per round trip (make bench's counts). */
static inline __attribute__((always_inline)) size_t do_read(struct stream *s)
{
    tpio_transport_t *t = &s->base;
    if (t->proto->ops->get_buffer)
        return read_buffered(s);
    void *buf = t->loop->rbuf;
    size_t len = t->read_size;
    ssize_t n = read(s->io.fd, buf, len);
    if (n <= 0) {
        read_failed(s, n);
        return 0;
    }
    TPIO__UPCALL(t, data_received, buf, (size_t)n);
    return (size_t)n == len && reading_active(s) && !t->lost_scheduled ? len : 0;
}

/* A read that filled the buffer most likely left more waiting: read again now
 * instead of after another wait for readiness, as libuv does (asyncio reads once per
 * event), within bounds so that one busy connection cannot hold the loop.
 * With a 4 KiB BufferedProtocol buffer: 10-22% more throughput
 * (docs/performance.md). Out of line, so that the common case, a read that
 * did not fill the buffer, pays one test for it. */
static __attribute__((noinline)) void read_more(struct stream *s, size_t got)
{
    size_t n;
    for (int i = 1; i < TPIO__READ_BURST && got < TPIO__READ_BURST_BYTES; i++) {
        if (!(n = do_read(s)))
            break;
        got += n;
    }
}

/* ---- writing ------------------------------------------------------------------ */

static ssize_t do_send(struct stream *s, const struct iovec *iov, int cnt)
{
    ssize_t n;
    do {
        if (!s->is_socket) {
            n = writev(s->io.fd, iov, cnt);
        } else if (cnt == 1) {
            n = send(s->io.fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
        } else {
            struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)cnt};
            n = sendmsg(s->io.fd, &m, MSG_NOSIGNAL);
        }
    } while (n < 0 && errno == EINTR);
    return n;
}

static void after_drain(struct stream *s)
{
    update_io(s);
    if (s->base.closing)
        schedule_lost(s, 0);
    else if ((s->wblock & WB_EOF) && s->mode == MODE_DUPLEX)
        shutdown(s->io.fd, SHUT_WR);
    else if (s->wblock & WB_WRITER) /* its turn: what was written before it went first */
        s->more->writer->writable(s->more->writer);
}

/* Out of line: its iovec array would otherwise put a stack-protector check
 * on the read path it is inlined into. */
static __attribute__((noinline)) void flush(struct stream *s)
{
    struct iovec iov[IOV_MAX];
    int cnt = tpio__wbuf_iov(&s->wbuf, iov, IOV_MAX);
    ssize_t n = do_send(s, iov, cnt);
    if (n < 0) {
        if (errno == EAGAIN)
            return;
        fatal_error(s, -errno, "Fatal write error on transport");
        return;
    }
    tpio__wbuf_consume(&s->wbuf, &s->base.wsize, &s->base.loop->spare_chunk, (size_t)n);
    tpio__maybe_resume_protocol(&s->base);
    if (s->base.wsize == 0 && !s->base.lost_scheduled)
        after_drain(s);
}

/* The rest of a write to a descriptor the loop cannot wait for: written
 * now, as the kernel takes it (a device such as /dev/null takes it all).
 * One that would block or fails ends the transport: nothing can wait. */
static __attribute__((noinline)) int write_through(struct stream *s, const struct iovec *iov,
                                                   int cnt, size_t total, ssize_t n)
{
    size_t sent = 0;
    for (;;) {
        if (n < 0) {
            force_close(s, -errno);
            return 0;
        }
        if ((sent += (size_t)n) >= total)
            return 0;
        struct iovec rest[IOV_MAX];
        int k = 0;
        size_t skip = sent;
        for (int i = 0; i < cnt && k < IOV_MAX; i++) {
            if (skip >= iov[i].iov_len) {
                skip -= iov[i].iov_len;
                continue;
            }
            rest[k].iov_base = (char *)iov[i].iov_base + skip;
            rest[k++].iov_len = iov[i].iov_len - skip;
            skip = 0;
        }
        n = do_send(s, rest, k);
    }
}

/* After a direct send of n bytes (or -1 with errno), buffer the rest;
 * `notify`: the protocol hears pause_writing (not for an attached writer's
 * bytes, which the protocol did not write). */
static int write_rest(struct stream *s, const struct iovec *iov, int cnt, size_t total,
                      ssize_t n, bool notify)
{
    tpio_transport_t *t = &s->base;
    if (__builtin_expect(s->unwatchable, 0))
        return write_through(s, iov, cnt, total, n);
    if (n < 0) {
        if (errno != EAGAIN) {
            /* Inside the caller's write: connection_lost tells the protocol,
             * and the error handler must not run here. */
            force_close(s, -errno);
            return 0;
        }
        n = 0;
    }
    size_t sent = (size_t)n;
    if (sent == total)
        return 0;
    /* Copy what the kernel did not take. */
    for (int i = 0; i < cnt; i++) {
        size_t len = iov[i].iov_len;
        if (sent >= len) {
            sent -= len;
            continue;
        }
        if (tpio__wbuf_append(&s->wbuf, &t->wsize, &t->loop->spare_chunk,
                              (const char *)iov[i].iov_base + sent, len - sent) < 0) {
            /* Part of the stream is lost: it cannot go on. The caller hears
             * it from the return value; the error handler is not called,
             * which would run a callback inside the caller's own call. */
            force_close(s, -ENOMEM);
            return -ENOMEM;
        }
        sent = 0;
    }
    update_io(s);
    if (notify)
        tpio__maybe_pause_protocol(t);
    return 0;
}

static int ops_write(struct stream *s, const struct iovec *iov, int cnt, size_t total,
                     bool notify);

static int write_any(struct stream *s, const struct iovec *iov, int cnt, size_t total,
                     bool notify)
{
    if (total == 0 || s->base.closing)
        return 0; /* asyncio drops writes once the connection is going away */
    if (s->ops)
        return ops_write(s, iov, cnt, total, notify);
    /* Queue behind what is buffered; else send now, and copy only the rest. */
    ssize_t n = s->base.wsize ? 0 : do_send(s, iov, cnt < IOV_MAX ? cnt : IOV_MAX);
    if (__builtin_expect(n == (ssize_t)total, 1))
        return 0;
    return write_rest(s, iov, cnt, total, n, notify);
}

static int refused(const struct stream *s) { return s->wblock & WB_EOF ? -ESHUTDOWN : -EBUSY; }

static int stream_write(tpio_transport_t *t, const struct iovec *iov, int cnt, size_t total)
{
    struct stream *s = S(t);
    if (s->wblock)
        return refused(s);
    return write_any(s, iov, cnt, total, true);
}

/* tpio_transport_write's entry. The common case (an idle socket, one buffer) is one
 * send() behind one test; anything else joins the vectored path above, and
 * a partial send shares its buffering (write_rest). Measured: going through
 * stream_write for every message costs 10 more instructions per round trip
 * (147 -> 157 at 1 KiB x 10, make bench's counts). */
static int stream_write1(tpio_transport_t *t, const void *data, size_t len)
{
    struct stream *s = S(t);
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    if (__builtin_expect(t->wsize == 0 && len && !t->closing && !s->wblock && s->direct, 1)) {
        ssize_t n = send(s->io.fd, data, len, MSG_NOSIGNAL);
        if (__builtin_expect(n == (ssize_t)len, 1))
            return 0;
        if (n < 0 && errno == EINTR)
            n = 0;
        return write_rest(s, &iov, 1, len, n, true);
    }
    return stream_write(t, &iov, 1, len);
}

/* ---- readiness -------------------------------------------------------------- */

/* No reference is taken here: every upcall holds its own, and the
 * connection's own reference lasts until connection_lost has run from the
 * ready queue, never inside this call. */
static void stream_io(tpio_loop_t *loop, struct tpio__io *io, uint32_t events)
{
    (void)loop;
    struct stream *s = tpio_container_of(io, struct stream, io);
    /* IN is in the interest set exactly when reading is active (update_io
     * keeps it so), or on a write pipe watching for its reader to leave. */
    if ((events & (TPIO__IN | TPIO__HUP | TPIO__ERR)) && (io->registered & TPIO__IN)) {
        if (__builtin_expect(s->mode == MODE_WRITE_PIPE, 0)) {
            /* The reader went away (asyncio's write-pipe _read_ready). */
            force_close(s, s->base.wsize ? -EPIPE : 0);
            return;
        }
        size_t n = do_read(s);
        if (__builtin_expect(n != 0, 0))
            read_more(s, n);
    }
    if ((events & (TPIO__OUT | TPIO__HUP | TPIO__ERR)) && !s->base.lost_scheduled) {
        if (s->base.wsize && !s->ops)
            flush(s);
        else if (s->wblock & WB_WRITER)
            s->more->writer->writable(s->more->writer);
    }
}

static void stream_started(tpio_transport_t *t) { update_io(S(t)); }

/* ---- operations: the kernel receives and sends (io_uring) ---------------------
 * The same transport on a completion backend. A multishot receive stays in
 * the kernel while reading is active, and each completion's bytes — lent
 * from the backend's buffers — are delivered at once, as a read's are. A
 * write is copied whole into the write buffer and sent from there, one
 * send in flight at a time, so that the order holds and nothing is sent
 * twice; it costs a copy where epoll's direct send costs a syscall (a
 * large write, OPS_DIRECT_MIN, is sent at once when nothing is queued).
 *
 * What the contracts ask: pause_reading stops the receive, and what was
 * received meanwhile (completions already on their way) is held and
 * delivered after resume_reading; connection_lost waits for the last
 * completion of both operations (stream_busy), so that the descriptor is
 * closed only once the kernel has let go of it and the buffers the kernel
 * reads stay put until then. */

/* One data_received (or get_buffer + buffer_updated) for the first bytes of
 * p; returns how many it took, 0 when the transport failed meanwhile. */
static size_t deliver_piece(struct stream *s, const unsigned char *p, size_t n)
{
    tpio_transport_t *t = &s->base;
    if (t->proto->ops->get_buffer) {
        size_t len;
        void *buf = ask_buffer(s, &len);
        if (!buf)
            return 0;
        size_t k = n < len ? n : len;
        memcpy(buf, p, k);
        TPIO__UPCALL(t, buffer_updated, k);
        return k;
    }
    size_t k = n < t->read_size ? n : t->read_size;
    TPIO__UPCALL(t, data_received, p, k);
    return k;
}

static const char *read_error_msg(const struct stream *s)
{
    return s->is_socket ? "Fatal read error on socket transport"
                        : "Fatal read error on pipe transport";
}

static bool ops_reading(const struct stream *s)
{
    return s->mode != MODE_WRITE_PIPE && tpio__reading_allowed(&s->base) && !s->base.lost_scheduled;
}

/* Keep what came while reading was paused; false when out of memory (the
 * transport has failed then). */
static bool hold(struct stream *s, const unsigned char *p, size_t n)
{
    struct stream_more *m = more_of(s);
    if (!m || tpio__wbuf_append(&m->held, &m->held_size, &s->base.loop->spare_chunk, p, n) < 0) {
        fatal_error(s, -ENOMEM, read_error_msg(s));
        return false;
    }
    return true;
}

static bool has_held(const struct stream *s)
{
    return s->more && (s->more->held_size || s->more->held_eof || s->more->held_err);
}

static void deliver(struct stream *s, const unsigned char *p, size_t n)
{
    while (n) {
        if (!ops_reading(s)) {
            if (!s->base.closing)
                hold(s, p, n);
            return;
        }
        size_t k = deliver_piece(s, p, n);
        if (!k)
            return;
        p += k;
        n -= k;
    }
}

/* asyncio (and uvloop) ask a BufferedProtocol for a buffer before the read
 * that finds EOF: so does this, though the kernel already said. */
static void ops_eof(struct stream *s)
{
    size_t len;
    if (s->base.proto->ops->get_buffer && !ask_buffer(s, &len))
        return;
    on_eof(s);
}

/* What was held is delivered from the ready queue after resume_reading, as
 * asyncio's reads would come after it, never inside it; the receive starts
 * again only when all of it went. */
static void held_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct stream_more *m = tpio_container_of(arg, struct stream_more, held_node);
    struct stream *s = m->owner;
    tpio_transport_t *t = &s->base;
    m->held_queued = false;
    while (m->held.head && ops_reading(s)) {
        struct tpio__chunk *c = m->held.head;
        size_t k = deliver_piece(s, c->data + c->off, c->len);
        if (!k)
            break;
        tpio__wbuf_consume(&m->held, &m->held_size, &t->loop->spare_chunk, k);
    }
    if (!m->held.head && m->held_eof && ops_reading(s)) {
        m->held_eof = false;
        ops_eof(s);
    } else if (!m->held.head && m->held_err && ops_reading(s)) {
        int err = m->held_err;
        m->held_err = 0;
        fatal_error(s, err, read_error_msg(s));
    }
    update_io(s);
    tpio__transport_unref(t);
}

/* The receive's completions. */
static void rop_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                     bool more)
{
    (void)loop;
    struct stream *s = tpio_container_of(op, struct stream, rop);
    tpio_transport_t *t = &s->base;
    if (!more)
        s->rstop = false;
    if (res > 0) {
        if (t->lost_scheduled || t->closing)
            ; /* asyncio stops reading at close(): dropped */
        else if (has_held(s))
            hold(s, data, (size_t)res);
        else
            deliver(s, data, (size_t)res);
    } else if (res == 0) {
        s->read_eof = true;
        if (t->lost_scheduled || t->closing)
            ;
        else if (ops_reading(s) && !has_held(s))
            ops_eof(s);
        else if (more_of(s))
            s->more->held_eof = true;
        else
            fatal_error(s, -ENOMEM, read_error_msg(s));
    } else if (res != -ECANCELED && !t->lost_scheduled && !t->closing) {
        /* an error met while reading was paused waits, as EOF does: an
         * epoll loop would only meet it on its next read */
        s->read_eof = true;
        if (ops_reading(s) && !has_held(s))
            fatal_error(s, res, read_error_msg(s));
        else if (more_of(s))
            s->more->held_err = res;
        else
            fatal_error(s, -ENOMEM, read_error_msg(s));
    }
    if (!more) {
        update_io(s);
        if (t->lost_scheduled && !tpio__op_busy(&s->wop))
            tpio__transport_ops_done(t);
    }
}

static void wop_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                     bool more);

static void send_next(struct stream *s)
{
    struct tpio__chunk *c = s->wbuf.head;
    int rc = tpio__op_send(s->base.loop->backend, &s->wop, s->io.fd, !s->is_socket,
                           c->data + c->off, c->len, wop_done);
    if (rc < 0)
        force_close(s, rc);
}

/* The send's completion: the next part of the buffer goes, or the buffer
 * drained (after_drain, as on epoll). */
static void wop_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                     bool more)
{
    (void)loop, (void)data, (void)more;
    struct stream *s = tpio_container_of(op, struct stream, wop);
    tpio_transport_t *t = &s->base;
    if (s->more && s->more->orphan) {
        tpio__free(s->more->orphan);
        s->more->orphan = NULL;
    }
    if (!t->lost_scheduled) {
        if (res == -EAGAIN || res == -EINTR) {
            send_next(s);
        } else if (res < 0) {
            fatal_error(s, res, "Fatal write error on transport");
        } else {
            tpio__wbuf_consume(&s->wbuf, &t->wsize, &t->loop->spare_chunk, (size_t)res);
            /* resume_writing may write, which sends if nothing is in flight */
            tpio__maybe_resume_protocol(t);
            if (t->lost_scheduled || tpio__op_busy(&s->wop))
                ;
            else if (t->wsize)
                send_next(s);
            else
                after_drain(s);
        }
    }
    if (t->lost_scheduled && !stream_busy(t))
        tpio__transport_ops_done(t);
}

/* A write this large costs its copy more than a syscall: when nothing is
 * queued it is sent at once, as on epoll, and only the rest is copied
 * (bulk with a Protocol: 10% less CPU per MB by hand). Smaller ones wait
 * for the loop, so that one io_uring_enter carries every connection's.
 * A pipe's are all written at once, as asyncio's: programs (CPython's
 * test_asyncio among them) read the other end right after the write, and
 * a pipe is not where a loop's many connections are. */
#define OPS_DIRECT_MIN (8u * 1024)

/* The write is copied whole and a send goes now unless one is in flight,
 * or (OPS_DIRECT_MIN, a pipe) it is sent here. */
static int ops_write(struct stream *s, const struct iovec *iov, int cnt, size_t total,
                     bool notify)
{
    tpio_transport_t *t = &s->base;
    if ((total >= OPS_DIRECT_MIN || !s->is_socket) && !t->wsize && !tpio__op_busy(&s->wop)) {
        ssize_t n = do_send(s, iov, cnt < IOV_MAX ? cnt : IOV_MAX);
        if (n == (ssize_t)total)
            return 0;
        return write_rest(s, iov, cnt, total, n, notify);
    }
    for (int i = 0; i < cnt; i++) {
        if (tpio__wbuf_append(&s->wbuf, &t->wsize, &t->loop->spare_chunk, iov[i].iov_base,
                              iov[i].iov_len) < 0) {
            force_close(s, -ENOMEM);
            return -ENOMEM;
        }
    }
    if (!tpio__op_busy(&s->wop))
        send_next(s);
    if (notify && !t->lost_scheduled)
        tpio__maybe_pause_protocol(t);
    return 0;
}

static void update_ops(struct stream *s)
{
    tpio_transport_t *t = &s->base;
    struct tpio__backend *b = t->loop->backend;
    bool reading = ops_reading(s), held = has_held(s);
    if (reading && held && !s->more->held_queued) {
        s->more->held_queued = true;
        s->more->held_node.cb = held_cb;
        tpio__transport_ref(t);
        tpio__call_soon_node(t->loop, &s->more->held_node);
    }
    if (t->lost_scheduled) {
        /* Ending: the kernel lets go now, so that connection_lost and the
         * close come as soon as on epoll; what it still had is dropped,
         * as asyncio's abort drops the buffer. */
        tpio__op_drop(b, &s->rop);
        tpio__op_drop(b, &s->wop);
        s->rstop = false;
    }
    bool receive = reading && !held && !s->read_eof;
    if (receive && !tpio__op_busy(&s->rop)) {
        int rc = tpio__op_recv(b, &s->rop, s->io.fd, !s->is_socket, rop_done);
        if (rc < 0) {
            tpio__schedule_lost(t, rc);
            return;
        }
    } else if (!receive && tpio__op_busy(&s->rop) && !s->rstop) {
        s->rstop = true;
        tpio__op_cancel(b, &s->rop);
    }
    if (!t->lost_scheduled && t->wsize && !tpio__op_busy(&s->wop))
        send_next(s);
    /* An attached writer (sendfile) still takes its turns on writability,
     * and a write pipe still watches for its reader to leave. */
    uint32_t want = !t->lost_scheduled && (s->wblock & WB_WRITER) && !t->wsize ? TPIO__OUT : 0;
    if (!t->lost_scheduled && s->watch_reader && t->made)
        want |= TPIO__IN;
    if (want != s->io.registered) {
        int rc = tpio__watch(t->loop, &s->io, want);
        if (rc < 0 && want)
            tpio__schedule_lost(t, rc);
    }
}

/* ---- the kind's table ---------------------------------------------------------- */

static int stream_close(tpio_transport_t *t)
{
    struct stream *s = S(t);
    if (t->closing)
        return 0;
    t->closing = true;
    end_writer(s, -ECONNABORTED);
    update_io(s);
    if (t->wsize == 0)
        schedule_lost(s, 0);
    return 0;
}

static int stream_abort(tpio_transport_t *t)
{
    force_close(S(t), 0);
    return 0;
}

/* SO_LINGER with a zero timeout makes the close that follows connection_lost
 * send a reset instead of a FIN (libuv's uv_tcp_close_reset). */
static int stream_abort_reset(tpio_transport_t *t)
{
    struct stream *s = S(t);
    if (t->kind != TPIO_TRANSPORT_TCP)
        return -ENOTSUP;
    if (!t->lost_scheduled) {
        struct linger l = {.l_onoff = 1, .l_linger = 0};
        if (setsockopt(s->io.fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) < 0)
            return -errno;
    }
    force_close(s, 0);
    return 0;
}

static int stream_write_eof(tpio_transport_t *t)
{
    struct stream *s = S(t);
    if (s->wblock & WB_WRITER)
        return -EBUSY; /* the file is not sent yet */
    if (t->closing || (s->wblock & WB_EOF))
        return 0;
    s->wblock |= WB_EOF;
    if (s->mode == MODE_WRITE_PIPE)
        return stream_close(t); /* a pipe's EOF is its close, after the flush */
    if (t->wsize == 0)
        shutdown(s->io.fd, SHUT_WR);
    return 0;
}

static int stream_fd(const tpio_transport_t *t)
{
    return S(t)->io.fd >= 0 ? S(t)->io.fd : -EBADF;
}

static int stream_extra(const tpio_transport_t *t, const char *name, tpio_extra_t *out)
{
    const struct stream *s = S(t);
    if (s->io.fd < 0)
        return -ENOENT;
    if (strcmp(name, s->mode == MODE_DUPLEX ? "socket" : "pipe") == 0) {
        out->type = TPIO_EXTRA_FD;
        out->fd = s->io.fd;
        return 0;
    }
    if (s->mode == MODE_DUPLEX && strcmp(name, "peername") == 0 && s->peerlen) {
        out->type = TPIO_EXTRA_ADDR;
        out->addr = peer_addr(s);
        out->addrlen = s->peerlen;
        return 0;
    }
    if (s->mode == MODE_DUPLEX && strcmp(name, "sockname") == 0) {
        /* The answer must outlive this call: kept in the transport. */
        struct stream_more *n = more_of((struct stream *)s);
        if (!n)
            return -ENOMEM;
        if (!n->selflen) {
            socklen_t len = sizeof n->self;
            if (getsockname(s->io.fd, (struct sockaddr *)&n->self, &len) < 0)
                return -ENOENT;
            n->selflen = len;
        }
        out->type = TPIO_EXTRA_ADDR;
        out->addr = (const struct sockaddr *)&n->self;
        out->addrlen = n->selflen;
        return 0;
    }
    return -ENOENT;
}

static void stream_destroy(tpio_transport_t *t)
{
    struct stream *s = S(t);
    tpio__transport_leave_fd(t, &s->io); /* never started: the fd is the caller's */
    tpio__wbuf_clear(&s->wbuf, &t->wsize);
    if (s->more) {
        tpio__free(s->more->orphan);
        tpio__wbuf_clear(&s->more->held, &s->more->held_size);
        tpio__free(s->more);
    }
    tpio__free(s);
}

/* Pipe ends offer only their half of the interface (-ENOTSUP elsewhere). */
static const struct tpio__transport_vt read_pipe_vt = {
    .close = stream_close,
    .reading_changed = stream_reading_changed,
    .stream_reads = true,
    .extra_info = stream_extra,
    .fd = stream_fd,
    .started = stream_started,
    .quiesce = stream_quiesce,
    .teardown = stream_teardown,
    .destroy = stream_destroy,
};

static const struct tpio__transport_vt write_pipe_vt = {
    .close = stream_close,
    .abort = stream_abort,
    .write = stream_write,
    .write1 = stream_write1,
    .write_eof = stream_write_eof,
    .can_write_eof = true,
    .extra_info = stream_extra,
    .fd = stream_fd,
    .started = stream_started,
    .quiesce = stream_quiesce,
    .teardown = stream_teardown,
    .destroy = stream_destroy,
};

static bool stream_busy(const tpio_transport_t *t)
{
    return tpio__op_busy(&S(t)->rop) || tpio__op_busy(&S(t)->wop);
}

static const struct tpio__transport_vt stream_vt = {
    .busy = stream_busy,
    .close = stream_close,
    .abort = stream_abort,
    .abort_reset = stream_abort_reset,
    .write = stream_write,
    .write1 = stream_write1,
    .write_eof = stream_write_eof,
    .can_write_eof = true,
    .reading_changed = stream_reading_changed,
    .stream_reads = true,
    .extra_info = stream_extra,
    .fd = stream_fd,
    .started = stream_started,
    .quiesce = stream_quiesce,
    .teardown = stream_teardown,
    .destroy = stream_destroy,
};

/* Writing to a pipe whose reader left raises SIGPIPE, which would kill the
 * program; Python ignores it at start-up, tpio when it makes its first write
 * pipe on a non-socket (sockets use MSG_NOSIGNAL). A handler of the user's
 * own is kept. */
static void ignore_sigpipe(void)
{
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        sa.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &sa, NULL);
    }
}

int tpio__stream_new(tpio_loop_t *loop, int fd, tpio_transport_kind_t kind,
                     const struct sockaddr *peer, socklen_t peerlen, tpio_transport_t **out)
{
    struct stream *s = tpio__calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->mode = kind == TPIO_TRANSPORT_PIPE_READ    ? MODE_READ_PIPE
              : kind == TPIO_TRANSPORT_PIPE_WRITE ? MODE_WRITE_PIPE
                                                  : MODE_DUPLEX;
    const struct tpio__transport_vt *vt = s->mode == MODE_READ_PIPE    ? &read_pipe_vt
                                          : s->mode == MODE_WRITE_PIPE ? &write_pipe_vt
                                                                       : &stream_vt;
    tpio__transport_init(&s->base, loop, vt, kind);
    int rc = tpio__transport_take_fd(&s->base, &s->io, fd, stream_io);
    if (rc < 0) {
        tpio__transport_abandon(&s->base);
        return rc;
    }
    s->is_socket = true;
    /* On a completion backend the kernel receives and sends for a socket,
     * and for a pipe where it reads them with multishot reads (6.7). */
    s->ops = tpio__backend_has_ops(loop->backend);
    if (s->mode != MODE_DUPLEX) {
        /* A pipe transport may sit on a FIFO, a socket or a character device. */
        struct stat st;
        s->is_socket = fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
        /* asyncio watches a write pipe's reader only on FIFOs and sockets. */
        s->watch_reader =
            s->mode == MODE_WRITE_PIPE && (S_ISFIFO(st.st_mode) || s->is_socket);
        if (s->mode == MODE_WRITE_PIPE && !s->is_socket)
            ignore_sigpipe();
        /* connect_write_pipe lets such a device through (create/pipe.c) */
        if (s->mode == MODE_WRITE_PIPE && S_ISCHR(st.st_mode))
            s->unwatchable = tpio__fd_watchable(loop, fd) == TPIO_ENOTWATCHABLE;
        if (!s->is_socket && (s->unwatchable || !tpio__backend_has_file_ops(loop->backend)))
            s->ops = false; /* what the kernel cannot poll is written through */
    } else {
        struct sockaddr_storage ss;
        if (!peer) {
            peerlen = sizeof ss;
            if (getpeername(fd, (struct sockaddr *)&ss, &peerlen) == 0)
                peer = (struct sockaddr *)&ss;
        }
        if (peer)
            set_peer(s, peer, peerlen);
    }
    s->direct = s->is_socket && !s->ops;
    *out = &s->base;
    return 0;
}

static int stream_build(const struct tpio__ctor *self, tpio_loop_t *loop, int fd,
                        tpio_transport_kind_t kind, const struct sockaddr *peer,
                        socklen_t peerlen, const struct tpio__conn *conn)
{
    (void)self;
    tpio_transport_t *t;
    int rc = tpio__stream_new(loop, fd, kind, peer, peerlen, &t);
    if (rc < 0)
        return rc;
    rc = tpio__transport_open(t, conn);
    if (rc < 0)
        tpio__transport_abandon(t);
    return rc;
}

const struct tpio__ctor tpio__stream_ctor = {stream_build, NULL};

/* ---- a writer in the transport's place (sendfile) ------------------------------ */

static bool is_stream(const tpio_transport_t *t)
{
    return t->vt == &stream_vt || t->vt == &write_pipe_vt;
}

int tpio__stream_attach(tpio_transport_t *t, struct tpio__stream_writer *w)
{
    if (!is_stream(t))
        return -ENOTSUP;
    struct stream *s = S(t);
    if (t->closing || (s->wblock & WB_EOF))
        return -ESHUTDOWN;
    if (s->wblock & WB_WRITER)
        return -EBUSY;
    if (s->unwatchable) /* its turns come with writability, which never comes */
        return -ENOTSUP;
    if (!more_of(s))
        return -ENOMEM;
    s->more->writer = w;
    s->wblock |= WB_WRITER;
    update_io(s); /* its first turn comes with writability, from the loop */
    return 0;
}

void tpio__stream_detach(tpio_transport_t *t)
{
    struct stream *s = S(t);
    if (drop_writer(s))
        update_io(s);
}

int tpio__stream_write_raw(tpio_transport_t *t, const void *data, size_t len)
{
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    return write_any(S(t), &iov, 1, len, false);
}

int tpio__stream_socket_fd(const tpio_transport_t *t)
{
    return t->vt == &stream_vt && S(t)->io.fd >= 0 ? S(t)->io.fd : -ENOTSUP;
}
