/* Unix stream sockets: the same connect machinery, server object and stream
 * transport as TCP; only addressing and the socket file differ. */
#include "create/create.h"

#include <string.h>
#include <unistd.h>

/* tpio_unix_opts_t as of 0.2 (0.3 added tls). */
#define UNIX_OPTS_V1 offsetof(tpio_unix_opts_t, tls)

/* The options, the path's address (unless an existing socket is used) and
 * the use_sock answer. */
static int unix_args(const tpio_unix_opts_t *opts, tpio_unix_opts_t *o, struct sockaddr_un *sun,
                     socklen_t *len, bool *use_sock)
{
    int rc = TPIO__OPTS_COPY(o, opts, UNIX_OPTS_V1);
    if (rc < 0)
        return rc;
    int us = tpio__flag(o->use_sock, false), abstract = tpio__flag(o->abstract, false);
    if (us < 0 || abstract < 0 || tpio__flag(o->start_serving, true) < 0 || o->backlog < 0)
        return -EINVAL;
    *use_sock = us;
    if (us)
        return o->path ? -EINVAL : 0; /* asyncio: path and sock are exclusive */
    return tpio__unix_addr(o->path, o->path_len, abstract, sun, len);
}

int tpio_loop_create_unix_connection(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                                     void *factory_arg, const tpio_unix_opts_t *opts,
                                     tpio_connect_cb_t cb, void *cb_arg,
                                     tpio_handle_t *request)
{
    if (!loop || !factory || !opts || !cb)
        return -EINVAL;
    tpio_unix_opts_t o;
    struct sockaddr_un sun;
    socklen_t len;
    bool use_sock;
    int rc = unix_args(opts, &o, &sun, &len, &use_sock);
    if (rc)
        return rc;
    if (use_sock)
        return tpio__wrap_socket(loop, factory, factory_arg, o.sock, o.tls, cb, cb_arg, request);
    const struct tpio__ctor *ctor;
    if ((rc = tpio__ctor_for(o.tls, false, NULL, &ctor)) < 0)
        return rc;
    struct addrinfo ai = {
        .ai_family = AF_UNIX,
        .ai_socktype = SOCK_STREAM,
        .ai_addr = (struct sockaddr *)&sun,
        .ai_addrlen = len,
    };
    return tpio__connect_addrs(loop, ctor, factory, factory_arg, &ai, 0, cb, cb_arg, request);
}

int tpio_loop_create_unix_server(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                                 void *factory_arg, const tpio_unix_opts_t *opts,
                                 tpio_server_t **out)
{
    if (!loop || !factory || !opts || !out)
        return -EINVAL;
    tpio_unix_opts_t o;
    struct sockaddr_un sun;
    socklen_t len;
    bool use_sock;
    int rc = unix_args(opts, &o, &sun, &len, &use_sock);
    if (rc)
        return rc;
    int backlog = o.backlog ? o.backlog : TPIO__DEFAULT_BACKLOG;
    bool start = tpio__flag(o.start_serving, true);
    if (use_sock && ((rc = tpio__sock_check(o.sock, SOCK_STREAM)) < 0 ||
                     (rc = tpio__fd_check(loop, o.sock)) < 0))
        return rc;
    const struct tpio__ctor *ctor;
    if ((rc = tpio__ctor_for(o.tls, true, NULL, &ctor)) < 0)
        return rc;
    if (use_sock)
        return tpio__server_new(loop, ctor, factory, factory_arg, &o.sock, 1, backlog, start,
                                NULL, out);
    tpio__unix_remove_stale(&sun, len);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, len) < 0) {
        rc = -errno;
        if (fd >= 0)
            close(fd);
        tpio__ctor_release(ctor);
        return rc;
    }
    bool has_file = sun.sun_path[0] != '\0';
    rc = tpio__server_new(loop, ctor, factory, factory_arg, &fd, 1, backlog, start,
                          has_file ? sun.sun_path : NULL, out);
    if (rc) {
        if (has_file)
            unlink(sun.sun_path);
        close(fd);
    }
    return rc;
}
