/* Stream transports: TCP, Unix sockets and pipes, one C type under three
 * asyncio classes (Transport, ReadTransport, WriteTransport).
 *
 * The object embeds the C protocol tpio calls, so an upcall finds its
 * Python side with container_of and a read reaches data_received with one
 * bytes object and one call. Errors in protocol callbacks are handled as
 * asyncio's selector transports handle them. */
#include "pytpio.h"

#include <stddef.h>
#include <string.h>
#include <sys/socket.h>

typedef struct {
    PT_TRANSPORT_HEAD
    PyObject *m_data, *m_get_buffer, *m_buffer_updated; /* bound, lazily */
    Py_buffer view;
    bool have_view, buffered, eof_written, socket_kind;
    bool wrapped; /* a subprocess's pipe: tpio's protocol, not ours (pt_stream_wrap_pipe) */
    int kind;
    struct sockaddr_storage peer, local;
    socklen_t peerlen, locallen;
} pt_stream;

static PyTypeObject *stream_types[3];

#define SELF(p) ((pt_stream *)((char *)(p) - offsetof(pt_stream, cproto)))

static const tpio_protocol_ops_t plain_ops, buffered_ops;

/* ---- the protocol's methods ------------------------------------------------------------ */

static PyObject *method(pt_stream *self, PyObject **cache, PyObject *name)
{
    if (!*cache)
        *cache = PyObject_GetAttr(self->protocol, name);
    return *cache;
}

static void drop_methods(pt_stream *self)
{
    Py_CLEAR(self->m_data);
    Py_CLEAR(self->m_get_buffer);
    Py_CLEAR(self->m_buffer_updated);
}

static void release_view(pt_stream *self)
{
    if (self->have_view) {
        self->have_view = false;
        PyBuffer_Release(&self->view);
    }
}

/* ---- upcalls ------------------------------------------------------------------------- */

static void up_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    SELF(p)->t = t;
    pt_tr_made(PT_TR(SELF(p)));
}

static void snapshot_addrs(pt_stream *self)
{
    if (!self->socket_kind || !self->t)
        return;
    self->peerlen = sizeof self->peer;
    if (tpio_transport_get_peername(self->t, &self->peer, &self->peerlen) < 0)
        self->peerlen = 0;
    self->locallen = sizeof self->local;
    if (tpio_transport_get_sockname(self->t, &self->local, &self->locallen) < 0)
        self->locallen = 0;
}

static void up_lost(tpio_protocol_t *p, int err)
{
    pt_stream *self = SELF(p);
    release_view(self);
    snapshot_addrs(self);
    pt_tr_lost(PT_TR(self), err);
    drop_methods(self);
    Py_DECREF(self); /* tpio's reference, taken by the factory */
}

/* What data_received() raised on a read pipe: asyncio's pipe calls it from
 * its _read_ready callback, so it is reported as that callback's error and
 * the pipe goes on reading (a socket's is fatal). */
static void read_pipe_error(pt_stream *self)
{
    PyObject *exc = pt_fetch_error(self->loop);
    if (!exc)
        return;
    pt_report(self->loop, "Exception in callback ReadPipeTransport._read_ready()", exc,
              "transport", (PyObject *)self, "protocol", self->protocol, NULL);
    Py_DECREF(exc);
}

static void up_data(tpio_protocol_t *p, const void *data, size_t len)
{
    pt_stream *self = SELF(p);
    if (self->loop->dropping)
        return;
    PyObject *m = method(self, &self->m_data, pt.s_data_received);
    PyObject *b = m ? PyBytes_FromStringAndSize(data, (Py_ssize_t)len) : NULL;
    PyObject *r = b ? PyObject_CallOneArg(m, b) : NULL;
    Py_XDECREF(b);
    if (r)
        Py_DECREF(r);
    else if (self->kind == PT_STREAM_READ_PIPE)
        read_pipe_error(self);
    else
        pt_tr_fatal(PT_TR(self), "Fatal error: protocol.data_received() call failed.");
}

static bool up_eof(tpio_protocol_t *p)
{
    pt_stream *self = SELF(p);
    if (self->loop->dropping)
        return false;
    if (self->kind == PT_STREAM_READ_PIPE) {
        /* asyncio's read pipe: eof_received() runs as a callback of its
         * own (what it raises is reported), its answer is not asked, and
         * the pipe ends with connection_lost(None) */
        PyObject *m = PyObject_GetAttr(self->protocol, pt.s_eof_received);
        PyObject *r = m ? PyObject_CallNoArgs(m) : NULL;
        if (r)
            Py_DECREF(r);
        else
            pt_callback_error(self->loop, m, NULL);
        Py_XDECREF(m);
        return false;
    }
    PyObject *r = PyObject_CallMethodNoArgs(self->protocol, pt.s_eof_received);
    if (!r) {
        pt_tr_fatal(PT_TR(self), "Fatal error: protocol.eof_received() call failed.");
        return true; /* the abort is under way */
    }
    int keep = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (keep < 0) {
        pt_tr_fatal(PT_TR(self), "Fatal error: protocol.eof_received() call failed.");
        return true;
    }
    return keep;
}

static void *up_get_buffer(tpio_protocol_t *p, ssize_t hint, size_t *len)
{
    (void)hint;
    pt_stream *self = SELF(p);
    release_view(self);
    if (self->loop->dropping)
        return NULL;
    PyObject *m = method(self, &self->m_get_buffer, pt.s_get_buffer);
    PyObject *b = m ? PyObject_CallOneArg(m, pt.minus_one) : NULL;
    if (b) {
        if (PyObject_GetBuffer(b, &self->view, PyBUF_WRITABLE) == 0) {
            self->have_view = true;
            if (self->view.len > 0) {
                Py_DECREF(b);
                *len = (size_t)self->view.len;
                return self->view.buf;
            }
            release_view(self);
            PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
        }
        Py_DECREF(b);
    }
    pt_tr_fatal(PT_TR(self), "Fatal error: protocol.get_buffer() call failed.");
    return NULL;
}

static void up_buffer_updated(tpio_protocol_t *p, size_t n)
{
    pt_stream *self = SELF(p);
    release_view(self); /* as recv_into's export ends before buffer_updated */
    if (self->loop->dropping)
        return;
    PyObject *m = method(self, &self->m_buffer_updated, pt.s_buffer_updated);
    PyObject *arg = m ? PyLong_FromSize_t(n) : NULL;
    PyObject *r = arg ? PyObject_CallOneArg(m, arg) : NULL;
    Py_XDECREF(arg);
    if (r)
        Py_DECREF(r);
    else
        pt_tr_fatal(PT_TR(self), "Fatal error: protocol.buffer_updated() call failed.");
}

static const tpio_protocol_ops_t plain_ops = {
    .connection_made = up_made,
    .connection_lost = up_lost,
    .pause_writing = pt_tr_up_pause,
    .resume_writing = pt_tr_up_resume,
    .data_received = up_data,
    .eof_received = up_eof,
};

static const tpio_protocol_ops_t buffered_ops = {
    .connection_made = up_made,
    .connection_lost = up_lost,
    .pause_writing = pt_tr_up_pause,
    .resume_writing = pt_tr_up_resume,
    .eof_received = up_eof,
    .get_buffer = up_get_buffer,
    .buffer_updated = up_buffer_updated,
};

static int use_protocol(pt_stream *self, PyObject *protocol)
{
    int buffered = PyObject_IsInstance(protocol, pt.asyncio_BufferedProtocol);
    if (buffered < 0)
        return -1;
    drop_methods(self);
    Py_INCREF(protocol);
    Py_XSETREF(self->protocol, protocol);
    self->buffered = buffered;
    self->cproto.ops = buffered ? &buffered_ops : &plain_ops;
    return 0;
}

/* ---- the factory -------------------------------------------------------------------- */

tpio_protocol_t *pt_stream_factory(void *arg)
{
    pt_factory *f = arg;
    if (f->loop->dropping)
        return NULL;
    PyObject *proto = PyObject_CallNoArgs(f->factory);
    if (proto && pt_check_protocol(proto) < 0)
        Py_CLEAR(proto);
    if (!proto) {
        PyObject *e = pt_fetch_error(f->loop);
        if (e && f->server) { /* asyncio tells of it in debug mode only */
            if (f->loop->debug)
                pt_report(f->loop, "Error on transport creation for incoming connection", e,
                          NULL);
            Py_DECREF(e);
        } else if (e && !f->error) {
            f->error = e;
        } else {
            Py_XDECREF(e);
        }
        return NULL;
    }
    PyTypeObject *tp = stream_types[f->kind];
    pt_stream *self = (pt_stream *)tp->tp_alloc(tp, 0);
    if (!self || use_protocol(self, proto) < 0) {
        Py_XDECREF(self);
        Py_DECREF(proto);
        PyObject *e = pt_fetch_error(f->loop);
        if (e && !f->error)
            f->error = e;
        else
            Py_XDECREF(e);
        return NULL;
    }
    Py_DECREF(proto);
    self->loop = (pt_loop *)Py_NewRef((PyObject *)f->loop);
    self->kind = f->kind;
    self->socket_kind = f->kind == PT_STREAM_SOCKET;
    if (f->extra_obj) {
        self->extra_obj = Py_NewRef(f->extra_obj);
        self->extra_dup = f->extra_dup;
    }
    f->made = (PyObject *)self;
    return &self->cproto;
}

/* ---- subprocess pipes ------------------------------------------------------------------ */

PyObject *pt_stream_wrap_pipe(pt_loop *loop, tpio_transport_t *t, int fd)
{
    int kind = fd == 0 ? PT_STREAM_WRITE_PIPE : PT_STREAM_READ_PIPE;
    PyTypeObject *tp = stream_types[kind];
    pt_stream *self = (pt_stream *)tp->tp_alloc(tp, 0);
    if (!self)
        return NULL;
    self->loop = (pt_loop *)Py_NewRef((PyObject *)loop);
    self->t = t;
    self->kind = kind;
    self->wrapped = true;
    /* 'pipe': the file object asyncio's Popen would have made (bufsize 0) */
    int pfd;
    if (tpio_transport_get_fd(t, &pfd) == 0) {
        PyObject *io = PyImport_ImportModule("io");
        self->extra_obj = io ? PyObject_CallMethod(io, "FileIO", "isO", pfd,
                                                   fd == 0 ? "wb" : "rb", Py_False)
                             : NULL;
        Py_XDECREF(io);
        if (!self->extra_obj)
            PyErr_Clear();
    }
    return (PyObject *)self;
}

void pt_stream_pipe_lost(PyObject *pipe)
{
    pt_stream *self = (pt_stream *)pipe;
    if (!self->wrapped || self->lost)
        return;
    self->t = NULL;
    self->lost = self->closing = true;
    if (!self->conn_lost)
        self->conn_lost = 1;
    if (self->extra_obj) { /* closefd=False: marks it closed only */
        PyObject *r = PyObject_CallMethodNoArgs(self->extra_obj, pt.s_close);
        Py_XDECREF(r);
        if (!r)
            PyErr_Clear();
    }
}

/* ---- BaseTransport ------------------------------------------------------------------------ */

static PyObject *tr_close(pt_stream *self, PyObject *unused)
{
    (void)unused;
    if (self->t && !self->closing) {
        self->closing = true;
        tpio_transport_close(self->t);
    }
    Py_RETURN_NONE;
}

static PyObject *tr_is_closing(pt_stream *self, PyObject *unused)
{
    (void)unused;
    bool c = true;
    if (self->t && !self->closing)
        tpio_transport_is_closing(self->t, &c);
    return PyBool_FromLong(c);
}

static PyObject *tr_set_protocol(pt_stream *self, PyObject *protocol)
{
    if (self->wrapped)
        return PyErr_Format(PyExc_NotImplementedError,
                            "tpio: the pipe transports of a subprocess keep their protocol");
    if (use_protocol(self, protocol) < 0)
        return NULL;
    if (self->t)
        tpio_transport_set_protocol(self->t, &self->cproto);
    Py_RETURN_NONE;
}

static PyObject *tr_get_extra_info(pt_stream *self, PyObject *args, PyObject *kw)
{
    const char *n;
    PyObject *dflt;
    int k = pt_tr_extra_args(args, kw, &n, &dflt);
    if (k <= 0)
        return k < 0 ? NULL : Py_NewRef(dflt);
    if (self->socket_kind) {
        bool peer = !strcmp(n, "peername");
        if (peer || !strcmp(n, "sockname")) {
            struct sockaddr_storage ss;
            socklen_t len = sizeof ss;
            if (self->t) {
                int rc = peer ? tpio_transport_get_peername(self->t, &ss, &len)
                              : tpio_transport_get_sockname(self->t, &ss, &len);
                if (rc < 0)
                    return Py_NewRef(dflt);
            } else {
                len = peer ? self->peerlen : self->locallen;
                if (!len)
                    return Py_NewRef(dflt);
                memcpy(&ss, peer ? &self->peer : &self->local, len);
            }
            return pt_addr_to_py((struct sockaddr *)&ss, len);
        }
        if (!strcmp(n, "socket"))
            return pt_tr_socket_info(PT_TR(self), dflt);
    } else if (!strcmp(n, "pipe") && self->extra_obj) {
        return Py_NewRef(self->extra_obj);
    }
    return Py_NewRef(dflt);
}

/* ---- ReadTransport ------------------------------------------------------------------------ */

static PyObject *tr_is_reading(pt_stream *self, PyObject *unused)
{
    (void)unused;
    bool r = false;
    if (self->t && !self->closing)
        tpio_transport_is_reading(self->t, &r);
    return PyBool_FromLong(r);
}

static PyObject *tr_pause_reading(pt_stream *self, PyObject *unused)
{
    (void)unused;
    if (self->t && !self->closing)
        tpio_transport_pause_reading(self->t);
    Py_RETURN_NONE;
}

static PyObject *tr_resume_reading(pt_stream *self, PyObject *unused)
{
    (void)unused;
    if (self->t && !self->closing)
        tpio_transport_resume_reading(self->t);
    Py_RETURN_NONE;
}

/* ---- WriteTransport ------------------------------------------------------------------------ */

static PyObject *write_failed(int rc, const char *what)
{
    if (rc == -ESHUTDOWN)
        return PyErr_Format(PyExc_RuntimeError, "Cannot call %s() after write_eof()", what);
    if (rc == -EBUSY)
        return PyErr_Format(PyExc_RuntimeError, "unable to %s; sendfile is in progress",
                            what);
    return pt_raise_errno(rc);
}

/* Writes after the connection is gone are dropped, with asyncio's warning
 * from the fifth on. */
static bool writes_dropped(pt_stream *self)
{
    if (self->t && !self->closing)
        return false;
    pt_tr_drop_write(PT_TR(self), self->kind == PT_STREAM_WRITE_PIPE
                                      ? "pipe closed by peer or os.write(pipe, data) "
                                        "raised exception."
                                      : "socket.send() raised exception.");
    return true;
}

/* write() of something not bytes-like: asyncio's socket transport raises
 * TypeError; its write pipe asserts (AssertionError, the repr as the
 * message), unless assertions are off (-O). */
static PyObject *bad_data(pt_stream *self, PyObject *data)
{
    if (self->kind == PT_STREAM_WRITE_PIPE) {
        PyObject *flags = PySys_GetObject("flags"); /* borrowed */
        PyObject *opt = flags ? PyObject_GetAttrString(flags, "optimize") : NULL;
        int optimized = opt ? PyObject_IsTrue(opt) : 0;
        Py_XDECREF(opt);
        PyErr_Clear();
        if (!optimized) {
            PyObject *r = PyObject_Repr(data);
            if (r) {
                PyErr_SetObject(PyExc_AssertionError, r);
                Py_DECREF(r);
            }
            return NULL;
        }
    }
    PyObject *tn = PyType_GetName(Py_TYPE(data));
    if (tn) {
        PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not %R", tn);
        Py_DECREF(tn);
    }
    return NULL;
}

/* A memoryview that is not contiguous: asyncio takes it, and what fails is
 * its send() at once (a fatal error of the transport); one that waits
 * behind buffered data is copied. */
static PyObject *write_not_contiguous(pt_stream *self, PyObject *data)
{
    if (!PyMemoryView_Check(data) || !PyErr_ExceptionMatches(PyExc_BufferError))
        return NULL;
    if (!PyObject_Size(data)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    size_t queued = 0;
    if (self->t)
        tpio_transport_get_write_buffer_size(self->t, &queued);
    if (writes_dropped(self)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (!queued) {
        pt_tr_fatal(PT_TR(self), self->kind == PT_STREAM_WRITE_PIPE
                                     ? "Fatal write error on pipe transport"
                                     : "Fatal write error on socket transport");
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    PyErr_Clear();
    PyObject *b = PyBytes_FromObject(data);
    if (!b)
        return NULL;
    int rc = tpio_transport_write(self->t, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
    Py_DECREF(b);
    if (rc < 0)
        return write_failed(rc, "write");
    Py_RETURN_NONE;
}

static PyObject *tr_write(pt_stream *self, PyObject *data)
{
    if (PyBytes_CheckExact(data)) {
        if (self->eof_written)
            return write_failed(-ESHUTDOWN, "write");
        Py_ssize_t len = PyBytes_GET_SIZE(data);
        if (!len || writes_dropped(self))
            Py_RETURN_NONE;
        int rc = tpio_transport_write(self->t, PyBytes_AS_STRING(data), (size_t)len);
        if (rc < 0)
            return write_failed(rc, "write");
        Py_RETURN_NONE;
    }
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data))
        return bad_data(self, data);
    if (self->eof_written)
        return write_failed(-ESHUTDOWN, "write");
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return write_not_contiguous(self, data);
    int rc = 0;
    if (view.len && !writes_dropped(self))
        rc = tpio_transport_write(self->t, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (rc < 0)
        return write_failed(rc, "write");
    Py_RETURN_NONE;
}

static PyObject *tr_writelines(pt_stream *self, PyObject *lines)
{
    PyObject *seq = PySequence_Fast(lines, "can only join an iterable");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_buffer *views = PyMem_Calloc((size_t)n + 1, sizeof *views);
    tpio_buf_t *bufs = PyMem_Calloc((size_t)n + 1, sizeof *bufs);
    Py_ssize_t got = 0;
    PyObject *res = NULL;
    if (!views || !bufs) {
        PyErr_NoMemory();
        goto out;
    }
    size_t total = 0;
    for (; got < n; got++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, got);
        if (PyObject_GetBuffer(item, &views[got], PyBUF_SIMPLE) < 0) {
            PyErr_Format(PyExc_TypeError,
                         "sequence item %zd: expected a bytes-like object, %.80s found", got,
                         Py_TYPE(item)->tp_name);
            goto out;
        }
        bufs[got].base = views[got].buf;
        bufs[got].len = (size_t)views[got].len;
        total += bufs[got].len;
    }
    if (self->eof_written) {
        write_failed(-ESHUTDOWN, "write");
        goto out;
    }
    if (total && !writes_dropped(self)) {
        int rc = tpio_transport_writelines(self->t, bufs, (size_t)n);
        if (rc < 0) {
            write_failed(rc, "write");
            goto out;
        }
    }
    res = Py_NewRef(Py_None);
out:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(bufs);
    Py_DECREF(seq);
    return res;
}

static PyObject *tr_write_eof(pt_stream *self, PyObject *unused)
{
    (void)unused;
    if (!self->t || self->closing || self->eof_written)
        Py_RETURN_NONE;
    int rc = tpio_transport_write_eof(self->t);
    if (rc == -EBUSY)
        return PyErr_Format(PyExc_RuntimeError, "unable to write_eof; sendfile is in progress");
    if (rc < 0 && rc != -ENOTSUP)
        return pt_raise_errno(rc);
    if (rc == -ENOTSUP)
        return PyErr_Format(PyExc_NotImplementedError, "write_eof() is not supported");
    if (self->kind == PT_STREAM_WRITE_PIPE)
        self->closing = true; /* asyncio's write pipe: write_eof() closes; writes dropped */
    else
        self->eof_written = true;
    Py_RETURN_NONE;
}

static PyObject *tr_can_write_eof(pt_stream *self, PyObject *unused)
{
    (void)unused;
    bool can = self->kind != PT_STREAM_READ_PIPE;
    if (self->t)
        tpio_transport_can_write_eof(self->t, &can);
    return PyBool_FromLong(can);
}

static PyObject *tr_abort(pt_stream *self, PyObject *unused)
{
    (void)unused;
    if (self->t) {
        self->closing = true;
        tpio_transport_abort(self->t);
    }
    Py_RETURN_NONE;
}

static PyObject *tr_repr(pt_stream *self)
{
    int fd = -1;
    if (self->t)
        tpio_transport_get_fd(self->t, &fd);
    if (fd < 0)
        return PyUnicode_FromFormat("<%s closed>", Py_TYPE(self)->tp_name);
    return PyUnicode_FromFormat("<%s fd=%d%s>", Py_TYPE(self)->tp_name, fd,
                                self->closing ? " closing" : "");
}

/* ---- object ------------------------------------------------------------------------------ */

static int tr_traverse(pt_stream *self, visitproc visit, void *arg)
{
    Py_VISIT(self->m_data);
    Py_VISIT(self->m_get_buffer);
    Py_VISIT(self->m_buffer_updated);
    return pt_tr_traverse(PT_TR(self), visit, arg);
}

static int tr_clear(pt_stream *self)
{
    drop_methods(self);
    pt_tr_clear(PT_TR(self));
    return 0;
}

static void tr_dealloc(pt_stream *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)self);
    release_view(self);
    drop_methods(self);
    pt_tr_dealloc(PT_TR(self));
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

PT_ONE_ARG(tr_set_protocol_kw, tr_set_protocol, pt_stream, "set_protocol", "protocol")
PT_ONE_ARG(tr_write_kw, tr_write, pt_stream, "write", "data")
PT_ONE_ARG(tr_writelines_kw, tr_writelines, pt_stream, "writelines", "list_of_data")

#define NOARGS(name, fn) {name, (PyCFunction)fn, METH_NOARGS, NULL}
#define BASE_METHODS                                                                    \
    NOARGS("close", tr_close), NOARGS("is_closing", tr_is_closing),                     \
        PT_ONE_ARG_DEF("set_protocol", tr_set_protocol_kw),                             \
        NOARGS("get_protocol", pt_tr_get_protocol),                                        \
        {"get_extra_info", (PyCFunction)(void (*)(void))tr_get_extra_info,              \
         METH_VARARGS | METH_KEYWORDS, NULL}
#define READ_METHODS                                                                    \
    NOARGS("is_reading", tr_is_reading), NOARGS("pause_reading", tr_pause_reading),     \
        NOARGS("resume_reading", tr_resume_reading)
#define WRITE_METHODS                                                                   \
    PT_ONE_ARG_DEF("write", tr_write_kw), PT_ONE_ARG_DEF("writelines", tr_writelines_kw), \
        NOARGS("write_eof", tr_write_eof), NOARGS("can_write_eof", tr_can_write_eof),   \
        NOARGS("abort", tr_abort), PT_TR_WRITE_BUFFER_METHODS

static PyMethodDef socket_methods[] = {BASE_METHODS, READ_METHODS, WRITE_METHODS, {NULL}};
static PyMethodDef read_methods[] = {BASE_METHODS, READ_METHODS, {NULL}};
static PyMethodDef write_methods[] = {BASE_METHODS, WRITE_METHODS, {NULL}};

static PyGetSetDef tr_getset[] = {PT_TR_GETSET, {NULL}};

static PyTypeObject *make_type(const char *name, PyObject *base, PyMethodDef *methods)
{
    if (pt_tr_check_layout(base) < 0)
        return NULL;
    PyType_Slot slots[] = {
        {Py_tp_dealloc, tr_dealloc},   {Py_tp_traverse, tr_traverse},
        {Py_tp_clear, tr_clear},       {Py_tp_methods, methods},
        {Py_tp_members, pt_tr_members},   {Py_tp_getset, tr_getset},
        {Py_tp_repr, tr_repr},         {0, NULL},
    };
    PyType_Spec spec = {
        .name = name,
        .basicsize = sizeof(pt_stream),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
        .slots = slots,
    };
    return (PyTypeObject *)PyType_FromSpecWithBases(&spec, base);
}

int pt_stream_init(PyObject *module)
{
    stream_types[PT_STREAM_SOCKET] =
        make_type("tpio.StreamTransport", pt.asyncio_Transport, socket_methods);
    if (!stream_types[0])
        return -1;
    stream_types[PT_STREAM_READ_PIPE] =
        make_type("tpio.ReadPipeTransport", pt.asyncio_ReadTransport, read_methods);
    if (!stream_types[1])
        return -1;
    stream_types[PT_STREAM_WRITE_PIPE] =
        make_type("tpio.WritePipeTransport", pt.asyncio_WriteTransport, write_methods);
    if (!stream_types[2])
        return -1;
    if (PyModule_AddObjectRef(module, "StreamTransport", (PyObject *)stream_types[0]) ||
        PyModule_AddObjectRef(module, "ReadPipeTransport", (PyObject *)stream_types[1]) ||
        PyModule_AddObjectRef(module, "WritePipeTransport", (PyObject *)stream_types[2]))
        return -1;
    pt_tr_register(&plain_ops);
    pt_tr_register(&buffered_ops);
    return 0;
}
