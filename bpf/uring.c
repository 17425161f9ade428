/*
 * io_uring, per worker: submit-to-complete latency (sampled), completions
 * and latency by opcode, and punts to io-wq (where splice's cost shows:
 * io_uring hands IORING_OP_SPLICE, and a shutdown that would block, to
 * io-wq threads). SQEs and CQEs themselves are counted by the core.
 *
 * io_uring_submit_req (io_uring_submit_sqe before 6.4), io_uring_complete and
 * io_uring_queue_async_work:
 * as raw tracepoints on Linux 6.0+ (URING_RAW: the args are the request and
 * its ring; req->ctx and req->opcode are read at the offsets the running
 * kernel's BTF gives, IO_KIOCB_CTX_OFF and IO_KIOCB_OPCODE_OFF), which spares
 * the kernel building each event's record (it copies the opcode's name);
 * as classic tracepoints with the kernel's own format before that.
 * Only events of the proxy's process are looked at (TGID), and one
 * request in URING_SAMPLE is timed, so the cost stays off the request path.
 */
#ifndef URING_SAMPLE
#define URING_SAMPLE 8
#endif
BPF_HASH(rings, u64, u32, 1024);            /* io_ring_ctx * -> worker index */

/* Timed requests, direct-mapped by request address: an array slot costs
 * far less than a hash update; a collision only drops a sample. */
#define INFLIGHT 4096
struct inflight {
    u64 req;
    u64 ts;
    u32 idx;
    u32 op;
};
BPF_ARRAY(uring_inflight, struct inflight, INFLIGHT);
BPF_PERCPU_ARRAY(uring_cqes, u64, NW);      /* CQEs posted by each worker's thread */

static __always_inline u32 slot_of(u64 req)
{
    return (u32)((req >> 6) ^ (req >> 18)) & (INFLIGHT - 1);
}

static __always_inline int mine(void)
{
    return (bpf_get_current_pid_tgid() >> 32) == TGID;
}

static __always_inline int on_submit(u64 ctx, u64 req, u32 op)
{
    u32 w1 = cur_worker1();
    if (!w1)
        return 0;
    u32 i = w1 - 1;
    if (!rings.lookup(&ctx))
        rings.update(&ctx, &i);
    u32 k = slot_of(req);
    struct inflight *f = uring_inflight.lookup(&k);
    if (f) {
        f->req = req;
        f->ts = bpf_ktime_get_ns();
        f->idx = i;
        f->op = op;
    }
    return 0;
}

static __always_inline int on_complete(u64 req)
{
    u32 w1 = cur_worker1();
    if (w1) {
        u32 i = w1 - 1;
        u64 *n = uring_cqes.lookup(&i);
        if (n)
            *n += 1;
    }
    if (!req)
        return 0;           /* a CQE posted without a request (multishot
                               accept and receive post these): not timed */
    u32 k = slot_of(req);
    struct inflight *f = uring_inflight.lookup(&k);
    if (!f)
        return 0;
    u64 ts = f->ts, now = bpf_ktime_get_ns();
    if (f->req != req)
        return 0;
    if (ts < window_start() || ts > now) {
        /* timed before this attach window (its completion may have gone by
         * unseen and the address been reused), or the slot was being
         * rewritten by another CPU: no sample */
        f->req = 0;
        return 0;
    }
    u64 ns = now - ts;
    u32 op = f->op & 63;
    struct wstat *s = worker_stat(f->idx);
    f->req = 0;
    if (!s)
        return 0;
    ADD(s->uring_lat_ns, ns);
    ADD(s->uring_timed, 1);
    ADD(s->op_done[op], 1);
    ADD(s->op_lat_ns[op], ns);
    hist_inc(s->hist_uring, ns);
    return 0;
}

static __always_inline int on_punt(u64 ctx, u32 op)
{
    u32 *idx = rings.lookup(&ctx);
    if (!idx)
        return 0;
    struct wstat *s = worker_stat(*idx);
    if (!s)
        return 0;
    ADD(s->uring_punts, 1);
    ADD(s->op_punts[op & 63], 1);
    return 0;
}

/* Pseudo-random sampling: a counter would alias with the fixed number of
 * operations a session makes and time the same operation every time. */
static __always_inline int sampled(void)
{
    return URING_SAMPLE <= 1 || bpf_get_prandom_u32() % URING_SAMPLE == 0;
}

#ifdef URING_RAW
static __always_inline u64 req_ctx(const void *req)
{
    u64 ctx = 0;
    bpf_probe_read_kernel(&ctx, sizeof(ctx), (const char *)req + IO_KIOCB_CTX_OFF);
    return ctx;
}

static __always_inline u32 req_opcode(const void *req)
{
    u8 op = 0;
    bpf_probe_read_kernel(&op, sizeof(op), (const char *)req + IO_KIOCB_OPCODE_OFF);
    return op;
}

int uring_submit(struct bpf_raw_tracepoint_args *c)      /* (struct io_kiocb *req) */
{
    if (detached() || !mine() || !sampled())
        return 0;
    const void *req = (const void *)c->args[0];
    return on_submit(req_ctx(req), (u64)req, req_opcode(req));
}

int uring_complete(struct bpf_raw_tracepoint_args *c)    /* (ctx, req, cqe) */
{
    if (detached() || !mine())
        return 0;
    return on_complete(c->args[1]);
}

int uring_punt(struct bpf_raw_tracepoint_args *c)        /* (struct io_kiocb *req, int rw) */
{
    /* never duty-cycled (probes.ALWAYS): punts are rare, counted whole */
    if (!mine())
        return 0;
    const void *req = (const void *)c->args[0];
    return on_punt(req_ctx(req), req_opcode(req));
}
#else
int uring_submit(TP_SUBMIT_T *a)   /* io_uring_submit_req, or _sqe before 6.4 */
{
    if (!mine() || !sampled())
        return 0;
    return on_submit(a->ctx, a->req, a->opcode);
}

int uring_complete(struct tp_io_uring_complete *a)
{
    if (!mine())
        return 0;
    return on_complete(a->req);
}

int uring_punt(struct tp_io_uring_queue_async_work *a)
{
    if (!mine())
        return 0;
    return on_punt(a->ctx, a->opcode);
}
#endif
