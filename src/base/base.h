/* The bottom layer: what every other layer may use and which knows nothing
 * of loops or transports — memory, error codes, lists, the rules for
 * sockets and descriptors, and starting a child process. */
#ifndef TPIO_BASE_H
#define TPIO_BASE_H

#include "tpio.h"

#include <errno.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/un.h>

#define TPIO__HIDDEN __attribute__((visibility("hidden")))

/* tpio's own error codes (TPIO_ERRORS) are all at or below this. */
#define TPIO__OWN_ERROR_BASE (-3000)

/* ---- memory: every allocation goes through tpio_set_allocator's table ---- */
TPIO__HIDDEN void *tpio__malloc(size_t n);
TPIO__HIDDEN void *tpio__calloc(size_t count, size_t n);
TPIO__HIDDEN void *tpio__realloc(void *p, size_t n);
TPIO__HIDDEN void tpio__free(void *p);
TPIO__HIDDEN char *tpio__strdup(const char *s);
/* `align` is a power of two; freed with tpio__aligned_free only. */
TPIO__HIDDEN void *tpio__aligned_alloc(size_t align, size_t n);
TPIO__HIDDEN void tpio__aligned_free(void *p);
/* Loops alive: the allocator may not change while memory of the old one is
 * held. */
TPIO__HIDDEN void tpio__allocator_hold(void);
TPIO__HIDDEN void tpio__allocator_release(void);

/* ---- options: copy a caller's options struct of any version -------------- */
/* Copy the caller's struct (its first member is its size) into *dst, the
 * struct as this library knows it: fields the caller's version lacks read as
 * zero; fields this library lacks must be zero (-ENOTSUP otherwise). `min`
 * is the size of the struct's first version. */
TPIO__HIDDEN int tpio__opts_copy(void *dst, size_t dst_size, size_t min, const void *src);
#define TPIO__OPTS_COPY(dst, src, first_version_size) \
    tpio__opts_copy((dst), sizeof *(dst), (first_version_size), (src))
/* A tpio_flag_t's meaning, or -EINVAL for a value that is none of the three. */
static inline int tpio__flag(tpio_flag_t f, bool dflt)
{
    return f == TPIO_DEFAULT ? dflt : f == TPIO_ON ? 1 : f == TPIO_OFF ? 0 : -EINVAL;
}

/* ---- errors ---------------------------------------------------------------- */
TPIO__HIDDEN int tpio__gai_error(int eai);

/* ---- intrusive doubly linked list --------------------------------------- */
struct tpio__list {
    struct tpio__list *prev, *next;
};
static inline void tpio__list_init(struct tpio__list *l) { l->prev = l->next = l; }
static inline bool tpio__list_empty(const struct tpio__list *l) { return l->next == l; }
static inline void tpio__list_add_tail(struct tpio__list *l, struct tpio__list *n)
{
    n->prev = l->prev;
    n->next = l;
    l->prev->next = n;
    l->prev = n;
}
static inline void tpio__list_del(struct tpio__list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

/* ---- descriptors and sockets: each rule in one place (sock.c) ------------ */
TPIO__HIDDEN int tpio__set_nonblock(int fd);
/* 0 if fd is a socket of `type` (SOCK_STREAM, SOCK_DGRAM); else -ENOTSOCK,
 * -EPROTOTYPE or the error of asking. */
TPIO__HIDDEN int tpio__sock_check(int fd, int type);
/* What a stream socket's transport is, from its family: TCP, UNIX or
 * STREAM_SOCKET. */
TPIO__HIDDEN tpio_transport_kind_t tpio__sock_kind(int fd);
/* The options a new connection of `kind` gets: TCP_NODELAY for TCP, as
 * asyncio sets it on every TCP transport. */
TPIO__HIDDEN void tpio__sock_tune(int fd, tpio_transport_kind_t kind);
/* A Unix socket address from a path (len 0: strlen) or, with `abstract`, a
 * name in the abstract namespace. -EINVAL (no path, an empty one, a NUL in a
 * path), -ENAMETOOLONG. */
TPIO__HIDDEN int tpio__unix_addr(const char *path, size_t len, bool abstract,
                                 struct sockaddr_un *sun, socklen_t *sunlen);
/* Before bind: a socket file left at the address by a dead process would
 * make bind fail; anything else there is left alone (bind then says
 * EADDRINUSE). Abstract names have no file. */
TPIO__HIDDEN void tpio__unix_remove_stale(const struct sockaddr_un *sun, socklen_t len);

/* ---- child processes (spawn.c) ------------------------------------------ */
struct tpio__spawn {
    const char *const *argv;  /* argv[0] is the program, searched in PATH */
    const char *const *envp;  /* NULL: the parent's environ */
    const char *cwd;          /* NULL: the parent's */
    int fds[3];               /* the child's 0, 1, 2 (-1: inherit); not closed */
    const int *keep;          /* kept open at the same number, CLOEXEC cleared: */
    size_t nkeep;             /*   open descriptors, any order, duplicates fine */
    bool setsid;              /* setsid() in the child */
    bool setpgid;             /* setpgid(0, pgid) in the child, after setsid */
    pid_t pgid;
    pid_t pid;                /* out */
    int pidfd;                /* out: CLOEXEC */
};
/* Start the child; a failure in the child (the exec's -ENOENT, -EACCES, ...,
 * chdir's, setsid's or setpgid's) is returned here, with the child already
 * reaped. Every descriptor other than 0, 1, 2 and keep is closed in the
 * child. */
TPIO__HIDDEN int tpio__spawn(struct tpio__spawn *s);
/* waitid on a pidfd: 1 and *code (exit status, or -signal) once reaped, 0 if
 * still running (nohang), or -errno. */
TPIO__HIDDEN int tpio__reap(int pidfd, bool nohang, int *code);

#endif
