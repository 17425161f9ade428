/*
 * The worker: set-up in its own thread (the ring is single-issuer, so the
 * thread that creates it must be the one that drives it), then the loop:
 * read the control block, submit and wait in one io_uring_enter, run every
 * completion, repeat. Everything a connection needs was allocated in
 * up_worker_new(); the loop itself never allocates.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "worker/loop.h"
#include "upstream/upstream.h"
#include "l4/l4.h"
#include "l4/sockmap.h"
#include "http/h1.h"
#include "http2/h2.h"

/* Time is read once per loop turn, after the wait: everything that
 * completes in one turn happened at the same moment as far as deadlines,
 * latency histograms and access-log times go (a turn is microseconds). */
static void tick_clock(struct worker *w)
{
    w->now_us = now_us();
    w->now_ms = w->now_us / 1000;
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME_COARSE, &rt);
    w->real_ms = (uint64_t)rt.tv_sec * 1000 + (uint64_t)rt.tv_nsec / 1000000;
}

static void resume_starved(struct worker *w);
static void resume_held(struct worker *w);

/* Every counter has its slot in the segment (a new one past the array
 * means growing it, with a new layout version). */
_Static_assert(UP_C__COUNT <= UP_NCOUNTERS, "enum up_counter outgrew up_shm_worker.c");
_Static_assert(sizeof(((struct up_shm_worker *)0)->c) == UP_NCOUNTERS * sizeof(uint64_t),
               "up_shm_worker.c is not UP_NCOUNTERS long");

struct up_worker *up_worker_new(const struct up_worker_opts *o, struct up_control *ctl,
                                struct up_shm_worker *shm, struct up_shm_wserver *servers,
                                struct up_shm_wlistener *listeners, struct up_log_ring *log)
{
    struct worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->o = *o;
    w->ctl = ctl;
    w->shm = shm;
    w->c = shm->c;
    w->srv = servers;
    w->lst = listeners;
    w->log = log;
    w->features = o->features;
    w->ring.ring_fd = -1;
    w->nconns = worker_nconns(o->max_conns);
    /* Mapped, not touched: memory is only committed as connections use
     * their slots, so an idle worker costs little. */
    w->conns = mmap(NULL, sizeof(struct conn) * w->nconns, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    w->free_ids = calloc(w->nconns, sizeof(uint32_t));
    /* A connection is on the hand-up stack once per reason set; a slot
     * freed and taken again within one drain may leave a stale entry. */
    w->handup_cap = 2 * w->nconns;
    w->handup = calloc(w->handup_cap, sizeof(uint32_t));
    w->late = calloc(w->nconns, sizeof(uint32_t));
    w->scratch = malloc(SCRATCH_SIZE);
    /* HTTP: one transaction per client connection at most. */
    w->ntxns = o->max_conns;
    w->txns = mmap(NULL, sizeof(struct txn) * w->ntxns, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    w->logrecs = mmap(NULL, sizeof(struct up_log_rec) * w->ntxns, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    w->txn_free = calloc(w->ntxns, sizeof(uint32_t));
    w->pool_head = malloc(sizeof(uint32_t) * UP_MAX_SERVERS);
    w->pool_count = calloc(UP_MAX_SERVERS, sizeof(uint32_t));
    w->req_scratch = malloc(sizeof(struct h1_request));
    w->resp_scratch = malloc(sizeof(struct h1_response));
    if (w->conns == MAP_FAILED || w->txns == MAP_FAILED ||
        w->logrecs == MAP_FAILED || !w->free_ids || !w->handup || !w->late || !w->scratch ||
        !w->txn_free || !w->pool_head || !w->pool_count || !w->req_scratch || !w->resp_scratch) {
        if (w->txns == MAP_FAILED)
            w->txns = NULL;
        if (w->logrecs == MAP_FAILED)
            w->logrecs = NULL;
        if (w->conns == MAP_FAILED)
            w->conns = NULL;
        up_worker_free((struct up_worker *)w);
        return NULL;
    }
    if (wstate_init(w) < 0 || sm_init(w) < 0 || h2_worker_init(w) < 0 ||
        pol_worker_init(w) < 0) {
        up_worker_free((struct up_worker *)w);
        return NULL;
    }
    for (uint32_t i = 0; i < w->ntxns; i++)
        w->txn_free[i] = w->ntxns - 1 - i;
    w->ntxn_free = w->ntxns;
    for (uint32_t i = 0; i < UP_MAX_SERVERS; i++)
        w->pool_head[i] = NIL;
    /* Lowest index on top: the slab is used from its start, keeping the
     * touched part small. */
    for (uint32_t i = 0; i < w->nconns; i++)
        w->free_ids[i] = w->nconns - 1 - i;
    w->nfree = w->nconns;
    w->starved_head = NIL;
    w->late_last = NIL;
    w->rng = 0x9e3779b9u ^ (o->index * 0x85ebca6bu) ^ 1u;
    for (unsigned i = 0; i < UP_MAX_LISTENERS; i++)
        w->acc[i].fd = -1;
    return (struct up_worker *)w;
}

const char *up_worker_error(struct up_worker *uw)
{
    return ((struct worker *)uw)->err;
}

static void arm_tick(struct worker *w)
{
    struct io_uring_sqe *s = sqe_get(w);
    io_uring_prep_timeout(s, &w->tick_ts, 0, 0);
    io_uring_sqe_set_data64(s, UD(OP_TICK, 0));
    count_op(w, s);
    w->tick_armed = true;
}

static void apply_config(struct worker *w)
{
    const struct up_config *cfg =
        (const struct up_config *)(uintptr_t)__atomic_load_n(&w->ctl->config, __ATOMIC_ACQUIRE);
    if (cfg == w->cfg)
        return;
    w->cfg = cfg;
    acceptors_sync(w);
    /* Published after the switch: once every worker shows a generation,
     * no new session will take a reference on an older table. */
    __atomic_store_n(&w->shm->config_generation, cfg ? cfg->generation : 0, __ATOMIC_RELEASE);
}

/* In the worker's thread: a single-issuer ring refuses registrations
 * from any other thread. */
static void teardown(struct worker *w)
{
    if (w->ring.ring_fd <= 0)
        return;
    tp_tls_free_all(w);
    bufpool_free(w);
    pipes_free(w);
    io_uring_queue_exit(&w->ring);
    w->ring.ring_fd = -1;
}

int up_worker_setup(struct up_worker *uw)
{
    struct worker *w = (struct worker *)uw;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);   /* signals are the control plane's */
    if (w->o.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(w->o.cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set)) {
            snprintf(w->err, sizeof w->err, "cannot pin worker %u to CPU %d: %s",
                     w->o.index, w->o.cpu, strerror(errno));
            return -errno;
        }
    }
    char name[16];
    snprintf(name, sizeof name, "uproxy-w%u", w->o.index);
    pthread_setname_np(pthread_self(), name);
    w->shm->tid = (uint64_t)gettid();
    w->shm->cpu = (uint64_t)(int64_t)w->o.cpu;
    tick_clock(w);
    int r = ring_init(w);
    if (r < 0)
        goto fail;
    if ((r = bufpool_init(w)) < 0)
        goto fail;
    if ((r = ring_files_init(w)) < 0 || (r = pipes_init(w)) < 0)
        goto fail;
    if ((r = tp_tls_init(w)) < 0)
        goto fail;
    w->shm->features = w->features;
    wheel_init(w);
    w->tick_ts.tv_nsec = TICK_MS * 1000000L;
    arm_tick(w);
    apply_config(w);
    __atomic_store_n(&w->shm->state, UP_WS_RUNNING, __ATOMIC_RELEASE);
    return 0;
fail:
    teardown(w);
    __atomic_store_n(&w->shm->state, UP_WS_FAILED, __ATOMIC_RELEASE);
    return r;
}

/* What the loop asks of a connection's protocol. */
enum event {
    EV_CQE,           /* a completion of one of its operations */
    EV_EXPIRED,       /* its deadline passed */
    EV_FINISH,        /* closing, nothing outstanding: give back and close */
    EV_ADOPT,         /* its kind changed (an HTTP upgrade became a tunnel) */
    EV_RESUME,        /* a receive that starved for buffers may start again */
    EV_CUT,           /* the drain deadline passed: end it now */
    EV_KICK,          /* a protocol above has work on it (C_UP_KICK) */
};

/* The one place that names every protocol (DESIGN.md section 4): a switch
 * on the connection's kind, no function pointers. */
static void to_protocol(struct worker *w, struct conn *c, enum event ev, enum op op,
                        struct io_uring_cqe *cqe)
{
    switch (c->kind) {
    case CK_L4_CLIENT:
    case CK_L4_UPSTREAM:
        switch (ev) {
        case EV_CQE:
            l4_on_cqe(w, c, op, cqe);
            break;
        case EV_EXPIRED:
            l4_on_idle(w, c);
            break;
        case EV_FINISH:
            l4_try_finish(w, c);
            break;
        case EV_ADOPT:
            l4_adopt(w, c);
            break;
        case EV_RESUME:
            l4_recv_arm(w, c);
            break;
        case EV_CUT:
            if (c->kind == CK_L4_CLIENT)
                l4_abort(w, c);
            break;
        case EV_KICK:
            break;
        }
        break;
    case CK_L4_HELLO:
        /* An L4 client before its ClientHello chose the cluster (SNI
         * passthrough); its upstream is CK_L4_UPSTREAM, not dialed yet. */
        switch (ev) {
        case EV_CQE:
            sni_on_cqe(w, c, op, cqe);
            break;
        case EV_EXPIRED:
            sni_expired(w, c);
            break;
        case EV_FINISH:
            l4_try_finish(w, c);
            break;
        case EV_RESUME:
            sni_recv_arm(w, c);
            break;
        case EV_CUT:
            l4_abort(w, c);
            break;
        case EV_ADOPT:
        case EV_KICK:
            break;
        }
        break;
    case CK_H1_CLIENT:
    case CK_H1_UPSTREAM: {
        bool client = c->kind == CK_H1_CLIENT;
        switch (ev) {
        case EV_CQE:
            if (client)
                h1_client_cqe(w, c, op, cqe);
            else
                h1_upstream_cqe(w, c, op, cqe);
            break;
        case EV_EXPIRED:
            if (client)
                h1_client_expired(w, c);
            else
                h1_upstream_expired(w, c);
            break;
        case EV_FINISH:
            /* An upstream finishing with an HTTP/2 stream: the stream's
             * codec forgets it first (both are released together). */
            if (c->peer != NIL && w->conns[c->peer].kind == CK_H2_STREAM &&
                w->conns[c->peer].state == CS_CLOSING)
                h2_stream_detach(w, &w->conns[c->peer]);
            /* A client finishing with a stream to an HTTP/2 upstream: the
             * same, the other way. */
            if (c->peer != NIL && w->conns[c->peer].kind == CK_H2_USTREAM &&
                w->conns[c->peer].state == CS_CLOSING)
                h2_ustream_detach(w, &w->conns[c->peer]);
            h1_try_finish(w, c);
            break;
        case EV_ADOPT:                  /* (a preface makes it CK_H2_CLIENT, adopted below) */
            break;
        case EV_RESUME:
            h1_recv_arm(w, c);
            break;
        case EV_CUT:
            if (client)
                h1_client_cut(w, c);
            break;
        case EV_KICK:
            break;
        }
        break;
    }
    case CK_H2_CLIENT:
        switch (ev) {
        case EV_CQE:
            h2_conn_cqe(w, c, op, cqe);
            break;
        case EV_EXPIRED:
            h2_conn_expired(w, c);
            break;
        case EV_FINISH:
            h2_conn_finish(w, c);
            break;
        case EV_ADOPT:
            h2_adopt(w, c);
            break;
        case EV_RESUME:
            h1_recv_arm(w, c);
            break;
        case EV_CUT:
            h2_conn_cut(w, c);
            break;
        case EV_KICK:
            h2_flush(w, c);
            break;
        }
        break;
    case CK_H2_STREAM:
        /* No socket: its completions are its connection's; its deadline
         * and its end are the transaction's, as for an HTTP/1.1 client. */
        switch (ev) {
        case EV_EXPIRED:
            h2_stream_expired(w, c);
            break;
        case EV_FINISH:
            h2_stream_finish(w, c);
            break;
        case EV_KICK:
            h2_stream_kick(w, c);
            break;
        default:
            break;
        }
        break;
    case CK_H2_UPSTREAM:
        /* An HTTP/2 connection to a server (protocol = "h2"). */
        switch (ev) {
        case EV_CQE:
            h2_up_cqe(w, c, op, cqe);
            break;
        case EV_EXPIRED:
            h2_up_expired(w, c);
            break;
        case EV_FINISH:
            h2_up_finish(w, c);
            break;
        case EV_RESUME:
            h1_recv_arm(w, c);
            break;
        case EV_CUT:
            h2_up_end(w, c);
            break;
        case EV_KICK:
            h2_flush(w, c);
            break;
        case EV_ADOPT:
            break;
        }
        break;
    case CK_H2_USTREAM:
        /* One stream on it: no socket; its deadline is the response's,
         * as for an HTTP/1.1 upstream connection. */
        switch (ev) {
        case EV_EXPIRED:
            h1_upstream_expired(w, c);
            break;
        case EV_FINISH:
            h2_ustream_finish(w, c);
            break;
        case EV_KICK:
            h2_ustream_kick(w, c);
            break;
        default:
            break;
        }
        break;
    default:
        break;
    }
}

/* What the core handed up (conn_hand_up) while a protocol ran: drained
 * after every completion, expiry and control step, so a connection is
 * finished in the same loop turn it became finishable. */
static void run_handed_up(struct worker *w)
{
    uint16_t why;
    struct conn *c;
    while ((c = conn_next_handed_up(w, &why))) {
        if ((why & C_UP_ADOPT) && c->state == CS_OPEN)
            to_protocol(w, c, EV_ADOPT, OP_NONE, NULL);
        if ((why & C_UP_KICK) && c->state == CS_OPEN)
            to_protocol(w, c, EV_KICK, OP_NONE, NULL);
        if ((why & C_UP_FINISH) && c->state == CS_CLOSING && !c->inflight)
            to_protocol(w, c, EV_FINISH, OP_NONE, NULL);
    }
}

static void dispatch(struct worker *w, struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    enum op op = (enum op)UD_OP(ud);
    uint32_t idx = UD_IDX(ud);
    switch (op) {
    case OP_NONE:
        return;
    case OP_FILES:
        w->c[UP_C_ERR_OTHER]++;         /* a file-table update failed (core/fixed.h) */
        return;
    case OP_TICK:
        w->tick_armed = false;
        return;
    case OP_ACCEPT:
        on_accept(w, idx, cqe);
        return;
    case OP_PROVIDE:
        if (cqe->res < 0)
            w->c[UP_C_ERR_OTHER]++;
        return;
    default:
        break;
    }
    struct conn *c = &w->conns[idx];
    bool more = cqe->flags & IORING_CQE_F_MORE;
    if (!more) {
        c->inflight--;
        c->ops &= (uint16_t)~(1u << op);
    }
    if (op == OP_TP_SEND)
        tp_on_cqe(w, c, op, cqe);      /* the transport's own, below every protocol */
    else
        to_protocol(w, c, EV_CQE, op, cqe);
    if (!more)
        conn_op_done(w, c, op, more);
}

/* Deadlines that passed, one by one from the wheel. */
static void run_expired(struct worker *w)
{
    struct conn *c;
    while ((c = wheel_expired(w))) {
        if (c->state < CS_CLOSING)
            to_protocol(w, c, EV_EXPIRED, OP_NONE, NULL);
        run_handed_up(w);
    }
}

/* At the drain deadline, whatever is still open is cut. */
static void cut_everything(struct worker *w)
{
    for (uint32_t i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (c->kind == CK_FREE || c->state >= CS_CLOSING || !(c->flags & C_SESSION))
            continue;
        w->c[UP_C_DRAIN_FORCED]++;
        to_protocol(w, c, EV_CUT, OP_NONE, NULL);
    }
    run_handed_up(w);
}

static bool control(struct worker *w)
{
    apply_config(w);
    if (!w->stopping && __atomic_load_n(&w->ctl->stop, __ATOMIC_ACQUIRE)) {
        w->stopping = true;
        w->drain_deadline_ms = w->now_ms + w->ctl->drain_timeout_ms;
        acceptors_stop(w);
        h1_stop_idle(w);
        h2_stop_all(w);
        run_handed_up(w);
        __atomic_store_n(&w->shm->state, UP_WS_DRAINING, __ATOMIC_RELEASE);
    }
    if (w->stopping) {
        if (w->now_ms >= w->drain_deadline_ms && w->clients)
            cut_everything(w);
        if (!w->clients && w->nfree == w->nconns && acceptors_idle(w))
            return false;
    } else {
        acceptors_check(w);
    }
    return true;
}

int up_worker_loop(struct up_worker *uw)
{
    struct worker *w = (struct worker *)uw;
    for (;;) {
        w->shm->heartbeat_ms = w->now_ms;   /* the clock of the last wake-up (or setup) */
        run_expired(w);
        if (!control(w))
            break;
        if (!w->tick_armed)
            arm_tick(w);
        bufpool_flush(w);
        sm_flush(w);
        resume_starved(w);
        resume_held(w);
        w->last_shared = h2_flush_late(w);
        int r = loop_submit_and_wait(w);
        if (r > 0)
            w->c[UP_C_URING_SQES] += (uint64_t)r;
        else if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME) {
            snprintf(w->err, sizeof w->err, "io_uring_enter failed: %s", strerror(-r));
            teardown(w);
            __atomic_store_n(&w->shm->state, UP_WS_FAILED, __ATOMIC_RELEASE);
            return r;
        }
        tick_clock(w);
        unsigned head, n = 0;
        struct io_uring_cqe *cqe;
        io_uring_for_each_cqe(&w->ring, head, cqe) {
            dispatch(w, cqe);
            run_handed_up(w);
            n++;
        }
        io_uring_cq_advance(&w->ring, n);
        w->c[UP_C_URING_CQES] += n;
        w->last_cqes = n;
    }
    teardown(w);
    __atomic_store_n(&w->shm->state, UP_WS_STOPPED, __ATOMIC_RELEASE);
    return 0;
}

void up_worker_free(struct up_worker *uw)
{
    struct worker *w = (struct worker *)uw;
    if (!w)
        return;
    sm_free(w);
    h2_worker_free(w);
    pol_worker_free(w);
    wstate_free(w);
    if (w->conns)
        munmap(w->conns, sizeof(struct conn) * w->nconns);
    if (w->txns)
        munmap(w->txns, sizeof(struct txn) * w->ntxns);
    if (w->logrecs)
        munmap(w->logrecs, sizeof(struct up_log_rec) * w->ntxns);
    free(w->free_ids);
    free(w->handup);
    free(w->late);
    free(w->scratch);
    free(w->txn_free);
    free(w->pool_head);
    free(w->pool_count);
    free(w->req_scratch);
    free(w->resp_scratch);
    free(w);
}

/* Once per loop turn: HTTP/2 clients whose new streams waited for room
 * go on, oldest first, while there is room (http2/h2_hold.c); each at
 * most once a turn (one held again goes to the back). */
static void resume_held(struct worker *w)
{
    for (uint32_t n = h2_held(w); n && h2_resume_one(w); n--)
        run_handed_up(w);
}

/* Once per loop turn: receives that stopped for want of a buffer start
 * again once buffers have come back. */
static void resume_starved(struct worker *w)
{
    /* Free buffers; and in a worker that takes buffers itself (TLS, which
     * starves for one off the stack that the kernel's share cannot give),
     * one on the stack: resuming before one is back would only spin. */
    while (w->starved_head != NIL && w->bufs.free > w->bufs.count / 16 &&
           (w->bufs.nstack || !w->bufs.reserve)) {
        struct conn *c = &w->conns[w->starved_head];
        w->starved_head = c->starved_next;
        c->starved_next = NIL;
        c->x.flags &= ~X_STARVED;
        if (c->state != CS_OPEN)
            continue;
        to_protocol(w, c, EV_RESUME, OP_NONE, NULL);
        run_handed_up(w);
    }
}
