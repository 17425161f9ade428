/*
 * Deadlines (idle timeouts, header timeouts, drain) on a hashed timing
 * wheel. Nodes are links inside the connections themselves, so arming a
 * timer never allocates. A deadline that moves later is only stored; the
 * node is moved when its old slot comes round, which keeps the per-event
 * cost of "this connection was active" to one store.
 */
#ifndef UPROXY_TIMER_H
#define UPROXY_TIMER_H
#include <stdint.h>

#define WHEEL_SLOTS 1024
#define TICK_MS 100

struct worker;
struct conn;

struct wheel {
    uint32_t slot[WHEEL_SLOTS + 1];   /* the last: deadlines moved later */
    uint64_t done_tick;       /* every tick up to this one has been run (or is being run) */
    uint8_t running;          /* done_tick's slot is being emptied */
};

void wheel_init(struct worker *w);
/* Arm or re-arm c's deadline at c->expires_ms (earlier or later). */
void timer_arm(struct worker *w, struct conn *c);
void timer_cancel(struct worker *w, struct conn *c);
/* Set c's deadline; one that only moves later is just stored (the wheel
 * moves the node when its old slot comes round), so per-request deadline
 * changes cost a store, not a relink. */
void timer_set(struct worker *w, struct conn *c, uint64_t expires_ms);
/* The next connection whose deadline has passed, or NULL when every tick
 * up to now has been run. The loop calls it until NULL and hands each one
 * to its protocol: the wheel itself never calls up. */
struct conn *wheel_expired(struct worker *w);

#endif
