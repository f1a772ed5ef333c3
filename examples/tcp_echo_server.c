/*
 * TCP Echo Server — the specification's first example, in C.
 *
 *   class EchoServerProtocol(asyncio.Protocol):
 *       def connection_made(self, transport): ...print('Connection from ...')
 *       def data_received(self, data): ...echo, then close
 *
 * Usage: tcp_echo_server [HOST [PORT]]     (defaults: 127.0.0.1 8888)
 *
 * Prints "Serving on (...)" first (the bound address, as asyncio's streams
 * version of this example does; with PORT 0 the port the kernel picked), then
 * exactly what the Python example prints for every connection. Serves until
 * SIGINT or SIGTERM, then closes the server and its connections and exits 0.
 *
 * Signals: tpio_loop_add_signal_handler() runs on_signal from the loop, as
 * asyncio's loop.add_signal_handler does, so it may close the server like
 * any other callback. See example_util.h for print_repr().
 */
#include <tpio.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "example_util.h"

/* ---- the protocol --------------------------------------------------------- */

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
    tpio_transport_close(self->transport); /* flushes, then connection_lost */
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
        fprintf(stderr, "tcp_echo_server: shutdown: %s\n", tpio_strerror(err));
        tpio_loop_stop(loop);
    }
}

/* ---- main ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    app_t app = {0};
    tpio_server_opts_t opts = TPIO_OPTS(tpio_server_opts_t);
    int err, status = EXIT_FAILURE;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 3) {
        fprintf(stderr, "usage: %s [HOST [PORT]]\n", argv[0]);
        return 2;
    }
    opts.host = argc > 1 ? argv[1] : "127.0.0.1";
    opts.port = 8888;
    if (argc > 2 && parse_port(argv[2], &opts.port) < 0) {
        fprintf(stderr, "tcp_echo_server: bad port '%s'\n", argv[2]);
        return 2;
    }

    err = tpio_loop_new(&app.loop, NULL);
    if (err < 0) {
        fprintf(stderr, "tcp_echo_server: loop: %s\n", tpio_strerror(err));
        return EXIT_FAILURE;
    }

    /* server = await loop.create_server(lambda: EchoServerProtocol(), host, port) */
    err = tpio_loop_create_server(app.loop, echo_server_factory, NULL, &opts, &app.server);
    if (err < 0) {
        fprintf(stderr, "tcp_echo_server: cannot serve on %s port %u: %s (%s)\n",
                opts.host, (unsigned)opts.port, tpio_strerror(err), tpio_err_name(err));
        tpio_loop_close(app.loop);
        return EXIT_FAILURE;
    }

    /* Before saying it serves: from then on SIGINT/SIGTERM may come. */
    if ((err = tpio_loop_add_signal_handler(app.loop, SIGINT, on_signal, &app)) < 0 ||
        (err = tpio_loop_add_signal_handler(app.loop, SIGTERM, on_signal, &app)) < 0) {
        fprintf(stderr, "tcp_echo_server: signals: %s\n", tpio_strerror(err));
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
        fprintf(stderr, "tcp_echo_server: loop: %s\n", tpio_strerror(err));
        on_signal(app.loop, 0, &app);
        tpio_loop_run_forever(app.loop);
    } else {
        status = EXIT_SUCCESS;
    }

    err = tpio_loop_close(app.loop);
    if (err < 0) {
        fprintf(stderr, "tcp_echo_server: closing the loop: %s\n", tpio_strerror(err));
        status = EXIT_FAILURE;
    }
    return status;
}
