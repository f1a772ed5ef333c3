/*
 * Connecting Existing Sockets — the specification's example, in C.
 *
 * Wait until a socket receives data, using tpio_loop_create_connection() with
 * use_sock (asyncio's create_connection(..., sock=rsock)) and a protocol:
 *
 *   rsock, wsock = socket.socketpair()
 *   transport, protocol = await loop.create_connection(
 *       lambda: MyProtocol(on_con_lost), sock=rsock)
 *   loop.call_soon(wsock.send, 'abc'.encode())
 *
 * Prints "Received: abc" and exits 0.
 */
#include <tpio.h>

#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct app {
    tpio_loop_t *loop;
    int wsock;
    bool con_lost;               /* on_con_lost */
    tpio_transport_t *transport; /* valid until connection_lost returns */
    int connect_err;
} app_t;

typedef struct my_protocol {
    tpio_protocol_t base;
    tpio_transport_t *transport;
    app_t *app;
} my_protocol_t;

static my_protocol_t *self_of(tpio_protocol_t *p)
{
    return tpio_container_of(p, my_protocol_t, base);
}

static void my_connection_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    my_protocol_t *self = self_of(p);
    self->transport = t;
    self->app->transport = t;
}

static void my_data_received(tpio_protocol_t *p, const void *data, size_t len)
{
    /* print("Received:", data.decode()) */
    printf("Received: %.*s\n", (int)len, (const char *)data);

    /* We are done: close the transport; connection_lost() will be called
     * automatically. */
    tpio_transport_close(self_of(p)->transport);
}

static void my_connection_lost(tpio_protocol_t *p, int err)
{
    my_protocol_t *self = self_of(p);
    (void)err;
    /* The socket has been closed: on_con_lost.set_result(True) */
    self->app->con_lost = true;
    self->app->transport = NULL;
    tpio_loop_stop(self->app->loop);
    free(self);
}

static const tpio_protocol_ops_t my_protocol_ops = {
    .connection_made = my_connection_made,
    .data_received = my_data_received,
    .connection_lost = my_connection_lost,
};

static tpio_protocol_t *my_protocol_factory(void *arg)
{
    my_protocol_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->base.ops = &my_protocol_ops;
    self->app = arg;
    return &self->base;
}

/* Simulate the reception of data from the network: wsock.send(b'abc') */
static void send_abc(tpio_loop_t *loop, void *arg)
{
    app_t *app = arg;
    (void)loop;
    if (send(app->wsock, "abc", 3, MSG_NOSIGNAL) != 3)
        perror("existing_socket: send");
}

static void on_connected(tpio_loop_t *loop, tpio_transport_t *t,
                         tpio_protocol_t *p, int err, void *arg)
{
    app_t *app = arg;
    (void)t;
    (void)p;
    if (err < 0) {
        app->connect_err = err;
        tpio_loop_stop(loop);
        return;
    }
    /* After `transport, protocol = await ...`: loop.call_soon(wsock.send, ...) */
    err = tpio_loop_call_soon(loop, send_abc, app, NULL);
    if (err < 0) {
        app->connect_err = err;
        tpio_loop_stop(loop);
    }
}

int main(void)
{
    app_t app = {0};
    tpio_connect_opts_t opts = TPIO_OPTS(tpio_connect_opts_t);
    int sv[2], err;
    bool failed = false;

    setvbuf(stdout, NULL, _IOLBF, 0);

    err = tpio_loop_new(&app.loop, NULL);
    if (err < 0) {
        fprintf(stderr, "existing_socket: loop: %s\n", tpio_strerror(err));
        return EXIT_FAILURE;
    }

    /* Create a pair of connected sockets */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        perror("existing_socket: socketpair");
        tpio_loop_close(app.loop);
        return EXIT_FAILURE;
    }
    app.wsock = sv[1];

    /* Register the socket to wait for data. From a 0 return on, sv[0] is
     * owned (and eventually closed) by the transport. */
    opts.use_sock = TPIO_ON;
    opts.sock = sv[0];
    err = tpio_loop_create_connection(app.loop, my_protocol_factory, &app, &opts,
                                 on_connected, &app, NULL);
    if (err < 0) {
        fprintf(stderr, "existing_socket: create_connection: %s\n", tpio_strerror(err));
        close(sv[0]);
        failed = true;
    } else {
        /* try: await protocol.on_con_lost */
        err = tpio_loop_run_forever(app.loop);
        if (err < 0) {
            fprintf(stderr, "existing_socket: loop: %s\n", tpio_strerror(err));
            failed = true;
        }
        if (app.connect_err < 0) {
            fprintf(stderr, "existing_socket: create_connection: %s\n",
                    tpio_strerror(app.connect_err));
            failed = true;
        }
        /* finally: transport.close() — the transport pointer is dropped in
         * connection_lost, so this only matters if the loop stopped early. */
        if (app.transport) {
            tpio_transport_close(app.transport);
            while (!app.con_lost && tpio_loop_run_once(app.loop, -1) >= 0)
                ;
        }
    }
    close(app.wsock); /* wsock.close() */

    err = tpio_loop_close(app.loop);
    if (err < 0) {
        fprintf(stderr, "existing_socket: closing the loop: %s\n", tpio_strerror(err));
        failed = true;
    }
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
