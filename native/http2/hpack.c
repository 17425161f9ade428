/*
 * HPACK (RFC 7541): the static table, integers, string literals, the
 * dynamic table, the decoder and the encoder. Huffman decoding is
 * hpack_huff.c's. No I/O, no allocation, no callback: the frame layer
 * hands in a header block and gets fields back one call at a time, or hands
 * in fields and gets bytes.
 *
 * The table. A dynamic table's entries keep their bytes in a ring inside
 * the struct (struct hpack_table), name then value, and an entry is never
 * split across the ring's end: a field the decoder returns points at them
 * as they lie. A new entry goes right after the newest one, or at the
 * ring's start when the bytes left before its end are too few (they stay
 * unused until the entries before them go). That never lacks room if the
 * ring has 2 * max - 96 bytes (HPACK_RING; M is HPACK_TABLE_MAX, b the new
 * entry's bytes, L the bytes of the n entries left after evicting for it,
 * so L + 32n + b + 32 <= M, and b <= M - 32):
 *   - entries in one piece [tail, head): with n = 0 the entry goes at 0;
 *     else L <= M - 64 - b, and it fits after head or before tail unless
 *     both gaps are under b, i.e. the ring < L + 2b <= M - 64 + b <= 2M - 96;
 *   - in two pieces [tail, E) and [0, head), after an entry of b' bytes
 *     went to 0 because E + b' passed the ring's end (so E > ring - M + 32):
 *     both pieces hold an entry, so n >= 2 and L <= M - 96 - b, and the gap
 *     tail - head = E - L > ring - 2M + 128 + b > b.
 * Entries' sequence numbers (15 bits) index a 128-slot array of offsets and
 * lengths (128 entries of at least 32 each fill 4096). Dynamic index 1 is
 * the newest (sequence ins - 1). Size: struct hpack_dec 8,888 bytes.
 *
 * The decoder follows the RFC to the letter, and every rule it breaks is
 * HPACK_E_COMPRESSION: an integer over 32 bits (or with more than 5
 * continuation bytes), a string longer than the block, bad Huffman (see
 * hpack_huff.c), an index of 0 or past the tables, a size update above our
 * limit or after a field, a block without the size update a lowered limit
 * calls for (RFC 7541 4.2). An entry's name may be an entry the insertion
 * evicts: the name is moved (memmove) to the new entry before the value is
 * written, and the field points at the copy. An entry larger than the max
 * empties the table and is not added; the field then points at the bytes it
 * came from (an evicted entry's bytes stay as they were until overwritten,
 * and nothing was written).
 *
 * The encoder writes string literals raw, never Huffman-coded: coding costs
 * a table walk per character on every field, on the hot path of each
 * response, to save about a fifth of the bytes of the few literals a warm
 * table still sends (and those bytes cost almost nothing on a link to a
 * client). It looks fields up rather than scanning anything, the common
 * cases first: the pseudo-header fields the static table has with values
 * (:status 200), by comparison; then the newest entry of the field's bucket
 * in the dynamic table (buckets by a hash of the value and the name's
 * length). Else (enc_other): the name's static index by a switch on its
 * length and one character (a comparison confirms), the policy below, the
 * rest of the bucket's chain, the name's index (buckets by a hash of the
 * name), the literal. The two chained hash indexes (struct hpack_enc) are
 * kept in step as entries come and go: a bucket's head is cleared when its
 * entry leaves, and a chain stops at its first evicted entry (the older
 * ones follow it). Size: struct hpack_enc 9,912 bytes. What that costs:
 * bench/hpack_cost.c.
 *
 * What it indexes (adds to the dynamic table):
 *   - an exact match in a table becomes an indexed field (1 or 2 bytes);
 *   - else a literal, with the name's index when a table has it;
 *   - never indexed (6.2.3, and kept so by intermediaries): HPACK_F_NEVER,
 *     authorization, proxy-authorization, and cookie or set-cookie values
 *     under 20 bytes (guessable: a compression oracle could find them);
 *   - without indexing (6.2.2): HPACK_F_NOINDEX, :path, content-length,
 *     etag, if-modified-since, if-none-match, location, set-cookie, age,
 *     last-modified, link (values that change with each request or
 *     response: indexing them would only evict useful entries), and any
 *     entry over 3/4 of the table's max (it would flush the table);
 *   - everything else with incremental indexing (6.2.1).
 */
#include <stdbool.h>
#include <string.h>

#include "http2/hpack.h"

/* ---- the static table (RFC 7541 Appendix A) -------------------------------- */

/* The encoder's policy by static name, and P_VALUES on the first entry of
 * a name that has entries with values. */
enum { P_NOINDEX = 1, P_NEVER = 2, P_NEVER_IF_SHORT = 4, P_VALUES = 8 };
#define P_RULES (P_NOINDEX | P_NEVER | P_NEVER_IF_SHORT)
#define SHORT_SECRET 20      /* cookie values under this are never indexed */

struct static_entry {
    const char *name, *value;
    uint8_t nlen, vlen;
    uint8_t last;            /* the last index with this name */
    uint8_t policy;
};

#define E(n, v, last, pol) { n, v, sizeof(n) - 1, sizeof(v) - 1, last, pol }
#define STATIC_COUNT 61
static const struct static_entry static_table[STATIC_COUNT + 1] = {
    E("", "", 0, 0),
    E(":authority", "", 1, 0),
    E(":method", "GET", 3, P_VALUES),
    E(":method", "POST", 3, 0),
    E(":path", "/", 5, P_NOINDEX | P_VALUES),
    E(":path", "/index.html", 5, P_NOINDEX),
    E(":scheme", "http", 7, P_VALUES),
    E(":scheme", "https", 7, 0),
    E(":status", "200", 14, P_VALUES),
    E(":status", "204", 14, 0),
    E(":status", "206", 14, 0),
    E(":status", "304", 14, 0),
    E(":status", "400", 14, 0),
    E(":status", "404", 14, 0),
    E(":status", "500", 14, 0),
    E("accept-charset", "", 15, 0),
    E("accept-encoding", "gzip, deflate", 16, P_VALUES),
    E("accept-language", "", 17, 0),
    E("accept-ranges", "", 18, 0),
    E("accept", "", 19, 0),
    E("access-control-allow-origin", "", 20, 0),
    E("age", "", 21, P_NOINDEX),
    E("allow", "", 22, 0),
    E("authorization", "", 23, P_NEVER),
    E("cache-control", "", 24, 0),
    E("content-disposition", "", 25, 0),
    E("content-encoding", "", 26, 0),
    E("content-language", "", 27, 0),
    E("content-length", "", 28, P_NOINDEX),
    E("content-location", "", 29, 0),
    E("content-range", "", 30, 0),
    E("content-type", "", 31, 0),
    E("cookie", "", 32, P_NEVER_IF_SHORT),
    E("date", "", 33, 0),
    E("etag", "", 34, P_NOINDEX),
    E("expect", "", 35, 0),
    E("expires", "", 36, 0),
    E("from", "", 37, 0),
    E("host", "", 38, 0),
    E("if-match", "", 39, 0),
    E("if-modified-since", "", 40, P_NOINDEX),
    E("if-none-match", "", 41, P_NOINDEX),
    E("if-range", "", 42, 0),
    E("if-unmodified-since", "", 43, 0),
    E("last-modified", "", 44, P_NOINDEX),
    E("link", "", 45, P_NOINDEX),
    E("location", "", 46, P_NOINDEX),
    E("max-forwards", "", 47, 0),
    E("proxy-authenticate", "", 48, 0),
    E("proxy-authorization", "", 49, P_NEVER),
    E("range", "", 50, 0),
    E("referer", "", 51, 0),
    E("refresh", "", 52, 0),
    E("retry-after", "", 53, 0),
    E("server", "", 54, 0),
    E("set-cookie", "", 55, P_NOINDEX | P_NEVER_IF_SHORT),
    E("strict-transport-security", "", 56, 0),
    E("transfer-encoding", "", 57, 0),
    E("user-agent", "", 58, 0),
    E("vary", "", 59, 0),
    E("via", "", 60, 0),
    E("www-authenticate", "", 61, 0),
};
#undef E

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint32_t load32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint16_t load16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* Byte equality without a call (the encoder's lookup stays a leaf), for
 * the short strings fields are made of: word loads that overlap rather than
 * run past the end. */
static inline bool same(const uint8_t *a, const uint8_t *b, size_t n)
{
    if (n >= 8) {
        for (; n > 16; a += 8, b += 8, n -= 8)
            if (load64(a) != load64(b))
                return false;
        return load64(a) == load64(b) && load64(a + n - 8) == load64(b + n - 8);
    }
    if (n >= 4)
        return load32(a) == load32(b) && load32(a + n - 4) == load32(b + n - 4);
    if (n >= 2)
        return load16(a) == load16(b) && a[n - 1] == b[n - 1];
    return n == 0 || a[0] == b[0];
}

/* The first static index with this name, or 0: the length and one
 * character tell the candidates apart, a memcmp confirms. */
static unsigned static_name(const uint8_t *n, size_t len)
{
    unsigned i;
#define ON(c, idx) case c: i = idx; break
    switch (len) {
    case 3:  switch (n[0]) { ON('a', 21); ON('v', 60); default: return 0; } break;
    case 4:  switch (n[0]) { ON('d', 33); ON('e', 34); ON('f', 37); ON('h', 38); ON('l', 45);
                             ON('v', 59); default: return 0; } break;
    case 5:  switch (n[0]) { ON(':', 4); ON('a', 22); ON('r', 50); default: return 0; } break;
    case 6:  switch (n[0]) { ON('a', 19); ON('c', 32); ON('e', 35); ON('s', 54); default: return 0; } break;
    case 7:  switch (n[3]) { ON('t', 2); ON('h', 6); ON('a', 8); ON('i', 36); ON('e', 51);
                             ON('r', 52); default: return 0; } break;
    case 8:  switch (n[3]) { ON('m', 39); ON('r', 42); ON('a', 46); default: return 0; } break;
    case 10: switch (n[0]) { ON(':', 1); ON('s', 55); ON('u', 58); default: return 0; } break;
    case 11: i = 53; break;
    case 12: switch (n[0]) { ON('c', 31); ON('m', 47); default: return 0; } break;
    case 13: switch (n[6]) { ON('-', 18); ON('i', 23); ON('c', 24); ON('t', 30); ON('e', 41);
                             ON('o', 44); default: return 0; } break;
    case 14: switch (n[0]) { ON('a', 15); ON('c', 28); default: return 0; } break;
    case 15: switch (n[7]) { ON('e', 16); ON('l', 17); default: return 0; } break;
    case 16: switch (n[11]) { ON('o', 26); ON('g', 27); ON('a', 29); ON('i', 61); default: return 0; } break;
    case 17: switch (n[0]) { ON('i', 40); ON('t', 57); default: return 0; } break;
    case 18: i = 48; break;
    case 19: switch (n[0]) { ON('c', 25); ON('i', 43); ON('p', 49); default: return 0; } break;
    case 25: i = 56; break;
    case 27: i = 20; break;
    default: return 0;
    }
#undef ON
    return same(n, (const uint8_t *)static_table[i].name, len) ? i : 0;
}

/* The static index of (name at si, value), or 0. */
static inline unsigned static_exact(unsigned si, unsigned policy, const uint8_t *v, size_t vlen)
{
    if (!(policy & P_VALUES))            /* the name's one entry, its value empty */
        return si && !vlen ? si : 0;
    for (unsigned i = si; i <= static_table[si].last; i++)
        if (static_table[i].vlen == vlen && same(v, (const uint8_t *)static_table[i].value, vlen))
            return i;
    return 0;
}

/* ---- integers (RFC 7541 5.1) ------------------------------------------------ */

/* An integer with an n-bit prefix at *p (< end; the first byte's other bits
 * are the caller's). 0, or -1 if it is cut short, over 32 bits, or longer
 * than 5 continuation bytes (the most a 32-bit value needs). */
static inline int int_decode(const uint8_t **pp, const uint8_t *end, unsigned prefix, uint32_t *v)
{
    const uint8_t *p = *pp;
    uint32_t mask = (1u << prefix) - 1;
    uint64_t x = *p++ & mask;
    if (x == mask) {
        for (unsigned shift = 0;; shift += 7) {
            if (p == end || shift > 28)
                return -1;
            uint8_t b = *p++;
            x += (uint64_t)(b & 0x7f) << shift;
            if (x > UINT32_MAX)
                return -1;
            if (!(b & 0x80))
                break;
        }
    }
    *v = (uint32_t)x;
    *pp = p;
    return 0;
}

static inline size_t int_len(uint64_t v, unsigned prefix)
{
    uint64_t mask = (1u << prefix) - 1;
    if (v < mask)
        return 1;
    size_t n = 2;
    for (v -= mask; v >= 128; v >>= 7)
        n++;
    return n;
}

/* Writes v with an n-bit prefix, the first byte's other bits from first. */
static inline uint8_t *int_put(uint8_t *o, uint8_t first, uint64_t v, unsigned prefix)
{
    uint64_t mask = (1u << prefix) - 1;
    if (v < mask) {
        *o++ = (uint8_t)(first | v);
        return o;
    }
    *o++ = (uint8_t)(first | mask);
    for (v -= mask; v >= 128; v >>= 7)
        *o++ = (uint8_t)(v | 0x80);
    *o++ = (uint8_t)v;
    return o;
}

/* ---- the dynamic table (RFC 7541 2.3.2, 4) ------------------------------ */

#define ENTRY_OVERHEAD 32
#define SLOT(seq) ((seq) & (HPACK_ENTRIES - 1))

static void table_init(struct hpack_table *t)
{
    t->size = 0;
    t->max = HPACK_TABLE_MAX;
    t->n = t->ins = t->head = 0;
}

/* age 1: the newest entry, t->n: the oldest */
static inline struct hpack_entry *entry_at(struct hpack_table *t, unsigned age)
{
    return &t->ent[SLOT(t->ins - age)];
}

static inline uint16_t oldest_seq(const struct hpack_table *t)
{
    return (uint16_t)((t->ins - t->n) & HPACK_SEQ_MASK);
}

static void table_evict(struct hpack_table *t)
{
    const struct hpack_entry *e = entry_at(t, t->n);
    t->size -= e->nlen + e->vlen + ENTRY_OVERHEAD;
    if (--t->n == 0)
        t->head = 0;
}

/* Where an entry of b bytes goes, once evictions made room for it in the
 * RFC's count (the proof it fits: the comment at the top). */
static inline uint16_t table_place(struct hpack_table *t, uint32_t b)
{
    if (t->n == 0)
        return 0;
    uint32_t tail = entry_at(t, t->n)->off, head = t->head;
    if (head >= tail && head + b > HPACK_RING)
        return 0;                        /* one piece, no room after it: before it */
    return (uint16_t)head;
}

/* Adds an entry that fits (the caller evicted for it). The name may lie in
 * the ring (an entry this insertion evicted): it is moved first. Returns
 * the entry's offset. */
static uint16_t table_insert(struct hpack_table *t, const uint8_t *name, uint32_t nlen,
                             const uint8_t *value, uint32_t vlen)
{
    uint16_t off = table_place(t, nlen + vlen);
    if (nlen)
        memmove(t->ring + off, name, nlen);
    if (vlen)
        memcpy(t->ring + off + nlen, value, vlen);
    struct hpack_entry *e = &t->ent[SLOT(t->ins)];
    e->off = off;
    e->nlen = (uint16_t)nlen;
    e->vlen = (uint16_t)vlen;
    t->ins = (t->ins + 1) & HPACK_SEQ_MASK;
    t->n++;
    t->size += nlen + vlen + ENTRY_OVERHEAD;
    t->head = (uint16_t)(off + nlen + vlen);
    return off;
}

/* ---- decoding (RFC 7541 3, 6) ----------------------------------------------- */

void hpack_dec_init(struct hpack_dec *d)
{
    table_init(&d->t);
    d->limit = HPACK_TABLE_MAX;
    d->fields = 0;
    d->must_update = 0;
}

static void dec_resize(struct hpack_dec *d, uint32_t max)
{
    d->t.max = max;
    while (d->t.size > max)
        table_evict(&d->t);
}

void hpack_dec_limit(struct hpack_dec *d, uint32_t v)
{
    d->limit = v < HPACK_TABLE_MAX ? v : HPACK_TABLE_MAX;
    if (d->t.max > d->limit) {
        dec_resize(d, d->limit);
        d->must_update = 1;
    }
}

void hpack_dec_begin(struct hpack_dec *d)
{
    d->fields = 0;
}

/* The name (and value) at index i of the static and dynamic tables. */
static inline int dec_lookup(struct hpack_dec *d, uint32_t i, struct hpack_field *f)
{
    if (i - 1 < STATIC_COUNT) {
        const struct static_entry *s = &static_table[i];
        f->name = (const uint8_t *)s->name;
        f->nlen = s->nlen;
        f->value = (const uint8_t *)s->value;
        f->vlen = s->vlen;
        return 0;
    }
    uint32_t age = i - STATIC_COUNT;
    if (i == 0 || age > d->t.n)
        return -1;
    const struct hpack_entry *e = entry_at(&d->t, age);
    f->name = d->t.ring + e->off;
    f->nlen = e->nlen;
    f->value = f->name + e->nlen;
    f->vlen = e->vlen;
    return 0;
}

/* A string literal at *pp: raw, it is pointed at in the block; Huffman-
 * coded, it is decoded into scratch after the *used bytes already there. */
static int dec_string(const uint8_t **pp, const uint8_t *end, const uint8_t **s, uint32_t *len,
                      uint8_t *scratch, size_t cap, size_t *used)
{
    const uint8_t *p = *pp;
    uint32_t n;
    if (p == end)
        return HPACK_E_COMPRESSION;
    bool huffman = *p & 0x80;
    if (int_decode(&p, end, 7, &n) || n > (size_t)(end - p))
        return HPACK_E_COMPRESSION;
    if (!huffman) {
        *s = p;
        *len = n;
    } else {
        uint8_t none;
        uint8_t *out = scratch ? scratch + *used : &none;
        size_t got;
        int r = hpack_huff_decode(p, n, out, scratch ? cap - *used : 0, &got);
        if (r < 0)
            return r;
        *s = got ? out : p;              /* never NULL, nor a pointer to none */
        *len = (uint32_t)got;
        *used += got;
    }
    *pp = p + n;
    return 0;
}

/* A literal field (6.2): first byte 01xxxxxx (incremental indexing),
 * 0000xxxx (without indexing) or 0001xxxx (never indexed). */
static int dec_literal(struct hpack_dec *d, const uint8_t **pp, const uint8_t *end,
                       struct hpack_field *f, uint8_t *scratch, size_t cap)
{
    const uint8_t *p = *pp;
    bool indexing = *p & 0x40;
    uint32_t i;
    size_t used = 0;
    int r;
    f->flags = !indexing && (*p & 0x10) ? HPACK_F_NEVER : 0;
    if (int_decode(&p, end, indexing ? 6 : 4, &i))
        return HPACK_E_COMPRESSION;
    if (i) {
        if (dec_lookup(d, i, f))
            return HPACK_E_COMPRESSION;
    } else if ((r = dec_string(&p, end, &f->name, &f->nlen, scratch, cap, &used)) < 0) {
        return r;
    }
    if ((r = dec_string(&p, end, &f->value, &f->vlen, scratch, cap, &used)) < 0)
        return r;
    if (indexing) {
        struct hpack_table *t = &d->t;
        uint64_t size = (uint64_t)f->nlen + f->vlen + ENTRY_OVERHEAD;
        while (t->n && t->size + size > t->max)
            table_evict(t);
        if (size <= t->max) {
            uint16_t off = table_insert(t, f->name, f->nlen, f->value, f->vlen);
            f->name = t->ring + off;
            f->value = f->name + f->nlen;
        }
    }
    *pp = p;
    return 0;
}

/* Everything but an indexed field with an index under 127: size updates,
 * literals, long indexes, errors. Out of line, so that the common case
 * below stays a leaf that saves no registers. */
__attribute__((noinline))
static int dec_other(struct hpack_dec *d, const uint8_t **pp, const uint8_t *end,
                     struct hpack_field *f, uint8_t *scratch, size_t cap)
{
    const uint8_t *p = *pp;
    uint32_t i;
    /* 001xxxxx: a dynamic table size update (6.3), only before the first field */
    while (p < end && (*p & 0xe0) == 0x20) {
        if (d->fields || int_decode(&p, end, 5, &i) || i > d->limit)
            return HPACK_E_COMPRESSION;
        dec_resize(d, i);
        d->must_update = 0;
        *pp = p;
    }
    if (p == end)
        return HPACK_END;
    if (d->must_update)
        return HPACK_E_COMPRESSION;
    if (*p & 0x80) {                     /* 1xxxxxxx: an indexed field (6.1) */
        if (int_decode(&p, end, 7, &i) || dec_lookup(d, i, f))
            return HPACK_E_COMPRESSION;
        f->flags = 0;
    } else {
        int r = dec_literal(d, &p, end, f, scratch, cap);
        if (r < 0)
            return r;
    }
    d->fields = 1;
    *pp = p;
    return HPACK_FIELD;
}

int hpack_decode(struct hpack_dec *d, const uint8_t **pp, const uint8_t *end,
                 struct hpack_field *f, uint8_t *scratch, size_t cap)
{
    const uint8_t *p = *pp;
    if (p == end)
        return HPACK_END;
    uint32_t i = *p ^ 0x80;              /* an indexed field (6.1) whose index fits its byte */
    if (__builtin_expect(i < 0x7f && !d->must_update, 1)) {
        if (dec_lookup(d, i, f))
            return HPACK_E_COMPRESSION;
        f->flags = 0;
        d->fields = 1;
        *pp = p + 1;
        return HPACK_FIELD;
    }
    return dec_other(d, pp, end, f, scratch, cap);
}

/* ---- encoding ------------------------------------------------------------------ */

/* The encoder's hash keys, cheap rather than thorough (a collision costs
 * a comparison): bytes are keyed by their length and their first and last
 * eight bytes (or fewer); a name by its bytes, a field by its value and the
 * length of its name (the name is compared anyway, and hashing it too
 * would cost the lookup a third of its instructions). */
static inline uint64_t bytes_key(const uint8_t *p, size_t n)
{
    uint64_t a = 0, b = 0;
    if (n >= 8) {
        a = load64(p);
        b = load64(p + n - 8);
    } else if (n >= 4) {
        a = load32(p);
        b = load32(p + n - 4);
    } else if (n) {
        a = p[0] | (uint64_t)p[n / 2] << 8 | (uint64_t)p[n - 1] << 16;
    }
    return (a + (b << 29 | b >> 35)) ^ n;
}

static inline uint8_t bucket_of(uint64_t key)
{
    return (uint8_t)((key * 0x9e3779b97f4a7c15ull) >> 57);     /* 0..127 */
}

static inline uint8_t name_bucket(const uint8_t *name, size_t nlen)
{
    return bucket_of(bytes_key(name, nlen));
}

static inline uint8_t field_bucket(size_t nlen, const uint8_t *value, size_t vlen)
{
    return bucket_of(bytes_key(value, vlen) ^ nlen << 48);
}

void hpack_enc_init(struct hpack_enc *e)
{
    table_init(&e->t);
    e->signaled = HPACK_TABLE_MAX;
    e->low = UINT32_MAX;
    for (unsigned i = 0; i < HPACK_BUCKETS; i++)
        e->name_head[i] = e->field_head[i] = HPACK_NONE;
}

/* Evicts the oldest entry, unhooking it from the buckets it heads (in a
 * chain, the entries before it see it is gone by its age). Its buckets are
 * hashed again rather than kept: this is the insertion's path, not the
 * lookup's. */
static void enc_evict(struct hpack_enc *e)
{
    struct hpack_table *t = &e->t;
    uint16_t seq = oldest_seq(t);
    const struct hpack_entry *en = &t->ent[SLOT(seq)];
    const uint8_t *name = t->ring + en->off;
    uint8_t nb = name_bucket(name, en->nlen), fb = field_bucket(en->nlen, name + en->nlen, en->vlen);
    if (e->name_head[nb] == seq)
        e->name_head[nb] = HPACK_NONE;
    if (e->field_head[fb] == seq)
        e->field_head[fb] = HPACK_NONE;
    table_evict(t);
}

__attribute__((noinline))
static void enc_insert(struct hpack_enc *e, const uint8_t *name, size_t nlen, const uint8_t *value,
                       size_t vlen)
{
    struct hpack_table *t = &e->t;
    while (t->size + nlen + vlen + ENTRY_OVERHEAD > t->max)
        enc_evict(e);
    uint16_t seq = t->ins;
    uint8_t nb = name_bucket(name, nlen), fb = field_bucket(nlen, value, vlen);
    table_insert(t, name, (uint32_t)nlen, value, (uint32_t)vlen);
    struct hpack_link *l = &e->link[SLOT(seq)];
    l->name_next = e->name_head[nb];
    l->field_next = e->field_head[fb];
    e->name_head[nb] = e->field_head[fb] = seq;
}

/* The age (dynamic index - 61) of a live entry by its sequence number, or 0
 * when it is gone (or NONE). */
static inline unsigned live_age(const struct hpack_table *t, uint16_t seq)
{
    unsigned age = (t->ins - seq) & HPACK_SEQ_MASK;
    return seq != HPACK_NONE && age - 1 < t->n ? age : 0;
}

static inline bool same_name(const struct hpack_enc *e, uint16_t seq, const uint8_t *name,
                             size_t nlen)
{
    const struct hpack_entry *en = &e->t.ent[SLOT(seq)];
    return en->nlen == nlen && same(e->t.ring + en->off, name, nlen);
}

static unsigned enc_find_field(const struct hpack_enc *e, const uint8_t *name, size_t nlen,
                               const uint8_t *value, size_t vlen)
{
    const struct hpack_table *t = &e->t;
    unsigned age;
    uint16_t s = e->field_head[field_bucket(nlen, value, vlen)];
    for (; (age = live_age(t, s)); s = e->link[SLOT(s)].field_next) {
        const struct hpack_entry *en = &t->ent[SLOT(s)];
        if (en->nlen == nlen && en->vlen == vlen && same(t->ring + en->off, name, nlen) &&
            same(t->ring + en->off + nlen, value, vlen))
            return age;
    }
    return 0;
}

static unsigned enc_find_name(const struct hpack_enc *e, const uint8_t *name, size_t nlen)
{
    unsigned age;
    uint16_t s = e->name_head[name_bucket(name, nlen)];
    for (; (age = live_age(&e->t, s)); s = e->link[SLOT(s)].name_next)
        if (same_name(e, s, name, nlen))
            return age;
    return 0;
}

static void enc_resize(struct hpack_enc *e, uint32_t max)
{
    e->t.max = max;
    while (e->t.size > max)
        enc_evict(e);
}

void hpack_enc_limit(struct hpack_enc *e, uint32_t v)
{
    if (v > HPACK_TABLE_MAX)
        v = HPACK_TABLE_MAX;
    if (v < e->low)
        e->low = v;
    enc_resize(e, v);
}

ssize_t hpack_encode_begin(struct hpack_enc *e, uint8_t *out, size_t room)
{
    if (e->low == UINT32_MAX && e->t.max == e->signaled)
        return 0;                        /* nothing to say: most blocks */
    /* The decoder evicts to the least max we went through, then takes the
     * final one (RFC 7541 4.2). */
    bool low = e->low < e->signaled && e->low < e->t.max;
    bool final = low || e->t.max != e->signaled;
    size_t n = (low ? int_len(e->low, 5) : 0) + (final ? int_len(e->t.max, 5) : 0);
    if (n > room)
        return -1;
    uint8_t *o = out;
    if (low)
        o = int_put(o, 0x20, e->low, 5);
    if (final)
        o = int_put(o, 0x20, e->t.max, 5);
    e->signaled = e->t.max;
    e->low = UINT32_MAX;
    return (ssize_t)n;
}

/* An indexed field (6.1): i is at most 61 + 128, one or two bytes. */
static inline ssize_t put_indexed(uint8_t *out, size_t room, unsigned i)
{
    if (i < 0x7f && room) {
        out[0] = (uint8_t)(0x80 | i);
        return 1;
    }
    if (room < 2)
        return -1;
    out[0] = 0xff;
    out[1] = (uint8_t)(i - 0x7f);
    return 2;
}

/* Copies short strings without a call. */
static inline void copy(uint8_t *o, const uint8_t *s, size_t n)
{
    if (n > 16) {
        memcpy(o, s, n);
    } else if (n >= 8) {
        uint64_t a = load64(s), b = load64(s + n - 8);
        memcpy(o, &a, 8);
        memcpy(o + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a = load32(s), b = load32(s + n - 4);
        memcpy(o, &a, 4);
        memcpy(o + n - 4, &b, 4);
    } else if (n) {
        uint8_t a = s[0], b = s[n / 2], c = s[n - 1];
        o[0] = a;
        o[n / 2] = b;
        o[n - 1] = c;
    }
}

/* The static table's exact matches among pseudo-header fields (:method
 * GET and POST, :path / and /index.html, :scheme http and https, :status
 * 200 ... 500), without finding the name's static index first: :status 200
 * is in every response. name[0] is ':'. */
static inline unsigned static_pseudo(const uint8_t *name, size_t nlen, const uint8_t *value,
                                     size_t vlen)
{
#define IS(p, n, s) ((n) == sizeof(s) - 1 && same(p, (const uint8_t *)(s), sizeof(s) - 1))
    if (IS(name, nlen, ":status")) {
        if (vlen != 3)
            return 0;
        switch (value[0] << 16 | value[1] << 8 | value[2]) {
        case '2' << 16 | '0' << 8 | '0': return 8;
        case '2' << 16 | '0' << 8 | '4': return 9;
        case '2' << 16 | '0' << 8 | '6': return 10;
        case '3' << 16 | '0' << 8 | '4': return 11;
        case '4' << 16 | '0' << 8 | '0': return 12;
        case '4' << 16 | '0' << 8 | '4': return 13;
        case '5' << 16 | '0' << 8 | '0': return 14;
        }
        return 0;
    }
    if (IS(name, nlen, ":method"))
        return IS(value, vlen, "GET") ? 2 : IS(value, vlen, "POST") ? 3 : 0;
    if (IS(name, nlen, ":scheme"))
        return IS(value, vlen, "http") ? 6 : IS(value, vlen, "https") ? 7 : 0;
    if (IS(name, nlen, ":path"))
        return IS(value, vlen, "/") ? 4 : IS(value, vlen, "/index.html") ? 5 : 0;
    return 0;
#undef IS
}

enum rep { REP_INDEX, REP_NOINDEX, REP_NEVER };

/* All but the common cases: the policy, the static table, the dynamic
 * table past its bucket's newest entry; and literals (6.2): the name by
 * index (static, else the dynamic table's) or as a string, the value as a
 * string, both raw. */
__attribute__((noinline))
static ssize_t enc_other(struct hpack_enc *e, uint8_t *out, size_t room, const uint8_t *name,
                         size_t nlen, const uint8_t *value, size_t vlen, uint32_t flags)
{
    unsigned si = static_name(name, nlen);
    unsigned policy = static_table[si].policy;
    enum rep rep = REP_NEVER;
    if (!(flags & HPACK_F_NEVER) && !(policy & P_NEVER) &&
        !((policy & P_NEVER_IF_SHORT) && vlen < SHORT_SECRET)) {
        unsigned i = static_exact(si, policy, value, vlen);
        /* A name whose policy keeps it out of the table is never in it. */
        if (!i && !(policy & P_NOINDEX)) {
            unsigned age = enc_find_field(e, name, nlen, value, vlen);
            i = age ? STATIC_COUNT + age : 0;
        }
        if (i)
            return put_indexed(out, room, i);
        bool index = !(flags & HPACK_F_NOINDEX) && !(policy & P_NOINDEX) &&
                     (nlen + vlen + ENTRY_OVERHEAD) * 4 <= (uint64_t)e->t.max * 3;
        rep = index ? REP_INDEX : REP_NOINDEX;
    }
    unsigned ni = si;
    if (!ni && e->t.n) {
        unsigned age = enc_find_name(e, name, nlen);
        ni = age ? STATIC_COUNT + age : 0;
    }
    static const uint8_t first[] = { [REP_INDEX] = 0x40, [REP_NOINDEX] = 0x00, [REP_NEVER] = 0x10 };
    unsigned prefix = rep == REP_INDEX ? 6 : 4;
    size_t n = int_len(ni, prefix) + (ni ? 0 : int_len(nlen, 7) + nlen) + int_len(vlen, 7) + vlen;
    if (n > room)
        return -1;
    uint8_t *o = int_put(out, first[rep], ni, prefix);
    if (!ni) {
        o = int_put(o, 0, nlen, 7);
        copy(o, name, nlen);
        o += nlen;
    }
    o = int_put(o, 0, vlen, 7);
    copy(o, value, vlen);
    if (rep == REP_INDEX)
        enc_insert(e, name, nlen, value, vlen);
    return (ssize_t)n;
}

/* The dynamic table's index of the field if it is the newest entry of its
 * bucket, or 0 (enc_other looks further). */
static inline unsigned probe(const struct hpack_enc *e, const uint8_t *name, size_t nlen,
                             const uint8_t *value, size_t vlen)
{
    const struct hpack_table *t = &e->t;
    unsigned s = e->field_head[field_bucket(nlen, value, vlen)];
    unsigned age = (t->ins - s) & HPACK_SEQ_MASK;
    if (s == HPACK_NONE || age - 1 >= t->n)
        return 0;
    const struct hpack_entry *en = &t->ent[SLOT(s)];
    if (en->nlen != nlen || en->vlen != vlen)
        return 0;
    const uint8_t *b = t->ring + en->off;
    return same(b, name, nlen) && same(b + nlen, value, vlen) ? STATIC_COUNT + age : 0;
}

/* The common cases first: an exact match among the pseudo-header fields of
 * the static table, or with the newest entry of the field's bucket in the
 * dynamic table. A never-indexed field is not looked up: it must stay a
 * literal. */
static inline __attribute__((always_inline))
ssize_t encode_field(struct hpack_enc *e, uint8_t *out, size_t room, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint32_t flags)
{
    if (__builtin_expect(!(flags & HPACK_F_NEVER), 1)) {
        unsigned i = nlen && name[0] == ':' ? static_pseudo(name, nlen, value, vlen) : 0;
        if (!i)
            i = probe(e, name, nlen, value, vlen);
        if (i)
            return put_indexed(out, room, i);
    }
    return enc_other(e, out, room, name, nlen, value, vlen, flags);
}

ssize_t hpack_encode(struct hpack_enc *e, uint8_t *out, size_t room, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint32_t flags)
{
    return encode_field(e, out, room, name, nlen, value, vlen, flags);
}
