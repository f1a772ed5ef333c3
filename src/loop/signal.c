/* Signal handlers that run from the loop (asyncio's add_signal_handler).
 *
 * A self-pipe design, as libuv's and CPython's: a process-wide sigaction
 * handler marks the signal pending and writes to the owning loop's eventfd
 * (both async-signal-safe); the loop, woken, runs the user's handler as an
 * ordinary callback. Chosen over signalfd because signalfd only sees a
 * signal that is blocked in every thread: in a program with threads the
 * library did not start (or that unblock signals), the signal would go to
 * one of them and take its default action (SIGTERM ends the process)
 * instead of reaching the loop. A sigaction handler runs in whichever
 * thread the kernel picks, and all it does is wake the loop. */
#include "loop/loop.h"

#include <sched.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

/* One entry per signal number, for the whole process: at most one loop owns
 * a signal. The handler reads only the atomics. */
static struct sigslot {
    atomic_int wake_fd;      /* the owner's eventfd, -1: none */
    atomic_int inflight;     /* handlers between reading wake_fd and writing it */
    atomic_bool pending;     /* arrived, not yet handed to the loop */
    tpio_loop_t *owner;      /* under g_lock */
    struct sigaction old;    /* the disposition to restore */
} g_slots[NSIG];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void init_slots(void)
{
    for (int i = 0; i < NSIG; i++)
        atomic_init(&g_slots[i].wake_fd, -1);
}

static void on_signal(int sig)
{
    int saved = errno;
    struct sigslot *s = &g_slots[sig];
    atomic_store(&s->pending, true);
    atomic_fetch_add(&s->inflight, 1);
    int fd = atomic_load(&s->wake_fd);
    if (fd >= 0) {
        uint64_t one = 1;
        ssize_t r = write(fd, &one, sizeof one);
        (void)r; /* a full eventfd is awake already */
    }
    atomic_fetch_sub(&s->inflight, 1);
    errno = saved;
}

/* Signals a handler running later cannot serve: SIGKILL and SIGSTOP cannot
 * be caught, and returning from a fault (SIGSEGV...) re-runs the faulting
 * instruction before the loop could ever run anything. */
static bool catchable(int sig)
{
    return sig > 0 && sig < NSIG && sig != SIGKILL && sig != SIGSTOP && sig != SIGSEGV &&
           sig != SIGBUS && sig != SIGILL && sig != SIGFPE;
}

static void run_handler(tpio_loop_t *loop, void *arg)
{
    int sig = (int)(intptr_t)arg;
    /* removed (or replaced) since it arrived: what is registered now runs */
    if (loop->sig_handlers && loop->sig_handlers[sig].cb)
        loop->sig_handlers[sig].cb(loop, sig, loop->sig_handlers[sig].arg);
}

/* Woken: hand the signals that arrived to their handlers. */
static void signals_dispatch(tpio_loop_t *loop)
{
    if (!loop->sig_mask)
        return;
    for (int sig = 1; sig < NSIG; sig++) {
        if (!(loop->sig_mask & (UINT64_C(1) << (sig - 1))))
            continue;
        if (!atomic_exchange(&g_slots[sig].pending, false))
            continue;
        /* as an ordinary callback of this iteration, as asyncio does; with
         * no slot left for it, at once rather than never */
        if (tpio_loop_call_soon(loop, run_handler, (void *)(intptr_t)sig, NULL) < 0)
            run_handler(loop, (void *)(intptr_t)sig);
    }
}

static void signals_close(tpio_loop_t *loop);
static const struct tpio__service signal_service = {signals_dispatch, signals_close,
                                                    signals_close};

int tpio_loop_add_signal_handler(tpio_loop_t *loop, int sig, tpio_signal_cb_t cb, void *arg)
{
    if (!loop || !cb || !catchable(sig))
        return -EINVAL;
    tpio__loop_service(loop, &signal_service);
    pthread_once(&g_once, init_slots);
    if (!loop->sig_handlers) {
        loop->sig_handlers = tpio__calloc(NSIG, sizeof *loop->sig_handlers);
        if (!loop->sig_handlers)
            return -ENOMEM;
    }
    struct sigslot *s = &g_slots[sig];
    pthread_mutex_lock(&g_lock);
    int rc = 0;
    if (s->owner && s->owner != loop) {
        rc = -EBUSY;
    } else if (!s->owner) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sa.sa_flags = SA_RESTART; /* the program's blocking calls go on */
        sigfillset(&sa.sa_mask);
        atomic_store(&s->pending, false);
        atomic_store(&s->wake_fd, loop->efd);
        if (sigaction(sig, &sa, &s->old) < 0) {
            rc = -errno;
            atomic_store(&s->wake_fd, -1);
        } else {
            s->owner = loop;
            loop->sig_mask |= UINT64_C(1) << (sig - 1);
        }
    }
    if (rc == 0) { /* adding again replaces the callback */
        loop->sig_handlers[sig].cb = cb;
        loop->sig_handlers[sig].arg = arg;
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

/* Under g_lock. */
static void release(tpio_loop_t *loop, int sig)
{
    struct sigslot *s = &g_slots[sig];
    atomic_store(&s->wake_fd, -1);
    sigaction(sig, &s->old, NULL);
    /* A handler on another thread that read the descriptor before it was
     * withdrawn writes to it yet: wait for it, so that the loop never closes
     * the eventfd (and the kernel never reuses its number) under a write.
     * The handler does nothing but that write: the wait is short. */
    while (atomic_load(&s->inflight))
        sched_yield();
    atomic_store(&s->pending, false);
    s->owner = NULL;
    loop->sig_mask &= ~(UINT64_C(1) << (sig - 1));
    loop->sig_handlers[sig].cb = NULL;
    loop->sig_handlers[sig].arg = NULL;
}

int tpio_loop_remove_signal_handler(tpio_loop_t *loop, int sig, bool *removed)
{
    if (!loop || sig <= 0 || sig >= NSIG)
        return -EINVAL;
    bool had = false;
    pthread_mutex_lock(&g_lock);
    if (g_slots[sig].owner == loop) {
        release(loop, sig);
        had = true;
    }
    pthread_mutex_unlock(&g_lock);
    if (removed)
        *removed = had;
    return 0;
}

/* At shutdown and close: the old dispositions come back. */
static void signals_close(tpio_loop_t *loop)
{
    if (loop->sig_mask) {
        pthread_mutex_lock(&g_lock);
        for (int sig = 1; sig < NSIG; sig++)
            if (g_slots[sig].owner == loop)
                release(loop, sig);
        pthread_mutex_unlock(&g_lock);
    }
    tpio__free(loop->sig_handlers);
    loop->sig_handlers = NULL;
}
