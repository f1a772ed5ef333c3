/* TLS transports, tpio against tpio and against a plain OpenSSL peer in a
 * thread: the handshake and what the user sees of it, verification
 * failures, the extra info, closing (close_notify both ways, a peer that
 * never answers, data after close_notify, EOF without close_notify),
 * timeouts, a server that meets non-TLS clients, pause/resume draining
 * what OpenSSL holds, flow control. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <tpio.h>
#include "helpers.h"

#include <fcntl.h>
#include "tls_helpers.h"

#define TMO 30

TestSuite(tls, .init = th_fx_init, .fini = th_fx_fini);

/* ---- helpers ------------------------------------------------------------------ */

typedef struct srv {
    th_proto_t tmpl;   /* with free_on_lost, its protocols are not kept */
    size_t calls;
    th_proto_t *last;
    tpio_server_t *s;
    uint16_t port;
} srv_t;

static tpio_protocol_t *srv_factory(void *arg)
{
    srv_t *sv = arg;
    sv->calls++;
    tpio_protocol_t *p = th_factory(&sv->tmpl);
    sv->last = tpio_container_of(p, th_proto_t, base);
    if (!sv->tmpl.free_on_lost)
        th_fx_own(sv->last);
    return p;
}

static uint16_t server_port(tpio_server_t *s)
{
    struct sockaddr_storage a;
    socklen_t len = sizeof a;
    cr_assert_eq(tpio_server_get_sockname(s, 0, &a, &len), 0);
    return ntohs(((struct sockaddr_in *)&a)->sin_port);
}

/* A TLS echo server (or one whose protocols follow sv->tmpl) on 127.0.0.1. */
static void tls_server(srv_t *sv, SSL_CTX *ctx, const tpio_tls_opts_t *extra)
{
    tpio_tls_opts_t tls = extra ? *extra : TPIO_OPTS(tpio_tls_opts_t);
    tls.ctx = ctx;
    tpio_server_opts_t o = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1", .tls = &tls);
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, sv, &o, &sv->s), 0);
    sv->port = server_port(sv->s);
}

static void close_server(srv_t *sv)
{
    bool done = false;
    cr_assert_eq(tpio_server_close(sv->s), 0);
    cr_assert_eq(tpio_server_wait_closed(sv->s, th_done_flag, &done, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &done, TH_TMO));
}

static tpio_protocol_t *client_factory(void *arg)
{
    th_proto_t *p = th_fx_own(th_proto_new(NULL));
    const th_proto_t *tmpl = arg;
    if (tmpl) {
        p->base.ops = tmpl->base.ops;
        p->echo = tmpl->echo;
    }
    return &p->base;
}

static void tls_connect(uint16_t port, SSL_CTX *ctx, const tpio_tls_opts_t *extra,
                        const th_proto_t *tmpl, th_conn_t *c)
{
    tpio_tls_opts_t tls = extra ? *extra : TPIO_OPTS(tpio_tls_opts_t);
    tls.ctx = ctx;
    tpio_connect_opts_t o =
        TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = port, .tls = &tls);
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, client_factory, (void *)tmpl, &o,
                                             th_on_conn, c, NULL),
                 0);
}

static void run_until_lost(th_proto_t *p)
{
    cr_assert(th_run_until(th_fx.loop, &p->lost, TH_TMO), "events: %s", p->events);
}

/* A plain TCP listener (nothing TLS about it) and its port. */
static int plain_listener(uint16_t *port) { return th_listen_v4(port); }

static int accept_one(int lfd)
{
    int fd;
    /* the listener must not block: on io_uring the connect itself starts
     * with the loop's next submission */
    cr_assert_eq(fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK), 0);
    for (int i = 0; i < 5000; i++) {
        th_run_iters(th_fx.loop, 1);
        fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd >= 0)
            return fd;
        cr_assert(errno == EAGAIN, "accept: %s", strerror(errno));
    }
    cr_assert_fail("nothing connected");
    return -1;
}

/* ---- the handshake and the connection ---------------------------------------------- */

Test(tls, echo_and_extra_info, .timeout = TMO)
{
    SSL_CTX *sctx = th_tls_server_ctx(0, 0), *cctx = th_tls_client_ctx(0, 0);
    srv_t sv = {.tmpl.echo = true};
    sv.tmpl.base.ops = &th_proto_ops;
    tls_server(&sv, sctx, NULL);
    th_conn_t c = {0};
    tls_connect(sv.port, cctx, NULL, NULL, &c);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0, "%s: %s", tpio_err_name(c.err), tpio_tls_last_error());
    cr_assert_str_eq(c.p->events, "made");
    tpio_transport_t *t = c.t;
    cr_assert_eq(th_kind(t), TPIO_TRANSPORT_TLS);
    cr_assert_not(th_can_write_eof(t));
    cr_assert_eq(tpio_transport_write_eof(t), -ENOTSUP);

    tpio_extra_t e;
    cr_assert_eq(tpio_transport_get_extra_info(t, "sslcontext", &e), 0);
    cr_assert_eq(e.type, TPIO_EXTRA_PTR);
    cr_assert_eq(e.ptr, cctx);
    cr_assert_eq(tpio_transport_get_extra_info(t, "ssl_object", &e), 0);
    SSL *ssl = e.ptr;
    cr_assert_eq(SSL_get_SSL_CTX(ssl), cctx);
    cr_assert_eq(tpio_transport_get_extra_info(t, "peercert", &e), 0);
    X509_NAME *n = X509_get_subject_name(e.ptr);
    char cn[64];
    X509_NAME_get_text_by_NID(n, NID_commonName, cn, sizeof cn);
    cr_assert_str_eq(cn, "localhost");
    cr_assert_eq(tpio_transport_get_extra_info(t, "cipher", &e), 0);
    cr_assert_eq(e.type, TPIO_EXTRA_STR);
    cr_assert_str_eq(e.str, "TLS_AES_256_GCM_SHA384");
    const char *name, *version;
    int bits;
    cr_assert_eq(tpio_tls_get_cipher(t, &name, &version, &bits), 0);
    cr_assert_str_eq(name, "TLS_AES_256_GCM_SHA384");
    cr_assert_str_eq(version, "TLSv1.3");
    cr_assert_eq(bits, 256);
    cr_assert_eq(tpio_transport_get_extra_info(t, "compression", &e), -ENOENT);
    cr_assert_eq(tpio_transport_get_extra_info(t, "alpn_protocol", &e), -ENOENT);
    cr_assert_eq(tpio_transport_get_extra_info(t, "socket", &e), 0);
    cr_assert_eq(e.type, TPIO_EXTRA_FD);
    cr_assert_eq(th_fd(t), e.fd);
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    cr_assert_eq(tpio_transport_get_peername(t, &peer, &plen), 0);
    cr_assert_eq(ntohs(((struct sockaddr_in *)&peer)->sin_port), sv.port);

    cr_assert_eq(tpio_transport_write(t, "hello", 5), 0);
    cr_assert(th_run_until_count(th_fx.loop, &c.p->rxlen, 5, TH_TMO));
    cr_assert_eq(memcmp(c.p->rx, "hello", 5), 0);
    cr_assert_eq(sv.calls, 1);
    cr_assert_eq(th_conn_count(sv.s), 1);

    /* close: our close_notify, the server's eof_received and its own
     * close_notify, then connection_lost(0) on both sides */
    cr_assert_eq(tpio_transport_close(c.t), 0);
    run_until_lost(c.p);
    cr_assert_str_eq(c.p->events, "made,data,lost:0");
    run_until_lost(sv.last);
    cr_assert_str_eq(sv.last->events, "made,data,eof,lost:0");
    close_server(&sv);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

Test(tls, buffered_protocol_and_read_size, .timeout = TMO)
{
    th_ring_batch(); /* the ring's branch below: its way */
    SSL_CTX *sctx = th_tls_server_ctx(0, 0), *cctx = th_tls_client_ctx(0, 0);
    srv_t sv = {.tmpl.echo = true};
    sv.tmpl.base.ops = &th_buffered_proto_ops;
    tls_server(&sv, sctx, NULL);
    th_conn_t c = {0};
    th_proto_t tmpl = {.base.ops = &th_buffered_proto_ops};
    tls_connect(sv.port, cctx, NULL, &tmpl, &c);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0, "%s", tpio_tls_last_error());
    static unsigned char big[200000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = th_pat(i);
    cr_assert_eq(tpio_transport_write(c.t, big, sizeof big), 0);
    cr_assert(th_run_until_count(th_fx.loop, &c.p->rxlen, sizeof big, TH_TMO));
    cr_assert_eq(memcmp(c.p->rx, big, sizeof big), 0);
    /* a get_buffer may go unanswered (a record was not complete yet) */
    /* (on io_uring the 200000 bytes wait for the loop to send them: above
     * the default high, so pause_writing comes first) */
    const char *head = th_ring_ops(th_fx.loop) ? "made,pause,getbuf," : "made,getbuf,";
    cr_assert(strncmp(c.p->events, head, strlen(head)) == 0, "%s", c.p->events);
    cr_assert_not_null(strstr(c.p->events, "getbuf,updated"));
    cr_assert_null(strstr(c.p->events, "data"));
    cr_assert_eq(tpio_transport_close(c.t), 0);
    run_until_lost(c.p);
    run_until_lost(sv.last);
    close_server(&sv);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

/* ---- verification failures ------------------------------------------------------ */

static void expect_failure(SSL_CTX *sctx, SSL_CTX *cctx, const tpio_tls_opts_t *copts,
                           int want, const char *words)
{
    srv_t sv = {0};
    sv.tmpl.base.ops = &th_proto_ops;
    tls_server(&sv, sctx, NULL);
    th_conn_t c = {0};
    tls_connect(sv.port, cctx, copts, NULL, &c);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, want, "%s (%s), want %s", tpio_err_name(c.err), tpio_tls_last_error(),
                 tpio_err_name(want));
    cr_assert_null(c.t);
    cr_assert_eq(c.calls, 1);
    cr_assert(strstr(tpio_tls_last_error(), words), "message: %s", tpio_tls_last_error());
    /* the server's side of it: dropped, the factory never ran */
    size_t zero = 0;
    (void)zero;
    for (int i = 0; i < 200 && th_conn_count(sv.s); i++)
        th_run_iters(th_fx.loop, 1);
    cr_assert_eq(th_conn_count(sv.s), 0);
    cr_assert_eq(sv.calls, 0);
    close_server(&sv);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

Test(tls, untrusted_ca, .timeout = TMO)
{
    SSL_CTX *cctx;
    cr_assert_eq(tpio_tls_client_context(&cctx, th_pki()->other_ca), 0);
    expect_failure(th_tls_server_ctx(0, 0), cctx, NULL, TPIO_ETLS_VERIFY,
                   "certificate verify failed: unable to get local issuer certificate");
}

Test(tls, wrong_hostname, .timeout = TMO)
{
    tpio_tls_opts_t o = TPIO_OPTS(tpio_tls_opts_t, .server_hostname = "example.com");
    expect_failure(th_tls_server_ctx(0, 0), th_tls_client_ctx(0, 0), &o, TPIO_ETLS_VERIFY,
                   "certificate verify failed: hostname mismatch");
}

Test(tls, expired_certificate, .timeout = TMO)
{
    SSL_CTX *sctx;
    cr_assert_eq(tpio_tls_server_context(&sctx, th_pki()->expired, th_pki()->expired_key), 0);
    expect_failure(sctx, th_tls_client_ctx(0, 0), NULL, TPIO_ETLS_VERIFY,
                   "certificate verify failed: certificate has expired");
}

Test(tls, client_certificate_required, .timeout = TMO)
{
    /* TLS 1.2: the server refuses inside the client's handshake */
    SSL_CTX *sctx = th_tls_server_ctx(0, TLS1_2_VERSION);
    SSL_CTX_set_verify(sctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    SSL_CTX_load_verify_locations(sctx, th_pki()->ca, NULL);
    expect_failure(sctx, th_tls_client_ctx(0, 0), NULL, TPIO_ETLS, "handshake failure");
}

Test(tls, client_certificate_given, .timeout = TMO)
{
    SSL_CTX *sctx = th_tls_server_ctx(0, 0), *cctx = th_tls_client_ctx(0, 0);
    SSL_CTX_set_verify(sctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    SSL_CTX_load_verify_locations(sctx, th_pki()->ca, NULL);
    cr_assert_eq(SSL_CTX_use_certificate_file(cctx, th_pki()->client, SSL_FILETYPE_PEM), 1);
    cr_assert_eq(SSL_CTX_use_PrivateKey_file(cctx, th_pki()->client_key, SSL_FILETYPE_PEM), 1);
    srv_t sv = {.tmpl.echo = true};
    sv.tmpl.base.ops = &th_proto_ops;
    tls_server(&sv, sctx, NULL);
    th_conn_t c = {0};
    tls_connect(sv.port, cctx, NULL, NULL, &c);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0, "%s", tpio_tls_last_error());
    cr_assert_eq(tpio_transport_write(c.t, "x", 1), 0);
    cr_assert(th_run_until_count(th_fx.loop, &c.p->rxlen, 1, TH_TMO));
    /* the server sees the client's certificate */
    tpio_extra_t e;
    cr_assert_eq(tpio_transport_get_extra_info(sv.last->t, "peercert", &e), 0);
    char cn[64];
    X509_NAME_get_text_by_NID(X509_get_subject_name(e.ptr), NID_commonName, cn, sizeof cn);
    cr_assert_str_eq(cn, "tpio test client");
    cr_assert_eq(tpio_transport_close(c.t), 0);
    run_until_lost(c.p);
    run_until_lost(sv.last);
    close_server(&sv);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

/* ---- the handshake's own failures ---------------------------------------------------- */

Test(tls, handshake_timeout, .timeout = TMO)
{
    uint16_t port;
    int lfd = plain_listener(&port);
    th_conn_t c = {0};
    tpio_tls_opts_t o = TPIO_OPTS(tpio_tls_opts_t, .handshake_timeout = 0.2);
    SSL_CTX *cctx = th_tls_client_ctx(0, 0);
    tls_connect(port, cctx, &o, NULL, &c);
    int fd = accept_one(lfd); /* and it never answers */
    double t0 = th_now_s();
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, -ETIMEDOUT, "%s", tpio_err_name(c.err));
    cr_assert(th_now_s() - t0 < 2.0);
    cr_assert(strstr(tpio_tls_last_error(), "handshake"), "%s", tpio_tls_last_error());
    /* the socket was closed: the peer reads the ClientHello, then EOF */
    char buf[4096];
    ssize_t n;
    int fl = 0;
    while ((n = recv(fd, buf, sizeof buf, 0)) != 0) {
        if (n < 0 && errno == EAGAIN) {
            th_run_iters(th_fx.loop, 1);
            cr_assert(++fl < 100000);
            continue;
        }
        cr_assert(n > 0 || errno == ECONNRESET, "%s", strerror(errno));
        if (n < 0)
            break;
    }
    close(fd);
    close(lfd);
    SSL_CTX_free(cctx);
}

Test(tls, peer_leaves_during_handshake, .timeout = TMO)
{
    uint16_t port;
    int lfd = plain_listener(&port);
    th_conn_t c = {0};
    SSL_CTX *cctx = th_tls_client_ctx(0, 0);
    tls_connect(port, cctx, NULL, NULL, &c);
    close(accept_one(lfd));
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, -ECONNRESET, "%s", tpio_err_name(c.err));
    cr_assert_null(c.t);
    th_run_iters(th_fx.loop, 3); /* the transports it made go */
    close(lfd);
    SSL_CTX_free(cctx);
}

Test(tls, server_drops_plain_clients, .timeout = TMO)
{
    SSL_CTX *sctx = th_tls_server_ctx(0, 0), *cctx = th_tls_client_ctx(0, 0);
    srv_t sv = {.tmpl.echo = true};
    sv.tmpl.base.ops = &th_proto_ops;
    tls_server(&sv, sctx, NULL);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(sv.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* a plain-HTTP client, and a port scanner that connects and leaves */
    int http = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int scan = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    connect(http, (struct sockaddr *)&a, sizeof a);
    connect(scan, (struct sockaddr *)&a, sizeof a);
    size_t two = 2;
    (void)two;
    for (int i = 0; i < 1000 && th_conn_count(sv.s) < 2; i++)
        th_run_iters(th_fx.loop, 1);
    cr_assert_eq(th_conn_count(sv.s), 2); /* handshakes count as connections */
    const char req[] = "GET / HTTP/1.0\r\n\r\n";
    cr_assert_eq(send(http, req, sizeof req - 1, 0), (ssize_t)sizeof req - 1);
    close(scan);
    for (int i = 0; i < 5000 && th_conn_count(sv.s); i++)
        th_run_iters(th_fx.loop, 1);
    cr_assert_eq(th_conn_count(sv.s), 0);
    cr_assert_eq(sv.calls, 0);
    close(http);
    /* and it goes on serving */
    th_conn_t c = {0};
    tls_connect(sv.port, cctx, NULL, NULL, &c);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0, "%s", tpio_tls_last_error());
    /* TLS 1.3: the server's handshake ends after the client's */
    cr_assert(th_run_until_count(th_fx.loop, &sv.calls, 1, TH_TMO));
    cr_assert_eq(tpio_transport_close(c.t), 0);
    run_until_lost(c.p);
    run_until_lost(sv.last);
    close_server(&sv);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

Test(tls, bad_arguments, .timeout = TMO)
{
    SSL_CTX *cctx = th_tls_client_ctx(0, 0);
    th_conn_t c = {0};
    tpio_tls_opts_t none = TPIO_OPTS(tpio_tls_opts_t);
    tpio_connect_opts_t o =
        TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = 1, .tls = &none);
    /* no context */
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, client_factory, NULL, &o, th_on_conn,
                                             &c, NULL),
                 -EINVAL);
    /* a server must not name a server */
    tpio_tls_opts_t named = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx, .server_hostname = "x");
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1", .tls = &named);
    tpio_server_t *s;
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, NULL, &so, &s), -EINVAL);
    /* a Unix client must name the server */
    tpio_tls_opts_t anon = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx);
    tpio_unix_opts_t uo = TPIO_OPTS(tpio_unix_opts_t, .path = "/tmp/tpio-none", .tls = &anon);
    cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, client_factory, NULL, &uo,
                                                  th_on_conn, &c, NULL),
                 -EINVAL);
    /* negative timeouts; initial_data outside start_tls */
    tpio_tls_opts_t neg = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx, .handshake_timeout = -1);
    o.tls = &neg;
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, client_factory, NULL, &o, th_on_conn,
                                             &c, NULL),
                 -EINVAL);
    tpio_tls_opts_t pre = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx, .initial_data = "x",
                                    .initial_len = 1);
    o.tls = &pre;
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, client_factory, NULL, &o, th_on_conn,
                                             &c, NULL),
                 -EINVAL);
    /* server_side is start_tls's alone */
    tpio_tls_opts_t sided = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx, .server_side = TPIO_ON);
    o.tls = &sided;
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, client_factory, NULL, &o, th_on_conn,
                                             &c, NULL),
                 -EINVAL);
    /* the helpers */
    cr_assert_eq(tpio_tls_client_context(NULL, NULL), -EINVAL);
    SSL_CTX *x;
    cr_assert_eq(tpio_tls_client_context(&x, "/nonexistent/ca.pem"), -ENOENT);
    cr_assert_eq(tpio_tls_server_context(&x, "/nonexistent", th_pki()->key), -ENOENT);
    cr_assert_eq(tpio_tls_server_context(&x, th_pki()->cert, th_pki()->client_key), TPIO_ETLS);
    cr_assert(strstr(tpio_tls_last_error(), "private key"), "%s", tpio_tls_last_error());
    cr_assert_eq(tpio_tls_get_cipher(NULL, NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(c.calls, 0);
    SSL_CTX_free(cctx);
}

/* ---- against a plain OpenSSL peer in a thread ------------------------------------------ */

/* A TLS server transport (connect_accepted_socket) on one end of a
 * socketpair and an OpenSSL client thread on the other. */
typedef struct peer_case {
    th_conn_t c;
    th_peer_t *peer;
    SSL_CTX *sctx, *cctx;
    /* what the peer saw */
    char got[256];
    size_t gotlen;
    int peer_result;
} peer_case_t;

static void start_peer_case(peer_case_t *pc, th_peer_fn fn, const th_proto_t *tmpl,
                            const tpio_tls_opts_t *extra)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    pc->sctx = th_tls_server_ctx(0, 0);
    pc->cctx = th_tls_client_ctx(0, 0);
    tpio_tls_opts_t tls = extra ? *extra : TPIO_OPTS(tpio_tls_opts_t);
    tls.ctx = pc->sctx;
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, client_factory, (void *)tmpl,
                                                   sv[0], &tls, th_on_conn, &pc->c, NULL),
                 0);
    pc->peer = th_peer_start(sv[1], pc->cctx, false, fn, pc);
    cr_assert(th_run_until(th_fx.loop, &pc->c.done, TH_TMO));
    cr_assert_eq(pc->c.err, 0, "%s: %s", tpio_err_name(pc->c.err), tpio_tls_last_error());
}

static void end_peer_case(peer_case_t *pc)
{
    th_peer_join(pc->peer);
    SSL_CTX_free(pc->sctx);
    SSL_CTX_free(pc->cctx);
}

/* Read until close_notify (or an error) into pc->got. */
static int peer_read_all(peer_case_t *pc, SSL *ssl)
{
    for (;;) {
        size_t n;
        if (SSL_read_ex(ssl, pc->got + pc->gotlen, sizeof pc->got - 1 - pc->gotlen, &n) != 1)
            return SSL_get_error(ssl, 0);
        pc->gotlen += n;
    }
}

static void wait_eof(int fd)
{
    char b[256];
    while (recv(fd, b, sizeof b, 0) > 0)
        ;
}

static void never_answers(th_peer_t *pr, SSL *ssl, void *arg)
{
    peer_case_t *pc = arg;
    cr_assert_eq(pr->handshake, 1);
    SSL_write(ssl, "ping", 4);
    /* tpio's close_notify arrives; ours never goes */
    pc->peer_result = peer_read_all(pc, ssl);
    wait_eof(pr->fd);
}

Test(tls, peer_never_answers_close_notify, .timeout = TMO)
{
    peer_case_t pc = {0};
    th_proto_t tmpl = {.base.ops = &th_proto_ops};
    tpio_tls_opts_t o = TPIO_OPTS(tpio_tls_opts_t, .shutdown_timeout = 0.3);
    start_peer_case(&pc, never_answers, &tmpl, &o);
    cr_assert(th_run_until_count(th_fx.loop, &pc.c.p->rxlen, 4, TH_TMO));
    cr_assert_eq(tpio_transport_write(pc.c.t, "pong", 4), 0);
    cr_assert_eq(tpio_transport_close(pc.c.t), 0);
    cr_assert_eq(tpio_transport_write(pc.c.t, "late", 4), 0); /* dropped */
    double t0 = th_now_s();
    run_until_lost(pc.c.p);
    double took = th_now_s() - t0;
    cr_assert(took >= 0.25 && took < 3.0, "took %.3f s", took);
    cr_assert_str_eq(pc.c.p->events, "made,data,lost:0");
    end_peer_case(&pc);
    /* everything written before close() arrived, then close_notify */
    cr_assert_eq(pc.peer_result, SSL_ERROR_ZERO_RETURN);
    cr_assert_eq(pc.gotlen, 4);
    cr_assert_eq(memcmp(pc.got, "pong", 4), 0);
}

static void closes_then_junk(th_peer_t *pr, SSL *ssl, void *arg)
{
    peer_case_t *pc = arg;
    (void)pc;
    cr_assert_eq(pr->handshake, 1);
    SSL_write(ssl, "abc", 3);
    SSL_shutdown(ssl);
    send(pr->fd, "junk after close_notify", 23, MSG_NOSIGNAL);
    wait_eof(pr->fd);
}

Test(tls, data_after_close_notify_is_ignored, .timeout = TMO)
{
    peer_case_t pc = {0};
    th_proto_t tmpl = {.base.ops = &th_proto_ops};
    start_peer_case(&pc, closes_then_junk, &tmpl, NULL);
    run_until_lost(pc.c.p);
    cr_assert_str_eq(pc.c.p->events, "made,data,eof,lost:0");
    cr_assert_eq(pc.c.p->rxlen, 3);
    cr_assert_eq(memcmp(pc.c.p->rx, "abc", 3), 0);
    end_peer_case(&pc);
}

static void eof_no_notify(th_peer_t *pr, SSL *ssl, void *arg)
{
    (void)arg;
    cr_assert_eq(pr->handshake, 1);
    SSL_write(ssl, "abc", 3);
    shutdown(pr->fd, SHUT_WR);
    wait_eof(pr->fd);
}

Test(tls, eof_without_close_notify, .timeout = TMO)
{
    peer_case_t pc = {0};
    th_proto_t tmpl = {.base.ops = &th_proto_ops};
    start_peer_case(&pc, eof_no_notify, &tmpl, NULL);
    run_until_lost(pc.c.p);
    cr_assert_str_eq(pc.c.p->events, "made,data,lost:TPIO_ETLS_EOF");
    cr_assert(strstr(tpio_tls_last_error(), "close_notify"), "%s", tpio_tls_last_error());
    end_peer_case(&pc);
}

/* A protocol that pauses reading at its first data_received. */
static void pause_once_data(tpio_protocol_t *bp, const void *d, size_t n)
{
    th_proto_t *p = tpio_container_of(bp, th_proto_t, base);
    th_proto_ops.data_received(bp, d, n);
    if (p->pauses++ == 0)
        tpio_transport_pause_reading(p->t);
}
static tpio_protocol_ops_t pause_once_ops;

static void three_records(th_peer_t *pr, SSL *ssl, void *arg)
{
    peer_case_t *pc = arg;
    cr_assert_eq(pr->handshake, 1);
    SSL_write(ssl, "one", 3);
    SSL_write(ssl, "two", 3);
    SSL_write(ssl, "three", 5);
    pc->peer_result = peer_read_all(pc, ssl);
    SSL_shutdown(ssl);
}

Test(tls, resume_delivers_what_openssl_holds, .timeout = TMO)
{
    pause_once_ops = th_proto_ops;
    pause_once_ops.data_received = pause_once_data;
    peer_case_t pc = {0};
    th_proto_t tmpl = {.base.ops = &pause_once_ops};
    start_peer_case(&pc, three_records, &tmpl, NULL);
    th_proto_t *p = pc.c.p;
    cr_assert_eq(tpio_transport_set_read_size(pc.c.t, 3), 0);
    cr_assert(th_run_until_count(th_fx.loop, &p->rxlen, 3, TH_TMO));
    cr_assert_not(th_is_reading(pc.c.t));
    /* the other records are here already, inside OpenSSL or the layer */
    th_run_iters(th_fx.loop, 50);
    cr_assert_eq(p->rxlen, 3);
    cr_assert_eq(tpio_transport_resume_reading(pc.c.t), 0);
    cr_assert_eq(p->rxlen, 3); /* not inside the call */
    cr_assert(th_run_until_count(th_fx.loop, &p->rxlen, 11, TH_TMO));
    cr_assert_eq(memcmp(p->rx, "onetwothree", 11), 0);
    cr_assert_eq(tpio_transport_write(pc.c.t, "ok", 2), 0);
    cr_assert_eq(tpio_transport_close(pc.c.t), 0);
    run_until_lost(p);
    cr_assert_str_eq(p->events, "made,data,lost:0");
    end_peer_case(&pc);
    cr_assert_eq(pc.gotlen, 2);
    cr_assert_eq(pc.peer_result, SSL_ERROR_ZERO_RETURN);
}

/* Echo through tpio while the peer asks for a key update in the middle. */
static void key_update(th_peer_t *pr, SSL *ssl, void *arg)
{
    peer_case_t *pc = arg;
    cr_assert_eq(pr->handshake, 1);
    char buf[64];
    size_t n;
    for (int round = 0; round < 6; round++) {
        if (round == 3)
            cr_assert_eq(SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED), 1);
        char msg[16];
        int len = snprintf(msg, sizeof msg, "round %d", round);
        cr_assert_eq(SSL_write(ssl, msg, len), len);
        size_t got = 0;
        while (got < (size_t)len) {
            cr_assert_eq(SSL_read_ex(ssl, buf + got, sizeof buf - got, &n), 1);
            got += n;
        }
        cr_assert_eq(memcmp(buf, msg, (size_t)len), 0);
        pc->gotlen += got;
    }
    SSL_shutdown(ssl);
    pc->peer_result = peer_read_all(pc, ssl);
}

Test(tls, key_update_mid_stream, .timeout = TMO)
{
    peer_case_t pc = {0};
    th_proto_t tmpl = {.base.ops = &th_proto_ops, .echo = true};
    start_peer_case(&pc, key_update, &tmpl, NULL);
    run_until_lost(pc.c.p);
    cr_assert_str_eq(pc.c.p->events, "made,data,eof,lost:0");
    end_peer_case(&pc);
    cr_assert_eq(pc.gotlen, 6 * 7);
    cr_assert_eq(pc.peer_result, SSL_ERROR_ZERO_RETURN);
}

/* ---- volume, flow control ------------------------------------------------------------ */

/* A client that streams `total` bytes of the pattern through an echo server
 * in writes of random sizes, honouring pause_writing, and checks what comes
 * back while pausing its reading at random for a loop turn. */
typedef struct streamer {
    th_proto_t base; /* only base.base and t are used */
    tpio_loop_t *loop;
    size_t total, sent, got;
    bool wpaused, done, lost, bad;
    unsigned rng;
    size_t rpauses, wpauses;
    unsigned char rbuf[16384];
} streamer_t;

static unsigned rnd(streamer_t *s)
{
    s->rng = s->rng * 1103515245u + 12345u;
    return s->rng >> 8;
}

static void st_send(streamer_t *s)
{
    static unsigned char chunk[70000];
    while (!s->wpaused && s->sent < s->total && s->base.t) {
        size_t n = 1 + rnd(s) % (sizeof chunk - 1);
        if (n > s->total - s->sent)
            n = s->total - s->sent;
        for (size_t i = 0; i < n; i++)
            chunk[i] = th_pat(s->sent + i);
        cr_assert_eq(tpio_transport_write(s->base.t, chunk, n), 0);
        s->sent += n;
    }
}

static void st_resume_read(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    streamer_t *s = arg;
    if (s->base.t)
        tpio_transport_resume_reading(s->base.t);
}

static void st_check(streamer_t *s, const unsigned char *d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (d[i] != th_pat(s->got + i))
            s->bad = true;
    s->got += n;
    if (s->got == s->total) {
        s->done = true;
        tpio_transport_close(s->base.t);
    } else if (rnd(s) % 8 == 0) {
        s->rpauses++;
        tpio_transport_pause_reading(s->base.t);
        tpio_loop_call_soon(s->loop, st_resume_read, s, NULL);
    }
}

static void st_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    streamer_t *s = tpio_container_of(p, streamer_t, base.base);
    s->base.t = t;
    st_send(s);
}
static void st_lost(tpio_protocol_t *p, int err)
{
    streamer_t *s = tpio_container_of(p, streamer_t, base.base);
    cr_assert_eq(err, 0, "%s: %s", tpio_err_name(err), tpio_tls_last_error());
    s->lost = true;
    s->base.t = NULL;
}
static void st_pause(tpio_protocol_t *p)
{
    streamer_t *s = tpio_container_of(p, streamer_t, base.base);
    s->wpaused = true;
    s->wpauses++;
}
static void st_resume(tpio_protocol_t *p)
{
    streamer_t *s = tpio_container_of(p, streamer_t, base.base);
    s->wpaused = false;
    st_send(s);
}
static void st_data(tpio_protocol_t *p, const void *d, size_t n)
{
    st_check(tpio_container_of(p, streamer_t, base.base), d, n);
}
static void *st_getbuf(tpio_protocol_t *p, ssize_t hint, size_t *len)
{
    (void)hint;
    streamer_t *s = tpio_container_of(p, streamer_t, base.base);
    *len = 1 + rnd(s) % sizeof s->rbuf;
    return s->rbuf;
}
static void st_updated(tpio_protocol_t *p, size_t n)
{
    streamer_t *s = tpio_container_of(p, streamer_t, base.base);
    st_check(s, s->rbuf, n);
}

static const tpio_protocol_ops_t st_ops = {
    .connection_made = st_made, .connection_lost = st_lost, .pause_writing = st_pause,
    .resume_writing = st_resume, .data_received = st_data,
};
static const tpio_protocol_ops_t st_buffered_ops = {
    .connection_made = st_made, .connection_lost = st_lost, .pause_writing = st_pause,
    .resume_writing = st_resume, .get_buffer = st_getbuf, .buffer_updated = st_updated,
};

static streamer_t the_streamer;
static tpio_protocol_t *streamer_factory(void *arg)
{
    (void)arg;
    return &the_streamer.base.base;
}

static void stream_64mib(const tpio_protocol_ops_t *client_ops,
                         const tpio_protocol_ops_t *server_ops, bool unix_socket)
{
    SSL_CTX *sctx = th_tls_server_ctx(0, 0), *cctx = th_tls_client_ctx(0, 0);
    srv_t sv = {.tmpl.echo = true};
    sv.tmpl.base.ops = server_ops;
    streamer_t *s = &the_streamer;
    *s = (streamer_t){.loop = th_fx.loop, .total = 64u << 20, .rng = 12345};
    s->base.base.ops = client_ops;
    tpio_tls_opts_t stls = TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx);
    tpio_tls_opts_t ctls = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx, .server_hostname = "localhost");
    th_conn_t c = {0};
    if (unix_socket) {
        char path[128];
        snprintf(path, sizeof path, "%s/tls.sock", th_fx_dir());
        tpio_unix_opts_t so = TPIO_OPTS(tpio_unix_opts_t, .path = path, .tls = &stls);
        cr_assert_eq(tpio_loop_create_unix_server(th_fx.loop, srv_factory, &sv, &so, &sv.s), 0);
        tpio_unix_opts_t co = TPIO_OPTS(tpio_unix_opts_t, .path = path, .tls = &ctls);
        cr_assert_eq(tpio_loop_create_unix_connection(th_fx.loop, streamer_factory, NULL, &co,
                                                      th_on_conn, &c, NULL),
                     0);
    } else {
        tls_server(&sv, sctx, NULL);
        tpio_connect_opts_t co = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1",
                                           .port = sv.port, .tls = &ctls);
        cr_assert_eq(tpio_loop_create_connection(th_fx.loop, streamer_factory, NULL, &co,
                                                 th_on_conn, &c, NULL),
                     0);
    }
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0, "%s", tpio_tls_last_error());
    cr_assert_eq(th_kind(c.t), TPIO_TRANSPORT_TLS);
    cr_assert(th_run_until(th_fx.loop, &s->lost, 120), "got %zu of %zu", s->got, s->total);
    cr_assert(s->done);
    cr_assert_not(s->bad, "the echo differs");
    cr_assert(s->rpauses > 0 && s->wpauses > 0, "pauses: read %zu write %zu", s->rpauses,
              s->wpauses);
    run_until_lost(sv.last);
    cr_assert_null(strstr(sv.last->events, "lost:T"));
    close_server(&sv);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

Test(tls, stream_64mib_protocol, .timeout = 120)
{
    stream_64mib(&st_ops, &th_proto_ops, false);
}

Test(tls, stream_64mib_buffered, .timeout = 120)
{
    stream_64mib(&st_buffered_ops, &th_buffered_proto_ops, false);
}

Test(tls, stream_64mib_unix, .timeout = 120)
{
    stream_64mib(&st_ops, &th_proto_ops, true);
}

Test(tls, write_buffer_limits_pass_down, .timeout = TMO)
{
    SSL_CTX *sctx = th_tls_server_ctx(0, 0), *cctx = th_tls_client_ctx(0, 0);
    srv_t sv = {.tmpl.pause_in_made = true}; /* the server does not read */
    sv.tmpl.base.ops = &th_proto_ops;
    tls_server(&sv, sctx, NULL);
    th_conn_t c = {0};
    tls_connect(sv.port, cctx, NULL, NULL, &c);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert(th_run_until_count(th_fx.loop, &sv.calls, 1, TH_TMO));
    cr_assert(th_run_until(th_fx.loop, &sv.last->made, TH_TMO));
    tpio_transport_t *t = c.t;
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, 100000, 1000), 0);
    size_t hi, lo;
    cr_assert_eq(tpio_transport_get_write_buffer_limits(t, &hi, &lo), 0);
    cr_assert_eq(hi, 100000);
    cr_assert_eq(lo, 1000);
    /* write until the kernel's buffers and then the layer's are full */
    static unsigned char blk[65536];
    size_t written = 0;
    while (c.p->pauses == 0) {
        cr_assert_eq(tpio_transport_write(t, blk, sizeof blk), 0);
        written += sizeof blk;
        cr_assert(written < (256u << 20));
        th_run_iters(th_fx.loop, 1);
    }
    cr_assert_str_eq(c.p->events, "made,pause");
    /* on io_uring, sends that completed later in the same iteration may
     * have taken up to one block since */
    cr_assert(th_wbuf_size(t) > 100000 - (th_ring_ops(th_fx.loop) ? sizeof blk : 0), "%zu",
              th_wbuf_size(t));
    /* the server reads: everything drains, resume_writing comes */
    cr_assert_eq(tpio_transport_resume_reading(sv.last->t), 0);
    cr_assert(th_run_until_count(th_fx.loop, &c.p->resumes, 1, TH_TMO));
    cr_assert(th_wbuf_size(t) <= 1000);
    cr_assert(th_run_until_count(th_fx.loop, &sv.last->rxlen, written, 60));
    cr_assert_eq(th_wbuf_size(t), 0);
    cr_assert_eq(tpio_transport_close(t), 0);
    run_until_lost(c.p);
    cr_assert_str_eq(c.p->events, "made,pause,resume,lost:0");
    run_until_lost(sv.last);
    close_server(&sv);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

/* Watermarks below the transport underneath's defaults: it must pause and
 * resume at the TLS transport's, or resume_writing never comes (a mutant
 * that kept the 64 KiB defaults below survived the test above). */
Test(tls, low_watermarks_resume_writing, .timeout = TMO)
{
    SSL_CTX *sctx = th_tls_server_ctx(0, 0), *cctx = th_tls_client_ctx(0, 0);
    srv_t sv = {.tmpl.pause_in_made = true}; /* the server does not read yet */
    sv.tmpl.base.ops = &th_proto_ops;
    tls_server(&sv, sctx, NULL);
    th_conn_t c = {0};
    tls_connect(sv.port, cctx, NULL, NULL, &c);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0, "%s", tpio_tls_last_error());
    cr_assert(th_run_until_count(th_fx.loop, &sv.calls, 1, TH_TMO));
    cr_assert(th_run_until(th_fx.loop, &sv.last->made, TH_TMO));
    tpio_transport_t *t = c.t;
    int fd = th_fd(t), small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(t, 16384, 8192), 0);
    static unsigned char blk[1024];
    size_t written = 0;
    while (c.p->pauses == 0) {
        cr_assert_eq(tpio_transport_write(t, blk, sizeof blk), 0);
        written += sizeof blk;
        cr_assert(written < (64u << 20));
        th_run_iters(th_fx.loop, 1);
    }
    size_t held = th_wbuf_size(t);
    cr_assert(held > 16384 && held < 65536, "%zu buffered at pause_writing", held);
    cr_assert_eq(tpio_transport_resume_reading(sv.last->t), 0);
    cr_assert(th_run_until_count(th_fx.loop, &c.p->resumes, 1, TH_TMO),
              "no resume_writing: %zu still buffered", th_wbuf_size(t));
    cr_assert(th_run_until_count(th_fx.loop, &sv.last->rxlen, written, TH_TMO));
    cr_assert_eq(tpio_transport_close(t), 0);
    run_until_lost(c.p);
    cr_assert_str_eq(c.p->events, "made,pause,resume,lost:0");
    run_until_lost(sv.last);
    close_server(&sv);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

/* ---- start_tls ------------------------------------------------------------------------ */

/* A plain protocol that upgrades on "STARTTLS\n", handing what followed it
 * in the same read to the handshake. */
typedef struct upgrader {
    th_proto_t base;
    SSL_CTX *ctx;
    th_conn_t c;      /* start_tls's completion */
    th_proto_t *next; /* the protocol after the upgrade */
    size_t preloaded;
    bool server;
} upgrader_t;

static void up_data(tpio_protocol_t *bp, const void *d, size_t n)
{
    upgrader_t *u = tpio_container_of(bp, upgrader_t, base.base);
    th_proto_ops.data_received(bp, d, n);
    const char *nl = memchr(d, '\n', n);
    if (!nl || u->next)
        return;
    size_t rest = n - (size_t)(nl + 1 - (const char *)d);
    u->preloaded = rest;
    u->next = th_fx_own(th_proto_new(&th_proto_ops));
    u->next->echo = true;
    tpio_tls_opts_t o = TPIO_OPTS(tpio_tls_opts_t, .ctx = u->ctx,
                                  .server_side = u->server ? TPIO_ON : TPIO_OFF,
                                  .server_hostname = u->server ? NULL : "localhost",
                                  .initial_data = nl + 1, .initial_len = rest);
    cr_assert_eq(tpio_loop_start_tls(th_fx.loop, u->base.t, &u->next->base, &o, th_on_conn,
                                     &u->c, NULL),
                 0);
}
static tpio_protocol_ops_t up_ops;
static upgrader_t the_upgrader;
static tpio_protocol_t *up_factory(void *arg)
{
    (void)arg;
    return &the_upgrader.base.base;
}

Test(tls, start_tls_with_pipelined_client_hello, .timeout = TMO)
{
    up_ops = th_proto_ops;
    up_ops.data_received = up_data;
    upgrader_t *u = &the_upgrader;
    *u = (upgrader_t){.ctx = th_tls_server_ctx(0, 0), .server = true};
    u->base.base.ops = &up_ops;
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    th_conn_t c0 = {0};
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, up_factory, NULL, sv[0], NULL,
                                                   th_on_conn, &c0, NULL),
                 0);
    cr_assert(th_run_until(th_fx.loop, &c0.done, TH_TMO));
    tpio_transport_t *plain = c0.t;

    /* the ClientHello, made on memory BIOs, then the preamble and it at once */
    SSL_CTX *cctx = th_tls_client_ctx(0, 0);
    SSL *ssl = SSL_new(cctx);
    BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl, rb, wb);
    SSL_set_connect_state(ssl);
    SSL_set_tlsext_host_name(ssl, "localhost");
    SSL_set1_host(ssl, "localhost");
    cr_assert_eq(SSL_do_handshake(ssl), -1);
    char *hello;
    long hlen = BIO_get_mem_data(wb, &hello);
    cr_assert(hlen > 0);
    char msg[4096];
    memcpy(msg, "STARTTLS\n", 9);
    memcpy(msg + 9, hello, (size_t)hlen);
    cr_assert_eq(send(sv[1], msg, 9 + (size_t)hlen, 0), 9 + hlen);
    (void)BIO_reset(wb);
    cr_assert(th_run_until(th_fx.loop, &u->base.made, TH_TMO));
    for (int i = 0; i < 1000 && !u->next; i++)
        th_run_iters(th_fx.loop, 1);
    cr_assert_not_null(u->next);
    cr_assert_eq(u->preloaded, (size_t)hlen, "the ClientHello came in the same read");

    /* the rest of the handshake over the socket */
    int done = 0;
    for (int i = 0; i < 20000 && !done; i++) {
        th_run_iters(th_fx.loop, 1);
        char buf[8192];
        ssize_t n = recv(sv[1], buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0)
            BIO_write(rb, buf, (int)n);
        int r = SSL_do_handshake(ssl);
        char *out;
        long olen = BIO_get_mem_data(wb, &out);
        if (olen > 0) {
            cr_assert_eq(send(sv[1], out, (size_t)olen, 0), olen);
            (void)BIO_reset(wb);
        }
        done = r == 1;
        cr_assert(r == 1 || SSL_get_error(ssl, r) == SSL_ERROR_WANT_READ);
    }
    cr_assert(done);
    cr_assert(th_run_until(th_fx.loop, &u->c.done, TH_TMO));
    cr_assert_eq(u->c.err, 0, "%s", tpio_tls_last_error());
    cr_assert_neq(u->c.t, plain);
    cr_assert_eq(th_kind(u->c.t), TPIO_TRANSPORT_TLS);
    cr_assert_eq(u->c.p, u->next);
    cr_assert_str_eq(u->next->events, ""); /* start_tls gives no connection_made */
    cr_assert_eq(th_fd(u->c.t), th_fd(plain));
    u->next->t = u->c.t;

    /* echo through the new transport */
    cr_assert_eq(SSL_write(ssl, "hi", 2), 2);
    char *out;
    long olen = BIO_get_mem_data(wb, &out);
    cr_assert_eq(send(sv[1], out, (size_t)olen, 0), olen);
    (void)BIO_reset(wb);
    char got[2];
    int have = 0;
    for (int i = 0; i < 20000 && have < 2; i++) {
        th_run_iters(th_fx.loop, 1);
        char buf[8192];
        ssize_t n = recv(sv[1], buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0)
            BIO_write(rb, buf, (int)n);
        size_t m;
        if (SSL_read_ex(ssl, got + have, sizeof got - (size_t)have, &m) == 1)
            have += (int)m;
    }
    cr_assert_eq(have, 2);
    cr_assert_eq(memcmp(got, "hi", 2), 0);
    /* the old protocol heard nothing after the upgrade */
    cr_assert_str_eq(u->base.events, "made,data");
    cr_assert_eq(tpio_transport_abort(u->c.t), 0);
    run_until_lost(u->next);
    cr_assert_str_eq(u->next->events, "data,lost:0");
    SSL_free(ssl);
    close(sv[1]);
    SSL_CTX_free(cctx);
    SSL_CTX_free(u->ctx);
}

/* TLS in TLS: both ends upgrade their TLS transport once it is made. */
typedef struct nest {
    th_proto_t base;
    SSL_CTX *ctx;
    bool server;
    th_conn_t c;
    th_proto_t *inner;
} nest_t;

static void nest_made(tpio_protocol_t *bp, tpio_transport_t *t)
{
    nest_t *n = tpio_container_of(bp, nest_t, base.base);
    th_proto_ops.connection_made(bp, t);
    n->inner = th_fx_own(th_proto_new(&th_proto_ops));
    n->inner->echo = n->server;
    tpio_tls_opts_t o = TPIO_OPTS(tpio_tls_opts_t, .ctx = n->ctx,
                                  .server_side = n->server ? TPIO_ON : TPIO_DEFAULT,
                                  .server_hostname = n->server ? NULL : "localhost");
    cr_assert_eq(tpio_loop_start_tls(th_fx.loop, t, &n->inner->base, &o, th_on_conn, &n->c,
                                     NULL),
                 0);
}
static tpio_protocol_ops_t nest_ops;
static nest_t nest_srv, nest_cli;
static tpio_protocol_t *nest_factory(void *arg) { return &((nest_t *)arg)->base.base; }

/* TLS in TLS, closed by the client's inner layer or by the server's
 * close_clients, which sees the top-most layer (start_tls took the
 * server's place of the transport below): either way the inner layer's
 * close_notify goes first and both inner protocols end with 0. */
static void tls_in_tls(bool server_closes)
{
    nest_ops = th_proto_ops;
    nest_ops.connection_made = nest_made;
    SSL_CTX *sctx = th_tls_server_ctx(0, 0), *cctx = th_tls_client_ctx(0, 0);
    nest_srv = (nest_t){.ctx = sctx, .server = true};
    nest_cli = (nest_t){.ctx = cctx};
    nest_srv.base.base.ops = nest_cli.base.base.ops = &nest_ops;
    tpio_tls_opts_t st = TPIO_OPTS(tpio_tls_opts_t, .ctx = sctx);
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1", .tls = &st);
    tpio_server_t *s;
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, nest_factory, &nest_srv, &so, &s), 0);
    tpio_tls_opts_t ct = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx);
    tpio_connect_opts_t co = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1",
                                       .port = server_port(s), .tls = &ct);
    th_conn_t c = {0};
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, nest_factory, &nest_cli, &co,
                                             th_on_conn, &c, NULL),
                 0);
    cr_assert(th_run_until(th_fx.loop, &nest_cli.c.done, TH_TMO));
    cr_assert_eq(nest_cli.c.err, 0, "%s", tpio_tls_last_error());
    cr_assert(th_run_until(th_fx.loop, &nest_srv.c.done, TH_TMO));
    cr_assert_eq(nest_srv.c.err, 0, "%s", tpio_tls_last_error());
    tpio_transport_t *deep = nest_cli.c.t;
    nest_cli.inner->t = deep;
    nest_srv.inner->t = nest_srv.c.t;
    cr_assert_eq(th_kind(deep), TPIO_TRANSPORT_TLS);
    cr_assert_eq(th_fd(deep), th_fd(c.t)); /* the same socket under both layers */
    cr_assert_eq(tpio_transport_write(deep, "deep", 4), 0);
    cr_assert(th_run_until_count(th_fx.loop, &nest_cli.inner->rxlen, 4, TH_TMO));
    cr_assert_eq(memcmp(nest_cli.inner->rx, "deep", 4), 0);
    cr_assert(th_run_until_count(th_fx.loop, &nest_srv.inner->rxlen, 4, TH_TMO));
    cr_assert_eq(th_conn_count(s), 1);
    if (server_closes) {
        cr_assert_eq(tpio_server_close_clients(s), 0);
        run_until_lost(nest_srv.inner);
        cr_assert_str_eq(nest_srv.inner->events, "data,lost:0");
        run_until_lost(nest_cli.inner);
        cr_assert_str_eq(nest_cli.inner->events, "data,eof,lost:0");
    } else {
        /* closing the inner layer: its close_notify, then the outer one's */
        cr_assert_eq(tpio_transport_close(deep), 0);
        run_until_lost(nest_cli.inner);
        cr_assert_str_eq(nest_cli.inner->events, "data,lost:0");
        run_until_lost(nest_srv.inner);
        cr_assert_str_eq(nest_srv.inner->events, "data,eof,lost:0");
    }
    for (int i = 0; i < 1000 && th_conn_count(s); i++)
        th_run_iters(th_fx.loop, 1);
    cr_assert_eq(th_conn_count(s), 0);
    bool done = false;
    cr_assert_eq(tpio_server_close(s), 0);
    cr_assert_eq(tpio_server_wait_closed(s, th_done_flag, &done, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &done, TH_TMO));
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

Test(tls, tls_in_tls_echo, .timeout = TMO) { tls_in_tls(false); }
Test(tls, tls_in_tls_close_clients, .timeout = TMO) { tls_in_tls(true); }

/* ---- many at once; ending handshakes ------------------------------------------------ */

Test(tls, thousand_concurrent_handshakes, .timeout = 120)
{
    enum { N = 1000 };
    SSL_CTX *sctx = th_tls_server_ctx(0, 0), *cctx = th_tls_client_ctx(0, 0);
    srv_t sv = {.tmpl.echo = true, .tmpl.free_on_lost = true};
    sv.tmpl.base.ops = &th_proto_ops;
    tls_server(&sv, sctx, NULL);
    static th_conn_t c[N];
    memset(c, 0, sizeof c);
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx);
    tpio_connect_opts_t o =
        TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = sv.port, .tls = &tls);
    for (int i = 0; i < N; i++)
        cr_assert_eq(tpio_loop_create_connection(th_fx.loop, th_factory, NULL, &o, th_on_conn,
                                                 &c[i], NULL),
                     0);
    size_t made = 0;
    for (int round = 0; round < 200000 && made < N; round++) {
        th_run_iters(th_fx.loop, 1);
        made = 0;
        for (int i = 0; i < N; i++)
            made += c[i].done;
    }
    cr_assert_eq(made, N);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(c[i].err, 0, "%d: %s", i, tpio_err_name(c[i].err));
        cr_assert_eq(tpio_transport_write(c[i].t, "x", 1), 0);
    }
    size_t echoed = 0;
    for (int round = 0; round < 200000 && echoed < N; round++) {
        th_run_iters(th_fx.loop, 1);
        echoed = 0;
        for (int i = 0; i < N; i++)
            echoed += c[i].p->rxlen;
    }
    cr_assert_eq(echoed, N);
    cr_assert_eq(sv.calls, N);
    bool done = false;
    cr_assert_eq(tpio_loop_shutdown(th_fx.loop, TPIO_SHUTDOWN_CLOSE, th_done_flag, &done), 0);
    cr_assert(th_run_until(th_fx.loop, &done, 60));
    for (int i = 0; i < N; i++) {
        cr_assert_str_eq(c[i].p->events, "made,data,lost:0");
        th_proto_free(c[i].p);
    }
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

static void handshakes_pending(srv_t *sv, int *fd)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(sv->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(connect(*fd, (struct sockaddr *)&a, sizeof a), 0);
    for (int i = 0; i < 1000 && th_conn_count(sv->s) < 1; i++)
        th_run_iters(th_fx.loop, 1);
    cr_assert_eq(th_conn_count(sv->s), 1);
}

Test(tls, close_clients_ends_handshakes, .timeout = TMO)
{
    SSL_CTX *sctx = th_tls_server_ctx(0, 0);
    srv_t sv = {0};
    sv.tmpl.base.ops = &th_proto_ops;
    tls_server(&sv, sctx, NULL);
    int fd;
    handshakes_pending(&sv, &fd);
    cr_assert_eq(tpio_server_abort_clients(sv.s), 0);
    for (int i = 0; i < 1000 && th_conn_count(sv.s); i++)
        th_run_iters(th_fx.loop, 1);
    cr_assert_eq(th_conn_count(sv.s), 0);
    char b;
    cr_assert_eq(recv(fd, &b, 1, 0), 0); /* closed: EOF */
    close(fd);
    cr_assert_eq(sv.calls, 0);
    close_server(&sv);
    SSL_CTX_free(sctx);
}

Test(tls, shutdown_ends_handshakes, .timeout = TMO)
{
    SSL_CTX *sctx = th_tls_server_ctx(0, 0);
    srv_t sv = {0};
    sv.tmpl.base.ops = &th_proto_ops;
    tls_server(&sv, sctx, NULL);
    int fd;
    handshakes_pending(&sv, &fd);
    bool done = false;
    cr_assert_eq(tpio_loop_shutdown(th_fx.loop, TPIO_SHUTDOWN_CLOSE, th_done_flag, &done), 0);
    cr_assert(th_run_until(th_fx.loop, &done, TH_TMO));
    cr_assert_eq(sv.calls, 0);
    close(fd);
    SSL_CTX_free(sctx);
}

Test(tls, start_tls_cancelled, .timeout = TMO)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    th_conn_t c0 = {0};
    th_proto_t tmpl = {.base.ops = &th_proto_ops};
    cr_assert_eq(tpio_loop_connect_accepted_socket(th_fx.loop, client_factory, &tmpl, sv[0],
                                                   NULL, th_on_conn, &c0, NULL),
                 0);
    cr_assert(th_run_until(th_fx.loop, &c0.done, TH_TMO));
    SSL_CTX *cctx = th_tls_client_ctx(0, 0);
    th_proto_t *next = th_fx_own(th_proto_new(&th_proto_ops));
    th_conn_t c = {0};
    tpio_handle_t h = 0;
    tpio_tls_opts_t bad = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx);
    /* a client must name the server; the datagram and pipe kinds cannot */
    cr_assert_eq(tpio_loop_start_tls(th_fx.loop, c0.t, &next->base, &bad, th_on_conn, &c, &h),
                 -EINVAL);
    tpio_tls_opts_t o = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx, .server_hostname = "localhost");
    cr_assert_eq(tpio_loop_start_tls(th_fx.loop, c0.t, &next->base, &o, th_on_conn, &c, &h), 0);
    cr_assert_neq(h, 0);
    th_run_iters(th_fx.loop, 2); /* the ClientHello goes; nobody answers */
    cr_assert_not(c.done);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h), 0);
    cr_assert_not(c.done, "the completion runs from the loop, not inside cancel");
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, -ECANCELED);
    cr_assert_null(c.t);
    /* the old transport is aborted with it */
    th_run_iters(th_fx.loop, 3);
    char b;
    ssize_t r;
    while ((r = recv(sv[1], &b, 1, MSG_DONTWAIT)) > 0)
        ;
    cr_assert_eq(r, 0, "the socket is closed");
    cr_assert_str_eq(c0.p->events, "made");
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h), -ENOENT);
    th_run_iters(th_fx.loop, 3);
    close(sv[1]);
    SSL_CTX_free(cctx);
}

Test(tls, cancel_during_the_handshake, .timeout = TMO)
{
    uint16_t port;
    int lfd = plain_listener(&port);
    SSL_CTX *cctx = th_tls_client_ctx(0, 0);
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx);
    tpio_connect_opts_t o =
        TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = port, .tls = &tls);
    th_conn_t c = {0};
    tpio_handle_t h = 0;
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, client_factory, NULL, &o, th_on_conn,
                                             &c, &h),
                 0);
    int fd = accept_one(lfd); /* connected; the server never answers the ClientHello */
    char hello[5];
    for (int i = 0; i < 10000 && recv(fd, hello, sizeof hello, MSG_PEEK | MSG_DONTWAIT) < 5; i++)
        th_run_iters(th_fx.loop, 1);
    cr_assert_eq(recv(fd, hello, sizeof hello, MSG_PEEK), 5);
    cr_assert_eq(hello[0], 0x16, "a handshake record");
    cr_assert_not(c.done);
    /* the same request that connected now cancels the handshake */
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h), 0);
    cr_assert_not(c.done);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, -ECANCELED, "%s", tpio_err_name(c.err));
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h), -ENOENT);
    th_run_iters(th_fx.loop, 3);
    char buf[4096];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof buf, 0)) > 0)
        ;
    cr_assert_eq(n, 0, "the socket was closed");
    close(fd);
    close(lfd);
    SSL_CTX_free(cctx);
}

Test(tls, request_ends_with_the_handshake, .timeout = TMO)
{
    SSL_CTX *sctx = th_tls_server_ctx(0, 0), *cctx = th_tls_client_ctx(0, 0);
    srv_t sv = {0};
    sv.tmpl.base.ops = &th_proto_ops;
    tls_server(&sv, sctx, NULL);
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = cctx);
    tpio_connect_opts_t o =
        TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = sv.port, .tls = &tls);
    th_conn_t c = {0};
    tpio_handle_t h = 0;
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, client_factory, NULL, &o, th_on_conn,
                                             &c, &h),
                 0);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h), -ENOENT, "over once connected");
    /* set_protocol works on a TLS transport */
    th_proto_t *other = th_fx_own(th_proto_new(&th_proto_ops));
    other->t = c.t;
    cr_assert_eq(tpio_transport_set_protocol(c.t, &other->base), 0);
    cr_assert(th_run_until_count(th_fx.loop, &sv.calls, 1, TH_TMO));
    cr_assert(th_run_until(th_fx.loop, &sv.last->made, TH_TMO));
    cr_assert_eq(tpio_transport_write(sv.last->t, "to the other", 12), 0);
    cr_assert(th_run_until_count(th_fx.loop, &other->rxlen, 12, TH_TMO));
    cr_assert_eq(c.p->rxlen, 0);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    run_until_lost(other);
    cr_assert_str_eq(other->events, "data,lost:0");
    cr_assert_str_eq(c.p->events, "made");
    run_until_lost(sv.last);
    close_server(&sv);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}
