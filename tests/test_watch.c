/*
 * Descriptor watchers (asyncio's add_reader / add_writer / remove_reader /
 * remove_writer): any pollable descriptor, one reader and one writer per
 * descriptor, replacement, removal and closing from inside callbacks, and
 * the descriptors tpio's own objects use refused both ways.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

/* A log of callbacks: "r<fd>" / "w<fd>", comma-separated. */
struct log {
    char s[512];
    int reads, writes;
    int last_fd;
    void *last_arg;
};

static void add_ev(struct log *l, const char *e)
{
    size_t n = strlen(l->s);
    snprintf(l->s + n, sizeof l->s - n, "%s%s", n ? "," : "", e);
}

static struct log *g_log;

static void on_read(tpio_loop_t *loop, int fd, void *arg)
{
    (void)loop;
    char e[16];
    snprintf(e, sizeof e, "r%d", fd);
    add_ev(g_log, e);
    g_log->reads++;
    g_log->last_fd = fd;
    g_log->last_arg = arg;
    /* consume what made it readable: an eventfd's count (8 bytes), a
     * signalfd's siginfo (128), inotify events */
    char buf[4096] __attribute__((aligned(8)));
    if (read(fd, buf, sizeof buf) < 0)
        (void)0;
}

static void on_read_other(tpio_loop_t *loop, int fd, void *arg)
{
    (void)loop, (void)arg;
    char e[16];
    snprintf(e, sizeof e, "R%d", fd);
    add_ev(g_log, e);
    uint64_t v;
    if (read(fd, &v, sizeof v) < 0)
        (void)0;
}

static void on_write(tpio_loop_t *loop, int fd, void *arg)
{
    (void)loop, (void)arg;
    char e[16];
    snprintf(e, sizeof e, "w%d", fd);
    add_ev(g_log, e);
    g_log->writes++;
}

static void spin_until_reads(tpio_loop_t *loop, int n)
{
    double end = th_now_s() + TH_TMO;
    while (g_log->reads < n && th_now_s() < end)
        tpio_loop_run_once(loop, 0.01);
    cr_assert_eq(g_log->reads, n, "reads %d, want %d (%s)", g_log->reads, n, g_log->s);
}

Test(watch, eventfd_reader, .timeout = 10)
{
    struct log l = {0};
    g_log = &l;
    tpio_loop_t *loop = th_new_loop();
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int tag;
    cr_assert_eq(tpio_loop_add_reader(loop, efd, on_read, &tag), 0);
    th_run_iters(loop, 3);
    cr_assert_eq(l.reads, 0, "not readable yet");
    uint64_t one = 1;
    cr_assert_eq(write(efd, &one, sizeof one), 8);
    cr_assert(!l.reads, "nothing runs inside the write");
    spin_until_reads(loop, 1);
    cr_assert_eq(l.last_fd, efd);
    cr_assert_eq(l.last_arg, &tag);
    /* level-triggered: again each time it is readable */
    cr_assert_eq(write(efd, &one, sizeof one), 8);
    spin_until_reads(loop, 2);

    /* adding again replaces the callback */
    cr_assert_eq(tpio_loop_add_reader(loop, efd, on_read_other, NULL), 0);
    cr_assert_eq(write(efd, &one, sizeof one), 8);
    double end = th_now_s() + TH_TMO;
    while (!strstr(l.s, "R") && th_now_s() < end)
        tpio_loop_run_once(loop, 0.01);
    char want[64];
    snprintf(want, sizeof want, "r%d,r%d,R%d", efd, efd, efd);
    cr_assert_str_eq(l.s, want);

    bool removed = false;
    cr_assert_eq(tpio_loop_remove_reader(loop, efd, &removed), 0);
    cr_assert(removed);
    cr_assert_eq(tpio_loop_remove_reader(loop, efd, &removed), 0);
    cr_assert_not(removed, "nothing left to remove");
    cr_assert_eq(tpio_loop_remove_writer(loop, efd, &removed), 0);
    cr_assert_not(removed);
    cr_assert_eq(tpio_loop_remove_reader(loop, efd, NULL), 0, "removed may be NULL");
    cr_assert_eq(write(efd, &one, sizeof one), 8);
    th_run_iters(loop, 5);
    cr_assert_str_eq(l.s, want, "no callback after remove");
    close(efd);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* The descriptors a C program typically has to watch besides sockets. */
Test(watch, timerfd_signalfd_inotify, .timeout = 10)
{
    struct log l = {0};
    g_log = &l;
    tpio_loop_t *loop = th_new_loop();

    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct itimerspec its = {.it_value = {.tv_nsec = 1000000}};
    cr_assert_eq(timerfd_settime(tfd, 0, &its, NULL), 0);
    cr_assert_eq(tpio_loop_add_reader(loop, tfd, on_read, NULL), 0);
    spin_until_reads(loop, 1);
    cr_assert_eq(l.last_fd, tfd);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    cr_assert_eq(pthread_sigmask(SIG_BLOCK, &set, NULL), 0);
    int sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    cr_assert_geq(sfd, 0);
    cr_assert_eq(tpio_loop_add_reader(loop, sfd, on_read, NULL), 0);
    cr_assert_eq(raise(SIGUSR2), 0);
    spin_until_reads(loop, 2);
    cr_assert_eq(l.last_fd, sfd);

    int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    char dir[] = "/tmp/tpio-watch-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_geq(inotify_add_watch(ifd, dir, IN_CREATE), 0);
    cr_assert_eq(tpio_loop_add_reader(loop, ifd, on_read, NULL), 0);
    char path[64];
    snprintf(path, sizeof path, "%s/f", dir);
    int f = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    close(f);
    spin_until_reads(loop, 3);
    cr_assert_eq(l.last_fd, ifd);
    unlink(path);
    rmdir(dir);

    /* watchers left at close are dropped with the loop (ASan: no leak) */
    cr_assert_eq(tpio_loop_close(loop), 0);
    close(tfd);
    close(sfd);
    close(ifd);
}

Test(watch, writer_on_a_pipe, .timeout = 10)
{
    struct log l = {0};
    g_log = &l;
    tpio_loop_t *loop = th_new_loop();
    int p[2];
    cr_assert_eq(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    cr_assert_eq(tpio_loop_add_writer(loop, p[1], on_write, NULL), 0);
    double end = th_now_s() + TH_TMO;
    while (!l.writes && th_now_s() < end)
        tpio_loop_run_once(loop, 0.01);
    cr_assert_eq(l.writes, 1);
    /* reader and writer on one descriptor pair: both stay */
    cr_assert_eq(tpio_loop_add_reader(loop, p[0], on_read, NULL), 0);
    cr_assert_eq(write(p[1], "12345678", 8), 8);
    spin_until_reads(loop, 1);
    bool removed;
    cr_assert_eq(tpio_loop_remove_writer(loop, p[1], &removed), 0);
    cr_assert(removed);
    int w = l.writes;
    th_run_iters(loop, 3);
    cr_assert_eq(l.writes, w, "no writer after remove");
    cr_assert_eq(tpio_loop_remove_reader(loop, p[0], &removed), 0);
    cr_assert(removed);
    close(p[0]);
    close(p[1]);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* One descriptor with both directions ready in the same event. */
struct both {
    tpio_loop_t *loop;
    int fd;
    int reads, writes;
    enum { REMOVE_WRITER, REMOVE_ALL_AND_CLOSE, REMOVE_SELF } mode;
};

static void both_read(tpio_loop_t *loop, int fd, void *arg)
{
    struct both *b = arg;
    b->reads++;
    char buf[16];
    if (recv(fd, buf, sizeof buf, 0) < 0)
        (void)0;
    bool removed = false;
    switch (b->mode) {
    case REMOVE_WRITER:
        cr_assert_eq(tpio_loop_remove_writer(loop, fd, &removed), 0);
        cr_assert(removed);
        break;
    case REMOVE_ALL_AND_CLOSE:
        cr_assert_eq(tpio_loop_remove_reader(loop, fd, &removed), 0);
        cr_assert(removed);
        cr_assert_eq(tpio_loop_remove_writer(loop, fd, &removed), 0);
        cr_assert(removed);
        close(fd);
        b->fd = -1;
        break;
    case REMOVE_SELF:
        cr_assert_eq(tpio_loop_remove_reader(loop, fd, &removed), 0);
        cr_assert(removed);
        break;
    }
}

static void both_write(tpio_loop_t *loop, int fd, void *arg)
{
    (void)fd;
    struct both *b = arg;
    b->writes++;
    if (b->mode == REMOVE_SELF)
        cr_assert_eq(tpio_loop_remove_writer(loop, fd, NULL), 0);
}

static void run_both(int mode, int want_reads, int want_writes)
{
    tpio_loop_t *loop = th_new_loop();
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    cr_assert_eq(send(sv[1], "x", 1, 0), 1); /* sv[0]: readable and writable */
    struct both b = {.loop = loop, .fd = sv[0], .mode = mode};
    cr_assert_eq(tpio_loop_add_reader(loop, sv[0], both_read, &b), 0);
    cr_assert_eq(tpio_loop_add_writer(loop, sv[0], both_write, &b), 0);
    cr_assert_eq(tpio_loop_run_once(loop, 1), 0);
    cr_assert_eq(b.reads, 1);
    cr_assert_eq(b.writes, want_writes, "mode %d: writer ran %d times", mode, b.writes);
    th_run_iters(loop, 3);
    cr_assert_eq(b.reads, want_reads);
    if (b.fd >= 0) {
        tpio_loop_remove_reader(loop, b.fd, NULL);
        tpio_loop_remove_writer(loop, b.fd, NULL);
        close(b.fd);
    }
    close(sv[1]);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

Test(watch, reader_removes_the_writer_in_the_same_event, .timeout = 10)
{
    run_both(REMOVE_WRITER, 1, 0);
}

Test(watch, reader_removes_both_and_closes, .timeout = 10)
{
    run_both(REMOVE_ALL_AND_CLOSE, 1, 0);
}

Test(watch, each_removes_itself, .timeout = 10)
{
    /* the writer still runs in the event where the reader removed itself */
    run_both(REMOVE_SELF, 1, 1);
}

/* A descriptor closed under a watch and its number reused: the new
 * descriptor is watched afresh. */
Test(watch, closed_under_watch_and_reused, .timeout = 10)
{
    struct log l = {0};
    g_log = &l;
    tpio_loop_t *loop = th_new_loop();
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    cr_assert_eq(tpio_loop_add_reader(loop, efd, on_read, NULL), 0);
    close(efd); /* the kernel forgets it; the watcher stays */
    int again = eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
    cr_assert_eq(again, efd, "the number is reused");
    cr_assert_eq(tpio_loop_add_writer(loop, again, on_write, NULL), 0);
    double end = th_now_s() + TH_TMO;
    while ((!l.reads || !l.writes) && th_now_s() < end)
        tpio_loop_run_once(loop, 0.01);
    cr_assert_gt(l.reads, 0);
    cr_assert_gt(l.writes, 0);
    cr_assert_eq(tpio_loop_remove_reader(loop, again, NULL), 0);
    cr_assert_eq(tpio_loop_remove_writer(loop, again, NULL), 0);
    close(again);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

static void on_conn_never(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                          void *arg)
{
    (void)loop, (void)t, (void)p, (void)err, (void)arg;
    cr_assert_fail("no completion for a refused call");
}

Test(watch, refused_descriptors, .timeout = 10)
{
    tpio_loop_t *loop = th_new_loop();
    bool removed = true;
    cr_assert_eq(tpio_loop_add_reader(loop, -1, on_read, NULL), -EBADF);
    cr_assert_eq(tpio_loop_add_writer(loop, -5, on_write, NULL), -EBADF);
    cr_assert_eq(tpio_loop_remove_reader(loop, -1, &removed), -EBADF);
    cr_assert_eq(tpio_loop_add_reader(NULL, 0, on_read, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_add_reader(loop, 0, NULL, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_remove_writer(NULL, 0, &removed), -EINVAL);
    cr_assert(removed, "untouched on error");

    /* a regular file cannot be polled */
    char path[] = "/tmp/tpio-watch-file-XXXXXX";
    int f = mkstemp(path);
    unlink(path);
    cr_assert_eq(tpio_loop_add_reader(loop, f, on_read, NULL), TPIO_ENOTWATCHABLE);
    cr_assert_eq(tpio_loop_remove_reader(loop, f, &removed), 0);
    cr_assert_not(removed, "a refused add leaves nothing");
    close(f);

    /* a transport's and a server's descriptors are tpio's */
    th_pair_t *pr = th_tcp_pair(NULL, NULL);
    int tfd = th_fd(pr->t);
    cr_assert_eq(tpio_loop_add_reader(pr->loop, tfd, on_read, NULL), TPIO_EFDINUSE);
    cr_assert_eq(tpio_loop_add_writer(pr->loop, tfd, on_write, NULL), TPIO_EFDINUSE);
    bool was = true;
    cr_assert_eq(tpio_loop_remove_reader(pr->loop, tfd, &was), TPIO_EFDINUSE);
    cr_assert_eq(tpio_loop_remove_writer(pr->loop, tfd, &was), TPIO_EFDINUSE);
    tpio_server_t *s;
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1");
    cr_assert_eq(tpio_loop_create_server(pr->loop, th_factory, NULL, &so, &s), 0);
    int lfd = th_server_socket(s, 0);
    cr_assert_eq(tpio_loop_add_reader(pr->loop, lfd, on_read, NULL), TPIO_EFDINUSE);
    cr_assert_eq(tpio_server_close(s), 0);

    /* and the other way: a watched descriptor is not given to a transport */
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct log l = {0};
    g_log = &l;
    cr_assert_eq(tpio_loop_add_reader(pr->loop, sv[0], on_read, NULL), 0);
    cr_assert_eq(tpio_loop_connect_accepted_socket(pr->loop, th_factory, NULL, sv[0], NULL,
                                                   on_conn_never, NULL, NULL),
                 TPIO_EFDINUSE);
    cr_assert_eq(fcntl(sv[0], F_GETFD), FD_CLOEXEC, "the descriptor is untouched");
    cr_assert_eq(tpio_loop_remove_reader(pr->loop, sv[0], &removed), 0);
    cr_assert(removed);
    /* the same descriptor handed over twice: the second is refused at once */
    th_conn_t c = {0};
    cr_assert_eq(tpio_loop_connect_accepted_socket(pr->loop, th_factory, NULL, sv[0], NULL,
                                                   th_on_conn, &c, NULL),
                 0);
    cr_assert_eq(tpio_loop_connect_accepted_socket(pr->loop, th_factory, NULL, sv[0], NULL,
                                                   on_conn_never, NULL, NULL),
                 TPIO_EFDINUSE);
    cr_assert_eq(tpio_loop_add_reader(pr->loop, sv[0], on_read, NULL), TPIO_EFDINUSE);
    cr_assert(th_run_until(pr->loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_run_until(pr->loop, &c.p->lost, TH_TMO));
    th_proto_free(c.p);
    /* once the transport is gone, the number is free again */
    int pp[2];
    cr_assert_eq(pipe2(pp, O_CLOEXEC), 0);
    close(sv[1]);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
    close(pp[0]);
    close(pp[1]);
    close(tfd); /* closed by the transport already: EBADF, harmless */
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* A descriptor freed by a transport can be watched afterwards. */
Test(watch, descriptor_free_after_its_transport, .timeout = 10)
{
    struct log l = {0};
    g_log = &l;
    tpio_loop_t *loop = th_new_loop();
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    th_conn_t c = {0};
    cr_assert_eq(tpio_loop_connect_accepted_socket(loop, th_factory, NULL, sv[0], NULL, th_on_conn, &c, NULL),
                 0);
    cr_assert(th_run_until(loop, &c.done, TH_TMO));
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_run_until(loop, &c.p->lost, TH_TMO));
    th_proto_free(c.p);
    int efd = eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
    cr_assert_eq(efd, sv[0], "the transport's number, closed and reused");
    cr_assert_eq(tpio_loop_add_reader(loop, efd, on_read, NULL), 0);
    spin_until_reads(loop, 1);
    cr_assert_eq(tpio_loop_remove_reader(loop, efd, NULL), 0);
    close(efd);
    close(sv[1]);
    cr_assert_eq(tpio_loop_close(loop), 0);
}
