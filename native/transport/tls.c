/*
 * TLS per connection (transport/tls.h). The library reads records from a
 * queue of received buffers and writes records into buffers we send, both
 * through one BIO of ours; nothing in here blocks or touches the socket
 * except through the ring (and one direct send for close_notify).
 *
 * Receiving: single-shot receives (never multishot: the library may hold
 * back plaintext, and the next step must be ours to take). What a receive
 * brings goes into the record queue; then the handshake advances, or one
 * buffer of plaintext is read out and handed to the protocol. What is left
 * (more records, or plaintext the library holds) is delivered by a no-op
 * "receive" the next time the protocol arms one, so no byte waits for the
 * peer to send again.
 *
 * Sending: a protocol's plaintext is gathered, written as records into up
 * to TLS_OUT_BUFS buffers, and sent as one message; its completion tells
 * the protocol how much plaintext went (perhaps less than it asked: the
 * protocols send the rest, as after any short send). Handshake flights are
 * the transport's own sends (OP_TP_SEND); no plaintext reaches the
 * protocol while one is out, so the two never cross on the socket.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include "transport/tls.h"
#include "transport/transport.h"
#include "core/fixed.h"

/* Room a record needs beyond its plaintext: header, explicit IV, tag or
 * MAC and padding; 96 covers every suite we allow. */
#define RECORD_OVERHEAD 96
#define RECORD_MAX 16384

static int handshake(struct worker *w, struct conn *c, struct tls_conn *t);

/* Whether connections of this worker may hand their receiving to the
 * kernel (TLS_RX): kTLS on, and its receiving half not switched off. */
static inline bool rx_wanted(const struct worker *w)
{
    return (w->features & (UP_F_KTLS | UP_F_KTLS_RX)) == (UP_F_KTLS | UP_F_KTLS_RX) && w->tls_ktls;
}

/* ---- the BIO: the library's view of our buffers ----------------------- */

uint32_t tp_tls_in_take(struct worker *w, struct tls_conn *t, uint8_t *dst, uint32_t n)
{
    struct bufpool *p = &w->bufs;
    uint32_t got = 0;
    while (got < n && t->in_head != NIL) {
        uint32_t h = t->in_head, have = p->len[h] - t->in_off;
        uint32_t k = n - got < have ? n - got : have;
        if (dst)
            memcpy(dst + got, buf_data(p, h) + t->in_off, k);
        got += k;
        t->in_off += k;
        if (t->in_off == p->len[h]) {
            t->in_head = p->next[h];
            t->in_off = 0;
            if (t->in_head == NIL)
                t->in_tail = NIL;
            bufpool_put(w, h);
        }
    }
    return got;
}

static int bio_read(BIO *b, char *out, int want)
{
    struct bio_ref *r = BIO_get_data(b);
    struct worker *w = r->w;
    struct tls_conn *t = tp_tls_of(w, r->c);
    BIO_clear_retry_flags(b);
    int got = (int)tp_tls_in_take(w, t, (uint8_t *)out, (uint32_t)want);
    if (got)
        return got;
    if (t->flags & TLSF_EOF)
        return 0;                 /* the library sees the end of the stream */
    BIO_set_retry_read(b);
    return -1;
}

static int bio_write(BIO *b, const char *in, int len)
{
    struct bio_ref *r = BIO_get_data(b);
    struct worker *w = r->w;
    struct tls_conn *t = tp_tls_of(w, r->c);
    struct bufpool *p = &w->bufs;
    int put = 0;
    BIO_clear_retry_flags(b);
    while (put < len) {
        if (!t->nout || t->out_len == p->size) {
            uint32_t bid = t->nout < TLS_OUT_BUFS ? bufpool_take(w) : NIL;
            if (bid == NIL)
                break;
            t->out[t->nout++] = bid;
            t->out_len = 0;
        }
        uint32_t room = p->size - t->out_len, n = (uint32_t)(len - put);
        if (n > room)
            n = room;
        memcpy(buf_data(p, t->out[t->nout - 1]) + t->out_len, in + put, n);
        t->out_len += n;
        put += (int)n;
    }
    if (put)
        return put;
    BIO_set_retry_write(b);
    return -1;
}

/* The library's BIO_set_ktls() (internal to OpenSSL 3.0: include/internal/
 * bio.h), made when it installs new keys on a connection that has
 * SSL_OP_ENABLE_KTLS: the one door OpenSSL 3.0 has to the keys short of
 * the key log. */
#define BIO_CTRL_SET_KTLS 72

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    if (cmd == BIO_CTRL_SET_KTLS) {
        struct bio_ref *r = BIO_get_data(b);
        if (r)
            tp_ktls_offer(r->w, r->c, num, ptr);
        return 0;                 /* not taken: the library keeps writing records */
    }
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_destroy(BIO *b)
{
    OPENSSL_free(BIO_get_data(b));
    BIO_set_data(b, NULL);
    return 1;
}

int tp_tls_init(struct worker *w)
{
    size_t bytes = sizeof(struct tls_conn) * w->nconns;
    void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return -ENOMEM;
    w->tls = m;
    /* Reserved, not committed: a page is touched only by connections whose
     * listener keeps client certificates' facts. */
    m = mmap(NULL, sizeof(struct tls_peer) * w->nconns, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return -ENOMEM;
    w->tls_peer = m;
    /* A memory BIO keeps its buffer across resets: after the first
     * certificate, printing a subject allocates nothing of ours. */
    w->tls_names = BIO_new(BIO_s_mem());
    if (!w->tls_names)
        return -ENOMEM;
    w->tls_sessions = calloc(1, sizeof(struct tls_sessions));
    if (!w->tls_sessions)
        return -ENOMEM;
    BIO_METHOD *bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "uproxy-ring");
    if (!bm)
        return -ENOMEM;
    BIO_meth_set_read(bm, bio_read);
    BIO_meth_set_write(bm, bio_write);
    BIO_meth_set_ctrl(bm, bio_ctrl);
    BIO_meth_set_destroy(bm, bio_destroy);
    w->tls_bio = bm;
    int r = tp_ktls_init(w);
    if (r == 0)
        r = tp_seal_init(w);
    return r < 0 ? r : tp_open_init(w);
}

void tp_tls_free_all(struct worker *w)
{
    if (!w->tls)
        return;
    for (uint32_t i = 0; i < w->nconns; i++) {
        struct tls_conn *t = &((struct tls_conn *)w->tls)[i];
        if (t->ssl)
            SSL_free(t->ssl);
        t->ssl = NULL;
    }
    munmap(w->tls, sizeof(struct tls_conn) * w->nconns);
    w->tls = NULL;
    if (w->tls_peer)
        munmap(w->tls_peer, sizeof(struct tls_peer) * w->nconns);
    w->tls_peer = NULL;
    BIO_free(w->tls_names);
    w->tls_names = NULL;
    struct tls_sessions *ss = w->tls_sessions;
    for (uint32_t i = 0; ss && i < UP_MAX_SERVERS; i++)
        if (ss->s[i])
            SSL_SESSION_free(ss->s[i]);
    free(ss);
    w->tls_sessions = NULL;
    if (w->tls_bio)
        BIO_meth_free(w->tls_bio);
    w->tls_bio = NULL;
    tp_ktls_free(w);
    tp_seal_free(w);
    tp_open_free(w);
}

/* ---- a connection's life ---------------------------------------------- */

static void out_release(struct worker *w, struct tls_conn *t)
{
    for (uint32_t i = 0; i < t->nout; i++)
        bufpool_put(w, t->out[i]);
    t->nout = 0;
    t->out_len = 0;
}

static void in_release(struct worker *w, struct tls_conn *t)
{
    while (t->in_head != NIL) {
        uint32_t h = t->in_head;
        t->in_head = w->bufs.next[h];
        bufpool_put(w, h);
    }
    t->in_tail = NIL;
    t->in_off = 0;
}

static int start(struct worker *w, struct conn *c, SSL_CTX *ctx, bool server)
{
    struct tls_conn *t = tp_tls_of(w, c);
    *t = (struct tls_conn){ .in_head = NIL, .in_tail = NIL };
    SSL *ssl = SSL_new(ctx);
    if (!ssl)
        return -ENOMEM;
    BIO *b = BIO_new(w->tls_bio);
    struct bio_ref *r = OPENSSL_malloc(sizeof *r);
    if (!b || !r) {
        BIO_free(b);
        OPENSSL_free(r);
        SSL_free(ssl);
        return -ENOMEM;
    }
    r->w = w;
    r->c = c;
    BIO_set_data(b, r);
    BIO_set_init(b, 1);
    SSL_set_bio(ssl, b, b);
    /* Sealing and kTLS want our sending keys: with this option the library
     * hands them to our BIO (bio_ctrl), which takes nothing else from it. */
    if (w->tls_ktls) {
        SSL_set_options(ssl, SSL_OP_ENABLE_KTLS);
        tp_ktls_conn_start(w, SSL_CTX_get_app_data(ctx), server);
    }
    if (server)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    /* Where the kernel or we (tls_open.c) may take the receiving, the
     * library reads record by record (a header, then exactly its body),
     * never ahead: at the handshake's end, every byte after the client's
     * Finished is still ours, in the queue (see rx_plan, tp_open_start). */
    if (server && (rx_wanted(w) || tp_open_wanted(w)))
        SSL_set_read_ahead(ssl, 0);
    t->ssl = ssl;
    t->state = TLS_HANDSHAKE;
    c->tp = TP_TLS;
    return 0;
}

int tp_tls_accept(struct worker *w, struct conn *c, void *server)
{
    struct tls_server *s = server;
    return start(w, c, s->ctx[0], true);
}

/* The same, on a connection whose first bytes were read already (after a
 * PROXY header): the buffers from head (its first off bytes not ours) are
 * the handshake's first input. Held, they make the next receive a replay
 * of them (tp_tls_recv_arm), so the handshake starts without new bytes. */
int tp_tls_accept_held(struct worker *w, struct conn *c, void *server, uint32_t head, uint32_t off)
{
    int r = tp_tls_accept(w, c, server);
    if (r < 0 || head == NIL)
        return r;
    struct tls_conn *t = tp_tls_of(w, c);
    t->in_head = t->in_tail = head;
    t->in_off = off;
    while (w->bufs.next[t->in_tail] != NIL)
        t->in_tail = w->bufs.next[t->in_tail];
    return 0;
}

/* A session the server gave us (a TLS 1.3 ticket arrives after the
 * handshake): kept for the next connection to the same server. */
int tp_tls_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct bio_ref *r = BIO_get_data(SSL_get_rbio(ssl));
    struct tls_sessions *ss = r ? r->w->tls_sessions : NULL;
    uint32_t slot = r ? tp_tls_of(r->w, r->c)->slot : NIL;
    if (!ss || slot >= UP_MAX_SERVERS)
        return 0;
    if (ss->s[slot])
        SSL_SESSION_free(ss->s[slot]);
    ss->s[slot] = sess;
    return 1;                     /* the reference is ours now */
}

/* Start the client side on a connected socket: the ClientHello goes out
 * at once; the protocol sends its first bytes once tp_ready() says so. */
int tp_tls_connect(struct worker *w, struct conn *c, void *client, const char *host)
{
    struct tls_server *s = client;
    int r = start(w, c, s->ctx[0], false);
    if (r < 0)
        return r;
    struct tls_conn *t = tp_tls_of(w, c);
    SSL *ssl = t->ssl;
    const char *name = s->sni[0] ? s->sni : host;
    if (name && *name) {
        SSL_set_tlsext_host_name(ssl, name);
        if (s->verify)
            SSL_set1_host(ssl, name);
    }
    t->slot = c->slot;
    struct tls_sessions *ss = w->tls_sessions;
    if (ss && c->slot < UP_MAX_SERVERS && ss->s[c->slot])
        SSL_set_session(ssl, ss->s[c->slot]);
    r = handshake(w, c, t);
    return r == -EAGAIN || r == 1 ? 0 : (r ? r : -EPROTO);
}

void tp_tls_release(struct worker *w, struct conn *c)
{
    struct tls_conn *t = tp_tls_of(w, c);
    if (t->ssl) {
        /* A connection that ended without an error keeps its session
         * resumable: the library would otherwise take a close without our
         * close_notify for a failure and drop the session. */
        if (t->state == TLS_OPEN)
            SSL_set_shutdown(t->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(t->ssl);
    }
    t->ssl = NULL;
    in_release(w, t);
    out_release(w, t);
    tp_ktls_forget(w, c);         /* a secret no handover or sealing used */
    t->state = TLS_NONE;
    t->open = 0;
    t->ktls = KT_OFF;
    t->krx = KR_OFF;
    c->tp = TP_PLAIN;
}

/* ---- sending ---------------------------------------------------------- */

static void submit_out(struct worker *w, struct conn *c, struct tls_conn *t, enum op op)
{
    for (uint32_t i = 0; i < t->nout; i++) {
        t->iov[i].iov_base = buf_data(&w->bufs, t->out[i]);
        t->iov[i].iov_len = i + 1 == t->nout ? t->out_len : w->bufs.size;
    }
    t->msg = (struct msghdr){ .msg_iov = t->iov, .msg_iovlen = t->nout };
    int fd = conn_file(w, c);
    struct io_uring_sqe *s = sqe_for(w, c, op);
    io_uring_prep_sendmsg(s, fd, &t->msg, MSG_NOSIGNAL | MSG_WAITALL);
    conn_file_flags(c, s);
    count_op(w, s);
}

/* Our own flight (handshake records, an alert): out at once. */
static void flush_own(struct worker *w, struct conn *c, struct tls_conn *t)
{
    if (!t->nout || (t->flags & TLSF_SENDING) || (c->ops & (1u << OP_SEND)))
        return;
    t->flags |= TLSF_SENDING;
    submit_out(w, c, t, OP_TP_SEND);
}

void tp_tls_send(struct worker *w, struct conn *c, const struct iovec *iov, int n)
{
    struct tls_conn *t = tp_tls_of(w, c);
    struct bufpool *p = &w->bufs;
    uint32_t plain = 0;
    if (t->seal && t->state == TLS_OPEN && !(t->flags & TLSF_SENDING)) {
        plain = tp_seal_send(w, c, t, iov, n);   /* our own records: no copy */
    } else if (t->state == TLS_OPEN && !(t->flags & TLSF_SENDING)) {
        /* Room left: whole buffers not yet taken, and what the last one has
         * free, less a record's overhead per record. */
        uint32_t cap = TLS_OUT_BUFS * p->size - tp_tls_out_bytes(w, t);
        int i = 0;
        size_t off = 0;
        while (i < n) {
            uint32_t records = cap / (RECORD_MAX + RECORD_OVERHEAD) + 1;
            uint32_t budget = cap > records * RECORD_OVERHEAD ? cap - records * RECORD_OVERHEAD : 0;
            if (budget > RECORD_MAX)
                budget = RECORD_MAX;
            if (!budget)
                break;
            /* Gather one record's worth: small pieces (a head, a chunk
             * line) become one record, not one each. */
            const uint8_t *src;
            uint32_t len;
            if (iov[i].iov_len - off >= budget || i + 1 == n) {
                src = (const uint8_t *)iov[i].iov_base + off;
                len = (uint32_t)(iov[i].iov_len - off) < budget ? (uint32_t)(iov[i].iov_len - off) : budget;
                off += len;
                if (off == iov[i].iov_len)
                    i++, off = 0;
            } else {
                len = 0;
                while (i < n && len < budget) {
                    uint32_t k = (uint32_t)(iov[i].iov_len - off);
                    if (k > budget - len)
                        k = budget - len;
                    memcpy(w->scratch + len, (const uint8_t *)iov[i].iov_base + off, k);
                    len += k;
                    off += k;
                    if (off == iov[i].iov_len)
                        i++, off = 0;
                }
                src = w->scratch;
            }
            if (!len)
                continue;
            size_t wrote = 0;
            if (SSL_write_ex(t->ssl, src, len, &wrote) != 1 || wrote != len) {
                ERR_clear_error();
                break;
            }
            plain += len;
            uint32_t used = tp_tls_out_bytes(w, t);
            cap = TLS_OUT_BUFS * p->size > used ? TLS_OUT_BUFS * p->size - used : 0;
        }
    }
    t->out_plain = plain;
    if (!plain || !t->nout) {
        /* Nothing could go (not established, or no buffer): the send fails
         * as a socket's would, and the protocol ends the connection. */
        struct io_uring_sqe *s = sqe_for(w, c, OP_SEND);
        io_uring_prep_nop(s);
        count_op(w, s);
        t->out_plain = 0;
        t->err = -EPIPE;
        return;
    }
    t->err = 0;
    submit_out(w, c, t, OP_SEND);
}

int tp_tls_sent(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe)
{
    struct tls_conn *t = tp_tls_of(w, c);
    uint32_t want = tp_tls_out_bytes(w, t);
    out_release(w, t);
    if (t->err)
        return t->err;
    if (cqe->res < 0)
        return cqe->res;
    if ((uint32_t)cqe->res != want)
        return -EPIPE;            /* MSG_WAITALL came back short: the socket failed */
    return (int)t->out_plain;
}

/* ---- kernel TLS ------------------------------------------------------- */

/* Records in what the library wrote and we have not sent yet. */
static uint32_t out_records(const struct worker *w, const struct tls_conn *t)
{
    uint32_t total = tp_tls_out_bytes(w, t), n = 0, size = w->bufs.size;
    for (uint32_t at = 0; at + 5 <= total; n++) {
        uint32_t hi = at + 3, lo = at + 4;
        uint32_t len = (uint32_t)buf_data(&w->bufs, t->out[hi / size])[hi % size] << 8 |
                       buf_data(&w->bufs, t->out[lo / size])[lo % size];
        at += 5 + len;
    }
    return n;
}

/* ---- kernel TLS: receiving (TLS_RX) ----------------------------------- */

/* Follow the record boundaries in bytes received after the handshake's
 * last record (the headers are plaintext: type, version, length). */
static void rx_scan(struct tls_conn *t, const uint8_t *p, uint32_t n)
{
    while (n) {
        if (t->rx_left) {
            uint32_t k = n < t->rx_left ? n : t->rx_left;
            t->rx_left = (uint16_t)(t->rx_left - k);
            p += k, n -= k;
            if (!t->rx_left)
                t->rx_recs++;
            continue;
        }
        if (t->rx_have == 3)
            t->rx_len = (uint16_t)(*p << 8);
        else if (t->rx_have == 4)
            t->rx_len |= *p;
        p++, n--;
        if (++t->rx_have == 5) {
            t->rx_have = 0;
            t->rx_left = t->rx_len;
            if (!t->rx_left)
                t->rx_recs++;
        }
    }
}

/* Bytes to the end of the record under way: the most the next receive may
 * read (the header first, then the body), so that nothing past a record's
 * end leaves the socket while the kernel may still take it. */
static uint32_t rx_need(const struct tls_conn *t)
{
    return t->rx_left ? t->rx_left : 5u - t->rx_have;
}

static void rx_off(struct worker *w, struct conn *c, struct tls_conn *t)
{
    if (t->krx == KR_DRAIN) {
        tp_ktls_forget(w, c);
        SSL_set_read_ahead(t->ssl, 1);
    }
    t->krx = KR_OFF;
}

/* The handshake is complete (server side) and sending goes to the kernel:
 * plan the receiving's handover too. With read-ahead off, the library has
 * read exactly the handshake's records, so what the queue still holds is
 * the first bytes after the client's Finished: their record boundaries
 * are followed from here. */
static void rx_plan(struct worker *w, struct tls_conn *t)
{
    t->krx = KR_DRAIN;
    t->rx_have = 0;
    t->rx_len = t->rx_left = 0;
    t->rx_recs = 0;
    uint32_t off = t->in_off;
    for (uint32_t b = t->in_head; b != NIL; b = w->bufs.next[b], off = 0)
        rx_scan(t, buf_data(&w->bufs, b) + off, w->bufs.len[b] - off);
}

/* Hand the receiving to the kernel, when nothing can be lost or reordered:
 *  - every byte received after the handshake went to the library in order
 *    (the queue is empty), and it read them all as whole records: our own
 *    count of their headers ends on a boundary and the library holds no
 *    record bytes (SSL_has_pending) nor plaintext (held(): TLSF_FULL);
 *  - since the handshake, no receive read past the end of a record (rx_need
 *    bounds each one), so the socket holds exactly the rest of the stream,
 *    starting with a record's header;
 *  - no receive is in flight (we are arming the next one), so nothing can
 *    read the socket between the count and setsockopt;
 *  - the kernel's first record is the next under the client's application
 *    keys: TLS 1.3 starts them at 0 after the Finished (under the
 *    handshake keys); in TLS 1.2 the Finished was the first (1). Plus the
 *    records the library decrypted meanwhile.
 * The plaintext the library already gave the protocol came first; the
 * kernel's comes next, through the same receive path. */
static bool rx_handover(struct worker *w, struct conn *c, struct tls_conn *t)
{
    if (t->ktls != KT_TX) {           /* sending stayed in user space: so does receiving */
        rx_off(w, c, t);
        return false;
    }
    uint64_t seq = (SSL_version(t->ssl) == TLS1_2_VERSION ? 1 : 0) + (uint64_t)t->rx_recs;
    if (tp_ktls_rx(w, c, t->ssl, seq) < 0) {
        rx_off(w, c, t);
        cnt(w, UP_C_TLS_KTLS_RX_FALLBACKS, 1);
        return false;
    }
    t->krx = KR_ON;
    c->tp = TP_KTLS;
    cnt(w, UP_C_TLS_KTLS_RX, 1);
    return true;
}

/* The handshake is complete: whether this connection goes to the kernel,
 * and the sequence number its first kernel record will carry. The server
 * of TLS 1.3 writes its session tickets under the application keys in the
 * same step that completes the handshake (they are the whole flight now
 * in t->out); a TLS 1.3 client's last flight (its Finished) is under the
 * handshake keys; in TLS 1.2 both sides' Finished is the one record under
 * the new keys, and the library writes nothing after it. */
static void ktls_plan(struct worker *w, struct conn *c, struct tls_conn *t, bool server)
{
    t->krx = KR_OFF;
    if (!(w->features & UP_F_KTLS) || !w->tls_ktls)
        return;
    int v = SSL_version(t->ssl);
    uint32_t seq = v == TLS1_2_VERSION ? 1 : server ? out_records(w, t) : 0;
    if ((v != TLS1_2_VERSION && v != TLS1_3_VERSION) || seq > 255) {
        tp_ktls_forget(w, c);    /* the key log kept secrets no handover will use */
        if (server && rx_wanted(w))
            SSL_set_read_ahead(t->ssl, 1);
        return;
    }
    t->tx_seq = (uint8_t)seq;
    t->ktls = KT_WAIT;
    if (server && rx_wanted(w))
        rx_plan(w, t);
}

/* Every record the library wrote is on the wire: the kernel takes over
 * sending. From here the library still reads (and must never write: see
 * tp_tls_received); the protocols send plaintext straight to the socket,
 * and bodies may be spliced into it. */
static void handover(struct worker *w, struct conn *c, struct tls_conn *t)
{
    if (tp_ktls_tx(w, c, t->ssl, t->tx_seq) == 0) {
        t->ktls = KT_TX;
        c->tp = TP_KTLS_TX;
        cnt(w, UP_C_TLS_KTLS, 1);
    } else {
        t->ktls = KT_OFF;
        rx_off(w, c, t);
        cnt(w, UP_C_TLS_KTLS_FALLBACKS, 1);
    }
}

/* Our own flight is out: what waited for it may go on. */
void tp_tls_own_sent(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe)
{
    struct tls_conn *t = tp_tls_of(w, c);
    t->flags &= ~TLSF_SENDING;
    uint32_t want = tp_tls_out_bytes(w, t);
    out_release(w, t);
    if (cqe->res < 0 || (uint32_t)cqe->res != want) {
        t->state = TLS_FAILED;
        t->err = cqe->res < 0 ? cqe->res : -EPIPE;
    }
    if (t->state == TLS_OPEN && t->ktls == KT_WAIT)
        handover(w, c, t);           /* every record the library wrote is out */
    if (t->state == TLS_OPEN)
        t->flags |= TLSF_KICK;       /* the protocol learns it may send */
    if ((t->flags & TLSF_WANT_RX) && c->state == CS_OPEN) {
        t->flags &= ~TLSF_WANT_RX;
        tp_recv_arm(w, c, 0);
    }
}

/* ---- receiving -------------------------------------------------------- */

static bool held(const struct tls_conn *t)
{
    if (t->flags & TLSF_KICK)
        return true;
    /* Not SSL_has_pending(): it also counts a partial record, which only
     * the peer's next bytes can complete. */
    /* What we open ourselves may hold the start of a record, which only
     * the peer's next bytes complete: TLSF_FULL says when more is whole. */
    return (t->in_head != NIL && !t->open) || (t->flags & TLSF_FULL) || t->state == TLS_FAILED ||
           (t->flags & TLSF_EOF);
}

bool tp_tls_recv_arm(struct worker *w, struct conn *c)
{
    struct tls_conn *t = tp_tls_of(w, c);
    if (t->flags & TLSF_SENDING) {
        t->flags |= TLSF_WANT_RX;
        return false;
    }
    if (held(t)) {
        struct io_uring_sqe *s = sqe_for(w, c, OP_RECV);
        io_uring_prep_nop(s);
        count_op(w, s);
        t->flags |= TLSF_REPLAY;
        return false;
    }
    uint32_t max = 0;
    if (t->krx == KR_DRAIN && t->state == TLS_OPEN) {
        if (!t->rx_have && !t->rx_left && !SSL_has_pending(t->ssl) && rx_handover(w, c, t))
            return true;
        if (t->krx == KR_DRAIN)
            max = rx_need(t);
    }
    int fd = conn_file(w, c);
    struct io_uring_sqe *s = sqe_for(w, c, OP_RECV);
    io_uring_prep_recv(s, fd, NULL, max, 0);
    conn_file_flags(c, s);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = BUF_GROUP;
    /* Where we open the records ourselves the library holds nothing back,
     * so one multishot receive stays armed as on a plain socket: no
     * receive SQE, and no poll armed when it finds the socket empty, per
     * request (tp_tls_received ends it whenever something is held). */
    if (t->open && t->state == TLS_OPEN && (w->features & UP_F_TLS_MSHOT))
        s->ioprio |= IORING_RECV_MULTISHOT;
    count_op(w, s);
    return false;
}

static int failed(struct worker *w, struct tls_conn *t, enum up_counter k, int err)
{
    ERR_clear_error();
    cnt(w, k, 1);
    t->state = TLS_FAILED;
    t->err = err;
    return err;
}

/* The verified client certificate's subject and fingerprint, written down
 * once per connection for the protocols to pass on (tp_tls_peer_cert):
 * the library is asked here, at the end of the handshake, and never per
 * request. A resumed session carries its certificate, so the same facts
 * come back. */
static void peer_keep(struct worker *w, struct conn *c, struct tls_conn *t)
{
    const struct tls_server *s = SSL_CTX_get_app_data(SSL_get_SSL_CTX(t->ssl));
    if (!s || !s->peer_cert)
        return;
    X509 *x = SSL_get0_peer_certificate(t->ssl);
    /* A certificate that failed verification fails the handshake (no
     * verify callback of ours says otherwise); the check is for certainty. */
    if (!x || SSL_get_verify_result(t->ssl) != X509_V_OK)
        return;
    struct tls_peer *p = tp_tls_peer_of(w, c);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (X509_digest(x, EVP_sha256(), md, &n) != 1 || n != 32) {
        ERR_clear_error();
        return;                      /* no fingerprint: no facts at all */
    }
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < 32; i++) {
        p->sha256[2 * i] = hex[md[i] >> 4];
        p->sha256[2 * i + 1] = hex[md[i] & 15];
    }
    /* RFC 2253, as nginx's $ssl_client_s_dn and Envoy's XFCC write it; its
     * escaping leaves control bytes and non-ASCII as \XX. */
    BIO *b = w->tls_names;
    char *d = NULL;
    long len = -1;
    p->subject_len = 0;
    if (BIO_reset(b) >= 0 && X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0)
        len = BIO_get_mem_data(b, &d);
    if (len > 0 && len <= TLS_SUBJECT_MAX) {
        /* It goes into a header line: whatever the library let through,
         * nothing but printable ASCII reaches it. */
        for (long i = 0; i < len; i++)
            p->subject[i] = d[i] >= 0x20 && d[i] < 0x7f ? d[i] : '?';
        p->subject_len = (uint32_t)len;
    }
    ERR_clear_error();
    t->flags |= TLSF_PEER;
}

/* Advance the handshake; 1 when it completed, -EAGAIN while it goes on,
 * else the error. */
static int handshake(struct worker *w, struct conn *c, struct tls_conn *t)
{
    /* The key log, for the one secret opening needs (tls_ktls.c). */
    SSL_CTX *kl = tp_ktls_keylog_around(w, c, t->ssl);
    int r = SSL_do_handshake(t->ssl);
    if (kl)
        SSL_CTX_set_keylog_callback(kl, NULL);
    bool server = SSL_is_server(t->ssl);
    if (r == 1) {
        t->state = TLS_OPEN;
        cnt(w, server ? UP_C_TLS_HANDSHAKES : UP_C_TLS_UPSTREAM_HANDSHAKES, 1);
        if (server && SSL_session_reused(t->ssl))
            cnt(w, UP_C_TLS_RESUMED, 1);
        if (server)
            peer_keep(w, c, t);
        if (!server && SSL_session_reused(t->ssl))
            cnt(w, UP_C_TLS_UPSTREAM_RESUMED, 1);
        ktls_plan(w, c, t, server);
        /* Without the kernel, we seal the records ourselves (tls_seal.c),
         * from the first one after what the library wrote: a server's
         * tickets are the whole flight now in t->out (as for kTLS), unless
         * an earlier flight is still on its way (then it is counted in
         * t->out too: the library keeps sending). */
        if (t->ktls == KT_OFF && (w->features & UP_F_TLS_SEAL) && !(t->flags & TLSF_SENDING))
            tp_seal_start(w, c, t, server ? out_records(w, t) : 0);
        /* And where we seal, we open what the client sends (tls_open.c);
         * else the library reads ahead again, as everywhere. */
        if (server && tp_open_wanted(w) && !tp_open_start(w, c, t))
            SSL_set_read_ahead(t->ssl, 1);
        flush_own(w, c, t);    /* a TLS 1.2 Finished, TLS 1.3 tickets */
        if (t->ktls == KT_WAIT && !(t->flags & TLSF_SENDING) && !t->nout)
            handover(w, c, t); /* nothing left to send first */
        return 1;
    }
    int e = SSL_get_error(t->ssl, r);
    flush_own(w, c, t);        /* a flight, or the alert that says why */
    if (e == SSL_ERROR_WANT_READ && !(t->flags & TLSF_EOF))
        return -EAGAIN;
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_ZERO_RETURN ||
        (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)) {
        /* The peer left in the middle of the handshake. */
        return failed(w, t, server ? UP_C_TLS_HANDSHAKE_ERRORS : UP_C_TLS_UPSTREAM_ERRORS, 0);
    }
    return failed(w, t, server ? UP_C_TLS_HANDSHAKE_ERRORS : UP_C_TLS_UPSTREAM_ERRORS, -EPROTO);
}

static int received(struct worker *w, struct conn *c, struct tls_conn *t,
                    const struct io_uring_cqe *cqe, uint32_t *bid)
{
    struct bufpool *p = &w->bufs;
    *bid = NIL;
    if (t->flags & TLSF_REPLAY) {
        t->flags &= ~(TLSF_REPLAY | TLSF_KICK);   /* the no-op: go on with what is held */
    } else {
        int res = cqe->res;
        if (cqe->flags & IORING_CQE_F_BUFFER) {
            uint32_t b = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
            bufpool_taken(w);
            if (res > 0 && t->open && t->in_tail != NIL && p->len[t->in_tail] + (uint32_t)res <= p->size) {
                /* We hold the start of a record until it is whole: a
                 * client dribbling it in small pieces fills one buffer,
                 * not one per piece. */
                memcpy(buf_data(p, t->in_tail) + p->len[t->in_tail], buf_data(p, b), (uint32_t)res);
                p->len[t->in_tail] += (uint32_t)res;
                bufpool_put(w, b);
            } else if (res > 0) {
                if (t->krx == KR_DRAIN)
                    rx_scan(t, buf_data(p, b), (uint32_t)res);
                p->len[b] = (uint32_t)res;
                p->next[b] = NIL;
                if (t->in_tail == NIL)
                    t->in_head = b;
                else
                    p->next[t->in_tail] = b;
                t->in_tail = b;
            } else {
                bufpool_put(w, b);
            }
        }
        if (res == 0)
            t->flags |= TLSF_EOF;
        else if (res < 0)
            return res;                    /* -ENOBUFS, -ECANCELED, a reset: as plain */
    }
    if (t->state == TLS_FAILED)
        return t->err;
    if (t->state == TLS_HANDSHAKE) {
        int r = handshake(w, c, t);
        if (r <= 0)
            return r == -EAGAIN ? -EAGAIN : r;
        if (t->flags & TLSF_SENDING)
            return -EAGAIN;                /* plaintext waits until our flight is out */
    }
    if (t->flags & TLSF_SENDING)
        return -EAGAIN;
    if (t->open)
        return tp_open_read(w, c, t, bid);   /* our own opening: the library reads no more */
    uint32_t out = bufpool_take(w);
    if (out == NIL)
        return -ENOBUFS;                   /* the records stay held; starved, then replayed */
    uint8_t *dst = buf_data(p, out);
    size_t got = 0;
    int e = SSL_ERROR_NONE;
    uint32_t wrote = tp_tls_out_bytes(w, t);    /* sealing: what the library adds is a reply */
    t->flags &= ~TLSF_FULL;
    while (got < p->size) {
        size_t n = 0;
        if (SSL_read_ex(t->ssl, dst + got, p->size - got, &n) != 1) {
            e = SSL_get_error(t->ssl, 0);
            break;
        }
        got += n;
    }
    if (got == p->size)
        t->flags |= TLSF_FULL;             /* the library may hold more: read it next */
    if (t->ktls == KT_TX && (t->nout || SSL_get_key_update_type(t->ssl) != SSL_KEY_UPDATE_NONE)) {
        /* The library has a record of its own to send: an alert, or the
         * key update the peer asked us to make too (TLS 1.3's
         * update_requested; the library holds it back until its next
         * write, which never comes, and RFC 8446 4.6.3 wants it before
         * our next data). Our sending keys live in the kernel now, which
         * cannot change them (Linux 6.1), and the library's record would
         * be encrypted with stale state: the connection ends, as after an
         * alert. */
        out_release(w, t);
        bufpool_put(w, out);
        return failed(w, t, UP_C_TLS_KTLS_REPLY_CLOSES, -EPROTO);
    }
    if (t->seal && (tp_tls_out_bytes(w, t) != wrote || SSL_get_key_update_type(t->ssl) != SSL_KEY_UPDATE_NONE)) {
        /* The same when we seal: the library's write state is stale. Our
         * own records (perhaps on their way) stay; its are dropped. */
        tp_seal_truncate(w, t, wrote);
        bufpool_put(w, out);
        return failed(w, t, UP_C_TLS_KTLS_REPLY_CLOSES, -EPROTO);
    }
    flush_own(w, c, t);                    /* a key update's answer, an alert */
    if (got) {
        *bid = out;
        return (int)got;
    }
    bufpool_put(w, out);
    switch (e) {
    case SSL_ERROR_NONE:
    case SSL_ERROR_WANT_READ:
        if (!(t->flags & TLSF_EOF))
            return -EAGAIN;
        /* The stream ended without close_notify; as HTTP delimits its own
         * messages, this is an end of stream. */
        __attribute__((fallthrough));
    case SSL_ERROR_ZERO_RETURN:
        ERR_clear_error();
        t->flags |= TLSF_EOF;
        in_release(w, t);
        return 0;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0) {
            t->flags |= TLSF_EOF;
            in_release(w, t);
            return 0;
        }
        __attribute__((fallthrough));
    default:
        return failed(w, t, UP_C_ERR_OTHER, -EPROTO);
    }
}

int tp_tls_received(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe, uint32_t *bid)
{
    struct tls_conn *t = tp_tls_of(w, c);
    int r = received(w, c, t, cqe, bid);
    /* A multishot receive still armed (opening's, tp_tls_recv_arm) would
     * bring nothing more until the client sends again, and the protocol
     * arms the next receive only after a completion without F_MORE. So
     * when this one leaves something for the next receive (a second
     * buffer of plaintext, an end, a failure: held()) or ends the stream,
     * it is cancelled: its last completion (-ECANCELED) has the protocol
     * arm again, and that arm replays what is held. */
    if ((cqe->flags & IORING_CQE_F_MORE) && c->state == CS_OPEN &&
        (held(t) || (r <= 0 && r != -EAGAIN))) {
        conn_cancel_ops_of(w, c, OP_RECV);
        cnt(w, UP_C_TLS_OPEN_MSHOT_ENDS, 1);
    }
    return r;
}

bool tp_tls_ready(struct worker *w, const struct conn *c)
{
    const struct tls_conn *t = tp_tls_of(w, c);
    return t->state == TLS_OPEN && !(t->flags & TLSF_SENDING);
}

/* Before a FIN: close_notify, sent directly (a few bytes into an empty
 * socket buffer never block) when nothing else is being sent. */
void tp_tls_shutdown(struct worker *w, struct conn *c)
{
    struct tls_conn *t = tp_tls_of(w, c);
    if (t->state != TLS_OPEN || (t->flags & TLSF_CLOSING) ||
        (c->ops & ((1u << OP_SEND) | (1u << OP_TP_SEND))))
        return;
    t->flags |= TLSF_CLOSING;
    if (t->ktls == KT_TX) {
        tp_ktls_close_notify(c->fd);   /* the library's sending keys are stale */
        return;
    }
    if (t->seal)
        tp_seal_close_notify(w, c, t);   /* the library's write state is stale */
    else
        SSL_shutdown(t->ssl);
    ERR_clear_error();
    for (uint32_t i = 0; i < t->nout; i++)
        send(c->fd, buf_data(&w->bufs, t->out[i]), i + 1 == t->nout ? t->out_len : w->bufs.size,
             MSG_DONTWAIT | MSG_NOSIGNAL);
    out_release(w, t);
}

bool tp_tls_info(struct worker *w, const struct conn *c, struct tp_tls_info *out)
{
    const struct tls_conn *t = tp_tls_of(w, c);
    if (!tp_is_tls(c) || !t->ssl)
        return false;
    int v = SSL_version(t->ssl);
    out->version = v == TLS1_3_VERSION ? 0x13 : v == TLS1_2_VERSION ? 0x12 : 0;
    out->resumed = SSL_session_reused(t->ssl) ? 1 : 0;
    out->cipher = SSL_get_cipher_name(t->ssl);
    out->sni = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
    return true;
}

bool tp_tls_peer_cert(struct worker *w, const struct conn *c, struct tp_peer_cert *out)
{
    if (!tp_is_tls(c) || !(tp_tls_of(w, c)->flags & TLSF_PEER))
        return false;
    const struct tls_peer *p = tp_tls_peer_of(w, c);
    out->sha256 = p->sha256;
    out->subject = p->subject_len ? p->subject : NULL;
    out->subject_len = p->subject_len;
    return true;
}

/* Whether the handshake selected this ALPN protocol (an HTTP/2 upstream
 * asks whether its server chose "h2"). */
bool tp_tls_alpn_is(struct worker *w, const struct conn *c, const char *proto, size_t n)
{
    const struct tls_conn *t = tp_tls_of(w, c);
    if (c->tp != TP_TLS || !t->ssl)
        return false;
    const unsigned char *p = NULL;
    unsigned int len = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &len);
    return len == n && p && !memcmp(p, proto, n);
}

/* For the access log: what was negotiated. */
const char *tp_tls_version(struct worker *w, const struct conn *c)
{
    struct tls_conn *t = tp_tls_of(w, c);
    return t->ssl ? SSL_get_version(t->ssl) : "";
}
