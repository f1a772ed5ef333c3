/* The extension's one internal header: the objects every file shares.
 *
 * Layers inside the extension: module.c (types, cached asyncio objects),
 * loop.c (the loop: run, callbacks, timers, watchers, signals), handle.c
 * (asyncio's own Handle/TimerHandle classes, scheduled on tpio's queue),
 * upcall.c (calling into Python the way asyncio does: errors, exception
 * handler), transport files (stream.c, datagram.c, subprocess.c: one Python
 * type per specification class, each embedding the C protocol that tpio
 * calls), connect.c / server.c (the calls that make transports).
 * Uses only tpio.h of the library. */
#ifndef PYTPIO_H
#define PYTPIO_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdbool.h>
#include <tpio.h>

#define PT_HIDDEN __attribute__((visibility("hidden")))

/* ---- the loop ------------------------------------------------------------ */

typedef struct pt_handle pt_handle;

typedef struct {
    PyObject_HEAD
    tpio_loop_t *loop;
    bool closed, debug;
    bool waiting;       /* inside the wait, the GIL released */
    bool dropping;      /* closing: callbacks are dropped, never run */
    bool running;
    unsigned long thread_id; /* of run_forever while running */
    PyThreadState *saved;    /* the thread state given up for the wait */
    PyObject *stash;         /* SystemExit / KeyboardInterrupt to re-raise */
    pt_handle *pending;      /* handles tpio holds (ready or timers) */
    PyObject *readers, *writers; /* fd -> Handle */
    PyObject *signals;           /* signum -> Handle */
} pt_loop;

extern PT_HIDDEN PyTypeObject pt_loop_type;

/* ---- handles: subclasses of asyncio.Handle / TimerHandle ---------------- */

/* The C part placed after asyncio's slots (offset h_extra). */
struct pt_handle_c {
    pt_handle *prev, *next; /* in loop->pending while tpio holds it */
    tpio_handle_t id;
    bool linked;
};

extern PT_HIDDEN PyTypeObject *pt_handle_type, *pt_timer_type;
extern PT_HIDDEN Py_ssize_t pt_off_callback, pt_off_args, pt_off_cancelled, pt_off_loop,
    pt_off_source_tb, pt_off_repr, pt_off_context, pt_off_scheduled, pt_off_when,
    pt_off_hc, pt_off_tc;

#define PT_SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))
static inline struct pt_handle_c *pt_hc(PyObject *h)
{
    return (struct pt_handle_c *)((char *)h +
                                  (Py_TYPE(h) == pt_timer_type ? pt_off_tc : pt_off_hc));
}

PT_HIDDEN int pt_handles_init(PyObject *module);
/* A new Handle (timer: a TimerHandle due at when), args a tuple (stolen:
 * NULL for none), context NULL for the current one. */
PT_HIDDEN PyObject *pt_handle_new(pt_loop *loop, PyObject *callback, PyObject *args,
                                  PyObject *context, bool timer, double when);
/* Run the handle's callback in its context as asyncio's Handle._run does. */
PT_HIDDEN void pt_handle_run(pt_loop *loop, PyObject *h);
PT_HIDDEN bool pt_handle_cancelled(PyObject *h);
PT_HIDDEN void pt_pending_link(pt_loop *loop, PyObject *h);
PT_HIDDEN void pt_pending_unlink(pt_loop *loop, PyObject *h);

/* ---- calling into Python as asyncio does ---------------------------------- */

/* After a failed call into Python: SystemExit / KeyboardInterrupt are kept
 * to be raised from run_forever (the loop stops); anything else is handed
 * back (a new reference, the error cleared) for the caller to report. NULL
 * when it was kept. */
PT_HIDDEN PyObject *pt_fetch_error(pt_loop *loop);
/* loop.call_exception_handler({message, exception, and name/value pairs...}). */
PT_HIDDEN void pt_report(pt_loop *loop, const char *message, PyObject *exc, ...);
/* An exception object for a negative errno (OSError's own subclass choice). */
PT_HIDDEN PyObject *pt_oserror(int err);
/* Raise it (returns NULL). */
PT_HIDDEN PyObject *pt_raise_errno(int err);
PT_HIDDEN bool pt_check_open(pt_loop *loop);
/* fut.done(), true when it cannot be asked. */
PT_HIDDEN bool pt_fut_done(PyObject *fut);
/* fut.set_result(value) / fut.set_exception(value) (name), a failure reported. */
PT_HIDDEN void pt_fut_settle(pt_loop *loop, PyObject *fut, PyObject *name, PyObject *value);
/* set_write_buffer_limits(high, low)'s arguments by asyncio's rule: 0, or -1
 * with asyncio's ValueError set. */
PT_HIDDEN int pt_write_limits(PyObject *high, PyObject *low, Py_ssize_t *hout,
                              Py_ssize_t *lout);
/* A socket.socket over fd (it must let go of it with detach()). */
PT_HIDDEN PyObject *pt_socket_of_fd(int fd);

/* ---- cached objects -------------------------------------------------------- */

struct pt_cache {
    PyObject *asyncio_Transport, *asyncio_ReadTransport, *asyncio_WriteTransport,
        *asyncio_DatagramTransport, *asyncio_SubprocessTransport, *asyncio_BufferedProtocol,
        *asyncio_Handle, *asyncio_TimerHandle, *CancelledError, *format_callback_source,
        *TransportSocket, *socket_fromfd, *logger;
    PyObject *s_connection_made, *s_connection_lost, *s_data_received, *s_eof_received,
        *s_get_buffer, *s_buffer_updated, *s_pause_writing, *s_resume_writing,
        *s_datagram_received, *s_error_received, *s_pipe_data_received,
        *s_pipe_connection_lost, *s_process_exited, *s_call_exception_handler,
        *s_message, *s_exception, *s_transport, *s_protocol, *s_handle, *s_fileno,
        *s_slow_callback_duration, *s_source_traceback, *s_close, *s_set_result,
        *s_set_exception, *s_cancelled, *s_detach, *s_warning;
    PyObject *minus_one;
};
extern PT_HIDDEN struct pt_cache pt;

/* ---- transports ----------------------------------------------------------- */

PT_HIDDEN int pt_stream_init(PyObject *module);
PT_HIDDEN int pt_datagram_init(PyObject *module);
PT_HIDDEN int pt_subprocess_init(PyObject *module);
PT_HIDDEN int pt_server_init(PyObject *module);

/* Which Python class a new stream transport gets. */
typedef enum { PT_STREAM_SOCKET, PT_STREAM_READ_PIPE, PT_STREAM_WRITE_PIPE } pt_stream_kind;

/* A protocol factory for tpio: calls the Python factory and wraps the
 * protocol in a new transport object. */
typedef struct pt_factory {
    pt_loop *loop;
    PyObject *factory;   /* the Python protocol factory */
    PyObject *error;     /* what the factory raised, for the caller */
    PyObject *extra_obj; /* the user's socket / pipe object, for extra info */
    bool extra_dup;      /* tpio was given a dup of its descriptor */
    bool server;         /* a server's: factory errors only logged in debug */
    int kind;            /* pt_stream_kind, or the datagram / subprocess kind */
    PyObject *made;      /* the transport object made last (borrowed) */
} pt_factory;

PT_HIDDEN tpio_protocol_t *pt_stream_factory(void *arg);
PT_HIDDEN tpio_protocol_t *pt_datagram_factory(void *arg);
PT_HIDDEN PyObject *pt_transport_of(tpio_protocol_t *p); /* borrowed */

/* Subprocesses (subprocess.c). A Python pipe transport (fd 0: a
 * WritePipeTransport, 1 and 2: a ReadPipeTransport) for a pipe that tpio
 * made for a subprocess (tpio_subprocess_get_pipe_transport): its protocol
 * stays tpio's, the object forwards the methods only. */
PT_HIDDEN PyObject *pt_stream_wrap_pipe(pt_loop *loop, tpio_transport_t *t, int fd);
/* That pipe reached its end: the object lets go of the tpio transport (its
 * methods then act as on a lost connection) and closes its 'pipe' file. */
PT_HIDDEN void pt_stream_pipe_lost(PyObject *pipe);
/* The Python object tpio means by protocol p when p is a live subprocess
 * transport's, or the protocol tpio gave one of its pipes (the pipe's
 * object); NULL otherwise (borrowed). */
PT_HIDDEN PyObject *pt_subprocess_of(tpio_protocol_t *p);
/* The loop closed under its servers (tpio freed them): forget them. */
PT_HIDDEN void pt_servers_dropped(pt_loop *loop);

PT_HIDDEN PyObject *pt_loop_create_connection(pt_loop *self, PyObject *args, PyObject *kw);
PT_HIDDEN PyObject *pt_loop_create_server(pt_loop *self, PyObject *args, PyObject *kw);
PT_HIDDEN PyObject *pt_loop_create_unix_connection(pt_loop *self, PyObject *args,
                                                   PyObject *kw);
PT_HIDDEN PyObject *pt_loop_create_unix_server(pt_loop *self, PyObject *args, PyObject *kw);
PT_HIDDEN PyObject *pt_loop_connect_accepted(pt_loop *self, PyObject *args, PyObject *kw);
PT_HIDDEN PyObject *pt_loop_connect_pipe(pt_loop *self, PyObject *args, PyObject *kw);
PT_HIDDEN PyObject *pt_loop_create_datagram(pt_loop *self, PyObject *args, PyObject *kw);
PT_HIDDEN PyObject *pt_loop_subprocess(pt_loop *self, PyObject *args, PyObject *kw);
PT_HIDDEN PyObject *pt_loop_cancel_request(pt_loop *self, PyObject *arg);

/* Socket addresses as Python's socket module gives them. */
PT_HIDDEN PyObject *pt_addr_to_py(const struct sockaddr *sa, socklen_t len);
/* (host, port) or a path: a Python address to a sockaddr; -1 with an error set. */
PT_HIDDEN int pt_addr_from_py(PyObject *addr, int family, struct sockaddr_storage *ss,
                              socklen_t *len);

#endif
