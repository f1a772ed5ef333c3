/*
 * Callbacks that call back into the library at awkward moments: a factory
 * that cancels its own request or shuts the loop down, an error handler
 * that closes the server it reports on; plus objects made after a shutdown
 * started, descriptors the user closed under a watch, and error returns
 * that must leave the caller's socket as it was.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static tpio_loop_t *g_loop;
static tpio_handle_t g_req;
static int g_cancel_rc, g_calls, g_last_err;

static void on_conn(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                    void *arg)
{
    (void)loop, (void)p, (void)arg;
    g_calls++;
    g_last_err = err;
    if (t)
        tpio_transport_close(t);
}

static tpio_protocol_t *cancelling_factory(void *arg)
{
    g_cancel_rc = tpio_loop_cancel(g_loop, g_req);
    th_proto_t *p = th_proto_new(NULL);
    p->free_on_lost = true;
    (void)arg;
    return &p->base;
}

static void run_a_while(void) { th_run_iters(g_loop, 20); }

/* Inside the factory the request is over: nothing to cancel, one
 * completion, success. */
Test(reentry, factory_cancels_its_connection, .timeout = 20)
{
    g_loop = th_new_loop();
    g_calls = 0;
    g_cancel_rc = 99;
    uint16_t port;
    int l = th_listen_v4(&port);
    tpio_connect_opts_t o = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = port);
    cr_assert_eq(tpio_loop_create_connection(g_loop, cancelling_factory, NULL, &o, on_conn, NULL,
                                             &g_req),
                 0);
    run_a_while();
    cr_assert_eq(g_cancel_rc, -ENOENT);
    cr_assert_eq(g_calls, 1);
    cr_assert_eq(g_last_err, 0);
    close(l);
    cr_assert_eq(tpio_loop_close(g_loop), 0);
}

Test(reentry, factory_cancels_its_datagram_endpoint, .timeout = 20)
{
    g_loop = th_new_loop();
    g_calls = 0;
    g_cancel_rc = 99;
    tpio_datagram_opts_t o = TPIO_OPTS(tpio_datagram_opts_t, .local_host = "127.0.0.1");
    cr_assert_eq(tpio_loop_create_datagram_endpoint(g_loop, cancelling_factory, NULL, &o, on_conn,
                                                    NULL, &g_req),
                 0);
    run_a_while();
    cr_assert_eq(g_cancel_rc, -ENOENT);
    cr_assert_eq(g_calls, 1);
    cr_assert_eq(g_last_err, 0);
    cr_assert_eq(tpio_loop_close(g_loop), 0);
}

static bool g_shut;
static void on_shut(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop, (void)arg;
    cr_assert_eq(err, 0);
    g_shut = true;
}

static tpio_protocol_t *shutting_factory(void *arg)
{
    (void)arg;
    cr_assert_eq(tpio_loop_shutdown(g_loop, TPIO_SHUTDOWN_CLOSE, on_shut, NULL), 0);
    th_proto_t *p = th_proto_new(NULL);
    p->free_on_lost = true;
    return &p->base;
}

/* A shutdown from inside the connection's factory: the new transport is
 * the factory's to accept, then it is closed like everything else. */
Test(reentry, factory_shuts_the_loop_down, .timeout = 20)
{
    g_loop = th_new_loop();
    g_calls = 0;
    g_shut = false;
    uint16_t port;
    int l = th_listen_v4(&port);
    tpio_connect_opts_t o = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = port);
    cr_assert_eq(tpio_loop_create_connection(g_loop, shutting_factory, NULL, &o, on_conn, NULL,
                                             NULL),
                 0);
    cr_assert(th_run_until(g_loop, &g_shut, TH_TMO));
    cr_assert_eq(g_calls, 1);
    close(l);
    cr_assert_eq(tpio_loop_close(g_loop), 0);
}

static tpio_protocol_t *shut_and_refuse(void *arg)
{
    (void)arg;
    cr_assert_eq(tpio_loop_shutdown(g_loop, TPIO_SHUTDOWN_CLOSE, on_shut, NULL), 0);
    return NULL;
}

/* A server's factory shuts the loop down and refuses the connection: the
 * half-made transport is not closed by the shutdown (it was never the
 * user's) and goes with the refusal. */
Test(reentry, server_factory_shuts_down_and_refuses, .timeout = 20)
{
    g_loop = th_new_loop();
    g_shut = false;
    tpio_server_t *s;
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1");
    cr_assert_eq(tpio_loop_create_server(g_loop, shut_and_refuse, NULL, &so, &s), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, 0, &ss, &sl), 0);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(c, (struct sockaddr *)&ss, sl), 0);
    cr_assert(th_run_until(g_loop, &g_shut, TH_TMO));
    char x;
    cr_assert_eq(recv(c, &x, 1, 0), 0, "the refused connection is closed");
    close(c);
    cr_assert_eq(tpio_loop_close(g_loop), 0);
}

/* Objects made after a shutdown started keep it waiting. */
Test(reentry, shutdown_waits_for_what_is_made_after_it, .timeout = 20)
{
    g_loop = th_new_loop();
    g_shut = false;
    cr_assert_eq(tpio_loop_shutdown(g_loop, TPIO_SHUTDOWN_CLOSE, on_shut, NULL), 0);
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    th_conn_t c = {0};
    cr_assert_eq(tpio_loop_connect_read_pipe(g_loop, th_factory, NULL, p[0], th_on_conn, &c,
                                             NULL),
                 0);
    th_run_iters(g_loop, 5);
    cr_assert(c.done);
    cr_assert_eq(c.err, 0);
    cr_assert_not(g_shut, "the pipe is still open");
    cr_assert_eq(tpio_loop_close(g_loop), -EBUSY);
    close(p[1]); /* EOF ends the read pipe */
    cr_assert(th_run_until(g_loop, &g_shut, TH_TMO));
    cr_assert(c.p->lost);
    th_proto_free(c.p);
    cr_assert_eq(tpio_loop_close(g_loop), 0);
}

/* EMFILE: the error handler closes the server it reports on; the retry
 * timer goes with the server. */
static tpio_server_t *g_server;
static int g_reports;
static void close_on_report(tpio_loop_t *loop, const tpio_error_context_t *ctx, void *arg)
{
    (void)loop, (void)ctx, (void)arg;
    if (g_reports++ == 0)
        cr_assert_eq(tpio_server_close(g_server), 0);
}

Test(reentry, error_handler_closes_the_server_on_emfile, .timeout = 20)
{
    g_loop = th_new_loop();
    g_reports = 0;
    cr_assert_eq(tpio_loop_set_error_handler(g_loop, close_on_report, NULL), 0);
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1");
    cr_assert_eq(tpio_loop_create_server(g_loop, th_factory, NULL, &so, &g_server), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(g_server, 0, &ss, &sl), 0);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(c, (struct sockaddr *)&ss, sl), 0);
    /* no descriptor left for accept(): the limit at the next free number */
    struct rlimit old;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
    int next = dup(0);
    close(next);
    struct rlimit rl = {(rlim_t)next, old.rlim_max};
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    double end = th_now_s() + TH_TMO;
    while (!g_reports && th_now_s() < end)
        tpio_loop_run_once(g_loop, 0.01);
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
    cr_assert_eq(g_reports, 1);
    /* past the 1 s retry delay: a timer left behind would fire on freed memory */
    th_spin_for(g_loop, 1.3);
    cr_assert_eq(g_reports, 1);
    close(c);
    cr_assert_eq(tpio_loop_close(g_loop), 0);
}

/* A descriptor the user closed while watched: its number, reused by the
 * library for a connection attempt, belongs to the attempt; removing the
 * user's stale watcher later does not touch it. */
static void never_fd(tpio_loop_t *loop, int fd, void *arg)
{
    (void)loop, (void)fd, (void)arg;
}

Test(reentry, stale_watcher_of_a_reused_number, .timeout = 20)
{
    g_loop = th_new_loop();
    uint16_t port;
    int l = th_listen_v4(&port);
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    cr_assert_eq(tpio_loop_add_reader(g_loop, efd, never_fd, NULL), 0);
    close(efd);
    tpio_connect_opts_t o = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = port);
    th_conn_t c = {0};
    /* the attempt's socket takes the lowest free number: efd's */
    cr_assert_eq(tpio_loop_create_connection(g_loop, th_factory, NULL, &o, th_on_conn, &c, NULL),
                 0);
    bool removed = true;
    cr_assert_eq(tpio_loop_remove_reader(g_loop, efd, &removed), 0);
    cr_assert(th_run_until(g_loop, &c.done, TH_TMO), "the attempt lost its registration");
    cr_assert_eq(c.err, 0);
    cr_assert_eq(th_fd(c.t), efd, "the number was reused");
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_run_until(g_loop, &c.p->lost, TH_TMO));
    th_proto_free(c.p);
    close(l);
    cr_assert_eq(tpio_loop_close(g_loop), 0);
}

/* An error return leaves the caller's socket as it was: not made
 * non-blocking, no TCP_NODELAY. */
static bool g_fail;
static void *f_malloc(size_t n) { return g_fail ? NULL : malloc(n); }
static void *f_calloc(size_t c, size_t n) { return g_fail ? NULL : calloc(c, n); }
static void *f_realloc(void *p, size_t n) { return g_fail ? NULL : realloc(p, n); }

Test(reentry, error_return_leaves_the_socket_untouched, .timeout = 20)
{
    tpio_allocator_t a = {f_malloc, f_calloc, f_realloc, free};
    cr_assert_eq(tpio_set_allocator(&a), 0);
    g_loop = th_new_loop();
    uint16_t port;
    int l = th_listen_v4(&port);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(s, (struct sockaddr *)&sin, sizeof sin), 0);
    g_fail = true;
    th_conn_t c = {0};
    int rc = tpio_loop_connect_accepted_socket(g_loop, th_factory, NULL, s, NULL, th_on_conn, &c,
                                               NULL);
    g_fail = false;
    cr_assert_eq(rc, -ENOMEM);
    cr_assert_eq(fcntl(s, F_GETFL) & O_NONBLOCK, 0, "made non-blocking");
    int nd = 1;
    socklen_t nl = sizeof nd;
    cr_assert_eq(getsockopt(s, IPPROTO_TCP, TCP_NODELAY, &nd, &nl), 0);
    cr_assert_eq(nd, 0, "TCP_NODELAY set");
    /* and the same call succeeds afterwards, with both */
    cr_assert_eq(tpio_loop_connect_accepted_socket(g_loop, th_factory, NULL, s, NULL, th_on_conn, &c,
                                                   NULL),
                 0);
    cr_assert(th_run_until(g_loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0);
    cr_assert_neq(fcntl(s, F_GETFL) & O_NONBLOCK, 0);
    cr_assert_eq(getsockopt(s, IPPROTO_TCP, TCP_NODELAY, &nd, &nl), 0);
    cr_assert_neq(nd, 0);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_run_until(g_loop, &c.p->lost, TH_TMO));
    th_proto_free(c.p);
    close(l);
    cr_assert_eq(tpio_loop_close(g_loop), 0);
    cr_assert_eq(tpio_set_allocator(NULL), 0);
}

Test(reentry, extra_info_with_null_leaves_the_answer, .timeout = 10)
{
    tpio_extra_t x = {.type = TPIO_EXTRA_STR, .fd = 42, .str = "mine"};
    cr_assert_eq(tpio_transport_get_extra_info(NULL, "socket", &x), -EINVAL);
    cr_assert_eq(x.type, TPIO_EXTRA_STR);
    cr_assert_eq(x.fd, 42);
    cr_assert_str_eq(x.str, "mine");
}
