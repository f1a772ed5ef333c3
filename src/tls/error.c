/* OpenSSL's errors as tpio's codes, with OpenSSL's words for what went
 * wrong kept per thread for tpio_tls_last_error(). */
#include "tls/tls.h"

#include <openssl/err.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>

static __thread char last_error[256];

const char *tpio_tls_last_error(void) { return last_error; }

void tpio__tls_set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
}

int tpio__tls_error(SSL *ssl, int ret)
{
    int kind = SSL_get_error(ssl, ret);
    unsigned long e = ERR_peek_last_error();
    int code = TPIO_ETLS;
    if (ERR_GET_LIB(e) == ERR_LIB_SSL &&
        ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        long v = SSL_get_verify_result(ssl);
        tpio__tls_set_error("certificate verify failed: %s",
                            X509_verify_cert_error_string(v));
        code = TPIO_ETLS_VERIFY;
    } else if (e) {
        const char *why = ERR_reason_error_string(e);
        if (why)
            tpio__tls_set_error("%s", why);
        else
            tpio__tls_set_error("OpenSSL error %lu", e);
    } else {
        tpio__tls_set_error("TLS failure (SSL_get_error %d)", kind);
    }
    ERR_clear_error();
    return code;
}
