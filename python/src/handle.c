/* Handles: asyncio's own Handle and TimerHandle classes, run from tpio's
 * ready queue and timer heap.
 *
 * The types here are subclasses made at import time of asyncio.Handle and
 * asyncio.TimerHandle, with a C part after asyncio's slots, so that every
 * method (cancel, cancelled, when, get_context, repr, comparisons) is
 * asyncio's own and isinstance() holds; only creating and running one is
 * done here, in C, by the slots' offsets. */
#include "pytpio.h"

PyTypeObject *pt_handle_type, *pt_timer_type;
Py_ssize_t pt_off_callback, pt_off_args, pt_off_cancelled, pt_off_loop, pt_off_source_tb,
    pt_off_repr, pt_off_context, pt_off_scheduled, pt_off_when, pt_off_hc, pt_off_tc;

static PyObject *format_handle; /* asyncio.base_events._format_handle */
static PyObject *extract_stack; /* asyncio.format_helpers.extract_stack */

static int slot_offset(PyObject *cls, const char *name, Py_ssize_t *off)
{
    PyObject *d = PyObject_GetAttrString(cls, name);
    if (!d)
        return -1;
    if (!Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        Py_DECREF(d);
        PyErr_Format(PyExc_ImportError, "tpio: asyncio.%s.%s is not a slot",
                     ((PyTypeObject *)cls)->tp_name, name);
        return -1;
    }
    *off = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    return 0;
}

static PyTypeObject *subclass(const char *name, PyObject *base)
{
    /* No GC flag and no traverse: the type inherits asyncio's (the C part
     * holds no reference), which walks the slots of every class above. */
    PyType_Slot slots[] = {{0, NULL}};
    PyType_Spec spec = {
        .name = name,
        .basicsize = (int)(((PyTypeObject *)base)->tp_basicsize + sizeof(struct pt_handle_c)),
        .flags = Py_TPFLAGS_DEFAULT,
        .slots = slots,
    };
    return (PyTypeObject *)PyType_FromSpecWithBases(&spec, base);
}

int pt_handles_init(PyObject *module)
{
    PyObject *h = pt.asyncio_Handle, *t = pt.asyncio_TimerHandle;
    if (slot_offset(h, "_callback", &pt_off_callback) ||
        slot_offset(h, "_args", &pt_off_args) ||
        slot_offset(h, "_cancelled", &pt_off_cancelled) ||
        slot_offset(h, "_loop", &pt_off_loop) ||
        slot_offset(h, "_source_traceback", &pt_off_source_tb) ||
        slot_offset(h, "_repr", &pt_off_repr) || slot_offset(h, "_context", &pt_off_context) ||
        slot_offset(t, "_scheduled", &pt_off_scheduled) || slot_offset(t, "_when", &pt_off_when))
        return -1;
    pt_handle_type = subclass("tpio.Handle", h);
    if (!pt_handle_type)
        return -1;
    pt_timer_type = subclass("tpio.TimerHandle", t);
    if (!pt_timer_type)
        return -1;
    pt_off_hc = ((PyTypeObject *)h)->tp_basicsize;
    pt_off_tc = ((PyTypeObject *)t)->tp_basicsize;
    PyObject *be = PyImport_ImportModule("asyncio.base_events");
    if (!be)
        return -1;
    format_handle = PyObject_GetAttrString(be, "_format_handle");
    Py_DECREF(be);
    PyObject *fh = PyImport_ImportModule("asyncio.format_helpers");
    if (!fh)
        return -1;
    extract_stack = PyObject_GetAttrString(fh, "extract_stack");
    Py_DECREF(fh);
    if (!format_handle || !extract_stack)
        return -1;
    if (PyModule_AddObjectRef(module, "Handle", (PyObject *)pt_handle_type) ||
        PyModule_AddObjectRef(module, "TimerHandle", (PyObject *)pt_timer_type))
        return -1;
    return 0;
}

PyObject *pt_handle_new(pt_loop *loop, PyObject *callback, PyObject *args, PyObject *context,
                        bool timer, double when)
{
    PyTypeObject *tp = timer ? pt_timer_type : pt_handle_type;
    PyObject *h = tp->tp_alloc(tp, 0);
    if (!h) {
        Py_XDECREF(args);
        return NULL;
    }
    if (context && context != Py_None) {
        Py_INCREF(context);
    } else {
        context = PyContext_CopyCurrent();
        if (!context) {
            Py_XDECREF(args);
            Py_DECREF(h);
            return NULL;
        }
    }
    PyObject *tb = Py_None;
    if (loop->debug) {
        PyFrameObject *f = PyEval_GetFrame();
        tb = PyObject_CallOneArg(extract_stack, f ? (PyObject *)f : Py_None);
        if (!tb) {
            PyErr_Clear();
            tb = Py_None;
        }
    } else {
        Py_INCREF(tb);
    }
    Py_INCREF(callback);
    PT_SLOT(h, pt_off_callback) = callback;
    PT_SLOT(h, pt_off_args) = args ? args : PyTuple_New(0);
    PT_SLOT(h, pt_off_cancelled) = Py_NewRef(Py_False);
    PT_SLOT(h, pt_off_loop) = Py_NewRef((PyObject *)loop);
    PT_SLOT(h, pt_off_source_tb) = tb;
    PT_SLOT(h, pt_off_repr) = Py_NewRef(Py_None);
    PT_SLOT(h, pt_off_context) = context;
    if (timer) {
        PT_SLOT(h, pt_off_scheduled) = Py_NewRef(Py_False);
        PT_SLOT(h, pt_off_when) = PyFloat_FromDouble(when);
        if (!PT_SLOT(h, pt_off_when)) {
            Py_DECREF(h);
            return NULL;
        }
    }
    if (!PT_SLOT(h, pt_off_args)) {
        Py_DECREF(h);
        return NULL;
    }
    return h;
}

bool pt_handle_cancelled(PyObject *h)
{
    PyObject *c = PT_SLOT(h, pt_off_cancelled);
    return c && c != Py_False && PyObject_IsTrue(c) == 1;
}

void pt_pending_link(pt_loop *loop, PyObject *h)
{
    struct pt_handle_c *c = pt_hc(h);
    c->prev = NULL;
    c->next = loop->pending;
    if (loop->pending)
        pt_hc((PyObject *)loop->pending)->prev = (pt_handle *)h;
    loop->pending = (pt_handle *)h;
    c->linked = true;
}

void pt_pending_unlink(pt_loop *loop, PyObject *h)
{
    struct pt_handle_c *c = pt_hc(h);
    if (!c->linked)
        return;
    if (c->prev)
        pt_hc((PyObject *)c->prev)->next = c->next;
    else
        loop->pending = c->next;
    if (c->next)
        pt_hc((PyObject *)c->next)->prev = c->prev;
    c->prev = c->next = NULL;
    c->linked = false;
}

static void callback_failed(pt_loop *loop, PyObject *h, PyObject *cb, PyObject *args)
{
    PyObject *exc = pt_fetch_error(loop);
    if (!exc)
        return;
    PyObject *src = PyObject_CallFunctionObjArgs(pt.format_callback_source, cb, args, NULL);
    PyObject *msg = src ? PyUnicode_FromFormat("Exception in callback %U", src) : NULL;
    Py_XDECREF(src);
    if (!msg) {
        PyErr_WriteUnraisable(cb);
        Py_DECREF(exc);
        return;
    }
    PyObject *tb = PT_SLOT(h, pt_off_source_tb);
    const char *m = PyUnicode_AsUTF8(msg);
    if (tb && tb != Py_None)
        pt_report(loop, m, exc, "handle", h, "source_traceback", tb, NULL);
    else
        pt_report(loop, m, exc, "handle", h, NULL);
    Py_DECREF(msg);
    Py_DECREF(exc);
}

static void run_now(pt_loop *loop, PyObject *h)
{
    PyObject *cb = PT_SLOT(h, pt_off_callback), *args = PT_SLOT(h, pt_off_args);
    PyObject *ctx = PT_SLOT(h, pt_off_context);
    if (!cb || !args || !ctx)
        return;
    Py_INCREF(cb);
    Py_INCREF(args);
    PyObject *res = NULL;
    if (!PyContext_CheckExact(ctx)) {
        /* context= that is not a Context: asyncio calls its run() all the
         * same (an AttributeError for most objects) */
        PyObject *run = PyObject_GetAttrString(ctx, "run");
        PyObject *first = run ? PyTuple_Pack(1, cb) : NULL;
        PyObject *full = first ? PySequence_Concat(first, args) : NULL;
        res = full ? PyObject_Call(run, full, NULL) : NULL;
        Py_XDECREF(full);
        Py_XDECREF(first);
        Py_XDECREF(run);
    } else if (PyContext_Enter(ctx) == 0) {
        res = PyObject_Vectorcall(cb, &PyTuple_GET_ITEM(args, 0),
                                  (size_t)PyTuple_GET_SIZE(args), NULL);
        if (PyContext_Exit(ctx) && res) {
            Py_DECREF(res);
            res = NULL;
        }
    }
    if (res)
        Py_DECREF(res);
    else
        callback_failed(loop, h, cb, args);
    Py_DECREF(cb);
    Py_DECREF(args);
}

/* asyncio's debug mode: a callback that ran longer than
 * loop.slow_callback_duration is logged as "Executing ... took ... seconds". */
static void run_debug(pt_loop *loop, PyObject *h)
{
    double t0, t1;
    tpio_loop_time(loop->loop, &t0);
    run_now(loop, h);
    tpio_loop_time(loop->loop, &t1);
    PyObject *limit = PyObject_GetAttr((PyObject *)loop, pt.s_slow_callback_duration);
    double lim = limit ? PyFloat_AsDouble(limit) : 0.1;
    Py_XDECREF(limit);
    if (PyErr_Occurred())
        PyErr_Clear();
    if (t1 - t0 < lim)
        return;
    PyObject *what = PyObject_CallOneArg(format_handle, h);
    PyObject *r = what ? PyObject_CallMethod(pt.logger, "warning", "sOd",
                                             "Executing %s took %.3f seconds", what, t1 - t0)
                       : NULL;
    Py_XDECREF(what);
    if (!r)
        PyErr_Clear();
    Py_XDECREF(r);
}

void pt_handle_run(pt_loop *loop, PyObject *h)
{
    if (pt_handle_cancelled(h))
        return;
    if (loop->debug)
        run_debug(loop, h);
    else
        run_now(loop, h);
}
