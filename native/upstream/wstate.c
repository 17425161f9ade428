/*
 * A worker's balancing state (wstate.h): two blocks mapped once at start,
 * committed page by page as slots are used, and the claim of an entry
 * whose stamp is not its slot's generation.
 */
#include <string.h>
#include <sys/mman.h>
#include "upstream/wstate.h"

int wstate_init(struct worker *w)
{
    /* Anonymous memory is zero: every entry starts unstamped (gen 0),
     * which no table's slot_gen is, so its first use clears it. */
    void *p = mmap(NULL, WSTATE_BYTES, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    w->sstate = p;
    w->cstate = (struct cluster_state *)(w->sstate + UP_MAX_SERVERS + 1);
    return 0;
}

void wstate_free(struct worker *w)
{
    if (w->sstate)
        munmap(w->sstate, WSTATE_BYTES);
    w->sstate = NULL;
    w->cstate = NULL;
}

struct server_state *server_state_claim(struct worker *w, struct server_state *e, uint32_t gen)
{
    if (e->gen > gen)
        e = &w->sstate[UP_MAX_SERVERS];   /* an old table's caller: the spare */
    memset(e, 0, sizeof *e);
    e->gen = gen;
    return e;
}

struct cluster_state *cluster_state_claim(struct worker *w, struct cluster_state *e, uint32_t gen)
{
    if (e->gen > gen)
        e = &w->cstate[UP_CLUSTER_SLOTS];
    memset(e, 0, sizeof *e);
    e->gen = gen;
    return e;
}
