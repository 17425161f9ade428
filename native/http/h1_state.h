/*
 * The two state machines of an HTTP transaction, as h11 keeps them: one for
 * the request (client -> upstream), one for the response (upstream ->
 * client, or the proxy's own answer). Each is advanced by one transition
 * function (h1_state.c) that maps (state, event) to the next state; a pair
 * that has no entry is an illegal transition. Pure: no I/O, no allocation,
 * no struct of the proxy's; a state is one byte of struct txn (t->rq,
 * t->rs), and both start at 0 when the transaction is zeroed.
 *
 * "Taken in" is when the last byte of a message was put into a send round
 * (it may still be on its way); "out" is when a round's send completed.
 * Attributes that are not states (close wishes, reuse, retry, policy bits)
 * stay TF_* flags in h1.h.
 */
#ifndef UPROXY_H1_STATE_H
#define UPROXY_H1_STATE_H
#include <stdbool.h>
#include <stdint.h>

/* The request toward the upstream. */
enum h1_req_state {
    RQ_SEND_HEAD,       /* the head is to go out; body bytes are still to come */
    RQ_SEND_HEAD_ALL,   /* the head is to go out; the whole request is taken in
                           (no body, all of it came with the head, or the proxy
                           answers the request itself) */
    RQ_SEND_BODY,       /* the head is out; the body is still being taken in */
    RQ_DONE,            /* the head is out and the whole request is taken in */
    RQ__COUNT,
    RQ_ILLEGAL = 0xff,  /* h1_req_next's answer to a pair with no transition */
};

enum h1_req_event {
    RQE_ALL_IN,         /* the request's last byte was taken into a round */
    RQE_ROUND_OUT,      /* a request round's send completed */
    RQE_AGAIN,          /* it goes again from its head (a retry; forward auth's yes) */
    RQE__COUNT,
};

/* The response toward the client. */
enum h1_resp_state {
    RS_WAIT,            /* no final head yet; nothing went to the client */
    RS_INTERIM,         /* a 1xx went to the client; the final head is awaited */
    RS_HEAD,            /* the final head arrived; none of it went out; more to take in */
    RS_HEAD_ALL,        /* the final head arrived and the whole response is taken
                           in; none of it went out yet */
    RS_BODY,            /* the final response is going to the client; more to take in */
    RS_DONE,            /* the whole response is taken in and going to the client */
    RS_ERROR_LATER,     /* the proxy's own answer waits for a 1xx round to be out */
    RS_ERROR,           /* the proxy answers itself: that text is the response */
    RS__COUNT,
    RS_ILLEGAL = 0xff,  /* h1_resp_next's answer to a pair with no transition */
};

enum h1_resp_event {
    RSE_SENDING,        /* response bytes are submitted toward the client */
    RSE_FINAL_HEAD,     /* a final (non-1xx, or 101) head arrived from the upstream */
    RSE_ALL_IN,         /* the response's last byte was taken into a round */
    RSE_LOCAL,          /* the proxy's whole answer is the response (redirect, ACME, policy) */
    RSE_ERROR,          /* the proxy answers with an error of its own, and closes */
    RSE_ERROR_LATER,    /* that answer waits for the 1xx round on its way out */
    RSE__COUNT,
};

/* The transition functions: the next state, or RQ_ILLEGAL / RS_ILLEGAL. */
uint8_t h1_req_next(uint8_t state, uint8_t event);
uint8_t h1_resp_next(uint8_t state, uint8_t event);
/* Their application to a transaction's state byte. An illegal transition
 * stops the process with the pair named in checked builds (sanitizers, or
 * -DUPROXY_CHECKS); otherwise it leaves the state as it was. */
void h1_req_step(uint8_t *state, uint8_t event);
void h1_resp_step(uint8_t *state, uint8_t event);
const char *h1_req_state_name(uint8_t state);
const char *h1_resp_state_name(uint8_t state);
const char *h1_req_event_name(uint8_t event);
const char *h1_resp_event_name(uint8_t event);    /* "?" past the last */

/* What the code asks of the states (one comparison each). */
static inline bool rq_all_in(uint8_t s)    /* the whole request is taken in */
{
    return s == RQ_SEND_HEAD_ALL || s == RQ_DONE;
}

static inline bool rq_head_out(uint8_t s)  /* the request head went out */
{
    return s == RQ_SEND_BODY || s == RQ_DONE;
}

static inline bool rs_final_head(uint8_t s) /* the upstream's final head arrived */
{
    return s >= RS_HEAD && s <= RS_DONE;
}

static inline bool rs_all_in(uint8_t s)    /* the whole response is taken in */
{
    return s == RS_HEAD_ALL || s == RS_DONE;
}

static inline bool rs_replied(uint8_t s)   /* final response bytes went to the client */
{
    return s == RS_BODY || s == RS_DONE || s == RS_ERROR;
}

#endif
