/* The top layer: the loop's methods that make connections and servers
 * (asyncio's create_connection, create_server, connect_accepted_socket,
 * the Unix, pipe and datagram variants, subprocess_exec). It resolves and
 * binds addresses, connects and accepts, and hands each connected
 * descriptor to a constructor of the transport layer. */
#ifndef TPIO_CREATE_H
#define TPIO_CREATE_H

#include "tls/tls.h"

#define TPIO__DEFAULT_BACKLOG 100
/* asyncio's ACCEPT_RETRY_DELAY: pause accepting this long after EMFILE. */
#define TPIO__ACCEPT_RETRY_DELAY 1.0

/* The constructor for a connection with these TLS options (NULL: the stream
 * transport's); `host` is a client's default server_hostname. Whoever it is
 * given to below releases it, on failure too. */
TPIO__HIDDEN int tpio__ctor_for(const tpio_tls_opts_t *tls, bool server, const char *host,
                                const struct tpio__ctor **out);

/* Adopt a ready descriptor: the constructor runs from the loop (the factory
 * too, as in asyncio, never inside the user's call); a refusal or failure
 * closes the fd and the completion gets the error. From a 0 return on the
 * fd belongs to the library. */
TPIO__HIDDEN int tpio__adopt(tpio_loop_t *loop, int fd, tpio_transport_kind_t kind,
                             const struct tpio__ctor *ctor, const struct tpio__conn *conn,
                             tpio_handle_t *request);

/* A request waiting for its addresses (pending.c). The owner embeds it,
 * fills r's names and hints, and frees its own memory in release. */
struct tpio__pending {
    tpio_loop_t *loop;
    struct tpio__conn conn;
    struct tpio__resolve r;
    tpio_handle_t req; /* for tpio_loop_cancel */
    bool awaiting;     /* the addresses are still to come */
    bool cancelled;
    struct tpio__node cancel_node;
    void (*stop)(struct tpio__pending *p); /* cancel: end what is under way */
};
TPIO__HIDDEN int tpio__pending_init(struct tpio__pending *p, tpio_loop_t *loop,
                                    const struct tpio__conn *conn,
                                    void (*release)(struct tpio__resolve *),
                                    void (*stop)(struct tpio__pending *));
/* The addresses are here: true to go on, false when it was cancelled. */
TPIO__HIDDEN bool tpio__pending_arrived(struct tpio__pending *p);
/* Before the constructor runs (and the factory in it): the request is over,
 * a cancel from the factory finds nothing. */
TPIO__HIDDEN void tpio__pending_retire(struct tpio__pending *p);
/* The loop is done with it (the memory follows when no thread holds it). */
TPIO__HIDDEN void tpio__pending_end(struct tpio__pending *p);
/* End it with err for its completion. */
TPIO__HIDDEN void tpio__pending_fail(struct tpio__pending *p, int err);

/* A connected stream socket of the user's, as the client side. */
TPIO__HIDDEN int tpio__wrap_socket(tpio_loop_t *loop, tpio_protocol_factory_t factory,
                                   void *factory_arg, int sock, const tpio_tls_opts_t *tls,
                                   tpio_connect_cb_t cb, void *cb_arg, tpio_handle_t *request);

/* Connect to addresses known in advance (a Unix path; tests use it to try
 * a list without DNS); completion as for tpio_loop_create_connection. */
TPIO__HIDDEN int tpio__connect_addrs(tpio_loop_t *loop, const struct tpio__ctor *ctor,
                                     tpio_protocol_factory_t factory,
                                     void *factory_arg, const struct addrinfo *list,
                                     double happy_eyeballs_delay, tpio_connect_cb_t cb,
                                     void *cb_arg, tpio_handle_t *request);

/* Serve already bound sockets (listen() is called here), building each
 * accepted connection with ctor, which the server releases (on failure
 * too). On success the sockets belong to the server;
 * `unlink_path` (may be NULL) is removed at close if it still names the
 * socket file created by bind. */
TPIO__HIDDEN int tpio__server_new(tpio_loop_t *loop, const struct tpio__ctor *ctor,
                                  tpio_protocol_factory_t factory, void *factory_arg,
                                  const int *fds, size_t nfds, int backlog, bool start,
                                  const char *unlink_path, tpio_server_t **out);

/* Bind the hosts of a server's options: one listening socket per distinct
 * address, all undone on any error (listen.c). */
TPIO__HIDDEN int tpio__bind_hosts(const tpio_server_opts_t *o, int **fds, size_t *n);

#endif
