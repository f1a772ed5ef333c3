/*
 * loop.subprocess_exec() and SubprocessProtocol — the specification's
 * example, in C.
 *
 * A subprocess protocol gets the output of a child process and waits for
 * its exit. The child prints the current date and time; as in the Python
 * example, stdin and stderr are inherited (stdin=None, stderr=None) and
 * stdout is a pipe:
 *
 *   transport, protocol = await loop.subprocess_exec(
 *       lambda: DateProtocol(exit_future),
 *       sys.executable, '-c', code, stdin=None, stderr=None)
 *   await exit_future
 *   transport.close()
 *   data = bytes(protocol.output)
 *
 * Instead of Python, the child is date(1) (python3 is not everywhere).
 * Prints "Current date: 2024-05-01 12:34:56.789012345" and exits 0.
 */
#include <tpio.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct app {
    tpio_loop_t *loop;
    bool exited;                 /* exit_future */
    bool con_lost;
    int returncode;
    char output[256];            /* protocol.output, kept after the protocol is freed */
    size_t len;
} app_t;

typedef struct date_protocol {
    tpio_protocol_t base;
    app_t *app;
} date_protocol_t;

static tpio_transport_t *transport; /* valid until connection_lost returns */

static date_protocol_t *self_of(tpio_protocol_t *p)
{
    return tpio_container_of(p, date_protocol_t, base);
}

/* self.output.extend(data) */
static void date_pipe_data_received(tpio_protocol_t *p, int fd, const void *data, size_t len)
{
    app_t *app = self_of(p)->app;
    (void)fd;
    if (len > sizeof app->output - 1 - app->len)
        len = sizeof app->output - 1 - app->len;
    memcpy(app->output + app->len, data, len);
    app->len += len;
}

/* self.exit_future.set_result(True) */
static void date_process_exited(tpio_protocol_t *p)
{
    app_t *app = self_of(p)->app;
    app->exited = true;
    tpio_subprocess_get_returncode(transport, &app->returncode);
    tpio_loop_stop(app->loop);
}

/* The last callback: the protocol is freed here. */
static void date_connection_lost(tpio_protocol_t *p, int err)
{
    app_t *app = self_of(p)->app;
    (void)err;
    app->con_lost = true;
    transport = NULL;
    free(self_of(p));
    tpio_loop_stop(app->loop);
}

static const tpio_protocol_ops_t date_protocol_ops = {
    .pipe_data_received = date_pipe_data_received,
    .process_exited = date_process_exited,
    .connection_lost = date_connection_lost,
};

static tpio_protocol_t *date_protocol_factory(void *arg)
{
    date_protocol_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->base.ops = &date_protocol_ops;
    self->app = arg;
    return &self->base;
}

static void on_started(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                       void *arg)
{
    (void)loop;
    (void)p;
    (void)arg;
    if (err == 0)
        transport = t;
}

int main(void)
{
    app_t app = {0};
    int rc = tpio_loop_new(&app.loop, NULL);
    if (rc < 0) {
        fprintf(stderr, "tpio_loop_new: %s\n", tpio_strerror(rc));
        return 1;
    }

    /* Create the subprocess controlled by DateProtocol; redirect the
     * standard output into a pipe (the default), inherit the others. */
    const char *argv[] = {"date", "+%Y-%m-%d %H:%M:%S.%N", NULL};
    tpio_subprocess_opts_t opts = TPIO_OPTS(tpio_subprocess_opts_t);
    opts.stdio[0].mode = TPIO_STDIO_INHERIT;
    opts.stdio[2].mode = TPIO_STDIO_INHERIT;
    rc = tpio_loop_subprocess_exec(app.loop, date_protocol_factory, &app, argv, &opts, on_started,
                              NULL);
    if (rc < 0) {
        fprintf(stderr, "subprocess_exec: %s\n", tpio_strerror(rc));
        tpio_loop_close(app.loop);
        return 1;
    }

    /* Wait for the subprocess exit using the process_exited() method of
     * the protocol. */
    while (!app.exited)
        tpio_loop_run_forever(app.loop);

    /* Close the stdout pipe. The loop iteration that saw the exit may also
     * have run connection_lost (the pipe had closed already): then the
     * transport is gone. Otherwise run until connection_lost, which comes
     * once the pipe has delivered everything and frees the protocol. */
    if (transport)
        tpio_transport_close(transport);
    while (!app.con_lost)
        tpio_loop_run_forever(app.loop);
    tpio_loop_close(app.loop);

    /* Read the output which was collected by the pipe_data_received()
     * method of the protocol: data.decode('ascii').rstrip() */
    while (app.len > 0 && app.output[app.len - 1] && strchr(" \t\r\n\f\v", app.output[app.len - 1]))
        app.len--;
    app.output[app.len] = '\0';
    if (app.returncode != 0) {
        fprintf(stderr, "date exited with %d\n", app.returncode);
        return 1;
    }
    printf("Current date: %s\n", app.output);
    return 0;
}
