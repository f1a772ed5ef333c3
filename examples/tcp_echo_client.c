/*
 * TCP Echo Client — the specification's second example, in C.
 *
 *   class EchoClientProtocol(asyncio.Protocol):
 *       def connection_made(self, transport): write the message
 *       def data_received(self, data): print it
 *       def connection_lost(self, exc): on_con_lost.set_result(True)
 *
 * Usage: tcp_echo_client [HOST [PORT]]     (defaults: 127.0.0.1 8888)
 *
 * Prints exactly what the Python example prints and exits 0 once the server
 * has closed the connection; exits 1 with a message if it cannot connect.
 *
 * The Python future on_con_lost becomes a flag plus tpio_loop_stop(): the
 * loop runs until connection_lost has been called.
 */
#include <tpio.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "example_util.h" /* print_repr(), parse_port() */

/* ---- the protocol --------------------------------------------------------- */

/* What main() shares with the protocol (the Python closure's variables). */
typedef struct client_state {
    tpio_loop_t *loop;
    const char *message;
    bool con_lost;                /* on_con_lost.set_result(True) */
    tpio_transport_t *transport;  /* valid until connection_lost returns */
    int connect_err;
} client_state_t;

typedef struct echo_client_protocol {
    tpio_protocol_t base;
    client_state_t *state;
} echo_client_protocol_t;

static echo_client_protocol_t *self_of(tpio_protocol_t *p)
{
    return tpio_container_of(p, echo_client_protocol_t, base);
}

static void client_connection_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    echo_client_protocol_t *self = self_of(p);
    const char *message = self->state->message;

    self->state->transport = t;
    tpio_transport_write(t, message, strlen(message));
    fputs("Data sent: ", stdout);
    print_repr(message, strlen(message));
    putchar('\n');
}

static void client_data_received(tpio_protocol_t *p, const void *data, size_t len)
{
    (void)p;
    fputs("Data received: ", stdout);
    print_repr(data, len);
    putchar('\n');
}

static void client_connection_lost(tpio_protocol_t *p, int err)
{
    echo_client_protocol_t *self = self_of(p);
    client_state_t *state = self->state;

    (void)err;
    printf("The server closed the connection\n");
    state->con_lost = true;
    state->transport = NULL; /* no longer valid once we return */
    tpio_loop_stop(state->loop);
    free(self); /* the library never touches the protocol again */
}

static const tpio_protocol_ops_t echo_client_ops = {
    .connection_made = client_connection_made,
    .data_received = client_data_received,
    .connection_lost = client_connection_lost,
};

/* protocol_factory: lambda: EchoClientProtocol(message, on_con_lost) */
static tpio_protocol_t *echo_client_factory(void *arg)
{
    echo_client_protocol_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->base.ops = &echo_client_ops;
    self->state = arg;
    return &self->base;
}

/* ---- main ------------------------------------------------------------------ */

/* Completion of create_connection: `transport, protocol = await ...` */
static void on_connected(tpio_loop_t *loop, tpio_transport_t *t,
                         tpio_protocol_t *p, int err, void *arg)
{
    client_state_t *state = arg;
    (void)t;
    (void)p;
    if (err < 0) {
        state->connect_err = err;
        tpio_loop_stop(loop);
    }
}

int main(int argc, char **argv)
{
    client_state_t state = {.message = "Hello World!"};
    tpio_connect_opts_t opts = TPIO_OPTS(tpio_connect_opts_t);
    bool failed = false;
    int err;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 3) {
        fprintf(stderr, "usage: %s [HOST [PORT]]\n", argv[0]);
        return 2;
    }
    opts.host = argc > 1 ? argv[1] : "127.0.0.1";
    opts.port = 8888;
    if (argc > 2 && parse_port(argv[2], &opts.port) < 0) {
        fprintf(stderr, "tcp_echo_client: bad port '%s'\n", argv[2]);
        return 2;
    }

    err = tpio_loop_new(&state.loop, NULL);
    if (err < 0) {
        fprintf(stderr, "tcp_echo_client: loop: %s\n", tpio_strerror(err));
        return EXIT_FAILURE;
    }

    err = tpio_loop_create_connection(state.loop, echo_client_factory, &state, &opts,
                                 on_connected, &state, NULL);
    if (err == 0) {
        /* try: await on_con_lost */
        int run_err = tpio_loop_run_forever(state.loop);
        if (run_err < 0)
            fprintf(stderr, "tcp_echo_client: loop: %s\n", tpio_strerror(run_err));
        /* finally: transport.close() — needed only if the loop stopped before
         * connection_lost (the pointer is dropped there), e.g. on an error;
         * then run until the connection is really gone. */
        if (state.transport) {
            tpio_transport_close(state.transport);
            while (!state.con_lost && tpio_loop_run_once(state.loop, -1) >= 0)
                ;
        }
        err = state.connect_err;
        if (run_err < 0)
            failed = true;
    }
    if (err < 0) {
        failed = true;
        fprintf(stderr, "tcp_echo_client: cannot connect to %s port %u: %s (%s)\n",
                opts.host, (unsigned)opts.port, tpio_strerror(err), tpio_err_name(err));
    }

    err = tpio_loop_close(state.loop);
    if (err < 0) {
        fprintf(stderr, "tcp_echo_client: closing the loop: %s\n", tpio_strerror(err));
        failed = true;
    }
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
