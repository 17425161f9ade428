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
 *   - the control entries go in before the sockets, so the program knows
 *     the session from the first skb it sees;
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
 * Every call here is a syscall on a map or a socket: a few per session,
 * none per byte.
 */
#include <errno.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/sockios.h>
#include "l4/l4.h"
#include "l4/sockmap.h"

/* The map values, as bpf/sockmap.c lays them out. */
struct sm_ctl {
    uint64_t peer;
    uint64_t forwarded;
};

struct sm_cnt {
    uint64_t passed;
    uint64_t redirected;
    uint64_t failed;
    uint64_t pad;
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

static int map_lookup(int fd, const void *key, void *val)
{
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_fd = (uint32_t)fd;
    a.key = (uint64_t)(uintptr_t)key;
    a.value = (uint64_t)(uintptr_t)val;
    return bpf_call(BPF_MAP_LOOKUP_ELEM, &a) < 0 ? -errno : 0;
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

int sm_init(struct worker *w)
{
    w->sm = NULL;
    if (w->o.sm_socks_fd < 0 || !(w->features & UP_F_SOCKMAP))
        return 0;
    /* Cold, per connection slot, touched only by sockmap sessions: mapped
     * like the slab, so slots never used cost nothing. */
    void *p = mmap(NULL, sizeof(struct sm_sock) * w->nconns, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -ENOMEM;
    w->sm = p;
    return 0;
}

void sm_free(struct worker *w)
{
    if (w->sm)
        munmap(w->sm, sizeof(struct sm_sock) * w->nconns);
    w->sm = NULL;
}

static struct sm_sock *sm_of(struct worker *w, const struct conn *c)
{
    return &w->sm[c - w->conns];
}

static void forget(struct worker *w, uint64_t ck)
{
    /* The socket first: once it is out of the map no verdict runs for it,
     * so none can find its control entry half gone. */
    map_delete(w->o.sm_socks_fd, &ck);
    map_delete(w->o.sm_ctl_fd, &ck);
    map_delete(w->o.sm_cnt_fd, &ck);
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

int sm_start(struct worker *w, struct conn *c, struct conn *u, uint32_t send_buffer)
{
    struct sm_sock *sc = sm_of(w, c), *su = sm_of(w, u);
    uint8_t tc[256], tu[256];
    /* What each socket's peer had acknowledged before the session's first
     * byte was written into it (its SYN, on some kernels): sm_flushed
     * counts from there. */
    if (!tcp_info_of(c->fd, tc) || !tcp_info_of(u->fd, tu))
        return -1;
    *sc = (struct sm_sock){ .cookie = cookie_of(c->fd), .active_ms = w->now_ms,
                            .base = ti_u64(tc, TI_BYTES_ACKED) };
    *su = (struct sm_sock){ .cookie = cookie_of(u->fd), .active_ms = w->now_ms,
                            .base = ti_u64(tu, TI_BYTES_ACKED) };
    if (!sc->cookie || !su->cookie)
        return -1;
    if (send_buffer) {
        set_send_buffer(c->fd, send_buffer);
        set_send_buffer(u->fd, send_buffer);
    }
    struct sm_ctl kc = { .peer = su->cookie }, ku = { .peer = sc->cookie };
    struct sm_cnt zero = { 0 };
    uint32_t cfd = (uint32_t)c->fd, ufd = (uint32_t)u->fd;
    /* Control and counter entries first: the program passes whatever
     * reaches a socket it has no entries for, and it finds them from the
     * first skb on. */
    if (map_update(w->o.sm_ctl_fd, &sc->cookie, &kc, BPF_ANY) ||
        map_update(w->o.sm_ctl_fd, &su->cookie, &ku, BPF_ANY) ||
        map_update(w->o.sm_cnt_fd, &sc->cookie, &zero, BPF_ANY) ||
        map_update(w->o.sm_cnt_fd, &su->cookie, &zero, BPF_ANY))
        goto undo;
    if (map_update(w->o.sm_socks_fd, &su->cookie, &ufd, BPF_NOEXIST))
        goto undo;
    if (map_update(w->o.sm_socks_fd, &sc->cookie, &cfd, BPF_NOEXIST))
        goto undo;
    c->flags |= C_SOCKMAP;
    u->flags |= C_SOCKMAP;
    return 0;
undo:
    forget(w, sc->cookie);
    forget(w, su->cookie);
    return -1;
}

/* Bytes that arrived before a socket entered the map wait in its receive
 * queue, where no verdict runs until the next arrival (a client that sent
 * its request and now waits for the answer would wait for ever). A
 * receive on a socket in the map runs the verdict on that queue first
 * (tcp_bpf_recvmsg_parser), so a peek sends them on; what it then sees is
 * what the program passed to the worker (a redirect refused in the instant
 * between the two inserts), or the FIN. True when the worker has something
 * to read now. */
bool sm_kick(struct worker *w, struct conn *c)
{
    (void)w;
    char b;
    ssize_t r = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return !(r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
}

void sm_forwarded(struct worker *w, struct conn *src, uint32_t n)
{
    struct sm_sock *s = sm_of(w, src);
    s->forwarded += n;
    struct sm_ctl k = { .peer = sm_of(w, &w->conns[src->peer])->cookie,
                        .forwarded = s->forwarded };
    /* Only after the send completed: the peer's socket holds these bytes,
     * so a redirect the program makes once it sees them is behind them. */
    map_update(w->o.sm_ctl_fd, &s->cookie, &k, BPF_EXIST);
}

/* Has the peer's socket taken every byte the kernel redirected from src?
 * Bytes written into the peer since the hand-over (nothing was written
 * before it) = acknowledged since then + still in its send queue
 * (SIOCOUTQ: write_seq - snd_una). Read in that order, an ACK between the
 * two calls can only make the sum smaller than the truth, so the FIN is
 * never passed on early, only looked at again. */
bool sm_flushed(struct worker *w, struct conn *src)
{
    struct sm_sock *s = sm_of(w, src);
    const struct conn *dst = &w->conns[src->peer];
    struct sm_cnt n;
    uint8_t ti[256];
    int outq = 0;
    if (map_lookup(w->o.sm_cnt_fd, &s->cookie, &n) < 0 || !tcp_info_of(dst->fd, ti) ||
        ioctl(dst->fd, SIOCOUTQ, &outq) < 0)
        return true;              /* nothing to wait for that can be known */
    uint64_t written = ti_u64(ti, TI_BYTES_ACKED) - sm_of(w, dst)->base + (uint64_t)outq;
    return written >= n.redirected + s->forwarded;
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
 * and c leaves the maps (before its close, so no verdict runs on a socket
 * that is going). */
void sm_end(struct worker *w, struct conn *c, bool from_client)
{
    if (!(c->flags & C_SOCKMAP))
        return;
    struct sm_sock *s = sm_of(w, c);
    struct sm_cnt n;
    c->flags &= (uint16_t)~C_SOCKMAP;
    if (map_lookup(w->o.sm_cnt_fd, &s->cookie, &n) == 0) {
        cnt(w, from_client ? UP_C_BYTES_FROM_CLIENTS : UP_C_BYTES_FROM_UPSTREAMS, (int64_t)n.redirected);
        cnt(w, from_client ? UP_C_BYTES_TO_UPSTREAMS : UP_C_BYTES_TO_CLIENTS, (int64_t)n.redirected);
        cnt(w, UP_C_SOCKMAP_REDIRECT_FAILS, (int64_t)n.failed);
    }
    forget(w, s->cookie);
}
