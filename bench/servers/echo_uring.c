/* The io_uring yardstick: an echo server on one ring, as tight as the kernel
 * allows. A multishot accept, and per connection a multishot receive into a
 * ring of provided buffers; each buffer received is sent back as it is, and
 * only then returned to the ring, so the echo never copies. One
 * io_uring_enter per loop iteration submits what the last batch of
 * completions asked for and waits for the next batch. No allocation on the
 * hot path.
 *
 * Flow control is the epoll yardstick's (bench_common.h): a connection's
 * bytes received and not yet sent are its buffers waiting in its queue;
 * above BENCH_HIGH its receive is cancelled, at BENCH_LOW or below it is
 * armed again. Sends go one at a time per connection: a second send on the
 * same socket could overtake the first while that one waits for room. */
#include "../bench_common.h"

#include <errno.h>
#include <liburing.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>

/* As many as tpio's io_uring backend has, so that the idle-connection
 * figures compare: each idle connection's first byte lands in the next
 * buffer of the ring, touching one page of it. Enough that the
 * 100-connection load never runs out; the pages no receive touched cost
 * nothing. */
#define NBUFS 128u /* a power of two, at most 32768 */
#define BGID 0
#define SQ_ENTRIES 1024
#define CQ_ENTRIES 8192 /* multishot: several completions per submission */
#define BATCH 256
#define NONE 0xffffu

enum { OP_RECV, OP_SEND, OP_ACCEPT, OP_IGNORE }; /* the low bits of user_data */
#define OP_MASK 3u

struct conn {
    int fd;
    unsigned pending;          /* bytes received, not yet sent */
    unsigned off;              /* bytes of the head buffer already sent */
    unsigned short head, tail; /* the buffers waiting, linked by next_buf */
    unsigned char reading;     /* not paused by the watermark */
    unsigned char recv_armed, cancelling, sending, closing, starved;
    struct conn *sprev, *snext; /* waiting for a buffer after ENOBUFS */
};

static struct bench_args args;
static struct io_uring ring;
static struct io_uring_buf_ring *br;
static char *bufs;
static size_t bufsz;
static unsigned short next_buf[NBUFS];
static unsigned buf_len[NBUFS];
static unsigned nfree;  /* buffers the kernel has or will have at the next submit */
static int nadd;        /* given back since the ring's tail last moved */
static struct conn *starved;
static int lfd;

/* The ring's tail moves once per batch, not once per buffer. */
static void bufs_publish(void)
{
    if (nadd) {
        io_uring_buf_ring_advance(br, nadd);
        nadd = 0;
    }
}

static void buf_give(unsigned bid)
{
    io_uring_buf_ring_add(br, bufs + (size_t)bid * bufsz, (unsigned)bufsz, (unsigned short)bid,
                          io_uring_buf_ring_mask(NBUFS), nadd++);
    nfree++;
}

/* The queue is full: submit what it holds. Out of line, so that the
 * common path of sqe_get stays inline. */
static __attribute__((noinline)) struct io_uring_sqe *sqe_wait(void)
{
    struct io_uring_sqe *sqe;
    while (!(sqe = io_uring_get_sqe(&ring))) {
        bufs_publish();
        io_uring_submit(&ring);
    }
    return sqe;
}

static inline struct io_uring_sqe *sqe_get(void)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    return sqe ? sqe : sqe_wait();
}

static void arm_accept(void)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, OP_ACCEPT);
}

static void arm_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    io_uring_sqe_set_data64(sqe, (uintptr_t)c | OP_RECV);
    c->recv_armed = 1;
}

/* MSG_WAITALL: the kernel itself retries what a short send left (stream
 * sockets, 5.18 on); a short completion is still handled, for older ones. */
static void send_head(struct conn *c)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_send(sqe, c->fd, bufs + (size_t)c->head * bufsz + c->off,
                       buf_len[c->head] - c->off, MSG_WAITALL | MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, (uintptr_t)c | OP_SEND);
    c->sending = 1;
}

static void cancel(uint64_t ud)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_cancel64(sqe, ud, 0);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    io_uring_sqe_set_data64(sqe, OP_IGNORE);
}

static void starve(struct conn *c)
{
    c->starved = 1;
    c->sprev = NULL;
    c->snext = starved;
    if (starved)
        starved->sprev = c;
    starved = c;
}

static void unstarve(struct conn *c)
{
    if (c->sprev)
        c->sprev->snext = c->snext;
    else
        starved = c->snext;
    if (c->snext)
        c->snext->sprev = c->sprev;
    c->starved = 0;
}

/* Freed once the kernel holds nothing of it: no receive armed, no send in
 * flight (its buffer may still be being read). */
static void conn_release(struct conn *c)
{
    if (c->recv_armed || c->sending)
        return;
    for (unsigned b = c->head; b != NONE; b = next_buf[b])
        buf_give(b);
    free(c);
}

/* The close goes through the ring, after the cancels: an SQE of this
 * connection still waiting in the queue then meets its own socket, never a
 * new one given the same descriptor. */
static void conn_close(struct conn *c)
{
    c->closing = 1;
    if (c->recv_armed && !c->cancelling) {
        cancel((uintptr_t)c | OP_RECV);
        c->cancelling = 1;
    }
    if (c->sending)
        cancel((uintptr_t)c | OP_SEND);
    if (c->starved)
        unstarve(c);
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_close(sqe, c->fd);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    io_uring_sqe_set_data64(sqe, OP_IGNORE);
    conn_release(c);
    bench_conn_closed(&args);
}

static void on_recv(struct conn *c, int res, unsigned flags)
{
    int more = (flags & IORING_CQE_F_MORE) != 0;
    if (flags & IORING_CQE_F_BUFFER) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        nfree--;
        if (res <= 0 || c->closing) {
            buf_give(bid);
        } else {
            buf_len[bid] = (unsigned)res;
            next_buf[bid] = NONE;
            c->pending += (unsigned)res;
            if (c->head == NONE) {
                c->head = c->tail = (unsigned short)bid;
                c->off = 0;
                send_head(c);
            } else {
                next_buf[c->tail] = (unsigned short)bid;
                c->tail = (unsigned short)bid;
            }
            if (c->reading && c->pending > BENCH_HIGH) {
                c->reading = 0;
                if (more && !c->cancelling) {
                    cancel((uintptr_t)c | OP_RECV);
                    c->cancelling = 1;
                }
            }
        }
    }
    if (more)
        return;
    c->recv_armed = c->cancelling = 0;
    if (c->closing) {
        conn_release(c);
        return;
    }
    if (res == 0 || (res < 0 && res != -ENOBUFS && res != -ECANCELED)) {
        conn_close(c);
        return;
    }
    if (!c->reading)
        return;
    if (res == -ENOBUFS && nfree == 0)
        starve(c);
    else
        arm_recv(c);
}

static void on_send(struct conn *c, int res)
{
    c->sending = 0;
    if (c->closing) {
        conn_release(c);
        return;
    }
    if (res <= 0) {
        conn_close(c);
        return;
    }
    unsigned bid = c->head;
    c->off += (unsigned)res;
    c->pending -= (unsigned)res;
    if (c->off < buf_len[bid]) {
        send_head(c);
        return;
    }
    c->head = next_buf[bid];
    c->off = 0;
    buf_give(bid);
    if (c->head != NONE)
        send_head(c);
    else
        c->tail = NONE;
    if (!c->reading && c->pending <= BENCH_LOW) {
        c->reading = 1;
        if (!c->recv_armed) /* else re-armed when the cancelled one ends */
            arm_recv(c);
    }
}

static void on_accept(int res, unsigned flags)
{
    if (res >= 0) {
        bench_nodelay(res);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(res);
        } else {
            c->fd = res;
            c->head = c->tail = NONE;
            c->reading = 1;
            arm_recv(c);
        }
    }
    /* EMFILE & co end the multishot accept: retried at once, as the
     * level-triggered epoll yardstick does */
    if (!(flags & IORING_CQE_F_MORE))
        arm_accept();
}

static void wake_starved(void)
{
    while (starved && nfree > 0) {
        struct conn *c = starved;
        unstarve(c);
        arm_recv(c);
    }
}

/* Completions are run only when the loop enters the kernel (DEFER_TASKRUN,
 * else COOP_TASKRUN), never by interrupting it; the first set the kernel
 * takes wins. */
static int ring_init(void)
{
    static const unsigned tries[] = {
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SINGLE_ISSUER |
            IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SINGLE_ISSUER,
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        0,
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof tries / sizeof *tries && rc == -EINVAL; i++) {
        struct io_uring_params p = {.flags = tries[i] | IORING_SETUP_SUBMIT_ALL |
                                             IORING_SETUP_CQSIZE,
                                    .cq_entries = CQ_ENTRIES};
        rc = io_uring_queue_init_params(SQ_ENTRIES, &ring, &p);
    }
    return rc;
}

/* Multishot receives need 6.0 (provided-buffer rings 5.19), and an older
 * kernel would only refuse them on the first connection. */
static int kernel_ok(void)
{
    struct utsname u;
    unsigned major = 0;
    return uname(&u) == 0 && sscanf(u.release, "%u", &major) == 1 && major >= 6;
}

int main(int argc, char **argv)
{
    args = bench_setup(argc, argv);
    bufsz = args.read_size;
    if (!kernel_ok()) {
        fprintf(stderr, "echo_uring: multishot receives need Linux 6.0\n");
        return 1;
    }
    int rc = ring_init();
    if (rc < 0) {
        fprintf(stderr, "echo_uring: io_uring_queue_init: %s\n", strerror(-rc));
        return 1;
    }
    io_uring_register_ring_fd(&ring); /* spares a descriptor lookup per enter, where it works */

    size_t ring_bytes = NBUFS * sizeof(struct io_uring_buf);
    br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    bufs = mmap(NULL, NBUFS * bufsz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br == MAP_FAILED || bufs == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    io_uring_buf_ring_init(br);
    struct io_uring_buf_reg reg = {.ring_addr = (uintptr_t)br, .ring_entries = NBUFS,
                                   .bgid = BGID};
    rc = io_uring_register_buf_ring(&ring, &reg, 0);
    if (rc < 0) {
        fprintf(stderr, "echo_uring: io_uring_register_buf_ring: %s\n", strerror(-rc));
        return 1;
    }
    for (unsigned i = 0; i < NBUFS; i++)
        buf_give(i);
    bufs_publish();

    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)args.port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(lfd, BENCH_BACKLOG) < 0) {
        perror("bind/listen");
        return 1;
    }
    arm_accept();
    bench_print_port(bench_fd_port(lfd));

    /* Waiting for one completion: the sends just submitted often complete
     * at once and end the wait, costing a second enter for the receives.
     * Waiting for more would need a timeout (a send may find no room and
     * never complete while a peer waits for its echo), and arming that
     * timer costs as much as the enter it saves. */
    struct io_uring_cqe *cqes[BATCH];
    for (;;) {
        bufs_publish();
        io_uring_submit_and_wait(&ring, 1);
        /* io_uring_cq_ready first: on an empty ring, peeking would enter
         * the kernel to run pending completions, which the next
         * submit_and_wait does anyway */
        while (io_uring_cq_ready(&ring)) {
            unsigned n = io_uring_peek_batch_cqe(&ring, cqes, BATCH);
            for (unsigned i = 0; i < n; i++) {
                uint64_t ud = cqes[i]->user_data;
                struct conn *c = (struct conn *)(uintptr_t)(ud & ~(uint64_t)OP_MASK);
                switch (ud & OP_MASK) {
                case OP_RECV:
                    on_recv(c, cqes[i]->res, cqes[i]->flags);
                    break;
                case OP_SEND:
                    on_send(c, cqes[i]->res);
                    break;
                case OP_ACCEPT:
                    on_accept(cqes[i]->res, cqes[i]->flags);
                    break;
                default:
                    break;
                }
            }
            io_uring_cq_advance(&ring, n);
        }
        wake_starved();
    }
}
