/*
 * A connection's socket in the ring's file table (UP_F_FIXED_SOCKETS).
 *
 * Every receive, send and poll on an fd makes the kernel look the file up
 * and take a reference on it (fget, then fput when done); through the
 * ring's file table it takes neither. The table is registered sparse at
 * start (core/ring.c: the pipes' ends first, then one slot per connection
 * slot), so a socket never costs a registration syscall: the first op of a
 * connection is preceded, in the same submission, by an
 * IORING_OP_FILES_UPDATE request that puts its fd at the connection's slot
 * and posts no completion when it succeeds (IOSQE_CQE_SKIP_SUCCESS), and
 * its close by one that empties the slot (the table's reference would
 * otherwise keep the socket open). The SQEs are issued in order, so the
 * ops that follow find the slot filled. The fd stays the connection's own
 * for everything else (setsockopt, kTLS, splice, TLS's own sends).
 *
 * A failed update (it cannot fail for a valid fd and slot) posts a
 * completion the loop counts as err_other; the ops after it then fail
 * with EBADF and the connection closes as after any failed receive.
 */
#ifndef UPROXY_FIXED_H
#define UPROXY_FIXED_H
#include "core/worker.h"

static inline int conn_fixed_slot(const struct worker *w, const struct conn *c)
{
    return (int)(w->fixed_base + (uint32_t)(c - w->conns));
}

static inline void files_update(struct worker *w, struct conn *c, int *fd)
{
    struct io_uring_sqe *s = sqe_get(w);
    io_uring_prep_files_update(s, fd, 1, conn_fixed_slot(w, c));
    s->flags |= IOSQE_CQE_SKIP_SUCCESS;
    io_uring_sqe_set_data64(s, UD(OP_FILES, c - w->conns));
    count_op(w, s);
}

/* The fd to name in the SQE that is taken next for c: its fixed slot (put
 * there first if it is not yet) or its fd. Call before sqe_for(), then
 * conn_file_flags() on the prepared SQE. */
static inline int conn_file(struct worker *w, struct conn *c)
{
    if (!(w->features & UP_F_FIXED_SOCKETS) || c->fd < 0)
        return c->fd;
    if (!c->fixed) {
        files_update(w, c, &c->fd);   /* read by the kernel when submitted: the slab holds it */
        c->fixed = 1;
    }
    return conn_fixed_slot(w, c);
}

static inline void conn_file_flags(const struct conn *c, struct io_uring_sqe *s)
{
    if (c->fixed)
        s->flags |= IOSQE_FIXED_FILE;
}

/* Before c's fd is closed: its slot emptied, in order before the close. */
static inline void conn_unfix(struct worker *w, struct conn *c)
{
    static int none = -1;
    if (c->fixed) {
        files_update(w, c, &none);
        c->fixed = 0;
    }
}

#endif
