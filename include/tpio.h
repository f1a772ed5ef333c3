/*
 * tpio — asyncio's "Transports and Protocols" as a C library.
 *
 * One event loop owns transports (how bytes move) and calls protocols that you
 * write (which bytes to move). This header is the whole public API.
 *
 * ---------------------------------------------------------------------------
 * Names
 * ---------------------------------------------------------------------------
 * Every function is named tpio_<class>_<method>(object, ...): <class> is the
 * object it acts on, given as the first argument — loop, transport,
 * datagram (a DatagramTransport), subprocess (a SubprocessTransport) or
 * server — and <method> is asyncio's name for that method
 * (loop.create_connection() is tpio_loop_create_connection(loop, ...),
 * transport.write() is tpio_transport_write(t, ...), Server.close() is
 * tpio_server_close(s)). Functions of no object (the version, error names,
 * the allocator, address formatting) are tpio_<verb>.
 *
 * ---------------------------------------------------------------------------
 * Conventions
 * ---------------------------------------------------------------------------
 * - Every function that can fail returns an int: 0 on success, else a
 *   negative errno value (-ECONNRESET) or one of tpio's own codes (TPIO_E*,
 *   below). Values are returned through out-parameters, never mixed with the
 *   code. tpio_strerror() and tpio_err_name() describe any code.
 * - NULL is answered the same way everywhere: a NULL object, a NULL callback
 *   that is required or a NULL out-parameter gives -EINVAL and changes
 *   nothing. Only the parameters documented "may be NULL" are optional.
 * - A call that takes a completion callback either returns an error (and the
 *   callback is never called) or returns 0 (and the callback is called exactly
 *   once, later, from the loop — never from inside the call). Its last
 *   parameter, `tpio_handle_t *request` (may be NULL), receives a handle for
 *   tpio_loop_cancel(): a cancelled request ends at once (its sockets
 *   closed, its timers and resolver work dropped) and its completion runs
 *   once, from the loop, with -ECANCELED. A handle whose request has ended
 *   cancels nothing (-ENOENT). (Starting a subprocess is the exception: it
 *   cannot be cancelled, close the transport instead.)
 * - A call that the transport's kind does not support returns -ENOTSUP.
 * - Times are seconds, as double, everywhere.
 * - Options are structs that start with their own size (see TPIO_OPTS), and
 *   every yes/no option is a tpio_flag_t whose zero value is its default.
 * - The library is single-threaded per loop: every function must be called
 *   from the loop's thread, except tpio_loop_call_soon_threadsafe().
 *
 * ---------------------------------------------------------------------------
 * Lifetimes (kept everywhere)
 * ---------------------------------------------------------------------------
 * - A protocol instance is your struct with a tpio_protocol_t embedded in it
 *   (use tpio_container_of to get back to your struct). The library never
 *   allocates or frees it.
 * - Every transport calls connection_made exactly once, then the callbacks of
 *   the specification's state machine, then connection_lost exactly once.
 *   After connection_lost returns the library never touches that protocol
 *   again: connection_lost is where you free it. The factory is called only
 *   once the transport exists, so a protocol it returns always reaches
 *   connection_made.
 * - The transport pointer is valid from connection_made until connection_lost
 *   returns. Do not use it afterwards. Inside connection_lost the transport's
 *   descriptor, peername, sockname and every other extra info are still
 *   valid; the descriptor is closed after connection_lost returns.
 * - No protocol callback runs inside your own call into the library, except
 *   pause_writing(), which may run inside tpio_transport_write(),
 *   tpio_transport_writelines(), tpio_datagram_sendto() and
 *   tpio_transport_set_write_buffer_limits() as in asyncio. close() and
 *   abort() only schedule connection_lost.
 * - The library holds a reference on the transport around every callback it
 *   makes, so closing or aborting from inside any callback is safe; so is
 *   pausing or resuming the reading of any transport (another one's
 *   included), and writing to any transport.
 * - Data passed to data_received / datagram_received is borrowed: it is valid
 *   only until the callback returns.
 * - tpio_transport_write() copies whatever it cannot send at once: your
 *   buffer is yours again as soon as it returns.
 * - Sockets never raise SIGPIPE (tpio sends with MSG_NOSIGNAL); for write
 *   pipes see tpio_loop_connect_write_pipe().
 */
#ifndef TPIO_H
#define TPIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TPIO_API __attribute__((visibility("default")))
#else
#define TPIO_API
#endif

/* The one place the version is defined: the build reads it from here. */
#define TPIO_VERSION_MAJOR 0
#define TPIO_VERSION_MINOR 3
#define TPIO_VERSION_PATCH 0

/** Version of the library actually linked, as "MAJOR.MINOR.PATCH". */
TPIO_API const char *tpio_version(void);

/* ========================================================================= */
/* Errors                                                                    */
/* ========================================================================= */

/*
 * tpio's own error codes, all negative and far below any errno. One X-macro
 * table generates the enum, tpio_strerror() and tpio_err_name().
 */
#define TPIO_ERRORS(X)                                                        \
    X(TPIO_EAI_NONAME, -3001, "name or service not known")                    \
    X(TPIO_EAI_AGAIN, -3002, "temporary failure in name resolution")          \
    X(TPIO_EAI_FAIL, -3003, "non-recoverable failure in name resolution")     \
    X(TPIO_EAI_FAMILY, -3004, "address family not supported by the resolver") \
    X(TPIO_EAI_NODATA, -3005, "no address associated with the name")          \
    X(TPIO_EAI_SERVICE, -3006, "service not supported for socket type")       \
    X(TPIO_EAI_MEMORY, -3007, "resolver out of memory")                       \
    X(TPIO_EAI_OTHER, -3008, "name resolution failed")                        \
    X(TPIO_EPROTOCOL_BUFFER, -3101, "get_buffer() returned an empty buffer")  \
    X(TPIO_ENOTWATCHABLE, -3102,                                              \
      "the descriptor cannot be watched by the event loop")                   \
    X(TPIO_EFDINUSE, -3103, "the descriptor is used by a transport or server") \
    X(TPIO_ETLS, -3201, "TLS error")                                          \
    X(TPIO_ETLS_VERIFY, -3202, "TLS certificate verify failed")               \
    X(TPIO_ETLS_EOF, -3203, "TLS connection ended without close_notify")

enum tpio_error {
#define TPIO__ERR_ENUM(name, value, text) name = value,
    TPIO_ERRORS(TPIO__ERR_ENUM)
#undef TPIO__ERR_ENUM
};

/** A human-readable message for any code (errno or TPIO_*); never NULL. */
TPIO_API const char *tpio_strerror(int err);
/** The symbolic name of a code ("ECONNRESET", "TPIO_EAI_NONAME"); never NULL. */
TPIO_API const char *tpio_err_name(int err);

/* ========================================================================= */
/* Memory                                                                    */
/* ========================================================================= */

/** The functions every allocation of the library goes through. */
typedef struct tpio_allocator {
    void *(*malloc)(size_t size);
    void *(*calloc)(size_t count, size_t size);
    void *(*realloc)(void *ptr, size_t size);
    void (*free)(void *ptr);
} tpio_allocator_t;

/**
 * Replace the allocator (libuv's uv_replace_allocator): every allocation tpio
 * makes, on the loop's thread and on its resolver threads, goes through these
 * functions from then on, so they must be thread-safe. All four are required
 * (-EINVAL otherwise); NULL restores the C library's. Refused with -EBUSY
 * while any loop exists, since memory allocated by one allocator must be freed
 * by the same (so also while a resolver thread given up by a cancelled
 * request may still be finishing). An allocation that fails is answered as
 * the C library's would
 * be: the call returns -ENOMEM, or a connection ends with
 * connection_lost(-ENOMEM); the loop goes on working. (getaddrinfo's own
 * memory is the C library's business.)
 *
 * OpenSSL's allocations go through the first table given here too, if it is
 * given before OpenSSL allocates anything (call this first thing in main);
 * they stay with that first table, since OpenSSL's memory outlives loops.
 * Under memory exhaustion a TLS connection fails as OpenSSL reports it
 * (TPIO_ETLS, tpio_tls_last_error() saying "malloc failure") or -ENOMEM.
 */
TPIO_API int tpio_set_allocator(const tpio_allocator_t *allocator);

/* ========================================================================= */
/* Options                                                                   */
/* ========================================================================= */

/**
 * Every options struct starts with `size_t size`, which must be the size of
 * the struct as the caller's header declares it: a program built against this
 * header keeps working with a later library that has added fields (they read
 * as zero, their defaults), and a program built against a later header gets
 * -ENOTSUP from this library if it sets a field that this version does not
 * know (if it leaves such fields zero, they are ignored). A size smaller than
 * any version of the struct, 0 included, gives -EINVAL. Initialise with
 * TPIO_OPTS, which sets size and leaves every other field zero (its default):
 *
 *     tpio_server_opts_t o = TPIO_OPTS(tpio_server_opts_t, .port = 8888);
 */
#define TPIO_OPTS(type, ...) ((type){.size = sizeof(type), __VA_ARGS__})

/**
 * A yes/no option. Zero (TPIO_DEFAULT) is the default that each option
 * documents; TPIO_ON and TPIO_OFF say yes and no. Other values give -EINVAL.
 */
typedef enum tpio_flag { TPIO_DEFAULT = 0, TPIO_ON = 1, TPIO_OFF = -1 } tpio_flag_t;

/* ========================================================================= */
/* Opaque types                                                              */
/* ========================================================================= */

typedef struct tpio_loop tpio_loop_t;
typedef struct tpio_transport tpio_transport_t;
typedef struct tpio_server tpio_server_t;
typedef struct tpio_protocol tpio_protocol_t;

/** container_of: from the embedded tpio_protocol_t back to your struct. */
#define tpio_container_of(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* ========================================================================= */
/* The event loop                                                            */
/* ========================================================================= */

/** A loop callback. */
typedef void (*tpio_callback_t)(tpio_loop_t *loop, void *arg);

/**
 * A handle names a scheduled callback (call_soon, call_later, call_at) or a
 * request under way (see Conventions) so it can be cancelled. It is a value,
 * not a pointer: cancelling a handle whose callback already ran or whose
 * request already ended is harmless (returns -ENOENT). 0 is never a valid
 * handle; a request that needs none (it is complete already) gets 0.
 */
typedef uint64_t tpio_handle_t;

/**
 * How a loop waits for its descriptors. TPIO_BACKEND_AUTO (the default)
 * takes the environment variable TPIO_BACKEND ("epoll", "io_uring" or
 * "auto"; anything else counts as "auto"), and "auto" is the one that is
 * fastest here: epoll, for now (see docs/performance.md). io_uring asked
 * for by the option or by TPIO_BACKEND is set up or the loop is not made
 * (tpio_loop_new returns the kernel's refusal: -ENOSYS, -EPERM under a
 * seccomp profile or kernel.io_uring_disabled, -ENOTSUP for missing
 * features); auto falls back to epoll instead. tpio_loop_get_backend() says
 * which one a loop runs. Every contract of this header holds on both.
 *
 * On io_uring (kernel 6.0 and later) the kernel does the stream sockets'
 * I/O (TCP, Unix): one multishot receive per connection into the loop's
 * provided buffers, sends queued from the loop, one multishot accept per
 * listening socket, and the connects of create_connection; a datagram
 * socket has one multishot recvmsg, and its queue (what the kernel did not
 * take at once) is sent by the kernel too; so are pipes' reads and writes
 * (multishot reads: 6.7). One io_uring_enter per iteration serves every
 * connection. What that changes,
 * within the contracts: on a busy loop (its last wait brought several
 * completions) tpio_transport_write() copies what it is given and the
 * bytes leave with the loop's next iteration, never inside the call
 * (get_write_buffer_size counts them until the kernel took them, so a low
 * high-water mark pauses sooner, as on asyncio's proactor loop); on a
 * quiet loop, and for a write of 8 KiB or more or to a pipe, a write is
 * sent at once when nothing is queued, as on epoll (the ring would save no
 * syscall there). A
 * BufferedProtocol's get_buffer() is asked once bytes are there, and they
 * are copied into it; a connect starts with the loop's next iteration.
 * The loop's wake-up eventfd is read by the kernel too (6.7), and its
 * children are reaped by the kernel's waitid (6.7; on kernels before, the
 * pidfds, pipes and the eventfd wait for readiness through the ring); the
 * timers are the wait's own timeout.
 * TPIO_URING_OPS=0 in the environment keeps a ring loop to readiness alone;
 * TPIO_URING_BATCH=1 makes even a quiet loop's small writes wait for the
 * next submission (tests).
 *
 * Where the kernel has them (6.1), the ring is SINGLE_ISSUER and
 * DEFER_TASKRUN: the kernel's work for it runs inside the loop's waits, and
 * only one thread may use it. A loop may still be run by one thread after
 * another: at the first iteration on a new thread it moves to a new ring,
 * and what was under way (receives, sends, accepts, connects, the waits
 * for children) carries on there, every byte once and in order.
 */
typedef enum tpio_backend {
    TPIO_BACKEND_AUTO = 0,
    TPIO_BACKEND_EPOLL = 1,
    TPIO_BACKEND_IO_URING = 2,
} tpio_backend_t;

/** Options of tpio_loop_new(). */
typedef struct tpio_loop_opts {
    size_t size;
    tpio_backend_t backend; /**< TPIO_BACKEND_AUTO by default */
} tpio_loop_opts_t;

/** The completion of a call that gives no other result: 0 or an error. */
typedef void (*tpio_done_cb_t)(tpio_loop_t *loop, int err, void *arg);

/**
 * Create a loop (asyncio's new_event_loop). opts may be NULL (defaults).
 * Returns 0 and sets *out, or -EINVAL (a backend that is none of
 * tpio_backend_t's), -ENOMEM, the error of a descriptor the loop could not
 * create (-EMFILE...), or io_uring's refusal when it was asked for by name
 * (see tpio_backend_t).
 */
TPIO_API int tpio_loop_new(tpio_loop_t **out, const tpio_loop_opts_t *opts);

/**
 * The backend the loop runs (see tpio_backend_t): *name is "epoll" or
 * "io_uring", a static string. -EINVAL for NULL.
 */
TPIO_API int tpio_loop_get_backend(const tpio_loop_t *loop, const char **name);

/**
 * Close and free the loop. Fails with -EBUSY (and the loop stays usable) while
 * it is running, or while transports, servers or requests (connection
 * attempts, sendfile...) still exist: close or cancel them and run the loop
 * until their connection_lost / completion callbacks have run, or use
 * tpio_loop_shutdown(). Pending callbacks and timers are discarded, and so
 * are descriptor watchers and signal handlers (the old dispositions come
 * back).
 */
TPIO_API int tpio_loop_close(tpio_loop_t *loop);

/** How tpio_loop_shutdown ends connections. */
typedef enum tpio_shutdown {
    TPIO_SHUTDOWN_CLOSE = 0, /**< close(): what is buffered is sent first */
    TPIO_SHUTDOWN_ABORT,     /**< abort(): at once, buffers dropped */
} tpio_shutdown_t;

/**
 * End everything the loop owns, for a program's exit path: removes every
 * signal handler and descriptor watcher, cancels every request under way
 * (their completions get -ECANCELED; a wait_closed is not cancelled: it
 * completes with 0 as its server closes), closes every server (as
 * tpio_server_close) and closes — or, with TPIO_SHUTDOWN_ABORT, aborts —
 * every transport, servers' connections included; then, once every
 * connection_lost and wait_closed callback has run and nothing is left,
 * calls cb(loop, 0, arg) from the loop. Run the loop until then, and
 * tpio_loop_close() succeeds:
 *
 *     tpio_loop_shutdown(loop, TPIO_SHUTDOWN_CLOSE, on_done, NULL); // on_done stops
 *     tpio_loop_run_forever(loop);
 *     tpio_loop_close(loop);
 *
 * A transport whose peer does not read may keep a close waiting for ever:
 * call it again with TPIO_SHUTDOWN_ABORT (after a timeout of your own) to
 * abort what is still open — the one call allowed while a shutdown is under
 * way; both callbacks then run at the end, the first one first. Scheduled
 * callbacks and timers are left alone (they run, or are dropped by
 * tpio_loop_close). Objects created after the call keep it waiting until
 * they end. Returns 0, -EINVAL, -EBUSY (a shutdown under way, and not a
 * first escalation to ABORT).
 */
TPIO_API int tpio_loop_shutdown(tpio_loop_t *loop, tpio_shutdown_t how, tpio_done_cb_t cb,
                                void *arg);

/**
 * Run until tpio_loop_stop() is called (asyncio's run_forever). Returns 0, or
 * -EBUSY if the loop is already running, or a negative errno from the poller.
 */
TPIO_API int tpio_loop_run_forever(tpio_loop_t *loop);

/**
 * Run one iteration: wait for I/O at most `timeout` seconds, rounded up to
 * the millisecond (negative: until something happens; 0: do not block), then
 * run the callbacks that were ready at that point. For embedding tpio in another program's loop. -EBUSY inside
 * a running loop.
 */
TPIO_API int tpio_loop_run_once(tpio_loop_t *loop, double timeout);

/**
 * Ask a running loop to stop: the current iteration completes (callbacks
 * already scheduled in it still run), then tpio_loop_run_forever() returns.
 * Called while the loop is not running, the next run_forever runs one
 * iteration.
 */
TPIO_API int tpio_loop_stop(tpio_loop_t *loop);

/** *running = true while run_forever / run_once is executing. */
TPIO_API int tpio_loop_is_running(const tpio_loop_t *loop, bool *running);

/** *now = the loop's monotonic clock in seconds (asyncio's loop.time()). */
TPIO_API int tpio_loop_time(const tpio_loop_t *loop, double *now);

/**
 * Schedule cb(loop, arg) on the next iteration, in FIFO order. *handle (handle
 * may be NULL) receives a handle for tpio_loop_cancel(). Returns 0, -ENOMEM.
 */
TPIO_API int tpio_loop_call_soon(tpio_loop_t *loop, tpio_callback_t cb, void *arg,
                                 tpio_handle_t *handle);

/** Schedule cb after `delay` seconds (negative = 0; NaN: -EINVAL); handle may
 *  be NULL. */
TPIO_API int tpio_loop_call_later(tpio_loop_t *loop, double delay, tpio_callback_t cb,
                                  void *arg, tpio_handle_t *handle);

/** Schedule cb at the loop time `when` (see tpio_loop_time(); NaN: -EINVAL);
 *  handle may be NULL. */
TPIO_API int tpio_loop_call_at(tpio_loop_t *loop, double when, tpio_callback_t cb,
                               void *arg, tpio_handle_t *handle);

/**
 * Cancel a scheduled callback (asyncio's Handle.cancel()), or a request under
 * way (a connection attempt, a sendfile, a wait_closed: see Conventions).
 * Returns 0 if it was pending (a callback will not run; a request's
 * completion will say -ECANCELED), -ENOENT if it already ran or ended, was
 * already cancelled or never existed.
 */
TPIO_API int tpio_loop_cancel(tpio_loop_t *loop, tpio_handle_t handle);

/**
 * The one call that may come from any thread: schedule cb on the loop's thread
 * and wake the loop. Safe against a concurrent run_forever; not against
 * tpio_loop_close(), and not from a signal handler (it takes a lock and may
 * allocate). Returns 0 or -ENOMEM.
 */
TPIO_API int tpio_loop_call_soon_threadsafe(tpio_loop_t *loop, tpio_callback_t cb,
                                            void *arg);

/**
 * What the library reports to the error handler when something goes wrong
 * outside any call the user made (asyncio's exception handler context).
 * Pointers are NULL when not relevant; all are borrowed for the call.
 */
typedef struct tpio_error_context {
    const char *message;          /**< what happened, never NULL */
    int error;                    /**< negative code, or 0 */
    tpio_transport_t *transport;  /**< the transport concerned, or NULL */
    tpio_protocol_t *protocol;    /**< its protocol, or NULL */
    tpio_server_t *server;        /**< the server concerned, or NULL */
    int fd;                       /**< the descriptor concerned, or -1 */
} tpio_error_context_t;

typedef void (*tpio_error_handler_t)(tpio_loop_t *loop,
                                     const tpio_error_context_t *ctx, void *arg);

/** Install an error handler (handler NULL restores the default, which prints
 *  one line to stderr). */
TPIO_API int tpio_loop_set_error_handler(tpio_loop_t *loop,
                                         tpio_error_handler_t handler, void *arg);
/** The default handler: one line on stderr. Callable from your own handler. */
TPIO_API int tpio_loop_default_error_handler(tpio_loop_t *loop,
                                             const tpio_error_context_t *ctx);
/** Report something to the loop's current error handler. */
TPIO_API int tpio_loop_call_error_handler(tpio_loop_t *loop,
                                          const tpio_error_context_t *ctx);

/* --- Embedding: around the wait -------------------------------------------- */

/** A wait hook: runs just before (or just after) the loop blocks. */
typedef void (*tpio_wait_hook_t)(tpio_loop_t *loop, void *arg);

/**
 * Call before(loop, arg) right before the loop blocks waiting for I/O and
 * after(loop, arg) right after, for an embedder that must give something up
 * while the thread sleeps (a Python interpreter releases its GIL there, so
 * other threads run while the loop waits). Only a wait that may block is
 * bracketed: when callbacks are ready or events are already waiting (a busy
 * loop), the loop polls without blocking and calls neither, so a busy loop
 * pays nothing. The hooks may not call into tpio. after() may call
 * tpio_loop_stop(). Both NULL removes them; giving one alone: -EINVAL.
 */
TPIO_API int tpio_loop_set_wait_hooks(tpio_loop_t *loop, tpio_wait_hook_t before,
                                      tpio_wait_hook_t after, void *arg);

/* --- Watching descriptors ------------------------------------------------ */

/** A descriptor watcher's callback: fd is ready for reading (or writing). */
typedef void (*tpio_fd_cb_t)(tpio_loop_t *loop, int fd, void *arg);

/**
 * Call cb(loop, fd, arg) from the loop whenever fd is readable (asyncio's
 * add_reader), until tpio_loop_remove_reader(). Any descriptor the kernel
 * can poll: sockets, pipes, eventfd, signalfd, timerfd, inotify, another
 * library's (libpq, c-ares). Level-triggered: the callback runs again while
 * data is waiting. An error or hang-up counts as readable and as writable.
 * One reader and one writer per descriptor; adding again replaces the
 * callback. The descriptor stays yours: close it after removing its
 * watchers (a descriptor closed while watched is simply not reported any
 * more, and the watcher stays until removed or the loop closes).
 * Removing or closing from inside any callback, its own included, is safe;
 * a reader that removes the writer of the same descriptor in the same event
 * stops it from being called.
 * Returns 0, -EBADF (fd < 0), TPIO_EFDINUSE (a descriptor one of tpio's own
 * transports or servers uses, as asyncio refuses it), TPIO_ENOTWATCHABLE (a
 * regular file, a directory), -ENOMEM. A descriptor watched here cannot be
 * given to a transport call (TPIO_EFDINUSE) until its watchers are removed.
 * tpio_loop_close() drops the watchers that are left.
 */
TPIO_API int tpio_loop_add_reader(tpio_loop_t *loop, int fd, tpio_fd_cb_t cb, void *arg);
/** As add_reader, for writability (asyncio's add_writer). */
TPIO_API int tpio_loop_add_writer(tpio_loop_t *loop, int fd, tpio_fd_cb_t cb, void *arg);
/**
 * Stop watching fd for reading (asyncio's remove_reader). *removed (may be
 * NULL) says whether a reader was registered. Returns 0 either way, -EBADF
 * for fd < 0, TPIO_EFDINUSE for a descriptor of one of tpio's transports or
 * servers (asyncio raises there too).
 */
TPIO_API int tpio_loop_remove_reader(tpio_loop_t *loop, int fd, bool *removed);
/** As remove_reader, for the writer (asyncio's remove_writer). */
TPIO_API int tpio_loop_remove_writer(tpio_loop_t *loop, int fd, bool *removed);

/* --- Signals -------------------------------------------------------------- */

/** A signal handler: runs from the loop, never in signal context. */
typedef void (*tpio_signal_cb_t)(tpio_loop_t *loop, int sig, void *arg);

/**
 * Run cb(loop, sig, arg) from the loop when signal sig arrives (asyncio's
 * add_signal_handler). The handler is an ordinary callback of the loop's
 * next iteration, so it may call anything in tpio (close a server, stop the
 * loop). A signal that arrives several times before the handler runs runs
 * it at least once: signals are coalesced, realtime ones too. Adding again
 * replaces the callback.
 *
 * How: a process-wide sigaction() handler (SA_RESTART, every signal blocked
 * while it runs) marks the signal pending and writes to the loop's eventfd;
 * nothing else happens in signal context. It therefore works whichever
 * thread the kernel delivers the signal to, in a program with threads of
 * its own, without blocking anything. Its limits:
 * - The disposition is the process's: one loop at a time owns a signal
 *   (another loop asking gets -EBUSY), and a sigaction() or signal() call
 *   made elsewhere for that signal replaces tpio's (the handler then stops
 *   running; tpio cannot notice).
 * - A signal blocked in every thread is never delivered, so never handled.
 * - Removing the handler (or closing the loop) restores the disposition
 *   that was there when it was added.
 * - SIGKILL and SIGSTOP cannot be caught, and a fault (SIGSEGV, SIGBUS,
 *   SIGILL, SIGFPE) cannot wait for the loop: -EINVAL, as for numbers
 *   outside 1 .. NSIG - 1.
 * - Child processes started by tpio get default dispositions and an empty
 *   signal mask (tpio_loop_subprocess_exec).
 * Not async-signal-safe itself: call it from the loop's thread, as every
 * other function.
 */
TPIO_API int tpio_loop_add_signal_handler(tpio_loop_t *loop, int sig, tpio_signal_cb_t cb,
                                          void *arg);
/**
 * Remove the handler of sig (asyncio's remove_signal_handler) and restore
 * the disposition from before it was added. *removed (may be NULL) says
 * whether this loop had one. -EINVAL for a number out of range.
 */
TPIO_API int tpio_loop_remove_signal_handler(tpio_loop_t *loop, int sig, bool *removed);

/* ========================================================================= */
/* Protocols                                                                 */
/* ========================================================================= */

/**
 * A protocol class: a table of callbacks, usually `static const`. A NULL
 * callback means the base class's default (do nothing; eof_received returns
 * false). A table with get_buffer set is a BufferedProtocol: the transport
 * reads straight into the buffer it returns and calls buffer_updated instead
 * of data_received.
 *
 * Streaming state machine (Protocol):
 *   connection_made [data_received]* [eof_received]? connection_lost
 * BufferedProtocol:
 *   connection_made [get_buffer [buffer_updated]?]* [eof_received]? connection_lost
 * pause_writing / resume_writing may come at any point in between.
 */
typedef struct tpio_protocol_ops {
    /* BaseProtocol */
    /** The connection is up; `t` stays valid until connection_lost returns. */
    void (*connection_made)(tpio_protocol_t *p, tpio_transport_t *t);
    /**
     * The connection is gone: err is 0 for a regular close or EOF, else a
     * negative code (-ECONNRESET...). Last callback: free the protocol here.
     */
    void (*connection_lost)(tpio_protocol_t *p, int err);
    /** The write buffer went over the high watermark. */
    void (*pause_writing)(tpio_protocol_t *p);
    /** The write buffer drained to the low watermark or below. */
    void (*resume_writing)(tpio_protocol_t *p);

    /* Protocol (streaming) */
    /** Bytes arrived; `data` (non-empty) is borrowed for the call only. */
    void (*data_received)(tpio_protocol_t *p, const void *data, size_t len);
    /**
     * The peer will send no more. Return false (or leave NULL) and the
     * transport closes itself; return true to keep the connection half-open
     * (writing still works; close it yourself later).
     */
    bool (*eof_received)(tpio_protocol_t *p);

    /* BufferedProtocol */
    /**
     * Return a buffer to receive into and set *len to its size. sizehint is
     * -1 (any size will do), as asyncio passes. Returning NULL or *len == 0 is
     * a fatal error for the connection: it is reported to the error handler
     * and the connection ends with connection_lost(TPIO_EPROTOCOL_BUFFER).
     * Its size is the read size: while reads fill it, the transport asks for
     * a buffer and reads again in the same event (up to 32 reads / 1 MiB).
     * The transport writes into the buffer only between this call and the
     * buffer_updated that follows it, both inside one loop event, so one
     * buffer may serve any number of connections of the same loop.
     */
    void *(*get_buffer)(tpio_protocol_t *p, ssize_t sizehint, size_t *len);
    /** nbytes (> 0) were written at the start of the last get_buffer() buffer. */
    void (*buffer_updated)(tpio_protocol_t *p, size_t nbytes);

    /* DatagramProtocol */
    void (*datagram_received)(tpio_protocol_t *p, const void *data, size_t len,
                              const struct sockaddr *addr, socklen_t addrlen);
    void (*error_received)(tpio_protocol_t *p, int err);

    /* SubprocessProtocol */
    void (*pipe_data_received)(tpio_protocol_t *p, int fd, const void *data,
                               size_t len);
    void (*pipe_connection_lost)(tpio_protocol_t *p, int fd, int err);
    void (*process_exited)(tpio_protocol_t *p);
} tpio_protocol_ops_t;

/** Embed this in your protocol struct and point ops at your class table. */
struct tpio_protocol {
    const tpio_protocol_ops_t *ops;
};

/**
 * protocol_factory: return a new protocol for a new connection, or NULL to
 * refuse it. The factory always runs from the loop, never inside the call
 * that asked for the connection (except tpio_loop_subprocess_exec/_shell,
 * below), and only once the transport exists, so that a protocol it returns
 * always reaches connection_made and connection_lost.
 *
 * A refused connection is closed (for calls that were given a socket or
 * pipe, that descriptor too: it was the library's from the call's 0 return
 * on) and the completion reports -ECONNABORTED; a server just drops the
 * accepted connection. The one exception is tpio_loop_subprocess_exec/_shell,
 * which call it inside the call, once the child has started: a refusal kills
 * and reaps the child and the call returns -ECONNABORTED.
 */
typedef tpio_protocol_t *(*tpio_protocol_factory_t)(void *arg);

/* ========================================================================= */
/* Transports                                                                */
/* ========================================================================= */

/** What kind of transport this is; decides which calls apply. */
typedef enum tpio_transport_kind {
    TPIO_TRANSPORT_TCP = 1,
    TPIO_TRANSPORT_UNIX,
    TPIO_TRANSPORT_PIPE_READ,
    TPIO_TRANSPORT_PIPE_WRITE,
    TPIO_TRANSPORT_STREAM_SOCKET, /**< any other connected stream socket */
    TPIO_TRANSPORT_DATAGRAM,
    TPIO_TRANSPORT_SUBPROCESS,
    TPIO_TRANSPORT_TLS,
} tpio_transport_kind_t;

/** *kind = what kind of transport t is. */
TPIO_API int tpio_transport_get_kind(const tpio_transport_t *t,
                                     tpio_transport_kind_t *kind);
/** *loop = the loop that owns the transport. */
TPIO_API int tpio_transport_get_loop(const tpio_transport_t *t, tpio_loop_t **loop);

/* --- BaseTransport ------------------------------------------------------- */

/**
 * Close: stop reading, flush the write buffer asynchronously, then call
 * connection_lost(0). Idempotent.
 */
TPIO_API int tpio_transport_close(tpio_transport_t *t);
/** *closing = true once close() or abort() was called or the connection is lost. */
TPIO_API int tpio_transport_is_closing(const tpio_transport_t *t, bool *closing);
/** *p = the protocol that currently receives this transport's callbacks. */
TPIO_API int tpio_transport_get_protocol(const tpio_transport_t *t, tpio_protocol_t **p);
/**
 * Switch protocols: later callbacks go to p (asyncio's set_protocol). Switching
 * between a Protocol and a BufferedProtocol is allowed; p (and p->ops) must
 * not be NULL. The old protocol receives no connection_lost: it is yours to
 * free.
 */
TPIO_API int tpio_transport_set_protocol(tpio_transport_t *t, tpio_protocol_t *p);

/** Kinds of value get_extra_info can return. */
typedef enum tpio_extra_type {
    TPIO_EXTRA_NONE = 0, /**< not available: use your default */
    TPIO_EXTRA_FD,       /**< .fd: a descriptor owned by the transport */
    TPIO_EXTRA_ADDR,     /**< .addr / .addrlen: a socket address */
    TPIO_EXTRA_PTR,      /**< .ptr: a library object (SSL *, SSL_CTX *, ...) */
    TPIO_EXTRA_STR,      /**< .str: a NUL-terminated string */
} tpio_extra_type_t;

/** One get_extra_info() answer. Pointers in it live as long as the transport. */
typedef struct tpio_extra {
    tpio_extra_type_t type;
    int fd;
    const struct sockaddr *addr;
    socklen_t addrlen;
    void *ptr;
    const char *str;
} tpio_extra_t;

/**
 * get_extra_info(name): fills *out and returns 0, or returns -ENOENT (and sets
 * out->type = TPIO_EXTRA_NONE) when the information is not available — the
 * specification's "default". Names: "socket" (FD), "peername" and "sockname"
 * (ADDR; peername is cached when the connection is made, absent on error),
 * "pipe" (FD), "subprocess" (FD: the pidfd), and for TLS "sslcontext",
 * "ssl_object", "peercert", "cipher", "compression", "alpn_protocol" (see
 * "TLS" below).
 */
TPIO_API int tpio_transport_get_extra_info(const tpio_transport_t *t, const char *name,
                                           tpio_extra_t *out);
/** *fd = the transport's descriptor ("socket" or "pipe"); -ENOTSUP for kinds
 *  without one, -EBADF once it is closed. */
TPIO_API int tpio_transport_get_fd(const tpio_transport_t *t, int *fd);
/**
 * Copy the peer / own address into *addr (capacity *len, updated to the real
 * length). Returns 0, -ENOENT if not available, -ENOTSUP for the kind.
 */
TPIO_API int tpio_transport_get_peername(const tpio_transport_t *t,
                                         struct sockaddr_storage *addr,
                                         socklen_t *len);
TPIO_API int tpio_transport_get_sockname(const tpio_transport_t *t,
                                         struct sockaddr_storage *addr,
                                         socklen_t *len);

/* --- ReadTransport ------------------------------------------------------- */

/** *reading = true while data is being received (not paused, not closing). */
TPIO_API int tpio_transport_is_reading(const tpio_transport_t *t, bool *reading);
/**
 * Stop calling data_received until resume_reading; called from inside
 * data_received (or buffer_updated), no further call follows it, even when
 * more data is already waiting. Idempotent (also on a closing transport).
 * Called inside connection_made, reading never starts until resume. Allowed
 * from any callback, another transport's included.
 */
TPIO_API int tpio_transport_pause_reading(tpio_transport_t *t);
/** Resume reading. Idempotent. */
TPIO_API int tpio_transport_resume_reading(tpio_transport_t *t);

/** The default and largest read size: 256 KiB (asyncio's max_size). */
#define TPIO_READ_SIZE_MAX (256 * 1024)
/**
 * The most bytes one data_received call delivers. It applies while the
 * protocol is a Protocol: a BufferedProtocol's read size is the size of the
 * buffer it hands out, and the setting waits (get_read_size still gives it)
 * for a switch to a Protocol. 1 to TPIO_READ_SIZE_MAX; 0 restores the
 * default. -EINVAL beyond. The bound matters to a proxy: a
 * proxy that pauses the reading side in pause_writing() of the writing side
 * buffers at most high + one read size there.
 */
TPIO_API int tpio_transport_set_read_size(tpio_transport_t *t, size_t size);
/** *size = the current read size. */
TPIO_API int tpio_transport_get_read_size(const tpio_transport_t *t, size_t *size);

/* --- WriteTransport ------------------------------------------------------ */

/**
 * Write len bytes. When nothing is buffered, they are sent at once and only
 * what the kernel did not take is buffered (copied); on the io_uring
 * backend a busy loop copies a socket's writes under 8 KiB and sends them
 * from the loop (see tpio_backend_t).
 * Returns 0, or:
 *  -ESHUTDOWN after write_eof(); -EBUSY while a tpio_loop_sendfile() of the
 *  transport is under way; -ENOTSUP for read-only kinds; -EINVAL for
 *  NULL data with len > 0; -ENOMEM when the rest could not be copied: part of
 *  the stream is then lost, so the connection is lost too (connection_lost
 *  (-ENOMEM) follows from the loop; later writes are dropped).
 * After close()/abort() or once the connection is lost, data is silently
 * dropped and 0 is returned, as asyncio does. May call pause_writing().
 * Socket errors are not returned here: they end the connection with
 * connection_lost(-errno) on the loop.
 */
TPIO_API int tpio_transport_write(tpio_transport_t *t, const void *data, size_t len);

/** One buffer of tpio_transport_writelines(). */
typedef struct tpio_buf {
    const void *base;
    size_t len;
} tpio_buf_t;

/**
 * write() of several buffers in one go (one writev when nothing is buffered).
 * Same results as tpio_transport_write(). count may exceed IOV_MAX; bufs may
 * be NULL when count is 0.
 */
TPIO_API int tpio_transport_writelines(tpio_transport_t *t, const tpio_buf_t *bufs,
                                       size_t count);
/**
 * Close the write side after the buffer is flushed (shutdown(SHUT_WR)); data
 * may still be received. Idempotent; ignored on a closing transport.
 * Returns -ENOTSUP where half-close is not supported, -EBUSY while a
 * sendfile is under way (the file has not been sent yet).
 */
TPIO_API int tpio_transport_write_eof(tpio_transport_t *t);
/** *can = true if write_eof() is supported. */
TPIO_API int tpio_transport_can_write_eof(const tpio_transport_t *t, bool *can);
/**
 * Close at once: buffered data is dropped, no more data is received, and
 * connection_lost(0) is scheduled. Idempotent. The descriptor is closed as
 * close(2) closes it: a TCP peer sees a FIN, unless data it sent was still
 * unread here, in which case the kernel sends a reset; use
 * tpio_transport_abort_reset() to send a reset always.
 */
TPIO_API int tpio_transport_abort(tpio_transport_t *t);
/**
 * abort() that ends a TCP connection with a reset (RST) instead of a FIN, as
 * libuv's uv_tcp_close_reset: the peer gets ECONNRESET. -ENOTSUP for kinds
 * other than TCP.
 */
TPIO_API int tpio_transport_abort_reset(tpio_transport_t *t);
/** *size = bytes waiting in the write buffer (asyncio's
 *  get_write_buffer_size). */
TPIO_API int tpio_transport_get_write_buffer_size(const tpio_transport_t *t,
                                                  size_t *size);

/** Pass as high or low to set_write_buffer_limits to mean "None". */
#define TPIO_LIMIT_DEFAULT ((ssize_t)-1)
/**
 * Set the watermarks. pause_writing() is called when the buffer grows strictly
 * above high; resume_writing() when it drains to low or below. Defaults: high
 * 64 KiB, low 16 KiB. Only high given: low = high / 4. Only low given:
 * high = 4 * low (saturating at SIZE_MAX). high = 0 forces low = 0 (pause
 * whenever anything is buffered). Returns -EINVAL (limits unchanged) for
 * low > high or a negative value other than TPIO_LIMIT_DEFAULT. May call
 * pause_writing() at once.
 */
TPIO_API int tpio_transport_set_write_buffer_limits(tpio_transport_t *t, ssize_t high,
                                                    ssize_t low);
/** The current watermarks, in the same order as set_write_buffer_limits
 *  (asyncio's get_write_buffer_limits returns them as (low, high)). */
TPIO_API int tpio_transport_get_write_buffer_limits(const tpio_transport_t *t,
                                                    size_t *high, size_t *low);

/* --- sendfile ------------------------------------------------------------- */

/** Completion of tpio_loop_sendfile: the bytes of the file sent (handed to
 *  the transport, with the fallback), and 0 or the error that ended it. */
typedef void (*tpio_sendfile_cb_t)(tpio_loop_t *loop, tpio_transport_t *t, uint64_t sent,
                                   int err, void *arg);

/**
 * Send `count` bytes (0: up to the end of the file) of the regular file fd,
 * from `offset`, over the stream transport t (asyncio's loop.sendfile). On
 * TCP and Unix sockets (and any other stream socket) the kernel copies the
 * file with sendfile(2), zero-copy; elsewhere (pipes) or where sendfile(2)
 * refuses the file, a fallback reads the file in 64 KiB pieces and writes
 * them through the transport's buffer, never buffering more than the high
 * watermark plus one piece. fallback: TPIO_DEFAULT / TPIO_ON allow it (as
 * asyncio's fallback=True); with TPIO_OFF a transport without sendfile(2)
 * (a pipe) gives -ENOTSUP, and a file sendfile(2) refuses ends the
 * completion with that refusal (-EINVAL, -ENOSYS, -EOPNOTSUPP).
 *
 * As asyncio: reading is paused while it runs and resumed after (if it was
 * reading); what was written before goes first (the buffer drains before
 * the file starts); writes (and write_eof) during it are refused with
 * -EBUSY; closing or aborting the transport ends it, the completion getting
 * -ECONNABORTED (or the error that ended the connection), before
 * connection_lost. The file's position is not used nor moved (offset is
 * explicit); fd stays yours and must stay open until the completion.
 *
 * *request (may be NULL) is a handle for tpio_loop_cancel: a cancelled
 * sendfile completes with -ECANCELED and the bytes sent so far, and the
 * transport goes on. Returns 0 (the completion then runs once, from the
 * loop), or -EINVAL (NULL, a transport of another loop, offset < 0, fd not a
 * regular file), -EBADF, -ENOTSUP (not a writable stream transport, or a
 * write pipe on a device the loop cannot watch), -EBUSY
 * (a sendfile is under way), -ESHUTDOWN (closing, or after write_eof),
 * -ENOMEM.
 */
TPIO_API int tpio_loop_sendfile(tpio_loop_t *loop, tpio_transport_t *t, int fd, off_t offset,
                                uint64_t count, tpio_flag_t fallback, tpio_sendfile_cb_t cb,
                                void *arg, tpio_handle_t *request);

/* ========================================================================= */
/* Streams over sockets: create_connection, create_server                    */
/* ========================================================================= */

/**
 * Completion of a connection call. On success err is 0 and t/p are the new
 * transport and its protocol; connection_made has already run (and may even
 * have closed the transport: check tpio_transport_is_closing). On failure
 * err < 0 and t/p are NULL.
 */
typedef void (*tpio_connect_cb_t)(tpio_loop_t *loop, tpio_transport_t *t,
                                  tpio_protocol_t *p, int err, void *arg);

/* OpenSSL's types, named without including OpenSSL's headers. */
struct ssl_ctx_st; /* SSL_CTX */
struct ssl_st;     /* SSL */
struct x509_st;    /* X509 */

/**
 * TLS for a connection, a server or start_tls (see "TLS" below); pass NULL
 * for plain connections. Initialise with TPIO_OPTS.
 */
typedef struct tpio_tls_opts {
    size_t size;
    /** Required: your SSL_CTX, configured with any OpenSSL call (certificates,
     *  verify mode, ciphers, ALPN, SNI callback). tpio takes a reference
     *  (SSL_CTX_up_ref) for as long as it uses it; free yours when you like. */
    struct ssl_ctx_st *ctx;
    /** start_tls only (elsewhere it must be left at TPIO_DEFAULT: -EINVAL):
     *  TPIO_ON for the server side (servers and accepted sockets are always
     *  the server side, connections the client side). */
    tpio_flag_t server_side;
    /**
     * Client side: the name sent as SNI and checked against the server's
     * certificate. NULL: the host of create_connection (a client without a
     * host, Unix or use_sock or start_tls, must name one: -EINVAL). "": no
     * SNI and no hostname check (the certificate chain is still verified if
     * the context says so; turn that off in the context, SSL_VERIFY_NONE).
     * An IP address is checked as an address and sent as no SNI (RFC 6066).
     * Servers: must be NULL (-EINVAL).
     */
    const char *server_hostname;
    /** Seconds the handshake may take; 0: 60. */
    double handshake_timeout;
    /** Seconds close() waits for the peer's close_notify; 0: 30. */
    double shutdown_timeout;
    /** start_tls only: bytes already received on the old transport that
     *  belong to the TLS stream (a ClientHello delivered in the same
     *  data_received as the plaintext before it). The handshake reads them
     *  first; they are copied inside the call. */
    const void *initial_data;
    size_t initial_len;
} tpio_tls_opts_t;

/** Options of tpio_loop_create_connection(); initialise with TPIO_OPTS. */
typedef struct tpio_connect_opts {
    size_t size;
    const char *host;      /**< name or numeric address (required unless use_sock) */
    uint16_t port;         /**< port number */
    int family;            /**< AF_UNSPEC (0), AF_INET or AF_INET6 */
    int flags;             /**< extra getaddrinfo ai_flags */
    const char *local_host;/**< bind locally before connecting (NULL: no bind) */
    uint16_t local_port;   /**< with local_host */
    /**
     * Happy eyeballs (RFC 8305): when > 0, start the next address attempt after
     * this many seconds if the current one has not finished; first success
     * wins, and the other attempts are closed. 0 (default): try each address
     * in turn, each to completion.
     */
    double happy_eyeballs_delay;
    /**
     * Reorder addresses by family, first-family count first (asyncio's
     * interleave). 0: default (1 when happy_eyeballs_delay > 0, else none).
     */
    int interleave;
    /** TPIO_ON: use the already connected stream socket `sock` instead of
     *  host/port (default off). */
    tpio_flag_t use_sock;
    int sock;
    /** TLS over the connection (NULL: plain). connection_made and the
     *  completion come after the handshake. */
    const tpio_tls_opts_t *tls;
} tpio_connect_opts_t;

/**
 * Open a stream connection (asyncio's create_connection). Names are resolved
 * on a helper thread; numeric addresses never touch the resolver. Every
 * resolved address is tried in turn (or raced, with happy eyeballs); on total
 * failure the completion gets the first attempt's error. TCP sockets get
 * TCP_NODELAY.
 *
 * With use_sock, the socket (TCP, Unix, any connected SOCK_STREAM) is made
 * non-blocking and owned by the transport from a 0 return on; on an error
 * return it is left untouched. Returns -EINVAL for missing or bad arguments,
 * -ENOTSOCK / -EPROTOTYPE for a sock that is not a stream socket.
 */
TPIO_API int tpio_loop_create_connection(tpio_loop_t *loop,
                                         tpio_protocol_factory_t factory,
                                         void *factory_arg,
                                         const tpio_connect_opts_t *opts,
                                         tpio_connect_cb_t cb, void *cb_arg,
                                         tpio_handle_t *request);

/**
 * Wrap a socket returned by accept() (or any connected stream socket) in a
 * transport, as the server side (asyncio's connect_accepted_socket). Same
 * ownership rule as use_sock above. tls (may be NULL): TLS as the server
 * side; the completion comes after the handshake.
 */
TPIO_API int tpio_loop_connect_accepted_socket(tpio_loop_t *loop,
                                               tpio_protocol_factory_t factory,
                                               void *factory_arg, int sock,
                                               const tpio_tls_opts_t *tls,
                                               tpio_connect_cb_t cb, void *cb_arg,
                                               tpio_handle_t *request);

/** Options of tpio_loop_create_server(); initialise with TPIO_OPTS. */
typedef struct tpio_server_opts {
    size_t size;
    /** One host to bind (numeric or name); NULL with nhosts 0: all interfaces. */
    const char *host;
    /** Or several hosts (overrides host when nhosts > 0). */
    const char *const *hosts;
    size_t nhosts;
    uint16_t port;         /**< 0 picks a free port (see tpio_server_get_sockname) */
    int family;            /**< AF_UNSPEC (0), AF_INET or AF_INET6 */
    int flags;             /**< extra getaddrinfo ai_flags (AI_PASSIVE is implied) */
    int backlog;           /**< listen() backlog; 0 means 100 */
    tpio_flag_t reuse_address; /**< SO_REUSEADDR: default on */
    tpio_flag_t reuse_port;    /**< SO_REUSEPORT: default off */
    /** Accept at once: default on. Off: the sockets are bound, and listen()
     *  waits for tpio_server_start_serving() (clients are refused until
     *  then), as in asyncio. */
    tpio_flag_t start_serving;
    /** Already bound listening sockets to serve instead of host/port. */
    const int *socks;
    size_t nsocks;
    /** TLS for every accepted connection (NULL: plain): its factory runs
     *  after the handshake; a failed handshake never reaches it. */
    const tpio_tls_opts_t *tls;
} tpio_server_opts_t;

/**
 * Create a listening server (asyncio's create_server). Every distinct address
 * the hosts resolve to gets one socket (IPv6 ones with IPV6_V6ONLY); an
 * address named twice is bound once. Binding happens inside the call, so
 * errors such as -EADDRINUSE come back directly; host names are resolved
 * synchronously here (a server starts once). Each accepted connection gets a
 * protocol from factory and a transport with TCP_NODELAY.
 *
 * Server lifetime: *out stays valid until you call tpio_server_close(), and
 * after that until its last connection is lost and its wait_closed callbacks
 * have returned (at the earliest, the next loop iteration). Sockets passed in
 * socks are owned by the server from a 0 return on.
 */
TPIO_API int tpio_loop_create_server(tpio_loop_t *loop,
                                     tpio_protocol_factory_t factory,
                                     void *factory_arg,
                                     const tpio_server_opts_t *opts,
                                     tpio_server_t **out);

/** Stop listening and close the listening sockets; connections stay open. */
TPIO_API int tpio_server_close(tpio_server_t *s);
/**
 * Call cb(loop, 0, arg) once the server is closed and all its connections
 * are gone (asyncio 3.12+ wait_closed). Called from the loop, never inside
 * this call; if that is already the case, on the next iteration (and
 * *request is 0: there is nothing to cancel). *request (may be NULL):
 * cancelling it calls cb(loop, -ECANCELED, arg) instead.
 */
TPIO_API int tpio_server_wait_closed(tpio_server_t *s, tpio_done_cb_t cb, void *arg,
                                     tpio_handle_t *request);
/** *serving = true while the server accepts connections. */
TPIO_API int tpio_server_is_serving(const tpio_server_t *s, bool *serving);
/** Start accepting (idempotent); -EBADF once closed. */
TPIO_API int tpio_server_start_serving(tpio_server_t *s);
/** close() every connection of the server. */
TPIO_API int tpio_server_close_clients(tpio_server_t *s);
/** abort() every connection of the server. */
TPIO_API int tpio_server_abort_clients(tpio_server_t *s);
/** *count = the number of listening sockets (0 once closed). */
TPIO_API int tpio_server_get_socket_count(const tpio_server_t *s, size_t *count);
/** *fd = the i-th listening socket; -ENOENT past the last. */
TPIO_API int tpio_server_get_socket(const tpio_server_t *s, size_t i, int *fd);
/** The bound address of the i-th listening socket (as getsockname). */
TPIO_API int tpio_server_get_sockname(const tpio_server_t *s, size_t i,
                                      struct sockaddr_storage *addr, socklen_t *len);
/** *loop = the loop that owns the server. */
TPIO_API int tpio_server_get_loop(const tpio_server_t *s, tpio_loop_t **loop);
/** *count = the number of live connections accepted by this server. */
TPIO_API int tpio_server_get_connection_count(const tpio_server_t *s, size_t *count);

/* ========================================================================= */
/* Unix stream sockets                                                       */
/* ========================================================================= */

/** Options of the Unix socket calls; initialise with TPIO_OPTS. */
typedef struct tpio_unix_opts {
    size_t size;
    /** Filesystem path, or the abstract name when `abstract` is on. */
    const char *path;
    /** Length of path; 0 means strlen(path). */
    size_t path_len;
    /** TPIO_ON: Linux abstract namespace, no file; `path` is the name without
     *  the leading NUL byte (Python's "\0name"). Default off. */
    tpio_flag_t abstract;
    int backlog;               /**< server: listen() backlog; 0 means 100 */
    tpio_flag_t start_serving; /**< server: accept at once; default on (off: as
                                *   tpio_server_opts_t's) */
    /** TPIO_ON: use the existing socket `sock` instead of path: connected
     *  (client) or bound (server). Owned by the library from a 0 return on. */
    tpio_flag_t use_sock;
    int sock;
    /** TLS, as for TCP (NULL: plain); a client must set server_hostname. */
    const tpio_tls_opts_t *tls;
} tpio_unix_opts_t;

/**
 * Connect to a Unix stream socket (asyncio's create_unix_connection).
 * Completion as for tpio_loop_create_connection: -ENOENT or -ECONNREFUSED
 * when nothing listens, -EAGAIN when the listener's backlog is full. Returns
 * -ENAMETOOLONG for a path that does not fit sockaddr_un, -EINVAL for a
 * missing path.
 */
TPIO_API int tpio_loop_create_unix_connection(tpio_loop_t *loop,
                                              tpio_protocol_factory_t factory,
                                              void *factory_arg,
                                              const tpio_unix_opts_t *opts,
                                              tpio_connect_cb_t cb, void *cb_arg,
                                              tpio_handle_t *request);

/**
 * Listen on a Unix stream socket (asyncio's create_unix_server), with the
 * same server object as TCP. A stale socket file at the path is removed
 * before bind (anything else there gives -EADDRINUSE); the server removes its
 * socket file when it closes, if the path still names that socket.
 */
TPIO_API int tpio_loop_create_unix_server(tpio_loop_t *loop,
                                          tpio_protocol_factory_t factory,
                                          void *factory_arg,
                                          const tpio_unix_opts_t *opts,
                                          tpio_server_t **out);

/* ========================================================================= */
/* Pipes                                                                     */
/* ========================================================================= */

/**
 * Wrap the read end of a pipe (asyncio's connect_read_pipe): fd must be a
 * FIFO, a socket or a character device (anything else: -EINVAL, fd untouched)
 * that the loop can watch (else TPIO_ENOTWATCHABLE, fd untouched: /dev/null,
 * say, could never be heard of; -EBADF for a descriptor that is not open). The
 * transport is a ReadTransport: data_received or the BufferedProtocol calls,
 * pause/resume reading; at EOF eof_received (its answer is ignored: a pipe
 * cannot be half-open) then connection_lost(0). EIO (a terminal whose other
 * side closed) ends it with connection_lost(-EIO) without reporting; other
 * read errors are reported to the error handler too. The fd is made
 * non-blocking and closed by the transport; get_extra_info("pipe") gives it.
 */
TPIO_API int tpio_loop_connect_read_pipe(tpio_loop_t *loop,
                                         tpio_protocol_factory_t factory,
                                         void *factory_arg, int fd,
                                         tpio_connect_cb_t cb, void *cb_arg,
                                         tpio_handle_t *request);

/**
 * Wrap the write end of a pipe (asyncio's connect_write_pipe); same checks
 * on fd, except that a character device the loop cannot watch (/dev/null)
 * is accepted, as asyncio accepts it: every write goes to the kernel at once
 * and nothing is ever buffered (a write it refuses ends the transport;
 * tpio_loop_sendfile gives -ENOTSUP). A full WriteTransport with flow
 * control. It notices the reader going away even while idle (FIFOs and sockets): connection_lost(0) if nothing was
 * buffered, connection_lost(-EPIPE) if data was lost. write_eof() and close()
 * both flush, then close the pipe. Because writing to a pipe whose reader
 * left raises SIGPIPE, the first write pipe sets SIGPIPE to SIG_IGN if it was
 * still SIG_DFL (Python does the same at start-up); errors arrive as -EPIPE.
 */
TPIO_API int tpio_loop_connect_write_pipe(tpio_loop_t *loop,
                                          tpio_protocol_factory_t factory,
                                          void *factory_arg, int fd,
                                          tpio_connect_cb_t cb, void *cb_arg,
                                          tpio_handle_t *request);

/* ========================================================================= */
/* Datagrams: UDP and Unix datagram sockets                                  */
/* ========================================================================= */

/** Options of tpio_loop_create_datagram_endpoint(); initialise with TPIO_OPTS. */
typedef struct tpio_datagram_opts {
    size_t size;
    /** Bind to this address (name or numeric; "0.0.0.0" / "::" for all
     *  interfaces). NULL: no bind (the kernel picks one at the first send). */
    const char *local_host;
    uint16_t local_port;
    /** Connect to this address: sendto() then takes no address, and only
     *  this peer's datagrams arrive. NULL: not connected. */
    const char *remote_host;
    uint16_t remote_port;
    /** AF_INET, AF_INET6, AF_UNIX or AF_UNSPEC (0). With neither a local nor
     *  a remote address it must be given. */
    int family;
    int proto;                   /**< socket protocol, usually 0 */
    int flags;                   /**< extra getaddrinfo ai_flags */
    tpio_flag_t reuse_port;      /**< SO_REUSEPORT: default off */
    tpio_flag_t allow_broadcast; /**< SO_BROADCAST: default off */
    /** AF_UNIX datagram sockets: local path to bind (a stale socket file is
     *  removed first) and/or remote path to connect, with their lengths (0:
     *  strlen) and, as for tpio_unix_opts_t, TPIO_ON for an abstract name. */
    const char *local_path;
    size_t local_path_len;
    tpio_flag_t local_abstract;
    const char *remote_path;
    size_t remote_path_len;
    tpio_flag_t remote_abstract;
    /** TPIO_ON: use the existing SOCK_DGRAM socket `sock` (no other address
     *  option allowed). */
    tpio_flag_t use_sock;
    int sock;
} tpio_datagram_opts_t;

/**
 * Create a datagram endpoint (asyncio's create_datagram_endpoint). Names are
 * resolved on a helper thread; every (local, remote) pair of matching family
 * is tried until one works. Completion as for tpio_loop_create_connection;
 * the protocol uses datagram_received and error_received. Errors found
 * without resolving (bad arguments, a Unix path that cannot be bound, a bad
 * sock) are returned directly.
 */
TPIO_API int tpio_loop_create_datagram_endpoint(tpio_loop_t *loop,
                                                tpio_protocol_factory_t factory,
                                                void *factory_arg,
                                                const tpio_datagram_opts_t *opts,
                                                tpio_connect_cb_t cb, void *cb_arg,
                                                tpio_handle_t *request);

/**
 * DatagramTransport.sendto: send one datagram (len may be 0: empty datagrams
 * are sent, as in asyncio 3.13). addr must be NULL or equal to the remote
 * address on a connected endpoint (else -EINVAL), and is required otherwise
 * (else -EDESTADDRREQ). Sent at once when nothing is queued, else a copy is
 * queued behind the others, in order (each datagram counts len + 8 bytes in
 * get_write_buffer_size, as asyncio 3.13), under the same watermark flow
 * control as streams; -ENOMEM if the copy cannot be made (the datagram is
 * dropped, the endpoint stays open); queuing may call pause_writing(). A send
 * error reaches error_received (from the loop, never inside this call) and
 * the transport stays open.
 * After close()/abort(), datagrams are dropped. -ENOTSUP on other kinds.
 */
TPIO_API int tpio_datagram_sendto(tpio_transport_t *t, const void *data, size_t len,
                                  const struct sockaddr *addr, socklen_t addrlen);

/* ========================================================================= */
/* Subprocesses                                                              */
/* ========================================================================= */

/** Where one of the child's standard streams goes. */
typedef enum tpio_stdio {
    TPIO_STDIO_PIPE = 0, /**< a pipe to a pipe transport (default, asyncio's PIPE) */
    TPIO_STDIO_INHERIT,  /**< the parent's own descriptor (asyncio's None) */
    TPIO_STDIO_DEVNULL,  /**< /dev/null (DEVNULL) */
    TPIO_STDIO_FD,       /**< the descriptor in .fd (duplicated; it stays yours) */
    TPIO_STDIO_STDOUT,   /**< stderr only: wherever stdout goes (STDOUT) */
} tpio_stdio_t;

/** One standard stream of the child: a mode, and the fd for TPIO_STDIO_FD. */
typedef struct tpio_stdio_opt {
    tpio_stdio_t mode;
    int fd;
} tpio_stdio_opt_t;

/** Options of the subprocess calls; initialise with TPIO_OPTS (three pipes,
 *  the parent's environment and directory), set what you need. */
typedef struct tpio_subprocess_opts {
    size_t size;
    /** [0] stdin, [1] stdout, [2] stderr. */
    tpio_stdio_opt_t stdio[3];
    /** The child's environment, "NAME=value" strings ending with NULL; NULL
     *  inherits the parent's. PATH is searched in this environment. */
    const char *const *env;
    /** The child's working directory; NULL: the parent's. */
    const char *cwd;
    /** TPIO_ON: the child calls setsid(), so it leads a new session and a new
     *  process group, without a controlling terminal (Popen's
     *  start_new_session). Default: the parent's session. */
    tpio_flag_t new_session;
    /** TPIO_ON: the child calls setpgid(0, pgid), joining process group pgid
     *  of the caller's session, or with pgid 0 a new group that it leads
     *  (Popen's process_group). Default: the parent's group. pgid < 0, or a
     *  pgid other than 0 without set_pgid, gives -EINVAL. A group that does
     *  not exist, or set_pgid together with new_session (a session leader
     *  cannot change group), fails the call with -EPERM, as with Popen. */
    tpio_flag_t set_pgid;
    pid_t pgid;
    /** Descriptors the child inherits under the same numbers (Popen's
     *  pass_fds): pass_fds[0] to pass_fds[n_pass_fds - 1], which the closing
     *  of every other descriptor spares and whose FD_CLOEXEC is cleared in
     *  the child only (yours keep their flags). Order and duplicates do not
     *  matter. 0, 1 and 2 are what stdio says (a pipe or a given fd is put
     *  there anyway); for an inherited one, passing it keeps it open even if
     *  it is FD_CLOEXEC. A negative or closed descriptor gives -EBADF;
     *  pass_fds NULL with n_pass_fds > 0 gives -EINVAL. */
    const int *pass_fds;
    size_t n_pass_fds;
} tpio_subprocess_opts_t;

/**
 * Start argv[0] with arguments argv (NULL-terminated) as a child process
 * (asyncio's subprocess_exec). argv[0] without a '/' is searched in PATH.
 * In the child, every descriptor other than 0, 1, 2 (and opts->pass_fds)
 * is closed, signal handlers are reset to SIG_DFL (SIGPIPE too; other
 * ignored signals stay ignored) and no signal is blocked; then it changes
 * directory, session and process group as opts asks (Popen's order), and
 * execs. opts may be NULL.
 *
 * A program that cannot be started fails the call itself with the exec
 * error (-ENOENT, -EACCES, -ENOEXEC; a bad cwd gives chdir's error): no
 * child is left behind and cb is never called. Also -EINVAL (NULL loop,
 * factory, cb or argv, argv[0] NULL, a bad stdio mode, a bad flag or
 * pgid), -EBADF (a TPIO_STDIO_FD or a pass_fds entry that is not open),
 * -EPERM (setsid or setpgid refused in the child, which is reaped),
 * -ECONNABORTED (the factory returned NULL: the child is killed and reaped
 * first).
 *
 * On success the completion runs from the loop with the transport (kind
 * TPIO_TRANSPORT_SUBPROCESS) and the protocol, whose callbacks come in
 * asyncio's order: connection_made once every pipe transport is connected;
 * pipe_data_received(fd 1 or 2) as output arrives; pipe_connection_lost(fd,
 * err) as each pipe closes; pause_writing/resume_writing for the stdin pipe;
 * process_exited when the child exits (even if a grandchild still holds its
 * stdout open); and connection_lost(0) last, once the child has exited and
 * every pipe has closed. Exits are watched with a pidfd (Linux 5.4+), not a
 * SIGCHLD handler. Reaping the child elsewhere (waitpid(-1), SIGCHLD set to
 * SIG_IGN) loses its status: it is then reported to the error handler and
 * the returncode is 255, as asyncio does.
 */
TPIO_API int tpio_loop_subprocess_exec(tpio_loop_t *loop,
                                       tpio_protocol_factory_t factory,
                                       void *factory_arg, const char *const argv[],
                                       const tpio_subprocess_opts_t *opts,
                                       tpio_connect_cb_t cb, void *cb_arg);

/**
 * Run `command` with /bin/sh -c (asyncio's subprocess_shell); otherwise as
 * tpio_loop_subprocess_exec(). command NULL gives -EINVAL. A command the shell
 * cannot find is the shell's business: exit status 127.
 */
TPIO_API int tpio_loop_subprocess_shell(tpio_loop_t *loop,
                                        tpio_protocol_factory_t factory,
                                        void *factory_arg, const char *command,
                                        const tpio_subprocess_opts_t *opts,
                                        tpio_connect_cb_t cb, void *cb_arg);

/** SubprocessTransport.get_pid(): *pid = the child's PID. */
TPIO_API int tpio_subprocess_get_pid(const tpio_transport_t *t, pid_t *pid);

/**
 * SubprocessTransport.get_pipe_transport(fd): *pipe = the pipe transport of
 * the child's stdin (0, a write pipe), stdout (1) or stderr (2, read pipes).
 * -ENOENT when that stream is not a pipe (asyncio's None), -EINVAL for
 * another fd. Use it to write to stdin, close it (the child sees EOF), pause
 * reading stdout...; do not set its protocol. The pointer stays valid as long
 * as the subprocess transport, even after that pipe closed.
 */
TPIO_API int tpio_subprocess_get_pipe_transport(const tpio_transport_t *t, int fd,
                                                tpio_transport_t **pipe);

/**
 * SubprocessTransport.get_returncode(): 0 and *code = the exit status, or
 * minus the signal number when a signal killed the child (-SIGKILL...).
 * -EAGAIN while the exit has not been seen yet (Python's None).
 */
TPIO_API int tpio_subprocess_get_returncode(const tpio_transport_t *t, int *code);

/**
 * SubprocessTransport.send_signal(sig), through the pidfd: a signal can never
 * reach another process that reused the PID. Returns 0, -ESRCH once the exit
 * has been seen, -EINVAL for a bad signal.
 */
TPIO_API int tpio_subprocess_send_signal(tpio_transport_t *t, int sig);
/** SubprocessTransport.terminate(): send_signal(SIGTERM). */
TPIO_API int tpio_subprocess_terminate(tpio_transport_t *t);
/** SubprocessTransport.kill(): send_signal(SIGKILL). */
TPIO_API int tpio_subprocess_kill(tpio_transport_t *t);

/*
 * SubprocessTransport.close() is tpio_transport_close(): it closes the pipe
 * transports (stdin is flushed first) and kills the child with SIGKILL if it
 * has not exited; process_exited, the pipe_connection_lost calls and
 * connection_lost still follow. get_extra_info("subprocess") gives the pidfd
 * (FD); the loop refuses to close while a subprocess transport exists. The
 * subprocess calls on a transport of another kind return -ENOTSUP.
 */

/* ========================================================================= */
/* TLS (OpenSSL 3)                                                           */
/* ========================================================================= */

/*
 * TLS is a transport of its own kind (TPIO_TRANSPORT_TLS) layered on a
 * stream transport (TCP, Unix socket, or another TLS transport: TLS in
 * TLS), asyncio's SSL transport. Ask for it with the `tls` field of the
 * connection and server options, with tpio_loop_connect_accepted_socket()'s
 * tls argument, or upgrade a live connection with tpio_loop_start_tls().
 * A library built without OpenSSL (-DTPIO_TLS=OFF) returns -ENOTSUP for
 * every TLS request and helper.
 *
 * - Handshake: connection_made (and the completion) run after it. A failed
 *   client handshake completes the call with TPIO_ETLS_VERIFY (the peer's
 *   certificate), TPIO_ETLS (any other TLS failure, an alert from the peer
 *   included), -ETIMEDOUT (handshake_timeout) or -ECONNRESET (the peer
 *   left); tpio_tls_last_error() says what went wrong as OpenSSL says it.
 *   On a server a failed handshake is dropped without a word: it never
 *   reaches the factory, nor the error handler, and the server goes on.
 * - The TLS transport is a full transport: write, writelines, pause and
 *   resume reading (resuming delivers plaintext OpenSSL already decrypted),
 *   BufferedProtocol (decrypted straight into your buffer), set_protocol,
 *   watermarks over what the layer holds (ciphertext not yet sent by the
 *   transport below). can_write_eof is false and write_eof gives -ENOTSUP:
 *   TLS has no half-close.
 * - close(): what was written is sent, then close_notify; the peer's
 *   close_notify is awaited for up to shutdown_timeout, then the socket is
 *   closed and connection_lost(0) runs — or connection_lost(-ETIMEDOUT) if
 *   by then the peer had not even read what was written (the connection is
 *   aborted: the timeout bounds close()). abort() closes at once. The peer's
 *   close_notify gives eof_received (its return value is ignored) and then
 *   connection_lost(0); bytes after it are ignored. A TCP EOF without
 *   close_notify ends the connection with TPIO_ETLS_EOF.
 * - get_extra_info: "sslcontext" (PTR: SSL_CTX *), "ssl_object" (PTR:
 *   SSL *), "peercert" (PTR: the peer's X509 *, -ENOENT without one),
 *   "cipher" (STR: the cipher's name; see tpio_tls_get_cipher),
 *   "compression" (-ENOENT: OpenSSL 3 does not compress), "alpn_protocol"
 *   (STR: the negotiated protocol, -ENOENT without one), and everything of
 *   the transport below ("socket", "peername", "sockname"). The pointers are
 *   borrowed: do not free them; they live as long as the transport.
 * - Not here: kernel TLS (SSL_OP_ENABLE_KTLS), which these kernels lack.
 */

/**
 * Upgrade the live stream transport t to TLS (asyncio's loop.start_tls):
 * the handshake runs on it, then cb(loop, tls, p, 0, arg) gives the new TLS
 * transport, whose protocol is p; p's connection_made is not called (as in
 * asyncio: it already had one). From a 0 return on, t and its old protocol
 * are no longer yours: the old protocol gets no more callbacks, t's reading
 * is the layer's, and t is closed when the TLS transport ends; if t was a
 * server's connection, the TLS transport takes its place there (count,
 * close_clients), and t's watermarks become its own. On a failed
 * handshake (or cancel) cb gets the error and t is aborted. t may be a TLS
 * transport: TLS in TLS (closing sends the inner close_notify first).
 * Returns -EINVAL (NULLs, no ctx, a client without server_hostname),
 * -ENOTSUP (t is not a TCP, Unix or TLS transport; no TLS in this build),
 * -ESHUTDOWN (t is closing or was given write_eof), -EBUSY (a sendfile
 * runs on t), -ENOMEM.
 */
TPIO_API int tpio_loop_start_tls(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p,
                                 const tpio_tls_opts_t *tls, tpio_connect_cb_t cb,
                                 void *cb_arg, tpio_handle_t *request);

/**
 * A client context that verifies the server (SSL_VERIFY_PEER, TLS 1.2 at
 * least) against the CA certificates in cafile, or the system's store when
 * cafile is NULL. *out is yours: SSL_CTX_free it when done. Returns 0,
 * -EINVAL, -ENOENT (cafile cannot be read), TPIO_ETLS, -ENOTSUP.
 */
TPIO_API int tpio_tls_client_context(struct ssl_ctx_st **out, const char *cafile);
/**
 * A server context with the certificate chain of certfile and the private
 * key of keyfile (PEM), TLS 1.2 at least. Returns 0, -EINVAL, -ENOENT,
 * TPIO_ETLS (the key does not match the certificate...), -ENOTSUP.
 */
TPIO_API int tpio_tls_server_context(struct ssl_ctx_st **out, const char *certfile,
                                     const char *keyfile);
/**
 * What went wrong in the last TLS failure this thread saw, as OpenSSL says
 * it ("certificate verify failed: self-signed certificate"): read it in the
 * completion or connection_lost that got the TLS code. Never NULL ("" when
 * there was none); valid until the next TLS failure on this thread.
 */
TPIO_API const char *tpio_tls_last_error(void);
/**
 * The negotiated cipher of a TLS transport: name ("TLS_AES_128_GCM_SHA256"),
 * protocol version ("TLSv1.3") and secret bits (128); any out-pointer may be
 * NULL. -ENOTSUP for other kinds, -ENOENT before the handshake.
 */
TPIO_API int tpio_tls_get_cipher(const tpio_transport_t *t, const char **name,
                                 const char **version, int *bits);

/* ========================================================================= */
/* Address helper                                                            */
/* ========================================================================= */

/**
 * Format a socket address as asyncio prints it: "('127.0.0.1', 8888)" for
 * IPv4, "('::1', 8888, 0, 0)" for IPv6, the path for Unix sockets (an
 * abstract name as Python shows it, b'\x00name'). buf (buflen > 0) always
 * receives a NUL-terminated string, empty on error; returns 0, -ENOSPC if it
 * had to be truncated, -EINVAL (NULL, or len too short for the family),
 * -EAFNOSUPPORT for other families.
 */
TPIO_API int tpio_format_addr(const struct sockaddr *addr, socklen_t len,
                              char *buf, size_t buflen);

#ifdef __cplusplus
}
#endif
#endif /* TPIO_H */
