/* The yardstick: an echo server on a bare level-triggered epoll loop, as
 * tight as the kernel allows. Per readiness event: one read into a shared
 * buffer, one write of what was read. Only the bytes the kernel did not take
 * are copied into the connection's own buffer, which is then flushed on
 * EPOLLOUT. epoll_ctl only when the interest set changes (watermarks, see
 * bench_common.h). No allocation on the hot path. */
#include "../bench_common.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

struct conn {
    int fd;
    uint32_t events;      /* current interest set */
    int reading;          /* not paused by the watermark */
    char *pend;           /* bytes the kernel did not take yet */
    size_t off, len, cap;
};

static struct bench_args args;
static int ep;
static char rbuf[BENCH_READ];

static void set_events(struct conn *c)
{
    uint32_t want = (c->reading ? EPOLLIN : 0) | (c->len > c->off ? EPOLLOUT : 0);
    if (want == c->events)
        return;
    struct epoll_event ev = {.events = want, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = want;
}

static void conn_close(struct conn *c)
{
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

/* Returns -1 if the connection was closed. */
static int on_readable(struct conn *c)
{
    ssize_t n = read(c->fd, rbuf, args.read_size);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        conn_close(c);
        return -1;
    }
    size_t sent = 0;
    if (c->len == c->off) {
        ssize_t w = write(c->fd, rbuf, (size_t)n);
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                conn_close(c);
                return -1;
            }
            w = 0;
        }
        sent = (size_t)w;
        if (sent == (size_t)n)
            return 0; /* the hot path: nothing else to do */
    }
    if (append(c, rbuf + sent, (size_t)n - sent) < 0) {
        conn_close(c);
        return -1;
    }
    if (c->len - c->off > BENCH_HIGH)
        c->reading = 0;
    set_events(c);
    return 0;
}

static int on_writable(struct conn *c)
{
    ssize_t w = write(c->fd, c->pend + c->off, c->len - c->off);
    if (w < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        conn_close(c);
        return -1;
    }
    c->off += (size_t)w;
    if (!c->reading && c->len - c->off <= BENCH_LOW)
        c->reading = 1;
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
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->reading = 1;
        c->events = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
        }
    }
}

int main(int argc, char **argv)
{
    args = bench_setup(argc, argv);
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
            if ((e & (EPOLLIN | EPOLLHUP | EPOLLERR)) && c->reading && on_readable(c) < 0)
                continue;
            if ((e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) && c->len > c->off)
                on_writable(c);
        }
    }
}
