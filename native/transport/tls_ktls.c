/*
 * Kernel TLS: handing a connection's sending (TLS_TX) and, on the server
 * side, its receiving (TLS_RX) to the kernel once its handshake is over.
 * Our records go through memory BIOs, so the library cannot program the
 * socket itself; this file does what it would:
 *
 *   - our own sending keys in TLS 1.3: OpenSSL 3.0, built with KTLS (as
 *     Debian builds it) and asked to with SSL_OP_ENABLE_KTLS, hands the
 *     key, IV and sequence number of the application keys to the BIO it
 *     writes through (BIO_ctrl(BIO_CTRL_SET_KTLS), ssl/tls13_enc.c) when
 *     it installs them. Our BIO is that BIO (tls.c): the key is kept here
 *     and the library told "not taken", so it goes on writing records
 *     itself until we take over. No secret is formatted or derived;
 *   - the peer's keys (TLS_RX) and, with a library that never makes that
 *     call, our own: the TLS 1.3 traffic secrets
 *     {SERVER,CLIENT}_TRAFFIC_SECRET_0 from the key-log callback, set only
 *     on contexts whose connections need it (OpenSSL formats every secret
 *     of every handshake into hex for it, one sprintf per byte), then
 *     HKDF-Expand-Label (RFC 8446 7.3) with one HMAC context per digest
 *     and worker; TLS 1.2's key block from the master secret (the TLS 1.2
 *     PRF, RFC 5246 6.3);
 *   - the record sequence numbers: counted by tls.c (the records sent, or
 *     received, under the application keys before the handover);
 *   - setsockopt(TCP_ULP "tls"), setsockopt(SOL_TLS, TLS_TX) and TLS_RX;
 *   - after TLS_RX, the records that are not data (the kernel fails a
 *     receive with EIO): read with their type, and answered.
 *
 * Keys and secrets are kept per connection in a cold array until their
 * handover and wiped then. Upstream connections hand over only their
 * sending (docs/tls.md says why). Nothing here runs per request: once per
 * handshake, and close_notify or a control record once per connection.
 * No secret is ever logged.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/tls.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include "transport/tls.h"
#include "transport/transport.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

/* The kernel's key structures (linux/tls.h), which OpenSSL's KTLS code
 * fills too. */
union crypto_info {
    struct tls_crypto_info base;
    struct tls12_crypto_info_aes_gcm_128 g128;
    struct tls12_crypto_info_aes_gcm_256 g256;
    struct tls12_crypto_info_chacha20_poly1305 chacha;
};

/* A TLS 1.3 traffic secret, as the key log gave it (32 or 48 bytes). */
struct ktls_secret {
    uint8_t len;
    uint8_t b[48];
};

/* A connection's two: [KS_TX] our own side's, [KS_RX] the peer's. */
enum { KS_TX, KS_RX };
struct ktls_secrets {
    struct ktls_secret s[2];
    uint8_t tx_have;              /* tx holds our TLS 1.3 sending key, from the library's BIO call */
    uint8_t rx_want;              /* opening: our application key was handed over, the client's secret not yet logged */
    union crypto_info tx;
};

/* Per worker: the TLS 1.2 PRF fetched once (a fetch takes the library's
 * method-store lock and looks the name up), HMAC contexts for
 * HKDF-Expand with their digest set once (SHA-256, SHA-384: re-keyed per
 * use, nothing fetched), the keys and secrets by connection, and whether
 * this worker's connections need the key log. */
struct ktls_worker {
    EVP_KDF *prf;
    EVP_MAC *hmac;
    EVP_MAC_CTX *hkdf[2];         /* [0] HMAC-SHA256, [1] HMAC-SHA384; NULL if unavailable */
    struct ktls_secrets *sec;     /* [nconns], reserved, touched by TLS 1.3 handshakes only */
    bool keylog;                  /* a TLS 1.3 handshake ended without the BIO call: use the key log */
};

int tp_ktls_init(struct worker *w)
{
    /* Sealing in user space (tls_seal.c) needs the same secret and KDF. */
    if (!(w->features & (UP_F_KTLS | UP_F_TLS_SEAL)))
        return 0;
    struct ktls_worker *k = calloc(1, sizeof *k);
    if (!k)
        return -ENOMEM;
    void *m = mmap(NULL, sizeof(struct ktls_secrets) * w->nconns, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        free(k);
        return -ENOMEM;
    }
    k->sec = m;
    k->prf = EVP_KDF_fetch(NULL, OSSL_KDF_NAME_TLS1_PRF, NULL);
    k->hmac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL);
    static const char *const md[2] = { "SHA256", "SHA384" };
    for (int i = 0; i < 2 && k->hmac; i++) {
        OSSL_PARAM p[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)md[i], 0),
            OSSL_PARAM_construct_end(),
        };
        k->hkdf[i] = EVP_MAC_CTX_new(k->hmac);
        if (k->hkdf[i] && EVP_MAC_CTX_set_params(k->hkdf[i], p) != 1) {
            EVP_MAC_CTX_free(k->hkdf[i]);
            k->hkdf[i] = NULL;
        }
    }
    ERR_clear_error();
    w->tls_ktls = k;
    return 0;
}

void tp_ktls_free(struct worker *w)
{
    struct ktls_worker *k = w->tls_ktls;
    if (!k)
        return;
    OPENSSL_cleanse(k->sec, sizeof(struct ktls_secrets) * w->nconns);
    munmap(k->sec, sizeof(struct ktls_secrets) * w->nconns);
    EVP_KDF_free(k->prf);
    for (int i = 0; i < 2; i++)
        EVP_MAC_CTX_free(k->hkdf[i]);     /* cleanses the last key */
    EVP_MAC_free(k->hmac);
    free(k);
    w->tls_ktls = NULL;
}

/* The key log: only the first application traffic secrets are kept, for
 * the connection the SSL belongs to: our own side's (TLS_TX), and on the
 * server side with TLS_RX on, or for opening (tp_ktls_keylog_around), the
 * client's. */
static void keylog(const SSL *ssl, const char *line)
{
    struct bio_ref *r = BIO_get_data(SSL_get_rbio(ssl));
    if (!r)
        return;
    struct ktls_worker *k = r->w->tls_ktls;
    bool server = SSL_is_server(ssl);
    const char *tx = server ? "SERVER_TRAFFIC_SECRET_0 " : "CLIENT_TRAFFIC_SECRET_0 ";
    int which;
    if (!k)
        return;
    struct ktls_secrets *ks = &k->sec[r->c - r->w->conns];
    if (strncmp(line, tx, strlen(tx)) == 0)
        which = KS_TX;
    else if (server && ((r->w->features & UP_F_KTLS_RX) || ks->rx_want) &&
             strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0)
        which = KS_RX, ks->rx_want = 0;
    else
        return;
    const char *hex = strrchr(line, ' ');          /* "<label> <client random> <secret>" */
    if (!hex)
        return;
    hex++;
    size_t n = strlen(hex) / 2;
    struct ktls_secret *s = &k->sec[r->c - r->w->conns].s[which];
    if (n > sizeof s->b)
        return;
    for (size_t i = 0; i < n; i++) {
        unsigned hi, lo;
        char a = hex[2 * i], b = hex[2 * i + 1];
        hi = (unsigned)(a <= '9' ? a - '0' : (a | 0x20) - 'a' + 10);
        lo = (unsigned)(b <= '9' ? b - '0' : (b | 0x20) - 'a' + 10);
        s->b[i] = (uint8_t)(hi << 4 | lo);
    }
    s->len = (uint8_t)n;
}

/* The key log, on the contexts of a listener or cluster (the SNI
 * contexts too: the library reads the callback off the context the
 * connection has switched to) when this worker's connections need a
 * secret from it: the client's, for TLS_RX, or any once the library has
 * shown it does not hand over the sending key (k->keylog). Set once per
 * context by the worker that owns it (contexts are per worker). Never
 * elsewhere: with a callback set, the library formats every secret of
 * every handshake into a line (docs/tls.md measures it). */
void tp_ktls_conn_start(struct worker *w, struct tls_server *s, bool server)
{
    struct ktls_worker *k = w->tls_ktls;
    if (!k || s->keylog)
        return;
    bool rx = server && (w->features & (UP_F_KTLS | UP_F_KTLS_RX)) == (UP_F_KTLS | UP_F_KTLS_RX);
    if (!rx && !k->keylog)
        return;
    for (uint32_t i = 0; i < s->nctx; i++)
        if (s->ctx[i])
            SSL_CTX_set_keylog_callback(s->ctx[i], keylog);
    s->keylog = 1;
}

/* The library installs its TLS 1.3 application keys for writing and, with
 * SSL_OP_ENABLE_KTLS, hands them to its write BIO, ours (tls.c's
 * bio_ctrl). Kept for the handover (kTLS) or our own sealing; the caller
 * answers "not taken", so the library keeps its own record layer. Other
 * calls (TLS 1.2, which has the master secret; reading) are ignored. */
void tp_ktls_offer(struct worker *w, const struct conn *c, long is_tx, const void *info)
{
    struct ktls_worker *k = w->tls_ktls;
    const struct tls_crypto_info *ci = info;
    if (!k || !is_tx || !ci || ci->version != TLS_1_3_VERSION)
        return;
    size_t n;
    switch (ci->cipher_type) {
    case TLS_CIPHER_AES_GCM_128: n = sizeof(struct tls12_crypto_info_aes_gcm_128); break;
    case TLS_CIPHER_AES_GCM_256: n = sizeof(struct tls12_crypto_info_aes_gcm_256); break;
    case TLS_CIPHER_CHACHA20_POLY1305: n = sizeof(struct tls12_crypto_info_chacha20_poly1305); break;
    default: return;
    }
    struct ktls_secrets *s = &k->sec[c - w->conns];
    memcpy(&s->tx, info, n);
    s->tx_have = 1;
    /* A server's application key: the client's comes next, logged when
     * its Finished is read (ssl/statem/statem_lib.c, tls_process_finished),
     * and opening wants it. */
    const struct tls_conn *t = tp_tls_of(w, c);
    if (tp_open_wanted(w) && t->ssl && SSL_is_server(t->ssl))
        s->rx_want = 1;
}

/* OpenSSL 3.0 reads the key-log callback off the connection's context
 * each time it logs a secret, and formats the line only when one is set
 * (ssl/ssl_lib.c, nss_keylog_int); it logs the client's application
 * traffic secret when the server reads the client's Finished
 * (tls13_change_cipher_state, SSL3_CC_APPLICATION | SERVER_READ), after
 * the BIO call that handed over our application key at the end of our
 * own flight (SERVER_WRITE: the exporter and server secrets are logged
 * before that call, in the same step). A worker runs one library call at
 * a time, so the callback is set only around the calls of a connection
 * between those two moments, and no other secret, of it or of any other
 * connection, is formatted: one line per handshake instead of five. The
 * same holds for a resumed handshake (the same two steps) and after a
 * HelloRetryRequest (which comes before both). A context whose key log is
 * set for good (kTLS receiving, or a library that never makes the BIO
 * call: tp_ktls_conn_start) is left as it is. */
SSL_CTX *tp_ktls_keylog_around(struct worker *w, const struct conn *c, SSL *ssl)
{
    struct ktls_worker *k = w->tls_ktls;
    if (!k || !k->sec[c - w->conns].rx_want)
        return NULL;
    SSL_CTX *ctx = SSL_get_SSL_CTX(ssl);
    if (!ctx || SSL_CTX_get_keylog_callback(ctx))
        return NULL;
    SSL_CTX_set_keylog_callback(ctx, keylog);
    return ctx;
}

static void forget(struct worker *w, const struct conn *c, int which)
{
    struct ktls_worker *k = w->tls_ktls;
    if (!k)
        return;
    struct ktls_secrets *s = &k->sec[c - w->conns];
    if (s->s[which].len)
        OPENSSL_cleanse(&s->s[which], sizeof(struct ktls_secret));
    if (which == KS_TX && s->tx_have) {
        OPENSSL_cleanse(&s->tx, sizeof s->tx);
        s->tx_have = 0;
    }
    if (which == KS_RX)
        s->rx_want = 0;
}

void tp_ktls_forget(struct worker *w, const struct conn *c)
{
    forget(w, c, KS_TX);
    forget(w, c, KS_RX);
}

/* HKDF-Expand-Label(secret, label, "", n) of RFC 8446 7.1, for n up to
 * the hash's length (a key or an IV): HKDF-Expand's first block alone,
 * HMAC(secret, HkdfLabel || 0x01) (RFC 5869 2.3), with the worker's HMAC
 * context for the digest, re-keyed; secret NULL: the same secret as the
 * call just before, whose keyed state the context keeps (a key's IV:
 * the key schedule is not computed twice). */
static int expand_label(struct ktls_worker *k, const EVP_MD *md, const uint8_t *secret, size_t slen,
                        const char *label, uint8_t *out, size_t n)
{
    uint8_t info[64], t[EVP_MAX_MD_SIZE];
    size_t ll = strlen(label), i = 0, tl = 0;
    int hl = EVP_MD_get_size(md);
    EVP_MAC_CTX *x = hl == 32 ? k->hkdf[0] : hl == 48 ? k->hkdf[1] : NULL;
    if (!x || n > (size_t)hl || ll > 32)
        return -1;
    info[i++] = (uint8_t)(n >> 8);
    info[i++] = (uint8_t)n;
    info[i++] = (uint8_t)(6 + ll);
    memcpy(info + i, "tls13 ", 6);
    i += 6;
    memcpy(info + i, label, ll);
    i += ll;
    info[i++] = 0;                                /* no context */
    info[i++] = 1;                                /* HKDF-Expand's block counter */
    int ok = EVP_MAC_init(x, secret, slen, NULL) == 1 && EVP_MAC_update(x, info, i) == 1 &&
             EVP_MAC_final(x, t, &tl, sizeof t) == 1 && tl == (size_t)hl;
    if (ok)
        memcpy(out, t, n);
    OPENSSL_cleanse(t, sizeof t);
    return ok ? 0 : -1;
}

/* The TLS 1.2 key block (RFC 5246 6.3; AEAD suites have no MAC keys). */
static int key_block(struct ktls_worker *k, SSL *ssl, const char *md, uint8_t *out, size_t n)
{
    uint8_t master[48], seed[13 + 2 * SSL3_RANDOM_SIZE];
    size_t ml = SSL_SESSION_get_master_key(SSL_get_session(ssl), master, sizeof master);
    memcpy(seed, "key expansion", 13);
    SSL_get_server_random(ssl, seed + 13, SSL3_RANDOM_SIZE);
    SSL_get_client_random(ssl, seed + 13 + SSL3_RANDOM_SIZE, SSL3_RANDOM_SIZE);
    OSSL_PARAM p[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)md, 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, master, ml),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, seed, sizeof seed),
        OSSL_PARAM_construct_end(),
    };
    EVP_KDF_CTX *x = EVP_KDF_CTX_new(k->prf);
    int ok = ml == sizeof master && x && EVP_KDF_derive(x, out, n, p) == 1;
    EVP_KDF_CTX_free(x);
    OPENSSL_cleanse(master, sizeof master);
    return ok ? 0 : -1;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* One side's keys, as the suite uses them: its kernel cipher type, the key
 * (klen bytes) and the 12-byte nonce base (TLS 1.3) or fixed IV (TLS 1.2:
 * 4 bytes for GCM, 12 for ChaCha20). */
struct side_keys {
    uint16_t type;
    bool v13;
    size_t klen;
    uint8_t key[32], iv[12];
};

/* The keys of this connection's sending side (KS_TX) or receiving side
 * (KS_RX): 0, or -1 when its suite is not one the kernel takes or a secret
 * is missing. The caller wipes *o. */
static int side_keys(struct worker *w, const struct conn *c, SSL *ssl, int which,
                     struct side_keys *o)
{
    struct ktls_worker *k = w->tls_ktls;
    const SSL_CIPHER *cs = SSL_get_current_cipher(ssl);
    if (!k || !cs)
        return -1;
    int nid = SSL_CIPHER_get_cipher_nid(cs);
    switch (nid) {
    case NID_aes_128_gcm: o->klen = 16, o->type = TLS_CIPHER_AES_GCM_128; break;
    case NID_aes_256_gcm: o->klen = 32, o->type = TLS_CIPHER_AES_GCM_256; break;
    case NID_chacha20_poly1305: o->klen = 32, o->type = TLS_CIPHER_CHACHA20_POLY1305; break;
    default: return -1;
    }
    const EVP_MD *md = SSL_CIPHER_get_handshake_digest(cs);
    const char *mdn = md ? EVP_MD_get0_name(md) : NULL;
    o->v13 = SSL_version(ssl) == TLS1_3_VERSION;
    /* Whose keys: the server's when we are the server and send, or the
     * client and receive. */
    bool server = SSL_is_server(ssl) == (which == KS_TX);
    if (!mdn || (!o->v13 && SSL_version(ssl) != TLS1_2_VERSION))
        return -1;
    size_t klen = o->klen, ivlen = nid == NID_chacha20_poly1305 || o->v13 ? 12 : 4;
    memset(o->iv, 0, sizeof o->iv);
    int r = -1;
    if (o->v13) {
        struct ktls_secrets *ks = &k->sec[c - w->conns];
        struct ktls_secret *s = &ks->s[which];
        if (which == KS_TX && ks->tx_have && ks->tx.base.cipher_type == o->type) {
            /* What the library handed its BIO: key, salt (the nonce
             * base's first 4 bytes) and the rest of the nonce base. */
            const union crypto_info *h = &ks->tx;
            switch (o->type) {
            case TLS_CIPHER_AES_GCM_128:
                memcpy(o->key, h->g128.key, klen), memcpy(o->iv, h->g128.salt, 4), memcpy(o->iv + 4, h->g128.iv, 8);
                break;
            case TLS_CIPHER_AES_GCM_256:
                memcpy(o->key, h->g256.key, klen), memcpy(o->iv, h->g256.salt, 4), memcpy(o->iv + 4, h->g256.iv, 8);
                break;
            default:
                memcpy(o->key, h->chacha.key, klen), memcpy(o->iv, h->chacha.iv, 12);
                break;
            }
            r = 0;
        } else if (s->len && s->len == (size_t)EVP_MD_get_size(md) &&
                   expand_label(k, md, s->b, s->len, "key", o->key, klen) == 0 &&
                   expand_label(k, md, NULL, 0, "iv", o->iv, 12) == 0) {
            r = 0;
        } else if (which == KS_TX && !ks->tx_have && !k->keylog) {
            /* Neither: this library does not hand its BIO the keys (built
             * without KTLS, or another version). The key log from now on. */
            k->keylog = true;
            cnt(w, UP_C_TLS_KEYLOG_FALLBACKS, 1);
        }
    } else {
        uint8_t kb[2 * 32 + 2 * 12];
        size_t n = 2 * klen + 2 * ivlen;
        if (key_block(k, ssl, mdn, kb, n) == 0) {
            memcpy(o->key, kb + (server ? klen : 0), klen);
            memcpy(o->iv, kb + 2 * klen + (server ? ivlen : 0), ivlen);
            r = 0;
        }
        OPENSSL_cleanse(kb, sizeof kb);
    }
    ERR_clear_error();
    return r;
}

/* The socket options for one side's keys, from the record sequence
 * number seq. */
static void pack(const struct side_keys *o, uint64_t seq, union crypto_info *ci, socklen_t *len)
{
    memset(ci, 0, sizeof *ci);
    ci->base.version = o->v13 ? TLS_1_3_VERSION : TLS_1_2_VERSION;
    ci->base.cipher_type = o->type;
    switch (o->type) {
    case TLS_CIPHER_AES_GCM_128:
    case TLS_CIPHER_AES_GCM_256: {
        bool g128 = o->type == TLS_CIPHER_AES_GCM_128;
        uint8_t *ck = g128 ? ci->g128.key : ci->g256.key;
        uint8_t *salt = g128 ? ci->g128.salt : ci->g256.salt;
        uint8_t *civ = g128 ? ci->g128.iv : ci->g256.iv;
        uint8_t *rs = g128 ? ci->g128.rec_seq : ci->g256.rec_seq;
        *len = g128 ? sizeof ci->g128 : sizeof ci->g256;
        memcpy(ck, o->key, o->klen);
        memcpy(salt, o->iv, 4);
        /* TLS 1.3: the nonce base's last 8 bytes. TLS 1.2: the explicit
         * nonce of the next record, which the kernel counts up from
         * here; the sequence number is unique under this key (the
         * library's own records used a random start). Receiving, the
         * kernel reads each record's explicit nonce from the record. */
        if (o->v13)
            memcpy(civ, o->iv + 4, 8);
        else
            put_be64(civ, seq);
        put_be64(rs, seq);
        break;
    }
    default:
        *len = sizeof ci->chacha;
        memcpy(ci->chacha.key, o->key, o->klen);
        memcpy(ci->chacha.iv, o->iv, 12);
        put_be64(ci->chacha.rec_seq, seq);
        break;
    }
}

/* Program one direction of c's socket with the keys of ssl's connection
 * (TLS_TX or TLS_RX), the secrets wiped whatever happens. The ULP is
 * attached with the sending half, the first one handed over; a socket that
 * has it but whose TLS_TX the kernel refused (a suite it lacks) stays a
 * plain TCP socket. */
static int program(struct worker *w, struct conn *c, SSL *ssl, uint64_t seq, int dir)
{
    struct side_keys o;
    union crypto_info ci;
    socklen_t len = 0;
    int r = side_keys(w, c, ssl, dir, &o);
    forget(w, c, dir);
    if (r == 0)
        pack(&o, seq, &ci, &len);
    OPENSSL_cleanse(&o, sizeof o);
    if (r < 0)
        return -ENOTSUP;
    if ((dir == KS_TX && setsockopt(c->fd, SOL_TCP, TCP_ULP, "tls", sizeof "tls") < 0) ||
        setsockopt(c->fd, SOL_TLS, dir == KS_TX ? TLS_TX : TLS_RX, &ci, len) < 0)
        r = -errno;
    OPENSSL_cleanse(&ci, sizeof ci);
    return r;
}

int tp_ktls_tx_key(struct worker *w, const struct conn *c, SSL *ssl, int *which, uint8_t key[32],
                   size_t *klen, uint8_t iv[12])
{
    struct side_keys o;
    int r = SSL_version(ssl) == TLS1_3_VERSION ? side_keys(w, c, ssl, KS_TX, &o) : -1;
    forget(w, c, KS_TX);
    if (r == 0) {
        *which = o.type == TLS_CIPHER_AES_GCM_128 ? 0 : o.type == TLS_CIPHER_AES_GCM_256 ? 1 : 2;
        *klen = o.klen;
        memcpy(key, o.key, o.klen);
        memcpy(iv, o.iv, 12);
    }
    OPENSSL_cleanse(&o, sizeof o);
    return r;
}

int tp_ktls_rx_key(struct worker *w, const struct conn *c, SSL *ssl, bool update, int *which,
                   uint8_t key[32], size_t *klen, uint8_t iv[12])
{
    struct ktls_worker *k = w->tls_ktls;
    const SSL_CIPHER *cs = SSL_get_current_cipher(ssl);
    const EVP_MD *md = cs ? SSL_CIPHER_get_handshake_digest(cs) : NULL;
    if (!k || !md || SSL_version(ssl) != TLS1_3_VERSION)
        return -1;
    struct ktls_secret *s = &k->sec[c - w->conns].s[KS_RX];
    if (update) {
        /* application_traffic_secret_N+1 =
         *   HKDF-Expand-Label(application_traffic_secret_N, "traffic upd", "", Hash.length) */
        uint8_t next[48];
        if (!s->len || expand_label(k, md, s->b, s->len, "traffic upd", next, s->len) < 0) {
            OPENSSL_cleanse(next, sizeof next);
            return -1;
        }
        memcpy(s->b, next, s->len);
        OPENSSL_cleanse(next, sizeof next);
    }
    struct side_keys o;
    int r = side_keys(w, c, ssl, KS_RX, &o);
    if (r == 0) {
        *which = o.type == TLS_CIPHER_AES_GCM_128 ? 0 : o.type == TLS_CIPHER_AES_GCM_256 ? 1 : 2;
        *klen = o.klen;
        memcpy(key, o.key, o.klen);
        memcpy(iv, o.iv, 12);
    }
    OPENSSL_cleanse(&o, sizeof o);
    return r;
}

int tp_ktls_tx(struct worker *w, struct conn *c, SSL *ssl, uint64_t seq)
{
    return program(w, c, ssl, seq, KS_TX);
}

/* close_notify as the kernel writes records: an alert record (type 21),
 * warning level, description 0. A few bytes into a socket with room:
 * sent directly, never blocking, as tls.c sends its own. */
void tp_ktls_close_notify(int fd)
{
    uint8_t alert[2] = { 1, 0 };
    union {
        char buf[CMSG_SPACE(1)];
        struct cmsghdr align;
    } u;
    struct iovec v = { alert, sizeof alert };
    struct msghdr m = { .msg_iov = &v, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_TLS;
    h->cmsg_type = TLS_SET_RECORD_TYPE;
    h->cmsg_len = CMSG_LEN(1);
    *CMSG_DATA(h) = 21;
    sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
}

int tp_ktls_rx(struct worker *w, struct conn *c, SSL *ssl, uint64_t seq)
{
    return program(w, c, ssl, seq, KS_RX);
}

#ifndef TLS_GET_RECORD_TYPE
#define TLS_GET_RECORD_TYPE 2
#endif

/* A record that is not data, after TLS_RX: the kernel failed the ring's
 * receive with EIO and keeps the record at the head of its queue until a
 * recvmsg that can take its type (a control message) reads it. Rare (once
 * per connection at most: each of them ends it), so one direct, never
 * blocking syscall. What it is:
 *   - alert close_notify (21, description 0): the end of the stream;
 *   - any other alert: the peer gave up, the connection ends (reset);
 *   - a handshake message (22): in TLS 1.3 a KeyUpdate (or anything else
 *     after the handshake: the server side receives no tickets), in TLS
 *     1.2 a renegotiation's ClientHello. The records after a KeyUpdate
 *     are under keys the kernel does not have, and Linux 6.1 cannot take
 *     new TLS_RX keys on a socket (rekeying came in 6.14): the connection
 *     ends as at the end of the stream, so what is under way finishes and
 *     we say close_notify, counted (tls_ktls_rx_closes). A client that
 *     updates its keys (after some 2^24.5 records, RFC 8446 5.5) opens a
 *     new connection. */
int tp_ktls_rx_record(struct worker *w, struct conn *c)
{
    uint8_t b[64];
    union {
        char buf[CMSG_SPACE(1)];
        struct cmsghdr align;
    } u;
    struct iovec v = { b, sizeof b };
    struct msghdr m = { .msg_iov = &v, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
    ssize_t n = recvmsg(c->fd, &m, MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN ? -EAGAIN : -errno;
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    int type = h && h->cmsg_level == SOL_TLS && h->cmsg_type == TLS_GET_RECORD_TYPE ? *CMSG_DATA(h) : 0;
    switch (type) {
    case 21:                                      /* alert: level, description */
        if (n >= 2 && b[1] == 0)
            return 0;                             /* close_notify */
        return -ECONNRESET;
    case 22:                                      /* handshake */
        cnt(w, UP_C_TLS_KTLS_RX_CLOSES, 1);
        return 0;
    default:
        /* Data after EIO cannot be (the record that failed the receive
         * stays first); whatever it is, the stream is not ours to follow. */
        return -EPROTO;
    }
}
