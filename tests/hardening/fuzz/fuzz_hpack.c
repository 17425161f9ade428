/*
 * libFuzzer harness: HPACK (native/http2/hpack.c, hpack_huff.c). The first
 * input byte picks one of two modes.
 *
 * Even: a peer's header blocks, each an op byte (bit 0: lower or raise
 * the limit first, to one of eight values by bits 1-3; bit 4: a scratch of
 * 1 + bits 5-7 bytes), two bytes of length and the block, decoded in
 * sequence by one decoder. Invariants: every field's name and value readable through
 * their lengths (ASan: each block is an exact-size copy) and lying in the
 * block, the scratch, the table's ring or (short) the static table; the
 * table's entries inside the ring, not overlapping, their RFC size the
 * table's and at most its max, at most the limit; HPACK_E_TOO_LONG leaves
 * the decoder and *p as they were, and the same field then decodes with a
 * large scratch; after an error the decoder is started again.
 *
 * Odd: round trips. Fields made from the input (static and other names,
 * short and long values, flags) are encoded by ours block by block, with
 * the peer's limit changing between blocks, then decoded by ours: the same
 * fields come back, a never-indexed one flagged so, and after each block
 * the encoder's table and the decoder's hold the same entries. An encoding
 * into too little room returns -1 and leaves the encoder untouched (the
 * whole struct compared). The same fields Huffman-coded (a literal block
 * written here) decode to themselves too.
 */
#include "fuzz_common.h"
#define HPACK_HUFF_CODES
#include "http2/hpack.h"
#include "http2/hpack_huff_table.h"

static uint8_t scratch[1 << 16];

struct cursor {
    const uint8_t *p, *end;
};

static unsigned take(struct cursor *c)
{
    return c->p < c->end ? *c->p++ : 0;
}

/* The table's layout: entries inside the ring, not overlapping, sizes
 * adding up. */
static void check_table(const struct hpack_table *t)
{
    CHECK(t->n <= HPACK_ENTRIES);
    CHECK(t->max <= HPACK_TABLE_MAX && t->size <= t->max);
    uint32_t size = 0;
    for (unsigned a = 1; a <= t->n; a++) {
        const struct hpack_entry *e = &t->ent[(t->ins - a) % HPACK_ENTRIES];
        CHECK((uint32_t)e->off + e->nlen + e->vlen <= HPACK_RING);
        size += e->nlen + e->vlen + 32u;
        for (unsigned b = a + 1; b <= t->n; b++) {
            const struct hpack_entry *o = &t->ent[(t->ins - b) % HPACK_ENTRIES];
            uint32_t e_end = (uint32_t)e->off + e->nlen + e->vlen;
            uint32_t o_end = (uint32_t)o->off + o->nlen + o->vlen;
            if (e_end > e->off && o_end > o->off)
                CHECK(e_end <= o->off || o_end <= e->off);
        }
    }
    CHECK(size == t->size);
}

static int inside(const uint8_t *p, uint32_t n, const uint8_t *lo, size_t len)
{
    return p >= lo && p + n <= lo + len;
}

static void check_field(const struct hpack_dec *d, const struct hpack_field *f,
                        const uint8_t *block, size_t len)
{
    CHECK(f->name && f->value);
    if (f->nlen)
        CHECK(f->name[f->nlen - 1] || 1);
    if (f->vlen)
        CHECK(f->value[f->vlen - 1] || 1);
    CHECK((f->flags & ~(uint32_t)HPACK_F_NEVER) == 0);
    const uint8_t *ring = d->t.ring;
    CHECK(inside(f->name, f->nlen, block, len) || inside(f->name, f->nlen, scratch, sizeof scratch) ||
          inside(f->name, f->nlen, ring, HPACK_RING) || f->nlen <= 27);
    CHECK(inside(f->value, f->vlen, block, len) || inside(f->value, f->vlen, scratch, sizeof scratch) ||
          inside(f->value, f->vlen, ring, HPACK_RING) || f->vlen <= 13);
}

struct dec_state {                      /* what HPACK_E_TOO_LONG must leave alone */
    uint32_t size, max, limit;
    uint16_t n, ins, head;
    uint8_t fields, must_update;
};

static struct dec_state state_of(const struct hpack_dec *d)
{
    return (struct dec_state){ d->t.size, d->t.max, d->limit, d->t.n, d->t.ins, d->t.head,
                               d->fields, d->must_update };
}

static void decode_blocks(const uint8_t *data, size_t size)
{
    static struct hpack_dec d;
    struct cursor c = { data, data + size };
    hpack_dec_init(&d);
    while (c.p < c.end) {
        unsigned op = take(&c);
        if (op & 1) {
            static const uint32_t limits[] = { 0, 1, 40, 100, 256, 1000, 4096, 1u << 20 };
            hpack_dec_limit(&d, limits[(op >> 1) & 7]);
        }
        size_t len = take(&c) << 8;
        len |= take(&c);
        if (len > (size_t)(c.end - c.p))
            len = (size_t)(c.end - c.p);
        uint8_t *block = exact_copy(c.p, len);
        c.p += len;
        size_t cap = (op & 0x10) ? 1 + (op >> 5) : sizeof scratch;
        const uint8_t *p = block, *end = block + len;
        struct hpack_field f;
        int r;
        hpack_dec_begin(&d);
        for (;;) {
            const uint8_t *at = p;
            r = hpack_decode(&d, &p, end, &f, scratch, cap);
            if (r == HPACK_E_TOO_LONG) {
                /* nothing of the field was taken: the same call says the same */
                struct dec_state was = state_of(&d), now;
                const uint8_t *stay = p;
                CHECK(hpack_decode(&d, &p, end, &f, scratch, cap) == HPACK_E_TOO_LONG);
                now = state_of(&d);
                CHECK(p == stay && memcmp(&was, &now, sizeof now) == 0);
                r = hpack_decode(&d, &p, end, &f, scratch, sizeof scratch);
                CHECK(r != HPACK_E_TOO_LONG);
            }
            check_table(&d.t);
            CHECK(d.t.max <= d.limit);
            if (r != HPACK_FIELD)
                break;
            CHECK(p > at && p <= end);
            check_field(&d, &f, block, len);
        }
        CHECK(r == HPACK_END || r == HPACK_E_COMPRESSION);
        if (r == HPACK_END)
            CHECK(p == end);
        else
            hpack_dec_init(&d);
        free(block);
    }
}

/* ---- round trips ---------------------------------------------------------------- */

struct fld {
    const uint8_t *name, *value;
    size_t nlen, vlen;
    uint32_t flags;
};

static const char *const NAMES[] = {
    ":status", ":path", ":method", ":authority", "content-length", "content-type", "date",
    "server", "cookie", "set-cookie", "authorization", "location", "accept-encoding", "etag",
    "x-a", "x-request-id",
};

static uint8_t longs[4][4200];

/* A field from the input: a name from the list above or bytes of the
 * input, a value of the input's bytes or a long run. */
static void make_field(struct cursor *c, struct fld *f)
{
    unsigned k = take(c);
    if (k & 1) {
        const char *n = NAMES[(k >> 1) % (sizeof NAMES / sizeof NAMES[0])];
        f->name = (const uint8_t *)n;
        f->nlen = strlen(n);
    } else {
        f->nlen = (k >> 1) % 24;
        if (f->nlen > (size_t)(c->end - c->p))
            f->nlen = (size_t)(c->end - c->p);
        f->name = c->p;
        c->p += f->nlen;
    }
    unsigned v = take(c);
    if ((v & 7) == 7) {
        static const size_t sizes[] = { 100, 1000, 2500, 3040, 3100, 4064, 4100, 4190 };
        f->value = longs[(v >> 3) & 3];
        f->vlen = sizes[(v >> 5) & 7];
    } else {
        f->vlen = (v >> 3) % 40;
        if (f->vlen > (size_t)(c->end - c->p))
            f->vlen = (size_t)(c->end - c->p);
        f->value = c->p;
        c->p += f->vlen;
    }
    f->flags = take(c) % 5 == 0 ? (take(c) & 3) : 0;
}

static uint8_t *put_int(uint8_t *o, uint8_t first, uint64_t v, unsigned prefix)
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

/* A Huffman-coded string literal. */
static uint8_t *put_huffman(uint8_t *o, const uint8_t *s, size_t n)
{
    size_t bits = 0;
    for (size_t i = 0; i < n; i++)
        bits += hpack_huff_bits[s[i]];
    o = put_int(o, 0x80, (bits + 7) / 8, 7);
    uint64_t acc = 0;
    unsigned have = 0;
    for (size_t i = 0; i < n; i++) {
        acc = acc << hpack_huff_bits[s[i]] | hpack_huff_code[s[i]];
        have += hpack_huff_bits[s[i]];
        while (have >= 8) {
            have -= 8;
            *o++ = (uint8_t)(acc >> have);
        }
    }
    if (have)
        *o++ = (uint8_t)(acc << (8 - have) | (0xffu >> have));
    return o;
}

static void same_tables(const struct hpack_table *a, const struct hpack_table *b)
{
    CHECK(a->n == b->n && a->size == b->size && a->max == b->max);
    for (unsigned age = 1; age <= a->n; age++) {
        const struct hpack_entry *x = &a->ent[(a->ins - age) % HPACK_ENTRIES];
        const struct hpack_entry *y = &b->ent[(b->ins - age) % HPACK_ENTRIES];
        CHECK(x->nlen == y->nlen && x->vlen == y->vlen);
        CHECK(memcmp(a->ring + x->off, b->ring + y->off, x->nlen + x->vlen) == 0);
    }
}

static void round_trips(const uint8_t *data, size_t size)
{
    static struct hpack_enc e, saved;
    static struct hpack_dec d, hd;
    static uint8_t out[1 << 18];
    struct cursor c = { data, data + size };
    hpack_enc_init(&e);
    hpack_dec_init(&d);
    while (c.p < c.end) {
        unsigned op = take(&c);
        for (unsigned i = 0; i < (op & 3); i++) {
            static const uint32_t limits[] = { 0, 33, 100, 256, 1000, 3000, 4096, 70000 };
            uint32_t v = limits[take(&c) & 7];
            hpack_enc_limit(&e, v);             /* the peer announced v */
            hpack_dec_limit(&d, v);
        }
        struct fld f[12];
        size_t nf = (op >> 2) % 12;
        for (size_t i = 0; i < nf; i++)
            make_field(&c, &f[i]);
        ssize_t k = hpack_encode_begin(&e, out, sizeof out);
        CHECK(k >= 0);
        size_t len = (size_t)k;
        for (size_t i = 0; i < nf; i++) {
            if (take(&c) % 3 == 0) {            /* too little room: nothing changes */
                size_t room = take(&c) % 8;
                memcpy(&saved, &e, sizeof e);
                k = hpack_encode(&e, out + len, room, f[i].name, f[i].nlen, f[i].value, f[i].vlen,
                                 f[i].flags);
                if (k < 0)
                    CHECK(memcmp(&saved, &e, sizeof e) == 0);
                else
                    CHECK((size_t)k <= room);
                if (k >= 0) {
                    len += (size_t)k;
                    continue;
                }
            }
            k = hpack_encode(&e, out + len, sizeof out - len, f[i].name, f[i].nlen, f[i].value,
                             f[i].vlen, f[i].flags);
            CHECK(k > 0);
            len += (size_t)k;
            check_table(&e.t);
        }
        uint8_t *block = exact_copy(out, len);
        const uint8_t *p = block, *end = block + len;
        struct hpack_field g;
        hpack_dec_begin(&d);
        for (size_t i = 0; i < nf; i++) {
            CHECK(hpack_decode(&d, &p, end, &g, scratch, sizeof scratch) == HPACK_FIELD);
            CHECK(g.nlen == f[i].nlen && g.vlen == f[i].vlen);
            CHECK(memcmp(g.name, f[i].name, g.nlen) == 0);
            CHECK(memcmp(g.value, f[i].value, g.vlen) == 0);
            if (f[i].flags & HPACK_F_NEVER)
                CHECK(g.flags & HPACK_F_NEVER);
        }
        CHECK(hpack_decode(&d, &p, end, &g, scratch, sizeof scratch) == HPACK_END);
        free(block);
        same_tables(&e.t, &d.t);
        check_table(&d.t);

        /* the same fields Huffman-coded, literals without indexing */
        uint8_t *o = out;
        for (size_t i = 0; i < nf; i++) {
            *o++ = 0x00;
            o = put_huffman(o, f[i].name, f[i].nlen);
            o = put_huffman(o, f[i].value, f[i].vlen);
        }
        block = exact_copy(out, (size_t)(o - out));
        p = block;
        end = block + (o - out);
        hpack_dec_init(&hd);
        hpack_dec_begin(&hd);
        for (size_t i = 0; i < nf; i++) {
            CHECK(hpack_decode(&hd, &p, end, &g, scratch, sizeof scratch) == HPACK_FIELD);
            CHECK(g.nlen == f[i].nlen && g.vlen == f[i].vlen);
            CHECK(memcmp(g.name, f[i].name, g.nlen) == 0);
            CHECK(memcmp(g.value, f[i].value, g.vlen) == 0);
        }
        CHECK(hpack_decode(&hd, &p, end, &g, scratch, sizeof scratch) == HPACK_END);
        free(block);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        for (int i = 0; i < 4; i++)
            for (size_t j = 0; j < sizeof longs[i]; j++)
                longs[i][j] = (uint8_t)("ahA0"[i] + j % 7);
        ready = 1;
    }
    if (!size)
        return 0;
    if (data[0] & 1)
        round_trips(data + 1, size - 1);
    else
        decode_blocks(data + 1, size - 1);
    return 0;
}
