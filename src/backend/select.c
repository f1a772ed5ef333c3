/* Which backend a loop gets: the option, else TPIO_BACKEND, else auto's
 * choice. auto is epoll until the io_uring backend is faster everywhere
 * (docs/performance.md says where it stands); io_uring asked for by name
 * is set up or refused, auto never fails for want of it. */
#include "backend/backend.h"

#include <stdlib.h>
#include <string.h>

static tpio_backend_t from_env(void)
{
    const char *v = getenv("TPIO_BACKEND");
    if (v && !strcmp(v, "epoll"))
        return TPIO_BACKEND_EPOLL;
    if (v && !strcmp(v, "io_uring"))
        return TPIO_BACKEND_IO_URING;
    return TPIO_BACKEND_AUTO;
}

int tpio__backend_open(tpio_backend_t which, struct tpio__backend **out)
{
    if (which == TPIO_BACKEND_AUTO)
        which = from_env();
    if (which == TPIO_BACKEND_IO_URING)
        return tpio__uring_open(out);
    return tpio__epoll_open(out);
}
