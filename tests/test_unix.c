/*
 * Unix stream sockets: create_unix_server / create_unix_connection on a path
 * and in the abstract namespace, the socket file's life (stale removal,
 * -EADDRINUSE, removal at close), connection errors, argument checks,
 * use_sock and connect_accepted_socket. What Unix sockets share with TCP
 * (half-close both ways, close_clients / abort_clients / wait_closed, flow
 * control, the transport's calls) runs on both kinds in test_server.c,
 * test_stream.c and test_flow.c.
 *
 * Every socket path lives in a fresh mkdtemp() directory (th_fx_dir()) that
 * must be empty at the end. Nothing sleeps to wait for an event.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define TMO 10.0

static th_proto_t *TP(tpio_protocol_t *p) { return tpio_container_of(p, th_proto_t, base); }

/* ---- fixtures --------------------------------------------------------------- */

/* The suite's fixture, on top of th_fx (the loop; error reports: none
 * expected; th_fx_dir(), which must be empty at the end): set up by suite
 * init, checked and torn down by fini. */
typedef struct fx {
    char path[256];        /* s.sock in th_fx_dir() */
    /* server side */
    th_proto_t stmpl;
    th_proto_t *sp[8];
    size_t ns;
    size_t slost;
    /* client side */
    th_proto_t ctmpl;
    size_t cfactory_calls;
} fx_t;

static fx_t f;

/* Server-side protocols are freed by fini, once the loop closed. */
static tpio_protocol_t *srv_factory(void *arg)
{
    fx_t *f = arg;
    cr_assert_lt(f->ns, 8);
    tpio_protocol_t *bp = th_factory(&f->stmpl);
    f->sp[f->ns++] = th_fx_own(TP(bp));
    return bp;
}

static tpio_protocol_t *cli_factory(void *arg)
{
    fx_t *f = arg;
    f->cfactory_calls++;
    return th_factory(&f->ctmpl);
}

static void fx_init(void)
{
    th_fx_init();
    memset(&f, 0, sizeof f);
    snprintf(f.path, sizeof f.path, "%s/s.sock", th_fx_dir());
    f.stmpl.base.ops = &th_proto_ops;
    f.stmpl.lost_counter = &f.slost;
    f.ctmpl.base.ops = &th_proto_ops;
}

TestSuite(unix_stream, .init = fx_init, .fini = th_fx_fini);

static bool run_until_rx(tpio_loop_t *loop, th_proto_t *p, size_t n, double timeout)
{
    double end = th_time(loop) + timeout;
    while (p->rxlen < n && th_time(loop) < end)
        tpio_loop_run_once(loop, 0.01);
    return p->rxlen >= n;
}

static void close_server(tpio_server_t *s)
{
    bool wc = false;
    cr_assert_eq(tpio_server_close(s), 0);
    cr_assert_eq(tpio_server_wait_closed(s, th_done_flag, &wc, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &wc, TMO));
}

static bool is_unnamed(const struct sockaddr_storage *ss, socklen_t len)
{
    return ss->ss_family == AF_UNIX && len == offsetof(struct sockaddr_un, sun_path);
}

static void assert_path_addr(const struct sockaddr_storage *ss, socklen_t len, const char *path)
{
    const struct sockaddr_un *sun = (const struct sockaddr_un *)ss;
    cr_assert_eq(sun->sun_family, AF_UNIX);
    cr_assert_eq(len, offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1,
                 "addrlen %u", (unsigned)len);
    cr_assert_str_eq(sun->sun_path, path);
}

static void assert_abstract_addr(const struct sockaddr_storage *ss, socklen_t len,
                                 const char *name)
{
    const struct sockaddr_un *sun = (const struct sockaddr_un *)ss;
    size_t n = strlen(name);
    cr_assert_eq(sun->sun_family, AF_UNIX);
    cr_assert_eq(len, offsetof(struct sockaddr_un, sun_path) + 1 + n, "addrlen %u",
                 (unsigned)len);
    cr_assert_eq(sun->sun_path[0], '\0');
    cr_assert_eq(memcmp(sun->sun_path + 1, name, n), 0);
}

/* A plain AF_UNIX socket bound to path and closed without unlink: the
 * socket file stays behind with nobody listening. */
static void make_stale_socket(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    close(fd);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
}

/* Connect a client to f->path (or an abstract name), wait for completion. */
static void connect_client(fx_t *f, const tpio_unix_opts_t *o, th_conn_t *c)
{
    memset(c, 0, sizeof *c);
    cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, cli_factory, f, o, th_on_conn, c, NULL), 0);
    cr_assert_eq(c->calls, 0, "completion ran inside the call");
    cr_assert(th_run_until(th_fx.loop, &c->done, TMO));
    cr_assert_eq(c->calls, 1);
    cr_assert(c->in_loop);
}

/* A server on f.path. */
static tpio_server_t *serve_path(void)
{
    tpio_server_t *s = NULL;
    tpio_unix_opts_t so = {.size = sizeof so, .path = f.path};
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, &so, &s), 0);
    return s;
}

/* A client connected to f.path. */
static void connect_path(th_conn_t *c)
{
    tpio_unix_opts_t co = {.size = sizeof co, .path = f.path};
    connect_client(&f, &co, c);
    cr_assert_eq(c->err, 0);
}

/* The client closes: its connection_lost, then the server side's (the
 * first server-side connection_lost of the test). */
static void client_closes(th_conn_t *c)
{
    bool clost = false;
    c->p->lost_flag = &clost;
    cr_assert_eq(tpio_transport_close(c->t), 0);
    cr_assert(th_run_until(th_fx.loop, &clost, TMO));
    cr_assert(th_run_until_count(th_fx.loop, &f.slost, 1, TMO));
}

/* ---- a server and a client on a path ---------------------------------------- */

Test(unix_stream, path_echo_sequences_and_addresses, .timeout = 30)
{
    f.stmpl.echo = true;
    tpio_server_t *s = serve_path();
    cr_assert(th_is_serving(s));
    cr_assert_eq(th_socket_count(s), 1);
    struct stat st;
    cr_assert_eq(stat(f.path, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));

    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, 0, &ss, &sl), 0);
    assert_path_addr(&ss, sl, f.path);

    th_conn_t c;
    connect_path(&c);
    cr_assert_eq(f.cfactory_calls, 1);
    cr_assert_not_null(c.t);
    cr_assert_str_eq(c.p->events, "made");
    cr_assert_eq(th_kind(c.t), TPIO_TRANSPORT_UNIX);

    /* client: peername is the path, sockname unnamed */
    sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_peername(c.t, &ss, &sl), 0);
    assert_path_addr(&ss, sl, f.path);
    sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_sockname(c.t, &ss, &sl), 0);
    cr_assert(is_unnamed(&ss, sl), "client sockname len %u", (unsigned)sl);
    tpio_extra_t e;
    cr_assert_eq(tpio_transport_get_extra_info(c.t, "socket", &e), 0);
    cr_assert_eq(e.type, TPIO_EXTRA_FD);
    cr_assert_eq(e.fd, th_fd(c.t));
    cr_assert_eq(tpio_transport_get_extra_info(c.t, "pipe", &e), -ENOENT);

    const char msg[] = "hello over a unix socket";
    cr_assert_eq(tpio_transport_write(c.t, msg, sizeof msg - 1), 0);
    cr_assert(run_until_rx(th_fx.loop, c.p, sizeof msg - 1, TMO));
    cr_assert_eq(c.p->rxlen, sizeof msg - 1);
    cr_assert_eq(memcmp(c.p->rx, msg, sizeof msg - 1), 0);

    cr_assert_eq(f.ns, 1);
    th_proto_t *sp = f.sp[0];
    cr_assert_not_null(sp->t);
    cr_assert_eq(th_kind(sp->t), TPIO_TRANSPORT_UNIX);
    cr_assert_eq(th_conn_count(s), 1);
    /* server side: sockname is the path, peername unnamed */
    sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_sockname(sp->t, &ss, &sl), 0);
    assert_path_addr(&ss, sl, f.path);
    sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_peername(sp->t, &ss, &sl), 0);
    cr_assert(is_unnamed(&ss, sl), "server peername len %u", (unsigned)sl);
    cr_assert_eq(sp->rxlen, sizeof msg - 1);
    cr_assert_eq(memcmp(sp->rx, msg, sizeof msg - 1), 0);

    client_closes(&c);
    cr_assert_str_eq(c.p->events, "made,data,lost:0");
    cr_assert_str_eq(sp->events, "made,data,eof,lost:0");
    cr_assert_eq(th_conn_count(s), 0);
    th_proto_free(c.p);

    close_server(s);
    cr_assert_eq(stat(f.path, &st), -1);
    cr_assert_eq(errno, ENOENT);
}

Test(unix_stream, abstract_namespace_creates_no_file, .timeout = 30)
{
    f.stmpl.echo = true;
    /* The name looks like a path in our empty directory: if it were bound as
     * a filesystem path, the file would appear there. */
    char name[200];
    snprintf(name, sizeof name, "%s/abstract-%d", th_fx_dir(), (int)getpid());
    tpio_server_t *s = NULL;
    tpio_unix_opts_t so = {.size = sizeof so, .path = name, .abstract = TPIO_ON};
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, &so, &s), 0);
    struct stat st;
    cr_assert_eq(stat(name, &st), -1);
    cr_assert_eq(errno, ENOENT);

    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, 0, &ss, &sl), 0);
    assert_abstract_addr(&ss, sl, name);

    th_conn_t c;
    tpio_unix_opts_t co = {.size = sizeof co, .path = name, .abstract = TPIO_ON};
    connect_client(&f, &co, &c);
    cr_assert_eq(c.err, 0);
    cr_assert_eq(th_kind(c.t), TPIO_TRANSPORT_UNIX);
    sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_peername(c.t, &ss, &sl), 0);
    assert_abstract_addr(&ss, sl, name);

    cr_assert_eq(tpio_transport_write(c.t, "abc", 3), 0);
    cr_assert(run_until_rx(th_fx.loop, c.p, 3, TMO));
    cr_assert_eq(memcmp(c.p->rx, "abc", 3), 0);
    cr_assert_eq(f.ns, 1);
    sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_sockname(f.sp[0]->t, &ss, &sl), 0);
    assert_abstract_addr(&ss, sl, name);

    /* A plain connect to a filesystem path of the same name fails. */
    th_conn_t c2;
    tpio_unix_opts_t co2 = {.size = sizeof co2, .path = name};
    connect_client(&f, &co2, &c2);
    cr_assert_eq(c2.err, -ENOENT);
    cr_assert_null(c2.t);

    client_closes(&c);
    cr_assert_str_eq(c.p->events, "made,data,lost:0");
    cr_assert_str_eq(f.sp[0]->events, "made,data,eof,lost:0");
    th_proto_free(c.p);
    cr_assert_eq(f.cfactory_calls, 1);

    close_server(s);
    /* The name is free again once the server closed. */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    memcpy(sun.sun_path + 1, name, strlen(name));
    cr_assert_eq(bind(fd, (struct sockaddr *)&sun,
                      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name))),
                 0, "%s", strerror(errno));
    close(fd);
}

Test(unix_stream, abstract_name_lengths, .timeout = 10)
{
    /* 107 bytes + the leading NUL fill sun_path exactly: allowed. */
    char name[200];
    int n = snprintf(name, sizeof name, "tpio-abs-%d-", (int)getpid());
    memset(name + n, 'x', 107 - (size_t)n);
    name[107] = '\0';
    tpio_server_t *s = NULL;
    tpio_unix_opts_t so = {.size = sizeof so, .path = name, .abstract = TPIO_ON};
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, &so, &s), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, 0, &ss, &sl), 0);
    assert_abstract_addr(&ss, sl, name);
    close_server(s);
    /* 108 bytes do not fit. */
    name[107] = 'y';
    name[108] = '\0';
    s = NULL;
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, &so, &s), -ENAMETOOLONG);
    cr_assert_null(s);
    th_conn_t c = {0};
    cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, cli_factory, &f, &so, th_on_conn, &c, NULL),
                 -ENAMETOOLONG);
    th_run_timer(th_fx.loop, 0.01, TMO);
    cr_assert_eq(c.calls, 0);
}

/* ---- the socket file -------------------------------------------------------------- */

Test(unix_stream, stale_socket_file_is_removed, .timeout = 20)
{
    make_stale_socket(f.path);
    tpio_server_t *s = serve_path();

    th_conn_t c;
    connect_path(&c);
    cr_assert(th_run_until_count(th_fx.loop, &f.ns, 1, TMO));
    client_closes(&c);
    cr_assert_str_eq(c.p->events, "made,lost:0");
    cr_assert_str_eq(f.sp[0]->events, "made,eof,lost:0");
    th_proto_free(c.p);
    close_server(s);
}

Test(unix_stream, regular_file_at_path_is_eaddrinuse_and_untouched, .timeout = 10)
{
    FILE *fp = fopen(f.path, "w");
    cr_assert_not_null(fp);
    fputs("precious", fp);
    fclose(fp);
    tpio_server_t *s = NULL;
    tpio_unix_opts_t so = {.size = sizeof so, .path = f.path};
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, &so, &s), -EADDRINUSE);
    cr_assert_null(s);
    struct stat st;
    cr_assert_eq(stat(f.path, &st), 0);
    cr_assert(S_ISREG(st.st_mode));
    cr_assert_eq(st.st_size, 8);
    char buf[16] = {0};
    fp = fopen(f.path, "r");
    cr_assert_not_null(fp);
    cr_assert_eq(fread(buf, 1, sizeof buf, fp), 8);
    fclose(fp);
    cr_assert_str_eq(buf, "precious");
    /* A directory there too. */
    unlink(f.path);
    cr_assert_eq(mkdir(f.path, 0700), 0);
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, &so, &s), -EADDRINUSE);
    cr_assert_eq(stat(f.path, &st), 0);
    cr_assert(S_ISDIR(st.st_mode));
    cr_assert_eq(rmdir(f.path), 0);
    cr_assert_eq(f.ns, 0);
}

Test(unix_stream, server_close_removes_its_socket_file, .timeout = 10)
{
    tpio_server_t *s = serve_path();
    struct stat st;
    cr_assert_eq(stat(f.path, &st), 0);
    cr_assert_eq(tpio_server_close(s), 0);
    /* Removed by close itself, not later. */
    cr_assert_eq(stat(f.path, &st), -1);
    cr_assert_eq(errno, ENOENT);
    cr_assert_not(th_is_serving(s));
    cr_assert_eq(th_socket_count(s), 0);
    bool wc = false;
    cr_assert_eq(tpio_server_wait_closed(s, th_done_flag, &wc, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &wc, TMO));
}

Test(unix_stream, server_close_keeps_a_replaced_path, .timeout = 10)
{
    tpio_server_t *s = NULL;
    tpio_unix_opts_t so = {.size = sizeof so, .path = f.path};
    /* Replaced by a regular file. */
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, &so, &s), 0);
    cr_assert_eq(unlink(f.path), 0);
    FILE *fp = fopen(f.path, "w");
    cr_assert_not_null(fp);
    fputs("other", fp);
    fclose(fp);
    close_server(s);
    struct stat st;
    cr_assert_eq(stat(f.path, &st), 0);
    cr_assert(S_ISREG(st.st_mode));
    cr_assert_eq(st.st_size, 5);
    cr_assert_eq(unlink(f.path), 0);

    /* Replaced by another server's socket: the second server's file stays
     * when the first closes, and goes when the second closes. */
    tpio_server_t *s1 = NULL, *s2 = NULL;
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, &so, &s1), 0);
    cr_assert_eq(unlink(f.path), 0);
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, &so, &s2), 0);
    struct stat st2;
    cr_assert_eq(stat(f.path, &st2), 0);
    close_server(s1);
    cr_assert_eq(stat(f.path, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_ino, st2.st_ino);
    /* ... and it still accepts. */
    th_conn_t c;
    connect_path(&c);
    cr_assert(th_run_until_count(th_fx.loop, &f.ns, 1, TMO));
    client_closes(&c);
    th_proto_free(c.p);
    close_server(s2);
    cr_assert_eq(stat(f.path, &st), -1);
    cr_assert_eq(errno, ENOENT);
}

/* ---- connection errors and arguments -------------------------------------------- */

Test(unix_stream, connect_without_listener, .timeout = 10)
{
    tpio_unix_opts_t co = {.size = sizeof co, .path = f.path};
    th_conn_t c;
    /* No file at all. */
    connect_client(&f, &co, &c);
    cr_assert_eq(c.err, -ENOENT, "got %s", tpio_err_name(c.err));
    cr_assert_null(c.t);
    cr_assert_null(c.p);
    /* A stale socket file, nobody listening. */
    make_stale_socket(f.path);
    connect_client(&f, &co, &c);
    cr_assert_eq(c.err, -ECONNREFUSED, "got %s", tpio_err_name(c.err));
    cr_assert_null(c.t);
    cr_assert_eq(f.cfactory_calls, 0);
    cr_assert_eq(unlink(f.path), 0);
    /* Nothing listening on an abstract name. */
    char name[64];
    snprintf(name, sizeof name, "tpio-nobody-%d", (int)getpid());
    tpio_unix_opts_t ca = {.size = sizeof ca, .path = name, .abstract = TPIO_ON};
    connect_client(&f, &ca, &c);
    cr_assert_eq(c.err, -ECONNREFUSED, "got %s", tpio_err_name(c.err));
    cr_assert_eq(f.cfactory_calls, 0);
}

Test(unix_stream, bad_paths, .timeout = 10)
{
    th_conn_t c = {0};
    tpio_server_t *s = NULL;
    char longp[200];
    /* sun_path holds 108 bytes with its NUL: 108 characters are too many. */
    memset(longp, 'a', 108);
    longp[0] = '/';
    longp[108] = '\0';
    tpio_unix_opts_t o = {.size = sizeof o, .path = longp};
    cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, cli_factory, &f, &o, th_on_conn, &c, NULL),
                 -ENAMETOOLONG);
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, &o, &s), -ENAMETOOLONG);
    /* An explicit path_len beyond the limit too. */
    memset(longp, 'b', sizeof longp - 1);
    longp[0] = '/';
    longp[sizeof longp - 1] = '\0';
    o.path_len = 150;
    cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, cli_factory, &f, &o, th_on_conn, &c, NULL),
                 -ENAMETOOLONG);
    /* NULL and empty paths. */
    tpio_unix_opts_t onull = {.size = sizeof onull};
    cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, cli_factory, &f, &onull, th_on_conn, &c, NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, &onull, &s), -EINVAL);
    tpio_unix_opts_t oempty = {.size = sizeof oempty, .path = ""};
    cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, cli_factory, &f, &oempty, th_on_conn, &c, NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, &oempty, &s), -EINVAL);
    /* Missing objects. */
    tpio_unix_opts_t ok = {.size = sizeof ok, .path = f.path};
    cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, cli_factory, &f, NULL, th_on_conn, &c, NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, NULL, &f, &ok, th_on_conn, &c, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, cli_factory, &f, &ok, NULL, &c, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_create_unix_connection(NULL, cli_factory, &f, &ok, th_on_conn, &c, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, NULL, &s), -EINVAL);
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &f, &ok, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, NULL, &f, &ok, &s), -EINVAL);
    cr_assert_null(s);
    struct stat st;
    cr_assert_eq(stat(f.path, &st), -1, "a failed call created the socket file");
    th_run_timer(th_fx.loop, 0.01, TMO);
    cr_assert_eq(c.calls, 0);
    cr_assert_eq(f.cfactory_calls, 0);
    cr_assert_eq(f.ns, 0);
}

/* ---- use_sock and accepted sockets ------------------------------------------------ */

/* Read from a non-blocking plain socket while running the loop. */
static size_t peer_read(tpio_loop_t *loop, int fd, char *buf, size_t want)
{
    size_t got = 0;
    double end = th_time(loop) + TMO;
    while (got < want && th_time(loop) < end) {
        ssize_t n = recv(fd, buf + got, want - got, MSG_DONTWAIT);
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n == 0)
            break;
        tpio_loop_run_once(loop, 0.01);
    }
    return got;
}

/* Exchange one message each way with a plain peer, then the peer closes. */
static void exchange_with_peer(th_conn_t *c, int peer)
{
    char buf[64];
    cr_assert_eq(tpio_transport_write(c->t, "ping", 4), 0);
    cr_assert_eq(peer_read(th_fx.loop, peer, buf, 4), 4);
    cr_assert_eq(memcmp(buf, "ping", 4), 0);
    cr_assert_eq(write(peer, "pong!", 5), 5);
    cr_assert(run_until_rx(th_fx.loop, c->p, 5, TMO));
    cr_assert_eq(memcmp(c->p->rx, "pong!", 5), 0);
    bool lost = false;
    c->p->lost_flag = &lost;
    close(peer);
    cr_assert(th_run_until(th_fx.loop, &lost, TMO));
    cr_assert_str_eq(c->p->events, "made,data,eof,lost:0");
    th_proto_free(c->p);
}

Test(unix_stream, use_sock_socketpair, .timeout = 20)
{
    /* Through tpio_loop_create_unix_connection. */
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    tpio_unix_opts_t o = {.size = sizeof o, .use_sock = TPIO_ON, .sock = sv[0]};
    th_conn_t c;
    connect_client(&f, &o, &c);
    cr_assert_eq(c.err, 0);
    cr_assert_eq(th_kind(c.t), TPIO_TRANSPORT_UNIX);
    cr_assert_eq(th_fd(c.t), sv[0]);
    cr_assert(fcntl(sv[0], F_GETFL) & O_NONBLOCK, "use_sock not made non-blocking");
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_peername(c.t, &ss, &sl), 0);
    cr_assert(is_unnamed(&ss, sl));
    exchange_with_peer(&c, sv[1]);

    /* Through tpio_loop_create_connection(opts.use_sock). */
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    tpio_connect_opts_t copts = {.size = sizeof copts, .use_sock = TPIO_ON, .sock = sv[0]};
    memset(&c, 0, sizeof c);
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, cli_factory, &f, &copts, th_on_conn, &c, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &c.done, TMO));
    cr_assert_eq(c.err, 0);
    cr_assert_eq(th_kind(c.t), TPIO_TRANSPORT_UNIX);
    exchange_with_peer(&c, sv[1]);

    /* use_sock together with a path: -EINVAL, the socket untouched. */
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    int fl = fcntl(sv[0], F_GETFL);
    tpio_unix_opts_t bad = {.size = sizeof bad, .use_sock = TPIO_ON, .sock = sv[0], .path = f.path};
    memset(&c, 0, sizeof c);
    cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, cli_factory, &f, &bad, th_on_conn, &c, NULL),
                 -EINVAL);
    /* A datagram socket is not a stream. */
    int dg[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg), 0);
    int dfl = fcntl(dg[0], F_GETFL);
    tpio_unix_opts_t bad2 = {.size = sizeof bad2, .use_sock = TPIO_ON, .sock = dg[0]};
    cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, cli_factory, &f, &bad2, th_on_conn, &c, NULL),
                 -EPROTOTYPE);
    th_run_timer(th_fx.loop, 0.01, TMO);
    cr_assert_eq(c.calls, 0);
    cr_assert_eq(fcntl(sv[0], F_GETFL), fl);
    cr_assert_eq(fcntl(dg[0], F_GETFL), dfl);
    cr_assert_eq(f.cfactory_calls, 2);
    close(sv[0]);
    close(sv[1]);
    close(dg[0]);
    close(dg[1]);
}

Test(unix_stream, connect_accepted_socket, .timeout = 20)
{
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, f.path);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&sun, sizeof sun), 0);
    cr_assert_eq(listen(lfd, 4), 0);
    int cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(cfd, (struct sockaddr *)&sun, sizeof sun), 0);
    int afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    cr_assert_geq(afd, 0);
    close(lfd);
    unlink(f.path);

    th_conn_t c = {0};
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, cli_factory, &f, afd, NULL, th_on_conn, &c, NULL), 0);
    cr_assert_eq(c.calls, 0);
    cr_assert(th_run_until(th_fx.loop, &c.done, TMO));
    cr_assert_eq(c.err, 0);
    cr_assert_eq(th_kind(c.t), TPIO_TRANSPORT_UNIX);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_sockname(c.t, &ss, &sl), 0);
    assert_path_addr(&ss, sl, f.path);
    exchange_with_peer(&c, cfd);
}
