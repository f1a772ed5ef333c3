/*
 * UDP Echo Server — the specification's example, in C.
 *
 *   class EchoServerProtocol:
 *       def datagram_received(self, data, addr):
 *           print('Received %r from %s' % (message, addr))
 *           print('Send %r to %s' % (message, addr))
 *           self.transport.sendto(data, addr)
 *
 * Usage: udp_echo_server [HOST [PORT]]     (defaults: 127.0.0.1 9999)
 *
 * Prints "Starting UDP server" once the endpoint is bound (so that a client
 * started after that line cannot be refused), then what the Python example
 * prints per datagram. The Python version serves for an hour; this one serves
 * until SIGINT or SIGTERM, then closes the transport and exits 0.
 */
#include "example_util.h"

typedef struct echo_server_protocol {
    tpio_protocol_t base;
    tpio_transport_t *transport;
} echo_server_protocol_t;

static echo_server_protocol_t *self_of(tpio_protocol_t *p)
{
    return tpio_container_of(p, echo_server_protocol_t, base);
}

static void server_connection_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    self_of(p)->transport = t;
}

static void server_datagram_received(tpio_protocol_t *p, const void *data, size_t len,
                                     const struct sockaddr *addr, socklen_t addrlen)
{
    char name[128] = "None";
    if (addr)
        tpio_format_addr(addr, addrlen, name, sizeof name);
    fputs("Received ", stdout);
    print_repr(data, len);
    printf(" from %s\n", name);
    fputs("Send ", stdout);
    print_repr(data, len);
    printf(" to %s\n", name);
    tpio_datagram_sendto(self_of(p)->transport, data, len, addr, addrlen);
}

static void server_connection_lost(tpio_protocol_t *p, int err)
{
    (void)err;
    free(self_of(p));
    /* transport.close() in the finally: the endpoint is gone, stop. */
}

static const tpio_protocol_ops_t echo_server_ops = {
    .connection_made = server_connection_made,
    .datagram_received = server_datagram_received,
    .connection_lost = server_connection_lost,
};

static tpio_protocol_t *echo_server_factory(void *arg)
{
    (void)arg;
    echo_server_protocol_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->base.ops = &echo_server_ops;
    return &self->base;
}

typedef struct app {
    tpio_transport_t *transport;
    int status;
} app_t;

static void on_endpoint(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                        void *arg)
{
    app_t *app = arg;
    (void)p;
    if (err < 0) {
        fprintf(stderr, "udp_echo_server: %s (%s)\n", tpio_strerror(err), tpio_err_name(err));
        app->status = EXIT_FAILURE;
        tpio_loop_stop(loop);
        return;
    }
    app->transport = t;
    printf("Starting UDP server\n");
}

static void on_shut_down(tpio_loop_t *loop, int err, void *arg)
{
    (void)err;
    (void)arg;
    tpio_loop_stop(loop);
}

/* Runs from the loop when SIGINT or SIGTERM arrives: the endpoint closes,
 * and the loop stops once its connection_lost has run. */
static void on_signal(tpio_loop_t *loop, int sig, void *arg)
{
    app_t *app = arg;
    (void)sig;
    app->transport = NULL;
    if (tpio_loop_shutdown(loop, TPIO_SHUTDOWN_CLOSE, on_shut_down, NULL) == -EINVAL)
        tpio_loop_stop(loop);
}

int main(int argc, char **argv)
{
    app_t app = {.status = EXIT_SUCCESS};
    tpio_datagram_opts_t opts =
        TPIO_OPTS(tpio_datagram_opts_t, .local_host = "127.0.0.1", .local_port = 9999);
    tpio_loop_t *loop;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 3) {
        fprintf(stderr, "usage: %s [HOST [PORT]]\n", argv[0]);
        return 2;
    }
    if (argc > 1)
        opts.local_host = argv[1];
    if (argc > 2 && parse_port(argv[2], &opts.local_port) < 0) {
        fprintf(stderr, "udp_echo_server: bad port '%s'\n", argv[2]);
        return 2;
    }
    int err = tpio_loop_new(&loop, NULL);
    if (err < 0) {
        fprintf(stderr, "udp_echo_server: loop: %s\n", tpio_strerror(err));
        return EXIT_FAILURE;
    }
    /* transport, protocol = await loop.create_datagram_endpoint(
     *     lambda: EchoServerProtocol(), local_addr=('127.0.0.1', 9999)) */
    err = tpio_loop_create_datagram_endpoint(loop, echo_server_factory, NULL, &opts, on_endpoint,
                                        &app, NULL);
    if (err < 0) {
        fprintf(stderr, "udp_echo_server: %s (%s)\n", tpio_strerror(err), tpio_err_name(err));
        tpio_loop_close(loop);
        return EXIT_FAILURE;
    }
    if ((err = tpio_loop_add_signal_handler(loop, SIGINT, on_signal, &app)) < 0 ||
        (err = tpio_loop_add_signal_handler(loop, SIGTERM, on_signal, &app)) < 0) {
        fprintf(stderr, "udp_echo_server: signals: %s\n", tpio_strerror(err));
        app.status = EXIT_FAILURE;
    } else {
        tpio_loop_run_forever(loop);
    }
    if (app.transport) { /* stopped by an error path: end what is left */
        tpio_loop_shutdown(loop, TPIO_SHUTDOWN_CLOSE, on_shut_down, NULL);
        tpio_loop_run_forever(loop);
    }
    if (tpio_loop_close(loop) < 0)
        app.status = EXIT_FAILURE;
    return app.status;
}
