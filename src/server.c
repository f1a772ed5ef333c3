/* create_server and the Server object: listening sockets, bounded accepting,
 * recovery from descriptor exhaustion, and the lifetime of the object. */
#include "internal.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct listener {
    struct tpio__io io;
    tpio_server_t *server;
    tpio_handle_t retry; /* pending accept retry after EMFILE, or 0 */
    int kind;            /* of the accepted sockets: known once, not per accept */
};

struct waiter {
    struct waiter *next;
    tpio_server_t *server;
    tpio_callback_t cb;
    void *arg;
};

struct tpio_server {
    tpio_loop_t *loop;
    tpio_protocol_factory_t factory;
    void *factory_arg;
    struct listener *ls;
    size_t nls;
    int backlog;
    bool serving;
    bool closed;
    bool woken; /* closed with no connections left: wait_closed fires at once */
    int refs;   /* the user's (until close), one per connection, one per waiter */
    struct tpio__list conns;
    size_t nconns;
    struct waiter *waiters;
    char *unlink_path; /* Unix socket file to remove at close */
    dev_t path_dev;
    ino_t path_ino;
};

static void server_unref(tpio_server_t *s)
{
    if (--s->refs > 0)
        return;
    s->loop->nservers--;
    free(s->unlink_path);
    free(s->ls);
    free(s);
}

static void waiter_fire(tpio_loop_t *loop, void *arg)
{
    struct waiter *w = arg;
    w->cb(loop, w->arg);
    server_unref(w->server);
    free(w);
}

static void schedule_waiter(tpio_server_t *s, struct waiter *w)
{
    /* Without a slot for it, fire now rather than never (this runs from the
     * loop or from tpio_server_close, never from wait_closed itself). */
    if (tpio_call_soon(s->loop, waiter_fire, w, NULL) < 0)
        waiter_fire(s->loop, w);
}

static void wakeup(tpio_server_t *s)
{
    s->woken = true;
    struct waiter *w = s->waiters;
    s->waiters = NULL;
    while (w) {
        struct waiter *next = w->next;
        schedule_waiter(s, w);
        w = next;
    }
}

void tpio__server_attach(tpio_server_t *s, tpio_transport_t *t)
{
    t->server = s;
    tpio__list_add_tail(&s->conns, &t->server_link);
    s->nconns++;
    s->refs++;
}

void tpio__server_detach(tpio_server_t *s, tpio_transport_t *t)
{
    tpio__list_del(&t->server_link);
    s->nconns--;
    if (s->closed && s->nconns == 0)
        wakeup(s);
    server_unref(s);
}

/* ---- accepting ---------------------------------------------------------------- */

static void listener_retry(tpio_loop_t *loop, void *arg)
{
    struct listener *l = arg;
    (void)loop;
    l->retry = 0;
    if (l->server->serving)
        tpio__io_set(l->server->loop, &l->io, TPIO__IN);
}

static void accept_ready(tpio_loop_t *loop, struct tpio__io *io, uint32_t events)
{
    (void)events;
    struct listener *l = tpio_container_of(io, struct listener, io);
    tpio_server_t *s = l->server;
    s->refs++; /* the factory may close the server */
    for (int i = 0; i < s->backlog && s->serving; i++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        int fd = accept4(io->fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err == EAGAIN || err == EINTR || err == ECONNABORTED)
                break;
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
                /* Linux keeps reporting the socket readable: stop watching it
                 * for a while instead of spinning, as asyncio does. */
                tpio__report(loop, "accept() out of system resource", -err, NULL, s, io->fd);
                tpio__io_set(loop, io, 0);
                if (!l->retry)
                    tpio_call_later(loop, TPIO__ACCEPT_RETRY_DELAY, listener_retry, l, &l->retry);
            } else {
                tpio__report(loop, "accept() failed", -err, NULL, s, io->fd);
            }
            break;
        }
        /* accept4 made it non-blocking; only TCP needs one more option */
        if (l->kind == TPIO_TRANSPORT_TCP) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        int kind = l->kind;
        tpio_protocol_t *p = s->factory(s->factory_arg);
        if (!p || !p->ops) {
            close(fd);
            continue;
        }
        /* A factory that closed the server has already released its
         * wait_closed waiters: the connection then lives on unattached. */
        if (!tpio__stream_new_peer(loop, fd, (tpio_transport_kind_t)kind, p,
                                   s->closed ? NULL : s, (struct sockaddr *)&peer, plen)) {
            tpio__report(loop, "out of memory accepting a connection", -ENOMEM, NULL, s, fd);
            close(fd);
        }
    }
    server_unref(s);
}

/* ---- creating -------------------------------------------------------------------- */

static int listen_socket(const struct addrinfo *ai, const tpio_server_opts_t *o, int *out)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (o->reuse_address != TPIO_OFF &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        goto fail;
    if (o->reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto fail;
    /* One socket per family, as asyncio: an IPv6 socket must not also claim
     * the IPv4 port. */
    if (ai->ai_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0)
        goto fail;
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
        goto fail;
    *out = fd;
    return 0;
fail:;
    int err = -errno;
    close(fd);
    return err;
}

static int add_fd(int **fds, size_t *n, size_t *cap, int fd)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 4;
        int *f = realloc(*fds, c * sizeof *f);
        if (!f)
            return -ENOMEM;
        *fds = f;
        *cap = c;
    }
    (*fds)[(*n)++] = fd;
    return 0;
}

static bool seen_addr(const struct addrinfo *all, const struct addrinfo *upto)
{
    for (const struct addrinfo *a = all; a != upto; a = a->ai_next)
        if (a->ai_addrlen == upto->ai_addrlen && a->ai_family == upto->ai_family &&
            memcmp(a->ai_addr, upto->ai_addr, a->ai_addrlen) == 0)
            return true;
    return false;
}

/* Bind every address of every host; on any error undo everything. */
static int bind_hosts(const tpio_server_opts_t *o, int **fds, size_t *n)
{
    const char *one[1] = {o->host};
    const char *const *hosts = o->nhosts ? o->hosts : one;
    size_t nhosts = o->nhosts ? o->nhosts : 1;
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)o->port);
    struct addrinfo hints = {
        .ai_family = o->family,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_PASSIVE | o->flags,
    };
    size_t cap = 0;
    int rc = 0;
    for (size_t h = 0; h < nhosts && rc == 0; h++) {
        if (o->nhosts && !hosts[h]) {
            rc = -EINVAL;
            break;
        }
        struct addrinfo *res = NULL;
        rc = tpio__getaddrinfo(hosts[h], port, &hints, &res);
        for (struct addrinfo *ai = res; ai && rc == 0; ai = ai->ai_next) {
            if (seen_addr(res, ai))
                continue;
            int fd = -1;
            rc = listen_socket(ai, o, &fd);
            if (rc == 0 && (rc = add_fd(fds, n, &cap, fd)) < 0)
                close(fd);
        }
        if (res)
            freeaddrinfo(res);
    }
    if (rc == 0 && *n == 0)
        rc = -EADDRNOTAVAIL;
    return rc;
}

static int check_stream_socket(int fd)
{
    struct stat st;
    int type = 0;
    socklen_t len = sizeof type;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISSOCK(st.st_mode))
        return -ENOTSOCK;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return -errno;
    return type == SOCK_STREAM ? 0 : -EPROTOTYPE;
}

int tpio__server_new(tpio_loop_t *loop, tpio_protocol_factory_t factory, void *factory_arg,
                     const int *fds, size_t nfds, int backlog, bool start,
                     const char *unlink_path, tpio_server_t **out)
{
    for (size_t i = 0; i < nfds; i++)
        if (listen(fds[i], backlog) < 0)
            return -errno;
    tpio_server_t *s = calloc(1, sizeof *s);
    struct listener *ls = s ? calloc(nfds, sizeof *ls) : NULL;
    char *path = s && unlink_path ? strdup(unlink_path) : NULL;
    if (!s || !ls || (unlink_path && !path)) {
        free(s);
        free(ls);
        free(path);
        return -ENOMEM;
    }
    struct stat st;
    if (path && stat(path, &st) == 0) {
        s->path_dev = st.st_dev;
        s->path_ino = st.st_ino;
        s->unlink_path = path;
    } else {
        free(path);
    }
    s->loop = loop;
    s->factory = factory;
    s->factory_arg = factory_arg;
    s->backlog = backlog;
    s->refs = 1;
    s->ls = ls;
    s->nls = nfds;
    tpio__list_init(&s->conns);
    for (size_t i = 0; i < nfds; i++) {
        /* Sockets given by the user become ours: non-blocking, like accepted. */
        int fl = fcntl(fds[i], F_GETFL);
        if (fl >= 0 && !(fl & O_NONBLOCK))
            fcntl(fds[i], F_SETFL, fl | O_NONBLOCK);
        tpio__io_init(&ls[i].io, fds[i], accept_ready);
        ls[i].server = s;
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        ls[i].kind = TPIO_TRANSPORT_STREAM_SOCKET;
        if (getsockname(fds[i], (struct sockaddr *)&ss, &len) == 0) {
            if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)
                ls[i].kind = TPIO_TRANSPORT_TCP;
            else if (ss.ss_family == AF_UNIX)
                ls[i].kind = TPIO_TRANSPORT_UNIX;
        }
    }
    loop->nservers++;
    *out = s;
    if (start)
        tpio_server_start_serving(s);
    return 0;
}

int tpio_create_server(tpio_loop_t *loop, tpio_protocol_factory_t factory, void *factory_arg,
                       const tpio_server_opts_t *o, tpio_server_t **out)
{
    if (!loop || !factory || !o || !out || o->backlog < 0 || (o->nhosts && !o->hosts) ||
        (o->nsocks && !o->socks))
        return -EINVAL;
    if (o->nsocks && (o->host || o->nhosts))
        return -EINVAL; /* asyncio: host/port and sock are mutually exclusive */
    int backlog = o->backlog ? o->backlog : TPIO__DEFAULT_BACKLOG;
    bool start = o->start_serving != TPIO_OFF;
    if (o->nsocks) {
        for (size_t i = 0; i < o->nsocks; i++) {
            int rc = check_stream_socket(o->socks[i]);
            if (rc)
                return rc;
        }
        return tpio__server_new(loop, factory, factory_arg, o->socks, o->nsocks, backlog,
                                start, NULL, out);
    }
    int *fds = NULL;
    size_t n = 0;
    int rc = bind_hosts(o, &fds, &n);
    if (rc == 0)
        rc = tpio__server_new(loop, factory, factory_arg, fds, n, backlog, start, NULL, out);
    if (rc)
        for (size_t i = 0; i < n; i++)
            close(fds[i]);
    free(fds);
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
    for (size_t i = 0; i < s->nls; i++) {
        int rc = tpio__io_set(s->loop, &s->ls[i].io, TPIO__IN);
        if (rc < 0) {
            for (size_t j = 0; j < i; j++)
                tpio__io_set(s->loop, &s->ls[j].io, 0);
            return rc;
        }
    }
    s->serving = true;
    return 0;
}

bool tpio_server_is_serving(const tpio_server_t *s) { return s && s->serving; }

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
    s->serving = false;
    for (size_t i = 0; i < s->nls; i++) {
        tpio__io_set(s->loop, &s->ls[i].io, 0);
        if (s->ls[i].retry)
            tpio_cancel(s->loop, s->ls[i].retry);
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
    if (s->nconns == 0)
        wakeup(s);
    /* The caller may still use s in this iteration (close, then wait_closed). */
    if (tpio_call_soon(s->loop, drop_user_ref, s, NULL) < 0)
        server_unref(s); /* connections (if any) keep it alive */
    return 0;
}

int tpio_server_wait_closed(tpio_server_t *s, tpio_callback_t cb, void *arg)
{
    if (!s || !cb)
        return -EINVAL;
    struct waiter *w = malloc(sizeof *w);
    if (!w)
        return -ENOMEM;
    w->server = s;
    w->cb = cb;
    w->arg = arg;
    s->refs++;
    if (s->woken) {
        int rc = tpio_call_soon(s->loop, waiter_fire, w, NULL);
        if (rc < 0) {
            s->refs--;
            free(w);
            return rc;
        }
    } else {
        /* FIFO: waiters are woken in the order they asked, as in asyncio */
        struct waiter **tail = &s->waiters;
        while (*tail)
            tail = &(*tail)->next;
        w->next = NULL;
        *tail = w;
    }
    return 0;
}

int tpio_server_close_clients(tpio_server_t *s)
{
    if (!s)
        return -EINVAL;
    struct tpio__list *it;
    for (it = s->conns.next; it != &s->conns; it = it->next)
        tpio_close(tpio_container_of(it, struct tpio_transport, server_link));
    return 0;
}

int tpio_server_abort_clients(tpio_server_t *s)
{
    if (!s)
        return -EINVAL;
    struct tpio__list *it;
    for (it = s->conns.next; it != &s->conns; it = it->next)
        tpio_abort(tpio_container_of(it, struct tpio_transport, server_link));
    return 0;
}

size_t tpio_server_socket_count(const tpio_server_t *s) { return s ? s->nls : 0; }

int tpio_server_socket(const tpio_server_t *s, size_t i)
{
    if (!s)
        return -EINVAL;
    return i < s->nls ? s->ls[i].io.fd : -ENOENT;
}

int tpio_server_sockname(const tpio_server_t *s, size_t i, struct sockaddr_storage *addr,
                         socklen_t *len)
{
    if (!s || !addr || !len)
        return -EINVAL;
    if (i >= s->nls)
        return -ENOENT;
    return getsockname(s->ls[i].io.fd, (struct sockaddr *)addr, len) < 0 ? -errno : 0;
}

tpio_loop_t *tpio_server_loop(const tpio_server_t *s) { return s ? s->loop : NULL; }

size_t tpio_server_connection_count(const tpio_server_t *s) { return s ? s->nconns : 0; }
