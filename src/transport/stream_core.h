/* The stream transport's own header, shared by its two files: stream.c
 * (the transport's table and constructor, and its read and write paths on
 * a readiness backend) and stream_core.c below it (what both ways of doing
 * the I/O share, and the kernel's operations: io_uring). Nothing outside
 * them sees a struct stream. */
#ifndef TPIO_STREAM_CORE_H
#define TPIO_STREAM_CORE_H

#include "transport/transport.h"

#include <sys/uio.h>

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
    bool ops;           /* the backend receives and sends (io_uring): stream_core.c */
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

static inline bool tpio__stream_reading_active(const struct stream *s)
{
    return s->mode != MODE_WRITE_PIPE && tpio__reading_allowed(&s->base) && !s->read_eof;
}

static inline const char *tpio__stream_read_error_msg(const struct stream *s)
{
    return s->is_socket ? "Fatal read error on socket transport"
                        : "Fatal read error on pipe transport";
}

/* stream_core.c: what both ways of doing the I/O share. */
/* `more`, allocated on first use; NULL when out of memory. */
TPIO__HIDDEN struct stream_more *tpio__stream_more(struct stream *s);
/* The interest set (readiness) or the operations (ops) that the state
 * asks for now. */
TPIO__HIDDEN void tpio__stream_update_io(struct stream *s);
/* asyncio's _force_close: the buffer dropped, connection_lost scheduled. */
TPIO__HIDDEN void tpio__stream_force_close(struct stream *s, int err);
/* asyncio's _fatal_error: reported where asyncio reports, then force_close. */
TPIO__HIDDEN void tpio__stream_fatal(struct stream *s, int err, const char *msg);
/* EOF read: eof_received, then a half-close or the end. */
TPIO__HIDDEN void tpio__stream_eof(struct stream *s);
/* One send (writev on a pipe) of iov, EINTR retried: bytes sent, or -1. */
TPIO__HIDDEN ssize_t tpio__stream_send(struct stream *s, const struct iovec *iov, int cnt);
/* After a direct send of n bytes (or -1 with errno): the rest buffered. */
TPIO__HIDDEN int tpio__stream_write_rest(struct stream *s, const struct iovec *iov, int cnt,
                                         size_t total, ssize_t n, bool notify);
/* The write buffer drained: a close, a write_eof or a writer goes on. */
TPIO__HIDDEN void tpio__stream_drained(struct stream *s);
/* An operation is in flight (connection_lost waits for it). */
TPIO__HIDDEN bool tpio__stream_busy(const tpio_transport_t *t);

/* A write on the operations' side (s->ops): copied, or sent at once. */
TPIO__HIDDEN int tpio__stream_ops_write(struct stream *s, const struct iovec *iov, int cnt,
                                        size_t total, bool notify);

#endif
