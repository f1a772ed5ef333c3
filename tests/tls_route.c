/* OpenSSL's allocations go through tpio_set_allocator's table when it is
 * set before OpenSSL's first allocation: a TLS context made afterwards is
 * allocated, and freed, through it. (A program of its own: the Criterion
 * runner initialises OpenSSL before any test runs.) Exit status 0 = yes. */
#include <tpio.h>

#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static atomic_long calls, live;

static void *c_malloc(size_t n)
{
    atomic_fetch_add(&calls, 1);
    void *p = malloc(n);
    if (p)
        atomic_fetch_add(&live, 1);
    return p;
}
static void *c_calloc(size_t c, size_t n)
{
    atomic_fetch_add(&calls, 1);
    void *p = calloc(c, n);
    if (p)
        atomic_fetch_add(&live, 1);
    return p;
}
static void *c_realloc(void *o, size_t n)
{
    atomic_fetch_add(&calls, 1);
    void *p = realloc(o, n);
    if (p && !o)
        atomic_fetch_add(&live, 1);
    return p;
}
static void c_free(void *p)
{
    if (p)
        atomic_fetch_sub(&live, 1);
    free(p);
}

int main(void)
{
    static const tpio_allocator_t a = {c_malloc, c_calloc, c_realloc, c_free};
    if (tpio_set_allocator(&a) != 0)
        return 1;
    SSL_CTX *ctx;
    if (tpio_tls_client_context(&ctx, NULL) != 0) {
        fprintf(stderr, "tls_route: %s\n", tpio_tls_last_error());
        return 1;
    }
    long with_ctx = atomic_load(&live);
    SSL_CTX_free(ctx);
    long after = atomic_load(&live);
    printf("tls_route: %ld allocations through the table; a context held %ld blocks\n",
           atomic_load(&calls), with_ctx - after);
    if (atomic_load(&calls) == 0 || with_ctx <= after) {
        fprintf(stderr, "tls_route: OpenSSL's allocations did not go through the table\n");
        return 1;
    }
    /* a later table does not change OpenSSL's (its memory outlives it) */
    if (tpio_set_allocator(NULL) != 0)
        return 1;
    return 0;
}
