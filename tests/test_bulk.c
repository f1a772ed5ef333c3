/*
 * Bulk transfer: a 64 MiB pseudo-random payload goes from a tpio client
 * through a tpio echo server and back. The client writes randomly sized
 * pieces (1 B .. 256 KiB) with tpio_transport_write and tpio_transport_writelines, stops while
 * paused (pause_writing/resume_writing), and checks every byte that comes
 * back plus an FNV-1a checksum and the total length. The server echoes with
 * flow control (pause_reading while its writes are paused), once as a
 * Protocol and once as a BufferedProtocol with small random buffers.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define TOTAL ((size_t)64 << 20)
#define MAX_WRITE ((size_t)256 << 10)

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a(uint64_t h, const unsigned char *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= d[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ull

/* ---- the echo server's protocol ----------------------------------------- */

typedef struct echo {
    tpio_protocol_t base;
    tpio_transport_t *t;
    unsigned char buf[16384];
    size_t cur;               /* size handed out by the last get_buffer */
    uint64_t rng;
    size_t bytes;
    size_t pauses, resumes;
    struct srv *srv;
} echo_t;

typedef struct srv {
    size_t conns, lost;
    int lost_err;
    size_t bytes, pauses, resumes, getbufs;
    bool closed;
    bool bad_sequence;
} srv_t;

static echo_t *E(tpio_protocol_t *p) { return tpio_container_of(p, echo_t, base); }

static void echo_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    E(p)->t = t;
}

static void echo_lost(tpio_protocol_t *p, int err)
{
    echo_t *e = E(p);
    e->srv->lost++;
    e->srv->lost_err = err;
    e->srv->bytes = e->bytes;
    e->srv->pauses = e->pauses;
    e->srv->resumes = e->resumes;
    free(e);
}

static void echo_pause(tpio_protocol_t *p)
{
    echo_t *e = E(p);
    if (e->pauses != e->resumes)
        e->srv->bad_sequence = true;
    e->pauses++;
    tpio_transport_pause_reading(e->t);
}

static void echo_resume(tpio_protocol_t *p)
{
    echo_t *e = E(p);
    e->resumes++;
    if (e->pauses != e->resumes)
        e->srv->bad_sequence = true;
    tpio_transport_resume_reading(e->t);
}

static void echo_data(tpio_protocol_t *p, const void *d, size_t n)
{
    echo_t *e = E(p);
    e->bytes += n;
    if (tpio_transport_write(e->t, d, n) != 0)
        e->srv->bad_sequence = true;
}

static void *echo_getbuf(tpio_protocol_t *p, ssize_t hint, size_t *len)
{
    echo_t *e = E(p);
    if (hint != -1)
        e->srv->bad_sequence = true;
    e->srv->getbufs++;
    e->cur = 1 + splitmix(&e->rng) % sizeof e->buf;
    *len = e->cur;
    return e->buf;
}

static void echo_updated(tpio_protocol_t *p, size_t n)
{
    echo_t *e = E(p);
    if (n == 0 || n > e->cur)
        e->srv->bad_sequence = true;
    echo_data(p, e->buf, n);
}

static const tpio_protocol_ops_t echo_ops = {
    .connection_made = echo_made, .connection_lost = echo_lost,
    .pause_writing = echo_pause, .resume_writing = echo_resume,
    .data_received = echo_data,
};

static const tpio_protocol_ops_t echo_buffered_ops = {
    .connection_made = echo_made, .connection_lost = echo_lost,
    .pause_writing = echo_pause, .resume_writing = echo_resume,
    .get_buffer = echo_getbuf, .buffer_updated = echo_updated,
};

typedef struct srv_factory_arg {
    srv_t *srv;
    const tpio_protocol_ops_t *ops;
} srv_factory_arg_t;

static tpio_protocol_t *echo_factory(void *arg)
{
    srv_factory_arg_t *a = arg;
    echo_t *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->base.ops = a->ops;
    e->srv = a->srv;
    e->rng = 0x5eed0000 + a->srv->conns;
    a->srv->conns++;
    return &e->base;
}

/* ---- the client ---------------------------------------------------------- */

typedef struct client {
    tpio_protocol_t base;
    tpio_transport_t *t;
    const unsigned char *payload;
    size_t sent, received;
    uint64_t rx_hash;
    size_t mismatch_at;       /* first differing offset, or SIZE_MAX */
    bool paused;
    size_t pauses, resumes, writes, writelines;
    bool eof_sent, eof, made, lost;
    int lost_err;
    bool bad_sequence;
    uint64_t rng;
    tpio_buf_t iov[2048];
} client_t;

static client_t *C(tpio_protocol_t *p) { return tpio_container_of(p, client_t, base); }

/* A random write size: log-uniform up to 256 KiB. */
static size_t rand_size(client_t *c)
{
    unsigned bits = (unsigned)(splitmix(&c->rng) % 19); /* 0..18 */
    size_t base = (size_t)1 << bits;
    size_t n = base + splitmix(&c->rng) % base;
    if (n > MAX_WRITE)
        n = MAX_WRITE;
    return n;
}

static void pump(client_t *c)
{
    while (!c->paused && c->sent < TOTAL && !c->lost) {
        size_t n = rand_size(c);
        if (n > TOTAL - c->sent)
            n = TOTAL - c->sent;
        const unsigned char *src = c->payload + c->sent;
        uint64_t how = splitmix(&c->rng) % 4;
        int r;
        if (how == 0) {
            r = tpio_transport_write(c->t, src, n);
            c->writes++;
        } else {
            /* split into pieces; sometimes more than IOV_MAX of them */
            size_t maxpieces = how == 3 ? 2048 : 16;
            size_t pieces = 1 + splitmix(&c->rng) % maxpieces;
            if (pieces > n)
                pieces = n;
            size_t off = 0;
            for (size_t i = 0; i < pieces; i++) {
                size_t len = i + 1 == pieces ? n - off : n / pieces;
                c->iov[i].base = (void *)(src + off);
                c->iov[i].len = len;
                off += len;
            }
            r = tpio_transport_writelines(c->t, c->iov, pieces);
            c->writelines++;
        }
        if (r != 0) {
            c->bad_sequence = true;
            return;
        }
        c->sent += n;
    }
    if (c->sent == TOTAL && !c->eof_sent && !c->lost) {
        c->eof_sent = true;
        if (tpio_transport_write_eof(c->t) != 0)
            c->bad_sequence = true;
    }
}

static void cl_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    client_t *c = C(p);
    c->t = t;
    c->made = true;
}

static void cl_lost(tpio_protocol_t *p, int err)
{
    client_t *c = C(p);
    c->lost = true;
    c->lost_err = err;
    c->t = NULL;
}

static void cl_pause(tpio_protocol_t *p)
{
    client_t *c = C(p);
    if (c->paused)
        c->bad_sequence = true;
    c->paused = true;
    c->pauses++;
}

static void cl_resume(tpio_protocol_t *p)
{
    client_t *c = C(p);
    if (!c->paused)
        c->bad_sequence = true;
    c->paused = false;
    c->resumes++;
    pump(c);
}

static void cl_data(tpio_protocol_t *p, const void *d, size_t n)
{
    client_t *c = C(p);
    if (c->eof || c->received + n > TOTAL) {
        c->bad_sequence = true;
        c->received += n;
        return;
    }
    if (c->mismatch_at == SIZE_MAX &&
        memcmp(d, c->payload + c->received, n) != 0) {
        const unsigned char *b = d;
        for (size_t i = 0; i < n; i++)
            if (b[i] != c->payload[c->received + i]) {
                c->mismatch_at = c->received + i;
                break;
            }
    }
    c->rx_hash = fnv1a(c->rx_hash, d, n);
    c->received += n;
}

static bool cl_eof(tpio_protocol_t *p)
{
    C(p)->eof = true;
    return false;
}

static const tpio_protocol_ops_t client_ops = {
    .connection_made = cl_made, .connection_lost = cl_lost,
    .pause_writing = cl_pause, .resume_writing = cl_resume,
    .data_received = cl_data, .eof_received = cl_eof,
};

static tpio_protocol_t *client_factory(void *arg)
{
    return &((client_t *)arg)->base;
}

typedef struct done {
    bool done;
    int err;
    tpio_transport_t *t;
} done_t;

static void on_conn(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                    void *arg)
{
    (void)loop;
    (void)p;
    done_t *d = arg;
    d->done = true;
    d->err = err;
    d->t = t;
}

static void run_bulk(const tpio_protocol_ops_t *server_ops)
{
    double t0 = th_now_s();
    unsigned char *payload = malloc(TOTAL);
    cr_assert_not_null(payload);
    uint64_t seed = 0xC0FFEE;
    for (size_t i = 0; i < TOTAL; i += 8) {
        uint64_t v = splitmix(&seed);
        memcpy(payload + i, &v, 8);
    }
    uint64_t tx_hash = fnv1a(FNV_INIT, payload, TOTAL);

    tpio_loop_t *loop = th_fx.loop;
    srv_t srv = {0};
    srv_factory_arg_t fa = {.srv = &srv, .ops = server_ops};
    tpio_server_opts_t so = {.size = sizeof so, .host = "127.0.0.1", .port = 0};
    tpio_server_t *s;
    cr_assert_eq(tpio_loop_create_server(loop, echo_factory, &fa, &so, &s), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, 0, &ss, &sl), 0);
    uint16_t port = ntohs(((struct sockaddr_in *)&ss)->sin_port);

    client_t *c = calloc(1, sizeof *c);
    cr_assert_not_null(c);
    c->base.ops = &client_ops;
    c->payload = payload;
    c->rx_hash = FNV_INIT;
    c->mismatch_at = SIZE_MAX;
    c->rng = 0xB0B;
    done_t d = {0};
    tpio_connect_opts_t o = {.size = sizeof o, .host = "127.0.0.1", .port = port};
    cr_assert_eq(tpio_loop_create_connection(loop, client_factory, c, &o, on_conn, &d, NULL), 0);
    cr_assert(th_run_until(loop, &d.done, 5));
    cr_assert_eq(d.err, 0, "connect: %s", tpio_err_name(d.err));
    cr_assert(c->made);
    pump(c);

    double end = th_now_s() + 50;
    while (!(c->lost && srv.lost == 1) && th_now_s() < end) {
        tpio_loop_run_once(loop, 0.1);
        pump(c);
    }
    double t1 = th_now_s();
    cr_log_info("64 MiB echoed in %.2f s: %zu writes, %zu writelines, %zu client pauses, "
                "%zu server pauses, %zu get_buffer calls",
                t1 - t0, c->writes, c->writelines, c->pauses, srv.pauses, srv.getbufs);
    cr_assert(c->lost, "client not done: sent %zu received %zu", c->sent, c->received);
    cr_assert_eq(srv.lost, 1, "server connection not done");
    cr_assert_eq(srv.conns, 1);
    cr_assert_eq(c->lost_err, 0, "client lost: %s", tpio_err_name(c->lost_err));
    cr_assert_eq(srv.lost_err, 0, "server lost: %s", tpio_err_name(srv.lost_err));
    cr_assert(!c->bad_sequence);
    cr_assert(!srv.bad_sequence);
    cr_assert_eq(c->sent, TOTAL);
    cr_assert(c->eof);
    cr_assert_eq(srv.bytes, TOTAL);
    cr_assert_eq(c->received, TOTAL, "received %zu of %zu", c->received, TOTAL);
    cr_assert_eq(c->mismatch_at, SIZE_MAX, "first difference at byte %zu", c->mismatch_at);
    cr_assert_eq(c->rx_hash, tx_hash);
    cr_assert_geq(c->pauses, 1, "the client never had to pause");
    cr_assert_eq(c->pauses, c->resumes);
    cr_assert_eq(srv.pauses, srv.resumes);
    if (server_ops->get_buffer)
        cr_assert_geq(srv.getbufs, TOTAL / sizeof(((echo_t *)0)->buf));

    bool closed = false;
    cr_assert_eq(tpio_server_close(s), 0);
    cr_assert_eq(tpio_server_wait_closed(s, th_done_flag, &closed, NULL), 0);
    cr_assert(th_run_until(loop, &closed, 5));
    free(c);
    free(payload);
}

/* Each test gets th_fx.loop; fini checks that it closes and saw no report. */
TestSuite(bulk, .init = th_fx_init, .fini = th_fx_fini);

Test(bulk, echo_64mib_protocol, .timeout = 60)
{
    run_bulk(&echo_ops);
}

Test(bulk, echo_64mib_buffered_protocol, .timeout = 60)
{
    run_bulk(&echo_buffered_ops);
}
