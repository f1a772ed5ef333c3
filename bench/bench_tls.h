/* The TLS configuration every TLS benchmark server shares (bench/servers/
 * echo_tls_*.c), so that OpenSSL does the same work in all of them and the
 * figures compare what is around it:
 *
 * - TLS 1.3 only, one cipher suite: TLS_AES_128_GCM_SHA256;
 * - no session tickets and no session cache (every handshake is a full one;
 *   the load generator never resumes);
 * - SSL_MODE_RELEASE_BUFFERS: OpenSSL frees a connection's record buffers
 *   whenever they are empty, so that an idle connection holds only what
 *   OpenSSL needs for its state (tpio's own contexts set it too).
 *
 * The certificate chain and key come from --cert / --key (bench_common.h).
 * The yardstick (echo_tls_epoll) makes its own context with
 * bench_tls_server_ctx(); tpio's server gets one from
 * tpio_tls_server_context() and restricts it with bench_tls_restrict(), as a
 * user of that helper would. */
#ifndef BENCH_TLS_H
#define BENCH_TLS_H

#include "bench_common.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#define BENCH_TLS_SUITE "TLS_AES_128_GCM_SHA256"

static inline void bench_tls_die(const char *what)
{
    fprintf(stderr, "%s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static inline void bench_tls_restrict(SSL_CTX *ctx)
{
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_ciphersuites(ctx, BENCH_TLS_SUITE) != 1 ||
        SSL_CTX_set_num_tickets(ctx, 0) != 1)
        bench_tls_die("configuring the SSL_CTX");
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
}

static inline SSL_CTX *bench_tls_server_ctx(const struct bench_args *a)
{
    if (!a->cert || !a->key) {
        fprintf(stderr, "usage: server --cert CERT.pem --key KEY.pem [PORT [EXIT_AFTER]]\n");
        exit(1);
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        bench_tls_die("SSL_CTX_new");
    if (SSL_CTX_use_certificate_chain_file(ctx, a->cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, a->key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        bench_tls_die("loading the certificate and key");
    bench_tls_restrict(ctx);
    return ctx;
}

#endif
