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
           "p2c": lib.UP_BALANCE_P2C}
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
            cl.forwarding = FORWARDING[l.forwarding]
            cl.idle_timeout_ms = l.idle_timeout_ms
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
        self.ptr = t
        self._keep = keep + [c_servers, c_clusters, c_listeners, wstate, cwstate]

    def refs_held(self) -> int:
        return lib.up_config_refs(self.ptr)
