/* libuv echo server, written the fast way libuv allows: reads go into one
 * shared 64 KiB buffer (alloc_cb), each read is echoed with uv_try_write, and
 * only what the kernel did not take is copied into a uv_write request. Reading
 * stops above 64 KiB queued and restarts at 16 KiB or below. */
#include "../bench_common.h"

#include <string.h>
#include <uv.h>

struct wreq {
    uv_write_t req;
    char data[];
};

static struct bench_args args;
static char rbuf[BENCH_READ];
static uv_loop_t *loop;

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    buf->base = rbuf;
    buf->len = args.read_size;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void close_cb(uv_handle_t *h)
{
    free(h);
    bench_conn_closed(&args);
}

static void write_cb(uv_write_t *req, int status)
{
    uv_stream_t *s = req->handle;
    free(req);
    if (status < 0 || uv_is_closing((uv_handle_t *)s))
        return;
    if (s->data /* paused */ && s->write_queue_size <= BENCH_LOW) {
        s->data = NULL;
        uv_read_start(s, alloc_cb, read_cb);
    }
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    if (nread <= 0) {
        if (nread < 0 && !uv_is_closing((uv_handle_t *)s))
            uv_close((uv_handle_t *)s, close_cb);
        return;
    }
    uv_buf_t b = uv_buf_init(buf->base, (unsigned)nread);
    int r = uv_try_write(s, &b, 1);
    if (r == nread)
        return; /* the hot path */
    if (r < 0) {
        if (r != UV_EAGAIN) {
            uv_close((uv_handle_t *)s, close_cb);
            return;
        }
        r = 0;
    }
    size_t rest = (size_t)nread - (size_t)r;
    struct wreq *w = malloc(sizeof *w + rest);
    if (!w) {
        uv_close((uv_handle_t *)s, close_cb);
        return;
    }
    memcpy(w->data, buf->base + r, rest);
    uv_buf_t wb = uv_buf_init(w->data, (unsigned)rest);
    if (uv_write(&w->req, s, &wb, 1, write_cb) < 0) {
        free(w);
        uv_close((uv_handle_t *)s, close_cb);
        return;
    }
    if (s->write_queue_size > BENCH_HIGH) {
        s->data = s; /* paused */
        uv_read_stop(s);
    }
}

static void on_conn(uv_stream_t *server, int status)
{
    if (status < 0)
        return;
    uv_tcp_t *c = malloc(sizeof *c);
    if (!c)
        return;
    uv_tcp_init(loop, c);
    c->data = NULL;
    if (uv_accept(server, (uv_stream_t *)c) < 0) {
        uv_close((uv_handle_t *)c, (uv_close_cb)free);
        return;
    }
    uv_tcp_nodelay(c, 1);
    uv_read_start((uv_stream_t *)c, alloc_cb, read_cb);
}

int main(int argc, char **argv)
{
    args = bench_setup(argc, argv);
    loop = uv_default_loop();
    uv_tcp_t server;
    uv_tcp_init(loop, &server);
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", (int)args.port, &sin);
    int r = uv_tcp_bind(&server, (const struct sockaddr *)&sin, 0);
    if (!r)
        r = uv_listen((uv_stream_t *)&server, BENCH_BACKLOG, on_conn);
    if (r) {
        fprintf(stderr, "libuv bind/listen: %s\n", uv_strerror(r));
        return 1;
    }
    struct sockaddr_in self;
    int len = sizeof self;
    uv_tcp_getsockname(&server, (struct sockaddr *)&self, &len);
    bench_print_port(ntohs(self.sin_port));
    return uv_run(loop, UV_RUN_DEFAULT);
}
