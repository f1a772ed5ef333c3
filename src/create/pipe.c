/* connect_read_pipe / connect_write_pipe: a pipe end becomes a one-way
 * stream transport, after the checks asyncio makes. */
#include "create/create.h"

#include <sys/stat.h>

static int pipe_check(tpio_loop_t *loop, int fd, tpio_transport_kind_t kind)
{
    struct stat st;
    if (fd < 0)
        return -EBADF;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode) && !S_ISCHR(st.st_mode))
        return -EINVAL;
    int rc = tpio__fd_check(loop, fd); /* before the probe registers it */
    if (rc < 0)
        return rc;
    /* Some character devices (/dev/null) cannot be watched: a read pipe
     * could never hear of data, so say so now rather than through
     * connection_lost later. A write pipe works without the loop, as
     * asyncio's does: the kernel takes every write to such a device. */
    rc = tpio__fd_watchable(loop, fd);
    if (rc == TPIO_ENOTWATCHABLE && kind == TPIO_TRANSPORT_PIPE_WRITE && S_ISCHR(st.st_mode))
        return 0;
    return rc;
}

static int connect_pipe(tpio_loop_t *loop, tpio_protocol_factory_t factory, void *factory_arg,
                        int fd, tpio_transport_kind_t kind, tpio_connect_cb_t cb, void *cb_arg,
                        tpio_handle_t *request)
{
    if (!loop || !factory || !cb)
        return -EINVAL;
    int rc = pipe_check(loop, fd, kind);
    if (rc)
        return rc;
    struct tpio__conn conn = {factory, factory_arg, cb, cb_arg, NULL, 0};
    return tpio__adopt(loop, fd, kind, &tpio__stream_ctor, &conn, request);
}

int tpio_loop_connect_read_pipe(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                                void *factory_arg, int fd, tpio_connect_cb_t cb, void *cb_arg,
                                tpio_handle_t *request)
{
    return connect_pipe(loop, factory, factory_arg, fd, TPIO_TRANSPORT_PIPE_READ, cb, cb_arg,
                        request);
}

int tpio_loop_connect_write_pipe(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                                 void *factory_arg, int fd, tpio_connect_cb_t cb, void *cb_arg,
                                 tpio_handle_t *request)
{
    return connect_pipe(loop, factory, factory_arg, fd, TPIO_TRANSPORT_PIPE_WRITE, cb, cb_arg,
                        request);
}
