/*
 * The HTTP/2 codec: nghttp2, behind this one file (DESIGN.md law 8). The
 * library frames, parses, compresses headers (HPACK) and keeps the flow
 * control windows; its callbacks end here and become struct h2_ev events
 * for h2_conn.c, which switches on their kind. Its memory comes from the
 * worker's arena (core/arena.c), never from malloc after start: one
 * callbacks object and one option set per worker, made at start.
 *
 * The defences the library gives are set here: concurrent streams, the
 * header list size, our encoder's dynamic table, the rate of stream resets
 * (CVE-2023-44487), CONTINUATION frames per header block (CVE-2024-28182),
 * SETTINGS entries, and the queue of ACKs a client that does not read can
 * pile up (PING and SETTINGS floods); each ends the connection with GOAWAY.
 */
#include <stdlib.h>
#include <string.h>
#include <nghttp2/nghttp2.h>
#include "http2/h2.h"
#include "http2/h2_sess.h"

_Static_assert(sizeof(nghttp2_mem) <= sizeof(((struct h2_worker *)0)->mem), "nghttp2_mem");

static void *m_malloc(size_t n, void *ud)
{
    return arena_alloc(ud, n);
}

static void m_free(void *p, void *ud)
{
    arena_release(ud, p);
}

static void *m_calloc(size_t k, size_t n, void *ud)
{
    void *p = arena_alloc(ud, k * n);
    if (p)
        memset(p, 0, k * n);
    return p;
}

static void *m_realloc(void *p, size_t n, void *ud)
{
    return arena_realloc(ud, p, n);
}

static uint32_t sc_of(nghttp2_session *ss, int32_t id)
{
    uintptr_t v = (uintptr_t)nghttp2_session_get_stream_user_data(ss, id);
    return v ? (uint32_t)(v - 1) : NIL;
}

static int emit(struct h2_slot *s, struct h2_ev *ev)
{
    return h2_on_event(s->w, s, ev);
}

/* An event a stream may refuse (> 0: reset that stream, the connection
 * goes on); < 0 fails the connection. */
static int emit_or_reset(nghttp2_session *ss, void *ud, struct h2_ev *ev)
{
    int r = emit(ud, ev);
    if (r < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (r > 0)
        nghttp2_submit_rst_stream(ss, NGHTTP2_FLAG_NONE, ev->stream, NGHTTP2_INTERNAL_ERROR);
    return 0;
}

static int on_begin_headers(nghttp2_session *ss, const nghttp2_frame *f, void *ud)
{
    (void)ss;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct h2_ev ev = { .kind = H2E_BEGIN, .stream = f->hd.stream_id, .sc = NIL };
    int r = emit(ud, &ev);
    return r < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

/* A session of ours toward an upstream (a client session): its header
 * blocks are responses and trailers, which its events carry; a client's
 * trailers are not passed on (request trailers stay a known limit). */
static bool upstream_side(nghttp2_session *ss)
{
    return !nghttp2_session_check_server_session(ss);
}

static int on_header(nghttp2_session *ss, const nghttp2_frame *f, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    (void)flags;
    if (f->hd.type != NGHTTP2_HEADERS ||
        (f->headers.cat != NGHTTP2_HCAT_REQUEST && !upstream_side(ss)))
        return 0;
    struct h2_ev ev = { .kind = H2E_HEADER, .stream = f->hd.stream_id,
                        .sc = sc_of(ss, f->hd.stream_id), .name = name, .nlen = nlen,
                        .value = value, .vlen = vlen };
    int r = emit(ud, &ev);
    if (r < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return r ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}

static int on_frame_recv(nghttp2_session *ss, const nghttp2_frame *f, void *ud)
{
    int32_t id = f->hd.stream_id;
    bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
    struct h2_ev ev = { .stream = id, .end_stream = end };
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        ev.sc = sc_of(ss, id);
        if (upstream_side(ss)) {
            ev.kind = H2E_RESPONSE;        /* a response head, or trailers */
        } else if (f->headers.cat == NGHTTP2_HCAT_REQUEST) {
            ev.kind = H2E_REQUEST;
        } else if (end) {
            ev.kind = H2E_END_STREAM;      /* trailers end the request */
        } else {
            return 0;
        }
        break;
    case NGHTTP2_DATA:
        ev.sc = sc_of(ss, id);
        if (end)
            ev.kind = H2E_END_STREAM;
        else if (f->hd.length == 0)
            ev.kind = H2E_GLITCH;          /* an empty DATA frame: nothing */
        else
            return 0;
        break;
    case NGHTTP2_GOAWAY:
        ev.kind = H2E_GOAWAY;
        ev.stream = f->goaway.last_stream_id;
        ev.code = f->goaway.error_code;
        ev.sc = NIL;
        return emit(ud, &ev) < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
    case NGHTTP2_SETTINGS:
        if (f->hd.flags & NGHTTP2_FLAG_ACK)
            return 0;
        ev.kind = H2E_SETTINGS;
        ev.sc = NIL;
        ev.n = nghttp2_session_get_remote_settings(ss, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        return emit(ud, &ev) < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
    default:
        return 0;
    }
    return emit_or_reset(ss, ud, &ev);
}

static int on_data(nghttp2_session *ss, uint8_t flags, int32_t id, const uint8_t *data,
                   size_t len, void *ud)
{
    (void)flags;
    struct h2_ev ev = { .kind = H2E_DATA, .stream = id, .sc = sc_of(ss, id),
                        .buf = (uint8_t *)data, .len = len };
    return emit_or_reset(ss, ud, &ev);
}

static int on_close(nghttp2_session *ss, int32_t id, uint32_t code, void *ud)
{
    struct h2_ev ev = { .kind = H2E_CLOSED, .stream = id, .sc = sc_of(ss, id), .code = code };
    emit(ud, &ev);
    return 0;
}

static ssize_t on_read(nghttp2_session *ss, int32_t id, uint8_t *buf, size_t len,
                       uint32_t *dflags, nghttp2_data_source *src, void *ud)
{
    (void)src;
    struct h2_ev ev = { .kind = H2E_READ, .stream = id, .sc = sc_of(ss, id), .buf = buf,
                        .len = len };
    if (emit(ud, &ev) < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (ev.eof)
        *dflags |= NGHTTP2_DATA_FLAG_EOF | (ev.no_end ? NGHTTP2_DATA_FLAG_NO_END_STREAM : 0);
    else if (!ev.n)
        return NGHTTP2_ERR_DEFERRED;
    return (ssize_t)ev.n;
}

int h2c_worker_init(struct worker *w, struct h2_worker *hw)
{
    (void)w;
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cb) || nghttp2_option_new(&opt))
        return -1;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
    /* Windows are given back when the bytes went on (h2_conn.c), so a
     * stream whose upstream is slow cannot make the proxy buffer more. */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, H2_DEFLATE_TABLE);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 33);
    nghttp2_option_set_max_continuations(opt, 8);
    /* No closed streams kept for priorities: priorities are ignored. */
    nghttp2_option_set_no_closed_streams(opt, 1);
    hw->callbacks = cb;
    hw->option = opt;
    hw->scratch_in = malloc(2 * H2_SCRATCH);     /* at start, as the callbacks */
    if (!hw->scratch_in)
        return -1;
    hw->scratch_out = hw->scratch_in + H2_SCRATCH;
    nghttp2_mem *m = (nghttp2_mem *)hw->mem;
    *m = (nghttp2_mem){ &hw->arena, m_malloc, m_free, m_calloc, m_realloc };
    return 0;
}

void h2c_worker_free(struct h2_worker *hw)
{
    if (hw->callbacks)
        nghttp2_session_callbacks_del(hw->callbacks);
    if (hw->option)
        nghttp2_option_del(hw->option);
    hw->callbacks = hw->option = NULL;
    free(hw->scratch_in);
    hw->scratch_in = hw->scratch_out = NULL;
}

/* A new session (either side) sends its SETTINGS and opens the
 * connection's window to cover every stream's: one stream whose window is
 * held back does not stall the others. On failure the session is gone. */
static int session_start(struct h2_slot *s, nghttp2_session *ss, const nghttp2_settings_entry *iv,
                         size_t n)
{
    if (nghttp2_submit_settings(ss, NGHTTP2_FLAG_NONE, iv, n) ||
        nghttp2_session_set_local_window_size(ss, NGHTTP2_FLAG_NONE, 0,
                                              H2_MAX_STREAMS * H2_STREAM_WINDOW)) {
        nghttp2_session_del(ss);
        return -1;
    }
    s->session = ss;
    return 0;
}

static int ng_open(struct worker *w, struct h2_slot *s, uint32_t max_header_list,
                   uint32_t max_streams)
{
    struct h2_worker *hw = w->h2;
    nghttp2_session *ss;
    if (nghttp2_session_server_new3(&ss, hw->callbacks, s, hw->option, (nghttp2_mem *)hw->mem))
        return -1;
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams },
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW },
        { NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, max_header_list },
    };
    return session_start(s, ss, iv, sizeof iv / sizeof iv[0]);
}

static void ng_close(struct worker *w, struct h2_slot *s)
{
    (void)w;
    if (s->session)
        nghttp2_session_del(s->session);
    s->session = NULL;
}

static int ng_recv(struct h2_slot *s, const uint8_t *p, size_t n)
{
    ssize_t r = nghttp2_session_mem_recv(s->session, p, n);
    return r < 0 ? -1 : 0;
}

static ssize_t ng_send(struct h2_slot *s, const uint8_t **p)
{
    ssize_t r = nghttp2_session_mem_send(s->session, p);
    return r < 0 ? -1 : r;
}

static bool ng_alive(struct h2_slot *s)
{
    return s->session && (nghttp2_session_want_read(s->session) ||
                          nghttp2_session_want_write(s->session));
}

#define NV_MAX 260
static size_t to_nv(nghttp2_nv *nv, const struct h2_field *f, size_t nf)
{
    if (nf > NV_MAX)
        nf = NV_MAX;
    for (size_t i = 0; i < nf; i++)
        nv[i] = (nghttp2_nv){ (uint8_t *)f[i].name, (uint8_t *)f[i].value, f[i].nlen, f[i].vlen,
                              NGHTTP2_NV_FLAG_NONE };
    return nf;
}

static int ng_respond(struct h2_slot *s, int32_t id, const struct h2_field *f, size_t nf, bool body)
{
    nghttp2_nv nv[NV_MAX];
    nf = to_nv(nv, f, nf);
    nghttp2_data_provider dp = { .read_callback = on_read };
    return nghttp2_submit_response(s->session, id, nv, nf, body ? &dp : NULL) ? -1 : 0;
}

/* Inside an H2E_READ that set eof and no_end: the stream ends with these. */
static int ng_trailers(struct h2_slot *s, int32_t id, const struct h2_field *f, size_t nf)
{
    nghttp2_nv nv[NV_MAX];
    nf = to_nv(nv, f, nf);
    return nghttp2_submit_trailer(s->session, id, nv, nf) ? -1 : 0;
}

/* An upstream session: a request on a new stream bound to connection sc
 * (the library copies the fields). The stream's id, or -1. */
int32_t h2c_request(struct h2_slot *s, const struct h2_field *f, size_t nf, bool body, uint32_t sc)
{
    nghttp2_nv nv[NV_MAX];
    nf = to_nv(nv, f, nf);
    nghttp2_data_provider dp = { .read_callback = on_read };
    int32_t id = nghttp2_submit_request(s->session, NULL, nv, nf, body ? &dp : NULL,
                                        (void *)(uintptr_t)(sc + 1));
    return id < 0 ? -1 : id;
}

/* The session toward an upstream: no push, our windows as a server's. */
int h2c_open_upstream(struct worker *w, struct h2_slot *s)
{
    s->flags &= ~CF_OWN;
    struct h2_worker *hw = w->h2;
    nghttp2_session *ss;
    if (nghttp2_session_client_new3(&ss, hw->callbacks, s, hw->option, (nghttp2_mem *)hw->mem))
        return -1;
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW },
    };
    return session_start(s, ss, iv, sizeof iv / sizeof iv[0]);
}

static void ng_resume(struct h2_slot *s, int32_t id)
{
    nghttp2_session_resume_data(s->session, id);
}

static void ng_reset(struct h2_slot *s, int32_t id, uint32_t code)
{
    nghttp2_submit_rst_stream(s->session, NGHTTP2_FLAG_NONE, id, code);
}

static void ng_consume(struct h2_slot *s, int32_t id, size_t n)
{
    if (nghttp2_session_consume(s->session, id, n))
        nghttp2_session_consume_connection(s->session, n);
}

/* GOAWAY naming the last stream the proxy took: the client may send the
 * ones after it again on a new connection, knowing none was processed. */
static void ng_goaway(struct h2_slot *s, uint32_t code)
{
    nghttp2_submit_goaway(s->session, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(s->session), code, NULL, 0);
}

static void ng_bind(struct h2_slot *s, int32_t id, uint32_t sc)
{
    nghttp2_session_set_stream_user_data(s->session, id,
                                         sc == NIL ? NULL : (void *)(uintptr_t)(sc + 1));
}

/* ---- the calls, routed: a client's connection to our codec (feature
 * h2_codec), a connection toward an upstream to nghttp2. One branch on the
 * session's kind, decided when it opened. */

#define OWN(s) ((s)->flags & CF_OWN)

int h2c_open(struct worker *w, struct h2_slot *s, uint32_t max_header_list, uint32_t max_streams)
{
    if (w->features & UP_F_H2_CODEC) {
        s->flags |= CF_OWN;
        return hs_open(w, s, max_header_list, max_streams);
    }
    s->flags &= ~CF_OWN;
    return ng_open(w, s, max_header_list, max_streams);
}

void h2c_close(struct worker *w, struct h2_slot *s)
{
    OWN(s) ? hs_close(w, s) : ng_close(w, s);
}

int h2c_recv(struct h2_slot *s, const uint8_t *p, size_t n)
{
    return OWN(s) ? hs_recv(s, p, n) : ng_recv(s, p, n);
}

ssize_t h2c_send(struct h2_slot *s, const uint8_t **p)
{
    return OWN(s) ? hs_send(s, p) : ng_send(s, p);
}

bool h2c_alive(struct h2_slot *s)
{
    return OWN(s) ? hs_alive(s) : ng_alive(s);
}

int h2c_respond(struct h2_slot *s, int32_t id, const struct h2_field *f, size_t nf, bool body)
{
    return OWN(s) ? hs_respond(s, id, f, nf, body) : ng_respond(s, id, f, nf, body);
}

int h2c_trailers(struct h2_slot *s, int32_t id, const struct h2_field *f, size_t nf)
{
    return OWN(s) ? hs_trailers(s, id, f, nf) : ng_trailers(s, id, f, nf);
}

void h2c_resume(struct h2_slot *s, int32_t id)
{
    OWN(s) ? hs_resume(s, id) : ng_resume(s, id);
}

void h2c_reset(struct h2_slot *s, int32_t id, uint32_t code)
{
    OWN(s) ? hs_reset(s, id, code) : ng_reset(s, id, code);
}

void h2c_consume(struct h2_slot *s, int32_t id, size_t n)
{
    OWN(s) ? hs_consume(s, id, n) : ng_consume(s, id, n);
}

void h2c_goaway(struct h2_slot *s, uint32_t code)
{
    OWN(s) ? hs_goaway(s, code) : ng_goaway(s, code);
}

void h2c_bind(struct h2_slot *s, int32_t id, uint32_t sc)
{
    OWN(s) ? hs_bind(s, id, sc) : ng_bind(s, id, sc);
}
