/*
 * The transport kinds (transport/transport.h). Plain: the socket's own
 * receive into provided buffers and its own sends, straight through the
 * ring. Sends wait for all their bytes (MSG_WAITALL) and never raise
 * SIGPIPE. TLS: tls.c; once the kernel encrypts (TP_KTLS_TX, tls_ktls.c)
 * sending is the plain socket's and receiving stays the library's; once
 * it decrypts as well (TP_KTLS) receiving is the plain socket's too, but
 * for the rare record that is not data (the kernel says EIO).
 */
#include <errno.h>
#include <sys/uio.h>
#include "transport/transport.h"
#include "transport/tls.h"
#include "core/fixed.h"

void tp_recv_arm(struct worker *w, struct conn *c, uint32_t max)
{
    switch ((enum tp_kind)c->tp) {
    case TP_TLS:
    case TP_KTLS_TX:
        if (!tp_tls_recv_arm(w, c))
            break;
        __attribute__((fallthrough));  /* the kernel took the receiving just now */
    case TP_PLAIN:
    case TP_KTLS: {
        int fd = conn_file(w, c);
        struct io_uring_sqe *s = sqe_for(w, c, OP_RECV);
        io_uring_prep_recv(s, fd, NULL, max, 0);
        conn_file_flags(c, s);
        s->flags |= IOSQE_BUFFER_SELECT;
        s->buf_group = BUF_GROUP;
        if ((w->features & UP_F_MULTISHOT_RECV) && !max)
            s->ioprio |= IORING_RECV_MULTISHOT;
        count_op(w, s);
        break;
    }
    }
}

void tp_recv_arm_upto(struct worker *w, struct conn *c, uint32_t limit)
{
    /* TLS in user space receives records for the library, whose reads
     * are its own: there the limit is the plain one-receive form. */
    if (!(w->features & UP_F_MSHOT_LIMIT) || !(w->features & UP_F_MULTISHOT_RECV) ||
        (c->tp != TP_PLAIN && c->tp != TP_KTLS)) {
        tp_recv_arm(w, c, limit);
        return;
    }
    int fd = conn_file(w, c);
    struct io_uring_sqe *s = sqe_for(w, c, OP_RECV);
    io_uring_prep_recv(s, fd, NULL, 0, 0);
    conn_file_flags(c, s);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = BUF_GROUP;
    s->ioprio |= IORING_RECV_MULTISHOT;
    s->file_index = limit;          /* optlen: the same union; liburing 2.3 names it so */
    count_op(w, s);
}

int tp_received(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe, uint32_t *bid)
{
    switch ((enum tp_kind)c->tp) {
    case TP_PLAIN:
        break;
    case TP_TLS:
    case TP_KTLS_TX:
        return tp_tls_received(w, c, cqe, bid);
    case TP_KTLS:
        if (cqe->res == -EIO) {
            *bid = NIL;                /* a failed receive takes no buffer */
            return tp_ktls_rx_record(w, c);
        }
        break;
    }
    *bid = NIL;
    if (cqe->flags & IORING_CQE_F_BUFFER) {
        *bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        bufpool_taken(w);
    }
    return cqe->res;
}

/* kTLS's sendmsg refuses every flag but MSG_MORE, MSG_DONTWAIT and
 * MSG_NOSIGNAL (EOPNOTSUPP): without MSG_WAITALL a send may come back
 * short, which the protocols continue as after any short send. */
static inline int send_flags(const struct conn *c)
{
    return c->tp == TP_PLAIN ? MSG_NOSIGNAL | MSG_WAITALL : MSG_NOSIGNAL;
}

void tp_send(struct worker *w, struct conn *c, const void *p, size_t n)
{
    switch ((enum tp_kind)c->tp) {
    case TP_PLAIN:
    case TP_KTLS_TX:
    case TP_KTLS: {
        int fd = conn_file(w, c);
        struct io_uring_sqe *s = sqe_for(w, c, OP_SEND);
        io_uring_prep_send(s, fd, p, n, send_flags(c));
        conn_file_flags(c, s);
        count_op(w, s);
        break;
    }
    case TP_TLS: {
        struct iovec v = { (void *)p, n };
        tp_tls_send(w, c, &v, 1);
        break;
    }
    }
}

void tp_sendmsg(struct worker *w, struct conn *c, struct msghdr *m)
{
    switch ((enum tp_kind)c->tp) {
    case TP_PLAIN:
    case TP_KTLS_TX:
    case TP_KTLS: {
        int fd = conn_file(w, c);
        struct io_uring_sqe *s = sqe_for(w, c, OP_SEND);
        io_uring_prep_sendmsg(s, fd, m, send_flags(c));
        conn_file_flags(c, s);
        count_op(w, s);
        break;
    }
    case TP_TLS:
        tp_tls_send(w, c, m->msg_iov, (int)m->msg_iovlen);
        break;
    }
}

int tp_sent(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe)
{
    switch ((enum tp_kind)c->tp) {
    case TP_PLAIN:
    case TP_KTLS_TX:
    case TP_KTLS:
        break;
    case TP_TLS:
        return tp_tls_sent(w, c, cqe);
    }
    return cqe->res;
}

void tp_on_cqe(struct worker *w, struct conn *c, enum op op, const struct io_uring_cqe *cqe)
{
    if (op == OP_TP_SEND && c->tp != TP_PLAIN)
        tp_tls_own_sent(w, c, cqe);
}

bool tp_ready(struct worker *w, const struct conn *c)
{
    switch ((enum tp_kind)c->tp) {
    case TP_PLAIN:
        break;
    case TP_TLS:
    case TP_KTLS_TX:
    case TP_KTLS:
        return tp_tls_ready(w, c);
    }
    return true;
}

void tp_shutdown(struct worker *w, struct conn *c)
{
    switch ((enum tp_kind)c->tp) {
    case TP_PLAIN:
        break;
    case TP_TLS:
    case TP_KTLS_TX:
    case TP_KTLS:
        tp_tls_shutdown(w, c);
        break;
    }
}

void tp_release(struct worker *w, struct conn *c)
{
    switch ((enum tp_kind)c->tp) {
    case TP_PLAIN:
        break;
    case TP_TLS:
    case TP_KTLS_TX:
    case TP_KTLS:
        tp_tls_release(w, c);
        break;
    }
}
