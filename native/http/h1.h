/*
 * HTTP/1.1 proxying: shared declarations of the client side (h1_client.c),
 * the transaction that carries one request and its response (h1_txn.c),
 * the upstream side (h1_upstream.c) and the connection pool (pool.c).
 *
 * One transaction per client connection at a time: pipelined requests wait
 * in the client's receive queue until the response before them is done,
 * which keeps responses in order without any reordering buffer.
 */
#ifndef UPROXY_H1_H
#define UPROXY_H1_H
#include <sys/socket.h>
#include <sys/uio.h>
#include "http/http1_api.h"
#include "upstream/upstream.h"
#include "transport/transport.h"
#include "http/h1_policy.h"
#include "http/h1_compress.h"
#include "http/h1_state.h"

enum h1_conn_state {
    H_IDLE,           /* client: between requests (or before the first) */
    H_TXN,            /* client: a transaction is under way */
    H_LINGER,         /* client: the last response is out; FIN sent, draining */
    H_POOL,           /* upstream: idle in the pool */
    H_BUSY,           /* upstream: carrying a transaction */
    H_DIAL,           /* upstream: connecting */
    H_PROXY,          /* client: its PROXY protocol header is awaited */
    H_WAIT,           /* upstream HTTP/2 stream: its connection is not ready yet */
};

#define OUT_IOV 80

/* How long the proxy's own answer (an error) may take to go out. */
#define H1_REPLY_MS 10000

/* One sendmsg toward a peer: built from queue bytes (by reference) and a
 * few added bytes (static strings or the transaction's scratch). */
struct out {
    struct msghdr msg;
    struct iovec iov[OUT_IOV];
    uint16_t n;               /* iovecs filled */
    uint16_t first;           /* first iovec not yet fully sent */
    uint32_t left;            /* bytes not yet sent */
    uint32_t rel_bid;         /* when it is out, the source queue may be */
    uint32_t rel_off;         /* released up to here (NIL: nothing new) */
    uint8_t active;
};

/* A body moved by splice (h1_splice.c), one per direction. */
enum { BS_REQ, BS_RESP };
enum { BS_OFF, BS_WANT, BS_ON };
struct bsplice {
    int32_t pipe;             /* from the worker's pool, or -1 */
    uint32_t in_pipe;         /* bytes in the pipe not yet sent */
    uint8_t state;            /* BS_OFF, BS_WANT (switching over), BS_ON */
    uint8_t pad[7];
};

/* Transaction flags: attributes, not states. Where the request and the
 * response are (head sent, all taken in, replied, the proxy's own answer)
 * are t->rq and t->rs, advanced only by h1_req_step / h1_resp_step
 * (h1_state.h). */
#define TF_CLIENT_CLOSE  16   /* close the client after this response */
#define TF_REUSED        32   /* the upstream connection came from the pool */
#define TF_RETRIED       64
#define TF_UPGRADE       128  /* the request asked for an upgrade */
#define TF_RESP_ROUND    1024 /* resp holds a head not yet submitted (the pump's
                                 marker for the round it is handed, not a state
                                 of the response) */
#define TF_UP_CLOSE      2048 /* the upstream will not keep its connection */
#define TF_XF_UNTRUSTED  16384 /* policy: the client's X-Forwarded-For is not passed on */
#define TF_XF_OFF        32768 /* policy: no X-Forwarded-* at all */

/* Where a transaction's response goes. The transaction never calls the
 * protocol above it: for a stream it hands the stream's connection up to
 * the loop (C_UP_KICK), whose switch on the kind reaches HTTP/2. */
enum txn_sink {
    TS_CLIENT,        /* HTTP/1.1 bytes to the client connection's socket */
    TS_STREAM,        /* an HTTP/2 stream (the client is a CK_H2_STREAM) */
};

/* Forward auth (h1_fauth.c): where a transaction with an auth step is. */
enum fa_state {
    FA_NONE,          /* no forward auth */
    FA_ASKING,        /* the subrequest is the transaction's request (auth cluster) */
    FA_PASSED,        /* a 2xx: the request goes to its cluster with the copied lines */
    FA_DENIED,        /* any other answer: it is the client's response */
};

/* What carries a transaction's request to its server: a connection of
 * the pool speaking HTTP/1.1, or a stream (CK_H2_USTREAM, no socket) on a
 * pooled HTTP/2 connection, for a cluster with protocol = "h2". As for
 * TS_STREAM, the transaction never calls HTTP/2: a request round for a
 * stream, or a stream to be placed, is handed up to the loop (C_UP_KICK). */
enum txn_up {
    TU_H1,
    TU_H2,
};

struct txn {
    uint32_t client, up;      /* conn indexes (up: NIL until chosen) */
    const struct up_config *cfg;
    uint32_t cluster, server; /* server: global index in cfg, or NIL */
    uint16_t flags;
    uint16_t status;          /* final response status */
    uint8_t method, minor, req_body, resp_body;
    uint8_t attempts;
    uint8_t keep_alive;       /* the client asked to keep the connection */
    uint16_t rslot;           /* its route's statistics slot, or UP_NO_SLOT */
    uint8_t rq;               /* enum h1_req_state (h1_state.h) */
    uint8_t rs;               /* enum h1_resp_state */
    uint64_t req_left, resp_left;       /* LENGTH bodies: bytes to go */
    struct h1_chunked req_ck, resp_ck;  /* CHUNKED bodies */
    uint32_t req_bid, req_off;          /* client queue: next byte to send */
    uint32_t resp_bid, resp_off;        /* upstream queue: next byte to send */
    uint32_t start_bid, start_off;      /* client queue: where the request began */
    uint64_t t_start, t_sent;           /* us: request head parsed; sent upstream */
    uint64_t bytes_in, bytes_out;       /* request and response bytes */
    uint64_t hash_key;
    uint32_t idle_ms;                   /* the listener's idle_timeout */
    uint64_t max_body;                  /* the listener's max_body_size (0: none) */
    uint64_t body_seen;                 /* request body bytes so far (chunked limit) */
    uint8_t logging;                    /* its access-log record (txn_log) is being filled */
    uint8_t keep_underscores;           /* the listener's underscores_in_headers */
    uint8_t sink;                       /* enum txn_sink */
    uint8_t brk;                        /* its cluster's breaker ticket (enum brk_ticket) */
    uint8_t upk;                        /* enum txn_up: what carries it upstream */
    const struct up_listener *listener; /* its client's (in cfg, which the txn holds) */
    const char *reply;                  /* TS_STREAM: the proxy's own answer (HTTP/1.1 text) */
    uint32_t reply_len;
    const struct up_policy *pol;        /* its route's policy (h1_policy.c), or NULL */
    uint32_t inflight;                  /* 1 + the in-flight slot it counts in, or 0 */
    uint16_t line_len;                  /* a rewritten request line in line[] (0: none) */
    uint8_t real_len;                   /* the client's address for policies: 4 or 16 */
    uint8_t res;                        /* RES_* (h1_resilience.c) */
    uint8_t real_addr[16];              /* (the peer's, or through trusted proxies) */
    uint32_t cz_step;                   /* compress: 1 + its step in cfg->steps, or 0 */
    uint32_t cz_slot;                   /* 1 + the stream compressing the body, or 0 */
    uint8_t cz_alg;                     /* enum cz_alg the client takes (CZ_NONE: identity) */
    uint8_t cz_vary;                    /* the response varies by Accept-Encoding */
    uint8_t fa;                         /* enum fa_state */
    uint8_t pad5;
    uint16_t fa_len;                    /* bytes of fa_lines */
    uint32_t fa_step;                   /* forward auth: 1 + its step in cfg->steps, or 0 */
    uint32_t fa_cluster;                /* the route's cluster while the auth cluster is asked */
    struct bsplice req_splice, resp_splice;
    struct out req, resp;
    char scratch[1024];                 /* the header lines the proxy adds */
    char pscratch[192];                 /* policy: X-Real-IP, Forwarded's for=, a 429 */
    char line[1024];                    /* policy: a rewritten request line */
    char fa_lines[1024];                /* forward auth: the lines copied from its 2xx */
};

/* h1_client.c */
void h1_start(struct worker *w, const struct up_listener *l, int fd);
void h1_client_cqe(struct worker *w, struct conn *c, enum op op, struct io_uring_cqe *cqe);
void h1_client_expired(struct worker *w, struct conn *c);
void h1_client_next(struct worker *w, struct conn *c);
void h1_client_reply_error(struct worker *w, struct conn *c, uint16_t status);
void h1_client_reply_text(struct worker *w, struct conn *c, uint16_t status, const char *text,
                          uint32_t len);
void h1_client_close(struct worker *w, struct conn *c, bool reset);
void h1_finish(struct worker *w, struct conn *c);
void h1_client_cut(struct worker *w, struct conn *c);

/* h1_txn.c */
struct txn *txn_of(struct worker *w, const struct conn *c);
struct txn *txn_alloc(struct worker *w);
void out_submit(struct worker *w, struct out *o, struct conn *to);
/* A transaction for the request head r of c, bound to the configuration in
 * force (a reference taken), c busy with it; NULL when none is free (503
 * sent). txn_begin and h1_redirect start from it. */
struct txn *txn_open(struct worker *w, struct conn *c, const struct h1_request *r);
void txn_begin(struct worker *w, struct conn *c, const uint8_t *base, uint32_t base_bid,
               uint32_t base_off, const struct h1_request *r, const struct up_listener *l);
void txn_req_pump(struct worker *w, struct txn *t);
void txn_resp_pump(struct worker *w, struct txn *t);
void txn_sent(struct worker *w, struct txn *t, struct out *o, struct conn *from, int res);
void txn_end(struct worker *w, struct txn *t);
void txn_abort(struct worker *w, struct txn *t, uint16_t status, bool reset_client);
void txn_free(struct worker *w, struct txn *t);
bool out_push(struct out *o, const void *p, size_t n);
void out_advance(struct out *o, uint32_t n);
/* The contiguous received bytes of q at the cursor (*bid, *off; NIL: the
 * queue's front), 0 at the end. */
uint32_t txn_cur_avail(struct worker *w, const struct conn *q, uint32_t *bid, uint32_t *off,
                       const uint8_t **p);
int txn_response_head(struct worker *w, struct txn *t, const uint8_t *base,
                      const struct h1_response *r);
bool txn_build_head(struct worker *w, struct txn *t, const uint8_t *base, uint32_t bid,
                    uint32_t off, const struct h1_request *r);
/* h1_reply.c: the proxy's own answers, static texts */
const char *h1_error_text(uint16_t status, uint32_t *len);
size_t h1_format_addr(const uint8_t *addr, uint8_t len, char *dst, size_t cap);
/* Counted in the worker's totals and its listener's block (c: the client). */
void h1_count_request(struct worker *w, const struct conn *c);
void h1_count_response(struct worker *w, const struct conn *c, uint16_t status);
void h1_count_status(struct worker *w, const struct conn *c, uint16_t status);  /* and the error kinds */
void h1_tunnel(struct worker *w, struct txn *t);

/* h1_route.c: the route a request head takes (NULL: the listener's
 * cluster), the methods it allows, a hashing cluster's key */
const struct up_route *h1_route(const struct up_config *cfg, const struct up_listener *l,
                                const uint8_t *host, uint32_t host_len, const uint8_t *path,
                                uint32_t path_len);
bool h1_method_allowed(const struct up_route *rt, uint8_t method);
uint64_t h1_hash_key(struct worker *w, const struct conn *c, const struct up_config *cfg,
                     const struct up_cluster *cl, const uint8_t *base,
                     const struct h1_request *r);

/* h1_head.c: the heads as the upstream and the client see them, into
 * t->req / t->resp (false: a round or the scratch is full) */
bool h1_build_req_head(struct worker *w, struct txn *t, const uint8_t *base,
                       const struct h1_request *r, bool keep_underscores);
bool h1_build_resp_head(struct worker *w, struct txn *t, const uint8_t *base,
                        const struct h1_response *r);

/* h1_resilience.c: the cluster's circuit breaker and retry budget, for a
 * transaction (docs/resilience.md). res_admit: false when the breaker
 * refused it (503 sent). res_result: the outcome (status of the response
 * head, or of the proxy's answer when the upstream failed). res_retry: may
 * it be retried? res_end: what it holds given back (txn_free). */
#define RES_ADMITTED 1
#define RES_ACTIVE   2
#define RES_RETRIED  4
bool res_admit(struct worker *w, struct txn *t);
void res_result(struct worker *w, struct txn *t, uint16_t status);
bool res_retry(struct worker *w, struct txn *t);
void res_end(struct worker *w, struct txn *t);

/* h1_fauth.c: forward auth (t->fa, enum fa_state) */
void fa_start(struct txn *t, uint32_t si);
bool fa_build(struct worker *w, struct txn *t, const uint8_t *base, uint32_t bid, uint32_t off,
              const struct h1_request *r);
uint32_t fa_timeout_ms(const struct txn *t);
bool fa_drops(const struct txn *t, const uint8_t *base, const struct h1_header *h);
/* The auth service's response head (t->fa == FA_ASKING): true when it was
 * dealt with here (a 2xx, an interim), false when it is the client's. */
bool fa_answer(struct worker *w, struct txn *t, const uint8_t *base, const struct h1_response *r);

/* h1_redirect.c */
uint32_t h1_host_part(const uint8_t *h, uint32_t n);
void h1_redirect(struct worker *w, struct conn *c, const uint8_t *base, uint32_t base_bid,
                 uint32_t base_off, const struct h1_request *r, const struct up_listener *l);

/* h1_acme.c: true when the request was an ACME HTTP-01 validation (answered) */
bool h1_acme(struct worker *w, struct conn *c, const uint8_t *base, uint32_t base_bid,
             uint32_t base_off, const struct h1_request *r, const struct up_listener *l);

/* h1_splice.c */
void splice_consider(struct worker *w, struct txn *t, int dir);
void splice_progress(struct worker *w, struct txn *t);
void splice_poll(struct worker *w, struct conn *c, enum op op);
void splice_release(struct worker *w, struct txn *t);
void splice_unhold(struct worker *w, struct txn *t);
void splice_abort(struct worker *w, struct txn *t);

/* accesslog.c */
void log_begin(struct worker *w, struct txn *t, const struct conn *c, const uint8_t *base,
               const struct h1_request *r, const struct up_listener *l);
void log_end(struct worker *w, struct txn *t, uint16_t status);
void log_refused(struct worker *w, const struct conn *c, const struct up_listener *l,
                 uint16_t status);

/* h1_upstream.c */
void h1_upstream_cqe(struct worker *w, struct conn *u, enum op op, struct io_uring_cqe *cqe);
void h1_upstream_expired(struct worker *w, struct conn *u);
void h1_upstream_assign(struct worker *w, struct txn *t);
void h1_upstream_release(struct worker *w, struct conn *u, bool reusable);
void h1_upstream_close(struct worker *w, struct conn *u, bool reset);
void h1_recv_arm(struct worker *w, struct conn *c);
void h1_upstream_progress(struct worker *w, struct conn *u);
void h1_upstream_failed(struct worker *w, struct txn *t, int res);
/* The request's round built anew from its head, still at the front of the
 * client's queue (a retry; forward auth's pass). false: aborted (502). */
bool h1_request_again(struct worker *w, struct txn *t);
void h1_try_finish(struct worker *w, struct conn *c);
void h1_stop_idle(struct worker *w);

/* Queues of received bytes (h1_queue.c): buffers linked through the pool's
 * per-buffer links; assembly buffers (for heads that span receives) share
 * the id space above the provided buffers. */
void q_push(struct worker *w, struct conn *c, uint32_t bid, uint32_t len);
void q_release_to(struct worker *w, struct conn *c, uint32_t bid, uint32_t off);
void q_release_all(struct worker *w, struct conn *c);
uint32_t q_contiguous(struct worker *w, struct conn *c, const uint8_t **p);
int q_assemble(struct worker *w, struct conn *c, uint32_t limit);

/* A transaction's access-log record: beside the slab, not in it, so that
 * only listeners with access_log = true commit its pages (w->logrecs is
 * mapped, not touched), and a transaction without a log stays shorter. */
static inline struct up_log_rec *txn_log(struct worker *w, const struct txn *t)
{
    return &w->logrecs[t - w->txns];
}

/* shared scratch of the worker for parse results (one parse at a time) */
static inline struct h1_request *w_req(struct worker *w)
{
    return w->req_scratch;
}

static inline struct h1_response *w_resp(struct worker *w)
{
    w->resp_parsed = NULL;            /* the caller writes it: no longer a known head */
    return w->resp_scratch;
}

/* The scratch's parse of the response head at base (method as parsed),
 * if it still holds it; NULL otherwise. */
static inline const struct h1_response *w_resp_of(const struct worker *w, const uint8_t *base,
                                                  uint32_t len, uint8_t method)
{
    const struct h1_response *r = w->resp_scratch;
    if (w->resp_parsed != base || w->resp_parsed_method != method || r->head_len > len)
        return NULL;
    return r;
}

/* How many received bytes a connection may queue before its receive
 * stops. An HTTP/2 stream's transaction (both its ends) holds far less
 * than a connection's: a client may open H2_MAX_STREAMS of them, and one
 * that does not read must not take the worker's buffers. */
#define H1_STREAM_QUEUE 16384
static inline uint32_t h1_queue_limit(const struct worker *w, const struct conn *c)
{
    if (c->txn != NIL && (w->txns[c->txn].sink == TS_STREAM || c->kind == CK_H2_USTREAM))
        return H1_STREAM_QUEUE;
    return w->o.queue_limit;
}

/* The connection whose socket carries c's bytes: c itself, or for an
 * HTTP/2 stream its connection (its transport, its TLS facts). */
static inline const struct conn *h1_wire(const struct worker *w, const struct conn *c)
{
    return c->kind == CK_H2_STREAM ? &w->conns[c->slot] : c;
}

/* Progress on either side pushes the transaction's idle deadline (kept on
 * the client connection) later; the wheel moves the node lazily. */
static inline void txn_touch(struct worker *w, struct txn *t)
{
    struct conn *c = &w->conns[t->client];
    if (c->expires_ms && t->idle_ms)
        c->expires_ms = w->now_ms + t->idle_ms;
}

#endif
