"""The control plane's detail for `uproxy top`: what the statistics segment
does not hold, published by the proxy as a small JSON file next to it,
`<run dir>/uproxy-<pid>.detail.json` (written whole and renamed into place,
so a reader never sees half of it; mode 0600 like the segment, owned by the
proxy's user; removed when the proxy stops).

- ``health``: per actively checked server, the last check's result, reason
  and latency, when it ran, and when the server's state last changed;
- ``listeners``: each listener's name, address, mode, cluster, routes,
  whether it terminates TLS, and the id its access-log records carry (the
  per-listener panel names listeners with it);
- ``notes``: start-up warnings (the open-file limit) and every warning or
  error logged since, with their times, so the dashboard shows them instead
  of leaving them behind its screen.

The file is written by the health checker's thread (a control-plane thread;
nothing here runs on the request path), at most once a second and only when
its content changed. Readers: ``read(pid)``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time

from .. import shm

PERIOD_S = 1.0
MAX_NOTES = 30


def path_for(pid: int) -> str:
    return os.path.join(shm.run_dir(), f"uproxy-{pid}.detail.json")


def read(pid: int) -> dict | None:
    """The published detail of a running proxy, or None (an older proxy,
    or one that has not written it yet)."""
    try:
        with open(path_for(pid)) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


class _Notes(logging.Handler):
    """Keeps the warnings and errors logged by the proxy, with their times."""

    def __init__(self, ring, lock):
        super().__init__(level=logging.WARNING)
        self.ring, self.lk = ring, lock

    def emit(self, record):
        with contextlib.suppress(Exception):
            with self.lk:
                self.ring.append({"time_ms": int(record.created * 1000),
                                  "level": record.levelname.lower(),
                                  "text": record.getMessage()})
                del self.ring[:-MAX_NOTES]


def startup_notes(rt) -> list:
    """Warnings about how the proxy started that it logged before anyone
    could watch: recomputed from the runtime, so they are exact."""
    out = []
    with contextlib.suppress(Exception):
        cfg_max = rt.cfg.proxy.max_connections
        if rt.max_conns < cfg_max:
            import resource
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            out.append({"time_ms": int(rt.segment.header.start_time_ms), "level": "warning",
                        "text": f"open-file limit {soft} allows {rt.max_conns} client connections "
                                f"per worker (max_connections is {cfg_max}); raise it with "
                                f"ulimit -n or LimitNOFILE= to use more"})
    return out


def listeners(rt) -> list:
    out = []
    with contextlib.suppress(Exception):
        t = rt.tables[-1]
        for l in rt.cfg.listeners:
            s = t.sockets.get(l.name) if isinstance(t.sockets, dict) else None
            out.append({
                "id": getattr(s, "id", None), "name": l.name,
                "bind": f"{l.host}:{getattr(s, 'port', None) or l.port}",
                "mode": l.mode, "cluster": l.cluster, "access_log": bool(l.access_log),
                "tls": getattr(l, "tls", None) is not None,
                "routes": [{"host": r.host, "path_prefix": r.path_prefix, "cluster": r.cluster}
                           for r in (getattr(l, "routes", None) or ())],
            })
    return out


class Publisher:
    def __init__(self, rt, checker):
        self.rt, self.checker = rt, checker
        self.pid = os.getpid()
        self.path = path_for(self.pid)
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.notes: list = []
        self.handler = _Notes(self.notes, self.lock)
        logging.getLogger("uproxy").addHandler(self.handler)
        self.last_body = None
        self.next_at = 0.0
        self.closed = False

    def doc(self) -> dict:
        with self.lock:
            notes = list(self.notes)
        return {"pid": self.pid, "health": self.checker.details(),
                "listeners": listeners(self.rt),
                "notes": startup_notes(self.rt) + notes}

    def tick(self, force: bool = False):
        now = time.monotonic()
        if self.closed or (not force and now < self.next_at):
            return
        self.next_at = now + PERIOD_S
        if getattr(self.rt, "segment", None) is None:
            return
        body = json.dumps(self.doc(), separators=(",", ":"))
        if body == self.last_body:
            return
        with self.write_lock:           # never after close(): no file left behind
            if self.closed:
                return
            tmp = f"{self.path}.{threading.get_ident()}.tmp"
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)              # a stale one from a crash
                # as the segment: readable by the proxy's user only (it names
                # servers, addresses and what the proxy logged)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(body)
                os.replace(tmp, self.path)
                self.last_body = body
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def close(self):
        with self.write_lock:
            self.closed = True
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        logging.getLogger("uproxy").removeHandler(self.handler)
