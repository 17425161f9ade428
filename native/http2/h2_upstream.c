/*
 * HTTP/2 to upstreams: a cluster with protocol = "h2" (h2c by prior
 * knowledge, or over TLS with ALPN h2). The mirror of h2_conn.c: there a
 * client's stream becomes the client side of a transaction; here the
 * transaction's upstream side is a stream (CK_H2_USTREAM, no socket) on a
 * pooled HTTP/2 connection to the server (CK_H2_UPSTREAM).
 *
 * The transaction keeps speaking HTTP/1.1 bytes to its upstream side, as
 * it does to a pooled HTTP/1.1 connection: its request rounds are read
 * from here (the head becomes a HEADERS frame, the body DATA frames,
 * de-chunked), and the stream writes the response into its receive queue
 * as HTTP/1.1 (a head from the HEADERS, the body from DATA, chunked when
 * the server gave no length, with the trailers as the chunked trailer
 * section). So parsing, policies, the access log, retries and counters
 * are the HTTP/1.1 ones, and the transaction never calls this layer: it
 * hands the stream up to the loop (C_UP_KICK).
 *
 * The pool keeps a connection while it has a free stream slot: pool_get
 * hands it out, the stream is placed on it, and it goes back at once when
 * another stream still fits (the pool's contract is unchanged: get and put
 * never wait). A connection takes min(max_streams_per_connection, the
 * server's SETTINGS_MAX_CONCURRENT_STREAMS) streams; more requests open
 * more connections. A GOAWAY takes the connection out of the pool; the
 * streams the server did not process (above its last stream id, or reset
 * with REFUSED_STREAM) are sent again on another connection when the
 * request may be (as an HTTP/1.1 request on a stale pooled connection).
 */
#include <errno.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include "http2/h2.h"
#include "http/h1.h"
#include "core/fixed.h"

static struct h2_slot *slot_at(struct worker *w, uint32_t i)
{
    return &((struct h2_worker *)w->h2)->slots[i];
}

/* ---- the connection's stream list and its room ------------------------ */

static void link_stream(struct worker *w, struct h2_slot *s, struct h2_slot *st)
{
    st->owner = s->self;
    st->sprev = NIL;
    st->snext = s->streams;
    if (s->streams != NIL)
        slot_at(w, s->streams)->sprev = st->self;
    s->streams = st->self;
    s->nstreams++;
}

static void up_end(struct worker *w, struct conn *pc);

/* pc has nothing left to carry and goes, but not now: this may run inside
 * one of the codec's callbacks, whose session must outlive it. The loop
 * hands it back (C_UP_KICK: h2_flush ends a draining connection without
 * streams once its last frames are out). */
static void end_later(struct worker *w, struct conn *pc)
{
    h2_slot_of(w, pc)->flags |= CF_DRAIN;
    pool_remove(w, pc);
    conn_hand_up(w, pc, C_UP_KICK);
}

/* The connection has carried the cluster's max_requests streams: it takes
 * no more, and goes when its last one is done. */
static bool spent(const struct h2_slot *s)
{
    return s->max_req && s->nreq >= s->max_req;
}

/* A connection with room for one more stream is "idle" for the pool. */
static bool has_room(const struct h2_slot *s)
{
    return !(s->flags & (CF_DRAIN | CF_CLOSE)) && s->nstreams < s->cap && !spent(s);
}

/* Offer pc to the pool when a stream fits; a connection the pool does not
 * keep closes once its last stream is done. */
static void offer(struct worker *w, struct conn *pc)
{
    struct h2_slot *s = h2_slot_of(w, pc);
    if (pc->state > CS_OPEN)
        return;
    if (pc->flags & C_POOLED) {
        if (!has_room(s))
            pool_remove(w, pc);
        return;
    }
    if (has_room(s) && pool_put(w, pc, s->max_idle, s->idle_ms))
        return;
    if (!s->nstreams && pc->state == CS_OPEN) {
        if (spent(s) && s->session && !(s->flags & CF_DRAIN))
            h2c_goaway(s, H2C_NO_ERROR);  /* the server learns it is a clean end */
        end_later(w, pc);
    }
}

static void unlink_stream(struct worker *w, struct h2_slot *st)
{
    if (st->owner == NIL)
        return;
    struct h2_slot *s = slot_at(w, st->owner);
    if (st->sprev != NIL)
        slot_at(w, st->sprev)->snext = st->snext;
    else if (s->streams == st->self)
        s->streams = st->snext;
    if (st->snext != NIL)
        slot_at(w, st->snext)->sprev = st->sprev;
    st->snext = st->sprev = NIL;
    st->owner = NIL;
    if (s->nstreams)
        s->nstreams--;
    struct conn *pc = &w->conns[s->self];
    if (pc->kind != CK_H2_UPSTREAM || pc->state != CS_OPEN || (s->flags & CF_CLOSE))
        return;
    if ((s->flags & CF_DRAIN) && !s->nstreams)
        end_later(w, pc);             /* GOAWAY received, its last stream done */
    else
        offer(w, pc);
}

/* ---- placing a stream ------------------------------------------------- */

static void submit(struct worker *w, struct conn *u);

/* A new connection to u's server for u's transaction (counted in its
 * attempts), in the pool at once: the next streams share it. */
static struct conn *up_dial(struct worker *w, struct txn *t, struct conn *u)
{
    const struct up_cluster *cl = &t->cfg->clusters[t->cluster];
    struct conn *pc = conn_alloc(w);
    if (!pc)
        return NULL;
    pc->kind = CK_H2_UPSTREAM;
    struct h2_slot *s = h2_slot_of(w, pc);
    memset(s, 0, sizeof *s);
    s->w = w;
    s->self = (uint32_t)(pc - w->conns);
    s->owner = NIL;
    s->streams = NIL;
    s->out_bid = NIL;
    s->hbid = s->tbid = NIL;
    s->flags = CF_UPSTREAM;
    s->tls = cl->tls ? cl->tls[w->o.index] : NULL;
    s->cap = s->max_streams = cl->max_streams ? cl->max_streams : 100;
    s->max_idle = cl->pool_max_idle;
    s->idle_ms = cl->pool_idle_timeout_ms;
    s->max_req = cl->max_requests;
    t->attempts++;
    if (h2c_open_upstream(w, s) < 0) {
        pc->state = CS_OPEN;
        conn_close(w, pc, false);
        return NULL;
    }
    if (dial(w, pc, t->cfg, u->server, t->cluster) < 0) {
        pc->state = CS_OPEN;
        conn_close(w, pc, false);
        return NULL;
    }
    w->c[UP_C_H2_UP_CONNECTIONS]++;
    return pc;
}

/* A fresh stream (H_DIAL) goes onto a pooled connection to its server
 * with room, or a new one; it is submitted once that one is ready. */
static void place(struct worker *w, struct conn *u)
{
    struct txn *t = txn_of(w, u);
    struct h2_slot *st = h2_slot_of(w, u);
    memset(st, 0, sizeof *st);
    st->w = w;
    st->self = (uint32_t)(u - w->conns);
    st->owner = st->streams = NIL;
    st->hbid = st->tbid = st->out_bid = NIL;
    st->snext = st->sprev = NIL;
    struct conn *pc = (t->flags & TF_RETRIED) ? NULL : pool_get(w, u->slot);
    while (pc && pc->kind != CK_H2_UPSTREAM) {
        conn_close(w, pc, false);     /* the cluster spoke HTTP/1.1 before a reload */
        pc = pool_get(w, u->slot);
    }
    if (pc) {
        w->c[UP_C_POOL_HITS]++;
        w->srv[u->slot].reused++;
        t->flags |= TF_REUSED;
    } else {
        w->c[UP_C_POOL_MISSES]++;
        pc = up_dial(w, t, u);
        if (!pc) {
            txn_abort(w, t, 502, false);
            return;
        }
    }
    struct h2_slot *s = h2_slot_of(w, pc);
    link_stream(w, s, st);
    s->nreq++;                        /* (max_requests: offer() retires it when spent) */
    w->c[UP_C_H2_UP_STREAMS]++;
    offer(w, pc);
    if (s->flags & CF_READY)
        submit(w, u);
    else
        u->h1 = H_WAIT;
}

/* The connection could not be had (refused, timed out, TLS or ALPN
 * failed): its waiting streams try another server, within the cluster's
 * max_attempts, as an HTTP/1.1 request whose connect failed does. */
static void replace_streams(struct worker *w, struct conn *pc)
{
    struct h2_slot *s = h2_slot_of(w, pc);
    while (s->streams != NIL) {
        struct conn *u = &w->conns[s->streams];
        struct h2_slot *st = h2_slot_of(w, u);
        unlink_stream(w, st);
        st->flags |= ST_DETACHED;
        struct txn *t = txn_of(w, u);
        if (!t || u->state != CS_OPEN)
            continue;
        const struct up_cluster *cl = &t->cfg->clusters[t->cluster];
        bool again = t->attempts < cl->max_attempts && res_retry(w, t);
        int sv = again ? balance_pick(w, t->cfg, t->cluster, t->server, t->hash_key) : -1;
        if (sv < 0 && again)
            sv = balance_pick(w, t->cfg, t->cluster, NIL, t->hash_key);
        if (sv < 0) {
            txn_abort(w, t, again ? 503 : 502, false);
            continue;
        }
        dial_idle(w, u);
        t->server = (uint32_t)sv;
        u->server = (uint32_t)sv;
        u->slot = t->cfg->servers[sv].stat_slot;
        dial_busy(w, u);
        w->srv[u->slot].requests++;
        u->h1 = H_DIAL;
        conn_hand_up(w, u, C_UP_KICK);
    }
}

/* ---- the request: rounds of HTTP/1.1 bytes to frames -------------------- */

static const char *const HOP[] = { "connection", "keep-alive", "proxy-connection",
                                   "transfer-encoding", "upgrade", "te", "host", NULL };

static bool hop_field(const uint8_t *n, size_t k)
{
    for (int i = 0; HOP[i]; i++)
        if (strlen(HOP[i]) == k && !strncasecmp((const char *)n, HOP[i], k))
            return true;
    return false;
}

/* Whether the client asked for trailers (TE: trailers): its head is still
 * at the front of its queue while the first round is out. */
static bool client_takes_trailers(struct worker *w, struct conn *c)
{
    const uint8_t *p;
    uint32_t n = q_contiguous(w, c, &p);
    static const struct h1_limits lim = { 65536, 65536, H1_MAX_HEADERS };
    struct h1_request *r = w_req(w);
    if (!n || h1_parse_request(p, n, &lim, r) != H1_DONE)
        return false;
    for (uint16_t i = 0; i < r->nheaders; i++) {
        const struct h1_header *h = &r->h[i];
        if (h->name_len == 2 && !strncasecmp((const char *)p + h->name_off, "te", 2) &&
            memmem(p + h->value_off, h->value_len, "trailers", 8))
            return true;
    }
    return false;
}

/* The round's head (the request as the transaction rewrote it) as a
 * HEADERS frame on a new stream. */
static int submit_head(struct worker *w, struct h2_slot *s, struct h2_slot *st, struct txn *t)
{
    struct out *o = &t->req;
    uint8_t *buf = w->scratch;        /* one head at a time */
    size_t n = 0, cap = SCRATCH_SIZE / 2;
    for (uint16_t i = o->first; i < o->n && n < cap; i++) {
        size_t k = o->iov[i].iov_len < cap - n ? o->iov[i].iov_len : cap - n;
        memcpy(buf + n, o->iov[i].iov_base, k);
        n += k;
    }
    if (client_takes_trailers(w, &w->conns[t->client]))
        st->flags |= ST_TE;
    static const struct h1_limits lim = { SCRATCH_SIZE / 2, SCRATCH_SIZE / 2, H1_MAX_HEADERS };
    struct h1_request *r = w_req(w);
    if (h1_parse_request(buf, n, &lim, r) != H1_DONE)
        return -1;
    struct h2_field f[260];
    size_t nf = 0;
    uint8_t *low = buf + n;           /* lower-cased names after the head */
    size_t used = 0, room = SCRATCH_SIZE - n;
    const uint8_t *host, *path;
    uint32_t host_len, path_len;
    h1_request_target(buf, r, &host, &host_len, &path, &path_len);
    if (r->target_form == H1_T_ASTERISK) {
        path = (const uint8_t *)"*";
        path_len = 1;
    } else if (!path_len) {
        path = (const uint8_t *)"/";
        path_len = 1;
    }
    f[nf++] = (struct h2_field){ (const uint8_t *)":method", buf + r->method_off, 7, r->method_len };
    f[nf++] = (struct h2_field){ (const uint8_t *)":scheme",
                                 (const uint8_t *)(s->tls ? "https" : "http"), 7, s->tls ? 5 : 4 };
    if (host_len)
        f[nf++] = (struct h2_field){ (const uint8_t *)":authority", host, 10, host_len };
    f[nf++] = (struct h2_field){ (const uint8_t *)":path", path, 5, path_len };
    for (uint16_t i = 0; i < r->nheaders && nf < 258; i++) {
        const struct h1_header *h = &r->h[i];
        const uint8_t *nm = buf + h->name_off;
        if ((h->flags & H1_HF_HOP) || hop_field(nm, h->name_len) || used + h->name_len > room)
            continue;
        for (uint32_t k = 0; k < h->name_len; k++)
            low[used + k] = (uint8_t)((nm[k] >= 'A' && nm[k] <= 'Z') ? nm[k] | 0x20 : nm[k]);
        f[nf++] = (struct h2_field){ low + used, buf + h->value_off, h->name_len, h->value_len };
        used += h->name_len;
    }
    if (st->flags & ST_TE)
        f[nf++] = (struct h2_field){ (const uint8_t *)"te", (const uint8_t *)"trailers", 2, 8 };
    bool body = r->body != H1_BODY_NONE;
    if (t->req_body == H1_BODY_CHUNKED)
        h1_chunked_init(&st->ck);
    int32_t id = h2c_request(s, f, nf, body, st->self);
    if (id < 0)
        return -1;
    st->id = id;
    st->flags |= ST_SUBMITTED | (body ? 0 : ST_EOF);
    out_advance(o, r->head_len);
    return 0;
}

/* u's connection is ready: the transaction sends its request (the round
 * comes back here through the loop). */
static void submit(struct worker *w, struct conn *u)
{
    struct txn *t = txn_of(w, u);
    u->h1 = H_BUSY;
    if (t)
        txn_req_pump(w, t);
}

/* Request body bytes for the codec, from the transaction's round. */
static void on_read(struct worker *w, struct conn *u, struct h2_ev *ev)
{
    struct h2_slot *st = h2_slot_of(w, u);
    struct txn *t = txn_of(w, u);
    if (!t || u->state != CS_OPEN) {
        ev->eof = 1;
        st->flags |= ST_EOF;
        return;
    }
    struct out *o = &t->req;
    ev->n = o->active ? h2_round_read(o, t->req_body == H1_BODY_CHUNKED, &st->ck, ev->buf, ev->len)
                      : 0;
    if (o->active && !o->left)
        conn_hand_up(w, u, C_UP_KICK);    /* the round is out: the transaction goes on */
    if (!o->left && rq_all_in(t->rq)) {
        ev->eof = 1;
        st->flags |= ST_EOF;
    } else if (!ev->n) {
        st->flags |= ST_DEFERRED;
    }
}

/* ---- the response: frames to HTTP/1.1 bytes in the stream's queue ---------- */

static bool hput(struct worker *w, uint32_t *bid, uint16_t *len, const void *p, size_t n)
{
    if (*bid == NIL) {
        *bid = bufpool_take(w);
        if (*bid == NIL)
            *bid = hbuf_get(w);
        if (*bid == NIL)
            return false;
        *len = 0;
    }
    uint32_t cap = buf_cap(&w->bufs, *bid);
    if (cap > 65535)
        cap = 65535;
    if (*len + n > cap)
        return false;
    memcpy(buf_data(&w->bufs, *bid) + *len, p, n);
    *len = (uint16_t)(*len + n);
    return true;
}

/* HTTP/2 has no reason phrase; an HTTP/1.1 client gets the usual one
 * (the status line allows none, but people read them). */
static const char *reason_of(uint16_t status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "";
    }
}

static bool is_name(const struct h2_ev *ev, const char *n)
{
    size_t k = strlen(n);
    return ev->nlen == k && !memcmp(ev->name, n, k);
}

static void on_header(struct worker *w, struct h2_slot *st, const struct h2_ev *ev)
{
    if (st->flags & (ST_BAD | ST_INTERIM))
        return;
    bool ok = true;
    if (st->flags & ST_FINAL) {
        /* Trailers: kept as lines for the client's protocol. */
        if (ev->nlen && ev->name[0] == ':')
            return;
        ok = hput(w, &st->tbid, &st->tlen, ev->name, ev->nlen) &&
             hput(w, &st->tbid, &st->tlen, ": ", 2) &&
             hput(w, &st->tbid, &st->tlen, ev->value, ev->vlen) &&
             hput(w, &st->tbid, &st->tlen, "\r\n", 2);
        st->flags |= ST_TRAILERS;
    } else if (is_name(ev, ":status")) {
        if (ev->vlen != 3 || ev->value[0] < '1' || ev->value[0] > '5') {
            st->flags |= ST_BAD;
            return;
        }
        if (ev->value[0] == '1') {
            st->flags |= ST_INTERIM;  /* a 1xx: not passed on */
            return;
        }
        st->status = (uint16_t)((ev->value[0] - '0') * 100 + (ev->value[1] - '0') * 10 +
                                (ev->value[2] - '0'));
        const char *why = reason_of(st->status);
        ok = hput(w, &st->hbid, &st->hlen, "HTTP/1.1 ", 9) &&
             hput(w, &st->hbid, &st->hlen, ev->value, 3) &&
             hput(w, &st->hbid, &st->hlen, " ", 1) &&
             hput(w, &st->hbid, &st->hlen, why, strlen(why)) &&
             hput(w, &st->hbid, &st->hlen, "\r\n", 2);
    } else if (ev->nlen && ev->name[0] == ':') {
        return;
    } else {
        if (!st->status || hop_field(ev->name, ev->nlen)) {
            st->flags |= st->status ? 0 : ST_BAD;
            return;
        }
        if (is_name(ev, "content-length"))
            st->flags |= ST_CLEN;
        ok = hput(w, &st->hbid, &st->hlen, ev->name, ev->nlen) &&
             hput(w, &st->hbid, &st->hlen, ": ", 2) &&
             hput(w, &st->hbid, &st->hlen, ev->value, ev->vlen) &&
             hput(w, &st->hbid, &st->hlen, "\r\n", 2);
    }
    if (!ok)
        st->flags |= ST_BAD;
}

/* The response's end: a chunked body gets its last chunk, with the
 * trailers when the client asked for them. */
static void on_end(struct worker *w, struct conn *u, struct h2_slot *st)
{
    if (st->flags & ST_ENDED)
        return;
    st->flags |= ST_ENDED;
    if (!(st->flags & ST_FINAL))
        return;
    if (st->flags & ST_CHUNKED) {
        bool ok = h2_queue_put(w, u, (const uint8_t *)"0\r\n", 3);
        if (ok && (st->flags & (ST_TE | ST_TRAILERS)) == (ST_TE | ST_TRAILERS))
            ok = h2_queue_put(w, u, buf_data(&w->bufs, st->tbid), st->tlen);
        if (!ok || !h2_queue_put(w, u, (const uint8_t *)"\r\n", 2)) {
            struct txn *t = txn_of(w, u);
            if (t)
                txn_abort(w, t, 502, false);
            return;
        }
    }
    h1_upstream_progress(w, u);
}

/* A header block ended: the response head goes into the queue (framed for
 * HTTP/1.1), or the trailers end the response. */
static int on_block(struct worker *w, struct conn *u, struct h2_slot *st, bool end_stream)
{
    struct txn *t = txn_of(w, u);
    if (st->flags & ST_FINAL) {
        on_end(w, u, st);
        return 0;
    }
    if (st->flags & ST_INTERIM) {
        st->flags &= ~ST_INTERIM;
        if (st->hbid != NIL)
            bufpool_put(w, st->hbid);
        st->hbid = NIL;
        return 0;
    }
    if ((st->flags & ST_BAD) || !st->status || !t) {
        if (t)
            txn_abort(w, t, 502, false);
        return 1;
    }
    bool ok = true;
    bool bodyless = st->status == 204 || st->status == 304 || t->method == H1_M_HEAD;
    if (end_stream) {
        if (!(st->flags & ST_CLEN) && !bodyless)
            ok = hput(w, &st->hbid, &st->hlen, "content-length: 0\r\n", 19);
    } else if (!(st->flags & ST_CLEN) && !bodyless) {
        st->flags |= ST_CHUNKED;
        ok = hput(w, &st->hbid, &st->hlen, "transfer-encoding: chunked\r\n", 28);
    }
    if (!ok || !hput(w, &st->hbid, &st->hlen, "\r\n", 2)) {
        txn_abort(w, t, 502, false);
        return 1;
    }
    q_push(w, u, st->hbid, st->hlen);
    st->hbid = NIL;
    st->flags |= ST_FINAL;
    if (end_stream)
        st->flags |= ST_ENDED;
    h1_upstream_progress(w, u);
    return 0;
}

static void on_data(struct worker *w, struct h2_slot *s, struct conn *u, const struct h2_ev *ev)
{
    struct h2_slot *st = h2_slot_of(w, u);
    struct txn *t = txn_of(w, u);
    if (!t || u->state != CS_OPEN || !(st->flags & ST_FINAL) || (st->flags & ST_ENDED)) {
        h2c_consume(s, ev->stream, ev->len);
        return;
    }
    bool ok;
    if (st->flags & ST_CHUNKED) {
        char line[20];
        size_t k = 0;
        static const char HEX[] = "0123456789abcdef";
        char tmp[16];
        size_t v = ev->len, m = 0;
        do {
            tmp[m++] = HEX[v & 15];
            v >>= 4;
        } while (v);
        while (m)
            line[k++] = tmp[--m];
        line[k++] = '\r';
        line[k++] = '\n';
        ok = h2_queue_put(w, u, (const uint8_t *)line, k) && h2_queue_put(w, u, ev->buf, ev->len) &&
             h2_queue_put(w, u, (const uint8_t *)"\r\n", 2);
    } else {
        ok = h2_queue_put(w, u, ev->buf, ev->len);
    }
    if (!ok) {
        h2c_consume(s, ev->stream, ev->len);
        txn_abort(w, t, 502, false);
        return;
    }
    w->c[UP_C_BYTES_FROM_UPSTREAMS] += ev->len;
    if (u->x.queued > h1_queue_limit(w, u) || (u->x.flags & X_PAUSED)) {
        u->x.flags |= X_PAUSED;       /* q_release_to clears it and kicks us */
        st->unconsumed += (uint32_t)ev->len;
    } else {
        h2c_consume(s, ev->stream, ev->len);
    }
    txn_touch(w, t);
    h1_upstream_progress(w, u);
}

/* A stream's "code" when its whole connection went (not an HTTP/2 code). */
#define LOST 0xffffffffu

/* The codec closed the stream. Before a response head, a stream the
 * server did not process (REFUSED_STREAM, or above a GOAWAY's last id) is
 * sent again elsewhere when its request may be; after it, an early end is
 * the transaction's to notice (X_EOF), as an HTTP/1.1 close would be. */
static void on_closed(struct worker *w, struct conn *u, uint32_t code)
{
    struct h2_slot *st = h2_slot_of(w, u);
    if (st->flags & ST_DETACHED)
        return;
    unlink_stream(w, st);
    st->flags |= ST_DETACHED;
    struct txn *t = txn_of(w, u);
    if (u->state != CS_OPEN || !t)
        return;
    if (code == H2C_REFUSED_STREAM && !rs_final_head(t->rs)) {
        w->c[UP_C_H2_UP_REFUSED]++;
        t->flags |= TF_REUSED;        /* unprocessed: as safe to resend as a stale connection's */
        h1_upstream_failed(w, t, -ECONNRESET);
        return;
    }
    if (code == LOST && !rs_final_head(t->rs)) {
        /* The connection went: as an HTTP/1.1 connection's close, an
         * idempotent request on a reused one is sent once more. */
        h1_upstream_failed(w, t, -ECONNRESET);
        return;
    }
    if (code != 0 && !rs_final_head(t->rs)) {
        /* The server reset this stream (it may have acted on it): 502. */
        w->c[UP_C_ERR_UPSTREAM_RESET]++;
        w->srv[u->slot].errors++;
        txn_abort(w, t, 502, false);
        return;
    }
    u->x.flags |= X_EOF;
    h1_upstream_progress(w, u);
}

/* The codec's events on an upstream connection (h2_on_event sends them
 * here): 0 go on; 1 reset this stream; -1 end the connection. */
int h2_up_event(struct worker *w, struct h2_slot *s, struct h2_ev *ev)
{
    struct conn *pc = &w->conns[s->self];
    struct conn *u = ev->sc == NIL ? NULL : &w->conns[ev->sc];
    if (u && (u->kind != CK_H2_USTREAM || h2_slot_of(w, u)->owner != s->self ||
              h2_slot_of(w, u)->id != ev->stream))
        u = NULL;                     /* a stale binding: the stream was forgotten */
    switch (ev->kind) {
    case H2E_HEADER:
        if (u)
            on_header(w, h2_slot_of(w, u), ev);
        return 0;
    case H2E_RESPONSE:
        if (!u)
            return 1;
        if (on_block(w, u, h2_slot_of(w, u), ev->end_stream))
            return 1;
        if (ev->end_stream)
            on_end(w, u, h2_slot_of(w, u));
        return 0;
    case H2E_DATA:
        if (u)
            on_data(w, s, u, ev);
        else
            h2c_consume(s, ev->stream, ev->len);
        return 0;
    case H2E_END_STREAM:
        if (u)
            on_end(w, u, h2_slot_of(w, u));
        return 0;
    case H2E_CLOSED:
        if (u)
            on_closed(w, u, ev->code);
        return 0;
    case H2E_READ:
        if (u)
            on_read(w, u, ev);
        else
            ev->eof = 1;
        return 0;
    case H2E_GOAWAY:
        /* No new streams here; the codec closes those above the last id
         * with REFUSED_STREAM (sent again elsewhere, on_closed). */
        w->c[UP_C_H2_UP_GOAWAYS]++;
        s->flags |= CF_DRAIN;
        pool_remove(w, pc);
        return 0;
    case H2E_SETTINGS:
        s->cap = ev->n < s->max_streams ? (uint32_t)ev->n : s->max_streams;
        if (pc->state == CS_OPEN)
            offer(w, pc);
        return 0;
    case H2E_BEGIN:
    case H2E_REQUEST:
    case H2E_GLITCH:
        return 0;
    }
    return 0;
}

/* ---- the stream, as the loop sees it ------------------------------------ */

/* The transaction moved (C_UP_KICK): a stream to place, a request round
 * to take, a round the codec has read, windows to give back. */
void h2_ustream_kick(struct worker *w, struct conn *u)
{
    struct txn *t = txn_of(w, u);
    if (!t)
        return;
    if (u->h1 == H_DIAL) {
        place(w, u);
        return;
    }
    struct h2_slot *st = h2_slot_of(w, u);
    if (st->owner == NIL || u->h1 != H_BUSY)
        return;
    struct conn *pc = &w->conns[st->owner];
    struct h2_slot *s = h2_slot_of(w, pc);
    if (!s->session || pc->state != CS_OPEN)
        return;
    if (!(st->flags & ST_SUBMITTED)) {
        if (!t->req.active)
            return;
        if (submit_head(w, s, st, t) < 0) {
            txn_abort(w, t, 502, false);
            h2_flush(w, pc);
            return;
        }
    }
    if (st->unconsumed && !(u->x.flags & X_PAUSED)) {
        h2c_consume(s, st->id, st->unconsumed);
        st->unconsumed = 0;
    }
    if (t->req.active && !t->req.left) {
        txn_sent(w, t, &t->req, u, 0);
        t = txn_of(w, u);
    }
    if ((st->flags & (ST_SUBMITTED | ST_EOF | ST_DETACHED)) == ST_SUBMITTED &&
        (st->flags & ST_DEFERRED)) {
        st->flags &= ~ST_DEFERRED;
        h2c_resume(s, st->id);
    }
    h2_flush(w, pc);
}

/* The stream connection closes: the codec forgets it (reset, when the
 * server's side is still open), its connection may take another. */
void h2_ustream_detach(struct worker *w, struct conn *u)
{
    struct h2_slot *st = h2_slot_of(w, u);
    if (u->h1 == H_DIAL)
        return;                       /* never placed: nothing of it is here */
    /* Its transaction ended well (the whole response is in): the server's
     * END_STREAM may still be on its way, and a reset now would race it
     * (a CANCEL for a stream the server has closed). Left unbound, the
     * codec closes it as it ends and its last frames are dropped. */
    bool done = u->h1 == H_LINGER;
    u->h1 = H_DIAL;
    if (st->hbid != NIL)
        bufpool_put(w, st->hbid);
    if (st->tbid != NIL)
        bufpool_put(w, st->tbid);
    st->hbid = st->tbid = NIL;
    if (st->flags & ST_DETACHED)
        return;
    st->flags |= ST_DETACHED;
    uint32_t owner = st->owner;
    if (owner == NIL)
        return;
    struct h2_slot *s = slot_at(w, owner);
    if (s->session && (st->flags & ST_SUBMITTED)) {
        h2c_bind(s, st->id, NIL);
        if (!done)
            h2c_reset(s, st->id, H2C_CANCEL);
    }
    unlink_stream(w, st);
    h2_flush(w, &w->conns[owner]);
}

void h2_ustream_finish(struct worker *w, struct conn *u)
{
    h2_ustream_detach(w, u);
    if (u->peer != NIL && w->conns[u->peer].kind == CK_H2_STREAM &&
        w->conns[u->peer].state == CS_CLOSING)
        h2_stream_detach(w, &w->conns[u->peer]);
    h1_try_finish(w, u);
}

/* ---- the connection, as the loop sees it -------------------------------- */

static void ready(struct worker *w, struct conn *pc)
{
    struct h2_slot *s = h2_slot_of(w, pc);
    s->flags |= CF_READY;
    for (uint32_t i = s->streams; i != NIL;) {
        struct conn *u = &w->conns[i];
        i = slot_at(w, i)->snext;
        if (u->h1 == H_WAIT)
            submit(w, u);
    }
    h2_flush(w, pc);
}

/* The connection ends: its streams end with it (their transactions see
 * the end as an HTTP/1.1 connection's close), the codec's session goes. */
static void up_end(struct worker *w, struct conn *pc)
{
    struct h2_slot *s = h2_slot_of(w, pc);
    if (pc->state >= CS_CLOSING)
        return;
    pool_remove(w, pc);
    s->flags |= CF_CLOSE;
    while (s->streams != NIL) {
        struct conn *u = &w->conns[s->streams];
        on_closed(w, u, LOST);
    }
    h2c_close(w, s);
    conn_close(w, pc, false);
}

void h2_up_end(struct worker *w, struct conn *pc)
{
    up_end(w, pc);
}

/* The table the connection was dialed with: its streams' transactions
 * hold it (the server index means something in it alone). */
static const struct up_config *dial_cfg(struct worker *w, struct h2_slot *s)
{
    for (uint32_t i = s->streams; i != NIL; i = slot_at(w, i)->snext) {
        struct txn *t = txn_of(w, &w->conns[i]);
        if (t)
            return t->cfg;
    }
    return NULL;
}

static void on_connect(struct worker *w, struct conn *pc, struct io_uring_cqe *cqe)
{
    struct h2_slot *s = h2_slot_of(w, pc);
    if (pc->state != CS_CONNECTING)
        return;
    const struct up_config *cfg = dial_cfg(w, s);
    if (cqe->res == 0) {
        hist_add(w->shm->hist_connect, w->now_us - pc->t_us);
        if (cfg)
            balance_result(w, cfg, pc->server, true);
        pc->state = CS_OPEN;
        if (s->tls) {
            /* TLS first, ALPN h2 offered: the streams go once it is up.
             * (Its context lives while a transaction holds the table it
             * came with: with none left, the connection is not needed.) */
            if (!cfg) {
                up_end(w, pc);
                return;
            }
            if (tp_tls_connect(w, pc, s->tls, NULL) < 0) {
                replace_streams(w, pc);
                up_end(w, pc);
                return;
            }
            h1_recv_arm(w, pc);
            return;
        }
        h1_recv_arm(w, pc);
        ready(w, pc);
        return;
    }
    if (cfg) {
        dial_failed(w, pc, cfg, cqe->res);
    } else {
        dial_gone(w, pc);
        conn_unfix(w, pc);
        close(pc->fd);
        pc->fd = -1;
    }
    pc->state = CS_OPEN;              /* (so that it can close like an open one) */
    pool_remove(w, pc);
    replace_streams(w, pc);
    up_end(w, pc);
}

static void on_recv(struct worker *w, struct conn *pc, struct io_uring_cqe *cqe)
{
    struct h2_slot *s = h2_slot_of(w, pc);
    bool more = cqe->flags & IORING_CQE_F_MORE;
    uint32_t bid;
    int res = tp_received(w, pc, cqe, &bid);
    if (bid != NIL) {
        if (pc->state == CS_OPEN && res > 0 && s->session && !(s->flags & CF_CLOSE)) {
            w->c[UP_C_BYTES_FROM_UPSTREAMS] += (uint64_t)res;
            if (h2c_recv(s, buf_data(&w->bufs, bid), (size_t)res) < 0)
                s->flags |= CF_CLOSE;     /* the codec queued its GOAWAY */
        }
        bufpool_put(w, bid);
    }
    if (pc->state != CS_OPEN)
        return;
    if (res == -EAGAIN) {
        if (!(s->flags & CF_READY) && tp_ready(w, pc)) {
            if (!tp_tls_alpn_is(w, pc, "h2", 2)) {
                /* The server does not speak HTTP/2 over TLS: its streams
                 * cannot go here (counted; each request gets 502). */
                w->c[UP_C_H2_UP_NO_ALPN]++;
                w->srv[pc->slot].errors++;
                struct h2_slot *sl = s;
                while (sl->streams != NIL) {
                    struct conn *u = &w->conns[sl->streams];
                    struct h2_slot *st = h2_slot_of(w, u);
                    unlink_stream(w, st);
                    st->flags |= ST_DETACHED;
                    struct txn *t = txn_of(w, u);
                    if (t && u->state == CS_OPEN)
                        txn_abort(w, t, 502, false);
                }
                up_end(w, pc);
                return;
            }
            ready(w, pc);
        }
        if (!more && pc->state == CS_OPEN)
            h1_recv_arm(w, pc);
        return;
    }
    if (res == 0 || (res < 0 && res != -ECANCELED)) {
        if (res == -ENOBUFS) {
            conn_starve(w, pc);
            return;
        }
        if (res < 0)
            w->c[res == -ECONNRESET ? UP_C_ERR_UPSTREAM_RESET : UP_C_ERR_OTHER]++;
        if (!(s->flags & CF_READY))
            replace_streams(w, pc);   /* TLS failed: nothing was sent */
        up_end(w, pc);
        return;
    }
    h2_flush(w, pc);
    if (!more && pc->state == CS_OPEN)
        h1_recv_arm(w, pc);
}

void h2_up_cqe(struct worker *w, struct conn *pc, enum op op, struct io_uring_cqe *cqe)
{
    switch (op) {
    case OP_CONNECT:
        on_connect(w, pc, cqe);
        break;
    case OP_RECV:
        on_recv(w, pc, cqe);
        break;
    case OP_SEND:
        h2_conn_cqe(w, pc, op, cqe);
        break;
    default:
        break;
    }
}

/* Idle in the pool past pool_idle_timeout: closed (one with streams under
 * way keeps its time). */
void h2_up_expired(struct worker *w, struct conn *pc)
{
    struct h2_slot *s = h2_slot_of(w, pc);
    if (s->nstreams) {
        timer_set(w, pc, w->now_ms + (s->idle_ms ? s->idle_ms : 60000));
        return;
    }
    up_end(w, pc);
}

void h2_up_finish(struct worker *w, struct conn *pc)
{
    struct h2_slot *s = h2_slot_of(w, pc);
    if (s->out_bid != NIL) {
        bufpool_put(w, s->out_bid);
        s->out_bid = NIL;
    }
    h2c_close(w, s);
    dial_gone(w, pc);
    q_release_all(w, pc);
    tp_release(w, pc);
    conn_submit_close(w, pc);
}

/* On SIGTERM: connections without streams close now; the others once
 * their last stream is done. */
void h2_up_stop_all(struct worker *w)
{
    for (uint32_t i = 0; i < w->nconns; i++) {
        struct conn *pc = &w->conns[i];
        if (pc->kind != CK_H2_UPSTREAM || pc->state != CS_OPEN)
            continue;
        struct h2_slot *s = h2_slot_of(w, pc);
        pool_remove(w, pc);
        s->flags |= CF_DRAIN;
        if (!s->nstreams)
            up_end(w, pc);
    }
}
