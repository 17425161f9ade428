/*
 * Backpressure for HTTP/2 clients: a new stream waits rather than being
 * refused. Everything a client sends goes through its connection's
 * receive queue to the codec here (h2_feed), and a scan of the frame
 * headers (h2_scan.c, pure) lets through only as many HEADERS frames that
 * open a stream as the worker has room for: a connection slot for the
 * stream and one for its upstream, a transaction, and buffers for it
 * that leave the streams already under way theirs (h2_room). Past that,
 * the bytes stay in the queue from that frame on, the connection stops
 * receiving (X_HELD; a multishot receive is cancelled) and waits on the
 * worker's held list, oldest first; the loop calls h2_resume_one() once
 * per turn for each, and the codec gets the rest when room has come back.
 * So a browser or h2load opening more streams than the worker has
 * buffers for is slowed down, and REFUSED_STREAM is left for streams past
 * MAX_CONCURRENT_STREAMS and for a draining proxy.
 *
 * A held connection's later frames wait too (TCP keeps them in order),
 * its WINDOW_UPDATEs among them: a stream whose response needs one would
 * never end, and its buffers never come back, if every buffer were held
 * that way. So a hold lasts H2_HOLD_MS at most: then the queue goes to the
 * codec whatever the room, and a stream with no slot is refused as it
 * was before (counted in h2_refused).
 */
#include <string.h>
#include "http2/h2.h"
#include "http/h1.h"

/* ---- the worker's room ------------------------------------------------- */

/* Streams that may open now. Each writes its request head into a buffer
 * taken at once (off the pool's stack, or an assembly buffer: the ones in
 * the kernel's hands cannot be taken; a complete head then moves to a
 * small buffer and this one comes back, h2_conn.c's keep_head), and may
 * need another for its response later: of the free buffers, a sixteenth
 * of the pool (for TLS and for receiving) and one for each stream under
 * way are kept, the rest shared out two per new stream. Half the stack's
 * reserve stays for TLS. */
uint32_t h2_room(struct worker *w)
{
    const struct h2_worker *hw = w->h2;
    const struct bufpool *bp = &w->bufs;
    uint32_t keep = bp->count / 16 + hw->live;
    uint32_t b = bp->free > keep ? (bp->free - keep) / 2 : 0;
    uint32_t stack = bp->nstack > bp->reserve / 2 ? bp->nstack - bp->reserve / 2 : 0;
    uint32_t take = stack + bp->nhfree;
    uint32_t c = w->nfree > 8 ? (w->nfree - 8) / 2 : 0;
    uint32_t r = b < take ? b : take;
    r = r < c ? r : c;
    return r < w->ntxn_free ? r : w->ntxn_free;
}

/* ---- the held list ----------------------------------------------------- */

static void hold(struct worker *w, struct conn *c, struct h2_slot *s)
{
    struct h2_worker *hw = w->h2;
    c->x.flags |= X_HELD;
    if (c->ops & (1u << OP_RECV))
        conn_cancel_ops_of(w, c, OP_RECV);    /* what still comes is queued */
    if (s->flags & CF_HELD)
        return;
    s->flags |= CF_HELD;
    s->held_ms = w->now_ms;
    s->hnext = NIL;
    if (hw->held_tail != NIL)
        hw->slots[hw->held_tail].hnext = s->self;
    else
        hw->held_head = s->self;
    hw->held_tail = s->self;
    hw->nheld++;
    w->c[UP_C_H2_HELD]++;
}

/* c leaves the held list (it resumes, or it closes). */
void h2_unhold(struct worker *w, struct conn *c)
{
    struct h2_worker *hw = w->h2;
    struct h2_slot *s = h2_slot_of(w, c);
    c->x.flags &= ~X_HELD;
    if (!(s->flags & CF_HELD))
        return;
    s->flags &= ~CF_HELD;
    uint32_t prev = NIL;
    for (uint32_t i = hw->held_head; i != NIL; prev = i, i = hw->slots[i].hnext) {
        if (i != s->self)
            continue;
        if (prev == NIL)
            hw->held_head = s->hnext;
        else
            hw->slots[prev].hnext = s->hnext;
        if (hw->held_tail == i)
            hw->held_tail = prev;
        hw->nheld--;
        break;
    }
    s->hnext = NIL;
}

/* ---- feeding the codec ------------------------------------------------- */

/* The streams c may open now: the worker's room, once c has its send
 * buffer (the responses of its streams go out through it; without it they
 * would wait for an event of c, and a held c has none). */
static uint32_t budget_of(struct worker *w, struct h2_slot *s, bool force)
{
    if (force || w->stopping || (s->flags & CF_DRAIN))
        return UINT32_MAX;
    uint32_t r = h2_room(w);
    if (r && s->out_bid == NIL) {
        if (!h2_out_buf(w, s))
            return 0;
        r = h2_room(w);
    }
    return r;
}

/* The queue's bytes to the codec, as far as the worker has room for the
 * streams they open; the rest waits (the connection is held). A draining
 * connection, or one held past H2_HOLD_MS (force), is fed all of it: the
 * streams that cannot be had are refused. */
void h2_feed(struct worker *w, struct conn *c, bool force)
{
    struct h2_slot *s = h2_slot_of(w, c);
    struct bufpool *bp = &w->bufs;
    while (c->x.head != NIL && c->state == CS_OPEN && s->session && !(s->flags & CF_CLOSE)) {
        uint32_t b = c->x.head;
        const uint8_t *p = buf_data(bp, b) + c->x.off;
        size_t n = bp->len[b] - c->x.off;
        uint32_t budget = budget_of(w, s, force);
        size_t k = h2_scan(&s->scan, p, n, &budget);
        if (k && h2c_recv(s, p, k) < 0)
            s->flags |= CF_CLOSE;     /* the codec queued its GOAWAY */
        if (c->state != CS_OPEN)
            return;
        q_release_to(w, c, b, c->x.off + (uint32_t)k);
        if (k < n && !(s->flags & CF_CLOSE) && !budget_of(w, s, force)) {
            hold(w, c, s);
            return;
        }
    }
    if (s->flags & CF_CLOSE)
        q_release_all(w, c);
}

/* Once per loop turn and held connection, oldest first: the one at the
 * front goes on when there is room (or its hold is over). False when it
 * does not: the others, held later, wait too. */
bool h2_resume_one(struct worker *w)
{
    struct h2_worker *hw = w->h2;
    if (!hw || hw->held_head == NIL)
        return false;
    struct conn *c = &w->conns[hw->held_head];
    struct h2_slot *s = h2_slot_of(w, c);
    bool force = w->now_ms - s->held_ms >= H2_HOLD_MS || w->stopping ||
                 (s->flags & (CF_DRAIN | CF_CLOSE)) || c->state != CS_OPEN;
    if (!force && !budget_of(w, s, false))
        return false;
    h2_unhold(w, c);
    if (c->state != CS_OPEN)
        return true;
    h2_feed(w, c, force);
    if (c->state != CS_OPEN)
        return true;
    h2_flush(w, c);
    if (c->state == CS_OPEN && !(c->x.flags & X_HELD))
        h1_recv_arm(w, c);
    return true;
}

uint32_t h2_held(struct worker *w)
{
    const struct h2_worker *hw = w->h2;
    return hw ? hw->nheld : 0;
}
