/* The write buffer: copies of what the kernel did not take, in chunks, sent
 * with one writev. Small writes share the tail chunk, and the loop keeps one
 * drained chunk as a spare, so connections that buffer now and then stop
 * allocating without each holding memory while idle. */
#include "transport/transport.h"

#include <string.h>

#define CHUNK_MIN (16 * 1024)

static struct tpio__chunk *chunk_get(void **spare, size_t need)
{
    struct tpio__chunk *c = *spare;
    if (c && c->cap >= need) {
        *spare = NULL;
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

/* Keep the larger of the two as the loop's spare (bounded), so that a bulk
 * stream whose reads outrun the socket reuses one buffer instead of
 * allocating one per read. */
#define SPARE_MAX (1024 * 1024)

static void chunk_put(void **spare, struct tpio__chunk *c)
{
    struct tpio__chunk *old = *spare;
    if (c->cap <= SPARE_MAX && (!old || old->cap < c->cap)) {
        tpio__free(old);
        *spare = c;
        return;
    }
    tpio__free(c);
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
