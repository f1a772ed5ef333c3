/* Shared test helpers: a protocol that records its callbacks, and a way to
 * run the loop until a condition holds (never a sleep). */
#ifndef TPIO_TEST_HELPERS_H
#define TPIO_TEST_HELPERS_H
#include <tpio.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* ---- the library's getters as values (each asserts that the call worked) -- */
double th_time(const tpio_loop_t *loop);
bool th_is_running(const tpio_loop_t *loop);
bool th_is_closing(const tpio_transport_t *t);
bool th_is_reading(const tpio_transport_t *t);
bool th_can_write_eof(const tpio_transport_t *t);
size_t th_wbuf_size(const tpio_transport_t *t);
tpio_transport_kind_t th_kind(const tpio_transport_t *t);
tpio_loop_t *th_transport_loop(const tpio_transport_t *t);
tpio_protocol_t *th_protocol(const tpio_transport_t *t);
/* The descriptor, or the call's error code. */
int th_fd(const tpio_transport_t *t);
bool th_is_serving(const tpio_server_t *s);
size_t th_socket_count(const tpio_server_t *s);
/* The i-th listening socket, or the call's error code. */
int th_server_socket(const tpio_server_t *s, size_t i);
tpio_loop_t *th_server_loop(const tpio_server_t *s);
size_t th_conn_count(const tpio_server_t *s);
/* The child's pid, or the call's error code. */
pid_t th_pid(const tpio_transport_t *t);
/* The pipe transport, or NULL when the call fails. */
tpio_transport_t *th_pipe(const tpio_transport_t *t, int fd);

/* Run the loop until *flag is true or `timeout` seconds pass. Returns *flag. */
bool th_run_until(tpio_loop_t *loop, const bool *flag, double timeout);
/* Same, for a counter reaching `target`. */
bool th_run_until_count(tpio_loop_t *loop, const size_t *count, size_t target,
                        double timeout);

/* The same socket address: family, port and address for IPv4 and IPv6 (not
 * the padding), the bytes for others (a Unix path, an unnamed socket). */
bool th_same_addr(const struct sockaddr *a, socklen_t al, const struct sockaddr *b,
                  socklen_t bl);

/* Monotonic clock, in seconds. */
double th_now_s(void);
/* The byte at offset k of the test pattern stream. */
unsigned char th_pat(size_t k);

/* A protocol that records every callback as a comma-separated event list:
 * "made", "data" (consecutive data_received calls coalesce into one),
 * "getbuf", "updated", "eof", "pause", "resume", "lost:<ERRNAME or 0>". */
typedef struct th_proto {
    tpio_protocol_t base;
    tpio_transport_t *t;
    char events[8192];
    size_t elen;
    unsigned char *rx;     /* everything received */
    size_t rxlen, rxcap;
    bool made, eof, lost;
    int lost_err;
    size_t pauses, resumes;
    /* behaviour knobs */
    bool eof_ret;          /* eof_received's answer */
    bool echo;             /* write back what arrives */
    bool close_on_data;    /* close() after the first data */
    bool pause_in_made;    /* pause_reading() inside connection_made */
    bool free_on_lost;     /* free itself in connection_lost */
    bool *lost_flag;       /* set true in connection_lost (if not NULL) */
    size_t *lost_counter;  /* incremented in connection_lost (if not NULL) */
    /* BufferedProtocol */
    unsigned char bufmem[65536];
    size_t bufsize;        /* size handed out by get_buffer (0 = sizeof bufmem) */
} th_proto_t;

extern const tpio_protocol_ops_t th_proto_ops;          /* Protocol */
extern const tpio_protocol_ops_t th_buffered_proto_ops; /* BufferedProtocol */

th_proto_t *th_proto_new(const tpio_protocol_ops_t *ops);
void th_proto_free(th_proto_t *p);
/* Factory: arg is a th_proto_t template whose knobs are copied. */
tpio_protocol_t *th_factory(void *arg);

/* ---- a transport under test plus its plain-socket peer ------------------ */

/* The deadline (seconds) the pair helpers wait for an event. */
#define TH_TMO 5.0

typedef struct th_pair {
    tpio_loop_t *loop;        /* th_fx.loop, or the pair's own outside a fixture */
    bool own_loop;
    th_proto_t tmpl;          /* knobs copied by the factory */
    th_proto_t *created;      /* last protocol the factory made */
    size_t factory_calls;
    /* completion */
    bool done;
    int err;
    size_t cb_calls;
    bool cb_in_loop;
    char events_at_cb[64];
    tpio_transport_t *t;
    th_proto_t *p;
    /* the peer */
    int peer;
    size_t wtotal;            /* bytes the transport was asked to write (pattern) */
} th_pair_t;

/* Factory (arg: th_pair_t) that counts its calls and remembers the protocol. */
tpio_protocol_t *th_pair_count_factory(void *arg);
/* Completion callback (arg: th_pair_t) that records its outcome. */
void th_pair_on_conn(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p,
                     int err, void *arg);
/* A pair on th_fx.loop (registered as th_fx.pair, which fini finishes), or,
 * outside a fixture, on a loop of its own. */
th_pair_t *th_pair_new(const tpio_protocol_ops_t *ops);
/* A listening TCP socket on 127.0.0.1; *port gets its port. */
int th_listen_v4(uint16_t *port);
/* A TCP client transport (tpio_loop_create_connection) and the accepted peer. */
th_pair_t *th_tcp_pair(const tpio_protocol_ops_t *ops, const th_proto_t *knobs);
/* A Unix socketpair: one end wrapped by tpio_loop_connect_accepted_socket. Whatever
 * `pre` holds is sent by the peer before the transport exists; pre_eof then
 * shuts the peer's write side. */
th_pair_t *th_unix_pair(const tpio_protocol_ops_t *ops, const th_proto_t *knobs,
                        const void *pre, size_t prelen, bool pre_eof);
/* Run until the protocol's connection_lost ran, then close everything (the
 * loop too if it is the pair's own). th_fx_fini() does this for th_fx.pair. */
void th_pair_finish(th_pair_t *pr);
/* Run a bounded number of loop iterations: used to check that something does
 * NOT happen. */
void th_run_iters(tpio_loop_t *loop, int n);
bool th_pair_run_until_rx(th_pair_t *pr, th_proto_t *p, size_t n);
void th_peer_send(th_pair_t *pr, const void *d, size_t n);
/* Peer reads exactly n bytes (running the loop meanwhile). */
size_t th_peer_recv_exact(th_pair_t *pr, void *buf, size_t n);
/* Peer expects EOF next: returns 0 on EOF, 1 if data came instead, -errno on
 * error, -ETIMEDOUT if nothing happened. */
int th_peer_expect_eof(th_pair_t *pr);
/* Peer reads the pattern stream from offset `off` until EOF (want_eof) or
 * until `expect` bytes; checks every byte; returns the count read. *end_err
 * gets 0 for EOF, -errno for an error, 1 when stopped at `expect`. */
size_t th_peer_drain_pattern(th_pair_t *pr, size_t off, size_t expect, bool want_eof,
                             int *end_err);
/* Shrink kernel buffers so that the transport's buffer fills quickly. */
void th_shrink_bufs(th_pair_t *pr);
/* Write the pattern stream until the transport has to buffer something. The
 * loop does not run meanwhile, so nothing drains. */
void th_fill_until_buffered(th_pair_t *pr);
/* The loop's backend receives and sends for the stream transports
 * (io_uring's operations): a write is buffered until the loop runs, never
 * sent inside the call, and a receive needs no get_buffer before data
 * comes (no read finds EAGAIN). */
bool th_ring_ops(tpio_loop_t *loop);
/* The same for pipes: multishot reads of pipes came with Linux 6.7. */
bool th_ring_pipe_ops(tpio_loop_t *loop);
/* Loops made from now on (on io_uring) send small writes the ring's way,
 * copied and sent with the next submission, even when the loop is quiet
 * (TPIO_URING_BATCH=1): for the tests of that way, deterministically. The
 * fixture's loop, if any, is made anew. */
void th_ring_batch(void);
/* Syscall nr fails with EPERM from here on, in this process only (and the
 * children it makes after): a seccomp filter, as a container's profile. */
void th_seccomp_refuse(int nr);
void th_write_pattern(th_pair_t *pr, size_t n);

/* ---- a loop error handler that counts reports --------------------------- */

typedef struct th_reports {
    size_t count;          /* error handler calls */
    char last[256];        /* the last one, as "message (ERRNAME)" */
} th_reports_t;

/* tpio_loop_set_error_handler callback; arg: a th_reports_t. */
void th_count_reports(tpio_loop_t *loop, const tpio_error_context_t *ctx, void *arg);
/* Asserts that no error was reported. */
void th_assert_no_reports(const th_reports_t *r);

/* ---- small shared callbacks --------------------------------------------- */

/* A loop callback (timer, call_soon...) that sets *(bool *)arg. */
void th_set_flag(tpio_loop_t *loop, void *arg);
/* A completion (wait_closed, shutdown) that asserts err == 0 and sets
 * *(bool *)arg. */
void th_done_flag(tpio_loop_t *loop, int err, void *arg);

/* ---- running the loop for a while --------------------------------------- */

/* A new loop (asserts that creating it succeeds). */
tpio_loop_t *th_new_loop(void);
/* Run iterations until `secs` seconds of wall time have passed (a bounded
 * wait, used to check that something does NOT happen). */
void th_spin_for(tpio_loop_t *loop, double secs);
/* Run the loop for `secs` of loop time (a timer, not a sleep); asserts that
 * the timer fired within `timeout` seconds. */
void th_run_timer(tpio_loop_t *loop, double secs, double timeout);

/* ---- a connection completion that records its outcome ------------------- */

typedef struct th_conn {
    bool done;
    int err;
    size_t calls;
    tpio_transport_t *t;
    th_proto_t *p;
    bool in_loop;          /* the completion ran inside the loop */
} th_conn_t;

/* Completion callback; arg: a th_conn_t. */
void th_on_conn(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                void *arg);

/* ---- the per-test fixture: suite .init / .fini -------------------------- */

/*
 * TestSuite(name, .init = th_fx_init, .fini = th_fx_fini) (or a suite's own
 * init/fini that call these) gives every test of the suite a fresh loop whose
 * error reports are counted, and tears it all down after the test: the pair
 * is finished (its connection_lost awaited, the peer closed), no report may
 * have come (unless reports_allowed), the loop must close, owned protocols are
 * freed and the test's directory must be empty.
 *
 * Criterion 2.4 ignores assertions made in .fini (the test still passes), so
 * the checks of th_fx_fini print the failure, naming the test, and abort():
 * the run fails, and ctest reports the crash in teardown.
 */
#define TH_FX_MAX_OWNED 64
typedef struct th_fx {
    tpio_loop_t *loop;      /* NULL once the test closed it (th_fx_close_loop) */
    th_reports_t rep;       /* the loop's error handler calls */
    bool reports_allowed;   /* the test checks th_fx.rep itself */
    th_pair_t *pair;        /* made by th_tcp_pair / th_unix_pair */
    struct {
        void *p;
        void (*free)(void *);
    } owned[TH_FX_MAX_OWNED];
    size_t nowned;
    char dir[64];           /* th_fx_dir(): "" until asked for */
    /* the address of the last server a th_kind made (th_kind.create_server) */
    struct sockaddr_storage srv_addr;
    socklen_t srv_addrlen;
} th_fx_t;

extern th_fx_t th_fx;

/* A check for a suite's own .fini: like those of th_fx_fini, it prints the
 * failure and aborts. */
#define TH_FX_CHECK(cond, ...) \
    ((cond) ? (void)0 : th_fx_fail(__FILE__, __LINE__, #cond, __VA_ARGS__))
void th_fx_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5), noreturn));

void th_fx_init(void);
void th_fx_fini(void);
/* Check the loop as fini would (no report, it closes) and start a fresh one:
 * for a test that runs several rounds. */
void th_fx_renew_loop(void);
/* Close the loop now, asserting that it closes; fini then has none to close. */
void th_fx_close_loop(void);
/* The protocol is freed by fini, after the loop closed. Returns p. */
th_proto_t *th_fx_own(th_proto_t *p);
/* The same for another object, which fini frees with free_fn. */
void *th_fx_own_with(void *p, void (*free_fn)(void *));
/* A fresh directory (made on first use) that fini removes: it must be empty. */
const char *th_fx_dir(void);

/* ---- the stream socket kinds: TCP and Unix ------------------------------ */

/* What a behaviour that TCP and Unix stream sockets share needs of a kind. */
typedef struct th_kind {
    const char *name;             /* "tcp", "unix" */
    tpio_transport_kind_t kind;   /* of its transports */
    int family;                   /* AF_INET, AF_UNIX */
    /* connecting where a server was closed: -ECONNREFUSED (TCP), -ENOENT
     * (Unix: its socket file went with it) */
    int gone_err;
    /* a transport and its plain-socket peer (th_tcp_pair, th_unix_pair) */
    th_pair_t *(*pair)(const tpio_protocol_ops_t *ops, const th_proto_t *knobs);
    /* a server on th_fx.loop at a fresh address (127.0.0.1 and a free port, or
     * a socket file in th_fx_dir()), which goes to th_fx.srv_addr */
    int (*create_server)(tpio_protocol_factory_t factory, void *arg, tpio_server_t **out);
    /* a tpio client connecting to th_fx.srv_addr */
    int (*create_connection)(tpio_protocol_factory_t factory, void *arg,
                             tpio_connect_cb_t cb, void *cb_arg);
} th_kind_t;

enum { TH_TCP, TH_UNIX, TH_NKINDS };
extern const th_kind_t th_kinds[TH_NKINDS];

/* A plain blocking client socket connected to th_fx.srv_addr (SO_RCVBUF set
 * first when rcvbuf > 0): the descriptor, or -errno when connect() fails. */
int th_client_connect(int rcvbuf);

/*
 * TestBothKinds(suite, name, .timeout = N) { ... K ... }: one body, run as
 * one Test() per entry of th_kinds, named suite::name_tcp and
 * suite::name_unix, so that a failure names the kind that failed. The body
 * sees its kind as `const th_kind_t *K`.
 */
#define TestBothKinds(suite, name, ...)                                        \
    static void suite##__##name(const th_kind_t *K);                           \
    Test(suite, name##_tcp, __VA_ARGS__) { suite##__##name(&th_kinds[TH_TCP]); } \
    Test(suite, name##_unix, __VA_ARGS__) { suite##__##name(&th_kinds[TH_UNIX]); } \
    static void suite##__##name(const th_kind_t *K)

#endif
