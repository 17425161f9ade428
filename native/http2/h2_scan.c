/*
 * The frame headers of what an HTTP/2 client sends, scanned without
 * decoding anything (pure functions over bytes, fuzzed with the codec in
 * tests/fuzz/fuzz_h2.c): where each frame starts, and which HEADERS frames
 * open a new stream (an id above every one seen). h2_hold.c lets the
 * codec have the bytes up to the one that would open a stream the worker
 * has no room for.
 */
#include <string.h>
#include "http2/h2.h"

#define FT_HEADERS 1

void h2_scan_init(struct h2_scan *sc)
{
    memset(sc, 0, sizeof *sc);
    sc->skip = 24;                    /* the client's connection preface */
}

/* How many of the n bytes at p may go to the codec while at most *budget
 * more streams may open: all of them, or the bytes before the end of the
 * header of the HEADERS frame that would open one too many (the codec
 * opens a stream once that header is whole). *budget is lowered by the
 * streams let through. A frame header split between two calls is kept in
 * sc->hdr: its first bytes may go (the codec waits for the rest). */
size_t h2_scan(struct h2_scan *sc, const uint8_t *p, size_t n, uint32_t *budget)
{
    size_t i = 0;
    while (i < n) {
        if (sc->skip) {
            size_t k = n - i < sc->skip ? n - i : sc->skip;
            i += k;
            sc->skip -= (uint32_t)k;
            continue;
        }
        size_t need = 9u - sc->hlen;
        if (n - i < need) {
            memcpy(sc->hdr + sc->hlen, p + i, n - i);
            sc->hlen = (uint8_t)(sc->hlen + (n - i));
            return n;
        }
        uint8_t h[9];
        memcpy(h, sc->hdr, sc->hlen);
        memcpy(h + sc->hlen, p + i, need);
        uint32_t len = (uint32_t)h[0] << 16 | (uint32_t)h[1] << 8 | h[2];
        int32_t id = (int32_t)(((uint32_t)h[5] << 24 | (uint32_t)h[6] << 16 |
                                (uint32_t)h[7] << 8 | h[8]) & 0x7fffffffu);
        if (h[3] == FT_HEADERS && id > sc->last_id) {
            if (!*budget)
                return i;             /* (the header's first bytes, if split, went) */
            (*budget)--;
            sc->last_id = id;
        }
        i += need;
        sc->hlen = 0;
        sc->skip = len;
    }
    return n;
}
