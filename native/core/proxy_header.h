/*
 * The PROXY protocol header, versions 1 and 2 (proxy_header.c).
 */
#ifndef UPROXY_PROXY_HEADER_H
#define UPROXY_PROXY_HEADER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PH_PARTIAL 0          /* more bytes are needed */
#define PH_ERROR   (-1)       /* not a PROXY header, or a malformed one */
#define PH_V1_MAX  107        /* the longest version 1 line, CRLF included */
#define PH_V2_MAX  (16 + 512) /* addresses and the TLVs uproxy lets through (it reads none) */

struct proxy_header {
    uint8_t family;           /* 4 or 16: the client's address; 0: the connection's stands */
    uint8_t pad;
    uint16_t port;
    uint8_t addr[16];
};

/* The header at the start of p[0..n): its length (> 0), PH_PARTIAL or
 * PH_ERROR; out holds the client when the length is returned. */
int proxy_header_parse(const uint8_t *p, size_t n, struct proxy_header *out);

/* Whether an address (4 or 16 bytes; an IPv4-mapped IPv6 one counts as
 * IPv4) is in one of n networks: who may send a PROXY header
 * (trusted_proxies), and the HTTP policies' allow, deny and trusted lists. */
struct up_cidr;
bool cidr_match(const struct up_cidr *cs, uint32_t n, const uint8_t *a, uint8_t len);

#endif
