/* Descriptors the user hands over (connect_accepted_socket, sock=, pipes):
 * claimed at once (a descriptor watched or handed over twice is refused),
 * left untouched on an error return, made non-blocking and given its
 * options once it is the library's, and built from the loop — the factory
 * with it, never inside the user's call, as in asyncio. */
#include "create/create.h"

#include <unistd.h>

struct adopt {
    int fd;
    tpio_transport_kind_t kind;
    const struct tpio__ctor *ctor;
    struct tpio__conn conn;
    tpio_handle_t run, req;
    struct tpio__node cancel_node;
};

static void adopt_end(tpio_loop_t *loop, struct adopt *a)
{
    tpio__ctor_release(a->ctor);
    tpio__request_done(loop, a->req);
    tpio__loop_release(loop);
    tpio__free(a);
}

static void adopt_run(tpio_loop_t *loop, void *arg)
{
    struct adopt *a = arg;
    struct adopt copy = *a;
    /* the request goes to the constructor (retired before the factory runs,
     * or kept by a TLS layer); the loop stays held until the transport
     * holds it */
    copy.conn.req = a->req;
    a->req = 0;
    tpio__fd_release(loop, copy.fd); /* the transport claims it for good */
    int err = tpio__set_nonblock(copy.fd);
    if (err == 0) {
        tpio__sock_tune(copy.fd, copy.kind);
        err = copy.ctor->build(copy.ctor, loop, copy.fd, copy.kind, NULL, 0, &copy.conn);
    }
    adopt_end(loop, a);
    if (err) {
        tpio__request_done(loop, copy.conn.req);
        close(copy.fd);
        copy.conn.cb(loop, NULL, NULL, err, copy.conn.cb_arg);
    }
}

static void cancel_done(tpio_loop_t *loop, void *arg)
{
    struct adopt *a = tpio_container_of(arg, struct adopt, cancel_node);
    tpio_connect_cb_t cb = a->conn.cb;
    void *cb_arg = a->conn.cb_arg;
    a->req = 0;
    adopt_end(loop, a);
    cb(loop, NULL, NULL, -ECANCELED, cb_arg);
}

/* The descriptor was the library's from the call on: closed. */
static void adopt_cancel(tpio_loop_t *loop, void *arg)
{
    struct adopt *a = arg;
    a->req = 0;
    tpio_loop_cancel(loop, a->run);
    tpio__fd_release(loop, a->fd);
    close(a->fd);
    a->cancel_node.cb = cancel_done;
    tpio__call_soon_node(loop, &a->cancel_node);
}

int tpio__adopt(tpio_loop_t *loop, int fd, tpio_transport_kind_t kind,
                const struct tpio__ctor *ctor, const struct tpio__conn *conn,
                tpio_handle_t *request)
{
    struct adopt *a = tpio__malloc(sizeof *a);
    if (!a) {
        tpio__ctor_release(ctor);
        return -ENOMEM;
    }
    *a = (struct adopt){fd, kind, ctor, *conn, 0, 0, {0}};
    /* Claimed from now on: the same descriptor given twice is refused at
     * once, not closed under the first transport later. */
    int rc = tpio__fd_claim(loop, fd);
    if (rc == 0 && (rc = tpio__request_new(loop, adopt_cancel, a, &a->req)) < 0)
        tpio__fd_release(loop, fd);
    if (rc == 0 && (rc = tpio_loop_call_soon(loop, adopt_run, a, &a->run)) < 0) {
        tpio__request_done(loop, a->req);
        tpio__fd_release(loop, fd);
    }
    if (rc < 0) {
        tpio__ctor_release(ctor);
        tpio__free(a);
        return rc;
    }
    tpio__loop_hold(loop);
    if (request)
        *request = a->req;
    return 0;
}

int tpio__ctor_for(const tpio_tls_opts_t *tls, bool server, const char *host,
                   const struct tpio__ctor **out)
{
    if (!tls) {
        *out = &tpio__stream_ctor;
        return 0;
    }
    return tpio__tls_ctor_new(tls, server, host, out);
}
