/* BaseTransport, ReadTransport and WriteTransport: the public calls, which
 * dispatch to the kind's table, plus what every kind shares — references,
 * the start and the end of a connection, reading state, watermark flow
 * control, and sets of transports. */
#include "transport/transport.h"

#include <assert.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

/* Shutdown ends a transport: close (flushing), or abort where asked and
 * where the kind has one. */
static void transport_end(struct tpio__list *item, bool abort)
{
    tpio_transport_t *t = tpio_container_of(item, struct tpio_transport, member.link);
    if (!t->proto) /* its factory is still deciding (or refused it) */
        return;
    if (!abort || tpio_transport_abort(t) == -ENOTSUP)
        tpio_transport_close(t);
}

void tpio__transport_init(tpio_transport_t *t, tpio_loop_t *loop,
                          const struct tpio__transport_vt *vt, tpio_transport_kind_t kind)
{
    t->vt = vt;
    t->loop = loop;
    t->kind = (uint8_t)kind;
    t->refs = 1; /* the connection's own reference, dropped after connection_lost */
    t->high = TPIO__DEFAULT_HIGH;
    t->low = TPIO__DEFAULT_HIGH / 4;
    t->read_size = TPIO__READ_SIZE;
    /* the loop's own until a set (a server's) takes it */
    tpio__loop_own(loop, TPIO__OWNED_TRANSPORTS, &t->member.link, transport_end);
    tpio__loop_hold(loop);
}

void tpio__transport_abandon(tpio_transport_t *t)
{
    tpio_loop_t *loop = t->loop;
    tpio__list_del(&t->member.link);
    tpio__free(t->start);
    t->start = NULL;
    t->vt->destroy(t);
    tpio__loop_release(loop);
}

void tpio__transport_disown(tpio_transport_t *t)
{
    if (!t->member.set)
        tpio__list_del(&t->member.link);
}

void tpio__transport_reown(tpio_transport_t *t)
{
    if (!t->member.set && !t->lost_scheduled && tpio__list_empty(&t->member.link))
        tpio__loop_own(t->loop, TPIO__OWNED_TRANSPORTS, &t->member.link, transport_end);
}

int tpio__transport_take_fd(tpio_transport_t *t, struct tpio__io *io, int fd, tpio__io_cb cb)
{
    tpio__io_init(io, -1, cb);
    int rc = tpio__fd_claim_new(t->loop, fd);
    if (rc == 0)
        io->fd = fd;
    return rc;
}

void tpio__transport_close_fd(tpio_transport_t *t, struct tpio__io *io)
{
    if (io->fd < 0)
        return;
    tpio__watch(t->loop, io, 0);
    tpio__fd_release(t->loop, io->fd);
    close(io->fd);
    io->fd = -1;
}

void tpio__transport_leave_fd(tpio_transport_t *t, struct tpio__io *io)
{
    if (io->fd < 0)
        return;
    tpio__watch(t->loop, io, 0);
    tpio__fd_release(t->loop, io->fd);
    io->fd = -1;
}

void tpio__transport_report(tpio_transport_t *t, const char *msg, int err)
{
    int fd = t->vt->fd ? t->vt->fd(t) : -1;
    tpio__report(t->loop, msg, err, t, t->proto, NULL, fd < 0 ? -1 : fd);
}

/* ---- the start ------------------------------------------------------------ */

static void start_cb(tpio_loop_t *loop, void *arg)
{
    tpio_transport_t *t = arg;
    tpio_protocol_t *first = t->proto;
    TPIO__UPCALL(t, connection_made, t);
    t->made = true;
    if (t->vt->started)
        t->vt->started(t);
    struct tpio__start *st = t->start;
    t->start = NULL;
    if (st) {
        st->cb(loop, t, first, 0, st->cb_arg);
        tpio__free(st);
    }
    tpio__transport_unref(t); /* the start's */
}

static int transport_start(tpio_transport_t *t, tpio_connect_cb_t cb, void *cb_arg,
                           tpio_handle_t *h)
{
    if (cb) {
        t->start = tpio__malloc(sizeof *t->start);
        if (!t->start)
            return -ENOMEM;
        *t->start = (struct tpio__start){cb, cb_arg};
    }
    int rc = tpio_loop_call_soon(t->loop, start_cb, t, h);
    if (rc < 0) {
        tpio__free(t->start);
        t->start = NULL;
        return rc;
    }
    tpio__transport_ref(t); /* held by the scheduled start */
    return 0;
}

int tpio__transport_start(tpio_transport_t *t, tpio_protocol_t *p, tpio_connect_cb_t cb,
                          void *cb_arg)
{
    int rc = transport_start(t, cb, cb_arg, NULL);
    if (rc == 0)
        t->proto = p;
    return rc;
}

int tpio__transport_open(tpio_transport_t *t, const struct tpio__conn *conn)
{
    /* over for the factory: a cancel from it finds nothing */
    tpio__request_done(t->loop, conn->req);
    tpio_handle_t h;
    int rc = transport_start(t, conn->cb, conn->cb_arg, &h);
    if (rc < 0)
        return rc;
    /* The factory last: nothing can fail after it, so the protocol it
     * returns always reaches connection_made. */
    tpio_protocol_t *p = conn->factory(conn->factory_arg);
    if (!p || !p->ops) {
        tpio_loop_cancel(t->loop, h);
        tpio__free(t->start);
        t->start = NULL;
        t->refs--; /* the start's; the connection's own remains */
        return -ECONNABORTED;
    }
    t->proto = p;
    /* The factory may have closed the server: the connection then lives on
     * outside the set, whose waiters have already been told it is empty. */
    if (conn->set && !conn->set->closed)
        tpio__tset_add(conn->set, t);
    return 0;
}

/* ---- the end ---------------------------------------------------------------- */

static void end(tpio_transport_t *t)
{
    tpio__transport_ref(t);
    /* asyncio closes the socket after connection_lost returns: the
     * descriptor and the extra info are still there inside it. */
    if (t->proto)
        TPIO__UPCALL(t, connection_lost, t->lost_err);
    t->proto = NULL; /* never touched again */
    t->vt->teardown(t);
    struct tpio__tset *set = t->member.set;
    tpio__list_del(&t->member.link);
    if (set) {
        t->member.set = NULL;
        set->count--;
        set->removed(set, t);
    }
    tpio__transport_unref(t); /* the connection's own reference */
    tpio__transport_unref(t);
}

static void lost_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    tpio_transport_t *t = tpio_container_of(arg, struct tpio_transport, lost_node);
    /* The kernel may still write into the transport's buffers, or hold its
     * descriptor: connection_lost, and the close after it, wait. */
    if (t->vt->busy && t->vt->busy(t)) {
        t->lost_waiting = true;
        return;
    }
    end(t);
}

void tpio__transport_ops_done(tpio_transport_t *t)
{
    if (!t->lost_waiting)
        return;
    t->lost_waiting = false;
    tpio__call_soon_node(t->loop, &t->lost_node);
}

/* Once: closing, I/O stopped now; false if the end was decided already. */
static bool mark_lost(tpio_transport_t *t, int err)
{
    if (t->lost_scheduled)
        return false;
    t->lost_scheduled = true;
    t->closing = true;
    t->lost_err = err;
    t->vt->quiesce(t);
    return true;
}

void tpio__schedule_lost(tpio_transport_t *t, int err)
{
    if (!mark_lost(t, err))
        return;
    t->lost_node.cb = lost_cb;
    tpio__call_soon_node(t->loop, &t->lost_node);
}

void tpio__transport_lost_now(tpio_transport_t *t, int err)
{
    if (mark_lost(t, err))
        end(t);
}

/* ---- flow control ----------------------------------------------------------- */

void tpio__maybe_pause_protocol(tpio_transport_t *t)
{
    if (t->writing_paused || t->wsize <= t->high)
        return;
    t->writing_paused = true;
    if (t->proto)
        TPIO__UPCALL(t, pause_writing);
}

void tpio__maybe_resume_protocol(tpio_transport_t *t)
{
    if (!t->writing_paused || t->wsize > t->low)
        return;
    t->writing_paused = false;
    if (t->proto)
        TPIO__UPCALL(t, resume_writing);
}

/* ---- sets ----------------------------------------------------------------------- */

void tpio__tset_init(struct tpio__tset *set,
                     void (*removed)(struct tpio__tset *, tpio_transport_t *))
{
    tpio__list_init(&set->members);
    set->count = 0;
    set->closed = false;
    set->removed = removed;
}

void tpio__tset_add(struct tpio__tset *set, tpio_transport_t *t)
{
    tpio__list_del(&t->member.link); /* out of the loop's own list */
    t->member.set = set;
    tpio__list_add_tail(&set->members, &t->member.link);
    set->count++;
}

void tpio__tset_pass(tpio_transport_t *from, tpio_transport_t *to)
{
    struct tpio__tset *set = from->member.set;
    if (!set)
        return;
    tpio__list_del(&from->member.link);
    from->member.set = NULL;
    set->count--;
    tpio__tset_add(set, to);
}

void tpio__tset_each(struct tpio__tset *set, int (*fn)(tpio_transport_t *t))
{
    /* close/abort only schedule connection_lost, which removes members
     * later: the list cannot change under the walk. */
    for (struct tpio__list *it = set->members.next; it != &set->members; it = it->next)
        fn(tpio_container_of(it, struct tpio_transport, member.link));
}

/* ---- public: BaseTransport ------------------------------------------------ */

int tpio_transport_get_kind(const tpio_transport_t *t, tpio_transport_kind_t *kind)
{
    if (!t || !kind)
        return -EINVAL;
    *kind = (tpio_transport_kind_t)t->kind;
    return 0;
}

int tpio_transport_get_loop(const tpio_transport_t *t, tpio_loop_t **loop)
{
    if (!t || !loop)
        return -EINVAL;
    *loop = t->loop;
    return 0;
}

int tpio_transport_close(tpio_transport_t *t)
{
    if (!t)
        return -EINVAL;
    return t->vt->close ? t->vt->close(t) : -ENOTSUP;
}

int tpio_transport_is_closing(const tpio_transport_t *t, bool *closing)
{
    if (!t || !closing)
        return -EINVAL;
    *closing = t->closing;
    return 0;
}

int tpio_transport_get_protocol(const tpio_transport_t *t, tpio_protocol_t **p)
{
    if (!t || !p)
        return -EINVAL;
    *p = t->proto;
    return 0;
}

int tpio_transport_set_protocol(tpio_transport_t *t, tpio_protocol_t *p)
{
    if (!t || !p || !p->ops)
        return -EINVAL;
    t->proto = p;
    return 0;
}

int tpio_transport_get_extra_info(const tpio_transport_t *t, const char *name,
                                  tpio_extra_t *out)
{
    if (!t || !name || !out)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    out->fd = -1;
    if (!t->vt->extra_info)
        return -ENOENT;
    int rc = t->vt->extra_info(t, name, out);
    if (rc < 0) {
        memset(out, 0, sizeof *out);
        out->fd = -1;
    }
    return rc;
}

int tpio_transport_get_fd(const tpio_transport_t *t, int *fd)
{
    if (!t || !fd)
        return -EINVAL;
    if (!t->vt->fd)
        return -ENOTSUP;
    int rc = t->vt->fd(t);
    if (rc < 0)
        return rc;
    *fd = rc;
    return 0;
}

static int copy_addr(const tpio_transport_t *t, const char *name,
                     struct sockaddr_storage *addr, socklen_t *len)
{
    if (!t || !addr || !len)
        return -EINVAL;
    tpio_extra_t e;
    int rc = tpio_transport_get_extra_info(t, name, &e);
    if (rc < 0)
        return rc;
    if (e.type != TPIO_EXTRA_ADDR)
        return -ENOTSUP;
    socklen_t n = e.addrlen < *len ? e.addrlen : *len;
    memcpy(addr, e.addr, n);
    *len = e.addrlen;
    return 0;
}

int tpio_transport_get_peername(const tpio_transport_t *t, struct sockaddr_storage *addr,
                                socklen_t *len)
{
    return copy_addr(t, "peername", addr, len);
}

int tpio_transport_get_sockname(const tpio_transport_t *t, struct sockaddr_storage *addr,
                                socklen_t *len)
{
    return copy_addr(t, "sockname", addr, len);
}

/* ---- public: ReadTransport ------------------------------------------------ */

int tpio_transport_is_reading(const tpio_transport_t *t, bool *reading)
{
    if (!t || !reading)
        return -EINVAL;
    if (!t->vt->reading_changed)
        return -ENOTSUP;
    *reading = !t->paused && !t->closing;
    return 0;
}

int tpio_transport_pause_reading(tpio_transport_t *t)
{
    if (!t)
        return -EINVAL;
    if (!t->vt->reading_changed)
        return -ENOTSUP;
    if (t->closing || t->paused)
        return 0;
    t->paused = true;
    t->vt->reading_changed(t);
    return 0;
}

int tpio_transport_resume_reading(tpio_transport_t *t)
{
    if (!t)
        return -EINVAL;
    if (!t->vt->reading_changed)
        return -ENOTSUP;
    if (t->closing || !t->paused)
        return 0;
    t->paused = false;
    t->vt->reading_changed(t);
    return 0;
}

int tpio_transport_set_read_size(tpio_transport_t *t, size_t size)
{
    if (!t)
        return -EINVAL;
    if (!t->vt->stream_reads)
        return -ENOTSUP;
    if (size > TPIO_READ_SIZE_MAX)
        return -EINVAL;
    t->read_size = size ? (uint32_t)size : TPIO__READ_SIZE;
    return 0;
}

int tpio_transport_get_read_size(const tpio_transport_t *t, size_t *size)
{
    if (!t || !size)
        return -EINVAL;
    if (!t->vt->stream_reads)
        return -ENOTSUP;
    *size = t->read_size;
    return 0;
}

/* ---- public: WriteTransport ----------------------------------------------- */

int tpio_transport_write(tpio_transport_t *t, const void *data, size_t len)
{
    if (!t || (!data && len))
        return -EINVAL;
    if (t->vt->write1)
        return t->vt->write1(t, data, len);
    if (!t->vt->write)
        return -ENOTSUP;
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    return t->vt->write(t, &iov, 1, len);
}

/* tpio_buf_t is struct iovec with a const base, so the array is handed to
 * the kernel as it is. */
static_assert(sizeof(tpio_buf_t) == sizeof(struct iovec) &&
                  offsetof(tpio_buf_t, base) == offsetof(struct iovec, iov_base) &&
                  offsetof(tpio_buf_t, len) == offsetof(struct iovec, iov_len),
              "tpio_buf_t has struct iovec's layout");

int tpio_transport_writelines(tpio_transport_t *t, const tpio_buf_t *bufs, size_t count)
{
    if (!t || (!bufs && count) || count > INT_MAX)
        return -EINVAL;
    if (!t->vt->write)
        return -ENOTSUP;
    size_t total = 0;
    for (size_t i = 0; i < count; i++) {
        if ((!bufs[i].base && bufs[i].len) || bufs[i].len > SIZE_MAX - total)
            return -EINVAL;
        total += bufs[i].len;
    }
    return t->vt->write(t, (const struct iovec *)(const void *)bufs, (int)count, total);
}

int tpio_datagram_sendto(tpio_transport_t *t, const void *data, size_t len,
                         const struct sockaddr *addr, socklen_t addrlen)
{
    if (!t || (!data && len) || (addr && addrlen == 0))
        return -EINVAL;
    if (!t->vt->sendto)
        return -ENOTSUP;
    return t->vt->sendto(t, data, len, addr, addrlen);
}

int tpio_transport_write_eof(tpio_transport_t *t)
{
    if (!t)
        return -EINVAL;
    return t->vt->write_eof ? t->vt->write_eof(t) : -ENOTSUP;
}

int tpio_transport_can_write_eof(const tpio_transport_t *t, bool *can)
{
    if (!t || !can)
        return -EINVAL;
    *can = t->vt->can_write_eof;
    return 0;
}

int tpio_transport_abort(tpio_transport_t *t)
{
    if (!t)
        return -EINVAL;
    return t->vt->abort ? t->vt->abort(t) : -ENOTSUP;
}

int tpio_transport_abort_reset(tpio_transport_t *t)
{
    if (!t)
        return -EINVAL;
    return t->vt->abort_reset ? t->vt->abort_reset(t) : -ENOTSUP;
}

static bool writable(const tpio_transport_t *t) { return t->vt->write || t->vt->sendto; }

int tpio_transport_get_write_buffer_size(const tpio_transport_t *t, size_t *size)
{
    if (!t || !size)
        return -EINVAL;
    if (!writable(t))
        return -ENOTSUP;
    *size = t->vt->write_buffer_size ? t->vt->write_buffer_size(t) : t->wsize;
    return 0;
}

int tpio_transport_set_write_buffer_limits(tpio_transport_t *t, ssize_t high, ssize_t low)
{
    if (!t)
        return -EINVAL;
    if (!writable(t))
        return -ENOTSUP;
    if ((high < 0 && high != TPIO_LIMIT_DEFAULT) || (low < 0 && low != TPIO_LIMIT_DEFAULT))
        return -EINVAL;
    /* asyncio's _set_write_buffer_limits; Python's integers do not wrap,
     * so 4 * low saturates here. */
    size_t h, l;
    if (high == TPIO_LIMIT_DEFAULT)
        h = low == TPIO_LIMIT_DEFAULT    ? TPIO__DEFAULT_HIGH
            : (size_t)low > SIZE_MAX / 4 ? SIZE_MAX
                                         : 4 * (size_t)low;
    else
        h = (size_t)high;
    l = low == TPIO_LIMIT_DEFAULT ? h / 4 : (size_t)low;
    if (l > h)
        return -EINVAL;
    t->high = h;
    t->low = l;
    if (t->vt->limits_changed)
        t->vt->limits_changed(t);
    tpio__maybe_pause_protocol(t);
    return 0;
}

int tpio_transport_get_write_buffer_limits(const tpio_transport_t *t, size_t *high,
                                           size_t *low)
{
    if (!t || !high || !low)
        return -EINVAL;
    if (!writable(t))
        return -ENOTSUP;
    *high = t->high;
    *low = t->low;
    return 0;
}
