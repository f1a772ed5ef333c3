/* OpenSSL's I/O: a BIO of the layer's own instead of memory BIOs. Reads
 * take ciphertext where the transport below read it (the loop's buffer),
 * which saves the copy into a memory BIO; what OpenSSL leaves unread when
 * the protocol pauses goes to a per-connection stash, freed once drained,
 * so an idle connection holds no buffer. Writes go straight to the
 * transport below, which sends at once or keeps the rest (h2o does the
 * same). */
#include "tls/tls.h"

#include <pthread.h>
#include <string.h>

static BIO_METHOD *method;
static pthread_mutex_t method_lock = PTHREAD_MUTEX_INITIALIZER;

static int bio_read(BIO *b, char *out, size_t len, size_t *got)
{
    struct tpio__tls *s = BIO_get_data(b);
    /* The common case: what the transport below just read, and no stash. */
    if (__builtin_expect(!s->stash_len && s->in_len, 1)) {
        size_t m = s->in_len < len ? s->in_len : len;
        memcpy(out, s->in, m);
        s->in += m;
        s->in_len -= m;
        *got = m;
        return 1;
    }
    BIO_clear_retry_flags(b);
    size_t n = 0;
    if (s->stash_len) {
        n = s->stash_len < len ? s->stash_len : len;
        memcpy(out, s->stash + s->stash_off, n);
        s->stash_off += n;
        s->stash_len -= n;
        if (s->stash_len == 0)
            s->stash_off = 0;
    }
    if (n < len && s->in_len) {
        size_t m = s->in_len < len - n ? s->in_len : len - n;
        memcpy(out + n, s->in, m);
        s->in += m;
        s->in_len -= m;
        n += m;
    }
    if (n == 0) {
        /* Nothing yet: OpenSSL answers WANT_READ, and the layer feeds it
         * when the transport below reads more. */
        BIO_set_retry_read(b);
        return 0;
    }
    *got = n;
    return 1;
}

static int bio_write(BIO *b, const char *data, size_t len, size_t *put)
{
    struct tpio__tls *s = BIO_get_data(b);
    /* The transport below sends now or keeps the rest; once it is closing
     * it drops the bytes, as any transport does after close. Every kind a
     * TLS layer sits on has write1. */
    if (s->inner && s->inner->vt->write1(s->inner, data, len) < 0)
        return 0;
    *put = len;
    return 1;
}

/* Only FLUSH succeeds (every write was handed to the transport below);
 * nothing is pending, and the rest (kernel TLS...) is not supported. */
static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH;
}

/* Made once, on first use; tried again after a failure (memory). */
static BIO_METHOD *get_method(void)
{
    pthread_mutex_lock(&method_lock);
    if (!method) {
        BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tpio");
        if (m && BIO_meth_set_read_ex(m, bio_read) && BIO_meth_set_write_ex(m, bio_write) &&
            BIO_meth_set_ctrl(m, bio_ctrl))
            method = m;
        else
            BIO_meth_free(m);
    }
    pthread_mutex_unlock(&method_lock);
    return method;
}

BIO *tpio__tls_bio_new(struct tpio__tls *s)
{
    if (!get_method())
        return NULL;
    BIO *b = BIO_new(method);
    if (!b)
        return NULL;
    BIO_set_data(b, s);
    BIO_set_init(b, 1);
    return b;
}

int tpio__tls_keep_input(struct tpio__tls *s)
{
    if (!s->in_len)
        return 0;
    if (s->stash_off && s->stash_len + s->in_len > s->stash_cap - s->stash_off) {
        memmove(s->stash, s->stash + s->stash_off, s->stash_len);
        s->stash_off = 0;
    }
    size_t need = s->stash_off + s->stash_len + s->in_len;
    if (need > s->stash_cap) {
        unsigned char *p = tpio__realloc(s->stash, need);
        if (!p)
            return -ENOMEM;
        s->stash = p;
        s->stash_cap = need;
    }
    memcpy(s->stash + s->stash_off + s->stash_len, s->in, s->in_len);
    s->stash_len += s->in_len;
    s->in += s->in_len;
    s->in_len = 0;
    return 0;
}
