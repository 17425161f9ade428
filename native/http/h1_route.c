/*
 * Routing: which route (and so which cluster and policy) a request head
 * takes, which methods it allows, and the key a hashing cluster balances
 * it by. Reads the published configuration only.
 */
#include <string.h>
#include <strings.h>
#include "http/h1.h"

/* Methods a request that matches no route may use: all but CONNECT (a
 * reverse proxy is not a forward proxy's tunnel; a route opts in). */
#define METHODS_DEFAULT (~(1u << H1_M_CONNECT))

bool h1_method_allowed(const struct up_route *rt, uint8_t method)
{
    return ((rt ? rt->methods : METHODS_DEFAULT) >> method) & 1;
}

/* Route: the first route whose host and path prefix match, or NULL (the
 * listener's cluster, METHODS_DEFAULT). */
const struct up_route *h1_route(const struct up_config *cfg, const struct up_listener *l,
                                const uint8_t *host, uint32_t host_len, const uint8_t *path,
                                uint32_t path_len)
{
    /* The host without its port, compared without case. */
    for (uint32_t i = 0; i < host_len; i++)
        if (host[i] == ':') {
            host_len = i;
            break;
        }
    for (uint32_t i = 0; i < l->nroutes; i++) {
        const struct up_route *rt = &l->routes[i];
        const char *rh = cfg->strings + rt->host_off;
        if (rt->host_kind == UP_ROUTE_HOST_EXACT) {
            if (host_len != rt->host_len || strncasecmp((const char *)host, rh, host_len))
                continue;
        } else if (rt->host_kind == UP_ROUTE_HOST_SUFFIX) {
            if (host_len <= rt->host_len ||
                strncasecmp((const char *)host + host_len - rt->host_len, rh, rt->host_len))
                continue;
        }
        if (rt->path_len && (path_len < rt->path_len ||
                             memcmp(path, cfg->strings + rt->path_off, rt->path_len)))
            continue;
        return rt;
    }
    return NULL;
}

uint64_t h1_hash_key(struct worker *w, const struct conn *c, const struct up_config *cfg,
                     const struct up_cluster *cl, const uint8_t *base,
                     const struct h1_request *r)
{
    if (cl->balance != UP_BALANCE_HASH)
        return 0;
    if (cl->hash_kind == UP_HASH_HEADER) {
        const char *name = cfg->strings + cl->hash_header_off;
        for (uint16_t i = 0; i < r->nheaders; i++)
            if (r->h[i].name_len == cl->hash_header_len &&
                !strncasecmp((const char *)base + r->h[i].name_off, name, cl->hash_header_len))
                return up_hash(base + r->h[i].value_off, r->h[i].value_len);
        return 0;
    }
    const struct conn_addr *a = conn_addr(w, c);
    return up_hash(a->addr, a->len);
}
