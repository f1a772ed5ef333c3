/*
 * Which backend a loop runs: the loop option, the TPIO_BACKEND variable,
 * auto's choice, and what happens where io_uring cannot be set up (a
 * seccomp filter refusing io_uring_setup with EPERM, as container runtimes'
 * default profiles do, installed in the test's own worker process).
 * Everything else runs on both backends: ctest runs every test file twice.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The backend of a new loop made with backend `which`, or the error. */
static int backend_of(tpio_backend_t which, char *name, size_t len)
{
    tpio_loop_opts_t o = TPIO_OPTS(tpio_loop_opts_t);
    o.backend = which;
    tpio_loop_t *loop = NULL;
    int rc = tpio_loop_new(&loop, &o);
    if (rc < 0)
        return rc;
    const char *n = NULL;
    cr_assert_eq(tpio_loop_get_backend(loop, &n), 0);
    cr_assert_not_null(n);
    snprintf(name, len, "%s", n);
    cr_assert_eq(tpio_loop_close(loop), 0);
    return 0;
}

/* What io_uring_setup answers here: 0, or the kernel's refusal. */
static int kernel_uring(void)
{
    struct {
        uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features,
            wq_fd, resv[3];
        uint64_t off[10];
    } p;
    memset(&p, 0, sizeof p);
    long fd = syscall(SYS_io_uring_setup, 4, &p);
    if (fd < 0)
        return -errno;
    close((int)fd);
    return 0;
}

static void set_env(const char *v)
{
    if (v)
        cr_assert_eq(setenv("TPIO_BACKEND", v, 1), 0);
    else
        cr_assert_eq(unsetenv("TPIO_BACKEND"), 0);
}

Test(backend, option_and_environment, .timeout = 10)
{
    char n[16];
    set_env(NULL);
    cr_assert_eq(backend_of(TPIO_BACKEND_AUTO, n, sizeof n), 0);
    cr_assert_str_eq(n, "epoll", "auto's choice");
    cr_assert_eq(backend_of(TPIO_BACKEND_EPOLL, n, sizeof n), 0);
    cr_assert_str_eq(n, "epoll");
    int k = kernel_uring(); /* a machine may refuse io_uring: then so must tpio */
    cr_assert_eq(backend_of(TPIO_BACKEND_IO_URING, n, sizeof n), k);
    if (k == 0)
        cr_assert_str_eq(n, "io_uring");

    set_env("io_uring");
    cr_assert_eq(backend_of(TPIO_BACKEND_AUTO, n, sizeof n), k);
    if (k == 0)
        cr_assert_str_eq(n, "io_uring");
    cr_assert_eq(backend_of(TPIO_BACKEND_EPOLL, n, sizeof n), 0);
    cr_assert_str_eq(n, "epoll", "the option wins over the variable");
    set_env("epoll");
    cr_assert_eq(backend_of(TPIO_BACKEND_AUTO, n, sizeof n), 0);
    cr_assert_str_eq(n, "epoll");
    cr_assert_eq(backend_of(TPIO_BACKEND_IO_URING, n, sizeof n), k);
    set_env("auto");
    cr_assert_eq(backend_of(TPIO_BACKEND_AUTO, n, sizeof n), 0);
    cr_assert_str_eq(n, "epoll");
    set_env("no-such-backend");
    cr_assert_eq(backend_of(TPIO_BACKEND_AUTO, n, sizeof n), 0);
    cr_assert_str_eq(n, "epoll", "an unknown name counts as auto");
    set_env(NULL);
}

Test(backend, bad_arguments, .timeout = 10)
{
    tpio_loop_opts_t o = TPIO_OPTS(tpio_loop_opts_t);
    o.backend = (tpio_backend_t)3;
    tpio_loop_t *loop = NULL;
    cr_assert_eq(tpio_loop_new(&loop, &o), -EINVAL);
    o.backend = (tpio_backend_t)-1;
    cr_assert_eq(tpio_loop_new(&loop, &o), -EINVAL);
    cr_assert_null(loop);
    cr_assert_eq(tpio_loop_new(&loop, NULL), 0);
    const char *n = "unchanged";
    cr_assert_eq(tpio_loop_get_backend(NULL, &n), -EINVAL);
    cr_assert_str_eq(n, "unchanged");
    cr_assert_eq(tpio_loop_get_backend(loop, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* io_uring_setup refused with EPERM from here on, in this process only. */
static void refuse_io_uring(void) { th_seccomp_refuse(SYS_io_uring_setup); }

static void count_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    ++*(int *)arg;
}

Test(backend, io_uring_refused_by_seccomp, .timeout = 10)
{
    refuse_io_uring();
    char n[16];
    set_env(NULL);
    cr_assert_eq(backend_of(TPIO_BACKEND_IO_URING, n, sizeof n), -EPERM,
                 "asked for by name: the kernel's refusal");
    set_env("io_uring");
    cr_assert_eq(backend_of(TPIO_BACKEND_AUTO, n, sizeof n), -EPERM);
    set_env(NULL);
    /* auto never fails for want of it, and the loop works */
    tpio_loop_t *loop = NULL;
    cr_assert_eq(tpio_loop_new(&loop, NULL), 0);
    const char *name;
    cr_assert_eq(tpio_loop_get_backend(loop, &name), 0);
    cr_assert_str_eq(name, "epoll");
    int calls = 0;
    cr_assert_eq(tpio_loop_call_soon(loop, count_cb, &calls, NULL), 0);
    cr_assert_eq(tpio_loop_run_once(loop, 0), 0);
    cr_assert_eq(calls, 1);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* The ring is the loop's alone: a child the program starts (tpio's own
 * subprocesses, or a fork and exec of the user's) must not inherit it. */
Test(backend, ring_is_close_on_exec, .timeout = 10)
{
    if (kernel_uring() < 0) {
        /* refused here: nothing to inherit, and the loop runs on epoll */
        char name[32];
        cr_assert_eq(backend_of(TPIO_BACKEND_AUTO, name, sizeof name), 0);
        cr_assert_str_eq(name, "epoll");
        return;
    }
    tpio_loop_opts_t o = TPIO_OPTS(tpio_loop_opts_t);
    o.backend = TPIO_BACKEND_IO_URING;
    tpio_loop_t *loop = NULL;
    cr_assert_eq(tpio_loop_new(&loop, &o), 0);
    int rings = 0;
    for (int fd = 0; fd < 1024; fd++) {
        char path[64], target[128];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n < 0)
            continue;
        target[n] = 0;
        if (strstr(target, "io_uring")) {
            rings++;
            cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC, "ring fd %d is inherited", fd);
        }
    }
    cr_assert_geq(rings, 1);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* With TPIO_URING_OPS=0 a ring loop waits for readiness as epoll does:
 * the stream transport then sends inside write, and the suite's other
 * expectations are epoll's. */
Test(backend, ring_without_operations_sends_inside_write, .timeout = 10)
{
    if (kernel_uring() < 0)
        return; /* refused: option_and_environment covers the fallback */
    set_env("io_uring");
    cr_assert_eq(setenv("TPIO_URING_OPS", "0", 1), 0);
    th_pair_t *pr = th_tcp_pair(NULL, NULL);
    cr_assert_not(th_ring_ops(pr->loop));
    cr_assert_eq(tpio_transport_write(pr->t, "abc", 3), 0);
    cr_assert_eq(th_wbuf_size(pr->t), 0);
    char buf[4] = {0};
    cr_assert_eq(th_peer_recv_exact(pr, buf, 3), 3);
    cr_assert_str_eq(buf, "abc");
    cr_assert_eq(unsetenv("TPIO_URING_OPS"), 0);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
    set_env(NULL);
}

/* With operations a busy loop's write is copied and sent from the loop
 * (TPIO_URING_BATCH=1: however quiet the loop): nothing reaches the peer
 * before the loop runs, and abort() before then drops it all — the kernel
 * never sees the send. */
Test(backend, ring_write_waits_for_the_loop_and_abort_drops_it, .timeout = 10)
{
    if (kernel_uring() < 0)
        return;
    set_env("io_uring");
    cr_assert_eq(setenv("TPIO_URING_BATCH", "1", 1), 0);
    th_pair_t *pr = th_tcp_pair(NULL, NULL);
    cr_assert(th_ring_ops(pr->loop));
    char msg[] = "never";
    cr_assert_eq(tpio_transport_write(pr->t, msg, 5), 0);
    memset(msg, 'X', sizeof msg - 1);
    cr_assert_eq(th_wbuf_size(pr->t), 5);
    cr_assert_eq(tpio_transport_abort(pr->t), 0);
    cr_assert_eq(th_wbuf_size(pr->t), 0);
    cr_assert(th_run_until(pr->loop, &pr->p->lost, 5));
    cr_assert_str_eq(pr->p->events, "made,lost:0");
    char c;
    cr_assert_eq(recv(pr->peer, &c, 1, 0), 0, "the peer got bytes of an aborted write");
    th_pair_finish(pr);
    set_env(NULL);
}

static void note_readable(tpio_loop_t *loop, int fd, void *arg)
{
    (void)loop, (void)fd;
    ++*(int *)arg;
}

/* A loop that is not batching (its last wait brought one completion) sends
 * a small write at once, as epoll does: the ring's send would cost the same
 * syscalls and more time. A loop whose last wait brought several copies it
 * and sends it with the next submission. */
Test(backend, ring_quiet_loop_sends_at_once_busy_loop_waits, .timeout = 10)
{
    if (kernel_uring() < 0)
        return;
    set_env("io_uring");
    cr_assert_eq(unsetenv("TPIO_URING_BATCH"), 0);
    th_pair_t *pr = th_tcp_pair(NULL, NULL);
    cr_assert(th_ring_ops(pr->loop));
    th_peer_send(pr, "a", 1);
    cr_assert(th_pair_run_until_rx(pr, pr->p, 1));
    cr_assert_eq(tpio_transport_write(pr->t, "hello", 5), 0);
    cr_assert_eq(th_wbuf_size(pr->t), 0, "a quiet loop sends inside the call");
    struct pollfd pf = {.fd = pr->peer, .events = POLLIN};
    cr_assert_eq(poll(&pf, 1, 0), 1, "not sent inside the call");
    char buf[8];
    cr_assert_eq(recv(pr->peer, buf, sizeof buf, 0), 5);
    cr_assert_eq(memcmp(buf, "hello", 5), 0);

    /* busy: a readable pipe and the peer's bytes in one wait */
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    cr_assert_eq(write(fds[1], "x", 1), 1);
    int readable = 0;
    cr_assert_eq(tpio_loop_add_reader(pr->loop, fds[0], note_readable, &readable), 0);
    th_peer_send(pr, "b", 1);
    cr_assert_eq(tpio_loop_run_once(pr->loop, 5.0), 0);
    cr_assert_eq(readable, 1);
    cr_assert_eq(pr->p->rxlen, 2, "the two completions came apart");
    cr_assert_eq(tpio_transport_write(pr->t, "world", 5), 0);
    cr_assert_eq(th_wbuf_size(pr->t), 5, "a busy loop's write waits for the submission");
    cr_assert_eq(poll(&pf, 1, 0), 0, "sent before the loop ran");
    bool removed = false;
    cr_assert_eq(tpio_loop_remove_reader(pr->loop, fds[0], &removed), 0);
    cr_assert(removed);
    cr_assert_eq(th_peer_recv_exact(pr, buf, 5), 5);
    cr_assert_eq(memcmp(buf, "world", 5), 0);
    for (int i = 0; i < 100 && th_wbuf_size(pr->t); i++) /* the send's completion */
        tpio_loop_run_once(pr->loop, 0.01);
    cr_assert_eq(th_wbuf_size(pr->t), 0);
    close(fds[0]);
    close(fds[1]);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
    set_env(NULL);
}

/* A loop may be run by one thread after another (asyncio allows it), and a
 * ring the kernel ties to one thread (SINGLE_ISSUER) moves with the loop:
 * what was under way in the old ring — a send the kernel held back, a
 * receive, a cancelled receive whose end had not come — carries on, with
 * every byte once and in order. */
struct on_thread {
    th_pair_t *pr;
    size_t got;
    int err;
    bool resume;
    bool rx;
};

static void *drain_on_thread(void *arg)
{
    struct on_thread *a = arg;
    a->got = th_peer_drain_pattern(a->pr, 0, a->pr->wtotal, false, &a->err);
    return NULL;
}

static void *resume_on_thread(void *arg)
{
    struct on_thread *a = arg;
    a->resume = tpio_transport_resume_reading(a->pr->t) == 0;
    a->rx = th_pair_run_until_rx(a->pr, a->pr->p, 8);
    return NULL;
}

Test(backend, ring_loop_moves_to_the_thread_that_runs_it, .timeout = 30)
{
    if (kernel_uring() < 0)
        return;
    set_env("io_uring");
    th_pair_t *pr = th_tcp_pair(NULL, NULL);
    cr_assert(th_ring_ops(pr->loop));
    th_shrink_bufs(pr);
    th_fill_until_buffered(pr); /* a send in flight that the kernel holds */
    cr_assert_gt(th_wbuf_size(pr->t), 0);

    pthread_t th;
    struct on_thread a = {.pr = pr};
    cr_assert_eq(pthread_create(&th, NULL, drain_on_thread, &a), 0);
    cr_assert_eq(pthread_join(th, NULL), 0);
    cr_assert_eq(a.got, pr->wtotal);
    cr_assert_eq(a.err, 1);
    cr_assert_eq(th_wbuf_size(pr->t), 0);

    /* back on this thread, which the loop left: the receive goes on */
    th_peer_send(pr, "ping", 4);
    cr_assert(th_pair_run_until_rx(pr, pr->p, 4));

    /* the receive's cancel is under way (its end not yet seen) when the
     * loop moves: nothing is delivered while paused, all of it after */
    cr_assert_eq(tpio_transport_pause_reading(pr->t), 0);
    th_peer_send(pr, "pong", 4);
    cr_assert_eq(pthread_create(&th, NULL, resume_on_thread, &a), 0);
    cr_assert_eq(pthread_join(th, NULL), 0);
    cr_assert(a.resume);
    cr_assert(a.rx);
    cr_assert_eq(pr->p->rxlen, 8);
    cr_assert_eq(memcmp(pr->p->rx, "pingpong", 8), 0);

    cr_assert_eq(tpio_transport_close(pr->t), 0);
    cr_assert(th_run_until(pr->loop, &pr->p->lost, 5));
    cr_assert_str_eq(pr->p->events, "made,data,lost:0");
    th_pair_finish(pr);
    set_env(NULL);
}

/* A completion queue far smaller than what is ready at once (lost
 * completions under many connections were libuv#4598): the kernel keeps
 * what overflows, and every completion still reaches its owner — every
 * echo comes back whole, every round. TPIO_URING_ENTRIES=2 makes the ring
 * 2 submissions and 4 completions deep, and 64 connections receive at once. */
Test(backend, ring_completion_queue_overflow_loses_nothing, .timeout = 60)
{
    if (kernel_uring() < 0)
        return;
    enum { N = 64, ROUNDS = 8, LEN = 700 };
    set_env("io_uring");
    cr_assert_eq(setenv("TPIO_URING_ENTRIES", "2", 1), 0);
    tpio_loop_t *loop = NULL;
    cr_assert_eq(tpio_loop_new(&loop, NULL), 0);
    cr_assert_eq(unsetenv("TPIO_URING_ENTRIES"), 0);
    size_t lost = 0;
    th_proto_t tmpl = {.base.ops = &th_proto_ops, .echo = true, .free_on_lost = true,
                       .lost_counter = &lost};
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t);
    so.host = "127.0.0.1";
    tpio_server_t *srv = NULL;
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, &tmpl, &so, &srv), 0);
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    cr_assert_eq(tpio_server_get_sockname(srv, 0, &sa, &sl), 0);

    int c[N];
    for (int i = 0; i < N; i++) {
        c[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_geq(c[i], 0);
        cr_assert_eq(connect(c[i], (struct sockaddr *)&sa, sl), 0);
    }
    double end = th_now_s() + 10;
    while (th_conn_count(srv) < N && th_now_s() < end)
        tpio_loop_run_once(loop, 0.05);
    cr_assert_eq(th_conn_count(srv), N);

    unsigned char out[LEN], in[LEN];
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < N; i++) {
            for (int k = 0; k < LEN; k++)
                out[k] = (unsigned char)(r * 31 + i * 7 + k);
            cr_assert_eq(send(c[i], out, LEN, 0), LEN);
        }
        for (int i = 0; i < N; i++) {
            size_t got = 0;
            end = th_now_s() + 10;
            while (got < LEN && th_now_s() < end) {
                ssize_t n = recv(c[i], in + got, LEN - got, MSG_DONTWAIT);
                if (n > 0)
                    got += (size_t)n;
                else
                    tpio_loop_run_once(loop, 0.01);
            }
            cr_assert_eq(got, LEN, "round %d, connection %d: %zu bytes back", r, i, got);
            for (int k = 0; k < LEN; k++)
                cr_assert_eq(in[k], (unsigned char)(r * 31 + i * 7 + k));
        }
    }
    for (int i = 0; i < N; i++)
        close(c[i]);
    end = th_now_s() + 10;
    while (lost < N && th_now_s() < end)
        tpio_loop_run_once(loop, 0.05);
    cr_assert_eq(lost, N);
    cr_assert_eq(tpio_server_close(srv), 0);
    bool closed = false;
    cr_assert_eq(tpio_server_wait_closed(srv, th_done_flag, &closed, NULL), 0);
    cr_assert(th_run_until(loop, &closed, 5));
    cr_assert_eq(tpio_loop_close(loop), 0);
    set_env(NULL);
}

/* A connect the kernel has begun when the loop moves to another thread
 * (the SYN was dropped: the listener's queue is full) is not begun again
 * (that would say EALREADY): the new ring waits for it to end, and the
 * connection is made. */
struct connect_on_thread {
    tpio_loop_t *loop;
    int lfd;
    th_conn_t c;
};

static void *finish_connect_on_thread(void *arg)
{
    struct connect_on_thread *a = arg;
    double end = th_now_s() + 15;
    while (!a->c.done && th_now_s() < end) {
        tpio_loop_run_once(a->loop, 0.05);
        int fd = accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            close(fd); /* room in the queue: the retransmitted SYN gets in */
    }
    return NULL;
}

Test(backend, ring_connect_under_way_moves_with_the_loop, .timeout = 30)
{
    if (kernel_uring() < 0)
        return;
    set_env("io_uring");
    tpio_loop_t *loop = NULL;
    cr_assert_eq(tpio_loop_new(&loop, NULL), 0);
    cr_assert(th_ring_ops(loop));
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, sl), 0);
    cr_assert_eq(listen(lfd, 0), 0); /* the queue holds one */
    cr_assert_eq(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
    int filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(filler, (struct sockaddr *)&sa, sl), 0);

    struct connect_on_thread a = {.loop = loop, .lfd = lfd};
    tpio_connect_opts_t o = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1",
                                      .port = ntohs(sa.sin_port));
    cr_assert_eq(tpio_loop_create_connection(loop, th_factory, NULL, &o, th_on_conn, &a.c, NULL),
                 0);
    th_run_iters(loop, 3); /* submitted: the kernel's SYN went, and was dropped */
    cr_assert_not(a.c.done, "connected past a full queue: %s", tpio_err_name(a.c.err));
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, finish_connect_on_thread, &a), 0);
    cr_assert_eq(pthread_join(th, NULL), 0);
    cr_assert(a.c.done);
    cr_assert_eq(a.c.err, 0, "%s", tpio_err_name(a.c.err));
    cr_assert_eq(tpio_transport_close(a.c.t), 0);
    cr_assert(th_run_until(loop, &a.c.p->lost, 5));
    th_proto_free(a.c.p);
    close(filler);
    close(lfd);
    th_run_iters(loop, 2);
    cr_assert_eq(tpio_loop_close(loop), 0);
    set_env(NULL);
}
