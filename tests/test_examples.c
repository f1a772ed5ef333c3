/*
 * The specification's examples, run as real programs from TPIO_EXAMPLES_DIR:
 * their exact output (what the Python versions print), their exit status,
 * and a clean shutdown on SIGTERM/SIGINT (the test build has ASan, so a leak
 * or a memory error makes the program exit non-zero).
 *
 * Children are started with fork/exec and read through pipes with poll()
 * deadlines; nothing sleeps to wait for an event.
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

#ifndef TPIO_EXAMPLES_DIR
#error "TPIO_EXAMPLES_DIR must point at the built examples"
#endif

#define IO_TIMEOUT_MS 10000

/* ---- child processes ---------------------------------------------------- */

typedef struct child {
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
    const char *argv[8];
    int fds[2];
    size_t n = 0;

    memset(c, 0, sizeof *c);
    snprintf(path, sizeof path, "%s/%s", TPIO_EXAMPLES_DIR, name);
    cr_assert_eq(access(path, X_OK), 0, "example %s not built (%s)", path,
                 strerror(errno));
    argv[n++] = path;
    for (; args && *args && n < 7; args++)
        argv[n++] = *args;
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

/* Start tcp_echo_server on 127.0.0.1 port 0 and return the port it printed. */
static unsigned start_server(child_t *server)
{
    static const char *const args[] = {"127.0.0.1", "0", NULL};
    char line[256];
    unsigned port = 0;
    int consumed = 0;

    spawn(server, "tcp_echo_server", args, false);
    read_line(server, line, sizeof line);
    cr_assert_eq(sscanf(line, "Serving on ('127.0.0.1', %u)%n", &port, &consumed), 1,
                 "unexpected first line: \"%s\"", line);
    cr_assert_eq((size_t)consumed, strlen(line), "unexpected first line: \"%s\"", line);
    cr_assert(port > 0 && port < 65536, "bad port in \"%s\"", line);
    return port;
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
    assert_exit_0(status, "tcp_echo_server");
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

/* ---- tests --------------------------------------------------------------- */

TestSuite(examples, .fini = kill_leftovers);

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
