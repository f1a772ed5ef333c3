/* asyncio's BaseTransport for every transport type of the extension: the
 * fields they start with (PT_TRANSPORT_HEAD) and what they do alike, as
 * asyncio's selector transports do it: connection_made and connection_lost
 * run as loop callbacks (an error in them is "Exception in callback ..."),
 * an error in a reading callback is fatal to the transport, flow control
 * failures are reported and change nothing, writes after the end are
 * dropped with a warning, and 'socket' is a TransportSocket. */
#include "pytpio.h"

#include <math.h>
#include <stddef.h>

#define HEAD(p) ((pt_transport *)((char *)(p) - offsetof(pt_transport, cproto)))

/* stream plain and buffered, datagram, subprocess */
static const tpio_protocol_ops_t *ours[8];
static PyObject *(*lookup_other)(tpio_protocol_t *p);

void pt_tr_register(const tpio_protocol_ops_t *ops)
{
    for (size_t i = 0; i < sizeof ours / sizeof *ours; i++)
        if (!ours[i] || ours[i] == ops) {
            ours[i] = ops;
            return;
        }
}

void pt_tr_set_lookup(PyObject *(*lookup)(tpio_protocol_t *p)) { lookup_other = lookup; }

PyObject *pt_transport_of(tpio_protocol_t *p)
{
    for (size_t i = 0; i < sizeof ours / sizeof *ours && ours[i]; i++)
        if (p->ops == ours[i])
            return (PyObject *)HEAD(p);
    return lookup_other ? lookup_other(p) : NULL;
}

int pt_tr_check_layout(PyObject *base)
{
    if (((PyTypeObject *)base)->tp_basicsize == offsetof(pt_transport, cproto))
        return 0;
    PyErr_Format(PyExc_ImportError, "tpio: unexpected layout of %s",
                 ((PyTypeObject *)base)->tp_name);
    return -1;
}

/* ---- the calls that make one ---------------------------------------------------- */

void pt_fut_made(pt_loop *loop, PyObject *fut, PyObject *tr, PyObject *protocol)
{
    PyObject *pair = PyTuple_Pack(2, tr, protocol ? protocol : Py_None);
    if (pair)
        pt_fut_settle(loop, fut, pt.s_set_result, pair);
    else
        PyErr_Clear();
    Py_XDECREF(pair);
}

void pt_fut_failed(pt_loop *loop, PyObject *fut, pt_factory *f, int err)
{
    if (f->extra_obj) {
        PyObject *r = PyObject_CallMethodNoArgs(f->extra_obj,
                                                f->extra_dup ? pt.s_close : pt.s_detach);
        Py_XDECREF(r);
        if (!r)
            PyErr_Clear();
    }
    if (pt_fut_done(fut))
        return;
    PyObject *exc = f->error ? Py_NewRef(f->error) : pt_oserror(err);
    if (exc)
        pt_fut_settle(loop, fut, pt.s_set_exception, exc);
    else
        PyErr_Clear();
    Py_XDECREF(exc);
}

int pt_check_protocol(PyObject *protocol)
{
    PyObject *m = PyObject_GetAttr(protocol, pt.s_connection_made);
    Py_XDECREF(m);
    return m ? 0 : -1;
}

/* ---- the start and the end ------------------------------------------------------ */

void pt_tr_made(pt_transport *tr)
{
    if (tr->loop->dropping)
        return;
    PyObject *m = PyObject_GetAttr(tr->protocol, pt.s_connection_made);
    PyObject *r = m ? PyObject_CallOneArg(m, (PyObject *)tr) : NULL;
    if (r)
        Py_DECREF(r);
    else
        pt_callback_error1(tr->loop, m, (PyObject *)tr);
    Py_XDECREF(m);
}

/* The objects that stood for the descriptor: a socket made here or given by
 * the user lets go of it (tpio closed it); a pipe object whose descriptor
 * tpio had a copy of is closed, as asyncio closes it. */
static void release_extra(pt_transport *tr)
{
    PyObject *objs[2] = {tr->sock, tr->extra_obj};
    for (int i = 0; i < 2; i++) {
        if (!objs[i])
            continue;
        PyObject *r = PyObject_CallMethodNoArgs(
            objs[i], i == 1 && tr->extra_dup ? pt.s_close : pt.s_detach);
        if (!r)
            PyErr_Clear();
        Py_XDECREF(r);
    }
}

void pt_tr_lost(pt_transport *tr, int err)
{
    tr->closing = true;
    if (!tr->conn_lost)
        tr->conn_lost = 1;
    PyObject *exc = tr->exc;
    tr->exc = NULL;
    if (!tr->loop->dropping && tr->protocol) {
        if (!exc && !(exc = err ? pt_oserror(err) : Py_NewRef(Py_None))) {
            PyErr_Clear();
            exc = Py_NewRef(Py_None);
        }
        PyObject *m = PyObject_GetAttr(tr->protocol, pt.s_connection_lost);
        PyObject *r = m ? PyObject_CallOneArg(m, exc) : NULL;
        if (r)
            Py_DECREF(r);
        else
            pt_callback_error1(tr->loop, m, exc);
        Py_XDECREF(m);
    }
    Py_XDECREF(exc);
    release_extra(tr);
    tr->t = NULL;
    tr->lost = true;
    Py_CLEAR(tr->protocol);
}

void pt_tr_fatal(pt_transport *tr, const char *message)
{
    PyObject *exc = pt_fetch_error(tr->loop);
    if (!exc)
        return;
    if (!PyErr_GivenExceptionMatches(exc, PyExc_OSError))
        pt_report(tr->loop, message, exc, "transport", (PyObject *)tr, "protocol",
                  tr->protocol, NULL);
    if (tr->conn_lost || !tr->t) { /* _force_close: already ending */
        Py_DECREF(exc);
        return;
    }
    Py_XSETREF(tr->exc, exc);
    tr->closing = true;
    tr->conn_lost++;
    tpio_transport_abort(tr->t);
}

/* ---- flow control and writes ------------------------------------------------------ */

void pt_tr_flow(pt_transport *tr, PyObject *shown, PyObject *name, const char *message)
{
    if (tr->loop->dropping || !tr->protocol)
        return;
    PyObject *r = PyObject_CallMethodNoArgs(tr->protocol, name);
    if (r) {
        Py_DECREF(r);
        return;
    }
    PyObject *exc = pt_fetch_error(tr->loop);
    if (exc) {
        pt_report(tr->loop, message, exc, "transport", shown, "protocol", tr->protocol, NULL);
        Py_DECREF(exc);
    }
}

void pt_tr_up_pause(tpio_protocol_t *p)
{
    pt_tr_flow(HEAD(p), (PyObject *)HEAD(p), pt.s_pause_writing,
               "protocol.pause_writing() failed");
}

void pt_tr_up_resume(tpio_protocol_t *p)
{
    pt_tr_flow(HEAD(p), (PyObject *)HEAD(p), pt.s_resume_writing,
               "protocol.resume_writing() failed");
}

void pt_tr_drop_write(pt_transport *tr, const char *warning)
{
    if (tr->conn_lost >= 5) {
        PyObject *r = PyObject_CallMethod(pt.logger, "warning", "s", warning);
        Py_XDECREF(r);
        if (!r)
            PyErr_Clear();
    }
    tr->conn_lost++;
}

/* A limit as a byte count: asyncio compares the buffer's size with the
 * value as given (a float, a huge int), so the floor of it, capped, says
 * the same of every size. 0, or -1 with the error set. */
static int limit_size(PyObject *v, Py_ssize_t *out)
{
    if (PyIndex_Check(v)) {
        PyObject *i = PyNumber_Index(v);
        if (!i)
            return -1;
        *out = PyNumber_AsSsize_t(i, NULL); /* clamped */
        Py_DECREF(i);
        return PyErr_Occurred() ? -1 : 0;
    }
    double d = PyFloat_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred())
        return -1;
    d = floor(d);
    *out = d >= (double)PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : d <= 0 ? 0 : (Py_ssize_t)d;
    return 0;
}

/* set_write_buffer_limits(high, low)'s arguments by asyncio's rule, with
 * its message: 0, or -1 with ValueError set. */
static int write_limits(PyObject *ho, PyObject *lo, Py_ssize_t *hout, Py_ssize_t *lout)
{
    /* asyncio's rule, with its message */
    PyObject *four = PyLong_FromLong(4), *zero = PyLong_FromLong(0);
    PyObject *high = NULL, *low = NULL;
    int rc = -1;
    if (!four || !zero)
        goto out;
    if (ho == Py_None)
        high = lo == Py_None ? PyLong_FromLong(64 * 1024) : PyNumber_Multiply(lo, four);
    else
        high = Py_NewRef(ho);
    if (!high)
        goto out;
    low = lo == Py_None ? PyNumber_FloorDivide(high, four) : Py_NewRef(lo);
    if (!low)
        goto out;
    int ok = PyObject_RichCompareBool(high, low, Py_GE);
    if (ok == 1)
        ok = PyObject_RichCompareBool(low, zero, Py_GE);
    if (ok == 0) {
        PyErr_Format(PyExc_ValueError, "high (%R) must be >= low (%R) must be >= 0", high, low);
    } else if (ok == 1 && limit_size(high, hout) == 0 && limit_size(low, lout) == 0) {
        rc = 0;
    }
out:
    Py_XDECREF(four);
    Py_XDECREF(zero);
    Py_XDECREF(high);
    Py_XDECREF(low);
    return rc;
}

PyObject *pt_tr_get_write_buffer_size(PyObject *self, PyObject *unused)
{
    (void)unused;
    size_t n = 0;
    if (PT_TR(self)->t)
        tpio_transport_get_write_buffer_size(PT_TR(self)->t, &n);
    return PyLong_FromSize_t(n);
}

PyObject *pt_tr_get_write_buffer_limits(PyObject *self, PyObject *unused)
{
    (void)unused;
    size_t high = 64 * 1024, low = 16 * 1024;
    if (PT_TR(self)->t)
        tpio_transport_get_write_buffer_limits(PT_TR(self)->t, &high, &low);
    return Py_BuildValue("(nn)", (Py_ssize_t)low, (Py_ssize_t)high);
}

PyObject *pt_tr_set_write_buffer_limits(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"high", "low", NULL};
    PyObject *ho = Py_None, *lo = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO:set_write_buffer_limits", kwlist, &ho,
                                     &lo))
        return NULL;
    Py_ssize_t h, l;
    if (write_limits(ho, lo, &h, &l) < 0)
        return NULL;
    if (PT_TR(self)->t) {
        Py_INCREF(self); /* pause_writing() may run inside */
        tpio_transport_set_write_buffer_limits(PT_TR(self)->t, (size_t)h, (size_t)l);
        Py_DECREF(self);
    }
    Py_RETURN_NONE;
}

/* ---- extra info ------------------------------------------------------------------- */

static PyObject *make_tsock(pt_transport *tr)
{
    if (tr->tsock)
        return tr->tsock;
    PyObject *sockobj = tr->extra_obj;
    if (!sockobj) {
        int fd;
        if (!tr->t || tpio_transport_get_fd(tr->t, &fd) < 0)
            return NULL;
        tr->sock = pt_socket_of_fd(fd);
        if (!tr->sock)
            return NULL;
        sockobj = tr->sock;
    }
    tr->tsock = PyObject_CallOneArg(pt.TransportSocket, sockobj);
    return tr->tsock;
}

int pt_tr_extra_args(PyObject *args, PyObject *kw, const char **name, PyObject **dflt)
{
    static char *kwlist[] = {"name", "default", NULL};
    PyObject *key;
    *dflt = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:get_extra_info", kwlist, &key, dflt))
        return -1;
    if (!PyUnicode_Check(key)) /* asyncio's _extra.get(): the key must hash */
        return PyObject_Hash(key) == -1 ? -1 : 0;
    *name = PyUnicode_AsUTF8(key);
    return *name ? 1 : -1;
}

PyObject *pt_tr_socket_info(pt_transport *tr, PyObject *dflt)
{
    if (tr->lost && !tr->tsock)
        return Py_NewRef(dflt);
    PyObject *ts = make_tsock(tr);
    if (!ts) {
        PyErr_Clear();
        return Py_NewRef(dflt);
    }
    return Py_NewRef(ts);
}

/* ---- the object --------------------------------------------------------------------- */

int pt_tr_traverse(pt_transport *tr, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(tr));
    Py_VISIT(tr->extra);
    Py_VISIT(tr->protocol);
    Py_VISIT(tr->exc);
    Py_VISIT(tr->extra_obj);
    Py_VISIT(tr->tsock);
    Py_VISIT(tr->sock);
    Py_VISIT(tr->dict);
    Py_VISIT(tr->loop);
    return 0;
}

void pt_tr_clear(pt_transport *tr)
{
    Py_CLEAR(tr->exc);
    Py_CLEAR(tr->tsock);
    Py_CLEAR(tr->dict);
    if (!tr->t) { /* tpio still calls a live one: it keeps what that needs */
        Py_CLEAR(tr->extra);
        Py_CLEAR(tr->protocol);
        Py_CLEAR(tr->extra_obj);
        Py_CLEAR(tr->sock);
        Py_CLEAR(tr->loop);
    }
}

void pt_tr_dealloc(pt_transport *tr)
{
    tr->t = NULL;
    pt_tr_clear(tr);
}

PyObject *pt_tr_get_protocol(PyObject *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(PT_TR(self)->protocol ? PT_TR(self)->protocol : Py_None);
}

PyObject *pt_tr_loop_attr(PyObject *self, void *c)
{
    (void)c;
    pt_transport *tr = PT_TR(self);
    return Py_NewRef(tr->loop && !tr->lost ? (PyObject *)tr->loop : Py_None);
}

PyObject *pt_tr_protocol_attr(PyObject *self, void *c) { return pt_tr_get_protocol(self, c); }

PyMemberDef pt_tr_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(pt_transport, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(pt_transport, weakreflist), READONLY, NULL},
    {NULL},
};
