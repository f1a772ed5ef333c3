/* The TLS yardstick: echo_epoll.c's bare level-triggered epoll loop with
 * OpenSSL straight on the socket (SSL_set_fd), as tight as OpenSSL allows.
 *
 * - Context: bench_tls.h (TLS 1.3, TLS_AES_128_GCM_SHA256, no tickets,
 *   SSL_MODE_RELEASE_BUFFERS), plus read-ahead, so that one read() takes a
 *   whole record (without it OpenSSL reads the 5-byte header and the body
 *   separately: two syscalls per record).
 * - The handshake runs non-blocking on the loop (SSL_do_handshake on every
 *   readiness event until it completes).
 * - Per readiness event: SSL_read into a shared buffer (one record), then
 *   SSL_write of what was read; only what the kernel did not take is copied
 *   into the connection's own buffer and written again on EPOLLOUT
 *   (SSL_MODE_ENABLE_PARTIAL_WRITE and ACCEPT_MOVING_WRITE_BUFFER: the retry
 *   comes from that buffer). Records read ahead are decrypted before going
 *   back to epoll (SSL_has_pending), since epoll cannot see them.
 * - epoll_ctl only when the interest set changes; the watermarks of
 *   bench_common.h over the plaintext waiting to be sent.
 * - EOF, close_notify or any error: the connection is closed without a
 *   close_notify of ours (the load generator resets its connections). */
#include "../bench_tls.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

struct conn {
    int fd;
    uint32_t events;      /* current interest set */
    int reading;          /* not paused by the watermark */
    int handshake;        /* 0: done; else the events SSL_do_handshake waits for */
    SSL *ssl;
    char *pend;           /* plaintext SSL_write did not take yet */
    size_t off, len, cap;
};

static struct bench_args args;
static int ep;
static SSL_CTX *ctx;
static char rbuf[BENCH_READ];

static void set_events(struct conn *c)
{
    uint32_t want = c->handshake ? (uint32_t)c->handshake
                                 : (c->reading ? EPOLLIN : 0) | (c->len > c->off ? EPOLLOUT : 0);
    if (want == c->events)
        return;
    struct epoll_event ev = {.events = want, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = want;
}

static void conn_close(struct conn *c)
{
    ERR_clear_error(); /* whatever the failure left in the thread's queue */
    SSL_free(c->ssl);
    close(c->fd); /* also removes it from the epoll set */
    free(c->pend);
    free(c);
    bench_conn_closed(&args);
}

static int append(struct conn *c, const char *p, size_t n)
{
    if (c->off == c->len)
        c->off = c->len = 0;
    if (c->len + n > c->cap) {
        if (c->off) { /* compact first */
            memmove(c->pend, c->pend + c->off, c->len - c->off);
            c->len -= c->off;
            c->off = 0;
        }
        if (c->len + n > c->cap) {
            size_t cap = c->cap ? c->cap : 4096;
            while (cap < c->len + n)
                cap *= 2;
            char *np = realloc(c->pend, cap);
            if (!np)
                return -1;
            c->pend = np;
            c->cap = cap;
        }
    }
    memcpy(c->pend + c->len, p, n);
    c->len += n;
    return 0;
}

/* SSL_write p[0..n) record by record until done or the socket is full.
 * Returns the bytes taken, or -1 on a failure. */
static ssize_t ssl_send(struct conn *c, const char *p, size_t n)
{
    size_t done = 0;
    while (done < n) {
        int w = SSL_write(c->ssl, p + done, (int)(n - done));
        if (w <= 0) {
            int e = SSL_get_error(c->ssl, w);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
                break;
            return -1;
        }
        done += (size_t)w;
    }
    return (ssize_t)done;
}

/* Returns -1 if the connection was closed. */
static int on_readable(struct conn *c)
{
    do {
        int n = SSL_read(c->ssl, rbuf, (int)args.read_size);
        if (n <= 0) {
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return 0;
            conn_close(c);
            return -1;
        }
        size_t sent = 0;
        if (c->len == c->off) {
            ssize_t w = ssl_send(c, rbuf, (size_t)n);
            if (w < 0) {
                conn_close(c);
                return -1;
            }
            sent = (size_t)w;
            if (sent == (size_t)n)
                continue; /* the hot path: nothing else to do */
        }
        if (append(c, rbuf + sent, (size_t)n - sent) < 0) {
            conn_close(c);
            return -1;
        }
        if (c->len - c->off > BENCH_HIGH)
            c->reading = 0;
        set_events(c);
    } while (c->reading && SSL_has_pending(c->ssl));
    return 0;
}

static int on_writable(struct conn *c)
{
    ssize_t w = ssl_send(c, c->pend + c->off, c->len - c->off);
    if (w < 0) {
        conn_close(c);
        return -1;
    }
    c->off += (size_t)w;
    if (!c->reading && c->len - c->off <= BENCH_LOW) {
        c->reading = 1;
        set_events(c);
        /* records OpenSSL read ahead while we were paused */
        return SSL_has_pending(c->ssl) ? on_readable(c) : 0;
    }
    set_events(c);
    return 0;
}

/* Returns -1 if the connection was closed. */
static int on_handshake(struct conn *c)
{
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->handshake = 0;
        set_events(c);
        /* data the client sent right behind its Finished, read ahead */
        return SSL_has_pending(c->ssl) ? on_readable(c) : 0;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        conn_close(c);
        return -1;
    }
    c->handshake = e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT;
    set_events(c);
    return 0;
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or EMFILE & co: retried on the next event */
        bench_nodelay(fd);
        struct conn *c = calloc(1, sizeof *c);
        SSL *ssl = c ? SSL_new(ctx) : NULL;
        if (!ssl || SSL_set_fd(ssl, fd) != 1) {
            ERR_clear_error();
            SSL_free(ssl);
            free(c);
            close(fd);
            continue;
        }
        SSL_set_accept_state(ssl);
        c->fd = fd;
        c->ssl = ssl;
        c->reading = 1;
        c->handshake = EPOLLIN; /* the ClientHello */
        c->events = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            SSL_free(ssl);
            close(fd);
            free(c);
        }
    }
}

int main(int argc, char **argv)
{
    args = bench_setup(argc, argv);
    ctx = bench_tls_server_ctx(&args);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)args.port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(lfd, BENCH_BACKLOG) < 0) {
        perror("bind/listen");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn listener = {.fd = lfd};
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &listener};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    bench_print_port(bench_fd_port(lfd));

    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            if (c == &listener) {
                on_accept(lfd);
                continue;
            }
            if (c->handshake) {
                on_handshake(c);
                continue;
            }
            if ((e & (EPOLLIN | EPOLLHUP | EPOLLERR)) && c->reading && on_readable(c) < 0)
                continue;
            if ((e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) && c->len > c->off)
                on_writable(c);
        }
    }
}
