/* Unix stream sockets: the same connect machinery, server object and stream
 * transport as TCP; only addressing and the socket file differ. */
#include "internal.h"

#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int make_addr(const tpio_unix_opts_t *o, struct sockaddr_un *sun, socklen_t *len)
{
    if (!o->path)
        return -EINVAL;
    size_t n = o->path_len ? o->path_len : strlen(o->path);
    if (n == 0)
        return -EINVAL;
    size_t off = o->abstract ? 1 : 0;
    /* A path needs its NUL inside sun_path; an abstract name does not. */
    if (n + off + (o->abstract ? 0 : 1) > sizeof sun->sun_path)
        return -ENAMETOOLONG;
    if (!o->abstract && memchr(o->path, '\0', n))
        return -EINVAL;
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path + off, o->path, n);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + off + n +
                       (o->abstract ? 0 : 1));
    return 0;
}

int tpio_create_unix_connection(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                                void *factory_arg, const tpio_unix_opts_t *o,
                                tpio_connect_cb cb, void *cb_arg)
{
    if (!loop || !factory || !o || !cb)
        return -EINVAL;
    if (o->use_sock) {
        if (o->path)
            return -EINVAL;
        tpio_connect_opts_t co = {.use_sock = true, .sock = o->sock};
        return tpio_create_connection(loop, factory, factory_arg, &co, cb, cb_arg);
    }
    struct sockaddr_un sun;
    socklen_t len;
    int rc = make_addr(o, &sun, &len);
    if (rc)
        return rc;
    return tpio__connect_addr(loop, factory, factory_arg, (struct sockaddr *)&sun, len, cb,
                              cb_arg);
}

int tpio_create_unix_server(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                            void *factory_arg, const tpio_unix_opts_t *o, tpio_server_t **out)
{
    if (!loop || !factory || !o || !out || o->backlog < 0)
        return -EINVAL;
    int backlog = o->backlog ? o->backlog : TPIO__DEFAULT_BACKLOG;
    bool start = o->start_serving != TPIO_OFF;
    if (o->use_sock) {
        if (o->path)
            return -EINVAL;
        tpio_server_opts_t so = {.socks = &o->sock, .nsocks = 1, .backlog = backlog,
                                 .start_serving = o->start_serving};
        return tpio_create_server(loop, factory, factory_arg, &so, out);
    }
    struct sockaddr_un sun;
    socklen_t len;
    int rc = make_addr(o, &sun, &len);
    if (rc)
        return rc;
    if (!o->abstract) {
        /* A socket file left by a dead server would make bind fail. */
        struct stat st;
        if (stat(sun.sun_path, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(sun.sun_path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&sun, len) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    rc = tpio__server_new(loop, factory, factory_arg, &fd, 1, backlog, start,
                          o->abstract ? NULL : sun.sun_path, out);
    if (rc) {
        if (!o->abstract)
            unlink(sun.sun_path);
        close(fd);
    }
    return rc;
}
