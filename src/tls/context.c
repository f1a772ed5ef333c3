/* The two contexts most programs want, for those who would rather not
 * write OpenSSL code: a client that verifies, a server with its
 * certificate. Anything else is the user's own SSL_CTX. */
#include "tls/tls.h"

#include <openssl/err.h>
#include <unistd.h>

static int readable(const char *path) { return access(path, R_OK) == 0 ? 0 : -ENOENT; }

static int ctx_new(SSL_CTX **out, const SSL_METHOD *m)
{
    SSL_CTX *c = SSL_CTX_new(m);
    if (!c) {
        ERR_clear_error();
        return -ENOMEM;
    }
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
    *out = c;
    return 0;
}

static int failed(SSL_CTX *c, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    const char *why = e ? ERR_reason_error_string(e) : NULL;
    tpio__tls_set_error("%s: %s", what, why ? why : "failed");
    ERR_clear_error();
    SSL_CTX_free(c);
    return TPIO_ETLS;
}

int tpio_tls_client_context(SSL_CTX **out, const char *cafile)
{
    if (!out)
        return -EINVAL;
    int rc = cafile ? readable(cafile) : 0;
    SSL_CTX *c;
    if (rc < 0 || (rc = ctx_new(&c, TLS_client_method())) < 0)
        return rc;
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    if (cafile ? SSL_CTX_load_verify_locations(c, cafile, NULL) != 1
               : SSL_CTX_set_default_verify_paths(c) != 1)
        return failed(c, "loading the CA certificates");
    *out = c;
    return 0;
}

int tpio_tls_server_context(SSL_CTX **out, const char *certfile, const char *keyfile)
{
    if (!out || !certfile || !keyfile)
        return -EINVAL;
    int rc;
    SSL_CTX *c;
    if ((rc = readable(certfile)) < 0 || (rc = readable(keyfile)) < 0 ||
        (rc = ctx_new(&c, TLS_server_method())) < 0)
        return rc;
    if (SSL_CTX_use_certificate_chain_file(c, certfile) != 1)
        return failed(c, "loading the certificate");
    if (SSL_CTX_use_PrivateKey_file(c, keyfile, SSL_FILETYPE_PEM) != 1)
        return failed(c, "loading the private key");
    if (SSL_CTX_check_private_key(c) != 1)
        return failed(c, "checking the private key");
    *out = c;
    return 0;
}
