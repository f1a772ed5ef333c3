/*
 * TLS Echo Client — the specification's TCP echo client (tcp_echo_client.c)
 * over TLS, in C.
 *
 *   ssl_context = ssl.create_default_context(cafile=cafile)
 *   transport, protocol = await loop.create_connection(
 *       lambda: EchoClientProtocol(message, on_con_lost), host, port,
 *       ssl=ssl_context, server_hostname=server_hostname)
 *
 * Usage: tls_echo_client [HOST [PORT]] --cafile FILE [--server-hostname NAME]
 *        (defaults: 127.0.0.1 8443, NAME localhost; FILE: the PEM
 *        certificates of the CAs to trust)
 *
 * The client verifies the server: its certificate chain must lead to a CA of
 * FILE, and the certificate must be for NAME (sent as SNI too). NAME "" sends
 * no SNI and skips the name check (the chain is still verified).
 *
 * Prints exactly what the Python example prints and exits 0 once the server
 * has closed the connection. Exits 1 with a message if it cannot connect or
 * if the handshake fails: the code, then what went wrong as OpenSSL says it
 * (tpio_tls_last_error(), e.g. "certificate verify failed: unable to get
 * local issuer certificate" when FILE does not hold the server's CA).
 *
 * The protocol is the TCP example's, unchanged: connection_made comes once
 * the handshake is over. The Python future on_con_lost becomes a flag plus
 * tpio_loop_stop(): the loop runs until connection_lost has been called.
 */
#include <tpio.h>

#include <openssl/ssl.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "example_util.h" /* print_repr(), parse_port() */

/* ---- the protocol (tcp_echo_client.c's) ------------------------------------ */

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

/* Completion of create_connection: `transport, protocol = await ...`, after
 * the handshake. */
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

static int usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [HOST [PORT]] --cafile FILE [--server-hostname NAME]\n",
            argv0);
    return 2;
}

int main(int argc, char **argv)
{
    client_state_t state = {.message = "Hello World!"};
    tpio_connect_opts_t opts = TPIO_OPTS(tpio_connect_opts_t);
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t);
    const char *positional[2] = {NULL, NULL};
    const char *cafile = NULL, *server_hostname = "localhost";
    size_t npos = 0;
    SSL_CTX *ctx;
    bool failed = false;
    int err;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--cafile") == 0 && i + 1 < argc)
            cafile = argv[++i];
        else if (strcmp(argv[i], "--server-hostname") == 0 && i + 1 < argc)
            server_hostname = argv[++i];
        else if (argv[i][0] == '-' && argv[i][1] != '\0')
            return usage(argv[0]); /* an unknown option, or one without its value */
        else if (npos < 2)
            positional[npos++] = argv[i];
        else
            return usage(argv[0]);
    }
    if (!cafile)
        return usage(argv[0]);
    opts.host = positional[0] ? positional[0] : "127.0.0.1";
    opts.port = 8443;
    if (positional[1] && parse_port(positional[1], &opts.port) < 0) {
        fprintf(stderr, "tls_echo_client: bad port '%s'\n", positional[1]);
        return 2;
    }

    /* ssl.create_default_context(cafile=cafile): verifies the server */
    err = tpio_tls_client_context(&ctx, cafile);
    if (err < 0) {
        fprintf(stderr, "tls_echo_client: cannot use CA file %s: %s (%s)%s%s\n", cafile,
                tpio_strerror(err), tpio_err_name(err), err == TPIO_ETLS ? ": " : "",
                err == TPIO_ETLS ? tpio_tls_last_error() : "");
        return EXIT_FAILURE;
    }
    tls.ctx = ctx;
    tls.server_hostname = server_hostname;
    opts.tls = &tls;

    err = tpio_loop_new(&state.loop, NULL);
    if (err < 0) {
        fprintf(stderr, "tls_echo_client: loop: %s\n", tpio_strerror(err));
        SSL_CTX_free(ctx);
        return EXIT_FAILURE;
    }

    err = tpio_loop_create_connection(state.loop, echo_client_factory, &state, &opts,
                                      on_connected, &state, NULL);
    SSL_CTX_free(ctx); /* the connection holds its own reference */
    if (err == 0) {
        /* try: await on_con_lost */
        int run_err = tpio_loop_run_forever(state.loop);
        if (run_err < 0)
            fprintf(stderr, "tls_echo_client: loop: %s\n", tpio_strerror(run_err));
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
        /* Every failure of the handshake leaves OpenSSL's (or tpio's) words
         * in tpio_tls_last_error(); a failure to connect leaves it empty. */
        const char *why = tpio_tls_last_error();
        if (*why)
            fprintf(stderr, "tls_echo_client: TLS handshake with %s port %u failed: %s (%s): %s\n",
                    opts.host, (unsigned)opts.port, tpio_strerror(err), tpio_err_name(err), why);
        else
            fprintf(stderr, "tls_echo_client: cannot connect to %s port %u: %s (%s)\n",
                    opts.host, (unsigned)opts.port, tpio_strerror(err), tpio_err_name(err));
    }

    err = tpio_loop_close(state.loop);
    if (err < 0) {
        fprintf(stderr, "tls_echo_client: closing the loop: %s\n", tpio_strerror(err));
        failed = true;
    }
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
