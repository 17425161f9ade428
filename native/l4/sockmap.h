/*
 * forwarding = "sockmap" (sockmap.c): the worker's side of bpf/sockmap.c,
 * the map updates that hand a session to the kernel and take it back.
 */
#ifndef UPROXY_SOCKMAP_H
#define UPROXY_SOCKMAP_H
#include "core/worker.h"

/* Per connection slot, apart from struct conn (cold: sockmap sessions only).
 * What the program shares with the worker is in its `st` array (sockmap.c). */
struct sm_sock {
    uint64_t cookie;          /* the socket's cookie: its key in the maps */
    uint64_t seen;            /* client: bytes both sockets had received at the last look */
    uint64_t active_ms;       /* client: when seen last changed */
    uint64_t base;            /* tcpi_bytes_acked when the session entered the map */
};

/* Is the program loaded and handed to this worker? */
static inline bool sm_on(const struct worker *w)
{
    return w->sm != NULL;
}

int sm_init(struct worker *w);
void sm_free(struct worker *w);
/* Both sockets into the maps; 0, or -1 with nothing left behind (the
 * session is then spliced). Only for a session nothing was read from.
 * send_buffer: the listener's sm_send_buffer (0: leave the kernel's);
 * wrote_u: the worker wrote into u before (a PROXY header). */
int sm_start(struct worker *w, struct conn *c, struct conn *u, uint32_t send_buffer,
             bool wrote_u);
/* Right after sm_start, per socket: queue the peek that runs the verdict on
 * what waited in its queue; its completion (OP_PEEK) is -EAGAIN unless the
 * worker has something to read (passed bytes, a FIN, an error). */
void sm_kick(struct worker *w, struct conn *c);
/* The worker wrote n bytes it had received from src into src's peer. */
void sm_forwarded(struct worker *w, struct conn *src, uint32_t n);
/* May src's FIN be passed on (the peer holds every byte redirected to it)? */
bool sm_flushed(struct worker *w, struct conn *src);
/* Did any byte arrive at client c or its peer since the last call? */
bool sm_moved(struct worker *w, struct conn *c);
uint64_t sm_active_ms(struct worker *w, struct conn *c);
void sm_end(struct worker *w, struct conn *c, bool from_client);
/* Once per loop turn: removes the `sess` entries of closed sockets held
 * back (UP_SM_DEFER at most) once they have waited long enough. */
void sm_flush(struct worker *w);

#endif
