/*
 * The API's conventions, checked call by call: NULL answered with -EINVAL
 * everywhere, out-parameters untouched on error, option structs of any
 * version, tpio_flag_t values; and the calls 0.2 added or changed: read
 * size, abort with a reset, saturating watermarks, one socket per distinct
 * server address, abstract names for datagram endpoints, pausing another
 * transport's reading from a callback (a proxy's flow control).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static tpio_protocol_t *never_factory(void *arg)
{
    (void)arg;
    cr_assert_fail("the factory must not run");
    return NULL;
}

static void never_conn(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                       void *arg)
{
    (void)loop, (void)t, (void)p, (void)err, (void)arg;
    cr_assert_fail("the completion must not run");
}

static void never_cb(tpio_loop_t *loop, void *arg)
{
    (void)loop, (void)arg;
    cr_assert_fail("the callback must not run");
}

Test(api, version_is_the_headers, .timeout = 10)
{
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", TPIO_VERSION_MAJOR, TPIO_VERSION_MINOR,
             TPIO_VERSION_PATCH);
    cr_assert_str_eq(tpio_version(), want);
}

/* Every call with a NULL object, a NULL required callback or a NULL
 * out-parameter: -EINVAL, and nothing written. */
Test(api, null_is_einval_everywhere, .timeout = 20)
{
    bool b = true;
    double d = 7;
    size_t n = 7;
    int i = 7;
    pid_t pid = 7;
    tpio_handle_t h = 7;
    tpio_loop_t *lp = (tpio_loop_t *)&i;
    tpio_transport_t *tp = (tpio_transport_t *)&i;
    tpio_protocol_t *pp = (tpio_protocol_t *)&i;
    tpio_server_t *sp = (tpio_server_t *)&i;
    tpio_transport_kind_t kind = (tpio_transport_kind_t)7;
    tpio_extra_t x;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    tpio_error_context_t ctx = {.message = "m", .fd = -1};
    tpio_connect_opts_t co = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = 1);
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1");
    tpio_unix_opts_t uo = TPIO_OPTS(tpio_unix_opts_t, .path = "/tmp/x");
    tpio_datagram_opts_t dopt = TPIO_OPTS(tpio_datagram_opts_t, .family = AF_INET);
    const char *argv[] = {"true", NULL};
    tpio_buf_t buf = {"x", 1};

    /* the loop */
    cr_assert_eq(tpio_loop_new(NULL, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_close(NULL), -EINVAL);
    cr_assert_eq(tpio_loop_run_forever(NULL), -EINVAL);
    cr_assert_eq(tpio_loop_run_once(NULL, 0), -EINVAL);
    cr_assert_eq(tpio_loop_stop(NULL), -EINVAL);
    cr_assert_eq(tpio_loop_is_running(NULL, &b), -EINVAL);
    cr_assert_eq(tpio_loop_time(NULL, &d), -EINVAL);
    cr_assert_eq(tpio_loop_call_soon(NULL, never_cb, NULL, &h), -EINVAL);
    cr_assert_eq(tpio_loop_call_later(NULL, 1, never_cb, NULL, &h), -EINVAL);
    cr_assert_eq(tpio_loop_call_at(NULL, 1, never_cb, NULL, &h), -EINVAL);
    cr_assert_eq(tpio_loop_cancel(NULL, 1), -EINVAL);
    cr_assert_eq(tpio_loop_call_soon_threadsafe(NULL, never_cb, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_set_error_handler(NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_default_error_handler(NULL, &ctx), -EINVAL);
    cr_assert_eq(tpio_loop_call_error_handler(NULL, &ctx), -EINVAL);
    cr_assert_eq(tpio_loop_create_connection(NULL, never_factory, NULL, &co, never_conn, NULL, NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_connect_accepted_socket(NULL, never_factory, NULL, 0, NULL, never_conn,
                                                   NULL, NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_create_server(NULL, never_factory, NULL, &so, &sp), -EINVAL);
    cr_assert_eq(tpio_loop_create_unix_connection(NULL, never_factory, NULL, &uo, never_conn,
                                                  NULL, NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_create_unix_server(NULL, never_factory, NULL, &uo, &sp), -EINVAL);
    cr_assert_eq(tpio_loop_connect_read_pipe(NULL, never_factory, NULL, 0, never_conn, NULL, NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_connect_write_pipe(NULL, never_factory, NULL, 1, never_conn, NULL, NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(NULL, never_factory, NULL, &dopt,
                                                    never_conn, NULL, NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_subprocess_exec(NULL, never_factory, NULL, argv, NULL, never_conn,
                                           NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_subprocess_shell(NULL, never_factory, NULL, "true", NULL,
                                            never_conn, NULL),
                 -EINVAL);

    /* transports */
    cr_assert_eq(tpio_transport_get_kind(NULL, &kind), -EINVAL);
    cr_assert_eq(tpio_transport_get_loop(NULL, &lp), -EINVAL);
    cr_assert_eq(tpio_transport_close(NULL), -EINVAL);
    cr_assert_eq(tpio_transport_is_closing(NULL, &b), -EINVAL);
    cr_assert_eq(tpio_transport_get_protocol(NULL, &pp), -EINVAL);
    cr_assert_eq(tpio_transport_set_protocol(NULL, pp), -EINVAL);
    x.type = TPIO_EXTRA_PTR;
    cr_assert_eq(tpio_transport_get_extra_info(NULL, "socket", &x), -EINVAL);
    cr_assert_eq(x.type, TPIO_EXTRA_PTR, "untouched on error");
    cr_assert_eq(tpio_transport_get_fd(NULL, &i), -EINVAL);
    cr_assert_eq(tpio_transport_get_peername(NULL, &ss, &sl), -EINVAL);
    cr_assert_eq(tpio_transport_get_sockname(NULL, &ss, &sl), -EINVAL);
    cr_assert_eq(tpio_transport_is_reading(NULL, &b), -EINVAL);
    cr_assert_eq(tpio_transport_pause_reading(NULL), -EINVAL);
    cr_assert_eq(tpio_transport_resume_reading(NULL), -EINVAL);
    cr_assert_eq(tpio_transport_set_read_size(NULL, 100), -EINVAL);
    cr_assert_eq(tpio_transport_get_read_size(NULL, &n), -EINVAL);
    cr_assert_eq(tpio_transport_write(NULL, "x", 1), -EINVAL);
    cr_assert_eq(tpio_transport_writelines(NULL, &buf, 1), -EINVAL);
    cr_assert_eq(tpio_transport_write_eof(NULL), -EINVAL);
    cr_assert_eq(tpio_transport_can_write_eof(NULL, &b), -EINVAL);
    cr_assert_eq(tpio_transport_abort(NULL), -EINVAL);
    cr_assert_eq(tpio_transport_abort_reset(NULL), -EINVAL);
    cr_assert_eq(tpio_transport_get_write_buffer_size(NULL, &n), -EINVAL);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(NULL, 10, 1), -EINVAL);
    size_t hi = 7, lo = 7;
    cr_assert_eq(tpio_transport_get_write_buffer_limits(NULL, &hi, &lo), -EINVAL);
    cr_assert_eq(tpio_datagram_sendto(NULL, "x", 1, NULL, 0), -EINVAL);
    cr_assert_eq(tpio_subprocess_get_pid(NULL, &pid), -EINVAL);
    cr_assert_eq(tpio_subprocess_get_pipe_transport(NULL, 0, &tp), -EINVAL);
    cr_assert_eq(tpio_subprocess_get_returncode(NULL, &i), -EINVAL);
    cr_assert_eq(tpio_subprocess_send_signal(NULL, SIGTERM), -EINVAL);
    cr_assert_eq(tpio_subprocess_terminate(NULL), -EINVAL);
    cr_assert_eq(tpio_subprocess_kill(NULL), -EINVAL);

    /* servers */
    cr_assert_eq(tpio_server_close(NULL), -EINVAL);
    cr_assert_eq(tpio_server_wait_closed(NULL, th_done_flag, NULL, NULL), -EINVAL);
    cr_assert_eq(tpio_server_is_serving(NULL, &b), -EINVAL);
    cr_assert_eq(tpio_server_start_serving(NULL), -EINVAL);
    cr_assert_eq(tpio_server_close_clients(NULL), -EINVAL);
    cr_assert_eq(tpio_server_abort_clients(NULL), -EINVAL);
    cr_assert_eq(tpio_server_get_socket_count(NULL, &n), -EINVAL);
    cr_assert_eq(tpio_server_get_socket(NULL, 0, &i), -EINVAL);
    cr_assert_eq(tpio_server_get_sockname(NULL, 0, &ss, &sl), -EINVAL);
    cr_assert_eq(tpio_server_get_loop(NULL, &lp), -EINVAL);
    cr_assert_eq(tpio_server_get_connection_count(NULL, &n), -EINVAL);

    /* out-parameters left as they were */
    cr_assert(b);
    cr_assert_eq(d, 7);
    cr_assert_eq(n, 7);
    cr_assert_eq(i, 7);
    cr_assert_eq(pid, 7);
    cr_assert_eq(h, 7);
    cr_assert_eq(hi, 7);
    cr_assert_eq(lo, 7);
    cr_assert_eq(kind, (tpio_transport_kind_t)7);
    cr_assert_eq(lp, (tpio_loop_t *)&i);
    cr_assert_eq(tp, (tpio_transport_t *)&i);
    cr_assert_eq(sp, (tpio_server_t *)&i);

    /* library-wide calls */
    cr_assert_eq(tpio_format_addr(NULL, 0, (char[8]){0}, 8), -EINVAL);
    cr_assert_not_null(tpio_strerror(-EINVAL));
    cr_assert_not_null(tpio_err_name(-EINVAL));
}

/* A live loop, transport and server, with NULL out-parameters and NULL
 * arguments that are required. */
Test(api, null_out_parameters_are_einval, .timeout = 20)
{
    th_pair_t *pr = th_tcp_pair(NULL, NULL);
    tpio_loop_t *loop = pr->loop;
    tpio_transport_t *t = pr->t;
    cr_assert_eq(tpio_loop_is_running(loop, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_time(loop, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_call_soon(loop, NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_call_error_handler(loop, NULL), -EINVAL);
    cr_assert_eq(tpio_transport_get_kind(t, NULL), -EINVAL);
    cr_assert_eq(tpio_transport_get_loop(t, NULL), -EINVAL);
    cr_assert_eq(tpio_transport_is_closing(t, NULL), -EINVAL);
    cr_assert_eq(tpio_transport_get_protocol(t, NULL), -EINVAL);
    cr_assert_eq(tpio_transport_set_protocol(t, NULL), -EINVAL);
    tpio_protocol_t no_ops = {NULL};
    cr_assert_eq(tpio_transport_set_protocol(t, &no_ops), -EINVAL);
    cr_assert_eq(tpio_transport_get_extra_info(t, NULL, &(tpio_extra_t){0}), -EINVAL);
    cr_assert_eq(tpio_transport_get_extra_info(t, "socket", NULL), -EINVAL);
    cr_assert_eq(tpio_transport_get_fd(t, NULL), -EINVAL);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_transport_get_peername(t, NULL, &sl), -EINVAL);
    cr_assert_eq(tpio_transport_get_peername(t, &ss, NULL), -EINVAL);
    cr_assert_eq(tpio_transport_is_reading(t, NULL), -EINVAL);
    cr_assert_eq(tpio_transport_get_read_size(t, NULL), -EINVAL);
    cr_assert_eq(tpio_transport_can_write_eof(t, NULL), -EINVAL);
    cr_assert_eq(tpio_transport_get_write_buffer_size(t, NULL), -EINVAL);
    size_t v = 0;
    cr_assert_eq(tpio_transport_get_write_buffer_limits(t, NULL, &v), -EINVAL);
    cr_assert_eq(tpio_transport_get_write_buffer_limits(t, &v, NULL), -EINVAL);
    cr_assert_eq(tpio_transport_writelines(t, NULL, 1), -EINVAL);
    cr_assert_eq(tpio_transport_writelines(t, NULL, 0), 0, "nothing to write");
    pid_t pid;
    int code;
    cr_assert_eq(tpio_subprocess_get_pid(t, &pid), -ENOTSUP);
    cr_assert_eq(tpio_subprocess_get_returncode(t, &code), -ENOTSUP);
    cr_assert_eq(tpio_subprocess_kill(t), -ENOTSUP);

    tpio_server_t *s;
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1");
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &so, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_create_server(loop, NULL, NULL, &so, &s), -EINVAL);
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, NULL, &s), -EINVAL);
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &so, &s), 0);
    cr_assert_eq(tpio_server_is_serving(s, NULL), -EINVAL);
    cr_assert_eq(tpio_server_get_socket_count(s, NULL), -EINVAL);
    cr_assert_eq(tpio_server_get_socket(s, 0, NULL), -EINVAL);
    cr_assert_eq(tpio_server_get_sockname(s, 0, NULL, &sl), -EINVAL);
    cr_assert_eq(tpio_server_get_loop(s, NULL), -EINVAL);
    cr_assert_eq(tpio_server_get_connection_count(s, NULL), -EINVAL);
    cr_assert_eq(tpio_server_wait_closed(s, NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(tpio_server_close(s), 0);
    tpio_connect_opts_t co = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = 1);
    cr_assert_eq(tpio_loop_create_connection(loop, th_factory, NULL, &co, NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_create_connection(loop, th_factory, NULL, NULL, never_conn, NULL, NULL),
                 -EINVAL);
    const char *argv[] = {"true", NULL};
    cr_assert_eq(tpio_loop_subprocess_exec(loop, th_factory, NULL, NULL, NULL, never_conn, NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_subprocess_exec(loop, th_factory, NULL, argv, NULL, NULL, NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_subprocess_shell(loop, th_factory, NULL, NULL, NULL, never_conn,
                                            NULL),
                 -EINVAL);
    cr_assert_eq(tpio_transport_close(t), 0);
    th_pair_finish(pr);
}

/* ---- option structs ------------------------------------------------------------ */

/* A struct as a later header might declare it: this version's, then a
 * field this library does not know. */
struct later_server_opts {
    tpio_server_opts_t now;
    uint64_t added;
};

Test(api, options_of_any_version, .timeout = 20)
{
    tpio_loop_t *loop = th_new_loop();
    tpio_server_t *s;
    tpio_server_opts_t o = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1");
    cr_assert_eq(o.size, sizeof o);

    o.size = 0; /* not initialised with TPIO_OPTS */
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &o, &s), -EINVAL);
    o.size = offsetof(tpio_server_opts_t, tls) - 1; /* smaller than any version */
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &o, &s), -EINVAL);
    /* a program built against 0.2, whose struct ends before tls, works */
    o.size = offsetof(tpio_server_opts_t, tls);
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &o, &s), 0);
    cr_assert_eq(tpio_server_close(s), 0);

    /* a newer program that leaves the new field at its default works */
    struct later_server_opts later = {.now = o};
    later.now.size = sizeof later;
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &later.now, &s), 0);
    cr_assert_eq(th_socket_count(s), 1);
    cr_assert_eq(tpio_server_close(s), 0);
    /* ... and one that sets it is told this library cannot honour it */
    later.added = 1;
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &later.now, &s), -ENOTSUP);

    /* every options struct checks its size the same way */
    tpio_connect_opts_t co = TPIO_OPTS(tpio_connect_opts_t, .host = "127.0.0.1", .port = 1);
    co.size = 0;
    cr_assert_eq(tpio_loop_create_connection(loop, th_factory, NULL, &co, never_conn, NULL, NULL),
                 -EINVAL);
    tpio_unix_opts_t uo = TPIO_OPTS(tpio_unix_opts_t, .path = "/tmp/tpio-api-none");
    uo.size = 0;
    cr_assert_eq(tpio_loop_create_unix_connection(loop, th_factory, NULL, &uo, never_conn, NULL, NULL),
                 -EINVAL);
    cr_assert_eq(tpio_loop_create_unix_server(loop, th_factory, NULL, &uo, &s), -EINVAL);
    tpio_datagram_opts_t dopt = TPIO_OPTS(tpio_datagram_opts_t, .family = AF_INET);
    dopt.size = 0;
    cr_assert_eq(tpio_loop_create_datagram_endpoint(loop, th_factory, NULL, &dopt, never_conn,
                                                    NULL, NULL),
                 -EINVAL);
    tpio_subprocess_opts_t po = TPIO_OPTS(tpio_subprocess_opts_t);
    po.size = 0;
    const char *argv[] = {"true", NULL};
    cr_assert_eq(tpio_loop_subprocess_exec(loop, th_factory, NULL, argv, &po, never_conn, NULL),
                 -EINVAL);
    tpio_loop_opts_t lo = {0};
    tpio_loop_t *other;
    cr_assert_eq(tpio_loop_new(&other, &lo), -EINVAL);
    lo = TPIO_OPTS(tpio_loop_opts_t);
    cr_assert_eq(tpio_loop_new(&other, &lo), 0);
    cr_assert_eq(tpio_loop_close(other), 0);

    th_run_iters(loop, 3);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

Test(api, flags_take_three_values, .timeout = 20)
{
    tpio_loop_t *loop = th_new_loop();
    tpio_server_t *s;
    tpio_server_opts_t o = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1");
    o.reuse_port = (tpio_flag_t)2;
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &o, &s), -EINVAL);
    o.reuse_port = TPIO_DEFAULT;
    o.start_serving = (tpio_flag_t)-2;
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &o, &s), -EINVAL);
    o.start_serving = TPIO_OFF;
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &o, &s), 0);
    cr_assert_not(th_is_serving(s), "TPIO_OFF is off");
    cr_assert_eq(tpio_server_close(s), 0);
    o.start_serving = TPIO_DEFAULT;
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &o, &s), 0);
    cr_assert(th_is_serving(s), "the default is on");
    cr_assert_eq(tpio_server_close(s), 0);
    tpio_connect_opts_t co = TPIO_OPTS(tpio_connect_opts_t, .use_sock = (tpio_flag_t)5);
    cr_assert_eq(tpio_loop_create_connection(loop, th_factory, NULL, &co, never_conn, NULL, NULL),
                 -EINVAL);
    tpio_datagram_opts_t dopt =
        TPIO_OPTS(tpio_datagram_opts_t, .family = AF_INET, .allow_broadcast = (tpio_flag_t)3);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(loop, th_factory, NULL, &dopt, never_conn,
                                                    NULL, NULL),
                 -EINVAL);
    tpio_unix_opts_t uo = TPIO_OPTS(tpio_unix_opts_t, .path = "x", .abstract = (tpio_flag_t)9);
    cr_assert_eq(tpio_loop_create_unix_server(loop, th_factory, NULL, &uo, &s), -EINVAL);
    th_run_iters(loop, 3);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* ---- watermarks ------------------------------------------------------------------- */

Test(api, high_from_a_huge_low_saturates, .timeout = 20)
{
    th_pair_t *pr = th_tcp_pair(NULL, NULL);
    size_t hi, lo;
    /* 4 * low would wrap: 4 * 7*2^60 = 28*2^60 */
    ssize_t low = (ssize_t)(7ull << 60);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, TPIO_LIMIT_DEFAULT, low), 0);
    cr_assert_eq(tpio_transport_get_write_buffer_limits(pr->t, &hi, &lo), 0);
    cr_assert_eq(hi, SIZE_MAX);
    cr_assert_eq(lo, (size_t)low);
    /* 2^62 + 1 used to give -EINVAL (high wrapped below low) */
    low = (ssize_t)((1ull << 62) + 1);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, TPIO_LIMIT_DEFAULT, low), 0);
    cr_assert_eq(tpio_transport_get_write_buffer_limits(pr->t, &hi, &lo), 0);
    cr_assert_eq(hi, SIZE_MAX);
    cr_assert_eq(lo, (size_t)low);
    /* the largest low that does not saturate */
    low = (ssize_t)(SIZE_MAX / 4);
    cr_assert_eq(tpio_transport_set_write_buffer_limits(pr->t, TPIO_LIMIT_DEFAULT, low), 0);
    cr_assert_eq(tpio_transport_get_write_buffer_limits(pr->t, &hi, &lo), 0);
    cr_assert_eq(hi, 4 * (size_t)low);
    /* no pause: nothing is buffered */
    cr_assert_eq(pr->p->pauses, 0);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
}

/* ---- servers ---------------------------------------------------------------------- */

Test(api, server_binds_each_address_once, .timeout = 20)
{
    tpio_loop_t *loop = th_new_loop();
    tpio_server_t *s;
    /* port 0: the same host twice used to give two sockets on two ports */
    const char *twice[] = {"127.0.0.1", "127.0.0.1"};
    tpio_server_opts_t o = TPIO_OPTS(tpio_server_opts_t, .hosts = twice, .nhosts = 2);
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &o, &s), 0);
    cr_assert_eq(th_socket_count(s), 1);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    cr_assert_eq(tpio_server_get_sockname(s, 0, &ss, &sl), 0);
    uint16_t port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    cr_assert_eq(tpio_server_close(s), 0);
    /* a given port: the second bind of the same address was -EADDRINUSE;
     * the same address spelled twice, and three times with another one */
    const char *thrice[] = {"127.0.0.1", "127.0.0.2", "127.0.0.1"};
    o = TPIO_OPTS(tpio_server_opts_t, .hosts = thrice, .nhosts = 3, .port = port);
    cr_assert_eq(tpio_loop_create_server(loop, th_factory, NULL, &o, &s), 0);
    cr_assert_eq(th_socket_count(s), 2);
    for (size_t i = 0; i < 2; i++) {
        sl = sizeof ss;
        cr_assert_eq(tpio_server_get_sockname(s, i, &ss, &sl), 0);
        cr_assert_eq(ntohs(((struct sockaddr_in *)&ss)->sin_port), port);
    }
    cr_assert_eq(tpio_server_close(s), 0);
    th_run_iters(loop, 3);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* ---- the read size ------------------------------------------------------------------ */

static size_t g_reads[64], g_nreads;

static void rec_data(tpio_protocol_t *bp, const void *d, size_t n)
{
    th_proto_t *p = tpio_container_of(bp, th_proto_t, base);
    if (g_nreads < 64)
        g_reads[g_nreads++] = n;
    th_proto_ops.data_received(bp, d, n);
    (void)p;
}

static tpio_protocol_ops_t rec_ops;

Test(api, read_size_bounds_each_data_received, .timeout = 20)
{
    rec_ops = th_proto_ops;
    rec_ops.data_received = rec_data;
    unsigned char msg[5000];
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = th_pat(i);
    /* sent before the transport exists: all of it is waiting at the first read */
    th_pair_t *pr = th_unix_pair(&rec_ops, NULL, msg, sizeof msg, false);
    size_t n;
    cr_assert_eq(tpio_transport_get_read_size(pr->t, &n), 0);
    cr_assert_eq(n, TPIO_READ_SIZE_MAX, "the default");
    cr_assert_eq(tpio_transport_set_read_size(pr->t, TPIO_READ_SIZE_MAX + 1), -EINVAL);
    cr_assert_eq(tpio_transport_set_read_size(pr->t, 1000), 0);
    cr_assert_eq(tpio_transport_get_read_size(pr->t, &n), 0);
    cr_assert_eq(n, 1000);
    /* connection_made ran before the completion: data arrives from now on */
    cr_assert(th_pair_run_until_rx(pr, pr->p, sizeof msg));
    cr_assert_eq(g_nreads, 5, "%zu reads", g_nreads);
    for (size_t i = 0; i < g_nreads; i++)
        cr_assert_eq(g_reads[i], 1000, "read %zu took %zu", i, g_reads[i]);
    cr_assert_eq(memcmp(pr->p->rx, msg, sizeof msg), 0);
    cr_assert_eq(tpio_transport_set_read_size(pr->t, 0), 0);
    cr_assert_eq(tpio_transport_get_read_size(pr->t, &n), 0);
    cr_assert_eq(n, TPIO_READ_SIZE_MAX, "0 restores the default");
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
}

static void on_dgram(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                     void *arg)
{
    th_on_conn(loop, t, p, err, arg);
}

Test(api, read_size_is_for_streams, .timeout = 20)
{
    tpio_loop_t *loop = th_new_loop();
    th_conn_t c = {0};
    th_proto_t tmpl = {0};
    tpio_datagram_opts_t o = TPIO_OPTS(tpio_datagram_opts_t, .family = AF_INET);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(loop, th_factory, &tmpl, &o, on_dgram, &c, NULL),
                 0);
    cr_assert(th_run_until(loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0);
    size_t n;
    cr_assert_eq(tpio_transport_set_read_size(c.t, 100), -ENOTSUP);
    cr_assert_eq(tpio_transport_get_read_size(c.t, &n), -ENOTSUP);
    cr_assert_eq(tpio_transport_abort_reset(c.t), -ENOTSUP);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_run_until(loop, &c.p->lost, TH_TMO));
    th_proto_free(c.p);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* ---- abort: FIN or reset -------------------------------------------------------------- */

static int peer_end(th_pair_t *pr)
{
    /* what the peer's next recv says: 0 (EOF) or -errno */
    char c;
    double end = th_now_s() + TH_TMO;
    while (th_now_s() < end) {
        ssize_t r = recv(pr->peer, &c, 1, 0);
        if (r == 0)
            return 0;
        if (r < 0 && errno != EAGAIN)
            return -errno;
        if (r > 0)
            return 1;
        tpio_loop_run_once(pr->loop, 0.005);
    }
    return -ETIMEDOUT;
}

Test(api, abort_sends_fin_abort_reset_sends_rst, .timeout = 20)
{
    th_pair_t *pr = th_tcp_pair(NULL, NULL);
    cr_assert_eq(tpio_transport_abort(pr->t), 0);
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TH_TMO));
    cr_assert_eq(peer_end(pr), 0, "a plain abort closes with a FIN");
    th_pair_finish(pr);

    pr = th_tcp_pair(NULL, NULL);
    cr_assert_eq(tpio_transport_abort_reset(pr->t), 0);
    cr_assert_eq(tpio_transport_abort_reset(pr->t), 0, "idempotent");
    cr_assert(th_run_until(pr->loop, &pr->p->lost, TH_TMO));
    cr_assert_str_eq(pr->p->events, "made,lost:0");
    cr_assert_eq(peer_end(pr), -ECONNRESET);
    th_pair_finish(pr);

    /* a Unix socket has no reset */
    pr = th_unix_pair(NULL, NULL, NULL, 0, false);
    cr_assert_eq(tpio_transport_abort_reset(pr->t), -ENOTSUP);
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
}

/* ---- a proxy: pausing another transport's reading --------------------------------------- */

/* in's data goes to out; out's pause_writing pauses in, resume_writing
 * resumes it: callbacks of one transport acting on another. */
static tpio_transport_t *g_in, *g_out;
static size_t g_max_buffered;

static void px_data(tpio_protocol_t *bp, const void *d, size_t n)
{
    (void)bp;
    cr_assert_eq(tpio_transport_write(g_out, d, n), 0);
    size_t w;
    cr_assert_eq(tpio_transport_get_write_buffer_size(g_out, &w), 0);
    if (w > g_max_buffered)
        g_max_buffered = w;
}

static void px_pause(tpio_protocol_t *bp)
{
    th_proto_ops.pause_writing(bp);
    cr_assert_eq(tpio_transport_pause_reading(g_in), 0);
    bool reading = true;
    cr_assert_eq(tpio_transport_is_reading(g_in, &reading), 0);
    cr_assert_not(reading);
}

static void px_resume(tpio_protocol_t *bp)
{
    th_proto_ops.resume_writing(bp);
    cr_assert_eq(tpio_transport_resume_reading(g_in), 0);
}

/* One end of a socketpair as a transport of `loop`; the other end is *peer. */
static th_conn_t *wrap(tpio_loop_t *loop, th_proto_t *tmpl, int *peer)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    cr_assert_eq(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
    *peer = sv[1];
    th_conn_t *c = calloc(1, sizeof *c);
    cr_assert_eq(tpio_loop_connect_accepted_socket(loop, th_factory, tmpl, sv[0], NULL, th_on_conn, c, NULL),
                 0);
    cr_assert(th_run_until(loop, &c->done, TH_TMO));
    cr_assert_eq(c->err, 0);
    return c;
}

Test(api, proxy_buffers_at_most_high_plus_one_read, .timeout = 30)
{
    static tpio_protocol_ops_t in_ops, out_ops;
    in_ops = th_proto_ops;
    in_ops.data_received = px_data;
    out_ops = th_proto_ops;
    out_ops.pause_writing = px_pause;
    out_ops.resume_writing = px_resume;
    tpio_loop_t *loop = th_new_loop();
    th_proto_t tin = {.base.ops = &in_ops}, tout = {.base.ops = &out_ops};
    int src, dst;
    th_conn_t *in = wrap(loop, &tin, &src), *out = wrap(loop, &tout, &dst);
    g_in = in->t;
    g_out = out->t;
    const size_t high = 8192, rs = 4096, total = 2 << 20;
    cr_assert_eq(tpio_transport_set_write_buffer_limits(g_out, (ssize_t)high, 1024), 0);
    cr_assert_eq(tpio_transport_set_read_size(g_in, rs), 0);
    int small = 4096;
    setsockopt(th_fd(g_out), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(dst, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    size_t sent = 0, got = 0;
    unsigned char chunk[16384], buf[2048];
    double end = th_now_s() + 20;
    while (got < total && th_now_s() < end) {
        if (sent < total) {
            size_t n = total - sent < sizeof chunk ? total - sent : sizeof chunk;
            for (size_t i = 0; i < n; i++)
                chunk[i] = th_pat(sent + i);
            ssize_t w = send(src, chunk, n, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
        }
        tpio_loop_run_once(loop, 0);
        /* the far end reads slowly: a little at a time */
        ssize_t r = recv(dst, buf, sizeof buf, MSG_DONTWAIT);
        for (ssize_t i = 0; i < r; i++)
            cr_assert_eq(buf[i], th_pat(got + (size_t)i), "byte %zu", got + (size_t)i);
        if (r > 0)
            got += (size_t)r;
    }
    cr_assert_eq(got, total);
    cr_assert_gt(out->p->pauses, 0, "the proxy was paused");
    cr_assert_eq(out->p->resumes, out->p->pauses, "and resumed each time");
    cr_assert_leq(g_max_buffered, high + rs, "buffered %zu > high %zu + read size %zu",
                  g_max_buffered, high, rs);
    cr_assert_gt(g_max_buffered, high, "the bound was approached");
    cr_assert_eq(tpio_transport_close(g_in), 0);
    cr_assert_eq(tpio_transport_close(g_out), 0);
    cr_assert(th_run_until(loop, &in->p->lost, TH_TMO));
    cr_assert(th_run_until(loop, &out->p->lost, TH_TMO));
    th_proto_free(in->p);
    th_proto_free(out->p);
    free(in);
    free(out);
    close(src);
    close(dst);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* ---- datagram endpoints with abstract names --------------------------------------------- */

static char g_dgram[64];
static size_t g_dgram_len;

static void rec_dgram(tpio_protocol_t *p, const void *d, size_t n, const struct sockaddr *a,
                      socklen_t alen)
{
    (void)p, (void)a, (void)alen;
    cr_assert_leq(n, sizeof g_dgram);
    memcpy(g_dgram, d, n);
    g_dgram_len = n;
}

Test(api, datagram_abstract_names, .timeout = 20)
{
    static tpio_protocol_ops_t dops;
    dops = th_proto_ops;
    dops.datagram_received = rec_dgram;
    tpio_loop_t *loop = th_new_loop();
    char a[64], b[64];
    snprintf(a, sizeof a, "tpio-api-a-%d", getpid());
    snprintf(b, sizeof b, "tpio-api-b-%d", getpid());
    th_conn_t ca = {0}, cb = {0};
    th_proto_t tmpl = {.base.ops = &dops};
    tpio_datagram_opts_t oa =
        TPIO_OPTS(tpio_datagram_opts_t, .local_path = a, .local_abstract = TPIO_ON);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(loop, th_factory, &tmpl, &oa, th_on_conn,
                                                    &ca, NULL),
                 0);
    cr_assert(th_run_until(loop, &ca.done, TH_TMO));
    cr_assert_eq(ca.err, 0);
    tpio_datagram_opts_t ob =
        TPIO_OPTS(tpio_datagram_opts_t, .local_path = b, .local_abstract = TPIO_ON,
                  .remote_path = a, .remote_abstract = TPIO_ON);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(loop, th_factory, &tmpl, &ob, th_on_conn,
                                                    &cb, NULL),
                 0);
    cr_assert(th_run_until(loop, &cb.done, TH_TMO));
    cr_assert_eq(cb.err, 0);
    /* b is connected to a's abstract name; the address a sees is b's */
    tpio_extra_t x;
    cr_assert_eq(tpio_transport_get_extra_info(cb.t, "peername", &x), 0);
    char name[128];
    cr_assert_eq(tpio_format_addr(x.addr, x.addrlen, name, sizeof name), 0);
    char want[128];
    snprintf(want, sizeof want, "b'\\x00%s'", a);
    cr_assert_str_eq(name, want);
    cr_assert_eq(tpio_datagram_sendto(cb.t, "hi", 2, NULL, 0), 0);
    double end = th_now_s() + TH_TMO;
    while (g_dgram_len == 0 && th_now_s() < end)
        tpio_loop_run_once(loop, 0.01);
    cr_assert_eq(g_dgram_len, 2);
    cr_assert_eq(memcmp(g_dgram, "hi", 2), 0);
    /* a name of sun_path's size less its leading NUL fits; one byte more
     * does not */
    char longname[sizeof ((struct sockaddr_un *)0)->sun_path];
    memset(longname, 'n', sizeof longname);
    th_conn_t cl = {0};
    tpio_datagram_opts_t ol = TPIO_OPTS(tpio_datagram_opts_t, .local_path = longname,
                                        .local_path_len = sizeof longname,
                                        .local_abstract = TPIO_ON);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(loop, th_factory, &tmpl, &ol, th_on_conn,
                                                    &cl, NULL),
                 -ENAMETOOLONG);
    ol.local_path_len = sizeof longname - 1;
    cr_assert_eq(tpio_loop_create_datagram_endpoint(loop, th_factory, &tmpl, &ol, th_on_conn,
                                                    &cl, NULL),
                 0);
    cr_assert(th_run_until(loop, &cl.done, TH_TMO));
    cr_assert_eq(cl.err, 0);
    cr_assert_eq(tpio_transport_get_extra_info(cl.t, "sockname", &x), 0);
    cr_assert_eq(x.addrlen, sizeof(struct sockaddr_un));
    cr_assert_eq(tpio_transport_close(cl.t), 0);
    cr_assert(th_run_until(loop, &cl.p->lost, TH_TMO));
    th_proto_free(cl.p);
    cr_assert_eq(tpio_transport_close(ca.t), 0);
    cr_assert_eq(tpio_transport_close(cb.t), 0);
    cr_assert(th_run_until(loop, &ca.p->lost, TH_TMO));
    cr_assert(th_run_until(loop, &cb.p->lost, TH_TMO));
    th_proto_free(ca.p);
    th_proto_free(cb.p);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* TPIO_OFF is a value like any other: an abstract flag set to off makes no
 * Unix endpoint of an IP one. */
Test(api, flag_off_is_not_an_option_set, .timeout = 20)
{
    tpio_loop_t *loop = th_new_loop();
    th_conn_t c = {0};
    th_proto_t tmpl = {0};
    tpio_datagram_opts_t o =
        TPIO_OPTS(tpio_datagram_opts_t, .local_host = "127.0.0.1", .local_abstract = TPIO_OFF,
                  .remote_abstract = TPIO_OFF, .reuse_port = TPIO_OFF);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(loop, th_factory, &tmpl, &o, th_on_conn, &c, NULL),
                 0);
    cr_assert(th_run_until(loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0);
    tpio_extra_t x;
    cr_assert_eq(tpio_transport_get_extra_info(c.t, "sockname", &x), 0);
    cr_assert_eq(x.addr->sa_family, AF_INET);
    cr_assert_eq(tpio_transport_close(c.t), 0);
    cr_assert(th_run_until(loop, &c.p->lost, TH_TMO));
    th_proto_free(c.p);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

Test(api, format_addr_leaves_an_empty_string_on_error, .timeout = 10)
{
    char buf[64] = "old";
    struct sockaddr_in a4 = {.sin_family = AF_INET};
    cr_assert_eq(tpio_format_addr((struct sockaddr *)&a4, sizeof a4 - 1, buf, sizeof buf),
                 -EINVAL);
    cr_assert_str_eq(buf, "");
    strcpy(buf, "old");
    struct sockaddr sa = {.sa_family = AF_APPLETALK};
    cr_assert_eq(tpio_format_addr(&sa, sizeof sa, buf, sizeof buf), -EAFNOSUPPORT);
    cr_assert_str_eq(buf, "");
    strcpy(buf, "old");
    cr_assert_eq(tpio_format_addr(NULL, 0, buf, sizeof buf), -EINVAL);
    cr_assert_str_eq(buf, "");
}

/* ---- handles and timers ----------------------------------------------------------- */

static int g_fired[256], g_nfired;
static void record_timer(tpio_loop_t *loop, void *arg)
{
    (void)loop;
    g_fired[g_nfired++] = (int)(intptr_t)arg;
}

/* Timers with deadlines in a scrambled order, a third of them cancelled
 * from the middle of the heap: the rest fire once each, in deadline order. */
Test(api, timers_fire_in_order_after_cancels, .timeout = 20)
{
    tpio_loop_t *loop = th_new_loop();
    enum { N = 200 };
    tpio_handle_t h[N];
    double now;
    cr_assert_eq(tpio_loop_time(loop, &now), 0);
    unsigned x = 12345;
    int when[N];
    for (int i = 0; i < N; i++) {
        x = x * 1103515245u + 12345u;
        when[i] = (int)(x >> 16) % 1000; /* in tenths of a millisecond */
        cr_assert_eq(tpio_loop_call_at(loop, now + 0.05 + when[i] * 1e-4, record_timer,
                                       (void *)(intptr_t)i, &h[i]),
                     0);
    }
    bool gone[N] = {0};
    for (int i = 1; i < N; i += 3) {
        cr_assert_eq(tpio_loop_cancel(loop, h[i]), 0);
        gone[i] = true;
    }
    g_nfired = 0;
    double end = th_now_s() + 10;
    int want = N - (N + 1) / 3;
    while (g_nfired < want && th_now_s() < end)
        tpio_loop_run_once(loop, 0.01);
    th_run_iters(loop, 3);
    cr_assert_eq(g_nfired, want);
    for (int k = 0; k < g_nfired; k++) {
        cr_assert_not(gone[g_fired[k]], "a cancelled timer fired");
        if (k)
            cr_assert_leq(when[g_fired[k - 1]], when[g_fired[k]], "out of order at %d", k);
    }
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* Every slot's handle cancels, the last one of the table included. */
Test(api, the_last_slot_cancels, .timeout = 10)
{
    tpio_loop_t *loop = th_new_loop();
    enum { N = 64 }; /* the table's first size: the last handle names its last slot */
    tpio_handle_t h[N];
    for (int i = 0; i < N; i++)
        cr_assert_eq(tpio_loop_call_soon(loop, record_timer, (void *)(intptr_t)i, &h[i]), 0);
    for (int i = N - 1; i >= 0; i -= 7)
        cr_assert_eq(tpio_loop_cancel(loop, h[i]), 0, "handle %d", i);
    g_nfired = 0;
    cr_assert_eq(tpio_loop_run_once(loop, 0), 0);
    cr_assert_eq(g_nfired, N - 10);
    for (int k = 0; k < g_nfired; k++)
        cr_assert_neq((N - 1 - g_fired[k]) % 7, 0, "cancelled %d ran", g_fired[k]);
    cr_assert_eq(tpio_loop_close(loop), 0);
}

/* abort() drops the datagrams still queued: the buffer is empty at once and
 * the peer gets none of them. */
Test(api, datagram_abort_drops_the_queue, .timeout = 20)
{
    tpio_loop_t *loop = th_new_loop();
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    th_conn_t c = {0};
    tpio_datagram_opts_t o = TPIO_OPTS(tpio_datagram_opts_t, .use_sock = TPIO_ON, .sock = sv[0]);
    cr_assert_eq(tpio_loop_create_datagram_endpoint(loop, th_factory, NULL, &o, th_on_conn, &c,
                                                    NULL),
                 0);
    cr_assert(th_run_until(loop, &c.done, TH_TMO));
    cr_assert_eq(c.err, 0);
    /* the peer does not read: the kernel's queue fills, then tpio's */
    char d[512];
    memset(d, 'x', sizeof d);
    size_t w = 0;
    int sent = 0;
    while (w == 0 && sent < 10000) {
        cr_assert_eq(tpio_datagram_sendto(c.t, d, sizeof d, NULL, 0), 0);
        sent++;
        cr_assert_eq(tpio_transport_get_write_buffer_size(c.t, &w), 0);
    }
    cr_assert_gt(w, 0, "nothing was queued");
    for (int i = 0; i < 5; i++)
        cr_assert_eq(tpio_datagram_sendto(c.t, d, sizeof d, NULL, 0), 0);
    cr_assert_eq(tpio_transport_get_write_buffer_size(c.t, &w), 0);
    cr_assert_eq(w, 6 * (sizeof d + 8), "six queued, each len + 8");
    cr_assert_eq(tpio_transport_abort(c.t), 0);
    cr_assert_eq(tpio_transport_get_write_buffer_size(c.t, &w), 0);
    cr_assert_eq(w, 0, "abort empties the queue at once");
    /* the peer now reads everything there is: only what the kernel took */
    cr_assert(th_run_until(loop, &c.p->lost, TH_TMO));
    int got = 0;
    while (recv(sv[1], d, sizeof d, MSG_DONTWAIT) > 0)
        got++;
    cr_assert_eq(got, sent - 1, "the queued datagrams were dropped");
    th_proto_free(c.p);
    close(sv[1]);
    cr_assert_eq(tpio_loop_close(loop), 0);
}
