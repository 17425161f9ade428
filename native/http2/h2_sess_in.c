/*
 * Our HTTP/2 session's incoming side (h2_sess.h): the client's bytes,
 * in whatever pieces they come, become frames, and frames become the
 * proxy's events (struct h2_ev) or answers queued by h2_sess_out.c.
 *
 * A DATA frame's payload goes up as it arrives, never buffered here. A
 * header block is decoded straight from the receive buffer when its
 * HEADERS frame is whole in it (the common case); one that spans frames or
 * receives is gathered first, bounded (HS_BLOCK_MAX, HS_CONTINUATIONS).
 * Every block is decoded, even one whose stream is ignored, so that the
 * HPACK table stays the client's. The errors are RFC 9113's: a connection
 * error queues GOAWAY and ends the session (hs_fail, -1), a stream error
 * resets one stream; the limits are nghttp2's options as h2_codec.c set
 * them (resets per second, CONTINUATIONs, SETTINGS entries, ACKs queued).
 */
#include <string.h>
#include "http2/h2_sess.h"

static int fail(struct hs *h, uint32_t code)
{
    hs_fail(h, code);
    return -1;
}

/* A callback failed (the proxy answered -1): the session ends, with
 * whatever the proxy queued (its GOAWAY). */
static int fatal(struct hs *h)
{
    h->term = 1;
    return -1;
}

/* An event a stream may refuse (> 0: reset it, the connection goes on). */
static int emit_or_reset(struct hs *h, struct hs_stream *st, struct h2_ev *ev)
{
    int r = hs_emit(h, ev);
    if (r < 0)
        return fatal(h);
    if (r > 0 && !(st->flags & SS_CLOSING))
        hs_rst(h, st, st->id, H2W_INTERNAL_ERROR);
    return 0;
}

static bool live(const struct hs_stream *st)
{
    return st && !(st->flags & SS_CLOSING);
}

/* ---- header blocks ---------------------------------------------------- */

/* Decode a whole block; report its fields to st's request when st is
 * live, else only keep the table in step. */
static int decode(struct hs *h, struct hs_stream *st, const uint8_t *p, const uint8_t *end, bool trailer)
{
    struct h2_worker *hw = h->slot->w->h2;
    uint64_t list = 0, most = (uint64_t)h->max_header_list * HS_LIST_FACTOR;
    struct hpack_field f;
    hpack_dec_begin(&h->dec);
    for (;;) {
        int r = hpack_decode(&h->dec, &p, end, &f, hw->scratch_in, H2_SCRATCH);
        if (r == HPACK_END)
            return 0;
        if (r < 0)
            return fail(h, r == HPACK_E_TOO_LONG ? H2W_ENHANCE_YOUR_CALM : H2W_COMPRESSION_ERROR);
        if (!live(st))
            continue;
        int m = h2_msg_field(&st->msg, f.name, f.nlen, f.value, f.vlen, trailer);
        if (m == H2M_DROP)
            continue;
        if (m == H2M_BAD) {
            hs_rst(h, st, st->id, H2W_PROTOCOL_ERROR);
            continue;
        }
        list += (uint64_t)f.nlen + f.vlen + 32;
        if (list > most) {            /* an HPACK bomb: cut short, not all reported */
            hs_rst(h, st, st->id, H2W_ENHANCE_YOUR_CALM);
            continue;
        }
        if (trailer)
            continue;                 /* a request's trailers are not passed on */
        struct h2_ev ev = { .kind = H2E_HEADER, .stream = st->id, .sc = st->sc, .name = f.name,
                            .nlen = f.nlen, .value = f.value, .vlen = f.vlen };
        if (emit_or_reset(h, st, &ev) < 0)
            return -1;
    }
}

/* A request's head on a new stream. */
static int new_stream(struct hs *h, int32_t id, uint8_t flags, const uint8_t *p, const uint8_t *end)
{
    h->last_id = id;
    struct hs_stream *st = NULL;
    if (h->goaway_sent)
        return decode(h, NULL, p, end, false);   /* after our GOAWAY: not taken */
    h->last_proc = id;
    if (h->nopen < h->max_streams)
        st = hs_new_stream(h, id);
    if (!st) {                        /* past SETTINGS_MAX_CONCURRENT_STREAMS */
        if (hs_rst(h, NULL, id, H2W_REFUSED_STREAM) < 0)
            return fail(h, H2W_INTERNAL_ERROR);
        return decode(h, NULL, p, end, false);
    }
    struct h2_ev ev = { .kind = H2E_BEGIN, .stream = id, .sc = NIL };
    if (hs_emit(h, &ev) < 0)
        return fatal(h);
    if (decode(h, st, p, end, false) < 0)
        return -1;
    if (!live(st))
        return 0;
    if (flags & H2W_END_STREAM) {
        st->flags |= SS_REMOTE_END;
        if (st->msg.clen != H2M_NONE && st->msg.clen != 0) {
            hs_rst(h, st, id, H2W_PROTOCOL_ERROR);
            return 0;
        }
    }
    if (h2_msg_head_end(&st->msg) != H2M_OK) {
        hs_rst(h, st, id, H2W_PROTOCOL_ERROR);
        return 0;
    }
    struct h2_ev rq = { .kind = H2E_REQUEST, .stream = id, .sc = st->sc,
                        .end_stream = (flags & H2W_END_STREAM) != 0 };
    return emit_or_reset(h, st, &rq);
}

/* A whole header block for stream id. */
static int block(struct hs *h, int32_t id, uint8_t flags, const uint8_t *p, const uint8_t *end)
{
    struct hs_stream *st = hs_find(h, id);
    if (!st) {
        if (id > h->last_id)
            return new_stream(h, id, flags, p, end);
        return decode(h, NULL, p, end, false);   /* a stream gone: late, ignored */
    }
    if (st->flags & SS_CLOSING)
        return decode(h, NULL, p, end, false);
    if (st->flags & SS_REMOTE_END) {
        if (decode(h, NULL, p, end, false) < 0)
            return -1;
        hs_rst(h, st, id, H2W_STREAM_CLOSED);
        return 0;
    }
    /* Trailers: they end the request. */
    if (!(flags & H2W_END_STREAM)) {
        if (decode(h, NULL, p, end, false) < 0)
            return -1;
        hs_rst(h, st, id, H2W_PROTOCOL_ERROR);
        return 0;
    }
    if (decode(h, st, p, end, true) < 0)
        return -1;
    if (!live(st))
        return 0;
    st->flags |= SS_REMOTE_END;
    if (st->msg.clen != H2M_NONE && st->msg.clen != st->rcvd) {
        hs_rst(h, st, id, H2W_PROTOCOL_ERROR);
        return 0;
    }
    struct h2_ev ev = { .kind = H2E_END_STREAM, .stream = id, .sc = st->sc, .end_stream = 1 };
    int r = emit_or_reset(h, st, &ev);
    if (!r)
        hs_maybe_close(h, st);
    return r;
}

/* Gather a fragment into the block buffer (arena), bounded. */
static int gather(struct hs *h, const uint8_t *p, uint32_t n)
{
    if (!n)
        return 0;
    if (h->blen + n > HS_BLOCK_MAX)
        return fail(h, H2W_ENHANCE_YOUR_CALM);
    if (h->blen + n > h->bcap) {
        uint32_t cap = h->bcap ? h->bcap : 4096;
        while (cap < h->blen + n)
            cap *= 2;
        uint8_t *b = arena_realloc(&((struct h2_worker *)h->slot->w->h2)->arena, h->blk, cap);
        if (!b)
            return fail(h, H2W_INTERNAL_ERROR);
        h->blk = b;
        h->bcap = cap;
    }
    memcpy(h->blk + h->blen, p, n);
    h->blen += n;
    return 0;
}

static void block_done(struct hs *h)
{
    h->bid = 0;
    h->conts = 0;
    h->blen = 0;
    if (h->blk && h->bcap > 4096) {   /* a big one goes back; a small one stays for the next */
        arena_release(&((struct h2_worker *)h->slot->w->h2)->arena, h->blk);
        h->blk = NULL;
        h->bcap = 0;
    }
}

/* A HEADERS frame's payload without its padding and priority fields:
 * [*from, *to), or -1 (a connection error). */
static int headers_fragment(struct hs *h, const uint8_t *pl, uint32_t len, uint32_t *from, uint32_t *to)
{
    uint32_t off = 0, pad = 0;
    if (h->f.flags & H2W_PADDED) {
        if (len < 1)
            return fail(h, H2W_FRAME_SIZE_ERROR);
        pad = pl[0];
        off = 1;
    }
    if (h->f.flags & H2W_PRIO) {
        if (len < off + 5)
            return fail(h, H2W_FRAME_SIZE_ERROR);
        off += 5;
    }
    if (off + pad > len)
        return fail(h, H2W_PROTOCOL_ERROR);
    *from = off;
    *to = len - pad;
    return 0;
}

/* A stream depending on itself (RFC 9113 5.3.1): a stream error. */
static bool self_dependent(const uint8_t *prio, int32_t id)
{
    return (int32_t)(h2w_u32(prio) & 0x7fffffff) == id;
}

#define BF_SELF 0x80              /* block flag: a stream depending on itself, its block only decoded */

/* The HEADERS frame's payload pl (whole): its block fragment [*a, *b),
 * and whether its priority names its own stream. */
static int headers_frame(struct hs *h, const uint8_t *pl, uint32_t len, uint32_t *a, uint32_t *b,
                         uint8_t *flags)
{
    if (headers_fragment(h, pl, len, a, b) < 0)
        return -1;
    *flags = h->f.flags;
    if ((h->f.flags & H2W_PRIO) && self_dependent(pl + *a - 5, h->f.id))
        *flags |= BF_SELF;
    return 0;
}

/* A whole block whose stream named itself as its dependency: a stream
 * error (RFC 9113 5.3.1); the block still decodes. */
static int self_block(struct hs *h, int32_t id, const uint8_t *p, const uint8_t *end)
{
    struct hs_stream *st = hs_find(h, id);
    if (!st && id > h->last_id)
        h->last_id = id;
    if (!st || !(st->flags & SS_CLOSING))
        hs_rst(h, st, id, H2W_PROTOCOL_ERROR);
    return decode(h, NULL, p, end, false);
}

static int block_any(struct hs *h, int32_t id, uint8_t flags, const uint8_t *p, const uint8_t *end)
{
    return (flags & BF_SELF) ? self_block(h, id, p, end) : block(h, id, flags, p, end);
}

/* The HEADERS frame is whole at pl: its block decodes from there, or
 * starts gathering when CONTINUATIONs follow. */
static int headers_whole(struct hs *h, const uint8_t *pl)
{
    uint32_t a, b;
    uint8_t fl;
    if (headers_frame(h, pl, h->f.len, &a, &b, &fl) < 0)
        return -1;
    if (h->f.flags & H2W_END_HEADERS)
        return block_any(h, h->f.id, fl, pl + a, pl + b);
    h->bid = h->f.id;
    h->bflags = fl;
    h->blen = 0;
    return gather(h, pl + a, b - a);
}

/* A gathered HEADERS frame ended: strip it to its fragment in place. */
static int headers_gathered(struct hs *h)
{
    uint32_t a, b;
    uint8_t fl;
    if (headers_frame(h, h->blk, h->blen, &a, &b, &fl) < 0)
        return -1;
    memmove(h->blk, h->blk + a, b - a);
    h->blen = b - a;
    h->bflags = fl;
    return 0;
}

static int block_end(struct hs *h)
{
    static const uint8_t none[1];
    const uint8_t *b = h->blk ? h->blk : none;    /* an empty block gathered nothing */
    int r = block_any(h, h->bid, h->bflags, b, b + h->blen);
    block_done(h);
    return r;
}

/* ---- control frames ------------------------------------------------- */

static int queue_ack(struct hs *h, uint8_t type, const uint8_t *p, uint32_t n)
{
    if (++h->acks > HS_ACKS_MAX)
        return fatal(h);              /* a flood whose ACKs the client does not read */
    if (hs_frame(h, type, H2W_ACK, 0, p, n) < 0)
        return fatal(h);
    return 0;
}

static void stream_may_send(struct hs *h, struct hs_stream *st)
{
    if ((st->flags & (SS_BODY | SS_DEFERRED | SS_CLOSING)) == SS_BODY && st->send_win > 0)
        hs_ready(h, st);
}

static int settings(struct hs *h, const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i + 6 <= n; i += 6) {
        uint16_t k = (uint16_t)(p[i] << 8 | p[i + 1]);
        uint32_t v = h2w_u32(p + i + 2);
        switch (k) {
        case H2W_S_HEADER_TABLE_SIZE:
            hpack_enc_limit(&h->enc, v);
            break;
        case H2W_S_ENABLE_PUSH:
            if (v > 1)
                return fail(h, H2W_PROTOCOL_ERROR);
            break;
        case H2W_S_INITIAL_WINDOW_SIZE: {
            if (v > H2W_WINDOW_MAX)
                return fail(h, H2W_FLOW_CONTROL_ERROR);
            int64_t delta = (int64_t)v - h->init_send;
            for (uint16_t j = 0; j < HS_SLOTS; j++) {
                struct hs_stream *st = &h->st[j];
                if (!st->id || (st->flags & SS_CLOSING))
                    continue;
                int64_t w = st->send_win + delta;
                if (w > H2W_WINDOW_MAX)
                    return fail(h, H2W_FLOW_CONTROL_ERROR);
                st->send_win = (int32_t)w;
                stream_may_send(h, st);
            }
            h->init_send = (int32_t)v;
            break;
        }
        case H2W_S_MAX_FRAME_SIZE:
            if (v < H2W_FRAME_MAX || v > 0xffffff)
                return fail(h, H2W_PROTOCOL_ERROR);
            break;                    /* we send 16 KiB frames at most, as nghttp2 */
        default:
            break;                    /* MAX_CONCURRENT_STREAMS (we push nothing), unknown ones */
        }
    }
    h->settled = 1;
    return queue_ack(h, H2W_SETTINGS, NULL, 0);
}

/* RST_STREAM from the client, within the reset rate (CVE-2023-44487):
 * past it, GOAWAY and no new streams; the connection ends with its last. */
static int reset_in(struct hs *h, int32_t id, uint32_t code)
{
    if (id > h->last_id)
        return fail(h, H2W_PROTOCOL_ERROR);      /* an idle stream */
    struct hs_stream *st = hs_find(h, id);
    if (st && !(st->flags & SS_CLOSING)) {
        /* Closed at once, as nghttp2 did: reported, then its slot freed
         * (calls about it meanwhile find it closing and do nothing). */
        hs_unready(h, st);
        st->flags |= SS_CLOSING | SS_LOCAL_END | SS_REMOTE_END;
        h->nopen--;
        struct h2_ev ev = { .kind = H2E_CLOSED, .stream = id, .sc = st->sc, .code = code };
        hs_emit(h, &ev);
        hs_free_stream(h, st);
    }
    if (h->goaway_sent)
        return 0;
    uint64_t now = h->slot->w->now_ms / 1000, then = h->reset_ms / 1000;
    if (now > then) {
        uint64_t add = (now - then) * HS_RESET_RATE;
        h->resets = h->resets + add > HS_RESET_BURST ? HS_RESET_BURST : (uint32_t)(h->resets + add);
        h->reset_ms = h->slot->w->now_ms;
    }
    if (h->resets) {
        h->resets--;
        return 0;
    }
    hs_goaway_frame(h, h->last_id, H2W_INTERNAL_ERROR);
    return 0;
}

static int window_update(struct hs *h, int32_t id, uint32_t inc)
{
    inc &= 0x7fffffff;
    if (!id) {
        if (!inc)
            return fail(h, H2W_PROTOCOL_ERROR);
        if ((int64_t)h->send_win + inc > H2W_WINDOW_MAX)
            return fail(h, H2W_FLOW_CONTROL_ERROR);
        h->send_win += (int32_t)inc;
        return 0;
    }
    struct hs_stream *st = hs_find(h, id);
    if (!st) {
        if (id > h->last_id)
            return fail(h, H2W_PROTOCOL_ERROR);
        return 0;
    }
    if (st->flags & SS_CLOSING)
        return 0;
    if (!inc) {
        hs_rst(h, st, id, H2W_PROTOCOL_ERROR);
        return 0;
    }
    if ((int64_t)st->send_win + inc > H2W_WINDOW_MAX) {
        hs_rst(h, st, id, H2W_FLOW_CONTROL_ERROR);
        return 0;
    }
    st->send_win += (int32_t)inc;
    stream_may_send(h, st);
    return 0;
}

/* A control frame's payload is in cbuf (its first clen bytes). */
static int control(struct hs *h)
{
    const uint8_t *p = h->cbuf;
    switch (h->f.type) {
    case H2W_SETTINGS:
        return (h->f.flags & H2W_ACK) ? 0 : settings(h, p, h->f.len);
    case H2W_PING:
        return (h->f.flags & H2W_ACK) ? 0 : queue_ack(h, H2W_PING, p, 8);
    case H2W_RST_STREAM:
        return reset_in(h, h->f.id, h2w_u32(p));
    case H2W_WINDOW_UPDATE:
        return window_update(h, h->f.id, h2w_u32(p));
    case H2W_GOAWAY: {
        h->goaway_recv = 1;
        struct h2_ev ev = { .kind = H2E_GOAWAY, .stream = (int32_t)(h2w_u32(p) & 0x7fffffff),
                            .code = h2w_u32(p + 4), .sc = NIL };
        return hs_emit(h, &ev) < 0 ? fatal(h) : 0;
    }
    case H2W_PRIORITY:
        if (self_dependent(p, h->f.id)) {
            struct hs_stream *st = hs_find(h, h->f.id);
            if (!st || !(st->flags & SS_CLOSING))
                hs_rst(h, st, h->f.id, H2W_PROTOCOL_ERROR);
        }
        return 0;                     /* priorities are not used */
    default:
        return 0;
    }
}

/* ---- frames --------------------------------------------------------- */

/* A frame header is read: check it against the connection's state. */
static int frame_begins(struct hs *h)
{
    struct h2w_head *f = &h->f;
    h->left = f->len;
    h->clen = 0;
    if (f->len > H2W_FRAME_MAX)
        return fail(h, H2W_FRAME_SIZE_ERROR);
    if (!h->settled && f->type != H2W_SETTINGS)
        return fail(h, H2W_PROTOCOL_ERROR);   /* the preface's SETTINGS first */
    if (h->bid && (f->type != H2W_CONTINUATION || f->id != h->bid))
        return fail(h, H2W_PROTOCOL_ERROR);   /* a header block is under way */
    switch (f->type) {
    case H2W_DATA: {
        if (!f->id || f->id > h->last_id)
            return fail(h, H2W_PROTOCOL_ERROR);
        if ((int64_t)f->len > h->recv_win)
            return fail(h, H2W_FLOW_CONTROL_ERROR);
        h->recv_win -= (int32_t)f->len;
        h->pad = 0;
        h->padded_need = (f->flags & H2W_PADDED) != 0;
        if (h->padded_need && !f->len)
            return fail(h, H2W_FRAME_SIZE_ERROR);
        return 0;
    }
    case H2W_HEADERS:
        if (!f->id || !(f->id & 1))
            return fail(h, H2W_PROTOCOL_ERROR);
        return 0;
    case H2W_CONTINUATION:
        if (!h->bid)
            return fail(h, H2W_PROTOCOL_ERROR);
        if (++h->conts > HS_CONTINUATIONS)
            return fail(h, H2W_ENHANCE_YOUR_CALM);
        return 0;
    case H2W_PRIORITY:
        if (!f->id)
            return fail(h, H2W_PROTOCOL_ERROR);
        return f->len == 5 ? 0 : fail(h, H2W_FRAME_SIZE_ERROR);
    case H2W_RST_STREAM:
        if (!f->id)
            return fail(h, H2W_PROTOCOL_ERROR);
        return f->len == 4 ? 0 : fail(h, H2W_FRAME_SIZE_ERROR);
    case H2W_SETTINGS:
        if (f->id)
            return fail(h, H2W_PROTOCOL_ERROR);
        if ((f->flags & H2W_ACK) ? f->len != 0 : f->len % 6 != 0)
            return fail(h, H2W_FRAME_SIZE_ERROR);
        if (f->len / 6 > 32)
            return fail(h, H2W_ENHANCE_YOUR_CALM);   /* nghttp2's max_settings */
        if (!h->settled && (f->flags & H2W_ACK))
            return fail(h, H2W_PROTOCOL_ERROR);
        return 0;
    case H2W_PUSH_PROMISE:
        return fail(h, H2W_PROTOCOL_ERROR);          /* a client does not push */
    case H2W_PING:
        if (f->id)
            return fail(h, H2W_PROTOCOL_ERROR);
        return f->len == 8 ? 0 : fail(h, H2W_FRAME_SIZE_ERROR);
    case H2W_GOAWAY:
        if (f->id)
            return fail(h, H2W_PROTOCOL_ERROR);
        return f->len >= 8 ? 0 : fail(h, H2W_FRAME_SIZE_ERROR);
    case H2W_WINDOW_UPDATE:
        return f->len == 4 ? 0 : fail(h, H2W_FRAME_SIZE_ERROR);
    default:
        return 0;                     /* unknown types are skipped */
    }
}

/* DATA payload bytes [p, p + n), part of the frame. */
static int data_in(struct hs *h, const uint8_t *p, uint32_t n)
{
    struct hs_stream *st = hs_find(h, h->f.id);
    if (h->padded_need) {
        h->pad = p[0];
        h->padded_need = 0;
        h->left--;
        p++;
        n--;
        if (h->pad > h->left)
            return fail(h, H2W_PROTOCOL_ERROR);
        hs_window_back(h, live(st) ? st : NULL, h->pad + 1u);   /* padding needs no taking */
    }
    uint32_t data = h->left - h->pad;         /* data bytes still in the frame */
    uint32_t d = n < data ? n : data;
    h->left -= n;                             /* (the rest of n is padding) */
    if (!d)
        return 0;
    if (!live(st) || (st->flags & SS_REMOTE_END)) {
        hs_window_back(h, NULL, d);
        return 0;
    }
    st->rcvd += d;
    if (st->msg.clen != H2M_NONE && st->rcvd > st->msg.clen) {
        hs_rst(h, st, st->id, H2W_PROTOCOL_ERROR);
        hs_window_back(h, NULL, d);
        return 0;
    }
    struct h2_ev ev = { .kind = H2E_DATA, .stream = st->id, .sc = st->sc, .buf = (uint8_t *)p,
                        .len = d };
    return emit_or_reset(h, st, &ev);
}

/* A DATA frame's header said what its stream may take: check that once,
 * when the frame begins (a stream error resets it, the bytes go back to
 * the connection's window as they come). */
static void data_begins(struct hs *h)
{
    struct hs_stream *st = hs_find(h, h->f.id);
    if (!live(st))
        return;
    if (st->flags & SS_REMOTE_END) {
        hs_rst(h, st, st->id, H2W_STREAM_CLOSED);
        return;
    }
    if ((int64_t)h->f.len > st->recv_win) {
        hs_rst(h, st, st->id, H2W_FLOW_CONTROL_ERROR);
        return;
    }
    st->recv_win -= (int32_t)h->f.len;
}

static int data_ends(struct hs *h)
{
    struct hs_stream *st = hs_find(h, h->f.id);
    if (!live(st) || (st->flags & SS_REMOTE_END))
        return 0;
    if (!(h->f.flags & H2W_END_STREAM)) {
        if (h->f.len)
            return 0;
        struct h2_ev ev = { .kind = H2E_GLITCH, .stream = st->id, .sc = st->sc };
        return hs_emit(h, &ev) < 0 ? fatal(h) : 0;   /* an empty DATA frame: nothing */
    }
    st->flags |= SS_REMOTE_END;
    if (st->msg.clen != H2M_NONE && st->msg.clen != st->rcvd) {
        hs_rst(h, st, st->id, H2W_PROTOCOL_ERROR);
        return 0;
    }
    struct h2_ev ev = { .kind = H2E_END_STREAM, .stream = st->id, .sc = st->sc, .end_stream = 1 };
    int r = emit_or_reset(h, st, &ev);
    if (!r)
        hs_maybe_close(h, st);
    return r;
}

static int frame_ends(struct hs *h)
{
    switch (h->f.type) {
    case H2W_DATA:
        return data_ends(h);
    case H2W_HEADERS:
        if (!h->braw)
            return 0;                 /* it was whole (headers_whole) */
        h->braw = 0;
        if (headers_gathered(h) < 0)
            return -1;
        return (h->f.flags & H2W_END_HEADERS) ? block_end(h) : 0;
    case H2W_CONTINUATION:
        return (h->f.flags & H2W_END_HEADERS) ? block_end(h) : 0;
    case H2W_SETTINGS: case H2W_PING: case H2W_RST_STREAM: case H2W_WINDOW_UPDATE:
    case H2W_GOAWAY: case H2W_PRIORITY:
        return control(h);
    default:
        return 0;
    }
}

/* Payload bytes of the current frame: at most what it has left. */
static int payload(struct hs *h, const uint8_t *p, uint32_t n)
{
    switch (h->f.type) {
    case H2W_DATA:
        return data_in(h, p, n);
    case H2W_HEADERS:
        if (!h->bid && h->left == h->f.len && n == h->f.len) {
            h->left = 0;
            return headers_whole(h, p);            /* whole in this receive: no copy */
        }
        if (!h->bid) {                /* gathered from its first byte, stripped at its end */
            h->braw = 1;
            h->bid = h->f.id;
            h->bflags = h->f.flags;
            h->blen = 0;
        }
        h->left -= n;
        return gather(h, p, n);
    case H2W_CONTINUATION:
        h->left -= n;
        return gather(h, p, n);
    default: {
        uint32_t k = sizeof h->cbuf - h->clen;
        if (k > n)
            k = n;
        memcpy(h->cbuf + h->clen, p, k);
        h->clen += k;
        h->left -= n;
        return 0;
    }
    }
}

int hs_recv(struct h2_slot *s, const uint8_t *p, size_t n)
{
    struct hs *h = s->session;
    const uint8_t *end = p + n;
    while (p < end) {
        if (h->term)
            return -1;
        if (h->in == HI_PREFACE) {
            while (p < end && h->hlen < H2W_PREFACE_LEN) {
                if (*p++ != (uint8_t)H2W_PREFACE[h->hlen++])
                    return fail(h, H2W_PROTOCOL_ERROR);
            }
            if (h->hlen == H2W_PREFACE_LEN) {
                h->in = HI_HEAD;
                h->hlen = 0;
            }
            continue;
        }
        if (h->in == HI_HEAD) {
            if (!h->hlen && end - p >= H2W_HEAD) {
                h->f = h2w_read_head(p);
                p += H2W_HEAD;
            } else {
                while (p < end && h->hlen < H2W_HEAD)
                    h->hd[h->hlen++] = *p++;
                if (h->hlen < H2W_HEAD)
                    break;
                h->f = h2w_read_head(h->hd);
                h->hlen = 0;
            }
            if (frame_begins(h) < 0)
                return -1;
            if (h->f.type == H2W_DATA)
                data_begins(h);
            h->in = HI_PAYLOAD;
        }
        uint32_t k = (uint32_t)(end - p) < h->left ? (uint32_t)(end - p) : h->left;
        if ((k || !h->f.len) && payload(h, p, k) < 0)
            return -1;
        p += k;
        if (!h->left) {
            h->in = HI_HEAD;
            if (frame_ends(h) < 0)
                return -1;
        }
    }
    return h->term ? -1 : 0;
}
