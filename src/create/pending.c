/* A request of the create layer (a connection attempt, a datagram endpoint
 * being resolved) while it waits for its addresses — from a resolver
 * thread, or given and delivered on the next iteration — and the rules of
 * cancelling it meanwhile, in one place: the completion runs once, from the
 * loop; a resolver thread given up finishes alone; the memory goes when the
 * loop and any thread are both done with it. */
#include "create/create.h"

static void cancel_done(tpio_loop_t *loop, void *arg)
{
    struct tpio__pending *p = tpio_container_of(arg, struct tpio__pending, cancel_node);
    p->cancel_node.cb = NULL;
    p->conn.cb(loop, NULL, NULL, -ECANCELED, p->conn.cb_arg);
    if (!p->awaiting)
        tpio__pending_end(p);
}

static void pending_cancel(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct tpio__pending *p = arg;
    p->req = 0; /* retired by the cancel */
    p->cancelled = true;
    if (p->stop)
        p->stop(p);
    if (p->awaiting && tpio__resolve_cancel(&p->r))
        p->awaiting = false; /* the thread owns its result now */
    p->cancel_node.cb = cancel_done;
    tpio__call_soon_node(p->loop, &p->cancel_node);
}

int tpio__pending_init(struct tpio__pending *p, tpio_loop_t *loop, const struct tpio__conn *conn,
                       void (*release)(struct tpio__resolve *),
                       void (*stop)(struct tpio__pending *))
{
    int rc = tpio__request_new(loop, pending_cancel, p, &p->req);
    if (rc < 0)
        return rc;
    p->loop = loop;
    p->conn = *conn;
    p->stop = stop;
    p->awaiting = true;
    p->r.loop = loop;
    p->r.release = release;
    atomic_init(&p->r.refs, 1);
    tpio__loop_hold(loop);
    return 0;
}

bool tpio__pending_arrived(struct tpio__pending *p)
{
    p->awaiting = false;
    if (!p->cancelled)
        return true;
    if (!p->cancel_node.cb) /* the cancelled completion has run */
        tpio__pending_end(p);
    return false;
}

void tpio__pending_retire(struct tpio__pending *p)
{
    tpio__request_done(p->loop, p->req);
    p->req = 0;
}

void tpio__pending_end(struct tpio__pending *p)
{
    tpio__request_done(p->loop, p->req);
    tpio__loop_release(p->loop);
    tpio__resolve_put(&p->r);
}

void tpio__pending_fail(struct tpio__pending *p, int err)
{
    tpio_connect_cb_t cb = p->conn.cb;
    void *arg = p->conn.cb_arg;
    tpio_loop_t *loop = p->loop;
    tpio__pending_end(p);
    cb(loop, NULL, NULL, err, arg);
}
