/*
 * A per-worker pool of pipes for splice (socket -> pipe -> socket), made at
 * start so that no connection ever calls pipe2(). With registered files the
 * pipe ends sit in the ring's fixed file table and splice skips the file
 * lookup on each call.
 */
#ifndef UPROXY_PIPES_H
#define UPROXY_PIPES_H
#include <stdbool.h>
#include <stdint.h>

struct worker;
struct io_uring_sqe;

struct pipepool {
    int *fds;                 /* [2 * count]: read end, write end */
    uint32_t count;
    uint32_t *free_stack;
    uint32_t nfree;
    uint32_t size;            /* bytes a pipe holds */
    bool fixed;               /* ends registered at fixed slots 0..2*count-1 */
};

/* Bytes one spliced direction (an L4 session, an HTTP body) may move per
 * wake-up before it yields to the other connections of the worker. */
#define SPLICE_PUMP_BUDGET (4u << 20)

int pipes_init(struct worker *w);
int pipe_get(struct worker *w);
void pipe_put(struct worker *w, int pipe, bool dirty);
void pipes_free(struct worker *w);

/* Fill an SQE for splice socket -> pipe, or pipe -> socket. */
void prep_splice_in(struct worker *w, struct io_uring_sqe *s, int sock, int pipe,
                    unsigned len);
void prep_splice_out(struct worker *w, struct io_uring_sqe *s, int pipe, int sock,
                     unsigned len);

#endif
