/* Datagram transports (UDP, Unix datagram sockets). */
#include "pytpio.h"

int pt_datagram_init(PyObject *module)
{
    (void)module;
    return 0;
}

PyObject *pt_loop_create_datagram(pt_loop *self, PyObject *args, PyObject *kw)
{
    (void)self; (void)args; (void)kw;
    PyErr_SetString(PyExc_NotImplementedError, "create_datagram_endpoint");
    return NULL;
}
