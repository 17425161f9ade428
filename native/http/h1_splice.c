/*
 * Large HTTP bodies by splice. A body with a known length that still has
 * at least body_splice_min bytes to come after the head's receive goes
 * socket -> pipe -> socket instead of through receive buffers: no copy in
 * or out of user space. Only the framing is the proxy's business here, and
 * with Content-Length that is a byte count, so the core can move exactly
 * the body and leave whatever follows (a pipelined request) in the socket.
 *
 * Switching over keeps order: the receive on the source is stopped, the
 * bytes it already delivered go out through the buffered rounds, and only
 * then does the pump start (the same pump design as L4: io_uring polls,
 * the worker calls non-blocking splice()).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include "http/h1.h"

static struct bsplice *bs_of(struct txn *t, int dir)
{
    return dir == BS_REQ ? &t->req_splice : &t->resp_splice;
}

/* Source and destination of direction dir. */
static void ends(struct worker *w, struct txn *t, int dir, struct conn **src, struct conn **dst)
{
    struct conn *c = &w->conns[t->client], *u = t->up == NIL ? NULL : &w->conns[t->up];
    *src = dir == BS_REQ ? c : u;
    *dst = dir == BS_REQ ? u : c;
}

/* Called when a head says a body is coming: decide whether it is worth a
 * splice, and if so stop the source's receive so the switch can happen. */
void splice_consider(struct worker *w, struct txn *t, int dir)
{
    struct bsplice *b = bs_of(t, dir);
    uint64_t left = dir == BS_REQ ? t->req_left : t->resp_left;
    uint8_t kind = dir == BS_REQ ? t->req_body : t->resp_body;
    if (!w->o.splice_min || kind != H1_BODY_LENGTH || left < w->o.splice_min ||
        t->sink != TS_CLIENT || t->upk != TU_H1 ||
        !w->pipes.nfree || (dir == BS_RESP && t->up == NIL))
        return;
    struct conn *src, *dst;
    ends(w, t, dir, &src, &dst);
    if (!tp_splice_from(src) || (dst && !tp_splice_into(dst)))
        return;                        /* records are not the body's bytes */
    b->state = BS_WANT;
    src->x.flags |= X_HELD;
    if (src->ops & (1u << OP_RECV))
        conn_cancel_ops_of(w, src, OP_RECV);
}

static void finish(struct worker *w, struct txn *t, int dir)
{
    struct bsplice *b = bs_of(t, dir);
    struct conn *src, *dst;
    ends(w, t, dir, &src, &dst);
    if (b->pipe >= 0) {
        pipe_put(w, b->pipe, b->in_pipe != 0);
        b->pipe = -1;
    }
    b->state = BS_OFF;
    b->in_pipe = 0;
    src->x.flags &= ~X_HELD;
    h1_recv_arm(w, src);
}

/* The transaction is ending with a switch-over still pending (the whole
 * body had already arrived in receive buffers): let the sources receive
 * again, or a pooled connection would never notice its upstream closing. */
void splice_unhold(struct worker *w, struct txn *t)
{
    for (int dir = 0; dir < 2; dir++) {
        struct bsplice *b = bs_of(t, dir);
        if (b->state != BS_WANT)
            continue;
        b->state = BS_OFF;
        struct conn *src, *dst;
        ends(w, t, dir, &src, &dst);
        if (src) {
            src->x.flags &= ~X_HELD;
            h1_recv_arm(w, src);
        }
    }
}

/* The transaction is given up: no direction is pumped any more, and the
 * sources are no longer held, so a client whose receive was stopped for a
 * splice sees its peer's FIN while it lingers (instead of waiting for the
 * lingering timer). The pipes go back with the transaction. */
void splice_abort(struct worker *w, struct txn *t)
{
    for (int dir = 0; dir < 2; dir++) {
        struct bsplice *b = bs_of(t, dir);
        if (b->state == BS_OFF)
            continue;
        b->state = BS_OFF;
        struct conn *src, *dst;
        ends(w, t, dir, &src, &dst);
        if (src)
            src->x.flags &= ~X_HELD;
    }
}

/* Give back a transaction's pipes (it ended, or was cut). */
void splice_release(struct worker *w, struct txn *t)
{
    for (int dir = 0; dir < 2; dir++) {
        struct bsplice *b = bs_of(t, dir);
        if (b->pipe >= 0) {
            pipe_put(w, b->pipe, b->in_pipe != 0);
            b->pipe = -1;
        }
        b->state = BS_OFF;
    }
}

static void pump(struct worker *w, struct txn *t, int dir)
{
    struct bsplice *b = bs_of(t, dir);
    struct conn *src, *dst;
    ends(w, t, dir, &src, &dst);
    uint64_t *left = dir == BS_REQ ? &t->req_left : &t->resp_left;
    const struct pipepool *pp = &w->pipes;
    int pr = pp->fds[2 * b->pipe], pw = pp->fds[2 * b->pipe + 1];
    uint32_t moved = 0;
    bool want_in = false;
    for (;;) {
        if (*left && b->in_pipe < pp->size && !want_in) {
            uint64_t ask = pp->size - b->in_pipe;
            if (ask > *left)
                ask = *left;
            ssize_t n = splice(src->fd, NULL, pw, NULL, ask, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                *left -= (uint64_t)n;
                b->in_pipe += (uint32_t)n;
                w->c[dir == BS_REQ ? UP_C_BYTES_FROM_CLIENTS : UP_C_BYTES_FROM_UPSTREAMS] += (uint64_t)n;
                if (dir == BS_REQ)
                    t->bytes_in += (uint64_t)n;
            } else if (n == 0 || errno != EAGAIN) {
                /* The sender went away before the end of its body. A
                 * client that left is not answered (as on the buffered
                 * path): both connections close at once. */
                if (dir == BS_REQ && n == 0)
                    src->x.flags |= X_EOF;
                w->c[UP_C_ERR_SHORT_BODY]++;
                txn_abort(w, t, dir == BS_REQ ? 0 : 502, false);
                return;
            } else {
                want_in = true;
            }
        }
        if (b->in_pipe) {
            ssize_t m = splice(pr, NULL, dst->fd, NULL, b->in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (m > 0) {
                b->in_pipe -= (uint32_t)m;
                moved += (uint32_t)m;
                w->c[dir == BS_REQ ? UP_C_BYTES_TO_UPSTREAMS : UP_C_BYTES_TO_CLIENTS] += (uint64_t)m;
                if (dir == BS_RESP) {
                    t->bytes_out += (uint64_t)m;
                    h1_resp_step(&t->rs, RSE_SENDING);
                }
            } else if (m < 0 && errno != EAGAIN) {
                w->c[dir == BS_REQ ? UP_C_ERR_UPSTREAM_RESET : UP_C_ERR_CLIENT_RESET]++;
                txn_abort(w, t, 0, dir == BS_RESP);
                return;
            }
            if (b->in_pipe) {
                conn_poll_arm(w, dst, OP_POLL_OUT, POLLOUT);   /* wait for room */
                break;
            }
        }
        if (!*left && !b->in_pipe) {
            finish(w, t, dir);
            if (dir == BS_REQ) {
                h1_req_step(&t->rq, RQE_ALL_IN);
                if (rs_all_in(t->rs) && !t->resp.active)
                    txn_end(w, t);
            } else {
                h1_resp_step(&t->rs, RSE_ALL_IN);
                if (!t->req.active)
                    txn_end(w, t);
            }
            return;
        }
        if (want_in || moved >= SPLICE_PUMP_BUDGET) {
            conn_poll_arm(w, src, OP_POLL_IN, POLLIN | POLLRDHUP);
            break;
        }
    }
    if (moved)
        txn_touch(w, t);
}

/* The switch-over: once the source's receive has stopped and every byte it
 * delivered has gone out, the pump takes the rest of the body. */
void splice_progress(struct worker *w, struct txn *t)
{
    for (int dir = 0; dir < 2; dir++) {
        struct bsplice *b = bs_of(t, dir);
        if (b->state != BS_WANT || t->up == NIL)
            continue;
        struct conn *src, *dst;
        ends(w, t, dir, &src, &dst);
        struct out *o = dir == BS_REQ ? &t->req : &t->resp;
        bool head_out = dir == BS_REQ ? rq_head_out(t->rq) : rs_final_head(t->rs);
        if ((src->ops & (1u << OP_RECV)) || o->active || src->x.head != NIL || !head_out ||
            dst->state != CS_OPEN || src->state != CS_OPEN)
            continue;
        uint64_t left = dir == BS_REQ ? t->req_left : t->resp_left;
        /* The upstream, known only now for a request, may speak TLS. */
        int p = left && tp_splice_into(dst) ? pipe_get(w) : -1;
        if (p < 0) {
            /* Nothing left after all, no pipe, or records on the way:
             * carry on buffered. */
            b->state = BS_OFF;
            src->x.flags &= ~X_HELD;
            h1_recv_arm(w, src);
            continue;
        }
        b->pipe = p;
        b->in_pipe = 0;
        b->state = BS_ON;
        w->c[UP_C_BODIES_SPLICED]++;
        pump(w, t, dir);
    }
}

/* A poll completed on conn c: pump the direction that waited on it. */
void splice_poll(struct worker *w, struct conn *c, enum op op)
{
    struct txn *t = txn_of(w, c);
    if (!t || c->state != CS_OPEN)
        return;
    bool is_client = c->kind == CK_H1_CLIENT;
    /* POLL_IN on the source or POLL_OUT on the destination. */
    int dir = (op == OP_POLL_IN) == is_client ? BS_REQ : BS_RESP;
    if (bs_of(t, dir)->state == BS_ON)
        pump(w, t, dir);
}
