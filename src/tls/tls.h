/* The TLS layer: asyncio's SSL transport, a transport of its own kind on
 * top of any stream transport (CPython's sslproto.py, from uvloop). OpenSSL
 * runs over a BIO of the layer's own (bio.c) that reads the ciphertext
 * where the transport below put it and writes through that transport; the
 * layer is that transport's protocol (a BufferedProtocol) and the user's
 * protocol sees only plaintext. It sits above transport/ and below
 * create/, which asks it for a constructor when a call has TLS options. */
#ifndef TPIO_TLS_H
#define TPIO_TLS_H

#include "transport/transport.h"

#define TPIO__TLS_HANDSHAKE_TIMEOUT 60.0
#define TPIO__TLS_SHUTDOWN_TIMEOUT 30.0

/* A constructor for TLS connections (connect, accept, adopt): the stream
 * transport on the descriptor, the TLS transport on it, the handshake, and
 * then the factory. `server` for the accepting side; `host` the default
 * server_hostname of a client (NULL: none). The caller releases it with
 * tpio__ctor_release when done with it. -EINVAL, -ENOMEM, -ENOTSUP. */
TPIO__HIDDEN int tpio__tls_ctor_new(const tpio_tls_opts_t *opts, bool server,
                                    const char *host, const struct tpio__ctor **out);

#ifdef TPIO_HAVE_TLS

#include <openssl/ssl.h>

enum { TLS_HANDSHAKE, TLS_WRAPPED, TLS_SHUTDOWN, TLS_DONE };

/* What a connection needs of its constructor's options. */
struct tpio__tls_cfg {
    SSL_CTX *ctx;
    char *hostname; /* client: SNI and the name checked; NULL: neither */
    double handshake_timeout, shutdown_timeout;
    bool server;
};

struct tpio__tls {
    struct tpio_transport base;   /* the user's transport */
    tpio_protocol_t layer;        /* the protocol of the transport below */
    tpio_transport_t *inner;      /* referenced until this one is freed */
    SSL *ssl;
    uint8_t state;
    bool in_ssl;        /* inside an OpenSSL call: no upcall of flow control now */
    bool flow_dirty;    /* the transport below paused or resumed meanwhile */
    bool tcp_eof;       /* nothing more will come from below (EOF, or it ended) */
    bool drain_queued;
    bool own_buf;       /* get_buffer gives `inbuf` (the layer below decrypts) */
    bool inner_gone;    /* the transport below had its connection_lost */
    bool inner_started; /* the transport below runs (else it is abandoned) */
    bool notify_sent;   /* our close_notify is out */
    bool in_call;       /* inside the user's call: pause_writing only */
    bool flow_queued;   /* a resume_writing waits for the loop */
    bool opened;        /* the factory ran: connection_made is coming */
    bool lost_deferred; /* the end came first: connection_lost after it */
    bool in_lost;       /* inside the connection_lost of the one below */
    /* Ciphertext not yet consumed by OpenSSL: the current read (borrowed,
     * in the buffer the transport below just filled), then the stash, which
     * keeps what was left over when the protocol paused. */
    const unsigned char *in;
    size_t in_len;
    unsigned char *stash;
    size_t stash_off, stash_len, stash_cap;
    unsigned char *inbuf; /* own_buf's buffer, allocated while needed */
    /* Until the handshake ends: what the connection is for. */
    struct tpio__conn conn;
    tpio_protocol_t *start_proto; /* start_tls: the protocol to switch to */
    tpio_handle_t timer;
    tpio_handle_t req;  /* start_tls: for tpio_loop_cancel, until the handshake ends */
    int final_err;      /* connection_lost's, once DONE */
    int eof_err;        /* with tcp_eof: the end once what was read is delivered */
    double handshake_timeout, shutdown_timeout;
    char *alpn;
    struct tpio__node drain_node;
    struct tpio__node flow_node;
    struct tpio__node begin_node; /* start_tls: the handshake starts from the loop */
    /* A completion ended from the user's call (cancel, close), from the loop. */
    struct tpio__node done_node;
    int done_err;
};

/* ---- transport.c: what the user holds ------------------------------------------ */
/* A TLS transport over inner (not yet its protocol's), with SSL made from
 * cfg. On success inner is the layer's. -ENOMEM, TPIO_ETLS. */
TPIO__HIDDEN int tpio__tls_new(tpio_loop_t *loop, tpio_transport_t *inner,
                               const struct tpio__tls_cfg *cfg, struct tpio__tls **out);

/* ---- tls.c: the state machine ----------------------------------------------------- */
/* Encrypt and hand to the transport below; a failure ends the connection
 * (connection_lost tells the protocol). 0 or the error. */
TPIO__HIDDEN int tpio__tls_write(struct tpio__tls *s, const void *data, size_t len);
/* close(): flush, close_notify, then wait for the peer's (WRAPPED only). */
TPIO__HIDDEN int tpio__tls_shutdown(struct tpio__tls *s);
/* The end: the transport below closed (or aborted); its connection_lost
 * brings this one's, with err. Once. */
TPIO__HIDDEN void tpio__tls_finish(struct tpio__tls *s, int err, bool abort_inner);
/* DONE at once: no timer, no request (the transport's quiesce). */
TPIO__HIDDEN void tpio__tls_stop(struct tpio__tls *s);
/* Read below while the state and the user's reading want it. */
TPIO__HIDDEN void tpio__tls_sync_reading(struct tpio__tls *s);
/* Deliver from the loop what OpenSSL or the stash hold (no socket event
 * will come for it). */
TPIO__HIDDEN void tpio__tls_queue_drain(struct tpio__tls *s);
/* Flow control: the bytes the TLS transport holds are those waiting in the
 * transport below, whose watermarks are this one's; pause/resume cross
 * when they cross. Never inside an OpenSSL call (noted, applied after). */
TPIO__HIDDEN void tpio__tls_flow_tell(struct tpio__tls *s);
static inline void tpio__tls_flow(struct tpio__tls *s)
{
    if (s->in_ssl) {
        s->flow_dirty = true;
        return;
    }
    tpio_transport_t *t = &s->base;
    t->wsize = s->inner ? s->inner->wsize : 0;
    /* the common case: nothing to cross */
    if (__builtin_expect(!t->writing_paused && t->wsize <= t->high, 1))
        return;
    tpio__tls_flow_tell(s);
}
/* Start the handshake now that inner's protocol is the layer and it is
 * running (connection_made of the layer, or start_tls). */
TPIO__HIDDEN void tpio__tls_begin(struct tpio__tls *s);
/* Fail a connection before the handshake ended: its completion hears err,
 * the transport below is aborted. */
TPIO__HIDDEN void tpio__tls_fail(struct tpio__tls *s, int err);
/* The cancel of the request a handshake runs under (tpio__request_new's
 * cancel): it ends now, its completion hears -ECANCELED from the loop. */
TPIO__HIDDEN void tpio__tls_cancel(tpio_loop_t *loop, void *arg);
/* The same from inside the user's call (cancel, close, abort, a shutdown):
 * the completion comes from the loop. */
TPIO__HIDDEN void tpio__tls_fail_later(struct tpio__tls *s, int err);
/* Feed bytes that arrived before the layer took over (start_tls). */
TPIO__HIDDEN int tpio__tls_preload(struct tpio__tls *s, const void *data, size_t len);
TPIO__HIDDEN extern const tpio_protocol_ops_t tpio__tls_layer_ops;

/* ---- bio.c: OpenSSL's I/O over the layer ------------------------------------- */
TPIO__HIDDEN BIO *tpio__tls_bio_new(struct tpio__tls *s);
/* Bytes OpenSSL has not read yet. */
static inline size_t tpio__tls_input(const struct tpio__tls *s)
{
    return s->stash_len + s->in_len;
}
/* Keep the rest of the current read (borrowed) in the stash. -ENOMEM. */
TPIO__HIDDEN int tpio__tls_keep_input(struct tpio__tls *s);

/* ---- error.c: OpenSSL's errors as tpio codes ------------------------------------ */
/* The code for a failed OpenSSL call on ssl (ret its return value), and the
 * message behind tpio_tls_last_error(). */
TPIO__HIDDEN int tpio__tls_error(SSL *ssl, int ret);
/* Set the message behind tpio_tls_last_error() (printf-like). */
TPIO__HIDDEN void tpio__tls_set_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

#endif /* TPIO_HAVE_TLS */
#endif
