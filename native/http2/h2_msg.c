/*
 * An HTTP/2 request's fields, checked as they decode (h2_msg.h). The
 * character classes are RFC 9110's (token, field-value) and RFC 3986's
 * (scheme, authority); a field's name must be lower case (RFC 9113 8.2.1).
 */
#include <string.h>
#include "http2/h2_msg.h"

#define M_METHOD   0x001
#define M_SCHEME   0x002
#define M_AUTH     0x004
#define M_PATH     0x008
#define M_HOST     0x010
#define M_REGULAR  0x020          /* a regular field came: no pseudo-header after it */
#define M_CONNECT  0x040
#define M_OPTIONS  0x080
#define M_SLASH    0x100          /* :path starts with '/' */
#define M_STAR     0x200          /* :path is '*' */
#define M_CLEN     0x400

void h2_msg_init(struct h2_msg *m)
{
    m->seen = 0;
    m->clen = H2M_NONE;
}

/* Character classes, one table lookup a byte (this runs for every field
 * of every request). */
#define K_NAME   1                /* tchar (RFC 9110 5.6.2), lower case */
#define K_TOKEN  2                /* tchar, either case (a method) */
#define K_AUTH   4                /* RFC 3986 authority: reg-name, IP literal, port, userinfo */
#define K_SCHEME 8                /* RFC 3986 scheme, after its first letter */
#define K_PATH   16               /* a request target: visible ASCII and obs-text */
#define K_BAD    32               /* never in a value: NUL, CR, LF */

static uint8_t K[256];

__attribute__((constructor)) static void classes(void)
{
    for (int c = 0; c < 256; c++) {
        bool lower = c >= 'a' && c <= 'z', upper = c >= 'A' && c <= 'Z', digit = c >= '0' && c <= '9';
        bool tsym = c && strchr("!#$%&'*+-.^_`|~", c);
        uint8_t k = 0;
        if (lower || digit || tsym)
            k |= K_NAME | K_TOKEN;
        if (upper)
            k |= K_TOKEN;
        if (lower || upper || digit || (c && strchr("-._~%!$&'()*+,;=:@[]", c)))
            k |= K_AUTH;
        if (lower || upper || digit || c == '+' || c == '-' || c == '.')
            k |= K_SCHEME;
        if (c > 0x20 && c != 0x7f)
            k |= K_PATH;
        if (c == 0 || c == '\r' || c == '\n')
            k |= K_BAD;
        K[c] = k;
    }
}

static bool all(const uint8_t *p, size_t n, uint8_t k)
{
    for (size_t i = 0; i < n; i++)
        if (!(K[p[i]] & k))
            return false;
    return true;
}

static bool token(const uint8_t *p, size_t n, bool lower)
{
    return n && all(p, n, lower ? K_NAME : K_TOKEN);
}

/* RFC 9113 8.2.1: no NUL, CR or LF; no whitespace at either end. */
static bool value_ok(const uint8_t *v, size_t n)
{
    if (n && (v[0] == ' ' || v[0] == '\t' || v[n - 1] == ' ' || v[n - 1] == '\t'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (K[v[i]] & K_BAD)
            return false;
    return true;
}

static bool authority_ok(const uint8_t *v, size_t n)
{
    return all(v, n, K_AUTH);
}

static bool scheme_ok(const uint8_t *v, size_t n)
{
    return n && ((v[0] | 0x20) >= 'a' && (v[0] | 0x20) <= 'z') && all(v + 1, n - 1, K_SCHEME);
}

static bool path_ok(const uint8_t *v, size_t n)
{
    return n && all(v, n, K_PATH);
}

#define is(n, k, lit) ((k) == sizeof(lit) - 1 && memcmp((n), (lit), sizeof(lit) - 1) == 0)

static int pseudo(struct h2_msg *m, const uint8_t *name, size_t nlen, const uint8_t *v, size_t vlen)
{
    uint32_t bit;
    if (m->seen & M_REGULAR)
        return H2M_BAD;               /* pseudo-headers come first (8.3) */
    if (is(name, nlen, ":method")) {
        if (!token(v, vlen, false))
            return H2M_BAD;
        bit = M_METHOD;
        if (is(v, vlen, "CONNECT"))
            m->seen |= M_CONNECT;
        else if (is(v, vlen, "OPTIONS"))
            m->seen |= M_OPTIONS;
    } else if (is(name, nlen, ":scheme")) {
        if (!scheme_ok(v, vlen))
            return H2M_BAD;
        bit = M_SCHEME;
    } else if (is(name, nlen, ":authority")) {
        if (!authority_ok(v, vlen))
            return H2M_BAD;
        bit = M_AUTH;
    } else if (is(name, nlen, ":path")) {
        if (!path_ok(v, vlen))
            return H2M_BAD;
        bit = M_PATH;
        if (v[0] == '/')
            m->seen |= M_SLASH;
        else if (vlen == 1 && v[0] == '*')
            m->seen |= M_STAR;
    } else {
        return H2M_BAD;               /* :status in a request, :protocol, or unknown */
    }
    if (m->seen & bit)
        return H2M_BAD;               /* twice */
    m->seen |= bit;
    return H2M_OK;
}

static int content_length(struct h2_msg *m, const uint8_t *v, size_t n)
{
    if (!n || n > 19)
        return H2M_BAD;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return H2M_BAD;
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    if (m->seen & M_CLEN)
        return H2M_BAD;               /* twice, as nghttp2 */
    m->seen |= M_CLEN;
    m->clen = x;
    return H2M_OK;
}

int h2_msg_field(struct h2_msg *m, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen,
                 bool trailer)
{
    if (nlen && name[0] == ':')
        return trailer ? H2M_BAD : pseudo(m, name, nlen, value, vlen);
    m->seen |= M_REGULAR;
    if (!token(name, nlen, true)) {
        for (size_t i = 0; i < nlen; i++)
            if (name[i] >= 'A' && name[i] <= 'Z')
                return H2M_BAD;       /* upper case is malformed, not just invalid */
        return H2M_DROP;
    }
    switch (nlen) {
    case 2:
        if (is(name, nlen, "te") && !(vlen == 8 && strncasecmp((const char *)value, "trailers", 8) == 0))
            return H2M_BAD;
        break;
    case 4:
        if (is(name, nlen, "host")) {
            if (!authority_ok(value, vlen))
                return H2M_DROP;
            if (trailer)
                return H2M_OK;
            if (m->seen & M_HOST)
                return H2M_BAD;       /* twice, as nghttp2 */
            m->seen |= M_HOST;
            return H2M_OK;
        }
        break;
    case 7:
        if (is(name, nlen, "upgrade"))
            return H2M_BAD;
        break;
    case 10:
        if (is(name, nlen, "connection") || is(name, nlen, "keep-alive"))
            return H2M_BAD;
        break;
    case 14:
        if (is(name, nlen, "content-length"))
            return trailer ? H2M_OK : content_length(m, value, vlen);
        break;
    case 16:
        if (is(name, nlen, "proxy-connection"))
            return H2M_BAD;
        break;
    case 17:
        if (is(name, nlen, "transfer-encoding"))
            return H2M_BAD;
        break;
    default:
        break;
    }
    return value_ok(value, vlen) ? H2M_OK : H2M_DROP;
}

int h2_msg_head_end(const struct h2_msg *m)
{
    if (!(m->seen & M_METHOD))
        return H2M_BAD;
    if (m->seen & M_CONNECT)          /* authority-form: no scheme, no path (8.5) */
        return (m->seen & (M_SCHEME | M_PATH)) || !(m->seen & M_AUTH) ? H2M_BAD : H2M_OK;
    if (!(m->seen & M_SCHEME) || !(m->seen & M_PATH) || !(m->seen & (M_AUTH | M_HOST)))
        return H2M_BAD;
    if (!(m->seen & M_SLASH) && !((m->seen & M_STAR) && (m->seen & M_OPTIONS)))
        return H2M_BAD;
    return H2M_OK;
}
