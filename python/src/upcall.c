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
