/*
 * The upstream layer: choosing a server (balance.c), connecting to it
 * (dial.c) and keeping idle connections to it (pool.c). It knows servers and connections, never the
 * protocol spoken on them: callers (l4, http) decide what a connection
 * that the pool does not keep becomes.
 */
#ifndef UPROXY_UPSTREAM_H
#define UPROXY_UPSTREAM_H
#include "core/worker.h"
#include "upstream/wstate.h"

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

/* breaker.c: a cluster's circuit breaker, per worker. A request asks
 * breaker_admit() once; unless refused (answer 503 at once), its ticket is
 * reported once with the outcome, or forgotten when it never has one. */
enum brk_ticket {
    BRK_NONE,                 /* the cluster has no breaker */
    BRK_COUNTED,              /* closed: the outcome counts in the window */
    BRK_PROBE,                /* half-open: the outcome decides */
    BRK_REFUSED,              /* open: fail fast (counted) */
};
enum brk_ticket breaker_admit(struct worker *w, const struct up_config *cfg, uint32_t cluster);
void breaker_report(struct worker *w, const struct up_config *cfg, uint32_t cluster,
                    enum brk_ticket ticket, bool ok, uint64_t latency_us);
void breaker_forget(struct worker *w, const struct up_config *cfg, uint32_t cluster,
                    enum brk_ticket ticket);

/* retry_budget.c: enter/leave bracket a request to the cluster; a retry
 * asks budget_retry() once (true: go; false: counted, do not retry), and
 * leave says whether it had one. */
void budget_enter(struct worker *w, const struct up_config *cfg, uint32_t cluster);
bool budget_retry(struct worker *w, const struct up_config *cfg, uint32_t cluster);
void budget_leave(struct worker *w, const struct up_config *cfg, uint32_t cluster, bool retried);

/* proxy_send.c: the PROXY protocol header (version 1 or 2) that tells a
 * server who the client is, written first on a new upstream connection
 * (cluster proxy_protocol). src: the client (addr, port in host order),
 * from: the socket the client came in on (its local address is the
 * header's destination). proxy_header_build is pure (tests, fuzzing):
 * the header's length in out (at least 108 bytes). proxy_send writes it
 * on u's socket, whose send buffer is empty: 0, or -errno. */
size_t proxy_header_build(uint32_t version, const uint8_t *src, uint8_t src_len,
                          uint16_t src_port, const uint8_t *dst, uint8_t dst_len,
                          uint16_t dst_port, uint8_t *out);
int proxy_send(struct worker *w, struct conn *u, uint32_t version, const uint8_t *addr,
               uint8_t addr_len, uint16_t port, int from_fd);

#endif
