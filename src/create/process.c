/* subprocess_exec and subprocess_shell: the child's standard streams are
 * set up and the child started (base/spawn.c), then handed to the
 * subprocess transport (transport/subprocess.c). */
#include "create/create.h"

#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

/* tpio_subprocess_opts_t as of 0.2 (0.3 added new_session, set_pgid, pgid,
 * pass_fds and n_pass_fds). */
#define SUBPROCESS_OPTS_V1 offsetof(tpio_subprocess_opts_t, new_session)

/* What the child does besides its stdio, checked: the session and group
 * flags, and the descriptors to pass, which must be open now (the child
 * would fail on them with EBADF; this way no child is started at all). */
static int child_opts(const tpio_subprocess_opts_t *o, struct tpio__spawn *sp)
{
    int sid = tpio__flag(o->new_session, false);
    int pgid = tpio__flag(o->set_pgid, false);
    if (sid < 0 || pgid < 0)
        return -EINVAL;
    if (o->pgid < 0 || (o->pgid != 0 && !pgid))
        return -EINVAL;
    if (o->n_pass_fds && !o->pass_fds)
        return -EINVAL;
    for (size_t i = 0; i < o->n_pass_fds; i++)
        if (o->pass_fds[i] < 0 || fcntl(o->pass_fds[i], F_GETFD) < 0)
            return -EBADF;
    sp->setsid = sid;
    sp->setpgid = pgid;
    sp->pgid = o->pgid;
    sp->keep = o->pass_fds;
    sp->nkeep = o->n_pass_fds;
    return 0;
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
        tpio_stdio_t mode = o->stdio[i].mode;
        if (mode == TPIO_STDIO_PIPE) {
            int p[2];
            if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
            child[i] = i == 0 ? p[0] : p[1];
            parent[i] = i == 0 ? p[1] : p[0];
            owned[i] = true;
            /* Only our end is non-blocking: the child gets an ordinary pipe. */
            int rc = tpio__set_nonblock(parent[i]);
            if (rc < 0)
                return rc;
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

int tpio_loop_subprocess_exec(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                              void *factory_arg, const char *const argv[],
                              const tpio_subprocess_opts_t *opts, tpio_connect_cb_t cb,
                              void *cb_arg)
{
    if (!loop || !factory || !cb || !argv || !argv[0])
        return -EINVAL;
    tpio_subprocess_opts_t o = {0};
    if (opts) {
        int rc = TPIO__OPTS_COPY(&o, opts, SUBPROCESS_OPTS_V1);
        if (rc < 0)
            return rc;
    }
    struct tpio__spawn sp = {.argv = argv, .envp = o.env, .cwd = o.cwd};
    int rc = child_opts(&o, &sp);
    if (rc < 0)
        return rc;
    int child[3], parent[3];
    bool owned[3];
    rc = open_stdio(&o, child, parent, owned);
    if (rc == 0) {
        memcpy(sp.fds, child, sizeof child);
        rc = tpio__spawn(&sp);
    }
    close_all(child, owned); /* the child has its copies */
    if (rc < 0) {
        close_all(parent, NULL);
        return rc;
    }
    struct tpio__conn conn = {factory, factory_arg, cb, cb_arg, NULL, 0};
    return tpio__subprocess_open(loop, sp.pid, sp.pidfd, parent, &conn);
}

int tpio_loop_subprocess_shell(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                               void *factory_arg, const char *command,
                               const tpio_subprocess_opts_t *opts, tpio_connect_cb_t cb,
                               void *cb_arg)
{
    if (!command)
        return -EINVAL;
    const char *argv[] = {"/bin/sh", "-c", command, NULL};
    return tpio_loop_subprocess_exec(loop, factory, factory_arg, argv, opts, cb, cb_arg);
}
