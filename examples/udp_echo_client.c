/*
 * UDP Echo Client — the specification's example, in C: sends one datagram,
 * prints the answer, closes.
 *
 * Usage: udp_echo_client [HOST [PORT]]     (defaults: 127.0.0.1 9999)
 */
#include "example_util.h"

typedef struct echo_client_protocol {
    tpio_protocol_t base;
    const char *message;
    bool *on_con_lost; /* the future: set when the connection is lost */
    tpio_transport_t *transport;
} echo_client_protocol_t;

static echo_client_protocol_t *self_of(tpio_protocol_t *p)
{
    return tpio_container_of(p, echo_client_protocol_t, base);
}

static void client_connection_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    echo_client_protocol_t *self = self_of(p);
    self->transport = t;
    printf("Send: %s\n", self->message);
    tpio_datagram_sendto(t, self->message, strlen(self->message), NULL, 0);
}

static void client_datagram_received(tpio_protocol_t *p, const void *data, size_t len,
                                     const struct sockaddr *addr, socklen_t addrlen)
{
    (void)addr;
    (void)addrlen;
    printf("Received: %.*s\n", (int)len, (const char *)data);
    printf("Close the socket\n");
    tpio_transport_close(self_of(p)->transport);
}

static void client_error_received(tpio_protocol_t *p, int err)
{
    (void)p;
    /* print('Error received:', exc) — Python shows "[Errno 111] Connection refused" */
    printf("Error received: [Errno %d] %s\n", -err, tpio_strerror(err));
}

static void client_connection_lost(tpio_protocol_t *p, int err)
{
    echo_client_protocol_t *self = self_of(p);
    (void)err;
    printf("Connection closed\n");
    *self->on_con_lost = true;
    tpio_loop_t *loop;
    if (tpio_transport_get_loop(self->transport, &loop) == 0)
        tpio_loop_stop(loop);
    free(self);
}

static const tpio_protocol_ops_t echo_client_ops = {
    .connection_made = client_connection_made,
    .datagram_received = client_datagram_received,
    .error_received = client_error_received,
    .connection_lost = client_connection_lost,
};

typedef struct app {
    const char *message;
    bool con_lost;
    int err;
} app_t;

static tpio_protocol_t *echo_client_factory(void *arg)
{
    app_t *app = arg;
    echo_client_protocol_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->base.ops = &echo_client_ops;
    self->message = app->message;
    self->on_con_lost = &app->con_lost;
    return &self->base;
}

static void on_endpoint(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                        void *arg)
{
    app_t *app = arg;
    (void)t;
    (void)p;
    if (err < 0) {
        app->err = err;
        tpio_loop_stop(loop);
    }
}

int main(int argc, char **argv)
{
    app_t app = {.message = "Hello World!"};
    tpio_datagram_opts_t opts =
        TPIO_OPTS(tpio_datagram_opts_t, .remote_host = "127.0.0.1", .remote_port = 9999);
    tpio_loop_t *loop;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 3) {
        fprintf(stderr, "usage: %s [HOST [PORT]]\n", argv[0]);
        return 2;
    }
    if (argc > 1)
        opts.remote_host = argv[1];
    if (argc > 2 && parse_port(argv[2], &opts.remote_port) < 0) {
        fprintf(stderr, "udp_echo_client: bad port '%s'\n", argv[2]);
        return 2;
    }
    int err = tpio_loop_new(&loop, NULL);
    if (err < 0) {
        fprintf(stderr, "udp_echo_client: loop: %s\n", tpio_strerror(err));
        return EXIT_FAILURE;
    }
    /* transport, protocol = await loop.create_datagram_endpoint(
     *     lambda: EchoClientProtocol(message, on_con_lost),
     *     remote_addr=('127.0.0.1', 9999)) */
    err = tpio_loop_create_datagram_endpoint(loop, echo_client_factory, &app, &opts, on_endpoint,
                                        &app, NULL);
    if (err == 0)
        tpio_loop_run_forever(loop); /* await on_con_lost */
    if (err == 0)
        err = app.err;
    if (err < 0)
        fprintf(stderr, "udp_echo_client: %s (%s)\n", tpio_strerror(err), tpio_err_name(err));
    if (tpio_loop_close(loop) < 0 && err == 0)
        err = -EBUSY;
    return err < 0 || !app.con_lost ? EXIT_FAILURE : EXIT_SUCCESS;
}
