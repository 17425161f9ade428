/*
 * HTTP/2 connections and their streams (h2.h). A connection feeds what it
 * receives to the codec and sends what the codec writes, one send at a
 * time from one buffer of the pool; events from the codec open streams,
 * write their requests as HTTP/1.1 into the stream connection's queue and
 * start one transaction each. A transaction's response comes back through
 * h2_stream_kick(): its head becomes a HEADERS frame, its body (de-chunked)
 * DATA frames as the client's windows allow. A client that does not read
 * holds its one send buffer and its streams' rounds, nothing more: the
 * upstream connections behind them stop being read (their queue limit).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <string.h>
#include <sys/mman.h>
#include "http2/h2.h"
#include "http/h1.h"

static struct h2_worker *hw_of(struct worker *w)
{
    return w->h2;
}

int h2_worker_init(struct worker *w)
{
    struct h2_worker *hw = calloc(1, sizeof *hw);
    if (!hw)
        return -1;
    w->h2 = hw;
    hw->held_head = hw->held_tail = NIL;
    hw->slots = mmap(NULL, sizeof(struct h2_slot) * w->nconns, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (hw->slots == MAP_FAILED) {
        hw->slots = NULL;
        return -1;
    }
    /* The codec's memory: reserved here, committed as connections use it,
     * reused through the arena's free lists (docs/http2.md has the sizes). */
    size_t per = 160u << 10;
    if (arena_init(&hw->arena, (size_t)(w->nconns / 2 + 64) * per) < 0)
        return -1;
    return h2c_worker_init(w, hw);
}

void h2_worker_free(struct worker *w)
{
    struct h2_worker *hw = hw_of(w);
    if (!hw)
        return;
    h2c_worker_free(hw);
    arena_free_all(&hw->arena);
    if (hw->slots)
        munmap(hw->slots, sizeof(struct h2_slot) * w->nconns);
    free(hw);
    w->h2 = NULL;
}

/* ---- the connection --------------------------------------------------- */

static void conn_end(struct worker *w, struct conn *c);
static void arena_gauges(struct worker *w);

void h2_adopt(struct worker *w, struct conn *c)
{
    struct h2_slot *s = h2_slot_of(w, c);
    const struct up_listener *l = conn_listener(w, c);
    memset(s, 0, sizeof *s);
    s->w = w;
    s->self = (uint32_t)(c - w->conns);
    s->streams = NIL;
    s->out_bid = NIL;
    s->hnext = NIL;
    h2_scan_init(&s->scan);
    w->c[UP_C_H2_CONNECTIONS]++;
    uint32_t hl = l ? l->max_head : 16384;
    if (hl > w->bufs.size - 1024)
        hl = w->bufs.size - 1024;     /* a head is written into one buffer */
    /* The listener's http2_max_concurrent_streams (config.py keeps it in
     * 1..H2_MAX_STREAMS; 0 where no one set it). */
    uint32_t ms = l && l->h2_max_streams ? l->h2_max_streams : H2_MAX_STREAMS;
    if (!l || h2c_open(w, s, hl, ms) < 0) {
        h1_client_close(w, c, true);
        return;
    }
    timer_set(w, c, w->now_ms + l->keepalive_timeout_ms);
    arena_gauges(w);
    /* What came before the switch (the preface, perhaps the first frames),
     * as far as there is room for the streams it opens (h2_hold.c). */
    h2_feed(w, c, false);
    if (c->state == CS_OPEN) {
        h2_flush(w, c);
        h1_recv_arm(w, c);
    }
}

/* The connection's send buffer: one of the pool's stack, or an assembly
 * buffer when the kernel holds the pool's free ones (a small pool gives
 * the kernel all of them until the worker first takes one). */
bool h2_out_buf(struct worker *w, struct h2_slot *s)
{
    if (s->out_bid != NIL)
        return true;
    s->out_bid = bufpool_take(w);
    if (s->out_bid == NIL)
        s->out_bid = hbuf_get(w);
    s->out_len = s->out_off = 0;
    return s->out_bid != NIL;
}

/* A stream's response is in the codec: its client connection's send
 * waits for the end of the loop turn, so that the responses of its other
 * streams that complete in the same turn go out in the same send. On
 * loopback a send runs the receiver's TCP work in the sender's context:
 * each send saved is ~4-5 us of the worker's system time, against ~1.5 us
 * per request in all (docs/http2.md, "Where the CPU goes"). The streams
 * kicked are counted (a stream kicked again right after itself, a body in
 * pieces, once), so the loop learns whether streams shared sends. */
static void flush_late(struct worker *w, struct conn *c, struct conn *sc)
{
    if (c->kind != CK_H2_CLIENT) {
        h2_flush(w, c);
        return;
    }
    uint32_t si = (uint32_t)(sc - w->conns);
    if (si != w->late_last) {
        w->late_last = si;
        w->late_streams++;
    }
    if (c->flags & C_LATE)
        return;
    c->flags |= C_LATE;
    w->late[w->nlate++] = (uint32_t)(c - w->conns);
}

uint32_t h2_flush_late(struct worker *w)
{
    uint32_t sends = 0;
    for (uint32_t i = 0; i < w->nlate; i++) {
        struct conn *c = &w->conns[w->late[i]];
        /* (A slot closed and taken again meanwhile has lost the flag.) */
        if (c->kind != CK_H2_CLIENT || !(c->flags & C_LATE))
            continue;
        c->flags &= ~C_LATE;
        h2_flush(w, c);
        sends++;
    }
    uint32_t shared = w->late_streams > sends ? w->late_streams - sends : 0;
    w->nlate = w->late_streams = 0;
    w->late_last = NIL;
    return shared;
}

/* Send what the codec has written, one buffer at a time. */
void h2_flush(struct worker *w, struct conn *c)
{
    struct h2_slot *s = h2_slot_of(w, c);
    if ((s->flags & (CF_UPSTREAM | CF_READY)) == CF_UPSTREAM) {
        /* An upstream connection not ready yet sends nothing; one that
         * has nothing left to carry may still go. */
        if (c->state == CS_OPEN && (s->flags & CF_DRAIN) && !s->nstreams)
            conn_end(w, c);
        return;
    }
    if (c->state != CS_OPEN || !s->session || (c->ops & (1u << OP_SEND)))
        return;
    if (!h2_out_buf(w, s))
        return;                       /* retried at the next event of this connection */
    uint8_t *buf = buf_data(&w->bufs, s->out_bid);
    uint32_t cap = buf_cap(&w->bufs, s->out_bid);
    for (;;) {
        if (!s->pend_len) {
            const uint8_t *p;
            ssize_t n = h2c_send(s, &p);
            if (n < 0) {
                conn_end(w, c);
                return;
            }
            if (!n)
                break;
            s->pend = p;
            s->pend_len = (size_t)n;
        }
        size_t take = cap - s->out_len < s->pend_len ? cap - s->out_len : s->pend_len;
        memcpy(buf + s->out_len, s->pend, take);
        s->out_len += (uint32_t)take;
        s->pend += take;
        s->pend_len -= take;
        if (s->out_len == cap)
            break;
    }
    if (s->out_len) {
        tp_send(w, c, buf, s->out_len);
        return;
    }
    if ((s->flags & CF_CLOSE) || !h2c_alive(s) || ((s->flags & CF_DRAIN) && !s->nstreams))
        conn_end(w, c);
}

static void on_sent(struct worker *w, struct conn *c, struct io_uring_cqe *cqe)
{
    struct h2_slot *s = h2_slot_of(w, c);
    int res = tp_sent(w, c, cqe);
    if (c->state != CS_OPEN)
        return;
    bool up = c->kind == CK_H2_UPSTREAM;
    if (res < 0) {
        w->c[res == -ECONNRESET || res == -EPIPE
                 ? (up ? UP_C_ERR_UPSTREAM_RESET : UP_C_ERR_CLIENT_RESET) : UP_C_ERR_OTHER]++;
        conn_end(w, c);
        return;
    }
    w->c[up ? UP_C_BYTES_TO_UPSTREAMS : UP_C_BYTES_TO_CLIENTS] += (uint64_t)res;
    s->out_off += (uint32_t)res;
    if (s->out_off < s->out_len) {
        tp_send(w, c, buf_data(&w->bufs, s->out_bid) + s->out_off, s->out_len - s->out_off);
        return;
    }
    s->out_len = s->out_off = 0;
    h2_flush(w, c);
}

static void on_recv(struct worker *w, struct conn *c, struct io_uring_cqe *cqe)
{
    struct h2_slot *s = h2_slot_of(w, c);
    bool more = cqe->flags & IORING_CQE_F_MORE;
    uint32_t bid;
    int res = tp_received(w, c, cqe, &bid);
    if (bid != NIL) {
        if (c->state == CS_OPEN && res > 0 && s->session && !(s->flags & CF_CLOSE)) {
            w->c[UP_C_BYTES_FROM_CLIENTS] += (uint64_t)res;
            /* Through the queue: what has no room yet waits there. */
            q_push(w, c, bid, (uint32_t)res);
            if (!(c->x.flags & X_HELD))
                h2_feed(w, c, false);
        } else {
            bufpool_put(w, bid);
        }
    }
    if (c->state != CS_OPEN)
        return;
    if (res == 0) {
        c->x.flags |= X_EOF;
        conn_end(w, c);
        return;
    }
    if (res < 0 && res != -EAGAIN && res != -ECANCELED) {
        if (res == -ENOBUFS) {
            conn_starve(w, c);
            return;
        }
        w->c[res == -ECONNRESET ? UP_C_ERR_CLIENT_RESET : UP_C_ERR_OTHER]++;
        conn_end(w, c);
        return;
    }
    if (!s->nstreams && !(s->flags & CF_DRAIN)) {
        const struct up_listener *l = conn_listener(w, c);
        if (!l) {
            s->flags |= CF_DRAIN;     /* its listener left the configuration */
            h2c_goaway(s, H2C_NO_ERROR);
        } else {
            timer_set(w, c, w->now_ms + l->keepalive_timeout_ms);
        }
    }
    h2_flush(w, c);
    if (!more && c->state == CS_OPEN)
        h1_recv_arm(w, c);
}

void h2_conn_cqe(struct worker *w, struct conn *c, enum op op, struct io_uring_cqe *cqe)
{
    switch (op) {
    case OP_RECV:
        on_recv(w, c, cqe);
        break;
    case OP_SEND:
        on_sent(w, c, cqe);
        break;
    default:
        break;
    }
}

/* Idle past keepalive_timeout (no stream open): GOAWAY, then close. */
void h2_conn_expired(struct worker *w, struct conn *c)
{
    struct h2_slot *s = h2_slot_of(w, c);
    if (s->nstreams) {
        const struct up_listener *l = conn_listener(w, c);
        timer_set(w, c, w->now_ms + (l ? l->keepalive_timeout_ms : 10000));
        return;
    }
    if (!s->session || (s->flags & CF_CLOSE)) {
        conn_end(w, c);
        return;
    }
    h2c_goaway(s, H2C_NO_ERROR);
    s->flags |= CF_CLOSE;
    timer_set(w, c, w->now_ms + H1_REPLY_MS);
    h2_flush(w, c);
}

static void stream_unlink(struct worker *w, struct h2_slot *st);

/* The connection ends: its streams' transactions are aborted (their
 * upstream connections closed), the codec's session goes. */
static void conn_end(struct worker *w, struct conn *c)
{
    struct h2_slot *s = h2_slot_of(w, c);
    if (c->kind == CK_H2_UPSTREAM) {
        h2_up_end(w, c);
        return;
    }
    if (c->state != CS_OPEN)
        return;
    h2_unhold(w, c);
    while (s->streams != NIL) {
        struct conn *sc = &w->conns[s->streams];
        struct h2_slot *st = h2_slot_of(w, sc);
        stream_unlink(w, st);
        st->flags |= ST_DETACHED;
        struct txn *t = txn_of(w, sc);
        if (t && sc->h1 == H_TXN && t->rs != RS_ERROR)
            txn_abort(w, t, 0, false);
        else
            conn_close(w, sc, false);
    }
    h2c_close(w, s);
    h1_client_close(w, c, false);
}

void h2_conn_cut(struct worker *w, struct conn *c)
{
    conn_end(w, c);
}

void h2_conn_finish(struct worker *w, struct conn *c)
{
    struct h2_slot *s = h2_slot_of(w, c);
    h2_unhold(w, c);
    if (s->out_bid != NIL) {
        bufpool_put(w, s->out_bid);
        s->out_bid = NIL;
    }
    h2c_close(w, s);
    arena_gauges(w);
    h1_try_finish(w, c);
}

/* On SIGTERM: every HTTP/2 client gets GOAWAY with the last stream the
 * proxy took, finishes those, then closes. */
void h2_stop_all(struct worker *w)
{
    h2_up_stop_all(w);
    for (uint32_t i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (c->kind != CK_H2_CLIENT || c->state != CS_OPEN)
            continue;
        struct h2_slot *s = h2_slot_of(w, c);
        if (!s->session || (s->flags & CF_DRAIN))
            continue;
        s->flags |= CF_DRAIN;
        h2c_goaway(s, H2C_NO_ERROR);
        h2_flush(w, c);
    }
}

/* The arena's figures, as gauges (per connection, not per request). */
static void arena_gauges(struct worker *w)
{
    struct arena *a = &hw_of(w)->arena;
    w->c[UP_C_H2_ARENA_BYTES] = a->used;
    w->c[UP_C_H2_ARENA_ALLOCS] = a->allocs;
}

/* ---- streams ---------------------------------------------------------- */

static void stream_unlink(struct worker *w, struct h2_slot *st)
{
    struct h2_slot *s = &hw_of(w)->slots[st->owner];
    if (st->sprev != NIL)
        hw_of(w)->slots[st->sprev].snext = st->snext;
    else if (s->streams == st->self)
        s->streams = st->snext;
    if (st->snext != NIL)
        hw_of(w)->slots[st->snext].sprev = st->sprev;
    st->snext = st->sprev = NIL;
    if (s->nstreams && hw_of(w)->live)
        hw_of(w)->live--;
    if (s->nstreams && !--s->nstreams) {
        /* The last stream ended: the connection keeps time again. */
        struct conn *c = &w->conns[st->owner];
        const struct up_listener *l = conn_listener(w, c);
        if (c->state == CS_OPEN && !(s->flags & CF_CLOSE))
            timer_set(w, c, w->now_ms + (l ? l->keepalive_timeout_ms : 10000));
    }
}

static struct conn *stream_open(struct worker *w, struct conn *c, struct h2_slot *s, int32_t id)
{
    /* A stream needs its own slot, an upstream's and a transaction. */
    if (w->nfree < 2 || !w->ntxn_free || w->stopping || (s->flags & (CF_DRAIN | CF_CLOSE))) {
        return NULL;
    }
    /* The head is written into a buffer of the pool, or an assembly
     * buffer when the pool's stack is short (the kernel holds the rest);
     * once complete it moves to a small buffer (keep_head). */
    uint32_t hb = bufpool_take(w);
    if (hb == NIL)
        hb = hbuf_get(w);
    if (hb == NIL) {
        return NULL;
    }
    struct conn *sc = conn_alloc(w);
    sc->kind = CK_H2_STREAM;
    sc->state = CS_OPEN;
    sc->h1 = H_IDLE;
    sc->slot = s->self;               /* its connection: the wire (h1_wire) */
    conn_client_part(sc, c->listener_id, c->cluster);
    sc->listener = c->listener;
    sc->lslot = c->lslot;
    *conn_addr(w, sc) = *conn_addr(w, c);
    struct h2_slot *st = h2_slot_of(w, sc);
    memset(st, 0, sizeof *st);
    st->w = w;
    st->self = (uint32_t)(sc - w->conns);
    st->owner = s->self;
    st->id = id;
    st->hbid = hb;
    uint32_t cap = buf_cap(&w->bufs, hb);
    st->ptail = (uint16_t)(cap > 65535 ? 65535 : cap);    /* (a head is at most 32 KiB) */
    st->out_bid = NIL;
    st->streams = NIL;
    st->sprev = NIL;
    st->snext = s->streams;
    if (s->streams != NIL)
        hw_of(w)->slots[s->streams].sprev = st->self;
    s->streams = st->self;
    s->nstreams++;
    hw_of(w)->live++;
    w->c[UP_C_H2_STREAMS]++;
    timer_cancel(w, c);               /* the streams keep time now */
    return sc;
}

static bool put(struct worker *w, struct h2_slot *st, const void *p, size_t n)
{
    if ((size_t)st->hlen + n > st->ptail)
        return false;
    memcpy(buf_data(&w->bufs, st->hbid) + st->hlen, p, n);
    st->hlen = (uint16_t)(st->hlen + n);
    return true;
}

/* A pseudo-header's value, kept at the buffer's end until the request
 * line can be written (they all come before the first regular field). */
static bool keep(struct worker *w, struct h2_slot *st, const uint8_t *v, size_t n, uint16_t *off,
                 uint16_t *len)
{
    if (st->hlen + n > st->ptail)
        return false;
    st->ptail = (uint16_t)(st->ptail - n);
    memcpy(buf_data(&w->bufs, st->hbid) + st->ptail, v, n);
    *off = st->ptail;
    *len = (uint16_t)n;
    return true;
}

static bool request_line(struct worker *w, struct h2_slot *st)
{
    if (st->flags & ST_LINE)
        return true;
    st->flags |= ST_LINE;
    const uint8_t *b = buf_data(&w->bufs, st->hbid);
    /* The line goes at the start, the values are at the end: they never
     * overlap while hlen stays below ptail (put checks). */
    bool ok = put(w, st, b + st->m_off, st->m_len) && put(w, st, " ", 1) &&
              put(w, st, b + st->p_off, st->p_len) && put(w, st, " HTTP/1.1\r\n", 11);
    if (ok && st->a_len)
        ok = put(w, st, "Host: ", 6) && put(w, st, b + st->a_off, st->a_len) &&
             put(w, st, "\r\n", 2);
    return ok;
}

/* A cookie field. A client may split its cookies into several fields
 * (browsers do, so that HPACK indexes each crumb); before HTTP/1.1 they
 * become one line, joined with "; " (RFC 9113 8.2.3), since an origin
 * may read only the first Cookie line (RFC 6265 5.4 allows only one).
 * The first crumb writes the line; each later one is inserted at its end,
 * moving the lines written since (a head is at most a buffer). A field's
 * value never ends in a space (h2_msg.c refuses one), so a line whose
 * value is empty so far ends in ": ". */
static bool cookie(struct worker *w, struct h2_slot *st, const uint8_t *v, size_t n)
{
    if (!st->ck_end) {
        if (!put(w, st, "cookie: ", 8) || !put(w, st, v, n))
            return false;
        st->ck_end = st->hlen;
        return put(w, st, "\r\n", 2);
    }
    if (!n)
        return true;
    uint8_t *b = buf_data(&w->bufs, st->hbid);
    size_t sep = b[st->ck_end - 1] == ' ' ? 0 : 2;
    if ((size_t)st->hlen + sep + n > st->ptail)
        return false;
    uint8_t *at = b + st->ck_end;
    memmove(at + sep + n, at, (size_t)(st->hlen - st->ck_end));
    memcpy(at, "; ", sep);
    memcpy(at + sep, v, n);
    st->hlen = (uint16_t)(st->hlen + sep + n);
    st->ck_end = (uint16_t)(st->ck_end + sep + n);
    return true;
}

/* (A literal's length is known at compile time: the length is compared
 * first, and most fields differ there.) */
#define name_is(ev, lit) ((ev)->nlen == sizeof(lit) - 1 && !memcmp((ev)->name, lit, sizeof(lit) - 1))

/* grpc-timeout (gRPC over HTTP/2): at most 8 digits and a unit, H M S m
 * u n; in milliseconds, at least 1; 0 when malformed (then ignored). */
static uint64_t grpc_timeout_ms(const uint8_t *v, size_t n)
{
    if (n < 2 || n > 9)
        return 0;
    uint64_t x = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return 0;
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    switch (v[n - 1]) {
    case 'H': x *= 3600000; break;
    case 'M': x *= 60000; break;
    case 'S': x *= 1000; break;
    case 'm': break;
    case 'u': x /= 1000; break;
    case 'n': x /= 1000000; break;
    default: return 0;
    }
    return x ? x : 1;
}

static void on_header(struct worker *w, struct h2_slot *st, const struct h2_ev *ev)
{
    if (st->flags & ST_BAD)
        return;
    bool ok = true;
    if (ev->nlen && ev->name[0] == ':') {
        if (name_is(ev, ":method"))
            ok = keep(w, st, ev->value, ev->vlen, &st->m_off, &st->m_len);
        else if (name_is(ev, ":path"))
            ok = keep(w, st, ev->value, ev->vlen, &st->p_off, &st->p_len);
        else if (name_is(ev, ":authority"))
            ok = keep(w, st, ev->value, ev->vlen, &st->a_off, &st->a_len);
    } else {
        ok = request_line(w, st);
        if (name_is(ev, "content-type") && ev->vlen >= 16 &&
            !strncasecmp((const char *)ev->value, "application/grpc", 16))
            st->flags |= ST_GRPC;     /* the proxy's own answers become gRPC statuses */
        if (name_is(ev, "grpc-timeout")) {
            uint64_t ms = grpc_timeout_ms(ev->value, ev->vlen);
            if (ms)
                st->deadline_ms = w->now_ms + ms;
        }
        if (name_is(ev, "host") && st->a_len)
            return;                   /* :authority is the Host */
        if (name_is(ev, "content-length"))
            st->flags |= ST_CLEN;
        if (name_is(ev, "cookie")) {
            if (!(ok && cookie(w, st, ev->value, ev->vlen)))
                st->flags |= ST_BAD;
            return;
        }
        ok = ok && put(w, st, ev->name, ev->nlen) && put(w, st, ": ", 2) &&
             put(w, st, ev->value, ev->vlen) && put(w, st, "\r\n", 2);
    }
    if (!ok)
        st->flags |= ST_BAD;
}

static void status_text(char code[4], uint16_t status)
{
    code[0] = (char)('0' + status / 100 % 10);
    code[1] = (char)('0' + status / 10 % 10);
    code[2] = (char)('0' + status % 10);
    code[3] = 0;
}

static void reply_simple(struct worker *w, struct h2_slot *s, struct h2_slot *st, uint16_t status)
{
    char code[4];
    status_text(code, status);
    struct h2_field f = { (const uint8_t *)":status", (const uint8_t *)code, 7, 3 };
    st->flags |= ST_HEAD | ST_EOF;
    (void)w;
    h2c_respond(s, st->id, &f, 1, false);
}

/* The buffer the complete head stays in while the stream is in flight
 * (until the response's head, for a retry): a small buffer when it fits
 * and one is free, and the pool buffer it was written in goes back on top
 * of the stack, warm for the next stream's head. With 100 streams on each
 * of 16 connections the heads then take 1,600 small buffers, not most of
 * the pool, and receives keep theirs. */
static uint32_t keep_head(struct worker *w, struct h2_slot *st)
{
    uint32_t hb = st->hbid;
    if (st->hlen > SBUF_SIZE)
        return hb;
    uint32_t sb = sbuf_get(w);
    if (sb == NIL)
        return hb;
    memcpy(buf_data(&w->bufs, sb), buf_data(&w->bufs, hb), st->hlen);
    bufpool_put(w, hb);
    return sb;
}

/* The head is complete: it goes into the stream connection's queue and
 * starts a transaction like any HTTP/1.1 request. */
static void on_request(struct worker *w, struct conn *c, struct h2_slot *s, struct conn *sc,
                       bool end_stream)
{
    struct h2_slot *st = h2_slot_of(w, sc);
    const struct up_listener *l = conn_listener(w, c);
    bool ok = !(st->flags & ST_BAD) && request_line(w, st);
    if (end_stream)
        st->flags |= ST_ENDED;
    else if (!(st->flags & ST_CLEN)) {
        st->flags |= ST_CHUNKED;     /* a body of unknown length */
        ok = ok && put(w, st, "Transfer-Encoding: chunked\r\n", 28);
    }
    ok = ok && put(w, st, "\r\n", 2);
    if (!ok || !l) {
        w->c[UP_C_ERR_BAD_REQUEST]++;
        reply_simple(w, s, st, 431);
        return;
    }
    if (st->m_len == 7 && !memcmp(buf_data(&w->bufs, st->hbid) + st->m_off, "CONNECT", 7)) {
        reply_simple(w, s, st, 501);   /* no tunnels over HTTP/2 (yet) */
        return;
    }
    q_push(w, sc, keep_head(w, st), st->hlen);
    st->hbid = NIL;
    const uint8_t *p;
    uint32_t n = q_contiguous(w, sc, &p);
    struct h1_limits lim = { l->max_head, l->max_target, l->max_fields };
    struct h1_request *r = w_req(w);
    if (h1_parse_request(p, n, &lim, r) != H1_DONE) {
        w->c[UP_C_ERR_BAD_REQUEST]++;
        reply_simple(w, s, st, r->error_status ? r->error_status : 400);
        return;
    }
    if (l->idle_timeout_ms)
        timer_set(w, sc, w->now_ms + l->idle_timeout_ms);
    txn_begin(w, sc, p, sc->x.head, sc->x.off, r, l);
    struct txn *t = txn_of(w, sc);
    if (st->deadline_ms && t && sc->h1 == H_TXN) {
        /* A gRPC call's deadline bounds it: progress does not move it
         * (h2_stream_expired answers DEADLINE_EXCEEDED). */
        t->idle_ms = 0;
        timer_set(w, sc, st->deadline_ms);
    }
}

/* The stream's deadline passed: a gRPC call past its grpc-timeout ends
 * with 504 (DEADLINE_EXCEEDED to it), anything else as an HTTP/1.1
 * client's would. */
void h2_stream_expired(struct worker *w, struct conn *sc)
{
    struct h2_slot *st = h2_slot_of(w, sc);
    struct txn *t = txn_of(w, sc);
    if (st->deadline_ms && t && sc->h1 == H_TXN && w->now_ms >= st->deadline_ms) {
        w->c[UP_C_ERR_IDLE_TIMEOUT]++;
        if ((st->flags & (ST_GRPC | ST_HEAD | ST_EOF | ST_DETACHED)) == (ST_GRPC | ST_HEAD)) {
            /* The response is under way: trailers end it (on_read). */
            struct conn *c = &w->conns[st->owner];
            st->flags |= ST_DEADLINE;
            st->flags &= ~ST_DEFERRED;
            h2c_resume(h2_slot_of(w, c), st->id);
            h2_flush(w, c);
            return;
        }
        txn_abort(w, t, 504, false);
        return;
    }
    h1_client_expired(w, sc);
}

/* Request body bytes go into the stream connection's queue, framed as
 * chunks when the client gave no length; the window they took is given
 * back at once, or once the queue has drained below its limit. */
bool h2_queue_put(struct worker *w, struct conn *sc, const uint8_t *p, size_t n)
{
    struct bufpool *bp = &w->bufs;
    while (n) {
        uint32_t t = sc->x.tail;
        if (t == NIL || bp->len[t] == buf_cap(bp, t)) {
            t = bufpool_take(w);
            if (t == NIL)
                return false;
            q_push(w, sc, t, 0);
        }
        uint32_t room = buf_cap(bp, t) - bp->len[t];
        uint32_t k = n < room ? (uint32_t)n : room;
        memcpy(buf_data(bp, t) + bp->len[t], p, k);
        bp->len[t] += k;
        sc->x.queued += k;
        p += k;
        n -= k;
    }
    return true;
}

static void on_data(struct worker *w, struct h2_slot *s, struct conn *sc, const struct h2_ev *ev)
{
    struct h2_slot *st = h2_slot_of(w, sc);
    struct txn *t = txn_of(w, sc);
    if (!t || sc->h1 != H_TXN || rq_all_in(t->rq)) {
        h2c_consume(s, ev->stream, ev->len);   /* nobody wants it: dropped */
        return;
    }
    bool ok = true;
    if (st->flags & ST_CHUNKED) {
        char line[20];
        int k = snprintf(line, sizeof line, "%zx\r\n", ev->len);
        ok = h2_queue_put(w, sc, (const uint8_t *)line, (size_t)k) && h2_queue_put(w, sc, ev->buf, ev->len) &&
             h2_queue_put(w, sc, (const uint8_t *)"\r\n", 2);
    } else {
        ok = h2_queue_put(w, sc, ev->buf, ev->len);
    }
    if (!ok) {
        txn_abort(w, t, 503, false);
        return;
    }
    if (sc->x.queued > h1_queue_limit(w, sc) || (sc->x.flags & X_PAUSED)) {
        sc->x.flags |= X_PAUSED;       /* q_release_to clears it and kicks us */
        st->unconsumed += (uint32_t)ev->len;
    } else {
        h2c_consume(s, ev->stream, ev->len);
    }
    txn_touch(w, t);
    txn_req_pump(w, t);
}

static void on_end_stream(struct worker *w, struct conn *sc)
{
    struct h2_slot *st = h2_slot_of(w, sc);
    st->flags |= ST_ENDED;
    struct txn *t = txn_of(w, sc);
    if (!t || sc->h1 != H_TXN)
        return;
    if ((st->flags & ST_CHUNKED) && !h2_queue_put(w, sc, (const uint8_t *)"0\r\n\r\n", 5)) {
        txn_abort(w, t, 503, false);
        return;
    }
    txn_req_pump(w, t);
}

/* The codec closed the stream: its transaction, if one is still under
 * way, is over (the client reset it, or the connection ends). */
static void on_closed(struct worker *w, struct conn *sc)
{
    struct h2_slot *st = h2_slot_of(w, sc);
    if (st->flags & ST_DETACHED)
        return;
    stream_unlink(w, st);
    st->flags |= ST_DETACHED;
    if (sc->state != CS_OPEN)
        return;
    struct txn *t = txn_of(w, sc);
    if (t && sc->h1 == H_TXN && t->rs != RS_ERROR) {
        if (st->flags & ST_EOF) {
            /* The whole response is in the codec's hands (it closed the
             * stream as it sent the end): the transaction ends at its
             * kick, and its upstream connection goes back to the pool. */
            conn_hand_up(w, sc, C_UP_KICK);
            return;
        }
        w->c[UP_C_H2_RESETS]++;
        txn_abort(w, t, 0, false);
    } else {
        conn_close(w, sc, false);
    }
}

/* A round's body bytes (by reference into received buffers) into the
 * codec's buffer: at most len, de-chunked when the body is chunked. */
size_t h2_round_read(struct out *o, bool chunked, struct h1_chunked *ck, uint8_t *buf, size_t len)
{
    size_t n = 0;
    while (o->active && o->left && n < len) {
        struct iovec *v = &o->iov[o->first];
        const uint8_t *p = v->iov_base;
        size_t off = 0, dlen, used;
        if (chunked) {
            int done = 0;
            int64_t u = h1_chunked_data(ck, p, v->iov_len, len - n, &off, &dlen, &done);
            if (u <= 0) {
                /* (The transaction checked this framing already.) */
                out_advance(o, (uint32_t)v->iov_len);
                continue;
            }
            used = (size_t)u;
        } else {
            dlen = used = v->iov_len < len - n ? v->iov_len : len - n;
        }
        memcpy(buf + n, p + off, dlen);
        n += dlen;
        out_advance(o, (uint32_t)used);
    }
    return n;
}

/* An HTTP/2 upstream's trailers (grpc-status, ...), kept by its stream as
 * HTTP/1.1 lines, end this stream as a HEADERS frame. True when they do. */
static bool relay_trailers(struct worker *w, struct conn *sc, struct txn *t)
{
    if (t->up == NIL || w->conns[t->up].kind != CK_H2_USTREAM)
        return false;
    struct h2_slot *ut = h2_slot_of(w, &w->conns[t->up]);
    if (!(ut->flags & ST_TRAILERS) || ut->tbid == NIL)
        return false;
    struct h2_field f[64];
    size_t nf = 0;
    const uint8_t *p = buf_data(&w->bufs, ut->tbid), *end = p + ut->tlen;
    while (p < end && nf < 64) {
        const uint8_t *eol = memchr(p, '\r', (size_t)(end - p));
        const uint8_t *colon = eol ? memchr(p, ':', (size_t)(eol - p)) : NULL;
        if (!eol || !colon)
            break;
        const uint8_t *v = colon + 2 <= eol ? colon + 2 : eol;
        f[nf++] = (struct h2_field){ p, v, (size_t)(colon - p), (size_t)(eol - v) };
        p = eol + 2;
    }
    struct h2_slot *s = h2_slot_of(w, &w->conns[h2_slot_of(w, sc)->owner]);
    return nf && h2c_trailers(s, h2_slot_of(w, sc)->id, f, nf) == 0;
}

/* Body bytes for the codec: the proxy's own answer, or the transaction's
 * response round (a chunked body loses its framing on the way). */
static void on_read(struct worker *w, struct conn *sc, struct h2_ev *ev)
{
    struct h2_slot *st = h2_slot_of(w, sc);
    struct txn *t = txn_of(w, sc);
    if (st->rbody) {
        uint32_t k = st->rleft < ev->len ? st->rleft : (uint32_t)ev->len;
        memcpy(ev->buf, st->rbody, k);
        st->rbody += k;
        st->rleft -= k;
        ev->n = k;
        ev->eof = !st->rleft;
        if (ev->eof)
            st->flags |= ST_EOF;
        return;
    }
    if (!t || sc->h1 != H_TXN) {
        ev->eof = 1;                  /* the transaction ended: so does the body */
        st->flags |= ST_EOF;
        return;
    }
    if (st->flags & ST_DEADLINE) {
        /* The call's deadline passed after its head went: it ends here,
         * with DEADLINE_EXCEEDED in trailers (the rest is not relayed). */
        static const struct h2_field f[] = {
            { (const uint8_t *)"grpc-status", (const uint8_t *)"4", 11, 1 },
            { (const uint8_t *)"grpc-message", (const uint8_t *)"uproxy: deadline exceeded", 12, 25 },
        };
        struct h2_slot *s = h2_slot_of(w, &w->conns[st->owner]);
        ev->eof = 1;
        ev->no_end = h2c_trailers(s, st->id, f, 2) == 0;
        st->flags |= ST_EOF;
        return;
    }
    struct out *o = &t->resp;
    size_t n = o->active ? h2_round_read(o, t->resp_body == H1_BODY_CHUNKED || t->cz_slot, &st->ck, ev->buf,
                                         ev->len) : 0;
    ev->n = n;
    if (o->active && !o->left)
        conn_hand_up(w, sc, C_UP_KICK);   /* the round is out: the transaction goes on */
    if (!o->left && rs_all_in(t->rs)) {
        ev->eof = 1;
        st->flags |= ST_EOF;
        ev->no_end = relay_trailers(w, sc, t);
    } else if (!n) {
        st->flags |= ST_DEFERRED;
    }
}

int h2_on_event(struct worker *w, struct h2_slot *s, struct h2_ev *ev)
{
    if (s->flags & CF_UPSTREAM)
        return h2_up_event(w, s, ev);   /* a session of ours toward a server */
    struct conn *c = &w->conns[s->self];
    struct conn *sc = ev->sc == NIL ? NULL : &w->conns[ev->sc];
    if (sc && (sc->kind != CK_H2_STREAM || h2_slot_of(w, sc)->owner != s->self ||
               h2_slot_of(w, sc)->id != ev->stream))
        sc = NULL;                    /* a stale binding: the stream was forgotten */
    switch (ev->kind) {
    case H2E_BEGIN:
        sc = stream_open(w, c, s, ev->stream);
        if (!sc) {
            w->c[UP_C_H2_REFUSED]++;
            h2c_reset(s, ev->stream, H2C_REFUSED_STREAM);
            return 0;
        }
        h2c_bind(s, ev->stream, (uint32_t)(sc - w->conns));
        return 0;
    case H2E_HEADER:
        if (sc && sc->h1 == H_IDLE)
            on_header(w, h2_slot_of(w, sc), ev);
        return 0;
    case H2E_REQUEST:
        if (sc && sc->h1 == H_IDLE)
            on_request(w, c, s, sc, ev->end_stream);
        return 0;
    case H2E_DATA:
        if (sc)
            on_data(w, s, sc, ev);
        else
            h2c_consume(s, ev->stream, ev->len);
        return 0;
    case H2E_END_STREAM:
        if (sc)
            on_end_stream(w, sc);
        return 0;
    case H2E_CLOSED:
        if (sc)
            on_closed(w, sc);
        return 0;
    case H2E_READ:
        if (sc)
            on_read(w, sc, ev);
        else
            ev->eof = 1;
        return 0;
    case H2E_GLITCH:
        if (++s->glitches > H2_GLITCHES && !(s->flags & CF_CLOSE)) {
            w->c[UP_C_H2_FLOODS]++;
            h2c_goaway(s, H2C_ENHANCE_YOUR_CALM);
            s->flags |= CF_CLOSE;
            return -1;
        }
        return 0;
    case H2E_RESPONSE:
    case H2E_GOAWAY:
    case H2E_SETTINGS:
        return 0;
    }
    return 0;
}

/* The response head (at the front of the round, as the upstream sent it,
 * or the proxy's own answer) as a HEADERS frame: names in lower case,
 * hop-by-hop and HTTP/1.1 framing fields left out. */
static const struct { const char *name; uint8_t len; } DROP[] = {
    { "connection", 10 }, { "keep-alive", 10 }, { "proxy-connection", 16 },
    { "transfer-encoding", 17 }, { "upgrade", 7 }, { "te", 2 },
};

static bool dropped(const uint8_t *n, size_t k)
{
    for (size_t i = 0; i < sizeof DROP / sizeof DROP[0]; i++)
        if (DROP[i].len == k && !strncasecmp((const char *)n, DROP[i].name, k))
            return true;
    return false;
}

/* A field name into HTTP/2's lower case, eight bytes at a time (a name
 * byte at a time cost ten instructions; only ASCII A-Z change, so bytes
 * of 0x80 and above pass unchanged). */
static void lower_copy(uint8_t *dst, const uint8_t *src, size_t n)
{
    const uint64_t ones = 0x0101010101010101ull;
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        uint64_t x;
        memcpy(&x, src + k, 8);
        uint64_t low7 = x & (0x7f * ones);
        uint64_t above_z = low7 + (0x80 - 'Z' - 1) * ones;   /* high bit: byte > 'Z' */
        uint64_t from_a = low7 + (0x80 - 'A') * ones;        /* high bit: byte >= 'A' */
        uint64_t upper = ~x & (from_a ^ above_z) & (0x80 * ones);
        x |= upper >> 2;                                       /* 0x80 >> 2 = 0x20 */
        memcpy(dst + k, &x, 8);
    }
    for (; k < n; k++)
        dst[k] = (uint8_t)(src[k] | ((uint8_t)(src[k] - 'A') < 26u) << 5);
}

/* The route's response_headers set/add lines ("Name: value\r\n" in the
 * tables' strings, as an HTTP/1.1 client gets them) as fields: the name
 * lower-cased into low (after *used), the value by reference. */
static size_t policy_fields(const struct txn *t, struct h2_field *f, size_t nf, size_t max,
                            uint8_t *low, size_t *used)
{
    const struct up_config *cfg = t->cfg;
    const struct up_policy *pol = t->pol;
    for (uint32_t i = pol->resp_add_first; i < pol->resp_add_first + pol->resp_add_count; i++) {
        const struct up_step *s = &cfg->steps[i];
        const uint8_t *line = (const uint8_t *)cfg->strings + s->a_off;
        const uint8_t *colon = memchr(line, ':', s->a_len);
        if (!colon || s->a_len < 4 || nf >= max)
            continue;
        size_t k = (size_t)(colon - line);
        const uint8_t *v = colon + 1;
        const uint8_t *end = line + s->a_len - 2;    /* before its CRLF */
        while (v < end && *v == ' ')
            v++;
        if (*used + k > SCRATCH_SIZE)
            break;
        lower_copy(low + *used, line, k);
        f[nf++] = (struct h2_field){ low + *used, v, k, (size_t)(end - v) };
        *used += k;
    }
    return nf;
}

/* (t: the transaction whose upstream head this is, for its compression
 * and its route's response_headers; NULL for the proxy's own answers.) */
static int submit_head(struct worker *w, struct h2_slot *s, struct h2_slot *st,
                       const uint8_t *base, uint32_t len, uint8_t method, bool body,
                       uint32_t *head_len, const struct txn *t)
{
    static const struct h1_limits lim = { 0, 0, H1_MAX_HEADERS };
    /* The transaction parsed this head a moment ago (its kick follows the
     * upstream's receive in the same loop turn): that parse is reused
     * when the scratch still holds it, else the head is parsed again. */
    const struct h1_response *r = w_resp_of(w, base, len, method);
    if (!r) {
        struct h1_response *fresh = w_resp(w);
        if (h1_parse_response(base, len, &lim, method, fresh) != H1_DONE)
            return -1;
        r = fresh;
    }
    *head_len = r->head_len;
    struct h2_field f[260];
    uint8_t *low = w->scratch;        /* lower-cased names, one response at a time */
    size_t used = 0, nf = 0;
    char code[4];
    status_text(code, r->status);
    f[nf++] = (struct h2_field){ (const uint8_t *)":status", (const uint8_t *)code, 7, 3 };
    bool cz = t && t->cz_slot;        /* the body is compressed (h1_compress.c) */
    uint64_t rm = t && t->pol ? t->pol->resp_rm_lens : 0;  /* as build_resp_head's test */
    for (uint16_t i = 0; i < r->nheaders && nf < 256; i++) {
        const struct h1_header *h = &r->h[i];
        const uint8_t *n = base + h->name_off;
        if ((h->flags & H1_HF_HOP) || dropped(n, h->name_len) ||
            used + h->name_len + h->value_len + 2 > SCRATCH_SIZE)
            continue;
        bool etag = false;
        if (cz && cz_drops(base, h, &etag) && !etag)
            continue;                 /* Content-Length: of the uncompressed body */
        if (rm && ((rm >> (h->name_len & 63)) & 1) && pol_drop_resp(t, base, h))
            continue;                 /* response_headers remove (or set) names it */
        lower_copy(low + used, n, h->name_len);
        f[nf++] = (struct h2_field){ low + used, base + h->value_off, h->name_len, h->value_len };
        used += h->name_len;
        if (etag) {                   /* a strong ETag made weak: W/"..." */
            low[used] = 'W';
            low[used + 1] = '/';
            memcpy(low + used + 2, base + h->value_off, h->value_len);
            f[nf - 1].value = low + used;
            f[nf - 1].vlen = h->value_len + 2;
            used += h->value_len + 2;
        }
    }
    if (t && t->pol)
        nf = policy_fields(t, f, nf, 258, low, &used);
    if (t && t->cz_vary)
        f[nf++] = (struct h2_field){ (const uint8_t *)"vary", (const uint8_t *)"accept-encoding",
                                     4, 15 };
    if (cz)
        f[nf++] = (struct h2_field){ (const uint8_t *)"content-encoding",
                                     (const uint8_t *)(t->cz_alg == CZ_GZIP ? "gzip" : "zstd"),
                                     16, 4 };
    st->flags |= ST_HEAD | (body ? 0 : ST_EOF);
    return h2c_respond(s, st->id, f, nf, body);
}

/* The proxy's own answer to a gRPC call: a gRPC status in a trailers-only
 * response (HTTP 200, content-type application/grpc), as gRPC clients
 * expect, never an HTML or text page. */
static uint32_t grpc_status(uint16_t http)
{
    switch (http) {
    case 504: return 4;               /* DEADLINE_EXCEEDED: grpc-timeout or response_timeout */
    case 502:
    case 503:
    case 429: return 14;              /* UNAVAILABLE */
    case 413:
    case 431: return 8;               /* RESOURCE_EXHAUSTED */
    case 401: return 16;              /* UNAUTHENTICATED */
    case 403: return 7;               /* PERMISSION_DENIED */
    case 404:
    case 405:
    case 501: return 12;              /* UNIMPLEMENTED */
    case 400: return 13;              /* INTERNAL */
    default: return 2;                /* UNKNOWN */
    }
}

static void grpc_reply(struct h2_slot *s, struct h2_slot *st, struct txn *t)
{
    char code[3];
    uint32_t g = grpc_status(t->status);
    size_t cl = 0;
    if (g >= 10)
        code[cl++] = (char)('0' + g / 10);
    code[cl++] = (char)('0' + g % 10);
    /* The message: "uproxy: " and the reason line of the HTTP answer. */
    char msg[96] = "uproxy: ";
    size_t ml = 8;
    const char *r = t->reply, *end = t->reply + t->reply_len;
    if (t->reply_len > 9)
        for (r += 9; r < end && *r != '\r' && ml < sizeof msg; r++)
            msg[ml++] = *r;
    struct h2_field f[] = {
        { (const uint8_t *)":status", (const uint8_t *)"200", 7, 3 },
        { (const uint8_t *)"content-type", (const uint8_t *)"application/grpc", 12, 16 },
        { (const uint8_t *)"grpc-status", (const uint8_t *)code, 11, cl },
        { (const uint8_t *)"grpc-message", (const uint8_t *)msg, 12, ml },
    };
    st->flags |= ST_HEAD | ST_EOF;
    st->rbody = NULL;
    st->rleft = 0;
    if (h2c_respond(s, st->id, f, 4, false) < 0)
        h2c_reset(s, st->id, H2C_INTERNAL_ERROR);
}

/* The transaction moved (the loop hands the stream up, C_UP_KICK): a head
 * to submit, body bytes ready, a round the codec has taken, an answer of
 * the proxy's own, or the end. */
void h2_stream_kick(struct worker *w, struct conn *sc)
{
    struct h2_slot *st = h2_slot_of(w, sc);
    struct txn *t = txn_of(w, sc);
    if (st->flags & ST_DETACHED) {
        /* The stream closed after its last byte: its transaction finishes
         * (the round is out), then the stream's slot goes. */
        if (t && sc->h1 == H_TXN && (st->flags & ST_DEADLINE)) {
            txn_abort(w, t, 0, false);    /* its trailers are out: the upstream side goes */
            return;
        }
        if (t && sc->h1 == H_TXN && t->resp.active && !t->resp.left)
            txn_sent(w, t, &t->resp, sc, 0);
        if (sc->state == CS_OPEN && !txn_of(w, sc))
            conn_close(w, sc, false);
        return;
    }
    struct conn *c = &w->conns[st->owner];
    struct h2_slot *s = h2_slot_of(w, c);
    if (!s->session || c->state != CS_OPEN)
        return;
    if (st->unconsumed && !(sc->x.flags & X_PAUSED)) {
        h2c_consume(s, st->id, st->unconsumed);
        st->unconsumed = 0;
    }
    if (t && t->rs == RS_ERROR && !(st->flags & ST_HEAD) && (st->flags & ST_GRPC)) {
        grpc_reply(s, st, t);
    } else if (t && t->rs == RS_ERROR && !(st->flags & ST_HEAD)) {
        /* The proxy's own answer (an HTTP/1.1 text): its head and body. */
        uint32_t hl;
        if (submit_head(w, s, st, (const uint8_t *)t->reply, t->reply_len, H1_M_GET, true, &hl,
                        NULL) < 0)
            h2c_reset(s, st->id, H2C_INTERNAL_ERROR);
        st->rbody = (const uint8_t *)t->reply + hl;
        st->rleft = t->reply_len - hl;
    } else if (t && sc->h1 == H_TXN && rs_final_head(t->rs) && t->resp.active &&
               !(st->flags & ST_HEAD)) {
        struct out *o = &t->resp;
        uint32_t hl = 0;
        bool body = t->resp_body != H1_BODY_NONE && t->method != H1_M_HEAD;
        if (submit_head(w, s, st, o->iov[o->first].iov_base, (uint32_t)o->iov[o->first].iov_len,
                        t->method, body, &hl, t) < 0) {
            txn_abort(w, t, 502, false);
            h2_flush(w, c);
            return;
        }
        if (t->resp_body == H1_BODY_CHUNKED || t->cz_slot)
            h1_chunked_init(&st->ck);     /* (a compressed body comes as chunks) */
        out_advance(o, hl);
    }
    if (t && sc->h1 == H_TXN && t->resp.active && !t->resp.left && (st->flags & ST_HEAD)) {
        /* The round is all in the codec's hands: the transaction goes on
         * (the next round, or its end). */
        txn_sent(w, t, &t->resp, sc, 0);
        t = txn_of(w, sc);
    }
    if ((st->flags & (ST_HEAD | ST_EOF)) == ST_HEAD) {
        st->flags &= ~ST_DEFERRED;
        h2c_resume(s, st->id);
    }
    flush_late(w, c, sc);
}

/* The stream connection is closing with nothing outstanding: the codec
 * forgets it (a stream still open is reset), then it is finished with
 * its transaction's upstream connection like an HTTP/1.1 client. */
void h2_stream_detach(struct worker *w, struct conn *sc)
{
    struct h2_slot *st = h2_slot_of(w, sc);
    if (st->hbid != NIL)
        bufpool_put(w, st->hbid);
    st->hbid = NIL;
    if (st->flags & ST_DETACHED)
        return;
    st->flags |= ST_DETACHED;
    struct conn *c = &w->conns[st->owner];
    struct h2_slot *s = h2_slot_of(w, c);
    stream_unlink(w, st);
    if (s->session) {
        h2c_bind(s, st->id, NIL);
        h2c_reset(s, st->id, H2C_INTERNAL_ERROR);
        h2_flush(w, c);
    }
}

void h2_stream_finish(struct worker *w, struct conn *sc)
{
    h2_stream_detach(w, sc);
    if (sc->peer != NIL && w->conns[sc->peer].kind == CK_H2_USTREAM &&
        w->conns[sc->peer].state == CS_CLOSING)
        h2_ustream_detach(w, &w->conns[sc->peer]);   /* both are released together */
    struct conn *c = &w->conns[h2_slot_of(w, sc)->owner];
    struct h2_slot *s = h2_slot_of(w, c);
    if (c->kind == CK_H2_CLIENT && c->state == CS_OPEN && (s->flags & CF_DRAIN) && !s->nstreams)
        h2_flush(w, c);               /* the last stream of a draining connection */
    h1_try_finish(w, sc);
}
