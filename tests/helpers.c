#include "helpers.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool th_run_until(tpio_loop_t *loop, const bool *flag, double timeout)
{
    double end = tpio_loop_time(loop) + timeout;
    while (!*flag && tpio_loop_time(loop) < end)
        tpio_loop_run_once(loop, 10);
    return *flag;
}

bool th_run_until_count(tpio_loop_t *loop, const size_t *count, size_t target,
                        double timeout)
{
    double end = tpio_loop_time(loop) + timeout;
    while (*count < target && tpio_loop_time(loop) < end)
        tpio_loop_run_once(loop, 10);
    return *count >= target;
}

static th_proto_t *P(tpio_protocol_t *p) { return tpio_container_of(p, th_proto_t, base); }

static void ev(th_proto_t *p, const char *e)
{
    size_t n = strlen(e);
    /* coalesce repeated data events */
    if (strcmp(e, "data") == 0 && p->elen >= 4 &&
        strcmp(p->events + p->elen - 4, "data") == 0)
        return;
    if (p->elen + n + 2 >= sizeof p->events)
        return;
    if (p->elen)
        p->events[p->elen++] = ',';
    memcpy(p->events + p->elen, e, n + 1);
    p->elen += n;
}

static void append_rx(th_proto_t *p, const void *d, size_t n)
{
    if (p->rxlen + n > p->rxcap) {
        size_t cap = p->rxcap ? p->rxcap : 4096;
        while (cap < p->rxlen + n)
            cap *= 2;
        p->rx = realloc(p->rx, cap);
        if (!p->rx)
            abort();
        p->rxcap = cap;
    }
    memcpy(p->rx + p->rxlen, d, n);
    p->rxlen += n;
}

static void made(tpio_protocol_t *bp, tpio_transport_t *t)
{
    th_proto_t *p = P(bp);
    p->t = t;
    p->made = true;
    ev(p, "made");
    if (p->pause_in_made)
        tpio_pause_reading(t);
}

static void lost(tpio_protocol_t *bp, int err)
{
    th_proto_t *p = P(bp);
    char buf[64];
    snprintf(buf, sizeof buf, "lost:%s", err ? tpio_err_name(err) : "0");
    ev(p, buf);
    p->lost = true;
    p->lost_err = err;
    p->t = NULL;
    if (p->lost_flag)
        *p->lost_flag = true;
    if (p->lost_counter)
        (*p->lost_counter)++;
    if (p->free_on_lost)
        th_proto_free(p);
}

static void on_data(th_proto_t *p, const void *d, size_t n)
{
    append_rx(p, d, n);
    if (p->echo && p->t)
        tpio_write(p->t, d, n);
    if (p->close_on_data && p->t)
        tpio_close(p->t);
}

static void data(tpio_protocol_t *bp, const void *d, size_t n)
{
    th_proto_t *p = P(bp);
    ev(p, "data");
    on_data(p, d, n);
}

static bool eof(tpio_protocol_t *bp)
{
    th_proto_t *p = P(bp);
    ev(p, "eof");
    p->eof = true;
    return p->eof_ret;
}

static void pausew(tpio_protocol_t *bp) { P(bp)->pauses++; ev(P(bp), "pause"); }
static void resumew(tpio_protocol_t *bp) { P(bp)->resumes++; ev(P(bp), "resume"); }

static void *getbuf(tpio_protocol_t *bp, ssize_t hint, size_t *len)
{
    th_proto_t *p = P(bp);
    (void)hint;
    ev(p, "getbuf");
    *len = p->bufsize ? p->bufsize : sizeof p->bufmem;
    return p->bufmem;
}

static void updated(tpio_protocol_t *bp, size_t n)
{
    th_proto_t *p = P(bp);
    ev(p, "updated");
    on_data(p, p->bufmem, n);
}

const tpio_protocol_ops_t th_proto_ops = {
    .connection_made = made, .connection_lost = lost,
    .pause_writing = pausew, .resume_writing = resumew,
    .data_received = data, .eof_received = eof,
};

const tpio_protocol_ops_t th_buffered_proto_ops = {
    .connection_made = made, .connection_lost = lost,
    .pause_writing = pausew, .resume_writing = resumew,
    .get_buffer = getbuf, .buffer_updated = updated, .eof_received = eof,
};

th_proto_t *th_proto_new(const tpio_protocol_ops_t *ops)
{
    th_proto_t *p = calloc(1, sizeof *p);
    if (!p)
        abort();
    p->base.ops = ops ? ops : &th_proto_ops;
    return p;
}

void th_proto_free(th_proto_t *p)
{
    if (!p)
        return;
    free(p->rx);
    free(p);
}

tpio_protocol_t *th_factory(void *arg)
{
    th_proto_t *tmpl = arg;
    th_proto_t *p = th_proto_new(tmpl ? tmpl->base.ops : NULL);
    if (tmpl) {
        p->eof_ret = tmpl->eof_ret;
        p->echo = tmpl->echo;
        p->close_on_data = tmpl->close_on_data;
        p->pause_in_made = tmpl->pause_in_made;
        p->free_on_lost = tmpl->free_on_lost;
        p->lost_flag = tmpl->lost_flag;
        p->lost_counter = tmpl->lost_counter;
        p->bufsize = tmpl->bufsize;
    }
    return &p->base;
}
