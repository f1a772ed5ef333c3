/*
 * Write flow control: watermarks, pause_writing / resume_writing.
 *
 * Data is made to buffer deterministically: the peer is a plain socket that
 * is not read, both kernel buffers are shrunk, and the loop does not run
 * while the test writes, so nothing drains until the peer reads.
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

static __attribute__((unused)) double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static __attribute__((unused)) unsigned char pat(size_t k)
{
    return (unsigned char)(((k ^ (k >> 8) ^ (k >> 16)) * 13u + 7u) & 0xff);
}

static __attribute__((unused)) tpio_protocol_t *count_factory(void *arg)
{
    pair_t *pr = arg;
    pr->factory_calls++;
    tpio_protocol_t *bp = th_factory(&pr->tmpl);
    pr->created = tpio_container_of(bp, th_proto_t, base);
    return bp;
}

static __attribute__((unused)) void on_conn(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p,
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

static __attribute__((unused)) pair_t *pair_new(const tpio_protocol_ops_t *ops)
{
    pair_t *pr = calloc(1, sizeof *pr);
    cr_assert_not_null(pr);
    pr->tmpl.base.ops = ops ? ops : &th_proto_ops;
    pr->peer = -1;
    cr_assert_eq(tpio_loop_new(&pr->loop), 0);
    return pr;
}

static __attribute__((unused)) int listen_v4(uint16_t *port)
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
static __attribute__((unused)) pair_t *tcp_pair(const tpio_protocol_ops_t *ops, const th_proto_t *knobs)
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
static __attribute__((unused)) pair_t *unix_pair(const tpio_protocol_ops_t *ops, const th_proto_t *knobs,
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
static __attribute__((unused)) void pair_finish(pair_t *pr)
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
static __attribute__((unused)) void run_iters(tpio_loop_t *loop, int n)
{
    for (int i = 0; i < n; i++)
        tpio_loop_run_once(loop, 5);
}

static __attribute__((unused)) bool run_until_rx(pair_t *pr, th_proto_t *p, size_t n)
{
    double end = now_s() + TMO;
    while (p->rxlen < n && now_s() < end)
        tpio_loop_run_once(pr->loop, 10);
    return p->rxlen >= n;
}

static __attribute__((unused)) void peer_send(pair_t *pr, const void *d, size_t n)
{
    cr_assert_eq(send(pr->peer, d, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Peer reads exactly n bytes (running the loop meanwhile). */
static __attribute__((unused)) size_t peer_recv_exact(pair_t *pr, void *buf, size_t n)
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
static __attribute__((unused)) int peer_expect_eof(pair_t *pr)
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
static __attribute__((unused)) size_t peer_drain_pattern(pair_t *pr, size_t off, size_t expect, bool want_eof,
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
static __attribute__((unused)) void shrink_bufs(pair_t *pr)
{
    int sz = 4096;
    cr_assert_eq(setsockopt(tpio_transport_fd(pr->t), SOL_SOCKET, SO_SNDBUF, &sz,
                            sizeof sz), 0);
    cr_assert_eq(setsockopt(pr->peer, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz), 0);
}

/* Write the pattern stream until the transport has to buffer something. The
 * loop does not run meanwhile, so nothing drains. */
static __attribute__((unused)) void fill_until_buffered(pair_t *pr)
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

static __attribute__((unused)) void write_pattern(pair_t *pr, size_t n)
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

/* ---- recording pause/resume with the buffer size at the time ------------ */

static size_t g_pause_sz[32], g_npause;
static size_t g_resume_sz[32], g_nresume;
static pair_t *g_pr;           /* for refills from resume_writing */
static size_t g_refills;       /* resume_writing writes this many more times */

static void rec_pause(tpio_protocol_t *bp)
{
    th_proto_t *p = tpio_container_of(bp, th_proto_t, base);
    if (g_npause < 32)
        g_pause_sz[g_npause] = tpio_get_write_buffer_size(p->t);
    g_npause++;
    th_proto_ops.pause_writing(bp);
}

static void rec_resume(tpio_protocol_t *bp)
{
    th_proto_t *p = tpio_container_of(bp, th_proto_t, base);
    if (g_nresume < 32)
        g_resume_sz[g_nresume] = tpio_get_write_buffer_size(p->t);
    g_nresume++;
    th_proto_ops.resume_writing(bp);
    if (g_refills > 0) {
        g_refills--;
        /* asyncio: resume_writing may append to the buffer */
        write_pattern(g_pr, 200000);
    }
}

static tpio_protocol_ops_t g_flow_ops;
static const tpio_protocol_ops_t *flow_ops(void)
{
    g_flow_ops = th_proto_ops;
    g_flow_ops.pause_writing = rec_pause;
    g_flow_ops.resume_writing = rec_resume;
    return &g_flow_ops;
}

static pair_t *flow_pair(void)
{
    pair_t *pr = tcp_pair(flow_ops(), NULL);
    g_pr = pr;
    shrink_bufs(pr);
    return pr;
}

/* The peer reads the pattern until it has everything written so far
 * (pr->wtotal is re-read: callbacks may write more meanwhile). */
static size_t g_peer_got; /* bytes the peer has read so far */
static void peer_drain_live(pair_t *pr)
{
    static unsigned char buf[65536];
    double end = now_s() + 20;
    while (g_peer_got < pr->wtotal && now_s() < end) {
        ssize_t r = recv(pr->peer, buf, sizeof buf, 0);
        if (r > 0) {
            for (ssize_t i = 0; i < r; i++)
                cr_assert_eq(buf[i], pat(g_peer_got + (size_t)i), "byte %zu differs",
                             g_peer_got + (size_t)i);
            g_peer_got += (size_t)r;
        } else if (r == 0) {
            cr_assert_fail("unexpected EOF after %zu of %zu bytes", g_peer_got, pr->wtotal);
        } else if (errno == EAGAIN || errno == EINTR) {
            tpio_loop_run_once(pr->loop, 2);
        } else {
            cr_assert_fail("peer recv: %s", strerror(errno));
        }
    }
    cr_assert_eq(g_peer_got, pr->wtotal, "peer got %zu of %zu", g_peer_got, pr->wtotal);
    /* everything arrived, so the transport's buffer is empty */
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), 0);
}

static void limits_are(tpio_transport_t *t, size_t low, size_t high)
{
    size_t l = 77, h = 77;
    cr_assert_eq(tpio_get_write_buffer_limits(t, &l, &h), 0);
    cr_assert_eq(l, low, "low %zu, expected %zu", l, low);
    cr_assert_eq(h, high, "high %zu, expected %zu", h, high);
}

static void close_and_finish(pair_t *pr, const char *events)
{
    cr_assert_eq(tpio_close(pr->t), 0);
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TMO));
    cr_assert_str_eq(pr->p->events, events);
    pair_finish(pr);
}

#define D TPIO_LIMIT_DEFAULT

/* ===================================================================== */

Test(flow, limits_defaults_and_derivation, .timeout = 20)
{
    pair_t *pr = tcp_pair(NULL, NULL);
    tpio_transport_t *t = pr->t;
    limits_are(t, 16384, 65536);
    cr_assert_eq(tpio_get_write_buffer_size(t), 0);

    cr_assert_eq(tpio_set_write_buffer_limits(t, 1000, D), 0);
    limits_are(t, 250, 1000);
    cr_assert_eq(tpio_set_write_buffer_limits(t, D, 1000), 0);
    limits_are(t, 1000, 4000);
    cr_assert_eq(tpio_set_write_buffer_limits(t, D, D), 0);
    limits_are(t, 16384, 65536);
    cr_assert_eq(tpio_set_write_buffer_limits(t, 3, D), 0);
    limits_are(t, 0, 3);
    cr_assert_eq(tpio_set_write_buffer_limits(t, 10, 10), 0);
    limits_are(t, 10, 10);
    cr_assert_eq(tpio_set_write_buffer_limits(t, 50, 0), 0);
    limits_are(t, 0, 50);
    cr_assert_eq(tpio_set_write_buffer_limits(t, D, 20000), 0);
    limits_are(t, 20000, 80000);

    /* errors leave the limits unchanged */
    cr_assert_eq(tpio_set_write_buffer_limits(t, 100, 200), -EINVAL);
    limits_are(t, 20000, 80000);
    cr_assert_eq(tpio_set_write_buffer_limits(t, -5, D), -EINVAL);
    limits_are(t, 20000, 80000);
    cr_assert_eq(tpio_set_write_buffer_limits(t, D, -2), -EINVAL);
    limits_are(t, 20000, 80000);
    cr_assert_eq(tpio_set_write_buffer_limits(t, -7, 3), -EINVAL);
    limits_are(t, 20000, 80000);
    /* low given alone above the old high is fine: high = 4 * low */
    cr_assert_eq(tpio_set_write_buffer_limits(t, D, 70000), 0);
    limits_are(t, 70000, 280000);
    cr_assert_eq(tpio_set_write_buffer_limits(NULL, 1, 1), -EINVAL);
    size_t l, h;
    cr_assert_eq(tpio_get_write_buffer_limits(NULL, &l, &h), -EINVAL);

    cr_assert_eq(tpio_set_write_buffer_limits(t, 0, D), 0);
    limits_are(t, 0, 0);
    cr_assert_eq(tpio_set_write_buffer_limits(t, D, 0), 0);
    limits_are(t, 0, 0);
    /* nothing buffered: high 0 alone does not pause */
    cr_assert_str_eq(pr->p->events, "made");
    close_and_finish(pr, "made,lost:0");
}

Test(flow, high_zero_pauses_whenever_anything_is_buffered, .timeout = 30)
{
    pair_t *pr = flow_pair();
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, 0, D), 0);
    limits_are(pr->t, 0, 0);
    /* sent at once: nothing buffered, no pause */
    write_pattern(pr, 1);
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), 0);
    cr_assert_str_eq(pr->p->events, "made");
    /* the first write that leaves anything buffered pauses, inside write */
    fill_until_buffered(pr);
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_eq(g_npause, 1);
    cr_assert_eq(g_pause_sz[0], tpio_get_write_buffer_size(pr->t));
    write_pattern(pr, 100);
    write_pattern(pr, 5000);
    cr_assert_eq(g_npause, 1);
    peer_drain_live(pr);
    cr_assert_str_eq(pr->p->events, "made,pause,resume");
    cr_assert_eq(g_nresume, 1);
    cr_assert_eq(g_resume_sz[0], 0); /* low 0: only once empty */
    close_and_finish(pr, "made,pause,resume,lost:0");
}

Test(flow, pause_only_strictly_above_high, .timeout = 30)
{
    pair_t *pr = flow_pair();
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)64 << 20, D), 0);
    fill_until_buffered(pr);
    size_t b0 = tpio_get_write_buffer_size(pr->t);
    cr_assert_gt(b0, 0);
    size_t high = b0 + 100;
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)high, D), 0);
    limits_are(pr->t, high / 4, high);
    cr_assert_str_eq(pr->p->events, "made");
    /* buffered: the write is appended whole */
    write_pattern(pr, 100);
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), high);
    cr_assert_str_eq(pr->p->events, "made", "paused at exactly the high watermark");
    write_pattern(pr, 1);
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_eq(g_npause, 1);
    cr_assert_eq(g_pause_sz[0], high + 1);
    write_pattern(pr, 1000);
    cr_assert_eq(g_npause, 1);
    peer_drain_live(pr);
    cr_assert_str_eq(pr->p->events, "made,pause,resume");
    cr_assert_eq(g_nresume, 1);
    cr_assert_leq(g_resume_sz[0], high / 4);
    close_and_finish(pr, "made,pause,resume,lost:0");
}

Test(flow, set_limits_can_pause_at_once, .timeout = 30)
{
    pair_t *pr = flow_pair();
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)64 << 20, D), 0);
    fill_until_buffered(pr);
    size_t b0 = tpio_get_write_buffer_size(pr->t);
    cr_assert_gt(b0, 0);
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)b0, D), 0);
    cr_assert_str_eq(pr->p->events, "made");
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)b0 - 1, D), 0);
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_eq(g_pause_sz[0], b0);
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)b0 - 1, D), 0);
    write_pattern(pr, 10);
    cr_assert_eq(g_npause, 1);
    peer_drain_live(pr);
    cr_assert_str_eq(pr->p->events, "made,pause,resume");
    cr_assert_leq(g_resume_sz[0], (b0 - 1) / 4);
    close_and_finish(pr, "made,pause,resume,lost:0");
}

Test(flow, low_zero_resumes_only_when_empty, .timeout = 30)
{
    pair_t *pr = flow_pair();
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, 1024, 0), 0);
    limits_are(pr->t, 0, 1024);
    fill_until_buffered(pr);
    write_pattern(pr, 2048);
    cr_assert_gt(tpio_get_write_buffer_size(pr->t), 1024);
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_gt(g_pause_sz[0], 1024);
    peer_drain_live(pr);
    cr_assert_str_eq(pr->p->events, "made,pause,resume");
    cr_assert_eq(g_nresume, 1);
    cr_assert_eq(g_resume_sz[0], 0);
    close_and_finish(pr, "made,pause,resume,lost:0");
}

Test(flow, writelines_pauses_too, .timeout = 30)
{
    pair_t *pr = flow_pair();
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)64 << 20, D), 0);
    fill_until_buffered(pr);
    size_t b0 = tpio_get_write_buffer_size(pr->t);
    size_t high = b0 + 10;
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, (ssize_t)high, D), 0);
    unsigned char src[12];
    for (size_t i = 0; i < 12; i++)
        src[i] = pat(pr->wtotal + i);
    struct iovec a[3] = {{src, 3}, {src + 3, 0}, {src + 3, 7}};
    cr_assert_eq(tpio_writelines(pr->t, a, 3), 0);
    pr->wtotal += 10;
    cr_assert_eq(tpio_get_write_buffer_size(pr->t), high);
    cr_assert_str_eq(pr->p->events, "made");
    struct iovec b[2] = {{src + 10, 1}, {src + 11, 1}};
    cr_assert_eq(tpio_writelines(pr->t, b, 2), 0);
    pr->wtotal += 2;
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_eq(g_pause_sz[0], high + 2);
    peer_drain_live(pr);
    cr_assert_str_eq(pr->p->events, "made,pause,resume");
    cr_assert_leq(g_resume_sz[0], high / 4);
    close_and_finish(pr, "made,pause,resume,lost:0");
}

Test(flow, writelines_into_empty_buffer_pauses, .timeout = 30)
{
    /* writelines with nothing buffered: what the kernel does not take is
     * buffered, and that may go above high at once */
    pair_t *pr = flow_pair();
    cr_assert_eq(tpio_set_write_buffer_limits(pr->t, 1000, D), 0);
    enum { N = 64, PIECE = 8192 };
    unsigned char *src = malloc((size_t)N * PIECE);
    struct iovec iov[N];
    for (size_t i = 0; i < (size_t)N * PIECE; i++)
        src[i] = pat(i);
    for (int i = 0; i < N; i++)
        iov[i] = (struct iovec){src + (size_t)i * PIECE, PIECE};
    cr_assert_eq(tpio_writelines(pr->t, iov, N), 0);
    pr->wtotal = (size_t)N * PIECE;
    free(src);
    cr_assert_gt(tpio_get_write_buffer_size(pr->t), 1000, "512 KiB went into 4 KiB buffers?");
    cr_assert_str_eq(pr->p->events, "made,pause");
    peer_drain_live(pr);
    cr_assert_str_eq(pr->p->events, "made,pause,resume");
    cr_assert_leq(g_resume_sz[0], 250);
    close_and_finish(pr, "made,pause,resume,lost:0");
}

Test(flow, repeated_cycles, .timeout = 40)
{
    pair_t *pr = flow_pair();
    limits_are(pr->t, 16384, 65536);
    for (int cycle = 0; cycle < 3; cycle++) {
        fill_until_buffered(pr);
        write_pattern(pr, 70000);
        cr_assert_gt(tpio_get_write_buffer_size(pr->t), 65536);
        cr_assert_eq(g_npause, (size_t)cycle + 1);
        write_pattern(pr, 1000);
        cr_assert_eq(g_npause, (size_t)cycle + 1);
        peer_drain_live(pr);
        cr_assert_eq(g_nresume, (size_t)cycle + 1);
        cr_assert_leq(g_resume_sz[cycle], 16384);
        cr_assert_gt(g_pause_sz[cycle], 65536);
    }
    cr_assert_str_eq(pr->p->events, "made,pause,resume,pause,resume,pause,resume");
    close_and_finish(pr, "made,pause,resume,pause,resume,pause,resume,lost:0");
}

Test(flow, resume_writing_may_write_again, .timeout = 40)
{
    pair_t *pr = flow_pair();
    g_refills = 2;
    fill_until_buffered(pr);
    write_pattern(pr, 200000);
    cr_assert_str_eq(pr->p->events, "made,pause");
    peer_drain_live(pr);
    cr_assert_eq(g_refills, 0);
    cr_assert_str_eq(pr->p->events, "made,pause,resume,pause,resume,pause,resume");
    cr_assert_eq(g_npause, 3);
    cr_assert_eq(g_nresume, 3);
    close_and_finish(pr, "made,pause,resume,pause,resume,pause,resume,lost:0");
}

Test(flow, close_while_paused_resumes_then_lost, .timeout = 30)
{
    /* asyncio's _write_ready calls resume_writing as the buffer drains,
     * before connection_lost, also on a closing transport */
    pair_t *pr = flow_pair();
    fill_until_buffered(pr);
    write_pattern(pr, 100000);
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_eq(tpio_close(pr->t), 0);
    cr_assert_str_eq(pr->p->events, "made,pause");
    int end;
    size_t got = peer_drain_pattern(pr, 0, pr->wtotal, true, &end);
    cr_assert_eq(end, 0);
    cr_assert_eq(got, pr->wtotal);
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TMO));
    cr_assert_str_eq(pr->p->events, "made,pause,resume,lost:0");
    pair_finish(pr);
}

Test(flow, abort_while_paused_no_resume, .timeout = 30)
{
    pair_t *pr = flow_pair();
    fill_until_buffered(pr);
    write_pattern(pr, 100000);
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_eq(tpio_abort(pr->t), 0);
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TMO));
    run_iters(pr->loop, 3);
    cr_assert_str_eq(pr->p->events, "made,pause,lost:0");
    cr_assert_eq(g_nresume, 0);
    pair_finish(pr);
}
