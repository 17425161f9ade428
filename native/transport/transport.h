/*
 * The transport seam: how a connection's bytes cross its socket. Each
 * connection has a transport kind (c->tp), and every function here is a
 * switch on it, no function pointers: plain sockets, or TLS in user space
 * (tls.c) whose records the ring moves while the protocols above see only
 * plaintext, or TLS whose records the kernel writes and reads (kTLS,
 * tls_ktls.c). The protocols read and write only through these calls.
 */
#ifndef UPROXY_TRANSPORT_H
#define UPROXY_TRANSPORT_H
#include <stdbool.h>
#include <sys/socket.h>
#include "core/worker.h"

enum tp_kind {
    TP_PLAIN,         /* the socket's bytes are the protocol's bytes */
    TP_TLS,           /* records; the library in user space */
    TP_KTLS_TX,       /* records; the kernel encrypts what we send (kTLS),
                         the library decrypts what we receive */
    TP_KTLS,          /* records; the kernel encrypts and decrypts (kTLS TX
                         and RX): the socket's bytes are the protocol's,
                         but for records that are not data (EIO) */
};

/* Whether the connection speaks TLS, whoever does the crypto. */
static inline bool tp_is_tls(const struct conn *c)
{
    return c->tp != TP_PLAIN;
}

/* Arm a receive into the worker's provided buffers: at most `max` bytes
 * (0: a buffer's worth, multishot where the kernel has it and the
 * transport allows). The completion comes to the connection's protocol as
 * OP_RECV, which hands it to tp_received(). */
void tp_recv_arm(struct worker *w, struct conn *c, uint32_t max);
/* Arm receiving of about `limit` bytes at most: one multishot receive
 * that the kernel ends once `limit` bytes came (UP_F_MSHOT_LIMIT; the last
 * buffer may take it past by less than a buffer), so that a connection
 * whose reader wants little at a time stays armed across many small
 * messages without one re-arm per message; where the kernel has no limit,
 * one receive of at most `limit` bytes (tp_recv_arm). Either way the
 * completion without IORING_CQE_F_MORE says: arm again. */
void tp_recv_arm_upto(struct worker *w, struct conn *c, uint32_t limit);
/* What an OP_RECV completion brought the protocol: the byte count (> 0),
 * 0 at end of stream, or -errno; *bid is the buffer holding them (the
 * protocol's to queue or give back), NIL when the completion carried none.
 * -EAGAIN: nothing for the protocol yet (a handshake under way, a record
 * not complete); it arms the next receive as after any completion. */
int tp_received(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe, uint32_t *bid);
/* Send bytes, as OP_SEND: one piece, or a message of several. The
 * completion goes through tp_sent(), which says how many of the protocol's
 * bytes went (perhaps fewer than asked: the protocol sends the rest). */
void tp_send(struct worker *w, struct conn *c, const void *p, size_t n);
void tp_sendmsg(struct worker *w, struct conn *c, struct msghdr *m);
int tp_sent(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe);
/* The transport's own operations' completions (OP_TP_SEND). */
void tp_on_cqe(struct worker *w, struct conn *c, enum op op, const struct io_uring_cqe *cqe);
/* Established: bytes can be sent (a TLS handshake is complete). */
bool tp_ready(struct worker *w, const struct conn *c);
/* Whether the kernel may move this connection's bytes itself (splice):
 * only when its bytes on the wire are the protocol's, in both directions
 * (L4's pumps, sockmap). Not TP_KTLS yet: sockmap cannot take a kTLS
 * socket, and L4's pumps do not read its non-data records. */
static inline bool tp_spliceable(const struct conn *c)
{
    return c->tp == TP_PLAIN;
}
/* One direction: the kernel may read the protocol's bytes out of the
 * socket (splice from it: kTLS RX decrypts them; a record that is not
 * data fails the splice, and the protocol ends the connection as after
 * any failed splice) ... */
static inline bool tp_splice_from(const struct conn *c)
{
    return c->tp == TP_PLAIN || c->tp == TP_KTLS;
}
/* ... or write them into it (splice into it: kTLS encrypts them). */
static inline bool tp_splice_into(const struct conn *c)
{
    return c->tp == TP_PLAIN || c->tp == TP_KTLS_TX || c->tp == TP_KTLS;
}
/* Before shutdown(SHUT_WR): say goodbye in the transport's own terms. */
void tp_shutdown(struct worker *w, struct conn *c);
/* The connection is finished: give back what the transport holds. */
void tp_release(struct worker *w, struct conn *c);

/* What a TLS connection negotiated, for the access log; false when plain. */
struct tp_tls_info {
    uint8_t version;          /* 0x12, 0x13 */
    uint8_t resumed;
    const char *cipher;
    const char *sni;          /* NULL: none sent */
};
bool tp_tls_info(struct worker *w, const struct conn *c, struct tp_tls_info *out);

/* The client certificate the handshake verified (mTLS), as the transport
 * wrote it down once when the handshake ended: never recomputed per
 * request, and the protocol above never calls the library for it. False
 * when plain, when no certificate was sent, or when the listener did not
 * ask for it (up_tls_server.peer_cert). Both strings are printable ASCII
 * and live as long as the connection. */
struct tp_peer_cert {
    const char *subject;      /* RFC 2253 ("CN=alice,O=Example"); NULL: longer
                                 than the transport keeps (TLS_SUBJECT_MAX) */
    uint32_t subject_len;
    const char *sha256;       /* the DER certificate's SHA-256, 64 lower-case hex digits */
};
bool tp_tls_peer_cert(struct worker *w, const struct conn *c, struct tp_peer_cert *out);

/* TLS (tls.c); the protocol that accepts or dials starts it. */
int tp_tls_accept(struct worker *w, struct conn *c, void *server);
/* TLS on a connection whose queue of bytes already read (head, from off)
 * holds the handshake's start: the protocol hands that queue over. */
int tp_tls_accept_held(struct worker *w, struct conn *c, void *server, uint32_t head,
                       uint32_t off);
int tp_tls_connect(struct worker *w, struct conn *c, void *client, const char *host);
int tp_tls_init(struct worker *w);
void tp_tls_free_all(struct worker *w);
const char *tp_tls_version(struct worker *w, const struct conn *c);
bool tp_tls_alpn_is(struct worker *w, const struct conn *c, const char *proto, size_t n);

#endif
