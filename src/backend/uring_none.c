/* A build without liburing (-DTPIO_URING=OFF): the io_uring backend is not
 * there; asking for it by name says so, auto runs epoll. */
#include "backend/backend.h"

int tpio__uring_open(struct tpio__backend **out)
{
    (void)out;
    return -ENOTSUP;
}
