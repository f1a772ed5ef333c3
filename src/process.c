/* SubprocessTransport (asyncio's base_subprocess.py over unix_events.py):
 * a child started by spawn.c, its stdin/stdout/stderr pipes as ordinary
 * stream pipe transports (stream.c) whose protocols are adapters forwarding
 * to the SubprocessProtocol, and the exit watched through a pidfd.
 *
 * Order, as asyncio: the pipe transports' connection_made run first, then
 * the protocol's connection_made (the pidfd is watched from then on);
 * process_exited is queued when the child is reaped; connection_lost is
 * queued once the child is reaped and every pipe transport has reached its
 * own connection_lost (_try_finish). The pipe transports stay referenced by
 * this transport, so get_pipe_transport() is valid as long as it is. */
#include "internal.h"

#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

struct proc;

/* The protocol of one pipe transport: forwards to the SubprocessProtocol. */
struct pipe_proto {
    tpio_protocol_t base;
    struct proc *proc;
    int fd;             /* 0, 1 or 2 */
    tpio_transport_t *t; /* NULL: this stream is not a pipe */
    bool disconnected;
};

struct proc {
    struct tpio_transport base;
    struct tpio__io io; /* the pidfd */
    pid_t pid;
    int returncode;
    bool exited;   /* reaped: returncode is set */
    bool finished; /* connection_lost is scheduled */
    struct pipe_proto pipes[3];
    tpio_protocol_t *first_proto;
    tpio_connect_cb cb;
    void *cb_arg;
    struct tpio__ts_node exit_node; /* fallback when call_soon cannot allocate */
};

static const struct tpio__transport_vt proc_vt;

static struct proc *as_proc(const tpio_transport_t *t)
{
    return t && t->vt == &proc_vt ? (struct proc *)(void *)t : NULL;
}

static int pidfd_signal(struct proc *P, int sig)
{
    if (syscall(SYS_pidfd_send_signal, P->io.fd, sig, NULL, 0) < 0)
        return -errno;
    return 0;
}

/* ---- the end: _try_finish ------------------------------------------------ */

static void try_finish(struct proc *P)
{
    if (P->finished || !P->exited)
        return;
    for (int i = 0; i < 3; i++)
        if (P->pipes[i].t && !P->pipes[i].disconnected)
            return;
    P->finished = true;
    tpio__schedule_lost(&P->base, 0);
}

static void exited_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct proc *P = arg;
    tpio_protocol_t *p = P->base.proto;
    if (p && p->ops->process_exited)
        p->ops->process_exited(p);
    tpio__transport_unref(&P->base);
}

/* The child is reaped: queue process_exited (asyncio calls it from the
 * loop too), then maybe connection_lost after it. */
static void on_exit_status(struct proc *P, int code)
{
    P->exited = true;
    P->returncode = code;
    tpio__io_set(P->base.loop, &P->io, 0);
    tpio__transport_ref(&P->base); /* held by exited_cb */
    if (tpio_call_soon(P->base.loop, exited_cb, P, NULL) < 0) {
        P->exit_node.cb = exited_cb;
        P->exit_node.arg = P;
        P->exit_node.owned = false;
        tpio__call_soon_threadsafe_node(P->base.loop, &P->exit_node);
    }
    try_finish(P);
}

static void reap(struct proc *P, bool nohang)
{
    int code = 0;
    int rc = tpio__reap(P->io.fd, nohang, &code);
    if (rc == 0)
        return;
    if (rc < 0) {
        /* Reaped elsewhere (waitpid(-1), SIGCHLD set to SIG_IGN): the
         * status is lost; asyncio reports 255 in that case. */
        tpio__report(P->base.loop, "Unknown child process status, returncode 255",
                     rc, &P->base, NULL, P->io.fd);
        code = 255;
    }
    on_exit_status(P, code);
}

static void proc_io(tpio_loop_t *loop, struct tpio__io *io, uint32_t events)
{
    (void)loop;
    (void)events;
    reap(tpio_container_of(io, struct proc, io), true);
}

/* ---- the pipes' protocol ---------------------------------------------------- */

static struct pipe_proto *PP(tpio_protocol_t *p) { return tpio_container_of(p, struct pipe_proto, base); }

static void pipe_data(tpio_protocol_t *bp, const void *data, size_t len)
{
    struct pipe_proto *pp = PP(bp);
    tpio_protocol_t *p = pp->proc->base.proto;
    if (p && p->ops->pipe_data_received) {
        tpio__transport_ref(&pp->proc->base);
        p->ops->pipe_data_received(p, pp->fd, data, len);
        tpio__transport_unref(&pp->proc->base);
    }
}

static void pipe_lost(tpio_protocol_t *bp, int err)
{
    struct pipe_proto *pp = PP(bp);
    struct proc *P = pp->proc;
    pp->disconnected = true;
    tpio_protocol_t *p = P->base.proto;
    tpio__transport_ref(&P->base);
    if (p && p->ops->pipe_connection_lost)
        p->ops->pipe_connection_lost(p, pp->fd, err);
    try_finish(P);
    tpio__transport_unref(&P->base);
}

/* stdin's flow control is the SubprocessProtocol's (WriteSubprocessPipeProto). */
static void pipe_pause(tpio_protocol_t *bp)
{
    tpio_protocol_t *p = PP(bp)->proc->base.proto;
    if (p && p->ops->pause_writing)
        p->ops->pause_writing(p);
}

static void pipe_resume(tpio_protocol_t *bp)
{
    tpio_protocol_t *p = PP(bp)->proc->base.proto;
    if (p && p->ops->resume_writing)
        p->ops->resume_writing(p);
}

static const tpio_protocol_ops_t write_pipe_ops = {
    .connection_lost = pipe_lost,
    .pause_writing = pipe_pause,
    .resume_writing = pipe_resume,
};

static const tpio_protocol_ops_t read_pipe_ops = {
    .connection_lost = pipe_lost,
    .data_received = pipe_data,
};

/* ---- the transport's table ---------------------------------------------------- */

static int proc_close(tpio_transport_t *t)
{
    struct proc *P = as_proc(t);
    if (t->closing)
        return 0;
    t->closing = true;
    for (int i = 0; i < 3; i++)
        if (P->pipes[i].t)
            tpio_close(P->pipes[i].t);
    if (!P->exited)
        pidfd_signal(P, SIGKILL); /* asyncio kills a child still running */
    return 0;
}

static int proc_extra(const tpio_transport_t *t, const char *name, tpio_extra_t *out)
{
    const struct proc *P = as_proc(t);
    if (strcmp(name, "subprocess") != 0 || P->io.fd < 0)
        return -ENOENT;
    out->type = TPIO_EXTRA_FD;
    out->fd = P->io.fd;
    return 0;
}

static void proc_quiesce(tpio_transport_t *t)
{
    tpio__io_set(t->loop, &as_proc(t)->io, 0);
}

static void proc_teardown(tpio_transport_t *t)
{
    struct proc *P = as_proc(t);
    if (P->io.fd >= 0)
        close(P->io.fd);
    P->io.fd = -1;
}

static void proc_destroy(tpio_transport_t *t)
{
    struct proc *P = as_proc(t);
    for (int i = 0; i < 3; i++)
        if (P->pipes[i].t)
            tpio__transport_unref(P->pipes[i].t);
    free(P);
}

static const struct tpio__transport_vt proc_vt = {
    .close = proc_close,
    .extra_info = proc_extra,
    .quiesce = proc_quiesce,
    .teardown = proc_teardown,
    .destroy = proc_destroy,
};

/* ---- starting ---------------------------------------------------------------- */

/* Queued after the pipe transports' own start, so every pipe is connected
 * when the protocol hears connection_made. */
static void proc_start(tpio_loop_t *loop, void *arg)
{
    struct proc *P = arg;
    tpio_transport_t *t = &P->base;
    tpio_protocol_t *p = t->proto;
    int rc = tpio__io_set(loop, &P->io, TPIO__IN);
    if (p->ops->connection_made)
        p->ops->connection_made(p, t);
    if (rc < 0 && !P->exited) {
        /* The exit could never be seen: end the child now. */
        tpio__report(loop, "Cannot watch the child process: killed", rc, t, NULL, P->io.fd);
        pidfd_signal(P, SIGKILL);
        reap(P, false);
    }
    P->cb(loop, t, P->first_proto, 0, P->cb_arg);
    tpio__transport_unref(t);
}

/* The call fails after the child started: kill and reap it at once, and let
 * the pipe transports already made end; the last one frees P (no protocol
 * is told anything). */
static int abandon(struct proc *P, int err)
{
    P->base.proto = NULL;
    pidfd_signal(P, SIGKILL);
    reap(P, false);
    for (int i = 0; i < 3; i++)
        if (P->pipes[i].t)
            tpio__schedule_lost(P->pipes[i].t, 0);
    try_finish(P);
    return err;
}

/* The descriptors for the child (child[i], -1: inherit) and our pipe ends
 * (parent[i], -1: none); owned[i]: child[i] was opened here. */
static int open_stdio(const tpio_subprocess_opts_t *o, int child[3], int parent[3],
                      bool owned[3])
{
    for (int i = 0; i < 3; i++) {
        child[i] = parent[i] = -1;
        owned[i] = false;
    }
    for (int i = 0; i < 3; i++) {
        tpio_stdio_t mode = o ? o->stdio[i].mode : TPIO_STDIO_PIPE;
        if (mode == TPIO_STDIO_PIPE) {
            int p[2];
            if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
            child[i] = i == 0 ? p[0] : p[1];
            parent[i] = i == 0 ? p[1] : p[0];
            owned[i] = true;
            /* Only our end is non-blocking: the child gets an ordinary pipe. */
            if (fcntl(parent[i], F_SETFL, O_NONBLOCK) < 0)
                return -errno;
        } else if (mode == TPIO_STDIO_DEVNULL) {
            child[i] = open("/dev/null", (i == 0 ? O_RDONLY : O_WRONLY) | O_CLOEXEC);
            if (child[i] < 0)
                return -errno;
            owned[i] = true;
        } else if (mode == TPIO_STDIO_FD) {
            if (o->stdio[i].fd < 0 || fcntl(o->stdio[i].fd, F_GETFD) < 0)
                return -EBADF;
            child[i] = o->stdio[i].fd;
        } else if (mode == TPIO_STDIO_STDOUT && i == 2) {
            child[2] = child[1] >= 0 ? child[1] : 1; /* stdout inherited: our 1 */
        } else if (mode != TPIO_STDIO_INHERIT) {
            return -EINVAL;
        }
    }
    return 0;
}

static void close_all(int fds[3], const bool owned[3])
{
    for (int i = 0; i < 3; i++) {
        if (fds[i] >= 0 && (!owned || owned[i]))
            close(fds[i]);
        fds[i] = -1;
    }
}

int tpio_subprocess_exec(tpio_loop_t *loop, tpio_protocol_factory_t factory, void *factory_arg,
                         const char *const argv[], const tpio_subprocess_opts_t *opts,
                         tpio_connect_cb cb, void *cb_arg)
{
    if (!loop || !factory || !cb || !argv || !argv[0])
        return -EINVAL;
    struct proc *P = calloc(1, sizeof *P);
    if (!P)
        return -ENOMEM;
    int child[3], parent[3];
    bool owned[3];
    struct tpio__spawn sp = {.argv = argv, .envp = opts ? opts->env : NULL,
                             .cwd = opts ? opts->cwd : NULL};
    int rc = open_stdio(opts, child, parent, owned);
    if (rc == 0) {
        memcpy(sp.fds, child, sizeof child);
        rc = tpio__spawn(&sp);
    }
    close_all(child, owned); /* the child has its copies */
    if (rc < 0) {
        close_all(parent, NULL);
        free(P);
        return rc;
    }

    tpio__transport_init(&P->base, loop, &proc_vt, TPIO_TRANSPORT_SUBPROCESS, NULL);
    P->pid = sp.pid;
    tpio__io_init(&P->io, sp.pidfd, proc_io);
    for (int i = 0; i < 3; i++) {
        struct pipe_proto *pp = &P->pipes[i];
        pp->proc = P;
        pp->fd = i;
        if (parent[i] < 0)
            continue;
        pp->base.ops = i == 0 ? &write_pipe_ops : &read_pipe_ops;
        pp->t = tpio__stream_new(loop, parent[i],
                                 i == 0 ? TPIO_TRANSPORT_PIPE_WRITE : TPIO_TRANSPORT_PIPE_READ,
                                 &pp->base, NULL, NULL, NULL);
        if (!pp->t) {
            for (int j = i; j < 3; j++)
                if (parent[j] >= 0)
                    close(parent[j]);
            return abandon(P, -ENOMEM);
        }
        parent[i] = -1;
        tpio__transport_ref(pp->t); /* for get_pipe_transport, until destroy */
    }
    tpio_handle_t h;
    tpio__transport_ref(&P->base); /* held by proc_start */
    if (tpio_call_soon(loop, proc_start, P, &h) < 0) {
        tpio__transport_unref(&P->base);
        return abandon(P, -ENOMEM);
    }
    /* The factory last: a refused protocol or a failed start never leaves
     * a protocol without its connection_made / connection_lost. */
    tpio_protocol_t *p = factory(factory_arg);
    if (!p || !p->ops) {
        tpio_cancel(loop, h);
        tpio__transport_unref(&P->base);
        return abandon(P, -ECONNABORTED);
    }
    P->base.proto = P->first_proto = p;
    P->cb = cb;
    P->cb_arg = cb_arg;
    return 0;
}

int tpio_subprocess_shell(tpio_loop_t *loop, tpio_protocol_factory_t factory, void *factory_arg,
                          const char *command, const tpio_subprocess_opts_t *opts,
                          tpio_connect_cb cb, void *cb_arg)
{
    if (!command)
        return -EINVAL;
    const char *argv[] = {"/bin/sh", "-c", command, NULL};
    return tpio_subprocess_exec(loop, factory, factory_arg, argv, opts, cb, cb_arg);
}

/* ---- public: SubprocessTransport ------------------------------------------- */

pid_t tpio_get_pid(const tpio_transport_t *t)
{
    if (!t)
        return -EINVAL;
    const struct proc *P = as_proc(t);
    return P ? P->pid : -ENOTSUP;
}

tpio_transport_t *tpio_get_pipe_transport(const tpio_transport_t *t, int fd)
{
    const struct proc *P = as_proc(t);
    return P && fd >= 0 && fd < 3 ? P->pipes[fd].t : NULL;
}

int tpio_get_returncode(const tpio_transport_t *t, int *code)
{
    if (!t || !code)
        return -EINVAL;
    const struct proc *P = as_proc(t);
    if (!P)
        return -ENOTSUP;
    if (!P->exited)
        return -EAGAIN;
    *code = P->returncode;
    return 0;
}

int tpio_send_signal(tpio_transport_t *t, int sig)
{
    if (!t)
        return -EINVAL;
    struct proc *P = as_proc(t);
    if (!P)
        return -ENOTSUP;
    /* Once reaped the PID may belong to someone else: the pidfd knows. */
    if (P->exited)
        return -ESRCH;
    return pidfd_signal(P, sig);
}

int tpio_terminate(tpio_transport_t *t) { return tpio_send_signal(t, SIGTERM); }

int tpio_kill(tpio_transport_t *t) { return tpio_send_signal(t, SIGKILL); }
