/*
 * Response compression per route (Traefik's Compress, nginx's gzip): zstd
 * and gzip, chosen by the request's Accept-Encoding and the route's order
 * of preference, for responses of the listed types and at least min_size
 * bytes (docs/http.md "Compression").
 *
 * The laws: no allocation per response. Each worker reserves, at start,
 * one region of CZ slots (mapped, not touched: a slot's pages are
 * committed when it is first used). zlib's allocator carves a slot from
 * its start (deflateInit2 runs once per slot, when the slot is first used
 * for gzip); zstd gets the slot as the workspace of a static context
 * (ZSTD_initStaticCCtx), which never allocates: its parameters are clamped
 * (window, hash and chain tables of 128 Ki entries at most) to what the
 * slot was sized for. A response takes a slot from a LIFO free list and
 * gives it back when its transaction ends; deflateReset / ZSTD_CCtx_reset
 * make it new. No slot free: the response goes as it is (counted).
 *
 * The library calls stay in this file, behind plain functions; the
 * transaction switches on the algorithm (an enum), never on a pointer.
 */
#define ZSTD_STATIC_LINKING_ONLY
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <zlib.h>
#include <zstd.h>
#include "http/h1.h"
#include "http/h1_compress.h"

/* Bound for zlib's memory with windowBits 15, memLevel 8 (zlib's doc:
 * (1 << (windowBits+2)) + (1 << (memLevel+9)) plus its state). */
#define CZ_ZLIB_MEM   (300u << 10)
#define CZ_ZSTD_WLOG  17

struct cz_slot {
    z_stream z;
    ZSTD_CCtx *zc;            /* static, in mem; NULL until first used for zstd */
    uint8_t *mem;             /* the library's memory */
    size_t mem_size, mem_used;
    uint8_t *out;             /* CZ_HEAD + CZ_OUT + 8 bytes */
    uint8_t alg;              /* what mem is laid out for now (CZ_NONE: nothing) */
    uint8_t in_done;          /* the upstream body has ended (then: finish the stream) */
    uint8_t pad[2];
    uint32_t next_free;
};

struct cz_worker {
    uint8_t *region;
    size_t region_size;
    struct cz_slot *slots;
    uint32_t n, nfree;
    uint32_t *free;
    size_t zstd_ws;           /* workspace a static context needs (levels 1..MAX) */
};

/* ---- zlib's and zstd's parameters ------------------------------------------ */

static ZSTD_compressionParameters zstd_params(int level)
{
    ZSTD_compressionParameters cp = ZSTD_getCParams(level, 0, 0);
    if (cp.windowLog > CZ_ZSTD_WLOG)
        cp.windowLog = CZ_ZSTD_WLOG;
    if (cp.hashLog > CZ_ZSTD_WLOG)
        cp.hashLog = CZ_ZSTD_WLOG;
    if (cp.chainLog > CZ_ZSTD_WLOG)
        cp.chainLog = CZ_ZSTD_WLOG;
    return cp;
}

/* zlib's allocator: a bump pointer in the slot; nothing is ever freed
 * (a slot's zlib memory is laid out once, then reset in place). */
static voidpf z_alloc(voidpf opaque, uInt items, uInt size)
{
    struct cz_slot *s = opaque;
    size_t n = ((size_t)items * size + 15) & ~(size_t)15;
    if (s->mem_used + n > s->mem_size)
        return Z_NULL;
    void *p = s->mem + s->mem_used;
    s->mem_used += n;
    return p;
}

static void z_free(voidpf opaque, voidpf p)
{
    (void)opaque;
    (void)p;
}

int cz_worker_init(struct worker *w, uint32_t n)
{
    struct cz_worker *cz = calloc(1, sizeof *cz);
    if (!cz)
        return -1;
    w->pol->cz = cz;
    size_t ws = 0;
    for (int lv = 1; lv <= CZ_ZSTD_LEVEL_MAX; lv++) {
        size_t k = ZSTD_estimateCStreamSize_usingCParams(zstd_params(lv));
        if (k > ws)
            ws = k;
    }
    cz->zstd_ws = ws;
    if (!n)
        return 0;
    size_t mem = ws > CZ_ZLIB_MEM ? ws : CZ_ZLIB_MEM;
    mem = (mem + 4095) & ~(size_t)4095;
    size_t out = (CZ_HEAD + CZ_OUT + 8 + 4095) & ~(size_t)4095;
    cz->region_size = (size_t)n * (mem + out);
    cz->region = mmap(NULL, cz->region_size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    cz->slots = calloc(n, sizeof *cz->slots);
    cz->free = calloc(n, sizeof *cz->free);
    if (cz->region == MAP_FAILED || !cz->slots || !cz->free) {
        if (cz->region == MAP_FAILED)
            cz->region = NULL;
        return -1;
    }
    cz->n = n;
    for (uint32_t i = 0; i < n; i++) {
        struct cz_slot *s = &cz->slots[i];
        s->mem = cz->region + (size_t)i * (mem + out);
        s->mem_size = mem;
        s->out = s->mem + mem;
        cz->free[cz->nfree++] = n - 1 - i;     /* slot 0 first: the hot ones stay few */
    }
    return 0;
}

void cz_worker_free(struct worker *w)
{
    struct cz_worker *cz = w->pol ? w->pol->cz : NULL;
    if (!cz)
        return;
    if (cz->region)
        munmap(cz->region, cz->region_size);
    free(cz->slots);
    free(cz->free);
    free(cz);
    w->pol->cz = NULL;
}

/* Make slot s ready for a new stream of alg at level. */
static bool slot_start(struct cz_worker *cz, struct cz_slot *s, uint8_t alg, int level)
{
    s->in_done = 0;
    if (alg == CZ_GZIP) {
        if (s->alg != CZ_GZIP) {          /* first use (or the memory held zstd) */
            memset(&s->z, 0, sizeof s->z);
            s->z.zalloc = z_alloc;
            s->z.zfree = z_free;
            s->z.opaque = s;
            s->mem_used = 0;
            s->zc = NULL;
            s->alg = CZ_NONE;
            /* 31: a gzip wrapper, a 32 KiB window */
            if (deflateInit2(&s->z, level, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK)
                return false;
            s->alg = CZ_GZIP;
            return true;
        }
        return deflateReset(&s->z) == Z_OK &&
               deflateParams(&s->z, level, Z_DEFAULT_STRATEGY) == Z_OK;
    }
    if (s->alg != CZ_ZSTD) {
        s->alg = CZ_NONE;
        s->zc = ZSTD_initStaticCCtx(s->mem, cz->zstd_ws);
        if (!s->zc)
            return false;
        s->alg = CZ_ZSTD;
    } else {
        ZSTD_CCtx_reset(s->zc, ZSTD_reset_session_and_parameters);
    }
    ZSTD_compressionParameters cp = zstd_params(level);
    return !ZSTD_isError(ZSTD_CCtx_setParameter(s->zc, ZSTD_c_compressionLevel, level)) &&
           !ZSTD_isError(ZSTD_CCtx_setParameter(s->zc, ZSTD_c_windowLog, (int)cp.windowLog)) &&
           !ZSTD_isError(ZSTD_CCtx_setParameter(s->zc, ZSTD_c_hashLog, (int)cp.hashLog)) &&
           !ZSTD_isError(ZSTD_CCtx_setParameter(s->zc, ZSTD_c_chainLog, (int)cp.chainLog));
}

void cz_release(struct worker *w, struct txn *t)
{
    struct cz_worker *cz = w->pol->cz;
    cz->free[cz->nfree++] = t->cz_slot - 1;
    t->cz_slot = 0;
}

/* ---- request and response heads ---------------------------------------------- */

/* The step's fields (tables.py): first = preferences (a byte each, most
 * preferred lowest), count = gzip level | zstd level << 8, x = min_size,
 * a = the types, lowercase, each followed by ','. */
void cz_request(struct txn *t, const struct up_step *s, uint32_t si, const uint8_t *base,
                const struct h1_request *r)
{
    t->cz_step = si + 1;
    t->cz_alg = CZ_NONE;
    if (t->method == H1_M_HEAD || (t->minor == 0 && t->sink == TS_CLIENT))
        return;                           /* (an HTTP/2 stream takes DATA frames, not chunks) */
    struct cz_accept acc;
    cz_accept_init(&acc);
    bool named = false;
    for (uint16_t i = 0; i < r->nheaders; i++) {
        const struct h1_header *h = &r->h[i];
        const char *name = (const char *)base + h->name_off;
        if (h->name_len == 5 && !strncasecmp(name, "range", 5))
            return;                       /* a part of the body: offsets of the identity */
        if (h->name_len == 15 && !strncasecmp(name, "accept-encoding", 15)) {
            cz_accept_feed(&acc, base + h->value_off, h->value_len);
            named = true;
        }
    }
    if (!named)
        return;
    uint8_t prefs[3] = { (uint8_t)(s->first & 0xff), (uint8_t)((s->first >> 8) & 0xff), 0 };
    t->cz_alg = cz_accept_choose(&acc, prefs);
}

void cz_response(struct worker *w, struct txn *t, const uint8_t *base,
                 const struct h1_response *r)
{
    const struct up_step *s = &t->cfg->steps[t->cz_step - 1];
    uint16_t st = r->status;
    if (st < 200 || st == 204 || st == 206 || st == 304 || t->method == H1_M_HEAD)
        return;
    if (r->body != H1_BODY_LENGTH && r->body != H1_BODY_CHUNKED)
        return;                           /* nothing, a tunnel, or close-delimited */
    if (r->body == H1_BODY_LENGTH && (r->content_length == 0 || r->content_length < s->x))
        return;
    bool typed = false;
    for (uint16_t i = 0; i < r->nheaders; i++) {
        const struct h1_header *h = &r->h[i];
        const char *name = (const char *)base + h->name_off;
        const uint8_t *v = base + h->value_off;
        if (h->name_len == 16 && !strncasecmp(name, "content-encoding", 16)) {
            if (!(h->value_len == 8 && !strncasecmp((const char *)v, "identity", 8)))
                return;                   /* compressed already */
        } else if (h->name_len == 13 && !strncasecmp(name, "cache-control", 13)) {
            if (cz_has_token(v, h->value_len, "no-transform", 12))
                return;
        } else if (h->name_len == 12 && !strncasecmp(name, "content-type", 12)) {
            typed = cz_type_listed(t->cfg->strings + s->a_off, s->a_len, v, h->value_len);
        }
    }
    if (!typed)
        return;
    t->cz_vary = 1;                       /* whatever this client accepts */
    if (t->cz_alg == CZ_NONE)
        return;
    struct cz_worker *cz = w->pol->cz;
    if (!cz->nfree) {
        w->c[UP_C_COMPRESS_POOL_FULL]++;
        return;
    }
    uint32_t i = cz->free[--cz->nfree];
    int level = t->cz_alg == CZ_GZIP ? (int)(s->count & 0xff) : (int)((s->count >> 8) & 0xff);
    if (!slot_start(cz, &cz->slots[i], t->cz_alg, level)) {
        cz->slots[i].alg = CZ_NONE;       /* laid out again at its next use */
        cz->free[cz->nfree++] = i;
        w->c[UP_C_COMPRESS_POOL_FULL]++;
        return;
    }
    t->cz_slot = i + 1;
    w->c[UP_C_COMPRESSED]++;
}

bool cz_drops(const uint8_t *base, const struct h1_header *h, bool *etag)
{
    if (h->flags & H1_HF_FRAMING)
        return true;                      /* Content-Length, Transfer-Encoding */
    const char *name = (const char *)base + h->name_off;
    if (h->name_len == 4 && !strncasecmp(name, "etag", 4)) {
        const uint8_t *v = base + h->value_off;
        *etag = h->value_len >= 2 && v[0] == '"';    /* strong: written weak */
        return *etag;
    }
    return false;
}

static const char S_CE_GZIP[] = "Content-Encoding: gzip\r\n";
static const char S_CE_ZSTD[] = "Content-Encoding: zstd\r\n";
static const char S_CHUNKED[] = "Transfer-Encoding: chunked\r\n";
static const char S_VARY[] = "Vary: Accept-Encoding\r\n";
static const char S_WEAK[] = "ETag: W/";
static const char S_CRLF[] = "\r\n";
static const char S_LAST[] = "0\r\n\r\n";

#define PUSH(o, s) out_push((o), (s), sizeof(s) - 1)

bool cz_head_lines(struct txn *t, const uint8_t *base, const struct h1_response *r)
{
    struct out *o = &t->resp;
    bool ok = PUSH(o, S_VARY);
    if (!t->cz_slot)
        return ok;
    ok &= t->cz_alg == CZ_GZIP ? PUSH(o, S_CE_GZIP) : PUSH(o, S_CE_ZSTD);
    ok &= PUSH(o, S_CHUNKED);
    for (uint16_t i = 0; i < r->nheaders; i++) {
        const struct h1_header *h = &r->h[i];
        bool etag = false;
        if (h->name_len == 4 && cz_drops(base, h, &etag) && etag) {
            ok &= PUSH(o, S_WEAK);
            ok &= out_push(o, base + h->value_off, h->value_len);
            ok &= PUSH(o, S_CRLF);
        }
    }
    return ok;
}

/* ---- the body ------------------------------------------------------------------ */

/* Feed (or, with in NULL, flush or finish) the stream; the output goes to
 * out[*pos, cap). Returns 1 when a finish is complete, 0 otherwise, -1 on
 * a library error. The caller keeps the input small enough that it is
 * always taken whole (see cz_body). */
static int run(struct cz_slot *s, const uint8_t *in, size_t n, int mode, uint8_t *out,
               size_t *pos, size_t cap)
{
    if (s->alg == CZ_GZIP) {
        s->z.next_in = (Bytef *)in;
        s->z.avail_in = (uInt)n;
        s->z.next_out = out + *pos;
        s->z.avail_out = (uInt)(cap - *pos);
        int flush = mode == 0 ? Z_NO_FLUSH : mode == 1 ? Z_SYNC_FLUSH : Z_FINISH;
        int rc = deflate(&s->z, flush);
        *pos = cap - s->z.avail_out;
        if (rc == Z_STREAM_END)
            return 1;
        if (rc != Z_OK && rc != Z_BUF_ERROR)
            return -1;
        return s->z.avail_in ? -1 : 0;
    }
    ZSTD_inBuffer ib = { in, n, 0 };
    ZSTD_outBuffer ob = { out, cap, *pos };
    ZSTD_EndDirective d = mode == 0 ? ZSTD_e_continue : mode == 1 ? ZSTD_e_flush : ZSTD_e_end;
    size_t left;
    do {
        left = ZSTD_compressStream2(s->zc, &ob, &ib, d);
        if (ZSTD_isError(left))
            return -1;
    } while (ib.pos < ib.size && ob.pos < ob.size);
    *pos = ob.pos;
    if (ib.pos < ib.size)
        return -1;
    return d == ZSTD_e_end && left == 0 ? 1 : 0;
}

/* Input a round may take so that its output, flush and end included,
 * always fits in CZ_OUT: deflate and zstd expand incompressible data by
 * well under 1/16 (stored blocks: 5 bytes per 16 KiB for deflate, 3 per
 * 128 KiB for zstd), plus headers and trailers of a few dozen bytes. */
#define CZ_IN_BUDGET (CZ_OUT - CZ_OUT / 16 - 512)

int cz_body(struct worker *w, struct txn *t)
{
    struct cz_slot *s = &w->pol->cz->slots[t->cz_slot - 1];
    struct out *o = &t->resp;
    const struct conn *u = &w->conns[t->up];
    uint8_t *out = s->out + CZ_HEAD;
    size_t pos = 0, taken = 0;
    uint64_t in0 = 0;
    while (!s->in_done && taken < CZ_IN_BUDGET) {
        const uint8_t *p;
        uint32_t avail = txn_cur_avail(w, u, &t->resp_bid, &t->resp_off, &p);
        if (!avail)
            break;
        size_t room = CZ_IN_BUDGET - taken, used, doff = 0, dlen;
        if (t->resp_body == H1_BODY_LENGTH) {
            used = avail < t->resp_left ? avail : (size_t)t->resp_left;
            if (used > room)
                used = room;
            dlen = used;
            t->resp_left -= used;
            s->in_done = t->resp_left == 0;
        } else {
            int d = 0;
            int64_t k = h1_chunked_data(&t->resp_ck, p, avail, room, &doff, &dlen, &d);
            if (k < 0)
                return -1;
            used = (size_t)k;
            s->in_done = d != 0;
        }
        if (dlen && run(s, p + doff, dlen, 0, out, &pos, CZ_OUT) < 0)
            return -2;
        taken += dlen;
        in0 += dlen;
        t->resp_off += (uint32_t)used;
        t->bytes_out += used;
        if (!used)
            break;
    }
    bool ended = false;
    if (s->in_done) {
        int rc = run(s, NULL, 0, 2, out, &pos, CZ_OUT);
        if (rc < 0)
            return -2;
        ended = rc == 1;                  /* else: the rest next round */
    } else if (taken && run(s, NULL, 0, 1, out, &pos, CZ_OUT) < 0) {
        return -2;
    }
    w->c[UP_C_COMPRESS_BYTES_IN] += in0;
    w->c[UP_C_COMPRESS_BYTES_OUT] += pos;
    bool ok = true;
    if (pos) {
        /* "<hex size>\r\n" just before the data, "\r\n" after it. */
        char hex[16];
        int k = 0;
        for (size_t v = pos; v; v >>= 4)
            hex[k++] = "0123456789abcdef"[v & 15];
        uint8_t *h = out - 2 - k;
        for (int i = 0; i < k; i++)
            h[i] = (uint8_t)hex[k - 1 - i];
        out[-2] = '\r';
        out[-1] = '\n';
        out[pos] = '\r';
        out[pos + 1] = '\n';
        ok &= out_push(o, h, (size_t)(out + pos + 2 - h));
    }
    if (ended) {
        ok &= PUSH(o, S_LAST);
        if (!rs_all_in(t->rs))
            h1_resp_step(&t->rs, RSE_ALL_IN);
    }
    o->rel_bid = t->resp_bid;
    o->rel_off = t->resp_off;
    return ok ? 0 : -2;
}
