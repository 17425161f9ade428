/*
 * L4 TCP proxying. A session is two connections, the client's and the
 * upstream's; each carries the state of the bytes read from its own socket
 * on their way to the other (struct xfer). Bytes move either buffered
 * (receive into a provided buffer, send it on) or by splice through a pipe
 * from the worker's pool. TCP semantics pass through: a FIN one way becomes
 * a shutdown(SHUT_WR) the other way while the reverse keeps flowing, and a
 * reset on one side becomes a reset on the other.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "l4/l4.h"
#include "l4/sockmap.h"
#include "upstream/upstream.h"
#include "transport/transport.h"

static inline struct conn *peer_of(struct worker *w, struct conn *c)
{
    return c->peer == NIL ? NULL : &w->conns[c->peer];
}

static inline const struct up_listener *listener_of(const struct conn *c)
{
    return &c->cfg->listeners[c->listener];
}

static inline bool is_client(const struct conn *c)
{
    return c->kind == CK_L4_CLIENT;
}

/* Splice by the worker: "splice", and "sockmap" for the sessions it does
 * not hand to the kernel (the program not loaded, a TLS side, bytes
 * already read for SNI). */
static inline bool worker_splices(const struct conn *c)
{
    uint32_t f = listener_of(c)->forwarding;
    return f == UP_FWD_SPLICE || f == UP_FWD_SOCKMAP;
}

/* The session's idle deadline lives on the client connection; activity
 * only pushes it later, which the wheel handles lazily. Until the client's
 * TLS handshake is done the handshake's deadline stands: an upstream that
 * speaks first must not keep a client that never finishes it. */
static inline void touch(struct worker *w, struct conn *c)
{
    struct conn *client = is_client(c) ? c : peer_of(w, c);
    /* (A sockmap session's clock is its sockets' byte counters.) */
    if (client && client->expires_ms && !(client->flags & C_SOCKMAP) && tp_ready(w, client))
        client->expires_ms = w->now_ms + listener_of(client)->idle_timeout_ms;
}

static void count_in(struct worker *w, struct conn *src, uint32_t n)
{
    cnt(w, is_client(src) ? UP_C_BYTES_FROM_CLIENTS : UP_C_BYTES_FROM_UPSTREAMS, n);
}

static void count_out(struct worker *w, struct conn *dst, uint32_t n)
{
    cnt(w, is_client(dst) ? UP_C_BYTES_TO_CLIENTS : UP_C_BYTES_TO_UPSTREAMS, n);
}

/* Cut the session: both connections close; `reset_*` sends an RST rather
 * than a FIN, so a reset on one side reaches the other. */
static void abort_session(struct worker *w, struct conn *c, bool reset_c, bool reset_peer)
{
    struct conn *p = peer_of(w, c);
    conn_close(w, c, reset_c);
    if (p)
        conn_close(w, p, reset_peer);
}

static void fail_error(struct worker *w, struct conn *c, int res)
{
    /* c's socket failed: its side is gone, so the other side gets a reset
     * unless the failure was an orderly one. */
    if (res == -ECONNRESET || res == -EPIPE)
        cnt(w, is_client(c) ? UP_C_ERR_CLIENT_RESET : UP_C_ERR_UPSTREAM_RESET, 1);
    else
        cnt(w, UP_C_ERR_OTHER, 1);
    if (!is_client(c) && c->server != NIL)
        srv_stats(w, c->cfg, c->server)->errors++;
    abort_session(w, c, false, true);
}

static void maybe_finish(struct worker *w, struct conn *c)
{
    struct conn *p = peer_of(w, c);
    if ((c->x.flags & X_SHUT) && p && (p->x.flags & X_SHUT))
        abort_session(w, c, false, false);
}

/* Pass a FIN on. Called directly: io_uring would run IORING_OP_SHUTDOWN
 * on an io-wq thread (tens of microseconds of hand-over for a call that
 * takes one). */
static void sockmap_recheck(struct worker *w, struct conn *src);

static void shutdown_peer(struct worker *w, struct conn *src)
{
    struct conn *dst = peer_of(w, src);
    if (src->x.flags & X_SHUT)
        return;
    if ((src->flags & C_SOCKMAP) && !sm_flushed(w, src)) {
        /* The kernel still holds bytes it redirected from src: a FIN now
         * would overtake them (and they would be refused after it). */
        src->x.flags |= X_FLUSH;
        sockmap_recheck(w, src);
        return;
    }
    src->x.flags &= ~X_FLUSH;
    src->x.flags |= X_SHUT;
    tp_shutdown(w, dst);
    if (shutdown(dst->fd, SHUT_WR) < 0 && errno != ENOTCONN) {
        fail_error(w, dst, -errno);
        return;
    }
    maybe_finish(w, src);
}

/* ---- buffered: recv into provided buffers, send from them ------------ */

static void recv_arm(struct worker *w, struct conn *src)
{
    if (src->x.flags & (X_EOF | X_PAUSED | X_STARVED) || (src->ops & (1u << OP_RECV)))
        return;
    tp_recv_arm(w, src, 0);
}

static void send_next(struct worker *w, struct conn *src)
{
    struct conn *dst = peer_of(w, src);
    if (dst->ops & (1u << OP_SEND) || dst->state != CS_OPEN || !tp_ready(w, dst))
        return;                   /* (a TLS handshake first: tp_ready comes back here) */
    struct xfer *x = &src->x;
    if (x->head == NIL) {
        if (x->flags & X_EOF)
            shutdown_peer(w, src);
        return;
    }
    tp_send(w, dst, buf_data(&w->bufs, x->head) + x->off, w->bufs.len[x->head] - x->off);
}

static void on_recv(struct worker *w, struct conn *src, struct io_uring_cqe *cqe)
{
    bool more = cqe->flags & IORING_CQE_F_MORE;
    struct xfer *x = &src->x;
    uint32_t bid;
    int res = tp_received(w, src, cqe, &bid);
    if (bid != NIL) {
        if (src->state != CS_OPEN || res <= 0) {
            bufpool_put(w, bid);
        } else {
            w->bufs.len[bid] = (uint32_t)res;
            w->bufs.next[bid] = NIL;
            if (x->tail == NIL)
                x->head = bid;
            else
                w->bufs.next[x->tail] = bid;
            x->tail = bid;
            x->queued += (uint32_t)res;
            count_in(w, src, (uint32_t)res);
            touch(w, src);
            send_next(w, src);
            if (x->queued > w->o.queue_limit && !(x->flags & X_PAUSED)) {
                /* Backpressure: the peer is slower than the sender; stop
                 * reading until the queue drains, so memory stays bounded
                 * and the sender feels TCP flow control. */
                x->flags |= X_PAUSED;
                if (more)
                    conn_cancel_ops_of(w, src, OP_RECV);
            }
        }
    }
    if (src->state != CS_OPEN)
        return;
    if (res == -EAGAIN) {
        /* Nothing yet (a TLS handshake, a partial record); once the
         * handshake is done, what the peer sent meanwhile may go. */
        if (tp_ready(w, src)) {
            touch(w, src);            /* (the handshake's deadline gives way) */
            send_next(w, peer_of(w, src));
        }
        if (!more)
            recv_arm(w, src);
        return;
    }
    if (res == 0) {
        x->flags |= X_EOF;
        if (x->head == NIL)
            shutdown_peer(w, src);
        return;
    }
    if (res < 0) {
        switch (res) {
        case -ENOBUFS:
            conn_starve(w, src);     /* every buffer is taken: wait for one */
            return;
        case -ECANCELED:
            break;
        default:
            fail_error(w, src, res);
            return;
        }
    }
    if (!more)
        recv_arm(w, src);
}

static void splice_start(struct worker *w, struct conn *src);

static void on_send(struct worker *w, struct conn *dst, struct io_uring_cqe *cqe)
{
    struct conn *src = peer_of(w, dst);
    struct xfer *x = &src->x;
    int res = tp_sent(w, dst, cqe);
    if (dst->state != CS_OPEN)
        return;
    if (res < 0) {
        fail_error(w, dst, res);
        return;
    }
    count_out(w, dst, (uint32_t)res);
    touch(w, dst);
    if (src->flags & C_SOCKMAP)
        sm_forwarded(w, src, (uint32_t)res);
    x->off += (uint32_t)res;
    x->queued -= (uint32_t)res;
    if (x->off == w->bufs.len[x->head]) {
        uint32_t bid = x->head;
        x->head = w->bufs.next[bid];
        if (x->head == NIL)
            x->tail = NIL;
        x->off = 0;
        bufpool_put(w, bid);
    }
    if ((x->flags & X_PAUSED) && x->queued <= w->o.queue_limit / 2) {
        x->flags &= ~X_PAUSED;
        recv_arm(w, src);
    }
    if (x->head == NIL && x->pipe >= 0) {
        splice_start(w, src);     /* the bytes read before the session are out */
        return;
    }
    send_next(w, src);
}

void l4_recv_arm(struct worker *w, struct conn *c)
{
    recv_arm(w, c);
}

/* ---- splice by the worker: io_uring says when, splice() moves -------- *
 * io_uring runs every IORING_OP_SPLICE on an io-wq thread, and the hand-over
 * (wake a thread, switch to it, switch back) cost more than the splice
 * itself in our measurements (docs/l4.md). Here io_uring only polls; the
 * worker moves the bytes with non-blocking splice() calls, on its own CPU. */

static void pump(struct worker *w, struct conn *src)
{
    struct conn *dst = peer_of(w, src);
    struct xfer *x = &src->x;
    const struct pipepool *pp = &w->pipes;
    int pr = pp->fds[2 * x->pipe], pw = pp->fds[2 * x->pipe + 1];
    uint32_t moved = 0;
    bool want_in = false;
    if (src->state != CS_OPEN || dst->state != CS_OPEN)
        return;
    for (;;) {
        if (x->in_pipe < pp->size && !(x->flags & X_EOF) && !want_in) {
            ssize_t n = splice(src->fd, NULL, pw, NULL, pp->size - x->in_pipe,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                x->in_pipe += (uint32_t)n;
                count_in(w, src, (uint32_t)n);
            } else if (n == 0) {
                x->flags |= X_EOF;
            } else if (errno == EAGAIN) {
                want_in = true;
            } else {
                fail_error(w, src, -errno);
                return;
            }
        }
        if (x->in_pipe) {
            ssize_t m = splice(pr, NULL, dst->fd, NULL, x->in_pipe,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (m > 0) {
                x->in_pipe -= (uint32_t)m;
                moved += (uint32_t)m;
                count_out(w, dst, (uint32_t)m);
            } else if (m < 0 && errno != EAGAIN) {
                fail_error(w, dst, -errno);
                return;
            }
            if (x->in_pipe) {
                /* The peer's send buffer is full: wait until it drains. */
                touch(w, src);
                conn_poll_arm(w, dst, OP_POLL_OUT, POLLOUT);
                return;
            }
        }
        if (x->flags & X_EOF) {
            shutdown_peer(w, src);
            return;
        }
        if (want_in || moved >= SPLICE_PUMP_BUDGET)
            break;
    }
    if (moved)
        touch(w, src);
    /* Nothing more to read now, or this direction used its share of the
     * turn: the poll completes at once if data is already waiting. */
    conn_poll_arm(w, src, OP_POLL_IN, POLLIN | POLLRDHUP);
}

/* ---- splice on io-wq: IORING_OP_SPLICE (forwarding = "splice_iowq") ---- */

static void splice_chain(struct worker *w, struct conn *src)
{
    struct conn *dst = peer_of(w, src);
    unsigned len = w->pipes.size;
    /* Hard link: the splice-out runs right after the splice-in, in the same
     * io-wq worker, whatever the splice-in moved (even nothing). */
    struct io_uring_sqe *s = sqe_for(w, src, OP_SPLICE_IN);
    prep_splice_in(w, s, src->fd, src->x.pipe, len);
    s->flags |= IOSQE_IO_HARDLINK;
    s = sqe_for(w, dst, OP_SPLICE_OUT);
    prep_splice_out(w, s, src->x.pipe, dst->fd, len);
}

/* What the direction src -> dst does next, once nothing is in flight. */
static void splice_next(struct worker *w, struct conn *src)
{
    struct conn *dst = peer_of(w, src);
    struct xfer *x = &src->x;
    if (src->state != CS_OPEN || dst->state != CS_OPEN)
        return;
    if (x->in_pipe) {
        conn_poll_arm(w, dst, OP_POLL_OUT, POLLOUT);
    } else if (x->flags & X_EOF) {
        shutdown_peer(w, src);
    } else if (x->last_in == w->pipes.size) {
        splice_chain(w, src);   /* the pipe filled: more is likely waiting */
    } else {
        conn_poll_arm(w, src, OP_POLL_IN, POLLIN | POLLRDHUP);
    }
}

static void on_splice_in(struct worker *w, struct conn *src, struct io_uring_cqe *cqe)
{
    int res = cqe->res;
    struct xfer *x = &src->x;
    if (src->state != CS_OPEN)
        return;
    x->last_in = 0;
    if (res > 0) {
        x->in_pipe += (uint32_t)res;
        x->last_in = (uint32_t)res;
        count_in(w, src, (uint32_t)res);
        touch(w, src);
    } else if (res == 0) {
        x->flags |= X_EOF;
    } else if (res != -EAGAIN && res != -ECANCELED) {
        fail_error(w, src, res);
    }
    /* The linked splice-out's completion decides what comes next. */
}

static void on_splice_out(struct worker *w, struct conn *dst, struct io_uring_cqe *cqe)
{
    struct conn *src = peer_of(w, dst);
    int res = cqe->res;
    if (dst->state != CS_OPEN || src->state != CS_OPEN)
        return;
    if (res > 0) {
        src->x.in_pipe -= (uint32_t)res;
        count_out(w, dst, (uint32_t)res);
    } else if (res < 0 && res != -EAGAIN && res != -ECANCELED) {
        fail_error(w, dst, res);
        return;
    }
    if (src->ops & (1u << OP_SPLICE_IN))
        return;   /* cannot happen with a hard link; kept as a guard */
    splice_next(w, src);
}

static void on_poll(struct worker *w, struct conn *c, enum op op, struct io_uring_cqe *cqe)
{
    if (c->state != CS_OPEN || cqe->res == -ECANCELED)
        return;
    if (c->flags & C_SOCKMAP) {
        /* The end (or passed bytes before it): the receive reads what the
         * program passed, then the EOF or the error. */
        recv_arm(w, c);
        return;
    }
    if (worker_splices(c)) {
        /* POLL_IN: c's data is ready; POLL_OUT: c can take its peer's. */
        pump(w, op == OP_POLL_IN ? c : peer_of(w, c));
        return;
    }
    if (op == OP_POLL_IN) {
        splice_chain(w, c);
    } else {
        struct conn *src = peer_of(w, c);
        struct io_uring_sqe *s = sqe_for(w, c, OP_SPLICE_OUT);
        prep_splice_out(w, s, src->x.pipe, c->fd, src->x.in_pipe);
    }
}

/* ---- sockmap: the kernel moves the bytes (sockmap.c) ------------------ *
 * The worker keeps a receive armed on each socket, which completes with
 * the FIN, a reset, or bytes the program passed to it (forwarded like
 * buffered bytes, above); the client's timer checks idleness from the
 * sockets' byte counters and retries a FIN that waits for the kernel. */

static uint64_t sockmap_check_ms(const struct up_listener *l);
static void sockmap_watch(struct worker *w, struct conn *s, bool readable);

static bool sockmap_start(struct worker *w, struct conn *c, struct conn *u, bool wrote_u)
{
    if (listener_of(c)->forwarding != UP_FWD_SOCKMAP || !sm_on(w) || !tp_spliceable(c) ||
        !tp_spliceable(u) || c->x.head != NIL || (c->ops & (1u << OP_RECV)) ||
        sm_start(w, c, u, listener_of(c)->sm_send_buffer, wrote_u) < 0)
        return false;
    cnt(w, UP_C_SESSIONS_SOCKMAP, 1);
    const struct up_listener *l = listener_of(c);
    if (l->idle_timeout_ms)
        timer_set(w, c, w->now_ms + sockmap_check_ms(l));
    /* Each socket's peek completes in on_peek, which arms its watch. */
    sm_kick(w, c);
    sm_kick(w, u);
    return true;
}

/* The hand-over's peek (sm_kick): -EAGAIN when nothing waits for the
 * worker, else passed bytes, the EOF or an error to read. */
static void on_peek(struct worker *w, struct conn *s, struct io_uring_cqe *cqe)
{
    if (s->state != CS_OPEN || cqe->res == -ECANCELED)
        return;
    sockmap_watch(w, s, cqe->res != -EAGAIN);
}

/* What the worker waits for on a socket the kernel forwards: a receive
 * when there is something to read; else a poll for the end alone (FIN,
 * reset, error), which every skb's wake-up passes by (its events are
 * POLLIN only), so the worker is not woken per packet. */
static void sockmap_watch(struct worker *w, struct conn *s, bool readable)
{
    if (readable)
        recv_arm(w, s);
    else
        conn_poll_arm(w, s, OP_POLL_IN, POLLRDHUP);
}

/* How often a session's idle clock is read: a quarter of the timeout, so
 * an idle session is closed within 1.25 times it. */
static uint64_t sockmap_check_ms(const struct up_listener *l)
{
    uint64_t q = l->idle_timeout_ms / 4;
    return q < TICK_MS ? TICK_MS : q;
}

/* A FIN waits: look again at the next tick. */
static void sockmap_recheck(struct worker *w, struct conn *src)
{
    struct conn *c = is_client(src) ? src : peer_of(w, src);
    uint64_t at = w->now_ms + TICK_MS;
    if (!c->expires_ms || c->expires_ms > at)
        timer_set(w, c, at);
}

/* The client's deadline came: true while the session stays open. */
static bool sockmap_expired(struct worker *w, struct conn *c)
{
    struct conn *u = peer_of(w, c);
    for (int i = 0; i < 2; i++) {
        struct conn *src = i ? u : c;
        if ((src->x.flags & X_FLUSH) && c->state == CS_OPEN && u->state == CS_OPEN)
            shutdown_peer(w, src);
    }
    if (c->state != CS_OPEN)
        return true;              /* ended by the FINs just passed on */
    const struct up_listener *l = listener_of(c);
    uint64_t next = 0;
    if (l->idle_timeout_ms) {
        sm_moved(w, c);
        uint64_t last = sm_active_ms(w, c);
        if (w->now_ms - last >= l->idle_timeout_ms)
            return false;
        next = w->now_ms + sockmap_check_ms(l);
    }
    if ((c->x.flags | u->x.flags) & X_FLUSH && (!next || next > w->now_ms + TICK_MS))
        next = w->now_ms + TICK_MS;
    timer_set(w, c, next);
    return true;
}

/* ---- session lifecycle ----------------------------------------------- */

static void splice_start(struct worker *w, struct conn *src)
{
    if (worker_splices(src)) {
        pump(w, src);
    } else {
        src->x.last_in = w->pipes.size;   /* start with a splice, not a poll */
        splice_next(w, src);
    }
}

/* Bytes read before the session began (the ClientHello an SNI route was
 * chosen by) wait in src's queue: they go out first, and a spliced
 * direction starts splicing once they are out (on_send). */
static void start_direction(struct worker *w, struct conn *src, bool *spliced)
{
    uint32_t fwd = listener_of(src)->forwarding;
    if (fwd != UP_FWD_BUFFERED && w->pipes.count && tp_spliceable(src) &&
        tp_spliceable(peer_of(w, src))) {
        int p = pipe_get(w);
        if (p >= 0) {
            src->x.pipe = p;
            if (src->x.head != NIL)
                send_next(w, src);
            else
                splice_start(w, src);
            return;
        }
    }
    *spliced = false;
    if (src->x.head != NIL)
        send_next(w, src);
    recv_arm(w, src);
}

static void connect_next(struct worker *w, struct conn *u, uint32_t avoid);

static void on_connect(struct worker *w, struct conn *u, struct io_uring_cqe *cqe)
{
    struct conn *c = peer_of(w, u);
    int res = cqe->res;
    if (u->state != CS_CONNECTING)
        return;
    struct up_shm_wserver *st = srv_stats(w, u->cfg, u->server);
    if (res == 0) {
        hist_add(w->shm->hist_connect, w->now_us - u->t_us);
        balance_result(w, u->cfg, u->server, true);
        st->requests++;
        u->state = CS_OPEN;
        c->state = CS_OPEN;
        const struct up_cluster *cl = &u->cfg->clusters[c->cluster];
        /* The PROXY header first (upstream/proxy_send.c): the client's
         * address, received in a PROXY header of its own or its socket's. */
        if (cl->proxy_protocol &&
            proxy_send(w, u, cl->proxy_protocol, conn_addr(w, c)->addr, conn_addr(w, c)->len,
                       conn_addr(w, c)->port, c->fd) < 0) {
            abort_session(w, c, false, true);
            return;
        }
        if (cl->tls && cl->tls[w->o.index] && tp_tls_connect(w, u, cl->tls[w->o.index], NULL) < 0) {
            abort_session(w, c, true, true);
            return;
        }
        if (sockmap_start(w, c, u, cl->proxy_protocol != 0))
            return;
        bool spliced = true;
        start_direction(w, c, &spliced);
        start_direction(w, u, &spliced);
        cnt(w, spliced ? UP_C_SESSIONS_SPLICE : UP_C_SESSIONS_BUFFERED, 1);
        return;
    }
    dial_failed(w, u, u->cfg, res);
    const struct up_cluster *cl = &u->cfg->clusters[c->cluster];
    if (u->attempts < cl->max_attempts)
        connect_next(w, u, u->server);
    else {
        cnt(w, UP_C_ERR_NO_SERVER, 1);
        abort_session(w, c, false, false);
    }
}

/* balance = "hash" on a tcp cluster hashes the client's address (the
 * PROXY header's when one came): asked of the socket once per session,
 * only for such clusters, when the first server is picked. */
static void session_hash_key(struct worker *w, struct conn *c, const struct up_cluster *cl)
{
    if (cl->balance != UP_BALANCE_HASH || c->hash_key)
        return;
    struct conn_addr *a = conn_addr(w, c);
    if (!a->len)
        a->len = sock_addr(c->fd, true, a->addr, &a->port);
    c->hash_key = up_hash(a->addr, a->len) | 1;   /* never 0: 0 is "not yet" */
}

static void connect_next(struct worker *w, struct conn *u, uint32_t avoid)
{
    struct conn *c = peer_of(w, u);
    const struct up_config *cfg = u->cfg;
    uint32_t ci = c->cluster;
    session_hash_key(w, c, &cfg->clusters[ci]);
    int s = balance_pick(w, cfg, ci, avoid, c->hash_key);
    if (s < 0 && avoid != NIL)
        s = balance_pick(w, cfg, ci, NIL, c->hash_key);   /* only the failed one is left */
    if (s < 0) {
        cnt(w, UP_C_ERR_NO_SERVER, 1);
        abort_session(w, c, false, false);
        return;
    }
    if (dial(w, u, cfg, (uint32_t)s, ci) < 0) {
        abort_session(w, c, false, false);
        return;
    }
    dial_busy(w, u);              /* the load least_conn and p2c weigh */
}

void l4_start(struct worker *w, const struct up_listener *l, int fd)
{
    struct conn *c = conn_alloc(w);
    struct conn *u = c ? conn_alloc(w) : NULL;
    if (!u) {
        if (c)
            w->free_ids[w->nfree++] = (uint32_t)(c - w->conns);
        w->c[UP_C_REJECTED]++;
        close(fd);
        return;
    }
    const struct up_config *cfg = w->cfg;
    uint32_t cid = (uint32_t)(c - w->conns), uid = (uint32_t)(u - w->conns);
    c->kind = CK_L4_CLIENT;
    c->state = CS_CONNECTING;
    c->fd = fd;
    c->peer = uid;
    c->cfg = cfg;
    c->listener = (uint8_t)(l - cfg->listeners);
    c->flags |= C_SESSION;
    u->kind = CK_L4_UPSTREAM;
    u->state = CS_CONNECTING;
    u->peer = cid;
    u->cfg = cfg;
    u->listener = c->listener;
    conn_client_part(c, l->id, l->cluster);
    conn_addr(w, c)->len = 0;     /* unknown: a PROXY header (cluster's) asks the socket then */
    cfg_ref(w, cfg);
    w->clients++;
    w->c[UP_C_ACTIVE]++;
    if (l->proxy_protocol && sni_proxy_expected(w, c, l)) {
        c->flags |= C_PROXY_HDR;
        sni_start(w, c, l);       /* the PROXY header first, in the clear (then a ClientHello
                                     with routes; with tls, what follows it goes to TLS: l4_dial) */
        return;
    }
    if (l->nroutes) {
        sni_start(w, c, l);       /* the ClientHello's name picks the cluster */
        return;
    }
    uint32_t first_ms = l->idle_timeout_ms;
    if (l->tls && l->tls[w->o.index]) {
        if (tp_tls_accept(w, c, l->tls[w->o.index]) < 0) {
            w->c[UP_C_TLS_HANDSHAKE_ERRORS]++;
            abort_session(w, c, true, false);
            return;
        }
        first_ms = l->tls_handshake_timeout_ms;   /* traffic moves it to the idle timeout */
    }
    if (first_ms) {
        c->expires_ms = w->now_ms + first_ms;
        timer_arm(w, c);
    }
    connect_next(w, u, NIL);
}

/* sni.c chose c's cluster: the session's idle deadline replaces the
 * ClientHello's, and the upstream is dialed. A listener that terminates
 * TLS routes by the same ClientHello: the bytes read so far go to TLS,
 * which replays them to the library once the client's receive is armed
 * (on_connect), and the handshake's deadline comes first, as in l4_start. */
void l4_dial(struct worker *w, struct conn *c)
{
    const struct up_listener *l = listener_of(c);
    uint64_t first_ms = l->idle_timeout_ms;
    if (l->tls && l->tls[w->o.index]) {
        if (tp_tls_accept_held(w, c, l->tls[w->o.index], c->x.head, c->x.off) < 0) {
            w->c[UP_C_TLS_HANDSHAKE_ERRORS]++;
            abort_session(w, c, true, false);
            return;
        }
        c->x.head = c->x.tail = NIL;  /* TLS holds them now */
        c->x.off = c->x.queued = 0;
        first_ms = l->tls_handshake_timeout_ms;
    }
    if (first_ms)
        timer_set(w, c, w->now_ms + first_ms);
    else
        timer_cancel(w, c);
    connect_next(w, peer_of(w, c), NIL);
}

/* Both connections of a session have nothing outstanding: give back what
 * they hold and close their sockets. The session's reference on its
 * configuration table goes last: once it is dropped, the control plane may
 * free the table, so nothing here may read it after (dial_gone reads only
 * the worker's own per-server block). */
void l4_try_finish(struct worker *w, struct conn *c)
{
    struct conn *side[2];
    const struct up_config *held = NULL;
    if (!conn_pair_done(w, c, side))
        return;
    for (int i = 0; i < 2; i++) {
        struct conn *s = side[i];
        if (!s)
            continue;
        while (s->x.head != NIL) {
            uint32_t bid = s->x.head;
            s->x.head = w->bufs.next[bid];
            bufpool_put(w, bid);
        }
        s->x.tail = NIL;
        if (s->x.pipe >= 0) {
            pipe_put(w, s->x.pipe, s->x.in_pipe != 0);
            s->x.pipe = -1;
        }
        sm_end(w, s, s->kind != CK_L4_UPSTREAM);
        if (s->kind == CK_L4_UPSTREAM)
            dial_gone(w, s);
        if (s->flags & C_SESSION) {
            held = s->cfg;
            w->clients--;
            w->c[UP_C_ACTIVE]--;
            w->c[UP_C_CLOSED]++;
        }
        s->peer = NIL;
        tp_release(w, s);
        conn_submit_close(w, s);
    }
    if (held) {
        cfg_unref(w, held);   /* nothing reads held after */
    }
}

/* Carry on as a tunnel a pair that another protocol set up (an HTTP
 * upgrade): queued bytes first, then whatever arrives. */
void l4_adopt(struct worker *w, struct conn *c)
{
    struct conn *u = peer_of(w, c);
    c->state = u->state = CS_OPEN;
    cnt(w, UP_C_SESSIONS_BUFFERED, 1);
    send_next(w, c);
    send_next(w, u);
    recv_arm(w, c);
    recv_arm(w, u);
}

void l4_on_idle(struct worker *w, struct conn *c)
{
    if ((c->flags & C_SOCKMAP) && sockmap_expired(w, c))
        return;
    w->c[c->tp != TP_PLAIN && !tp_ready(w, c) ? UP_C_TLS_HANDSHAKE_TIMEOUTS : UP_C_ERR_IDLE_TIMEOUT]++;
    abort_session(w, c, false, false);
}

void l4_abort(struct worker *w, struct conn *c)
{
    abort_session(w, c, false, false);
}

void l4_on_cqe(struct worker *w, struct conn *c, enum op op, struct io_uring_cqe *cqe)
{
    switch (op) {
    case OP_CONNECT:
        on_connect(w, c, cqe);
        break;
    case OP_RECV:
        on_recv(w, c, cqe);
        break;
    case OP_SEND:
        on_send(w, c, cqe);
        break;
    case OP_SPLICE_IN:
        on_splice_in(w, c, cqe);
        break;
    case OP_SPLICE_OUT:
        on_splice_out(w, c, cqe);
        break;
    case OP_POLL_IN:
    case OP_POLL_OUT:
        on_poll(w, c, op, cqe);
        break;
    case OP_PEEK:
        on_peek(w, c, cqe);
        break;
    default:
        break;
    }
}
