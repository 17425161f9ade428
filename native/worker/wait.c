/*
 * The loop's wait: how long one io_uring_enter may sleep, and for how many
 * completions (batched_wait, docs/architecture.md "The loop").
 *
 * A ring's plain wait returns at the first completion. Under load that
 * makes turns that each hold a few completions, and an HTTP/2 client whose
 * streams' responses come back in different turns gets one send per turn:
 * each send costs ~4-5 us of kernel time on loopback, where the sender
 * runs the receiver's TCP too. A busy worker therefore asks the kernel for
 * a batch instead, as NIC interrupt coalescing and NAPI do: wake when
 * batch_wait_events completions are there, or when batch_wait_us passed
 * with at least one there (Linux 6.12's min_wait_usec).
 *
 * Only where it pays: when the last turn reaped at least BATCH_BUSY
 * completions and some HTTP/2 client's streams shared a send in it (what
 * a fuller turn multiplies). HTTP/1.1 and L4 have nothing to merge, one
 * response per connection at a time: a wait there only sleeps and wakes
 * the worker once more (measured: HTTP/1.1 64 B cost ~5% more CPU with
 * every busy wait batched). A lone request's turns hold one or two
 * completions, so it waits as before and gains no latency. When the load
 * drops, turns shrink and the next wait is a plain one again.
 */
#include <errno.h>
#include "worker/loop.h"

/* Completions in the last turn that make the next wait a batched one: well
 * above what one request at a time makes (its turns reap one or two). */
#define BATCH_BUSY 8

/* With nothing at all completing, a batched wait still returns this late
 * at most: the worker's tick (a timeout SQE, TICK_MS) ends it sooner. */
#define BATCH_MAX_MS 1000

int loop_submit_and_wait(struct worker *w)
{
    w->c[UP_C_URING_ENTERS]++;
    if ((w->features & UP_F_BATCHED_WAIT) && w->o.batch_wait_us &&
        w->last_cqes >= BATCH_BUSY && w->last_shared) {
        w->c[UP_C_URING_BATCHED_WAITS]++;
        return ring_submit_and_wait_batch(w, w->o.batch_wait_events, w->o.batch_wait_us,
                                          BATCH_MAX_MS);
    }
    return io_uring_submit_and_wait(&w->ring, 1);
}
