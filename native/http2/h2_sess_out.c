/*
 * Our HTTP/2 session's outgoing side and its streams (h2_sess.h): the
 * stream table, the queue of framed bytes, the responses' HEADERS and
 * DATA, resets, GOAWAY and the windows given back.
 *
 * What is framed goes into one queue in the order it is made, so HPACK's
 * dynamic table sees blocks in the order the client decodes them. Control
 * frames and header blocks are queued when asked for; DATA is made only in
 * hs_send, when the connection can send: a stream with a body is on the
 * ready list, and each turn of the list asks the proxy for one frame's
 * bytes (H2E_READ, written in place in the queue), round robin, within
 * the stream's and the connection's windows. A stream closes (H2E_CLOSED)
 * at the end of the hs_send that hands out its last frame, as nghttp2's
 * did; a stream the client resets closes at once.
 */
#include <string.h>
#include "http2/h2_sess.h"

static struct arena *arena_of(struct hs *h)
{
    return &((struct h2_worker *)h->slot->w->h2)->arena;
}

int hs_emit(struct hs *h, struct h2_ev *ev)
{
    return h2_on_event(h->slot->w, h->slot, ev);
}

/* ---- streams -------------------------------------------------------- */

static uint32_t home(int32_t id)
{
    return ((uint32_t)id >> 1) & (HS_MAP - 1);
}

struct hs_stream *hs_find(struct hs *h, int32_t id)
{
    for (uint32_t i = home(id);; i = (i + 1) & (HS_MAP - 1)) {
        uint16_t v = h->map[i];
        if (!v)
            return NULL;
        if (h->st[v - 1].id == id)
            return &h->st[v - 1];
    }
}

static void map_remove(struct hs *h, int32_t id)
{
    uint32_t i = home(id);
    while (h->st[h->map[i] - 1].id != id)
        i = (i + 1) & (HS_MAP - 1);
    /* Backward shift: entries after the hole that may move into it do. */
    for (uint32_t j = (i + 1) & (HS_MAP - 1); h->map[j]; j = (j + 1) & (HS_MAP - 1)) {
        uint32_t k = home(h->st[h->map[j] - 1].id);
        if (((j - k) & (HS_MAP - 1)) >= ((j - i) & (HS_MAP - 1))) {
            h->map[i] = h->map[j];
            i = j;
        }
    }
    h->map[i] = 0;
}

struct hs_stream *hs_new_stream(struct hs *h, int32_t id)
{
    if (h->free_head == HS_NONE)
        return NULL;
    uint16_t k = h->free_head;
    struct hs_stream *st = &h->st[k];
    h->free_head = st->next;
    *st = (struct hs_stream){ .id = id, .sc = NIL, .send_win = h->init_send,
                              .recv_win = H2_STREAM_WINDOW, .prev = HS_NONE, .next = HS_NONE };
    h2_msg_init(&st->msg);
    uint32_t i = home(id);
    while (h->map[i])
        i = (i + 1) & (HS_MAP - 1);
    h->map[i] = (uint16_t)(k + 1);
    h->nopen++;
    return st;
}

void hs_free_stream(struct hs *h, struct hs_stream *st)
{
    map_remove(h, st->id);
    st->id = 0;
    st->next = h->free_head;
    h->free_head = (uint16_t)(st - h->st);
}

void hs_ready(struct hs *h, struct hs_stream *st)
{
    if (st->flags & (SS_READY | SS_CLOSING))
        return;
    uint16_t k = (uint16_t)(st - h->st);
    st->flags |= SS_READY;
    st->next = HS_NONE;
    st->prev = h->ready_tail;
    if (h->ready_tail != HS_NONE)
        h->st[h->ready_tail].next = k;
    else
        h->ready_head = k;
    h->ready_tail = k;
}

void hs_unready(struct hs *h, struct hs_stream *st)
{
    if (!(st->flags & SS_READY))
        return;
    st->flags &= ~SS_READY;
    if (st->prev != HS_NONE)
        h->st[st->prev].next = st->next;
    else
        h->ready_head = st->next;
    if (st->next != HS_NONE)
        h->st[st->next].prev = st->prev;
    else
        h->ready_tail = st->prev;
    st->prev = st->next = HS_NONE;
}

/* Closed: reported at the end of the next hs_send, after its last frame. */
void hs_close_stream(struct hs *h, struct hs_stream *st, uint32_t code)
{
    if (st->flags & SS_CLOSING)
        return;
    hs_unready(h, st);
    st->flags |= SS_CLOSING | SS_LOCAL_END;
    st->code = code;
    h->nopen--;
    h->closing[h->nclosing++] = (uint16_t)(st - h->st);
}

/* Both sides ended: the stream closes. */
void hs_maybe_close(struct hs *h, struct hs_stream *st)
{
    if ((st->flags & (SS_LOCAL_END | SS_REMOTE_END)) == (SS_LOCAL_END | SS_REMOTE_END))
        hs_close_stream(h, st, H2W_NO_ERROR);
}

static void fire_closes(struct hs *h)
{
    for (uint16_t i = 0; i < h->nclosing; i++) {
        struct hs_stream *st = &h->st[h->closing[i]];
        struct h2_ev ev = { .kind = H2E_CLOSED, .stream = st->id, .sc = st->sc, .code = st->code };
        hs_emit(h, &ev);
        hs_free_stream(h, st);
    }
    h->nclosing = 0;
}

/* ---- the queue ------------------------------------------------------ */

/* Room for n more bytes where frames go now: the queue, or, inside an
 * H2E_READ (whose bytes are being written in place at the queue's end),
 * the trailers' buffer that follows the DATA frame. */
static uint8_t *reserve(struct hs *h, uint32_t n)
{
    if (h->in_read) {
        size_t cap;
        uint8_t *t = hs_scratch(h, &cap);
        return h->tq_len + n <= cap ? t + h->tq_len : NULL;
    }
    if (h->qlen + n > h->qcap) {
        uint32_t keep = h->qlen - h->qout;        /* what waits; the rest was handed out */
        if (keep + n > HS_QUEUE_MAX)
            return NULL;              /* a client that does not read */
        uint32_t cap = h->qcap ? h->qcap : 4096;
        while (cap < keep + n)
            cap *= 2;
        if (h->qout) {
            /* What hs_send handed out stays where it is until the next
             * hs_send (h2_flush copies from it across sends): the waiting
             * bytes move to a new queue, the old one is let go then. */
            uint8_t *q = arena_alloc(arena_of(h), cap);
            if (!q)
                return NULL;
            memcpy(q, h->q + h->qout, keep);
            h->qold = h->q;
            h->q = q;
            h->qlen = keep;
            h->qout = 0;
        } else {
            uint8_t *q = arena_realloc(arena_of(h), h->q, cap);
            if (!q)
                return NULL;
            h->q = q;
        }
        h->qcap = cap;
    }
    return h->q + h->qlen;
}

static void commit(struct hs *h, uint32_t n)
{
    if (h->in_read)
        h->tq_len += n;
    else
        h->qlen += n;
}

int hs_frame(struct hs *h, uint8_t type, uint8_t flags, int32_t id, const void *p, uint32_t n)
{
    uint8_t *o = reserve(h, H2W_HEAD + n);
    if (!o)
        return -1;
    h2w_write_head(o, n, type, flags, id);
    if (n)
        memcpy(o + H2W_HEAD, p, n);
    commit(h, H2W_HEAD + n);
    return 0;
}

/* A connection error: GOAWAY with its code, then nothing more is read or
 * made; the connection closes once that is sent (hs_alive). */
void hs_fail(struct hs *h, uint32_t code)
{
    if (h->term)
        return;
    hs_goaway_frame(h, h->last_proc, code);
    h->term = 1;
}

/* GOAWAY naming last, the last stream the proxy takes: after it no new
 * stream is (new_stream in h2_sess_in.c). */
int hs_goaway_frame(struct hs *h, int32_t last, uint32_t code)
{
    uint8_t g[8];
    h2w_put32(g, (uint32_t)last);
    h2w_put32(g + 4, code);
    h->goaway_sent = 1;
    return hs_frame(h, H2W_GOAWAY, 0, 0, g, 8);
}

int hs_rst(struct hs *h, struct hs_stream *st, int32_t id, uint32_t code)
{
    uint8_t c[4];
    h2w_put32(c, code);
    int r = hs_frame(h, H2W_RST_STREAM, 0, id, c, 4);
    if (st)
        hs_close_stream(h, st, code);
    return r;
}

/* Bytes the proxy took (or that needed no taking): the windows open
 * again by them, in WINDOW_UPDATEs once half a window is due, as
 * nghttp2 does. */
void hs_window_back(struct hs *h, struct hs_stream *st, uint32_t n)
{
    uint8_t v[4];
    h->unacked += n;
    if (h->unacked >= (uint32_t)H2_MAX_STREAMS * H2_STREAM_WINDOW / 2) {
        h2w_put32(v, h->unacked);
        hs_frame(h, H2W_WINDOW_UPDATE, 0, 0, v, 4);
        h->recv_win += (int32_t)h->unacked;
        h->unacked = 0;
    }
    if (!st || (st->flags & (SS_REMOTE_END | SS_CLOSING)))
        return;
    st->unacked += n;
    if (st->unacked >= H2_STREAM_WINDOW / 2) {
        h2w_put32(v, st->unacked);
        hs_frame(h, H2W_WINDOW_UPDATE, 0, st->id, v, 4);
        st->recv_win += (int32_t)st->unacked;
        st->unacked = 0;
    }
}

uint8_t *hs_scratch(struct hs *h, size_t *cap)
{
    struct h2_worker *hw = h->slot->w->h2;
    *cap = H2_SCRATCH;
    return hw->scratch_out;
}

/* A header block: HEADERS, and CONTINUATIONs past the client's frame
 * size. Raw strings (hpack.c): a field takes at most its bytes and 12. */
static int queue_block(struct hs *h, int32_t id, uint8_t end_stream, const struct h2_field *f, size_t nf)
{
    uint32_t est = 16;
    for (size_t i = 0; i < nf; i++)
        est += (uint32_t)(f[i].nlen + f[i].vlen + 12);
    uint32_t frames = est / h->frame_max + 1;
    uint8_t *o = reserve(h, est + frames * H2W_HEAD);
    if (!o)
        return -1;
    uint8_t *b = o + H2W_HEAD;
    ssize_t k = hpack_encode_begin(&h->enc, b, est);
    if (k < 0)
        return -1;
    size_t n = (size_t)k;
    for (size_t i = 0; i < nf; i++) {
        k = hpack_encode(&h->enc, b + n, est - n, f[i].name, f[i].nlen, f[i].value, f[i].vlen, 0);
        if (k < 0)
            return -1;
        n += (size_t)k;
    }
    if (n <= h->frame_max) {
        h2w_write_head(o, (uint32_t)n, H2W_HEADERS, H2W_END_HEADERS | end_stream, id);
        commit(h, H2W_HEAD + (uint32_t)n);
        return 0;
    }
    /* Split: from the last piece back, each moved up by the headers the
     * pieces before it gain. */
    uint32_t pieces = (uint32_t)((n + h->frame_max - 1) / h->frame_max);
    for (uint32_t i = pieces; i-- > 0;) {
        uint32_t off = i * h->frame_max;
        uint32_t len = (uint32_t)(n - off < h->frame_max ? n - off : h->frame_max);
        uint8_t *dst = o + i * (H2W_HEAD + h->frame_max);
        memmove(dst + H2W_HEAD, b + off, len);
        h2w_write_head(dst, len, i ? H2W_CONTINUATION : H2W_HEADERS,
                       (i == pieces - 1 ? H2W_END_HEADERS : 0) | (i ? 0 : end_stream), id);
    }
    commit(h, (uint32_t)n + pieces * H2W_HEAD);
    return 0;
}

/* ---- DATA ----------------------------------------------------------- */

static int32_t least(int32_t a, int32_t b)
{
    return a < b ? a : b;
}

/* One DATA frame for the stream at the head of the ready list. */
static void one_frame(struct hs *h, struct hs_stream *st)
{
    hs_unready(h, st);
    int32_t room = least(least(st->send_win, h->send_win), (int32_t)h->frame_max);
    room = least(room, (int32_t)(HS_CHUNK - h->qlen));
    if (room <= 0)
        return;                       /* a WINDOW_UPDATE puts it back */
    uint8_t *o = reserve(h, H2W_HEAD + (uint32_t)room);
    if (!o) {
        hs_fail(h, H2W_INTERNAL_ERROR);
        return;
    }
    struct h2_ev ev = { .kind = H2E_READ, .stream = st->id, .sc = st->sc, .buf = o + H2W_HEAD,
                        .len = (size_t)room };
    h->in_read = 1;
    h->tq_len = 0;
    int r = hs_emit(h, &ev);
    h->in_read = 0;
    if (r < 0 || ev.n > (size_t)room) {
        hs_rst(h, st, st->id, H2W_INTERNAL_ERROR);
        return;
    }
    if (!ev.eof && !ev.n) {
        st->flags |= SS_DEFERRED;     /* hs_resume puts it back */
    } else {
        uint8_t end = ev.eof && !ev.no_end ? H2W_END_STREAM : 0;
        if (ev.n || end) {
            h2w_write_head(o, (uint32_t)ev.n, H2W_DATA, end, st->id);
            h->qlen += H2W_HEAD + (uint32_t)ev.n;
            st->send_win -= (int32_t)ev.n;
            h->send_win -= (int32_t)ev.n;
        }
    }
    if (h->tq_len) {                  /* trailers (END_STREAM), made inside the read */
        size_t cap;
        uint8_t *t = hs_scratch(h, &cap);
        uint8_t *q = reserve(h, h->tq_len);
        if (!q) {
            hs_fail(h, H2W_INTERNAL_ERROR);
            return;
        }
        memcpy(q, t, h->tq_len);
        h->qlen += h->tq_len;
        h->tq_len = 0;
    }
    if (ev.eof) {
        st->flags &= ~SS_BODY;
        st->flags |= SS_LOCAL_END;
        hs_maybe_close(h, st);
    } else if (ev.n) {
        hs_ready(h, st);              /* to the back: round robin */
    }
}

/* ---- the codec's calls ---------------------------------------------- */

ssize_t hs_send(struct h2_slot *s, const uint8_t **p)
{
    struct hs *h = s->session;
    if (h->qold) {                    /* what the last call handed out went */
        arena_release(arena_of(h), h->qold);
        h->qold = NULL;
    }
    if (h->qout) {
        memmove(h->q, h->q + h->qout, h->qlen - h->qout);
        h->qlen -= h->qout;
        h->qout = 0;
    }
    while (!h->term && h->ready_head != HS_NONE && h->send_win > 0 && h->qlen < HS_CHUNK)
        one_frame(h, &h->st[h->ready_head]);
    fire_closes(h);
    if (!h->qlen)
        return 0;
    h->qout = h->qlen;
    h->acks = 0;
    *p = h->q;
    return (ssize_t)h->qlen;
}

bool hs_alive(struct h2_slot *s)
{
    struct hs *h = s->session;
    if (!h || h->term)
        return false;
    if (h->nopen || !(h->goaway_sent || h->goaway_recv))
        return true;
    return h->qlen > h->qout;
}

int hs_respond(struct h2_slot *s, int32_t id, const struct h2_field *f, size_t nf, bool body)
{
    struct hs *h = s->session;
    struct hs_stream *st = hs_find(h, id);
    if (!st || h->term || (st->flags & (SS_CLOSING | SS_LOCAL_END | SS_RESPONDED)))
        return -1;
    if (queue_block(h, id, body ? 0 : H2W_END_STREAM, f, nf) < 0)
        return -1;
    st->flags |= SS_RESPONDED;
    if (body) {
        st->flags |= SS_BODY;
        hs_ready(h, st);
    } else {
        st->flags |= SS_LOCAL_END;
        hs_maybe_close(h, st);
    }
    return 0;
}

/* Trailers end the stream; inside an H2E_READ that set eof and no_end they
 * follow its DATA frame. */
int hs_trailers(struct h2_slot *s, int32_t id, const struct h2_field *f, size_t nf)
{
    struct hs *h = s->session;
    struct hs_stream *st = hs_find(h, id);
    if (!st || h->term || (st->flags & (SS_CLOSING | SS_LOCAL_END)) || !(st->flags & SS_RESPONDED))
        return -1;
    if (queue_block(h, id, H2W_END_STREAM, f, nf) < 0)
        return -1;
    if (!h->in_read) {
        st->flags &= ~SS_BODY;
        st->flags |= SS_LOCAL_END;
        hs_maybe_close(h, st);
    }
    return 0;
}

void hs_resume(struct h2_slot *s, int32_t id)
{
    struct hs *h = s->session;
    struct hs_stream *st = hs_find(h, id);
    if (st && (st->flags & SS_BODY) && (st->flags & SS_DEFERRED)) {
        st->flags &= ~SS_DEFERRED;
        hs_ready(h, st);
    }
}

void hs_reset(struct h2_slot *s, int32_t id, uint32_t code)
{
    struct hs *h = s->session;
    struct hs_stream *st = hs_find(h, id);
    if (st && !(st->flags & SS_CLOSING) && !h->term)
        hs_rst(h, st, id, code);
}

void hs_consume(struct h2_slot *s, int32_t id, size_t n)
{
    struct hs *h = s->session;
    if (!h->term)
        hs_window_back(h, hs_find(h, id), (uint32_t)n);
}

/* GOAWAY naming the last stream the proxy took: the client may send the
 * ones after it again on a new connection, knowing none was processed. */
void hs_goaway(struct h2_slot *s, uint32_t code)
{
    struct hs *h = s->session;
    if (!h->term)
        hs_goaway_frame(h, h->last_proc, code);
}

void hs_bind(struct h2_slot *s, int32_t id, uint32_t sc)
{
    struct hs_stream *st = hs_find(s->session, id);
    if (st)
        st->sc = sc;
}

/* Our SETTINGS, and the connection's window opened to cover every
 * stream's: one stream whose window is held back does not stall the
 * others. */
int hs_open(struct worker *w, struct h2_slot *s, uint32_t max_header_list, uint32_t max_streams)
{
    struct h2_worker *hw = w->h2;
    struct hs *h = arena_alloc(&hw->arena, sizeof *h);
    if (!h)
        return -1;
    memset(h, 0, offsetof(struct hs, st));      /* (a stream slot is set when it is taken) */
    h->slot = s;
    hpack_dec_init(&h->dec);
    hpack_enc_init(&h->enc);
    h->in = HI_PREFACE;
    h->send_win = h->init_send = 65535;
    h->recv_win = 65535;
    h->frame_max = H2W_FRAME_MAX;
    h->max_header_list = max_header_list;
    h->max_streams = (uint16_t)max_streams;     /* 1..H2_MAX_STREAMS (h2_adopt) */
    h->resets = HS_RESET_BURST;
    h->reset_ms = w->now_ms;
    h->ready_head = h->ready_tail = HS_NONE;
    for (uint16_t i = 0; i < HS_SLOTS; i++) {
        h->st[i].id = 0;
        h->st[i].next = i + 1 < HS_SLOTS ? (uint16_t)(i + 1) : HS_NONE;
    }
    h->free_head = 0;
    s->session = h;
    uint8_t set[18];
    const uint32_t kv[3][2] = { { H2W_S_MAX_CONCURRENT_STREAMS, h->max_streams },
                                { H2W_S_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW },
                                { H2W_S_MAX_HEADER_LIST_SIZE, max_header_list } };
    for (int i = 0; i < 3; i++) {
        set[i * 6] = (uint8_t)(kv[i][0] >> 8);
        set[i * 6 + 1] = (uint8_t)kv[i][0];
        h2w_put32(set + i * 6 + 2, kv[i][1]);
    }
    uint8_t win[4];
    uint32_t more = (uint32_t)H2_MAX_STREAMS * H2_STREAM_WINDOW - 65535;
    h2w_put32(win, more);
    if (hs_frame(h, H2W_SETTINGS, 0, 0, set, sizeof set) < 0 ||
        hs_frame(h, H2W_WINDOW_UPDATE, 0, 0, win, 4) < 0) {
        hs_close(w, s);
        return -1;
    }
    h->recv_win += (int32_t)more;
    return 0;
}

void hs_close(struct worker *w, struct h2_slot *s)
{
    struct hs *h = s->session;
    if (!h)
        return;
    struct arena *a = &((struct h2_worker *)w->h2)->arena;
    if (h->q)
        arena_release(a, h->q);
    if (h->qold)
        arena_release(a, h->qold);
    if (h->blk)
        arena_release(a, h->blk);
    arena_release(a, h);
    s->session = NULL;
}
