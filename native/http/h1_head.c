/*
 * Head building: the request head as the upstream sees it and the response
 * head as the client sees it, each a round (struct out) whose iovecs point
 * at the received head's own lines; only the lines the proxy adds are
 * written, into the transaction's scratch.
 */
#include <arpa/inet.h>
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

#define PUSH(o, s) out_push((o), (s), sizeof(s) - 1)

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
bool h1_build_req_head(struct worker *w, struct txn *t, const uint8_t *base,
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
    const struct conn_addr *a = conn_addr(w, c);
    size_t iplen = (t->flags & TF_XF_OFF) ? 0 : h1_format_addr(a->addr, a->len, ip, sizeof ip);
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
bool h1_build_resp_head(struct worker *w, struct txn *t, const uint8_t *base,
                        const struct h1_response *r)
{
    struct out *o = &t->resp;
    (void)w;
    bool upgrade = r->status == 101;
    bool ok = out_push(o, base + r->skip, r->line_len);
    uint64_t rm = t->pol ? t->pol->resp_rm_lens : 0;     /* as in h1_build_req_head */
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
