/* The stream transport's core, under stream.c: what both ways of doing its
 * I/O share — the state's upkeep (the interest set on a readiness backend,
 * the kernel's operations on io_uring), the end of a connection, sends and
 * the buffering of what the kernel did not take — and the operations' way
 * itself. stream.c, above, holds the transport's table, its constructor and
 * the readiness backend's read and write paths, and calls down here; this
 * file calls nothing of its. */
#include "transport/stream_core.h"

#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- the state's upkeep, the end of a connection ------------------------------- */

static void update_ops(struct stream *s);

struct stream_more *tpio__stream_more(struct stream *s)
{
    if (!s->more && (s->more = tpio__calloc(1, sizeof *s->more)))
        s->more->owner = s;
    return s->more;
}

void tpio__stream_update_io(struct stream *s)
{
    if (s->ops) {
        update_ops(s);
        return;
    }
    uint32_t want = 0;
    if (!s->base.lost_scheduled) {
        if (tpio__stream_reading_active(s) || (s->watch_reader && s->base.made))
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

/* asyncio's _force_close: drop the buffer, stop everything, connection_lost. */
void tpio__stream_force_close(struct stream *s, int err)
{
    if (s->base.lost_scheduled)
        return;
    /* the send in flight reads the head: it outlives the buffer until the
     * kernel let go of it, which schedule_lost's drop does at once */
    struct tpio__chunk *head =
        tpio__op_busy(&s->wop) ? tpio__wbuf_take_head(&s->wbuf, &s->base.wsize) : NULL;
    tpio__wbuf_clear(&s->wbuf, &s->base.wsize);
    tpio__schedule_lost(&s->base, err);
    if (head && tpio__op_busy(&s->wop)) {
        /* It could not: the send's completion frees it. Never freed under
         * the kernel (kept, if even that cannot be recorded). */
        struct stream_more *m = tpio__stream_more(s);
        if (m)
            m->orphan = head;
    } else {
        tpio__free(head);
    }
}

/* asyncio reports to the error handler only what is not an OSError (its own
 * errors and the protocol's), plus read-pipe errors other than EIO (a closed
 * terminal); anything else reaches connection_lost alone. */
void tpio__stream_fatal(struct stream *s, int err, const char *msg)
{
    if (err <= TPIO__OWN_ERROR_BASE || err == -ENOMEM ||
        (s->mode == MODE_READ_PIPE && err != -EIO))
        tpio__transport_report(&s->base, msg, err);
    tpio__stream_force_close(s, err);
}

void tpio__stream_eof(struct stream *s)
{
    tpio_transport_t *t = &s->base;
    s->read_eof = true;
    if (s->mode == MODE_READ_PIPE) {
        /* A pipe has no half-close: EOF ends it whatever the protocol says. */
        t->closing = true;
        tpio__stream_update_io(s);
        TPIO__UPCALL_VALUE(t, false, eof_received);
        tpio__schedule_lost(&s->base, 0);
        return;
    }
    tpio__stream_update_io(s);
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
        tpio__stream_fatal(s, TPIO_EPROTOCOL_BUFFER, "Fatal error: protocol.get_buffer() call failed.");
        return NULL;
    }
    return buf;
}

ssize_t tpio__stream_send(struct stream *s, const struct iovec *iov, int cnt)
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

void tpio__stream_drained(struct stream *s)
{
    tpio__stream_update_io(s);
    if (s->base.closing)
        tpio__schedule_lost(&s->base, 0);
    else if ((s->wblock & WB_EOF) && s->mode == MODE_DUPLEX)
        shutdown(s->io.fd, SHUT_WR);
    else if (s->wblock & WB_WRITER) /* its turn: what was written before it went first */
        s->more->writer->writable(s->more->writer);
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
            tpio__stream_force_close(s, -errno);
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
        n = tpio__stream_send(s, rest, k);
    }
}

/* After a direct send of n bytes (or -1 with errno), buffer the rest;
 * `notify`: the protocol hears pause_writing (not for an attached writer's
 * bytes, which the protocol did not write). */
int tpio__stream_write_rest(struct stream *s, const struct iovec *iov, int cnt, size_t total,
                            ssize_t n, bool notify)
{
    tpio_transport_t *t = &s->base;
    if (__builtin_expect(s->unwatchable, 0))
        return write_through(s, iov, cnt, total, n);
    if (n < 0) {
        if (errno != EAGAIN) {
            /* Inside the caller's write: connection_lost tells the protocol,
             * and the error handler must not run here. */
            tpio__stream_force_close(s, -errno);
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
            tpio__stream_force_close(s, -ENOMEM);
            return -ENOMEM;
        }
        sent = 0;
    }
    tpio__stream_update_io(s);
    if (notify)
        tpio__maybe_pause_protocol(t);
    return 0;
}

bool tpio__stream_busy(const tpio_transport_t *t)
{
    return tpio__op_busy(&S(t)->rop) || tpio__op_busy(&S(t)->wop);
}

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
 * completion of both operations (tpio__stream_busy), so that the descriptor is
 * closed only once the kernel has let go of it and the buffers the kernel
 * reads stay put until then. */

/* One data_received (or get_buffer + buffer_updated) for the first bytes of
 * p; returns how many it took, 0 when the transport failed meanwhile.
 * A BufferedProtocol gets a copy, not a receive into its buffer: that
 * would lend the buffer to the kernel from get_buffer until the bytes
 * came, across other connections' callbacks, and one buffer shared by
 * every connection is a sound BufferedProtocol on asyncio's selector loop,
 * on uvloop and on epoll (tpio's own TLS layer hands out the loop's read
 * buffer; tried: TLS in TLS and 64 MiB TLS streams broke at once). */
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

static bool ops_reading(const struct stream *s)
{
    return s->mode != MODE_WRITE_PIPE && tpio__reading_allowed(&s->base) && !s->base.lost_scheduled;
}

/* Keep what came while reading was paused; false when out of memory (the
 * transport has failed then). */
static bool hold(struct stream *s, const unsigned char *p, size_t n)
{
    struct stream_more *m = tpio__stream_more(s);
    if (!m || tpio__wbuf_append(&m->held, &m->held_size, &s->base.loop->spare_chunk, p, n) < 0) {
        tpio__stream_fatal(s, -ENOMEM, tpio__stream_read_error_msg(s));
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
    tpio__stream_eof(s);
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
        tpio__stream_fatal(s, err, tpio__stream_read_error_msg(s));
    }
    tpio__stream_update_io(s);
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
        else if (tpio__stream_more(s))
            s->more->held_eof = true;
        else
            tpio__stream_fatal(s, -ENOMEM, tpio__stream_read_error_msg(s));
    } else if (res != -ECANCELED && !t->lost_scheduled && !t->closing) {
        /* an error met while reading was paused waits, as EOF does: an
         * epoll loop would only meet it on its next read */
        s->read_eof = true;
        if (ops_reading(s) && !has_held(s))
            tpio__stream_fatal(s, res, tpio__stream_read_error_msg(s));
        else if (tpio__stream_more(s))
            s->more->held_err = res;
        else
            tpio__stream_fatal(s, -ENOMEM, tpio__stream_read_error_msg(s));
    }
    if (!more) {
        tpio__stream_update_io(s);
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
        tpio__stream_force_close(s, rc);
}

/* The send's completion: the next part of the buffer goes, or the buffer
 * drained (tpio__stream_drained, as on epoll). */
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
            tpio__stream_fatal(s, res, "Fatal write error on transport");
        } else {
            tpio__wbuf_consume(&s->wbuf, &t->wsize, &t->loop->spare_chunk, (size_t)res);
            /* resume_writing may write, which sends if nothing is in flight */
            tpio__maybe_resume_protocol(t);
            if (t->lost_scheduled || tpio__op_busy(&s->wop))
                ;
            else if (t->wsize)
                send_next(s);
            else
                tpio__stream_drained(s);
        }
    }
    if (t->lost_scheduled && !tpio__stream_busy(t))
        tpio__transport_ops_done(t);
}

/* A write this large costs its copy more than a syscall: when nothing is
 * queued it is sent at once, as on epoll, and only the rest is copied
 * (bulk with a Protocol: 10% less CPU per MB by hand). Smaller ones wait
 * for the loop, so that one io_uring_enter carries every connection's,
 * unless the loop is not batching (the backend's `unbatched`: one
 * connection at a time is busy), where the ring's send would cost the
 * same syscalls and more time: 1 KiB x 1, pinned, by hand: 43.6-44.0k
 * round trips/s at 12.6-12.8 us of server CPU each through the ring,
 * 44.7k at 12.0 us sent at once, as epoll's 44.7-44.9k at 11.9 us.
 * A pipe's are all written at once, as asyncio's: programs (CPython's
 * test_asyncio among them) read the other end right after the write, and
 * a pipe is not where a loop's many connections are. */
#define OPS_DIRECT_MIN (8u * 1024)

/* The write is copied whole and a send goes now unless one is in flight,
 * or (OPS_DIRECT_MIN, a pipe) it is sent here. */
int tpio__stream_ops_write(struct stream *s, const struct iovec *iov, int cnt, size_t total,
                           bool notify)
{
    tpio_transport_t *t = &s->base;
    if ((total >= OPS_DIRECT_MIN || !s->is_socket || t->loop->backend->unbatched) && !t->wsize &&
        !tpio__op_busy(&s->wop)) {
        ssize_t n = tpio__stream_send(s, iov, cnt < IOV_MAX ? cnt : IOV_MAX);
        if (n == (ssize_t)total)
            return 0;
        return tpio__stream_write_rest(s, iov, cnt, total, n, notify);
    }
    for (int i = 0; i < cnt; i++) {
        if (tpio__wbuf_append(&s->wbuf, &t->wsize, &t->loop->spare_chunk, iov[i].iov_base,
                              iov[i].iov_len) < 0) {
            tpio__stream_force_close(s, -ENOMEM);
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
