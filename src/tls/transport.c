/* The TLS transport as its user sees it: the transport's table (write,
 * close, abort, reading, flow control, extra info), making one on a
 * transport below, and the typed getter. What happens on the wire is
 * tls.c's. */
#include "tls/tls.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <string.h>

#define T(t) ((struct tpio__tls *)(t))

/* What the TLS transport's protocol is before the factory gave one (and
 * after a failed handshake): every callback the base class's default. */
static const tpio_protocol_ops_t no_ops;
static tpio_protocol_t placeholder = {&no_ops};

/* ---- the transport's table -------------------------------------------------------- */

/* close() and abort() are the user's calls (a server's close_clients, a
 * shutdown's too): whatever they end is told from the loop. */
static int tls_close(tpio_transport_t *t)
{
    struct tpio__tls *s = T(t);
    if (t->closing)
        return 0;
    t->closing = true;
    bool was = s->in_call;
    s->in_call = true;
    if (s->state == TLS_HANDSHAKE)
        tpio__tls_fail_later(s, -ECONNABORTED);
    else if (s->state == TLS_WRAPPED)
        tpio__tls_shutdown(s);
    s->in_call = was;
    return 0;
}

static int tls_abort(tpio_transport_t *t)
{
    struct tpio__tls *s = T(t);
    t->closing = true;
    bool was = s->in_call;
    s->in_call = true;
    if (s->state == TLS_HANDSHAKE)
        tpio__tls_fail_later(s, -ECONNABORTED);
    else if (s->state != TLS_DONE)
        tpio__tls_finish(s, 0, true);
    else if (!s->inner_gone)
        tpio_transport_abort(s->inner); /* a close still flushing below */
    s->in_call = was;
    return 0;
}


/* TLS 1.3 records carry up to 16 KiB: small buffers of one writelines go
 * into one record instead of one each. */
#define GATHER_MAX 16384

/* Out of line: its buffer would put a stack-protector check on the one
 * buffer path. */
static __attribute__((noinline)) int write_gathered(struct tpio__tls *s,
                                                    const struct iovec *iov, int cnt)
{
    unsigned char buf[GATHER_MAX];
    size_t off = 0;
    for (int i = 0; i < cnt; i++) {
        memcpy(buf + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    return tpio__tls_write(s, buf, off);
}

static int tls_write(tpio_transport_t *t, const struct iovec *iov, int cnt, size_t total)
{
    struct tpio__tls *s = T(t);
    if (total == 0 || t->closing || s->state != TLS_WRAPPED)
        return 0; /* dropped after close, as for any transport */
    int rc = 0;
    bool was = s->in_call;
    s->in_call = true;
    if (cnt > 1 && total <= GATHER_MAX) {
        rc = write_gathered(s, iov, cnt);
    } else {
        for (int i = 0; i < cnt && rc == 0 && s->state == TLS_WRAPPED; i++)
            if (iov[i].iov_len)
                rc = tpio__tls_write(s, iov[i].iov_base, iov[i].iov_len);
    }
    if (rc == 0)
        tpio__tls_flow(s);
    s->in_call = was;
    return rc == -ENOMEM ? rc : 0;
}

/* tpio_transport_write's entry: one buffer, one SSL_write. */
static int tls_write1(tpio_transport_t *t, const void *data, size_t len)
{
    struct tpio__tls *s = T(t);
    if (len == 0 || t->closing || s->state != TLS_WRAPPED)
        return 0;
    bool was = s->in_call;
    s->in_call = true;
    int rc = tpio__tls_write(s, data, len);
    if (rc == 0)
        tpio__tls_flow(s);
    s->in_call = was;
    return rc == -ENOMEM ? rc : 0;
}

static int tls_write_eof(tpio_transport_t *t)
{
    (void)t;
    return -ENOTSUP; /* the specification: SSL has no half-close */
}

static void tls_reading_changed(tpio_transport_t *t)
{
    struct tpio__tls *s = T(t);
    tpio__tls_sync_reading(s);
    if (tpio__reading_allowed(t))
        tpio__tls_queue_drain(s);
}

static void tls_started(tpio_transport_t *t)
{
    struct tpio__tls *s = T(t);
    if (s->lost_deferred) {
        /* the transport below ended before connection_made could run */
        tpio__schedule_lost(t, s->final_err);
        return;
    }
    tpio__tls_sync_reading(s);
    tpio__tls_flow(s);
    if (tpio__reading_allowed(t))
        tpio__tls_queue_drain(s);
}

static size_t tls_write_buffer_size(const tpio_transport_t *t)
{
    const struct tpio__tls *s = T(t);
    size_t n = 0;
    if (s->inner && !s->inner->lost_scheduled)
        tpio_transport_get_write_buffer_size(s->inner, &n);
    return n;
}

static void tls_limits_changed(tpio_transport_t *t)
{
    struct tpio__tls *s = T(t);
    if (!s->inner)
        return;
    bool was = s->in_call; /* the user's call: no resume_writing inside it */
    s->in_call = true;
    tpio_transport_set_write_buffer_limits(s->inner,
                                           t->high > SSIZE_MAX ? SSIZE_MAX : (ssize_t)t->high,
                                           t->low > SSIZE_MAX ? SSIZE_MAX : (ssize_t)t->low);
    s->in_call = was;
}

static int tls_extra(const tpio_transport_t *t, const char *name, tpio_extra_t *out)
{
    const struct tpio__tls *s = T(t);
    void *ptr = NULL;
    const char *str = NULL;
    if (strcmp(name, "sslcontext") == 0) {
        ptr = SSL_get_SSL_CTX(s->ssl);
    } else if (strcmp(name, "ssl_object") == 0) {
        ptr = s->ssl;
    } else if (strcmp(name, "peercert") == 0) {
        if (!(ptr = SSL_get0_peer_certificate(s->ssl)))
            return -ENOENT;
    } else if (strcmp(name, "cipher") == 0) {
        const SSL_CIPHER *c = SSL_get_current_cipher(s->ssl);
        if (!c || !(str = SSL_CIPHER_get_name(c)))
            return -ENOENT;
    } else if (strcmp(name, "alpn_protocol") == 0) {
        if (!(str = s->alpn))
            return -ENOENT;
    } else if (strcmp(name, "compression") == 0) {
        return -ENOENT;
    } else {
        return s->inner ? tpio_transport_get_extra_info(s->inner, name, out) : -ENOENT;
    }
    if (ptr) {
        out->type = TPIO_EXTRA_PTR;
        out->ptr = ptr;
    } else {
        out->type = TPIO_EXTRA_STR;
        out->str = str;
    }
    return 0;
}

static int tls_fd(const tpio_transport_t *t)
{
    const struct tpio__tls *s = T(t);
    int fd;
    int rc = s->inner ? tpio_transport_get_fd(s->inner, &fd) : -EBADF;
    return rc < 0 ? rc : fd;
}

static void tls_quiesce(tpio_transport_t *t)
{
    struct tpio__tls *s = T(t);
    tpio__tls_stop(s);
}

/* The transport below is ending already (this one ends from inside its
 * connection_lost); only a transport that never ran has one left. */
static void tls_teardown(tpio_transport_t *t) { (void)t; }

static void tls_destroy(tpio_transport_t *t)
{
    struct tpio__tls *s = T(t);
    SSL_free(s->ssl);
    tpio__free(s->stash);
    tpio__free(s->inbuf);
    tpio__free(s->alpn);
    if (s->inner && !s->inner_started) {
        s->inner->refs--; /* ours; it never ran: the fd is the caller's */
        tpio__transport_abandon(s->inner);
    } else if (s->inner) {
        tpio__transport_unref(s->inner);
    }
    tpio__free(s);
}

static const struct tpio__transport_vt tls_vt = {
    .close = tls_close,
    .abort = tls_abort,
    .write = tls_write,
    .write1 = tls_write1,
    .write_eof = tls_write_eof,
    .can_write_eof = false,
    .reading_changed = tls_reading_changed,
    .stream_reads = true,
    .extra_info = tls_extra,
    .fd = tls_fd,
    .write_buffer_size = tls_write_buffer_size,
    .limits_changed = tls_limits_changed,
    .started = tls_started,
    .quiesce = tls_quiesce,
    .teardown = tls_teardown,
    .destroy = tls_destroy,
};

/* ---- making one ------------------------------------------------------------------ */

static int set_hostname(SSL *ssl, const char *name)
{
    unsigned char ip[16];
    if (inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1)
        /* An address is checked as one, and sent as no SNI (RFC 6066 3). */
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1 ? 0 : -ENOMEM;
    if (SSL_set_tlsext_host_name(ssl, name) != 1 || SSL_set1_host(ssl, name) != 1)
        return -ENOMEM;
    return 0;
}

int tpio__tls_new(tpio_loop_t *loop, tpio_transport_t *inner, const struct tpio__tls_cfg *cfg,
                  struct tpio__tls **out)
{
    struct tpio__tls *s = tpio__calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    tpio__transport_init(&s->base, loop, &tls_vt, TPIO_TRANSPORT_TLS);
    s->base.proto = &placeholder;
    s->layer.ops = &tpio__tls_layer_ops;
    s->handshake_timeout = cfg->handshake_timeout;
    s->shutdown_timeout = cfg->shutdown_timeout;
    s->own_buf = inner->kind == TPIO_TRANSPORT_TLS;
    int rc = -ENOMEM;
    BIO *bio = NULL;
    if (!(s->ssl = SSL_new(cfg->ctx)) || !(bio = tpio__tls_bio_new(s)))
        goto fail;
    SSL_set_bio(s->ssl, bio, bio);
    SSL_set_mode(s->ssl, SSL_MODE_RELEASE_BUFFERS);
    /* One BIO read per record instead of two (header, then body): 400
     * instructions less per 1 KiB round trip (make bench's counts). */
    SSL_set_read_ahead(s->ssl, 1);
    SSL_set_options(s->ssl, SSL_OP_NO_RENEGOTIATION);
    if (cfg->server)
        SSL_set_accept_state(s->ssl);
    else
        SSL_set_connect_state(s->ssl);
    if (cfg->hostname && *cfg->hostname && (rc = set_hostname(s->ssl, cfg->hostname)) < 0)
        goto fail;
    /* Referenced from here on; destroy gives it back. */
    s->inner = inner;
    tpio__transport_ref(inner);
    tpio__transport_disown(inner);
    /* The watermarks of the transport below become this one's (start_tls
     * leaves the user's as they were, and calls nobody back). */
    s->base.high = inner->high;
    s->base.low = inner->low;
    *out = s;
    return 0;
fail:
    ERR_clear_error();
    tpio__transport_abandon(&s->base);
    return rc;
}

int tpio_tls_get_cipher(const tpio_transport_t *t, const char **name, const char **version,
                        int *bits)
{
    if (!t)
        return -EINVAL;
    if (t->vt != &tls_vt)
        return -ENOTSUP;
    const struct tpio__tls *s = T(t);
    const SSL_CIPHER *c = SSL_get_current_cipher(s->ssl);
    if (!c)
        return -ENOENT;
    if (name)
        *name = SSL_CIPHER_get_name(c);
    if (version)
        *version = SSL_get_version(s->ssl);
    if (bits)
        *bits = SSL_CIPHER_get_bits(c, NULL);
    return 0;
}
