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

/* tchar (RFC 9110 5.6.2), lower case only for names. */
static bool is_tchar(uint8_t c)
{
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
        return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool token(const uint8_t *p, size_t n, bool lower)
{
    if (!n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar(p[i]) && (lower || !(p[i] >= 'A' && p[i] <= 'Z')))
            return false;
    return true;
}

/* RFC 9113 8.2.1: no NUL, CR or LF; no whitespace at either end. */
static bool value_ok(const uint8_t *v, size_t n)
{
    if (n && (v[0] == ' ' || v[0] == '\t' || v[n - 1] == ' ' || v[n - 1] == '\t'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (v[i] == 0 || v[i] == '\r' || v[i] == '\n')
            return false;
    return true;
}

/* RFC 3986 authority characters (reg-name, IP literal, port, userinfo). */
static bool authority_ok(const uint8_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = v[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("-._~%!$&'()*+,;=:@[]", c)) || !c)
            return false;
    }
    return true;
}

static bool scheme_ok(const uint8_t *v, size_t n)
{
    if (!n || !((v[0] | 0x20) >= 'a' && (v[0] | 0x20) <= 'z'))
        return false;
    for (size_t i = 1; i < n; i++) {
        uint8_t c = v[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

/* A request target's characters: visible ASCII and obs-text, no space. */
static bool path_ok(const uint8_t *v, size_t n)
{
    if (!n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (v[i] <= 0x20 || v[i] == 0x7f)
            return false;
    return true;
}

static bool is(const uint8_t *n, size_t k, const char *lit)
{
    return strlen(lit) == k && memcmp(n, lit, k) == 0;
}

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
    for (size_t i = 0; i < nlen; i++)
        if (name[i] >= 'A' && name[i] <= 'Z')
            return H2M_BAD;           /* upper case is malformed, not just invalid */
    m->seen |= M_REGULAR;
    if (!token(name, nlen, true))
        return H2M_DROP;
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
