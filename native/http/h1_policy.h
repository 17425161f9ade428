/*
 * Per-route HTTP policies (h1_policy.c): the per-worker state the steps of
 * up_config.steps need, allocated once when the worker starts, and the
 * calls the transaction makes. Types and prototypes only.
 */
#ifndef UPROXY_H1_POLICY_H
#define UPROXY_H1_POLICY_H
#include <stdbool.h>
#include <stdint.h>
#include <crypt.h>
#include "api.h"

struct worker;
struct txn;
struct conn;
struct h1_request;
struct h1_response;
struct h1_header;
struct cz_worker;

/* One client's token bucket for one rate step. The table is a fixed array
 * per worker, searched in a short window from the key's hash; a new client
 * takes the least recently used entry of that window (a bucket evicted
 * that way is simply full again when its client comes back). */
struct pol_bucket {
    uint8_t addr[16];
    uint32_t step;            /* the rate step's index in cfg->steps */
    uint32_t gen;             /* low bits of the configuration generation */
    uint64_t tokens;          /* milli-tokens */
    uint64_t last_ms;         /* when tokens was last brought up to date */
};

#define POL_BUCKETS 8192      /* per worker (256 KiB); a power of two */
#define POL_WINDOW  8
#define POL_PATH_MAX 8192     /* a rewritten target, while it is worked on */
#define POL_CAPTURES 16       /* capture groups a regex rewrite may use */

/* A credential (the token after "Basic ") that passed its bcrypt check:
 * a keep-alive client, which sends it with every request, pays bcrypt
 * once. Only successes are kept; a longer token is checked every time. */
#define POL_AUTH_CACHE 256    /* per worker; a power of two */
#define POL_AUTH_TOKEN 118
struct pol_auth {
    uint32_t step;            /* the auth step's index in cfg->steps */
    uint32_t gen;             /* low bits of the configuration generation */
    uint8_t len;              /* 0: empty */
    uint8_t pad;
    char token[POL_AUTH_TOKEN];
};

struct pol_worker {
    struct pol_bucket buckets[POL_BUCKETS];
    struct pol_auth auth[POL_AUTH_CACHE];
    struct crypt_data crypt;  /* crypt_r's work area: no allocation per check */
    void *match;              /* pcre2_match_data *, POL_CAPTURES pairs */
    struct cz_worker *cz;     /* compression streams (h1_compress.c) */
    char path[2][POL_PATH_MAX];
};

/* Worker start and end (worker/worker.c). 0, or -1 when out of memory. */
int pol_worker_init(struct worker *w);
void pol_worker_free(struct worker *w);

/* The request steps of rt's policy, once the route is chosen. true: the
 * proxy answered the request itself (403, 413, 429, 503, a redirect), the
 * transaction is over as far as the caller is concerned. */
bool pol_request(struct worker *w, struct txn *t, struct conn *c, const struct up_route *rt,
                 const uint8_t *base, const struct h1_request *r, const struct up_listener *l);
/* A request (response) header line the policy drops. */
bool pol_drop_req(const struct txn *t, const uint8_t *base, const struct h1_header *h);
bool pol_drop_resp(const struct txn *t, const uint8_t *base, const struct h1_header *h);
/* The lines the policy adds, pushed onto the round. */
bool pol_req_lines(struct worker *w, struct txn *t, const uint8_t *base, const struct h1_request *r);
bool pol_resp_lines(struct txn *t);
/* The policy's own page for one of the proxy's answers (error_pages):
 * true with text and len replaced (the tables' strings, which the
 * transaction holds). */
bool pol_error_page(const struct txn *t, uint16_t status, const char **text, uint32_t *len);
/* The transaction ends: what it counted (in flight) is given back. */
void pol_end(struct worker *w, struct txn *t);

#endif
