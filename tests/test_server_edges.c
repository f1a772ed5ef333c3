/* Server corner cases: a factory that closes its own server. */
#include <criterion/criterion.h>
#include "helpers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct ctx {
    tpio_server_t *server;
    th_proto_t *made;
    bool waited, lost;
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
