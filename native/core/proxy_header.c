/*
 * The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and
 * 2) that a load balancer sends before a connection's first byte, naming
 * the client it stands for. A pure parser, as http1.c is: bytes in, the
 * client's address out, nothing kept, nothing allocated.
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include "api.h"
#include "core/proxy_header.h"

static const uint8_t V2_SIG[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                    0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

/* "PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\r\n", at most 107 bytes. */
static int parse_v1(const uint8_t *p, size_t n, struct proxy_header *out)
{
    const uint8_t *end = memchr(p, '\n', n < PH_V1_MAX ? n : PH_V1_MAX);
    if (!end)
        return n < PH_V1_MAX ? PH_PARTIAL : PH_ERROR;
    size_t len = (size_t)(end - p) + 1;
    if (len < 8 || end[-1] != '\r')
        return PH_ERROR;
    char line[PH_V1_MAX + 1];
    memcpy(line, p, len - 2);
    line[len - 2] = 0;
    char *f[6];
    int k = 0;
    for (char *s = line, *save = NULL; k < 6 && (s = strtok_r(k ? NULL : s, " ", &save)); k++)
        f[k] = s;
    if (k >= 2 && !strcmp(f[1], "UNKNOWN")) {
        out->family = 0;                  /* the connection's own address stands */
        return (int)len;
    }
    if (k != 6 || strcmp(f[0], "PROXY"))
        return PH_ERROR;
    int af = !strcmp(f[1], "TCP4") ? AF_INET : !strcmp(f[1], "TCP6") ? AF_INET6 : 0;
    uint8_t dst[16];
    if (!af || inet_pton(af, f[2], out->addr) != 1 || inet_pton(af, f[3], dst) != 1)
        return PH_ERROR;
    unsigned long port = 0;
    for (int i = 4; i < 6; i++) {
        char *e;
        unsigned long v = strtoul(f[i], &e, 10);
        if (*e || !*f[i] || f[i][0] < '0' || f[i][0] > '9' || v > 65535 ||
            (f[i][0] == '0' && f[i][1]))
            return PH_ERROR;
        if (i == 4)
            port = v;
    }
    out->family = af == AF_INET ? 4 : 16;
    out->port = (uint16_t)port;
    return (int)len;
}

static int parse_v2(const uint8_t *p, size_t n, struct proxy_header *out)
{
    if (n < 16)
        return PH_PARTIAL;
    uint8_t ver_cmd = p[12], fam = p[13];
    size_t len = 16 + ((size_t)p[14] << 8 | p[15]);
    if ((ver_cmd >> 4) != 2 || (ver_cmd & 0xf) > 1)
        return PH_ERROR;
    if (len > PH_V2_MAX)
        return PH_ERROR;
    if (n < len)
        return PH_PARTIAL;
    out->family = 0;
    if ((ver_cmd & 0xf) == 0)
        return (int)len;                  /* LOCAL: the balancer's own check */
    if (fam == 0x11 && len >= 16 + 12) {  /* TCP over IPv4 */
        memcpy(out->addr, p + 16, 4);
        out->port = (uint16_t)(p[24] << 8 | p[25]);
        out->family = 4;
    } else if (fam == 0x21 && len >= 16 + 36) {   /* TCP over IPv6 */
        memcpy(out->addr, p + 16, 16);
        out->port = (uint16_t)(p[48] << 8 | p[49]);
        out->family = 16;
    } else if ((fam >> 4) == 1 || (fam >> 4) == 2) {
        return PH_ERROR;                  /* an address too short for its family */
    }                                     /* UNSPEC, UNIX: the connection's own */
    return (int)len;
}

int proxy_header_parse(const uint8_t *p, size_t n, struct proxy_header *out)
{
    memset(out, 0, sizeof *out);
    size_t k = n < sizeof V2_SIG ? n : sizeof V2_SIG;
    if (!memcmp(p, V2_SIG, k))
        return k < sizeof V2_SIG ? PH_PARTIAL : parse_v2(p, n, out);
    k = n < 6 ? n : 6;
    if (!memcmp(p, "PROXY ", k))
        return k < 6 ? PH_PARTIAL : parse_v1(p, n, out);
    return PH_ERROR;
}

bool cidr_match(const struct up_cidr *cs, uint32_t n, const uint8_t *a, uint8_t len)
{
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (len == 16 && !memcmp(a, mapped, 12)) {
        a += 12;
        len = 4;
    }
    for (uint32_t i = 0; i < n; i++) {
        const struct up_cidr *k = &cs[i];
        if (k->len != len)
            continue;
        uint32_t whole = k->bits / 8, rest = k->bits % 8;
        if (memcmp(k->addr, a, whole))
            continue;
        if (rest && ((k->addr[whole] ^ a[whole]) & (uint8_t)(0xff00 >> rest)))
            continue;
        return true;
    }
    return false;
}
