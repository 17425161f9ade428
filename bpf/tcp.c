/*
 * TCP of the proxy's connections: client connections established on its
 * listening ports, upstream connect latency (SYN sent by the proxy process
 * -> ESTABLISHED), connection lifetimes (time in ESTABLISHED), smoothed RTT
 * (tcp:tcp_probe, per received segment) and retransmits
 * (tcp:tcp_retransmit_skb). Tracepoint sock:inet_sock_set_state.
 *
 * Filters: client side by the proxy's listening ports (lports); upstream
 * side by sockets the proxy's process put in SYN_SENT towards an upstream
 * port (uports), remembered by socket address.
 */
BPF_HASH(lports, u16, u8, 64);
BPF_HASH(uports, u16, u8, 1024);

#define SIDE_CLIENT 1
#define SIDE_UPSTREAM 2
struct tsock {
    u64 ts;
    u32 side;
    u32 established;
};
BPF_TABLE("lru_hash", u64, struct tsock, tsocks, 65536);

#define S_ESTABLISHED 1
#define S_SYN_SENT 2
#define S_CLOSE 7

int tcp_state(struct tp_inet_sock_set_state *a)
{
    if (a->protocol != 6)
        return 0;
    int z = 0;
    struct gstat *g = gstats.lookup(&z);
    if (!g)
        return 0;
    u64 sk = a->skaddr;
    int ns = a->newstate, os = a->oldstate;
    u16 sport = a->sport, dport = a->dport;
    u64 now = bpf_ktime_get_ns();
    if (ns == S_SYN_SENT) {
        if (!uports.lookup(&dport) || (bpf_get_current_pid_tgid() >> 32) != TGID)
            return 0;
        struct tsock t = {.ts = now, .side = SIDE_UPSTREAM};
        tsocks.update(&sk, &t);
        ADD(g->connects, 1);
        return 0;
    }
    if (ns == S_ESTABLISHED) {
        if (lports.lookup(&sport)) {
            struct tsock t = {.ts = now, .side = SIDE_CLIENT, .established = 1};
            tsocks.update(&sk, &t);
            ADD(g->est_client, 1);
            return 0;
        }
        struct tsock *t = tsocks.lookup(&sk);
        if (t && t->side == SIDE_UPSTREAM && !t->established) {
            hist_inc(g->hist_connect, (now - t->ts) / 1000);
            ADD(g->est_upstream, 1);
            t->ts = now;
            t->established = 1;
        }
        return 0;
    }
    if (os == S_ESTABLISHED || ns == S_CLOSE) {
        struct tsock *t = tsocks.lookup(&sk);
        if (!t)
            return 0;
        if (t->established) {
            u64 us = (now - t->ts) / 1000;
            if (t->side == SIDE_CLIENT) {
                hist_inc(g->hist_life_client, us);
                ADD(g->ended_client, 1);
            } else {
                hist_inc(g->hist_life_upstream, us);
                ADD(g->ended_upstream, 1);
            }
        } else if (ns == S_CLOSE) {
            ADD(g->connect_failed, 1);
        }
        tsocks.delete(&sk);
    }
    return 0;
}

static __always_inline int side_of(u16 sport, u16 dport, u64 sk)
{
    if (lports.lookup(&sport))
        return SIDE_CLIENT;
    struct tsock *t = tsocks.lookup(&sk);
    if (t)
        return t->side;
    return 0;
}

int tcp_rtt(struct tp_tcp_probe *a)
{
#ifdef HAVE_tcp_tcp_probe_skaddr
    u64 sk = a->skaddr;
#else
    u64 sk = 0;
#endif
    int side = side_of(a->sport, a->dport, sk);
    if (!side)
        return 0;
    int z = 0;
    struct gstat *g = gstats.lookup(&z);
    if (!g)
        return 0;
    u64 v = a->srtt;
    if (side == SIDE_CLIENT) {
        ADD(g->rtt_client, 1);
        hist_inc(g->hist_rtt_client, v);
    } else {
        ADD(g->rtt_upstream, 1);
        hist_inc(g->hist_rtt_upstream, v);
    }
    return 0;
}

int tcp_retrans(struct tp_tcp_retransmit_skb *a)
{
    int side = side_of(a->sport, a->dport, a->skaddr);
    if (!side)
        return 0;
    int z = 0;
    struct gstat *g = gstats.lookup(&z);
    if (!g)
        return 0;
    if (side == SIDE_CLIENT)
        ADD(g->retrans_client, 1);
    else
        ADD(g->retrans_upstream, 1);
    return 0;
}
