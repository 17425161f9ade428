/*
 * A per-worker allocator for a library that asks for memory as it goes
 * (the HTTP/2 codec): one region reserved at start (mapped, not touched),
 * carved into blocks of power-of-two sizes, each size with its own free
 * list. A block freed is kept for the next request of its size, so after
 * warm-up the library's allocations cost two pointer moves and no malloc;
 * the region never returns memory to the system, and when it is used up
 * the library is told "no memory" (it fails the connection, not the
 * worker). One owner thread: no lock.
 */
#ifndef UPROXY_ARENA_H
#define UPROXY_ARENA_H
#include <stddef.h>
#include <stdint.h>

#define ARENA_MIN_SHIFT 5         /* 32-byte blocks ... */
#define ARENA_MAX_SHIFT 21        /* ... up to 2 MiB */
#define ARENA_CLASSES (ARENA_MAX_SHIFT - ARENA_MIN_SHIFT + 1)

struct arena {
    uint8_t *base;
    size_t size, used;            /* bytes reserved; bytes carved so far */
    void *free[ARENA_CLASSES];    /* a free list per size */
    uint64_t carves;              /* blocks carved fresh (grows only during warm-up) */
    uint64_t allocs, fails;       /* allocations served; refused (region full) */
};

int arena_init(struct arena *a, size_t size);
void arena_free_all(struct arena *a);
void *arena_alloc(struct arena *a, size_t n);
void arena_release(struct arena *a, void *p);
void *arena_realloc(struct arena *a, void *p, size_t n);

#endif
