/* Review of the TLS layer: each test is one bug found by reading src/tls/,
 * written as what the contract of include/tpio.h says should happen. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <openssl/err.h>
#include <semaphore.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <tpio.h>
#include "helpers.h"
#include "tls_helpers.h"

#define TMO 30

TestSuite(tls_review, .init = th_fx_init, .fini = th_fx_fini);

/* ---- a protocol with knobs, recording through th_proto_ops ---------------------- */

enum { ON_DATA_NONE, ON_DATA_ABORT, ON_DATA_CLOSE_CHECK };

typedef struct rv {
    th_proto_t p;          /* first: th_on_conn finds it */
    int on_second;         /* what the second data_received does */
    bool pause_first;      /* pause_reading in the first data_received */
    size_t read_size;      /* set in connection_made (0: leave it) */
    size_t datas;
    bool in_user_call;     /* inside our own call into the library */
    bool lost_in_user_call;
    bool clobbered;        /* the borrowed data changed under us */
    bool close_first;      /* ON_DATA_CLOSE_CHECK on the first data */
} rv_t;

static rv_t *RV(tpio_protocol_t *bp) { return tpio_container_of(bp, rv_t, p.base); }

static void rv_made(tpio_protocol_t *bp, tpio_transport_t *t)
{
    rv_t *r = RV(bp);
    th_proto_ops.connection_made(bp, t);
    if (r->read_size)
        cr_assert_eq(tpio_transport_set_read_size(t, r->read_size), 0);
}

static void rv_data(tpio_protocol_t *bp, const void *d, size_t n)
{
    rv_t *r = RV(bp);
    tpio_transport_t *t = r->p.t;
    th_proto_ops.data_received(bp, d, n);
    size_t k = r->datas++;
    if (k == 0 && r->pause_first)
        tpio_transport_pause_reading(t);
    int what = k == 0 ? (r->close_first ? ON_DATA_CLOSE_CHECK : ON_DATA_NONE) : r->on_second;
    if (what == ON_DATA_ABORT) {
        r->in_user_call = true;
        tpio_transport_abort(t);
        r->in_user_call = false;
    } else if (what == ON_DATA_CLOSE_CHECK) {
        unsigned char saved[64];
        size_t m = n < sizeof saved ? n : sizeof saved;
        memcpy(saved, d, m);
        r->in_user_call = true;
        tpio_transport_close(t);
        r->in_user_call = false;
        /* borrowed until this callback returns: still the same bytes */
        r->clobbered = memcmp(saved, d, m) != 0;
    }
}

static void rv_lost(tpio_protocol_t *bp, int err)
{
    rv_t *r = RV(bp);
    if (r->in_user_call)
        r->lost_in_user_call = true;
    th_proto_ops.connection_lost(bp, err);
}

static tpio_protocol_ops_t rv_ops;
static void rv_init_ops(void)
{
    rv_ops = th_proto_ops;
    rv_ops.connection_made = rv_made;
    rv_ops.data_received = rv_data;
    rv_ops.connection_lost = rv_lost;
}

static rv_t *rv_new(void)
{
    rv_init_ops();
    rv_t *r = calloc(1, sizeof *r);
    cr_assert_not_null(r);
    r->p.base.ops = &rv_ops;
    return r;
}

static void rv_free(void *p)
{
    rv_t *r = p;
    free(r->p.rx);
    free(r);
}

static rv_t *the_rv;
static tpio_protocol_t *rv_factory(void *arg)
{
    (void)arg;
    return &the_rv->p.base;
}

/* ---- a TLS server transport (connect_accepted_socket) against a peer thread --------- */

typedef struct pcase {
    th_conn_t c;
    th_peer_t *peer;
    SSL_CTX *sctx, *cctx;
    sem_t written, go, shut;
    int fd;             /* the tpio side's socket */
} pcase_t;

static void pc_start(pcase_t *pc, th_peer_fn fn, const tpio_tls_opts_t *extra, bool pause_in_made)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sem_init(&pc->written, 0, 0);
    sem_init(&pc->go, 0, 0);
    sem_init(&pc->shut, 0, 0);
    pc->fd = sv[0];
    pc->sctx = th_tls_server_ctx(0, 0);
    pc->cctx = th_tls_client_ctx(0, 0);
    tpio_tls_opts_t tls = extra ? *extra : TPIO_OPTS(tpio_tls_opts_t);
    tls.ctx = pc->sctx;
    the_rv->p.pause_in_made = pause_in_made;
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, rv_factory, NULL, sv[0], &tls,
                                                   th_on_conn, &pc->c, NULL),
                 0);
    pc->peer = th_peer_start(sv[1], pc->cctx, false, fn, pc);
    cr_assert(th_run_until(th_fx.loop, &pc->c.done, TH_TMO));
    cr_assert_eq(pc->c.err, 0, "%s: %s", tpio_err_name(pc->c.err), tpio_tls_last_error());
}

static void pc_end(pcase_t *pc)
{
    th_peer_join(pc->peer);
    SSL_CTX_free(pc->sctx);
    SSL_CTX_free(pc->cctx);
    sem_destroy(&pc->written);
    sem_destroy(&pc->go);
    sem_destroy(&pc->shut);
}

/* The peer: one record, optionally its close_notify, then (told to) it
 * shuts its socket both ways, so that tpio's next send fails (EPIPE). */
static bool peer_notify;
static void write_then_vanish(th_peer_t *pr, SSL *ssl, void *arg)
{
    pcase_t *pc = arg;
    cr_assert_eq(pr->handshake, 1);
    SSL_write(ssl, "onetwothree", 11);
    if (peer_notify)
        SSL_shutdown(ssl);
    sem_post(&pc->written);
    sem_wait(&pc->go);
    shutdown(pr->fd, SHUT_RDWR);
    sem_post(&pc->shut);
}

/* Deliver "one" (read size 3) and pause; then the transport below ends
 * (a send fails) while "twothree" waits in OpenSSL, and reading resumes. */
static void lost_below_with_data_pending(pcase_t *pc)
{
    th_proto_t *p = &the_rv->p;
    pc_start(pc, write_then_vanish, NULL, true);
    sem_wait(&pc->written); /* all of it is in the socket now */
    cr_assert_eq(tpio_transport_set_read_size(pc->c.t, 3), 0);
    cr_assert_eq(tpio_transport_resume_reading(pc->c.t), 0);
    cr_assert(th_run_until_count(th_fx.loop, &p->rxlen, 3, TH_TMO), "%s", p->events);
    cr_assert_eq(memcmp(p->rx, "one", 3), 0);
    th_run_iters(th_fx.loop, 3);
    cr_assert_eq(p->rxlen, 3, "paused");
    sem_post(&pc->go);
    sem_wait(&pc->shut);
    cr_assert_eq(tpio_transport_set_read_size(pc->c.t, 0), 0);
    /* the send fails: the transport below schedules its connection_lost */
    cr_assert_eq(tpio_transport_write(pc->c.t, "x", 1), 0);
    /* and resuming queues the delivery of what is held, behind it */
    cr_assert_eq(tpio_transport_resume_reading(pc->c.t), 0);
}

/* Found in review (fixed): the delivery made from inside the connection_lost of the transport
 * below (layer_lost -> pump -> read_app) runs with s->in_lost set, so an
 * abort() (or close()) the protocol makes inside that data_received goes
 * through tpio__tls_finish's in_lost branch, tpio__transport_lost_now:
 * connection_lost runs inside the user's own abort() call. The contract:
 * "close() and abort() only schedule connection_lost". */
Test(tls_review, abort_while_delivering_after_the_end_schedules_lost, .timeout = TMO)
{
    the_rv = th_fx_own_with(rv_new(), rv_free);
    the_rv->pause_first = true;
    the_rv->on_second = ON_DATA_ABORT;
    peer_notify = false;
    pcase_t pc = {0};
    lost_below_with_data_pending(&pc);
    th_proto_t *p = &the_rv->p;
    cr_assert(th_run_until(th_fx.loop, &p->lost, TH_TMO), "%s", p->events);
    cr_expect_eq(p->rxlen, 11, "everything read was delivered (%zu)", p->rxlen);
    cr_expect_not(the_rv->lost_in_user_call,
                  "connection_lost ran inside the protocol's own abort() call; events: %s",
                  p->events);
    pc_end(&pc);
}

/* Bug, the same path with the peer's close_notify behind the data: the
 * protocol aborts in data_received, connection_lost runs inside abort()
 * (and the transport's protocol is set to NULL), then read_app goes on to
 * read_status(R_CLOSED) -> peer_closed -> eof_received on a transport whose
 * connection_lost already ran: a callback after connection_lost, through
 * t->proto == NULL (the process crashes). */
Test(tls_review, abort_before_a_pending_close_notify_ends_quietly, .timeout = TMO)
{
    the_rv = th_fx_own_with(rv_new(), rv_free);
    the_rv->pause_first = true;
    the_rv->on_second = ON_DATA_ABORT;
    peer_notify = true;
    pcase_t pc = {0};
    lost_below_with_data_pending(&pc);
    th_proto_t *p = &the_rv->p;
    cr_assert(th_run_until(th_fx.loop, &p->lost, TH_TMO), "%s", p->events);
    th_run_iters(th_fx.loop, 3);
    cr_expect_not(the_rv->lost_in_user_call, "connection_lost inside abort(); events: %s",
                  p->events);
    cr_expect_str_eq(p->events, "made,data,lost:0");
    pc_end(&pc);
}

/* ---- close() inside data_received overwrites the bytes being delivered ------------- */

static void write_then_read_all(th_peer_t *pr, SSL *ssl, void *arg)
{
    (void)arg;
    cr_assert_eq(pr->handshake, 1);
    SSL_write(ssl, "0123456789ABCDEFGHIJ", 20);
    char b[256];
    size_t n;
    while (SSL_read_ex(ssl, b, sizeof b, &n) == 1)
        ;
    SSL_shutdown(ssl);
    while (recv(pr->fd, b, sizeof b, 0) > 0)
        ;
}

/* Found in review (fixed): a Protocol's data_received gets plaintext in the loop's layer_buf
 * (read_app); close() inside it runs step_shutdown, which reads (and
 * drops) what OpenSSL still holds into the same layer_buf as scratch: the
 * bytes the callback was handed change under it before it returns. The
 * contract: data passed to data_received is valid until the callback
 * returns (the same happens when the callback closes another TLS
 * transport of the loop). */
Test(tls_review, close_in_data_received_keeps_the_borrowed_data, .timeout = TMO)
{
    the_rv = th_fx_own_with(rv_new(), rv_free);
    the_rv->read_size = 4;
    the_rv->close_first = true;
    pcase_t pc = {0};
    pc_start(&pc, write_then_read_all, NULL, false);
    th_proto_t *p = &the_rv->p;
    cr_assert(th_run_until(th_fx.loop, &p->lost, TH_TMO), "%s", p->events);
    cr_assert_eq(the_rv->datas, 1);
    cr_assert_eq(p->rxlen, 4);
    cr_expect_not(the_rv->clobbered,
                  "the data handed to data_received changed inside close() (it was \"%.4s\")",
                  (const char *)p->rx);
    cr_expect_not(the_rv->lost_in_user_call);
    pc_end(&pc);
}

/* ---- shutdown_timeout does not bound close() when the peer reads nothing ------------ */

static void handshake_then_stall(th_peer_t *pr, SSL *ssl, void *arg)
{
    pcase_t *pc = arg;
    (void)ssl;
    cr_assert_eq(pr->handshake, 1);
    sem_wait(&pc->go); /* reads nothing until told */
    char b[65536];
    while (recv(pr->fd, b, sizeof b, 0) > 0)
        ;
}

/* Found in review (fixed): the shutdown timer ends with tpio__tls_finish(s, 0, false), a
 * graceful close() of the transport below, which waits for its whole
 * buffer to go out: a peer that reads nothing keeps the connection open
 * for ever (asyncio's _check_shutdown_timeout aborts). The contract:
 * "the peer's close_notify is awaited for up to shutdown_timeout, then the
 * socket is closed and connection_lost(0) runs". A loop shutdown in CLOSE
 * mode then never finishes either. */
Test(tls_review, shutdown_timeout_bounds_close_when_the_peer_reads_nothing, .timeout = TMO)
{
    the_rv = th_fx_own_with(rv_new(), rv_free);
    tpio_tls_opts_t o = TPIO_OPTS(tpio_tls_opts_t, .shutdown_timeout = 0.3);
    pcase_t pc = {0};
    pc_start(&pc, handshake_then_stall, &o, false);
    th_proto_t *p = &the_rv->p;
    static unsigned char blk[1 << 20];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(tpio_transport_write(pc.c.t, blk, sizeof blk), 0);
    cr_assert(th_wbuf_size(pc.c.t) > 0);
    cr_assert_eq(tpio_transport_close(pc.c.t), 0);
    double t0 = th_now_s();
    bool ended = th_run_until(th_fx.loop, &p->lost, 3.0);
    cr_expect(ended, "no connection_lost %.1f s after close() with shutdown_timeout 0.3 "
                     "(events: %s, %zu bytes still buffered below)",
              th_now_s() - t0, p->events, ended ? 0 : th_wbuf_size(pc.c.t));
    cr_expect(strstr(p->events, "lost:ETIMEDOUT") != NULL,
              "what was written never went: the end says so (%s)", p->events);
    sem_post(&pc.go); /* let it drain so that everything ends */
    cr_assert(th_run_until(th_fx.loop, &p->lost, TH_TMO), "%s", p->events);
    pc_end(&pc);
}

/* ---- start_tls calls the old protocol's pause_writing inside the call -------------- */

/* Found in review (fixed): tpio__tls_new pushes the TLS transport's default watermarks (64 KiB)
 * down with tls_limits_changed -> tpio_transport_set_write_buffer_limits(t),
 * while t's protocol is still the user's old one: with more than that
 * buffered (under the user's own, higher, limits) the old protocol gets
 * pause_writing inside tpio_loop_start_tls. The contract: no callback
 * inside the user's call but pause_writing inside write / writelines /
 * set_write_buffer_limits; and the user's limits on t are overridden. */
Test(tls_review, start_tls_calls_no_callback_inside_the_call, .timeout = TMO)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    th_conn_t c0 = {0};
    th_proto_t tmpl = {.base.ops = &th_proto_ops};
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, th_factory, &tmpl, sv[0], NULL,
                                                   th_on_conn, &c0, NULL),
                 0);
    cr_assert(th_run_until(th_fx.loop, &c0.done, TH_TMO));
    th_fx_own(c0.p);
    tpio_transport_t *t = c0.t;
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, 16 << 20, 1 << 20), 0);
    static unsigned char blk[1 << 20];
    cr_assert_eq(tpio_transport_write(t, blk, sizeof blk), 0); /* the peer reads nothing */
    cr_assert(th_wbuf_size(t) > 200000, "%zu", th_wbuf_size(t));
    cr_assert_str_eq(c0.p->events, "made");

    SSL_CTX *cctx = th_tls_client_ctx(0, 0);
    th_proto_t *next = th_fx_own(th_proto_new(&th_proto_ops));
    th_conn_t c = {0};
    tpio_handle_t h = 0;
    tpio_tls_opts_t o = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx, .server_hostname = "localhost");
    cr_assert_eq(tpio_loop_start_tls(th_fx.loop, t, &next->base, &o, th_on_conn, &c, &h), 0);
    cr_expect_str_eq(c0.p->events, "made",
                     "a callback of the old protocol inside tpio_loop_start_tls");
    cr_expect_str_eq(next->events, "");
    /* clean up: cancel the handshake (t is aborted with it) */
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h), 0);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, -ECANCELED);
    th_run_iters(th_fx.loop, 3);
    close(sv[1]);
    SSL_CTX_free(cctx);
}
