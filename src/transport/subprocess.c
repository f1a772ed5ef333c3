/* SubprocessTransport (asyncio's base_subprocess.py over unix_events.py):
 * a child started by the layer above (create/process.c), its
 * stdin/stdout/stderr pipes as ordinary stream pipe transports (stream.c)
 * whose protocols are adapters forwarding to the SubprocessProtocol, and
 * the exit watched through a pidfd (on io_uring the kernel reaps the child
 * itself: a waitid operation, where it has them).
 *
 * Order, as asyncio: the pipe transports' connection_made run first, then
 * the protocol's connection_made (the pidfd is watched from then on);
 * process_exited is queued when the child is reaped; connection_lost is
 * queued once the child is reaped and every pipe transport has reached its
 * own connection_lost (_try_finish). The pipe transports stay referenced by
 * this transport, so get_pipe_transport() is valid as long as it is. */
#include "transport/transport.h"

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
    struct tpio__op wop; /* the kernel's waitid, into si */
    siginfo_t si;
    pid_t pid;
    int returncode;
    bool exited;   /* reaped: returncode is set */
    bool finished; /* connection_lost is scheduled */
    struct pipe_proto pipes[3];
    struct tpio__node exit_node;
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
    struct proc *P = tpio_container_of(arg, struct proc, exit_node);
    if (P->base.proto)
        TPIO__UPCALL(&P->base, process_exited);
    tpio__transport_unref(&P->base);
}

/* The child is reaped: queue process_exited (asyncio calls it from the
 * loop too), then maybe connection_lost after it. */
static void on_exit_status(struct proc *P, int code)
{
    P->exited = true;
    P->returncode = code;
    tpio__watch(P->base.loop, &P->io, 0);
    tpio__transport_ref(&P->base); /* held by exited_cb */
    P->exit_node.cb = exited_cb;
    tpio__call_soon_node(P->base.loop, &P->exit_node);
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
        tpio__transport_report(&P->base, "Unknown child process status, returncode 255", rc);
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

/* The exit could never be seen (err: why): the child is ended now. */
static void cannot_watch(struct proc *P, int err)
{
    tpio__transport_report(&P->base, "Cannot watch the child process: killed", err);
    pidfd_signal(P, SIGKILL);
    reap(P, false);
}

/* The kernel's waitid ended: the child is reaped, or (an error) the
 * pidfd's own waitid finds out why, and watching takes over if the child
 * still runs. Dropped at the end (quiesce), so never a completion after. */
static void waitid_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                        bool more)
{
    (void)loop, (void)data, (void)more;
    struct proc *P = tpio_container_of(op, struct proc, wop);
    if (P->exited)
        return;
    if (res == 0) {
        on_exit_status(P, P->si.si_code == CLD_EXITED ? P->si.si_status : -P->si.si_status);
        return;
    }
    reap(P, true);
    int rc;
    if (!P->exited && (rc = tpio__watch(P->base.loop, &P->io, TPIO__IN)) < 0)
        cannot_watch(P, rc);
}

/* The kernel reaps the child where the backend can (io_uring, 6.7), else
 * the pidfd is watched for readiness. */
static int watch_exit(struct proc *P)
{
    struct tpio__backend *b = P->base.loop->backend;
    memset(&P->si, 0, sizeof P->si);
    if (tpio__op_waitid(b, &P->wop, P->io.fd, &P->si, waitid_done) == 0)
        return 0;
    return tpio__watch(P->base.loop, &P->io, TPIO__IN);
}

/* ---- the pipes' protocol ---------------------------------------------------- */

static struct pipe_proto *PP(tpio_protocol_t *p) { return tpio_container_of(p, struct pipe_proto, base); }

static void pipe_data(tpio_protocol_t *bp, const void *data, size_t len)
{
    struct pipe_proto *pp = PP(bp);
    if (pp->proc->base.proto)
        TPIO__UPCALL(&pp->proc->base, pipe_data_received, pp->fd, data, len);
}

static void pipe_lost(tpio_protocol_t *bp, int err)
{
    struct pipe_proto *pp = PP(bp);
    struct proc *P = pp->proc;
    pp->disconnected = true;
    if (P->base.proto)
        TPIO__UPCALL(&P->base, pipe_connection_lost, pp->fd, err);
    try_finish(P); /* it only schedules: P lives on until connection_lost */
}

/* stdin's flow control is the SubprocessProtocol's (WriteSubprocessPipeProto). */
static void pipe_pause(tpio_protocol_t *bp)
{
    struct proc *P = PP(bp)->proc;
    if (P->base.proto)
        TPIO__UPCALL(&P->base, pause_writing);
}

static void pipe_resume(tpio_protocol_t *bp)
{
    struct proc *P = PP(bp)->proc;
    if (P->base.proto)
        TPIO__UPCALL(&P->base, resume_writing);
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
            tpio_transport_close(P->pipes[i].t);
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
    tpio__op_drop(t->loop->backend, &as_proc(t)->wop);
    tpio__watch(t->loop, &as_proc(t)->io, 0);
}

static void proc_teardown(tpio_transport_t *t) { tpio__transport_close_fd(t, &as_proc(t)->io); }

static void proc_destroy(tpio_transport_t *t)
{
    struct proc *P = as_proc(t);
    tpio__transport_leave_fd(t, &P->io); /* never started: the pidfd is the caller's */
    for (int i = 0; i < 3; i++)
        if (P->pipes[i].t)
            tpio__transport_unref(P->pipes[i].t);
    tpio__free(P);
}

static void proc_started(tpio_transport_t *t);

static const struct tpio__transport_vt proc_vt = {
    .close = proc_close,
    .extra_info = proc_extra,
    .started = proc_started,
    .quiesce = proc_quiesce,
    .teardown = proc_teardown,
    .destroy = proc_destroy,
};

/* ---- starting ---------------------------------------------------------------- */

/* After connection_made, which runs after the pipe transports' own (their
 * starts were queued first), so every pipe is connected when the protocol
 * hears of the process. */
static void proc_started(tpio_transport_t *t)
{
    struct proc *P = as_proc(t);
    int rc = watch_exit(P);
    if (rc < 0 && !P->exited)
        cannot_watch(P, rc);
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

/* One pipe end as a stream pipe transport whose protocol is the adapter. */
static int open_pipe(struct proc *P, int i, int fd)
{
    struct pipe_proto *pp = &P->pipes[i];
    pp->base.ops = i == 0 ? &write_pipe_ops : &read_pipe_ops;
    tpio_transport_t *t;
    int rc = tpio__stream_new(P->base.loop, fd,
                              i == 0 ? TPIO_TRANSPORT_PIPE_WRITE : TPIO_TRANSPORT_PIPE_READ, NULL,
                              0, &t);
    if (rc < 0)
        return rc;
    rc = tpio__transport_start(t, &pp->base, NULL, NULL);
    if (rc < 0) {
        tpio__transport_abandon(t);
        return rc;
    }
    tpio__transport_ref(t); /* for get_pipe_transport, until destroy */
    pp->t = t;
    return 0;
}

/* Before the transport holds the child: end it and close what it had. */
static int refuse_child(int pidfd, int parent[3], int err)
{
    syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
    tpio__reap(pidfd, false, NULL);
    close(pidfd);
    for (int i = 0; i < 3; i++)
        if (parent[i] >= 0)
            close(parent[i]);
    return err;
}

int tpio__subprocess_open(tpio_loop_t *loop, pid_t pid, int pidfd, int parent[3],
                          const struct tpio__conn *conn)
{
    struct proc *P = tpio__calloc(1, sizeof *P);
    if (!P)
        return refuse_child(pidfd, parent, -ENOMEM);
    tpio__transport_init(&P->base, loop, &proc_vt, TPIO_TRANSPORT_SUBPROCESS);
    P->pid = pid;
    int rc = tpio__transport_take_fd(&P->base, &P->io, pidfd, proc_io);
    if (rc < 0) {
        tpio__transport_abandon(&P->base);
        return refuse_child(pidfd, parent, rc);
    }
    for (int i = 0; i < 3; i++) {
        P->pipes[i].proc = P;
        P->pipes[i].fd = i;
    }
    for (int i = 0; i < 3; i++) {
        if (parent[i] < 0)
            continue;
        if ((rc = open_pipe(P, i, parent[i])) < 0) {
            for (int j = i; j < 3; j++)
                if (parent[j] >= 0)
                    close(parent[j]);
            return abandon(P, rc);
        }
    }
    /* As for every connection: start, then the factory last (the exception
     * is that this runs inside the user's call, as asyncio's does). */
    rc = tpio__transport_open(&P->base, conn);
    if (rc < 0)
        return abandon(P, rc);
    return 0;
}

/* ---- public: SubprocessTransport ------------------------------------------- */

int tpio_subprocess_get_pid(const tpio_transport_t *t, pid_t *pid)
{
    if (!t || !pid)
        return -EINVAL;
    const struct proc *P = as_proc(t);
    if (!P)
        return -ENOTSUP;
    *pid = P->pid;
    return 0;
}

int tpio_subprocess_get_pipe_transport(const tpio_transport_t *t, int fd,
                                       tpio_transport_t **pipe)
{
    if (!t || !pipe)
        return -EINVAL;
    const struct proc *P = as_proc(t);
    if (!P)
        return -ENOTSUP;
    if (fd < 0 || fd > 2)
        return -EINVAL;
    if (!P->pipes[fd].t)
        return -ENOENT;
    *pipe = P->pipes[fd].t;
    return 0;
}

int tpio_subprocess_get_returncode(const tpio_transport_t *t, int *code)
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

int tpio_subprocess_send_signal(tpio_transport_t *t, int sig)
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

int tpio_subprocess_terminate(tpio_transport_t *t) { return tpio_subprocess_send_signal(t, SIGTERM); }

int tpio_subprocess_kill(tpio_transport_t *t) { return tpio_subprocess_send_signal(t, SIGKILL); }
