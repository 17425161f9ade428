/*
 * CPU counters per worker: perf events opened on every CPU (hardware
 * cycles, instructions, cache references and misses, branch instructions and
 * misses where a PMU exists; software cpu-clock and page-faults where none does) and read
 * in BPF with bpf_perf_event_read_value at each context switch, so the
 * delta over a worker thread's time on a CPU is added to that worker.
 * A cpu-clock perf event (cpu_tick, 100 Hz) also flushes, or starts, a
 * worker that runs for long without switching.
 *
 * The loader defines NEV (events) and declares ev0..ev<NEV-1> as perf event
 * arrays; READ_EVENTS below is replaced by one read per event (bcc does not
 * rewrite map calls inside macros).
 */
struct cpu_mark {
    u32 widx1;              /* worker index + 1 on this CPU now, or 0 */
    u32 pad;
    u64 ts;
    u64 v[6];
};
BPF_PERCPU_ARRAY(cpu_marks, struct cpu_mark, 1);

static __always_inline void cpu_account(struct cpu_mark *m, u64 *vals, u64 now)
{
    if (!m->widx1 || m->ts < window_start())
        return;             /* nothing marked in this attach window */
    struct wstat *s = worker_stat(m->widx1 - 1);
    if (!s)
        return;
#pragma unroll
    for (int i = 0; i < NEV; i++)
        if (vals[i] >= m->v[i])
            ADD(s->pmu[i], vals[i] - m->v[i]);
    ADD(s->pmu_ns, now - m->ts);
}

static __always_inline void cpu_mark_set(struct cpu_mark *m, u64 *vals, u64 now)
{
#pragma unroll
    for (int i = 0; i < NEV; i++)
        m->v[i] = vals[i];
    m->ts = now;
}

int cpu_switch(struct bpf_raw_tracepoint_args *ctx)
{
    if (detached())
        return 0;
    int z = 0;
    struct cpu_mark *m = cpu_marks.lookup(&z);
    if (!m)
        return 0;
    u32 next = up_task_pid((const void *)ctx->args[2]);
    u32 *ni = workers.lookup(&next);
    if (!m->widx1 && !ni)
        return 0;           /* neither side is a worker: read nothing */
    u64 vals[6] = {};
    struct bpf_perf_event_value pv;
    /*@READ_EVENTS@*/
    u64 now = bpf_ktime_get_ns();
    cpu_account(m, vals, now);
    if (ni) {
        m->widx1 = *ni + 1;
        cpu_mark_set(m, vals, now);
    } else {
        m->widx1 = 0;
    }
    return 0;
}

int cpu_tick(struct bpf_perf_event_data *ctx)
{
    int z = 0;
    struct cpu_mark *m = cpu_marks.lookup(&z);
    if (!m)
        return 0;
    /* The switch probe may be detached (duty cycle): then nothing is
     * counted, and a mark from before this attach window is stale. A worker
     * that runs without switching is marked here, by the thread this tick
     * interrupted. */
    if (detached())
        return 0;
    u32 w1 = cur_worker1();
    if (!w1) {
        m->widx1 = 0;
        return 0;
    }
    u64 vals[6] = {};
    struct bpf_perf_event_value pv;
    /*@READ_EVENTS@*/
    u64 now = bpf_ktime_get_ns();
    if (m->widx1 == w1)
        cpu_account(m, vals, now);
    m->widx1 = w1;
    cpu_mark_set(m, vals, now);
    return 0;
}
