/*
 * The connection slab and the end of a connection's life. A connection is
 * freed only when no SQE refers to it any more, because its index lives on
 * in the user_data of every outstanding operation: closing means cancel
 * what is outstanding, wait for the last completion, then close the fd.
 */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include "core/worker.h"
#include "core/fixed.h"

struct conn *conn_alloc(struct worker *w)
{
    if (!w->nfree)
        return NULL;
    struct conn *c = &w->conns[w->free_ids[--w->nfree]];
    *c = (struct conn){
        .kind = CK_FREE,
        .fd = -1,
        .peer = NIL,
        .server = NIL,
        .starved_next = NIL,
        .tnext = NIL,
        .tprev = NIL,
        .x = { .head = NIL, .tail = NIL, .pipe = -1 },
        .txn = NIL,
        .slot = NIL,
        .pnext = NIL,
        .pprev = NIL,
    };
    return c;
}

static void conn_release(struct worker *w, struct conn *c)
{
    c->kind = CK_FREE;
    c->state = CS_CLOSED;
    c->flags &= (uint16_t)~C_HANDED_UP;    /* a stale hand-up entry is skipped */
    w->free_ids[w->nfree++] = (uint32_t)(c - w->conns);
}

void conn_poll_arm(struct worker *w, struct conn *c, enum op op, unsigned events)
{
    if (c->ops & (1u << op))
        return;
    int fd = conn_file(w, c);
    struct io_uring_sqe *s = sqe_for(w, c, op);
    io_uring_prep_poll_add(s, fd, events);
    conn_file_flags(c, s);
    count_op(w, s);
}

/* A receive found no free buffer: c waits on the starved list until
 * buffers come back (resume_starved re-arms it). */
void conn_starve(struct worker *w, struct conn *c)
{
    w->c[UP_C_ERR_NOBUFS]++;
    bufpool_short(w);
    c->x.flags |= X_STARVED;
    c->starved_next = w->starved_head;
    w->starved_head = (uint32_t)(c - w->conns);
}

static void starved_unlink(struct worker *w, struct conn *c)
{
    if (!(c->x.flags & X_STARVED))
        return;
    uint32_t id = (uint32_t)(c - w->conns), *pp = &w->starved_head;
    while (*pp != NIL && *pp != id)
        pp = &w->conns[*pp].starved_next;
    if (*pp == id)
        *pp = c->starved_next;
    c->x.flags &= ~X_STARVED;
}

/* Both connections of a pair (a TCP session, an HTTP transaction) are
 * finalised together, because each may have a send in flight reading the
 * other's buffers. Returns false while the peer still has something
 * outstanding; otherwise fills side[] with c and its peer (or NULL), each
 * already off the starved list. */
bool conn_pair_done(struct worker *w, struct conn *c, struct conn *side[2])
{
    struct conn *p = c->peer == NIL ? NULL : &w->conns[c->peer];
    if (p && (p->state != CS_CLOSING || p->inflight))
        return false;
    side[0] = c;
    side[1] = p;
    starved_unlink(w, c);
    if (p)
        starved_unlink(w, p);
    return true;
}

void conn_cancel_ops(struct worker *w, struct conn *c)
{
    if (!c->ops)
        return;                       /* (an HTTP/2 stream's slot, closed per request, has none) */
    uint32_t id = (uint32_t)(c - w->conns);
    for (unsigned op = OP_CONNECT; op < OP__COUNT; op++) {
        if (!(c->ops & (1u << op)) || op == OP_CANCEL || op == OP_CLOSE ||
            op == OP_LINK_TIMEOUT)
            continue;
        struct io_uring_sqe *s = sqe_get(w);
        io_uring_prep_cancel64(s, UD(op, id), 0);
        io_uring_sqe_set_data64(s, UD(OP_CANCEL, id));
        count_op(w, s);
        c->inflight++;
    }
}

void conn_cancel_ops_of(struct worker *w, struct conn *c, enum op op)
{
    struct io_uring_sqe *s = sqe_get(w);
    uint32_t id = (uint32_t)(c - w->conns);
    io_uring_prep_cancel64(s, UD(op, id), 0);
    io_uring_sqe_set_data64(s, UD(OP_CANCEL, id));
    count_op(w, s);
    c->inflight++;
}

/* Begin closing: cancel what is outstanding. The fd is closed (with an RST
 * if asked) once the last completion has come in conn_op_done(). */
void conn_close(struct worker *w, struct conn *c, bool reset)
{
    if (c->state >= CS_CLOSING)
        return;
    if (reset)
        c->flags |= C_RESET;
    c->state = CS_CLOSING;
    timer_cancel(w, c);
    conn_cancel_ops(w, c);
    conn_op_done(w, c, OP_NONE, false);
}

void conn_submit_close(struct worker *w, struct conn *c)
{
    if (c->fd < 0) {
        conn_release(w, c);
        return;
    }
    if (c->flags & C_RESET) {
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    c->state = CS_CLOSED;
    conn_unfix(w, c);
    struct io_uring_sqe *s = sqe_for(w, c, OP_CLOSE);
    io_uring_prep_close(s, c->fd);
    count_op(w, s);
    c->fd = -1;
}

/* Work for the connection's protocol, which the core does not know: the
 * loop drains these after every completion (conn_next_handed_up) and
 * switches on the kind there, the one place that names every protocol. A
 * connection is on the stack at most once while it has a reason set. */
void conn_hand_up(struct worker *w, struct conn *c, uint16_t why)
{
    if (!(c->flags & C_HANDED_UP)) {
        if (w->nhandup == w->handup_cap) {
            fprintf(stderr, "uproxy: worker %u: hand-up stack full\n", w->o.index);
            abort();
        }
        w->handup[w->nhandup++] = (uint32_t)(c - w->conns);
    }
    c->flags |= why;
}

struct conn *conn_next_handed_up(struct worker *w, uint16_t *why)
{
    while (w->nhandup) {
        struct conn *c = &w->conns[w->handup[--w->nhandup]];
        *why = c->flags & C_HANDED_UP;
        c->flags &= (uint16_t)~C_HANDED_UP;
        if (*why && c->kind != CK_FREE)
            return c;
    }
    return NULL;
}

/* Called after each final completion of c (and by conn_close). When a
 * closing connection has nothing outstanding, its protocol finishes it
 * (handed up to the loop); when its close completes, its slot goes back to
 * the slab. */
void conn_op_done(struct worker *w, struct conn *c, enum op op, bool more)
{
    (void)more;
    if (op == OP_CLOSE) {
        conn_release(w, c);
        return;
    }
    if (c->state != CS_CLOSING || c->inflight)
        return;
    if (c->kind == CK_FREE)
        conn_submit_close(w, c);
    else
        conn_hand_up(w, c, C_UP_FINISH);
}

/* A client connection's listener in the worker's current table (HTTP
 * clients hold no table of their own). c->listener is its index there,
 * checked against the stable id: it holds until a reload reorders the
 * listeners, and the one scan after such a reload moves it, so a request
 * costs one comparison. NULL: the listener left the configuration. */
const struct up_listener *conn_listener(struct worker *w, struct conn *c)
{
    const struct up_config *cfg = w->cfg;
    if (!cfg)
        return NULL;
    if (c->listener < cfg->nlisteners && cfg->listeners[c->listener].id == c->listener_id)
        return &cfg->listeners[c->listener];
    for (uint32_t i = 0; i < cfg->nlisteners; i++)
        if (cfg->listeners[i].id == c->listener_id) {
            c->listener = (uint8_t)i;
            return &cfg->listeners[i];
        }
    return NULL;
}

uint8_t sock_addr(int fd, bool peer, uint8_t addr[16], uint16_t *port)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if ((peer ? getpeername(fd, (struct sockaddr *)&ss, &sl)
              : getsockname(fd, (struct sockaddr *)&ss, &sl)) != 0)
        return 0;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        memcpy(addr, &a->sin_addr, 4);
        *port = ntohs(a->sin_port);
        return 4;
    }
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        memcpy(addr, &a->sin6_addr, 16);
        *port = ntohs(a->sin6_port);
        return 16;
    }
    return 0;
}
