/* The io_uring backend, first step: the same readiness interface as epoll,
 * on one ring. Each watched descriptor has a one-shot poll request in
 * flight, armed again after its event has been dispatched (a multishot
 * poll fires on wake-ups only, and the transports rely on level-triggered
 * readiness: a bounded read burst leaves data behind on purpose). Changes
 * of interest and re-arms are queued as submissions and go to the kernel
 * with the wait, in one io_uring_enter per loop iteration.
 *
 * Requests name their descriptor by a slot and a generation (user_data),
 * never by a pointer: a watcher removed during the dispatch of a batch, or
 * freed right after, has its slot's generation moved on, and what comes
 * for the old one is dropped.
 *
 * Reads, writes, accepts and connects are still done by the transports on
 * readiness; operations on the ring itself are the next step (issue 13). */
#include "backend/backend.h"

#include <liburing.h>
#include <poll.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

_Static_assert(TPIO__IN == POLLIN && TPIO__OUT == POLLOUT && TPIO__ERR == POLLERR &&
                   TPIO__HUP == POLLHUP,
               "tpio's readiness bits pass through to poll untranslated");

#define RING_ENTRIES 256
#define MAX_BATCH 256
#define UD_IGNORE UINT64_MAX /* the completions of removals */

struct slot {
    struct tpio__io *io; /* NULL: free */
    uint32_t gen;
    uint32_t next_free;
    bool armed; /* a poll request is in flight */
};

struct uring_backend {
    struct tpio__backend base;
    struct io_uring ring;
    /* epoll refuses at once what it cannot poll (regular files, /dev/null)
     * where a ring's poll would report it ready for ever; new descriptors
     * are asked of an epoll set of their own, so that both backends refuse
     * the same ones (TPIO_ENOTWATCHABLE). */
    int probe_fd;
    struct slot *slots;
    uint32_t nslots, free_head;
    /* The batch being dispatched, copied out of the completion queue. */
    int batch_n;
    struct {
        uint64_t ud;
        int32_t res;
    } batch[MAX_BATCH];
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
            v[i] = (struct slot){NULL, 0, i + 1 < n ? i + 1 : NO_SLOT, false};
        b->free_head = b->nslots;
        b->slots = v;
        b->nslots = n;
    }
    uint32_t i = b->free_head;
    b->free_head = b->slots[i].next_free;
    b->slots[i].io = io;
    b->slots[i].armed = false;
    *out = i;
    return 0;
}

static void slot_free(struct uring_backend *b, uint32_t i)
{
    disarm(b, i);
    b->slots[i].io = NULL;
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

static int uring_poll(struct tpio__backend *base, tpio_loop_t *loop, int timeout_ms,
                      const struct tpio__wait_hooks *hooks)
{
    struct uring_backend *b = U(base);
    int rc;
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
    for (unsigned k = 0; k < n; k++) {
        b->batch[k].ud = io_uring_cqe_get_data64(cqes[k]);
        b->batch[k].res = cqes[k]->res;
    }
    io_uring_cq_advance(&b->ring, n);
    int dispatched = 0;
    for (unsigned k = 0; k < n; k++) {
        uint64_t ud = b->batch[k].ud;
        if (ud == UD_IGNORE)
            continue;
        uint32_t i = (uint32_t)ud, gen = (uint32_t)(ud >> 32);
        if (i >= b->nslots || !b->slots[i].io || b->slots[i].gen != gen)
            continue; /* removed, or re-armed since: stale */
        struct slot *s = &b->slots[i];
        struct tpio__io *io = s->io;
        s->armed = false;
        int32_t res = b->batch[k].res;
        uint32_t events = res >= 0 ? (uint32_t)res : TPIO__ERR | TPIO__HUP;
        dispatched++;
        io->cb(loop, io, events);
        /* Level-triggered, as epoll: armed again unless the callback
         * changed the interest (which armed it) or removed it. */
        s = &b->slots[i];
        if (s->io == io && s->gen == gen && !s->armed && io->registered && res >= 0)
            arm(b, i);
    }
    return dispatched;
}

static void uring_close(struct tpio__backend *base)
{
    struct uring_backend *b = U(base);
    io_uring_queue_exit(&b->ring);
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
};

/* The ring, COOP_TASKRUN where the kernel has it (completions are run when
 * the loop enters the kernel, not by interrupting it). SINGLE_ISSUER and
 * DEFER_TASKRUN would tie the ring to one thread for good, and a loop may
 * be run by one thread after another (asyncio allows it): not yet. */
static int ring_init(struct io_uring *ring)
{
    static const unsigned flags[] = {
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        0,
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++) {
        struct io_uring_params p = {.flags = flags[i] | IORING_SETUP_SUBMIT_ALL};
        rc = io_uring_queue_init_params(RING_ENTRIES, ring, &p);
        if (rc != -EINVAL)
            break;
    }
    return rc;
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
    int rc = ring_init(&b->ring);
    if (rc < 0) {
        close(b->probe_fd);
        tpio__free(b);
        return rc;
    }
    *out = &b->base;
    return 0;
}
