/*
 * The top of the core: the worker loop (worker.c), the one place that
 * switches on a connection's kind, and accepting (acceptor.c), the one
 * place that picks a protocol for a new connection by its listener's mode.
 */
#ifndef UPROXY_LOOP_H
#define UPROXY_LOOP_H
#include "core/worker.h"

void acceptors_sync(struct worker *w);
void acceptors_pause(struct worker *w, bool pause);
void on_accept(struct worker *w, uint32_t slot, struct io_uring_cqe *cqe);
void acceptors_check(struct worker *w);
void acceptors_stop(struct worker *w);
bool acceptors_idle(struct worker *w);
/* wait.c: submit and wait in one io_uring_enter, for a batch when busy. */
int loop_submit_and_wait(struct worker *w);

#endif
