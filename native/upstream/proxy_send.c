/*
 * Sending the PROXY protocol header (HAProxy's proxy-protocol.txt) to a
 * cluster that asks for it (proxy_protocol = "v1" or "v2"), as HAProxy's
 * send-proxy and nginx's proxy_protocol on do: the first bytes of each new
 * upstream connection name the client and the address it connected to.
 *
 * The header goes with one send(2) as the connect completes, before TLS
 * or any request: the socket's send buffer is empty then, so its hundred
 * bytes at most always fit, and nothing has to be queued or resumed. A
 * pooled connection keeps the header of the client that opened it
 * (docs/resilience.md says what that means and what to do).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include "upstream/upstream.h"

static const uint8_t V2_SIG[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                    0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

/* An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 address: a
 * dual-stack listener's clients come in that form. */
static void plain_v4(const uint8_t **a, uint8_t *len)
{
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (*len == 16 && !memcmp(*a, mapped, 12)) {
        *a += 12;
        *len = 4;
    }
}

static size_t put_u(uint8_t *p, unsigned v)
{
    char d[8];
    size_t n = 0;
    do {
        d[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)d[n - 1 - i];
    return n;
}

size_t proxy_header_build(uint32_t version, const uint8_t *src, uint8_t src_len,
                          uint16_t src_port, const uint8_t *dst, uint8_t dst_len,
                          uint16_t dst_port, uint8_t *out)
{
    plain_v4(&src, &src_len);
    plain_v4(&dst, &dst_len);
    bool known = (src_len == 4 || src_len == 16) && src_len == dst_len;
    if (version == 2) {
        memcpy(out, V2_SIG, 12);
        out[12] = 0x21;                       /* version 2, PROXY */
        if (!known) {
            out[13] = 0x00;                   /* AF_UNSPEC: the receiver uses the connection's */
            out[14] = out[15] = 0;
            return 16;
        }
        out[13] = src_len == 4 ? 0x11 : 0x21; /* TCP over IPv4 / IPv6 */
        uint16_t alen = src_len == 4 ? 12 : 36;
        out[14] = (uint8_t)(alen >> 8);
        out[15] = (uint8_t)alen;
        uint8_t *p = out + 16;
        memcpy(p, src, src_len);
        memcpy(p + src_len, dst, dst_len);
        p += 2 * src_len;
        p[0] = (uint8_t)(src_port >> 8);
        p[1] = (uint8_t)src_port;
        p[2] = (uint8_t)(dst_port >> 8);
        p[3] = (uint8_t)dst_port;
        return 16 + alen;
    }
    static const char unknown[] = "PROXY UNKNOWN\r\n";
    if (!known) {
        memcpy(out, unknown, sizeof unknown - 1);
        return sizeof unknown - 1;
    }
    uint8_t *p = out;
    memcpy(p, src_len == 4 ? "PROXY TCP4 " : "PROXY TCP6 ", 11);
    p += 11;
    char text[INET6_ADDRSTRLEN];
    int af = src_len == 4 ? AF_INET : AF_INET6;
    inet_ntop(af, src, text, sizeof text);
    size_t n = strlen(text);
    memcpy(p, text, n);
    p += n;
    *p++ = ' ';
    inet_ntop(af, dst, text, sizeof text);
    n = strlen(text);
    memcpy(p, text, n);
    p += n;
    *p++ = ' ';
    p += put_u(p, src_port);
    *p++ = ' ';
    p += put_u(p, dst_port);
    *p++ = '\r';
    *p++ = '\n';
    return (size_t)(p - out);
}

int proxy_send(struct worker *w, struct conn *u, uint32_t version, const uint8_t *addr,
               uint8_t addr_len, uint16_t port, int from_fd)
{
    uint8_t dst[16], peer[16];
    uint16_t dst_port = 0;
    uint8_t dst_len = from_fd >= 0 ? sock_addr(from_fd, false, dst, &dst_port) : 0;
    if (!addr_len && from_fd >= 0) {
        /* A TCP session keeps no address: its socket's peer is the client. */
        addr_len = sock_addr(from_fd, true, peer, &port);
        addr = peer;
    }
    uint8_t hdr[128];
    size_t n = proxy_header_build(version, addr, addr_len, port, dst, dst_len, dst_port, hdr);
    ssize_t r = send(u->fd, hdr, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0)
        return -errno;
    if ((size_t)r != n)
        return -EAGAIN;               /* cannot happen on a fresh socket; not hidden if it does */
    w->c[UP_C_PROXY_SENT]++;
    return 0;
}
