/* Load generator for the echo servers (one thread, epoll, loopback only).
 *
 *   loadgen -p PORT -m pingpong -c CONNS -s SIZE [-w WARMUP] [-t SECONDS]
 *   loadgen -p PORT -m pingpong -c CONNS -s SIZE -n ROUNDS      (fixed count)
 *   loadgen -p PORT -m bulk [-s CHUNK] [-w WARMUP] [-t SECONDS]
 *   loadgen -p PORT -m idle -c CONNS
 *   common: [-H 127.0.0.1] [-T TIMEOUT] (hard limit on the whole run, seconds)
 *
 * pingpong: every connection sends SIZE bytes, waits until all SIZE bytes are
 *   back (checked against the pattern sent), and repeats. Timed mode measures
 *   for SECONDS after WARMUP seconds; fixed mode performs exactly ROUNDS round
 *   trips in total (split evenly over the connections) and then closes.
 *   Prints: rtps=… p50_us=… p99_us=… rounds=… secs=… total=… (round trips
 *   including warm-up)
 * bulk: one connection streams CHUNK-sized writes as fast as the server echoes
 *   them, reading and checking the echo at the same time.
 *   Prints: mbps=… (10^6 bytes of echo received per second) bytes=… secs=…
 *   total=… (bytes including warm-up)
 * idle: opens CONNS connections, completes one 1-byte round trip on each (so
 *   the server has accepted and set up every one of them), prints "ready N",
 *   and holds them until stdin has a line or is closed (or TIMEOUT), then
 *   resets them (SO_LINGER 0: no TIME_WAIT left behind).
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
#include <netinet/tcp.h>
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
static unsigned port;
static const char *mode = "pingpong";
static int nconns = 1;
static size_t size = 1024;
static double warmup = 0.2, seconds = 1.0, timeout = 60.0;
static long rounds; /* fixed-count mode when > 0 */

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

static int connect_one(int nonblock)
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
    if (nonblock)
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void check_deadline(void)
{
    if (now() > t_deadline) {
        errno = 0;
        die(2, "timeout: the run did not finish within -T seconds");
    }
}

/* ---- ping-pong ------------------------------------------------------------ */

struct conn {
    int fd;
    size_t sent, recvd;
    unsigned off; /* pattern offset of this round's message */
    uint64_t t0;
    long left;    /* fixed mode: rounds still to do */
    int active;
    int want_out;
};

static int ep;
static uint64_t *samples;
static size_t nsamples;

static void set_out(struct conn *c, int on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = on;
}

static void pp_send_more(struct conn *c)
{
    while (c->sent < size) {
        ssize_t w = write(c->fd, pattern + c->off + c->sent, size - c->sent);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            die(3, "write");
        }
        c->sent += (size_t)w;
    }
    set_out(c, c->sent < size);
}

static void pp_start_round(struct conn *c)
{
    c->off = (c->off + 1) % PATTERN_PERIOD;
    c->sent = c->recvd = 0;
    c->t0 = now_ns();
    pp_send_more(c);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int run_pingpong(void)
{
    struct conn *cs = calloc((size_t)nconns, sizeof *cs);
    static char rbuf[65536];
    if (!cs)
        die(1, "calloc");
    if (!rounds && !(samples = malloc(MAX_SAMPLES * sizeof *samples)))
        die(1, "malloc");
    ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &cs[i];
        c->fd = connect_one(1);
        c->off = (unsigned)(i * 7) % PATTERN_PERIOD;
        c->active = 1;
        c->left = rounds ? rounds / nconns + (i < rounds % nconns) : -1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        if (c->left == 0)
            c->active = 0;
    }
    double t_start = now();
    uint64_t warm_end = now_ns() + (uint64_t)((rounds ? 0 : warmup) * 1e9);
    uint64_t meas_end = warm_end + (uint64_t)(seconds * 1e9);
    int nactive = 0;
    for (int i = 0; i < nconns; i++)
        if (cs[i].active) {
            nactive++;
            pp_start_round(&cs[i]);
        }
    long done = 0, counted = 0;
    struct epoll_event evs[256];
    while (nactive > 0) {
        int n = epoll_wait(ep, evs, 256, 100);
        if (n < 0 && errno != EINTR)
            die(1, "epoll_wait");
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c->active)
                continue;
            if (evs[i].events & EPOLLOUT)
                pp_send_more(c);
            if (!(evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            ssize_t r = read(c->fd, rbuf, sizeof rbuf);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
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
            done++;
            if (!rounds && t > warm_end && t <= meas_end) {
                counted++;
                if (nsamples < MAX_SAMPLES)
                    samples[nsamples++] = t - c->t0;
            }
            if ((rounds && --c->left == 0) || (!rounds && t > meas_end)) {
                c->active = 0;
                nactive--;
                continue;
            }
            pp_start_round(c);
        }
        check_deadline();
    }
    double elapsed = now() - t_start;
    for (int i = 0; i < nconns; i++)
        close(cs[i].fd);
    if (rounds) {
        printf("rtps=%.1f p50_us=0 p99_us=0 rounds=%ld secs=%.3f\n", (double)done / elapsed, done,
               elapsed);
    } else {
        double p50 = 0, p99 = 0;
        if (nsamples) {
            qsort(samples, nsamples, sizeof *samples, cmp_u64);
            p50 = (double)samples[(nsamples - 1) / 2] / 1e3;
            p99 = (double)samples[(size_t)((double)(nsamples - 1) * 0.99)] / 1e3;
        }
        printf("rtps=%.1f p50_us=%.2f p99_us=%.2f rounds=%ld secs=%.3f total=%ld\n",
               (double)counted / seconds, p50, p99, counted, seconds, done);
    }
    free(cs);
    free(samples);
    return 0;
}

/* ---- bulk ----------------------------------------------------------------- */

static int run_bulk(void)
{
    int fd = connect_one(1);
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    char *rbuf = malloc(BULK_READ);
    if (!rbuf)
        die(1, "malloc");
    uint64_t sent = 0, recvd = 0, counted = 0;
    double t0 = now(), warm_end = t0 + warmup, meas_end = warm_end + seconds;
    for (;;) {
        struct epoll_event e;
        int n = epoll_wait(ep, &e, 1, 100);
        if (n < 0 && errno != EINTR)
            die(1, "epoll_wait");
        double t = now();
        if (t > meas_end)
            break;
        if (t > t_deadline)
            check_deadline();
        if (n <= 0)
            continue;
        if (e.events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
            ssize_t r = read(fd, rbuf, BULK_READ);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                errno = r < 0 ? errno : 0;
                die(3, "the server closed the connection");
            }
            if (r > 0) {
                if (memcmp(rbuf, pattern + recvd % PATTERN_PERIOD, (size_t)r) != 0) {
                    errno = 0;
                    die(3, "echo mismatch");
                }
                recvd += (uint64_t)r;
                if (t > warm_end)
                    counted += (uint64_t)r;
            }
        }
        if (e.events & EPOLLOUT) {
            ssize_t w = write(fd, pattern + sent % PATTERN_PERIOD, size);
            if (w < 0 && errno != EAGAIN && errno != EINTR)
                die(3, "write");
            if (w > 0)
                sent += (uint64_t)w;
        }
    }
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    printf("mbps=%.1f bytes=%llu secs=%.3f total=%llu\n", (double)counted / seconds / 1e6,
           (unsigned long long)counted, seconds, (unsigned long long)recvd);
    free(rbuf);
    return 0;
}

/* ---- idle ----------------------------------------------------------------- */

static int run_idle(void)
{
    int *fds = malloc((size_t)nconns * sizeof *fds);
    if (!fds)
        die(1, "malloc");
    const int batch = 256; /* well under every server's listen backlog (1024) */
    for (int i = 0; i < nconns; i += batch) {
        int end = i + batch < nconns ? i + batch : nconns;
        for (int j = i; j < end; j++)
            fds[j] = connect_one(0);
        for (int j = i; j < end; j++)
            if (write(fds[j], "x", 1) != 1)
                die(3, "write");
        for (int j = i; j < end; j++) {
            char b;
            if (read(fds[j], &b, 1) != 1 || b != 'x')
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
        close(fds[i]);
    }
    free(fds);
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen -p PORT [-H HOST] [-m pingpong|bulk|idle] [-c CONNS] [-s SIZE]\n"
            "               [-w WARMUP_S] [-t SECONDS] [-n ROUNDS] [-T TIMEOUT_S]\n");
    exit(1);
}

int main(int argc, char **argv)
{
    int opt;
    int size_given = 0;
    while ((opt = getopt(argc, argv, "H:p:m:c:s:w:t:n:T:")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = (unsigned)strtoul(optarg, NULL, 10); break;
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
    if (!port || nconns < 1 || nconns > 1000000 || timeout <= 0 || seconds <= 0 ||
        warmup < 0)
        usage();
    if (strcmp(mode, "bulk") == 0 && !size_given)
        size = 64 * 1024;
    if (size < 1 || size > 16 * 1024 * 1024)
        usage();
    raise_nofile();
    t_deadline = now() + timeout;
    size_t plen = (size > BULK_READ ? size : BULK_READ) + 2 * PATTERN_PERIOD;
    pattern = malloc(plen);
    if (!pattern)
        die(1, "malloc");
    for (size_t i = 0; i < plen; i++)
        pattern[i] = (char)((i % PATTERN_PERIOD) * 37 + 11);
    if (strcmp(mode, "pingpong") == 0)
        return run_pingpong();
    if (strcmp(mode, "bulk") == 0)
        return run_bulk();
    if (strcmp(mode, "idle") == 0)
        return run_idle();
    usage();
    return 1;
}
