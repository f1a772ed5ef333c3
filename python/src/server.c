/* The C side of a server: tpio's server object under tpio.Server
 * (python/tpio/_server.py, an asyncio.AbstractServer). It stays alive while
 * tpio has the server: until closed and its last connection is gone. */
#include "pytpio.h"

#include <string.h>

typedef struct {
    PyObject_HEAD
    tpio_server_t *s; /* NULL once tpio is done with it */
    pt_factory f;
    bool closed;
} pt_server;

static PyTypeObject *server_type;

/* Every live server's handle, held by the module while tpio has it. */
static PyObject *live;

static void forget(pt_server *self)
{
    if (PySet_Discard(live, (PyObject *)self) < 0)
        PyErr_Clear();
}

static void finished(tpio_loop_t *l, int err, void *arg)
{
    (void)l;
    (void)err;
    pt_server *self = arg;
    self->s = NULL;
    forget(self); /* may free self */
}

static void server_closed(pt_server *self)
{
    if (self->closed || !self->s)
        return;
    self->closed = true;
    tpio_server_close(self->s);
    if (tpio_server_wait_closed(self->s, finished, self, NULL) < 0) {
        self->s = NULL;
        forget(self);
    }
}

static PyObject *sv_close(pt_server *self, PyObject *unused)
{
    (void)unused;
    Py_INCREF(self);
    server_closed(self);
    Py_DECREF(self);
    Py_RETURN_NONE;
}

static PyObject *sv_is_serving(pt_server *self, PyObject *unused)
{
    (void)unused;
    bool serving = false;
    if (self->s && !self->closed)
        tpio_server_is_serving(self->s, &serving);
    return PyBool_FromLong(serving);
}

static PyObject *sv_start_serving(pt_server *self, PyObject *unused)
{
    (void)unused;
    if (self->s && !self->closed) {
        int rc = tpio_server_start_serving(self->s);
        if (rc < 0)
            return pt_raise_errno(rc);
    }
    Py_RETURN_NONE;
}

static PyObject *sv_fds(pt_server *self, PyObject *unused)
{
    (void)unused;
    size_t n = 0;
    if (self->s && !self->closed)
        tpio_server_get_socket_count(self->s, &n);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        int fd = -1;
        tpio_server_get_socket(self->s, i, &fd);
        PyList_SET_ITEM(list, (Py_ssize_t)i, PyLong_FromLong(fd));
    }
    return list;
}

static PyObject *sv_connection_count(pt_server *self, PyObject *unused)
{
    (void)unused;
    size_t n = 0;
    if (self->s)
        tpio_server_get_connection_count(self->s, &n);
    return PyLong_FromSize_t(n);
}

static PyObject *sv_clients(pt_server *self, PyObject *abort)
{
    if (self->s)
        (PyObject_IsTrue(abort) ? tpio_server_abort_clients : tpio_server_close_clients)(self->s);
    Py_RETURN_NONE;
}

static void wait_done(tpio_loop_t *l, int err, void *arg)
{
    (void)l;
    PyObject *fut = arg;
    PyObject *done = PyObject_CallMethod(fut, "done", NULL);
    if (done && !PyObject_IsTrue(done) && err == 0) {
        PyObject *r = PyObject_CallMethodOneArg(fut, pt.s_set_result, Py_None);
        Py_XDECREF(r);
    }
    if (PyErr_Occurred())
        PyErr_Clear();
    Py_XDECREF(done);
    Py_DECREF(fut);
}

/* _wait_closed(fut): fut gets None once closed with no connection left. */
static PyObject *sv_wait_closed(pt_server *self, PyObject *fut)
{
    if (!self->s) {
        PyObject *r = PyObject_CallMethodOneArg(fut, pt.s_set_result, Py_None);
        Py_XDECREF(r);
        return r ? Py_NewRef(Py_None) : NULL;
    }
    Py_INCREF(fut);
    int rc = tpio_server_wait_closed(self->s, wait_done, fut, NULL);
    if (rc < 0) {
        Py_DECREF(fut);
        return pt_raise_errno(rc);
    }
    Py_RETURN_NONE;
}

static int sv_traverse(pt_server *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->f.factory);
    Py_VISIT(self->f.loop);
    return 0;
}

static void sv_dealloc(pt_server *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->f.factory);
    Py_CLEAR(self->f.loop);
    Py_CLEAR(self->f.error);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef sv_methods[] = {
    {"close", (PyCFunction)sv_close, METH_NOARGS, NULL},
    {"is_serving", (PyCFunction)sv_is_serving, METH_NOARGS, NULL},
    {"start_serving", (PyCFunction)sv_start_serving, METH_NOARGS, NULL},
    {"fds", (PyCFunction)sv_fds, METH_NOARGS, NULL},
    {"connection_count", (PyCFunction)sv_connection_count, METH_NOARGS, NULL},
    {"clients", (PyCFunction)sv_clients, METH_O, NULL},
    {"wait_closed", (PyCFunction)sv_wait_closed, METH_O, NULL},
    {NULL},
};

static pt_server *server_new(pt_loop *loop, PyObject *factory)
{
    pt_server *self = (pt_server *)server_type->tp_alloc(server_type, 0);
    if (!self)
        return NULL;
    self->f.loop = (pt_loop *)Py_NewRef((PyObject *)loop);
    self->f.factory = Py_NewRef(factory);
    self->f.kind = PT_STREAM_SOCKET;
    self->f.server = true;
    return self;
}

static PyObject *server_started(pt_server *self, int rc)
{
    if (rc < 0) {
        Py_DECREF(self);
        return pt_raise_errno(rc);
    }
    if (PySet_Add(live, (PyObject *)self) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int flag(int v)
{
    return v < 0 ? TPIO_DEFAULT : v ? TPIO_ON : TPIO_OFF;
}

/* Descriptors of a list of socket objects (None: none). */
static int fds_of(PyObject *socks, int **fds, size_t *n)
{
    *fds = NULL;
    *n = 0;
    if (socks == Py_None)
        return 0;
    PyObject *seq = PySequence_Fast(socks, "sockets must be a sequence");
    if (!seq)
        return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    *fds = PyMem_Calloc((size_t)len + 1, sizeof **fds);
    for (Py_ssize_t i = 0; *fds && i < len; i++) {
        int fd = PyObject_AsFileDescriptor(PySequence_Fast_GET_ITEM(seq, i));
        if (fd < 0) {
            PyMem_Free(*fds);
            *fds = NULL;
            Py_DECREF(seq);
            return -1;
        }
        (*fds)[i] = fd;
    }
    Py_DECREF(seq);
    if (!*fds) {
        PyErr_NoMemory();
        return -1;
    }
    *n = (size_t)len;
    return 0;
}

/* _create_server(factory, hosts, port, family, flags, backlog, reuse_address,
 *                reuse_port, start_serving, socks) -> handle */
PyObject *pt_loop_create_server(pt_loop *self, PyObject *args, PyObject *kw)
{
    (void)kw;
    PyObject *factory, *hosts, *socks;
    int port, family, flags, backlog, reuse_address, reuse_port, start;
    if (!PyArg_ParseTuple(args, "OOiiiiiipO", &factory, &hosts, &port, &family, &flags,
                          &backlog, &reuse_address, &reuse_port, &start, &socks) ||
        !pt_check_open(self))
        return NULL;
    tpio_server_opts_t o = TPIO_OPTS(tpio_server_opts_t, .port = (uint16_t)port,
                                     .family = family, .flags = flags, .backlog = backlog,
                                     .reuse_address = flag(reuse_address),
                                     .reuse_port = flag(reuse_port),
                                     .start_serving = start ? TPIO_ON : TPIO_OFF);
    const char **names = NULL;
    PyObject *seq = NULL;
    int *fds = NULL;
    size_t nfds = 0;
    if (hosts != Py_None) {
        seq = PySequence_Fast(hosts, "hosts must be a sequence");
        if (!seq)
            return NULL;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        names = PyMem_Calloc((size_t)n + 1, sizeof *names);
        for (Py_ssize_t i = 0; names && i < n; i++) {
            names[i] = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
            if (!names[i]) {
                PyMem_Free(names);
                Py_DECREF(seq);
                return NULL;
            }
        }
        if (!names) {
            Py_DECREF(seq);
            return PyErr_NoMemory();
        }
        o.hosts = names;
        o.nhosts = (size_t)n;
    }
    if (fds_of(socks, &fds, &nfds) < 0) {
        PyMem_Free(names);
        Py_XDECREF(seq);
        return NULL;
    }
    o.socks = fds;
    o.nsocks = nfds;
    pt_server *sv = server_new(self, factory);
    int rc = sv ? tpio_loop_create_server(self->loop, pt_stream_factory, &sv->f, &o, &sv->s)
                : -ENOMEM;
    PyMem_Free(names);
    PyMem_Free(fds);
    Py_XDECREF(seq);
    if (!sv)
        return NULL;
    return server_started(sv, rc);
}

/* _create_unix_server(factory, path, sock, backlog, start_serving) -> handle */
PyObject *pt_loop_create_unix_server(pt_loop *self, PyObject *args, PyObject *kw)
{
    (void)kw;
    PyObject *factory, *path, *sock, *bytes = NULL;
    int backlog, start;
    if (!PyArg_ParseTuple(args, "OOOip", &factory, &path, &sock, &backlog, &start) ||
        !pt_check_open(self))
        return NULL;
    tpio_unix_opts_t o = TPIO_OPTS(tpio_unix_opts_t, .backlog = backlog,
                                   .start_serving = start ? TPIO_ON : TPIO_OFF);
    if (sock != Py_None) {
        int fd = PyObject_AsFileDescriptor(sock);
        if (fd < 0)
            return NULL;
        o.use_sock = TPIO_ON;
        o.sock = fd;
    } else {
        if (!PyUnicode_FSConverter(path, &bytes))
            return NULL;
        const char *p = PyBytes_AS_STRING(bytes);
        Py_ssize_t n = PyBytes_GET_SIZE(bytes);
        if (n > 0 && p[0] == '\0') {
            o.abstract = TPIO_ON;
            o.path = p + 1;
            o.path_len = (size_t)n - 1;
        } else {
            o.path = p;
            o.path_len = (size_t)n;
        }
    }
    pt_server *sv = server_new(self, factory);
    int rc = sv ? tpio_loop_create_unix_server(self->loop, pt_stream_factory, &sv->f, &o,
                                               &sv->s)
                : -ENOMEM;
    Py_XDECREF(bytes);
    if (!sv)
        return NULL;
    return server_started(sv, rc);
}

/* The loop closed under its servers: tpio freed them. */
void pt_servers_dropped(pt_loop *loop)
{
    if (!live)
        return;
    PyObject *copy = PySequence_List(live);
    if (!copy) {
        PyErr_Clear();
        return;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(copy); i++) {
        pt_server *sv = (pt_server *)PyList_GET_ITEM(copy, i);
        if (sv->f.loop == loop) {
            sv->s = NULL;
            sv->closed = true;
            PySet_Discard(live, (PyObject *)sv);
        }
    }
    Py_DECREF(copy);
}

int pt_server_init(PyObject *module)
{
    PyType_Slot slots[] = {
        {Py_tp_dealloc, sv_dealloc},
        {Py_tp_traverse, sv_traverse},
        {Py_tp_methods, sv_methods},
        {0, NULL},
    };
    PyType_Spec spec = {
        .name = "tpio._tpio.ServerHandle",
        .basicsize = sizeof(pt_server),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
        .slots = slots,
    };
    server_type = (PyTypeObject *)PyType_FromSpec(&spec);
    live = PySet_New(NULL);
    if (!server_type || !live)
        return -1;
    return PyModule_AddObjectRef(module, "ServerHandle", (PyObject *)server_type);
}
