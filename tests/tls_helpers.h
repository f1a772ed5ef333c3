/* TLS test helpers: a throw-away PKI made in-process (no openssl CLI), the
 * contexts tests use, and a plain OpenSSL peer running in a thread of its
 * own for the cases where the peer must misbehave. */
#ifndef TPIO_TEST_TLS_HELPERS_H
#define TPIO_TEST_TLS_HELPERS_H
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdbool.h>
#include <tpio.h>

/* Files of one throw-away PKI, in a directory of its own (removed by
 * th_pki_free). The server certificate is for localhost and 127.0.0.1. */
typedef struct th_pki {
    char dir[64];
    char ca[96];            /* the CA that signed cert, expired, client */
    char other_ca[96];      /* a CA that signed nothing of ours */
    char cert[96], key[96]; /* server: localhost, 127.0.0.1 */
    char expired[96], expired_key[96];
    char client[96], client_key[96];
} th_pki_t;

/* Made once per test process (cached), removed at exit. */
const th_pki_t *th_pki(void);

/* A server context with the PKI's server certificate; versions as given
 * (0: OpenSSL's defaults). */
SSL_CTX *th_tls_server_ctx(int min_version, int max_version);
/* A client context that trusts the PKI's CA and verifies. */
SSL_CTX *th_tls_client_ctx(int min_version, int max_version);

/* ---- a peer thread: blocking OpenSSL on one end of a socketpair -------------- */
typedef struct th_peer th_peer_t;
typedef void (*th_peer_fn)(th_peer_t *pr, SSL *ssl, void *arg);
struct th_peer {
    pthread_t thread;
    int fd;          /* the peer's socket (blocking) */
    SSL_CTX *ctx;
    bool server;
    th_peer_fn fn;
    void *arg;
    int handshake;   /* SSL_do_handshake's result */
};
/* Run fn in a thread after a blocking handshake on fd (fn sees the result
 * in pr->handshake and runs even when it failed). ctx is up-ref'd. */
th_peer_t *th_peer_start(int fd, SSL_CTX *ctx, bool server, th_peer_fn fn, void *arg);
/* Join and free (closes fd). */
void th_peer_join(th_peer_t *pr);

/* ---- ALPN ---------------------------------------------------------------------- */
/* A client context offers the protocols of `list` ("h2,http/1.1"), in that
 * order. */
void th_tls_alpn_offer(SSL_CTX *ctx, const char *list);
/* A server context selects the first protocol of `list` (its preference)
 * that the client offers, and goes on without ALPN when none is (OpenSSL's
 * SSL_TLSEXT_ERR_NOACK). The list is kept with the context. */
void th_tls_alpn_select(SSL_CTX *ctx, const char *list);

#endif
