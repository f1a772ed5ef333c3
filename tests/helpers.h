/* Shared test helpers: a protocol that records its callbacks, and a way to
 * run the loop until a condition holds (never a sleep). */
#ifndef TPIO_TEST_HELPERS_H
#define TPIO_TEST_HELPERS_H
#include <tpio.h>
#include <stdbool.h>
#include <stddef.h>

/* Run the loop until *flag is true or `timeout` seconds pass. Returns *flag. */
bool th_run_until(tpio_loop_t *loop, const bool *flag, double timeout);
/* Same, for a counter reaching `target`. */
bool th_run_until_count(tpio_loop_t *loop, const size_t *count, size_t target,
                        double timeout);

/* A protocol that records every callback as a comma-separated event list:
 * "made", "data" (consecutive data_received calls coalesce into one),
 * "getbuf", "updated", "eof", "pause", "resume", "lost:<ERRNAME or 0>". */
typedef struct th_proto {
    tpio_protocol_t base;
    tpio_transport_t *t;
    char events[8192];
    size_t elen;
    unsigned char *rx;     /* everything received */
    size_t rxlen, rxcap;
    bool made, eof, lost;
    int lost_err;
    size_t pauses, resumes;
    /* behaviour knobs */
    bool eof_ret;          /* eof_received's answer */
    bool echo;             /* write back what arrives */
    bool close_on_data;    /* close() after the first data */
    bool pause_in_made;    /* pause_reading() inside connection_made */
    bool free_on_lost;     /* free itself in connection_lost */
    bool *lost_flag;       /* set true in connection_lost (if not NULL) */
    size_t *lost_counter;  /* incremented in connection_lost (if not NULL) */
    /* BufferedProtocol */
    unsigned char bufmem[65536];
    size_t bufsize;        /* size handed out by get_buffer (0 = sizeof bufmem) */
} th_proto_t;

extern const tpio_protocol_ops_t th_proto_ops;          /* Protocol */
extern const tpio_protocol_ops_t th_buffered_proto_ops; /* BufferedProtocol */

th_proto_t *th_proto_new(const tpio_protocol_ops_t *ops);
void th_proto_free(th_proto_t *p);
/* Factory: arg is a th_proto_t template whose knobs are copied. */
tpio_protocol_t *th_factory(void *arg);

#endif
