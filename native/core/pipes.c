#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "core/worker.h"

int pipes_init(struct worker *w)
{
    struct pipepool *p = &w->pipes;
    p->count = w->o.pipe_count;
    uint32_t want = w->o.pipe_size, smallest = UINT32_MAX;
    if (!p->count)
        return 0;
    p->fds = calloc(2 * p->count, sizeof(int));
    p->free_stack = calloc(p->count, sizeof(uint32_t));
    if (!p->fds || !p->free_stack)
        return -ENOMEM;
    for (uint32_t i = 0; i < p->count; i++) {
        int fd[2];
        if (pipe2(fd, O_NONBLOCK | O_CLOEXEC) < 0) {
            int e = errno;
            snprintf(w->err, sizeof w->err,
                     "pipe2 failed for splice pipe %u of %u: %s "
                     "(raise the open-file limit or lower pipes)",
                     i, p->count, strerror(e));
            p->count = i;
            return -e;
        }
        /* A larger pipe moves more per splice; the kernel may refuse past
         * pipe-max-size or pipe-user-pages-soft (unprivileged users), and
         * then the default (64 KiB) stays: correct, only slower. Once it
         * refuses, the rest keep the default too. */
        if (want && fcntl(fd[1], F_SETPIPE_SZ, (int)want) < 0)
            want = 0;
        int got = fcntl(fd[1], F_GETPIPE_SZ);
        if (got > 0 && (uint32_t)got < smallest)
            smallest = (uint32_t)got;
        p->fds[2 * i] = fd[0];
        p->fds[2 * i + 1] = fd[1];
        p->free_stack[p->nfree++] = p->count - 1 - i;
    }
    /* Splices never ask for more than the smallest pipe holds. */
    p->size = smallest == UINT32_MAX ? 65536 : smallest;
    if (w->features & UP_F_REGISTERED_FILES) {
        /* the table is there already when sockets share it (ring_files_init) */
        int r = (w->features & UP_F_FIXED_SOCKETS)
                    ? io_uring_register_files_update(&w->ring, 0, p->fds, 2 * p->count)
                    : io_uring_register_files(&w->ring, p->fds, 2 * p->count);
        if (r < 0) {
            snprintf(w->err, sizeof w->err, "registering %u pipe files failed: %s",
                     2 * p->count, strerror(-r));
            return r;
        }
        p->fixed = true;
    }
    return 0;
}

int pipe_get(struct worker *w)
{
    struct pipepool *p = &w->pipes;
    if (!p->nfree)
        return -1;
    w->c[UP_C_PIPES_IN_USE]++;
    return (int)p->free_stack[--p->nfree];
}

/* A pipe that still holds bytes (a session cut mid-transfer) is emptied
 * before it goes back, so the next session never sees stale data. */
void pipe_put(struct worker *w, int pipe, bool dirty)
{
    struct pipepool *p = &w->pipes;
    if (dirty) {
        while (read(p->fds[2 * pipe], w->scratch, SCRATCH_SIZE) > 0)
            ;
    }
    p->free_stack[p->nfree++] = (uint32_t)pipe;
    w->c[UP_C_PIPES_IN_USE]--;
}

void pipes_free(struct worker *w)
{
    struct pipepool *p = &w->pipes;
    for (uint32_t i = 0; i < 2 * p->count; i++)
        close(p->fds[i]);
    free(p->fds);
    free(p->free_stack);
    memset(p, 0, sizeof *p);
}

void prep_splice_in(struct worker *w, struct io_uring_sqe *s, int sock, int pipe,
                    unsigned len)
{
    struct pipepool *p = &w->pipes;
    int out = p->fixed ? 2 * pipe + 1 : p->fds[2 * pipe + 1];
    io_uring_prep_splice(s, sock, -1, out, -1, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (p->fixed)
        s->flags |= IOSQE_FIXED_FILE;
    count_op(w, s);
}

void prep_splice_out(struct worker *w, struct io_uring_sqe *s, int pipe, int sock,
                     unsigned len)
{
    struct pipepool *p = &w->pipes;
    int in = p->fixed ? 2 * pipe : p->fds[2 * pipe];
    io_uring_prep_splice(s, in, -1, sock, -1, len,
                         SPLICE_F_MOVE | SPLICE_F_NONBLOCK |
                             (p->fixed ? SPLICE_F_FD_IN_FIXED : 0));
    count_op(w, s);
}
