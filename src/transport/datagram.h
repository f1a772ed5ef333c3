/* The datagram transport's own header, shared by datagram.c (the
 * transport, and its I/O on a readiness backend) and datagram_ops.c (the
 * kernel's receives and sends: io_uring). */
#ifndef TPIO_DATAGRAM_H
#define TPIO_DATAGRAM_H

#include "transport/transport.h"

#include <sys/socket.h>
#include <sys/uio.h>

/* asyncio 3.13 counts a header per queued datagram so that empty datagrams
 * still weigh on flow control. */
#define DGRAM_HEADER 8

struct dq {
    struct dq *next;
    size_t len;
    socklen_t alen;
    int err; /* ops, held: an error met while reading was paused (no data) */
    struct sockaddr_storage addr;
    struct msghdr msg; /* ops: what the send in flight names */
    struct iovec iov;
    unsigned char data[];
};

struct dgram {
    struct tpio_transport base;
    struct tpio__io io;
    struct dq *qhead, *qtail; /* base.wsize counts them, headers included */
    struct sockaddr_storage peer, self;
    socklen_t peerlen, selflen; /* peerlen 0: not connected */
    /* ops: the receive and the send in flight (the send reads qhead), and
     * what came while reading was paused, delivered after resume_reading */
    bool ops, rstop, held_queued;
    struct tpio__op rop, wop;
    struct dq *hhead, *htail;
    struct tpio__node held_node;
};

#define D(t) ((struct dgram *)(t))

/* datagram.c */
/* The interest set (readiness) or the operations (ops) the state asks for. */
TPIO__HIDDEN void tpio__dgram_update_io(struct dgram *d);
/* error_received(err), unless the transport is ending. */
TPIO__HIDDEN void tpio__dgram_error(struct dgram *d, int err);
/* A datagram copied with its address (a queue's or a held one); NULL when
 * out of memory. */
TPIO__HIDDEN struct dq *tpio__dgram_dq_new(const void *data, size_t len,
                                           const struct sockaddr *addr, socklen_t alen);
/* An operation is in flight (connection_lost waits for it). */
TPIO__HIDDEN bool tpio__dgram_busy(const tpio_transport_t *t);

/* datagram_ops.c */
TPIO__HIDDEN void tpio__dgram_update_ops(struct dgram *d);

#endif
