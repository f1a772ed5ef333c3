/* Descriptors the user hands over (connect_accepted_socket, sock=, pipes):
 * the constructor — and with it the factory — runs from the loop, never
 * inside the user's call, as in asyncio. */
#include "create/create.h"

#include <unistd.h>

struct adopt {
    int fd;
    tpio_transport_kind_t kind;
    const struct tpio__ctor *ctor;
    struct tpio__conn conn;
};

static void adopt_run(tpio_loop_t *loop, void *arg)
{
    struct adopt a = *(struct adopt *)arg;
    tpio__free(arg);
    tpio__loop_release(loop);
    tpio__fd_release(loop, a.fd); /* the transport claims it for good */
    int err = a.ctor->build(a.ctor, loop, a.fd, a.kind, NULL, 0, &a.conn);
    if (err) {
        close(a.fd);
        a.conn.cb(loop, NULL, NULL, err, a.conn.cb_arg);
    }
}

int tpio__adopt(tpio_loop_t *loop, int fd, tpio_transport_kind_t kind,
                const struct tpio__ctor *ctor, const struct tpio__conn *conn)
{
    struct adopt *a = tpio__malloc(sizeof *a);
    if (!a)
        return -ENOMEM;
    *a = (struct adopt){fd, kind, ctor, *conn};
    /* Claimed from now on: the same descriptor given twice is refused at
     * once, not closed under the first transport later. */
    int rc = tpio__fd_claim(loop, fd);
    if (rc == 0 && (rc = tpio_loop_call_soon(loop, adopt_run, a, NULL)) < 0)
        tpio__fd_release(loop, fd);
    if (rc < 0) {
        tpio__free(a);
        return rc;
    }
    tpio__loop_hold(loop);
    return 0;
}
