/* The rules for descriptors and sockets that several callers share, each
 * stated once: what counts as a socket of a type, which transport kind a
 * stream socket gets, which options a new connection gets, how a Unix socket
 * address is built and when a socket file may be removed. */
#include "base/base.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

int tpio__set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0))
        return -errno;
    return 0;
}

int tpio__sock_check(int fd, int type)
{
    struct stat st;
    if (fd < 0)
        return -EBADF;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISSOCK(st.st_mode))
        return -ENOTSOCK;
    int got = 0;
    socklen_t len = sizeof got;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &got, &len) < 0)
        return -errno;
    return got == type ? 0 : -EPROTOTYPE;
}

tpio_transport_kind_t tpio__sock_kind(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)
            return TPIO_TRANSPORT_TCP;
        if (ss.ss_family == AF_UNIX)
            return TPIO_TRANSPORT_UNIX;
    }
    return TPIO_TRANSPORT_STREAM_SOCKET;
}

void tpio__sock_tune(int fd, tpio_transport_kind_t kind)
{
    if (kind == TPIO_TRANSPORT_TCP) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
}

int tpio__unix_addr(const char *path, size_t len, bool abstract, struct sockaddr_un *sun,
                    socklen_t *sunlen)
{
    if (!path)
        return -EINVAL;
    size_t n = len ? len : strlen(path);
    if (n == 0)
        return -EINVAL;
    /* An abstract name starts with a NUL byte and needs no terminator; a
     * path needs its NUL inside sun_path and cannot contain one: one byte
     * more than the name either way. */
    if (n + 1 > sizeof sun->sun_path)
        return -ENAMETOOLONG;
    if (!abstract && memchr(path, '\0', n))
        return -EINVAL;
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path + (abstract ? 1 : 0), path, n);
    *sunlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}

void tpio__unix_remove_stale(const struct sockaddr_un *sun, socklen_t len)
{
    if (len <= offsetof(struct sockaddr_un, sun_path) || sun->sun_path[0] == '\0')
        return;
    struct stat st;
    if (stat(sun->sun_path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(sun->sun_path);
}
