/*
 * TLS in user space, behind the transport seam: the library (OpenSSL)
 * never touches a socket. The ring receives records into provided buffers
 * and sends the records the library writes; the library reads and writes
 * through a memory BIO of ours (tls.c) that points at those buffers. The
 * protocols above see plaintext through the same tp_* calls as plain
 * sockets. Types here, functions in tls.c and tls_ctx.c.
 */
#ifndef UPROXY_TLS_H
#define UPROXY_TLS_H
#include <stdint.h>
#include <sys/uio.h>
#include <openssl/ssl.h>
#include "core/worker.h"

#define TLS_MAX_CTX   16      /* certificate groups per listener */
#define TLS_MAX_NAMES 1024
#define TLS_OUT_BUFS  4       /* buffers one flight of records may fill */

/* A listener's (or a cluster's) contexts for one worker. */
struct tls_name {
    char name[254];
    uint16_t len;
    uint16_t ctx;
    uint8_t wildcard;
};

/* A TLS-ALPN-01 challenge: its own context holding only the challenge
 * certificate, which a validator's handshake is switched to. */
struct tls_acme {
    char name[254];
    uint16_t len;
    SSL_CTX *ctx;
};

struct tls_server {
    SSL_CTX *ctx[TLS_MAX_CTX];
    uint32_t nctx;
    uint32_t nnames;
    struct tls_name *names;
    uint8_t alpn[64];
    uint32_t alpn_len;
    uint8_t *keys;            /* session-ticket keys, 80 bytes each */
    uint32_t nkeys;
    int refs;                 /* the table's, and one per context (tls_ctx.c) */
    uint8_t server;
    uint8_t verify;           /* client side: verify the server */
    uint8_t peer_cert;        /* server side: keep the client certificate's facts */
    char sni[254];            /* client side: the name to send and verify */
    uint8_t acme_alpn;        /* server side: answers acme-tls/1 */
    uint8_t keylog;           /* the key log is set on its contexts (tls_ktls.c) */
    EVP_CIPHER *ticket_cipher; /* server side: AES-256-CBC for tickets, fetched once */
    uint32_t nacme;
    struct tls_acme *acme;    /* [nacme] */
};

enum tls_state {
    TLS_NONE,
    TLS_HANDSHAKE,
    TLS_OPEN,
    TLS_FAILED,               /* the next receive reports the error */
};

/* Whether the kernel sends this connection's records (tls_ktls.c). */
enum tls_ktls {
    KT_OFF,                       /* user space: kTLS off, not offered, or refused */
    KT_WAIT,                      /* established: handed over once our last flight is out */
    KT_TX,                        /* the kernel encrypts what we send (c->tp is TP_KTLS_TX) */
};

/* Whether the kernel decrypts what this connection receives (server side,
 * after KT_TX; tls_ktls.c). */
enum tls_krx {
    KR_OFF,                       /* the library decrypts */
    KR_DRAIN,                     /* reading exactly to a record's end, then handed over */
    KR_ON,                        /* the kernel decrypts (c->tp is TP_KTLS) */
};

#define TLSF_EOF      1       /* the socket said FIN */
#define TLSF_SENDING  2       /* a flight of our own (handshake) is on its way */
#define TLSF_REPLAY   4       /* the receive armed is a no-op: data is held */
#define TLSF_WANT_RX  8       /* a receive is owed once our flight is out */
#define TLSF_CLOSING  16      /* close_notify written */
#define TLSF_FULL     32      /* the last read filled its buffer: more may be held */
#define TLSF_KICK     64      /* established while our flight was out: tell the protocol */
#define TLSF_PEER     128     /* a verified client certificate: its facts are in tls_peer */

/* What a verified client certificate says, written once at the end of the
 * handshake for the protocols to read per request (tp_tls_peer_cert). In
 * an array of its own beside tls_conn: cold, touched only by connections
 * whose listener asks for it, so the hot per-connection state stays small. */
#define TLS_SUBJECT_MAX 512
struct tls_peer {
    char sha256[64];              /* lower-case hex */
    uint32_t subject_len;         /* 0: the subject is longer than TLS_SUBJECT_MAX */
    char subject[TLS_SUBJECT_MAX];
};

/* One connection's TLS, in a per-worker array beside the connections
 * (touched only for TLS connections, so plain ones pay no memory). */
struct tls_conn {
    SSL *ssl;
    uint32_t in_head, in_tail;    /* records received, not yet read by the library */
    uint32_t in_off;              /* bytes of in_head already read */
    uint32_t out[TLS_OUT_BUFS];   /* records written, to be sent (NIL: unused) */
    uint32_t nout;
    uint32_t out_len;             /* bytes in out[nout - 1] */
    uint32_t out_plain;           /* plaintext the send in flight carries */
    uint8_t state;                /* enum tls_state */
    uint8_t flags;                /* TLSF_* */
    uint8_t ktls;                 /* enum tls_ktls */
    uint8_t tx_seq;               /* kTLS: records sent under the application keys before the handover */
    uint8_t krx;                  /* enum tls_krx */
    uint8_t rx_have;              /* KR_DRAIN: header bytes of the current record seen (0-4) */
    uint16_t rx_len;              /* KR_DRAIN: the current record's length, from its header */
    uint16_t rx_left;             /* KR_DRAIN: its body bytes still to come */
    uint32_t rx_recs;             /* KR_DRAIN: whole records received after the handshake's last */
    int32_t err;                  /* TLS_FAILED: what to report (-errno) */
    uint32_t slot;                /* client side: the server's slot, for its session */
    uint8_t seal;                 /* we seal its records (tls_seal.c): the library only reads */
    uint8_t seal_iv[12];          /* sealing: the write IV (nonce base) */
    uint64_t seal_seq;            /* sealing: the next record's sequence number */
    uint8_t open;                 /* we open its records (tls_open.c): the library reads no more */
    uint8_t open_iv[12];          /* opening: the client's write IV (nonce base) */
    uint32_t open_left;           /* opening: plaintext of the record opened last, still at the queue's head */
    uint32_t open_skip;           /* opening: then that record's content type, padding and tag, to drop */
    uint64_t open_seq;            /* opening: the next record's sequence number */
    struct iovec iov[TLS_OUT_BUFS];
    struct msghdr msg;
};

/* Client sessions kept per server slot, so a new connection to the same
 * server resumes (UP_MAX_SERVERS entries, per worker). */
struct tls_sessions {
    SSL_SESSION *s[UP_MAX_SERVERS];
};

/* What the library's BIO of ours knows of its connection (tls.c). */
struct bio_ref {
    struct worker *w;
    struct conn *c;
};

/* Kernel TLS (tls_ktls.c). */
int tp_ktls_init(struct worker *w);
void tp_ktls_free(struct worker *w);
/* A connection of s starts on this worker: sets the key log on s's
 * contexts the first time this worker needs it (tls_ktls.c says when). */
void tp_ktls_conn_start(struct worker *w, struct tls_server *s, bool server);
/* The library's BIO_ctrl(BIO_CTRL_SET_KTLS) on c's BIO: its new keys
 * (a struct of linux/tls.h), kept when they are TLS 1.3 sending keys. */
void tp_ktls_offer(struct worker *w, const struct conn *c, long is_tx, const void *info);
/* Program TLS_TX with the connection's keys and the next record's
 * sequence number: 0, or -errno (the connection stays in user space). */
int tp_ktls_tx(struct worker *w, struct conn *c, SSL *ssl, uint64_t seq);
/* Program TLS_RX with the peer's keys and the sequence number of the
 * next record the kernel will read: 0, or -errno (the library goes on
 * decrypting). After tp_ktls_tx (the ULP is attached there). */
int tp_ktls_rx(struct worker *w, struct conn *c, SSL *ssl, uint64_t seq);
/* TLS_RX: the kernel failed a receive with EIO, a record that is not
 * data is next. Read it and say what it means for the protocol: 0 (end
 * of stream: close_notify, or a handshake message we cannot follow), or
 * -errno (an alert: the connection ends). */
int tp_ktls_rx_record(struct worker *w, struct conn *c);
/* Wipe the connection's kept secrets. */
void tp_ktls_forget(struct worker *w, const struct conn *c);
/* Opening (tls_open.c) wants the client's first application traffic
 * secret, which OpenSSL 3.0 gives only to the key log: the context that
 * ssl reads its callback from now, with the callback set for the library
 * call about to be made, when this connection waits for that secret (the
 * caller takes it off again after the call); else NULL. */
SSL_CTX *tp_ktls_keylog_around(struct worker *w, const struct conn *c, SSL *ssl);
/* TLS 1.3: the peer's sending key and nonce base, from its traffic secret
 * (the key log's); with `update`, the secret is first replaced by the
 * next one (a KeyUpdate, RFC 8446 7.2). 0 with the cipher's index, or -1.
 * The secret is kept for the next update, until tp_ktls_forget. */
int tp_ktls_rx_key(struct worker *w, const struct conn *c, SSL *ssl, bool update, int *which,
                   uint8_t key[32], size_t *klen, uint8_t iv[12]);
void tp_ktls_close_notify(int fd);

/* TLS 1.3: our own sending key and nonce base (from the library's BIO
 * call, or the key log: tls_ktls.c), for sealing in user space: 0 with the
 * cipher's index (0 AES-128-GCM, 1 AES-256-GCM, 2 ChaCha20-Poly1305), or
 * -1. The kept key or secret is wiped either way. */
int tp_ktls_tx_key(struct worker *w, const struct conn *c, SSL *ssl, int *which, uint8_t key[32],
                   size_t *klen, uint8_t iv[12]);

/* Drop up to n bytes from the head of what was received and not yet read
 * (copied into dst first, unless NULL), giving back the buffers emptied;
 * the bytes dropped. */
uint32_t tp_tls_in_take(struct worker *w, struct tls_conn *t, uint8_t *dst, uint32_t n);

/* Sealing our own records (tls_seal.c). */
int tp_seal_init(struct worker *w);
void tp_seal_free(struct worker *w);
bool tp_seal_start(struct worker *w, struct conn *c, struct tls_conn *t, uint64_t seq);
uint32_t tp_seal_send(struct worker *w, struct conn *c, struct tls_conn *t, const struct iovec *iov, int n);
bool tp_seal_close_notify(struct worker *w, struct conn *c, struct tls_conn *t);
void tp_seal_truncate(struct worker *w, struct tls_conn *t, uint32_t bytes);

/* Opening the client's TLS 1.3 records ourselves (tls_open.c). */
int tp_open_init(struct worker *w);
void tp_open_free(struct worker *w);
/* Whether this worker's server connections may have their records opened
 * by us (the feature on, sealing on, the kernel not decrypting). */
static inline bool tp_open_wanted(const struct worker *w)
{
    return w->tls_open && !(w->features & UP_F_KTLS);
}
bool tp_open_start(struct worker *w, struct conn *c, struct tls_conn *t);
int tp_open_read(struct worker *w, struct conn *c, struct tls_conn *t, uint32_t *bid);

/* Bytes written into a connection's send buffers (records to send). */
static inline uint32_t tp_tls_out_bytes(const struct worker *w, const struct tls_conn *t)
{
    return t->nout ? (t->nout - 1) * w->bufs.size + t->out_len : 0;
}

/* The client contexts' new-session callback (set in tls_ctx.c): keeps a
 * session for the connection's server slot. */
int tp_tls_new_session(SSL *ssl, SSL_SESSION *sess);

/* What the seam (transport.c) calls for a TLS connection. */
/* Arms the library's receive; true instead when the kernel took the
 * connection's receiving just now (c->tp is TP_KTLS): arm as plain. */
bool tp_tls_recv_arm(struct worker *w, struct conn *c);
int tp_tls_received(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe, uint32_t *bid);
void tp_tls_send(struct worker *w, struct conn *c, const struct iovec *iov, int n);
int tp_tls_sent(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe);
void tp_tls_own_sent(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe);
bool tp_tls_ready(struct worker *w, const struct conn *c);
void tp_tls_shutdown(struct worker *w, struct conn *c);
void tp_tls_release(struct worker *w, struct conn *c);
static inline struct tls_conn *tp_tls_of(struct worker *w, const struct conn *c)
{
    return &((struct tls_conn *)w->tls)[c - w->conns];
}
static inline struct tls_peer *tp_tls_peer_of(struct worker *w, const struct conn *c)
{
    return &((struct tls_peer *)w->tls_peer)[c - w->conns];
}

#endif
