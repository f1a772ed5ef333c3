/* connect_read_pipe / connect_write_pipe: a pipe end becomes a one-way
 * stream transport (stream.c), after the checks asyncio makes. */
#include "internal.h"

#include <fcntl.h>
#include <sys/stat.h>

static int pipe_check(tpio_loop_t *loop, int fd)
{
    struct stat st;
    if (fd < 0)
        return -EBADF;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode) && !S_ISCHR(st.st_mode))
        return -EINVAL;
    /* Some character devices (/dev/null) cannot be polled: say so now rather
     * than through connection_lost later. */
    struct tpio__io probe;
    tpio__io_init(&probe, fd, NULL);
    int rc = tpio__io_set(loop, &probe, TPIO__IN);
    if (rc < 0)
        return rc;
    tpio__io_set(loop, &probe, 0);
    return 0;
}

static int connect_pipe(tpio_loop_t *loop, tpio_protocol_factory_t factory, void *factory_arg,
                        int fd, tpio_transport_kind_t kind, tpio_connect_cb cb, void *cb_arg)
{
    if (!loop || !factory || !cb)
        return -EINVAL;
    int rc = pipe_check(loop, fd);
    if (rc)
        return rc;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0))
        return -errno;
    return tpio__adopt(loop, fd, kind, tpio__make_stream, factory, factory_arg, cb, cb_arg);
}

int tpio_connect_read_pipe(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                           void *factory_arg, int fd, tpio_connect_cb cb, void *cb_arg)
{
    return connect_pipe(loop, factory, factory_arg, fd, TPIO_TRANSPORT_PIPE_READ, cb, cb_arg);
}

int tpio_connect_write_pipe(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                            void *factory_arg, int fd, tpio_connect_cb cb, void *cb_arg)
{
    return connect_pipe(loop, factory, factory_arg, fd, TPIO_TRANSPORT_PIPE_WRITE, cb, cb_arg);
}
