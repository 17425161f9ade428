/*
 * The L4 protocol: a TCP session between a client and an upstream
 * connection, forwarded by splice or through buffers (l4.c).
 */
#ifndef UPROXY_L4_H
#define UPROXY_L4_H
#include "core/worker.h"

void l4_start(struct worker *w, const struct up_listener *l, int fd);
void l4_on_cqe(struct worker *w, struct conn *c, enum op op, struct io_uring_cqe *cqe);
void l4_on_idle(struct worker *w, struct conn *c);
void l4_try_finish(struct worker *w, struct conn *c);
void l4_abort(struct worker *w, struct conn *c);
void l4_adopt(struct worker *w, struct conn *c);
void l4_recv_arm(struct worker *w, struct conn *c);

/* SNI passthrough (sni.c): on a tcp listener with routes, the client's
 * first phase (kind CK_L4_HELLO) reads its ClientHello and picks the
 * session's cluster by the server name; then l4.c dials it (l4_dial). */
void sni_start(struct worker *w, struct conn *c, const struct up_listener *l);
void sni_on_cqe(struct worker *w, struct conn *c, enum op op, struct io_uring_cqe *cqe);
void sni_expired(struct worker *w, struct conn *c);
void sni_recv_arm(struct worker *w, struct conn *c);
/* A tcp listener with proxy_protocol: does this client's peer (trusted_proxies,
 * or anyone) send a PROXY header first? Its address is noted either way. */
bool sni_proxy_expected(struct worker *w, struct conn *c, const struct up_listener *l);
void l4_dial(struct worker *w, struct conn *c);

#endif
