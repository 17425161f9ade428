"""The admin endpoint: /metrics (Prometheus), /status (JSON), /health.

Served by a threaded http.server in a daemon thread of the proxy process,
from the statistics segment read at request time (a custom prometheus-client
Collector builds the families per scrape): nothing is added to the request
path, and no counter is kept twice.

    [admin]
    bind = "127.0.0.1:9901"
"""
from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.core import (CollectorRegistry, CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.samples import Sample

from . import __version__, hist, shm, tls

log = logging.getLogger("uproxy")

# Histogram bucket edges exported: every 8th bucket of the core's
# log-linear histogram, i.e. the powers of two microseconds from 8 us. They
# coincide with bucket boundaries, so each cumulative count is exact.
EDGE_BUCKETS = list(range(8, hist.BUCKETS, 8))
HIST_HELP = {
    "request": "HTTP requests, first byte received to response sent",
    "upstream": "HTTP, request sent upstream to response head received",
    "connect": "Upstream connects, started to established",
}


def _labels(**kw):
    return list(kw.keys()), list(kw.values())


class SegmentCollector:
    """prometheus-client Collector over a shm.Reader: everything is read at
    scrape time from what the workers already write."""

    def __init__(self, reader: shm.Reader):
        self.reader = reader
        self.lock = threading.Lock()

    def snapshot(self) -> dict:
        with self.lock:
            return self.reader.snapshot()

    def collect(self):
        snap = self.snapshot()
        info = InfoMetricFamily("uproxy", "uproxy build and process")
        info.add_metric([], {"version": __version__, "pid": str(snap["pid"]),
                             "features": ",".join(snap["features"])})
        yield info
        g = GaugeMetricFamily("uproxy_uptime_seconds", "Seconds since the proxy started")
        g.add_metric([], snap["uptime_s"])
        yield g
        g = GaugeMetricFamily("uproxy_config_generation", "Configuration generation in force")
        g.add_metric([], snap["config_generation"])
        yield g
        for name, key, doc in (("uproxy_reloads", "reloads", "Configuration reloads that took"),
                               ("uproxy_reload_failures", "reload_failures", "Reloads refused")):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], snap[key])
            yield c

        running = GaugeMetricFamily("uproxy_worker_running", "1 while the worker runs its loop",
                                    labels=["worker", "cpu"])
        heartbeat = GaugeMetricFamily("uproxy_worker_state", "Worker state (one series per state, 1 = current)",
                                      labels=["worker", "state"])
        for w in snap["workers"]:
            running.add_metric([str(w["index"]), str(w["cpu"])], 1 if w["state"] == "running" else 0)
            heartbeat.add_metric([str(w["index"]), w["state"]], 1)
        yield running
        yield heartbeat

        for name in shm.COUNTERS:
            if name in shm.GAUGES:
                fam = GaugeMetricFamily(f"uproxy_{name}", f"Core gauge {name}", labels=["worker"])
            else:
                fam = CounterMetricFamily(f"uproxy_{name}", f"Core counter {name}", labels=["worker"])
            for w in snap["workers"]:
                fam.add_metric([str(w["index"])], w["counters"][name])
            yield fam

        ops = CounterMetricFamily("uproxy_uring_ops", "io_uring SQEs submitted, by opcode",
                                  labels=["worker", "op"])
        for w in snap["workers"]:
            for op, n in sorted(w["ops"].items()):
                ops.add_metric([str(w["index"]), op], n)
        yield ops

        for kind, h in snap["hist"].items():
            fam = HistogramMetricFamily(f"uproxy_{kind}_duration_seconds",
                                        HIST_HELP.get(kind, kind) + " (all workers; no _sum: the "
                                        "core keeps bucket counts only)")
            buckets, acc, i = [], 0, 0
            for edge in EDGE_BUCKETS:
                while i < edge:
                    acc += h[i]
                    i += 1
                buckets.append((_fmt_le(hist.lower(edge) / 1e6), acc))
            buckets.append(("+Inf", sum(h)))
            fam.add_metric([], buckets, sum_value=None)
            # _count without _sum: the core keeps counts per bucket, not a sum
            fam.samples.append(Sample(f"uproxy_{kind}_duration_seconds_count", {}, sum(h)))
            yield fam

        labels = ["cluster", "address"]
        fields = {
            "active": (GaugeMetricFamily, "Upstream connections open"),
            "in_flight": (GaugeMetricFamily, "Requests or sessions in progress"),
            "idle": (GaugeMetricFamily, "Idle pooled connections"),
            "requests": (CounterMetricFamily, "HTTP requests sent, or L4 sessions"),
            "connects": (CounterMetricFamily, "Connects started"),
            "connect_errors": (CounterMetricFamily, "Connects that failed"),
            "errors": (CounterMetricFamily, "Resets, timeouts, 5xx and bad responses"),
            "reused": (CounterMetricFamily, "Requests sent on a reused connection"),
            "resp_5xx": (CounterMetricFamily, "HTTP responses of status 500-599 it sent"),
            "timeouts": (CounterMetricFamily, "Connects and HTTP response heads that timed out"),
            "ejections": (CounterMetricFamily, "Passive ejections (fail_threshold failures in a row)"),
            "full": (CounterMetricFamily, "Picks that passed it over: at the cluster's max_in_flight"),
        }
        servers = [s for s in snap["servers"] if s["in_use"]]
        for f, (cls, doc) in fields.items():
            fam = cls(f"uproxy_server_{f}", doc, labels=labels)
            for s in servers:
                fam.add_metric([s["cluster"], s["address"]], s[f])
            yield fam
        # Per cluster: circuit breaker and retry budget (docs/resilience.md).
        cdocs = {
            "breaker_opens": "Times its circuit breaker opened (summed over workers)",
            "fast_fails": "Requests its open circuit breaker answered with 503",
            "budget_exhausted": "Retries its retry budget refused",
        }
        cls_ = snap.get("clusters", {})
        for f, doc in cdocs.items():
            fam = CounterMetricFamily(f"uproxy_cluster_{f}", doc, labels=["cluster"])
            for name, c in cls_.items():
                fam.add_metric([name], c[f])
            yield fam
        fam = GaugeMetricFamily("uproxy_cluster_breaker_open",
                                "Workers in which its circuit breaker is open or half-open",
                                labels=["cluster", "state"])
        for name, c in cls_.items():
            for st in ("open", "half-open"):
                fam.add_metric([name, st], sum(1 for b in c["breaker"] if b == st))
        yield fam
        # Per listener, as HAProxy's frontends: every listener, access log or not.
        lsts = [l for l in snap.get("listeners", []) if l["in_use"]]
        fam = CounterMetricFamily("uproxy_listener_connections", "Client connections accepted",
                                  labels=["listener"])
        for l in lsts:
            fam.add_metric([l["name"]], l["accepted"])
        yield fam
        fam = CounterMetricFamily("uproxy_listener_requests", "HTTP requests received",
                                  labels=["listener"])
        for l in lsts:
            if l["mode"] == "http":
                fam.add_metric([l["name"]], l["requests"])
        yield fam
        fam = CounterMetricFamily("uproxy_listener_responses", "HTTP responses sent, by status class",
                                  labels=["listener", "class"])
        for l in lsts:
            if l["mode"] == "http":
                for k in range(1, 6):
                    fam.add_metric([l["name"], f"{k}xx"], l[f"resp_{k}xx"])
        yield fam
        # Per HTTP route, as Traefik's routers: route = what it matches,
        # "host/path prefix" ("*" for any host).
        routes = [(l, r) for l in lsts for r in l.get("routes", ()) if r["in_use"]]
        fam = CounterMetricFamily("uproxy_route_requests", "HTTP requests the route took",
                                  labels=["listener", "route"])
        for l, r in routes:
            fam.add_metric([l["name"], _route_label(l, r)], r["requests"])
        yield fam
        fam = CounterMetricFamily("uproxy_route_responses", "HTTP responses to the route's requests, "
                                  "by status class", labels=["listener", "route", "class"])
        for l, r in routes:
            for k in range(1, 6):
                fam.add_metric([l["name"], _route_label(l, r), f"{k}xx"], r[f"resp_{k}xx"])
        yield fam
        fam = GaugeMetricFamily("uproxy_server_health", "Active health: 1 up, 0 down; "
                                "absent while not checked", labels=labels)
        for s in servers:
            if s["health"] in ("up", "down"):
                fam.add_metric([s["cluster"], s["address"]], 1 if s["health"] == "up" else 0)
        yield fam


def _route_label(listener: dict, route: dict) -> str:
    """A route's name in the segment is "<listener> <host><path prefix>"."""
    n = route["name"]
    return n[len(listener["name"]) + 1:] if n.startswith(listener["name"] + " ") else n


class TLSCollector:
    """Each certificate's expiry, from the configuration in force (the
    TLS counters come with the core's others, from the segment)."""

    def __init__(self, runtime):
        self.runtime = runtime

    def collect(self):
        cfg = getattr(self.runtime, "cfg", None)
        fam = GaugeMetricFamily(
            "uproxy_tls_certificate_expiry_timestamp_seconds",
            "When a listener's certificate expires (Unix time; alert on it minus time())",
            labels=["listener", "cert", "name"])
        cfam = GaugeMetricFamily(
            "uproxy_tls_client_certificate_expiry_timestamp_seconds",
            "When a cluster's client certificate (upstream mTLS) expires (Unix time)",
            labels=["cluster", "cert", "name"])
        for l in (cfg.listeners if cfg else ()):
            for c in (l.tls.certificates if l.tls else ()):
                fam.add_metric([l.name, c.cert, c.label], c.not_after)
        for c in (cfg.clusters.values() if cfg else ()):
            if c.tls is not None and c.tls.cert is not None:
                cfam.add_metric([c.name, c.tls.cert.cert, c.tls.cert.label], c.tls.cert.not_after)
        yield fam
        yield cfam
        yield from self._acme()

    def _acme(self):
        """ACME's certificates: seconds left (negative: expired, -1 and
        state placeholder: none issued yet) and failures in a row."""
        m = getattr(self.runtime, "acme", None)
        if m is None:
            return
        left = GaugeMetricFamily("uproxy_certificate_expiry_seconds", "Seconds until an ACME "
                                 "certificate expires (alert well before 0)", labels=["name"])
        fails = GaugeMetricFamily("uproxy_acme_failures", "ACME orders that failed in a row "
                                  "for a certificate (0 once one succeeds)", labels=["name"])
        issued = GaugeMetricFamily("uproxy_acme_certificate_issued", "1 when an ACME "
                                   "certificate is issued, 0 while the placeholder serves",
                                   labels=["name"])
        for e in m.status():
            name = e["names"][0]
            if e["expires_in_s"] is not None:
                left.add_metric([name], e["expires_in_s"])
            fails.add_metric([name], e["failures"])
            issued.add_metric([name], 1 if e["state"] == "issued" else 0)
        yield left
        yield fails
        yield issued


class ProvidersCollector:
    """DNS answers and etcd's revision, from the control plane's providers."""

    def __init__(self, runtime):
        self.runtime = runtime

    def collect(self):
        ps = getattr(self.runtime, "providers_status", None)
        st = ps() if ps is not None else {}
        addrs = GaugeMetricFamily("uproxy_dns_addresses", "Addresses a server name resolves to "
                                  "now (the last answer, kept while resolvers fail)",
                                  labels=["cluster", "name"])
        fails = CounterMetricFamily("uproxy_dns_failures", "Lookups the resolvers did not "
                                    "answer (the last answer stayed in force)",
                                    labels=["cluster", "name"])
        failing = GaugeMetricFamily("uproxy_dns_failing", "1 while the last lookup of a name "
                                    "failed", labels=["cluster", "name"])
        for e in st.get("dns") or ():
            addrs.add_metric([e["cluster"], e["name"]], len(e["addresses"]))
            fails.add_metric([e["cluster"], e["name"]], e["failures"])
            failing.add_metric([e["cluster"], e["name"]], 1 if e["error"] else 0)
        yield addrs
        yield fails
        yield failing
        et = st.get("etcd")
        if et:
            g = GaugeMetricFamily("uproxy_etcd_revision", "etcd revision of the dynamic "
                                  "configuration in force (0: none applied)")
            g.add_metric([], et["applied_revision"] or 0)
            yield g
            g = GaugeMetricFamily("uproxy_etcd_connected", "1 while the etcd watch is up")
            g.add_metric([], 1 if et["connected"] else 0)
            yield g
            c = CounterMetricFamily("uproxy_etcd_refused", "etcd revisions refused because "
                                    "they did not validate (the last good one kept serving)")
            c.add_metric([], et["refused"])
            yield c
            g = GaugeMetricFamily("uproxy_etcd_refused_revision", "The newest etcd revision "
                                  "refused and not yet superseded by a good one (0: none)")
            g.add_metric([], (et["last_refused"] or {}).get("revision", 0)
                         if et["last_refused"] and not et["last_refused"].get("superseded") else 0)
            yield g
            c = CounterMetricFamily("uproxy_etcd_reconnects", "Times the etcd watch was "
                                    "re-established after a failure")
            c.add_metric([], et["reconnects"])
            yield c


def _fmt_le(v: float) -> str:
    return repr(float(v))


def health(snap: dict) -> tuple:
    states = [w["state"] for w in snap["workers"]]
    ok = bool(states) and all(s == "running" for s in states)
    return (200 if ok else 503), {"status": "ok" if ok else "unavailable",
                                  "workers": {str(w["index"]): w["state"] for w in snap["workers"]}}


class AdminServer:
    def __init__(self, runtime, host: str, port: int):
        self.runtime = runtime
        self.reader = shm.Reader(os.getpid())
        self.collector = SegmentCollector(self.reader)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.registry.register(TLSCollector(runtime))
        self.registry.register(ProvidersCollector(runtime))
        admin = self

        class Handler(BaseHTTPRequestHandler):
            server_version = f"uproxy-admin/{__version__}"
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):        # no access log on stderr
                pass

            def _send(self, code, body: bytes, ctype: str):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        self._send(200, generate_latest(admin.registry), CONTENT_TYPE_LATEST)
                    elif path == "/status":
                        body = json.dumps(admin.status()).encode()
                        self._send(200, body, "application/json")
                    elif path == "/health":
                        code, doc = health(admin.collector.snapshot())
                        self._send(code, json.dumps(doc).encode() + b"\n", "application/json")
                    elif path == "/":
                        self._send(200, b"uproxy admin: /metrics /status /health\n", "text/plain")
                    else:
                        self._send(404, b"not found: try /metrics, /status or /health\n", "text/plain")
                except BrokenPipeError:
                    pass
                except Exception as e:        # never take the proxy down
                    log.error("admin: %s %s failed: %s", self.command, path, e)
                    self._send(500, f"error: {e}\n".encode(), "text/plain")

            do_HEAD = do_GET

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="uproxy-admin", daemon=True)
        self.thread.start()
        log.info("admin endpoint on http://%s:%d (/metrics /status /health)", host, self.port)

    def status(self) -> dict:
        """The segment's snapshot, with the control plane's detail: per
        checked server the last check (result, reason, latency, time) and
        when its state changed (``health_checks``), and the listeners."""
        snap = self.collector.snapshot()
        from .telemetry import detail
        checker = getattr(self.runtime, "health", None)
        snap["health_checks"] = checker.details() if checker is not None else []
        snap["listeners"] = detail.listeners(self.runtime)
        cfg = getattr(self.runtime, "cfg", None)
        snap["tls"] = tls.status(cfg, getattr(self.runtime, "tickets", None)) if cfg else None
        # where the configuration comes from: the watched file, DNS's
        # answers, etcd's revision (docs/fleet.md)
        ps = getattr(self.runtime, "providers_status", None)
        snap["providers"] = ps() if ps is not None else None
        return snap

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(2)
        with self.collector.lock:
            self.reader.close()
