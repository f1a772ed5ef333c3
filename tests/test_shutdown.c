/*
 * Cancelling requests, and shutting a loop down: everything it owns ends,
 * every connection_lost runs, then the shutdown callback, then the loop
 * closes.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include "create/create.h" /* tpio__connect_addrs: an address list without DNS */
#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

/* A TCP listener that never completes a connection: backlog 0 and its
 * queue already full, so the kernel drops further SYNs. The attempts that
 * fill it are kept in fill[]. */
struct silent {
    int lfd, fill[4];
    struct sockaddr_in addr;
};

static void silent_open(struct silent *s)
{
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    s->addr = (struct sockaddr_in){.sin_family = AF_INET,
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(s->lfd, (struct sockaddr *)&s->addr, sizeof s->addr), 0);
    socklen_t l = sizeof s->addr;
    cr_assert_eq(getsockname(s->lfd, (struct sockaddr *)&s->addr, &l), 0);
    cr_assert_eq(listen(s->lfd, 0), 0);
    for (int i = 0; i < 4; i++) {
        s->fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        connect(s->fill[i], (struct sockaddr *)&s->addr, sizeof s->addr);
    }
}

static void silent_close(struct silent *s)
{
    for (int i = 0; i < 4; i++)
        close(s->fill[i]);
    close(s->lfd);
}

static void done_flag(tpio_loop_t *loop, int err, void *arg)
{
    cr_assert(th_is_running(loop));
    cr_assert_eq(err, 0);
    *(bool *)arg = true;
}

static int never_factory_calls;
static tpio_protocol_t *counting_factory(void *arg)
{
    never_factory_calls++;
    return th_factory(arg);
}

Test(shutdown, cancel_a_connection_that_never_completes, .timeout = 30)
{
    tpio_loop_t *loop = th_new_loop();
    struct silent s;
    silent_open(&s);
    struct addrinfo ai = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM,
                          .ai_addr = (struct sockaddr *)&s.addr, .ai_addrlen = sizeof s.addr};
    th_conn_t c = {0};
    never_factory_calls = 0;
    cr_assert_eq(tpio__connect_addrs(loop, &tpio__stream_ctor, counting_factory, NULL, &ai, 0, th_on_conn, &c, NULL), 0);
    th_spin_for(loop, 0.2); /* the attempt is under way, and stays so */
    cr_assert_not(c.done);
    cr_assert_eq(tpio_loop_close(loop), -EBUSY, "an attempt is under way");
    bool done = false;
    cr_assert_eq(tpio_loop_shutdown(loop, TPIO_SHUTDOWN_CLOSE, done_flag, &done),
                 0);
    cr_assert_not(c.done, "the completion runs from the loop");
    cr_assert(th_run_until(loop, &done, TH_TMO));
    cr_assert(c.done);
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(c.err, -ECANCELED);
    cr_assert_eq(never_factory_calls, 0);
    cr_assert_eq(tpio_loop_close(loop), 0, "nothing is left behind");
    silent_close(&s);
}

/* Everything a program has open at exit: a server with a connection, a
 * client connection with unsent data, a pipe, a datagram endpoint, a
 * subprocess, a watcher, a signal handler. */
struct everything {
    tpio_loop_t *loop;
    size_t lost;
    bool done;
    size_t lost_at_done;
    bool closed_waited;
    size_t lost_at_waited;
};

static struct everything g_ev;

static void on_done(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop;
    cr_assert_eq(err, 0);
    struct everything *e = arg;
    e->done = true;
    e->lost_at_done = e->lost;
}

static void on_waited(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop;
    cr_assert_eq(err, 0, "shutdown leaves wait_closed to the servers' closing");
    struct everything *e = arg;
    e->closed_waited = true;
    e->lost_at_waited = e->lost;
}

static void on_fd(tpio_loop_t *loop, int fd, void *arg)
{
    (void)loop, (void)fd, (void)arg;
    cr_assert_fail("a watcher removed by shutdown ran");
}

static void on_signal(tpio_loop_t *loop, int sig, void *arg)
{
    (void)loop, (void)sig, (void)arg;
    cr_assert_fail("a handler removed by shutdown ran");
}

struct sub {
    tpio_protocol_t base;
    bool exited, lost;
};

static void sub_exited(tpio_protocol_t *p) { tpio_container_of(p, struct sub, base)->exited = true; }
static void sub_lost(tpio_protocol_t *p, int err)
{
    (void)err;
    tpio_container_of(p, struct sub, base)->lost = true;
    g_ev.lost++;
}
static const tpio_protocol_ops_t sub_ops = {.process_exited = sub_exited,
                                            .connection_lost = sub_lost};
static struct sub g_sub = {.base.ops = &sub_ops};
static tpio_protocol_t *sub_factory(void *arg)
{
    (void)arg;
    return &g_sub.base;
}

static void run_everything(tpio_shutdown_t how)
{
    struct everything *e = &g_ev;
    memset(e, 0, sizeof *e);
    tpio_loop_t *loop = e->loop = th_new_loop();
    th_proto_t tmpl = {.lost_counter = &e->lost, .free_on_lost = true};

    tpio_server_t *srv;
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1");
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, &tmpl, &so, &srv), 0);
    cr_assert_eq(tpio_server_wait_closed(srv, on_waited, e, NULL), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(srv, 0, &ss, &sl), 0);
    th_conn_t cc = {0};
    tpio_connect_opts_t co = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1",
                                       .port = ntohs(((struct sockaddr_in *)&ss)->sin_port));
    cr_assert_eq(tpio_loop_create_connection(loop, th_factory, &tmpl, &co, th_on_conn, &cc, NULL), 0);
    cr_assert(th_run_until(loop, &cc.done, TH_TMO));
    cr_assert_eq(cc.err, 0);
    double end = th_now_s() + TH_TMO;
    while (th_conn_count(srv) < 1 && th_now_s() < end)
        tpio_loop_run_once(loop, 0.01);
    cr_assert_eq(th_conn_count(srv), 1);
    cr_assert_eq(tpio_transport_write(cc.t, "bye", 3), 0);

    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    th_conn_t rp = {0};
    cr_assert_eq(tpio_loop_connect_read_pipe(loop, th_factory, &tmpl, p[0], th_on_conn, &rp, NULL), 0);
    th_conn_t dg = {0};
    tpio_datagram_opts_t dopt = TPIO_OPTS(tpio_datagram_opts_t, .family = AF_INET);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(loop, th_factory, &tmpl, &dopt, th_on_conn,
                                                    &dg, NULL),
                 0);
    th_conn_t sc = {0};
    const char *argv[] = {"sleep", "100", NULL};
    cr_assert_eq(tpio_loop_subprocess_exec(loop, sub_factory, NULL, argv, NULL, th_on_conn, &sc),
                 0);
    end = th_now_s() + TH_TMO;
    while (!(rp.done && dg.done && sc.done) && th_now_s() < end)
        tpio_loop_run_once(loop, 0.01);
    cr_assert(rp.done && dg.done && sc.done);
    cr_assert_eq(rp.err + dg.err + sc.err, 0);
    int efd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK); /* readable at once */
    cr_assert_eq(tpio_loop_add_reader(loop, efd, on_fd, NULL), 0);
    cr_assert_eq(tpio_loop_add_signal_handler(loop, SIGUSR1, on_signal, NULL), 0);
    /* a pending adoption: made, its transport not yet built */
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    th_conn_t ad = {0};
    cr_assert_eq(tpio_loop_connect_accepted_socket(loop, th_factory, &tmpl, sv[0], NULL, th_on_conn,
                                                   &ad, NULL),
                 0);

    cr_assert_eq(tpio_loop_shutdown(loop, how, on_done, e), 0);
    cr_assert_eq(tpio_loop_shutdown(loop, how, on_done, e), -EBUSY);
    cr_assert_not(e->done);
    /* the peer of the client reads "bye" before the end when closing */
    end = th_now_s() + TH_TMO;
    while (!e->done && th_now_s() < end)
        tpio_loop_run_once(loop, 0.01);
    cr_assert(e->done, "the shutdown never completed: %zu lost", e->lost);
    /* client, its server-side peer, read pipe, datagram, and the subprocess */
    cr_assert_eq(e->lost, 5, "%zu lost", e->lost);
    cr_assert_eq(sc.calls + rp.calls + dg.calls + cc.calls, 4);
    cr_assert(g_sub.lost && g_sub.exited);
    cr_assert_eq(e->lost_at_done, e->lost, "every connection_lost ran before");
    cr_assert(e->closed_waited, "wait_closed ran before");
    cr_assert_eq(ad.calls, 1);
    cr_assert_eq(ad.err, -ECANCELED, "the pending adoption: %s", tpio_err_name(ad.err));
    cr_assert_eq(fcntl(sv[0], F_GETFD), -1, "its descriptor was the library's: closed");
    cr_assert_eq(tpio_loop_close(loop), 0);
    cr_assert_eq(signal(SIGUSR1, SIG_DFL), SIG_DFL, "the disposition is restored");
    close(efd);
    close(p[1]);
    close(sv[1]);
    g_sub = (struct sub){.base.ops = &sub_ops};
}

Test(shutdown, closes_everything, .timeout = 30) { run_everything(TPIO_SHUTDOWN_CLOSE); }
Test(shutdown, aborts_everything, .timeout = 30) { run_everything(TPIO_SHUTDOWN_ABORT); }

Test(shutdown, an_empty_loop, .timeout = 10)
{
    tpio_loop_t *loop = th_new_loop();
    bool done = false;
    cr_assert_eq(tpio_loop_shutdown(NULL, TPIO_SHUTDOWN_CLOSE, done_flag, &done), -EINVAL);
    cr_assert_eq(tpio_loop_shutdown(loop, TPIO_SHUTDOWN_CLOSE, NULL, &done), -EINVAL);
    cr_assert_eq(tpio_loop_shutdown(loop, (tpio_shutdown_t)7, done_flag, &done), -EINVAL);
    cr_assert_eq(tpio_loop_shutdown(loop, TPIO_SHUTDOWN_CLOSE, done_flag, &done), 0);
    cr_assert_not(done, "from the loop, not inside the call");
    cr_assert(th_run_until(loop, &done, TH_TMO));
    /* and again, once done */
    done = false;
    cr_assert_eq(tpio_loop_shutdown(loop, TPIO_SHUTDOWN_CLOSE, done_flag, &done), 0);
    cr_assert(th_run_until(loop, &done, TH_TMO));
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* ---- cancelling requests by their handles ---------------------------------------- */

static void expect_cancelled(tpio_loop_t *loop, th_conn_t *c, tpio_handle_t h)
{
    cr_assert_neq(h, 0);
    cr_assert_eq(tpio_loop_cancel(loop, h), 0);
    cr_assert_not(c->done, "the completion runs from the loop, not inside the cancel");
    cr_assert_eq(tpio_loop_cancel(loop, h), -ENOENT, "a second cancel");
    cr_assert(th_run_until(loop, &c->done, TH_TMO));
    cr_assert_eq(c->calls, 1);
    cr_assert_eq(c->err, -ECANCELED);
    th_run_iters(loop, 3);
    cr_assert_eq(c->calls, 1, "once");
}

static void close_when_idle(tpio_loop_t *loop)
{
    int rc;
    double end = th_now_s() + TH_TMO;
    while ((rc = tpio_loop_close(loop)) == -EBUSY && th_now_s() < end)
        tpio_loop_run_once(loop, 0.01);
    cr_assert_eq(rc, 0, "something was left behind");
}

Test(cancel, a_connection_to_a_full_backlog, .timeout = 30)
{
    tpio_loop_t *loop = th_new_loop();
    struct silent s;
    silent_open(&s);
    tpio_connect_opts_t o = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1",
                                      .port = ntohs(s.addr.sin_port));
    th_conn_t c = {0};
    tpio_handle_t h = 0;
    never_factory_calls = 0;
    cr_assert_eq(tpio_loop_create_connection(loop, counting_factory, NULL, &o, th_on_conn, &c, &h),
                 0);
    th_spin_for(loop, 0.2);
    cr_assert_not(c.done, "the attempt hangs");
    expect_cancelled(loop, &c, h);
    cr_assert_eq(never_factory_calls, 0);
    cr_assert_eq(tpio_loop_close(loop), 0, "the loop closes right after");
    silent_close(&s);
}

/* A connect timeout is a timer and a cancel (the guide's recipe). */
struct timeout_ctx {
    tpio_handle_t req;
    bool fired;
};

static void on_timeout(tpio_loop_t *loop, void *arg)
{
    struct timeout_ctx *t = arg;
    t->fired = true;
    cr_assert_eq(tpio_loop_cancel(loop, t->req), 0);
}

Test(cancel, connect_timeout_recipe, .timeout = 30)
{
    tpio_loop_t *loop = th_new_loop();
    struct silent s;
    silent_open(&s);
    tpio_connect_opts_t o = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1",
                                      .port = ntohs(s.addr.sin_port));
    th_conn_t c = {0};
    struct timeout_ctx t = {0};
    cr_assert_eq(tpio_loop_create_connection(loop, th_factory, NULL, &o, th_on_conn, &c, &t.req),
                 0);
    tpio_handle_t timer;
    cr_assert_eq(tpio_loop_call_later(loop, 0.1, on_timeout, &t, &timer), 0);
    cr_assert(th_run_until(loop, &c.done, TH_TMO));
    cr_assert(t.fired);
    cr_assert_eq(c.err, -ECANCELED);
    cr_assert_eq(tpio_loop_close(loop), 0);
    silent_close(&s);
}

Test(cancel, a_name_being_resolved, .timeout = 30)
{
    /* "localhost" is no numeric address: it goes to a resolver thread; the
     * cancel gives that thread up (or finds its answer on the way) */
    for (int round = 0; round < 20; round++) {
        tpio_loop_t *loop = th_new_loop();
        tpio_connect_opts_t o = TPIO_OPTS(tpio_connect_opts_t, .host = "localhost", .port = 9);
        th_conn_t c = {0};
        tpio_handle_t h = 0;
        cr_assert_eq(tpio_loop_create_connection(loop, th_factory, NULL, &o, th_on_conn, &c, &h),
                     0);
        expect_cancelled(loop, &c, h);
        close_when_idle(loop);
    }
}

Test(cancel, a_datagram_endpoint_and_an_adoption, .timeout = 30)
{
    tpio_loop_t *loop = th_new_loop();
    tpio_datagram_opts_t o = TPIO_OPTS(tpio_datagram_opts_t, .remote_host = "localhost",
                                       .remote_port = 9);
    th_conn_t c = {0};
    tpio_handle_t h = 0;
    cr_assert_eq(tpio_loop_create_datagram_endpoint(loop, th_factory, NULL, &o, th_on_conn, &c,
                                                    &h),
                 0);
    expect_cancelled(loop, &c, h);
    /* a socket handed over: cancelled before its transport is made, it is
     * closed (it was the library's from the call on) */
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    th_conn_t a = {0};
    never_factory_calls = 0;
    cr_assert_eq(tpio_loop_connect_accepted_socket(loop, counting_factory, NULL, sv[0], NULL,
                                                   th_on_conn, &a, &h),
                 0);
    expect_cancelled(loop, &a, h);
    cr_assert_eq(never_factory_calls, 0);
    char x;
    cr_assert_eq(recv(sv[1], &x, 1, 0), 0, "the peer sees the socket closed");
    close(sv[1]);
    close_when_idle(loop);
}

Test(cancel, a_completed_request_cancels_nothing, .timeout = 30)
{
    tpio_loop_t *loop = th_new_loop();
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    th_conn_t a = {0};
    tpio_handle_t h = 0;
    cr_assert_eq(tpio_loop_connect_accepted_socket(loop, th_factory, NULL, sv[0], NULL, th_on_conn, &a,
                                                   &h),
                 0);
    cr_assert(th_run_until(loop, &a.done, TH_TMO));
    cr_assert_eq(a.err, 0);
    cr_assert_eq(tpio_loop_cancel(loop, h), -ENOENT);
    cr_assert_eq(tpio_transport_close(a.t), 0);
    cr_assert(th_run_until(loop, &a.p->lost, TH_TMO));
    th_proto_free(a.p);
    close(sv[1]);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

struct wc {
    int calls, err;
};

static void on_wc(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop;
    struct wc *w = arg;
    w->calls++;
    w->err = err;
}

Test(cancel, wait_closed, .timeout = 30)
{
    tpio_loop_t *loop = th_new_loop();
    tpio_server_t *s;
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1");
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &so, &s), 0);
    struct wc w1 = {0}, w2 = {0};
    tpio_handle_t h1, h2;
    cr_assert_eq(tpio_server_wait_closed(s, on_wc, &w1, &h1), 0);
    cr_assert_eq(tpio_server_wait_closed(s, on_wc, &w2, &h2), 0);
    cr_assert_eq(tpio_loop_cancel(loop, h1), 0);
    cr_assert_eq(w1.calls, 0);
    th_run_iters(loop, 2);
    cr_assert_eq(w1.calls, 1);
    cr_assert_eq(w1.err, -ECANCELED);
    cr_assert_eq(w2.calls, 0, "the other waiter still waits");
    cr_assert_eq(tpio_server_close(s), 0);
    cr_assert_eq(tpio_loop_cancel(loop, h2), -ENOENT, "woken: too late to cancel");
    /* on a closed server (still valid in this iteration): fires on the
     * next one, nothing to cancel */
    struct wc w3 = {0};
    tpio_handle_t h3 = 99;
    cr_assert_eq(tpio_server_wait_closed(s, on_wc, &w3, &h3), 0);
    cr_assert_eq(tpio_loop_cancel(loop, h3), -ENOENT);
    th_run_iters(loop, 2);
    cr_assert_eq(w2.calls, 1);
    cr_assert_eq(w2.err, 0);
    cr_assert_eq(w1.calls, 1);
    cr_assert_eq(w3.calls, 1);
    cr_assert_eq(w3.err, 0);
    close_when_idle(loop);
}

/* A peer that does not read keeps a closing shutdown waiting; a second call
 * with ABORT ends it, and both callbacks run, the first one first. */
static char g_order[16];

static void order_a(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop, (void)arg;
    cr_assert_eq(err, 0);
    strcat(g_order, "a");
}

static void order_b(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop, (void)arg;
    cr_assert_eq(err, 0);
    strcat(g_order, "b");
}

Test(shutdown, escalate_to_abort, .timeout = 30)
{
    th_pair_t *pr = th_unix_pair(NULL, NULL, NULL, 0, false);
    th_shrink_bufs(pr);
    th_fill_until_buffered(pr);
    g_order[0] = '\0';
    cr_assert_eq(tpio_loop_shutdown(pr->loop, TPIO_SHUTDOWN_CLOSE, order_a, NULL), 0);
    th_spin_for(pr->loop, 0.2);
    cr_assert_str_eq(g_order, "", "the close waits for the peer, which does not read");
    cr_assert_not(pr->p->lost);
    cr_assert_eq(tpio_loop_shutdown(pr->loop, TPIO_SHUTDOWN_CLOSE, order_b, NULL), -EBUSY);
    cr_assert_eq(tpio_loop_shutdown(pr->loop, TPIO_SHUTDOWN_ABORT, order_b, NULL), 0);
    cr_assert_eq(tpio_loop_shutdown(pr->loop, TPIO_SHUTDOWN_ABORT, order_b, NULL), -EBUSY,
                 "one escalation");
    double end = th_now_s() + TH_TMO;
    while (strlen(g_order) < 2 && th_now_s() < end)
        tpio_loop_run_once(pr->loop, 0.01);
    cr_assert_str_eq(g_order, "ab");
    cr_assert(pr->p->lost);
    cr_assert_str_eq(pr->p->events, "made,lost:0", "aborted: its buffer dropped");
    th_pair_finish(pr);
}
