/* The readiness layer: a watcher removed while its batch is being dispatched
 * is never called, so its owner may free it at once. */
#include <criterion/criterion.h>
#include "helpers.h"
#include "loop/loop.h"

#include <stdlib.h>
#include <unistd.h>

/* Each test gets th_fx.loop, closed (and checked) by fini. */
TestSuite(poll, .init = th_fx_init, .fini = th_fx_fini);

struct watcher {
    struct tpio__io io;
    struct watcher **other; /* the other watcher, freed by whoever runs first */
    int *calls;
};

static void on_ready(tpio_loop_t *loop, struct tpio__io *io, uint32_t events)
{
    (void)events;
    struct watcher *w = tpio_container_of(io, struct watcher, io);
    (*w->calls)++;
    struct watcher *o = *w->other;
    if (o) {
        tpio__watch(loop, &o->io, 0);
        free(o); /* ASan reports any later dispatch to it */
        *w->other = NULL;
    }
    tpio__watch(loop, io, 0);
}

Test(poll, watcher_removed_in_same_batch_is_not_dispatched, .timeout = 10)
{
    int a[2], b[2];
    cr_assert_eq(pipe(a), 0);
    cr_assert_eq(pipe(b), 0);
    cr_assert_eq(write(a[1], "x", 1), 1);
    cr_assert_eq(write(b[1], "x", 1), 1); /* both readable: one epoll batch */
    int calls = 0;
    struct watcher *wa = calloc(1, sizeof *wa), *wb = calloc(1, sizeof *wb);
    struct watcher *pa = wa, *pb = wb;
    wa->other = &pb;
    wb->other = &pa;
    wa->calls = wb->calls = &calls;
    tpio__io_init(&wa->io, a[0], on_ready);
    tpio__io_init(&wb->io, b[0], on_ready);
    cr_assert_eq(tpio__watch(th_fx.loop, &wa->io, TPIO__IN), 0);
    cr_assert_eq(tpio__watch(th_fx.loop, &wb->io, TPIO__IN), 0);
    cr_assert_eq(tpio_loop_run_once(th_fx.loop, 1.0), 0);
    cr_assert_eq(calls, 1, "the removed watcher was dispatched (%d calls)", calls);
    free(pa ? pa : pb); /* the survivor */
    cr_assert(!pa || !pb);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
}

static void stop_cb(tpio_loop_t *loop, void *arg)
{
    (void)arg;
    tpio_loop_stop(loop);
}

Test(poll, run_once_blocks_again_after_a_stop, .timeout = 10)
{
    cr_assert_eq(tpio_loop_call_soon(th_fx.loop, stop_cb, NULL, NULL), 0);
    cr_assert_eq(tpio_loop_run_once(th_fx.loop, 0), 0); /* runs stop() */
    bool fired = false;
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.05, th_set_flag, &fired, NULL), 0);
    /* Nothing is ready: this iteration must wait for the timer, not spin. */
    cr_assert_eq(tpio_loop_run_once(th_fx.loop, 2.0), 0);
    cr_assert(fired, "run_once returned without waiting after an earlier stop()");
}
