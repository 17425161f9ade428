/*
 * HPACK's Huffman code (RFC 7541 5.2, Appendix B), decoding only: peers
 * Huffman-code most strings they send; our encoder writes raw ones
 * (hpack.c says why).
 *
 * A string is read four bits at a time through a state machine: the states
 * are the inner nodes of the code's tree, and each step says where four
 * bits lead from a state and whether they finished a symbol on the way
 * (at most one: no code is shorter than 5 bits). The table
 * (hpack_huff_table.h, 257 x 16 words, 16 KiB) is written by
 * gen_hpack_huff.py from the RFC's list of codes. Two of the RFC's errors
 * cost nothing per step: reading EOS leads to a dead state that only leads
 * to itself, and the states a string may end on (after 0 to 7 one-bits of
 * padding) are numbered 0-7, so the end check is one comparison.
 */
#include <stdbool.h>

#include "http2/hpack.h"
#include "http2/hpack_huff_table.h"

/* One symbol per nibble at most: bounded, it stops when out is full;
 * unbounded, the caller made sure out holds every symbol n bytes can code
 * (8n / 5, the shortest code being 5 bits). */
static inline int huff_run(const uint8_t *in, const uint8_t *end, uint8_t *out,
                           const uint8_t *out_end, bool bounded, size_t *outlen)
{
    uint8_t *o = out;
    uint32_t state = 0;
    for (; in < end; in++) {
        uint32_t e = hpack_huff_step[state][*in >> 4];
        if (e & HUFF_EMIT) {
            if (bounded && o == out_end)
                return HPACK_E_TOO_LONG;
            *o++ = (uint8_t)(e >> 16);
        }
        e = hpack_huff_step[e & HUFF_STATE][*in & 15];
        if (e & HUFF_EMIT) {
            if (bounded && o == out_end)
                return HPACK_E_TOO_LONG;
            *o++ = (uint8_t)(e >> 16);
        }
        state = e & HUFF_STATE;
    }
    if (state >= HUFF_ACCEPT_BELOW)
        return HPACK_E_COMPRESSION;
    *outlen = (size_t)(o - out);
    return 0;
}

int hpack_huff_decode(const uint8_t *in, size_t n, uint8_t *out, size_t cap, size_t *outlen)
{
    if (n / 5 * 8 + 8 <= cap)
        return huff_run(in, in + n, out, out + cap, false, outlen);
    return huff_run(in, in + n, out, out + cap, true, outlen);
}
