/*
 * The client side of HTTP proxying: reading request heads from the
 * receive queue, starting transactions, keep-alive between them, the
 * proxy's own error answers, and closing politely (a lingering close: FIN
 * first, then read until the client's FIN, so that a client still sending
 * does not get a reset that destroys the response it has not read yet).
 */
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <string.h>
#include <unistd.h>
#include "http/h1.h"
#include "core/proxy_header.h"

#define LINGER_MS 2000

static void set_timer(struct worker *w, struct conn *c, uint32_t ms)
{
    timer_set(w, c, ms ? w->now_ms + ms : 0);
}

void h1_start(struct worker *w, const struct up_listener *l, int fd)
{
    struct conn *c = conn_alloc(w);
    if (!c) {
        w->c[UP_C_REJECTED]++;
        close(fd);
        return;
    }
    c->kind = CK_H1_CLIENT;
    c->state = CS_OPEN;
    c->h1 = H_IDLE;
    c->fd = fd;
    conn_client_part(c, l->id, l->cluster);
    if (w->cfg && l >= w->cfg->listeners && l < w->cfg->listeners + w->cfg->nlisteners)
        c->listener = (uint8_t)(l - w->cfg->listeners);   /* conn_listener's first guess */
    c->lslot = (uint8_t)l->stat_slot;
    c->flags |= C_SESSION;
    w->clients++;
    w->c[UP_C_ACTIVE]++;
    /* The peer's address, for X-Forwarded-For and hash balancing: one
     * getpeername per connection, never per request. */
    struct conn_addr *a = conn_addr(w, c);
    a->len = sock_addr(fd, true, a->addr, &a->port);
    /* A PROXY header first, from a peer trusted_proxies lists (or any). */
    if (l->proxy_protocol &&
        (!l->pp_trusted_count ||
         cidr_match(w->cfg->cidrs + l->pp_trusted_first, l->pp_trusted_count, a->addr, a->len)))
        c->h1 = H_PROXY;
    if (c->h1 == H_PROXY && l->tls && l->tls[w->o.index]) {
        /* The PROXY header comes before the handshake: TLS starts once it
         * is read (proxy_header), on the bytes that followed it. */
        set_timer(w, c, l->tls_handshake_timeout_ms);
    } else if (l->tls && l->tls[w->o.index]) {
        if (tp_tls_accept(w, c, l->tls[w->o.index]) < 0) {
            w->c[UP_C_TLS_HANDSHAKE_ERRORS]++;
            h1_client_close(w, c, true);
            return;
        }
        /* The handshake, then the first head, within the handshake timeout. */
        set_timer(w, c, l->tls_handshake_timeout_ms);
    } else {
        set_timer(w, c, l->header_timeout_ms);
    }
    h1_recv_arm(w, c);
}

/* Send one of the proxy's own answers, then close. */
void h1_client_reply_error(struct worker *w, struct conn *c, uint16_t status)
{
    uint32_t len;
    const char *text = h1_error_text(status, &len);
    /* A route's error_pages (h1_policy.c): only with a transaction, whose
     * tables outlive the send; a head that never parsed gets the fixed text. */
    const struct txn *t = txn_of(w, c);
    if (__builtin_expect(t && t->pol && t->pol->pages_count, 0))
        pol_error_page(t, status, &text, &len);
    h1_client_reply_text(w, c, status, text, len);
}

/* The same with an answer of the caller's (text must outlive the send: a
 * static, or the configuration the transaction holds). */
void h1_client_reply_text(struct worker *w, struct conn *c, uint16_t status, const char *text,
                          uint32_t len)
{
    h1_count_status(w, c, status);
    if (c->state != CS_OPEN || (c->ops & (1u << OP_SEND))) {
        h1_client_close(w, c, false);
        return;
    }
    struct txn *t = txn_of(w, c);
    if (t && t->sink == TS_STREAM) {
        /* An HTTP/2 stream: its protocol turns the text into frames. */
        h1_resp_step(&t->rs, RSE_ERROR);
        t->status = status;
        t->reply = text;
        t->reply_len = len;
        conn_hand_up(w, c, C_UP_KICK);
        return;
    }
    if (t)
        h1_resp_step(&t->rs, RSE_ERROR);
    else
        log_refused(w, c, conn_listener(w, c), status);
    c->h1 = H_LINGER;
    tp_send(w, c, text, len);
    set_timer(w, c, LINGER_MS * 5);
}

void h1_client_close(struct worker *w, struct conn *c, bool reset)
{
    conn_close(w, c, reset);
}

/* The last response is out and the connection is not kept: FIN, then
 * read and drop until the client's FIN or LINGER_MS. */
void h1_finish(struct worker *w, struct conn *c)
{
    if (c->state != CS_OPEN)
        return;
    c->h1 = H_LINGER;
    if (c->x.flags & X_EOF) {
        h1_client_close(w, c, false);
        return;
    }
    tp_shutdown(w, c);
    shutdown(c->fd, SHUT_WR);    /* directly: io_uring would punt it to io-wq */
    set_timer(w, c, LINGER_MS);
    /* While an aborted upstream may still be reading them (peer set), the
     * queued bytes stay until both close together. */
    if (c->peer == NIL)
        q_release_all(w, c);
    h1_recv_arm(w, c);
}

/* HTTP/2's connection preface on a listener with http2 = true (h2c by
 * prior knowledge, or what follows ALPN h2): the connection changes kind
 * and the loop gives it to HTTP/2 with what it has received. True when
 * the bytes are (or may still become) the preface. */
static bool h2_preface(struct worker *w, struct conn *c, const uint8_t *p, uint32_t n)
{
    static const char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    uint32_t k = n < sizeof PREFACE - 1 ? n : (uint32_t)sizeof PREFACE - 1;
    if (memcmp(p, PREFACE, k))
        return false;
    if (k < sizeof PREFACE - 1)
        return true;                  /* the rest of it is on its way */
    c->kind = CK_H2_CLIENT;
    c->attempts = 0;
    timer_cancel(w, c);
    conn_hand_up(w, c, C_UP_ADOPT);
    return true;
}

/* Parse the next request at the front of the queue, if there is one. */
void h1_client_next(struct worker *w, struct conn *c)
{
    if (c->state != CS_OPEN || c->txn != NIL || c->h1 != H_IDLE)
        return;
    const struct up_listener *l = conn_listener(w, c);
    if (!l) {                          /* its listener left the configuration */
        h1_finish(w, c);
        return;
    }
    const uint8_t *p;
    uint32_t n = q_contiguous(w, c, &p);
    if (!n) {
        if (c->x.flags & X_EOF) {
            h1_client_close(w, c, false);
            return;
        }
        if (w->stopping) {
            h1_finish(w, c);
            return;
        }
        set_timer(w, c, l->keepalive_timeout_ms);
        c->attempts = 0;               /* client: 0 keep-alive wait, 1 head wait */
        return;
    }
    if (l->http2 && p[0] == 'P' && h2_preface(w, c, p, n))
        return;
    struct h1_limits lim = { l->max_head, l->max_target, l->max_fields };
    struct h1_request *r = w_req(w);
    int rc = h1_parse_request(p, n, &lim, r);
    if (rc == H1_PARTIAL && !(buf_is_assembly(&w->bufs, c->x.head) && c->x.head == c->x.tail)) {
        /* Gather the pieces into one assembly buffer, which also frees the
         * receive buffers a slow client would otherwise hold. */
        int a = q_assemble(w, c, l->max_head);
        if (a == -1) {
            h1_client_reply_error(w, c, 503);
            return;
        }
        n = q_contiguous(w, c, &p);
        rc = h1_parse_request(p, n, &lim, r);
    }
    if (rc == H1_PARTIAL) {
        if (c->x.flags & X_EOF) {
            h1_client_close(w, c, false);
            return;
        }
        if (!c->attempts) {
            /* The head has begun: it has header_timeout to be complete. */
            c->attempts = 1;
            set_timer(w, c, l->header_timeout_ms);
        }
        return;
    }
    if (rc == H1_ERROR) {
        h1_client_reply_error(w, c, r->error_status ? r->error_status : 400);
        return;
    }
    c->attempts = 0;
    set_timer(w, c, l->idle_timeout_ms);
    if (__builtin_expect(w->cfg->nacme != 0, 0) && h1_acme(w, c, p, c->x.head, c->x.off, r, l))
        return;
    if (l->redirect_code) {
        h1_redirect(w, c, p, c->x.head, c->x.off, r, l);
        return;
    }
    txn_begin(w, c, p, c->x.head, c->x.off, r, l);
}

/* A listener behind a load balancer (proxy_protocol): the PROXY header
 * before the first request names the client, whose address then stands
 * for the connection's (X-Forwarded-For, policies, the access log). A
 * connection that does not start with one is closed, as HAProxy's
 * accept-proxy and nginx's proxy_protocol do. */
static void proxy_header(struct worker *w, struct conn *c)
{
    const uint8_t *p;
    struct proxy_header ph;
    uint32_t n = q_contiguous(w, c, &p);
    int rc = n ? proxy_header_parse(p, n, &ph) : PH_PARTIAL;
    if (rc == PH_PARTIAL && n && !(buf_is_assembly(&w->bufs, c->x.head) && c->x.head == c->x.tail)) {
        if (q_assemble(w, c, PH_V2_MAX) == -1) {
            h1_client_close(w, c, false);
            return;
        }
        n = q_contiguous(w, c, &p);
        rc = proxy_header_parse(p, n, &ph);
    }
    if (rc == PH_PARTIAL) {
        if (c->x.flags & X_EOF)
            h1_client_close(w, c, false);
        return;
    }
    if (rc < 0) {
        w->c[UP_C_ERR_BAD_REQUEST]++;
        h1_client_close(w, c, false);
        return;
    }
    if (ph.family) {
        struct conn_addr *a = conn_addr(w, c);
        memcpy(a->addr, ph.addr, ph.family);
        a->len = ph.family;
        a->port = ph.port;
    }
    q_release_to(w, c, c->x.head, c->x.off + (uint32_t)rc);
    c->h1 = H_IDLE;
    const struct up_listener *l = conn_listener(w, c);
    if (l && l->tls && l->tls[w->o.index]) {
        /* What followed the header is the handshake's: the queue goes to
         * TLS, and the next receive (armed by the caller) replays it. */
        if (tp_tls_accept_held(w, c, l->tls[w->o.index], c->x.head, c->x.off) < 0) {
            w->c[UP_C_TLS_HANDSHAKE_ERRORS]++;
            h1_client_close(w, c, true);
            return;
        }
        c->x.head = c->x.tail = NIL;  /* TLS holds them now */
        c->x.off = c->x.queued = 0;
        return;
    }
    h1_client_next(w, c);
}

static void on_recv(struct worker *w, struct conn *c, struct io_uring_cqe *cqe)
{
    bool more = cqe->flags & IORING_CQE_F_MORE;
    uint32_t bid;
    int res = tp_received(w, c, cqe, &bid);
    if (bid != NIL) {
        if (c->state != CS_OPEN || res <= 0 || c->h1 == H_LINGER) {
            bufpool_put(w, bid);       /* closing, or lingering: dropped */
        } else {
            q_push(w, c, bid, (uint32_t)res);
            w->c[UP_C_BYTES_FROM_CLIENTS] += (uint64_t)res;
            if (c->x.queued > w->o.queue_limit && !(c->x.flags & X_PAUSED)) {
                c->x.flags |= X_PAUSED;
                if (more)
                    conn_cancel_ops_of(w, c, OP_RECV);
            }
        }
    }
    if (c->state != CS_OPEN)
        return;
    if (res == -EAGAIN) {              /* the transport had nothing for us yet */
        if (!more)
            h1_recv_arm(w, c);
        return;
    }
    if (res == 0) {
        c->x.flags |= X_EOF;
    } else if (res < 0 && res != -ECANCELED) {
        if (res == -ENOBUFS) {
            conn_starve(w, c);
            return;
        }
        w->c[res == -ECONNRESET ? UP_C_ERR_CLIENT_RESET : UP_C_ERR_OTHER]++;
        struct txn *t = txn_of(w, c);
        if (t && c->h1 == H_TXN)
            txn_abort(w, t, 0, false);
        else
            h1_client_close(w, c, false);
        return;
    }
    struct txn *t = txn_of(w, c);
    switch (c->h1) {
    case H_PROXY:
        proxy_header(w, c);
        break;
    case H_IDLE:
        h1_client_next(w, c);
        break;
    case H_TXN:
        txn_touch(w, t);
        if (c->x.flags & X_EOF) {
            if (!rq_all_in(t->rq)) {
                /* The client went away in the middle of its request. */
                w->c[UP_C_ERR_SHORT_BODY]++;
                txn_abort(w, t, 0, false);
                return;
            }
            t->flags |= TF_CLIENT_CLOSE;
        }
        txn_req_pump(w, t);
        if ((t = txn_of(w, c)) != NULL)    /* it may have ended meanwhile */
            splice_progress(w, t);
        break;
    case H_LINGER:
        if (c->x.flags & X_EOF) {
            h1_client_close(w, c, false);
            return;
        }
        break;
    default:
        break;
    }
    if (!more && c->state == CS_OPEN)
        h1_recv_arm(w, c);
}

void h1_client_cqe(struct worker *w, struct conn *c, enum op op, struct io_uring_cqe *cqe)
{
    struct txn *t = txn_of(w, c);
    switch (op) {
    case OP_RECV:
        on_recv(w, c, cqe);
        break;
    case OP_SEND: {
        int res = tp_sent(w, c, cqe);
        if (c->state != CS_OPEN)
            break;
        if (c->h1 == H_LINGER) {
            /* The proxy's own answer is out: now the lingering close. */
            c->h1 = H_TXN;             /* let h1_finish take it */
            h1_finish(w, c);
        } else if (t) {
            txn_sent(w, t, &t->resp, c, res);
        }
        break;
    }
    case OP_POLL_IN:
    case OP_POLL_OUT:
        if (cqe->res != -ECANCELED)
            splice_poll(w, c, op);
        break;
    default:
        break;
    }
}

void h1_client_expired(struct worker *w, struct conn *c)
{
    struct txn *t = txn_of(w, c);
    switch (c->h1) {
    case H_IDLE:
        if (!tp_ready(w, c))
            w->c[UP_C_TLS_HANDSHAKE_TIMEOUTS]++;
        if (c->x.head != NIL) {
            h1_client_reply_error(w, c, 408);   /* the head came too slowly */
            return;
        }
        h1_client_close(w, c, false);           /* keep-alive ran out */
        return;
    case H_TXN:
        w->c[UP_C_ERR_IDLE_TIMEOUT]++;
        if (t && !rq_all_in(t->rq))
            txn_abort(w, t, 408, false);
        else if (t)
            txn_abort(w, t, 504, false);
        else
            h1_client_close(w, c, false);
        return;
    default:
        h1_client_close(w, c, false);
        return;
    }
}

/* On SIGTERM: idle keep-alive clients and pooled upstream connections go
 * at once; clients with a request under way finish it first. */
void h1_stop_idle(struct worker *w)
{
    for (uint32_t i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (c->state != CS_OPEN)
            continue;
        if (c->kind == CK_H1_CLIENT && c->h1 == H_IDLE && c->x.head == NIL)
            h1_finish(w, c);
        else if (c->kind == CK_H1_UPSTREAM && c->h1 == H_POOL)
            h1_upstream_close(w, c, false);
    }
}

/* Both ends of a transaction close together: neither may give its buffers
 * back while the other's send may still read them. */
void h1_try_finish(struct worker *w, struct conn *c)
{
    struct conn *side[2];
    if (!conn_pair_done(w, c, side))
        return;
    for (int i = 0; i < 2; i++) {
        struct conn *s = side[i];
        if (!s)
            continue;
        q_release_all(w, s);
        if (s->kind != CK_H1_UPSTREAM && s->kind != CK_H2_USTREAM) {   /* a client, or its stream */
            struct txn *t = txn_of(w, s);
            if (t)
                txn_free(w, t);
            s->txn = NIL;
            if (s->flags & C_SESSION) {
                w->clients--;
                w->c[UP_C_ACTIVE]--;
                w->c[UP_C_CLOSED]++;
            }
        } else {
            dial_gone(w, s);
            s->txn = NIL;
        }
        s->flags &= (uint16_t)~(C_SESSION | C_SERVER_REF | C_COUNTED);
        s->peer = NIL;
        tp_release(w, s);
        conn_submit_close(w, s);
    }
}

/* The drain deadline passed with this client still here: its transaction
 * (if one is under way) ends now, or the connection closes. */
void h1_client_cut(struct worker *w, struct conn *c)
{
    struct txn *t = txn_of(w, c);
    if (t && c->h1 == H_TXN)
        txn_abort(w, t, 0, false);
    else
        h1_client_close(w, c, false);
}
