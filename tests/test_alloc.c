/*
 * The allocator hook, and what happens when memory runs out.
 *
 * Every scenario (TCP connect + echo + close, a Unix socket, both pipes, a
 * UDP endpoint, a subprocess with three pipes, timers and call_soon) is run
 * once for every N with an allocator that fails the Nth allocation the
 * library makes, N = 1, 2, ... until a run completes without reaching N. At
 * every N: each call that fails returns -ENOMEM, each connection ends with
 * one connection_lost (of 0, -ENOMEM, or what the peer's end of a failed
 * connection gives), nothing crashes, the loop then runs the same scenario
 * again without failures, and once the loop is closed every allocation made
 * through the hook has been freed (ASan checks the rest).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include "helpers.h"
#ifdef TPIO_TEST_TLS
#include "tls_helpers.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- a counting allocator that can fail the Nth call ---------------------- */

static atomic_long g_calls;   /* allocations asked for */
static atomic_long g_fail_at; /* the call number that fails (0: none) */
static atomic_long g_failed;  /* allocations refused */
static atomic_long g_live;    /* blocks allocated and not freed */
static long g_n;              /* the N of the run under way, for messages */

static bool should_fail(void)
{
    long n = atomic_fetch_add(&g_calls, 1) + 1;
    if (n == atomic_load(&g_fail_at)) {
        atomic_fetch_add(&g_failed, 1);
        return true;
    }
    return false;
}

static void *t_malloc(size_t n)
{
    if (should_fail())
        return NULL;
    void *p = malloc(n);
    if (p)
        atomic_fetch_add(&g_live, 1);
    return p;
}

static void *t_calloc(size_t c, size_t n)
{
    if (should_fail())
        return NULL;
    void *p = calloc(c, n);
    if (p)
        atomic_fetch_add(&g_live, 1);
    return p;
}

static void *t_realloc(void *old, size_t n)
{
    if (should_fail())
        return NULL;
    void *p = realloc(old, n);
    if (p && !old)
        atomic_fetch_add(&g_live, 1);
    return p;
}

static void t_free(void *p)
{
    if (p)
        atomic_fetch_sub(&g_live, 1);
    free(p);
}

static const tpio_allocator_t counting = {t_malloc, t_calloc, t_realloc, t_free};

static void fail_nth(long n)
{
    atomic_store(&g_calls, 0);
    atomic_store(&g_failed, 0);
    atomic_store(&g_fail_at, n);
}

/* Stop failing; what failed so far stays counted. */
static void stop_faults(void) { atomic_store(&g_fail_at, 0); }

static void install(void)
{
    cr_assert_eq(tpio_set_allocator(&counting), 0);
    atomic_store(&g_live, 0);
    fail_nth(0);
}

/* ---- the API ------------------------------------------------------------------ */

Test(alloc, set_allocator_rules, .timeout = 10)
{
    tpio_allocator_t partial = counting;
    partial.realloc = NULL;
    cr_assert_eq(tpio_set_allocator(&partial), -EINVAL);
    install();
    tpio_loop_t *loop = th_new_loop();
    cr_assert_gt(atomic_load(&g_live), 0, "the loop's memory came from the hook");
    /* memory of one allocator must be freed by the same */
    cr_assert_eq(tpio_set_allocator(NULL), -EBUSY);
    cr_assert_eq(tpio_set_allocator(&counting), -EBUSY);
    tpio_loop_t *second = th_new_loop();
    cr_assert_eq(tpio_loop_close(loop), 0);
    cr_assert_eq(tpio_set_allocator(NULL), -EBUSY, "a loop is still alive");
    cr_assert_eq(tpio_loop_close(second), 0);
    cr_assert_eq(atomic_load(&g_live), 0, "everything allocated was freed");
    cr_assert_eq(tpio_set_allocator(NULL), 0);
    long before = atomic_load(&g_calls);
    loop = th_new_loop();
    cr_assert_eq(atomic_load(&g_calls), before, "the C library's allocator again");
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* A loop that cannot be created says -ENOMEM and leaves nothing behind. */
Test(alloc, loop_new_fails_cleanly, .timeout = 10)
{
    install();
    for (long n = 1;; n++) {
        fail_nth(n);
        tpio_loop_t *loop = NULL;
        int rc = tpio_loop_new(&loop, NULL);
        fail_nth(0);
        if (rc == 0) {
            cr_assert_eq(tpio_loop_close(loop), 0);
            cr_assert_eq(atomic_load(&g_live), 0);
            if (atomic_load(&g_failed) == 0)
                break;
            continue;
        }
        cr_assert_eq(rc, -ENOMEM, "N=%ld: %s", n, tpio_err_name(rc));
        cr_assert_null(loop);
        cr_assert_eq(atomic_load(&g_live), 0, "N=%ld: leaked", n);
        cr_assert_eq(tpio_set_allocator(&counting), 0, "N=%ld: no loop is left", n);
    }
}

/* ---- the scenarios --------------------------------------------------------------- */

/* What a run saw; a scenario is done when every connection it started has
 * ended. */
struct run {
    tpio_loop_t *loop;
    bool faults;        /* failures were injected: outcomes may fall short */
    bool tls;           /* TLS: a peer's failed handshake ends the other's too */
    bool cancels;       /* completions may say -ECANCELED (a shutdown) */
    int made, lost;     /* connections made / lost (every protocol) */
    int completions;    /* completion callbacks */
    int pending;        /* completions still to come */
    int echoed;         /* clients that got their echo back */
    int expected;       /* echoes a run without failures gets */
    int code_errors;    /* codes outside what the scenario allows */
    char last_bad[96];
    tpio_server_t *server;
    bool server_closed;
    tpio_transport_t *peer; /* udp: the echoing endpoint */
    int children_exited;
};

static bool allowed(int err)
{
    return err == 0 || err == -ENOMEM || err == -ECONNRESET || err == -EPIPE;
}

static void check_code(struct run *r, const char *what, int err)
{
    if ((r->faults ? allowed(err) : err == 0) || (r->cancels && err == -ECANCELED))
        return;
    if (r->faults && r->tls &&
        (err == TPIO_ETLS || err == TPIO_ETLS_EOF || err == -ECONNABORTED))
        return;
    r->code_errors++;
    snprintf(r->last_bad, sizeof r->last_bad, "%s: %s", what, tpio_err_name(err));
}

/* A call: -ENOMEM is the only failure allowed, and only with faults. */
static bool call_ok(struct run *r, const char *what, int rc)
{
    if (rc == 0)
        return true;
    if (!(r->faults && rc == -ENOMEM)) {
        r->code_errors++;
        snprintf(r->last_bad, sizeof r->last_bad, "%s returned %s", what, tpio_err_name(rc));
    }
    return false;
}

/* One protocol for every role: a client sends "ping" and closes once it is
 * echoed; a server echoes; a reader counts a "ping" it receives; a sink
 * does nothing. */
enum role { CLIENT, SERVER, READER, SINK, SUBPROC, BULK };

/* Bulk clients send this much in one write, more than the socket takes. */
#define BULK (512 * 1024)
static unsigned char g_bulk[BULK];
/* Inside a call of the library made by the test: no callback of the error
 * handler may run then. */
static bool g_in_call;

static int write_in_call(tpio_transport_t *t, const void *d, size_t n)
{
    g_in_call = true;
    int rc = tpio_transport_write(t, d, n);
    g_in_call = false;
    return rc;
}

static void on_report(tpio_loop_t *loop, const tpio_error_context_t *ctx, void *arg)
{
    (void)loop;
    cr_assert_not(g_in_call, "the error handler ran inside the caller's call: %s",
                  ctx->message);
    ((th_reports_t *)arg)->count++;
}

struct proto {
    tpio_protocol_t base;
    struct run *run;
    enum role role;
    tpio_transport_t *t;
    char rx[16];
    size_t rxlen, bulk_rx;
};

static struct proto *PR(tpio_protocol_t *p) { return tpio_container_of(p, struct proto, base); }

static tpio_transport_t *g_last_transport;

static void p_made(tpio_protocol_t *bp, tpio_transport_t *t)
{
    struct proto *p = PR(bp);
    p->t = t;
    g_last_transport = t;
    p->run->made++;
    if (p->role == BULK) {
        int small = 4096;
        int fd;
        cr_assert_eq(tpio_transport_get_fd(t, &fd), 0);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
        int rc = write_in_call(t, g_bulk, BULK);
        if (!call_ok(p->run, "bulk write", rc))
            return; /* the connection is lost already */
        bool closing = true;
        cr_assert_eq(tpio_transport_is_closing(t, &closing), 0);
        cr_assert_not(closing);
    } else if (p->role == CLIENT) {
        tpio_transport_kind_t kind;
        cr_assert_eq(tpio_transport_get_kind(t, &kind), 0);
        int rc = kind == TPIO_TRANSPORT_DATAGRAM ? tpio_datagram_sendto(t, "ping", 4, NULL, 0)
                                                 : tpio_transport_write(t, "ping", 4);
        if (!call_ok(p->run, "write", rc))
            tpio_transport_abort(t);
    }
}

static void got(struct proto *p, const void *d, size_t n)
{
    if (p->rxlen + n <= sizeof p->rx) {
        memcpy(p->rx + p->rxlen, d, n);
        p->rxlen += n;
    }
    if (p->role == SERVER) {
        int rc = write_in_call(p->t, d, n);
        call_ok(p->run, "echo write", rc);
    } else if (p->role == BULK) {
        cr_assert_eq(memcmp(d, g_bulk + p->bulk_rx, n), 0, "echoed bytes differ");
        p->bulk_rx += n;
        if (p->bulk_rx == BULK) {
            p->run->echoed++;
            tpio_transport_close(p->t);
        }
    } else if (p->role == CLIENT && p->rxlen == 4) {
        if (memcmp(p->rx, "ping", 4) == 0)
            p->run->echoed++;
        tpio_transport_close(p->t);
    } else if (p->role == READER && p->rxlen == 4 && memcmp(p->rx, "ping", 4) == 0) {
        p->run->echoed++;
    }
}

static void p_data(tpio_protocol_t *bp, const void *d, size_t n) { got(PR(bp), d, n); }

static void p_dgram(tpio_protocol_t *bp, const void *d, size_t n, const struct sockaddr *a,
                    socklen_t alen)
{
    struct proto *p = PR(bp);
    if (p->role == SERVER) {
        int rc = tpio_datagram_sendto(p->t, d, n, a, alen);
        call_ok(p->run, "sendto", rc);
        tpio_transport_close(p->t);
        return;
    }
    got(p, d, n);
}

static void p_error(tpio_protocol_t *bp, int err) { check_code(PR(bp)->run, "error_received", err); }

static void p_lost(tpio_protocol_t *bp, int err)
{
    struct proto *p = PR(bp);
    p->run->lost++;
    check_code(p->run, "connection_lost", err);
    if (g_last_transport == p->t)
        g_last_transport = NULL;
    free(p);
}

static void p_pipe_data(tpio_protocol_t *bp, int fd, const void *d, size_t n)
{
    (void)fd;
    struct proto *p = PR(bp);
    if (p->rxlen + n <= sizeof p->rx) {
        memcpy(p->rx + p->rxlen, d, n);
        p->rxlen += n;
    }
    if (p->rxlen == 4 && memcmp(p->rx, "ping", 4) == 0)
        p->run->echoed++;
}

static void p_pipe_lost(tpio_protocol_t *bp, int fd, int err)
{
    (void)fd;
    check_code(PR(bp)->run, "pipe_connection_lost", err);
}

static void p_exited(tpio_protocol_t *bp) { PR(bp)->run->children_exited++; }

static const tpio_protocol_ops_t ops = {
    .connection_made = p_made,
    .connection_lost = p_lost,
    .data_received = p_data,
    .datagram_received = p_dgram,
    .error_received = p_error,
    .pipe_data_received = p_pipe_data,
    .pipe_connection_lost = p_pipe_lost,
    .process_exited = p_exited,
};

struct factory_arg {
    struct run *run;
    enum role role;
};

static tpio_protocol_t *factory(void *arg)
{
    struct factory_arg *fa = arg;
    struct proto *p = calloc(1, sizeof *p); /* the test's memory, not the library's */
    cr_assert_not_null(p);
    p->base.ops = &ops;
    p->run = fa->run;
    p->role = fa->role;
    return &p->base;
}

static void on_conn(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                    void *arg)
{
    (void)loop;
    (void)p;
    struct run *r = arg;
    r->completions++;
    r->pending--;
    check_code(r, "completion", err);
    if (err == 0) {
        struct proto *pp = PR(p);
        cr_assert_eq(pp->t, t, "connection_made ran before the completion");
    }
}

static void on_closed(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop;
    cr_assert_eq(err, 0);
    ((struct run *)arg)->server_closed = true;
}

static bool settled(const struct run *r)
{
    return r->pending == 0 && r->made == r->lost;
}

/* Run until everything the scenario started has ended. */
static void run_to_end(struct run *r, const char *name)
{
    double end = th_now_s() + 10;
    while (!settled(r) && th_now_s() < end)
        tpio_loop_run_once(r->loop, 0.01);
    cr_assert(settled(r), "%s N=%ld: did not end: %d pending completions, %d made, %d lost",
              name, g_n, r->pending, r->made, r->lost);
}

static void close_server(struct run *r)
{
    if (!r->server)
        return;
    cr_assert_eq(tpio_server_close(r->server), 0);
    int rc = tpio_server_wait_closed(r->server, on_closed, r, NULL);
    if (rc == -ENOMEM) {
        /* the waiter could not be allocated: closing still ends the server */
        cr_assert(r->faults);
        r->server_closed = true;
    } else {
        cr_assert_eq(rc, 0);
    }
    double end = th_now_s() + 10;
    while (!r->server_closed && th_now_s() < end)
        tpio_loop_run_once(r->loop, 0.01);
    cr_assert(r->server_closed);
    r->server = NULL;
}

static struct factory_arg fa_client, fa_server, fa_sink, fa_sub;

static void roles(struct run *r)
{
    fa_client = (struct factory_arg){r, CLIENT};
    fa_server = (struct factory_arg){r, SERVER};
    fa_sink = (struct factory_arg){r, SINK};
    fa_sub = (struct factory_arg){r, SUBPROC};
}

static void scen_tcp(struct run *r)
{
    roles(r);
    r->expected = 1;
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1");
    if (!call_ok(r, "create_server",
                 tpio_loop_create_server(r->loop, factory, &fa_server, &so, &r->server)))
        return;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(r->server, 0, &ss, &sl), 0);
    tpio_connect_opts_t co = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1",
                                       .port = ntohs(((struct sockaddr_in *)&ss)->sin_port));
    if (call_ok(r, "create_connection",
                tpio_loop_create_connection(r->loop, factory, &fa_client, &co, on_conn, r, NULL)))
        r->pending++;
    run_to_end(r, "tcp");
    close_server(r);
}

/* TCP again, with a write the kernel cannot take at once: the write buffer
 * allocates (an echo server's too). */
static void scen_bulk(struct run *r)
{
    roles(r);
    for (size_t i = 0; i < BULK; i++)
        g_bulk[i] = (unsigned char)(i * 7 + (i >> 9));
    static struct factory_arg bulk;
    bulk = (struct factory_arg){r, BULK};
    r->expected = 1;
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1");
    if (!call_ok(r, "create_server",
                 tpio_loop_create_server(r->loop, factory, &fa_server, &so, &r->server)))
        return;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(r->server, 0, &ss, &sl), 0);
    tpio_connect_opts_t co = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1",
                                       .port = ntohs(((struct sockaddr_in *)&ss)->sin_port));
    if (call_ok(r, "create_connection",
                tpio_loop_create_connection(r->loop, factory, &bulk, &co, on_conn, r, NULL)))
        r->pending++;
    run_to_end(r, "bulk");
    close_server(r);
}

static void scen_unix(struct run *r)
{
    roles(r);
    r->expected = 1;
    char path[64];
    snprintf(path, sizeof path, "/tmp/tpio-alloc-%d.sock", getpid());
    tpio_unix_opts_t so = TPIO_OPTS(tpio_unix_opts_t, .path = path);
    if (!call_ok(r, "create_unix_server",
                 tpio_loop_create_unix_server(r->loop, factory, &fa_server, &so, &r->server)))
        return;
    tpio_unix_opts_t co = TPIO_OPTS(tpio_unix_opts_t, .path = path);
    if (call_ok(r, "create_unix_connection",
                tpio_loop_create_unix_connection(r->loop, factory, &fa_client, &co, on_conn, r, NULL)))
        r->pending++;
    run_to_end(r, "unix");
    close_server(r);
    unlink(path);
}

/* A write pipe sends "ping" and closes; the read pipe receives it and EOF. */
struct pipes_ctx {
    struct run *r;
    tpio_transport_t *w;
};

static void on_write_pipe(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                          void *arg)
{
    struct run *r = arg;
    on_conn(loop, t, p, err, r);
    if (err == 0) {
        int rc = tpio_transport_write(t, "ping", 4);
        call_ok(r, "pipe write", rc);
        tpio_transport_close(t);
    }
}

static void scen_pipes(struct run *r)
{
    roles(r);
    r->expected = 1;
    int fds[2];
    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
    static struct factory_arg reader, writer;
    reader = (struct factory_arg){r, READER};
    writer = (struct factory_arg){r, SINK};
    bool rd = call_ok(r, "connect_read_pipe",
                      tpio_loop_connect_read_pipe(r->loop, factory, &reader, fds[0], on_conn, r, NULL));
    if (rd)
        r->pending++;
    else
        close(fds[0]);
    bool wr = call_ok(r, "connect_write_pipe",
                      tpio_loop_connect_write_pipe(r->loop, factory, &writer, fds[1],
                                                   on_write_pipe, r, NULL));
    if (wr)
        r->pending++;
    else
        close(fds[1]);
    run_to_end(r, "pipes");
}

static void on_udp_server(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                          void *arg)
{
    struct run *r = arg;
    on_conn(loop, t, p, err, r);
    r->peer = t;
}

/* A client that never came would leave the echoing end waiting. */
static void on_udp_client(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                          void *arg)
{
    struct run *r = arg;
    on_conn(loop, t, p, err, r);
    if (err)
        tpio_transport_close(r->peer);
}

static void scen_udp(struct run *r)
{
    roles(r);
    r->expected = 1;
    /* the echoing endpoint first, bound; the client connects to it */
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t al = sizeof a;
    cr_assert_eq(getsockname(s, (struct sockaddr *)&a, &al), 0);
    tpio_datagram_opts_t so = TPIO_OPTS(tpio_datagram_opts_t, .use_sock = TPIO_ON, .sock = s);
    if (!call_ok(r, "datagram server",
                 tpio_loop_create_datagram_endpoint(r->loop, factory, &fa_server, &so,
                                                    on_udp_server, r, NULL))) {
        close(s);
        return;
    }
    /* the client only once the echoing end exists: a datagram sent to no
     * one would be waited for forever */
    r->pending++;
    double end = th_now_s() + 10;
    while (r->pending && th_now_s() < end)
        tpio_loop_run_once(r->loop, 0.01);
    cr_assert_eq(r->pending, 0, "udp: the server endpoint's completion never came");
    if (r->made == r->lost)
        return;
    tpio_datagram_opts_t co = TPIO_OPTS(tpio_datagram_opts_t, .remote_host = "127.0.0.1",
                                        .remote_port = ntohs(a.sin_port));
    if (call_ok(r, "datagram client", tpio_loop_create_datagram_endpoint(
                                          r->loop, factory, &fa_client, &co, on_udp_client, r, NULL)))
        r->pending++;
    else
        tpio_transport_close(r->peer);
    run_to_end(r, "udp");
}

/* cat with three pipes: "ping" to stdin, then close it; stdout echoes. */
static void on_proc(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                    void *arg)
{
    struct run *r = arg;
    on_conn(loop, t, p, err, r);
    if (err)
        return;
    tpio_transport_t *in;
    cr_assert_eq(tpio_subprocess_get_pipe_transport(t, 0, &in), 0);
    int rc = tpio_transport_write(in, "ping", 4);
    call_ok(r, "stdin write", rc);
    tpio_transport_close(in);
}

static void scen_subprocess(struct run *r)
{
    roles(r);
    r->expected = 1;
    const char *argv[] = {"cat", NULL};
    int rc = tpio_loop_subprocess_exec(r->loop, factory, &fa_sub, argv, NULL, on_proc, r);
    if (rc == 0)
        r->pending++;
    else
        cr_assert(r->faults && (rc == -ENOMEM || rc == -EAGAIN), "subprocess_exec: %s",
                  tpio_err_name(rc));
    run_to_end(r, "subprocess");
}

/* Timers, call_soon, cancel and call_soon_threadsafe: each callback that
 * was accepted runs once, each cancelled one never. */
struct cb_ctx {
    struct run *r;
    int ran, accepted;
    bool bad;
};

static void cb_count(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    ((struct cb_ctx *)arg)->ran++;
}

static void cb_never(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    ((struct cb_ctx *)arg)->bad = true;
}

static void *ts_thread(void *arg)
{
    struct cb_ctx *c = arg;
    int rc = tpio_loop_call_soon_threadsafe(c->r->loop, cb_count, c);
    return (void *)(intptr_t)rc;
}

static void scen_timers(struct run *r)
{
    struct cb_ctx c = {.r = r};
    r->expected = 1;
    for (int i = 0; i < 100; i++) { /* enough to grow the slot array twice */
        if (call_ok(r, "call_soon", tpio_loop_call_soon(r->loop, cb_count, &c, NULL)))
            c.accepted++;
        if (call_ok(r, "call_later", tpio_loop_call_later(r->loop, 0.001 * (i % 5), cb_count,
                                                         &c, NULL)))
            c.accepted++;
    }
    tpio_handle_t h;
    if (call_ok(r, "call_later", tpio_loop_call_later(r->loop, 0.002, cb_never, &c, &h)))
        cr_assert_eq(tpio_loop_cancel(r->loop, h), 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, ts_thread, &c), 0);
    void *res;
    pthread_join(th, &res);
    if (call_ok(r, "call_soon_threadsafe", (int)(intptr_t)res))
        c.accepted++;
    double end = th_now_s() + 10;
    while (c.ran < c.accepted && th_now_s() < end)
        tpio_loop_run_once(r->loop, 0.01);
    cr_assert_eq(c.ran, c.accepted, "every accepted callback runs once");
    cr_assert_not(c.bad, "a cancelled callback ran");
    r->echoed = 1;
}

/* sendfile over a Unix socketpair, a descriptor watcher and a signal
 * handler: each call may fail with -ENOMEM only; what was accepted works. */
struct extra_ctx {
    struct run *r;
    bool sent, watched;
    int send_err;
};

static void x_sent(tpio_loop_t *loop, tpio_transport_t *t, uint64_t sent, int err, void *arg)
{
    (void)loop, (void)t, (void)sent;
    struct extra_ctx *x = arg;
    x->sent = true;
    x->send_err = err;
}

static void x_fd(tpio_loop_t *loop, int fd, void *arg)
{
    struct extra_ctx *x = arg;
    x->watched = true;
    tpio_loop_remove_reader(loop, fd, NULL);
}

static void x_sig(tpio_loop_t *loop, int sig, void *arg) { (void)loop, (void)sig, (void)arg; }

static void scen_extras(struct run *r)
{
    roles(r);
    r->expected = 1;
    struct extra_ctx x = {.r = r};
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    th_conn_t c = {0};
    struct factory_arg sink = {r, SINK};
    bool have = call_ok(r, "connect_accepted_socket",
                        tpio_loop_connect_accepted_socket(r->loop, factory, &sink, sv[0], NULL,
                                                          on_conn, r, NULL));
    if (have)
        r->pending++;
    else
        close(sv[0]);
    (void)c;
    double end = th_now_s() + 10;
    while (r->pending && th_now_s() < end)
        tpio_loop_run_once(r->loop, 0.01);
    /* the transport, found through its peer: the one the factory made */
    int file = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    cr_assert_geq(file, 0);
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
    if (call_ok(r, "add_reader", tpio_loop_add_reader(r->loop, p[0], x_fd, &x)))
        cr_assert_eq(write(p[1], "x", 1), 1);
    else
        x.watched = true;
    bool sig = call_ok(r, "add_signal_handler",
                       tpio_loop_add_signal_handler(r->loop, SIGUSR1, x_sig, NULL));
    if (g_last_transport && r->made > r->lost) {
        if (call_ok(r, "sendfile", tpio_loop_sendfile(r->loop, g_last_transport, file, 0, 100000,
                                                      TPIO_DEFAULT, x_sent, &x, NULL)))
            ; /* completes below */
        else
            x.sent = true;
    } else {
        x.sent = true;
    }
    end = th_now_s() + 10;
    char buf[65536];
    while ((!x.sent || !x.watched) && th_now_s() < end) {
        tpio_loop_run_once(r->loop, 0.01);
        while (recv(sv[1], buf, sizeof buf, MSG_DONTWAIT) > 0)
            ;
    }
    cr_assert(x.sent && x.watched, "sendfile or the watcher never ended");
    check_code(r, "sendfile", x.send_err);
    if (sig)
        cr_assert_eq(tpio_loop_remove_signal_handler(r->loop, SIGUSR1, NULL), 0);
    if (g_last_transport && r->made > r->lost)
        tpio_transport_close(g_last_transport);
    tpio_loop_remove_reader(r->loop, p[0], NULL);
    close(p[0]);
    close(p[1]);
    close(file);
    run_to_end(r, "extras");
    close(sv[1]);
    r->echoed = 1;
    g_last_transport = NULL;
}

/* A server with a connection and a client, ended by shutdown. */
static void on_shut(tpio_loop_t *loop, int err, void *arg)
{
    (void)loop;
    struct run *r = arg;
    check_code(r, "shutdown", err);
    r->server_closed = true;
}

static void scen_shutdown(struct run *r)
{
    roles(r);
    r->expected = 1;
    static struct factory_arg sink;
    sink = (struct factory_arg){r, SINK};
    tpio_server_t *s;
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1");
    if (!call_ok(r, "create_server", tpio_loop_create_server(r->loop, factory, &sink, &so, &s)))
        return;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, 0, &ss, &sl), 0);
    tpio_connect_opts_t co = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1",
                                       .port = ntohs(((struct sockaddr_in *)&ss)->sin_port));
    if (call_ok(r, "create_connection",
                tpio_loop_create_connection(r->loop, factory, &sink, &co, on_conn, r, NULL)))
        r->pending++;
    /* shut down right away: the attempt may be anywhere */
    r->server_closed = false;
    r->cancels = true;
    cr_assert_eq(tpio_loop_shutdown(r->loop, TPIO_SHUTDOWN_CLOSE, on_shut, r), 0);
    double end = th_now_s() + 10;
    while (!r->server_closed && th_now_s() < end)
        tpio_loop_run_once(r->loop, 0.01);
    cr_assert(r->server_closed, "shutdown N=%ld never completed", g_n);
    cr_assert(settled(r), "after shutdown: %d pending, %d made, %d lost", r->pending, r->made,
              r->lost);
    r->echoed = 1;
}

typedef void (*scenario_fn)(struct run *r);

static long g_base; /* blocks that outlive loops (OpenSSL's own state) */

/* The scenario at every N; then, on the same loop, once more without
 * failures, which must fully succeed. */
static void inject(scenario_fn scen, const char *name)
{
    long n;
    for (n = 1;; n++) {
        g_n = n;
        tpio_loop_t *loop = NULL;
        fail_nth(n);
        int rc = tpio_loop_new(&loop, NULL);
        if (rc) {
            cr_assert_eq(rc, -ENOMEM);
            stop_faults();
            loop = th_new_loop();
        }
        th_reports_t reports = {0};
        cr_assert_eq(tpio_loop_set_error_handler(loop, on_report, &reports), 0);

        struct run faulty = {.loop = loop, .faults = true};
        scen(&faulty);
        bool hit = atomic_load(&g_failed) > 0;
        stop_faults();
        cr_assert_eq(faulty.code_errors, 0, "%s N=%ld: %s", name, n, faulty.last_bad);
        if (!hit)
            cr_assert_eq(faulty.echoed, faulty.expected, "%s: no failure, yet no echo", name);

        struct run clean = {.loop = loop};
        scen(&clean);
        cr_assert_eq(clean.code_errors, 0, "%s after N=%ld: %s", name, n, clean.last_bad);
        cr_assert_eq(clean.echoed, clean.expected, "%s after N=%ld: the loop no longer works",
                     name, n);

        double end = th_now_s() + 10;
        while ((rc = tpio_loop_close(loop)) == -EBUSY && th_now_s() < end)
            tpio_loop_run_once(loop, 0.01);
        cr_assert_eq(rc, 0, "%s N=%ld: the loop cannot close", name, n);
        cr_assert_eq(atomic_load(&g_live), g_base, "%s N=%ld: %ld blocks leaked", name, n,
                     atomic_load(&g_live) - g_base);
        if (!hit)
            break;
    }
    cr_log_info("%s: %ld allocations, every one failed once", name, n - 1);
    cr_assert_gt(n, 5, "%s allocates through the hook", name);
}

#define INJECT(scen, name) (install(), inject(scen, name))
Test(alloc, fail_each_allocation_tcp, .timeout = 120) { INJECT(scen_tcp, "tcp"); }
Test(alloc, fail_each_allocation_bulk, .timeout = 120) { INJECT(scen_bulk, "bulk"); }
Test(alloc, fail_each_allocation_unix, .timeout = 120) { INJECT(scen_unix, "unix"); }
Test(alloc, fail_each_allocation_pipes, .timeout = 120) { INJECT(scen_pipes, "pipes"); }
Test(alloc, fail_each_allocation_udp, .timeout = 120) { INJECT(scen_udp, "udp"); }
Test(alloc, fail_each_allocation_subprocess, .timeout = 120)
{
    INJECT(scen_subprocess, "subprocess");
}
Test(alloc, fail_each_allocation_timers, .timeout = 120) { INJECT(scen_timers, "timers"); }
Test(alloc, fail_each_allocation_extras, .timeout = 120) { INJECT(scen_extras, "extras"); }
Test(alloc, fail_each_allocation_shutdown, .timeout = 120)
{
    INJECT(scen_shutdown, "shutdown");
}

#ifdef TPIO_TEST_TLS
/* TLS over TCP: a handshake, an echo, close_notify both ways: every
 * allocation of the TLS layer fails once. OpenSSL's own cannot go through
 * the hook here: Criterion's libgit2 has initialised OpenSSL before any
 * test runs (tests/tls_route.c checks that they do in a program that sets
 * the allocator first). */
static SSL_CTX *g_sctx, *g_cctx;

static void scen_tls(struct run *r)
{
    roles(r);
    r->expected = 1;
    r->tls = true;
    tpio_tls_opts_t st = TPIO_OPTS(tpio_tls_opts_t, .ctx = g_sctx);
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1", .tls = &st);
    if (!call_ok(r, "create_server",
                 tpio_loop_create_server(r->loop, factory, &fa_server, &so, &r->server)))
        return;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(r->server, 0, &ss, &sl), 0);
    tpio_tls_opts_t ct = TPIO_OPTS(tpio_tls_opts_t, .ctx = g_cctx);
    tpio_connect_opts_t co =
        TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1",
                  .port = ntohs(((struct sockaddr_in *)&ss)->sin_port), .tls = &ct);
    if (call_ok(r, "create_connection",
                tpio_loop_create_connection(r->loop, factory, &fa_client, &co, on_conn, r, NULL)))
        r->pending++;
    run_to_end(r, "tls");
    close_server(r);
}

Test(alloc, fail_each_allocation_tls, .timeout = 240)
{
    install();
    g_sctx = th_tls_server_ctx(TLS1_3_VERSION, 0);
    g_cctx = th_tls_client_ctx(TLS1_3_VERSION, 0);
    /* no state that grows from one connection to the next */
    SSL_CTX_set_session_cache_mode(g_sctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(g_sctx, 0);
    /* what OpenSSL keeps for good appears in a first run */
    tpio_loop_t *loop = th_new_loop();
    struct run warm = {.loop = loop};
    scen_tls(&warm);
    cr_assert_eq(warm.echoed, 1, "%s", warm.last_bad);
    cr_assert_eq(tpio_loop_close(loop), 0);
    g_base = atomic_load(&g_live);
    inject(scen_tls, "tls");
    SSL_CTX_free(g_sctx);
    SSL_CTX_free(g_cctx);
}
#endif

/* With every slot of the loop's table taken and no memory to grow it, a
 * connection's end still comes: its connection_lost waits in the late list
 * and runs, after the callbacks queued before it. */
static int g_noop_runs;
static void noop(tpio_loop_t *loop, void *arg)
{
    (void)loop, (void)arg;
    g_noop_runs++;
}

Test(alloc, connection_lost_without_a_free_slot, .timeout = 20)
{
    install();
    tpio_loop_t *loop = th_new_loop();
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    th_conn_t c = {0};
    cr_assert_eq(tpio_loop_connect_accepted_socket(loop, th_factory, NULL, sv[0], NULL, th_on_conn, &c,
                                                   NULL),
                 0);
    cr_assert(th_run_until(loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0);
    /* fill the table: call_soon until it cannot grow */
    g_noop_runs = 0;
    int queued = 0;
    for (int i = 0; i < 100; i++, queued++)
        cr_assert_eq(tpio_loop_call_soon(loop, noop, NULL, NULL), 0);
    fail_nth(1); /* the next allocation fails, and only that one */
    int rc;
    while ((rc = tpio_loop_call_soon(loop, noop, NULL, NULL)) == 0)
        queued++;
    cr_assert_eq(rc, -ENOMEM);
    /* the table is full: its growth fails again as the connection ends */
    fail_nth(1);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert_gt(atomic_load(&g_failed), 0, "connection_lost asked for a slot");
    stop_faults();
    cr_assert(th_run_until(loop, &c.p->lost, TH_TMO), "connection_lost never came");
    cr_assert_eq(g_noop_runs, queued, "the callbacks queued before it ran first");
    th_proto_free(c.p);
    close(sv[1]);
    cr_assert_eq(tpio_loop_close(loop), 0);
    cr_assert_eq(atomic_load(&g_live), 0);
}
