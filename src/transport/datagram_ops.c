/* The datagram transport where the backend receives and sends itself
 * (io_uring's operations): datagram.h's struct dgram with d->ops. */
#include "transport/datagram.h"

/* ---- operations: the kernel receives and sends (io_uring) ---------------------
 * A multishot recvmsg stays in the kernel while reading is allowed, and
 * each completion is one datagram, lent from the backend's buffers. A
 * datagram is sent at once when nothing is queued, as on epoll; the queue,
 * once the kernel pushed back, is sent from its head, one sendmsg in flight.
 * As for streams: what the kernel received after pause_reading is held and
 * delivered after resume_reading, and connection_lost waits until the
 * kernel let go of both (tpio__dgram_busy). */

static bool ops_reading(const struct dgram *d)
{
    return tpio__reading_allowed(&d->base) && !d->base.lost_scheduled && !d->base.closing;
}

static void hold(struct dgram *d, struct dq *e)
{
    if (!e)
        return; /* out of memory: dropped, as the kernel drops what does not fit */
    if (d->htail)
        d->htail->next = e;
    else
        d->hhead = e;
    d->htail = e;
}

static void deliver(struct dgram *d, const void *data, size_t len, const struct sockaddr *addr,
                    socklen_t alen, int err)
{
    if (err)
        tpio__dgram_error(d, err);
    else
        TPIO__UPCALL(&d->base, datagram_received, data, len, alen ? addr : NULL, alen);
}

static void held_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct dgram *d = tpio_container_of(arg, struct dgram, held_node);
    d->held_queued = false;
    while (d->hhead && ops_reading(d)) {
        struct dq *e = d->hhead;
        d->hhead = e->next;
        if (!d->hhead)
            d->htail = NULL;
        deliver(d, e->data, e->len, (struct sockaddr *)&e->addr, e->alen, e->err);
        tpio__free(e);
    }
    tpio__dgram_update_io(d);
    tpio__transport_unref(&d->base);
}

static void rop_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                     bool more)
{
    (void)loop;
    struct dgram *d = tpio_container_of(op, struct dgram, rop);
    const struct tpio__dgram *g = data;
    if (!more)
        d->rstop = false;
    if (res != -ECANCELED && !d->base.lost_scheduled && !d->base.closing) {
        int err = res < 0 ? res : 0;
        const void *p = g ? g->data : NULL;
        size_t len = g ? g->len : 0;
        const struct sockaddr *a = g ? g->addr : NULL;
        socklen_t alen = g ? g->alen : 0;
        if (ops_reading(d) && !d->hhead) {
            deliver(d, p, len, a, alen, err);
        } else {
            struct dq *e = tpio__dgram_dq_new(p, len, a, alen);
            if (e)
                e->err = err;
            hold(d, e);
        }
    }
    if (!more) {
        tpio__dgram_update_io(d);
        if (d->base.lost_scheduled && !tpio__op_busy(&d->wop))
            tpio__transport_ops_done(&d->base);
    }
}

static void wop_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                     bool more);

static void send_head(struct dgram *d)
{
    struct dq *e = d->qhead;
    e->iov = (struct iovec){.iov_base = e->data, .iov_len = e->len};
    e->msg = (struct msghdr){.msg_iov = &e->iov, .msg_iovlen = 1};
    if (!d->peerlen && e->alen) {
        e->msg.msg_name = &e->addr;
        e->msg.msg_namelen = e->alen;
    }
    int rc = tpio__op_sendmsg(d->base.loop->backend, &d->wop, d->io.fd, &e->msg, wop_done);
    if (rc < 0)
        tpio__schedule_lost(&d->base, rc);
}

/* The head went (or failed: asyncio drops it and tells error_received). */
static void wop_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                     bool more)
{
    (void)loop, (void)data, (void)more;
    struct dgram *d = tpio_container_of(op, struct dgram, wop);
    if (!d->base.lost_scheduled && d->qhead && res != -ECANCELED) {
        if (res == -EAGAIN || res == -EINTR) {
            send_head(d);
            return;
        }
        struct dq *e = d->qhead;
        d->qhead = e->next;
        if (!d->qhead)
            d->qtail = NULL;
        d->base.wsize -= e->len + DGRAM_HEADER;
        tpio__free(e);
        if (res < 0)
            tpio__dgram_error(d, res);
        tpio__maybe_resume_protocol(&d->base);
        if (!d->base.lost_scheduled && !d->qhead && d->base.closing)
            tpio__schedule_lost(&d->base, 0);
        else
            tpio__dgram_update_io(d);
    }
    if (d->base.lost_scheduled && !tpio__dgram_busy(&d->base))
        tpio__transport_ops_done(&d->base);
}

void tpio__dgram_update_ops(struct dgram *d)
{
    tpio_transport_t *t = &d->base;
    struct tpio__backend *b = t->loop->backend;
    bool reading = ops_reading(d);
    if (t->lost_scheduled) {
        tpio__op_drop(b, &d->rop);
        tpio__op_drop(b, &d->wop);
        d->rstop = false;
        return;
    }
    if (reading && d->hhead && !d->held_queued) {
        d->held_queued = true;
        d->held_node.cb = held_cb;
        tpio__transport_ref(t);
        tpio__call_soon_node(t->loop, &d->held_node);
    }
    bool receive = reading && !d->hhead;
    if (receive && !tpio__op_busy(&d->rop)) {
        int rc = tpio__op_recvmsg(b, &d->rop, d->io.fd, rop_done);
        if (rc < 0) {
            tpio__schedule_lost(t, rc);
            return;
        }
    } else if (!receive && tpio__op_busy(&d->rop) && !d->rstop) {
        d->rstop = true;
        tpio__op_cancel(b, &d->rop);
    }
    if (d->qhead && !tpio__op_busy(&d->wop))
        send_head(d);
}
