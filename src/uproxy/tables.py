"""Turning a validated Config into the immutable C tables the workers read.

A Tables object owns every C allocation of one configuration generation
(cffi frees them when it is dropped). It is published to the workers by one
atomic pointer store and dropped only when every worker has moved past it
and no session still holds it (see Runtime.collect).
"""
from __future__ import annotations

import socket
import struct

from ._native import ffi, lib
from .config import Config

BALANCE = {"round_robin": lib.UP_BALANCE_ROUND_ROBIN, "least_conn": lib.UP_BALANCE_LEAST_CONN,
           "p2c": lib.UP_BALANCE_P2C, "hash": lib.UP_BALANCE_HASH}
RING_POINTS = 160       # points per unit of weight on a consistent-hash ring
MODE = {"tcp": lib.UP_MODE_TCP, "http": lib.UP_MODE_HTTP}
FORWARDING = {"buffered": lib.UP_FWD_BUFFERED, "splice": lib.UP_FWD_SPLICE,
              "splice_iowq": lib.UP_FWD_SPLICE_IOWQ}


def sockaddr(family, sa) -> bytes:
    if family == socket.AF_INET:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", sa[1]) + \
            socket.inet_pton(socket.AF_INET, sa[0]) + b"\0" * 8
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!H", sa[1]) + \
        struct.pack("=I", 0) + socket.inet_pton(socket.AF_INET6, sa[0].split("%")[0]) + \
        struct.pack("=I", sa[3] if len(sa) > 3 else 0)


class Strings:
    """Host names, path prefixes and header names, packed in one buffer the
    C side reads by (offset, length)."""

    def __init__(self):
        self.data = bytearray()

    def add(self, text: str) -> tuple:
        raw = text.encode()
        off = len(self.data)
        self.data += raw + b"\0"
        return off, len(raw)


def hash_ring(servers: list) -> list:
    """(hash, server index) points, sorted: each server gets RING_POINTS
    points per unit of weight, placed by the core's own hash function."""
    points = []
    for index, label, weight in servers:
        for i in range(RING_POINTS * weight):
            key = f"{label}#{i}".encode()
            points.append((lib.up_hash(key, len(key)), index))
    points.sort()
    return points


class Tables:
    def __init__(self, cfg: Config, generation: int, nworkers: int, sockets: dict, health: dict,
                 slots: dict):
        """sockets: listener name -> ListenerSockets; health: (cluster, server label) ->
        bool; slots: (cluster, server label) -> statistics slot in the segment."""
        self.cfg = cfg
        self.generation = generation
        self.sockets = dict(sockets)
        keep = []                       # every cffi object the C side points into
        clusters = list(cfg.clusters.values())
        cindex = {c.name: i for i, c in enumerate(clusters)}
        servers = [(ci, s) for ci, c in enumerate(clusters) for s in c.servers]

        c_servers = ffi.new("struct up_server[]", max(1, len(servers)))
        self.server_labels = []
        for i, (ci, s) in enumerate(servers):
            raw = sockaddr(*s.address)
            ffi.memmove(c_servers[i].addr, raw, len(raw))
            c_servers[i].addrlen = len(raw)
            c_servers[i].weight = s.weight
            c_servers[i].cluster = ci
            c_servers[i].stat_slot = slots[(clusters[ci].name, s.label)]
            self.server_labels.append((clusters[ci].name, s.label))

        strings = Strings()
        c_clusters = ffi.new("struct up_cluster[]", max(1, len(clusters)))
        first = 0
        for i, c in enumerate(clusters):
            cc = c_clusters[i]
            cc.first_server = first
            cc.nservers = len(c.servers)
            cc.balance = BALANCE[c.balance]
            cc.connect_timeout_ms = c.connect_timeout_ms
            cc.connect_timeout_ts[0] = c.connect_timeout_ms // 1000
            cc.connect_timeout_ts[1] = (c.connect_timeout_ms % 1000) * 1_000_000
            cc.max_attempts = c.max_attempts
            cc.fail_threshold = c.fail_threshold
            cc.eject_ms = c.eject_ms
            cc.response_timeout_ms = c.response_timeout_ms
            cc.pool_max_idle = c.pool_max_idle
            cc.pool_idle_timeout_ms = c.pool_idle_timeout_ms
            cc.max_requests = c.max_requests
            if c.hash_key.startswith("header:"):
                cc.hash_kind = lib.UP_HASH_HEADER
                cc.hash_header_off, cc.hash_header_len = strings.add(c.hash_key[7:].lower())
            else:
                cc.hash_kind = lib.UP_HASH_CLIENT_IP
            if c.balance == "hash":
                pts = hash_ring([(first + j, s.label, s.weight) for j, s in enumerate(c.servers)])
                ring = ffi.new("struct up_ring_point[]", len(pts))
                for k, (h, idx) in enumerate(pts):
                    ring[k].hash = h
                    ring[k].server = idx
                keep.append(ring)
                cc.ring = ring
                cc.nring = len(pts)
            first += len(c.servers)

        c_listeners = ffi.new("struct up_listener[]", len(cfg.listeners))
        for i, l in enumerate(cfg.listeners):
            socks = sockets[l.name]
            fds = ffi.new("int32_t[]", socks.fds())
            keep.append(fds)
            cl = c_listeners[i]
            cl.id = socks.id
            cl.mode = MODE[l.mode]
            cl.cluster = cindex[l.cluster]
            # An upgraded HTTP connection becomes a tunnel whose first bytes
            # are already in receive buffers: it is forwarded buffered.
            cl.forwarding = FORWARDING[l.forwarding] if l.mode == "tcp" else lib.UP_FWD_BUFFERED
            cl.idle_timeout_ms = l.idle_timeout_ms
            cl.header_timeout_ms = l.header_timeout_ms
            cl.keepalive_timeout_ms = l.keepalive_timeout_ms
            cl.max_head = l.max_header_size
            cl.access_log = 1 if l.access_log else 0
            cl.max_target = l.max_target
            cl.max_body = l.max_body_size
            cl.keep_underscores = 1 if l.underscores_in_headers else 0
            if l.routes:
                routes = ffi.new("struct up_route[]", len(l.routes))
                for k, rt in enumerate(l.routes):
                    r = routes[k]
                    r.cluster = cindex[rt.cluster]
                    if rt.host is None:
                        r.host_kind = lib.UP_ROUTE_HOST_ANY
                    elif rt.host.startswith("*."):
                        r.host_kind = lib.UP_ROUTE_HOST_SUFFIX
                        r.host_off, r.host_len = strings.add(rt.host[1:])
                    else:
                        r.host_kind = lib.UP_ROUTE_HOST_EXACT
                        r.host_off, r.host_len = strings.add(rt.host)
                    if rt.path_prefix:
                        r.path_off, r.path_len = strings.add(rt.path_prefix)
                keep.append(routes)
                cl.routes = routes
                cl.nroutes = len(l.routes)
            cl.fds = fds

        n = max(1, len(servers))
        self.health = ffi.new("uint8_t[]", n)
        for i, (cname, label) in enumerate(self.server_labels):
            self.health[i] = 1 if health.get((cname, label), True) else 0
        wstate = ffi.new("struct up_server_wstate[]", nworkers * n)
        cwstate = ffi.new("struct up_cluster_wstate[]", nworkers * max(1, len(clusters)))
        self.refs = ffi.new("uint64_t[]", nworkers * 8)

        t = ffi.new("struct up_config *")
        t.generation = generation
        t.nworkers = nworkers
        t.nlisteners = len(cfg.listeners)
        t.nclusters = len(clusters)
        t.nservers = len(servers)
        t.listeners = c_listeners
        t.clusters = c_clusters
        t.servers = c_servers
        t.server_wstate = wstate
        t.cluster_wstate = cwstate
        t.refs = self.refs
        t.server_health = self.health
        self.strings = ffi.new("char[]", bytes(strings.data) + b"\0")
        t.strings = self.strings
        self.ptr = t
        self._keep = keep + [c_servers, c_clusters, c_listeners, wstate, cwstate]

    def refs_held(self) -> int:
        return lib.up_config_refs(self.ptr)
