/* libFuzzer harness for the TLS transport: the fuzzer plays the peer of a
 * tpio TLS transport, server side (connect_accepted_socket) or client side
 * (create_connection with use_sock), or a plain connection upgraded with
 * start_tls, over a socketpair.
 *
 * The peer is an in-process OpenSSL object over memory BIOs, so what goes
 * on the socket is a mix of real records (handshake messages, application
 * data, KeyUpdate, close_notify, renegotiation, all of them encrypted by
 * the peer) and raw bytes from the input, sliced, corrupted or truncated
 * and written in chunks whose sizes come from the input, with loop
 * iterations between chunks. The handshake may run first, untouched
 * (after which the input reaches the decrypting paths), or be driven by
 * the input itself. The user's protocol pauses and resumes reading,
 * writes, closes, aborts, switches protocols, sets watermarks and read
 * sizes, from the input and from inside its callbacks.
 *
 * Every input ends the same way: the transport closed or aborted, the
 * peer's socket closed, the loop run until connection_lost has run and
 * tpio_loop_close() returns 0. A loop that will not close, and any breach
 * of the callback contract the harness can see (connection_made twice,
 * data after eof_received, pause_writing twice, a callback inside the
 * caller's own call, a completion that never comes...), abort().
 *
 * Input: 4 configuration bytes (see the CFG* bits below), then operations:
 * one byte each, kind = byte % NOPS and arg = byte / NOPS, some followed
 * by bytes of their own. Missing bytes read as 0.
 *
 * TPIO_FUZZ_SEEDS=dir ./fuzz_tls writes a seed corpus into dir and exits. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <tpio.h>

/* ---- the input's layout -------------------------------------------------- */

/* cfg[0] */
#define CFG_CLIENT 0x01     /* tpio is the client (else the server) */
#define CFG_AUTO_HS 0x02    /* a clean handshake before the operations */
#define CFG_BUFFERED 0x04   /* the protocol starts as a BufferedProtocol */
#define CFG_TLS12 0x08      /* the peer goes no higher than TLS 1.2 */
#define CFG_ECHO 0x10       /* data_received writes the data back */
#define CFG_EOF_KEEP 0x20   /* eof_received returns true */
#define CFG_PAUSE_CB 0x40   /* every data callback pauses reading */
#define CFG_SMALL_BUF 0x80  /* small socket buffers: partial writes, flow control */
/* cfg[1] */
#define CFG1_SIZE 0x0f      /* index in sizes[]: read size / get_buffer size */
#define CFG1_ALT1 0x10      /* client: the context trusts nothing (verify fails);
                               server: the context asks for a client certificate */
#define CFG1_ALT2 0x20      /* client: a server_hostname the certificate lacks;
                               server: the peer sends a client certificate */
#define CFG1_TINY_TMO 0x40  /* handshake / shutdown timeouts of 2 ms (SLEEP fires them) */
#define CFG1_TRIGGERS 0x80  /* plaintext bytes 0xC1..0xC7 make the protocol act */
/* cfg[2]: 0, default watermarks; else high = (cfg[2] - 1) * 64 */
/* cfg[3] */
#define CFG3_END_ABORT 0x01   /* at the end: abort (else close) */
#define CFG3_END_CANCEL 0x02  /* at the end: cancel a request under way */
#define CFG3_PEER_ANSWER 0x04 /* at the end: the peer answers close_notify */
#define CFG3_PEER_GONE 0x08   /* at the end: the peer's socket closes at once */
#define CFG3_START_TLS 0x10   /* a plain connection upgraded with start_tls */
#define CFG3_NO_ALPN 0x20     /* the peer offers / accepts no ALPN */
#define CFG3_RESUME 0x40      /* server: the peer resumes a session made at start-up
                                 (a shorter handshake, no certificate) */
#define CFG3_INITIAL 0x80     /* start_tls: what the peer has queued goes in as
                                 initial_data (a pipelined ClientHello) */
#define NCFG 4

enum {
    OP_RAW,         /* n = byte, n bytes: raw bytes queued for the socket */
    OP_FLUSH,       /* n = byte: up to (n + 1) * (arg + 1) queued bytes written; one iteration */
    OP_FLUSH_ALL,   /* everything queued written (what the socket takes); one iteration */
    OP_RUN,         /* arg % 4 + 1 iterations */
    OP_PEER_STEP,   /* the peer reads the socket, handshakes or decrypts, queues its answer */
    OP_APP,         /* n = byte, n bytes: application data the peer encrypts */
    OP_KEY_UPDATE,  /* the peer sends a KeyUpdate (arg & 1: update requested) */
    OP_CLOSE_NOTIFY,/* the peer sends close_notify */
    OP_HALF_CLOSE,  /* queued bytes written, then the peer's write side shut down */
    OP_CORRUPT,     /* pos = 2 bytes, x = byte: queued byte at pos % len ^= x (x 0: 0x80) */
    OP_DROP,        /* n = byte: drop n queued bytes, from the front (arg even) or the back */
    OP_PAUSE,       /* pause_reading */
    OP_RESUME,      /* resume_reading */
    OP_WRITE,       /* n = byte: the protocol writes n * 16 + arg bytes, or (arg odd)
                       writelines of three buffers, n * 80 + arg bytes in all */
    OP_CLOSE,       /* the protocol closes */
    OP_ABORT,       /* the protocol aborts */
    OP_LIMITS,      /* h = byte: set_write_buffer_limits(h * 32, default) */
    OP_READ_SIZE,   /* n = byte: set_read_size(n + 1) */
    OP_SWITCH,      /* set_protocol: Protocol <-> BufferedProtocol */
    OP_INFO,        /* the extra info, the cipher, the buffer size, is_reading */
    OP_RENEGOTIATE, /* the peer starts a renegotiation (TLS 1.2) */
    OP_CANCEL,      /* tpio_loop_cancel of the request under way */
    OP_PEER_CLOSE,  /* the peer's socket closed (no more writes, no more reads) */
    OP_SLEEP,       /* one iteration that waits 3 ms (with CFG1_TINY_TMO, twice at most) */
    OP_PEER_BIG,    /* the peer encrypts (arg + 1) * 4 KiB of application data */
    NOPS
};

static const size_t sizes[16] = {0,    1,    2,     3,     7,     16,     100,    512,
                                 1000, 4096, 5000,  16384, 16385, 65536, 262144, 17};

/* ---- helpers ------------------------------------------------------------- */

static void bug(const char *what)
{
    fprintf(stderr, "fuzz_tls: %s\n", what);
    abort();
}
#define CHECK(cond, what)  \
    do {                   \
        if (!(cond))       \
            bug(what);     \
    } while (0)

/* TPIO_FUZZ_TRACE=1: one line per event on stderr, to see where an input goes.
 * TPIO_FUZZ_NO_START_TLS=1: never start_tls (to fuzz on past a known bug there). */
static bool tracing, no_start_tls;
#define TRACE(...)                              \
    do {                                        \
        if (tracing)                            \
            fprintf(stderr, "  " __VA_ARGS__);  \
    } while (0)

typedef struct rd {
    const uint8_t *p;
    size_t n;
} rd_t;

static unsigned u8(rd_t *r)
{
    if (!r->n)
        return 0;
    r->n--;
    return *r->p++;
}

static const uint8_t *take(rd_t *r, size_t *n)
{
    if (*n > r->n)
        *n = r->n;
    const uint8_t *p = r->p;
    r->p += *n;
    r->n -= *n;
    return p;
}

/* ---- start-up: a key, a self-signed certificate, the contexts ---------------- */

static EVP_PKEY *key;
static X509 *cert;
static SSL_CTX *tpio_srv_ctx, *tpio_srv_ctx_req; /* tpio as the server */
static SSL_CTX *tpio_cli_ctx, *tpio_cli_ctx_bad; /* tpio as the client */
static SSL_CTX *peer_srv_ctx, *peer_cli_ctx;     /* the harness's peer */
static SSL_SESSION *session;                     /* a ticket of tpio_srv_ctx's */
static uint8_t pattern[65536];

static const unsigned char alpn_wire[] = "\x02h2\x08http/1.1";

static void add_ext(X509 *c, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, c, c, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    CHECK(e, "X509V3_EXT_conf_nid");
    X509_add_ext(c, e, -1);
    X509_EXTENSION_free(e);
}

static void make_cert(void)
{
    key = EVP_EC_gen("P-256");
    CHECK(key, "EVP_EC_gen");
    cert = X509_new();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -86400);
    X509_gmtime_adj(X509_getm_notAfter(cert), 30 * 86400L);
    X509_set_pubkey(cert, key);
    X509_NAME *n = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1,
                               -1, 0);
    X509_set_issuer_name(cert, n);
    add_ext(cert, NID_basic_constraints, "CA:FALSE");
    add_ext(cert, NID_key_usage, "critical,digitalSignature");
    add_ext(cert, NID_subject_key_identifier, "hash");
    add_ext(cert, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
    CHECK(X509_sign(cert, key, EVP_sha256()) > 0, "X509_sign");
}

static bool no_alpn(void);

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    if (no_alpn() ||
        SSL_select_next_proto((unsigned char **)out, outlen, alpn_wire, sizeof alpn_wire - 1,
                              in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    return SSL_TLSEXT_ERR_OK;
}

static int accept_any(int ok, X509_STORE_CTX *x)
{
    (void)ok;
    (void)x;
    return 1;
}

static SSL_CTX *server_ctx(void)
{
    SSL_CTX *c = SSL_CTX_new(TLS_server_method());
    CHECK(c, "SSL_CTX_new");
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    CHECK(SSL_CTX_use_certificate(c, cert) == 1, "use_certificate");
    CHECK(SSL_CTX_use_PrivateKey(c, key) == 1, "use_PrivateKey");
    SSL_CTX_set_alpn_select_cb(c, alpn_select, NULL);
    return c;
}

static SSL_CTX *client_ctx(bool trust)
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    CHECK(c, "SSL_CTX_new");
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    if (trust)
        CHECK(X509_STORE_add_cert(SSL_CTX_get_cert_store(c), cert) == 1, "add_cert");
    SSL_CTX_set_alpn_protos(c, alpn_wire, sizeof alpn_wire - 1);
    return c;
}

/* One handshake between the peer's client context and tpio_srv_ctx over a
 * BIO pair, for a session the peer can resume. */
static void make_session(void)
{
    SSL *srv = SSL_new(tpio_srv_ctx), *cli = SSL_new(peer_cli_ctx);
    BIO *a = NULL, *b = NULL;
    CHECK(srv && cli && BIO_new_bio_pair(&a, 0, &b, 0) == 1, "SSL_new");
    SSL_set_bio(srv, a, a);
    SSL_set_bio(cli, b, b);
    SSL_set_accept_state(srv);
    SSL_set_connect_state(cli);
    for (int i = 0; i < 8; i++) {
        SSL_do_handshake(cli);
        SSL_do_handshake(srv);
    }
    char c;
    size_t n;
    CHECK(SSL_write_ex(srv, "x", 1, &n) == 1 && SSL_read_ex(cli, &c, 1, &n) == 1,
          "the start-up handshake failed");
    session = SSL_get1_session(cli);
    CHECK(session && SSL_SESSION_is_resumable(session), "no session to resume");
    /* Freed without close_notify, a session is no longer resumable. */
    SSL_set_shutdown(cli, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(cli);
    SSL_free(srv);
    ERR_clear_error();
}

static void write_seeds(const char *dir);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    tracing = getenv("TPIO_FUZZ_TRACE") != NULL;
    no_start_tls = getenv("TPIO_FUZZ_NO_START_TLS") != NULL;
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (uint8_t)(i * 7 + 1);
    make_cert();
    tpio_srv_ctx = server_ctx();
    tpio_srv_ctx_req = server_ctx();
    SSL_CTX_set_verify(tpio_srv_ctx_req, SSL_VERIFY_PEER, accept_any);
    tpio_cli_ctx = client_ctx(true);
    tpio_cli_ctx_bad = client_ctx(false);
    peer_srv_ctx = server_ctx();
    peer_cli_ctx = SSL_CTX_new(TLS_client_method());
    CHECK(peer_cli_ctx, "SSL_CTX_new");
    SSL_CTX_set_verify(peer_cli_ctx, SSL_VERIFY_NONE, NULL);
    /* One ticket after each handshake rather than two: less work per input. */
    SSL_CTX_set_num_tickets(tpio_srv_ctx, 1);
    SSL_CTX_set_num_tickets(peer_srv_ctx, 1);
    make_session();
    const char *seeds = getenv("TPIO_FUZZ_SEEDS");
    if (seeds) {
        write_seeds(seeds);
        exit(0);
    }
    return 0;
}

/* ---- the state of one input ---------------------------------------------------- */

typedef struct conn {
    tpio_protocol_t plain, buffered;
    tpio_protocol_t *cur;
    bool made, eof, wpaused, in_start_tls;
    bool bad_buffer; /* the next get_buffer gives no buffer */
    uint8_t *buf;
    size_t buflen;
} conn_t;

static struct fuzz {
    uint8_t cfg[NCFG];
    tpio_loop_t *loop;
    int fd;            /* the peer's end; -1 once closed */
    bool wr_shut;      /* the peer's write side is shut */
    SSL *peer;
    bool peer_dead;    /* the peer's SSL failed: only raw bytes from now on */
    bool peer_got_notify;
    uint8_t *q;        /* bytes queued for the socket */
    size_t qlen, qcap;
    conn_t *conn;      /* from the factory until connection_lost */
    tpio_transport_t *t; /* from connection_made until connection_lost */
    tpio_handle_t req;
    int pending;       /* completions still due */
    bool tls_settled;  /* the TLS completion ran (success or failure) */
    bool in_call;      /* the harness is inside a call into tpio */
    bool plain_phase;  /* start_tls: the plain connection is not upgraded yet */
    int sleeps;        /* OP_SLEEPs that waited */
    tpio_tls_opts_t tls;
    uint8_t *initial;  /* start_tls's initial_data */
} F;

static bool no_alpn(void)
{
    return (F.cfg[3] & CFG3_NO_ALPN) != 0;
}

static size_t buf_size(void)
{
    size_t n = sizes[F.cfg[1] & CFG1_SIZE];
    return n ? n : 65536;
}

/* ---- the queue to the socket ------------------------------------------------------ */

#define QMAX (1u << 20)

static void q_add(const void *data, size_t n)
{
    if (F.qlen + n > QMAX)
        n = QMAX - F.qlen;
    if (!n)
        return;
    if (F.qlen + n > F.qcap) {
        size_t cap = F.qcap ? F.qcap : 4096;
        while (cap < F.qlen + n)
            cap *= 2;
        F.q = realloc(F.q, cap);
        CHECK(F.q, "out of memory");
        F.qcap = cap;
    }
    memcpy(F.q + F.qlen, data, n);
    F.qlen += n;
}

static void q_drop_front(size_t n)
{
    if (n > F.qlen)
        n = F.qlen;
    if (!n)
        return;
    memmove(F.q, F.q + n, F.qlen - n);
    F.qlen -= n;
}

/* Write up to max queued bytes, as many as the socket takes now. */
static void q_flush(size_t max)
{
    if (F.fd < 0 || F.wr_shut) {
        F.qlen = 0;
        return;
    }
    while (max && F.qlen) {
        size_t n = F.qlen < max ? F.qlen : max;
        ssize_t w = send(F.fd, F.q, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        TRACE("sent %zd of %zu\n", w, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                F.qlen = 0; /* the other end is gone */
            return;
        }
        q_drop_front((size_t)w);
        max -= (size_t)w;
    }
}

static void run(double timeout)
{
    int rc = tpio_loop_run_once(F.loop, timeout);
    CHECK(rc == 0, "tpio_loop_run_once failed");
}

/* ---- the peer -------------------------------------------------------------------- */

static void peer_out(void)
{
    if (!F.peer)
        return;
    BIO *w = SSL_get_wbio(F.peer);
    uint8_t tmp[16384];
    int n;
    while ((n = BIO_read(w, tmp, sizeof tmp)) > 0)
        q_add(tmp, (size_t)n);
}

static bool peer_ready(void)
{
    return F.peer && !F.peer_dead && SSL_is_init_finished(F.peer);
}

static void peer_fail_check(int rc)
{
    int e = SSL_get_error(F.peer, rc);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        F.peer_dead = true;
        if (tracing) {
            char msg[256];
            ERR_error_string_n(ERR_peek_error(), msg, sizeof msg);
            TRACE("peer failed: %d %s\n", e, msg);
        }
    }
}

/* Read what tpio sent, then handshake or decrypt (and drop) it. */
static void peer_step(void)
{
    if (F.fd >= 0) {
        uint8_t tmp[16384];
        size_t total = 0;
        for (;;) {
            ssize_t n = recv(F.fd, tmp, sizeof tmp, MSG_DONTWAIT);
            if (n <= 0)
                break;
            if (F.peer)
                BIO_write(SSL_get_rbio(F.peer), tmp, (int)n);
            if ((total += (size_t)n) >= (1u << 20))
                break;
        }
        TRACE("peer read %zu\n", total);
    }
    if (!F.peer || F.peer_dead)
        goto out;
    ERR_clear_error();
    if (!SSL_is_init_finished(F.peer)) {
        int rc = SSL_do_handshake(F.peer);
        if (rc != 1)
            peer_fail_check(rc);
        TRACE("peer handshake %d%s\n", rc, F.peer_dead ? ", failed" : "");
    }
    if (peer_ready()) {
        uint8_t tmp[16384];
        size_t got;
        int rc;
        while ((rc = SSL_read_ex(F.peer, tmp, sizeof tmp, &got)) == 1)
            ;
        int e = SSL_get_error(F.peer, rc);
        if (e == SSL_ERROR_ZERO_RETURN)
            F.peer_got_notify = true;
        else if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
            F.peer_dead = true;
    }
out:
    ERR_clear_error();
    peer_out();
}

static void peer_write(const void *data, size_t n)
{
    if (!peer_ready() || !n)
        return;
    ERR_clear_error();
    size_t put;
    int rc = SSL_write_ex(F.peer, data, n, &put);
    if (rc != 1)
        peer_fail_check(rc);
    ERR_clear_error();
    peer_out();
}

static void peer_new(bool peer_is_server)
{
    F.peer = SSL_new(peer_is_server ? peer_srv_ctx : peer_cli_ctx);
    CHECK(F.peer, "SSL_new");
    BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
    CHECK(r && w, "BIO_new");
    SSL_set_bio(F.peer, r, w);
    if (F.cfg[0] & CFG_TLS12)
        SSL_set_max_proto_version(F.peer, TLS1_2_VERSION);
    if (peer_is_server) {
        SSL_set_accept_state(F.peer);
        if (F.cfg[3] & CFG3_NO_ALPN)
            SSL_set_alpn_protos(F.peer, NULL, 0);
    } else {
        SSL_set_connect_state(F.peer);
        SSL_set_tlsext_host_name(F.peer, "localhost");
        if (!(F.cfg[3] & CFG3_NO_ALPN))
            SSL_set_alpn_protos(F.peer, alpn_wire, sizeof alpn_wire - 1);
        if (F.cfg[1] & CFG1_ALT2) {
            SSL_use_certificate(F.peer, cert);
            SSL_use_PrivateKey(F.peer, key);
        }
        if (F.cfg[3] & CFG3_RESUME) {
            /* A copy: an alert marks the session it is sent on not
             * resumable, and no input may change the next one. */
            SSL_SESSION *copy = SSL_SESSION_dup(session);
            CHECK(copy, "SSL_SESSION_dup");
            SSL_set_session(F.peer, copy);
            SSL_SESSION_free(copy);
        }
    }
}

/* ---- the protocol ------------------------------------------------------------------ */

static const tpio_protocol_ops_t plain_ops, buffered_ops;

static conn_t *C(tpio_protocol_t *p)
{
    if (p->ops == &plain_ops)
        return tpio_container_of(p, conn_t, plain);
    CHECK(p->ops == &buffered_ops, "a callback for a protocol that is not ours");
    return tpio_container_of(p, conn_t, buffered);
}

/* Every callback: the protocol is the live one, and no callback but
 * pause_writing runs inside the harness's own call into tpio. */
static conn_t *enter(tpio_protocol_t *p, bool may_run_inside_call)
{
    conn_t *c = C(p);
    CHECK(c == F.conn, "a callback for a protocol after its connection_lost");
    CHECK(p == c->cur, "a callback for the protocol set_protocol replaced");
    if (F.in_call && !may_run_inside_call)
        bug("a protocol callback ran inside the caller's call into tpio");
    return c;
}

static void begin_call(void)
{
    F.in_call = true;
}

static void end_call(void)
{
    F.in_call = false;
}

static void configure(tpio_transport_t *t);

static void c_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    conn_t *c = enter(p, false);
    CHECK(!c->made, "connection_made twice");
    CHECK(t, "connection_made without a transport");
    c->made = true;
    F.t = t;
    TRACE("connection_made\n");
    if (F.plain_phase)
        /* start_tls comes from the completion: nothing is read before. */
        tpio_transport_pause_reading(t);
    else
        configure(t);
}

/* The read size and watermarks of the input, on the TLS transport. */
static void configure(tpio_transport_t *t)
{
    size_t rs = sizes[F.cfg[1] & CFG1_SIZE];
    if (rs)
        CHECK(tpio_transport_set_read_size(t, rs) == 0, "set_read_size refused a valid size");
    if (F.cfg[2])
        CHECK(tpio_transport_set_write_buffer_limits(t, (ssize_t)(F.cfg[2] - 1) * 64,
                                                     TPIO_LIMIT_DEFAULT) == 0,
              "set_write_buffer_limits refused valid limits");
}

static void c_lost(tpio_protocol_t *p, int err)
{
    (void)err;
    conn_t *c = enter(p, false);
    CHECK(c->made, "connection_lost without connection_made");
    TRACE("connection_lost(%s) %s\n", tpio_err_name(err), err ? tpio_tls_last_error() : "");
    (void)strlen(tpio_tls_last_error());
    F.t = NULL;
    F.conn = NULL;
    free(c->buf);
    free(c);
}

static void c_pause_writing(tpio_protocol_t *p)
{
    conn_t *c = enter(p, true);
    CHECK(c->made, "pause_writing before connection_made");
    CHECK(!c->wpaused, "pause_writing twice");
    c->wpaused = true;
}

static void c_resume_writing(tpio_protocol_t *p)
{
    conn_t *c = enter(p, false);
    CHECK(c->wpaused, "resume_writing without pause_writing");
    c->wpaused = false;
}

static void switch_protocol(conn_t *c, tpio_transport_t *t)
{
    tpio_protocol_t *next = c->cur == &c->plain ? &c->buffered : &c->plain;
    CHECK(tpio_transport_set_protocol(t, next) == 0, "set_protocol failed");
    c->cur = next;
}

static void on_data(conn_t *c, const uint8_t *data, size_t n)
{
    CHECK(c->made, "data before connection_made");
    CHECK(!c->eof, "data after eof_received");
    CHECK(n > 0, "empty data");
    TRACE("data %zu\n", n);
    tpio_transport_t *t = F.t;
    CHECK(t, "data without a transport");
    if (F.cfg[0] & CFG_ECHO)
        tpio_transport_write(t, data, n);
    if (F.cfg[0] & CFG_PAUSE_CB)
        tpio_transport_pause_reading(t);
    if (!(F.cfg[1] & CFG1_TRIGGERS))
        return;
    bool wrote = false, switched = false;
    for (size_t i = 0; i < n && F.t; i++) {
        switch (data[i]) {
        case 0xC1:
            tpio_transport_close(t);
            break;
        case 0xC2:
            tpio_transport_abort(t);
            break;
        case 0xC3:
            if (!switched)
                switch_protocol(c, t);
            switched = true;
            break;
        case 0xC4:
            if (!wrote)
                tpio_transport_write(t, pattern, sizeof pattern);
            wrote = true;
            break;
        case 0xC5:
            tpio_transport_pause_reading(t);
            break;
        case 0xC6:
            tpio_transport_set_write_buffer_limits(t, 0, TPIO_LIMIT_DEFAULT);
            break;
        case 0xC7:
            c->bad_buffer = true; /* a BufferedProtocol's next get_buffer fails */
            break;
        default:
            break;
        }
    }
}

static void c_data(tpio_protocol_t *p, const void *data, size_t n)
{
    on_data(enter(p, false), data, n);
}

static void *c_get_buffer(tpio_protocol_t *p, ssize_t hint, size_t *len)
{
    conn_t *c = enter(p, false);
    CHECK(hint == -1, "get_buffer's sizehint is not -1");
    CHECK(c->made && !c->eof, "get_buffer outside the connection");
    if (c->bad_buffer) {
        *len = 0;
        return NULL;
    }
    if (!c->buf) {
        c->buflen = buf_size();
        c->buf = malloc(c->buflen);
        CHECK(c->buf, "out of memory");
    }
    *len = c->buflen;
    return c->buf;
}

static void c_buffer_updated(tpio_protocol_t *p, size_t n)
{
    conn_t *c = enter(p, false);
    CHECK(c->buf && n <= c->buflen, "buffer_updated past the buffer");
    on_data(c, c->buf, n);
}

static bool c_eof(tpio_protocol_t *p)
{
    conn_t *c = enter(p, false);
    CHECK(c->made, "eof_received before connection_made");
    CHECK(!c->eof, "eof_received twice");
    TRACE("eof_received\n");
    c->eof = true;
    return (F.cfg[0] & CFG_EOF_KEEP) != 0;
}

static const tpio_protocol_ops_t plain_ops = {
    .connection_made = c_made,
    .connection_lost = c_lost,
    .pause_writing = c_pause_writing,
    .resume_writing = c_resume_writing,
    .data_received = c_data,
    .eof_received = c_eof,
};

static const tpio_protocol_ops_t buffered_ops = {
    .connection_made = c_made,
    .connection_lost = c_lost,
    .pause_writing = c_pause_writing,
    .resume_writing = c_resume_writing,
    .get_buffer = c_get_buffer,
    .buffer_updated = c_buffer_updated,
    .eof_received = c_eof,
};

static tpio_protocol_t *factory(void *arg)
{
    (void)arg;
    CHECK(!F.in_call, "the factory ran inside the caller's call");
    CHECK(!F.conn, "the factory ran twice");
    conn_t *c = calloc(1, sizeof *c);
    CHECK(c, "out of memory");
    c->plain.ops = &plain_ops;
    c->buffered.ops = &buffered_ops;
    c->cur = (F.cfg[0] & CFG_BUFFERED) ? &c->buffered : &c->plain;
    F.conn = c;
    return c->cur;
}

static void info(tpio_transport_t *t)
{
    static const char *const names[] = {"sslcontext", "ssl_object", "peercert",
                                        "cipher",     "compression", "alpn_protocol",
                                        "socket",     "peername",   "sockname"};
    tpio_extra_t x;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (tpio_transport_get_extra_info(t, names[i], &x) == 0 && x.type == TPIO_EXTRA_STR)
            (void)strlen(x.str);
    const char *name, *version;
    int bits;
    if (tpio_tls_get_cipher(t, &name, &version, &bits) == 0)
        (void)(strlen(name) + strlen(version));
    size_t n;
    tpio_transport_get_write_buffer_size(t, &n);
    bool b;
    tpio_transport_is_reading(t, &b);
    tpio_transport_is_closing(t, &b);
    tpio_transport_can_write_eof(t, &b);
    int fd;
    tpio_transport_get_fd(t, &fd);
    tpio_transport_write_eof(t); /* TLS: -ENOTSUP */
}

static void on_tls(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                   void *arg);

static void start_tls(tpio_loop_t *loop, tpio_transport_t *t, conn_t *c)
{
    F.plain_phase = false;
    F.tls.server_side = (F.cfg[0] & CFG_CLIENT) ? TPIO_DEFAULT : TPIO_ON;
    F.tls.server_hostname = NULL;
    if (F.cfg[0] & CFG_CLIENT)
        F.tls.server_hostname = (F.cfg[1] & CFG1_ALT2) ? "wrong.example" : "localhost";
    if (F.cfg[3] & CFG3_INITIAL) {
        /* The bytes the peer queued (its ClientHello, when tpio is the
         * server) arrived before the upgrade: they go in as initial_data. */
        peer_step();
        if (F.qlen) {
            F.initial = malloc(F.qlen);
            CHECK(F.initial, "out of memory");
            memcpy(F.initial, F.q, F.qlen);
            F.tls.initial_data = F.initial;
            F.tls.initial_len = F.qlen;
            F.qlen = 0;
        }
    }
    int rc = tpio_loop_start_tls(loop, t, c->cur, &F.tls, on_tls, NULL, &F.req);
    if (rc < 0) {
        CHECK(rc != -EINVAL, "start_tls refused valid arguments");
        F.tls_settled = true; /* stays a plain connection, which ends as any */
        tpio_transport_close(t);
        return;
    }
    F.pending++;
    c->in_start_tls = true;
    F.t = NULL; /* no longer ours */
}

/* The completion of the connection call (TLS, or plain before start_tls). */
static void on_conn(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                    void *arg)
{
    (void)arg;
    CHECK(!F.in_call, "a completion ran inside the caller's call");
    CHECK(F.pending-- > 0, "a completion ran twice");
    F.req = 0;
    TRACE("connected: %s %s\n", tpio_err_name(err), err ? tpio_tls_last_error() : "");
    if (err < 0) {
        CHECK(!t && !p, "a failed completion with a transport");
        CHECK(!F.conn, "a failed connection whose protocol exists");
        (void)strlen(tpio_tls_last_error());
        F.tls_settled = true;
        return;
    }
    CHECK(t && p && F.conn && p == F.conn->cur && F.conn->made,
          "a completion without its transport and protocol");
    bool closing;
    tpio_transport_is_closing(t, &closing);
    if (F.plain_phase) {
        if (closing) {
            F.tls_settled = true;
            F.plain_phase = false;
            return;
        }
        start_tls(loop, t, F.conn);
        return;
    }
    CHECK(t == F.t || closing, "the completion's transport is not connection_made's");
    F.tls_settled = true;
    info(t);
}

static void on_tls(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                   void *arg)
{
    (void)loop;
    (void)arg;
    CHECK(!F.in_call, "a completion ran inside the caller's call");
    CHECK(F.pending-- > 0, "a completion ran twice");
    F.req = 0;
    F.tls_settled = true;
    TRACE("start_tls: %s %s\n", tpio_err_name(err), err ? tpio_tls_last_error() : "");
    conn_t *c = F.conn;
    CHECK(c && c->in_start_tls, "start_tls completed for a protocol that is gone");
    c->in_start_tls = false;
    if (err < 0) {
        CHECK(!t && !p, "a failed start_tls with a transport");
        (void)strlen(tpio_tls_last_error());
        /* The protocol never hears of the TLS transport: ours to free. */
        F.conn = NULL;
        free(c->buf);
        free(c);
        return;
    }
    CHECK(t && p == c->cur, "start_tls completed without its transport and protocol");
    F.t = t;
    configure(t);
    info(t);
}

static void on_error(tpio_loop_t *loop, const tpio_error_context_t *ctx, void *arg)
{
    (void)loop;
    (void)arg;
    CHECK(ctx && ctx->message, "an error context without a message");
    TRACE("error handler: %s (%s)\n", ctx->message, tpio_err_name(ctx->error));
}

/* ---- the operations ------------------------------------------------------------------- */

static void op(rd_t *r)
{
    unsigned b = u8(r), kind = b % NOPS, arg = b / NOPS;
    TRACE("op %u arg %u (queued %zu)\n", kind, arg, F.qlen);
    tpio_transport_t *t = F.t;
    size_t n;
    switch (kind) {
    case OP_RAW: {
        n = u8(r);
        const uint8_t *p = take(r, &n);
        q_add(p, n);
        break;
    }
    case OP_FLUSH:
        q_flush((size_t)(u8(r) + 1) * (arg + 1));
        run(0);
        break;
    case OP_FLUSH_ALL:
        q_flush(SIZE_MAX);
        run(0);
        break;
    case OP_RUN:
        for (unsigned i = 0; i < arg % 4 + 1; i++)
            run(0);
        break;
    case OP_PEER_STEP:
        peer_step();
        break;
    case OP_APP: {
        n = u8(r);
        const uint8_t *p = take(r, &n);
        peer_write(p, n);
        break;
    }
    case OP_KEY_UPDATE:
        if (peer_ready() && SSL_version(F.peer) == TLS1_3_VERSION) {
            ERR_clear_error();
            if (SSL_key_update(F.peer, (arg & 1) ? SSL_KEY_UPDATE_REQUESTED
                                                 : SSL_KEY_UPDATE_NOT_REQUESTED) == 1) {
                int rc = SSL_do_handshake(F.peer);
                if (rc != 1)
                    peer_fail_check(rc);
            }
            ERR_clear_error();
            peer_out();
        }
        break;
    case OP_CLOSE_NOTIFY:
        if (peer_ready()) {
            ERR_clear_error();
            SSL_shutdown(F.peer);
            ERR_clear_error();
            peer_out();
        }
        break;
    case OP_HALF_CLOSE:
        if (F.fd >= 0 && !F.wr_shut) {
            q_flush(SIZE_MAX);
            shutdown(F.fd, SHUT_WR);
            F.wr_shut = true;
            F.qlen = 0;
        }
        break;
    case OP_CORRUPT: {
        unsigned pos = u8(r) << 8;
        pos |= u8(r);
        unsigned x = u8(r);
        if (F.qlen)
            F.q[pos % F.qlen] ^= x ? x : 0x80;
        break;
    }
    case OP_DROP:
        n = u8(r);
        if (n > F.qlen)
            n = F.qlen;
        if (arg & 1)
            F.qlen -= n;
        else
            q_drop_front(n);
        break;
    case OP_PAUSE:
        if (t) {
            begin_call();
            tpio_transport_pause_reading(t);
            end_call();
        }
        break;
    case OP_RESUME:
        if (t) {
            begin_call();
            tpio_transport_resume_reading(t);
            end_call();
        }
        break;
    case OP_WRITE:
        n = u8(r) * ((arg & 1) ? 80 : 16) + arg;
        if (t) {
            begin_call();
            if (arg & 1) {
                tpio_buf_t bufs[3] = {{pattern, n / 3}, {pattern + 1, n / 3},
                                      {pattern + 2, n - 2 * (n / 3)}};
                tpio_transport_writelines(t, bufs, 3);
            } else {
                tpio_transport_write(t, pattern, n);
            }
            end_call();
        }
        break;
    case OP_CLOSE:
        if (t) {
            begin_call();
            tpio_transport_close(t);
            end_call();
        }
        break;
    case OP_ABORT:
        if (t) {
            begin_call();
            tpio_transport_abort(t);
            end_call();
        }
        break;
    case OP_LIMITS:
        n = u8(r);
        if (t) {
            begin_call();
            tpio_transport_set_write_buffer_limits(t, (ssize_t)n * 32, TPIO_LIMIT_DEFAULT);
            end_call();
        }
        break;
    case OP_READ_SIZE:
        n = u8(r) + 1;
        if (t) {
            begin_call();
            CHECK(tpio_transport_set_read_size(t, n) == 0, "set_read_size refused a valid size");
            end_call();
        }
        break;
    case OP_SWITCH:
        if (t && F.conn) {
            begin_call();
            switch_protocol(F.conn, t);
            end_call();
        }
        break;
    case OP_INFO:
        if (t) {
            begin_call();
            info(t);
            end_call();
        }
        break;
    case OP_RENEGOTIATE:
        if (peer_ready() && SSL_version(F.peer) == TLS1_2_VERSION) {
            ERR_clear_error();
            if (SSL_renegotiate(F.peer) == 1) {
                int rc = SSL_do_handshake(F.peer);
                if (rc != 1)
                    peer_fail_check(rc);
            }
            ERR_clear_error();
            peer_out();
        }
        break;
    case OP_CANCEL:
        if (F.req) {
            begin_call();
            tpio_loop_cancel(F.loop, F.req);
            end_call();
        }
        break;
    case OP_PEER_CLOSE:
        if (F.fd >= 0) {
            close(F.fd);
            F.fd = -1;
            F.qlen = 0;
        }
        break;
    case OP_SLEEP:
        /* Two at most: enough for a handshake timeout, then a shutdown one. */
        run((F.cfg[1] & CFG1_TINY_TMO) && F.sleeps++ < 2 ? 0.003 : 0);
        break;
    case OP_PEER_BIG:
        peer_write(pattern, (size_t)(arg + 1) * 4096);
        break;
    default:
        break;
    }
}

/* ---- one input ---------------------------------------------------------------------- */

static bool handshake_settled(void)
{
    return F.tls_settled && (F.peer_dead || !F.peer || SSL_is_init_finished(F.peer));
}

static void begin(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    if (F.cfg[0] & CFG_SMALL_BUF) {
        int sz = 2048;
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
        setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    }
    F.fd = sv[1];
    CHECK(tpio_loop_new(&F.loop, NULL) == 0, "tpio_loop_new");
    tpio_loop_set_error_handler(F.loop, on_error, NULL);
    bool client = F.cfg[0] & CFG_CLIENT;
    bool tiny = F.cfg[1] & CFG1_TINY_TMO;
    SSL_CTX *ctx = client ? ((F.cfg[1] & CFG1_ALT1) ? tpio_cli_ctx_bad : tpio_cli_ctx)
                          : ((F.cfg[1] & CFG1_ALT1) ? tpio_srv_ctx_req : tpio_srv_ctx);
    F.tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = ctx, .handshake_timeout = tiny ? 0.002 : 0.5,
                      .shutdown_timeout = tiny ? 0.002 : 0.5);
    if (client)
        F.tls.server_hostname = (F.cfg[1] & CFG1_ALT2) ? "wrong.example" : "localhost";
    F.plain_phase = (F.cfg[3] & CFG3_START_TLS) != 0;
    const tpio_tls_opts_t *tls = F.plain_phase ? NULL : &F.tls;
    int rc;
    begin_call();
    if (client) {
        tpio_connect_opts_t o =
            TPIO_OPTS(tpio_connect_opts_t, .use_sock = TPIO_ON, .sock = sv[0], .tls = tls);
        rc = tpio_loop_create_connection(F.loop, factory, NULL, &o, on_conn, NULL, &F.req);
    } else {
        rc = tpio_loop_connect_accepted_socket(F.loop, factory, NULL, sv[0], tls, on_conn, NULL,
                                               &F.req);
    }
    end_call();
    CHECK(rc == 0, "the connection call refused valid arguments");
    F.pending = 1;
    peer_new(client); /* tpio the client: the peer is the server */
}

/* The transport, if there is one now, closed or aborted as the input says.
 * Again and again at the end: a handshake may still complete from bytes
 * already in the socket, and a transport whose reading is paused never
 * sees its peer go. */
static void end_transport(void)
{
    bool closing;
    if (!F.t || tpio_transport_is_closing(F.t, &closing) < 0 || closing)
        return;
    begin_call();
    if (F.cfg[3] & CFG3_END_ABORT)
        tpio_transport_abort(F.t);
    else
        tpio_transport_close(F.t);
    end_call();
}

/* The end: the transport closed or aborted, a request cancelled, the peer
 * answers (or not) and goes; then everything must end, and the loop close. */
static void end(void)
{
    end_transport();
    if (F.req && (F.cfg[3] & CFG3_END_CANCEL)) {
        begin_call();
        tpio_loop_cancel(F.loop, F.req);
        end_call();
    }
    if (!(F.cfg[3] & CFG3_PEER_GONE)) {
        for (int i = 0; i < 4; i++) {
            peer_step();
            if (F.peer_got_notify && (F.cfg[3] & CFG3_PEER_ANSWER) && peer_ready()) {
                SSL_shutdown(F.peer);
                ERR_clear_error();
                peer_out();
            }
            q_flush(SIZE_MAX);
            run(0);
            end_transport();
        }
    }
    if (F.fd >= 0) {
        close(F.fd);
        F.fd = -1;
    }
    /* 100 quick iterations, then up to 2.5 s of 10 ms ones: far beyond any
     * timeout an input can set. */
    for (int i = 0;; i++) {
        end_transport();
        if (!F.pending && !F.conn) {
            int rc = tpio_loop_close(F.loop);
            if (rc == 0)
                break;
            CHECK(rc == -EBUSY, "tpio_loop_close failed");
        }
        if (i == 350) {
            fprintf(stderr, "fuzz_tls: pending completions %d, protocol %s\n", F.pending,
                    F.conn ? "still alive" : "gone");
            bug("the loop does not close: something never ends");
        }
        run(i < 100 ? 0 : 0.01);
    }
    TRACE("closed\n");
    F.loop = NULL;
    SSL_free(F.peer);
    free(F.initial);
    free(F.q);
    ERR_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    memset(&F, 0, sizeof F);
    F.fd = -1;
    TRACE("input of %zu bytes\n", size);
    rd_t r = {data, size};
    for (int i = 0; i < NCFG; i++)
        F.cfg[i] = (uint8_t)u8(&r);
    if (no_start_tls)
        F.cfg[3] &= (uint8_t)~CFG3_START_TLS;
    begin();
    if (F.cfg[0] & CFG_AUTO_HS) {
        for (int i = 0; i < 64 && !handshake_settled(); i++) {
            peer_step();
            q_flush(SIZE_MAX);
            run(0);
        }
        TRACE("handshake %s, peer %s\n", F.tls_settled ? "settled" : "not settled",
              F.peer_dead ? "failed" : SSL_is_init_finished(F.peer) ? "done" : "not done");
    }
    while (r.n)
        op(&r);
    end();
    return 0;
}

/* ---- seeds ------------------------------------------------------------------------------ */

typedef struct sb {
    uint8_t b[512];
    size_t n;
} sb_t;

static void sb_put(sb_t *s, unsigned byte)
{
    if (s->n < sizeof s->b)
        s->b[s->n++] = (uint8_t)byte;
}

static void sb_op(sb_t *s, unsigned kind, unsigned arg)
{
    sb_put(s, kind + NOPS * arg);
}

static void sb_bytes(sb_t *s, unsigned kind, const char *text)
{
    size_t n = strlen(text);
    sb_op(s, kind, 0);
    sb_put(s, (unsigned)n);
    for (size_t i = 0; i < n; i++)
        sb_put(s, (uint8_t)text[i]);
}

static void sb_save(const char *dir, const char *name, const sb_t *s)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/seed-%s", dir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f, "cannot write a seed");
    fwrite(s->b, 1, s->n, f);
    fclose(f);
}

static sb_t sb_new(unsigned c0, unsigned c1, unsigned c2, unsigned c3)
{
    sb_t s = {.n = 0};
    sb_put(&s, c0);
    sb_put(&s, c1);
    sb_put(&s, c2);
    sb_put(&s, c3);
    return s;
}

/* After a clean handshake: data both ways, a KeyUpdate, pauses, the
 * peer's close_notify in small chunks. */
static void seed_wrapped(const char *dir, const char *name, unsigned c0, unsigned c1,
                         unsigned c3)
{
    sb_t s = sb_new(c0 | CFG_AUTO_HS, c1, 0, c3);
    sb_bytes(&s, OP_APP, "hello, tpio");
    sb_op(&s, OP_FLUSH, 0);
    sb_put(&s, 6);
    sb_op(&s, OP_FLUSH_ALL, 0);
    sb_op(&s, OP_PAUSE, 0);
    sb_bytes(&s, OP_APP, "while paused");
    sb_op(&s, OP_PEER_BIG, 1);
    sb_op(&s, OP_FLUSH_ALL, 0);
    sb_op(&s, OP_RESUME, 0);
    sb_op(&s, OP_RUN, 1);
    sb_op(&s, OP_WRITE, 1);
    sb_put(&s, 40);
    sb_op(&s, OP_PEER_STEP, 0);
    sb_op(&s, OP_KEY_UPDATE, 1);
    sb_op(&s, OP_FLUSH_ALL, 0);
    sb_op(&s, OP_PEER_STEP, 0);
    sb_op(&s, OP_SWITCH, 0);
    sb_bytes(&s, OP_APP, "after the switch");
    sb_op(&s, OP_FLUSH_ALL, 0);
    sb_op(&s, OP_INFO, 0);
    sb_op(&s, OP_CLOSE_NOTIFY, 0);
    for (int i = 0; i < 8; i++) {
        sb_op(&s, OP_FLUSH, 0);
        sb_put(&s, 2);
    }
    sb_op(&s, OP_RUN, 3);
    sb_save(dir, name, &s);
}

/* The handshake driven by the operations, its records in small chunks. */
static void seed_chunked_handshake(const char *dir, const char *name, unsigned c0)
{
    sb_t s = sb_new(c0, 0, 0, CFG3_PEER_ANSWER);
    for (int i = 0; i < 6; i++) {
        sb_op(&s, OP_PEER_STEP, 0);
        for (int j = 0; j < 5; j++) {
            sb_op(&s, OP_FLUSH, 0);
            sb_put(&s, 60);
        }
        sb_op(&s, OP_FLUSH_ALL, 0);
    }
    sb_bytes(&s, OP_APP, "data");
    sb_op(&s, OP_FLUSH_ALL, 0);
    sb_op(&s, OP_CLOSE, 0);
    sb_op(&s, OP_PEER_STEP, 0);
    sb_op(&s, OP_CLOSE_NOTIFY, 0);
    sb_op(&s, OP_FLUSH_ALL, 0);
    sb_save(dir, name, &s);
}

static void write_seeds(const char *dir)
{
    seed_wrapped(dir, "server", 0, 0, 0);
    seed_wrapped(dir, "server-resumed", 0, 0, CFG3_RESUME);
    seed_wrapped(dir, "client", CFG_CLIENT, 0, 0);
    seed_wrapped(dir, "server-buffered-tls12", CFG_BUFFERED | CFG_TLS12 | CFG_ECHO, 5, 0);
    seed_wrapped(dir, "client-buffered-small", CFG_CLIENT | CFG_BUFFERED | CFG_SMALL_BUF, 1,
                 CFG3_END_ABORT);
    seed_wrapped(dir, "server-start-tls", CFG_ECHO, CFG1_ALT1 | CFG1_ALT2, CFG3_START_TLS);
    seed_wrapped(dir, "server-start-tls-initial", CFG_BUFFERED, CFG1_TRIGGERS | 6,
                 CFG3_START_TLS | CFG3_INITIAL | CFG3_NO_ALPN);
    seed_wrapped(dir, "client-start-tls", CFG_CLIENT | CFG_PAUSE_CB, 3, CFG3_START_TLS);
    seed_chunked_handshake(dir, "server-chunked", 0);
    seed_chunked_handshake(dir, "client-chunked", CFG_CLIENT);
    seed_chunked_handshake(dir, "client-chunked-tls12", CFG_CLIENT | CFG_TLS12);

    /* Garbage where a ClientHello should be, and a half-close. */
    sb_t s = sb_new(0, 0, 0, 0);
    sb_bytes(&s, OP_RAW, "\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00GET / HTTP/1.1\r\n");
    sb_op(&s, OP_FLUSH, 0);
    sb_put(&s, 3);
    sb_op(&s, OP_HALF_CLOSE, 0);
    sb_op(&s, OP_RUN, 3);
    sb_save(dir, "server-garbage", &s);

    /* A corrupted record after the handshake. */
    s = sb_new(CFG_CLIENT | CFG_AUTO_HS, 0, 0, 0);
    sb_bytes(&s, OP_APP, "to be corrupted");
    sb_op(&s, OP_CORRUPT, 0);
    sb_put(&s, 0);
    sb_put(&s, 9);
    sb_put(&s, 1);
    sb_op(&s, OP_FLUSH_ALL, 0);
    sb_save(dir, "client-corrupt", &s);

    /* TLS 1.2 renegotiation, refused; triggers in the plaintext. */
    s = sb_new(CFG_CLIENT | CFG_AUTO_HS | CFG_TLS12, CFG1_TRIGGERS, 2, 0);
    sb_op(&s, OP_RENEGOTIATE, 0);
    sb_op(&s, OP_FLUSH_ALL, 0);
    sb_op(&s, OP_PEER_STEP, 0);
    sb_bytes(&s, OP_APP, "\xc4\xc6\xc3\xc5");
    sb_op(&s, OP_FLUSH_ALL, 0);
    sb_op(&s, OP_RESUME, 0);
    sb_op(&s, OP_RUN, 2);
    sb_bytes(&s, OP_APP, "\xc1");
    sb_op(&s, OP_FLUSH_ALL, 0);
    sb_save(dir, "client-tls12-reneg", &s);

    /* Tiny timeouts and a sleep: the handshake times out. */
    s = sb_new(0, CFG1_TINY_TMO, 0, 0);
    sb_op(&s, OP_PEER_STEP, 0);
    sb_op(&s, OP_FLUSH_ALL, 0);
    sb_op(&s, OP_SLEEP, 0);
    sb_op(&s, OP_SLEEP, 0);
    sb_save(dir, "server-timeout", &s);
}
