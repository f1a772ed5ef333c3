/*
 * Subprocesses: subprocess_exec / subprocess_shell, the SubprocessTransport
 * calls and the SubprocessProtocol's callback order. Exit codes and signals,
 * 32 MiB each way with flow control, stdout/stderr apart and merged, the
 * exact order for a child that closes its outputs then waits on stdin, a
 * grandchild holding stdout, 200 children at once, exec failures, closing a
 * running child, descriptors leaking into children, dup2 ordering, bad
 * arguments, a new session or process group, descriptors passed on.
 * Nothing sleeps: the loop runs until a condition holds.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include "helpers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define TMO 30.0
#define BIG (32u * 1024 * 1024)

/* ---- a recording SubprocessProtocol ------------------------------------------ */

typedef struct sp sp_t;
struct sp {
    tpio_protocol_t base;
    tpio_transport_t *t;
    char ev[2048]; /* "made,out1,out2,plost1:0,exited,lost:0,pause,resume" */
    size_t elen;
    char *out[3]; /* stored output of fd 1 and 2 (unless nostore) */
    size_t outlen[3], outcap[3];
    bool nostore;
    bool made, exited, lost;
    int lost_err, pipe_err[3];
    bool pipe_lost[3];
    size_t pauses, resumes;
    int exit_code, exit_rc; /* tpio_subprocess_get_returncode() inside process_exited */
    size_t *lost_counter;
    void *ctx;
    /* hooks */
    void (*on_made)(sp_t *);
    void (*on_data)(sp_t *, int fd, const void *d, size_t n);
    void (*on_pipe_lost)(sp_t *, int fd);
    void (*on_resume)(sp_t *);
    void (*on_exited)(sp_t *);
};

static sp_t *SP(tpio_protocol_t *p) { return tpio_container_of(p, sp_t, base); }

static void ev(sp_t *s, const char *e)
{
    size_t n = strlen(e);
    if (s->elen >= n && strcmp(s->ev + s->elen - n, e) == 0 &&
        strncmp(e, "out", 3) == 0)
        return; /* consecutive output of one fd coalesces */
    if (s->elen + n + 2 >= sizeof s->ev)
        return; /* only short sequences are compared */
    if (s->elen)
        s->ev[s->elen++] = ',';
    memcpy(s->ev + s->elen, e, n + 1);
    s->elen += n;
}

static const char *ename(int err) { return err ? tpio_err_name(err) : "0"; }

static void sp_made(tpio_protocol_t *p, tpio_transport_t *t)
{
    sp_t *s = SP(p);
    cr_assert(!s->made);
    s->t = t;
    s->made = true;
    ev(s, "made");
    if (s->on_made)
        s->on_made(s);
}

static void sp_lost(tpio_protocol_t *p, int err)
{
    sp_t *s = SP(p);
    char b[64];
    cr_assert(s->made && !s->lost);
    snprintf(b, sizeof b, "lost:%s", ename(err));
    ev(s, b);
    s->lost = true;
    s->lost_err = err;
    s->t = NULL;
    if (s->lost_counter)
        (*s->lost_counter)++;
}

static void sp_data(tpio_protocol_t *p, int fd, const void *d, size_t n)
{
    sp_t *s = SP(p);
    char b[16];
    cr_assert(s->made && !s->lost && n > 0 && (fd == 1 || fd == 2));
    snprintf(b, sizeof b, "out%d", fd);
    ev(s, b);
    if (!s->nostore) {
        if (s->outlen[fd] + n + 1 > s->outcap[fd]) {
            s->outcap[fd] = (s->outlen[fd] + n + 1) * 2;
            s->out[fd] = realloc(s->out[fd], s->outcap[fd]);
            cr_assert_not_null(s->out[fd]);
        }
        memcpy(s->out[fd] + s->outlen[fd], d, n);
        s->outlen[fd] += n;
        s->out[fd][s->outlen[fd]] = '\0';
    }
    if (s->on_data)
        s->on_data(s, fd, d, n);
}

static void sp_plost(tpio_protocol_t *p, int fd, int err)
{
    sp_t *s = SP(p);
    char b[64];
    cr_assert(s->made && !s->lost && fd >= 0 && fd < 3 && !s->pipe_lost[fd]);
    snprintf(b, sizeof b, "plost%d:%s", fd, ename(err));
    ev(s, b);
    s->pipe_lost[fd] = true;
    s->pipe_err[fd] = err;
    if (s->on_pipe_lost)
        s->on_pipe_lost(s, fd);
}

static void sp_exited(tpio_protocol_t *p)
{
    sp_t *s = SP(p);
    cr_assert(s->made && !s->lost && !s->exited);
    ev(s, "exited");
    s->exited = true;
    s->exit_rc = tpio_subprocess_get_returncode(s->t, &s->exit_code);
    if (s->on_exited)
        s->on_exited(s);
}

static void sp_pause(tpio_protocol_t *p)
{
    SP(p)->pauses++;
    ev(SP(p), "pause");
}

static void sp_resume(tpio_protocol_t *p)
{
    sp_t *s = SP(p);
    s->resumes++;
    ev(s, "resume");
    if (s->on_resume)
        s->on_resume(s);
}

static const tpio_protocol_ops_t sp_ops = {
    .connection_made = sp_made,
    .connection_lost = sp_lost,
    .pause_writing = sp_pause,
    .resume_writing = sp_resume,
    .pipe_data_received = sp_data,
    .pipe_connection_lost = sp_plost,
    .process_exited = sp_exited,
};

static void sp_init(sp_t *s)
{
    memset(s, 0, sizeof *s);
    s->base.ops = &sp_ops;
}

static void sp_fini(sp_t *s)
{
    for (int i = 0; i < 3; i++)
        free(s->out[i]);
}

/* ---- fixture ------------------------------------------------------------------- */

/* The suite's fixture, on top of th_fx (the loop; error reports: none
 * expected): set up by suite init, checked and torn down by fini. */
typedef struct fx {
    sp_t sp;
    size_t factory_calls, cb_calls;
    bool done, refuse;
    int cb_err, rc_in_cb;
    tpio_transport_t *t;
} fx_t;

static fx_t f;

static tpio_protocol_t *factory(void *arg)
{
    fx_t *f = arg;
    f->factory_calls++;
    return f->refuse ? NULL : &f->sp.base;
}

static void on_done(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                    void *arg)
{
    (void)loop;
    fx_t *f = arg;
    int code;
    f->cb_calls++;
    f->done = true;
    f->cb_err = err;
    f->t = t;
    cr_assert_eq(p, &f->sp.base);
    cr_assert(f->sp.made, "the completion comes after connection_made");
    f->rc_in_cb = tpio_subprocess_get_returncode(t, &code);
}

static void fx_init(void)
{
    th_fx_init();
    memset(&f, 0, sizeof f);
    sp_init(&f.sp);
}

static void fx_fini(void)
{
    sp_fini(&f.sp);
    th_fx_fini();
}

TestSuite(process, .init = fx_init, .fini = fx_fini);

/* Another child in the same test: what fini checks, then a fresh fixture. */
static void fx_next(void)
{
    sp_fini(&f.sp);
    th_fx_renew_loop();
    memset(&f, 0, sizeof f);
    sp_init(&f.sp);
}

static int start(fx_t *f, const char *const *argv, const tpio_subprocess_opts_t *o)
{
    return tpio_loop_subprocess_exec(th_fx.loop, factory, f, argv, o, on_done, f);
}

/* Start, and run until the completion. */
static void start_ok(fx_t *f, const char *const *argv, const tpio_subprocess_opts_t *o)
{
    cr_assert_eq(start(f, argv, o), 0);
    cr_assert_eq(f->cb_calls, 0, "completion ran inside the call");
    cr_assert(th_run_until(th_fx.loop, &f->done, TMO));
    cr_assert_eq(f->cb_calls, 1);
    cr_assert_eq(f->cb_err, 0);
    cr_assert_eq(th_kind(f->t), TPIO_TRANSPORT_SUBPROCESS);
}

static void run_to_lost(fx_t *f)
{
    cr_assert(th_run_until(th_fx.loop, &f->sp.lost, TMO), "events: %s", f->sp.ev);
    cr_assert_eq(f->sp.lost_err, 0);
}

static int returncode(const sp_t *s)
{
    cr_assert(s->exited);
    cr_assert_eq(s->exit_rc, 0);
    return s->exit_code;
}

static size_t count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* No child of ours is left, not even a zombie. */
static void assert_no_children(void)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r = waitid(P_ALL, 0, &si, WEXITED | WNOHANG | __WALL);
    cr_assert(r < 0 && errno == ECHILD, "a child is left (pid %d)", (int)si.si_pid);
}

static const char *index_of(const char *hay, const char *needle)
{
    const char *p = strstr(hay, needle);
    cr_assert_not_null(p, "'%s' not in '%s'", needle, hay);
    return p;
}

/* ---- exit codes, signals, the transport's calls -------------------------------- */

Test(process, exit_code_and_returncode, .timeout = 60)
{
    const char *argv[] = {"sh", "-c", "exit 3", NULL};
    start_ok(&f, argv, NULL);
    cr_assert_eq(f.factory_calls, 1);
    cr_assert_eq(f.rc_in_cb, -EAGAIN, "running: no returncode yet");
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), 3);
    /* default: three pipes, each closed before connection_lost */
    const char *e = f.sp.ev;
    cr_assert(strncmp(e, "made,", 5) == 0, "%s", e);
    cr_assert(strcmp(e + strlen(e) - 7, ",lost:0") == 0, "%s", e);
    index_of(e, "plost0:0");
    index_of(e, "plost1:0");
    index_of(e, "plost2:0");
    index_of(e, "exited");
    fx_next();

    /* through PATH, status 0 */
    const char *argv2[] = {"true", NULL};
    start_ok(&f, argv2, NULL);
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), 0);
}

/* Inside process_exited the transport is still valid (connection_lost may
 * follow in the same loop iteration). */
static void esrch_after_exit(sp_t *s)
{
    /* exited: the PID is no longer ours to signal */
    cr_assert_eq(tpio_subprocess_kill(s->t), -ESRCH);
    cr_assert_eq(tpio_subprocess_terminate(s->t), -ESRCH);
    cr_assert_eq(tpio_subprocess_send_signal(s->t, 0), -ESRCH);
    s->ctx = s; /* checked */
}

Test(process, signals_and_esrch_after_exit, .timeout = 60)
{
    static const int sigs[] = {SIGKILL, SIGTERM, SIGUSR1};
    for (int k = 0; k < 3; k++) {
        f.sp.on_exited = esrch_after_exit;
        /* cat blocks on its stdin pipe until signalled */
        const char *argv[] = {"cat", NULL};
        tpio_subprocess_opts_t o = {.size = sizeof o};
        o.stdio[1].mode = TPIO_STDIO_DEVNULL;
        o.stdio[2].mode = TPIO_STDIO_DEVNULL;
        start_ok(&f, argv, &o);
        cr_assert_eq(tpio_subprocess_send_signal(f.t, 0), 0, "alive");
        cr_assert_eq(tpio_subprocess_send_signal(f.t, 12345), -EINVAL);
        int rc = sigs[k] == SIGKILL   ? tpio_subprocess_kill(f.t)
                 : sigs[k] == SIGTERM ? tpio_subprocess_terminate(f.t)
                                      : tpio_subprocess_send_signal(f.t, sigs[k]);
        cr_assert_eq(rc, 0);
        run_to_lost(&f);
        cr_assert_eq(returncode(&f.sp), -sigs[k]);
        cr_assert_eq(f.sp.ctx, &f.sp);
        /* stdin's reader left and the exit: seen in the same poll, any order */
        cr_assert(strcmp(f.sp.ev, "made,plost0:0,exited,lost:0") == 0 ||
                      strcmp(f.sp.ev, "made,exited,plost0:0,lost:0") == 0,
                  "%s", f.sp.ev);
        fx_next();
    }
    assert_no_children();
}

Test(process, transport_getters, .timeout = 60)
{
    const char *argv[] = {"cat", NULL};
    tpio_subprocess_opts_t o = {.size = sizeof o};
    o.stdio[2].mode = TPIO_STDIO_INHERIT;
    start_ok(&f, argv, &o);
    tpio_transport_t *t = f.t;
    pid_t pid = th_pid(t);
    cr_assert_gt(pid, 0);
    cr_assert_eq(th_kind(th_pipe(t, 0)), TPIO_TRANSPORT_PIPE_WRITE);
    cr_assert_eq(th_kind(th_pipe(t, 1)), TPIO_TRANSPORT_PIPE_READ);
    tpio_transport_t *pt = NULL;
    cr_assert_eq(tpio_subprocess_get_pipe_transport(t, 2, &pt), -ENOENT,
                 "stderr is inherited: no pipe");
    cr_assert_eq(tpio_subprocess_get_pipe_transport(t, 3, &pt), -EINVAL);
    cr_assert_eq(tpio_subprocess_get_pipe_transport(t, -1, &pt), -EINVAL);
    cr_assert_null(pt, "untouched on error");
    cr_assert_eq(tpio_subprocess_get_pipe_transport(NULL, 0, &pt), -EINVAL);
    cr_assert_eq(tpio_subprocess_get_pipe_transport(t, 0, NULL), -EINVAL);

    /* "subprocess" is the pidfd: the kernel says whose */
    tpio_extra_t e;
    cr_assert_eq(tpio_transport_get_extra_info(t, "subprocess", &e), 0);
    cr_assert_eq(e.type, TPIO_EXTRA_FD);
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", e.fd);
    FILE *fi = fopen(path, "r");
    cr_assert_not_null(fi);
    bool found = false;
    while (fgets(line, sizeof line, fi))
        if (strncmp(line, "Pid:", 4) == 0)
            found = atoi(line + 4) == pid;
    fclose(fi);
    cr_assert(found, "pidfd of another process");
    cr_assert_eq(tpio_transport_get_extra_info(t, "socket", &e), -ENOENT);

    /* BaseTransport only: no write, no abort; subprocess calls on a pipe */
    tpio_transport_t *in = th_pipe(t, 0);
    cr_assert_eq(tpio_transport_write(t, "x", 1), -ENOTSUP);
    cr_assert_eq(tpio_transport_abort(t), -ENOTSUP);
    cr_assert_eq(th_pid(in), -ENOTSUP);
    cr_assert_eq(tpio_subprocess_kill(in), -ENOTSUP);
    int code;
    cr_assert_eq(tpio_subprocess_get_returncode(in, &code), -ENOTSUP);
    cr_assert_eq(tpio_subprocess_get_returncode(t, NULL), -EINVAL);
    cr_assert_eq(th_pid(NULL), -EINVAL);
    cr_assert_eq(tpio_subprocess_send_signal(NULL, SIGTERM), -EINVAL);
    cr_assert(!th_is_closing(t));

    /* the loop refuses to close under a live subprocess */
    cr_assert_eq(tpio_loop_close(th_fx.loop), -EBUSY);
    /* closing stdin ends cat normally */
    cr_assert_eq(tpio_transport_write(in, "abc", 3), 0);
    cr_assert_eq(tpio_transport_close(in), 0);
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), 0);
    cr_assert_str_eq(f.sp.out[1], "abc");
}

/* ---- volume and flow control ------------------------------------------------- */

static uint64_t fnv(uint64_t h, const void *d, size_t n)
{
    const unsigned char *p = d;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}
#define FNV0 0xcbf29ce484222325ull

typedef struct seqstate {
    uint64_t hash;
    size_t got;
    size_t pause_at; /* pause stdout reading once this much arrived */
    size_t at_pause;
    bool paused;
} seqstate_t;

static void seq_data(sp_t *s, int fd, const void *d, size_t n)
{
    seqstate_t *q = s->ctx;
    cr_assert_eq(fd, 1);
    cr_assert(!q->paused, "data while reading is paused");
    q->hash = fnv(q->hash, d, n);
    q->got += n;
    if (q->pause_at && q->got >= q->pause_at) {
        q->pause_at = 0;
        q->paused = true;
        q->at_pause = q->got;
        cr_assert_eq(tpio_transport_pause_reading(th_pipe(s->t, 1)), 0);
    }
}

Test(process, stdout_32mib_with_pause_reading, .timeout = 60)
{
    /* seq's output is known: more than 32 MiB of it, hashed as it comes */
    enum { N = 4400000 };
    seqstate_t q = {.hash = FNV0, .pause_at = 1 << 20};
    f.sp.nostore = true;
    f.sp.ctx = &q;
    f.sp.on_data = seq_data;
    char nbuf[16];
    snprintf(nbuf, sizeof nbuf, "%d", N);
    const char *argv[] = {"seq", "1", nbuf, NULL};
    tpio_subprocess_opts_t o = {.size = sizeof o};
    o.stdio[0].mode = TPIO_STDIO_DEVNULL;
    start_ok(&f, argv, &o);

    /* paused: nothing arrives while the loop runs for a while */
    size_t target = 1 << 20;
    cr_assert(th_run_until(th_fx.loop, &q.paused, TMO));
    bool fired = false;
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.2, th_set_flag, &fired, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &fired, TMO));
    cr_assert_eq(q.got, q.at_pause);
    cr_assert_geq(q.got, target);
    cr_assert(!f.sp.exited, "seq cannot finish while we do not read");
    q.paused = false;
    cr_assert_eq(tpio_transport_resume_reading(th_pipe(f.t, 1)), 0);
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), 0);

    uint64_t want = FNV0;
    size_t len = 0;
    for (int i = 1; i <= N; i++) {
        int n = snprintf(nbuf, sizeof nbuf, "%d\n", i);
        want = fnv(want, nbuf, (size_t)n);
        len += (size_t)n;
    }
    cr_assert_geq(len, BIG);
    cr_assert_eq(q.got, len);
    cr_assert(q.hash == want, "stdout differs");
}

typedef struct pump {
    size_t written, got;
    bool paused, bad;
    unsigned char chunk[65536];
} pump_t;

/* Write while the stdin transport is below its high watermark. */
static void pump_write(sp_t *s)
{
    pump_t *u = s->ctx;
    tpio_transport_t *in = th_pipe(s->t, 0);
    u->paused = false;
    while (!u->paused && u->written < BIG) {
        size_t n = BIG - u->written < sizeof u->chunk ? BIG - u->written : sizeof u->chunk;
        for (size_t i = 0; i < n; i++)
            u->chunk[i] = th_pat(u->written + i);
        u->written += n;
        cr_assert_eq(tpio_transport_write(in, u->chunk, n), 0);
        cr_assert_leq(th_wbuf_size(in), 64 * 1024 + sizeof u->chunk);
    }
    if (u->written == BIG)
        cr_assert_eq(tpio_transport_close(in), 0); /* flushed, then cat sees EOF */
}

static void pump_pause(tpio_protocol_t *p)
{
    sp_pause(p);
    ((pump_t *)SP(p)->ctx)->paused = true;
}

static void pump_data(sp_t *s, int fd, const void *d, size_t n)
{
    pump_t *u = s->ctx;
    const unsigned char *b = d;
    cr_assert_eq(fd, 1);
    for (size_t i = 0; i < n; i++)
        if (b[i] != th_pat(u->got + i))
            u->bad = true;
    u->got += n;
}

Test(process, stdin_to_stdout_32mib_flow_control, .timeout = 60)
{
    pump_t *u = calloc(1, sizeof *u);
    cr_assert_not_null(u);
    static tpio_protocol_ops_t ops;
    ops = sp_ops;
    ops.pause_writing = pump_pause;
    f.sp.base.ops = &ops;
    f.sp.nostore = true;
    f.sp.ctx = u;
    f.sp.on_made = pump_write;
    f.sp.on_resume = pump_write;
    f.sp.on_data = pump_data;
    const char *argv[] = {"cat", NULL};
    start_ok(&f, argv, NULL);
    run_to_lost(&f);
    cr_assert_eq(u->written, BIG);
    cr_assert_eq(u->got, BIG);
    cr_assert(!u->bad, "stdout differs from what went into stdin");
    cr_assert_gt(f.sp.pauses, 0, "flow control never engaged");
    cr_assert_eq(f.sp.pauses, f.sp.resumes);
    cr_assert_eq(returncode(&f.sp), 0);
    cr_assert_eq(f.sp.pipe_err[0], 0);
    free(u);
}

/* ---- stdout and stderr ------------------------------------------------------------- */

Test(process, stdout_and_stderr_apart_and_merged, .timeout = 60)
{
    const char *argv[] = {"sh", "-c", "echo out; echo err >&2; echo out2", NULL};
    start_ok(&f, argv, NULL);
    run_to_lost(&f);
    cr_assert_str_eq(f.sp.out[1], "out\nout2\n");
    cr_assert_str_eq(f.sp.out[2], "err\n");
    cr_assert_eq(returncode(&f.sp), 0);
    fx_next();

    tpio_subprocess_opts_t o = {.size = sizeof o};
    o.stdio[2].mode = TPIO_STDIO_STDOUT;
    start_ok(&f, argv, &o);
    cr_assert_null(th_pipe(f.t, 2));
    run_to_lost(&f);
    cr_assert_str_eq(f.sp.out[1], "out\nerr\nout2\n");
    cr_assert_null(f.sp.out[2]);
    cr_assert(!f.sp.pipe_lost[2]);
    cr_assert_null(strstr(f.sp.ev, "plost2"));
}

/* ---- the order of the callbacks ------------------------------------------------ */

/* The child closes stdout, waits for a line, closes stderr, waits for EOF on
 * stdin: each step waits for the previous callback, so the order is fixed. */
static void order_pipe_lost(sp_t *s, int fd)
{
    tpio_transport_t *in = th_pipe(s->t, 0);
    if (fd == 1)
        cr_assert_eq(tpio_transport_write(in, "\n", 1), 0);
    else if (fd == 2)
        cr_assert_eq(tpio_transport_close(in), 0);
}

Test(process, exact_callback_order, .timeout = 60)
{
    f.sp.on_pipe_lost = order_pipe_lost;
    const char *argv[] = {
        "sh", "-c", "echo out; exec 1>&-; read x; echo err >&2; exec 2>&-; read y", NULL};
    start_ok(&f, argv, NULL);
    run_to_lost(&f);
    cr_assert_str_eq(f.sp.ev, "made,out1,plost1:0,out2,plost2:0,plost0:0,exited,lost:0");
    cr_assert_eq(returncode(&f.sp), 1); /* `read y` at EOF */
}

Test(process, simple_child_order, .timeout = 60)
{
    const char *argv[] = {"echo", "hi", NULL};
    start_ok(&f, argv, NULL);
    run_to_lost(&f);
    /* asyncio's order between the pipes and the exit is a race; what is
     * fixed: made first, the data before its pipe's end, lost last after
     * the exit and every pipe */
    const char *e = f.sp.ev;
    cr_assert(strncmp(e, "made,out1,", 10) == 0, "%s", e);
    cr_assert_lt(index_of(e, "out1"), index_of(e, "plost1:0"));
    index_of(e, "plost0:0");
    index_of(e, "plost2:0");
    cr_assert_str_eq(strrchr(e, ','), ",lost:0");
    cr_assert_str_eq(f.sp.out[1], "hi\n");
    cr_assert_eq(returncode(&f.sp), 0);
}

Test(process, exit_seen_while_grandchild_holds_stdout, .timeout = 60)
{
    /* The grandchild keeps stdout and stderr open and waits on a copy of
     * stdin (fd 3: an asynchronous list's own stdin is /dev/null). */
    const char *argv[] = {"sh", "-c", "exec 3<&0; (read x <&3) & echo hi", NULL};
    start_ok(&f, argv, NULL);
    cr_assert(th_run_until(th_fx.loop, &f.sp.exited, TMO), "events: %s", f.sp.ev);
    cr_assert_eq(returncode(&f.sp), 0);
    cr_assert_str_eq(f.sp.ev, "made,out1,exited");
    cr_assert_str_eq(f.sp.out[1], "hi\n");
    /* the transport waits for its pipes */
    bool fired = false;
    cr_assert_eq(tpio_loop_call_later(th_fx.loop, 0.1, th_set_flag, &fired, NULL), 0);
    cr_assert(th_run_until(th_fx.loop, &fired, TMO));
    cr_assert(!f.sp.lost && !f.sp.pipe_lost[1]);
    /* EOF on stdin ends the grandchild, which closes the pipes */
    cr_assert_eq(tpio_transport_close(th_pipe(f.t, 0)), 0);
    run_to_lost(&f);
    const char *e = f.sp.ev;
    cr_assert(strncmp(e, "made,out1,exited,plost0:0,", 26) == 0, "%s", e);
    index_of(e, "plost1:0");
    index_of(e, "plost2:0");
    cr_assert_str_eq(strrchr(e, ','), ",lost:0");
    assert_no_children(); /* the grandchild is not ours */
}

/* ---- many at once ------------------------------------------------------------------- */

typedef struct many {
    sp_t sp;
    int err;
    bool done;
} many_t;

static tpio_protocol_t *many_factory(void *arg) { return &((many_t *)arg)->sp.base; }

static void many_done(tpio_loop_t *loop, tpio_transport_t *t, tpio_protocol_t *p, int err,
                      void *arg)
{
    (void)loop;
    (void)t;
    (void)p;
    many_t *m = arg;
    m->err = err;
    m->done = true;
}

Test(process, two_hundred_children_all_reaped, .timeout = 60)
{
    enum { K = 200 };
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    rl.rlim_cur = rl.rlim_max;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);

    tpio_loop_t *loop = th_fx.loop;
    many_t *m = calloc(K, sizeof *m);
    cr_assert_not_null(m);
    size_t lost = 0;
    for (int i = 0; i < K; i++) {
        sp_init(&m[i].sp);
        m[i].sp.lost_counter = &lost;
        char num[16];
        snprintf(num, sizeof num, "%d", i);
        const char *argv[] = {"sh", "-c", "echo $1; exit $1", "sh", num, NULL};
        cr_assert_eq(tpio_loop_subprocess_exec(loop, many_factory, &m[i], argv, NULL, many_done,
                                          &m[i]),
                     0, "child %d", i);
    }
    cr_assert(th_run_until_count(loop, &lost, K, TMO), "%zu of %d", lost, K);
    for (int i = 0; i < K; i++) {
        char want[16];
        snprintf(want, sizeof want, "%d\n", i);
        cr_assert(m[i].done && m[i].err == 0);
        cr_assert_eq(returncode(&m[i].sp), i);
        cr_assert_str_eq(m[i].sp.out[1], want);
        sp_fini(&m[i].sp);
    }
    free(m);
    assert_no_children();
}

/* ---- failures to start ------------------------------------------------------------- */

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    cr_assert_eq(chmod(path, mode), 0);
}

Test(process, exec_errors_fail_the_call, .timeout = 60)
{
    char dir[] = "/tmp/tpio-proc-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char noexec[PATH_MAX], garbage[PATH_MAX], pathenv[PATH_MAX + 8];
    snprintf(noexec, sizeof noexec, "%s/noexec", dir);
    snprintf(garbage, sizeof garbage, "%s/garbage", dir);
    snprintf(pathenv, sizeof pathenv, "PATH=%s", dir);
    write_file(noexec, "#!/bin/sh\necho hi\n", 0644);
    write_file(garbage, "\x01\x02 not a program\n", 0755);

    size_t fds = count_fds();
    const char *missing[] = {"/nonexistent/prog", NULL};
    const char *missing_in_path[] = {"tpio-no-such-program", NULL};
    const char *empty[] = {"", NULL};
    const char *na[] = {noexec, NULL};
    const char *na_in_path[] = {"noexec", NULL};
    const char *adir[] = {dir, NULL};
    const char *bad[] = {garbage, NULL};
    const char *ok[] = {"true", NULL};
    cr_assert_eq(start(&f, missing, NULL), -ENOENT);
    cr_assert_eq(start(&f, missing_in_path, NULL), -ENOENT);
    cr_assert_eq(start(&f, empty, NULL), -ENOENT);
    cr_assert_eq(start(&f, na, NULL), -EACCES);
    cr_assert_eq(start(&f, adir, NULL), -EACCES);
    cr_assert_eq(start(&f, bad, NULL), -ENOEXEC);
    tpio_subprocess_opts_t o = {.size = sizeof o};
    const char *env[] = {pathenv, NULL};
    o.env = env; /* PATH of the child's environment is searched */
    cr_assert_eq(start(&f, na_in_path, &o), -EACCES);
    cr_assert_eq(start(&f, ok, &o), -ENOENT, "true is not in %s", dir);
    o = TPIO_OPTS(tpio_subprocess_opts_t);
    o.cwd = "/nonexistent/dir";
    cr_assert_eq(start(&f, ok, &o), -ENOENT);
    cr_assert_eq(f.factory_calls, 0);
    cr_assert_eq(f.cb_calls, 0);
    cr_assert_eq(count_fds(), fds, "descriptors leaked");
    assert_no_children();
    /* nothing was left in the loop: a run does nothing and it closes */
    cr_assert_eq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_eq(f.cb_calls, 0);
    unlink(noexec);
    unlink(garbage);
    rmdir(dir);
}

Test(process, factory_refusal_kills_and_reaps, .timeout = 60)
{
    f.refuse = true;
    const char *argv[] = {"cat", NULL};
    cr_assert_eq(start(&f, argv, NULL), -ECONNABORTED);
    cr_assert_eq(f.factory_calls, 1);
    assert_no_children();
    /* the pipe transports made for it end on the loop */
    double end = th_time(th_fx.loop) + TMO;
    int rc;
    while ((rc = tpio_loop_close(th_fx.loop)) == -EBUSY && th_time(th_fx.loop) < end)
        tpio_loop_run_once(th_fx.loop, 0.01);
    cr_assert_eq(rc, 0);
    th_fx.loop = NULL; /* closed: nothing left for fini to close */
    cr_assert_eq(f.cb_calls, 0);
}

Test(process, bad_arguments, .timeout = 60)
{
    const char *none[] = {NULL};
    const char *ok[] = {"true", NULL};
    cr_assert_eq(start(&f, NULL, NULL), -EINVAL);
    cr_assert_eq(start(&f, none, NULL), -EINVAL);
    cr_assert_eq(tpio_loop_subprocess_exec(NULL, factory, &f, ok, NULL, on_done, &f), -EINVAL);
    cr_assert_eq(tpio_loop_subprocess_exec(th_fx.loop, NULL, &f, ok, NULL, on_done, &f), -EINVAL);
    cr_assert_eq(tpio_loop_subprocess_exec(th_fx.loop, factory, &f, ok, NULL, NULL, &f), -EINVAL);
    cr_assert_eq(tpio_loop_subprocess_shell(th_fx.loop, factory, &f, NULL, NULL, on_done, &f), -EINVAL);
    tpio_subprocess_opts_t o = {.size = sizeof o};
    o.stdio[0].mode = TPIO_STDIO_STDOUT; /* stderr only */
    cr_assert_eq(start(&f, ok, &o), -EINVAL);
    o.stdio[0].mode = TPIO_STDIO_PIPE;
    o.stdio[1].mode = (tpio_stdio_t)99;
    cr_assert_eq(start(&f, ok, &o), -EINVAL);
    o.stdio[1].mode = TPIO_STDIO_FD;
    o.stdio[1].fd = -1;
    cr_assert_eq(start(&f, ok, &o), -EBADF);
    cr_assert_lt(fcntl(1000, F_GETFD), 0);
    o.stdio[1].fd = 1000; /* not open */
    cr_assert_eq(start(&f, ok, &o), -EBADF);
    cr_assert_eq(f.factory_calls, 0);
    assert_no_children();
}

/* ---- closing --------------------------------------------------------------------- */

static void close_in_made(sp_t *s) { cr_assert_eq(tpio_transport_close(s->t), 0); }

Test(process, close_kills_a_running_child, .timeout = 60)
{
    for (int inside = 0; inside < 2; inside++) {
        if (inside)
            f.sp.on_made = close_in_made;
        const char *argv[] = {"cat", NULL};
        start_ok(&f, argv, NULL);
        if (!inside)
            cr_assert_eq(tpio_transport_close(f.t), 0);
        cr_assert(th_is_closing(f.t));
        cr_assert_eq(tpio_transport_close(f.t), 0, "idempotent");
        run_to_lost(&f);
        cr_assert_eq(returncode(&f.sp), -SIGKILL);
        const char *e = f.sp.ev;
        cr_assert(strncmp(e, "made,", 5) == 0, "%s", e);
        index_of(e, "plost0:0");
        index_of(e, "plost1:0");
        index_of(e, "plost2:0");
        index_of(e, "exited");
        cr_assert_str_eq(strrchr(e, ','), ",lost:0");
        fx_next();
    }
    assert_no_children();
}

/* ---- descriptors in the child ------------------------------------------------------ */

Test(process, no_descriptor_leaks_into_the_child, .timeout = 60)
{
    /* descriptors without CLOEXEC, as a careless program would have */
    int extra = open("/dev/null", O_RDONLY);
    int p[2];
    cr_assert_geq(extra, 0);
    cr_assert_eq(pipe(p), 0);
    const char *argv[] = {"ls", "/proc/self/fd", NULL};
    start_ok(&f, argv, NULL);
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), 0);
    /* 0, 1, 2, and ls's own handle on the directory it lists */
    int seen[4] = {0};
    char *save = NULL;
    for (char *tok = strtok_r(f.sp.out[1], "\n", &save); tok; tok = strtok_r(NULL, "\n", &save)) {
        int fd = atoi(tok);
        cr_assert(fd >= 0 && fd <= 3, "fd %s leaked into the child (%s)", tok, f.sp.ev);
        seen[fd]++;
    }
    cr_assert(seen[0] && seen[1] && seen[2]);
    close(extra);
    close(p[0]);
    close(p[1]);
}

static void read_all(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    ssize_t r;
    while ((r = read(fd, buf + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
}

Test(process, given_descriptors_that_overlap_0_1_2, .timeout = 60)
{
    /* Our fd 0 becomes a pipe; the child gets it as stdout and stderr while
     * its stdin comes from another pipe: a naive dup2(in, 0) first would
     * clobber the source of stdout. */
    int saved0 = dup(0);
    int in[2], out[2];
    cr_assert_eq(pipe2(in, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
    cr_assert_eq(write(in[1], "abc\n", 4), 4);
    close(in[1]);
    cr_assert_eq(dup2(out[1], 0), 0);
    close(out[1]);

    tpio_subprocess_opts_t o = {.size = sizeof o};
    o.stdio[0] = (tpio_stdio_opt_t){TPIO_STDIO_FD, in[0]};
    o.stdio[1] = (tpio_stdio_opt_t){TPIO_STDIO_FD, 0};
    o.stdio[2].mode = TPIO_STDIO_STDOUT;
    const char *argv[] = {"sh", "-c", "read x; echo \"got $x\"; echo err >&2", NULL};
    int rc = start(&f, argv, &o);
    dup2(saved0, 0); /* the child has its copies */
    cr_assert_eq(rc, 0);
    cr_assert(th_run_until(th_fx.loop, &f.done, TMO));
    cr_assert_null(th_pipe(f.t, 0));
    run_to_lost(&f);
    cr_assert_str_eq(f.sp.ev, "made,exited,lost:0");
    cr_assert_eq(returncode(&f.sp), 0);
    char buf[256];
    read_all(out[0], buf, sizeof buf);
    cr_assert_str_eq(buf, "got abc\nerr\n");
    close(out[0]);
    close(in[0]);
    fx_next();

    /* A CLOEXEC source already in its own slot is still passed on. */
    cr_assert_eq(pipe2(in, O_CLOEXEC), 0);
    cr_assert_eq(write(in[1], "xyz", 3), 3);
    close(in[1]);
    cr_assert_eq(dup3(in[0], 0, O_CLOEXEC), 0);
    close(in[0]);
    o = TPIO_OPTS(tpio_subprocess_opts_t);
    o.stdio[0] = (tpio_stdio_opt_t){TPIO_STDIO_FD, 0};
    const char *cat[] = {"cat", NULL};
    rc = start(&f, cat, &o);
    dup2(saved0, 0);
    close(saved0);
    cr_assert_eq(rc, 0);
    run_to_lost(&f);
    cr_assert_str_eq(f.sp.out[1], "xyz");
    cr_assert_eq(returncode(&f.sp), 0);
}

Test(process, devnull_inherit_env_cwd_and_shell, .timeout = 60)
{
    char dir[] = "/tmp/tpio-proc-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char real[PATH_MAX], want[PATH_MAX + 16];
    cr_assert_not_null(realpath(dir, real));
    snprintf(want, sizeof want, "bar\n%s\n", real);

    const char *env[] = {"FOO=bar", NULL};
    tpio_subprocess_opts_t o = {.size = sizeof o, .env = env, .cwd = dir};
    o.stdio[0].mode = TPIO_STDIO_DEVNULL;
    o.stdio[2].mode = TPIO_STDIO_DEVNULL;
    const char *argv[] = {"sh", "-c", "echo $FOO; pwd; cat; echo gone >&2", NULL};
    start_ok(&f, argv, &o);
    cr_assert_null(th_pipe(f.t, 0));
    cr_assert_null(th_pipe(f.t, 2));
    run_to_lost(&f);
    cr_assert_str_eq(f.sp.out[1], want);
    cr_assert(strcmp(f.sp.ev, "made,out1,plost1:0,exited,lost:0") == 0 ||
                  strcmp(f.sp.ev, "made,out1,exited,plost1:0,lost:0") == 0,
              "%s", f.sp.ev);
    fx_next();
    rmdir(dir);

    cr_assert_eq(tpio_loop_subprocess_shell(th_fx.loop, factory, &f, "echo $((6 * 7))", NULL, on_done, &f), 0);
    cr_assert(th_run_until(th_fx.loop, &f.done, TMO));
    run_to_lost(&f);
    cr_assert_str_eq(f.sp.out[1], "42\n");
    fx_next();

    /* a command the shell cannot find: its status, 127 */
    cr_assert_eq(tpio_loop_subprocess_shell(th_fx.loop, factory, &f, "tpio-no-such-cmd", NULL, on_done, &f), 0);
    cr_assert(th_run_until(th_fx.loop, &f.done, TMO));
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), 127);
}

static void note_error(tpio_loop_t *loop, const tpio_error_context_t *ctx, void *arg)
{
    (void)loop;
    *(int *)arg = ctx->error;
}

Test(process, sigchld_ignored_reports_255, .timeout = 60)
{
    /* SIGCHLD = SIG_IGN makes the kernel reap children itself: the status
     * is lost. As asyncio, the exit is still seen, with returncode 255 and
     * a report to the error handler; nothing hangs. */
    struct sigaction sa = {.sa_handler = SIG_IGN}, old;
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGCHLD, &sa, &old), 0);
    int reported = 0;
    tpio_loop_set_error_handler(th_fx.loop, note_error, &reported);
    const char *argv[] = {"sh", "-c", "exit 5", NULL};
    start_ok(&f, argv, NULL);
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), 255);
    cr_assert_eq(reported, -ECHILD);
    sigaction(SIGCHLD, &old, NULL);
}

/* waitid(2) refused with EPERM from here on, in this process only (its
 * children inherit the filter, and none of them calls it). */
static void refuse_waitid(void) { th_seccomp_refuse(SYS_waitid); }

/* On io_uring the kernel reaps the child itself (a waitid operation, 6.7):
 * with waitid(2) refused, the exit status still arrives whole, and nothing
 * is reported. Readiness backends reap with waitid(2), so this only makes
 * sense on a ring that has the operation. */
Test(process, ring_reaps_children_itself, .timeout = 60)
{
    if (!th_ring_pipe_ops(th_fx.loop))
        return;
    refuse_waitid();
    int reported = 0;
    tpio_loop_set_error_handler(th_fx.loop, note_error, &reported);
    const char *argv[] = {"sh", "-c", "exit 7", NULL};
    start_ok(&f, argv, NULL);
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), 7);
    cr_assert_eq(reported, 0);
    fx_next();

    /* killed by a signal: -signal, as asyncio's returncode */
    const char *argv2[] = {"sh", "-c", "kill -TERM $$", NULL};
    start_ok(&f, argv2, NULL);
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), -SIGTERM);
}

/* The loop runs on another thread from here (asyncio allows it; io_uring
 * moves the loop to a ring of that thread's): the child is told to exit
 * only then, so its exit is seen through what the move asked anew. */
static void *exit_on_thread(void *arg)
{
    fx_t *fx = arg;
    tpio_transport_t *in = NULL;
    if (tpio_subprocess_get_pipe_transport(fx->t, 0, &in) == 0 &&
        tpio_transport_write(in, "go\n", 3) == 0 && tpio_transport_close(in) == 0)
        th_run_until(th_fx.loop, &fx->sp.lost, TMO);
    return NULL;
}

Test(process, child_exit_seen_after_the_loop_changed_thread, .timeout = 60)
{
    const char *argv[] = {"sh", "-c", "read x; exit 4", NULL};
    start_ok(&f, argv, NULL);
    cr_assert_eq(tpio_loop_run_once(th_fx.loop, 0), 0);
    cr_assert_not(f.sp.exited);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, exit_on_thread, &f), 0);
    cr_assert_eq(pthread_join(th, NULL), 0);
    cr_assert(f.sp.lost, "events: %s", f.sp.ev);
    cr_assert_eq(f.sp.lost_err, 0);
    cr_assert_eq(returncode(&f.sp), 4);
}

/* ---- session, process group, passed descriptors --------------------------------- */

/* The child's pid, process group and session, from its own /proc/<pid>/stat
 * as the shell printed it (fields 1, 5 and 6; the name, field 2, is in
 * parentheses). */
static void ids_of(const char *stat, pid_t *pid, pid_t *pgrp, pid_t *sid)
{
    cr_assert_not_null(stat);
    const char *close_paren = strrchr(stat, ')');
    cr_assert_not_null(close_paren, "%s", stat);
    int p = atoi(stat), g = 0, s = 0, ppid = 0;
    char state;
    cr_assert_eq(sscanf(close_paren + 1, " %c %d %d %d", &state, &ppid, &g, &s), 4, "%s", stat);
    *pid = p;
    *pgrp = g;
    *sid = s;
}

static const char *const print_ids[] = {"sh", "-c", "read -r l </proc/$$/stat; echo \"$l\"", NULL};

/* Run print_ids with o, to the end; the child's ids. */
static void run_ids(const tpio_subprocess_opts_t *o, pid_t *pid, pid_t *pgrp, pid_t *sid)
{
    start_ok(&f, print_ids, o);
    pid_t started = th_pid(f.t);
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), 0, "%s", f.sp.out[2] ? f.sp.out[2] : "");
    ids_of(f.sp.out[1], pid, pgrp, sid);
    cr_assert_eq(*pid, started, "the shell itself printed its ids");
    fx_next();
}

Test(process, new_session_and_process_group, .timeout = 60)
{
    pid_t pid, pgrp, sid;
    /* default: our group and session */
    run_ids(NULL, &pid, &pgrp, &sid);
    cr_assert_eq(pgrp, getpgrp());
    cr_assert_eq(sid, getsid(0));

    /* start_new_session: leads a session and a group of its own */
    tpio_subprocess_opts_t o = TPIO_OPTS(tpio_subprocess_opts_t, .new_session = TPIO_ON);
    run_ids(&o, &pid, &pgrp, &sid);
    cr_assert_eq(sid, pid);
    cr_assert_eq(pgrp, pid);
    cr_assert_neq(sid, getsid(0));

    /* process_group=0: a group of its own, in our session */
    o = TPIO_OPTS(tpio_subprocess_opts_t, .set_pgid = TPIO_ON, .pgid = 0);
    run_ids(&o, &pid, &pgrp, &sid);
    cr_assert_eq(pgrp, pid);
    cr_assert_eq(sid, getsid(0));

    /* joining another child's group: the leader blocks on its stdin */
    fx_t lf = {0};
    sp_init(&lf.sp);
    const char *cat[] = {"cat", NULL};
    o = TPIO_OPTS(tpio_subprocess_opts_t, .set_pgid = TPIO_ON);
    o.stdio[1].mode = TPIO_STDIO_DEVNULL;
    o.stdio[2].mode = TPIO_STDIO_DEVNULL;
    start_ok(&lf, cat, &o);
    pid_t lpid = th_pid(lf.t);
    o = TPIO_OPTS(tpio_subprocess_opts_t, .set_pgid = TPIO_ON, .pgid = lpid);
    start_ok(&f, print_ids, &o);
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), 0);
    ids_of(f.sp.out[1], &pid, &pgrp, &sid);
    cr_assert_eq(pgrp, lpid);
    cr_assert_eq(sid, getsid(0));
    cr_assert_eq(tpio_transport_close(lf.t), 0);
    run_to_lost(&lf);
    cr_assert_eq(returncode(&lf.sp), -SIGKILL);
    sp_fini(&lf.sp);
    fx_next();

    /* the kernel's refusals fail the call, as Popen's: a group of another
     * session (init's), a session leader changing group */
    o = TPIO_OPTS(tpio_subprocess_opts_t, .set_pgid = TPIO_ON, .pgid = 1);
    cr_assert_eq(start(&f, print_ids, &o), -EPERM);
    o = TPIO_OPTS(tpio_subprocess_opts_t, .new_session = TPIO_ON, .set_pgid = TPIO_ON);
    cr_assert_eq(start(&f, print_ids, &o), -EPERM);
    cr_assert_eq(f.factory_calls, 0);
    assert_no_children();
}

Test(process, session_group_and_pass_fds_bad_arguments, .timeout = 60)
{
    const char *ok[] = {"true", NULL};
    tpio_subprocess_opts_t o = TPIO_OPTS(tpio_subprocess_opts_t, .new_session = (tpio_flag_t)5);
    cr_assert_eq(start(&f, ok, &o), -EINVAL);
    o = TPIO_OPTS(tpio_subprocess_opts_t, .set_pgid = (tpio_flag_t)2);
    cr_assert_eq(start(&f, ok, &o), -EINVAL);
    o = TPIO_OPTS(tpio_subprocess_opts_t, .set_pgid = TPIO_ON, .pgid = -1);
    cr_assert_eq(start(&f, ok, &o), -EINVAL);
    o = TPIO_OPTS(tpio_subprocess_opts_t, .pgid = 5);
    cr_assert_eq(start(&f, ok, &o), -EINVAL, "a pgid without set_pgid");
    o = TPIO_OPTS(tpio_subprocess_opts_t, .set_pgid = TPIO_OFF, .pgid = 5);
    cr_assert_eq(start(&f, ok, &o), -EINVAL);
    o = TPIO_OPTS(tpio_subprocess_opts_t, .n_pass_fds = 1);
    cr_assert_eq(start(&f, ok, &o), -EINVAL);
    int neg[] = {1, -1};
    o = TPIO_OPTS(tpio_subprocess_opts_t, .pass_fds = neg, .n_pass_fds = 2);
    cr_assert_eq(start(&f, ok, &o), -EBADF);
    cr_assert_lt(fcntl(1000, F_GETFD), 0);
    int closed[] = {1000};
    o = TPIO_OPTS(tpio_subprocess_opts_t, .pass_fds = closed, .n_pass_fds = 1);
    cr_assert_eq(start(&f, ok, &o), -EBADF);
    /* a program built against the header before these fields: still fine */
    o = TPIO_OPTS(tpio_subprocess_opts_t);
    o.size = offsetof(tpio_subprocess_opts_t, new_session);
    o.stdio[1].mode = TPIO_STDIO_DEVNULL;
    cr_assert_eq(f.factory_calls, 0);
    assert_no_children();
    start_ok(&f, ok, &o);
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), 0);
}

/* Our pipe end `fd`, moved to `at` (CLOEXEC, as Python's descriptors are). */
static int move_fd(int fd, int at)
{
    int r = fcntl(fd, F_DUPFD_CLOEXEC, at);
    cr_assert_eq(r, at, "fd %d is free", at);
    close(fd);
    return r;
}

Test(process, pass_fds_kept_at_their_numbers, .timeout = 60)
{
    /* 50: the read end of a pipe holding "hello\n"; 60: the write end of
     * another; both CLOEXEC. 70: not CLOEXEC but not passed: closed. */
    int a[2], b[2];
    cr_assert_eq(pipe2(a, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(b, O_CLOEXEC), 0);
    int r = move_fd(a[0], 50), w = move_fd(b[1], 60);
    cr_assert_eq(write(a[1], "hello\n", 6), 6);
    close(a[1]);
    int stray = fcntl(0, F_DUPFD, 70);
    cr_assert_eq(stray, 70);

    /* which descriptors the child has: 0, 1, 2, ls's own, 50 and 60 */
    int pass[] = {60, 50, 60, 1}; /* any order, duplicates, one of 0..2 */
    const char *ls[] = {"ls", "/proc/self/fd", NULL};
    tpio_subprocess_opts_t o = TPIO_OPTS(tpio_subprocess_opts_t, .pass_fds = pass,
                                         .n_pass_fds = 4);
    start_ok(&f, ls, &o);
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), 0);
    bool seen[71] = {0};
    char *save = NULL;
    for (char *tok = strtok_r(f.sp.out[1], "\n", &save); tok; tok = strtok_r(NULL, "\n", &save)) {
        int fd = atoi(tok);
        cr_assert(fd <= 3 || fd == 50 || fd == 60, "fd %s in the child", tok);
        seen[fd] = true;
    }
    cr_assert(seen[0] && seen[1] && seen[2] && seen[50] && seen[60]);
    /* ours keep CLOEXEC */
    cr_assert_eq(fcntl(r, F_GETFD), FD_CLOEXEC);
    cr_assert_eq(fcntl(w, F_GETFD), FD_CLOEXEC);
    fx_next();

    /* readable and writable there (dash takes no fd above 9 in a
     * redirection: through /dev/fd); stdout, passed too, is still the pipe */
    const char *sh[] = {"sh", "-c",
                        "read x </dev/fd/50; echo \"got $x\" >/dev/fd/60; echo out", NULL};
    start_ok(&f, sh, &o);
    run_to_lost(&f);
    cr_assert_eq(returncode(&f.sp), 0);
    cr_assert_str_eq(f.sp.out[1], "out\n");
    close(w); /* the child's copy is gone: EOF after its line */
    char buf[64];
    read_all(b[0], buf, sizeof buf);
    cr_assert_str_eq(buf, "got hello\n");
    close(b[0]);
    close(r);
    close(stray);
    fx_next();

    /* An inherited stream that is CLOEXEC stays open when passed (as
     * Popen's pass_fds=(0,) with stdin=None). */
    int saved0 = dup(0), in[2];
    cr_assert_eq(pipe2(in, O_CLOEXEC), 0);
    cr_assert_eq(write(in[1], "xyz", 3), 3);
    close(in[1]);
    cr_assert_eq(dup3(in[0], 0, O_CLOEXEC), 0);
    close(in[0]);
    int zero[] = {0};
    o = TPIO_OPTS(tpio_subprocess_opts_t, .pass_fds = zero, .n_pass_fds = 1);
    o.stdio[0].mode = TPIO_STDIO_INHERIT;
    const char *cat[] = {"cat", NULL};
    int rc = start(&f, cat, &o);
    dup2(saved0, 0);
    close(saved0);
    cr_assert_eq(rc, 0);
    run_to_lost(&f);
    cr_assert_str_eq(f.sp.out[1], "xyz");
    cr_assert_eq(returncode(&f.sp), 0);
}

/* An executable written and closed just before it is run (ETXTBSY if a
 * write descriptor is still open somewhere: libuv#4059 closed through its
 * ring, asynchronously). tpio never closes through the ring, on either
 * backend; the loop's own descriptors are close-on-exec. Ten times in a
 * row, each written afresh while the loop has connections of its own. */
Test(process, executable_written_then_run_at_once, .timeout = 60)
{
    th_pair_t *pr = th_tcp_pair(NULL, NULL); /* a connection, so the ring is busy */
    char path[] = "/tmp/tpio-etxtbsy-XXXXXX";
    for (int round = 0; round < 10; round++) {
        int fd = mkstemp(path);
        cr_assert_geq(fd, 0);
        const char script[] = "#!/bin/sh\nexit 7\n";
        cr_assert_eq(write(fd, script, sizeof script - 1), (ssize_t)(sizeof script - 1));
        cr_assert_eq(fchmod(fd, 0700), 0);
        cr_assert_eq(close(fd), 0);
        const char *argv[] = {path, NULL};
        start_ok(&f, argv, NULL);
        run_to_lost(&f);
        cr_assert_eq(returncode(&f.sp), 7, "round %d", round);
        cr_assert_eq(unlink(path), 0);
        memcpy(path + sizeof path - 7, "XXXXXX", 6);
        sp_fini(&f.sp); /* the next child on the same loop, the pair still open */
        memset(&f, 0, sizeof f);
        sp_init(&f.sp);
    }
    cr_assert_eq(tpio_transport_close(pr->t), 0);
    th_pair_finish(pr);
}
