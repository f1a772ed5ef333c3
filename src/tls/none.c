/* A build without OpenSSL (-DTPIO_TLS=OFF): every TLS call says so. */
#include "tls/tls.h"

int tpio__tls_ctor_new(const tpio_tls_opts_t *opts, bool server, const char *host,
                       const struct tpio__ctor **out)
{
    (void)opts, (void)server, (void)host, (void)out;
    return -ENOTSUP;
}

int tpio_loop_start_tls(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p,
                        const tpio_tls_opts_t *tls, tpio_connect_cb_t cb, void *cb_arg,
                        tpio_handle_t *request)
{
    (void)cb_arg, (void)request;
    if (!loop || !t || !p || !p->ops || !tls || !cb || t->loop != loop)
        return -EINVAL;
    return -ENOTSUP;
}

int tpio_tls_client_context(struct ssl_ctx_st **out, const char *cafile)
{
    (void)cafile;
    return out ? -ENOTSUP : -EINVAL;
}

int tpio_tls_server_context(struct ssl_ctx_st **out, const char *certfile, const char *keyfile)
{
    return out && certfile && keyfile ? -ENOTSUP : -EINVAL;
}

const char *tpio_tls_last_error(void) { return ""; }

int tpio_tls_get_cipher(const tpio_transport_t *t, const char **name, const char **version,
                        int *bits)
{
    (void)name, (void)version, (void)bits;
    return t ? -ENOTSUP : -EINVAL;
}
