/*
 * HTTP/2 from clients: a layer above HTTP/1.1's transaction. A client
 * connection that speaks HTTP/2 (ALPN h2, or h2c by prior knowledge: the
 * connection preface on a listener with http2 = true) becomes a
 * CK_H2_CLIENT; each of its streams gets a connection slot of its own
 * (CK_H2_STREAM, no socket) whose receive queue holds the request as
 * HTTP/1.1 bytes (a head written from the HEADERS, the body from DATA), so
 * the stream is one ordinary transaction on the pooled HTTP/1.1 upstream
 * side: routing, balancing, retries, the access log and the counters are
 * the HTTP/1.1 ones. The transaction's sink (enum txn_sink) says its
 * response goes to a stream: it hands the stream connection up to the loop
 * (C_UP_KICK), which calls h2_stream_kick() here; the transaction never
 * calls this layer.
 *
 * The codec sits behind the h2c_* calls of h2_codec.c: for clients'
 * connections our own (h2_sess.h, feature h2_codec), toward upstreams
 * nghttp2. Either raises struct h2_ev events that h2_conn.c switches on,
 * and takes its memory from the worker's arena (core/arena.c).
 */
#ifndef UPROXY_H2_H
#define UPROXY_H2_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "core/worker.h"
#include "core/arena.h"
#include "http/http1_api.h"
#include "http/h1.h"

/* The settings every HTTP/2 connection announces (docs/http2.md). */
#define H2_MAX_STREAMS     128      /* SETTINGS_MAX_CONCURRENT_STREAMS */
#define H2_STREAM_WINDOW   65535    /* SETTINGS_INITIAL_WINDOW_SIZE (the default) */
#define H2_DEFLATE_TABLE   4096     /* our HPACK encoder's dynamic table, at most */
#define H2_GLITCHES        1000     /* empty DATA / useless frames before GOAWAY */
#define H2_HOLD_MS         2000     /* a client held for room this long is fed anyway */
#define H2_SCRATCH         (64u << 10)  /* our codec's per-worker scratch: a decoded string, a trailers block */

/* What the codec reports; h2_conn.c switches on kind. */
enum h2_ev_kind {
    H2E_BEGIN,        /* a request's HEADERS begin on a new stream */
    H2E_HEADER,       /* one field of it (name, value) */
    H2E_REQUEST,      /* its header block ended (end_stream: no body) */
    H2E_DATA,         /* request body bytes (buf, len) */
    H2E_END_STREAM,   /* the client's side of the stream ended */
    H2E_CLOSED,       /* the stream is closed (code: its error code) */
    H2E_READ,         /* the codec wants response body bytes into buf (len at most) */
    H2E_GLITCH,       /* a frame that does nothing (empty DATA, ...): counted */
    H2E_RESPONSE,     /* upstream: a header block ended (a response head or trailers) */
    H2E_GOAWAY,       /* GOAWAY received (stream: the last id the peer processes) */
    H2E_SETTINGS,     /* the peer's SETTINGS (n: its MAX_CONCURRENT_STREAMS) */
};

struct h2_ev {
    uint8_t kind;
    uint8_t end_stream;
    uint8_t eof;              /* H2E_READ: set when the body ended */
    uint8_t deferred;         /* H2E_READ: set when nothing is ready yet */
    uint8_t no_end;           /* H2E_READ with eof: trailers were submitted, they end it */
    int32_t stream;
    uint32_t sc;              /* the stream's connection, or NIL */
    const uint8_t *name, *value;
    size_t nlen, vlen;
    uint8_t *buf;             /* H2E_DATA: the bytes; H2E_READ: room for them */
    size_t len, n;            /* H2E_READ: n bytes written */
    uint32_t code;
};

/* One response header field for h2c_respond (lower-case names). */
struct h2_field {
    const uint8_t *name, *value;
    size_t nlen, vlen;
};

/* Per connection slot (indexed like w->conns): an HTTP/2 connection's
 * state, or a stream's. Cold: only HTTP/2 connections touch theirs. */
#define ST_LINE      1        /* stream: request line and Host written */
#define ST_CHUNKED   2        /* stream: the request body is sent chunked */
#define ST_CLEN      4        /* stream: the client gave content-length */
#define ST_HEAD      8        /* stream: response HEADERS submitted */
#define ST_EOF       16       /* stream: END_STREAM submitted */
#define ST_ENDED     32       /* stream: the client's side ended */
#define ST_DETACHED  64       /* stream: the codec forgot it */
#define ST_DEFERRED  128      /* stream: the codec waits for body bytes */
#define ST_BAD       256      /* stream: its head could not be written */
#define ST_REFUSED   512      /* stream: no slot for it; reset */
#define ST_FINAL     1024     /* upstream stream: the final response head is queued */
#define ST_INTERIM   2048     /* upstream stream: a 1xx head is being skipped */
#define ST_TE        4096     /* upstream stream: the client takes trailers (TE: trailers) */
#define ST_TRAILERS  8192     /* upstream stream: trailers kept in tbid */
#define ST_SUBMITTED 16384    /* upstream stream: its HEADERS are with the codec */
#define ST_GRPC      32768    /* client stream: content-type application/grpc* */
#define ST_DEADLINE  65536    /* client stream: its gRPC deadline passed mid-response */
#define CF_DRAIN     1        /* conn: GOAWAY sent (or received), ends when its streams do */
#define CF_CLOSE     2        /* conn: close once what is queued is out */
#define CF_UPSTREAM  4        /* conn: ours toward a server (h2_upstream.c) */
#define CF_READY     8        /* upstream conn: connected, TLS (ALPN h2) done */
#define CF_HELD      16       /* client conn: on the held list, waiting for room (h2_hold.c) */
#define CF_OWN       32       /* conn: its session is our codec's (h2_sess.h), not nghttp2's */

/* A client connection's scan of frame headers (h2_hold.c): where the next
 * frame starts, and the highest stream id a HEADERS frame has opened. */
struct h2_scan {
    uint32_t skip;            /* bytes of the preface or of a frame's payload still to pass */
    int32_t last_id;
    uint8_t hdr[9];           /* a frame header split between receives */
    uint8_t hlen;
};
struct h2_slot {
    void *session;            /* conn: the codec's session */
    struct worker *w;         /* the codec's callbacks find the worker here */
    uint32_t self;            /* this slot's connection */
    uint32_t owner;           /* stream: its connection */
    uint32_t snext, sprev;    /* stream: links in its connection's list */
    uint32_t streams;         /* conn: head of its streams' list */
    uint32_t nstreams;        /* conn: streams open */
    int32_t id;               /* stream: its id */
    uint32_t unconsumed;      /* stream: body bytes whose window is held back */
    uint32_t out_bid, out_len, out_off;   /* conn: the send buffer */
    const uint8_t *pend;      /* conn: codec output not yet copied out */
    size_t pend_len;
    uint32_t glitches;        /* conn */
    uint32_t flags;           /* ST_* or CF_* */
    /* stream: the request head being written into hbid */
    uint32_t hbid;
    uint16_t hlen, ptail;
    uint16_t m_off, m_len, p_off, p_len, a_off, a_len;
    uint16_t ck_end;          /* stream: where its one cookie line's value ends, 0: none yet */
    /* stream: the response body (de-chunked) or the proxy's own answer */
    struct h1_chunked ck;
    const uint8_t *rbody;
    uint32_t rleft;
    /* upstream conn: what its cluster gave it */
    void *tls;                /* the cluster's TLS client context, or NULL: h2c */
    uint32_t cap;             /* streams it takes: the least of max_streams and the server's */
    uint32_t max_streams;     /* the cluster's max_streams_per_connection */
    uint32_t max_idle, idle_ms;   /* the cluster's pool_max_idle, pool_idle_timeout */
    uint32_t max_req, nreq;   /* the cluster's max_requests (0: none); streams placed so far */
    /* upstream stream: the response's status and trailers (HTTP/1.1 lines) */
    uint32_t tbid;
    uint16_t tlen, status;
    /* client stream: a gRPC deadline (grpc-timeout), 0: none */
    uint64_t deadline_ms;
    /* client conn: backpressure (h2_hold.c) */
    struct h2_scan scan;
    uint64_t held_ms;         /* when it was held */
    uint32_t hnext;           /* the next on the held list */
};

struct h2_worker {
    struct arena arena;
    void *callbacks, *option;
    struct h2_slot *slots;
    uint64_t mem[8];          /* the codec's nghttp2_mem (opaque here) */
    uint8_t *scratch_in, *scratch_out;   /* our codec's (H2_SCRATCH each): decoding, trailers */
    uint32_t held_head, held_tail, nheld;  /* client connections waiting for room */
    uint32_t live;            /* client streams open on the worker */
};

static inline struct h2_slot *h2_slot_of(struct worker *w, const struct conn *c)
{
    return &((struct h2_worker *)w->h2)->slots[c - w->conns];
}

/* h2_codec.c: the codec's calls. Each session goes to our codec (h2_sess_*,
 * clients') or to nghttp2 (upstreams'); nothing else calls either. */
int h2c_worker_init(struct worker *w, struct h2_worker *hw);
void h2c_worker_free(struct h2_worker *hw);
int h2c_open(struct worker *w, struct h2_slot *s, uint32_t max_header_list, uint32_t max_streams);
void h2c_close(struct worker *w, struct h2_slot *s);
int h2c_recv(struct h2_slot *s, const uint8_t *p, size_t n);
ssize_t h2c_send(struct h2_slot *s, const uint8_t **p);
bool h2c_alive(struct h2_slot *s);
int h2c_respond(struct h2_slot *s, int32_t id, const struct h2_field *f, size_t nf, bool body);
void h2c_resume(struct h2_slot *s, int32_t id);
void h2c_reset(struct h2_slot *s, int32_t id, uint32_t code);
void h2c_consume(struct h2_slot *s, int32_t id, size_t n);
void h2c_goaway(struct h2_slot *s, uint32_t code);
void h2c_bind(struct h2_slot *s, int32_t id, uint32_t sc);
int h2c_trailers(struct h2_slot *s, int32_t id, const struct h2_field *f, size_t nf);
int h2c_open_upstream(struct worker *w, struct h2_slot *s);
int32_t h2c_request(struct h2_slot *s, const struct h2_field *f, size_t nf, bool body, uint32_t sc);
enum { H2C_NO_ERROR = 0, H2C_PROTOCOL_ERROR = 1, H2C_INTERNAL_ERROR = 2, H2C_REFUSED_STREAM = 7,
       H2C_CANCEL = 8, H2C_ENHANCE_YOUR_CALM = 11 };

/* h2_conn.c: called by the codec for each event (0 go on; 1 reset this
 * stream; -1 end the connection). */
int h2_on_event(struct worker *w, struct h2_slot *s, struct h2_ev *ev);

/* h2_conn.c: what the loop calls. */
int h2_worker_init(struct worker *w);
void h2_worker_free(struct worker *w);
void h2_adopt(struct worker *w, struct conn *c);
void h2_conn_cqe(struct worker *w, struct conn *c, enum op op, struct io_uring_cqe *cqe);
void h2_conn_expired(struct worker *w, struct conn *c);
void h2_conn_finish(struct worker *w, struct conn *c);
void h2_conn_cut(struct worker *w, struct conn *c);
void h2_flush(struct worker *w, struct conn *c);
/* The sends a stream's response left for the end of the loop turn: the
 * loop calls it once per turn, before it submits. Returns how many streams'
 * responses went in a send with another stream's (the sends the turn's
 * batching saved): the loop's wait batches only while this is not 0. */
uint32_t h2_flush_late(struct worker *w);
bool h2_out_buf(struct worker *w, struct h2_slot *s);
void h2_stream_kick(struct worker *w, struct conn *sc);
void h2_stream_finish(struct worker *w, struct conn *sc);
void h2_stream_detach(struct worker *w, struct conn *sc);
void h2_stop_all(struct worker *w);
void h2_stream_expired(struct worker *w, struct conn *sc);

/* h2_conn.c, for both directions: bytes into a stream connection's queue;
 * a round's body bytes into a codec buffer (de-chunked when chunked). */
bool h2_queue_put(struct worker *w, struct conn *sc, const uint8_t *p, size_t n);
size_t h2_round_read(struct out *o, bool chunked, struct h1_chunked *ck, uint8_t *buf,
                     size_t len);

/* h2_scan.c: a client's frame headers, scanned (pure, fuzzed). */
void h2_scan_init(struct h2_scan *sc);
size_t h2_scan(struct h2_scan *sc, const uint8_t *p, size_t n, uint32_t *budget);

/* h2_hold.c: backpressure. A client's bytes go to the codec through
 * h2_feed, which lets new streams open only while h2_room says there is
 * room; the loop resumes held connections with h2_resume_one. */
uint32_t h2_room(struct worker *w);
void h2_feed(struct worker *w, struct conn *c, bool force);
void h2_unhold(struct worker *w, struct conn *c);
bool h2_resume_one(struct worker *w);
uint32_t h2_held(struct worker *w);

/* h2_upstream.c: HTTP/2 to servers (protocol = "h2"). */
int h2_up_event(struct worker *w, struct h2_slot *s, struct h2_ev *ev);
void h2_up_cqe(struct worker *w, struct conn *pc, enum op op, struct io_uring_cqe *cqe);
void h2_up_expired(struct worker *w, struct conn *pc);
void h2_up_finish(struct worker *w, struct conn *pc);
void h2_up_end(struct worker *w, struct conn *pc);
void h2_up_stop_all(struct worker *w);
void h2_ustream_kick(struct worker *w, struct conn *u);
void h2_ustream_detach(struct worker *w, struct conn *u);
void h2_ustream_finish(struct worker *w, struct conn *u);

#endif
