/*
 * Forward auth (Traefik's ForwardAuth, nginx's auth_request): before a
 * request goes to its cluster, a subrequest asks an auth service. It is a
 * state of the transaction (t->fa), not a callback:
 *
 *   FA_ASKING  the transaction's cluster is the auth cluster and its
 *              request round is the subrequest (GET, or HEAD for a HEAD,
 *              without a body: the client's lines, X-Forwarded-Method,
 *              -Proto, -Host, -Uri, -For), sent through the normal pool;
 *   FA_PASSED  the answer was 2xx: its connection went back to the pool,
 *              the listed headers were copied into the transaction
 *              (t->fa_lines) and the request itself goes to its own
 *              cluster, with those lines (the client's of those names
 *              dropped);
 *   FA_DENIED  any other answer is the client's response, relayed as any
 *              response is (status, WWW-Authenticate, Location, body).
 *
 * A dead auth service, or one that does not answer within the step's
 * timeout, fails the transaction as a dead upstream does (502, 503, 504).
 * Nothing here allocates: the subrequest's lines point into the client's
 * receive buffer and the transaction's scratch, the copied lines go into
 * the transaction's fa_lines.
 */
#include <string.h>
#include <strings.h>
#include "http/h1.h"

static const char S_GET[] = "GET ";
static const char S_HEAD[] = "HEAD ";
static const char S_V11[] = " HTTP/1.1\r\n";
static const char S_CRLF[] = "\r\n";

#define PUSH(o, s) out_push((o), (s), sizeof(s) - 1)

static const struct up_step *fa_step(const struct txn *t)
{
    return &t->cfg->steps[t->fa_step - 1];
}

/* Whether n bytes of a name are in a list of lowercase names, each
 * followed by ',' (tables.py). */
static bool listed(const char *list, uint32_t len, const uint8_t *name, uint32_t n)
{
    for (uint32_t i = 0; i < len;) {
        uint32_t e = i;
        while (e < len && list[e] != ',')
            e++;
        if (e - i == n && !strncasecmp(list + i, (const char *)name, n))
            return true;
        i = e + 1;
    }
    return false;
}

/* A client's line that says something about its body, which the auth
 * service does not get. */
static bool body_line(const uint8_t *base, const struct h1_header *h)
{
    const char *n = (const char *)base + h->name_off;
    return (h->flags & H1_HF_FRAMING) ||
           (h->name_len == 12 && !strncasecmp(n, "content-type", 12)) ||
           (h->name_len == 16 && !strncasecmp(n, "content-encoding", 16)) ||
           (h->name_len == 6 && !strncasecmp(n, "expect", 6));
}

void fa_start(struct txn *t, uint32_t si)
{
    t->fa_step = si + 1;
    t->fa = FA_ASKING;
    t->fa_cluster = t->cluster;
    t->cluster = fa_step(t)->first;
}

#define SPUT(src, n)                                                             \
    do {                                                                         \
        if ((size_t)(sp - t->scratch) + (n) > sizeof t->scratch)                 \
            return false;                                                        \
        memcpy(sp, (src), (n));                                                  \
        sp += (n);                                                               \
    } while (0)

bool fa_build(struct worker *w, struct txn *t, const uint8_t *base, uint32_t bid, uint32_t off,
              const struct h1_request *r)
{
    const struct up_step *s = fa_step(t);
    const char *strings = t->cfg->strings;
    struct out *o = &t->req;
    const struct conn *c = &w->conns[t->client];
    bool ok = t->method == H1_M_HEAD ? PUSH(o, S_HEAD) : PUSH(o, S_GET);
    ok &= out_push(o, strings + s->a_off, s->a_len);
    ok &= PUSH(o, S_V11);
    for (uint16_t i = 0; i < r->nheaders; i++) {
        const struct h1_header *h = &r->h[i];
        if (h->flags & (H1_HF_HOP | H1_HF_XFF | H1_HF_XF_OTHER))
            continue;
        if (!t->keep_underscores && memchr(base + h->name_off, '_', h->name_len))
            continue;
        if (s->c_len ? !listed(strings + s->c_off, s->c_len, base + h->name_off, h->name_len)
                     : body_line(base, h))
            continue;
        ok &= out_push(o, base + h->line_off, h->line_len);
    }
    /* What the auth service needs to know of the request it judges, as
     * Traefik sends it. */
    char *sp = t->scratch;
    SPUT("X-Forwarded-Method: ", 20);
    SPUT(base + r->method_off, r->method_len);
    SPUT(S_CRLF, 2);
    if (tp_is_tls(h1_wire(w, c)))    /* user space or kTLS */
        SPUT("X-Forwarded-Proto: https\r\n", 26);
    else
        SPUT("X-Forwarded-Proto: http\r\n", 25);
    if (r->host != 0xffff) {
        SPUT("X-Forwarded-Host: ", 18);
        SPUT(base + r->h[r->host].value_off, r->h[r->host].value_len);
        SPUT(S_CRLF, 2);
    }
    SPUT("X-Forwarded-Uri: ", 17);
    SPUT(base + r->target_off, r->target_len);
    SPUT(S_CRLF, 2);
    char ip[64];
    const struct conn_addr *a = conn_addr(w, c);
    size_t iplen = h1_format_addr(a->addr, a->len, ip, sizeof ip);
    if (iplen) {
        SPUT("X-Forwarded-For: ", 17);
        SPUT(ip, iplen);
        SPUT(S_CRLF, 2);
    }
    SPUT(S_CRLF, 2);
    ok &= out_push(o, t->scratch, (size_t)(sp - t->scratch));
    /* No body goes: the subrequest is whole once its head is out. The
     * client's head stays in its queue (the round releases nothing) for
     * the request itself; after a denial it is released as a request's
     * head always is. */
    h1_req_step(&t->rq, RQE_ALL_IN);
    t->req_bid = bid;
    t->req_off = off + r->head_len;
    o->rel_bid = NIL;
    w->c[UP_C_AUTH_REQUESTS]++;
    return ok;
}

uint32_t fa_timeout_ms(const struct txn *t)
{
    return (uint32_t)fa_step(t)->x;
}

bool fa_drops(const struct txn *t, const uint8_t *base, const struct h1_header *h)
{
    const struct up_step *s = fa_step(t);
    return listed(t->cfg->strings + s->b_off, s->b_len, base + h->name_off, h->name_len);
}

bool fa_answer(struct worker *w, struct txn *t, const uint8_t *base, const struct h1_response *r)
{
    struct conn *u = &w->conns[t->up];
    struct conn *c = &w->conns[t->client];
    if (r->status < 200) {                /* interim: not for the client */
        q_release_to(w, u, u->x.head, u->x.off + r->head_len);
        h1_upstream_progress(w, u);
        return true;
    }
    if (r->status >= 300) {
        /* Denied (or the service's error): its answer is the client's.
         * A request body that was never read closes the connection. */
        w->c[UP_C_AUTH_DENIED]++;
        t->fa = FA_DENIED;
        if (t->req_body != H1_BODY_NONE)
            t->flags |= TF_CLIENT_CLOSE;
        return false;
    }
    if (t->req.active) {
        /* The answer came before the subrequest's send completed (the
         * round is about to be rebuilt): too odd to go on with. */
        txn_abort(w, t, 502, false);
        return true;
    }
    /* The lines to copy, "Name: value\r\n" as the service wrote them. */
    const struct up_step *s = fa_step(t);
    uint32_t len = 0;
    for (uint16_t i = 0; i < r->nheaders; i++) {
        const struct h1_header *h = &r->h[i];
        if (!listed(t->cfg->strings + s->b_off, s->b_len, base + h->name_off, h->name_len))
            continue;
        if (len + h->line_len > sizeof t->fa_lines) {
            txn_abort(w, t, 502, false);  /* headers past 1 KiB from an auth service */
            return true;
        }
        memcpy(t->fa_lines + len, base + h->line_off, h->line_len);
        len += h->line_len;
    }
    t->fa_len = (uint16_t)len;
    /* Its body (an "OK") is dropped if it is all here; else the
     * connection is not kept. */
    const uint8_t *p;
    uint32_t n = q_contiguous(w, u, &p);
    uint64_t end = r->head_len;
    bool reusable = r->keep_alive && !(u->x.flags & X_EOF);
    if (r->body == H1_BODY_LENGTH && r->content_length <= n - r->head_len)
        end += r->content_length;
    else if (r->body != H1_BODY_NONE)
        reusable = false;
    q_release_to(w, u, u->x.head, u->x.off + (uint32_t)end);
    reusable &= u->x.head == NIL;
    timer_cancel(w, u);
    hist_add(w->shm->hist_upstream, w->now_us - t->t_sent);
    c->peer = NIL;
    t->up = NIL;
    h1_upstream_release(w, u, reusable);
    /* Now the request itself, to its own cluster. */
    t->cluster = t->fa_cluster;
    t->server = NIL;
    t->attempts = 0;
    t->flags &= (uint16_t)~(TF_REUSED | TF_RETRIED | TF_UP_CLOSE);
    h1_req_step(&t->rq, RQE_AGAIN);
    t->fa = FA_PASSED;
    if (h1_request_again(w, t))
        h1_upstream_assign(w, t);
    return true;
}
