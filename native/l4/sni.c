/*
 * SNI routing: the first phase of an L4 session on a tcp listener that
 * has routes. The client's first bytes are read until they hold a whole
 * ClientHello (clienthello.c), its server name picks the cluster, and then
 * the session goes on as any other (l4_dial). Passthrough (no tls on the
 * listener): the bytes already read go out first, untouched, before
 * anything else the client sends. A listener with tls terminates it: the
 * bytes already read are the handshake's start and go to TLS (l4_dial), so
 * the name that routes is the name the certificate was chosen by.
 *
 * While it waits for its ClientHello the client connection has its own
 * kind (CK_L4_HELLO), so the loop's switch brings its events here and a
 * session on a listener without routes never looks at any of this. A
 * client that sends nothing holds no buffer (the receive takes a provided
 * buffer only when bytes arrive), and every client in this phase has a
 * deadline (the listener's sni_timeout): a silent or dribbling client is
 * closed at it. Bytes that are not TLS, a malformed ClientHello, or one
 * that has not ended within CH_MAX_BYTES get a close at once.
 *
 * A listener with proxy_protocol reads the PROXY header in the same phase,
 * before anything else (C_PROXY_HDR): its client's address is noted for
 * the header the cluster may send on (upstream/proxy_send.c), the header's
 * bytes are dropped, and what follows is the session's (or, with routes,
 * its ClientHello).
 */
#include <errno.h>
#include <string.h>
#include <strings.h>
#include "l4/l4.h"
#include "l4/clienthello_api.h"
#include "core/proxy_header.h"

static inline const struct up_listener *listener_of(const struct conn *c)
{
    return &c->cfg->listeners[c->listener];
}

/* The cluster a server name goes to: a route naming it exactly, else the
 * longest "*.suffix" route that matches it (so the most specific wins
 * whatever the order), else the listener's own cluster (also for a
 * ClientHello without a name). Names are compared without case; the
 * tables hold them in lower case, a suffix with its leading dot, as the
 * HTTP routes' hosts are. */
static uint32_t route(const struct up_config *cfg, const struct up_listener *l,
                      const char *name, uint32_t len)
{
    uint32_t best = l->cluster, best_len = 0;
    if (!len)
        return best;
    for (uint32_t i = 0; i < l->nroutes; i++) {
        const struct up_route *rt = &l->routes[i];
        const char *rn = cfg->strings + rt->host_off;
        if (rt->host_kind == UP_ROUTE_HOST_EXACT) {
            if (len == rt->host_len && !strncasecmp(name, rn, len))
                return rt->cluster;
        } else if (rt->host_kind == UP_ROUTE_HOST_SUFFIX) {
            if (len > rt->host_len && rt->host_len > best_len &&
                !strncasecmp(name + len - rt->host_len, rn, rt->host_len)) {
                best = rt->cluster;
                best_len = rt->host_len;
            }
        }
    }
    return best;
}

/* Receive what comes next. The first piece goes into a provided buffer;
 * a ClientHello that needs more than one piece has been moved into an
 * assembly buffer (the head of c's queue), and the rest is received
 * straight after it there, never past CH_MAX_BYTES: all the bytes this
 * phase reads are the ones the parser may need. */
void sni_recv_arm(struct worker *w, struct conn *c)
{
    struct xfer *x = &c->x;
    if (c->state != CS_OPEN || (c->ops & (1u << OP_RECV)) || (x->flags & X_STARVED))
        return;
    struct io_uring_sqe *s = sqe_for(w, c, OP_RECV);
    if (x->head == NIL) {
        io_uring_prep_recv(s, c->fd, NULL, CH_MAX_BYTES, 0);
        s->flags |= IOSQE_BUFFER_SELECT;
        s->buf_group = BUF_GROUP;
    } else {
        uint32_t have = w->bufs.len[x->head];
        io_uring_prep_recv(s, c->fd, buf_data(&w->bufs, x->head) + have, CH_MAX_BYTES - have, 0);
    }
    count_op(w, s);
}

void sni_start(struct worker *w, struct conn *c, const struct up_listener *l)
{
    c->kind = CK_L4_HELLO;
    c->state = CS_OPEN;
    c->expires_ms = w->now_ms + l->sni_timeout_ms;
    timer_arm(w, c);
    sni_recv_arm(w, c);
}

/* The bytes so far hold a ClientHello: route by its name and dial. From
 * here on the client is an ordinary L4 client whose queue is not empty. */
static void found(struct worker *w, struct conn *c, const struct ch_hello *h)
{
    c->cluster = route(c->cfg, listener_of(c), h->name, h->name_len);
    c->kind = CK_L4_CLIENT;
    c->state = CS_CONNECTING;
    l4_dial(w, c);
}

bool sni_proxy_expected(struct worker *w, struct conn *c, const struct up_listener *l)
{
    struct conn_addr *a = conn_addr(w, c);
    a->len = sock_addr(c->fd, true, a->addr, &a->port);   /* what the header replaces */
    return !l->pp_trusted_count ||
           cidr_match(c->cfg->cidrs + l->pp_trusted_first, l->pp_trusted_count, a->addr, a->len);
}

/* The bytes so far, with C_PROXY_HDR: 1 when the header was read (and its
 * bytes dropped from the front), 0 when more are needed, -1 when they are
 * not a PROXY header. */
static int proxy_hdr(struct worker *w, struct conn *c)
{
    struct bufpool *p = &w->bufs;
    struct xfer *x = &c->x;
    uint8_t *b = buf_data(p, x->head);
    struct proxy_header ph;
    int rc = proxy_header_parse(b, p->len[x->head], &ph);
    if (rc <= 0)
        return rc == PH_PARTIAL ? 0 : -1;
    if (ph.family) {                          /* LOCAL, UNKNOWN: the socket's stands */
        struct conn_addr *a = conn_addr(w, c);
        memcpy(a->addr, ph.addr, ph.family);
        a->len = ph.family;
        a->port = ph.port;
    }
    uint32_t rest = p->len[x->head] - (uint32_t)rc;
    memmove(b, b + rc, rest);
    p->len[x->head] = rest;
    x->queued = rest;
    if (!rest) {
        bufpool_put(w, x->head);
        x->head = x->tail = NIL;
    }
    c->flags &= ~C_PROXY_HDR;
    return 1;
}

/* Move a first piece that was not enough out of its provided buffer into
 * an assembly buffer, where the next pieces land right after it (the
 * parser wants the bytes in one run). 0, or -1 when none is free. */
static int gather(struct worker *w, struct conn *c)
{
    struct bufpool *p = &w->bufs;
    struct xfer *x = &c->x;
    if (buf_is_assembly(p, x->head))
        return 0;                               /* already in one */
    uint32_t a = hbuf_get(w);
    if (a == NIL)
        return -1;
    memcpy(buf_data(p, a), buf_data(p, x->head), p->len[x->head]);
    p->len[a] = p->len[x->head];
    p->next[a] = NIL;
    bufpool_put(w, x->head);
    x->head = x->tail = a;
    return 0;
}

static void on_recv(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe)
{
    struct bufpool *p = &w->bufs;
    struct xfer *x = &c->x;
    int res = cqe->res;
    if (cqe->flags & IORING_CQE_F_BUFFER) {
        uint32_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        bufpool_taken(w);
        if (c->state != CS_OPEN || res <= 0 || x->head != NIL) {
            bufpool_put(w, bid);
            if (res > 0 && c->state == CS_OPEN)
                res = -EPROTO;                  /* cannot happen: one piece at a time */
        } else {
            p->len[bid] = (uint32_t)res;
            p->next[bid] = NIL;
            x->head = x->tail = bid;
            x->off = 0;
            x->queued = (uint32_t)res;
        }
    } else if (res > 0 && c->state == CS_OPEN) {
        if (x->head == NIL)
            res = -EPROTO;                      /* cannot happen: see sni_recv_arm */
        else {
            p->len[x->head] += (uint32_t)res;   /* received in place, after the rest */
            x->queued += (uint32_t)res;
        }
    }
    if (c->state != CS_OPEN)
        return;
    if (res <= 0) {
        if (res == -ENOBUFS) {
            conn_starve(w, c);                  /* every buffer is taken: wait for one */
            return;
        }
        if (res == 0 && x->head != NIL)
            cnt(w, UP_C_SNI_ERRORS, 1);         /* a ClientHello cut short */
        else if (res == -ECONNRESET)
            cnt(w, UP_C_ERR_CLIENT_RESET, 1);
        else if (res < 0)
            cnt(w, UP_C_ERR_OTHER, 1);
        l4_abort(w, c);
        return;
    }
    cnt(w, UP_C_BYTES_FROM_CLIENTS, res);
    if (c->flags & C_PROXY_HDR) {
        int k = proxy_hdr(w, c);
        if (k < 0) {
            cnt(w, UP_C_ERR_BAD_REQUEST, 1);    /* not a PROXY header: closed, as HAProxy does */
            l4_abort(w, c);
            return;
        }
        if (k > 0 && !listener_of(c)->nroutes) {
            c->kind = CK_L4_CLIENT;             /* no routes: the session starts */
            c->state = CS_CONNECTING;
            l4_dial(w, c);
            return;
        }
        if (k == 0 || x->head == NIL) {
            if (x->head != NIL && gather(w, c) < 0) {
                cnt(w, UP_C_ERR_OTHER, 1);
                l4_abort(w, c);
                return;
            }
            sni_recv_arm(w, c);
            return;
        }
    }
    struct ch_hello h;
    switch (ch_parse(buf_data(p, x->head), p->len[x->head], &h)) {
    case CH_FOUND:
        found(w, c, &h);
        return;
    case CH_ERROR:
        cnt(w, UP_C_SNI_ERRORS, 1);
        l4_abort(w, c);
        return;
    default:
        break;
    }
    if (gather(w, c) < 0) {
        cnt(w, UP_C_ERR_OTHER, 1);              /* no assembly buffer free (head_buffers) */
        l4_abort(w, c);
        return;
    }
    sni_recv_arm(w, c);
}

void sni_on_cqe(struct worker *w, struct conn *c, enum op op, struct io_uring_cqe *cqe)
{
    if (op == OP_RECV)
        on_recv(w, c, cqe);
}

/* sni_timeout passed without a whole ClientHello. */
void sni_expired(struct worker *w, struct conn *c)
{
    cnt(w, (c->flags & C_PROXY_HDR) ? UP_C_ERR_IDLE_TIMEOUT : UP_C_SNI_TIMEOUTS, 1);
    l4_abort(w, c);
}
