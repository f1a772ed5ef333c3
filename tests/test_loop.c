/* The event loop: creation and close, call_soon / call_later / call_at order,
 * cancellation, time, run / run_once / stop, call_soon_threadsafe, the error
 * handler, bad arguments, and close refusing while objects are alive. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <semaphore.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <tpio.h>
#include "helpers.h"

/* Each test gets th_fx.loop; fini checks that it closes and saw no report. */
TestSuite(loop, .init = th_fx_init, .fini = th_fx_fini);

/* ------------------------------------------------------------------------- */
/* helpers                                                                   */
/* ------------------------------------------------------------------------- */

static void close_loop(tpio_loop_t *loop)
{
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* A recorder of callback ids, in call order. */
#define REC_MAX 4096
typedef struct rec {
    int ids[REC_MAX];
    double at[REC_MAX];
    size_t n;
    tpio_loop_t *loop;
} rec_t;

typedef struct rec_item {
    rec_t *rec;
    int id;
} rec_item_t;

static void rec_cb(tpio_loop_t *loop, void *arg)
{
    rec_item_t *it = arg;
    if (loop != it->rec->loop || it->rec->n >= REC_MAX)
        cr_assert_fail("rec_cb: wrong loop or too many calls");
    it->rec->at[it->rec->n] = th_time(loop);
    it->rec->ids[it->rec->n++] = it->id;
}

static void count_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    (*(size_t *)arg)++;
}

static void stop_cb(tpio_loop_t *loop, void *arg)
{
    (void)arg;
    tpio_loop_stop(loop);
}

static void never_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    (void)arg;
    cr_assert_fail("a cancelled / discarded callback ran");
}

/* ------------------------------------------------------------------------- */
/* creation and close                                                        */
/* ------------------------------------------------------------------------- */

Test(loop, new_and_close, .timeout = 30)
{
    cr_assert_not(th_is_running(th_fx.loop));
    cr_assert_geq(th_time(th_fx.loop), 0.0);
    th_fx_close_loop();
}

Test(loop, several_loops_are_independent, .timeout = 30)
{
    tpio_loop_t *a = th_fx.loop, *b = th_new_loop();
    cr_assert_neq(a, b);
    size_t ca = 0, cb = 0;
    cr_assert_eq(tpio_loop_call_soon(a, count_cb, &ca, NULL), 0);
    cr_assert_eq(tpio_loop_call_soon(b, count_cb, &cb, NULL), 0);
    cr_assert_eq(tpio_loop_call_soon(b, count_cb, &cb, NULL), 0);
    cr_assert_geq(tpio_loop_run_once(a, 0), 0);
    cr_assert_eq(ca, 1);
    cr_assert_eq(cb, 0);
    cr_assert_geq(tpio_loop_run_once(b, 0), 0);
    cr_assert_eq(cb, 2);
    close_loop(b);
}

Test(loop, close_discards_pending_callbacks_and_timers, .timeout = 30)
{
    for (int i = 0; i < 100; i++)
        cr_assert_eq(tpio_loop_call_soon(th_fx.loop, never_cb, NULL, NULL), 0);
    for (int i = 0; i < 100; i++)
        cr_assert_eq(tpio_loop_call_later(th_fx.loop, 100.0 + i, never_cb, NULL, NULL), 0);
    cr_assert_eq(tpio_loop_call_at(th_fx.loop, th_time(th_fx.loop) + 50, never_cb, NULL, NULL), 0);
    cr_assert_eq(tpio_loop_call_soon_threadsafe(th_fx.loop, never_cb, NULL), 0);
    /* everything is freed (ASan leak check) and nothing runs */
    th_fx_close_loop();
}

/* ------------------------------------------------------------------------- */
/* call_soon                                                                 */
/* ------------------------------------------------------------------------- */

Test(loop, call_soon_fifo_order, .timeout = 30)
{
    static rec_t rec;
    static rec_item_t items[1000];
    rec.loop = th_fx.loop;
    for (int i = 0; i < 1000; i++) {
        items[i] = (rec_item_t){&rec, i};
        cr_assert_eq(tpio_loop_call_soon(th_fx.loop, rec_cb, &items[i], NULL), 0);
    }
    cr_assert_eq(rec.n, 0, "call_soon ran a callback inside the call");
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(rec.n, 1000);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(rec.ids[i], i, "position %d got callback %d", i, rec.ids[i]);
}

Test(loop, call_soon_handles_are_distinct_and_nonzero, .timeout = 30)
{
    size_t n = 0;
    tpio_handle_t h[64];
    for (int i = 0; i < 64; i++) {
        h[i] = 0;
        cr_assert_eq(tpio_loop_call_soon(th_fx.loop, count_cb, &n, &h[i]), 0);
        cr_assert_neq(h[i], 0);
        for (int j = 0; j < i; j++)
            cr_assert_neq(h[i], h[j]);
    }
    tpio_handle_t t1 = 0, t2 = 0;
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.0, count_cb, &n, &t1), 0);
    cr_assert_eq(tpio_loop_call_at(th_fx.loop, 0.0, count_cb, &n, &t2), 0);
    cr_assert_neq(t1, 0);
    cr_assert_neq(t2, 0);
    cr_assert_neq(t1, t2);
    for (int j = 0; j < 64; j++) {
        cr_assert_neq(t1, h[j]);
        cr_assert_neq(t2, h[j]);
    }
    cr_assert(th_run_until_count(th_fx.loop, &n, 66, 2.0));
}

typedef struct nested {
    tpio_loop_t *loop;
    size_t a, b;
} nested_t;

static void nested_b(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    ((nested_t *)arg)->b++;
}

static void nested_a(tpio_loop_t *loop, void *arg)
{
    nested_t *n = arg;
    n->a++;
    cr_assert_eq(tpio_loop_call_soon(loop, nested_b, n, NULL), 0);
    cr_assert_eq(n->b, 0, "callback ran inside call_soon");
}

Test(loop, callbacks_scheduled_in_a_callback_run_next_iteration, .timeout = 30)
{
    nested_t n = {th_fx.loop, 0, 0};
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, nested_a, &n, NULL), 0);
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(n.a, 1);
    cr_assert_eq(n.b, 0, "a callback scheduled during the iteration ran in it");
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(n.a, 1);
    cr_assert_eq(n.b, 1);
}

typedef struct resched {
    size_t runs;
    tpio_handle_t last;
} resched_t;

static void resched_cb(tpio_loop_t *loop, void *arg)
{
    resched_t *r = arg;
    r->runs++;
    cr_assert_eq(tpio_loop_call_soon(loop, resched_cb, r, &r->last), 0);
}

Test(loop, self_rescheduling_callback_runs_once_per_iteration, .timeout = 30)
{
    resched_t r = {0, 0};
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, resched_cb, &r, &r.last), 0);
    for (size_t i = 1; i <= 5; i++) {
        /* a blocking timeout: ready callbacks mean the loop must not wait */
        double t0 = th_now_s();
        cr_assert_geq(tpio_loop_run_once(th_fx.loop, 1.0), 0);
        cr_assert_lt(th_now_s() - t0, 0.5, "run_once blocked with ready callbacks");
        cr_assert_eq(r.runs, i);
    }
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, r.last), 0);
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(r.runs, 5);
}

/* ------------------------------------------------------------------------- */
/* call_later / call_at                                                      */
/* ------------------------------------------------------------------------- */

Test(loop, call_later_fires_in_deadline_order, .timeout = 30)
{
    static rec_t rec;
    rec.loop = th_fx.loop;
    rec_item_t i3 = {&rec, 3}, i1 = {&rec, 1}, i2 = {&rec, 2};
    double t0 = th_time(th_fx.loop);
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.03, rec_cb, &i3, NULL), 0);
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.01, rec_cb, &i1, NULL), 0);
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.02, rec_cb, &i2, NULL), 0);
    cr_assert_eq(rec.n, 0);
    double end = th_now_s() + 3.0;
    while (rec.n < 3 && th_now_s() < end)
        tpio_loop_run_once(th_fx.loop, 0.05);
    cr_assert_eq(rec.n, 3);
    cr_assert_eq(rec.ids[0], 1);
    cr_assert_eq(rec.ids[1], 2);
    cr_assert_eq(rec.ids[2], 3);
    cr_assert_geq(rec.at[0], t0 + 0.01 - 1e-6);
    cr_assert_geq(rec.at[1], t0 + 0.02 - 1e-6);
    cr_assert_geq(rec.at[2], t0 + 0.03 - 1e-6);
}

Test(loop, equal_deadlines_fire_in_fifo_order, .timeout = 30)
{
    static rec_t rec;
    static rec_item_t items[50];
    rec.loop = th_fx.loop;
    double when = th_time(th_fx.loop) + 0.02;
    for (int i = 0; i < 50; i++) {
        items[i] = (rec_item_t){&rec, i};
        cr_assert_eq(tpio_loop_call_at(th_fx.loop, when, rec_cb, &items[i], NULL), 0);
    }
    double end = th_now_s() + 3.0;
    while (rec.n < 50 && th_now_s() < end)
        tpio_loop_run_once(th_fx.loop, 0.05);
    cr_assert_eq(rec.n, 50);
    for (int i = 0; i < 50; i++) {
        cr_assert_eq(rec.ids[i], i, "position %d got timer %d", i, rec.ids[i]);
        cr_assert_geq(rec.at[i], when - 1e-6);
    }
}

Test(loop, many_timers_fire_sorted_by_deadline_then_fifo, .timeout = 30)
{
    static rec_t rec;
    enum { N = 3000 };
    static rec_item_t items[N];
    static double whens[N];
    rec.loop = th_fx.loop;
    double base = th_time(th_fx.loop) + 0.02;
    unsigned seed = 12345;
    for (int i = 0; i < N; i++) {
        seed = seed * 1103515245u + 12345u;
        whens[i] = base + (double)((seed >> 16) % 40) * 0.001; /* many ties */
        items[i] = (rec_item_t){&rec, i};
        if (tpio_loop_call_at(th_fx.loop, whens[i], rec_cb, &items[i], NULL) != 0)
            cr_assert_fail("call_at %d failed", i);
    }
    double end = th_now_s() + 5.0;
    while (rec.n < N && th_now_s() < end)
        tpio_loop_run_once(th_fx.loop, 0.05);
    cr_assert_eq(rec.n, N);
    for (int k = 1; k < N; k++) {
        int a = rec.ids[k - 1], b = rec.ids[k];
        if (!(whens[a] < whens[b] || (whens[a] == whens[b] && a < b)))
            cr_assert_fail("timer %d (when %.3f) fired before timer %d (when %.3f)", a,
                           whens[a], b, whens[b]);
    }
    for (int k = 0; k < N; k++)
        if (rec.at[k] < whens[rec.ids[k]] - 1e-6)
            cr_assert_fail("timer %d fired early", rec.ids[k]);
}

Test(loop, call_at_fires_at_the_given_loop_time, .timeout = 30)
{
    static rec_t rec;
    rec.loop = th_fx.loop;
    rec_item_t it = {&rec, 7};
    double when = th_time(th_fx.loop) + 0.04;
    cr_assert_eq(tpio_loop_call_at(th_fx.loop, when, rec_cb, &it, NULL), 0);
    double end = th_now_s() + 3.0;
    while (rec.n < 1 && th_now_s() < end)
        tpio_loop_run_once(th_fx.loop, 0.1);
    cr_assert_eq(rec.n, 1);
    cr_assert_eq(rec.ids[0], 7);
    cr_assert_geq(rec.at[0], when - 1e-6, "fired at %.6f, when %.6f", rec.at[0], when);
    cr_assert_lt(rec.at[0], when + 1.0);
}

Test(loop, call_at_in_the_past_and_negative_delay_run_next_iteration, .timeout = 30)
{
    size_t n = 0;
    cr_assert_eq(tpio_loop_call_at(th_fx.loop, th_time(th_fx.loop) - 10.0, count_cb, &n, NULL), 0);
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, -5.0, count_cb, &n, NULL), 0);
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.0, count_cb, &n, NULL), 0);
    cr_assert_eq(n, 0);
    double t0 = th_now_s();
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 1.0), 0);
    cr_assert_lt(th_now_s() - t0, 0.5);
    cr_assert_eq(n, 3);
}

Test(loop, call_later_fires_no_earlier_than_delay, .timeout = 30)
{
    static rec_t rec;
    rec.loop = th_fx.loop;
    rec_item_t it = {&rec, 1};
    double t0 = th_time(th_fx.loop);
    double m0 = th_now_s();
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.05, rec_cb, &it, NULL), 0);
    double end = m0 + 3.0;
    while (rec.n < 1 && th_now_s() < end)
        tpio_loop_run_once(th_fx.loop, 0.007);
    double m1 = th_now_s();
    cr_assert_eq(rec.n, 1);
    cr_assert_geq(rec.at[0], t0 + 0.05 - 1e-6, "loop time at firing %.6f < %.6f",
                  rec.at[0], t0 + 0.05);
    /* the loop clock is a real clock: real time passed too */
    cr_assert_geq(m1 - m0, 0.049, "only %.6f s of real time passed", m1 - m0);
    cr_assert_lt(rec.at[0] - t0, 1.0);
}

Test(loop, loop_time_is_monotonic_and_advances, .timeout = 30)
{
    double prev = th_time(th_fx.loop);
    for (int i = 0; i < 10000; i++) {
        double t = th_time(th_fx.loop);
        cr_assert_geq(t, prev);
        prev = t;
    }
    double t0 = th_time(th_fx.loop);
    double m0 = th_now_s();
    tpio_loop_run_once(th_fx.loop, 0.03); /* nothing to do: waits ~30 ms */
    double m1 = th_now_s();
    double t1 = th_time(th_fx.loop);
    cr_assert_geq(m1 - m0, 0.025, "run_once(30) returned after %.6f s", m1 - m0);
    cr_assert_geq(t1 - t0, 0.025, "loop time advanced only %.6f s", t1 - t0);
    cr_assert_lt(t1 - t0, m1 - m0 + 0.05);
}

Test(loop, run_once_blocking_wakes_for_a_timer, .timeout = 30)
{
    bool fired = false;
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.02, th_set_flag, &fired, NULL), 0);
    double m0 = th_now_s();
    /* -1: wait until something happens; the timer is what happens */
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, -1), 0);
    cr_assert(fired, "run_once(-1) returned before running the due timer");
    cr_assert_lt(th_now_s() - m0, 1.0);
    /* a long timeout is cut short by a nearer timer */
    fired = false;
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.02, th_set_flag, &fired, NULL), 0);
    m0 = th_now_s();
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 5.0), 0);
    cr_assert(fired);
    cr_assert_lt(th_now_s() - m0, 1.0);
}

Test(loop, run_once_zero_does_not_block, .timeout = 30)
{
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 30.0, never_cb, NULL, NULL), 0);
    double m0 = th_now_s();
    for (int i = 0; i < 100; i++)
        cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_lt(th_now_s() - m0, 1.0);
}

/* ------------------------------------------------------------------------- */
/* cancel                                                                    */
/* ------------------------------------------------------------------------- */

Test(loop, cancel_timer_before_firing, .timeout = 30)
{
    tpio_handle_t h = 0;
    bool other = false;
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.01, never_cb, NULL, &h), 0);
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.03, th_set_flag, &other, NULL), 0);
    cr_assert_neq(h, 0);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h), 0);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h), -ENOENT, "second cancel");
    cr_assert(th_run_until(th_fx.loop, &other, 3.0));
    th_spin_for(th_fx.loop, 0.03);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h), -ENOENT);
}

Test(loop, cancel_after_firing_is_enoent, .timeout = 30)
{
    tpio_handle_t h1 = 0, h2 = 0;
    size_t n = 0;
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, count_cb, &n, &h1), 0);
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.001, count_cb, &n, &h2), 0);
    cr_assert(th_run_until_count(th_fx.loop, &n, 2, 3.0));
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h1), -ENOENT);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h2), -ENOENT);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, h1), -ENOENT);
}

Test(loop, cancel_invalid_handles, .timeout = 30)
{
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, 0), -ENOENT);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, (tpio_handle_t)0xdeadbeefcafeULL), -ENOENT);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, UINT64_MAX), -ENOENT);
}

Test(loop, cancel_call_soon_handle, .timeout = 30)
{
    static rec_t rec;
    rec.loop = th_fx.loop;
    rec_item_t a = {&rec, 1}, c = {&rec, 3};
    tpio_handle_t hb = 0;
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, rec_cb, &a, NULL), 0);
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, never_cb, NULL, &hb), 0);
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, rec_cb, &c, NULL), 0);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, hb), 0);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, hb), -ENOENT);
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(rec.n, 2);
    cr_assert_eq(rec.ids[0], 1);
    cr_assert_eq(rec.ids[1], 3);
    cr_assert_eq(tpio_loop_cancel(th_fx.loop, hb), -ENOENT);
}

typedef struct canceller {
    tpio_handle_t victim;
    int result;
    bool ran;
} canceller_t;

static void canceller_cb(tpio_loop_t *loop, void *arg)
{
    canceller_t *c = arg;
    c->ran = true;
    c->result = tpio_loop_cancel(loop, c->victim);
}

Test(loop, cancel_from_a_callback_in_the_same_iteration, .timeout = 30)
{
    /* both ready in the same iteration: the first cancels the second */
    canceller_t c = {0, 1, false};
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, canceller_cb, &c, NULL), 0);
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, never_cb, NULL, &c.victim), 0);
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert(c.ran);
    cr_assert_eq(c.result, 0);
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);

    /* same with two timers due at the same time */
    canceller_t d = {0, 1, false};
    double when = th_time(th_fx.loop) + 0.01;
    cr_assert_eq(tpio_loop_call_at(th_fx.loop, when, canceller_cb, &d, NULL), 0);
    cr_assert_eq(tpio_loop_call_at(th_fx.loop, when, never_cb, NULL, &d.victim), 0);
    cr_assert(th_run_until(th_fx.loop, &d.ran, 3.0));
    cr_assert_eq(d.result, 0);
    th_spin_for(th_fx.loop, 0.02);
}

/* ------------------------------------------------------------------------- */
/* run / stop / is_running                                                   */
/* ------------------------------------------------------------------------- */

typedef struct stopper {
    tpio_loop_t *loop;
    bool running_inside;
    size_t before, after_sched, scheduled_later;
    int nested_run, nested_close;
} stopper_t;

static void later_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    ((stopper_t *)arg)->scheduled_later++;
}

static void stopping_cb(tpio_loop_t *loop, void *arg)
{
    stopper_t *s = arg;
    s->running_inside = th_is_running(loop);
    tpio_loop_stop(loop);
    cr_assert_eq(tpio_loop_call_soon(loop, later_cb, s, NULL), 0);
}

static void after_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    ((stopper_t *)arg)->after_sched++;
}

Test(loop, stop_from_callback_finishes_the_iteration, .timeout = 30)
{
    stopper_t s = {.loop = th_fx.loop};
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, stopping_cb, &s, NULL), 0);
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, after_cb, &s, NULL), 0); /* same iteration */
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, after_cb, &s, NULL), 0);
    cr_assert_not(th_is_running(th_fx.loop));
    cr_assert_eq(tpio_loop_run_forever(th_fx.loop), 0);
    cr_assert_not(th_is_running(th_fx.loop));
    cr_assert(s.running_inside);
    cr_assert_eq(s.after_sched, 2, "callbacks already scheduled in the iteration must run");
    cr_assert_eq(s.scheduled_later, 0, "a callback scheduled during the last iteration ran");
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(s.scheduled_later, 1);
}

Test(loop, stop_from_a_timer_ends_run, .timeout = 30)
{
    size_t ticks = 0;
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.02, count_cb, &ticks, NULL), 0);
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.04, stop_cb, NULL, NULL), 0);
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 30.0, never_cb, NULL, NULL), 0);
    double m0 = th_now_s();
    cr_assert_eq(tpio_loop_run_forever(th_fx.loop), 0);
    double el = th_now_s() - m0;
    cr_assert_eq(ticks, 1);
    cr_assert_geq(el, 0.035);
    cr_assert_lt(el, 2.0);
    /* run again works after a stop */
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.01, stop_cb, NULL, NULL), 0);
    cr_assert_eq(tpio_loop_run_forever(th_fx.loop), 0);
}

Test(loop, stop_before_run_runs_one_iteration, .timeout = 30)
{
    stopper_t s = {.loop = th_fx.loop};
    size_t n = 0;
    nested_t nest = {th_fx.loop, 0, 0};
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, count_cb, &n, NULL), 0);
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, nested_a, &nest, NULL), 0);
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 30.0, never_cb, NULL, NULL), 0);
    tpio_loop_stop(th_fx.loop);
    double m0 = th_now_s();
    cr_assert_eq(tpio_loop_run_forever(th_fx.loop), 0);
    cr_assert_lt(th_now_s() - m0, 1.0, "run blocked although stop() was pending");
    cr_assert_eq(n, 1);
    cr_assert_eq(nest.a, 1);
    cr_assert_eq(nest.b, 0, "run after stop() ran a second iteration");
    cr_assert_not(th_is_running(th_fx.loop));

    /* the stop request was consumed: the next run runs until a new stop */
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, stopping_cb, &s, NULL), 0);
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, after_cb, &s, NULL), 0);
    cr_assert_eq(tpio_loop_run_forever(th_fx.loop), 0);
    cr_assert_eq(s.after_sched, 1);
}

typedef struct busy {
    size_t n;
    bool stopped;
} busy_t;

static void busy_cb(tpio_loop_t *loop, void *arg)
{
    busy_t *b = arg;
    if (++b->n == 3)
        tpio_loop_stop(loop);
    else
        cr_assert_eq(tpio_loop_call_soon(loop, busy_cb, b, NULL), 0);
}

Test(loop, stop_before_run_one_iteration_exactly, .timeout = 30)
{
    busy_t b = {0, false};
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, busy_cb, &b, NULL), 0);
    tpio_loop_stop(th_fx.loop);
    cr_assert_eq(tpio_loop_run_forever(th_fx.loop), 0);
    cr_assert_eq(b.n, 1, "run after stop() ran %zu iterations", b.n);
    cr_assert_eq(tpio_loop_run_forever(th_fx.loop), 0); /* iterations 2 and 3, stopped by busy_cb */
    cr_assert_eq(b.n, 3);
}

static void nested_calls_cb(tpio_loop_t *loop, void *arg)
{
    stopper_t *s = arg;
    s->running_inside = th_is_running(loop);
    s->nested_run = tpio_loop_run_forever(loop);
    s->nested_close = tpio_loop_close(loop);
    tpio_loop_stop(loop);
}

Test(loop, run_while_running_is_ebusy, .timeout = 30)
{
    stopper_t s = {.loop = th_fx.loop, .nested_run = 1, .nested_close = 1};
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, nested_calls_cb, &s, NULL), 0);
    cr_assert_eq(tpio_loop_run_forever(th_fx.loop), 0);
    cr_assert(s.running_inside);
    cr_assert_eq(s.nested_run, -EBUSY);
    cr_assert_eq(s.nested_close, -EBUSY);
    /* the loop still works */
    size_t n = 0;
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, count_cb, &n, NULL), 0);
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(n, 1);
}

static void is_running_cb(tpio_loop_t *loop, void *arg)
{
    *(int *)arg = th_is_running(loop) ? 1 : 0;
}

Test(loop, is_running_inside_run_once, .timeout = 30)
{
    int r = -1;
    cr_assert_not(th_is_running(th_fx.loop));
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, is_running_cb, &r, NULL), 0);
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(r, 1);
    cr_assert_not(th_is_running(th_fx.loop));
    r = -1;
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.01, is_running_cb, &r, NULL), 0);
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.02, stop_cb, NULL, NULL), 0);
    cr_assert_eq(tpio_loop_run_forever(th_fx.loop), 0);
    cr_assert_eq(r, 1);
    cr_assert_not(th_is_running(th_fx.loop));
}

/* ------------------------------------------------------------------------- */
/* call_soon_threadsafe                                                      */
/* ------------------------------------------------------------------------- */

enum { TS_THREADS = 4, TS_CALLS = 1000 };

typedef struct ts_ctx {
    tpio_loop_t *loop;
    pthread_t main_thread;
    size_t count;
    int last_seq[TS_THREADS];
    size_t out_of_order, wrong_thread;
    atomic_int go;
    atomic_int failures;
} ts_ctx_t;

typedef struct ts_thread {
    ts_ctx_t *ctx;
    int idx;
} ts_thread_t;

static ts_ctx_t *g_ts;

static void ts_cb(tpio_loop_t *loop, void *arg)
{
    uintptr_t v = (uintptr_t)arg;
    int idx = (int)(v / 100000), seq = (int)(v % 100000);
    ts_ctx_t *c = g_ts;
    if (!pthread_equal(pthread_self(), c->main_thread))
        c->wrong_thread++;
    if (seq != c->last_seq[idx] + 1)
        c->out_of_order++;
    c->last_seq[idx] = seq;
    if (++c->count == TS_THREADS * TS_CALLS)
        tpio_loop_stop(loop);
}

static void *ts_thread(void *arg)
{
    ts_thread_t *t = arg;
    while (!atomic_load(&t->ctx->go))
        sched_yield();
    for (int i = 0; i < TS_CALLS; i++) {
        uintptr_t v = (uintptr_t)t->idx * 100000 + (uintptr_t)i;
        if (tpio_loop_call_soon_threadsafe(t->ctx->loop, ts_cb, (void *)v) != 0)
            atomic_fetch_add(&t->ctx->failures, 1);
    }
    return NULL;
}

static void ts_go_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    atomic_store(&((ts_ctx_t *)arg)->go, 1);
}

Test(loop, call_soon_threadsafe_many_threads, .timeout = 30)
{
    static ts_ctx_t ctx;
    g_ts = &ctx;
    ctx.loop = th_fx.loop;
    ctx.main_thread = pthread_self();
    for (int i = 0; i < TS_THREADS; i++)
        ctx.last_seq[i] = -1;
    pthread_t th[TS_THREADS];
    ts_thread_t targ[TS_THREADS];
    for (int i = 0; i < TS_THREADS; i++) {
        targ[i] = (ts_thread_t){&ctx, i};
        cr_assert_eq(pthread_create(&th[i], NULL, ts_thread, &targ[i]), 0);
    }
    /* the threads start calling once the loop runs */
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, ts_go_cb, &ctx, NULL), 0);
    cr_assert_eq(tpio_loop_run_forever(th_fx.loop), 0);
    for (int i = 0; i < TS_THREADS; i++)
        pthread_join(th[i], NULL);
    cr_assert_eq(atomic_load(&ctx.failures), 0);
    cr_assert_eq(ctx.count, TS_THREADS * TS_CALLS);
    cr_assert_eq(ctx.wrong_thread, 0, "callbacks ran off the loop thread");
    cr_assert_eq(ctx.out_of_order, 0, "one thread's calls ran out of order");
    for (int i = 0; i < TS_THREADS; i++)
        cr_assert_eq(ctx.last_seq[i], TS_CALLS - 1);
    /* nothing left over */
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(ctx.count, TS_THREADS * TS_CALLS);
}

typedef struct wake_ctx {
    tpio_loop_t *loop;
    atomic_long loop_tid;
    atomic_int saw_sleeping;
    long stop_tid;
    bool stopped;
} wake_ctx_t;

static void wake_record_tid(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    atomic_store(&((wake_ctx_t *)arg)->loop_tid, (long)syscall(SYS_gettid));
}

static void wake_stop(tpio_loop_t *loop, void *arg)
{
    wake_ctx_t *w = arg;
    w->stop_tid = (long)syscall(SYS_gettid);
    w->stopped = true;
    tpio_loop_stop(loop);
}

/* State letter of a thread of this process ('S' = sleeping in the kernel). */
static char thread_state(long tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%ld/stat", tid);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return '?';
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return '?';
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return (p && p[1] == ' ') ? p[2] : '?';
}

static void *wake_thread(void *arg)
{
    wake_ctx_t *w = arg;
    double end = th_now_s() + 5.0;
    while (atomic_load(&w->loop_tid) == 0 && th_now_s() < end)
        sched_yield();
    long tid = atomic_load(&w->loop_tid);
    /* wait (without sleeping) until the loop thread is blocked in the poller;
     * it needs several consecutive observations to rule out a passing futex */
    int seen = 0;
    while (tid && th_now_s() < end) {
        if (thread_state(tid) == 'S') {
            if (++seen >= 20)
                break;
        } else {
            seen = 0;
        }
        sched_yield();
    }
    atomic_store(&w->saw_sleeping, seen >= 20);
    tpio_loop_call_soon_threadsafe(w->loop, wake_stop, w);
    return NULL;
}

Test(loop, call_soon_threadsafe_wakes_a_blocked_loop, .timeout = 30)
{
    static wake_ctx_t w;
    w.loop = th_fx.loop;
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, wake_record_tid, &w, NULL), 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, wake_thread, &w), 0);
    /* nothing else to do: only the thread's call can end this run */
    double m0 = th_now_s();
    cr_assert_eq(tpio_loop_run_forever(th_fx.loop), 0);
    double el = th_now_s() - m0;
    pthread_join(th, NULL);
    cr_assert(w.stopped);
    cr_assert(atomic_load(&w.saw_sleeping), "the loop never blocked (busy loop?)");
    cr_assert_eq(w.stop_tid, atomic_load(&w.loop_tid), "callback ran off the loop thread");
    cr_assert_lt(el, 5.0);
}

static void *wake_run_once_thread(void *arg)
{
    wake_ctx_t *w = arg;
    double end = th_now_s() + 5.0;
    long tid = atomic_load(&w->loop_tid);
    int seen = 0;
    while (th_now_s() < end) {
        if (thread_state(tid) == 'S') {
            if (++seen >= 20)
                break;
        } else {
            seen = 0;
        }
        sched_yield();
    }
    atomic_store(&w->saw_sleeping, seen >= 20);
    tpio_loop_call_soon_threadsafe(w->loop, th_set_flag, &w->stopped);
    return NULL;
}

Test(loop, call_soon_threadsafe_wakes_run_once_minus_one, .timeout = 30)
{
    static wake_ctx_t w;
    w.loop = th_fx.loop;
    atomic_store(&w.loop_tid, (long)syscall(SYS_gettid));
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, wake_run_once_thread, &w), 0);
    double m0 = th_now_s();
    /* the wakeup itself may take one iteration, the callback at most one more */
    for (int i = 0; i < 2 && !w.stopped; i++)
        cr_assert_geq(tpio_loop_run_once(th_fx.loop, -1), 0);
    pthread_join(th, NULL);
    cr_assert(w.stopped);
    cr_assert(atomic_load(&w.saw_sleeping));
    cr_assert_lt(th_now_s() - m0, 5.0);
}

/* ------------------------------------------------------------------------- */
/* large numbers                                                             */
/* ------------------------------------------------------------------------- */

typedef struct bulk {
    size_t ran, scheduled, disorder;
    size_t last;
} bulk_t;

static bulk_t g_bulk;

static void bulk_cb(tpio_loop_t *loop, void *arg)
{
    size_t seq = (size_t)(uintptr_t)arg;
    bulk_t *b = &g_bulk;
    if (b->ran && seq != b->last + 1)
        b->disorder++;
    b->last = seq;
    b->ran++;
    if (b->scheduled < 100000) {
        size_t next = b->scheduled++;
        cr_assert_eq(tpio_loop_call_soon(loop, bulk_cb, (void *)(uintptr_t)next, NULL), 0);
    }
}

Test(loop, hundred_thousand_call_soon_in_one_batch, .timeout = 30)
{
    memset(&g_bulk, 0, sizeof g_bulk);
    g_bulk.scheduled = 100000; /* no rescheduling */
    for (size_t i = 0; i < 100000; i++)
        cr_assert_eq(tpio_loop_call_soon(th_fx.loop, bulk_cb, (void *)(uintptr_t)i, NULL), 0);
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(g_bulk.ran, 100000);
    cr_assert_eq(g_bulk.disorder, 0);
}

Test(loop, hundred_thousand_call_soon_steady_state, .timeout = 30)
{
    memset(&g_bulk, 0, sizeof g_bulk);
    /* 1000 in flight; each callback schedules the next until 100k were scheduled */
    for (size_t i = 0; i < 1000; i++)
        cr_assert_eq(tpio_loop_call_soon(th_fx.loop, bulk_cb, (void *)(uintptr_t)i, NULL), 0);
    g_bulk.scheduled = 1000;
    size_t iterations = 0;
    while (g_bulk.ran < 100000 && iterations < 1000) {
        cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
        iterations++;
    }
    cr_assert_eq(g_bulk.ran, 100000);
    cr_assert_eq(g_bulk.disorder, 0);
    cr_assert_eq(iterations, 100, "each iteration runs exactly the 1000 ready callbacks");
}

/* ------------------------------------------------------------------------- */
/* error handler                                                             */
/* ------------------------------------------------------------------------- */

typedef struct eh {
    size_t calls;
    char message[256];
    int error;
    int fd;
    void *transport, *protocol, *server;
    void *arg;
    tpio_loop_t *loop;
    bool call_default;
} eh_t;

static eh_t *g_eh_arg_seen;

static void custom_handler(tpio_loop_t *loop, const tpio_error_context_t *ctx, void *arg)
{
    eh_t *e = arg;
    g_eh_arg_seen = e;
    e->calls++;
    e->loop = loop;
    snprintf(e->message, sizeof e->message, "%s", ctx->message ? ctx->message : "(null)");
    e->error = ctx->error;
    e->fd = ctx->fd;
    e->transport = ctx->transport;
    e->protocol = ctx->protocol;
    e->server = ctx->server;
    if (e->call_default)
        tpio_loop_default_error_handler(loop, ctx);
}

/* Capture what fn writes to fd 2. */
typedef struct capture {
    int saved, rd;
} capture_t;

static void capture_start(capture_t *c)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    fflush(stderr);
    c->saved = dup(2);
    cr_assert_geq(c->saved, 0);
    cr_assert_eq(dup2(p[1], 2), 2);
    close(p[1]);
    c->rd = p[0];
}

static size_t capture_end(capture_t *c, char *buf, size_t cap)
{
    fflush(stderr);
    cr_assert_eq(dup2(c->saved, 2), 2);
    close(c->saved);
    size_t n = 0;
    for (;;) {
        ssize_t r = read(c->rd, buf + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        if (n == cap - 1)
            break;
    }
    close(c->rd);
    buf[n] = 0;
    return n;
}

static size_t count_char(const char *s, char ch)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == ch;
    return n;
}

Test(loop, custom_error_handler_receives_context, .timeout = 30)
{
    static eh_t e;
    tpio_loop_set_error_handler(th_fx.loop, custom_handler, &e);
    tpio_error_context_t ctx = {
        .message = "something odd happened",
        .error = -ECONNRESET,
        .transport = NULL,
        .protocol = NULL,
        .server = NULL,
        .fd = 42,
    };
    tpio_loop_call_error_handler(th_fx.loop, &ctx);
    cr_assert_eq(e.calls, 1, "the handler is called synchronously");
    cr_assert_eq(g_eh_arg_seen, &e);
    cr_assert_eq(e.loop, th_fx.loop);
    cr_assert_str_eq(e.message, "something odd happened");
    cr_assert_eq(e.error, -ECONNRESET);
    cr_assert_eq(e.fd, 42);
    cr_assert_null(e.transport);
    cr_assert_null(e.protocol);
    cr_assert_null(e.server);

    ctx.message = "second";
    ctx.error = 0;
    ctx.fd = -1;
    tpio_loop_call_error_handler(th_fx.loop, &ctx);
    cr_assert_eq(e.calls, 2);
    cr_assert_str_eq(e.message, "second");
    cr_assert_eq(e.error, 0);
    cr_assert_eq(e.fd, -1);
}

Test(loop, default_error_handler_prints_one_line, .timeout = 30)
{
    /* a loop of its own: th_fx.loop has the fixture's handler */
    tpio_loop_t *loop = th_new_loop();
    static eh_t e;
    tpio_error_context_t ctx = {.message = "tpio-test-message-default-7319",
                                .error = -EPIPE, .fd = -1};
    char out[4096];
    capture_t c;

    /* the default, without ever setting a handler */
    capture_start(&c);
    tpio_loop_call_error_handler(loop, &ctx);
    capture_end(&c, out, sizeof out);
    cr_assert_not_null(strstr(out, "tpio-test-message-default-7319"), "stderr: [%s]", out);
    cr_assert_eq(count_char(out, '\n'), 1, "stderr: [%s]", out);
    cr_assert_eq(out[strlen(out) - 1], '\n');

    /* a custom handler replaces it: nothing printed */
    tpio_loop_set_error_handler(loop, custom_handler, &e);
    capture_start(&c);
    tpio_loop_call_error_handler(loop, &ctx);
    capture_end(&c, out, sizeof out);
    cr_assert_eq(e.calls, 1);
    cr_assert_str_eq(out, "", "stderr: [%s]", out);

    /* NULL restores the default */
    tpio_loop_set_error_handler(loop, NULL, NULL);
    ctx.message = "tpio-test-message-restored-5521";
    capture_start(&c);
    tpio_loop_call_error_handler(loop, &ctx);
    capture_end(&c, out, sizeof out);
    cr_assert_eq(e.calls, 1, "the removed handler was called");
    cr_assert_not_null(strstr(out, "tpio-test-message-restored-5521"), "stderr: [%s]", out);
    cr_assert_eq(count_char(out, '\n'), 1, "stderr: [%s]", out);

    /* the default handler can be called directly, e.g. from a custom one */
    e.call_default = true;
    tpio_loop_set_error_handler(loop, custom_handler, &e);
    ctx.message = "tpio-test-message-chained-8830";
    capture_start(&c);
    tpio_loop_call_error_handler(loop, &ctx);
    capture_end(&c, out, sizeof out);
    cr_assert_eq(e.calls, 2);
    cr_assert_not_null(strstr(out, "tpio-test-message-chained-8830"), "stderr: [%s]", out);
    cr_assert_eq(count_char(out, '\n'), 1, "stderr: [%s]", out);

    capture_start(&c);
    tpio_loop_default_error_handler(loop, &ctx);
    capture_end(&c, out, sizeof out);
    cr_assert_eq(e.calls, 2);
    cr_assert_not_null(strstr(out, "tpio-test-message-chained-8830"), "stderr: [%s]", out);
    close_loop(loop);
}

/* ------------------------------------------------------------------------- */
/* bad arguments                                                             */
/* ------------------------------------------------------------------------- */

Test(loop, bad_arguments, .timeout = 30)
{
    size_t n = 0;
    tpio_handle_t h = 0;
    cr_assert_eq(tpio_loop_new(NULL, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_close(NULL), -EINVAL);
    cr_assert_eq(tpio_loop_run_forever(NULL), -EINVAL);
    cr_assert_eq(tpio_loop_run_once(NULL, 0), -EINVAL);
    cr_assert_eq(tpio_loop_call_soon(NULL, count_cb, &n, &h), -EINVAL);
    cr_assert_eq(tpio_loop_call_later(NULL, 0.1, count_cb, &n, &h), -EINVAL);
    cr_assert_eq(tpio_loop_call_at(NULL, 0.1, count_cb, &n, &h), -EINVAL);
    cr_assert_eq(tpio_loop_call_soon_threadsafe(NULL, count_cb, &n), -EINVAL);
    cr_assert_eq(tpio_loop_cancel(NULL, 1), -EINVAL);
    bool running = true;
    double now = -1;
    cr_assert_eq(tpio_loop_is_running(NULL, &running), -EINVAL);
    cr_assert(running, "untouched on error");
    cr_assert_eq(tpio_loop_stop(NULL), -EINVAL);
    cr_assert_eq(tpio_loop_set_error_handler(NULL, NULL, NULL), -EINVAL);
    tpio_error_context_t ctx = {.message = "x", .fd = -1};
    cr_assert_eq(tpio_loop_call_error_handler(NULL, &ctx), -EINVAL);
    cr_assert_eq(tpio_loop_default_error_handler(NULL, &ctx), -EINVAL);
    cr_assert_eq(tpio_loop_time(NULL, &now), -EINVAL);
    cr_assert_eq(now, -1);
    cr_assert_eq(tpio_loop_new(NULL, NULL), -EINVAL);

    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, NULL, &n, &h), -EINVAL);
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.1, NULL, &n, &h), -EINVAL);
    cr_assert_eq(tpio_loop_call_at(th_fx.loop, 0.1, NULL, &n, &h), -EINVAL);
    cr_assert_eq(tpio_loop_call_soon_threadsafe(th_fx.loop, NULL, &n), -EINVAL);
    cr_assert_eq(tpio_loop_call_error_handler(th_fx.loop, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_default_error_handler(th_fx.loop, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_time(th_fx.loop, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_is_running(th_fx.loop, NULL), -EINVAL);
    /* nothing got scheduled by the failed calls */
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(n, 0);
    /* handle pointer is optional */
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, count_cb, &n, NULL), 0);
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0, count_cb, &n, NULL), 0);
    cr_assert_eq(tpio_loop_call_at(th_fx.loop, 0, count_cb, &n, NULL), 0);
    cr_assert(th_run_until_count(th_fx.loop, &n, 3, 2.0));
}

/* ------------------------------------------------------------------------- */
/* close refuses while objects exist                                         */
/* ------------------------------------------------------------------------- */

Test(loop, close_with_a_server_is_ebusy, .timeout = 30)
{
    th_proto_t tmpl = {0};
    tmpl.base.ops = &th_proto_ops;
    tpio_server_opts_t opts = {.size = sizeof opts, .host = "127.0.0.1", .port = 0};
    tpio_server_t *s = NULL;
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, th_factory, &tmpl, &opts, &s), 0);
    cr_assert_not_null(s);
    cr_assert_eq(tpio_loop_close(th_fx.loop), -EBUSY);
    /* the loop keeps working */
    size_t n = 0;
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, count_cb, &n, NULL), 0);
    cr_assert_geq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(n, 1);
    cr_assert(th_is_serving(s));
    cr_assert_eq(tpio_loop_close(th_fx.loop), -EBUSY);

    bool closed = false;
    cr_assert_eq(tpio_server_close(s), 0);
    cr_assert_eq(tpio_server_wait_closed(s, th_done_flag, &closed, NULL), 0);
    cr_assert_not(closed);
    cr_assert(th_run_until(th_fx.loop, &closed, 3.0));
    th_fx_close_loop();
}

typedef struct conn_result {
    bool done;
    int err;
    tpio_transport_t *t;
    tpio_protocol_t *p;
} conn_result_t;

static void connect_done(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p,
                         int err, void *arg)
{
    (void)loop;
    conn_result_t *r = arg;
    r->done = true;
    r->err = err;
    r->t = t;
    r->p = p;
}

Test(loop, close_with_a_connection_attempt_or_transport_is_ebusy, .timeout = 30)
{
    size_t server_lost = 0;
    th_proto_t tmpl = {0};
    tmpl.base.ops = &th_proto_ops;
    tmpl.free_on_lost = true;
    tmpl.lost_counter = &server_lost;
    tpio_server_opts_t opts = {.size = sizeof opts, .host = "127.0.0.1", .port = 0};
    tpio_server_t *s = NULL;
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, th_factory, &tmpl, &opts, &s), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, 0, &ss, &sl), 0);
    uint16_t port = ntohs(((struct sockaddr_in *)&ss)->sin_port);

    bool client_lost = false;
    th_proto_t ctmpl = {0};
    ctmpl.base.ops = &th_proto_ops;
    ctmpl.lost_flag = &client_lost;
    conn_result_t r = {0};
    tpio_connect_opts_t copts = {.size = sizeof copts, .host = "127.0.0.1", .port = port};
    cr_assert_eq(tpio_loop_create_connection(th_fx.loop, th_factory, &ctmpl, &copts, connect_done, &r, NULL), 0);
    cr_assert_not(r.done, "completion ran inside tpio_loop_create_connection");
    /* an attempt in progress (its completion has not run yet) */
    cr_assert_eq(tpio_loop_close(th_fx.loop), -EBUSY);
    cr_assert(th_run_until(th_fx.loop, &r.done, 3.0));
    cr_assert_eq(r.err, 0);
    cr_assert_not_null(r.t);
    th_proto_t *cp = tpio_container_of(r.p, th_proto_t, base);
    double end = th_time(th_fx.loop) + 3.0;
    while (th_conn_count(s) < 1 && th_time(th_fx.loop) < end)
        tpio_loop_run_once(th_fx.loop, 0.01);
    cr_assert_eq(th_conn_count(s), 1);
    /* live transports */
    cr_assert_eq(tpio_loop_close(th_fx.loop), -EBUSY);
    cr_assert_eq(tpio_transport_close(r.t), 0);
    cr_assert_eq(tpio_loop_close(th_fx.loop), -EBUSY);
    cr_assert(th_run_until(th_fx.loop, &client_lost, 3.0));
    cr_assert_str_eq(cp->events, "made,lost:0");
    th_proto_free(cp);
    cr_assert(th_run_until_count(th_fx.loop, &server_lost, 1, 3.0));
    /* the server itself still exists */
    cr_assert_eq(tpio_loop_close(th_fx.loop), -EBUSY);
    cr_assert_eq(tpio_server_close(s), 0);
    bool closed = false;
    cr_assert_eq(tpio_server_wait_closed(s, th_done_flag, &closed, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &closed, 3.0));
    th_fx_close_loop();
}

/* ------------------------------------------------------------------------- */
/* wait hooks (tpio_loop_set_wait_hooks)                                     */
/* ------------------------------------------------------------------------- */

struct hooks_rec {
    int before, after;
    bool inside;     /* between before and after */
    bool cb_inside;  /* a callback ran between them: must never happen */
    int efd;
    sem_t blocking;  /* posted by before: the loop is about to block */
};

static void hook_before(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct hooks_rec *h = arg;
    cr_assert(!h->inside);
    h->inside = true;
    h->before++;
    sem_post(&h->blocking);
}

static void hook_after(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    struct hooks_rec *h = arg;
    cr_assert(h->inside);
    h->inside = false;
    h->after++;
}

static void hooks_timer(tpio_loop_t *loop, void *arg)
{
    struct hooks_rec *h = arg;
    h->cb_inside |= h->inside;
    tpio_loop_stop(loop);
}

static void hooks_reader(tpio_loop_t *loop, int fd, void *arg)
{
    struct hooks_rec *h = arg;
    h->cb_inside |= h->inside;
    uint64_t v;
    cr_assert_eq(read(fd, &v, sizeof v), (ssize_t)sizeof v);
    tpio_loop_stop(loop);
}

static void *hooks_writer_thread(void *arg)
{
    struct hooks_rec *h = arg;
    sem_wait(&h->blocking); /* the event comes while the loop waits */
    uint64_t one = 1;
    cr_assert_eq(write(h->efd, &one, sizeof one), (ssize_t)sizeof one);
    return NULL;
}

Test(loop, wait_hooks_bracket_a_blocking_wait_only, .timeout = 30)
{
    tpio_loop_t *loop = th_fx.loop;
    struct hooks_rec h = {0};
    cr_assert_eq(sem_init(&h.blocking, 0, 0), 0);
    cr_assert_eq(tpio_loop_set_wait_hooks(loop, hook_before, hook_after, &h), 0);

    /* Only a timer pending: the loop blocks until it is due, inside the hooks;
     * the timer's callback runs after them. */
    cr_assert_eq(tpio_loop_call_later(loop, 0.01, hooks_timer, &h, NULL), 0);
    cr_assert_eq(tpio_loop_run_forever(loop), 0);
    cr_assert_geq(h.before, 1);
    cr_assert_eq(h.before, h.after);
    cr_assert(!h.cb_inside);

    /* A descriptor event that arrives during the wait is dispatched after
     * the wait's after hook. */
    h.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    cr_assert_geq(h.efd, 0);
    cr_assert_eq(sem_init(&h.blocking, 0, 0), 0);
    cr_assert_eq(tpio_loop_add_reader(loop, h.efd, hooks_reader, &h), 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, hooks_writer_thread, &h), 0);
    int before = h.before;
    cr_assert_eq(tpio_loop_run_forever(loop), 0);
    pthread_join(th, NULL);
    cr_assert_gt(h.before, before);
    cr_assert_eq(h.before, h.after);
    cr_assert(!h.cb_inside);

    /* A busy loop does not block: ready callbacks, or events already
     * waiting, mean no hook at all. */
    before = h.before;
    uint64_t one = 1;
    cr_assert_eq(write(h.efd, &one, sizeof one), (ssize_t)sizeof one);
    cr_assert_eq(tpio_loop_run_forever(loop), 0); /* the reader stops it */
    cr_assert_eq(tpio_loop_call_soon(loop, hooks_timer, &h, NULL), 0);
    cr_assert_eq(tpio_loop_run_forever(loop), 0);
    cr_assert_eq(h.before, before);
    cr_assert_eq(h.after, before);
    cr_assert(!h.cb_inside);

    cr_assert_eq(tpio_loop_remove_reader(loop, h.efd, NULL), 0);
    close(h.efd);
    sem_destroy(&h.blocking);
    /* Removing them: no more calls. */
    cr_assert_eq(tpio_loop_set_wait_hooks(loop, NULL, NULL, NULL), 0);
    cr_assert_eq(tpio_loop_call_later(loop, 0.005, hooks_timer, &h, NULL), 0);
    cr_assert_eq(tpio_loop_run_forever(loop), 0);
    cr_assert_eq(h.before, before);
}

Test(loop, wait_hooks_bad_arguments, .timeout = 30)
{
    int x;
    cr_assert_eq(tpio_loop_set_wait_hooks(NULL, hook_before, hook_after, &x), -EINVAL);
    cr_assert_eq(tpio_loop_set_wait_hooks(th_fx.loop, hook_before, NULL, &x), -EINVAL);
    cr_assert_eq(tpio_loop_set_wait_hooks(th_fx.loop, NULL, hook_after, &x), -EINVAL);
}
