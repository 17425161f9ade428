/*
 * A transaction's side of its cluster's circuit breaker and retry budget
 * (upstream/breaker.c, upstream/retry_budget.c; docs/resilience.md): the
 * breaker is asked once, before the first server is chosen, and told the
 * outcome once; the budget brackets the request and is asked before each
 * retry. A cluster with neither pays two loads and two branches.
 */
#include "http/h1.h"

bool res_admit(struct worker *w, struct txn *t)
{
    t->res |= RES_ADMITTED;
    const struct up_config *cfg = t->cfg;
    const struct up_cluster *cl = &cfg->clusters[t->cluster];
    if (__builtin_expect(cl->retry_budget != 0, 0)) {
        budget_enter(w, cfg, t->cluster);
        t->res |= RES_ACTIVE;
    }
    if (__builtin_expect(!cl->brk_window_ms, 1))
        return true;
    enum brk_ticket k = breaker_admit(w, cfg, t->cluster);
    if (k != BRK_REFUSED) {
        t->brk = (uint8_t)k;
        return true;
    }
    /* Fail fast: the answer (with its Retry-After) was written at load. */
    struct conn *c = &w->conns[t->client];
    t->flags |= TF_CLIENT_CLOSE;
    log_end(w, t, 503);
    h1_client_reply_text(w, c, 503, cfg->strings + cl->brk_reply_off, cl->brk_reply_len);
    return false;
}

void res_result(struct worker *w, struct txn *t, uint16_t status)
{
    if (!t->brk)
        return;
    enum brk_ticket k = (enum brk_ticket)t->brk;
    t->brk = BRK_NONE;
    uint64_t latency = t->t_sent ? w->now_us - t->t_sent : 0;
    breaker_report(w, t->cfg, t->cluster, k, status < 500, latency);
}

bool res_retry(struct worker *w, struct txn *t)
{
    if (!(t->res & RES_ACTIVE) || (t->res & RES_RETRIED))
        return true;                  /* no budget, or this request holds a retry already */
    if (!budget_retry(w, t->cfg, t->cluster))
        return false;
    t->res |= RES_RETRIED;
    return true;
}

void res_end(struct worker *w, struct txn *t)
{
    if (t->brk) {
        breaker_forget(w, t->cfg, t->cluster, (enum brk_ticket)t->brk);
        t->brk = BRK_NONE;
    }
    if (t->res & RES_ACTIVE)
        budget_leave(w, t->cfg, t->cluster, t->res & RES_RETRIED);
    t->res = 0;
}
