/* Small helpers shared by the benchmark servers (bench/servers/ (one file each)).
 *
 * Every server follows the same contract, so the driver can treat them alike:
 *
 *   server [PORT [EXIT_AFTER]]
 *   tls server [--cert CERT.pem --key KEY.pem] [PORT [EXIT_AFTER]]
 *
 * - binds 127.0.0.1:PORT (0 = any free port), listen backlog BENCH_BACKLOG,
 *   prints the bound port on stdout (one line, flushed) and serves;
 * - echoes every byte back as soon as it arrives, TCP_NODELAY on every
 *   accepted connection;
 * - flow control is the same everywhere: when more than BENCH_HIGH bytes are
 *   waiting to be sent on a connection it stops reading from it, and it reads
 *   again once that drops to BENCH_LOW or below (tpio's and asyncio's default
 *   watermarks, used by a well-behaved proxy);
 * - reads go into one shared buffer of BENCH_READ bytes where the library lets
 *   the user choose (tpio's Protocol path reads into its own buffer, libevent
 *   into its evbuffers); the environment variable BENCH_BUF=N (1..BENCH_READ)
 *   makes that buffer N bytes, to compare small-buffer behaviour;
 * - EOF or error from the peer: close the connection;
 * - EXIT_AFTER > 0: exit(0) once that many connections have been closed
 *   (used by the callgrind / strace runs so the tool writes its report);
 * - SIGPIPE is ignored and RLIMIT_NOFILE raised to its hard limit.
 *
 * The TLS servers (echo_tls_*) take the certificate chain and key with
 * --cert / --key (PEM, anywhere on the command line) and configure their
 * SSL_CTX alike, with bench_tls.h.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

#define BENCH_BACKLOG 1024
#define BENCH_READ (64 * 1024)
#define BENCH_HIGH (64 * 1024)
#define BENCH_LOW (16 * 1024)

struct bench_args {
    unsigned port;
    long exit_after;
    size_t read_size; /* BENCH_BUF, else BENCH_READ */
    const char *cert, *key; /* --cert, --key (TLS servers); NULL if not given */
};

static inline struct bench_args bench_setup(int argc, char **argv)
{
    struct bench_args a = {0, 0, BENCH_READ, NULL, NULL};
    const char *env = getenv("BENCH_BUF");
    if (env) {
        unsigned long v = strtoul(env, NULL, 10);
        if (v < 1 || v > BENCH_READ) {
            fprintf(stderr, "BENCH_BUF must be 1..%d\n", BENCH_READ);
            exit(1);
        }
        a.read_size = v;
    }
    int pos = 0;
    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "--cert") == 0 || strcmp(argv[i], "--key") == 0) && i + 1 < argc) {
            *(argv[i][2] == 'c' ? &a.cert : &a.key) = argv[i + 1];
            i++;
        } else if (pos == 0) {
            a.port = (unsigned)strtoul(argv[i], NULL, 10);
            pos++;
        } else if (pos == 1) {
            a.exit_after = strtol(argv[i], NULL, 10);
            pos++;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    return a;
}

static inline void bench_print_port(unsigned port)
{
    printf("%u\n", port);
    fflush(stdout);
}

static inline unsigned bench_fd_port(int fd)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    if (getsockname(fd, (struct sockaddr *)&sin, &len) < 0)
        return 0;
    return ntohs(sin.sin_port);
}

static inline void bench_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Count a closed connection; exit once EXIT_AFTER have gone. */
static inline void bench_conn_closed(const struct bench_args *a)
{
    static long closed;
    if (a->exit_after > 0 && ++closed >= a->exit_after) {
        fflush(stdout);
        exit(0);
    }
}

#endif
