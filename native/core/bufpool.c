#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include "core/worker.h"

static void *map(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void provide(struct worker *w, uint32_t bid, uint32_t n)
{
    struct bufpool *p = &w->bufs;
    struct io_uring_sqe *s = sqe_get(w);
    io_uring_prep_provide_buffers(s, buf_data(p, bid), (int)p->size, (int)n,
                                  BUF_GROUP, (int)bid);
    io_uring_sqe_set_data64(s, UD(OP_PROVIDE, 0));
    count_op(w, s);
}

int bufpool_init(struct worker *w)
{
    struct bufpool *p = &w->bufs;
    p->size = w->o.buf_size;
    p->count = w->o.buf_count;
    p->hsize = HBUF_SIZE;
    p->hcount = w->o.head_buffers;
    p->scount = p->count;
    uint32_t all = p->count + p->hcount + p->scount;
    p->mem = map((size_t)p->size * p->count);
    p->hmem = p->hcount ? map((size_t)p->hsize * p->hcount) : NULL;
    p->hfree = p->hcount ? map(sizeof(uint32_t) * p->hcount) : NULL;
    /* (Mapped, not touched: a page is only ever made by its first use,
     * and the free stack hands out the last returned first.) */
    p->smem = map((size_t)SBUF_SIZE * p->scount);
    p->sfree = map(sizeof(uint32_t) * p->scount);
    p->next = map(sizeof(uint32_t) * all);
    p->len = map(sizeof(uint32_t) * all);
    p->stack = map(sizeof(uint32_t) * p->count);
    if (!p->mem || !p->next || !p->len || !p->stack || !p->smem || !p->sfree ||
        (p->hcount && (!p->hmem || !p->hfree))) {
        snprintf(w->err, sizeof w->err, "cannot map %u receive buffers of %u bytes",
                 p->count, p->size);
        return -ENOMEM;
    }
    p->ring_mode = w->features & UP_F_BUF_RING;
    if (p->ring_mode) {
        p->br_bytes = sizeof(struct io_uring_buf) * p->count;
        p->br = map(p->br_bytes);
        if (!p->br)
            return -ENOMEM;
        io_uring_buf_ring_init(p->br);
        struct io_uring_buf_reg reg = {
            .ring_addr = (uint64_t)(uintptr_t)p->br,
            .ring_entries = p->count,
            .bgid = BUF_GROUP,
        };
        int r = io_uring_register_buf_ring(&w->ring, &reg, 0);
        if (r < 0) {
            snprintf(w->err, sizeof w->err,
                     "registering the buffer ring failed: %s", strerror(-r));
            return r;
        }
    }
    for (uint32_t i = 0; i < p->count; i++)
        p->stack[p->nstack++] = p->count - 1 - i;
    p->free = p->count;
    p->min_window = p->count < 64 ? p->count : 64;
    p->window = p->min_window;
    p->decay_ms = w->now_ms;
    bufpool_flush(w);
    for (uint32_t i = 0; i < p->hcount; i++)
        p->hfree[p->nhfree++] = p->count + p->hcount - 1 - i;
    for (uint32_t i = 0; i < p->scount; i++)
        p->sfree[p->nsfree++] = all - 1 - i;
    return 0;
}

uint32_t hbuf_get(struct worker *w)
{
    struct bufpool *p = &w->bufs;
    if (!p->nhfree)
        return NIL;
    return p->hfree[--p->nhfree];
}

uint32_t sbuf_get(struct worker *w)
{
    struct bufpool *p = &w->bufs;
    if (!p->nsfree)
        return NIL;
    w->c[UP_C_SMALL_BUFFERS_IN_USE]++;
    return p->sfree[--p->nsfree];
}

/* A free buffer for the worker's own use (TLS writes its plaintext and
 * its records into these), or NIL when none is on the stack. */
uint32_t bufpool_take(struct worker *w)
{
    struct bufpool *p = &w->bufs;
    /* From the first take on, the kernel's window leaves a sixteenth of the
     * pool on the stack: a worker that only receives gives the kernel all. */
    p->reserve = p->count / 16;
    if (!p->nstack)
        return NIL;
    p->free--;
    w->c[UP_C_BUFFERS_IN_USE]++;
    return p->stack[--p->nstack];
}

/* Give a buffer back: on top of the stack, the next to go to the kernel. */
void bufpool_put(struct worker *w, uint32_t bid)
{
    struct bufpool *p = &w->bufs;
    if (bid >= p->count) {
        if (bid - p->count < p->hcount)
            p->hfree[p->nhfree++] = bid;
        else {
            p->sfree[p->nsfree++] = bid;
            w->c[UP_C_SMALL_BUFFERS_IN_USE]--;
        }
        return;
    }
    p->stack[p->nstack++] = bid;
    p->free++;
    w->c[UP_C_BUFFERS_IN_USE]--;
}

void bufpool_taken(struct worker *w)
{
    struct bufpool *p = &w->bufs;
    p->free--;
    p->in_kernel--;
    w->c[UP_C_BUFFERS_IN_USE]++;
}

void bufpool_short(struct worker *w)
{
    struct bufpool *p = &w->bufs;
    p->window = p->window * 2 > p->count ? p->count : p->window * 2;
}

/* Once per loop turn, before the submit: top the kernel's share up to the
 * window, warmest buffers first. */
void bufpool_flush(struct worker *w)
{
    struct bufpool *p = &w->bufs;
    if (w->now_ms - p->decay_ms >= 1000) {
        p->decay_ms = w->now_ms;
        uint32_t less = p->window - p->window / 8;
        p->window = less < p->min_window ? p->min_window : less;
    }
    uint32_t n = 0;
    if (p->ring_mode) {
        uint32_t mask = io_uring_buf_ring_mask(p->count);
        while (p->in_kernel < p->window && p->nstack > p->reserve) {
            uint32_t bid = p->stack[--p->nstack];
            io_uring_buf_ring_add(p->br, buf_data(p, bid), p->size, (uint16_t)bid, mask, (int)n);
            n++;
            p->in_kernel++;
        }
        if (n)
            io_uring_buf_ring_advance(p->br, (int)n);
        return;
    }
    /* Legacy provided buffers: one SQE per run of consecutive ids. */
    while (p->in_kernel < p->window && p->nstack > p->reserve) {
        uint32_t bid = p->stack[--p->nstack], run = 1;
        while (p->in_kernel + run < p->window && p->nstack > p->reserve &&
               p->stack[p->nstack - 1] == bid + run) {
            p->nstack--;
            run++;
        }
        provide(w, bid, run);
        p->in_kernel += run;
    }
}

void bufpool_free(struct worker *w)
{
    struct bufpool *p = &w->bufs;
    if (p->br) {
        io_uring_unregister_buf_ring(&w->ring, BUF_GROUP);
        munmap(p->br, p->br_bytes);
    }
    uint32_t all = p->count + p->hcount + p->scount;
    if (p->mem)
        munmap(p->mem, (size_t)p->size * p->count);
    if (p->hmem)
        munmap(p->hmem, (size_t)p->hsize * p->hcount);
    if (p->hfree)
        munmap(p->hfree, sizeof(uint32_t) * p->hcount);
    if (p->smem)
        munmap(p->smem, (size_t)SBUF_SIZE * p->scount);
    if (p->sfree)
        munmap(p->sfree, sizeof(uint32_t) * p->scount);
    if (p->next)
        munmap(p->next, sizeof(uint32_t) * all);
    if (p->len)
        munmap(p->len, sizeof(uint32_t) * all);
    if (p->stack)
        munmap(p->stack, sizeof(uint32_t) * p->count);
    memset(p, 0, sizeof *p);
}
