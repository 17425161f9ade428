/*
 * One HTTP transaction: a request from the client and its response from
 * the upstream. Bytes go out in rounds (struct out): one sendmsg per
 * direction at a time, whose iovecs point at the received bytes themselves
 * (request line, kept header lines, body) plus a few added strings, so an
 * unmodified part of a head is never copied. A round's buffers go back to
 * the pool when the round is out.
 *
 * This file is the transaction's lifecycle: its rounds, its bodies, its
 * start (txn_begin), its pumps and completions, its end or abort. Routing
 * is h1_route.c, head building h1_head.c, the proxy's own answers
 * h1_reply.c, where the request and the response are h1_state.c.
 */
#include <errno.h>
#include <string.h>
#include "http/h1.h"

struct txn *txn_of(struct worker *w, const struct conn *c)
{
    return c->txn == NIL ? NULL : &w->txns[c->txn];
}

/* Append bytes to a round; a piece that continues the previous iovec in
 * memory extends it (kept header lines are usually adjacent). */
bool out_push(struct out *o, const void *p, size_t n)
{
    if (!n)
        return true;
    if (o->n) {
        struct iovec *last = &o->iov[o->n - 1];
        if ((const uint8_t *)last->iov_base + last->iov_len == (const uint8_t *)p) {
            last->iov_len += n;
            o->left += (uint32_t)n;
            return true;
        }
    }
    if (o->n == OUT_IOV)
        return false;
    o->iov[o->n].iov_base = (void *)p;
    o->iov[o->n].iov_len = n;
    o->n++;
    o->left += (uint32_t)n;
    return true;
}

static void out_reset(struct out *o)
{
    o->n = o->first = 0;
    o->left = 0;
    o->rel_bid = NIL;
    o->rel_off = 0;
}

void out_submit(struct worker *w, struct out *o, struct conn *to)
{
    o->active = 1;
    if (o->n - o->first == 1) {
        /* One piece (an unmodified response, or a body round): a plain
         * send skips the msghdr and iovec import. */
        tp_send(w, to, o->iov[o->first].iov_base, o->iov[o->first].iov_len);
    } else {
        o->msg.msg_iov = &o->iov[o->first];
        o->msg.msg_iovlen = (size_t)(o->n - o->first);
        tp_sendmsg(w, to, &o->msg);
    }
}

/* A round of several pieces that fits in `area` becomes one piece there,
 * so that it goes out with a plain send: a sendmsg costs the kernel the
 * msghdr's copy and the iovecs' import besides (io_uring's
 * io_sendmsg_setup and io_net_import_vec, ~2% of the worker's time in an
 * h2c profile, for one upstream request per client request). The copy is
 * of a request head's hundred or two bytes. At most one piece may lie in
 * `area` itself (the added lines, written there): it moves to its place
 * first, then the others are copied around it. */
static void out_flatten(struct out *o, char *area, size_t cap)
{
    uint16_t n = o->n, first = o->first;
    if (n - first < 2 || o->left > cap)
        return;
    int inside = -1;
    size_t at = 0, off = 0;
    for (uint16_t i = first; i < n; i++) {
        const char *b = o->iov[i].iov_base;
        if (b + o->iov[i].iov_len > area && b < area + cap) {
            if (inside >= 0)
                return;
            inside = i;
            at = off;
        }
        off += o->iov[i].iov_len;
    }
    if (inside >= 0)
        memmove(area + at, o->iov[inside].iov_base, o->iov[inside].iov_len);
    off = 0;
    for (uint16_t i = first; i < n; i++) {
        if (i != inside)
            memcpy(area + off, o->iov[i].iov_base, o->iov[i].iov_len);
        off += o->iov[i].iov_len;
    }
    o->iov[0].iov_base = area;
    o->iov[0].iov_len = off;
    o->first = 0;
    o->n = 1;
}

/* After a short send: drop what went out from the front of the round. */
void out_advance(struct out *o, uint32_t n)
{
    o->left -= n;
    while (n) {
        struct iovec *v = &o->iov[o->first];
        if (n >= v->iov_len) {
            n -= (uint32_t)v->iov_len;
            o->first++;
        } else {
            v->iov_base = (uint8_t *)v->iov_base + n;
            v->iov_len -= n;
            n = 0;
        }
    }
}

/* ---- bodies --------------------------------------------------------------- */

/* Walk the cursor over queue q from (*bid, *off): returns the contiguous
 * bytes there (0 at the end). */
uint32_t txn_cur_avail(struct worker *w, const struct conn *q, uint32_t *bid, uint32_t *off,
                       const uint8_t **p)
{
    const struct bufpool *bp = &w->bufs;
    if (*bid == NIL) {
        *bid = q->x.head;
        *off = q->x.off;
    }
    while (*bid != NIL && *off == bp->len[*bid] && bp->next[*bid] != NIL) {
        *bid = bp->next[*bid];
        *off = 0;
    }
    if (*bid == NIL)
        return 0;
    *p = buf_data(bp, *bid) + *off;
    return bp->len[*bid] - *off;
}

/* Add the body bytes that have arrived to a round, following the framing.
 * A round that fills up simply ends: the rest goes in the next one.
 * Returns -1 on malformed chunked framing. */
static int add_body(struct worker *w, struct out *o, const struct conn *q, uint8_t kind,
                    uint64_t *left, struct h1_chunked *ck, uint32_t *bid, uint32_t *off,
                    uint64_t *bytes, bool *done)
{
    const uint8_t *p;
    uint32_t avail;
    while (!*done && o->n < OUT_IOV && (avail = txn_cur_avail(w, q, bid, off, &p)) > 0) {
        uint32_t n;
        if (kind == H1_BODY_LENGTH) {
            n = *left < avail ? (uint32_t)*left : avail;
            *left -= n;
            *done = *left == 0;
        } else if (kind == H1_BODY_CHUNKED) {
            int d = 0;
            int64_t k = h1_chunked_feed(ck, p, avail, &d);
            if (k < 0)
                return -1;
            n = (uint32_t)k;
            *done = d;
        } else {                      /* CLOSE: everything until EOF */
            n = avail;
        }
        out_push(o, p, n);            /* room was checked above */
        *off += n;
        *bytes += n;
    }
    o->rel_bid = *bid;
    o->rel_off = *off;
    return 0;
}

/* Returns -1 on bad framing (400), -3 past max_body_size (413). */
static int add_req_body(struct worker *w, struct txn *t)
{
    bool done = rq_all_in(t->rq);
    uint64_t before = t->bytes_in;
    int r = add_body(w, &t->req, &w->conns[t->client], t->req_body, &t->req_left, &t->req_ck,
                     &t->req_bid, &t->req_off, &t->bytes_in, &done);
    t->body_seen += t->bytes_in - before;
    if (done && !rq_all_in(t->rq))
        h1_req_step(&t->rq, RQE_ALL_IN);
    if (r == 0 && t->max_body && t->body_seen > t->max_body)
        return -3;            /* chunked: counted as it streams (framing bytes included) */
    return r;
}

static int add_resp_body(struct worker *w, struct txn *t)
{
    if (__builtin_expect(t->cz_slot != 0, 0))
        return cz_body(w, t);         /* compressed: chunks of its own */
    bool done = rs_all_in(t->rs);
    int r = add_body(w, &t->resp, &w->conns[t->up], t->resp_body, &t->resp_left, &t->resp_ck,
                     &t->resp_bid, &t->resp_off, &t->bytes_out, &done);
    if (done && !rs_all_in(t->rs))
        h1_resp_step(&t->rs, RSE_ALL_IN);
    return r;
}

/* ---- the transaction ------------------------------------------------------ */

struct txn *txn_alloc(struct worker *w)
{
    if (!w->ntxn_free)
        return NULL;
    struct txn *t = &w->txns[w->txn_free[--w->ntxn_free]];
    memset(t, 0, offsetof(struct txn, req));   /* not the rounds: filled when used */
    out_reset(&t->req);
    out_reset(&t->resp);
    t->req.active = t->resp.active = 0;
    t->up = t->server = NIL;
    t->req_bid = t->resp_bid = t->start_bid = NIL;
    t->req_splice.pipe = t->resp_splice.pipe = -1;
    return t;
}

void txn_free(struct worker *w, struct txn *t)
{
    splice_release(w, t);
    if (__builtin_expect(t->pol != NULL, 0))
        pol_end(w, t);
    if (__builtin_expect(t->res != 0, 0))
        res_end(w, t);
    if (__builtin_expect(t->cz_slot != 0, 0))
        cz_release(w, t);
    if (t->cfg) {
        const struct up_config *cfg = t->cfg;
        t->cfg = NULL;
        cfg_unref(w, cfg);
    }
    w->txn_free[w->ntxn_free++] = (uint32_t)(t - w->txns);
}

struct txn *txn_open(struct worker *w, struct conn *c, const struct h1_request *r)
{
    struct txn *t = txn_alloc(w);
    if (!t) {
        h1_client_reply_error(w, c, 503);
        return NULL;
    }
    const struct up_config *cfg = w->cfg;
    c->txn = (uint32_t)(t - w->txns);
    c->h1 = H_TXN;
    t->client = (uint32_t)(c - w->conns);
    t->cfg = cfg;
    cfg_ref(w, cfg);
    t->t_start = w->now_us;
    t->method = r->method;
    t->minor = r->minor;
    t->keep_alive = r->keep_alive;
    t->rslot = UP_NO_SLOT;            /* until a route takes it */
    t->sink = c->kind == CK_H2_STREAM ? TS_STREAM : TS_CLIENT;
    return t;
}

/* A parsed request head at the front of c's queue starts a transaction. */
void txn_begin(struct worker *w, struct conn *c, const uint8_t *base, uint32_t base_bid,
               uint32_t base_off, const struct h1_request *r, const struct up_listener *l)
{
    struct txn *t = txn_open(w, c, r);
    if (!t)
        return;
    const struct up_config *cfg = t->cfg;
    t->req_body = r->body;
    t->req_left = r->content_length;
    if (r->body == H1_BODY_CHUNKED)
        h1_chunked_init(&t->req_ck);
    if (r->upgrade)
        t->flags |= TF_UPGRADE;
    if (!r->keep_alive)
        t->flags |= TF_CLIENT_CLOSE;
    t->start_bid = base_bid;
    t->start_off = base_off;

    /* Routing: by the authority of an absolute-form target, else Host. */
    const uint8_t *host, *path;
    uint32_t host_len, path_len;
    h1_request_target(base, r, &host, &host_len, &path, &path_len);
    const struct up_route *rt = h1_route(cfg, l, host, host_len, path, path_len);
    t->cluster = rt ? rt->cluster : l->cluster;
    t->upk = cfg->clusters[t->cluster].protocol == UP_PROTO_H2 ? TU_H2 : TU_H1;
    if (rt && rt->stat_slot != UP_NO_SLOT && w->lst) {
        t->rslot = (uint16_t)rt->stat_slot;
        w->lst[t->rslot].requests++;
    }
    if (__builtin_expect(!h1_method_allowed(rt, r->method), 0)) {
        /* A method the route does not allow: 405 with the route's Allow
         * (built at load), or 501 for CONNECT where nothing named methods. */
        uint16_t st = rt && rt->deny_len ? 405 : 501;
        t->flags |= TF_CLIENT_CLOSE;
        log_begin(w, t, c, base, r, l);
        log_end(w, t, st);
        if (st == 405)
            h1_client_reply_text(w, c, st, cfg->strings + rt->deny_off, rt->deny_len);
        else
            h1_client_reply_error(w, c, st);
        return;
    }
    t->hash_key = h1_hash_key(w, c, cfg, &cfg->clusters[t->cluster], base, r);

    t->idle_ms = l->idle_timeout_ms;
    t->listener = l;
    t->max_body = l->max_body;
    t->keep_underscores = l->keep_underscores != 0;
    t->bytes_in = r->head_len;
    /* The route's policy (h1_policy.c): the one branch a route without
     * one pays. It may answer the request itself. */
    if (__builtin_expect(rt && rt->policy, 0) && pol_request(w, t, c, rt, base, r, l))
        return;
    if (t->max_body && r->body == H1_BODY_LENGTH && r->content_length > t->max_body) {
        /* Refused before a byte of it is read or forwarded. */
        t->flags |= TF_CLIENT_CLOSE;
        log_begin(w, t, c, base, r, l);
        log_end(w, t, 413);
        h1_client_reply_error(w, c, 413);
        return;
    }
    log_begin(w, t, c, base, r, l);
    h1_count_request(w, c);
    if (!txn_build_head(w, t, base, base_bid, base_off, r)) {
        h1_client_reply_error(w, c, 431);
        return;
    }
    if (__builtin_expect(t->fa == FA_ASKING, 0)) {
        h1_upstream_assign(w, t);     /* the body waits for the auth service's yes */
        return;
    }
    int b = add_req_body(w, t);
    if (b < 0) {
        log_end(w, t, b == -3 ? 413 : 400);
        h1_client_reply_error(w, c, b == -3 ? 413 : 400);
        return;
    }
    if (!rq_all_in(t->rq))
        splice_consider(w, t, BS_REQ);
    h1_upstream_assign(w, t);
}

/* The first round toward the upstream: the rewritten head, then (by the
 * caller) whatever body came with it. Also used to send a request again. */
bool txn_build_head(struct worker *w, struct txn *t, const uint8_t *base, uint32_t bid,
                    uint32_t off, const struct h1_request *r)
{
    out_reset(&t->req);
    t->req.active = 0;     /* a retry forgets the round lost with the old connection */
    if (__builtin_expect(t->fa == FA_ASKING, 0))
        return fa_build(w, t, base, bid, off, r);   /* the auth subrequest first */
    if (!h1_build_req_head(w, t, base, r, t->keep_underscores))
        return false;
    if (r->body == H1_BODY_NONE)
        h1_req_step(&t->rq, RQE_ALL_IN);
    t->req_bid = bid;
    t->req_off = off + r->head_len;
    t->req.rel_bid = t->req_bid;
    t->req.rel_off = t->req_off;
    return true;
}

/* Send what is ready toward the upstream. */
void txn_req_pump(struct worker *w, struct txn *t)
{
    if (t->req.active || t->up == NIL || w->conns[t->up].h1 != H_BUSY ||
        w->conns[t->up].state != CS_OPEN)
        return;
    struct conn *u = &w->conns[t->up];
    if (rq_head_out(t->rq)) {
        if (rq_all_in(t->rq))
            return;
        out_reset(&t->req);
        int b = add_req_body(w, t);
        if (b < 0) {
            txn_abort(w, t, b == -3 ? 413 : 400, false);
            return;
        }
    }
    if (!t->req.left)
        return;
    if (!rq_head_out(t->rq)) {
        t->t_sent = w->now_us;
        u->expires_ms = w->now_ms + (t->fa == FA_ASKING ? fa_timeout_ms(t) :
                                     t->cfg->clusters[t->cluster].response_timeout_ms);
        timer_arm(w, u);
    }
    if (t->upk == TU_H2) {
        t->req.active = 1;            /* the stream's protocol takes the round */
        conn_hand_up(w, u, C_UP_KICK);
        return;
    }
    if (!rq_head_out(t->rq))
        out_flatten(&t->req, t->scratch, sizeof t->scratch);
    out_submit(w, &t->req, u);
}

/* Send what is ready toward the client; notice the end of the response,
 * or its premature end. */
void txn_resp_pump(struct worker *w, struct txn *t)
{
    if (t->resp.active)
        return;
    struct conn *c = &w->conns[t->client];
    if (!(t->flags & TF_RESP_ROUND)) {
        if (!rs_final_head(t->rs) || t->up == NIL)
            return;
        out_reset(&t->resp);
        if (add_resp_body(w, t) < 0) {
            txn_abort(w, t, 502, false);
            return;
        }
        if ((w->conns[t->up].x.flags & X_EOF) && t->resp_body == H1_BODY_CLOSE &&
            !rs_all_in(t->rs))
            h1_resp_step(&t->rs, RSE_ALL_IN);   /* a close-delimited body ends with the close */
    }
    t->flags &= ~TF_RESP_ROUND;
    if (!t->resp.left) {
        if (rs_all_in(t->rs)) {
            if (!t->req.active)
                txn_end(w, t);
        } else if (t->up != NIL && (w->conns[t->up].x.flags & X_EOF) &&
                   t->resp_body != H1_BODY_TUNNEL) {
            /* The upstream closed before the body's end: the client is cut
             * too, so it sees the response is incomplete. */
            w->c[UP_C_ERR_SHORT_BODY]++;
            txn_abort(w, t, 0, false);
        }
        return;
    }
    /* A 1xx does not answer the request: after one, the proxy can still
     * send a final response of its own if the upstream fails. */
    h1_resp_step(&t->rs, RSE_SENDING);
    if (t->sink == TS_STREAM) {
        t->resp.active = 1;           /* the stream's protocol takes the round */
        conn_hand_up(w, c, C_UP_KICK);
        return;
    }
    out_submit(w, &t->resp, c);
}

/* Called by the upstream side when a final (or 1xx) head has been parsed
 * at the front of its queue. */
int txn_response_head(struct worker *w, struct txn *t, const uint8_t *base,
                      const struct h1_response *r)
{
    struct conn *u = &w->conns[t->up];
    if (__builtin_expect(t->fa == FA_ASKING, 0) && fa_answer(w, t, base, r))
        return 0;                     /* the auth service's yes (or a 1xx) */
    out_reset(&t->resp);
    if (t->sink == TS_STREAM && r->status < 200) {
        /* An interim head is not passed to an HTTP/2 stream: dropped, and
         * the next head read. */
        q_release_to(w, u, u->x.head, u->x.off + r->head_len);
        h1_upstream_progress(w, u);
        return 0;
    }
    if (r->status < 200 && r->status != 101) {
        /* Interim (100 Continue and friends): forwarded as it is, without
         * the empty lines the parser skipped before it. */
        out_push(&t->resp, base + r->skip, r->head_len - r->skip);
        t->resp_bid = u->x.head;
        t->resp_off = u->x.off + r->head_len;
        t->resp.rel_bid = t->resp_bid;
        t->resp.rel_off = t->resp_off;
        t->flags |= TF_RESP_ROUND;
        txn_resp_pump(w, t);
        return 0;
    }
    t->status = r->status;
    if (__builtin_expect(t->brk != 0, 0))
        res_result(w, t, r->status);  /* its cluster's breaker learns the outcome */
    t->resp_body = r->body;
    t->resp_left = r->content_length;
    if (r->body == H1_BODY_CHUNKED)
        h1_chunked_init(&t->resp_ck);
    if (r->body == H1_BODY_CLOSE || !rq_all_in(t->rq) || w->stopping)
        t->flags |= TF_CLIENT_CLOSE;
    if (!r->keep_alive)
        t->flags |= TF_UP_CLOSE;      /* the upstream will close: not reusable */
    h1_resp_step(&t->rs, RSE_FINAL_HEAD);
    timer_cancel(w, u);               /* the response timeout is met */
    if (__builtin_expect(t->cz_step != 0, 0))
        cz_response(w, t, base, r);   /* compressed? (the route's compress step) */
    if (t->sink == TS_STREAM) {
        /* The head as the upstream sent it: the stream's protocol reads
         * it from the front of the round and writes its own. */
        if (!out_push(&t->resp, base, r->head_len)) {
            txn_abort(w, t, 502, false);
            return -1;
        }
    } else if (!h1_build_resp_head(w, t, base, r)) {
        txn_abort(w, t, 502, false);
        return -1;
    }
    t->resp_bid = u->x.head;
    t->resp_off = u->x.off + r->head_len;
    if (r->body == H1_BODY_NONE) {
        h1_resp_step(&t->rs, RSE_ALL_IN);
        t->resp.rel_bid = t->resp_bid;
        t->resp.rel_off = t->resp_off;
    } else if (r->body != H1_BODY_TUNNEL && add_resp_body(w, t) < 0) {
        txn_abort(w, t, 502, false);
        return -1;
    } else if (r->body == H1_BODY_TUNNEL) {
        t->resp.rel_bid = t->resp_bid;
        t->resp.rel_off = t->resp_off;
    }
    if (!rs_all_in(t->rs) && !t->cz_slot)
        splice_consider(w, t, BS_RESP);   /* a compressed body goes through buffers */
    hist_add(w->shm->hist_upstream, w->now_us - t->t_sent);
    h1_count_response(w, &w->conns[t->client], r->status);
    if (r->status >= 500) {
        w->srv[u->slot].errors++;
        w->srv[u->slot].resp_5xx++;
    }
    /* The request's head is no longer needed for a retry. */
    struct conn *c = &w->conns[t->client];
    if (rq_all_in(t->rq) && !t->req.active) {
        q_release_to(w, c, t->req_bid, t->req_off);
        t->req_bid = NIL;
    }
    t->flags |= TF_RESP_ROUND;
    txn_resp_pump(w, t);
    return 0;
}

/* A round went out (res >= 0) or failed (res < 0). */
void txn_sent(struct worker *w, struct txn *t, struct out *o, struct conn *to, int res)
{
    o->active = 0;
    if (res < 0) {
        if (o == &t->req) {
            /* The upstream went away under the request. */
            h1_upstream_failed(w, t, res);
        } else {
            w->c[res == -ECONNRESET || res == -EPIPE ? UP_C_ERR_CLIENT_RESET : UP_C_ERR_OTHER]++;
            txn_abort(w, t, 0, true);
        }
        return;
    }
    if ((uint32_t)res < o->left) {
        out_advance(o, (uint32_t)res);
        out_submit(w, o, to);
        return;
    }
    if (o == &t->resp) {
        w->c[UP_C_BYTES_TO_CLIENTS] += (uint64_t)res;
        if (t->rs == RS_ERROR) {
            h1_client_close(w, to, false);
            return;
        }
        if (t->rs == RS_ERROR_LATER) {
            /* The 1xx is out; the proxy's final answer follows it. */
            h1_client_reply_error(w, to, t->status);
            return;
        }
        if (t->up != NIL)
            q_release_to(w, &w->conns[t->up], o->rel_bid, o->rel_off);
        t->resp_bid = NIL;            /* the queue's front is the next byte */
        if (rs_final_head(t->rs) &&
            ((t->status == 101 && (t->flags & TF_UPGRADE)) ||
             (t->method == H1_M_CONNECT && t->resp_body == H1_BODY_TUNNEL))) {
            /* 101 to an Upgrade, or a 2xx to a CONNECT a route allowed. */
            h1_tunnel(w, t);
            return;
        }
        if (!rs_final_head(t->rs)) {
            /* A 1xx went out: the final head may be waiting already. */
            h1_upstream_progress(w, &w->conns[t->up]);
            return;
        }
        if (rs_all_in(t->rs) && !t->req.active) {
            txn_end(w, t);
            return;
        }
        txn_resp_pump(w, t);
        if (w->conns[t->client].txn == (uint32_t)(t - w->txns))
            splice_progress(w, t);
        return;
    }
    /* Request round out. */
    w->c[UP_C_BYTES_TO_UPSTREAMS] += (uint64_t)res;
    struct conn *c = &w->conns[t->client];
    h1_req_step(&t->rq, RQE_ROUND_OUT);
    if (t->req_body != H1_BODY_NONE || rs_final_head(t->rs)) {
        /* Bodies are never retried: their bytes can go at once. */
        q_release_to(w, c, o->rel_bid, o->rel_off);
        t->req_bid = NIL;
    }
    if (rs_all_in(t->rs) && !t->resp.active) {
        txn_end(w, t);
        return;
    }
    txn_req_pump(w, t);
    if (c->txn == (uint32_t)(t - w->txns))
        splice_progress(w, t);
}

/* The response is out and the request is in: the upstream connection goes
 * back to the pool (or closes), and the client waits for its next request
 * (or closes). */
void txn_end(struct worker *w, struct txn *t)
{
    struct conn *c = &w->conns[t->client];
    splice_unhold(w, t);
    hist_add(w->shm->hist_request, w->now_us - t->t_start);
    if (w->lst) {
        hist_add(w->lst[c->lslot].hist_request, w->now_us - t->t_start);
        if (t->rslot != UP_NO_SLOT)
            hist_add(w->lst[t->rslot].hist_request, w->now_us - t->t_start);
    }
    log_end(w, t, t->status);
    if (t->up != NIL) {
        struct conn *u = &w->conns[t->up];
        const struct up_cluster *cl = &t->cfg->clusters[t->cluster];
        bool reusable = !(t->flags & TF_UP_CLOSE) && rq_all_in(t->rq) &&
                        t->resp_body != H1_BODY_CLOSE && u->x.head == NIL &&
                        !(u->x.flags & X_EOF) && !w->stopping &&
                        (!cl->max_requests || u->nreq + 1 < cl->max_requests);
        h1_upstream_release(w, u, reusable);
    }
    q_release_to(w, c, t->req_bid, t->req_off);
    if (t->sink == TS_STREAM) {
        /* The stream ends its body when its protocol is told. */
        c->txn = NIL;
        c->peer = NIL;
        txn_free(w, t);
        q_release_all(w, c);
        timer_cancel(w, c);
        c->h1 = H_LINGER;
        conn_hand_up(w, c, C_UP_KICK);
        return;
    }
    bool keep = !(t->flags & TF_CLIENT_CLOSE) && rq_all_in(t->rq) && !w->stopping &&
                !(c->x.flags & X_EOF);
    c->txn = NIL;
    c->peer = NIL;
    txn_free(w, t);
    if (!keep) {
        h1_finish(w, c);
        return;
    }
    c->h1 = H_IDLE;
    h1_client_next(w, c);
}

void h1_count_request(struct worker *w, const struct conn *c)
{
    w->c[UP_C_REQUESTS]++;
    if (w->lst)
        w->lst[c->lslot].requests++;
}

void h1_count_response(struct worker *w, const struct conn *c, uint16_t status)
{
    unsigned k = status < 200 ? 0 : status < 300 ? 1 : status < 400 ? 2 : status < 500 ? 3 : 4;
    w->c[UP_C_RESP_1XX + k]++;
    if (w->lst) {
        w->lst[c->lslot].resp[k]++;
        if (c->txn != NIL) {              /* and its route's, once routed */
            uint16_t rs = w->txns[c->txn].rslot;
            if (rs != UP_NO_SLOT)
                w->lst[rs].resp[k]++;
        }
    }
}

void h1_count_status(struct worker *w, const struct conn *c, uint16_t status)
{
    h1_count_response(w, c, status);
    switch (status) {
    case 408: w->c[UP_C_ERR_HEADER_TIMEOUT]++; break;
    case 502: w->c[UP_C_ERR_BAD_GATEWAY]++; break;
    case 503: w->c[UP_C_ERR_UNAVAILABLE]++; break;
    case 504: w->c[UP_C_ERR_GATEWAY_TIMEOUT]++; break;
    default:
        if (status >= 400 && status < 500)
            w->c[UP_C_ERR_BAD_REQUEST]++;
        break;
    }
}

/* Give up on a transaction. With a status and nothing sent to the client
 * yet, the client gets that status and a close; otherwise the client is
 * cut. The upstream connection is never reused after this. */
void txn_abort(struct worker *w, struct txn *t, uint16_t status, bool reset_client)
{
    struct conn *c = &w->conns[t->client];
    if (__builtin_expect(t->brk != 0, 0) && (status == 502 || status == 504))
        res_result(w, t, status);     /* the upstream failed, or timed out */
    splice_abort(w, t);
    if (__builtin_expect(t->fa == FA_ASKING, 0))
        w->c[UP_C_AUTH_ERRORS]++;     /* the auth service failed this request */
    log_end(w, t, status && !rs_replied(t->rs) ? status : t->status);
    if (t->up != NIL) {
        struct conn *u = &w->conns[t->up];
        h1_upstream_close(w, u, false);
    }
    if (status && !rs_replied(t->rs) && t->rs != RS_ERROR_LATER) {
        if (t->resp.active && c->state == CS_OPEN) {
            /* A 1xx is on its way out (a final head would have set
             * the state past RS_HEAD): the answer goes as soon as it is out, within
             * the time the proxy gives any of its own answers. */
            h1_resp_step(&t->rs, RSE_ERROR_LATER);
            t->status = status;
            timer_set(w, c, w->now_ms + H1_REPLY_MS);
            return;
        }
        h1_client_reply_error(w, c, status);
        return;
    }
    h1_client_close(w, c, reset_client);
}

/* 101 Switching Protocols went out: from here the two connections are a
 * TCP tunnel, and the L4 code carries them. Bytes already queued on either
 * side (the first frames) go first. */
void h1_tunnel(struct worker *w, struct txn *t)
{
    struct conn *c = &w->conns[t->client], *u = &w->conns[t->up];
    const struct up_config *cfg = t->cfg;
    uint8_t li = 0;
    for (uint32_t i = 0; i < cfg->nlisteners; i++)
        if (cfg->listeners[i].id == c->listener_id)
            li = (uint8_t)i;
    w->c[UP_C_UPGRADES]++;
    c->cfg = u->cfg = cfg;
    cfg_ref(w, cfg);                       /* the session's, taken over from the txn */
    c->listener = u->listener = li;
    c->cluster = t->cluster;               /* the tunnel's, as an L4 session's */
    u->server = t->server;
    c->txn = u->txn = NIL;
    txn_free(w, t);
    c->kind = CK_L4_CLIENT;
    u->kind = CK_L4_UPSTREAM;
    c->peer = (uint32_t)(u - w->conns);
    u->peer = (uint32_t)(c - w->conns);
    timer_cancel(w, u);
    c->expires_ms = cfg->listeners[li].idle_timeout_ms ? w->now_ms + cfg->listeners[li].idle_timeout_ms : 0;
    timer_arm(w, c);
    conn_hand_up(w, c, C_UP_ADOPT);     /* the loop hands the pair to l4 */
}
