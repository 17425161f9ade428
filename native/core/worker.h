/*
 * One worker: one thread, one io_uring ring, and everything that thread
 * owns. The core's types and primitives; the layers above (upstream, l4,
 * http, the loop in worker/) add their own headers and call only down. Nothing in here is shared with another worker, so nothing in here
 * needs a lock; the only shared things are the immutable configuration
 * (read through w->cfg) and the worker's own counter block (w->shm).
 */
#ifndef UPROXY_WORKER_H
#define UPROXY_WORKER_H
#include <liburing.h>
#include <stdbool.h>
#include "api.h"
#include "core/conn.h"
#include "core/bufpool.h"
#include "core/pipes.h"
#include "core/timer.h"
#include "core/hist.h"

/* What a completion is about: the top byte of user_data. The low 32 bits
 * name the connection (or the listener slot, for accepts). */
enum op {
    OP_NONE,
    OP_TICK,          /* the worker's periodic timeout */
    OP_ACCEPT,
    OP_CONNECT,
    OP_LINK_TIMEOUT,
    OP_RECV,
    OP_SEND,
    OP_SPLICE_IN,     /* socket -> pipe */
    OP_SPLICE_OUT,    /* pipe -> peer socket */
    OP_POLL_IN,
    OP_POLL_OUT,
    OP_CLOSE,
    OP_CANCEL,
    OP_PROVIDE,       /* legacy provided buffers handed back */
    OP_TP_SEND,       /* the transport's own send (a TLS handshake flight) */
    OP_PEEK,          /* a one-byte MSG_PEEK receive that does not wait (l4 sockmap's hand-over) */
    OP__COUNT,
    /* Not a connection's op (never in c->ops): a file-table update
     * (core/fixed.h), which completes only when it fails. */
    OP_FILES = OP__COUNT
};

#define SCRATCH_SIZE 65536

#define UD(op, idx) (((uint64_t)(op) << 56) | (uint64_t)(uint32_t)(idx))
#define UD_OP(ud) ((unsigned)((ud) >> 56))
#define UD_IDX(ud) ((uint32_t)(ud))

struct txn;
struct sm_worker;
struct h1_request;
struct pol_worker;
struct h1_response;
struct server_state;
struct cluster_state;

struct acceptor {
    uint32_t listener_id;
    int fd;
    int16_t cfg_index;    /* index in w->cfg->listeners, -1 if gone */
    uint8_t armed;        /* an accept is outstanding */
    uint8_t cancelling;
};

struct worker {
    struct io_uring ring;
    uint32_t features;
    uint32_t fixed_base;            /* connection slot i's socket: fixed file fixed_base + i (core/fixed.h) */
    struct up_worker_opts o;
    struct up_control *ctl;
    struct up_shm_worker *shm;
    uint64_t *c;                    /* shm->c: this worker's counters */
    struct up_shm_wserver *srv;     /* this worker's per-server blocks */
    struct up_shm_wlistener *lst;   /* this worker's per-listener blocks (by stat_slot) */
    struct up_log_ring *log;        /* this worker's access-log ring */
    uint64_t real_ms;               /* CLOCK_REALTIME, once per loop turn */
    const struct up_config *cfg;    /* the table new sessions use */
    uint64_t now_ms;
    uint64_t now_us;                /* CLOCK_MONOTONIC, read once per loop turn */

    struct conn *conns;             /* slab: 2 per client connection */
    uint32_t nconns;
    uint32_t *free_ids;             /* stack of free conn indexes */
    uint32_t nfree;
    uint32_t clients;               /* client connections open */

    struct bufpool bufs;
    struct pipepool pipes;
    struct wheel wheel;

    struct acceptor acc[UP_MAX_LISTENERS];
    uint32_t nacc;
    bool accept_paused;
    uint64_t accept_resume_ms;      /* after EMFILE: back off, do not spin */

    uint64_t rng;
    uint8_t *scratch;               /* SCRATCH_SIZE bytes, for draining */
    uint32_t starved_head;          /* conns waiting for a free buffer */
    uint32_t *handup;               /* conns handed up to the loop (conn_hand_up) */
    uint32_t *late;                 /* conns whose send waits for the turn's end (C_LATE) */
    uint32_t nlate;
    uint32_t late_streams, late_last; /* streams whose responses wait for it, the last one */
    uint32_t nhandup, handup_cap;

    struct sm_worker *sm;           /* l4: sockmap sessions' state (l4/sockmap.c), or NULL */
    void *tls;                      /* transport: per-connection TLS state */
    void *tls_bio;                  /* transport: the BIO method of this worker */
    void *tls_sessions;             /* transport: client sessions by server slot */
    void *tls_peer;                 /* transport: client certificates' facts, per connection (cold) */
    void *tls_names;                /* transport: the one BIO a certificate's subject is printed into */
    void *tls_ktls;                 /* transport: kTLS's KDFs and kept secrets (tls_ktls.c), or NULL */
    void *tls_seal;                 /* transport: our own record sealing's ciphers (tls_seal.c), or NULL */
    void *tls_open;                 /* transport: our own record opening's ciphers (tls_open.c), or NULL */
    void *h2;                       /* http2: the codec's arena and per-connection state */
    /* http */
    struct txn *txns;               /* slab: one per client connection at most */
    struct up_log_rec *logrecs;     /* beside it: access-log records (http/h1.h txn_log) */
    uint32_t *txn_free;
    uint32_t ntxn_free, ntxns;
    struct server_state *sstate;    /* upstream: balancing state by server stat slot, */
    struct cluster_state *cstate;   /*   and by cluster slot (upstream/wstate.h) */
    uint32_t *pool_head;            /* [UP_MAX_SERVERS]: idle upstream conns */
    uint32_t *pool_count;
    struct h1_request *req_scratch; /* parse results, one parse at a time */
    struct h1_response *resp_scratch;
    /* Whose head resp_scratch holds: the bytes and method of the last
     * complete parse of an upstream's response head (h1_upstream.c), NULL
     * once anyone else takes the scratch (w_resp). An HTTP/2 stream's
     * HEADERS reuse that parse instead of parsing the same head again. */
    const uint8_t *resp_parsed;
    uint8_t resp_parsed_method;
    struct pol_worker *pol;         /* http policies: rate buckets, regex match data (h1_policy.h) */
    bool stopping;
    uint64_t drain_deadline_ms;
    bool tick_armed;
    struct __kernel_timespec tick_ts;
    uint32_t last_cqes;             /* completions the last loop turn reaped (worker/wait.c) */
    uint32_t last_shared;           /* responses that shared a send in the last turn (h2_flush_late) */
    char err[256];
};

/* Take an SQE, flushing the SQ once if it is full. Never NULL in practice:
 * the ring is sized for the connection limit, and a second failure means a
 * bug, which aborts loudly rather than losing an operation. */
struct io_uring_sqe *sqe_get(struct worker *w);

/* Connection slots of a worker for max_conns client connections: a client
 * and its upstream each, plus a margin of 64. */
static inline uint32_t worker_nconns(uint32_t max_conns)
{
    return 2 * max_conns + 64;
}

static inline struct io_uring_sqe *
sqe_for(struct worker *w, struct conn *c, enum op op)
{
    struct io_uring_sqe *s = sqe_get(w);
    io_uring_sqe_set_data64(s, UD(op, c - w->conns));
    c->inflight++;
    c->ops |= 1u << op;
    return s;
}

static inline void count_op(struct worker *w, const struct io_uring_sqe *s)
{
    w->shm->ops[s->opcode & (UP_NOPS - 1)]++;
}

static inline void cnt(struct worker *w, enum up_counter k, int64_t d)
{
    w->c[k] += (uint64_t)d;
}

/* The statistics block of server s (global index in cfg). */
static inline struct up_shm_wserver *srv_stats(struct worker *w, const struct up_config *cfg,
                                               uint32_t s)
{
    return &w->srv[cfg->servers[s].stat_slot];
}

/* c's client address (a client side's only). The slab is the worker's
 * and writable: readers that hold c const may still fill it in. */
static inline struct conn_addr *conn_addr(struct worker *w, const struct conn *c)
{
    return &w->conns[c - w->conns].a;
}

/* Work of this worker that holds cfg (a session, a transaction) counts
 * in the worker's row of cfg->refs; the control plane frees the table when
 * every row reads 0 (up_config_refs, acquire). One writer per row, so a
 * plain add published with a release store: the worker's last read of cfg
 * comes before the control plane can see the count drop. */
static inline void cfg_ref(struct worker *w, const struct up_config *cfg)
{
    uint64_t *r = &cfg->refs[(size_t)w->o.index * UP_REFS_STRIDE];
    __atomic_store_n(r, *r + 1, __ATOMIC_RELEASE);
}

static inline void cfg_unref(struct worker *w, const struct up_config *cfg)
{
    uint64_t *r = &cfg->refs[(size_t)w->o.index * UP_REFS_STRIDE];
    __atomic_store_n(r, *r - 1, __ATOMIC_RELEASE);   /* nothing may read cfg after */
}

/* conn.c */
struct conn *conn_alloc(struct worker *w);
const struct up_listener *conn_listener(struct worker *w, struct conn *c);
/* A socket's peer (peer) or local address: its bytes into addr (4 or 16
 * returned; 0 when the call fails or the family is neither) and its port,
 * in host order. One getpeername/getsockname: per connection, never per
 * request. */
uint8_t sock_addr(int fd, bool peer, uint8_t addr[16], uint16_t *port);
void conn_close(struct worker *w, struct conn *c, bool reset);
void conn_op_done(struct worker *w, struct conn *c, enum op op, bool more);
void conn_cancel_ops(struct worker *w, struct conn *c);
void conn_submit_close(struct worker *w, struct conn *c);
void conn_cancel_ops_of(struct worker *w, struct conn *c, enum op op);
void conn_starve(struct worker *w, struct conn *c);
/* Wait for readiness on c (one poll per op kind; a second is not needed). */
void conn_poll_arm(struct worker *w, struct conn *c, enum op op, unsigned events);
bool conn_pair_done(struct worker *w, struct conn *c, struct conn *side[2]);
/* Hand c up to the loop for its protocol (why: C_UP_FINISH, C_UP_ADOPT);
 * the loop takes them back one by one, with the reasons, until NULL. */
void conn_hand_up(struct worker *w, struct conn *c, uint16_t why);
struct conn *conn_next_handed_up(struct worker *w, uint16_t *why);

/* ring.c */
int ring_init(struct worker *w);
int ring_files_init(struct worker *w);
/* Submit what is queued and wait, in one io_uring_enter, until wait_nr
 * completions are there, or min_us passed with at least one there, or
 * max_ms passed with none (Linux 6.12's min_wait_usec; only with
 * UP_F_BATCHED_WAIT). The submitted count, or -errno. */
int ring_submit_and_wait_batch(struct worker *w, unsigned wait_nr, unsigned min_us,
                               unsigned max_ms);

#endif
