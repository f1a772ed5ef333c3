/* BaseTransport, ReadTransport and WriteTransport: the public calls, which
 * dispatch to the kind's table, plus what every kind shares — references,
 * the end of a connection, and watermark flow control. */
#include "internal.h"

#include <string.h>
#include <unistd.h>

void tpio__transport_init(tpio_transport_t *t, tpio_loop_t *loop,
                          const struct tpio__transport_vt *vt, tpio_transport_kind_t kind,
                          tpio_protocol_t *p)
{
    t->vt = vt;
    t->loop = loop;
    t->proto = p;
    t->kind = kind;
    t->refs = 1; /* the connection's own reference, dropped after connection_lost */
    t->high = TPIO__DEFAULT_HIGH;
    t->low = TPIO__DEFAULT_HIGH / 4;
    tpio__list_init(&t->server_link);
    loop->ntransports++;
}

void tpio__transport_abandon(tpio_transport_t *t) { t->loop->ntransports--; }

void tpio__transport_free(tpio_transport_t *t)
{
    tpio_loop_t *loop = t->loop;
    t->vt->destroy(t);
    loop->ntransports--;
}

static void lost_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    tpio_transport_t *t = arg;
    tpio__transport_ref(t);
    tpio_protocol_t *p = t->proto;
    if (p && p->ops && p->ops->connection_lost)
        p->ops->connection_lost(p, t->lost_err);
    t->proto = NULL; /* never touched again */
    /* asyncio closes the socket after connection_lost returns */
    t->vt->teardown(t);
    if (t->server) {
        tpio_server_t *s = t->server;
        t->server = NULL;
        tpio__server_detach(s, t);
    }
    tpio__transport_unref(t); /* the connection's own reference */
    tpio__transport_unref(t);
}

void tpio__schedule_lost(tpio_transport_t *t, int err)
{
    if (t->lost_scheduled)
        return;
    t->lost_scheduled = true;
    t->closing = true;
    t->lost_err = err;
    t->vt->quiesce(t);
    if (tpio_call_soon(t->loop, lost_cb, t, NULL) < 0) {
        t->lost_next = t->loop->lost_head;
        t->loop->lost_head = t;
    }
}

void tpio__run_lost_list(tpio_loop_t *loop)
{
    while (loop->lost_head) {
        tpio_transport_t *t = loop->lost_head;
        loop->lost_head = t->lost_next;
        lost_cb(loop, t);
    }
}

struct adopt {
    int fd, kind;
    tpio__make_fn make;
    tpio_protocol_factory_t factory;
    void *factory_arg;
    tpio_connect_cb cb;
    void *cb_arg;
};

static void adopt_run(tpio_loop_t *loop, void *arg)
{
    struct adopt a = *(struct adopt *)arg;
    free(arg);
    loop->npending--;
    tpio_protocol_t *p = a.factory(a.factory_arg);
    int err = !p || !p->ops ? -ECONNABORTED : a.make(loop, a.fd, a.kind, p, a.cb, a.cb_arg);
    if (err) {
        close(a.fd);
        a.cb(loop, NULL, NULL, err, a.cb_arg);
    }
}

int tpio__adopt(tpio_loop_t *loop, int fd, int kind, tpio__make_fn make,
                tpio_protocol_factory_t factory, void *factory_arg, tpio_connect_cb cb,
                void *cb_arg)
{
    struct adopt *a = malloc(sizeof *a);
    if (!a)
        return -ENOMEM;
    *a = (struct adopt){fd, kind, make, factory, factory_arg, cb, cb_arg};
    int rc = tpio_call_soon(loop, adopt_run, a, NULL);
    if (rc < 0) {
        free(a);
        return rc;
    }
    loop->npending++;
    return 0;
}

void tpio__maybe_pause_protocol(tpio_transport_t *t)
{
    if (t->writing_paused || t->vt->write_buffer_size(t) <= t->high)
        return;
    t->writing_paused = true;
    tpio_protocol_t *p = t->proto;
    if (p && p->ops->pause_writing) {
        tpio__transport_ref(t);
        p->ops->pause_writing(p);
        tpio__transport_unref(t);
    }
}

void tpio__maybe_resume_protocol(tpio_transport_t *t)
{
    if (!t->writing_paused || t->vt->write_buffer_size(t) > t->low)
        return;
    t->writing_paused = false;
    tpio_protocol_t *p = t->proto;
    if (p && p->ops->resume_writing) {
        tpio__transport_ref(t);
        p->ops->resume_writing(p);
        tpio__transport_unref(t);
    }
}

/* ---- public: BaseTransport ------------------------------------------------ */

tpio_transport_kind_t tpio_transport_kind(const tpio_transport_t *t)
{
    return t ? t->kind : (tpio_transport_kind_t)0;
}

tpio_loop_t *tpio_transport_loop(const tpio_transport_t *t) { return t ? t->loop : NULL; }

int tpio_close(tpio_transport_t *t)
{
    if (!t)
        return -EINVAL;
    return t->vt->close ? t->vt->close(t) : -ENOTSUP;
}

bool tpio_is_closing(const tpio_transport_t *t) { return t && t->closing; }

tpio_protocol_t *tpio_get_protocol(const tpio_transport_t *t) { return t ? t->proto : NULL; }

int tpio_set_protocol(tpio_transport_t *t, tpio_protocol_t *p)
{
    if (!t || !p || !p->ops)
        return -EINVAL;
    t->proto = p;
    return 0;
}

int tpio_get_extra_info(const tpio_transport_t *t, const char *name, tpio_extra_t *out)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (!t || !name || !out)
        return -EINVAL;
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

int tpio_transport_fd(const tpio_transport_t *t)
{
    if (!t)
        return -EINVAL;
    return t->vt->fd ? t->vt->fd(t) : -ENOTSUP;
}

static int copy_addr(const tpio_transport_t *t, const char *name,
                     struct sockaddr_storage *addr, socklen_t *len)
{
    if (!t || !addr || !len)
        return -EINVAL;
    tpio_extra_t e;
    int rc = tpio_get_extra_info(t, name, &e);
    if (rc < 0)
        return rc;
    if (e.type != TPIO_EXTRA_ADDR)
        return -ENOTSUP;
    socklen_t n = e.addrlen < *len ? e.addrlen : *len;
    memcpy(addr, e.addr, n);
    *len = e.addrlen;
    return 0;
}

int tpio_transport_peername(const tpio_transport_t *t, struct sockaddr_storage *addr,
                            socklen_t *len)
{
    return copy_addr(t, "peername", addr, len);
}

int tpio_transport_sockname(const tpio_transport_t *t, struct sockaddr_storage *addr,
                            socklen_t *len)
{
    return copy_addr(t, "sockname", addr, len);
}

/* ---- public: ReadTransport ------------------------------------------------ */

bool tpio_is_reading(const tpio_transport_t *t)
{
    return t && t->vt->is_reading && t->vt->is_reading(t);
}

int tpio_pause_reading(tpio_transport_t *t)
{
    if (!t)
        return -EINVAL;
    return t->vt->pause_reading ? t->vt->pause_reading(t) : -ENOTSUP;
}

int tpio_resume_reading(tpio_transport_t *t)
{
    if (!t)
        return -EINVAL;
    return t->vt->resume_reading ? t->vt->resume_reading(t) : -ENOTSUP;
}

/* ---- public: WriteTransport ----------------------------------------------- */

int tpio_write(tpio_transport_t *t, const void *data, size_t len)
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

int tpio_writelines(tpio_transport_t *t, const struct iovec *iov, int iovcnt)
{
    if (!t || iovcnt < 0 || (!iov && iovcnt))
        return -EINVAL;
    if (!t->vt->write)
        return -ENOTSUP;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (!iov[i].iov_base && iov[i].iov_len)
            return -EINVAL;
        total += iov[i].iov_len;
    }
    return t->vt->write(t, iov, iovcnt, total);
}

int tpio_sendto(tpio_transport_t *t, const void *data, size_t len, const struct sockaddr *addr,
                socklen_t addrlen)
{
    if (!t || (!data && len) || (addr && addrlen == 0))
        return -EINVAL;
    if (!t->vt->sendto)
        return -ENOTSUP;
    return t->vt->sendto(t, data, len, addr, addrlen);
}

int tpio_write_eof(tpio_transport_t *t)
{
    if (!t)
        return -EINVAL;
    return t->vt->write_eof ? t->vt->write_eof(t) : -ENOTSUP;
}

bool tpio_can_write_eof(const tpio_transport_t *t)
{
    return t && t->vt->can_write_eof && t->vt->can_write_eof(t);
}

int tpio_abort(tpio_transport_t *t)
{
    if (!t)
        return -EINVAL;
    return t->vt->abort ? t->vt->abort(t) : -ENOTSUP;
}

size_t tpio_get_write_buffer_size(const tpio_transport_t *t)
{
    return t && t->vt->write_buffer_size ? t->vt->write_buffer_size(t) : 0;
}

int tpio_set_write_buffer_limits(tpio_transport_t *t, ssize_t high, ssize_t low)
{
    if (!t)
        return -EINVAL;
    if (!t->vt->write_buffer_size)
        return -ENOTSUP;
    if ((high < 0 && high != TPIO_LIMIT_DEFAULT) || (low < 0 && low != TPIO_LIMIT_DEFAULT))
        return -EINVAL;
    /* asyncio's _set_write_buffer_limits */
    size_t h, l;
    if (high == TPIO_LIMIT_DEFAULT)
        h = low == TPIO_LIMIT_DEFAULT ? TPIO__DEFAULT_HIGH : 4 * (size_t)low;
    else
        h = (size_t)high;
    l = low == TPIO_LIMIT_DEFAULT ? h / 4 : (size_t)low;
    if (l > h)
        return -EINVAL;
    t->high = h;
    t->low = l;
    tpio__maybe_pause_protocol(t);
    return 0;
}

int tpio_get_write_buffer_limits(const tpio_transport_t *t, size_t *low, size_t *high)
{
    if (!t)
        return -EINVAL;
    if (!t->vt->write_buffer_size)
        return -ENOTSUP;
    if (low)
        *low = t->low;
    if (high)
        *high = t->high;
    return 0;
}
