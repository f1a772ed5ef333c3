/* The loop layer: the ready FIFO, timers, call_soon_threadsafe, the error
 * handler, the resolver, and the few things the loop keeps for the layers
 * above (a shared read buffer, a count of live objects). It knows nothing
 * of epoll (that is the backend's) nor of any transport kind. */
#ifndef TPIO_LOOP_H
#define TPIO_LOOP_H

#include "backend/backend.h"

#include <pthread.h>
#include <stdatomic.h>

/* The size of the loop's shared read buffer: the largest single read. */
#define TPIO__READ_SIZE TPIO_READ_SIZE_MAX

struct tpio__slot {
    tpio_callback_t cb;
    void *arg;
    uint64_t when;  /* timers: deadline in ns */
    uint64_t seq;   /* timers: FIFO order among equal deadlines */
    uint32_t gen;   /* bumped when the slot is freed: stale handles miss */
    uint32_t next;  /* ready FIFO / free list link */
    uint32_t heap;  /* timers: index in the heap */
    uint8_t state;
};

/* A callback that must run even when no memory is left to schedule it (the
 * end of a connection, a child's exit, a result from another thread): its
 * owner embeds the node, so queuing it cannot fail. cb gets the node as its
 * argument (container_of leads to the owner): two words per owner. */
struct tpio__node {
    struct tpio__node *next;
    tpio_callback_t cb;
};

/* Objects the layers above file with the loop so that shutdown can end
 * them: each list says how to end its items (close, or abort). */
struct tpio__owned {
    struct tpio__list items;
    void (*end)(struct tpio__list *item, bool abort);
};
enum { TPIO__OWNED_TRANSPORTS, TPIO__OWNED_SERVERS, TPIO__OWNED_KINDS };

/* A service built on the loop (descriptor watchers, signals): the loop
 * calls it when its eventfd wakes it, at shutdown and at close, without
 * knowing what it is. Registered once per loop, on first use. */
struct tpio__service {
    void (*wake)(tpio_loop_t *loop);
    void (*shutdown)(tpio_loop_t *loop);
    void (*close)(tpio_loop_t *loop);
};
#define TPIO__MAX_SERVICES 4

struct tpio_loop {
    struct tpio__backend *backend;
    const struct tpio__service *services[TPIO__MAX_SERVICES];
    int nservices;
    struct tpio__slot *slots;
    uint32_t nslots, free_head;
    uint32_t ready_head, ready_tail, nready;
    uint32_t *heap;
    uint32_t heap_len, heap_cap;
    uint64_t timer_seq;
    bool running, stopping;
    /* Nodes that could not get a slot (out of memory): run after the ready
     * queue of the next iteration, in order. */
    struct tpio__node *late_head, *late_tail;

    int efd; /* eventfd that wakes the loop for call_soon_threadsafe */
    struct tpio__io efd_io;
    struct tpio__op efd_op; /* io_uring with file operations: its multishot read */
    pthread_mutex_t ts_lock;
    struct tpio__node *ts_head, *ts_tail;
    atomic_bool ts_signalled;

    tpio_error_handler_t error_handler;
    void *error_arg;

    /* An embedder's hooks around a wait that may block (both or neither). */
    struct tpio__wait_hooks wait;

    /* For the layers above: the buffer Protocol reads go into (one per
     * loop: a read is delivered before the next one starts), and the write
     * buffer's pool of drained chunks (freed at close). */
    unsigned char *rbuf;
    void *spare_chunk; /* a pool: a list through each one's first pointer */
    /* A second buffer of TPIO__LAYER_BUF_SIZE for a layer that transforms
     * what was read into rbuf (TLS decrypts into it); made on first use. */
    unsigned char *layer_buf;

    /* Transports, servers and connection attempts alive: the loop refuses
     * to close while any exists. */
    size_t live;
    struct tpio__owned owned[TPIO__OWNED_KINDS];
    /* tpio_loop_shutdown under way: its callback, once live is 0 */
    tpio_done_cb_t shutdown_cb, escalate_cb; /* the second: a later ABORT */
    void *shutdown_arg, *escalate_arg;
    bool shutdown_aborts;
    struct tpio__node shutdown_node;

    /* Descriptors the library's objects use (a bit each), and the user's
     * watchers, indexed by descriptor (watch.c). */
    uint64_t *claimed;
    size_t nclaimed;
    struct tpio__fdw **watchers;
    size_t nwatchers;

    /* The signals this loop owns (bit sig - 1) and their handlers
     * (signal.c); a signal wakes the loop through efd. */
    uint64_t sig_mask;
    struct tpio__sighandler {
        tpio_signal_cb_t cb;
        void *arg;
    } *sig_handlers;
};

#define TPIO__LAYER_BUF_SIZE (64 * 1024)
/* The loop's layer buffer (see layer_buf), or NULL without memory. */
TPIO__HIDDEN unsigned char *tpio__loop_layer_buf(tpio_loop_t *loop);

TPIO__HIDDEN uint64_t tpio__now_ns(void);
/* Schedule n->cb(loop, n) as call_soon would; when no slot can be had, it
 * still runs, after this iteration's queue. n must stay valid until it has
 * run. */
TPIO__HIDDEN void tpio__call_soon_node(tpio_loop_t *loop, struct tpio__node *n);
/* A request under way (a connection attempt, a sendfile...): its handle,
 * for tpio_loop_cancel, calls cancel(loop, req) once, which must end the
 * request and schedule its completion with -ECANCELED. done() retires the
 * handle when the request ends otherwise (a later cancel gives -ENOENT). */
TPIO__HIDDEN int tpio__request_new(tpio_loop_t *loop, tpio_callback_t cancel, void *req,
                                   tpio_handle_t *h);
/* A request that shutdown leaves to end by itself (a wait_closed, which
 * the servers' closing ends). */
TPIO__HIDDEN void tpio__request_keep_on_shutdown(tpio_loop_t *loop, tpio_handle_t h);
TPIO__HIDDEN void tpio__request_done(tpio_loop_t *loop, tpio_handle_t h);
/* The request goes on under a new owner (a TLS handshake after the
 * connection it was): a cancel of h now calls cancel(loop, req). False if h
 * is no longer a request. */
TPIO__HIDDEN bool tpio__request_pass(tpio_loop_t *loop, tpio_handle_t h, tpio_callback_t cancel,
                                     void *req);
/* Queue a node from any thread (cannot fail). */
TPIO__HIDDEN void tpio__call_soon_threadsafe_node(tpio_loop_t *loop, struct tpio__node *n);
/* Report to the error handler. */
TPIO__HIDDEN void tpio__report(tpio_loop_t *loop, const char *msg, int err,
                               tpio_transport_t *t, tpio_protocol_t *p, tpio_server_t *s,
                               int fd);
TPIO__HIDDEN void tpio__shutdown_check(tpio_loop_t *loop);
static inline void tpio__loop_hold(tpio_loop_t *loop) { loop->live++; }
static inline void tpio__loop_release(tpio_loop_t *loop)
{
    if (--loop->live == 0 && __builtin_expect(loop->shutdown_cb != NULL, 0))
        tpio__shutdown_check(loop);
}
/* File item in the loop's list of `kind`, whose items `end` ends. */
static inline void tpio__loop_own(tpio_loop_t *loop, int kind, struct tpio__list *item,
                                  void (*end)(struct tpio__list *, bool))
{
    loop->owned[kind].end = end;
    tpio__list_add_tail(&loop->owned[kind].items, item);
}
/* Watch fd through the loop's backend. */
static inline int tpio__watch(tpio_loop_t *loop, struct tpio__io *io, uint32_t want)
{
    return tpio__io_set(loop->backend, io, want);
}

/* Register s with the loop (idempotent). */
static inline void tpio__loop_service(tpio_loop_t *loop, const struct tpio__service *s)
{
    for (int i = 0; i < loop->nservices; i++)
        if (loop->services[i] == s)
            return;
    loop->services[loop->nservices++] = s;
}

/* ---- descriptors (watch.c) ----------------------------------------------- */
/* The library's objects claim the descriptors they use, so that the user
 * cannot watch them (TPIO_EFDINUSE, as asyncio refuses add_reader on a
 * transport's socket) nor hand a watched one to a transport. 0, -ENOMEM,
 * TPIO_EFDINUSE. */
TPIO__HIDDEN int tpio__fd_claim(tpio_loop_t *loop, int fd);
/* For a descriptor the library itself just opened (or holds claimed since
 * the user's call): a watcher on its number is the user's stale one, of a
 * descriptor closed under its watch, and is dropped. */
TPIO__HIDDEN int tpio__fd_claim_new(tpio_loop_t *loop, int fd);
TPIO__HIDDEN void tpio__fd_release(tpio_loop_t *loop, int fd);
/* 0 if fd is free for a transport (neither claimed nor watched), else
 * TPIO_EFDINUSE: checked inside the user's call, before the fd is taken. */
TPIO__HIDDEN int tpio__fd_check(const tpio_loop_t *loop, int fd);
/* 0 if the loop's backend can watch fd, TPIO_ENOTWATCHABLE if it never can
 * (regular files, /dev/null), or the error of a descriptor that is not open;
 * asked by registering it for a moment, so fd must be free (fd_check). */
TPIO__HIDDEN int tpio__fd_watchable(tpio_loop_t *loop, int fd);


/* ---- resolver ----------------------------------------------------------- */
struct tpio__resolve;
typedef void (*tpio__resolve_cb)(struct tpio__resolve *r);
struct tpio__resolve {
    tpio_loop_t *loop;
    char *host, *local_host;
    char port[8], local_port[8];
    struct addrinfo hints;
    struct addrinfo *res, *local_res;
    int err; /* 0 or tpio error code */
    tpio__resolve_cb done;
    struct tpio__node node;
    /* The owner's reference, and a running thread's: the owner may give up
     * (cancel) while the thread still resolves; the last one out calls
     * release, which frees the owner and must not touch the loop. */
    atomic_int refs;
    atomic_int state;
    void (*release)(struct tpio__resolve *r);
};
/* Resolve on a helper thread unless both names are numeric (then inline, with
 * `done` called from the loop on the next iteration). The owner sets loop,
 * names, hints, done and release; it holds one reference from then on. */
TPIO__HIDDEN int tpio__resolve_start(struct tpio__resolve *r);
/* The owner gives up: true if `done` will never be called (a thread was
 * resolving and now owns its result), false if it is still to come. */
TPIO__HIDDEN bool tpio__resolve_cancel(struct tpio__resolve *r);
/* The owner is done with r (release may run now or when the thread ends). */
TPIO__HIDDEN void tpio__resolve_put(struct tpio__resolve *r);
TPIO__HIDDEN int tpio__getaddrinfo(const char *host, const char *port,
                                   const struct addrinfo *hints,
                                   struct addrinfo **res);

#endif
