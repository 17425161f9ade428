/*
 * TCP of the proxy's connections: client connections established on its
 * listening ports, upstream connect latency (SYN sent by the proxy process
 * -> ESTABLISHED), connection lifetimes (time in ESTABLISHED), smoothed RTT
 * (tcp_probe, sampled) and retransmits
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

/* tcp_probe fires for every segment received on an established socket:
 * raw tracepoint (sk, skb), one segment in TCP_SAMPLE looked at, the port
 * and srtt_us read at their BTF offsets (SK_NUM_OFF, SK_DPORT_OFF,
 * TP_SRTT_OFF). */
#ifndef TCP_SAMPLE
#define TCP_SAMPLE 8
#endif
int tcp_rtt(struct bpf_raw_tracepoint_args *c)
{
    if (detached())
        return 0;
    int z = 0;
    if (TCP_SAMPLE > 1 && bpf_get_prandom_u32() % TCP_SAMPLE)
        return 0;
    const char *sk = (const char *)c->args[0];
    u16 sport = 0, dport_be = 0;
    bpf_probe_read_kernel(&sport, sizeof(sport), sk + SK_NUM_OFF);
    int side = 0;
    if (lports.lookup(&sport)) {
        side = SIDE_CLIENT;
    } else {
        bpf_probe_read_kernel(&dport_be, sizeof(dport_be), sk + SK_DPORT_OFF);
        u16 dport = (dport_be >> 8) | (dport_be << 8);
        if (!uports.lookup(&dport))
            return 0;
        u64 key = (u64)sk;
        struct tsock *t = tsocks.lookup(&key);
        if (!t || t->side != SIDE_UPSTREAM)
            return 0;
        side = SIDE_UPSTREAM;
    }
    struct gstat *g = gstats.lookup(&z);
    if (!g)
        return 0;
    u32 srtt8 = 0;
    bpf_probe_read_kernel(&srtt8, sizeof(srtt8), sk + TP_SRTT_OFF);
    u64 v = srtt8 >> 3;                 /* srtt_us is kept << 3 */
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
