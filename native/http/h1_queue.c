/*
 * A connection's queue of received bytes: provided buffers linked through
 * the pool's per-buffer links, consumed from the front. A head that does
 * not fit the first buffer is gathered into one assembly buffer (copying is
 * the rare path), which then stands in the queue like any other buffer, so
 * iovecs, cursors and releases never need to know the difference.
 */
#include <string.h>
#include "http/h1.h"

void q_push(struct worker *w, struct conn *c, uint32_t bid, uint32_t len)
{
    struct bufpool *p = &w->bufs;
    struct xfer *x = &c->x;
    p->len[bid] = len;
    p->next[bid] = NIL;
    if (x->tail == NIL) {
        x->head = bid;
        x->off = 0;
    } else {
        p->next[x->tail] = bid;
    }
    x->tail = bid;
    x->queued += len;
}

/* Release every buffer before (bid, off); a buffer consumed to its end goes
 * too. bid NIL releases nothing. */
void q_release_to(struct worker *w, struct conn *c, uint32_t bid, uint32_t off)
{
    struct bufpool *p = &w->bufs;
    struct xfer *x = &c->x;
    if (bid == NIL || x->head == NIL)
        return;
    while (x->head != bid) {
        uint32_t h = x->head;
        x->queued -= p->len[h] - x->off;
        x->head = p->next[h];
        x->off = 0;
        bufpool_put(w, h);
        if (x->head == NIL) {          /* bid was not in the queue: a bug */
            x->tail = NIL;
            return;
        }
    }
    x->queued -= off - x->off;
    x->off = off;
    if (off == p->len[bid]) {
        x->head = p->next[bid];
        x->off = 0;
        if (x->head == NIL)
            x->tail = NIL;
        bufpool_put(w, bid);
    }
    /* Backpressure ends when the queue has drained to half its limit. */
    if ((x->flags & X_PAUSED) && x->queued <= h1_queue_limit(w, c) / 2) {
        x->flags &= ~X_PAUSED;
        h1_recv_arm(w, c);
    }
}

void q_release_all(struct worker *w, struct conn *c)
{
    struct xfer *x = &c->x;
    while (x->head != NIL) {
        uint32_t h = x->head;
        x->head = w->bufs.next[h];
        bufpool_put(w, h);
    }
    x->tail = NIL;
    x->off = 0;
    x->queued = 0;
}

/* The bytes at the front of the queue that are contiguous in memory. */
uint32_t q_contiguous(struct worker *w, struct conn *c, const uint8_t **p)
{
    struct xfer *x = &c->x;
    if (x->head == NIL)
        return 0;
    *p = buf_data(&w->bufs, x->head) + x->off;
    return w->bufs.len[x->head] - x->off;
}

/* Gather the front of the queue into one assembly buffer (or grow the one
 * at its front), releasing the provided buffers it came in: a head that
 * arrives in pieces holds one assembly buffer, never one provided buffer
 * per piece. Only up to limit bytes are gathered: a head is never longer,
 * and what may be queued behind it (pipelined requests, a body) stays in
 * its buffers; the parser reports a head that does not end within them.
 * 0 when done; -1 when no assembly buffer is free. */
int q_assemble(struct worker *w, struct conn *c, uint32_t limit)
{
    struct bufpool *p = &w->bufs;
    struct xfer *x = &c->x;
    if (x->head == NIL || (buf_is_assembly(p, x->head) && x->head == x->tail))
        return 0;
    uint32_t cap = limit < p->hsize ? limit : p->hsize;
    uint32_t a, h, off, fill;
    uint8_t *dst;
    if (buf_is_assembly(p, x->head)) {
        a = x->head;
        dst = buf_data(p, a);
        fill = p->len[a] - x->off;
        memmove(dst, dst + x->off, fill);
        h = p->next[a];
        off = 0;
    } else {
        a = hbuf_get(w);
        if (a == NIL)
            return -1;
        dst = buf_data(p, a);
        fill = 0;
        h = x->head;
        off = x->off;
    }
    while (h != NIL && fill < cap) {
        uint32_t n = p->len[h] - off, next = p->next[h];
        if (n > cap - fill) {
            /* Take what fits; the rest of this buffer moves to its start
             * and stays queued (a queued buffer other than the first is
             * read from offset 0). */
            uint32_t take = cap - fill;
            uint8_t *src = buf_data(p, h);
            memcpy(dst + fill, src + off, take);
            fill += take;
            memmove(src, src + off + take, n - take);
            p->len[h] = n - take;
            break;
        }
        memcpy(dst + fill, buf_data(p, h) + off, n);
        fill += n;
        bufpool_put(w, h);
        h = next;
        off = 0;
    }
    p->len[a] = fill;
    p->next[a] = h;
    x->head = a;
    if (h == NIL)
        x->tail = a;
    x->off = 0;
    return 0;            /* x->queued is unchanged: the same bytes, moved */
}
