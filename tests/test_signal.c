/*
 * Signal handlers (asyncio's add_signal_handler / remove_signal_handler):
 * run from the loop as ordinary callbacks, coalesced, one loop per signal,
 * the old disposition restored, threads and child processes.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct rec {
    int calls, last_sig;
    void *last_arg;
    bool in_loop;
    tpio_loop_t *loop;
};

static volatile sig_atomic_t g_in_raise;

static void on_sig(tpio_loop_t *loop, int sig, void *arg)
{
    struct rec *r = arg;
    cr_assert_not(g_in_raise, "the handler ran inside raise(): in signal context");
    r->calls++;
    r->last_sig = sig;
    r->last_arg = arg;
    r->in_loop = th_is_running(loop);
    /* anything of tpio may be called here */
    cr_assert_eq(tpio_loop_call_soon(loop, th_set_flag, &(bool){false}, NULL), 0);
}

static void raise_now(int sig)
{
    g_in_raise = 1;
    cr_assert_eq(raise(sig), 0);
    g_in_raise = 0;
}

static void run_until_calls(tpio_loop_t *loop, struct rec *r, int n)
{
    double end = th_now_s() + TH_TMO;
    while (r->calls < n && th_now_s() < end)
        tpio_loop_run_once(loop, 0.01);
    cr_assert_eq(r->calls, n);
}

static void (*disposition(int sig))(int)
{
    struct sigaction sa;
    cr_assert_eq(sigaction(sig, NULL, &sa), 0);
    return sa.sa_handler;
}

Test(signal, handler_runs_from_the_loop, .timeout = 10)
{
    tpio_loop_t *loop = th_new_loop();
    struct rec r = {0};
    cr_assert_eq(tpio_loop_add_signal_handler(loop, SIGUSR1, on_sig, &r), 0);
    raise_now(SIGUSR1);
    cr_assert_eq(r.calls, 0, "nothing before the loop runs");
    run_until_calls(loop, &r, 1);
    cr_assert_eq(r.last_sig, SIGUSR1);
    cr_assert_eq(r.last_arg, &r);
    cr_assert(r.in_loop);
    /* again, later */
    raise_now(SIGUSR1);
    run_until_calls(loop, &r, 2);
    bool removed = false;
    cr_assert_eq(tpio_loop_remove_signal_handler(loop, SIGUSR1, &removed), 0);
    cr_assert(removed);
    cr_assert_eq(tpio_loop_remove_signal_handler(loop, SIGUSR1, &removed), 0);
    cr_assert_not(removed);
    cr_assert_eq(disposition(SIGUSR1), SIG_DFL, "the default is back");
    cr_assert_eq(tpio_loop_close(loop), 0);
}

Test(signal, arrivals_before_the_loop_runs_coalesce, .timeout = 10)
{
    tpio_loop_t *loop = th_new_loop();
    struct rec r = {0};
    cr_assert_eq(tpio_loop_add_signal_handler(loop, SIGUSR2, on_sig, &r), 0);
    for (int i = 0; i < 5; i++)
        raise_now(SIGUSR2);
    run_until_calls(loop, &r, 1);
    th_run_iters(loop, 5);
    cr_assert_eq(r.calls, 1, "five arrivals before the loop ran: one call");
    /* a later wake-up of the loop for something else runs no handler */
    bool woken = false;
    cr_assert_eq(tpio_loop_call_soon_threadsafe(loop, th_set_flag, &woken), 0);
    cr_assert(th_run_until(loop, &woken, TH_TMO));
    th_run_iters(loop, 3);
    cr_assert_eq(r.calls, 1, "the handler ran again on an unrelated wake-up");
    cr_assert_eq(tpio_loop_close(loop), 0);
    cr_assert_eq(disposition(SIGUSR2), SIG_DFL, "closing the loop removes its handlers");
}

static struct rec *g_other;

static void on_sig_other(tpio_loop_t *loop, int sig, void *arg)
{
    (void)loop, (void)sig, (void)arg;
    g_other->calls += 100;
}

Test(signal, adding_again_replaces, .timeout = 10)
{
    tpio_loop_t *loop = th_new_loop();
    struct rec r = {0};
    g_other = &r;
    cr_assert_eq(tpio_loop_add_signal_handler(loop, SIGUSR1, on_sig, &r), 0);
    cr_assert_eq(tpio_loop_add_signal_handler(loop, SIGUSR1, on_sig_other, NULL), 0);
    raise_now(SIGUSR1);
    double end = th_now_s() + TH_TMO;
    while (r.calls == 0 && th_now_s() < end)
        tpio_loop_run_once(loop, 0.01);
    cr_assert_eq(r.calls, 100);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

Test(signal, refused_numbers, .timeout = 10)
{
    tpio_loop_t *loop = th_new_loop();
    struct rec r = {0};
    void (*segv)(int) = disposition(SIGSEGV); /* the sanitizer's, here */
    int bad[] = {0, -1, NSIG, NSIG + 10, SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGILL, SIGFPE};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(tpio_loop_add_signal_handler(loop, bad[i], on_sig, &r), -EINVAL,
                     "signal %d", bad[i]);
    cr_assert_eq(tpio_loop_add_signal_handler(loop, SIGUSR1, NULL, &r), -EINVAL);
    cr_assert_eq(tpio_loop_add_signal_handler(NULL, SIGUSR1, on_sig, &r), -EINVAL);
    bool removed = true;
    cr_assert_eq(tpio_loop_remove_signal_handler(loop, 0, &removed), -EINVAL);
    cr_assert_eq(tpio_loop_remove_signal_handler(loop, NSIG, &removed), -EINVAL);
    cr_assert_eq(tpio_loop_remove_signal_handler(NULL, SIGUSR1, &removed), -EINVAL);
    cr_assert(removed, "untouched on error");
    cr_assert_eq(tpio_loop_remove_signal_handler(loop, SIGUSR1, NULL), 0);
    cr_assert_eq(disposition(SIGSEGV), segv, "a refused signal is left alone");
    cr_assert_eq(tpio_loop_close(loop), 0);
}

Test(signal, one_loop_owns_a_signal, .timeout = 10)
{
    tpio_loop_t *a = th_new_loop(), *b = th_new_loop();
    struct rec ra = {0}, rb = {0};
    cr_assert_eq(tpio_loop_add_signal_handler(a, SIGUSR1, on_sig, &ra), 0);
    cr_assert_eq(tpio_loop_add_signal_handler(b, SIGUSR1, on_sig, &rb), -EBUSY);
    bool removed = true;
    cr_assert_eq(tpio_loop_remove_signal_handler(b, SIGUSR1, &removed), 0);
    cr_assert_not(removed, "b does not own it");
    raise_now(SIGUSR1);
    run_until_calls(a, &ra, 1);
    th_run_iters(b, 3);
    cr_assert_eq(rb.calls, 0);
    /* once a lets go, b may take it */
    cr_assert_eq(tpio_loop_remove_signal_handler(a, SIGUSR1, &removed), 0);
    cr_assert(removed);
    cr_assert_eq(tpio_loop_add_signal_handler(b, SIGUSR1, on_sig, &rb), 0);
    raise_now(SIGUSR1);
    run_until_calls(b, &rb, 1);
    th_run_iters(a, 3);
    cr_assert_eq(ra.calls, 1);
    cr_assert_eq(tpio_loop_close(a), 0);
    cr_assert_eq(tpio_loop_close(b), 0);
}

static volatile sig_atomic_t g_user_handler_ran;
static void user_handler(int sig)
{
    (void)sig;
    g_user_handler_ran = 1;
}

Test(signal, the_old_disposition_comes_back, .timeout = 10)
{
    struct sigaction mine = {.sa_handler = user_handler};
    cr_assert_eq(sigaction(SIGUSR1, &mine, NULL), 0);
    cr_assert_eq(signal(SIGUSR2, SIG_IGN) == SIG_ERR, 0);
    tpio_loop_t *loop = th_new_loop();
    struct rec r = {0};
    cr_assert_eq(tpio_loop_add_signal_handler(loop, SIGUSR1, on_sig, &r), 0);
    cr_assert_eq(tpio_loop_add_signal_handler(loop, SIGUSR2, on_sig, &r), 0);
    cr_assert_neq(disposition(SIGUSR1), user_handler);
    raise_now(SIGUSR1);
    run_until_calls(loop, &r, 1);
    cr_assert_not(g_user_handler_ran, "tpio's handler replaced it meanwhile");
    cr_assert_eq(tpio_loop_remove_signal_handler(loop, SIGUSR1, NULL), 0);
    cr_assert_eq(disposition(SIGUSR1), user_handler);
    raise(SIGUSR1);
    cr_assert(g_user_handler_ran);
    /* an ignored signal is ignored again after the loop closes */
    cr_assert_eq(tpio_loop_close(loop), 0);
    cr_assert_eq(disposition(SIGUSR2), SIG_IGN);
}

/* A thread of the program's own, with nothing blocked, receives the
 * signal: the handler still runs on the loop. */
static void *kill_from_thread(void *arg)
{
    (void)arg;
    kill(getpid(), SIGUSR1);
    return NULL;
}

static void *raise_in_thread(void *arg)
{
    (void)arg;
    sigset_t set; /* a new thread inherits its creator's mask */
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    raise(SIGUSR1); /* delivered to this very thread */
    return NULL;
}

Test(signal, works_with_other_threads, .timeout = 10)
{
    tpio_loop_t *loop = th_new_loop();
    struct rec r = {0};
    cr_assert_eq(tpio_loop_add_signal_handler(loop, SIGUSR1, on_sig, &r), 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, raise_in_thread, NULL), 0);
    pthread_join(th, NULL);
    run_until_calls(loop, &r, 1);
    cr_assert_eq(pthread_create(&th, NULL, kill_from_thread, NULL), 0);
    pthread_join(th, NULL);
    run_until_calls(loop, &r, 2);
    /* the loop's own thread blocks it: another thread takes it */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    cr_assert_eq(pthread_create(&th, NULL, raise_in_thread, NULL), 0);
    pthread_join(th, NULL);
    run_until_calls(loop, &r, 3);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* A child started by tpio sees SIGUSR1 at its default and nothing blocked:
 * /proc/self/status of the child says which signals it catches (SigCgt)
 * and blocks (SigBlk). */
struct child {
    char out[4096];
    size_t len;
    bool lost;
};

struct chproto {
    tpio_protocol_t base;
    struct child *c;
};

static void ch_data(tpio_protocol_t *p, int fd, const void *d, size_t n)
{
    (void)fd;
    struct child *c = tpio_container_of(p, struct chproto, base)->c;
    if (c->len + n < sizeof c->out) {
        memcpy(c->out + c->len, d, n);
        c->len += n;
    }
}

static void ch_lost(tpio_protocol_t *p, int err)
{
    (void)err;
    struct child *c = tpio_container_of(p, struct chproto, base)->c;
    c->lost = true;
}

static const tpio_protocol_ops_t ch_ops = {.pipe_data_received = ch_data,
                                           .connection_lost = ch_lost};

static tpio_protocol_t *ch_factory(void *arg)
{
    static struct chproto p;
    p.base.ops = &ch_ops;
    p.c = arg;
    return &p.base;
}

static void ch_started(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                       void *arg)
{
    (void)loop, (void)t, (void)p, (void)arg;
    cr_assert_eq(err, 0);
}

static unsigned long long mask_of(const char *status, const char *key)
{
    const char *at = strstr(status, key);
    cr_assert_not_null(at, "no %s in %s", key, status);
    return strtoull(at + strlen(key), NULL, 16);
}

Test(signal, children_get_default_dispositions, .timeout = 10)
{
    tpio_loop_t *loop = th_new_loop();
    struct rec r = {0};
    cr_assert_eq(tpio_loop_add_signal_handler(loop, SIGUSR1, on_sig, &r), 0);
    cr_assert_eq(tpio_loop_add_signal_handler(loop, SIGTERM, on_sig, &r), 0);
    struct child c = {0};
    const char *argv[] = {"cat", "/proc/self/status", NULL};
    tpio_subprocess_opts_t o = TPIO_OPTS(tpio_subprocess_opts_t);
    o.stdio[0].mode = TPIO_STDIO_DEVNULL;
    o.stdio[2].mode = TPIO_STDIO_INHERIT;
    cr_assert_eq(tpio_loop_subprocess_exec(loop, ch_factory, &c, argv, &o, ch_started, NULL), 0);
    cr_assert(th_run_until(loop, &c.lost, TH_TMO));
    c.out[c.len] = '\0';
    unsigned long long caught = mask_of(c.out, "SigCgt:"), blocked = mask_of(c.out, "SigBlk:");
    cr_assert_eq(caught & (1ull << (SIGUSR1 - 1)), 0, "the child catches SIGUSR1");
    cr_assert_eq(caught & (1ull << (SIGTERM - 1)), 0, "the child catches SIGTERM");
    cr_assert_eq(blocked, 0);
    cr_assert_eq(tpio_loop_close(loop), 0);
}
