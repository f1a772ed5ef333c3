/* The extension's one internal header: the objects every file shares.
 *
 * Layers inside the extension: module.c (types, cached asyncio objects),
 * loop.c (the loop: run, callbacks, timers, watchers, signals), handle.c
 * (asyncio's own Handle/TimerHandle classes, scheduled on tpio's queue),
 * upcall.c (calling into Python the way asyncio does: errors, exception
 * handler), transport.c (BaseTransport: what every transport object
 * shares), the transport types over it (stream.c, datagram.c,
 * subprocess.c: one Python type per specification class, each embedding
 * the C protocol that tpio calls), connect.c / server.c (the calls that
 * make transports).
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
/* With the Python error set: an error in a protocol callback that asyncio runs as a loop callback of
 * its own (connection_made, connection_lost, the subprocess callbacks):
 * reported as "Exception in callback Proto.method(args)"; args a tuple, or
 * NULL for none. */
PT_HIDDEN void pt_callback_error(pt_loop *loop, PyObject *method, PyObject *args);
/* The same for a call with the one argument arg. */
PT_HIDDEN void pt_callback_error1(pt_loop *loop, PyObject *method, PyObject *arg);
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
/* The one argument of a Python-style method m(self, name): positional or
 * name=...; borrowed, or NULL with Python's TypeError set. */
PT_HIDDEN PyObject *pt_one_arg_slow(const char *method, const char *name,
                                    PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames);
/* Inline: write() is called once per message, and the positional call is
 * the one that counts (a call here cost 25 instructions per round trip). */
static inline PyObject *pt_one_arg(const char *method, const char *name, PyObject *const *args,
                                   Py_ssize_t nargs, PyObject *kwnames)
{
    if (__builtin_expect(nargs == 1 && !kwnames, 1))
        return args[0];
    return pt_one_arg_slow(method, name, args, nargs, kwnames);
}
/* A METH_FASTCALL | METH_KEYWORDS method `wrapper` over the METH_O one
 * `impl` (asyncio's methods are Python functions: their argument can be
 * given by name). */
#define PT_ONE_ARG(wrapper, impl, type, method, name)                                  \
    static PyObject *wrapper(PyObject *self, PyObject *const *args, Py_ssize_t nargs,  \
                             PyObject *kwnames)                                        \
    {                                                                                  \
        PyObject *a = pt_one_arg(method, name, args, nargs, kwnames);                  \
        return a ? impl((type *)self, a) : NULL;                                       \
    }
#define PT_ONE_ARG_DEF(pyname, wrapper)                                                \
    {pyname, (PyCFunction)(void (*)(void))wrapper, METH_FASTCALL | METH_KEYWORDS, NULL}
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

/* ---- transports: the base every transport object starts with (transport.c) --- */

/* asyncio's BaseTransport in C: the fields every transport type starts
 * with, in this order, so that one set of functions serves them all (as
 * PyObject_HEAD does). The C protocol tpio calls sits right after asyncio's
 * own _extra slot, so an upcall finds its object with container_of. */
#define PT_TRANSPORT_HEAD                                                          \
    PyObject_HEAD                                                                  \
    PyObject *extra;        /* asyncio.BaseTransport's _extra slot */              \
    tpio_protocol_t cproto; /* what tpio calls */                                  \
    tpio_transport_t *t;    /* NULL once connection_lost returned */               \
    pt_loop *loop;                                                                 \
    PyObject *protocol;     /* NULL once lost, asyncio's None */                   \
    PyObject *exc;          /* what ends it (a fatal error): for connection_lost */ \
    PyObject *extra_obj;    /* the user's socket or pipe object */                 \
    PyObject *tsock;        /* the TransportSocket of 'socket' */                  \
    PyObject *sock;         /* the socket object under tsock, made here */         \
    int conn_lost;          /* asyncio's _conn_lost */                             \
    bool closing, lost;                                                            \
    bool extra_dup;         /* tpio was given a dup of extra_obj's descriptor */   \
    PyObject *dict, *weakreflist;

typedef struct pt_transport {
    PT_TRANSPORT_HEAD
} pt_transport;

#define PT_TR(o) ((pt_transport *)(o))

/* A type's C protocol tables, so that pt_transport_of() knows its objects;
 * lookup: finds the objects of protocols that are not embedded in one (the
 * pipes of a subprocess run on tpio's own protocol). */
PT_HIDDEN void pt_tr_register(const tpio_protocol_ops_t *ops);
PT_HIDDEN void pt_tr_set_lookup(PyObject *(*lookup)(tpio_protocol_t *p));
PT_HIDDEN PyObject *pt_transport_of(tpio_protocol_t *p); /* borrowed, or NULL */
/* ImportError unless asyncio's class ends where the head's C part begins. */
PT_HIDDEN int pt_tr_check_layout(PyObject *base);

/* protocol.connection_made(self), unless the loop is dropping callbacks. */
PT_HIDDEN void pt_tr_made(pt_transport *tr);
/* The end: closing, then protocol.connection_lost(the fatal error, or the
 * OSError of err, or None); the socket or pipe objects let go of the
 * descriptor; t, protocol and tsock's socket are dropped. The caller drops
 * tpio's reference after it has cleared what its type caches. */
PT_HIDDEN void pt_tr_lost(pt_transport *tr, int err);
/* asyncio's _fatal_error with the Python error set: reported (OSErrors
 * only in debug logs), then _force_close: the abort, connection_lost
 * getting the exception. */
PT_HIDDEN void pt_tr_fatal(pt_transport *tr, const char *message);
/* protocol.pause_writing() / resume_writing(); a failure is reported with
 * shown as the transport. */
PT_HIDDEN void pt_tr_flow(pt_transport *tr, PyObject *shown, PyObject *name,
                          const char *message);
PT_HIDDEN void pt_tr_up_pause(tpio_protocol_t *p);
PT_HIDDEN void pt_tr_up_resume(tpio_protocol_t *p);
/* A write once the transport is gone: dropped, asyncio's warning from the
 * fifth on. */
PT_HIDDEN void pt_tr_drop_write(pt_transport *tr, const char *warning);
/* get_extra_info(name, default=None)'s arguments: 1 with name a str (its
 * UTF-8 in *name), 0 for another key (the answer is the default), -1 with
 * the error set. */
PT_HIDDEN int pt_tr_extra_args(PyObject *args, PyObject *kw, const char **name,
                               PyObject **dflt);
/* get_extra_info('socket'): the TransportSocket (a new reference), or dflt. */
PT_HIDDEN PyObject *pt_tr_socket_info(pt_transport *tr, PyObject *dflt);
/* The head's part of tp_traverse / tp_clear / tp_dealloc. */
PT_HIDDEN int pt_tr_traverse(pt_transport *tr, visitproc visit, void *arg);
PT_HIDDEN void pt_tr_clear(pt_transport *tr);
PT_HIDDEN void pt_tr_dealloc(pt_transport *tr);
/* What every transport type has: get_protocol(), and the _loop / _protocol
 * attributes and __dictoffset__ / __weaklistoffset__ members. */
PT_HIDDEN PyObject *pt_tr_get_protocol(PyObject *self, PyObject *unused);
/* The write buffer's size and limits (asyncio's defaults once it is gone). */
PT_HIDDEN PyObject *pt_tr_get_write_buffer_size(PyObject *self, PyObject *unused);
PT_HIDDEN PyObject *pt_tr_get_write_buffer_limits(PyObject *self, PyObject *unused);
PT_HIDDEN PyObject *pt_tr_set_write_buffer_limits(PyObject *self, PyObject *args,
                                                  PyObject *kw);
#define PT_TR_WRITE_BUFFER_METHODS                                                  \
    {"get_write_buffer_size", pt_tr_get_write_buffer_size, METH_NOARGS, NULL},      \
        {"get_write_buffer_limits", pt_tr_get_write_buffer_limits, METH_NOARGS, NULL}, \
        {"set_write_buffer_limits", (PyCFunction)(void (*)(void))pt_tr_set_write_buffer_limits, \
         METH_VARARGS | METH_KEYWORDS, NULL}
#define PT_TR_GETSET                                                              \
    {"_loop", pt_tr_loop_attr, NULL, NULL, NULL},                                 \
        {"_protocol", pt_tr_protocol_attr, NULL, NULL, NULL}
PT_HIDDEN PyObject *pt_tr_loop_attr(PyObject *self, void *c);
PT_HIDDEN PyObject *pt_tr_protocol_attr(PyObject *self, void *c);
extern PT_HIDDEN PyMemberDef pt_tr_members[];

/* ---- transport types -------------------------------------------------------- */

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

/* The end of a call that makes a transport, for its future: set_result of
 * (tr, protocol); or, failed, the factory's error or the OSError of err
 * (unless the future is done already), and the user's socket or pipe
 * object lets go of the descriptor (closed if tpio had a copy). */
PT_HIDDEN void pt_fut_made(pt_loop *loop, PyObject *fut, PyObject *tr, PyObject *protocol);
PT_HIDDEN void pt_fut_failed(pt_loop *loop, PyObject *fut, pt_factory *f, int err);

PT_HIDDEN tpio_protocol_t *pt_stream_factory(void *arg);
/* 0 when protocol has a connection_made (asyncio's transport looks it up
 * as it is made: an AttributeError fails the call), -1 with the error set. */
PT_HIDDEN int pt_check_protocol(PyObject *protocol);
PT_HIDDEN tpio_protocol_t *pt_datagram_factory(void *arg);

/* Subprocesses (subprocess.c). A Python pipe transport (fd 0: a
 * WritePipeTransport, 1 and 2: a ReadPipeTransport) for a pipe that tpio
 * made for a subprocess (tpio_subprocess_get_pipe_transport): its protocol
 * stays tpio's, the object forwards the methods only. */
PT_HIDDEN PyObject *pt_stream_wrap_pipe(pt_loop *loop, tpio_transport_t *t, int fd);
/* That pipe reached its end: the object lets go of the tpio transport (its
 * methods then act as on a lost connection) and closes its 'pipe' file. */
PT_HIDDEN void pt_stream_pipe_lost(PyObject *pipe);
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
