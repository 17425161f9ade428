/*
 * libFuzzer harness: ch_parse() (native/l4/clienthello.c) over arbitrary
 * bytes.
 *
 * The first byte picks how the rest is presented, so that the mutations
 * reach the message body and not only the record layer:
 *   0  the bytes as they are, as a client would send them;
 *   1  the rest is a ClientHello body: the harness adds the handshake
 *      header and one record around it;
 *   2  the same, cut into records of sizes drawn from the input.
 * Checked:
 *   - the result is one of the three codes; an error has a reason, and
 *     CH_PARTIAL comes only for fewer than CH_MAX_BYTES bytes;
 *   - on CH_FOUND: the ClientHello ends within the bytes and the limit, the
 *     name is NUL-terminated, within 255 bytes, made of the characters a
 *     host name may have, and its first byte is at name_off; parsing
 *     exactly hello_len bytes gives the same answer (nothing after the
 *     ClientHello is looked at);
 *   - every proper prefix of a found ClientHello is CH_PARTIAL (no early
 *     error, no early answer); a prefix of an error is CH_PARTIAL or that
 *     same error (errors do not change as bytes arrive);
 *   - the same handshake message cut into other records is found again,
 *     with the same name (fragmentation never changes the answer).
 */
#include "fuzz_common.h"
#include "l4/clienthello_api.h"

static int parse(const uint8_t *p, size_t n, struct ch_hello *h)
{
    uint8_t *b = exact_copy(p, n);
    memset(h, 0xa5, sizeof *h);     /* no output may depend on what was there */
    int rc = ch_parse(b, n, h);
    free(b);
    return rc;
}

/* The handshake message (header and body) that records carry, gathered
 * from buf's records up to hello_len; its length. */
static size_t message_of(const uint8_t *buf, size_t hello_len, uint8_t *msg)
{
    size_t pos = 0, n = 0;
    while (pos + 5 <= hello_len) {
        size_t rlen = (size_t)buf[pos + 3] << 8 | buf[pos + 4];
        size_t take = rlen < hello_len - pos - 5 ? rlen : hello_len - pos - 5;
        memcpy(msg + n, buf + pos + 5, take);
        n += take;
        pos += 5 + rlen;
    }
    return n;
}

/* msg in records whose sizes come from s (1 .. 16384 bytes each); the
 * length of what was written to out (at most cap), 0 if it does not fit. */
static size_t frame(const uint8_t *msg, size_t n, uint64_t *s, uint8_t *out, size_t cap)
{
    size_t pos = 0, w = 0;
    uint64_t shape = mix(s) % 4;
    while (pos < n) {
        size_t k = shape == 0 ? n - pos                      /* one record */
                 : shape == 1 ? 1 + mix(s) % 8               /* tiny records */
                 : 1 + mix(s) % (n - pos);
        if (k > n - pos)
            k = n - pos;
        if (k > 16384)
            k = 16384;
        if (w + 5 + k > cap)
            return 0;
        out[w++] = 0x16;
        out[w++] = 0x03;
        out[w++] = (uint8_t)(mix(s) % 4);                   /* 3.0 .. 3.3 */
        out[w++] = (uint8_t)(k >> 8);
        out[w++] = (uint8_t)k;
        memcpy(out + w, msg + pos, k);
        w += k;
        pos += k;
    }
    return w;
}

static int name_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.';
}

static void check_found(const uint8_t *b, size_t n, const struct ch_hello *h)
{
    CHECK(h->hello_len <= n && h->hello_len <= CH_MAX_BYTES);
    CHECK(h->hello_len >= 5 + 4 + 41);
    CHECK(h->records >= 1);
    CHECK(h->version >> 8 == 3);
    CHECK(h->name_len <= CH_MAX_NAME);
    CHECK(h->name[h->name_len] == 0);
    CHECK(strlen(h->name) == h->name_len);
    if (h->name_len) {
        CHECK(h->name_off < h->hello_len);
        CHECK(b[h->name_off] == (uint8_t)h->name[0]);
        CHECK(h->name[0] != '.' && h->name[h->name_len - 1] != '.');
        CHECK(!strstr(h->name, ".."));
        for (uint32_t i = 0; i < h->name_len; i++)
            CHECK(name_char_ok(h->name[i]));
    }
}

static uint8_t work[CH_MAX_BYTES + 64], msg[CH_MAX_BYTES], again[CH_MAX_BYTES];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint64_t s = seed_of(data, size);
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    uint8_t mode = data[0] % 3;
    if (mode) {
        /* Wrap the rest as a ClientHello body. */
        if (n > CH_MAX_BYTES - 9)
            n = CH_MAX_BYTES - 9;
        msg[0] = 1;
        msg[1] = (uint8_t)(n >> 16);
        msg[2] = (uint8_t)(n >> 8);
        msg[3] = (uint8_t)n;
        memcpy(msg + 4, p, n);
        size_t w;
        if (mode == 1) {
            work[0] = 0x16, work[1] = 0x03, work[2] = 0x01;
            work[3] = (uint8_t)((n + 4) >> 8), work[4] = (uint8_t)(n + 4);
            memcpy(work + 5, msg, n + 4);
            w = n + 9;
        } else {
            w = frame(msg, n + 4, &s, work, sizeof work);
        }
        if (!w)
            return 0;
        p = work;
        n = w;
    }

    static struct ch_hello h, h2;
    int rc = parse(p, n, &h);
    CHECK(rc == CH_FOUND || rc == CH_PARTIAL || rc == CH_ERROR);
    if (rc == CH_ERROR)
        CHECK(h.error != NULL);
    if (rc == CH_PARTIAL)
        CHECK(n < CH_MAX_BYTES);
    if (rc == CH_FOUND) {
        check_found(p, n, &h);
        /* Exactly the ClientHello parses the same. */
        int rc2 = parse(p, h.hello_len, &h2);
        CHECK(rc2 == CH_FOUND);
        CHECK(h2.hello_len == h.hello_len && h2.records == h.records &&
              h2.name_len == h.name_len && h2.name_off == h.name_off &&
              h2.version == h.version && strcmp(h2.name, h.name) == 0);
        /* Other records, same message, same answer. */
        size_t m = message_of(p, h.hello_len, msg);
        size_t w = frame(msg, m, &s, again, sizeof again);
        if (w) {
            int rc3 = parse(again, w, &h2);
            CHECK(rc3 == CH_FOUND);
            CHECK(h2.hello_len == w && h2.name_len == h.name_len &&
                  strcmp(h2.name, h.name) == 0 && h2.version == h.version);
        }
    }
    /* Prefixes: the last byte short, and a few drawn from the input. */
    size_t stop = rc == CH_FOUND ? h.hello_len : (n < CH_MAX_BYTES ? n : CH_MAX_BYTES);
    for (int i = 0; i < 6 && stop > 0; i++) {
        size_t k = i == 0 ? stop - 1 : (size_t)(mix(&s) % stop);
        int rk = parse(p, k, &h2);
        if (rc == CH_ERROR)
            CHECK(rk == CH_PARTIAL || (rk == CH_ERROR && h2.error == h.error));
        else
            CHECK(rk == CH_PARTIAL);
    }
    return 0;
}
