/* The stream transport: one read path and one write path for every
 * connected byte stream (TCP, Unix stream sockets, pipes). Modelled on
 * asyncio's _SelectorSocketTransport: send at once when nothing is buffered,
 * buffer only the rest, flush with one writev per writability event, and end
 * every connection with exactly one connection_lost from the ready queue.
 * Unlike asyncio, a read that fills the buffer is followed by another in the
 * same readiness event (bounded), as libuv does. On a completion backend
 * (io_uring) a socket's receives and sends are the kernel's operations
 * instead. This file is the transport's table, its constructor and the
 * readiness paths; what both ways share (the state's upkeep, the end of a
 * connection, the buffering) and the operations' way are stream_core.c,
 * below it. */
#include "transport/stream_core.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void set_peer(struct stream *s, const struct sockaddr *a, socklen_t len)
{
    if (len <= sizeof s->peer) {
        memcpy(&s->peer, a, len);
        s->peerlen = (uint8_t)len;
    } else if (len <= sizeof(struct sockaddr_storage) && tpio__stream_more(s)) {
        memcpy(&s->more->peer, a, len);
        s->peerlen = (uint8_t)len;
    }
}

static const struct sockaddr *peer_addr(const struct stream *s)
{
    return s->peerlen <= sizeof s->peer ? &s->peer.sa : (const struct sockaddr *)&s->more->peer;
}

static void stream_reading_changed(tpio_transport_t *t) { tpio__stream_update_io(S(t)); }

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
    tpio__stream_update_io(s);
}

static void stream_teardown(tpio_transport_t *t) { tpio__transport_close_fd(t, &S(t)->io); }

/* ---- reading ------------------------------------------------------------------ */

/* A read that got no bytes: EOF, or an error (none for EAGAIN). Out of
 * line: the read paths keep only their common case. */
static __attribute__((noinline)) void read_failed(struct stream *s, ssize_t n)
{
    if (n == 0) {
        tpio__stream_eof(s);
        return;
    }
    if (errno == EAGAIN || errno == EINTR)
        return;
    tpio__stream_fatal(s, -errno, tpio__stream_read_error_msg(s));
}

/* A BufferedProtocol's read: into the buffer its get_buffer gives, which
 * fails the transport (as asyncio's) when it is none. One reference holds
 * the transport across both upcalls, so stream_core.c's ask_buffer checks
 * are made here inline rather than through it (whose upcall takes its own,
 * in another file: 5 more instructions per round trip). */
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
        tpio__stream_fatal(s, TPIO_EPROTOCOL_BUFFER, "Fatal error: protocol.get_buffer() call failed.");
    } else if ((n = read(s->io.fd, buf, len)) <= 0) {
        read_failed(s, n);
    } else {
        p = t->proto; /* get_buffer may have switched protocols */
        if (!p->ops->get_buffer)
            TPIO__UPCALL(t, data_received, buf, (size_t)n);
        else if (p->ops->buffer_updated)
            p->ops->buffer_updated(p, (size_t)n);
        ret = (size_t)n == len && tpio__stream_reading_active(s) && !t->lost_scheduled ? len : 0;
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
    return (size_t)n == len && tpio__stream_reading_active(s) && !t->lost_scheduled ? len : 0;
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

/* Out of line: its iovec array would otherwise put a stack-protector check
 * on the read path it is inlined into. */
static __attribute__((noinline)) void flush(struct stream *s)
{
    struct iovec iov[IOV_MAX];
    int cnt = tpio__wbuf_iov(&s->wbuf, iov, IOV_MAX);
    ssize_t n = tpio__stream_send(s, iov, cnt);
    if (n < 0) {
        if (errno == EAGAIN)
            return;
        tpio__stream_fatal(s, -errno, "Fatal write error on transport");
        return;
    }
    tpio__wbuf_consume(&s->wbuf, &s->base.wsize, &s->base.loop->spare_chunk, (size_t)n);
    tpio__maybe_resume_protocol(&s->base);
    if (s->base.wsize == 0 && !s->base.lost_scheduled)
        tpio__stream_drained(s);
}

static int write_any(struct stream *s, const struct iovec *iov, int cnt, size_t total,
                     bool notify)
{
    if (total == 0 || s->base.closing)
        return 0; /* asyncio drops writes once the connection is going away */
    if (s->ops)
        return tpio__stream_ops_write(s, iov, cnt, total, notify);
    /* Queue behind what is buffered; else send now, and copy only the rest. */
    ssize_t n = s->base.wsize ? 0 : tpio__stream_send(s, iov, cnt < IOV_MAX ? cnt : IOV_MAX);
    if (__builtin_expect(n == (ssize_t)total, 1))
        return 0;
    return tpio__stream_write_rest(s, iov, cnt, total, n, notify);
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
 * a partial send shares its buffering (tpio__stream_write_rest). Measured: going through
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
        return tpio__stream_write_rest(s, &iov, 1, len, n, true);
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
    /* IN is in the interest set exactly when reading is active (tpio__stream_update_io
     * keeps it so), or on a write pipe watching for its reader to leave. */
    if ((events & (TPIO__IN | TPIO__HUP | TPIO__ERR)) && (io->registered & TPIO__IN)) {
        if (__builtin_expect(s->mode == MODE_WRITE_PIPE, 0)) {
            /* The reader went away (asyncio's write-pipe _read_ready). */
            tpio__stream_force_close(s, s->base.wsize ? -EPIPE : 0);
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

static void stream_started(tpio_transport_t *t) { tpio__stream_update_io(S(t)); }

/* ---- the kind's table ---------------------------------------------------------- */

static int stream_close(tpio_transport_t *t)
{
    struct stream *s = S(t);
    if (t->closing)
        return 0;
    t->closing = true;
    end_writer(s, -ECONNABORTED);
    tpio__stream_update_io(s);
    if (t->wsize == 0)
        schedule_lost(s, 0);
    return 0;
}

static int stream_abort(tpio_transport_t *t)
{
    tpio__stream_force_close(S(t), 0);
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
    tpio__stream_force_close(s, 0);
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
        struct stream_more *n = tpio__stream_more((struct stream *)s);
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

static const struct tpio__transport_vt stream_vt = {
    .busy = tpio__stream_busy,
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
    if (!tpio__stream_more(s))
        return -ENOMEM;
    s->more->writer = w;
    s->wblock |= WB_WRITER;
    tpio__stream_update_io(s); /* its first turn comes with writability, from the loop */
    return 0;
}

void tpio__stream_detach(tpio_transport_t *t)
{
    struct stream *s = S(t);
    if (drop_writer(s))
        tpio__stream_update_io(s);
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
