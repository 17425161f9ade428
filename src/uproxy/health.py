"""Active health checks: the control plane probes each server of a cluster
that has a [clusters.health] table, and tells the workers which servers are
up by writing one byte per server in the published table (the workers read
it with a relaxed load; nothing is locked). Checks never run on the request
path: they are a thread of the control plane.
"""
from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .telemetry import detail as detail_mod

log = logging.getLogger("uproxy")


def _expect_ok(expect: str, status: int) -> bool:
    for part in expect.split(","):
        part = part.strip()
        if part.endswith("xx"):
            if status // 100 == int(part[0]):
                return True
        elif status == int(part):
            return True
    return False


def timed_probe(address, host_label: str, health, tls=None, h2=False) -> tuple:
    """One check and how long it took: (ok, reason, seconds)."""
    t0 = time.monotonic()
    ok, why = probe(address, host_label, health, tls, h2)
    return ok, why, time.monotonic() - t0


def probe(address, host_label: str, health, tls=None, h2=False) -> tuple:
    """One check: (ok, reason). tls: (ssl context, server name) for a
    cluster that speaks TLS to its servers: the check's handshake counts
    (a certificate the workers would refuse fails it). h2: the cluster
    speaks HTTP/2 (protocol = "h2"): so does the check."""
    ask = _ask_h2 if h2 else _ask
    fam, sa = address
    timeout = health.timeout_ms / 1000
    try:
        with socket.socket(fam, socket.SOCK_STREAM) as raw:
            raw.settimeout(timeout)
            raw.connect(sa)
            if tls is None:
                return ask(raw, host_label, health, timeout, "connect ok")
            ctx, name = tls
            try:
                s = ctx.wrap_socket(raw, server_hostname=name)
            except ssl.SSLCertVerificationError as e:
                return False, f"TLS: {e.verify_message}"
            except ssl.SSLError as e:
                return False, f"TLS handshake: {e.reason or e}"
            with s:
                if h2 and s.selected_alpn_protocol() != "h2":
                    return False, "TLS: the server did not select ALPN h2 (protocol = \"h2\")"
                return ask(s, host_label, health, timeout, "TLS handshake ok")
    except socket.timeout:
        return False, f"no answer within {health.timeout_ms} ms"
    except OSError as e:
        return False, e.strerror or str(e)


def _ask(s, host_label: str, health, timeout: float, connected: str) -> tuple:
    """The HTTP part of a check on a connected socket (or none for tcp)."""
    if health.path is None:
        return True, connected
    s.sendall(f"GET {health.path} HTTP/1.1\r\nHost: {host_label}\r\n"
              f"User-Agent: uproxy-health\r\nConnection: close\r\n\r\n".encode())
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n" not in data and len(data) < 4096:
        s.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        return False, f"not an HTTP response: {line[:60]!r}"
    status = int(parts[1])
    if not _expect_ok(health.expect, status):
        return False, f"status {status}, expected {health.expect}"
    return True, f"status {status}"


def _ask_h2(s, host_label: str, health, timeout: float, connected: str) -> tuple:
    """The same over HTTP/2 (h2c by prior knowledge, or what follows ALPN
    h2): one GET on stream 1, its :status."""
    if health.path is None:
        return True, connected
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    scheme = "https" if isinstance(s, ssl.SSLSocket) else "http"
    conn.send_headers(1, [(":method", "GET"), (":scheme", scheme), (":path", health.path),
                          (":authority", host_label), ("user-agent", "uproxy-health")],
                      end_stream=True)
    s.sendall(conn.data_to_send())
    deadline = time.monotonic() + timeout
    while True:
        s.settimeout(max(0.001, deadline - time.monotonic()))
        data = s.recv(65536)
        if not data:
            return False, "closed before an HTTP/2 response"
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            return False, f"not an HTTP/2 server: {e}"
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                status = int(dict(ev.headers).get(b":status", b"0"))
                if not _expect_ok(health.expect, status):
                    return False, f"status {status}, expected {health.expect}"
                return True, f"status {status}"
            if isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                return False, "the server refused the HTTP/2 request"
        s.sendall(conn.data_to_send())


class HealthChecker:
    def __init__(self, runtime):
        self.rt = runtime
        self.state = {}      # (cluster, label) -> [up, successes, failures, next_due]
        # (cluster, label) -> what the dashboard shows: the last check's result,
        # reason and latency, when it ran and when the state last changed
        self.detail = {}
        self.targets = []    # (cluster, label, address, health, tls: (ssl context, name) or None,
                             #  h2: the cluster speaks HTTP/2)
        self.lock = threading.Lock()   # control plane only: checker thread vs reload
        self.stop = threading.Event()
        # Ends the thread's sleep early: a new configuration (its targets
        # are due at once) or close().
        self.wake = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="uproxy-health")
        self.thread = threading.Thread(target=self._run, name="uproxy-health", daemon=True)
        # the control plane's detail for `uproxy top` (telemetry/detail.py)
        self.publisher = detail_mod.Publisher(runtime, self)

    def configure(self, cfg):
        from . import tls as tls_mod
        targets = []
        for c in cfg.clusters.values():
            if c.health is None:
                continue
            ctx = None
            if c.tls is not None:
                try:
                    ctx = tls_mod.client_context(c.tls)
                    if c.protocol == "h2":
                        ctx.set_alpn_protocols(["h2"])
                except (ssl.SSLError, OSError) as e:      # the workers' contexts judged first
                    log.warning("health checks of cluster %s: no TLS context: %s", c.name, e)
            for s in c.servers:
                tls = (ctx, c.tls.sni or s.host) if ctx is not None else None
                targets.append((c.name, s.label, s.address, c.health, tls, c.protocol == "h2"))
        with self.lock:
            keep = {(t[0], t[1]) for t in targets}
            self.state = {k: v for k, v in self.state.items() if k in keep}
            self.detail = {k: v for k, v in self.detail.items() if k in keep}
            now_ms = int(time.time() * 1000)
            for cname, label, *_ in targets:
                self.state.setdefault((cname, label), [True, 0, 0, 0.0])
                self.detail.setdefault((cname, label), {
                    "checked": False, "up": True, "last_ok": None, "last_reason": None,
                    "last_latency_ms": None, "last_check_ms": None, "since_ms": now_ms,
                    "checks": 0})
            self.targets = targets
        self.wake.set()

    def details(self) -> list:
        """Per checked server: the last check (result, reason, latency, time)
        and the time of the last state change (CLOCK_REALTIME ms)."""
        with self.lock:
            return [{"cluster": c, "address": a, **d} for (c, a), d in sorted(self.detail.items())]

    def health_map(self) -> dict:
        with self.lock:
            return {k: v[0] for k, v in self.state.items()}

    def start(self):
        if not self.thread.is_alive():
            self.thread.start()

    def close(self):
        self.stop.set()
        self.wake.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.publisher.close()

    def _run(self):
        while not self.stop.is_set():
            now = time.monotonic()
            with self.lock:
                due = [t for t in self.targets if self.state[(t[0], t[1])][3] <= now]
                for t in due:
                    self.state[(t[0], t[1])][3] = now + t[3].interval_ms / 1000
            futures = [(t, self.pool.submit(timed_probe, t[2], t[1], t[3], t[4], t[5])) for t in due]
            for t, f in futures:
                try:
                    ok, why, took = f.result()
                except Exception as e:      # a bug in a check must not stop checking
                    ok, why, took = False, repr(e), None
                self._record(t, ok, why, took)
            self.publisher.tick()
            self.wake.wait(self._sleep_s())
            self.wake.clear()

    # The thread sleeps until the next check is due, the publisher's next
    # write at the latest: a proxy without health checks wakes once a
    # second, not 20 times (it shares the workers' CPUs: every wake-up is
    # CPU the proxy spends while idle, and under load it is counted per
    # request like the workers' own; bench/h2c_cost.py).
    MIN_SLEEP_S = 0.005

    def _sleep_s(self) -> float:
        now = time.monotonic()
        with self.lock:
            due = min((self.state[(t[0], t[1])][3] for t in self.targets), default=None)
        until = self.publisher.next_at - now
        if due is not None:
            until = min(until, due - now)
        return min(detail_mod.PERIOD_S, max(self.MIN_SLEEP_S, until))

    def _record(self, target, ok, why, took=None):
        cname, label, _, h, *_ = target
        with self.lock:
            st = self.state.get((cname, label))
            if st is None:
                return
            d = self.detail.get((cname, label))
            if d is not None:
                d.update(checked=True, last_ok=ok, last_reason=why, checks=d["checks"] + 1,
                         last_latency_ms=None if took is None else round(took * 1000, 2),
                         last_check_ms=int(time.time() * 1000))
            if ok:
                st[1], st[2] = st[1] + 1, 0
            else:
                st[1], st[2] = 0, st[2] + 1
            changed = None
            if st[0] and st[2] >= h.fall:
                st[0], changed = False, "down"
            elif not st[0] and st[1] >= h.rise:
                st[0], changed = True, "up"
            if d is not None:
                d["up"] = st[0]
                if changed:
                    d["since_ms"] = d["last_check_ms"]
        if changed:
            self.rt.set_health(cname, label, st[0])
            text = f"server {label} in cluster {cname} is {changed}" + ("" if ok else f": {why}")
            (log.warning if changed == "down" else log.info)("%s", text)
            self.rt.event(text)
