"""The access log: the control plane drains the workers' record rings (in
the statistics segment) and writes JSON lines or the combined format to a
file or to stdout/stderr. Files are reopened on reload, so log rotation is
`mv` then `uproxy reload`."""
from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import sys
import threading

from ._native import ffi, lib

log = logging.getLogger("uproxy")


def _text(buf, n) -> str:
    return ffi.unpack(buf, n).decode("latin-1") if n else ""


def _addr(rec) -> str:
    if rec.addr_len == 4:
        return str(ipaddress.IPv4Address(bytes(ffi.unpack(rec.addr, 4))))
    if rec.addr_len == 16:
        return str(ipaddress.IPv6Address(bytes(ffi.unpack(rec.addr, 16))))
    return "-"


def fields(rec, servers: dict) -> dict:
    t = datetime.datetime.fromtimestamp(rec.time_ms / 1000, datetime.timezone.utc).astimezone()
    target = _text(rec.target, min(rec.target_len, ffi.sizeof(rec.target)))
    method = _text(rec.method, rec.method_len)
    return {
        "time": t.isoformat(timespec="milliseconds"),
        "client": _addr(rec),
        "port": rec.port,
        "method": method or "-",
        "target": target or "-",
        # An HTTP/2 stream's head reaches the transaction as HTTP/1.1; the
        # line names what the client spoke, as nginx's and HAProxy's do.
        "version": "HTTP/2.0" if rec.h2 else f"HTTP/1.{rec.minor}",
        "host": _text(rec.host, rec.host_len) or None,
        "status": rec.status,
        "bytes_in": rec.bytes_in,
        "bytes_out": rec.bytes_out,
        "duration_ms": round(rec.duration_us / 1000, 3),
        "upstream": servers.get(rec.server_slot) if rec.server_slot != 0xffff else None,
        "user_agent": _text(rec.ua, rec.ua_len) or None,
        "referer": _text(rec.referer, rec.referer_len) or None,
        **_tls(rec),
        "_t": t,
    }


def _tls(rec) -> dict:
    # Only TLS requests carry these keys: a plain listener's lines stay as they were.
    if not rec.tls_version:
        return {}
    return {
        "tls_version": {0x12: "TLSv1.2", 0x13: "TLSv1.3"}.get(rec.tls_version, "?"),
        "tls_cipher": _text(rec.cipher, rec.cipher_len) or None,
        "sni": _text(rec.sni, rec.sni_len) or None,
        "tls_resumed": bool(rec.tls_resumed),
    }


def combined(f: dict) -> str:
    request = f"{f['method']} {f['target']} {f['version']}" if f["method"] != "-" else "-"
    stamp = f["_t"].strftime("%d/%b/%Y:%H:%M:%S %z")
    size = f["bytes_out"] or "-"
    q = lambda v: (v or "-").replace('"', '\\"')
    return (f'{f["client"]} - - [{stamp}] "{q(request)}" {f["status"]} {size} '
            f'"{q(f["referer"])}" "{q(f["user_agent"])}"')


def json_line(f: dict) -> str:
    return json.dumps({k: v for k, v in f.items() if not k.startswith("_")}, separators=(",", ":"))


class AccessLog:
    def __init__(self, runtime):
        self.rt = runtime
        self.rings = []
        self.targets = {}         # listener id -> (file object, format)
        self.files = {}           # path -> file object
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.wake = threading.Event()     # configure() and close() end its sleep
        self.thread = threading.Thread(target=self._run, name="uproxy-accesslog", daemon=True)

    def configure(self, tables):
        """Map listener ids to destinations; (re)open files."""
        with self.lock:
            for path, f in self.files.items():
                if f not in (sys.stdout, sys.stderr):
                    f.close()
            self.files = {}
            self.targets = {}
            for l in tables.cfg.listeners:
                if not l.access_log:
                    continue
                dest = l.access_log
                f = self.files.get(dest)
                if f is None:
                    if dest == "stdout":
                        f = sys.stdout
                    elif dest == "stderr":
                        f = sys.stderr
                    else:
                        try:
                            f = open(dest, "a", buffering=1 << 16)
                        except OSError as e:
                            log.error("access log %s: %s; its records are dropped", dest, e.strerror)
                            continue
                    self.files[dest] = f
                self.targets[tables.sockets[l.name].id] = (f, l.access_log_format)
        self.wake.set()

    def start(self):
        seg = self.rt.segment
        self.rings = seg.log_rings
        self.thread.start()

    def drain(self):
        seg = self.rt.segment
        servers = {slot: f"{c}/{a}" for (c, a), slot in seg.slots.items()}
        written = set()
        with self.lock:
            for ring in self.rings:
                head = lib.up_log_head(ring)
                tail = ring.tail
                while tail < head:
                    rec = ring.recs[tail % lib.UP_LOG_RECORDS]
                    dest = self.targets.get(rec.listener_id)
                    if dest:
                        f, fmt = dest
                        fl = fields(rec, servers)
                        f.write((combined(fl) if fmt == "combined" else json_line(fl)) + "\n")
                        written.add(f)
                    tail += 1
                lib.up_log_consumed(ring, tail)
            for f in written:
                try:
                    f.flush()
                except OSError:
                    pass

    # Records are drained ten times a second while some listener logs (a
    # worker's ring holds UP_LOG_RECORDS); with none, the workers write no
    # record (t->logging) and the thread only waits for a configuration
    # that has one, instead of waking ten times a second for nothing on
    # the workers' CPUs.
    def _run(self):
        while not self.stop.is_set():
            self.wake.wait(self.DRAIN_S if self.targets else None)
            self.wake.clear()
            if not self.stop.is_set():
                self.drain()

    DRAIN_S = 0.1

    def close(self):
        self.stop.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(2)
        self.drain()
        with self.lock:
            for f in self.files.values():
                if f not in (sys.stdout, sys.stderr):
                    f.close()
