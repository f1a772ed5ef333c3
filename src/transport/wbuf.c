/* The write buffer: copies of what the kernel did not take, in chunks, sent
 * with one writev. Small writes share the tail chunk, and the loop keeps
 * drained chunks in a bounded pool, so connections that buffer now and then
 * stop allocating without each holding memory while idle. */
#include "transport/transport.h"

#include <string.h>

#define CHUNK_MIN (16 * 1024)

/* The loop's pool of drained chunks, a list through `next`; each node's
 * `len` holds the bytes of itself and of the nodes after it. A loop on
 * io_uring copies every write, and its connections each hold a chunk until
 * the send completes: without the pool, each round trip would allocate one
 * (and glibc trims and grows its heap with brk, a syscall). */
#define POOL_BYTES (2 * 1024 * 1024)
#define POOL_SCAN 8

static struct tpio__chunk *chunk_get(void **spare, size_t need)
{
    struct tpio__chunk **pp = (struct tpio__chunk **)spare, *c = NULL;
    struct tpio__chunk *seen[POOL_SCAN];
    int k = 0;
    for (; *pp && k < POOL_SCAN; pp = &(*pp)->next) {
        if ((*pp)->cap >= need) {
            c = *pp;
            break;
        }
        seen[k++] = *pp;
    }
    if (c) {
        *pp = c->next;
        for (int i = 0; i < k; i++)
            seen[i]->len -= c->cap;
    } else {
        size_t cap = need < CHUNK_MIN ? CHUNK_MIN : need;
        c = tpio__malloc(sizeof *c + cap);
        if (!c)
            return NULL;
        c->cap = cap;
    }
    c->next = NULL;
    c->off = c->len = 0;
    return c;
}

/* Bounded: a bulk stream whose writes outrun the socket reuses a large
 * chunk instead of allocating one per write, and many connections reuse
 * theirs; beyond POOL_BYTES chunks go back to the allocator. */
#define SPARE_MAX (1024 * 1024)

static void chunk_put(void **spare, struct tpio__chunk *c)
{
    struct tpio__chunk *head = *spare;
    size_t total = head ? head->len : 0;
    if (c->cap > SPARE_MAX || total + c->cap > POOL_BYTES) {
        tpio__free(c);
        return;
    }
    c->next = head;
    c->off = 0;
    c->len = total + c->cap;
    *spare = c;
}

int tpio__wbuf_append(struct tpio__wbuf *b, size_t *size, void **spare, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    struct tpio__chunk *t = b->tail;
    if (t) {
        size_t room = t->cap - t->off - t->len;
        if (room >= n) {
            memcpy(t->data + t->off + t->len, p, n);
            t->len += n;
            *size += n;
            return 0;
        }
    }
    struct tpio__chunk *c = chunk_get(spare, n);
    if (!c)
        return -ENOMEM;
    memcpy(c->data, p, n);
    c->len = n;
    if (t)
        t->next = c;
    else
        b->head = c;
    b->tail = c;
    *size += n;
    return 0;
}

int tpio__wbuf_iov(const struct tpio__wbuf *b, struct iovec *iov, int max)
{
    int n = 0;
    for (struct tpio__chunk *c = b->head; c && n < max; c = c->next) {
        iov[n].iov_base = c->data + c->off;
        iov[n].iov_len = c->len;
        n++;
    }
    return n;
}

void tpio__wbuf_consume(struct tpio__wbuf *b, size_t *size, void **spare, size_t n)
{
    *size -= n;
    while (n) {
        struct tpio__chunk *c = b->head;
        if (n < c->len) {
            c->off += n;
            c->len -= n;
            return;
        }
        n -= c->len;
        b->head = c->next;
        if (!b->head)
            b->tail = NULL;
        chunk_put(spare, c);
    }
}

void tpio__wbuf_clear(struct tpio__wbuf *b, size_t *size)
{
    struct tpio__chunk *c = b->head;
    while (c) {
        struct tpio__chunk *next = c->next;
        tpio__free(c);
        c = next;
    }
    b->head = b->tail = NULL;
    *size = 0;
}

struct tpio__chunk *tpio__wbuf_take_head(struct tpio__wbuf *b, size_t *size)
{
    struct tpio__chunk *c = b->head;
    if (!c)
        return NULL;
    *size -= c->len;
    b->head = c->next;
    if (!b->head)
        b->tail = NULL;
    c->next = NULL;
    return c;
}
