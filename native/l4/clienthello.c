/*
 * The TLS ClientHello's server name (clienthello_api.h): the implementation.
 *
 * Pure: no I/O, no allocation, no writable globals. Two passes over the
 * bytes received so far, both bounded by CH_MAX_BYTES:
 *   1. the record layer: walk the record headers until the handshake
 *      message's header (4 bytes) and then its whole length have arrived,
 *      checking each header as it goes (type, version, length), so that
 *      garbage or a record that could never fit fails at once instead of
 *      waiting for the timeout;
 *   2. the message: a cursor that reads the handshake stream across record
 *      boundaries (a ClientHello may be split over several records, RFC
 *      8446 section 5.1) and checks every length against what encloses it.
 * A caller that gets CH_PARTIAL calls again with more bytes from the same
 * start; the work per call is proportional to the records and fields, not
 * to the bytes (fields it does not need are skipped, not read).
 *
 * Wire format (RFC 8446 sections 4.1.2 and 5.1, RFC 5246 7.4.1.2, RFC 6066
 * section 3):
 *   record:  type(1)=22 version(2)=3.x length(2)=1..16384 fragment
 *   message: msg_type(1)=1 length(3) body
 *   body:    legacy_version(2) random(32) session_id<0..32>
 *            cipher_suites<2..2^16-2> (even) compression_methods<1..2^8-1>
 *            [extensions<0..2^16-1>, exactly to the end of the body]
 *   server_name (type 0): server_name_list<1..2^16-1> of
 *            name_type(1) name<1..2^16-1>; host_name (type 0) at most once.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "l4/clienthello_api.h"

#define REC_HEADER     5
#define REC_HANDSHAKE  22
#define REC_MAX        16384      /* 2^14: larger is a record_overflow */
#define HS_CLIENT_HELLO 1
#define HS_HEADER      4
/* The shortest body: version, random, empty session id, one suite, one
 * compression method. */
#define BODY_MIN       (2 + 32 + 1 + 2 + 2 + 1 + 1)
#define EXT_SERVER_NAME 0
#define NAME_HOST      0

static int fail(struct ch_hello *out, const char *why)
{
    out->error = why;
    return CH_ERROR;
}

static inline uint32_t be16(const uint8_t *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

/* ---- pass 2: a cursor over the handshake stream ---------------------------
 * Pass 1 has checked every record header up to `end` (the byte after the
 * message), so hopping over a header needs no checks; the cursor still
 * refuses to go past `end`, and the parser never asks it to, because every
 * read is first checked against the lengths that enclose it. */
struct cur {
    const uint8_t *b;
    size_t pos;               /* the next byte of the stream in b */
    size_t frag_end;          /* the end of the current record's fragment */
    size_t end;               /* the byte after the ClientHello */
    uint32_t left;            /* bytes of the message body not yet consumed */
};

static inline void hop(struct cur *c)
{
    while (c->pos == c->frag_end && c->pos + REC_HEADER <= c->end) {
        c->frag_end = c->pos + REC_HEADER + be16(c->b + c->pos + 3);
        c->pos += REC_HEADER;
    }
}

/* The next n bytes of the message (n <= 4) as a big-endian number, read
 * across record boundaries.
 * The caller has checked n <= c->left. */
static uint32_t take(struct cur *c, uint32_t n)
{
    uint32_t v = 0;
    c->left -= n;
    while (n) {
        hop(c);
        if (c->pos >= c->end || c->pos >= c->frag_end)
            return v;                  /* not reached: pass 1 said the bytes are there */
        v = v << 8 | c->b[c->pos++];
        n--;
    }
    return v;
}

static void skip(struct cur *c, uint32_t n)
{
    c->left -= n;
    while (n) {
        hop(c);
        size_t stop = c->frag_end < c->end ? c->frag_end : c->end;
        if (c->pos >= stop)
            return;                    /* not reached, as in take() */
        size_t step = n < stop - c->pos ? n : stop - c->pos;
        c->pos += step;
        n -= (uint32_t)step;
    }
}

#define NEED(c, n, why) do { if ((c)->left < (n)) return fail(out, why); } while (0)

/* A host name as RFC 6066 and DNS want it: dot-separated labels of letters,
 * digits, '-' and '_' (seen in private names), no empty label (so no
 * leading, trailing or doubled dot). The router compares names byte by
 * byte; anything else would be a name no route could mean. */
static int host_name_ok(const char *s, uint32_t n)
{
    uint32_t label = 0;
    for (uint32_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '.') {
            if (!label)
                return 0;
            label = 0;
            continue;
        }
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '-' || ch == '_'))
            return 0;
        if (++label > 63)
            return 0;
    }
    return label != 0;
}

/* The server_name extension's body (elen bytes at the cursor). */
static int server_name(struct cur *c, uint32_t elen, struct ch_hello *out)
{
    uint32_t body_after = c->left - elen;   /* where the extension must end */
    if (elen < 2)
        return fail(out, "server_name extension too short");
    uint32_t list = take(c, 2);
    if (list != elen - 2)
        return fail(out, "server_name list length does not match its extension");
    if (list == 0)
        return fail(out, "empty server_name list");
    while (c->left > body_after) {
        if (c->left - body_after < 3)
            return fail(out, "server_name entry cut short");
        uint32_t type = take(c, 1);
        uint32_t n = take(c, 2);
        if (n > c->left - body_after)
            return fail(out, "server_name entry longer than its list");
        if (type != NAME_HOST) {
            skip(c, n);                  /* a name type this parser does not know */
            continue;
        }
        if (out->name_len)
            return fail(out, "two host names in server_name");
        if (n == 0)
            return fail(out, "empty host name");
        if (n > CH_MAX_NAME)
            return fail(out, "host name longer than 255 bytes");
        hop(c);
        out->name_off = (uint32_t)c->pos;
        for (uint32_t i = 0; i < n; i++)
            out->name[i] = (char)take(c, 1);
        out->name[n] = 0;
        out->name_len = n;
        if (!host_name_ok(out->name, n))
            return fail(out, "host name with a byte or a label shape DNS does not allow");
    }
    return CH_FOUND;
}

/* The message body: everything but the extension we want is only skipped
 * over, but every length must add up exactly. */
static int body(struct cur *c, struct ch_hello *out)
{
    NEED(c, BODY_MIN, "ClientHello too short");
    out->version = (uint16_t)take(c, 2);
    if (out->version >> 8 != 3)
        return fail(out, "ClientHello version is not 3.x");
    skip(c, 32);                               /* random */
    uint32_t n = take(c, 1);
    if (n > 32)
        return fail(out, "session id longer than 32 bytes");
    NEED(c, n + 2, "session id longer than the ClientHello");
    skip(c, n);
    n = take(c, 2);
    if (n < 2 || n % 2)
        return fail(out, "cipher suites length is zero or odd");
    NEED(c, n + 1, "cipher suites longer than the ClientHello");
    skip(c, n);
    n = take(c, 1);
    if (n < 1)
        return fail(out, "no compression method");
    NEED(c, n, "compression methods longer than the ClientHello");
    skip(c, n);
    if (c->left == 0)
        return CH_FOUND;                       /* no extensions: no server name */
    NEED(c, 2, "extensions length cut short");
    n = take(c, 2);
    if (n != c->left)
        return fail(out, "extensions length does not match the ClientHello");
    int seen = 0;
    while (c->left) {
        NEED(c, 4, "extension header cut short");
        uint32_t type = take(c, 2);
        uint32_t elen = take(c, 2);
        NEED(c, elen, "extension longer than the extensions");
        if (type != EXT_SERVER_NAME) {
            skip(c, elen);
            continue;
        }
        if (seen++)
            return fail(out, "two server_name extensions");
        int rc = server_name(c, elen, out);
        if (rc != CH_FOUND)
            return rc;
    }
    return CH_FOUND;
}

/* ---- pass 1: the record layer ------------------------------------------- */

int ch_parse(const uint8_t *buf, size_t len, struct ch_hello *out)
{
    memset(out, 0, offsetof(struct ch_hello, name));
    out->name[0] = 0;
    if (len > CH_MAX_BYTES)
        len = CH_MAX_BYTES;                    /* never look further */
    uint8_t hs[HS_HEADER];
    uint64_t stream = 0;                       /* handshake bytes seen, over all records */
    uint64_t need = 0;                         /* 4 + the message length, once known */
    size_t pos = 0, end = 0;
    for (;;) {
        /* A record header, checked byte by byte as far as it has come:
         * "GET / HTTP/1.1" fails on its first byte. */
        if (pos < len && buf[pos] != REC_HANDSHAKE)
            return fail(out, pos == 0 ? "not a TLS handshake record (not TLS?)"
                                      : "a record other than handshake inside the ClientHello");
        if (pos + 1 < len && buf[pos + 1] != 3)
            return fail(out, "record version is not 3.x");
        if (pos + REC_HEADER > len)
            goto partial;
        uint32_t rlen = be16(buf + pos + 3);
        if (rlen == 0)
            return fail(out, "empty handshake record");
        if (rlen > REC_MAX)
            return fail(out, "record longer than 16384 bytes");
        out->records++;
        size_t frag = pos + REC_HEADER;
        size_t avail = len - frag < rlen ? len - frag : rlen;
        size_t i = 0;
        /* The message header may itself be split over records. */
        for (; i < avail && stream < HS_HEADER; i++) {
            hs[stream++] = buf[frag + i];
            if (stream == 1 && hs[0] != HS_CLIENT_HELLO)
                return fail(out, "first handshake message is not a ClientHello");
            if (stream == HS_HEADER) {
                uint32_t mlen = (uint32_t)hs[1] << 16 | (uint32_t)hs[2] << 8 | hs[3];
                if (mlen < BODY_MIN)
                    return fail(out, "ClientHello too short");
                /* Even in one record it must end within CH_MAX_BYTES. */
                if ((uint64_t)REC_HEADER + HS_HEADER + mlen > CH_MAX_BYTES)
                    return fail(out, "ClientHello longer than 16 KiB");
                need = HS_HEADER + (uint64_t)mlen;
            }
        }
        if (need && stream + (avail - i) >= need) {
            end = frag + i + (size_t)(need - stream);   /* it ends in this fragment */
            break;
        }
        stream += avail - i;
        if (avail < rlen)
            goto partial;                      /* the rest of this record is on its way */
        pos = frag + rlen;
    }
    out->hello_len = (uint32_t)end;
    struct cur c = { .b = buf, .pos = 0, .frag_end = 0, .end = end, .left = (uint32_t)need };
    take(&c, HS_HEADER);
    int rc = body(&c, out);
    if (rc != CH_FOUND) {
        out->name_len = 0;
        out->name[0] = 0;
    }
    return rc;
partial:
    if (len >= CH_MAX_BYTES)
        return fail(out, "no complete ClientHello within 16 KiB");
    return CH_PARTIAL;
}
