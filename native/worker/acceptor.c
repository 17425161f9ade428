/*
 * Accepting: one accept outstanding per listener socket of this worker
 * (multishot where the kernel has it, re-armed single shots otherwise).
 * Accepting pauses, leaving new connections in the kernel's backlog, when
 * the worker is at its connection limit or out of file descriptors; after
 * EMFILE it waits a while instead of spinning on the same error.
 */
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>
#include "worker/loop.h"
#include "l4/l4.h"
#include "http/h1.h"

#define EMFILE_BACKOFF_MS 200

/* A multishot accept takes every connection waiting in the backlog in one
 * go, however many, and the cancel sent at the limit lands only after
 * that: near the limit, the connections past it would be accepted only to
 * be closed (a reset) instead of waiting in the backlog. So multishot only
 * while there is room for more than a full backlog (somaxconn caps one at
 * 4096 by default), one accept at a time nearer the limit. */
#define MULTISHOT_ROOM 4352u

static bool multishot_fits(const struct worker *w)
{
    return (w->features & UP_F_MULTISHOT_ACCEPT) && w->clients + MULTISHOT_ROOM < w->o.max_conns;
}

static void arm(struct worker *w, uint32_t slot)
{
    struct acceptor *a = &w->acc[slot];
    struct io_uring_sqe *s = sqe_get(w);
    if (multishot_fits(w))
        io_uring_prep_multishot_accept(s, a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    else
        io_uring_prep_accept(s, a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data64(s, UD(OP_ACCEPT, slot));
    count_op(w, s);
    a->armed = 1;
}

static void cancel(struct worker *w, uint32_t slot)
{
    struct acceptor *a = &w->acc[slot];
    if (!a->armed || a->cancelling)
        return;
    struct io_uring_sqe *s = sqe_get(w);
    io_uring_prep_cancel64(s, UD(OP_ACCEPT, slot), 0);
    io_uring_sqe_set_data64(s, UD(OP_NONE, 0));
    count_op(w, s);
    a->cancelling = 1;
}

static bool may_accept(struct worker *w)
{
    return !w->stopping && !w->accept_paused;
}

/* Bring the acceptors in line with w->cfg: keep the sockets that stay,
 * start accepting on new ones, stop on those that are gone. */
void acceptors_sync(struct worker *w)
{
    const struct up_config *cfg = w->cfg;
    for (uint32_t i = 0; i < w->nacc; i++)
        w->acc[i].cfg_index = -1;
    for (uint32_t li = 0; cfg && li < cfg->nlisteners; li++) {
        const struct up_listener *l = &cfg->listeners[li];
        uint32_t i;
        for (i = 0; i < w->nacc; i++)
            if (w->acc[i].fd >= 0 && w->acc[i].listener_id == l->id)
                break;
        if (i == w->nacc) {
            for (i = 0; i < w->nacc; i++)
                if (w->acc[i].fd < 0 && !w->acc[i].armed)
                    break;
            if (i == w->nacc) {
                if (w->nacc == UP_MAX_LISTENERS)
                    continue;
                w->nacc++;
            }
            w->acc[i] = (struct acceptor){
                .listener_id = l->id,
                .fd = l->fds[w->o.index],
            };
        }
        w->acc[i].cfg_index = (int16_t)li;
    }
    for (uint32_t i = 0; i < w->nacc; i++) {
        struct acceptor *a = &w->acc[i];
        if (a->cfg_index < 0) {
            cancel(w, i);
            a->fd = -1;
        } else if (!a->armed && may_accept(w)) {
            arm(w, i);
        }
    }
}

void acceptors_pause(struct worker *w, bool pause)
{
    if (pause == w->accept_paused)
        return;
    w->accept_paused = pause;
    if (pause)
        w->c[UP_C_ACCEPT_PAUSES]++;
    for (uint32_t i = 0; i < w->nacc; i++) {
        struct acceptor *a = &w->acc[i];
        if (pause)
            cancel(w, i);
        else if (a->fd >= 0 && a->cfg_index >= 0 && !a->armed && may_accept(w))
            arm(w, i);
    }
}

void on_accept(struct worker *w, uint32_t slot, struct io_uring_cqe *cqe)
{
    struct acceptor *a = &w->acc[slot];
    int res = cqe->res;
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
        a->armed = 0;
        a->cancelling = 0;
    }
    if (res >= 0) {
        w->c[UP_C_ACCEPTED]++;
        if (a->cfg_index < 0 || w->stopping || w->clients >= w->o.max_conns) {
            w->c[UP_C_REJECTED]++;
            close(res);
            if (w->clients >= w->o.max_conns)
                acceptors_pause(w, true);
        } else {
            const struct up_listener *l = &w->cfg->listeners[a->cfg_index];
            if (w->lst)
                w->lst[l->stat_slot].accepted++;
            switch (l->mode) {
            case UP_MODE_HTTP:
                h1_start(w, l, res);
                break;
            case UP_MODE_TCP:
            default:
                l4_start(w, l, res);
                break;
            }
            /* Full: leave the next ones in the kernel's backlog. */
            if (w->clients >= w->o.max_conns)
                acceptors_pause(w, true);
            else if ((cqe->flags & IORING_CQE_F_MORE) && !multishot_fits(w))
                cancel(w, slot);      /* re-armed one at a time when it ends */
        }
    } else if (res != -ECANCELED) {
        w->c[UP_C_ERR_ACCEPT]++;
        if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM) {
            w->accept_resume_ms = w->now_ms + EMFILE_BACKOFF_MS;
            acceptors_pause(w, true);
        }
    }
    if (!a->armed && a->fd >= 0 && a->cfg_index >= 0 && may_accept(w))
        arm(w, slot);
}

/* Once per loop turn: resume accepting when the reason to pause is gone. */
void acceptors_check(struct worker *w)
{
    if (w->accept_paused && !w->stopping && w->clients < w->o.max_conns &&
        w->now_ms >= w->accept_resume_ms)
        acceptors_pause(w, false);
}

void acceptors_stop(struct worker *w)
{
    for (uint32_t i = 0; i < w->nacc; i++)
        cancel(w, i);
}

bool acceptors_idle(struct worker *w)
{
    for (uint32_t i = 0; i < w->nacc; i++)
        if (w->acc[i].armed)
            return false;
    return true;
}
