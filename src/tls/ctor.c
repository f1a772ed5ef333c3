/* Where TLS connections come from: a constructor for the calls that make
 * connections (connect, accept, adopt), which builds the stream transport,
 * the TLS transport on it and starts the handshake; and start_tls, which
 * puts a TLS transport on a live one. */
#include "tls/tls.h"

#include <string.h>

struct tls_ctor {
    struct tpio__ctor base;
    struct tpio__tls_cfg cfg;
};

#define CTOR(c) tpio_container_of(c, struct tls_ctor, base)

static int tls_build(const struct tpio__ctor *self, tpio_loop_t *loop, int fd,
                     tpio_transport_kind_t kind, const struct sockaddr *peer,
                     socklen_t peerlen, const struct tpio__conn *conn)
{
    const struct tls_ctor *c = CTOR(self);
    tpio_transport_t *inner;
    int rc = tpio__stream_new(loop, fd, kind, peer, peerlen, &inner);
    if (rc < 0)
        return rc;
    struct tpio__tls *s;
    rc = tpio__tls_new(loop, inner, &c->cfg, &s);
    if (rc < 0) {
        tpio__transport_abandon(inner);
        return rc;
    }
    s->conn = *conn;
    /* The layer's connection_made starts the handshake, from the loop. */
    rc = tpio__transport_start(inner, &s->layer, NULL, NULL);
    if (rc < 0) {
        tpio__transport_abandon(&s->base); /* and the transport below */
        return rc;
    }
    s->inner_started = true;
    /* A server counts (and closes, and waits for) its handshakes too. */
    if (conn->set && !conn->set->closed)
        tpio__tset_add(conn->set, &s->base);
    /* The caller's request now cancels the handshake. */
    s->conn.req = 0;
    if (conn->req && tpio__request_pass(loop, conn->req, tpio__tls_cancel, s))
        s->req = conn->req;
    return 0;
}

static void tls_release(const struct tpio__ctor *self)
{
    struct tls_ctor *c = CTOR(self);
    SSL_CTX_free(c->cfg.ctx);
    tpio__free(c->cfg.hostname);
    tpio__free(c);
}

/* tpio_tls_opts_t as of 0.3. */
#define TLS_OPTS_V1 sizeof(tpio_tls_opts_t)

/* The options checked and copied, with the defaults filled in; the host
 * name is still the caller's. */
static int read_opts(const tpio_tls_opts_t *opts, bool *server, const char *host,
                     struct tpio__tls_cfg *cfg, tpio_tls_opts_t *o)
{
    int rc = TPIO__OPTS_COPY(o, opts, TLS_OPTS_V1);
    if (rc < 0)
        return rc;
    int side = tpio__flag(o->server_side, *server);
    if (side < 0)
        return side;
    *server = *server || side;
    if (!o->ctx || !(o->handshake_timeout >= 0) || !(o->shutdown_timeout >= 0) ||
        (!o->initial_data && o->initial_len))
        return -EINVAL;
    const char *name = o->server_hostname ? o->server_hostname : host;
    if (*server ? o->server_hostname != NULL : name == NULL)
        return -EINVAL; /* asyncio: a client must name the server, a server must not */
    *cfg = (struct tpio__tls_cfg){
        .ctx = o->ctx,
        .hostname = *server ? NULL : (char *)name,
        .handshake_timeout = o->handshake_timeout ? o->handshake_timeout
                                                  : TPIO__TLS_HANDSHAKE_TIMEOUT,
        .shutdown_timeout = o->shutdown_timeout ? o->shutdown_timeout
                                                : TPIO__TLS_SHUTDOWN_TIMEOUT,
        .server = *server,
    };
    return 0;
}

int tpio__tls_ctor_new(const tpio_tls_opts_t *opts, bool server, const char *host,
                       const struct tpio__ctor **out)
{
    struct tpio__tls_cfg cfg;
    tpio_tls_opts_t o;
    int rc = read_opts(opts, &server, host, &cfg, &o);
    if (rc < 0)
        return rc;
    if (o.initial_len || o.server_side != TPIO_DEFAULT)
        return -EINVAL; /* for start_tls only */
    struct tls_ctor *c = tpio__calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->base.build = tls_build;
    c->base.release = tls_release;
    c->cfg = cfg;
    c->cfg.hostname = cfg.hostname ? tpio__strdup(cfg.hostname) : NULL;
    if (cfg.hostname && !c->cfg.hostname) {
        tpio__free(c);
        return -ENOMEM;
    }
    SSL_CTX_up_ref(cfg.ctx);
    *out = &c->base;
    return 0;
}

/* ---- start_tls ------------------------------------------------------------------- */

static void begin_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct tpio__tls *s = tpio_container_of(arg, struct tpio__tls, begin_node);
    tpio__tls_begin(s);
    tpio__transport_unref(&s->base); /* the scheduled start's */
}

static bool layerable(const tpio_transport_t *t)
{
    return t->kind == TPIO_TRANSPORT_TCP || t->kind == TPIO_TRANSPORT_UNIX ||
           t->kind == TPIO_TRANSPORT_STREAM_SOCKET || t->kind == TPIO_TRANSPORT_TLS;
}

int tpio_loop_start_tls(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p,
                        const tpio_tls_opts_t *opts, tpio_connect_cb_t cb, void *cb_arg,
                        tpio_handle_t *request)
{
    if (!loop || !t || !p || !p->ops || !opts || !cb || t->loop != loop)
        return -EINVAL;
    bool server = false;
    struct tpio__tls_cfg cfg;
    tpio_tls_opts_t o;
    int rc = read_opts(opts, &server, NULL, &cfg, &o);
    if (rc < 0)
        return rc;
    if (!layerable(t))
        return -ENOTSUP;
    if (t->closing)
        return -ESHUTDOWN;
    bool can_eof;
    if (t->kind != TPIO_TRANSPORT_TLS && (tpio_transport_can_write_eof(t, &can_eof) < 0 || !can_eof))
        return -ENOTSUP;
    /* An empty write says what any write would: -ESHUTDOWN after write_eof,
     * -EBUSY while a sendfile runs. */
    if ((rc = tpio_transport_write(t, "", 0)) < 0)
        return rc;
    struct tpio__tls *s;
    if ((rc = tpio__tls_new(loop, t, &cfg, &s)) < 0)
        return rc;
    s->inner_started = true;
    s->start_proto = p;
    s->conn.cb = cb;
    s->conn.cb_arg = cb_arg;
    if (o.initial_len && (rc = tpio__tls_preload(s, o.initial_data, o.initial_len)) < 0)
        goto fail;
    if ((rc = tpio__request_new(loop, tpio__tls_cancel, s, &s->req)) < 0)
        goto fail;
    /* The handshake starts from the loop, never inside this call. */
    tpio__transport_ref(&s->base);
    s->begin_node.cb = begin_cb;
    tpio__call_soon_node(loop, &s->begin_node);
    /* From here on what t reads is the layer's, and a server that had t
     * among its connections has the TLS transport instead: close_clients
     * then closes the top-most layer first (its close_notify goes first). */
    tpio_transport_set_protocol(t, &s->layer);
    tpio__tset_pass(t, &s->base);
    if (request)
        *request = s->req;
    return 0;
fail:
    /* t goes back as it was: the layer never touched it. */
    s->inner = NULL;
    t->refs--;
    tpio__transport_reown(t);
    tpio__transport_abandon(&s->base);
    return rc;
}
