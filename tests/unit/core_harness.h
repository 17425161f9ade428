/*
 * The unit tests' window into the C core: plain functions over a worker set
 * up by hand (core_harness.c). build_core_harness.py hands these
 * declarations to cffi as they are (minus the preprocessor lines), so the
 * two cannot drift apart. Nothing of the core's structs crosses: a layout
 * change in native/ touches only core_harness.c.
 */
#ifndef UPROXY_CORE_HARNESS_H
#define UPROXY_CORE_HARNESS_H
#include "core/worker.h"
#include "upstream/upstream.h"
#include "http/h1.h"
struct hx;


struct hx *hx_new(uint32_t nconns, uint32_t buf_size, uint32_t buf_count,
                  uint32_t head_buffers, uint32_t features, uint32_t queue_limit,
                  uint64_t now_ms);
const char *hx_error(void);
void hx_free(struct hx *h);
void hx_set_now(struct hx *h, uint64_t now_ms);
uint64_t hx_counter(struct hx *h, unsigned k);
/* the slabs' slot sizes, as docs/architecture.md states them */
size_t hx_sizeof_conn(void);
size_t hx_sizeof_txn(void);

/* connections and the timer wheel */
int64_t hx_conn_alloc(struct hx *h);
uint32_t hx_conns_free(struct hx *h);
void hx_timer_set(struct hx *h, uint32_t id, uint64_t expires_ms);
void hx_timer_arm(struct hx *h, uint32_t id, uint64_t expires_ms);
void hx_timer_cancel(struct hx *h, uint32_t id);
void hx_store_expires(struct hx *h, uint32_t id, uint64_t expires_ms);
uint64_t hx_expires(struct hx *h, uint32_t id);
int hx_in_wheel(struct hx *h, uint32_t id);
int64_t hx_expired(struct hx *h);
void hx_hand_up(struct hx *h, uint32_t id, uint16_t why);
int64_t hx_next_handed_up(struct hx *h, uint16_t *why);

/* the upstream pool */
int hx_pool_put(struct hx *h, uint32_t id, uint32_t slot, uint32_t max_idle,
                uint32_t idle_timeout_ms);
int64_t hx_pool_get(struct hx *h, uint32_t slot);
void hx_pool_remove(struct hx *h, uint32_t id);
uint32_t hx_pool_count(struct hx *h, uint32_t slot);
int hx_pooled(struct hx *h, uint32_t id);
uint64_t hx_srv_idle(struct hx *h, uint32_t slot);
void hx_set_stopping(struct hx *h, int stopping);

/* balancing: a configuration table built from parameters */
int hx_cfg_new(struct hx *h, uint32_t nclusters, uint32_t nservers, uint32_t nworkers,
               uint32_t worker_index);
void hx_cfg_cluster(struct hx *h, uint32_t ci, uint32_t first_server, uint32_t nservers,
                    uint32_t balance, uint32_t fail_threshold, uint32_t eject_ms);
void hx_cfg_server(struct hx *h, uint32_t s, uint32_t cluster, uint32_t weight,
                   uint32_t stat_slot);
int hx_cfg_ring(struct hx *h, uint32_t ci, const uint64_t *hashes, const uint32_t *servers,
                uint32_t n);
void hx_set_health(struct hx *h, uint32_t s, int up);
void hx_set_in_flight(struct hx *h, uint32_t s, uint64_t n);
void hx_set_worker_index(struct hx *h, uint32_t index);
void hx_set_rng(struct hx *h, uint64_t seed);
int hx_pick(struct hx *h, uint32_t cluster, uint32_t avoid, uint64_t key);
void hx_result(struct hx *h, uint32_t s, int ok);
uint64_t hx_ejected_until(struct hx *h, uint32_t s);
uint32_t hx_fails(struct hx *h, uint32_t s);
/* the worker's balancing state across tables (upstream/wstate.h) */
void hx_cfg_server_gen(struct hx *h, uint32_t s, uint32_t slot_gen);
void hx_cfg_cluster_slot(struct hx *h, uint32_t ci, uint32_t slot, uint32_t slot_gen);
void hx_cfg_breaker(struct hx *h, uint32_t ci, uint32_t window_ms, uint32_t error_permille,
                    uint32_t min_requests, uint32_t open_ms, uint32_t probes);
int hx_breaker_admit(struct hx *h, uint32_t ci);
void hx_breaker_report(struct hx *h, uint32_t ci, int ticket, int ok);
uint32_t hx_breaker_state(struct hx *h, uint32_t ci);
uint64_t up_hash(const uint8_t *data, size_t len);

/* the buffer pool */
struct hx_bufs {
    uint32_t count, size, hcount, hsize;
    uint32_t nstack, in_kernel, window, min_window, free, nhfree;
    int ring_mode;
};
void hx_bufs(struct hx *h, struct hx_bufs *out);
uint32_t hx_stack_at(struct hx *h, uint32_t i);
uint32_t hx_buf_pop(struct hx *h);
void hx_buf_put(struct hx *h, uint32_t bid);
void hx_buf_taken(struct hx *h);
void hx_buf_short(struct hx *h);
void hx_buf_flush(struct hx *h);
uint32_t hx_buf_take(struct hx *h);
uint32_t hx_hbuf_get(struct hx *h);
uint8_t *hx_buf_data(struct hx *h, uint32_t bid);
uint32_t hx_buf_cap(struct hx *h, uint32_t bid);
uint32_t hx_buf_len(struct hx *h, uint32_t bid);
uint32_t hx_buf_next(struct hx *h, uint32_t bid);

/* the ring: SQEs prepared and not yet submitted, and a real receive */
uint32_t hx_sq_ready(struct hx *h);
int hx_sqe(struct hx *h, uint32_t i, uint32_t *opcode, uint64_t *user_data,
           uint64_t *addr, uint32_t *len, int32_t *fd, uint64_t *off, uint16_t *group);
int hx_submit(struct hx *h);
int hx_recv_select(struct hx *h, int fd, uint32_t *bid, int32_t *res);

/* a connection's receive queue (http/h1_queue.c) */
void hx_conn_open(struct hx *h, uint32_t id, int fd);
void hx_q_push(struct hx *h, uint32_t id, uint32_t bid, uint32_t len);
int hx_q_assemble(struct hx *h, uint32_t id, uint32_t limit);
void hx_q_release_to(struct hx *h, uint32_t id, uint32_t bid, uint32_t off);
void hx_q_release_all(struct hx *h, uint32_t id);
uint32_t hx_q_contiguous(struct hx *h, uint32_t id, const uint8_t **p);
struct hx_queue {
    uint32_t head, tail, queued, off;
    uint32_t flags;
};
void hx_queue(struct hx *h, uint32_t id, struct hx_queue *out);
void hx_set_xflags(struct hx *h, uint32_t id, uint32_t flags);
uint32_t hx_conn_ops(struct hx *h, uint32_t id);

/* the dialer (upstream/dial.c) */
void hx_cfg_server_addr(struct hx *h, uint32_t s, const uint8_t *addr, uint32_t len);
void hx_cfg_connect_timeout(struct hx *h, uint32_t ci, uint32_t ms);
int hx_dial(struct hx *h, uint32_t id, uint32_t server, uint32_t cluster);
void hx_dial_busy(struct hx *h, uint32_t id);
void hx_dial_idle(struct hx *h, uint32_t id);
void hx_dial_gone(struct hx *h, uint32_t id);
struct hx_conn {
    int32_t fd;
    uint32_t state, server, slot, attempts, flags, inflight, ops;
};
void hx_conn(struct hx *h, uint32_t id, struct hx_conn *out);
struct hx_srv {
    uint64_t active, in_flight, connects, requests;
};
void hx_srv(struct hx *h, uint32_t slot, struct hx_srv *out);
uint32_t hx_sqe_flags(struct hx *h, uint32_t i);
int hx_complete(struct hx *h, uint32_t n, uint64_t *user_data, int32_t *res);

/* a connection's end (core/conn.c) */
void hx_set_kind(struct hx *h, uint32_t id, uint32_t kind);
void hx_set_peer(struct hx *h, uint32_t id, uint32_t peer);
void hx_conn_close(struct hx *h, uint32_t id, int reset);
void hx_conn_submit_close(struct hx *h, uint32_t id);
void hx_conn_starve(struct hx *h, uint32_t id);
uint32_t hx_starved_head(struct hx *h);
uint32_t hx_starved_next(struct hx *h, uint32_t id);
int hx_conn_pair_done(struct hx *h, uint32_t id, uint32_t *side);
int hx_run(struct hx *h, uint32_t n, uint32_t *ops, int32_t *res);

/* the transaction's state machines (http/h1_state.c, called as they are:
 * pure functions over a state byte) */
uint8_t h1_req_next(uint8_t state, uint8_t event);
uint8_t h1_resp_next(uint8_t state, uint8_t event);
void h1_req_step(uint8_t *state, uint8_t event);
void h1_resp_step(uint8_t *state, uint8_t event);
const char *h1_req_state_name(uint8_t state);
const char *h1_resp_state_name(uint8_t state);
const char *h1_req_event_name(uint8_t event);
const char *h1_resp_event_name(uint8_t event);
/* the proxy's own answers (http/h1_reply.c) */
const char *h1_error_text(uint16_t status, uint32_t *len);

#endif
