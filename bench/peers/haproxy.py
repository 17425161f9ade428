"""HAProxy (Debian's package), one thread (nbthread 1).

Tuning, from HAProxy's documentation: no log lines, keep-alive on both sides
(the default `option http-keep-alive`) with `http-reuse always` so that idle
server connections are shared between client connections, long client and
server timeouts. The "splice" contender forces kernel splicing
(`option splice-request` and `option splice-response`) for TCP streams and
HTTP payloads.

TLS (the TLS workloads' listener), from HAProxy's configuration manual:
`bind ... ssl crt` with the run's certificate and key in one PEM file,
`ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256`, `ssl-min-ver
TLSv1.2`, `curves X25519:P-256`; session tickets on and the session cache
(tune.ssl.cachesize 20000) at their defaults; the same backend, and so the
same server-side keep-alive, as the plaintext frontend.

gRPC (the gRPC workload's listener), from HAProxy's configuration manual:
a frontend with `bind ... proto h2` and a backend whose server has `proto
h2` (h2c to the origin); `http-reuse always` lets calls share the server
connections' streams.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from . import GRPC_WORKLOADS, H2_WORKLOADS, L4S_WORKLOADS, TLS_SUITE, Contender, write

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def _tcp(name: str, port: int, server_port: int) -> str:
    """A mode tcp frontend on port and its backend of one server."""
    return f"""frontend fe_{name}
  mode tcp
  bind 127.0.0.1:{port}
  default_backend be_{name}

backend be_{name}
  mode tcp
  server s1 127.0.0.1:{server_port}
"""


class Haproxy(Contender):
    name = "haproxy"
    family = "haproxy"
    label = "HAProxy"
    tuning = "nbthread 1, no logs, http-reuse always, keep-alive both sides"
    tls_tuning = ("bind ssl crt, ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256, ssl-min-ver TLSv1.2, "
                  "curves X25519:P-256; tickets and session cache at their defaults (on)")
    grpc_tuning = "bind proto h2, server ... proto h2 (h2c to the origin), http-reuse always"
    h2_tuning = "bind proto h2 (h2c), bind ssl ... alpn h2,http/1.1; the same backend"
    splice = False
    policies = False
    # The common set of per-route policies (issue 16), as HAProxy writes
    # them: the same as uproxy-policies' route (bench/peers/uproxy.py).
    POLICIES = ("  stick-table type ip size 100k expire 10s store http_req_rate(1s)\n"
                "  http-request track-sc0 src\n"
                "  http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000000 }\n"
                "  http-request deny unless { src 127.0.0.0/8 }\n"
                "  http-request set-header X-Env bench\n"
                "  http-request set-path /64\n"
                "  http-response add-header X-Served-By haproxy\n")

    def missing(self):
        if not os.path.exists(HAPROXY):
            return "haproxy is not installed (Debian: apt-get install haproxy, or scripts/setup --bench)"
        return None

    def version(self):
        try:
            out = subprocess.run([HAPROXY, "-v"], capture_output=True, text=True).stdout
            return out.split()[2]
        except (OSError, IndexError):
            return ""

    def render(self):
        c = self.ctx
        # HAProxy needs two descriptors per connection, plus two per pipe
        # (maxpipes = maxconn/4) with splicing, and refuses to start when it
        # cannot raise its limit that far. The same maxconn for both rows.
        import resource
        maxconn = max(1000, min(20000, (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 300) // 3))
        splice = "  option splice-request\n  option splice-response\n" if self.splice else ""
        tls_global = tls = ""
        if self.wants_tls():
            tls_global = (f"  ssl-default-bind-ciphersuites {TLS_SUITE}\n"
                          "  ssl-default-bind-options ssl-min-ver TLSv1.2\n")
            tls = f"""
frontend fe_https
  bind 127.0.0.1:{self.https_port} ssl crt {c.tls_pem} curves X25519:P-256
  default_backend be_http
"""
        # HTTP/2 (G8), from HAProxy's configuration manual: `proto h2` on a
        # plain bind (h2c with prior knowledge), `alpn h2,http/1.1` on an ssl
        # bind; the same backend.
        if self.wants_h2c():
            tls += f"""
frontend fe_h2c
  bind 127.0.0.1:{self.h2c_port} proto h2
  default_backend be_http
"""
        if self.wants_grpc():
            tls += f"""
frontend fe_grpc
  bind 127.0.0.1:{self.grpc_port} proto h2
  default_backend be_grpc

backend be_grpc
  server s1 127.0.0.1:{c.grpc_upstream_port} proto h2
"""
        if self.wants_h2s():
            if not tls_global:
                tls_global = (f"  ssl-default-bind-ciphersuites {TLS_SUITE}\n"
                              "  ssl-default-bind-options ssl-min-ver TLSv1.2\n")
            tls += f"""
frontend fe_h2s
  bind 127.0.0.1:{self.h2s_port} ssl crt {c.tls_pem} curves X25519:P-256 alpn h2,http/1.1
  default_backend be_http
"""
        conf = f"""global
  nbthread 1
  maxconn {maxconn}
  pidfile {self.dir}/haproxy.pid
{tls_global}
defaults
  mode http
  maxconn {maxconn}
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
{splice}
frontend fe_http
  bind 127.0.0.1:{self.http_port}
{self.POLICIES if self.policies else ""}  default_backend be_http

backend be_http
  server s1 127.0.0.1:{c.upstream_port}
{tls}
{_tcp("tcp", self.l4_port, c.iperf_port)}"""
        # short L4 sessions (l4_short): a tcp frontend in front of the HTTP origin
        if self.wants_l4s():
            conf += "\n" + _tcp("tcp_short", self.l4s_port, c.upstream_port)
        write(os.path.join(self.dir, "haproxy.cfg"), conf)
        return [HAPROXY, "-db", "-f", os.path.join(self.dir, "haproxy.cfg")]


class HaproxySplice(Haproxy):
    name = "haproxy-splice"
    label = "HAProxy, forced splice"
    tuning = "as haproxy, plus option splice-request and option splice-response"
    splice = True
    workloads = ("http64k", "l4_1", "l4_64")
    skip_reasons = {w: "same as haproxy (splicing matters for large payloads only)"
                    for w in ("idle", "http64", "rate", "newconn")}
    skip_reasons.update({w: "same as haproxy (no splice on a TLS client side)"
                         for w in ("tls64", "tls64k", "tls_full", "tls_resume")})
    skip_reasons.update({w: "same as haproxy (splicing matters for large payloads only)"
                         for w in H2_WORKLOADS + GRPC_WORKLOADS + L4S_WORKLOADS})


class HaproxyPolicies(Haproxy):
    """HAProxy with the common set of policies on its frontend, as
    uproxy-policies has on its route."""
    name = "haproxy-policies"
    label = "HAProxy, policies"
    tuning = ("as haproxy, the frontend with http-request set-header, http-response add-header, set-path, "
              "deny unless src 127.0.0.0/8, a stick-table request rate limit (never reached)")
    family = "haproxy-policies"        # a row of its own, outside the gates' best peer
    policies = True
    workloads = ("http64",)
    skip_reasons = {w: "only http64 measures the policies' cost"
                    for w in ("idle", "http64k", "rate", "newconn", "l4_1", "l4_64", "tls64", "tls64k",
                              "tls_full", "tls_resume") + H2_WORKLOADS + GRPC_WORKLOADS + L4S_WORKLOADS}
