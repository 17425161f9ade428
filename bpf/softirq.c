/*
 * Softirq time per CPU, by softirq (NET_RX, NET_TX, TIMER, ...): raw
 * tracepoints softirq_entry and softirq_exit (args[0] is the vector).
 * Per-CPU maps: no atomics, no sharing. The dashboard shows the share of
 * each worker's CPU spent here: on loopback, packet processing for the
 * proxy's connections runs as NET_RX softirq on the sending CPU.
 */
BPF_PERCPU_ARRAY(softirq_start, u64, 1);
BPF_PERCPU_ARRAY(softirq_ns, u64, 16);

int softirq_entry(struct bpf_raw_tracepoint_args *ctx)
{
    if (detached())
        return 0;
    int z = 0;
    u64 *t = softirq_start.lookup(&z);
    if (t)
        *t = bpf_ktime_get_ns();
    return 0;
}

int softirq_exit(struct bpf_raw_tracepoint_args *ctx)
{
    if (detached())
        return 0;
    int z = 0;
    u64 *t = softirq_start.lookup(&z);
    if (!t || !*t)
        return 0;
    if (*t < window_start()) {
        *t = 0;             /* entered before this attach window */
        return 0;
    }
    u32 vec = ctx->args[0] & 15;
    u64 *acc = softirq_ns.lookup(&vec);
    if (acc)
        *acc += bpf_ktime_get_ns() - *t;
    *t = 0;
    return 0;
}
