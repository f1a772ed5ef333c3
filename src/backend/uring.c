/* The io_uring backend: one ring for readiness and for operations.
 *
 * Readiness (struct tpio__io, for what still waits to be ready: listening
 * sockets, pipes, the eventfd, a connect) is a one-shot poll request per
 * descriptor, armed again after its event has been dispatched (a multishot
 * poll fires on wake-ups only, and the transports rely on level-triggered
 * readiness: a bounded read burst leaves data behind on purpose).
 *
 * Operations (struct tpio__op) are the kernel's: a stream socket receives
 * with one multishot receive into a ring of provided buffers, shared by the
 * loop's connections, and sends with one send at a time per connection
 * (liburing's examples/proxy.c works this way). A busy connection then
 * costs no syscall of its own: what every connection queued goes to the
 * kernel with the wait, in one io_uring_enter per loop iteration.
 *
 * Requests name their owner by a slot and a generation (user_data), never
 * by a pointer: a watcher removed during the dispatch of a batch, or freed
 * right after, has its slot's generation moved on, and what comes for the
 * old one is dropped. An operation keeps its slot until its last
 * completion, which always reaches its owner (who keeps itself alive for
 * it). */
#include "backend/backend.h"

#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

_Static_assert(TPIO__IN == POLLIN && TPIO__OUT == POLLOUT && TPIO__ERR == POLLERR &&
                   TPIO__HUP == POLLHUP,
               "tpio's readiness bits pass through to poll untranslated");

#define RING_ENTRIES 256
/* Room for many connections' completions at once; the kernel keeps what
 * overflows (IORING_FEAT_NODROP) and the batch loop below flushes it. */
#define CQ_ENTRIES 4096
#define MAX_BATCH 256
#define UD_IGNORE UINT64_MAX /* the completions of removals and cancels */
/* Newer than liburing 2.3's header (6.7), probed at run time. */
#define OP_READ_MULTISHOT 49 /* IORING_OP_READ_MULTISHOT */
#define OP_WAITID 50         /* IORING_OP_WAITID */
#define ID_PIDFD 3           /* P_PIDFD */

/* The provided buffers receives land in: a power of two of them, made on
 * the first receive. 128 x 32 KiB: a batch of completions rarely takes them
 * all, and each goes back to the kernel as soon as its bytes were
 * delivered. */
/* Two groups: the stream receives' (0), and the datagrams' (1), whose
 * buffers hold the largest datagram the epoll loop reads (256 KiB) behind
 * the kernel's header and the sender's address. */
#define BUF_COUNT 128u
#define BUF_SIZE (32u * 1024)
#define DBUF_COUNT 16u
#define DBUF_NAME ((unsigned)sizeof(struct sockaddr_storage))
#define DBUF_SIZE ((unsigned)sizeof(struct io_uring_recvmsg_out) + DBUF_NAME + 256u * 1024)
enum { G_STREAM, G_DGRAM, NGROUPS };
static const unsigned group_count[NGROUPS] = {BUF_COUNT, DBUF_COUNT};
static const unsigned group_size[NGROUPS] = {BUF_SIZE, DBUF_SIZE};

struct bgroup {
    struct io_uring_buf_ring *br; /* registered with the ring, or NULL */
    unsigned char *bufs;          /* NULL until the first receive */
};

enum { SLOT_FREE, SLOT_IO, SLOT_RECV, SLOT_SEND, SLOT_ACCEPT, SLOT_CONNECT, SLOT_RECVMSG, SLOT_SENDMSG,
       SLOT_WAITID };

struct slot {
    union {
        struct tpio__io *io;
        struct tpio__op *op;
    };
    tpio__op_cb cb; /* operations */
    uint32_t gen;
    uint32_t next_free;
    uint8_t kind;
    bool armed; /* a request is in flight */
    bool nopped; /* operations: cancelled before it was submitted */
    bool polled; /* a connect that waits as a poll (see migrate) */
    bool file;   /* receives and sends: read and write, not a socket's */
    int fd;     /* operations: to re-arm a receive the kernel ended */
    unsigned seq; /* operations: the submission queue entry's number */
    uint32_t epoch; /* the ring its request went to (see migrate) */
    const void *sdata; /* a send's bytes (a connect's address, a waitid's siginfo), to ask
                          again of a new ring */
    uint32_t slen;
};

struct cqe_copy {
    uint64_t ud;
    int32_t res;
    uint32_t flags;
};

/* Memory a ring the loop has left may still name: kept until the loop
 * closes, so that no later mapping lands where the kernel might write. */
struct retired {
    struct retired *next;
    struct bgroup g[NGROUPS];
};

struct uring_backend {
    struct tpio__backend base;
    struct io_uring ring;
    /* SINGLE_ISSUER + DEFER_TASKRUN: only `owner` may enter the ring, and the
     * kernel's work for it runs inside its waits. `epoch` counts the rings
     * the loop has had (a new one for each thread that runs it). */
    bool single;
    pthread_t owner;
    uint32_t epoch;
    unsigned flags; /* the ring's setup flags (ring_init's) */
    struct retired *retired;
    /* epoll refuses at once what it cannot poll (regular files, /dev/null)
     * where a ring's poll would report it ready for ever; new descriptors
     * are asked of an epoll set of their own, so that both backends refuse
     * the same ones (TPIO_ENOTWATCHABLE). */
    int probe_fd;
    struct slot *slots;
    uint32_t nslots, free_head;
    /* Operations: whether the kernel has them, and the provided buffers. */
    bool ops_ok, file_ops, waitid_ok;
    bool batch_always; /* TPIO_URING_BATCH=1: never `unbatched` */
    struct bgroup g[NGROUPS];
    struct msghdr dmsg; /* what a datagram receive asks for: the address */
    /* The batch being dispatched, copied out of the completion queue. */
    struct cqe_copy batch[MAX_BATCH];
};

#define U(b) ((struct uring_backend *)(b))
#define NO_SLOT UINT32_MAX

static uint64_t ud_of(uint32_t slot, uint32_t gen) { return (uint64_t)gen << 32 | slot; }

/* A submission entry; the queue is flushed to the kernel when full. */
static struct io_uring_sqe *sqe_get(struct uring_backend *b)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring);
    if (!sqe) {
        io_uring_submit(&b->ring);
        sqe = io_uring_get_sqe(&b->ring);
    }
    return sqe;
}

static int arm(struct uring_backend *b, uint32_t i)
{
    struct slot *s = &b->slots[i];
    struct io_uring_sqe *sqe = sqe_get(b);
    if (!sqe)
        return -ENOMEM;
    io_uring_prep_poll_add(sqe, s->io->fd, s->io->registered);
    io_uring_sqe_set_data64(sqe, ud_of(i, s->gen));
    s->armed = true;
    s->epoch = b->epoch;
    return 0;
}

/* The request in flight goes; its completion, if it comes, is stale. */
static void disarm(struct uring_backend *b, uint32_t i)
{
    struct slot *s = &b->slots[i];
    if (!s->armed)
        return;
    struct io_uring_sqe *sqe = sqe_get(b);
    if (sqe) {
        io_uring_prep_poll_remove(sqe, ud_of(i, s->gen));
        io_uring_sqe_set_data64(sqe, UD_IGNORE);
    }
    s->gen++;
    s->armed = false;
}

static int slot_new(struct uring_backend *b, struct tpio__io *io, uint32_t *out)
{
    if (b->free_head == NO_SLOT) {
        uint32_t n = b->nslots ? b->nslots * 2 : 64;
        struct slot *v = tpio__realloc(b->slots, n * sizeof *v);
        if (!v)
            return -ENOMEM;
        for (uint32_t i = b->nslots; i < n; i++)
            v[i] = (struct slot){.next_free = i + 1 < n ? i + 1 : NO_SLOT};
        b->free_head = b->nslots;
        b->slots = v;
        b->nslots = n;
    }
    uint32_t i = b->free_head;
    b->free_head = b->slots[i].next_free;
    b->slots[i].io = io;
    b->slots[i].kind = SLOT_IO;
    b->slots[i].armed = false;
    *out = i;
    return 0;
}

static void slot_free(struct uring_backend *b, uint32_t i)
{
    if (b->slots[i].kind == SLOT_IO)
        disarm(b, i);
    b->slots[i].io = NULL;
    b->slots[i].kind = SLOT_FREE;
    b->slots[i].gen++;
    b->slots[i].next_free = b->free_head;
    b->free_head = i;
}

static int probe(struct uring_backend *b, int fd)
{
    struct epoll_event ev = {.events = EPOLLIN};
    if (epoll_ctl(b->probe_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return errno == EPERM ? TPIO_ENOTWATCHABLE : -errno;
    epoll_ctl(b->probe_fd, EPOLL_CTL_DEL, fd, &ev);
    return 0;
}

static int uring_io_set(struct tpio__backend *base, struct tpio__io *io, uint32_t want)
{
    struct uring_backend *b = U(base);
    if (want == 0) {
        if (io->tag) {
            bool armed = b->slots[io->tag - 1].armed;
            slot_free(b, io->tag - 1);
            /* The request holds the file: it must be gone before the owner
             * closes the descriptor (a listening socket must stop accepting,
             * a peer must see the close, at once, as with epoll). */
            if (armed)
                io_uring_submit_and_get_events(&b->ring);
        }
        io->tag = 0;
        io->registered = 0;
        return 0;
    }
    uint32_t i;
    if (!io->tag) {
        int rc = probe(b, io->fd);
        if (rc < 0)
            return rc;
        if ((rc = slot_new(b, io, &i)) < 0)
            return rc;
        io->tag = i + 1;
    } else {
        i = io->tag - 1;
        disarm(b, i);
    }
    io->registered = want;
    int rc = arm(b, i);
    if (rc < 0) {
        slot_free(b, i);
        io->tag = 0;
        io->registered = 0;
    }
    return rc;
}

static void uring_io_forget(struct tpio__backend *base, struct tpio__io *io)
{
    uring_io_set(base, io, 0); /* a removal names the request, never the fd */
}

static void op_done(struct uring_backend *b, tpio_loop_t *loop, uint32_t i, int32_t res,
                    uint32_t flags, const struct bgroup *groups);
static int migrate(struct uring_backend *b, tpio_loop_t *loop);

/* Submit what is queued and wait for at least one completion, or until the
 * timeout (-1: none); 0: do not wait. */
static int enter(struct uring_backend *b, int timeout_ms)
{
    struct io_uring_cqe *cqe;
    int rc;
    if (timeout_ms == 0) {
        rc = io_uring_submit_and_get_events(&b->ring);
    } else if (timeout_ms < 0) {
        rc = io_uring_submit_and_wait_timeout(&b->ring, &cqe, 1, NULL, NULL);
    } else {
        struct __kernel_timespec ts = {.tv_sec = timeout_ms / 1000,
                                       .tv_nsec = (long long)(timeout_ms % 1000) * 1000000};
        rc = io_uring_submit_and_wait_timeout(&b->ring, &cqe, 1, &ts, NULL);
    }
    if (rc == -ETIME || rc == -EINTR || rc == -EAGAIN || rc == -EBUSY)
        return 0;
    return rc < 0 ? rc : 0;
}

/* Completions copied out of a completion queue, to their owners. `groups`:
 * where their receives' buffers are (an old ring's, after a move). */
static int dispatch(struct uring_backend *b, tpio_loop_t *loop, const struct cqe_copy *v,
                    unsigned n, const struct bgroup *groups)
{
    int dispatched = 0;
    for (unsigned k = 0; k < n; k++) {
        uint64_t ud = v[k].ud;
        if (ud == UD_IGNORE)
            continue;
        uint32_t i = (uint32_t)ud, gen = (uint32_t)(ud >> 32);
        if (i >= b->nslots || b->slots[i].kind == SLOT_FREE || b->slots[i].gen != gen)
            continue; /* removed, or re-armed since: stale */
        dispatched++;
        if (b->slots[i].kind != SLOT_IO) {
            op_done(b, loop, i, v[k].res, v[k].flags, groups);
            continue;
        }
        struct slot *s = &b->slots[i];
        struct tpio__io *io = s->io;
        s->armed = false;
        int32_t res = v[k].res;
        uint32_t events = res >= 0 ? (uint32_t)res : TPIO__ERR | TPIO__HUP;
        io->cb(loop, io, events);
        /* Level-triggered, as epoll: armed again unless the callback
         * changed the interest (which armed it) or removed it. */
        s = &b->slots[i];
        if (s->io == io && s->gen == gen && !s->armed && io->registered && res >= 0)
            arm(b, i);
    }
    return dispatched;
}

static int uring_poll(struct tpio__backend *base, tpio_loop_t *loop, int timeout_ms,
                      const struct tpio__wait_hooks *hooks)
{
    struct uring_backend *b = U(base);
    int rc, dispatched = 0;
    if (b->single && !pthread_equal(b->owner, pthread_self())) {
        if ((dispatched = migrate(b, loop)) < 0)
            return dispatched;
        if (dispatched)
            timeout_ms = 0; /* their callbacks may have queued work */
    }
    if (hooks && timeout_ms != 0) {
        /* A busy loop finds completions at once and never brackets the wait. */
        rc = enter(b, 0);
        if (rc == 0 && io_uring_cq_ready(&b->ring) == 0) {
            hooks->before(loop, hooks->arg);
            rc = enter(b, timeout_ms);
            hooks->after(loop, hooks->arg);
        }
    } else {
        rc = enter(b, timeout_ms);
    }
    if (rc < 0)
        return rc;
    struct io_uring_cqe *cqes[MAX_BATCH];
    unsigned n = io_uring_peek_batch_cqe(&b->ring, cqes, MAX_BATCH);
    /* `owned`: what reaches an owner (a removal's or a cancel's own
     * completion does not), counted before the callbacks, which may write */
    unsigned owned = 0;
    for (unsigned k = 0; k < n; k++) {
        b->batch[k].ud = io_uring_cqe_get_data64(cqes[k]);
        b->batch[k].res = cqes[k]->res;
        b->batch[k].flags = cqes[k]->flags;
        owned += b->batch[k].ud != UD_IGNORE;
    }
    io_uring_cq_advance(&b->ring, n);
    b->base.unbatched = owned <= 1 && !b->batch_always;
    return dispatched + dispatch(b, loop, b->batch, n, b->g);
}

/* ---- operations ---------------------------------------------------------------- */

/* Multishot receives need 6.0; provided-buffer rings 5.19. */
static bool kernel_has_ops(void)
{
    struct utsname u;
    unsigned major = 0, minor = 0;
    if (uname(&u) < 0 || sscanf(u.release, "%u.%u", &major, &minor) != 2)
        return false;
    (void)minor;
    return major >= 6;
}

/* Group g's ring of buffers, registered with the ring (empty). */
static int group_register(struct uring_backend *b, int g)
{
    size_t ring_bytes = group_count[g] * sizeof(struct io_uring_buf);
    void *br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br == MAP_FAILED)
        return -errno;
    io_uring_buf_ring_init(br);
    struct io_uring_buf_reg reg = {
        .ring_addr = (uintptr_t)br, .ring_entries = group_count[g], .bgid = (uint16_t)g};
    int rc = io_uring_register_buf_ring(&b->ring, &reg, 0);
    if (rc < 0) {
        munmap(br, ring_bytes);
        return rc;
    }
    b->g[g].br = br;
    return 0;
}

static int ops_init(struct uring_backend *b) { return group_register(b, G_STREAM); }

/* What 6.7 added: pipes and other descriptors need multishot reads (and
 * by then a write to a full non-blocking pipe waits in the kernel, as a
 * send does); children are reaped by the kernel's waitid. */
static void probe_opcodes(struct uring_backend *b)
{
    struct io_uring_probe *p = io_uring_get_probe_ring(&b->ring);
    b->file_ops = b->ops_ok && p && io_uring_opcode_supported(p, OP_READ_MULTISHOT);
    b->waitid_ok = b->ops_ok && p && io_uring_opcode_supported(p, OP_WAITID);
    if (p)
        io_uring_free_probe(p);
}

static void buf_give(struct uring_backend *b, int g, unsigned bid)
{
    io_uring_buf_ring_add(b->g[g].br, b->g[g].bufs + (size_t)bid * group_size[g], group_size[g],
                          (unsigned short)bid, io_uring_buf_ring_mask(group_count[g]), 0);
    io_uring_buf_ring_advance(b->g[g].br, 1);
}

/* The buffers, on the first receive: anonymous memory, so that what no
 * receive touched costs nothing. The datagrams' group is registered then
 * too (few loops have datagram sockets). */
static int bufs_make(struct uring_backend *b, int g)
{
    int rc;
    if (!b->g[g].br && (g == G_STREAM || (rc = group_register(b, g)) < 0))
        return g == G_STREAM ? -ENOMEM : rc; /* a new ring (migrate) could not have them */
    void *m = mmap(NULL, (size_t)group_count[g] * group_size[g], PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    b->g[g].bufs = m;
    for (unsigned i = 0; i < group_count[g]; i++)
        buf_give(b, g, i);
    return 0;
}

static int op_slot(struct uring_backend *b, struct tpio__op *op, int kind, int fd,
                   tpio__op_cb cb, uint32_t *out)
{
    int rc = slot_new(b, NULL, out);
    if (rc < 0)
        return rc;
    struct slot *s = &b->slots[*out];
    s->op = op;
    s->kind = (uint8_t)kind;
    s->cb = cb;
    s->fd = fd;
    s->armed = true;
    s->nopped = false;
    s->seq = b->ring.sq.sqe_tail - 1; /* the entry just taken */
    s->epoch = b->epoch;
    op->tag = *out + 1;
    return 0;
}

/* What every operation's start shares: op idle, a submission entry, and a
 * slot naming it (the entry becomes a no-op when no slot can be had). */
static int op_begin(struct uring_backend *b, struct tpio__op *op, int kind, int fd,
                    tpio__op_cb cb, struct io_uring_sqe **sqe, uint32_t *i)
{
    if (op->tag)
        return -EBUSY;
    if (!(*sqe = sqe_get(b)))
        return -ENOMEM;
    int rc = op_slot(b, op, kind, fd, cb, i);
    if (rc < 0) {
        io_uring_prep_nop(*sqe);
        io_uring_sqe_set_data64(*sqe, UD_IGNORE);
    }
    return rc;
}

static void prep_recv(struct uring_backend *b, uint32_t i, struct io_uring_sqe *sqe)
{
    b->slots[i].seq = b->ring.sq.sqe_tail - 1;
    b->slots[i].epoch = b->epoch;
    if (b->slots[i].file) /* liburing 2.3 has no helper for it */
        io_uring_prep_rw(OP_READ_MULTISHOT, sqe, b->slots[i].fd, NULL, 0, 0);
    else
        io_uring_prep_recv_multishot(sqe, b->slots[i].fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = G_STREAM;
    io_uring_sqe_set_data64(sqe, ud_of(i, b->slots[i].gen));
}

static void prep_recvmsg(struct uring_backend *b, uint32_t i, struct io_uring_sqe *sqe)
{
    b->slots[i].seq = b->ring.sq.sqe_tail - 1;
    b->slots[i].epoch = b->epoch;
    io_uring_prep_recvmsg_multishot(sqe, b->slots[i].fd, &b->dmsg, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = G_DGRAM;
    io_uring_sqe_set_data64(sqe, ud_of(i, b->slots[i].gen));
}

static int uring_recv(struct tpio__backend *base, struct tpio__op *op, int fd, bool file,
                      tpio__op_cb cb)
{
    struct uring_backend *b = U(base);
    int rc;
    if (!b->g[G_STREAM].bufs && (rc = bufs_make(b, G_STREAM)) < 0)
        return rc;
    struct io_uring_sqe *sqe;
    uint32_t i;
    if ((rc = op_begin(b, op, SLOT_RECV, fd, cb, &sqe, &i)) < 0)
        return rc;
    b->slots[i].file = file;
    prep_recv(b, i, sqe);
    return 0;
}

/* Multishot, into the datagrams' buffers: each completion is one datagram
 * and the sender's address (struct tpio__dgram). */
static int uring_recvmsg(struct tpio__backend *base, struct tpio__op *op, int fd,
                         tpio__op_cb cb)
{
    struct uring_backend *b = U(base);
    int rc;
    if (!b->g[G_DGRAM].bufs && (rc = bufs_make(b, G_DGRAM)) < 0)
        return rc;
    struct io_uring_sqe *sqe;
    uint32_t i;
    if ((rc = op_begin(b, op, SLOT_RECVMSG, fd, cb, &sqe, &i)) < 0)
        return rc;
    prep_recvmsg(b, i, sqe);
    return 0;
}

static void prep_send(struct uring_backend *b, uint32_t i, struct io_uring_sqe *sqe)
{
    struct slot *s = &b->slots[i];
    s->seq = b->ring.sq.sqe_tail - 1;
    s->epoch = b->epoch;
    if (s->file) /* offset -1: the descriptor's own position (none, for a pipe) */
        io_uring_prep_write(sqe, s->fd, s->sdata, s->slen, (uint64_t)-1);
    else
        io_uring_prep_send(sqe, s->fd, s->sdata, s->slen, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_of(i, s->gen));
}

static void prep_accept(struct uring_backend *b, uint32_t i, struct io_uring_sqe *sqe)
{
    struct slot *s = &b->slots[i];
    s->seq = b->ring.sq.sqe_tail - 1;
    s->epoch = b->epoch;
    io_uring_prep_multishot_accept(sqe, s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, ud_of(i, s->gen));
}

/* Multishot: one request accepts every connection, and the peer's address
 * is the owner's to ask (one completion cannot carry it). */
static int uring_accept(struct tpio__backend *base, struct tpio__op *op, int fd, tpio__op_cb cb)
{
    struct uring_backend *b = U(base);
    struct io_uring_sqe *sqe;
    uint32_t i;
    int rc = op_begin(b, op, SLOT_ACCEPT, fd, cb, &sqe, &i);
    if (rc < 0)
        return rc;
    prep_accept(b, i, sqe);
    return 0;
}

static void prep_sendmsg(struct uring_backend *b, uint32_t i, struct io_uring_sqe *sqe)
{
    struct slot *s = &b->slots[i];
    s->seq = b->ring.sq.sqe_tail - 1;
    s->epoch = b->epoch;
    io_uring_prep_sendmsg(sqe, s->fd, s->sdata, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_of(i, s->gen));
}

/* One datagram; msg (and what it names) stays put until the completion. */
static int uring_sendmsg(struct tpio__backend *base, struct tpio__op *op, int fd,
                         const struct msghdr *msg, tpio__op_cb cb)
{
    struct uring_backend *b = U(base);
    struct io_uring_sqe *sqe;
    uint32_t i;
    int rc = op_begin(b, op, SLOT_SENDMSG, fd, cb, &sqe, &i);
    if (rc < 0)
        return rc;
    b->slots[i].sdata = msg;
    prep_sendmsg(b, i, sqe);
    return 0;
}

static int uring_connect(struct tpio__backend *base, struct tpio__op *op, int fd,
                         const struct sockaddr *addr, socklen_t len, tpio__op_cb cb)
{
    struct uring_backend *b = U(base);
    struct io_uring_sqe *sqe;
    uint32_t i;
    int rc = op_begin(b, op, SLOT_CONNECT, fd, cb, &sqe, &i);
    if (rc < 0)
        return rc;
    b->slots[i].sdata = addr;
    b->slots[i].slen = len;
    b->slots[i].polled = false;
    io_uring_prep_connect(sqe, fd, addr, len);
    io_uring_sqe_set_data64(sqe, ud_of(i, b->slots[i].gen));
    return 0;
}

static void prep_waitid(struct uring_backend *b, uint32_t i, struct io_uring_sqe *sqe)
{
    struct slot *s = &b->slots[i];
    s->seq = b->ring.sq.sqe_tail - 1;
    s->epoch = b->epoch;
    io_uring_prep_rw(OP_WAITID, sqe, s->fd, NULL, ID_PIDFD, 0);
    sqe->file_index = WEXITED; /* the options */
    sqe->addr2 = (uintptr_t)s->sdata;
    io_uring_sqe_set_data64(sqe, ud_of(i, s->gen));
}

/* The kernel waits on the submitting thread's process for the child, as
 * waitid(2) does, and reaps it in the ring's work: no syscall of its own. */
static int uring_waitid(struct tpio__backend *base, struct tpio__op *op, int pidfd,
                        siginfo_t *info, tpio__op_cb cb)
{
    struct uring_backend *b = U(base);
    if (!b->waitid_ok)
        return -ENOTSUP;
    struct io_uring_sqe *sqe;
    uint32_t i;
    int rc = op_begin(b, op, SLOT_WAITID, pidfd, cb, &sqe, &i);
    if (rc < 0)
        return rc;
    b->slots[i].sdata = info;
    prep_waitid(b, i, sqe);
    return 0;
}

static int uring_send(struct tpio__backend *base, struct tpio__op *op, int fd, bool file,
                      const void *data, size_t len, tpio__op_cb cb)
{
    struct uring_backend *b = U(base);
    struct io_uring_sqe *sqe;
    uint32_t i;
    int rc = op_begin(b, op, SLOT_SEND, fd, cb, &sqe, &i);
    if (rc < 0)
        return rc;
    b->slots[i].file = file;
    b->slots[i].sdata = data;
    b->slots[i].slen = len > UINT32_MAX ? UINT32_MAX : (uint32_t)len; /* a send may be partial */
    prep_send(b, i, sqe);
    return 0;
}

static bool unsubmitted(const struct uring_backend *b, const struct slot *s)
{
    const struct io_uring_sq *sq = &b->ring.sq;
    return s->seq - sq->sqe_head < sq->sqe_tail - sq->sqe_head;
}

/* Submitted at once: the owner is ending, and the peer must see it (a
 * receive in flight holds the file, so a close would not reach it). */
static void uring_cancel(struct tpio__backend *base, struct tpio__op *op)
{
    struct uring_backend *b = U(base);
    uint32_t i = op->tag - 1;
    struct slot *s = &b->slots[i];
    if (!s->armed)
        return; /* already asked */
    s->armed = false;
    /* Not submitted yet (the common case: a write then abort() in one
     * callback): the kernel must never see it. Its entry becomes a no-op
     * whose completion says cancelled. */
    if (unsubmitted(b, s)) {
        struct io_uring_sqe *e = &b->ring.sq.sqes[s->seq & b->ring.sq.ring_mask];
        io_uring_prep_nop(e);
        io_uring_sqe_set_data64(e, ud_of(i, s->gen));
        s->nopped = true;
        return;
    }
    struct io_uring_sqe *sqe = sqe_get(b);
    if (!sqe)
        return;
    io_uring_prep_cancel64(sqe, ud_of(i, s->gen), 0);
    io_uring_sqe_set_data64(sqe, UD_IGNORE);
    io_uring_submit(&b->ring);
}

/* Synchronous, so that the owner may close the descriptor and free what the
 * operation reads at once, as on epoll; the completions still to come for
 * it find no owner and are dropped. */
static void uring_drop(struct tpio__backend *base, struct tpio__op *op)
{
    struct uring_backend *b = U(base);
    uint32_t i = op->tag - 1;
    struct slot *s = &b->slots[i];
    if (s->armed && unsubmitted(b, s)) {
        struct io_uring_sqe *e = &b->ring.sq.sqes[s->seq & b->ring.sq.ring_mask];
        io_uring_prep_nop(e);
        io_uring_sqe_set_data64(e, ud_of(i, s->gen));
        s->nopped = true;
    } else {
        struct io_uring_sync_cancel_reg reg = {
            .addr = ud_of(i, s->gen), .fd = -1, .timeout = {.tv_sec = -1, .tv_nsec = -1}};
        int rc = io_uring_register_sync_cancel(&b->ring, &reg);
        if (rc < 0 && rc != -ENOENT && rc != -EALREADY) {
            uring_cancel(base, op); /* the owner waits for the completion */
            return;
        }
        /* With DEFER_TASKRUN the request lets go of the file in the kernel's
         * work for the ring, which only an entry runs: now, so that the
         * owner's close reaches the peer at once, as on epoll. */
        if (b->single)
            io_uring_get_events(&b->ring);
    }
    s->armed = false;
    s->op = NULL;
    op->tag = 0;
}

/* A completion for operation slot i. A receive the kernel ended for want of
 * buffers is armed again here, unseen by its owner: the batch's buffers
 * have gone back by then. */
static void op_done(struct uring_backend *b, tpio_loop_t *loop, uint32_t i, int32_t res,
                    uint32_t flags, const struct bgroup *groups)
{
    bool give = groups == b->g; /* an old ring's buffers are not the kernel's any more */
    struct slot *s = &b->slots[i];
    int g = s->kind == SLOT_RECVMSG ? G_DGRAM : G_STREAM;
    if (s->nopped) {
        res = -ECANCELED;
        flags = 0;
    }
    bool more = flags & IORING_CQE_F_MORE;
    if (!s->op) { /* dropped by its owner */
        if ((flags & IORING_CQE_F_BUFFER) && give)
            buf_give(b, g, flags >> IORING_CQE_BUFFER_SHIFT);
        if (s->kind == SLOT_ACCEPT && res >= 0)
            close(res); /* accepted for an owner who has gone */
        if (!more)
            slot_free(b, i);
        return;
    }
    if ((s->kind == SLOT_RECV || s->kind == SLOT_RECVMSG) && res == -ENOBUFS && !more) {
        if (!s->armed) {
            res = -ECANCELED; /* it was being cancelled: that is how it ended */
        } else {
            struct io_uring_sqe *sqe = sqe_get(b);
            if (sqe) {
                (s->kind == SLOT_RECV ? prep_recv : prep_recvmsg)(b, i, sqe);
                return;
            }
            res = -ENOMEM;
        }
    }
    if (s->kind == SLOT_CONNECT && s->polled && res >= 0) {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            err = errno;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        struct io_uring_sqe *sqe;
        if (!err && getpeername(s->fd, (struct sockaddr *)&ss, &sl) < 0 && errno == ENOTCONN &&
            (sqe = sqe_get(b))) {
            /* the old ring never began it: now it is begun */
            s->polled = false;
            s->seq = b->ring.sq.sqe_tail - 1;
            io_uring_prep_connect(sqe, s->fd, s->sdata, s->slen);
            io_uring_sqe_set_data64(sqe, ud_of(i, s->gen));
            return;
        }
        res = -err;
    }
    struct tpio__op *op = s->op;
    tpio__op_cb cb = s->cb;
    const void *data = NULL;
    int bid = -1;
    struct tpio__dgram dg;
    if (flags & IORING_CQE_F_BUFFER) {
        bid = (int)(flags >> IORING_CQE_BUFFER_SHIFT);
        data = groups[g].bufs + (size_t)bid * group_size[g];
        if (g == G_DGRAM) {
            struct io_uring_recvmsg_out *o =
                io_uring_recvmsg_validate((void *)data, res, &b->dmsg);
            if (!o) {
                res = -EIO; /* cannot happen: the kernel wrote its header */
                data = NULL;
            } else {
                dg.data = io_uring_recvmsg_payload(o, &b->dmsg);
                dg.len = io_uring_recvmsg_payload_length(o, res, &b->dmsg);
                dg.addr = o->namelen ? io_uring_recvmsg_name(o) : NULL;
                dg.alen = o->namelen > DBUF_NAME ? DBUF_NAME : o->namelen;
                res = (int32_t)dg.len;
                data = &dg;
            }
        }
    }
    if (!more) {
        op->tag = 0;
        slot_free(b, i);
    }
    cb(loop, op, res, data, more);
    if (bid >= 0 && give)
        buf_give(b, g, (unsigned)bid);
}

static bool uring_has_ops(const struct tpio__backend *base) { return U(base)->ops_ok; }
static bool uring_has_file_ops(const struct tpio__backend *base) { return U(base)->file_ops; }

static void bufs_unmap(struct bgroup *gs)
{
    for (int g = 0; g < NGROUPS; g++) {
        if (gs[g].br)
            munmap(gs[g].br, group_count[g] * sizeof(struct io_uring_buf));
        if (gs[g].bufs)
            munmap(gs[g].bufs, (size_t)group_count[g] * group_size[g]);
    }
}

static void uring_close(struct tpio__backend *base)
{
    struct uring_backend *b = U(base);
    io_uring_queue_exit(&b->ring);
    bufs_unmap(b->g);
    while (b->retired) {
        struct retired *r = b->retired;
        b->retired = r->next;
        bufs_unmap(r->g);
        tpio__free(r);
    }
    close(b->probe_fd);
    tpio__free(b->slots);
    tpio__free(b);
}

static const struct tpio__backend_ops uring_ops = {
    .name = "io_uring",
    .io_set = uring_io_set,
    .io_forget = uring_io_forget,
    .poll = uring_poll,
    .close = uring_close,
    .recv = uring_recv,
    .send = uring_send,
    .accept = uring_accept,
    .recvmsg = uring_recvmsg,
    .sendmsg = uring_sendmsg,
    .connect = uring_connect,
    .waitid = uring_waitid,
    .cancel = uring_cancel,
    .drop = uring_drop,
    .has_ops = uring_has_ops,
    .has_file_ops = uring_has_file_ops,
};

/* The ring, with what the kernel has of: SINGLE_ISSUER + DEFER_TASKRUN (6.1:
 * the kernel's work for the ring — the receives and sends themselves, once
 * a socket is ready — runs inside the owner's waits, in batches, instead of
 * interrupting it at any time) and COOP_TASKRUN. *flags: the flags to use,
 * or 0 to find them (set on return). */
static int ring_init(struct io_uring *ring, unsigned *flags)
{
    /* TPIO_URING_ENTRIES=N (tests): N submission entries and 2N completion
     * entries, so that a few connections overflow the completion queue. */
    unsigned sq = RING_ENTRIES;
    const char *e = getenv("TPIO_URING_ENTRIES");
    if (e) {
        char *end;
        unsigned long n = strtoul(e, &end, 10);
        if (*e && !*end && n >= 1 && n <= RING_ENTRIES)
            sq = (unsigned)n;
    }
    static const unsigned tries[] = {
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SINGLE_ISSUER |
            IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        0,
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof tries / sizeof *tries; i++) {
        if (*flags && tries[i] != *flags)
            continue;
        struct io_uring_params p = {.flags = tries[i] | IORING_SETUP_SUBMIT_ALL |
                                             IORING_SETUP_CQSIZE,
                                    .cq_entries = 2 * sq};
        if (sq == RING_ENTRIES)
            p.cq_entries = CQ_ENTRIES;
        rc = io_uring_queue_init_params(sq, ring, &p);
        if (rc != -EINVAL) {
            *flags = tries[i];
            break;
        }
    }
    return rc;
}

/* A loop run by another thread than its ring's: the kernel refuses any
 * other thread a SINGLE_ISSUER ring (-EEXIST), and asyncio lets one thread
 * run a loop after another, so the loop moves to a new ring of the running
 * thread's. The old ring's completions are copied out and delivered; what
 * was in flight in it goes with it — the kernel did none of it, since with
 * DEFER_TASKRUN its work for the ring runs only inside the owner's waits —
 * and is asked anew of the new ring (a watch, a receive, a send of the same
 * bytes); a cancel under way ends as cancelled. Returns the completions
 * delivered, or -errno (the loop stays on the old ring). */
static int migrate(struct uring_backend *b, tpio_loop_t *loop)
{
    unsigned n = io_uring_cq_ready(&b->ring);
    struct retired *r = tpio__calloc(1, sizeof *r);
    struct cqe_copy *v = tpio__malloc((n ? n : 1) * sizeof *v);
    struct io_uring nr;
    unsigned flags = b->flags;
    int rc = r && v ? ring_init(&nr, &flags) : -ENOMEM;
    if (rc < 0) {
        tpio__free(r);
        tpio__free(v);
        return rc;
    }
    unsigned head, k = 0;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(&b->ring, head, cqe)
    {
        if (k == n)
            break;
        v[k++] = (struct cqe_copy){io_uring_cqe_get_data64(cqe), cqe->res, cqe->flags};
    }
    io_uring_queue_exit(&b->ring);
    b->ring = nr;
    b->owner = pthread_self();
    /* The kernel may finish its cancellations after the close returned:
     * what it wrote into stays mapped until the loop closes. */
    memcpy(r->g, b->g, sizeof r->g);
    r->next = b->retired;
    b->retired = r;
    memset(b->g, 0, sizeof b->g);
    /* Failing, receives fail (-ENOMEM): their transports end. The receives
     * asked anew below take from the new buffers. */
    if (b->ops_ok && ops_init(b) == 0) {
        for (int g = 0; g < NGROUPS; g++)
            if (r->g[g].bufs)
                bufs_make(b, g);
    }
    uint32_t old = b->epoch++;
    int dispatched = dispatch(b, loop, v, k, r->g);
    tpio__free(v);
    /* Callbacks may add slots (and move the array): by index, and what the
     * new ring already has is skipped by its epoch. */
    for (uint32_t i = 0; i < b->nslots; i++) {
        struct slot *s = &b->slots[i];
        if (s->kind == SLOT_FREE || s->epoch != old)
            continue;
        if (s->kind == SLOT_IO) {
            if (s->armed)
                arm(b, i);
            continue;
        }
        if (!s->op) { /* dropped: nothing waits for it */
            slot_free(b, i);
            continue;
        }
        bool can = (s->kind != SLOT_RECV || b->g[G_STREAM].bufs) &&
                   (s->kind != SLOT_RECVMSG || b->g[G_DGRAM].bufs);
        struct io_uring_sqe *sqe = s->armed && can ? sqe_get(b) : NULL;
        if (sqe && s->kind == SLOT_RECV) {
            prep_recv(b, i, sqe);
        } else if (sqe && s->kind == SLOT_RECVMSG) {
            prep_recvmsg(b, i, sqe);
        } else if (sqe && s->kind == SLOT_SENDMSG) {
            prep_sendmsg(b, i, sqe);
        } else if (sqe && s->kind == SLOT_ACCEPT) {
            prep_accept(b, i, sqe);
        } else if (sqe && s->kind == SLOT_WAITID) {
            /* The old ring never reaped: only its owner's waits could, and
             * its cancellation at the close leaves the child a zombie. */
            prep_waitid(b, i, sqe);
        } else if (sqe && s->kind == SLOT_CONNECT) {
            /* The kernel may have begun it (a second connect would say
             * EALREADY): the new ring waits for writability instead. */
            s->seq = b->ring.sq.sqe_tail - 1;
            s->epoch = b->epoch;
            s->polled = true;
            io_uring_prep_poll_add(sqe, s->fd, POLLOUT);
            io_uring_sqe_set_data64(sqe, ud_of(i, s->gen));
        } else if (sqe) {
            prep_send(b, i, sqe);
        } else {
            op_done(b, loop, i, s->armed ? -ENOMEM : -ECANCELED, 0, NULL);
            dispatched++;
        }
    }
    return dispatched;
}

int tpio__uring_open(struct tpio__backend **out)
{
    struct uring_backend *b = tpio__calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    b->base.ops = &uring_ops;
    b->free_head = NO_SLOT;
    b->probe_fd = epoll_create1(EPOLL_CLOEXEC);
    if (b->probe_fd < 0) {
        int err = -errno;
        tpio__free(b);
        return err;
    }
    int rc = ring_init(&b->ring, &b->flags);
    if (rc < 0) {
        close(b->probe_fd);
        tpio__free(b);
        return rc;
    }
    /* Operations, where the kernel has them; else readiness alone. The
     * environment can ask for readiness alone (tests, comparisons). */
    const char *e = getenv("TPIO_URING_OPS");
    b->ops_ok = !(e && strcmp(e, "0") == 0) && kernel_has_ops() && ops_init(b) == 0;
    b->single = b->flags & IORING_SETUP_SINGLE_ISSUER;
    probe_opcodes(b);
    /* TPIO_URING_BATCH=1 (tests): small writes wait for the loop's next
     * submission even when the loop is not batching, deterministically. */
    e = getenv("TPIO_URING_BATCH");
    b->batch_always = e && strcmp(e, "1") == 0;
    b->dmsg.msg_namelen = DBUF_NAME;
    b->owner = pthread_self();
    *out = &b->base;
    return 0;
}
