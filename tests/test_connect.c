/*
 * tpio_loop_create_connection / tpio_loop_connect_accepted_socket: numeric and resolved
 * hosts, IPv4 and IPv6, local binding, failures (refused, unknown host,
 * factory refusing), happy eyeballs, use_sock with good and bad descriptors,
 * argument checking.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include "helpers.h"
#include "create/create.h" /* tpio__connect_addrs: a resolver-free address list */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TMO 5.0

typedef struct conn {
    th_proto_t tmpl;
    th_proto_t *created;
    size_t factory_calls;
    bool refuse;              /* factory returns NULL */
    /* completion */
    bool done;
    size_t cb_calls;
    int err;
    tpio_transport_t *t;
    th_proto_t *p;
    bool cb_in_loop;
    pthread_t cb_thread;
    int fd_flags;             /* O_* flags of the transport's fd in the callback */
    int l;                    /* the test's listener (listen_v4), or -1 */
    char events_at_cb[64];
} conn_t;

static tpio_protocol_t *factory(void *arg)
{
    conn_t *c = arg;
    c->factory_calls++;
    if (c->refuse)
        return NULL;
    tpio_protocol_t *bp = th_factory(&c->tmpl);
    c->created = tpio_container_of(bp, th_proto_t, base);
    return bp;
}

static void on_conn(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                    void *arg)
{
    conn_t *c = arg;
    c->cb_calls++;
    c->done = true;
    c->err = err;
    c->t = t;
    c->p = p ? tpio_container_of(p, th_proto_t, base) : NULL;
    c->cb_in_loop = th_is_running(loop);
    c->cb_thread = pthread_self();
    c->fd_flags = -1;
    if (t) {
        int fd = th_fd(t);
        c->fd_flags = fd >= 0 ? fcntl(fd, F_GETFL) : -1;
    }
    if (c->p)
        snprintf(c->events_at_cb, sizeof c->events_at_cb, "%.60s", c->p->events);
}

/* The suite's fixture: one connection attempt on th_fx.loop per test, set up
 * by suite init; fini closes the transport (if any), waits for its
 * connection_lost and closes the loop. */
static conn_t fx;
static conn_t *const c = &fx;

static void conn_init(void)
{
    th_fx_init();
    memset(c, 0, sizeof *c);
    c->tmpl.base.ops = &th_proto_ops;
    c->l = -1;
}

static void conn_fini(void)
{
    if (c->p) {
        if (!c->p->lost)
            TH_FX_CHECK(tpio_transport_close(c->t) == 0, "close");
        TH_FX_CHECK(th_run_until(th_fx.loop, &c->p->lost, TMO), "no connection_lost: %s",
                    c->p->events);
        TH_FX_CHECK(c->p->lost_err == 0, "lost with %s", tpio_err_name(c->p->lost_err));
    }
    for (int i = 0; i < 3; i++)
        tpio_loop_run_once(th_fx.loop, 0);
    th_fx_fini();
    TH_FX_CHECK(c->cb_calls == (c->done ? 1u : 0u), "%zu completions", c->cb_calls);
    th_proto_free(c->p);
    if (c->l >= 0)
        close(c->l);
}

TestSuite(connect, .init = conn_init, .fini = conn_fini);

/* Start a connection; checks that nothing ran inside the call. */
static void start(conn_t *c, const tpio_connect_opts_t *o)
{
    int r = tpio_loop_create_connection(th_fx.loop, factory, c, o, on_conn, c, NULL);
    cr_assert_eq(r, 0, "tpio_loop_create_connection: %s", tpio_err_name(r));
    cr_assert(!c->done, "completion ran inside tpio_loop_create_connection");
    if (c->created)
        cr_assert(!c->created->made, "connection_made ran inside the call");
}

static void wait_done(conn_t *c, double tmo)
{
    cr_assert(th_run_until(th_fx.loop, &c->done, tmo), "no completion");
    cr_assert_eq(c->cb_calls, 1);
    cr_assert(c->cb_in_loop);
    cr_assert(pthread_equal(c->cb_thread, pthread_self()), "completion off the loop thread");
}

static void expect_success(conn_t *c)
{
    cr_assert_eq(c->err, 0, "connect failed: %s", tpio_err_name(c->err));
    cr_assert_not_null(c->t);
    cr_assert_not_null(c->p);
    cr_assert_eq(c->p, c->created);
    cr_assert_eq(c->factory_calls, 1);
    cr_assert_str_eq(c->events_at_cb, "made");
    cr_assert_eq(c->p->t, c->t);
    cr_assert_neq(c->fd_flags, -1);
    cr_assert(c->fd_flags & O_NONBLOCK, "transport socket is blocking");
}

static void expect_failure(conn_t *c, int err)
{
    cr_assert_eq(c->err, err, "err %s, expected %s", tpio_err_name(c->err),
                 tpio_err_name(err));
    cr_assert_null(c->t);
    cr_assert_null(c->p);
}

static int listen_on(int family, const char *addr, uint16_t *port)
{
    int l = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0)
        return -errno;
    struct sockaddr_storage ss = {0};
    socklen_t sl;
    if (family == AF_INET) {
        struct sockaddr_in *a = (void *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(*port);
        inet_pton(AF_INET, addr, &a->sin_addr);
        sl = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (void *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(*port);
        inet_pton(AF_INET6, addr, &a->sin6_addr);
        int one = 1;
        setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        sl = sizeof *a;
    }
    if (bind(l, (struct sockaddr *)&ss, sl) < 0 || listen(l, 16) < 0) {
        int e = -errno;
        close(l);
        return e;
    }
    sl = sizeof ss;
    getsockname(l, (struct sockaddr *)&ss, &sl);
    *port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                    : ((struct sockaddr_in6 *)&ss)->sin6_port);
    return l;
}

/* A free port: bind port 0, read it, close. */
static uint16_t free_port(int family, const char *addr)
{
    uint16_t port = 0;
    int s = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(s, 0);
    struct sockaddr_storage ss = {0};
    socklen_t sl;
    if (family == AF_INET) {
        struct sockaddr_in *a = (void *)&ss;
        a->sin_family = AF_INET;
        inet_pton(AF_INET, addr, &a->sin_addr);
        sl = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (void *)&ss;
        a->sin6_family = AF_INET6;
        inet_pton(AF_INET6, addr, &a->sin6_addr);
        sl = sizeof *a;
    }
    cr_assert_eq(bind(s, (struct sockaddr *)&ss, sl), 0);
    sl = sizeof ss;
    cr_assert_eq(getsockname(s, (struct sockaddr *)&ss, &sl), 0);
    port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                   : ((struct sockaddr_in6 *)&ss)->sin6_port);
    close(s);
    return port;
}

static int accept_nb(int l)
{
    struct pollfd pf = {.fd = l, .events = POLLIN};
    cr_assert_eq(poll(&pf, 1, 5000), 1, "nothing to accept");
    int s = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    cr_assert_geq(s, 0);
    return s;
}

/* Peer reads n bytes, running the loop meanwhile. */
static void peer_expect(int peer, const char *want)
{
    size_t n = strlen(want), got = 0;
    char buf[256] = {0};
    double end = th_now_s() + TMO;
    while (got < n && th_now_s() < end) {
        ssize_t r = recv(peer, buf + got, n - got, 0);
        if (r > 0)
            got += (size_t)r;
        else if (r == 0)
            break;
        else if (errno == EAGAIN)
            tpio_loop_run_once(th_fx.loop, 0.005);
        else
            break;
    }
    cr_assert_eq(got, n);
    cr_assert_str_eq(buf, want);
}

/* Peer reads EOF next (0), running the loop meanwhile. */
static int peer_eof(tpio_loop_t *loop, int peer)
{
    double end = th_now_s() + TMO;
    char ch;
    while (th_now_s() < end) {
        ssize_t r = recv(peer, &ch, 1, 0);
        if (r == 0)
            return 0;
        if (r > 0)
            return 1;
        if (errno != EAGAIN)
            return -errno;
        tpio_loop_run_once(loop, 0.005);
    }
    return -ETIMEDOUT;
}

/* The transport's sockname is the peer's peername and vice versa; data flows
 * both ways; then close. */
static void check_connected(conn_t *c, int peer)
{
    struct sockaddr_storage a, b;
    socklen_t al = sizeof a, bl = sizeof b;
    cr_assert_eq(tpio_transport_get_sockname(c->t, &a, &al), 0);
    cr_assert_eq(getpeername(peer, (struct sockaddr *)&b, &bl), 0);
    cr_assert(th_same_addr((struct sockaddr *)&a, al, (struct sockaddr *)&b, bl));
    al = sizeof a;
    bl = sizeof b;
    cr_assert_eq(tpio_transport_get_peername(c->t, &a, &al), 0);
    cr_assert_eq(getsockname(peer, (struct sockaddr *)&b, &bl), 0);
    cr_assert(th_same_addr((struct sockaddr *)&a, al, (struct sockaddr *)&b, bl));

    int nd = 0;
    socklen_t ndl = sizeof nd;
    cr_assert_eq(getsockopt(th_fd(c->t), IPPROTO_TCP, TCP_NODELAY, &nd, &ndl), 0);
    cr_assert_neq(nd, 0, "TCP_NODELAY not set");
    cr_assert_eq(th_kind(c->t), TPIO_TRANSPORT_TCP);

    cr_assert_eq(send(peer, "hi", 2, MSG_NOSIGNAL), 2);
    cr_assert(th_run_until_count(th_fx.loop, &c->p->rxlen, 2, TMO));
    cr_assert_eq(memcmp(c->p->rx, "hi", 2), 0);
    cr_assert_eq(tpio_transport_write(c->t, "yo", 2), 0);
    peer_expect(peer, "yo");
    cr_assert_eq(tpio_transport_close(c->t), 0);
    cr_assert_eq(peer_eof(th_fx.loop, peer), 0);
    cr_assert(th_run_until(th_fx.loop, &c->p->lost, TMO));
    cr_assert_str_eq(c->p->events, "made,data,lost:0");
}

/* The test's listener on 127.0.0.1 (fini closes it): its port. */
static uint16_t listen_v4(void)
{
    uint16_t port = 0;
    c->l = listen_on(AF_INET, "127.0.0.1", &port);
    cr_assert_geq(c->l, 0);
    return port;
}

/* The listener's peer accepts and checks the connection (check_connected). */
static void peer_checks_connection(void)
{
    int peer = accept_nb(c->l);
    check_connected(c, peer);
    close(peer);
}

/* ===================================================================== */

Test(connect, numeric_ipv4, .timeout = 20)
{
    uint16_t port = listen_v4();
    tpio_connect_opts_t o = {.size = sizeof o, .host = "127.0.0.1", .port = port};
    start(c, &o);
    wait_done(c, TMO);
    expect_success(c);
    peer_checks_connection();
}

Test(connect, numeric_ipv6, .timeout = 20)
{
    uint16_t port = 0;
    c->l = listen_on(AF_INET6, "::1", &port);
    if (c->l < 0) {
        cr_log_warn("no IPv6 loopback (%s): IPv6 case skipped", strerror(-c->l));
        return;
    }
    tpio_connect_opts_t o = {.size = sizeof o, .host = "::1", .port = port};
    start(c, &o);
    wait_done(c, TMO);
    expect_success(c);
    int peer = accept_nb(c->l);
    tpio_extra_t x;
    cr_assert_eq(tpio_transport_get_extra_info(c->t, "peername", &x), 0);
    cr_assert_eq(x.addr->sa_family, AF_INET6);
    char want[64], got[64];
    snprintf(want, sizeof want, "('::1', %u, 0, 0)", port);
    cr_assert_eq(tpio_format_addr(x.addr, x.addrlen, got, sizeof got), 0);
    cr_assert_str_eq(got, want);
    check_connected(c, peer);
    close(peer);
}

Test(connect, completion_before_early_data, .timeout = 20)
{
    /* The peer accepts and sends before the client's loop ran: the
     * completion still sees only "made". */
    uint16_t port = listen_v4();
    cr_assert_eq(fcntl(c->l, F_SETFL, O_NONBLOCK), 0);
    tpio_connect_opts_t o = {.size = sizeof o, .host = "127.0.0.1", .port = port};
    start(c, &o);
    int peer = -1;
    double end = th_now_s() + TMO;
    while (peer < 0 && th_now_s() < end) {
        peer = accept4(c->l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (peer < 0) {
            struct pollfd pf = {.fd = c->l, .events = POLLIN};
            if (poll(&pf, 1, 2) == 0)
                tpio_loop_run_once(th_fx.loop, 0);
        }
    }
    cr_assert_geq(peer, 0);
    cr_assert_eq(send(peer, "early", 5, MSG_NOSIGNAL), 5);
    wait_done(c, TMO);
    expect_success(c);
    cr_assert(th_run_until_count(th_fx.loop, &c->p->rxlen, 5, TMO));
    cr_assert_str_eq(c->p->events, "made,data");
    cr_assert_eq(memcmp(c->p->rx, "early", 5), 0);
    close(peer);
    cr_assert(th_run_until(th_fx.loop, &c->p->lost, TMO));
    cr_assert_str_eq(c->p->events, "made,data,eof,lost:0");
}

Test(connect, localhost_through_resolver, .timeout = 30)
{
    uint16_t port = listen_v4();
    tpio_connect_opts_t o = {.size = sizeof o, .host = "localhost", .port = port, .family = AF_INET};
    start(c, &o);
    /* a connection attempt exists: the loop cannot close */
    cr_assert_eq(tpio_loop_close(th_fx.loop), -EBUSY);
    wait_done(c, 20);
    expect_success(c);
    peer_checks_connection();
}

Test(connect, local_address_binding, .timeout = 20)
{
    uint16_t port = listen_v4();
    uint16_t lport = free_port(AF_INET, "127.0.0.1");
    tpio_connect_opts_t o = {.size = sizeof o, .host = "127.0.0.1", .port = port, .local_host = "127.0.0.1",
                             .local_port = lport};
    start(c, &o);
    wait_done(c, TMO);
    expect_success(c);
    struct sockaddr_storage a;
    socklen_t al = sizeof a;
    cr_assert_eq(tpio_transport_get_sockname(c->t, &a, &al), 0);
    cr_assert_eq(a.ss_family, AF_INET);
    cr_assert_eq(ntohs(((struct sockaddr_in *)&a)->sin_port), lport);
    int peer = accept_nb(c->l);
    al = sizeof a;
    cr_assert_eq(getpeername(peer, (struct sockaddr *)&a, &al), 0);
    cr_assert_eq(ntohs(((struct sockaddr_in *)&a)->sin_port), lport);
    check_connected(c, peer);
    close(peer);
}

Test(connect, refused, .timeout = 20)
{
    uint16_t port = free_port(AF_INET, "127.0.0.1");
    tpio_connect_opts_t o = {.size = sizeof o, .host = "127.0.0.1", .port = port};
    start(c, &o);
    wait_done(c, TMO);
    expect_failure(c, -ECONNREFUSED);
    cr_assert_eq(c->factory_calls, 0);
}

Test(connect, refused_with_happy_eyeballs, .timeout = 20)
{
    uint16_t port = free_port(AF_INET, "127.0.0.1");
    tpio_connect_opts_t o = {.size = sizeof o, .host = "127.0.0.1", .port = port, .happy_eyeballs_delay = 0.05};
    start(c, &o);
    wait_done(c, TMO);
    expect_failure(c, -ECONNREFUSED);
    cr_assert_eq(c->factory_calls, 0);
}

Test(connect, unknown_host, .timeout = 40)
{
    tpio_connect_opts_t o = {.size = sizeof o, .host = "nonexistent.invalid", .port = 80};
    start(c, &o);
    wait_done(c, 30);
    cr_assert_null(c->t);
    cr_assert_null(c->p);
    cr_assert(c->err <= TPIO_EAI_NONAME && c->err >= TPIO_EAI_OTHER,
              "err %d (%s) is not a TPIO_EAI_* code", c->err, tpio_err_name(c->err));
    cr_assert_eq(strncmp(tpio_err_name(c->err), "TPIO_EAI_", 9), 0);
    cr_assert_eq(c->factory_calls, 0);
}

Test(connect, happy_eyeballs_connects, .timeout = 20)
{
    uint16_t port = listen_v4();
    tpio_connect_opts_t o = {.size = sizeof o, .host = "127.0.0.1", .port = port, .happy_eyeballs_delay = 0.05};
    start(c, &o);
    wait_done(c, TMO);
    expect_success(c);
    peer_checks_connection();
}

/* Several resolved addresses, tried in order. The resolver here may give one
 * address only, so the list is handed to the connect machinery directly
 * (tpio__connect_addrs, the path every resolved name takes). */
static struct sockaddr_in loopback(uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static uint16_t closed_port(void)
{
    uint16_t port = 0;
    int l = listen_on(AF_INET, "127.0.0.1", &port);
    cr_assert_geq(l, 0);
    close(l); /* nothing listens there now: connecting is refused */
    return port;
}

static void connect_list(conn_t *c, struct sockaddr_in *addrs, int n, double he_delay)
{
    struct addrinfo ai[4];
    cr_assert_leq(n, 4);
    for (int i = 0; i < n; i++)
        ai[i] = (struct addrinfo){.ai_family = AF_INET, .ai_socktype = SOCK_STREAM,
                                  .ai_addr = (struct sockaddr *)&addrs[i],
                                  .ai_addrlen = sizeof addrs[i],
                                  .ai_next = i + 1 < n ? &ai[i + 1] : NULL};
    int r = tpio__connect_addrs(th_fx.loop, &tpio__stream_ctor, factory, c, ai, he_delay, on_conn, c, NULL);
    cr_assert_eq(r, 0, "tpio__connect_addrs: %s", tpio_err_name(r));
    cr_assert(!c->done, "completion ran inside the call");
}

static void first_refused_second_accepts(double he_delay)
{
    uint16_t good = listen_v4();
    struct sockaddr_in addrs[2] = {loopback(closed_port()), loopback(good)};
    connect_list(c, addrs, 2, he_delay);
    wait_done(c, TMO);
    expect_success(c);
    struct sockaddr_storage a;
    socklen_t al = sizeof a;
    cr_assert_eq(tpio_transport_get_peername(c->t, &a, &al), 0);
    cr_assert_eq(ntohs(((struct sockaddr_in *)&a)->sin_port), good);
    peer_checks_connection();
}

Test(connect, multiple_addresses_first_fails, .timeout = 30)
{
    first_refused_second_accepts(0);
}

Test(connect, multiple_addresses_happy_eyeballs, .timeout = 30)
{
    first_refused_second_accepts(0.1);
}

Test(connect, all_addresses_fail_reports_first_error, .timeout = 30)
{
    struct sockaddr_in addrs[2] = {loopback(closed_port()), loopback(closed_port())};
    connect_list(c, addrs, 2, 0);
    wait_done(c, TMO);
    expect_failure(c, -ECONNREFUSED);
    cr_assert_eq(c->factory_calls, 0);
}

/* The first address does not answer (its listener's accept queue is full,
 * so the kernel drops our SYN): only racing the second after the delay can
 * connect, and the hanging first attempt is abandoned. */
Test(connect, happy_eyeballs_races_a_silent_address, .timeout = 30)
{
    uint16_t silent = 0, good = 0;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = loopback(0);
    cr_assert_eq(bind(ls, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(ls, 0), 0);
    socklen_t sl = sizeof sa;
    getsockname(ls, (struct sockaddr *)&sa, &sl);
    silent = ntohs(sa.sin_port);
    /* fill the accept queue: one established connection makes it full */
    int filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(filler, (struct sockaddr *)&sa, sizeof sa), 0);
    good = listen_v4();
    struct sockaddr_in addrs[2] = {loopback(silent), loopback(good)};
    double t0 = th_time(th_fx.loop);
    connect_list(c, addrs, 2, 0.05);
    wait_done(c, TMO);
    expect_success(c);
    double took = th_time(th_fx.loop) - t0;
    cr_assert_geq(took, 0.05, "the second attempt started before the delay (%.3f s)", took);
    struct sockaddr_storage a;
    socklen_t al = sizeof a;
    cr_assert_eq(tpio_transport_get_peername(c->t, &a, &al), 0);
    cr_assert_eq(ntohs(((struct sockaddr_in *)&a)->sin_port), good);
    peer_checks_connection();
    close(filler);
    close(ls);
}

Test(connect, use_sock_socketpair_spec_example, .timeout = 20)
{
    /* The specification's "Connecting Existing Sockets": the other end sends
     * "abc"; the protocol receives it and closes the transport. */
    c->tmpl.close_on_data = true;
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    cr_assert_eq(send(sv[1], "abc", 3, MSG_NOSIGNAL), 3);
    tpio_connect_opts_t o = {.size = sizeof o, .use_sock = TPIO_ON, .sock = sv[0]};
    start(c, &o);
    wait_done(c, TMO);
    expect_success(c);
    cr_assert(th_run_until(th_fx.loop, &c->p->lost, TMO));
    cr_assert_str_eq(c->p->events, "made,data,lost:0");
    cr_assert_eq(c->p->rxlen, 3);
    cr_assert_eq(memcmp(c->p->rx, "abc", 3), 0);
    /* the transport closed its socket: the other end reads EOF */
    char ch;
    cr_assert_eq(recv(sv[1], &ch, 1, 0), 0);
    close(sv[1]);
}

Test(connect, use_sock_unix_kind, .timeout = 20)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    tpio_connect_opts_t o = {.size = sizeof o, .use_sock = TPIO_ON, .sock = sv[0]};
    start(c, &o);
    wait_done(c, TMO);
    expect_success(c);
    cr_assert_eq(th_kind(c->t), TPIO_TRANSPORT_UNIX);
    cr_assert_eq(th_fd(c->t), sv[0]);
    cr_assert_eq(tpio_transport_write(c->t, "x", 1), 0);
    if (th_ring_ops(th_fx.loop)) /* io_uring sends with the loop's next submission */
        tpio_loop_run_once(th_fx.loop, 0);
    char ch = 0;
    cr_assert_eq(recv(sv[1], &ch, 1, 0), 1);
    cr_assert_eq(ch, 'x');
    cr_assert_eq(tpio_transport_close(c->t), 0);
    cr_assert(th_run_until(th_fx.loop, &c->p->lost, TMO));
    cr_assert_str_eq(c->p->events, "made,lost:0");
    cr_assert_eq(recv(sv[1], &ch, 1, 0), 0);
    close(sv[1]);
}

Test(connect, use_sock_pipe_is_not_a_socket, .timeout = 20)
{
    int pp[2];
    cr_assert_eq(pipe(pp), 0);
    int fl = fcntl(pp[0], F_GETFL), fdfl = fcntl(pp[0], F_GETFD);
    tpio_connect_opts_t o = {.size = sizeof o, .use_sock = TPIO_ON, .sock = pp[0]};
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, factory, c, &o, on_conn, c, NULL), -ENOTSOCK);
    /* untouched: still open, same flags, still works */
    cr_assert_eq(fcntl(pp[0], F_GETFL), fl);
    cr_assert_eq(fcntl(pp[0], F_GETFD), fdfl);
    cr_assert_eq(write(pp[1], "z", 1), 1);
    char ch = 0;
    cr_assert_eq(read(pp[0], &ch, 1), 1);
    cr_assert_eq(ch, 'z');
    for (int i = 0; i < 5; i++)
        tpio_loop_run_once(th_fx.loop, 0.001);
    cr_assert_eq(c->cb_calls, 0);
    cr_assert_eq(c->factory_calls, 0);
    close(pp[0]);
    close(pp[1]);
}

Test(connect, use_sock_datagram_socket_rejected, .timeout = 20)
{
    int d = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(d, 0);
    int fl = fcntl(d, F_GETFL);
    tpio_connect_opts_t o = {.size = sizeof o, .use_sock = TPIO_ON, .sock = d};
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, factory, c, &o, on_conn, c, NULL), -EPROTOTYPE);
    cr_assert_eq(fcntl(d, F_GETFL), fl);
    int type = 0;
    socklen_t tl = sizeof type;
    cr_assert_eq(getsockopt(d, SOL_SOCKET, SO_TYPE, &type, &tl), 0);
    cr_assert_eq(type, SOCK_DGRAM);
    /* and the same through connect_accepted_socket */
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, factory, c, d, NULL, on_conn, c, NULL), -EPROTOTYPE);
    cr_assert_eq(fcntl(d, F_GETFL), fl);
    for (int i = 0; i < 5; i++)
        tpio_loop_run_once(th_fx.loop, 0.001);
    cr_assert_eq(c->cb_calls, 0);
    cr_assert_eq(c->factory_calls, 0);
    close(d);
}

Test(connect, accepted_socket, .timeout = 20)
{
    uint16_t port = listen_v4();
    int cl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    cr_assert_eq(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
    int s = accept4(c->l, NULL, NULL, SOCK_CLOEXEC); /* blocking, as accept() gives it */
    cr_assert_geq(s, 0);
    cr_assert_eq(fcntl(cl, F_SETFL, O_NONBLOCK), 0);
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, factory, c, s, NULL, on_conn, c, NULL), 0);
    cr_assert(!c->done);
    if (c->created)
        cr_assert(!c->created->made);
    wait_done(c, TMO);
    expect_success(c);
    cr_assert_eq(th_fd(c->t), s);
    check_connected(c, cl);
    close(cl);
}

Test(connect, factory_refuses_connection, .timeout = 20)
{
    c->refuse = true;
    uint16_t port = listen_v4();
    tpio_connect_opts_t o = {.size = sizeof o, .host = "127.0.0.1", .port = port};
    start(c, &o);
    wait_done(c, TMO);
    expect_failure(c, -ECONNABORTED);
    cr_assert_eq(c->factory_calls, 1);
    /* the socket was closed */
    int peer = accept_nb(c->l);
    cr_assert_eq(peer_eof(th_fx.loop, peer), 0);
    close(peer);
}

Test(connect, factory_refuses_use_sock, .timeout = 20)
{
    /* tpio.h: a factory returning NULL closes the connection, and "for
     * tpio_loop_create_connection the completion reports -ECONNABORTED" (use_sock
     * included: the socket is owned from the 0 return on). */
    c->refuse = true;
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    cr_assert_eq(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
    tpio_connect_opts_t o = {.size = sizeof o, .use_sock = TPIO_ON, .sock = sv[0]};
    int r = tpio_loop_create_connection(th_fx.loop, factory, c, &o, on_conn, c, NULL);
    cr_assert_eq(r, 0, "factory refusal returned %s instead of reaching the completion",
                 tpio_err_name(r));
    cr_assert(!c->done);
    wait_done(c, TMO);
    expect_failure(c, -ECONNABORTED);
    cr_assert_eq(c->factory_calls, 1);
    cr_assert_eq(peer_eof(th_fx.loop, sv[1]), 0); /* the library closed sv[0] */
    close(sv[1]);
}

Test(connect, factory_refuses_accepted_socket, .timeout = 20)
{
    /* Either the call succeeds and the completion reports -ECONNABORTED (and
     * the socket, owned from the 0 return, is closed), or the call itself
     * fails with -ECONNABORTED and then leaves the socket untouched. */
    c->refuse = true;
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    cr_assert_eq(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
    int fl = fcntl(sv[0], F_GETFL);
    int r = tpio_loop_connect_accepted_socket(th_fx.loop, factory, c, sv[0], NULL, on_conn, c, NULL);
    cr_assert(!c->done);
    if (r == 0) {
        wait_done(c, TMO);
        expect_failure(c, -ECONNABORTED);
        cr_assert_eq(c->factory_calls, 1);
        cr_assert_eq(peer_eof(th_fx.loop, sv[1]), 0);
    } else {
        cr_assert_eq(r, -ECONNABORTED, "returned %s", tpio_err_name(r));
        cr_assert_eq(fcntl(sv[0], F_GETFL), fl,
                     "error return, but the socket was modified (flags %#x -> %#x)", fl,
                     fcntl(sv[0], F_GETFL));
        for (int i = 0; i < 5; i++)
            tpio_loop_run_once(th_fx.loop, 0.001);
        cr_assert_eq(c->cb_calls, 0);
        close(sv[0]);
    }
    close(sv[1]);
}

Test(connect, bad_arguments, .timeout = 20)
{
    tpio_connect_opts_t o = {.size = sizeof o, .host = "127.0.0.1", .port = 9};
    cr_assert_eq(tpio_loop_create_connection(NULL, factory, c, &o, on_conn, c, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, NULL, c, &o, on_conn, c, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, factory, c, NULL, on_conn, c, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, factory, c, &o, NULL, c, NULL), -EINVAL);
    tpio_connect_opts_t nohost = {.size = sizeof nohost, .port = 9};
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, factory, c, &nohost, on_conn, c, NULL), -EINVAL);
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    cr_assert_eq(tpio_loop_connect_accepted_socket(NULL, factory, c, sv[0], NULL, on_conn, c, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, NULL, c, sv[0], NULL, on_conn, c, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, factory, c, sv[0], NULL, NULL, c, NULL), -EINVAL);
    int r = tpio_loop_connect_accepted_socket(th_fx.loop, factory, c, -1, NULL, on_conn, c, NULL);
    cr_assert(r == -EINVAL || r == -EBADF, "sock -1 gave %s", tpio_err_name(r));
    tpio_connect_opts_t badsock = {.size = sizeof badsock, .use_sock = TPIO_ON, .sock = -1};
    r = tpio_loop_create_connection(th_fx.loop, factory, c, &badsock, on_conn, c, NULL);
    cr_assert(r == -EINVAL || r == -EBADF, "use_sock -1 gave %s", tpio_err_name(r));
    /* the socketpair end was not taken over by the failed calls */
    cr_assert_neq(fcntl(sv[0], F_GETFD), -1);
    cr_assert_eq(fcntl(sv[0], F_GETFL) & O_NONBLOCK, 0);
    close(sv[0]);
    close(sv[1]);
    for (int i = 0; i < 5; i++)
        tpio_loop_run_once(th_fx.loop, 0.001);
    cr_assert_eq(c->cb_calls, 0);
    cr_assert_eq(c->factory_calls, 0);
}
