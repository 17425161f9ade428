/*
 * Kernel TLS: handing a connection's sending to the kernel (TLS_TX) once
 * its handshake is over. Our records go through memory BIOs, so the
 * library cannot program the socket itself; this file does what it would:
 *
 *   - the traffic secret: TLS 1.3's {SERVER,CLIENT}_TRAFFIC_SECRET_0 from
 *     the key-log callback (the library's one door to it), kept per
 *     connection in a cold array until the handover and wiped then; TLS
 *     1.2's master secret from the session;
 *   - the key and IV: HKDF-Expand-Label (RFC 8446 7.3) for TLS 1.3, the
 *     TLS 1.2 PRF's key block (RFC 5246 6.3) for TLS 1.2;
 *   - the record sequence number: counted by tls.c (the records sent
 *     under the application keys before the handover);
 *   - setsockopt(TCP_ULP "tls") and setsockopt(SOL_TLS, TLS_TX).
 *
 * Receiving stays with the library (docs/tls.md says why). Nothing here
 * runs per request: once per handshake, and close_notify once per
 * connection. No secret is ever logged.
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

/* A TLS 1.3 traffic secret, as the key log gave it (32 or 48 bytes). */
struct ktls_secret {
    uint8_t len;
    uint8_t b[48];
};

/* Per worker: the two KDFs, fetched once (a fetch takes the library's
 * method-store lock), and the secrets by connection. */
struct ktls_worker {
    EVP_KDF *hkdf;
    EVP_KDF *prf;
    struct ktls_secret *sec;      /* [nconns], reserved, touched by TLS 1.3 handshakes only */
};

int tp_ktls_init(struct worker *w)
{
    if (!(w->features & UP_F_KTLS))
        return 0;
    struct ktls_worker *k = calloc(1, sizeof *k);
    if (!k)
        return -ENOMEM;
    void *m = mmap(NULL, sizeof(struct ktls_secret) * w->nconns, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        free(k);
        return -ENOMEM;
    }
    k->sec = m;
    k->hkdf = EVP_KDF_fetch(NULL, OSSL_KDF_NAME_HKDF, NULL);
    k->prf = EVP_KDF_fetch(NULL, OSSL_KDF_NAME_TLS1_PRF, NULL);
    ERR_clear_error();
    w->tls_ktls = k;
    return 0;
}

void tp_ktls_free(struct worker *w)
{
    struct ktls_worker *k = w->tls_ktls;
    if (!k)
        return;
    OPENSSL_cleanse(k->sec, sizeof(struct ktls_secret) * w->nconns);
    munmap(k->sec, sizeof(struct ktls_secret) * w->nconns);
    EVP_KDF_free(k->hkdf);
    EVP_KDF_free(k->prf);
    free(k);
    w->tls_ktls = NULL;
}

/* Whether this process's kernel takes the tls ULP, asked once (by the
 * control plane's thread, which alone builds contexts). */
static int ktls_kernel = -1;

/* The key log: only our own side's first application traffic secret is
 * kept (the one TLS_TX needs), for the connection the SSL belongs to. */
static void keylog(const SSL *ssl, const char *line)
{
    struct bio_ref *r = BIO_get_data(SSL_get_rbio(ssl));
    if (!r)
        return;
    struct ktls_worker *k = r->w->tls_ktls;
    const char *want = SSL_is_server(ssl) ? "SERVER_TRAFFIC_SECRET_0 " : "CLIENT_TRAFFIC_SECRET_0 ";
    size_t wl = strlen(want);
    if (!k || strncmp(line, want, wl) != 0)
        return;
    const char *hex = strrchr(line, ' ');          /* "<label> <client random> <secret>" */
    if (!hex)
        return;
    hex++;
    size_t n = strlen(hex) / 2;
    struct ktls_secret *s = &k->sec[r->c - r->w->conns];
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

void tp_ktls_prepare_ctx(SSL_CTX *ctx)
{
    if (ktls_kernel < 0)
        ktls_kernel = up_tls_ktls_available();
    /* Without the kernel's tls ULP the library is spared formatting every
     * secret of every handshake into a line. */
    if (ktls_kernel)
        SSL_CTX_set_keylog_callback(ctx, keylog);
}

void tp_ktls_forget(struct worker *w, const struct conn *c)
{
    struct ktls_worker *k = w->tls_ktls;
    if (k && k->sec[c - w->conns].len)
        OPENSSL_cleanse(&k->sec[c - w->conns], sizeof(struct ktls_secret));
}

/* HKDF-Expand-Label(secret, label, "", n) of RFC 8446 7.1. */
static int expand_label(struct ktls_worker *k, const char *md, const uint8_t *secret, size_t slen,
                        const char *label, uint8_t *out, size_t n)
{
    uint8_t info[64];
    size_t ll = strlen(label), i = 0;
    info[i++] = (uint8_t)(n >> 8);
    info[i++] = (uint8_t)n;
    info[i++] = (uint8_t)(6 + ll);
    memcpy(info + i, "tls13 ", 6);
    i += 6;
    memcpy(info + i, label, ll);
    i += ll;
    info[i++] = 0;                                /* no context */
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    OSSL_PARAM p[] = {
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)md, 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, slen),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, i),
        OSSL_PARAM_construct_end(),
    };
    EVP_KDF_CTX *x = EVP_KDF_CTX_new(k->hkdf);
    int ok = x && EVP_KDF_derive(x, out, n, p) == 1;
    EVP_KDF_CTX_free(x);
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

union crypto_info {
    struct tls_crypto_info base;
    struct tls12_crypto_info_aes_gcm_128 g128;
    struct tls12_crypto_info_aes_gcm_256 g256;
    struct tls12_crypto_info_chacha20_poly1305 chacha;
};

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* The socket options for this connection's sending side: 0, or -1 when
 * its suite is not one the kernel takes or a secret is missing. */
static int crypto_info(struct worker *w, const struct conn *c, SSL *ssl, uint64_t seq,
                       union crypto_info *ci, socklen_t *len)
{
    struct ktls_worker *k = w->tls_ktls;
    const SSL_CIPHER *cs = SSL_get_current_cipher(ssl);
    if (!k || !cs)
        return -1;
    int nid = SSL_CIPHER_get_cipher_nid(cs);
    size_t klen;
    uint16_t type;
    switch (nid) {
    case NID_aes_128_gcm: klen = 16, type = TLS_CIPHER_AES_GCM_128, *len = sizeof ci->g128; break;
    case NID_aes_256_gcm: klen = 32, type = TLS_CIPHER_AES_GCM_256, *len = sizeof ci->g256; break;
    case NID_chacha20_poly1305: klen = 32, type = TLS_CIPHER_CHACHA20_POLY1305, *len = sizeof ci->chacha; break;
    default: return -1;
    }
    const EVP_MD *md = SSL_CIPHER_get_handshake_digest(cs);
    const char *mdn = md ? EVP_MD_get0_name(md) : NULL;
    bool v13 = SSL_version(ssl) == TLS1_3_VERSION, server = SSL_is_server(ssl);
    if (!mdn || (!v13 && SSL_version(ssl) != TLS1_2_VERSION))
        return -1;
    /* key and the 12-byte nonce base (TLS 1.3) or fixed IV (TLS 1.2:
     * 4 bytes for GCM, 12 for ChaCha20) */
    uint8_t key[32], iv[12] = { 0 };
    size_t ivlen = nid == NID_chacha20_poly1305 || v13 ? 12 : 4;
    int r = -1;
    if (v13) {
        struct ktls_secret *s = &k->sec[c - w->conns];
        if (s->len && s->len == (size_t)EVP_MD_get_size(md) &&
            expand_label(k, mdn, s->b, s->len, "key", key, klen) == 0 &&
            expand_label(k, mdn, s->b, s->len, "iv", iv, 12) == 0)
            r = 0;
    } else {
        uint8_t kb[2 * 32 + 2 * 12];
        size_t n = 2 * klen + 2 * ivlen;
        if (key_block(k, ssl, mdn, kb, n) == 0) {
            memcpy(key, kb + (server ? klen : 0), klen);
            memcpy(iv, kb + 2 * klen + (server ? ivlen : 0), ivlen);
            r = 0;
        }
        OPENSSL_cleanse(kb, sizeof kb);
    }
    ERR_clear_error();
    if (r == 0) {
        memset(ci, 0, sizeof *ci);
        ci->base.version = v13 ? TLS_1_3_VERSION : TLS_1_2_VERSION;
        ci->base.cipher_type = type;
        switch (type) {
        case TLS_CIPHER_AES_GCM_128:
        case TLS_CIPHER_AES_GCM_256: {
            uint8_t *ck = type == TLS_CIPHER_AES_GCM_128 ? ci->g128.key : ci->g256.key;
            uint8_t *salt = type == TLS_CIPHER_AES_GCM_128 ? ci->g128.salt : ci->g256.salt;
            uint8_t *civ = type == TLS_CIPHER_AES_GCM_128 ? ci->g128.iv : ci->g256.iv;
            uint8_t *rs = type == TLS_CIPHER_AES_GCM_128 ? ci->g128.rec_seq : ci->g256.rec_seq;
            memcpy(ck, key, klen);
            memcpy(salt, iv, 4);
            /* TLS 1.3: the nonce base's last 8 bytes. TLS 1.2: the explicit
             * nonce of the next record, which the kernel counts up from
             * here; the sequence number is unique under this key (the
             * library's own records used a random start). */
            if (v13)
                memcpy(civ, iv + 4, 8);
            else
                put_be64(civ, seq);
            put_be64(rs, seq);
            break;
        }
        default:
            memcpy(ci->chacha.key, key, klen);
            memcpy(ci->chacha.iv, iv, 12);
            put_be64(ci->chacha.rec_seq, seq);
            break;
        }
    }
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(iv, sizeof iv);
    return r;
}

int tp_ktls_tx(struct worker *w, struct conn *c, SSL *ssl, uint64_t seq)
{
    union crypto_info ci;
    socklen_t len = 0;
    int r = crypto_info(w, c, ssl, seq, &ci, &len);
    tp_ktls_forget(w, c);
    if (r < 0)
        return -ENOTSUP;
    /* The ULP is attached once; a socket that has it but whose TLS_TX the
     * kernel refused (a suite it lacks) stays a plain TCP socket. */
    if (setsockopt(c->fd, SOL_TCP, TCP_ULP, "tls", sizeof "tls") < 0 ||
        setsockopt(c->fd, SOL_TLS, TLS_TX, &ci, len) < 0)
        r = -errno;
    OPENSSL_cleanse(&ci, sizeof ci);
    return r;
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
