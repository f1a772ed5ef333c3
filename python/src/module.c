/* The module _tpio: the types, and the asyncio objects they use. */
#include "pytpio.h"

struct pt_cache pt;

static int get(PyObject **out, const char *module, const char *name)
{
    PyObject *m = PyImport_ImportModule(module);
    if (!m)
        return -1;
    *out = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return *out ? 0 : -1;
}

static int intern(PyObject **out, const char *s)
{
    *out = PyUnicode_InternFromString(s);
    return *out ? 0 : -1;
}

static int cache_init(void)
{
    if (get(&pt.asyncio_Transport, "asyncio.transports", "Transport") ||
        get(&pt.asyncio_ReadTransport, "asyncio.transports", "ReadTransport") ||
        get(&pt.asyncio_WriteTransport, "asyncio.transports", "WriteTransport") ||
        get(&pt.asyncio_DatagramTransport, "asyncio.transports", "DatagramTransport") ||
        get(&pt.asyncio_SubprocessTransport, "asyncio.transports", "SubprocessTransport") ||
        get(&pt.asyncio_BufferedProtocol, "asyncio.protocols", "BufferedProtocol") ||
        get(&pt.asyncio_Handle, "asyncio.events", "Handle") ||
        get(&pt.asyncio_TimerHandle, "asyncio.events", "TimerHandle") ||
        get(&pt.CancelledError, "asyncio.exceptions", "CancelledError") ||
        get(&pt.format_callback_source, "asyncio.format_helpers", "_format_callback_source") ||
        get(&pt.TransportSocket, "asyncio.trsock", "TransportSocket") ||
        get(&pt.socket_fromfd, "socket", "fromfd") || get(&pt.logger, "asyncio.log", "logger"))
        return -1;
#define I(name) intern(&pt.s_##name, #name)
    if (I(connection_made) || I(connection_lost) || I(data_received) || I(eof_received) ||
        I(get_buffer) || I(buffer_updated) || I(pause_writing) || I(resume_writing) ||
        I(datagram_received) || I(error_received) || I(pipe_data_received) ||
        I(pipe_connection_lost) || I(process_exited) || I(call_exception_handler) ||
        I(message) || I(exception) || I(transport) || I(protocol) || I(handle) || I(fileno) ||
        I(slow_callback_duration) || I(source_traceback) || I(close) || I(set_result) ||
        I(set_exception) || I(cancelled) || I(detach) || I(warning))
        return -1;
#undef I
    pt.minus_one = PyLong_FromLong(-1);
    return pt.minus_one ? 0 : -1;
}

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tpio._tpio",
    .m_doc = "tpio's engine under asyncio's event loop API (see the tpio package).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__tpio(void)
{
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    if (cache_init() || PyType_Ready(&pt_loop_type) ||
        PyModule_AddObjectRef(m, "Loop", (PyObject *)&pt_loop_type) || pt_handles_init(m) ||
        pt_stream_init(m) || pt_server_init(m) || pt_datagram_init(m) ||
        pt_subprocess_init(m) ||
        PyModule_AddStringConstant(m, "tpio_version", tpio_version())) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
