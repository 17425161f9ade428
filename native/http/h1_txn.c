/*
 * One HTTP transaction: a request from the client and its response from
 * the upstream. Bytes go out in rounds (struct out): one sendmsg per
 * direction at a time, whose iovecs point at the received bytes themselves
 * (request line, kept header lines, body) plus a few added strings, so an
 * unmodified part of a head is never copied. A round's buffers go back to
 * the pool when the round is out.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "http/h1.h"

static const char S_XFF[] = "X-Forwarded-For: ";
static const char S_XFP[] = "X-Forwarded-Proto: http\r\n";
static const char S_XFPS[] = "X-Forwarded-Proto: https\r\n";
static const char S_XFH[] = "X-Forwarded-Host: ";
static const char S_COMMA[] = ", ";
static const char S_CONN_UPGRADE[] = "Connection: upgrade\r\n";
static const char S_CONN_CLOSE[] = "Connection: close\r\n";
static const char S_CONN_KEEP[] = "Connection: keep-alive\r\n";
static const char S_CRLF[] = "\r\n";

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

#define PUSH(o, s) out_push((o), (s), sizeof(s) - 1)

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

/* ---- heads ------------------------------------------------------------ */

/* Dotted quad by hand: inet_ntop goes through sprintf, and was a fifth of
 * the worker's own instructions per request. */
size_t h1_format_addr(const uint8_t *addr, uint8_t len, char *dst, size_t cap)
{
    if (len == 4) {
        char *p = dst;
        for (int i = 0; i < 4; i++) {
            unsigned v = addr[i];
            if (v >= 100) {
                *p++ = (char)('0' + v / 100);
                v %= 100;
                *p++ = (char)('0' + v / 10);
            } else if (v >= 10) {
                *p++ = (char)('0' + v / 10);
            }
            *p++ = (char)('0' + v % 10);
            *p++ = '.';
        }
        return (size_t)(p - dst - 1);
    }
    if (len != 16 || !inet_ntop(AF_INET6, addr, dst, (socklen_t)cap))
        return 0;
    return strlen(dst);
}

/* name (a configured header name) and n bytes of a request's field name
 * are the same header to an upstream: without case, and with '_' as '-',
 * since CGI, PHP and WSGI read both as HTTP_X_CLIENT_... (a client must
 * not get "X_Client_Subject" through where underscores are forwarded). */
static bool same_header(const char *name, const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        uint8_t a = (uint8_t)name[i] | 0x20, b = p[i] | 0x20;
        if (a == 0x7f)
            a = '-';                 /* '_' | 0x20 */
        if (b == 0x7f)
            b = '-';
        if (a != b)
            return false;
    }
    return true;
}

/* Whether a request header line is one of the client certificate's
 * headers (lengths first: most lines differ there). The names are tokens
 * of letters, digits and '-' (config.py), for which OR-ing 0x20 is exact. */
static bool cert_header(const struct txn *t, const uint8_t *base, const struct h1_header *h)
{
    const struct up_listener *l = t->listener;
    const char *strings = t->cfg->strings;
    const uint8_t *name = base + h->name_off;
    return (h->name_len == l->cert_subject_len &&
            same_header(strings + l->cert_subject_off, name, h->name_len)) ||
           (h->name_len == l->cert_sha256_len &&
            same_header(strings + l->cert_sha256_off, name, h->name_len));
}

/* The verified client certificate's subject and fingerprint, as the
 * transport wrote them down at the end of the handshake, by reference:
 * "Name: " from the table's strings, the value from the transport's
 * per-connection state (both outlive the round). Nothing when no
 * certificate was verified. */
static bool cert_lines(struct worker *w, struct txn *t, const struct conn *c)
{
    const struct up_listener *l = t->listener;
    const char *strings = t->cfg->strings;
    struct tp_peer_cert pc;
    bool ok = true;
    if (!tp_tls_peer_cert(w, h1_wire(w, c), &pc))
        return true;
    if (l->cert_subject_len && pc.subject) {
        ok &= out_push(&t->req, strings + l->cert_subject_off, l->cert_subject_len + 2);
        ok &= out_push(&t->req, pc.subject, pc.subject_len);
        ok &= out_push(&t->req, S_CRLF, 2);
    }
    if (l->cert_sha256_len) {
        ok &= out_push(&t->req, strings + l->cert_sha256_off, l->cert_sha256_len + 2);
        ok &= out_push(&t->req, pc.sha256, 64);
        ok &= out_push(&t->req, S_CRLF, 2);
    }
    return ok;
}

/* The request head as the upstream sees it: the request line and kept
 * header lines by reference; hop-by-hop lines dropped; X-Forwarded-For
 * appended to, X-Forwarded-Proto and -Host set by the proxy. The added
 * lines are written into the transaction's scratch as one piece (a few
 * dozen bytes), so the head goes out in three iovecs: kept lines, added
 * lines, and the empty line with whatever body followed it. */
static bool build_req_head(struct worker *w, struct txn *t, const uint8_t *base,
                           const struct h1_request *r, bool keep_underscores)
{
    struct out *o = &t->req;
    struct conn *c = &w->conns[t->client];
    bool upgrade = r->upgrade;
    /* A policy's rewritten request line (h1_policy.c), else the client's. */
    bool ok = t->line_len ? out_push(o, t->line, t->line_len)
                          : out_push(o, base + r->skip, r->line_len);
    uint16_t host = (t->flags & TF_XF_OFF) ? 0xffff : r->host;
    const struct up_listener *l = t->listener;
    bool cert_hdrs = l && (l->cert_subject_len | l->cert_sha256_len);
    /* A policy's removed names, as a mask of their lengths (h1_policy.c):
     * most lines pass after one bit test. */
    uint64_t rm = t->pol ? t->pol->rm_lens : 0;
    bool fa = t->fa == FA_PASSED;
    bool filter = cert_hdrs || rm || fa;
    size_t need = sizeof S_XFF + 48 + sizeof S_XFPS + sizeof S_CONN_KEEP + sizeof S_CONN_UPGRADE;
    for (uint16_t i = 0; i < r->nheaders; i++) {
        const struct h1_header *h = &r->h[i];
        if (h->flags & H1_HF_XFF)
            need += h->value_len + 2;
        if (h->flags & (H1_HF_XFF | H1_HF_XF_OTHER))
            continue;
        if ((h->flags & H1_HF_HOP) && !(upgrade && (h->flags & H1_HF_UPGRADE)))
            continue;
        /* Like nginx by default: an upstream that reads '_' as '-' would
         * see "Transfer_Encoding" as framing the proxy did not apply. */
        if (!keep_underscores && memchr(base + h->name_off, '_', h->name_len))
            continue;
        /* The client certificate's headers are the proxy's to write: a
         * client's own are never passed on, certificate or not. */
        if (__builtin_expect(filter, 0) &&
            (cert_header(t, base, h) ||
             (((rm >> (h->name_len & 63)) & 1) && pol_drop_req(t, base, h)) ||
             (fa && fa_drops(t, base, h))))
            continue;                 /* (the auth service's lines replace a client's) */
        ok &= out_push(o, base + h->line_off, h->line_len);
    }
    if (host != 0xffff)
        need += sizeof S_XFH + r->h[host].value_len + 2;
    if (need > sizeof t->scratch)
        return false;                 /* only with forwarded values of hundreds of bytes */
    char *sp = t->scratch;
#define PUT(src, n) (memcpy(sp, (src), (n)), sp += (n))
    char ip[64];
    size_t iplen = (t->flags & TF_XF_OFF) ? 0 : h1_format_addr(c->addr, c->addr_len, ip, sizeof ip);
    if (iplen) {
        PUT(S_XFF, sizeof S_XFF - 1);
        for (uint16_t i = 0; i < r->nheaders; i++)
            if ((r->h[i].flags & H1_HF_XFF) && r->h[i].value_len &&
                !(t->flags & TF_XF_UNTRUSTED)) {
                PUT(base + r->h[i].value_off, r->h[i].value_len);
                PUT(S_COMMA, 2);
            }
        PUT(ip, iplen);
        PUT("\r\n", 2);
    }
    if (t->flags & TF_XF_OFF)
        ;
    else if (tp_is_tls(h1_wire(w, c)))
        PUT(S_XFPS, sizeof S_XFPS - 1);
    else
        PUT(S_XFP, sizeof S_XFP - 1);
    if (host != 0xffff) {
        PUT(S_XFH, sizeof S_XFH - 1);
        PUT(base + r->h[host].value_off, r->h[host].value_len);
        PUT("\r\n", 2);
    }
    if (upgrade)
        PUT(S_CONN_UPGRADE, sizeof S_CONN_UPGRADE - 1);
    else if (r->minor == 0)
        PUT(S_CONN_KEEP, sizeof S_CONN_KEEP - 1);   /* an HTTP/1.0 request may still reuse the upstream */
#undef PUT
    ok &= out_push(o, t->scratch, (size_t)(sp - t->scratch));
    if (__builtin_expect(cert_hdrs, 0))
        ok &= cert_lines(w, t, c);
    if (__builtin_expect(t->pol != NULL, 0))
        ok &= pol_req_lines(w, t, base, r);
    if (__builtin_expect(fa, 0))
        ok &= out_push(o, t->fa_lines, t->fa_len);
    /* The head's own empty line: the body that follows it continues the
     * same iovec. */
    ok &= out_push(o, base + r->head_len - 2, 2);
    return ok;
}

/* The response head as the client sees it. */
static bool build_resp_head(struct worker *w, struct txn *t, const uint8_t *base,
                            const struct h1_response *r)
{
    struct out *o = &t->resp;
    (void)w;
    bool upgrade = r->status == 101;
    bool ok = out_push(o, base + r->skip, r->line_len);
    uint64_t rm = t->pol ? t->pol->resp_rm_lens : 0;     /* as in build_req_head */
    bool etag;
    for (uint16_t i = 0; i < r->nheaders; i++) {
        const struct h1_header *h = &r->h[i];
        if ((h->flags & H1_HF_HOP) && !(upgrade && (h->flags & H1_HF_UPGRADE)))
            continue;
        if (__builtin_expect(t->cz_slot != 0, 0) && cz_drops(base, h, &etag))
            continue;                 /* compression writes framing and ETag anew */
        if (__builtin_expect((rm >> (h->name_len & 63)) & 1, 0) && pol_drop_resp(t, base, h))
            continue;
        ok &= out_push(o, base + h->line_off, h->line_len);
    }
    if (__builtin_expect(t->pol != NULL, 0))
        ok &= pol_resp_lines(t);
    if (__builtin_expect(t->cz_vary, 0))
        ok &= cz_head_lines(t, base, r);
    if (upgrade)
        ok &= PUSH(o, S_CONN_UPGRADE);
    else if (r->status >= 200 && (t->flags & TF_CLIENT_CLOSE))
        ok &= PUSH(o, S_CONN_CLOSE);
    else if (r->status >= 200 && t->minor == 0)
        ok &= PUSH(o, S_CONN_KEEP);
    /* The upstream's own empty line, so that an unmodified head and the
     * body after it stay one contiguous iovec. */
    ok &= out_push(o, base + r->head_len - 2, 2);
    return ok;
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
    memset(t, 0, offsetof(struct txn, req));   /* not the rounds nor lr: filled when used */
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
        t->cfg->refs[w->o.index * 8]--;
        t->cfg = NULL;
    }
    w->txn_free[w->ntxn_free++] = (uint32_t)(t - w->txns);
}

/* Methods a request that matches no route may use: all but CONNECT (a
 * reverse proxy is not a forward proxy's tunnel; a route opts in). */
#define METHODS_DEFAULT (~(1u << H1_M_CONNECT))

/* Route: the first route whose host and path prefix match, or NULL (the
 * listener's cluster, METHODS_DEFAULT). */
static const struct up_route *route(const struct up_config *cfg, const struct up_listener *l,
                                    const uint8_t *host, uint32_t host_len, const uint8_t *path,
                                    uint32_t path_len)
{
    /* The host without its port, compared without case. */
    for (uint32_t i = 0; i < host_len; i++)
        if (host[i] == ':') {
            host_len = i;
            break;
        }
    for (uint32_t i = 0; i < l->nroutes; i++) {
        const struct up_route *rt = &l->routes[i];
        const char *rh = cfg->strings + rt->host_off;
        if (rt->host_kind == UP_ROUTE_HOST_EXACT) {
            if (host_len != rt->host_len || strncasecmp((const char *)host, rh, host_len))
                continue;
        } else if (rt->host_kind == UP_ROUTE_HOST_SUFFIX) {
            if (host_len <= rt->host_len ||
                strncasecmp((const char *)host + host_len - rt->host_len, rh, rt->host_len))
                continue;
        }
        if (rt->path_len && (path_len < rt->path_len ||
                             memcmp(path, cfg->strings + rt->path_off, rt->path_len)))
            continue;
        return rt;
    }
    return NULL;
}

static uint64_t hash_key(struct worker *w, const struct conn *c, const struct up_config *cfg,
                         const struct up_cluster *cl, const uint8_t *base,
                         const struct h1_request *r)
{
    (void)w;
    if (cl->balance != UP_BALANCE_HASH)
        return 0;
    if (cl->hash_kind == UP_HASH_HEADER) {
        const char *name = cfg->strings + cl->hash_header_off;
        for (uint16_t i = 0; i < r->nheaders; i++)
            if (r->h[i].name_len == cl->hash_header_len &&
                !strncasecmp((const char *)base + r->h[i].name_off, name, cl->hash_header_len))
                return up_hash(base + r->h[i].value_off, r->h[i].value_len);
        return 0;
    }
    return up_hash(c->addr, c->addr_len);
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
    cfg->refs[w->o.index * 8]++;
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
    const struct up_route *rt = route(cfg, l, host, host_len, path, path_len);
    t->cluster = rt ? rt->cluster : l->cluster;
    t->upk = cfg->clusters[t->cluster].protocol == UP_PROTO_H2 ? TU_H2 : TU_H1;
    if (rt && rt->stat_slot != UP_NO_SLOT && w->lst) {
        t->rslot = (uint16_t)rt->stat_slot;
        w->lst[t->rslot].requests++;
    }
    if (__builtin_expect(!((rt ? rt->methods : METHODS_DEFAULT) & (1u << r->method)), 0)) {
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
    t->hash_key = hash_key(w, c, cfg, &cfg->clusters[t->cluster], base, r);

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
    if (!build_req_head(w, t, base, r, t->keep_underscores))
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
    } else if (!build_resp_head(w, t, base, r)) {
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

static const char *reason(uint16_t status)
{
    switch (status) {
    case 400: return "400 Bad Request";
    case 408: return "408 Request Timeout";
    case 413: return "413 Content Too Large";
    case 414: return "414 URI Too Long";
    case 431: return "431 Request Header Fields Too Large";
    case 501: return "501 Not Implemented";
    case 502: return "502 Bad Gateway";
    case 503: return "503 Service Unavailable";
    case 504: return "504 Gateway Timeout";
    case 505: return "505 HTTP Version Not Supported";
    default: return "500 Internal Server Error";
    }
}

/* The proxy's own answers: fixed texts, built once, never per request. */
#define ERR_TEXTS 11
static char err_text[ERR_TEXTS][192];
static uint16_t err_len[ERR_TEXTS];
static const uint16_t err_codes[ERR_TEXTS] = { 400, 408, 413, 414, 431, 501, 502, 503, 504, 505, 500 };

__attribute__((constructor)) static void build_err_texts(void)
{
    for (int i = 0; i < ERR_TEXTS; i++) {
        const char *r = reason(err_codes[i]);
        int body = (int)strlen(r + 4) + 1;
        err_len[i] = (uint16_t)snprintf(err_text[i], sizeof err_text[i],
                                        "HTTP/1.1 %s\r\nContent-Type: text/plain\r\n"
                                        "Content-Length: %d\r\nConnection: close\r\n\r\n%s\n",
                                        r, body, r + 4);
    }
}

const char *h1_error_text(uint16_t status, uint32_t *len)
{
    int i;
    for (i = 0; i < ERR_TEXTS - 1 && err_codes[i] != status; i++)
        ;
    *len = err_len[i];
    return err_text[i];
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
    cfg->refs[w->o.index * 8]++;           /* the session's, taken over from the txn */
    c->listener = u->listener = li;
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
