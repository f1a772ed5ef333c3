/* Readiness backend: epoll, level-triggered. Kept behind tpio__io_* so an
 * io_uring backend can replace it at the operation level later. */
#include "internal.h"

#include <sys/epoll.h>
#include <unistd.h>

#define TPIO__MAX_EVENTS 256

void tpio__io_init(struct tpio__io *io, int fd, tpio__io_cb cb)
{
    io->fd = fd;
    io->registered = 0;
    io->cb = cb;
}

int tpio__io_set(tpio_loop_t *loop, struct tpio__io *io, uint32_t want)
{
    if (want == io->registered)
        return 0; /* the common case on the hot path: no syscall */
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
        /* Later events of this batch for io must not be dispatched: its
         * owner may be freed as soon as this returns. */
        for (int i = loop->batch_i + 1; i < loop->batch_n; i++)
            if (loop->batch[i].data.ptr == io)
                loop->batch[i].data.ptr = NULL;
    }
    if (epoll_ctl(loop->epfd, op, io->fd, &ev) < 0) {
        /* DEL of an fd the kernel already forgot (closed elsewhere) is fine. */
        if (op == EPOLL_CTL_DEL && (errno == ENOENT || errno == EBADF)) {
            io->registered = 0;
            return 0;
        }
        return -errno;
    }
    io->registered = want;
    return 0;
}

int tpio__poll_open(tpio_loop_t *loop)
{
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    return loop->epfd < 0 ? -errno : 0;
}

void tpio__poll_close(tpio_loop_t *loop)
{
    if (loop->epfd >= 0)
        close(loop->epfd);
    loop->epfd = -1;
}

int tpio__poll_run(tpio_loop_t *loop, int timeout_ms)
{
    struct epoll_event evs[TPIO__MAX_EVENTS];
    int n = epoll_wait(loop->epfd, evs, TPIO__MAX_EVENTS, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    loop->batch = evs;
    loop->batch_n = n;
    for (loop->batch_i = 0; loop->batch_i < n; loop->batch_i++) {
        struct tpio__io *io = evs[loop->batch_i].data.ptr;
        if (io) /* NULL: removed by an earlier callback of this batch */
            io->cb(loop, io, evs[loop->batch_i].events);
    }
    loop->batch = NULL;
    loop->batch_n = loop->batch_i = 0;
    return n;
}
