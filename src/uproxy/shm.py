"""The shared-memory statistics segment (layout: docs/stats-layout.md).

The proxy creates ``/dev/shm/uproxy-<pid>.stats``; each worker writes only
its own block, and any process may map the file read-only and take a
snapshot (``uproxy stats``, ``uproxy top``, the admin endpoint) without
touching the request path. The struct definitions come from the compiled
core, so a reader and the writer built from the same source agree; a
reader that finds another layout version says so instead of misreading.
"""
from __future__ import annotations

import glob
import mmap
import os
import time

from . import hist
from ._native import ffi, lib

COUNTERS = [name[len("UP_C_"):].lower()
            for _, name in sorted(ffi.typeof("enum up_counter").elements.items())
            if name != "UP_C__COUNT"]
GAUGES = {"active", "upstream_active", "pipes_in_use", "buffers_in_use", "pool_idle"}
HISTS = ("request", "upstream", "connect")
WSERVER_FIELDS = ("active", "in_flight", "requests", "connects", "connect_errors", "errors",
                  "idle", "reused")
STATES = {0: "new", 1: "running", 2: "draining", 3: "stopped", 4: "failed"}


def run_dir() -> str:
    return os.environ.get("UPROXY_RUN_DIR") or ("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")


def path_for(pid: int) -> str:
    return os.path.join(run_dir(), f"uproxy-{pid}.stats")


def reload_status_path(pid: int) -> str:
    """Where the proxy records the outcome of its last reload (JSON), for
    `uproxy reload` to print: the reason a reload failed is text, which
    the segment's fixed layout has no room for."""
    return os.path.join(run_dir(), f"uproxy-{pid}.reload")


def write_reload_status(status: dict):
    """Written whole (a temporary file renamed over the old one) before the
    reload counters move, so that a reader who sees a counter move reads
    the matching status. Readable by the proxy's user only."""
    import json
    path = reload_status_path(os.getpid())
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, json.dumps(status).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_reload_status(pid: int) -> dict | None:
    import json
    try:
        with open(reload_status_path(pid)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _align(n, a=64):
    return (n + a - 1) // a * a


class LayoutError(Exception):
    pass


class Segment:
    """Created by the proxy process (writer side)."""

    def __init__(self, nworkers: int, features: int):
        self.path = path_for(os.getpid())
        hs = _align(ffi.sizeof("struct up_shm_header"))
        servers_off = hs
        events_off = servers_off + lib.UP_MAX_SERVERS * ffi.sizeof("struct up_shm_server")
        workers_off = _align(events_off + lib.UP_NEVENTS * ffi.sizeof("struct up_shm_event"))
        self.worker_size = _align(ffi.sizeof("struct up_shm_worker"))
        wservers_off = workers_off + nworkers * self.worker_size
        row = lib.UP_MAX_SERVERS * ffi.sizeof("struct up_shm_wserver")
        logs_off = _align(wservers_off + nworkers * row, 4096)
        ring_size = _align(ffi.sizeof("struct up_log_ring"), 4096)
        size = logs_off + nworkers * ring_size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, size)
            self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.buf = ffi.from_buffer(self.mm)
        base = ffi.cast("char *", self.buf)
        self.header = ffi.cast("struct up_shm_header *", base)
        self.servers = ffi.cast("struct up_shm_server *", base + servers_off)
        self.events = ffi.cast("struct up_shm_event *", base + events_off)
        self.workers = [ffi.cast("struct up_shm_worker *", base + workers_off + i * self.worker_size)
                        for i in range(nworkers)]
        self.wservers = [ffi.cast("struct up_shm_wserver *", base + wservers_off + i * row)
                         for i in range(nworkers)]
        self.log_rings = [ffi.cast("struct up_log_ring *", base + logs_off + i * ring_size)
                          for i in range(nworkers)]
        h = self.header
        h.version = lib.UP_SHM_VERSION
        h.header_size = hs
        h.worker_size = self.worker_size
        h.nworkers = nworkers
        h.ncounters = lib.UP_NCOUNTERS
        h.nops = lib.UP_NOPS
        h.pid = os.getpid()
        h.start_time_ms = int(time.time() * 1000)
        h.features = features
        h.abi = lib.UP_ABI_VERSION
        h.max_servers = lib.UP_MAX_SERVERS
        h.hist_buckets = lib.UP_HIST_BUCKETS
        h.servers_offset = servers_off
        h.events_offset = events_off
        h.workers_offset = workers_off
        h.wservers_offset = wservers_off
        h.logs_offset = logs_off
        h.log_records = lib.UP_LOG_RECORDS
        h.magic = lib.UP_SHM_MAGIC      # last: a reader trusts nothing before it
        self.slots = {}                 # (cluster, address) -> server slot

    def server_slot(self, cluster: str, address: str, generation: int) -> int:
        """A stable slot per (cluster, address): counters carry on across
        reloads for a server that stays."""
        key = (cluster, address)
        slot = self.slots.get(key)
        if slot is None:
            free = [i for i in range(lib.UP_MAX_SERVERS) if i not in set(self.slots.values())]
            if not free:
                raise ValueError(f"more than {lib.UP_MAX_SERVERS} distinct servers over this "
                                 f"process's life; restart uproxy to reset server statistics")
            slot = free[0]
            self.slots[key] = slot
            srv = self.servers[slot]
            ffi.memmove(srv.cluster, cluster.encode()[:47], min(47, len(cluster.encode())))
            ffi.memmove(srv.address, address.encode()[:55], min(55, len(address.encode())))
            srv.health = 2
        self.servers[slot].in_use = 1
        self.servers[slot].generation = generation
        return slot

    def retire_servers(self, live: set):
        for key, slot in self.slots.items():
            if key not in live:
                self.servers[slot].in_use = 0

    def set_health(self, cluster: str, address: str, up: bool):
        slot = self.slots.get((cluster, address))
        if slot is not None:
            self.servers[slot].health = 1 if up else 0

    def event(self, text: str):
        h = self.header
        e = self.events[h.events_written % lib.UP_NEVENTS]
        e.time_ms = 0
        raw = text.encode()[:119]
        ffi.memmove(e.text, raw + b"\0", len(raw) + 1)
        e.time_ms = int(time.time() * 1000)
        h.events_written += 1

    def close(self):
        for p in (self.path, reload_status_path(os.getpid())):
            try:
                os.unlink(p)
            except OSError:
                pass


def running_pids() -> list:
    """PIDs of live proxies, from their segments (stale files are skipped)."""
    pids = []
    for p in glob.glob(os.path.join(run_dir(), "uproxy-*.stats")):
        try:
            pid = int(os.path.basename(p)[len("uproxy-"):-len(".stats")])
        except ValueError:
            continue
        if os.path.exists(f"/proc/{pid}"):
            pids.append(pid)
    return sorted(pids)


def find_pid(pid: int | None) -> int:
    if pid is not None:
        if not os.path.exists(path_for(pid)):
            raise LookupError(f"no uproxy statistics for pid {pid} in {run_dir()} "
                              f"(is it a running uproxy? is UPROXY_RUN_DIR the same?)")
        return pid
    pids = running_pids()
    if not pids:
        raise LookupError(f"no running uproxy found (looked for {run_dir()}/uproxy-*.stats); "
                          f"start one with: uproxy run -c uproxy.toml")
    if len(pids) > 1:
        raise LookupError(f"several uproxy processes are running ({', '.join(map(str, pids))}); "
                          f"choose one with --pid")
    return pids[0]


class Reader:
    """Maps a running proxy's segment read-only."""

    def __init__(self, pid: int):
        self.pid = pid
        with open(path_for(pid), "rb") as f:
            self.mm = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ)
        self.buf = ffi.from_buffer(self.mm)
        base = ffi.cast("char *", self.buf)
        h = ffi.cast("struct up_shm_header *", base)
        if len(self.mm) < ffi.sizeof("struct up_shm_header") or h.magic != lib.UP_SHM_MAGIC:
            raise LayoutError(f"{path_for(pid)} is not a uproxy statistics segment")
        if h.version != lib.UP_SHM_VERSION:
            raise LayoutError(f"{path_for(pid)} has layout version {h.version}, this uproxy reads "
                              f"version {lib.UP_SHM_VERSION}: use the uproxy that started pid {pid}")
        self.header = h
        self.workers = [ffi.cast("struct up_shm_worker *", base + h.workers_offset + i * h.worker_size)
                        for i in range(h.nworkers)]
        self.servers = ffi.cast("struct up_shm_server *", base + h.servers_offset)
        self.events = ffi.cast("struct up_shm_event *", base + h.events_offset)
        row = h.max_servers * ffi.sizeof("struct up_shm_wserver")
        self.wservers = [ffi.cast("struct up_shm_wserver *", base + h.wservers_offset + i * row)
                         for i in range(h.nworkers)]

    def snapshot(self) -> dict:
        from . import features as feat
        h = self.header
        workers = []
        for i, w in enumerate(self.workers):
            workers.append({
                "index": i,
                "tid": int(w.tid),
                "cpu": int(ffi.cast("int64_t", w.cpu)),
                "state": STATES.get(int(w.state), str(int(w.state))),
                "heartbeat_ms": int(w.heartbeat_ms),
                "config_generation": int(w.config_generation),
                "features": feat.names(int(w.features)),
                "counters": {name: int(w.c[i]) for i, name in enumerate(COUNTERS)},
                "ops": {op: int(w.ops[n]) for n, op in _opnames().items() if w.ops[n]},
                "hist": {k: list(getattr(w, "hist_" + k)) for k in HISTS},
            })
        total = {name: sum(w["counters"][name] for w in workers) for name in COUNTERS}
        merged = {k: hist.merge(w["hist"][k] for w in workers) for k in HISTS}
        servers = []
        for slot in range(h.max_servers):
            sv = self.servers[slot]
            if not sv.in_use and not sv.generation:
                continue
            per = [self.wservers[i][slot] for i in range(h.nworkers)]
            servers.append({
                "slot": slot,
                "cluster": ffi.string(sv.cluster).decode(errors="replace"),
                "address": ffi.string(sv.address).decode(errors="replace"),
                "in_use": bool(sv.in_use),
                "health": {0: "down", 1: "up"}.get(int(sv.health), "unchecked"),
                **{f: sum(int(getattr(x, f)) for x in per) for f in WSERVER_FIELDS},
            })
        events = []
        n = int(h.events_written)
        for i in range(max(0, n - lib.UP_NEVENTS), n):
            e = self.events[i % lib.UP_NEVENTS]
            if e.time_ms:
                events.append({"time_ms": int(e.time_ms),
                               "text": ffi.string(e.text).decode(errors="replace")})
        return {
            "pid": int(h.pid),
            "layout_version": int(h.version),
            "start_time_ms": int(h.start_time_ms),
            "uptime_s": round(time.time() - h.start_time_ms / 1000, 3),
            "config_generation": int(h.config_generation),
            "reloads": int(h.reloads),
            "reload_failures": int(h.reload_failures),
            "features": feat.names(int(h.features)),
            "workers": workers,
            "total": total,
            "latency": {k: hist.summary(v) for k, v in merged.items()},
            "hist": merged,
            "servers": servers,
            "events": events,
        }

    def close(self):
        del self.header, self.workers, self.servers, self.events, self.wservers
        self.buf = None
        self.mm.close()


_OPNAMES = None


def _opnames() -> dict:
    """IORING_OP_* numbers -> names, from the installed liburing headers'
    order (stable kernel ABI)."""
    global _OPNAMES
    if _OPNAMES is None:
        names = ["NOP", "READV", "WRITEV", "FSYNC", "READ_FIXED", "WRITE_FIXED", "POLL_ADD",
                 "POLL_REMOVE", "SYNC_FILE_RANGE", "SENDMSG", "RECVMSG", "TIMEOUT",
                 "TIMEOUT_REMOVE", "ACCEPT", "ASYNC_CANCEL", "LINK_TIMEOUT", "CONNECT",
                 "FALLOCATE", "OPENAT", "CLOSE", "FILES_UPDATE", "STATX", "READ", "WRITE",
                 "FADVISE", "MADVISE", "SEND", "RECV", "OPENAT2", "EPOLL_CTL", "SPLICE",
                 "PROVIDE_BUFFERS", "REMOVE_BUFFERS", "TEE", "SHUTDOWN", "RENAMEAT",
                 "UNLINKAT", "MKDIRAT", "SYMLINKAT", "LINKAT", "MSG_RING", "FSETXATTR",
                 "SETXATTR", "FGETXATTR", "GETXATTR", "SOCKET", "URING_CMD", "SEND_ZC",
                 "SENDMSG_ZC"]
        _OPNAMES = {i: n.lower() for i, n in enumerate(names)}
    return _OPNAMES
