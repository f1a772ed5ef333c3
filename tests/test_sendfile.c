/*
 * loop.sendfile: a file over TCP, a Unix socket and a pipe, checked byte by
 * byte (a hash) at the peer; offset and count; a slow peer; what is written
 * before goes first; writes refused meanwhile; reading paused meanwhile;
 * close, abort and cancel during it.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MIB (1024 * 1024)

static uint8_t file_byte(uint64_t i) { return (uint8_t)(i * 2654435761u >> 13); }

/* A file of n pattern bytes, unlinked at once (its descriptor stays). */
static int make_file(uint64_t n)
{
    char path[] = "/tmp/tpio-sendfile-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    unlink(path);
    static uint8_t buf[MIB];
    for (uint64_t off = 0; off < n;) {
        size_t k = n - off < sizeof buf ? (size_t)(n - off) : sizeof buf;
        for (size_t i = 0; i < k; i++)
            buf[i] = file_byte(off + i);
        cr_assert_eq(pwrite(fd, buf, k, (off_t)off), (ssize_t)k);
        off += k;
    }
    return fd;
}

/* What the peer received: a count, and whether every byte was the file's
 * from `start` on (after `skip` bytes of something else). */
struct peer {
    int fd;
    uint64_t got, start;
    size_t skip;
    char head[64];
    bool bad;
    uint64_t first_bad;
    size_t per_read; /* a slow reader reads this much per loop turn (0: all) */
};

static void peer_read(struct peer *pe)
{
    static uint8_t buf[256 * 1024];
    for (;;) {
        size_t want = pe->per_read ? pe->per_read : sizeof buf;
        ssize_t n = read(pe->fd, buf, want);
        if (n <= 0)
            return;
        for (ssize_t i = 0; i < n; i++) {
            if (pe->skip) {
                size_t h = strlen(pe->head);
                if (h + 1 < sizeof pe->head)
                    pe->head[h] = (char)buf[i];
                pe->skip--;
                continue;
            }
            if (!pe->bad && buf[i] != file_byte(pe->start + pe->got)) {
                pe->bad = true;
                pe->first_bad = pe->got;
            }
            pe->got++;
        }
        if (pe->per_read)
            return;
    }
}

struct done {
    bool done;
    int calls;
    uint64_t sent;
    int err;
    char events_at_done[256];
    th_proto_t *p;
};

static void on_sent(tpio_loop_t *loop, tpio_transport_t *t, uint64_t sent, int err, void *arg)
{
    (void)t;
    struct done *d = arg;
    d->calls++;
    d->done = true;
    d->sent = sent;
    d->err = err;
    d->events_at_done[0] = '\0';
    if (d->p)
        snprintf(d->events_at_done, sizeof d->events_at_done, "%.200s", d->p->events);
    cr_assert(th_is_running(loop), "the completion runs from the loop");
}

/* Run until the completion and `want` bytes at the peer; tracks the most
 * the transport buffered. */
static size_t run_transfer(tpio_loop_t *loop, tpio_transport_t *t, struct peer *pe,
                           struct done *d, uint64_t want)
{
    size_t most = 0;
    double end = th_now_s() + 60;
    while ((!d->done || pe->got < want) && th_now_s() < end) {
        tpio_loop_run_once(loop, pe->per_read ? 0 : 0.01);
        peer_read(pe);
        size_t w;
        if (tpio_transport_get_write_buffer_size(t, &w) == 0 && w > most)
            most = w;
    }
    cr_assert(d->done, "no completion");
    return most;
}

static void whole_file(th_pair_t *pr, uint64_t size)
{
    int fd = make_file(size);
    off_t pos = lseek(fd, 12345, SEEK_SET);
    struct peer pe = {.fd = pr->peer};
    struct done d = {0};
    tpio_handle_t h = 0;
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, fd, 0, 0, TPIO_OFF, on_sent, &d, &h), 0);
    cr_assert_neq(h, 0);
    cr_assert_not(d.done, "nothing inside the call");
    size_t most = run_transfer(pr->loop, pr->t, &pe, &d, size);
    cr_assert_eq(d.err, 0, "%s", tpio_err_name(d.err));
    cr_assert_eq(d.sent, size);
    cr_assert_eq(pe.got, size);
    cr_assert_not(pe.bad, "byte %llu differs", (unsigned long long)pe.first_bad);
    cr_assert_eq(most, 0, "zero-copy: nothing passed through the transport's buffer");
    cr_assert_eq(lseek(fd, 0, SEEK_CUR), pos, "the file position is the caller's");
    cr_assert_eq(tpio_loop_cancel(pr->loop, h), -ENOENT, "a finished request is gone");
    /* the transport goes on: writing and reading work again */
    cr_assert_eq(tpio_transport_write(pr->t, "after", 5), 0);
    char buf[8];
    cr_assert_eq(th_peer_recv_exact(pr, buf, 5), 5);
    cr_assert_eq(memcmp(buf, "after", 5), 0);
    th_peer_send(pr, "in", 2);
    cr_assert(th_pair_run_until_rx(pr, pr->p, 2));
    close(fd);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
}

Test(sendfile, tcp_64_mib, .timeout = 120)
{
    th_pair_t *pr = th_tcp_pair(NULL, NULL);
    cr_assert_eq(fcntl(pr->peer, F_SETFL, O_NONBLOCK), 0);
    whole_file(pr, 64 * MIB);
}

Test(sendfile, unix_64_mib, .timeout = 120)
{
    th_pair_t *pr = th_unix_pair(NULL, NULL, NULL, 0, false);
    whole_file(pr, 64 * MIB);
}

Test(sendfile, offset_and_count_in_the_middle, .timeout = 60)
{
    th_pair_t *pr = th_unix_pair(NULL, NULL, NULL, 0, false);
    int fd = make_file(16 * MIB);
    const uint64_t off = 1000003, count = 5 * MIB + 7;
    struct peer pe = {.fd = pr->peer, .start = off};
    struct done d = {0};
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, fd, (off_t)off, count, TPIO_DEFAULT,
                                    on_sent, &d, NULL),
                 0);
    run_transfer(pr->loop, pr->t, &pe, &d, count);
    th_run_iters(pr->loop, 3);
    peer_read(&pe);
    cr_assert_eq(d.err, 0);
    cr_assert_eq(d.sent, count);
    cr_assert_eq(pe.got, count, "exactly count bytes");
    cr_assert_not(pe.bad, "byte %llu differs", (unsigned long long)pe.first_bad);
    /* count past the end of the file: what there is */
    struct done d2 = {0};
    struct peer pe2 = {.fd = pr->peer, .start = 16 * MIB - 100};
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, fd, 16 * MIB - 100, 1000, TPIO_DEFAULT,
                                    on_sent, &d2, NULL),
                 0);
    run_transfer(pr->loop, pr->t, &pe2, &d2, 100);
    cr_assert_eq(d2.err, 0);
    cr_assert_eq(d2.sent, 100);
    close(fd);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
}

/* A write pipe: the fallback, through the transport's buffer, never more
 * than the high watermark plus one piece, even with a slow reader. */
Test(sendfile, fallback_over_a_pipe_with_a_slow_reader, .timeout = 60)
{
    tpio_loop_t *loop = th_new_loop();
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
    th_conn_t c = {0};
    cr_assert_eq(tpio_loop_connect_write_pipe(loop, th_factory, NULL, p[1], th_on_conn, &c, NULL), 0);
    cr_assert(th_run_until(loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0);
    const uint64_t size = 4 * MIB + 12345;
    int fd = make_file(size);
    struct done d = {0};
    cr_assert_eq(tpio_loop_sendfile(loop, c.t, fd, 0, 0, TPIO_OFF, on_sent, &d, NULL), -ENOTSUP,
                 "a pipe needs the fallback");
    cr_assert_eq(tpio_loop_sendfile(loop, c.t, fd, 0, 0, TPIO_ON, on_sent, &d, NULL), 0);
    struct peer pe = {.fd = p[0], .per_read = 4096};
    size_t most = run_transfer(loop, c.t, &pe, &d, size);
    cr_assert_eq(d.err, 0);
    cr_assert_eq(d.sent, size);
    cr_assert_eq(pe.got, size);
    cr_assert_not(pe.bad, "byte %llu differs", (unsigned long long)pe.first_bad);
    cr_assert_leq(most, 64 * 1024 + 64 * 1024, "buffered %zu", most);
    cr_assert_gt(most, 0, "the fallback goes through the buffer");
    cr_assert_eq(c.p->pauses, 0, "the protocol hears no flow control of the file's bytes");
    close(fd);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_run_until(loop, &c.p->lost, TH_TMO));
    th_proto_free(c.p);
    close(p[0]);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* A peer that reads slowly: the kernel holds what is not read; nothing
 * gathers in user space. */
Test(sendfile, slow_peer_memory_stays_bounded, .timeout = 60)
{
    th_pair_t *pr = th_unix_pair(NULL, NULL, NULL, 0, false);
    int fd = make_file(8 * MIB);
    struct peer pe = {.fd = pr->peer, .per_read = 16384};
    struct done d = {0};
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, fd, 0, 0, TPIO_DEFAULT, on_sent, &d, NULL),
                 0);
    size_t most = run_transfer(pr->loop, pr->t, &pe, &d, 8 * MIB);
    cr_assert_eq(d.err, 0);
    cr_assert_eq(pe.got, 8 * MIB);
    cr_assert_not(pe.bad);
    cr_assert_eq(most, 0);
    close(fd);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
}

/* What was written before goes first, even when it is still buffered;
 * writes during it are refused; reading waits. */
Test(sendfile, order_refusals_and_reading, .timeout = 60)
{
    th_pair_t *pr = th_unix_pair(NULL, NULL, NULL, 0, false);
    th_shrink_bufs(pr);
    th_fill_until_buffered(pr); /* the pattern stream, part of it buffered */
    size_t pre = pr->wtotal;
    int fd = make_file(MIB);
    struct done d = {0};
    d.p = pr->p;
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, fd, 0, 0, TPIO_DEFAULT, on_sent, &d, NULL),
                 0);
    cr_assert_eq(tpio_transport_write(pr->t, "x", 1), -EBUSY);
    tpio_buf_t b = {"x", 1};
    cr_assert_eq(tpio_transport_writelines(pr->t, &b, 1), -EBUSY);
    cr_assert_eq(tpio_transport_write_eof(pr->t), -EBUSY);
    struct done d2 = {0};
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, fd, 0, 0, TPIO_DEFAULT, on_sent, &d2, NULL),
                 -EBUSY);
    bool reading = true;
    cr_assert_eq(tpio_transport_is_reading(pr->t, &reading), 0);
    cr_assert_not(reading, "reading is paused while the file goes");
    /* the peer talks meanwhile: nothing arrives until the end */
    th_peer_send(pr, "hello", 5);
    /* the pattern first, checked byte by byte, then the file */
    unsigned char *head = malloc(pre);
    cr_assert_not_null(head);
    cr_assert_eq(th_peer_recv_exact(pr, head, pre), pre);
    for (size_t i = 0; i < pre; i++)
        cr_assert_eq(head[i], th_pat(i), "byte %zu of what was written before", i);
    free(head);
    struct peer pe = {.fd = pr->peer};
    cr_assert_eq(fcntl(pr->peer, F_SETFL, O_NONBLOCK), 0);
    run_transfer(pr->loop, pr->t, &pe, &d, MIB);
    cr_assert_eq(pe.got, MIB);
    cr_assert_not(pe.bad);
    cr_assert_eq(pr->p->rxlen, 0, "data_received waited for the file");
    cr_assert(th_pair_run_until_rx(pr, pr->p, 5), "reading resumed after it");
    cr_assert_eq(memcmp(pr->p->rx, "hello", 5), 0);
    cr_assert_eq(tpio_transport_write(pr->t, "x", 1), 0, "writes work again");
    cr_assert_eq(d2.calls, 0);
    close(fd);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
}

/* A transport paused by its user before stays paused after. */
Test(sendfile, reading_paused_before_stays_paused, .timeout = 30)
{
    th_pair_t *pr = th_unix_pair(NULL, NULL, NULL, 0, false);
    cr_assert_eq(tpio_transport_pause_reading(pr->t), 0);
    int fd = make_file(1000);
    struct done d = {0};
    struct peer pe = {.fd = pr->peer};
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, fd, 0, 0, TPIO_DEFAULT, on_sent, &d, NULL),
                 0);
    run_transfer(pr->loop, pr->t, &pe, &d, 1000);
    bool reading = true;
    cr_assert_eq(tpio_transport_is_reading(pr->t, &reading), 0);
    cr_assert_not(reading);
    close(fd);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
}

static void end_during(int how)
{
    th_pair_t *pr = th_unix_pair(NULL, NULL, NULL, 0, false);
    th_shrink_bufs(pr);
    int fd = make_file(16 * MIB);
    struct done d = {0};
    d.p = pr->p;
    tpio_handle_t h;
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, fd, 0, 0, TPIO_DEFAULT, on_sent, &d, &h), 0);
    /* let it start: some bytes reach the peer, then it waits for room */
    struct peer pe = {.fd = pr->peer};
    double end = th_now_s() + TH_TMO;
    while (pe.got == 0 && th_now_s() < end) {
        tpio_loop_run_once(pr->loop, 0.01);
        peer_read(&pe);
    }
    cr_assert_gt(pe.got, 0);
    if (how == 0)
        cr_assert_eq(tpio_transport_close(pr->t), 0);
    else if (how == 1)
        cr_assert_eq(tpio_transport_abort(pr->t), 0);
    else
        cr_assert_eq(tpio_loop_cancel(pr->loop, h), 0);
    cr_assert_not(d.done, "the completion runs from the loop, not inside the call");
    cr_assert(th_run_until(pr->loop, &d.done, TH_TMO));
    cr_assert_eq(d.calls, 1);
    cr_assert_eq(d.err, how == 2 ? -ECANCELED : -ECONNABORTED, "%s", tpio_err_name(d.err));
    cr_assert_gt(d.sent, 0);
    cr_assert_lt(d.sent, 16 * MIB);
    cr_assert_eq(tpio_loop_cancel(pr->loop, h), -ENOENT);
    if (how < 2) {
        cr_assert_str_eq(d.events_at_done, "made", "before connection_lost");
        th_pair_finish(pr);
    } else {
        /* cancelled: the transport goes on, and the bytes already sent are
         * whole: what the peer gets next follows them */
        th_run_iters(pr->loop, 3);
        peer_read(&pe);
        cr_assert_geq(d.sent, pe.got);
        cr_assert_eq(tpio_transport_write(pr->t, "x", 1), 0);
        cr_assert_eq(tpio_transport_close(pr->t), 0);
        th_pair_finish(pr);
    }
    close(fd);
}

Test(sendfile, close_during, .timeout = 30) { end_during(0); }
Test(sendfile, abort_during, .timeout = 30) { end_during(1); }
Test(sendfile, cancel_during, .timeout = 30) { end_during(2); }

Test(sendfile, refused_arguments, .timeout = 30)
{
    th_pair_t *pr = th_unix_pair(NULL, NULL, NULL, 0, false);
    int fd = make_file(100);
    struct done d = {0};
    tpio_loop_t *other = th_new_loop();
    cr_assert_eq(tpio_loop_sendfile(NULL, pr->t, fd, 0, 0, 0, on_sent, &d, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_sendfile(pr->loop, NULL, fd, 0, 0, 0, on_sent, &d, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, fd, 0, 0, 0, NULL, &d, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_sendfile(other, pr->t, fd, 0, 0, 0, on_sent, &d, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, fd, -1, 0, 0, on_sent, &d, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, fd, 0, 0, (tpio_flag_t)3, on_sent, &d,
                                    NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, -1, 0, 0, 0, on_sent, &d, NULL), -EBADF);
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, sv[0], 0, 0, 0, on_sent, &d, NULL), -EINVAL,
                 "not a regular file");
    close(sv[0]);
    close(sv[1]);
    cr_assert_eq(tpio_loop_close(other), 0);
    /* after write_eof, and on a closing transport */
    cr_assert_eq(tpio_transport_write_eof(pr->t), 0);
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, fd, 0, 0, 0, on_sent, &d, NULL),
                 -ESHUTDOWN);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    cr_assert_eq(tpio_loop_sendfile(pr->loop, pr->t, fd, 0, 0, 0, on_sent, &d, NULL),
                 -ESHUTDOWN);
    th_pair_finish(pr);
    cr_assert_eq(d.calls, 0);

    /* kinds that are no writable stream */
    tpio_loop_t *loop = th_new_loop();
    th_conn_t c = {0};
    tpio_datagram_opts_t o = TPIO_OPTS(tpio_datagram_opts_t, .family = AF_INET);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(loop, th_factory, NULL, &o, th_on_conn, &c, NULL),
                 0);
    cr_assert(th_run_until(loop, &c.done, TH_TMO));
    cr_assert_eq(tpio_loop_sendfile(loop, c.t, fd, 0, 0, 0, on_sent, &d, NULL), -ENOTSUP);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_run_until(loop, &c.p->lost, TH_TMO));
    th_proto_free(c.p);
    cr_assert_eq(tpio_loop_close(loop), 0);
    close(fd);
}
