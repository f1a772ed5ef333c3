/* Descriptors: which ones the library's own objects use (a transport's
 * socket, a server's listener, a child's pidfd), and the user's watchers on
 * any other descriptor the kernel can poll (asyncio's add_reader /
 * add_writer). One watcher per descriptor holds both directions, since the
 * backend registers a descriptor once. */
#include "loop/loop.h"

#include <string.h>

struct tpio__fdw {
    struct tpio__io io;
    tpio_fd_cb_t cb[2]; /* [0] reader, [1] writer */
    void *arg[2];
    bool dispatching;   /* its callbacks are running: freed after them */
    bool dead;          /* removed while dispatching */
};

enum { READER, WRITER };

/* ---- descriptors the library uses ------------------------------------------ */

/* The loop's own eventfd is the loop's from the start. */
static bool claimed(const tpio_loop_t *loop, int fd)
{
    size_t w = (size_t)fd / 64;
    return fd == loop->efd || (w < loop->nclaimed && (loop->claimed[w] >> (fd % 64) & 1));
}

static void watcher_free(tpio_loop_t *loop, struct tpio__fdw *w);
static void watchers_drop(tpio_loop_t *loop);
static void watchers_close(tpio_loop_t *loop);
static const struct tpio__service watch_service = {NULL, watchers_drop, watchers_close};

static struct tpio__fdw *watcher_of(const tpio_loop_t *loop, int fd)
{
    return (size_t)fd < loop->nwatchers ? loop->watchers[fd] : NULL;
}

int tpio__fd_claim(tpio_loop_t *loop, int fd)
{
    if (fd < 0)
        return -EBADF;
    if (watcher_of(loop, fd) || claimed(loop, fd))
        return TPIO_EFDINUSE;
    size_t w = (size_t)fd / 64;
    tpio__loop_service(loop, &watch_service);
    if (w >= loop->nclaimed) {
        size_t n = loop->nclaimed ? loop->nclaimed : 4;
        while (n <= w)
            n *= 2;
        uint64_t *c = tpio__realloc(loop->claimed, n * sizeof *c);
        if (!c)
            return -ENOMEM;
        memset(c + loop->nclaimed, 0, (n - loop->nclaimed) * sizeof *c);
        loop->claimed = c;
        loop->nclaimed = n;
    }
    loop->claimed[w] |= (uint64_t)1 << (fd % 64);
    return 0;
}

int tpio__fd_check(const tpio_loop_t *loop, int fd)
{
    return fd >= 0 && (watcher_of(loop, fd) || claimed(loop, fd)) ? TPIO_EFDINUSE : 0;
}

int tpio__fd_watchable(tpio_loop_t *loop, int fd)
{
    struct tpio__io probe;
    tpio__io_init(&probe, fd, NULL);
    int rc = tpio__watch(loop, &probe, TPIO__IN);
    if (rc == 0)
        tpio__watch(loop, &probe, 0);
    return rc;
}

int tpio__fd_claim_new(tpio_loop_t *loop, int fd)
{
    struct tpio__fdw *w = fd >= 0 ? watcher_of(loop, fd) : NULL;
    if (w) {
        /* The user closed the watched descriptor and the kernel gave its
         * number to the library: the watcher is stale. The kernel dropped
         * the old registration with the old file; no epoll call now, it
         * would name the new one. */
        tpio__io_forget(loop->backend, &w->io);
        watcher_free(loop, w);
    }
    return tpio__fd_claim(loop, fd);
}

void tpio__fd_release(tpio_loop_t *loop, int fd)
{
    if (fd >= 0 && (size_t)fd / 64 < loop->nclaimed)
        loop->claimed[fd / 64] &= ~((uint64_t)1 << (fd % 64));
}

/* ---- the user's watchers ---------------------------------------------------------- */

static uint32_t interest(const struct tpio__fdw *w)
{
    return (w->cb[READER] ? TPIO__IN : 0) | (w->cb[WRITER] ? TPIO__OUT : 0);
}

static void watcher_free(tpio_loop_t *loop, struct tpio__fdw *w)
{
    tpio__watch(loop, &w->io, 0);
    loop->watchers[w->io.fd] = NULL;
    if (w->dispatching)
        w->dead = true; /* the dispatch frees it when its callbacks return */
    else
        tpio__free(w);
}

/* As selectors.EpollSelector: an error or hang-up wakes both directions. */
static void watcher_ready(tpio_loop_t *loop, struct tpio__io *io, uint32_t events)
{
    struct tpio__fdw *w = tpio_container_of(io, struct tpio__fdw, io);
    int fd = io->fd;
    w->dispatching = true;
    if ((events & (TPIO__IN | TPIO__ERR | TPIO__HUP)) && w->cb[READER])
        w->cb[READER](loop, fd, w->arg[READER]);
    /* The reader may have removed the writer, or the whole watcher. */
    if (!w->dead && (events & (TPIO__OUT | TPIO__ERR | TPIO__HUP)) && w->cb[WRITER])
        w->cb[WRITER](loop, fd, w->arg[WRITER]);
    w->dispatching = false;
    if (w->dead)
        tpio__free(w);
}

static int add(tpio_loop_t *loop, int fd, int dir, tpio_fd_cb_t cb, void *arg)
{
    if (!loop || !cb)
        return -EINVAL;
    if (fd < 0)
        return -EBADF;
    if (claimed(loop, fd))
        return TPIO_EFDINUSE;
    struct tpio__fdw *w = watcher_of(loop, fd);
    bool fresh = !w;
    tpio__loop_service(loop, &watch_service);
    if (fresh) {
        if ((size_t)fd >= loop->nwatchers) {
            size_t n = loop->nwatchers ? loop->nwatchers : 16;
            while (n <= (size_t)fd)
                n *= 2;
            struct tpio__fdw **tab = tpio__realloc(loop->watchers, n * sizeof *tab);
            if (!tab)
                return -ENOMEM;
            memset(tab + loop->nwatchers, 0, (n - loop->nwatchers) * sizeof *tab);
            loop->watchers = tab;
            loop->nwatchers = n;
        }
        w = tpio__calloc(1, sizeof *w);
        if (!w)
            return -ENOMEM;
        tpio__io_init(&w->io, fd, watcher_ready);
    }
    tpio_fd_cb_t old_cb = w->cb[dir];
    void *old_arg = w->arg[dir];
    w->cb[dir] = cb; /* adding again replaces the callback */
    w->arg[dir] = arg;
    int rc = tpio__watch(loop, &w->io, interest(w));
    if (rc < 0) {
        w->cb[dir] = old_cb;
        w->arg[dir] = old_arg;
        if (fresh)
            tpio__free(w);
        return rc;
    }
    if (fresh)
        loop->watchers[fd] = w;
    return 0;
}

static int remove_dir(tpio_loop_t *loop, int fd, int dir, bool *removed)
{
    if (!loop)
        return -EINVAL;
    if (fd < 0)
        return -EBADF;
    if (claimed(loop, fd)) /* a transport's or server's: as asyncio, an error */
        return TPIO_EFDINUSE;
    struct tpio__fdw *w = watcher_of(loop, fd);
    bool had = w && w->cb[dir];
    if (had) {
        w->cb[dir] = NULL;
        w->arg[dir] = NULL;
        if (!interest(w))
            watcher_free(loop, w);
        else
            tpio__watch(loop, &w->io, interest(w)); /* fewer events: cannot fail */
    }
    if (removed)
        *removed = had;
    return 0;
}

int tpio_loop_add_reader(tpio_loop_t *loop, int fd, tpio_fd_cb_t cb, void *arg)
{
    return add(loop, fd, READER, cb, arg);
}

int tpio_loop_add_writer(tpio_loop_t *loop, int fd, tpio_fd_cb_t cb, void *arg)
{
    return add(loop, fd, WRITER, cb, arg);
}

int tpio_loop_remove_reader(tpio_loop_t *loop, int fd, bool *removed)
{
    return remove_dir(loop, fd, READER, removed);
}

int tpio_loop_remove_writer(tpio_loop_t *loop, int fd, bool *removed)
{
    return remove_dir(loop, fd, WRITER, removed);
}

/* Shutdown: the user's watchers go. */
static void watchers_drop(tpio_loop_t *loop)
{
    for (size_t fd = 0; fd < loop->nwatchers; fd++)
        if (loop->watchers[fd])
            watcher_free(loop, loop->watchers[fd]);
}

/* Close: the watchers left and the claims go. */
static void watchers_close(tpio_loop_t *loop)
{
    watchers_drop(loop);
    tpio__free(loop->watchers);
    loop->watchers = NULL;
    loop->nwatchers = 0;
    tpio__free(loop->claimed);
    loop->claimed = NULL;
    loop->nclaimed = 0;
}
