/*
 * TLS Echo Server — the specification's TCP echo server (tcp_echo_server.c)
 * over TLS, in C.
 *
 *   ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
 *   ssl_context.load_cert_chain(certfile, keyfile)
 *   server = await loop.create_server(lambda: EchoServerProtocol(),
 *                                     host, port, ssl=ssl_context)
 *
 * Usage: tls_echo_server [HOST [PORT]] --cert FILE --key FILE
 *        (defaults: 127.0.0.1 8443; FILE: PEM, the certificate chain and
 *        its private key)
 *
 * The protocol is the TCP example's, unchanged: a TLS transport is a
 * transport like any other, and connection_made comes once the handshake is
 * over. Prints "Serving on (...)" first (the bound address; with PORT 0 the
 * port the kernel picked), then exactly what the Python example prints for
 * every connection. A client whose handshake fails is dropped by the library
 * without a word (it never reaches the protocol factory), and the server goes
 * on. Serves until SIGINT or SIGTERM, then closes the server and its
 * connections (each sends close_notify and waits, for a while, for the
 * peer's) and exits 0.
 *
 * The context comes from tpio_tls_server_context(); any SSL_CTX configured
 * with OpenSSL's own calls would do. tpio keeps a reference to it as long as
 * it needs it, so ours is freed as soon as the server exists.
 * See example_util.h for print_repr().
 */
#include <tpio.h>

#include <openssl/ssl.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "example_util.h"

/* ---- the protocol (tcp_echo_server.c's) ------------------------------------ */

typedef struct echo_server_protocol {
    tpio_protocol_t base; /* must be embedded; ops points at the class */
    tpio_transport_t *transport;
} echo_server_protocol_t;

static echo_server_protocol_t *self_of(tpio_protocol_t *p)
{
    return tpio_container_of(p, echo_server_protocol_t, base);
}

static void server_connection_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    echo_server_protocol_t *self = self_of(p);
    tpio_extra_t peer;
    char name[128] = "None";

    /* The TLS transport answers for the TCP transport below it. */
    if (tpio_transport_get_extra_info(t, "peername", &peer) == 0)
        tpio_format_addr(peer.addr, peer.addrlen, name, sizeof name);
    printf("Connection from %s\n", name);
    self->transport = t;
}

static void server_data_received(tpio_protocol_t *p, const void *data, size_t len)
{
    echo_server_protocol_t *self = self_of(p);

    fputs("Data received: ", stdout);
    print_repr(data, len);
    putchar('\n');

    fputs("Send: ", stdout);
    print_repr(data, len);
    putchar('\n');
    tpio_transport_write(self->transport, data, len); /* copies what it cannot send now */

    printf("Close the client socket\n");
    tpio_transport_close(self->transport); /* flushes, close_notify, then connection_lost */
}

static void server_connection_lost(tpio_protocol_t *p, int err)
{
    (void)err;
    free(self_of(p)); /* the library never touches the protocol again */
}

static const tpio_protocol_ops_t echo_server_ops = {
    .connection_made = server_connection_made,
    .data_received = server_data_received,
    .connection_lost = server_connection_lost,
};

/* protocol_factory: lambda: EchoServerProtocol() */
static tpio_protocol_t *echo_server_factory(void *arg)
{
    (void)arg;
    echo_server_protocol_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL; /* refuses the connection */
    self->base.ops = &echo_server_ops;
    return &self->base;
}

/* ---- shutdown on SIGINT / SIGTERM ---------------------------------------- */

typedef struct app {
    tpio_loop_t *loop;
    tpio_server_t *server;
} app_t;

static void on_shut_down(tpio_loop_t *loop, int err, void *arg)
{
    (void)err;
    (void)arg;
    tpio_loop_stop(loop);
}

/* Runs from the loop when SIGINT or SIGTERM arrives: leaving `async with
 * server` — the server and its connections close, the handlers go, and
 * the loop stops once every connection_lost has run. */
static void on_signal(tpio_loop_t *loop, int sig, void *arg)
{
    (void)sig;
    (void)arg;
    int err = tpio_loop_shutdown(loop, TPIO_SHUTDOWN_CLOSE, on_shut_down, NULL);
    if (err < 0 && err != -EBUSY) { /* -EBUSY: a second signal, already shutting down */
        fprintf(stderr, "tls_echo_server: shutdown: %s\n", tpio_strerror(err));
        tpio_loop_stop(loop);
    }
}

/* ---- main ------------------------------------------------------------------ */

static int usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [HOST [PORT]] --cert FILE --key FILE\n", argv0);
    return 2;
}

int main(int argc, char **argv)
{
    app_t app = {0};
    tpio_server_opts_t opts = TPIO_OPTS(tpio_server_opts_t);
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t);
    const char *positional[2] = {NULL, NULL};
    const char *certfile = NULL, *keyfile = NULL;
    size_t npos = 0;
    SSL_CTX *ctx;
    int err, status = EXIT_FAILURE;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--cert") == 0 && i + 1 < argc)
            certfile = argv[++i];
        else if (strcmp(argv[i], "--key") == 0 && i + 1 < argc)
            keyfile = argv[++i];
        else if (argv[i][0] == '-' && argv[i][1] != '\0')
            return usage(argv[0]); /* an unknown option, or one without its FILE */
        else if (npos < 2)
            positional[npos++] = argv[i];
        else
            return usage(argv[0]);
    }
    if (!certfile || !keyfile)
        return usage(argv[0]);
    opts.host = positional[0] ? positional[0] : "127.0.0.1";
    opts.port = 8443;
    if (positional[1] && parse_port(positional[1], &opts.port) < 0) {
        fprintf(stderr, "tls_echo_server: bad port '%s'\n", positional[1]);
        return 2;
    }

    /* ssl_context.load_cert_chain(certfile, keyfile) */
    err = tpio_tls_server_context(&ctx, certfile, keyfile);
    if (err < 0) {
        fprintf(stderr, "tls_echo_server: cannot use certificate %s and key %s: %s (%s)%s%s\n",
                certfile, keyfile, tpio_strerror(err), tpio_err_name(err),
                err == TPIO_ETLS ? ": " : "", err == TPIO_ETLS ? tpio_tls_last_error() : "");
        return EXIT_FAILURE;
    }
    tls.ctx = ctx;
    opts.tls = &tls;

    err = tpio_loop_new(&app.loop, NULL);
    if (err < 0) {
        fprintf(stderr, "tls_echo_server: loop: %s\n", tpio_strerror(err));
        SSL_CTX_free(ctx);
        return EXIT_FAILURE;
    }

    /* server = await loop.create_server(lambda: EchoServerProtocol(), host, port,
     *                                   ssl=ssl_context) */
    err = tpio_loop_create_server(app.loop, echo_server_factory, NULL, &opts, &app.server);
    SSL_CTX_free(ctx); /* the server holds its own reference */
    if (err < 0) {
        fprintf(stderr, "tls_echo_server: cannot serve on %s port %u: %s (%s)\n",
                opts.host, (unsigned)opts.port, tpio_strerror(err), tpio_err_name(err));
        tpio_loop_close(app.loop);
        return EXIT_FAILURE;
    }

    /* Before saying it serves: from then on SIGINT/SIGTERM may come. */
    if ((err = tpio_loop_add_signal_handler(app.loop, SIGINT, on_signal, &app)) < 0 ||
        (err = tpio_loop_add_signal_handler(app.loop, SIGTERM, on_signal, &app)) < 0) {
        fprintf(stderr, "tls_echo_server: signals: %s\n", tpio_strerror(err));
        on_signal(app.loop, 0, &app);
        tpio_loop_run_forever(app.loop);
        tpio_loop_close(app.loop);
        return EXIT_FAILURE;
    }

    /* print(f'Serving on {", ".join(str(s.getsockname()) for s in server.sockets)}') */
    fputs("Serving on ", stdout);
    size_t nsocks = 0;
    tpio_server_get_socket_count(app.server, &nsocks);
    for (size_t i = 0; i < nsocks; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        char name[128] = "?";
        if (tpio_server_get_sockname(app.server, i, &ss, &len) == 0)
            tpio_format_addr((struct sockaddr *)&ss, len, name, sizeof name);
        printf("%s%s", i ? ", " : "", name);
    }
    putchar('\n');

    /* await server.serve_forever() — until on_signal has shut the loop
     * down and every connection is gone. */
    err = tpio_loop_run_forever(app.loop);
    if (err < 0) {
        fprintf(stderr, "tls_echo_server: loop: %s\n", tpio_strerror(err));
        on_signal(app.loop, 0, &app);
        tpio_loop_run_forever(app.loop);
    } else {
        status = EXIT_SUCCESS;
    }

    err = tpio_loop_close(app.loop);
    if (err < 0) {
        fprintf(stderr, "tls_echo_server: closing the loop: %s\n", tpio_strerror(err));
        status = EXIT_FAILURE;
    }
    return status;
}
