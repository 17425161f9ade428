/*
 * Response compression (h1_compress.c): a route's `compress` step picks an
 * encoding from the request's Accept-Encoding; the response head decides
 * whether this response is compressed (its status, type, size, encoding,
 * Cache-Control); the body is then compressed round by round into a
 * per-worker stream's output buffer and sent chunked. Types and
 * prototypes only.
 *
 * The streams (zlib's z_stream, zstd's static ZSTD_CCtx) live in one
 * region per worker, reserved when the worker starts (mapped, not
 * touched) and carved into CZ slots of fixed size: zlib's allocator and
 * zstd's workspace point into a slot, so compressing never calls malloc.
 * A response that finds every slot taken goes uncompressed (counted).
 */
#ifndef UPROXY_H1_COMPRESS_H
#define UPROXY_H1_COMPRESS_H
#include <stdbool.h>
#include <stdint.h>

struct worker;
struct txn;
struct h1_request;
struct h1_response;
struct h1_header;
struct up_step;

enum cz_alg { CZ_NONE, CZ_GZIP, CZ_ZSTD };

#define CZ_OUT        32768   /* compressed bytes a round carries at most */
#define CZ_HEAD       16      /* room before them for the chunk's size line */
#define CZ_ZSTD_LEVEL_MAX 9   /* the workspace is sized for levels up to this */

/* Worker start and end (from pol_worker_init / pol_worker_free): n slots. */
int cz_worker_init(struct worker *w, uint32_t n);
void cz_worker_free(struct worker *w);

/* Request time (the route's compress step s): what the client accepts of
 * the route's algorithms, by q-value; CZ_NONE for HEAD, a Range request or
 * an HTTP/1.0 client. Sets t->cz_step / t->cz_alg. */
void cz_request(struct txn *t, const struct up_step *s, uint32_t si, const uint8_t *base,
                const struct h1_request *r);

/* Response head time (t->cz_step set): whether the response may be
 * compressed at all (then it varies by Accept-Encoding: t->cz_vary), and
 * whether this one is (a stream taken from the pool: t->cz_slot). */
void cz_response(struct worker *w, struct txn *t, const uint8_t *base,
                 const struct h1_response *r);

/* The response's head lines the compression replaces (Content-Length,
 * Transfer-Encoding; ETag is rewritten by cz_head_lines). */
bool cz_drops(const uint8_t *base, const struct h1_header *h, bool *etag);
/* Content-Encoding, Transfer-Encoding: chunked, Vary; the weak ETag. */
bool cz_head_lines(struct txn *t, const uint8_t *base, const struct h1_response *r);

/* The next round of a compressed body: compresses what has arrived (as
 * chunks), ends the stream when the body has ended. -1: broken framing,
 * -2: the compressor failed. */
int cz_body(struct worker *w, struct txn *t);

/* The transaction ends: its stream goes back to the pool. */
void cz_release(struct worker *w, struct txn *t);

/* Pure (compress_select.c): Accept-Encoding values (all of the request's lines, fed one by
 * one) against a route's preference (enum cz_alg values, most preferred
 * first, CZ_NONE-terminated, at most 2). */
struct cz_accept {
    int16_t q[3];             /* per enum cz_alg (0: unused), in thousandths; -1: not named */
    int16_t star;             /* "*", or -1 */
};
void cz_accept_init(struct cz_accept *a);
void cz_accept_feed(struct cz_accept *a, const uint8_t *v, uint32_t n);
uint8_t cz_accept_choose(const struct cz_accept *a, const uint8_t *prefs);
/* Whether a Content-Type value's media type is in a list of lowercase
 * types, each followed by ',' ("type/" "*" for a whole top-level type). */
bool cz_type_listed(const char *list, uint32_t list_len, const uint8_t *ct, uint32_t n);
/* Whether tok appears in a header value (no case). */
bool cz_has_token(const uint8_t *v, uint32_t n, const char *tok, uint32_t tn);

#endif
