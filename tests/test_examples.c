/*
 * The specification's examples, run as real programs from TPIO_EXAMPLES_DIR:
 * their exact output (what the Python versions print), their exit status,
 * and a clean shutdown on SIGTERM/SIGINT (the test build has ASan, so a leak
 * or a memory error makes the program exit non-zero).
 *
 * Children are started with fork/exec and read through pipes with poll()
 * deadlines; nothing sleeps to wait for an event. The TLS pair's tests make
 * a throw-away PKI with OpenSSL in the test process (no openssl command).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <tpio.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef TPIO_TEST_TLS /* set by tests/CMakeLists.txt in a TLS build */
#include "tls_helpers.h"
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif

#ifndef TPIO_EXAMPLES_DIR
#error "TPIO_EXAMPLES_DIR must point at the built examples"
#endif

#define IO_TIMEOUT_MS 10000

/* ---- child processes ---------------------------------------------------- */

typedef struct child {
    const char *name;   /* the example's name, for messages */
    pid_t pid;
    int out;            /* read end of the child's stdout (and stderr if merged) */
    char buf[16384];
    size_t len;
    bool eof;
} child_t;

/* Children still running when a test ends (an assertion failed): killed in fini. */
static child_t *live[4];

static void track(child_t *c)
{
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++)
        if (!live[i]) {
            live[i] = c;
            return;
        }
}

static void untrack(child_t *c)
{
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++)
        if (live[i] == c)
            live[i] = NULL;
}

static void kill_leftovers(void)
{
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++) {
        if (live[i] && live[i]->pid > 0) {
            kill(live[i]->pid, SIGKILL);
            waitpid(live[i]->pid, NULL, 0);
        }
        live[i] = NULL;
    }
}

/* Start TPIO_EXAMPLES_DIR/name with args (NULL-terminated). stdout goes to a
 * pipe; stderr too if merge_stderr, else it is inherited (sanitizer reports
 * then show up in the test log). */
static void spawn(child_t *c, const char *name, const char *const *args,
                  bool merge_stderr)
{
    char path[4096];
    const char *argv[12];
    int fds[2];
    size_t n = 0;

    memset(c, 0, sizeof *c);
    c->name = name;
    snprintf(path, sizeof path, "%s/%s", TPIO_EXAMPLES_DIR, name);
    cr_assert_eq(access(path, X_OK), 0, "example %s not built (%s)", path,
                 strerror(errno));
    argv[n++] = path;
    for (; args && *args; args++) {
        cr_assert_lt(n, sizeof argv / sizeof argv[0] - 1, "too many arguments");
        argv[n++] = *args;
    }
    argv[n] = NULL;

    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
    fflush(NULL);
    c->pid = fork();
    cr_assert_geq(c->pid, 0, "fork: %s", strerror(errno));
    if (c->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a killed test */
        dup2(fds[1], STDOUT_FILENO);
        if (merge_stderr)
            dup2(fds[1], STDERR_FILENO);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    c->out = fds[0];
    track(c);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Read more output into c->buf, waiting until the deadline. false on timeout. */
static bool fill(child_t *c, long long deadline)
{
    for (;;) {
        struct pollfd pfd = {.fd = c->out, .events = POLLIN};
        long long left = deadline - now_ms();
        if (left <= 0)
            return false;
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        cr_assert_geq(r, 0, "poll: %s", strerror(errno));
        if (r == 0)
            return false;
        cr_assert_lt(c->len, sizeof c->buf - 1, "child output too long");
        ssize_t got = read(c->out, c->buf + c->len, sizeof c->buf - 1 - c->len);
        if (got < 0 && errno == EINTR)
            continue;
        cr_assert_geq(got, 0, "read: %s", strerror(errno));
        if (got == 0)
            c->eof = true;
        c->len += (size_t)got;
        c->buf[c->len] = '\0';
        return true;
    }
}

/* Next line of output, without its '\n', into line. Fails the test on EOF or
 * timeout. */
static void read_line(child_t *c, char *line, size_t cap)
{
    long long deadline = now_ms() + IO_TIMEOUT_MS;
    char *nl;
    while (!(nl = memchr(c->buf, '\n', c->len))) {
        cr_assert(!c->eof, "EOF before a complete line; got \"%.*s\"", (int)c->len,
                  c->buf);
        cr_assert(fill(c, deadline), "timed out waiting for a line; got \"%.*s\"",
                  (int)c->len, c->buf);
    }
    size_t n = (size_t)(nl - c->buf);
    cr_assert_lt(n, cap, "line too long");
    memcpy(line, c->buf, n);
    line[n] = '\0';
    c->len -= n + 1;
    memmove(c->buf, nl + 1, c->len);
    c->buf[c->len] = '\0';
}

/* Everything not read yet, up to EOF, stays in c->buf (NUL-terminated). */
static void read_to_eof(child_t *c)
{
    long long deadline = now_ms() + IO_TIMEOUT_MS;
    while (!c->eof)
        cr_assert(fill(c, deadline), "timed out waiting for the program to end; "
                                     "output so far: \"%s\"", c->buf);
}

/* After EOF on its output the child is exiting: reap it, return its status. */
static int reap(child_t *c)
{
    int status;
    pid_t r;
    read_to_eof(c);
    do
        r = waitpid(c->pid, &status, 0);
    while (r < 0 && errno == EINTR);
    cr_assert_eq(r, c->pid, "waitpid: %s", strerror(errno));
    close(c->out);
    c->pid = 0;
    untrack(c);
    return status;
}

static void assert_exit_0(int status, const char *what)
{
    cr_assert(WIFEXITED(status), "%s was killed by signal %d", what,
              WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    cr_assert_eq(WEXITSTATUS(status), 0, "%s exited with status %d", what,
                 WEXITSTATUS(status));
}

/* ---- the echo server ----------------------------------------------------- */

/* Start the echo server `name` (tcp_echo_server, tls_echo_server) on
 * 127.0.0.1 port 0, with the options in extra (NULL-terminated, or NULL),
 * and return the port it printed. */
static unsigned start_named_server(child_t *server, const char *name,
                                   const char *const *extra)
{
    const char *args[10] = {"127.0.0.1", "0"};
    char line[256];
    unsigned port = 0;
    int consumed = 0;

    for (size_t n = 2; extra && *extra; extra++, n++) {
        cr_assert_lt(n, sizeof args / sizeof args[0] - 1, "too many arguments");
        args[n] = *extra;
    }
    spawn(server, name, args, false);
    read_line(server, line, sizeof line);
    cr_assert_eq(sscanf(line, "Serving on ('127.0.0.1', %u)%n", &port, &consumed), 1,
                 "unexpected first line: \"%s\"", line);
    cr_assert_eq((size_t)consumed, strlen(line), "unexpected first line: \"%s\"", line);
    cr_assert(port > 0 && port < 65536, "bad port in \"%s\"", line);
    return port;
}

/* Start tcp_echo_server on 127.0.0.1 port 0 and return the port it printed. */
static unsigned start_server(child_t *server)
{
    return start_named_server(server, "tcp_echo_server", NULL);
}

/* The four lines the server prints for one connection that sends `repr`. */
static void expect_connection_lines(child_t *server, const char *repr)
{
    char line[512], expect[512];
    unsigned peer_port = 0;
    int consumed = 0;

    read_line(server, line, sizeof line);
    cr_assert_eq(sscanf(line, "Connection from ('127.0.0.1', %u)%n", &peer_port,
                        &consumed), 1, "unexpected line: \"%s\"", line);
    cr_assert_eq((size_t)consumed, strlen(line), "unexpected line: \"%s\"", line);
    cr_assert(peer_port > 0 && peer_port < 65536, "bad peer port: \"%s\"", line);

    read_line(server, line, sizeof line);
    snprintf(expect, sizeof expect, "Data received: %s", repr);
    cr_assert_str_eq(line, expect);
    read_line(server, line, sizeof line);
    snprintf(expect, sizeof expect, "Send: %s", repr);
    cr_assert_str_eq(line, expect);
    read_line(server, line, sizeof line);
    cr_assert_str_eq(line, "Close the client socket");
}

/* SIGTERM (or SIGINT) the server: it must print nothing more and exit 0. */
static void stop_server(child_t *server, int sig)
{
    cr_assert_eq(kill(server->pid, sig), 0);
    int status = reap(server);
    cr_assert_str_eq(server->buf, "", "unexpected server output at exit");
    assert_exit_0(status, server->name);
}

static void run_client(unsigned port)
{
    char portstr[16];
    const char *args[] = {"127.0.0.1", portstr, NULL};
    child_t client;

    snprintf(portstr, sizeof portstr, "%u", port);
    spawn(&client, "tcp_echo_client", args, false);
    int status = reap(&client);
    cr_assert_str_eq(client.buf,
                     "Data sent: 'Hello World!'\n"
                     "Data received: 'Hello World!'\n"
                     "The server closed the connection\n");
    assert_exit_0(status, "tcp_echo_client");
}

/* Connect with a plain socket, send msg, read the echo until the server
 * closes; returns the number of bytes echoed into buf. */
static size_t raw_echo(unsigned port, const char *msg, char *buf, size_t cap)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    size_t got = 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0, "connect: %s",
                 strerror(errno));
    cr_assert_eq(send(fd, msg, strlen(msg), MSG_NOSIGNAL), (ssize_t)strlen(msg));
    long long deadline = now_ms() + IO_TIMEOUT_MS;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        long long left = deadline - now_ms();
        cr_assert_gt(left, 0, "timed out waiting for the echo");
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        cr_assert_gt(r, 0, "timed out waiting for the echo");
        cr_assert_lt(got, cap);
        ssize_t n = recv(fd, buf + got, cap - got, 0);
        cr_assert_geq(n, 0, "recv: %s", strerror(errno));
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    return got;
}

/* Output of a program whose stderr was merged must hold no sanitizer report
 * (ASan exits 1 after one, like a program that fails on purpose). */
static void assert_no_sanitizer_report(const child_t *c)
{
    cr_assert(strstr(c->buf, "Sanitizer") == NULL && strstr(c->buf, "runtime error:") == NULL,
              "%s: a sanitizer report: \"%s\"", c->name, c->buf);
}

#ifdef TPIO_TEST_TLS
/* The TLS pair's certificates: tls_helpers' throw-away PKI (a CA, a server
 * certificate for localhost and 127.0.0.1 signed by it, and another CA). */
#define pki (*th_pki())
#endif

static void examples_fini(void)
{
    kill_leftovers();
}

/* ---- tests --------------------------------------------------------------- */

TestSuite(examples, .fini = examples_fini);

Test(examples, echo_server_and_client, .timeout = 30)
{
    child_t server;
    unsigned port = start_server(&server);

    run_client(port);
    expect_connection_lines(&server, "'Hello World!'");
    stop_server(&server, SIGTERM);
}

Test(examples, echo_server_serves_several_clients, .timeout = 30)
{
    child_t server;
    unsigned port = start_server(&server);

    for (int i = 0; i < 3; i++) {
        run_client(port);
        expect_connection_lines(&server, "'Hello World!'");
    }
    stop_server(&server, SIGINT);
}

/* The server prints repr(data.decode()) exactly as Python does. */
Test(examples, echo_server_quotes_like_python_repr, .timeout = 30)
{
    static const struct {
        const char *sent, *repr;
    } cases[] = {
        {"it's\t\\ \x01\xc3\xa9\n", "\"it's\\t\\\\ \\x01\xc3\xa9\\n\""},
        {"a\"b'c", "'a\"b\\'c'"},
        {"\x7f\r", "'\\x7f\\r'"},
    };
    child_t server;
    unsigned port = start_server(&server);

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char echo[256];
        size_t n = raw_echo(port, cases[i].sent, echo, sizeof echo);
        cr_assert_eq(n, strlen(cases[i].sent), "echoed %zu bytes", n);
        cr_assert_arr_eq(echo, cases[i].sent, n);
        expect_connection_lines(&server, cases[i].repr);
    }
    stop_server(&server, SIGTERM);
}

Test(examples, echo_server_stops_cleanly_without_clients, .timeout = 30)
{
    child_t server;
    start_server(&server);
    stop_server(&server, SIGTERM);
}

/* Shutdown closes connections that are still open and still exits 0. */
Test(examples, echo_server_stops_with_an_idle_client, .timeout = 30)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    child_t server;
    char line[256], c;
    unsigned port = start_server(&server);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    cr_assert_geq(fd, 0);
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    read_line(&server, line, sizeof line); /* the connection is made */
    cr_assert(strncmp(line, "Connection from ('127.0.0.1', ", 30) == 0, "\"%s\"", line);
    stop_server(&server, SIGTERM);
    cr_assert_eq(recv(fd, &c, 1, 0), 0, "the server should have closed us");
    close(fd);
}

Test(examples, echo_server_reports_address_in_use, .timeout = 30)
{
    child_t server, second;
    char portstr[16];
    const char *args[] = {"127.0.0.1", portstr, NULL};
    unsigned port = start_server(&server);

    snprintf(portstr, sizeof portstr, "%u", port);
    spawn(&second, "tcp_echo_server", args, true);
    int status = reap(&second);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) != 0,
              "a second server on the same port must fail");
    cr_assert(strstr(second.buf, "Serving on") == NULL, "\"%s\"", second.buf);
    cr_assert(strstr(second.buf, tpio_strerror(-EADDRINUSE)) != NULL,
              "expected \"%s\" in \"%s\"", tpio_strerror(-EADDRINUSE), second.buf);
    stop_server(&server, SIGTERM);
}

Test(examples, echo_client_reports_connection_refused, .timeout = 30)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    socklen_t len = sizeof sin;
    char portstr[16];
    const char *args[] = {"127.0.0.1", portstr, NULL};
    child_t client;

    /* A port nobody listens on: bind one, note it, close it. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    snprintf(portstr, sizeof portstr, "%u", (unsigned)ntohs(sin.sin_port));
    close(fd);

    spawn(&client, "tcp_echo_client", args, true);
    int status = reap(&client);
    assert_no_sanitizer_report(&client);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) != 0,
              "the client must fail when nobody listens");
    cr_assert(strstr(client.buf, "Data sent") == NULL, "\"%s\"", client.buf);
    cr_assert(strstr(client.buf, tpio_strerror(-ECONNREFUSED)) != NULL,
              "expected \"%s\" in \"%s\"", tpio_strerror(-ECONNREFUSED), client.buf);
}

Test(examples, existing_socket, .timeout = 30)
{
    child_t prog;
    spawn(&prog, "existing_socket", NULL, false);
    int status = reap(&prog);
    cr_assert_str_eq(prog.buf, "Received: abc\n");
    assert_exit_0(status, "existing_socket");
}

/* ---- UDP and Unix socket examples ---------------------------------------- */

/* A UDP port nobody uses right now (the UDP server does not print its port). */
static unsigned free_udp_port(void)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    socklen_t len = sizeof sin;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    close(fd);
    return ntohs(sin.sin_port);
}

Test(examples, udp_echo_server_and_client, .timeout = 30)
{
    char portstr[16], line[256];
    const char *args[] = {"127.0.0.1", portstr, NULL};
    child_t server, client;
    unsigned p1 = 0, p2 = 0;
    int n1 = 0, n2 = 0;

    snprintf(portstr, sizeof portstr, "%u", free_udp_port());
    spawn(&server, "udp_echo_server", args, false);
    read_line(&server, line, sizeof line);
    cr_assert_str_eq(line, "Starting UDP server");

    spawn(&client, "udp_echo_client", args, false);
    int status = reap(&client);
    cr_assert_str_eq(client.buf, "Send: Hello World!\n"
                                 "Received: Hello World!\n"
                                 "Close the socket\n"
                                 "Connection closed\n");
    assert_exit_0(status, "udp_echo_client");

    read_line(&server, line, sizeof line);
    cr_assert_eq(sscanf(line, "Received 'Hello World!' from ('127.0.0.1', %u)%n", &p1, &n1),
                 1, "unexpected line: \"%s\"", line);
    cr_assert_eq((size_t)n1, strlen(line), "unexpected line: \"%s\"", line);
    read_line(&server, line, sizeof line);
    cr_assert_eq(sscanf(line, "Send 'Hello World!' to ('127.0.0.1', %u)%n", &p2, &n2), 1,
                 "unexpected line: \"%s\"", line);
    cr_assert_eq((size_t)n2, strlen(line), "unexpected line: \"%s\"", line);
    cr_assert(p1 > 0 && p1 == p2, "peer ports %u and %u", p1, p2);

    cr_assert_eq(kill(server.pid, SIGTERM), 0);
    status = reap(&server);
    cr_assert_str_eq(server.buf, "", "unexpected server output at exit");
    assert_exit_0(status, "udp_echo_server");
}

/* Server and client in one program: the lines of both, interleaved in the
 * order the loop runs them; each side's lines must come in its own order.
 * The server removes its socket file when it closes. */
Test(examples, unix_echo, .timeout = 30)
{
    static const char *const server_lines[] = {
        "Connection from ''", "Data received: 'Hello World!'",
        "Send: 'Hello World!'", "Close the client socket",
    };
    static const char *const client_lines[] = {
        "Data sent: 'Hello World!'", "Data received: 'Hello World!'",
        "The server closed the connection",
    };
    size_t si = 0, ci = 0;
    char line[512];
    child_t prog;

    spawn(&prog, "unix_echo", NULL, false);
    read_line(&prog, line, sizeof line);
    cr_assert(strncmp(line, "Serving on /", 12) == 0, "unexpected line: \"%s\"", line);
    char path[512];
    snprintf(path, sizeof path, "%s", line + 11);
    for (size_t i = 0; i < 7; i++) {
        read_line(&prog, line, sizeof line);
        /* "Data received: 'Hello World!'" is printed by both sides; while
         * the server has not printed its own, the client cannot have
         * received anything, so trying the server's sequence first is right. */
        if (si < 4 && strcmp(line, server_lines[si]) == 0)
            si++;
        else if (ci < 3 && strcmp(line, client_lines[ci]) == 0)
            ci++;
        else
            cr_assert_fail("unexpected line %zu: \"%s\"", i + 2, line);
    }
    cr_assert_eq(si, 4);
    cr_assert_eq(ci, 3);
    int status = reap(&prog);
    cr_assert_str_eq(prog.buf, "", "unexpected output after the exchange");
    assert_exit_0(status, "unix_echo");
    cr_assert_neq(access(path, F_OK), 0, "the socket file %s was left behind", path);
}

/* ---- the TCP echo pair over TLS ------------------------------------------ */

#ifdef TPIO_TEST_TLS

/* Start tls_echo_server on 127.0.0.1 port 0 with the PKI's server
 * certificate and return the port it printed. */
static unsigned start_tls_server(child_t *server)
{
    const char *const extra[] = {"--cert", pki.cert, "--key", pki.key, NULL};
    return start_named_server(server, "tls_echo_server", extra);
}

/* Run tls_echo_client against port, trusting cafile, with --server-hostname
 * hostname unless NULL; stderr merged into its output if merge_stderr.
 * Returns its exit status; its output is left in client->buf. */
static int tls_client_status(child_t *client, unsigned port, const char *cafile,
                             const char *hostname, bool merge_stderr)
{
    char portstr[16];
    const char *args[] = {"127.0.0.1", portstr, "--cafile", cafile,
                          hostname ? "--server-hostname" : NULL, hostname, NULL};

    snprintf(portstr, sizeof portstr, "%u", port);
    spawn(client, "tls_echo_client", args, merge_stderr);
    return reap(client);
}

/* The exchange of the TCP client, exactly. */
static void run_tls_client(unsigned port)
{
    child_t client;
    int status = tls_client_status(&client, port, pki.ca, NULL, false);
    cr_assert_str_eq(client.buf,
                     "Data sent: 'Hello World!'\n"
                     "Data received: 'Hello World!'\n"
                     "The server closed the connection\n");
    assert_exit_0(status, "tls_echo_client");
}

/* The client must refuse the server: exit 1, nothing sent, a message with
 * the code and "certificate verify failed: <why>". */
static void expect_verify_failure(unsigned port, const char *cafile, const char *hostname,
                                  int verify_error)
{
    char expect[256];
    child_t client;
    int status = tls_client_status(&client, port, cafile, hostname, true);

    assert_no_sanitizer_report(&client);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1,
              "the client must exit 1 (status %#x): \"%s\"", status, client.buf);
    cr_assert(strstr(client.buf, "Data sent") == NULL, "\"%s\"", client.buf);
    cr_assert(strstr(client.buf, tpio_err_name(TPIO_ETLS_VERIFY)) != NULL,
              "expected the code %s in \"%s\"", tpio_err_name(TPIO_ETLS_VERIFY), client.buf);
    snprintf(expect, sizeof expect, "certificate verify failed: %s",
             X509_verify_cert_error_string(verify_error));
    cr_assert(strstr(client.buf, expect) != NULL, "expected \"%s\" in \"%s\"", expect,
              client.buf);
}

/* A TLS client of the test's own (blocking OpenSSL), verifying the server
 * as tls_echo_client does. */
typedef struct tls_peer {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
} tls_peer_t;

static const char *ssl_errors(void)
{
    static char buf[256];
    unsigned long e = ERR_get_error();
    ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    return e ? buf : "no OpenSSL error";
}

static int connect_v4(unsigned port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {.tv_sec = IO_TIMEOUT_MS / 1000};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    /* Blocking calls that give up rather than hang the test. */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0, "connect: %s",
                 strerror(errno));
    return fd;
}

static void tls_peer_connect(tls_peer_t *c, unsigned port)
{
    c->fd = connect_v4(port);
    c->ctx = SSL_CTX_new(TLS_client_method());
    cr_assert_not_null(c->ctx);
    cr_assert_eq(SSL_CTX_load_verify_locations(c->ctx, pki.ca, NULL), 1, "%s", ssl_errors());
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    c->ssl = SSL_new(c->ctx);
    cr_assert_not_null(c->ssl);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, "localhost");
    SSL_set1_host(c->ssl, "localhost");
    cr_assert_eq(SSL_connect(c->ssl), 1, "handshake: %s", ssl_errors());
}

/* Read until the server's close_notify; returns the bytes read into buf. */
static size_t tls_peer_read_to_close_notify(tls_peer_t *c, char *buf, size_t cap)
{
    size_t got = 0;
    for (;;) {
        cr_assert_lt(got, cap, "more than %zu bytes", cap);
        int n = SSL_read(c->ssl, buf + got, (int)(cap - got));
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        cr_assert_eq(e, SSL_ERROR_ZERO_RETURN, "expected close_notify, got SSL error %d (%s; %s)",
                     e, strerror(errno), ssl_errors());
        return got;
    }
}

/* Answer the server's close_notify with ours (SSL_shutdown returns 1: both
 * sent), then the server closes the TCP connection. */
static void tls_peer_finish(tls_peer_t *c)
{
    char byte;
    cr_assert_eq(SSL_shutdown(c->ssl), 1, "%s", ssl_errors());
    cr_assert_eq(recv(c->fd, &byte, 1, 0), 0, "the server should have closed us (%s)",
                 strerror(errno));
    SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    close(c->fd);
}

Test(examples, tls_echo_server_and_client, .timeout = 30)
{
    child_t server;
    unsigned port = start_tls_server(&server);

    run_tls_client(port);
    expect_connection_lines(&server, "'Hello World!'");
    stop_server(&server, SIGTERM);
}

Test(examples, tls_echo_server_serves_several_clients, .timeout = 30)
{
    child_t server;
    unsigned port = start_tls_server(&server);

    for (int i = 0; i < 3; i++) {
        run_tls_client(port);
        expect_connection_lines(&server, "'Hello World!'");
    }
    stop_server(&server, SIGINT);
}

/* The bytes come through TLS unchanged, and are printed as Python would. */
Test(examples, tls_echo_server_quotes_like_python_repr, .timeout = 30)
{
    static const char sent[] = "it's\t\\ \x01\xc3\xa9\n";
    static const char repr[] = "\"it's\\t\\\\ \\x01\xc3\xa9\\n\"";
    char echo[256];
    child_t server;
    tls_peer_t peer;
    unsigned port = start_tls_server(&server);

    tls_peer_connect(&peer, port);
    cr_assert_eq(SSL_write(peer.ssl, sent, (int)strlen(sent)), (int)strlen(sent), "%s",
                 ssl_errors());
    size_t n = tls_peer_read_to_close_notify(&peer, echo, sizeof echo);
    cr_assert_eq(n, strlen(sent), "echoed %zu bytes", n);
    cr_assert_arr_eq(echo, sent, n);
    tls_peer_finish(&peer);
    expect_connection_lines(&server, repr);
    stop_server(&server, SIGTERM);
}

/* A wrong CA file: another CA, or the server's own certificate (not
 * self-signed, so no trust anchor). The client exits 1 with "certificate
 * verify failed"; the server drops the failed handshake without a word and
 * goes on serving. */
Test(examples, tls_echo_client_rejects_a_server_of_another_ca, .timeout = 30)
{
    child_t server;
    unsigned port = start_tls_server(&server);

    expect_verify_failure(port, pki.other_ca, NULL,
                          X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
    expect_verify_failure(port, pki.cert, NULL, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
    run_tls_client(port); /* the first lines the server prints are this one's */
    expect_connection_lines(&server, "'Hello World!'");
    stop_server(&server, SIGTERM);
}

/* The certificate is for localhost and 127.0.0.1: another name fails; ""
 * skips the name check (the chain is still verified). */
Test(examples, tls_echo_client_checks_the_server_hostname, .timeout = 30)
{
    child_t server, client;
    unsigned port = start_tls_server(&server);

    expect_verify_failure(port, pki.ca, "example.com", X509_V_ERR_HOSTNAME_MISMATCH);
    int status = tls_client_status(&client, port, pki.ca, "", false);
    cr_assert_str_eq(client.buf,
                     "Data sent: 'Hello World!'\n"
                     "Data received: 'Hello World!'\n"
                     "The server closed the connection\n");
    assert_exit_0(status, "tls_echo_client");
    expect_connection_lines(&server, "'Hello World!'");
    expect_verify_failure(port, pki.other_ca, "", X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
    stop_server(&server, SIGTERM);
}

Test(examples, tls_echo_server_stops_cleanly_without_clients, .timeout = 30)
{
    child_t server;
    start_tls_server(&server);
    stop_server(&server, SIGTERM);
}

/* Shutdown closes a connection still in its handshake (a client that sent
 * nothing) and exits 0. */
Test(examples, tls_echo_server_stops_with_a_client_in_its_handshake, .timeout = 30)
{
    child_t server;
    char c;
    unsigned port = start_tls_server(&server);
    int fd = connect_v4(port);

    /* Connections are accepted in order: once this client is served, the
     * silent one has been accepted too. */
    run_tls_client(port);
    expect_connection_lines(&server, "'Hello World!'");
    stop_server(&server, SIGTERM);
    cr_assert_eq(recv(fd, &c, 1, 0), 0, "the server should have closed us (%s)",
                 strerror(errno));
    close(fd);
}

/* Shutdown closes an established connection with close_notify; once the
 * client answers with its own the server exits 0. */
Test(examples, tls_echo_server_stops_with_an_idle_client, .timeout = 30)
{
    child_t server;
    tls_peer_t peer;
    char line[256], buf[64];
    unsigned port = start_tls_server(&server);

    tls_peer_connect(&peer, port);
    read_line(&server, line, sizeof line); /* the handshake is over */
    cr_assert(strncmp(line, "Connection from ('127.0.0.1', ", 30) == 0, "\"%s\"", line);
    cr_assert_eq(kill(server.pid, SIGTERM), 0);
    cr_assert_eq(tls_peer_read_to_close_notify(&peer, buf, sizeof buf), 0);
    tls_peer_finish(&peer);
    int status = reap(&server);
    cr_assert_str_eq(server.buf, "", "unexpected server output at exit");
    assert_exit_0(status, "tls_echo_server");
}

Test(examples, tls_echo_client_reports_connection_refused, .timeout = 30)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    socklen_t len = sizeof sin;
    child_t client;

    /* A port nobody listens on: bind one, note it, close it. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    close(fd);

    int status = tls_client_status(&client, ntohs(sin.sin_port), pki.ca, NULL, true);
    assert_no_sanitizer_report(&client);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1,
              "the client must exit 1 when nobody listens (status %#x)", status);
    cr_assert(strstr(client.buf, "Data sent") == NULL, "\"%s\"", client.buf);
    cr_assert(strstr(client.buf, "TLS handshake") == NULL, "\"%s\"", client.buf);
    cr_assert(strstr(client.buf, tpio_strerror(-ECONNREFUSED)) != NULL,
              "expected \"%s\" in \"%s\"", tpio_strerror(-ECONNREFUSED), client.buf);
}

/* A key that is not the certificate's: the server says so and exits 1. */
Test(examples, tls_echo_server_reports_a_key_that_does_not_match, .timeout = 30)
{
    child_t server;
    const char *const args[] = {"127.0.0.1", "0", "--cert", pki.cert, "--key", pki.client_key, NULL};

    spawn(&server, "tls_echo_server", args, true);
    int status = reap(&server);
    assert_no_sanitizer_report(&server);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %#x: \"%s\"", status,
              server.buf);
    cr_assert(strstr(server.buf, "Serving on") == NULL, "\"%s\"", server.buf);
    cr_assert(strstr(server.buf, tpio_err_name(TPIO_ETLS)) != NULL, "\"%s\"", server.buf);
}

/* Bad arguments: a usage message and exit status 2. */
Test(examples, tls_echo_pair_usage, .timeout = 30)
{
    static const char *const server_args[][6] = {
        {NULL},                               /* no --cert, no --key */
        {"--cert", "c.pem", NULL},            /* no --key */
        {"--key", "k.pem", NULL},             /* no --cert */
        {"--cert", "c.pem", "--key", NULL},   /* --key without FILE */
        {"--cert", "c", "--key", "k", "--bogus", NULL},
        {"h", "1", "extra", "--cert", "c", NULL},
    };
    static const char *const client_args[][6] = {
        {NULL},                               /* no --cafile */
        {"--cafile", NULL},
        {"--cafile", "ca.pem", "--server-hostname", NULL},
        {"--cafile", "ca.pem", "-x", NULL},
        {"h", "1", "extra", "--cafile", "ca.pem", NULL},
    };
    child_t prog;

    for (size_t i = 0; i < sizeof server_args / sizeof server_args[0]; i++) {
        spawn(&prog, "tls_echo_server", server_args[i], true);
        int status = reap(&prog);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 2, "case %zu: status %#x", i,
                  status);
        cr_assert(strncmp(prog.buf, "usage: ", 7) == 0, "case %zu: \"%s\"", i, prog.buf);
    }
    for (size_t i = 0; i < sizeof client_args / sizeof client_args[0]; i++) {
        spawn(&prog, "tls_echo_client", client_args[i], true);
        int status = reap(&prog);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 2, "case %zu: status %#x", i,
                  status);
        cr_assert(strncmp(prog.buf, "usage: ", 7) == 0, "case %zu: \"%s\"", i, prog.buf);
    }
}

#endif /* TPIO_TEST_TLS */
