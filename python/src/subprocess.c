/* Subprocess transports. */
#include "pytpio.h"

int pt_subprocess_init(PyObject *module)
{
    (void)module;
    return 0;
}

PyObject *pt_loop_subprocess(pt_loop *self, PyObject *args, PyObject *kw)
{
    (void)self; (void)args; (void)kw;
    PyErr_SetString(PyExc_NotImplementedError, "subprocess_exec");
    return NULL;
}
