/*
 * Write flow control: watermarks, pause_writing / resume_writing.
 *
 * Data is made to buffer deterministically: the peer is a plain socket that
 * is not read, both kernel buffers are shrunk, and the loop does not run
 * while the test writes, so nothing drains until the peer reads.
 *
 * Every test runs on each kind of helpers' th_kinds table (TestBothKinds):
 * flow::<name>_tcp and flow::<name>_unix.
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

/* Each test gets th_fx.loop; th_fx_fini finishes the pair (waits for its
 * connection_lost, closes the peer), checks that no error was reported and
 * closes the loop. */
TestSuite(flow, .init = th_fx_init, .fini = th_fx_fini);

/* ---- recording pause/resume with the buffer size at the time ------------ */

static size_t g_pause_sz[32], g_npause;
static size_t g_resume_sz[32], g_nresume;
static th_pair_t *g_pr;        /* for refills from resume_writing */
static size_t g_refills;       /* resume_writing writes this many more times */

static void rec_pause(tpio_protocol_t *bp)
{
    th_proto_t *p = tpio_container_of(bp, th_proto_t, base);
    if (g_npause < 32)
        g_pause_sz[g_npause] = th_wbuf_size(p->t);
    g_npause++;
    th_proto_ops.pause_writing(bp);
}

static void rec_resume(tpio_protocol_t *bp)
{
    th_proto_t *p = tpio_container_of(bp, th_proto_t, base);
    if (g_nresume < 32)
        g_resume_sz[g_nresume] = th_wbuf_size(p->t);
    g_nresume++;
    th_proto_ops.resume_writing(bp);
    if (g_refills > 0) {
        g_refills--;
        /* asyncio: resume_writing may append to the buffer */
        th_write_pattern(g_pr, 200000);
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

static th_pair_t *flow_pair(const th_kind_t *K)
{
    th_pair_t *pr = K->pair(flow_ops(), NULL);
    g_pr = pr;
    th_shrink_bufs(pr);
    return pr;
}

/* The peer reads the pattern until it has everything written so far
 * (pr->wtotal is re-read: callbacks may write more meanwhile). */
static size_t g_peer_got; /* bytes the peer has read so far */
static void peer_drain_live(th_pair_t *pr)
{
    static unsigned char buf[65536];
    double end = th_now_s() + 20;
    while (g_peer_got < pr->wtotal && th_now_s() < end) {
        ssize_t r = recv(pr->peer, buf, sizeof buf, 0);
        if (r > 0) {
            for (ssize_t i = 0; i < r; i++)
                cr_assert_eq(buf[i], th_pat(g_peer_got + (size_t)i), "byte %zu differs",
                             g_peer_got + (size_t)i);
            g_peer_got += (size_t)r;
        } else if (r == 0) {
            cr_assert_fail("unexpected EOF after %zu of %zu bytes", g_peer_got, pr->wtotal);
        } else if (errno == EAGAIN || errno == EINTR) {
            tpio_loop_run_once(pr->loop, 0.002);
        } else {
            cr_assert_fail("peer recv: %s", strerror(errno));
        }
    }
    cr_assert_eq(g_peer_got, pr->wtotal, "peer got %zu of %zu", g_peer_got, pr->wtotal);
    /* everything arrived, so the transport's buffer is empty (on io_uring
     * once the loop has reaped the last send's completion) */
    if (th_ring_ops(pr->loop) && th_wbuf_size(pr->t))
        tpio_loop_run_once(pr->loop, 1.0);
    cr_assert_eq(th_wbuf_size(pr->t), 0);
}

static void limits_are(tpio_transport_t *t, size_t low, size_t high)
{
    size_t l = 77, h = 77;
    cr_assert_eq(tpio_transport_get_write_buffer_limits(t, &h, &l), 0);
    cr_assert_eq(l, low, "low %zu, expected %zu", l, low);
    cr_assert_eq(h, high, "high %zu, expected %zu", h, high);
}

/* Close, then the events up to connection_lost are these (fini then finishes
 * the pair). */
static void close_expecting(th_pair_t *pr, const char *events)
{
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TMO));
    cr_assert_str_eq(pr->p->events, events);
}

#define D TPIO_LIMIT_DEFAULT

/* Make the transport buffer, under a high watermark out of the way (no
 * pause): how much it buffered. */
static size_t fill_unpaused(th_pair_t *pr)
{
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, (ssize_t)64 << 20, D), 0);
    th_fill_until_buffered(pr);
    size_t b0 = th_wbuf_size(pr->t);
    cr_assert_gt(b0, 0);
    return b0;
}

/* ===================================================================== */

TestBothKinds(flow, limits_defaults_and_derivation, .timeout = 20)
{
    th_pair_t *pr = K->pair(NULL, NULL);
    tpio_transport_t *t = pr->t;
    limits_are(t, 16384, 65536);
    cr_assert_eq(th_wbuf_size(t), 0);

    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, 1000, D), 0);
    limits_are(t, 250, 1000);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, D, 1000), 0);
    limits_are(t, 1000, 4000);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, D, D), 0);
    limits_are(t, 16384, 65536);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, 3, D), 0);
    limits_are(t, 0, 3);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, 10, 10), 0);
    limits_are(t, 10, 10);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, 50, 0), 0);
    limits_are(t, 0, 50);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, D, 20000), 0);
    limits_are(t, 20000, 80000);

    /* errors leave the limits unchanged */
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, 100, 200), -EINVAL);
    limits_are(t, 20000, 80000);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, -5, D), -EINVAL);
    limits_are(t, 20000, 80000);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, D, -2), -EINVAL);
    limits_are(t, 20000, 80000);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, -7, 3), -EINVAL);
    limits_are(t, 20000, 80000);
    /* low given alone above the old high is fine: high = 4 * low */
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, D, 70000), 0);
    limits_are(t, 70000, 280000);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(NULL, 1, 1), -EINVAL);
    size_t l, h;
    cr_assert_eq(tpio_transport_get_write_buffer_limits(NULL, &h, &l), -EINVAL);

    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, 0, D), 0);
    limits_are(t, 0, 0);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, D, 0), 0);
    limits_are(t, 0, 0);
    /* nothing buffered: high 0 alone does not pause */
    cr_assert_str_eq(pr->p->events, "made");
    close_expecting(pr, "made,lost:0");
}

TestBothKinds(flow, high_zero_pauses_whenever_anything_is_buffered, .timeout = 30)
{
    th_ring_batch(); /* the ring's branch below: its way */
    th_pair_t *pr = flow_pair(K);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, 0, D), 0);
    limits_are(pr->t, 0, 0);
    if (th_ring_ops(pr->loop)) {
        /* io_uring: every write is buffered until the loop sends it, so
         * with high 0 each one pauses, and its completion resumes */
        th_write_pattern(pr, 1);
        cr_assert_eq(th_wbuf_size(pr->t), 1);
        cr_assert_str_eq(pr->p->events, "made,pause");
        peer_drain_live(pr);
        cr_assert_str_eq(pr->p->events, "made,pause,resume");
        cr_assert_eq(g_resume_sz[0], 0);
        close_expecting(pr, "made,pause,resume,lost:0");
        return;
    }
    /* sent at once: nothing buffered, no pause */
    th_write_pattern(pr, 1);
    cr_assert_eq(th_wbuf_size(pr->t), 0);
    cr_assert_str_eq(pr->p->events, "made");
    /* the first write that leaves anything buffered pauses, inside write */
    th_fill_until_buffered(pr);
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_eq(g_npause, 1);
    cr_assert_eq(g_pause_sz[0], th_wbuf_size(pr->t));
    th_write_pattern(pr, 100);
    th_write_pattern(pr, 5000);
    cr_assert_eq(g_npause, 1);
    peer_drain_live(pr);
    cr_assert_str_eq(pr->p->events, "made,pause,resume");
    cr_assert_eq(g_nresume, 1);
    cr_assert_eq(g_resume_sz[0], 0); /* low 0: only once empty */
    close_expecting(pr, "made,pause,resume,lost:0");
}

TestBothKinds(flow, pause_only_strictly_above_high, .timeout = 30)
{
    th_pair_t *pr = flow_pair(K);
    size_t b0 = fill_unpaused(pr);
    size_t high = b0 + 100;
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, (ssize_t)high, D), 0);
    limits_are(pr->t, high / 4, high);
    cr_assert_str_eq(pr->p->events, "made");
    /* buffered: the write is appended whole */
    th_write_pattern(pr, 100);
    cr_assert_eq(th_wbuf_size(pr->t), high);
    cr_assert_str_eq(pr->p->events, "made", "paused at exactly the high watermark");
    th_write_pattern(pr, 1);
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_eq(g_npause, 1);
    cr_assert_eq(g_pause_sz[0], high + 1);
    th_write_pattern(pr, 1000);
    cr_assert_eq(g_npause, 1);
    peer_drain_live(pr);
    cr_assert_str_eq(pr->p->events, "made,pause,resume");
    cr_assert_eq(g_nresume, 1);
    cr_assert_leq(g_resume_sz[0], high / 4);
    close_expecting(pr, "made,pause,resume,lost:0");
}

TestBothKinds(flow, set_limits_can_pause_at_once, .timeout = 30)
{
    th_pair_t *pr = flow_pair(K);
    size_t b0 = fill_unpaused(pr);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, (ssize_t)b0, D), 0);
    cr_assert_str_eq(pr->p->events, "made");
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, (ssize_t)b0 - 1, D), 0);
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_eq(g_pause_sz[0], b0);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, (ssize_t)b0 - 1, D), 0);
    th_write_pattern(pr, 10);
    cr_assert_eq(g_npause, 1);
    peer_drain_live(pr);
    cr_assert_str_eq(pr->p->events, "made,pause,resume");
    cr_assert_leq(g_resume_sz[0], (b0 - 1) / 4);
    close_expecting(pr, "made,pause,resume,lost:0");
}

TestBothKinds(flow, low_zero_resumes_only_when_empty, .timeout = 30)
{
    th_ring_batch(); /* the ring's branch below: its way */
    th_pair_t *pr = flow_pair(K);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, 1024, 0), 0);
    limits_are(pr->t, 0, 1024);
    th_fill_until_buffered(pr);
    th_write_pattern(pr, 2048);
    cr_assert_gt(th_wbuf_size(pr->t), 1024);
    if (th_ring_ops(pr->loop)) {
        /* io_uring: each write of the fill paused (buffered above 1024
         * until the loop sent it) and each drain resumed, at 0 */
        size_t n = g_npause;
        cr_assert_geq(n, 1);
        cr_assert_eq(g_nresume, n - 1);
        for (size_t i = 0; i < n; i++)
            cr_assert_gt(g_pause_sz[i], 1024);
        peer_drain_live(pr);
        cr_assert_eq(g_nresume, n);
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(g_resume_sz[i], 0);
        tpio_transport_close(pr->t);
        cr_assert(th_run_until(pr->loop, &pr->p->lost, TMO));
        return;
    }
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_gt(g_pause_sz[0], 1024);
    peer_drain_live(pr);
    cr_assert_str_eq(pr->p->events, "made,pause,resume");
    cr_assert_eq(g_nresume, 1);
    cr_assert_eq(g_resume_sz[0], 0);
    close_expecting(pr, "made,pause,resume,lost:0");
}

TestBothKinds(flow, writelines_pauses_too, .timeout = 30)
{
    th_pair_t *pr = flow_pair(K);
    size_t b0 = fill_unpaused(pr);
    size_t high = b0 + 10;
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, (ssize_t)high, D), 0);
    unsigned char src[12];
    for (size_t i = 0; i < 12; i++)
        src[i] = th_pat(pr->wtotal + i);
    tpio_buf_t a[3] = {{src, 3}, {src + 3, 0}, {src + 3, 7}};
    cr_assert_eq(tpio_transport_writelines(pr->t, a, 3), 0);
    pr->wtotal += 10;
    cr_assert_eq(th_wbuf_size(pr->t), high);
    cr_assert_str_eq(pr->p->events, "made");
    tpio_buf_t b[2] = {{src + 10, 1}, {src + 11, 1}};
    cr_assert_eq(tpio_transport_writelines(pr->t, b, 2), 0);
    pr->wtotal += 2;
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_eq(g_pause_sz[0], high + 2);
    peer_drain_live(pr);
    cr_assert_str_eq(pr->p->events, "made,pause,resume");
    cr_assert_leq(g_resume_sz[0], high / 4);
    close_expecting(pr, "made,pause,resume,lost:0");
}

TestBothKinds(flow, writelines_into_empty_buffer_pauses, .timeout = 30)
{
    /* writelines with nothing buffered: what the kernel does not take is
     * buffered, and that may go above high at once */
    th_pair_t *pr = flow_pair(K);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, 1000, D), 0);
    enum { N = 64, PIECE = 8192 };
    unsigned char *src = malloc((size_t)N * PIECE);
    tpio_buf_t iov[N];
    for (size_t i = 0; i < (size_t)N * PIECE; i++)
        src[i] = th_pat(i);
    for (int i = 0; i < N; i++)
        iov[i] = (tpio_buf_t){src + (size_t)i * PIECE, PIECE};
    cr_assert_eq(tpio_transport_writelines(pr->t, iov, N), 0);
    pr->wtotal = (size_t)N * PIECE;
    free(src);
    cr_assert_gt(th_wbuf_size(pr->t), 1000, "512 KiB went into 4 KiB buffers?");
    cr_assert_str_eq(pr->p->events, "made,pause");
    peer_drain_live(pr);
    cr_assert_str_eq(pr->p->events, "made,pause,resume");
    cr_assert_leq(g_resume_sz[0], 250);
    close_expecting(pr, "made,pause,resume,lost:0");
}

TestBothKinds(flow, repeated_cycles, .timeout = 40)
{
    th_pair_t *pr = flow_pair(K);
    limits_are(pr->t, 16384, 65536);
    for (int cycle = 0; cycle < 3; cycle++) {
        th_fill_until_buffered(pr);
        th_write_pattern(pr, 70000);
        cr_assert_gt(th_wbuf_size(pr->t), 65536);
        cr_assert_eq(g_npause, (size_t)cycle + 1);
        th_write_pattern(pr, 1000);
        cr_assert_eq(g_npause, (size_t)cycle + 1);
        peer_drain_live(pr);
        cr_assert_eq(g_nresume, (size_t)cycle + 1);
        cr_assert_leq(g_resume_sz[cycle], 16384);
        cr_assert_gt(g_pause_sz[cycle], 65536);
    }
    cr_assert_str_eq(pr->p->events, "made,pause,resume,pause,resume,pause,resume");
    close_expecting(pr, "made,pause,resume,pause,resume,pause,resume,lost:0");
}

TestBothKinds(flow, resume_writing_may_write_again, .timeout = 40)
{
    th_pair_t *pr = flow_pair(K);
    g_refills = 2;
    th_fill_until_buffered(pr);
    th_write_pattern(pr, 200000);
    cr_assert_str_eq(pr->p->events, "made,pause");
    peer_drain_live(pr);
    cr_assert_eq(g_refills, 0);
    cr_assert_str_eq(pr->p->events, "made,pause,resume,pause,resume,pause,resume");
    cr_assert_eq(g_npause, 3);
    cr_assert_eq(g_nresume, 3);
    close_expecting(pr, "made,pause,resume,pause,resume,pause,resume,lost:0");
}

TestBothKinds(flow, close_while_paused_resumes_then_lost, .timeout = 30)
{
    /* asyncio's _write_ready calls resume_writing as the buffer drains,
     * before connection_lost, also on a closing transport */
    th_pair_t *pr = flow_pair(K);
    th_fill_until_buffered(pr);
    th_write_pattern(pr, 100000);
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    cr_assert_str_eq(pr->p->events, "made,pause");
    int end;
    size_t got = th_peer_drain_pattern(pr, 0, pr->wtotal, true, &end);
    cr_assert_eq(end, 0);
    cr_assert_eq(got, pr->wtotal);
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TMO));
    cr_assert_str_eq(pr->p->events, "made,pause,resume,lost:0");
}

TestBothKinds(flow, abort_while_paused_no_resume, .timeout = 30)
{
    th_pair_t *pr = flow_pair(K);
    th_fill_until_buffered(pr);
    th_write_pattern(pr, 100000);
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert_eq(tpio_transport_abort(pr->t), 0);
    cr_assert_str_eq(pr->p->events, "made,pause");
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TMO));
    th_run_iters(pr->loop, 3);
    cr_assert_str_eq(pr->p->events, "made,pause,lost:0");
    cr_assert_eq(g_nresume, 0);
}
