/*
 * What response compression decides from bytes alone (h1_compress.c uses
 * it): the algorithm a request's Accept-Encoding and a route's order of
 * preference agree on (RFC 9110 12.5.3: q-values, "*", q=0 refusing), and
 * whether a Content-Type or a Cache-Control names what a route's lists
 * name. Pure functions over bytes: no state, no allocation.
 */
#include <string.h>
#include <strings.h>
#include "http/h1_compress.h"

void cz_accept_init(struct cz_accept *a)
{
    a->q[0] = a->q[1] = a->q[2] = -1;
    a->star = -1;
}

static bool ows(uint8_t c)
{
    return c == ' ' || c == '\t';
}

/* "q=0.5" and friends (RFC 9110 12.4.2: at most three decimals), in
 * thousandths; a weight that is not one counts as 1 (as browsers send
 * none, a broken one is more likely a typo of a client than a refusal). */
static int16_t qvalue(const uint8_t *p, uint32_t n)
{
    while (n && ows(*p))
        p++, n--;
    if (n < 3 || (p[0] | 0x20) != 'q' || p[1] != '=')
        return 1000;
    p += 2;
    n -= 2;
    int v = 0, scale = 1000;
    if (!n || (p[0] != '0' && p[0] != '1'))
        return 1000;
    v = (p[0] - '0') * 1000;
    uint32_t i = 1;
    if (i < n && p[i] == '.')
        for (i++; i < n && p[i] >= '0' && p[i] <= '9' && scale > 1; i++) {
            scale /= 10;
            v += (p[i] - '0') * scale;
        }
    return (int16_t)(v > 1000 ? 1000 : v);
}

static bool token_is(const uint8_t *p, uint32_t n, const char *s)
{
    return strlen(s) == n && !strncasecmp((const char *)p, s, n);
}

void cz_accept_feed(struct cz_accept *a, const uint8_t *v, uint32_t n)
{
    uint32_t i = 0;
    while (i < n) {
        uint32_t start = i;
        while (i < n && v[i] != ',')
            i++;
        uint32_t end = i++;               /* the element is v[start, end) */
        while (start < end && ows(v[start]))
            start++;
        uint32_t tok = start;
        while (tok < end && v[tok] != ';' && !ows(v[tok]))
            tok++;
        uint32_t semi = tok;
        while (semi < end && v[semi] != ';')
            semi++;
        int16_t q = semi < end ? qvalue(v + semi + 1, end - semi - 1) : 1000;
        const uint8_t *t = v + start;
        uint32_t tn = tok - start;
        if (token_is(t, tn, "gzip") || token_is(t, tn, "x-gzip"))
            a->q[CZ_GZIP] = q;
        else if (token_is(t, tn, "zstd"))
            a->q[CZ_ZSTD] = q;
        else if (token_is(t, tn, "*"))
            a->star = q;
    }
}

uint8_t cz_accept_choose(const struct cz_accept *a, const uint8_t *prefs)
{
    uint8_t best = CZ_NONE;
    int bq = 0;
    for (int i = 0; i < 2 && prefs[i] != CZ_NONE; i++) {
        int q = a->q[prefs[i]] >= 0 ? a->q[prefs[i]] : a->star;
        if (q > bq) {                     /* a tie keeps the route's earlier choice */
            bq = q;
            best = prefs[i];
        }
    }
    return best;
}

/* ---- Content-Type and Cache-Control ------------------------------------------ */

/* Whether ct's media type (before ';') is one of the list's ("text/html,",
 * or "text/" "*," for a whole top-level type). */
bool cz_type_listed(const char *list, uint32_t list_len, const uint8_t *ct, uint32_t n)
{
    uint32_t m = 0;
    while (m < n && ct[m] != ';' && !ows(ct[m]))
        m++;
    uint32_t slash = 0;
    while (slash < m && ct[slash] != '/')
        slash++;
    for (uint32_t i = 0; i < list_len;) {
        uint32_t e = i;
        while (e < list_len && list[e] != ',')
            e++;
        uint32_t k = e - i;
        if (k == m && !strncasecmp(list + i, (const char *)ct, m))
            return true;
        if (k >= 2 && list[e - 1] == '*' && list[e - 2] == '/' && slash < m && k - 1 == slash + 1 &&
            !strncasecmp(list + i, (const char *)ct, slash + 1))
            return true;
        i = e + 1;
    }
    return false;
}

bool cz_has_token(const uint8_t *v, uint32_t n, const char *tok, uint32_t tn)
{
    for (uint32_t i = 0; i + tn <= n; i++)
        if (!strncasecmp((const char *)v + i, tok, tn))
            return true;
    return false;
}
