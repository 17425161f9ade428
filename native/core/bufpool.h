/*
 * Receive buffers handed to the kernel ahead of time (provided buffers),
 * so an idle connection holds no buffer at all: the kernel picks one only
 * when data arrives. With a buffer ring (5.19+) a buffer goes back with two
 * stores; on 5.15 it goes back with an IORING_OP_PROVIDE_BUFFERS SQE.
 * The pool also keeps, per buffer, the link and length that let a
 * connection queue received buffers without any allocation.
 */
#ifndef UPROXY_BUFPOOL_H
#define UPROXY_BUFPOOL_H
#include <stdbool.h>
#include <stdint.h>

struct worker;

#define BUF_GROUP 1
#define HBUF_SIZE 32768     /* the largest head uproxy accepts */
#define SBUF_SIZE 1024      /* a small buffer: an HTTP/2 request's head */

struct bufpool {
    uint8_t *mem;
    uint32_t size, count;
    /* Assembly buffers: ids count .. count+hcount-1, for HTTP heads that
     * arrive in pieces. They hold a slow client to one buffer instead of
     * one provided buffer per received piece. */
    uint8_t *hmem;
    uint32_t hsize, hcount;
    uint32_t *hfree;
    uint32_t nhfree;
    /* Small buffers: ids count+hcount .. count+hcount+scount-1, one per
     * pool buffer, SBUF_SIZE bytes each. An HTTP/2 stream's request head
     * (about 200 bytes for gRPC) stays in its queue until the response's
     * head arrives, for a retry: in a 16 KiB pool buffer, 1,600 streams
     * in flight held 25 MiB, most of the pool, each head on its own
     * pages and, at a 16 KiB stride, in the same few cache sets. */
    uint8_t *smem;
    uint32_t scount;
    uint32_t *sfree;
    uint32_t nsfree;
    uint32_t *next;           /* queue link per buffer */
    uint32_t *len;            /* bytes of data per buffer */
    struct io_uring_buf_ring *br;
    size_t br_bytes;
    /* Free buffers wait on a stack (last returned on top) and only `window`
     * of them are handed to the kernel at a time. The kernel takes its
     * buffers in the order they were given (FIFO): giving it all of them
     * would cycle every receive through the whole pool, cold in the cache;
     * a small window of the most recently used keeps receives warm. The
     * window grows when receives run short and shrinks back slowly. */
    uint32_t *stack;
    uint32_t nstack;
    uint32_t in_kernel;       /* handed to the kernel, not yet used */
    uint32_t window;
    uint32_t min_window;
    uint64_t decay_ms;
    uint32_t free;            /* in the kernel or on the stack */
    uint32_t reserve;         /* kept on the stack for bufpool_take (TLS's
                                 plaintext and records) once it is used: the
                                 kernel's window, however starved, never
                                 takes these */
    bool ring_mode;
};

int bufpool_init(struct worker *w);
void bufpool_put(struct worker *w, uint32_t bid);
void bufpool_flush(struct worker *w);
void bufpool_free(struct worker *w);

static inline uint8_t *buf_data(const struct bufpool *p, uint32_t bid)
{
    if (bid < p->count)
        return p->mem + (size_t)bid * p->size;
    if (bid - p->count < p->hcount)
        return p->hmem + (size_t)(bid - p->count) * p->hsize;
    return p->smem + (size_t)(bid - p->count - p->hcount) * SBUF_SIZE;
}

static inline uint32_t buf_cap(const struct bufpool *p, uint32_t bid)
{
    if (bid < p->count)
        return p->size;
    return bid - p->count < p->hcount ? p->hsize : SBUF_SIZE;
}

/* An assembly buffer (not a provided or a small one). */
static inline bool buf_is_assembly(const struct bufpool *p, uint32_t bid)
{
    return bid >= p->count && bid - p->count < p->hcount;
}

/* An assembly buffer, or NIL when none is free. */
uint32_t hbuf_get(struct worker *w);
/* A small buffer, or NIL when none is free. */
uint32_t sbuf_get(struct worker *w);
/* A free buffer taken off the stack (not through a receive), or NIL. */
uint32_t bufpool_take(struct worker *w);
/* A completion brought a buffer: it left the kernel's hands. */
void bufpool_taken(struct worker *w);
/* A receive found no buffer: hand the kernel more at a time. */
void bufpool_short(struct worker *w);

#endif
