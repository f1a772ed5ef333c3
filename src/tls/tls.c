/* The TLS layer's state machine (sslproto.py's): HANDSHAKE, then WRAPPED
 * (plaintext both ways), then SHUTDOWN (our close_notify sent, the peer's
 * awaited) and DONE; and the layer itself, the protocol of the transport
 * below: ciphertext arrives through its get_buffer / buffer_updated and
 * leaves through its write (bio.c). transport.c is what the user holds.
 *
 * Two rules hold everywhere here. No protocol callback runs while OpenSSL
 * is inside a call (the BIO writes to the transport below, whose
 * pause_writing would otherwise call the user from inside SSL_write): flow
 * control noticed meanwhile is applied after. And the TLS transport ends
 * with the one below: closing it (after its buffer went out) or aborting
 * it, and connection_lost comes from inside that transport's
 * connection_lost, so that it comes once everything is over and the
 * socket, peername and sockname are still there during it. */
#include "tls/tls.h"

#include <openssl/err.h>
#include <string.h>

#define LAYER(p) tpio_container_of(p, struct tpio__tls, layer)

enum { R_MORE = 0, R_DATA = 1, R_CLOSED = 2 };

static void pump(struct tpio__tls *s);

/* ---- flow control -------------------------------------------------------------- */

static void flow_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct tpio__tls *s = tpio_container_of(arg, struct tpio__tls, flow_node);
    s->flow_queued = false;
    if (s->state != TLS_DONE)
        tpio__tls_flow(s);
    tpio__transport_unref(&s->base); /* the queued call's */
}

/* tpio__tls_flow's slow part: a watermark was crossed. Inside the user's
 * call only pause_writing may come (as asyncio's write): a resume then
 * waits for the loop. */
void tpio__tls_flow_tell(struct tpio__tls *s)
{
    tpio_transport_t *t = &s->base;
    if (t->closing || !t->made)
        return; /* nothing to tell: close() does not call the user back */
    tpio__maybe_pause_protocol(t);
    if (!t->writing_paused || t->wsize > t->low)
        return;
    if (!s->in_call) {
        tpio__maybe_resume_protocol(t);
    } else if (!s->flow_queued) {
        s->flow_queued = true;
        tpio__transport_ref(t);
        s->flow_node.cb = flow_cb;
        tpio__call_soon_node(t->loop, &s->flow_node);
    }
}

static void after_ssl(struct tpio__tls *s)
{
    s->in_ssl = false;
    if (s->flow_dirty) {
        s->flow_dirty = false;
        tpio__tls_flow(s);
    }
}

void tpio__tls_sync_reading(struct tpio__tls *s)
{
    tpio_transport_t *in = s->inner;
    if (!in || in->closing)
        return;
    if (s->state == TLS_DONE) {
        tpio_transport_pause_reading(in);
        return;
    }
    bool want = s->state == TLS_HANDSHAKE || s->state == TLS_SHUTDOWN ||
                (s->state == TLS_WRAPPED && s->base.made && !s->base.paused);
    if (want)
        tpio_transport_resume_reading(in);
    else
        tpio_transport_pause_reading(in);
}

/* A read can give something: ciphertext OpenSSL has not seen, or what it
 * holds (plaintext not delivered yet, records read ahead). Asked instead
 * of making the read that would only say WANT_READ, a whole SSL_read per
 * delivery; only a partial record read ahead still costs one. */
static bool readable(const struct tpio__tls *s)
{
    return tpio__tls_input(s) || SSL_has_pending(s->ssl);
}

/* What a drain would do: deliver, or end a connection whose peer left. */
static bool drain_needed(const struct tpio__tls *s) { return s->tcp_eof || readable(s); }

/* Why an OpenSSL call returned no data: it failed (an error is queued;
 * SSL_want_read may still be set then), it waits for input, or the peer's
 * close_notify came. SSL_get_error does the same, but needs an
 * ERR_clear_error before every call, which cost 1,500 instructions per
 * round trip (make bench's counts, four calls): the queue is cleared after
 * every failure instead, and when a connection starts. */
static int ssl_status(SSL *ssl, int rc)
{
    if (ERR_peek_error())
        return tpio__tls_error(ssl, rc);
    if (SSL_want_read(ssl))
        return R_MORE;
    if (SSL_get_shutdown(ssl) & SSL_RECEIVED_SHUTDOWN)
        return R_CLOSED;
    return tpio__tls_error(ssl, rc);
}

static void drain_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct tpio__tls *s = tpio_container_of(arg, struct tpio__tls, drain_node);
    s->drain_queued = false;
    if (s->state != TLS_DONE)
        pump(s);
    tpio__transport_unref(&s->base); /* the queued drain's */
}

/* No socket event will come for bytes already inside OpenSSL or the stash:
 * the loop delivers them (sslproto's _resume_reading). */
void tpio__tls_queue_drain(struct tpio__tls *s)
{
    if (s->drain_queued || !drain_needed(s))
        return;
    s->drain_queued = true;
    tpio__transport_ref(&s->base);
    s->drain_node.cb = drain_cb;
    tpio__call_soon_node(s->base.loop, &s->drain_node);
}

/* ---- the end ----------------------------------------------------------------- */

static void cancel_timer(struct tpio__tls *s)
{
    if (s->timer)
        tpio_loop_cancel(s->base.loop, s->timer);
    s->timer = 0;
}

static void retire_request(struct tpio__tls *s)
{
    if (s->req)
        tpio__request_done(s->base.loop, s->req);
    s->req = 0;
}

/* The end: the transport below is closed (after its buffer went out) or
 * aborted, and its connection_lost brings this one's, with err. */
void tpio__tls_finish(struct tpio__tls *s, int err, bool abort_inner)
{
    if (s->state == TLS_DONE)
        return;
    s->state = TLS_DONE;
    s->base.closing = true;
    s->final_err = err;
    cancel_timer(s);
    retire_request(s);
    if (s->inner_gone) {
        if (s->opened && !s->base.made)
            s->lost_deferred = true; /* connection_made is queued: after it */
        else if (s->in_lost && !s->in_call)
            tpio__transport_lost_now(&s->base, err); /* the fd is still there */
        else
            tpio__schedule_lost(&s->base, err); /* maybe inside the user's call */
        return;
    }
    tpio__tls_sync_reading(s);
    if (abort_inner)
        tpio_transport_abort(s->inner);
    else
        tpio_transport_close(s->inner);
}

static void fatal(struct tpio__tls *s, int err, bool report)
{
    if (report && s->base.made)
        tpio__transport_report(&s->base, "Fatal error on SSL transport", err);
    tpio__tls_finish(s, err, true);
}

void tpio__tls_fail(struct tpio__tls *s, int err)
{
    if (s->state != TLS_HANDSHAKE)
        return;
    tpio_connect_cb_t cb = s->conn.cb;
    void *cb_arg = s->conn.cb_arg;
    tpio_loop_t *loop = s->base.loop;
    tpio__tls_finish(s, err, true); /* s may be gone after this */
    /* A server's failed handshake (a scanner, a plain-HTTP client) is no
     * one's business: it never reached the factory. */
    if (cb)
        cb(loop, NULL, NULL, err, cb_arg);
}

static void failed_later_cb(tpio_loop_t *loop, void *arg)
{
    struct tpio__tls *s = tpio_container_of(arg, struct tpio__tls, done_node);
    tpio_connect_cb_t cb = s->conn.cb;
    void *cb_arg = s->conn.cb_arg;
    int err = s->done_err;
    tpio__transport_unref(&s->base); /* the queued completion's */
    tpio__tls_set_error(err == -ECANCELED ? "the TLS handshake was cancelled"
                                          : "the connection was closed during the TLS handshake");
    cb(loop, NULL, NULL, err, cb_arg);
}

void tpio__tls_fail_later(struct tpio__tls *s, int err)
{
    if (s->state != TLS_HANDSHAKE)
        return;
    if (!s->conn.cb) { /* a server's: no one to tell */
        tpio__tls_finish(s, err, true);
        return;
    }
    /* DONE from here on: nothing else calls conn.cb */
    s->done_err = err;
    tpio__transport_ref(&s->base);
    tpio__tls_finish(s, err, true);
    s->done_node.cb = failed_later_cb;
    tpio__call_soon_node(s->base.loop, &s->done_node);
}

void tpio__tls_cancel(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct tpio__tls *s = arg;
    s->req = 0; /* retired by the cancel */
    tpio__tls_fail_later(s, -ECANCELED); /* never inside tpio_loop_cancel itself */
}

/* ---- the handshake --------------------------------------------------------------- */

static void handshake_timeout(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct tpio__tls *s = arg;
    s->timer = 0;
    tpio__tls_set_error("the TLS handshake took longer than %g seconds", s->handshake_timeout);
    tpio__tls_fail(s, -ETIMEDOUT);
}

void tpio__tls_begin(struct tpio__tls *s)
{
    if (s->state != TLS_HANDSHAKE)
        return;
    ERR_clear_error(); /* what the program's own OpenSSL calls left */
    if (tpio_loop_call_later(s->base.loop, s->handshake_timeout, handshake_timeout, s,
                             &s->timer) < 0) {
        tpio__tls_set_error("out of memory");
        tpio__tls_fail(s, -ENOMEM);
        return;
    }
    tpio__tls_sync_reading(s);
    pump(s);
}

static void keep_alpn(struct tpio__tls *s)
{
    const unsigned char *p;
    unsigned len;
    SSL_get0_alpn_selected(s->ssl, &p, &len);
    if (len && (s->alpn = tpio__malloc(len + 1))) {
        memcpy(s->alpn, p, len);
        s->alpn[len] = 0;
    }
}

static void handshake_done(struct tpio__tls *s)
{
    tpio_transport_t *t = &s->base;
    cancel_timer(s);
    retire_request(s);
    s->state = TLS_WRAPPED;
    keep_alpn(s);
    struct tpio__conn c = s->conn;
    s->conn.cb = NULL;
    if (s->start_proto) {
        /* start_tls: the protocol had its connection_made on the old
         * transport (asyncio does not call it again). */
        t->proto = s->start_proto;
        t->made = true;
        tpio__tls_sync_reading(s);
        tpio__tls_flow(s);
        c.cb(t->loop, t, t->proto, 0, c.cb_arg);
        return;
    }
    c.set = NULL; /* a server's connection joined its set when it was accepted */
    int rc = tpio__transport_open(t, &c);
    s->opened = rc == 0;
    if (rc < 0) {
        tpio_loop_t *loop = t->loop;
        tpio__tls_finish(s, rc, true); /* s may be gone after this */
        if (c.cb)
            c.cb(loop, NULL, NULL, rc, c.cb_arg);
        return;
    }
    /* Until connection_made has run, what arrives waits in the socket. */
    tpio__tls_sync_reading(s);
}

static void step_handshake(struct tpio__tls *s)
{
    s->in_ssl = true;
    int rc = SSL_do_handshake(s->ssl);
    int err = rc == 1 ? 0 : ssl_status(s->ssl, rc);
    after_ssl(s);
    if (rc == 1)
        handshake_done(s);
    else if (err != R_MORE)
        tpio__tls_fail(s, err < 0 ? err : TPIO_ETLS);
    else if (s->tcp_eof || (s->inner && s->inner->lost_scheduled)) {
        tpio__tls_set_error("the peer closed the connection during the TLS handshake");
        tpio__tls_fail(s, -ECONNRESET);
    }
}

/* ---- reading --------------------------------------------------------------------- */

static int ssl_read(struct tpio__tls *s, void *buf, size_t len, size_t *got)
{
    s->in_ssl = true;
    int rc = SSL_read_ex(s->ssl, buf, len, got);
    int r = rc == 1 ? R_DATA : ssl_status(s->ssl, rc);
    after_ssl(s);
    return r;
}


/* The peer's close_notify: eof_received (its answer does not matter: TLS
 * has no half-close), then our close_notify and the end. */
static void peer_closed(struct tpio__tls *s)
{
    tpio_transport_t *t = &s->base;
    TPIO__UPCALL_VALUE(t, false, eof_received);
    if (s->state == TLS_WRAPPED) {
        t->closing = true;
        tpio__tls_shutdown(s);
    }
}

static void read_status(struct tpio__tls *s, int r)
{
    if (r == R_CLOSED)
        peer_closed(s);
    else if (r < 0)
        fatal(s, r, false);
}

/* Deliver plaintext while the protocol reads: decrypted straight into a
 * BufferedProtocol's buffer, or for a Protocol into the loop's layer
 * buffer, filled with as many records as are there before one
 * data_received. */
static void read_app(struct tpio__tls *s)
{
    tpio_transport_t *t = &s->base;
    bool more = readable(s); /* asked once per read: SSL_pending is a call */
    while (more && s->state == TLS_WRAPPED && tpio__reading_allowed(t)) {
        size_t got = 0;
        int r;
        if (t->proto->ops->get_buffer) {
            size_t len = 0;
            void *buf = TPIO__UPCALL_VALUE(t, (void *)NULL, get_buffer, -1, &len);
            if (t->closing)
                return;
            if (!buf || len == 0) {
                tpio__transport_report(t, "Fatal error: protocol.get_buffer() call failed.",
                                       TPIO_EPROTOCOL_BUFFER);
                tpio__tls_finish(s, TPIO_EPROTOCOL_BUFFER, true);
                return;
            }
            r = ssl_read(s, buf, len, &got);
            more = r == R_DATA && readable(s);
            /* get_buffer may have switched protocols (as in stream.c) */
            if (r == R_DATA && t->proto->ops->get_buffer)
                TPIO__UPCALL(t, buffer_updated, got);
            else if (r == R_DATA)
                TPIO__UPCALL(t, data_received, buf, got);
        } else {
            unsigned char *buf = t->loop->layer_buf;
            if (__builtin_expect(!buf, 0))
                buf = tpio__loop_layer_buf(t->loop);
            if (!buf) {
                fatal(s, -ENOMEM, true);
                return;
            }
            size_t cap = t->read_size < TPIO__LAYER_BUF_SIZE ? t->read_size : TPIO__LAYER_BUF_SIZE;
            size_t n;
            more = false;
            while ((r = ssl_read(s, buf + got, cap - got, &n)) == R_DATA) {
                got += n;
                if (!readable(s))
                    break;
                if (got == cap) {
                    more = true;
                    break;
                }
            }
            if (got)
                TPIO__UPCALL(t, data_received, buf, got);
        }
        if (r != R_DATA && r != R_MORE) {
            if (s->state == TLS_WRAPPED && !t->closing) /* not after the user's close */
                read_status(s, r);
            return;
        }
    }
}

/* ---- closing -------------------------------------------------------------------- */

static void shutdown_timeout(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct tpio__tls *s = arg;
    s->timer = 0;
    /* The peer did not answer (many TLS 1.3 servers never do). If all
     * that was written is gone, that is an end like any other (0); if the
     * peer did not even read it, the timeout still bounds close(): aborted,
     * and connection_lost says so. */
    size_t left = 0;
    if (!s->inner_gone)
        tpio_transport_get_write_buffer_size(s->inner, &left);
    tpio__tls_finish(s, left ? -ETIMEDOUT : 0, left != 0);
}

/* After our close_notify: read (and drop) until the peer's arrives. */
static void step_shutdown(struct tpio__tls *s)
{
    /* Not the loop's layer buffer: a close() from inside data_received
     * would overwrite the data the protocol is still looking at. */
    unsigned char scratch[4096];
    if (!s->notify_sent) {
        /* Once: called again, SSL_shutdown would fail on data that was on
         * its way before the peer saw ours. */
        s->notify_sent = true;
        s->in_ssl = true;
        ERR_clear_error();
        int rc = SSL_shutdown(s->ssl);
        ERR_clear_error();
        after_ssl(s);
        if (rc == 1) { /* the peer's came first */
            tpio__tls_finish(s, 0, false);
            return;
        }
        if (rc < 0) {
            tpio__tls_finish(s, 0, true);
            return;
        }
    }
    for (;;) {
        size_t n;
        int r = ssl_read(s, scratch, sizeof scratch, &n);
        if (r == R_DATA)
            continue; /* after close(), data is dropped (RFC 8446 6.1) */
        if (r != R_MORE) {
            tpio__tls_finish(s, 0, false);
            return;
        }
        break;
    }
    if (s->tcp_eof)
        tpio__tls_finish(s, 0, false);
}

int tpio__tls_shutdown(struct tpio__tls *s)
{
    s->state = TLS_SHUTDOWN;
    cancel_timer(s);
    if (tpio_loop_call_later(s->base.loop, s->shutdown_timeout, shutdown_timeout, s,
                             &s->timer) < 0) {
        tpio__tls_finish(s, -ENOMEM, true);
        return 0;
    }
    tpio__tls_sync_reading(s);
    step_shutdown(s);
    return 0;
}

/* ---- the pump: whatever the state, consume what arrived -------------------------- */

/* No reference is taken: the transport ends only from inside the
 * connection_lost of the one below (whose caller holds one), never inside
 * a callback of its reads, and each upcall holds its own. */
static void pump(struct tpio__tls *s)
{
    if (s->state == TLS_HANDSHAKE)
        step_handshake(s);
    if (s->state == TLS_WRAPPED) {
        read_app(s);
        /* All that could be read was: a partial record after EOF never
         * completes. */
        if (s->state == TLS_WRAPPED && s->tcp_eof && tpio__reading_allowed(&s->base)) {
            if (s->eof_err == TPIO_ETLS_EOF)
                tpio__tls_set_error("the peer closed the connection without close_notify");
            tpio__tls_finish(s, s->eof_err, true);
        }
    }
    if (s->state == TLS_SHUTDOWN)
        step_shutdown(s);
    if (s->state != TLS_DONE) {
        if (tpio__tls_keep_input(s) < 0)
            fatal(s, -ENOMEM, true);
    } else {
        s->in_len = 0;
    }
    if (__builtin_expect(s->stash != NULL, 0) && !s->stash_len) {
        tpio__free(s->stash);
        s->stash = NULL;
        s->stash_cap = s->stash_off = 0;
    }
}

int tpio__tls_preload(struct tpio__tls *s, const void *data, size_t len)
{
    s->in = data;
    s->in_len = len;
    return tpio__tls_keep_input(s);
}

/* ---- the layer: the protocol of the transport below -------------------------------- */

static void layer_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    (void)t;
    tpio__tls_begin(LAYER(p));
}

static void *layer_get_buffer(tpio_protocol_t *p, ssize_t hint, size_t *len)
{
    (void)hint;
    struct tpio__tls *s = LAYER(p);
    if (s->own_buf) {
        /* The layer below decrypts into this while its ciphertext sits in
         * the loop's buffers: TLS in TLS needs a buffer of its own. */
        if (!s->inbuf && !(s->inbuf = tpio__malloc(TPIO__LAYER_BUF_SIZE)))
            return NULL;
        *len = TPIO__LAYER_BUF_SIZE;
        return s->inbuf;
    }
    *len = s->inner->read_size;
    return s->base.loop->rbuf;
}

static void layer_buffer_updated(tpio_protocol_t *p, size_t n)
{
    struct tpio__tls *s = LAYER(p);
    if (s->state == TLS_DONE)
        return;
    s->in = s->own_buf ? s->inbuf : s->base.loop->rbuf;
    s->in_len = n;
    pump(s);
}

static bool layer_eof(tpio_protocol_t *p)
{
    struct tpio__tls *s = LAYER(p);
    s->tcp_eof = true;
    s->eof_err = TPIO_ETLS_EOF;
    if (s->state != TLS_DONE)
        pump(s);
    return true; /* the layer closes the transport below itself */
}

static void layer_lost(tpio_protocol_t *p, int err)
{
    struct tpio__tls *s = LAYER(p);
    s->inner_gone = true;
    s->in_lost = true;
    tpio__transport_ref(&s->base); /* the end may come inside */
    switch (s->state) {
    case TLS_HANDSHAKE:
        if (err >= 0) {
            err = -ECONNRESET;
            tpio__tls_set_error("the peer closed the connection during the TLS handshake");
        } else {
            tpio__tls_set_error("%s during the TLS handshake", tpio_strerror(err));
        }
        tpio__tls_fail(s, err);
        break;
    case TLS_WRAPPED:
        /* What was read already is delivered first (now, or once the
         * protocol reads: connection_made may still be to come), as after
         * an EOF; then the end, with the error of the one below. */
        if (!s->tcp_eof || err)
            s->eof_err = err ? err : TPIO_ETLS_EOF;
        s->tcp_eof = true;
        pump(s);
        break;
    case TLS_SHUTDOWN:
        tpio__tls_finish(s, 0, true);
        break;
    default:
        tpio__transport_lost_now(&s->base, s->final_err);
        break;
    }
    s->in_lost = false;
    tpio__transport_unref(&s->base);
}

static void layer_flow(tpio_protocol_t *p) { tpio__tls_flow(LAYER(p)); }

const tpio_protocol_ops_t tpio__tls_layer_ops = {
    .connection_made = layer_made,
    .connection_lost = layer_lost,
    .pause_writing = layer_flow,
    .resume_writing = layer_flow,
    .get_buffer = layer_get_buffer,
    .buffer_updated = layer_buffer_updated,
    .eof_received = layer_eof,
};

/* ---- writing ------------------------------------------------------------------------ */

int tpio__tls_write(struct tpio__tls *s, const void *data, size_t len)
{
    size_t put;
    s->in_ssl = true;
    int rc = SSL_write_ex(s->ssl, data, len, &put);
    int err = rc == 1 ? 0 : tpio__tls_error(s->ssl, rc);
    after_ssl(s);
    if (err) {
        /* Inside the caller's write: connection_lost tells the protocol. */
        fatal(s, err, false);
        return err;
    }
    return 0;
}

void tpio__tls_stop(struct tpio__tls *s)
{
    s->state = TLS_DONE;
    cancel_timer(s);
    retire_request(s);
}
