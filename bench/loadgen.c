/* Load generator for the echo servers (one thread, epoll, loopback only).
 *
 *   loadgen -p PORT[,PORT...] -m pingpong -c CONNS -s SIZE [-w WARMUP] [-t SECONDS] [-q SLICE]
 *   loadgen -p PORT -m pingpong -c CONNS -s SIZE -n ROUNDS      (fixed count)
 *   loadgen -p PORT[,PORT...] -m bulk [-s CHUNK] [-w WARMUP] [-t SECONDS] [-q SLICE]
 *   loadgen -p PORT -m idle -c CONNS
 *   common: [-H 127.0.0.1] [-T TIMEOUT] (hard limit on the whole run, seconds)
 *           [--tls [--ca CAFILE]]
 *
 * --tls: every connection is TLS 1.3 with TLS_AES_128_GCM_SHA256 (OpenSSL),
 *   the server's certificate checked against CAFILE (and 127.0.0.1, the
 *   address it must name) with --ca, not checked without. The handshake is
 *   done when the connection is opened: before the slices (bulk: before the
 *   slice's time starts). Records are read ahead and decrypted until OpenSSL
 *   holds none (SSL_has_pending), sizes are plaintext bytes, and connections
 *   are closed without close_notify (as plain ones are: closed or reset), so
 *   the servers never have to wait for a shutdown.
 *
 * Several ports load several servers in turn: the run is cut into slices of
 * SLICE seconds, each round gives every server one slice (the order rotates
 * from round to round), the first rounds (WARMUP seconds) are not counted,
 * and the next ones (SECONDS per server) are. Without -q: one warm-up slice
 * of WARMUP seconds and one measured slice of SECONDS. A slice ends by
 * letting what is under way finish (round trips complete, the echo of every
 * byte sent comes back), and that time counts as part of the slice.
 *
 * pingpong: every connection sends SIZE bytes, waits until all SIZE bytes are
 *   back (checked against the pattern sent), and repeats. Fixed mode performs
 *   exactly ROUNDS round trips in total (split evenly over the connections)
 *   and then closes.
 *   Prints a line per server: port=… rtps=… p50_us=… p99_us=… rounds=… secs=…
 *   total=… (round trips including warm-up) slices=r1,r2,… (rt/s of each
 *   measured slice, in round order)
 * bulk: one connection per server streams CHUNK-sized writes as fast as the
 *   server echoes them, reading and checking the echo at the same time.
 *   Prints a line per server: port=… mbps=… (10^6 bytes of echo per second)
 *   bytes=… secs=… total=… (bytes including warm-up) slices=m1,m2,… (MB/s)
 * idle: opens CONNS connections (TLS: one handshake at a time), completes
 *   one 1-byte round trip on each (so the server has accepted and set up
 *   every one of them), prints "ready N", and holds them until stdin has a
 *   line or is closed (or TIMEOUT), then resets them (SO_LINGER 0: no
 *   TIME_WAIT left behind).
 *
 * Every loop is bounded: by the round count, the measuring time, and TIMEOUT.
 * Exit status: 0 ok, 1 usage / setup error, 2 timeout, 3 echo mismatch or the
 * server closed a connection.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <getopt.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PATTERN_PERIOD 251 /* prime: a shifted or lost chunk does not match */
#define MAX_SAMPLES (4u << 20)
#define BULK_READ (256 * 1024)

static const char *host = "127.0.0.1";
static const char *mode = "pingpong";
static int nconns = 1;
static size_t size = 1024;
static double warmup = 0.2, seconds = 1.0, timeout = 60.0;
static long rounds; /* fixed-count mode when > 0 */
static SSL_CTX *tls_ctx; /* --tls */

static char *pattern; /* PATTERN_PERIOD-periodic bytes, long enough for any read */
static double t_deadline;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(int code, const char *msg)
{
    fprintf(stderr, "loadgen: %s%s%s\n", msg, errno ? ": " : "", errno ? strerror(errno) : "");
    exit(code);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* TLS errors as the plain paths see them: -1 with errno EAGAIN when OpenSSL
 * waits for the socket, 0 for the end of the stream, -1 with errno otherwise. */
static ssize_t tls_result(SSL *ssl, int r)
{
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    /* OpenSSL 3 reports a bare EOF as SSL_ERROR_SSL, "unexpected eof" */
    int eof = e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0) ||
              (e == SSL_ERROR_SSL &&
               ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING);
    if (!eof && e != SSL_ERROR_SYSCALL)
        ERR_print_errors_fp(stderr);
    ERR_clear_error();
    if (eof) {
        errno = 0;
        return 0;
    }
    if (e != SSL_ERROR_SYSCALL)
        errno = EPROTO;
    return -1;
}

static ssize_t conn_read(int fd, SSL *ssl, void *buf, size_t n)
{
    if (!ssl)
        return read(fd, buf, n);
    int r = SSL_read(ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n);
    return r > 0 ? r : tls_result(ssl, r);
}

/* TLS: one record (16 KiB at most) per call (SSL_MODE_ENABLE_PARTIAL_WRITE);
 * after EAGAIN the same bytes must be offered again, as they are. */
static ssize_t conn_write(int fd, SSL *ssl, const void *buf, size_t n)
{
    if (!ssl)
        return write(fd, buf, n);
    int w = SSL_write(ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n);
    return w > 0 ? w : tls_result(ssl, w);
}

static void tls_setup(const char *cafile, int idle)
{
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx ||
        SSL_CTX_set_min_proto_version(tls_ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(tls_ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_ciphersuites(tls_ctx, "TLS_AES_128_GCM_SHA256") != 1) {
        ERR_print_errors_fp(stderr);
        errno = 0;
        die(1, "TLS client context");
    }
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_read_ahead(tls_ctx, 1);
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                  /* thousands of idle connections: no buffers */
                                  (idle ? SSL_MODE_RELEASE_BUFFERS : 0));
    if (cafile) {
        if (SSL_CTX_load_verify_locations(tls_ctx, cafile, NULL) != 1) {
            ERR_print_errors_fp(stderr);
            errno = 0;
            die(1, "loading the CA file");
        }
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(tls_ctx), host) != 1)
            die(1, "the host to verify");
    } else {
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    }
}

static SSL *tls_handshake(int fd)
{
    SSL *ssl = SSL_new(tls_ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1)
        die(1, "SSL_new");
    int r = SSL_connect(ssl);
    if (r != 1) {
        int e = SSL_get_error(ssl, r);
        fprintf(stderr, "loadgen: TLS handshake failed (SSL error %d)\n", e);
        ERR_print_errors_fp(stderr);
        exit(3);
    }
    return ssl;
}

/* Opens a connection (TLS: with its handshake done, *ssl set). */
static int connect_one(unsigned port, int nonblock, SSL **ssl)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die(1, "socket");
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
        die(1, "bad host (IPv4 loopback expected)");
    /* A connect that the kernel cannot complete within 10 s fails. */
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0)
        die(1, "connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    *ssl = tls_ctx ? tls_handshake(fd) : NULL;
    if (nonblock)
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void check_deadline(void)
{
    if (now() > t_deadline) {
        errno = 0;
        die(2, "timeout: the run did not finish within -T seconds");
    }
}

/* ---- targets and slices -------------------------------------------------- */

/* One server under load. With several targets (-p P1,P2,...) the run is cut
 * into slices of -q seconds; each round gives every target one slice, in an
 * order that rotates, so a slow spell of the machine (tens of ms to seconds
 * on a shared VM) falls on every server alike. Between its slices a target's
 * connections stay open and idle. */
struct conn {
    int fd;
    SSL *ssl;     /* --tls */
    size_t sent, recvd;
    unsigned off; /* pattern offset of this round's message */
    uint64_t t0;
    long left;    /* fixed mode: rounds still to do */
    int active;
    int want_out;
};

struct target {
    unsigned port;
    int ep;                 /* this target's own epoll set */
    struct conn *cs;        /* ping-pong: nconns connections; bulk: one */
    uint64_t bsent, brecvd; /* bulk: bytes written and echoed so far */
    double done;            /* round trips (bulk: bytes) of every slice, warm-up included */
    double counted;         /* ... of the measured slices */
    uint64_t meas_ns;       /* time of the measured slices, their drains included */
    double *rates;          /* per measured slice: round trips (bulk: MB) per second */
    int nrates;
    uint64_t *samples;      /* ping-pong latencies of the measured slices, ns */
    size_t nsamples, capsamples;
};

static struct target *targets;
static int ntargets;
static double slice; /* seconds; 0: one warm-up and one measured slice */

static void add_sample(struct target *g, uint64_t v)
{
    if (g->nsamples == g->capsamples) {
        size_t cap = g->capsamples ? g->capsamples * 2 : 65536;
        if (cap > MAX_SAMPLES)
            return;
        uint64_t *n = realloc(g->samples, cap * sizeof *n);
        if (!n)
            return;
        g->samples = n;
        g->capsamples = cap;
    }
    g->samples[g->nsamples++] = v;
}

/* ---- ping-pong ------------------------------------------------------------ */

static void set_out(struct target *g, struct conn *c, int on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(g->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = on;
}

static void pp_send_more(struct target *g, struct conn *c)
{
    while (c->sent < size) {
        ssize_t w = conn_write(c->fd, c->ssl, pattern + c->off + c->sent, size - c->sent);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            die(3, "write");
        }
        c->sent += (size_t)w;
    }
    set_out(g, c, c->sent < size);
}

static void pp_start_round(struct target *g, struct conn *c)
{
    c->off = (c->off + 1) % PATTERN_PERIOD;
    c->sent = c->recvd = 0;
    c->t0 = now_ns();
    pp_send_more(g, c);
}

static void pp_open(struct target *g)
{
    g->cs = calloc((size_t)nconns, sizeof *g->cs);
    if (!g->cs)
        die(1, "calloc");
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &g->cs[i];
        c->fd = connect_one(g->port, 1, &c->ssl);
        c->off = (unsigned)(i * 7) % PATTERN_PERIOD;
        c->left = rounds ? rounds / nconns + (i < rounds % nconns) : -1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(g->ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
}

struct pp_state {
    uint64_t end;
    long n_rt;
    int nactive;
    int measured;
};

/* c is readable: one read (TLS: and more while OpenSSL holds records read
 * ahead, which epoll cannot see). */
static void pp_readable(struct target *g, struct conn *c, struct pp_state *st)
{
    static char rbuf[65536];
    do {
        ssize_t r = conn_read(c->fd, c->ssl, rbuf, sizeof rbuf);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (r <= 0) {
            errno = r < 0 ? errno : 0;
            die(3, "the server closed a connection");
        }
        if (c->recvd + (size_t)r > c->sent ||
            memcmp(rbuf, pattern + c->off + c->recvd, (size_t)r) != 0) {
            errno = 0;
            die(3, "echo mismatch");
        }
        c->recvd += (size_t)r;
        if (c->recvd < size)
            continue;
        /* one round trip complete */
        uint64_t t = now_ns();
        st->n_rt++;
        if (st->measured)
            add_sample(g, t - c->t0);
        if ((rounds && --c->left == 0) || (!rounds && t >= st->end)) {
            c->active = 0;
            st->nactive--;
            return;
        }
        pp_start_round(g, c);
    } while (c->ssl && SSL_has_pending(c->ssl));
}

/* Every connection runs round trips until the slice's end (or, in fixed mode,
 * its round count); the round trips under way then finish, inside the slice. */
static void pp_slice(struct target *g, double dur, int measured)
{
    uint64_t t_start = now_ns();
    struct pp_state st = {t_start + (uint64_t)(dur * 1e9), 0, 0, measured};
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &g->cs[i];
        c->active = c->left != 0;
        if (c->active) {
            st.nactive++;
            pp_start_round(g, c);
        }
    }
    struct epoll_event evs[256];
    while (st.nactive > 0) {
        int n = epoll_wait(g->ep, evs, 256, 100);
        if (n < 0 && errno != EINTR)
            die(1, "epoll_wait");
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c->active) {
                /* Its round trip is complete and it wants nothing: data or a
                 * hang-up now means the server misbehaves (and level
                 * triggering would spin on it). */
                errno = 0;
                die(3, "data or a hang-up on a connection between round trips");
            }
            if (evs[i].events & EPOLLOUT)
                pp_send_more(g, c);
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                pp_readable(g, c, &st);
        }
        check_deadline();
    }
    uint64_t el = now_ns() - t_start;
    g->done += (double)st.n_rt;
    if (measured) {
        g->counted += (double)st.n_rt;
        g->meas_ns += el;
        g->rates[g->nrates++] = (double)st.n_rt / ((double)el / 1e9);
    }
}

/* ---- bulk ----------------------------------------------------------------- */

static void bulk_open(struct target *g)
{
    g->cs = calloc(1, sizeof *g->cs);
    if (!g->cs)
        die(1, "calloc");
    g->cs->fd = -1;
}

/* The bulk connection is readable: one read (TLS: and more while OpenSSL
 * holds records read ahead). */
static void bulk_readable(struct target *g, char *rbuf, uint64_t *got)
{
    struct conn *c = g->cs;
    do {
        ssize_t r = conn_read(c->fd, c->ssl, rbuf, BULK_READ);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
            errno = r < 0 ? errno : 0;
            die(3, "the server closed the connection");
        }
        if (r < 0)
            return;
        if (g->brecvd + (uint64_t)r > g->bsent ||
            memcmp(rbuf, pattern + g->brecvd % PATTERN_PERIOD, (size_t)r) != 0) {
            errno = 0;
            die(3, "echo mismatch");
        }
        g->brecvd += (uint64_t)r;
        *got += (uint64_t)r;
    } while (c->ssl && SSL_has_pending(c->ssl));
}

/* Stream SIZE-byte writes as fast as the echo comes back until the slice's
 * end, then stop writing and take the rest of the echo, inside the slice.
 * Every slice has a connection of its own: a long-lived loopback connection
 * settles into a state of its own (autotuned buffers, congestion control),
 * and with one connection per server that state, not the server, would set
 * its figure. The slice's time starts once the connection is up. */
static void bulk_slice(struct target *g, double dur, int measured)
{
    static char *rbuf;
    if (!rbuf && !(rbuf = malloc(BULK_READ)))
        die(1, "malloc");
    int fd = g->cs->fd = connect_one(g->port, 1, &g->cs->ssl);
    uint64_t t_start = now_ns(), end = t_start + (uint64_t)(dur * 1e9), got = 0;
    g->bsent = g->brecvd = 0;
    int writing = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = g->cs};
    epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev);
    while (writing || g->brecvd < g->bsent) {
        struct epoll_event e;
        int n = epoll_wait(g->ep, &e, 1, 100);
        if (n < 0 && errno != EINTR)
            die(1, "epoll_wait");
        check_deadline();
        if (writing && now_ns() >= end) {
            writing = 0;
            ev.events = EPOLLIN;
            epoll_ctl(g->ep, EPOLL_CTL_MOD, fd, &ev);
        }
        if (n <= 0)
            continue;
        if (e.events & (EPOLLIN | EPOLLHUP | EPOLLERR))
            bulk_readable(g, rbuf, &got);
        if (writing && (e.events & EPOLLOUT)) {
            /* TLS: SIZE bytes per event as well, a record per SSL_write */
            uint64_t upto = g->bsent + size;
            do {
                ssize_t w = conn_write(fd, g->cs->ssl, pattern + g->bsent % PATTERN_PERIOD,
                                       (size_t)(upto - g->bsent));
                if (w < 0 && errno != EAGAIN && errno != EINTR)
                    die(3, "write");
                if (w <= 0)
                    break;
                g->bsent += (uint64_t)w;
            } while (g->cs->ssl && g->bsent < upto);
        }
    }
    uint64_t el = now_ns() - t_start;
    /* Everything sent has come back: a reset leaves no TIME_WAIT behind. */
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    SSL_free(g->cs->ssl);
    g->cs->ssl = NULL;
    close(fd);
    g->cs->fd = -1;
    g->done += (double)got;
    if (measured) {
        g->counted += (double)got;
        g->meas_ns += el;
        g->rates[g->nrates++] = (double)got / 1e6 / ((double)el / 1e9);
    }
}

/* ---- the run --------------------------------------------------------------- */

static int run_load(int bulk)
{
    void (*open_fn)(struct target *) = bulk ? bulk_open : pp_open;
    void (*slice_fn)(struct target *, double, int) = bulk ? bulk_slice : pp_slice;
    int nwarm, nmeas;
    double warm_len, meas_len;
    if (rounds) { /* fixed mode: one unmeasured slice that ends on the count */
        nwarm = 1, nmeas = 0, warm_len = 0, meas_len = 0;
    } else if (slice > 0) {
        nwarm = (int)(warmup / slice + 0.999), nmeas = (int)(seconds / slice + 0.5);
        warm_len = meas_len = slice;
        if (nmeas < 1)
            nmeas = 1;
    } else {
        nwarm = warmup > 0, nmeas = 1, warm_len = warmup, meas_len = seconds;
    }
    for (int i = 0; i < ntargets; i++) {
        struct target *g = &targets[i];
        g->ep = epoll_create1(EPOLL_CLOEXEC);
        g->rates = calloc((size_t)nmeas + 1, sizeof *g->rates);
        if (g->ep < 0 || !g->rates)
            die(1, "setup");
        open_fn(g);
    }
    uint64_t t0 = now_ns();
    for (int r = 0; r < nwarm + nmeas; r++)
        for (int i = 0; i < ntargets; i++)
            slice_fn(&targets[(r + i) % ntargets], r < nwarm ? warm_len : meas_len, r >= nwarm);
    double elapsed = (double)(now_ns() - t0) / 1e9;
    for (int i = 0; i < ntargets; i++) {
        struct target *g = &targets[i];
        for (int j = 0; j < (bulk ? 0 : nconns); j++) {
            SSL_free(g->cs[j].ssl);
            close(g->cs[j].fd);
        }
        close(g->ep);
        double secs = (double)g->meas_ns / 1e9;
        if (rounds) {
            printf("port=%u rtps=%.1f p50_us=0 p99_us=0 rounds=%.0f secs=%.3f\n", g->port,
                   g->done / elapsed, g->done, elapsed);
        } else {
            printf("port=%u ", g->port);
            if (bulk) {
                printf("mbps=%.1f bytes=%.0f", g->counted / 1e6 / secs, g->counted);
            } else {
                double p50 = 0, p99 = 0;
                if (g->nsamples) {
                    qsort(g->samples, g->nsamples, sizeof *g->samples, cmp_u64);
                    p50 = (double)g->samples[(g->nsamples - 1) / 2] / 1e3;
                    p99 = (double)g->samples[(size_t)((double)(g->nsamples - 1) * 0.99)] / 1e3;
                }
                printf("rtps=%.1f p50_us=%.2f p99_us=%.2f rounds=%.0f", g->counted / secs, p50,
                       p99, g->counted);
            }
            printf(" secs=%.3f total=%.0f slices=", secs, g->done);
            for (int k = 0; k < g->nrates; k++)
                printf("%s%.1f", k ? "," : "", g->rates[k]);
            printf("\n");
        }
        free(g->cs);
        free(g->rates);
        free(g->samples);
    }
    return 0;
}

/* ---- idle ----------------------------------------------------------------- */

static int run_idle(void)
{
    int *fds = malloc((size_t)nconns * sizeof *fds);
    SSL **ssls = calloc((size_t)nconns, sizeof *ssls);
    if (!fds || !ssls)
        die(1, "malloc");
    const int batch = 256; /* well under every server's listen backlog (1024) */
    for (int i = 0; i < nconns; i += batch) {
        int end = i + batch < nconns ? i + batch : nconns;
        /* TLS: one handshake at a time, so that the server never holds the
         * buffers of many handshakes at once (its heap would keep that peak) */
        for (int j = i; j < end; j++)
            fds[j] = connect_one(targets[0].port, 0, &ssls[j]);
        for (int j = i; j < end; j++)
            if (conn_write(fds[j], ssls[j], "x", 1) != 1)
                die(3, "write");
        for (int j = i; j < end; j++) {
            char b;
            if (conn_read(fds[j], ssls[j], &b, 1) != 1 || b != 'x')
                die(3, "no echo on an idle connection");
        }
        check_deadline();
    }
    printf("ready %d\n", nconns);
    fflush(stdout);
    struct pollfd p = {.fd = 0, .events = POLLIN};
    int left_ms = (int)((t_deadline - now()) * 1000);
    poll(&p, 1, left_ms > 0 ? left_ms : 0);
    struct linger lg = {1, 0};
    for (int i = 0; i < nconns; i++) {
        setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        SSL_free(ssls[i]);
        close(fds[i]);
    }
    free(fds);
    free(ssls);
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen -p PORT[,PORT...] [-H HOST] [-m pingpong|bulk|idle] [-c CONNS]\n"
            "               [-s SIZE] [-w WARMUP_S] [-t SECONDS] [-q SLICE_S] [-n ROUNDS]\n"
            "               [-T TIMEOUT_S] [--tls [--ca CAFILE]]\n");
    exit(1);
}

int main(int argc, char **argv)
{
    int opt;
    int size_given = 0;
    const char *ports = NULL, *cafile = NULL;
    int tls = 0;
    static const struct option longopts[] = {
        {"tls", no_argument, NULL, 'L'},
        {"ca", required_argument, NULL, 'A'},
        {NULL, 0, NULL, 0},
    };
    while ((opt = getopt_long(argc, argv, "H:p:m:c:s:w:t:q:n:T:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'L': tls = 1; break;
        case 'A': cafile = optarg; break;
        case 'H': host = optarg; break;
        case 'p': ports = optarg; break;
        case 'q': slice = atof(optarg); break;
        case 'm': mode = optarg; break;
        case 'c': nconns = atoi(optarg); break;
        case 's': size = strtoul(optarg, NULL, 10); size_given = 1; break;
        case 'w': warmup = atof(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'n': rounds = atol(optarg); break;
        case 'T': timeout = atof(optarg); break;
        default: usage();
        }
    }
    if (!ports || nconns < 1 || nconns > 1000000 || timeout <= 0 || seconds <= 0 ||
        warmup < 0 || slice < 0 || rounds < 0)
        usage();
    for (const char *q = ports; q; q = strchr(q, ',') ? strchr(q, ',') + 1 : NULL) {
        struct target *n = realloc(targets, (size_t)(ntargets + 1) * sizeof *n);
        if (!n)
            die(1, "realloc");
        targets = n;
        memset(&targets[ntargets], 0, sizeof *targets);
        targets[ntargets].port = (unsigned)strtoul(q, NULL, 10);
        if (!targets[ntargets++].port)
            usage();
    }
    /* Fixed counts and idle connections are for one server at a time. */
    if (ntargets > 1 && (rounds || strcmp(mode, "idle") == 0))
        usage();
    if (strcmp(mode, "bulk") == 0 && !size_given)
        size = 64 * 1024;
    if (size < 1 || size > 16 * 1024 * 1024 || (cafile && !tls))
        usage();
    raise_nofile();
    if (tls)
        tls_setup(cafile, strcmp(mode, "idle") == 0);
    t_deadline = now() + timeout;
    size_t plen = (size > BULK_READ ? size : BULK_READ) + 2 * PATTERN_PERIOD;
    pattern = malloc(plen);
    if (!pattern)
        die(1, "malloc");
    for (size_t i = 0; i < plen; i++)
        pattern[i] = (char)((i % PATTERN_PERIOD) * 37 + 11);
    if (strcmp(mode, "pingpong") == 0 || strcmp(mode, "bulk") == 0) {
        int rc = run_load(strcmp(mode, "bulk") == 0);
        free(targets);
        return rc;
    }
    if (strcmp(mode, "idle") == 0)
        return run_idle();
    usage();
    return 1;
}
