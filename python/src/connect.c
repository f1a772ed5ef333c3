/* The calls that make one stream transport: create_connection,
 * connect_accepted_socket, create_unix_connection, connect_read_pipe /
 * connect_write_pipe. The Python methods (python/tpio/_loop.py) check the
 * arguments as asyncio does and await the future these complete. */
#include "pytpio.h"

#include <string.h>
#include <unistd.h>

typedef struct {
    pt_factory f;
    PyObject *fut;
} pt_request;

static pt_request *request_new(pt_loop *loop, PyObject *fut, PyObject *factory, int kind)
{
    pt_request *r = PyMem_Calloc(1, sizeof *r);
    if (!r) {
        PyErr_NoMemory();
        return NULL;
    }
    r->f.loop = (pt_loop *)Py_NewRef((PyObject *)loop);
    r->f.factory = Py_NewRef(factory);
    r->f.kind = kind;
    r->fut = Py_NewRef(fut);
    return r;
}

static void request_free(pt_request *r)
{
    Py_XDECREF(r->f.loop);
    Py_XDECREF(r->f.factory);
    Py_XDECREF(r->f.error);
    Py_XDECREF(r->f.extra_obj);
    Py_XDECREF(r->fut);
    PyMem_Free(r);
}

static void connected(tpio_loop_t *l, tpio_transport_t *t, tpio_protocol_t *p, int err,
                      void *arg)
{
    (void)l;
    pt_request *r = arg;
    pt_loop *loop = r->f.loop;
    if (loop->dropping) {
        request_free(r);
        return;
    }
    if (err == 0) {
        PyObject *tr = pt_transport_of(p);
        if (pt_fut_done(r->fut)) { /* cancelled meanwhile: nobody gets it */
            tpio_transport_abort(t);
        } else {
            PyObject *proto = PyObject_GetAttrString(tr, "_protocol");
            if (proto)
                pt_fut_made(loop, r->fut, tr, proto);
            else
                PyErr_Clear();
            Py_XDECREF(proto);
        }
    } else {
        pt_fut_failed(loop, r->fut, &r->f, err);
    }
    request_free(r);
}

static PyObject *started(int rc, tpio_handle_t id, pt_request *r)
{
    if (rc < 0) {
        request_free(r);
        if (rc == -EINVAL && !PyErr_Occurred())
            return PyErr_Format(PyExc_ValueError, "invalid arguments");
        return pt_raise_errno(rc);
    }
    return PyLong_FromUnsignedLongLong(id);
}

static int sock_fd(PyObject *sock)
{
    if (sock == Py_None)
        return -1;
    return PyObject_AsFileDescriptor(sock);
}

/* _create_connection(fut, factory, host, port, family, flags, local_host,
 *                    local_port, happy_eyeballs_delay, interleave, sock) */
PyObject *pt_loop_create_connection(pt_loop *self, PyObject *args, PyObject *kw)
{
    (void)kw;
    PyObject *fut, *factory, *sock;
    const char *host, *local_host;
    int port, family, flags, local_port, interleave;
    double hed;
    if (!PyArg_ParseTuple(args, "OOzii" "izidiO", &fut, &factory, &host, &port, &family,
                          &flags, &local_host, &local_port, &hed, &interleave, &sock) ||
        !pt_check_open(self))
        return NULL;
    tpio_connect_opts_t o = TPIO_OPTS(tpio_connect_opts_t, .host = host,
                                      .port = (uint16_t)port, .family = family,
                                      .flags = flags, .local_host = local_host,
                                      .local_port = (uint16_t)local_port,
                                      .happy_eyeballs_delay = hed, .interleave = interleave);
    pt_request *r = request_new(self, fut, factory, PT_STREAM_SOCKET);
    if (!r)
        return NULL;
    if (sock != Py_None) {
        int fd = sock_fd(sock);
        if (fd < 0) {
            request_free(r);
            return NULL;
        }
        o.use_sock = TPIO_ON;
        o.sock = fd;
        o.host = NULL;
        r->f.extra_obj = Py_NewRef(sock);
    }
    tpio_handle_t id = 0;
    int rc = tpio_loop_create_connection(self->loop, pt_stream_factory, &r->f, &o, connected,
                                         r, &id);
    return started(rc, id, r);
}

/* _connect_accepted_socket(fut, factory, sock) */
PyObject *pt_loop_connect_accepted(pt_loop *self, PyObject *args, PyObject *kw)
{
    (void)kw;
    PyObject *fut, *factory, *sock;
    if (!PyArg_ParseTuple(args, "OOO", &fut, &factory, &sock) || !pt_check_open(self))
        return NULL;
    int fd = sock_fd(sock);
    if (fd < 0)
        return NULL;
    pt_request *r = request_new(self, fut, factory, PT_STREAM_SOCKET);
    if (!r)
        return NULL;
    r->f.extra_obj = Py_NewRef(sock);
    tpio_handle_t id = 0;
    int rc = tpio_loop_connect_accepted_socket(self->loop, pt_stream_factory, &r->f, fd, NULL,
                                               connected, r, &id);
    return started(rc, id, r);
}

/* Fill a Unix path: a str/bytes path, "\0name" for the abstract namespace. */
static int unix_path(PyObject *path, PyObject **bytes, tpio_unix_opts_t *o)
{
    *bytes = NULL;
    if (path == Py_None)
        return 0;
    if (!PyBytes_Check(path)) { /* the Python side gives os.fsencode(path) */
        PyErr_SetString(PyExc_TypeError, "path must be bytes here");
        return -1;
    }
    *bytes = Py_NewRef(path);
    const char *p = PyBytes_AS_STRING(*bytes);
    Py_ssize_t n = PyBytes_GET_SIZE(*bytes);
    if (n > 0 && p[0] == '\0') {
        o->abstract = TPIO_ON;
        o->path = p + 1;
        o->path_len = (size_t)n - 1;
    } else {
        o->path = p;
        o->path_len = (size_t)n;
    }
    if (o->path_len == 0) {
        PyErr_SetString(PyExc_ValueError, "path must not be empty");
        Py_CLEAR(*bytes);
        return -1;
    }
    return 0;
}

/* _create_unix_connection(fut, factory, path, sock) */
PyObject *pt_loop_create_unix_connection(pt_loop *self, PyObject *args, PyObject *kw)
{
    (void)kw;
    PyObject *fut, *factory, *path, *sock, *bytes;
    if (!PyArg_ParseTuple(args, "OOOO", &fut, &factory, &path, &sock) || !pt_check_open(self))
        return NULL;
    tpio_unix_opts_t o = TPIO_OPTS(tpio_unix_opts_t);
    if (unix_path(path, &bytes, &o) < 0)
        return NULL;
    pt_request *r = request_new(self, fut, factory, PT_STREAM_SOCKET);
    if (!r) {
        Py_XDECREF(bytes);
        return NULL;
    }
    if (sock != Py_None) {
        int fd = sock_fd(sock);
        if (fd < 0) {
            Py_XDECREF(bytes);
            request_free(r);
            return NULL;
        }
        o.use_sock = TPIO_ON;
        o.sock = fd;
        r->f.extra_obj = Py_NewRef(sock);
    }
    tpio_handle_t id = 0;
    int rc = tpio_loop_create_unix_connection(self->loop, pt_stream_factory, &r->f, &o,
                                              connected, r, &id);
    Py_XDECREF(bytes);
    return started(rc, id, r);
}

/* _connect_pipe(fut, factory, pipe, write) */
PyObject *pt_loop_connect_pipe(pt_loop *self, PyObject *args, PyObject *kw)
{
    (void)kw;
    PyObject *fut, *factory, *pipe;
    int write;
    if (!PyArg_ParseTuple(args, "OOOp", &fut, &factory, &pipe, &write) || !pt_check_open(self))
        return NULL;
    int fd = PyObject_AsFileDescriptor(pipe);
    if (fd < 0)
        return NULL;
    /* A socket object can let go of its descriptor; a file object cannot,
     * so tpio gets a copy and the file object is closed at the end. */
    PyObject *detach = PyObject_GetAttrString(pipe, "detach");
    bool is_sock = detach && PyObject_HasAttrString(pipe, "getsockopt");
    Py_XDECREF(detach);
    PyErr_Clear();
    if (!is_sock) {
        fd = dup(fd);
        if (fd < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    pt_request *r = request_new(self, fut, factory,
                                write ? PT_STREAM_WRITE_PIPE : PT_STREAM_READ_PIPE);
    if (!r) {
        if (!is_sock)
            close(fd);
        return NULL;
    }
    r->f.extra_obj = Py_NewRef(pipe);
    r->f.extra_dup = !is_sock;
    tpio_handle_t id = 0;
    int rc = write ? tpio_loop_connect_write_pipe(self->loop, pt_stream_factory, &r->f, fd,
                                                  connected, r, &id)
                   : tpio_loop_connect_read_pipe(self->loop, pt_stream_factory, &r->f, fd,
                                                 connected, r, &id);
    if (rc < 0) {
        if (!is_sock)
            close(fd);
        if (rc == -EINVAL) {
            request_free(r);
            return PyErr_Format(PyExc_ValueError,
                                write ? "Pipe transport is only for pipes, sockets and "
                                        "character devices"
                                      : "Pipe transport is for pipes/sockets only.");
        }
    }
    return started(rc, id, r);
}

PyObject *pt_loop_cancel_request(pt_loop *self, PyObject *arg)
{
    unsigned long long id = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (self->loop && id)
        tpio_loop_cancel(self->loop, (tpio_handle_t)id);
    Py_RETURN_NONE;
}
