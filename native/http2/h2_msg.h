/*
 * HTTP semantics of an HTTP/2 request's fields (RFC 9113 section 8.2-8.3),
 * checked one field at a time as the header block decodes: pure, no I/O.
 * What nghttp2's "HTTP messaging" checked before (lib/nghttp2_http.c), with
 * the same outcomes: a malformed request is a stream error
 * (PROTOCOL_ERROR); a regular field with an invalid name or value is
 * dropped and the request goes on.
 */
#ifndef UPROXY_H2_MSG_H
#define UPROXY_H2_MSG_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define H2M_NONE UINT64_MAX       /* no content-length */

struct h2_msg {
    uint32_t seen;                /* H2M_* bits: what the block had so far */
    uint64_t clen;                /* content-length, or H2M_NONE */
};

enum { H2M_OK = 0, H2M_DROP = 1, H2M_BAD = -1 };

void h2_msg_init(struct h2_msg *m);
/* One field of a request's head (trailer: false) or of its trailers. */
int h2_msg_field(struct h2_msg *m, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen,
                 bool trailer);
/* The head's block ended: H2M_OK, or H2M_BAD when a required
 * pseudo-header is missing (or the combination is wrong). */
int h2_msg_head_end(const struct h2_msg *m);

#endif
