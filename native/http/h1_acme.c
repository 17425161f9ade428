/*
 * ACME HTTP-01 (RFC 8555 8.3): while the control plane waits for a
 * validation, GET /.well-known/acme-challenge/<token> on any http listener
 * is answered here, before routing and before redirect_https (the usual
 * port-80 listener redirects everything else), with the key authorization
 * the control plane published in the table (up_config.acme: the whole
 * response, prebuilt). A token the table does not hold goes on to routing:
 * an application may answer its own challenges.
 *
 * The table is the connection's configuration, swapped like every other
 * table; the transaction holds it until the answer is out. Nothing is
 * allocated, and a table without tokens costs the caller one comparison.
 */
#include <string.h>
#include "http/h1.h"

static const char PREFIX[] = "/.well-known/acme-challenge/";

bool h1_acme(struct worker *w, struct conn *c, const uint8_t *base, uint32_t base_bid,
             uint32_t base_off, const struct h1_request *r, const struct up_listener *l)
{
    const struct up_config *cfg = w->cfg;
    const uint32_t plen = sizeof PREFIX - 1;
    if (r->target_form != H1_T_ORIGIN || r->target_len <= plen ||
        (r->method != H1_M_GET && r->method != H1_M_HEAD))
        return false;
    const uint8_t *path = base + r->target_off;
    if (memcmp(path, PREFIX, plen) != 0)
        return false;
    const uint8_t *token = path + plen;
    uint32_t token_len = r->target_len - plen;
    const struct up_acme_token *hit = NULL;
    for (uint32_t i = 0; i < cfg->nacme && !hit; i++)
        if (cfg->acme[i].token_len == token_len &&
            memcmp(cfg->strings + cfg->acme[i].token_off, token, token_len) == 0)
            hit = &cfg->acme[i];
    if (!hit)
        return false;

    struct txn *t = txn_open(w, c, r);
    if (!t)
        return true;                        /* 503 sent */
    t->bytes_in = r->head_len;
    log_begin(w, t, c, base, r, l);
    struct out *o = &t->resp;
    /* A validator asks once per connection: the answer closes it, so a
     * body after the head is never parsed as a request. */
    out_push(o, cfg->strings + hit->answer_off, hit->answer_len);
    t->status = 200;
    t->bytes_out = o->left;
    t->flags |= TF_CLIENT_CLOSE;
    h1_req_step(&t->rq, RQE_ALL_IN);      /* answered here: nothing goes upstream */
    h1_resp_step(&t->rs, RSE_LOCAL);
    t->req_bid = base_bid;
    t->req_off = base_off + r->head_len;
    h1_count_status(w, c, 200);
    h1_count_request(w, c);
    out_submit(w, o, c);
    return true;
}
