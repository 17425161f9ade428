/*
 * forwarding = "sockmap": a session's bytes moved by the kernel. Both
 * sockets go into the proxy's sockhash, whose stream-verdict program
 * (bpf/sockmap.c) sends every arriving skb on to the other socket; the
 * worker keeps only a receive armed on each socket, which completes with
 * what the program passed to it (rare: see below), the FIN or the reset.
 *
 * The hand-over (why no byte is lost or reordered, in full: docs/l4.md):
 *   - at the upstream's connect the worker has read nothing from either
 *     socket (l4.c hands over only such sessions), so every byte of the
 *     session is still in a kernel queue;
 *   - the session's state (its slots in `st`, their `sess` entries) goes
 *     in before the sockets, so the program knows the session from the
 *     first skb it sees;
 *   - bytes that reached a socket before it entered the map wait in its
 *     receive queue; a recv() on a socket in the map runs the verdict on
 *     them first (tcp_bpf_recvmsg_parser, Linux 6.4+), so one peek per
 *     socket sends them on, in order, ahead of anything later;
 *   - whatever the program passes to the worker instead (a redirect the
 *     map refused) stops the redirects of that direction until the worker
 *     has written it into the peer (`forwarded` catches up with `passed`),
 *     so nothing redirected can overtake it;
 *   - a FIN is passed on only once the peer's socket holds every byte
 *     redirected to it (sm_flushed), since the kernel sends redirected
 *     bytes from a work queue, after the verdict.
 *
 * What it costs the worker per session (counted in docs/l4.md, "Short
 * sessions"): the socket reads and one map update at the start, the
 * sockets' two inserts, a TCP_INFO (and at times a SIOCOUTQ) per FIN;
 * nothing at the end but a share of one batch delete (the peeks ride on
 * the ring). The state
 * the program and the worker share is a mapped array, read and written
 * without a syscall; none per byte.
 */
#include <errno.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/sockios.h>
#include "l4/l4.h"
#include "l4/sockmap.h"

/* One connection slot's entry in the program's `st` array, as
 * bpf/sockmap.c lays it out. Each field has one writer: the worker the
 * first three, the program the others; both read them with plain loads
 * (the worker through its mapping of the array), so no update of one side
 * can overwrite what the other wrote. */
struct sm_state {
    uint64_t cookie;          /* the socket in a session on this slot; 0: none */
    uint64_t peer;            /* the other socket's cookie */
    uint64_t forwarded;       /* bytes the worker took from this socket since it entered
                                 the map and has written whole into the peer */
    uint64_t passed;          /* the program's: bytes given to the worker */
    uint64_t redirected;      /* the program's: bytes sent on to the peer by the kernel */
    uint64_t failed;          /* the program's: redirects refused after the first */
};
_Static_assert(sizeof(struct sm_state) == UP_SM_STATE_SIZE, "api.h's UP_SM_STATE_SIZE");

/* How long closed sockets' `sess` entries may wait to be removed together
 * when fewer than UP_SM_DEFER have gathered. */
#define SM_DEFER_MS 1000

/* The kernel's ENOTSUPP (not in the user headers): a map without batch
 * operations. */
#define SM_ENOTSUPP 524

struct sm_worker {
    struct sm_sock *socks;    /* per connection slot (cold) */
    struct sm_state *st;      /* this worker's part of `st`: one entry per connection slot */
    size_t st_len;
    uint32_t slot0;           /* the index in `st` of this worker's first slot */
    uint32_t ngone;           /* closed sockets whose `sess` entries wait in gone[] */
    uint64_t gone_since_ms;   /* when the first of them was put there */
    bool no_batch;            /* the kernel has no batch operations on `sess`: one call per entry */
    uint8_t peek[1];          /* where sm_kick's peeks put their byte (never read) */
    uint64_t gone[UP_SM_DEFER];
};

/* The part of struct tcp_info read here, at its offsets in linux/tcp.h (ABI:
 * fields are only ever appended); glibc's copy of the struct stops before
 * bytes_sent, and linux/tcp.h clashes with netinet/tcp.h. */
#define TI_BYTES_ACKED    120
#define TI_BYTES_RECEIVED 128
#define TI_NEED           136

static long bpf_call(int cmd, union bpf_attr *a)
{
    return syscall(__NR_bpf, cmd, a, sizeof *a);
}

static int map_update(int fd, const void *key, const void *val, uint64_t flags)
{
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_fd = (uint32_t)fd;
    a.key = (uint64_t)(uintptr_t)key;
    a.value = (uint64_t)(uintptr_t)val;
    a.flags = flags;
    return bpf_call(BPF_MAP_UPDATE_ELEM, &a) < 0 ? -errno : 0;
}

static void map_delete(int fd, const void *key)
{
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_fd = (uint32_t)fd;
    a.key = (uint64_t)(uintptr_t)key;
    bpf_call(BPF_MAP_DELETE_ELEM, &a);
}

static uint64_t cookie_of(int fd)
{
    uint64_t ck = 0;
    socklen_t len = sizeof ck;
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &ck, &len) < 0)
        return 0;
    return ck;
}

static uint64_t ti_u64(const uint8_t *ti, unsigned off)
{
    uint64_t v;
    memcpy(&v, ti + off, sizeof v);
    return v;
}

/* TCP_INFO of fd into ti; false when the kernel's is too short. */
static bool tcp_info_of(int fd, uint8_t ti[256])
{
    socklen_t len = 256;
    return getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &len) == 0 && len >= TI_NEED;
}

/* The batch form of a map operation on n keys (and values): 0, or -errno
 * with *done set to how many the kernel completed before the failure. */
static int map_batch(int cmd, int fd, const void *keys, const void *vals, uint32_t n,
                     uint32_t *done)
{
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.batch.map_fd = (uint32_t)fd;
    a.batch.keys = (uint64_t)(uintptr_t)keys;
    a.batch.values = (uint64_t)(uintptr_t)vals;
    a.batch.count = n;
    a.batch.elem_flags = BPF_ANY;
    int r = bpf_call(cmd, &a) < 0 ? -errno : 0;
    *done = r ? a.batch.count : n;
    return r;
}

/* A batch refused as a whole because the kernel has none for the map (or
 * no such command): use one call per entry from then on. */
static bool batch_missing(int r, uint32_t done)
{
    return done == 0 && (r == -SM_ENOTSUPP || r == -EOPNOTSUPP || r == -EINVAL);
}

uint32_t up_sm_slots_per_worker(uint32_t max_conns)
{
    long page = sysconf(_SC_PAGESIZE);
    uint32_t unit = 1;
    if (page <= 0)
        page = 4096;
    while ((unit * (uint64_t)UP_SM_STATE_SIZE) % (uint64_t)page)
        unit++;
    uint32_t n = worker_nconns(max_conns);
    return (n + unit - 1) / unit * unit;
}

int sm_init(struct worker *w)
{
    w->sm = NULL;
    if (w->o.sm_socks_fd < 0 || !(w->features & UP_F_SOCKMAP))
        return 0;
    struct sm_worker *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    uint32_t per = up_sm_slots_per_worker(w->o.max_conns);
    m->slot0 = w->o.index * per;
    m->st_len = (size_t)per * UP_SM_STATE_SIZE;
    /* Cold, per connection slot, touched only by sockmap sessions: mapped
     * like the slab, so slots never used cost nothing. */
    void *p = mmap(NULL, sizeof(struct sm_sock) * w->nconns, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    /* This worker's part of the program's array, shared with the kernel. */
    void *st = mmap(NULL, m->st_len, PROT_READ | PROT_WRITE, MAP_SHARED, w->o.sm_st_fd,
                    (off_t)m->slot0 * UP_SM_STATE_SIZE);
    if (p == MAP_FAILED || st == MAP_FAILED) {
        int e = errno;
        if (p != MAP_FAILED)
            munmap(p, sizeof(struct sm_sock) * w->nconns);
        if (st != MAP_FAILED)
            munmap(st, m->st_len);
        free(m);
        return -e;
    }
    m->socks = p;
    m->st = st;
    w->sm = m;
    return 0;
}

static struct sm_sock *sm_of(struct worker *w, const struct conn *c)
{
    return &w->sm->socks[c - w->conns];
}

static struct sm_state *state_of(struct worker *w, const struct conn *c)
{
    return &w->sm->st[c - w->conns];
}

static uint64_t load(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* The closed sockets' `sess` entries, in one call (a few when an entry is
 * missing: the kernel stops at it). Their sockets are gone, so no verdict
 * looks them up; they only take room in the map meanwhile. */
static void sess_drop(struct worker *w)
{
    struct sm_worker *m = w->sm;
    uint32_t i = 0;
    while (i < m->ngone) {
        if (m->no_batch) {
            map_delete(w->o.sm_sess_fd, &m->gone[i++]);
            continue;
        }
        uint32_t done;
        int r = map_batch(BPF_MAP_DELETE_BATCH, w->o.sm_sess_fd, &m->gone[i], NULL,
                          m->ngone - i, &done);
        if (!r)
            break;
        if (batch_missing(r, done))
            m->no_batch = true;
        else
            i += done + 1;    /* past the entry it stopped at */
    }
    m->ngone = 0;
}

void sm_flush(struct worker *w)
{
    struct sm_worker *m = w->sm;
    if (m && m->ngone && w->now_ms - m->gone_since_ms >= SM_DEFER_MS)
        sess_drop(w);
}

void sm_free(struct worker *w)
{
    struct sm_worker *m = w->sm;
    if (!m)
        return;
    sess_drop(w);
    munmap(m->socks, sizeof(struct sm_sock) * w->nconns);
    munmap(m->st, m->st_len);
    free(m);
    w->sm = NULL;
}

/* Both sockets' `sess` entries (cookie -> slot), in one call. */
static int sess_put(struct worker *w, const uint64_t keys[2], const uint32_t slots[2])
{
    struct sm_worker *m = w->sm;
    if (!m->no_batch) {
        uint32_t done;
        int r = map_batch(BPF_MAP_UPDATE_BATCH, w->o.sm_sess_fd, keys, slots, 2, &done);
        if (!batch_missing(r, done))
            return r;
        m->no_batch = true;
    }
    for (int i = 0; i < 2; i++) {
        int r = map_update(w->o.sm_sess_fd, &keys[i], &slots[i], BPF_ANY);
        if (r)
            return r;
    }
    return 0;
}

/* A slot enters a session: everything but the cookie first, the cookie last
 * (the program trusts the entry only when it finds its own cookie there). */
static void state_begin(struct sm_state *x, uint64_t me, uint64_t peer)
{
    x->peer = peer;
    __atomic_store_n(&x->forwarded, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&x->passed, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&x->redirected, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&x->failed, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&x->cookie, me, __ATOMIC_RELEASE);
}

/* The kernel sends redirected bytes from the psock's work item, and when
 * the socket's send buffer is full it does not wait for room: it retries
 * one jiffy later (sk_psock_backlog: schedule_delayed_work(.., 1)), and
 * the wake-up that room would give is lost while that timer is pending.
 * Each full buffer therefore leaves the direction idle for 1-2 jiffies
 * (4-8 ms at HZ=250) plus the work item's scheduling delay, so what one
 * stream moves is about one send buffer per retry (docs/l4.md, "One
 * stream, profiled"): a buffer larger than the autotuned one (tcp_wmem's
 * 4 MiB at most) raises it. SO_SNDBUF halves what it is given back and caps
 * it at net.core.wmem_max; SO_SNDBUFFORCE (CAP_NET_ADMIN, which loading
 * the program needed) does not cap, so it is tried first. */
static void set_send_buffer(int fd, uint32_t bytes)
{
    int half = (int)(bytes / 2);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &half, sizeof half) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &half, sizeof half);
}

int sm_start(struct worker *w, struct conn *c, struct conn *u, uint32_t send_buffer,
             bool wrote_u)
{
    struct sm_sock *sc = sm_of(w, c), *su = sm_of(w, u);
    struct sm_state *xc = state_of(w, c), *xu = state_of(w, u);
    uint8_t tc[256], tu[256];
    int outq = 0;
    /* Acknowledged plus still queued: what each socket held before the
     * session's first byte was written into it (its SYN, on some kernels,
     * and a PROXY header the worker wrote, acknowledged or not):
     * sm_flushed counts from there. Only a socket written into before has
     * a send queue to read. */
    if (!tcp_info_of(c->fd, tc) || !tcp_info_of(u->fd, tu) ||
        (wrote_u && ioctl(u->fd, SIOCOUTQ, &outq) < 0))
        return -1;
    *sc = (struct sm_sock){ .cookie = cookie_of(c->fd), .active_ms = w->now_ms,
                            .base = ti_u64(tc, TI_BYTES_ACKED) };
    *su = (struct sm_sock){ .cookie = cookie_of(u->fd), .active_ms = w->now_ms,
                            .base = ti_u64(tu, TI_BYTES_ACKED) + (uint64_t)outq };
    if (!sc->cookie || !su->cookie)
        return -1;
    if (send_buffer) {
        set_send_buffer(c->fd, send_buffer);
        set_send_buffer(u->fd, send_buffer);
    }
    uint32_t cfd = (uint32_t)c->fd, ufd = (uint32_t)u->fd;
    const uint64_t keys[2] = { sc->cookie, su->cookie };
    const uint32_t slots[2] = { w->sm->slot0 + (uint32_t)(c - w->conns),
                                w->sm->slot0 + (uint32_t)(u - w->conns) };
    /* The slots and their `sess` entries first: the program passes whatever
     * reaches a socket it has no session for, and it finds the session from
     * the first skb on. */
    state_begin(xc, sc->cookie, su->cookie);
    state_begin(xu, su->cookie, sc->cookie);
    if (sess_put(w, keys, slots))
        goto undo;
    if (map_update(w->o.sm_socks_fd, &su->cookie, &ufd, BPF_NOEXIST))
        goto undo;
    if (map_update(w->o.sm_socks_fd, &sc->cookie, &cfd, BPF_NOEXIST)) {
        /* The session splices: its upstream must not stay in the map. */
        map_delete(w->o.sm_socks_fd, &su->cookie);
        goto undo;
    }
    c->flags |= C_SOCKMAP;
    u->flags |= C_SOCKMAP;
    return 0;
undo:
    __atomic_store_n(&xc->cookie, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&xu->cookie, 0, __ATOMIC_RELEASE);
    map_delete(w->o.sm_sess_fd, &keys[0]);
    map_delete(w->o.sm_sess_fd, &keys[1]);
    return -1;
}

/* Bytes that arrived before a socket entered the map wait in its receive
 * queue, where no verdict runs until the next arrival (a client that sent
 * its request and now waits for the answer would wait for ever). A
 * receive on a socket in the map runs the verdict on that queue first
 * (tcp_bpf_recvmsg_parser), so a peek sends them on; what it then sees is
 * what the program passed to the worker (a redirect refused in the instant
 * between the two inserts), or the FIN. The peek goes through the ring
 * (no syscall of its own): it runs at the loop's next submit, after the
 * inserts above, which is all its order needs; MSG_DONTWAIT makes it
 * complete with -EAGAIN at once when there is nothing to read, instead of
 * waiting (a wait would wake it for every redirected skb). */
void sm_kick(struct worker *w, struct conn *c)
{
    struct io_uring_sqe *s = sqe_for(w, c, OP_PEEK);
    io_uring_prep_recv(s, c->fd, w->sm->peek, sizeof w->sm->peek, MSG_PEEK | MSG_DONTWAIT);
    count_op(w, s);
}

/* Only after the send completed: the peer's socket holds these bytes, so a
 * redirect the program makes once it sees the new count is behind them. A
 * store into the mapped array, no syscall. */
void sm_forwarded(struct worker *w, struct conn *src, uint32_t n)
{
    struct sm_state *x = state_of(w, src);
    __atomic_store_n(&x->forwarded, x->forwarded + n, __ATOMIC_RELEASE);
}

/* Has the peer's socket taken every byte the kernel redirected from src?
 * Bytes written into the peer since the hand-over (nothing was written
 * before it) = acknowledged since then + still in its send queue
 * (SIOCOUTQ: write_seq - snd_una). Read in that order, an ACK between the
 * two calls can only make the sum smaller than the truth, so the FIN is
 * never passed on early, only looked at again. The acknowledged bytes
 * alone are already a lower bound: when they suffice, the queue is not
 * read; when nothing went from src to the peer, neither is. */
bool sm_flushed(struct worker *w, struct conn *src)
{
    const struct sm_state *x = state_of(w, src);
    const struct conn *dst = &w->conns[src->peer];
    uint64_t need = load(&x->redirected) + x->forwarded;
    uint8_t ti[256];
    int outq = 0;
    if (!need)
        return true;
    if (!tcp_info_of(dst->fd, ti))
        return true;              /* nothing to wait for that can be known */
    uint64_t acked = ti_u64(ti, TI_BYTES_ACKED) - sm_of(w, dst)->base;
    if (acked >= need)
        return true;
    if (ioctl(dst->fd, SIOCOUTQ, &outq) < 0)
        return true;
    return acked + (uint64_t)outq >= need;
}

/* Did bytes move since the last call: arrive at either socket, or get
 * acknowledged by either end (a slow reader taking what the kernel queued
 * long ago is activity too)? The session's idle clock: the worker sees none
 * of the bytes the kernel moves. */
bool sm_moved(struct worker *w, struct conn *c)
{
    struct sm_sock *s = sm_of(w, c);
    uint8_t a[256], b[256];
    if (!tcp_info_of(c->fd, a) || !tcp_info_of(w->conns[c->peer].fd, b))
        return true;
    uint64_t seen = ti_u64(a, TI_BYTES_RECEIVED) + ti_u64(b, TI_BYTES_RECEIVED) +
                    ti_u64(a, TI_BYTES_ACKED) + ti_u64(b, TI_BYTES_ACKED);
    if (seen == s->seen)
        return false;
    s->seen = seen;
    s->active_ms = w->now_ms;
    return true;
}

uint64_t sm_active_ms(struct worker *w, struct conn *c)
{
    return sm_of(w, c)->active_ms;
}

/* c's session is over: what the kernel moved from c goes to the counters,
 * and its slot leaves the session, so that from now on the program passes
 * what still reaches c to c's own queue (which its close discards) without
 * counting it. c stays in the sockhash until its close, which takes it out
 * (sock_map_close, on every kernel with sockmap): no delete here. Its
 * `sess` entry is removed later, with others in one call (sm_flush). */
void sm_end(struct worker *w, struct conn *c, bool from_client)
{
    if (!(c->flags & C_SOCKMAP))
        return;
    struct sm_worker *m = w->sm;
    struct sm_sock *s = sm_of(w, c);
    struct sm_state *x = state_of(w, c);
    c->flags &= (uint16_t)~C_SOCKMAP;
    uint64_t redirected = load(&x->redirected), failed = load(&x->failed);
    __atomic_store_n(&x->cookie, 0, __ATOMIC_RELEASE);
    cnt(w, from_client ? UP_C_BYTES_FROM_CLIENTS : UP_C_BYTES_FROM_UPSTREAMS, (int64_t)redirected);
    cnt(w, from_client ? UP_C_BYTES_TO_UPSTREAMS : UP_C_BYTES_TO_CLIENTS, (int64_t)redirected);
    cnt(w, UP_C_SOCKMAP_REDIRECT_FAILS, (int64_t)failed);
    if (!m->ngone)
        m->gone_since_ms = w->now_ms;
    m->gone[m->ngone++] = s->cookie;
    if (m->ngone == UP_SM_DEFER)
        sess_drop(w);
}
