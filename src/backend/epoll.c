/* The epoll backend, level-triggered. */
#include "backend/backend.h"

#include <assert.h>
#include <sys/epoll.h>
#include <unistd.h>

static_assert(TPIO__IN == EPOLLIN && TPIO__OUT == EPOLLOUT && TPIO__ERR == EPOLLERR &&
                  TPIO__HUP == EPOLLHUP,
              "tpio's readiness bits pass through to epoll untranslated");

#define MAX_EVENTS 256

struct epoll_backend {
    struct tpio__backend base;
    int epfd;
    /* The batch being dispatched: a watcher removed during dispatch has its
     * later entries cleared, so its owner may be freed at once. */
    int batch_n, batch_i;
    struct epoll_event batch[MAX_EVENTS];
};

#define E(b) ((struct epoll_backend *)(b))

static void epoll_close(struct tpio__backend *base)
{
    close(E(base)->epfd);
    tpio__free(base);
}

static int epoll_io_set(struct tpio__backend *base, struct tpio__io *io, uint32_t want)
{
    struct epoll_backend *b = E(base);
    int op;
    struct epoll_event ev = {.events = want, .data.ptr = io};
    /* An fd with an empty interest set is removed rather than kept with 0:
     * epoll would still report EPOLLHUP/EPOLLERR for it and spin. */
    if (want == 0)
        op = EPOLL_CTL_DEL;
    else if (io->registered == 0)
        op = EPOLL_CTL_ADD;
    else
        op = EPOLL_CTL_MOD;
    if (op == EPOLL_CTL_DEL) {
        for (int i = b->batch_i + 1; i < b->batch_n; i++)
            if (b->batch[i].data.ptr == io)
                b->batch[i].data.ptr = NULL;
    }
    int rc = epoll_ctl(b->epfd, op, io->fd, &ev);
    /* The kernel drops a descriptor from the set when it is closed: a new
     * descriptor of the same number, or one the user closed under a watch,
     * is added afresh. */
    if (rc < 0 && op == EPOLL_CTL_MOD && errno == ENOENT)
        rc = epoll_ctl(b->epfd, EPOLL_CTL_ADD, io->fd, &ev);
    if (rc < 0) {
        /* DEL of an fd the kernel already forgot (closed elsewhere) is fine. */
        if (op == EPOLL_CTL_DEL && (errno == ENOENT || errno == EBADF)) {
            io->registered = 0;
            return 0;
        }
        /* epoll says EPERM for what it cannot poll (regular files,
         * directories, /dev/null): name that for what it is. */
        return errno == EPERM ? TPIO_ENOTWATCHABLE : -errno;
    }
    io->registered = want;
    return 0;
}

/* The kernel dropped the registration with the closed file: nothing to
 * tell it, only the batch being dispatched to forget io. */
static void epoll_io_forget(struct tpio__backend *base, struct tpio__io *io)
{
    struct epoll_backend *b = E(base);
    for (int i = b->batch_i + 1; i < b->batch_n; i++)
        if (b->batch[i].data.ptr == io)
            b->batch[i].data.ptr = NULL;
    io->registered = 0;
}

static int epoll_poll(struct tpio__backend *base, tpio_loop_t *loop, int timeout_ms,
                      const struct tpio__wait_hooks *hooks)
{
    struct epoll_backend *b = E(base);
    int n;
    if (hooks && timeout_ms != 0) {
        /* A busy loop finds events at once and never brackets the wait. */
        n = epoll_wait(b->epfd, b->batch, MAX_EVENTS, 0);
        if (n == 0) {
            hooks->before(loop, hooks->arg);
            n = epoll_wait(b->epfd, b->batch, MAX_EVENTS, timeout_ms);
            int e = errno;
            hooks->after(loop, hooks->arg);
            errno = e;
        }
    } else {
        n = epoll_wait(b->epfd, b->batch, MAX_EVENTS, timeout_ms);
    }
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    b->batch_n = n;
    for (b->batch_i = 0; b->batch_i < n; b->batch_i++) {
        struct tpio__io *io = b->batch[b->batch_i].data.ptr;
        if (io) /* NULL: removed by an earlier callback of this batch */
            io->cb(loop, io, b->batch[b->batch_i].events);
    }
    b->batch_n = b->batch_i = 0;
    return n;
}

static const struct tpio__backend_ops epoll_ops = {
    .name = "epoll",
    .io_set = epoll_io_set,
    .io_forget = epoll_io_forget,
    .poll = epoll_poll,
    .close = epoll_close,
};

int tpio__epoll_open(struct tpio__backend **out)
{
    struct epoll_backend *b = tpio__calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    b->base.ops = &epoll_ops;
    b->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (b->epfd < 0) {
        int err = -errno;
        tpio__free(b);
        return err;
    }
    *out = &b->base;
    return 0;
}
