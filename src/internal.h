/* Private structures and helpers shared by the library's files. */
#ifndef TPIO_INTERNAL_H
#define TPIO_INTERNAL_H

#include "tpio.h"

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/epoll.h>

#define TPIO__HIDDEN __attribute__((visibility("hidden")))

/* The size of one read into the loop's shared buffer (asyncio's max_size). */
#define TPIO__READ_SIZE (256 * 1024)
/* Reads per readiness event while each one fills the buffer (libuv: 32),
 * and the bytes after which the event ends anyway, so that one busy
 * connection holds the loop for a bounded time. */
#define TPIO__READ_BURST 32
#define TPIO__READ_BURST_BYTES (1024 * 1024)
#define TPIO__DEFAULT_HIGH (64 * 1024)
#define TPIO__DEFAULT_BACKLOG 100
/* asyncio's ACCEPT_RETRY_DELAY: pause accepting this long after EMFILE. */
#define TPIO__ACCEPT_RETRY_DELAY 1.0
/* tpio's own error codes (TPIO_ERRORS) are all at or below this. */
#define TPIO__OWN_ERROR_BASE (-3000)

/* ---- intrusive doubly linked list --------------------------------------- */
struct tpio__list {
    struct tpio__list *prev, *next;
};
static inline void tpio__list_init(struct tpio__list *l) { l->prev = l->next = l; }
static inline bool tpio__list_empty(const struct tpio__list *l) { return l->next == l; }
static inline void tpio__list_add_tail(struct tpio__list *l, struct tpio__list *n)
{
    n->prev = l->prev;
    n->next = l;
    l->prev->next = n;
    l->prev = n;
}
static inline void tpio__list_del(struct tpio__list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

/* ---- readiness watcher (poll backend) ----------------------------------- */
struct tpio__io;
typedef void (*tpio__io_cb)(tpio_loop_t *loop, struct tpio__io *io, uint32_t events);

struct tpio__io {
    int fd;
    uint32_t registered; /* events currently in the kernel's interest set */
    tpio__io_cb cb;
};

#define TPIO__IN 0x001u  /* EPOLLIN */
#define TPIO__OUT 0x004u /* EPOLLOUT */
#define TPIO__ERR 0x008u /* EPOLLERR */
#define TPIO__HUP 0x010u /* EPOLLHUP */

TPIO__HIDDEN void tpio__io_init(struct tpio__io *io, int fd, tpio__io_cb cb);
/* Make the interest set `want`; a syscall only when it changes. */
TPIO__HIDDEN int tpio__io_set(tpio_loop_t *loop, struct tpio__io *io, uint32_t want);
TPIO__HIDDEN int tpio__poll_open(tpio_loop_t *loop);
TPIO__HIDDEN void tpio__poll_close(tpio_loop_t *loop);
/* Wait up to timeout_ms and dispatch; returns events dispatched or -errno. */
TPIO__HIDDEN int tpio__poll_run(tpio_loop_t *loop, int timeout_ms);

/* ---- the loop ----------------------------------------------------------- */
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

struct tpio__ts_node { /* call_soon_threadsafe request */
    struct tpio__ts_node *next;
    tpio_callback_t cb;
    void *arg;
    bool owned; /* freed by the loop after queuing */
};

struct tpio_loop {
    int epfd;
    /* The epoll batch being dispatched: a watcher removed during dispatch
     * has its later entries cleared, so its owner may be freed at once. */
    struct epoll_event *batch;
    int batch_n, batch_i;
    struct tpio__slot *slots;
    uint32_t nslots, free_head;
    /* Transports whose connection_lost could not get a slot (out of
     * memory): run from the next iteration, so it is never lost. */
    tpio_transport_t *lost_head;
    uint32_t ready_head, ready_tail, nready;
    uint32_t *heap;
    uint32_t heap_len, heap_cap;
    uint64_t timer_seq;
    bool running, stopping;

    int efd; /* eventfd for call_soon_threadsafe */
    struct tpio__io efd_io;
    pthread_mutex_t ts_lock;
    struct tpio__ts_node *ts_head, *ts_tail;
    atomic_bool ts_signalled;

    tpio_error_handler_t error_handler;
    void *error_arg;

    unsigned char *rbuf; /* shared read buffer for Protocol reads */
    struct tpio__chunk *spare_chunk; /* one drained write chunk, reused */

    /* live objects: the loop refuses to close while any exists */
    size_t ntransports, nservers, npending;
};

TPIO__HIDDEN uint64_t tpio__now_ns(void);
TPIO__HIDDEN void tpio__run_lost_list(tpio_loop_t *loop);
/* Queue a pre-allocated node from any thread (cannot fail). */
TPIO__HIDDEN void tpio__call_soon_threadsafe_node(tpio_loop_t *loop,
                                                  struct tpio__ts_node *n);
TPIO__HIDDEN void tpio__report(tpio_loop_t *loop, const char *msg, int err,
                               tpio_transport_t *t, tpio_server_t *s, int fd);

/* ---- errors ------------------------------------------------------------- */
TPIO__HIDDEN int tpio__gai_error(int eai);

/* ---- transports --------------------------------------------------------- */
struct tpio__transport_vt {
    int (*close)(tpio_transport_t *t);
    int (*abort)(tpio_transport_t *t);
    int (*write)(tpio_transport_t *t, const struct iovec *iov, int iovcnt,
                 size_t total);
    /* Optional fast path for one buffer (tpio_write), same semantics. */
    int (*write1)(tpio_transport_t *t, const void *data, size_t len);
    int (*write_eof)(tpio_transport_t *t);
    bool (*can_write_eof)(const tpio_transport_t *t);
    int (*pause_reading)(tpio_transport_t *t);
    int (*resume_reading)(tpio_transport_t *t);
    bool (*is_reading)(const tpio_transport_t *t);
    size_t (*write_buffer_size)(const tpio_transport_t *t);
    int (*sendto)(tpio_transport_t *t, const void *data, size_t len,
                  const struct sockaddr *addr, socklen_t addrlen);
    int (*extra_info)(const tpio_transport_t *t, const char *name, tpio_extra_t *out);
    int (*fd)(const tpio_transport_t *t);
    /* Ending: stop watching the fd (at once), then release it (after
     * connection_lost), then free the memory (after the last reference). */
    void (*quiesce)(tpio_transport_t *t);
    void (*teardown)(tpio_transport_t *t);
    void (*destroy)(tpio_transport_t *t);
};

struct tpio_transport {
    const struct tpio__transport_vt *vt;
    tpio_loop_t *loop;
    tpio_protocol_t *proto;
    tpio_transport_kind_t kind;
    int refs;
    bool closing;         /* close()/abort() called, or the connection failed */
    bool lost_scheduled;  /* connection_lost is queued or done */
    bool writing_paused;  /* pause_writing() was delivered */
    int lost_err;
    size_t high, low;
    tpio_transport_t *lost_next; /* on loop->lost_head, rarely */
    tpio_server_t *server;     /* the server that accepted it, or NULL */
    struct tpio__list server_link;
};

TPIO__HIDDEN void tpio__transport_init(tpio_transport_t *t, tpio_loop_t *loop,
                                       const struct tpio__transport_vt *vt,
                                       tpio_transport_kind_t kind,
                                       tpio_protocol_t *p);
/* Undo tpio__transport_init for a transport that never started. */
TPIO__HIDDEN void tpio__transport_abandon(tpio_transport_t *t);
TPIO__HIDDEN void tpio__transport_free(tpio_transport_t *t);
static inline void tpio__transport_ref(tpio_transport_t *t) { t->refs++; }
static inline void tpio__transport_unref(tpio_transport_t *t)
{
    if (--t->refs == 0)
        tpio__transport_free(t);
}
/* End the connection: closing, stop I/O now, and queue connection_lost(err),
 * after which the kind's teardown closes the descriptor. Once only. */
TPIO__HIDDEN void tpio__schedule_lost(tpio_transport_t *t, int err);
/* Make a transport of `kind` around fd for protocol p (connection_made and
 * cb scheduled); 0 or -errno with the fd not taken. */
typedef int (*tpio__make_fn)(tpio_loop_t *loop, int fd, int kind, tpio_protocol_t *p,
                             tpio_connect_cb cb, void *cb_arg);
/* Adopt a ready fd: the factory runs from the loop (as in asyncio, never
 * inside the user's call); a refusal closes the fd and the completion gets
 * -ECONNABORTED. From a 0 return on the fd belongs to the library. */
TPIO__HIDDEN int tpio__adopt(tpio_loop_t *loop, int fd, int kind, tpio__make_fn make,
                             tpio_protocol_factory_t factory, void *factory_arg,
                             tpio_connect_cb cb, void *cb_arg);
TPIO__HIDDEN int tpio__make_stream(tpio_loop_t *loop, int fd, int kind, tpio_protocol_t *p,
                                   tpio_connect_cb cb, void *cb_arg);
/* Flow control, shared by every writable kind. */
TPIO__HIDDEN void tpio__maybe_pause_protocol(tpio_transport_t *t);
TPIO__HIDDEN void tpio__maybe_resume_protocol(tpio_transport_t *t);

/* ---- write buffer: chunks of copied bytes, sent with writev ------------- */
struct tpio__chunk {
    struct tpio__chunk *next;
    size_t off, len, cap;
    unsigned char data[];
};
struct tpio__wbuf {
    struct tpio__chunk *head, *tail;
    size_t size;
};
/* `spare` is the loop's one cached chunk, shared by all its connections. */
TPIO__HIDDEN int tpio__wbuf_append(struct tpio__wbuf *b, struct tpio__chunk **spare,
                                   const void *p, size_t n);
TPIO__HIDDEN int tpio__wbuf_iov(const struct tpio__wbuf *b, struct iovec *iov, int max);
TPIO__HIDDEN void tpio__wbuf_consume(struct tpio__wbuf *b, struct tpio__chunk **spare, size_t n);
TPIO__HIDDEN void tpio__wbuf_clear(struct tpio__wbuf *b);

/* ---- the stream transport (TCP, Unix sockets, pipes) -------------------- */
/* Wrap a connected non-blocking fd. connection_made is scheduled; cb (if not
 * NULL) is called right after it. Returns NULL on ENOMEM (fd untouched). */
TPIO__HIDDEN tpio_transport_t *tpio__stream_new(tpio_loop_t *loop, int fd,
                                                tpio_transport_kind_t kind,
                                                tpio_protocol_t *p,
                                                tpio_server_t *server,
                                                tpio_connect_cb cb, void *cb_arg);
/* Same, with the peer address already known (from accept4). */
TPIO__HIDDEN tpio_transport_t *tpio__stream_new_peer(tpio_loop_t *loop, int fd,
                                                     tpio_transport_kind_t kind,
                                                     tpio_protocol_t *p, tpio_server_t *server,
                                                     const struct sockaddr *peer,
                                                     socklen_t peerlen);
/* Classify and prepare a connected stream socket: non-blocking, TCP_NODELAY
 * for TCP. Returns the kind or -errno (fd untouched on error). */
TPIO__HIDDEN int tpio__stream_socket_prepare(int fd);

/* Connect to addresses known in advance (a Unix path; tests use it to try
 * a list without DNS); completion as for tpio_create_connection. */
TPIO__HIDDEN int tpio__connect_addrs(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                                     void *factory_arg, const struct addrinfo *list,
                                     double happy_eyeballs_delay, tpio_connect_cb cb,
                                     void *cb_arg);
TPIO__HIDDEN int tpio__connect_addr(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                                    void *factory_arg, const struct sockaddr *addr,
                                    socklen_t len, tpio_connect_cb cb, void *cb_arg);

/* ---- servers ------------------------------------------------------------ */
/* Serve already bound sockets (listen() is called here). On success they
 * belong to the server; `unlink_path` (may be NULL) is removed at close if it
 * still names the socket file created by bind. */
TPIO__HIDDEN int tpio__server_new(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                                  void *factory_arg, const int *fds, size_t nfds,
                                  int backlog, bool start, const char *unlink_path,
                                  tpio_server_t **out);
TPIO__HIDDEN void tpio__server_attach(tpio_server_t *s, tpio_transport_t *t);
TPIO__HIDDEN void tpio__server_detach(tpio_server_t *s, tpio_transport_t *t);

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
    struct tpio__ts_node node;
};
/* Resolve on a helper thread unless both names are numeric (then inline, with
 * `done` called from the loop on the next iteration). */
TPIO__HIDDEN int tpio__resolve_start(struct tpio__resolve *r);
TPIO__HIDDEN int tpio__getaddrinfo(const char *host, const char *port,
                                   const struct addrinfo *hints,
                                   struct addrinfo **res);

/* ---- child processes (spawn.c) ------------------------------------------ */
struct tpio__spawn {
    const char *const *argv;  /* argv[0] is the program, searched in PATH */
    const char *const *envp;  /* NULL: the parent's environ */
    const char *cwd;          /* NULL: the parent's */
    int fds[3];               /* the child's 0, 1, 2 (-1: inherit); not closed */
    pid_t pid;                /* out */
    int pidfd;                /* out: CLOEXEC */
};
/* Start the child; an exec failure in the child (-ENOENT, -EACCES, ...) is
 * returned here, with the child already reaped. Every descriptor other than
 * 0, 1, 2 is closed in the child. */
TPIO__HIDDEN int tpio__spawn(struct tpio__spawn *s);
/* waitid on a pidfd: 1 and *code (exit status, or -signal) once reaped, 0 if
 * still running (nohang), or -errno. */
TPIO__HIDDEN int tpio__reap(int pidfd, bool nohang, int *code);

#endif
