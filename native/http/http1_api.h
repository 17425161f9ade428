/*
 * HTTP/1.1 message heads and chunked framing (RFC 9112), as pure functions
 * over bytes: no I/O, no allocation, no globals, no callbacks. The proxy
 * parses a head in place in its receive buffer and gets back offsets, so
 * unmodified header lines can go out again by iovec without a copy.
 *
 * Like api.h, this file is read by cffi's cdef parser too: plain
 * declarations only.
 */
#ifndef UPROXY_HTTP1_API_H
#define UPROXY_HTTP1_API_H
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

/* Header fields of one head: the default limit, and the most any limit may
 * be (the size of the result arrays below; a larger limit is clamped). */
#define H1_DEF_HEADERS 128
#define H1_MAX_HEADERS 1024

/* Return values of the head parsers. */
#define H1_DONE      0    /* a complete head: see head_len */
#define H1_PARTIAL  -1    /* no error so far; more bytes are needed */
#define H1_ERROR    -2    /* malformed: error_status and error say why */

enum h1_method {
    H1_M_OTHER, H1_M_GET, H1_M_HEAD, H1_M_POST, H1_M_PUT, H1_M_DELETE,
    H1_M_OPTIONS, H1_M_PATCH, H1_M_CONNECT, H1_M_TRACE
};

/* How the body after the head is framed (RFC 9112 section 6). */
enum h1_body {
    H1_BODY_NONE,        /* no body */
    H1_BODY_LENGTH,      /* content_length bytes */
    H1_BODY_CHUNKED,     /* chunked: track it with h1_chunked_feed() */
    H1_BODY_CLOSE,       /* responses only: until the upstream closes */
    H1_BODY_TUNNEL       /* 101 Switching Protocols, or 2xx to CONNECT */
};

enum h1_target_form {
    H1_T_ORIGIN,         /* /path?query */
    H1_T_ABSOLUTE,       /* http://authority/path */
    H1_T_AUTHORITY,      /* host:port (CONNECT) */
    H1_T_ASTERISK        /* * (OPTIONS) */
};

/* What the proxy does with a header line. */
#define H1_HF_HOP        1    /* hop-by-hop (RFC 9110 7.6.1), or named in
                                 Connection: not forwarded */
#define H1_HF_HOST       2
#define H1_HF_XFF        4    /* X-Forwarded-For: the proxy appends to it */
#define H1_HF_XF_OTHER   8    /* X-Forwarded-Proto/-Host from the peer:
                                 replaced by the proxy's own */
#define H1_HF_FRAMING    16   /* Content-Length / Transfer-Encoding */
#define H1_HF_UPGRADE    32   /* Upgrade (kept when the proxy tunnels) */

struct h1_header {
    uint32_t name_off;        /* offsets from the start of the buffer */
    uint16_t name_len;
    uint16_t flags;           /* H1_HF_* */
    uint32_t value_off;       /* the value without surrounding whitespace */
    uint32_t value_len;
    uint32_t line_off;        /* the whole field line ... */
    uint32_t line_len;        /* ... including its CRLF */
};

/* A field left 0, or no struct at all (NULL), takes the default. */
struct h1_limits {
    uint32_t max_head;        /* bytes of the head (default 16384): 431 */
    uint32_t max_target;      /* bytes of the request-target (default 8192): 414 */
    uint32_t max_headers;     /* header lines (default H1_DEF_HEADERS, at
                                 most H1_MAX_HEADERS): 431 */
};

struct h1_request {
    uint32_t head_len;        /* bytes of the head including the empty line
                                 (and the skipped bytes below) */
    uint32_t line_len;        /* bytes of the request line including CRLF */
    uint32_t skip;            /* bytes of empty lines (CRLFs) before the
                                 request line, ignored: the request line
                                 starts at buf + skip */
    uint8_t method;           /* enum h1_method */
    uint8_t minor;            /* HTTP/1.<minor>: 0 or 1 */
    uint8_t body;             /* NONE, LENGTH or CHUNKED */
    uint8_t keep_alive;       /* the client lets the connection persist */
    uint8_t expect_continue;  /* Expect: 100-continue */
    uint8_t upgrade;          /* Connection: upgrade and an Upgrade header */
    uint8_t target_form;      /* enum h1_target_form */
    uint8_t pad;
    uint16_t nheaders;
    uint16_t host;            /* index in h[] of Host, or 0xffff */
    uint16_t error_status;    /* on H1_ERROR: 400, 414, 431, 501 or 505 */
    uint16_t pad2;
    uint32_t method_off, method_len;
    uint32_t target_off, target_len;
    uint64_t content_length;
    const char *error;        /* on H1_ERROR: a short static reason */
    struct h1_header h[1024];   /* H1_MAX_HEADERS */
};

struct h1_response {
    uint32_t head_len;        /* bytes of the head including the empty line
                                 (and the skipped bytes below) */
    uint32_t line_len;        /* bytes of the status line including CRLF */
    uint16_t status;
    uint8_t minor;
    uint8_t body;             /* enum h1_body, given the request method */
    uint8_t keep_alive;       /* the upstream lets the connection persist */
    uint8_t pad[3];
    uint16_t nheaders;
    uint16_t error_status;    /* on H1_ERROR: 502 */
    uint32_t skip;            /* bytes of empty lines (CRLFs) before the
                                 status line, ignored: the status line
                                 starts at buf + skip */
    uint64_t content_length;
    const char *error;
    struct h1_header h[1024];   /* H1_MAX_HEADERS */
};

/* Parse the head at the start of buf[0..len). On H1_PARTIAL the caller
 * calls again with more bytes from the same start. A head longer than
 * lim->max_head is an error (431) as soon as that many bytes arrived
 * without its end, so a slow client cannot make the proxy hold more. */
int h1_parse_request(const uint8_t *buf, size_t len, const struct h1_limits *lim,
                     struct h1_request *out);

/* request_method: the method of the request this answers (HEAD and
 * CONNECT change the framing). 1xx heads parse like any other; the caller
 * forwards them and parses the next head. */
int h1_parse_response(const uint8_t *buf, size_t len, const struct h1_limits *lim,
                      uint8_t request_method, struct h1_response *out);

/* Chunked framing: follows a chunked body as it streams past, so the proxy
 * knows where the message ends while it forwards the bytes unchanged. */
struct h1_chunked {
    uint64_t remaining;       /* data bytes left in the current chunk */
    uint32_t state;
    uint32_t line_len;        /* bytes of the current size or trailer line */
    uint32_t trailer_len;     /* bytes of trailer section so far */
    uint32_t digits;
    uint16_t error_status;    /* on error: 400 */
    uint16_t pad;
    const char *error;
};

void h1_chunked_init(struct h1_chunked *c);

/* Feed the next len body bytes. Returns how many belong to this message
 * (<= len), or -1 on malformed framing. *done becomes 1 when the last
 * chunk and the trailer section have ended; the returned count then stops
 * exactly at the message's end (what follows is the next message). */
int64_t h1_chunked_feed(struct h1_chunked *c, const uint8_t *buf, size_t len, int *done);

/* The same, for a reader that wants the data without the framing (an
 * HTTP/2 stream): feeds framing bytes until the next data, then at most
 * max data bytes, and stops. Returns the bytes used (<= len), -1 on
 * malformed framing; the data among them are buf[*data_off ..
 * *data_off + *data_len). */
int64_t h1_chunked_data(struct h1_chunked *c, const uint8_t *buf, size_t len, size_t max,
                        size_t *data_off, size_t *data_len, int *done);

/* Where a parsed request goes: the authority of an absolute-form target
 * (RFC 9112 3.2.2: it overrides Host), else the Host field (host NULL when
 * there is none); and the target's path and query as sent ("?q" for
 * "http://h?q", whose path is empty). base is the buffer the request was
 * parsed from. False: the target has no path to go to (an absolute form
 * without an authority, CONNECT's authority form, OPTIONS' "*"). */
bool h1_request_target(const uint8_t *base, const struct h1_request *r, const uint8_t **host,
                       uint32_t *host_len, const uint8_t **path, uint32_t *path_len);

/* v in decimal into dst (room for 10 digits); the digits written. */
uint32_t h1_put_uint(char *dst, uint32_t v);

#endif
