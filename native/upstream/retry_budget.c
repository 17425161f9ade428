/*
 * A cluster's retry budget (docs/resilience.md), as Envoy's retry_budget:
 * retries under way at most max(min_retries, ratio x requests under way),
 * so a failing cluster is not sent twice its load by the retries its
 * failures cause. Counted per worker in the cluster's state line
 * (wstate.h: one writer, no lock): with N workers each keeps its own
 * share of the budget.
 */
#include "upstream/upstream.h"

void budget_enter(struct worker *w, const struct up_config *cfg, uint32_t ci)
{
    if (cfg->clusters[ci].retry_budget)
        cluster_state(w, cfg, ci)->active++;
}

bool budget_retry(struct worker *w, const struct up_config *cfg, uint32_t ci)
{
    const struct up_cluster *cl = &cfg->clusters[ci];
    if (!cl->retry_budget)
        return true;
    struct cluster_state *cs = cluster_state(w, cfg, ci);
    uint64_t cap = (uint64_t)cs->active * cl->budget_permille / 1000;
    if (cap < cl->budget_min)
        cap = cl->budget_min;
    if (cs->retrying >= cap) {
        w->c[UP_C_RETRY_BUDGET_EXHAUSTED]++;
        if (cl->nservers)
            w->srv[cfg->servers[cl->first_server].stat_slot].budget_exhausted++;
        return false;
    }
    cs->retrying++;
    return true;
}

void budget_leave(struct worker *w, const struct up_config *cfg, uint32_t ci, bool retried)
{
    if (!cfg->clusters[ci].retry_budget)
        return;
    struct cluster_state *cs = cluster_state(w, cfg, ci);
    cs->active--;
    if (retried)
        cs->retrying--;
}
