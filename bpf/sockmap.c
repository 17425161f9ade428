/*
 * L4 forwarding inside the kernel (forwarding = "sockmap", docs/l4.md).
 * Loaded once per proxy by src/uproxy/sockmap.py with bcc, which defines
 * before this file:
 *   SM_ENTRIES   sockets the maps hold: 2 per client connection of every worker
 *
 * Both sockets of a session sit in `socks` (keyed by their socket cookie,
 * unique for the life of the kernel, so every worker uses the one map
 * without two ever writing the same key). The stream verdict below runs
 * on every skb that arrives at a socket in the map; it redirects the skb to
 * the session's other socket, unless user space still holds bytes of that
 * direction it has not written on, in which case it passes the skb to the
 * socket's own receive queue, where the worker reads it (in order).
 *
 * The worker (native/l4/sockmap.c) writes `ctl`; the program writes `cnt`
 * and `fails`. They are separate maps so that the worker's whole-value
 * updates never overwrite the program's counters.
 */
#include <uapi/linux/bpf.h>

struct sm_ctl {
    u64 peer;        /* the other socket's cookie: the redirect's key */
    u64 forwarded;   /* bytes the worker took from this socket after it entered the map
                        and has written whole into the peer */
};

struct sm_cnt {
    u64 passed;      /* bytes given to the worker (this socket's own queue) */
    u64 redirected;  /* bytes sent on to the peer by the kernel */
    u64 failed;      /* redirects refused after the first (the peer left the map): passed instead */
    u64 pad;
};

BPF_SOCKHASH(socks, u64, SM_ENTRIES);
/* Not preallocated: sized for every connection every worker may hold, they
 * would otherwise take that memory at start; entries come and go with the
 * sessions (the worker's updates, never the program's, create them). */
BPF_F_TABLE("hash", u64, struct sm_ctl, ctl, SM_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", u64, struct sm_cnt, cnt, SM_ENTRIES, BPF_F_NO_PREALLOC);
/* Redirects refused, proxy-wide: what `uproxy stats` shows without waiting
 * for the sessions to end (the per-socket count goes to the worker's
 * counters when its session ends). */
BPF_PERCPU_ARRAY(fails, u64, 1);

int sm_verdict(struct __sk_buff *skb)
{
    /* A FIN without data reaches the verdict as an empty skb. TCP has
     * already taken the FIN from it (the worker reads the EOF from the
     * socket), and redirected, an empty skb makes the kernel's send to the
     * peer return 0, which it reports as EPIPE on the peer and stops its
     * redirects: so it is dropped here, with nothing in it to lose. */
    if (skb->len == 0)
        return SK_DROP;
    u64 me = bpf_get_socket_cookie(skb);
    struct sm_ctl *c = ctl.lookup(&me);
    if (!c)
        return SK_PASS;              /* not a session's socket (yet): the worker reads it */
    struct sm_cnt zero = {};
    struct sm_cnt *n = cnt.lookup_or_try_init(&me, &zero);
    if (!n)
        return SK_PASS;
    /* Verdicts on one socket run one at a time (under its lock, in the
     * order the bytes arrived), so `passed` needs no atomic add; `forwarded`
     * only grows up to `passed`. While they differ, the worker holds bytes
     * of this direction that are not yet in the peer's send queue: a
     * redirect now could overtake them, so this skb goes the same way. */
    if (n->passed != c->forwarded) {
        n->passed += skb->len;
        return SK_PASS;
    }
    u64 peer = c->peer;
    if (socks.sk_redirect_hash(skb, &peer, 0) != SK_PASS) {
        /* The peer is not in the map: the bytes are not lost, they go to
         * the worker like any passed bytes. Before this socket's first
         * redirect that is the hand-over (the instant between the two
         * inserts), not a failure; after it, the peer left the map while
         * the session was still moving bytes, which is counted. */
        n->passed += skb->len;
        if (n->redirected) {
            n->failed++;
            u32 k = 0;
            u64 *f = fails.lookup(&k);
            if (f)
                (*f)++;
        }
        return SK_PASS;
    }
    n->redirected += skb->len;
    return SK_PASS;
}
