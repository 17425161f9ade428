/*
 * L4 forwarding inside the kernel (forwarding = "sockmap", docs/l4.md).
 * Loaded once per proxy by src/uproxy/sockmap.py with bcc, which defines
 * before this file:
 *   SM_SLOTS    connection slots of every worker (nworkers x
 *               up_sm_slots_per_worker): the size of `st` and `socks`
 *   SM_SESS     SM_SLOTS plus what the workers may hold back from `sess`
 *               before removing it in one call (UP_SM_DEFER each)
 *
 * Both sockets of a session sit in `socks` (keyed by their socket cookie,
 * unique for the life of the kernel, so every worker uses the one map
 * without two ever writing the same key). The stream verdict below runs
 * on every skb that arrives at a socket in the map; it redirects the skb to
 * the session's other socket, unless user space still holds bytes of that
 * direction it has not written on, in which case it passes the skb to the
 * socket's own receive queue, where the worker reads it (in order).
 *
 * What a socket's session is lives in `st`, an array with one entry per
 * connection slot of every worker, which the workers map into their memory
 * (BPF_F_MMAPABLE): the worker writes its fields (cookie, peer, forwarded)
 * and reads the program's (passed, redirected, failed) with plain loads and
 * stores, no syscall; each field has one writer, so neither side's write can
 * overwrite the other's. `sess` maps a cookie to its slot: the one map entry
 * a worker writes per socket (both of a session in one batch call). The
 * kernel takes a socket out of `socks` when it closes (sock_map_close), so
 * the worker never deletes it there; `sess` entries of closed sockets are
 * removed in batches, and until then they are harmless: a cookie is never
 * reused, and the slot's cookie no longer matches.
 */
#include <uapi/linux/bpf.h>

/* 48 bytes: UP_SM_STATE_SIZE in native/api.h, struct sm_state in native/l4/sockmap.c. */
struct sm_state {
    u64 cookie;      /* worker: the socket this slot holds in a session; 0: none */
    u64 peer;        /* worker: the other socket's cookie, the redirect's key */
    u64 forwarded;   /* worker: bytes it took from this socket after it entered the map
                        and has written whole into the peer */
    u64 passed;      /* program: bytes given to the worker (this socket's own queue) */
    u64 redirected;  /* program: bytes sent on to the peer by the kernel */
    u64 failed;      /* program: redirects refused after the first (the peer left the map) */
};

BPF_SOCKHASH(socks, u64, SM_SLOTS);
/* Not preallocated: sized for every connection slot, it would otherwise
 * take that memory at start; entries come and go with the sessions. */
BPF_F_TABLE("hash", u64, u32, sess, SM_SESS, BPF_F_NO_PREALLOC);
BPF_F_TABLE("array", u32, struct sm_state, st, SM_SLOTS, BPF_F_MMAPABLE);
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
    u32 *slot = sess.lookup(&me);
    if (!slot)
        return SK_PASS;              /* not a session's socket (yet): the worker reads it */
    struct sm_state *s = st.lookup(slot);
    /* A slot whose cookie is not this socket's: its session ended (the
     * worker cleared it before the close that takes the socket out of the
     * map) or the slot serves another one now. Passed to the socket's
     * own queue, which its close discards: no count, no redirect. */
    if (!s || *(volatile u64 *)&s->cookie != me)
        return SK_PASS;
    /* Verdicts on one socket run one at a time (under its lock, in the
     * order the bytes arrived), so `passed` needs no atomic add; `forwarded`
     * only grows up to `passed`. While they differ, the worker holds bytes
     * of this direction that are not yet in the peer's send queue: a
     * redirect now could overtake them, so this skb goes the same way. */
    if (s->passed != *(volatile u64 *)&s->forwarded) {
        s->passed += skb->len;
        return SK_PASS;
    }
    u64 peer = s->peer;
    if (socks.sk_redirect_hash(skb, &peer, 0) != SK_PASS) {
        /* The peer is not in the map: the bytes are not lost, they go to
         * the worker like any passed bytes. Before this socket's first
         * redirect that is the hand-over (the instant between the two
         * inserts), not a failure; after it, the peer left the map while
         * the session was still moving bytes, which is counted. */
        s->passed += skb->len;
        if (s->redirected) {
            s->failed++;
            u32 k = 0;
            u64 *f = fails.lookup(&k);
            if (f)
                (*f)++;
        }
        return SK_PASS;
    }
    s->redirected += skb->len;
    return SK_PASS;
}
