"""uproxy itself: `uproxy run -c FILE --workers 1`, pinned with taskset (the
worker pins itself to an allowed CPU). Upstream keep-alive is uproxy's
default. Two contenders: the default (splice forwarding for L4) and
buffered forwarding (L4 only; the HTTP path is the same in both).

HTTP listeners (`mode = "http"`) are detected with `uproxy check`: until the
L7 core lands, the HTTP workloads read "not available yet".

TLS: a third listener, `mode = "http"` with `tls = { certificates = [{ cert,
key }], min_version = "1.2", ciphersuites = "TLS_AES_128_GCM_SHA256" }`
(issue 12's keys), in front of the same cluster. Whether this build takes
it is asked of `uproxy check` with that listener: while it says no (an
unknown key), the TLS workloads are skipped with its words, and they run
as soon as the build has it.

gRPC (the gRPC workload's listener), from docs/http2.md: an `http2 = true`
plain listener (h2c) in front of a cluster of its own with `protocol =
"h2"` (h2c to the origin's gRPC listener, calls multiplexed on pooled
connections).
"""
from __future__ import annotations

import os
import subprocess

from . import (GRPC_WORKLOADS, H2_WORKLOADS, H2S_WORKLOADS, L4S_WORKLOADS, TLS_SUITE, TLS_WORKLOADS, Contender,
               free_port, write)

_HTTP_STATE: dict = {}
_TLS_STATE: dict = {}


class Uproxy(Contender):
    name = "uproxy"
    family = "uproxy"
    label = "uproxy"
    tuning = "defaults (splice forwarding for L4), --workers 1"
    tls_tuning = ('tls = { certificates = [...], min_version = "1.2", ciphersuites = "TLS_AES_128_GCM_SHA256" }; '
                  "uproxy's defaults otherwise (tickets on)")
    h2_tuning = "http2 = true on a plain listener (h2c) and on a TLS listener (ALPN h2); the same cluster"
    grpc_tuning = 'http2 = true on a plain listener (h2c), a cluster with protocol = "h2" (h2c to the origin)'
    forwarding = "splice"

    def binary(self):
        return os.path.join(self.ctx.root, ".venv", "bin", "uproxy")

    def missing(self):
        if not os.access(self.binary(), os.X_OK):
            return "uproxy is not built (run scripts/setup)"
        return None

    def version(self):
        try:
            r = subprocess.run([self.binary(), "--version"], capture_output=True, text=True, timeout=30)
            v = r.stdout.strip().split()[-1]
        except (OSError, IndexError, subprocess.SubprocessError):
            v = "?"
        try:
            rev = subprocess.run(["git", "-C", self.ctx.root, "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", self.ctx.root, "status", "--porcelain", "--", "native", "src"],
                                   capture_output=True, text=True).stdout.strip()
            return f"{v} ({rev}{'+dirty' if dirty else ''})"
        except OSError:
            return v

    def http_available(self) -> str | None:
        """None if this build has HTTP listeners, else uproxy's own words."""
        if "why" not in _HTTP_STATE:
            d = self.ctx.run_dir
            path = os.path.join(d, "uproxy-http-probe.toml")
            write(path, self.config_text(free_port(), None, free_port(), with_http=True, probe=True))
            r = subprocess.run([self.binary(), "check", "-c", path], capture_output=True, text=True,
                               timeout=60)
            _HTTP_STATE["why"] = None if r.returncode == 0 else (
                # the first mistake (the last line is check's summary)
                "not available yet: " + (r.stderr.strip().splitlines() or ["uproxy check failed"])[0]
                .split(": ")[-1])
        return _HTTP_STATE["why"]

    def tls_available(self) -> str | None:
        """None if this build takes the TLS listener, else why not (check's
        first mistake)."""
        if "why" not in _TLS_STATE:
            if self.http_available():
                _TLS_STATE["why"] = self.http_available()
                return _TLS_STATE["why"]
            d = self.ctx.run_dir
            path = os.path.join(d, "uproxy-tls-probe.toml")
            write(path, self.config_text(free_port(), None, free_port(), with_http=True, probe=True,
                                         https_port=free_port()))
            r = subprocess.run([self.binary(), "check", "-c", path], capture_output=True, text=True,
                               timeout=60)
            first = (r.stderr.strip().splitlines() or ["uproxy check failed"])[0]
            # "uproxy: configuration error: FILE:LINE: listeners[2].tls: unknown table ..."
            _TLS_STATE["why"] = None if r.returncode == 0 else (
                "not available yet: uproxy check rejects the TLS listener: " + first.split(": ", 3)[-1])
        return _TLS_STATE["why"]

    def skip(self, workload):
        s = super().skip(workload)
        if s:
            return s
        if workload in ("http64", "http64k", "rate", "newconn") and self.http_available():
            return self.http_available()
        if workload in H2_WORKLOADS + GRPC_WORKLOADS and self.http_available():
            return self.http_available()
        if workload in TLS_WORKLOADS + H2S_WORKLOADS and getattr(self.ctx, "tls_cert", None) \
                and self.tls_available():
            return self.tls_available()
        return None

    def idle_mode(self) -> str:
        """The idle-memory workload runs on the HTTP listener, or on a tcp
        listener in front of the same upstream while HTTP is not there."""
        return "http" if not self.http_available() else "tcp"

    def config_text(self, http_port, l4_port, l4http_port, with_http, probe=False, https_port=None,
                    h2c_port=None, h2s_port=None, grpc_port=None, l4s_port=None):
        c = self.ctx
        up = 9 if probe else c.upstream_port          # the probe is only checked, never run
        iperf = 9 if probe else c.iperf_port
        out = ["[proxy]", "workers = 1", "max_connections = 16384", ""]
        if with_http:
            out += ["[[listeners]]", 'name = "http"', f'bind = "127.0.0.1:{http_port}"',
                    'mode = "http"', 'cluster = "up"', ""]
        if https_port:
            out += ["[[listeners]]", 'name = "https"', f'bind = "127.0.0.1:{https_port}"',
                    'mode = "http"', 'cluster = "up"',
                    f'tls = {{ certificates = [{{ cert = "{c.tls_cert}", key = "{c.tls_key}" }}], '
                    f'min_version = "1.2", ciphersuites = "{TLS_SUITE}" }}', ""]
        # HTTP/2 (G8): `http2 = true` on a plain listener (h2c) and on a TLS one (ALPN h2)
        if h2c_port:
            out += ["[[listeners]]", 'name = "h2c"', f'bind = "127.0.0.1:{h2c_port}"',
                    'mode = "http"', 'cluster = "up"', "http2 = true", ""]
        if h2s_port:
            out += ["[[listeners]]", 'name = "h2s"', f'bind = "127.0.0.1:{h2s_port}"',
                    'mode = "http"', 'cluster = "up"', "http2 = true",
                    f'tls = {{ certificates = [{{ cert = "{c.tls_cert}", key = "{c.tls_key}" }}], '
                    f'min_version = "1.2", ciphersuites = "{TLS_SUITE}" }}', ""]
        # gRPC: h2c from the client, HTTP/2 to the origin's gRPC listener
        if grpc_port:
            out += ["[[listeners]]", 'name = "grpc"', f'bind = "127.0.0.1:{grpc_port}"',
                    'mode = "http"', 'cluster = "grpc"', "http2 = true", ""]
        if l4_port:
            out += ["[[listeners]]", 'name = "l4"', f'bind = "127.0.0.1:{l4_port}"', 'mode = "tcp"',
                    'cluster = "iperf"', f'forwarding = "{self.forwarding}"', ""]
        # Short L4 sessions (l4_short): a tcp listener of its own in front
        # of the HTTP origin, with this contender's forwarding.
        if l4s_port:
            out += ["[[listeners]]", 'name = "l4s"', f'bind = "127.0.0.1:{l4s_port}"', 'mode = "tcp"',
                    'cluster = "up"', f'forwarding = "{self.forwarding}"', ""]
        # A tcp listener in front of the HTTP upstream: the idle-memory,
        # callgrind and allocation runs use it while HTTP is not available.
        out += ["[[listeners]]", 'name = "l4http"', f'bind = "127.0.0.1:{l4http_port}"', 'mode = "tcp"',
                'cluster = "up"', f'forwarding = "{self.forwarding}"', ""]
        out += ["[[clusters]]", 'name = "up"', f'servers = ["127.0.0.1:{up}"]', ""]
        out += ["[[clusters]]", 'name = "iperf"', f'servers = ["127.0.0.1:{iperf}"]', ""]
        if grpc_port:
            out += ["[[clusters]]", 'name = "grpc"', f'servers = ["127.0.0.1:{c.grpc_upstream_port}"]',
                    'protocol = "h2"', ""]
        return "\n".join(out)

    def render(self):
        self.l4http_port = free_port()
        with_http = not self.http_available()
        path = os.path.join(self.dir, "uproxy.toml")
        write(path, self.config_text(self.http_port, self.l4_port, self.l4http_port, with_http,
                                     https_port=self.https_port if self.wants_tls() else None,
                                     h2c_port=self.h2c_port if self.wants_h2c() else None,
                                     h2s_port=self.h2s_port if self.wants_h2s() else None,
                                     grpc_port=self.grpc_port if self.wants_grpc() else None,
                                     l4s_port=self.l4s_port if self.wants_l4s() else None))
        self.config_path = path
        return [self.binary(), "run", "-c", path, "--workers", "1"]

    def http_base(self):
        # The readiness probe and the idle workload use this address.
        if self.http_available():
            return f"127.0.0.1:{self.l4http_port}"
        return f"127.0.0.1:{self.http_port}"


class UproxyBuffered(Uproxy):
    name = "uproxy-buffered"
    label = "uproxy, buffered"
    tuning = 'as uproxy, with forwarding = "buffered" (recv/send through provided buffers)'
    forwarding = "buffered"
    workloads = ("l4_1", "l4_64")
    skip_reasons = {w: "same as uproxy (forwarding applies to L4)"
                    for w in ("idle", "http64", "http64k", "rate", "newconn") + TLS_WORKLOADS + H2_WORKLOADS
                    + GRPC_WORKLOADS}
    skip_reasons.update({w: "short sessions compare splice (uproxy) with sockmap (uproxy-sockmap)"
                         for w in L4S_WORKLOADS})


class UproxySpliceIowq(UproxyBuffered):
    name = "uproxy-splice-iowq"
    label = "uproxy, splice_iowq"
    tuning = 'as uproxy, with forwarding = "splice_iowq" (IORING_OP_SPLICE, run by io-wq threads)'
    forwarding = "splice_iowq"


class UproxySockmap(UproxyBuffered):
    """The kernel moves the bytes (bpf/sockmap.c): the proxy's own CPU
    leaves out the redirects, which run in the senders' softirq and in
    kworkers, so compare its machine CPU per GiB, not its proxy CPU."""
    name = "uproxy-sockmap"
    label = "uproxy, sockmap"
    tuning = 'as uproxy, with forwarding = "sockmap" (eBPF stream verdict on a sockhash; needs root)'
    forwarding = "sockmap"
    workloads = ("l4_1", "l4_64") + L4S_WORKLOADS
    skip_reasons = {w: r for w, r in UproxyBuffered.skip_reasons.items() if w not in L4S_WORKLOADS}

    def missing(self):
        m = super().missing()
        if m:
            return m
        from uproxy import sockmap
        return sockmap.unavailable()


class UproxyPolicies(Uproxy):
    """uproxy with the common set of per-route policies on its HTTP route
    (issue 16): request and response headers, a rewrite, an allow list and
    a rate limit that never refuses; against plain uproxy it is the cost of
    a route's policies."""
    name = "uproxy-policies"
    label = "uproxy, policies"
    tuning = ("as uproxy, the HTTP route with request_headers set, response_headers add, "
              'rewrite replace_path, allow = ["127.0.0.0/8"], rate_limit (never reached)')
    workloads = ("http64",)
    skip_reasons = {w: "only http64 measures the policies' cost"
                    for w in ("idle", "http64k", "rate", "newconn", "l4_1", "l4_64") + L4S_WORKLOADS
                    + TLS_WORKLOADS + H2_WORKLOADS + GRPC_WORKLOADS}

    ROUTE = ['', '[[listeners.routes]]', 'path_prefix = "/"', 'cluster = "up"',
             'request_headers = { set = { X-Env = "bench" } }',
             'response_headers = { add = { X-Served-By = "uproxy" } }',
             'rewrite = { replace_path = "/64" }', 'allow = ["127.0.0.0/8"]',
             'rate_limit = { rate = 1000000, burst = 1000000 }', '']

    def config_text(self, http_port, l4_port, l4http_port, with_http, probe=False, https_port=None, **kw):
        text = super().config_text(http_port, l4_port, l4http_port, with_http, probe, https_port, **kw)
        head = f'bind = "127.0.0.1:{http_port}"\nmode = "http"\ncluster = "up"\n'
        return text.replace(head, head + "\n".join(self.ROUTE), 1) if with_http else text


class UproxyResilience(Uproxy):
    """uproxy whose cluster has a circuit breaker (errors and latency) and a
    retry budget (docs/resilience.md), none of which trips: against plain
    uproxy it is what they cost a request."""
    name = "uproxy-resilience"
    label = "uproxy, breaker + retry budget"
    tuning = ("as uproxy, the cluster with circuit_breaker (error_ratio, latency) and "
              "retry_budget")
    workloads = ("http64",)
    skip_reasons = {w: "only http64 measures the breaker's and the budget's cost"
                    for w in ("idle", "http64k", "rate", "newconn", "l4_1", "l4_64") + L4S_WORKLOADS
                    + TLS_WORKLOADS + H2_WORKLOADS + GRPC_WORKLOADS}

    CLUSTER = ['circuit_breaker = { error_ratio = 0.5, latency = "5s", window = "10s", '
               'min_requests = 20, open_for = "30s" }',
               'retry_budget = { ratio = 0.2, min_retries = 3 }']

    def config_text(self, http_port, l4_port, l4http_port, with_http, probe=False, https_port=None, **kw):
        text = super().config_text(http_port, l4_port, l4http_port, with_http, probe, https_port, **kw)
        head = '[[clusters]]\nname = "up"\n'
        i = text.index(head)
        j = text.index("\n", i + len(head)) + 1            # after its servers line
        return text[:j] + "\n".join(self.CLUSTER) + "\n" + text[j:]
