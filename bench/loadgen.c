/*
 * loadgen: a small HTTP/1.1 load generator for scripts/bench.
 *
 * Two modes:
 *
 *   rate (open loop):   loadgen -a 127.0.0.1:8080 -p /64 -c 64 -r 20000 -d 10 -w 2
 *       Offers a constant request rate, as wrk2 does: connection k sends its
 *       i-th request at t0 + (k + i*C) / R. Latency is measured from the time
 *       a request was *scheduled*, not from when it could be sent, so a
 *       stalled server is charged for every request it kept waiting
 *       (coordinated omission corrected). Requests that were due but not yet
 *       sent when the run ends are recorded with latency (end - scheduled),
 *       a lower bound, rather than dropped.
 *
 *   count (closed loop): loadgen -a 127.0.0.1:8080 -p /64 -c 4 -n 2000 [-k 0]
 *       Sends exactly N requests over C connections, each connection sending
 *       its next request as soon as the previous response is complete; with
 *       -k 0 every request goes on a new connection ("Connection: close").
 *       Used where a fixed number of requests matters (callgrind, the
 *       allocation counter).
 *
 *   closed loop for a time: loadgen -a ... -c 64 -t 5 [-w 1] [-k 0]
 *       As count mode, but starts requests for T seconds instead of N.
 *       With -w W, the first W seconds are a warm-up: then every count
 *       starts again from zero and the line "# measure" is printed (and
 *       flushed), so that a caller can start its own accounting there;
 *       the JSON covers the T seconds after it.
 *
 * TLS (-s): every connection is TLS 1.3 with TLS_AES_128_GCM_SHA256 and
 * X25519 only (OpenSSL, the server's certificate not verified; -N sets the
 * SNI name). With -k 0 each request is a new TLS connection, closed by both
 * ends with close_notify, and -S says what the handshakes are:
 *
 *   -S full     (default) every handshake is a full one: the client keeps no
 *               session and offers none. It still offers psk_dhe_ke, as a
 *               browser does, so a server issues its tickets as it would to
 *               a new client; they are thrown away.
 *   -S resume   each connection slot offers the newest ticket it received
 *               (a TLS 1.3 PSK with (EC)DHE, as browsers resume): the first
 *               handshake of a slot is full, the others resumed if the
 *               server accepts. Each ticket is offered once: OpenSSL's
 *               client cache takes a TLS 1.3 session out (not resumable)
 *               once it has been used, as browsers use a ticket once (RFC
 *               8446 C.4), so a slot keeps resuming only if the server
 *               sends a new ticket on each resumed connection, as nginx,
 *               HAProxy, Go and BoringSSL do.
 *
 * The JSON then counts handshakes and how many the server resumed, and
 * names what the first one negotiated; for new connections, latency runs
 * from the connect() to the end of the response.
 *
 * Output: one JSON object on stdout. Only Content-Length framed responses
 * are understood (what the bench's upstream sends); anything else counts as
 * an error. One thread, epoll, epoll_pwait2 for sub-millisecond timers.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

/* ---- log-linear histogram of nanoseconds, ~0.8% resolution ---------- */
#define HBUCKETS (256 + 40 * 128)
static uint64_t hist[HBUCKETS];
static uint64_t hist_n, hist_max;

static int hidx(uint64_t v)
{
    if (v < 256)
        return (int)v;
    int e = 63 - __builtin_clzll(v) - 7; /* v >> e in [128, 256) */
    int i = 256 + (e - 1) * 128 + (int)((v >> e) - 128);
    return i < HBUCKETS ? i : HBUCKETS - 1;
}

static uint64_t hval(int i)
{
    if (i < 256)
        return (uint64_t)i;
    int e = (i - 256) / 128 + 1;
    uint64_t m = (uint64_t)((i - 256) % 128 + 128);
    return (m << e) + ((1ull << e) >> 1); /* middle of the bucket */
}

static void hrecord(uint64_t ns)
{
    hist[hidx(ns)]++;
    hist_n++;
    if (ns > hist_max)
        hist_max = ns;
}

static double hpct(double p)
{
    if (!hist_n)
        return 0;
    uint64_t want = (uint64_t)((p / 100.0) * (double)hist_n);
    if (want >= hist_n)
        want = hist_n - 1;
    uint64_t seen = 0;
    for (int i = 0; i < HBUCKETS; i++) {
        seen += hist[i];
        if (seen > want)
            return (double)hval(i) / 1000.0;
    }
    return (double)hist_max / 1000.0;
}

/* ---- time -------------------------------------------------------------- */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- connections ------------------------------------------------------- */
enum { C_CONNECTING, C_HANDSHAKE, C_IDLE, C_WAITING, C_DEAD };

struct conn {
    int fd;
    int state;
    uint64_t next;        /* rate mode: when the next request is due */
    uint64_t sched;       /* when the request in flight was due (or sent) */
    size_t sent;          /* bytes of the request written so far */
    /* response parsing */
    char hdr[8192];
    size_t hlen;
    int64_t body_left;    /* -1 while reading headers */
    int close_after;
    uint64_t retry_at;    /* after a failed connect */
    uint64_t opened;      /* when connect() was called */
    SSL *ssl;             /* -s: the connection's TLS state */
    SSL_SESSION *sess;    /* -S resume: the newest ticket for this slot */
};

static struct sockaddr_in addr;
static char req_ka[1024], req_close[1024];
static size_t req_ka_len, req_close_len;
static int epfd;
static int keepalive = 1;
static uint64_t n_ok, n_all, n_err_connect, n_err_read, n_err_status, n_err_parse, n_reconnects;
static uint64_t bytes_in;
static uint64_t measure_from, measure_until; /* rate mode window (ns) */
static int rate_mode;
static long started, count;
static double run_for;            /* closed loop for a time (-t), seconds */
static uint64_t run_until, measure_at;
static int use_tls, tls_resume;
static const char *sni;
static SSL_CTX *tls_ctx;
static uint64_t n_handshakes, n_resumed, n_err_tls;
static char negotiated[160];

/* Whether closed-loop mode starts another request. */
static int more(void)
{
    if (run_for > 0)
        return now_ns() < run_until;
    return started < count;
}

/* -S resume: the server's tickets arrive after the handshake; the newest
 * one is kept for the slot's next connection. */
static int tls_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct conn *c = SSL_get_app_data(ssl);
    if (c->sess)
        SSL_SESSION_free(c->sess);
    c->sess = sess;
    return 1;            /* we keep the reference */
}

static void tls_init(void)
{
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx) {
        fprintf(stderr, "loadgen: SSL_CTX_new failed\n");
        exit(2);
    }
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(tls_ctx, TLS1_3_VERSION);
    if (!SSL_CTX_set_ciphersuites(tls_ctx, "TLS_AES_128_GCM_SHA256") ||
        !SSL_CTX_set1_groups_list(tls_ctx, "X25519")) {
        fprintf(stderr, "loadgen: this OpenSSL lacks TLS_AES_128_GCM_SHA256 or X25519\n");
        exit(2);
    }
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    if (tls_resume) {
        SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(tls_ctx, tls_new_session);
    } else {
        SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
    }
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static int open_conn(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->hlen = 0;
    c->body_left = -1;
    c->sent = 0;
    c->close_after = 0;
    c->opened = now_ns();
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        n_err_connect++;
        c->state = C_DEAD;
        return -1;
    }
    c->state = C_CONNECTING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl");
    return 0;
}

static void drop_conn(struct conn *c)
{
    if (c->ssl) {
        /* close_notify, as wrk does: OpenSSL keeps a session resumable
         * only when its connection was shut down cleanly. */
        if (c->state != C_HANDSHAKE)
            SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        c->ssl = NULL;
        ERR_clear_error();
    }
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = C_DEAD;
}

static void want_write(struct conn *c, int on)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void send_more(struct conn *c)
{
    const char *r = keepalive ? req_ka : req_close;
    size_t len = keepalive ? req_ka_len : req_close_len;
    if (c->ssl) {
        /* SSL_write writes the whole request or asks to be called again
         * with the same arguments. */
        int n = SSL_write(c->ssl, r, (int)len);
        if (n > 0) {
            c->sent = len;
            want_write(c, 0);
            return;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
            want_write(c, e == SSL_ERROR_WANT_WRITE);
            return;
        }
        n_err_read++;
        drop_conn(c);
        return;
    }
    while (c->sent < len) {
        ssize_t n = send(c->fd, r + c->sent, len - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                want_write(c, 1);
                return;
            }
            n_err_read++;
            drop_conn(c);
            return;
        }
        c->sent += (size_t)n;
    }
    want_write(c, 0);
}

static void start_request(struct conn *c, uint64_t sched)
{
    /* A request on a new connection (closed loop) is timed from connect(). */
    c->sched = (!keepalive && !rate_mode) ? c->opened : sched;
    c->sent = 0;
    c->hlen = 0;
    c->body_left = -1;
    c->state = C_WAITING;
    send_more(c);
}

/* Parses the status line and Content-Length once the header is complete.
 * Returns body bytes already in hdr beyond the header, or -1 on error. */
static int parse_header(struct conn *c, size_t end)
{
    if (c->hlen < 12 || strncmp(c->hdr, "HTTP/1.", 7) != 0)
        return -1;
    int status = atoi(c->hdr + 9);
    if (status < 200 || status > 399)
        n_err_status++;
    int64_t clen = -1;
    char *p = c->hdr;
    char *stop = c->hdr + end;
    while (p < stop) {
        char *eol = memchr(p, '\n', (size_t)(stop - p));
        if (!eol)
            break;
        if ((size_t)(eol - p) > 15 && strncasecmp(p, "content-length:", 15) == 0)
            clen = strtoll(p + 15, NULL, 10);
        else if ((size_t)(eol - p) > 11 && strncasecmp(p, "connection:", 11) == 0) {
            char *v = p + 11;
            while (*v == ' ')
                v++;
            if (strncasecmp(v, "close", 5) == 0)
                c->close_after = 1;
        }
        p = eol + 1;
    }
    if (clen < 0)
        return -1;
    c->body_left = clen;
    return 0;
}

static void complete(struct conn *c, uint64_t t)
{
    uint64_t lat = t > c->sched ? t - c->sched : 0;
    n_all++;
    if (!rate_mode || (c->sched >= measure_from && c->sched < measure_until)) {
        hrecord(lat);
        n_ok++;
    }
    c->state = C_IDLE;
    if (c->close_after || !keepalive) {
        drop_conn(c);
        if (rate_mode || more()) {
            n_reconnects++;
            open_conn(c);
        }
    }
}

/* Drives a connection's TLS handshake; on success the connection is idle
 * (ready for a request). */
static void tls_step(struct conn *c)
{
    int r = SSL_connect(c->ssl);
    if (r == 1) {
        n_handshakes++;
        if (SSL_session_reused(c->ssl))
            n_resumed++;
        if (!negotiated[0]) {
            int g = SSL_get_negotiated_group(c->ssl);
            snprintf(negotiated, sizeof negotiated, "%s %s %s", SSL_get_version(c->ssl),
                     SSL_get_cipher_name(c->ssl), g == NID_X25519 ? "X25519" : OBJ_nid2sn(g & 0xffff));
        }
        c->state = C_IDLE;
        want_write(c, 0);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        want_write(c, e == SSL_ERROR_WANT_WRITE);
        return;
    }
    n_err_tls++;
    drop_conn(c);
    c->retry_at = now_ns() + 10000000ull;
}

static void tls_begin(struct conn *c)
{
    c->ssl = SSL_new(tls_ctx);
    if (!c->ssl) {
        fprintf(stderr, "loadgen: SSL_new failed\n");
        exit(2);
    }
    SSL_set_app_data(c->ssl, c);
    SSL_set_fd(c->ssl, c->fd);
    if (sni)
        SSL_set_tlsext_host_name(c->ssl, sni);
    if (tls_resume && c->sess)
        SSL_set_session(c->ssl, c->sess);
    c->state = C_HANDSHAKE;
    tls_step(c);
}

static void on_readable(struct conn *c)
{
    for (;;) {
        char buf[65536];
        char *dst;
        size_t room;
        if (c->body_left < 0) {
            dst = c->hdr + c->hlen;
            room = sizeof c->hdr - 1 - c->hlen;
            if (!room) {
                n_err_parse++;
                drop_conn(c);
                return;
            }
        } else {
            dst = buf;
            room = sizeof buf;
        }
        ssize_t n;
        if (c->ssl) {
            int r = SSL_read(c->ssl, dst, room > 0x7fffffff ? 0x7fffffff : (int)room);
            if (r > 0) {
                n = r;
            } else {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    n = -1;
                    errno = EAGAIN;
                } else {
                    n = e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL ? 0 : -1;
                    if (n < 0)
                        errno = EPROTO;
                    ERR_clear_error();
                }
            }
        } else {
            n = recv(c->fd, dst, room, 0);
        }
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            if (c->state == C_WAITING)
                n_err_read++;
            int was_idle = c->state == C_IDLE;
            drop_conn(c);
            if (was_idle || rate_mode || keepalive) {
                n_reconnects++;
                open_conn(c);
            }
            return;
        }
        if (n < 0)
            return;
        bytes_in += (uint64_t)n;
        if (c->state != C_WAITING) {
            n_err_parse++; /* unsolicited bytes */
            continue;
        }
        if (c->body_left < 0) {
            c->hlen += (size_t)n;
            c->hdr[c->hlen] = 0;
            char *e = memmem(c->hdr, c->hlen, "\r\n\r\n", 4);
            if (!e)
                continue;
            size_t end = (size_t)(e - c->hdr) + 4;
            if (parse_header(c, end) < 0) {
                n_err_parse++;
                drop_conn(c);
                n_reconnects++;
                open_conn(c);
                return;
            }
            c->body_left -= (int64_t)(c->hlen - end);
        } else {
            c->body_left -= n;
        }
        if (c->body_left == 0) {
            complete(c, now_ns());
            if (c->state == C_DEAD || c->state == C_CONNECTING)
                return;
        } else if (c->body_left < 0) {
            n_err_parse++; /* more than Content-Length: pipelining is not used */
            drop_conn(c);
            n_reconnects++;
            open_conn(c);
            return;
        }
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen -a HOST:PORT [-p PATH] [-H host] -c CONNS [-s [-S full|resume] [-N sni]]\n"
            "         (-r RATE -d SECONDS [-w WARMUP] | (-n COUNT | -t SECONDS) [-k 0|1])\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *target = NULL, *path = "/", *host = "bench";
    int conns = 16;
    double rate = 0, dur = 0, warm = 0;
    int opt;
    while ((opt = getopt(argc, argv, "a:p:H:c:r:d:w:n:k:t:sS:N:")) != -1) {
        switch (opt) {
        case 'a': target = optarg; break;
        case 'p': path = optarg; break;
        case 'H': host = optarg; break;
        case 'c': conns = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'd': dur = atof(optarg); break;
        case 'w': warm = atof(optarg); break;
        case 'n': count = atol(optarg); break;
        case 'k': keepalive = atoi(optarg); break;
        case 't': run_for = atof(optarg); break;
        case 's': use_tls = 1; break;
        case 'S':
            if (strcmp(optarg, "full") && strcmp(optarg, "resume"))
                usage();
            tls_resume = strcmp(optarg, "resume") == 0;
            break;
        case 'N': sni = optarg; break;
        default: usage();
        }
    }
    if (!target || conns < 1 || (rate <= 0 && count <= 0 && run_for <= 0) || (rate > 0 && dur <= 0))
        usage();
    if (use_tls)
        tls_init();
    rate_mode = rate > 0;
    if (rate_mode)
        keepalive = 1;
    char ip[64];
    const char *colon = strrchr(target, ':');
    if (!colon || (size_t)(colon - target) >= sizeof ip)
        usage();
    memcpy(ip, target, (size_t)(colon - target));
    ip[colon - target] = 0;
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, ip, &addr.sin_addr) != 1)
        usage();
    req_ka_len = (size_t)snprintf(req_ka, sizeof req_ka, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host);
    req_close_len = (size_t)snprintf(req_close, sizeof req_close,
                                     "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host);
    signal(SIGPIPE, SIG_IGN);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    if (!cs)
        die("calloc");
    for (int i = 0; i < conns; i++)
        cs[i].fd = -1;

    uint64_t t0 = now_ns() + 50000000ull; /* connections get 50 ms to open */
    uint64_t interval = rate_mode ? (uint64_t)(1e9 * conns / rate) : 0;
    uint64_t end = rate_mode ? t0 + (uint64_t)((warm + dur) * 1e9) : 0;
    measure_from = t0 + (uint64_t)(warm * 1e9);
    measure_until = end;
    for (int i = 0; i < conns; i++) {
        cs[i].next = t0 + (rate_mode ? (uint64_t)(1e9 * i / rate) : 0);
        open_conn(&cs[i]);
    }
    uint64_t t_start = now_ns(), t_last = t_start;
    if (run_for > 0) {
        measure_at = t_start + (uint64_t)(warm * 1e9);
        run_until = measure_at + (uint64_t)(run_for * 1e9);
    }
    uint64_t grace_until = 0;
    int pwait2 = 1;
    struct epoll_event evs[256];

    for (;;) {
        uint64_t t = now_ns();
        /* Send what is due. */
        uint64_t wake = UINT64_MAX;
        int busy = 0;
        for (int i = 0; i < conns; i++) {
            struct conn *c = &cs[i];
            if (c->state == C_DEAD) {
                if (!rate_mode && !more())
                    continue;
                if (c->retry_at <= t)
                    open_conn(c);
                if (c->state == C_DEAD && c->retry_at <= t)
                    c->retry_at = t + 10000000ull;
                continue;
            }
            if (c->state == C_WAITING || c->state == C_CONNECTING || c->state == C_HANDSHAKE) {
                busy = 1;
                continue;
            }
            if (rate_mode) {
                if (c->next >= end)
                    continue;
                if (c->next <= t) {
                    uint64_t s = c->next;
                    c->next += interval;
                    start_request(c, s);
                    busy = 1;
                } else if (c->next < wake) {
                    wake = c->next;
                }
            } else if (more()) {
                started++;
                start_request(c, t);
                busy = 1;
            }
        }
        if (rate_mode) {
            if (t >= end) {
                if (!grace_until)
                    grace_until = t + 2000000000ull;
                if (!busy || t >= grace_until)
                    break;
            }
        } else if (!more() && !busy) {
            break;
        }
        /* Wait for events or the next due request. */
        int n;
        if (wake != UINT64_MAX && wake > t) {
            uint64_t d = wake - t;
            if (pwait2) {
                struct timespec ts = {.tv_sec = (time_t)(d / 1000000000ull), .tv_nsec = (long)(d % 1000000000ull)};
                n = epoll_pwait2(epfd, evs, 256, &ts, NULL);
                if (n < 0 && errno == ENOSYS) {
                    pwait2 = 0;
                    continue;
                }
            } else {
                n = epoll_wait(epfd, evs, 256, (int)(d / 1000000ull));
            }
        } else {
            n = epoll_wait(epfd, evs, 256, wake == UINT64_MAX ? 100 : 0);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->state == C_DEAD)
                continue;
            if (c->state == C_CONNECTING) {
                int err = 0;
                socklen_t l = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err || (evs[i].events & (EPOLLERR | EPOLLHUP))) {
                    n_err_connect++;
                    drop_conn(c);
                    c->retry_at = t + 10000000ull; /* retry in 10 ms; the schedule is kept */
                    continue;
                }
                if (use_tls) {
                    tls_begin(c);
                    continue;
                }
                c->state = C_IDLE;
                want_write(c, 0);
                continue;
            }
            if (c->state == C_HANDSHAKE) {
                tls_step(c);
                continue;
            }
            if ((evs[i].events & EPOLLOUT) && c->state == C_WAITING)
                send_more(c);
            if (c->state != C_DEAD && (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
                on_readable(c);
        }
        t_last = now_ns();
        if (measure_at && t_last >= measure_at) {
            /* -t with -w: the warm-up is over; everything counts from here. */
            measure_at = 0;
            n_ok = n_all = n_err_connect = n_err_read = n_err_status = n_err_parse = n_reconnects = 0;
            bytes_in = n_handshakes = n_resumed = n_err_tls = 0;
            memset(hist, 0, sizeof hist);
            hist_n = hist_max = 0;
            t_start = t_last;
            printf("# measure\n");
            fflush(stdout);
        }
    }

    /* Rate mode: requests that were due but never sent count as late. */
    uint64_t backlog = 0;
    if (rate_mode) {
        uint64_t tend = now_ns();
        for (int i = 0; i < conns; i++) {
            struct conn *c = &cs[i];
            if (c->state == C_WAITING && c->sched >= measure_from && c->sched < measure_until) {
                hrecord(tend - c->sched);
                backlog++;
            }
            for (uint64_t s = c->next; s < end; s += interval) {
                if (s >= measure_from) {
                    hrecord(tend > s ? tend - s : 0);
                    backlog++;
                }
            }
        }
    }
    double elapsed = rate_mode ? dur : (double)(t_last - t_start) / 1e9;
    printf("{\"mode\": \"%s\", \"connections\": %d, \"keepalive\": %d, \"requests\": %llu, "
           "\"requests_total\": %llu, \"late_unanswered\": %llu, \"duration_s\": %.6f, \"rate_target\": %.1f, "
           "\"rate_achieved\": %.1f, \"bytes_in\": %llu, \"reconnects\": %llu, "
           "\"errors\": {\"connect\": %llu, \"read\": %llu, \"status\": %llu, \"parse\": %llu}, "
           "\"latency_us\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p99.9\": %.1f, \"max\": %.1f}, "
           "\"timer\": \"%s\", \"tls\": %d, \"handshakes\": %llu, \"resumed\": %llu, \"tls_errors\": %llu, "
           "\"negotiated\": \"%s\"}\n",
           rate_mode ? "rate" : run_for > 0 ? "time" : "count", conns, keepalive, (unsigned long long)n_ok, (unsigned long long)n_all,
           (unsigned long long)backlog, elapsed, rate, elapsed > 0 ? (double)n_ok / elapsed : 0.0,
           (unsigned long long)bytes_in, (unsigned long long)n_reconnects,
           (unsigned long long)n_err_connect, (unsigned long long)n_err_read,
           (unsigned long long)n_err_status, (unsigned long long)n_err_parse,
           hpct(50), hpct(90), hpct(99), hpct(99.9), (double)hist_max / 1000.0,
           pwait2 ? "epoll_pwait2" : "epoll_wait (1 ms)", use_tls, (unsigned long long)n_handshakes,
           (unsigned long long)n_resumed, (unsigned long long)n_err_tls, negotiated);
    return 0;
}
