/*
 * Log-linear latency histograms: 8 buckets per octave of microseconds, so
 * every bucket is at most 12.5% wide, in 256 counters (up to ~2.4 hours).
 * One writer per histogram (its worker); readers add workers' histograms
 * bucket by bucket, which is exact. The same formula is in
 * src/uproxy/hist.py and docs/stats-layout.md.
 */
#ifndef UPROXY_HIST_H
#define UPROXY_HIST_H
#include <stdint.h>
#include <time.h>

static inline uint32_t hist_bucket(uint64_t us)
{
    if (us < 8)
        return (uint32_t)us;
    uint32_t e = 63u - (uint32_t)__builtin_clzll(us);   /* floor(log2(us)) >= 3 */
    uint32_t b = (e - 2) * 8 + (uint32_t)((us >> (e - 3)) & 7);
    return b > 255 ? 255 : b;
}

static inline void hist_add(uint64_t *h, uint64_t us)
{
    h[hist_bucket(us)]++;
}

static inline uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

#endif
