#define _GNU_SOURCE
#include "helpers.h"

#include <sys/utsname.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define GETTER(type, name, call, ...)                       \
    type name(__VA_ARGS__)                                  \
    {                                                       \
        type v_;                                            \
        cr_assert_eq(call, 0, "%s failed", #call);          \
        return v_;                                          \
    }
GETTER(double, th_time, tpio_loop_time(loop, &v_), const tpio_loop_t *loop)
GETTER(bool, th_is_running, tpio_loop_is_running(loop, &v_), const tpio_loop_t *loop)
GETTER(bool, th_is_closing, tpio_transport_is_closing(t, &v_), const tpio_transport_t *t)
GETTER(bool, th_is_reading, tpio_transport_is_reading(t, &v_), const tpio_transport_t *t)
GETTER(bool, th_can_write_eof, tpio_transport_can_write_eof(t, &v_), const tpio_transport_t *t)
GETTER(size_t, th_wbuf_size, tpio_transport_get_write_buffer_size(t, &v_),
       const tpio_transport_t *t)
GETTER(tpio_transport_kind_t, th_kind, tpio_transport_get_kind(t, &v_),
       const tpio_transport_t *t)
GETTER(tpio_loop_t *, th_transport_loop, tpio_transport_get_loop(t, &v_),
       const tpio_transport_t *t)
GETTER(tpio_protocol_t *, th_protocol, tpio_transport_get_protocol(t, &v_),
       const tpio_transport_t *t)
GETTER(bool, th_is_serving, tpio_server_is_serving(s, &v_), const tpio_server_t *s)
GETTER(size_t, th_socket_count, tpio_server_get_socket_count(s, &v_), const tpio_server_t *s)
GETTER(tpio_loop_t *, th_server_loop, tpio_server_get_loop(s, &v_), const tpio_server_t *s)
GETTER(size_t, th_conn_count, tpio_server_get_connection_count(s, &v_),
       const tpio_server_t *s)
#undef GETTER

int th_fd(const tpio_transport_t *t)
{
    int fd = -1, rc = tpio_transport_get_fd(t, &fd);
    return rc < 0 ? rc : fd;
}

int th_server_socket(const tpio_server_t *s, size_t i)
{
    int fd = -1, rc = tpio_server_get_socket(s, i, &fd);
    return rc < 0 ? rc : fd;
}

pid_t th_pid(const tpio_transport_t *t)
{
    pid_t pid = -1;
    int rc = tpio_subprocess_get_pid(t, &pid);
    return rc < 0 ? rc : pid;
}

tpio_transport_t *th_pipe(const tpio_transport_t *t, int fd)
{
    tpio_transport_t *p = NULL;
    return tpio_subprocess_get_pipe_transport(t, fd, &p) == 0 ? p : NULL;
}

bool th_run_until(tpio_loop_t *loop, const bool *flag, double timeout)
{
    double end = th_time(loop) + timeout;
    while (!*flag && th_time(loop) < end)
        tpio_loop_run_once(loop, 0.01);
    return *flag;
}

bool th_run_until_count(tpio_loop_t *loop, const size_t *count, size_t target,
                        double timeout)
{
    double end = th_time(loop) + timeout;
    while (*count < target && th_time(loop) < end)
        tpio_loop_run_once(loop, 0.01);
    return *count >= target;
}

static th_proto_t *P(tpio_protocol_t *p) { return tpio_container_of(p, th_proto_t, base); }

static void ev(th_proto_t *p, const char *e)
{
    size_t n = strlen(e);
    /* coalesce repeated data events */
    if (strcmp(e, "data") == 0 && p->elen >= 4 &&
        strcmp(p->events + p->elen - 4, "data") == 0)
        return;
    if (p->elen + n + 2 >= sizeof p->events)
        return;
    if (p->elen)
        p->events[p->elen++] = ',';
    memcpy(p->events + p->elen, e, n + 1);
    p->elen += n;
}

static void append_rx(th_proto_t *p, const void *d, size_t n)
{
    if (p->rxlen + n > p->rxcap) {
        size_t cap = p->rxcap ? p->rxcap : 4096;
        while (cap < p->rxlen + n)
            cap *= 2;
        p->rx = realloc(p->rx, cap);
        if (!p->rx)
            abort();
        p->rxcap = cap;
    }
    memcpy(p->rx + p->rxlen, d, n);
    p->rxlen += n;
}

static void made(tpio_protocol_t *bp, tpio_transport_t *t)
{
    th_proto_t *p = P(bp);
    p->t = t;
    p->made = true;
    ev(p, "made");
    if (p->pause_in_made)
        tpio_transport_pause_reading(t);
}

static void lost(tpio_protocol_t *bp, int err)
{
    th_proto_t *p = P(bp);
    char buf[64];
    snprintf(buf, sizeof buf, "lost:%s", err ? tpio_err_name(err) : "0");
    ev(p, buf);
    p->lost = true;
    p->lost_err = err;
    p->t = NULL;
    if (p->lost_flag)
        *p->lost_flag = true;
    if (p->lost_counter)
        (*p->lost_counter)++;
    if (p->free_on_lost)
        th_proto_free(p);
}

static void on_data(th_proto_t *p, const void *d, size_t n)
{
    append_rx(p, d, n);
    if (p->echo && p->t)
        tpio_transport_write(p->t, d, n);
    if (p->close_on_data && p->t)
        tpio_transport_close(p->t);
}

static void data(tpio_protocol_t *bp, const void *d, size_t n)
{
    th_proto_t *p = P(bp);
    ev(p, "data");
    on_data(p, d, n);
}

static bool eof(tpio_protocol_t *bp)
{
    th_proto_t *p = P(bp);
    ev(p, "eof");
    p->eof = true;
    return p->eof_ret;
}

static void pausew(tpio_protocol_t *bp) { P(bp)->pauses++; ev(P(bp), "pause"); }
static void resumew(tpio_protocol_t *bp) { P(bp)->resumes++; ev(P(bp), "resume"); }

static void *getbuf(tpio_protocol_t *bp, ssize_t hint, size_t *len)
{
    th_proto_t *p = P(bp);
    (void)hint;
    ev(p, "getbuf");
    *len = p->bufsize ? p->bufsize : sizeof p->bufmem;
    return p->bufmem;
}

static void updated(tpio_protocol_t *bp, size_t n)
{
    th_proto_t *p = P(bp);
    ev(p, "updated");
    on_data(p, p->bufmem, n);
}

const tpio_protocol_ops_t th_proto_ops = {
    .connection_made = made, .connection_lost = lost,
    .pause_writing = pausew, .resume_writing = resumew,
    .data_received = data, .eof_received = eof,
};

const tpio_protocol_ops_t th_buffered_proto_ops = {
    .connection_made = made, .connection_lost = lost,
    .pause_writing = pausew, .resume_writing = resumew,
    .get_buffer = getbuf, .buffer_updated = updated, .eof_received = eof,
};

th_proto_t *th_proto_new(const tpio_protocol_ops_t *ops)
{
    th_proto_t *p = calloc(1, sizeof *p);
    if (!p)
        abort();
    p->base.ops = ops ? ops : &th_proto_ops;
    return p;
}

void th_proto_free(th_proto_t *p)
{
    if (!p)
        return;
    free(p->rx);
    free(p);
}

tpio_protocol_t *th_factory(void *arg)
{
    th_proto_t *tmpl = arg;
    th_proto_t *p = th_proto_new(tmpl ? tmpl->base.ops : NULL);
    if (tmpl) {
        p->eof_ret = tmpl->eof_ret;
        p->echo = tmpl->echo;
        p->close_on_data = tmpl->close_on_data;
        p->pause_in_made = tmpl->pause_in_made;
        p->free_on_lost = tmpl->free_on_lost;
        p->lost_flag = tmpl->lost_flag;
        p->lost_counter = tmpl->lost_counter;
        p->bufsize = tmpl->bufsize;
    }
    return &p->base;
}

/* ---- a transport under test plus its plain-socket peer ------------------ */

bool th_same_addr(const struct sockaddr *a, socklen_t al, const struct sockaddr *b,
                  socklen_t bl)
{
    if (al != bl || a->sa_family != b->sa_family)
        return false;
    if (a->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->sa_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return memcmp(a, b, al) == 0;
}

double th_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

unsigned char th_pat(size_t k)
{
    return (unsigned char)(((k ^ (k >> 8) ^ (k >> 16)) * 13u + 7u) & 0xff);
}

tpio_protocol_t *th_pair_count_factory(void *arg)
{
    th_pair_t *pr = arg;
    pr->factory_calls++;
    tpio_protocol_t *bp = th_factory(&pr->tmpl);
    pr->created = tpio_container_of(bp, th_proto_t, base);
    return bp;
}

void th_pair_on_conn(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p,
                     int err, void *arg)
{
    th_pair_t *pr = arg;
    pr->cb_calls++;
    pr->done = true;
    pr->err = err;
    pr->t = t;
    pr->cb_in_loop = th_is_running(loop);
    pr->p = p ? tpio_container_of(p, th_proto_t, base) : NULL;
    if (pr->p)
        snprintf(pr->events_at_cb, sizeof pr->events_at_cb, "%.60s", pr->p->events);
}

th_pair_t *th_pair_new(const tpio_protocol_ops_t *ops)
{
    th_pair_t *pr = calloc(1, sizeof *pr);
    cr_assert_not_null(pr);
    pr->tmpl.base.ops = ops ? ops : &th_proto_ops;
    pr->peer = -1;
    if (th_fx.loop) {
        cr_assert_null(th_fx.pair, "one pair per test");
        pr->loop = th_fx.loop;
        th_fx.pair = pr;
    } else {
        cr_assert_eq(tpio_loop_new(&pr->loop, NULL), 0);
        pr->own_loop = true;
    }
    return pr;
}

int th_listen_v4(uint16_t *port)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(l, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(l, 16), 0);
    socklen_t al = sizeof a;
    cr_assert_eq(getsockname(l, (struct sockaddr *)&a, &al), 0);
    *port = ntohs(a.sin_port);
    return l;
}

/* A new pair whose factory copies these knobs. */
static th_pair_t *pair_with_knobs(const tpio_protocol_ops_t *ops, const th_proto_t *knobs)
{
    th_pair_t *pr = th_pair_new(ops);
    if (knobs) {
        pr->tmpl.eof_ret = knobs->eof_ret;
        pr->tmpl.echo = knobs->echo;
        pr->tmpl.close_on_data = knobs->close_on_data;
        pr->tmpl.pause_in_made = knobs->pause_in_made;
        pr->tmpl.bufsize = knobs->bufsize;
    }
    return pr;
}

/* After the call that asked for the transport returned 0: nothing ran inside
 * it; run until the completion, which saw the connection made. */
static void pair_expect_connected(th_pair_t *pr, const char *call)
{
    cr_assert(!pr->done, "completion ran inside %s", call);
    if (pr->created)
        cr_assert(!pr->created->made, "connection_made ran inside %s", call);
    cr_assert(th_run_until(pr->loop, &pr->done, TH_TMO), "no completion");
    cr_assert_eq(pr->err, 0, "%s failed: %s", call, tpio_err_name(pr->err));
    cr_assert_not_null(pr->t);
    cr_assert_not_null(pr->p);
    cr_assert_eq(pr->cb_calls, 1);
    cr_assert_eq(pr->factory_calls, 1);
    cr_assert_eq(pr->p, pr->created);
    cr_assert(pr->cb_in_loop);
    cr_assert_str_eq(pr->events_at_cb, "made");
}

/* A TCP client transport (tpio_loop_create_connection) and the accepted peer. */
th_pair_t *th_tcp_pair(const tpio_protocol_ops_t *ops, const th_proto_t *knobs)
{
    th_pair_t *pr = pair_with_knobs(ops, knobs);
    uint16_t port;
    int l = th_listen_v4(&port);
    tpio_connect_opts_t o = {.size = sizeof o, .host = "127.0.0.1", .port = port};
    cr_assert_eq(tpio_loop_create_connection(pr->loop, th_pair_count_factory, pr, &o,
                                        th_pair_on_conn, pr, NULL), 0);
    pair_expect_connected(pr, "tpio_loop_create_connection");
    pr->peer = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    cr_assert_geq(pr->peer, 0);
    close(l);
    return pr;
}

/* A Unix socketpair: one end wrapped by tpio_loop_connect_accepted_socket. Whatever
 * `pre` holds is sent by the peer before the transport exists; pre_eof then
 * shuts the peer's write side. */
th_pair_t *th_unix_pair(const tpio_protocol_ops_t *ops, const th_proto_t *knobs,
                        const void *pre, size_t prelen, bool pre_eof)
{
    th_pair_t *pr = pair_with_knobs(ops, knobs);
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    if (prelen)
        cr_assert_eq(send(sv[1], pre, prelen, MSG_NOSIGNAL), (ssize_t)prelen);
    if (pre_eof)
        cr_assert_eq(shutdown(sv[1], SHUT_WR), 0);
    cr_assert_eq(fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) | O_NONBLOCK), 0);
    pr->peer = sv[1];
    cr_assert_eq(tpio_loop_connect_accepted_socket(pr->loop, th_pair_count_factory, pr, sv[0], NULL,
                                              th_pair_on_conn, pr, NULL), 0);
    pair_expect_connected(pr, "tpio_loop_connect_accepted_socket");
    return pr;
}

/* Run until the protocol's connection_lost ran, then close everything. */
void th_pair_finish(th_pair_t *pr)
{
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TH_TMO), "no connection_lost; events=%s",
              pr->p->events);
    if (pr->peer >= 0)
        close(pr->peer);
    pr->peer = -1;
    /* run a little more so any (erroneous) late callback would show */
    for (int i = 0; i < 3; i++)
        tpio_loop_run_once(pr->loop, 0);
    if (pr->own_loop)
        cr_assert_eq(tpio_loop_close(pr->loop), 0);
    if (th_fx.pair == pr)
        th_fx.pair = NULL;
    th_proto_free(pr->p);
    free(pr);
}

/* Run a bounded number of loop iterations: used to check that something does
 * NOT happen. */
void th_run_iters(tpio_loop_t *loop, int n)
{
    for (int i = 0; i < n; i++)
        tpio_loop_run_once(loop, 0.005);
}

bool th_pair_run_until_rx(th_pair_t *pr, th_proto_t *p, size_t n)
{
    double end = th_now_s() + TH_TMO;
    while (p->rxlen < n && th_now_s() < end)
        tpio_loop_run_once(pr->loop, 0.01);
    return p->rxlen >= n;
}

void th_peer_send(th_pair_t *pr, const void *d, size_t n)
{
    cr_assert_eq(send(pr->peer, d, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Peer reads exactly n bytes (running the loop meanwhile). */
size_t th_peer_recv_exact(th_pair_t *pr, void *buf, size_t n)
{
    size_t got = 0;
    double end = th_now_s() + TH_TMO;
    while (got < n && th_now_s() < end) {
        ssize_t r = recv(pr->peer, (char *)buf + got, n - got, 0);
        if (r > 0)
            got += (size_t)r;
        else if (r == 0)
            break;
        else if (errno == EAGAIN || errno == EINTR)
            tpio_loop_run_once(pr->loop, 0.005);
        else
            break;
    }
    return got;
}

/* Peer expects EOF next: returns 0 on EOF, 1 if data came instead, -errno on
 * error, -ETIMEDOUT if nothing happened. */
int th_peer_expect_eof(th_pair_t *pr)
{
    double end = th_now_s() + TH_TMO;
    char c;
    while (th_now_s() < end) {
        ssize_t r = recv(pr->peer, &c, 1, 0);
        if (r == 0)
            return 0;
        if (r > 0)
            return 1;
        if (errno != EAGAIN && errno != EINTR)
            return -errno;
        tpio_loop_run_once(pr->loop, 0.005);
    }
    return -ETIMEDOUT;
}

/* Peer reads the pattern stream from offset `off` until EOF (want_eof) or
 * until `expect` bytes; checks every byte; returns the count read. *end_err
 * gets 0 for EOF, -errno for an error, 1 when stopped at `expect`. */
size_t th_peer_drain_pattern(th_pair_t *pr, size_t off, size_t expect, bool want_eof,
                             int *end_err)
{
    static unsigned char buf[65536];
    size_t got = 0;
    double end = th_now_s() + 20;
    *end_err = -ETIMEDOUT;
    while (th_now_s() < end) {
        if (!want_eof && got >= expect) {
            *end_err = 1;
            break;
        }
        ssize_t r = recv(pr->peer, buf, sizeof buf, 0);
        if (r > 0) {
            for (ssize_t i = 0; i < r; i++)
                cr_assert_eq(buf[i], th_pat(off + got + (size_t)i),
                             "byte %zu differs", off + got + (size_t)i);
            got += (size_t)r;
        } else if (r == 0) {
            *end_err = 0;
            break;
        } else if (errno == EAGAIN || errno == EINTR) {
            tpio_loop_run_once(pr->loop, 0.002);
        } else {
            *end_err = -errno;
            break;
        }
    }
    return got;
}

/* Shrink kernel buffers so that the transport's buffer fills quickly. */
void th_shrink_bufs(th_pair_t *pr)
{
    int sz = 4096;
    cr_assert_eq(setsockopt(th_fd(pr->t), SOL_SOCKET, SO_SNDBUF, &sz,
                            sizeof sz), 0);
    cr_assert_eq(setsockopt(pr->peer, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz), 0);
}

/* Write the pattern stream until the transport has to buffer something. The
 * loop does not run meanwhile, so nothing drains. */
bool th_ring_ops(tpio_loop_t *loop)
{
    const char *name = NULL, *ops = getenv("TPIO_URING_OPS");
    return tpio_loop_get_backend(loop, &name) == 0 && strcmp(name, "io_uring") == 0 &&
           !(ops && strcmp(ops, "0") == 0);
}

bool th_ring_pipe_ops(tpio_loop_t *loop)
{
    struct utsname u;
    unsigned major = 0, minor = 0;
    return th_ring_ops(loop) && uname(&u) == 0 &&
           sscanf(u.release, "%u.%u", &major, &minor) == 2 &&
           (major > 6 || (major == 6 && minor >= 7));
}

void th_seccomp_refuse(int nr)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof *f, .filter = f};
    cr_assert_eq(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
    cr_assert_eq(syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog), 0,
                 "seccomp: %s", strerror(errno));
}

void th_ring_batch(void)
{
    cr_assert_eq(setenv("TPIO_URING_BATCH", "1", 1), 0);
    if (th_fx.loop) /* the fixture's, made before the test */
        th_fx_renew_loop();
}

void th_fill_until_buffered(th_pair_t *pr)
{
    static unsigned char chunk[16384];
    /* Where the kernel sends for the transport, every write is buffered
     * until the loop submits it: the kernel has pushed back once what is
     * buffered stays so after the loop ran. */
    if (th_ring_ops(pr->loop)) {
        for (;;) {
            tpio_loop_run_once(pr->loop, 0);
            if (th_wbuf_size(pr->t))
                return;
            cr_assert_lt(pr->wtotal, (size_t)64 << 20, "kernel never pushed back");
            for (size_t i = 0; i < sizeof chunk; i++)
                chunk[i] = th_pat(pr->wtotal + i);
            cr_assert_eq(tpio_transport_write(pr->t, chunk, sizeof chunk), 0);
            pr->wtotal += sizeof chunk;
        }
    }
    while (th_wbuf_size(pr->t) == 0) {
        cr_assert_lt(pr->wtotal, (size_t)64 << 20, "kernel never pushed back");
        for (size_t i = 0; i < sizeof chunk; i++)
            chunk[i] = th_pat(pr->wtotal + i);
        cr_assert_eq(tpio_transport_write(pr->t, chunk, sizeof chunk), 0);
        pr->wtotal += sizeof chunk;
    }
}

void th_write_pattern(th_pair_t *pr, size_t n)
{
    unsigned char *b = malloc(n);
    cr_assert_not_null(b);
    for (size_t i = 0; i < n; i++)
        b[i] = th_pat(pr->wtotal + i);
    cr_assert_eq(tpio_transport_write(pr->t, b, n), 0);
    /* the caller's buffer is the caller's again at once */
    memset(b, 0xAA, n);
    free(b);
    pr->wtotal += n;
}

/* ---- a loop error handler that counts reports --------------------------- */

void th_count_reports(tpio_loop_t *loop, const tpio_error_context_t *ctx, void *arg)
{
    (void)loop;
    th_reports_t *r = arg;
    r->count++;
    snprintf(r->last, sizeof r->last, "%s (%s)", ctx->message,
             tpio_err_name(ctx->error));
}

void th_assert_no_reports(const th_reports_t *r)
{
    cr_assert_eq(r->count, 0, "unexpected error report: %s", r->last);
}

/* ---- small shared callbacks --------------------------------------------- */

void th_set_flag(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    *(bool *)arg = true;
}

void th_done_flag(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop;
    cr_assert_eq(err, 0, "completion: %s", tpio_err_name(err));
    *(bool *)arg = true;
}

/* ---- running the loop for a while --------------------------------------- */

tpio_loop_t *th_new_loop(void)
{
    tpio_loop_t *loop = NULL;
    cr_assert_eq(tpio_loop_new(&loop, NULL), 0);
    cr_assert_not_null(loop);
    return loop;
}

void th_spin_for(tpio_loop_t *loop, double secs)
{
    double end = th_now_s() + secs;
    while (th_now_s() < end)
        tpio_loop_run_once(loop, 0.005);
}

void th_run_timer(tpio_loop_t *loop, double secs, double timeout)
{
    bool fired = false;
    cr_assert_eq(tpio_loop_call_later(loop, secs, th_set_flag, &fired, NULL), 0);
    cr_assert(th_run_until(loop, &fired, timeout));
}

/* ---- a connection completion that records its outcome ------------------- */

void th_on_conn(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                void *arg)
{
    th_conn_t *c = arg;
    c->calls++;
    c->done = true;
    c->err = err;
    c->t = t;
    c->p = p ? tpio_container_of(p, th_proto_t, base) : NULL;
    c->in_loop = th_is_running(loop);
}

/* ---- the per-test fixture: suite .init / .fini -------------------------- */

th_fx_t th_fx;

/* A failed check of fini: Criterion would only print an assertion made there
 * and still pass the test, so say what failed and abort. */
void th_fx_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
    const struct criterion_test *t = criterion_current_test;
    const char *base = strrchr(file, '/');
    fprintf(stderr, "[FAIL] %s::%s: teardown (%s:%d): %s: ", t ? t->category : "?",
            t ? t->name : "?", base ? base + 1 : file, line, cond);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    abort();
}
#define FX_CHECK TH_FX_CHECK

static void fx_new_loop(void)
{
    cr_assert_eq(tpio_loop_new(&th_fx.loop, NULL), 0);
    cr_assert_eq(tpio_loop_set_error_handler(th_fx.loop, th_count_reports, &th_fx.rep), 0);
}

void th_fx_init(void)
{
    memset(&th_fx, 0, sizeof th_fx);
    fx_new_loop();
}

/* What fini checks of the loop, as `check` says: no report unless allowed,
 * and it closes. */
#define FX_CLOSE_LOOP(check)                                                       \
    do {                                                                           \
        check(th_fx.reports_allowed || th_fx.rep.count == 0,                       \
              "unexpected error report: %s", th_fx.rep.last);                      \
        int rc_ = tpio_loop_close(th_fx.loop);                                     \
        check(rc_ == 0, "the loop does not close: %s", tpio_err_name(rc_));        \
        th_fx.loop = NULL;                                                         \
    } while (0)
#define CR_CHECK(cond, ...) cr_assert(cond, __VA_ARGS__)

void th_fx_renew_loop(void)
{
    cr_assert_not_null(th_fx.loop);
    FX_CLOSE_LOOP(CR_CHECK);
    memset(&th_fx.rep, 0, sizeof th_fx.rep);
    fx_new_loop();
}

void th_fx_close_loop(void)
{
    cr_assert_not_null(th_fx.loop);
    FX_CLOSE_LOOP(CR_CHECK);
}

void *th_fx_own_with(void *p, void (*free_fn)(void *))
{
    cr_assert_lt(th_fx.nowned, TH_FX_MAX_OWNED);
    th_fx.owned[th_fx.nowned].p = p;
    th_fx.owned[th_fx.nowned].free = free_fn;
    th_fx.nowned++;
    return p;
}

static void proto_free(void *p) { th_proto_free(p); }

th_proto_t *th_fx_own(th_proto_t *p)
{
    return th_fx_own_with(p, proto_free);
}

const char *th_fx_dir(void)
{
    if (!th_fx.dir[0]) {
        snprintf(th_fx.dir, sizeof th_fx.dir, "/tmp/tpio-test-XXXXXX");
        cr_assert_not_null(mkdtemp(th_fx.dir), "mkdtemp: %s", strerror(errno));
    }
    return th_fx.dir;
}

void th_fx_fini(void)
{
    th_pair_t *pr = th_fx.pair;
    if (pr) {
        /* th_pair_finish(), with checks that count in teardown */
        FX_CHECK(th_run_until(pr->loop, &pr->p->lost, TH_TMO), "no connection_lost; events=%s",
                 pr->p->events);
        if (pr->peer >= 0)
            close(pr->peer);
        /* run a little more so any (erroneous) late callback would show */
        for (int i = 0; i < 3; i++)
            tpio_loop_run_once(pr->loop, 0);
        th_proto_free(pr->p);
        free(pr);
        th_fx.pair = NULL;
    }
    if (th_fx.loop)
        FX_CLOSE_LOOP(FX_CHECK);
    for (size_t i = 0; i < th_fx.nowned; i++)
        th_fx.owned[i].free(th_fx.owned[i].p);
    th_fx.nowned = 0;
    if (th_fx.dir[0])
        FX_CHECK(rmdir(th_fx.dir) == 0, "directory %s not empty: %s", th_fx.dir,
                 strerror(errno));
    th_fx.dir[0] = '\0';
}

/* ---- the stream socket kinds: TCP and Unix ------------------------------ */

static th_pair_t *unix_pair(const tpio_protocol_ops_t *ops, const th_proto_t *knobs)
{
    return th_unix_pair(ops, knobs, NULL, 0, false);
}

static int tcp_server(tpio_protocol_factory_t factory, void *arg, tpio_server_t **out)
{
    tpio_server_opts_t o = {.size = sizeof o, .host = "127.0.0.1", .port = 0};
    int rc = tpio_loop_create_server(th_fx.loop, factory, arg, &o, out);
    if (rc == 0) {
        th_fx.srv_addrlen = sizeof th_fx.srv_addr;
        cr_assert_eq(tpio_server_get_sockname(*out, 0, &th_fx.srv_addr, &th_fx.srv_addrlen), 0);
    }
    return rc;
}

static int tcp_connection(tpio_protocol_factory_t factory, void *arg, tpio_connect_cb_t cb,
                          void *cb_arg)
{
    const struct sockaddr_in *a = (const struct sockaddr_in *)&th_fx.srv_addr;
    cr_assert_eq(a->sin_family, AF_INET);
    tpio_connect_opts_t o = {.size = sizeof o, .host = "127.0.0.1", .port = ntohs(a->sin_port)};
    return tpio_loop_create_connection(th_fx.loop, factory, arg, &o, cb, cb_arg, NULL);
}

/* The socket file of the server a test makes: s.sock, s1.sock... */
static const char *unix_server_path(void)
{
    static char path[128];
    static unsigned n;
    if (n == 0)
        snprintf(path, sizeof path, "%s/s.sock", th_fx_dir());
    else
        snprintf(path, sizeof path, "%s/s%u.sock", th_fx_dir(), n);
    n++;
    return path;
}

static int unix_server(tpio_protocol_factory_t factory, void *arg, tpio_server_t **out)
{
    const char *path = unix_server_path();
    tpio_unix_opts_t o = {.size = sizeof o, .path = path};
    int rc = tpio_loop_create_unix_server(th_fx.loop, factory, arg, &o, out);
    if (rc == 0) {
        struct sockaddr_un *a = (struct sockaddr_un *)&th_fx.srv_addr;
        memset(a, 0, sizeof *a);
        a->sun_family = AF_UNIX;
        cr_assert_lt(strlen(path), sizeof a->sun_path);
        strcpy(a->sun_path, path);
        th_fx.srv_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
    }
    return rc;
}

static int unix_connection(tpio_protocol_factory_t factory, void *arg, tpio_connect_cb_t cb,
                           void *cb_arg)
{
    const struct sockaddr_un *a = (const struct sockaddr_un *)&th_fx.srv_addr;
    cr_assert_eq(a->sun_family, AF_UNIX);
    tpio_unix_opts_t o = {.size = sizeof o, .path = a->sun_path};
    return tpio_loop_create_unix_connection(th_fx.loop, factory, arg, &o, cb, cb_arg, NULL);
}

const th_kind_t th_kinds[TH_NKINDS] = {
    [TH_TCP] = {.name = "tcp", .kind = TPIO_TRANSPORT_TCP, .family = AF_INET,
                .gone_err = -ECONNREFUSED, .pair = th_tcp_pair,
                .create_server = tcp_server, .create_connection = tcp_connection},
    [TH_UNIX] = {.name = "unix", .kind = TPIO_TRANSPORT_UNIX, .family = AF_UNIX,
                 .gone_err = -ENOENT, .pair = unix_pair,
                 .create_server = unix_server, .create_connection = unix_connection},
};

int th_client_connect(int rcvbuf)
{
    int fd = socket(th_fx.srv_addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    if (rcvbuf > 0)
        cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    if (connect(fd, (const struct sockaddr *)&th_fx.srv_addr, th_fx.srv_addrlen) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}
