/*
 * The transport seam: how a connection's bytes cross its socket. Each
 * connection has a transport kind (c->tp), and every function here is a
 * switch on it, no function pointers: plain sockets today; TLS adds a case
 * here (and its file beside plain.c) without touching HTTP's semantics.
 * The protocols above read and write only through these calls.
 */
#ifndef UPROXY_TRANSPORT_H
#define UPROXY_TRANSPORT_H
#include <sys/socket.h>
#include "core/worker.h"

enum tp_kind {
    TP_PLAIN,         /* the socket's bytes are the protocol's bytes */
};

/* Arm a receive into the worker's provided buffers: at most `max` bytes
 * (0: a buffer's worth, multishot where the kernel has it). The completion
 * comes to the connection's protocol as OP_RECV, which hands it to
 * tp_received(). */
void tp_recv_arm(struct worker *w, struct conn *c, uint32_t max);
/* What an OP_RECV completion brought the protocol: the byte count (> 0),
 * 0 at end of stream, or -errno; *bid is the buffer holding them (the
 * protocol's to queue or give back), NIL when the completion carried none. */
int tp_received(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe, uint32_t *bid);
/* Send bytes, as OP_SEND: one piece, or a message of several. */
void tp_send(struct worker *w, struct conn *c, const void *p, size_t n);
void tp_sendmsg(struct worker *w, struct conn *c, struct msghdr *m);

#endif
