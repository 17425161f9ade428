/*
 * HTTP/2's wire (RFC 9113 section 4-6): frame types, flags, error codes
 * and settings, and the 9-byte frame header. Constants only, and the two
 * helpers that read and write a header: the session (h2_sess_*.c) and the
 * fuzz harness share them.
 */
#ifndef UPROXY_H2_WIRE_H
#define UPROXY_H2_WIRE_H
#include <stdint.h>

#define H2W_PREFACE     "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2W_PREFACE_LEN 24
#define H2W_HEAD        9         /* a frame header's bytes */
#define H2W_FRAME_MAX   16384     /* SETTINGS_MAX_FRAME_SIZE: ours (the default), and the peer's at first */
#define H2W_WINDOW_MAX  0x7fffffff

enum h2w_type {
    H2W_DATA = 0, H2W_HEADERS = 1, H2W_PRIORITY = 2, H2W_RST_STREAM = 3, H2W_SETTINGS = 4,
    H2W_PUSH_PROMISE = 5, H2W_PING = 6, H2W_GOAWAY = 7, H2W_WINDOW_UPDATE = 8, H2W_CONTINUATION = 9,
};

#define H2W_END_STREAM  0x1
#define H2W_ACK         0x1
#define H2W_END_HEADERS 0x4
#define H2W_PADDED      0x8
#define H2W_PRIO        0x20

enum h2w_error {
    H2W_NO_ERROR = 0, H2W_PROTOCOL_ERROR = 1, H2W_INTERNAL_ERROR = 2, H2W_FLOW_CONTROL_ERROR = 3,
    H2W_SETTINGS_TIMEOUT = 4, H2W_STREAM_CLOSED = 5, H2W_FRAME_SIZE_ERROR = 6,
    H2W_REFUSED_STREAM = 7, H2W_CANCEL = 8, H2W_COMPRESSION_ERROR = 9, H2W_CONNECT_ERROR = 10,
    H2W_ENHANCE_YOUR_CALM = 11, H2W_INADEQUATE_SECURITY = 12, H2W_HTTP_1_1_REQUIRED = 13,
};

enum h2w_setting {
    H2W_S_HEADER_TABLE_SIZE = 1, H2W_S_ENABLE_PUSH = 2, H2W_S_MAX_CONCURRENT_STREAMS = 3,
    H2W_S_INITIAL_WINDOW_SIZE = 4, H2W_S_MAX_FRAME_SIZE = 5, H2W_S_MAX_HEADER_LIST_SIZE = 6,
};

struct h2w_head {
    uint32_t len;
    uint8_t type, flags;
    int32_t id;
};

static inline uint32_t h2w_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void h2w_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline struct h2w_head h2w_read_head(const uint8_t *p)
{
    return (struct h2w_head){ .len = (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2], .type = p[3],
                              .flags = p[4], .id = (int32_t)(h2w_u32(p + 5) & 0x7fffffff) };
}

static inline void h2w_write_head(uint8_t *p, uint32_t len, uint8_t type, uint8_t flags, int32_t id)
{
    p[0] = (uint8_t)(len >> 16);
    p[1] = (uint8_t)(len >> 8);
    p[2] = (uint8_t)len;
    p[3] = type;
    p[4] = flags;
    h2w_put32(p + 5, (uint32_t)id & 0x7fffffff);
}

#endif
