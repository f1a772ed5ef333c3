/* create_server and the server object: binding, socket options, accepting,
 * start_serving, close / wait_closed, close_clients / abort_clients, errors,
 * many concurrent clients and accept() resource exhaustion.
 *
 * What a TCP server shares with a Unix one (accepting, echo, refusing, close
 * and wait_closed, close_clients / abort_clients, half-close with a tpio
 * client) is written once (TestBothKinds) and runs on each kind of helpers'
 * th_kinds table as server::<name>_tcp and server::<name>_unix. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <tpio.h>
#include "helpers.h"

/* One timeout for every test of the file (Criterion 2.4.1's runner leaks
 * memory under --jobs when tests with different timeouts overlap). */
#define TMO 30

/* ------------------------------------------------------------------------- */
/* helpers                                                                   */
/* ------------------------------------------------------------------------- */

static bool ipv6_loopback_available(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

static int count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

static int getsockopt_int(int fd, int level, int name)
{
    int v = -12345;
    socklen_t l = sizeof v;
    cr_assert_eq(getsockopt(fd, level, name, &v, &l), 0, "getsockopt: %s", strerror(errno));
    return v;
}

/* A server context that records the protocols it hands out. */
#define MAXACC 64
typedef struct srv_ctx {
    th_proto_t tmpl;
    th_proto_t *acc[MAXACC];
    size_t nacc;
    size_t calls;  /* factory calls */
    size_t refuse; /* refuse this many calls first (return NULL) */
    size_t lost;   /* connection_lost calls of accepted protocols */
    tpio_server_t *server; /* its server, until the test closes it itself */
} srv_ctx_t;

/* ---- the suite's fixture ------------------------------------------------
 * th_fx (the loop, counted reports) and the test's server contexts: init
 * makes the first one, `c`; fini closes what each context still has (live
 * accepted connections, its server), waits for all of it and frees them. */
#define MAXCTX 4
static srv_ctx_t *ctxs[MAXCTX];
static srv_ctx_t *c;

static srv_ctx_t *ctx_new(void)
{
    size_t i = 0;
    while (i < MAXCTX && ctxs[i])
        i++;
    cr_assert_lt(i, MAXCTX, "too many server contexts");
    srv_ctx_t *n = calloc(1, sizeof *n);
    cr_assert_not_null(n);
    n->tmpl.base.ops = &th_proto_ops;
    n->tmpl.lost_counter = &n->lost;
    return ctxs[i] = n;
}

static void ctx_free(srv_ctx_t *x)
{
    for (size_t i = 0; i < MAXCTX; i++)
        if (ctxs[i] == x)
            ctxs[i] = NULL;
    for (size_t i = 0; i < x->nacc; i++)
        th_proto_free(x->acc[i]);
    free(x);
}

/* The test closes this server itself: the fixture no longer does. */
static void forget_server(tpio_server_t *s)
{
    for (size_t i = 0; i < MAXCTX; i++)
        if (ctxs[i] && ctxs[i]->server == s)
            ctxs[i]->server = NULL;
}

/* tpio_server_close(), by the test: fini will not close s again. */
static int server_close(tpio_server_t *s)
{
    forget_server(s);
    return tpio_server_close(s);
}

/* Close every live accepted transport of x, close its server (if it still
 * has it) and wait for all of it, then free x. NULL, or what went wrong. */
static const char *shutdown_ctx(srv_ctx_t *x)
{
    for (size_t i = 0; i < x->nacc; i++)
        if (x->acc[i]->made && !x->acc[i]->lost && x->acc[i]->t)
            tpio_transport_close(x->acc[i]->t);
    tpio_server_t *s = x->server;
    if (s) {
        bool closed = false;
        if (server_close(s) != 0 || tpio_server_wait_closed(s, th_done_flag, &closed, NULL) != 0)
            return "closing the server failed";
        if (!th_run_until(th_fx.loop, &closed, 5.0))
            return "wait_closed never fired";
    }
    if (!th_run_until_count(th_fx.loop, &x->lost, x->nacc, 5.0))
        return "accepted connections never lost";
    ctx_free(x);
    return NULL;
}

/* shutdown_ctx() in a test. */
static void shutdown_server(srv_ctx_t *x)
{
    const char *err = shutdown_ctx(x);
    cr_assert_null(err, "%s", err);
}

static void fx_init(void)
{
    th_fx_init();
    memset(ctxs, 0, sizeof ctxs);
    c = ctx_new();
}

static void fx_fini(void)
{
    for (size_t i = MAXCTX; i-- > 0;) {
        if (!ctxs[i])
            continue;
        const char *err = shutdown_ctx(ctxs[i]);
        TH_FX_CHECK(err == NULL, "%s", err);
    }
    th_fx_fini();
}

TestSuite(server, .init = fx_init, .fini = fx_fini);

static tpio_protocol_t *srv_factory(void *arg)
{
    srv_ctx_t *c = arg;
    c->calls++;
    if (c->refuse) {
        c->refuse--;
        return NULL;
    }
    if (c->nacc >= MAXACC)
        cr_assert_fail("too many accepted connections");
    tpio_protocol_t *p = th_factory(&c->tmpl);
    c->acc[c->nacc++] = tpio_container_of(p, th_proto_t, base);
    return p;
}

/* A server of context x, which the fixture closes at the end. */
static tpio_server_t *start_server(srv_ctx_t *x, const tpio_server_opts_t *opts)
{
    tpio_server_t *s = NULL;
    int r = tpio_loop_create_server(th_fx.loop, srv_factory, x, opts, &s);
    cr_assert_eq(r, 0, "tpio_loop_create_server: %s (%s)", tpio_err_name(r), tpio_strerror(r));
    cr_assert_not_null(s);
    cr_assert_null(x->server, "one server per context");
    x->server = s;
    return s;
}

static tpio_server_t *start_server_v4(srv_ctx_t *x)
{
    tpio_server_opts_t opts = {.size = sizeof opts, .host = "127.0.0.1", .port = 0};
    return start_server(x, &opts);
}

static uint16_t addr_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return 0;
}

static int srv_family(tpio_server_t *s, size_t i)
{
    struct sockaddr_storage ss;
    socklen_t l = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, i, &ss, &l), 0);
    return ss.ss_family;
}

static uint16_t srv_port(tpio_server_t *s, size_t i)
{
    struct sockaddr_storage ss;
    socklen_t l = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, i, &ss, &l), 0);
    uint16_t port = addr_port(&ss);
    cr_assert_neq(port, 0);
    return port;
}

/* Index of the first listening socket of the given family, or -1. */
static int srv_index_of_family(tpio_server_t *s, int family)
{
    for (size_t i = 0; i < th_socket_count(s); i++)
        if (srv_family(s, i) == family)
            return (int)i;
    return -1;
}

/* Close the server and run until wait_closed fires (then s is gone). */
static void close_server_and_wait(tpio_server_t *s)
{
    bool closed = false;
    cr_assert_eq(server_close(s), 0);
    cr_assert_eq(tpio_server_wait_closed(s, th_done_flag, &closed, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &closed, 5.0), "wait_closed never fired");
}


/* Plain blocking client socket connected to the loopback of `family`. */
static int client_connect_rcvbuf(int family, uint16_t port, int rcvbuf)
{
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    if (rcvbuf > 0)
        cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    int r;
    if (family == AF_INET) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        r = connect(fd, (struct sockaddr *)&a, sizeof a);
    } else {
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port),
                                 .sin6_addr = IN6ADDR_LOOPBACK_INIT};
        r = connect(fd, (struct sockaddr *)&a, sizeof a);
    }
    if (r != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static int client_connect(int family, uint16_t port)
{
    return client_connect_rcvbuf(family, port, 0);
}

static int client_connect_ok(int family, uint16_t port)
{
    int fd = client_connect(family, port);
    cr_assert_geq(fd, 0, "connect: %s", strerror(-fd));
    return fd;
}

/* A server of kind K for context x (closed by the fixture at the end); its
 * address is th_fx.srv_addr. */
static tpio_server_t *start_kind_server(const th_kind_t *K, srv_ctx_t *x)
{
    tpio_server_t *s = NULL;
    int r = K->create_server(srv_factory, x, &s);
    cr_assert_eq(r, 0, "%s server: %s", K->name, tpio_err_name(r));
    cr_assert_not_null(s);
    cr_assert_null(x->server, "one server per context");
    x->server = s;
    return s;
}

/* A plain client connected to the last kind server (th_fx.srv_addr). */
static int kind_client_ok(int rcvbuf)
{
    int fd = th_client_connect(rcvbuf);
    cr_assert_geq(fd, 0, "connect: %s", strerror(-fd));
    return fd;
}

/* A tpio client of kind K connecting to the last kind server, with a
 * recording protocol (eof_received answers eof_ret): runs until the
 * completion, which must come from the loop. */
static void kind_client(const th_kind_t *K, bool eof_ret, th_conn_t *cc)
{
    static th_proto_t tmpl;
    memset(&tmpl, 0, sizeof tmpl);
    tmpl.base.ops = &th_proto_ops;
    tmpl.eof_ret = eof_ret;
    memset(cc, 0, sizeof *cc);
    cr_assert_eq(K->create_connection(th_factory, &tmpl, th_on_conn, cc), 0);
    cr_assert_eq(cc->calls, 0, "completion ran inside the call");
    cr_assert(th_run_until(th_fx.loop, &cc->done, 10.0));
    cr_assert_eq(cc->calls, 1);
    cr_assert(cc->in_loop);
}

static void client_send(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        cr_assert_gt(n, 0, "send: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

/* Receive exactly n bytes, running the loop meanwhile. Returns bytes read. */
static size_t client_recv(int fd, void *buf, size_t n, double timeout)
{
    size_t got = 0;
    double end = th_now_s() + timeout;
    while (got < n && th_now_s() < end) {
        ssize_t r = recv(fd, (char *)buf + got, n - got, MSG_DONTWAIT);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r == 0)
            break;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            break;
        tpio_loop_run_once(th_fx.loop, 0.005);
    }
    return got;
}

/* Read until the peer closes. Returns 0 (EOF), -errno (e.g. -ECONNRESET) or
 * -ETIMEDOUT; *total gets the byte count. If pattern is true, the bytes must
 * follow the pattern (i & 0xff) from offset 0. */
static int client_drain(int fd, size_t *total, bool pattern,
                        size_t *bad, double timeout)
{
    static unsigned char buf[262144];
    double end = th_now_s() + timeout;
    *total = 0;
    while (th_now_s() < end) {
        ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r > 0) {
            if (pattern && bad)
                for (ssize_t i = 0; i < r; i++)
                    if (buf[i] != (unsigned char)((*total + (size_t)i) & 0xff))
                        (*bad)++;
            *total += (size_t)r;
            continue;
        }
        if (r == 0)
            return 0;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -errno;
        tpio_loop_run_once(th_fx.loop, 0.005);
    }
    return -ETIMEDOUT;
}

/* Run until the first k accepted connections saw connection_made. */
static bool wait_accepted(srv_ctx_t *c, size_t k, double timeout)
{
    double end = th_now_s() + timeout;
    for (;;) {
        bool ok = c->nacc >= k;
        for (size_t i = 0; ok && i < k; i++)
            ok = c->acc[i]->made;
        if (ok)
            return true;
        if (th_now_s() >= end)
            return false;
        tpio_loop_run_once(th_fx.loop, 0.005);
    }
}

static bool wait_rx(th_proto_t *p, size_t n, double timeout)
{
    double end = th_now_s() + timeout;
    while (p->rxlen < n && th_now_s() < end)
        tpio_loop_run_once(th_fx.loop, 0.005);
    return p->rxlen >= n;
}

static unsigned char *make_pattern(size_t n)
{
    unsigned char *b = malloc(n);
    cr_assert_not_null(b);
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(i & 0xff);
    return b;
}

/* A handler that records what it is given and prints nothing. */
typedef struct eh_rec {
    size_t calls;
    int first_error, last_error;
    char message[256];
    tpio_server_t *server;
    int fd;
} eh_rec_t;

static void rec_handler(tpio_loop_t *loop, const tpio_error_context_t *ctx, void *arg)
{
    (void)loop;
    eh_rec_t *e = arg;
    if (e->calls++ == 0) {
        e->first_error = ctx->error;
        snprintf(e->message, sizeof e->message, "%s", ctx->message ? ctx->message : "");
        e->server = ctx->server;
        e->fd = ctx->fd;
    }
    e->last_error = ctx->error;
}

/* ------------------------------------------------------------------------- */
/* binding                                                                   */
/* ------------------------------------------------------------------------- */

Test(server, port_zero_gives_a_real_port, .timeout = TMO)
{
    tpio_server_t *s = start_server_v4(c);
    cr_assert_eq(th_server_loop(s), th_fx.loop);
    cr_assert(th_is_serving(s));
    cr_assert_eq(th_socket_count(s), 1);
    cr_assert_eq(th_conn_count(s), 0);

    struct sockaddr_storage ss;
    socklen_t l = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, 0, &ss, &l), 0);
    cr_assert_eq(l, sizeof(struct sockaddr_in));
    cr_assert_eq(ss.ss_family, AF_INET);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    cr_assert_eq(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK);
    cr_assert_neq(ntohs(sin->sin_port), 0);

    int fd = th_server_socket(s, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in real;
    socklen_t rl = sizeof real;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&real, &rl), 0);
    cr_assert_eq(real.sin_port, sin->sin_port);
    cr_assert_eq(getsockopt_int(fd, SOL_SOCKET, SO_ACCEPTCONN), 1);
    cr_assert_eq(getsockopt_int(fd, SOL_SOCKET, SO_TYPE), SOCK_STREAM);
    cr_assert(fcntl(fd, F_GETFL) & O_NONBLOCK, "listening socket is blocking");

    cr_assert_eq(th_server_socket(s, 1), -ENOENT);
    l = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, 1, &ss, &l), -ENOENT);
    cr_assert_eq(c->calls, 0);
}

Test(server, two_servers_get_different_ports, .timeout = TMO)
{
    srv_ctx_t *c1 = ctx_new(), *c2 = ctx_new();
    tpio_server_t *s1 = start_server_v4(c1);
    tpio_server_t *s2 = start_server_v4(c2);
    cr_assert_neq(s1, s2);
    cr_assert_neq(srv_port(s1, 0), srv_port(s2, 0));
    int a = client_connect_ok(AF_INET, srv_port(s2, 0));
    cr_assert(wait_accepted(c2, 1, 5.0));
    cr_assert_eq(c1->calls, 0);
    cr_assert_eq(th_conn_count(s1), 0);
    cr_assert_eq(th_conn_count(s2), 1);
    close(a);
    shutdown_server(c2);
}

Test(server, several_hosts_one_socket_each, .timeout = TMO)
{
    bool v6 = ipv6_loopback_available();
    static const char *const both[] = {"127.0.0.1", "::1"};
    static const char *const v4only[] = {"127.0.0.1"};
    tpio_server_opts_t opts = {.size = sizeof opts,
        /* hosts overrides host: this bogus name must be ignored */
        .host = "not a host name at all.invalid",
        .hosts = v6 ? both : v4only,
        .nhosts = v6 ? 2 : 1,
        .port = 0,
    };
    if (!v6)
        cr_log_warn("::1 unavailable: testing the IPv4 host only");
    tpio_server_t *s = start_server(c, &opts);
    cr_assert_eq(th_socket_count(s), v6 ? 2 : 1);

    int i4 = srv_index_of_family(s, AF_INET);
    cr_assert_geq(i4, 0);
    struct sockaddr_storage ss;
    socklen_t l = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, (size_t)i4, &ss, &l), 0);
    cr_assert_eq(ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr), INADDR_LOOPBACK);

    int a = client_connect_ok(AF_INET, srv_port(s, (size_t)i4));
    cr_assert(wait_accepted(c, 1, 5.0));
    struct sockaddr_storage peer;
    socklen_t pl = sizeof peer;
    cr_assert_eq(tpio_transport_get_peername(c->acc[0]->t, &peer, &pl), 0);
    cr_assert_eq(peer.ss_family, AF_INET);

    int b = -1;
    if (v6) {
        int i6 = srv_index_of_family(s, AF_INET6);
        cr_assert_geq(i6, 0);
        cr_assert_neq(i6, i4);
        int fd6 = th_server_socket(s, (size_t)i6);
        cr_assert_geq(fd6, 0);
        cr_assert_eq(getsockopt_int(fd6, IPPROTO_IPV6, IPV6_V6ONLY), 1);
        l = sizeof ss;
        cr_assert_eq(tpio_server_get_sockname(s, (size_t)i6, &ss, &l), 0);
        cr_assert_eq(l, sizeof(struct sockaddr_in6));
        cr_assert(IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr));
        b = client_connect_ok(AF_INET6, srv_port(s, (size_t)i6));
        cr_assert(wait_accepted(c, 2, 5.0));
        pl = sizeof peer;
        cr_assert_eq(tpio_transport_get_peername(c->acc[1]->t, &peer, &pl), 0);
        cr_assert_eq(peer.ss_family, AF_INET6);
        cr_assert_eq(th_conn_count(s), 2);
    }
    close(a);
    if (b >= 0)
        close(b);
}

Test(server, ipv6_host_gets_v6only_socket, .timeout = TMO)
{
    if (!ipv6_loopback_available()) {
        cr_log_warn("::1 unavailable: nothing to test");
        return;
    }
    tpio_server_opts_t opts = {.size = sizeof opts, .host = "::1", .port = 0};
    tpio_server_t *s = start_server(c, &opts);
    cr_assert_eq(th_socket_count(s), 1);
    cr_assert_eq(srv_family(s, 0), AF_INET6);
    cr_assert_eq(getsockopt_int(th_server_socket(s, 0), IPPROTO_IPV6, IPV6_V6ONLY), 1);
    int a = client_connect_ok(AF_INET6, srv_port(s, 0));
    cr_assert(wait_accepted(c, 1, 5.0));
    cr_assert_eq(th_kind(c->acc[0]->t), TPIO_TRANSPORT_TCP);
    cr_assert_eq(getsockopt_int(th_fd(c->acc[0]->t), IPPROTO_TCP, TCP_NODELAY), 1);
    close(a);
}

Test(server, null_host_binds_all_interfaces, .timeout = TMO)
{
    /* what asyncio would bind: every passive address whose family works */
    struct addrinfo hints = {.ai_flags = AI_PASSIVE, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    cr_assert_eq(getaddrinfo(NULL, "0", &hints, &res), 0);
    size_t expected = 0;
    bool has4 = false, has6 = false;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0)
            continue;
        close(fd);
        expected++;
        has4 |= ai->ai_family == AF_INET;
        has6 |= ai->ai_family == AF_INET6;
    }
    freeaddrinfo(res);
    cr_assert_gt(expected, 0);

    tpio_server_opts_t opts = {.size = sizeof opts, .host = NULL, .port = 0};
    tpio_server_t *s = start_server(c, &opts);
    cr_assert_eq(th_socket_count(s), expected);
    for (size_t i = 0; i < expected; i++) {
        struct sockaddr_storage ss;
        socklen_t l = sizeof ss;
        cr_assert_eq(tpio_server_get_sockname(s, i, &ss, &l), 0);
        if (ss.ss_family == AF_INET) {
            cr_assert_eq(((struct sockaddr_in *)&ss)->sin_addr.s_addr, htonl(INADDR_ANY));
        } else {
            cr_assert_eq(ss.ss_family, AF_INET6);
            cr_assert(IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&ss)->sin6_addr));
            cr_assert_eq(getsockopt_int(th_server_socket(s, i), IPPROTO_IPV6, IPV6_V6ONLY), 1);
        }
    }
    size_t n = 0;
    int fds[2] = {-1, -1};
    if (has4) {
        fds[0] = client_connect_ok(AF_INET, srv_port(s, (size_t)srv_index_of_family(s, AF_INET)));
        n++;
        cr_assert(wait_accepted(c, n, 5.0));
    }
    if (has6 && ipv6_loopback_available()) {
        fds[1] = client_connect_ok(AF_INET6, srv_port(s, (size_t)srv_index_of_family(s, AF_INET6)));
        n++;
        cr_assert(wait_accepted(c, n, 5.0));
    }
    cr_assert_eq(th_conn_count(s), n);
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* listen() backlog of a listening TCP socket, as the kernel reports it. */
static unsigned listen_backlog(int fd)
{
    struct tcp_info ti;
    socklen_t l = sizeof ti;
    memset(&ti, 0, sizeof ti);
    cr_assert_eq(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l), 0);
    return ti.tcpi_sacked; /* sk_max_ack_backlog for a listener */
}

static unsigned somaxconn(void)
{
    unsigned v = 4096;
    FILE *f = fopen("/proc/sys/net/core/somaxconn", "r");
    if (f) {
        if (fscanf(f, "%u", &v) != 1)
            v = 4096;
        fclose(f);
    }
    return v;
}

Test(server, backlog_default_and_explicit, .timeout = TMO)
{
    srv_ctx_t *c1 = ctx_new(), *c2 = ctx_new();
    tpio_server_t *s1 = start_server_v4(c1);
    unsigned max = somaxconn();
    cr_assert_eq(listen_backlog(th_server_socket(s1, 0)), 100 < max ? 100 : max);
    tpio_server_opts_t opts = {.size = sizeof opts, .host = "127.0.0.1", .backlog = 7};
    tpio_server_t *s2 = start_server(c2, &opts);
    cr_assert_eq(listen_backlog(th_server_socket(s2, 0)), 7);
    shutdown_server(c2);
}

Test(server, reuse_address_default_on_and_off, .timeout = TMO)
{
    srv_ctx_t *c1 = ctx_new(), *c2 = ctx_new(), *c3 = ctx_new();
    tpio_server_t *s1 = start_server_v4(c1);
    cr_assert_eq(getsockopt_int(th_server_socket(s1, 0), SOL_SOCKET, SO_REUSEADDR), 1);
    cr_assert_eq(getsockopt_int(th_server_socket(s1, 0), SOL_SOCKET, SO_REUSEPORT), 0);
    tpio_server_opts_t off = {.size = sizeof off, .host = "127.0.0.1", .reuse_address = TPIO_OFF};
    tpio_server_t *s2 = start_server(c2, &off);
    cr_assert_eq(getsockopt_int(th_server_socket(s2, 0), SOL_SOCKET, SO_REUSEADDR), 0);
    tpio_server_opts_t on = {.size = sizeof on, .host = "127.0.0.1", .reuse_address = TPIO_ON};
    tpio_server_t *s3 = start_server(c3, &on);
    cr_assert_eq(getsockopt_int(th_server_socket(s3, 0), SOL_SOCKET, SO_REUSEADDR), 1);
    /* a server without SO_REUSEADDR still serves */
    int a = client_connect_ok(AF_INET, srv_port(s2, 0));
    cr_assert(wait_accepted(c2, 1, 5.0));
    close(a);
    shutdown_server(c3);
    shutdown_server(c2);
}

Test(server, reuse_port_shares_a_port, .timeout = TMO)
{
    srv_ctx_t *c1 = ctx_new(), *c2 = ctx_new(), *c3 = ctx_new();
    tpio_server_opts_t opts = {.size = sizeof opts, .host = "127.0.0.1", .reuse_port = TPIO_ON};
    tpio_server_t *s1 = start_server(c1, &opts);
    cr_assert_eq(getsockopt_int(th_server_socket(s1, 0), SOL_SOCKET, SO_REUSEPORT), 1);
    opts.port = srv_port(s1, 0);
    tpio_server_t *s2 = start_server(c2, &opts);
    cr_assert_eq(getsockopt_int(th_server_socket(s2, 0), SOL_SOCKET, SO_REUSEPORT), 1);
    cr_assert_eq(srv_port(s2, 0), opts.port);

    /* without reuse_port the port is taken */
    tpio_server_opts_t plain = {.size = sizeof plain, .host = "127.0.0.1", .port = opts.port};
    tpio_server_t *s3 = NULL;
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, c3, &plain, &s3), -EADDRINUSE);
    cr_assert_eq(c3->calls, 0);
    ctx_free(c3);

    /* connections land on one of them */
    int fds[8];
    for (int i = 0; i < 8; i++)
        fds[i] = client_connect_ok(AF_INET, opts.port);
    double end = th_now_s() + 5.0;
    while (c1->nacc + c2->nacc < 8 && th_now_s() < end)
        tpio_loop_run_once(th_fx.loop, 0.005);
    cr_assert_eq(c1->nacc + c2->nacc, 8);
    cr_assert_eq(th_conn_count(s1) + th_conn_count(s2), 8);
    for (int i = 0; i < 8; i++)
        close(fds[i]);
    shutdown_server(c2);
}

Test(server, port_in_use_is_eaddrinuse, .timeout = TMO)
{
    uint16_t port;
    int lfd = th_listen_v4(&port);

    int fds_before = count_open_fds();
    tpio_server_opts_t opts = {.size = sizeof opts, .host = "127.0.0.1", .port = port};
    tpio_server_t *s = NULL;
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, c, &opts, &s), -EADDRINUSE);
    opts.reuse_address = TPIO_ON;
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, c, &opts, &s), -EADDRINUSE);
    opts.reuse_port = TPIO_ON; /* the other socket has no SO_REUSEPORT */
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, c, &opts, &s), -EADDRINUSE);
    if (ipv6_loopback_available()) {
        /* the second host fails after the first bound: nothing may leak */
        static const char *const hosts[] = {"::1", "127.0.0.1"};
        tpio_server_opts_t two = {.size = sizeof two, .hosts = hosts, .nhosts = 2, .port = port};
        cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, c, &two, &s), -EADDRINUSE);
    }
    cr_assert_eq(count_open_fds(), fds_before, "a failed create_server leaked descriptors");
    cr_assert_eq(c->calls, 0);
    close(lfd);
}

Test(server, bad_arguments, .timeout = TMO)
{
    int fds_before = count_open_fds();
    tpio_server_opts_t opts = {.size = sizeof opts, .host = "127.0.0.1"};
    tpio_server_t *s = NULL;
    cr_assert_eq(tpio_loop_create_server(NULL, srv_factory, c, &opts, &s), -EINVAL);
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, NULL, c, &opts, &s), -EINVAL);
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, c, NULL, &s), -EINVAL);
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, c, &opts, NULL), -EINVAL);
    tpio_server_opts_t nohosts = {.size = sizeof nohosts, .nhosts = 2, .hosts = NULL};
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, c, &nohosts, &s), -EINVAL);
    tpio_server_opts_t nosocks = {.size = sizeof nosocks, .nsocks = 1, .socks = NULL};
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, c, &nosocks, &s), -EINVAL);

    tpio_server_opts_t bad = {.size = sizeof bad, .host = "not a host name at all.invalid"};
    int r = tpio_loop_create_server(th_fx.loop, srv_factory, c, &bad, &s);
    cr_assert(r <= TPIO_EAI_NONAME && r >= TPIO_EAI_OTHER,
              "bad host gave %d (%s), not a TPIO_EAI_* code", r, tpio_err_name(r));
    cr_assert_eq(strncmp(tpio_err_name(r), "TPIO_EAI_", 9), 0);

    tpio_server_opts_t mismatch = {.size = sizeof mismatch, .host = "::1", .family = AF_INET};
    r = tpio_loop_create_server(th_fx.loop, srv_factory, c, &mismatch, &s);
    cr_assert_lt(r, 0, "::1 with AF_INET succeeded");
    tpio_server_opts_t mismatch2 = {.size = sizeof mismatch2, .host = "127.0.0.1", .family = AF_INET6};
    r = tpio_loop_create_server(th_fx.loop, srv_factory, c, &mismatch2, &s);
    cr_assert_lt(r, 0, "127.0.0.1 with AF_INET6 succeeded");
    cr_assert_eq(count_open_fds(), fds_before, "failed create_server calls leaked descriptors");

    /* the server functions with NULL */
    cr_assert_eq(tpio_server_close(NULL), -EINVAL);
    cr_assert_eq(tpio_server_wait_closed(NULL, th_done_flag, NULL, NULL), -EINVAL);
    cr_assert_eq(tpio_server_start_serving(NULL), -EINVAL);
    cr_assert_eq(tpio_server_close_clients(NULL), -EINVAL);
    cr_assert_eq(tpio_server_abort_clients(NULL), -EINVAL);
    bool b;
    size_t n;
    int fd;
    tpio_loop_t *lp;
    cr_assert_eq(tpio_server_is_serving(NULL, &b), -EINVAL);
    cr_assert_eq(tpio_server_get_socket_count(NULL, &n), -EINVAL);
    cr_assert_eq(tpio_server_get_socket(NULL, 0, &fd), -EINVAL);
    cr_assert_eq(tpio_server_get_connection_count(NULL, &n), -EINVAL);
    cr_assert_eq(tpio_server_get_loop(NULL, &lp), -EINVAL);
    struct sockaddr_storage ss;
    socklen_t l = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(NULL, 0, &ss, &l), -EINVAL);

    /* and with a real server */
    s = start_server_v4(c);
    cr_assert_eq(tpio_server_wait_closed(s, NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(tpio_server_get_sockname(s, 0, NULL, &l), -EINVAL);
    cr_assert_eq(tpio_server_get_sockname(s, 0, &ss, NULL), -EINVAL);
    cr_assert_eq(c->calls, 0);
}

/* ------------------------------------------------------------------------- */
/* accepting                                                                 */
/* ------------------------------------------------------------------------- */

TestBothKinds(server, accepted_connection_callbacks_and_properties, .timeout = TMO)
{
    tpio_server_t *s = start_kind_server(K, c);
    int a = kind_client_ok(0);
    /* the kernel completed the handshake; nothing ran yet */
    cr_assert_eq(c->calls, 0);
    cr_assert(wait_accepted(c, 1, 5.0));
    cr_assert_eq(c->calls, 1);
    th_proto_t *p = c->acc[0];
    cr_assert_str_eq(p->events, "made");
    tpio_transport_t *t = p->t;
    cr_assert_not_null(t);
    cr_assert_eq(th_protocol(t), &p->base);
    cr_assert_eq(th_kind(t), K->kind);
    cr_assert_eq(th_transport_loop(t), th_fx.loop);
    cr_assert_not(th_is_closing(t));
    cr_assert(th_is_reading(t));
    cr_assert_eq(th_conn_count(s), 1);

    int fd = th_fd(t);
    cr_assert_geq(fd, 0);
    if (K->kind == TPIO_TRANSPORT_TCP)
        cr_assert_eq(getsockopt_int(fd, IPPROTO_TCP, TCP_NODELAY), 1, "no TCP_NODELAY");
    cr_assert(fcntl(fd, F_GETFL) & O_NONBLOCK);

    /* peername = the client's address (family, length, port and address for
     * TCP; unnamed for a Unix client), sockname = the server's */
    struct sockaddr_storage cl;
    socklen_t l = sizeof cl;
    cr_assert_eq(getsockname(a, (struct sockaddr *)&cl, &l), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_peername(t, &ss, &sl), 0);
    cr_assert(th_same_addr((struct sockaddr *)&ss, sl, (struct sockaddr *)&cl, l));
    sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_sockname(t, &ss, &sl), 0);
    cr_assert(th_same_addr((struct sockaddr *)&ss, sl, (struct sockaddr *)&th_fx.srv_addr,
                           th_fx.srv_addrlen));
    tpio_extra_t ex;
    cr_assert_eq(tpio_transport_get_extra_info(t, "peername", &ex), 0);
    cr_assert_eq(ex.type, TPIO_EXTRA_ADDR);
    cr_assert(th_same_addr(ex.addr, ex.addrlen, (struct sockaddr *)&cl, l));
    cr_assert_eq(tpio_transport_get_extra_info(t, "socket", &ex), 0);
    cr_assert_eq(ex.type, TPIO_EXTRA_FD);
    cr_assert_eq(ex.fd, fd);

    client_send(a, "hello world", 11);
    cr_assert(wait_rx(p, 11, 5.0));
    cr_assert_eq(p->rxlen, 11);
    cr_assert_eq(memcmp(p->rx, "hello world", 11), 0);
    cr_assert_str_eq(p->events, "made,data");

    cr_assert_eq(shutdown(a, SHUT_WR), 0);
    cr_assert(th_run_until(th_fx.loop, &p->lost, 5.0));
    cr_assert_str_eq(p->events, "made,data,eof,lost:0");
    cr_assert_eq(th_conn_count(s), 0);
    size_t total = 0;
    cr_assert_eq(client_drain(a, &total, false, NULL, 5.0), 0);
    cr_assert_eq(total, 0);
    close(a);
}

TestBothKinds(server, echo_and_server_side_close, .timeout = TMO)
{
    c->tmpl.echo = true;
    start_kind_server(K, c);
    int a = kind_client_ok(0);
    cr_assert(wait_accepted(c, 1, 5.0));
    client_send(a, "ping", 4);
    char buf[16] = {0};
    cr_assert_eq(client_recv(a, buf, 4, 5.0), 4);
    cr_assert_eq(memcmp(buf, "ping", 4), 0);
    th_proto_t *p = c->acc[0];
    cr_assert_eq(tpio_transport_close(p->t), 0);
    cr_assert_not(p->lost, "connection_lost ran inside tpio_transport_close");
    cr_assert(th_run_until(th_fx.loop, &p->lost, 5.0));
    cr_assert_str_eq(p->events, "made,data,lost:0");
    size_t total = 0;
    cr_assert_eq(client_drain(a, &total, false, NULL, 5.0), 0);
    cr_assert_eq(total, 0);
    close(a);
}

TestBothKinds(server, connection_count_tracks_live_connections, .timeout = TMO)
{
    tpio_server_t *s = start_kind_server(K, c);
    int fds[3];
    for (int i = 0; i < 3; i++)
        fds[i] = kind_client_ok(0);
    cr_assert(wait_accepted(c, 3, 5.0));
    cr_assert_eq(th_conn_count(s), 3);
    close(fds[1]);
    cr_assert(th_run_until_count(th_fx.loop, &c->lost, 1, 5.0));
    cr_assert_eq(th_conn_count(s), 2);
    /* a server-side abort counts too */
    th_proto_t *victim = NULL;
    for (int i = 0; i < 3; i++)
        if (!c->acc[i]->lost)
            victim = c->acc[i];
    cr_assert_not_null(victim);
    cr_assert_eq(tpio_transport_abort(victim->t), 0);
    cr_assert(th_run_until(th_fx.loop, &victim->lost, 5.0));
    cr_assert_str_eq(victim->events, "made,lost:0");
    cr_assert_eq(th_conn_count(s), 1);
    for (int i = 0; i < 3; i++)
        if (i != 1)
            close(fds[i]);
    cr_assert(th_run_until_count(th_fx.loop, &c->lost, 3, 5.0));
    cr_assert_eq(th_conn_count(s), 0);
}

TestBothKinds(server, factory_returning_null_refuses_the_connection, .timeout = TMO)
{
    eh_rec_t e = {0};
    tpio_loop_set_error_handler(th_fx.loop, rec_handler, &e);
    c->tmpl.echo = true;
    c->refuse = 1;
    tpio_server_t *s = start_kind_server(K, c);
    int a = kind_client_ok(0);
    size_t total = 0;
    int r = client_drain(a, &total, false, NULL, 5.0);
    cr_assert(r == 0 || r == -ECONNRESET, "refused client: %s", tpio_err_name(r));
    cr_assert_eq(total, 0);
    cr_assert_eq(c->calls, 1);
    cr_assert_eq(c->nacc, 0);
    cr_assert_eq(th_conn_count(s), 0);
    cr_assert(th_is_serving(s));
    close(a);

    /* the server keeps serving */
    int b = kind_client_ok(0);
    cr_assert(wait_accepted(c, 1, 5.0));
    client_send(b, "again", 5);
    char buf[8] = {0};
    cr_assert_eq(client_recv(b, buf, 5, 5.0), 5);
    cr_assert_eq(memcmp(buf, "again", 5), 0);
    cr_assert_eq(c->calls, 2);
    cr_assert_eq(th_conn_count(s), 1);
    close(b);
    cr_assert(th_run_until_count(th_fx.loop, &c->lost, 1, 5.0));
    cr_assert_str_eq(c->acc[0]->events, "made,data,eof,lost:0");
}

Test(server, start_serving_off_then_on, .timeout = TMO)
{
    tpio_server_opts_t opts = {.size = sizeof opts, .host = "127.0.0.1", .start_serving = TPIO_OFF};
    tpio_server_t *s = start_server(c, &opts);
    cr_assert_not(th_is_serving(s));
    cr_assert_eq(th_socket_count(s), 1);
    uint16_t port = srv_port(s, 0);

    /* bound but not listening yet, as asyncio's: the client is refused */
    int a = client_connect(AF_INET, port);
    cr_assert_eq(a, -ECONNREFUSED, "connect before start_serving: %s", strerror(-a));
    cr_assert_eq(c->calls, 0, "accepted although not serving");
    cr_assert_eq(th_conn_count(s), 0);

    cr_assert_eq(tpio_server_start_serving(s), 0);
    cr_assert(th_is_serving(s));
    cr_assert_eq(c->calls, 0, "factory called inside start_serving");
    a = client_connect(AF_INET, port);
    cr_assert_geq(a, 0, "connect after start_serving: %s", strerror(-a));
    cr_assert(wait_accepted(c, 1, 5.0));
    cr_assert_str_eq(c->acc[0]->events, "made");
    cr_assert_eq(tpio_server_start_serving(s), 0); /* idempotent */
    cr_assert(th_is_serving(s));

    /* once closed (the connection keeps the server object alive) */
    cr_assert_eq(server_close(s), 0);
    cr_assert_not(th_is_serving(s));
    cr_assert_eq(tpio_server_start_serving(s), -EBADF);
    cr_assert_not(th_is_serving(s));
    /* register before the last connection goes (it frees the server) */
    bool closed = false;
    cr_assert_eq(tpio_server_wait_closed(s, th_done_flag, &closed, NULL), 0);
    close(a);
    cr_assert(th_run_until_count(th_fx.loop, &c->lost, 1, 5.0));
    cr_assert(th_run_until(th_fx.loop, &closed, 5.0));
}

Test(server, serves_sockets_passed_in, .timeout = TMO)
{
    uint16_t port;
    int lfd = th_listen_v4(&port);

    c->tmpl.echo = true;
    tpio_server_opts_t opts = {.size = sizeof opts, .socks = &lfd, .nsocks = 1};
    tpio_server_t *s = start_server(c, &opts);
    cr_assert_eq(th_socket_count(s), 1);
    cr_assert_eq(th_server_socket(s, 0), lfd);
    cr_assert_eq(srv_port(s, 0), port);
    cr_assert(th_is_serving(s));
    int cfd = client_connect_ok(AF_INET, port);
    cr_assert(wait_accepted(c, 1, 5.0));
    client_send(cfd, "sock", 4);
    char buf[8] = {0};
    cr_assert_eq(client_recv(cfd, buf, 4, 5.0), 4);
    cr_assert_eq(memcmp(buf, "sock", 4), 0);
    close(cfd);
    cr_assert(th_run_until_count(th_fx.loop, &c->lost, 1, 5.0));
    close_server_and_wait(s);
    /* the server owned the socket and closed it */
    cr_assert_eq(fcntl(lfd, F_GETFD), -1, "the passed socket was not closed");
    cr_assert_eq(errno, EBADF);
}

/* ------------------------------------------------------------------------- */
/* close / wait_closed                                                       */
/* ------------------------------------------------------------------------- */

typedef struct wc_log {
    char order[64];
    th_proto_t *watch;   /* must be lost by the time wait_closed fires */
    bool watch_was_lost[4];
    size_t fired;
    bool flags[4];
} wc_log_t;

typedef struct wc_arg {
    wc_log_t *log;
    int id;
} wc_arg_t;

static void wc_cb(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop;
    cr_assert_eq(err, 0);
    wc_arg_t *w = arg;
    wc_log_t *g = w->log;
    size_t n = strlen(g->order);
    snprintf(g->order + n, sizeof g->order - n, "%sw%d", n ? "," : "", w->id);
    g->watch_was_lost[w->id] = g->watch ? g->watch->lost : true;
    g->flags[w->id] = true;
    g->fired++;
}

TestBothKinds(server, close_keeps_connections_and_wait_closed_waits_for_them, .timeout = TMO)
{
    c->tmpl.echo = true;
    tpio_server_t *s = start_kind_server(K, c);
    int a = kind_client_ok(0);
    cr_assert(wait_accepted(c, 1, 5.0));
    th_proto_t *p = c->acc[0];

    static wc_log_t log;
    log.watch = p;
    wc_arg_t w1 = {&log, 1}, w2 = {&log, 2};
    /* registered while serving: must wait for close AND the connection */
    cr_assert_eq(tpio_server_wait_closed(s, wc_cb, &w1, NULL), 0);
    th_spin_for(th_fx.loop, 0.1);
    cr_assert_eq(log.fired, 0, "wait_closed fired while serving");

    cr_assert_eq(server_close(s), 0);
    cr_assert_not(th_is_serving(s));
    cr_assert_eq(th_socket_count(s), 0);
    cr_assert_eq(th_server_socket(s, 0), -ENOENT);
    cr_assert_eq(tpio_server_close(s), 0); /* idempotent */
    cr_assert_eq(log.fired, 0);

    /* no new connections: refused (TCP), no socket file any more (Unix) */
    int r = th_client_connect(0);
    cr_assert_eq(r, K->gone_err, "connect after close: %s", tpio_err_name(r));

    /* the existing one still works */
    cr_assert_eq(th_conn_count(s), 1);
    client_send(a, "after-close", 11);
    char buf[16] = {0};
    cr_assert_eq(client_recv(a, buf, 11, 5.0), 11);
    cr_assert_eq(memcmp(buf, "after-close", 11), 0);
    cr_assert_eq(tpio_server_wait_closed(s, wc_cb, &w2, NULL), 0);
    th_spin_for(th_fx.loop, 0.1);
    cr_assert_eq(log.fired, 0, "wait_closed fired while a connection is alive");
    cr_assert_not(p->lost);

    /* the connection goes: now (and only now) the waiters run, in order */
    close(a);
    cr_assert(th_run_until(th_fx.loop, &log.flags[2], 5.0));
    cr_assert_str_eq(log.order, "w1,w2");
    cr_assert(log.watch_was_lost[1], "wait_closed ran before connection_lost");
    cr_assert(log.watch_was_lost[2], "wait_closed ran before connection_lost");
    cr_assert_str_eq(p->events, "made,data,eof,lost:0");
    th_spin_for(th_fx.loop, 0.05);
    cr_assert_eq(log.fired, 2);
}

TestBothKinds(server, wait_closed_on_closed_idle_server_fires_next_iteration, .timeout = TMO)
{
    tpio_server_t *s = start_kind_server(K, c);
    static wc_log_t log;
    wc_arg_t w1 = {&log, 1}, w2 = {&log, 2};
    cr_assert_eq(server_close(s), 0);
    cr_assert_eq(tpio_server_wait_closed(s, wc_cb, &w1, NULL), 0);
    cr_assert_eq(tpio_server_wait_closed(s, wc_cb, &w2, NULL), 0);
    cr_assert_eq(log.fired, 0, "wait_closed called back inside the call");
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(log.fired, 2, "wait_closed did not fire on the next iteration");
    cr_assert_str_eq(log.order, "w1,w2");
}

TestBothKinds(server, close_without_connections_then_loop_close, .timeout = TMO)
{
    tpio_server_t *s = start_kind_server(K, c);
    int lfd = th_server_socket(s, 0);
    cr_assert_eq(server_close(s), 0);
    cr_assert_eq(th_socket_count(s), 0);
    bool closed = false;
    cr_assert_eq(tpio_server_wait_closed(s, th_done_flag, &closed, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &closed, 5.0));
    /* the listening socket is gone */
    cr_assert_eq(fcntl(lfd, F_GETFD), -1);
}

static void drain_many(const int *fds, int n, size_t *totals,
                       int *results, size_t *bad, double timeout)
{
    static unsigned char buf[262144];
    bool done[16] = {false};
    int left = n;
    double end = th_now_s() + timeout;
    for (int i = 0; i < n; i++) {
        totals[i] = 0;
        results[i] = -ETIMEDOUT;
    }
    while (left > 0 && th_now_s() < end) {
        bool progress = false;
        for (int i = 0; i < n; i++) {
            if (done[i])
                continue;
            ssize_t r = recv(fds[i], buf, sizeof buf, MSG_DONTWAIT);
            if (r > 0) {
                for (ssize_t k = 0; k < r; k++)
                    if (buf[k] != (unsigned char)((totals[i] + (size_t)k) & 0xff))
                        (*bad)++;
                totals[i] += (size_t)r;
                progress = true;
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                results[i] = r == 0 ? 0 : -errno;
                done[i] = true;
                left--;
            }
        }
        tpio_loop_run_once(th_fx.loop, (progress ? 0 : 5) / 1000.0);
    }
}

#define BIG (16u * 1024 * 1024)

TestBothKinds(server, close_clients_flushes_then_loses_each_connection, .timeout = TMO)
{
    tpio_server_t *s = start_kind_server(K, c);
    int fds[2];
    for (int i = 0; i < 2; i++)
        fds[i] = kind_client_ok(65536);
    cr_assert(wait_accepted(c, 2, 5.0));
    unsigned char *data = make_pattern(BIG);
    for (int i = 0; i < 2; i++) {
        tpio_transport_t *t = c->acc[i]->t;
        cr_assert_eq(tpio_transport_set_write_buffer_limits(t, 64 * 1024 * 1024, TPIO_LIMIT_DEFAULT), 0);
        cr_assert_eq(tpio_transport_write(t, data, BIG), 0);
        cr_assert_gt(th_wbuf_size(t), 0, "everything went out at once");
    }
    free(data);
    cr_assert_eq(tpio_server_close_clients(s), 0);
    for (int i = 0; i < 2; i++) {
        cr_assert(th_is_closing(c->acc[i]->t));
        cr_assert_not(c->acc[i]->lost, "connection_lost ran inside close_clients");
    }
    cr_assert(th_is_serving(s), "close_clients closed the server");

    size_t totals[2], bad = 0;
    int results[2];
    drain_many(fds, 2, totals, results, &bad, 20.0);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(results[i], 0, "client %d: %s", i, tpio_err_name(results[i]));
        cr_assert_eq(totals[i], BIG, "client %d got %zu bytes", i, totals[i]);
    }
    cr_assert_eq(bad, 0, "corrupted bytes");
    cr_assert(th_run_until_count(th_fx.loop, &c->lost, 2, 5.0));
    for (int i = 0; i < 2; i++)
        cr_assert_str_eq(c->acc[i]->events, "made,lost:0");
    cr_assert_eq(th_conn_count(s), 0);
    for (int i = 0; i < 2; i++)
        close(fds[i]);

    /* still serving */
    int b = kind_client_ok(0);
    cr_assert(wait_accepted(c, 3, 5.0));
    close(b);
}

/* Three clients: the first has BIG bytes buffered under a high watermark
 * that does not pause, the second nothing, the third BIG bytes under the
 * default watermarks, which paused it. */
TestBothKinds(server, abort_clients_loses_connections_at_once, .timeout = TMO)
{
    tpio_server_t *s = start_kind_server(K, c);
    int fds[3];
    for (int i = 0; i < 3; i++)
        fds[i] = kind_client_ok(65536);
    cr_assert(wait_accepted(c, 3, 5.0));
    unsigned char *data = make_pattern(BIG);
    tpio_transport_t *t0 = c->acc[0]->t, *t2 = c->acc[2]->t;
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t0, 64 * 1024 * 1024, TPIO_LIMIT_DEFAULT), 0);
    cr_assert_eq(tpio_transport_write(t0, data, BIG), 0);
    cr_assert_gt(th_wbuf_size(t0), 0);
    cr_assert_eq(tpio_transport_write(t2, data, BIG), 0);
    cr_assert_gt(th_wbuf_size(t2), 0);
    cr_assert_str_eq(c->acc[2]->events, "made,pause");
    free(data);

    cr_assert_eq(tpio_server_abort_clients(s), 0);
    for (int i = 0; i < 3; i++) {
        cr_assert(th_is_closing(c->acc[i]->t));
        cr_assert_not(c->acc[i]->lost, "connection_lost ran inside abort_clients");
    }
    /* lost at once: the client does not read, nothing is flushed */
    cr_assert(th_run_until_count(th_fx.loop, &c->lost, 3, 1.0));
    for (int i = 0; i < 2; i++)
        cr_assert_str_eq(c->acc[i]->events, "made,lost:0");
    /* paused, then aborted: no resume_writing */
    cr_assert_str_eq(c->acc[2]->events, "made,pause,lost:0");
    cr_assert_eq(th_conn_count(s), 0);
    cr_assert(th_is_serving(s));

    size_t totals[3], bad = 0;
    int results[3];
    drain_many(fds, 3, totals, results, &bad, 10.0);
    for (int i = 0; i < 3; i++)
        cr_assert(results[i] == 0 || results[i] == -ECONNRESET, "client %d: %s", i,
                  tpio_err_name(results[i]));
    cr_assert_lt(totals[0], BIG, "aborted transport flushed its buffer");
    cr_assert_eq(totals[1], 0);
    cr_assert_lt(totals[2], BIG, "aborted transport flushed its buffer");
    cr_assert_eq(bad, 0);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
}

/* ------------------------------------------------------------------------- */
/* half-close, with a tpio client                                            */
/* ------------------------------------------------------------------------- */

TestBothKinds(server, half_close_client_to_server, .timeout = 20)
{
    c->tmpl.eof_ret = true; /* the server keeps its side open after EOF */
    start_kind_server(K, c);
    th_conn_t cc;
    kind_client(K, false, &cc);
    cr_assert_eq(cc.err, 0);
    cr_assert(th_can_write_eof(cc.t));
    cr_assert_eq(tpio_transport_write(cc.t, "request", 7), 0);
    cr_assert_eq(tpio_transport_write_eof(cc.t), 0);
    cr_assert_eq(tpio_transport_write(cc.t, "late", 4), -ESHUTDOWN);
    cr_assert_not(th_is_closing(cc.t));
    cr_assert(wait_accepted(c, 1, 10.0));
    th_proto_t *sp = c->acc[0];
    cr_assert(th_run_until(th_fx.loop, &sp->eof, 10.0));
    cr_assert_str_eq(sp->events, "made,data,eof");
    cr_assert_eq(sp->rxlen, 7);
    cr_assert_eq(memcmp(sp->rx, "request", 7), 0);
    cr_assert_not(th_is_closing(sp->t));
    /* The server still writes after the client's EOF, then closes. */
    cr_assert_eq(tpio_transport_write(sp->t, "response", 8), 0);
    cr_assert_eq(tpio_transport_close(sp->t), 0);
    bool clost = false;
    cc.p->lost_flag = &clost;
    cr_assert(th_run_until(th_fx.loop, &clost, 10.0));
    cr_assert(th_run_until_count(th_fx.loop, &c->lost, 1, 10.0));
    cr_assert_eq(cc.p->rxlen, 8);
    cr_assert_eq(memcmp(cc.p->rx, "response", 8), 0);
    cr_assert_str_eq(cc.p->events, "made,data,eof,lost:0");
    cr_assert_str_eq(sp->events, "made,data,eof,lost:0");
    th_proto_free(cc.p);
}

TestBothKinds(server, half_close_server_to_client, .timeout = 20)
{
    start_kind_server(K, c);
    th_conn_t cc;
    kind_client(K, true, &cc); /* the client keeps its side open after EOF */
    cr_assert_eq(cc.err, 0);
    cr_assert(wait_accepted(c, 1, 10.0));
    th_proto_t *sp = c->acc[0];
    cr_assert_eq(tpio_transport_write(sp->t, "greeting", 8), 0);
    cr_assert_eq(tpio_transport_write_eof(sp->t), 0);
    cr_assert(th_run_until(th_fx.loop, &cc.p->eof, 10.0));
    cr_assert_str_eq(cc.p->events, "made,data,eof");
    cr_assert_eq(memcmp(cc.p->rx, "greeting", 8), 0);
    cr_assert_not(th_is_closing(cc.t));
    /* The client answers on its still-open side, then closes. */
    cr_assert_eq(tpio_transport_write(cc.t, "answer", 6), 0);
    cr_assert_eq(tpio_transport_close(cc.t), 0);
    cr_assert(th_run_until_count(th_fx.loop, &c->lost, 1, 10.0));
    cr_assert(th_run_until(th_fx.loop, &cc.p->lost, 10.0));
    cr_assert_eq(sp->rxlen, 6);
    cr_assert_eq(memcmp(sp->rx, "answer", 6), 0);
    cr_assert_str_eq(sp->events, "made,data,eof,lost:0");
    cr_assert_str_eq(cc.p->events, "made,data,eof,lost:0");
    th_proto_free(cc.p);
}

/* ------------------------------------------------------------------------- */
/* close, then close_clients: wait_closed comes after every connection_lost  */
/* ------------------------------------------------------------------------- */

typedef struct order {
    char log[256];
    size_t slost_at_wc;
    size_t conns_at_wc;
    size_t *slost;
    tpio_server_t *s;
    bool wc;
} order_t;

static void order_wc(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop;
    cr_assert_eq(err, 0);
    order_t *o = arg;
    o->wc = true;
    o->slost_at_wc = *o->slost;
    o->conns_at_wc = th_conn_count(o->s);
    strcat(o->log, "wc");
}

TestBothKinds(server, close_clients_and_wait_closed_ordering, .timeout = 30)
{
    tpio_server_t *s = start_kind_server(K, c);
    order_t o = {.slost = &c->lost, .s = s};
    /* Registered before close: fires only once closed and empty. */
    cr_assert_eq(tpio_server_wait_closed(s, order_wc, &o, NULL), 0);

    th_conn_t cc[2];
    bool clost[2] = {false, false};
    for (int i = 0; i < 2; i++) {
        kind_client(K, false, &cc[i]);
        cr_assert_eq(cc[i].err, 0);
        cc[i].p->lost_flag = &clost[i];
    }
    cr_assert(wait_accepted(c, 2, 10.0));
    cr_assert_eq(th_conn_count(s), 2);

    cr_assert_eq(server_close(s), 0);
    cr_assert_not(th_is_serving(s));
    if (K->family == AF_UNIX) {
        /* the socket file goes with close */
        struct stat st;
        cr_assert_eq(stat(((struct sockaddr_un *)&th_fx.srv_addr)->sun_path, &st), -1);
    }
    /* Connections stay open after close; wait_closed does not fire. */
    th_run_timer(th_fx.loop, 0.1, 10.0);
    cr_assert_not(o.wc);
    cr_assert_eq(th_conn_count(s), 2);
    cr_assert_str_eq(c->acc[0]->events, "made");
    cr_assert_str_eq(cc[0].p->events, "made");
    /* Established connections still work. */
    cr_assert_eq(tpio_transport_write(cc[0].t, "still", 5), 0);
    cr_assert(wait_rx(c->acc[0], 5, 10.0));
    /* A new client finds nothing there: refused (TCP), no file (Unix). */
    th_conn_t late;
    kind_client(K, false, &late);
    cr_assert_eq(late.err, K->gone_err, "late client: %s", tpio_err_name(late.err));

    cr_assert_eq(tpio_server_close_clients(s), 0);
    cr_assert(th_run_until(th_fx.loop, &o.wc, 10.0));
    cr_assert_eq(o.slost_at_wc, 2, "wait_closed ran before every connection_lost");
    cr_assert_eq(o.conns_at_wc, 0);
    cr_assert_str_eq(o.log, "wc");
    cr_assert_str_eq(c->acc[0]->events, "made,data,lost:0");
    cr_assert_str_eq(c->acc[1]->events, "made,lost:0");
    cr_assert(th_run_until(th_fx.loop, &clost[0], 10.0));
    cr_assert(th_run_until(th_fx.loop, &clost[1], 10.0));
    cr_assert_str_eq(cc[0].p->events, "made,eof,lost:0");
    cr_assert_str_eq(cc[1].p->events, "made,eof,lost:0");
    th_proto_free(cc[0].p);
    th_proto_free(cc[1].p);
    /* The server object is gone once its wait_closed callbacks returned. */
}

/* ------------------------------------------------------------------------- */
/* many clients                                                              */
/* ------------------------------------------------------------------------- */

#define NCLIENTS 1000

typedef struct big_ctx {
    size_t next, made, echoed, bad, client_lost, client_err, connect_err, server_lost;
    int first_connect_err;
    struct cli *clis[NCLIENTS];
} big_ctx_t;

typedef struct cli {
    tpio_protocol_t base;
    tpio_transport_t *t;
    big_ctx_t *ctx;
    size_t idx;
    char msg[32];
    size_t mlen;
    char rx[64];
    size_t rxlen;
} cli_t;

static void cli_made(tpio_protocol_t *bp, tpio_transport_t *t)
{
    cli_t *c = tpio_container_of(bp, cli_t, base);
    c->t = t;
    c->ctx->made++;
    if (tpio_transport_write(t, c->msg, c->mlen) != 0)
        c->ctx->bad++;
}

static void cli_data(tpio_protocol_t *bp, const void *d, size_t n)
{
    cli_t *c = tpio_container_of(bp, cli_t, base);
    if (c->rxlen + n > c->mlen) {
        c->ctx->bad++;
        return;
    }
    memcpy(c->rx + c->rxlen, d, n);
    c->rxlen += n;
    if (c->rxlen == c->mlen) {
        if (memcmp(c->rx, c->msg, c->mlen) == 0)
            c->ctx->echoed++;
        else
            c->ctx->bad++;
    }
}

static void cli_lost(tpio_protocol_t *bp, int err)
{
    cli_t *c = tpio_container_of(bp, cli_t, base);
    c->ctx->client_lost++;
    if (err)
        c->ctx->client_err++;
    c->ctx->clis[c->idx] = NULL;
    free(c);
}

static const tpio_protocol_ops_t cli_ops = {
    .connection_made = cli_made,
    .data_received = cli_data,
    .connection_lost = cli_lost,
};

static tpio_protocol_t *cli_factory(void *arg)
{
    big_ctx_t *b = arg;
    cli_t *c = calloc(1, sizeof *c);
    cr_assert_not_null(c);
    c->base.ops = &cli_ops;
    c->ctx = b;
    c->idx = b->next++;
    cr_assert_lt(c->idx, NCLIENTS);
    c->mlen = (size_t)snprintf(c->msg, sizeof c->msg, "client-%04zu\n", c->idx);
    b->clis[c->idx] = c;
    return &c->base;
}

static void cli_connected(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p,
                          int err, void *arg)
{
    (void)loop;
    (void)t;
    (void)p;
    big_ctx_t *b = arg;
    if (err) {
        if (b->connect_err++ == 0)
            b->first_connect_err = err;
    }
}

static bool run_until_sz(const size_t *v, size_t target, double timeout)
{
    double end = th_now_s() + timeout;
    while (*v < target && th_now_s() < end)
        tpio_loop_run_once(th_fx.loop, 0.01);
    return *v >= target;
}

Test(server, thousand_concurrent_clients, .timeout = TMO)
{
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    rl.rlim_cur = rl.rlim_max;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    cr_assert_geq(rl.rlim_cur, 2 * NCLIENTS + 100, "RLIMIT_NOFILE hard limit too low");

    static big_ctx_t b;
    th_proto_t *tmpl = th_proto_new(&th_proto_ops);
    tmpl->echo = true;
    tmpl->free_on_lost = true;
    tmpl->lost_counter = &b.server_lost;
    tpio_server_opts_t opts = {.size = sizeof opts, .host = "127.0.0.1", .backlog = 1024};
    tpio_server_t *s = NULL;
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, th_factory, tmpl, &opts, &s), 0);
    uint16_t port = srv_port(s, 0);

    tpio_connect_opts_t copts = {.size = sizeof copts, .host = "127.0.0.1", .port = port};
    for (int i = 0; i < NCLIENTS; i++) {
        int r = tpio_loop_create_connection(th_fx.loop, cli_factory, &b, &copts, cli_connected, &b, NULL);
        if (r != 0)
            cr_assert_fail("create_connection %d: %s", i, tpio_err_name(r));
    }
    run_until_sz(&b.echoed, NCLIENTS, 20.0);
    cr_assert_eq(b.connect_err, 0, "%zu connects failed, first: %s", b.connect_err,
                 tpio_err_name(b.first_connect_err));
    cr_assert_eq(b.bad, 0);
    cr_assert_eq(b.made, NCLIENTS);
    cr_assert_eq(b.echoed, NCLIENTS);
    cr_assert_eq(th_conn_count(s), NCLIENTS, "all connections live at once");
    cr_assert_eq(b.server_lost, 0);

    for (int i = 0; i < NCLIENTS; i++)
        if (b.clis[i])
            tpio_transport_close(b.clis[i]->t);
    cr_assert(run_until_sz(&b.client_lost, NCLIENTS, 10.0));
    cr_assert(run_until_sz(&b.server_lost, NCLIENTS, 10.0));
    cr_assert_eq(b.client_err, 0);
    cr_assert_eq(th_conn_count(s), 0);
    close_server_and_wait(s);
    th_proto_free(tmpl);
}

/* ------------------------------------------------------------------------- */
/* accept() out of descriptors                                               */
/* ------------------------------------------------------------------------- */

static int highest_open_fd(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int self = dirfd(d), hi = -1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            int fd = atoi(e->d_name);
            if (fd != self && fd > hi)
                hi = fd;
        }
    closedir(d);
    return hi;
}

Test(server, accept_emfile_reports_backs_off_and_recovers, .timeout = TMO)
{
    static eh_rec_t e;
    e.fd = -2;
    tpio_loop_set_error_handler(th_fx.loop, rec_handler, &e);
    tpio_server_t *s = start_server_v4(c);
    uint16_t port = srv_port(s, 0);
    int lfd = th_server_socket(s, 0);

    /* the client socket exists before the descriptors run out */
    int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(cfd, 0);

    struct rlimit saved, low;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &saved), 0);
    low = saved;
    low.rlim_cur = (rlim_t)highest_open_fd() + 1;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
    /* fill every free slot below the limit */
    static int fillers[4096];
    int nfill = 0;
    for (;;) {
        int f = dup(0);
        if (f < 0) {
            cr_assert_eq(errno, EMFILE);
            break;
        }
        cr_assert_lt(nfill, 4096);
        fillers[nfill++] = f;
    }

    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(cfd, (struct sockaddr *)&a, sizeof a), 0);

    /* 0.5 s: the error is reported, and the loop does not spin on it */
    size_t iterations = 0;
    double end = th_now_s() + 0.5;
    while (th_now_s() < end) {
        tpio_loop_run_once(th_fx.loop, 0.01);
        iterations++;
    }
    size_t calls_while_low = e.calls;
    size_t factory_calls = c->calls;

    for (int i = 0; i < nfill; i++)
        close(fillers[i]);
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &saved), 0);

    cr_assert_geq(calls_while_low, 1, "EMFILE on accept was not reported");
    cr_assert_leq(calls_while_low, 3, "EMFILE reported %zu times in 0.5 s (busy loop)",
                  calls_while_low);
    cr_assert_eq(e.first_error, -EMFILE, "reported error %s", tpio_err_name(e.first_error));
    cr_assert_gt(strlen(e.message), 0, "empty message");
    cr_assert_eq(e.server, s, "context.server is not the server");
    cr_assert_eq(e.fd, lfd, "context.fd is not the listening socket");
    cr_assert_leq(iterations, 200, "%zu loop iterations in 0.5 s: busy loop", iterations);
    cr_assert_eq(factory_calls, 0);

    /* descriptors are back: the pending client is served after the retry delay */
    double t0 = th_now_s();
    cr_assert(wait_accepted(c, 1, 4.0), "the pending client was never accepted");
    cr_assert_lt(th_now_s() - t0, 4.0);
    cr_assert_str_eq(c->acc[0]->events, "made");
    client_send(cfd, "late", 4);
    cr_assert(wait_rx(c->acc[0], 4, 5.0));
    cr_assert_eq(memcmp(c->acc[0]->rx, "late", 4), 0);
    cr_assert(th_is_serving(s));
    /* and new clients too */
    int b = client_connect_ok(AF_INET, port);
    cr_assert(wait_accepted(c, 2, 5.0));
    close(b);
    close(cfd);
}
