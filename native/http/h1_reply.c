/*
 * The proxy's own answers (an error, then a close): fixed texts, static
 * data of the program, so nothing is built at start or per request. The
 * last entry (500) answers any status not listed.
 */
#include "http/h1.h"

/* status, reason, Content-Length (the reason and its newline) */
#define CANNED_REPLIES(X) \
    X(400, "Bad Request", 12) \
    X(408, "Request Timeout", 16) \
    X(413, "Content Too Large", 18) \
    X(414, "URI Too Long", 13) \
    X(431, "Request Header Fields Too Large", 32) \
    X(501, "Not Implemented", 16) \
    X(502, "Bad Gateway", 12) \
    X(503, "Service Unavailable", 20) \
    X(504, "Gateway Timeout", 16) \
    X(505, "HTTP Version Not Supported", 27) \
    X(500, "Internal Server Error", 22)

#define CANNED_TEXT(code, reason, n) \
    "HTTP/1.1 " #code " " reason "\r\nContent-Type: text/plain\r\nContent-Length: " #n \
    "\r\nConnection: close\r\n\r\n" reason "\n"

/* The Content-Length written above is the body's, or the build fails. */
#define CANNED_CHECK(code, reason, n) \
    _Static_assert(sizeof(reason "\n") - 1 == n, "Content-Length of the canned " #code);
CANNED_REPLIES(CANNED_CHECK)

#define CANNED_ENTRY(code, reason, n) \
    { code, sizeof CANNED_TEXT(code, reason, n) - 1, CANNED_TEXT(code, reason, n) },
static const struct canned {
    uint16_t status;
    uint16_t len;
    const char *text;
} canned[] = { CANNED_REPLIES(CANNED_ENTRY) };
#define NCANNED (sizeof canned / sizeof canned[0])

const char *h1_error_text(uint16_t status, uint32_t *len)
{
    size_t i;
    for (i = 0; i < NCANNED - 1 && canned[i].status != status; i++)
        ;
    *len = canned[i].len;
    return canned[i].text;
}
