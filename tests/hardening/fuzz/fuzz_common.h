/*
 * Shared helpers of the libFuzzer harnesses (HTTP/1.1 and ClientHello). Each
 * harness checks invariants itself and calls CHECK(), which aborts (and so
 * makes libFuzzer keep the input as a crash) with the line that failed.
 */
#ifndef UPROXY_FUZZ_COMMON_H
#define UPROXY_FUZZ_COMMON_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http1_api.h"

#define CHECK(cond) do { if (!(cond)) { \
    fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
    abort(); } } while (0)

/* A private, exact-size copy: AddressSanitizer then sees a read even one
 * byte past the end (libFuzzer's own buffer is exact-size too, but the
 * prefixes the harnesses try are not). */
static inline uint8_t *exact_copy(const uint8_t *p, size_t n)
{
    uint8_t *b = malloc(n ? n : 1);
    if (n)
        memcpy(b, p, n);
    return b;
}

/* A small deterministic generator for split points, seeded from the input,
 * so a crash reproduces from its file alone. */
static inline uint64_t mix(uint64_t *s)
{
    *s += 0x9e3779b97f4a7c15ull;
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t seed_of(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* Every byte of an accepted head: no control byte but HTAB, CR and LF, and
 * every LF preceded by CR, every CR followed by LF. */
static inline void check_head_bytes(const uint8_t *b, size_t n)
{
    CHECK(n >= 4 && memcmp(b + n - 4, "\r\n\r\n", 4) == 0);
    for (size_t i = 0; i < n; i++) {
        uint8_t c = b[i];
        if (c == '\n')
            CHECK(i > 0 && b[i - 1] == '\r');
        else if (c == '\r')
            CHECK(i + 1 < n && b[i + 1] == '\n');
        else
            CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
    }
}

static inline void check_header(const struct h1_header *h, size_t head_len)
{
    CHECK(h->line_off + (uint64_t)h->line_len <= head_len);
    CHECK(h->line_len >= 2);
    CHECK(h->name_off == h->line_off);
    CHECK(h->name_len > 0);
    CHECK(h->value_off >= h->name_off + h->name_len + 1u);
    CHECK(h->value_off + (uint64_t)h->value_len + 2 <= h->line_off + (uint64_t)h->line_len);
}

static inline int is_ows(uint8_t c) { return c == ' ' || c == '\t'; }

/* The value excludes the whitespace around it. */
static inline void check_value_trimmed(const uint8_t *b, const struct h1_header *h)
{
    if (h->value_len) {
        CHECK(!is_ows(b[h->value_off]));
        CHECK(!is_ows(b[h->value_off + h->value_len - 1]));
    }
    CHECK(b[h->name_off + h->name_len] == ':');
}

#endif
