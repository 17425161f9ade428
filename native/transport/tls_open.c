/*
 * Opening the client's TLS 1.3 records in user space, once a server
 * connection's handshake is over and we seal what we send (tls_seal.c).
 *
 * Why: SSL_read copies every record out of our receive buffers into the
 * library's own buffer (our BIO), decrypts it there, copies the plaintext
 * into the buffer we hand the protocol, and allocates an object per call;
 * its record layer around that is most of what a small request costs it
 * (callgrind, a 64 B keep-alive request: 5,755 of about 18,000
 * instructions). Here each record is decrypted in place in the buffers
 * the ring received it into, its tag checked, and its plaintext copied
 * once into the buffer the protocol gets, by the library's AEAD (EVP). The
 * construction is RFC 8446 5.2 and 5.3, as sealing's: the header is the
 * additional data, the nonce is the client's write IV XORed with the
 * record's sequence number, and the content is followed by its real type,
 * zero padding and the 16-byte tag.
 *
 * The key: the client's application traffic secret, which OpenSSL 3.0
 * gives only to its key log, set for that one secret (tls_ktls.c,
 * tp_ktls_keylog_around), then HKDF-Expand-Label. The library has read
 * the handshake record by record (read-ahead off, tls.c), so at its end it
 * holds no byte past the client's Finished: the first record after it, at
 * the head of our queue, is record 0 under the new key.
 *
 * What a record may be, once opened:
 *   - application data: delivered as SSL_read's plaintext was;
 *   - alert close_notify: the end of the stream; user_canceled: ignored
 *     (close_notify follows); any other alert: the connection ends (reset);
 *   - a KeyUpdate that does not ask for ours: followed, the next secret
 *     derived (RFC 8446 7.2); one that asks us to update too, and any
 *     other handshake message (post-handshake authentication is never
 *     asked): the connection ends as at the end of the stream, counted.
 *     Our sending keys came from the library, which gives us no secret to
 *     derive the next one from, as with kTLS;
 *   - a bad tag, a wrong header or length, no content type: the
 *     connection is closed, counted (tls_open_errors).
 *
 * The cipher contexts are per worker and per connection slot (tls_aead.c), made on a
 * slot's first connection and re-keyed after (no allocation per
 * connection after warm-up, none per record).
 */
#include <errno.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include "transport/tls.h"
#include "transport/tls_aead.h"
#include "transport/transport.h"

#define TAG_LEN 16
#define HEADER_LEN 5
#define CONTENT_MAX 16384             /* 2^14: a record's content at most */
#define RECORD_MAX (16384 + 256)      /* 2^14 + 256: its encrypted body at most */

int tp_open_init(struct worker *w)
{
    if ((w->features & (UP_F_TLS_OPEN | UP_F_TLS_SEAL)) != (UP_F_TLS_OPEN | UP_F_TLS_SEAL))
        return 0;
    return (w->tls_open = tp_aead_slots_new(w->nconns)) ? 0 : -ENOMEM;
}

void tp_open_free(struct worker *w)
{
    tp_aead_slots_free(w->tls_open, w->nconns);
    w->tls_open = NULL;
}

/* Key the slot's context with the client's current traffic secret (the
 * next one with `update`); from sequence number 0. */
static bool rekey(struct worker *w, struct conn *c, struct tls_conn *t, bool update)
{
    int which;
    uint8_t key[32];
    size_t klen = 0;
    if (tp_ktls_rx_key(w, c, t->ssl, update, &which, key, &klen, t->open_iv) < 0)
        return false;
    bool ok = tp_aead_slot_key(w->tls_open, (uint32_t)(c - w->conns), which, key, false);
    OPENSSL_cleanse(key, sizeof key);
    t->open_seq = 0;
    return ok;
}

/* The handshake is complete (TLS 1.3, server side, sealed): take over
 * receiving when nothing can be lost, that is when the library holds no
 * byte (no plaintext, no part of a record) and reads no early data. False
 * leaves the connection with the library. */
bool tp_open_start(struct worker *w, struct conn *c, struct tls_conn *t)
{
    if (!w->tls_open || !t->seal || SSL_version(t->ssl) != TLS1_3_VERSION ||
        SSL_has_pending(t->ssl) || SSL_get_early_data_status(t->ssl) == SSL_EARLY_DATA_ACCEPTED ||
        !rekey(w, c, t, false))
        return false;
    t->open = 1;
    t->open_left = t->open_skip = 0;
    cnt(w, UP_C_TLS_OPEN, 1);
    return true;
}

/* ---- the queue of received buffers ------------------------------------ */

/* Bytes queued from its head, counted up to `need` (enough to know). */
static uint32_t queued(const struct worker *w, const struct tls_conn *t, uint32_t need)
{
    uint32_t n = 0, off = t->in_off;
    for (uint32_t b = t->in_head; b != NIL && n < need; b = w->bufs.next[b], off = 0)
        n += w->bufs.len[b] - off;
    return n;
}

/* The byte at `at` from the head, and its buffer's bytes from there
 * (*run). */
static uint8_t *at_pos(const struct worker *w, const struct tls_conn *t, uint32_t at, uint32_t *run)
{
    uint32_t off = t->in_off;
    for (uint32_t b = t->in_head; b != NIL; b = w->bufs.next[b], off = 0) {
        uint32_t have = w->bufs.len[b] - off;
        if (at < have) {
            *run = have - at;
            return buf_data(&w->bufs, b) + off + at;
        }
        at -= have;
    }
    *run = 0;
    return NULL;
}

static void peek(const struct worker *w, const struct tls_conn *t, uint32_t at, uint8_t *dst, uint32_t n)
{
    while (n) {
        uint32_t run;
        const uint8_t *p = at_pos(w, t, at, &run);
        uint32_t k = n < run ? n : run;
        memcpy(dst, p, k);
        dst += k, at += k, n -= k;
    }
}

/* ---- one record ------------------------------------------------------- */

enum rec {
    REC_MORE,                     /* not whole yet: the peer's next bytes */
    REC_DATA,                     /* application data: open_left bytes at the head */
    REC_NEXT,                     /* consumed, nothing to deliver (a key update, empty data) */
    REC_EOF,                      /* close_notify */
    REC_END,                      /* a record we do not follow: end as at close_notify */
    REC_RESET,                    /* an alert: the peer gave up */
    REC_BAD,                      /* did not open, or malformed */
};

/* Open the record at the head, if it is whole. */
static enum rec record(struct worker *w, struct conn *c, struct tls_conn *t)
{
    uint8_t hdr[HEADER_LEN];
    if (queued(w, t, HEADER_LEN) < HEADER_LEN)
        return REC_MORE;
    peek(w, t, 0, hdr, HEADER_LEN);
    uint32_t len = (uint32_t)hdr[3] << 8 | hdr[4];
    /* TLS 1.3 after the handshake: every record is application_data
     * outside, legacy version 0x0303 (RFC 8446 5.1, 5.2). */
    if (hdr[0] != 23 || hdr[1] != 3 || hdr[2] != 3 || len < 1 + TAG_LEN || len > RECORD_MAX)
        return REC_BAD;
    if (queued(w, t, HEADER_LEN + len) < HEADER_LEN + len)
        return REC_MORE;
    EVP_CIPHER_CTX *x = ((struct tp_aead_slots *)w->tls_open)->ctx[c - w->conns];
    uint8_t nonce[12], tag[TAG_LEN];
    memcpy(nonce, t->open_iv, 12);
    for (int b = 0; b < 8; b++)
        nonce[11 - b] ^= (uint8_t)(t->open_seq >> (8 * b));
    int outl = 0;
    uint32_t body = len - TAG_LEN;
    if (EVP_DecryptInit_ex2(x, NULL, NULL, nonce, NULL) != 1 ||
        EVP_DecryptUpdate(x, NULL, &outl, hdr, HEADER_LEN) != 1)
        return REC_BAD;
    /* In place, buffer by buffer: a record may straddle receives. */
    for (uint32_t at = HEADER_LEN, left = body; left;) {
        uint32_t run;
        uint8_t *p = at_pos(w, t, at, &run);
        uint32_t k = left < run ? left : run;
        if (EVP_DecryptUpdate(x, p, &outl, p, (int)k) != 1 || (uint32_t)outl != k)
            return REC_BAD;
        at += k, left -= k;
    }
    peek(w, t, HEADER_LEN + body, tag, TAG_LEN);
    if (EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, tag) != 1 ||
        EVP_DecryptFinal_ex(x, tag, &outl) != 1)
        return REC_BAD;                       /* the tag: not the client's, or altered */
    t->open_seq++;
    cnt(w, UP_C_TLS_OPEN_RECORDS, 1);
    /* The real type is the last byte that is not padding (zeros). */
    uint32_t end = body;
    uint8_t type = 0;
    while (end && !type) {
        uint32_t run;
        type = *at_pos(w, t, HEADER_LEN + --end, &run);
    }
    if (!type || end > CONTENT_MAX)
        return REC_BAD;                       /* all padding; content too long */
    switch (type) {
    case 23:                                  /* application_data */
        tp_tls_in_take(w, t, NULL, HEADER_LEN);
        t->open_left = end;
        t->open_skip = len - end;
        return end ? REC_DATA : REC_NEXT;
    case 21: {                                /* alert: level, description */
        uint8_t a[2];
        if (end != 2)
            return REC_BAD;
        peek(w, t, HEADER_LEN, a, 2);
        tp_tls_in_take(w, t, NULL, HEADER_LEN + len);
        return a[1] == 0 ? REC_EOF : a[1] == 90 ? REC_NEXT : REC_RESET;   /* close_notify, user_canceled */
    }
    case 22: {                                /* handshake */
        uint8_t m[5];
        if (end == 5) {
            peek(w, t, HEADER_LEN, m, 5);
            /* KeyUpdate (24), length 1, update_not_requested (0) */
            if (m[0] == 24 && m[1] == 0 && m[2] == 0 && m[3] == 1 && m[4] == 0) {
                tp_tls_in_take(w, t, NULL, HEADER_LEN + len);
                if (!rekey(w, c, t, true))
                    return REC_BAD;
                cnt(w, UP_C_TLS_OPEN_KEY_UPDATES, 1);
                return REC_NEXT;
            }
        }
        tp_tls_in_take(w, t, NULL, HEADER_LEN + len);
        cnt(w, UP_C_TLS_OPEN_CLOSES, 1);
        return REC_END;
    }
    default:
        return REC_BAD;
    }
}

/* Whether the queue holds more to deliver without the client's next
 * bytes: the rest of this record's plaintext, or a whole record after it
 * (or one whose header is already wrong). A record only partly here is
 * not: only the client's bytes complete it, and a receive armed for them
 * (opening's multishot one stays armed, tls.c) brings them. */
static bool more_whole(const struct worker *w, const struct tls_conn *t)
{
    if (t->open_left)
        return true;
    uint32_t at = t->open_skip;
    if (queued(w, t, at + HEADER_LEN) < at + HEADER_LEN)
        return false;
    uint8_t hdr[HEADER_LEN];
    peek(w, t, at, hdr, HEADER_LEN);
    uint32_t len = (uint32_t)hdr[3] << 8 | hdr[4];
    return len > RECORD_MAX || queued(w, t, at + HEADER_LEN + len) >= at + HEADER_LEN + len;
}

/* What the protocol gets from the queue: as tp_received says (the
 * plaintext's byte count with its buffer in *bid, 0 at the end of the
 * stream, -EAGAIN for nothing yet, or -errno). At most one buffer of
 * plaintext per call; what is left is delivered by the next (TLSF_FULL:
 * tls.c replays it without waiting for the peer). */
int tp_open_read(struct worker *w, struct conn *c, struct tls_conn *t, uint32_t *bid)
{
    struct bufpool *p = &w->bufs;
    uint32_t out = NIL, got = 0;
    enum rec r = REC_MORE;
    t->flags &= ~TLSF_FULL;
    for (;;) {
        if (t->open_left) {
            if (out == NIL && (out = bufpool_take(w)) == NIL) {
                t->flags |= TLSF_FULL;            /* starved: the records stay held, replayed */
                return -ENOBUFS;
            }
            uint32_t k = p->size - got < t->open_left ? p->size - got : t->open_left;
            tp_tls_in_take(w, t, buf_data(p, out) + got, k);
            got += k;
            t->open_left -= k;
            if (got == p->size) {
                if (more_whole(w, t))
                    t->flags |= TLSF_FULL;        /* more is whole: read it next */
                r = REC_DATA;
                break;
            }
            continue;
        }
        if (t->open_skip) {
            tp_tls_in_take(w, t, NULL, t->open_skip);
            t->open_skip = 0;
        }
        r = record(w, c, t);
        if (r != REC_DATA && r != REC_NEXT)
            break;
    }
    switch (r) {
    case REC_DATA:
    case REC_NEXT:
    case REC_MORE:
        break;
    case REC_EOF:
    case REC_END:
        t->flags |= TLSF_EOF;
        break;
    case REC_RESET:
        t->state = TLS_FAILED;
        t->err = -ECONNRESET;
        break;
    case REC_BAD:
        ERR_clear_error();
        cnt(w, UP_C_TLS_OPEN_ERRORS, 1);
        t->state = TLS_FAILED;
        t->err = -EPROTO;
        break;
    }
    if (got) {
        *bid = out;
        return (int)got;                          /* an end found after it comes next */
    }
    if (out != NIL)
        bufpool_put(w, out);
    if (t->state == TLS_FAILED)
        return t->err;
    if (t->flags & TLSF_EOF) {
        /* close_notify, a record we do not follow, or the socket's end
         * (a record left unfinished with it is dropped). */
        tp_tls_in_take(w, t, NULL, UINT32_MAX);
        return 0;
    }
    return -EAGAIN;
}
