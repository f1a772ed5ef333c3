/* The event loop: ready FIFO, timer heap, run/stop, call_soon_threadsafe,
 * error handler. Callback slots live in one array reused through a free list,
 * so scheduling allocates nothing in the steady state; handles are
 * (generation, index) pairs so a stale handle can never cancel a new call. */
#include "loop/loop.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* A slot is a callback (ready, or a timer), or a request under way that can
 * be cancelled (its cb is the cancel function), so that one kind of handle
 * and one tpio_loop_cancel serve both. */
enum { SLOT_FREE, SLOT_READY, SLOT_TIMER, SLOT_CANCELLED, SLOT_REQUEST };
#define NIL UINT32_MAX

uint64_t tpio__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int tpio_loop_time(const tpio_loop_t *loop, double *now)
{
    if (!loop || !now)
        return -EINVAL;
    *now = (double)tpio__now_ns() / 1e9;
    return 0;
}

/* ---- slots --------------------------------------------------------------- */

static int slot_alloc(tpio_loop_t *loop, uint32_t *out)
{
    if (loop->free_head == NIL) {
        uint32_t n = loop->nslots ? loop->nslots * 2 : 64;
        struct tpio__slot *s = tpio__realloc(loop->slots, n * sizeof *s);
        if (!s)
            return -ENOMEM;
        for (uint32_t i = loop->nslots; i < n; i++) {
            s[i].state = SLOT_FREE;
            s[i].gen = 1;
            s[i].next = i + 1 < n ? i + 1 : NIL;
        }
        loop->free_head = loop->nslots;
        loop->slots = s;
        loop->nslots = n;
    }
    uint32_t i = loop->free_head;
    loop->free_head = loop->slots[i].next;
    *out = i;
    return 0;
}

/* Handles made before no longer match (0 is never a generation). */
static void retire_gen(struct tpio__slot *s)
{
    if (++s->gen == 0)
        s->gen = 1;
}

static void slot_free(tpio_loop_t *loop, uint32_t i)
{
    struct tpio__slot *s = &loop->slots[i];
    s->state = SLOT_FREE;
    retire_gen(s);
    s->next = loop->free_head;
    loop->free_head = i;
}

static tpio_handle_t make_handle(const tpio_loop_t *loop, uint32_t i)
{
    return ((uint64_t)loop->slots[i].gen << 32) | (uint64_t)(i + 1);
}

static void ready_push(tpio_loop_t *loop, uint32_t i)
{
    loop->slots[i].next = NIL;
    if (loop->ready_tail == NIL)
        loop->ready_head = i;
    else
        loop->slots[loop->ready_tail].next = i;
    loop->ready_tail = i;
    loop->nready++;
}

static uint32_t ready_pop(tpio_loop_t *loop)
{
    uint32_t i = loop->ready_head;
    loop->ready_head = loop->slots[i].next;
    if (loop->ready_head == NIL)
        loop->ready_tail = NIL;
    loop->nready--;
    return i;
}

/* ---- timer heap (binary, keyed by deadline then sequence) ---------------- */

static bool heap_less(const tpio_loop_t *loop, uint32_t a, uint32_t b)
{
    const struct tpio__slot *x = &loop->slots[a], *y = &loop->slots[b];
    return x->when < y->when || (x->when == y->when && x->seq < y->seq);
}

static void heap_set(tpio_loop_t *loop, uint32_t pos, uint32_t slot)
{
    loop->heap[pos] = slot;
    loop->slots[slot].heap = pos;
}

static void heap_up(tpio_loop_t *loop, uint32_t pos)
{
    uint32_t slot = loop->heap[pos];
    while (pos > 0) {
        uint32_t parent = (pos - 1) / 2;
        if (!heap_less(loop, slot, loop->heap[parent]))
            break;
        heap_set(loop, pos, loop->heap[parent]);
        pos = parent;
    }
    heap_set(loop, pos, slot);
}

static void heap_down(tpio_loop_t *loop, uint32_t pos)
{
    uint32_t slot = loop->heap[pos];
    for (;;) {
        uint32_t c = 2 * pos + 1;
        if (c >= loop->heap_len)
            break;
        if (c + 1 < loop->heap_len && heap_less(loop, loop->heap[c + 1], loop->heap[c]))
            c++;
        if (!heap_less(loop, loop->heap[c], slot))
            break;
        heap_set(loop, pos, loop->heap[c]);
        pos = c;
    }
    heap_set(loop, pos, slot);
}

static void heap_remove(tpio_loop_t *loop, uint32_t pos)
{
    uint32_t last = loop->heap[--loop->heap_len];
    if (pos == loop->heap_len)
        return;
    heap_set(loop, pos, last);
    heap_down(loop, pos);
    heap_up(loop, loop->slots[last].heap);
}

/* ---- scheduling ------------------------------------------------------------ */

int tpio_loop_call_soon(tpio_loop_t *loop, tpio_callback_t cb, void *arg, tpio_handle_t *handle)
{
    if (!loop || !cb)
        return -EINVAL;
    uint32_t i;
    int rc = slot_alloc(loop, &i);
    if (rc)
        return rc;
    loop->slots[i].cb = cb;
    loop->slots[i].arg = arg;
    loop->slots[i].state = SLOT_READY;
    ready_push(loop, i);
    if (handle)
        *handle = make_handle(loop, i);
    return 0;
}


static int schedule_at_ns(tpio_loop_t *loop, uint64_t when, tpio_callback_t cb, void *arg,
                          tpio_handle_t *handle)
{
    if (loop->heap_len == loop->heap_cap) {
        uint32_t n = loop->heap_cap ? loop->heap_cap * 2 : 64;
        uint32_t *h = tpio__realloc(loop->heap, n * sizeof *h);
        if (!h)
            return -ENOMEM;
        loop->heap = h;
        loop->heap_cap = n;
    }
    uint32_t i;
    int rc = slot_alloc(loop, &i);
    if (rc)
        return rc;
    struct tpio__slot *s = &loop->slots[i];
    s->cb = cb;
    s->arg = arg;
    s->when = when;
    s->seq = loop->timer_seq++;
    s->state = SLOT_TIMER;
    loop->heap_len++;
    heap_set(loop, loop->heap_len - 1, i);
    heap_up(loop, loop->heap_len - 1);
    if (handle)
        *handle = make_handle(loop, i);
    return 0;
}

static uint64_t seconds_to_ns(double when)
{
    if (!(when > 0)) /* also catches NaN */
        return 0;
    if (when > 1.8e10)
        return UINT64_MAX / 2;
    return (uint64_t)(when * 1e9 + 0.5); /* no libm dependency */
}

int tpio_loop_call_at(tpio_loop_t *loop, double when, tpio_callback_t cb, void *arg,
                 tpio_handle_t *handle)
{
    if (!loop || !cb || isnan(when))
        return -EINVAL;
    return schedule_at_ns(loop, seconds_to_ns(when), cb, arg, handle);
}

int tpio_loop_call_later(tpio_loop_t *loop, double delay, tpio_callback_t cb, void *arg,
                    tpio_handle_t *handle)
{
    if (!loop || !cb || isnan(delay))
        return -EINVAL;
    return schedule_at_ns(loop, tpio__now_ns() + seconds_to_ns(delay), cb, arg, handle);
}

int tpio_loop_cancel(tpio_loop_t *loop, tpio_handle_t handle)
{
    if (!loop)
        return -EINVAL;
    uint64_t idx = (handle & 0xffffffffu);
    uint32_t gen = (uint32_t)(handle >> 32);
    if (idx == 0 || idx > loop->nslots)
        return -ENOENT;
    uint32_t i = (uint32_t)idx - 1;
    struct tpio__slot *s = &loop->slots[i];
    if (s->gen != gen)
        return -ENOENT;
    if (s->state == SLOT_TIMER) {
        heap_remove(loop, s->heap);
        slot_free(loop, i);
        return 0;
    }
    if (s->state == SLOT_REQUEST) {
        tpio_callback_t cancel = s->cb;
        void *req = s->arg;
        slot_free(loop, i); /* first: the request is done with it */
        cancel(loop, req);
        return 0;
    }
    if (s->state == SLOT_READY) {
        /* Unlinking from the singly linked FIFO would cost a walk: mark it,
         * and the run phase frees it without calling. */
        s->state = SLOT_CANCELLED;
        retire_gen(s); /* a second cancel now misses */
        return 0;
    }
    return -ENOENT;
}

/* ---- requests -------------------------------------------------------------- */

int tpio__request_new(tpio_loop_t *loop, tpio_callback_t cancel, void *req, tpio_handle_t *h)
{
    uint32_t i;
    int rc = slot_alloc(loop, &i);
    if (rc)
        return rc;
    loop->slots[i].cb = cancel;
    loop->slots[i].arg = req;
    loop->slots[i].state = SLOT_REQUEST;
    loop->slots[i].seq = 0; /* requests: 1 when shutdown leaves it alone */
    *h = make_handle(loop, i);
    return 0;
}

void tpio__request_keep_on_shutdown(tpio_loop_t *loop, tpio_handle_t h)
{
    loop->slots[(uint32_t)(h & 0xffffffffu) - 1].seq = 1;
}

void tpio__request_done(tpio_loop_t *loop, tpio_handle_t h)
{
    uint32_t i = (uint32_t)(h & 0xffffffffu) - 1;
    if (h && i < loop->nslots && loop->slots[i].gen == (uint32_t)(h >> 32) &&
        loop->slots[i].state == SLOT_REQUEST)
        slot_free(loop, i);
}

bool tpio__request_pass(tpio_loop_t *loop, tpio_handle_t h, tpio_callback_t cancel, void *req)
{
    uint32_t i = (uint32_t)(h & 0xffffffffu) - 1;
    if (!h || i >= loop->nslots || loop->slots[i].gen != (uint32_t)(h >> 32) ||
        loop->slots[i].state != SLOT_REQUEST)
        return false;
    loop->slots[i].cb = cancel;
    loop->slots[i].arg = req;
    return true;
}

/* ---- callbacks that cannot be lost ---------------------------------------- */

void tpio__call_soon_node(tpio_loop_t *loop, struct tpio__node *n)
{
    /* Behind a node that waits already, so that nodes keep their order (a
     * sendfile's completion before its transport's connection_lost). */
    if (!loop->late_head && tpio_loop_call_soon(loop, n->cb, n, NULL) == 0)
        return;
    n->next = NULL;
    if (loop->late_tail)
        loop->late_tail->next = n;
    else
        loop->late_head = n;
    loop->late_tail = n;
}

static void run_late(tpio_loop_t *loop)
{
    /* Only those queued so far: what they queue waits for the next round. */
    struct tpio__node *n = loop->late_head;
    loop->late_head = loop->late_tail = NULL;
    while (n) {
        struct tpio__node *next = n->next;
        n->cb(loop, n);
        n = next;
    }
}

/* ---- call_soon_threadsafe ------------------------------------------------- */

void tpio__call_soon_threadsafe_node(tpio_loop_t *loop, struct tpio__node *n)
{
    n->next = NULL;
    pthread_mutex_lock(&loop->ts_lock);
    if (loop->ts_tail)
        loop->ts_tail->next = n;
    else
        loop->ts_head = n;
    loop->ts_tail = n;
    /* One eventfd write per wake-up, not per call. Done under the lock: once
     * the loop can have run this node (and its owner closed the loop), the
     * caller must not touch the loop any more. */
    if (!atomic_exchange(&loop->ts_signalled, true)) {
        uint64_t one = 1;
        ssize_t r;
        do
            r = write(loop->efd, &one, sizeof one);
        while (r < 0 && errno == EINTR);
    }
    pthread_mutex_unlock(&loop->ts_lock);
}

/* A request of the public call: the node (first: a node is its request),
 * and the user's callback. */
struct ts_req {
    struct tpio__node node;
    tpio_callback_t cb;
    void *arg;
};

static void ts_run(tpio_loop_t *loop, void *arg)
{
    struct ts_req r = *(struct ts_req *)arg;
    tpio__free(arg);
    r.cb(loop, r.arg);
}

int tpio_loop_call_soon_threadsafe(tpio_loop_t *loop, tpio_callback_t cb, void *arg)
{
    if (!loop || !cb)
        return -EINVAL;
    struct ts_req *r = tpio__malloc(sizeof *r);
    if (!r)
        return -ENOMEM;
    r->node.cb = ts_run;
    r->cb = cb;
    r->arg = arg;
    tpio__call_soon_threadsafe_node(loop, &r->node);
    return 0;
}

/* Move what other threads queued into the ready FIFO; at close (run false),
 * free the public requests instead (internal nodes belong to objects that
 * keep the loop from closing, so none is left then). */
static void drain_threadsafe(tpio_loop_t *loop, bool run)
{
    pthread_mutex_lock(&loop->ts_lock);
    struct tpio__node *n = loop->ts_head;
    loop->ts_head = loop->ts_tail = NULL;
    atomic_store(&loop->ts_signalled, false);
    pthread_mutex_unlock(&loop->ts_lock);
    while (n) {
        struct tpio__node *next = n->next;
        if (run)
            tpio__call_soon_node(loop, n);
        else if (n->cb == ts_run)
            tpio__free(n);
        n = next;
    }
}

static void woken(tpio_loop_t *loop)
{
    drain_threadsafe(loop, true);
    for (int i = 0; i < loop->nservices; i++)
        if (loop->services[i]->wake)
            loop->services[i]->wake(loop);
}

static void efd_ready(tpio_loop_t *loop, struct tpio__io *io, uint32_t events)
{
    (void)events;
    uint64_t v;
    while (read(io->fd, &v, sizeof v) < 0 && errno == EINTR)
        ;
    woken(loop);
}

static int efd_start(tpio_loop_t *loop);

/* The kernel read the eventfd (its counter comes in data, reset): no read
 * of our own, where readiness costs one per wake-up. */
static void efd_done(tpio_loop_t *loop, struct tpio__op *op, int32_t res, const void *data,
                     bool more)
{
    (void)op, (void)data;
    if (res != -ECANCELED)
        woken(loop);
    if (!more && res != -ECANCELED && efd_start(loop) < 0)
        tpio__watch(loop, &loop->efd_io, TPIO__IN); /* readiness, then */
}

/* The wake-up: a multishot read of the eventfd where the backend reads
 * descriptors itself, else a watch for readability. */
static int efd_start(tpio_loop_t *loop)
{
    if (tpio__backend_has_file_ops(loop->backend) &&
        tpio__op_recv(loop->backend, &loop->efd_op, loop->efd, true, efd_done) == 0)
        return 0;
    return tpio__watch(loop, &loop->efd_io, TPIO__IN);
}

/* ---- lifecycle ------------------------------------------------------------ */

/* The first version of tpio_loop_opts_t: its size alone. */
#define LOOP_OPTS_V1 sizeof(size_t)

int tpio_loop_new(tpio_loop_t **out, const tpio_loop_opts_t *opts)
{
    if (!out)
        return -EINVAL;
    tpio_loop_opts_t o = {.size = sizeof o};
    if (opts) {
        int rc = TPIO__OPTS_COPY(&o, opts, LOOP_OPTS_V1);
        if (rc < 0)
            return rc;
    }
    if ((unsigned)o.backend > TPIO_BACKEND_IO_URING)
        return -EINVAL;
    tpio__allocator_hold();
    tpio_loop_t *loop = tpio__calloc(1, sizeof *loop);
    if (!loop) {
        tpio__allocator_release();
        return -ENOMEM;
    }
    loop->free_head = loop->ready_head = loop->ready_tail = NIL;
    loop->efd = -1;
    for (int k = 0; k < TPIO__OWNED_KINDS; k++)
        tpio__list_init(&loop->owned[k].items);
    int rc = tpio__backend_open(o.backend, &loop->backend);
    if (rc)
        goto fail;
    loop->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->efd < 0) {
        rc = -errno;
        goto fail;
    }
    /* Page-aligned: malloc hands a buffer this size out of mmap at 16 bytes
     * past a page, and the kernel's copy into a destination that is not
     * cache-line aligned costs more per byte. Measured at 16 KiB x 10 with
     * bench/loadgen's interleaved slices: 1% more round trips per second and
     * 1-4% less server CPU per round trip. */
    loop->rbuf = tpio__aligned_alloc(4096, TPIO__READ_SIZE);
    if (!loop->rbuf) {
        rc = -ENOMEM;
        goto fail;
    }
    pthread_mutex_init(&loop->ts_lock, NULL);
    atomic_init(&loop->ts_signalled, false);
    tpio__io_init(&loop->efd_io, loop->efd, efd_ready);
    rc = efd_start(loop);
    if (rc) {
        pthread_mutex_destroy(&loop->ts_lock);
        goto fail;
    }
    *out = loop;
    return 0;
fail:
    if (loop->efd >= 0)
        close(loop->efd);
    tpio__backend_close(loop->backend);
    tpio__aligned_free(loop->rbuf);
    tpio__free(loop);
    tpio__allocator_release();
    return rc;
}

int tpio_loop_get_backend(const tpio_loop_t *loop, const char **name)
{
    if (!loop || !name)
        return -EINVAL;
    *name = tpio__backend_name(loop->backend);
    return 0;
}

unsigned char *tpio__loop_layer_buf(tpio_loop_t *loop)
{
    if (!loop->layer_buf)
        loop->layer_buf = tpio__aligned_alloc(4096, TPIO__LAYER_BUF_SIZE);
    return loop->layer_buf;
}

int tpio_loop_close(tpio_loop_t *loop)
{
    if (!loop)
        return -EINVAL;
    if (loop->running || loop->live)
        return -EBUSY;
    drain_threadsafe(loop, false);
    for (int i = 0; i < loop->nservices; i++)
        loop->services[i]->close(loop);
    tpio__op_drop(loop->backend, &loop->efd_op);
    tpio__watch(loop, &loop->efd_io, 0);
    close(loop->efd);
    tpio__backend_close(loop->backend);
    pthread_mutex_destroy(&loop->ts_lock);
    tpio__free(loop->slots);
    tpio__free(loop->heap);
    tpio__aligned_free(loop->rbuf);
    tpio__aligned_free(loop->layer_buf);
    /* the write buffers' pool: a list through each chunk's first field */
    for (void *c = loop->spare_chunk; c;) {
        void *next = *(void **)c;
        tpio__free(c);
        c = next;
    }
    tpio__free(loop);
    tpio__allocator_release();
    return 0;
}

int tpio_loop_is_running(const tpio_loop_t *loop, bool *running)
{
    if (!loop || !running)
        return -EINVAL;
    *running = loop->running;
    return 0;
}

int tpio_loop_stop(tpio_loop_t *loop)
{
    if (!loop)
        return -EINVAL;
    loop->stopping = true;
    return 0;
}

/* One iteration, as asyncio's _run_once: poll (not blocking when callbacks
 * are ready), move due timers to the FIFO, then run exactly the callbacks
 * that were ready at that point; what they schedule waits for the next one. */
static int run_once(tpio_loop_t *loop, int timeout_ms)
{
    int timeout = timeout_ms;
    if (loop->nready || loop->stopping || loop->late_head) {
        timeout = 0;
    } else if (loop->heap_len) {
        uint64_t now = tpio__now_ns();
        uint64_t when = loop->slots[loop->heap[0]].when;
        uint64_t ms = when > now ? (when - now + 999999) / 1000000 : 0;
        if (ms > INT32_MAX)
            ms = INT32_MAX;
        if (timeout < 0 || (uint64_t)timeout > ms)
            timeout = (int)ms;
    }
    int rc = tpio__backend_poll(loop->backend, loop, timeout,
                                loop->wait.before ? &loop->wait : NULL);
    if (rc < 0)
        return rc;

    if (loop->heap_len) {
        uint64_t now = tpio__now_ns();
        while (loop->heap_len && loop->slots[loop->heap[0]].when <= now) {
            uint32_t i = loop->heap[0];
            heap_remove(loop, 0);
            loop->slots[i].state = SLOT_READY;
            ready_push(loop, i);
        }
    }

    for (uint32_t n = loop->nready; n > 0; n--) {
        uint32_t i = ready_pop(loop);
        struct tpio__slot *s = &loop->slots[i];
        tpio_callback_t cb = s->cb;
        void *arg = s->arg;
        bool cancelled = s->state == SLOT_CANCELLED;
        slot_free(loop, i); /* before the call: it may schedule and realloc */
        if (!cancelled)
            cb(loop, arg);
    }
    /* After the queue: whatever it held before them has run first. */
    if (loop->late_head)
        run_late(loop);
    return 0;
}

int tpio_loop_run_once(tpio_loop_t *loop, double timeout)
{
    if (!loop || isnan(timeout))
        return -EINVAL;
    int timeout_ms = -1;
    if (timeout >= 0) { /* whole milliseconds, rounded up: never wake early */
        double ms = timeout * 1000;
        timeout_ms = ms >= INT32_MAX ? INT32_MAX : (int)ms;
        if (timeout_ms < ms)
            timeout_ms++;
    }
    if (loop->running)
        return -EBUSY;
    loop->running = true;
    int rc = run_once(loop, timeout_ms);
    loop->running = false;
    loop->stopping = false; /* a stop() asked during this iteration is done */
    return rc;
}

int tpio_loop_run_forever(tpio_loop_t *loop)
{
    if (!loop)
        return -EINVAL;
    if (loop->running)
        return -EBUSY;
    loop->running = true;
    int rc = 0;
    for (;;) {
        rc = run_once(loop, -1);
        if (rc < 0 || loop->stopping)
            break;
    }
    loop->stopping = false;
    loop->running = false;
    return rc;
}

/* ---- shutdown ------------------------------------------------------------------ */

static void shutdown_done(tpio_loop_t *loop, void *arg)
{
    (void)arg;
    if (loop->live) { /* made since this was queued: the end waits for it */
        loop->shutdown_node.cb = NULL;
        return;
    }
    tpio_done_cb_t cb = loop->shutdown_cb, cb2 = loop->escalate_cb;
    void *cb_arg = loop->shutdown_arg, *cb2_arg = loop->escalate_arg;
    loop->shutdown_cb = loop->escalate_cb = NULL;
    cb(loop, 0, cb_arg);
    if (cb2)
        cb2(loop, 0, cb2_arg);
}

static void end_all(tpio_loop_t *loop, bool abort)
{
    /* Requests first (connection attempts, sendfile...): their completions
     * say -ECANCELED. Then servers, then the transports left. */
    for (uint32_t i = 0; i < loop->nslots; i++)
        if (loop->slots[i].state == SLOT_REQUEST && !loop->slots[i].seq)
            tpio_loop_cancel(loop, make_handle(loop, i));
    for (int k = TPIO__OWNED_KINDS - 1; k >= 0; k--) {
        struct tpio__list *head = &loop->owned[k].items;
        if (tpio__list_empty(head))
            continue;
        /* ending an item may file new ones (a server's last connections);
         * each is ended once: the walk stops where the list ended */
        struct tpio__list *last = head->prev;
        for (struct tpio__list *it = head->next, *next; it != head; it = next) {
            next = it->next;
            bool stop = it == last;
            loop->owned[k].end(it, abort);
            if (stop)
                break;
        }
    }
}

void tpio__shutdown_check(tpio_loop_t *loop)
{
    /* once: the node is queued until it runs */
    if (loop->shutdown_node.cb)
        return;
    loop->shutdown_node.cb = shutdown_done;
    tpio__call_soon_node(loop, &loop->shutdown_node);
}

int tpio_loop_shutdown(tpio_loop_t *loop, tpio_shutdown_t how, tpio_done_cb_t cb, void *arg)
{
    if (!loop || !cb || (how != TPIO_SHUTDOWN_CLOSE && how != TPIO_SHUTDOWN_ABORT))
        return -EINVAL;
    bool abort = how == TPIO_SHUTDOWN_ABORT;
    if (loop->shutdown_cb) {
        /* under way: only a first escalation from CLOSE to ABORT */
        if (!abort || loop->shutdown_aborts || loop->shutdown_node.cb)
            return -EBUSY;
        loop->escalate_cb = cb;
        loop->escalate_arg = arg;
        loop->shutdown_aborts = true;
        end_all(loop, true);
        return 0;
    }
    loop->shutdown_cb = cb;
    loop->shutdown_arg = arg;
    loop->shutdown_aborts = abort;
    loop->shutdown_node.cb = NULL;
    for (int i = 0; i < loop->nservices; i++)
        loop->services[i]->shutdown(loop);
    end_all(loop, abort);
    if (loop->live == 0)
        tpio__shutdown_check(loop);
    return 0;
}

/* ---- error handler -------------------------------------------------------- */

int tpio_loop_default_error_handler(tpio_loop_t *loop, const tpio_error_context_t *ctx)
{
    if (!loop || !ctx)
        return -EINVAL;
    char extra[128] = "";
    size_t n = 0;
    if (ctx->transport)
        n += (size_t)snprintf(extra + n, sizeof extra - n, " transport=%p", (void *)ctx->transport);
    if (ctx->server && n < sizeof extra)
        n += (size_t)snprintf(extra + n, sizeof extra - n, " server=%p", (void *)ctx->server);
    if (ctx->fd >= 0 && n < sizeof extra)
        snprintf(extra + n, sizeof extra - n, " fd=%d", ctx->fd);
    if (ctx->error)
        fprintf(stderr, "tpio: %s: %s (%s)%s\n", ctx->message ? ctx->message : "error",
                tpio_strerror(ctx->error), tpio_err_name(ctx->error), extra);
    else
        fprintf(stderr, "tpio: %s%s\n", ctx->message ? ctx->message : "error", extra);
    return 0;
}

int tpio_loop_set_wait_hooks(tpio_loop_t *loop, tpio_wait_hook_t before,
                             tpio_wait_hook_t after, void *arg)
{
    if (!loop || !before != !after)
        return -EINVAL;
    loop->wait.before = before;
    loop->wait.after = after;
    loop->wait.arg = arg;
    return 0;
}

int tpio_loop_set_error_handler(tpio_loop_t *loop, tpio_error_handler_t handler, void *arg)
{
    if (!loop)
        return -EINVAL;
    loop->error_handler = handler;
    loop->error_arg = arg;
    return 0;
}

int tpio_loop_call_error_handler(tpio_loop_t *loop, const tpio_error_context_t *ctx)
{
    if (!loop || !ctx)
        return -EINVAL;
    if (loop->error_handler)
        loop->error_handler(loop, ctx, loop->error_arg);
    else
        tpio_loop_default_error_handler(loop, ctx);
    return 0;
}

void tpio__report(tpio_loop_t *loop, const char *msg, int err, tpio_transport_t *t,
                  tpio_protocol_t *p, tpio_server_t *s, int fd)
{
    tpio_error_context_t ctx = {
        .message = msg, .error = err, .transport = t, .protocol = p, .server = s, .fd = fd,
    };
    tpio_loop_call_error_handler(loop, &ctx);
}
