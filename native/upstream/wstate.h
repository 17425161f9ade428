/*
 * A worker's balancing state: its own block of server entries and its own
 * block of cluster entries, mapped once at start (wstate.c) and written by
 * that worker only, one cache line per entry: no sharing, no lock, no
 * atomics. The published tables (struct up_config) stay immutable; they
 * only say which entry is whose.
 *
 * Entries are indexed by slots that outlive a reload: a server's stat_slot
 * (one per cluster+address), a cluster's slot (one per name). So the same
 * server or cluster keeps its state across a reload, as HAProxy's
 * server-state-file keeps it: an ejected server stays ejected until its
 * time, an open breaker stays open, smooth round robin goes on where it
 * was.
 *
 * Why a generation, and why this one: a slot handed to another server or
 * cluster must not pass it the old one's ejection, failures or breaker.
 * Each table says, beside the slot, the configuration generation that gave
 * the slot to its present owner (slot_gen, never 0); each entry is stamped
 * with the generation it belongs to. Comparing one word on a line the
 * access touches anyway costs nothing, and needs neither the control
 * plane to reach into the workers' memory (it cannot: they are single
 * writers) nor the worker to be told of the change. Generations only grow,
 * so the comparison also says which side is old:
 *   - the entry's stamp is older (or 0: never used): the slot has a new
 *     owner; the entry is cleared and stamped;
 *   - the entry's stamp is newer: the caller holds an old table (work that
 *     began before the reload) for a slot since given to another owner;
 *     it gets a cleared spare entry, so it neither reads nor disturbs the
 *     new owner's state.
 */
#ifndef UPROXY_UPSTREAM_WSTATE_H
#define UPROXY_UPSTREAM_WSTATE_H
#include "core/worker.h"

/* One worker's state of one server. Load (work in flight per server) is
 * not here: it is in the statistics segment, where max_in_flight sums it
 * over the workers. */
struct server_state {
    uint32_t gen;             /* the slot's owner it belongs to (slot_gen) */
    int32_t  current_weight;  /* smooth weighted round robin */
    uint32_t fails;           /* consecutive failures (passive health) */
    uint32_t pad0;
    uint64_t ejected_until_ms;
    uint64_t pad[5];
} __attribute__((aligned(64)));

/* One worker's state of one cluster: the cursor, the breaker, the retry
 * budget. */
struct cluster_state {
    uint32_t gen;             /* the slot's owner it belongs to (slot_gen) */
    uint32_t rr_next;
    uint32_t breaker;         /* UP_BRK_* */
    uint32_t probes;          /* half-open: probes let through */
    uint64_t until_ms;        /* open: until when; closed: the current half window's end */
    uint32_t req[2], err[2], slow[2];  /* [0] this half window, [1] the one before */
    uint32_t probe_ok;        /* half-open: probes that succeeded */
    uint32_t active;          /* requests under way to the cluster (retry budget) */
    uint32_t retrying;        /* of which retried (retry budget) */
    uint32_t pad;
} __attribute__((aligned(64)));

_Static_assert(sizeof(struct server_state) == 64, "a server's worker state is one cache line");
_Static_assert(sizeof(struct cluster_state) == 64, "a cluster's worker state is one cache line");

/* Each block has one entry more than it has slots: the spare an old
 * table's caller gets for a slot that changed owner. */
#define WSTATE_BYTES ((UP_MAX_SERVERS + 1) * sizeof(struct server_state) + \
                      (UP_CLUSTER_SLOTS + 1) * sizeof(struct cluster_state))

/* wstate.c: the blocks, mapped (not touched) at start; 0 or -errno. */
int wstate_init(struct worker *w);
void wstate_free(struct worker *w);
/* The slow side of the lookups below: e's stamp is not gen. */
struct server_state *server_state_claim(struct worker *w, struct server_state *e, uint32_t gen);
struct cluster_state *cluster_state_claim(struct worker *w, struct cluster_state *e, uint32_t gen);

/* Server s (its index in cfg) as this worker sees it. */
static inline struct server_state *server_state(struct worker *w, const struct up_config *cfg,
                                                uint32_t s)
{
    const struct up_server *sv = &cfg->servers[s];
    struct server_state *e = &w->sstate[sv->stat_slot];
    if (__builtin_expect(e->gen != sv->slot_gen, 0))
        return server_state_claim(w, e, sv->slot_gen);
    return e;
}

/* Cluster ci (its index in cfg) as this worker sees it. */
static inline struct cluster_state *cluster_state(struct worker *w, const struct up_config *cfg,
                                                  uint32_t ci)
{
    const struct up_cluster *cl = &cfg->clusters[ci];
    struct cluster_state *e = &w->cstate[cl->slot];
    if (__builtin_expect(e->gen != cl->slot_gen, 0))
        return cluster_state_claim(w, e, cl->slot_gen);
    return e;
}

#endif
