/* Socket addresses in the forms Python's socket module uses. */
#include "pytpio.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/un.h>

PyObject *pt_addr_to_py(const struct sockaddr *sa, socklen_t len)
{
    char host[INET6_ADDRSTRLEN];
    switch (sa->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *in = (const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        return Py_BuildValue("(si)", host, ntohs(in->sin_port));
    }
    case AF_INET6: {
        const struct sockaddr_in6 *in6 = (const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        return Py_BuildValue("(siII)", host, ntohs(in6->sin6_port),
                             (unsigned)ntohl(in6->sin6_flowinfo), (unsigned)in6->sin6_scope_id);
    }
    case AF_UNIX: {
        const struct sockaddr_un *un = (const void *)sa;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        if (len <= off)
            return PyUnicode_FromString("");
        size_t n = len - off;
        if (un->sun_path[0] == '\0') /* abstract: bytes, as Python gives it */
            return PyBytes_FromStringAndSize(un->sun_path, (Py_ssize_t)n);
        n = strnlen(un->sun_path, n);
        return PyUnicode_DecodeFSDefaultAndSize(un->sun_path, (Py_ssize_t)n);
    }
    default:
        return Py_BuildValue("(iy#)", sa->sa_family, sa->sa_data, (Py_ssize_t)sizeof sa->sa_data);
    }
}

int pt_addr_from_py(PyObject *addr, int family, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    if (family == AF_UNIX) {
        PyObject *b = NULL;
        if (!PyUnicode_FSConverter(addr, &b))
            return -1;
        struct sockaddr_un *un = (void *)ss;
        Py_ssize_t n = PyBytes_GET_SIZE(b);
        if ((size_t)n >= sizeof un->sun_path) {
            Py_DECREF(b);
            PyErr_SetString(PyExc_OSError, "AF_UNIX path too long");
            return -1;
        }
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, PyBytes_AS_STRING(b), (size_t)n);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n +
                           (n && un->sun_path[0] ? 1 : 0));
        Py_DECREF(b);
        return 0;
    }
    const char *host;
    int port;
    unsigned flow = 0, scope = 0;
    if (!PyTuple_Check(addr) ||
        !PyArg_ParseTuple(addr, "si|II", &host, &port, &flow, &scope)) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "an address tuple was expected, got %R", addr);
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535.");
        return -1;
    }
    struct sockaddr_in *in = (void *)ss;
    struct sockaddr_in6 *in6 = (void *)ss;
    if ((family == AF_INET || family == AF_UNSPEC) && inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        *len = sizeof *in;
        return 0;
    }
    if ((family == AF_INET6 || family == AF_UNSPEC) &&
        inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        in6->sin6_flowinfo = htonl(flow);
        in6->sin6_scope_id = scope;
        *len = sizeof *in6;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not a numeric address: %R", addr);
    return -1;
}
