/*
 * Helpers shared by the examples (a header, so that each example stays one
 * program built from one .c file):
 *  - print_repr(): Python's repr() of a decoded str, so that the C examples
 *    print exactly what the specification's Python examples print;
 *  - parse_port().
 */
#ifndef TPIO_EXAMPLE_UTIL_H
#define TPIO_EXAMPLE_UTIL_H

#include <tpio.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s (n bytes available) and its code
 * point, or 0 if the bytes there are not valid UTF-8. */
static inline size_t utf8_decode(const unsigned char *s, size_t n, unsigned *cp)
{
    size_t len;
    unsigned c = s[0], min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xe0) == 0xc0) {
        len = 2, c &= 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3, c &= 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4, c &= 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return len;
}

/* Print data the way Python prints repr(data.decode()): single quotes unless
 * the text contains a single quote and no double quote; backslash, the quote,
 * \t \n \r and other non-printable characters escaped. (Bytes that are not
 * UTF-8 would make Python's decode() raise; they are shown as \xNN here.) */
static inline void print_repr(const void *data, size_t len)
{
    const unsigned char *s = data;
    char quote = '\'';
    if (memchr(s, '\'', len) && !memchr(s, '"', len))
        quote = '"';
    putchar(quote);
    for (size_t i = 0; i < len;) {
        unsigned cp;
        size_t n = utf8_decode(s + i, len - i, &cp);
        if (n == 0) {
            printf("\\x%02x", s[i]);
            i++;
            continue;
        }
        if (cp == (unsigned)quote || cp == '\\')
            printf("\\%c", (char)cp);
        else if (cp == '\t')
            fputs("\\t", stdout);
        else if (cp == '\n')
            fputs("\\n", stdout);
        else if (cp == '\r')
            fputs("\\r", stdout);
        else if (cp < 0x20 || (cp >= 0x7f && cp <= 0xa0) || cp == 0xad)
            printf("\\x%02x", cp);
        else
            fwrite(s + i, 1, n, stdout);
        i += n;
    }
    putchar(quote);
}

static inline int parse_port(const char *s, uint16_t *port)
{
    char *end;
    unsigned long v;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v > 65535)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

#endif
