/*
 * sizeof of every per-worker slab struct of the C core, and how many of
 * each one client connection may take, printed as JSON lines for
 * bench/hotcold.py. Built against native/ as it is (a sizeof is a fact of
 * the tree, not of a run).
 */
#include <stdio.h>
#include <stddef.h>
#include "core/worker.h"
#include "http/h1.h"
#include "http2/h2.h"
#include "l4/sockmap.h"
#include "transport/tls.h"

#define ROW(type, per_client, note) \
    printf("{\"struct\": \"%s\", \"size\": %zu, \"align\": %zu, \"per_client\": %s, \"note\": \"%s\"}\n", \
           #type, sizeof(type), _Alignof(type), per_client, note)

int main(void)
{
    ROW(struct conn, "2", "w->conns: a client and its upstream side (nconns = 2 * max_conns + 64)");
#ifdef HAVE_CONN_ADDR
    ROW(struct conn_addr, "0", "a client's address (inside struct conn's client part)");
#endif
    ROW(struct txn, "1", "w->txns: one per client connection at most");
    ROW(struct out, "0", "a send round (inside struct txn, twice)");
    ROW(struct up_log_rec, "0", "w->logrecs: beside w->txns, touched only where a listener logs");
    ROW(struct h2_slot, "2", "http2: per connection slot, beside w->conns");
    ROW(struct sm_sock, "2", "l4 sockmap: per connection slot, sockmap sessions only");
    ROW(struct tls_conn, "2", "transport: per connection slot, TLS connections only");
    ROW(struct tls_peer, "1", "transport: per connection slot, client certificates only");
    return 0;
}
