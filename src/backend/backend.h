/* The backend: how the loop learns that descriptors are ready, and (io_uring)
 * the operations it does for the transports itself. The loop and
 * the transports see only this interface; the backend's state (the epoll
 * descriptor, the batch of events being dispatched; the ring) is its own,
 * behind an opaque pointer, as redis keeps aeApiState behind
 * eventLoop->apidata. Two backends: epoll (epoll.c) and io_uring (uring.c),
 * chosen when a loop is made (select.c). */
#ifndef TPIO_BACKEND_H
#define TPIO_BACKEND_H

#include "base/base.h"

#include <signal.h>

/* Readiness, in tpio's own bits (the epoll backend checks that they are
 * epoll's, so it passes them through untranslated). */
#define TPIO__IN 0x001u
#define TPIO__OUT 0x004u
#define TPIO__ERR 0x008u
#define TPIO__HUP 0x010u

struct tpio__io;
typedef void (*tpio__io_cb)(tpio_loop_t *loop, struct tpio__io *io, uint32_t events);

/* A watched descriptor, embedded in its owner. */
struct tpio__io {
    int fd;
    uint32_t registered; /* events currently in the interest set */
    tpio__io_cb cb;
    uint32_t tag;        /* the backend's own (io_uring: its slot), 0 when none */
};

/* An embedder's hooks around a wait that blocks (tpio_loop_set_wait_hooks). */
struct tpio__wait_hooks {
    tpio_wait_hook_t before, after;
    void *arg;
};

/* ---- operations: what a completion backend (io_uring) does itself ---------
 * A readiness backend (epoll) has none; a transport asks
 * tpio__backend_has_ops and, where there are, hands the backend whole
 * operations — receive, send — instead of waiting for readiness and doing
 * the syscall itself. An operation in flight names its owner's struct
 * tpio__op, which must stay where it is until the operation's last
 * completion: the owner holds a reference for it. */
struct tpio__op;
/* A completion: res is the bytes moved, 0 for a receive's EOF, or -errno
 * (-ECANCELED after tpio__op_cancel). For a receive, data is the received
 * bytes, lent for the call. `more`: the operation goes on (a multishot
 * receive) and will complete again; else it is over, op is idle again and
 * may be started anew from the callback. */
typedef void (*tpio__op_cb)(tpio_loop_t *loop, struct tpio__op *op, int32_t res,
                            const void *data, bool more);
struct tpio__op {
    uint32_t tag; /* the backend's (its slot + 1); 0: idle */
};
static inline bool tpio__op_busy(const struct tpio__op *op) { return op->tag != 0; }

/* One datagram a recvmsg operation received, lent for the completion's
 * call: its bytes and its sender (addr NULL, alen 0 where it has none). */
struct tpio__dgram {
    const void *data;
    size_t len;
    const struct sockaddr *addr;
    socklen_t alen;
};

struct tpio__backend;

/* What a backend does; every backend's state starts with a pointer to its
 * table, so that the loop holds one opaque pointer whichever it runs. */
struct tpio__backend_ops {
    const char *name;
    int (*io_set)(struct tpio__backend *b, struct tpio__io *io, uint32_t want);
    void (*io_forget)(struct tpio__backend *b, struct tpio__io *io);
    int (*poll)(struct tpio__backend *b, tpio_loop_t *loop, int timeout_ms,
                const struct tpio__wait_hooks *hooks);
    void (*close)(struct tpio__backend *b);
    /* Operations (NULL in a readiness backend). recv: receive on a stream
     * socket until stopped, into the backend's own buffers; send: one send
     * of len bytes at data, which stay put until it completes; cancel: the
     * kernel lets go of op's operation at once (its last completion still
     * comes, from the next poll). -ENOTSUP where the kernel lacks them. */
    int (*recv)(struct tpio__backend *b, struct tpio__op *op, int fd, bool file,
                tpio__op_cb cb);
    int (*send)(struct tpio__backend *b, struct tpio__op *op, int fd, bool file,
                const void *data, size_t len, tpio__op_cb cb);
    void (*cancel)(struct tpio__backend *b, struct tpio__op *op);
    /* accept: accept on a listening socket until stopped; each completion's
     * res is a new descriptor (non-blocking, close-on-exec), now the
     * owner's, or -errno, which ends the operation. */
    int (*accept)(struct tpio__backend *b, struct tpio__op *op, int fd, tpio__op_cb cb);
    /* recvmsg: receive datagrams until stopped, into the backend's buffers;
     * each completion's data is a struct tpio__dgram and res its length. */
    int (*recvmsg)(struct tpio__backend *b, struct tpio__op *op, int fd, tpio__op_cb cb);
    /* sendmsg: send one datagram; msg and what it names stay put until
     * the completion (res: the bytes sent, or -errno). */
    int (*sendmsg)(struct tpio__backend *b, struct tpio__op *op, int fd, const struct msghdr *msg,
                   tpio__op_cb cb);
    /* connect: connect a socket to addr (which stays put until the
     * completion); res is 0 once connected, or -errno. */
    int (*connect)(struct tpio__backend *b, struct tpio__op *op, int fd,
                   const struct sockaddr *addr, socklen_t len, tpio__op_cb cb);
    /* waitid: reap the child of a pidfd once it exits (WEXITED), writing
     * what waitid(2) would into *info, which stays put until the
     * completion (res: 0, or -errno). NULL, or -ENOTSUP, where the kernel
     * lacks it (6.7): the owner watches the pidfd instead. */
    int (*waitid)(struct tpio__backend *b, struct tpio__op *op, int pidfd, siginfo_t *info,
                  tpio__op_cb cb);
    /* drop: the owner is going; on return the kernel no longer uses op's
     * operation (or its memory), op is idle and no completion reaches it.
     * What it received and not yet delivered is lost with it (descriptors
     * it accepted are closed). */
    void (*drop)(struct tpio__backend *b, struct tpio__op *op);
    bool (*has_ops)(const struct tpio__backend *b);
    /* Whether recv and send take a descriptor that is not a socket (`file`:
     * a pipe, a FIFO, a terminal: read and write, multishot reads 6.7). */
    bool (*has_file_ops)(const struct tpio__backend *b);
};

struct tpio__backend {
    const struct tpio__backend_ops *ops;
    /* Operations: the last wait brought one completion or none, so the
     * loop is not batching: a send made at once costs no more syscalls
     * than the ring's (whose completion would end the next wait at once),
     * and less time. Never set by a readiness backend. */
    bool unbatched;
};

/* The backends (tpio_backend_t's values but AUTO). */
TPIO__HIDDEN int tpio__epoll_open(struct tpio__backend **out);
TPIO__HIDDEN int tpio__uring_open(struct tpio__backend **out);

/* The backend `which` asks for (TPIO_BACKEND_AUTO: TPIO_BACKEND's, else the
 * default), falling back to epoll where auto's choice cannot be set up. */
TPIO__HIDDEN int tpio__backend_open(tpio_backend_t which, struct tpio__backend **out);
static inline void tpio__backend_close(struct tpio__backend *b)
{
    if (b)
        b->ops->close(b);
}
static inline void tpio__io_init(struct tpio__io *io, int fd, tpio__io_cb cb)
{
    io->fd = fd;
    io->registered = 0;
    io->cb = cb;
    io->tag = 0;
}
/* Make the interest set `want`; nothing is done when it is already that.
 * An empty set stops watching: no event of the batch being dispatched
 * reaches io afterwards, so its owner may be freed at once. A descriptor
 * that cannot be watched at all gives TPIO_ENOTWATCHABLE. */
static inline int tpio__io_set(struct tpio__backend *b, struct tpio__io *io, uint32_t want)
{
    if (want == io->registered)
        return 0; /* the common case on the hot path: no call at all */
    return b->ops->io_set(b, io, want);
}
/* io's descriptor was closed under its watch (the kernel dropped it): stop
 * watching without naming the descriptor, whose number may be another's. */
static inline void tpio__io_forget(struct tpio__backend *b, struct tpio__io *io)
{
    if (io->registered)
        b->ops->io_forget(b, io);
}
/* Wait up to timeout_ms (-1: no limit) and call the ready watchers'
 * callbacks with `loop`; returns the events dispatched or -errno. With
 * hooks (may be NULL), a wait that would block is bracketed by them; the
 * callbacks always run outside the bracket. */
static inline int tpio__backend_poll(struct tpio__backend *b, tpio_loop_t *loop,
                                     int timeout_ms, const struct tpio__wait_hooks *hooks)
{
    return b->ops->poll(b, loop, timeout_ms, hooks);
}
/* Whether b does operations itself (io_uring with the kernel's multishot
 * receive and provided buffers), so that transports use them. */
static inline bool tpio__backend_has_ops(const struct tpio__backend *b)
{
    return b->ops->has_ops && b->ops->has_ops(b);
}
static inline bool tpio__backend_has_file_ops(const struct tpio__backend *b)
{
    return tpio__backend_has_ops(b) && b->ops->has_file_ops(b);
}
/* file: fd is not a socket (tpio__backend_has_file_ops). */
static inline int tpio__op_recv(struct tpio__backend *b, struct tpio__op *op, int fd, bool file,
                                tpio__op_cb cb)
{
    return b->ops->recv(b, op, fd, file, cb);
}
static inline int tpio__op_send(struct tpio__backend *b, struct tpio__op *op, int fd, bool file,
                                const void *data, size_t len, tpio__op_cb cb)
{
    return b->ops->send(b, op, fd, file, data, len, cb);
}
static inline int tpio__op_accept(struct tpio__backend *b, struct tpio__op *op, int fd,
                                  tpio__op_cb cb)
{
    return b->ops->accept(b, op, fd, cb);
}
static inline int tpio__op_recvmsg(struct tpio__backend *b, struct tpio__op *op, int fd,
                                   tpio__op_cb cb)
{
    return b->ops->recvmsg(b, op, fd, cb);
}
static inline int tpio__op_sendmsg(struct tpio__backend *b, struct tpio__op *op, int fd,
                                   const struct msghdr *msg, tpio__op_cb cb)
{
    return b->ops->sendmsg(b, op, fd, msg, cb);
}
static inline int tpio__op_connect(struct tpio__backend *b, struct tpio__op *op, int fd,
                                   const struct sockaddr *addr, socklen_t len, tpio__op_cb cb)
{
    return b->ops->connect(b, op, fd, addr, len, cb);
}
static inline int tpio__op_waitid(struct tpio__backend *b, struct tpio__op *op, int pidfd,
                                  siginfo_t *info, tpio__op_cb cb)
{
    return b->ops->waitid ? b->ops->waitid(b, op, pidfd, info, cb) : -ENOTSUP;
}
static inline void tpio__op_cancel(struct tpio__backend *b, struct tpio__op *op)
{
    if (op->tag)
        b->ops->cancel(b, op);
}

static inline void tpio__op_drop(struct tpio__backend *b, struct tpio__op *op)
{
    if (op->tag)
        b->ops->drop(b, op);
}

/* The name tpio_loop_get_backend gives. */
static inline const char *tpio__backend_name(const struct tpio__backend *b)
{
    return b->ops->name;
}

#endif
