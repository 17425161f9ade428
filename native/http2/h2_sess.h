/*
 * Our HTTP/2 codec's session, the server side (a client connection):
 * frames in (h2_sess_in.c), frames out (h2_sess_out.c), HPACK (hpack.c)
 * and HTTP semantics (h2_msg.c). It keeps nghttp2's contract with
 * h2_conn.c: the same h2c_* calls and struct h2_ev events, raised at the
 * same moments (docs/http2.md, "The codec"), so the layer above does not
 * know which codec runs. Types here; no I/O: bytes in through hs_recv,
 * bytes out through hs_send.
 *
 * Memory: one session per connection from the worker's arena (its size
 * below), a header block's buffer only while a block spans receives, and
 * an output queue that grows to what the client leaves unread, bounded.
 */
#ifndef UPROXY_H2_SESS_H
#define UPROXY_H2_SESS_H
#include "http2/h2.h"
#include "http2/h2_wire.h"
#include "http2/h2_msg.h"
#include "http2/hpack.h"

#define HS_SLOTS      (H2_MAX_STREAMS + 16)  /* open streams, and closed ones whose close waits for the send */
#define HS_NONE       0xffff
#define HS_MAP        512                    /* id -> slot: open addressing, > 3x HS_SLOTS */
#define HS_BLOCK_MAX  (64u << 10)            /* a header block's bytes, CONTINUATIONs included */
#define HS_CONTINUATIONS 8                   /* CONTINUATION frames per block (CVE-2024-28182) */
#define HS_ACKS_MAX   1000                   /* SETTINGS and PING ACKs queued, not yet taken by a send */
#define HS_QUEUE_MAX  (1u << 20)             /* framed bytes queued, not yet taken */
#define HS_CHUNK      (32u << 10)            /* what one hs_send hands out, about */
#define HS_RESET_BURST 1000                  /* RST_STREAMs from the client before the rate applies */
#define HS_RESET_RATE  33                    /* ... then per second (CVE-2023-44487), as nghttp2's option */
#define HS_LIST_FACTOR 4                     /* a header list past this many times the limit is cut short */

/* stream flags */
#define SS_REMOTE_END 0x01        /* the client's side ended (END_STREAM) */
#define SS_LOCAL_END  0x02        /* ours ended: END_STREAM or RST_STREAM queued */
#define SS_BODY       0x04        /* our HEADERS went without END_STREAM: H2E_READ feeds the body */
#define SS_DEFERRED   0x08        /* the body had nothing: waits for hs_resume */
#define SS_READY      0x10        /* on the ready list */
#define SS_CLOSING    0x20        /* closed: reported (H2E_CLOSED) at the end of the next hs_send */
#define SS_RESPONDED  0x40        /* our HEADERS are queued */

struct hs_stream {
    int32_t id;                   /* 0: a free slot */
    uint32_t sc;                  /* what h2c_bind gave it: the stream's connection, or NIL */
    int32_t send_win;             /* DATA we may still send on it */
    int32_t recv_win;             /* DATA the client may still send on it */
    uint32_t unacked;             /* bytes consumed, not yet given back (WINDOW_UPDATE) */
    uint32_t code;                /* the error code its close reports */
    uint16_t flags;
    uint16_t prev, next;          /* the ready list (DATA to send), or the free list (next) */
    struct h2_msg msg;            /* its request's fields so far; content-length */
    uint64_t rcvd;                /* DATA bytes received */
};

enum hs_in { HI_PREFACE, HI_HEAD, HI_PAYLOAD };

struct hs {
    struct h2_slot *slot;         /* the connection's slot: events go to h2_on_event(slot->w, slot) */
    struct hpack_dec dec;
    struct hpack_enc enc;
    /* in */
    uint8_t in;                   /* enum hs_in */
    uint8_t hlen;                 /* bytes of a frame header (or the preface) so far */
    uint8_t hd[H2W_HEAD];
    uint8_t settled;              /* the client's first SETTINGS came */
    struct h2w_head f;            /* the frame being read */
    uint32_t left;                /* its payload bytes still to come */
    uint32_t pad;                 /* DATA: padding at its end, still to skip */
    uint8_t padded_need;          /* DATA: its pad length byte is still to come */
    uint8_t cbuf[200];            /* a control frame's payload (those we read are <= 192 bytes) */
    uint32_t clen;
    uint8_t *blk;                 /* a header block spanning frames or receives (arena), or NULL */
    uint32_t blen, bcap;
    int32_t bid;                  /* its stream, 0: none under way */
    uint8_t bflags;               /* its HEADERS' flags (END_STREAM) */
    uint8_t conts;                /* CONTINUATIONs so far */
    uint8_t braw;                 /* the HEADERS frame is gathered as it came (padding, priority) */
    int32_t last_id;              /* the highest stream id the client opened */
    int32_t last_proc;            /* the highest one given to the proxy (GOAWAY's last stream id) */
    /* windows */
    int32_t send_win;             /* connection: DATA we may still send */
    int32_t recv_win;             /* connection: DATA the client may still send */
    uint32_t unacked;             /* connection: consumed, not yet given back */
    int32_t init_send;            /* the client's SETTINGS_INITIAL_WINDOW_SIZE */
    uint32_t frame_max;           /* the client's SETTINGS_MAX_FRAME_SIZE */
    uint32_t max_header_list;     /* ours (the listener's max_header_size) */
    /* limits */
    uint32_t resets;              /* reset tokens left */
    uint64_t reset_ms;            /* when tokens were last added */
    uint32_t acks;                /* ACKs queued, not yet taken */
    /* out */
    uint8_t *q;                   /* framed bytes (arena): [0, qout) handed out, [qout, qlen) waiting */
    uint32_t qlen, qcap, qout;
    uint8_t *qold;                /* the queue the last hs_send handed out, when it had to grow since:
                                     kept until the next hs_send (the caller copies from it meanwhile) */
    uint16_t ready_head, ready_tail;
    uint16_t free_head;
    uint16_t nopen;               /* streams not closed */
    uint16_t max_streams;         /* ours: SETTINGS_MAX_CONCURRENT_STREAMS (<= H2_MAX_STREAMS) */
    uint16_t nclosing;
    uint16_t closing[HS_SLOTS];   /* reported at the end of the next hs_send */
    uint8_t goaway_sent, goaway_recv, term;   /* term: a connection error's GOAWAY: nothing more after it */
    uint8_t in_read;              /* inside H2E_READ: trailers wait in tq for the DATA frame */
    uint32_t tq_len;              /* (tq: the worker's scratch_out, hs_scratch) */
    uint16_t map[HS_MAP];         /* slot + 1, 0: empty */
    struct hs_stream st[HS_SLOTS];
};

/* h2_sess_out.c: what h2_sess_in.c uses */
struct hs_stream *hs_find(struct hs *h, int32_t id);
struct hs_stream *hs_new_stream(struct hs *h, int32_t id);
void hs_ready(struct hs *h, struct hs_stream *st);
void hs_unready(struct hs *h, struct hs_stream *st);
void hs_free_stream(struct hs *h, struct hs_stream *st);
void hs_close_stream(struct hs *h, struct hs_stream *st, uint32_t code);
void hs_maybe_close(struct hs *h, struct hs_stream *st);
int hs_frame(struct hs *h, uint8_t type, uint8_t flags, int32_t id, const void *p, uint32_t n);
int hs_rst(struct hs *h, struct hs_stream *st, int32_t id, uint32_t code);   /* st may be NULL */
void hs_fail(struct hs *h, uint32_t code);
int hs_goaway_frame(struct hs *h, int32_t last, uint32_t code);
void hs_window_back(struct hs *h, struct hs_stream *st, uint32_t n);
int hs_emit(struct hs *h, struct h2_ev *ev);
uint8_t *hs_scratch(struct hs *h, size_t *cap);

/* the codec's calls, server side (h2_codec.c routes h2c_* here) */
int hs_open(struct worker *w, struct h2_slot *s, uint32_t max_header_list, uint32_t max_streams);
void hs_close(struct worker *w, struct h2_slot *s);
int hs_recv(struct h2_slot *s, const uint8_t *p, size_t n);
ssize_t hs_send(struct h2_slot *s, const uint8_t **p);
bool hs_alive(struct h2_slot *s);
int hs_respond(struct h2_slot *s, int32_t id, const struct h2_field *f, size_t nf, bool body);
int hs_trailers(struct h2_slot *s, int32_t id, const struct h2_field *f, size_t nf);
void hs_resume(struct h2_slot *s, int32_t id);
void hs_reset(struct h2_slot *s, int32_t id, uint32_t code);
void hs_consume(struct h2_slot *s, int32_t id, size_t n);
void hs_goaway(struct h2_slot *s, uint32_t code);
void hs_bind(struct h2_slot *s, int32_t id, uint32_t sc);

#endif
