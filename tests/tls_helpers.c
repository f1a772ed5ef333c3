#include "tls_helpers.h"

#include <criterion/criterion.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static EVP_PKEY *new_key(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    cr_assert_not_null(k);
    return k;
}

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    cr_assert_not_null(e);
    X509_add_ext(cert, e, -1);
    X509_EXTENSION_free(e);
}

/* A certificate for key, signed by (issuer, ikey), or self-signed when
 * issuer is NULL; valid from `from` to `to` seconds from now. */
static X509 *new_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *ikey, bool ca,
                      const char *san, long from, long to)
{
    static long serial = 1;
    X509 *c = X509_new();
    X509_set_version(c, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c), serial++);
    X509_gmtime_adj(X509_getm_notBefore(c), from);
    X509_gmtime_adj(X509_getm_notAfter(c), to);
    X509_set_pubkey(c, key);
    X509_NAME *n = X509_get_subject_name(c);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(c, issuer ? X509_get_subject_name(issuer) : n);
    X509 *signer = issuer ? issuer : c;
    add_ext(c, signer, NID_basic_constraints, ca ? "critical,CA:TRUE" : "CA:FALSE");
    add_ext(c, signer, NID_key_usage,
            ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
    add_ext(c, signer, NID_subject_key_identifier, "hash");
    if (issuer)
        add_ext(c, signer, NID_authority_key_identifier, "keyid:always");
    if (san)
        add_ext(c, signer, NID_subject_alt_name, san);
    cr_assert(X509_sign(c, issuer ? ikey : key, EVP_sha256()) > 0);
    return c;
}

static void write_cert(const char *path, X509 *c)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    PEM_write_X509(f, c);
    fclose(f);
}

static void write_key(const char *path, EVP_PKEY *k)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
}

static th_pki_t pki;
static bool pki_made;

static void pki_remove(void)
{
    const char *files[] = {pki.ca, pki.other_ca, pki.cert, pki.key, pki.expired,
                           pki.expired_key, pki.client, pki.client_key};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++)
        unlink(files[i]);
    rmdir(pki.dir);
}

const th_pki_t *th_pki(void)
{
    if (pki_made)
        return &pki;
    strcpy(pki.dir, "/tmp/tpio-pki-XXXXXX");
    cr_assert_not_null(mkdtemp(pki.dir));
#define P(field, name) snprintf(pki.field, sizeof pki.field, "%s/" name, pki.dir)
    P(ca, "ca.pem");
    P(other_ca, "other-ca.pem");
    P(cert, "server.pem");
    P(key, "server-key.pem");
    P(expired, "expired.pem");
    P(expired_key, "expired-key.pem");
    P(client, "client.pem");
    P(client_key, "client-key.pem");
#undef P
    const long day = 86400;
    EVP_PKEY *cak = new_key(), *ock = new_key(), *sk = new_key(), *ek = new_key(),
             *ck = new_key();
    X509 *ca = new_cert(cak, "tpio test CA", NULL, NULL, true, NULL, -day, 30 * day);
    X509 *oca = new_cert(ock, "tpio other CA", NULL, NULL, true, NULL, -day, 30 * day);
    X509 *srv = new_cert(sk, "localhost", ca, cak, false, "DNS:localhost,IP:127.0.0.1",
                         -day, 30 * day);
    X509 *exp = new_cert(ek, "localhost", ca, cak, false, "DNS:localhost,IP:127.0.0.1",
                         -10 * day, -day);
    X509 *cli = new_cert(ck, "tpio test client", ca, cak, false, NULL, -day, 30 * day);
    write_cert(pki.ca, ca);
    write_cert(pki.other_ca, oca);
    write_cert(pki.cert, srv);
    write_key(pki.key, sk);
    write_cert(pki.expired, exp);
    write_key(pki.expired_key, ek);
    write_cert(pki.client, cli);
    write_key(pki.client_key, ck);
    X509 *certs[] = {ca, oca, srv, exp, cli};
    EVP_PKEY *keys[] = {cak, ock, sk, ek, ck};
    for (int i = 0; i < 5; i++) {
        X509_free(certs[i]);
        EVP_PKEY_free(keys[i]);
    }
    pki_made = true;
    atexit(pki_remove);
    return &pki;
}

static void versions(SSL_CTX *c, int min_version, int max_version)
{
    if (min_version)
        SSL_CTX_set_min_proto_version(c, min_version);
    if (max_version)
        SSL_CTX_set_max_proto_version(c, max_version);
}

SSL_CTX *th_tls_server_ctx(int min_version, int max_version)
{
    const th_pki_t *p = th_pki();
    SSL_CTX *c;
    cr_assert_eq(tpio_tls_server_context(&c, p->cert, p->key), 0, "%s", tpio_tls_last_error());
    versions(c, min_version, max_version);
    return c;
}

SSL_CTX *th_tls_client_ctx(int min_version, int max_version)
{
    const th_pki_t *p = th_pki();
    SSL_CTX *c;
    cr_assert_eq(tpio_tls_client_context(&c, p->ca), 0, "%s", tpio_tls_last_error());
    versions(c, min_version, max_version);
    return c;
}

/* ---- the peer thread ------------------------------------------------------------- */

static void *peer_main(void *arg)
{
    th_peer_t *pr = arg;
    SSL *ssl = SSL_new(pr->ctx);
    SSL_set_fd(ssl, pr->fd);
    if (pr->server)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    pr->handshake = SSL_do_handshake(ssl);
    pr->fn(pr, ssl, pr->arg);
    SSL_free(ssl);
    ERR_clear_error();
    return NULL;
}

th_peer_t *th_peer_start(int fd, SSL_CTX *ctx, bool server, th_peer_fn fn, void *arg)
{
    th_peer_t *pr = calloc(1, sizeof *pr);
    pr->fd = fd;
    pr->ctx = ctx;
    SSL_CTX_up_ref(ctx);
    pr->server = server;
    pr->fn = fn;
    pr->arg = arg;
    cr_assert_eq(pthread_create(&pr->thread, NULL, peer_main, pr), 0);
    return pr;
}

void th_peer_join(th_peer_t *pr)
{
    pthread_join(pr->thread, NULL);
    close(pr->fd);
    SSL_CTX_free(pr->ctx);
    free(pr);
}

/* ---- ALPN ------------------------------------------------------------------------ */

/* "h2,http/1.1" as ALPN's wire format: each name after its length byte. */
static unsigned char *alpn_wire(const char *list, unsigned *len)
{
    size_t n = strlen(list);
    unsigned char *w = malloc(n + 1);
    cr_assert_not_null(w);
    size_t o = 0;
    for (const char *p = list; *p;) {
        size_t k = strcspn(p, ",");
        cr_assert(k > 0 && k < 256, "bad ALPN list: %s", list);
        w[o++] = (unsigned char)k;
        memcpy(w + o, p, k);
        o += k;
        p += k;
        if (*p == ',')
            p++;
    }
    *len = (unsigned)o;
    return w;
}

void th_tls_alpn_offer(SSL_CTX *ctx, const char *list)
{
    unsigned len;
    unsigned char *w = alpn_wire(list, &len);
    cr_assert_eq(SSL_CTX_set_alpn_protos(ctx, w, len), 0); /* 0 is success here */
    free(w);
}

typedef struct alpn_prefs {
    unsigned char *wire;
    unsigned len;
} alpn_prefs_t;

static void alpn_prefs_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                            void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    alpn_prefs_t *a = ptr;
    if (a) {
        free(a->wire);
        free(a);
    }
}

static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned inlen, void *arg)
{
    (void)ssl;
    const alpn_prefs_t *a = arg;
    if (SSL_select_next_proto((unsigned char **)out, outlen, a->wire, a->len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    return SSL_TLSEXT_ERR_OK;
}

void th_tls_alpn_select(SSL_CTX *ctx, const char *list)
{
    static int idx = -1;
    if (idx < 0)
        idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, alpn_prefs_free);
    cr_assert(idx >= 0);
    alpn_prefs_t *a = calloc(1, sizeof *a);
    cr_assert_not_null(a);
    a->wire = alpn_wire(list, &a->len);
    alpn_prefs_free(NULL, SSL_CTX_get_ex_data(ctx, idx), NULL, idx, 0, NULL);
    cr_assert_eq(SSL_CTX_set_ex_data(ctx, idx, a), 1);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, a);
}
