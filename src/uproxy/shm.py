"""The shared-memory statistics segment (layout: docs/stats-layout.md).

The proxy creates ``/dev/shm/uproxy-<pid>.stats``; each worker writes only
its own block, and a process of the proxy's user (or root) may map the
file read-only and take a snapshot (``uproxy stats``, ``uproxy top``, the
admin endpoint) without touching the request path. The file is mode 0600:
its access-log rings hold client addresses, URLs and user agents. The
struct definitions come from the compiled core, so a reader and the writer
built from the same source agree; a reader that finds another layout
version says so instead of misreading.
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
GAUGES = {"active", "upstream_active", "pipes_in_use", "buffers_in_use", "pool_idle", "h2_arena_bytes",
          "small_buffers_in_use"}
HISTS = ("request", "upstream", "connect")
WSERVER_FIELDS = ("active", "in_flight", "requests", "connects", "connect_errors", "errors",
                  "idle", "reused", "resp_5xx", "timeouts", "ejections", "full")
# A cluster's own counters, kept in its servers' rows (summed per cluster).
CLUSTER_FIELDS = ("breaker_opens", "fast_fails", "budget_exhausted")
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


def _create_private(path: str) -> int:
    """The segment holds the access-log rings (client addresses, URLs, user
    agents): readable and writable by the proxy's user only (it is made
    after the proxy dropped privileges, so that user owns it). Made anew,
    never opened through a link or over a file someone else left in the
    shared run directory, which could keep that file's owner and mode."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:         # a stale one from an earlier process with this pid
        try:
            os.unlink(path)
        except PermissionError:
            raise ValueError(f"{path} exists and belongs to another user; remove it "
                             f"(it is no running uproxy's: this process has that pid)") from None
        fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)            # whatever the umask
    return fd


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
        listeners_off = _align(wservers_off + nworkers * row)
        lrow = lib.UP_LISTENER_SLOTS * ffi.sizeof("struct up_shm_wlistener")
        wlisteners_off = _align(listeners_off + lib.UP_LISTENER_SLOTS
                                * ffi.sizeof("struct up_shm_listener"))
        logs_off = _align(wlisteners_off + nworkers * lrow, 4096)
        ring_size = _align(ffi.sizeof("struct up_log_ring"), 4096)
        size = logs_off + nworkers * ring_size
        fd = _create_private(self.path)
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
        self.listeners = ffi.cast("struct up_shm_listener *", base + listeners_off)
        self.wlisteners = [ffi.cast("struct up_shm_wlistener *", base + wlisteners_off + i * lrow)
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
        h.proc_start = proc_start(os.getpid()) or 0
        h.features = features
        h.abi = lib.UP_ABI_VERSION
        h.max_servers = lib.UP_MAX_SERVERS
        h.hist_buckets = lib.UP_HIST_BUCKETS
        h.servers_offset = servers_off
        h.events_offset = events_off
        h.workers_offset = workers_off
        h.wservers_offset = wservers_off
        h.logs_offset = logs_off
        h.listeners_offset = listeners_off
        h.wlisteners_offset = wlisteners_off
        h.listener_slots = lib.UP_LISTENER_SLOTS
        h.log_records = lib.UP_LOG_RECORDS
        h.magic = lib.UP_SHM_MAGIC      # last: a reader trusts nothing before it
        self.slots = {}                 # (cluster, address) -> server slot
        self.lslots = {}                # listener name -> listener slot
        self.slot_gens = {}             # server slot -> the generation that gave it
        self.cslots = {}                # cluster name -> (cluster slot, generation)

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
            self.slot_gens[slot] = generation
            srv = self.servers[slot]
            ffi.memmove(srv.cluster, cluster.encode()[:47], min(47, len(cluster.encode())))
            ffi.memmove(srv.address, address.encode()[:55], min(55, len(address.encode())))
            srv.health = 2
        self.servers[slot].in_use = 1
        self.servers[slot].generation = generation
        return slot

    def cluster_slot(self, name: str, generation: int) -> tuple:
        """A stable slot per cluster name, and the generation that gave it:
        not a statistics block but the workers' balancing state of the
        cluster (its breaker, retry budget, cursor: native/upstream/wstate.h),
        which a cluster that stays keeps across reloads."""
        got = self.cslots.get(name)
        if got is None:
            used = {slot for slot, _ in self.cslots.values()}
            free = [i for i in range(lib.UP_CLUSTER_SLOTS) if i not in used]
            if not free:
                raise ValueError(f"more than {lib.UP_CLUSTER_SLOTS} distinct cluster names over "
                                 f"this process's life; restart uproxy to reset them")
            got = self.cslots[name] = (free[0], generation)
        return got

    def listener_slot(self, name: str, mode: int) -> int:
        """A stable slot per listener name: its counters carry on across
        reloads while it stays."""
        slot = self._slot(name, name, range(lib.UP_LISTENER_ONLY_SLOTS), "listener names")
        self.listeners[slot].mode = mode
        self.listeners[slot].in_use = 1
        return slot

    def route_slot(self, listener: str, index: int, host, path_prefix) -> int:
        """A stable statistics slot for an HTTP route, by what it matches
        (its listener, host and path prefix): the same route keeps its
        counters across reloads, even when routes before it come or go."""
        label = f"{host or '*'}{path_prefix or ''}"
        parent = self.lslots[listener]
        slot = self._slot(("route", listener, host, path_prefix), f"{listener} {label}",
                          range(lib.UP_LISTENER_ONLY_SLOTS, lib.UP_LISTENER_SLOTS), "routes")
        ls = self.listeners[slot]
        ls.mode = lib.UP_MODE_HTTP
        ls.parent = parent + 1
        ls.route = index
        ls.in_use = 1
        return slot

    def _slot(self, key, name: str, span: range, what: str) -> int:
        slot = self.lslots.get(key)
        if slot is None:
            used = set(self.lslots.values())
            free = [i for i in span if i not in used]
            if not free:
                raise ValueError(f"more than {len(span)} distinct {what} over this process's life; "
                                 f"restart uproxy to reset their statistics")
            slot = free[0]
            self.lslots[key] = slot
            b = name.encode()[:47]
            ffi.memmove(self.listeners[slot].name, b, len(b))
        return slot

    def retire_listeners(self, live: set):
        """Marks unused every listener and route slot not in live (slots)."""
        for slot in self.lslots.values():
            if slot not in live:
                self.listeners[slot].in_use = 0

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


def proc_start(pid: int) -> int | None:
    """When the process that has this pid now started (clock ticks since
    boot), or None when no process has it. Pids are reused (pid_max is
    32768 on many systems), so a pid alone does not name a process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or
    # parentheses itself: count fields from the last ')'.
    return int(stat[stat.rindex(b")") + 2:].split()[19])


class StaleError(LookupError):
    """A segment whose writer is gone (its pid may belong to another
    process now)."""


def running_pids() -> list:
    """PIDs of live proxies, from their segments (stale files are skipped)."""
    pids = []
    for p in glob.glob(os.path.join(run_dir(), "uproxy-*.stats")):
        try:
            pid = int(os.path.basename(p)[len("uproxy-"):-len(".stats")])
        except ValueError:
            continue
        if _writer_alive(pid):
            pids.append(pid)
    return sorted(pids)


def _writer_alive(pid: int) -> bool:
    """Is the process that wrote uproxy-<pid>.stats still the one with that
    pid? (Unreadable segments, another user's, count as alive: the Reader
    says why it cannot read them.)"""
    now = proc_start(pid)
    if now is None:
        return False
    try:
        with open(path_for(pid), "rb") as f:
            head = f.read(ffi.sizeof("struct up_shm_header"))
    except PermissionError:
        return True
    except OSError:
        return False
    if len(head) < ffi.sizeof("struct up_shm_header"):
        return False
    h = ffi.cast("struct up_shm_header *", ffi.from_buffer(head))
    return h.magic != lib.UP_SHM_MAGIC or not _stale(h, now)


def _stale(h, now: int | None) -> bool:
    """Was this segment written by another process than the one started at
    `now` (clock ticks since boot)?"""
    if now is None:
        return True
    if int(h.proc_start):
        return int(h.proc_start) != now
    # Written by a uproxy from before proc_start: compare wall clocks (the
    # boot time has a one-second grain; a segment is made after its process
    # started, so one made well before that start is another's).
    try:
        with open("/proc/stat") as f:
            btime = next(int(l.split()[1]) for l in f if l.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return False
    started_ms = (btime + now / os.sysconf("SC_CLK_TCK")) * 1000
    return int(h.start_time_ms) < started_ms - 2000


def sweep_stale():
    """Remove the files of proxies that ended without removing them (a
    SIGKILL, a crash): their pids come back for other processes, and the run
    directory should not fill up. Only our own user's files; segments first,
    then the files beside them whose segment is gone and whose pid is free."""
    me = os.geteuid()
    files = sorted(glob.glob(os.path.join(run_dir(), "uproxy-*")),
                   key=lambda p: not p.endswith(".stats"))
    for p in files:
        name = os.path.basename(p)
        try:
            pid = int(name[len("uproxy-"):].split(".", 1)[0])
            if pid == os.getpid() or os.stat(p).st_uid != me:
                continue
        except (ValueError, OSError):
            continue
        if name.endswith(".stats"):
            stale = not _writer_alive(pid)
        else:
            stale = not os.path.exists(path_for(pid)) and proc_start(pid) is None
        if stale:
            try:
                os.unlink(p)
            except OSError:
                pass


def find_pid(pid: int | None) -> int:
    if pid is not None:
        if not os.path.exists(path_for(pid)):
            raise LookupError(f"no uproxy statistics for pid {pid} in {run_dir()} "
                              f"(is it a running uproxy? is UPROXY_RUN_DIR the same?)")
        if not _writer_alive(pid):
            raise StaleError(f"uproxy pid {pid} is not running: {path_for(pid)} was left by a "
                             f"proxy that ended without removing it (remove the file)")
        return pid
    pids = running_pids()
    if not pids:
        raise LookupError(f"no running uproxy found (looked for {run_dir()}/uproxy-*.stats); "
                          f"start one with: uproxy run -c uproxy.toml")
    if len(pids) > 1:
        raise LookupError(f"several uproxy processes are running ({', '.join(map(str, pids))}); "
                          f"choose one with --pid")
    return pids[0]


def _not_yours(pid: int) -> str:
    """What to do when the segment is another user's (it is readable by the
    proxy's user only: it holds client addresses and URLs)."""
    import pwd
    try:
        uid = os.stat(path_for(pid)).st_uid
        user = pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        uid, user = None, None
    import sys
    cmd = "uproxy " + (sys.argv[1] if sys.argv[1:2] and sys.argv[1] in ("stats", "top")
                       else "<command>")
    who = f"user {user}" if user else (f"uid {uid}" if uid is not None else "the proxy's user")
    if user == "root":
        todo = f"run this as root ({'sudo ' + cmd})"
    else:
        todo = (f"run this as root or as {who} (sudo {cmd}"
                + (f", or sudo -u {user} {cmd})" if user else ")"))
    return (f"cannot read the statistics of uproxy pid {pid}: {path_for(pid)} is readable only "
            f"by the user the proxy runs as, {who} (it holds client addresses and URLs); {todo}")


class Reader:
    """Maps a running proxy's segment read-only."""

    def __init__(self, pid: int):
        self.pid = pid
        try:
            f = open(path_for(pid), "rb")
        except PermissionError:
            raise PermissionError(_not_yours(pid)) from None
        with f:
            self.mm = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ)
        self.buf = ffi.from_buffer(self.mm)
        base = ffi.cast("char *", self.buf)
        h = ffi.cast("struct up_shm_header *", base)
        if len(self.mm) < ffi.sizeof("struct up_shm_header") or h.magic != lib.UP_SHM_MAGIC:
            raise LayoutError(f"{path_for(pid)} is not a uproxy statistics segment")
        if h.version != lib.UP_SHM_VERSION:
            raise LayoutError(f"{path_for(pid)} has layout version {h.version}, this uproxy reads "
                              f"version {lib.UP_SHM_VERSION}: use the uproxy that started pid {pid}")
        if _stale(h, proc_start(pid)):
            raise StaleError(f"uproxy pid {pid} is not running: {path_for(pid)} was left by a "
                             f"proxy that ended without removing it (remove the file)")
        self.header = h
        self.workers = [ffi.cast("struct up_shm_worker *", base + h.workers_offset + i * h.worker_size)
                        for i in range(h.nworkers)]
        self.servers = ffi.cast("struct up_shm_server *", base + h.servers_offset)
        self.events = ffi.cast("struct up_shm_event *", base + h.events_offset)
        row = h.max_servers * ffi.sizeof("struct up_shm_wserver")
        self.wservers = [ffi.cast("struct up_shm_wserver *", base + h.wservers_offset + i * row)
                         for i in range(h.nworkers)]
        self.listeners = ffi.cast("struct up_shm_listener *", base + h.listeners_offset)
        lrow = h.listener_slots * ffi.sizeof("struct up_shm_wlistener")
        self.wlisteners = [ffi.cast("struct up_shm_wlistener *", base + h.wlisteners_offset + i * lrow)
                           for i in range(h.nworkers)]

    def listener_stats(self) -> list:
        """Per listener (by name), summed over the workers: connections,
        requests, responses by class and the request-time histogram; under
        "routes", the same for each of its HTTP routes (requests it routed,
        their responses and times), in their order."""
        h = self.header
        out, routes = [], []
        for slot in range(h.listener_slots):
            ls = self.listeners[slot]
            name = ffi.string(ls.name)
            if not name:                  # never used
                continue
            per = [self.wlisteners[i][slot] for i in range(h.nworkers)]
            resp = [sum(int(x.resp[k]) for x in per) for k in range(5)]
            row = {
                "slot": slot,
                "name": name.decode(errors="replace"),
                "in_use": bool(ls.in_use),
                "mode": "http" if int(ls.mode) == lib.UP_MODE_HTTP else "tcp",
                "accepted": sum(int(x.accepted) for x in per),
                "requests": sum(int(x.requests) for x in per),
                **{f"resp_{k + 1}xx": resp[k] for k in range(5)},
                "hist": hist.merge(list(x.hist_request) for x in per),
            }
            if ls.parent:                 # an HTTP route's: under its listener
                row.update(parent=int(ls.parent) - 1, route=int(ls.route))
                del row["accepted"]
                routes.append(row)
            else:
                row["routes"] = []
                out.append(row)
        by_slot = {r["slot"]: r for r in out}
        for r in sorted(routes, key=lambda r: r["route"]):
            if r["parent"] in by_slot:
                by_slot[r["parent"]]["routes"].append(r)
        return out

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
                "_cluster": [{f: int(getattr(x, f)) for f in CLUSTER_FIELDS + ("breaker_state",)}
                             for x in per],
            })
        clusters = _clusters(servers, h.nworkers)
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
            "clusters": clusters,
            "listeners": self.listener_stats(),
            "events": events,
        }

    def close(self):
        del self.header, self.workers, self.servers, self.events, self.wservers
        del self.listeners, self.wlisteners
        self.buf = None
        self.mm.close()


def _clusters(servers: list, nworkers: int) -> dict:
    """Per cluster: its circuit breaker and retry budget counters (summed
    over its servers' rows, where the core keeps them) and its breaker's
    state in each worker (the row of its first server in use says it)."""
    out = {}
    for sv in servers:
        rows = sv.pop("_cluster")
        c = out.setdefault(sv["cluster"], {**{f: 0 for f in CLUSTER_FIELDS},
                                           "breaker": ["closed"] * nworkers})
        for i, r in enumerate(rows):
            for f in CLUSTER_FIELDS:
                c[f] += r[f]
            if sv["in_use"] and r["breaker_state"]:
                c["breaker"][i] = {1: "open", 2: "half-open"}.get(r["breaker_state"], "closed")
    return out


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
