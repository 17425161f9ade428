/*
 * Choosing an upstream server. Each worker keeps its own balancing state:
 * cursors, weights and ejections in its own blocks (wstate.h: one cache
 * line per server or cluster, kept across reloads), load (work in flight
 * per server) in its own block of the statistics segment. No worker
 * writes what another reads. The algorithm is a switch on the cluster's
 * setting, not a function pointer.
 */
#include "upstream/upstream.h"

/* Active health: the control plane's byte for the server's stat slot. */
static inline bool health_up(const struct worker *w, const struct up_config *cfg, uint32_t s)
{
    return __atomic_load_n(&w->ctl->server_health[cfg->servers[s].stat_slot], __ATOMIC_RELAXED);
}

static inline uint64_t load(struct worker *w, const struct up_config *cfg, uint32_t s)
{
    return srv_stats(w, cfg, s)->in_flight;
}

/* A cluster's max_in_flight, per server over all workers: each worker's
 * row of the statistics segment is its own, the sum is read without a
 * lock (relaxed loads), so it may be off by the few requests other
 * workers start in the same instant. */
static uint64_t load_all(struct worker *w, const struct up_config *cfg, uint32_t s)
{
    uint32_t slot = cfg->servers[s].stat_slot;
    const struct up_shm_wserver *row0 = w->srv - (size_t)w->o.index * UP_MAX_SERVERS;
    uint64_t sum = 0;
    for (uint32_t i = 0; i < cfg->nworkers; i++)
        sum += __atomic_load_n(&row0[(size_t)i * UP_MAX_SERVERS + slot].in_flight,
                               __ATOMIC_RELAXED);
    return sum;
}

static bool full(struct worker *w, const struct up_config *cfg, uint32_t s, uint32_t max)
{
    if (load_all(w, cfg, s) < max)
        return false;
    w->srv[cfg->servers[s].stat_slot].full++;
    return true;
}

/* After no pick: was a server up but full? (counted as such) */
static bool any_full(struct worker *w, const struct up_config *cfg, const struct up_cluster *cl)
{
    for (uint32_t i = 0; i < cl->nservers; i++) {
        uint32_t s = cl->first_server + i;
        if (health_up(w, cfg, s) &&
            server_state(w, cfg, s)->ejected_until_ms <= w->now_ms &&
            load_all(w, cfg, s) >= cl->max_in_flight)
            return true;
    }
    return false;
}

static bool usable(struct worker *w, const struct up_config *cfg, uint32_t s, uint32_t avoid)
{
    if (s == avoid || !health_up(w, cfg, s))
        return false;
    if (server_state(w, cfg, s)->ejected_until_ms > w->now_ms)
        return false;
    uint32_t max = cfg->clusters[cfg->servers[s].cluster].max_in_flight;
    return !max || !full(w, cfg, s, max);
}

/* xorshift: p2c needs cheap, not good, randomness. */
static uint32_t rnd(struct worker *w)
{
    uint32_t x = (uint32_t)w->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    w->rng = x;
    return x;
}

static int pick_rr(struct worker *w, const struct up_config *cfg, const struct up_cluster *cl,
                   uint32_t avoid)
{
    /* Smooth weighted round robin: every server gains its weight, the
     * richest is picked and pays the total. Equal weights reduce to plain
     * rotation; unequal ones interleave instead of bursting. */
    int best = -1;
    struct server_state *best_st = NULL;
    int32_t total = 0;
    for (uint32_t i = 0; i < cl->nservers; i++) {
        uint32_t s = cl->first_server + i;
        if (!usable(w, cfg, s, avoid))
            continue;
        struct server_state *st = server_state(w, cfg, s);
        st->current_weight += (int32_t)cfg->servers[s].weight;
        total += (int32_t)cfg->servers[s].weight;
        if (!best_st || st->current_weight > best_st->current_weight) {
            best = (int)s;
            best_st = st;
        }
    }
    if (best_st)
        best_st->current_weight -= total;
    return best;
}

static int pick_least(struct worker *w, const struct up_config *cfg, uint32_t ci,
                      uint32_t avoid)
{
    /* Least work in flight per unit of weight; ties go round the cluster
     * from a moving start so equal servers share the load. */
    const struct up_cluster *cl = &cfg->clusters[ci];
    struct cluster_state *cs = cluster_state(w, cfg, ci);
    int best = -1;
    uint64_t best_score = 0;
    for (uint32_t k = 0; k < cl->nservers; k++) {
        uint32_t s = cl->first_server + (cs->rr_next + k) % cl->nservers;
        if (!usable(w, cfg, s, avoid))
            continue;
        uint64_t score = (load(w, cfg, s) << 16) / cfg->servers[s].weight;
        if (best < 0 || score < best_score) {
            best = (int)s;
            best_score = score;
        }
    }
    cs->rr_next++;
    return best;
}

static int pick_p2c(struct worker *w, const struct up_config *cfg, uint32_t ci, uint32_t avoid)
{
    const struct up_cluster *cl = &cfg->clusters[ci];
    int a = -1, b = -1;
    for (int tries = 0; tries < 4 && b < 0; tries++) {
        uint32_t s = cl->first_server + rnd(w) % cl->nservers;
        if (!usable(w, cfg, s, avoid))
            continue;
        if (a < 0)
            a = (int)s;
        else if ((int)s != a)
            b = (int)s;
    }
    if (a < 0)
        return pick_least(w, cfg, ci, avoid);
    if (b < 0)
        return a;
    return load(w, cfg, (uint32_t)a) <= load(w, cfg, (uint32_t)b) ? a : b;
}

/* Consistent hashing: the first ring point at or after the key's hash,
 * walking on past servers that cannot take it, so a server going down
 * moves only its own keys. */
static int pick_hash(struct worker *w, const struct up_config *cfg, const struct up_cluster *cl,
                     uint32_t avoid, uint64_t key)
{
    if (!cl->nring)
        return -1;
    uint32_t lo = 0, hi = cl->nring;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (cl->ring[mid].hash < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (uint32_t k = 0; k < cl->nring; k++) {
        uint32_t s = cl->ring[(lo + k) % cl->nring].server;
        if (usable(w, cfg, s, avoid))
            return (int)s;
    }
    return -1;
}

int balance_pick(struct worker *w, const struct up_config *cfg, uint32_t cluster,
                 uint32_t avoid, uint64_t key)
{
    const struct up_cluster *cl = &cfg->clusters[cluster];
    if (!cl->nservers)
        return -1;
    int s;
    switch (cl->balance) {
    case UP_BALANCE_LEAST_CONN:
        s = pick_least(w, cfg, cluster, avoid);
        break;
    case UP_BALANCE_P2C:
        s = pick_p2c(w, cfg, cluster, avoid);
        break;
    case UP_BALANCE_HASH:
        s = pick_hash(w, cfg, cl, avoid, key);
        break;
    case UP_BALANCE_ROUND_ROBIN:
    default:
        s = pick_rr(w, cfg, cl, avoid);
        break;
    }
    if (s < 0 && cl->max_in_flight && avoid == NIL && any_full(w, cfg, cl))
        w->c[UP_C_SERVERS_FULL]++;
    return s;
}

/* Passive health: consecutive failures eject a server for a cool-down. */
void balance_result(struct worker *w, const struct up_config *cfg, uint32_t s, bool ok)
{
    struct server_state *ws = server_state(w, cfg, s);
    const struct up_cluster *cl = &cfg->clusters[cfg->servers[s].cluster];
    if (ok) {
        ws->fails = 0;
        return;
    }
    if (cl->fail_threshold && ++ws->fails >= cl->fail_threshold) {
        ws->ejected_until_ms = w->now_ms + cl->eject_ms;
        ws->fails = 0;
        w->c[UP_C_HEALTH_EJECTIONS]++;
        srv_stats(w, cfg, s)->ejections++;
    }
}

/* FNV-1a, then a 64-bit finalizer so nearby keys spread over the ring.
 * src/uproxy/hashring.py computes the same. */
uint64_t up_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}
