/*
 * The timing wheel (core/timer.h). It hands expired connections back to
 * the loop one at a time (wheel_expired) instead of calling anyone.
 */
#include "core/worker.h"

#define LATER WHEEL_SLOTS

void wheel_init(struct worker *w)
{
    for (unsigned i = 0; i <= WHEEL_SLOTS; i++)
        w->wheel.slot[i] = NIL;
    w->wheel.done_tick = w->now_ms / TICK_MS;
}

static void unlink_node(struct worker *w, struct conn *c)
{
    if (c->tprev != NIL)
        w->conns[c->tprev].tnext = c->tnext;
    else
        w->wheel.slot[c->tslot] = c->tnext;
    if (c->tnext != NIL)
        w->conns[c->tnext].tprev = c->tprev;
    c->flags &= ~C_IN_WHEEL;
}

static void push(struct worker *w, struct conn *c, unsigned slot)
{
    uint32_t *head = &w->wheel.slot[slot];
    uint32_t id = (uint32_t)(c - w->conns);
    c->tslot = (uint16_t)slot;
    c->tprev = NIL;
    c->tnext = *head;
    if (*head != NIL)
        w->conns[*head].tprev = id;
    *head = id;
    c->flags |= C_IN_WHEEL;
}

static void link_node(struct worker *w, struct conn *c)
{
    uint64_t tick = c->expires_ms / TICK_MS;
    if (tick <= w->wheel.done_tick)
        tick = w->wheel.done_tick + 1;
    push(w, c, (unsigned)(tick % WHEEL_SLOTS));
}

void timer_arm(struct worker *w, struct conn *c)
{
    if (c->flags & C_IN_WHEEL)
        unlink_node(w, c);
    if (c->expires_ms)
        link_node(w, c);
}

void timer_set(struct worker *w, struct conn *c, uint64_t expires_ms)
{
    if (expires_ms && (c->flags & C_IN_WHEEL) && expires_ms >= c->expires_ms) {
        c->expires_ms = expires_ms;
        return;
    }
    c->expires_ms = expires_ms;
    timer_arm(w, c);
}

void timer_cancel(struct worker *w, struct conn *c)
{
    c->expires_ms = 0;
    if (c->flags & C_IN_WHEEL)
        unlink_node(w, c);
}

/* Every list stays well formed while the loop handles an expired
 * connection, because that may cancel or re-arm any other connection's
 * timer (a session's peer), or this one's. Nodes whose deadline moved later
 * park on the LATER list until their slot is done, so a deadline a whole
 * lap away cannot land back in the slot being emptied. */
struct conn *wheel_expired(struct worker *w)
{
    uint64_t now_tick = w->now_ms / TICK_MS;
    if (!w->wheel.running && now_tick - w->wheel.done_tick > WHEEL_SLOTS)
        w->wheel.done_tick = now_tick - WHEEL_SLOTS;
    for (;;) {
        if (w->wheel.running) {
            unsigned slot = (unsigned)(w->wheel.done_tick % WHEEL_SLOTS);
            uint32_t id;
            while ((id = w->wheel.slot[slot]) != NIL) {
                struct conn *c = &w->conns[id];
                unlink_node(w, c);
                if (!c->expires_ms)
                    continue;
                if (c->expires_ms <= w->now_ms)
                    return c;
                push(w, c, LATER);
            }
            while ((id = w->wheel.slot[LATER]) != NIL) {
                struct conn *c = &w->conns[id];
                unlink_node(w, c);
                link_node(w, c);
            }
            w->wheel.running = 0;
        }
        if (w->wheel.done_tick >= now_tick)
            return NULL;
        w->wheel.done_tick++;
        w->wheel.running = 1;
    }
}
