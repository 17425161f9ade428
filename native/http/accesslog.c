/*
 * Access-log records. The fields a log line needs are copied out of the
 * request head when the transaction begins (only on listeners that log),
 * because the head's buffers go back to the pool long before the response
 * ends; the finished record goes into the worker's ring in the statistics
 * segment, which the control plane drains and formats. A full ring drops
 * the record and counts it: logging never makes a worker wait.
 */
#include <string.h>
#include "http/h1.h"

static uint8_t put(char *dst, size_t cap, const uint8_t *src, uint32_t len)
{
    uint32_t n = len < cap ? len : (uint32_t)cap;
    memcpy(dst, src, n);
    return (uint8_t)n;
}

/* Who asked, and where: the same in every record. */
static void client_fields(struct up_log_rec *lr, const struct conn_addr *a, const struct up_listener *l)
{
    lr->listener_id = l->id;
    lr->port = a->port;
    lr->addr_len = a->len;
    memcpy(lr->addr, a->addr, sizeof lr->addr);
}

static const struct h1_header *find(const uint8_t *base, const struct h1_request *r,
                                    const char *name, uint16_t len)
{
    for (uint16_t i = 0; i < r->nheaders; i++)
        if (r->h[i].name_len == len && !strncasecmp((const char *)base + r->h[i].name_off, name, len))
            return &r->h[i];
    return NULL;
}

void log_begin(struct worker *w, struct txn *t, const struct conn *c, const uint8_t *base,
               const struct h1_request *r, const struct up_listener *l)
{
    t->logging = l->access_log != 0;
    if (!t->logging)
        return;
    struct up_log_rec *lr = txn_log(w, t);
    client_fields(lr, conn_addr(w, c), l);
    lr->minor = r->minor;
    lr->h2 = t->sink == TS_STREAM;    /* the client's version, not the head's */
    lr->method_len = put(lr->method, sizeof lr->method, base + r->method_off, r->method_len);
    lr->target_len = (uint16_t)(r->target_len > 0xffff ? 0xffff : r->target_len);
    put(lr->target, sizeof lr->target, base + r->target_off, r->target_len);
    lr->host_len = lr->ua_len = lr->referer_len = 0;
    struct tp_tls_info ti;
    lr->tls_version = lr->tls_resumed = lr->sni_len = lr->cipher_len = 0;
    if (tp_tls_info(w, h1_wire(w, c), &ti)) {
        lr->tls_version = ti.version;
        lr->tls_resumed = ti.resumed;
        if (ti.cipher)
            lr->cipher_len = put(lr->cipher, sizeof lr->cipher, (const uint8_t *)ti.cipher, strlen(ti.cipher));
        if (ti.sni)
            lr->sni_len = put(lr->sni, sizeof lr->sni, (const uint8_t *)ti.sni, strlen(ti.sni));
    }
    if (r->host != 0xffff)
        lr->host_len = put(lr->host, sizeof lr->host, base + r->h[r->host].value_off,
                           r->h[r->host].value_len);
    const struct h1_header *h = find(base, r, "user-agent", 10);
    if (h)
        lr->ua_len = put(lr->ua, sizeof lr->ua, base + h->value_off, h->value_len);
    h = find(base, r, "referer", 7);
    if (h)
        lr->referer_len = put(lr->referer, sizeof lr->referer, base + h->value_off, h->value_len);
}

static void emit(struct worker *w, const struct up_log_rec *src)
{
    struct up_log_ring *ring = w->log;
    uint64_t head = ring->head;
    if (head - __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE) >= UP_LOG_RECORDS) {
        w->c[UP_C_LOG_DROPPED]++;
        return;
    }
    ring->recs[head % UP_LOG_RECORDS] = *src;
    __atomic_store_n(&ring->head, head + 1, __ATOMIC_RELEASE);
    w->c[UP_C_LOG_WRITTEN]++;
}

void log_end(struct worker *w, struct txn *t, uint16_t status)
{
    if (!t->logging)
        return;
    t->logging = 0;
    struct up_log_rec *lr = txn_log(w, t);
    lr->time_ms = w->real_ms;
    lr->duration_us = (uint32_t)(w->now_us - t->t_start);
    lr->status = status;
    lr->bytes_in = t->bytes_in;
    lr->bytes_out = t->bytes_out;
    lr->server_slot = t->server == NIL ? 0xffff : (uint16_t)t->cfg->servers[t->server].stat_slot;
    emit(w, lr);
}

/* A request refused before it became a transaction (a parse error). */
void log_refused(struct worker *w, const struct conn *c, const struct up_listener *l,
                 uint16_t status)
{
    if (!l || !l->access_log)
        return;
    struct up_log_rec lr;
    memset(&lr, 0, offsetof(struct up_log_rec, method));
    client_fields(&lr, conn_addr(w, c), l);
    lr.time_ms = w->real_ms;
    lr.status = status;
    lr.server_slot = 0xffff;
    lr.minor = 1;
    lr.h2 = c->kind == CK_H2_STREAM;
    emit(w, &lr);
}
