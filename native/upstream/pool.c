/*
 * The upstream connection pool (DESIGN.md: the founding contract).
 *
 *   pool_get(slot)  -> an idle connection to that server, or NULL
 *   pool_put(conn)  -> keep it for the next request, or close it
 *
 * Both are synchronous and constant time and never wait: opening a new
 * connection is a separate state of the upstream connection (H_DIAL), not
 * something the pool does. Phase 1 is one pool per worker, so nothing is
 * shared and nothing is locked; a shared second tier could sit behind the
 * same two calls. Idle connections keep a receive armed, so an upstream
 * that closes one is noticed (and the connection dropped) before it could
 * be handed out.
 */
#include "upstream/upstream.h"

struct conn *pool_get(struct worker *w, uint32_t slot)
{
    uint32_t id = w->pool_head[slot];
    if (id == NIL)
        return NULL;
    struct conn *u = &w->conns[id];
    pool_remove(w, u);
    return u;
}

void pool_remove(struct worker *w, struct conn *u)
{
    if (!(u->flags & C_POOLED))
        return;
    uint32_t id = (uint32_t)(u - w->conns);
    if (u->pprev != NIL)
        w->conns[u->pprev].pnext = u->pnext;
    else if (w->pool_head[u->slot] == id)
        w->pool_head[u->slot] = u->pnext;
    if (u->pnext != NIL)
        w->conns[u->pnext].pprev = u->pprev;
    u->pnext = u->pprev = NIL;
    u->flags &= ~C_POOLED;
    w->pool_count[u->slot]--;
    w->c[UP_C_POOL_IDLE]--;
    w->srv[u->slot].idle--;
    timer_cancel(w, u);
}

/* Most recently used first: the warmest connection goes out next, and the
 * coldest ones reach their idle timeout and go. */
bool pool_put(struct worker *w, struct conn *u, uint32_t max_idle, uint32_t idle_timeout_ms)
{
    if (w->pool_count[u->slot] >= max_idle || w->stopping)
        return false;
    uint32_t id = (uint32_t)(u - w->conns);
    u->pprev = NIL;
    u->pnext = w->pool_head[u->slot];
    if (u->pnext != NIL)
        w->conns[u->pnext].pprev = id;
    w->pool_head[u->slot] = id;
    u->flags |= C_POOLED;
    w->pool_count[u->slot]++;
    w->c[UP_C_POOL_IDLE]++;
    w->srv[u->slot].idle++;
    u->expires_ms = idle_timeout_ms ? w->now_ms + idle_timeout_ms : 0;
    timer_arm(w, u);
    return true;
}
