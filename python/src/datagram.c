/* Datagram transports (UDP, Unix datagram sockets): tpio.DatagramTransport,
 * an asyncio.DatagramTransport, and the call that makes one,
 * _create_datagram_endpoint.
 *
 * Behaviour is asyncio 3.11's _SelectorDatagramTransport: sendto() checks
 * and converts the address as socket.sendto() would (a bad one is a fatal
 * error of the transport, a name that cannot be resolved goes to
 * error_received), exceptions raised by datagram_received / error_received
 * are reported as a callback's and the endpoint stays open, datagrams sent
 * once the endpoint is closing are dropped. The Python method
 * (python/tpio/_loop.py) resolves the addresses as asyncio does and asks
 * for one socket per (local, remote) pair. */
#include "pytpio.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

typedef struct {
    PT_TRANSPORT_HEAD
    PyObject *m_dgram;   /* bound datagram_received, lazily */
    PyObject *address;   /* asyncio's _address: the remote address, or NULL */
    bool connected;
    int family, fd;
    struct sockaddr_storage peer, local;
    socklen_t peerlen, locallen;
    /* the last address seen or used, both ways: an echo server's reply to
     * the address datagram_received gave costs no conversion */
    PyObject *last_obj;
    struct sockaddr_storage last_ss;
    socklen_t last_len;
    /* the sockaddr of `address` for an endpoint that is not connected */
    struct sockaddr_storage dst_ss;
    socklen_t dst_len;
} pt_dgram;

static PyTypeObject *dgram_type;

#define SELF(p) ((pt_dgram *)((char *)(p) - offsetof(pt_dgram, cproto)))

/* ---- errors ------------------------------------------------------------------- */

/* An exception out of datagram_received / error_received: in asyncio it
 * leaves the transport's _read_ready, a loop callback: reported, and the
 * endpoint goes on. */
static void read_error(pt_dgram *self)
{
    PyObject *exc = pt_fetch_error(self->loop);
    if (!exc)
        return;
    pt_report(self->loop, "Exception in callback DatagramTransport._read_ready()", exc,
              "transport", (PyObject *)self, "protocol", self->protocol, NULL);
    Py_DECREF(exc);
}

/* ---- addresses ------------------------------------------------------------------- */

/* An address from the kernel as socket.recvfrom() gives it (None: none). */
static PyObject *addr_obj(pt_dgram *self, const struct sockaddr *sa, socklen_t len)
{
    if (!sa || !len)
        Py_RETURN_NONE;
    if (self->last_obj && len == self->last_len && !memcmp(sa, &self->last_ss, len))
        return Py_NewRef(self->last_obj);
    PyObject *o = pt_addr_to_py(sa, len);
    if (o && len <= sizeof self->last_ss) {
        memcpy(&self->last_ss, sa, len);
        self->last_len = len;
        Py_XSETREF(self->last_obj, Py_NewRef(o));
    }
    return o;
}

/* The host of an AF_INET / AF_INET6 address, resolved as socket.sendto()
 * resolves it (setipaddr): "", "<broadcast>", numeric, else getaddrinfo. */
static int resolve_host(PyObject *host, int family, void *dst, uint32_t *scope)
{
    PyObject *enc = NULL;
    const char *h;
    if (PyUnicode_Check(host)) {
        if (PyUnicode_IS_ASCII(host)) {
            h = PyUnicode_AsUTF8(host);
        } else {
            enc = PyUnicode_AsEncodedString(host, "idna", NULL);
            if (!enc)
                return -1;
            h = PyBytes_AS_STRING(enc);
        }
    } else if (PyBytes_Check(host)) {
        h = PyBytes_AS_STRING(host);
    } else if (PyByteArray_Check(host)) {
        h = PyByteArray_AS_STRING(host);
    } else {
        PyErr_Format(PyExc_TypeError, "str, bytes or bytearray expected, not %s",
                     Py_TYPE(host)->tp_name);
        return -1;
    }
    if (!h)
        return -1;
    int rc = 0;
    size_t alen = family == AF_INET ? sizeof(struct in_addr) : sizeof(struct in6_addr);
    if (!h[0]) {
        memset(dst, 0, alen); /* INADDR_ANY, in6addr_any */
    } else if (!strcmp(h, "<broadcast>") || !strcmp(h, "255.255.255.255")) {
        if (family != AF_INET) {
            PyErr_SetString(PyExc_OSError, "address family mismatched");
            rc = -1;
        } else {
            ((struct in_addr *)dst)->s_addr = htonl(INADDR_BROADCAST);
        }
    } else if (inet_pton(family, h, dst) != 1) {
        /* a name: looked up now, as socket.sendto() does (it blocks) */
        PyObject *mod = PyImport_ImportModule("socket");
        PyObject *infos = mod ? PyObject_CallMethod(mod, "getaddrinfo", "siii", h, 0, family,
                                                    SOCK_DGRAM)
                              : NULL;
        Py_XDECREF(mod);
        PyObject *sa = infos && PyList_Check(infos) && PyList_GET_SIZE(infos) > 0
                           ? PyTuple_GetItem(PyList_GET_ITEM(infos, 0), 4)
                           : NULL;
        PyObject *hs = sa && PyTuple_Check(sa) ? PyTuple_GetItem(sa, 0) : NULL;
        const char *num = hs ? PyUnicode_AsUTF8(hs) : NULL;
        rc = -1;
        if (num) {
            char buf[INET6_ADDRSTRLEN + 64];
            snprintf(buf, sizeof buf, "%s", num);
            char *pct = strchr(buf, '%');
            if (pct)
                *pct = '\0';
            if (inet_pton(family, buf, dst) == 1) {
                rc = 0;
                if (family == AF_INET6 && PyTuple_GET_SIZE(sa) >= 4 && scope)
                    *scope = (uint32_t)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(sa, 3));
            }
        }
        if (rc < 0 && !PyErr_Occurred())
            PyErr_SetString(PyExc_OSError, "getaddrinfo() returned an unusable address");
        Py_XDECREF(infos);
    }
    Py_XDECREF(enc);
    return rc;
}

/* A Python address to a sockaddr of the endpoint's family, as
 * socket.sendto() converts it, with its exceptions. */
static int addr_from_obj(pt_dgram *self, PyObject *addr, struct sockaddr_storage *ss,
                         socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    if (self->family == AF_UNIX) {
        Py_buffer path;
        PyObject *b = PyUnicode_Check(addr) ? PyUnicode_EncodeFSDefault(addr) : Py_NewRef(addr);
        if (!b)
            return -1;
        if (PyObject_GetBuffer(b, &path, PyBUF_SIMPLE) < 0) {
            Py_DECREF(b);
            PyErr_Format(PyExc_TypeError, "a bytes-like object is required, not '%.200s'",
                         Py_TYPE(addr)->tp_name);
            return -1;
        }
        struct sockaddr_un *un = (void *)ss;
        size_t n = (size_t)path.len;
        bool abstract = n == 0 || ((const char *)path.buf)[0] == '\0';
        int rc = 0;
        if (abstract ? n > sizeof un->sun_path : n >= sizeof un->sun_path) {
            PyErr_SetString(PyExc_OSError, "AF_UNIX path too long");
            rc = -1;
        } else {
            un->sun_family = AF_UNIX;
            memcpy(un->sun_path, path.buf, n);
            *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (abstract ? 0 : 1));
        }
        PyBuffer_Release(&path);
        Py_DECREF(b);
        return rc;
    }
    if (self->family != AF_INET && self->family != AF_INET6) {
        PyErr_SetString(PyExc_OSError, "sendto(): bad family");
        return -1;
    }
    const char *fam = self->family == AF_INET ? "AF_INET" : "AF_INET6";
    if (!PyTuple_Check(addr)) {
        PyErr_Format(PyExc_TypeError, "sendto(): %s address must be tuple, not %.500s", fam,
                     Py_TYPE(addr)->tp_name);
        return -1;
    }
    PyObject *host;
    int port;
    unsigned int flow = 0, scope = 0;
    if (self->family == AF_INET) {
        if (!PyArg_ParseTuple(addr, "Oi;AF_INET address must be a pair (host, port)", &host,
                              &port))
            return -1;
    } else if (!PyArg_ParseTuple(addr,
                                 "Oi|II;AF_INET6 address must be a tuple (host, port[, "
                                 "flowinfo[, scopeid]])",
                                 &host, &port, &flow, &scope)) {
        return -1;
    }
    if (port < 0 || port > 0xffff) {
        PyErr_SetString(PyExc_OverflowError, "sendto(): port must be 0-65535.");
        return -1;
    }
    if (flow > 0xfffff) {
        PyErr_SetString(PyExc_OverflowError, "sendto(): flowinfo must be 0-1048575.");
        return -1;
    }
    if (self->family == AF_INET) {
        struct sockaddr_in *in = (void *)ss;
        if (resolve_host(host, AF_INET, &in->sin_addr, NULL) < 0)
            return -1;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        *len = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (void *)ss;
        uint32_t found = 0;
        if (resolve_host(host, AF_INET6, &in6->sin6_addr, &found) < 0)
            return -1;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        in6->sin6_flowinfo = htonl(flow);
        in6->sin6_scope_id = PyTuple_GET_SIZE(addr) >= 4 ? scope : found;
        *len = sizeof *in6;
    }
    return 0;
}

/* ---- the protocol's methods ------------------------------------------------------- */

static int use_protocol(pt_dgram *self, PyObject *protocol)
{
    Py_CLEAR(self->m_dgram);
    Py_XSETREF(self->protocol, Py_NewRef(protocol));
    return 0;
}

/* ---- upcalls ---------------------------------------------------------------------- */

static void snapshot_addrs(pt_dgram *self)
{
    self->peerlen = sizeof self->peer;
    if (tpio_transport_get_peername(self->t, &self->peer, &self->peerlen) < 0)
        self->peerlen = 0;
    self->locallen = sizeof self->local;
    if (tpio_transport_get_sockname(self->t, &self->local, &self->locallen) < 0)
        self->locallen = 0;
    self->connected = self->peerlen > 0;
    int fd = -1, dom = 0;
    socklen_t dl = sizeof dom;
    if (tpio_transport_get_fd(self->t, &fd) == 0 &&
        getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &dl) == 0)
        self->family = dom;
    else if (self->locallen)
        self->family = self->local.ss_family;
    self->fd = fd;
}

static void up_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    pt_dgram *self = SELF(p);
    self->t = t;
    snapshot_addrs(self);
    pt_tr_made(PT_TR(self));
}

static void up_lost(tpio_protocol_t *p, int err)
{
    pt_dgram *self = SELF(p);
    pt_tr_lost(PT_TR(self), err);
    Py_CLEAR(self->m_dgram);
    Py_DECREF(self); /* tpio's reference, taken by the factory */
}

static void up_datagram(tpio_protocol_t *p, const void *data, size_t len,
                        const struct sockaddr *addr, socklen_t alen)
{
    pt_dgram *self = SELF(p);
    if (self->loop->dropping || self->conn_lost)
        return;
    if (!self->m_dgram)
        self->m_dgram = PyObject_GetAttr(self->protocol, pt.s_datagram_received);
    PyObject *m = self->m_dgram;
    PyObject *args[2] = {NULL, NULL};
    PyObject *r = NULL;
    if (m && (args[0] = PyBytes_FromStringAndSize(data, (Py_ssize_t)len)) &&
        (args[1] = addr_obj(self, addr, alen))) {
        Py_INCREF(m); /* set_protocol() inside may drop the cached one */
        r = PyObject_Vectorcall(m, args, 2, NULL);
        Py_DECREF(m);
    }
    Py_XDECREF(args[0]);
    Py_XDECREF(args[1]);
    if (r)
        Py_DECREF(r);
    else
        read_error(self);
}

/* error_received(exc); false if it raised (the error is set). */
static bool call_error_received(pt_dgram *self, PyObject *exc)
{
    PyObject *r = PyObject_CallMethodOneArg(self->protocol, pt.s_error_received, exc);
    Py_XDECREF(r);
    return r != NULL;
}

static void up_error(tpio_protocol_t *p, int err)
{
    pt_dgram *self = SELF(p);
    if (self->loop->dropping || self->conn_lost)
        return;
    PyObject *exc = pt_oserror(err);
    if (!exc || !call_error_received(self, exc))
        read_error(self);
    Py_XDECREF(exc);
}

static const tpio_protocol_ops_t dgram_ops = {
    .connection_made = up_made,
    .connection_lost = up_lost,
    .pause_writing = pt_tr_up_pause,
    .resume_writing = pt_tr_up_resume,
    .datagram_received = up_datagram,
    .error_received = up_error,
};

static PyObject *dg_close(pt_dgram *self, PyObject *unused);

/* ---- the request and the factory ------------------------------------------------- */

typedef struct {
    pt_factory f;
    PyObject *fut;
    PyObject *address;  /* the new transport's _address (None: none) */
    PyObject *protocol; /* what the factory returned, for the result */
} dg_request;

static void request_free(dg_request *r)
{
    Py_XDECREF(r->f.loop);
    Py_XDECREF(r->f.factory);
    Py_XDECREF(r->f.error);
    Py_XDECREF(r->f.extra_obj);
    Py_XDECREF(r->fut);
    Py_XDECREF(r->address);
    Py_XDECREF(r->protocol);
    PyMem_Free(r);
}

static void keep_error(pt_factory *f)
{
    PyObject *e = pt_fetch_error(f->loop);
    if (e && !f->error)
        f->error = e;
    else
        Py_XDECREF(e);
}

tpio_protocol_t *pt_datagram_factory(void *arg)
{
    pt_factory *f = arg;
    dg_request *r = (dg_request *)(void *)((char *)f - offsetof(dg_request, f));
    if (f->loop->dropping)
        return NULL;
    PyObject *proto = PyObject_CallNoArgs(f->factory);
    if (proto && pt_check_protocol(proto) < 0)
        Py_CLEAR(proto);
    if (!proto) {
        keep_error(f);
        return NULL;
    }
    pt_dgram *self = (pt_dgram *)dgram_type->tp_alloc(dgram_type, 0);
    if (!self) {
        Py_DECREF(proto);
        keep_error(f);
        return NULL;
    }
    use_protocol(self, proto);
    Py_XSETREF(r->protocol, proto);
    self->cproto.ops = &dgram_ops;
    self->loop = (pt_loop *)Py_NewRef((PyObject *)f->loop);
    self->fd = -1;
    if (r->address != Py_None)
        self->address = Py_NewRef(r->address);
    if (f->extra_obj)
        self->extra_obj = Py_NewRef(f->extra_obj);
    f->made = (PyObject *)self;
    return &self->cproto;
}

static void made(tpio_loop_t *l, tpio_transport_t *t, tpio_protocol_t *p, int err, void *arg)
{
    (void)l;
    dg_request *r = arg;
    pt_loop *loop = r->f.loop;
    if (loop->dropping) {
        request_free(r);
        return;
    }
    if (err == 0) {
        PyObject *tr = (PyObject *)SELF(p);
        (void)t;
        if (pt_fut_done(r->fut)) { /* cancelled meanwhile: asyncio closes it */
            Py_INCREF(tr);
            Py_DECREF(dg_close((pt_dgram *)tr, NULL));
            Py_DECREF(tr);
        } else {
            pt_fut_made(loop, r->fut, tr, r->protocol);
        }
    } else {
        pt_fut_failed(loop, r->fut, &r->f, err);
    }
    request_free(r);
}

/* An address argument: None, (host, port[, ...]) with a numeric host, or
 * for AF_UNIX a str / bytes path ("\0name": abstract). */
static int inet_arg(PyObject *a, const char **host, uint16_t *port)
{
    if (a == Py_None)
        return 0;
    PyObject *h;
    int p;
    if (!PyTuple_Check(a) || PyTuple_GET_SIZE(a) < 2) {
        PyErr_SetString(PyExc_TypeError, "2-tuple is expected");
        return -1;
    }
    PyObject *two = PyTuple_GetSlice(a, 0, 2);
    if (!two)
        return -1;
    int ok = PyArg_ParseTuple(two, "Oi", &h, &p);
    Py_DECREF(two);
    if (!ok)
        return -1;
    if (!PyUnicode_Check(h)) {
        PyErr_Format(PyExc_TypeError, "host must be str, not %.200s", Py_TYPE(h)->tp_name);
        return -1;
    }
    if (p < 0 || p > 0xffff) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535.");
        return -1;
    }
    *host = PyUnicode_AsUTF8(h);
    *port = (uint16_t)p;
    return *host ? 0 : -1;
}

static int unix_arg(PyObject *a, PyObject **bytes, const char **path, size_t *len,
                    tpio_flag_t *abstract)
{
    *bytes = NULL;
    if (a == Py_None)
        return 0;
    /* not PyUnicode_FSConverter: it refuses the NUL of an abstract name */
    *bytes = PyUnicode_Check(a) ? PyUnicode_EncodeFSDefault(a)
             : PyBytes_Check(a) ? Py_NewRef(a)
                                : NULL;
    if (!*bytes) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "str or bytes path expected, not %.200s",
                         Py_TYPE(a)->tp_name);
        return -1;
    }
    const char *s = PyBytes_AS_STRING(*bytes);
    Py_ssize_t n = PyBytes_GET_SIZE(*bytes);
    if (n == 0) {
        Py_CLEAR(*bytes);
        return 0;
    }
    if (s[0] == '\0') {
        *abstract = TPIO_ON;
        *path = s + 1;
        *len = (size_t)n - 1;
    } else {
        *path = s;
        *len = (size_t)n;
    }
    return 0;
}

/* _create_datagram_endpoint(fut, factory, family, proto, local, remote,
 *                           reuse_port, allow_broadcast, sock, address)
 * Makes one socket: bound to local, connected to remote (each None, a
 * numeric (host, port, ...) tuple, or for AF_UNIX a path), or sock; the
 * transport's asyncio _address is `address`. Completes fut with
 * (transport, protocol) or the error; returns the request's id. */
PyObject *pt_loop_create_datagram(pt_loop *self, PyObject *args, PyObject *kw)
{
    (void)kw;
    PyObject *fut, *factory, *local, *remote, *sock, *address;
    int family, proto, reuse_port, allow_broadcast;
    if (!PyArg_ParseTuple(args, "OOiiOOppOO:_create_datagram_endpoint", &fut, &factory,
                          &family, &proto, &local, &remote, &reuse_port, &allow_broadcast,
                          &sock, &address) ||
        !pt_check_open(self))
        return NULL;
    tpio_datagram_opts_t o = TPIO_OPTS(tpio_datagram_opts_t, .family = family,
                                       .proto = proto,
                                       .reuse_port = reuse_port ? TPIO_ON : TPIO_DEFAULT,
                                       .allow_broadcast =
                                           allow_broadcast ? TPIO_ON : TPIO_DEFAULT);
    PyObject *lb = NULL, *rb = NULL;
    if (sock != Py_None) {
        int fd = PyObject_AsFileDescriptor(sock);
        if (fd < 0)
            return NULL;
        o = (tpio_datagram_opts_t)TPIO_OPTS(tpio_datagram_opts_t, .use_sock = TPIO_ON,
                                            .sock = fd);
    } else if (family == AF_UNIX) {
        if (unix_arg(local, &lb, &o.local_path, &o.local_path_len, &o.local_abstract) < 0 ||
            unix_arg(remote, &rb, &o.remote_path, &o.remote_path_len, &o.remote_abstract) < 0)
            goto fail;
    } else if (inet_arg(local, &o.local_host, &o.local_port) < 0 ||
               inet_arg(remote, &o.remote_host, &o.remote_port) < 0) {
        goto fail;
    }
    dg_request *r = PyMem_Calloc(1, sizeof *r);
    if (!r) {
        PyErr_NoMemory();
        goto fail;
    }
    r->f.loop = (pt_loop *)Py_NewRef((PyObject *)self);
    r->f.factory = Py_NewRef(factory);
    r->f.kind = TPIO_TRANSPORT_DATAGRAM;
    r->fut = Py_NewRef(fut);
    r->address = Py_NewRef(address);
    if (sock != Py_None)
        r->f.extra_obj = Py_NewRef(sock);
    tpio_handle_t id = 0;
    int rc = tpio_loop_create_datagram_endpoint(self->loop, pt_datagram_factory, &r->f, &o,
                                                made, r, &id);
    Py_XDECREF(lb);
    Py_XDECREF(rb);
    if (rc < 0) {
        request_free(r);
        if (rc == -EINVAL && !PyErr_Occurred())
            return PyErr_Format(PyExc_ValueError, "invalid arguments");
        return pt_raise_errno(rc);
    }
    return PyLong_FromUnsignedLongLong(id);
fail:
    Py_XDECREF(lb);
    Py_XDECREF(rb);
    return NULL;
}

/* ---- DatagramTransport ----------------------------------------------------------- */

static bool open_(pt_dgram *self) { return self->t && !self->closing; }

static PyObject *dg_close(pt_dgram *self, PyObject *unused)
{
    (void)unused;
    if (self->t && !self->closing) {
        self->closing = true;
        size_t n = 0;
        tpio_transport_get_write_buffer_size(self->t, &n);
        if (!n) /* asyncio counts it only when nothing is left to send */
            self->conn_lost++;
        tpio_transport_close(self->t);
    }
    Py_RETURN_NONE;
}

static PyObject *dg_abort(pt_dgram *self, PyObject *unused)
{
    (void)unused;
    if (self->t && !self->conn_lost) {
        self->closing = true;
        self->conn_lost++;
        tpio_transport_abort(self->t);
    }
    Py_RETURN_NONE;
}

static PyObject *dg_is_closing(pt_dgram *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(!open_(self));
}

static PyObject *dg_set_protocol(pt_dgram *self, PyObject *protocol)
{
    use_protocol(self, protocol);
    Py_RETURN_NONE;
}

/* As asyncio's _extra: 'socket', 'sockname' and 'peername' (None when not
 * connected), as they were when the endpoint was made. */
static PyObject *dg_get_extra_info(pt_dgram *self, PyObject *args, PyObject *kw)
{
    const char *n;
    PyObject *dflt;
    int k = pt_tr_extra_args(args, kw, &n, &dflt);
    if (k <= 0)
        return k < 0 ? NULL : Py_NewRef(dflt);
    if (!strcmp(n, "peername")) {
        if (!self->peerlen)
            Py_RETURN_NONE;
        return pt_addr_to_py((struct sockaddr *)&self->peer, self->peerlen);
    }
    if (!strcmp(n, "sockname")) {
        if (!self->locallen)
            Py_RETURN_NONE;
        return pt_addr_to_py((struct sockaddr *)&self->local, self->locallen);
    }
    if (!strcmp(n, "socket"))
        return pt_tr_socket_info(PT_TR(self), dflt);
    return Py_NewRef(dflt);
}

/* Datagrams sent once the endpoint is closing are dropped, with asyncio's
 * warning from the fifth on. */
static PyObject *dropped(pt_dgram *self)
{
    pt_tr_drop_write(PT_TR(self), "socket.send() raised exception.");
    Py_RETURN_NONE;
}

static PyObject *dg_sendto(pt_dgram *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    PyObject *data = nargs > 0 ? args[0] : NULL, *addr = nargs > 1 ? args[1] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 2)
        return PyErr_Format(PyExc_TypeError,
                            "sendto() takes from 2 to 3 positional arguments but %zd were "
                            "given",
                            nargs + 1);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        PyObject **slot = PyUnicode_CompareWithASCIIString(k, "data") == 0   ? &data
                          : PyUnicode_CompareWithASCIIString(k, "addr") == 0 ? &addr
                                                                             : NULL;
        if (!slot)
            return PyErr_Format(PyExc_TypeError,
                                "sendto() got an unexpected keyword argument '%U'", k);
        if (*slot)
            return PyErr_Format(PyExc_TypeError, "sendto() got multiple values for argument "
                                                 "'%U'",
                                k);
        *slot = args[nargs + i];
    }
    if (!data)
        return PyErr_Format(PyExc_TypeError,
                            "sendto() missing 1 required positional argument: 'data'");
    if (!addr)
        addr = Py_None;

    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        PyObject *tn = PyType_GetName(Py_TYPE(data));
        if (tn) {
            PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not %R",
                         tn);
            Py_DECREF(tn);
        }
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *res = NULL;
    if (view.len == 0) { /* asyncio 3.11 sends no empty datagram */
        res = Py_NewRef(Py_None);
        goto out;
    }
    if (self->address) {
        if (addr != Py_None && addr != self->address) {
            int eq = PyObject_RichCompareBool(addr, self->address, Py_EQ);
            if (eq < 0)
                goto out;
            if (!eq) {
                PyErr_Format(PyExc_ValueError, "Invalid address: must be None or %S",
                             self->address);
                goto out;
            }
        }
        addr = self->address;
    }
    if (!open_(self)) {
        res = dropped(self);
        goto out;
    }
    const struct sockaddr *sa = NULL;
    socklen_t salen = 0;
    struct sockaddr_storage ss;
    if (!self->connected) {
        if (addr == self->address && self->dst_len) {
            sa = (struct sockaddr *)&self->dst_ss;
            salen = self->dst_len;
        } else if (addr == self->last_obj && self->last_len) {
            sa = (struct sockaddr *)&self->last_ss;
            salen = self->last_len;
        } else {
            if (addr_from_obj(self, addr, &ss, &salen) < 0) {
                if (PyErr_ExceptionMatches(PyExc_OSError)) {
                    /* socket.sendto()'s OSError: to error_received, at once */
                    PyObject *exc = pt_fetch_error(self->loop);
                    if (exc) {
                        if (call_error_received(self, exc))
                            res = Py_NewRef(Py_None);
                        Py_DECREF(exc);
                    } else {
                        res = Py_NewRef(Py_None);
                    }
                } else {
                    pt_tr_fatal(PT_TR(self), "Fatal write error on datagram transport");
                    if (!PyErr_Occurred())
                        res = Py_NewRef(Py_None);
                }
                goto out;
            }
            sa = (struct sockaddr *)&ss;
            if (addr == self->address) {
                memcpy(&self->dst_ss, &ss, salen);
                self->dst_len = salen;
            } else {
                memcpy(&self->last_ss, &ss, salen);
                self->last_len = salen;
                Py_XSETREF(self->last_obj, Py_NewRef(addr));
            }
        }
    }
    Py_INCREF(self); /* pause_writing() may run inside */
    int rc = tpio_datagram_sendto(self->t, view.buf, (size_t)view.len, sa, salen);
    Py_DECREF(self);
    if (rc < 0)
        pt_raise_errno(rc);
    else
        res = Py_NewRef(Py_None);
out:
    PyBuffer_Release(&view);
    return res;
}

/* asyncio's: <_SelectorDatagramTransport fd=6 read=polling write=<idle, bufsize=0>> */
static PyObject *dg_repr(pt_dgram *self)
{
    const char *name = strrchr(Py_TYPE(self)->tp_name, '.');
    name = name ? name + 1 : Py_TYPE(self)->tp_name;
    if (!self->t)
        return self->fd >= 0 ? PyUnicode_FromFormat("<%s closed fd=%d>", name, self->fd)
                             : PyUnicode_FromFormat("<%s closed>", name);
    size_t n = 0;
    tpio_transport_get_write_buffer_size(self->t, &n);
    return PyUnicode_FromFormat("<%s%s fd=%d read=%s write=<%s, bufsize=%zu>>", name,
                                self->closing ? " closing" : "", self->fd,
                                self->closing ? "idle" : "polling", n ? "polling" : "idle", n);
}

/* ---- object ------------------------------------------------------------------------- */

static int dg_traverse(pt_dgram *self, visitproc visit, void *arg)
{
    Py_VISIT(self->m_dgram);
    Py_VISIT(self->address);
    Py_VISIT(self->last_obj);
    return pt_tr_traverse(PT_TR(self), visit, arg);
}

static int dg_clear(pt_dgram *self)
{
    Py_CLEAR(self->m_dgram);
    Py_CLEAR(self->last_obj);
    if (!self->t)
        Py_CLEAR(self->address);
    pt_tr_clear(PT_TR(self));
    return 0;
}

static void dg_dealloc(pt_dgram *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)self);
    Py_CLEAR(self->m_dgram);
    Py_CLEAR(self->last_obj);
    Py_CLEAR(self->address);
    pt_tr_dealloc(PT_TR(self));
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

PT_ONE_ARG(dg_set_protocol_kw, dg_set_protocol, pt_dgram, "set_protocol", "protocol")

#define NOARGS(name, fn) {name, (PyCFunction)fn, METH_NOARGS, NULL}
static PyMethodDef dg_methods[] = {
    {"sendto", (PyCFunction)(void (*)(void))dg_sendto, METH_FASTCALL | METH_KEYWORDS, NULL},
    NOARGS("abort", dg_abort),
    NOARGS("close", dg_close),
    NOARGS("is_closing", dg_is_closing),
    PT_ONE_ARG_DEF("set_protocol", dg_set_protocol_kw),
    NOARGS("get_protocol", pt_tr_get_protocol),
    {"get_extra_info", (PyCFunction)(void (*)(void))dg_get_extra_info,
     METH_VARARGS | METH_KEYWORDS, NULL},
    PT_TR_WRITE_BUFFER_METHODS,
    {NULL},
};

static PyObject *dg_get_address_attr(pt_dgram *self, void *c)
{
    (void)c;
    return Py_NewRef(self->address ? self->address : Py_None);
}

static PyGetSetDef dg_getset[] = {
    PT_TR_GETSET,
    {"_address", (getter)dg_get_address_attr, NULL, NULL, NULL},
    {NULL},
};

int pt_datagram_init(PyObject *module)
{
    /* The specification's class, and asyncio's Transport, which its own
     * datagram transport is (isinstance(t, asyncio.Transport) holds there). */
    if (pt_tr_check_layout(pt.asyncio_DatagramTransport) < 0 ||
        pt_tr_check_layout(pt.asyncio_Transport) < 0)
        return -1;
    PyObject *bases = PyTuple_Pack(2, pt.asyncio_DatagramTransport, pt.asyncio_Transport);
    if (!bases)
        return -1;
    PyType_Slot slots[] = {
        {Py_tp_dealloc, dg_dealloc},   {Py_tp_traverse, dg_traverse},
        {Py_tp_clear, dg_clear},       {Py_tp_methods, dg_methods},
        {Py_tp_members, pt_tr_members}, {Py_tp_getset, dg_getset},
        {Py_tp_repr, dg_repr},         {0, NULL},
    };
    PyType_Spec spec = {
        .name = "tpio.DatagramTransport",
        .basicsize = sizeof(pt_dgram),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
        .slots = slots,
    };
    dgram_type = (PyTypeObject *)PyType_FromSpecWithBases(&spec, bases);
    Py_DECREF(bases);
    if (!dgram_type)
        return -1;
    pt_tr_register(&dgram_ops);
    return PyModule_AddObjectRef(module, "DatagramTransport", (PyObject *)dgram_type);
}
