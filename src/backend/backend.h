/* The backend: how the loop learns that descriptors are ready. The loop and
 * the transports see only this interface; the backend's state (the epoll
 * descriptor, the batch of events being dispatched) is its own, behind an
 * opaque pointer, as redis keeps aeApiState behind eventLoop->apidata. */
#ifndef TPIO_BACKEND_H
#define TPIO_BACKEND_H

#include "base/base.h"

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
};

struct tpio__backend;

TPIO__HIDDEN int tpio__backend_open(struct tpio__backend **out);
TPIO__HIDDEN void tpio__backend_close(struct tpio__backend *b);
TPIO__HIDDEN void tpio__io_init(struct tpio__io *io, int fd, tpio__io_cb cb);
/* Make the interest set `want`; nothing is done when it is already that.
 * An empty set stops watching: no event of the batch being dispatched
 * reaches io afterwards, so its owner may be freed at once. A descriptor
 * that cannot be watched at all gives TPIO_ENOTWATCHABLE. */
TPIO__HIDDEN int tpio__io_set(struct tpio__backend *b, struct tpio__io *io, uint32_t want);
/* An embedder's hooks around a wait that blocks (tpio_loop_set_wait_hooks). */
struct tpio__wait_hooks {
    tpio_wait_hook_t before, after;
    void *arg;
};
/* Wait up to timeout_ms (-1: no limit) and call the ready watchers'
 * callbacks with `loop`; returns the events dispatched or -errno. With
 * hooks (may be NULL), a wait that would block is bracketed by them; the
 * callbacks always run outside the bracket. */
TPIO__HIDDEN int tpio__backend_poll(struct tpio__backend *b, tpio_loop_t *loop, int timeout_ms,
                                    const struct tpio__wait_hooks *hooks);

#endif
