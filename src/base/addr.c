/* Socket addresses printed the way asyncio prints them. */
#include "base/base.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

int tpio_format_addr(const struct sockaddr *addr, socklen_t len, char *buf, size_t buflen)
{
    if (!buf || buflen == 0)
        return -EINVAL;
    buf[0] = '\0';
    if (!addr)
        return -EINVAL;
    char ip[INET6_ADDRSTRLEN];
    int n;
    switch (addr->sa_family) {
    case AF_INET: {
        if (len < sizeof(struct sockaddr_in))
            return -EINVAL;
        const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        n = snprintf(buf, buflen, "('%s', %u)", ip, (unsigned)ntohs(a->sin_port));
        break;
    }
    case AF_INET6: {
        if (len < sizeof(struct sockaddr_in6))
            return -EINVAL;
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        n = snprintf(buf, buflen, "('%s', %u, %u, %u)", ip, (unsigned)ntohs(a->sin6_port),
                     (unsigned)ntohl(a->sin6_flowinfo), (unsigned)a->sin6_scope_id);
        break;
    }
    case AF_UNIX: {
        const struct sockaddr_un *a = (const struct sockaddr_un *)addr;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        size_t plen = len > off ? len - off : 0;
        if (plen > sizeof a->sun_path)
            plen = sizeof a->sun_path;
        if (plen > 0 && a->sun_path[0] == '\0') {
            /* abstract name: Python shows it as bytes, b'\x00name' */
            char tmp[sizeof a->sun_path * 4 + 8];
            size_t w = (size_t)snprintf(tmp, sizeof tmp, "b'\\x00");
            for (size_t i = 1; i < plen; i++) {
                unsigned char c = (unsigned char)a->sun_path[i];
                if (c >= 32 && c < 127 && c != '\'' && c != '\\')
                    tmp[w++] = (char)c;
                else
                    w += (size_t)snprintf(tmp + w, sizeof tmp - w, "\\x%02x", c);
            }
            tmp[w++] = '\'';
            tmp[w] = '\0';
            n = snprintf(buf, buflen, "%s", tmp);
            break;
        }
        n = snprintf(buf, buflen, "%.*s", (int)strnlen(a->sun_path, plen), a->sun_path);
        break;
    }
    default:
        return -EAFNOSUPPORT;
    }
    if (n < 0)
        return -EINVAL;
    return (size_t)n < buflen ? 0 : -ENOSPC;
}
