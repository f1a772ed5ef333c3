/* Name resolution off the loop thread. getaddrinfo blocks, so a name is
 * looked up on a short-lived helper thread that hands the result back with
 * call_soon_threadsafe; numeric addresses are parsed inline and never reach
 * the resolver. */
#include "loop/loop.h"

#include <string.h>

int tpio__getaddrinfo(const char *host, const char *port, const struct addrinfo *hints,
                      struct addrinfo **res)
{
    *res = NULL;
    errno = 0;
    int rc = getaddrinfo(host, port, hints, res);
    if (rc != 0) {
        *res = NULL;
        return tpio__gai_error(rc);
    }
    return 0;
}

/* Numeric host (or none): resolvable without DNS. */
static int try_numeric(const char *host, const char *port, const struct addrinfo *hints,
                       struct addrinfo **res, bool *numeric)
{
    struct addrinfo h = *hints;
    h.ai_flags |= AI_NUMERICHOST | AI_NUMERICSERV;
    int rc = getaddrinfo(host, port, &h, res);
    if (rc == 0) {
        *numeric = true;
        return 0;
    }
    *res = NULL;
    if (rc == EAI_NONAME) {
        *numeric = false;
        return 0;
    }
    *numeric = true; /* numeric but unusable, e.g. family mismatch */
    return tpio__gai_error(rc);
}

enum { RS_IDLE, RS_RUNNING, RS_DONE, RS_ABANDONED };

void tpio__resolve_put(struct tpio__resolve *r)
{
    if (atomic_fetch_sub(&r->refs, 1) == 1)
        r->release(r);
}

bool tpio__resolve_cancel(struct tpio__resolve *r)
{
    int running = RS_RUNNING;
    return atomic_compare_exchange_strong(&r->state, &running, RS_ABANDONED);
}

static void *resolve_thread(void *arg)
{
    struct tpio__resolve *r = arg;
    int rc = 0;
    if (!r->res && r->host)
        rc = tpio__getaddrinfo(r->host, r->port, &r->hints, &r->res);
    if (rc == 0 && r->local_host && !r->local_res)
        rc = tpio__getaddrinfo(r->local_host, r->local_port, &r->hints, &r->local_res);
    r->err = rc;
    /* Given up by its owner: the loop may be gone already; never touch it.
     * (The owner's release frees the results with it.) */
    int running = RS_RUNNING;
    if (atomic_compare_exchange_strong(&r->state, &running, RS_DONE))
        tpio__call_soon_threadsafe_node(r->loop, &r->node);
    tpio__resolve_put(r);
    tpio__allocator_release();
    return NULL;
}

static void resolve_done(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct tpio__resolve *r = tpio_container_of(arg, struct tpio__resolve, node);
    r->done(r);
}

int tpio__resolve_start(struct tpio__resolve *r)
{
    bool num_host = true, num_local = true;
    r->res = r->local_res = NULL;
    r->err = 0;
    r->node.cb = resolve_done;
    atomic_store(&r->state, RS_IDLE);
    int rc = r->host ? try_numeric(r->host, r->port, &r->hints, &r->res, &num_host) : 0;
    if (rc == 0 && r->local_host)
        rc = try_numeric(r->local_host, r->local_port, &r->hints, &r->local_res, &num_local);
    if (rc < 0 || (num_host && num_local)) {
        r->err = rc;
        tpio__call_soon_node(r->loop, &r->node);
        return 0;
    }
    /* The thread's reference; and the allocator must not change while it
     * may still free with it, even after the loop is gone. */
    atomic_fetch_add(&r->refs, 1);
    atomic_store(&r->state, RS_RUNNING);
    tpio__allocator_hold();
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    rc = pthread_create(&th, &attr, resolve_thread, r);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        atomic_fetch_sub(&r->refs, 1);
        atomic_store(&r->state, RS_IDLE);
        tpio__allocator_release();
        if (r->res)
            freeaddrinfo(r->res);
        if (r->local_res)
            freeaddrinfo(r->local_res);
        r->res = r->local_res = NULL;
        return -rc;
    }
    return 0;
}
