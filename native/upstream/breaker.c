/*
 * A cluster's circuit breaker (docs/resilience.md), as Traefik's
 * CircuitBreaker and Envoy's outlier detection: when the share of failed
 * requests (5xx, connect failures, timeouts), or of requests slower than a
 * latency, passes a threshold over a window with enough requests in it,
 * the breaker opens and requests fail fast for a while; then a few probe
 * requests go through (half-open): all succeed and it closes, one fails
 * and it opens again.
 *
 * Each worker keeps its own breaker per cluster (struct cluster_state in
 * wstate.h: one cache line it alone writes, kept across reloads, so an
 * open breaker stays open through a reload): no lock, no shared counter.
 * With N workers each sees about 1/N of the traffic and decides on its
 * own share; the shares agree when the load is spread evenly, as
 * SO_REUSEPORT spreads it.
 *
 * The window is two halves: the counts are those of the current half and
 * the one before, so a share is always taken over the last half window to
 * the last whole one, at the cost of two counters per figure.
 */
#include "upstream/upstream.h"

/* The cluster's own counters live in the row of its first server. */
static inline struct up_shm_wserver *crow(struct worker *w, const struct up_config *cfg,
                                          const struct up_cluster *cl)
{
    return &w->srv[cfg->servers[cl->first_server].stat_slot];
}

static void set_state(struct worker *w, const struct up_config *cfg, const struct up_cluster *cl,
                      struct cluster_state *cs, uint32_t state)
{
    cs->breaker = state;
    cs->probes = cs->probe_ok = 0;
    cs->req[0] = cs->req[1] = cs->err[0] = cs->err[1] = cs->slow[0] = cs->slow[1] = 0;
    cs->until_ms = state == UP_BRK_OPEN ? w->now_ms + cl->brk_open_ms : 0;
    if (cl->nservers)
        crow(w, cfg, cl)->breaker_state = state;
    if (state == UP_BRK_OPEN) {
        w->c[UP_C_BREAKER_OPENS]++;
        if (cl->nservers)
            crow(w, cfg, cl)->breaker_opens++;
    }
}

enum brk_ticket breaker_admit(struct worker *w, const struct up_config *cfg, uint32_t ci)
{
    const struct up_cluster *cl = &cfg->clusters[ci];
    if (!cl->brk_window_ms)
        return BRK_NONE;
    struct cluster_state *cs = cluster_state(w, cfg, ci);
    /* The gauge follows the state: after a reload that moved the cluster's
     * counters to another first server's row, or a slot newly claimed. */
    if (cl->nservers && __builtin_expect(crow(w, cfg, cl)->breaker_state != cs->breaker, 0))
        crow(w, cfg, cl)->breaker_state = cs->breaker;
    switch (cs->breaker) {
    case UP_BRK_OPEN:
        if (w->now_ms < cs->until_ms)
            break;
        set_state(w, cfg, cl, cs, UP_BRK_HALF);
        __attribute__((fallthrough));   /* the first probe */
    case UP_BRK_HALF:
        if (cs->probes >= cl->brk_probes)
            break;
        cs->probes++;
        return BRK_PROBE;
    default:
        return BRK_COUNTED;
    }
    w->c[UP_C_BREAKER_FAST_FAILS]++;
    if (cl->nservers)
        crow(w, cfg, cl)->fast_fails++;
    return BRK_REFUSED;
}

/* Move the half windows on to now. */
static void roll(struct worker *w, const struct up_cluster *cl, struct cluster_state *cs)
{
    if (w->now_ms < cs->until_ms)
        return;
    uint32_t half = cl->brk_window_ms / 2 ? cl->brk_window_ms / 2 : 1;
    bool adjacent = cs->until_ms && w->now_ms < cs->until_ms + half;
    cs->req[1] = adjacent ? cs->req[0] : 0;
    cs->err[1] = adjacent ? cs->err[0] : 0;
    cs->slow[1] = adjacent ? cs->slow[0] : 0;
    cs->req[0] = cs->err[0] = cs->slow[0] = 0;
    cs->until_ms = w->now_ms + half;
}

void breaker_report(struct worker *w, const struct up_config *cfg, uint32_t ci,
                    enum brk_ticket ticket, bool ok, uint64_t latency_us)
{
    const struct up_cluster *cl = &cfg->clusters[ci];
    struct cluster_state *cs = cluster_state(w, cfg, ci);
    bool slow = cl->brk_latency_ms && latency_us >= (uint64_t)cl->brk_latency_ms * 1000;
    switch (ticket) {
    case BRK_PROBE:
        if (cs->breaker != UP_BRK_HALF)
            return;                   /* another probe decided already */
        if (!ok || slow)
            set_state(w, cfg, cl, cs, UP_BRK_OPEN);
        else if (++cs->probe_ok >= cl->brk_probes)
            set_state(w, cfg, cl, cs, UP_BRK_CLOSED);
        return;
    case BRK_COUNTED:
        if (cs->breaker != UP_BRK_CLOSED)
            return;                   /* admitted before the breaker opened */
        roll(w, cl, cs);
        cs->req[0]++;
        cs->err[0] += !ok;
        cs->slow[0] += slow;
        uint64_t n = (uint64_t)cs->req[0] + cs->req[1];
        if (n < cl->brk_min_requests)
            return;
        uint64_t errs = (uint64_t)cs->err[0] + cs->err[1];
        uint64_t slows = (uint64_t)cs->slow[0] + cs->slow[1];
        if ((cl->brk_error_permille && errs * 1000 >= cl->brk_error_permille * n) ||
            (cl->brk_latency_ms && slows * 1000 > cl->brk_slow_permille * n))
            set_state(w, cfg, cl, cs, UP_BRK_OPEN);
        return;
    default:
        return;
    }
}

void breaker_forget(struct worker *w, const struct up_config *cfg, uint32_t ci,
                    enum brk_ticket ticket)
{
    struct cluster_state *cs = cluster_state(w, cfg, ci);
    /* A probe that will never report (its client left) gives its place
     * back, or the breaker would stay half-open with no probe to decide. */
    if (ticket == BRK_PROBE && cs->breaker == UP_BRK_HALF && cs->probes > cs->probe_ok)
        cs->probes--;
}
