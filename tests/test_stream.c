/*
 * Stream transports (TCP and Unix sockets): the callback state machine,
 * close/abort, eof handling, write/writelines, write_eof, peer reset,
 * pause/resume reading, get_extra_info, set_protocol and BufferedProtocol.
 *
 * What TCP and Unix sockets share is written once (TestBothKinds) and runs
 * on each kind of helpers' th_kinds table, as stream::<name>_tcp and
 * stream::<name>_unix: a TCP client transport made by create_connection, and
 * one end of a Unix socketpair wrapped by connect_accepted_socket. What is
 * particular to a kind (peer reset, TCP_NODELAY, data already waiting when
 * the transport is made) stays a plain Test().
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

/* Each test gets th_fx.loop; th_fx_fini finishes the pair a test made (waits
 * for its connection_lost, closes the peer), checks that no error was
 * reported and closes the loop. */
TestSuite(stream, .init = th_fx_init, .fini = th_fx_fini);

/* ===================================================================== */
/* Lifecycle                                                             */
/* ===================================================================== */

/* Make the transport buffer: small kernel buffers, a high watermark out of
 * the way, the pattern written until some of it stays in the transport (the
 * loop does not run meanwhile, so nothing drains). */
static void fill_buffer(th_pair_t *pr)
{
    th_shrink_bufs(pr);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, (ssize_t)64 << 20,
                                                        TPIO_LIMIT_DEFAULT), 0);
    th_fill_until_buffered(pr);
}

/* The peer shuts its write side: eof_received (false) makes the transport
 * close itself, and p's events up to connection_lost are these. */
static void peer_eof_ends(th_pair_t *pr, th_proto_t *p, const char *events)
{
    cr_assert_eq(shutdown(pr->peer, SHUT_WR), 0);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, events);
}

TestBothKinds(stream, lifecycle_data_then_eof, .timeout = 20)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    th_proto_t *p = pr->p;
    cr_assert_str_eq(p->events, "made");
    cr_assert_eq(p->t, pr->t);
    cr_assert_eq(th_protocol(pr->t), &p->base);
    cr_assert_eq(th_kind(pr->t), K->kind);
    cr_assert_eq(th_transport_loop(pr->t), pr->loop);
    cr_assert(!th_is_closing(pr->t));
    cr_assert(th_is_reading(pr->t));
    cr_assert_eq(th_wbuf_size(pr->t), 0);

    th_peer_send(pr, "hello", 5);
    cr_assert(th_pair_run_until_rx(pr, p, 5));
    cr_assert_str_eq(p->events, "made,data");
    cr_assert_eq(p->rxlen, 5);
    cr_assert_eq(memcmp(p->rx, "hello", 5), 0);

    peer_eof_ends(pr, p, "made,data,eof,lost:0");
    cr_assert_eq(p->lost_err, 0);
    /* the transport closed itself: the peer sees EOF */
    cr_assert_eq(th_peer_expect_eof(pr), 0);
    cr_assert_eq(pr->cb_calls, 1);
}

Test(stream, accepted_socket_made_on_loop_before_data, .timeout = 20)
{
    /* data and EOF are already waiting when the transport is created */
    th_pair_t *pr = th_unix_pair(NULL, NULL, "abc", 3, true);
    th_proto_t *p = pr->p;
    cr_assert_eq(th_kind(pr->t), TPIO_TRANSPORT_UNIX);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(pr->events_at_cb, "made");
    cr_assert_str_eq(p->events, "made,data,eof,lost:0");
    cr_assert_eq(p->rxlen, 3);
    cr_assert_eq(memcmp(p->rx, "abc", 3), 0);
    cr_assert_eq(pr->cb_calls, 1);
}

TestBothKinds(stream, close_without_buffer_schedules_lost, .timeout = 20)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    th_proto_t *p = pr->p;
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    cr_assert_str_eq(p->events, "made", "connection_lost ran inside tpio_transport_close");
    cr_assert(!p->lost);
    cr_assert(th_is_closing(pr->t));
    cr_assert(!th_is_reading(pr->t));
    cr_assert_eq(tpio_transport_close(pr->t), 0);          /* idempotent */
    cr_assert_eq(tpio_transport_write(pr->t, "x", 1), 0);  /* dropped */
    cr_assert_eq(th_wbuf_size(pr->t), 0);
    cr_assert_str_eq(p->events, "made");
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,lost:0");
    cr_assert_eq(p->lost_err, 0);
    /* the dropped "x" never arrives */
    cr_assert_eq(th_peer_expect_eof(pr), 0);
}

TestBothKinds(stream, close_flushes_buffer_before_lost, .timeout = 30)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    th_proto_t *p = pr->p;
    fill_buffer(pr);
    size_t buffered = th_wbuf_size(pr->t);
    cr_assert_gt(buffered, 0);

    cr_assert_eq(tpio_transport_close(pr->t), 0);
    cr_assert(th_is_closing(pr->t));
    cr_assert(!th_is_reading(pr->t));
    cr_assert_eq(tpio_transport_write(pr->t, "zzz", 3), 0); /* dropped after close */
    cr_assert_eq(th_wbuf_size(pr->t), buffered);
    /* the peer does not read: the buffer cannot drain, no connection_lost */
    th_run_iters(pr->loop, 10);
    cr_assert_str_eq(p->events, "made");
    cr_assert(!p->lost);

    int end;
    size_t got = th_peer_drain_pattern(pr, 0, pr->wtotal, true, &end);
    cr_assert_eq(end, 0, "peer ended with %d", end);
    cr_assert_eq(got, pr->wtotal, "peer got %zu of %zu bytes", got, pr->wtotal);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,lost:0");
}

TestBothKinds(stream, abort_drops_buffer, .timeout = 30)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    th_proto_t *p = pr->p;
    size_t lost_count = 0;
    p->lost_counter = &lost_count;
    fill_buffer(pr);
    size_t buffered = th_wbuf_size(pr->t);
    cr_assert_gt(buffered, 0);
    size_t in_kernel = pr->wtotal - buffered;

    cr_assert_eq(tpio_transport_abort(pr->t), 0);
    cr_assert_str_eq(p->events, "made", "connection_lost ran inside tpio_transport_abort");
    cr_assert(th_is_closing(pr->t));
    cr_assert(!th_is_reading(pr->t));
    cr_assert_eq(tpio_transport_abort(pr->t), 0);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    cr_assert_eq(tpio_transport_write(pr->t, "zzz", 3), 0);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,lost:0");
    cr_assert_eq(p->lost_err, 0);
    cr_assert_eq(lost_count, 1);

    /* only what the kernel had already taken arrives, then EOF */
    int end;
    size_t got = th_peer_drain_pattern(pr, 0, in_kernel, true, &end);
    cr_assert_eq(end, 0, "peer ended with %d", end);
    cr_assert_eq(got, in_kernel, "peer got %zu bytes, kernel had %zu (buffered %zu)", got,
                 in_kernel, buffered);
}

TestBothKinds(stream, close_then_abort_while_flushing_one_lost, .timeout = 30)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    th_proto_t *p = pr->p;
    size_t lost_count = 0;
    p->lost_counter = &lost_count;
    fill_buffer(pr);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_run_iters(pr->loop, 3);
    cr_assert(!p->lost);
    /* the peer is not reading: abort must end it without waiting for a flush */
    cr_assert_eq(tpio_transport_abort(pr->t), 0);
    cr_assert_str_eq(p->events, "made");
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    th_run_iters(pr->loop, 3);
    cr_assert_str_eq(p->events, "made,lost:0");
    cr_assert_eq(lost_count, 1);
}

TestBothKinds(stream, close_inside_data_received, .timeout = 20)
{
    th_proto_t k = {0};
    k.close_on_data = true;
    th_pair_t *pr = K->pair(NULL, &k);
    th_proto_t *p = pr->p;
    th_peer_send(pr, "abc", 3);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,data,lost:0");
    cr_assert_eq(p->rxlen, 3);
    cr_assert_eq(th_peer_expect_eof(pr), 0);
}

TestBothKinds(stream, eof_received_true_keeps_half_open, .timeout = 20)
{
    th_proto_t k = {0};
    k.eof_ret = true;
    th_pair_t *pr = K->pair(NULL, &k);
    th_proto_t *p = pr->p;
    th_peer_send(pr, "ping", 4);
    cr_assert_eq(shutdown(pr->peer, SHUT_WR), 0);
    cr_assert(th_run_until(pr->loop, &p->eof, TMO));
    th_run_iters(pr->loop, 5);
    cr_assert_str_eq(p->events, "made,data,eof");
    cr_assert(!p->lost);
    cr_assert(!th_is_closing(pr->t));
    cr_assert_eq(tpio_transport_write(pr->t, "pong", 4), 0);
    char buf[8] = {0};
    cr_assert_eq(th_peer_recv_exact(pr, buf, 4), 4);
    cr_assert_eq(memcmp(buf, "pong", 4), 0);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    cr_assert_str_eq(p->events, "made,data,eof");
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,data,eof,lost:0");
    cr_assert_eq(th_peer_expect_eof(pr), 0);
}

/* ===================================================================== */
/* write_eof                                                             */
/* ===================================================================== */

TestBothKinds(stream, write_eof_half_close, .timeout = 20)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    th_proto_t *p = pr->p;
    cr_assert(th_can_write_eof(pr->t));
    cr_assert_eq(tpio_transport_write(pr->t, "abc", 3), 0);
    cr_assert_eq(tpio_transport_write_eof(pr->t), 0);
    cr_assert_eq(tpio_transport_write_eof(pr->t), 0); /* idempotent */
    cr_assert_eq(tpio_transport_write(pr->t, "x", 1), -ESHUTDOWN);
    cr_assert(!th_is_closing(pr->t));
    char buf[8] = {0};
    cr_assert_eq(th_peer_recv_exact(pr, buf, 3), 3);
    cr_assert_eq(memcmp(buf, "abc", 3), 0);
    cr_assert_eq(th_peer_expect_eof(pr), 0);
    /* the other direction still works */
    th_peer_send(pr, "xyz", 3);
    cr_assert(th_pair_run_until_rx(pr, p, 3));
    cr_assert_eq(memcmp(p->rx, "xyz", 3), 0);
    cr_assert_str_eq(p->events, "made,data");
    peer_eof_ends(pr, p, "made,data,eof,lost:0");
}

TestBothKinds(stream, write_eof_waits_for_buffer_flush, .timeout = 30)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    th_proto_t *p = pr->p;
    fill_buffer(pr);
    cr_assert_eq(tpio_transport_write_eof(pr->t), 0);
    cr_assert_eq(tpio_transport_write(pr->t, "x", 1), -ESHUTDOWN);
    int end;
    size_t got = th_peer_drain_pattern(pr, 0, pr->wtotal, true, &end);
    cr_assert_eq(end, 0, "peer ended with %d", end);
    cr_assert_eq(got, pr->wtotal);
    cr_assert_str_eq(p->events, "made");
    th_peer_send(pr, "q", 1);
    cr_assert(th_pair_run_until_rx(pr, p, 1));
    peer_eof_ends(pr, p, "made,data,eof,lost:0");
    cr_assert_eq(p->rx[0], 'q');
}

/* ===================================================================== */
/* write / writelines                                                    */
/* ===================================================================== */

TestBothKinds(stream, small_write_sent_at_once, .timeout = 20)
{
    th_ring_batch(); /* the ring's branch below: its way */
    th_pair_t *pr = K->pair(NULL, NULL);
    char buf[6] = "hello";
    cr_assert_eq(tpio_transport_write(pr->t, buf, 5), 0);
    if (th_ring_ops(pr->loop)) {
        /* io_uring: copied, and sent with the loop's next submission */
        cr_assert_eq(th_wbuf_size(pr->t), 5);
        memset(buf, 'X', sizeof buf);
        struct pollfd pf = {.fd = pr->peer, .events = POLLIN};
        cr_assert_eq(poll(&pf, 1, 0), 0, "sent before the loop ran");
        tpio_loop_run_once(pr->loop, 0);
    }
    cr_assert_eq(th_wbuf_size(pr->t), 0);
    memset(buf, 'X', sizeof buf);
    /* sent inside tpio_transport_write: the peer gets it without the loop running */
    struct pollfd pf = {.fd = pr->peer, .events = POLLIN};
    cr_assert_eq(poll(&pf, 1, 5000), 1);
    char rb[8] = {0};
    cr_assert_eq(recv(pr->peer, rb, sizeof rb, 0), 5);
    cr_assert_str_eq(rb, "hello");
    cr_assert_eq(tpio_transport_close(pr->t), 0);
}

TestBothKinds(stream, buffered_write_copies_caller_data, .timeout = 30)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    fill_buffer(pr);
    size_t b0 = th_wbuf_size(pr->t);
    /* with something buffered, the whole write is buffered (appended) */
    th_write_pattern(pr, 1000);
    cr_assert_eq(th_wbuf_size(pr->t), b0 + 1000);
    th_write_pattern(pr, 1);
    cr_assert_eq(th_wbuf_size(pr->t), b0 + 1001);
    int end;
    size_t got = th_peer_drain_pattern(pr, 0, pr->wtotal, false, &end);
    cr_assert_eq(got, pr->wtotal);
    cr_assert_eq(th_wbuf_size(pr->t), 0);
    cr_assert_str_eq(pr->p->events, "made");
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    cr_assert_eq(th_peer_expect_eof(pr), 0);
}

TestBothKinds(stream, write_bad_and_empty_args, .timeout = 20)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    cr_assert_eq(tpio_transport_write(pr->t, NULL, 5), -EINVAL);
    cr_assert_eq(tpio_transport_write(pr->t, "abc", 0), 0);
    cr_assert_eq(tpio_transport_write(pr->t, NULL, 0), 0);
    cr_assert_eq(tpio_transport_write(NULL, "abc", 3), -EINVAL);
    tpio_buf_t bad = {.base = NULL, .len = 3};
    cr_assert_eq(tpio_transport_writelines(pr->t, &bad, 1), -EINVAL);
    cr_assert_eq(tpio_transport_writelines(pr->t, NULL, 2), -EINVAL);
    tpio_buf_t empty[2] = {{.base = "a", .len = 0}, {.base = "b", .len = 0}};
    cr_assert_eq(tpio_transport_writelines(pr->t, empty, 2), 0);
    cr_assert_eq(tpio_transport_writelines(pr->t, empty, 0), 0);
    cr_assert_eq(th_wbuf_size(pr->t), 0);
    cr_assert_eq(tpio_transport_close(NULL), -EINVAL);
    cr_assert_eq(tpio_transport_abort(NULL), -EINVAL);
    cr_assert(!th_is_closing(pr->t));
    /* nothing of the above reached the peer */
    cr_assert_eq(tpio_transport_write(pr->t, "ok", 2), 0);
    char buf[8] = {0};
    cr_assert_eq(th_peer_recv_exact(pr, buf, 2), 2);
    cr_assert_str_eq(buf, "ok");
    cr_assert_str_eq(pr->p->events, "made");
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    cr_assert_eq(th_peer_expect_eof(pr), 0);
}

TestBothKinds(stream, writelines_concatenates, .timeout = 20)
{
    th_ring_batch(); /* the ring's branch below: its way */
    th_pair_t *pr = K->pair(NULL, NULL);
    tpio_buf_t iov[4] = {
        {.base = "ab", .len = 2},
        {.base = "", .len = 0},
        {.base = "cdef", .len = 4},
        {.base = "g", .len = 1},
    };
    cr_assert_eq(tpio_transport_writelines(pr->t, iov, 4), 0);
    if (th_ring_ops(pr->loop)) { /* one copy, one send from the loop */
        cr_assert_eq(th_wbuf_size(pr->t), 7);
        tpio_loop_run_once(pr->loop, 0);
    }
    cr_assert_eq(th_wbuf_size(pr->t), 0);
    char buf[8] = {0};
    cr_assert_eq(th_peer_recv_exact(pr, buf, 7), 7);
    cr_assert_str_eq(buf, "abcdefg");
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    cr_assert_eq(th_peer_expect_eof(pr), 0);
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TMO));
    cr_assert_str_eq(pr->p->events, "made,lost:0");
}

/* Build n scattered pieces of the pattern stream starting at offset off; the
 * source memory has garbage gaps between pieces so nothing is contiguous. */
static unsigned char *scatter(tpio_buf_t *iov, int n, size_t off, size_t *total)
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
            src[pos + j] = th_pat(off + t + j);
        iov[i].base = src + pos;
        iov[i].len = len;
        pos += len + 3;
        t += len;
    }
    *total = t;
    return src;
}

TestBothKinds(stream, writelines_more_than_iov_max, .timeout = 30)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    enum { N = 3000 };
    tpio_buf_t *iov = calloc(N, sizeof *iov);
    size_t total;
    unsigned char *src = scatter(iov, N, 0, &total);
    cr_assert_eq(tpio_transport_writelines(pr->t, iov, N), 0);
    memset(src, 0, total); /* ours again */
    pr->wtotal = total;
    free(src);

    /* and once more while data is buffered */
    fill_buffer(pr);
    size_t b0 = th_wbuf_size(pr->t);
    enum { M = 5000 };
    tpio_buf_t *iov2 = calloc(M, sizeof *iov2);
    size_t total2;
    unsigned char *src2 = scatter(iov2, M, pr->wtotal, &total2);
    cr_assert_eq(tpio_transport_writelines(pr->t, iov2, M), 0);
    memset(src2, 0, total2);
    free(src2);
    cr_assert_eq(th_wbuf_size(pr->t), b0 + total2);
    pr->wtotal += total2;

    int end;
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    size_t got = th_peer_drain_pattern(pr, 0, pr->wtotal, true, &end);
    cr_assert_eq(end, 0);
    cr_assert_eq(got, pr->wtotal, "got %zu of %zu", got, pr->wtotal);
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TMO));
    cr_assert_str_eq(pr->p->events, "made,lost:0");
    free(iov);
    free(iov2);
}

/* ===================================================================== */
/* Peer reset                                                            */
/* ===================================================================== */

static void peer_reset(th_pair_t *pr)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    cr_assert_eq(setsockopt(pr->peer, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(pr->peer);
    pr->peer = -1;
}

Test(stream, peer_reset_while_idle, .timeout = 20)
{
    th_pair_t *pr = th_tcp_pair(NULL, NULL);
    th_proto_t *p = pr->p;
    peer_reset(pr);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,lost:ECONNRESET");
    cr_assert_eq(p->lost_err, -ECONNRESET);
}

Test(stream, peer_reset_while_writing, .timeout = 30)
{
    th_pair_t *pr = th_tcp_pair(NULL, NULL);
    th_proto_t *p = pr->p;
    fill_buffer(pr);
    peer_reset(pr);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert(strcmp(p->events, "made,lost:ECONNRESET") == 0 ||
                  strcmp(p->events, "made,lost:EPIPE") == 0,
              "events: %s", p->events);
    cr_assert(p->lost_err == -ECONNRESET || p->lost_err == -EPIPE);
}

/* ===================================================================== */
/* pause_reading / resume_reading                                        */
/* ===================================================================== */

TestBothKinds(stream, pause_resume_reading, .timeout = 20)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    th_proto_t *p = pr->p;
    cr_assert(th_is_reading(pr->t));
    cr_assert_eq(tpio_transport_pause_reading(pr->t), 0);
    cr_assert(!th_is_reading(pr->t));
    cr_assert_eq(tpio_transport_pause_reading(pr->t), 0);
    cr_assert(!th_is_reading(pr->t));
    th_peer_send(pr, "abc", 3);
    th_run_iters(pr->loop, 20);
    cr_assert_str_eq(p->events, "made");
    cr_assert_eq(p->rxlen, 0);
    cr_assert_eq(tpio_transport_resume_reading(pr->t), 0);
    cr_assert(th_is_reading(pr->t));
    cr_assert_eq(tpio_transport_resume_reading(pr->t), 0);
    cr_assert(th_is_reading(pr->t));
    cr_assert(th_pair_run_until_rx(pr, p, 3));
    cr_assert_str_eq(p->events, "made,data");
    cr_assert_eq(memcmp(p->rx, "abc", 3), 0);

    /* paused: neither data nor EOF is delivered */
    cr_assert_eq(tpio_transport_pause_reading(pr->t), 0);
    th_peer_send(pr, "de", 2);
    cr_assert_eq(shutdown(pr->peer, SHUT_WR), 0);
    th_run_iters(pr->loop, 20);
    cr_assert_str_eq(p->events, "made,data");
    cr_assert_eq(p->rxlen, 3);
    cr_assert(!th_is_closing(pr->t));
    cr_assert_eq(tpio_transport_resume_reading(pr->t), 0);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,data,eof,lost:0");
    cr_assert_eq(p->rxlen, 5);
    cr_assert_eq(memcmp(p->rx, "abcde", 5), 0);
}

Test(stream, pause_reading_inside_connection_made, .timeout = 20)
{
    th_proto_t k = {0};
    k.pause_in_made = true;
    th_pair_t *pr = th_unix_pair(NULL, &k, "early", 5, false);
    th_proto_t *p = pr->p;
    th_run_iters(pr->loop, 20);
    cr_assert_str_eq(p->events, "made");
    cr_assert_eq(p->rxlen, 0);
    cr_assert(!th_is_reading(pr->t));
    cr_assert_eq(tpio_transport_resume_reading(pr->t), 0);
    cr_assert(th_is_reading(pr->t));
    cr_assert(th_pair_run_until_rx(pr, p, 5));
    cr_assert_eq(memcmp(p->rx, "early", 5), 0);
    cr_assert_str_eq(p->events, "made,data");
    peer_eof_ends(pr, p, "made,data,eof,lost:0");
}

TestBothKinds(stream, pause_resume_reading_on_closing_transport, .timeout = 20)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    th_proto_t *p = pr->p;
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    cr_assert(!th_is_reading(pr->t));
    cr_assert_eq(tpio_transport_pause_reading(pr->t), 0);
    cr_assert(!th_is_reading(pr->t));
    cr_assert_eq(tpio_transport_resume_reading(pr->t), 0);
    cr_assert(!th_is_reading(pr->t));
    cr_assert(th_is_closing(pr->t));
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,lost:0");
}

/* ===================================================================== */
/* get_extra_info                                                        */
/* ===================================================================== */

/* "socket", "peername" and "sockname" as the descriptor says; absent keys. */
static void check_extra_info(tpio_transport_t *t)
{
    int fd = th_fd(t);
    cr_assert_geq(fd, 0);
    tpio_extra_t x;
    memset(&x, 0x5a, sizeof x);
    cr_assert_eq(tpio_transport_get_extra_info(t, "socket", &x), 0);
    cr_assert_eq(x.type, TPIO_EXTRA_FD);
    cr_assert_eq(x.fd, fd);

    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(getpeername(fd, (struct sockaddr *)&ss, &sl), 0);
    memset(&x, 0, sizeof x);
    cr_assert_eq(tpio_transport_get_extra_info(t, "peername", &x), 0);
    cr_assert_eq(x.type, TPIO_EXTRA_ADDR);
    cr_assert_not_null(x.addr);
    cr_assert(th_same_addr(x.addr, x.addrlen, (struct sockaddr *)&ss, sl));
    struct sockaddr_storage g;
    socklen_t gl = sizeof g;
    cr_assert_eq(tpio_transport_get_peername(t, &g, &gl), 0);
    cr_assert(th_same_addr((struct sockaddr *)&g, gl, (struct sockaddr *)&ss, sl));

    sl = sizeof ss;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
    memset(&x, 0, sizeof x);
    cr_assert_eq(tpio_transport_get_extra_info(t, "sockname", &x), 0);
    cr_assert_eq(x.type, TPIO_EXTRA_ADDR);
    cr_assert(th_same_addr(x.addr, x.addrlen, (struct sockaddr *)&ss, sl));
    gl = sizeof g;
    cr_assert_eq(tpio_transport_get_sockname(t, &g, &gl), 0);
    cr_assert(th_same_addr((struct sockaddr *)&g, gl, (struct sockaddr *)&ss, sl));

    x.type = TPIO_EXTRA_FD;
    cr_assert_eq(tpio_transport_get_extra_info(t, "no-such-key", &x), -ENOENT);
    cr_assert_eq(x.type, TPIO_EXTRA_NONE);
    x.type = TPIO_EXTRA_FD;
    cr_assert_eq(tpio_transport_get_extra_info(t, "sslcontext", &x), -ENOENT);
    cr_assert_eq(x.type, TPIO_EXTRA_NONE);
}

/* A TCP transport has TCP_NODELAY. */
static void check_tcp_nodelay(tpio_transport_t *t)
{
    int one = 0;
    socklen_t ol = sizeof one;
    cr_assert_eq(getsockopt(th_fd(t), IPPROTO_TCP, TCP_NODELAY, &one, &ol), 0);
    cr_assert_neq(one, 0, "TCP_NODELAY not set");
}

/* The peer's sockname is the transport's peername. */
static void check_peername_is_peer(th_pair_t *pr, tpio_extra_t *x, struct sockaddr_storage *ps)
{
    socklen_t pl = sizeof *ps;
    cr_assert_eq(getsockname(pr->peer, (struct sockaddr *)ps, &pl), 0);
    cr_assert_eq(tpio_transport_get_extra_info(pr->t, "peername", x), 0);
    cr_assert(th_same_addr(x->addr, x->addrlen, (struct sockaddr *)ps, pl));
}

TestBothKinds(stream, extra_info, .timeout = 20)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    check_extra_info(pr->t);
    tpio_extra_t x;
    struct sockaddr_storage ps;
    check_peername_is_peer(pr, &x, &ps);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
}

Test(stream, extra_info_tcp_client, .timeout = 20)
{
    th_pair_t *pr = th_tcp_pair(NULL, NULL);
    /* the rest of check_extra_info(): extra_info_tcp */
    check_tcp_nodelay(pr->t);
    tpio_extra_t x;
    struct sockaddr_storage ps;
    check_peername_is_peer(pr, &x, &ps);
    char want[64], got[64];
    snprintf(want, sizeof want, "('127.0.0.1', %u)",
             ntohs(((struct sockaddr_in *)&ps)->sin_port));
    cr_assert_eq(tpio_format_addr(x.addr, x.addrlen, got, sizeof got), 0);
    cr_assert_str_eq(got, want);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
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

Test(stream, extra_info_tcp_server_side, .timeout = 20)
{
    srv_ctx_t *c = calloc(1, sizeof *c);
    c->tmpl.base.ops = &th_proto_ops;
    tpio_server_opts_t so = {.size = sizeof so, .host = "127.0.0.1", .port = 0};
    tpio_server_t *s;
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, c, &so, &s), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, 0, &ss, &sl), 0);
    int cl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(cl, (struct sockaddr *)&ss, sl), 0);
    double end = th_now_s() + TMO;
    while ((!c->made || !c->made->made) && th_now_s() < end)
        tpio_loop_run_once(th_fx.loop, 0.01);
    cr_assert_not_null(c->made);
    th_proto_t *p = c->made;
    cr_assert_str_eq(p->events, "made");
    cr_assert_eq(th_kind(p->t), TPIO_TRANSPORT_TCP);
    check_extra_info(p->t);
    check_tcp_nodelay(p->t);
    struct sockaddr_storage cs;
    socklen_t csl = sizeof cs;
    cr_assert_eq(getsockname(cl, (struct sockaddr *)&cs, &csl), 0);
    tpio_extra_t x;
    cr_assert_eq(tpio_transport_get_extra_info(p->t, "peername", &x), 0);
    cr_assert(th_same_addr(x.addr, x.addrlen, (struct sockaddr *)&cs, csl));
    char want[64], got[64];
    snprintf(want, sizeof want, "('127.0.0.1', %u)",
             ntohs(((struct sockaddr_in *)&cs)->sin_port));
    cr_assert_eq(tpio_format_addr(x.addr, x.addrlen, got, sizeof got), 0);
    cr_assert_str_eq(got, want);

    close(cl);
    cr_assert(th_run_until(th_fx.loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,eof,lost:0");
    cr_assert_eq(c->calls, 1);
    cr_assert_eq(tpio_server_close(s), 0);
    cr_assert_eq(tpio_server_wait_closed(s, th_done_flag, &c->closed, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &c->closed, TMO));
    th_proto_free(p);
    free(c);
}

Test(stream, format_addr, .timeout = 10)
{
    char buf[128];
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(12345)};
    inet_pton(AF_INET, "127.0.0.1", &a4.sin_addr);
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&a4, sizeof a4, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "('127.0.0.1', 12345)");
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(8888)};
    inet_pton(AF_INET6, "::1", &a6.sin6_addr);
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&a6, sizeof a6, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "('::1', 8888, 0, 0)");
    struct sockaddr_un au = {.sun_family = AF_UNIX};
    strcpy(au.sun_path, "/tmp/tpio-x.sock");
    socklen_t ul = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(au.sun_path) + 1);
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&au, ul, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "/tmp/tpio-x.sock");
    /* truncated to buflen - 1, and said so */
    char small[5];
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&a4, sizeof a4, small, sizeof small),
                 -ENOSPC);
    cr_assert_str_eq(small, "('12");
    char exact[sizeof "('127.0.0.1', 12345)"];
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&a4, sizeof a4, exact, sizeof exact), 0);
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&a4, sizeof a4, exact, sizeof exact - 1),
                 -ENOSPC);
    /* an abstract name as Python prints its bytes, truncated the same way */
    struct sockaddr_un ab = {.sun_family = AF_UNIX};
    memcpy(ab.sun_path, "\0ab'c", 5);
    socklen_t al = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 5);
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&ab, al, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "b'\\x00ab\\x27c'");
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&ab, al, small, sizeof small), -ENOSPC);
    cr_assert_str_eq(small, "b'\\x");
    cr_assert_eq(tpio_format_addr(NULL, 0, buf, sizeof buf), -EINVAL);
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&a4, sizeof a4, NULL, 8), -EINVAL);
}

/* ===================================================================== */
/* set_protocol / get_protocol                                           */
/* ===================================================================== */

TestBothKinds(stream, set_protocol_switches_receiver, .timeout = 20)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    th_proto_t *p1 = pr->p;
    th_peer_send(pr, "one", 3);
    cr_assert(th_pair_run_until_rx(pr, p1, 3));
    th_proto_t *p2 = th_proto_new(&th_proto_ops);
    p2->t = pr->t;
    cr_assert_eq(tpio_transport_set_protocol(pr->t, NULL), -EINVAL);
    cr_assert_eq(th_protocol(pr->t), &p1->base);
    cr_assert_eq(tpio_transport_set_protocol(pr->t, &p2->base), 0);
    cr_assert_eq(th_protocol(pr->t), &p2->base);
    th_peer_send(pr, "two", 3);
    cr_assert(th_pair_run_until_rx(pr, p2, 3));
    cr_assert_eq(memcmp(p2->rx, "two", 3), 0);
    cr_assert_str_eq(p2->events, "data");
    cr_assert_str_eq(p1->events, "made,data");
    cr_assert_eq(p1->rxlen, 3);
    peer_eof_ends(pr, p2, "data,eof,lost:0");
    cr_assert_str_eq(p1->events, "made,data");
    /* fini finishes the pair on pr->p: point it at the protocol that got lost */
    th_proto_free(p1);
    pr->p = p2;
}

/* BufferedProtocol events for one read: "getbuf,updated", possibly followed by
 * "getbuf" alone when the implementation reads until EAGAIN (the state
 * machine allows get_buffer without buffer_updated). */
static bool one_buffered_read(const char *ev)
{
    return strcmp(ev, "getbuf,updated") == 0 || strcmp(ev, "getbuf,updated,getbuf") == 0;
}

TestBothKinds(stream, set_protocol_between_protocol_and_buffered, .timeout = 20)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    th_proto_t *p1 = pr->p;
    th_peer_send(pr, "one", 3);
    cr_assert(th_pair_run_until_rx(pr, p1, 3));

    th_proto_t *p2 = th_proto_new(&th_buffered_proto_ops);
    p2->t = pr->t;
    cr_assert_eq(tpio_transport_set_protocol(pr->t, &p2->base), 0);
    th_peer_send(pr, "two", 3);
    cr_assert(th_pair_run_until_rx(pr, p2, 3));
    cr_assert_eq(p2->rxlen, 3);
    cr_assert_eq(memcmp(p2->rx, "two", 3), 0);
    cr_assert(one_buffered_read(p2->events), "p2 events: %s", p2->events);

    th_proto_t *p3 = th_proto_new(&th_proto_ops);
    p3->t = pr->t;
    cr_assert_eq(tpio_transport_set_protocol(pr->t, &p3->base), 0);
    cr_assert_eq(th_protocol(pr->t), &p3->base);
    char p2ev[64];
    snprintf(p2ev, sizeof p2ev, "%.60s", p2->events);
    th_peer_send(pr, "three", 5);
    cr_assert(th_pair_run_until_rx(pr, p3, 5));
    cr_assert_eq(memcmp(p3->rx, "three", 5), 0);
    cr_assert_str_eq(p3->events, "data");
    cr_assert_str_eq(p2->events, p2ev);
    cr_assert_eq(p2->rxlen, 3);
    cr_assert_str_eq(p1->events, "made,data");
    peer_eof_ends(pr, p3, "data,eof,lost:0");
    th_proto_free(p1);
    th_proto_free(p2);
    pr->p = p3;
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
    th_pair_t *pr = th_unix_pair(&ops, NULL, "hello", 5, true);
    th_proto_t *p = pr->p;
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_str_eq(p->events, "made,getbuf,updated,getbuf,eof,lost:0");
    cr_assert_eq(p->rxlen, 5);
    cr_assert_eq(memcmp(p->rx, "hello", 5), 0);
    cr_assert_eq(g_hint, -1);
    cr_assert_eq(g_getbuf_calls, 2);
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
        payload[i] = th_pat(i);
    th_proto_t k = {0};
    k.bufsize = 7;
    th_pair_t *pr = th_unix_pair(&th_buffered_proto_ops, &k, payload, N, true);
    th_proto_t *p = pr->p;
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    cr_assert_eq(p->rxlen, N);
    cr_assert_eq(memcmp(p->rx, payload, N), 0);
    cr_assert_lt(p->elen, sizeof p->events - 64, "event log overflowed");
    size_t updates = check_buffered_grammar(p->events);
    cr_assert_geq(updates, (N + 6) / 7);
}

/* "made" followed by `reads` x "getbuf,updated", then `tail`. */
static void expect_reads(const char *events, size_t reads, const char *tail)
{
    char want[4096] = "made";
    for (size_t i = 0; i < reads; i++)
        strcat(want, ",getbuf,updated");
    strcat(want, tail);
    cr_assert_str_eq(events, want);
}

/* A BufferedProtocol pair whose peer sent n pattern bytes (then EOF if
 * `eof`) before the transport existed; get_buffer hands out bufsize bytes. */
static th_pair_t *prefilled_pair(const tpio_protocol_ops_t *ops, unsigned char *payload,
                                 size_t n, size_t bufsize, bool close_on_data, bool eof)
{
    for (size_t i = 0; i < n; i++)
        payload[i] = th_pat(i);
    th_proto_t k = {0};
    k.bufsize = bufsize;
    k.close_on_data = close_on_data;
    return th_unix_pair(ops, &k, payload, n, eof);
}

/* Everything waiting is read in one readiness event while reads fill the
 * buffer: 10 full reads of 100 bytes, then the 11th finds nothing (EAGAIN). */
Test(stream, buffered_reads_again_while_buffer_fills, .timeout = 20)
{
    enum { N = 1000 };
    unsigned char payload[N];
    th_pair_t *pr = prefilled_pair(&th_buffered_proto_ops, payload, N, 100, false, false);
    th_proto_t *p = pr->p;
    cr_assert(th_run_until(pr->loop, &p->made, TMO));
    cr_assert_str_eq(p->events, "made");
    tpio_loop_run_once(pr->loop, 1.0);
    /* on io_uring the kernel received it all at once: no read finds EAGAIN */
    expect_reads(p->events, 10, th_ring_ops(pr->loop) ? "" : ",getbuf");
    cr_assert_eq(p->rxlen, N);
    cr_assert_eq(memcmp(p->rx, payload, N), 0);
    tpio_transport_close(pr->t);
}

/* The run of reads in one event is bounded: 32 reads (2048 of 2560 bytes),
 * and the rest in the next event. */
Test(stream, buffered_reads_per_event_are_bounded, .timeout = 20)
{
    enum { N = 2560 };
    unsigned char payload[N];
    th_pair_t *pr = prefilled_pair(&th_buffered_proto_ops, payload, N, 64, false, false);
    th_proto_t *p = pr->p;
    cr_assert(th_run_until(pr->loop, &p->made, TMO));
    tpio_loop_run_once(pr->loop, 1.0);
    if (th_ring_ops(pr->loop)) {
        /* the bound is on syscalls: io_uring's one receive took it all, and
         * what it received is delivered at once */
        expect_reads(p->events, 40, "");
        cr_assert_eq(p->rxlen, N);
        cr_assert_eq(memcmp(p->rx, payload, N), 0);
        tpio_transport_close(pr->t);
        return;
    }
    expect_reads(p->events, 32, "");
    cr_assert_eq(p->rxlen, 2048);
    tpio_loop_run_once(pr->loop, 1.0);
    expect_reads(p->events, 40, ",getbuf");
    cr_assert_eq(p->rxlen, N);
    cr_assert_eq(memcmp(p->rx, payload, N), 0);
    tpio_transport_close(pr->t);
}

static void pause_in_updated(tpio_protocol_t *bp, size_t n)
{
    th_buffered_proto_ops.buffer_updated(bp, n);
    th_proto_t *p = tpio_container_of(bp, th_proto_t, base);
    cr_assert_eq(tpio_transport_pause_reading(p->t), 0);
}

/* pause_reading() inside buffer_updated ends the run of reads at once; the
 * data still waiting comes after resume_reading(). */
Test(stream, pause_inside_buffer_updated_stops_further_reads, .timeout = 20)
{
    enum { N = 1000 };
    unsigned char payload[N];
    tpio_protocol_ops_t ops = th_buffered_proto_ops;
    ops.buffer_updated = pause_in_updated;
    th_pair_t *pr = prefilled_pair(&ops, payload, N, 100, false, true);
    th_proto_t *p = pr->p;
    cr_assert(th_run_until(pr->loop, &p->made, TMO));
    th_run_iters(pr->loop, 5);
    expect_reads(p->events, 1, "");
    cr_assert_eq(p->rxlen, 100);
    cr_assert_not(th_is_reading(pr->t));
    for (size_t r = 2; r <= 10; r++) {
        cr_assert_eq(tpio_transport_resume_reading(pr->t), 0);
        th_run_iters(pr->loop, 3);
        cr_assert_eq(p->rxlen, 100 * r);
    }
    cr_assert_eq(tpio_transport_resume_reading(pr->t), 0);
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    expect_reads(p->events, 10, ",getbuf,eof,lost:0");
    cr_assert_eq(memcmp(p->rx, payload, N), 0);
}

/* close() inside buffer_updated: no further read, connection_lost(0). */
Test(stream, close_inside_buffer_updated_stops_further_reads, .timeout = 20)
{
    enum { N = 1000 };
    unsigned char payload[N];
    th_pair_t *pr = prefilled_pair(&th_buffered_proto_ops, payload, N, 100, true, false);
    th_proto_t *p = pr->p;
    cr_assert(th_run_until(pr->loop, &p->lost, TMO));
    expect_reads(p->events, 1, ",lost:0");
    cr_assert_eq(p->rxlen, 100);
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

static void run_bad_getbuf(const th_kind_t *K, void *(*fn)(tpio_protocol_t *, ssize_t, size_t *))
{
    tpio_protocol_ops_t ops = th_buffered_proto_ops;
    ops.get_buffer = fn;
    err_rec_t rec = {0};
    th_pair_t *pr = K->pair(&ops, NULL);
    tpio_loop_set_error_handler(pr->loop, rec_handler, &rec);
    th_proto_t *p = pr->p;
    tpio_transport_t *t = pr->t;
    th_peer_send(pr, "abc", 3);
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
}

TestBothKinds(stream, buffered_protocol_empty_buffer_is_fatal, .timeout = 20)
{
    run_bad_getbuf(K, empty_getbuf);
}

TestBothKinds(stream, buffered_protocol_null_buffer_is_fatal, .timeout = 20)
{
    run_bad_getbuf(K, null_getbuf);
}
