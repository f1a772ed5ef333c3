/* The transport layer: BaseTransport, ReadTransport and WriteTransport as
 * one base struct that every kind embeds first, the lifecycle every kind
 * shares (start, upcalls, the end of a connection), watermark flow control,
 * and the kinds: the stream transport (TCP, Unix sockets, pipes), the
 * datagram transport and the subprocess transport. The layer above (create/)
 * makes connections; nothing here knows of servers or of name resolution. */
#ifndef TPIO_TRANSPORT_H
#define TPIO_TRANSPORT_H

#include "loop/loop.h"

#include <sys/uio.h>

/* Reads per readiness event while each one fills the buffer (libuv: 32),
 * and the bytes after which the event ends anyway, so that one busy
 * connection holds the loop for a bounded time. */
#define TPIO__READ_BURST 32
#define TPIO__READ_BURST_BYTES (1024 * 1024)
#define TPIO__DEFAULT_HIGH (64 * 1024)

struct tpio__tset;

/* What each kind does its own way; NULL entries are calls the kind does not
 * support (-ENOTSUP). */
struct tpio__transport_vt {
    int (*close)(tpio_transport_t *t);
    int (*abort)(tpio_transport_t *t);
    /* abort with a TCP reset */
    int (*abort_reset)(tpio_transport_t *t);
    int (*write)(tpio_transport_t *t, const struct iovec *iov, int iovcnt, size_t total);
    /* Optional fast path for one buffer (tpio_transport_write), same semantics. */
    int (*write1)(tpio_transport_t *t, const void *data, size_t len);
    int (*write_eof)(tpio_transport_t *t);
    bool can_write_eof;
    /* A readable kind: the reading state (made, paused, closing) changed,
     * update what is watched. NULL: the kind does not read. */
    void (*reading_changed)(tpio_transport_t *t);
    /* The kind reads a byte stream, so its read size can be set. */
    bool stream_reads;
    int (*sendto)(tpio_transport_t *t, const void *data, size_t len,
                  const struct sockaddr *addr, socklen_t addrlen);
    int (*extra_info)(const tpio_transport_t *t, const char *name, tpio_extra_t *out);
    int (*fd)(const tpio_transport_t *t);
    /* A layer whose bytes wait in the transport below (TLS): the buffered
     * size, asked when the user asks, and the watermarks, passed down when
     * they change. Optional. */
    size_t (*write_buffer_size)(const tpio_transport_t *t);
    void (*limits_changed)(tpio_transport_t *t);
    /* After connection_made returned (optional). */
    void (*started)(tpio_transport_t *t);
    /* Ending: stop watching the fd (at once), then release it (after
     * connection_lost), then free the memory (after the last reference). */
    void (*quiesce)(tpio_transport_t *t);
    /* Operations of the kind's are still in the kernel (a completion
     * backend's): connection_lost waits for tpio__transport_ops_done.
     * Optional. */
    bool (*busy)(const tpio_transport_t *t);
    void (*teardown)(tpio_transport_t *t);
    void (*destroy)(tpio_transport_t *t);
};

/* The completion of a connection call, kept until connection_made ran. */
struct tpio__start {
    tpio_connect_cb_t cb;
    void *cb_arg;
};

/* Membership of a set of transports (a server's connections): the set hears
 * when a member's connection is lost. */
struct tpio__member {
    struct tpio__list link;
    struct tpio__tset *set;
};

struct tpio_transport {
    const struct tpio__transport_vt *vt;
    tpio_loop_t *loop;
    tpio_protocol_t *proto;
    /* Flow control: the bytes the kind has buffered for writing, kept
     * current by the kind, and the watermarks that judge them. */
    size_t wsize, high, low;
    int refs;
    int lost_err;
    uint32_t read_size;   /* stream kinds: the most one read delivers */
    uint8_t kind;         /* tpio_transport_kind_t */
    bool made;            /* connection_made ran */
    bool paused;          /* pause_reading() */
    bool closing;         /* close()/abort() called, or the connection failed */
    bool lost_scheduled;  /* connection_lost is queued or done */
    bool writing_paused;  /* pause_writing() was delivered */
    bool lost_waiting;    /* connection_lost is due once the kind is not busy */
    struct tpio__start *start; /* until connection_made, when there is a completion */
    struct tpio__node lost_node;
    struct tpio__member member;
};

/* ---- lifecycle -------------------------------------------------------------- */

TPIO__HIDDEN void tpio__transport_init(tpio_transport_t *t, tpio_loop_t *loop,
                                       const struct tpio__transport_vt *vt,
                                       tpio_transport_kind_t kind);
static inline void tpio__transport_ref(tpio_transport_t *t) { t->refs++; }
static inline void tpio__transport_unref(tpio_transport_t *t)
{
    if (--t->refs == 0) {
        tpio_loop_t *loop = t->loop;
        t->vt->destroy(t);
        tpio__loop_release(loop);
    }
}
/* Schedule connection_made for protocol p, then the completion cb (may be
 * NULL). 0, or -ENOMEM with nothing scheduled. */
TPIO__HIDDEN int tpio__transport_start(tpio_transport_t *t, tpio_protocol_t *p,
                                       tpio_connect_cb_t cb, void *cb_arg);
/* End the connection: closing, stop I/O now, and queue connection_lost(err),
 * after which the kind's teardown closes the descriptor. Once only. */
TPIO__HIDDEN void tpio__schedule_lost(tpio_transport_t *t, int err);
/* The kind's last operation in the kernel completed: a connection_lost that
 * waited for it is queued. */
TPIO__HIDDEN void tpio__transport_ops_done(tpio_transport_t *t);
/* The same, now: for a layer whose transport below is ending (called from
 * that transport's connection_lost, so that inside the layer's own the
 * descriptor is still there). */
TPIO__HIDDEN void tpio__transport_lost_now(tpio_transport_t *t, int err);

/* ---- upcalls ------------------------------------------------------------------ */

/* Every protocol callback goes through here (redis's callHandler): the
 * transport is referenced for the call, so whatever the protocol does inside
 * it — close, abort, switch protocols — the transport outlives the call;
 * the caller then looks at the transport's state (closing, paused) before
 * going on. The protocol is read at each call: set_protocol takes effect at
 * the next one. */
#define TPIO__UPCALL(t, method, ...)                                             \
    do {                                                                         \
        tpio_transport_t *t_ = (t);                                              \
        tpio_protocol_t *p_ = t_->proto;                                         \
        if (p_->ops->method) {                                                   \
            tpio__transport_ref(t_);                                             \
            p_->ops->method(p_, ##__VA_ARGS__);                                  \
            tpio__transport_unref(t_);                                           \
        }                                                                        \
    } while (0)
/* The same for a callback that answers: `dflt` when the protocol has none. */
#define TPIO__UPCALL_VALUE(t, dflt, method, ...)                                 \
    __extension__({                                                              \
        tpio_transport_t *t_ = (t);                                              \
        tpio_protocol_t *p_ = t_->proto;                                         \
        __typeof__(dflt) v_ = (dflt);                                            \
        if (p_->ops->method) {                                                   \
            tpio__transport_ref(t_);                                             \
            v_ = p_->ops->method(p_, ##__VA_ARGS__);                             \
            tpio__transport_unref(t_);                                           \
        }                                                                        \
        v_;                                                                      \
    })

/* The descriptor of a kind: taken (claimed from the user's watchers and
 * watched through io), closed after connection_lost, or given back
 * unclosed when the transport never started. */
TPIO__HIDDEN int tpio__transport_take_fd(tpio_transport_t *t, struct tpio__io *io, int fd,
                                         tpio__io_cb cb);
TPIO__HIDDEN void tpio__transport_close_fd(tpio_transport_t *t, struct tpio__io *io);
TPIO__HIDDEN void tpio__transport_leave_fd(tpio_transport_t *t, struct tpio__io *io);

/* Report a failure of t to the error handler. */
TPIO__HIDDEN void tpio__transport_report(tpio_transport_t *t, const char *msg, int err);

/* ---- reading and flow control ------------------------------------------------- */

/* Readable kinds: reading may happen now. */
static inline bool tpio__reading_allowed(const tpio_transport_t *t)
{
    return t->made && !t->paused && !t->closing;
}
/* Call after the kind's buffered byte count (t->wsize) grew / shrank. */
TPIO__HIDDEN void tpio__maybe_pause_protocol(tpio_transport_t *t);
TPIO__HIDDEN void tpio__maybe_resume_protocol(tpio_transport_t *t);

/* ---- sets of transports ------------------------------------------------------- */

struct tpio__tset {
    struct tpio__list members;
    size_t count;
    bool closed; /* takes no new members (a closed server's) */
    /* t's connection was lost; it has already left the set */
    void (*removed)(struct tpio__tset *set, tpio_transport_t *t);
};
TPIO__HIDDEN void tpio__tset_init(struct tpio__tset *set,
                                  void (*removed)(struct tpio__tset *, tpio_transport_t *));
TPIO__HIDDEN void tpio__tset_add(struct tpio__tset *set, tpio_transport_t *t);
/* A layer put on `from` takes its place in from's set, if it has one (the
 * set sees the top-most transport); `from` is then the layer's alone. */
TPIO__HIDDEN void tpio__tset_pass(tpio_transport_t *from, tpio_transport_t *to);
/* Apply fn to every member (fn may end them: the set is walked safely). */
TPIO__HIDDEN void tpio__tset_each(struct tpio__tset *set, int (*fn)(tpio_transport_t *t));

/* ---- making a connection: what to build on a connected descriptor ------------- */

/* What a new connection is for: the factory of its protocol, the completion
 * to call (NULL for a server's connections) and the set to join. */
struct tpio__conn {
    tpio_protocol_factory_t factory;
    void *factory_arg;
    tpio_connect_cb_t cb;
    void *cb_arg;
    struct tpio__tset *set;
    /* The user's request, still open (0: none): a constructor that built
     * the transport retires it before the factory runs, or keeps it for a
     * layer that can still be cancelled (a TLS handshake). */
    tpio_handle_t req;
};

/* A constructor: builds the transport (or the stack of transports: TLS sits
 * on a stream transport) for a connected descriptor and gives the top-most
 * one to the connection. Returns 0 — the descriptor is the transport's, the
 * factory has run or will run unless the layer fails first (a TLS
 * handshake), the completion will be called exactly once, and conn->req is
 * retired or taken over — or -errno with the descriptor and conn->req
 * untouched and nothing called. Called from the loop.
 * `release` (NULL for static ones) frees a constructor made for one call or
 * one server, once its owner is done with it. */
struct tpio__ctor {
    int (*build)(const struct tpio__ctor *self, tpio_loop_t *loop, int fd,
                 tpio_transport_kind_t kind, const struct sockaddr *peer,
                 socklen_t peerlen, const struct tpio__conn *conn);
    void (*release)(const struct tpio__ctor *self);
};
static inline void tpio__ctor_release(const struct tpio__ctor *c)
{
    if (c && c->release)
        c->release(c);
}

/* For constructors: give the new, not yet started transport t to conn —
 * retire conn->req, schedule its start, ask the factory for the protocol,
 * join the set. On
 * failure (-ENOMEM, -ECONNABORTED for a refusal) t is left as it was,
 * unstarted, for the caller to abandon. */
TPIO__HIDDEN int tpio__transport_open(tpio_transport_t *t, const struct tpio__conn *conn);
/* Free a transport that never started (its descriptor is left alone). */
TPIO__HIDDEN void tpio__transport_abandon(tpio_transport_t *t);
/* A transport a layer sits on is the layer's to end, not the loop's: out of
 * the loop's list (shutdown ends the layer, which ends it) and back in when
 * the layer leaves it to finish alone. A server's member stays the
 * server's. */
TPIO__HIDDEN void tpio__transport_disown(tpio_transport_t *t);
TPIO__HIDDEN void tpio__transport_reown(tpio_transport_t *t);

/* The subprocess transport for a started child (create/process.c): pipes
 * from parent[] (-1: none) and the exit watched on pidfd. On failure the
 * child is killed and reaped and every descriptor given is closed. */
TPIO__HIDDEN int tpio__subprocess_open(tpio_loop_t *loop, pid_t pid, int pidfd,
                                       int parent[3], const struct tpio__conn *conn);

/* ---- the kinds ---------------------------------------------------------------- */

/* The stream transport on fd (TCP, Unix, other stream sockets, pipe ends),
 * allocated and not started; the peer address, when known (accept4), saves
 * a getpeername. -ENOMEM, TPIO_EFDINUSE (fd untouched). */
TPIO__HIDDEN int tpio__stream_new(tpio_loop_t *loop, int fd, tpio_transport_kind_t kind,
                                  const struct sockaddr *peer, socklen_t peerlen,
                                  tpio_transport_t **out);
/* A writer in the transport's place, after what is buffered (sendfile):
 * while one is attached the user's writes and write_eof are refused with
 * -EBUSY. writable() is its turn: the buffer is empty and the descriptor
 * writable; ended() says the transport is closing or lost (err), and the
 * writer is detached already. */
struct tpio__stream_writer {
    void (*writable)(struct tpio__stream_writer *w);
    void (*ended)(struct tpio__stream_writer *w, int err);
};
/* -ENOTSUP (not a writable stream), -ESHUTDOWN (closing, or after
 * write_eof), -EBUSY (one is attached), -ENOMEM. */
TPIO__HIDDEN int tpio__stream_attach(tpio_transport_t *t, struct tpio__stream_writer *w);
TPIO__HIDDEN void tpio__stream_detach(tpio_transport_t *t);
/* The writer's write: as tpio_transport_write, without pause_writing for
 * the protocol (it did not write these bytes). */
TPIO__HIDDEN int tpio__stream_write_raw(tpio_transport_t *t, const void *data, size_t len);
/* The socket of a connected stream socket transport (what sendfile(2) can
 * write to), else -ENOTSUP. */
TPIO__HIDDEN int tpio__stream_socket_fd(const tpio_transport_t *t);
/* Stream transports as a constructor. */
TPIO__HIDDEN extern const struct tpio__ctor tpio__stream_ctor;
/* Datagram transports (kind ignored) as a constructor. */
TPIO__HIDDEN extern const struct tpio__ctor tpio__datagram_ctor;

/* ---- the write buffer: chunks of copied bytes, sent with writev or a ring's send */
struct tpio__chunk {
    struct tpio__chunk *next;
    size_t off, len, cap;
    unsigned char data[];
};
struct tpio__wbuf {
    struct tpio__chunk *head, *tail;
};
/* `spare` is the loop's pool of drained chunks, shared by all its connections;
 * `size` the owner's count of buffered bytes, kept current. */
TPIO__HIDDEN int tpio__wbuf_append(struct tpio__wbuf *b, size_t *size, void **spare,
                                   const void *p, size_t n);
TPIO__HIDDEN int tpio__wbuf_iov(const struct tpio__wbuf *b, struct iovec *iov, int max);
TPIO__HIDDEN void tpio__wbuf_consume(struct tpio__wbuf *b, size_t *size, void **spare,
                                     size_t n);
TPIO__HIDDEN void tpio__wbuf_clear(struct tpio__wbuf *b, size_t *size);
/* Unlink the head chunk (the one a send in flight reads) and give it to
 * the caller, to free once the kernel is done with it. */
TPIO__HIDDEN struct tpio__chunk *tpio__wbuf_take_head(struct tpio__wbuf *b, size_t *size);

#endif
