/*
 * libFuzzer harness: h1_parse_request() over arbitrary bytes.
 *
 * The first byte picks the limits (defaults, or small ones so the 414/431
 * paths are reached with short inputs); the rest is the request. Checked:
 *   - the result is one of the three codes, with a known status on error;
 *   - on H1_DONE every offset lies inside the head, the head is CRLF-only
 *     and control-free, Host and framing fields agree with the headers;
 *   - parsing exactly the head again gives the same result (the parser
 *     never looks past the head), and every proper prefix of a complete
 *     head is H1_PARTIAL (no error appears early, no head ends early);
 *   - a prefix that is an error stays the same error when more bytes come
 *     (errors are reported as soon as the bytes show them, not changed).
 */
#include "fuzz_common.h"

static const struct h1_limits LIMITS[4] = {
    { 0, 0, 0 },           /* the defaults: 16384, 8192, H1_DEF_HEADERS */
    { 64, 16, 4 },
    { 200, 40, 8 },
    { 32768, 32768, 5000 },/* past the largest a listener may set (clamped to H1_MAX_HEADERS) */
};

static int parse(const uint8_t *p, size_t n, const struct h1_limits *lim, struct h1_request *r)
{
    uint8_t *b = exact_copy(p, n);
    memset(r, 0xa5, sizeof *r);   /* output fields must not depend on what was there */
    int rc = h1_parse_request(b, n, lim, r);
    free(b);
    return rc;
}

static void check_done(const uint8_t *b, size_t len, const struct h1_limits *lim,
                       const struct h1_request *r)
{
    uint32_t max_head = lim->max_head ? lim->max_head : 16384;
    uint32_t max_target = lim->max_target ? lim->max_target : 8192;
    uint32_t max_headers = lim->max_headers ? lim->max_headers : H1_DEF_HEADERS;
    if (max_headers > H1_MAX_HEADERS)
        max_headers = H1_MAX_HEADERS;
    CHECK(r->head_len <= len && r->head_len <= max_head);
    CHECK(r->skip % 2 == 0 && r->skip + r->line_len < r->head_len);
    for (uint32_t i = 0; i < r->skip; i += 2)
        CHECK(b[i] == '\r' && b[i + 1] == '\n');
    check_head_bytes(b + r->skip, r->head_len - r->skip);
    CHECK(r->method_off == r->skip && r->method_len > 0);
    CHECK(r->target_off == r->method_off + r->method_len + 1);
    CHECK(r->target_len > 0 && r->target_len <= max_target);
    CHECK(r->target_off + r->target_len + 11 == r->skip + r->line_len);  /* " HTTP/1.x\r\n" */
    CHECK(r->minor <= 1);
    CHECK(r->method <= H1_M_TRACE && r->target_form <= H1_T_ASTERISK);
    CHECK(r->nheaders <= max_headers);
    CHECK(r->body == H1_BODY_NONE || r->body == H1_BODY_LENGTH || r->body == H1_BODY_CHUNKED);
    CHECK(r->keep_alive <= 1 && r->upgrade <= 1 && r->expect_continue <= 1);
    CHECK(r->content_length <= (UINT64_C(1) << 62));
    if (r->body != H1_BODY_LENGTH)
        CHECK(r->content_length == 0);
    else
        CHECK(r->content_length > 0);
    if (r->minor == 1)
        CHECK(r->host != 0xffff);
    if (r->host != 0xffff) {
        CHECK(r->host < r->nheaders);
        CHECK(r->h[r->host].flags & H1_HF_HOST);
    }
    int ncl = 0, nte = 0, nhost = 0;
    uint32_t prev_end = r->skip + r->line_len;
    for (uint16_t i = 0; i < r->nheaders; i++) {
        const struct h1_header *h = &r->h[i];
        check_header(h, r->head_len);
        check_value_trimmed(b, h);
        CHECK(h->line_off == prev_end);               /* lines are contiguous, in order */
        prev_end = h->line_off + h->line_len;
        if (h->name_len == 4 && strncasecmp((const char *)b + h->name_off, "host", 4) == 0) {
            nhost++;
            CHECK(h->flags & H1_HF_HOST);
            CHECK(!(h->flags & H1_HF_HOP));           /* Connection cannot strip Host */
        }
        if (h->name_len == 14 && strncasecmp((const char *)b + h->name_off, "content-length", 14) == 0) {
            ncl++;
            CHECK((h->flags & H1_HF_FRAMING) && !(h->flags & H1_HF_HOP));
        }
        if (h->name_len == 17 && strncasecmp((const char *)b + h->name_off, "transfer-encoding", 17) == 0) {
            nte++;
            CHECK((h->flags & H1_HF_FRAMING) && !(h->flags & H1_HF_HOP));
        }
    }
    CHECK(prev_end + 2 == r->head_len);
    CHECK(nhost <= 1);
    CHECK(ncl <= 1);                       /* duplicate Content-Length is refused */
    CHECK(!(ncl && nte));                  /* so is CL with TE */
    if (r->body == H1_BODY_CHUNKED)
        CHECK(nte >= 1 && r->minor == 1);
    if (r->body == H1_BODY_LENGTH)
        CHECK(ncl == 1);
    if (nte)
        CHECK(r->body == H1_BODY_CHUNKED);  /* TE not ending in chunked is refused */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const struct h1_limits *lim = &LIMITS[data[0] & 3];
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    static struct h1_request r, r2;

    int rc = parse(p, n, lim, &r);
    CHECK(rc == H1_DONE || rc == H1_PARTIAL || rc == H1_ERROR);
    if (rc == H1_ERROR) {
        CHECK(r.error != NULL);
        CHECK(r.error_status == 400 || r.error_status == 414 || r.error_status == 431 ||
              r.error_status == 501 || r.error_status == 505);
    }
    if (rc == H1_DONE) {
        uint8_t *b = exact_copy(p, n);
        check_done(b, n, lim, &r);
        free(b);
        /* The head alone parses the same. */
        int rc2 = parse(p, r.head_len, lim, &r2);
        CHECK(rc2 == H1_DONE);
        CHECK(r2.head_len == r.head_len && r2.nheaders == r.nheaders && r2.body == r.body &&
              r2.content_length == r.content_length && r2.keep_alive == r.keep_alive &&
              r2.host == r.host && r2.upgrade == r.upgrade && r2.method == r.method);
        CHECK(memcmp(r2.h, r.h, sizeof r.h[0] * r.nheaders) == 0);
    }
    /* Prefixes: a few chosen from the input, and the last byte short. */
    size_t stop = rc == H1_DONE ? r.head_len : n;
    uint64_t s = seed_of(data, size);
    for (int i = 0; i < 6 && stop > 0; i++) {
        size_t k = i == 0 ? stop - 1 : (size_t)(mix(&s) % stop);
        int rk = parse(p, k, lim, &r2);
        if (rc == H1_DONE || rc == H1_PARTIAL) {
            CHECK(rk == H1_PARTIAL);
        } else if (rk == H1_ERROR) {
            CHECK(r2.error_status == r.error_status);
        } else {
            CHECK(rk == H1_PARTIAL);
        }
    }
    return 0;
}
