/*
 * Datagram transports: create_datagram_endpoint over UDP (bound server,
 * connected client, family only, use_sock, reuse_port, allow_broadcast, names
 * through the resolver) and Unix datagram sockets; sendto's address rules,
 * empty datagrams (asyncio 3.13), error_received (ICMP refusal, send errors),
 * flow control with len + 8 accounting, close/abort with a queue, and 100,000
 * datagrams of mixed sizes through an echo.
 *
 * Loopback UDP never makes sendto() return EAGAIN (the loopback device hands
 * each datagram over inside the call and releases the sender's buffer at
 * once), so the tests that need a queue use a connected AF_UNIX datagram
 * socketpair with a small SO_SNDBUF, whose sender gets EAGAIN once that
 * much is in flight: same transport, deterministic queueing.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define TMO 10.0

/* ---- a recording datagram protocol ------------------------------------------ */

typedef struct dp dp_t;
typedef void (*dgram_hook_t)(dp_t *p, const void *data, size_t len,
                             const struct sockaddr *addr, socklen_t alen);

struct dp {
    tpio_protocol_t base;
    tpio_transport_t *t;
    char events[4096];
    size_t elen;
    /* the last datagram */
    unsigned char last[65536];
    size_t lastlen;
    struct sockaddr_storage from;
    socklen_t fromlen;
    size_t ndgrams, nerrs, rxbytes;
    int last_err;
    bool made, lost;
    int lost_err;
    size_t pauses, resumes;
    size_t size_at_pause, size_at_resume;
    bool made_in_call; /* connection_made ran inside the create call */
    /* knobs */
    bool quiet;   /* do not record datagram events */
    bool echo;    /* send every datagram back to its sender */
    dgram_hook_t hook;
    void *user;
};

static bool in_create_call;

static dp_t *DP(tpio_protocol_t *p) { return tpio_container_of(p, dp_t, base); }

static void dev(dp_t *p, const char *e)
{
    size_t n = strlen(e);
    if (p->elen + n + 2 >= sizeof p->events)
        return;
    if (p->elen)
        p->events[p->elen++] = ',';
    memcpy(p->events + p->elen, e, n + 1);
    p->elen += n;
}

static void dp_made(tpio_protocol_t *bp, tpio_transport_t *t)
{
    dp_t *p = DP(bp);
    p->t = t;
    p->made = true;
    p->made_in_call = in_create_call;
    dev(p, "made");
}

static void dp_lost(tpio_protocol_t *bp, int err)
{
    dp_t *p = DP(bp);
    char b[64];
    snprintf(b, sizeof b, "lost:%s", err ? tpio_err_name(err) : "0");
    dev(p, b);
    p->lost = true;
    p->lost_err = err;
    p->t = NULL;
}

static void dp_pause(tpio_protocol_t *bp)
{
    dp_t *p = DP(bp);
    p->pauses++;
    p->size_at_pause = th_wbuf_size(p->t);
    dev(p, "pause");
}

static void dp_resume(tpio_protocol_t *bp)
{
    dp_t *p = DP(bp);
    p->resumes++;
    p->size_at_resume = th_wbuf_size(p->t);
    dev(p, "resume");
}

static void dp_dgram(tpio_protocol_t *bp, const void *data, size_t len,
                     const struct sockaddr *addr, socklen_t alen)
{
    dp_t *p = DP(bp);
    p->ndgrams++;
    p->rxbytes += len;
    if (!p->quiet) {
        char b[32];
        snprintf(b, sizeof b, "dgram:%zu", len);
        dev(p, b);
        cr_assert_leq(len, sizeof p->last);
        if (len)
            memcpy(p->last, data, len);
        p->lastlen = len;
        p->fromlen = 0;
        if (addr && alen && alen <= sizeof p->from) {
            memcpy(&p->from, addr, alen);
            p->fromlen = alen;
        }
    }
    if (p->echo)
        cr_assert_eq(tpio_datagram_sendto(p->t, data, len, addr, alen), 0);
    if (p->hook)
        p->hook(p, data, len, addr, alen);
}

static void dp_err(tpio_protocol_t *bp, int err)
{
    dp_t *p = DP(bp);
    char b[64];
    snprintf(b, sizeof b, "err:%s", tpio_err_name(err));
    dev(p, b);
    p->nerrs++;
    p->last_err = err;
}

static const tpio_protocol_ops_t dp_ops = {
    .connection_made = dp_made,
    .connection_lost = dp_lost,
    .pause_writing = dp_pause,
    .resume_writing = dp_resume,
    .datagram_received = dp_dgram,
    .error_received = dp_err,
};

/* The suite's fixture, on top of th_fx (the loop; error reports: none
 * expected): set up by suite init, checked and torn down by fini. */
typedef struct fx {
    dp_t tmpl;
    size_t factory_calls;
} fx_t;

static fx_t f;

static tpio_protocol_t *dp_factory(void *arg)
{
    fx_t *f = arg;
    f->factory_calls++;
    dp_t *p = calloc(1, sizeof *p);
    cr_assert_not_null(p);
    p->base.ops = &dp_ops;
    p->quiet = f->tmpl.quiet;
    p->echo = f->tmpl.echo;
    p->hook = f->tmpl.hook;
    p->user = f->tmpl.user;
    return &p->base;
}

typedef struct ep {
    bool done;
    int err;
    size_t calls;
    tpio_transport_t *t;
    dp_t *p;
} ep_t;

static void on_ep(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                  void *arg)
{
    (void)loop;
    ep_t *e = arg;
    e->calls++;
    e->done = true;
    e->err = err;
    e->t = t;
    e->p = p ? DP(p) : NULL;
}

static void fx_init(void)
{
    th_fx_init();
    memset(&f, 0, sizeof f);
}

TestSuite(udp, .init = fx_init, .fini = th_fx_fini);

/* create_datagram_endpoint and wait for its completion; returns the err. The
 * protocol of an endpoint made is freed by fini. */
static int endpoint(fx_t *f, const tpio_datagram_opts_t *o, ep_t *e)
{
    memset(e, 0, sizeof *e);
    in_create_call = true;
    int rc = tpio_loop_create_datagram_endpoint(th_fx.loop, dp_factory, f, o, on_ep, e, NULL);
    in_create_call = false;
    if (rc)
        return rc;
    cr_assert_eq(e->calls, 0, "completion ran inside the call");
    cr_assert(th_run_until(th_fx.loop, &e->done, TMO));
    cr_assert_eq(e->calls, 1);
    if (e->err == 0) {
        th_fx_own_with(e->p, free); /* fini frees the protocol */
        cr_assert_not_null(e->t);
        cr_assert_not(e->p->made_in_call);
        cr_assert_str_eq(e->p->events, "made");
        cr_assert_eq(th_kind(e->t), TPIO_TRANSPORT_DATAGRAM);
    } else {
        cr_assert_null(e->t);
        cr_assert_null(e->p);
    }
    return e->err;
}

static void close_ep(ep_t *e)
{
    cr_assert_eq(tpio_transport_close(e->t), 0);
    cr_assert(th_is_closing(e->t));
    cr_assert(th_run_until(th_fx.loop, &e->p->lost, TMO));
    cr_assert_eq(e->p->lost_err, 0);
}

static struct sockaddr_in sin_of(const char *ip, uint16_t port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    cr_assert_eq(inet_pton(AF_INET, ip, &a.sin_addr), 1);
    return a;
}

static bool same_sin(const struct sockaddr_storage *ss, socklen_t len,
                     const struct sockaddr_in *b)
{
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    return len == sizeof *a && a->sin_family == AF_INET && a->sin_port == b->sin_port &&
           a->sin_addr.s_addr == b->sin_addr.s_addr;
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

/* A UDP port where nothing listens: bind, read it back, close. */
static uint16_t free_udp_port(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = sin_of("127.0.0.1", 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t l = sizeof a;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static bool run_until_dgrams(tpio_loop_t *loop, dp_t *p, size_t n)
{
    return th_run_until_count(loop, &p->ndgrams, n, TMO);
}

/* A bound server on 127.0.0.1 and a client connected to it. */
static void server_and_client(fx_t *f, ep_t *srv, ep_t *cli, struct sockaddr_in *saddr)
{
    tpio_datagram_opts_t so = {.size = sizeof so, .local_host = "127.0.0.1", .local_port = 0};
    cr_assert_eq(endpoint(f, &so, srv), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_sockname(srv->t, &ss, &sl), 0);
    cr_assert_eq(sl, sizeof(struct sockaddr_in));
    uint16_t port = port_of(&ss);
    cr_assert_neq(port, 0);
    *saddr = sin_of("127.0.0.1", port);
    cr_assert(same_sin(&ss, sl, saddr));
    tpio_datagram_opts_t co = {.size = sizeof co, .remote_host = "127.0.0.1", .remote_port = port};
    cr_assert_eq(endpoint(f, &co, cli), 0);
}

/* ---- the basics ----------------------------------------------------------------- */

Test(udp, server_client_exchange, .timeout = 20)
{
    ep_t srv, cli;
    struct sockaddr_in saddr;
    server_and_client(&f, &srv, &cli, &saddr);

    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    /* Unconnected server: no peername. Connected client: the server. */
    cr_assert_eq(tpio_transport_get_peername(srv.t, &ss, &sl), -ENOENT);
    tpio_extra_t e;
    cr_assert_eq(tpio_transport_get_extra_info(srv.t, "peername", &e), -ENOENT);
    cr_assert_eq(e.type, TPIO_EXTRA_NONE);
    sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_peername(cli.t, &ss, &sl), 0);
    cr_assert(same_sin(&ss, sl, &saddr));
    struct sockaddr_storage cself;
    socklen_t cselfl = sizeof cself;
    cr_assert_eq(tpio_transport_get_sockname(cli.t, &cself, &cselfl), 0);
    cr_assert_eq(cselfl, sizeof(struct sockaddr_in));
    struct sockaddr_in cexpect = sin_of("127.0.0.1", port_of(&cself));
    cr_assert(same_sin(&cself, cselfl, &cexpect));
    cr_assert_neq(port_of(&cself), 0);
    cr_assert_eq(tpio_transport_get_extra_info(cli.t, "socket", &e), 0);
    cr_assert_eq(e.type, TPIO_EXTRA_FD);
    cr_assert_eq(e.fd, th_fd(cli.t));
    cr_assert_eq(tpio_transport_get_extra_info(cli.t, "pipe", &e), -ENOENT);

    /* client -> server, addr NULL on the connected client */
    cr_assert_eq(tpio_datagram_sendto(cli.t, "hello", 5, NULL, 0), 0);
    cr_assert(run_until_dgrams(th_fx.loop, srv.p, 1));
    cr_assert_eq(srv.p->lastlen, 5);
    cr_assert_eq(memcmp(srv.p->last, "hello", 5), 0);
    cr_assert(same_sin(&srv.p->from, srv.p->fromlen, &cexpect));
    /* server -> client, to the address it got */
    cr_assert_eq(tpio_datagram_sendto(srv.t, "world!", 6, (struct sockaddr *)&srv.p->from,
                             srv.p->fromlen),
                 0);
    cr_assert(run_until_dgrams(th_fx.loop, cli.p, 1));
    cr_assert_eq(cli.p->lastlen, 6);
    cr_assert_eq(memcmp(cli.p->last, "world!", 6), 0);
    cr_assert(same_sin(&cli.p->from, cli.p->fromlen, &saddr));
    /* The connected client may name its peer explicitly. */
    cr_assert_eq(tpio_datagram_sendto(cli.t, "again", 5, (struct sockaddr *)&saddr, sizeof saddr), 0);
    cr_assert(run_until_dgrams(th_fx.loop, srv.p, 2));
    cr_assert_eq(memcmp(srv.p->last, "again", 5), 0);

    /* Address rules. */
    struct sockaddr_in other = sin_of("127.0.0.1", (uint16_t)(port_of(&cself) ^ 1));
    cr_assert_eq(tpio_datagram_sendto(cli.t, "x", 1, (struct sockaddr *)&other, sizeof other), -EINVAL);
    struct sockaddr_in other_ip = sin_of("127.0.0.2", ntohs(saddr.sin_port));
    cr_assert_eq(tpio_datagram_sendto(cli.t, "x", 1, (struct sockaddr *)&other_ip, sizeof other_ip),
                 -EINVAL);
    cr_assert_eq(tpio_datagram_sendto(srv.t, "x", 1, NULL, 0), -EDESTADDRREQ);
    cr_assert_eq(tpio_datagram_sendto(srv.t, NULL, 1, (struct sockaddr *)&cexpect, sizeof cexpect),
                 -EINVAL);
    cr_assert_eq(tpio_datagram_sendto(NULL, "x", 1, NULL, 0), -EINVAL);

    /* Stream calls do not apply. */
    cr_assert_eq(tpio_transport_write(cli.t, "x", 1), -ENOTSUP);
    cr_assert_eq(tpio_transport_write_eof(cli.t), -ENOTSUP);
    cr_assert_not(th_can_write_eof(cli.t));
    cr_assert_eq(th_wbuf_size(cli.t), 0);

    /* Nothing stray arrived anywhere. */
    th_run_timer(th_fx.loop, 0.05, TMO);
    cr_assert_str_eq(srv.p->events, "made,dgram:5,dgram:5");
    cr_assert_str_eq(cli.p->events, "made,dgram:6");

    close_ep(&cli);
    close_ep(&srv);
    cr_assert_str_eq(srv.p->events, "made,dgram:5,dgram:5,lost:0");
    cr_assert_str_eq(cli.p->events, "made,dgram:6,lost:0");
    cr_assert_eq(f.factory_calls, 2);
}

Test(udp, empty_datagrams, .timeout = 20)
{
    ep_t srv, cli;
    struct sockaddr_in saddr;
    server_and_client(&f, &srv, &cli, &saddr);
    cr_assert_eq(tpio_datagram_sendto(cli.t, "", 0, NULL, 0), 0);
    cr_assert_eq(tpio_datagram_sendto(cli.t, NULL, 0, NULL, 0), 0);
    cr_assert(run_until_dgrams(th_fx.loop, srv.p, 2));
    cr_assert_eq(srv.p->lastlen, 0);
    cr_assert_eq(srv.p->fromlen, sizeof(struct sockaddr_in));
    cr_assert_eq(tpio_datagram_sendto(srv.t, NULL, 0, (struct sockaddr *)&srv.p->from, srv.p->fromlen),
                 0);
    cr_assert(run_until_dgrams(th_fx.loop, cli.p, 1));
    cr_assert(same_sin(&cli.p->from, cli.p->fromlen, &saddr));
    /* An empty datagram is not EOF: the endpoints carry on. */
    cr_assert_eq(tpio_datagram_sendto(cli.t, "after", 5, NULL, 0), 0);
    cr_assert(run_until_dgrams(th_fx.loop, srv.p, 3));
    cr_assert_not(th_is_closing(srv.t));
    cr_assert_not(th_is_closing(cli.t));
    close_ep(&cli);
    close_ep(&srv);
    cr_assert_str_eq(srv.p->events, "made,dgram:0,dgram:0,dgram:5,lost:0");
    cr_assert_str_eq(cli.p->events, "made,dgram:0,lost:0");
}

Test(udp, icmp_refusal_is_error_received, .timeout = 20)
{
    uint16_t port = free_udp_port();
    ep_t cli;
    tpio_datagram_opts_t co = {.size = sizeof co, .remote_host = "127.0.0.1", .remote_port = port};
    cr_assert_eq(endpoint(&f, &co, &cli), 0);
    /* One datagram is enough on loopback (no ICMP rate limit there); retry a
     * few times on a loop timer all the same. */
    for (int i = 0; i < 20 && cli.p->nerrs == 0; i++) {
        cr_assert_eq(tpio_datagram_sendto(cli.t, "ping", 4, NULL, 0), 0);
        double end = th_time(th_fx.loop) + 0.25;
        while (cli.p->nerrs == 0 && th_time(th_fx.loop) < end)
            tpio_loop_run_once(th_fx.loop, 0.01);
    }
    cr_assert_eq(cli.p->nerrs, 1, "events: %s", cli.p->events);
    cr_assert_eq(cli.p->last_err, -ECONNREFUSED);
    cr_assert_str_eq(cli.p->events, "made,err:ECONNREFUSED");
    /* The transport stays open and usable. */
    cr_assert_not(th_is_closing(cli.t));
    cr_assert_not(cli.p->lost);
    th_run_timer(th_fx.loop, 0.05, TMO);
    cr_assert_not(cli.p->lost);
    close_ep(&cli);
    cr_assert_str_eq(cli.p->events, "made,err:ECONNREFUSED,lost:0");
}

Test(udp, send_error_reaches_error_received_from_the_loop, .timeout = 20)
{
    ep_t srv, cli;
    struct sockaddr_in saddr;
    server_and_client(&f, &srv, &cli, &saddr);
    /* Too big for UDP over IPv4. */
    size_t big = 70000;
    unsigned char *buf = calloc(1, big);
    cr_assert_eq(tpio_datagram_sendto(cli.t, buf, big, NULL, 0), 0);
    cr_assert_str_eq(cli.p->events, "made", "a callback ran inside sendto");
    cr_assert(th_run_until_count(th_fx.loop, &cli.p->nerrs, 1, TMO));
    cr_assert_str_eq(cli.p->events, "made,err:EMSGSIZE");
    cr_assert_not(th_is_closing(cli.t));
    /* Wrong address family on the unconnected server. */
    struct sockaddr_in6 a6;
    memset(&a6, 0, sizeof a6);
    a6.sin6_family = AF_INET6;
    a6.sin6_port = htons(9);
    a6.sin6_addr = in6addr_loopback;
    cr_assert_eq(tpio_datagram_sendto(srv.t, "x", 1, (struct sockaddr *)&a6, sizeof a6), 0);
    cr_assert_str_eq(srv.p->events, "made");
    cr_assert(th_run_until_count(th_fx.loop, &srv.p->nerrs, 1, TMO));
    cr_assert_str_eq(srv.p->events, "made,err:EAFNOSUPPORT");
    /* Both still work. */
    cr_assert_eq(tpio_datagram_sendto(cli.t, buf, 65507, NULL, 0), 0);
    cr_assert(run_until_dgrams(th_fx.loop, srv.p, 1));
    cr_assert_eq(srv.p->lastlen, 65507);
    close_ep(&cli);
    close_ep(&srv);
    cr_assert_str_eq(cli.p->events, "made,err:EMSGSIZE,lost:0");
    cr_assert_str_eq(srv.p->events, "made,err:EAFNOSUPPORT,dgram:65507,lost:0");
    free(buf);
}

Test(udp, close_and_abort_drop_later_sends, .timeout = 20)
{
    ep_t srv, cli;
    struct sockaddr_in saddr;
    server_and_client(&f, &srv, &cli, &saddr);
    cr_assert_eq(tpio_transport_close(cli.t), 0);
    cr_assert_eq(tpio_transport_close(cli.t), 0);
    /* After close, datagrams are dropped (0, nothing sent). */
    cr_assert_eq(tpio_datagram_sendto(cli.t, "dropped", 7, NULL, 0), 0);
    cr_assert_eq(th_wbuf_size(cli.t), 0);
    cr_assert(th_run_until(th_fx.loop, &cli.p->lost, TMO));
    cr_assert_eq(tpio_transport_abort(srv.t), 0);
    cr_assert(th_run_until(th_fx.loop, &srv.p->lost, TMO));
    cr_assert_str_eq(cli.p->events, "made,lost:0");
    cr_assert_str_eq(srv.p->events, "made,lost:0");
}

/* ---- use_sock and families ---------------------------------------------------------- */

Test(udp, use_sock_existing_dgram_socket, .timeout = 20)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = sin_of("127.0.0.1", 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t l = sizeof a;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    ep_t e;
    tpio_datagram_opts_t o = {.size = sizeof o, .use_sock = TPIO_ON, .sock = fd};
    cr_assert_eq(endpoint(&f, &o, &e), 0);
    cr_assert_eq(th_fd(e.t), fd);
    cr_assert(fcntl(fd, F_GETFL) & O_NONBLOCK, "use_sock not made non-blocking");
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_sockname(e.t, &ss, &sl), 0);
    cr_assert(same_sin(&ss, sl, &a));
    sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_peername(e.t, &ss, &sl), -ENOENT);

    /* A plain peer talks to it. */
    int peer = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in pa = sin_of("127.0.0.1", 0);
    cr_assert_eq(bind(peer, (struct sockaddr *)&pa, sizeof pa), 0);
    l = sizeof pa;
    cr_assert_eq(getsockname(peer, (struct sockaddr *)&pa, &l), 0);
    cr_assert_eq(sendto(peer, "from peer", 9, 0, (struct sockaddr *)&a, sizeof a), 9);
    cr_assert(run_until_dgrams(th_fx.loop, e.p, 1));
    cr_assert_eq(e.p->lastlen, 9);
    cr_assert(same_sin(&e.p->from, e.p->fromlen, &pa));
    cr_assert_eq(tpio_datagram_sendto(e.t, "reply", 5, (struct sockaddr *)&pa, sizeof pa), 0);
    char buf[16];
    struct timeval tv = {.tv_sec = 5};
    setsockopt(peer, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    cr_assert_eq(recv(peer, buf, sizeof buf, 0), 5);
    cr_assert_eq(memcmp(buf, "reply", 5), 0);
    close(peer);
    close_ep(&e);
    cr_assert_str_eq(e.p->events, "made,dgram:9,lost:0");
    /* The transport closed the socket: the port is free again. */
    int again = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(bind(again, (struct sockaddr *)&a, sizeof a), 0, "%s", strerror(errno));
    close(again);
}

Test(udp, use_sock_rejections_leave_fd_untouched, .timeout = 10)
{
    ep_t e;
    /* A stream socket. */
    int st = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int fl = fcntl(st, F_GETFL);
    tpio_datagram_opts_t o = {.size = sizeof o, .use_sock = TPIO_ON, .sock = st};
    cr_assert_eq(endpoint(&f, &o, &e), -EPROTOTYPE);
    cr_assert_eq(fcntl(st, F_GETFL), fl);
    cr_assert_geq(fcntl(st, F_GETFD), 0);
    /* A datagram socket with an address option too. */
    int dg = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int dfl = fcntl(dg, F_GETFL);
    tpio_datagram_opts_t o2 = {.size = sizeof o2, .use_sock = TPIO_ON, .sock = dg, .local_host = "127.0.0.1"};
    cr_assert_eq(endpoint(&f, &o2, &e), -EINVAL);
    tpio_datagram_opts_t o3 = {.size = sizeof o3, .use_sock = TPIO_ON, .sock = dg, .remote_host = "127.0.0.1",
                               .remote_port = 9};
    cr_assert_eq(endpoint(&f, &o3, &e), -EINVAL);
    tpio_datagram_opts_t o4 = {.size = sizeof o4, .use_sock = TPIO_ON, .sock = dg, .local_path = "/tmp/x"};
    cr_assert_eq(endpoint(&f, &o4, &e), -EINVAL);
    tpio_datagram_opts_t o5 = {.size = sizeof o5, .use_sock = TPIO_ON, .sock = dg, .family = AF_INET};
    cr_assert_eq(endpoint(&f, &o5, &e), -EINVAL);
    cr_assert_eq(fcntl(dg, F_GETFL), dfl);
    cr_assert_geq(fcntl(dg, F_GETFD), 0);
    /* Not a socket at all. */
    int pfd[2];
    cr_assert_eq(pipe2(pfd, O_CLOEXEC), 0);
    tpio_datagram_opts_t o6 = {.size = sizeof o6, .use_sock = TPIO_ON, .sock = pfd[0]};
    cr_assert_eq(endpoint(&f, &o6, &e), -ENOTSOCK);
    /* Missing arguments. */
    tpio_datagram_opts_t o7 = {.size = sizeof o7, .local_host = "127.0.0.1"};
    cr_assert_eq(tpio_loop_create_datagram_endpoint(NULL, dp_factory, &f, &o7, on_ep, &e, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(th_fx.loop, NULL, &f, &o7, on_ep, &e, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(th_fx.loop, dp_factory, &f, NULL, on_ep, &e, NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(th_fx.loop, dp_factory, &f, &o7, NULL, &e, NULL),
                 -EINVAL);
    th_run_timer(th_fx.loop, 0.01, TMO);
    cr_assert_eq(e.calls, 0);
    cr_assert_eq(f.factory_calls, 0);
    close(st);
    close(dg);
    close(pfd[0]);
    close(pfd[1]);
}

Test(udp, family_only_is_unbound_and_can_sendto, .timeout = 20)
{
    ep_t e;
    tpio_datagram_opts_t bad = {.size = sizeof bad};
    cr_assert_eq(endpoint(&f, &bad, &e), -EINVAL);
    tpio_datagram_opts_t o = {.size = sizeof o, .family = AF_INET};
    cr_assert_eq(endpoint(&f, &o, &e), 0);
    /* Not bound yet: port 0. */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = th_fd(e.t);
    cr_assert_geq(fd, 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
    cr_assert_eq(ss.ss_family, AF_INET);
    cr_assert_eq(port_of(&ss), 0);
    sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_peername(e.t, &ss, &sl), -ENOENT);
    cr_assert_eq(tpio_datagram_sendto(e.t, "x", 1, NULL, 0), -EDESTADDRREQ);

    int peer = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in pa = sin_of("127.0.0.1", 0);
    cr_assert_eq(bind(peer, (struct sockaddr *)&pa, sizeof pa), 0);
    socklen_t l = sizeof pa;
    cr_assert_eq(getsockname(peer, (struct sockaddr *)&pa, &l), 0);
    cr_assert_eq(tpio_datagram_sendto(e.t, "unbound", 7, (struct sockaddr *)&pa, sizeof pa), 0);
    char buf[16];
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(peer, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    cr_assert_eq(recvfrom(peer, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl), 7);
    cr_assert_eq(memcmp(buf, "unbound", 7), 0);
    /* The kernel bound it at the first send; answers come back. */
    cr_assert_neq(from.sin_port, 0);
    cr_assert_eq(sendto(peer, "answer", 6, 0, (struct sockaddr *)&from, fl), 6);
    cr_assert(run_until_dgrams(th_fx.loop, e.p, 1));
    cr_assert_eq(memcmp(e.p->last, "answer", 6), 0);
    close(peer);
    close_ep(&e);
    cr_assert_str_eq(e.p->events, "made,dgram:6,lost:0");
    /* Families that make no sense here. */
    tpio_datagram_opts_t o2 = {.size = sizeof o2, .family = AF_INET, .local_path = "/tmp/nope"};
    cr_assert_eq(endpoint(&f, &o2, &e), -EINVAL);
    tpio_datagram_opts_t o3 = {.size = sizeof o3, .family = AF_UNIX, .local_host = "127.0.0.1"};
    cr_assert_eq(endpoint(&f, &o3, &e), -EINVAL);
}

Test(udp, reuse_port_shares_a_port, .timeout = 20)
{
    ep_t a, b, c;
    tpio_datagram_opts_t oa = {.size = sizeof oa, .local_host = "127.0.0.1", .reuse_port = TPIO_ON};
    cr_assert_eq(endpoint(&f, &oa, &a), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_sockname(a.t, &ss, &sl), 0);
    uint16_t port = port_of(&ss);
    int one = 0;
    socklen_t ol = sizeof one;
    cr_assert_eq(getsockopt(th_fd(a.t), SOL_SOCKET, SO_REUSEPORT, &one, &ol), 0);
    cr_assert_neq(one, 0);
    tpio_datagram_opts_t ob = {.size = sizeof ob, .local_host = "127.0.0.1", .local_port = port,
                               .reuse_port = TPIO_ON};
    cr_assert_eq(endpoint(&f, &ob, &b), 0);
    sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_sockname(b.t, &ss, &sl), 0);
    cr_assert_eq(port_of(&ss), port);
    /* Without reuse_port the port is taken. */
    tpio_datagram_opts_t oc = {.size = sizeof oc, .local_host = "127.0.0.1", .local_port = port};
    cr_assert_eq(endpoint(&f, &oc, &c), -EADDRINUSE);
    close_ep(&a);
    close_ep(&b);
    cr_assert_eq(f.factory_calls, 2);
}

Test(udp, allow_broadcast_sets_so_broadcast, .timeout = 10)
{
    for (int want = 0; want < 2; want++) {
        ep_t e;
        tpio_datagram_opts_t o = {.size = sizeof o, .local_host = "127.0.0.1", .allow_broadcast = want};
        cr_assert_eq(endpoint(&f, &o, &e), 0);
        int v = -1;
        socklen_t l = sizeof v;
        cr_assert_eq(getsockopt(th_fd(e.t), SOL_SOCKET, SO_BROADCAST, &v, &l), 0);
        cr_assert_eq(v != 0, want != 0, "SO_BROADCAST=%d with allow_broadcast=%d", v, want);
        close_ep(&e);
    }
    tpio_datagram_opts_t o = {.size = sizeof o, .family = AF_INET, .allow_broadcast = TPIO_ON};
    ep_t e;
    cr_assert_eq(endpoint(&f, &o, &e), 0);
    int v = 0;
    socklen_t l = sizeof v;
    cr_assert_eq(getsockopt(th_fd(e.t), SOL_SOCKET, SO_BROADCAST, &v, &l), 0);
    cr_assert_neq(v, 0);
    close_ep(&e);
}

Test(udp, names_go_through_the_resolver, .timeout = 30)
{
    ep_t srv, cli;
    tpio_datagram_opts_t so = {.size = sizeof so, .local_host = "localhost", .family = AF_INET};
    cr_assert_eq(endpoint(&f, &so, &srv), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_sockname(srv.t, &ss, &sl), 0);
    struct sockaddr_in expect = sin_of("127.0.0.1", port_of(&ss));
    cr_assert(same_sin(&ss, sl, &expect));
    tpio_datagram_opts_t co = {.size = sizeof co, .remote_host = "localhost", .remote_port = port_of(&ss),
                               .family = AF_INET};
    cr_assert_eq(endpoint(&f, &co, &cli), 0);
    cr_assert_eq(tpio_datagram_sendto(cli.t, "by name", 7, NULL, 0), 0);
    cr_assert(run_until_dgrams(th_fx.loop, srv.p, 1));
    cr_assert_eq(memcmp(srv.p->last, "by name", 7), 0);
    close_ep(&cli);
    close_ep(&srv);

    /* A name that does not resolve: a resolver code in the completion. */
    ep_t bad;
    tpio_datagram_opts_t bo = {.size = sizeof bo, .remote_host = "nonexistent.invalid", .remote_port = 9};
    int err = endpoint(&f, &bo, &bad);
    cr_assert(err <= TPIO_EAI_NONAME && err >= TPIO_EAI_OTHER, "got %d (%s)", err,
              tpio_err_name(err));
    tpio_datagram_opts_t bo2 = {.size = sizeof bo2, .local_host = "nonexistent.invalid"};
    err = endpoint(&f, &bo2, &bad);
    cr_assert(err <= TPIO_EAI_NONAME && err >= TPIO_EAI_OTHER, "got %d (%s)", err,
              tpio_err_name(err));
    cr_assert_eq(f.factory_calls, 2);
}

/* ---- Unix datagram sockets ------------------------------------------------------------- */

Test(udp, unix_datagram_paths, .timeout = 20)
{
    char dir[64], spath[128], cpath[128];
    snprintf(dir, sizeof dir, "/tmp/tpio-udg-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(spath, sizeof spath, "%s/srv", dir);
    snprintf(cpath, sizeof cpath, "%s/cli", dir);
    /* A stale socket file where the server binds. */
    int stale = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, spath);
    cr_assert_eq(bind(stale, (struct sockaddr *)&sun, sizeof sun), 0);
    close(stale);
    struct stat st;
    cr_assert_eq(stat(spath, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));

    ep_t srv, cli;
    tpio_datagram_opts_t so = {.size = sizeof so, .local_path = spath};
    cr_assert_eq(endpoint(&f, &so, &srv), 0);
    cr_assert_eq(stat(spath, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    /* (bind succeeded, so the stale file is gone; ext4 may even reuse its
     * inode number, so there is nothing more to compare) */
    tpio_datagram_opts_t co = {.size = sizeof co, .local_path = cpath, .remote_path = spath};
    cr_assert_eq(endpoint(&f, &co, &cli), 0);

    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_peername(cli.t, &ss, &sl), 0);
    cr_assert_eq(ss.ss_family, AF_UNIX);
    cr_assert_str_eq(((struct sockaddr_un *)&ss)->sun_path, spath);
    sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_sockname(srv.t, &ss, &sl), 0);
    cr_assert_str_eq(((struct sockaddr_un *)&ss)->sun_path, spath);
    sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_peername(srv.t, &ss, &sl), -ENOENT);

    cr_assert_eq(tpio_datagram_sendto(cli.t, "unix dgram", 10, NULL, 0), 0);
    cr_assert_eq(tpio_datagram_sendto(cli.t, NULL, 0, NULL, 0), 0);
    cr_assert(run_until_dgrams(th_fx.loop, srv.p, 2));
    cr_assert_eq(srv.p->from.ss_family, AF_UNIX);
    cr_assert_str_eq(((struct sockaddr_un *)&srv.p->from)->sun_path, cpath);
    cr_assert_eq(tpio_datagram_sendto(srv.t, "back", 4, (struct sockaddr *)&srv.p->from,
                             srv.p->fromlen),
                 0);
    cr_assert(run_until_dgrams(th_fx.loop, cli.p, 1));
    cr_assert_eq(memcmp(cli.p->last, "back", 4), 0);
    cr_assert_str_eq(((struct sockaddr_un *)&cli.p->from)->sun_path, spath);
    cr_assert_eq(tpio_datagram_sendto(srv.t, "x", 1, NULL, 0), -EDESTADDRREQ);
    close_ep(&cli);
    close_ep(&srv);
    cr_assert_str_eq(srv.p->events, "made,dgram:10,dgram:0,lost:0");
    cr_assert_str_eq(cli.p->events, "made,dgram:4,lost:0");
    cr_assert_eq(unlink(spath), 0);
    cr_assert_eq(unlink(cpath), 0);

    /* A regular file at local_path: -EADDRINUSE, the file untouched. */
    FILE *fp = fopen(spath, "w");
    fputs("keep", fp);
    fclose(fp);
    ep_t bad;
    cr_assert_eq(endpoint(&f, &so, &bad), -EADDRINUSE);
    cr_assert_eq(stat(spath, &st), 0);
    cr_assert(S_ISREG(st.st_mode));
    cr_assert_eq(st.st_size, 4);
    cr_assert_eq(unlink(spath), 0);
    /* Nobody at remote_path. */
    tpio_datagram_opts_t co2 = {.size = sizeof co2, .remote_path = spath};
    cr_assert_eq(endpoint(&f, &co2, &bad), -ENOENT);
    /* Too long, empty. */
    char longp[200];
    memset(longp, 'a', 150);
    longp[0] = '/';
    longp[150] = '\0';
    tpio_datagram_opts_t o3 = {.size = sizeof o3, .local_path = longp};
    cr_assert_eq(endpoint(&f, &o3, &bad), -ENAMETOOLONG);
    tpio_datagram_opts_t o4 = {.size = sizeof o4, .local_path = ""};
    cr_assert_eq(endpoint(&f, &o4, &bad), -EINVAL);
    cr_assert_eq(rmdir(dir), 0);
    cr_assert_eq(f.factory_calls, 2);
}

/* ---- flow control (AF_UNIX datagram socketpair: a queue that really fills) ----------- */

#define FC_LEN 1000
#define FC_UNIT (FC_LEN + 8)

static void fill(unsigned char *b, size_t len, uint32_t seq)
{
    for (size_t j = 0; j < len; j++)
        b[j] = (unsigned char)(seq * 131u + j * 7u);
    if (len >= 4)
        memcpy(b, &seq, 4);
}

static bool check(const unsigned char *b, size_t len, uint32_t seq)
{
    if (len >= 4) {
        uint32_t s;
        memcpy(&s, b, 4);
        if (s != seq)
            return false;
    }
    for (size_t j = len >= 4 ? 4 : 0; j < len; j++)
        if (b[j] != (unsigned char)(seq * 131u + j * 7u))
            return false;
    return true;
}

/* A connected AF_UNIX datagram pair whose sv[0] can hold only ~15 datagrams
 * of FC_LEN in flight (a socketpair's sender is limited by its SO_SNDBUF,
 * not by the peer's max_dgram_qlen). */
static void make_dgram_pair(int sv[2])
{
    cr_assert_eq(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
    int sb = 16384;
    cr_assert_eq(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb), 0);
}

/* Read every datagram waiting on fd, checking sequence and content. */
static void drain_pair(int fd, uint32_t *next, size_t *empties, bool *bad)
{
    unsigned char buf[4096];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0)
            return;
        if (n == 0) {
            (*empties)++;
            continue;
        }
        if (n != FC_LEN || !check(buf, (size_t)n, *next))
            *bad = true;
        (*next)++;
    }
}

Test(udp, flow_control_counts_len_plus_8, .timeout = 30)
{
    int sv[2];
    make_dgram_pair(sv);
    ep_t e;
    tpio_datagram_opts_t o = {.size = sizeof o, .use_sock = TPIO_ON, .sock = sv[0]};
    cr_assert_eq(endpoint(&f, &o, &e), 0);
    /* A socketpair end is connected: sendto takes no address. */
    cr_assert_eq(tpio_transport_set_write_buffer_limits(e.t, 5 * FC_UNIT, FC_UNIT), 0);
    size_t low, high;
    cr_assert_eq(tpio_transport_get_write_buffer_limits(e.t, &high, &low), 0);
    cr_assert_eq(high, 5 * FC_UNIT);
    cr_assert_eq(low, FC_UNIT);

    /* The receiver does not read: after its queue fills, every datagram is
     * queued and weighs len + 8. */
    const uint32_t N = 100;
    unsigned char buf[FC_LEN];
    size_t queued = 0;
    for (uint32_t i = 0; i < N; i++) {
        fill(buf, FC_LEN, i);
        cr_assert_eq(tpio_datagram_sendto(e.t, buf, FC_LEN, NULL, 0), 0);
        size_t sz = th_wbuf_size(e.t);
        if (queued == 0 && sz == 0)
            continue; /* went straight to the kernel */
        queued++;
        cr_assert_eq(sz, queued * FC_UNIT, "datagram %u: size %zu, %zu queued", i, sz, queued);
        if (queued <= 5)
            cr_assert_eq(e.p->pauses, 0, "paused at %zu bytes", sz);
        else
            cr_assert_eq(e.p->pauses, 1);
    }
    cr_assert_gt(queued, 50, "the kernel took %zu datagrams", (size_t)N - queued);
    cr_assert_eq(e.p->size_at_pause, 6 * FC_UNIT);
    cr_assert_str_eq(e.p->events, "made,pause");
    /* Empty datagrams count 8 each. */
    size_t before = th_wbuf_size(e.t);
    cr_assert_eq(tpio_datagram_sendto(e.t, NULL, 0, NULL, 0), 0);
    cr_assert_eq(tpio_datagram_sendto(e.t, "", 0, NULL, 0), 0);
    cr_assert_eq(th_wbuf_size(e.t), before + 16);

    /* Still held while nobody reads. */
    th_run_timer(th_fx.loop, 0.05, TMO);
    cr_assert_eq(th_wbuf_size(e.t), before + 16);
    cr_assert_str_eq(e.p->events, "made,pause");

    /* The test reads: the queue drains, resume at low or below, in order. */
    uint32_t next = 0;
    size_t empties = 0;
    bool bad = false;
    double end = th_time(th_fx.loop) + TMO;
    while ((next < N || empties < 2) && th_time(th_fx.loop) < end) {
        drain_pair(sv[1], &next, &empties, &bad);
        tpio_loop_run_once(th_fx.loop, 0.01);
    }
    cr_assert_eq(next, N);
    cr_assert_eq(empties, 2);
    cr_assert_not(bad, "datagrams out of order or corrupted");
    cr_assert_eq(e.p->resumes, 1);
    cr_assert_leq(e.p->size_at_resume, FC_UNIT);
    cr_assert_eq(th_wbuf_size(e.t), 0);
    cr_assert_str_eq(e.p->events, "made,pause,resume");
    close_ep(&e);
    cr_assert_str_eq(e.p->events, "made,pause,resume,lost:0");
    close(sv[1]);
}

Test(udp, close_flushes_queue_abort_drops_it, .timeout = 30)
{
    for (int use_abort = 0; use_abort < 2; use_abort++) {
        int sv[2];
        make_dgram_pair(sv);
        ep_t e;
        tpio_datagram_opts_t o = {.size = sizeof o, .use_sock = TPIO_ON, .sock = sv[0]};
        cr_assert_eq(endpoint(&f, &o, &e), 0);
        const uint32_t N = 40;
        unsigned char buf[FC_LEN];
        for (uint32_t i = 0; i < N; i++) {
            fill(buf, FC_LEN, i);
            cr_assert_eq(tpio_datagram_sendto(e.t, buf, FC_LEN, NULL, 0), 0);
        }
        size_t q = th_wbuf_size(e.t);
        cr_assert_gt(q, 0);
        cr_assert_eq(q % FC_UNIT, 0);
        uint32_t in_kernel = N - (uint32_t)(q / FC_UNIT);
        if (use_abort) {
            cr_assert_eq(tpio_transport_abort(e.t), 0);
            cr_assert(th_run_until(th_fx.loop, &e.p->lost, TMO));
        } else {
            cr_assert_eq(tpio_transport_close(e.t), 0);
            /* Dropped after close. */
            cr_assert_eq(tpio_datagram_sendto(e.t, buf, FC_LEN, NULL, 0), 0);
            cr_assert_eq(th_wbuf_size(e.t), q);
            th_run_timer(th_fx.loop, 0.05, TMO);
            cr_assert_not(e.p->lost, "lost before the queue was flushed");
        }
        uint32_t next = 0;
        size_t empties = 0;
        bool bad = false;
        double end = th_time(th_fx.loop) + TMO;
        while (!e.p->lost && th_time(th_fx.loop) < end) {
            drain_pair(sv[1], &next, &empties, &bad);
            tpio_loop_run_once(th_fx.loop, 0.01);
        }
        cr_assert(e.p->lost);
        drain_pair(sv[1], &next, &empties, &bad);
        cr_assert_not(bad);
        cr_assert_eq(empties, 0);
        cr_assert_eq(next, use_abort ? in_kernel : N, "abort=%d: got %u of %u", use_abort,
                     next, N);
        cr_assert_str_eq(e.p->events, "made,lost:0");
        close(sv[1]);
    }
}

/* ---- 100,000 datagrams through an echo ------------------------------------------------ */

#define BULK_N 100000
#define BULK_WINDOW 64

static size_t bulk_size(size_t i)
{
    if (i % 1000 == 999)
        return 65507;
    if (i % 97 == 5)
        return 0;
    if (i % 50 == 1)
        return (i * 7919u) % 65508u;
    return (i * 31u) % 700u;
}

typedef struct bulk {
    tpio_transport_t *ct;
    size_t next_send, next_recv;
    size_t out_bytes, budget;
    bool paused;
    size_t bad;
    size_t sent_bytes, back_bytes;
    size_t srv_rx, srv_bytes, srv_echoed;
    unsigned char buf[65536];
} bulk_t;

static void bulk_pump(bulk_t *b)
{
    while (!b->paused && b->next_send < BULK_N && b->next_send - b->next_recv < BULK_WINDOW) {
        size_t len = bulk_size(b->next_send);
        if (b->next_send > b->next_recv && b->out_bytes + len + 1024 > b->budget)
            break;
        fill(b->buf, len, (uint32_t)b->next_send);
        int rc = tpio_datagram_sendto(b->ct, b->buf, len, NULL, 0);
        cr_assert_eq(rc, 0);
        b->out_bytes += len + 1024;
        b->sent_bytes += len;
        b->next_send++;
    }
}

static void bulk_cli_hook(dp_t *p, const void *data, size_t len, const struct sockaddr *addr,
                          socklen_t alen)
{
    (void)addr;
    (void)alen;
    bulk_t *b = p->user;
    size_t i = b->next_recv;
    if (i >= b->next_send || len != bulk_size(i) || !check(data, len, (uint32_t)i))
        b->bad++;
    b->next_recv++;
    b->out_bytes -= bulk_size(i) + 1024;
    b->back_bytes += len;
    bulk_pump(b);
}

static void bulk_srv_hook(dp_t *p, const void *data, size_t len, const struct sockaddr *addr,
                          socklen_t alen)
{
    bulk_t *b = p->user;
    b->srv_rx++;
    b->srv_bytes += len;
    if (tpio_datagram_sendto(p->t, data, len, addr, alen) == 0)
        b->srv_echoed++;
}

static void bulk_cli_pause(tpio_protocol_t *bp)
{
    dp_t *p = DP(bp);
    p->pauses++;
    ((bulk_t *)p->user)->paused = true;
}

static void bulk_cli_resume(tpio_protocol_t *bp)
{
    dp_t *p = DP(bp);
    bulk_t *b = p->user;
    p->resumes++;
    b->paused = false;
    bulk_pump(b);
}

static int big_rcvbuf(int fd)
{
    int want = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof want);
    int v = 0;
    socklen_t l = sizeof v;
    getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, &l);
    return v;
}

Test(udp, bulk_100k_mixed_sizes_echo, .timeout = 60)
{
    bulk_t *b = calloc(1, sizeof *b);
    cr_assert_not_null(b);
    f.tmpl.quiet = true;
    f.tmpl.user = b;
    f.tmpl.hook = bulk_srv_hook;
    ep_t srv, cli;
    tpio_datagram_opts_t so = {.size = sizeof so, .local_host = "127.0.0.1"};
    cr_assert_eq(endpoint(&f, &so, &srv), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_sockname(srv.t, &ss, &sl), 0);
    f.tmpl.hook = bulk_cli_hook;
    tpio_datagram_opts_t co = {.size = sizeof co, .remote_host = "127.0.0.1", .remote_port = port_of(&ss)};
    cr_assert_eq(endpoint(&f, &co, &cli), 0);
    static tpio_protocol_ops_t cli_ops;
    cli_ops = dp_ops;
    cli_ops.pause_writing = bulk_cli_pause;
    cli_ops.resume_writing = bulk_cli_resume;
    cli.p->base.ops = &cli_ops; /* our own struct: switch its class in place */

    /* Big receive buffers on both ends, and a window (64 datagrams, and a
     * quarter of the smaller receive buffer counting 1 KiB of overhead per
     * datagram) that loopback never has to drop. */
    int r1 = big_rcvbuf(th_fd(srv.t));
    int r2 = big_rcvbuf(th_fd(cli.t));
    size_t rb = (size_t)(r1 < r2 ? r1 : r2);
    b->budget = rb / 4;
    if (b->budget < 70 * 1024)
        b->budget = 70 * 1024; /* at least one of the biggest datagrams */
    cr_log_info("receive buffers %d/%d, window budget %zu bytes", r1, r2, b->budget);
    b->ct = cli.t;
    bulk_pump(b);

    /* Run until everything came back, or nothing moved for 3 s (a loss). */
    double end = th_time(th_fx.loop) + 50;
    double last_progress = th_time(th_fx.loop);
    size_t seen = 0;
    while (b->next_recv < BULK_N && th_time(th_fx.loop) < end &&
           th_time(th_fx.loop) - last_progress < 3.0) {
        tpio_loop_run_once(th_fx.loop, 0.1);
        if (b->next_recv + b->srv_rx != seen) {
            seen = b->next_recv + b->srv_rx;
            last_progress = th_time(th_fx.loop);
        }
    }
    cr_log_info("sent %zu, server got %zu, echoed %zu, back %zu, pauses %zu", b->next_send,
                b->srv_rx, b->srv_echoed, b->next_recv, cli.p->pauses);
    cr_assert_eq(b->next_send, BULK_N);
    cr_assert_eq(b->srv_rx, BULK_N, "server received %zu of %d", b->srv_rx, BULK_N);
    cr_assert_eq(b->srv_echoed, BULK_N);
    cr_assert_eq(b->next_recv, BULK_N, "client got back %zu of %d", b->next_recv, BULK_N);
    cr_assert_eq(b->bad, 0, "%zu datagrams out of order or corrupted", b->bad);
    cr_assert_eq(b->srv_bytes, b->sent_bytes);
    cr_assert_eq(b->back_bytes, b->sent_bytes);
    cr_assert_eq(cli.p->pauses, cli.p->resumes);
    cr_assert_eq(srv.p->nerrs, 0);
    cr_assert_eq(cli.p->nerrs, 0);
    cr_assert_eq(srv.p->ndgrams, BULK_N);
    cr_assert_eq(cli.p->ndgrams, BULK_N);
    close_ep(&cli);
    close_ep(&srv);
    cr_assert_str_eq(cli.p->events, "made,lost:0");
    cr_assert_str_eq(srv.p->events, "made,lost:0");
    free(b);
}

/* ---- what the kernel may receive for the transport (io_uring) ---------------- */

/* The largest UDP datagram arrives whole (io_uring receives into buffers
 * of its own: they hold it). */
Test(udp, largest_datagram_arrives_whole, .timeout = 20)
{
    ep_t srv, cli;
    struct sockaddr_in sa;
    server_and_client(&f, &srv, &cli, &sa);
    static unsigned char big[65507];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (unsigned char)(i * 13 + 7);
    cr_assert_eq(tpio_datagram_sendto(cli.t, big, sizeof big, NULL, 0), 0);
    cr_assert_eq(tpio_datagram_sendto(cli.t, "z", 1, NULL, 0), 0);
    cr_assert(run_until_dgrams(th_fx.loop, srv.p, 2));
    cr_assert_str_eq(srv.p->events, "made,dgram:65507,dgram:1");
    cr_assert_eq(srv.p->rxbytes, sizeof big + 1);
    close_ep(&cli);
    close_ep(&srv);
}

/* pause_reading: no datagram_received until resume_reading, even for what
 * arrived before the pause (on io_uring the kernel may have received it
 * already), then all of it in order; the sender is each one's. */
Test(udp, pause_reading_holds_datagrams_until_resume, .timeout = 20)
{
    ep_t srv, cli;
    struct sockaddr_in sa;
    server_and_client(&f, &srv, &cli, &sa);
    cr_assert_eq(tpio_datagram_sendto(cli.t, "a", 1, NULL, 0), 0);
    cr_assert(run_until_dgrams(th_fx.loop, srv.p, 1));
    int raw = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(raw, 0);
    const char *m[] = {"b", "cc", "ddd"};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(sendto(raw, m[i], strlen(m[i]), 0, (struct sockaddr *)&sa, sizeof sa),
                     (ssize_t)strlen(m[i]));
    cr_assert_eq(tpio_transport_pause_reading(srv.t), 0);
    th_run_iters(th_fx.loop, 20);
    cr_assert_eq(srv.p->ndgrams, 1, "%s", srv.p->events);
    cr_assert_eq(tpio_transport_resume_reading(srv.t), 0);
    cr_assert_eq(srv.p->ndgrams, 1, "delivered inside resume_reading");
    cr_assert(run_until_dgrams(th_fx.loop, srv.p, 4));
    cr_assert_str_eq(srv.p->events, "made,dgram:1,dgram:1,dgram:2,dgram:3");
    struct sockaddr_in ra;
    socklen_t rl = sizeof ra;
    cr_assert_eq(getsockname(raw, (struct sockaddr *)&ra, &rl), 0);
    cr_assert_eq(((struct sockaddr_in *)&srv.p->from)->sin_port, ra.sin_port);
    close(raw);
    close_ep(&cli);
    close_ep(&srv);
}
