/*
 * A connection: one socket and the state the data path touches, nothing
 * else (names, configuration and counters live elsewhere). Connections come
 * from a per-worker slab sized at start; their index is what user_data
 * carries, so a completion finds its connection with one array access.
 */
#ifndef UPROXY_CONN_H
#define UPROXY_CONN_H
#include <stddef.h>
#include <stdint.h>
#include "api.h"

#define NIL UINT32_MAX

enum conn_kind {
    CK_FREE,
    CK_L4_CLIENT,
    CK_L4_UPSTREAM,
    CK_H1_CLIENT,
    CK_H1_UPSTREAM,
    CK_L4_HELLO,      /* an L4 client whose ClientHello will pick the cluster (SNI) */
    CK_H2_CLIENT,     /* a client connection speaking HTTP/2 (http2/) */
    CK_H2_STREAM,     /* one HTTP/2 stream: no socket, the client side of a transaction;
                         slot names its CK_H2_CLIENT connection */
    CK_H2_UPSTREAM,   /* an HTTP/2 connection to a server (a cluster with protocol = "h2") */
    CK_H2_USTREAM,    /* one stream on it: no socket, the upstream side of a transaction */
};

enum conn_state {
    CS_CONNECTING,    /* upstream: connect in flight; client: waiting for it */
    CS_OPEN,
    CS_CLOSING,       /* ops being cancelled; freed when none is left */
    CS_CLOSED,        /* close submitted */
};

/* Data read from this connection's socket, on its way to the peer. */
struct xfer {
    uint32_t head, tail;      /* queue of buffer ids (NIL: empty) */
    uint32_t queued;          /* bytes in the queue */
    uint32_t off;             /* bytes of the head buffer already sent */
    int32_t pipe;             /* splice: pipe index, or -1 for buffered */
    uint32_t in_pipe;         /* splice: bytes in the pipe not yet sent */
    uint32_t last_in;         /* splice: bytes the last splice-in moved */
    uint8_t flags;            /* X_* */
};

#define X_EOF      1      /* the socket said FIN */
#define X_SHUT     2      /* FIN passed on to the peer (shutdown done) */
#define X_PAUSED   4      /* receive stopped: queue over its limit */
#define X_STARVED  8      /* receive stopped: no free buffer */
#define X_FLUSH    16     /* sockmap: EOF seen, the FIN waits for the kernel's redirected bytes */
#define X_HELD     32     /* receive held while a body switches to splice */

/* A client's address (the socket's peer, or what a PROXY header named):
 * written once when the connection starts, read where a request names its
 * client (X-Forwarded-For, policies, hashing, the access log, a PROXY
 * header). It lives in the client side's part of struct conn, off the
 * first line: a side array beside the slab was measured to cost a D1 miss
 * per request (X-Forwarded-For reads it on every one) and 20 bytes more
 * per connection (docs/architecture.md, "Hot and cold"). */
struct conn_addr {
    uint8_t addr[16];         /* network bytes (4 used for IPv4) */
    uint16_t port;            /* host order */
    uint8_t len;              /* 4 or 16; 0 unknown */
    uint8_t pad;
};

/* Two cache lines, aligned: the first holds what every kind touches on
 * every completion (lifecycle, op accounting, the peer, the timer, the
 * listener); the second the received-bytes queue and, in a union, what
 * only one side uses (the client's address among them). A connection never changes side (an HTTP client that becomes a
 * tunnel stays a client), so the union's parts never meet; conn_alloc
 * fills the upstream part, each client's start fills its own. */
struct conn {
    /* line 1: every kind */
    _Alignas(64) uint8_t kind;  /* enum conn_kind */
    uint8_t state;            /* enum conn_state */
    uint16_t flags;           /* C_* */
    uint16_t ops;             /* bit per enum op outstanding (for cancel) */
    uint16_t inflight;        /* SQEs whose final CQE has not come */
    int32_t fd;
    uint32_t peer;            /* the other side of the session, or NIL */
    uint32_t txn;             /* http: the transaction under way, or NIL */
    uint32_t slot;            /* upstream: its server's stat slot (and pool);
                                 HTTP/2 stream: its connection */
    uint64_t expires_ms;      /* deadline, 0 for none; its meaning is the state's */
    uint32_t tnext, tprev;    /* timer wheel links */
    uint16_t tslot;           /* the wheel list this conn is on */
    uint8_t tp;               /* its transport kind (transport/transport.h) */
    uint8_t h1;               /* http: enum h1_conn_state */
    uint8_t attempts;         /* upstream connect attempts so far */
    uint8_t listener;         /* index in cfg->listeners (< UP_MAX_LISTENERS) */
    uint8_t lslot;            /* client: its listener's stat_slot */
    uint8_t fixed;            /* its socket is at its slot of the ring's file table (core/fixed.h) */
    uint32_t starved_next;
    uint32_t listener_id;     /* client: its listener, stable across reloads
                                 (conn_listener: every request) */
    const struct up_config *cfg;  /* tcp: the table the session started with */
    /* line 2: the byte queue, then one side's own fields */
    struct xfer x;            /* tcp: bytes on their way to the peer;
                                 http: bytes received, not yet released */
    union {
        struct {              /* upstream side (CK_*_UPSTREAM) */
            uint32_t server;  /* global server index, or NIL */
            uint32_t pnext, pprev;    /* http: idle pool links */
            uint32_t nreq;    /* http: requests it carried */
            uint64_t t_us;    /* when the connect started */
        };
        struct {              /* client side (and an HTTP/2 stream) */
            uint64_t hash_key;        /* tcp, balance = hash: the key's hash */
            uint32_t cluster; /* tcp: the session's cluster (the listener's, or an SNI route's) */
            struct conn_addr a;       /* its address (conn_addr()) */
        };
    };
};

/* A client side's own fields (the union's other part was there); its
 * address is the starter's to fill. */
static inline void conn_client_part(struct conn *c, uint32_t listener_id, uint32_t cluster)
{
    c->listener_id = listener_id;
    c->cluster = cluster;
    c->hash_key = 0;
}

_Static_assert(sizeof(struct conn) == 128, "struct conn is two cache lines");
_Static_assert(offsetof(struct conn, x) == 64, "the byte queue starts the second line");

#define C_RESET      1    /* close with RST (SO_LINGER 0) */
#define C_IN_WHEEL   2
#define C_SESSION    4    /* holds a session's references (client side) */
#define C_SERVER_REF 8    /* counted in its server's active count */
#define C_COUNTED    16   /* counted in its server's in_flight */
#define C_CFG_REF    32   /* holds a reference on cfg */
#define C_POOLED     64   /* upstream: idle in the pool */
#define C_ONEBUF     128  /* upstream: its last transaction was an HTTP/2 stream's, so
                             while idle it keeps a buffer's worth of receive armed (a
                             multishot one with a byte limit, or a single receive),
                             which the next stream can take as it is (no cancel) */
#define C_HEADRECV   256  /* upstream: receive heads alone (big bodies follow by splice) */
/* Handed up to the loop (conn_hand_up): the core never names a protocol,
 * so what only the connection's protocol can do waits for the loop. */
#define C_UP_FINISH  512  /* closing, nothing outstanding: finish it */
#define C_UP_ADOPT   1024 /* its kind changed: the new protocol takes it */
#define C_UP_KICK    4096 /* a protocol above has work on it: an HTTP/2 stream's
                             transaction moved (its response goes to the stream) */
#define C_HANDED_UP  (C_UP_FINISH | C_UP_ADOPT | C_UP_KICK)
#define C_PROXY_HDR  8192 /* tcp client: its PROXY header is awaited (l4/sni.c) */
#define C_SOCKMAP    2048 /* tcp: in the sockmap, the kernel moves its bytes (l4/sockmap.c) */
#define C_LATE       16384 /* on the worker's list of sends left for the end of the loop
                              turn (w->late; an HTTP/2 client's, h2_flush_late) */

#endif
