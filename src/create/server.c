/* The Server object (create_server's result): listening sockets, bounded
 * accepting, recovery from descriptor exhaustion, its set of connections and
 * the lifetime of the object. Binding addresses is listen.c's. */
#include "create/create.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct listener {
    struct tpio__io io;
    struct tpio__op aop;        /* the kernel's accept (io_uring), or idle */
    tpio_server_t *server;
    tpio_handle_t retry;        /* pending accept retry after EMFILE, or 0 */
    tpio_transport_kind_t kind; /* of the accepted sockets: known once, not per accept */
};

struct waiter {
    struct waiter *next;
    tpio_server_t *server;
    tpio_done_cb_t cb;
    void *arg;
    int err;
    tpio_handle_t req; /* while it waits */
    struct tpio__node node;
};

struct tpio_server {
    struct tpio__list owned; /* in the loop's list of servers */
    tpio_loop_t *loop;
    const struct tpio__ctor *ctor;
    tpio_protocol_factory_t factory;
    void *factory_arg;
    struct listener *ls;
    size_t nls;
    int backlog;
    bool serving;
    bool listening; /* listen() done: at the first start_serving */
    bool closed;
    bool woken; /* closed with no connections left: wait_closed fires at once */
    /* The user's (until close), one per waiter, one while accepting. The
     * object is freed when none is left and its connection set is empty. */
    int refs;
    struct tpio__tset conns;
    struct waiter *waiters;
    char *unlink_path; /* Unix socket file to remove at close */
    dev_t path_dev;
    ino_t path_ino;
};

static void server_unref(tpio_server_t *s)
{
    if (--s->refs > 0 || s->conns.count > 0)
        return;
    tpio__list_del(&s->owned);
    tpio__loop_release(s->loop);
    tpio__ctor_release(s->ctor);
    tpio__free(s->unlink_path);
    tpio__free(s->ls);
    tpio__free(s);
}

static void waiter_fire(tpio_loop_t *loop, void *arg)
{
    struct waiter *w = tpio_container_of(arg, struct waiter, node);
    w->cb(loop, w->err, w->arg);
    server_unref(w->server);
    tpio__free(w);
}

/* From the loop, even with no memory left to schedule it. */
static void schedule_waiter(tpio_server_t *s, struct waiter *w, int err)
{
    tpio__request_done(s->loop, w->req);
    w->req = 0;
    w->err = err;
    w->node.cb = waiter_fire;
    tpio__call_soon_node(s->loop, &w->node);
}

static void waiter_cancel(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct waiter *w = arg;
    struct waiter **pp = &w->server->waiters;
    while (*pp != w)
        pp = &(*pp)->next;
    *pp = w->next;
    w->req = 0; /* retired by the cancel */
    schedule_waiter(w->server, w, -ECANCELED);
}

static void wakeup(tpio_server_t *s)
{
    s->woken = true;
    struct waiter *w = s->waiters;
    s->waiters = NULL;
    while (w) {
        struct waiter *next = w->next;
        schedule_waiter(s, w, 0);
        w = next;
    }
}

/* A connection of the set was lost. */
static void conn_removed(struct tpio__tset *set, tpio_transport_t *t)
{
    (void)t;
    tpio_server_t *s = tpio_container_of(set, struct tpio_server, conns);
    if (s->closed && set->count == 0)
        wakeup(s);
    s->refs++;
    server_unref(s); /* frees it if that was the last thing holding it */
}

/* ---- accepting ---------------------------------------------------------------- */

/* Accepting is waiting for readiness and calling accept4, or (io_uring)
 * one multishot accept that the kernel does itself. */
static void accept_ready(tpio_loop_t *loop, struct tpio__io *io, uint32_t events);
static void accept_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                        bool more);

static int listener_start(tpio_loop_t *loop, struct listener *l)
{
    if (!tpio__backend_has_ops(loop->backend))
        return tpio__watch(loop, &l->io, TPIO__IN);
    if (tpio__op_busy(&l->aop))
        return 0;
    return tpio__op_accept(loop->backend, &l->aop, l->io.fd, accept_done);
}

/* At once: the socket is closed next, and the kernel must have let go. */
static void listener_stop(tpio_loop_t *loop, struct listener *l)
{
    tpio__op_drop(loop->backend, &l->aop);
    tpio__watch(loop, &l->io, 0);
}

static void listener_retry(tpio_loop_t *loop, void *arg)
{
    struct listener *l = arg;
    l->retry = 0;
    if (l->server->serving)
        listener_start(loop, l);
}

/* An accept failed with errno err (not EAGAIN): descriptor exhaustion
 * pauses accepting for a while, as asyncio does; the rest is reported. */
static void accept_failed(tpio_loop_t *loop, struct listener *l, int err)
{
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        /* Linux keeps reporting the socket readable: stop watching it for a
         * while instead of spinning (without a timer to resume, keep
         * watching: spinning beats deafness). Before the report: a handler
         * that closes the server cancels the timer with it. */
        if (l->retry ||
            tpio_loop_call_later(loop, TPIO__ACCEPT_RETRY_DELAY, listener_retry, l, &l->retry) == 0)
            listener_stop(loop, l);
        tpio__report(loop, "accept() out of system resource", -err, NULL, NULL, l->server,
                     l->io.fd);
    } else {
        tpio__report(loop, "accept() failed", -err, NULL, NULL, l->server, l->io.fd);
    }
}

/* A new connection's descriptor (non-blocking already) becomes a transport. */
static void accepted(tpio_loop_t *loop, struct listener *l, int fd, const struct sockaddr *peer,
                     socklen_t plen)
{
    tpio_server_t *s = l->server;
    tpio__sock_tune(fd, l->kind); /* the kind may want more options */
    struct tpio__conn conn = {s->factory, s->factory_arg, NULL, NULL, &s->conns, 0};
    int rc = s->ctor->build(s->ctor, loop, fd, l->kind, peer, plen, &conn);
    if (rc < 0) {
        if (rc != -ECONNABORTED) /* a refusal just drops the connection */
            tpio__report(loop, "Error accepting a connection", rc, NULL, NULL, s, fd);
        close(fd);
    }
}

static void accept_ready(tpio_loop_t *loop, struct tpio__io *io, uint32_t events)
{
    (void)events;
    struct listener *l = tpio_container_of(io, struct listener, io);
    tpio_server_t *s = l->server;
    s->refs++; /* the factory may close the server */
    /* At most backlog connections per event, as asyncio: other listeners
     * and connections get their turn. */
    for (int i = 0; i < s->backlog && s->serving; i++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        int fd = accept4(io->fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err != EAGAIN && err != EINTR && err != ECONNABORTED)
                accept_failed(loop, l, err);
            break;
        }
        accepted(loop, l, fd, (struct sockaddr *)&peer, plen);
    }
    server_unref(s);
}

/* The kernel's accept: a connection per completion, each its own turn in
 * the batch. An error ends the multishot accept; it starts again unless
 * accepting is paused (retry). */
static void accept_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                        bool more)
{
    (void)data;
    struct listener *l = tpio_container_of(op, struct listener, aop);
    tpio_server_t *s = l->server;
    s->refs++;
    if (res >= 0) {
        if (s->serving)
            accepted(loop, l, res, NULL, 0); /* the transport asks the peer's address */
        else
            close(res);
    } else if (res != -ECANCELED && res != -EAGAIN && res != -EINTR && res != -ECONNABORTED) {
        accept_failed(loop, l, -res);
    }
    if (!more && s->serving && !l->retry && !tpio__op_busy(&l->aop))
        listener_start(loop, l);
    server_unref(s);
}

/* Shutdown ends a server: it stops serving and its connections end. */
static void server_end(struct tpio__list *item, bool abort)
{
    tpio_server_t *s = tpio_container_of(item, struct tpio_server, owned);
    s->refs++; /* closing may drop the last other reference */
    tpio_server_close(s);
    if (abort)
        tpio_server_abort_clients(s);
    else
        tpio_server_close_clients(s);
    server_unref(s);
}

/* ---- creating -------------------------------------------------------------------- */

/* Undo tpio__server_new's work on failure: the descriptors stay the
 * caller's, as they were. */
static int server_undo(tpio_server_t *s, size_t nclaimed, int err)
{
    for (size_t i = 0; i < nclaimed; i++)
        tpio__fd_release(s->loop, s->ls[i].io.fd);
    tpio__ctor_release(s->ctor);
    tpio__free(s->unlink_path);
    tpio__free(s->ls);
    tpio__free(s);
    return err;
}

int tpio__server_new(tpio_loop_t *loop, const struct tpio__ctor *ctor,
                     tpio_protocol_factory_t factory, void *factory_arg, const int *fds,
                     size_t nfds, int backlog, bool start, const char *unlink_path,
                     tpio_server_t **out)
{
    tpio_server_t *s = tpio__calloc(1, sizeof *s);
    struct listener *ls = s ? tpio__calloc(nfds, sizeof *ls) : NULL;
    char *path = s && unlink_path ? tpio__strdup(unlink_path) : NULL;
    if (!s || !ls || (unlink_path && !path)) {
        tpio__ctor_release(ctor);
        tpio__free(s);
        tpio__free(ls);
        tpio__free(path);
        return -ENOMEM;
    }
    struct stat st;
    if (path && stat(path, &st) == 0) {
        s->path_dev = st.st_dev;
        s->path_ino = st.st_ino;
        s->unlink_path = path;
    } else {
        tpio__free(path);
    }
    s->loop = loop;
    s->ctor = ctor;
    s->factory = factory;
    s->factory_arg = factory_arg;
    s->backlog = backlog;
    s->refs = 1;
    s->ls = ls;
    s->nls = nfds;
    tpio__tset_init(&s->conns, conn_removed);
    for (size_t i = 0; i < nfds; i++) {
        tpio__io_init(&ls[i].io, fds[i], accept_ready);
        int rc = tpio__fd_claim_new(loop, fds[i]); /* the user's were checked */
        if (rc < 0)
            return server_undo(s, i, rc);
    }
    /* listen() waits for start_serving, as asyncio's does: until then a
     * client is refused, not queued unanswered. */
    if (start) {
        int rc = tpio_server_start_serving(s);
        if (rc < 0)
            return server_undo(s, nfds, rc);
    }
    for (size_t i = 0; i < nfds; i++) {
        /* Sockets given by the user become ours: non-blocking, like accepted. */
        tpio__set_nonblock(fds[i]);
        ls[i].server = s;
        ls[i].kind = tpio__sock_kind(fds[i]);
    }
    tpio__loop_own(loop, TPIO__OWNED_SERVERS, &s->owned, server_end);
    tpio__loop_hold(loop);
    *out = s;
    return 0;
}

/* tpio_server_opts_t as of 0.2 (0.3 added tls). */
#define SERVER_OPTS_V1 offsetof(tpio_server_opts_t, tls)

int tpio_loop_create_server(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                            void *factory_arg, const tpio_server_opts_t *opts,
                            tpio_server_t **out)
{
    if (!loop || !factory || !opts || !out)
        return -EINVAL;
    tpio_server_opts_t o;
    int rc = TPIO__OPTS_COPY(&o, opts, SERVER_OPTS_V1);
    if (rc < 0)
        return rc;
    int start = tpio__flag(o.start_serving, true);
    if (o.backlog < 0 || (o.nhosts && !o.hosts) || (o.nsocks && !o.socks) || start < 0 ||
        tpio__flag(o.reuse_address, true) < 0 || tpio__flag(o.reuse_port, false) < 0)
        return -EINVAL;
    if (o.nsocks && (o.host || o.nhosts))
        return -EINVAL; /* asyncio: host/port and sock are mutually exclusive */
    int backlog = o.backlog ? o.backlog : TPIO__DEFAULT_BACKLOG;
    if (o.nsocks) {
        for (size_t i = 0; i < o.nsocks; i++) {
            rc = tpio__sock_check(o.socks[i], SOCK_STREAM);
            if (rc == 0)
                rc = tpio__fd_check(loop, o.socks[i]);
            if (rc)
                return rc;
        }
    }
    const struct tpio__ctor *ctor;
    if ((rc = tpio__ctor_for(o.tls, true, NULL, &ctor)) < 0)
        return rc;
    if (o.nsocks)
        return tpio__server_new(loop, ctor, factory, factory_arg, o.socks, o.nsocks, backlog,
                                start, NULL, out);
    int *fds = NULL;
    size_t n = 0;
    rc = tpio__bind_hosts(&o, &fds, &n);
    if (rc == 0)
        rc = tpio__server_new(loop, ctor, factory, factory_arg, fds, n, backlog, start, NULL,
                              out);
    else
        tpio__ctor_release(ctor);
    if (rc)
        for (size_t i = 0; i < n; i++)
            close(fds[i]);
    tpio__free(fds);
    return rc;
}

/* ---- the Server object ------------------------------------------------------------ */

int tpio_server_start_serving(tpio_server_t *s)
{
    if (!s)
        return -EINVAL;
    if (s->closed)
        return -EBADF;
    if (s->serving)
        return 0;
    if (!s->listening) {
        for (size_t i = 0; i < s->nls; i++)
            if (listen(s->ls[i].io.fd, s->backlog) < 0)
                return -errno;
        s->listening = true;
    }
    for (size_t i = 0; i < s->nls; i++) {
        int rc = listener_start(s->loop, &s->ls[i]);
        if (rc < 0) {
            for (size_t j = 0; j < i; j++)
                listener_stop(s->loop, &s->ls[j]);
            return rc;
        }
    }
    s->serving = true;
    return 0;
}

int tpio_server_is_serving(const tpio_server_t *s, bool *serving)
{
    if (!s || !serving)
        return -EINVAL;
    *serving = s->serving;
    return 0;
}

static void drop_user_ref(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    server_unref(arg);
}

int tpio_server_close(tpio_server_t *s)
{
    if (!s)
        return -EINVAL;
    if (s->closed)
        return 0;
    s->closed = true;
    s->conns.closed = true;
    s->serving = false;
    for (size_t i = 0; i < s->nls; i++) {
        listener_stop(s->loop, &s->ls[i]);
        if (s->ls[i].retry)
            tpio_loop_cancel(s->loop, s->ls[i].retry);
        tpio__fd_release(s->loop, s->ls[i].io.fd);
        close(s->ls[i].io.fd);
    }
    s->nls = 0;
    if (s->unlink_path) {
        /* Only if the path still names our socket (asyncio 3.13 cleanup). */
        struct stat st;
        if (stat(s->unlink_path, &st) == 0 && st.st_dev == s->path_dev &&
            st.st_ino == s->path_ino)
            unlink(s->unlink_path);
    }
    if (s->conns.count == 0)
        wakeup(s);
    /* The caller may still use s in this iteration (close, then wait_closed). */
    if (tpio_loop_call_soon(s->loop, drop_user_ref, s, NULL) < 0)
        server_unref(s); /* connections (if any) keep it alive */
    return 0;
}

int tpio_server_wait_closed(tpio_server_t *s, tpio_done_cb_t cb, void *arg,
                            tpio_handle_t *request)
{
    if (!s || !cb)
        return -EINVAL;
    struct waiter *w = tpio__calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->server = s;
    w->cb = cb;
    w->arg = arg;
    if (s->woken) {
        schedule_waiter(s, w, 0);
    } else {
        int rc = tpio__request_new(s->loop, waiter_cancel, w, &w->req);
        if (rc < 0) {
            tpio__free(w);
            return rc;
        }
        tpio__request_keep_on_shutdown(s->loop, w->req);
        /* FIFO: waiters are woken in the order they asked, as in asyncio */
        struct waiter **tail = &s->waiters;
        while (*tail)
            tail = &(*tail)->next;
        w->next = NULL;
        *tail = w;
    }
    s->refs++;
    if (request)
        *request = w->req;
    return 0;
}

int tpio_server_close_clients(tpio_server_t *s)
{
    if (!s)
        return -EINVAL;
    tpio__tset_each(&s->conns, tpio_transport_close);
    return 0;
}

int tpio_server_abort_clients(tpio_server_t *s)
{
    if (!s)
        return -EINVAL;
    tpio__tset_each(&s->conns, tpio_transport_abort);
    return 0;
}

int tpio_server_get_socket_count(const tpio_server_t *s, size_t *count)
{
    if (!s || !count)
        return -EINVAL;
    *count = s->nls;
    return 0;
}

int tpio_server_get_socket(const tpio_server_t *s, size_t i, int *fd)
{
    if (!s || !fd)
        return -EINVAL;
    if (i >= s->nls)
        return -ENOENT;
    *fd = s->ls[i].io.fd;
    return 0;
}

int tpio_server_get_sockname(const tpio_server_t *s, size_t i, struct sockaddr_storage *addr,
                             socklen_t *len)
{
    if (!s || !addr || !len)
        return -EINVAL;
    if (i >= s->nls)
        return -ENOENT;
    return getsockname(s->ls[i].io.fd, (struct sockaddr *)addr, len) < 0 ? -errno : 0;
}

int tpio_server_get_loop(const tpio_server_t *s, tpio_loop_t **loop)
{
    if (!s || !loop)
        return -EINVAL;
    *loop = s->loop;
    return 0;
}

int tpio_server_get_connection_count(const tpio_server_t *s, size_t *count)
{
    if (!s || !count)
        return -EINVAL;
    *count = s->conns.count;
    return 0;
}
