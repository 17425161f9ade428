/*
 * TLS contexts: what a listener or a cluster's TLS settings become in the
 * library (OpenSSL), one set per worker so that no library object is shared
 * between workers. Built by the control plane when it publishes a table,
 * freed with the table; connections hold their own reference, so a context
 * outlives the table while handshakes made with it live.
 *
 * The library's callbacks (SNI, session tickets) live in this file and in
 * tls.c only (DESIGN.md law 8); they read plain arrays, never call up.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include "transport/tls.h"

/* The settings a context's callbacks read live as long as the last
 * context does: a handshake that began on a table that is then freed still
 * finds its names and ticket keys. Each context holds a reference through
 * its ex_data, dropped by the library when the context goes (on whichever
 * thread frees the last connection), hence the atomic count. */
static int ref_index = -1;

static void server_put(struct tls_server *s)
{
    if (__atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL))
        return;
    free(s->names);
    EVP_CIPHER_free(s->ticket_cipher);
    for (uint32_t i = 0; i < s->nacme; i++)
        if (s->acme[i].ctx)
            SSL_CTX_free(s->acme[i].ctx);   /* a validator's SSL keeps its own reference */
    free(s->acme);
    if (s->keys) {
        OPENSSL_cleanse(s->keys, 80 * (size_t)s->nkeys);
        free(s->keys);
    }
    free(s);
}

static void ref_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (ptr)
        server_put(ptr);
}

static SSL_CTX *ctx_new(struct tls_server *s, const SSL_METHOD *m)
{
    if (ref_index < 0)      /* the control plane's thread, the only caller */
        ref_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, ref_free);
    SSL_CTX *c = SSL_CTX_new(m);
    if (c && ref_index >= 0) {
        __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
        SSL_CTX_set_ex_data(c, ref_index, s);
    }
    /* No key log here: a worker sets it on its own contexts only if its
     * connections need it (tp_ktls_conn_start). */
    return c;
}

static void fail(char *err, size_t n, const char *what, const char *file)
{
    unsigned long e = ERR_peek_last_error();
    char lib[200] = "";
    if (e)
        ERR_error_string_n(e, lib, sizeof lib);
    ERR_clear_error();
    snprintf(err, n, "%s%s%s%s%s", what, file ? " " : "", file ? file : "", lib[0] ? ": " : "", lib);
}

/* The client's name picks the context: exact first, then "*.rest" (one
 * label only, as certificates match), else the default context 0. */
static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    const struct tls_server *s = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name || s->nnames == 0)
        return SSL_TLSEXT_ERR_OK;
    size_t len = strlen(name);
    if (len && name[len - 1] == '.')
        len--;                           /* a fully qualified name */
    const char *dot = memchr(name, '.', len);
    int hit = -1;
    for (uint32_t i = 0; i < s->nnames && hit < 0; i++)
        if (!s->names[i].wildcard && s->names[i].len == len &&
            strncasecmp(s->names[i].name, name, len) == 0)
            hit = (int)s->names[i].ctx;
    for (uint32_t i = 0; i < s->nnames && hit < 0 && dot; i++) {
        size_t rest = len - (size_t)(dot - name);    /* ".example.com" */
        if (s->names[i].wildcard && (size_t)s->names[i].len - 1 == rest &&
            strncasecmp(s->names[i].name + 1, dot, rest) == 0)
            hit = (int)s->names[i].ctx;
    }
    if (hit > 0)
        SSL_set_SSL_CTX(ssl, s->ctx[hit]);
    return SSL_TLSEXT_ERR_OK;
}

/* TLS-ALPN-01 (RFC 8737): an ACME validator offers acme-tls/1 alone, for
 * the name it validates. It gets that name's challenge certificate (the
 * context is switched here, before the library picks a certificate) and
 * acme-tls/1; a name without a challenge is refused with the alert the RFC
 * names. Other clients never see acme-tls/1. */
static const unsigned char ACME_TLS1[] = "\x0a" "acme-tls/1";

static bool acme_offered(const unsigned char *in, unsigned int inlen)
{
    for (unsigned int i = 0; i < inlen; i += 1u + in[i])
        if (in[i] == 10 && i + 11 <= inlen && memcmp(in + i, ACME_TLS1, 11) == 0)
            return true;
    return false;
}

static int acme_select(SSL *ssl, const struct tls_server *s, const unsigned char **out,
                       unsigned char *outlen)
{
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    size_t len = name ? strlen(name) : 0;
    if (len && name[len - 1] == '.')
        len--;
    for (uint32_t i = 0; i < s->nacme && len; i++)
        if (s->acme[i].len == len && strncasecmp(s->acme[i].name, name, len) == 0) {
            SSL_set_SSL_CTX(ssl, s->acme[i].ctx);
            *out = ACME_TLS1 + 1;
            *outlen = 10;
            return SSL_TLSEXT_ERR_OK;
        }
    return SSL_TLSEXT_ERR_ALERT_FATAL;      /* no_application_protocol */
}

/* ALPN: the first of our protocols (in our order) that the client offers;
 * a client offering none of them gets the handshake without ALPN. */
static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    const struct tls_server *s = arg;
    if (__builtin_expect(s->acme_alpn, 0) && acme_offered(in, inlen))
        return acme_select(ssl, s, out, outlen);
    if (!s->alpn_len)
        return SSL_TLSEXT_ERR_NOACK;
    unsigned char *o;
    if (SSL_select_next_proto(&o, outlen, s->alpn, s->alpn_len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

/* Session tickets with keys the control plane gives every worker (and,
 * from a file, every instance): the first key issues, all of them are
 * accepted, so a rotation never breaks a resumption. */
static int ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                     EVP_CIPHER_CTX *ectx, EVP_MAC_CTX *hctx, int enc)
{
    SSL_CTX *sc = SSL_get_SSL_CTX(ssl);
    const struct tls_server *s = SSL_CTX_get_app_data(sc);
    if (!s || !s->nkeys)
        return -1;
    const uint8_t *k = NULL;
    int renew = 0;
    if (enc) {
        k = s->keys;
        memcpy(key_name, k, 16);
        if (RAND_bytes(iv, 16) <= 0)
            return -1;
    } else {
        for (uint32_t i = 0; i < s->nkeys; i++)
            if (memcmp(key_name, s->keys + 80 * i, 16) == 0) {
                k = s->keys + 80 * i;
                renew = i != 0;          /* issued under an older key: renew */
                break;
            }
        if (!k)
            return 0;                    /* unknown key: a full handshake */
    }
    /* A key is 16 bytes of name, 32 of HMAC key, 32 of AES key. */
    OSSL_PARAM p2[3] = {
        OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string("key", (void *)(k + 16), 32),
        OSSL_PARAM_construct_end(),
    };
    if (!EVP_MAC_CTX_set_params(hctx, p2))
        return -1;
    /* The cipher fetched once with the context: EVP_aes_256_cbc() would
     * make the library fetch it by name on every ticket. (The HMAC's
     * digest above is a name the library looks up per ticket: a MAC
     * context takes its digest by name only.) */
    const EVP_CIPHER *cbc = s->ticket_cipher ? s->ticket_cipher : EVP_aes_256_cbc();
    if (enc) {
        if (!EVP_EncryptInit_ex(ectx, cbc, NULL, k + 48, iv))
            return -1;
        return 1;
    }
    if (!EVP_DecryptInit_ex(ectx, cbc, NULL, k + 48, iv))
        return -1;
    /* 2: accept and issue a new ticket. Always in TLS 1.3, where clients
     * use a ticket once (RFC 8446 appendix C.4): without a fresh one, every
     * other connection would be a full handshake. */
    return renew || SSL_version(ssl) == TLS1_3_VERSION ? 2 : 1;
}

static int version_of(uint32_t v)
{
    return v == 0x0304 ? TLS1_3_VERSION : TLS1_2_VERSION;
}

/* What every context of ours has: modern defaults, no renegotiation, no
 * compression, partial writes never needed (our writes always fit). */
static int common(SSL_CTX *c, uint32_t min_version, const char *ciphers, const char *suites,
                  const char *groups, char *err, size_t n)
{
    SSL_CTX_set_min_proto_version(c, version_of(min_version));
    SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                           SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Our buffers are provided per read: the library's own buffers would be
     * freed and allocated again per record with RELEASE_BUFFERS, so it is
     * not set (no allocation per request after the handshake). */
    SSL_CTX_clear_mode(c, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(c, 1);
    if (ciphers && *ciphers && !SSL_CTX_set_cipher_list(c, ciphers)) {
        fail(err, n, "no usable TLS 1.2 cipher in", ciphers);
        return -1;
    }
    if (suites && *suites && !SSL_CTX_set_ciphersuites(c, suites)) {
        fail(err, n, "no usable TLS 1.3 suite in", suites);
        return -1;
    }
    /* The library's own default adds X448 and P-521, which no client
     * needs and scanners flag (Mozilla's profiles stop at P-384). */
    if (groups && *groups && !SSL_CTX_set1_groups_list(c, groups)) {
        fail(err, n, "no usable curve in", groups);
        return -1;
    }
    return 0;
}

/* The challenge certificates' contexts (TLS-ALPN-01), built with the
 * table like the listener's own, so that a validator's handshake reads
 * nothing the control plane may change. */
static int acme_load(struct tls_server *s, const struct up_tls_server *conf, char *err, size_t n)
{
    s->acme_alpn = conf->acme_alpn != 0;
    if (!conf->nacme)
        return 0;
    s->acme = calloc(conf->nacme, sizeof *s->acme);
    if (!s->acme) {
        snprintf(err, n, "out of memory");
        return -1;
    }
    s->nacme = conf->nacme;
    for (uint32_t i = 0; i < conf->nacme; i++) {
        const struct up_tls_acme *a = &conf->acme[i];
        size_t l = strlen(a->name);
        SSL_CTX *c = SSL_CTX_new(TLS_server_method());
        if (!c || l >= sizeof s->acme[i].name) {
            if (c)
                SSL_CTX_free(c);
            fail(err, n, "ACME challenge context for", a->name);
            return -1;
        }
        s->acme[i].ctx = c;
        memcpy(s->acme[i].name, a->name, l + 1);
        s->acme[i].len = (uint16_t)l;
        SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
        SSL_CTX_set_options(c, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
        SSL_CTX_set_num_tickets(c, 0);
        if (SSL_CTX_use_certificate_file(c, a->cert, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_use_PrivateKey_file(c, a->key, SSL_FILETYPE_PEM) != 1) {
            fail(err, n, "ACME challenge certificate", a->cert);
            return -1;
        }
    }
    return 0;
}

void *up_tls_server_new(const struct up_tls_server *conf, char *err, size_t errlen)
{
    struct tls_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->refs = 1;
    s->server = 1;
    s->peer_cert = conf->peer_cert && conf->verify != UP_TLS_VERIFY_NONE;
    s->nctx = conf->nctx ? conf->nctx : 1;
    if (s->nctx > TLS_MAX_CTX) {
        snprintf(err, errlen, "too many certificate groups (%u, at most %u)", s->nctx, TLS_MAX_CTX);
        goto bad;
    }
    for (uint32_t i = 0; i < s->nctx; i++) {
        SSL_CTX *c = ctx_new(s, TLS_server_method());
        if (!c) {
            fail(err, errlen, "TLS context:", NULL);
            goto bad;
        }
        s->ctx[i] = c;
        SSL_CTX_set_app_data(c, s);
        if (common(c, conf->min_version, conf->ciphers, conf->ciphersuites, conf->curves, err,
                   errlen) < 0)
            goto bad;
        SSL_CTX_set_tlsext_servername_callback(c, servername_cb);
        SSL_CTX_set_tlsext_servername_arg(c, s);
        if (conf->alpn_len || conf->acme_alpn)
            SSL_CTX_set_alpn_select_cb(c, alpn_cb, s);
        SSL_CTX_set_timeout(c, conf->session_timeout_s ? conf->session_timeout_s : 7200);
        if (conf->session_cache) {
            SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_SERVER);
            SSL_CTX_sess_set_cache_size(c, conf->session_cache);
            SSL_CTX_set_session_id_context(c, (const unsigned char *)"uproxy", 6);
        } else {
            SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
        }
        if (conf->nticket_keys) {
            SSL_CTX_set_tlsext_ticket_key_evp_cb(c, ticket_cb);
            SSL_CTX_set_num_tickets(c, 1);
        } else {
            SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
            SSL_CTX_set_num_tickets(c, 0);
        }
        if (conf->verify != UP_TLS_VERIFY_NONE) {
            int mode = SSL_VERIFY_PEER;
            if (conf->verify == UP_TLS_VERIFY_REQUIRED)
                mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
            if (!conf->client_ca || !SSL_CTX_load_verify_locations(c, conf->client_ca, NULL)) {
                fail(err, errlen, "client CA bundle", conf->client_ca ? conf->client_ca : "(none)");
                goto bad;
            }
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(conf->client_ca);
            if (names)
                SSL_CTX_set_client_CA_list(c, names);
            SSL_CTX_set_verify(c, mode, NULL);
            SSL_CTX_set_session_id_context(c, (const unsigned char *)"uproxy", 6);
        }
    }
    for (uint32_t i = 0; i < conf->ncerts; i++) {
        uint32_t k = conf->cert_ctx ? conf->cert_ctx[i] : 0;
        if (k >= s->nctx) {
            snprintf(err, errlen, "certificate %u: group %u out of range", i, k);
            goto bad;
        }
        SSL_CTX *c = s->ctx[k];
        if (SSL_CTX_use_certificate_chain_file(c, conf->certs[i].cert) != 1) {
            fail(err, errlen, "certificate", conf->certs[i].cert);
            goto bad;
        }
        if (SSL_CTX_use_PrivateKey_file(c, conf->certs[i].key, SSL_FILETYPE_PEM) != 1) {
            fail(err, errlen, "private key", conf->certs[i].key);
            goto bad;
        }
        if (SSL_CTX_check_private_key(c) != 1) {
            fail(err, errlen, "the private key does not match the certificate", conf->certs[i].cert);
            goto bad;
        }
    }
    if (conf->nnames > TLS_MAX_NAMES) {
        snprintf(err, errlen, "too many certificate names (%u, at most %u)", conf->nnames, TLS_MAX_NAMES);
        goto bad;
    }
    s->names = calloc(conf->nnames ? conf->nnames : 1, sizeof *s->names);
    if (!s->names)
        goto bad;
    for (uint32_t i = 0; i < conf->nnames; i++) {
        const char *nm = conf->names[i].name;
        size_t l = strlen(nm);
        if (l >= sizeof s->names[i].name || conf->names[i].ctx >= s->nctx)
            continue;
        memcpy(s->names[i].name, nm, l + 1);
        s->names[i].len = (uint16_t)l;
        s->names[i].wildcard = nm[0] == '*' && nm[1] == '.';
        s->names[i].ctx = (uint16_t)conf->names[i].ctx;
    }
    s->nnames = conf->nnames;
    if (conf->alpn_len) {
        if (conf->alpn_len > sizeof s->alpn) {
            snprintf(err, errlen, "ALPN list too long");
            goto bad;
        }
        memcpy(s->alpn, conf->alpn, conf->alpn_len);
        s->alpn_len = conf->alpn_len;
    }
    if (acme_load(s, conf, err, errlen) < 0)
        goto bad;
    if (conf->nticket_keys) {
        s->keys = malloc(80 * (size_t)conf->nticket_keys);
        if (!s->keys)
            goto bad;
        memcpy(s->keys, conf->ticket_keys, 80 * (size_t)conf->nticket_keys);
        s->nkeys = conf->nticket_keys;
        s->ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
        ERR_clear_error();
    }
    return s;
bad:
    up_tls_free(s);
    return NULL;
}

void *up_tls_client_new(const struct up_tls_client *conf, char *err, size_t errlen)
{
    struct tls_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->refs = 1;
    SSL_CTX *c = ctx_new(s, TLS_client_method());
    if (!c) {
        fail(err, errlen, "TLS context:", NULL);
        goto bad;
    }
    s->ctx[0] = c;
    s->nctx = 1;
    SSL_CTX_set_app_data(c, s);
    if (common(c, conf->min_version, NULL, NULL, NULL, err, errlen) < 0)
        goto bad;
    /* Sessions are kept by the connection's server slot (tls.c), so a
     * pooled connection to the same server resumes. */
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(c, tp_tls_new_session);
    if (conf->verify) {
        int ok = conf->ca ? SSL_CTX_load_verify_locations(c, conf->ca, NULL)
                          : SSL_CTX_set_default_verify_paths(c);
        if (ok != 1) {
            fail(err, errlen, "CA bundle", conf->ca ? conf->ca : "(the system's)");
            goto bad;
        }
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL);
    }
    if (conf->cert && conf->key) {
        if (SSL_CTX_use_certificate_chain_file(c, conf->cert) != 1) {
            fail(err, errlen, "client certificate", conf->cert);
            goto bad;
        }
        if (SSL_CTX_use_PrivateKey_file(c, conf->key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(c) != 1) {
            fail(err, errlen, "client key", conf->key);
            goto bad;
        }
    }
    if (conf->alpn_len && SSL_CTX_set_alpn_protos(c, conf->alpn, conf->alpn_len) != 0) {
        fail(err, errlen, "ALPN", NULL);
        goto bad;
    }
    s->verify = conf->verify;
    if (conf->sni) {
        size_t l = strlen(conf->sni);
        if (l >= sizeof s->sni) {
            snprintf(err, errlen, "SNI name too long");
            goto bad;
        }
        memcpy(s->sni, conf->sni, l + 1);
    }
    return s;
bad:
    up_tls_free(s);
    return NULL;
}

void up_tls_free(void *p)
{
    struct tls_server *s = p;
    if (!s)
        return;
    for (uint32_t i = 0; i < TLS_MAX_CTX; i++) {
        SSL_CTX *c = s->ctx[i];
        s->ctx[i] = NULL;
        if (c)
            SSL_CTX_free(c);      /* its reference goes when its last connection does */
    }
    server_put(s);
}

int up_tls_ktls_available(void)
{
    /* The real question: does this kernel take the tls ULP on an
     * established TCP socket? A loopback pair answers it. */
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), c = -1, a = -1, ok = 0;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof sa;
    if (l < 0)
        return 0;
    if (bind(l, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(l, 1) < 0 ||
        getsockname(l, (struct sockaddr *)&sa, &sl) < 0)
        goto out;
    c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&sa, sizeof sa) < 0)
        goto out;
    a = accept(l, NULL, NULL);
    ok = setsockopt(c, SOL_TCP, TCP_ULP, "tls", sizeof "tls") == 0;
out:
    if (a >= 0)
        close(a);
    if (c >= 0)
        close(c);
    close(l);
    return ok;
}

const char *up_tls_library(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}
