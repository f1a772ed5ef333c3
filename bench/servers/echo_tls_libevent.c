/* libevent TLS echo server: echo_libevent.c's bufferevents, made with
 * bufferevent_openssl_socket_new (BUFFEREVENT_SSL_ACCEPTING; OpenSSL on the
 * socket, libevent running the handshake and the reads and writes). The
 * input buffer is moved (not copied) to the output buffer in the read
 * callback; reading is disabled above 64 KiB waiting in the output buffer
 * and enabled again from the write callback (write low-watermark 16 KiB).
 * Context: bench_tls.h as it is: no read-ahead, which libevent 2.1 cannot
 * take (the records OpenSSL reads ahead with the client's Finished are not
 * looked at when the handshake completes, and the connection stalls until
 * the socket is readable again), so OpenSSL reads each record's header and
 * body with two read()s. A TCP EOF without close_notify counts as an EOF
 * (the load generator resets its connections). */
#include "../bench_tls.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <string.h>

static struct bench_args args;
static SSL_CTX *ctx;

static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)arg;
    struct evbuffer *out = bufferevent_get_output(bev);
    evbuffer_add_buffer(out, bufferevent_get_input(bev));
    if (evbuffer_get_length(out) > BENCH_HIGH)
        bufferevent_disable(bev, EV_READ);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    (void)arg;
    /* called when the output buffer drained to the low watermark */
    if (!(bufferevent_get_enabled(bev) & EV_READ))
        bufferevent_enable(bev, EV_READ);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        bufferevent_free(bev); /* frees the SSL and closes the socket */
        ERR_clear_error();
        bench_conn_closed(&args);
    }
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int len, void *arg)
{
    (void)sa;
    (void)len;
    (void)arg;
    struct event_base *base = evconnlistener_get_base(l);
    bench_nodelay(fd);
    SSL *ssl = SSL_new(ctx);
    struct bufferevent *bev =
        ssl ? bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                             BEV_OPT_CLOSE_ON_FREE)
            : NULL;
    if (!bev) {
        SSL_free(ssl);
        ERR_clear_error();
        evutil_closesocket(fd);
        return;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    bufferevent_set_max_single_read(bev, BENCH_READ);
    bufferevent_set_max_single_write(bev, BENCH_READ);
    bufferevent_setwatermark(bev, EV_WRITE, BENCH_LOW, 0);
    bufferevent_setcb(bev, read_cb, write_cb, event_cb, NULL);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

int main(int argc, char **argv)
{
    args = bench_setup(argc, argv);
    ctx = bench_tls_server_ctx(&args);
    struct event_base *base = event_base_new();
    if (!base)
        return 1;
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)args.port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct evconnlistener *l = evconnlistener_new_bind(
        base, accept_cb, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, BENCH_BACKLOG,
        (struct sockaddr *)&sin, sizeof sin);
    if (!l) {
        perror("evconnlistener_new_bind");
        return 1;
    }
    bench_print_port(bench_fd_port(evconnlistener_get_fd(l)));
    return event_base_dispatch(base);
}
