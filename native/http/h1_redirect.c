/*
 * A plain-HTTP listener that sends every request to HTTPS (redirect_https):
 * answered here, from the request head alone, with no upstream and no
 * route, as nginx's `return 301 https://$host$request_uri` and Traefik's
 * entry-point redirection do. The answer is a round of iovecs: fixed
 * strings, and the Host and target bytes where they lie in the receive
 * buffer (held until the round is out), so nothing is copied or allocated.
 *
 * Keep-alive: a request without a body keeps its connection (the next
 * request is answered the same way); one with a body, or one that asked
 * to close, gets "Connection: close" and a lingering close, which reads
 * and drops the body rather than parsing it as the next request.
 */
#include <string.h>
#include "http/h1.h"

static const char S_301[] = "HTTP/1.1 301 Moved Permanently\r\nLocation: https://";
static const char S_308[] = "HTTP/1.1 308 Permanent Redirect\r\nLocation: https://";
static const char S_TAIL[] = "\r\nContent-Length: 0\r\n";
static const char S_CLOSE[] = "Connection: close\r\n\r\n";
static const char S_KEEP[] = "Connection: keep-alive\r\n\r\n";
static const char S_END[] = "\r\n";

/* The host of a Host value (or an absolute target's authority) without its
 * port, or 0 when it is not one a Location may carry: a name of letters,
 * digits, '-', '.', '_' and '~', or a bracketed IPv6 literal, then at most
 * ":digits". The client chose it, but a shared cache keeps the answer:
 * nothing else (no '@', '/', '\', quotes) goes into the Location. */
uint32_t h1_host_part(const uint8_t *h, uint32_t n)
{
    uint32_t i = 0;
    if (n && h[0] == '[') {
        for (i = 1; i < n && h[i] != ']'; i++) {
            uint8_t ch = h[i] | 0x20;
            if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || h[i] == ':' || h[i] == '.'))
                return 0;
        }
        if (i == n || i == 1)
            return 0;
        i++;                               /* past ']' */
    } else {
        for (; i < n && h[i] != ':'; i++) {
            uint8_t ch = h[i];
            bool ok = (ch >= '0' && ch <= '9') || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') ||
                      ch == '-' || ch == '.' || ch == '_' || ch == '~';
            if (!ok)
                return 0;
        }
        if (i == 0)
            return 0;
    }
    uint32_t host_len = i;
    if (i < n) {                           /* ":port": digits, and nothing after */
        if (h[i] != ':')
            return 0;
        for (i++; i < n; i++)
            if (h[i] < '0' || h[i] > '9')
                return 0;
    }
    return host_len;
}


void h1_redirect(struct worker *w, struct conn *c, const uint8_t *base, uint32_t base_bid,
                 uint32_t base_off, const struct h1_request *r, const struct up_listener *l)
{
    struct txn *t = txn_open(w, c, r);
    if (!t)
        return;
    t->bytes_in = r->head_len;
    log_begin(w, t, c, base, r, l);

    /* Where to: the same host, path and query (h1_request_target). */
    const uint8_t *host, *path;
    uint32_t host_len, path_len;
    bool ok = h1_request_target(base, r, &host, &host_len, &path, &path_len);
    /* No host (an HTTP/1.0 request without one), a host a Location cannot
     * carry, or a target without a path (CONNECT's, OPTIONS *): 400. */
    uint32_t name_len = host ? h1_host_part(host, host_len) : 0;
    if (!ok || !name_len) {
        t->flags |= TF_CLIENT_CLOSE;
        log_end(w, t, 400);
        h1_client_reply_error(w, c, 400);
        return;
    }

    bool close = !r->keep_alive || r->body != H1_BODY_NONE || w->stopping;
    struct out *o = &t->resp;
    uint16_t code = l->redirect_code == 301 ? 301 : 308;
    out_push(o, code == 301 ? S_301 : S_308, (code == 301 ? sizeof S_301 : sizeof S_308) - 1);
    out_push(o, host, name_len);
    if (l->redirect_port && l->redirect_port != 443) {
        t->scratch[0] = ':';
        out_push(o, t->scratch, 1 + h1_put_uint(t->scratch + 1, l->redirect_port));
    }
    if (!path_len || path[0] != '/')
        out_push(o, "/", 1);                /* "http://h?q" -> "https://h/?q" */
    out_push(o, path, path_len);
    out_push(o, S_TAIL, sizeof S_TAIL - 1);
    if (close)
        out_push(o, S_CLOSE, sizeof S_CLOSE - 1);
    else if (r->minor == 0)
        out_push(o, S_KEEP, sizeof S_KEEP - 1);   /* HTTP/1.0 keeps it only when told */
    else
        out_push(o, S_END, sizeof S_END - 1);

    /* The transaction is whole at once: no body is forwarded, the answer
     * is the response. Its end (txn_end, when the round is out) keeps the
     * connection or closes it, logs it, and releases the head. */
    t->status = code;
    t->bytes_out = o->left;
    h1_req_step(&t->rq, RQE_ALL_IN);      /* answered here: nothing goes upstream */
    h1_resp_step(&t->rs, RSE_LOCAL);
    if (close)
        t->flags |= TF_CLIENT_CLOSE;
    t->req_bid = base_bid;
    t->req_off = base_off + r->head_len;
    h1_count_status(w, c, code);
    h1_count_request(w, c);
    w->c[UP_C_REDIRECTS]++;
    out_submit(w, o, c);
}
