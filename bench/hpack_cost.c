/*
 * What HPACK costs per header block (native/http2/hpack.c): a typical h2load
 * request and an nginx-like response, each decoded and encoded over and
 * over with a warm dynamic table (the steady state of a keep-alive
 * connection), timed. Under callgrind, instructions per block are the
 * difference of two runs of one case with different counts (setup cancels
 * out): tests/unit/test_hpack.py (test_instructions_per_block, marked
 * slow) does that.
 *
 *   cc -O2 -Inative bench/hpack_cost.c native/http2/hpack.c native/http2/hpack_huff.c
 *   ./a.out                 every case, ns per block (JSON lines)
 *   ./a.out CASE N          one case, N blocks, nothing printed
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http2/hpack.h"

struct fld { const char *name, *value; uint32_t flags; size_t nlen, vlen; };

#define F(n, v) { n, v, 0, sizeof(n) - 1, sizeof(v) - 1 }
static const struct fld REQUEST[] = {
    F(":method", "GET"), F(":scheme", "http"), F(":path", "/64"),
    F(":authority", "127.0.0.1:8080"), F("user-agent", "h2load/1.52.0"), F("accept", "*/*"),
};
static const struct fld RESPONSE[] = {
    F(":status", "200"), F("server", "nginx/1.22.1"), F("date", "Tue, 14 May 2024 10:00:00 GMT"),
    F("content-type", "text/plain"), F("content-length", "64"),
};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static uint8_t scratch[4096];
static volatile uint64_t sink;

static size_t encode_block(struct hpack_enc *e, uint8_t *out, size_t room, const struct fld *f,
                           size_t n)
{
    ssize_t k = hpack_encode_begin(e, out, room);
    size_t len = (size_t)k;
    for (size_t i = 0; i < n; i++) {
        k = hpack_encode(e, out + len, room - len, (const uint8_t *)f[i].name, f[i].nlen,
                         (const uint8_t *)f[i].value, f[i].vlen, f[i].flags);
        if (k < 0)
            abort();
        len += (size_t)k;
    }
    return len;
}

static void decode_block(struct hpack_dec *d, const uint8_t *b, size_t len)
{
    const uint8_t *p = b;
    struct hpack_field f;
    int r;
    uint64_t sum = 0;
    hpack_dec_begin(d);
    while ((r = hpack_decode(d, &p, b + len, &f, scratch, sizeof scratch)) == HPACK_FIELD)
        sum += f.vlen;
    if (r != HPACK_END)
        abort();
    sink += sum;
}

/* The blocks, as a warm connection sends them. */
struct warm {
    struct hpack_enc e;
    struct hpack_dec d;
    uint8_t block[512];
    size_t len;
};

static void warm_up(struct warm *w, const struct fld *f, size_t n)
{
    uint8_t first[512];
    hpack_enc_init(&w->e);
    hpack_dec_init(&w->d);
    size_t len = encode_block(&w->e, first, sizeof first, f, n);
    decode_block(&w->d, first, len);
    w->len = encode_block(&w->e, w->block, sizeof w->block, f, n);
}

/* A request block every field of which is indexed: :path too (what an
 * encoder that indexes :path sends once it is warm). */
static void warm_all_indexed(struct warm *w)
{
    static const uint8_t first[] = {
        0x82, 0x86, 0x44, 3, '/', '6', '4',
        0x41, 14, '1', '2', '7', '.', '0', '.', '0', '.', '1', ':', '8', '0', '8', '0',
        0x7a, 13, 'h', '2', 'l', 'o', 'a', 'd', '/', '1', '.', '5', '2', '.', '0',
        0x53, 3, '*', '/', '*',
    };
    hpack_dec_init(&w->d);
    decode_block(&w->d, first, sizeof first);
    /* :method, :scheme, then the dynamic ones: accept 62, user-agent 63,
     * :authority 64, :path 65 */
    static const uint8_t warm[] = { 0x82, 0x86, 0xc1, 0xc0, 0xbf, 0xbe };
    memcpy(w->block, warm, sizeof warm);
    w->len = sizeof warm;
}

/* The request as h2load (nghttp2) sends it once warm: all indexed but
 * :path, a Huffman-coded literal without indexing. */
static void warm_h2load(struct warm *w)
{
    warm_all_indexed(w);
    static const uint8_t h2load[] = { 0x82, 0x86, 0x04, 0x83, 0x61, 0xc6, 0xbf, 0xc0, 0xbf, 0xbe };
    /* 0x83 0x61 0xc6 0xbf: "/64" Huffman-coded, 3 bytes */
    memcpy(w->block, h2load, sizeof h2load);
    w->len = sizeof h2load;
}

enum { DEC_REQ_INDEXED, DEC_REQ_H2LOAD, DEC_REQ_OURS, DEC_RESP, ENC_RESP, ENC_REQ, CASES };
static const char *NAMES[CASES] = { "decode-request-all-indexed", "decode-request-h2load",
                                    "decode-request-ours", "decode-response",
                                    "encode-response", "encode-request" };

static void run(int c, long n)
{
    static struct warm w;
    uint8_t out[512];
    switch (c) {
    case DEC_REQ_INDEXED: warm_all_indexed(&w); break;
    case DEC_REQ_H2LOAD: warm_h2load(&w); break;
    case DEC_REQ_OURS: case ENC_REQ: warm_up(&w, REQUEST, COUNT(REQUEST)); break;
    case DEC_RESP: case ENC_RESP: warm_up(&w, RESPONSE, COUNT(RESPONSE)); break;
    }
    for (long i = 0; i < n; i++) {
        switch (c) {
        case ENC_RESP: sink += encode_block(&w.e, out, sizeof out, RESPONSE, COUNT(RESPONSE)); break;
        case ENC_REQ: sink += encode_block(&w.e, out, sizeof out, REQUEST, COUNT(REQUEST)); break;
        default: decode_block(&w.d, w.block, w.len); break;
        }
    }
}

int main(int argc, char **argv)
{
    if (argc == 3) {
        for (int c = 0; c < CASES; c++)
            if (strcmp(argv[1], NAMES[c]) == 0) {
                run(c, atol(argv[2]));
                return 0;
            }
        fprintf(stderr, "unknown case %s\n", argv[1]);
        return 2;
    }
    long n = argc == 2 ? atol(argv[1]) : 2000000;
    for (int c = 0; c < CASES; c++) {
        struct timespec a, b;
        run(c, 1000);
        clock_gettime(CLOCK_MONOTONIC, &a);
        run(c, n);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
        printf("{\"case\": \"%s\", \"ns_per_block\": %.1f}\n", NAMES[c], ns);
    }
    return 0;
}
