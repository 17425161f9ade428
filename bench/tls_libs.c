/*
 * tls_libs: the TLS library as a measured choice (DESIGN.md law 8).
 *
 * One process, one thread, no sockets: a client and a server of the same
 * library talk through two in-memory byte queues (a BIO of ours for
 * OpenSSL, I/O callbacks for wolfSSL), so that what is timed is the
 * library's work and nothing of the kernel's. Built once per library:
 *
 *   gcc -O2 -DLIB_OPENSSL bench/tls_libs.c -o tls_libs-openssl -lssl -lcrypto -ldl
 *   gcc -O2 -DLIB_WOLFSSL bench/tls_libs.c -o tls_libs-wolfssl -lwolfssl -ldl
 *   tls_libs-openssl -c cert.pem -k key.pem [-t SECONDS per figure] [-n ROUND_TRIPS]
 *
 * TLS 1.3 only, TLS_AES_128_GCM_SHA256, X25519 (the only group either side
 * offers: no HelloRetryRequest), the certificate an ECDSA P-256 one. One
 * session ticket per handshake on both libraries (uproxy's setting), no
 * server session cache (stateless tickets). What it measures:
 *
 *   full      full handshakes, a new client and server object each, the
 *             client consuming the server's ticket; the server's and the
 *             client's time apart (the server's is the proxy's cost)
 *   resumed   the same, each client offering the ticket of the previous
 *             connection (psk_dhe_ke: X25519 still, no signature); the
 *             count of handshakes that really resumed is printed
 *   keepalive an established connection: an 80-byte request one way, a
 *             200-byte response back (a keep-alive HTTP exchange); time,
 *             malloc-family calls and pthread lock calls per round trip,
 *             each side apart, after a warm-up
 *   records   16 KiB application records: the server's seal (encrypt) and
 *             the client's open (decrypt) in MB/s
 *
 * malloc, calloc, realloc, the aligned allocators and the pthread mutex
 * and rwlock lock calls are interposed by this executable (it exports
 * them, -rdynamic), so every call the library makes through them is
 * counted, per side. The harness's own allocations are not counted.
 *
 * Output: one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- counters: allocations and locks, per side --------------------------- */
enum { SIDE_NONE, SIDE_CLIENT, SIDE_SERVER };
static int side;                       /* who is running now (SIDE_NONE: not counted) */
static unsigned long allocs[3], locks[3];

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

void *malloc(size_t n) { allocs[side]++; return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { allocs[side]++; return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { allocs[side]++; return __libc_realloc(p, n); }
void *memalign(size_t a, size_t n) { allocs[side]++; return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { allocs[side]++; return __libc_memalign(a, n); }
int posix_memalign(void **p, size_t a, size_t n)
{
    allocs[side]++;
    *p = __libc_memalign(a, n);
    return *p ? 0 : 12;
}

#define LOCKFN(name, type)                                                   \
    int name(type *l)                                                        \
    {                                                                        \
        static int (*real)(type *);                                          \
        if (!real)                                                           \
            real = (int (*)(type *))dlsym(RTLD_NEXT, #name);                 \
        locks[side]++;                                                       \
        return real(l);                                                      \
    }
LOCKFN(pthread_mutex_lock, pthread_mutex_t)
LOCKFN(pthread_mutex_trylock, pthread_mutex_t)
LOCKFN(pthread_rwlock_rdlock, pthread_rwlock_t)
LOCKFN(pthread_rwlock_wrlock, pthread_rwlock_t)
LOCKFN(pthread_rwlock_tryrdlock, pthread_rwlock_t)
LOCKFN(pthread_rwlock_trywrlock, pthread_rwlock_t)

/* ---- time ------------------------------------------------------------------ */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t t_side[3];             /* ns spent in library calls, per side */
static uint64_t t_mark;
static int in_side(int s)              /* start timing a library call */
{
    side = s;
    t_mark = now_ns();
    return 0;
}
static void out_side(void)
{
    t_side[side] += now_ns() - t_mark;
    side = SIDE_NONE;
}
#define ON(s, expr) (in_side(s), _ret = (expr), out_side(), _ret)
#define DO(s, stmt) do { in_side(s); stmt; out_side(); } while (0)

/* ---- two byte queues: client -> server and server -> client -------------- */
struct q {
    unsigned char buf[1 << 18];
    size_t r, w;
};
static struct q c2s, s2c;

static int q_put(struct q *q, const void *p, size_t n)
{
    if (q->r == q->w)
        q->r = q->w = 0;
    if (q->w + n > sizeof q->buf) {
        memmove(q->buf, q->buf + q->r, q->w - q->r);
        q->w -= q->r;
        q->r = 0;
        if (q->w + n > sizeof q->buf)
            n = sizeof q->buf - q->w;
    }
    memcpy(q->buf + q->w, p, n);
    q->w += n;
    return (int)n;
}

static int q_get(struct q *q, void *p, size_t n)
{
    size_t have = q->w - q->r;
    if (n > have)
        n = have;
    memcpy(p, q->buf + q->r, n);
    q->r += n;
    return (int)n;
}

static void die(const char *what)
{
    fprintf(stderr, "tls_libs: %s\n", what);
    exit(2);
}

/* ======================================================================== */
#if defined(LIB_OPENSSL)
#include <openssl/err.h>
#include <openssl/ssl.h>

typedef SSL conn_t;
typedef SSL_SESSION sess_t;
static SSL_CTX *sctx, *cctx;
static BIO_METHOD *bm;

/* A BIO over one queue for reading and the other for writing: data is the
 * side (client or server). */
static int bio_write(BIO *b, const char *p, int n)
{
    BIO_clear_retry_flags(b);
    return q_put(BIO_get_data(b) == (void *)1 ? &c2s : &s2c, p, (size_t)n);
}
static int bio_read(BIO *b, char *p, int n)
{
    BIO_clear_retry_flags(b);
    int got = q_get(BIO_get_data(b) == (void *)1 ? &s2c : &c2s, p, (size_t)n);
    if (got == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    return got;
}
static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b; (void)num; (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}
static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static const char *lib_name(void) { return OpenSSL_version(OPENSSL_VERSION); }

static void lib_init(const char *cert, const char *key, int release_buffers)
{
    OPENSSL_init_ssl(0, NULL);
    sctx = SSL_CTX_new(TLS_server_method());
    cctx = SSL_CTX_new(TLS_client_method());
    if (!sctx || !cctx)
        die("SSL_CTX_new");
    for (int i = 0; i < 2; i++) {
        SSL_CTX *c = i ? cctx : sctx;
        SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
        SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION);
        if (!SSL_CTX_set_ciphersuites(c, "TLS_AES_128_GCM_SHA256") || !SSL_CTX_set1_groups_list(c, "X25519"))
            die("ciphersuites or groups");
        if (release_buffers)
            SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
        else
            SSL_CTX_clear_mode(c, SSL_MODE_RELEASE_BUFFERS);
    }
    if (SSL_CTX_use_certificate_chain_file(sctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(sctx, key, SSL_FILETYPE_PEM) != 1)
        die("the certificate or key did not load");
    SSL_CTX_set_session_cache_mode(sctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(sctx, 1);
    SSL_CTX_set_options(sctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(cctx, SSL_SESS_CACHE_OFF);
    bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tls_libs");
    BIO_meth_set_write(bm, bio_write);
    BIO_meth_set_read(bm, bio_read);
    BIO_meth_set_ctrl(bm, bio_ctrl);
    BIO_meth_set_create(bm, bio_create);
}

/* The harness's part of a new connection (its BIO) is not counted. */
static conn_t *lib_new(int server)
{
    int s = side;
    side = SIDE_NONE;
    BIO *b = BIO_new(bm);
    BIO_set_data(b, server ? (void *)2 : (void *)1);
    side = s;
    SSL *ssl = SSL_new(server ? sctx : cctx);
    if (!ssl)
        die("SSL_new");
    SSL_set_bio(ssl, b, b);
    if (server)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    return ssl;
}
static void lib_set_session(conn_t *c, sess_t *s) { SSL_set_session(c, s); }
static sess_t *lib_get_session(conn_t *c) { return SSL_get1_session(c); }
static void lib_free_session(sess_t *s) { SSL_SESSION_free(s); }
static void lib_free(conn_t *c) { SSL_free(c); }
/* close_notify: without it OpenSSL marks the session not resumable */
static void lib_shutdown(conn_t *c) { SSL_shutdown(c); }
static int lib_resumed(conn_t *c) { return SSL_session_reused(c); }

/* 1 done, 0 wants the peer, -1 failed */
static int lib_handshake(conn_t *c)
{
    int r = SSL_do_handshake(c);
    if (r == 1)
        return 1;
    int e = SSL_get_error(c, r);
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
}
static int lib_read(conn_t *c, void *p, int n)
{
    int r = SSL_read(c, p, n);
    if (r > 0)
        return r;
    int e = SSL_get_error(c, r);
    return e == SSL_ERROR_WANT_READ ? 0 : -1;
}
static int lib_write(conn_t *c, const void *p, int n)
{
    int r = SSL_write(c, p, n);
    return r > 0 ? r : -1;
}
static void lib_describe(conn_t *c, char *out, size_t n)
{
    int g = SSL_get_negotiated_group(c);
    snprintf(out, n, "%s %s %s", SSL_get_version(c), SSL_get_cipher_name(c),
             g == NID_X25519 ? "X25519" : OBJ_nid2sn(g & ~TLSEXT_nid_unknown));
}
static void lib_errors(void) { ERR_print_errors_fp(stderr); }

/* ======================================================================== */
#elif defined(LIB_WOLFSSL)
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/version.h>

typedef WOLFSSL conn_t;
typedef WOLFSSL_SESSION sess_t;
static WOLFSSL_CTX *sctx, *cctx;
static char side_c = 1, side_s = 2;

static int io_send(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    (void)ssl;
    return q_put(*(char *)ctx == 1 ? &c2s : &s2c, buf, (size_t)sz);
}
static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    (void)ssl;
    int got = q_get(*(char *)ctx == 1 ? &s2c : &c2s, buf, (size_t)sz);
    return got ? got : WOLFSSL_CBIO_ERR_WANT_READ;
}

static const char *lib_name(void)
{
    static char v[64];
    snprintf(v, sizeof v, "wolfSSL %s", wolfSSL_lib_version());
    return v;
}

static void lib_init(const char *cert, const char *key, int release_buffers)
{
    (void)release_buffers;
    wolfSSL_Init();
    sctx = wolfSSL_CTX_new(wolfTLSv1_3_server_method());
    cctx = wolfSSL_CTX_new(wolfTLSv1_3_client_method());
    if (!sctx || !cctx)
        die("wolfSSL_CTX_new");
    int groups[] = {WOLFSSL_ECC_X25519};
    for (int i = 0; i < 2; i++) {
        WOLFSSL_CTX *c = i ? cctx : sctx;
        if (wolfSSL_CTX_set_cipher_list(c, "TLS13-AES128-GCM-SHA256") != WOLFSSL_SUCCESS ||
            wolfSSL_CTX_set_groups(c, groups, 1) != WOLFSSL_SUCCESS)
            die("cipher list or groups");
        wolfSSL_CTX_SetIORecv(c, io_recv);
        wolfSSL_CTX_SetIOSend(c, io_send);
    }
    if (wolfSSL_CTX_use_certificate_chain_file(sctx, cert) != WOLFSSL_SUCCESS ||
        wolfSSL_CTX_use_PrivateKey_file(sctx, key, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS)
        die("the certificate or key did not load");
    wolfSSL_CTX_set_session_cache_mode(sctx, WOLFSSL_SESS_CACHE_OFF);
    wolfSSL_CTX_set_num_tickets(sctx, 1);
    wolfSSL_CTX_set_verify(cctx, WOLFSSL_VERIFY_NONE, NULL);
    wolfSSL_CTX_set_session_cache_mode(cctx, WOLFSSL_SESS_CACHE_OFF);
}

static conn_t *lib_new(int server)
{
    WOLFSSL *ssl = wolfSSL_new(server ? sctx : cctx);
    if (!ssl)
        die("wolfSSL_new");
    wolfSSL_SetIOReadCtx(ssl, server ? &side_s : &side_c);
    wolfSSL_SetIOWriteCtx(ssl, server ? &side_s : &side_c);
    if (!server)
        wolfSSL_UseKeyShare(ssl, WOLFSSL_ECC_X25519);
    return ssl;
}
static void lib_set_session(conn_t *c, sess_t *s) { wolfSSL_set_session(c, s); }
static sess_t *lib_get_session(conn_t *c) { return wolfSSL_get1_session(c); }
static void lib_free_session(sess_t *s) { wolfSSL_SESSION_free(s); }
static void lib_free(conn_t *c) { wolfSSL_free(c); }
static void lib_shutdown(conn_t *c) { wolfSSL_shutdown(c); }
static int lib_resumed(conn_t *c) { return wolfSSL_session_reused(c); }

static int lib_handshake(conn_t *c)
{
    int r = wolfSSL_GetSide(c) == WOLFSSL_SERVER_END ? wolfSSL_accept(c) : wolfSSL_connect(c);
    if (r == WOLFSSL_SUCCESS)
        return 1;
    int e = wolfSSL_get_error(c, r);
    return e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE ? 0 : -1;
}
static int lib_read(conn_t *c, void *p, int n)
{
    int r = wolfSSL_read(c, p, n);
    if (r > 0)
        return r;
    int e = wolfSSL_get_error(c, r);
    return e == WOLFSSL_ERROR_WANT_READ ? 0 : -1;
}
static int lib_write(conn_t *c, const void *p, int n)
{
    int r = wolfSSL_write(c, p, n);
    return r > 0 ? r : -1;
}
static void lib_describe(conn_t *c, char *out, size_t n)
{
    const char *g = wolfSSL_get_curve_name(c);
    snprintf(out, n, "%s %s %s", wolfSSL_get_version(c), wolfSSL_get_cipher_name(c), g ? g : "?");
}
static void lib_errors(void) {}

#else
#error "build with -DLIB_OPENSSL or -DLIB_WOLFSSL"
#endif

/* ==== the measurements ======================================================== */
static char negotiated[128];

/* A phase's per-side times are wall-clock sums of library calls; on a
 * shared machine another process can take the CPU in the middle of a call.
 * The phase's own CPU time (this thread's) over its wall time scales them
 * back to CPU time. */
static uint64_t phase_wall, phase_cpu;
static double phase_share;

static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void reset_counts(void)
{
    memset(t_side, 0, sizeof t_side);
    memset(allocs, 0, sizeof allocs);
    memset(locks, 0, sizeof locks);
    phase_wall = now_ns();
    phase_cpu = cpu_ns();
}

static void end_phase(void)
{
    double wall = (double)(now_ns() - phase_wall), cpu = (double)(cpu_ns() - phase_cpu);
    phase_share = wall > 0 && cpu < wall ? cpu / wall : 1.0;
    for (int i = 0; i < 3; i++)
        t_side[i] = (uint64_t)((double)t_side[i] * phase_share);
}

/* One connection: handshake, the client reading the ticket, both freed.
 * Returns whether it resumed; *ticket is replaced by the new session when
 * asked for. */
static int one_connection(sess_t **ticket, int keep_ticket)
{
    int _ret;
    c2s.r = c2s.w = s2c.r = s2c.w = 0;
    conn_t *cl, *sv;
    in_side(SIDE_CLIENT); cl = lib_new(0); out_side();
    in_side(SIDE_SERVER); sv = lib_new(1); out_side();
    if (ticket && *ticket)
        DO(SIDE_CLIENT, lib_set_session(cl, *ticket));
    int dc = 0, ds = 0;
    for (int turns = 0; !(dc && ds); turns++) {
        if (turns > 20) {
            lib_errors();
            die("the handshake did not complete");
        }
        if (!dc) {
            dc = ON(SIDE_CLIENT, lib_handshake(cl));
            if (dc < 0) {
                lib_errors();
                die("client handshake failed");
            }
        }
        if (!ds) {
            ds = ON(SIDE_SERVER, lib_handshake(sv));
            if (ds < 0) {
                lib_errors();
                die("server handshake failed");
            }
        }
    }
    /* The server's ticket (sent with or after its handshake's end) is read
     * by the client, as a client reading its first response would. */
    char b[64];
    if (ON(SIDE_CLIENT, lib_read(cl, b, sizeof b)) < 0) {
        lib_errors();
        die("client read (ticket) failed");
    }
    int resumed = lib_resumed(sv);
    if (!negotiated[0])
        lib_describe(sv, negotiated, sizeof negotiated);
    /* Both ends close with close_notify, as a client and a proxy do after
     * "Connection: close". */
    DO(SIDE_CLIENT, lib_shutdown(cl));
    DO(SIDE_SERVER, lib_shutdown(sv));
    if (keep_ticket && ticket) {
        sess_t *s;
        in_side(SIDE_CLIENT);
        s = lib_get_session(cl);
        if (*ticket)
            lib_free_session(*ticket);
        out_side();
        *ticket = s;
    }
    DO(SIDE_CLIENT, lib_free(cl));
    DO(SIDE_SERVER, lib_free(sv));
    return resumed;
}

struct hs { long n, resumed; double cpu_share, server_us, client_us, server_allocs, server_locks, client_allocs; };

static struct hs handshakes(double seconds, int resume)
{
    sess_t *ticket = NULL;
    for (int i = 0; i < 20; i++)               /* warm-up */
        one_connection(resume ? &ticket : NULL, resume);
    reset_counts();
    struct hs h = {0};
    uint64_t end = now_ns() + (uint64_t)(seconds * 1e9);
    while (h.n < 20 || now_ns() < end) {
        h.resumed += one_connection(resume ? &ticket : NULL, resume);
        h.n++;
    }
    end_phase();
    h.cpu_share = phase_share;
    h.server_us = t_side[SIDE_SERVER] / 1e3 / h.n;
    h.client_us = t_side[SIDE_CLIENT] / 1e3 / h.n;
    h.server_allocs = (double)allocs[SIDE_SERVER] / h.n;
    h.server_locks = (double)locks[SIDE_SERVER] / h.n;
    h.client_allocs = (double)allocs[SIDE_CLIENT] / h.n;
    if (ticket)
        lib_free_session(ticket);
    return h;
}

static void pair(conn_t **cl, conn_t **sv)
{
    int _ret;
    c2s.r = c2s.w = s2c.r = s2c.w = 0;
    *cl = lib_new(0);
    *sv = lib_new(1);
    int dc = 0, ds = 0;
    for (int turns = 0; !(dc && ds) && turns < 20; turns++) {
        if (!dc)
            dc = ON(SIDE_CLIENT, lib_handshake(*cl));
        if (!ds)
            ds = ON(SIDE_SERVER, lib_handshake(*sv));
        if (dc < 0 || ds < 0)
            break;
    }
    if (dc != 1 || ds != 1) {
        lib_errors();
        die("handshake for the established connection failed");
    }
}

static void read_all(int s, conn_t *c, char *buf, int want)
{
    int _ret, got = 0;
    while (got < want) {
        int r = ON(s, lib_read(c, buf + got, want - got));
        if (r <= 0) {
            lib_errors();
            die("read: short");
        }
        got += r;
    }
}

struct ka { long n; double server_us, client_us, server_allocs, client_allocs, server_locks, client_locks; };

static struct ka keepalive(long n)
{
    int _ret;
    conn_t *cl, *sv;
    pair(&cl, &sv);
    static char req[80], resp[200], buf[4096];
    memset(req, 'q', sizeof req);
    memset(resp, 'r', sizeof resp);
    struct ka k = {0};
    for (int phase = 0; phase < 2; phase++) {
        long count = phase ? n : 2000;
        reset_counts();
        for (long i = 0; i < count; i++) {
            if (ON(SIDE_CLIENT, lib_write(cl, req, sizeof req)) != (int)sizeof req)
                die("client write");
            read_all(SIDE_SERVER, sv, buf, sizeof req);
            if (ON(SIDE_SERVER, lib_write(sv, resp, sizeof resp)) != (int)sizeof resp)
                die("server write");
            read_all(SIDE_CLIENT, cl, buf, sizeof resp);
        }
        end_phase();
    }
    k.n = n;
    k.server_us = t_side[SIDE_SERVER] / 1e3 / n;
    k.client_us = t_side[SIDE_CLIENT] / 1e3 / n;
    k.server_allocs = (double)allocs[SIDE_SERVER] / n;
    k.client_allocs = (double)allocs[SIDE_CLIENT] / n;
    k.server_locks = (double)locks[SIDE_SERVER] / n;
    k.client_locks = (double)locks[SIDE_CLIENT] / n;
    lib_free(cl);
    lib_free(sv);
    return k;
}

struct rec { long n; double seal_mb_s, open_mb_s, server_allocs; };

static struct rec records(double seconds)
{
    int _ret;
    conn_t *cl, *sv;
    pair(&cl, &sv);
    static char big[16384], buf[16384];
    memset(big, 'b', sizeof big);
    struct rec r = {0};
    for (int phase = 0; phase < 2; phase++) {
        reset_counts();
        uint64_t end = now_ns() + (uint64_t)((phase ? seconds : 0.05) * 1e9);
        long i = 0;
        while (i < 100 || now_ns() < end) {
            for (int j = 0; j < 16; j++, i++) {
                if (ON(SIDE_SERVER, lib_write(sv, big, sizeof big)) != (int)sizeof big)
                    die("16 KiB write");
                read_all(SIDE_CLIENT, cl, buf, sizeof buf);
            }
        }
        end_phase();
        r.n = i;
    }
    r.seal_mb_s = (double)r.n * sizeof big / (t_side[SIDE_SERVER] / 1e3);
    r.open_mb_s = (double)r.n * sizeof big / (t_side[SIDE_CLIENT] / 1e3);
    r.server_allocs = (double)allocs[SIDE_SERVER] / r.n;
    lib_free(cl);
    lib_free(sv);
    return r;
}

int main(int argc, char **argv)
{
    const char *cert = NULL, *key = NULL;
    double seconds = 2.0;
    long n = 100000;
    int release = 0, opt;
    while ((opt = getopt(argc, argv, "c:k:t:n:R")) != -1) {
        switch (opt) {
        case 'c': cert = optarg; break;
        case 'k': key = optarg; break;
        case 't': seconds = atof(optarg); break;
        case 'n': n = atol(optarg); break;
        case 'R': release = 1; break;     /* OpenSSL: SSL_MODE_RELEASE_BUFFERS (nginx's setting) */
        default:
            fprintf(stderr, "usage: tls_libs -c CERT -k KEY [-t SECONDS] [-n ROUND_TRIPS] [-R]\n");
            return 2;
        }
    }
    if (!cert || !key)
        die("-c CERT and -k KEY are needed");
    lib_init(cert, key, release);
    struct hs full = handshakes(seconds, 0);
    struct hs res = handshakes(seconds, 1);
    struct ka ka = keepalive(n);
    struct rec rec = records(seconds);
    printf("{\"library\": \"%s\", \"release_buffers\": %d, \"negotiated\": \"%s\", \"cpu_share\": %.2f,\n"
           " \"full\": {\"n\": %ld, \"resumed\": %ld, \"server_us\": %.2f, \"client_us\": %.2f, "
           "\"server_per_s\": %.0f, \"pair_per_s\": %.0f, \"server_allocs\": %.1f, \"server_locks\": %.1f, "
           "\"client_allocs\": %.1f},\n"
           " \"resumed\": {\"n\": %ld, \"resumed\": %ld, \"server_us\": %.2f, \"client_us\": %.2f, "
           "\"server_per_s\": %.0f, \"pair_per_s\": %.0f, \"server_allocs\": %.1f, \"server_locks\": %.1f, "
           "\"client_allocs\": %.1f},\n"
           " \"keepalive\": {\"n\": %ld, \"server_us\": %.3f, \"client_us\": %.3f, \"server_allocs\": %.3f, "
           "\"client_allocs\": %.3f, \"server_locks\": %.3f, \"client_locks\": %.3f},\n"
           " \"records16k\": {\"n\": %ld, \"seal_mb_s\": %.0f, \"open_mb_s\": %.0f, \"server_allocs\": %.3f}}\n",
           lib_name(), release, negotiated, full.cpu_share < res.cpu_share ? full.cpu_share : res.cpu_share,
           full.n, full.resumed, full.server_us, full.client_us, 1e6 / full.server_us,
           1e6 / (full.server_us + full.client_us), full.server_allocs, full.server_locks, full.client_allocs,
           res.n, res.resumed, res.server_us, res.client_us, 1e6 / res.server_us,
           1e6 / (res.server_us + res.client_us), res.server_allocs, res.server_locks, res.client_allocs,
           ka.n, ka.server_us, ka.client_us, ka.server_allocs, ka.client_allocs, ka.server_locks,
           ka.client_locks, rec.n, rec.seal_mb_s, rec.open_mb_s, rec.server_allocs);
    return 0;
}
