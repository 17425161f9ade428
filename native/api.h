/*
 * The boundary between the Python control plane and the C core.
 *
 * This file is read twice: by the C compiler, and by cffi's cdef parser
 * (native/build_native.py strips the preprocessor lines first). So it holds
 * only plain declarations: integer #defines, enums, structs with explicit
 * padding, and functions. Everything here is either
 *   - immutable configuration tables that Python builds and publishes to the
 *     workers with one atomic pointer swap (struct up_config), or
 *   - the shared-memory statistics segment (struct up_shm_*), whose layout is
 *     versioned and documented in docs/stats-layout.md, or
 *   - the few calls Python makes: probe, create, setup, loop, free.
 */
#ifndef UPROXY_API_H
#define UPROXY_API_H
#include <stdint.h>
#include <stddef.h>

#define UP_ABI_VERSION 1

/* ---- kernel features: detected by up_probe(), switchable off ---------- */
#define UP_F_MULTISHOT_ACCEPT   1
#define UP_F_BUF_RING           2
#define UP_F_MULTISHOT_RECV     4
#define UP_F_SINGLE_ISSUER      8
#define UP_F_DEFER_TASKRUN      16
#define UP_F_COOP_TASKRUN       32
#define UP_F_REGISTERED_FILES   64
#define UP_F_REGISTERED_RING    128
#define UP_F_KTLS               256  /* the kernel's tls ULP (CONFIG_TLS), not io_uring */
#define UP_F_SOCKMAP            512  /* the sockmap program loaded (bpf/sockmap.c): L4 in the kernel */
#define UP_F_KTLS_RX            1024 /* kTLS decrypts too (TLS_RX), with UP_F_KTLS; off: the library decrypts */
#define UP_F_MSHOT_LIMIT        2048 /* a multishot receive that ends after N bytes (IORING_RECV_MSHOT_LIM) */
#define UP_F_TLS_SEAL           4096 /* TLS 1.3 records sealed by us, not SSL_write (transport/tls_seal.c); no kernel need */
#define UP_F_BATCHED_WAIT       8192 /* a busy ring's wait asks for a batch: min_wait_usec (IORING_FEAT_MIN_TIMEOUT) */
#define UP_F_TLS_OPEN           16384 /* TLS 1.3 records opened by us, not SSL_read (transport/tls_open.c), with UP_F_TLS_SEAL; no kernel need */
#define UP_F_FIXED_SOCKETS      32768 /* sockets in the ring's file table (sparse registration, IORING_OP_FILES_UPDATE
                                         with IOSQE_CQE_SKIP_SUCCESS): their ops skip fget/fput */
#define UP_F_TLS_MSHOT          65536 /* a TLS connection whose records we open keeps one multishot receive armed
                                         (with UP_F_TLS_OPEN and UP_F_MULTISHOT_RECV) */
#define UP_F_H2_CODEC           131072 /* clients' HTTP/2 connections use our own codec (http2/h2_sess.h), not nghttp2 */

struct up_probe_result {
    uint32_t features;        /* UP_F_* that work on this kernel */
    int32_t  setup_errno;     /* 0, or why a plain ring could not be created */
    uint32_t nops;            /* opcodes the kernel knows (IORING_OP_LAST) */
    uint8_t  op_supported[64];/* by IORING_OP_* number */
};

/* ---- configuration tables (immutable once published) ------------------ */
#define UP_MODE_TCP  1
#define UP_MODE_HTTP 2

#define UP_BALANCE_ROUND_ROBIN 1
#define UP_BALANCE_LEAST_CONN  2
#define UP_BALANCE_P2C         3
#define UP_BALANCE_HASH        4

#define UP_FWD_BUFFERED     1   /* recv into provided buffers, send */
#define UP_FWD_SPLICE       2   /* io_uring polls, the worker calls splice() */
#define UP_FWD_SPLICE_IOWQ  3   /* IORING_OP_SPLICE, run on io-wq threads */
#define UP_FWD_SOCKMAP      4   /* the kernel redirects (bpf/sockmap.c); else splice */

/* forwarding = "sockmap": the program's per-slot array (bpf/sockmap.c `st`),
 * which every worker maps: bytes per entry, and how many closed sockets'
 * `sess` entries a worker holds back to remove them in one call. */
#define UP_SM_STATE_SIZE    48
#define UP_SM_DEFER         64

#define UP_MAX_LISTENERS 64
#define UP_REFS_STRIDE   8    /* uint64 per worker row of up_config.refs: one cache line */
#define UP_MAX_WORKERS   256

struct up_server {
    uint8_t  addr[28];        /* struct sockaddr_in or sockaddr_in6 */
    uint32_t addrlen;
    uint32_t weight;
    uint32_t cluster;
    uint32_t stat_slot;       /* its statistics block, its pool and its workers'
                                 balancing state: stable across reloads for the
                                 same cluster+address */
    uint32_t slot_gen;        /* the generation that gave stat_slot to this
                                 cluster+address (never 0): balancing state
                                 stamped with another is not this server's */
};

/* A cluster's circuit breaker states (upstream/breaker.c). The breaker
 * itself, like every worker's balancing state, lives in the worker's own
 * blocks (native/upstream/wstate.h), not in these tables. */
#define UP_BRK_CLOSED 0
#define UP_BRK_OPEN   1
#define UP_BRK_HALF   2       /* half-open: a few probes decide */

#define UP_HASH_CLIENT_IP 1
#define UP_HASH_HEADER    2

/* A point on a consistent-hash ring: built by Python, searched by C. */
struct up_ring_point {
    uint64_t hash;
    uint32_t server;          /* global server index */
    uint32_t pad;
};

struct up_cluster {
    uint32_t first_server;    /* index into up_config.servers */
    uint32_t nservers;
    uint32_t balance;         /* UP_BALANCE_* */
    uint32_t connect_timeout_ms;
    uint32_t max_attempts;    /* connect attempts before giving up */
    uint32_t fail_threshold;  /* passive ejection after this many failures */
    uint32_t eject_ms;        /* passive ejection cool-down */
    uint32_t response_timeout_ms;  /* http: request sent -> response head */
    int64_t connect_timeout_ts[2]; /* the same as a __kernel_timespec, which
                                      the kernel reads for IORING_OP_LINK_TIMEOUT */
    uint32_t pool_max_idle;   /* http: idle connections kept per server per worker */
    uint32_t pool_idle_timeout_ms;
    uint32_t max_requests;    /* http: per upstream connection, 0 = no limit */
    uint32_t hash_kind;       /* UP_HASH_* for balance = hash */
    uint32_t hash_header_off; /* header name in up_config.strings (lower case) */
    uint32_t hash_header_len;
    uint32_t nring;
    uint32_t slot;            /* its workers' balancing state (< UP_CLUSTER_SLOTS):
                                 stable across reloads for its name */
    struct up_ring_point *ring;   /* sorted by hash */
    void **tls;               /* [nworkers]: up_tls_client_new()'s, or NULL: plain */
    /* circuit breaker (upstream/breaker.c; docs/resilience.md), per worker;
     * brk_window_ms 0: none */
    uint32_t brk_window_ms;   /* shares are taken over the last half to whole window */
    uint32_t brk_error_permille;  /* open at this share of errors (0: not on errors) */
    uint32_t brk_latency_ms;  /* open when the percentile's latency passes it (0: off) */
    uint32_t brk_slow_permille;   /* that is: when more than this share is slower */
    uint32_t brk_min_requests;/* in the window, before a share counts */
    uint32_t brk_open_ms;     /* open (fail fast) this long, then half-open */
    uint32_t brk_probes;      /* half-open: probes let through, all must succeed */
    uint32_t brk_reply_off, brk_reply_len;  /* the whole 503 answer, in strings */
    uint32_t retry_budget;    /* 1: retries under way at most */
    uint32_t budget_permille; /*   max(budget_min, this share of requests under way) */
    uint32_t budget_min;
    uint32_t max_in_flight;   /* per server, over all workers (0: no limit) */
    uint32_t proxy_protocol;  /* 0, or 1 / 2: a PROXY header first on each new connection */
    uint32_t protocol;        /* http: UP_PROTO_H1 or UP_PROTO_H2 (docs/http2.md) */
    uint32_t max_streams;     /* UP_PROTO_H2: concurrent streams per connection, at most */
    uint32_t slot_gen;        /* the generation that gave slot to this name (never 0) */
};

#define UP_PROTO_H1 0
#define UP_PROTO_H2 1

#define UP_ROUTE_HOST_ANY    0
#define UP_ROUTE_HOST_EXACT  1
#define UP_ROUTE_HOST_SUFFIX 2   /* "*.example.com": the suffix ".example.com" */

struct up_route {
    uint32_t host_kind;
    uint32_t host_off, host_len;  /* in up_config.strings, lower case */
    uint32_t path_off, path_len;  /* prefix; empty matches everything */
    uint32_t cluster;
    uint32_t methods;         /* http: bit (1 << enum h1_method) per method
                                 allowed; H1_M_OTHER's bit: every method the
                                 parser does not name */
    uint32_t deny_off, deny_len;  /* in strings: the whole 405 answer (with
                                     its Allow), or 0 length: 501 */
    uint32_t stat_slot;       /* http: its statistics block (a listener slot whose
                                 parent is its listener's), or UP_NO_SLOT */
    uint32_t policy;          /* http: 1 + index in up_config.policies, 0: none */
};

#define UP_NO_SLOT 0xffff

struct up_listener {
    uint32_t id;              /* stable across reloads while the socket lives */
    uint32_t mode;            /* UP_MODE_* */
    uint32_t cluster;         /* default cluster */
    uint32_t forwarding;      /* UP_FWD_* for tcp mode */
    uint32_t idle_timeout_ms; /* tcp: no bytes either way; http: no progress
                                 while a request or response is under way */
    uint32_t header_timeout_ms;    /* http: the request head must arrive in it (408) */
    uint32_t keepalive_timeout_ms; /* http: an idle client connection is closed */
    uint32_t max_head;        /* http: bytes of a request head (431) */
    uint32_t max_target;      /* http: bytes of a request target (414) */
    uint32_t max_fields;      /* http: header fields of a request head (431) */
    uint64_t max_body;        /* http: bytes of a request body, 0 = no limit (413) */
    uint32_t keep_underscores;/* http: forward header names with '_' (else dropped) */
    uint32_t sni_timeout_ms;  /* tcp with routes: the ClientHello must arrive in it */
    uint32_t nroutes;
    struct up_route *routes;
    uint32_t access_log;      /* http: 1 to write access-log records */
    uint32_t sm_send_buffer;  /* tcp, sockmap: bytes each session socket may hold
                                 to send (its sk_sndbuf); 0: the kernel's autotuning */
    int32_t *fds;             /* [nworkers]: this listener's socket in each worker */
    void **tls;               /* [nworkers]: up_tls_server_new()'s, or NULL: plain */
    uint32_t tls_handshake_timeout_ms;
    uint16_t redirect_code;   /* http: 301 or 308 answers every request with a
                                 redirect to https (no upstream); 0: off */
    uint16_t redirect_port;   /* the https port the Location names (443: none) */
    /* http over TLS with client certificates: the request header lines that
     * carry the verified certificate's subject and SHA-256 fingerprint to
     * the upstream. strings holds "Name: " at off, len is the name's length
     * (0: no such header); a client's own lines of these names are dropped. */
    uint32_t cert_subject_off, cert_subject_len;
    uint32_t cert_sha256_off, cert_sha256_len;
    uint32_t stat_slot;       /* its statistics block (< UP_LISTENER_SLOTS): stable
                                 across reloads for its name */
    uint8_t http2;            /* http: HTTP/2 from clients (ALPN h2, h2c by prior knowledge) */
    uint8_t proxy_protocol;   /* http, tcp: 1: a connection starts with a PROXY header
                                 (v1 or v2) naming the client (core/proxy_header.c) */
    uint8_t h2_max_streams;   /* http2: SETTINGS_MAX_CONCURRENT_STREAMS (1..128; 0: 128) */
    uint8_t pad6;
    uint32_t pp_trusted_first;  /* trusted_proxies: cidrs [first, first+count) may send */
    uint32_t pp_trusted_count;  /*   one; a peer in none is taken as it is (0: anyone) */
};

struct up_config {
    uint64_t generation;
    uint32_t nworkers;
    uint32_t nlisteners;
    uint32_t nclusters;
    uint32_t nservers;
    struct up_listener *listeners;
    struct up_cluster *clusters;
    struct up_server *servers;
    uint64_t *refs;           /* [nworkers * UP_REFS_STRIDE]: live work holding this table,
                                 a row per worker (its only writer), one cache line each */
    const char *strings;      /* host names, path prefixes, header names */
    const struct up_acme_token *acme;  /* HTTP-01 answers (issue 13), or NULL */
    uint32_t nacme;
    uint32_t pad_acme;
    /* http policies (native/http/h1_policy.c), compiled at load */
    const struct up_policy *policies;
    const struct up_step *steps;
    const struct up_cidr *cidrs;
    void *const *regexes;     /* pcre2_code *, JIT-compiled (up_regex_compile) */
    uint32_t npolicies, nsteps;
    uint32_t ninflight;       /* in-flight limit slots */
    uint32_t pad_pol;
    uint32_t *inflight;       /* [nworkers * UP_INFLIGHT_ROW]: one row per worker, its writer */
    const struct up_user *users;  /* basic auth: htpasswd entries */
    const struct up_page *pages;  /* error_pages */
};

/* ACME HTTP-01 (src/uproxy/acme/): GET /.well-known/acme-challenge/<token>
 * is answered by the core (native/http/h1_acme.c) before routing, on every
 * http listener, while the control plane waits for a validation. Both
 * texts are in up_config.strings; the answer is the whole response. */
struct up_acme_token {
    uint32_t token_off, token_len;
    uint32_t answer_off, answer_len;
};

/* ---- HTTP policies (native/http/h1_policy.c, docs/http.md) -------------
 * A route's policy is a list of steps, compiled at load, that the
 * transaction runs with one switch per step; a route without one pays a
 * single branch. Strings (names, whole header lines, prefixes) are in
 * up_config.strings by (off, len). */
enum up_step_kind {
    UP_STEP_DENY = 1,         /* cidrs [first, first+count): a client in one gets 403 */
    UP_STEP_ALLOW,            /* cidrs: a client in none gets 403 */
    UP_STEP_RATE,             /* a token bucket per client address (429) */
    UP_STEP_BODY,             /* x: max request body bytes (413) */
    UP_STEP_INFLIGHT,         /* x: requests under way on the route at most (503); first: slot */
    UP_STEP_REDIRECT,         /* code; a: scheme ("" keeps), b: host ("" keeps);
                                 c: path prefix put in place of the route's (cut = route's length) */
    UP_STEP_STRIP_PREFIX,     /* a: the prefix taken off the path */
    UP_STEP_ADD_PREFIX,       /* a: the prefix put before the path */
    UP_STEP_REPLACE_PATH,     /* a: the whole new path */
    UP_STEP_REGEX,            /* first: regex index; a: the replacement ($1 ...) */
    UP_STEP_REQ_REMOVE,       /* a: a request header name the client's lines of are dropped */
    UP_STEP_REQ_ADD,          /* a: a whole "Name: value\r\n" line added */
    UP_STEP_REAL_IP,          /* X-Real-IP: <client> added (a REQ_REMOVE of it precedes) */
    UP_STEP_FORWARDED,        /* Forwarded: for=...;proto=...;host=... added */
    UP_STEP_RESP_REMOVE,      /* a: a response header name dropped */
    UP_STEP_RESP_ADD,         /* a: a whole line added to responses */
    UP_STEP_BASIC_AUTH,       /* users [first, first+count); a: the whole 401 answer */
    UP_STEP_COMPRESS,         /* first: algorithms by preference (a byte each, enum cz_alg);
                                 count: gzip level | zstd level << 8; x: min_size;
                                 a: the types, lowercase, each followed by ',' */
    UP_STEP_FORWARD_AUTH      /* first: the auth cluster; x: timeout ms; a: the path asked;
                                 b: names copied from its 2xx, c: the client's names sent
                                 to it ("": all but the body's); lowercase, each + ',' */
};

#define UP_INFLIGHT_ROW 16    /* uint32 per worker row: one cache line */
#define UP_POL_XF_OFF   1     /* no X-Forwarded-*: the client's dropped, none added */
#define UP_POL_TRUSTED  2     /* trusted_proxies given: the real client comes from X-Forwarded-For */

struct up_step {
    uint16_t kind;            /* enum up_step_kind */
    uint16_t code;            /* redirect status */
    uint32_t a_off, a_len;
    uint32_t b_off, b_len;
    uint32_t c_off, c_len;
    uint32_t first, count;
    uint32_t cut;             /* redirect: bytes of the route's path prefix replaced */
    uint32_t pad;
    uint64_t x, y;            /* rate: milli-tokens per second, bucket size in milli-tokens */
};

struct up_policy {
    /* Its steps, in cfg->steps, in this order: each range is walked only
     * where it applies. */
    uint32_t first, count;    /* decisions: access, limits, auth, redirect, rewrites */
    uint32_t rm_first, rm_count;      /* UP_STEP_REQ_REMOVE */
    uint32_t add_first, add_count;    /* UP_STEP_REQ_ADD, _REAL_IP, _FORWARDED */
    uint32_t resp_rm_first, resp_rm_count;    /* UP_STEP_RESP_REMOVE */
    uint32_t resp_add_first, resp_add_count;  /* UP_STEP_RESP_ADD */
    uint64_t rm_lens;         /* bit (length % 64) of each removed request header name: */
    uint64_t resp_rm_lens;    /* most header lines are passed after one test */
    uint32_t flags;           /* UP_POL_* */
    uint32_t trusted_first, trusted_count;  /* cidrs of trusted proxies */
    uint32_t id;              /* its index */
    uint32_t pages_first, pages_count;  /* error pages: the proxy's answers it replaces */
};

struct up_page {              /* error_pages: the whole answer for one status */
    uint16_t status;
    uint16_t pad;
    uint32_t off, len;        /* in strings */
};

struct up_user {              /* an htpasswd line: name and crypt(3) hash in strings */
    uint32_t name_off, name_len;
    uint32_t hash_off, hash_len;
};

struct up_cidr {
    uint8_t addr[16];         /* network bytes (4 used for IPv4) */
    uint8_t len;              /* 4 or 16 */
    uint8_t bits;             /* prefix length */
    uint8_t pad[6];
};

/* A regex, compiled (with PCRE2's JIT where the CPU has it) for the
 * tables; NULL with err filled when it does not compile. */
void *up_regex_compile(const char *pattern, char *err, size_t errlen, uint32_t *captures);
void up_regex_free(void *re);

/* What Python writes for the workers to read; one per process. */
struct up_control {
    uint64_t config;          /* struct up_config *, swapped atomically */
    uint32_t stop;            /* 1: stop accepting, drain, then leave the loop */
    uint32_t drain_timeout_ms;
    /* [UP_MAX_SERVERS] by server stat slot: 1 up, 0 down (active health
     * checks). Out of the published tables, which stay immutable: Python
     * writes one byte per change, whatever tables are live. */
    uint8_t *server_health;
    uint64_t pad[5];
};

/* ---- shared-memory statistics segment (docs/stats-layout.md) ---------- */
#define UP_SHM_MAGIC   0x48535958524f5055
/* 4: 128 counters (3 had 96; 1 had 64) */
#define UP_SHM_VERSION 4
#define UP_NCOUNTERS   128
#define UP_NOPS        64
#define UP_HIST_BUCKETS 256   /* log-linear, 8 per octave of microseconds */
#define UP_MAX_SERVERS 1024   /* server statistics slots */
#define UP_LISTENER_SLOTS 512 /* listener and route statistics slots (distinct ones over a process's life) */
#define UP_CLUSTER_SLOTS 1024 /* cluster slots (distinct names over a process's life) */
#define UP_LISTENER_ONLY_SLOTS 128 /* the first ones, listeners' (conn.lslot is a byte); routes take the rest */
#define UP_NEVENTS     64

enum up_counter {
    UP_C_ACCEPTED,            /* client connections accepted */
    UP_C_ACTIVE,              /* client connections open now (gauge) */
    UP_C_CLOSED,              /* client connections closed */
    UP_C_REJECTED,            /* accepted then closed at once: worker full */
    UP_C_BYTES_FROM_CLIENTS,
    UP_C_BYTES_TO_CLIENTS,
    UP_C_BYTES_TO_UPSTREAMS,
    UP_C_BYTES_FROM_UPSTREAMS,
    UP_C_UPSTREAM_CONNECTS,   /* connect attempts */
    UP_C_UPSTREAM_ACTIVE,     /* upstream connections open now (gauge) */
    UP_C_ERR_CONNECT_REFUSED,
    UP_C_ERR_CONNECT_TIMEOUT,
    UP_C_ERR_CONNECT_OTHER,
    UP_C_ERR_NO_SERVER,       /* every attempt failed or no server up */
    UP_C_ERR_CLIENT_RESET,
    UP_C_ERR_UPSTREAM_RESET,
    UP_C_ERR_IDLE_TIMEOUT,
    UP_C_ERR_ACCEPT,
    UP_C_ERR_NOBUFS,          /* a receive waited for a free buffer */
    UP_C_ERR_OTHER,
    UP_C_SESSIONS_SPLICE,
    UP_C_SESSIONS_BUFFERED,
    UP_C_PIPES_IN_USE,        /* gauge */
    UP_C_BUFFERS_IN_USE,      /* gauge */
    UP_C_URING_SQES,
    UP_C_URING_CQES,
    UP_C_URING_ENTERS,
    UP_C_URING_SQ_FULL,       /* extra submits because the SQ filled */
    UP_C_ACCEPT_PAUSES,       /* accepting paused: limit or EMFILE */
    UP_C_DRAIN_FORCED,        /* connections cut at the drain deadline */
    /* HTTP */
    UP_C_REQUESTS,            /* requests received from clients */
    UP_C_RESP_1XX,            /* responses sent to clients, by class */
    UP_C_RESP_2XX,
    UP_C_RESP_3XX,
    UP_C_RESP_4XX,
    UP_C_RESP_5XX,
    UP_C_ERR_BAD_REQUEST,     /* rejected by the parser (400/414/431/501) */
    UP_C_ERR_HEADER_TIMEOUT,  /* 408: header section too slow */
    UP_C_ERR_BAD_GATEWAY,     /* 502 sent: upstream failed or answered garbage */
    UP_C_ERR_UNAVAILABLE,     /* 503 sent: no healthy server */
    UP_C_ERR_GATEWAY_TIMEOUT, /* 504 sent */
    UP_C_ERR_SHORT_BODY,      /* a body ended before its length */
    UP_C_POOL_HITS,           /* requests sent on a pooled connection */
    UP_C_POOL_MISSES,         /* requests that needed a new connection */
    UP_C_POOL_IDLE,           /* idle pooled connections (gauge) */
    UP_C_POOL_STALE,          /* pooled connections found closed by the upstream */
    UP_C_RETRIES,             /* idempotent requests retried on a fresh connection */
    UP_C_UPGRADES,            /* connections turned into tunnels (WebSocket) */
    UP_C_LOG_WRITTEN,         /* access-log records written */
    UP_C_LOG_DROPPED,         /* access-log records dropped: ring full */
    UP_C_HEALTH_EJECTIONS,    /* passive ejections */
    UP_C_BODIES_SPLICED,      /* HTTP bodies moved by splice (request or response) */
    /* TLS */
    UP_C_TLS_HANDSHAKES,      /* handshakes completed (client side) */
    UP_C_TLS_RESUMED,         /* of which resumed a session */
    UP_C_TLS_HANDSHAKE_ERRORS,/* handshakes that failed: bad input, no shared cipher, ... */
    UP_C_TLS_HANDSHAKE_TIMEOUTS,
    UP_C_TLS_UPSTREAM_HANDSHAKES,
    UP_C_TLS_UPSTREAM_ERRORS, /* upstream handshakes that failed (verification, ...) */
    UP_C_TLS_UPSTREAM_RESUMED,/* upstream handshakes that resumed a session */
    UP_C_TLS_KTLS,            /* connections whose sending the kernel took (TLS_TX) */
    /* SNI passthrough (tcp listeners with routes) */
    UP_C_SNI_ERRORS,          /* closed: not TLS, a malformed, cut or oversized ClientHello */
    UP_C_SNI_TIMEOUTS,        /* closed: no whole ClientHello within sni_timeout */
    UP_C_REDIRECTS,           /* HTTP: requests answered with a redirect to https */
    /* sockmap (L4 forwarded by the kernel) */
    UP_C_SESSIONS_SOCKMAP,    /* L4 sessions handed to the kernel */
    UP_C_SOCKMAP_REDIRECT_FAILS, /* redirects the program could not make (bytes passed to the worker) */
    /* HTTP/2 from clients (docs/http2.md) */
    UP_C_H2_CONNECTIONS,      /* client connections that spoke HTTP/2 */
    UP_C_H2_STREAMS,          /* streams opened (each one transaction) */
    UP_C_H2_REFUSED,          /* streams refused: no slot, draining (REFUSED_STREAM) */
    UP_C_H2_RESETS,           /* streams the client reset while their transaction ran */
    UP_C_H2_FLOODS,           /* connections cut for frames that do nothing (GOAWAY) */
    UP_C_H2_ARENA_BYTES,      /* gauge: bytes of the codec's arena carved (committed at most) */
    UP_C_H2_ARENA_ALLOCS,     /* the codec's allocations, all served by the arena */
    /* resilience (docs/resilience.md) */
    UP_C_BREAKER_OPENS,       /* circuit breakers that opened (closed or half-open -> open) */
    UP_C_BREAKER_FAST_FAILS,  /* requests answered 503 by an open breaker */
    UP_C_RETRY_BUDGET_EXHAUSTED, /* retries not made: the cluster's retry budget was spent */
    UP_C_SERVERS_FULL,        /* requests or sessions refused: every server at max_in_flight */
    UP_C_PROXY_SENT,          /* PROXY headers sent to upstreams */
    UP_C_COMPRESSED,          /* responses compressed (h1_compress.c) */
    UP_C_COMPRESS_BYTES_IN,   /* body bytes that went into a compressor */
    UP_C_COMPRESS_BYTES_OUT,  /* compressed bytes that came out */
    UP_C_COMPRESS_POOL_FULL,  /* responses sent uncompressed: every stream was taken */
    UP_C_AUTH_REQUESTS,       /* forward auth: subrequests sent to auth services */
    UP_C_AUTH_DENIED,         /* forward auth: answers that were not 2xx (relayed to the client) */
    UP_C_AUTH_ERRORS,         /* forward auth: requests failed asking (auth service down, slow, garbled) */
    /* kTLS (appended: the segment's layout keeps every earlier index) */
    UP_C_TLS_KTLS_FALLBACKS,  /* kTLS on, but kept in user space: a suite or version the kernel refused */
    UP_C_TLS_KTLS_REPLY_CLOSES, /* kTLS connections closed: the library had a record to send (a key update asked of us, an alert) */
    UP_C_H2_UP_CONNECTIONS,   /* HTTP/2 connections opened to upstreams (protocol = "h2") */
    UP_C_H2_UP_STREAMS,       /* streams opened on them (each one transaction) */
    UP_C_H2_UP_GOAWAYS,       /* GOAWAY frames received from upstreams */
    UP_C_H2_UP_REFUSED,       /* streams the upstream refused (REFUSED_STREAM, past GOAWAY) */
    UP_C_H2_UP_NO_ALPN,       /* TLS upstreams that did not select h2 in ALPN */
    UP_C_H2_HELD,             /* HTTP/2 clients whose new streams waited for room (h2_hold.c) */
    /* kTLS receiving (TLS_RX; appended) */
    UP_C_TLS_KTLS_RX,         /* client connections whose receiving the kernel took (TLS_RX) */
    UP_C_TLS_KTLS_RX_FALLBACKS, /* TLS_RX refused by the kernel: the library kept decrypting */
    UP_C_TLS_KTLS_RX_CLOSES,  /* kTLS RX connections closed for a handshake message after the handshake (a KeyUpdate: Linux 6.1 cannot rekey TLS_RX) */
    UP_C_URING_BATCHED_WAITS, /* io_uring_enter calls that asked for a batch (batched_wait, worker/wait.c) */
    /* TLS keys (appended) */
    UP_C_TLS_KEYLOG_FALLBACKS, /* workers that turned the key log on: the library did not hand our BIO its TLS 1.3 sending keys */
    /* Opening our own TLS 1.3 records (tls_open.c; appended) */
    UP_C_TLS_OPEN,            /* client connections whose records we open after the handshake (the library reads no more) */
    UP_C_TLS_OPEN_RECORDS,    /* records we opened (data, alerts, key updates) */
    UP_C_TLS_OPEN_ERRORS,     /* connections closed for a record that did not open: a bad tag, a malformed record */
    UP_C_TLS_OPEN_CLOSES,     /* connections ended for a record we do not follow: a KeyUpdate that asks for ours, another handshake message */
    UP_C_TLS_OPEN_KEY_UPDATES,/* the client's KeyUpdates followed (its new receiving key derived by us) */
    UP_C_TLS_OPEN_MSHOT_ENDS, /* opening's multishot receives cancelled because they left something held (more plaintext than a buffer, an end) */
    UP_C_SMALL_BUFFERS_IN_USE, /* gauge: small buffers held (core/bufpool.h: HTTP/2 streams' request heads in flight; appended) */
    UP_C__COUNT
};

enum up_worker_state {
    UP_WS_NEW,
    UP_WS_RUNNING,
    UP_WS_DRAINING,
    UP_WS_STOPPED,
    UP_WS_FAILED
};

/* Segment: header, server names, events, worker blocks, then per-worker
 * per-server blocks; offsets are in the header. */
struct up_shm_header {
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;
    uint32_t worker_size;     /* bytes per worker block */
    uint32_t nworkers;
    uint32_t ncounters;
    uint32_t nops;
    uint64_t pid;
    uint64_t start_time_ms;   /* CLOCK_REALTIME */
    uint64_t config_generation;
    uint64_t reloads;
    uint64_t reload_failures;
    uint32_t features;        /* UP_F_* in use */
    uint32_t abi;
    uint32_t max_servers;
    uint32_t hist_buckets;
    uint32_t servers_offset;  /* struct up_shm_server[max_servers] */
    uint32_t events_offset;   /* struct up_shm_event[UP_NEVENTS] */
    uint32_t workers_offset;  /* struct up_shm_worker[nworkers] */
    uint32_t wservers_offset; /* struct up_shm_wserver[nworkers][max_servers] */
    uint64_t events_written;  /* ring position: next event goes at this % UP_NEVENTS */
    uint32_t logs_offset;     /* struct up_log_ring[nworkers] */
    uint32_t log_records;     /* UP_LOG_RECORDS */
    uint64_t proc_start;      /* the writer's start time (/proc/<pid>/stat field 22,
                                 clock ticks since boot): a segment left by a
                                 process whose pid has since been reused does
                                 not match the process that has the pid now */
    uint32_t listeners_offset;  /* struct up_shm_listener[listener_slots] */
    uint32_t wlisteners_offset; /* struct up_shm_wlistener[nworkers][listener_slots] */
    uint32_t listener_slots;    /* UP_LISTENER_SLOTS */
    uint32_t pad;
};

/* Written by the control plane: what each listener slot is. */
struct up_shm_listener {
    char name[48];
    uint32_t in_use;          /* 1 while the current configuration names it */
    uint32_t mode;            /* UP_MODE_* */
    uint32_t parent;          /* a route's: its listener's slot + 1; 0: a listener */
    uint32_t route;           /* a route's: its index in the listener's routes */
};

/* Per worker per listener, written only by that worker: the listener and
 * route panels of `uproxy top` and /metrics, for every listener (the
 * access log is optional and may drop records). */
struct up_shm_wlistener {
    uint64_t accepted;        /* client connections */
    uint64_t requests;        /* http: requests received */
    uint64_t resp[5];         /* http: responses sent, by class 1xx..5xx */
    uint64_t pad;
    uint64_t hist_request[256];  /* http: request start to response end, us */
};

/* Written by the control plane: what each server slot is. */
struct up_shm_server {
    char cluster[48];
    char address[56];
    uint32_t in_use;          /* 1 while the current configuration names it */
    uint32_t health;          /* 0 down, 1 up, 2 not checked */
    uint64_t generation;      /* configuration generation that last named it */
    uint64_t pad;
};

struct up_shm_event {
    uint64_t time_ms;         /* CLOCK_REALTIME; 0 while being written */
    char text[120];
};

struct up_shm_worker {
    uint64_t tid;
    uint64_t cpu;
    uint64_t state;           /* enum up_worker_state */
    uint64_t heartbeat_ms;    /* CLOCK_MONOTONIC */
    uint64_t config_generation;
    uint64_t features;
    uint64_t pad[2];
    uint64_t c[128];          /* enum up_counter */
    uint64_t ops[64];         /* SQEs submitted, by IORING_OP_* */
    uint64_t hist_request[256];  /* HTTP: request start to response end, us */
    uint64_t hist_upstream[256]; /* HTTP: request sent to response head, us */
    uint64_t hist_connect[256];  /* upstream connect, us */
};

/* Access log: one ring per worker, written by the worker (head) and
 * drained by the control plane (tail). A full ring drops the record and
 * counts it; the worker never waits. */
#define UP_LOG_RECORDS 4096

struct up_log_rec {
    uint64_t time_ms;         /* CLOCK_REALTIME when the response ended */
    uint64_t bytes_in;        /* request bytes (head and body) */
    uint64_t bytes_out;       /* response bytes sent */
    uint32_t duration_us;
    uint32_t listener_id;
    uint16_t status;
    uint16_t server_slot;     /* 0xffff: no upstream */
    uint16_t port;            /* client port */
    uint8_t addr_len;         /* 4 or 16 */
    uint8_t minor;            /* HTTP/1.<minor> */
    uint8_t addr[16];
    uint16_t target_len;      /* the full length; the text is cut at 160 */
    uint8_t method_len, host_len, ua_len, referer_len;
    uint8_t h2;               /* 1: the client asked over HTTP/2 (logged as HTTP/2.0) */
    uint8_t pad;
    uint8_t tls_version;      /* 0: plain; 0x12 TLS 1.2, 0x13 TLS 1.3 */
    uint8_t tls_resumed;      /* 1: the session was resumed */
    uint8_t sni_len, cipher_len;
    char sni[64];             /* the client's server name */
    char cipher[32];          /* the library's name of the cipher suite */
    char method[16];
    char target[160];
    char host[64];
    char ua[96];
    char referer[96];
};

struct up_log_ring {
    uint64_t head;            /* records written (worker) */
    uint64_t pad0[7];
    uint64_t tail;            /* records consumed (control plane) */
    uint64_t pad1[7];
    struct up_log_rec recs[4096];
};

/* One worker's view of one server; 64 bytes, one writer. */
struct up_shm_wserver {
    uint64_t active;          /* upstream connections open (gauge) */
    uint64_t in_flight;       /* requests or sessions in progress (gauge) */
    uint64_t requests;        /* HTTP requests sent, or L4 sessions */
    uint64_t connects;
    uint64_t connect_errors;
    uint64_t errors;          /* resets, timeouts, 5xx answers, bad responses */
    uint64_t idle;            /* idle pooled connections (gauge) */
    uint64_t reused;          /* requests sent on a reused connection */
    uint64_t resp_5xx;        /* http: responses of status 500-599 it sent */
    uint64_t timeouts;        /* connects and (http) response heads that timed out */
    uint64_t ejections;       /* passive ejections (fail_threshold failures in a row) */
    uint64_t full;            /* picks that passed it over: at its max_in_flight */
    /* A cluster's own counters sit in the row of its first server (the
     * readers sum a cluster's rows): */
    uint64_t breaker_opens;   /* its breaker opened */
    uint64_t fast_fails;      /* requests its open breaker answered 503 */
    uint64_t budget_exhausted;/* retries its retry budget refused */
    uint64_t breaker_state;   /* gauge: UP_BRK_* in this worker */
                              /* two whole cache lines: workers write their own rows */
};

/* ---- TLS (native/transport/tls*.c) ------------------------------------
 * Python validates the files and builds these; the core turns them into
 * one library context per worker (nothing shared between workers), which
 * the tables hold until they are freed. */
struct up_tls_cert {
    const char *cert;         /* PEM file: the certificate, then its chain */
    const char *key;          /* PEM file: its private key */
};

struct up_tls_name {          /* a name a listener's certificates serve */
    const char *name;         /* lower case; "*.example.com" for a wildcard */
    uint32_t ctx;             /* the context (certificate group) serving it */
    uint32_t pad;
};

#define UP_TLS_VERIFY_NONE     0
#define UP_TLS_VERIFY_OPTIONAL 1
#define UP_TLS_VERIFY_REQUIRED 2

/* A listener's TLS: certificates that serve the same names share one
 * context (RSA and ECDSA side by side: the library picks by the client's
 * signature algorithms); the client's SNI picks the context, ctx 0 when it
 * sends none or an unknown one. */
struct up_tls_server {
    uint32_t ncerts;
    uint32_t nctx;
    struct up_tls_cert *certs;
    uint32_t *cert_ctx;       /* [ncerts]: the context each belongs to */
    struct up_tls_name *names;
    uint32_t nnames;
    uint32_t min_version;     /* 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3) */
    const char *ciphers;      /* TLS 1.2 cipher list, OpenSSL syntax */
    const char *ciphersuites; /* TLS 1.3 suites */
    const char *curves;       /* key-exchange groups, OpenSSL's syntax ("X25519:P-256") */
    const uint8_t *alpn;      /* wire form: length-prefixed names, preferred first */
    uint32_t alpn_len;
    uint32_t verify;          /* UP_TLS_VERIFY_* for client certificates */
    const char *client_ca;    /* PEM bundle for client certificates, or NULL */
    const uint8_t *ticket_keys;   /* 80 bytes each; the first issues tickets */
    uint32_t nticket_keys;    /* 0: no session tickets */
    uint32_t session_timeout_s;
    uint32_t session_cache;   /* TLS 1.2 session-id cache entries per worker, 0: off */
    uint32_t peer_cert;       /* 1: keep a verified client certificate's subject
                                 and fingerprint per connection (tp_tls_peer_cert) */
    /* ACME TLS-ALPN-01 (RFC 8737): a handshake offering acme-tls/1 for a
     * name listed here gets that challenge certificate; acme_alpn set and
     * the name not listed: refused. */
    const struct up_tls_acme *acme;
    uint32_t nacme;
    uint32_t acme_alpn;       /* 1: an ACME listener (answers acme-tls/1) */
};

struct up_tls_acme {
    const char *name;         /* lower case */
    const char *cert;         /* PEM files of the challenge certificate */
    const char *key;
};

/* A cluster's TLS to its servers. */
struct up_tls_client {
    const char *ca;           /* PEM bundle; NULL: the system's */
    const char *sni;          /* the name sent and verified; NULL: the server's host */
    const char *cert;         /* client certificate for upstream mTLS, or NULL */
    const char *key;
    const uint8_t *alpn;
    uint32_t alpn_len;
    uint32_t verify;          /* 1: verify the chain and the name (default) */
    uint32_t min_version;
    uint32_t pad;
};

/* One worker's context for a listener or a cluster; NULL with err filled
 * when the library refuses the settings or a file. */
void *up_tls_server_new(const struct up_tls_server *conf, char *err, size_t errlen);
void *up_tls_client_new(const struct up_tls_client *conf, char *err, size_t errlen);
void up_tls_free(void *ctx);
/* 1 when the kernel takes the tls ULP on a TCP socket (kTLS), else 0. */
int up_tls_ktls_available(void);
/* The library, for doctor and the docs ("OpenSSL 3.0.19 ..."). */
const char *up_tls_library(void);

/* ---- worker --------------------------------------------------------- */
struct up_worker_opts {
    uint32_t index;
    int32_t  cpu;             /* -1: do not pin */
    uint32_t features;        /* UP_F_* to use (probe result minus disabled) */
    uint32_t max_conns;       /* client connections */
    uint32_t ring_entries;
    uint32_t buf_size;
    uint32_t buf_count;       /* power of two */
    uint32_t pipe_count;
    uint32_t pipe_size;
    uint32_t iowq_max_workers;
    int32_t  iowq_cpu;        /* -1: leave io-wq unpinned */
    uint32_t queue_limit;     /* bytes buffered per direction before pausing */
    uint32_t head_buffers;    /* http: buffers for heads that span receives */
    uint32_t splice_min;      /* http: bodies with this much left go by splice (0: never) */
    int32_t  sm_socks_fd;     /* sockmap (bpf/sockmap.c): the sockhash, or -1 */
    int32_t  sm_sess_fd;      /* its `sess` map: socket cookie -> slot in `st` */
    int32_t  sm_st_fd;        /* its `st` array (mapped: one entry per connection slot) */
    uint32_t compress_streams;/* http: compression streams per worker (h1_compress.c) */
    uint32_t batch_wait_us;   /* a busy ring waits up to this long for a batch (0: never; UP_F_BATCHED_WAIT) */
    uint32_t batch_wait_events;/* the batch it waits for: completions (worker/wait.c) */
};

struct up_worker;

int up_probe(struct up_probe_result *out);
/* Can a ring be set up with these IORING_SETUP_* flags? 0 or -errno. */
int up_probe_setup(uint32_t flags);
struct up_worker *up_worker_new(const struct up_worker_opts *opts,
                                struct up_control *ctl,
                                struct up_shm_worker *shm,
                                struct up_shm_wserver *servers,
                                struct up_shm_wlistener *listeners,
                                struct up_log_ring *log);
/* The consistent-hash function, shared with the Python ring builder. */
uint64_t up_hash(const uint8_t *data, size_t len);
/* Histogram bucket of a value in microseconds (for readers and tests). */
uint32_t up_hist_bucket(uint64_t us);
uint64_t up_hist_lower(uint32_t bucket);
/* forwarding = "sockmap": entries of the program's `st` array (and
 * sockhash) each worker owns, for max_conns client connections: every
 * connection slot, rounded so that a worker's part starts on a page (each
 * maps its own). */
uint32_t up_sm_slots_per_worker(uint32_t max_conns);
int up_worker_setup(struct up_worker *w);
int up_worker_loop(struct up_worker *w);
const char *up_worker_error(struct up_worker *w);
void up_worker_free(struct up_worker *w);

/* Publishing to the workers, with the memory ordering Python cannot state. */
void up_control_publish(struct up_control *ctl, struct up_config *cfg);
void up_control_stop(struct up_control *ctl, uint32_t drain_timeout_ms);
uint64_t up_config_refs(const struct up_config *cfg);
uint64_t up_worker_generation(const struct up_shm_worker *w);
uint64_t up_log_head(const struct up_log_ring *r);
void up_log_consumed(struct up_log_ring *r, uint64_t tail);

#endif
