/*
 * Per-route HTTP policies: what nginx and HAProxy call directives and
 * Traefik middlewares (access rules, rate and in-flight limits, body size,
 * redirects, rewrites, header edits), compiled by the control plane into a
 * list of steps per route (struct up_step in the published tables) and run
 * here with one switch per step: no function pointer, no allocation, no
 * Python. A route without a policy never comes here (t->pol is NULL: the
 * callers test that one pointer).
 *
 * Per-worker state is made once when the worker starts: the token buckets
 * of rate limits (a fixed table, see h1_policy.h) and the PCRE2 match data
 * regex rewrites use. Compiled regexes belong to the tables and are only
 * read (PCRE2's compiled code, JIT included, is safe to share that way).
 *
 * In-flight limits count in the tables' per-worker rows (one writer each):
 * a worker adds up every row to decide, which needs no lock and may be off
 * by the requests other workers start at the same instant (docs/http.md).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <arpa/inet.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "http/h1.h"
#include "core/proxy_header.h"

/* ---- worker state ---------------------------------------------------------- */

int pol_worker_init(struct worker *w)
{
    w->pol = calloc(1, sizeof *w->pol);
    if (!w->pol)
        return -1;
    w->pol->match = pcre2_match_data_create(POL_CAPTURES, NULL);
    if (!w->pol->match)
        return -1;
    return cz_worker_init(w, w->o.compress_streams);
}

void pol_worker_free(struct worker *w)
{
    if (!w->pol)
        return;
    pcre2_match_data_free(w->pol->match);
    cz_worker_free(w);
    free(w->pol);
    w->pol = NULL;
}

void *up_regex_compile(const char *pattern, char *err, size_t errlen, uint32_t *captures)
{
    int code;
    PCRE2_SIZE at;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, 0, &code, &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        snprintf(err, errlen, "%s at offset %zu", (const char *)msg, (size_t)at);
        return NULL;
    }
    /* Without a JIT (an unsupported CPU) the interpreter runs instead,
     * which may take heap memory for deep backtracking. */
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    uint32_t n = 0;
    pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &n);
    *captures = n;
    return re;
}

void up_regex_free(void *re)
{
    pcre2_code_free(re);
}

/* ---- the client's address -------------------------------------------------- */

static bool in_cidrs(const struct up_cidr *cs, uint32_t n, const uint8_t *a, uint8_t len)
{
    return cidr_match(cs, n, a, len);     /* core/proxy_header.c */
}

/* An IPv4 client on a dual-stack socket (::ffff:a.b.c.d) is an IPv4 one to
 * the rules. */
static void set_real(struct txn *t, const uint8_t *a, uint8_t len)
{
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (len == 16 && !memcmp(a, mapped, 12)) {
        a += 12;
        len = 4;
    }
    memcpy(t->real_addr, a, len);
    t->real_len = len;
}

/* One X-Forwarded-For element ("1.2.3.4", "2001:db8::1", "[2001:db8::1]"),
 * parsed into a; false when it is not an address. */
static bool parse_ip(const uint8_t *p, uint32_t n, uint8_t *a, uint8_t *len)
{
    char tmp[48];
    while (n && (*p == ' ' || *p == '\t'))
        p++, n--;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n >= 2 && p[0] == '[' && p[n - 1] == ']')
        p++, n -= 2;
    if (!n || n >= sizeof tmp)
        return false;
    memcpy(tmp, p, n);
    tmp[n] = 0;
    if (inet_pton(AF_INET, tmp, a) == 1) {
        *len = 4;
        return true;
    }
    if (inet_pton(AF_INET6, tmp, a) == 1) {
        *len = 16;
        return true;
    }
    return false;
}

/* Through trusted proxies (nginx's real_ip_recursive, Traefik's
 * forwardedHeaders.trustedIPs): the rightmost X-Forwarded-For address that
 * is not itself a trusted proxy is the client. A peer that is not trusted
 * is the client, and its X-Forwarded-For is not passed on. */
static void real_client(const struct up_config *cfg, const struct up_policy *pol, struct txn *t,
                        const struct conn_addr *a, const uint8_t *base, const struct h1_request *r)
{
    const struct up_cidr *tr = cfg->cidrs + pol->trusted_first;
    set_real(t, a->addr, a->len);
    if (!in_cidrs(tr, pol->trusted_count, t->real_addr, t->real_len)) {
        t->flags |= TF_XF_UNTRUSTED;
        return;
    }
    for (int i = (int)r->nheaders - 1; i >= 0; i--) {
        const struct h1_header *h = &r->h[i];
        if (!(h->flags & H1_HF_XFF))
            continue;
        const uint8_t *v = base + h->value_off;
        uint32_t end = h->value_len;
        while (end) {
            uint32_t start = end;
            while (start && v[start - 1] != ',')
                start--;
            uint8_t a[16], len;
            if (!parse_ip(v + start, end - start, a, &len))
                return;                   /* garbage: the last good one stands */
            set_real(t, a, len);
            if (!in_cidrs(tr, pol->trusted_count, t->real_addr, t->real_len))
                return;
            end = start ? start - 1 : 0;
        }
    }
}

/* ---- limits ------------------------------------------------------------------ */

/* Take a token from the client's bucket for step s (index si); false with
 * the seconds until one is back when it is empty. */
static bool rate_take(struct worker *w, const struct txn *t, const struct up_step *s, uint32_t si,
                      uint32_t *retry_s)
{
    struct pol_bucket *tab = w->pol->buckets;
    uint32_t gen = (uint32_t)t->cfg->generation;
    uint8_t key[16] = { 0 };
    memcpy(key, t->real_addr, t->real_len);
    uint64_t k0, k1;
    memcpy(&k0, key, 8);
    memcpy(&k1, key + 8, 8);
    /* A multiply-xor mix of the address and the step: a table index, not
     * a defence (a client cannot choose many addresses to collide with). */
    uint64_t h = (k0 * 0x9e3779b97f4a7c15ull) ^ (k1 * 0xc2b2ae3d27d4eb4full) ^
                 ((uint64_t)si * 0x165667b19e3779f9ull);
    h ^= h >> 29;
    uint32_t at = (uint32_t)(h ^ (h >> 32)) & (POL_BUCKETS - 1) & ~(uint32_t)(POL_WINDOW - 1);
    struct pol_bucket *b = NULL, *oldest = &tab[at];
    for (uint32_t i = at; i < at + POL_WINDOW; i++) {
        struct pol_bucket *e = &tab[i];
        if (e->step == si && e->gen == gen && e->last_ms && !memcmp(e->addr, key, 16)) {
            b = e;
            break;
        }
        if (e->last_ms < oldest->last_ms)
            oldest = e;
    }
    if (!b) {                             /* a new client: a full bucket */
        b = oldest;
        memcpy(b->addr, key, 16);
        b->step = si;
        b->gen = gen;
        b->tokens = s->y;
        b->last_ms = w->now_ms ? w->now_ms : 1;
    } else if (w->now_ms > b->last_ms) {
        uint64_t add = (w->now_ms - b->last_ms) * s->x / 1000;
        if (add) {                        /* (a remainder waits for more time) */
            b->tokens = b->tokens + add > s->y ? s->y : b->tokens + add;
            b->last_ms = w->now_ms;
        }
    }
    if (b->tokens >= 1000) {
        b->tokens -= 1000;
        return true;
    }
    uint64_t need = 1000 - b->tokens;
    *retry_s = (uint32_t)((need + s->x - 1) / s->x);
    if (!*retry_s)
        *retry_s = 1;
    return false;
}

static uint32_t inflight_row(const struct up_config *cfg)
{
    return (cfg->ninflight + UP_INFLIGHT_ROW - 1) & ~(uint32_t)(UP_INFLIGHT_ROW - 1);
}

/* Under the route's limit, summed over the workers' rows: counted. */
static bool inflight_take(struct worker *w, struct txn *t, const struct up_step *s)
{
    const struct up_config *cfg = t->cfg;
    uint32_t row = inflight_row(cfg), sum = 0;
    for (uint32_t i = 0; i < cfg->nworkers; i++)
        sum += __atomic_load_n(&cfg->inflight[i * row + s->first], __ATOMIC_RELAXED);
    if (sum >= s->x)
        return false;
    uint32_t *mine = &cfg->inflight[w->o.index * row + s->first];
    __atomic_store_n(mine, *mine + 1, __ATOMIC_RELAXED);
    t->inflight = s->first + 1;
    return true;
}

void pol_end(struct worker *w, struct txn *t)
{
    if (!t->inflight)
        return;
    const struct up_config *cfg = t->cfg;
    uint32_t *mine = &cfg->inflight[w->o.index * inflight_row(cfg) + t->inflight - 1];
    __atomic_store_n(mine, *mine - 1, __ATOMIC_RELAXED);
    t->inflight = 0;
}

/* ---- the proxy's answers --------------------------------------------------- */

static const char S_403[] = "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                            "Content-Length: 10\r\nConnection: close\r\n\r\nForbidden\n";
static const char S_429[] = "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n"
                            "Content-Length: 18\r\nConnection: close\r\nRetry-After: ";
static const char S_429_END[] = "\r\n\r\nToo Many Requests\n";


bool pol_error_page(const struct txn *t, uint16_t status, const char **text, uint32_t *len)
{
    const struct up_config *cfg = t->cfg;
    const struct up_policy *pol = t->pol;
    for (uint32_t i = pol->pages_first; i < pol->pages_first + pol->pages_count; i++)
        if (cfg->pages[i].status == status) {
            *text = cfg->strings + cfg->pages[i].off;
            *len = cfg->pages[i].len;
            return true;
        }
    return false;
}

/* Refuse the request with the policy's status, and close. */
static void refuse(struct worker *w, struct txn *t, struct conn *c, const uint8_t *base,
                   const struct h1_request *r, const struct up_listener *l, uint16_t status,
                   uint32_t retry_s)
{
    t->flags |= TF_CLIENT_CLOSE;
    log_begin(w, t, c, base, r, l);
    log_end(w, t, status);
    const char *page;
    uint32_t len;
    if (status == 403 && pol_error_page(t, 403, &page, &len)) {
        h1_client_reply_text(w, c, status, page, len);
    } else if (status == 403) {
        h1_client_reply_text(w, c, status, S_403, sizeof S_403 - 1);
    } else if (status == 429) {
        char *p = t->pscratch;
        memcpy(p, S_429, sizeof S_429 - 1);
        p += sizeof S_429 - 1;
        p += h1_put_uint(p, retry_s);
        memcpy(p, S_429_END, sizeof S_429_END - 1);
        p += sizeof S_429_END - 1;
        h1_client_reply_text(w, c, status, t->pscratch, (uint32_t)(p - t->pscratch));
    } else {
        h1_client_reply_error(w, c, status);
    }
}

/* ---- targets ----------------------------------------------------------------- */

struct target {
    const uint8_t *pre;       /* an absolute form's "scheme://authority", kept */
    uint32_t pre_len;
    const uint8_t *path;
    uint32_t path_len;
    const uint8_t *query;     /* from '?' on, kept */
    uint32_t query_len;
};

static void split_target(const uint8_t *base, const struct h1_request *r, struct target *tg)
{
    const uint8_t *p = base + r->target_off, *end = p + r->target_len;
    tg->pre = p;
    tg->pre_len = 0;
    if (r->target_form == H1_T_ABSOLUTE) {
        const uint8_t *s = memchr(p, ':', r->target_len);
        if (s && end - s >= 3) {
            const uint8_t *q = s + 3;
            while (q < end && *q != '/' && *q != '?')
                q++;
            tg->pre_len = (uint32_t)(q - p);
            p = q;
        }
    }
    const uint8_t *q = memchr(p, '?', (size_t)(end - p));
    tg->path = p;
    tg->path_len = (uint32_t)((q ? q : end) - p);
    tg->query = q ? q : end;
    tg->query_len = (uint32_t)(end - tg->query);
}

static bool starts(const uint8_t *p, uint32_t n, const char *pre, uint32_t len)
{
    return n >= len && !memcmp(p, pre, len);
}

/* One rewrite step on the path: the new path into the worker's other
 * buffer (or a pointer into the tables). false: it did not fit (414). */
static bool rewrite(struct worker *w, const struct up_config *cfg, const struct up_step *s,
                    struct target *tg, int *buf)
{
    const char *a = cfg->strings + s->a_off;
    char *out = w->pol->path[*buf];
    switch (s->kind) {
    case UP_STEP_STRIP_PREFIX:
        if (!starts(tg->path, tg->path_len, a, s->a_len))
            return true;
        tg->path += s->a_len;
        tg->path_len -= s->a_len;
        if (!tg->path_len || tg->path[0] != '/') {     /* "/api" off "/api/x" or "/apix" */
            if (tg->path_len + 1 > POL_PATH_MAX)
                return false;
            out[0] = '/';
            memcpy(out + 1, tg->path, tg->path_len);
            tg->path = (const uint8_t *)out;
            tg->path_len++;
            *buf ^= 1;
        }
        return true;
    case UP_STEP_ADD_PREFIX:
        if (s->a_len + tg->path_len > POL_PATH_MAX)
            return false;
        memcpy(out, a, s->a_len);
        memcpy(out + s->a_len, tg->path, tg->path_len);
        tg->path = (const uint8_t *)out;
        tg->path_len += s->a_len;
        *buf ^= 1;
        return true;
    case UP_STEP_REPLACE_PATH:
        tg->path = (const uint8_t *)a;
        tg->path_len = s->a_len;
        return true;
    case UP_STEP_REGEX: {
        PCRE2_SIZE n = POL_PATH_MAX;
        int rc = pcre2_substitute(cfg->regexes[s->first], tg->path, tg->path_len, 0, 0,
                                  w->pol->match, NULL, (PCRE2_SPTR)a, s->a_len,
                                  (PCRE2_UCHAR *)out, &n);
        if (rc == PCRE2_ERROR_NOMEMORY)
            return false;
        if (rc <= 0)
            return true;                  /* no match (or a match error): as it was */
        tg->path = (const uint8_t *)out;
        tg->path_len = (uint32_t)n;
        *buf ^= 1;
        return true;
    }
    default:
        return true;
    }
}

/* The request line the upstream gets: the method and version as the
 * client sent them, the rewritten target between them. */
static bool write_line(struct txn *t, const uint8_t *base, const struct h1_request *r,
                       const struct target *tg)
{
    const uint8_t *line = base + r->skip, *tend = base + r->target_off + r->target_len;
    uint32_t head = r->target_off - r->skip;           /* "GET " */
    uint32_t tail = (uint32_t)(line + r->line_len - tend);  /* " HTTP/1.1\r\n" */
    uint32_t n = head + tg->pre_len + tg->path_len + tg->query_len + tail;
    if (n > sizeof t->line)
        return false;
    char *p = t->line;
#define PUT(src, len) (memcpy(p, (src), (len)), p += (len))
    PUT(line, head);
    PUT(tg->pre, tg->pre_len);
    PUT(tg->path, tg->path_len);
    PUT(tg->query, tg->query_len);
    PUT(tend, tail);
#undef PUT
    t->line_len = (uint16_t)n;
    return true;
}

/* ---- redirects --------------------------------------------------------------- */

static const char *status_line(uint16_t code, uint32_t *len)
{
    static const char s301[] = "HTTP/1.1 301 Moved Permanently\r\nLocation: ";
    static const char s302[] = "HTTP/1.1 302 Found\r\nLocation: ";
    static const char s307[] = "HTTP/1.1 307 Temporary Redirect\r\nLocation: ";
    static const char s308[] = "HTTP/1.1 308 Permanent Redirect\r\nLocation: ";
    switch (code) {
    case 301: *len = sizeof s301 - 1; return s301;
    case 302: *len = sizeof s302 - 1; return s302;
    case 307: *len = sizeof s307 - 1; return s307;
    default: *len = sizeof s308 - 1; return s308;
    }
}

/* Answer with the redirect: a round of fixed strings, table strings and
 * the request's own bytes (held until it is out), as h1_redirect.c does. */
static void redirect(struct worker *w, struct txn *t, struct conn *c, const struct up_step *s,
                     const uint8_t *base, const struct h1_request *r, const struct up_listener *l)
{
    const char *strings = t->cfg->strings;
    struct target tg;
    split_target(base, r, &tg);
    const uint8_t *host = NULL;
    uint32_t host_len = 0;
    if (tg.pre_len) {
        const uint8_t *s3 = memchr(tg.pre, ':', tg.pre_len);
        host = s3 + 3;
        host_len = (uint32_t)(tg.pre + tg.pre_len - host);
    } else if (r->host != 0xffff) {
        host = base + r->h[r->host].value_off;
        host_len = r->h[r->host].value_len;
    }
    uint32_t name_len = host ? h1_host_part(host, host_len) : 0;
    if (s->b_len) {
        host = (const uint8_t *)strings + s->b_off;
        host_len = s->b_len;
    } else if (!name_len || r->target_form == H1_T_AUTHORITY || r->target_form == H1_T_ASTERISK) {
        refuse(w, t, c, base, r, l, 400, 0);
        return;
    } else if (s->a_len) {
        host_len = name_len;              /* another scheme: not this port */
    }
    log_begin(w, t, c, base, r, l);
    bool close = !r->keep_alive || r->body != H1_BODY_NONE || w->stopping;
    struct out *o = &t->resp;
    uint32_t n;
    const char *sl = status_line(s->code, &n);
    out_push(o, sl, n);
    if (s->a_len)
        out_push(o, strings + s->a_off, s->a_len);
    else if (tp_is_tls(h1_wire(w, c)))
        out_push(o, "https", 5);
    else
        out_push(o, "http", 4);
    out_push(o, "://", 3);
    out_push(o, host, host_len);
    uint32_t cut = s->cut <= tg.path_len ? s->cut : tg.path_len;
    if (s->c_len)
        out_push(o, strings + s->c_off, s->c_len);
    else if (tg.path_len == cut || tg.path[cut] != '/')
        out_push(o, "/", 1);
    out_push(o, tg.path + cut, tg.path_len - cut);
    out_push(o, tg.query, tg.query_len);
    out_push(o, "\r\nContent-Length: 0\r\n", 21);
    if (close)
        out_push(o, "Connection: close\r\n\r\n", 21);
    else if (r->minor == 0)
        out_push(o, "Connection: keep-alive\r\n\r\n", 26);
    else
        out_push(o, "\r\n", 2);
    if (t->sink == TS_STREAM) {
        /* An HTTP/2 stream: its protocol turns an answer's text into
         * frames; the text goes whole into the transaction's line. */
        uint32_t len = 0;
        bool fits = o->left <= sizeof t->line;
        for (uint16_t i = 0; fits && i < o->n; i++) {
            memcpy(t->line + len, o->iov[i].iov_base, o->iov[i].iov_len);
            len += (uint32_t)o->iov[i].iov_len;
        }
        o->n = o->first = 0;
        o->left = 0;
        if (!fits) {
            refuse(w, t, c, base, r, l, 414, 0);
            return;
        }
        log_end(w, t, s->code);
        h1_count_request(w, c);
        w->c[UP_C_REDIRECTS]++;
        h1_client_reply_text(w, c, s->code, t->line, len);
        return;
    }
    t->status = s->code;
    t->bytes_out = o->left;
    h1_req_step(&t->rq, RQE_ALL_IN);      /* answered here: nothing goes upstream */
    h1_resp_step(&t->rs, RSE_LOCAL);
    if (close)
        t->flags |= TF_CLIENT_CLOSE;
    t->req_bid = t->start_bid;
    t->req_off = t->start_off + r->head_len;
    h1_count_status(w, c, s->code);
    h1_count_request(w, c);
    w->c[UP_C_REDIRECTS]++;
    out_submit(w, o, c);
}


/* ---- basic auth -------------------------------------------------------------- */

static int b64(uint8_t ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    return ch == '+' ? 62 : ch == '/' ? 63 : -1;
}

/* Standard base64 (padding optional) into out; its length, or -1. */
static int b64_decode(const uint8_t *in, uint32_t n, char *out, uint32_t cap)
{
    uint32_t acc = 0, bits = 0, k = 0;
    while (n && in[n - 1] == '=')
        n--;
    for (uint32_t i = 0; i < n; i++) {
        int v = b64(in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (k == cap)
                return -1;
            out[k++] = (char)((acc >> bits) & 0xff);
        }
    }
    return (int)k;
}

static struct pol_auth *auth_slot(struct worker *w, uint32_t si, const uint8_t *tok, uint32_t n)
{
    uint64_t h = up_hash(tok, n) ^ ((uint64_t)si * 0x9e3779b97f4a7c15ull);
    return &w->pol->auth[(h ^ (h >> 32)) & (POL_AUTH_CACHE - 1)];
}

/* Whether the request's "Authorization: Basic ..." names a user of the
 * step with the right password: bcrypt (crypt_r, in the worker's own work
 * area) once per credential, then the worker's cache. */
static bool authorized(struct worker *w, const struct txn *t, const struct up_step *s, uint32_t si,
                       const uint8_t *base, const struct h1_request *r)
{
    const struct up_config *cfg = t->cfg;
    const uint8_t *tok = NULL;
    uint32_t n = 0;
    for (uint16_t i = 0; i < r->nheaders; i++) {
        const struct h1_header *h = &r->h[i];
        if (h->name_len == 13 && !strncasecmp((const char *)base + h->name_off, "authorization", 13)) {
            const uint8_t *v = base + h->value_off;
            if (h->value_len > 6 && !strncasecmp((const char *)v, "basic ", 6)) {
                tok = v + 6;
                n = h->value_len - 6;
                while (n && *tok == ' ')
                    tok++, n--;
            }
            break;
        }
    }
    if (!tok || !n)
        return false;
    uint32_t gen = (uint32_t)cfg->generation;
    struct pol_auth *e = auth_slot(w, si, tok, n);
    if (e->len == n && e->step == si && e->gen == gen && !memcmp(e->token, tok, n))
        return true;
    char cred[256];
    int k = b64_decode(tok, n, cred, sizeof cred - 1);
    if (k <= 0)
        return false;
    cred[k] = 0;
    char *colon = memchr(cred, ':', (size_t)k);
    if (!colon)
        return false;
    *colon = 0;
    uint32_t ulen = (uint32_t)(colon - cred);
    for (uint32_t i = s->first; i < s->first + s->count; i++) {
        const struct up_user *u = &cfg->users[i];
        if (u->name_len != ulen || memcmp(cfg->strings + u->name_off, cred, ulen))
            continue;
        const char *hash = cfg->strings + u->hash_off;
        const char *got = crypt_r(colon + 1, hash, &w->pol->crypt);
        bool ok = got && strlen(got) == u->hash_len && !memcmp(got, hash, u->hash_len);
        if (ok && n <= POL_AUTH_TOKEN) {
            e->step = si;
            e->gen = gen;
            e->len = (uint8_t)n;
            memcpy(e->token, tok, n);
        }
        return ok;
    }
    return false;
}

/* ---- the request's steps --------------------------------------------------- */

bool pol_request(struct worker *w, struct txn *t, struct conn *c, const struct up_route *rt,
                 const uint8_t *base, const struct h1_request *r, const struct up_listener *l)
{
    const struct up_config *cfg = t->cfg;
    const struct up_policy *pol = &cfg->policies[rt->policy - 1];
    t->pol = pol;
    if (pol->flags & UP_POL_XF_OFF)
        t->flags |= TF_XF_OFF;
    if (pol->flags & UP_POL_TRUSTED)
        real_client(cfg, pol, t, conn_addr(w, c), base, r);
    else
        set_real(t, conn_addr(w, c)->addr, conn_addr(w, c)->len);
    struct target tg;
    bool rewritten = false;
    int buf = 0;
    for (uint32_t i = pol->first; i < pol->first + pol->count; i++) {
        const struct up_step *s = &cfg->steps[i];
        uint32_t retry_s = 0;
        switch ((enum up_step_kind)s->kind) {
        case UP_STEP_DENY:
            if (in_cidrs(cfg->cidrs + s->first, s->count, t->real_addr, t->real_len)) {
                refuse(w, t, c, base, r, l, 403, 0);
                return true;
            }
            break;
        case UP_STEP_ALLOW:
            if (!in_cidrs(cfg->cidrs + s->first, s->count, t->real_addr, t->real_len)) {
                refuse(w, t, c, base, r, l, 403, 0);
                return true;
            }
            break;
        case UP_STEP_RATE:
            if (!rate_take(w, t, s, i, &retry_s)) {
                refuse(w, t, c, base, r, l, 429, retry_s);
                return true;
            }
            break;
        case UP_STEP_BASIC_AUTH:
            if (!authorized(w, t, s, i, base, r)) {
                t->flags |= TF_CLIENT_CLOSE;
                log_begin(w, t, c, base, r, l);
                log_end(w, t, 401);
                h1_client_reply_text(w, c, 401, cfg->strings + s->a_off, s->a_len);
                return true;
            }
            break;
        case UP_STEP_BODY:
            t->max_body = s->x;
            break;
        case UP_STEP_INFLIGHT:
            if (!inflight_take(w, t, s)) {
                refuse(w, t, c, base, r, l, 503, 0);
                return true;
            }
            break;
        case UP_STEP_REDIRECT:
            redirect(w, t, c, s, base, r, l);
            return true;
        case UP_STEP_STRIP_PREFIX:
        case UP_STEP_ADD_PREFIX:
        case UP_STEP_REPLACE_PATH:
        case UP_STEP_REGEX:
            if (!rewritten) {
                split_target(base, r, &tg);
                rewritten = true;
            }
            if (!rewrite(w, cfg, s, &tg, &buf)) {
                refuse(w, t, c, base, r, l, 414, 0);
                return true;
            }
            break;
        case UP_STEP_COMPRESS:
            cz_request(t, s, i, base, r);
            break;
        case UP_STEP_FORWARD_AUTH:
            fa_start(t, i);               /* the subrequest goes first (h1_fauth.c) */
            break;
        default:                          /* (header steps have their own ranges) */
            break;
        }
    }
    if (rewritten && !write_line(t, base, r, &tg)) {
        refuse(w, t, c, base, r, l, 414, 0);
        return true;
    }
    return false;
}

/* ---- headers ------------------------------------------------------------------- */

/* (The callers have tested the name's length against the policy's mask.) */
static bool drops(const struct up_config *cfg, uint32_t first, uint32_t count,
                  const uint8_t *base, const struct h1_header *h)
{
    for (uint32_t i = first; i < first + count; i++) {
        const struct up_step *s = &cfg->steps[i];
        if (s->a_len == h->name_len &&
            !strncasecmp(cfg->strings + s->a_off, (const char *)base + h->name_off, h->name_len))
            return true;
    }
    return false;
}

bool pol_drop_req(const struct txn *t, const uint8_t *base, const struct h1_header *h)
{
    const struct up_policy *pol = t->pol;
    return pol && drops(t->cfg, pol->rm_first, pol->rm_count, base, h);
}

bool pol_drop_resp(const struct txn *t, const uint8_t *base, const struct h1_header *h)
{
    const struct up_policy *pol = t->pol;
    return drops(t->cfg, pol->resp_rm_first, pol->resp_rm_count, base, h);
}

/* The client's address as a Forwarded node: IPv6 quoted and bracketed. */
static size_t addr_text(const struct txn *t, char *dst, size_t cap)
{
    return h1_format_addr(t->real_addr, t->real_len, dst, cap);
}

bool pol_req_lines(struct worker *w, struct txn *t, const uint8_t *base, const struct h1_request *r)
{
    const struct up_config *cfg = t->cfg;
    const struct up_policy *pol = t->pol;
    struct out *o = &t->req;
    char *p = t->pscratch;
    bool ok = true;
    for (uint32_t i = pol->add_first; i < pol->add_first + pol->add_count; i++) {
        const struct up_step *s = &cfg->steps[i];
        switch ((enum up_step_kind)s->kind) {
        case UP_STEP_REQ_ADD:
            ok &= out_push(o, cfg->strings + s->a_off, s->a_len);
            break;
        case UP_STEP_REAL_IP: {
            char *start = p;
            memcpy(p, "X-Real-IP: ", 11);
            p += 11;
            p += addr_text(t, p, 48);
            memcpy(p, "\r\n", 2);
            p += 2;
            ok &= out_push(o, start, (size_t)(p - start));
            break;
        }
        case UP_STEP_FORWARDED: {
            /* RFC 7239: for= the client, proto= the scheme it used, host=
             * the Host it asked for (quoted: a port's ':' is not a token). */
            char *start = p;
            bool v6 = t->real_len == 16;
            memcpy(p, v6 ? "Forwarded: for=\"[" : "Forwarded: for=", v6 ? 17 : 15);
            p += v6 ? 17 : 15;
            p += addr_text(t, p, 48);
            if (v6) {
                memcpy(p, "]\"", 2);
                p += 2;
            }
            bool tls = tp_is_tls(h1_wire(w, &w->conns[t->client]));
            memcpy(p, tls ? ";proto=https" : ";proto=http", tls ? 12 : 11);
            p += tls ? 12 : 11;
            const uint8_t *host = r->host != 0xffff ? base + r->h[r->host].value_off : NULL;
            uint32_t hl = host ? r->h[r->host].value_len : 0;
            if (host && h1_host_part(host, hl)) {
                memcpy(p, ";host=\"", 7);
                p += 7;
                ok &= out_push(o, start, (size_t)(p - start));
                ok &= out_push(o, host, hl);
                start = p;
                *p++ = '"';
            }
            memcpy(p, "\r\n", 2);
            p += 2;
            ok &= out_push(o, start, (size_t)(p - start));
            break;
        }
        default:
            break;
        }
    }
    return ok;
}

bool pol_resp_lines(struct txn *t)
{
    const struct up_config *cfg = t->cfg;
    const struct up_policy *pol = t->pol;
    bool ok = true;
    for (uint32_t i = pol->resp_add_first; i < pol->resp_add_first + pol->resp_add_count; i++) {
        const struct up_step *s = &cfg->steps[i];
        ok &= out_push(&t->resp, cfg->strings + s->a_off, s->a_len);
    }
    return ok;
}
