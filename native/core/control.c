/*
 * The control plane's side of the atomic hand-over: a new table is
 * published with a release store, which pairs with the workers' acquire
 * load at the top of each loop turn, so a worker that sees the pointer
 * sees everything the table holds.
 */
#include "api.h"
#include "core/hist.h"

void up_control_publish(struct up_control *ctl, struct up_config *cfg)
{
    __atomic_store_n(&ctl->config, (uint64_t)(uintptr_t)cfg, __ATOMIC_RELEASE);
}

void up_control_stop(struct up_control *ctl, uint32_t drain_timeout_ms)
{
    __atomic_store_n(&ctl->drain_timeout_ms, drain_timeout_ms, __ATOMIC_RELAXED);
    __atomic_store_n(&ctl->stop, 1u, __ATOMIC_RELEASE);
}

/* Sessions still holding cfg, over all workers. */
uint64_t up_config_refs(const struct up_config *cfg)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < cfg->nworkers; i++)
        n += __atomic_load_n(&cfg->refs[(size_t)i * UP_REFS_STRIDE], __ATOMIC_ACQUIRE);
    return n;
}

uint64_t up_worker_generation(const struct up_shm_worker *w)
{
    return __atomic_load_n(&w->config_generation, __ATOMIC_ACQUIRE);
}

uint32_t up_hist_bucket(uint64_t us)
{
    return hist_bucket(us);
}

uint64_t up_hist_lower(uint32_t b)
{
    if (b < 8)
        return b;
    uint32_t e = b / 8 + 2, sub = b % 8;
    return (uint64_t)(8 + sub) << (e - 3);
}

/* The access-log ring's two ends, with the ordering the drain needs: the
 * head is read with acquire (the records before it are complete), the tail
 * is published with release (the worker may overwrite what it frees). */
uint64_t up_log_head(const struct up_log_ring *r)
{
    return __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
}

void up_log_consumed(struct up_log_ring *r, uint64_t tail)
{
    __atomic_store_n(&r->tail, tail, __ATOMIC_RELEASE);
}
