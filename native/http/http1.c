/*
 * Strict HTTP/1.1 message heads and chunked framing (RFC 9112, RFC 9110):
 * the implementation of http1_api.h.
 *
 * Pure functions over bytes: no I/O, no allocation, no writable globals, no
 * callbacks, no locale. Each head parser makes one forward pass over the
 * bytes received so far; on H1_PARTIAL the caller calls again from the same
 * start with more bytes (a head is at most max_head bytes, so the repeated
 * work is bounded). Character classes come from one constant table, and the
 * long runs (request-target, field values) are skipped 16 bytes at a time
 * with SSE2 where the compiler targets it.
 *
 * What is accepted and rejected, with which status, is listed in
 * docs/http-parser.md.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "http/http1_api.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define LIKELY(x)   __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Character classes. */
enum {
    C_TCHAR  = 0x01,    /* token character (RFC 9110 5.6.2) */
    C_VALUE  = 0x02,    /* field-value byte: HTAB, SP, VCHAR, obs-text */
    C_VIS    = 0x04,    /* VCHAR (0x21-0x7e): request-target */
    C_HEX    = 0x08,
    C_DIGIT  = 0x10,
    C_QDTEXT = 0x20,    /* qdtext of a quoted-string */
    C_SCHEME = 0x40,    /* ALPHA / DIGIT / "+" / "-" / "." */
    C_OWS    = 0x80     /* SP, HTAB */
};

static const uint8_t cls[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xa2, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  /* 0x00 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  /* 0x10 */
    0xa2, 0x27, 0x06, 0x27, 0x27, 0x27, 0x27, 0x27, 0x26, 0x26, 0x27, 0x67, 0x26, 0x67, 0x67, 0x26,  /* 0x20 */
    0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x26, 0x26, 0x26, 0x26, 0x26, 0x26,  /* 0x30 */
    0x26, 0x6f, 0x6f, 0x6f, 0x6f, 0x6f, 0x6f, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67,  /* 0x40 */
    0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x26, 0x06, 0x26, 0x27, 0x27,  /* 0x50 */
    0x27, 0x6f, 0x6f, 0x6f, 0x6f, 0x6f, 0x6f, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67,  /* 0x60 */
    0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x26, 0x27, 0x26, 0x27, 0x00,  /* 0x70 */
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,  /* 0x80 */
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,  /* 0x90 */
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,  /* 0xa0 */
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,  /* 0xb0 */
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,  /* 0xc0 */
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,  /* 0xd0 */
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,  /* 0xe0 */
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,  /* 0xf0 */
};

#define IS(c, k) (cls[(uint8_t)(c)] & (k))

_Static_assert(sizeof(((struct h1_request *)0)->h) / sizeof(struct h1_header) == H1_MAX_HEADERS,
               "h1_request.h[] holds H1_MAX_HEADERS");
_Static_assert(sizeof(((struct h1_response *)0)->h) / sizeof(struct h1_header) == H1_MAX_HEADERS,
               "h1_response.h[] holds H1_MAX_HEADERS");

#define DEF_MAX_HEAD   16384u
#define DEF_MAX_TARGET 8192u
#define CL_MAX         (UINT64_C(1) << 62)   /* largest Content-Length */
#define NO_HOST        0xffff

/* ASCII lower case (never the locale's). */
static inline uint8_t lc(uint8_t c)
{
    return (uint8_t)(c + (((unsigned)c - 'A' < 26u) << 5));
}

/* Case-insensitive comparison of n bytes with a lower-case literal made of
 * letters, digits and "-". OR-ing 0x20 is exact here: the only other bytes
 * that map onto those characters are their upper case and the control
 * bytes 0x0d and 0x10-0x19, which the callers never pass (names and tokens
 * are tchars, field values exclude controls but HTAB). */
static inline int ieq(const uint8_t *p, const char *lit, size_t n)
{
    if (n >= 8) {
        /* 8-byte words; the last one may overlap the one before. */
        const uint64_t low = 0x2020202020202020ull;
        uint64_t a, x;
        for (size_t i = 0; i + 8 < n; i += 8) {
            memcpy(&a, p + i, 8);
            memcpy(&x, lit + i, 8);
            if ((a | low) != x)
                return 0;
        }
        memcpy(&a, p + n - 8, 8);
        memcpy(&x, lit + n - 8, 8);
        return (a | low) == x;
    }
    for (size_t i = 0; i < n; i++)
        if ((uint8_t)(p[i] | 0x20) != (uint8_t)lit[i])
            return 0;
    return 1;
}

/* Case-insensitive comparison of two tokens. */
static inline int tok_eq(const uint8_t *a, const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lc(a[i]) != lc(b[i]))
            return 0;
    return 1;
}

/* Skips field-value bytes (HTAB, SP, VCHAR, obs-text); stops at the first
 * other byte, or at end. */
static inline const uint8_t *skip_value(const uint8_t *p, const uint8_t *end)
{
#ifdef __SSE2__
    const __m128i c1f = _mm_set1_epi8(0x1f), del = _mm_set1_epi8(0x7f);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(x, c1f), x);      /* <= 0x1f */
        int m = _mm_movemask_epi8(_mm_or_si128(ctl, _mm_cmpeq_epi8(x, del)));
        if (LIKELY(m == 0)) {
            p += 16;
            continue;
        }
        p += __builtin_ctz((unsigned)m);
        if (*p != '\t')
            return p;
        p++;
    }
#endif
    while (p < end && IS(*p, C_VALUE))
        p++;
    return p;
}

/* Skips VCHAR bytes (request-target); stops at the first other byte, or
 * at end. */
static inline const uint8_t *skip_vis(const uint8_t *p, const uint8_t *end)
{
#ifdef __SSE2__
    const __m128i sp = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7f);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i lo = _mm_cmpeq_epi8(_mm_min_epu8(x, sp), x);        /* <= 0x20 */
        __m128i hi = _mm_cmpeq_epi8(_mm_max_epu8(x, del), x);       /* >= 0x7f */
        int m = _mm_movemask_epi8(_mm_or_si128(lo, hi));
        if (m)
            return p + __builtin_ctz((unsigned)m);
        p += 16;
    }
#endif
    while (p < end && IS(*p, C_VIS))
        p++;
    return p;
}

/* Skips token characters; stops at the first other byte, or at end. */
static inline const uint8_t *skip_token(const uint8_t *p, const uint8_t *end)
{
    while (end - p >= 4 && IS(p[0], C_TCHAR) && IS(p[1], C_TCHAR) && IS(p[2], C_TCHAR) &&
           IS(p[3], C_TCHAR))
        p += 4;
    while (p < end && IS(*p, C_TCHAR))
        p++;
    return p;
}

/* The next element of a comma-separated list of tokens in [*qp, ve),
 * skipping OWS and empty elements (RFC 9110 5.6.1). Returns the token's
 * length with its start in *tok, 0 at the end of the list, or -1 when an
 * element is not a single token. */
static inline ptrdiff_t list_next(const uint8_t **qp, const uint8_t *ve, const uint8_t **tok)
{
    const uint8_t *q = *qp;
    for (;;) {
        while (q < ve && IS(*q, C_OWS))
            q++;
        if (q == ve) {
            *qp = q;
            return 0;
        }
        if (*q != ',')
            break;
        q++;
    }
    const uint8_t *s = q;
    while (q < ve && IS(*q, C_TCHAR))
        q++;
    if (q == s)
        return -1;
    const uint8_t *e = q;
    while (q < ve && IS(*q, C_OWS))
        q++;
    if (q < ve) {
        if (*q != ',')
            return -1;
        q++;
    }
    *tok = s;
    *qp = q;
    return e - s;
}

/* Header names the parser acts on. */
enum hname {
    HN_OTHER, HN_HOST, HN_CONTENT_LENGTH, HN_TRANSFER_ENCODING, HN_CONNECTION,
    HN_KEEP_ALIVE, HN_PROXY_CONNECTION, HN_TE, HN_TRAILER, HN_UPGRADE,
    HN_XFF, HN_XF_PROTO, HN_XF_HOST, HN_EXPECT
};

static inline enum hname classify(const uint8_t *n, size_t len)
{
    uint8_t c = n[0] | 0x20;
    switch (len) {
    case 2:
        if (c == 't' && ieq(n, "te", 2)) return HN_TE;
        break;
    case 4:
        if (c == 'h' && ieq(n, "host", 4)) return HN_HOST;
        break;
    case 6:
        if (c == 'e' && ieq(n, "expect", 6)) return HN_EXPECT;
        break;
    case 7:
        if (c == 'u' && ieq(n, "upgrade", 7)) return HN_UPGRADE;
        if (c == 't' && ieq(n, "trailer", 7)) return HN_TRAILER;
        break;
    case 10:
        if (c == 'c' && ieq(n, "connection", 10)) return HN_CONNECTION;
        if (c == 'k' && ieq(n, "keep-alive", 10)) return HN_KEEP_ALIVE;
        break;
    case 14:
        if (c == 'c' && ieq(n, "content-length", 14)) return HN_CONTENT_LENGTH;
        break;
    case 15:
        if (c == 'x' && ieq(n, "x-forwarded-for", 15)) return HN_XFF;
        break;
    case 16:
        if (c == 'x' && ieq(n, "x-forwarded-host", 16)) return HN_XF_HOST;
        if (c == 'p' && ieq(n, "proxy-connection", 16)) return HN_PROXY_CONNECTION;
        break;
    case 17:
        if (c == 't' && ieq(n, "transfer-encoding", 17)) return HN_TRANSFER_ENCODING;
        if (c == 'x' && ieq(n, "x-forwarded-proto", 17)) return HN_XF_PROTO;
        break;
    default:
        break;
    }
    return HN_OTHER;
}

/* What the field section says, gathered in one pass. Statuses are those
 * of a request; the response parser turns every error into 502. */
struct fields {
    /* in */
    uint8_t resp;             /* a response */
    uint8_t minor;            /* HTTP/1.<minor> */
    uint8_t empty_host_bad;   /* an empty Host is an error */
    uint8_t pad;
    uint32_t max_headers;
    /* out */
    uint32_t head_end;        /* offset past the empty line */
    uint16_t nheaders;
    uint16_t host;            /* index of Host, or NO_HOST */
    uint8_t cl;               /* a Content-Length line was seen */
    uint8_t te;               /* a Transfer-Encoding line was seen */
    uint8_t te_chunked;       /* chunked is among the codings */
    uint8_t te_last_chunked;  /* ... and is the last so far */
    uint8_t conn_close, conn_keep_alive, conn_upgrade, conn_other;
    uint8_t has_upgrade, expect_continue;
    uint16_t status;          /* on H1_ERROR */
    uint64_t content_length;
    const char *error;
};

#define FIELD_FAIL(st, msg) do { f->status = (st); f->error = (msg); return H1_ERROR; } while (0)

/* Parses field lines from p up to and including the empty line that ends
 * the head, filling hs[]. */
static int parse_fields(const uint8_t *buf, const uint8_t *p, const uint8_t *end,
                        struct fields *f, struct h1_header *hs)
{
    uint32_t n = 0;
    for (;;) {
        if (UNLIKELY(p >= end))
            goto partial;
        const uint8_t *ls = p;
        if (*p == '\r') {
            if (p + 1 >= end)
                goto partial;
            if (p[1] != '\n')
                FIELD_FAIL(400, "bare CR in header section");
            p += 2;
            break;
        }
        if (UNLIKELY(n >= f->max_headers))
            FIELD_FAIL(431, "too many header lines");
        /* field-name */
        p = skip_token(p, end);
        if (UNLIKELY(p >= end))
            goto partial;
        if (UNLIKELY(*p != ':')) {
            if (p == ls) {
                if (*p == '\n')
                    FIELD_FAIL(400, "bare LF in header section");
                if (IS(*p, C_OWS))
                    FIELD_FAIL(400, "obs-fold or whitespace at the start of a header line");
            }
            if (IS(*p, C_OWS))
                FIELD_FAIL(400, "whitespace between field name and colon");
            if (*p == '\r' || *p == '\n')
                FIELD_FAIL(400, "header line without colon");
            FIELD_FAIL(400, "invalid character in field name");
        }
        if (UNLIKELY(p == ls))
            FIELD_FAIL(400, "empty field name");
        size_t name_len = (size_t)(p - ls);
        if (UNLIKELY(name_len > 0xffff))
            FIELD_FAIL(431, "field name too long");
        p++;
        /* field-value, without the OWS around it */
        while (p < end && IS(*p, C_OWS))
            p++;
        const uint8_t *vs = p;
        p = skip_value(p, end);
        if (UNLIKELY(p >= end))
            goto partial;
        if (UNLIKELY(*p != '\r')) {
            if (*p == '\n')
                FIELD_FAIL(400, "bare LF in header section");
            FIELD_FAIL(400, "control byte in field value");
        }
        if (UNLIKELY(p + 1 >= end))
            goto partial;
        if (UNLIKELY(p[1] != '\n'))
            FIELD_FAIL(400, "bare CR in header section");
        const uint8_t *ve = p;
        while (ve > vs && IS(ve[-1], C_OWS))
            ve--;
        p += 2;

        struct h1_header *h = &hs[n];
        h->name_off = (uint32_t)(ls - buf);
        h->name_len = (uint16_t)name_len;
        h->value_off = (uint32_t)(vs - buf);
        h->value_len = (uint32_t)(ve - vs);
        h->line_off = (uint32_t)(ls - buf);
        h->line_len = (uint32_t)(p - ls);
        h->flags = 0;

        const uint8_t *q, *t;
        ptrdiff_t tl;
        switch (classify(ls, name_len)) {
        case HN_OTHER:
            break;
        case HN_HOST:
            h->flags = H1_HF_HOST;
            if (f->resp)
                break;                /* Host means nothing in a response */
            if (f->host != NO_HOST)
                FIELD_FAIL(400, "more than one Host");
            f->host = (uint16_t)n;
            if (vs == ve && f->empty_host_bad)
                FIELD_FAIL(400, "empty Host");
            if (memchr(vs, ' ', (size_t)(ve - vs)) || memchr(vs, '\t', (size_t)(ve - vs)))
                FIELD_FAIL(400, "whitespace in Host");
            break;
        case HN_CONTENT_LENGTH: {
            h->flags = H1_HF_FRAMING;
            if (f->cl)
                FIELD_FAIL(400, "repeated Content-Length");
            f->cl = 1;
            if (vs == ve)
                FIELD_FAIL(400, "empty Content-Length");
            uint64_t v = 0;
            for (q = vs; q < ve; q++) {
                if (!IS(*q, C_DIGIT))
                    FIELD_FAIL(400, "invalid Content-Length");
                unsigned d = (unsigned)(*q - '0');
                if (v > (CL_MAX - d) / 10)
                    FIELD_FAIL(400, "Content-Length too large");
                v = v * 10 + d;
            }
            f->content_length = v;
            break;
        }
        case HN_TRANSFER_ENCODING:
            h->flags = H1_HF_FRAMING;
            if (f->minor == 0)
                FIELD_FAIL(400, "Transfer-Encoding in an HTTP/1.0 message");
            f->te = 1;
            q = vs;
            while ((tl = list_next(&q, ve, &t)) != 0) {
                if (tl < 0)
                    FIELD_FAIL(400, "invalid Transfer-Encoding");
                if (tl == 7 && ieq(t, "chunked", 7)) {
                    if (f->te_chunked)
                        FIELD_FAIL(400, "chunked applied more than once");
                    f->te_chunked = 1;
                    f->te_last_chunked = 1;
                    continue;
                }
                f->te_last_chunked = 0;
                if (f->resp)
                    continue;     /* the client decodes what it asked for */
                if ((tl == 4 && ieq(t, "gzip", 4)) || (tl == 6 && ieq(t, "x-gzip", 6)) ||
                    (tl == 7 && ieq(t, "deflate", 7)) || (tl == 8 && ieq(t, "compress", 8)) ||
                    (tl == 10 && ieq(t, "x-compress", 10)))
                    continue;
                FIELD_FAIL(501, "unknown transfer coding");
            }
            break;
        case HN_CONNECTION:
            h->flags = H1_HF_HOP;
            q = vs;
            while ((tl = list_next(&q, ve, &t)) != 0) {
                if (tl < 0)
                    FIELD_FAIL(400, "invalid Connection");
                if (tl == 5 && ieq(t, "close", 5))
                    f->conn_close = 1;
                else if (tl == 10 && ieq(t, "keep-alive", 10))
                    f->conn_keep_alive = 1;
                else if (tl == 7 && ieq(t, "upgrade", 7))
                    f->conn_upgrade = 1;
                else
                    f->conn_other = 1;
            }
            break;
        case HN_KEEP_ALIVE:
        case HN_PROXY_CONNECTION:
        case HN_TE:
        case HN_TRAILER:
            h->flags = H1_HF_HOP;
            break;
        case HN_UPGRADE:
            h->flags = H1_HF_HOP | H1_HF_UPGRADE;
            f->has_upgrade = 1;
            break;
        case HN_XFF:
            h->flags = H1_HF_XFF;
            break;
        case HN_XF_PROTO:
        case HN_XF_HOST:
            h->flags = H1_HF_XF_OTHER;
            break;
        case HN_EXPECT:
            /* RFC 9110 10.1.1: ignored in an HTTP/1.0 request */
            if (!f->resp && f->minor == 1 && ve - vs == 12 && ieq(vs, "100-continue", 12))
                f->expect_continue = 1;
            break;
        }
        n++;
    }
    f->nheaders = (uint16_t)n;
    f->head_end = (uint32_t)(p - buf);
    return H1_DONE;
partial:
    f->nheaders = (uint16_t)n;
    return H1_PARTIAL;
}

/* Second pass, only when Connection named other options: the header lines
 * they name become hop-by-hop. Host and the framing headers never do: a
 * client must not be able to strip them between the proxy and the server. */
static void mark_connection_options(const uint8_t *buf, struct h1_header *hs, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        if (hs[i].name_len != 10 || !ieq(buf + hs[i].name_off, "connection", 10))
            continue;
        const uint8_t *q = buf + hs[i].value_off, *ve = q + hs[i].value_len, *t;
        ptrdiff_t tl;
        while ((tl = list_next(&q, ve, &t)) > 0) {
            if ((tl == 5 && ieq(t, "close", 5)) || (tl == 10 && ieq(t, "keep-alive", 10)) ||
                (tl == 7 && ieq(t, "upgrade", 7)))
                continue;
            for (uint32_t j = 0; j < n; j++)
                if (hs[j].name_len == tl && !(hs[j].flags & (H1_HF_HOST | H1_HF_FRAMING)) &&
                    tok_eq(buf + hs[j].name_off, t, (size_t)tl))
                    hs[j].flags |= H1_HF_HOP;
        }
    }
}

/* "HTTP/" DIGIT "." DIGIT at p: 1 when complete (*minor set, *ok when the
 * version is 1.0 or 1.1), 0 when more bytes are needed, -1 if malformed. */
static inline int parse_version(const uint8_t *p, const uint8_t *end, uint8_t *minor, int *ok)
{
    if (LIKELY(end - p >= 8)) {
        if (LIKELY(memcmp(p, "HTTP/1.1", 8) == 0)) {
            *minor = 1;
            *ok = 1;
            return 1;
        }
        if (memcmp(p, "HTTP/1.0", 8) == 0) {
            *minor = 0;
            *ok = 1;
            return 1;
        }
    }
    static const char pat[] = "HTTP/0.0";
    size_t avail = (size_t)(end - p) < 8 ? (size_t)(end - p) : 8;
    for (size_t i = 0; i < avail; i++) {
        if (i == 5 || i == 7) {
            if (!IS(p[i], C_DIGIT))
                return -1;
        } else if (p[i] != (uint8_t)pat[i]) {
            return -1;
        }
    }
    if (avail < 8)
        return 0;
    *minor = (uint8_t)(p[7] - '0');
    *ok = 0;
    return 1;
}

static inline uint8_t method_of(const uint8_t *m, size_t len)
{
    switch (len) {
    case 3:
        if (memcmp(m, "GET", 3) == 0) return H1_M_GET;
        if (memcmp(m, "PUT", 3) == 0) return H1_M_PUT;
        break;
    case 4:
        if (memcmp(m, "POST", 4) == 0) return H1_M_POST;
        if (memcmp(m, "HEAD", 4) == 0) return H1_M_HEAD;
        break;
    case 5:
        if (memcmp(m, "PATCH", 5) == 0) return H1_M_PATCH;
        if (memcmp(m, "TRACE", 5) == 0) return H1_M_TRACE;
        break;
    case 6:
        if (memcmp(m, "DELETE", 6) == 0) return H1_M_DELETE;
        break;
    case 7:
        if (memcmp(m, "OPTIONS", 7) == 0) return H1_M_OPTIONS;
        if (memcmp(m, "CONNECT", 7) == 0) return H1_M_CONNECT;
        break;
    default:
        break;
    }
    return H1_M_OTHER;
}

/* authority-form (CONNECT): uri-host ":" port, with no userinfo, path,
 * query or fragment, and a port of 1 to 5 digits. */
static int authority_form(const uint8_t *t, size_t n)
{
    size_t colon = n;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = t[i];
        if (c == '/' || c == '?' || c == '#' || c == '@')
            return 0;
        if (c == ':')
            colon = i;
    }
    if (colon == 0 || colon >= n - 1 || n - 1 - colon > 5)
        return 0;
    for (size_t i = colon + 1; i < n; i++)
        if (!IS(t[i], C_DIGIT))
            return 0;
    if (t[0] == '[' && t[colon - 1] != ']')
        return 0;
    return 1;
}

/* absolute-form: scheme "://" ... */
static int absolute_form(const uint8_t *t, size_t n)
{
    size_t i = 1;
    if (!((unsigned)(t[0] | 0x20) - 'a' < 26u))
        return 0;
    while (i < n && IS(t[i], C_SCHEME))
        i++;
    return n - i >= 3 && t[i] == ':' && t[i + 1] == '/' && t[i + 2] == '/';
}

#define REQ_FAIL(st, msg) do { out->error_status = (st); out->error = (msg); return H1_ERROR; } while (0)

int h1_parse_request(const uint8_t *buf, size_t len, const struct h1_limits *lim,
                     struct h1_request *out)
{
    uint32_t max_head = lim && lim->max_head ? lim->max_head : DEF_MAX_HEAD;
    uint32_t max_target = lim && lim->max_target ? lim->max_target : DEF_MAX_TARGET;
    uint32_t max_headers = lim && lim->max_headers ? lim->max_headers : H1_DEF_HEADERS;
    if (max_headers > H1_MAX_HEADERS)
        max_headers = H1_MAX_HEADERS;
    const uint8_t *p = buf, *end = buf + (len < max_head ? len : max_head);

    out->error = NULL;
    out->error_status = 0;
    out->nheaders = 0;

    /* Empty lines before the request line (RFC 9112 2.2). */
    for (;;) {
        if (p >= end)
            goto partial;
        if (*p == '\r') {
            if (p + 1 >= end)
                goto partial;
            if (p[1] != '\n')
                REQ_FAIL(400, "bare CR before the request line");
            p += 2;
            continue;
        }
        if (*p == '\n')
            REQ_FAIL(400, "bare LF before the request line");
        break;
    }
    const uint8_t *ls = p;

    /* method SP */
    p = skip_token(p, end);
    if (p >= end)
        goto partial;
    if (UNLIKELY(*p != ' ' || p == ls))
        REQ_FAIL(400, p == ls ? "empty method" : "invalid character in method");
    size_t method_len = (size_t)(p - ls);
    p++;

    /* request-target SP */
    const uint8_t *ts = p;
    const uint8_t *tlim = (size_t)(end - ts) > max_target ? ts + max_target : end;
    p = skip_vis(p, tlim);
    if (p == tlim && tlim != end && IS(*p, C_VIS))
        REQ_FAIL(414, "request-target too long");
    if (p >= end)
        goto partial;
    if (UNLIKELY(*p != ' ')) {
        if (*p == '\r' || *p == '\n')
            REQ_FAIL(400, "request line without HTTP version");
        REQ_FAIL(400, "invalid character in request-target");
    }
    if (UNLIKELY(p == ts))
        REQ_FAIL(400, "empty request-target");
    size_t target_len = (size_t)(p - ts);
    p++;

    /* HTTP-version CRLF */
    uint8_t minor;
    int version_ok;
    int v = parse_version(p, end, &minor, &version_ok);
    if (v <= 0) {
        if (v == 0)
            goto partial;
        REQ_FAIL(400, "malformed HTTP version");
    }
    p += 8;
    if (p >= end)
        goto partial;
    if (UNLIKELY(*p != '\r')) {
        if (*p == '\n')
            REQ_FAIL(400, "bare LF in request line");
        REQ_FAIL(400, "malformed HTTP version");
    }
    if (p + 1 >= end)
        goto partial;
    if (UNLIKELY(p[1] != '\n'))
        REQ_FAIL(400, "bare CR in request line");
    p += 2;
    if (UNLIKELY(!version_ok))
        REQ_FAIL(505, "HTTP version not supported");

    uint8_t method = method_of(ls, method_len);
    uint8_t form;
    if (UNLIKELY(method == H1_M_CONNECT)) {
        if (!authority_form(ts, target_len))
            REQ_FAIL(400, "CONNECT without an authority-form target");
        form = H1_T_AUTHORITY;
    } else if (LIKELY(*ts == '/')) {
        form = H1_T_ORIGIN;
    } else if (target_len == 1 && *ts == '*') {
        if (method != H1_M_OPTIONS)
            REQ_FAIL(400, "asterisk-form target outside OPTIONS");
        form = H1_T_ASTERISK;
    } else if (absolute_form(ts, target_len)) {
        form = H1_T_ABSOLUTE;
    } else {
        REQ_FAIL(400, "invalid request-target");
    }

    out->skip = (uint32_t)(ls - buf);
    out->line_len = (uint32_t)(p - ls);
    out->method = method;
    out->minor = minor;
    out->target_form = form;
    out->method_off = (uint32_t)(ls - buf);
    out->method_len = (uint32_t)method_len;
    out->target_off = (uint32_t)(ts - buf);
    out->target_len = (uint32_t)target_len;

    struct fields f;
    memset(&f, 0, sizeof f);
    f.minor = minor;
    f.empty_host_bad = minor == 1 && (form == H1_T_ORIGIN || form == H1_T_ASTERISK);
    f.max_headers = max_headers;
    f.host = NO_HOST;
    int rc = parse_fields(buf, p, end, &f, out->h);
    out->nheaders = f.nheaders;
    if (rc != H1_DONE) {
        if (rc == H1_PARTIAL)
            goto partial;
        REQ_FAIL(f.status, f.error);
    }

    if (f.host == NO_HOST && minor == 1)
        REQ_FAIL(400, "HTTP/1.1 request without Host");
    if (f.te) {
        if (f.cl)
            REQ_FAIL(400, "both Transfer-Encoding and Content-Length");
        if (!f.te_last_chunked)
            REQ_FAIL(400, "Transfer-Encoding does not end in chunked");
        out->body = H1_BODY_CHUNKED;
        out->content_length = 0;
    } else {
        out->body = f.content_length ? H1_BODY_LENGTH : H1_BODY_NONE;
        out->content_length = f.content_length;
    }
    if (UNLIKELY(f.conn_other))
        mark_connection_options(buf, out->h, f.nheaders);
    out->keep_alive = !f.conn_close && (minor == 1 || f.conn_keep_alive);
    out->upgrade = f.conn_upgrade && f.has_upgrade;
    out->expect_continue = f.expect_continue;
    out->host = f.host;
    out->head_len = f.head_end;
    return H1_DONE;

partial:
    if (len >= max_head)
        REQ_FAIL(431, "request head larger than max_head");
    return H1_PARTIAL;
}

#define RESP_FAIL(msg) do { out->error_status = 502; out->error = (msg); return H1_ERROR; } while (0)

int h1_parse_response(const uint8_t *buf, size_t len, const struct h1_limits *lim,
                      uint8_t request_method, struct h1_response *out)
{
    uint32_t max_head = lim && lim->max_head ? lim->max_head : DEF_MAX_HEAD;
    uint32_t max_headers = lim && lim->max_headers ? lim->max_headers : H1_DEF_HEADERS;
    if (max_headers > H1_MAX_HEADERS)
        max_headers = H1_MAX_HEADERS;
    const uint8_t *p = buf, *end = buf + (len < max_head ? len : max_head);

    out->error = NULL;
    out->error_status = 0;
    out->nheaders = 0;
    out->skip = 0;

    /* Empty lines before the status line are ignored, as RFC 9112 2.2 asks
     * of a request line (nginx, HAProxy and llhttp do it for status lines
     * too): an upstream that ends a 1xx or a body with one CRLF too many is
     * still understood. CRLF only, bounded by max_head like the rest. */
    while (p < end && *p == '\r') {
        if (p + 1 >= end)
            goto partial;
        if (p[1] != '\n')
            RESP_FAIL("bare CR before the status line");
        p += 2;
    }
    if (p < end && *p == '\n')
        RESP_FAIL("bare LF before the status line");
    const uint8_t *ls = p;

    /* HTTP-version SP 3DIGIT [SP reason-phrase] CRLF */
    uint8_t minor;
    int version_ok;
    int v = parse_version(p, end, &minor, &version_ok);
    if (v <= 0) {
        if (v == 0)
            goto partial;
        RESP_FAIL("malformed status line");
    }
    p += 8;
    if (p >= end)
        goto partial;
    if (*p != ' ')
        RESP_FAIL("malformed status line");
    p++;
    unsigned status = 0;
    for (int i = 0; i < 3; i++, p++) {
        if (p >= end)
            goto partial;
        if (!IS(*p, C_DIGIT))
            RESP_FAIL("malformed status code");
        status = status * 10 + (unsigned)(*p - '0');
    }
    if (p >= end)
        goto partial;
    if (*p == ' ')
        p = skip_value(p + 1, end);
    if (p >= end)
        goto partial;
    if (UNLIKELY(*p != '\r')) {
        if (*p == '\n')
            RESP_FAIL("bare LF in status line");
        RESP_FAIL(IS(*p, C_DIGIT) ? "malformed status code" : "invalid byte in status line");
    }
    if (p + 1 >= end)
        goto partial;
    if (p[1] != '\n')
        RESP_FAIL("bare CR in status line");
    p += 2;
    if (!version_ok)
        RESP_FAIL("unsupported HTTP version in response");
    if (status < 100 || status > 599)
        RESP_FAIL("status code out of range");
    out->skip = (uint32_t)(ls - buf);
    out->line_len = (uint32_t)(p - ls);
    out->status = (uint16_t)status;
    out->minor = minor;

    struct fields f;
    memset(&f, 0, sizeof f);
    f.resp = 1;
    f.minor = minor;
    f.max_headers = max_headers;
    f.host = NO_HOST;
    int rc = parse_fields(buf, p, end, &f, out->h);
    out->nheaders = f.nheaders;
    if (rc != H1_DONE) {
        if (rc == H1_PARTIAL)
            goto partial;
        RESP_FAIL(f.error);
    }

    /* RFC 9112 6.3 */
    if (f.te && f.cl)
        RESP_FAIL("both Transfer-Encoding and Content-Length");
    uint8_t body;
    if (status == 101)
        body = H1_BODY_TUNNEL;
    else if (request_method == H1_M_HEAD || status < 200 || status == 204 || status == 304)
        body = H1_BODY_NONE;
    else if (request_method == H1_M_CONNECT && status < 300)
        body = H1_BODY_TUNNEL;
    else if (f.te)
        body = f.te_last_chunked ? H1_BODY_CHUNKED : H1_BODY_CLOSE;
    else if (f.cl)
        body = f.content_length ? H1_BODY_LENGTH : H1_BODY_NONE;
    else
        body = H1_BODY_CLOSE;
    if (UNLIKELY(f.conn_other))
        mark_connection_options(buf, out->h, f.nheaders);
    out->body = body;
    out->content_length = f.content_length;
    out->keep_alive = !f.conn_close && (minor == 1 || f.conn_keep_alive) &&
                      body != H1_BODY_CLOSE && body != H1_BODY_TUNNEL;
    out->head_len = f.head_end;
    return H1_DONE;

partial:
    if (len >= max_head)
        RESP_FAIL("response head larger than max_head");
    return H1_PARTIAL;
}

/* ---- chunked framing (RFC 9112 7.1) ---------------------------------- */

enum chunked_state {
    CS_SIZE0,         /* the first digit of chunk-size */
    CS_SIZE,          /* more digits */
    CS_EXT_BWS,       /* BWS after size or extension: only ";" may follow */
    CS_EXT_NAME0,     /* after ";": BWS, then the extension name */
    CS_EXT_NAME,
    CS_EXT_NAME_BWS,  /* BWS after the name: "=" or ";" follows */
    CS_EXT_VAL0,      /* after "=": BWS, then a token or a quoted-string */
    CS_EXT_VAL_TOK,
    CS_EXT_QS,
    CS_EXT_QS_ESC,
    CS_EXT_VAL_END,   /* after the closing quote */
    CS_SIZE_LF,
    CS_DATA,
    CS_DATA_CR,
    CS_DATA_LF,
    CS_TR_LINE0,      /* the start of a trailer line, or the final CRLF */
    CS_TR_NAME,
    CS_TR_VALUE,
    CS_TR_LF,
    CS_END_LF,
    CS_DONE,
    CS_ERROR
};

#define MAX_SIZE_LINE   4096u     /* bytes of a chunk-size line before its CRLF */
#define MAX_TRAILER     16384u    /* bytes of the trailer section, final CRLF included */
#define MAX_SIZE_DIGITS 15u       /* significant hex digits of chunk-size */

void h1_chunked_init(struct h1_chunked *c)
{
    memset(c, 0, sizeof *c);
    c->state = CS_SIZE0;
    c->error = NULL;
}

int64_t h1_chunked_feed(struct h1_chunked *c, const uint8_t *buf, size_t len, int *done)
{
    const uint8_t *p = buf, *end = buf + len;
    uint32_t st = c->state;
    const char *err;

    *done = 0;
    if (st == CS_DONE) {
        *done = 1;
        return 0;
    }
    if (st == CS_ERROR)
        return -1;

    while (p < end) {
        if (st == CS_DATA) {
            size_t avail = (size_t)(end - p);
            size_t take = c->remaining < avail ? (size_t)c->remaining : avail;
            p += take;
            c->remaining -= take;
            if (c->remaining)
                break;
            st = CS_DATA_CR;
            continue;
        }
        uint8_t ch = *p++;
        if (st <= CS_SIZE_LF) {
            if (++c->line_len > MAX_SIZE_LINE + 2) {
                err = "chunk size line too long";
                goto fail;
            }
        } else if (st >= CS_TR_LINE0) {
            if (++c->trailer_len > MAX_TRAILER) {
                err = "trailer section too large";
                goto fail;
            }
        }
        switch (st) {
        case CS_SIZE0:
        case CS_SIZE:
            if (IS(ch, C_HEX)) {
                unsigned d = ch <= '9' ? (unsigned)(ch - '0') : (unsigned)((ch | 0x20) - 'a' + 10);
                if (c->remaining || d) {
                    if (++c->digits > MAX_SIZE_DIGITS) {
                        err = "chunk size too large";
                        goto fail;
                    }
                }
                c->remaining = (c->remaining << 4) | d;
                st = CS_SIZE;
                break;
            }
            if (st == CS_SIZE0) {
                err = "invalid chunk size";
                goto fail;
            }
            if (ch == '\r')
                st = CS_SIZE_LF;
            else if (ch == ';')
                st = CS_EXT_NAME0;
            else if (IS(ch, C_OWS))
                st = CS_EXT_BWS;
            else
                goto bad_size_line;
            break;
        case CS_EXT_BWS:
            if (ch == ';')
                st = CS_EXT_NAME0;
            else if (!IS(ch, C_OWS))
                goto bad_size_line;
            break;
        case CS_EXT_NAME0:
            if (IS(ch, C_TCHAR))
                st = CS_EXT_NAME;
            else if (!IS(ch, C_OWS))
                goto bad_size_line;
            break;
        case CS_EXT_NAME:
            if (IS(ch, C_TCHAR))
                break;
            if (ch == '\r')
                st = CS_SIZE_LF;
            else if (ch == ';')
                st = CS_EXT_NAME0;
            else if (ch == '=')
                st = CS_EXT_VAL0;
            else if (IS(ch, C_OWS))
                st = CS_EXT_NAME_BWS;
            else
                goto bad_size_line;
            break;
        case CS_EXT_NAME_BWS:
            if (ch == '=')
                st = CS_EXT_VAL0;
            else if (ch == ';')
                st = CS_EXT_NAME0;
            else if (!IS(ch, C_OWS))
                goto bad_size_line;
            break;
        case CS_EXT_VAL0:
            if (IS(ch, C_TCHAR))
                st = CS_EXT_VAL_TOK;
            else if (ch == '"')
                st = CS_EXT_QS;
            else if (!IS(ch, C_OWS))
                goto bad_size_line;
            break;
        case CS_EXT_VAL_TOK:
            if (IS(ch, C_TCHAR))
                break;
            /* fall through */
        case CS_EXT_VAL_END:
            if (ch == '\r')
                st = CS_SIZE_LF;
            else if (ch == ';')
                st = CS_EXT_NAME0;
            else if (IS(ch, C_OWS))
                st = CS_EXT_BWS;
            else
                goto bad_size_line;
            break;
        case CS_EXT_QS:
            if (ch == '"')
                st = CS_EXT_VAL_END;
            else if (ch == '\\')
                st = CS_EXT_QS_ESC;
            else if (!IS(ch, C_QDTEXT))
                goto bad_size_line;
            break;
        case CS_EXT_QS_ESC:
            if (!IS(ch, C_VALUE))
                goto bad_size_line;
            st = CS_EXT_QS;
            break;
        case CS_SIZE_LF:
            if (ch != '\n') {
                err = "bare CR in chunk size line";
                goto fail;
            }
            c->line_len = 0;
            c->digits = 0;
            if (c->remaining) {
                st = CS_DATA;
            } else {
                c->trailer_len = 0;
                st = CS_TR_LINE0;
            }
            break;
        case CS_DATA_CR:
            if (ch != '\r') {
                err = "chunk data not followed by CRLF";
                goto fail;
            }
            st = CS_DATA_LF;
            break;
        case CS_DATA_LF:
            if (ch != '\n') {
                err = "chunk data not followed by CRLF";
                goto fail;
            }
            st = CS_SIZE0;
            break;
        case CS_TR_LINE0:
            if (ch == '\r') {
                st = CS_END_LF;
            } else if (IS(ch, C_TCHAR)) {
                st = CS_TR_NAME;
            } else {
                err = ch == '\n' ? "bare LF in trailer section" :
                      IS(ch, C_OWS) ? "obs-fold in trailer section" :
                      "invalid trailer field name";
                goto fail;
            }
            break;
        case CS_TR_NAME:
            if (ch == ':') {
                st = CS_TR_VALUE;
            } else if (!IS(ch, C_TCHAR)) {
                err = IS(ch, C_OWS) ? "whitespace between trailer name and colon" :
                      "invalid trailer field name";
                goto fail;
            }
            break;
        case CS_TR_VALUE:
            if (ch == '\r') {
                st = CS_TR_LF;
            } else if (!IS(ch, C_VALUE)) {
                err = ch == '\n' ? "bare LF in trailer section" : "control byte in trailer value";
                goto fail;
            }
            break;
        case CS_TR_LF:
            if (ch != '\n') {
                err = "bare CR in trailer section";
                goto fail;
            }
            st = CS_TR_LINE0;
            break;
        case CS_END_LF:
            if (ch != '\n') {
                err = "bare CR in trailer section";
                goto fail;
            }
            c->state = CS_DONE;
            *done = 1;
            return p - buf;
        default:
            err = "invalid chunked state";
            goto fail;
        }
    }
    c->state = st;
    return p - buf;

bad_size_line:
    err = p[-1] == '\n' ? "bare LF in chunk size line" :
          st <= CS_SIZE ? "invalid chunk size" :
          st == CS_EXT_BWS ? "whitespace after chunk size without an extension" :
          "invalid chunk extension";
fail:
    c->state = CS_ERROR;
    c->error_status = 400;
    c->error = err;
    return -1;
}

int64_t h1_chunked_data(struct h1_chunked *c, const uint8_t *buf, size_t len, size_t max,
                        size_t *data_off, size_t *data_len, int *done)
{
    size_t used = 0;
    *data_off = *data_len = 0;
    *done = 0;
    while (used < len) {
        if (c->state == CS_DATA && c->remaining) {
            size_t take = len - used;
            if (take > c->remaining)
                take = (size_t)c->remaining;
            if (take > max)
                take = max;
            if (!take)
                break;
            *data_off = used;
            *data_len = take;
            if (h1_chunked_feed(c, buf + used, take, done) < 0)
                return -1;
            return (int64_t)(used + take);
        }
        int64_t k = h1_chunked_feed(c, buf + used, 1, done);
        if (k < 0)
            return -1;
        used += (size_t)k;
        if (*done || !k)
            break;
    }
    return (int64_t)used;
}

bool h1_request_target(const uint8_t *base, const struct h1_request *r, const uint8_t **host,
                       uint32_t *host_len, const uint8_t **path, uint32_t *path_len)
{
    const uint8_t *p = base + r->target_off;
    uint32_t n = r->target_len;
    *host = NULL;
    *host_len = 0;
    *path = p;
    *path_len = n;
    if (r->target_form == H1_T_ABSOLUTE) {
        const uint8_t *colon = memchr(p, ':', n);
        if (!colon || (uint32_t)(colon - p) + 3 > n)
            return false;
        const uint8_t *h = colon + 3, *end = p + n;
        const uint8_t *slash = memchr(h, '/', (size_t)(end - h));
        const uint8_t *query = memchr(h, '?', (size_t)(end - h));
        if (query && (!slash || query < slash))
            slash = query;
        *host = h;
        *host_len = (uint32_t)((slash ? slash : end) - h);
        *path = slash ? slash : end;
        *path_len = (uint32_t)(end - *path);
        return true;
    }
    if (r->host != 0xffff) {
        *host = base + r->h[r->host].value_off;
        *host_len = r->h[r->host].value_len;
    }
    return r->target_form == H1_T_ORIGIN;
}

uint32_t h1_put_uint(char *dst, uint32_t v)
{
    char tmp[10];
    uint32_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (uint32_t i = 0; i < n; i++)
        dst[i] = tmp[n - 1 - i];
    return n;
}
