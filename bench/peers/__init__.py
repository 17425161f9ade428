"""The contenders: one module per proxy. Each knows whether it is installed,
renders its configuration into the run's directory, starts itself with one
worker pinned to the proxy CPU(s), and names the pids whose CPU and memory
are the proxy's.

A contender is one (proxy, tuning) pair: nginx and nginx with larger
buffers are two contenders, so that each appears as its own row.

The TLS workloads use a third listener of each contender (https_port) that
terminates TLS with the run's certificate (ctx.tls_cert, ctx.tls_key:
ECDSA P-256, made by the bench with openssl) and proxies to the same
plaintext upstream as the HTTP listener, with the same upstream keep-alive.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request

from .. import accounting, grpc

HTTP_WORKLOADS = ("idle", "http64", "http64k", "rate", "newconn")
L4_WORKLOADS = ("l4_1", "l4_64")
# Short L4 sessions (issue 14): a TCP listener of its own (l4s_port) in
# front of the origin's HTTP port, one HTTP/1.1 request per connection, so
# that each session is accept, connect, one exchange and both closes.
L4S_WORKLOADS = ("l4_short",)
TLS_WORKLOADS = ("tls64", "tls64k", "tls_full", "tls_resume")
# HTTP/2 from the client (issue 17, G8): h2load with 1, 10 and 100
# concurrent streams per connection, in cleartext with prior knowledge (h2c)
# and over TLS (ALPN h2), each on a listener of its own, so that the
# HTTP/1.1 and TLS workloads above keep their listeners as they were.
H2C_WORKLOADS = ("h2c_1", "h2c_10", "h2c_100")
H2S_WORKLOADS = ("h2_1", "h2_10", "h2_100")
H2_WORKLOADS = H2C_WORKLOADS + H2S_WORKLOADS
# gRPC unary calls (issue 17), h2c end to end: on a listener of its own,
# in front of the origin's h2c gRPC listener, each proxy speaking HTTP/2
# to it its documented way (grpc_port, bench/grpc.py).
GRPC_WORKLOADS = ("grpc_unary",)
# the workloads that need the run's certificate
CERT_WORKLOADS = TLS_WORKLOADS + H2S_WORKLOADS
ALL_WORKLOADS = HTTP_WORKLOADS + L4_WORKLOADS + L4S_WORKLOADS + TLS_WORKLOADS + H2_WORKLOADS + GRPC_WORKLOADS
# What every contender's TLS listener is held to (issue 12, DESIGN.md G7).
TLS_SUITE = "TLS_AES_128_GCM_SHA256"
TLS_NEGOTIATED = f"TLSv1.3 {TLS_SUITE} X25519"


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1 not handed out before in this run.

    The kernel may give the same ephemeral port to two binds in a row once
    the first socket is closed, and a contender's ports are all picked
    before it binds any of them: without the set, two of its listeners
    could get one port (seen as "already bound by listener 'h2c'")."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


class StartError(Exception):
    pass


class Contender:
    name = "?"            # row name, e.g. "nginx-bigbuf"
    family = "?"          # proxy, e.g. "nginx"
    label = "?"           # how the row reads in tables
    tuning = ""           # one line: what differs from the defaults
    # Workloads this contender runs, and the reason for the others.
    workloads = ALL_WORKLOADS
    skip_reasons: dict = {}

    def __init__(self, ctx):
        self.ctx = ctx
        self.proc = None
        self.pids = []
        self.http_port = None
        self.l4_port = None
        self.l4s_port = None      # short L4 sessions, to the origin's HTTP port
        self.https_port = None
        self.h2c_port = None      # HTTP/2 in cleartext, prior knowledge
        self.h2s_port = None      # HTTP/2 over TLS (ALPN h2)
        self.grpc_port = None     # gRPC (h2c) to the origin's gRPC listener
        self.tls_seen = None      # what a client with OpenSSL's default TLS 1.3 suites negotiated
        self.dir = None
        self.log_path = None

    # ---- what the harness asks -------------------------------------------
    def missing(self) -> str | None:
        """None if installed, else why not (and how to get it)."""
        return None

    def version(self) -> str:
        return ""

    def skip(self, workload: str) -> str | None:
        """None if the workload applies, else a sentence saying why not."""
        if workload in self.skip_reasons:
            return self.skip_reasons[workload]
        if workload not in self.workloads:
            return "not applicable"
        return None

    def http_base(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def https_base(self) -> str:
        return f"127.0.0.1:{self.https_port}"

    def wants_h2c(self) -> bool:
        """Whether the h2c listener is rendered: an h2c workload applies."""
        return any(self.skip(w) is None for w in H2C_WORKLOADS)

    def wants_l4s(self) -> bool:
        """Whether the short-session L4 listener is rendered: l4_short applies."""
        return any(self.skip(w) is None for w in L4S_WORKLOADS)

    def wants_grpc(self) -> bool:
        """Whether the gRPC listener is rendered: the gRPC workload applies."""
        return any(self.skip(w) is None for w in GRPC_WORKLOADS)

    def wants_h2s(self) -> bool:
        """Whether the HTTP/2-over-TLS listener is rendered: the run has a
        certificate and an h2 TLS workload applies."""
        if not getattr(self.ctx, "tls_cert", None):
            return False
        return any(self.skip(w) is None for w in H2S_WORKLOADS)

    def wants_tls(self) -> bool:
        """Whether a TLS listener is rendered: the run has TLS workloads (and
        so a certificate) and one of them applies to this contender."""
        if not getattr(self.ctx, "tls_cert", None):
            return False
        return any(self.skip(w) is None for w in TLS_WORKLOADS)

    # ---- life cycle --------------------------------------------------------
    def render(self) -> list:
        """Writes configuration files into self.dir; returns the argv."""
        raise NotImplementedError

    def env(self) -> dict:
        return dict(os.environ)

    def start(self, round_no: int):
        self.dir = os.path.join(self.ctx.run_dir, f"r{round_no}-{self.name}")
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.http_port = free_port()
        self.l4_port = free_port()
        self.l4s_port = free_port()
        self.https_port = free_port()
        self.h2c_port = free_port()
        self.h2s_port = free_port()
        self.grpc_port = free_port()
        argv = self.render()
        self.log_path = os.path.join(self.dir, "proxy.log")
        log = open(self.log_path, "w")
        cpus = ",".join(map(str, self.ctx.proxy_cpus))
        self.proc = subprocess.Popen(["taskset", "-c", cpus, *argv], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env(), cwd=self.dir, start_new_session=True)
        log.close()
        try:
            self.wait_ready()
        except Exception:
            self.stop()
            raise
        time.sleep(0.2)
        self.pids = accounting.tree(self.proc.pid)

    def output(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        last = ""
        want_http = any(self.skip(w) is None for w in HTTP_WORKLOADS)
        want_l4 = any(self.skip(w) is None for w in L4_WORKLOADS)
        want_tls = self.wants_tls()
        h2 = [u for u, on in ((f"http://127.0.0.1:{self.h2c_port}/64", self.wants_h2c()),
                              (f"https://127.0.0.1:{self.h2s_port}/64", self.wants_h2s())) if on]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"{self.name} exited with {self.proc.returncode}: {self.output()}")
            ok = True
            if want_http:
                try:
                    with urllib.request.urlopen(f"http://{self.http_base()}/64", timeout=1) as r:
                        body = r.read()
                        ok = r.status == 200 and len(body) == 64
                        last = f"HTTP {r.status}, {len(body)} bytes"
                except Exception as e:  # not up yet, or routes not loaded yet
                    ok, last = False, str(e)
            if ok and want_tls:
                try:
                    ok, last = self.tls_ready()
                except Exception as e:  # not up yet
                    ok, last = False, f"TLS listener: {e}"
            for url in h2 if ok else ():
                ok, last = h2_ready(url)
                if not ok:
                    break
            # An HTTP/2 answer is enough here: a proxy that gets gRPC wrong
            # fails the gRPC workload (which says how), not its others.
            # Without nghttp (nghttp2-client) the run has no gRPC workload (cli.py).
            if ok and self.wants_grpc() and shutil.which("nghttp"):
                why = grpc.check_call(f"http://127.0.0.1:{self.grpc_port}{grpc.PATH}", self.ctx.grpc_request,
                                      whole=False)
                ok, last = why is None, f"gRPC listener: {why}"
            if ok and want_l4:
                try:
                    with socket.create_connection(("127.0.0.1", self.l4_port), timeout=1):
                        pass
                except OSError as e:
                    ok, last = False, f"L4 port: {e}"
            if ok and self.wants_l4s():
                ok, last = l4s_ready(self.l4s_port)
            if ok:
                return
            time.sleep(0.1)
        raise StartError(f"{self.name} not ready after {timeout:.0f}s ({last}): {self.output()}")

    def tls_ready(self):
        """GET /64 over TLS 1.3 on the TLS listener (SNI localhost, the
        certificate not verified): (ok, what was seen). The client offers
        OpenSSL's default TLS 1.3 suites, as wrk does: what it gets is what
        wrk's keep-alive runs get (kept in self.tls_seen)."""
        tctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tctx.check_hostname = False
        tctx.verify_mode = ssl.CERT_NONE
        tctx.minimum_version = ssl.TLSVersion.TLSv1_3
        with socket.create_connection(("127.0.0.1", self.https_port), timeout=1) as raw:
            with tctx.wrap_socket(raw, server_hostname="localhost") as s:
                line, body = get64_once(s, "localhost")
                ok = line.split(" ")[1:2] == ["200"] and len(body) >= 64
                self.tls_seen = f"{s.version()} {s.cipher()[0]}"
                return ok, f"TLS: {line!r}, {len(body)} bytes ({s.version()}, {s.cipher()[0]})"

    def stop(self):
        if not self.proc:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self.proc = None


def get64_once(s, host: str):
    """GET /64 with Connection: close on a connected socket (plain or TLS),
    read to the close: (the status line, the body)."""
    s.sendall(f"GET /64 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    buf = b""
    while b := s.recv(65536):
        buf += b
    head, _, body = buf.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode("latin-1"), body


def l4s_ready(port: int):
    """One whole HTTP exchange through the short-session L4 listener, as
    the workload makes them (a new connection, GET /64, Connection: close):
    (ok, what was seen)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            line, body = get64_once(s, "bench")
    except OSError as e:
        return False, f"short-session L4 port: {e}"
    ok = line.split(" ")[1:2] == ["200"] and len(body) == 64
    return ok, f"short-session L4 port: {line!r}, {len(body)} bytes"


def h2_ready(url: str):
    """Two requests over one HTTP/2 connection with h2load (prior knowledge
    for http://, ALPN h2 for https://): (ok, what was seen)."""
    try:
        r = subprocess.run(["h2load", "-n", "2", "-c", "1", url], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"h2load {url}: {e}"
    out = r.stdout
    if "2 succeeded" not in out:
        tail = " ".join(l.strip() for l in out.splitlines() if l.startswith(("requests:", "status codes:")))
        return False, f"h2load {url}: {tail or r.stderr.strip()[-200:] or 'no answer'}"
    if url.startswith("https:") and "Application protocol: h2" not in out:
        return False, f"{url}: ALPN did not select h2"
    return True, f"h2 {url}: 2 succeeded"


def write(path: str, text: str):
    with open(path, "w") as f:
        f.write(text)


def all_contenders(ctx) -> list:
    from . import caddy, direct, envoy, haproxy, nginx, traefik, uproxy
    return [direct.Direct(ctx),
        uproxy.Uproxy(ctx), uproxy.UproxyBuffered(ctx), uproxy.UproxySpliceIowq(ctx),
        uproxy.UproxySockmap(ctx), uproxy.UproxyPolicies(ctx),
        uproxy.UproxyResilience(ctx),
        nginx.Nginx(ctx), nginx.NginxBigbuf(ctx), nginx.NginxPolicies(ctx),
        haproxy.Haproxy(ctx), haproxy.HaproxySplice(ctx), haproxy.HaproxyPolicies(ctx),
        traefik.Traefik(ctx), traefik.TraefikFast(ctx),
        envoy.Envoy(ctx),
        caddy.Caddy(ctx),
    ]
