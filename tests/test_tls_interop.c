/* TLS against independent peers: OpenSSL's own `openssl s_server` and
 * `openssl s_client`, and Python's ssl module (/usr/bin/python3), each as
 * the server and as the client, in TLS 1.2 and 1.3. What each peer saw is
 * checked at the peer (its output): the SNI name, the ALPN protocol, the
 * verification of tpio's certificate, the alerts it got (openssl's -msg),
 * and the close in both directions (close_notify answered by close_notify,
 * nothing after it). Then what a real peer does that tpio against tpio
 * never does: key updates, renegotiation requests, post-handshake client
 * authentication, resumed sessions, a handshake's last flight, data and
 * close_notify in one segment or every byte in a segment of its own,
 * STARTTLS with the ClientHello behind the plaintext line.
 *
 * The peers run as child processes bound to port 0 that tell the test their
 * port (s_server's "ACCEPT 127.0.0.1:<port>", the Python scripts' "PORT
 * <port>"); their outputs are read by the loop (add_reader), their exit
 * through a pidfd. Every test reaps its children; teardown kills what a
 * failed test left, and the kernel kills them if the test process dies
 * (PR_SET_PDEATHSIG). */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <tpio.h>
#include "helpers.h"
#include "tls_helpers.h"

#define TMO 30
/* Debian's packages openssl and python3 (the top Makefile installs them). */
#define OPENSSL "/usr/bin/openssl"
#define PYTHON "/usr/bin/python3"

/* Both TLS shutdown flags: ours sent, the peer's received. */
#define BOTH_NOTIFIES (SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN)

/* ---- child processes ------------------------------------------------------------ */

typedef struct out_buf {
    int fd;          /* our end of the pipe, -1 once it reached EOF */
    char *d;         /* everything read, NUL-terminated */
    size_t len, cap;
    bool eof;
} out_buf_t;

typedef struct child {
    const char *name;
    pid_t pid;
    int pidfd;       /* readable once the child exited; -1 once reaped */
    int in;          /* our end of its stdin, -1 when closed (or /dev/null) */
    out_buf_t out, err;
    out_buf_t msg;   /* its descriptor 3, when asked for (fd -1 otherwise) */
    bool exited;
    int status;      /* waitpid's */
} child_t;

#define MAX_CHILDREN 4
static child_t *children[MAX_CHILDREN];

static void out_append(out_buf_t *b, const char *d, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->d = realloc(b->d, cap);
        cr_assert_not_null(b->d);
        b->cap = cap;
    }
    memcpy(b->d + b->len, d, n);
    b->len += n;
    b->d[b->len] = '\0';
}

static void on_output(tpio_loop_t *loop, int fd, void *arg)
{
    out_buf_t *b = arg;
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) {
            out_append(b, buf, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        /* EOF (or an error, which ends the pipe as well) */
        tpio_loop_remove_reader(loop, fd, NULL);
        close(fd);
        b->fd = -1;
        b->eof = true;
        return;
    }
}

static void on_exit_ready(tpio_loop_t *loop, int fd, void *arg)
{
    child_t *ch = arg;
    pid_t r = waitpid(ch->pid, &ch->status, WNOHANG);
    if (r == 0)
        return; /* not yet (cannot happen with a pidfd: it was readable) */
    cr_assert_eq(r, ch->pid, "waitpid: %s", strerror(errno));
    tpio_loop_remove_reader(loop, fd, NULL);
    close(fd);
    ch->pidfd = -1;
    ch->exited = true;
}

static void watch(int fd, tpio_fd_cb_t cb, void *arg)
{
    cr_assert_eq(tpio_loop_add_reader(th_fx.loop, fd, cb, arg), 0);
}

/* Start argv (argv[0] an absolute path) with its stdout and stderr read by
 * the loop; its stdin is a pipe (ch->in) when with_stdin, else /dev/null;
 * with_msg: a third output, its descriptor 3 (openssl's -msgfile /dev/fd/3:
 * the TLS messages apart from the rest). */
static child_t *spawn(const char *name, const char *const argv[], bool with_stdin,
                      bool with_msg)
{
    cr_assert_eq(access(argv[0], X_OK), 0,
                 "%s: %s (the top Makefile's `make deps` installs it)", argv[0], strerror(errno));
    size_t slot = 0;
    while (slot < MAX_CHILDREN && children[slot])
        slot++;
    cr_assert_lt(slot, MAX_CHILDREN);
    child_t *ch = calloc(1, sizeof *ch);
    cr_assert_not_null(ch);
    ch->name = name;
    ch->in = ch->out.fd = ch->err.fd = ch->msg.fd = ch->pidfd = -1;
    ch->exited = true; /* nothing to reap yet */
    children[slot] = ch;
    int in[2] = {-1, -1}, out[2], err[2], msg[2] = {-1, -1};
    if (with_stdin)
        cr_assert_eq(pipe2(in, O_CLOEXEC), 0);
    else
        cr_assert((in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0);
    cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(err, O_CLOEXEC), 0);
    if (with_msg)
        cr_assert_eq(pipe2(msg, O_CLOEXEC), 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        /* async-signal-safe calls only until exec */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(126);
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        sigaction(SIGPIPE, &dfl, NULL);
        if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0)
            _exit(126);
        /* (dup2 onto itself would keep O_CLOEXEC) */
        if (msg[1] >= 0 && (msg[1] == 3 ? fcntl(3, F_SETFD, 0) : dup2(msg[1], 3)) < 0)
            _exit(126);
        syscall(SYS_close_range, msg[1] >= 0 ? 4U : 3U, ~0U, 0U);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    close(err[1]);
    if (with_msg)
        close(msg[1]);
    ch->pid = pid;
    ch->exited = false;
    ch->in = in[1];
    ch->out.fd = out[0];
    ch->err.fd = err[0];
    ch->msg.fd = msg[0];
    ch->msg.eof = !with_msg;
    out_append(&ch->out, "", 0);
    out_append(&ch->err, "", 0);
    out_append(&ch->msg, "", 0);
    ch->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    cr_assert(ch->pidfd >= 0, "pidfd_open: %s", strerror(errno));
    cr_assert_eq(fcntl(ch->out.fd, F_SETFL, O_NONBLOCK), 0);
    cr_assert_eq(fcntl(ch->err.fd, F_SETFL, O_NONBLOCK), 0);
    watch(ch->out.fd, on_output, &ch->out);
    watch(ch->err.fd, on_output, &ch->err);
    if (with_msg) {
        cr_assert_eq(fcntl(ch->msg.fd, F_SETFL, O_NONBLOCK), 0);
        watch(ch->msg.fd, on_output, &ch->msg);
    }
    watch(ch->pidfd, on_exit_ready, ch);
    return ch;
}

/* Run the loop until cond holds, for up to TH_TMO seconds. */
#define RUN_UNTIL(cond)                                                   \
    do {                                                                  \
        double end_ = th_now_s() + TH_TMO;                                \
        while (!(cond) && th_now_s() < end_)                              \
            tpio_loop_run_once(th_fx.loop, 0.01);                         \
    } while (0)

static void child_write(child_t *ch, const char *s)
{
    size_t n = strlen(s);
    cr_assert(ch->in >= 0);
    cr_assert_eq(write(ch->in, s, n), (ssize_t)n, "write to %s: %s", ch->name, strerror(errno));
}

static void child_close_stdin(child_t *ch)
{
    if (ch->in >= 0)
        close(ch->in);
    ch->in = -1;
}

/* Wait until the child's stdout shows `text` (or ends without it). */
static void child_wait_out(child_t *ch, const char *text)
{
    RUN_UNTIL(strstr(ch->out.d, text) || ch->out.eof);
    cr_assert(strstr(ch->out.d, text), "%s never printed \"%s\"; stdout:\n%s\nstderr:\n%s",
              ch->name, text, ch->out.d, ch->err.d);
}

/* The same without running the loop: tpio reads nothing meanwhile (what
 * the child sends waits in the kernel). A wait in poll(), for its output. */
static void child_wait_out_alone(child_t *ch, const char *text)
{
    double end = th_now_s() + TH_TMO;
    while (!strstr(ch->out.d, text) && !ch->out.eof && th_now_s() < end) {
        struct pollfd pfd = {.fd = ch->out.fd, .events = POLLIN};
        int n = poll(&pfd, 1, 100);
        cr_assert(n >= 0 || errno == EINTR, "poll: %s", strerror(errno));
        if (n > 0)
            on_output(th_fx.loop, ch->out.fd, &ch->out);
    }
    cr_assert(strstr(ch->out.d, text), "%s never printed \"%s\"; stdout:\n%s\nstderr:\n%s",
              ch->name, text, ch->out.d, ch->err.d);
}

static void child_free(child_t *ch)
{
    for (size_t i = 0; i < MAX_CHILDREN; i++)
        if (children[i] == ch)
            children[i] = NULL;
    child_close_stdin(ch);
    int fds[] = {ch->out.fd, ch->err.fd, ch->msg.fd, ch->pidfd};
    for (size_t i = 0; i < 4; i++) {
        if (fds[i] < 0)
            continue;
        if (th_fx.loop)
            tpio_loop_remove_reader(th_fx.loop, fds[i], NULL);
        close(fds[i]);
    }
    if (!ch->exited) {
        kill(ch->pid, SIGKILL);
        waitpid(ch->pid, &ch->status, 0);
    }
    free(ch->out.d);
    free(ch->err.d);
    free(ch->msg.d);
    free(ch);
}

/* Close its stdin, wait for the child to exit and all of its outputs to
 * end; asserts its exit status. What it printed stays readable (out.d,
 * err.d, msg.d) until child_free. */
static void child_finish(child_t *ch, int want_status)
{
    child_close_stdin(ch);
    RUN_UNTIL(ch->exited && ch->out.eof && ch->err.eof && ch->msg.eof);
    cr_assert(ch->exited && ch->out.eof && ch->err.eof && ch->msg.eof,
              "%s did not exit; stdout:\n%s\nstderr:\n%s", ch->name, ch->out.d, ch->err.d);
    cr_assert(WIFEXITED(ch->status), "%s: killed by signal %d", ch->name, WTERMSIG(ch->status));
    cr_assert_eq(WEXITSTATUS(ch->status), want_status,
                 "%s exited with %d, want %d; stdout:\n%s\nstderr:\n%s", ch->name,
                 WEXITSTATUS(ch->status), want_status, ch->out.d, ch->err.d);
}

static void assert_has(const char *where, const char *what, const char *text)
{
    cr_assert(strstr(text, what), "%s lacks \"%s\":\n%s", where, what, text);
}

static void assert_lacks(const char *where, const char *what, const char *text)
{
    cr_assert_null(strstr(text, what), "%s shows \"%s\":\n%s", where, what, text);
}

/* The alert lines of openssl's -msg output (">>> TLS 1.3, Alert [length
 * 0002], warning close_notify": ">>>" sent, "<<<" received), in order. */
static const char *alerts(const child_t *ch)
{
    static char buf[1024];
    size_t o = 0;
    buf[0] = '\0';
    for (const char *l = ch->msg.d; *l;) {
        const char *nl = strchr(l, '\n');
        size_t n = nl ? (size_t)(nl - l) + 1 : strlen(l);
        if (memmem(l, n, ", Alert [", 9)) {
            cr_assert_lt(o + n, sizeof buf);
            memcpy(buf + o, l, n);
            buf[o += n] = '\0';
        }
        l += n;
    }
    return buf;
}

/* The close_notify alerts of -msg in the order given: "<>" (received, then
 * sent), "><" or ">" (sent only), for TLS version ver ("TLS 1.3"). */
static void assert_notifies(const child_t *ch, const char *order, const char *ver)
{
    char want[512];
    size_t o = 0;
    want[0] = '\0';
    for (const char *d = order; *d; d++)
        o += (size_t)snprintf(want + o, sizeof want - o,
                              "%s %s, Alert [length 0002], warning close_notify\n",
                              *d == '<' ? "<<<" : ">>>", ver);
    cr_assert_str_eq(alerts(ch), want, "%s's alerts", ch->name);
}

static size_t count_of(const char *text, const char *what)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, what)); p += strlen(what))
        n++;
    return n;
}

/* ---- the fixture ------------------------------------------------------------------ */

/* A recording protocol (th_proto_t) that also notes, in connection_lost,
 * which close_notify went which way (SSL_get_shutdown). */
typedef struct iproto {
    th_proto_t p; /* first: th_proto_free frees the whole */
    int shutdown_at_lost;
    bool resumed; /* SSL_session_reused() */
} iproto_t;

static tpio_protocol_ops_t iops;

static void ilost(tpio_protocol_t *bp, int err)
{
    iproto_t *ip = tpio_container_of(bp, iproto_t, p.base);
    tpio_extra_t e;
    ip->shutdown_at_lost = -1;
    if (ip->p.t && tpio_transport_get_extra_info(ip->p.t, "ssl_object", &e) == 0) {
        ip->shutdown_at_lost = SSL_get_shutdown(e.ptr);
        ip->resumed = SSL_session_reused(e.ptr) == 1;
    }
    th_proto_ops.connection_lost(bp, err);
}

static iproto_t *iproto_new(const th_proto_t *knobs)
{
    iproto_t *ip = calloc(1, sizeof *ip);
    cr_assert_not_null(ip);
    ip->p.base.ops = &iops;
    if (knobs) {
        ip->p.echo = knobs->echo;
        ip->p.close_on_data = knobs->close_on_data;
    }
    th_fx_own(&ip->p);
    return ip;
}

static iproto_t *IP(th_proto_t *p) { return tpio_container_of(p, iproto_t, p); }

static void ix_init(void)
{
    iops = th_proto_ops;
    iops.connection_lost = ilost;
    signal(SIGPIPE, SIG_IGN);
    th_fx_init();
    th_pki();
}

static void ix_fini(void)
{
    /* Only a failed test leaves children: kill and reap them. */
    for (size_t i = 0; i < MAX_CHILDREN; i++)
        if (children[i])
            child_free(children[i]);
    th_fx_fini();
}

TestSuite(interop, .init = ix_init, .fini = ix_fini);

/* ---- tpio's ends ---------------------------------------------------------------- */

typedef struct srv {
    th_proto_t knobs;
    size_t calls;
    iproto_t *last;
    iproto_t *all[8]; /* the first ones */
    tpio_server_t *s;
    uint16_t port;
} srv_t;

static tpio_protocol_t *srv_factory(void *arg)
{
    srv_t *sv = arg;
    sv->calls++;
    sv->last = iproto_new(&sv->knobs);
    if (sv->calls <= 8)
        sv->all[sv->calls - 1] = sv->last;
    return &sv->last->p.base;
}

/* A TLS server on 127.0.0.1 with the PKI's certificate, selecting ALPN
 * "h2,http/1.1" (in that preference); its protocols follow sv->knobs. */
static void tls_server(srv_t *sv)
{
    SSL_CTX *ctx = th_tls_server_ctx(0, 0);
    th_tls_alpn_select(ctx, "h2,http/1.1");
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = ctx);
    tpio_server_opts_t o = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1", .tls = &tls);
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, sv, &o, &sv->s), 0);
    SSL_CTX_free(ctx); /* the server holds its own reference */
    struct sockaddr_storage a;
    socklen_t len = sizeof a;
    cr_assert_eq(tpio_server_get_sockname(sv->s, 0, &a, &len), 0);
    sv->port = ntohs(((struct sockaddr_in *)&a)->sin_port);
}

static void close_server(srv_t *sv)
{
    bool done = false;
    cr_assert_eq(tpio_server_close(sv->s), 0);
    cr_assert_eq(tpio_server_wait_closed(sv->s, th_done_flag, &done, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &done, TH_TMO));
}

static tpio_protocol_t *client_factory(void *arg)
{
    (void)arg;
    return &iproto_new(NULL)->p.base;
}

/* A client context that trusts the PKI's CA and offers ALPN `alpn`. */
static SSL_CTX *client_ctx(const char *alpn)
{
    SSL_CTX *ctx = th_tls_client_ctx(0, 0);
    if (alpn)
        th_tls_alpn_offer(ctx, alpn);
    return ctx;
}

/* A TLS connection to 127.0.0.1:port, naming the server `name` (NULL: the
 * address itself, so no SNI); tls_connect waits for its completion. */
static void tls_connect_start(uint16_t port, SSL_CTX *ctx, const char *name, th_conn_t *c)
{
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = ctx, .server_hostname = name);
    tpio_connect_opts_t o =
        TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = port, .tls = &tls);
    cr_assert_eq(
        tpio_loop_create_connection(th_fx.loop, client_factory, NULL, &o, th_on_conn, c, NULL),
        0);
}

static void tls_connect(uint16_t port, SSL_CTX *ctx, const char *name, th_conn_t *c)
{
    tls_connect_start(port, ctx, name, c);
    cr_assert(th_run_until(th_fx.loop, &c->done, TH_TMO));
}

static void connected(const th_conn_t *c)
{
    cr_assert_eq(c->err, 0, "%s: %s", tpio_err_name(c->err), tpio_tls_last_error());
    cr_assert_str_eq(c->p->events, "made");
}

static void run_until_lost(th_proto_t *p)
{
    cr_assert(th_run_until(th_fx.loop, &p->lost, TH_TMO), "events: %s", p->events);
}

static void run_until_rx(th_proto_t *p, size_t n)
{
    RUN_UNTIL(p->rxlen >= n || p->lost);
    cr_assert_geq(p->rxlen, n, "%zu bytes of %zu; events: %s", p->rxlen, n, p->events);
}

static void assert_rx(const th_proto_t *p, const char *want)
{
    size_t n = strlen(want);
    cr_assert(p->rxlen == n && memcmp(p->rx, want, n) == 0,
              "received %zu bytes \"%.*s\", want \"%s\"", p->rxlen, (int)p->rxlen,
              (const char *)p->rx, want);
}

/* The negotiated version and cipher, as tpio reports them. */
static void assert_cipher(tpio_transport_t *t, const char *version, const char *cipher)
{
    const char *name, *ver;
    int bits;
    cr_assert_eq(tpio_tls_get_cipher(t, &name, &ver, &bits), 0);
    cr_assert_str_eq(ver, version);
    cr_assert_str_eq(name, cipher);
    cr_assert_eq(bits, 256);
    tpio_extra_t e;
    cr_assert_eq(tpio_transport_get_extra_info(t, "cipher", &e), 0);
    cr_assert_str_eq(e.str, cipher);
}

static void assert_alpn(tpio_transport_t *t, const char *want)
{
    tpio_extra_t e;
    int rc = tpio_transport_get_extra_info(t, "alpn_protocol", &e);
    if (!want) {
        cr_assert_eq(rc, -ENOENT, "alpn_protocol: %s", rc == 0 ? e.str : tpio_err_name(rc));
        return;
    }
    cr_assert_eq(rc, 0, "alpn_protocol: %s", tpio_err_name(rc));
    cr_assert_eq(e.type, TPIO_EXTRA_STR);
    cr_assert_str_eq(e.str, want);
}

static SSL *ssl_of(tpio_transport_t *t)
{
    tpio_extra_t e;
    cr_assert_eq(tpio_transport_get_extra_info(t, "ssl_object", &e), 0);
    return e.ptr;
}

/* A TLS transport's end: connection_lost(0) after close_notify went both
 * ways, with these events. */
static void assert_clean_end(th_proto_t *p, const char *events)
{
    run_until_lost(p);
    cr_assert_str_eq(p->events, events);
    cr_assert_eq(IP(p)->shutdown_at_lost, BOTH_NOTIFIES,
                 "SSL_get_shutdown() in connection_lost: %d (sent %d, received %d)",
                 IP(p)->shutdown_at_lost, SSL_SENT_SHUTDOWN, SSL_RECEIVED_SHUTDOWN);
}

typedef struct version {
    const char *flag;    /* openssl's -tls1_2 */
    const char *py;      /* Python's ssl.TLSVersion member */
    const char *name;    /* SSL_get_version's */
    const char *msg;     /* openssl -msg's */
    const char *cipher;  /* what OpenSSL's defaults negotiate with the PKI's EC key */
} version_t;

static const version_t V12 = {"-tls1_2", "TLSv1_2", "TLSv1.2", "TLS 1.2",
                              "ECDHE-ECDSA-AES256-GCM-SHA384"};
static const version_t V13 = {"-tls1_3", "TLSv1_3", "TLSv1.3", "TLS 1.3",
                              "TLS_AES_256_GCM_SHA384"};

/* ---- openssl s_server: tpio as the client ------------------------------------------ */

/* s_server on 127.0.0.1, port 0, one connection (-naccept 1); extra
 * arguments after the fixed ones. Returns the child; *port gets the port it
 * printed ("ACCEPT 127.0.0.1:<port>", flushed at once). */
static child_t *s_server(const version_t *v, const char *const *extra, uint16_t *port)
{
    const char *argv[32] = {OPENSSL, "s_server", "-accept", "127.0.0.1:0", "-naccept", "1",
                            "-msg", "-msgfile", "/dev/fd/3", v->flag};
    size_t n = 10;
    for (; extra && *extra; extra++) {
        cr_assert_lt(n, 31);
        argv[n++] = *extra;
    }
    argv[n] = NULL;
    child_t *ch = spawn("s_server", argv, false, true);
    const char *a = NULL;
    RUN_UNTIL(ch->out.eof || ((a = strstr(ch->out.d, "ACCEPT 127.0.0.1:")) && strchr(a, '\n')));
    cr_assert(a && strchr(a, '\n'), "no ACCEPT line; stdout:\n%s\nstderr:\n%s", ch->out.d,
              ch->err.d);
    unsigned p = 0;
    cr_assert_eq(sscanf(a, "ACCEPT 127.0.0.1:%u", &p), 1);
    cr_assert(p > 0 && p < 65536);
    *port = (uint16_t)p;
    return ch;
}

/* -rev: s_server answers each line reversed; "CLOSE" makes it close (its
 * close_notify first); tpio's close_notify ends it as well. ALPN
 * "h2,http/1.1", the client offers "x-none,http/1.1,h2": the server's
 * preference wins. */
static void s_server_echo(const version_t *v, bool server_closes)
{
    const th_pki_t *k = th_pki();
    const char *extra[] = {"-rev", "-cert", k->cert, "-key", k->key, "-alpn", "h2,http/1.1", NULL};
    uint16_t port;
    child_t *srv = s_server(v, extra, &port);
    SSL_CTX *ctx = client_ctx("x-none,http/1.1,h2");
    th_conn_t c = {0};
    tls_connect(port, ctx, "localhost", &c);
    connected(&c);
    assert_cipher(c.t, v->name, v->cipher);
    assert_alpn(c.t, "h2");
    X509 *peer = SSL_get0_peer_certificate(ssl_of(c.t));
    char cn[64];
    X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof cn);
    cr_assert_str_eq(cn, "localhost");

    cr_assert_eq(tpio_transport_write(c.t, "hello, world\n", 13), 0);
    run_until_rx(c.p, 13);
    assert_rx(c.p, "dlrow ,olleh\n");
    cr_assert_eq(tpio_transport_write(c.t, "abc\n", 4), 0);
    run_until_rx(c.p, 17);
    assert_rx(c.p, "dlrow ,olleh\ncba\n");
    if (server_closes) {
        /* s_server's close_notify first: eof_received, then ours */
        cr_assert_eq(tpio_transport_write(c.t, "CLOSE\n", 6), 0);
        assert_clean_end(c.p, "made,data,eof,lost:0");
    } else {
        cr_assert_eq(tpio_transport_close(c.t), 0);
        assert_clean_end(c.p, "made,data,lost:0");
    }
    child_finish(srv, 0);
    /* what s_server saw: tpio's close_notify, and its own answered (when
     * s_server closes, it waits for the answer) */
    assert_notifies(srv, server_closes ? "><" : "<>", v->msg);
    assert_has("s_server's stdout",
               "ALPN protocols advertised by the client: x-none, http/1.1, h2\n"
               "ALPN protocols selected: h2\n",
               srv->out.d);
    char want[128];
    snprintf(want, sizeof want, "CONNECTION ESTABLISHED\nProtocol version: %s\n", v->name);
    assert_has("s_server's stderr", want, srv->err.d);
    snprintf(want, sizeof want, "Ciphersuite: %s\n", v->cipher);
    assert_has("s_server's stderr", want, srv->err.d);
    assert_has("s_server's stderr", "CONNECTION CLOSED\n", srv->err.d);
    assert_lacks("s_server's stderr", "error", srv->err.d);
    child_free(srv);
    SSL_CTX_free(ctx);
}

Test(interop, s_server_tls12_tpio_closes, .timeout = TMO) { s_server_echo(&V12, false); }
Test(interop, s_server_tls13_tpio_closes, .timeout = TMO) { s_server_echo(&V13, false); }
Test(interop, s_server_tls12_server_closes, .timeout = TMO) { s_server_echo(&V12, true); }
Test(interop, s_server_tls13_server_closes, .timeout = TMO) { s_server_echo(&V13, true); }

/* SNI at the server: its default certificate is the PKI's expired one, the
 * valid one only goes to a client that names "localhost" (-servername with
 * -cert2; any other name is refused with a fatal alert). */
static child_t *s_server_sni(const version_t *v, uint16_t *port)
{
    const th_pki_t *k = th_pki();
    const char *extra[] = {"-rev",      "-cert",       k->expired, "-key",
                           k->expired_key, "-cert2",   k->cert,    "-key2",
                           k->key,      "-servername", "localhost", "-servername_fatal",
                           NULL};
    return s_server(v, extra, port);
}

static void s_server_sni_ok(const version_t *v)
{
    uint16_t port;
    child_t *srv = s_server_sni(v, &port);
    SSL_CTX *ctx = client_ctx(NULL);
    th_conn_t c = {0};
    tls_connect(port, ctx, "localhost", &c);
    connected(&c); /* so the certificate was the valid one: SNI switched it */
    assert_cipher(c.t, v->name, v->cipher);
    assert_alpn(c.t, NULL);
    cr_assert_eq(tpio_transport_write(c.t, "sni\n", 4), 0);
    run_until_rx(c.p, 4);
    assert_rx(c.p, "ins\n");
    cr_assert_eq(tpio_transport_close(c.t), 0);
    assert_clean_end(c.p, "made,data,lost:0");
    child_finish(srv, 0);
    assert_notifies(srv, "<>", v->msg);
    assert_has("s_server's stdout",
               "Hostname in TLS extension: \"localhost\"\nSwitching server context.\n",
               srv->out.d);
    assert_has("s_server's stderr", "CONNECTION ESTABLISHED\n", srv->err.d);
    child_free(srv);
    SSL_CTX_free(ctx);
}

Test(interop, s_server_sni_tls12, .timeout = TMO) { s_server_sni_ok(&V12); }
Test(interop, s_server_sni_tls13, .timeout = TMO) { s_server_sni_ok(&V13); }

Test(interop, s_server_refuses_another_name, .timeout = TMO)
{
    uint16_t port;
    child_t *srv = s_server_sni(&V13, &port);
    SSL_CTX *ctx = client_ctx(NULL);
    th_conn_t c = {0};
    tls_connect(port, ctx, "example.com", &c);
    cr_assert_eq(c.err, TPIO_ETLS, "%s: %s", tpio_err_name(c.err), tpio_tls_last_error());
    cr_assert_null(c.t);
    cr_assert_eq(c.calls, 1);
    assert_has("tpio_tls_last_error()", "tlsv1 unrecognized name", tpio_tls_last_error());
    child_finish(srv, 0);
    assert_has("s_server's stdout", "Hostname in TLS extension: \"example.com\"\n", srv->out.d);
    assert_lacks("s_server's stdout", "Switching server context.", srv->out.d);
    cr_assert_str_eq(alerts(srv), ">>> TLS 1.3, Alert [length 0002], fatal unrecognized_name\n");
    assert_has("s_server's stderr", "CONNECTION FAILURE\n", srv->err.d);
    child_free(srv);
    SSL_CTX_free(ctx);
}

/* A client connecting to an address sends no SNI (RFC 6066 3): s_server sees
 * no name and serves its default certificate, which has expired. */
Test(interop, s_server_sees_no_sni_for_an_address, .timeout = TMO)
{
    uint16_t port;
    child_t *srv = s_server_sni(&V12, &port);
    SSL_CTX *ctx = client_ctx(NULL);
    th_conn_t c = {0};
    tls_connect(port, ctx, NULL, &c);
    cr_assert_eq(c.err, TPIO_ETLS_VERIFY, "%s: %s", tpio_err_name(c.err), tpio_tls_last_error());
    assert_has("tpio_tls_last_error()", "certificate verify failed: certificate has expired",
               tpio_tls_last_error());
    child_finish(srv, 0);
    assert_lacks("s_server's stdout", "Hostname in TLS extension", srv->out.d);
    /* and tpio said why it left */
    cr_assert_str_eq(alerts(srv), "<<< TLS 1.2, Alert [length 0002], fatal certificate_expired\n");
    assert_has("s_server's stderr", "CONNECTION FAILURE\n", srv->err.d);
    child_free(srv);
    SSL_CTX_free(ctx);
}

/* s_server refuses a client whose ALPN protocols it does not speak (a fatal
 * no_application_protocol alert): the handshake fails with TPIO_ETLS. */
Test(interop, s_server_alpn_without_overlap, .timeout = TMO)
{
    const th_pki_t *k = th_pki();
    const char *extra[] = {"-rev", "-cert", k->cert, "-key", k->key, "-alpn", "h2,http/1.1", NULL};
    uint16_t port;
    child_t *srv = s_server(&V13, extra, &port);
    SSL_CTX *ctx = client_ctx("x-other");
    th_conn_t c = {0};
    tls_connect(port, ctx, "localhost", &c);
    cr_assert_eq(c.err, TPIO_ETLS, "%s: %s", tpio_err_name(c.err), tpio_tls_last_error());
    assert_has("tpio_tls_last_error()", "no application protocol", tpio_tls_last_error());
    child_finish(srv, 0);
    assert_has("s_server's stdout", "ALPN protocols advertised by the client: x-other\n",
               srv->out.d);
    /* 120 (0x78): no_application_protocol, which this openssl prints as ??? */
    cr_assert_str_eq(alerts(srv), ">>> TLS 1.3, Alert [length 0002], fatal ???\n");
    assert_has("s_server's -msg", ">>> TLS 1.3, Alert [length 0002], fatal ???\n    02 78\n",
               srv->msg.d);
    assert_has("s_server's stderr", "CONNECTION FAILURE\n", srv->err.d);
    child_free(srv);
    SSL_CTX_free(ctx);
}

/* ---- openssl s_client: tpio as the server ------------------------------------------ */

static void s_client_echo(const version_t *v, bool client_closes)
{
    srv_t sv = {.knobs.echo = true};
    tls_server(&sv);
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", sv.port);
    const char *argv[] = {OPENSSL,     "s_client",  "-connect",      addr,
                          "-CAfile",   th_pki()->ca, "-verify_return_error",
                          "-servername", "localhost", "-alpn",       "x-none,http/1.1,h2",
                          "-msg",      "-msgfile",  "/dev/fd/3",     v->flag,
                          NULL};
    child_t *cli = spawn("s_client", argv, true, true);
    /* the server's side of the handshake */
    RUN_UNTIL(sv.calls == 1 || cli->exited);
    cr_assert_eq(sv.calls, 1, "no connection; s_client's stdout:\n%s\nstderr:\n%s", cli->out.d,
                 cli->err.d);
    th_proto_t *p = &sv.last->p;
    cr_assert_str_eq(p->events, "made");
    assert_cipher(p->t, v->name, v->cipher);
    assert_alpn(p->t, "h2");
    const char *sni = SSL_get_servername(ssl_of(p->t), TLSEXT_NAMETYPE_host_name);
    cr_assert_not_null(sni);
    cr_assert_str_eq(sni, "localhost");
    cr_assert_null(SSL_get0_peer_certificate(ssl_of(p->t)));

    /* both ways: what s_client reads from its stdin comes back on its stdout */
    child_write(cli, "ping from s_client\n");
    run_until_rx(p, 19);
    assert_rx(p, "ping from s_client\n");
    child_wait_out(cli, "ping from s_client\n"); /* (its own stdio output is buffered) */
    if (client_closes) {
        /* EOF on its stdin: s_client sends close_notify, tpio answers */
        child_close_stdin(cli);
        assert_clean_end(p, "made,data,eof,lost:0");
    } else {
        cr_assert_eq(tpio_transport_close(p->t), 0);
        assert_clean_end(p, "made,data,lost:0");
    }
    child_finish(cli, 0);
    cr_assert_eq(count_of(cli->out.d, "ping from s_client"), 1, "%s", cli->out.d);
    /* s_client's close is one-way: it does not read the answer */
    assert_notifies(cli, client_closes ? ">" : "<>", v->msg);
    /* what s_client saw: tpio's certificate, verified against the CA for
     * "localhost", and the server's ALPN choice */
    assert_has("s_client's stderr", "depth=0 CN = localhost\nverify return:1\n", cli->err.d);
    assert_has("s_client's stdout", "Verification: OK\n", cli->out.d);
    assert_has("s_client's stdout", "Verify return code: 0 (ok)\n", cli->out.d);
    assert_has("s_client's stdout", "ALPN protocol: h2\n", cli->out.d);
    char want[128];
    snprintf(want, sizeof want, "New, %s, Cipher is %s\n", v->name, v->cipher);
    assert_has("s_client's stdout", want, cli->out.d);
    assert_lacks("s_client's stderr", "error", cli->err.d);
    if (client_closes)
        assert_has("s_client's stderr", "DONE\n", cli->err.d);
    else
        assert_has("s_client's stdout", "closed\n", cli->out.d);
    child_free(cli);
    close_server(&sv);
}

Test(interop, s_client_tls12_tpio_closes, .timeout = TMO) { s_client_echo(&V12, false); }
Test(interop, s_client_tls13_tpio_closes, .timeout = TMO) { s_client_echo(&V13, false); }
Test(interop, s_client_tls12_client_closes, .timeout = TMO) { s_client_echo(&V12, true); }
Test(interop, s_client_tls13_client_closes, .timeout = TMO) { s_client_echo(&V13, true); }

/* ---- Python's ssl: tpio as the client ---------------------------------------------- */

/* argv: certfile keyfile version alpn closer count [cafile]. Sends a line
 * naming what it saw (SNI, ALPN, version), then echoes `count` bytes; then
 * closes first (closer "python": unwrap() sends close_notify and waits for
 * the answer) or waits for the peer's close_notify (recv gives b'') and
 * answers it (unwrap). A TCP EOF without close_notify is no close_notify
 * (no ragged EOFs, and OP_IGNORE_UNEXPECTED_EOF, which Python sets by
 * default, cleared): exit status 5. Closer "tcp": it leaves without
 * close_notify itself (SSLSocket.shutdown: a TCP FIN).
 * Last, what the TCP connection still carries (b'': only its end). With a
 * cafile, a client certificate is required. */
static const char PY_SERVER[] =
    "import socket, ssl, sys\n"
    "cert, key, version, alpn, closer, count = sys.argv[1:7]\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
    "ctx.load_cert_chain(cert, key)\n"
    "ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)\n"
    "ctx.set_alpn_protocols(alpn.split(','))\n"
    "ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF\n"
    "names = []\n"
    "ctx.sni_callback = lambda sslobj, name, c: names.append(name)\n"
    "if len(sys.argv) > 7:\n"
    "    ctx.verify_mode = ssl.CERT_REQUIRED\n"
    "    ctx.load_verify_locations(sys.argv[7])\n"
    "ls = socket.socket()\n"
    "ls.bind(('127.0.0.1', 0))\n"
    "ls.listen(1)\n"
    "print('PORT', ls.getsockname()[1], flush=True)\n"
    "raw, _ = ls.accept()\n"
    "ls.close()\n"
    "try:\n"
    "    s = ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)\n"
    "except ssl.SSLError as e:\n"
    "    print('handshake failed:', e.reason, flush=True)\n"
    "    sys.exit(4)\n"
    "peer = s.getpeercert()\n"
    "who = dict(x[0] for x in peer['subject'])['commonName'] if peer else None\n"
    "print('version', s.version(), 'alpn', s.selected_alpn_protocol(), 'sni', names,\n"
    "      'client', who, flush=True)\n"
    "s.sendall(('sni=%s alpn=%s version=%s\\n' % (names[0], s.selected_alpn_protocol(),\n"
    "                                             s.version())).encode())\n"
    "left = int(count)\n"
    "while left > 0:\n"
    "    d = s.recv(min(left, 65536))\n"
    "    if not d:\n"
    "        sys.exit('EOF with %d bytes to go' % left)\n"
    "    s.sendall(d)\n"
    "    left -= len(d)\n"
    "print('echoed', count, flush=True)\n"
    "if closer == 'tcp':\n"
    "    s.shutdown(socket.SHUT_WR)\n"
    "    try:\n"
    "        print('tcp:', s.recv(4096), flush=True)\n"
    "    except OSError as e:\n"
    "        print('tcp:', e.strerror, flush=True)\n"
    "    sys.exit(0)\n"
    "if closer != 'python':\n"
    "    try:\n"
    "        print('recv after close_notify:', s.recv(4096), flush=True)\n"
    "    except ssl.SSLError as e:\n"
    "        print('no close_notify:', e.reason, flush=True)\n"
    "        sys.exit(5)\n"
    "plain = s.unwrap()\n"
    "print('unwrap: done', flush=True)\n"
    "print('tcp:', plain.recv(4096), flush=True)\n";

static child_t *py_server(const version_t *v, const char *alpn, const char *closer,
                          size_t count, bool want_client_cert, uint16_t *port)
{
    const th_pki_t *k = th_pki();
    char n[32];
    snprintf(n, sizeof n, "%zu", count);
    const char *argv[] = {PYTHON, "-I", "-c", PY_SERVER, k->cert, k->key, v->py, alpn, closer,
                          n,      want_client_cert ? k->ca : NULL, NULL};
    child_t *ch = spawn("python server", argv, false, false);
    child_wait_out(ch, "\n");
    unsigned p = 0;
    cr_assert_eq(sscanf(ch->out.d, "PORT %u\n", &p), 1, "stdout:\n%s\nstderr:\n%s", ch->out.d,
                 ch->err.d);
    cr_assert(p > 0 && p < 65536);
    *port = (uint16_t)p;
    return ch;
}

/* What the Python server printed after its port line. */
static const char *after_port(const child_t *ch)
{
    const char *nl = strchr(ch->out.d, '\n');
    cr_assert_not_null(nl);
    return nl + 1;
}

static void py_server_echo(const version_t *v, bool python_closes)
{
    static const char msg[] = "hello from tpio\n";
    size_t len = sizeof msg - 1;
    uint16_t port;
    child_t *srv = py_server(v, "h2,http/1.1", python_closes ? "python" : "tpio", len, false,
                             &port);
    SSL_CTX *ctx = client_ctx("x-none,http/1.1,h2");
    th_conn_t c = {0};
    tls_connect(port, ctx, "localhost", &c);
    connected(&c);
    assert_cipher(c.t, v->name, v->cipher);
    assert_alpn(c.t, "h2");
    char greeting[128];
    snprintf(greeting, sizeof greeting, "sni=localhost alpn=h2 version=%s\n", v->name);
    cr_assert_eq(tpio_transport_write(c.t, msg, len), 0);
    char want[256];
    snprintf(want, sizeof want, "%s%s", greeting, msg);
    run_until_rx(c.p, strlen(want));
    assert_rx(c.p, want);
    if (python_closes) {
        assert_clean_end(c.p, "made,data,eof,lost:0");
    } else {
        cr_assert_eq(tpio_transport_close(c.t), 0);
        assert_clean_end(c.p, "made,data,lost:0");
    }
    child_finish(srv, 0);
    snprintf(want, sizeof want,
             "version %s alpn h2 sni ['localhost'] client None\n"
             "echoed %zu\n"
             "%s"
             "unwrap: done\n"
             "tcp: b''\n",
             v->name, len, python_closes ? "" : "recv after close_notify: b''\n");
    cr_assert_str_eq(after_port(srv), want);
    cr_assert_str_eq(srv->err.d, "");
    child_free(srv);
    SSL_CTX_free(ctx);
}

Test(interop, python_server_tls12_tpio_closes, .timeout = TMO) { py_server_echo(&V12, false); }
Test(interop, python_server_tls13_tpio_closes, .timeout = TMO) { py_server_echo(&V13, false); }
Test(interop, python_server_tls12_python_closes, .timeout = TMO) { py_server_echo(&V12, true); }
Test(interop, python_server_tls13_python_closes, .timeout = TMO) { py_server_echo(&V13, true); }

/* A megabyte each way, in many records, written in one call. */
Test(interop, python_server_bulk, .timeout = TMO)
{
    th_ring_batch(); /* the ring's branch below: its way */
    const size_t total = 1 << 20;
    uint16_t port;
    child_t *srv = py_server(&V13, "h2", "tpio", total, false, &port);
    SSL_CTX *ctx = client_ctx("h2");
    th_conn_t c = {0};
    tls_connect(port, ctx, "localhost", &c);
    connected(&c);
    unsigned char *big = malloc(total);
    cr_assert_not_null(big);
    for (size_t i = 0; i < total; i++)
        big[i] = th_pat(i);
    cr_assert_eq(tpio_transport_write(c.t, big, total), 0);
    static const char greeting[] = "sni=localhost alpn=h2 version=TLSv1.3\n";
    size_t glen = sizeof greeting - 1;
    run_until_rx(c.p, glen + total);
    cr_assert_eq(c.p->rxlen, glen + total);
    cr_assert_eq(memcmp(c.p->rx, greeting, glen), 0);
    cr_assert_eq(memcmp(c.p->rx + glen, big, total), 0);
    free(big);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    if (th_ring_ops(th_fx.loop)) {
        /* io_uring: the 1 MiB waits for the loop to send it, above high:
         * pause_writing first, resume_writing once the kernel took it */
        run_until_lost(c.p);
        cr_assert(strncmp(c.p->events, "made,pause,data,", 16) == 0, "%s", c.p->events);
        cr_assert_not_null(strstr(c.p->events, "resume"), "%s", c.p->events);
        cr_assert_not_null(strstr(c.p->events, ",data,lost:0"), "%s", c.p->events);
        cr_assert_eq(IP(c.p)->shutdown_at_lost, BOTH_NOTIFIES);
    } else {
        assert_clean_end(c.p, "made,data,lost:0");
    }
    child_finish(srv, 0);
    cr_assert_str_eq(after_port(srv),
                     "version TLSv1.3 alpn h2 sni ['localhost'] client None\n"
                     "echoed 1048576\n"
                     "recv after close_notify: b''\n"
                     "unwrap: done\n"
                     "tcp: b''\n");
    cr_assert_str_eq(srv->err.d, "");
    child_free(srv);
    SSL_CTX_free(ctx);
}

/* Python's server selects nothing when no protocol matches: no ALPN at
 * either end, and the connection goes on. */
Test(interop, python_server_alpn_without_overlap, .timeout = TMO)
{
    uint16_t port;
    child_t *srv = py_server(&V13, "h2", "python", 2, false, &port);
    SSL_CTX *ctx = client_ctx("x-other");
    th_conn_t c = {0};
    tls_connect(port, ctx, "localhost", &c);
    connected(&c);
    assert_alpn(c.t, NULL);
    cr_assert_eq(tpio_transport_write(c.t, "x\n", 2), 0);
    static const char want[] = "sni=localhost alpn=None version=TLSv1.3\nx\n";
    run_until_rx(c.p, sizeof want - 1);
    assert_rx(c.p, want);
    assert_clean_end(c.p, "made,data,eof,lost:0");
    child_finish(srv, 0);
    cr_assert_str_eq(after_port(srv), "version TLSv1.3 alpn None sni ['localhost'] client None\n"
                                      "echoed 2\n"
                                      "unwrap: done\n"
                                      "tcp: b''\n");
    child_free(srv);
    SSL_CTX_free(ctx);
}

/* The Python server requires a client certificate from the PKI's CA. */
static SSL_CTX *client_ctx_with_cert(void)
{
    SSL_CTX *ctx = client_ctx("h2");
    cr_assert_eq(SSL_CTX_use_certificate_file(ctx, th_pki()->client, SSL_FILETYPE_PEM), 1);
    cr_assert_eq(SSL_CTX_use_PrivateKey_file(ctx, th_pki()->client_key, SSL_FILETYPE_PEM), 1);
    return ctx;
}

static void py_server_client_cert(const version_t *v)
{
    uint16_t port;
    child_t *srv = py_server(v, "h2", "tpio", 3, true, &port);
    SSL_CTX *ctx = client_ctx_with_cert();
    th_conn_t c = {0};
    tls_connect(port, ctx, "localhost", &c);
    connected(&c);
    assert_cipher(c.t, v->name, v->cipher);
    cr_assert_eq(tpio_transport_write(c.t, "ok\n", 3), 0);
    char want[128];
    snprintf(want, sizeof want, "sni=localhost alpn=h2 version=%s\nok\n", v->name);
    run_until_rx(c.p, strlen(want));
    assert_rx(c.p, want);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    assert_clean_end(c.p, "made,data,lost:0");
    child_finish(srv, 0);
    snprintf(want, sizeof want,
             "version %s alpn h2 sni ['localhost'] client tpio test client\n", v->name);
    assert_has("the Python server's stdout", want, srv->out.d);
    assert_has("the Python server's stdout", "unwrap: done\ntcp: b''\n", srv->out.d);
    child_free(srv);
    SSL_CTX_free(ctx);
}

Test(interop, python_server_checks_client_cert_tls12, .timeout = TMO)
{
    py_server_client_cert(&V12);
}
Test(interop, python_server_checks_client_cert_tls13, .timeout = TMO)
{
    py_server_client_cert(&V13);
}

/* Without a client certificate. TLS 1.3: the client's handshake is over
 * before the server looks at what it sent, so the refusal (a
 * certificate_required alert) ends an established connection. */
Test(interop, python_server_refuses_no_client_cert_tls13, .timeout = TMO)
{
    uint16_t port;
    child_t *srv = py_server(&V13, "h2", "tpio", 3, true, &port);
    SSL_CTX *ctx = client_ctx("h2");
    th_conn_t c = {0};
    tls_connect(port, ctx, "localhost", &c);
    connected(&c);
    run_until_lost(c.p);
    cr_assert_str_eq(c.p->events, "made,lost:TPIO_ETLS");
    cr_assert_eq(c.p->lost_err, TPIO_ETLS);
    assert_has("tpio_tls_last_error()", "certificate required", tpio_tls_last_error());
    child_finish(srv, 4);
    cr_assert_str_eq(after_port(srv), "handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE\n");
    child_free(srv);
    SSL_CTX_free(ctx);
}

/* TLS 1.2: the refusal comes inside the client's handshake. */
Test(interop, python_server_refuses_no_client_cert_tls12, .timeout = TMO)
{
    uint16_t port;
    child_t *srv = py_server(&V12, "h2", "tpio", 3, true, &port);
    SSL_CTX *ctx = client_ctx("h2");
    th_conn_t c = {0};
    tls_connect(port, ctx, "localhost", &c);
    cr_assert_eq(c.err, TPIO_ETLS, "%s: %s", tpio_err_name(c.err), tpio_tls_last_error());
    cr_assert_null(c.t);
    assert_has("tpio_tls_last_error()", "handshake failure", tpio_tls_last_error());
    child_finish(srv, 4);
    cr_assert_str_eq(after_port(srv), "handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE\n");
    child_free(srv);
    SSL_CTX_free(ctx);
}

/* The peer leaves without close_notify (a TCP FIN, its SSL object dropped:
 * Python's SSLSocket.shutdown): what came before is delivered, then
 * connection_lost(TPIO_ETLS_EOF), and tpio drops the connection. */
Test(interop, python_server_leaves_without_close_notify, .timeout = TMO)
{
    uint16_t port;
    child_t *srv = py_server(&V13, "h2", "tcp", 6, false, &port);
    SSL_CTX *ctx = client_ctx("h2");
    th_conn_t c = {0};
    tls_connect(port, ctx, "localhost", &c);
    connected(&c);
    cr_assert_eq(tpio_transport_write(c.t, "last!\n", 6), 0);
    run_until_lost(c.p);
    assert_rx(c.p, "sni=localhost alpn=h2 version=TLSv1.3\nlast!\n");
    cr_assert_str_eq(c.p->events, "made,data,lost:TPIO_ETLS_EOF");
    cr_assert_str_eq(tpio_tls_last_error(), "the peer closed the connection without close_notify");
    cr_assert_eq(IP(c.p)->shutdown_at_lost, 0);
    child_finish(srv, 0);
    cr_assert_str_eq(after_port(srv), "version TLSv1.3 alpn h2 sni ['localhost'] client None\n"
                                      "echoed 6\n"
                                      "tcp: b''\n");
    child_free(srv);
    SSL_CTX_free(ctx);
}

/* close() right after a write the socket could not take at once: all of it
 * goes out before the close_notify (Python counts every byte before it). */
Test(interop, python_server_close_sends_the_buffer_first, .timeout = TMO)
{
    const size_t total = 4 << 20;
    uint16_t port;
    child_t *srv = py_server(&V13, "h2", "tpio", total, false, &port);
    SSL_CTX *ctx = client_ctx("h2");
    th_conn_t c = {0};
    tls_connect(port, ctx, "localhost", &c);
    connected(&c);
    run_until_rx(c.p, 38); /* the greeting */
    int sz = 16384;
    cr_assert_eq(setsockopt(th_fd(c.t), SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz), 0);
    unsigned char *big = malloc(total);
    cr_assert_not_null(big);
    for (size_t i = 0; i < total; i++)
        big[i] = th_pat(i);
    cr_assert_eq(tpio_transport_write(c.t, big, total), 0);
    free(big);
    cr_assert_gt(th_wbuf_size(c.t), 0);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    /* what Python echoes after close() is dropped; no resume_writing after close */
    assert_clean_end(c.p, "made,data,pause,lost:0");
    cr_assert_eq(c.p->rxlen, 38);
    child_finish(srv, 0);
    cr_assert_str_eq(after_port(srv), "version TLSv1.3 alpn h2 sni ['localhost'] client None\n"
                                      "echoed 4194304\n"
                                      "recv after close_notify: b''\n"
                                      "unwrap: done\n"
                                      "tcp: b''\n");
    child_free(srv);
    SSL_CTX_free(ctx);
}

/* abort(): no close_notify; the peer sees the connection end without one. */
Test(interop, python_server_sees_abort, .timeout = TMO)
{
    uint16_t port;
    child_t *srv = py_server(&V12, "h2", "tpio", 3, false, &port);
    SSL_CTX *ctx = client_ctx("h2");
    th_conn_t c = {0};
    tls_connect(port, ctx, "localhost", &c);
    connected(&c);
    cr_assert_eq(tpio_transport_write(c.t, "ab\n", 3), 0);
    run_until_rx(c.p, 38 + 3);
    cr_assert_eq(tpio_transport_abort(c.t), 0);
    run_until_lost(c.p);
    cr_assert_str_eq(c.p->events, "made,data,lost:0");
    cr_assert_eq(IP(c.p)->shutdown_at_lost, 0);
    child_finish(srv, 5);
    cr_assert_str_eq(after_port(srv), "version TLSv1.2 alpn h2 sni ['localhost'] client None\n"
                                      "echoed 3\n"
                                      "no close_notify: UNEXPECTED_EOF_WHILE_READING\n");
    child_free(srv);
    SSL_CTX_free(ctx);
}

/* No SNI: server_hostname "" (and no name check), or an address (checked
 * against the certificate's IP addresses: the PKI's has 127.0.0.1). */
static void py_server_no_sni(const char *name)
{
    uint16_t port;
    child_t *srv = py_server(&V13, "h2", "python", 3, false, &port);
    SSL_CTX *ctx = client_ctx("h2");
    th_conn_t c = {0};
    tls_connect(port, ctx, name, &c);
    connected(&c);
    cr_assert_eq(tpio_transport_write(c.t, "ab\n", 3), 0);
    static const char want[] = "sni=None alpn=h2 version=TLSv1.3\nab\n";
    run_until_rx(c.p, sizeof want - 1);
    assert_rx(c.p, want);
    assert_clean_end(c.p, "made,data,eof,lost:0");
    child_finish(srv, 0);
    cr_assert_str_eq(after_port(srv), "version TLSv1.3 alpn h2 sni [None] client None\n"
                                      "echoed 3\n"
                                      "unwrap: done\n"
                                      "tcp: b''\n");
    child_free(srv);
    SSL_CTX_free(ctx);
}

Test(interop, python_server_no_sni_when_named_empty, .timeout = TMO) { py_server_no_sni(""); }
Test(interop, python_server_no_sni_for_an_address, .timeout = TMO) { py_server_no_sni(NULL); }

/* ---- Python's ssl: tpio as the server ---------------------------------------------- */

/* argv: port cafile version alpn server_hostname closer. A default context
 * (CERT_REQUIRED, check_hostname) trusting the PKI's CA; prints what it saw
 * of the server, sends a line, reads its echo, then closes first (closer
 * "python") or waits for the server's close_notify and answers it (a TCP
 * EOF without one raises, as in PY_SERVER). */
static const char PY_CLIENT[] =
    "import socket, ssl, sys\n"
    "port, ca, version, alpn, host, closer = sys.argv[1:7]\n"
    "ctx = ssl.create_default_context(cafile=ca)\n"
    "ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)\n"
    "ctx.set_alpn_protocols(alpn.split(','))\n"
    "ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF\n"
    "raw = socket.create_connection(('127.0.0.1', int(port)))\n"
    "try:\n"
    "    s = ctx.wrap_socket(raw, server_hostname=host, suppress_ragged_eofs=False)\n"
    "except ssl.SSLCertVerificationError as e:\n"
    "    print('verify failed:', e.verify_message, flush=True)\n"
    "    sys.exit(3)\n"
    "cn = dict(x[0] for x in s.getpeercert()['subject'])['commonName']\n"
    "print('version', s.version(), 'alpn', s.selected_alpn_protocol(), 'cn', cn,\n"
    "      'check_hostname', ctx.check_hostname, ctx.verify_mode.name, flush=True)\n"
    "msg = b'hello from python\\n'\n"
    "s.sendall(msg)\n"
    "got = b''\n"
    "while len(got) < len(msg):\n"
    "    d = s.recv(4096)\n"
    "    if not d:\n"
    "        break\n"
    "    got += d\n"
    "print('echo', got, flush=True)\n"
    "if closer != 'python':\n"
    "    print('recv after close_notify:', s.recv(4096), flush=True)\n"
    "plain = s.unwrap()\n"
    "print('unwrap: done', flush=True)\n"
    "print('tcp:', plain.recv(4096), flush=True)\n";

static child_t *py_client(const version_t *v, uint16_t port, const char *alpn, const char *host,
                          const char *closer)
{
    char p[16];
    snprintf(p, sizeof p, "%u", port);
    const char *argv[] = {PYTHON, "-I", "-c", PY_CLIENT, p, th_pki()->ca, v->py, alpn, host,
                          closer, NULL};
    return spawn("python client", argv, false, false);
}

static void py_client_echo(const version_t *v, bool python_closes)
{
    srv_t sv = {.knobs.echo = true, .knobs.close_on_data = !python_closes};
    tls_server(&sv);
    child_t *cli = py_client(v, sv.port, "x-none,http/1.1,h2", "localhost",
                             python_closes ? "python" : "tpio");
    RUN_UNTIL(sv.calls == 1 || cli->exited);
    cr_assert_eq(sv.calls, 1, "no connection; stdout:\n%s\nstderr:\n%s", cli->out.d, cli->err.d);
    th_proto_t *p = &sv.last->p;
    /* the SNI Python sent, the ALPN the server chose */
    const char *sni = SSL_get_servername(ssl_of(p->t), TLSEXT_NAMETYPE_host_name);
    cr_assert_not_null(sni);
    cr_assert_str_eq(sni, "localhost");
    assert_alpn(p->t, "h2");
    assert_cipher(p->t, v->name, v->cipher);
    run_until_rx(p, 18);
    assert_rx(p, "hello from python\n");
    if (python_closes)
        assert_clean_end(p, "made,data,eof,lost:0");
    else
        assert_clean_end(p, "made,data,lost:0"); /* close() right after the echo */
    child_finish(cli, 0);
    char want[512];
    snprintf(want, sizeof want,
             "version %s alpn h2 cn localhost check_hostname True CERT_REQUIRED\n"
             "echo b'hello from python\\n'\n"
             "%s"
             "unwrap: done\n"
             "tcp: b''\n",
             v->name, python_closes ? "" : "recv after close_notify: b''\n");
    cr_assert_str_eq(cli->out.d, want);
    cr_assert_str_eq(cli->err.d, "");
    child_free(cli);
    close_server(&sv);
}

Test(interop, python_client_tls12_tpio_closes, .timeout = TMO) { py_client_echo(&V12, false); }
Test(interop, python_client_tls13_tpio_closes, .timeout = TMO) { py_client_echo(&V13, false); }
Test(interop, python_client_tls12_python_closes, .timeout = TMO) { py_client_echo(&V12, true); }
Test(interop, python_client_tls13_python_closes, .timeout = TMO) { py_client_echo(&V13, true); }

/* Python checks the host name: tpio's certificate is not for example.com.
 * The server drops the failed handshake without a word. */
Test(interop, python_client_checks_hostname, .timeout = TMO)
{
    srv_t sv = {.knobs.echo = true};
    tls_server(&sv);
    child_t *cli = py_client(&V13, sv.port, "h2", "example.com", "python");
    child_finish(cli, 3);
    cr_assert_str_eq(cli->out.d,
                     "verify failed: Hostname mismatch, certificate is not valid for "
                     "'example.com'.\n");
    for (int i = 0; i < 200 && th_conn_count(sv.s); i++)
        th_run_iters(th_fx.loop, 1);
    cr_assert_eq(th_conn_count(sv.s), 0);
    cr_assert_eq(sv.calls, 0);
    child_free(cli);
    close_server(&sv);
}

/* No protocol in common: the tpio server answers without ALPN, and the
 * connection goes on. */
Test(interop, python_client_alpn_without_overlap, .timeout = TMO)
{
    srv_t sv = {.knobs.echo = true};
    tls_server(&sv);
    child_t *cli = py_client(&V12, sv.port, "x-other", "localhost", "python");
    RUN_UNTIL(sv.calls == 1 || cli->exited);
    cr_assert_eq(sv.calls, 1, "no connection; stdout:\n%s\nstderr:\n%s", cli->out.d, cli->err.d);
    th_proto_t *p = &sv.last->p;
    assert_alpn(p->t, NULL);
    assert_clean_end(p, "made,data,eof,lost:0");
    child_finish(cli, 0);
    cr_assert_str_eq(cli->out.d,
                     "version TLSv1.2 alpn None cn localhost check_hostname True "
                     "CERT_REQUIRED\n"
                     "echo b'hello from python\\n'\n"
                     "unwrap: done\n"
                     "tcp: b''\n");
    child_free(cli);
    close_server(&sv);
}

/* ---- mid-stream handshake messages -------------------------------------------------- */

/* A message of -msg with its bytes: dir ">>>" (sent) or "<<<" (received),
 * what ("TLS 1.3, Handshake [length 0005], KeyUpdate"), bytes ("18 00 00 01
 * 00": a KeyUpdate that asks for none back). */
static void assert_msg_has(const child_t *ch, const char *dir, const char *what,
                           const char *bytes)
{
    char want[256];
    snprintf(want, sizeof want, "%s %s\n    %s\n", dir, what, bytes);
    cr_assert(strstr(ch->msg.d, want), "%s's -msg lacks \"%s\"", ch->name, want);
}

/* s_client's commands (a line of its stdin): "K" sends a KeyUpdate that asks
 * for one back, "R" asks for a TLS 1.2 renegotiation. */
static child_t *s_client_cmd(const version_t *v, srv_t *sv)
{
    tls_server(sv);
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", sv->port);
    const char *argv[] = {OPENSSL,     "s_client",  "-connect",  addr,
                          "-CAfile",   th_pki()->ca, "-verify_return_error",
                          "-servername", "localhost", "-msg",      "-msgfile",
                          "/dev/fd/3", v->flag,     NULL};
    child_t *cli = spawn("s_client", argv, true, true);
    RUN_UNTIL(sv->calls == 1 || cli->exited);
    cr_assert_eq(sv->calls, 1, "no connection; s_client's stdout:\n%s\nstderr:\n%s", cli->out.d,
                 cli->err.d);
    return cli;
}

/* TLS 1.3: the peer updates its keys and asks tpio to do the same; tpio's
 * KeyUpdate goes out before its next data (RFC 8446 4.6.3), and the data
 * flows on both ways. */
Test(interop, s_client_key_update, .timeout = TMO)
{
    srv_t sv = {.knobs.echo = true};
    child_t *cli = s_client_cmd(&V13, &sv);
    th_proto_t *p = &sv.last->p;
    child_write(cli, "K\n");
    /* (one line at a time: s_client drops what follows a command in one read) */
    RUN_UNTIL(strstr(cli->err.d, "KEYUPDATE\n") || cli->exited);
    assert_has("s_client's stderr", "KEYUPDATE\n", cli->err.d);
    child_write(cli, "after the update\n");
    run_until_rx(p, 17);
    assert_rx(p, "after the update\n");
    child_wait_out(cli, "after the update\n");
    cr_assert_eq(SSL_get_key_update_type(ssl_of(p->t)), SSL_KEY_UPDATE_NONE);
    child_close_stdin(cli);
    assert_clean_end(p, "made,data,eof,lost:0");
    child_finish(cli, 0);
    assert_msg_has(cli, ">>>", "TLS 1.3, Handshake [length 0005], KeyUpdate", "18 00 00 01 01");
    assert_msg_has(cli, "<<<", "TLS 1.3, Handshake [length 0005], KeyUpdate", "18 00 00 01 00");
    cr_assert_eq(count_of(cli->msg.d, "KeyUpdate"), 2);
    assert_notifies(cli, ">", "TLS 1.3");
    assert_lacks("s_client's stderr", "error", cli->err.d);
    child_free(cli);
    close_server(&sv);
}

/* TLS 1.2: the peer's renegotiation is refused (a no_renegotiation
 * warning; OpenSSL 3 servers refuse client-initiated renegotiation by
 * default anyway), which OpenSSL's client takes as the end (a fatal
 * handshake_failure back): connection_lost(TPIO_ETLS), no report. */
Test(interop, s_client_renegotiation_refused, .timeout = TMO)
{
    srv_t sv = {.knobs.echo = true};
    child_t *cli = s_client_cmd(&V12, &sv);
    th_proto_t *p = &sv.last->p;
    child_write(cli, "R\n");
    run_until_lost(p);
    cr_assert_str_eq(p->events, "made,lost:TPIO_ETLS");
    assert_has("tpio_tls_last_error()", "sslv3 alert handshake failure", tpio_tls_last_error());
    child_finish(cli, 1);
    assert_has("s_client's stderr", "RENEGOTIATING\n", cli->err.d);
    assert_has("s_client's stderr", "SSL routines:ssl3_read_bytes:no renegotiation", cli->err.d);
    cr_assert_str_eq(alerts(cli), "<<< TLS 1.2, Alert [length 0002], warning no_renegotiation\n"
                                  ">>> TLS 1.2, Alert [length 0002], fatal handshake_failure\n");
    /* its second ClientHello never got a ServerHello */
    cr_assert_eq(count_of(cli->msg.d, "], ClientHello\n"), 2);
    cr_assert_eq(count_of(cli->msg.d, "], ServerHello\n"), 1);
    child_free(cli);
    close_server(&sv);
}

/* s_server without -rev: what the client sends goes to its stdout, the
 * lines of its stdin go to the client, except its commands: "K" sends a
 * KeyUpdate that asks for one back, "r" a TLS 1.2 HelloRequest. */
static child_t *s_server_cmd(const version_t *v, th_conn_t *c)
{
    const th_pki_t *k = th_pki();
    const char *argv[] = {OPENSSL, "s_server", "-accept", "127.0.0.1:0", "-naccept",  "1",
                          "-msg",  "-msgfile", "/dev/fd/3", v->flag,     "-cert",     k->cert,
                          "-key",  k->key,     NULL};
    child_t *srv = spawn("s_server", argv, true, true);
    const char *a = NULL;
    RUN_UNTIL(srv->out.eof || ((a = strstr(srv->out.d, "ACCEPT 127.0.0.1:")) && strchr(a, '\n')));
    cr_assert(a && strchr(a, '\n'), "no ACCEPT line; stdout:\n%s\nstderr:\n%s", srv->out.d,
              srv->err.d);
    unsigned port = 0;
    cr_assert_eq(sscanf(a, "ACCEPT 127.0.0.1:%u", &port), 1);
    SSL_CTX *ctx = client_ctx(NULL);
    tls_connect((uint16_t)port, ctx, "localhost", c);
    SSL_CTX_free(ctx);
    connected(c);
    /* its side of the handshake is over */
    child_wait_out(srv, "\nCIPHER is ");
    return srv;
}

Test(interop, s_server_key_update, .timeout = TMO)
{
    th_conn_t c = {0};
    child_t *srv = s_server_cmd(&V13, &c);
    SSL *ssl = ssl_of(c.t);
    child_write(srv, "K\n");
    /* tpio read it: its own KeyUpdate waits for its next write */
    RUN_UNTIL(SSL_get_key_update_type(ssl) != SSL_KEY_UPDATE_NONE || c.p->lost);
    cr_assert_eq(SSL_get_key_update_type(ssl), SSL_KEY_UPDATE_NOT_REQUESTED, "events: %s",
                 c.p->events);
    cr_assert_str_eq(c.p->events, "made");
    child_write(srv, "from s_server\n");
    run_until_rx(c.p, 14);
    assert_rx(c.p, "from s_server\n");
    cr_assert_eq(tpio_transport_write(c.t, "from tpio\n", 10), 0);
    cr_assert_eq(SSL_get_key_update_type(ssl), SSL_KEY_UPDATE_NONE);
    child_wait_out(srv, "from tpio\n");
    cr_assert_eq(tpio_transport_close(c.t), 0);
    assert_clean_end(c.p, "made,data,lost:0");
    child_finish(srv, 0);
    assert_msg_has(srv, ">>>", "TLS 1.3, Handshake [length 0005], KeyUpdate", "18 00 00 01 01");
    assert_msg_has(srv, "<<<", "TLS 1.3, Handshake [length 0005], KeyUpdate", "18 00 00 01 00");
    cr_assert_eq(count_of(srv->msg.d, "KeyUpdate"), 2);
    assert_notifies(srv, "<>", "TLS 1.3");
    cr_assert_str_eq(srv->err.d, "");
    child_free(srv);
}

/* TLS 1.2: a HelloRequest; tpio's no_renegotiation warning, which OpenSSL's
 * server takes as the end (fatal handshake_failure). */
Test(interop, s_server_renegotiation_refused, .timeout = TMO)
{
    th_conn_t c = {0};
    child_t *srv = s_server_cmd(&V12, &c);
    child_write(srv, "r\n");
    run_until_lost(c.p);
    cr_assert_str_eq(c.p->events, "made,lost:TPIO_ETLS");
    assert_has("tpio_tls_last_error()", "sslv3 alert handshake failure", tpio_tls_last_error());
    child_finish(srv, 0);
    assert_msg_has(srv, ">>>", "TLS 1.2, Handshake [length 0004], HelloRequest", "00 00 00 00");
    cr_assert_str_eq(alerts(srv), "<<< TLS 1.2, Alert [length 0002], warning no_renegotiation\n"
                                  ">>> TLS 1.2, Alert [length 0002], fatal handshake_failure\n");
    assert_has("s_server's stderr", "SSL routines:ssl3_read_bytes:no renegotiation", srv->err.d);
    child_free(srv);
}

/* ---- several records in one segment ------------------------------------------------ */

/* Python's ssl over memory BIOs, so that it decides what goes out in one
 * write: argv role version payload close drip [certfile keyfile | port
 * cafile]. The last flight of its handshake, `payload` and (close "1") its
 * close_notify leave in one sendall, so that tpio reads them in one read;
 * or, drip "1", everything it sends goes one byte per segment. Then it
 * reads until the peer's close_notify, answers it if it did not close
 * first, and reports the TCP connection's end. Close "tcp": no
 * close_notify but a TCP FIN after them, then it reads to the end; "rst":
 * it prints "ready", waits for a line on its stdin, sends them and resets
 * the connection (SO_LINGER 0), and prints "reset". */
static const char PY_BIO[] =
    "import socket, ssl, sys\n"
    "role, version, payload, close, drip = sys.argv[1:6]\n"
    "if role == 'server':\n"
    "    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
    "    ctx.load_cert_chain(sys.argv[6], sys.argv[7])\n"
    "    ls = socket.socket()\n"
    "    ls.bind(('127.0.0.1', 0))\n"
    "    ls.listen(1)\n"
    "    print('PORT', ls.getsockname()[1], flush=True)\n"
    "    sock, _ = ls.accept()\n"
    "    ls.close()\n"
    "else:\n"
    "    ctx = ssl.create_default_context(cafile=sys.argv[7])\n"
    "    sock = socket.create_connection(('127.0.0.1', int(sys.argv[6])))\n"
    "sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
    "def send(b):\n"
    "    if drip == '1':\n"
    "        for i in range(len(b)):\n"
    "            sock.send(b[i:i + 1])\n"
    "    else:\n"
    "        sock.sendall(b)\n"
    "ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)\n"
    "ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF\n"
    "inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()\n"
    "obj = ctx.wrap_bio(inc, out, server_side=role == 'server',\n"
    "                   server_hostname=None if role == 'server' else 'localhost')\n"
    "def more():\n"
    "    d = sock.recv(65536)\n"
    "    if not d:\n"
    "        sys.exit('TCP EOF')\n"
    "    inc.write(d)\n"
    "while True:\n"
    "    try:\n"
    "        obj.do_handshake()\n"
    "        break\n"
    "    except ssl.SSLWantReadError:\n"
    "        send(out.read())\n"
    "        more()\n"
    "if payload:\n"
    "    obj.write(payload.encode())\n"
    "if close == '1':\n"
    "    try:\n"
    "        obj.unwrap()\n"
    "    except ssl.SSLWantReadError:\n"
    "        pass\n"
    "if close != 'rst':\n"
    "    send(out.read())\n"
    "if close == 'tcp':\n"
    "    sock.shutdown(socket.SHUT_WR)\n"
    "    try:\n"
    "        while sock.recv(65536):\n"
    "            pass\n"
    "        print('tcp: end', flush=True)\n"
    "    except OSError as e:\n"
    "        print('tcp:', e.strerror, flush=True)\n"
    "    sys.exit(0)\n"
    "if close == 'rst':\n"
    "    import struct\n"
    "    print('ready', flush=True)\n"
    "    sys.stdin.readline()\n"
    "    send(out.read())\n"
    "    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
    "    sock.close()\n"
    "    print('reset', flush=True)\n"
    "    sys.exit(0)\n"
    "got = b''\n"
    "while True:\n"
    "    try:\n"
    "        d = obj.read(65536)\n"
    "        if not d:\n"
    "            break\n"
    "        got += d\n"
    "    except ssl.SSLWantReadError:\n"
    "        more()\n"
    "    except ssl.SSLZeroReturnError:\n"
    "        break\n"
    "print('received', got, flush=True)\n"
    "if close != '1':\n"
    "    obj.unwrap()\n"
    "    send(out.read())\n"
    "print('tcp:', sock.recv(4096), flush=True)\n";

/* tpio the client: the server's Finished (TLS 1.2: it comes last), its
 * first data (none when payload is "") and maybe its close_notify in one
 * segment. */
static void bio_server_drip(const version_t *v, const char *payload, bool with_close,
                            bool drip)
{
    const th_pki_t *k = th_pki();
    const char *argv[] = {PYTHON,  "-I",    "-c",    PY_BIO, "server", v->py, payload,
                          with_close ? "1" : "0", drip ? "1" : "0", k->cert, k->key, NULL};
    child_t *srv = spawn("python server", argv, false, false);
    child_wait_out(srv, "\n");
    unsigned port = 0;
    cr_assert_eq(sscanf(srv->out.d, "PORT %u\n", &port), 1, "%s", srv->err.d);
    SSL_CTX *ctx = client_ctx(NULL);
    th_conn_t c = {0};
    tls_connect((uint16_t)port, ctx, "localhost", &c);
    connected(&c);
    if (!*payload) {
        cr_assert(with_close);
        assert_clean_end(c.p, "made,eof,lost:0");
    } else if (with_close) {
        run_until_rx(c.p, strlen(payload));
        assert_rx(c.p, payload);
        assert_clean_end(c.p, "made,data,eof,lost:0");
    } else {
        run_until_rx(c.p, strlen(payload));
        assert_rx(c.p, payload);
        cr_assert_eq(tpio_transport_write(c.t, "bye\n", 4), 0);
        cr_assert_eq(tpio_transport_close(c.t), 0);
        assert_clean_end(c.p, "made,data,lost:0");
    }
    child_finish(srv, 0);
    cr_assert_str_eq(after_port(srv), with_close ? "received b''\ntcp: b''\n"
                                                 : "received b'bye\\n'\ntcp: b''\n");
    cr_assert_str_eq(srv->err.d, "");
    child_free(srv);
    SSL_CTX_free(ctx);
}

static void bio_server(const version_t *v, const char *payload, bool with_close)
{
    bio_server_drip(v, payload, with_close, false);
}

Test(interop, finished_and_data_in_one_segment_tls12, .timeout = TMO)
{
    bio_server(&V12, "first words\n", false);
}
Test(interop, finished_data_and_close_in_one_segment_tls12, .timeout = TMO)
{
    bio_server(&V12, "first words\n", true);
}
/* connection_made, then at once the end: eof_received, connection_lost */
Test(interop, finished_and_close_in_one_segment_tls12, .timeout = TMO)
{
    bio_server(&V12, "", true);
}
Test(interop, tickets_and_data_in_one_segment_tls13, .timeout = TMO)
{
    bio_server(&V13, "first words\n", false);
}
Test(interop, tickets_data_and_close_in_one_segment_tls13, .timeout = TMO)
{
    bio_server(&V13, "first words\n", true);
}

/* tpio the server: the client's Finished (TLS 1.3: it comes last), its
 * first data (none when payload is "") and maybe its close_notify in one
 * segment; the server echoes. */
static void bio_client_drip(const version_t *v, const char *payload, bool with_close,
                            bool drip)
{
    srv_t sv = {.knobs.echo = true};
    tls_server(&sv);
    char port[16];
    snprintf(port, sizeof port, "%u", sv.port);
    const char *argv[] = {PYTHON, "-I",   "-c", PY_BIO, "client", v->py, payload,
                          with_close ? "1" : "0", drip ? "1" : "0", port, th_pki()->ca, NULL};
    child_t *cli = spawn("python client", argv, false, false);
    RUN_UNTIL(sv.calls == 1 || cli->exited);
    cr_assert_eq(sv.calls, 1, "no connection; stdout:\n%s\nstderr:\n%s", cli->out.d, cli->err.d);
    th_proto_t *p = &sv.last->p;
    if (!*payload) {
        cr_assert(with_close);
        assert_clean_end(p, "made,eof,lost:0");
    } else {
        run_until_rx(p, strlen(payload));
        assert_rx(p, payload);
        if (with_close) {
            assert_clean_end(p, "made,data,eof,lost:0");
        } else {
            cr_assert_eq(tpio_transport_close(p->t), 0);
            assert_clean_end(p, "made,data,lost:0");
        }
    }
    child_finish(cli, 0);
    /* what it sent, echoed */
    cr_assert_str_eq(cli->out.d, *payload ? "received b'first words\\n'\ntcp: b''\n"
                                          : "received b''\ntcp: b''\n");
    cr_assert_str_eq(cli->err.d, "");
    child_free(cli);
    close_server(&sv);
}

static void bio_client(const version_t *v, const char *payload, bool with_close)
{
    bio_client_drip(v, payload, with_close, false);
}

Test(interop, client_finished_and_data_in_one_segment_tls13, .timeout = TMO)
{
    bio_client(&V13, "first words\n", false);
}
Test(interop, client_finished_data_and_close_in_one_segment_tls13, .timeout = TMO)
{
    bio_client(&V13, "first words\n", true);
}
Test(interop, client_finished_and_close_in_one_segment_tls13, .timeout = TMO)
{
    bio_client(&V13, "", true);
}
Test(interop, client_data_and_close_in_one_segment_tls12, .timeout = TMO)
{
    bio_client(&V12, "first words\n", true);
}

/* The other way round: every record in pieces, one byte per segment. */
Test(interop, server_one_byte_per_segment_tls12, .timeout = TMO)
{
    bio_server_drip(&V12, "first words\n", true, true);
}
Test(interop, server_one_byte_per_segment_tls13, .timeout = TMO)
{
    bio_server_drip(&V13, "first words\n", true, true);
}
Test(interop, client_one_byte_per_segment_tls12, .timeout = TMO)
{
    bio_client_drip(&V12, "first words\n", true, true);
}
Test(interop, client_one_byte_per_segment_tls13, .timeout = TMO)
{
    bio_client_drip(&V13, "first words\n", true, true);
}

/* ---- TLS 1.3 post-handshake client authentication ------------------------------------ */

/* argv: certfile keyfile cafile. A TLS 1.3 server that asks for the
 * client's certificate only after the handshake, then greets it by name. */
static const char PY_PHA_SERVER[] =
    "import socket, ssl, sys\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
    "ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n"
    "ctx.load_verify_locations(sys.argv[3])\n"
    "ctx.minimum_version = ssl.TLSVersion.TLSv1_3\n"
    "ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF\n"
    "ctx.verify_mode = ssl.CERT_REQUIRED\n"
    "ctx.post_handshake_auth = True\n"
    "ls = socket.socket()\n"
    "ls.bind(('127.0.0.1', 0))\n"
    "ls.listen(1)\n"
    "print('PORT', ls.getsockname()[1], flush=True)\n"
    "raw, _ = ls.accept()\n"
    "ls.close()\n"
    "s = ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)\n"
    "print('after the handshake:', s.getpeercert(), flush=True)\n"
    "s.verify_client_post_handshake()\n"
    "s.sendall(b'who are you?\\n')\n"
    "line = b''\n"
    "while not line.endswith(b'\\n'):\n"
    "    d = s.recv(4096)\n"
    "    if not d:\n"
    "        sys.exit('EOF')\n"
    "    line += d\n"
    "cn = dict(x[0] for x in s.getpeercert()['subject'])['commonName']\n"
    "print('then:', cn, line, flush=True)\n"
    "s.sendall(b'hello, ' + cn.encode() + b'\\n')\n"
    "print('recv after close_notify:', s.recv(4096), flush=True)\n"
    "plain = s.unwrap()\n"
    "print('tcp:', plain.recv(4096), flush=True)\n";

/* tpio the client: OpenSSL answers the CertificateRequest inside the read
 * that meets it, writing through tpio's layer. */
Test(interop, python_server_post_handshake_auth, .timeout = TMO)
{
    const th_pki_t *k = th_pki();
    const char *argv[] = {PYTHON, "-I", "-c", PY_PHA_SERVER, k->cert, k->key, k->ca, NULL};
    child_t *srv = spawn("python server", argv, false, false);
    child_wait_out(srv, "\n");
    unsigned port = 0;
    cr_assert_eq(sscanf(srv->out.d, "PORT %u\n", &port), 1, "%s", srv->err.d);
    SSL_CTX *ctx = client_ctx_with_cert();
    SSL_CTX_set_post_handshake_auth(ctx, 1);
    th_conn_t c = {0};
    tls_connect((uint16_t)port, ctx, "localhost", &c);
    connected(&c);
    run_until_rx(c.p, 13);
    assert_rx(c.p, "who are you?\n");
    cr_assert_eq(tpio_transport_write(c.t, "me\n", 3), 0);
    run_until_rx(c.p, 13 + 24);
    assert_rx(c.p, "who are you?\nhello, tpio test client\n");
    cr_assert_eq(tpio_transport_close(c.t), 0);
    assert_clean_end(c.p, "made,data,lost:0");
    child_finish(srv, 0);
    cr_assert_str_eq(after_port(srv), "after the handshake: None\n"
                                      "then: tpio test client b'me\\n'\n"
                                      "recv after close_notify: b''\n"
                                      "tcp: b''\n");
    cr_assert_str_eq(srv->err.d, "");
    child_free(srv);
    SSL_CTX_free(ctx);
}

/* argv: port cafile certfile keyfile. A TLS 1.3 client that offers
 * post-handshake authentication, with a certificate. */
static const char PY_PHA_CLIENT[] =
    "import socket, ssl, sys\n"
    "ctx = ssl.create_default_context(cafile=sys.argv[2])\n"
    "ctx.load_cert_chain(sys.argv[3], sys.argv[4])\n"
    "ctx.minimum_version = ssl.TLSVersion.TLSv1_3\n"
    "ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF\n"
    "ctx.post_handshake_auth = True\n"
    "raw = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "s = ctx.wrap_socket(raw, server_hostname='localhost', suppress_ragged_eofs=False)\n"
    "line = b''\n"
    "while not line.endswith(b'\\n'):\n"
    "    d = s.recv(4096)\n"
    "    if not d:\n"
    "        sys.exit('EOF')\n"
    "    line += d\n"
    "print('got', line, flush=True)\n"
    "s.sendall(b'me\\n')\n"
    "print('recv after close_notify:', s.recv(4096), flush=True)\n"
    "plain = s.unwrap()\n"
    "print('tcp:', plain.recv(4096), flush=True)\n";

/* tpio the server: the user asks on the SSL object (ssl_object), and the
 * CertificateRequest leaves with the next write. */
Test(interop, python_client_post_handshake_auth, .timeout = TMO)
{
    const th_pki_t *k = th_pki();
    srv_t sv = {0};
    SSL_CTX *ctx = th_tls_server_ctx(0, 0);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_POST_HANDSHAKE, NULL);
    cr_assert_eq(SSL_CTX_load_verify_locations(ctx, k->ca, NULL), 1);
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = ctx);
    tpio_server_opts_t o = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1", .tls = &tls);
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, &sv, &o, &sv.s), 0);
    SSL_CTX_free(ctx);
    struct sockaddr_storage a;
    socklen_t len = sizeof a;
    cr_assert_eq(tpio_server_get_sockname(sv.s, 0, &a, &len), 0);
    char port[16];
    snprintf(port, sizeof port, "%u", ntohs(((struct sockaddr_in *)&a)->sin_port));
    const char *argv[] = {PYTHON, "-I", "-c", PY_PHA_CLIENT, port, k->ca, k->client,
                          k->client_key, NULL};
    child_t *cli = spawn("python client", argv, false, false);
    RUN_UNTIL(sv.calls == 1 || cli->exited);
    cr_assert_eq(sv.calls, 1, "no connection; stdout:\n%s\nstderr:\n%s", cli->out.d, cli->err.d);
    th_proto_t *p = &sv.last->p;
    tpio_extra_t e;
    cr_assert_eq(tpio_transport_get_extra_info(p->t, "peercert", &e), -ENOENT);
    cr_assert_eq(SSL_verify_client_post_handshake(ssl_of(p->t)), 1);
    cr_assert_eq(tpio_transport_write(p->t, "who are you?\n", 13), 0);
    run_until_rx(p, 3);
    assert_rx(p, "me\n");
    cr_assert_eq(tpio_transport_get_extra_info(p->t, "peercert", &e), 0);
    char cn[64];
    X509_NAME_get_text_by_NID(X509_get_subject_name(e.ptr), NID_commonName, cn, sizeof cn);
    cr_assert_str_eq(cn, "tpio test client");
    cr_assert_eq(SSL_get_verify_result(ssl_of(p->t)), X509_V_OK);
    cr_assert_eq(tpio_transport_close(p->t), 0);
    assert_clean_end(p, "made,data,lost:0");
    child_finish(cli, 0);
    cr_assert_str_eq(cli->out.d, "got b'who are you?\\n'\n"
                                 "recv after close_notify: b''\n"
                                 "tcp: b''\n");
    cr_assert_str_eq(cli->err.d, "");
    child_free(cli);
    close_server(&sv);
}

/* ---- sessions ------------------------------------------------------------------------ */

/* s_client -reconnect: five more connections resuming the first one's
 * session (TLS 1.2, the server's session cache: tpio's connections are
 * made from the server's SSL_CTX as any OpenSSL server's). Each ends with
 * s_client's close_notify, answered. */
Test(interop, s_client_resumes_a_session, .timeout = TMO)
{
    srv_t sv = {0};
    tls_server(&sv);
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", sv.port);
    const char *argv[] = {OPENSSL, "s_client", "-connect", addr, "-CAfile", th_pki()->ca,
                          "-verify_return_error", "-servername", "localhost", "-reconnect",
                          "-tls1_2", NULL};
    child_t *cli = spawn("s_client", argv, false, false);
    child_finish(cli, 0);
    cr_assert_eq(count_of(cli->out.d, "\nNew, TLSv1.2, Cipher is ECDHE-ECDSA-AES256-GCM-SHA384\n"),
                 1, "%s", cli->out.d);
    cr_assert_eq(
        count_of(cli->out.d, "\nReused, TLSv1.2, Cipher is ECDHE-ECDSA-AES256-GCM-SHA384\n"), 5,
        "%s", cli->out.d);
    cr_assert_eq(count_of(cli->out.d, "drop connection and then reconnect\n"), 5);
    RUN_UNTIL(sv.calls == 6 && sv.all[5]->p.lost);
    cr_assert_eq(sv.calls, 6);
    for (size_t i = 0; i < 6; i++) {
        th_proto_t *p = &sv.all[i]->p;
        run_until_lost(p);
        /* (the answer may find the socket closed: s_client does not wait) */
        cr_assert_str_eq(p->events, "made,eof,lost:0", "connection %zu", i);
        cr_assert_eq(sv.all[i]->resumed, i > 0, "connection %zu", i);
    }
    child_free(cli);
    close_server(&sv);
}

/* ---- start_tls: a plaintext protocol that turns to TLS (STARTTLS) --------------------- */

/* argv: certfile keyfile. Reads a plaintext line (byte by byte: what
 * follows it is the TLS handshake), answers "OK", then TLS: it reports the
 * SNI it got, echoes a line and closes first. */
static const char PY_STARTTLS_SERVER[] =
    "import socket, ssl, sys\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
    "ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n"
    "ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF\n"
    "names = []\n"
    "ctx.sni_callback = lambda sslobj, name, c: names.append(name)\n"
    "ls = socket.socket()\n"
    "ls.bind(('127.0.0.1', 0))\n"
    "ls.listen(1)\n"
    "print('PORT', ls.getsockname()[1], flush=True)\n"
    "raw, _ = ls.accept()\n"
    "ls.close()\n"
    "line = b''\n"
    "while not line.endswith(b'\\n'):\n"
    "    line += raw.recv(1)\n"
    "print('plaintext:', line, flush=True)\n"
    "raw.sendall(b'OK\\n')\n"
    "s = ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)\n"
    "print('tls:', s.version(), names, flush=True)\n"
    "line = b''\n"
    "while not line.endswith(b'\\n'):\n"
    "    d = s.recv(4096)\n"
    "    if not d:\n"
    "        sys.exit('EOF')\n"
    "    line += d\n"
    "s.sendall(line.upper())\n"
    "plain = s.unwrap()\n"
    "print('unwrap: done', flush=True)\n"
    "print('tcp:', plain.recv(4096), flush=True)\n";

/* tpio the client: a plain connection, "STARTTLS", then start_tls on it
 * with the same protocol. */
Test(interop, start_tls_client, .timeout = TMO)
{
    const th_pki_t *k = th_pki();
    const char *argv[] = {PYTHON, "-I", "-c", PY_STARTTLS_SERVER, k->cert, k->key, NULL};
    child_t *srv = spawn("python server", argv, false, false);
    child_wait_out(srv, "\n");
    unsigned port = 0;
    cr_assert_eq(sscanf(srv->out.d, "PORT %u\n", &port), 1, "%s", srv->err.d);
    th_conn_t c = {0};
    tpio_connect_opts_t o =
        TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = (uint16_t)port);
    cr_assert_eq(
        tpio_loop_create_connection(th_fx.loop, client_factory, NULL, &o, th_on_conn, &c, NULL),
        0);
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0, "%s", tpio_err_name(c.err));
    tpio_transport_t *plain = c.t;
    cr_assert_eq(tpio_transport_write(plain, "STARTTLS\n", 9), 0);
    run_until_rx(c.p, 3);
    assert_rx(c.p, "OK\n");

    SSL_CTX *ctx = client_ctx(NULL);
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = ctx, .server_hostname = "localhost");
    th_conn_t up = {0};
    cr_assert_eq(
        tpio_loop_start_tls(th_fx.loop, plain, &c.p->base, &tls, th_on_conn, &up, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &up.done, TH_TMO));
    cr_assert_eq(up.err, 0, "%s: %s", tpio_err_name(up.err), tpio_tls_last_error());
    cr_assert_eq(up.p, c.p);
    cr_assert_eq(th_kind(up.t), TPIO_TRANSPORT_TLS);
    c.p->t = up.t; /* (the recording protocol's transport from here on) */
    assert_cipher(up.t, "TLSv1.3", "TLS_AES_256_GCM_SHA384");
    cr_assert_eq(tpio_transport_write(up.t, "in tls\n", 7), 0);
    run_until_rx(c.p, 10);
    assert_rx(c.p, "OK\nIN TLS\n");
    /* Python closes first */
    assert_clean_end(c.p, "made,data,eof,lost:0");
    child_finish(srv, 0);
    cr_assert_str_eq(after_port(srv), "plaintext: b'STARTTLS\\n'\n"
                                      "tls: TLSv1.3 ['localhost']\n"
                                      "unwrap: done\n"
                                      "tcp: b''\n");
    cr_assert_str_eq(srv->err.d, "");
    child_free(srv);
    SSL_CTX_free(ctx);
}

/* argv: port cafile. Over memory BIOs: "STARTTLS" and its ClientHello in
 * one write, without waiting for an answer; then it sends a line, reads its
 * echo and closes first. */
static const char PY_STARTTLS_CLIENT[] =
    "import socket, ssl, sys\n"
    "ctx = ssl.create_default_context(cafile=sys.argv[2])\n"
    "ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF\n"
    "sock = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()\n"
    "obj = ctx.wrap_bio(inc, out, server_hostname='localhost')\n"
    "def more():\n"
    "    d = sock.recv(65536)\n"
    "    if not d:\n"
    "        sys.exit('TCP EOF')\n"
    "    inc.write(d)\n"
    "def run(step):\n"
    "    while True:\n"
    "        try:\n"
    "            r = step()\n"
    "            sock.sendall(out.read())\n"
    "            return r\n"
    "        except ssl.SSLWantReadError:\n"
    "            sock.sendall(out.read())\n"
    "            more()\n"
    "try:\n"
    "    obj.do_handshake()\n"
    "except ssl.SSLWantReadError:\n"
    "    pass\n"
    "sock.sendall(b'STARTTLS\\n' + out.read())\n"
    "run(obj.do_handshake)\n"
    "print('tls:', obj.version(), flush=True)\n"
    "obj.write(b'in tls\\n')\n"
    "sock.sendall(out.read())\n"
    "print('echo:', run(lambda: obj.read(4096)), flush=True)\n"
    "run(obj.unwrap)\n"
    "print('unwrap: done', flush=True)\n"
    "print('tcp:', sock.recv(4096), flush=True)\n";

/* tpio the server: the plaintext line and the ClientHello come in one
 * data_received; start_tls gets the ClientHello as initial_data. */
Test(interop, start_tls_server_with_initial_data, .timeout = TMO)
{
    srv_t sv = {0};
    tpio_server_opts_t o = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1");
    cr_assert_eq(tpio_loop_create_server(th_fx.loop, srv_factory, &sv, &o, &sv.s), 0);
    struct sockaddr_storage a;
    socklen_t len = sizeof a;
    cr_assert_eq(tpio_server_get_sockname(sv.s, 0, &a, &len), 0);
    char port[16];
    snprintf(port, sizeof port, "%u", ntohs(((struct sockaddr_in *)&a)->sin_port));
    const char *argv[] = {PYTHON, "-I", "-c", PY_STARTTLS_CLIENT, port, th_pki()->ca, NULL};
    child_t *cli = spawn("python client", argv, false, false);
    RUN_UNTIL((sv.calls == 1 && sv.last->p.rxlen > 9) || cli->exited);
    cr_assert_eq(sv.calls, 1, "no connection; stdout:\n%s\nstderr:\n%s", cli->out.d, cli->err.d);
    th_proto_t *p = &sv.last->p;
    /* "STARTTLS\n" and a TLS record (a handshake: 0x16) right after it */
    cr_assert_gt(p->rxlen, 9);
    cr_assert_eq(memcmp(p->rx, "STARTTLS\n", 9), 0);
    cr_assert_eq(p->rx[9], 0x16);
    cr_assert_str_eq(p->events, "made,data");
    SSL_CTX *ctx = th_tls_server_ctx(0, 0);
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = ctx, .server_side = TPIO_ON,
                                    .initial_data = p->rx + 9, .initial_len = p->rxlen - 9);
    th_conn_t up = {0};
    cr_assert_eq(tpio_loop_start_tls(th_fx.loop, p->t, &p->base, &tls, th_on_conn, &up, NULL), 0);
    SSL_CTX_free(ctx);
    p->rxlen = 0; /* what comes next is plaintext from TLS */
    cr_assert(th_run_until(th_fx.loop, &up.done, TH_TMO));
    cr_assert_eq(up.err, 0, "%s: %s", tpio_err_name(up.err), tpio_tls_last_error());
    p->t = up.t;
    p->echo = true;
    const char *sni = SSL_get_servername(ssl_of(up.t), TLSEXT_NAMETYPE_host_name);
    cr_assert(sni && strcmp(sni, "localhost") == 0);
    run_until_rx(p, 7);
    assert_rx(p, "in tls\n");
    assert_clean_end(p, "made,data,eof,lost:0");
    child_finish(cli, 0);
    cr_assert_str_eq(cli->out.d, "tls: TLSv1.3\n"
                                 "echo: b'in tls\\n'\n"
                                 "unwrap: done\n"
                                 "tcp: b''\n");
    cr_assert_str_eq(cli->err.d, "");
    child_free(cli);
    close_server(&sv);
}

/* ---- the peer leaves right after its last flight and data ------------------------------ */

/* A TCP FIN after them: the data, then connection_lost(TPIO_ETLS_EOF). */
Test(interop, server_finished_data_and_fin_tls12, .timeout = TMO)
{
    const th_pki_t *k = th_pki();
    const char *argv[] = {PYTHON, "-I", "-c", PY_BIO, "server", "TLSv1_2", "first words\n",
                          "tcp", "0", k->cert, k->key, NULL};
    child_t *srv = spawn("python server", argv, false, false);
    child_wait_out(srv, "\n");
    unsigned port = 0;
    cr_assert_eq(sscanf(srv->out.d, "PORT %u\n", &port), 1, "%s", srv->err.d);
    SSL_CTX *ctx = client_ctx(NULL);
    th_conn_t c = {0};
    tls_connect((uint16_t)port, ctx, "localhost", &c);
    connected(&c);
    run_until_lost(c.p);
    cr_assert_str_eq(c.p->events, "made,data,lost:TPIO_ETLS_EOF");
    assert_rx(c.p, "first words\n");
    child_finish(srv, 0);
    cr_assert_str_eq(after_port(srv), "tcp: end\n");
    child_free(srv);
    SSL_CTX_free(ctx);
}

Test(interop, client_finished_data_and_fin_tls13, .timeout = TMO)
{
    srv_t sv = {0};
    tls_server(&sv);
    char port[16];
    snprintf(port, sizeof port, "%u", sv.port);
    const char *argv[] = {PYTHON, "-I", "-c", PY_BIO, "client", "TLSv1_3", "first words\n",
                          "tcp", "0", port, th_pki()->ca, NULL};
    child_t *cli = spawn("python client", argv, false, false);
    RUN_UNTIL(sv.calls == 1 || cli->exited);
    cr_assert_eq(sv.calls, 1, "no connection; stdout:\n%s\nstderr:\n%s", cli->out.d, cli->err.d);
    th_proto_t *p = &sv.last->p;
    run_until_lost(p);
    cr_assert_str_eq(p->events, "made,data,lost:TPIO_ETLS_EOF");
    assert_rx(p, "first words\n");
    child_finish(cli, 0);
    cr_assert_str_eq(cli->out.d, "tcp: end\n");
    child_free(cli);
    close_server(&sv);
}

/* A TCP RST right after them, all in the kernel before tpio reads: the
 * data, authenticated and read with the Finished, still reaches the
 * protocol, then connection_lost(ECONNRESET) (as plain TCP delivers what
 * came before a reset). */
Test(interop, server_finished_data_and_reset_tls12, .timeout = TMO)
{
    const th_pki_t *k = th_pki();
    const char *argv[] = {PYTHON, "-I", "-c", PY_BIO, "server", "TLSv1_2", "first words\n",
                          "rst", "0", k->cert, k->key, NULL};
    child_t *srv = spawn("python server", argv, true, false);
    child_wait_out(srv, "\n");
    unsigned port = 0;
    cr_assert_eq(sscanf(srv->out.d, "PORT %u\n", &port), 1, "%s", srv->err.d);
    SSL_CTX *ctx = client_ctx(NULL);
    th_conn_t c = {0};
    tls_connect_start((uint16_t)port, ctx, "localhost", &c);
    child_wait_out(srv, "ready\n");
    child_write(srv, "go\n");
    child_wait_out_alone(srv, "reset\n");
    cr_assert(th_run_until(th_fx.loop, &c.done, TH_TMO));
    connected(&c);
    run_until_lost(c.p);
    cr_assert_str_eq(c.p->events, "made,data,lost:ECONNRESET");
    assert_rx(c.p, "first words\n");
    child_finish(srv, 0);
    cr_assert_str_eq(after_port(srv), "ready\nreset\n");
    child_free(srv);
    SSL_CTX_free(ctx);
}

Test(interop, client_finished_data_and_reset_tls13, .timeout = TMO)
{
    th_ring_batch(); /* the ring's branch below: its way */
    srv_t sv = {0};
    tls_server(&sv);
    char port[16];
    snprintf(port, sizeof port, "%u", sv.port);
    const char *argv[] = {PYTHON, "-I", "-c", PY_BIO, "client", "TLSv1_3", "first words\n",
                          "rst", "0", port, th_pki()->ca, NULL};
    child_t *cli = spawn("python client", argv, true, false);
    child_wait_out(cli, "ready\n");
    cr_assert_eq(sv.calls, 0);
    child_write(cli, "go\n");
    child_wait_out_alone(cli, "reset\n");
    RUN_UNTIL(sv.calls == 1 && sv.last->p.lost);
    cr_assert_eq(sv.calls, 1);
    th_proto_t *p = &sv.last->p;
    run_until_lost(p);
    child_finish(cli, 0);
    cr_assert_str_eq(cli->out.d, "ready\nreset\n");
    child_free(cli);
    close_server(&sv);
    /* (the server's NewSessionTicket write meets the reset; on io_uring the
     * send runs after the receive took the reset, and the kernel says
     * EPIPE) */
    cr_assert_str_eq(p->events, th_ring_ops(th_fx.loop) ? "made,data,lost:EPIPE"
                                                        : "made,data,lost:ECONNRESET");
    assert_rx(p, "first words\n");
}
