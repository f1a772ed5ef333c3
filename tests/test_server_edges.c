/* Server corner cases: a factory that closes its own server. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include "helpers.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct ctx {
    tpio_server_t *server;
    th_proto_t *made;
    bool waited, lost;
    size_t calls;
    int order; /* 1: wait_closed fired before the connection was lost */
};

static void on_closed(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop;
    cr_assert_eq(err, 0);
    struct ctx *c = arg;
    c->waited = true;
    if (!c->lost)
        c->order = 1;
}

static tpio_protocol_t *closing_factory(void *arg)
{
    struct ctx *c = arg;
    c->calls++;
    /* the first connection closes the server that accepted it */
    cr_assert_eq(tpio_server_close(c->server), 0);
    cr_assert_eq(tpio_server_wait_closed(c->server, on_closed, c, NULL), 0);
    c->made = th_proto_new(&th_proto_ops);
    c->made->echo = true;
    c->made->lost_flag = &c->lost;
    return &c->made->base;
}

TestSuite(server_edges, .init = th_fx_init, .fini = th_fx_fini);

Test(server_edges, factory_closing_its_server_keeps_the_connection, .timeout = 20)
{
    tpio_loop_t *loop = th_fx.loop;
    struct ctx c = {0};
    tpio_server_opts_t o = {.size = sizeof o, .host = "127.0.0.1"};
    cr_assert_eq(tpio_loop_create_server(loop, closing_factory, &c, &o, &c.server), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(c.server, 0, &ss, &sl), 0);
    int cli = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(cli, (struct sockaddr *)&ss, sl), 0);
    /* the server is closed and, having no attached connection, wakes its
     * waiter; the accepted connection still works on its own */
    cr_assert(th_run_until(loop, &c.waited, 10));
    cr_assert_eq(c.order, 1);
    cr_assert_not_null(c.made);
    cr_assert_eq(send(cli, "ping", 4, MSG_NOSIGNAL), 4);
    char buf[4];
    size_t got = 0;
    double end = th_time(loop) + 10;
    while (got < 4 && th_time(loop) < end) {
        tpio_loop_run_once(loop, 0.01);
        ssize_t n = recv(cli, buf + got, sizeof buf - got, MSG_DONTWAIT);
        if (n > 0)
            got += (size_t)n;
    }
    cr_assert_eq(got, 4);
    cr_assert_eq(memcmp(buf, "ping", 4), 0);
    close(cli);
    cr_assert(th_run_until(loop, &c.lost, 10));
    cr_assert_str_eq(c.made->events, "made,data,eof,lost:0");
    th_proto_free(c.made);
    for (int i = 0; i < 3; i++)
        tpio_loop_run_once(loop, 0);
}

static int open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own */
}

/* Connections already queued when the factory closes the server never
 * reach a factory, and none of them stays open: on epoll the close of the
 * listening socket resets them; on io_uring the kernel may have accepted
 * them already (one batch of completions), and the server closes those. */
Test(server_edges, connections_queued_behind_a_closing_factory_are_closed, .timeout = 20)
{
    enum { N = 4 };
    tpio_loop_t *loop = th_fx.loop;
    int fds_before = open_fds();
    struct ctx c = {0};
    tpio_server_opts_t o = {.size = sizeof o, .host = "127.0.0.1"};
    cr_assert_eq(tpio_loop_create_server(loop, closing_factory, &c, &o, &c.server), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(c.server, 0, &ss, &sl), 0);
    int lfd = th_server_socket(c.server, 0);
    int cli[N];
    for (int i = 0; i < N; i++) {
        cli[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_eq(connect(cli[i], (struct sockaddr *)&ss, sl), 0);
    }
    struct tcp_info ti;
    socklen_t tl = sizeof ti;
    double end = th_now_s() + 10;
    do
        cr_assert_eq(getsockopt(lfd, IPPROTO_TCP, TCP_INFO, &ti, &tl), 0);
    while (ti.tcpi_unacked < N && th_now_s() < end);
    cr_assert_eq(ti.tcpi_unacked, N, "the kernel queued %u", ti.tcpi_unacked);
    cr_assert(th_run_until(loop, &c.waited, 10));
    cr_assert_eq(c.calls, 1);
    /* which client won is the kernel's order: the one that reads the echo */
    int won = -1, ended = 0;
    bool done[N] = {false};
    for (int i = 0; i < N; i++) {
        ssize_t n = send(cli[i], "ping", 4, MSG_NOSIGNAL);
        if (n < 0) { /* reset already */
            cr_assert(errno == ECONNRESET || errno == EPIPE, "send: %s", strerror(errno));
            done[i] = true;
            ended++;
        } else {
            cr_assert_eq(n, 4);
        }
    }
    end = th_now_s() + 10;
    while (ended + (won >= 0) < N && th_now_s() < end) {
        tpio_loop_run_once(loop, 0.01);
        for (int i = 0; i < N; i++) {
            if (done[i])
                continue;
            char buf[8];
            ssize_t n = recv(cli[i], buf, sizeof buf, MSG_DONTWAIT);
            if (n > 0) {
                cr_assert_eq(won, -1, "two connections answered");
                cr_assert_eq(n, 4);
                won = i;
                done[i] = true;
            } else if (n == 0 || (n < 0 && errno == ECONNRESET)) {
                ended++;
                done[i] = true;
            } else {
                cr_assert(errno == EAGAIN, "recv: %s", strerror(errno));
            }
        }
    }
    cr_assert_geq(won, 0, "the accepted connection did not echo");
    cr_assert_eq(ended, N - 1);
    for (int i = 0; i < N; i++)
        close(cli[i]);
    cr_assert(th_run_until(loop, &c.lost, 10));
    th_proto_free(c.made);
    for (int i = 0; i < 3; i++)
        tpio_loop_run_once(loop, 0);
    cr_assert_eq(open_fds(), fds_before);
}
