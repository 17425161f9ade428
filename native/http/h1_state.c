/*
 * The transaction's two state machines (h1_state.h): a table each, the one
 * place a transition is decided. Pure: no I/O (but the message of a checked
 * build's stop), no allocation. The tables are the documentation's too
 * (docs/architecture.md, "The transaction's states").
 */
#include <stdio.h>
#include <stdlib.h>
#include "http/h1_state.h"

/* Checked builds stop at an illegal transition: the sanitized build (gcc
 * and clang say they are one differently) or one built with -DUPROXY_CHECKS. */
#if defined(__SANITIZE_ADDRESS__) || defined(UPROXY_CHECKS)
#define H1_STATE_CHECKS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define H1_STATE_CHECKS 1
#endif
#endif

#define X RQ_ILLEGAL
static const uint8_t req_next[RQ__COUNT][RQE__COUNT] = {
    /*                   ALL_IN            ROUND_OUT     AGAIN */
    [RQ_SEND_HEAD]     = { RQ_SEND_HEAD_ALL, RQ_SEND_BODY, RQ_SEND_HEAD },
    [RQ_SEND_HEAD_ALL] = { X,                RQ_DONE,      RQ_SEND_HEAD },
    [RQ_SEND_BODY]     = { RQ_DONE,          RQ_SEND_BODY, RQ_SEND_HEAD },
    [RQ_DONE]          = { X,                RQ_DONE,      RQ_SEND_HEAD },
};
#undef X

#define X RS_ILLEGAL
static const uint8_t resp_next[RS__COUNT][RSE__COUNT] = {
    /*                 SENDING     FINAL_HEAD ALL_IN       LOCAL    ERROR     ERROR_LATER */
    [RS_WAIT]        = { RS_INTERIM, RS_HEAD, X,           RS_DONE, RS_ERROR, X },
    [RS_INTERIM]     = { RS_INTERIM, RS_HEAD, X,           X,       RS_ERROR, RS_ERROR_LATER },
    [RS_HEAD]        = { RS_BODY,    X,       RS_HEAD_ALL, X,       RS_ERROR, X },
    [RS_HEAD_ALL]    = { RS_DONE,    X,       X,           X,       RS_ERROR, X },
    [RS_BODY]        = { RS_BODY,    X,       RS_DONE,     X,       X,        X },
    [RS_DONE]        = { RS_DONE,    X,       X,           X,       X,        X },
    [RS_ERROR_LATER] = { X,          X,       X,           X,       RS_ERROR, X },
    [RS_ERROR]       = { X,          X,       X,           X,       X,        X },
};
#undef X

static const char *const req_names[RQ__COUNT] = {
    "SEND_HEAD", "SEND_HEAD_ALL", "SEND_BODY", "DONE",
};
static const char *const resp_names[RS__COUNT] = {
    "WAIT", "INTERIM", "HEAD", "HEAD_ALL", "BODY", "DONE", "ERROR_LATER", "ERROR",
};
static const char *const req_events[RQE__COUNT] = { "ALL_IN", "ROUND_OUT", "AGAIN" };
static const char *const resp_events[RSE__COUNT] = {
    "SENDING", "FINAL_HEAD", "ALL_IN", "LOCAL", "ERROR", "ERROR_LATER",
};

uint8_t h1_req_next(uint8_t state, uint8_t event)
{
    if (state >= RQ__COUNT || event >= RQE__COUNT)
        return RQ_ILLEGAL;
    return req_next[state][event];
}

uint8_t h1_resp_next(uint8_t state, uint8_t event)
{
    if (state >= RS__COUNT || event >= RSE__COUNT)
        return RS_ILLEGAL;
    return resp_next[state][event];
}

const char *h1_req_state_name(uint8_t state)
{
    return state < RQ__COUNT ? req_names[state] : "?";
}

const char *h1_resp_state_name(uint8_t state)
{
    return state < RS__COUNT ? resp_names[state] : "?";
}

const char *h1_req_event_name(uint8_t event)
{
    return event < RQE__COUNT ? req_events[event] : "?";
}

const char *h1_resp_event_name(uint8_t event)
{
    return event < RSE__COUNT ? resp_events[event] : "?";
}

#ifdef H1_STATE_CHECKS
__attribute__((noreturn, cold)) static void illegal(const char *side, const char *state,
                                                    const char *event)
{
    fprintf(stderr, "uproxy: illegal %s transition: %s on %s\n", side, state, event);
    abort();
}
#endif

void h1_req_step(uint8_t *state, uint8_t event)
{
    uint8_t next = h1_req_next(*state, event);
    if (__builtin_expect(next == RQ_ILLEGAL, 0)) {
#ifdef H1_STATE_CHECKS
        illegal("request", h1_req_state_name(*state), h1_req_event_name(event));
#endif
        return;
    }
    *state = next;
}

void h1_resp_step(uint8_t *state, uint8_t event)
{
    uint8_t next = h1_resp_next(*state, event);
    if (__builtin_expect(next == RS_ILLEGAL, 0)) {
#ifdef H1_STATE_CHECKS
        illegal("response", h1_resp_state_name(*state), h1_resp_event_name(event));
#endif
        return;
    }
    *state = next;
}
