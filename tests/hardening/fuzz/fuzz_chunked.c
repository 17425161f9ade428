/*
 * libFuzzer harness: h1_chunked_feed() over arbitrary bytes.
 *
 * The whole input is fed three ways: in one piece, in pieces whose sizes
 * come from the input, and one byte at a time. All three must agree on
 * where the message ends (or that it has not ended yet), on an error, and
 * on the state left behind. Where the decoder says the message ended, a
 * deliberately simple reference reader (size line to its CRLF, data,
 * CRLF, trailer lines to the empty line) must end at the very same byte:
 * a disagreement there is exactly what request smuggling exploits. After
 * the end, more bytes are never taken.
 */
#include "fuzz_common.h"

struct result {
    int64_t consumed;     /* bytes taken before done, error or the end */
    int done, error;
    struct h1_chunked c;
};

static struct result feed(const uint8_t *buf, size_t n, int mode, uint64_t seed)
{
    struct result r = { 0, 0, 0, { 0 } };
    h1_chunked_init(&r.c);
    size_t off = 0;
    while (off < n || (off == n && n == 0 && !r.done)) {
        size_t piece = n - off;
        if (mode == 1 && piece)
            piece = 1;
        else if (mode == 2 && piece > 1)
            piece = 1 + (size_t)(mix(&seed) % (piece < 64 ? piece : (mix(&seed) & 1 ? 64 : piece)));
        uint8_t *b = exact_copy(buf + off, piece);
        int d = 0;
        int64_t k = h1_chunked_feed(&r.c, b, piece, &d);
        free(b);
        if (k < 0) {
            CHECK(r.c.error != NULL && r.c.error_status == 400);
            r.error = 1;
            break;
        }
        CHECK((size_t)k <= piece);
        r.consumed += k;
        if (d) {
            r.done = 1;
            break;
        }
        CHECK((size_t)k == piece);   /* not done: everything offered belongs to the message */
        off += piece;
        if (n == 0)
            break;
    }
    return r;
}

/* The reference: lenient where the decoder is strict (anything in a size
 * line after the digits up to CRLF, any trailer line), so wherever the
 * decoder finishes, the reference must finish at the same byte. Returns
 * the end offset, or -1 if the bytes end first or it cannot read them. */
static int64_t reference_end(const uint8_t *b, size_t n)
{
    size_t i = 0;
    for (;;) {
        uint64_t size = 0;
        size_t digits = 0;
        while (i < n && ((b[i] >= '0' && b[i] <= '9') || ((b[i] | 0x20) >= 'a' && (b[i] | 0x20) <= 'f'))) {
            unsigned d = b[i] <= '9' ? (unsigned)(b[i] - '0') : (unsigned)((b[i] | 0x20) - 'a' + 10);
            if (size >> 60)
                return -1;
            size = size << 4 | d;
            digits++;
            i++;
        }
        if (!digits)
            return -1;
        while (i + 1 < n && !(b[i] == '\r' && b[i + 1] == '\n'))
            i++;
        if (i + 1 >= n)
            return -1;
        i += 2;
        if (size == 0)
            break;
        if (n - i < size + 2)
            return -1;
        i += size;
        if (b[i] != '\r' || b[i + 1] != '\n')
            return -1;
        i += 2;
    }
    for (;;) {   /* trailer lines, then the empty line */
        size_t s = i;
        while (i + 1 < n && !(b[i] == '\r' && b[i + 1] == '\n'))
            i++;
        if (i + 1 >= n)
            return -1;
        i += 2;
        if (i - s == 2)
            return (int64_t)i;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t seed = seed_of(data, size);
    struct result whole = feed(data, size, 0, seed);
    struct result bytes = feed(data, size, 1, seed);
    struct result split = feed(data, size, 2, seed);
    const struct result *other[2] = { &bytes, &split };
    for (int i = 0; i < 2; i++) {
        const struct result *o = other[i];
        CHECK(o->done == whole.done && o->error == whole.error);
        if (!whole.error)
            CHECK(o->consumed == whole.consumed);
        if (!whole.error && !whole.done)
            CHECK(o->c.state == whole.c.state && o->c.remaining == whole.c.remaining);
    }
    if (whole.done) {
        CHECK(whole.consumed >= 5);                    /* "0\r\n\r\n" at least */
        CHECK(reference_end(data, size) == whole.consumed);
        /* Done is final: more bytes are not taken. */
        int d = 0;
        CHECK(h1_chunked_feed(&whole.c, data, size, &d) == 0 && d == 1);
    } else if (!whole.error) {
        CHECK(whole.consumed == (int64_t)size);
        int64_t ref = reference_end(data, size);
        CHECK(ref < 0);                                /* the reference did not end earlier */
    }
    if (whole.error) {
        int d = 0;
        CHECK(h1_chunked_feed(&whole.c, data, size, &d) == -1);   /* errors stay */
    }
    return 0;
}
