/* tpio TLS echo server: echo_tpio.c with a `tls` option on the server, so
 * every accepted connection is a TLS transport (tpio's TLS layer over its TCP
 * transport). Built twice (see bench/CMakeLists.txt):
 *   echo_tls_tpio          a Protocol: data_received -> tpio_transport_write
 *   echo_tls_tpio_buffered a BufferedProtocol (-DBUFFERED): get_buffer hands
 *                          out one fixed 64 KiB buffer, OpenSSL decrypts into
 *                          it, buffer_updated -> tpio_transport_write
 * Both pause reading on pause_writing and resume on resume_writing (tpio's
 * default watermarks, 64 KiB / 16 KiB, are the ones every server uses).
 * Context: tpio_tls_server_context() (certificate, key; it sets
 * SSL_MODE_RELEASE_BUFFERS itself), restricted as every TLS server's by
 * bench_tls_restrict(). */
#include "../bench_tls.h"

#include <string.h>
#include <tpio.h>

struct echo {
    tpio_protocol_t base; /* first: container_of is a cast */
    tpio_transport_t *t;
};

static struct bench_args args;

static void made(tpio_protocol_t *p, tpio_transport_t *t)
{
    tpio_container_of(p, struct echo, base)->t = t;
}

static void lost(tpio_protocol_t *p, int err)
{
    (void)err;
    free(tpio_container_of(p, struct echo, base));
    bench_conn_closed(&args);
}

static void pause_w(tpio_protocol_t *p) { tpio_transport_pause_reading(tpio_container_of(p, struct echo, base)->t); }
static void resume_w(tpio_protocol_t *p) { tpio_transport_resume_reading(tpio_container_of(p, struct echo, base)->t); }

#ifndef BUFFERED
static void data(tpio_protocol_t *p, const void *d, size_t n)
{
    tpio_transport_write(tpio_container_of(p, struct echo, base)->t, d, n);
}

static const tpio_protocol_ops_t ops = {
    .connection_made = made,
    .connection_lost = lost,
    .pause_writing = pause_w,
    .resume_writing = resume_w,
    .data_received = data,
};
#else
/* One buffer for every connection: the data is echoed (encrypted and sent,
 * or kept, by tpio_transport_write) before buffer_updated returns, so it is
 * free again at once. */
static char rbuf[BENCH_READ];

static void *get_buf(tpio_protocol_t *p, ssize_t hint, size_t *len)
{
    (void)p;
    (void)hint;
    *len = args.read_size;
    return rbuf;
}

static void updated(tpio_protocol_t *p, size_t n)
{
    tpio_transport_write(tpio_container_of(p, struct echo, base)->t, rbuf, n);
}

static const tpio_protocol_ops_t ops = {
    .connection_made = made,
    .connection_lost = lost,
    .pause_writing = pause_w,
    .resume_writing = resume_w,
    .get_buffer = get_buf,
    .buffer_updated = updated,
};
#endif

static tpio_protocol_t *factory(void *arg)
{
    (void)arg;
    struct echo *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->base.ops = &ops;
    return &e->base;
}

int main(int argc, char **argv)
{
    args = bench_setup(argc, argv);
    if (!args.cert || !args.key) {
        fprintf(stderr, "usage: %s --cert CERT.pem --key KEY.pem [PORT [EXIT_AFTER]]\n", argv[0]);
        return 1;
    }
    SSL_CTX *ctx;
    int rc = tpio_tls_server_context(&ctx, args.cert, args.key);
    if (rc) {
        fprintf(stderr, "tpio_tls_server_context: %s: %s\n", tpio_strerror(rc),
                tpio_tls_last_error());
        return 1;
    }
    bench_tls_restrict(ctx);
    tpio_loop_t *loop;
    rc = tpio_loop_new(&loop, NULL);
    if (rc) {
        fprintf(stderr, "tpio_loop_new: %s\n", tpio_strerror(rc));
        return 1;
    }
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = ctx);
    tpio_server_opts_t o = TPIO_OPTS(tpio_server_opts_t);
    o.host = "127.0.0.1";
    o.port = (uint16_t)args.port;
    o.family = AF_INET;
    o.backlog = BENCH_BACKLOG;
    o.tls = &tls;
    tpio_server_t *srv;
    rc = tpio_loop_create_server(loop, factory, NULL, &o, &srv);
    if (rc) {
        fprintf(stderr, "tpio_loop_create_server: %s\n", tpio_strerror(rc));
        return 1;
    }
    SSL_CTX_free(ctx); /* the server holds its own reference */
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    tpio_server_get_sockname(srv, 0, &ss, &len);
    bench_print_port(ntohs(((struct sockaddr_in *)&ss)->sin_port));
    rc = tpio_loop_run_forever(loop);
    fprintf(stderr, "tpio_loop_run_forever: %s\n", tpio_strerror(rc));
    return 1;
}
