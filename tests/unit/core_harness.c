/*
 * Test-only: a worker set up by hand, and plain functions over the core's
 * pieces for the unit tests (tests/unit/). The core itself is linked whole
 * and unchanged; this file only builds the state a worker's set-up would
 * (slabs, counters, a configuration table, a real io_uring ring) and calls
 * the pieces the way the layers above them do. The time is whatever the
 * test sets: nothing here reads a clock.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core_harness.h"

struct hx {
    struct worker w;
    struct up_shm_worker shm;
    struct up_shm_wserver srv[UP_MAX_SERVERS];
    int ring_up, bufs_up;
    /* the configuration table balance.c reads */
    struct up_config cfg;
    struct up_ring_point **rings;     /* [nclusters] */
    struct up_control ctl;            /* its server_health: health, by stat slot */
    uint8_t health[UP_MAX_SERVERS];
    /* balancing state (upstream/wstate.h) of workers 0..HX_WORKERS-1: the
     * worker's own blocks, swapped in by hx_set_worker_index; they outlive
     * the tables hx_cfg_new replaces, as a worker's outlive a reload */
#define HX_WORKERS 4
    struct server_state *sstate[HX_WORKERS];
    struct cluster_state *cstate[HX_WORKERS];
};

static char hx_err[300];

const char *hx_error(void)
{
    return hx_err;
}

static void cfg_free(struct hx *h)
{
    struct up_config *cfg = &h->cfg;
    if (h->rings)
        for (uint32_t i = 0; i < cfg->nclusters; i++)
            free(h->rings[i]);
    free(h->rings);
    free(cfg->clusters);
    free(cfg->servers);
    memset(cfg, 0, sizeof *cfg);
    h->rings = NULL;
    h->w.cfg = NULL;
}

void hx_free(struct hx *h)
{
    if (!h)
        return;
    struct worker *w = &h->w;
    if (h->bufs_up)
        bufpool_free(w);
    if (h->ring_up)
        io_uring_queue_exit(&w->ring);
    cfg_free(h);
    for (int i = 0; i < HX_WORKERS; i++) {
        w->sstate = h->sstate[i];
        w->cstate = h->cstate[i];
        wstate_free(w);
    }
    free(w->conns);
    free(w->free_ids);
    free(w->handup);
    free(w->pool_head);
    free(w->pool_count);
    free(h);
}

/* As up_worker_new() and the worker's set-up do, minus listeners, pipes and
 * the HTTP slabs: nconns connection slots (lowest index handed out first),
 * the pool's heads, the timer wheel at now_ms, and, when buf_count is not
 * 0, a ring with the buffer pool registered on it (features: UP_F_BUF_RING
 * for a buffer ring, 0 for legacy provided buffers). */
struct hx *hx_new(uint32_t nconns, uint32_t buf_size, uint32_t buf_count,
                  uint32_t head_buffers, uint32_t features, uint32_t queue_limit,
                  uint64_t now_ms)
{
    struct hx *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(hx_err, sizeof hx_err, "out of memory");
        return NULL;
    }
    struct worker *w = &h->w;
    w->o.index = 0;
    w->o.cpu = -1;
    w->o.iowq_cpu = -1;
    w->o.features = features;
    w->o.max_conns = nconns;
    w->o.ring_entries = 64;
    w->o.buf_size = buf_size;
    w->o.buf_count = buf_count;
    w->o.head_buffers = head_buffers;
    w->o.queue_limit = queue_limit;
    w->features = features;
    w->shm = &h->shm;
    w->c = h->shm.c;
    w->srv = h->srv;
    w->now_ms = now_ms;
    w->now_us = now_ms * 1000;
    w->ring.ring_fd = -1;
    memset(h->health, 1, sizeof h->health);   /* every server up until told */
    h->ctl.server_health = h->health;
    w->ctl = &h->ctl;
    w->nconns = nconns;
    /* Cache-line aligned, as the worker's mapping is (struct conn says so). */
    w->conns = aligned_alloc(64, (size_t)nconns * sizeof(struct conn));
    if (w->conns)
        memset(w->conns, 0, (size_t)nconns * sizeof(struct conn));
    w->free_ids = calloc(nconns, sizeof(uint32_t));
    w->handup_cap = 2 * nconns;
    w->handup = calloc(w->handup_cap, sizeof(uint32_t));
    w->pool_head = malloc(sizeof(uint32_t) * UP_MAX_SERVERS);
    w->pool_count = calloc(UP_MAX_SERVERS, sizeof(uint32_t));
    if (!w->conns || !w->free_ids || !w->handup || !w->pool_head || !w->pool_count) {
        snprintf(hx_err, sizeof hx_err, "out of memory");
        hx_free(h);
        return NULL;
    }
    for (uint32_t i = 0; i < nconns; i++)
        w->free_ids[i] = nconns - 1 - i;
    w->nfree = nconns;
    for (uint32_t i = 0; i < UP_MAX_SERVERS; i++)
        w->pool_head[i] = NIL;
    w->starved_head = NIL;
    w->rng = 0x9e3779b9u ^ 1u;
    for (int i = 0; i < HX_WORKERS; i++) {
        if (wstate_init(w) < 0) {
            snprintf(hx_err, sizeof hx_err, "wstate_init: out of memory");
            hx_free(h);
            return NULL;
        }
        h->sstate[i] = w->sstate;
        h->cstate[i] = w->cstate;
    }
    w->sstate = h->sstate[0];
    w->cstate = h->cstate[0];
    wheel_init(w);
    int r = io_uring_queue_init(w->o.ring_entries, &w->ring, 0);
    if (r < 0) {
        snprintf(hx_err, sizeof hx_err, "io_uring_queue_init: %s", strerror(-r));
        hx_free(h);
        return NULL;
    }
    h->ring_up = 1;
    if (buf_count) {
        r = bufpool_init(w);
        h->bufs_up = 1;         /* bufpool_free undoes a partial set-up too */
        if (r < 0) {
            snprintf(hx_err, sizeof hx_err, "bufpool_init: %s (%s)", w->err, strerror(-r));
            hx_free(h);
            return NULL;
        }
    }
    return h;
}

void hx_set_now(struct hx *h, uint64_t now_ms)
{
    h->w.now_ms = now_ms;
    h->w.now_us = now_ms * 1000;
}

uint64_t hx_counter(struct hx *h, unsigned k)
{
    return h->w.c[k];
}

/* ---- connections and the timer wheel ---------------------------------- */

static struct conn *C(struct hx *h, uint32_t id)
{
    if (id >= h->w.nconns) {
        fprintf(stderr, "core_harness: no connection %u\n", id);
        abort();
    }
    return &h->w.conns[id];
}

int64_t hx_conn_alloc(struct hx *h)
{
    struct conn *c = conn_alloc(&h->w);
    return c ? (int64_t)(c - h->w.conns) : -1;
}

uint32_t hx_conns_free(struct hx *h)
{
    return h->w.nfree;
}

void hx_timer_set(struct hx *h, uint32_t id, uint64_t expires_ms)
{
    timer_set(&h->w, C(h, id), expires_ms);
}

void hx_timer_arm(struct hx *h, uint32_t id, uint64_t expires_ms)
{
    struct conn *c = C(h, id);
    c->expires_ms = expires_ms;
    timer_arm(&h->w, c);
}

void hx_timer_cancel(struct hx *h, uint32_t id)
{
    timer_cancel(&h->w, C(h, id));
}

/* What txn_touch() does: only the stored deadline moves. */
void hx_store_expires(struct hx *h, uint32_t id, uint64_t expires_ms)
{
    C(h, id)->expires_ms = expires_ms;
}

uint64_t hx_expires(struct hx *h, uint32_t id)
{
    return C(h, id)->expires_ms;
}

int hx_in_wheel(struct hx *h, uint32_t id)
{
    return !!(C(h, id)->flags & C_IN_WHEEL);
}

int64_t hx_expired(struct hx *h)
{
    struct conn *c = wheel_expired(&h->w);
    return c ? (int64_t)(c - h->w.conns) : -1;
}

void hx_hand_up(struct hx *h, uint32_t id, uint16_t why)
{
    conn_hand_up(&h->w, C(h, id), why);
}

int64_t hx_next_handed_up(struct hx *h, uint16_t *why)
{
    struct conn *c = conn_next_handed_up(&h->w, why);
    return c ? (int64_t)(c - h->w.conns) : -1;
}

/* ---- the upstream pool ------------------------------------------------ */

int hx_pool_put(struct hx *h, uint32_t id, uint32_t slot, uint32_t max_idle,
                uint32_t idle_timeout_ms)
{
    struct conn *u = C(h, id);
    u->slot = slot;
    return pool_put(&h->w, u, max_idle, idle_timeout_ms);
}

int64_t hx_pool_get(struct hx *h, uint32_t slot)
{
    struct conn *u = pool_get(&h->w, slot);
    return u ? (int64_t)(u - h->w.conns) : -1;
}

void hx_pool_remove(struct hx *h, uint32_t id)
{
    pool_remove(&h->w, C(h, id));
}

uint32_t hx_pool_count(struct hx *h, uint32_t slot)
{
    return h->w.pool_count[slot];
}

int hx_pooled(struct hx *h, uint32_t id)
{
    return !!(C(h, id)->flags & C_POOLED);
}

uint64_t hx_srv_idle(struct hx *h, uint32_t slot)
{
    return h->srv[slot].idle;
}

void hx_set_stopping(struct hx *h, int stopping)
{
    h->w.stopping = stopping != 0;
}

/* ---- balancing -------------------------------------------------------- */

/* A table of nclusters clusters and nservers servers (each weight 1, its
 * own stat slot, up), for nworkers workers of which this one is
 * worker_index; the clusters are filled in by hx_cfg_cluster. */
int hx_cfg_new(struct hx *h, uint32_t nclusters, uint32_t nservers, uint32_t nworkers,
               uint32_t worker_index)
{
    cfg_free(h);
    struct up_config *cfg = &h->cfg;
    cfg->generation = 1;
    cfg->nworkers = nworkers;
    cfg->nclusters = nclusters;
    cfg->nservers = nservers;
    cfg->clusters = calloc(nclusters ? nclusters : 1, sizeof *cfg->clusters);
    cfg->servers = calloc(nservers ? nservers : 1, sizeof *cfg->servers);
    h->rings = calloc(nclusters ? nclusters : 1, sizeof *h->rings);
    if (!cfg->clusters || !cfg->servers || !h->rings || nservers > UP_MAX_SERVERS ||
        nclusters > UP_CLUSTER_SLOTS || worker_index >= HX_WORKERS) {
        cfg_free(h);
        return -ENOMEM;
    }
    for (uint32_t s = 0; s < nservers; s++) {
        cfg->servers[s].weight = 1;
        cfg->servers[s].stat_slot = s;
        cfg->servers[s].slot_gen = 1;
    }
    for (uint32_t ci = 0; ci < nclusters; ci++) {
        cfg->clusters[ci].slot = ci;
        cfg->clusters[ci].slot_gen = 1;
    }
    hx_set_worker_index(h, worker_index);
    h->w.cfg = cfg;
    return 0;
}

void hx_cfg_cluster(struct hx *h, uint32_t ci, uint32_t first_server, uint32_t nservers,
                    uint32_t balance, uint32_t fail_threshold, uint32_t eject_ms)
{
    struct up_cluster *cl = &h->cfg.clusters[ci];
    cl->first_server = first_server;
    cl->nservers = nservers;
    cl->balance = balance;
    cl->max_attempts = 3;
    cl->fail_threshold = fail_threshold;
    cl->eject_ms = eject_ms;
    for (uint32_t i = 0; i < nservers; i++)
        h->cfg.servers[first_server + i].cluster = ci;
}

void hx_cfg_server(struct hx *h, uint32_t s, uint32_t cluster, uint32_t weight,
                   uint32_t stat_slot)
{
    h->cfg.servers[s].cluster = cluster;
    h->cfg.servers[s].weight = weight;
    h->cfg.servers[s].stat_slot = stat_slot;
}

/* The cluster's consistent-hash ring: n points, sorted by hash. */
int hx_cfg_ring(struct hx *h, uint32_t ci, const uint64_t *hashes, const uint32_t *servers,
                uint32_t n)
{
    struct up_ring_point *ring = calloc(n ? n : 1, sizeof *ring);
    if (!ring)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        ring[i].hash = hashes[i];
        ring[i].server = servers[i];
    }
    free(h->rings[ci]);
    h->rings[ci] = ring;
    h->cfg.clusters[ci].ring = ring;
    h->cfg.clusters[ci].nring = n;
    return 0;
}

void hx_set_health(struct hx *h, uint32_t s, int up)
{
    h->health[h->cfg.servers[s].stat_slot] = up ? 1 : 0;
}

/* Work in flight on server s, as this worker's statistics block counts it. */
void hx_set_in_flight(struct hx *h, uint32_t s, uint64_t n)
{
    srv_stats(&h->w, &h->cfg, s)->in_flight = n;
}

void hx_set_worker_index(struct hx *h, uint32_t index)
{
    h->w.o.index = index;
    if (index < HX_WORKERS) {
        h->w.sstate = h->sstate[index];
        h->w.cstate = h->cstate[index];
    }
}

void hx_cfg_server_gen(struct hx *h, uint32_t s, uint32_t slot_gen)
{
    h->cfg.servers[s].slot_gen = slot_gen;
}

void hx_cfg_cluster_slot(struct hx *h, uint32_t ci, uint32_t slot, uint32_t slot_gen)
{
    h->cfg.clusters[ci].slot = slot;
    h->cfg.clusters[ci].slot_gen = slot_gen;
}

/* The cluster's breaker on errors only (no latency threshold). */
void hx_cfg_breaker(struct hx *h, uint32_t ci, uint32_t window_ms, uint32_t error_permille,
                    uint32_t min_requests, uint32_t open_ms, uint32_t probes)
{
    struct up_cluster *cl = &h->cfg.clusters[ci];
    cl->brk_window_ms = window_ms;
    cl->brk_error_permille = error_permille;
    cl->brk_min_requests = min_requests;
    cl->brk_open_ms = open_ms;
    cl->brk_probes = probes;
}

int hx_breaker_admit(struct hx *h, uint32_t ci)
{
    return (int)breaker_admit(&h->w, &h->cfg, ci);
}

void hx_breaker_report(struct hx *h, uint32_t ci, int ticket, int ok)
{
    breaker_report(&h->w, &h->cfg, ci, (enum brk_ticket)ticket, ok != 0, 0);
}

/* UP_BRK_* of the cluster in this worker, as the next request finds it. */
uint32_t hx_breaker_state(struct hx *h, uint32_t ci)
{
    return cluster_state(&h->w, &h->cfg, ci)->breaker;
}

void hx_set_rng(struct hx *h, uint64_t seed)
{
    h->w.rng = seed;
}

int hx_pick(struct hx *h, uint32_t cluster, uint32_t avoid, uint64_t key)
{
    return balance_pick(&h->w, &h->cfg, cluster, avoid, key);
}

void hx_result(struct hx *h, uint32_t s, int ok)
{
    balance_result(&h->w, &h->cfg, s, ok != 0);
}

/* The server's state as the worker's next access through this table
 * finds it (claimed, as that access would). */
static struct server_state *ws(struct hx *h, uint32_t s)
{
    return server_state(&h->w, &h->cfg, s);
}

uint64_t hx_ejected_until(struct hx *h, uint32_t s)
{
    return ws(h, s)->ejected_until_ms;
}

uint32_t hx_fails(struct hx *h, uint32_t s)
{
    return ws(h, s)->fails;
}

/* ---- the buffer pool -------------------------------------------------- */

void hx_bufs(struct hx *h, struct hx_bufs *out)
{
    const struct bufpool *p = &h->w.bufs;
    out->count = p->count;
    out->size = p->size;
    out->hcount = p->hcount;
    out->hsize = p->hsize;
    out->nstack = p->nstack;
    out->in_kernel = p->in_kernel;
    out->window = p->window;
    out->min_window = p->min_window;
    out->free = p->free;
    out->nhfree = p->nhfree;
    out->ring_mode = p->ring_mode;
}

/* The i-th free buffer from the top of the stack (the next to be given). */
uint32_t hx_stack_at(struct hx *h, uint32_t i)
{
    const struct bufpool *p = &h->w.bufs;
    return i < p->nstack ? p->stack[p->nstack - 1 - i] : NIL;
}

/* A buffer off the free stack as if it had gone to the kernel and come
 * back full (flush, then a receive's bufpool_taken), without the kernel:
 * for queue tests, which need buffers in a connection's hands. */
uint32_t hx_buf_pop(struct hx *h)
{
    struct bufpool *p = &h->w.bufs;
    if (!p->nstack)
        return NIL;
    uint32_t bid = p->stack[--p->nstack];
    p->free--;
    h->w.c[UP_C_BUFFERS_IN_USE]++;
    return bid;
}

void hx_buf_put(struct hx *h, uint32_t bid)
{
    bufpool_put(&h->w, bid);
}

void hx_buf_taken(struct hx *h)
{
    bufpool_taken(&h->w);
}

void hx_buf_short(struct hx *h)
{
    bufpool_short(&h->w);
}

void hx_buf_flush(struct hx *h)
{
    bufpool_flush(&h->w);
}

uint32_t hx_buf_take(struct hx *h)
{
    return bufpool_take(&h->w);
}

uint32_t hx_hbuf_get(struct hx *h)
{
    return hbuf_get(&h->w);
}

uint8_t *hx_buf_data(struct hx *h, uint32_t bid)
{
    return buf_data(&h->w.bufs, bid);
}

uint32_t hx_buf_cap(struct hx *h, uint32_t bid)
{
    return buf_cap(&h->w.bufs, bid);
}

uint32_t hx_buf_len(struct hx *h, uint32_t bid)
{
    return h->w.bufs.len[bid];
}

uint32_t hx_buf_next(struct hx *h, uint32_t bid)
{
    return h->w.bufs.next[bid];
}

/* ---- the ring --------------------------------------------------------- */

uint32_t hx_sq_ready(struct hx *h)
{
    return h->w.ring.sq.sqe_tail - h->w.ring.sq.sqe_head;
}

/* The i-th SQE prepared and not yet submitted. */
int hx_sqe(struct hx *h, uint32_t i, uint32_t *opcode, uint64_t *user_data,
           uint64_t *addr, uint32_t *len, int32_t *fd, uint64_t *off, uint16_t *group)
{
    struct io_uring_sq *sq = &h->w.ring.sq;
    if (i >= sq->sqe_tail - sq->sqe_head)
        return -1;
    const struct io_uring_sqe *s = &sq->sqes[(sq->sqe_head + i) & sq->ring_mask];
    *opcode = s->opcode;
    *user_data = s->user_data;
    *addr = s->addr;
    *len = s->len;
    *fd = s->fd;
    *off = s->off;
    *group = s->buf_group;
    return 0;
}

/* Submit what is prepared and wait for every completion: the number of
 * completions, or the first negative result among them. */
int hx_submit(struct hx *h)
{
    struct io_uring *ring = &h->w.ring;
    int n = io_uring_submit(ring);
    if (n < 0)
        return n;
    int worst = 0;
    for (int i = 0; i < n; i++) {
        struct io_uring_cqe *cqe;
        int r = io_uring_wait_cqe(ring, &cqe);
        if (r < 0)
            return r;
        if (cqe->res < 0 && !worst)
            worst = cqe->res;
        io_uring_cqe_seen(ring, cqe);
    }
    return worst ? worst : n;
}

/* One receive on fd with a buffer the kernel selects from the pool's group,
 * as the worker's receives are made: the id of the buffer it chose. */
int hx_recv_select(struct hx *h, int fd, uint32_t *bid, int32_t *res)
{
    struct io_uring *ring = &h->w.ring;
    struct io_uring_sqe *s = io_uring_get_sqe(ring);
    if (!s)
        return -EBUSY;
    io_uring_prep_recv(s, fd, NULL, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = BUF_GROUP;
    io_uring_sqe_set_data64(s, UD(OP_RECV, 0));
    int n = io_uring_submit(ring);
    if (n < 0)
        return n;
    for (;;) {
        struct io_uring_cqe *cqe;
        int r = io_uring_wait_cqe(ring, &cqe);
        if (r < 0)
            return r;
        uint64_t ud = cqe->user_data;
        int32_t got = cqe->res;
        uint32_t flags = cqe->flags;
        io_uring_cqe_seen(ring, cqe);
        if (UD_OP(ud) != OP_RECV)
            continue;
        *res = got;
        *bid = (flags & IORING_CQE_F_BUFFER) ? flags >> IORING_CQE_BUFFER_SHIFT : NIL;
        return 0;
    }
}

/* ---- a connection's receive queue ------------------------------------- */

/* An open HTTP client connection on fd (receives can be armed on it). */
void hx_conn_open(struct hx *h, uint32_t id, int fd)
{
    struct conn *c = C(h, id);
    c->kind = CK_H1_CLIENT;
    c->state = CS_OPEN;
    c->fd = fd;
}

void hx_q_push(struct hx *h, uint32_t id, uint32_t bid, uint32_t len)
{
    q_push(&h->w, C(h, id), bid, len);
}

int hx_q_assemble(struct hx *h, uint32_t id, uint32_t limit)
{
    return q_assemble(&h->w, C(h, id), limit);
}

void hx_q_release_to(struct hx *h, uint32_t id, uint32_t bid, uint32_t off)
{
    q_release_to(&h->w, C(h, id), bid, off);
}

void hx_q_release_all(struct hx *h, uint32_t id)
{
    q_release_all(&h->w, C(h, id));
}

uint32_t hx_q_contiguous(struct hx *h, uint32_t id, const uint8_t **p)
{
    return q_contiguous(&h->w, C(h, id), p);
}

void hx_queue(struct hx *h, uint32_t id, struct hx_queue *out)
{
    const struct xfer *x = &C(h, id)->x;
    out->head = x->head;
    out->tail = x->tail;
    out->queued = x->queued;
    out->off = x->off;
    out->flags = x->flags;
}

void hx_set_xflags(struct hx *h, uint32_t id, uint32_t flags)
{
    C(h, id)->x.flags = (uint8_t)flags;
}

uint32_t hx_conn_ops(struct hx *h, uint32_t id)
{
    return C(h, id)->ops;
}

/* ---- the dialer (upstream/dial.c) ------------------------------------- */

void hx_cfg_server_addr(struct hx *h, uint32_t s, const uint8_t *addr, uint32_t len)
{
    struct up_server *sv = &h->cfg.servers[s];
    memset(sv->addr, 0, sizeof sv->addr);
    memcpy(sv->addr, addr, len < sizeof sv->addr ? len : sizeof sv->addr);
    sv->addrlen = len;
}

void hx_cfg_connect_timeout(struct hx *h, uint32_t ci, uint32_t ms)
{
    struct up_cluster *cl = &h->cfg.clusters[ci];
    cl->connect_timeout_ms = ms;
    cl->connect_timeout_ts[0] = ms / 1000;
    cl->connect_timeout_ts[1] = (int64_t)(ms % 1000) * 1000000;
}

int hx_dial(struct hx *h, uint32_t id, uint32_t server, uint32_t cluster)
{
    return dial(&h->w, C(h, id), &h->cfg, server, cluster);
}

void hx_dial_busy(struct hx *h, uint32_t id)
{
    dial_busy(&h->w, C(h, id));
}

void hx_dial_idle(struct hx *h, uint32_t id)
{
    dial_idle(&h->w, C(h, id));
}

void hx_dial_gone(struct hx *h, uint32_t id)
{
    dial_gone(&h->w, C(h, id));
}

void hx_conn(struct hx *h, uint32_t id, struct hx_conn *out)
{
    const struct conn *c = C(h, id);
    out->fd = c->fd;
    out->state = c->state;
    out->server = c->server;
    out->slot = c->slot;
    out->attempts = c->attempts;
    out->flags = c->flags;
    out->inflight = c->inflight;
    out->ops = c->ops;
}

void hx_srv(struct hx *h, uint32_t slot, struct hx_srv *out)
{
    const struct up_shm_wserver *s = &h->srv[slot];
    out->active = s->active;
    out->in_flight = s->in_flight;
    out->connects = s->connects;
    out->requests = s->requests;
}

uint32_t hx_sqe_flags(struct hx *h, uint32_t i)
{
    struct io_uring_sq *sq = &h->w.ring.sq;
    if (i >= sq->sqe_tail - sq->sqe_head)
        return 0xffffffffu;
    return sq->sqes[(sq->sqe_head + i) & sq->ring_mask].flags;
}

/* Submit what is prepared, then wait for n completions, in order of arrival:
 * their user_data and results. 0, or -errno. */
int hx_complete(struct hx *h, uint32_t n, uint64_t *user_data, int32_t *res)
{
    struct io_uring *ring = &h->w.ring;
    int r = io_uring_submit(ring);
    if (r < 0)
        return r;
    for (uint32_t i = 0; i < n; i++) {
        struct io_uring_cqe *cqe;
        r = io_uring_wait_cqe(ring, &cqe);
        if (r < 0)
            return r;
        user_data[i] = cqe->user_data;
        res[i] = cqe->res;
        io_uring_cqe_seen(ring, cqe);
    }
    return 0;
}

/* ---- a connection's end (core/conn.c) ---------------------------------- */

void hx_set_kind(struct hx *h, uint32_t id, uint32_t kind)
{
    C(h, id)->kind = (uint8_t)kind;
}

void hx_set_peer(struct hx *h, uint32_t id, uint32_t peer)
{
    C(h, id)->peer = peer;
}

void hx_conn_close(struct hx *h, uint32_t id, int reset)
{
    conn_close(&h->w, C(h, id), reset != 0);
}

void hx_conn_submit_close(struct hx *h, uint32_t id)
{
    conn_submit_close(&h->w, C(h, id));
}

void hx_conn_starve(struct hx *h, uint32_t id)
{
    conn_starve(&h->w, C(h, id));
}

uint32_t hx_starved_head(struct hx *h)
{
    return h->w.starved_head;
}

uint32_t hx_starved_next(struct hx *h, uint32_t id)
{
    return C(h, id)->starved_next;
}

/* conn_pair_done: 1 with side[] filled (NIL for no peer), or 0. */
int hx_conn_pair_done(struct hx *h, uint32_t id, uint32_t *side)
{
    struct conn *s[2];
    if (!conn_pair_done(&h->w, C(h, id), s))
        return 0;
    side[0] = s[0] ? (uint32_t)(s[0] - h->w.conns) : NIL;
    side[1] = s[1] ? (uint32_t)(s[1] - h->w.conns) : NIL;
    return 1;
}

/* Submit, then take n completions as the loop's dispatch does for the
 * core's part (the protocol's part left out): a final completion drops the
 * connection's in-flight count and op bit, then conn_op_done(). The
 * completions' ops and results, in order of arrival. 0, or -errno. */
int hx_run(struct hx *h, uint32_t n, uint32_t *ops, int32_t *res)
{
    struct worker *w = &h->w;
    int r = io_uring_submit(&w->ring);
    if (r < 0)
        return r;
    for (uint32_t i = 0; i < n; i++) {
        struct io_uring_cqe *cqe;
        r = io_uring_wait_cqe(&w->ring, &cqe);
        if (r < 0)
            return r;
        uint64_t ud = io_uring_cqe_get_data64(cqe);
        bool more = cqe->flags & IORING_CQE_F_MORE;
        ops[i] = UD_OP(ud);
        res[i] = cqe->res;
        io_uring_cqe_seen(&w->ring, cqe);
        enum op op = (enum op)UD_OP(ud);
        if (op == OP_NONE || op == OP_TICK || op == OP_ACCEPT || op == OP_PROVIDE)
            continue;
        struct conn *c = &w->conns[UD_IDX(ud)];
        if (!more) {
            c->inflight--;
            c->ops &= (uint16_t)~(1u << op);
            conn_op_done(w, c, op, more);
        }
    }
    return 0;
}

size_t hx_sizeof_conn(void) { return sizeof(struct conn); }
size_t hx_sizeof_txn(void) { return sizeof(struct txn); }
