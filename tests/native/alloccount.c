/*
 * LD_PRELOAD interposer for the allocation invariant (DESIGN.md 1.2): counts
 * malloc-family calls per thread and, at exit, writes "tid count" lines to
 * $UPROXY_ALLOC_LOG. The test compares a worker's count after N and after
 * 10N connections.
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

#define SLOTS 8192
static struct { long tid; unsigned long count; } table[SLOTS];
static atomic_int used;
static __thread int slot = -1;

static void count(void)
{
    if (slot < 0) {
        int s = atomic_fetch_add(&used, 1);
        if (s >= SLOTS)
            return;
        slot = s;
        table[s].tid = syscall(SYS_gettid);
    }
    table[slot].count++;
}

void *malloc(size_t n) { count(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { count(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { count(); return __libc_realloc(p, n); }
void *memalign(size_t a, size_t n) { count(); return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { count(); return __libc_memalign(a, n); }
int posix_memalign(void **p, size_t a, size_t n)
{
    count();
    *p = __libc_memalign(a, n);
    return *p ? 0 : 12;
}

__attribute__((destructor)) static void dump(void)
{
    const char *path = getenv("UPROXY_ALLOC_LOG");
    if (!path)
        return;
    FILE *f = fopen(path, "w");
    if (!f)
        return;
    int n = atomic_load(&used);
    for (int i = 0; i < n && i < SLOTS; i++)
        fprintf(f, "%ld %lu\n", table[i].tid, table[i].count);
    fclose(f);
}
