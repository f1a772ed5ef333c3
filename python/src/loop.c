/* The loop: tpio's loop under asyncio's loop API.
 *
 * This C type is the base of tpio.EventLoop (python/tpio/_loop.py), which
 * also derives from asyncio.BaseEventLoop for the parts asyncio writes in
 * Python and that never sit on a hot path (run_until_complete, tasks, the
 * exception handler, executors, async generators). Everything that runs
 * per callback or per event is here: the ready queue and timers are
 * tpio's, callbacks are asyncio's own Handle objects, and the thread gives
 * up the GIL only while the loop really sleeps. */
#include "pytpio.h"

#include <math.h>
#include <pythread.h>
#include <time.h>

/* ---- running handles ------------------------------------------------------ */

static void run_cb(tpio_loop_t *l, void *arg)
{
    (void)l;
    PyObject *h = arg;
    pt_loop *loop = (pt_loop *)PT_SLOT(h, pt_off_loop);
    pt_pending_unlink(loop, h);
    if (!loop->dropping)
        pt_handle_run(loop, h);
    Py_DECREF(h);
}

static PyObject *iscoroutinefunction; /* asyncio.iscoroutinefunction */

/* asyncio checks in debug mode only; a coroutine or anything not callable
 * is refused here always (it could only fail later), a coroutine function
 * in debug mode, as asyncio. */
static bool check_callback(pt_loop *self, PyObject *cb, const char *method)
{
    if (PyCallable_Check(cb) && !PyCoro_CheckExact(cb)) {
        if (!self->debug)
            return true;
        if (!iscoroutinefunction) {
            PyObject *m = PyImport_ImportModule("asyncio.coroutines");
            iscoroutinefunction = m ? PyObject_GetAttrString(m, "iscoroutinefunction") : NULL;
            Py_XDECREF(m);
            if (!iscoroutinefunction)
                return false;
        }
        PyObject *r = PyObject_CallOneArg(iscoroutinefunction, cb);
        int is = r ? PyObject_IsTrue(r) : -1;
        Py_XDECREF(r);
        if (is < 0)
            return false;
        if (!is)
            return true;
        PyErr_Format(PyExc_TypeError, "coroutines cannot be used with %s()", method);
        return false;
    }
    if (PyCoro_CheckExact(cb))
        PyErr_Format(PyExc_TypeError, "coroutines cannot be used with %s()", method);
    else
        PyErr_Format(PyExc_TypeError, "a callable object was expected by %s(), got %R",
                     method, cb);
    return false;
}

static bool check_thread(pt_loop *self)
{
    if (!self->debug || !self->running || self->thread_id == PyThread_get_thread_ident())
        return true;
    PyErr_SetString(PyExc_RuntimeError,
                    "Non-thread-safe operation invoked on an event loop other than the "
                    "current one");
    return false;
}

/* Parse ([fixed,] callback, *args, context=None) of the call_* methods as
 * Python binds a def's arguments (fixed and callback can be named too);
 * *fixed_obj is the `delay` / `when` / `fd` argument (borrowed); context
 * NULL: no context= (add_reader / add_writer). */
static int parse_call(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      const char *fixed, const char *method, PyObject **fixed_obj,
                      PyObject **callback, PyObject **cargs, PyObject **context)
{
    Py_ssize_t nfixed = fixed ? 1 : 0;
    PyObject *named[2] = {NULL, NULL}; /* fixed, callback */
    if (context)
        *context = NULL;
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nk; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        int slot = context && PyUnicode_CompareWithASCIIString(k, "context") == 0 ? 2
                   : PyUnicode_CompareWithASCIIString(k, "callback") == 0 ? 1
                   : fixed && PyUnicode_CompareWithASCIIString(k, fixed) == 0 ? 0
                                                                            : -1;
        if (slot < 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%S'",
                         method, k);
            return -1;
        }
        if (slot == 2) {
            *context = args[nargs + i];
            continue;
        }
        if (nargs > (slot == 0 ? 0 : nfixed)) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%S'",
                         method, k);
            return -1;
        }
        named[slot] = args[nargs + i];
    }
    *fixed_obj = nargs > 0 && fixed ? args[0] : named[0];
    *callback = nargs > nfixed ? args[nfixed] : named[1];
    if ((fixed && !*fixed_obj) || !*callback) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", method,
                     fixed && !*fixed_obj ? fixed : "callback");
        return -1;
    }
    Py_ssize_t first = nfixed + 1;
    *cargs = PyTuple_New(nargs > first ? nargs - first : 0);
    if (!*cargs)
        return -1;
    for (Py_ssize_t i = first; i < nargs; i++)
        PyTuple_SET_ITEM(*cargs, i - first, Py_NewRef(args[i]));
    return 0;
}

static PyObject *schedule_soon(pt_loop *self, PyObject *cb, PyObject *cargs, PyObject *ctx,
                               bool threadsafe)
{
    PyObject *h = pt_handle_new(self, cb, cargs, ctx, false, 0);
    if (!h)
        return NULL;
    /* From another thread while the loop sleeps, the loop must be woken;
     * otherwise the loop's thread is not inside tpio (it gave up the GIL in
     * Python code, or is not running), and the plain queue keeps asyncio's
     * FIFO order with call_soon. */
    int rc;
    Py_INCREF(h);
    if (threadsafe && self->waiting) {
        rc = tpio_loop_call_soon_threadsafe(self->loop, run_cb, h);
        if (rc == 0)
            pt_hc(h)->id = 0;
    } else {
        rc = tpio_loop_call_soon(self->loop, run_cb, h, &pt_hc(h)->id);
    }
    if (rc < 0) {
        Py_DECREF(h);
        Py_DECREF(h);
        return pt_raise_errno(rc);
    }
    pt_pending_link(self, h);
    return h;
}

static PyObject *loop_call_soon(pt_loop *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    PyObject *fx, *cb, *cargs, *ctx;
    if (parse_call(args, nargs, kwnames, NULL, "call_soon", &fx, &cb, &cargs, &ctx))
        return NULL;
    if (!pt_check_open(self) || !check_callback(self, cb, "call_soon") || !check_thread(self)) {
        Py_DECREF(cargs);
        return NULL;
    }
    return schedule_soon(self, cb, cargs, ctx, false);
}

static PyObject *loop_call_soon_threadsafe(pt_loop *self, PyObject *const *args,
                                           Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *fx, *cb, *cargs, *ctx;
    if (parse_call(args, nargs, kwnames, NULL, "call_soon_threadsafe", &fx, &cb, &cargs, &ctx))
        return NULL;
    if (!pt_check_open(self) || !check_callback(self, cb, "call_soon_threadsafe")) {
        Py_DECREF(cargs);
        return NULL;
    }
    return schedule_soon(self, cb, cargs, ctx, true);
}

static PyObject *schedule_at(pt_loop *self, double when, PyObject *cb, PyObject *cargs,
                             PyObject *ctx, const char *method)
{
    if (!check_callback(self, cb, method) || !check_thread(self)) {
        Py_DECREF(cargs);
        return NULL;
    }
    PyObject *h = pt_handle_new(self, cb, cargs, ctx, true, when);
    if (!h)
        return NULL;
    Py_INCREF(h);
    /* A NaN compares false with everything: asyncio's loop takes such a
     * timer as due (its when() stays NaN). */
    int rc = tpio_loop_call_at(self->loop, when == when ? when : -INFINITY, run_cb, h,
                               &pt_hc(h)->id);
    if (rc < 0) {
        Py_DECREF(h);
        Py_DECREF(h);
        return pt_raise_errno(rc);
    }
    pt_pending_link(self, h);
    Py_SETREF(PT_SLOT(h, pt_off_scheduled), Py_NewRef(Py_True));
    return h;
}

static int get_time(PyObject *o, const char *what, double *out)
{
    if (o == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s", what);
        return -1;
    }
    *out = PyFloat_AsDouble(o);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *loop_time(pt_loop *self, PyObject *unused);

static PyObject *loop_call_later(pt_loop *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    PyObject *d, *cb, *cargs, *ctx;
    if (parse_call(args, nargs, kwnames, "delay", "call_later", &d, &cb, &cargs, &ctx))
        return NULL;
    double delay, now;
    if (PyFloat_CheckExact(d) || PyLong_CheckExact(d)) {
        if (get_time(d, "delay must not be None", &delay) || !pt_check_open(self)) {
            Py_DECREF(cargs);
            return NULL;
        }
        tpio_loop_time(self->loop, &now);
        return schedule_at(self, now + delay, cb, cargs, ctx, "call_later");
    }
    /* anything else: asyncio's self.time() + delay, with what that raises
     * (a Decimal, a str...), before the loop is looked at */
    if (d == Py_None) {
        Py_DECREF(cargs);
        PyErr_SetString(PyExc_TypeError, "delay must not be None");
        return NULL;
    }
    PyObject *t = loop_time(self, NULL);
    PyObject *when = t ? PyNumber_Add(t, d) : NULL;
    Py_XDECREF(t);
    double w = 0;
    if (!when || get_time(when, "when cannot be None", &w) || !pt_check_open(self)) {
        Py_XDECREF(when);
        Py_DECREF(cargs);
        return NULL;
    }
    Py_DECREF(when);
    return schedule_at(self, w, cb, cargs, ctx, "call_later");
}

static PyObject *loop_call_at(pt_loop *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    PyObject *w, *cb, *cargs, *ctx;
    if (parse_call(args, nargs, kwnames, "when", "call_at", &w, &cb, &cargs, &ctx))
        return NULL;
    double when;
    if (get_time(w, "when cannot be None", &when) || !pt_check_open(self)) {
        Py_DECREF(cargs);
        return NULL;
    }
    return schedule_at(self, when, cb, cargs, ctx, "call_at");
}

/* TimerHandle.cancel() calls this: the timer leaves tpio's heap at once. */
static PyObject *loop_timer_cancelled(pt_loop *self, PyObject *h)
{
    if (Py_TYPE(h) == pt_timer_type && pt_hc(h)->linked && self->loop) {
        if (tpio_loop_cancel(self->loop, pt_hc(h)->id) == 0) {
            pt_pending_unlink(self, h);
            Py_DECREF(h);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *loop_time(pt_loop *self, PyObject *unused)
{
    (void)unused;
    double now;
    if (self->loop)
        tpio_loop_time(self->loop, &now);
    else { /* closed: the same clock */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        now = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    }
    return PyFloat_FromDouble(now);
}

static PyObject *loop_stop(pt_loop *self, PyObject *unused)
{
    (void)unused;
    if (self->loop)
        tpio_loop_stop(self->loop);
    Py_RETURN_NONE;
}

/* ---- running ---------------------------------------------------------------- */

static void wait_before(tpio_loop_t *l, void *arg)
{
    (void)l;
    pt_loop *self = arg;
    self->waiting = true;
    self->saved = PyEval_SaveThread();
}

static void wait_after(tpio_loop_t *l, void *arg)
{
    pt_loop *self = arg;
    PyEval_RestoreThread(self->saved);
    self->waiting = false;
    /* A signal that woke the wait: Python's handlers run now (SIGINT's
     * KeyboardInterrupt, asyncio.Runner's own), and what they raise leaves
     * run_forever as it would leave asyncio's select(). */
    if (PyErr_CheckSignals() < 0) {
        PyObject *e = pt_fetch_error(self);
        if (e) {
            if (!self->stash)
                self->stash = e;
            else
                Py_DECREF(e);
        }
        tpio_loop_stop(l);
    }
}

/* The C run of run_forever; tpio.EventLoop.run_forever does the rest. */
static PyObject *loop_run(pt_loop *self, PyObject *unused)
{
    (void)unused;
    if (!pt_check_open(self))
        return NULL;
    self->running = true;
    self->thread_id = PyThread_get_thread_ident();
    int rc = tpio_loop_run_forever(self->loop);
    self->running = false;
    self->thread_id = 0;
    if (self->stash) {
        PyObject *e = self->stash;
        self->stash = NULL;
        PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(e)), e, PyException_GetTraceback(e));
        return NULL;
    }
    if (rc == -EBUSY) {
        PyErr_SetString(PyExc_RuntimeError, "This event loop is already running");
        return NULL;
    }
    if (rc < 0)
        return pt_raise_errno(rc);
    Py_RETURN_NONE;
}

/* ---- descriptor watchers ---------------------------------------------------------- */

/* The descriptor number of o as asyncio's _ensure_fd_no_transport() reads
 * it, before anything else (a closed loop too): an int as it is, else
 * int(o.fileno()); ValueError "Invalid file object" when that fails. A new
 * reference to an int, or NULL with the error set. */
static PyObject *fileobj_number(PyObject *o)
{
    if (PyLong_Check(o))
        return Py_NewRef(o);
    PyObject *r = PyObject_CallMethodNoArgs(o, pt.s_fileno);
    PyObject *n = r ? PyNumber_Long(r) : NULL;
    Py_XDECREF(r);
    if (!n && (PyErr_ExceptionMatches(PyExc_AttributeError) ||
               PyErr_ExceptionMatches(PyExc_TypeError) ||
               PyErr_ExceptionMatches(PyExc_ValueError))) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "Invalid file object: %R", o);
    }
    return n;
}

/* That number as a descriptor, as selectors take it: a negative one is a
 * ValueError, one above a C int an OverflowError (*fd -1 with the error
 * set). Steals num. */
static int number_to_fd(PyObject *num, int *fd)
{
    int neg = PyObject_RichCompareBool(num, pt.minus_one, Py_LE);
    if (neg == 1)
        PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %S", num);
    *fd = neg == 0 ? PyObject_AsFileDescriptor(num) : -1;
    Py_DECREF(num);
    return *fd < 0 ? -1 : 0;
}

static void fd_cb(tpio_loop_t *l, int fd, void *arg)
{
    (void)l;
    (void)fd;
    PyObject *h = arg;
    pt_loop *loop = (pt_loop *)PT_SLOT(h, pt_off_loop);
    if (loop->dropping)
        return;
    Py_INCREF(h); /* the callback may remove itself */
    pt_handle_run(loop, h);
    Py_DECREF(h);
}

static PyObject *add_watch(pt_loop *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames, bool writer)
{
    const char *method = writer ? "add_writer" : "add_reader";
    PyObject *fdo, *cb, *cargs;
    if (parse_call(args, nargs, kwnames, "fd", method, &fdo, &cb, &cargs, NULL))
        return NULL;
    PyObject *num = fileobj_number(fdo);
    if (!num) {
        Py_DECREF(cargs);
        return NULL;
    }
    if (!pt_check_open(self)) {
        Py_DECREF(num);
        Py_DECREF(cargs);
        return NULL;
    }
    int fd;
    if (number_to_fd(num, &fd) < 0 || !check_callback(self, cb, method)) {
        Py_DECREF(cargs);
        return NULL;
    }
    PyObject *ctx = Py_None;
    PyObject *h = pt_handle_new(self, cb, cargs, ctx, false, 0);
    if (!h)
        return NULL;
    int rc = writer ? tpio_loop_add_writer(self->loop, fd, fd_cb, h)
                    : tpio_loop_add_reader(self->loop, fd, fd_cb, h);
    if (rc < 0) {
        Py_DECREF(h);
        if (rc == TPIO_EFDINUSE)
            return PyErr_Format(PyExc_RuntimeError,
                                "File descriptor %R is used by transport", fdo);
        if (rc == TPIO_ENOTWATCHABLE)
            return pt_raise_errno(-EPERM);
        return pt_raise_errno(rc);
    }
    PyObject *key = PyLong_FromLong(fd);
    PyObject *map = writer ? self->writers : self->readers;
    PyObject *old = key ? PyDict_GetItemWithError(map, key) : NULL;
    if (old) { /* replaced: the old handle is cancelled, as asyncio does */
        PyObject *r = PyObject_CallMethod(old, "cancel", NULL);
        Py_XDECREF(r);
        if (!r)
            PyErr_Clear();
    }
    int bad = !key || PyDict_SetItem(map, key, h);
    Py_XDECREF(key);
    Py_DECREF(h);
    if (bad)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *loop_add_reader(pt_loop *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    return add_watch(self, args, nargs, kwnames, false);
}

static PyObject *loop_add_writer(pt_loop *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    return add_watch(self, args, nargs, kwnames, true);
}

static PyObject *remove_watch(pt_loop *self, PyObject *o, bool writer)
{
    PyObject *num = fileobj_number(o);
    if (!num)
        return NULL;
    if (!self->loop || self->closed) {
        Py_DECREF(num);
        Py_RETURN_FALSE;
    }
    int fd;
    if (number_to_fd(num, &fd) < 0) {
        /* a number no descriptor has is not registered: False, as asyncio */
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    bool removed = false;
    int rc = writer ? tpio_loop_remove_writer(self->loop, fd, &removed)
                    : tpio_loop_remove_reader(self->loop, fd, &removed);
    if (rc == TPIO_EFDINUSE)
        return PyErr_Format(PyExc_RuntimeError, "File descriptor %R is used by transport", o);
    if (rc < 0)
        return pt_raise_errno(rc);
    PyObject *key = PyLong_FromLong(fd);
    if (!key)
        return NULL;
    PyObject *map = writer ? self->writers : self->readers;
    PyObject *h = PyDict_GetItemWithError(map, key);
    if (h) {
        Py_INCREF(h);
        PyDict_DelItem(map, key);
        PyObject *r = PyObject_CallMethod(h, "cancel", NULL);
        Py_XDECREF(r);
        Py_DECREF(h);
        if (!r)
            PyErr_Clear();
    }
    Py_DECREF(key);
    if (PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(removed);
}

static PyObject *loop_remove_reader(pt_loop *self, PyObject *o)
{
    return remove_watch(self, o, false);
}

static PyObject *loop_remove_writer(pt_loop *self, PyObject *o)
{
    return remove_watch(self, o, true);
}

PT_ONE_ARG(loop_remove_reader_kw, loop_remove_reader, pt_loop, "remove_reader", "fd")
PT_ONE_ARG(loop_remove_writer_kw, loop_remove_writer, pt_loop, "remove_writer", "fd")

/* ---- signals ------------------------------------------------------------------ */

static void signal_cb(tpio_loop_t *l, int sig, void *arg)
{
    (void)l;
    (void)sig;
    PyObject *h = arg;
    pt_loop *loop = (pt_loop *)PT_SLOT(h, pt_off_loop);
    if (loop->dropping)
        return;
    Py_INCREF(h);
    pt_handle_run(loop, h);
    Py_DECREF(h);
}

/* _add_signal(sig, callback, args): the checks asyncio makes are in Python. */
static PyObject *loop_add_signal(pt_loop *self, PyObject *args)
{
    int sig;
    PyObject *cb, *cargs;
    if (!PyArg_ParseTuple(args, "iOO!", &sig, &cb, &PyTuple_Type, &cargs) ||
        !pt_check_open(self))
        return NULL;
    PyObject *h = pt_handle_new(self, cb, Py_NewRef(cargs), Py_None, false, 0);
    if (!h)
        return NULL;
    int rc = tpio_loop_add_signal_handler(self->loop, sig, signal_cb, h);
    if (rc < 0) {
        Py_DECREF(h);
        if (rc == -EINVAL)
            return PyErr_Format(PyExc_RuntimeError, "sig %d cannot be caught", sig);
        return pt_raise_errno(rc);
    }
    PyObject *key = PyLong_FromLong(sig);
    int bad = !key || PyDict_SetItem(self->signals, key, h);
    Py_XDECREF(key);
    Py_DECREF(h);
    if (bad)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *loop_remove_signal(pt_loop *self, PyObject *arg)
{
    int sig = PyLong_AsLong(arg);
    if (sig == -1 && PyErr_Occurred())
        return NULL;
    if (!self->loop)
        Py_RETURN_FALSE;
    bool removed = false;
    int rc = tpio_loop_remove_signal_handler(self->loop, sig, &removed);
    if (rc < 0)
        return pt_raise_errno(rc);
    PyObject *key = PyLong_FromLong(sig);
    if (!key)
        return NULL;
    if (PyDict_GetItemWithError(self->signals, key))
        PyDict_DelItem(self->signals, key);
    Py_DECREF(key);
    if (PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(removed);
}

/* ---- errors the library reports ------------------------------------------------------ */

static void error_cb(tpio_loop_t *l, const tpio_error_context_t *c, void *arg)
{
    (void)l;
    pt_loop *self = arg;
    if (self->dropping)
        return;
    PyObject *exc = c->error ? pt_oserror(c->error) : NULL;
    PyObject *tr = NULL, *proto = NULL;
    if (c->protocol) {
        tr = pt_transport_of(c->protocol);
        if (tr)
            proto = PyObject_GetAttrString(tr, "_protocol");
        if (!proto)
            PyErr_Clear();
    }
    pt_report(self, c->message, exc, "transport", tr, "protocol", proto, NULL);
    Py_XDECREF(exc);
    Py_XDECREF(proto);
}

/* ---- lifetime ---------------------------------------------------------------------- */

static void shutdown_done(tpio_loop_t *l, int err, void *arg)
{
    (void)err;
    *(bool *)arg = true;
    tpio_loop_stop(l);
}

static void drop_map(pt_loop *self, PyObject *map, int what)
{
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(map, &pos, &k, &v)) {
        int n = (int)PyLong_AsLong(k);
        if (what == 0)
            tpio_loop_remove_reader(self->loop, n, NULL);
        else if (what == 1)
            tpio_loop_remove_writer(self->loop, n, NULL);
        else
            tpio_loop_remove_signal_handler(self->loop, n, NULL);
    }
    PyDict_Clear(map);
}

/* Close as asyncio's loop closes: what is still open is dropped, nothing
 * more is called. tpio's loop closes only once nothing of it lives, so the
 * transports left are aborted and the loop runs (calling no Python) until
 * they are gone. */
static void close_tpio(pt_loop *self)
{
    if (!self->loop)
        return;
    self->dropping = true;
    drop_map(self, self->readers, 0);
    drop_map(self, self->writers, 1);
    drop_map(self, self->signals, 2);
    int rc = tpio_loop_close(self->loop);
    if (rc == -EBUSY) {
        bool done = false;
        if (tpio_loop_shutdown(self->loop, TPIO_SHUTDOWN_ABORT, shutdown_done, &done) == 0)
            for (int i = 0; i < 10000 && !done; i++)
                tpio_loop_run_once(self->loop, 0.01);
        rc = tpio_loop_close(self->loop);
    }
    /* tpio drops what it still holds without calling it: so do we */
    while (self->pending) {
        PyObject *h = (PyObject *)self->pending;
        pt_pending_unlink(self, h);
        Py_DECREF(h);
    }
    if (rc == 0) {
        self->loop = NULL;
        pt_servers_dropped(self);
    }
    self->dropping = false;
}

static PyObject *loop_close_c(pt_loop *self, PyObject *unused)
{
    (void)unused;
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot close a running event loop");
        return NULL;
    }
    close_tpio(self);
    self->closed = true;
    Py_RETURN_NONE;
}

static PyObject *loop_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    pt_loop *self = (pt_loop *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->readers = PyDict_New();
    self->writers = PyDict_New();
    self->signals = PyDict_New();
    if (!self->readers || !self->writers || !self->signals) {
        Py_DECREF(self);
        return NULL;
    }
    int rc = tpio_loop_new(&self->loop, NULL);
    if (rc < 0) {
        Py_DECREF(self);
        return pt_raise_errno(rc);
    }
    tpio_loop_set_wait_hooks(self->loop, wait_before, wait_after, self);
    tpio_loop_set_error_handler(self->loop, error_cb, self);
    return (PyObject *)self;
}

static int loop_traverse(pt_loop *self, visitproc visit, void *arg)
{
    Py_VISIT(self->readers);
    Py_VISIT(self->writers);
    Py_VISIT(self->signals);
    Py_VISIT(self->stash);
    for (pt_handle *h = self->pending; h; h = pt_hc((PyObject *)h)->next)
        Py_VISIT((PyObject *)h);
    return 0;
}

static int loop_clear(pt_loop *self)
{
    close_tpio(self);
    Py_CLEAR(self->readers);
    Py_CLEAR(self->writers);
    Py_CLEAR(self->signals);
    Py_CLEAR(self->stash);
    return 0;
}

static void loop_dealloc(pt_loop *self)
{
    PyObject_GC_UnTrack(self);
    if (self->readers)
        close_tpio(self);
    loop_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *get_bool(pt_loop *self, void *which)
{
    return PyBool_FromLong(which ? self->debug : self->closed);
}

static int set_bool(pt_loop *self, PyObject *v, void *which)
{
    int b = v ? PyObject_IsTrue(v) : 0;
    if (b < 0)
        return -1;
    if (which)
        self->debug = b;
    else
        self->closed = b;
    return 0;
}

static PyGetSetDef loop_getset[] = {
    {"_closed", (getter)get_bool, (setter)set_bool, NULL, NULL},
    {"_debug", (getter)get_bool, (setter)set_bool, NULL, (void *)1},
    {NULL},
};

#define FAST (METH_FASTCALL | METH_KEYWORDS)
static PyMethodDef loop_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))loop_call_soon, FAST, NULL},
    {"call_soon_threadsafe", (PyCFunction)(void (*)(void))loop_call_soon_threadsafe, FAST,
     NULL},
    {"call_later", (PyCFunction)(void (*)(void))loop_call_later, FAST, NULL},
    {"call_at", (PyCFunction)(void (*)(void))loop_call_at, FAST, NULL},
    {"time", (PyCFunction)loop_time, METH_NOARGS, NULL},
    {"stop", (PyCFunction)loop_stop, METH_NOARGS, NULL},
    {"_timer_handle_cancelled", (PyCFunction)loop_timer_cancelled, METH_O, NULL},
    {"_run", (PyCFunction)loop_run, METH_NOARGS, NULL},
    {"_close", (PyCFunction)loop_close_c, METH_NOARGS, NULL},
    {"add_reader", (PyCFunction)(void (*)(void))loop_add_reader, FAST, NULL},
    {"add_writer", (PyCFunction)(void (*)(void))loop_add_writer, FAST, NULL},
    PT_ONE_ARG_DEF("remove_reader", loop_remove_reader_kw),
    PT_ONE_ARG_DEF("remove_writer", loop_remove_writer_kw),
    {"_add_signal", (PyCFunction)loop_add_signal, METH_VARARGS, NULL},
    {"_remove_signal", (PyCFunction)loop_remove_signal, METH_O, NULL},
    {"_create_connection", (PyCFunction)(void (*)(void))pt_loop_create_connection,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"_create_server", (PyCFunction)(void (*)(void))pt_loop_create_server,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"_create_unix_connection", (PyCFunction)(void (*)(void))pt_loop_create_unix_connection,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"_create_unix_server", (PyCFunction)(void (*)(void))pt_loop_create_unix_server,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"_connect_accepted_socket", (PyCFunction)(void (*)(void))pt_loop_connect_accepted,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"_connect_pipe", (PyCFunction)(void (*)(void))pt_loop_connect_pipe,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"_create_datagram_endpoint", (PyCFunction)(void (*)(void))pt_loop_create_datagram,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"_subprocess", (PyCFunction)(void (*)(void))pt_loop_subprocess,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"_cancel_request", (PyCFunction)pt_loop_cancel_request, METH_O, NULL},
    {NULL},
};

PyTypeObject pt_loop_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tpio._tpio.Loop",
    .tp_basicsize = sizeof(pt_loop),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C part of tpio.EventLoop.",
    .tp_new = loop_new,
    .tp_dealloc = (destructor)loop_dealloc,
    .tp_traverse = (traverseproc)loop_traverse,
    .tp_clear = (inquiry)loop_clear,
    .tp_methods = loop_methods,
    .tp_getset = loop_getset,
};
