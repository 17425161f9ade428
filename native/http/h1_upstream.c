/*
 * The upstream side of HTTP proxying: choosing a server, taking a pooled
 * connection or dialing a new one (a state of the connection, never a
 * wait), reading response heads, and giving the connection back.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <unistd.h>
#include "http/h1.h"

/* An upstream whose responses are big (C_HEADRECV) is read one head-sized
 * receive at a time: a multishot receive would pull the whole body into
 * buffers before the head could be looked at, and the body is cheaper by
 * splice. Everything else keeps one multishot receive armed. */
#define HEAD_RECV 1024

void h1_recv_arm(struct worker *w, struct conn *c)
{
    if (c->kind == CK_H2_STREAM || c->kind == CK_H2_USTREAM) {
        /* A stream has no socket: its bytes come from its connection's
         * DATA frames, whose window its protocol holds while the queue is
         * over its limit. "Receive again" is a word to that protocol. */
        if (c->state == CS_OPEN && !(c->x.flags & X_PAUSED))
            conn_hand_up(w, c, C_UP_KICK);
        return;
    }
    if (c->state != CS_OPEN || (c->x.flags & (X_EOF | X_PAUSED | X_STARVED | X_HELD)) ||
        (c->ops & (1u << OP_RECV)))
        return;
    bool head = (c->flags & C_HEADRECV) && w->o.splice_min;
    /* For an HTTP/2 stream a buffer's worth at a time: an unlimited
     * multishot receive would queue far past the stream's small limit
     * before it stopped. Where the kernel can end a multishot receive
     * after N bytes, one stays armed for a buffer's worth: it carries
     * ~70 small responses before its re-arm, instead of one receive SQE
     * (and, as it finds nothing yet, one poll arming) per response, while
     * the bytes it can queue past the limit stay under two buffers. */
    bool stream = c->txn != NIL ? w->txns[c->txn].sink == TS_STREAM : (c->flags & C_ONEBUF);
    if (stream && !head) {
        tp_recv_arm_upto(w, c, w->bufs.size);
        return;
    }
    /* A PROXY header is awaited one receive at a time: on a TLS listener
     * the bytes after it go to the handshake, which takes over receiving. */
    tp_recv_arm(w, c, head ? HEAD_RECV : c->h1 == H_PROXY ? w->bufs.size : 0);
}

static void link_txn(struct worker *w, struct txn *t, struct conn *u)
{
    struct conn *c = &w->conns[t->client];
    t->up = (uint32_t)(u - w->conns);
    u->txn = c->txn;
    u->peer = t->up == NIL ? NIL : t->client;
    c->peer = t->up;
    dial_busy(w, u);
    w->srv[u->slot].requests++;
    if (t->sink == TS_STREAM && (u->ops & (1u << OP_RECV)) && !(u->flags & (C_HEADRECV | C_ONEBUF)))
        conn_cancel_ops_of(w, u, OP_RECV);   /* re-armed one buffer at a time */
}

static void dial_server(struct worker *w, struct txn *t, struct conn *u);

/* Choose a server and a connection to it for transaction t. */
void h1_upstream_assign(struct worker *w, struct txn *t)
{
    const struct up_config *cfg = t->cfg;
    if (!(t->res & RES_ADMITTED) && !res_admit(w, t))
        return;                       /* its cluster's breaker is open: 503 sent */
    int s = balance_pick(w, cfg, t->cluster, t->server, t->hash_key);
    if (s < 0 && t->server != NIL)
        s = balance_pick(w, cfg, t->cluster, NIL, t->hash_key);
    if (s < 0) {
        txn_abort(w, t, 503, false);
        return;
    }
    t->server = (uint32_t)s;
    uint32_t slot = cfg->servers[s].stat_slot;
    struct conn *u;
    /* (Again here: forward auth moves a transaction between clusters.) */
    t->upk = cfg->clusters[t->cluster].protocol == UP_PROTO_H2 ? TU_H2 : TU_H1;
    if (t->upk == TU_H2) {
        /* A stream of its own (no socket), which HTTP/2 places on a
         * pooled connection to the server or a new one (C_UP_KICK). */
        u = conn_alloc(w);
        if (!u) {
            txn_abort(w, t, 503, false);
            return;
        }
        u->kind = CK_H2_USTREAM;
        u->state = CS_OPEN;
        u->h1 = H_DIAL;
        u->slot = slot;
        u->server = (uint32_t)s;
        link_txn(w, t, u);
        conn_hand_up(w, u, C_UP_KICK);
        return;
    }
    u = (t->flags & TF_RETRIED) ? NULL : pool_get(w, slot);
    while (u && u->kind != CK_H1_UPSTREAM) {
        conn_close(w, u, false);      /* the cluster spoke HTTP/2 before a reload */
        u = pool_get(w, slot);
    }
    if (u) {
        w->c[UP_C_POOL_HITS]++;
        w->srv[slot].reused++;
        t->flags |= TF_REUSED;
        u->h1 = H_BUSY;
        link_txn(w, t, u);
        txn_req_pump(w, t);
        return;
    }
    w->c[UP_C_POOL_MISSES]++;
    u = conn_alloc(w);
    if (!u) {
        txn_abort(w, t, 503, false);
        return;
    }
    u->kind = CK_H1_UPSTREAM;
    u->slot = slot;
    link_txn(w, t, u);
    dial_server(w, t, u);
}

static void dial_server(struct worker *w, struct txn *t, struct conn *u)
{
    u->h1 = H_DIAL;
    t->attempts++;
    if (dial(w, u, t->cfg, t->server, t->cluster) < 0)
        txn_abort(w, t, 502, false);
}

static void on_connect(struct worker *w, struct conn *u, struct io_uring_cqe *cqe)
{
    struct txn *t = txn_of(w, u);
    int res = cqe->res;
    if (u->state != CS_CONNECTING || !t)
        return;
    if (res == 0) {
        hist_add(w->shm->hist_connect, w->now_us - u->t_us);
        balance_result(w, t->cfg, t->server, true);
        u->state = CS_OPEN;
        const struct up_cluster *cl = &t->cfg->clusters[t->cluster];
        if (cl->proxy_protocol) {
            /* The PROXY header first, before TLS and the request. */
            const struct conn *c = h1_wire(w, &w->conns[t->client]);
            const struct conn_addr *a = conn_addr(w, &w->conns[t->client]);
            int e = proxy_send(w, u, cl->proxy_protocol, a->addr, a->len, a->port, c->fd);
            if (e < 0) {
                h1_upstream_failed(w, t, e);
                return;
            }
        }
        if (cl->tls && cl->tls[w->o.index]) {
            /* TLS first: the request goes once the handshake is done. */
            if (tp_tls_connect(w, u, cl->tls[w->o.index], NULL) < 0) {
                h1_upstream_failed(w, t, -EPROTO);
                return;
            }
            h1_recv_arm(w, u);
            return;
        }
        u->h1 = H_BUSY;
        h1_recv_arm(w, u);
        txn_req_pump(w, t);
        return;
    }
    dial_failed(w, u, t->cfg, res);
    const struct up_cluster *cl = &t->cfg->clusters[t->cluster];
    if (t->attempts >= cl->max_attempts || !res_retry(w, t)) {
        txn_abort(w, t, 502, false);
        return;
    }
    /* Next server: the failed one is avoided when another can serve. */
    int s = balance_pick(w, t->cfg, t->cluster, t->server, t->hash_key);
    if (s < 0)
        s = balance_pick(w, t->cfg, t->cluster, NIL, t->hash_key);
    if (s < 0) {
        txn_abort(w, t, 503, false);
        return;
    }
    t->server = (uint32_t)s;
    u->slot = t->cfg->servers[s].stat_slot;
    dial_busy(w, u);
    w->srv[u->slot].requests++;
    dial_server(w, t, u);
}

static bool retryable(const struct txn *t)
{
    switch (t->method) {
    case H1_M_GET:
    case H1_M_HEAD:
    case H1_M_OPTIONS:
    case H1_M_PUT:
    case H1_M_DELETE:
    case H1_M_TRACE:
        return t->req_body == H1_BODY_NONE;
    default:
        return false;
    }
}

/* The upstream connection failed before a response head came. A request
 * that went out on a reused connection may have met an upstream that had
 * just closed it: idempotent ones are sent once more on a new connection. */
void h1_upstream_failed(struct worker *w, struct txn *t, int res)
{
    struct conn *u = &w->conns[t->up];
    struct conn *c = &w->conns[t->client];
    w->c[res == -ECONNRESET || res == -EPIPE ? UP_C_ERR_UPSTREAM_RESET : UP_C_ERR_OTHER]++;
    w->srv[u->slot].errors++;
    if ((t->flags & TF_REUSED) && !(t->flags & TF_RETRIED) && t->rs == RS_WAIT &&
        retryable(t) && res_retry(w, t)) {
        /* Detach the dead connection, then start over from the request's
         * head, which is still in the client's queue. */
        u->peer = NIL;
        u->txn = NIL;
        c->peer = NIL;
        dial_gone(w, u);
        h1_upstream_close(w, u, false);
        t->up = NIL;
        t->flags = (uint16_t)((t->flags & ~TF_REUSED) | TF_RETRIED);
        h1_req_step(&t->rq, RQE_AGAIN);
        w->c[UP_C_RETRIES]++;
        if (h1_request_again(w, t))
            h1_upstream_assign(w, t);
        return;
    }
    txn_abort(w, t, 502, false);
}

bool h1_request_again(struct worker *w, struct txn *t)
{
    struct conn *c = &w->conns[t->client];
    const uint8_t *p;
    uint32_t n = q_contiguous(w, c, &p);
    struct h1_request *r = w_req(w);
    const struct up_listener *l = NULL;
    for (uint32_t i = 0; i < w->cfg->nlisteners; i++)
        if (w->cfg->listeners[i].id == c->listener_id)
            l = &w->cfg->listeners[i];
    struct h1_limits lim = { l ? l->max_head : 0, l ? l->max_target : 0, l ? l->max_fields : 0 };
    if (!n || h1_parse_request(p, n, &lim, r) != H1_DONE ||
        !txn_build_head(w, t, p, c->x.head, c->x.off, r)) {
        txn_abort(w, t, 502, false);
        return false;
    }
    return true;
}

/* Bytes arrived from the upstream (or it closed): move the response on. */
void h1_upstream_progress(struct worker *w, struct conn *u)
{
    struct txn *t = txn_of(w, u);
    if (u->state != CS_OPEN)
        return;
    if (u->h1 == H_POOL || !t) {
        /* An idle connection spoke or closed: it cannot be trusted. */
        w->c[UP_C_POOL_STALE]++;
        h1_upstream_close(w, u, false);
        return;
    }
    if (rs_final_head(t->rs)) {
        txn_resp_pump(w, t);
        return;
    }
    if (t->resp.active)
        return;                       /* a 1xx is on its way out first */
    const uint8_t *p;
    uint32_t n = q_contiguous(w, u, &p);
    struct h1_response *r = w_resp(w);
    /* A response head: 16 KiB, and as many fields as the result arrays
     * hold (the upstream is not a client; the size bounds the work). */
    static const struct h1_limits resp_lim = { 0, 0, H1_MAX_HEADERS };
    /* (An auth subrequest was a GET, or a HEAD for a HEAD.) */
    uint8_t method = t->fa == FA_ASKING && t->method != H1_M_HEAD ? H1_M_GET : t->method;
    int rc = n ? h1_parse_response(p, n, &resp_lim, method, r) : H1_PARTIAL;
    if (rc == H1_PARTIAL && n && u->x.head != u->x.tail) {
        int a = q_assemble(w, u, HBUF_SIZE);
        if (a < 0) {
            txn_abort(w, t, 502, false);
            return;
        }
        n = q_contiguous(w, u, &p);
        rc = h1_parse_response(p, n, &resp_lim, method, r);
    }
    if (rc == H1_PARTIAL) {
        if (u->x.flags & X_EOF) {
            if (!n) {
                h1_upstream_failed(w, t, -EPIPE);
                return;
            }
            txn_abort(w, t, 502, false);
        }
        return;
    }
    if (rc == H1_ERROR) {
        w->srv[u->slot].errors++;
        txn_abort(w, t, 502, false);
        return;
    }
    w->resp_parsed = p;               /* (w_resp_of: an HTTP/2 stream's HEADERS reuse it) */
    w->resp_parsed_method = method;
    txn_response_head(w, t, p, r);
}

static void on_recv(struct worker *w, struct conn *u, struct io_uring_cqe *cqe)
{
    bool more = cqe->flags & IORING_CQE_F_MORE;
    uint32_t bid;
    int res = tp_received(w, u, cqe, &bid);
    if (bid != NIL) {
        if (u->state != CS_OPEN || res <= 0) {
            bufpool_put(w, bid);
        } else {
            q_push(w, u, bid, (uint32_t)res);
            w->c[UP_C_BYTES_FROM_UPSTREAMS] += (uint64_t)res;
            struct txn *t = txn_of(w, u);
            if (t)
                txn_touch(w, t);
            if (u->x.queued > h1_queue_limit(w, u) && !(u->x.flags & X_PAUSED)) {
                u->x.flags |= X_PAUSED;
                if (more)
                    conn_cancel_ops_of(w, u, OP_RECV);
            }
        }
    }
    if (u->state != CS_OPEN)
        return;
    if (res == -EAGAIN) {              /* the transport had nothing for us yet */
        struct txn *t = txn_of(w, u);
        if (u->h1 == H_DIAL && t && tp_ready(w, u)) {
            u->h1 = H_BUSY;            /* TLS is up: the request may go */
            txn_req_pump(w, t);
        }
        if (!more && u->state == CS_OPEN)
            h1_recv_arm(w, u);
        return;
    }
    if (res == 0) {
        u->x.flags |= X_EOF;
    } else if (res < 0) {
        switch (res) {
        case -ENOBUFS:
            conn_starve(w, u);
            return;
        case -ECANCELED:
            break;
        default: {
            struct txn *t = txn_of(w, u);
            if (t && !rs_final_head(t->rs)) {
                h1_upstream_failed(w, t, res);
            } else if (t) {
                w->c[UP_C_ERR_UPSTREAM_RESET]++;
                txn_abort(w, t, 0, true);
            } else {
                w->c[UP_C_POOL_STALE]++;
                h1_upstream_close(w, u, false);
            }
            return;
        }
        }
    }
    if (res != -ECANCELED || (u->x.flags & X_EOF))
        h1_upstream_progress(w, u);
    if (!more)
        h1_recv_arm(w, u);
    struct txn *t = txn_of(w, u);
    if (t && u->state == CS_OPEN)
        splice_progress(w, t);
}

void h1_upstream_cqe(struct worker *w, struct conn *u, enum op op, struct io_uring_cqe *cqe)
{
    switch (op) {
    case OP_CONNECT:
        on_connect(w, u, cqe);
        break;
    case OP_RECV:
        on_recv(w, u, cqe);
        break;
    case OP_SEND: {
        struct txn *t = txn_of(w, u);
        int res = tp_sent(w, u, cqe);
        if (u->state == CS_OPEN && t)
            txn_sent(w, t, &t->req, u, res);
        break;
    }
    case OP_POLL_IN:
    case OP_POLL_OUT:
        if (cqe->res != -ECANCELED)
            splice_poll(w, u, op);
        break;
    default:
        break;
    }
}

/* A transaction is done with u. */
void h1_upstream_release(struct worker *w, struct conn *u, bool reusable)
{
    struct txn *t = txn_of(w, u);
    if (u->kind == CK_H2_USTREAM) {
        /* A stream is never reused: its connection stays with HTTP/2.
         * H_LINGER: it ended well, HTTP/2 lets it close by itself. */
        u->txn = NIL;
        u->peer = NIL;
        u->h1 = H_LINGER;
        dial_idle(w, u);
        conn_close(w, u, false);
        return;
    }
    const struct up_cluster *cl = t ? &t->cfg->clusters[t->cluster] : NULL;
    /* Learn from this response how to read the next one. The multishot
     * receive, if armed, is left alone: the change applies at its re-arm. */
    if (t && t->sink == TS_CLIENT && t->bytes_out >= w->o.splice_min && w->o.splice_min &&
        tp_splice_from(u) &&
        tp_splice_into(&w->conns[t->client])) {
        if (!(u->flags & C_HEADRECV) && (u->ops & (1u << OP_RECV)))
            conn_cancel_ops_of(w, u, OP_RECV);     /* re-armed head-sized below */
        u->flags |= C_HEADRECV;
    } else if (t) {
        u->flags &= ~C_HEADRECV;
    }
    /* Idle, it waits with the receive the next transaction likely wants: a
     * stream's buffer's worth (taken as it is, where an unlimited multishot
     * one would cost a cancel per request), or the multishot one of HTTP/1.1. */
    if (t && t->sink == TS_STREAM)
        u->flags |= C_ONEBUF;
    else if (t)
        u->flags &= ~C_ONEBUF;
    u->txn = NIL;
    u->peer = NIL;
    u->nreq++;
    dial_idle(w, u);
    if (reusable && cl && u->state == CS_OPEN &&
        pool_put(w, u, cl->pool_max_idle, cl->pool_idle_timeout_ms)) {
        u->h1 = H_POOL;
        return;
    }
    h1_upstream_close(w, u, false);
}

void h1_upstream_close(struct worker *w, struct conn *u, bool reset)
{
    pool_remove(w, u);
    conn_close(w, u, reset);
}

void h1_upstream_expired(struct worker *w, struct conn *u)
{
    struct txn *t = txn_of(w, u);
    if (u->h1 == H_POOL || !t) {
        h1_upstream_close(w, u, false);    /* idle past pool_idle_timeout */
        return;
    }
    if (!rs_final_head(t->rs)) {
        w->srv[u->slot].errors++;
        w->srv[u->slot].timeouts++;
        txn_abort(w, t, 504, false);
    }
}
