/* loop.sendfile: a file sent over a stream transport by a writer that takes
 * the transport's place once its buffer has drained — zero-copy with
 * sendfile(2) on sockets, else read and written piece by piece through the
 * transport's own write path, under its watermarks. */
#include "transport/transport.h"

#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bytes per turn: one sendfile(2) call, or the fallback's reads, before the
 * loop serves others. */
#define TURN_BYTES (4 * 1024 * 1024)
#define PIECE (64 * 1024)

struct sendfile {
    struct tpio__stream_writer w;
    struct tpio__node done;
    tpio_transport_t *t;
    int fd;
    uint64_t offset, left, sent;
    bool to_eof, native, fallback_ok, resume_reading, finished;
    int err;
    tpio_sendfile_cb_t cb;
    void *arg;
    tpio_handle_t req;
    unsigned char *buf; /* the fallback's piece */
};

static void done_cb(tpio_loop_t *loop, void *arg)
{
    struct sendfile *f = tpio_container_of(arg, struct sendfile, done);
    f->cb(loop, f->t, f->sent, f->err, f->arg);
    tpio__transport_unref(f->t);
    tpio__free(f->buf);
    tpio__free(f);
}

/* The end, however it came: the completion runs from the loop. */
static void finish(struct sendfile *f, int err)
{
    if (f->finished)
        return;
    f->finished = true;
    f->err = err;
    tpio__stream_detach(f->t);
    tpio__request_done(f->t->loop, f->req);
    if (f->resume_reading && !f->t->closing)
        tpio_transport_resume_reading(f->t);
    f->done.cb = done_cb;
    tpio__call_soon_node(f->t->loop, &f->done);
}

static size_t turn(const struct sendfile *f, size_t most)
{
    return f->to_eof || f->left > most ? most : (size_t)f->left;
}

static void advance(struct sendfile *f, size_t n)
{
    f->offset += n;
    f->sent += n;
    if (!f->to_eof)
        f->left -= n;
}

static bool complete(const struct sendfile *f) { return !f->to_eof && f->left == 0; }

/* Read and write: at most the high watermark buffered, then wait for the
 * buffer to drain (the next turn comes when it is empty). */
static void pump(struct sendfile *f)
{
    tpio_transport_t *t = f->t;
    for (size_t moved = 0; !f->finished && moved < TURN_BYTES && t->wsize <= t->high;) {
        if (complete(f)) {
            finish(f, 0);
            return;
        }
        ssize_t n = pread(f->fd, f->buf, turn(f, PIECE), (off_t)f->offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            finish(f, n < 0 ? -errno : 0); /* 0: the end of the file */
            return;
        }
        int rc = tpio__stream_write_raw(t, f->buf, (size_t)n);
        if (rc < 0) { /* the connection is lost with it: ended() already ran */
            finish(f, rc);
            return;
        }
        advance(f, (size_t)n);
        moved += (size_t)n;
    }
}

static int use_fallback(struct sendfile *f)
{
    f->native = false;
    f->buf = tpio__malloc(PIECE);
    return f->buf ? 0 : -ENOMEM;
}

static void on_writable(struct tpio__stream_writer *w)
{
    struct sendfile *f = tpio_container_of(w, struct sendfile, w);
    if (!f->native) {
        pump(f);
        return;
    }
    if (complete(f)) {
        finish(f, 0);
        return;
    }
    off_t off = (off_t)f->offset;
    ssize_t n = sendfile(tpio__stream_socket_fd(f->t), f->fd, &off, turn(f, TURN_BYTES));
    if (n > 0) {
        advance(f, (size_t)n);
        if (complete(f))
            finish(f, 0);
        return; /* the rest at the next turn */
    }
    if (n == 0) {
        finish(f, 0); /* the end of the file */
        return;
    }
    if (errno == EAGAIN || errno == EINTR)
        return;
    /* A file sendfile(2) cannot read (some file systems): the fallback. */
    if ((errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) && f->fallback_ok) {
        int rc = use_fallback(f);
        if (rc < 0)
            finish(f, rc);
        else
            pump(f);
        return;
    }
    finish(f, -errno);
}

static void on_ended(struct tpio__stream_writer *w, int err)
{
    finish(tpio_container_of(w, struct sendfile, w), err);
}

static void on_cancel(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct sendfile *f = arg;
    f->req = 0; /* the handle is retired already */
    finish(f, -ECANCELED);
}

int tpio_loop_sendfile(tpio_loop_t *loop, tpio_transport_t *t, int fd, off_t offset,
                       uint64_t count, tpio_flag_t fallback, tpio_sendfile_cb_t cb, void *arg,
                       tpio_handle_t *request)
{
    if (!loop || !t || !cb || t->loop != loop || offset < 0)
        return -EINVAL;
    int fallback_ok = tpio__flag(fallback, true);
    if (fallback_ok < 0)
        return -EINVAL;
    struct stat st;
    if (fd < 0)
        return -EBADF;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode))
        return -EINVAL;
    bool native = tpio__stream_socket_fd(t) >= 0;
    struct sendfile *f = tpio__calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    *f = (struct sendfile){
        .w = {on_writable, on_ended},
        .t = t,
        .fd = fd,
        .offset = (uint64_t)offset,
        .left = count,
        .to_eof = count == 0,
        .native = native,
        .fallback_ok = fallback_ok,
        .cb = cb,
        .arg = arg,
    };
    int rc = 0;
    if (!native && !fallback_ok)
        rc = -ENOTSUP;
    if (rc == 0 && !native)
        rc = use_fallback(f);
    if (rc == 0)
        rc = tpio__request_new(loop, on_cancel, f, &f->req);
    if (rc == 0 && (rc = tpio__stream_attach(t, &f->w)) < 0)
        tpio__request_done(loop, f->req);
    if (rc < 0) {
        tpio__free(f->buf);
        tpio__free(f);
        /* -ENOTSUP of a kind that is no stream, before the fallback's */
        return rc;
    }
    bool reading = false;
    f->resume_reading = tpio_transport_is_reading(t, &reading) == 0 && reading;
    if (f->resume_reading)
        tpio_transport_pause_reading(t);
    tpio__transport_ref(t); /* for the completion */
    if (request)
        *request = f->req;
    return 0;
}
