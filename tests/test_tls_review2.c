/* Second review of TLS: the integration around the layer — constructors,
 * the request handle passed to a handshake, servers' connection sets with
 * handshakes in progress, shutdown, option validation. Each test is what
 * include/tpio.h's contract says should happen. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <tpio.h>
#include "helpers.h"
#include "tls_helpers.h"

#define TMO 30

TestSuite(tls_review2, .init = th_fx_init, .fini = th_fx_fini);

/* ---- helpers ------------------------------------------------------------------ */

static tpio_protocol_t *own_factory(void *arg)
{
    (void)arg;
    th_proto_t *p = th_fx_own(th_proto_new(&th_proto_ops));
    return &p->base;
}

typedef struct srv {
    size_t calls;
    th_proto_t *last;
    tpio_server_t *s;
    uint16_t port;
} srv_t;

static tpio_protocol_t *srv_factory(void *arg)
{
    srv_t *sv = arg;
    sv->calls++;
    sv->last = th_fx_own(th_proto_new(&th_proto_ops));
    return &sv->last->base;
}

static uint16_t server_port(tpio_server_t *s)
{
    struct sockaddr_storage a;
    socklen_t len = sizeof a;
    cr_assert_eq(tpio_server_get_sockname(s, 0, &a, &len), 0);
    return ntohs(((struct sockaddr_in *)&a)->sin_port);
}

static void make_server(srv_t *sv, SSL_CTX *ctx)
{
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = ctx);
    tpio_server_opts_t o =
        TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1", .tls = ctx ? &tls : NULL);
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, sv, &o, &sv->s), 0);
    sv->port = server_port(sv->s);
}

static int raw_connect(uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static int accept_one(int lfd)
{
    /* the listener must not block: on io_uring the connect itself starts
     * with the loop's next submission */
    cr_assert_eq(fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK), 0);
    for (int i = 0; i < 5000; i++) {
        th_run_iters(th_fx.loop, 1);
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            return fd;
        cr_assert(errno == EAGAIN, "accept: %s", strerror(errno));
    }
    cr_assert_fail("nothing connected");
    return -1;
}

/* Wait until the peer socket fd holds the first bytes of a TLS record. */
static void wait_record(int fd)
{
    char hello[5];
    for (int i = 0; i < 10000 && recv(fd, hello, sizeof hello, MSG_PEEK | MSG_DONTWAIT) < 5; i++)
        th_run_iters(th_fx.loop, 1);
    cr_assert_eq(recv(fd, hello, sizeof hello, MSG_PEEK | MSG_DONTWAIT), 5);
    cr_assert_eq(hello[0], 0x16, "a handshake record");
}

static void shutdown_and_wait(tpio_shutdown_t how)
{
    bool done = false;
    cr_assert_eq(tpio_loop_shutdown(th_fx.loop, how, th_done_flag, &done), 0);
    cr_assert(th_run_until(th_fx.loop, &done, TH_TMO), "the shutdown never completed");
}

/* ---- shutdown and cancel while a client handshake runs ----------------------------- */

Test(tls_review2, shutdown_ends_a_client_handshake, .timeout = TMO)
{
    uint16_t port;
    int lfd = th_listen_v4(&port);
    SSL_CTX *cctx = th_tls_client_ctx(0, 0);
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx);
    tpio_connect_opts_t o =
        TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = port, .tls = &tls);
    th_conn_t c = {0};
    tpio_handle_t h = 0;
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, own_factory, NULL, &o, th_on_conn, &c,
                                             &h),
                 0);
    int fd = accept_one(lfd);
    wait_record(fd);
    cr_assert_not(c.done);
    shutdown_and_wait(TPIO_SHUTDOWN_CLOSE);
    cr_assert(c.done, "the completion ran before the shutdown's end");
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(c.err, -ECANCELED, "%s", tpio_err_name(c.err));
    cr_assert(c.in_loop);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h), -ENOENT);
    close(fd);
    close(lfd);
    SSL_CTX_free(cctx);
}

Test(tls_review2, shutdown_abort_ends_a_start_tls_handshake, .timeout = TMO)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    th_conn_t c0 = {0};
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, own_factory, NULL, sv[0], NULL,
                                                   th_on_conn, &c0, NULL),
                 0);
    cr_assert(th_run_until(th_fx.loop, &c0.done, TH_TMO));
    SSL_CTX *cctx = th_tls_client_ctx(0, 0);
    th_proto_t *next = th_fx_own(th_proto_new(&th_proto_ops));
    th_conn_t c = {0};
    tpio_handle_t h = 0;
    tpio_tls_opts_t o = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx, .server_hostname = "localhost");
    cr_assert_eq(tpio_loop_start_tls(th_fx.loop, c0.t, &next->base, &o, th_on_conn, &c, &h), 0);
    wait_record(sv[1]);
    shutdown_and_wait(TPIO_SHUTDOWN_ABORT);
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(c.err, -ECANCELED, "%s", tpio_err_name(c.err));
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h), -ENOENT);
    cr_assert_str_eq(next->events, "");
    close(sv[1]);
    SSL_CTX_free(cctx);
}

/* The request of connect_accepted_socket cancelled in the iteration that
 * built the TLS transport (before the layer's connection_made). */
typedef struct cancel_ctx {
    tpio_handle_t h;
    int rc;
    bool ran;
} cancel_ctx_t;

static void cancel_now(tpio_loop_t *loop, void *arg)
{
    cancel_ctx_t *cc = arg;
    cc->ran = true;
    cc->rc = tpio_loop_cancel(loop, cc->h);
}

Test(tls_review2, cancel_right_after_the_tls_transport_is_built, .timeout = TMO)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    SSL_CTX *sctx = th_tls_server_ctx(0, 0);
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx);
    th_conn_t c = {0};
    cancel_ctx_t cc = {0};
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, own_factory, NULL, sv[0], &tls,
                                                   th_on_conn, &c, &cc.h),
                 0);
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, cancel_now, &cc, NULL), 0);
    th_run_iters(th_fx.loop, 1);
    cr_assert(cc.ran);
    cr_assert_eq(cc.rc, 0);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    th_run_iters(th_fx.loop, 5);
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(c.err, -ECANCELED, "%s", tpio_err_name(c.err));
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, cc.h), -ENOENT);
    char b;
    cr_assert_eq(recv(sv[1], &b, 1, 0), 0, "closed");
    close(sv[1]);
    SSL_CTX_free(sctx);
}

/* ---- servers with handshakes in progress ----------------------------------------- */

Test(tls_review2, wait_closed_waits_for_a_handshake_then_fires, .timeout = TMO)
{
    SSL_CTX *sctx = th_tls_server_ctx(0, 0);
    srv_t sv = {0};
    make_server(&sv, sctx);
    SSL_CTX_free(sctx); /* the server keeps its own reference */
    int fd = raw_connect(sv.port);
    for (int i = 0; i < 1000 && th_conn_count(sv.s) < 1; i++)
        th_run_iters(th_fx.loop, 1);
    cr_assert_eq(th_conn_count(sv.s), 1);
    bool done = false;
    cr_assert_eq(tpio_server_close(sv.s), 0);
    cr_assert_eq(tpio_server_wait_closed(sv.s, th_done_flag, &done, NULL), 0);
    th_run_iters(th_fx.loop, 5);
    cr_assert_not(done, "a handshake is still under way");
    close(fd); /* the handshake fails: the peer left */
    cr_assert(th_run_until(th_fx.loop, &done, TH_TMO));
    cr_assert_eq(sv.calls, 0);
}

/* A plain server's connection upgraded with start_tls (server side), whose
 * handshake is under way when the server closes: close_clients ends it. */
Test(tls_review2, start_tls_on_a_server_connection_then_close_clients, .timeout = TMO)
{
    srv_t sv = {0};
    make_server(&sv, NULL);
    int fd = raw_connect(sv.port);
    cr_assert(th_run_until_count(th_fx.loop, &sv.calls, 1, TH_TMO));
    cr_assert(th_run_until(th_fx.loop, &sv.last->made, TH_TMO));
    SSL_CTX *sctx = th_tls_server_ctx(0, 0);
    th_proto_t *next = th_fx_own(th_proto_new(&th_proto_ops));
    th_conn_t c = {0};
    tpio_handle_t h = 0;
    tpio_tls_opts_t o = TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx, .server_side = TPIO_ON);
    cr_assert_eq(tpio_loop_start_tls(th_fx.loop, sv.last->t, &next->base, &o, th_on_conn, &c, &h),
                 0);
    th_run_iters(th_fx.loop, 3);
    cr_assert_eq(th_conn_count(sv.s), 1);
    bool done = false;
    cr_assert_eq(tpio_server_close(sv.s), 0);
    cr_assert_eq(tpio_server_wait_closed(sv.s, th_done_flag, &done, NULL), 0);
    cr_assert_eq(tpio_server_close_clients(sv.s), 0);
    cr_assert_not(c.done, "never inside close_clients");
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, -ECONNABORTED, "%s", tpio_err_name(c.err));
    cr_assert(th_run_until(th_fx.loop, &done, TH_TMO));
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h), -ENOENT);
    close(fd);
    SSL_CTX_free(sctx);
}

/* ---- options ----------------------------------------------------------------------- */

Test(tls_review2, bad_tls_options_leave_the_socket_untouched, .timeout = TMO)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    SSL_CTX *sctx = th_tls_server_ctx(0, 0);
    th_conn_t c = {0};
    tpio_tls_opts_t bad[] = {
        TPIO_OPTS(tpio_tls_opts_t),                                        /* no ctx */
        TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx, .server_hostname = "x"),   /* server */
        TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx, .handshake_timeout = -1),
        TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx, .shutdown_timeout = -1),
        TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx, .server_side = 7),
        TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx, .initial_len = 3),
        TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx, .initial_data = "abc", .initial_len = 3),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, own_factory, NULL, sv[0],
                                                       &bad[i], th_on_conn, &c, NULL),
                     -EINVAL, "case %zu", i);
    tpio_tls_opts_t zero = {0};
    zero.ctx = sctx;
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, own_factory, NULL, sv[0], &zero,
                                                   th_on_conn, &c, NULL),
                 -EINVAL);
    /* servers */
    tpio_server_t *s = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1", .tls = &bad[i]);
        cr_assert_eq(tpio_loop_create_server(th_fx.loop, own_factory, NULL, &so, &s), -EINVAL,
                     "server case %zu", i);
    }
    char path[128];
    snprintf(path, sizeof path, "%s/s.sock", th_fx_dir());
    tpio_unix_opts_t uo = TPIO_OPTS(tpio_unix_opts_t, .path = path, .tls = &bad[0]);
    cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, own_factory, NULL, &uo, &s), -EINVAL);
    cr_assert_neq(access(path, F_OK), 0, "no socket file left");
    /* clients: a Unix client must name the server */
    tpio_tls_opts_t noname = TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx);
    uo.tls = &noname;
    cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, own_factory, NULL, &uo, th_on_conn,
                                                  &c, NULL),
                 -EINVAL);
    /* the socket is still the caller's: it can be given again */
    tpio_tls_opts_t good = TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx);
    cr_assert_eq(fcntl(sv[0], F_GETFD) >= 0, true);
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, own_factory, NULL, sv[0], &good,
                                                   th_on_conn, &c, NULL),
                 0);
    close(sv[1]);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_lt(c.err, 0);
    cr_assert_eq(c.calls, 1);
    SSL_CTX_free(sctx);
}

/* ---- shutdown while a TLS close waits for the peer's close_notify ---------------- */

/* The peer: the handshake, then it reads raw bytes (never answering the
 * close_notify) until the socket ends. */
static void read_raw_until_end(th_peer_t *pr, SSL *ssl, void *arg)
{
    (void)ssl, (void)arg;
    char b[4096];
    while (read(pr->fd, b, sizeof b) > 0)
        ;
}

static int order[2], norder;
static void first_done(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop, (void)arg;
    cr_assert_eq(err, 0);
    order[norder++] = 1;
}
static void second_done(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop, (void)arg;
    cr_assert_eq(err, 0);
    order[norder++] = 2;
}

Test(tls_review2, abort_escalation_ends_a_tls_close_under_way, .timeout = TMO)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    SSL_CTX *sctx = th_tls_server_ctx(0, 0), *cctx = th_tls_client_ctx(0, 0);
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx);
    th_conn_t c = {0};
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, own_factory, NULL, sv[0], &tls,
                                                   th_on_conn, &c, NULL),
                 0);
    th_peer_t *pr = th_peer_start(sv[1], cctx, false, read_raw_until_end, NULL);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0, "%s", tpio_err_name(c.err));
    norder = 0;
    cr_assert_eq(tpio_loop_shutdown(th_fx.loop, TPIO_SHUTDOWN_CLOSE, first_done, NULL), 0);
    th_run_iters(th_fx.loop, 5);
    cr_assert_eq(norder, 0, "the close waits for the peer's close_notify");
    cr_assert_not(c.p->lost);
    cr_assert_eq(tpio_loop_shutdown(th_fx.loop, TPIO_SHUTDOWN_ABORT, second_done, NULL), 0);
    size_t target = 2;
    size_t n = 0;
    for (int i = 0; i < 5000 && norder < 2; i++)
        th_run_iters(th_fx.loop, 1);
    n = (size_t)norder;
    cr_assert_eq(n, target);
    cr_assert_eq(order[0], 1);
    cr_assert_eq(order[1], 2);
    cr_assert(c.p->lost);
    th_peer_join(pr);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

/* ---- a server whose factory refuses a connection after its handshake ------------ */

static tpio_protocol_t *refuse_factory(void *arg)
{
    size_t *calls = arg;
    (*calls)++;
    return NULL;
}

static void just_handshake(th_peer_t *pr, SSL *ssl, void *arg)
{
    (void)arg;
    cr_assert_eq(pr->handshake, 1);
    char b[64];
    while (SSL_read(ssl, b, sizeof b) > 0)
        ;
}

Test(tls_review2, refused_after_the_handshake_then_wait_closed, .timeout = TMO)
{
    SSL_CTX *sctx = th_tls_server_ctx(0, 0), *cctx = th_tls_client_ctx(0, 0);
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx);
    size_t calls = 0;
    tpio_server_opts_t o = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1", .tls = &tls);
    tpio_server_t *s;
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, refuse_factory, &calls, &o, &s), 0);
    int fd = raw_connect(server_port(s));
    th_peer_t *pr = th_peer_start(fd, cctx, false, just_handshake, NULL);
    cr_assert(th_run_until_count(th_fx.loop, &calls, 1, TH_TMO));
    for (int i = 0; i < 1000 && th_conn_count(s); i++)
        th_run_iters(th_fx.loop, 1);
    cr_assert_eq(th_conn_count(s), 0);
    bool done = false;
    cr_assert_eq(tpio_server_close(s), 0);
    cr_assert_eq(tpio_server_wait_closed(s, th_done_flag, &done, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &done, TH_TMO));
    th_peer_join(pr);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

/* ---- a failed handshake ends the request ----------------------------------------- */

Test(tls_review2, failed_handshake_ends_the_request, .timeout = TMO)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    SSL_CTX *sctx = th_tls_server_ctx(0, 0);
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx);
    th_conn_t c = {0};
    tpio_handle_t h = 0;
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, own_factory, NULL, sv[0], &tls,
                                                   th_on_conn, &c, &h),
                 0);
    const char junk[] = "GET / HTTP/1.0\r\n\r\n";
    cr_assert_eq(write(sv[1], junk, sizeof junk - 1), (ssize_t)(sizeof junk - 1));
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, TPIO_ETLS, "%s", tpio_err_name(c.err));
    cr_assert(c.in_loop);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h), -ENOENT);
    th_run_iters(th_fx.loop, 5);
    cr_assert_eq(c.calls, 1);
    close(sv[1]);
    SSL_CTX_free(sctx);
}
