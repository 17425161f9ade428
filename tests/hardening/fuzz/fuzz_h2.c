/*
 * libFuzzer harness: the HTTP/2 codec (native/http2/h2_codec.c: our own
 * session for clients, h2_sess_*.c with hpack.c, and nghttp2 toward
 * upstreams; their memory from the worker's arena) fed arbitrary bytes as
 * a peer's, both ways: the first input byte chooses a session of a
 * listener (what a hostile client sends; bit 2: ours or nghttp2's) or one
 * toward an upstream (what a hostile server sends, after the proxy
 * submitted a request with a body).
 *
 * The input goes in pieces whose sizes come from the input; what the
 * codec writes back is drained after each. h2_on_event() is this file's:
 * it checks each event's fields (a stream id that fits the direction, a
 * header's name and value inside their bounds, DATA within the input's
 * size) and answers the way h2_conn.c does (a response for each request,
 * body bytes for H2E_READ). Invariants: no memory error (ASan; the arena
 * poisons its free blocks under it, so a use after free inside the arena
 * is one too), and the arena never carves past its region however many
 * sessions come and go (freed blocks are reused).
 */
#include "fuzz_common.h"
#include "http2/h2.h"

static struct h2_worker hw;
static struct worker wk;
static uint64_t events;
static int upstream_side;

int h2_on_event(struct worker *w, struct h2_slot *s, struct h2_ev *ev)
{
    (void)w;
    events++;
    switch (ev->kind) {
    case H2E_BEGIN:
        CHECK(ev->stream > 0 && (ev->stream & 1));
        h2c_bind(s, ev->stream, (uint32_t)ev->stream);
        return 0;
    case H2E_HEADER:
        CHECK(ev->name && ev->value);
        if (ev->nlen)
            CHECK(ev->name[ev->nlen - 1] || 1);   /* readable through its length (ASan) */
        if (ev->vlen)
            CHECK(ev->value[ev->vlen - 1] || 1);
        return 0;
    case H2E_REQUEST: {
        CHECK(!upstream_side);
        struct h2_field f = { (const uint8_t *)":status", (const uint8_t *)"200", 7, 3 };
        return h2c_respond(s, ev->stream, &f, 1, !ev->end_stream) < 0 ? 1 : 0;
    }
    case H2E_RESPONSE:
        CHECK(upstream_side);
        return 0;
    case H2E_DATA:
        CHECK(ev->buf && ev->len <= (1u << 24));
        if (ev->len)
            CHECK(ev->buf[ev->len - 1] || 1);
        h2c_consume(s, ev->stream, ev->len);
        return 0;
    case H2E_READ:
        CHECK(ev->buf && ev->len);
        ev->n = ev->len < 7 ? ev->len : 7;
        memcpy(ev->buf, "payload", ev->n);
        ev->eof = 1;
        return 0;
    case H2E_END_STREAM:
    case H2E_CLOSED:
    case H2E_GLITCH:
    case H2E_GOAWAY:
    case H2E_SETTINGS:
        return 0;
    }
    CHECK(!"an event kind the codec should not make");
    return 0;
}

/* What the codec's last h2c_send handed out must stay readable until the
 * next h2c_send, whatever comes in meanwhile: h2_flush copies it into its
 * send buffer across sends. The harness keeps it and reads it after the
 * next input (ASan sees a use after free there). */
static const uint8_t *held;
static size_t held_n;

static void touch_held(void)
{
    volatile uint8_t x = 0;
    for (size_t i = 0; i < held_n; i++)
        x ^= held[i];
    (void)x;
}

/* Take at most max chunks of output, as h2_flush does when its buffer
 * fills: the last one stays held. */
static void drain(struct h2_slot *s, int max)
{
    const uint8_t *p;
    for (int i = 0; i < max; i++) {
        touch_held();
        ssize_t n = h2c_send(s, &p);
        held = n > 0 ? p : NULL;
        held_n = n > 0 ? (size_t)n : 0;
        if (n <= 0)
            break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        wk.h2 = &hw;
        CHECK(arena_init(&hw.arena, 64u << 20) == 0);
        CHECK(h2c_worker_init(&wk, &hw) == 0);
        ready = 1;
    }
    if (!size)
        return 0;
    uint64_t seed = size;
    upstream_side = data[0] & 1;
    /* A client's session: nghttp2's, or our own codec's (h2_sess.h). */
    wk.features = (data[0] & 2) ? UP_F_H2_CODEC : 0;
    data++, size--;
    struct h2_slot s;
    memset(&s, 0, sizeof s);
    s.w = &wk;
    s.owner = s.streams = NIL;
    static const uint8_t PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if (upstream_side) {
        s.flags = CF_UPSTREAM;
        CHECK(h2c_open_upstream(&wk, &s) == 0);
        struct h2_field f[] = {
            { (const uint8_t *)":method", (const uint8_t *)"POST", 7, 4 },
            { (const uint8_t *)":scheme", (const uint8_t *)"http", 7, 4 },
            { (const uint8_t *)":authority", (const uint8_t *)"a", 10, 1 },
            { (const uint8_t *)":path", (const uint8_t *)"/", 5, 1 },
        };
        CHECK(h2c_request(&s, f, 4, true, 1) == 1);
    } else {
        CHECK(h2c_open(&wk, &s, 16384, H2_MAX_STREAMS) == 0);
        CHECK(h2c_recv(&s, PREFACE, sizeof PREFACE - 1) == 0);
    }
    drain(&s, 64);
    /* A client's bytes pass the frame scan of backpressure (h2_scan.c) as
     * h2_hold.c feeds them: up to the HEADERS frame that would open a
     * stream past a budget (0-2 here), then the rest once "room" is back. */
    struct h2_scan sc;
    h2_scan_init(&sc);
    sc.skip = 0;                      /* (the preface went in above) */
    size_t off = 0;
    while (off < size) {
        /* Mostly pieces of up to 512 bytes; now and then all the rest at
         * once, as a full receive buffer comes (what a flood piles up). */
        uint64_t m = mix(&seed);
        size_t piece = m % 8 == 0 ? size - off : 1 + (size_t)(m / 8 % (size - off < 512 ? size - off : 512));
        uint8_t *b = exact_copy(data + off, piece);
        int r = 0;
        if (upstream_side) {
            r = h2c_recv(&s, b, piece);
        } else {
            uint32_t budget = (uint32_t)(mix(&seed) % 3);
            size_t k = h2_scan(&sc, b, piece, &budget);
            CHECK(k <= piece && (k == piece || budget == 0));
            if (k)
                r = h2c_recv(&s, b, k);
            budget = UINT32_MAX;
            CHECK(h2_scan(&sc, b + k, piece - k, &budget) == piece - k);
            if (r == 0 && k < piece)
                r = h2c_recv(&s, b + k, piece - k);
        }
        free(b);
        off += piece;
        touch_held();
        drain(&s, 1 + (int)(mix(&seed) % 3));
        if (r < 0)
            break;
    }
    drain(&s, 64);
    held = NULL;
    held_n = 0;
    h2c_close(&wk, &s);
    /* Blocks went back to the free lists: sessions do not add up. */
    CHECK(hw.arena.used <= (64u << 20) && !hw.arena.fails);
    return 0;
}
