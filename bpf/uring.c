/*
 * io_uring, per worker: SQEs submitted, CQEs posted, submit-to-complete
 * latency and completions by opcode, and punts to io-wq (where splice's
 * cost shows: io_uring always hands IORING_OP_SPLICE to io-wq threads).
 *
 * Tracepoints io_uring:io_uring_submit_req, io_uring_complete and
 * io_uring_queue_async_work. A ring belongs to the worker whose thread
 * submits to it; completions and punts, which may run on another thread
 * (softirq, io-wq), are matched to the worker by ring (ctx).
 */
BPF_HASH(rings, u64, u32, 1024);            /* io_ring_ctx * -> worker index */

struct inflight {
    u64 ts;
    u32 idx;
    u32 op;
};
BPF_TABLE("lru_hash", u64, struct inflight, uring_inflight, 65536);

int uring_submit(struct tp_io_uring_submit_req *a)
{
    u32 tid = bpf_get_current_pid_tgid();
    u32 *idx = workers.lookup(&tid);
    if (!idx)
        return 0;
    u32 i = *idx;
    u64 ctx = a->ctx;
    if (!rings.lookup(&ctx))
        rings.update(&ctx, &i);
    struct inflight f = {.ts = bpf_ktime_get_ns(), .idx = i, .op = a->opcode};
    u64 req = a->req;
    uring_inflight.update(&req, &f);
    struct wstat *s = worker_stat(i);
    if (s)
        ADD(s->uring_submits, 1);
    return 0;
}

int uring_complete(struct tp_io_uring_complete *a)
{
    u64 ctx = a->ctx;
    u32 *idx = rings.lookup(&ctx);
    if (!idx)
        return 0;
    struct wstat *s = worker_stat(*idx);
    if (!s)
        return 0;
    ADD(s->uring_completes, 1);
    u64 req = a->req;
    struct inflight *f = uring_inflight.lookup(&req);
    if (!f)
        return 0;
    u64 ns = bpf_ktime_get_ns() - f->ts;
    u32 op = f->op & 63;
    uring_inflight.delete(&req);
    ADD(s->uring_lat_ns, ns);
    ADD(s->uring_timed, 1);
    ADD(s->op_done[op], 1);
    ADD(s->op_lat_ns[op], ns);
    hist_inc(s->hist_uring, ns);
    return 0;
}

int uring_punt(struct tp_io_uring_queue_async_work *a)
{
    u64 ctx = a->ctx;
    u32 *idx = rings.lookup(&ctx);
    if (!idx)
        return 0;
    struct wstat *s = worker_stat(*idx);
    if (!s)
        return 0;
    ADD(s->uring_punts, 1);
    ADD(s->op_punts[a->opcode & 63], 1);
    return 0;
}
