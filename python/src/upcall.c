/* Calling into Python the way asyncio does: what an exception in a callback
 * becomes, what the exception handler is given, and which exception a C
 * error code is. */
#include "pytpio.h"

#include <netdb.h>
#include <stdarg.h>
#include <string.h>

PyObject *pt_fetch_error(pt_loop *loop)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (!type)
        return NULL;
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(tb);
    Py_DECREF(type);
    if (!value)
        return NULL;
    /* asyncio lets these two through to run_forever's caller. */
    if (PyErr_GivenExceptionMatches(value, PyExc_SystemExit) ||
        PyErr_GivenExceptionMatches(value, PyExc_KeyboardInterrupt)) {
        if (!loop->stash)
            loop->stash = value;
        else
            Py_DECREF(value);
        if (loop->loop)
            tpio_loop_stop(loop->loop);
        return NULL;
    }
    return value;
}

void pt_report(pt_loop *loop, const char *message, PyObject *exc, ...)
{
    PyObject *ctx = PyDict_New();
    PyObject *msg = PyUnicode_FromString(message);
    if (!ctx || !msg || PyDict_SetItem(ctx, pt.s_message, msg) ||
        (exc && PyDict_SetItem(ctx, pt.s_exception, exc)))
        goto fail;
    va_list ap;
    va_start(ap, exc);
    const char *key;
    while ((key = va_arg(ap, const char *))) {
        PyObject *v = va_arg(ap, PyObject *);
        if (v && PyDict_SetItemString(ctx, key, v)) {
            va_end(ap);
            goto fail;
        }
    }
    va_end(ap);
    PyObject *r = PyObject_CallMethodOneArg((PyObject *)loop, pt.s_call_exception_handler, ctx);
    if (r) {
        Py_DECREF(r);
    } else {
        PyObject *e = pt_fetch_error(loop);
        if (e) { /* the handler's own failure: as asyncio, never lost silently */
            PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(e)), e, PyException_GetTraceback(e));
            PyErr_WriteUnraisable((PyObject *)loop);
        }
    }
    Py_DECREF(ctx);
    Py_DECREF(msg);
    return;
fail:
    Py_XDECREF(ctx);
    Py_XDECREF(msg);
    PyErr_WriteUnraisable((PyObject *)loop);
}

static void callback_error(pt_loop *loop, PyObject *exc, PyObject *method, PyObject *args)
{
    PyObject *src = args ? PyObject_CallFunctionObjArgs(pt.format_callback_source,
                                                        method ? method : Py_None, args, NULL)
                         : NULL;
    PyObject *msg = src ? PyUnicode_FromFormat("Exception in callback %U", src) : NULL;
    Py_XDECREF(src);
    if (msg)
        pt_report(loop, PyUnicode_AsUTF8(msg), exc, NULL);
    else
        PyErr_Clear();
    Py_XDECREF(msg);
    Py_DECREF(exc);
}

void pt_callback_error(pt_loop *loop, PyObject *method, PyObject *args)
{
    PyObject *exc = pt_fetch_error(loop);
    if (!exc)
        return;
    if (args) {
        callback_error(loop, exc, method, args);
    } else {
        args = PyTuple_New(0);
        callback_error(loop, exc, method, args);
        Py_XDECREF(args);
    }
}

void pt_callback_error1(pt_loop *loop, PyObject *method, PyObject *arg)
{
    PyObject *exc = pt_fetch_error(loop);
    if (!exc)
        return;
    PyObject *args = PyTuple_Pack(1, arg);
    callback_error(loop, exc, method, args);
    Py_XDECREF(args);
}

static int gai_code(int err)
{
    switch (err) {
    case TPIO_EAI_NONAME: return EAI_NONAME;
    case TPIO_EAI_AGAIN: return EAI_AGAIN;
    case TPIO_EAI_FAIL: return EAI_FAIL;
    case TPIO_EAI_FAMILY: return EAI_FAMILY;
    case TPIO_EAI_NODATA: return EAI_NODATA;
    case TPIO_EAI_SERVICE: return EAI_SERVICE;
    case TPIO_EAI_MEMORY: return EAI_MEMORY;
    case TPIO_EAI_OTHER: return EAI_SYSTEM;
    default: return 0;
    }
}

PyObject *pt_oserror(int err)
{
    int gai = gai_code(err);
    if (gai) { /* socket.gaierror, as getaddrinfo() raises it */
        PyObject *sock = PyImport_ImportModule("socket");
        PyObject *cls = sock ? PyObject_GetAttrString(sock, "gaierror") : NULL;
        Py_XDECREF(sock);
        if (!cls)
            return NULL;
        PyObject *e = PyObject_CallFunction(cls, "is", gai, gai_strerror(gai));
        Py_DECREF(cls);
        return e;
    }
    if (err <= -3000) /* tpio's own: no errno matches */
        return PyObject_CallFunction(PyExc_OSError, "s", tpio_strerror(err));
    /* OSError(errno, text) picks the subclass (ConnectionResetError...). */
    return PyObject_CallFunction(PyExc_OSError, "is", -err, strerror(-err));
}

PyObject *pt_raise_errno(int err)
{
    if (err == -ENOMEM)
        return PyErr_NoMemory();
    PyObject *e = pt_oserror(err);
    if (e) {
        PyErr_SetObject((PyObject *)Py_TYPE(e), e);
        Py_DECREF(e);
    }
    return NULL;
}

bool pt_check_open(pt_loop *loop)
{
    if (loop->closed || !loop->loop) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return false;
    }
    return true;
}

/* ---- shared by the transport files ---------------------------------------- */

bool pt_fut_done(PyObject *fut)
{
    PyObject *d = PyObject_CallMethod(fut, "done", NULL);
    int b = d ? PyObject_IsTrue(d) : 1;
    Py_XDECREF(d);
    if (!d)
        PyErr_Clear();
    return b != 0;
}

void pt_fut_settle(pt_loop *loop, PyObject *fut, PyObject *name, PyObject *value)
{
    PyObject *r = PyObject_CallMethodOneArg(fut, name, value);
    if (r) {
        Py_DECREF(r);
        return;
    }
    PyObject *e = pt_fetch_error(loop);
    if (e) {
        pt_report(loop, "tpio: could not complete a future", e, NULL);
        Py_DECREF(e);
    }
}

PyObject *pt_one_arg_slow(const char *method, const char *name, PyObject *const *args,
                          Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs == 1 && !nkw)
        return args[0];
    if (nargs > 1)
        return PyErr_Format(PyExc_TypeError,
                            "%s() takes 2 positional arguments but %zd were given", method,
                            nargs + 1);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(k, name) != 0)
            return PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                                method, k);
    }
    if (nkw && nargs)
        return PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                            method, name);
    if (nkw)
        return args[0];
    return PyErr_Format(PyExc_TypeError, "%s() missing 1 required positional argument: '%s'",
                        method, name);
}

PyObject *pt_socket_of_fd(int fd)
{
    PyObject *mod = PyImport_ImportModule("socket");
    PyObject *cls = mod ? PyObject_GetAttrString(mod, "socket") : NULL;
    Py_XDECREF(mod);
    if (!cls)
        return NULL;
    PyObject *kw = Py_BuildValue("{s:i}", "fileno", fd);
    PyObject *noargs = PyTuple_New(0);
    PyObject *sock = kw && noargs ? PyObject_Call(cls, noargs, kw) : NULL;
    Py_XDECREF(kw);
    Py_XDECREF(noargs);
    Py_DECREF(cls);
    return sock;
}
