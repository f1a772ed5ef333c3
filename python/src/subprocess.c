/* Subprocess transports: asyncio's SubprocessTransport over tpio's.
 *
 * The object starts with the head every transport has (transport.c). Each
 * pipe of the child is a pipe transport object of stream.c
 * (pt_stream_wrap_pipe) whose protocol stays tpio's own adapter; the
 * SubprocessProtocol hears of the pipes through this object.
 *
 * asyncio (base_subprocess.py) runs every SubprocessProtocol callback as a
 * loop callback of its own, so an exception in one is reported as
 * "Exception in callback ..." and changes nothing else: so here. tpio keeps
 * asyncio's order: connection_made once the pipes are connected (and before
 * the call completes), process_exited when the child is reaped,
 * connection_lost once it has exited and every pipe has closed; the
 * futures of _wait() (Process.wait()) are resolved after connection_lost.
 *
 * get_extra_info('subprocess') is a Popen-like object of tpio/_subprocess.py
 * (asyncio's is a subprocess.Popen): this object tells it what Popen would
 * know (its pid and pipe files at connection_made, its returncode at the
 * exit) and lends it a copy of the pidfd to wait without reaping. */
#include "pytpio.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <unistd.h>
#include <stddef.h>
#include <string.h>

typedef struct pt_proc {
    PT_TRANSPORT_HEAD     /* extra: the extra= dict; lost: finished */
    PyObject *m_pipe_data; /* bound protocol.pipe_data_received, lazily */
    PyObject *pipes[3];   /* the pipe transport objects, NULL: no pipe */
    PyObject *waiters;    /* futures of _wait(); NULL once finished */
    PyObject *program;    /* for the debug log */
    PyObject *popen;      /* the Popen-like object (_set_popen), NULL: none */
    struct pt_proc *prev, *next; /* in the list of live transports */
    pid_t pid;
    int returncode;
    bool made, have_pid, have_code, closed, linked;
} pt_proc;

static PyTypeObject *proc_type;
static pt_proc *live; /* transports tpio holds: for pipe_object() */

#define SELF(p) ((pt_proc *)((char *)(p) - offsetof(pt_proc, cproto)))

static const tpio_protocol_ops_t proc_ops;

/* The object of the protocol tpio gave a pipe of a live subprocess (the
 * pipe's object), for pt_transport_of(). */
static PyObject *pipe_object(tpio_protocol_t *p)
{
    for (pt_proc *s = live; s; s = s->next) {
        if (!s->t)
            continue;
        for (int fd = 0; fd < 3; fd++) {
            tpio_transport_t *pipe;
            tpio_protocol_t *pp;
            if (s->pipes[fd] && tpio_subprocess_get_pipe_transport(s->t, fd, &pipe) == 0 &&
                tpio_transport_get_protocol(pipe, &pp) == 0 && pp == p)
                return s->pipes[fd];
        }
    }
    return NULL;
}

static void unlink_live(pt_proc *self)
{
    if (!self->linked)
        return;
    if (self->prev)
        self->prev->next = self->next;
    else
        live = self->next;
    if (self->next)
        self->next->prev = self->prev;
    self->prev = self->next = NULL;
    self->linked = false;
}

/* ---- errors ------------------------------------------------------------------------ */

/* Call protocol.<name>(*args) (args stolen, NULL for none); report a failure. */
static void call_protocol(pt_proc *self, PyObject *name, PyObject *args)
{
    if (!args)
        args = PyTuple_New(0);
    if (!args || !self->protocol) {
        Py_XDECREF(args);
        PyErr_Clear();
        return;
    }
    PyObject *m = PyObject_GetAttr(self->protocol, name);
    PyObject *r = m ? PyObject_Call(m, args, NULL) : NULL;
    if (r)
        Py_DECREF(r);
    else
        pt_callback_error(self->loop, m, args);
    Py_XDECREF(m);
    Py_DECREF(args);
}

static void debug_log(pt_proc *self, const char *level, const char *fmt, PyObject *a,
                      PyObject *b)
{
    if (!self->loop->debug)
        return;
    PyObject *r = PyObject_CallMethod(pt.logger, level, "sOO", fmt, a, b);
    Py_XDECREF(r);
    if (!r)
        PyErr_Clear();
}

/* ---- upcalls ---------------------------------------------------------------------- */

/* popen.<name> = value (stolen; NULL: a failure to clear). */
static void popen_set(pt_proc *self, const char *name, PyObject *value)
{
    if (value && PyObject_SetAttrString(self->popen, name, value) == 0) {
        Py_DECREF(value);
        return;
    }
    Py_XDECREF(value);
    PyErr_Clear(); /* the object's own business; nothing here depends on it */
}

/* What Popen knows once started: its pid, and its stdin/stdout/stderr are
 * the file objects of the pipes (asyncio's pipe transports are made over
 * Popen's own), None for a stream that is no pipe. */
static void popen_started(pt_proc *self)
{
    if (!self->popen)
        return;
    if (self->have_pid)
        popen_set(self, "pid", PyLong_FromLong(self->pid));
    static const char *names[3] = {"stdin", "stdout", "stderr"};
    for (int fd = 0; fd < 3; fd++) {
        PyObject *file = NULL;
        if (self->pipes[fd])
            file = PyObject_CallMethod(self->pipes[fd], "get_extra_info", "s", "pipe");
        else
            file = Py_NewRef(Py_None);
        popen_set(self, names[fd], file);
    }
}

/* asyncio's _process_exited: the exit status goes to Popen too, unless its
 * own poll() or wait() found it first. */
static void popen_exited(pt_proc *self)
{
    if (!self->popen || !self->have_code)
        return;
    PyObject *cur = PyObject_GetAttrString(self->popen, "returncode");
    if (cur == Py_None)
        popen_set(self, "returncode", PyLong_FromLong(self->returncode));
    else if (!cur)
        PyErr_Clear();
    Py_XDECREF(cur);
}

static void up_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    pt_proc *self = SELF(p);
    self->t = t;
    self->made = true;
    pid_t pid;
    if (tpio_subprocess_get_pid(t, &pid) == 0) {
        self->pid = pid;
        self->have_pid = true;
    }
    for (int fd = 0; fd < 3; fd++) {
        tpio_transport_t *pipe;
        if (tpio_subprocess_get_pipe_transport(t, fd, &pipe) < 0)
            continue;
        self->pipes[fd] = pt_stream_wrap_pipe(self->loop, pipe, fd);
        if (!self->pipes[fd])
            PyErr_Clear(); /* out of memory: get_pipe_transport() says None */
    }
    popen_started(self);
    if (self->loop->dropping)
        return;
    if (self->loop->debug) {
        PyObject *pido = PyLong_FromLong(self->pid);
        if (pido)
            debug_log(self, "debug", "process %r created: pid %s", self->program, pido);
        Py_XDECREF(pido);
        PyErr_Clear();
    }
    call_protocol(self, pt.s_connection_made, PyTuple_Pack(1, (PyObject *)self));
    /* closed before the start had come (a cancelled subprocess_exec) */
    if (self->closed && self->t)
        tpio_transport_close(self->t);
}

static void up_pipe_data(tpio_protocol_t *p, int fd, const void *data, size_t len)
{
    pt_proc *self = SELF(p);
    if (self->loop->dropping || !self->protocol)
        return;
    if (!self->m_pipe_data)
        self->m_pipe_data = PyObject_GetAttr(self->protocol, pt.s_pipe_data_received);
    PyObject *m = self->m_pipe_data;
    PyObject *args = NULL, *r = NULL;
    if (m) {
        args = Py_BuildValue("(iy#)", fd, (const char *)data, (Py_ssize_t)len);
        r = args ? PyObject_Call(m, args, NULL) : NULL;
    }
    if (r)
        Py_DECREF(r);
    else
        pt_callback_error(self->loop, m, args);
    Py_XDECREF(args);
}

static void up_pipe_lost(tpio_protocol_t *p, int fd, int err)
{
    pt_proc *self = SELF(p);
    if (fd >= 0 && fd < 3 && self->pipes[fd])
        pt_stream_pipe_lost(self->pipes[fd]);
    if (self->loop->dropping)
        return;
    PyObject *exc = err ? pt_oserror(err) : Py_NewRef(Py_None);
    if (!exc) {
        PyErr_Clear();
        exc = Py_NewRef(Py_None);
    }
    PyObject *args = Py_BuildValue("(iN)", fd, exc);
    call_protocol(self, pt.s_pipe_connection_lost, args);
}

static void up_exited(tpio_protocol_t *p)
{
    pt_proc *self = SELF(p);
    int code;
    if (self->t && tpio_subprocess_get_returncode(self->t, &code) == 0) {
        self->returncode = code;
        self->have_code = true;
    }
    popen_exited(self);
    if (self->loop->dropping)
        return;
    if (self->loop->debug && self->have_code) {
        PyObject *c = PyLong_FromLong(self->returncode);
        if (c)
            debug_log(self, "info", "%r exited with return code %r", (PyObject *)self, c);
        Py_XDECREF(c);
        PyErr_Clear();
    }
    call_protocol(self, pt.s_process_exited, NULL);
}

/* stdin's flow control reaches the SubprocessProtocol, as asyncio's
 * WriteSubprocessPipeProto passes it on; its failure is the pipe's. */
static void up_pause(tpio_protocol_t *p)
{
    pt_proc *self = SELF(p);
    pt_tr_flow(PT_TR(self), self->pipes[0] ? self->pipes[0] : (PyObject *)self,
               pt.s_pause_writing, "protocol.pause_writing() failed");
}

static void up_resume(tpio_protocol_t *p)
{
    pt_proc *self = SELF(p);
    pt_tr_flow(PT_TR(self), self->pipes[0] ? self->pipes[0] : (PyObject *)self,
               pt.s_resume_writing, "protocol.resume_writing() failed");
}

static void wake_waiters(pt_proc *self)
{
    PyObject *w = self->waiters;
    self->waiters = NULL;
    if (!w)
        return;
    PyObject *code = self->have_code ? PyLong_FromLong(self->returncode) : Py_NewRef(Py_None);
    for (Py_ssize_t i = 0; code && i < PyList_GET_SIZE(w); i++) {
        PyObject *fut = PyList_GET_ITEM(w, i);
        PyObject *c = PyObject_CallMethodNoArgs(fut, pt.s_cancelled);
        int cancelled = c ? PyObject_IsTrue(c) : -1;
        Py_XDECREF(c);
        PyObject *r = cancelled == 0 ? PyObject_CallMethodOneArg(fut, pt.s_set_result, code)
                                     : NULL;
        Py_XDECREF(r);
        if (cancelled < 0 || (!cancelled && !r)) {
            PyObject *e = pt_fetch_error(self->loop);
            if (e) {
                pt_report(self->loop, "tpio: could not complete a future", e, NULL);
                Py_DECREF(e);
            }
        }
    }
    if (!code)
        PyErr_Clear();
    Py_XDECREF(code);
    Py_DECREF(w);
}

static void up_lost(tpio_protocol_t *p, int err)
{
    pt_proc *self = SELF(p);
    int code;
    if (!self->have_code && self->t && tpio_subprocess_get_returncode(self->t, &code) == 0) {
        self->returncode = code;
        self->have_code = true;
    }
    for (int fd = 0; fd < 3; fd++)
        if (self->pipes[fd])
            pt_stream_pipe_lost(self->pipes[fd]);
    pt_tr_lost(PT_TR(self), err);
    if (!self->loop->dropping)
        wake_waiters(self); /* as asyncio's _call_connection_lost: after it */
    Py_CLEAR(self->waiters);
    Py_CLEAR(self->popen); /* asyncio's _proc = None; the extra dict keeps it */
    unlink_live(self);
    Py_CLEAR(self->m_pipe_data);
    Py_DECREF(self); /* tpio's reference, taken by the factory */
}

static const tpio_protocol_ops_t proc_ops = {
    .connection_made = up_made,
    .connection_lost = up_lost,
    .pause_writing = up_pause,
    .resume_writing = up_resume,
    .pipe_data_received = up_pipe_data,
    .pipe_connection_lost = up_pipe_lost,
    .process_exited = up_exited,
};

/* ---- the call ------------------------------------------------------------------- */

typedef struct {
    pt_loop *loop;
    PyObject *protocol, *extra, *program;
    PyObject *fut;
    pt_proc *made; /* borrowed: tpio's reference */
} sp_request;

static void request_free(sp_request *r)
{
    Py_XDECREF(r->loop);
    Py_XDECREF(r->protocol);
    Py_XDECREF(r->extra);
    Py_XDECREF(r->program);
    Py_XDECREF(r->fut);
    PyMem_Free(r);
}

/* Called inside tpio's call once the child runs: the protocol exists
 * already (asyncio makes it before the process). */
static tpio_protocol_t *proc_factory(void *arg)
{
    sp_request *r = arg;
    pt_proc *self = (pt_proc *)proc_type->tp_alloc(proc_type, 0);
    if (!self)
        return NULL;
    self->loop = (pt_loop *)Py_NewRef((PyObject *)r->loop);
    self->protocol = Py_NewRef(r->protocol);
    self->program = Py_NewRef(r->program);
    self->extra = r->extra ? Py_NewRef(r->extra) : PyDict_New();
    self->waiters = PyList_New(0);
    if (!self->extra || !self->waiters) {
        Py_DECREF(self);
        return NULL;
    }
    self->cproto.ops = &proc_ops;
    self->next = live;
    if (live)
        live->prev = self;
    live = self;
    self->linked = true;
    r->made = self;
    return &self->cproto;
}

static void completed(tpio_loop_t *l, tpio_transport_t *t, tpio_protocol_t *p, int err,
                      void *arg)
{
    (void)l;
    (void)t;
    (void)p;
    sp_request *r = arg;
    if (r->loop->dropping) {
        request_free(r);
        return;
    }
    PyObject *d = PyObject_CallMethod(r->fut, "done", NULL);
    int done = d ? PyObject_IsTrue(d) : 1;
    Py_XDECREF(d);
    PyErr_Clear();
    if (!done) {
        PyObject *v = err ? pt_oserror(err) : Py_NewRef(Py_None);
        PyObject *res = v ? PyObject_CallMethodOneArg(r->fut, err ? pt.s_set_exception
                                                                  : pt.s_set_result, v)
                          : NULL;
        Py_XDECREF(v);
        Py_XDECREF(res);
        if (!res) {
            PyObject *e = pt_fetch_error(r->loop);
            if (e) {
                pt_report(r->loop, "tpio: could not complete a future", e, NULL);
                Py_DECREF(e);
            }
        }
    }
    request_free(r);
}

/* An int (or __index__) in C int range; -1 with an error set otherwise. */
static int as_int(PyObject *o, int *out)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < INT_MIN || v > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "signed integer is greater than maximum");
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int stdio_opt(PyObject *o, int i, tpio_stdio_opt_t *out)
{
    out->fd = -1;
    if (o == Py_None) {
        out->mode = TPIO_STDIO_INHERIT;
        return 0;
    }
    int v;
    if (as_int(o, &v) < 0)
        return -1;
    switch (v) {
    case -1: out->mode = TPIO_STDIO_PIPE; break;
    case -3: out->mode = TPIO_STDIO_DEVNULL; break;
    case -2:
        if (i == 2) {
            out->mode = TPIO_STDIO_STDOUT;
            break;
        }
        /* as Popen: a descriptor that is not one (EBADF) */
        __attribute__((fallthrough));
    default:
        out->mode = TPIO_STDIO_FD;
        out->fd = v;
    }
    return 0;
}

/* A NULL-terminated array of the strings of a sequence of bytes. */
static const char **cstrings(PyObject *seq, const char *what)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    const char **v = PyMem_Calloc((size_t)n + 1, sizeof *v);
    if (!v) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(b)) {
            PyErr_Format(PyExc_TypeError, "%s items must be bytes", what);
            PyMem_Free(v);
            return NULL;
        }
        v[i] = PyBytes_AS_STRING(b);
    }
    return v;
}

/* pass_fds: a tuple of ints, as a PyMem array (NULL and *n = 0 for none). */
static int fd_array(PyObject *tuple, int **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!PyTuple_Check(tuple)) {
        PyErr_SetString(PyExc_TypeError, "pass_fds must be a tuple");
        return -1;
    }
    Py_ssize_t len = PyTuple_GET_SIZE(tuple);
    if (len == 0)
        return 0;
    int *v = PyMem_Calloc((size_t)len, sizeof *v);
    if (!v) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        if (as_int(PyTuple_GET_ITEM(tuple, i), &v[i]) < 0) {
            PyMem_Free(v);
            return -1;
        }
    }
    *out = v;
    *n = (size_t)len;
    return 0;
}

/* _subprocess(fut, protocol, args, shell, stdin, stdout, stderr, env, cwd,
 *             extra, program, start_new_session, process_group, pass_fds)
 *   -> the transport
 * args: the command (bytes) for shell, else a sequence of bytes; stdin,
 * stdout, stderr: None (inherit), subprocess.PIPE / STDOUT / DEVNULL or a
 * descriptor; env: None or a sequence of b"NAME=value"; cwd: None or bytes;
 * extra: None or the transport's extra info dict; program: what the debug
 * log names (args[0], or the shell command); process_group: None or the
 * group for setpgid(0, group); pass_fds: a tuple of descriptors. The Python
 * side (tpio/_subprocess.py) has converted and checked all of it as asyncio
 * and Popen do. fut gets None once connection_made has run. */
PyObject *pt_loop_subprocess(pt_loop *self, PyObject *args, PyObject *kw)
{
    (void)kw;
    PyObject *fut, *protocol, *cmd, *in, *out, *err, *env, *cwd, *extra, *program, *pgroup,
        *pass;
    int shell, new_session;
    if (!PyArg_ParseTuple(args, "OOOpOOOOOOOpOO:_subprocess", &fut, &protocol, &cmd, &shell,
                          &in, &out, &err, &env, &cwd, &extra, &program, &new_session,
                          &pgroup, &pass) ||
        !pt_check_open(self))
        return NULL;
    tpio_subprocess_opts_t o = TPIO_OPTS(tpio_subprocess_opts_t);
    PyObject *stdio[3] = {in, out, err};
    for (int i = 0; i < 3; i++)
        if (stdio_opt(stdio[i], i, &o.stdio[i]) < 0)
            return NULL;
    o.new_session = new_session ? TPIO_ON : TPIO_DEFAULT;
    if (pgroup != Py_None) {
        int g;
        if (as_int(pgroup, &g) < 0)
            return NULL;
        o.set_pgid = TPIO_ON;
        o.pgid = g;
    }
    int *fds;
    if (fd_array(pass, &fds, &o.n_pass_fds) < 0)
        return NULL;
    o.pass_fds = fds;
    PyObject *argseq = NULL, *envseq = NULL, *res = NULL;
    const char **argv = NULL, **envp = NULL;
    if (cwd != Py_None) {
        if (!PyBytes_Check(cwd)) {
            PyErr_Format(PyExc_TypeError, "cwd must be bytes");
            goto out;
        }
        o.cwd = PyBytes_AS_STRING(cwd);
    }
    if (extra != Py_None && !PyDict_Check(extra)) {
        PyErr_Format(PyExc_TypeError, "extra must be a dict");
        goto out;
    }
    if (shell) {
        if (!PyBytes_Check(cmd)) {
            PyErr_Format(PyExc_TypeError, "cmd must be bytes");
            goto out;
        }
    } else {
        argseq = PySequence_Fast(cmd, "args must be a sequence");
        if (!argseq || !(argv = cstrings(argseq, "args")))
            goto out;
        if (!argv[0]) {
            PyErr_SetString(PyExc_IndexError, "list index out of range");
            goto out;
        }
    }
    if (env != Py_None) {
        envseq = PySequence_Fast(env, "env must be a sequence");
        if (!envseq || !(envp = cstrings(envseq, "env")))
            goto out;
        o.env = envp;
    }
    sp_request *r = PyMem_Calloc(1, sizeof *r);
    if (!r) {
        PyErr_NoMemory();
        goto out;
    }
    r->loop = (pt_loop *)Py_NewRef((PyObject *)self);
    r->protocol = Py_NewRef(protocol);
    r->extra = extra != Py_None ? Py_NewRef(extra) : NULL;
    r->program = Py_NewRef(program);
    r->fut = Py_NewRef(fut);
    int rc = shell ? tpio_loop_subprocess_shell(self->loop, proc_factory, r,
                                                PyBytes_AS_STRING(cmd), &o, completed, r)
                   : tpio_loop_subprocess_exec(self->loop, proc_factory, r, argv, &o,
                                               completed, r);
    if (rc < 0) {
        if (r->made) /* cannot happen: nothing fails after the factory */
            Py_DECREF(r->made);
        request_free(r);
        if (!PyErr_Occurred())
            pt_raise_errno(rc);
        goto out;
    }
    res = Py_NewRef((PyObject *)r->made);
out:
    PyMem_Free(fds);
    PyMem_Free(argv);
    PyMem_Free(envp);
    Py_XDECREF(argseq);
    Py_XDECREF(envseq);
    return res;
}

/* ---- SubprocessTransport --------------------------------------------------------- */

static PyObject *sp_get_pid(pt_proc *self, PyObject *unused)
{
    (void)unused;
    if (!self->have_pid)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->pid);
}

static PyObject *sp_get_returncode(pt_proc *self, PyObject *unused)
{
    (void)unused;
    int code;
    if (!self->have_code && self->t && tpio_subprocess_get_returncode(self->t, &code) == 0) {
        self->returncode = code;
        self->have_code = true;
    }
    if (!self->have_code)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->returncode);
}

static PyObject *sp_get_pipe_transport(pt_proc *self, PyObject *fd)
{
    if (PyLong_Check(fd)) {
        int overflow;
        long n = PyLong_AsLongAndOverflow(fd, &overflow);
        if (!overflow && n >= 0 && n < 3 && self->pipes[n])
            return Py_NewRef(self->pipes[n]);
    }
    Py_RETURN_NONE;
}

/* Popen.send_signal() as asyncio calls it: nothing once the child is known
 * to have exited; ProcessLookupError once the transport is finished (its
 * _proc is None then). */
static PyObject *signal_child(pt_proc *self, int sig)
{
    if (!self->t) {
        PyErr_SetNone(PyExc_ProcessLookupError);
        return NULL;
    }
    int rc = tpio_subprocess_send_signal(self->t, sig);
    if (rc < 0 && rc != -ESRCH)
        return pt_raise_errno(rc);
    Py_RETURN_NONE;
}

static PyObject *sp_send_signal(pt_proc *self, PyObject *sig)
{
    PyObject *n = PyNumber_Index(sig);
    if (!n)
        return NULL;
    int v;
    int bad = as_int(n, &v);
    Py_DECREF(n);
    if (bad)
        return NULL;
    return signal_child(self, v);
}

static PyObject *sp_terminate(pt_proc *self, PyObject *unused)
{
    (void)unused;
    return signal_child(self, SIGTERM);
}

static PyObject *sp_kill(pt_proc *self, PyObject *unused)
{
    (void)unused;
    return signal_child(self, SIGKILL);
}

/* asyncio's close() kills the child through Popen, unless the exit was
 * seen (by the loop, or by Popen's own poll() or wait(), which do not reap
 * it): popen.poll() is None, then popen.kill(). 0, or -1 with the error of
 * poll() or kill() set (ProcessLookupError is swallowed, as asyncio). */
static int popen_kill_running(pt_proc *self)
{
    int code;
    if (!self->popen || tpio_subprocess_get_returncode(self->t, &code) != -EAGAIN)
        return 0;
    PyObject *popen = Py_NewRef(self->popen); /* kill() may run anything */
    PyObject *r = PyObject_CallMethod(popen, "poll", NULL);
    int rc = r ? 0 : -1;
    if (r == Py_None) {
        if (self->loop->debug) {
            PyObject *w = PyObject_CallMethod(pt.logger, "warning", "sO",
                                              "Close running child process: kill %r",
                                              (PyObject *)self);
            Py_XDECREF(w);
            PyErr_Clear();
        }
        PyObject *k = PyObject_CallMethod(popen, "kill", NULL);
        if (k)
            Py_DECREF(k);
        else if (PyErr_ExceptionMatches(PyExc_ProcessLookupError))
            PyErr_Clear();
        else
            rc = -1;
    }
    Py_XDECREF(r);
    Py_DECREF(popen);
    return rc;
}

static PyObject *sp_close(pt_proc *self, PyObject *unused)
{
    (void)unused;
    if (self->closed)
        Py_RETURN_NONE;
    self->closed = true;
    if (!self->t)
        Py_RETURN_NONE;
    int bad = popen_kill_running(self);
    /* Closes the pipes and SIGKILLs the child unless tpio has reaped it: a
     * child that Popen found exited is a zombie, which the signal leaves
     * as it is. Done even if poll() or kill() failed (their error is
     * raised, as asyncio raises it). */
    if (self->t)
        tpio_transport_close(self->t);
    if (bad)
        return NULL;
    Py_RETURN_NONE;
}

/* _set_popen(popen): the object get_extra_info('subprocess') gives, which
 * close() asks (asyncio's _proc). */
static PyObject *sp_set_popen(pt_proc *self, PyObject *popen)
{
    if (!self->extra || PyDict_SetItemString(self->extra, "subprocess", popen) < 0)
        return NULL;
    if (!self->lost)
        Py_XSETREF(self->popen, Py_NewRef(popen));
    Py_RETURN_NONE;
}

/* _pidfd(): a new descriptor (CLOEXEC; the caller closes it) on the child's
 * pidfd, for waiting with WNOWAIT and signalling; None once tpio has let go
 * of the child (its returncode is known then). A copy, not tpio's own:
 * tpio closes its pidfd after connection_lost, whose number could then be
 * another file's while another thread still waits on it. */
static PyObject *sp_pidfd(pt_proc *self, PyObject *unused)
{
    (void)unused;
    tpio_extra_t e;
    if (!self->t || tpio_transport_get_extra_info(self->t, "subprocess", &e) < 0 ||
        e.type != TPIO_EXTRA_FD)
        Py_RETURN_NONE;
    int fd = fcntl(e.fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *r = PyLong_FromLong(fd);
    if (!r)
        close(fd);
    return r;
}

static PyObject *sp_is_closing(pt_proc *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(self->closed);
}

static PyObject *sp_set_protocol(pt_proc *self, PyObject *protocol)
{
    Py_CLEAR(self->m_pipe_data);
    Py_XSETREF(self->protocol, Py_NewRef(protocol));
    Py_RETURN_NONE;
}

static PyObject *sp_get_extra_info(pt_proc *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"name", "default", NULL};
    PyObject *name, *dflt = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:get_extra_info", kwlist, &name, &dflt))
        return NULL;
    /* the extra= entries and 'subprocess', the Popen-like object */
    PyObject *v = self->extra ? PyDict_GetItemWithError(self->extra, name) : NULL;
    if (v)
        return Py_NewRef(v);
    if (PyErr_Occurred())
        return NULL;
    return Py_NewRef(dflt);
}

/* _wait(): a future of the returncode, done at once when the child has
 * exited, else after connection_lost (asyncio's _wait, awaited by
 * Process.wait()). */
static PyObject *sp_wait(pt_proc *self, PyObject *unused)
{
    (void)unused;
    PyObject *fut = PyObject_CallMethod((PyObject *)self->loop, "create_future", NULL);
    if (!fut)
        return NULL;
    PyObject *code = sp_get_returncode(self, NULL);
    if (!code) {
        Py_DECREF(fut);
        return NULL;
    }
    int bad;
    if (code != Py_None || !self->waiters) {
        PyObject *r = PyObject_CallMethodOneArg(fut, pt.s_set_result, code);
        bad = !r;
        Py_XDECREF(r);
    } else {
        bad = PyList_Append(self->waiters, fut);
    }
    Py_DECREF(code);
    if (bad) {
        Py_DECREF(fut);
        return NULL;
    }
    return fut;
}

static PyObject *sp_repr(pt_proc *self)
{
    PyObject *parts = PyList_New(0);
    if (!parts)
        return NULL;
    PyObject *code = sp_get_returncode(self, NULL);
    if (!code) {
        Py_DECREF(parts);
        return NULL;
    }
    PyObject *s = NULL;
#define ADD(expr)                                                                        \
    do {                                                                                 \
        s = (expr);                                                                      \
        if (!s || PyList_Append(parts, s) < 0)                                           \
            goto fail;                                                                   \
        Py_CLEAR(s);                                                                     \
    } while (0)
    ADD(PyUnicode_FromString(Py_TYPE(self)->tp_name));
    if (self->closed)
        ADD(PyUnicode_FromString("closed"));
    if (self->have_pid)
        ADD(PyUnicode_FromFormat("pid=%d", (int)self->pid));
    if (code != Py_None)
        ADD(PyUnicode_FromFormat("returncode=%S", code));
    else
        ADD(PyUnicode_FromString(self->have_pid ? "running" : "not started"));
    static const char *names[3] = {"stdin", "stdout", "stderr"};
    for (int fd = 0; fd < 3; fd++)
        if (self->pipes[fd])
            ADD(PyUnicode_FromFormat("%s=%R", names[fd], self->pipes[fd]));
#undef ADD
    PyObject *sep = PyUnicode_FromString(" ");
    PyObject *joined = sep ? PyUnicode_Join(sep, parts) : NULL;
    Py_XDECREF(sep);
    PyObject *res = joined ? PyUnicode_FromFormat("<%U>", joined) : NULL;
    Py_XDECREF(joined);
    Py_DECREF(parts);
    Py_DECREF(code);
    return res;
fail:
    Py_XDECREF(s);
    Py_DECREF(parts);
    Py_DECREF(code);
    return NULL;
}

/* ---- object ------------------------------------------------------------------------ */

/* asyncio's __del__: an unclosed transport is a ResourceWarning. tpio holds
 * the object until connection_lost, so this comes after it. */
static void sp_finalize(pt_proc *self)
{
    if (self->closed || !self->made)
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (PyErr_ResourceWarning((PyObject *)self, 1, "unclosed transport %R", (PyObject *)self))
        PyErr_WriteUnraisable((PyObject *)self);
    self->closed = true;
    PyErr_Restore(type, value, tb);
}

static int sp_traverse(pt_proc *self, visitproc visit, void *arg)
{
    Py_VISIT(self->m_pipe_data);
    for (int i = 0; i < 3; i++)
        Py_VISIT(self->pipes[i]);
    Py_VISIT(self->waiters);
    Py_VISIT(self->program);
    Py_VISIT(self->popen);
    return pt_tr_traverse(PT_TR(self), visit, arg);
}

static int sp_clear(pt_proc *self)
{
    Py_CLEAR(self->m_pipe_data);
    if (!self->t) { /* tpio is done with it: nothing reaches these again */
        for (int i = 0; i < 3; i++)
            Py_CLEAR(self->pipes[i]);
        Py_CLEAR(self->waiters);
        Py_CLEAR(self->program);
        Py_CLEAR(self->popen);
    }
    pt_tr_clear(PT_TR(self));
    return 0;
}

static void sp_dealloc(pt_proc *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(self);
    if (self->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)self);
    unlink_live(self);
    self->t = NULL;
    sp_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

#define NOARGS(name, fn) {name, (PyCFunction)fn, METH_NOARGS, NULL}
static PyMethodDef sp_methods[] = {
    NOARGS("get_pid", sp_get_pid),
    NOARGS("get_returncode", sp_get_returncode),
    {"get_pipe_transport", (PyCFunction)sp_get_pipe_transport, METH_O, NULL},
    {"send_signal", (PyCFunction)sp_send_signal, METH_O, NULL},
    NOARGS("terminate", sp_terminate),
    NOARGS("kill", sp_kill),
    NOARGS("close", sp_close),
    NOARGS("is_closing", sp_is_closing),
    {"set_protocol", (PyCFunction)sp_set_protocol, METH_O, NULL},
    NOARGS("get_protocol", pt_tr_get_protocol),
    {"get_extra_info", (PyCFunction)(void (*)(void))sp_get_extra_info,
     METH_VARARGS | METH_KEYWORDS, NULL},
    NOARGS("_wait", sp_wait),
    NOARGS("_pidfd", sp_pidfd),
    {"_set_popen", (PyCFunction)sp_set_popen, METH_O, NULL},
    {NULL},
};

static PyGetSetDef sp_getset[] = {
    PT_TR_GETSET,
    {NULL},
};

int pt_subprocess_init(PyObject *module)
{
    PyObject *base = pt.asyncio_SubprocessTransport;
    if (pt_tr_check_layout(base) < 0)
        return -1;
    PyType_Slot slots[] = {
        {Py_tp_dealloc, sp_dealloc},   {Py_tp_traverse, sp_traverse},
        {Py_tp_clear, sp_clear},       {Py_tp_finalize, sp_finalize},
        {Py_tp_methods, sp_methods},   {Py_tp_members, pt_tr_members},
        {Py_tp_getset, sp_getset},     {Py_tp_repr, sp_repr},
        {0, NULL},
    };
    PyType_Spec spec = {
        .name = "tpio.SubprocessTransport",
        .basicsize = sizeof(pt_proc),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
        .slots = slots,
    };
    proc_type = (PyTypeObject *)PyType_FromSpecWithBases(&spec, base);
    if (!proc_type)
        return -1;
    pt_tr_register(&proc_ops);
    pt_tr_set_lookup(pipe_object);
    return PyModule_AddObjectRef(module, "SubprocessTransport", (PyObject *)proc_type);
}
