/*
 * Behaviours that no other file pins down, each test written to fail when
 * its behaviour breaks:
 *   - one readiness event stops reading after 1 MiB (TPIO__READ_BURST_BYTES)
 *     even when every read fills the 256 KiB buffer;
 *   - inside connection_lost the descriptor and the extra info are still
 *     there, and the descriptor is closed right after it returns;
 *   - the write buffer puts a piece that does not fit after a partly sent
 *     chunk's end into a new chunk, bytes intact and in order;
 *   - accepts per readiness event are bounded by the backlog (epoll; io_uring's
 *     multishot accept takes the queue in one batch);
 *   - EMFILE on accept a second time: the second back-off ends too;
 *   - wait_closed on an open server waits for close, not for zero
 *     connections;
 *   - every address failing: the completion gets the first attempt's error;
 *   - address interleaving (three and more addresses of two families),
 *     happy eyeballs delay 0 tries one address at a time, and the loser of a
 *     race is closed without reaching the user;
 *   - a datagram sent while others are queued never overtakes them;
 *   - cancelling a handle twice gives -ENOENT the second time.
 *
 * The "event boundary" used below: a callback scheduled with
 * tpio_loop_call_soon from inside an I/O callback (data_received, a
 * server's factory) runs in the same loop iteration, after every I/O
 * callback of that poll, and before the next poll. So everything counted
 * between the first upcall and that callback belongs to one readiness
 * event.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include "helpers.h"
#include "transport/transport.h" /* the write buffer's internals */
#include "create/create.h"       /* tpio__connect_addrs, TPIO__ACCEPT_RETRY_DELAY */

#include <arpa/inet.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define TMO 5.0

/* ------------------------------------------------------------------------- */
/* small socket helpers                                                      */
/* ------------------------------------------------------------------------- */

/* A loopback address of family fam (127.0.0.1 or ::1) with port. */
static socklen_t lo_addr(int fam, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (fam == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return sizeof *a;
    }
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    a->sin6_addr = in6addr_loopback;
    return sizeof *a;
}

static uint16_t addr_port(const struct sockaddr_storage *ss)
{
    return ntohs(ss->ss_family == AF_INET ? ((const struct sockaddr_in *)ss)->sin_port
                                          : ((const struct sockaddr_in6 *)ss)->sin6_port);
}

/* A TCP listener on the loopback address of fam, port picked by the kernel. */
static int listen_lo(int fam, int backlog, uint16_t *port)
{
    int l = socket(fam, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(l, 0, "socket: %s", strerror(errno));
    struct sockaddr_storage ss;
    socklen_t len = lo_addr(fam, 0, &ss);
    cr_assert_eq(bind(l, (struct sockaddr *)&ss, len), 0, "bind: %s", strerror(errno));
    cr_assert_eq(listen(l, backlog), 0);
    len = sizeof ss;
    cr_assert_eq(getsockname(l, (struct sockaddr *)&ss, &len), 0);
    *port = addr_port(&ss);
    return l;
}

/* A port of fam's loopback where nothing listens: connecting is refused. */
static uint16_t closed_port(int fam)
{
    uint16_t port;
    close(listen_lo(fam, 1, &port));
    return port;
}

/* A listener that does not answer: backlog 0 and one established filler
 * connection make its accept queue full, so the kernel drops further SYNs
 * (the client retransmits, first after about 1 s). */
static int silent_listener(uint16_t *port, int *filler)
{
    int l = listen_lo(AF_INET, 0, port);
    struct sockaddr_storage ss;
    socklen_t len = lo_addr(AF_INET, *port, &ss);
    *filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(*filler, 0);
    cr_assert_eq(connect(*filler, (struct sockaddr *)&ss, len), 0);
    return l;
}

/* Is a connection of l waiting to be accepted? (poll with timeout ms) */
static bool pending_conn(int l, int ms)
{
    struct pollfd p = {.fd = l, .events = POLLIN};
    return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

/* A TCP socket of this process in SYN_SENT towards 127.0.0.1:port? */
static bool syn_sent_to(uint16_t port)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    cr_assert_not_null(f);
    char line[512];
    bool found = false;
    if (!fgets(line, sizeof line, f)) { /* header */
        fclose(f);
        return false;
    }
    while (!found && fgets(line, sizeof line, f)) {
        unsigned rport, st;
        if (sscanf(line, " %*d: %*x:%*x %*x:%x %x", &rport, &st) == 2 && rport == port &&
            st == 0x02 /* TCP_SYN_SENT */)
            found = true;
    }
    fclose(f);
    return found;
}

static bool run_until_syn_sent(tpio_loop_t *loop, uint16_t port, double timeout)
{
    double end = th_time(loop) + timeout;
    while (!syn_sent_to(port) && th_time(loop) < end)
        tpio_loop_run_once(loop, 0.005);
    return syn_sent_to(port);
}

/* ------------------------------------------------------------------------- */
/* 1. a readiness event reads at most 1 MiB (TPIO__READ_BURST_BYTES)         */
/* ------------------------------------------------------------------------- */

/* tpio.h: "up to 32 reads / 1 MiB" per event. 1 MiB is 4 reads of the
 * default read size, 256 KiB, so the byte bound ends the event long before
 * the 32-read bound (tested in test_stream.c) would. */
#define RS TPIO_READ_SIZE_MAX /* one read: 256 KiB */
/* The byte bound is reached after 4 full reads; more data then waits for
 * the next event. */
#define BURST_BYTES (4 * (size_t)RS)

/* data_received calls and bytes per readiness event */
static struct {
    tpio_loop_t *loop;
    int wfd;             /* the pipe's write end, refilled from the 4th read */
    unsigned char *more; /* what the refill writes: RS + 1000 bytes */
    bool open;           /* an event is being counted: its marker has not run */
    size_t nev, total;
    size_t calls[8], bytes[8];
} bu;

static void burst_mark(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    (void)arg;
    bu.open = false;
}

static void burst_data(tpio_protocol_t *bp, const void *d, size_t n)
{
    if (!bu.open) {
        cr_assert_eq(tpio_loop_call_soon(bu.loop, burst_mark, NULL, NULL), 0);
        bu.open = true;
        bu.nev++;
    }
    if (bu.nev <= 8) {
        bu.calls[bu.nev - 1]++;
        bu.bytes[bu.nev - 1] += n;
    }
    bu.total += n;
    th_proto_ops.data_received(bp, d, n);
    /* After the 4th full read the pipe is empty: fill it again, so that a
     * 5th read in this event would fill the buffer too. Only the 1 MiB
     * bound keeps it for the next event. */
    if (bu.total == BURST_BYTES)
        cr_assert_eq(write(bu.wfd, bu.more, RS + 1000), (ssize_t)(RS + 1000));
}

Test(behaviours, read_burst_stops_after_1mib_of_full_reads, .timeout = 30)
{
    /* A pipe holds 1 MiB (fs.pipe-max-size, open to any process): exactly
     * the 4 full reads the bound allows; the rest comes from inside the
     * 4th data_received. */
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
    cr_assert_geq(fcntl(p[1], F_SETPIPE_SZ, (int)BURST_BYTES), (int)BURST_BYTES,
                  "a pipe of 1 MiB: fs.pipe-max-size is below 1048576");
    size_t total = BURST_BYTES + RS + 1000;
    unsigned char *pat = malloc(total);
    cr_assert_not_null(pat);
    for (size_t i = 0; i < total; i++)
        pat[i] = th_pat(i);
    cr_assert_eq(write(p[1], pat, BURST_BYTES), (ssize_t)BURST_BYTES);
    bu.wfd = p[1];
    bu.more = pat + BURST_BYTES;

    tpio_protocol_ops_t ops = th_proto_ops;
    ops.data_received = burst_data;
    th_pair_t *pr = th_pair_new(&ops);
    bu.loop = pr->loop;
    pr->peer = p[1];
    cr_assert_eq(tpio_loop_connect_read_pipe(pr->loop, th_pair_count_factory, pr, p[0],
                                             th_pair_on_conn, pr, NULL), 0);
    cr_assert(th_run_until(pr->loop, &pr->done, TMO));
    cr_assert_eq(pr->err, 0);
    th_proto_t *pp = pr->p;
    cr_assert(th_pair_run_until_rx(pr, pp, total), "got %zu of %zu bytes", pp->rxlen, total);
    cr_assert_eq(pp->rxlen, total);
    cr_assert_eq(memcmp(pp->rx, pat, total), 0, "bytes differ");
    if (th_ring_pipe_ops(pr->loop)) {
        /* io_uring reads the pipe with a multishot read: no bursts to bound,
         * each completion (one provided buffer) is delivered as it comes;
         * what the test sees is every byte, in order, across the refill */
        cr_assert_geq(bu.nev, 1);
    } else {
        /* first event: 4 reads of 256 KiB (1 MiB), although a 5th would fill too */
        cr_assert_eq(bu.calls[0], 4, "first event: %zu data_received calls (%zu bytes)",
                     bu.calls[0], bu.bytes[0]);
        cr_assert_eq(bu.bytes[0], BURST_BYTES);
        /* next event: the 5th full read, then the rest */
        cr_assert_eq(bu.nev, 2, "%zu events", bu.nev);
        cr_assert_eq(bu.calls[1], 2);
        cr_assert_eq(bu.bytes[1], (size_t)RS + 1000);
    }
    free(pat);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
}

/* ------------------------------------------------------------------------- */
/* 2. inside connection_lost, the descriptor and the extra info are there    */
/* ------------------------------------------------------------------------- */

static struct {
    tpio_loop_t *loop;
    int fd_made;                      /* the descriptor in connection_made */
    struct sockaddr_storage self_made, peer_made;
    socklen_t self_made_len, peer_made_len;
    /* inside connection_lost */
    bool in_lost;
    int lost_err;
    int getfd_rc, fd;
    int fcntl_rc;
    int sock_rc, sock_type, sock_fd;
    int peer_rc, peer_type;
    struct sockaddr_storage peer;
    socklen_t peerlen;
    int self_rc, self_type;
    struct sockaddr_storage self;
    socklen_t selflen;
    int gp_rc;                        /* getpeername(fd) */
    struct sockaddr_storage gp;
    socklen_t gplen;
    int gs_rc;                        /* getsockname(fd) */
    struct sockaddr_storage gs;
    socklen_t gslen;
    /* the next iteration */
    bool after;
    int after_fcntl_rc, after_errno;
} li;

static void li_made(tpio_protocol_t *bp, tpio_transport_t *t)
{
    li.fd_made = th_fd(t);
    li.self_made_len = sizeof li.self_made;
    getsockname(li.fd_made, (struct sockaddr *)&li.self_made, &li.self_made_len);
    li.peer_made_len = sizeof li.peer_made;
    getpeername(li.fd_made, (struct sockaddr *)&li.peer_made, &li.peer_made_len);
    th_proto_ops.connection_made(bp, t);
}

static void li_after(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    (void)arg;
    errno = 0;
    li.after_fcntl_rc = fcntl(li.fd, F_GETFD);
    li.after_errno = errno;
    li.after = true;
}

static void li_lost(tpio_protocol_t *bp, int err)
{
    th_proto_t *p = tpio_container_of(bp, th_proto_t, base);
    tpio_transport_t *t = p->t;
    li.in_lost = true;
    li.lost_err = err;
    li.fd = -1;
    li.getfd_rc = tpio_transport_get_fd(t, &li.fd);
    li.fcntl_rc = li.fd >= 0 ? fcntl(li.fd, F_GETFD) : -2;
    tpio_extra_t e;
    li.sock_rc = tpio_transport_get_extra_info(t, "socket", &e);
    li.sock_type = e.type;
    li.sock_fd = e.fd;
    li.peer_rc = tpio_transport_get_extra_info(t, "peername", &e);
    li.peer_type = e.type;
    if (li.peer_rc == 0 && e.addrlen <= sizeof li.peer) {
        memcpy(&li.peer, e.addr, e.addrlen);
        li.peerlen = e.addrlen;
    }
    li.self_rc = tpio_transport_get_extra_info(t, "sockname", &e);
    li.self_type = e.type;
    if (li.self_rc == 0 && e.addrlen <= sizeof li.self) {
        memcpy(&li.self, e.addr, e.addrlen);
        li.selflen = e.addrlen;
    }
    li.gplen = sizeof li.gp;
    li.gp_rc = li.fd >= 0 ? getpeername(li.fd, (struct sockaddr *)&li.gp, &li.gplen) : -2;
    li.gslen = sizeof li.gs;
    li.gs_rc = li.fd >= 0 ? getsockname(li.fd, (struct sockaddr *)&li.gs, &li.gslen) : -2;
    /* runs on the next iteration: after connection_lost returned, before
     * anything in this single-threaded test can open a descriptor */
    cr_assert_eq(tpio_loop_call_soon(li.loop, li_after, NULL, NULL), 0);
    th_proto_ops.connection_lost(bp, err);
}

static const tpio_protocol_ops_t *li_ops(void)
{
    static tpio_protocol_ops_t ops;
    ops = th_proto_ops;
    ops.connection_made = li_made;
    ops.connection_lost = li_lost;
    return &ops;
}

static void li_check_common(void)
{
    cr_assert(li.in_lost);
    cr_assert_eq(li.getfd_rc, 0, "tpio_transport_get_fd in connection_lost: %s",
                 tpio_err_name(li.getfd_rc));
    cr_assert_eq(li.fd, li.fd_made);
    cr_assert_neq(li.fcntl_rc, -1, "the descriptor was closed before connection_lost");
    cr_assert_eq(li.sock_rc, 0, "\"socket\" in connection_lost: %s", tpio_err_name(li.sock_rc));
    cr_assert_eq(li.sock_type, TPIO_EXTRA_FD);
    cr_assert_eq(li.sock_fd, li.fd_made);
    cr_assert_eq(li.peer_rc, 0, "\"peername\" in connection_lost: %s",
                 tpio_err_name(li.peer_rc));
    cr_assert_eq(li.peer_type, TPIO_EXTRA_ADDR);
    cr_assert_eq(li.peerlen, li.peer_made_len);
    cr_assert_eq(memcmp(&li.peer, &li.peer_made, li.peerlen), 0, "peername changed");
    cr_assert_eq(li.self_rc, 0, "\"sockname\" in connection_lost: %s",
                 tpio_err_name(li.self_rc));
    cr_assert_eq(li.self_type, TPIO_EXTRA_ADDR);
    cr_assert_eq(li.selflen, li.self_made_len);
    cr_assert_eq(memcmp(&li.self, &li.self_made, li.selflen), 0, "sockname differs");
    cr_assert_eq(li.gs_rc, 0, "getsockname(fd) in connection_lost: %s", strerror(errno));
    cr_assert_eq(li.gslen, li.self_made_len);
    cr_assert_eq(memcmp(&li.gs, &li.self_made, li.gslen), 0);
    /* closed right after connection_lost returned */
    cr_assert(li.after);
    cr_assert_eq(li.after_fcntl_rc, -1, "the descriptor is still open after connection_lost");
    cr_assert_eq(li.after_errno, EBADF);
}

Test(behaviours, connection_lost_sees_fd_and_extra_info_after_close, .timeout = 20)
{
    th_pair_t *pr = th_tcp_pair(li_ops(), NULL);
    li.loop = pr->loop;
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    cr_assert(th_run_until(pr->loop, &li.after, TMO));
    cr_assert_eq(li.lost_err, 0);
    li_check_common();
    /* the connection is still up inside connection_lost: the kernel's
     * getpeername works and agrees */
    cr_assert_eq(li.gp_rc, 0, "getpeername(fd) in connection_lost failed");
    cr_assert_eq(li.gplen, li.peer_made_len);
    cr_assert_eq(memcmp(&li.gp, &li.peer_made, li.gplen), 0);
    cr_assert_eq(th_peer_expect_eof(pr), 0, "the peer saw no EOF");
    cr_assert_str_eq(pr->p->events, "made,lost:0");
    th_pair_finish(pr);
}

Test(behaviours, connection_lost_sees_fd_and_extra_info_after_reset, .timeout = 20)
{
    th_pair_t *pr = th_tcp_pair(li_ops(), NULL);
    li.loop = pr->loop;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    cr_assert_eq(setsockopt(pr->peer, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(pr->peer); /* a reset */
    pr->peer = -1;
    cr_assert(th_run_until(pr->loop, &li.after, TMO));
    cr_assert_eq(li.lost_err, -ECONNRESET, "lost with %s", tpio_err_name(li.lost_err));
    /* the kernel forgets the peer of a reset socket; the transport does not */
    li_check_common();
    cr_assert_str_eq(pr->p->events, "made,lost:ECONNRESET");
    th_pair_finish(pr);
}

/* ------------------------------------------------------------------------- */
/* 3. the write buffer                                                       */
/* ------------------------------------------------------------------------- */

static void free_pool(void *spare)
{
    for (struct tpio__chunk *c = spare; c;) {
        struct tpio__chunk *next = c->next;
        tpio__free(c);
        c = next;
    }
}

/* The buffer's iovecs concatenated must be src[from, from + n). */
static void wbuf_expect(const struct tpio__wbuf *b, size_t size, const unsigned char *src,
                        size_t from, size_t n, int chunks)
{
    struct iovec iov[16];
    int cnt = tpio__wbuf_iov(b, iov, 16);
    cr_assert_eq(cnt, chunks, "%d chunks, expected %d", cnt, chunks);
    cr_assert_eq(size, n, "size %zu, expected %zu", size, n);
    size_t k = 0;
    for (int i = 0; i < cnt; i++) {
        const unsigned char *d = iov[i].iov_base;
        for (size_t j = 0; j < iov[i].iov_len; j++, k++) {
            cr_assert_lt(k, n, "more bytes than expected");
            cr_assert_eq(d[j], src[from + k], "byte %zu (chunk %d, +%zu) differs", from + k, i, j);
        }
    }
    cr_assert_eq(k, n, "%zu bytes in the iovecs, expected %zu", k, n);
}

Test(behaviours, wbuf_piece_past_the_room_of_a_partly_sent_chunk_goes_to_a_new_chunk,
     .timeout = 10)
{
    enum { SRC = 100000 };
    static unsigned char src[SRC];
    for (size_t i = 0; i < SRC; i++)
        src[i] = th_pat(i);
    struct tpio__wbuf b = {0};
    size_t size = 0;
    void *spare = NULL;

    /* one chunk, partly sent: off > 0 */
    cr_assert_eq(tpio__wbuf_append(&b, &size, &spare, src, 10000), 0);
    wbuf_expect(&b, size, src, 0, 10000, 1);
    tpio__wbuf_consume(&b, &size, &spare, 6000);
    wbuf_expect(&b, size, src, 6000, 4000, 1);
    struct tpio__chunk *c = b.head;
    cr_assert_eq(c, b.tail);
    cr_assert_eq(c->off, 6000);
    cr_assert_eq(c->len, 4000);
    size_t room = c->cap - c->off - c->len;    /* after the chunk's end */
    size_t total_room = c->cap - c->len;        /* if it were compacted */
    cr_assert_gt(total_room, room + 1);

    /* exactly the room after the end: joins the chunk */
    size_t at = 10000;
    cr_assert_eq(tpio__wbuf_append(&b, &size, &spare, src + at, room), 0);
    at += room;
    wbuf_expect(&b, size, src, 6000, at - 6000, 1);
    cr_assert_eq(b.head, c);
    tpio__wbuf_clear(&b, &size);
    cr_assert_null(b.head);

    /* again, and now one byte more than the room, yet less than cap - len */
    cr_assert_eq(tpio__wbuf_append(&b, &size, &spare, src, 10000), 0);
    tpio__wbuf_consume(&b, &size, &spare, 6000);
    c = b.head;
    room = c->cap - c->off - c->len;
    total_room = c->cap - c->len;
    size_t n = room + (total_room - room) / 2;
    cr_assert(n > room && n < total_room);
    cr_assert_eq(tpio__wbuf_append(&b, &size, &spare, src + 10000, n), 0);
    cr_assert_neq(b.tail, c, "the piece was put in the partly sent chunk");
    cr_assert_eq(b.head, c);
    cr_assert_eq(c->next, b.tail);
    cr_assert_eq(c->off, 6000, "the partly sent chunk was moved");
    cr_assert_eq(c->len, 4000, "the partly sent chunk grew");
    wbuf_expect(&b, size, src, 6000, 4000 + n, 2);
    /* a small piece joins the new tail */
    size_t end = 10000 + n;
    cr_assert_eq(tpio__wbuf_append(&b, &size, &spare, src + end, 100), 0);
    end += 100;
    wbuf_expect(&b, size, src, 6000, end - 6000, 2);

    /* consumed in odd pieces, across the chunk boundary: always in order */
    size_t from = 6000;
    const size_t steps[] = {1, 3998, 2, 777, 5000};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        tpio__wbuf_consume(&b, &size, &spare, steps[i]);
        from += steps[i];
        wbuf_expect(&b, size, src, from, end - from, from < 10000 ? 2 : 1);
    }
    tpio__wbuf_consume(&b, &size, &spare, end - from);
    cr_assert_eq(size, 0);
    cr_assert_null(b.head);
    cr_assert_null(b.tail);
    tpio__wbuf_clear(&b, &size);
    free_pool(spare);
}

/* The loop's pool of drained chunks: reused before anything is allocated,
 * and bounded in bytes (2 MiB), however many connections drain at once. */
Test(behaviours, wbuf_pool_reuses_and_is_bounded, .timeout = 10)
{
    enum { N = 200 };
    static unsigned char src[100];
    struct tpio__wbuf b[N] = {{0}};
    size_t size[N] = {0};
    void *spare = NULL;
    for (int i = 0; i < N; i++)
        cr_assert_eq(tpio__wbuf_append(&b[i], &size[i], &spare, src, sizeof src), 0);
    struct tpio__chunk *first = b[0].head;
    for (int i = 0; i < N; i++)
        tpio__wbuf_consume(&b[i], &size[i], &spare, sizeof src);
    size_t nodes = 0, bytes = 0;
    for (struct tpio__chunk *c = spare; c; c = c->next) {
        nodes++;
        bytes += c->cap;
    }
    cr_assert_gt(nodes, 1);
    cr_assert_leq(bytes, (size_t)2 << 20);
    cr_assert_eq(((struct tpio__chunk *)spare)->len, bytes, "the head keeps the pool's bytes");
    /* a drained chunk comes back before the allocator is asked */
    struct tpio__chunk *head = spare;
    cr_assert_eq(tpio__wbuf_append(&b[0], &size[0], &spare, src, sizeof src), 0);
    cr_assert_eq(b[0].head, head);
    cr_assert_eq(((struct tpio__chunk *)spare)->len, bytes - head->cap);
    (void)first;
    tpio__wbuf_clear(&b[0], &size[0]);
    free_pool(spare);
}

/* The same through a transport: writes of mixed sizes while the buffer is
 * partly flushed, the peer reading a little at a time; every byte arrives
 * in order. */
Test(behaviours, wbuf_partly_flushed_writes_arrive_intact, .timeout = 60)
{
    th_pair_t *pr = th_unix_pair(&th_proto_ops, NULL, NULL, 0, false);
    th_shrink_bufs(pr);
    th_fill_until_buffered(pr);
    const size_t sizes[] = {7000, 9000, 12000, 3000, 15000, 500, 11000, 16000, 20000, 6000,
                            9500, 13000, 1, 16383, 16384, 16385};
    size_t off = 0;
    int end_err;
    for (int round = 0; round < 8; round++) {
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            /* the peer takes a little: the transport's head chunk is sent in
             * part, then the next write lands behind it */
            size_t want = 3000 + 1000 * i;
            if (want > pr->wtotal - off)
                want = pr->wtotal - off;
            off += th_peer_drain_pattern(pr, off, want, false, &end_err);
            cr_assert_eq(end_err, 1);
            tpio_loop_run_once(pr->loop, 0);
            th_write_pattern(pr, sizes[i]);
        }
    }
    off += th_peer_drain_pattern(pr, off, pr->wtotal - off, false, &end_err);
    cr_assert_eq(end_err, 1);
    cr_assert_eq(off, pr->wtotal, "got %zu of %zu bytes", off, pr->wtotal);
    cr_assert_eq(th_wbuf_size(pr->t), 0);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
}

/* ------------------------------------------------------------------------- */
/* 4. accepts per readiness event are bounded by the backlog                 */
/* 5. EMFILE on accept twice                                                 */
/* 6. wait_closed on an open server                                          */
/* ------------------------------------------------------------------------- */

static struct {
    tpio_loop_t *loop;
    bool open;
    size_t nev, per[8];
    size_t calls, lost;
    double at[8];         /* loop time of each factory call */
} ac;

static void acc_mark(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    (void)arg;
    ac.open = false;
}

static tpio_protocol_t *acc_factory(void *arg)
{
    (void)arg;
    if (!ac.open) {
        cr_assert_eq(tpio_loop_call_soon(ac.loop, acc_mark, NULL, NULL), 0);
        ac.open = true;
        ac.nev++;
    }
    if (ac.nev <= 8)
        ac.per[ac.nev - 1]++;
    if (ac.calls < 8)
        ac.at[ac.calls] = th_time(ac.loop);
    ac.calls++;
    th_proto_t *p = th_proto_new(&th_proto_ops);
    p->free_on_lost = true;
    p->lost_counter = &ac.lost;
    return &p->base;
}

static tpio_server_t *acc_server(tpio_loop_t *loop, int backlog, uint16_t *port)
{
    ac.loop = loop;
    tpio_server_t *s = NULL;
    tpio_server_opts_t o = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1",
                                     .backlog = backlog);
    cr_assert_eq(tpio_loop_create_server(loop, acc_factory, NULL, &o, &s), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, 0, &ss, &sl), 0);
    *port = addr_port(&ss);
    return s;
}

static void close_server_and_loop(tpio_loop_t *loop, tpio_server_t *s)
{
    bool closed = false;
    cr_assert_eq(tpio_server_close(s), 0);
    cr_assert_eq(tpio_server_wait_closed(s, th_done_flag, &closed, NULL), 0);
    cr_assert(th_run_until(loop, &closed, TMO), "wait_closed never fired");
    th_run_iters(loop, 3);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

static int client_sock(void)
{
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(c, 0);
    return c;
}

static void connect_to(int c, uint16_t port)
{
    struct sockaddr_storage ss;
    socklen_t len = lo_addr(AF_INET, port, &ss);
    cr_assert_eq(connect(c, (struct sockaddr *)&ss, len), 0, "connect: %s", strerror(errno));
}

/* The accept queue length of a listening TCP socket (tcpi_unacked). */
static unsigned accept_queue(int l)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    cr_assert_eq(getsockopt(l, IPPROTO_TCP, TCP_INFO, &ti, &len), 0);
    return ti.tcpi_unacked;
}

Test(behaviours, accepts_per_event_are_bounded_by_the_backlog, .timeout = 20)
{
    enum { B = 3 };
    tpio_loop_t *loop = th_new_loop();
    uint16_t port;
    tpio_server_t *s = acc_server(loop, B, &port);
    int lfd = th_server_socket(s, 0);
    /* B + 1 clients queued before the loop runs (backlog B holds B + 1) */
    int cl[B + 1];
    for (int i = 0; i < B + 1; i++) {
        cl[i] = client_sock();
        connect_to(cl[i], port);
    }
    double end = th_now_s() + TMO;
    while (accept_queue(lfd) < B + 1 && th_now_s() < end)
        sched_yield();
    cr_assert_eq(accept_queue(lfd), B + 1, "the kernel queued %u connections",
                 accept_queue(lfd));
    cr_assert(th_run_until_count(loop, &ac.calls, B + 1, TMO));
    if (th_ring_ops(loop)) {
        /* io_uring: the kernel's multishot accept takes the whole queue
         * (it bounds its own retries), and each connection is its own
         * completion among the others of the batch: one iteration. */
        cr_assert_eq(ac.nev, 1, "%zu events", ac.nev);
        cr_assert_eq(ac.per[0], B + 1, "the batch accepted %zu", ac.per[0]);
    } else {
        cr_assert_eq(ac.per[0], B, "first event accepted %zu", ac.per[0]);
        cr_assert_eq(ac.nev, 2, "%zu events", ac.nev);
        cr_assert_eq(ac.per[1], 1);
    }
    cr_assert_eq(th_conn_count(s), B + 1);
    for (int i = 0; i < B + 1; i++)
        close(cl[i]);
    cr_assert(th_run_until_count(loop, &ac.lost, B + 1, TMO));
    close_server_and_loop(loop, s);
}

static int highest_open_fd(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int self = dirfd(d), hi = -1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            int fd = atoi(e->d_name);
            if (fd != self && fd > hi)
                hi = fd;
        }
    closedir(d);
    return hi;
}

static struct {
    tpio_loop_t *loop;
    size_t reports;
    int err[8];
    char msg[8][64];
    double at[8];
    bool server_ok[8];
    tpio_server_t *server;
} em;

static void em_handler(tpio_loop_t *loop, const tpio_error_context_t *ctx, void *arg)
{
    (void)arg;
    if (em.reports < 8) {
        em.err[em.reports] = ctx->error;
        snprintf(em.msg[em.reports], sizeof em.msg[0], "%s", ctx->message);
        em.at[em.reports] = th_time(loop);
        em.server_ok[em.reports] = ctx->server == em.server;
    }
    em.reports++;
}

static int fillers[4096];
static int nfill;

/* Take every free descriptor below the limit. */
static void fill_fds(void)
{
    for (;;) {
        int f = dup(0);
        if (f < 0) {
            cr_assert_eq(errno, EMFILE);
            return;
        }
        cr_assert_lt(nfill, 4096);
        fillers[nfill++] = f;
    }
}

static void free_fds(int n)
{
    for (int i = 0; i < n && nfill > 0; i++)
        close(fillers[--nfill]);
}

Test(behaviours, accept_emfile_twice_resumes_after_each_back_off, .timeout = 30)
{
    tpio_loop_t *loop = th_new_loop();
    em.loop = loop;
    tpio_loop_set_error_handler(loop, em_handler, NULL);
    uint16_t port;
    tpio_server_t *s = acc_server(loop, 0, &port);
    em.server = s;
    /* the clients' sockets exist before the descriptors run out */
    int c1 = client_sock(), c2 = client_sock();
    struct rlimit saved, low;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &saved), 0);
    low = saved;
    /* a few slots above the highest descriptor, taken by fillers that the
     * test gives back one by one */
    low.rlim_cur = (rlim_t)highest_open_fd() + 1 + 8;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
    fill_fds();
    cr_assert_geq(nfill, 8);

    /* first time */
    connect_to(c1, port);
    cr_assert(th_run_until_count(loop, &em.reports, 1, TMO), "EMFILE was not reported");
    cr_assert_eq(ac.calls, 0);
    free_fds(2); /* one for the connection, one to spare: the accept after it
                    finds the queue empty (EAGAIN), not the table full */
    cr_assert(th_run_until_count(loop, &ac.calls, 1, TMO), "accepting did not resume");
    cr_assert_geq(ac.at[0] - em.at[0], TPIO__ACCEPT_RETRY_DELAY - 0.01,
                  "accepted %.3f s after the report", ac.at[0] - em.at[0]);
    cr_assert_eq(em.reports, 1);

    /* second time */
    fill_fds();
    connect_to(c2, port);
    cr_assert(th_run_until_count(loop, &em.reports, 2, TMO),
              "the second EMFILE was not reported");
    cr_assert_eq(ac.calls, 1);
    free_fds(2);
    cr_assert(th_run_until_count(loop, &ac.calls, 2, 3 * TPIO__ACCEPT_RETRY_DELAY + 2),
              "accepting did not resume after the second back-off");
    cr_assert_geq(ac.at[1] - em.at[1], TPIO__ACCEPT_RETRY_DELAY - 0.01,
                  "accepted %.3f s after the report", ac.at[1] - em.at[1]);
    th_spin_for(loop, 0.05);
    free_fds(nfill);
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &saved), 0);

    cr_assert_eq(em.reports, 2, "%zu reports", em.reports);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(em.err[i], -EMFILE, "report %d: %s", i, tpio_err_name(em.err[i]));
        cr_assert_str_eq(em.msg[i], "accept() out of system resource");
        cr_assert(em.server_ok[i], "report %d: context.server is not the server", i);
    }
    close(c1);
    close(c2);
    cr_assert(th_run_until_count(loop, &ac.lost, 2, TMO));
    close_server_and_loop(loop, s);
}

Test(behaviours, wait_closed_on_an_open_server_waits_for_close, .timeout = 20)
{
    tpio_loop_t *loop = th_new_loop();
    uint16_t port;
    tpio_server_t *s = acc_server(loop, 0, &port);
    bool fired = false;
    /* registered while a connection is alive */
    int c = client_sock();
    connect_to(c, port);
    cr_assert(th_run_until_count(loop, &ac.calls, 1, TMO));
    cr_assert_eq(tpio_server_wait_closed(s, th_done_flag, &fired, NULL), 0);
    close(c);
    cr_assert(th_run_until_count(loop, &ac.lost, 1, TMO));
    cr_assert_eq(th_conn_count(s), 0);
    th_spin_for(loop, 0.2);
    cr_assert_not(fired, "wait_closed fired while the server is open");
    cr_assert(th_is_serving(s));
    /* another connection comes and goes: still open, still waiting */
    c = client_sock();
    connect_to(c, port);
    cr_assert(th_run_until_count(loop, &ac.calls, 2, TMO));
    close(c);
    cr_assert(th_run_until_count(loop, &ac.lost, 2, TMO));
    th_spin_for(loop, 0.1);
    cr_assert_not(fired, "wait_closed fired while the server is open");
    /* closed with no connection: fires, from the loop */
    cr_assert_eq(tpio_server_close(s), 0);
    cr_assert_not(fired, "wait_closed ran inside tpio_server_close");
    cr_assert(th_run_until(loop, &fired, TMO), "wait_closed did not fire after close");
    th_run_iters(loop, 3);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* ------------------------------------------------------------------------- */
/* 7. every address fails: the first attempt's error                         */
/* ------------------------------------------------------------------------- */

static socklen_t unix_addr(const char *path, struct sockaddr_storage *ss)
{
    struct sockaddr_un *u = (struct sockaddr_un *)ss;
    memset(ss, 0, sizeof *ss);
    u->sun_family = AF_UNIX;
    cr_assert_lt(strlen(path), sizeof u->sun_path);
    strcpy(u->sun_path, path);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
}

typedef struct failing {
    struct sockaddr_storage ss;
    socklen_t len;
    int err;            /* the error connecting to it gives */
    const char *what;
} failing_t;

static void expect_first_error(const failing_t *const *order, size_t n, double delay)
{
    struct addrinfo ai[4];
    cr_assert_leq(n, 4);
    for (size_t i = 0; i < n; i++)
        ai[i] = (struct addrinfo){.ai_family = order[i]->ss.ss_family,
                                  .ai_socktype = SOCK_STREAM,
                                  .ai_addr = (struct sockaddr *)&order[i]->ss,
                                  .ai_addrlen = order[i]->len,
                                  .ai_next = i + 1 < n ? &ai[i + 1] : NULL};
    th_pair_t *pr = th_pair_new(&th_proto_ops);
    cr_assert_eq(tpio__connect_addrs(pr->loop, &tpio__stream_ctor, th_pair_count_factory, pr, ai, delay,
                                     th_pair_on_conn, pr, NULL), 0);
    cr_assert(th_run_until(pr->loop, &pr->done, TMO), "no completion");
    cr_assert_eq(pr->err, order[0]->err, "first %s (delay %g): got %s, expected %s",
                 order[0]->what, delay, tpio_err_name(pr->err), tpio_err_name(order[0]->err));
    cr_assert_eq(pr->cb_calls, 1);
    cr_assert_eq(pr->factory_calls, 0);
    cr_assert_null(pr->t);
    th_run_iters(pr->loop, 3);
    cr_assert_eq(pr->cb_calls, 1);
    cr_assert_eq(tpio_loop_close(pr->loop), 0);
    free(pr);
}

Test(behaviours, all_addresses_failing_report_the_first_attempts_error, .timeout = 30)
{
    char dir[] = "/tmp/tpio-behaviours-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char missing[128], file[128], notdir[160];
    snprintf(missing, sizeof missing, "%s/missing.sock", dir);
    snprintf(file, sizeof file, "%s/file", dir);
    snprintf(notdir, sizeof notdir, "%s/x.sock", file);
    int f = open(file, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    cr_assert_geq(f, 0);
    close(f);

    failing_t refused = {.err = -ECONNREFUSED, .what = "TCP to a closed port"};
    refused.len = lo_addr(AF_INET, closed_port(AF_INET), &refused.ss);
    failing_t noent = {.err = -ENOENT, .what = "Unix path that does not exist"};
    noent.len = unix_addr(missing, &noent.ss);
    failing_t nodir = {.err = -ENOTDIR, .what = "Unix path through a file"};
    nodir.len = unix_addr(notdir, &nodir.ss);

    const failing_t *a = &refused, *b = &noent, *c = &nodir;
    const failing_t *orders[][3] = {{a, b, c}, {a, c, b}, {b, a, c},
                                    {b, c, a}, {c, a, b}, {c, b, a}};
    const double delays[] = {0, 0.05};
    for (size_t d = 0; d < 2; d++) {
        for (size_t i = 0; i < 6; i++)
            expect_first_error(orders[i], 3, delays[d]);
        /* two addresses, both orders */
        const failing_t *ab[] = {a, b}, *ba[] = {b, a};
        expect_first_error(ab, 2, delays[d]);
        expect_first_error(ba, 2, delays[d]);
    }
    unlink(file);
    rmdir(dir);
}

/* ------------------------------------------------------------------------- */
/* 8. interleaving, one address at a time, losers of a race                  */
/* ------------------------------------------------------------------------- */

/*
 * A resolver that knows one name: getaddrinfo is replaced in this program
 * (the library is linked statically, so its calls come here); every other
 * name goes to the real one. FAKE_HOST gives the list in `fake`, in order,
 * as a resolver would, and is not numeric. freeaddrinfo recognises the lists
 * it handed out.
 */
#define FAKE_HOST "mixed-families.tpio-test.invalid"
enum { FAKE_MAX = 8 };

static struct {
    size_t n;
    struct sockaddr_storage addr[FAKE_MAX];
    socklen_t len[FAKE_MAX];
    size_t calls;
} fake;

struct fake_list {
    struct addrinfo ai[FAKE_MAX];
    struct sockaddr_storage ss[FAKE_MAX];
};

static pthread_mutex_t fake_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fake_list *fake_live[16];

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    if (node && strcmp(node, FAKE_HOST) == 0) {
        if (hints && (hints->ai_flags & AI_NUMERICHOST))
            return EAI_NONAME;
        struct fake_list *l = calloc(1, sizeof *l);
        if (!l)
            return EAI_MEMORY;
        for (size_t i = 0; i < fake.n; i++) {
            l->ss[i] = fake.addr[i];
            l->ai[i] = (struct addrinfo){.ai_family = fake.addr[i].ss_family,
                                         .ai_socktype = SOCK_STREAM,
                                         .ai_protocol = IPPROTO_TCP,
                                         .ai_addrlen = fake.len[i],
                                         .ai_addr = (struct sockaddr *)&l->ss[i],
                                         .ai_next = i + 1 < fake.n ? &l->ai[i + 1] : NULL};
        }
        pthread_mutex_lock(&fake_lock);
        fake.calls++;
        for (size_t i = 0; i < 16; i++)
            if (!fake_live[i]) {
                fake_live[i] = l;
                break;
            }
        pthread_mutex_unlock(&fake_lock);
        *res = l->ai;
        return 0;
    }
    int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    *(void **)&real = dlsym(RTLD_NEXT, "getaddrinfo");
    return real(node, service, hints, res);
}

void freeaddrinfo(struct addrinfo *res)
{
    pthread_mutex_lock(&fake_lock);
    for (size_t i = 0; i < 16; i++)
        if (fake_live[i] && fake_live[i]->ai == res) {
            free(fake_live[i]);
            fake_live[i] = NULL;
            pthread_mutex_unlock(&fake_lock);
            return;
        }
    pthread_mutex_unlock(&fake_lock);
    void (*real)(struct addrinfo *);
    *(void **)&real = dlsym(RTLD_NEXT, "freeaddrinfo");
    real(res);
}

/*
 * The order in which create_connection tries the resolver's addresses
 * (families fams[0..n)), observed one position at a time: in round k the
 * addresses expected first, second... k-th are refused (closed ports) and
 * every other one listens, so the connection must be made to the (k+1)-th
 * expected one, and no other listener may see a connection.
 */
static void check_order(const int *fams, size_t n, const size_t *expect, double delay,
                        int interleave)
{
    cr_assert_leq(n, FAKE_MAX);
    for (size_t k = 0; k < n; k++) {
        tpio_loop_t *loop = th_new_loop();
        int lfd[FAKE_MAX];
        uint16_t port[FAKE_MAX];
        for (size_t p = 0; p < n; p++)
            lfd[p] = listen_lo(fams[p], 8, &port[p]);
        for (size_t j = 0; j < k; j++) { /* refused */
            close(lfd[expect[j]]);
            lfd[expect[j]] = -1;
        }
        fake.n = n;
        for (size_t p = 0; p < n; p++)
            fake.len[p] = lo_addr(fams[p], port[p], &fake.addr[p]);
        size_t calls_before = fake.calls;
        bool lost = false;
        th_proto_t tmpl = {.base.ops = &th_proto_ops, .free_on_lost = true, .lost_flag = &lost};
        th_conn_t c = {0};
        tpio_connect_opts_t o = TPIO_OPTS(tpio_connect_opts_t, .host = FAKE_HOST, .port = 9,
                                          .happy_eyeballs_delay = delay,
                                          .interleave = interleave);
        cr_assert_eq(tpio_loop_create_connection(loop, th_factory, &tmpl, &o, th_on_conn, &c, NULL),
                     0);
        cr_assert(th_run_until(loop, &c.done, TMO), "round %zu: no completion", k);
        cr_assert_eq(fake.calls, calls_before + 1, "the name was not resolved through the fake");
        cr_assert_eq(c.err, 0, "round %zu (interleave %d, delay %g): %s", k, interleave, delay,
                     tpio_err_name(c.err));
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        cr_assert_eq(tpio_transport_get_peername(c.t, &ss, &sl), 0);
        size_t won = n;
        for (size_t p = 0; p < n; p++)
            if (ss.ss_family == fams[p] && addr_port(&ss) == port[p])
                won = p;
        cr_assert_eq(won, expect[k],
                     "interleave %d, delay %g: attempt %zu went to resolver address %zu, "
                     "expected %zu", interleave, delay, k + 1, won, expect[k]);
        int peer = accept4(lfd[won], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        cr_assert_geq(peer, 0);
        for (size_t p = 0; p < n; p++)
            if (lfd[p] >= 0 && p != won)
                cr_assert_not(pending_conn(lfd[p], 0),
                              "round %zu: address %zu was tried too", k, p);
        cr_assert_eq(tpio_transport_close(c.t), 0);
        cr_assert(th_run_until(loop, &lost, TMO));
        close(peer);
        for (size_t p = 0; p < n; p++)
            if (lfd[p] >= 0)
                close(lfd[p]);
        th_run_iters(loop, 2);
        cr_assert_eq(tpio_loop_close(loop), 0);
    }
}

Test(behaviours, interleave_orders_three_and_more_mixed_family_addresses, .timeout = 60)
{
    const int V4 = AF_INET, V6 = AF_INET6;
    /* resolver order: three IPv6 addresses, then two IPv4 */
    const int l1[] = {V6, V6, V6, V4, V4};
    const size_t as_resolved[] = {0, 1, 2, 3, 4};
    const size_t il1[] = {0, 3, 1, 4, 2}; /* v6 v4 v6 v4 v6 */
    const size_t il2[] = {0, 1, 3, 2, 4}; /* v6, then v6 v4 v6 v4 */
    check_order(l1, 5, as_resolved, 0, 0); /* no delay: no reordering by default */
    check_order(l1, 5, il1, 0, 1);
    check_order(l1, 5, il2, 0, 2);
    check_order(l1, 5, il1, 0.5, 0); /* happy eyeballs: interleave 1 by default */
    /* families mixed already: v4 v4 v6 v4 v6 v4 */
    const int l2[] = {V4, V4, V6, V4, V6, V4};
    const size_t l2_il1[] = {0, 2, 1, 4, 3, 5};
    const size_t l2_il3[] = {0, 1, 3, 2, 5, 4};
    check_order(l2, 6, l2_il1, 0, 1);
    check_order(l2, 6, l2_il3, 0, 3);
}

static void connect_two(th_pair_t *pr, uint16_t first, uint16_t second, double delay,
                        struct sockaddr_storage ss[2])
{
    struct addrinfo ai[2];
    socklen_t l0 = lo_addr(AF_INET, first, &ss[0]);
    socklen_t l1 = lo_addr(AF_INET, second, &ss[1]);
    ai[0] = (struct addrinfo){.ai_family = AF_INET, .ai_socktype = SOCK_STREAM,
                              .ai_addr = (struct sockaddr *)&ss[0], .ai_addrlen = l0,
                              .ai_next = &ai[1]};
    ai[1] = (struct addrinfo){.ai_family = AF_INET, .ai_socktype = SOCK_STREAM,
                              .ai_addr = (struct sockaddr *)&ss[1], .ai_addrlen = l1};
    cr_assert_eq(tpio__connect_addrs(pr->loop, &tpio__stream_ctor, th_pair_count_factory, pr, ai, delay,
                                     th_pair_on_conn, pr, NULL), 0);
}

static uint16_t peer_port_of(tpio_transport_t *t)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_peername(t, &ss, &sl), 0);
    return addr_port(&ss);
}

/* Happy eyeballs delay 0: the second address waits for the first attempt
 * to end, however long it hangs. */
Test(behaviours, delay_zero_tries_one_address_at_a_time, .timeout = 30)
{
    uint16_t silent, good;
    int filler;
    int ls = silent_listener(&silent, &filler);
    int lg = listen_lo(AF_INET, 8, &good);
    th_pair_t *pr = th_pair_new(&th_proto_ops);
    struct sockaddr_storage ss[2];
    connect_two(pr, silent, good, 0, ss);
    cr_assert(run_until_syn_sent(pr->loop, silent, TMO), "the first attempt never started");
    th_spin_for(pr->loop, 0.3);
    cr_assert_not(pending_conn(lg, 0),
                  "the second address was tried while the first attempt was pending");
    cr_assert_not(pr->done, "completion while the first attempt is pending");
    cr_assert(syn_sent_to(silent), "the first attempt is no longer pending");
    /* the first address now refuses (at its SYN's retransmission): only
     * then is the second one tried */
    close(ls);
    close(filler);
    cr_assert(th_run_until(pr->loop, &pr->done, 10), "no completion");
    cr_assert_eq(pr->err, 0, "%s", tpio_err_name(pr->err));
    cr_assert_eq(peer_port_of(pr->t), good);
    cr_assert_eq(pr->factory_calls, 1);
    cr_assert_eq(pr->cb_calls, 1);
    int peer = accept4(lg, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    cr_assert_geq(peer, 0);
    cr_assert_not(pending_conn(lg, 0), "a second connection reached the second address");
    pr->peer = peer;
    close(lg);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
}

/* Both attempts of a race connect in the same poll: one wins, the loser's
 * socket is closed (its listener reads EOF) and never reaches the user. */
Test(behaviours, race_loser_is_closed_and_never_reaches_the_user, .timeout = 30)
{
    uint16_t pa, pb;
    int fa, fb;
    int la = silent_listener(&pa, &fa), lb = silent_listener(&pb, &fb);
    th_pair_t *pr = th_pair_new(&th_proto_ops);
    struct sockaddr_storage ss[2];
    connect_two(pr, pa, pb, 0.05, ss);
    cr_assert(run_until_syn_sent(pr->loop, pa, TMO), "the first attempt never started");
    cr_assert(run_until_syn_sent(pr->loop, pb, TMO), "the second attempt never started");
    cr_assert_not(pr->done);
    /* The loop stands still from here. Both listeners get room: the two
     * SYNs' retransmissions connect both attempts in the kernel. */
    int fpa = accept4(la, NULL, NULL, SOCK_CLOEXEC), fpb = accept4(lb, NULL, NULL, SOCK_CLOEXEC);
    cr_assert_geq(fpa, 0);
    cr_assert_geq(fpb, 0);
    cr_assert(pending_conn(la, 10000), "the first attempt never connected");
    cr_assert(pending_conn(lb, 10000), "the second attempt never connected");
    int pa_peer = accept4(la, NULL, NULL, SOCK_CLOEXEC);
    int pb_peer = accept4(lb, NULL, NULL, SOCK_CLOEXEC);
    cr_assert_geq(pa_peer, 0);
    cr_assert_geq(pb_peer, 0);

    cr_assert(th_run_until(pr->loop, &pr->done, TMO), "no completion");
    cr_assert_eq(pr->err, 0, "%s", tpio_err_name(pr->err));
    uint16_t won = peer_port_of(pr->t);
    cr_assert(won == pa || won == pb);
    int winner = won == pa ? pa_peer : pb_peer, loser = won == pa ? pb_peer : pa_peer;
    /* the loser was closed: EOF */
    struct pollfd p = {.fd = loser, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 5000), 1, "the losing attempt was not closed");
    char ch;
    cr_assert_eq(recv(loser, &ch, 1, MSG_DONTWAIT), 0, "the loser's peer did not read EOF");
    /* the winner works */
    cr_assert_eq(tpio_transport_write(pr->t, "w", 1), 0);
    if (th_ring_ops(pr->loop)) /* io_uring sends with the loop's next submission */
        tpio_loop_run_once(pr->loop, 0);
    p = (struct pollfd){.fd = winner, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 5000), 1);
    cr_assert_eq(recv(winner, &ch, 1, MSG_DONTWAIT), 1);
    cr_assert_eq(ch, 'w');
    /* and the user heard of one connection only */
    th_spin_for(pr->loop, 0.1);
    cr_assert_eq(pr->factory_calls, 1);
    cr_assert_eq(pr->cb_calls, 1);
    cr_assert_str_eq(pr->p->events, "made");
    close(loser);
    pr->peer = winner;
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
    close(fpa);
    close(fpb);
    close(fa);
    close(fb);
    close(la);
    close(lb);
}

/* ------------------------------------------------------------------------- */
/* 9. datagrams queue in order                                               */
/* ------------------------------------------------------------------------- */

#define DG_LEN 1000

static void dg_fill(unsigned char *b, uint32_t seq)
{
    memcpy(b, &seq, 4);
    for (size_t j = 4; j < DG_LEN; j++)
        b[j] = (unsigned char)(seq * 131u + j * 7u);
}

/* Read what is waiting on fd; every datagram must be the next in sequence. */
static void dg_drain(int fd, uint32_t *next)
{
    unsigned char buf[4096];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) {
            cr_assert_eq(errno, EAGAIN);
            return;
        }
        cr_assert_eq(n, DG_LEN);
        uint32_t seq;
        memcpy(&seq, buf, 4);
        cr_assert_eq(seq, *next, "datagram %u arrived where %u was due", seq, *next);
        unsigned char want[DG_LEN];
        dg_fill(want, seq);
        cr_assert_eq(memcmp(buf, want, DG_LEN), 0, "datagram %u corrupted", seq);
        (*next)++;
    }
}

Test(behaviours, datagram_sent_behind_a_queue_never_overtakes_it, .timeout = 30)
{
    /* A connected Unix datagram pair: its sender gets EAGAIN once SO_SNDBUF
     * is in flight (loopback UDP never does). */
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
    int sb = 16384;
    cr_assert_eq(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb), 0);
    th_pair_t *pr = th_pair_new(&th_proto_ops);
    pr->peer = sv[1];
    tpio_datagram_opts_t o = TPIO_OPTS(tpio_datagram_opts_t, .use_sock = TPIO_ON, .sock = sv[0]);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(pr->loop, th_pair_count_factory, pr, &o,
                                                    th_pair_on_conn, pr, NULL), 0);
    cr_assert(th_run_until(pr->loop, &pr->done, TMO));
    cr_assert_eq(pr->err, 0);
    /* no pause_writing noise */
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, 1 << 20, 0), 0);
    unsigned char b[DG_LEN];
    uint32_t seq = 0, next = 0;
    /* until the kernel pushes back, then three more behind it */
    while (th_wbuf_size(pr->t) == 0) {
        cr_assert_lt(seq, 10000, "the kernel never pushed back");
        dg_fill(b, seq++);
        cr_assert_eq(tpio_datagram_sendto(pr->t, b, DG_LEN, NULL, 0), 0);
    }
    for (int i = 0; i < 3; i++) {
        dg_fill(b, seq++);
        cr_assert_eq(tpio_datagram_sendto(pr->t, b, DG_LEN, NULL, 0), 0);
    }
    size_t queued = th_wbuf_size(pr->t);
    cr_assert_eq(queued, 4 * (DG_LEN + 8));
    /* The peer empties the kernel's queue; the loop has not run, so the
     * transport's queue is still there while the socket has room. */
    dg_drain(sv[1], &next);
    cr_assert_eq(next, seq - 4);
    cr_assert_eq(th_wbuf_size(pr->t), queued);
    for (int i = 0; i < 5; i++) {
        dg_fill(b, seq++);
        cr_assert_eq(tpio_datagram_sendto(pr->t, b, DG_LEN, NULL, 0), 0);
        cr_assert_eq(th_wbuf_size(pr->t), queued + (size_t)(i + 1) * (DG_LEN + 8),
                     "a datagram sent behind the queue was not queued");
    }
    /* nothing overtook the queue */
    struct pollfd p = {.fd = sv[1], .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 0), 0, "a datagram reached the peer before the queue");
    double end = th_time(pr->loop) + TMO;
    while (next < seq && th_time(pr->loop) < end) {
        tpio_loop_run_once(pr->loop, 0.01);
        dg_drain(sv[1], &next);
    }
    cr_assert_eq(next, seq, "%u of %u datagrams", next, seq);
    cr_assert_eq(th_wbuf_size(pr->t), 0);
    cr_assert_str_eq(pr->p->events, "made");
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
}

/* ------------------------------------------------------------------------- */
/* 10. cancelling twice                                                      */
/* ------------------------------------------------------------------------- */

static void count_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    (*(int *)arg)++;
}

Test(behaviours, cancel_twice_gives_enoent, .timeout = 10)
{
    tpio_loop_t *loop = th_new_loop();
    int a = 0, b = 0, c = 0, d1 = 0, d2 = 0;
    tpio_handle_t ha = 0, hb = 0, hc = 0, hd1 = 0, hd2 = 0;
    /* call_soon */
    cr_assert_eq(tpio_loop_call_soon(loop, count_cb, &a, &ha), 0);
    cr_assert_eq(tpio_loop_cancel(loop, ha), 0);
    cr_assert_eq(tpio_loop_cancel(loop, ha), -ENOENT, "second cancel of a call_soon handle");
    /* call_later */
    cr_assert_eq(tpio_loop_call_later(loop, 10, count_cb, &b, &hb), 0);
    cr_assert_eq(tpio_loop_cancel(loop, hb), 0);
    cr_assert_eq(tpio_loop_cancel(loop, hb), -ENOENT, "second cancel of a call_later handle");
    /* a new callback may take the cancelled timer's place: the old handle
     * must not reach it */
    cr_assert_eq(tpio_loop_call_soon(loop, count_cb, &c, &hc), 0);
    cr_assert_neq(hc, hb, "the new callback got the cancelled timer's handle");
    cr_assert_eq(tpio_loop_cancel(loop, hb), -ENOENT, "a stale call_later handle cancelled");
    cr_assert_eq(tpio_loop_cancel(loop, ha), -ENOENT);
    th_run_iters(loop, 2);
    cr_assert_eq(a, 0, "a cancelled call_soon ran");
    cr_assert_eq(b, 0);
    cr_assert_eq(c, 1, "a stale handle cancelled another callback");
    /* once the cancelled call_soon's place is free: the same */
    cr_assert_eq(tpio_loop_call_soon(loop, count_cb, &d1, &hd1), 0);
    cr_assert_eq(tpio_loop_call_soon(loop, count_cb, &d2, &hd2), 0);
    cr_assert(hd1 != ha && hd2 != ha && hd1 != hb && hd2 != hb);
    cr_assert_eq(tpio_loop_cancel(loop, ha), -ENOENT, "a stale call_soon handle cancelled");
    cr_assert_eq(tpio_loop_cancel(loop, hb), -ENOENT);
    cr_assert_eq(tpio_loop_cancel(loop, hc), -ENOENT, "cancelled after it ran");
    th_run_iters(loop, 2);
    cr_assert_eq(d1, 1);
    cr_assert_eq(d2, 1);
    cr_assert_eq(a, 0);
    cr_assert_eq(tpio_loop_close(loop), 0);
}
