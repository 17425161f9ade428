/*
 * Scheduler, per worker thread: run-queue latency (woken or preempted ->
 * running again), involuntary switches (preempted while runnable),
 * voluntary ones (sleeping, mostly in io_uring_enter) and migrations.
 *
 * Raw tracepoints sched_wakeup, sched_wakeup_new, sched_switch and
 * sched_migrate_task hand over struct task_struct pointers; the pid is read
 * at the offset the running kernel's BTF gives (TASK_PID_OFF). In
 * sched_switch, prev is the current task, args[0] says "preempted" and
 * args[3] is prev's state.
 */
BPF_HASH(wake_ts, u32, u64, 1024);

static __always_inline int on_wakeup(const void *task)
{
    if (detached())
        return 0;
    u32 pid = up_task_pid(task);
    if (!workers.lookup(&pid))
        return 0;
    u64 ts = bpf_ktime_get_ns();
    wake_ts.update(&pid, &ts);
    return 0;
}

int sched_wakeup(struct bpf_raw_tracepoint_args *ctx)
{
    return on_wakeup((const void *)ctx->args[0]);
}

int sched_wakeup_new(struct bpf_raw_tracepoint_args *ctx)
{
    return on_wakeup((const void *)ctx->args[0]);
}

int sched_switch(struct bpf_raw_tracepoint_args *ctx)
{
    if (detached())
        return 0;
    /* Involuntary as the kernel counts it (nivcsw): preempted, or still
     * runnable (woken before it got to sleep). prev_state is args[3] since
     * Linux 5.18; before, only the preempt flag is known. */
    u64 preempt = ctx->args[0] & 1;
#ifdef SWITCH_HAS_PREV_STATE
    u64 runnable = preempt || ctx->args[3] == 0;
#else
    u64 runnable = preempt;
#endif
    u32 prev = bpf_get_current_pid_tgid();
    u32 pw1 = cur_worker1();
    if (pw1) {
        struct wstat *s = worker_stat(pw1 - 1);
        if (s) {
            if (runnable) {
                ADD(s->invol, 1);
                u64 ts = bpf_ktime_get_ns();
                wake_ts.update(&prev, &ts);
            } else {
                ADD(s->vol, 1);
            }
        }
    }
    u32 next = up_task_pid((const void *)ctx->args[2]);
    u32 *ni = workers.lookup(&next);
    if (!ni)
        return 0;
    u64 *ts = wake_ts.lookup(&next);
    if (!ts)
        return 0;
    u64 t0 = *ts;
    wake_ts.delete(&next);
    if (t0 < window_start())
        return 0;           /* woken before this attach window */
    u64 ns = bpf_ktime_get_ns() - t0;
    struct wstat *s = worker_stat(*ni);
    if (!s)
        return 0;
    ADD(s->rq_waits, 1);
    ADD(s->rq_ns, ns);
    hist_inc(s->hist_rq, ns);
    return 0;
}

int sched_migrate(struct bpf_raw_tracepoint_args *ctx)
{
    /* never duty-cycled (probes.ALWAYS): migrations are rare, counted whole */
    u32 pid = up_task_pid((const void *)ctx->args[0]);
    u32 *idx = workers.lookup(&pid);
    if (!idx)
        return 0;
    struct wstat *s = worker_stat(*idx);
    if (s)
        ADD(s->migrations, 1);
    return 0;
}
