/*
 * Shared by every uproxy probe (bpf/*.c), loaded with bcc by
 * src/uproxy/telemetry/probes.py, which defines before this file:
 *   NW            number of worker threads of the watched proxy
 *   TGID          the proxy's process id
 *   TASK_PID_OFF  offsetof(struct task_struct, pid), from the kernel's BTF
 * and the tracepoint record structs (struct tp_<event>), built from the
 * running kernel's format files, never from headers.
 *
 * Per-worker results go to wstats[worker index]; the proxy-wide TCP results
 * to gstats[0]. The user-space reader sums what every loaded object wrote.
 */
#define HB 256          /* histogram buckets: the core's log-linear formula */

/* The core's histogram bucket (native/hist.h): 8 buckets per octave. */
static __always_inline u32 up_bucket(u64 v)
{
    if (v < 8)
        return (u32)v;
    u32 e = 0;
    u64 x = v;
    if (x >> 32) { x >>= 32; e += 32; }
    if (x >> 16) { x >>= 16; e += 16; }
    if (x >> 8)  { x >>= 8;  e += 8; }
    if (x >> 4)  { x >>= 4;  e += 4; }
    if (x >> 2)  { x >>= 2;  e += 2; }
    if (x >> 1)  { e += 1; }
    u32 b = (e - 2) * 8 + (u32)((v >> (e - 3)) & 7);
    return b > HB - 1 ? HB - 1 : b;
}

#define ADD(field, n) __sync_fetch_and_add(&(field), (n))

/* h[bucket(v)] += 1, with the index bounded in a way the verifier sees
 * (the barrier stops clang from dropping the mask on paths it can prove). */
static __always_inline void hist_inc(u64 *h, u64 v)
{
    u32 b = up_bucket(v);
    asm volatile("" : "+r"(b));
    b &= HB - 1;
    __sync_fetch_and_add(&h[b], 1);
}

struct wstat {
    /* io_uring (uring.c) */
    u64 uring_submits;      /* unused: the core counts SQEs (ops[], uring_sqes) */
    u64 uring_completes;    /* unused: CQEs are counted per CPU in uring_cqes */
    u64 uring_punts;        /* requests handed to io-wq worker threads */
    u64 uring_lat_ns;       /* sum of submit-to-first-completion times */
    u64 uring_timed;        /* requests in uring_lat_ns */
    /* scheduler (sched.c) */
    u64 rq_waits;
    u64 rq_ns;
    u64 invol;              /* preempted while runnable */
    u64 vol;                /* went to sleep (waiting in io_uring_enter) */
    u64 migrations;
    /* CPU counters (cpu.c): deltas over the worker's time on a CPU */
    u64 pmu[6];
    u64 pmu_ns;
    u64 pad[3];
    u64 op_done[64];        /* first completions, by IORING_OP_* */
    u64 op_lat_ns[64];
    u64 op_punts[64];
    u64 hist_uring[HB];     /* submit to first completion, ns */
    u64 hist_rq[HB];        /* wakeup (or preemption) to running, ns */
};

struct gstat {
    u64 est_client;         /* client connections established on the proxy's ports */
    u64 est_upstream;       /* upstream connects that completed */
    u64 connects;           /* upstream connects started (SYN sent) */
    u64 connect_failed;     /* SYN_SENT -> CLOSE */
    u64 ended_client;       /* left ESTABLISHED */
    u64 ended_upstream;
    u64 retrans_client;
    u64 retrans_upstream;
    u64 rtt_client;         /* tcp_probe samples */
    u64 rtt_upstream;
    u64 pad[6];
    u64 hist_connect[HB];   /* us */
    u64 hist_life_client[HB];   /* us in ESTABLISHED */
    u64 hist_life_upstream[HB];
    u64 hist_rtt_client[HB];    /* smoothed RTT, us */
    u64 hist_rtt_upstream[HB];
};

BPF_HASH(workers, u32, u32, 1024);          /* worker TID -> worker index */
/* The duty cycle: the loader may attach the per-event probes for part of
 * each period only. [1] is 1 while they are (being) detached or attached,
 * and every cycled program returns at once then, so the time they count is
 * exactly the window the loader measures; [0] is the start
 * (CLOCK_MONOTONIC ns) of the current window: a timestamp taken before it
 * spans a detached gap and is dropped. */
BPF_ARRAY(window, u64, 2);                  /* [0] start, [1] 1 while detached */

static __always_inline u64 window_start(void)
{
    int z = 0;
    u64 *w = window.lookup(&z);
    return w ? *w : 0;
}

static __always_inline int detached(void)
{
    int one = 1;
    u64 *d = window.lookup(&one);
    return d && *d;
}
BPF_ARRAY(wstats, struct wstat, NW);
BPF_ARRAY(gstats, struct gstat, 1);

static __always_inline struct wstat *worker_stat(u32 idx)
{
    return wstats.lookup(&idx);
}

/* The current thread's worker index + 1, or 0: a per-CPU cache of the last
 * thread seen in front of the workers hash (a worker is pinned, so the
 * cache almost always hits). */
struct tid_cache {
    u32 tid;
    u32 idx1;
};
BPF_PERCPU_ARRAY(tid_cache, struct tid_cache, 1);

static __always_inline u32 cur_worker1(void)
{
    u32 tid = bpf_get_current_pid_tgid();
    int z = 0;
    struct tid_cache *c = tid_cache.lookup(&z);
    if (c && c->tid == tid && tid)
        return c->idx1;
    u32 *idx = workers.lookup(&tid);
    u32 idx1 = idx ? *idx + 1 : 0;
    if (c) {
        c->tid = tid;
        c->idx1 = idx1;
    }
    return idx1;
}

static __always_inline u32 up_task_pid(const void *task)
{
    u32 pid = 0;
    bpf_probe_read_kernel(&pid, sizeof(pid), (const char *)task + TASK_PID_OFF);
    return pid;
}
