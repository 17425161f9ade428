/*
 * libFuzzer harness: h1_parse_response() over arbitrary bytes.
 *
 * The first byte picks the request method the response answers (HEAD and
 * CONNECT change the framing) and the limits; the rest is the response.
 * Checked: the result code; on H1_DONE the offsets, the bytes of the head,
 * the framing the status and method allow (no body for HEAD, 1xx, 204,
 * 304; no Content-Length with Transfer-Encoding, no duplicate
 * Content-Length); the head parsed alone gives the same; every proper
 * prefix of a complete head is H1_PARTIAL; an error prefix stays an error.
 */
#include "fuzz_common.h"

static int parse(const uint8_t *p, size_t n, const struct h1_limits *lim, uint8_t m,
                 struct h1_response *r)
{
    uint8_t *b = exact_copy(p, n);
    memset(r, 0xa5, sizeof *r);
    int rc = h1_parse_response(b, n, lim, m, r);
    free(b);
    return rc;
}

static void check_done(const uint8_t *b, size_t len, const struct h1_limits *lim, uint8_t m,
                       const struct h1_response *r)
{
    uint32_t max_head = lim->max_head ? lim->max_head : 16384;
    CHECK(r->head_len <= len && r->head_len <= max_head);
    CHECK(r->skip % 2 == 0 && r->skip + r->line_len < r->head_len);
    for (uint32_t i = 0; i < r->skip; i += 2)
        CHECK(b[i] == '\r' && b[i + 1] == '\n');
    CHECK(r->line_len >= 14 && memcmp(b + r->skip, "HTTP/1.", 7) == 0);  /* "HTTP/1.1 200\r\n" at least */
    check_head_bytes(b + r->skip, r->head_len - r->skip);
    CHECK(r->status >= 100 && r->status <= 999);
    CHECK(r->minor <= 1);
    CHECK(r->body <= H1_BODY_TUNNEL);
    CHECK(r->keep_alive <= 1);
    uint32_t max_headers = lim->max_headers ? lim->max_headers : H1_DEF_HEADERS;
    CHECK(r->nheaders <= (max_headers < H1_MAX_HEADERS ? max_headers : H1_MAX_HEADERS));
    CHECK(r->content_length <= (UINT64_C(1) << 62));
    if ((r->status >= 100 && r->status < 200 && r->status != 101) ||
        r->status == 204 || r->status == 304 || (m == H1_M_HEAD && r->status != 101))
        CHECK(r->body == H1_BODY_NONE);
    if (r->body == H1_BODY_TUNNEL)
        CHECK(r->status == 101 || (m == H1_M_CONNECT && r->status / 100 == 2));
    if (r->body == H1_BODY_CLOSE || r->body == H1_BODY_TUNNEL)
        CHECK(r->keep_alive == 0);
    if (r->body == H1_BODY_LENGTH)
        CHECK(r->content_length > 0);
    int ncl = 0, nte = 0;
    uint32_t prev_end = r->skip + r->line_len;
    for (uint16_t i = 0; i < r->nheaders; i++) {
        const struct h1_header *h = &r->h[i];
        check_header(h, r->head_len);
        check_value_trimmed(b, h);
        CHECK(h->line_off == prev_end);
        prev_end = h->line_off + h->line_len;
        if (h->name_len == 14 && strncasecmp((const char *)b + h->name_off, "content-length", 14) == 0)
            ncl++;
        if (h->name_len == 17 && strncasecmp((const char *)b + h->name_off, "transfer-encoding", 17) == 0)
            nte++;
    }
    CHECK(prev_end + 2 == r->head_len);
    CHECK(ncl <= 1 && !(ncl && nte));
    if (r->body == H1_BODY_CHUNKED)
        CHECK(nte >= 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const uint8_t methods[4] = { H1_M_GET, H1_M_HEAD, H1_M_CONNECT, H1_M_POST };
    uint8_t m = methods[data[0] & 3];
    struct h1_limits lim = { (data[0] & 4) ? 128 : 0, 0,
                             (data[0] & 8) ? 4 : (data[0] & 16) ? 5000 : 0 };
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    static struct h1_response r, r2;

    int rc = parse(p, n, &lim, m, &r);
    CHECK(rc == H1_DONE || rc == H1_PARTIAL || rc == H1_ERROR);
    if (rc == H1_ERROR)
        CHECK(r.error != NULL && r.error_status == 502);
    if (rc == H1_DONE) {
        uint8_t *b = exact_copy(p, n);
        check_done(b, n, &lim, m, &r);
        free(b);
        CHECK(parse(p, r.head_len, &lim, m, &r2) == H1_DONE);
        CHECK(r2.head_len == r.head_len && r2.status == r.status && r2.body == r.body &&
              r2.content_length == r.content_length && r2.keep_alive == r.keep_alive &&
              r2.nheaders == r.nheaders && r2.skip == r.skip);
    }
    size_t stop = rc == H1_DONE ? r.head_len : n;
    uint64_t s = seed_of(data, size);
    for (int i = 0; i < 6 && stop > 0; i++) {
        size_t k = i == 0 ? stop - 1 : (size_t)(mix(&s) % stop);
        int rk = parse(p, k, &lim, m, &r2);
        if (rc != H1_ERROR)
            CHECK(rk == H1_PARTIAL);
        else
            CHECK(rk == H1_PARTIAL || rk == H1_ERROR);
    }
    return 0;
}
