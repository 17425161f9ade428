/*
 * HPACK (RFC 7541), the header compression of HTTP/2, both ways: a decoder
 * for what a peer sends, an encoder for what we send. Pure: no I/O, no
 * allocation, no callback. The frame layer embeds one struct hpack_dec and
 * one struct hpack_enc in each connection's state (hence the full
 * definitions below); hpack.c says how the tables are laid out and why the
 * encoder writes raw strings.
 *
 * Sizes (x86-64): struct hpack_dec 8,888 bytes, struct hpack_enc 9,912.
 */
#ifndef UPROXY_HPACK_H
#define UPROXY_HPACK_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The most either dynamic table holds (RFC size): what we announce as
 * SETTINGS_HEADER_TABLE_SIZE (the default) and the most our encoder uses. */
#define HPACK_TABLE_MAX 4096

enum { HPACK_END = 0, HPACK_FIELD = 1,
       HPACK_E_COMPRESSION = -1,  /* malformed block: a connection error (COMPRESSION_ERROR) */
       HPACK_E_TOO_LONG = -2 };   /* a decoded string does not fit the caller's scratch: the header list is too large */

#define HPACK_F_NEVER 1            /* field flag: a never-indexed literal (RFC 7541 6.2.3): set by the decoder; the encoder keeps such fields never-indexed */
#define HPACK_F_NOINDEX 2          /* encoder: do not add this field to the dynamic table */

struct hpack_field { const uint8_t *name, *value; uint32_t nlen, vlen; uint32_t flags; };

/* ---- the dynamic table (hpack.c) ---------------------------------------- */

/* An entry costs its name, its value and 32 (RFC 7541 4.1): at most 128 fit. */
#define HPACK_ENTRIES (HPACK_TABLE_MAX / 32)
/* The entries' bytes: a ring that never splits an entry, so each name and
 * value is contiguous and a field can point at it. 2 * max - 96 bytes is
 * what that takes (hpack.c, "The table"). */
#define HPACK_RING (2 * HPACK_TABLE_MAX - 96)
/* The sequence numbers of entries wrap at 2^15 (the encoder's index uses
 * bit 15 as "none"). */
#define HPACK_SEQ_MASK 0x7fff

struct hpack_entry {
    uint16_t off;             /* the name at ring[off], the value right after it */
    uint16_t nlen, vlen;
};

struct hpack_table {
    uint32_t size;            /* RFC size: the sum of nlen + vlen + 32 over the entries */
    uint32_t max;             /* the max size in force */
    uint16_t n;               /* entries */
    uint16_t ins;             /* sequence number the next entry gets; the newest has ins - 1 */
    uint16_t head;            /* ring offset just past the newest entry */
    struct hpack_entry ent[HPACK_ENTRIES];   /* by sequence number % HPACK_ENTRIES */
    uint8_t ring[HPACK_RING];
};

/* ---- decoding ------------------------------------------------------------ */

struct hpack_dec {
    struct hpack_table t;
    uint32_t limit;           /* the most a size update may set: our SETTINGS_HEADER_TABLE_SIZE */
    uint8_t fields;           /* this block had a field: size updates are over */
    uint8_t must_update;      /* the limit went under the table's max: the next block begins with an update */
};

void hpack_dec_init(struct hpack_dec *d);            /* max size HPACK_TABLE_MAX */
/* Our SETTINGS_HEADER_TABLE_SIZE became v (the peer acknowledged it):
 * size updates above min(v, HPACK_TABLE_MAX) are errors from now on. If the
 * table's max was above that, it shrinks to it (evicting) and the peer's
 * next block must begin with a size update (RFC 7541 4.2), or it is an
 * error. Not needed while we announce the default. */
void hpack_dec_limit(struct hpack_dec *d, uint32_t v);
void hpack_dec_begin(struct hpack_dec *d);           /* a new header block starts: size updates are allowed until its first field */
/* Decode the next field of a complete header block [*p, end). Returns
 * HPACK_FIELD with *f filled and *p advanced past it; HPACK_END when
 * *p == end (a size update alone is consumed and then END/FIELD follows);
 * or an error. Huffman-coded strings are decoded into scratch[0..cap) (the
 * caller's, reused by every call); one that does not fit returns
 * HPACK_E_TOO_LONG, and then *p stays at the field and d is as it was
 * (call again with a larger scratch, or end the connection: the table can
 * no longer follow the peer's without this field, RFC 9113 10.5.1). f's
 * pointers (into the block, the dynamic table, the static table, or
 * scratch) stay valid until the next call on d; they are never NULL. */
int hpack_decode(struct hpack_dec *d, const uint8_t **p, const uint8_t *end, struct hpack_field *f, uint8_t *scratch, size_t cap);

/* ---- encoding ------------------------------------------------------------ */

/* The encoder's index of its table: per bucket the sequence number of the
 * newest entry hashed there (or HPACK_NONE), per entry the next older one. */
#define HPACK_BUCKETS 128
#define HPACK_NONE 0x8000

struct hpack_link {
    uint16_t name_next, field_next;   /* the next older entry in the same bucket */
};

struct hpack_enc {
    struct hpack_table t;
    uint32_t signaled;        /* the max size the peer's decoder knows */
    uint32_t low;             /* the least max set since the last block began, or UINT32_MAX */
    uint16_t name_head[HPACK_BUCKETS];    /* by a hash of the name */
    uint16_t field_head[HPACK_BUCKETS];   /* by a hash of the value and the name's length */
    struct hpack_link link[HPACK_ENTRIES];   /* by sequence number % HPACK_ENTRIES */
};

void hpack_enc_init(struct hpack_enc *e);            /* max HPACK_TABLE_MAX, the RFC's initial 4096 */
/* The peer's SETTINGS_HEADER_TABLE_SIZE: our table's max becomes
 * min(v, HPACK_TABLE_MAX) (evicting), and the next block begins with a
 * size update (RFC 7541 4.2, 6.3) if that differs from the max the peer
 * last heard; when the value shrank and grew again between blocks, it
 * signals the smallest, then the final. */
void hpack_enc_limit(struct hpack_enc *e, uint32_t v);
/* Start a block: writes a pending size update if any. Returns bytes written (0 if none) or -1 if room is short. */
ssize_t hpack_encode_begin(struct hpack_enc *e, uint8_t *out, size_t room);
/* Encode one field (names lower-case, the caller checked them). Returns
 * bytes written, or -1 if room is short, and then nothing changed (the
 * table is untouched). Flags: HPACK_F_NEVER, HPACK_F_NOINDEX. */
ssize_t hpack_encode(struct hpack_enc *e, uint8_t *out, size_t room, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen, uint32_t flags);

/* ---- Huffman (hpack_huff.c) ---------------------------------------------- */

/* Decodes the Huffman-coded string [in, in + n) into out[0..cap): 0 with
 * *outlen set, HPACK_E_COMPRESSION if it is malformed (EOS inside, padding
 * over 7 bits or not all ones: RFC 7541 5.2), HPACK_E_TOO_LONG if it does
 * not fit. out is never NULL (with cap 0 too). */
int hpack_huff_decode(const uint8_t *in, size_t n, uint8_t *out, size_t cap, size_t *outlen);

#endif
