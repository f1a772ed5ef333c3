/*
 * Pipe transports: connect_read_pipe / connect_write_pipe over pipe2(),
 * FIFOs and socketpairs. Exact callback sequences, bytes, EOF, pause/resume
 * reading, BufferedProtocol, write flushing on write_eof/close, flow control
 * against a reader that does not read, the reader going away (with and
 * without buffered data), fd checks and the calls a pipe end does not have.
 *
 * Pipe capacities are set to 64 KiB with F_SETPIPE_SZ so that the amounts
 * buffered are known. Nothing sleeps: the loop runs until a condition holds
 * or a loop timer fires.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define TMO 10.0
#define PIPE_CAP 65536

/* ---- a recording protocol that also notes the buffer size at pause/resume --- */

typedef struct wp {
    th_proto_t th; /* first: th_proto_free() frees the whole struct */
    size_t size_at_pause, size_at_resume;
} wp_t;

static tpio_protocol_ops_t wp_ops;

static void wp_pause(tpio_protocol_t *p)
{
    wp_t *w = tpio_container_of(p, wp_t, th.base);
    th_proto_ops.pause_writing(p);
    w->size_at_pause = th_wbuf_size(w->th.t);
}

static void wp_resume(tpio_protocol_t *p)
{
    wp_t *w = tpio_container_of(p, wp_t, th.base);
    th_proto_ops.resume_writing(p);
    w->size_at_resume = th_wbuf_size(w->th.t);
}

/* ---- fixture ------------------------------------------------------------------ */

/* The suite's fixture, on top of th_fx (the loop; error reports: none
 * expected): set up by suite init, checked and torn down by fini. */
typedef struct fx {
    th_proto_t tmpl;
    size_t factory_calls;
    bool use_wp;
    int fds[2];            /* the pipe of read_pipe() / write_pipe() */
} fx_t;

static fx_t f;

static tpio_protocol_t *factory(void *arg)
{
    fx_t *f = arg;
    f->factory_calls++;
    if (f->use_wp) {
        wp_ops = th_proto_ops;
        wp_ops.pause_writing = wp_pause;
        wp_ops.resume_writing = wp_resume;
        wp_t *w = calloc(1, sizeof *w);
        cr_assert_not_null(w);
        w->th.base.ops = &wp_ops;
        return &w->th.base;
    }
    return th_factory(&f->tmpl);
}

static void fx_init(void)
{
    th_fx_init();
    memset(&f, 0, sizeof f);
    f.tmpl.base.ops = &th_proto_ops;
    /* The tests close read ends themselves: a write to them must give EPIPE
     * rather than kill the test. */
    signal(SIGPIPE, SIG_IGN);
}

TestSuite(pipe, .init = fx_init, .fini = th_fx_fini);

/* Another round in the same test: what fini checks, then a fresh fixture. */
static void fx_next(void)
{
    th_fx_renew_loop();
    memset(&f, 0, sizeof f);
    f.tmpl.base.ops = &th_proto_ops;
}

/* The read (write) end fd becomes the transport c; its protocol is freed by
 * fini. */
static void open_read(fx_t *f, int fd, th_conn_t *c)
{
    memset(c, 0, sizeof *c);
    cr_assert_eq(tpio_loop_connect_read_pipe(th_fx.loop, factory, f, fd, th_on_conn, c, NULL), 0);
    cr_assert_eq(c->calls, 0, "completion ran inside the call");
    cr_assert(th_run_until(th_fx.loop, &c->done, TMO));
    cr_assert_eq(c->calls, 1);
    cr_assert_eq(c->err, 0);
    cr_assert_str_eq(c->p->events, "made");
    cr_assert_eq(th_kind(c->t), TPIO_TRANSPORT_PIPE_READ);
    th_fx_own(c->p);
}

static void open_write(fx_t *f, int fd, th_conn_t *c)
{
    memset(c, 0, sizeof *c);
    cr_assert_eq(tpio_loop_connect_write_pipe(th_fx.loop, factory, f, fd, th_on_conn, c, NULL), 0);
    cr_assert_eq(c->calls, 0, "completion ran inside the call");
    cr_assert(th_run_until(th_fx.loop, &c->done, TMO));
    cr_assert_eq(c->calls, 1);
    cr_assert_eq(c->err, 0);
    cr_assert_str_eq(c->p->events, "made");
    cr_assert_eq(th_kind(c->t), TPIO_TRANSPORT_PIPE_WRITE);
    th_fx_own(c->p);
}

static void make_pipe(int fds[2])
{
    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
    cr_assert_eq(fcntl(fds[1], F_SETPIPE_SZ, PIPE_CAP), PIPE_CAP);
}

static void set_nonblock(int fd);

/* A fresh pipe, f.fds, whose read end becomes the transport c. */
static void read_pipe(th_conn_t *c)
{
    make_pipe(f.fds);
    open_read(&f, f.fds[0], c);
}

/* A fresh pipe, f.fds, whose write end becomes the transport c; the test
 * has the read end, non-blocking. */
static void write_pipe(th_conn_t *c)
{
    make_pipe(f.fds);
    set_nonblock(f.fds[0]);
    open_write(&f, f.fds[1], c);
}

static bool run_until_rx(tpio_loop_t *loop, th_proto_t *p, size_t n)
{
    double end = th_time(loop) + TMO;
    while (p->rxlen < n && th_time(loop) < end)
        tpio_loop_run_once(loop, 0.01);
    return p->rxlen >= n;
}

/* A plain reader draining a non-blocking fd while the loop runs. */
typedef struct drain {
    int fd;
    size_t got;
    bool eof;
    bool bad; /* a byte differed from the pattern */
} drain_t;

static void drain_some(drain_t *d)
{
    unsigned char buf[16384];
    for (;;) {
        ssize_t n = read(d->fd, buf, sizeof buf);
        if (n > 0) {
            for (ssize_t i = 0; i < n; i++)
                if (buf[i] != th_pat(d->got + (size_t)i))
                    d->bad = true;
            d->got += (size_t)n;
            continue;
        }
        if (n == 0)
            d->eof = true;
        return;
    }
}

/* Drain until EOF, running the loop in between. */
static void drain_to_eof(tpio_loop_t *loop, drain_t *d)
{
    double end = th_time(loop) + TMO;
    while (!d->eof && th_time(loop) < end) {
        drain_some(d);
        if (!d->eof)
            tpio_loop_run_once(loop, 0.01);
    }
    cr_assert(d->eof, "no EOF after %zu bytes", d->got);
    cr_assert_not(d->bad, "corrupted bytes");
}

static unsigned char *pattern(size_t off, size_t n)
{
    unsigned char *b = malloc(n ? n : 1);
    cr_assert_not_null(b);
    for (size_t i = 0; i < n; i++)
        b[i] = th_pat(off + i);
    return b;
}

static void set_nonblock(int fd)
{
    cr_assert_eq(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
}

/* ---- read pipes ---------------------------------------------------------------- */

Test(pipe, read_data_then_eof, .timeout = 20)
{
    for (int eof_ret = 0; eof_ret < 2; eof_ret++) {
        f.tmpl.eof_ret = eof_ret; /* ignored for pipes: lost follows anyway */
        th_conn_t c;
        read_pipe(&c);
        cr_assert(th_is_reading(c.t));
        cr_assert_not(th_is_closing(c.t));
        const char msg[] = "bytes through a pipe";
        cr_assert_eq(write(f.fds[1], msg, sizeof msg - 1), (ssize_t)sizeof msg - 1);
        cr_assert(run_until_rx(th_fx.loop, c.p, sizeof msg - 1));
        cr_assert_eq(c.p->rxlen, sizeof msg - 1);
        cr_assert_eq(memcmp(c.p->rx, msg, sizeof msg - 1), 0);
        cr_assert_str_eq(c.p->events, "made,data");
        close(f.fds[1]);
        cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
        cr_assert_str_eq(c.p->events, "made,data,eof,lost:0", "eof_ret=%d: %s", eof_ret,
                         c.p->events);
        fx_next();
    }
}

Test(pipe, read_close_closes_the_fd, .timeout = 10)
{
    th_conn_t c;
    read_pipe(&c);
    cr_assert(fcntl(f.fds[0], F_GETFL) & O_NONBLOCK, "read pipe not made non-blocking");
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_is_closing(c.t));
    cr_assert_not(th_is_reading(c.t));
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,lost:0");
    /* The transport closed the read end: writing gives EPIPE. */
    errno = 0;
    cr_assert_eq(write(f.fds[1], "x", 1), -1);
    cr_assert_eq(errno, EPIPE);
    close(f.fds[1]);
}

Test(pipe, read_pause_resume_hold, .timeout = 20)
{
    f.tmpl.pause_in_made = true;
    th_conn_t c;
    read_pipe(&c);
    cr_assert_not(th_is_reading(c.t));
    cr_assert_eq(write(f.fds[1], "first", 5), 5);
    th_run_timer(th_fx.loop, 0.1, TMO);
    cr_assert_str_eq(c.p->events, "made");
    cr_assert_eq(c.p->rxlen, 0);
    cr_assert_eq(tpio_transport_resume_reading(c.t), 0);
    cr_assert_eq(tpio_transport_resume_reading(c.t), 0); /* idempotent */
    cr_assert(th_is_reading(c.t));
    cr_assert(run_until_rx(th_fx.loop, c.p, 5));
    cr_assert_eq(tpio_transport_pause_reading(c.t), 0);
    cr_assert_eq(tpio_transport_pause_reading(c.t), 0);
    cr_assert_not(th_is_reading(c.t));
    cr_assert_eq(write(f.fds[1], "second", 6), 6);
    close(f.fds[1]); /* EOF is held too */
    th_run_timer(th_fx.loop, 0.1, TMO);
    cr_assert_str_eq(c.p->events, "made,data");
    cr_assert_eq(c.p->rxlen, 5);
    cr_assert_eq(tpio_transport_resume_reading(c.t), 0);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_eq(c.p->rxlen, 11);
    cr_assert_eq(memcmp(c.p->rx, "firstsecond", 11), 0);
    cr_assert_str_eq(c.p->events, "made,data,eof,lost:0");
}

Test(pipe, read_buffered_protocol, .timeout = 10)
{
    f.tmpl.base.ops = &th_buffered_proto_ops;
    f.tmpl.bufsize = 7;
    int fds[2];
    make_pipe(fds);
    unsigned char *data = pattern(0, 20);
    cr_assert_eq(write(fds[1], data, 20), 20);
    close(fds[1]);
    th_conn_t c = {0};
    cr_assert_eq(tpio_loop_connect_read_pipe(th_fx.loop, factory, &f, fds[0], th_on_conn, &c, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &c.done, TMO));
    cr_assert_eq(c.err, 0);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    /* 7 + 7 + 6 bytes, then a get_buffer whose read finds EOF. */
    cr_assert_str_eq(c.p->events,
                     "made,getbuf,updated,getbuf,updated,getbuf,updated,getbuf,eof,lost:0");
    cr_assert_eq(c.p->rxlen, 20);
    cr_assert_eq(memcmp(c.p->rx, data, 20), 0);
    free(data);
    th_proto_free(c.p);
}

Test(pipe, socketpair_as_read_pipe, .timeout = 10)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    th_conn_t c;
    open_read(&f, sv[0], &c);
    tpio_extra_t e;
    cr_assert_eq(tpio_transport_get_extra_info(c.t, "pipe", &e), 0);
    cr_assert_eq(e.type, TPIO_EXTRA_FD);
    cr_assert_eq(e.fd, sv[0]);
    cr_assert_eq(write(sv[1], "over a socket", 13), 13);
    cr_assert(run_until_rx(th_fx.loop, c.p, 13));
    close(sv[1]);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,data,eof,lost:0");
    cr_assert_eq(memcmp(c.p->rx, "over a socket", 13), 0);
}

/* ---- write pipes ------------------------------------------------------------------ */

Test(pipe, write_then_reader_sees_bytes, .timeout = 10)
{
    th_conn_t c;
    write_pipe(&c);
    cr_assert(fcntl(f.fds[1], F_GETFL) & O_NONBLOCK, "write pipe not made non-blocking");
    cr_assert(th_can_write_eof(c.t));
    unsigned char *data = pattern(0, 1000);
    cr_assert_eq(tpio_transport_write(c.t, data, 1000), 0);
    /* written inside the call, on both backends (asyncio's programs read
     * the other end right after a write) */
    cr_assert_eq(th_wbuf_size(c.t), 0);
    tpio_buf_t iov[2] = {{data, 0}, {data, 0}};
    unsigned char *more = pattern(1000, 24);
    iov[0].base = more;
    iov[0].len = 10;
    iov[1].base = more + 10;
    iov[1].len = 14;
    cr_assert_eq(tpio_transport_writelines(c.t, iov, 2), 0);
    for (int i = 0; i < 1000 && th_wbuf_size(c.t); i++) /* io_uring: one send at a time */
        tpio_loop_run_once(th_fx.loop, 0.01);
    drain_t d = {.fd = f.fds[0]};
    drain_some(&d);
    cr_assert_eq(d.got, 1024);
    cr_assert_not(d.bad);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,lost:0");
    drain_to_eof(th_fx.loop, &d);
    cr_assert_eq(d.got, 1024);
    close(f.fds[0]);
    free(data);
    free(more);
}

Test(pipe, write_eof_flushes_then_lost, .timeout = 20)
{
    th_conn_t c;
    write_pipe(&c);
    const size_t total = 200 * 1024;
    unsigned char *data = pattern(0, total);
    cr_assert_eq(tpio_transport_write(c.t, data, total), 0);
    /* The kernel took the pipe's capacity; the rest is buffered (pause). */
    cr_assert_eq(th_wbuf_size(c.t), total - PIPE_CAP);
    cr_assert_str_eq(c.p->events, "made,pause");
    cr_assert_eq(tpio_transport_write_eof(c.t), 0);
    cr_assert_eq(tpio_transport_write_eof(c.t), 0); /* idempotent */
    cr_assert(th_is_closing(c.t));
    cr_assert_eq(tpio_transport_write(c.t, "more", 4), -ESHUTDOWN);
    cr_assert_eq(th_wbuf_size(c.t), total - PIPE_CAP);
    /* Not lost while data is buffered. */
    th_run_timer(th_fx.loop, 0.05, TMO);
    cr_assert_not(c.p->lost);
    drain_t d = {.fd = f.fds[0]};
    drain_to_eof(th_fx.loop, &d);
    cr_assert_eq(d.got, total);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,pause,resume,lost:0");
    close(f.fds[0]);
    free(data);
}

Test(pipe, close_flushes_then_lost, .timeout = 20)
{
    th_conn_t c;
    write_pipe(&c);
    const size_t total = 100 * 1024; /* 36 KiB buffered: below high, no pause */
    unsigned char *data = pattern(0, total);
    cr_assert_eq(tpio_transport_write(c.t, data, total), 0);
    cr_assert_eq(th_wbuf_size(c.t), total - PIPE_CAP);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_is_closing(c.t));
    /* After close() (not write_eof) writes are dropped silently. */
    cr_assert_eq(tpio_transport_write(c.t, "dropped", 7), 0);
    cr_assert_eq(th_wbuf_size(c.t), total - PIPE_CAP);
    drain_t d = {.fd = f.fds[0]};
    drain_to_eof(th_fx.loop, &d);
    cr_assert_eq(d.got, total);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,lost:0");
    close(f.fds[0]);
    free(data);
}

Test(pipe, abort_drops_buffer, .timeout = 10)
{
    th_conn_t c;
    write_pipe(&c);
    unsigned char *data = pattern(0, 100 * 1024);
    cr_assert_eq(tpio_transport_write(c.t, data, 100 * 1024), 0);
    cr_assert_eq(tpio_transport_abort(c.t), 0);
    cr_assert(th_is_closing(c.t));
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,lost:0");
    drain_t d = {.fd = f.fds[0]};
    drain_to_eof(th_fx.loop, &d);
    cr_assert_eq(d.got, PIPE_CAP);
    close(f.fds[0]);
    free(data);
}

Test(pipe, write_flow_control, .timeout = 30)
{
    f.use_wp = true;
    th_conn_t c;
    write_pipe(&c);
    wp_t *w = tpio_container_of(c.p, wp_t, th);
    size_t low = 0, high = 0;
    cr_assert_eq(tpio_transport_get_write_buffer_limits(c.t, &high, &low), 0);
    cr_assert_eq(high, 65536);
    cr_assert_eq(low, 16384);

    const size_t chunk = 4096;
    size_t written = 0;
    unsigned char *buf = malloc(chunk);
    cr_assert_not_null(buf);
    /* Nobody reads: the pipe fills, then the transport buffers. */
    while (c.p->pauses == 0) {
        cr_assert_lt(written, 4 * 1024 * 1024, "pause_writing never came");
        size_t before = th_wbuf_size(c.t);
        cr_assert_leq(before, high);
        for (size_t i = 0; i < chunk; i++)
            buf[i] = th_pat(written + i);
        cr_assert_eq(tpio_transport_write(c.t, buf, chunk), 0);
        written += chunk;
    }
    /* pause_writing ran inside the write that crossed the high watermark. */
    cr_assert_str_eq(c.p->events, "made,pause");
    cr_assert_gt(w->size_at_pause, high);
    cr_assert_leq(w->size_at_pause, high + chunk);
    cr_assert_eq(written, PIPE_CAP + w->size_at_pause);
    cr_assert_eq(th_wbuf_size(c.t), w->size_at_pause);
    /* Still paused without a reader, and nothing lost. */
    th_run_timer(th_fx.loop, 0.05, TMO);
    cr_assert_eq(c.p->resumes, 0);
    cr_assert_eq(th_wbuf_size(c.t), w->size_at_pause);

    /* Drain: resume_writing once the buffer is at low or below. */
    drain_t d = {.fd = f.fds[0]};
    double end = th_time(th_fx.loop) + TMO;
    while (c.p->resumes == 0 && th_time(th_fx.loop) < end) {
        drain_some(&d);
        tpio_loop_run_once(th_fx.loop, 0.01);
    }
    cr_assert_eq(c.p->resumes, 1);
    cr_assert_leq(w->size_at_resume, low);
    cr_assert_str_eq(c.p->events, "made,pause,resume");
    cr_assert_not(d.bad);

    cr_assert_eq(tpio_transport_write_eof(c.t), 0);
    drain_to_eof(th_fx.loop, &d);
    cr_assert_eq(d.got, written);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,pause,resume,lost:0");
    close(f.fds[0]);
    free(buf);
}

Test(pipe, reader_closes_with_buffered_data, .timeout = 10)
{
    th_conn_t c;
    write_pipe(&c);
    unsigned char *data = pattern(0, 100 * 1024);
    cr_assert_eq(tpio_transport_write(c.t, data, 100 * 1024), 0);
    cr_assert_gt(th_wbuf_size(c.t), 0);
    close(f.fds[0]);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,lost:EPIPE");
    free(data);
}

Test(pipe, reader_closes_while_idle, .timeout = 10)
{
    th_conn_t c;
    write_pipe(&c);
    /* Nothing is written: the transport notices on its own. */
    close(f.fds[0]);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,lost:0");
}

Test(pipe, write_to_a_gone_reader_is_epipe, .timeout = 10)
{
    th_conn_t c;
    write_pipe(&c);
    close(f.fds[0]);
    /* Before the loop noticed: the write itself meets EPIPE, reported through
     * connection_lost, not as the write's result. */
    cr_assert_eq(tpio_transport_write(c.t, "lost", 4), 0);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,lost:EPIPE");
}

Test(pipe, sigpipe_ignored_by_first_write_pipe, .timeout = 10)
{
    struct sigaction sa = {.sa_handler = SIG_DFL};
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGPIPE, &sa, NULL), 0);
    th_conn_t c;
    write_pipe(&c);
    struct sigaction now;
    cr_assert_eq(sigaction(SIGPIPE, NULL, &now), 0);
    cr_assert_eq(now.sa_handler, SIG_IGN);
    close(f.fds[0]);
    cr_assert_eq(tpio_transport_write(c.t, "x", 1), 0); /* would kill us under SIG_DFL */
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,lost:EPIPE");
}

static void dummy_handler(int sig) { (void)sig; }

Test(pipe, sigpipe_user_handler_kept, .timeout = 10)
{
    struct sigaction sa = {.sa_handler = dummy_handler};
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGPIPE, &sa, NULL), 0);
    th_conn_t c;
    write_pipe(&c);
    struct sigaction now;
    cr_assert_eq(sigaction(SIGPIPE, NULL, &now), 0);
    cr_assert_eq(now.sa_handler, dummy_handler);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    close(f.fds[0]);
}

Test(pipe, write_pipe_into_read_pipe_1mib, .timeout = 30)
{
    int fds[2];
    make_pipe(fds);
    th_conn_t r, w;
    open_read(&f, fds[0], &r);
    open_write(&f, fds[1], &w);
    const size_t total = 1 << 20;
    unsigned char *data = pattern(0, total);
    cr_assert_eq(tpio_transport_write(w.t, data, total), 0);
    cr_assert_eq(tpio_transport_write_eof(w.t), 0);
    cr_assert(th_run_until(th_fx.loop, &r.p->lost, TMO));
    cr_assert(th_run_until(th_fx.loop, &w.p->lost, TMO));
    cr_assert_eq(r.p->rxlen, total);
    cr_assert_eq(memcmp(r.p->rx, data, total), 0);
    cr_assert_str_eq(r.p->events, "made,data,eof,lost:0");
    cr_assert_str_eq(w.p->events, "made,pause,resume,lost:0");
    free(data);
}

/* ---- FIFOs ------------------------------------------------------------------------- */

/* A FIFO in the test's directory (th_fx_dir(): fini checks it is empty). */
typedef struct fifo {
    char path[128];
    int rd, wr;
} fifo_t;

static void fifo_open(fifo_t *ff)
{
    snprintf(ff->path, sizeof ff->path, "%s/fifo", th_fx_dir());
    cr_assert_eq(mkfifo(ff->path, 0600), 0);
    ff->rd = open(ff->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    cr_assert_geq(ff->rd, 0);
    ff->wr = open(ff->path, O_WRONLY | O_CLOEXEC);
    cr_assert_geq(ff->wr, 0);
    cr_assert_eq(fcntl(ff->wr, F_SETPIPE_SZ, PIPE_CAP), PIPE_CAP);
}

static void fifo_cleanup(fifo_t *ff)
{
    cr_assert_eq(unlink(ff->path), 0);
}

Test(pipe, fifo_write_pipe_to_read_pipe, .timeout = 20)
{
    fifo_t ff;
    fifo_open(&ff);
    th_conn_t r, w;
    open_read(&f, ff.rd, &r);
    open_write(&f, ff.wr, &w);
    const size_t total = 300 * 1000;
    unsigned char *data = pattern(0, total);
    cr_assert_eq(tpio_transport_write(w.t, data, 1000), 0);
    cr_assert_eq(tpio_transport_write(w.t, data + 1000, total - 1000), 0);
    cr_assert_eq(tpio_transport_write_eof(w.t), 0);
    cr_assert(th_run_until(th_fx.loop, &r.p->lost, TMO));
    cr_assert(th_run_until(th_fx.loop, &w.p->lost, TMO));
    cr_assert_eq(r.p->rxlen, total);
    cr_assert_eq(memcmp(r.p->rx, data, total), 0);
    cr_assert_str_eq(r.p->events, "made,data,eof,lost:0");
    cr_assert_str_eq(w.p->events, "made,pause,resume,lost:0");
    free(data);
    fifo_cleanup(&ff);
}

Test(pipe, fifo_reader_closes_while_idle, .timeout = 10)
{
    fifo_t ff;
    fifo_open(&ff);
    th_conn_t w;
    open_write(&f, ff.wr, &w);
    close(ff.rd);
    cr_assert(th_run_until(th_fx.loop, &w.p->lost, TMO));
    cr_assert_str_eq(w.p->events, "made,lost:0");
    fifo_cleanup(&ff);
}

Test(pipe, fifo_reader_closes_with_buffered_data, .timeout = 10)
{
    fifo_t ff;
    fifo_open(&ff);
    th_conn_t w;
    open_write(&f, ff.wr, &w);
    unsigned char *data = pattern(0, 100 * 1024);
    cr_assert_eq(tpio_transport_write(w.t, data, 100 * 1024), 0);
    cr_assert_eq(th_wbuf_size(w.t), 100 * 1024 - PIPE_CAP);
    close(ff.rd);
    cr_assert(th_run_until(th_fx.loop, &w.p->lost, TMO));
    cr_assert_str_eq(w.p->events, "made,lost:EPIPE");
    free(data);
    fifo_cleanup(&ff);
}

/* ---- fd checks ---------------------------------------------------------------------- */

Test(pipe, regular_file_is_einval_and_untouched, .timeout = 10)
{
    char path[] = "/tmp/tpio-pipe-file-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "content", 7), 7);
    int fl = fcntl(fd, F_GETFL);
    int fdfl = fcntl(fd, F_GETFD);
    off_t pos = lseek(fd, 0, SEEK_CUR);
    th_conn_t c = {0};
    cr_assert_eq(tpio_loop_connect_read_pipe(th_fx.loop, factory, &f, fd, th_on_conn, &c, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_connect_write_pipe(th_fx.loop, factory, &f, fd, th_on_conn, &c, NULL), -EINVAL);
    cr_assert_eq(fcntl(fd, F_GETFL), fl);
    cr_assert_eq(fcntl(fd, F_GETFD), fdfl);
    cr_assert_eq(lseek(fd, 0, SEEK_CUR), pos);
    /* A directory is not a pipe either. */
    int dfd = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert_geq(dfd, 0);
    int dfl = fcntl(dfd, F_GETFL);
    cr_assert_eq(tpio_loop_connect_read_pipe(th_fx.loop, factory, &f, dfd, th_on_conn, &c, NULL), -EINVAL);
    cr_assert_eq(fcntl(dfd, F_GETFL), dfl);
    /* Bad descriptors and arguments. */
    cr_assert_eq(tpio_loop_connect_read_pipe(th_fx.loop, factory, &f, -1, th_on_conn, &c, NULL), -EBADF);
    int fds[2];
    make_pipe(fds);
    cr_assert_eq(tpio_loop_connect_read_pipe(NULL, factory, &f, fds[0], th_on_conn, &c, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_connect_read_pipe(th_fx.loop, NULL, &f, fds[0], th_on_conn, &c, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_connect_write_pipe(th_fx.loop, factory, &f, fds[1], NULL, &c, NULL), -EINVAL);
    cr_assert_eq(fcntl(fds[0], F_GETFL) & O_NONBLOCK, 0);
    cr_assert_eq(fcntl(fds[1], F_GETFL) & O_NONBLOCK, 0);
    th_run_timer(th_fx.loop, 0.01, TMO);
    cr_assert_eq(c.calls, 0);
    cr_assert_eq(f.factory_calls, 0);
    close(fds[0]);
    close(fds[1]);
    close(dfd);
    close(fd);
    unlink(path);
}

/* /dev/null cannot be watched by epoll: a read pipe on it could never hear
 * of data and is refused; a write pipe works as asyncio's does, without
 * the loop, since the kernel takes every write at once. */
Test(pipe, unpollable_char_device_read_refused, .timeout = 10)
{
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    int fl = fcntl(fd, F_GETFL);
    th_conn_t c = {0};
    cr_assert_eq(tpio_loop_connect_read_pipe(th_fx.loop, factory, &f, fd, th_on_conn, &c, NULL), TPIO_ENOTWATCHABLE);
    cr_assert_eq(fcntl(fd, F_GETFL), fl);
    th_run_timer(th_fx.loop, 0.01, TMO);
    cr_assert_eq(c.calls, 0);
    cr_assert_eq(f.factory_calls, 0);
    close(fd);
}

static void never_sent(tpio_loop_t *loop, tpio_transport_t *t, uint64_t sent, int err,
                       void *arg)
{
    (void)loop, (void)t, (void)err, (void)sent, (void)arg;
    cr_assert_fail("a refused sendfile completed");
}

Test(pipe, unpollable_char_device_as_write_pipe, .timeout = 10)
{
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    th_conn_t c;
    open_write(&f, fd, &c);
    const size_t total = 1024 * 1024; /* far above the high watermark */
    unsigned char *data = pattern(0, total);
    cr_assert_eq(tpio_transport_write(c.t, data, total), 0);
    cr_assert_eq(th_wbuf_size(c.t), 0);
    tpio_buf_t iov[3] = {{data, 10}, {data + 10, 70000}, {data + 70010, 5}};
    cr_assert_eq(tpio_transport_writelines(c.t, iov, 3), 0);
    cr_assert_eq(th_wbuf_size(c.t), 0);
    cr_assert_str_eq(c.p->events, "made"); /* no pause: nothing was buffered */
    /* a writer that waits for writability could never run */
    FILE *file = tmpfile();
    cr_assert_not_null(file);
    cr_assert_eq(fwrite("abc", 1, 3, file), 3);
    cr_assert_eq(fflush(file), 0);
    cr_assert_eq(tpio_loop_sendfile(th_fx.loop, c.t, fileno(file), 0, 0, TPIO_ON, never_sent,
                                    NULL, NULL),
                 -ENOTSUP);
    fclose(file);
    th_run_timer(th_fx.loop, 0.02, TMO);
    cr_assert_str_eq(c.p->events, "made");
    cr_assert_eq(tpio_transport_write_eof(c.t), 0);
    cr_assert(th_is_closing(c.t));
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,lost:0");
    free(data);

    /* close() ends it the same way */
    fx_next();
    fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    open_write(&f, fd, &c);
    cr_assert_eq(tpio_transport_write(c.t, "gone", 4), 0);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,lost:0");
}

/* /dev/full refuses every write with ENOSPC: the write that meets it ends
 * the transport, as any write error does. */
Test(pipe, unpollable_write_error_ends_the_transport, .timeout = 10)
{
    int fd = open("/dev/full", O_WRONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    th_conn_t c;
    open_write(&f, fd, &c);
    cr_assert_eq(tpio_transport_write(c.t, "x", 1), 0);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,lost:ENOSPC");
}

/* ---- what each end does not have, extra info ------------------------------------------- */

Test(pipe, read_pipe_has_no_write_side, .timeout = 10)
{
    th_conn_t c;
    read_pipe(&c);
    tpio_buf_t iov = {.base = "x", .len = 1};
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_transport_write(c.t, "x", 1), -ENOTSUP);
    cr_assert_eq(tpio_transport_writelines(c.t, &iov, 1), -ENOTSUP);
    cr_assert_eq(tpio_transport_write_eof(c.t), -ENOTSUP);
    cr_assert_not(th_can_write_eof(c.t));
    cr_assert_eq(tpio_datagram_sendto(c.t, "x", 1, NULL, 0), -ENOTSUP);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(c.t, 100, 10), -ENOTSUP);
    size_t sz = 7, hi, lo;
    cr_assert_eq(tpio_transport_get_write_buffer_size(c.t, &sz), -ENOTSUP);
    cr_assert_eq(sz, 7);
    cr_assert_eq(tpio_transport_get_write_buffer_limits(c.t, &hi, &lo), -ENOTSUP);

    tpio_extra_t e;
    cr_assert_eq(tpio_transport_get_extra_info(c.t, "pipe", &e), 0);
    cr_assert_eq(e.type, TPIO_EXTRA_FD);
    cr_assert_eq(e.fd, f.fds[0]);
    cr_assert_eq(th_fd(c.t), f.fds[0]);
    cr_assert_eq(tpio_transport_get_extra_info(c.t, "socket", &e), -ENOENT);
    cr_assert_eq(e.type, TPIO_EXTRA_NONE);
    cr_assert_eq(tpio_transport_get_extra_info(c.t, "peername", &e), -ENOENT);
    cr_assert_eq(tpio_transport_get_extra_info(c.t, "sockname", &e), -ENOENT);
    cr_assert_eq(tpio_transport_get_peername(c.t, &ss, &sl), -ENOENT);
    cr_assert_eq(th_protocol(c.t), &c.p->base);
    cr_assert_eq(th_transport_loop(c.t), th_fx.loop);

    /* Nothing of that disturbed the transport. */
    cr_assert_eq(write(f.fds[1], "ok", 2), 2);
    close(f.fds[1]);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,data,eof,lost:0");
}

Test(pipe, write_pipe_has_no_read_side, .timeout = 10)
{
    th_conn_t c;
    write_pipe(&c);
    cr_assert_eq(tpio_transport_pause_reading(c.t), -ENOTSUP);
    cr_assert_eq(tpio_transport_resume_reading(c.t), -ENOTSUP);
    cr_assert_eq(tpio_datagram_sendto(c.t, "x", 1, NULL, 0), -ENOTSUP);
    tpio_extra_t e;
    cr_assert_eq(tpio_transport_get_extra_info(c.t, "pipe", &e), 0);
    cr_assert_eq(e.type, TPIO_EXTRA_FD);
    cr_assert_eq(e.fd, f.fds[1]);
    cr_assert_eq(th_fd(c.t), f.fds[1]);
    cr_assert_eq(tpio_transport_get_extra_info(c.t, "socket", &e), -ENOENT);
    cr_assert_eq(tpio_transport_get_extra_info(c.t, "peername", &e), -ENOENT);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(c.t, 1000, TPIO_LIMIT_DEFAULT), 0);
    size_t low = 0, high = 0;
    cr_assert_eq(tpio_transport_get_write_buffer_limits(c.t, &high, &low), 0);
    cr_assert_eq(high, 1000);
    cr_assert_eq(low, 250);
    cr_assert_eq(tpio_transport_write(c.t, "still works", 11), 0);
    char buf[16];
    cr_assert_eq(read(f.fds[0], buf, sizeof buf), 11);
    cr_assert_eq(memcmp(buf, "still works", 11), 0);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_str_eq(c.p->events, "made,lost:0");
    close(f.fds[0]);
}

/* A terminal whose other side closed answers read() with EIO: asyncio ends
 * the read pipe quietly (no error-handler report) with that error. */
Test(pipe, read_pipe_on_a_terminal_ends_quietly_on_eio, .timeout = 10)
{
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    cr_assert_geq(master, 0, "posix_openpt: %s", strerror(errno));
    cr_assert_eq(grantpt(master), 0);
    cr_assert_eq(unlockpt(master), 0);
    int slave = open(ptsname(master), O_RDWR | O_NOCTTY | O_CLOEXEC);
    cr_assert_geq(slave, 0);
    struct stat st;
    cr_assert_eq(fstat(master, &st), 0);
    cr_assert(S_ISCHR(st.st_mode), "a pty master is a character device");
    th_conn_t c;
    open_read(&f, master, &c);
    const char msg[] = "tty line\n";
    cr_assert_eq(write(slave, msg, sizeof msg - 1), (ssize_t)sizeof msg - 1);
    cr_assert(run_until_rx(th_fx.loop, c.p, 1));
    close(slave); /* the master's next read gets EIO */
    cr_assert(th_run_until(th_fx.loop, &c.p->lost, TMO));
    cr_assert_eq(c.p->lost_err, -EIO, "lost with %s", tpio_err_name(c.p->lost_err));
    cr_assert_eq(strncmp(c.p->events, "made,data", 9), 0, "%s", c.p->events);
    cr_assert_str_eq(c.p->events + strlen(c.p->events) - strlen("lost:EIO"), "lost:EIO");
    th_assert_no_reports(&th_fx.rep); /* it ended quietly */
}
