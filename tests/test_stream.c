/*
 * Stream transports (TCP and Unix sockets): the callback state machine,
 * close/abort, eof handling, write/writelines, write_eof, peer reset,
 * pause/resume reading, get_extra_info, set_protocol and BufferedProtocol.
 *
 * "The peer" is a plain non-blocking socket the test reads and writes
 * directly. Nothing sleeps to wait for an event: the loop runs until a flag
 * is set, with a deadline.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define TMO 5.0

/* ---- a transport under test plus its plain-socket peer ------------------ */

typedef struct pair {
    tpio_loop_t *loop;
    th_proto_t tmpl;          /* knobs copied by the factory */
    th_proto_t *created;      /* last protocol the factory made */
    size_t factory_calls;
    /* completion */
    bool done;
    int err;
    size_t cb_calls;
    bool cb_in_loop;
    char events_at_cb[64];
    tpio_transport_t *t;
    th_proto_t *p;
    /* the peer */
    int peer;
    size_t wtotal;            /* bytes the transport was asked to write (pattern) */
} pair_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned char pat(size_t k)
{
    return (unsigned char)(((k ^ (k >> 8) ^ (k >> 16)) * 13u + 7u) & 0xff);
}

static tpio_protocol_t *count_factory(void *arg)
{
    pair_t *pr = arg;
    pr->factory_calls++;
    tpio_protocol_t *bp = th_factory(&pr->tmpl);
    pr->created = tpio_container_of(bp, th_proto_t, base);
    return bp;
}

static void on_conn(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p,
                    int err, void *arg)
{
    pair_t *pr = arg;
    pr->cb_calls++;
    pr->done = true;
    pr->err = err;
    pr->t = t;
    pr->cb_in_loop = tpio_loop_is_running(loop);
    pr->p = p ? tpio_container_of(p, th_proto_t, base) : NULL;
    if (pr->p)
        snprintf(pr->events_at_cb, sizeof pr->events_at_cb, "%.60s", pr->p->events);
}

static pair_t *pair_new(const tpio_protocol_ops_t *ops)
{
    pair_t *pr = calloc(1, sizeof *pr);
    cr_assert_not_null(pr);
    pr->tmpl.base.ops = ops ? ops : &th_proto_ops;
    pr->peer = -1;
    cr_assert_eq(tpio_loop_new(&pr->loop), 0);
    return pr;
}

static int listen_v4(uint16_t *port)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(l, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(l, 16), 0);
    socklen_t al = sizeof a;
    cr_assert_eq(getsockname(l, (struct sockaddr *)&a, &al), 0);
    *port = ntohs(a.sin_port);
    return l;
}

/* A TCP client transport (tpio_create_connection) and the accepted peer. */
static pair_t *tcp_pair(const tpio_protocol_ops_t *ops, const th_proto_t *knobs)
{
    pair_t *pr = pair_new(ops);
    if (knobs) {
        pr->tmpl.eof_ret = knobs->eof_ret;
        pr->tmpl.echo = knobs->echo;
        pr->tmpl.close_on_data = knobs->close_on_data;
        pr->tmpl.pause_in_made = knobs->pause_in_made;
        pr->tmpl.bufsize = knobs->bufsize;
    }
    uint16_t port;
    int l = listen_v4(&port);
    tpio_connect_opts_t o = {.host = "127.0.0.1", .port = port};
    cr_assert_eq(tpio_create_connection(pr->loop, count_factory, pr, &o, on_conn, pr), 0);
    cr_assert(!pr->done, "completion ran inside tpio_create_connection");
    if (pr->created)
        cr_assert(!pr->created->made, "connection_made ran inside tpio_create_connection");
    cr_assert(th_run_until(pr->loop, &pr->done, TMO), "no completion");
    cr_assert_eq(pr->err, 0, "connect failed: %s", tpio_err_name(pr->err));
    cr_assert_not_null(pr->t);
    cr_assert_not_null(pr->p);
    cr_assert_eq(pr->cb_calls, 1);
    cr_assert_eq(pr->factory_calls, 1);
    cr_assert_eq(pr->p, pr->created);
    cr_assert(pr->cb_in_loop);
    cr_assert_str_eq(pr->events_at_cb, "made");
    pr->peer = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    cr_assert_geq(pr->peer, 0);
    close(l);
    return pr;
}

/* A Unix socketpair: one end wrapped by tpio_connect_accepted_socket. Whatever
 * `pre` holds is sent by the peer before the transport exists; pre_eof then
 * shuts the peer's write side. */
static pair_t *unix_pair(const tpio_protocol_ops_t *ops, const th_proto_t *knobs,
                         const void *pre, size_t prelen, bool pre_eof)
{
    pair_t *pr = pair_new(ops);
    if (knobs) {
        pr->tmpl.eof_ret = knobs->eof_ret;
        pr->tmpl.echo = knobs->echo;
        pr->tmpl.close_on_data = knobs->close_on_data;
        pr->tmpl.pause_in_made = knobs->pause_in_made;
        pr->tmpl.bufsize = knobs->bufsize;
    }
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    if (prelen)
        cr_assert_eq(send(sv[1], pre, prelen, MSG_NOSIGNAL), (ssize_t)prelen);
    if (pre_eof)
        cr_assert_eq(shutdown(sv[1], SHUT_WR), 0);
    cr_assert_eq(fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) | O_NONBLOCK), 0);
    pr->peer = sv[1];
    cr_assert_eq(tpio_connect_accepted_socket(pr->loop, count_factory, pr, sv[0],
                                              on_conn, pr), 0);
    cr_assert(!pr->done, "completion ran inside tpio_connect_accepted_socket");
    if (pr->created)
        cr_assert(!pr->created->made, "connection_made ran inside the call");
    cr_assert(th_run_until(pr->loop, &pr->done, TMO), "no completion");
    cr_assert_eq(pr->err, 0, "failed: %s", tpio_err_name(pr->err));
    cr_assert_not_null(pr->t);
    cr_assert_not_null(pr->p);
    cr_assert_eq(pr->cb_calls, 1);
    cr_assert_eq(pr->factory_calls, 1);
    cr_assert(pr->cb_in_loop);
    cr_assert_str_eq(pr->events_at_cb, "made");
    return pr;
}

/* Run until the protocol's connection_lost ran, then close everything. */
static void pair_finish(pair_t *pr)
{
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TMO), "no connection_lost; events=%s",
              pr->p->events);
    if (pr->peer >= 0)
        close(pr->peer);
    pr->peer = -1;
    /* run a little more so any (erroneous) late callback would show */
    for (int i = 0; i < 3; i++)
        tpio_loop_run_once(pr->loop, 0);
    cr_assert_eq(tpio_loop_close(pr->loop), 0);
    th_proto_free(pr->p);
    free(pr);
}

/* Run a bounded number of loop iterations: used to check that something does
 * NOT happen. */
static void run_iters(tpio_loop_t *loop, int n)
{
    for (int i = 0; i < n; i++)
        tpio_loop_run_once(loop, 5);
}

static bool run_until_rx(pair_t *pr, th_proto_t *p, size_t n)
{
    double end = now_s() + TMO;
    while (p->rxlen < n && now_s() < end)
        tpio_loop_run_once(pr->loop, 10);
    return p->rxlen >= n;
}

static void peer_send(pair_t *pr, const void *d, size_t n)
{
    cr_assert_eq(send(pr->peer, d, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Peer reads exactly n bytes (running the loop meanwhile). */
static size_t peer_recv_exact(pair_t *pr, void *buf, size_t n)
{
    size_t got = 0;
    double end = now_s() + TMO;
    while (got < n && now_s() < end) {
        ssize_t r = recv(pr->peer, (char *)buf + got, n - got, 0);
        if (r > 0)
            got += (size_t)r;
        else if (r == 0)
            break;
        else if (errno == EAGAIN || errno == EINTR)
            tpio_loop_run_once(pr->loop, 5);
        else
            break;
    }
    return got;
}

/* Peer expects EOF next: returns 0 on EOF, 1 if data came instead, -errno on
 * error, -ETIMEDOUT if nothing happened. */
static int peer_expect_eof(pair_t *pr)
{
    double end = now_s() + TMO;
    char c;
    while (now_s() < end) {
        ssize_t r = recv(pr->peer, &c, 1, 0);
        if (r == 0)
            return 0;
        if (r > 0)
            return 1;
        if (errno != EAGAIN && errno != EINTR)
            return -errno;
        tpio_loop_run_once(pr->loop, 5);
    }
    return -ETIMEDOUT;
}

/* Peer reads the pattern stream from offset `off` until EOF (want_eof) or
 * until `expect` bytes; checks every byte; returns the count read. *end_err
 * gets 0 for EOF, -errno for an error, 1 when stopped at `expect`. */
static size_t peer_drain_pattern(pair_t *pr, size_t off, size_t expect, bool want_eof,
                                 int *end_err)
{
    static unsigned char buf[65536];
    size_t got = 0;
    double end = now_s() + 20;
    *end_err = -ETIMEDOUT;
    while (now_s() < end) {
        if (!want_eof && got >= expect) {
            *end_err = 1;
            break;
        }
        ssize_t r = recv(pr->peer, buf, sizeof buf, 0);
        if (r > 0) {
            for (ssize_t i = 0; i < r; i++)
                cr_assert_eq(buf[i], pat(off + got + (size_t)i),
                             "byte %zu differs", off + got + (size_t)i);
            got += (size_t)r;
        } else if (r == 0) {
            *end_err = 0;
            break;
        } else if (errno == EAGAIN || errno == EINTR) {
            tpio_loop_run_once(pr->loop, 2);
        } else {
            *end_err = -errno;
            break;
        }
    }
    return got;
}

/* Shrink kernel buffers so that the transport's buffer fills quickly. */
static void shrink_bufs(pair_t *pr)
{
    int sz = 4096;
    cr_assert_eq(setsockopt(tpio_transport_fd(pr->t), SOL_SOCKET, SO_SNDBUF, &sz,
                            sizeof sz), 0);
    cr_assert_eq(setsockopt(pr->peer, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz), 0);
}

/* Write the pattern stream until the transport has to buffer something. The
 * loop does not run meanwhile, so nothing drains. */
static void fill_until_buffered(pair_t *pr)
{
    static unsigned char chunk[16384];
    while (tpio_get_write_buffer_size(pr->t) == 0) {
        cr_assert_lt(pr->wtotal, (size_t)64 << 20, "kernel never pushed back");
        for (size_t i = 0; i < sizeof chunk; i++)
            chunk[i] = pat(pr->wtotal + i);
        cr_assert_eq(tpio_write(pr->t, chunk, sizeof chunk), 0);
        pr->wtotal += sizeof chunk;
    }
}

static void write_pattern(pair_t *pr, size_t n)
{
    unsigned char *b = malloc(n);
    cr_assert_not_null(b);
    for (size_t i = 0; i < n; i++)
        b[i] = pat(pr->wtotal + i);
    cr_assert_eq(tpio_write(pr->t, b, n), 0);
    /* the caller's buffer is the caller's again at once */
    memset(b, 0xAA, n);
    free(b);
    pr->wtotal += n;
}

/* ===================================================================== */
/* Lifecycle                                                             */
/* ===================================================================== */

Test(stream, tcp_lifecycle_data_then_eof, .timeout = 20)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    th_proto_t *p = pr->p;
    cr_assert_str_eq(p->events, "made");
    cr_assert_eq(p->t, pr->t);
    cr_assert_eq(tpio_get_protocol(pr->t), &p->base);
    cr_assert_eq(tpio_transport_kind(pr->t), TPIO_TRANSPORT_TCP);
    cr_assert_eq(tpio_transport_loop(pr->t), pr->loop);
    cr_assert(!tpio_is_closing(pr->t));
    cr_assert(tpio_is_reading(pr->t));
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), 0);

    peer_send(pr, "hello", 5);
    cr_assert(run_until_rx(pr, p, 5));
    cr_assert_str_eq(p->events, "made,data");
    cr_assert_eq(p->rxlen, 5);
    cr_assert_eq(memcmp(p->rx, "hello", 5), 0);

    cr_assert_eq(shutdown(pr->peer, SHUT_WR), 0);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,data,eof,lost:0");
    cr_assert_eq(p->lost_err, 0);
    /* the transport closed itself: the peer sees EOF */
    cr_assert_eq(peer_expect_eof(pr), 0);
    cr_assert_eq(pr->cb_calls, 1);
    pair_finish(pr);
}

Test(stream, accepted_socket_made_on_loop_before_data, .timeout = 20)
{
    /* data and EOF are already waiting when the transport is created */
    pair_t *pr = unix_pair(NULL, NULL, "abc", 3, true);
    th_proto_t *p = pr->p;
    cr_assert_eq(tpio_transport_kind(pr->t), TPIO_TRANSPORT_UNIX);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(pr->events_at_cb, "made");
    cr_assert_str_eq(p->events, "made,data,eof,lost:0");
    cr_assert_eq(p->rxlen, 3);
    cr_assert_eq(memcmp(p->rx, "abc", 3), 0);
    cr_assert_eq(pr->cb_calls, 1);
    pair_finish(pr);
}

Test(stream, close_without_buffer_schedules_lost, .timeout = 20)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    th_proto_t *p = pr->p;
    cr_assert_eq(tpio_close(pr->t), 0);
    cr_assert_str_eq(p->events, "made", "connection_lost ran inside tpio_close");
    cr_assert(!p->lost);
    cr_assert(tpio_is_closing(pr->t));
    cr_assert(!tpio_is_reading(pr->t));
    cr_assert_eq(tpio_close(pr->t), 0);          /* idempotent */
    cr_assert_eq(tpio_write(pr->t, "x", 1), 0);  /* dropped */
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), 0);
    cr_assert_str_eq(p->events, "made");
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,lost:0");
    cr_assert_eq(p->lost_err, 0);
    /* the dropped "x" never arrives */
    cr_assert_eq(peer_expect_eof(pr), 0);
    pair_finish(pr);
}

Test(stream, close_flushes_buffer_before_lost, .timeout = 30)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    th_proto_t *p = pr->p;
    shrink_bufs(pr);
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)64 << 20, TPIO_LIMIT_DEFAULT), 0);
    fill_until_buffered(pr);
    size_t buffered = tpio_get_write_buffer_size(pr->t);
    cr_assert_gt(buffered, 0);

    cr_assert_eq(tpio_close(pr->t), 0);
    cr_assert(tpio_is_closing(pr->t));
    cr_assert(!tpio_is_reading(pr->t));
    cr_assert_eq(tpio_write(pr->t, "zzz", 3), 0); /* dropped after close */
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), buffered);
    /* the peer does not read: the buffer cannot drain, no connection_lost */
    run_iters(pr->loop, 10);
    cr_assert_str_eq(p->events, "made");
    cr_assert(!p->lost);

    int end;
    size_t got = peer_drain_pattern(pr, 0, pr->wtotal, true, &end);
    cr_assert_eq(end, 0, "peer ended with %d", end);
    cr_assert_eq(got, pr->wtotal, "peer got %zu of %zu bytes", got, pr->wtotal);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,lost:0");
    pair_finish(pr);
}

Test(stream, abort_drops_buffer, .timeout = 30)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    th_proto_t *p = pr->p;
    size_t lost_count = 0;
    p->lost_counter = &lost_count;
    shrink_bufs(pr);
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)64 << 20, TPIO_LIMIT_DEFAULT), 0);
    fill_until_buffered(pr);
    size_t buffered = tpio_get_write_buffer_size(pr->t);
    cr_assert_gt(buffered, 0);
    size_t in_kernel = pr->wtotal - buffered;

    cr_assert_eq(tpio_abort(pr->t), 0);
    cr_assert_str_eq(p->events, "made", "connection_lost ran inside tpio_abort");
    cr_assert(tpio_is_closing(pr->t));
    cr_assert(!tpio_is_reading(pr->t));
    cr_assert_eq(tpio_abort(pr->t), 0);
    cr_assert_eq(tpio_close(pr->t), 0);
    cr_assert_eq(tpio_write(pr->t, "zzz", 3), 0);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,lost:0");
    cr_assert_eq(p->lost_err, 0);
    cr_assert_eq(lost_count, 1);

    /* only what the kernel had already taken arrives, then EOF */
    int end;
    size_t got = peer_drain_pattern(pr, 0, in_kernel, true, &end);
    cr_assert_eq(end, 0, "peer ended with %d", end);
    cr_assert_eq(got, in_kernel, "peer got %zu bytes, kernel had %zu (buffered %zu)", got,
                 in_kernel, buffered);
    pair_finish(pr);
}

Test(stream, close_then_abort_while_flushing_one_lost, .timeout = 30)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    th_proto_t *p = pr->p;
    size_t lost_count = 0;
    p->lost_counter = &lost_count;
    shrink_bufs(pr);
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)64 << 20, TPIO_LIMIT_DEFAULT), 0);
    fill_until_buffered(pr);
    cr_assert_eq(tpio_close(pr->t), 0);
    run_iters(pr->loop, 3);
    cr_assert(!p->lost);
    /* the peer is not reading: abort must end it without waiting for a flush */
    cr_assert_eq(tpio_abort(pr->t), 0);
    cr_assert_str_eq(p->events, "made");
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    run_iters(pr->loop, 3);
    cr_assert_str_eq(p->events, "made,lost:0");
    cr_assert_eq(lost_count, 1);
    pair_finish(pr);
}

Test(stream, close_inside_data_received, .timeout = 20)
{
    th_proto_t k = {0};
    k.close_on_data = true;
    pair_t *pr = tcp_pair(NULL, &k);
    th_proto_t *p = pr->p;
    peer_send(pr, "abc", 3);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,data,lost:0");
    cr_assert_eq(p->rxlen, 3);
    cr_assert_eq(peer_expect_eof(pr), 0);
    pair_finish(pr);
}

Test(stream, eof_received_true_keeps_half_open, .timeout = 20)
{
    th_proto_t k = {0};
    k.eof_ret = true;
    pair_t *pr = tcp_pair(NULL, &k);
    th_proto_t *p = pr->p;
    peer_send(pr, "ping", 4);
    cr_assert_eq(shutdown(pr->peer, SHUT_WR), 0);
    cr_assert(th_run_until(pr->loop, &p->eof, TMO));
    run_iters(pr->loop, 5);
    cr_assert_str_eq(p->events, "made,data,eof");
    cr_assert(!p->lost);
    cr_assert(!tpio_is_closing(pr->t));
    cr_assert_eq(tpio_write(pr->t, "pong", 4), 0);
    char buf[8] = {0};
    cr_assert_eq(peer_recv_exact(pr, buf, 4), 4);
    cr_assert_eq(memcmp(buf, "pong", 4), 0);
    cr_assert_eq(tpio_close(pr->t), 0);
    cr_assert_str_eq(p->events, "made,data,eof");
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,data,eof,lost:0");
    cr_assert_eq(peer_expect_eof(pr), 0);
    pair_finish(pr);
}

/* ===================================================================== */
/* write_eof                                                             */
/* ===================================================================== */

Test(stream, write_eof_half_close, .timeout = 20)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    th_proto_t *p = pr->p;
    cr_assert(tpio_can_write_eof(pr->t));
    cr_assert_eq(tpio_write(pr->t, "abc", 3), 0);
    cr_assert_eq(tpio_write_eof(pr->t), 0);
    cr_assert_eq(tpio_write_eof(pr->t), 0); /* idempotent */
    cr_assert_eq(tpio_write(pr->t, "x", 1), -ESHUTDOWN);
    cr_assert(!tpio_is_closing(pr->t));
    char buf[8] = {0};
    cr_assert_eq(peer_recv_exact(pr, buf, 3), 3);
    cr_assert_eq(memcmp(buf, "abc", 3), 0);
    cr_assert_eq(peer_expect_eof(pr), 0);
    /* the other direction still works */
    peer_send(pr, "xyz", 3);
    cr_assert(run_until_rx(pr, p, 3));
    cr_assert_eq(memcmp(p->rx, "xyz", 3), 0);
    cr_assert_str_eq(p->events, "made,data");
    cr_assert_eq(shutdown(pr->peer, SHUT_WR), 0);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,data,eof,lost:0");
    pair_finish(pr);
}

Test(stream, write_eof_waits_for_buffer_flush, .timeout = 30)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    th_proto_t *p = pr->p;
    shrink_bufs(pr);
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)64 << 20, TPIO_LIMIT_DEFAULT), 0);
    fill_until_buffered(pr);
    cr_assert_eq(tpio_write_eof(pr->t), 0);
    cr_assert_eq(tpio_write(pr->t, "x", 1), -ESHUTDOWN);
    int end;
    size_t got = peer_drain_pattern(pr, 0, pr->wtotal, true, &end);
    cr_assert_eq(end, 0, "peer ended with %d", end);
    cr_assert_eq(got, pr->wtotal);
    cr_assert_str_eq(p->events, "made");
    peer_send(pr, "q", 1);
    cr_assert(run_until_rx(pr, p, 1));
    cr_assert_eq(shutdown(pr->peer, SHUT_WR), 0);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,data,eof,lost:0");
    cr_assert_eq(p->rx[0], 'q');
    pair_finish(pr);
}

Test(stream, write_eof_unix_socket, .timeout = 20)
{
    pair_t *pr = unix_pair(NULL, NULL, NULL, 0, false);
    th_proto_t *p = pr->p;
    cr_assert(tpio_can_write_eof(pr->t));
    cr_assert_eq(tpio_write(pr->t, "abc", 3), 0);
    cr_assert_eq(tpio_write_eof(pr->t), 0);
    char buf[4];
    cr_assert_eq(peer_recv_exact(pr, buf, 3), 3);
    cr_assert_eq(memcmp(buf, "abc", 3), 0);
    cr_assert_eq(peer_expect_eof(pr), 0);
    peer_send(pr, "de", 2);
    cr_assert(run_until_rx(pr, p, 2));
    cr_assert_eq(memcmp(p->rx, "de", 2), 0);
    cr_assert_eq(shutdown(pr->peer, SHUT_WR), 0);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,data,eof,lost:0");
    pair_finish(pr);
}

/* ===================================================================== */
/* write / writelines                                                    */
/* ===================================================================== */

Test(stream, small_write_sent_at_once, .timeout = 20)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    char buf[6] = "hello";
    cr_assert_eq(tpio_write(pr->t, buf, 5), 0);
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), 0);
    memset(buf, 'X', sizeof buf);
    /* sent inside tpio_write: the peer gets it without the loop running */
    struct pollfd pf = {.fd = pr->peer, .events = POLLIN};
    cr_assert_eq(poll(&pf, 1, 5000), 1);
    char rb[8] = {0};
    cr_assert_eq(recv(pr->peer, rb, sizeof rb, 0), 5);
    cr_assert_str_eq(rb, "hello");
    cr_assert_eq(tpio_close(pr->t), 0);
    pair_finish(pr);
}

Test(stream, buffered_write_copies_caller_data, .timeout = 30)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    shrink_bufs(pr);
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)64 << 20, TPIO_LIMIT_DEFAULT), 0);
    fill_until_buffered(pr);
    size_t b0 = tpio_get_write_buffer_size(pr->t);
    /* with something buffered, the whole write is buffered (appended) */
    write_pattern(pr, 1000);
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), b0 + 1000);
    write_pattern(pr, 1);
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), b0 + 1001);
    int end;
    size_t got = peer_drain_pattern(pr, 0, pr->wtotal, false, &end);
    cr_assert_eq(got, pr->wtotal);
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), 0);
    cr_assert_str_eq(pr->p->events, "made");
    cr_assert_eq(tpio_close(pr->t), 0);
    cr_assert_eq(peer_expect_eof(pr), 0);
    pair_finish(pr);
}

Test(stream, write_bad_and_empty_args, .timeout = 20)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    cr_assert_eq(tpio_write(pr->t, NULL, 5), -EINVAL);
    cr_assert_eq(tpio_write(pr->t, "abc", 0), 0);
    cr_assert_eq(tpio_write(pr->t, NULL, 0), 0);
    cr_assert_eq(tpio_write(NULL, "abc", 3), -EINVAL);
    struct iovec bad = {.iov_base = NULL, .iov_len = 3};
    cr_assert_eq(tpio_writelines(pr->t, &bad, 1), -EINVAL);
    cr_assert_eq(tpio_writelines(pr->t, NULL, 2), -EINVAL);
    struct iovec empty[2] = {{.iov_base = "a", .iov_len = 0}, {.iov_base = "b", .iov_len = 0}};
    cr_assert_eq(tpio_writelines(pr->t, empty, 2), 0);
    cr_assert_eq(tpio_writelines(pr->t, empty, 0), 0);
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), 0);
    cr_assert_eq(tpio_close(NULL), -EINVAL);
    cr_assert_eq(tpio_abort(NULL), -EINVAL);
    cr_assert(!tpio_is_closing(pr->t));
    /* nothing of the above reached the peer */
    cr_assert_eq(tpio_write(pr->t, "ok", 2), 0);
    char buf[8] = {0};
    cr_assert_eq(peer_recv_exact(pr, buf, 2), 2);
    cr_assert_str_eq(buf, "ok");
    cr_assert_str_eq(pr->p->events, "made");
    cr_assert_eq(tpio_close(pr->t), 0);
    cr_assert_eq(peer_expect_eof(pr), 0);
    pair_finish(pr);
}

Test(stream, writelines_concatenates, .timeout = 20)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    struct iovec iov[4] = {
        {.iov_base = "ab", .iov_len = 2},
        {.iov_base = "", .iov_len = 0},
        {.iov_base = "cdef", .iov_len = 4},
        {.iov_base = "g", .iov_len = 1},
    };
    cr_assert_eq(tpio_writelines(pr->t, iov, 4), 0);
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), 0);
    char buf[8] = {0};
    cr_assert_eq(peer_recv_exact(pr, buf, 7), 7);
    cr_assert_str_eq(buf, "abcdefg");
    cr_assert_eq(tpio_close(pr->t), 0);
    cr_assert_eq(peer_expect_eof(pr), 0);
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TMO));
    cr_assert_str_eq(pr->p->events, "made,lost:0");
    pair_finish(pr);
}

/* Build n scattered pieces of the pattern stream starting at offset off; the
 * source memory has garbage gaps between pieces so nothing is contiguous. */
static unsigned char *scatter(struct iovec *iov, int n, size_t off, size_t *total)
{
    size_t cap = 0;
    for (int i = 0; i < n; i++)
        cap += (size_t)(i % 7) + 1 + 3;
    unsigned char *src = malloc(cap);
    cr_assert_not_null(src);
    memset(src, 0xEE, cap);
    size_t pos = 0, t = 0;
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)(i % 7) + 1;
        if (i % 11 == 5)
            len = 0; /* some empty entries */
        for (size_t j = 0; j < len; j++)
            src[pos + j] = pat(off + t + j);
        iov[i].iov_base = src + pos;
        iov[i].iov_len = len;
        pos += len + 3;
        t += len;
    }
    *total = t;
    return src;
}

Test(stream, writelines_more_than_iov_max, .timeout = 30)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    enum { N = 3000 };
    struct iovec *iov = calloc(N, sizeof *iov);
    size_t total;
    unsigned char *src = scatter(iov, N, 0, &total);
    cr_assert_eq(tpio_writelines(pr->t, iov, N), 0);
    memset(src, 0, total); /* ours again */
    pr->wtotal = total;
    free(src);

    /* and once more while data is buffered */
    shrink_bufs(pr);
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)64 << 20, TPIO_LIMIT_DEFAULT), 0);
    fill_until_buffered(pr);
    size_t b0 = tpio_get_write_buffer_size(pr->t);
    enum { M = 5000 };
    struct iovec *iov2 = calloc(M, sizeof *iov2);
    size_t total2;
    unsigned char *src2 = scatter(iov2, M, pr->wtotal, &total2);
    cr_assert_eq(tpio_writelines(pr->t, iov2, M), 0);
    memset(src2, 0, total2);
    free(src2);
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), b0 + total2);
    pr->wtotal += total2;

    int end;
    cr_assert_eq(tpio_close(pr->t), 0);
    size_t got = peer_drain_pattern(pr, 0, pr->wtotal, true, &end);
    cr_assert_eq(end, 0);
    cr_assert_eq(got, pr->wtotal, "got %zu of %zu", got, pr->wtotal);
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TMO));
    cr_assert_str_eq(pr->p->events, "made,lost:0");
    free(iov);
    free(iov2);
    pair_finish(pr);
}

/* ===================================================================== */
/* Peer reset                                                            */
/* ===================================================================== */

static void peer_reset(pair_t *pr)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    cr_assert_eq(setsockopt(pr->peer, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(pr->peer);
    pr->peer = -1;
}

Test(stream, peer_reset_while_idle, .timeout = 20)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    th_proto_t *p = pr->p;
    peer_reset(pr);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,lost:ECONNRESET");
    cr_assert_eq(p->lost_err, -ECONNRESET);
    pair_finish(pr);
}

Test(stream, peer_reset_while_writing, .timeout = 30)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    th_proto_t *p = pr->p;
    shrink_bufs(pr);
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)64 << 20, TPIO_LIMIT_DEFAULT), 0);
    fill_until_buffered(pr);
    peer_reset(pr);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert(strcmp(p->events, "made,lost:ECONNRESET") == 0 ||
                  strcmp(p->events, "made,lost:EPIPE") == 0,
              "events: %s", p->events);
    cr_assert(p->lost_err == -ECONNRESET || p->lost_err == -EPIPE);
    pair_finish(pr);
}

/* ===================================================================== */
/* pause_reading / resume_reading                                        */
/* ===================================================================== */

Test(stream, pause_resume_reading, .timeout = 20)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    th_proto_t *p = pr->p;
    cr_assert(tpio_is_reading(pr->t));
    cr_assert_eq(tpio_pause_reading(pr->t), 0);
    cr_assert(!tpio_is_reading(pr->t));
    cr_assert_eq(tpio_pause_reading(pr->t), 0);
    cr_assert(!tpio_is_reading(pr->t));
    peer_send(pr, "abc", 3);
    run_iters(pr->loop, 20);
    cr_assert_str_eq(p->events, "made");
    cr_assert_eq(p->rxlen, 0);
    cr_assert_eq(tpio_resume_reading(pr->t), 0);
    cr_assert(tpio_is_reading(pr->t));
    cr_assert_eq(tpio_resume_reading(pr->t), 0);
    cr_assert(tpio_is_reading(pr->t));
    cr_assert(run_until_rx(pr, p, 3));
    cr_assert_str_eq(p->events, "made,data");
    cr_assert_eq(memcmp(p->rx, "abc", 3), 0);

    /* paused: neither data nor EOF is delivered */
    cr_assert_eq(tpio_pause_reading(pr->t), 0);
    peer_send(pr, "de", 2);
    cr_assert_eq(shutdown(pr->peer, SHUT_WR), 0);
    run_iters(pr->loop, 20);
    cr_assert_str_eq(p->events, "made,data");
    cr_assert_eq(p->rxlen, 3);
    cr_assert(!tpio_is_closing(pr->t));
    cr_assert_eq(tpio_resume_reading(pr->t), 0);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,data,eof,lost:0");
    cr_assert_eq(p->rxlen, 5);
    cr_assert_eq(memcmp(p->rx, "abcde", 5), 0);
    pair_finish(pr);
}

Test(stream, pause_reading_inside_connection_made, .timeout = 20)
{
    th_proto_t k = {0};
    k.pause_in_made = true;
    pair_t *pr = unix_pair(NULL, &k, "early", 5, false);
    th_proto_t *p = pr->p;
    run_iters(pr->loop, 20);
    cr_assert_str_eq(p->events, "made");
    cr_assert_eq(p->rxlen, 0);
    cr_assert(!tpio_is_reading(pr->t));
    cr_assert_eq(tpio_resume_reading(pr->t), 0);
    cr_assert(tpio_is_reading(pr->t));
    cr_assert(run_until_rx(pr, p, 5));
    cr_assert_eq(memcmp(p->rx, "early", 5), 0);
    cr_assert_str_eq(p->events, "made,data");
    cr_assert_eq(shutdown(pr->peer, SHUT_WR), 0);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,data,eof,lost:0");
    pair_finish(pr);
}

Test(stream, pause_resume_reading_on_closing_transport, .timeout = 20)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    th_proto_t *p = pr->p;
    cr_assert_eq(tpio_close(pr->t), 0);
    cr_assert(!tpio_is_reading(pr->t));
    cr_assert_eq(tpio_pause_reading(pr->t), 0);
    cr_assert(!tpio_is_reading(pr->t));
    cr_assert_eq(tpio_resume_reading(pr->t), 0);
    cr_assert(!tpio_is_reading(pr->t));
    cr_assert(tpio_is_closing(pr->t));
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,lost:0");
    pair_finish(pr);
}

/* ===================================================================== */
/* get_extra_info                                                        */
/* ===================================================================== */

static bool same_addr(const struct sockaddr *a, socklen_t al, const struct sockaddr *b,
                      socklen_t bl)
{
    if (al != bl || a->sa_family != b->sa_family)
        return false;
    if (a->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->sa_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return memcmp(a, b, al) == 0;
}

static void check_extra_info_tcp(tpio_transport_t *t)
{
    int fd = tpio_transport_fd(t);
    cr_assert_geq(fd, 0);
    tpio_extra_t x;
    memset(&x, 0x5a, sizeof x);
    cr_assert_eq(tpio_get_extra_info(t, "socket", &x), 0);
    cr_assert_eq(x.type, TPIO_EXTRA_FD);
    cr_assert_eq(x.fd, fd);

    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(getpeername(fd, (struct sockaddr *)&ss, &sl), 0);
    memset(&x, 0, sizeof x);
    cr_assert_eq(tpio_get_extra_info(t, "peername", &x), 0);
    cr_assert_eq(x.type, TPIO_EXTRA_ADDR);
    cr_assert_not_null(x.addr);
    cr_assert(same_addr(x.addr, x.addrlen, (struct sockaddr *)&ss, sl));
    struct sockaddr_storage g;
    socklen_t gl = sizeof g;
    cr_assert_eq(tpio_transport_peername(t, &g, &gl), 0);
    cr_assert(same_addr((struct sockaddr *)&g, gl, (struct sockaddr *)&ss, sl));

    sl = sizeof ss;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
    memset(&x, 0, sizeof x);
    cr_assert_eq(tpio_get_extra_info(t, "sockname", &x), 0);
    cr_assert_eq(x.type, TPIO_EXTRA_ADDR);
    cr_assert(same_addr(x.addr, x.addrlen, (struct sockaddr *)&ss, sl));
    gl = sizeof g;
    cr_assert_eq(tpio_transport_sockname(t, &g, &gl), 0);
    cr_assert(same_addr((struct sockaddr *)&g, gl, (struct sockaddr *)&ss, sl));

    x.type = TPIO_EXTRA_FD;
    cr_assert_eq(tpio_get_extra_info(t, "no-such-key", &x), -ENOENT);
    cr_assert_eq(x.type, TPIO_EXTRA_NONE);
    x.type = TPIO_EXTRA_FD;
    cr_assert_eq(tpio_get_extra_info(t, "sslcontext", &x), -ENOENT);
    cr_assert_eq(x.type, TPIO_EXTRA_NONE);

    int one = 0;
    socklen_t ol = sizeof one;
    cr_assert_eq(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, &ol), 0);
    cr_assert_neq(one, 0, "TCP_NODELAY not set");
}

Test(stream, extra_info_tcp_client, .timeout = 20)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    check_extra_info_tcp(pr->t);
    /* peername is the peer's sockname */
    struct sockaddr_storage ps;
    socklen_t pl = sizeof ps;
    cr_assert_eq(getsockname(pr->peer, (struct sockaddr *)&ps, &pl), 0);
    tpio_extra_t x;
    cr_assert_eq(tpio_get_extra_info(pr->t, "peername", &x), 0);
    cr_assert(same_addr(x.addr, x.addrlen, (struct sockaddr *)&ps, pl));
    char want[64], got[64];
    snprintf(want, sizeof want, "('127.0.0.1', %u)",
             ntohs(((struct sockaddr_in *)&ps)->sin_port));
    cr_assert_eq(tpio_format_addr(x.addr, x.addrlen, got, sizeof got), (int)strlen(want));
    cr_assert_str_eq(got, want);
    cr_assert_eq(tpio_close(pr->t), 0);
    pair_finish(pr);
}

typedef struct srv_ctx {
    th_proto_t tmpl;
    th_proto_t *made;
    size_t calls;
    bool closed;
} srv_ctx_t;

static tpio_protocol_t *srv_factory(void *arg)
{
    srv_ctx_t *c = arg;
    c->calls++;
    tpio_protocol_t *bp = th_factory(&c->tmpl);
    c->made = tpio_container_of(bp, th_proto_t, base);
    return bp;
}

static void on_wait_closed(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    *(bool *)arg = true;
}

Test(stream, extra_info_tcp_server_side, .timeout = 20)
{
    tpio_loop_t *loop;
    cr_assert_eq(tpio_loop_new(&loop), 0);
    srv_ctx_t *c = calloc(1, sizeof *c);
    c->tmpl.base.ops = &th_proto_ops;
    tpio_server_opts_t so = {.host = "127.0.0.1", .port = 0};
    tpio_server_t *s;
    cr_assert_eq(tpio_create_server(loop, srv_factory, c, &so, &s), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_sockname(s, 0, &ss, &sl), 0);
    int cl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(cl, (struct sockaddr *)&ss, sl), 0);
    double end = now_s() + TMO;
    while ((!c->made || !c->made->made) && now_s() < end)
        tpio_loop_run_once(loop, 10);
    cr_assert_not_null(c->made);
    th_proto_t *p = c->made;
    cr_assert_str_eq(p->events, "made");
    cr_assert_eq(tpio_transport_kind(p->t), TPIO_TRANSPORT_TCP);
    check_extra_info_tcp(p->t);
    struct sockaddr_storage cs;
    socklen_t csl = sizeof cs;
    cr_assert_eq(getsockname(cl, (struct sockaddr *)&cs, &csl), 0);
    tpio_extra_t x;
    cr_assert_eq(tpio_get_extra_info(p->t, "peername", &x), 0);
    cr_assert(same_addr(x.addr, x.addrlen, (struct sockaddr *)&cs, csl));
    char want[64], got[64];
    snprintf(want, sizeof want, "('127.0.0.1', %u)",
             ntohs(((struct sockaddr_in *)&cs)->sin_port));
    cr_assert_eq(tpio_format_addr(x.addr, x.addrlen, got, sizeof got), (int)strlen(want));
    cr_assert_str_eq(got, want);

    close(cl);
    cr_assert(th_run_until(loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,eof,lost:0");
    cr_assert_eq(c->calls, 1);
    cr_assert_eq(tpio_server_close(s), 0);
    cr_assert_eq(tpio_server_wait_closed(s, on_wait_closed, &c->closed), 0);
    cr_assert(th_run_until(loop, &c->closed, TMO));
    cr_assert_eq(tpio_loop_close(loop), 0);
    th_proto_free(p);
    free(c);
}

Test(stream, format_addr, .timeout = 10)
{
    char buf[128];
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(12345)};
    inet_pton(AF_INET, "127.0.0.1", &a4.sin_addr);
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&a4, sizeof a4, buf, sizeof buf),
                 (int)strlen("('127.0.0.1', 12345)"));
    cr_assert_str_eq(buf, "('127.0.0.1', 12345)");
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(8888)};
    inet_pton(AF_INET6, "::1", &a6.sin6_addr);
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&a6, sizeof a6, buf, sizeof buf), 19);
    cr_assert_str_eq(buf, "('::1', 8888, 0, 0)");
    struct sockaddr_un au = {.sun_family = AF_UNIX};
    strcpy(au.sun_path, "/tmp/tpio-x.sock");
    socklen_t ul = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(au.sun_path) + 1);
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&au, ul, buf, sizeof buf), 16);
    cr_assert_str_eq(buf, "/tmp/tpio-x.sock");
    /* truncated to buflen - 1 */
    char small[5];
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&a4, sizeof a4, small, sizeof small), 4);
    cr_assert_str_eq(small, "('12");
    cr_assert_lt(tpio_format_addr(NULL, 0, buf, sizeof buf), 0);
}

/* ===================================================================== */
/* set_protocol / get_protocol                                           */
/* ===================================================================== */

Test(stream, set_protocol_switches_receiver, .timeout = 20)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    th_proto_t *p1 = pr->p;
    peer_send(pr, "one", 3);
    cr_assert(run_until_rx(pr, p1, 3));
    th_proto_t *p2 = th_proto_new(&th_proto_ops);
    p2->t = pr->t;
    cr_assert_eq(tpio_set_protocol(pr->t, NULL), -EINVAL);
    cr_assert_eq(tpio_get_protocol(pr->t), &p1->base);
    cr_assert_eq(tpio_set_protocol(pr->t, &p2->base), 0);
    cr_assert_eq(tpio_get_protocol(pr->t), &p2->base);
    peer_send(pr, "two", 3);
    cr_assert(run_until_rx(pr, p2, 3));
    cr_assert_eq(memcmp(p2->rx, "two", 3), 0);
    cr_assert_str_eq(p2->events, "data");
    cr_assert_str_eq(p1->events, "made,data");
    cr_assert_eq(p1->rxlen, 3);
    cr_assert_eq(shutdown(pr->peer, SHUT_WR), 0);
    cr_assert(th_run_until(pr->loop, &p2->lost, TMO));
    cr_assert_str_eq(p2->events, "data,eof,lost:0");
    cr_assert_str_eq(p1->events, "made,data");
    /* pair_finish waits on pr->p: point it at the protocol that got lost */
    th_proto_free(p1);
    pr->p = p2;
    pair_finish(pr);
}

/* BufferedProtocol events for one read: "getbuf,updated", possibly followed by
 * "getbuf" alone when the implementation reads until EAGAIN (the state
 * machine allows get_buffer without buffer_updated). */
static bool one_buffered_read(const char *ev)
{
    return strcmp(ev, "getbuf,updated") == 0 || strcmp(ev, "getbuf,updated,getbuf") == 0;
}

Test(stream, set_protocol_between_protocol_and_buffered, .timeout = 20)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    th_proto_t *p1 = pr->p;
    peer_send(pr, "one", 3);
    cr_assert(run_until_rx(pr, p1, 3));

    th_proto_t *p2 = th_proto_new(&th_buffered_proto_ops);
    p2->t = pr->t;
    cr_assert_eq(tpio_set_protocol(pr->t, &p2->base), 0);
    peer_send(pr, "two", 3);
    cr_assert(run_until_rx(pr, p2, 3));
    cr_assert_eq(p2->rxlen, 3);
    cr_assert_eq(memcmp(p2->rx, "two", 3), 0);
    cr_assert(one_buffered_read(p2->events), "p2 events: %s", p2->events);

    th_proto_t *p3 = th_proto_new(&th_proto_ops);
    p3->t = pr->t;
    cr_assert_eq(tpio_set_protocol(pr->t, &p3->base), 0);
    cr_assert_eq(tpio_get_protocol(pr->t), &p3->base);
    char p2ev[64];
    snprintf(p2ev, sizeof p2ev, "%.60s", p2->events);
    peer_send(pr, "three", 5);
    cr_assert(run_until_rx(pr, p3, 5));
    cr_assert_eq(memcmp(p3->rx, "three", 5), 0);
    cr_assert_str_eq(p3->events, "data");
    cr_assert_str_eq(p2->events, p2ev);
    cr_assert_eq(p2->rxlen, 3);
    cr_assert_str_eq(p1->events, "made,data");
    cr_assert_eq(shutdown(pr->peer, SHUT_WR), 0);
    cr_assert(th_run_until(pr->loop, &p3->lost, TMO));
    cr_assert_str_eq(p3->events, "data,eof,lost:0");
    th_proto_free(p1);
    th_proto_free(p2);
    pr->p = p3;
    pair_finish(pr);
}

/* ===================================================================== */
/* BufferedProtocol                                                      */
/* ===================================================================== */

static ssize_t g_hint = 12345;
static size_t g_getbuf_calls;
static void *hint_getbuf(tpio_protocol_t *bp, ssize_t hint, size_t *len)
{
    g_hint = hint;
    g_getbuf_calls++;
    return th_buffered_proto_ops.get_buffer(bp, hint, len);
}

Test(stream, buffered_protocol_basic, .timeout = 20)
{
    tpio_protocol_ops_t ops = th_buffered_proto_ops;
    ops.get_buffer = hint_getbuf;
    pair_t *pr = unix_pair(&ops, NULL, "hello", 5, true);
    th_proto_t *p = pr->p;
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,getbuf,updated,getbuf,eof,lost:0");
    cr_assert_eq(p->rxlen, 5);
    cr_assert_eq(memcmp(p->rx, "hello", 5), 0);
    cr_assert_eq(g_hint, -1);
    cr_assert_eq(g_getbuf_calls, 2);
    pair_finish(pr);
}

/* Check "made,(getbuf[,updated])*,getbuf,eof,lost:0" and count updates. */
static size_t check_buffered_grammar(const char *ev)
{
    cr_assert_eq(strncmp(ev, "made,", 5), 0, "events: %s", ev);
    const char *tail = ",getbuf,eof,lost:0";
    size_t n = strlen(ev), tl = strlen(tail);
    cr_assert_gt(n, tl + 4);
    cr_assert_str_eq(ev + n - tl, tail);
    char *copy = strndup(ev + 5, n - 5 - tl);
    size_t updates = 0;
    bool need_getbuf = true;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcmp(tok, "getbuf") == 0) {
            need_getbuf = false;
        } else if (strcmp(tok, "updated") == 0) {
            cr_assert(!need_getbuf, "updated without getbuf in %s", ev);
            need_getbuf = true;
            updates++;
        } else {
            cr_assert_fail("unexpected event %s in %s", tok, ev);
        }
    }
    free(copy);
    return updates;
}

Test(stream, buffered_protocol_small_buffer, .timeout = 20)
{
    enum { N = 1000 };
    unsigned char payload[N];
    for (size_t i = 0; i < N; i++)
        payload[i] = pat(i);
    th_proto_t k = {0};
    k.bufsize = 7;
    pair_t *pr = unix_pair(&th_buffered_proto_ops, &k, payload, N, true);
    th_proto_t *p = pr->p;
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_eq(p->rxlen, N);
    cr_assert_eq(memcmp(p->rx, payload, N), 0);
    cr_assert_lt(p->elen, sizeof p->events - 64, "event log overflowed");
    size_t updates = check_buffered_grammar(p->events);
    cr_assert_geq(updates, (N + 6) / 7);
    pair_finish(pr);
}

typedef struct err_rec {
    size_t calls;
    int error;
    tpio_transport_t *transport;
    tpio_protocol_t *protocol;
    bool has_message;
} err_rec_t;

static void rec_handler(tpio_loop_t *loop, const tpio_error_context_t *ctx, void *arg)
{
    (void)loop;
    err_rec_t *r = arg;
    r->calls++;
    r->error = ctx->error;
    r->transport = ctx->transport;
    r->protocol = ctx->protocol;
    r->has_message = ctx->message != NULL && ctx->message[0] != '\0';
}

static void *empty_getbuf(tpio_protocol_t *bp, ssize_t hint, size_t *len)
{
    (void)hint;
    g_getbuf_calls++;
    *len = 0;
    return tpio_container_of(bp, th_proto_t, base)->bufmem;
}

static void *null_getbuf(tpio_protocol_t *bp, ssize_t hint, size_t *len)
{
    (void)bp;
    (void)hint;
    g_getbuf_calls++;
    *len = 4096;
    return NULL;
}

static void run_bad_getbuf(void *(*fn)(tpio_protocol_t *, ssize_t, size_t *))
{
    tpio_protocol_ops_t ops = th_buffered_proto_ops;
    ops.get_buffer = fn;
    err_rec_t rec = {0};
    pair_t *pr = unix_pair(&ops, NULL, NULL, 0, false);
    tpio_loop_set_error_handler(pr->loop, rec_handler, &rec);
    th_proto_t *p = pr->p;
    tpio_transport_t *t = pr->t;
    peer_send(pr, "abc", 3);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,lost:TPIO_EPROTOCOL_BUFFER");
    cr_assert_eq(p->lost_err, TPIO_EPROTOCOL_BUFFER);
    cr_assert_eq(p->rxlen, 0);
    cr_assert_eq(g_getbuf_calls, 1);
    cr_assert_eq(rec.calls, 1);
    cr_assert_eq(rec.error, TPIO_EPROTOCOL_BUFFER);
    cr_assert_eq(rec.transport, t);
    cr_assert_eq(rec.protocol, &p->base);
    cr_assert(rec.has_message);
    pair_finish(pr);
}

Test(stream, buffered_protocol_empty_buffer_is_fatal, .timeout = 20)
{
    run_bad_getbuf(empty_getbuf);
}

Test(stream, buffered_protocol_null_buffer_is_fatal, .timeout = 20)
{
    run_bad_getbuf(null_getbuf);
}
