"""The dynamic part of the configuration from etcd v3 (providers/dynamic.py
says which part and how it lies over the file), watched.

The thread here only reads etcd: a consistent snapshot of the prefix (one
range read at one revision), then a watch from the next revision; every
event in the prefix makes a new snapshot, read at that event's revision.
The runtime's main loop tries each snapshot the way it tries a reload:
one that does not validate is refused (log, /status, /metrics, the
dashboard's events) and the last good one keeps serving. Losing etcd
changes nothing that serves: the thread retries the members in turn with
exponential back-off (capped by [etcd] backoff_max) and, once back,
compares what it reads with what is in force.

Client: etcd3gw (etcd's v3 JSON gateway over plain HTTP; no gRPC stack or
protobuf build to carry) for its session, URLs and key encoding. Its own
watch helper is not used: it neither reports a broken stream nor resumes
from a revision, which is the whole job here.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("uproxy")

API = "/v3/"                  # etcd 3.4+ (3.3 had /v3beta/)
# An idle watch gets etcd's progress notifications (every 10 minutes by
# default); a stream silent for longer than this is dead (a partitioned
# member), and is re-established.
STREAM_IDLE_S = 660


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(prefix: str) -> str:
    """etcd's range_end for "every key with this prefix"."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


@dataclass(frozen=True)
class Snapshot:
    kvs: dict              # key relative to the prefix -> value (JSON text)
    revision: int          # the etcd revision it was read at (the last change in the prefix)
    where: str             # for errors: "etcd /uproxy/ at revision 42"

    @property
    def digest(self) -> str:
        h = hashlib.sha256(json.dumps(self.kvs, sort_keys=True).encode()).hexdigest()
        return h[:16]


class Client:
    """One member's gateway."""

    def __init__(self, host: str, port: int, timeout: float):
        import etcd3gw
        self.endpoint = f"{host}:{port}"
        self.c = etcd3gw.client(host=host, port=port, timeout=timeout, api_path=API)
        self.timeout = timeout

    def range(self, prefix: str, revision: int | None = None) -> tuple:
        """(kvs, revision of the last change in the prefix, header revision)."""
        req = {"key": _b64(prefix), "range_end": prefix_end(prefix)}
        if revision:
            req["revision"] = revision
        r = self.c.post(self.c.get_url("/kv/range"), json=req)
        kvs, last = {}, 0
        for kv in r.get("kvs", []):
            kvs[_unb64(kv["key"])[len(prefix):]] = _unb64(kv.get("value", ""))
            last = max(last, int(kv.get("mod_revision", 0)))
        return kvs, last, int(r["header"]["revision"])

    def txn(self, puts: dict, deletes: list) -> int:
        """Every put and delete in one transaction: one revision, so a
        watcher never sees half of a publish."""
        ops = [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in puts.items()]
        ops += [{"request_delete_range": {"key": _b64(k)}} for k in deletes]
        r = self.c.post(self.c.get_url("/kv/txn"), json={"success": ops})
        return int(r["header"]["revision"])

    def watch(self, prefix: str, start_revision: int):
        """The streaming response of a watch on the prefix."""
        req = {"create_request": {"key": _b64(prefix), "range_end": prefix_end(prefix),
                                  "start_revision": start_revision, "progress_notify": True}}
        resp = self.c.session.post(self.c.get_url("/watch"), json=req, stream=True,
                                   timeout=(self.timeout, STREAM_IDLE_S))
        if resp.status_code != 200:
            raise ConnectionError(f"watch: HTTP {resp.status_code}: {resp.text[:200]}")
        return resp


def messages(resp):
    """The JSON messages of a gateway stream, as they come."""
    dec = json.JSONDecoder()
    buf = ""
    for chunk in resp.iter_content(chunk_size=None):
        buf += chunk.decode()
        while True:
            buf = buf.lstrip()
            if not buf:
                break
            try:
                msg, end = dec.raw_decode(buf)
            except ValueError:
                break                       # the rest of it is still on its way
            buf = buf[end:]
            yield msg
    raise ConnectionError("the watch stream ended")


class EtcdProvider:
    def __init__(self, settings, on_change):
        self.s = settings
        self.on_change = on_change
        self.prefix = settings.prefix
        self.timeout = settings.timeout_ms / 1000
        self.clients = [Client(h, p, self.timeout) for h, p in settings.endpoints]
        self.lock = threading.Lock()
        self.in_force: Snapshot | None = None    # the last snapshot accepted
        self.pending: Snapshot | None = None     # read, not yet tried by the runtime
        self.seen_revision = 0                   # newest revision read from etcd
        self.connected = False
        self.endpoint = None
        self.last_error = None
        self.refused_count = 0
        self.last_refused = None
        self.refused_kvs = None                  # not offered again until it changes
        self.reconnects = 0
        self.stopping = threading.Event()
        self._resp = None
        self._next = 0                           # the member to try next
        self.thread = threading.Thread(target=self._run, name="uproxy-etcd", daemon=True)

    def where(self, revision: int) -> str:
        return f"etcd {self.prefix} at revision {revision}"

    # ---- for the runtime (main thread)
    def fetch_once(self) -> Snapshot | None:
        """At start: one snapshot from the first member that answers, or
        None (the file alone serves until etcd is back; logged)."""
        for _ in self.clients:
            c = self._client()
            try:
                kvs, rev, _ = c.range(self.prefix)
            except Exception as e:
                self._failed(c, e)
                continue
            self.seen_revision = rev
            if not kvs:
                log.info("etcd: nothing under %s on %s yet; the file's clusters and routes "
                         "serve (publish them with `uproxy publish`)", self.prefix, c.endpoint)
                return None
            return Snapshot(kvs, rev, self.where(rev))
        log.error("etcd: no member of %s answered; starting with the file's own clusters and "
                  "routes, and retrying in the background", ", ".join(x.endpoint for x in self.clients))
        return None

    def take(self) -> Snapshot | None:
        with self.lock:
            snap, self.pending = self.pending, None
        return snap

    def accepted(self, snap: Snapshot):
        with self.lock:
            self.in_force = snap
            if self.last_refused is not None:
                self.last_refused["superseded"] = True

    def refused(self, snap: Snapshot, error):
        with self.lock:
            self.refused_count += 1
            self.last_refused = {"revision": snap.revision, "error": str(error),
                                 "time_ms": int(time.time() * 1000), "superseded": False}
            self.refused_kvs = snap.kvs
        running = self.in_force.revision if self.in_force else "none (the file's own)"
        log.error("etcd: revision %d refused, still serving revision %s: %s", snap.revision,
                  running, error)

    def status(self) -> dict:
        with self.lock:
            f = self.in_force
            return {"endpoints": [c.endpoint for c in self.clients], "prefix": self.prefix,
                    "connected": self.connected, "endpoint": self.endpoint,
                    "applied_revision": f.revision if f else None,
                    "applied_digest": f.digest if f else None,
                    "keys": sorted(f.kvs) if f else [],
                    "seen_revision": self.seen_revision, "refused": self.refused_count,
                    "last_refused": dict(self.last_refused) if self.last_refused else None,
                    "last_error": self.last_error, "reconnects": self.reconnects}

    def start(self):
        self.thread.start()
        return self

    def close(self):
        self.stopping.set()
        resp = self._resp
        if resp is not None:          # wake the thread out of its blocking read
            try:
                sock = resp.raw._connection.sock
                sock.shutdown(socket.SHUT_RDWR)
            except Exception:
                pass

    # ---- the thread
    def _client(self) -> Client:
        c = self.clients[self._next % len(self.clients)]
        self._next += 1
        return c

    def _failed(self, c: Client, e):
        text = f"{c.endpoint}: {e.__class__.__name__}: {str(e)[:200]}"
        if self.connected or self.last_error is None:
            log.warning("etcd: lost %s; the configuration in force keeps serving, retrying "
                        "the members with back-off", text)
        self.connected = False
        self.last_error = text

    def _offer(self, kvs: dict, rev: int):
        """A snapshot for the runtime, unless it is what already serves."""
        self.seen_revision = max(self.seen_revision, rev)
        with self.lock:
            f = self.in_force
            if f is not None and f.kvs == kvs:
                return
            if f is None and not kvs:
                return
            if kvs == self.refused_kvs:
                return
            self.pending = Snapshot(kvs, rev, self.where(rev))
        self.on_change()

    def _run(self):
        delay = 0.1
        while not self.stopping.is_set():
            c = self._client()
            try:
                kvs, rev, header = c.range(self.prefix)
                if not self.connected and self.last_error is not None:
                    self.reconnects += 1
                    log.info("etcd: connected to %s again (revision %d)", c.endpoint, rev)
                self.connected, self.endpoint, self.last_error = True, c.endpoint, None
                delay = 0.1
                self._offer(kvs, rev)
                self._follow(c, header + 1)
            except Exception as e:
                if self.stopping.is_set():
                    return
                self._failed(c, e)
                # back-off with jitter, so a fleet does not come back in step
                self.stopping.wait(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.s.backoff_max_ms / 1000)

    def _follow(self, c: Client, start: int):
        """Watch from start; each event makes a snapshot at its revision."""
        self._resp = resp = c.watch(self.prefix, start)
        try:
            for msg in messages(resp):
                if self.stopping.is_set():
                    return
                r = msg.get("result") or {}
                if "error" in msg:
                    raise ConnectionError(f"watch: {msg['error']}")
                if r.get("canceled"):
                    # compacted past where we were: read everything again
                    raise ConnectionError(f"watch canceled: {r.get('cancel_reason') or r}")
                events = r.get("events") or []
                if not events:
                    continue
                rev = max(int(ev["kv"].get("mod_revision", 0)) for ev in events)
                kvs, _, _ = c.range(self.prefix, revision=rev)
                self._offer(kvs, rev)
        finally:
            self._resp = None
            resp.close()


def publish(endpoints: list, prefix: str, kvs: dict, timeout: float = 5.0) -> tuple:
    """Write kvs (relative key -> JSON text) under prefix, deleting the keys
    there that kvs no longer has, in one transaction. (revision, removed
    keys); raises the last member's error when none answers."""
    last = None
    for host, port in endpoints:
        c = Client(host, port, timeout)
        try:
            old, _, _ = c.range(prefix)
            stale = sorted(k for k in old if k not in kvs)
            rev = c.txn({prefix + k: v for k, v in kvs.items()}, [prefix + k for k in stale])
            return rev, stale
        except Exception as e:
            last = e
    raise ConnectionError(f"no etcd member answered ({', '.join(f'{h}:{p}' for h, p in endpoints)}): {last}")
