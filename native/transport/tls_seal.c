/*
 * Sealing our own TLS 1.3 records in user space, once a connection's
 * handshake is over and the kernel does not encrypt for it (no kTLS).
 *
 * Why: SSL_write copies the plaintext into the library's record buffer,
 * encrypts it there in place, and our BIO then copies the record into the
 * buffers we send: two copies of every response byte (callgrind, a 64 KiB
 * response: 147,000 of 354,000 instructions per request were memcpy), and
 * three small allocations per record inside the library. Here the AEAD
 * reads the protocol's buffers and writes the ciphertext straight into the
 * buffers we send: no copy, no allocation, no library record layer. The
 * construction is RFC 8446 5.2 and 5.3: the header (type 23, version
 * 0x0303, length) is the additional data, the nonce is the write IV XORed
 * with the record's sequence number, the content is followed by its real
 * type (one byte) and the 16-byte tag. The key and the IV are kTLS's
 * (tls_ktls.c: what the library hands our BIO, else the key log).
 *
 * From the handover on the library's own write state is stale, as after
 * kTLS's: the library still decrypts, but a record it wants to send (the
 * answer to a KeyUpdate that asks for one, an alert) ends the connection
 * (tls.c), and close_notify is sealed here.
 *
 * The cipher contexts are per worker and per connection slot (tls_aead.c), made on the
 * slot's first sealed connection and kept: a later connection re-keys the
 * same context (no allocation per connection after warm-up).
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

int tp_seal_init(struct worker *w)
{
    if (!(w->features & UP_F_TLS_SEAL))
        return 0;
    return (w->tls_seal = tp_aead_slots_new(w->nconns)) ? 0 : -ENOMEM;
}

void tp_seal_free(struct worker *w)
{
    tp_aead_slots_free(w->tls_seal, w->nconns);
    w->tls_seal = NULL;
}

/* The handshake is complete (TLS 1.3, the kernel not sending): take over
 * sending with our own records from sequence number seq. False leaves the
 * connection with the library (no secret, a suite we do not seal). */
bool tp_seal_start(struct worker *w, struct conn *c, struct tls_conn *t, uint64_t seq)
{
    struct tp_aead_slots *s = w->tls_seal;
    int which;
    uint8_t key[32];
    size_t klen = 0;
    if (!s || SSL_version(t->ssl) != TLS1_3_VERSION ||
        tp_ktls_tx_key(w, c, t->ssl, &which, key, &klen, t->seal_iv) < 0)
        return false;
    bool ok = tp_aead_slot_key(s, (uint32_t)(c - w->conns), which, key, true);
    OPENSSL_cleanse(key, sizeof key);
    if (!ok)
        return false;
    t->seal_seq = seq;
    t->seal = 1;
    return true;
}

/* Room in the buffers we send: a pointer to the free bytes of the last
 * one (a new one taken when it is full), their count in *n; NULL when no
 * buffer can be taken. */
static uint8_t *room(struct worker *w, struct tls_conn *t, uint32_t *n)
{
    struct bufpool *p = &w->bufs;
    if (!t->nout || t->out_len == p->size) {
        uint32_t bid = t->nout < TLS_OUT_BUFS ? bufpool_take(w) : NIL;
        if (bid == NIL)
            return NULL;
        t->out[t->nout++] = bid;
        t->out_len = 0;
    }
    *n = p->size - t->out_len;
    return buf_data(p, t->out[t->nout - 1]) + t->out_len;
}

/* Back to `bytes` written (a record that could not be finished). */
void tp_seal_truncate(struct worker *w, struct tls_conn *t, uint32_t bytes)
{
    uint32_t size = w->bufs.size;
    uint32_t keep = bytes ? (bytes + size - 1) / size : 0;
    while (t->nout > keep)
        bufpool_put(w, t->out[--t->nout]);
    t->out_len = keep ? bytes - (keep - 1) * size : 0;
}

/* Copy (header, tag) or encrypt (content) n bytes to the end of what is
 * written; false when the buffers ran out. */
static bool put(struct worker *w, struct tls_conn *t, EVP_CIPHER_CTX *x, const uint8_t *src, uint32_t n)
{
    while (n) {
        uint32_t free_;
        uint8_t *dst = room(w, t, &free_);
        if (!dst)
            return false;
        uint32_t k = n < free_ ? n : free_;
        if (x) {
            int outl = 0;
            if (EVP_EncryptUpdate(x, dst, &outl, src, (int)k) != 1 || (uint32_t)outl != k)
                return false;
        } else {
            memcpy(dst, src, k);
        }
        t->out_len += k;
        src += k;
        n -= k;
    }
    return true;
}

/* One record of `type` whose content is len bytes of the pieces from
 * (*i, *off), which advance past it. */
static bool seal_record(struct worker *w, struct tls_conn *t, EVP_CIPHER_CTX *x, uint8_t type,
                        const struct iovec *iov, int n, int *i, size_t *off, uint32_t len)
{
    uint32_t inner = len + 1 + TAG_LEN;
    uint8_t hdr[HEADER_LEN] = { 23, 3, 3, (uint8_t)(inner >> 8), (uint8_t)inner };
    uint8_t nonce[12], tag[TAG_LEN];
    memcpy(nonce, t->seal_iv, 12);
    for (int b = 0; b < 8; b++)
        nonce[11 - b] ^= (uint8_t)(t->seal_seq >> (8 * b));
    int outl = 0;
    if (EVP_EncryptInit_ex2(x, NULL, NULL, nonce, NULL) != 1 ||
        EVP_EncryptUpdate(x, NULL, &outl, hdr, HEADER_LEN) != 1 || !put(w, t, NULL, hdr, HEADER_LEN))
        return false;
    while (len) {
        size_t k = iov[*i].iov_len - *off;
        if (k > len)
            k = len;
        if (!put(w, t, x, (const uint8_t *)iov[*i].iov_base + *off, (uint32_t)k))
            return false;
        len -= (uint32_t)k;
        *off += k;
        if (*off == iov[*i].iov_len && *i + 1 < n)
            (*i)++, *off = 0;
    }
    if (!put(w, t, x, &type, 1) || EVP_EncryptFinal_ex(x, tag, &outl) != 1 ||
        EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, tag) != 1 || !put(w, t, NULL, tag, TAG_LEN))
        return false;
    t->seal_seq++;
    return true;
}

/* The protocol's plaintext as records of up to 16 KiB, as many as the
 * buffers of one send hold: the plaintext taken (0: nothing could go). */
uint32_t tp_seal_send(struct worker *w, struct conn *c, struct tls_conn *t, const struct iovec *iov, int n)
{
    struct tp_aead_slots *s = w->tls_seal;
    EVP_CIPHER_CTX *x = s->ctx[c - w->conns];
    uint32_t cap_total = TLS_OUT_BUFS * w->bufs.size, plain = 0;
    size_t left = 0;
    for (int k = 0; k < n; k++)
        left += iov[k].iov_len;
    int i = 0;
    size_t off = 0;
    while (left) {
        uint32_t used = tp_tls_out_bytes(w, t);
        uint32_t cap = cap_total > used ? cap_total - used : 0;
        if (cap <= HEADER_LEN + 1 + TAG_LEN)
            break;
        uint32_t len = cap - (HEADER_LEN + 1 + TAG_LEN);
        if (len > 16384)
            len = 16384;
        if (len > left)
            len = (uint32_t)left;
        if (!seal_record(w, t, x, 23, iov, n, &i, &off, len)) {
            /* No buffer for all of it: the record is not sent, and its
             * sequence number is the next one's. */
            tp_seal_truncate(w, t, used);
            ERR_clear_error();
            break;
        }
        plain += len;
        left -= len;
    }
    return plain;
}

/* close_notify (an alert record: warning, 0), sealed into the buffers we
 * send; false when it could not be. */
bool tp_seal_close_notify(struct worker *w, struct conn *c, struct tls_conn *t)
{
    struct tp_aead_slots *s = w->tls_seal;
    static const uint8_t alert[2] = { 1, 0 };
    struct iovec v = { (void *)alert, 2 };
    int i = 0;
    size_t off = 0;
    uint32_t used = tp_tls_out_bytes(w, t);
    if (seal_record(w, t, s->ctx[c - w->conns], 21, &v, 1, &i, &off, 2))
        return true;
    tp_seal_truncate(w, t, used);
    ERR_clear_error();
    return false;
}
