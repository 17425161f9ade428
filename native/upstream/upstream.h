/*
 * The upstream layer: choosing a server (balance.c), connecting to it
 * (dial.c) and keeping idle connections to it (pool.c). It knows servers and connections, never the
 * protocol spoken on them: callers (l4, http) decide what a connection
 * that the pool does not keep becomes.
 */
#ifndef UPROXY_UPSTREAM_H
#define UPROXY_UPSTREAM_H
#include "core/worker.h"

/* balance.c. key: the hash of the request's key, for balance = hash. */
int balance_pick(struct worker *w, const struct up_config *cfg,
                 uint32_t cluster, uint32_t avoid, uint64_t key);
void balance_result(struct worker *w, const struct up_config *cfg, uint32_t s, bool ok);

/* dial.c: one dialer for every protocol. dial() opens a socket to server
 * (of cluster, for its connect timeout) and submits the connect; 0, or
 * -errno when no socket could be had (counted). dial_busy/dial_idle count
 * u in its server's in-flight load; dial_gone gives back all u holds. */
int dial(struct worker *w, struct conn *u, const struct up_config *cfg, uint32_t server,
         uint32_t cluster);
void dial_busy(struct worker *w, struct conn *u);
void dial_idle(struct worker *w, struct conn *u);
void dial_gone(struct worker *w, struct conn *u);
/* u's connect completed with res < 0: counted (by kind, for its server,
 * in passive health), its accounting given back and its socket closed.
 * The caller decides whether to try another server. */
void dial_failed(struct worker *w, struct conn *u, const struct up_config *cfg, int res);

/* pool.c: the founding contract (DESIGN.md): get and put, synchronous,
 * constant time, never waiting. Keyed by the server's stat slot, which is
 * stable across reloads, so pooled connections outlive a reload.
 * pool_put returns false when the pool does not keep u (full, or the
 * worker is stopping): the caller closes it. */
struct conn *pool_get(struct worker *w, uint32_t slot);
bool pool_put(struct worker *w, struct conn *u, uint32_t max_idle, uint32_t idle_timeout_ms);
void pool_remove(struct worker *w, struct conn *u);

#endif
