/*
 * LD_PRELOAD interposer for the allocation invariant (DESIGN.md 1.2): counts
 * malloc-family calls per thread and, at exit, writes "tid count" lines to
 * $UPROXY_ALLOC_LOG. The test compares a worker's count after N and after
 * 10N connections.
 *
 * It counts the pthread mutex and rwlock lock calls per thread too ("tid
 * count" lines in $UPROXY_LOCK_LOG): the core takes none (no such symbol,
 * test_no_lock_symbols), but a library on the path may (OpenSSL 3's
 * provider machinery takes rwlocks), and law 8 has them counted. A
 * library's call reaches these through the dynamic linker as any other, so
 * every one is seen; each forwards to glibc's own entry point.
 */
#define _GNU_SOURCE
#include <pthread.h>
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
static struct { long tid; unsigned long count, locks; } table[SLOTS];
static atomic_int used;
static __thread int slot = -1;

static int my_slot(void)
{
    if (slot < 0) {
        int s = atomic_fetch_add(&used, 1);
        if (s >= SLOTS)
            return -1;
        slot = s;
        table[s].tid = syscall(SYS_gettid);
    }
    return slot;
}

static void count(void)
{
    if (my_slot() >= 0)
        table[slot].count++;
}

static void count_lock(void)
{
    if (my_slot() >= 0)
        table[slot].locks++;
}

extern int __pthread_mutex_lock(pthread_mutex_t *);
extern int __pthread_mutex_trylock(pthread_mutex_t *);
extern int __pthread_rwlock_rdlock(pthread_rwlock_t *);
extern int __pthread_rwlock_wrlock(pthread_rwlock_t *);
extern int __pthread_rwlock_tryrdlock(pthread_rwlock_t *);
extern int __pthread_rwlock_trywrlock(pthread_rwlock_t *);

int pthread_mutex_lock(pthread_mutex_t *m) { count_lock(); return __pthread_mutex_lock(m); }
int pthread_mutex_trylock(pthread_mutex_t *m) { count_lock(); return __pthread_mutex_trylock(m); }
int pthread_rwlock_rdlock(pthread_rwlock_t *l) { count_lock(); return __pthread_rwlock_rdlock(l); }
int pthread_rwlock_wrlock(pthread_rwlock_t *l) { count_lock(); return __pthread_rwlock_wrlock(l); }
int pthread_rwlock_tryrdlock(pthread_rwlock_t *l) { count_lock(); return __pthread_rwlock_tryrdlock(l); }
int pthread_rwlock_trywrlock(pthread_rwlock_t *l) { count_lock(); return __pthread_rwlock_trywrlock(l); }

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

static void write_log(const char *env, int locks)
{
    const char *path = getenv(env);
    if (!path)
        return;
    FILE *f = fopen(path, "w");
    if (!f)
        return;
    int n = atomic_load(&used);
    for (int i = 0; i < n && i < SLOTS; i++)
        fprintf(f, "%ld %lu\n", table[i].tid, locks ? table[i].locks : table[i].count);
    fclose(f);
}

__attribute__((destructor)) static void dump(void)
{
    write_log("UPROXY_ALLOC_LOG", 0);
    write_log("UPROXY_LOCK_LOG", 1);
}
