/*
 * The per-worker size-class allocator (arena.h). Each block is preceded by
 * a 16-byte header holding its size class, which keeps the block 16-byte
 * aligned (what malloc promises) and lets free and realloc find the class
 * without a lookup.
 */
#include <string.h>
#include <sys/mman.h>
#include "core/arena.h"

#define HDR 16

/* Under AddressSanitizer (scripts/test-sanitized) a free block and the
 * slack past what was asked are poisoned, so the library's use after free
 * or overflow inside our blocks is reported as it would be with malloc. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

static size_t class_size(unsigned k)
{
    return (size_t)1 << (k + ARENA_MIN_SHIFT);
}

int arena_init(struct arena *a, size_t size)
{
    memset(a, 0, sizeof *a);
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED)
        return -1;
    a->base = m;
    a->size = size;
    return 0;
}

void arena_free_all(struct arena *a)
{
    if (a->base) {
        UNPOISON(a->base, a->used);   /* a later mapping there must not inherit it */
        munmap(a->base, a->size);
    }
    memset(a, 0, sizeof *a);
}

static unsigned class_of(size_t n)
{
    size_t need = n + HDR;
    unsigned k = ARENA_MIN_SHIFT;
    while (((size_t)1 << k) < need)
        k++;
    return k - ARENA_MIN_SHIFT;
}

void *arena_alloc(struct arena *a, size_t n)
{
    if (n + HDR > ((size_t)1 << ARENA_MAX_SHIFT)) {
        a->fails++;
        return NULL;
    }
    unsigned k = class_of(n);
    uint8_t *b = a->free[k];
    if (b) {
        UNPOISON(b, HDR);
        memcpy(&a->free[k], b, sizeof(void *));
    } else {
        size_t sz = (size_t)1 << (k + ARENA_MIN_SHIFT);
        if (a->size - a->used < sz) {
            a->fails++;
            return NULL;
        }
        b = a->base + a->used;
        a->used += sz;
        a->carves++;
    }
    *(uint32_t *)b = k;
    a->allocs++;
    UNPOISON(b + HDR, n);
    POISON(b + HDR + n, class_size(k) - HDR - n);
    return b + HDR;
}

void arena_release(struct arena *a, void *p)
{
    if (!p)
        return;
    uint8_t *b = (uint8_t *)p - HDR;
    unsigned k = *(uint32_t *)b;
    memcpy(b, &a->free[k], sizeof(void *));
    a->free[k] = b;
    POISON(b, class_size(k));
}

void *arena_realloc(struct arena *a, void *p, size_t n)
{
    if (!p)
        return arena_alloc(a, n);
    uint8_t *b = (uint8_t *)p - HDR;
    unsigned k = *(uint32_t *)b;
    size_t have = class_size(k) - HDR;
    if (n <= have) {
        UNPOISON(p, n);
        return p;
    }
    void *q = arena_alloc(a, n);
    if (!q)
        return NULL;
    UNPOISON(p, have);                /* (its slack was poisoned; the bytes are copied whole) */
    memcpy(q, p, have);
    arena_release(a, p);
    return q;
}
