/* Memory: one table of functions that every allocation of the library goes
 * through (tpio_set_allocator), so that a program can account for tpio's
 * memory or inject failures. */
#include "base/base.h"

#include <stdatomic.h>
#include <string.h>
#ifdef TPIO_HAVE_TLS
#include <openssl/crypto.h>
#endif

static tpio_allocator_t g_alloc = {malloc, calloc, realloc, free};
/* Live loops. The table may only change while none exists: every pointer
 * the library holds was made by the table in force when its loop lived. */
static atomic_int g_holders;

#ifdef TPIO_HAVE_TLS
/* OpenSSL's memory outlives loops (its global state, the user's SSL_CTX),
 * so it stays with the first table it was given, whatever comes later. */
static tpio_allocator_t g_ossl;
static void *ossl_malloc(size_t n, const char *file, int line)
{
    (void)file, (void)line;
    return g_ossl.malloc(n ? n : 1);
}
static void *ossl_realloc(void *p, size_t n, const char *file, int line)
{
    (void)file, (void)line;
    if (n == 0) {
        if (p)
            g_ossl.free(p);
        return NULL;
    }
    return g_ossl.realloc(p, n);
}
static void ossl_free(void *p, const char *file, int line)
{
    (void)file, (void)line;
    if (p)
        g_ossl.free(p);
}

/* OpenSSL takes functions only before its first allocation. */
static void route_openssl(const tpio_allocator_t *a)
{
    static bool tried;
    if (tried)
        return;
    tried = true;
    g_ossl = *a;
    CRYPTO_set_mem_functions(ossl_malloc, ossl_realloc, ossl_free);
}
#endif

int tpio_set_allocator(const tpio_allocator_t *a)
{
    if (a && (!a->malloc || !a->calloc || !a->realloc || !a->free))
        return -EINVAL;
    if (atomic_load(&g_holders) > 0)
        return -EBUSY;
    g_alloc = a ? *a : (tpio_allocator_t){malloc, calloc, realloc, free};
#ifdef TPIO_HAVE_TLS
    if (a)
        route_openssl(a);
#endif
    return 0;
}

void tpio__allocator_hold(void) { atomic_fetch_add(&g_holders, 1); }
void tpio__allocator_release(void) { atomic_fetch_sub(&g_holders, 1); }

void *tpio__malloc(size_t n) { return g_alloc.malloc(n ? n : 1); }
void *tpio__calloc(size_t count, size_t n) { return g_alloc.calloc(count ? count : 1, n ? n : 1); }
void *tpio__realloc(void *p, size_t n) { return g_alloc.realloc(p, n ? n : 1); }
void tpio__free(void *p)
{
    if (p)
        g_alloc.free(p);
}

char *tpio__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = tpio__malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* The user's table has no aligned allocation: over-allocate and keep the
 * pointer to free just below the aligned block. */
void *tpio__aligned_alloc(size_t align, size_t n)
{
    if (n > SIZE_MAX - align - sizeof(void *))
        return NULL;
    unsigned char *raw = tpio__malloc(n + align + sizeof(void *));
    if (!raw)
        return NULL;
    uintptr_t at = ((uintptr_t)(raw + sizeof(void *)) + align - 1) & ~(uintptr_t)(align - 1);
    ((void **)at)[-1] = raw;
    return (void *)at;
}

void tpio__aligned_free(void *p)
{
    if (p)
        tpio__free(((void **)p)[-1]);
}
