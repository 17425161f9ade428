/*
 * One dialer for every protocol (as nginx has one): a non-blocking socket
 * to a chosen server, the server's accounting, and the connect on the ring
 * with the cluster's timeout linked to it. The connect's completion comes
 * to the connection's protocol as OP_CONNECT; which server to try next on
 * a refusal is balance_pick()'s answer with the failed one avoided.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include "upstream/upstream.h"
#include "core/fixed.h"

int dial(struct worker *w, struct conn *u, const struct up_config *cfg, uint32_t server,
         uint32_t cluster)
{
    const struct up_server *sv = &cfg->servers[server];
    const struct up_cluster *cl = &cfg->clusters[cluster];
    int fd = socket(((const struct sockaddr *)sv->addr)->sa_family,
                    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        w->c[UP_C_ERR_CONNECT_OTHER]++;
        return -errno;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    u->fd = fd;
    u->state = CS_CONNECTING;
    u->server = server;
    u->slot = sv->stat_slot;
    u->attempts++;
    u->flags |= C_SERVER_REF;
    w->srv[u->slot].active++;
    w->srv[u->slot].connects++;
    w->c[UP_C_UPSTREAM_CONNECTS]++;
    w->c[UP_C_UPSTREAM_ACTIVE]++;
    u->t_us = w->now_us;
    struct io_uring_sqe *q = sqe_for(w, u, OP_CONNECT);
    io_uring_prep_connect(q, fd, (const struct sockaddr *)sv->addr, sv->addrlen);
    count_op(w, q);
    if (cl->connect_timeout_ms) {
        q->flags |= IOSQE_IO_LINK;
        q = sqe_for(w, u, OP_LINK_TIMEOUT);
        io_uring_prep_link_timeout(q, (struct __kernel_timespec *)cl->connect_timeout_ts, 0);
        count_op(w, q);
    }
    return 0;
}

/* u carries work to its server: counted in the load least_conn and p2c
 * weigh, until dial_gone() or dial_idle(). */
void dial_busy(struct worker *w, struct conn *u)
{
    if (!(u->flags & C_COUNTED)) {
        w->srv[u->slot].in_flight++;
        u->flags |= C_COUNTED;
    }
}

void dial_idle(struct worker *w, struct conn *u)
{
    if (u->flags & C_COUNTED) {
        w->srv[u->slot].in_flight--;
        u->flags &= ~C_COUNTED;
    }
}

/* What u holds of its server's accounting, given back; safe to call twice.
 * It reads the worker's own per-server block by the stable stat slot, never
 * the configuration table, which may be gone by the time a session ends. */
void dial_gone(struct worker *w, struct conn *u)
{
    if (u->flags & C_SERVER_REF) {
        w->srv[u->slot].active--;
        w->c[UP_C_UPSTREAM_ACTIVE]--;
        u->flags &= ~C_SERVER_REF;
    }
    dial_idle(w, u);
}

void dial_failed(struct worker *w, struct conn *u, const struct up_config *cfg, int res)
{
    bool timeout = res == -ECANCELED || res == -ETIME || res == -ETIMEDOUT;
    w->c[res == -ECONNREFUSED ? UP_C_ERR_CONNECT_REFUSED
         : timeout ? UP_C_ERR_CONNECT_TIMEOUT : UP_C_ERR_CONNECT_OTHER]++;
    w->srv[u->slot].connect_errors++;
    if (timeout)
        w->srv[u->slot].timeouts++;
    balance_result(w, cfg, u->server, false);
    dial_gone(w, u);
    conn_unfix(w, u);
    close(u->fd);
    u->fd = -1;
}
