/*
 * Unix socket echo — the TCP echo server and client of the specification,
 * run together in one program over a Unix stream socket
 * (create_unix_server + create_unix_connection).
 *
 * Usage: unix_echo [PATH]     (default: a fresh temporary directory's echo.sock)
 *
 * The server prints what the TCP echo server prints, the client what the TCP
 * echo client prints (a client's Unix socket has no name: its peername prints
 * as ''). The server's socket file is removed when the server closes.
 */
#include "example_util.h"

#include <sys/stat.h>
#include <unistd.h>

typedef struct app {
    tpio_loop_t *loop;
    tpio_server_t *server;
    int err;
} app_t;

/* ---- EchoServerProtocol ------------------------------------------------------ */

typedef struct server_proto {
    tpio_protocol_t base;
    tpio_transport_t *transport;
} server_proto_t;

static void server_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    tpio_extra_t peer;
    char name[128] = "None";
    if (tpio_transport_get_extra_info(t, "peername", &peer) == 0) {
        name[0] = '\0';
        tpio_format_addr(peer.addr, peer.addrlen, name, sizeof name);
    }
    printf("Connection from '%s'\n", name);
    tpio_container_of(p, server_proto_t, base)->transport = t;
}

static void server_data(tpio_protocol_t *p, const void *data, size_t len)
{
    tpio_transport_t *t = tpio_container_of(p, server_proto_t, base)->transport;
    fputs("Data received: ", stdout);
    print_repr(data, len);
    fputs("\nSend: ", stdout);
    print_repr(data, len);
    putchar('\n');
    tpio_transport_write(t, data, len);
    printf("Close the client socket\n");
    tpio_transport_close(t);
}

static void server_lost(tpio_protocol_t *p, int err)
{
    (void)err;
    free(tpio_container_of(p, server_proto_t, base));
}

static const tpio_protocol_ops_t server_ops = {
    .connection_made = server_made,
    .data_received = server_data,
    .connection_lost = server_lost,
};

static tpio_protocol_t *server_factory(void *arg)
{
    (void)arg;
    server_proto_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->base.ops = &server_ops;
    return &self->base;
}

/* ---- EchoClientProtocol -------------------------------------------------------- */

typedef struct client_proto {
    tpio_protocol_t base;
    app_t *app;
} client_proto_t;

static const char message[] = "Hello World!";

static void client_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    (void)p;
    tpio_transport_write(t, message, strlen(message));
    fputs("Data sent: ", stdout);
    print_repr(message, strlen(message));
    putchar('\n');
}

static void client_data(tpio_protocol_t *p, const void *data, size_t len)
{
    (void)p;
    fputs("Data received: ", stdout);
    print_repr(data, len);
    putchar('\n');
}

static void on_server_closed(tpio_loop_t *loop, int err, void *arg)
{
    (void)err;
    (void)arg;
    tpio_loop_stop(loop);
}

static void client_lost(tpio_protocol_t *p, int err)
{
    client_proto_t *self = tpio_container_of(p, client_proto_t, base);
    app_t *app = self->app;
    (void)err;
    printf("The server closed the connection\n");
    free(self);
    /* The demonstration is over: close the server, stop once it is gone. */
    tpio_server_close(app->server);
    tpio_server_wait_closed(app->server, on_server_closed, app, NULL);
}

static const tpio_protocol_ops_t client_ops = {
    .connection_made = client_made,
    .data_received = client_data,
    .connection_lost = client_lost,
};

static tpio_protocol_t *client_factory(void *arg)
{
    client_proto_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->base.ops = &client_ops;
    self->app = arg;
    return &self->base;
}

static void on_connected(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                         void *arg)
{
    app_t *app = arg;
    (void)loop;
    (void)t;
    (void)p;
    if (err < 0) {
        app->err = err;
        tpio_server_close(app->server);
        tpio_server_wait_closed(app->server, on_server_closed, app, NULL);
    }
}

int main(int argc, char **argv)
{
    app_t app = {0};
    char dir[] = "/tmp/tpio-unix-echo.XXXXXX";
    char path[256];
    bool made_dir = false;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 2) {
        fprintf(stderr, "usage: %s [PATH]\n", argv[0]);
        return 2;
    }
    if (argc == 2) {
        snprintf(path, sizeof path, "%s", argv[1]);
    } else {
        if (!mkdtemp(dir)) {
            perror("unix_echo: mkdtemp");
            return EXIT_FAILURE;
        }
        made_dir = true;
        snprintf(path, sizeof path, "%s/echo.sock", dir);
    }
    int err = tpio_loop_new(&app.loop, NULL);
    if (err == 0) {
        tpio_unix_opts_t so = TPIO_OPTS(tpio_unix_opts_t, .path = path);
        err = tpio_loop_create_unix_server(app.loop, server_factory, NULL, &so, &app.server);
        if (err == 0) {
            printf("Serving on %s\n", path);
            tpio_unix_opts_t co = TPIO_OPTS(tpio_unix_opts_t, .path = path);
            err = tpio_loop_create_unix_connection(app.loop, client_factory, &app, &co, on_connected,
                                              &app, NULL);
            if (err < 0) {
                tpio_server_close(app.server);
                tpio_server_wait_closed(app.server, on_server_closed, &app, NULL);
            }
            tpio_loop_run_forever(app.loop);
            if (err == 0)
                err = app.err;
        }
        if (tpio_loop_close(app.loop) < 0 && err == 0)
            err = -EBUSY;
    }
    struct stat st;
    if (err == 0 && stat(path, &st) == 0) {
        fprintf(stderr, "unix_echo: the server left its socket file behind\n");
        err = -EEXIST;
    }
    if (made_dir)
        rmdir(dir);
    if (err < 0) {
        fprintf(stderr, "unix_echo: %s (%s)\n", tpio_strerror(err), tpio_err_name(err));
        return EXIT_FAILURE;
    }
    return EXIT_SUCCESS;
}
