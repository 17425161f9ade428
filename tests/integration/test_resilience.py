"""A cluster's resilience (issue 16; docs/resilience.md): its circuit
breaker, its retry budget, its per-server in-flight limit and the PROXY
header it sends, through a real uproxy process, real upstreams that fail on
command (tests/lib/http_upstream.py) and real clients; PROXY headers checked
by real receivers (nginx's proxy_protocol, uproxy's own)."""
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from http_upstream import HttpUpstream, Response
from support import Server, free_port, wait_for
from test_http import http_proxy
from test_policies import get


class Switch:
    """An upstream's behaviour, changed by the test while it runs."""

    def __init__(self, status=200, delay=0.0):
        self.status, self.delay = status, delay

    def __call__(self, req):
        return Response(status=self.status, body=b"from upstream", delay=self.delay)


def clusters(p) -> dict:
    return p.stats()["clusters"]


def metrics(admin_port) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_breaker_opens_on_errors_fails_fast_and_closes_after_probes(proxy_factory):
    """Five 500s in the window open the breaker: the next request is
    answered 503 at once, naming the cluster, with Retry-After, and never
    reaches the upstream. After open_for a failing probe opens it again; once
    the upstream is well, half_open_requests probes close it."""
    sw = Switch(500)
    up = HttpUpstream(sw)
    admin = free_port()
    p = http_proxy(proxy_factory, [up.addr], cluster={
        "circuit_breaker": {"error_ratio": 0.5, "window": "10s", "min_requests": 5,
                            "open_for": "1s", "half_open_requests": 2}},
        extra=f'\n[admin]\nbind = "127.0.0.1:{admin}"\n')
    for _ in range(5):
        assert get(p.port)[0] == 500
    st, hdrs, body = get(p.port)
    assert st == 503, body
    assert b"circuit breaker is open" in body and b"'c'" in body
    assert dict(hdrs)["retry-after"] == "1"
    assert len(up.requests) == 5                      # failed fast: not asked
    c = clusters(p)["c"]
    assert c["breaker_opens"] == 1 and c["fast_fails"] == 1 and c["breaker"] == ["open"]
    assert p.total("breaker_fast_fails") == 1
    # Half-open with the upstream still failing: the probe fails, it reopens.
    time.sleep(1.1)
    assert get(p.port)[0] == 500
    assert get(p.port)[0] == 503
    assert clusters(p)["c"]["breaker_opens"] == 2
    # The upstream is well: two probes succeed and it closes.
    sw.status = 200
    time.sleep(1.1)
    assert [get(p.port)[0] for _ in range(4)] == [200] * 4
    assert clusters(p)["c"]["breaker"] == ["closed"]
    assert len(up.requests) == 5 + 1 + 4
    text = metrics(admin)
    assert 'uproxy_cluster_breaker_opens_total{cluster="c"} 2.0' in text
    assert 'uproxy_cluster_fast_fails_total{cluster="c"} 2.0' in text
    assert 'uproxy_cluster_breaker_open{cluster="c",state="open"} 0.0' in text
    out = subprocess.run([p.p.args[0], "-m", "uproxy", "stats", "--pid", str(p.pid)],
                         capture_output=True, text=True, timeout=30)
    assert "breaker opened 2x, fast-failed 2" in out.stdout, out.stdout + out.stderr
    up.close()


def test_breaker_opens_on_connect_failures_and_on_latency(proxy_factory):
    """A dead server (502s) trips a breaker counting errors; a slow one
    trips a breaker on latency (its 90th percentile over 100 ms) though
    every answer is a 200."""
    dead = free_port()
    slow = HttpUpstream(Switch(200, delay=0.15))
    p = http_proxy(proxy_factory, [f"127.0.0.1:{dead}"], cluster={
        "max_attempts": 1, "fail_threshold": 0,
        "circuit_breaker": {"window": "10s", "min_requests": 3, "open_for": "30s"}},
        clusters=[{"name": "slow", "servers": [slow.addr],
                   "circuit_breaker": {"error_ratio": 0, "latency": "100ms",
                                       "latency_percentile": 90, "min_requests": 3,
                                       "open_for": "30s"}}],
        listener={"routes": [{"path_prefix": "/slow", "cluster": "slow"},
                             {"path_prefix": "/", "cluster": "c"}]})
    assert [get(p.port)[0] for _ in range(4)] == [502, 502, 502, 503]
    assert [get(p.port, "/slow")[0] for _ in range(4)] == [200, 200, 200, 503]
    cs = clusters(p)
    assert cs["c"]["breaker"] == ["open"] and cs["slow"]["breaker"] == ["open"]
    assert len(slow.requests) == 3
    slow.close()


def test_retry_budget_refuses_retries_past_its_share(proxy_factory):
    """Round robin over a dead server and a live one: without a budget
    every request that meets the dead one is retried on the live one (all
    200); with a budget of no retries at all they get 502 and are counted;
    min_retries = 1 lets one retry at a time go (sequential requests: all)."""
    up = HttpUpstream()
    dead = f"127.0.0.1:{free_port()}"
    base = {"fail_threshold": 0, "max_attempts": 2}
    p0 = http_proxy(proxy_factory, [dead, up.addr], cluster=dict(base))
    assert [get(p0.port)[0] for _ in range(6)] == [200] * 6
    p1 = http_proxy(proxy_factory, [dead, up.addr], cluster={
        **base, "retry_budget": {"ratio": 0, "min_retries": 0}})
    got = [get(p1.port)[0] for _ in range(6)]
    assert sorted(got) == [200] * 3 + [502] * 3, got
    assert p1.total("retry_budget_exhausted") == 3
    assert clusters(p1)["c"]["budget_exhausted"] == 3
    p2 = http_proxy(proxy_factory, [dead, up.addr], cluster={
        **base, "retry_budget": {"ratio": 0.2, "min_retries": 1}})
    assert [get(p2.port)[0] for _ in range(6)] == [200] * 6
    assert p2.total("retry_budget_exhausted") == 0
    up.close()


def test_max_in_flight_per_server_skips_full_servers_then_503(proxy_factory):
    """max_in_flight = 1 on a cluster of two slow servers: two requests at
    once go one to each (a full server is passed over even by round robin's
    turn), a third at the same time gets 503, counted."""
    a, b = HttpUpstream(Switch(200, 0.8)), HttpUpstream(Switch(200, 0.8))
    p = http_proxy(proxy_factory, [a.addr, b.addr], cluster={"max_in_flight": 1},
                   proxy={"workers": 2})
    results = []

    def one():
        results.append(get(p.port)[0])
    # One after the other, the first already at its server: the limit is
    # counted over all workers without a lock (relaxed loads, upstream/
    # balance.c), so two requests dispatched in the same instant by two
    # workers may both see a server free; that slack is by design.
    ts = [threading.Thread(target=one) for _ in range(2)]
    for k, t in enumerate(ts):
        t.start()
        wait_for(lambda: len(a.requests) + len(b.requests) == k + 1,
                 what="both servers busy" if k else "the first request at its server")
    assert len(a.requests) == 1 and len(b.requests) == 1
    assert get(p.port)[0] == 503
    for t in ts:
        t.join()
    assert results == [200, 200]
    assert p.total("servers_full") == 1
    assert sum(s["full"] for s in p.stats()["servers"]) >= 2
    assert get(p.port)[0] == 200                  # free again
    a.close()
    b.close()


def _from(addr, port, data: bytes) -> bytes:
    """A request from another loopback address: what the client's address
    looks like once it has passed a proxy only a PROXY header can say."""
    with socket.socket() as s:
        s.bind((addr, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(data)
        out = b""
        while (b := s.recv(65536)):
            out += b
        return out


def test_proxy_protocol_to_uproxys_own_receiver(proxy_factory):
    """A cluster with proxy_protocol = "v2" (and one with "v1") in front of
    a uproxy listener with proxy_protocol = true: the upstream behind the
    second proxy sees the first client's address (127.0.0.7), which only the
    header carries."""
    up = HttpUpstream()
    inner = http_proxy(proxy_factory, [up.addr], listener={"proxy_protocol": True})
    for version in ("v2", "v1"):
        outer = http_proxy(proxy_factory, [f"127.0.0.1:{inner.port}"],
                           cluster={"proxy_protocol": version})
        out = _from("127.0.0.7", outer.port,
                    b"GET /pp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200"), out
        assert up.requests[-1].header("x-forwarded-for").split(",")[0].strip() == "127.0.0.7"
        assert outer.total("proxy_sent") == 1
    up.close()


def test_proxy_protocol_from_a_tcp_listener_v1_exact_bytes(proxy_factory):
    """An L4 listener's cluster with proxy_protocol = "v1": the server's
    first bytes are the header naming the client and the address it
    connected to, then the client's own bytes."""
    got = []

    def handle(c, _srv):
        f = c.makefile("rb")
        got.append(f.readline())
        got.append(f.read(5))
        c.sendall(b"done")
    srv = Server(handle)
    port = free_port()
    p = proxy_factory([{"name": "t", "bind": f"127.0.0.1:{port}", "mode": "tcp", "cluster": "c"}],
                      [{"name": "c", "servers": [srv.addr], "proxy_protocol": "v1"}],
                      proxy={"workers": 1})
    with socket.socket() as s:
        s.bind(("127.0.0.9", 0))
        s.connect(("127.0.0.1", port))
        sport = s.getsockname()[1]
        s.sendall(b"hello")
        s.settimeout(5)
        assert s.recv(10) == b"done"
    assert got == [f"PROXY TCP4 127.0.0.9 127.0.0.1 {sport} {port}\r\n".encode(), b"hello"]
    assert p.total("proxy_sent") == 1
    srv.close()


@pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed")
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_to_nginx(proxy_factory, tmp_path, version):
    """nginx with `listen ... proxy_protocol` answers $proxy_protocol_addr:
    the client's address, as uproxy's header gave it."""
    nport = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
daemon off; worker_processes 1; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path};
    fastcgi_temp_path {tmp_path}; uwsgi_temp_path {tmp_path}; scgi_temp_path {tmp_path};
    server {{
        listen 127.0.0.1:{nport} proxy_protocol;
        location / {{ return 200 "addr=$proxy_protocol_addr port=$proxy_protocol_port\\n"; }}
    }}
}}
""")
    ng = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp_path)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up():
            try:
                socket.create_connection(("127.0.0.1", nport), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(up, what="nginx to listen")
        p = http_proxy(proxy_factory, [f"127.0.0.1:{nport}"], cluster={"proxy_protocol": version})
        out = _from("127.0.0.8", p.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200"), out
        assert b"addr=127.0.0.8 port=" in out, out
    finally:
        ng.terminate()
        ng.wait(10)


@pytest.mark.parametrize("key,value,message", [
    ("circuit_breaker", {"error_ratio": 2}, "clusters[0].circuit_breaker.error_ratio"),
    ("circuit_breaker", {"error_ratio": 0}, "would never open"),
    ("circuit_breaker", {"window": "soon"}, "clusters[0].circuit_breaker.window"),
    ("circuit_breaker", {"half_open": 3}, "did you mean 'half_open_requests'"),
    ("retry_budget", {"ratio": -1}, "clusters[0].retry_budget.ratio"),
    ("max_in_flight", -1, "clusters[0].max_in_flight"),
    ("proxy_protocol", "v3", "must be \"v1\" or \"v2\""),
])
def test_check_names_bad_values_with_their_key_path(tmp_path, key, value, message):
    """`uproxy check` names each bad value of a cluster's resilience keys
    by its key path (and a tcp listener's trusted_proxies without
    proxy_protocol, below)."""
    from support import render_config
    cfg = tmp_path / "u.toml"
    cfg.write_text(render_config({"workers": 1},
                                 [{"name": "w", "bind": "127.0.0.1:1", "mode": "http",
                                   "cluster": "c"}],
                                 [{"name": "c", "servers": ["127.0.0.1:2"], key: value}]))
    import sys
    r = subprocess.run([sys.executable, "-m", "uproxy", "check", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert message in r.stdout + r.stderr, r.stdout + r.stderr


def _first_line_server():
    """A server that records the first line and the next 5 bytes of each
    connection, and answers "done"."""
    got = []

    def handle(c, _srv):
        f = c.makefile("rb")
        got.append((f.readline(), f.read(5)))
        c.sendall(b"done")
    return Server(handle), got


def _send_from(src, port, data):
    with socket.socket() as s:
        s.bind((src, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(data)
        try:
            return s.recv(10), s.getsockname()[1]
        except ConnectionResetError:
            return b"", s.getsockname()[1]


def _v2(src: str, sport: int) -> bytes:
    import struct
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12)
            + socket.inet_aton(src) + socket.inet_aton("198.51.100.1")
            + struct.pack("!HH", sport, 443))


def test_tcp_listener_receives_proxy_headers_from_trusted_peers_and_sends_them_on(proxy_factory):
    """A tcp listener with proxy_protocol = true and trusted_proxies: a
    trusted peer's v1 or v2 header names the client, whose address the
    cluster's own PROXY header carries on (the header's bytes are not
    forwarded, the client's bytes after it are); an untrusted peer is taken
    as it is (its address in the header sent on); a trusted peer that sends
    no header is closed before any server is asked."""
    srv, got = _first_line_server()
    port = free_port()
    p = proxy_factory([{"name": "t", "bind": f"127.0.0.1:{port}", "mode": "tcp", "cluster": "c",
                        "proxy_protocol": True, "trusted_proxies": ["127.0.0.2/32"]}],
                      [{"name": "c", "servers": [srv.addr], "proxy_protocol": "v1"}],
                      proxy={"workers": 1})
    out, _ = _send_from("127.0.0.2", port,
                        b"PROXY TCP4 203.0.113.5 198.51.100.1 4242 443\r\nhello")
    assert out == b"done"
    assert got[-1] == (f"PROXY TCP4 203.0.113.5 127.0.0.1 4242 {port}\r\n".encode(), b"hello")
    out, _ = _send_from("127.0.0.2", port, _v2("203.0.113.6", 4343) + b"hello")
    assert out == b"done"
    assert got[-1] == (f"PROXY TCP4 203.0.113.6 127.0.0.1 4343 {port}\r\n".encode(), b"hello")
    out, sport = _send_from("127.0.0.1", port, b"hello")       # not trusted: no header read
    assert out == b"done"
    assert got[-1] == (f"PROXY TCP4 127.0.0.1 127.0.0.1 {sport} {port}\r\n".encode(), b"hello")
    n = len(got)
    out, _ = _send_from("127.0.0.2", port, b"GET / HTTP/1.1\r\n\r\n")   # trusted, no header
    assert out == b""
    time.sleep(0.2)
    assert len(got) == n
    assert p.total("err_bad_request") == 1
    srv.close()


def test_http_listener_takes_proxy_headers_only_from_trusted_proxies(proxy_factory):
    """An http listener with proxy_protocol and trusted_proxies: the load
    balancer's (127.0.0.2) header names the client; a client connecting
    directly from elsewhere is served as itself, with no header."""
    up = HttpUpstream()
    p = http_proxy(proxy_factory, [up.addr], listener={
        "proxy_protocol": True, "trusted_proxies": ["127.0.0.2/32"]})
    req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = _from("127.0.0.2", p.port, b"PROXY TCP4 203.0.113.5 198.51.100.1 4242 80\r\n" + req)
    assert out.startswith(b"HTTP/1.1 200"), out
    assert up.requests[-1].header("x-forwarded-for") == "203.0.113.5"
    out = _from("127.0.0.1", p.port, req)
    assert out.startswith(b"HTTP/1.1 200"), out
    assert up.requests[-1].header("x-forwarded-for") == "127.0.0.1"
    up.close()


def test_check_tcp_trusted_proxies_needs_proxy_protocol(tmp_path):
    import sys
    from support import render_config
    cfg = tmp_path / "u.toml"
    cfg.write_text(render_config({"workers": 1},
                                 [{"name": "t", "bind": "127.0.0.1:1", "mode": "tcp",
                                   "cluster": "c", "trusted_proxies": ["10.0.0.0/8"]}],
                                 [{"name": "c", "servers": ["127.0.0.1:2"]}]))
    r = subprocess.run([sys.executable, "-m", "uproxy", "check", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "listeners[0].trusted_proxies" in r.stdout + r.stderr
    assert "needs proxy_protocol = true" in r.stdout + r.stderr


def test_tls_listener_reads_the_proxy_header_before_the_handshake(proxy_factory, tmp_path):
    """An http listener with tls and proxy_protocol: the PROXY header
    comes first in the clear, then the TLS handshake on the same
    connection; the upstream sees the header's client and https."""
    import ssl
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "c.pem"), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    up = HttpUpstream()
    p = http_proxy(proxy_factory, [up.addr], listener={
        "proxy_protocol": True,
        "tls": {"certificates": [{"cert": str(tmp_path / "c.pem"), "key": str(tmp_path / "k.pem")}]}})
    ctx = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
    for header in (b"PROXY TCP4 203.0.113.5 198.51.100.1 4242 443\r\n", _v2("203.0.113.6", 1)):
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as raw:
            raw.sendall(header)
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET /tls HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                out = b""
                while (b := s.recv(65536)):
                    out += b
        assert out.startswith(b"HTTP/1.1 200"), out
        want = "203.0.113.5" if header.startswith(b"PROXY") else "203.0.113.6"
        assert up.requests[-1].header("x-forwarded-for") == want
        assert up.requests[-1].header("x-forwarded-proto") == "https"
    # A ClientHello where the header should be: closed, no handshake.
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            ctx.wrap_socket(raw, server_hostname="localhost")
    up.close()


# ---- balancing state across a reload (native/upstream/wstate.h) ----------

def _reload(p, generation, text=None):
    """Rewrite the configuration (or touch it) and wait for the worker."""
    if text is not None:
        with open(p.path, "w") as f:
            f.write(text)
    p.reload()
    wait_for(lambda: all(w["config_generation"] == generation for w in p.stats()["workers"]),
             what=f"the worker to take generation {generation}")


def test_reload_keeps_an_ejected_server_ejected_and_a_new_address_starts_fresh(proxy_factory):
    """A server ejected by passive health stays ejected through a reload
    until its eject_time is over (HAProxy's server-state-file keeps it so);
    a reload that puts a new address in its place starts that one fresh."""
    dead_port = free_port()
    dead = f"127.0.0.1:{dead_port}"
    live = HttpUpstream(lambda req: Response(body=b"live"))
    p = http_proxy(proxy_factory, [dead, live.addr],
                   cluster={"fail_threshold": 2, "eject_time": "60s"})
    for _ in range(4):                                # two of them pick dead: refused
        assert get(p.port)[0] == 200
    dead_row = [sv for sv in p.stats()["servers"] if sv["address"] == dead]
    assert dead_row[0]["ejections"] == 1
    # The dead server comes back to life, but it is ejected for 60 s: a
    # reload of the same servers must not let requests reach it.
    back = HttpUpstream(lambda req: Response(body=b"back"), port=dead_port)
    _reload(p, 2)
    assert [get(p.port)[0] for _ in range(6)] == [200] * 6
    assert back.requests == [] and len(live.requests) == 10
    # Its place taken by a new address: the new server is not ejected.
    fresh = HttpUpstream(lambda req: Response(body=b"fresh"))
    with open(p.path) as f:
        text = f.read().replace(dead, fresh.addr)
    _reload(p, 3, text)
    assert [get(p.port)[0] for _ in range(6)] == [200] * 6
    assert len(fresh.requests) == 3 and back.requests == []
    for u in (live, back, fresh):
        u.close()


def test_breaker_open_before_a_reload_stays_open_after(proxy_factory):
    """An open breaker stays open through a reload (the cluster keeps its
    slot by name): requests still fail fast, the upstream is not asked,
    and the gauge still says open; after open_for it half-opens as ever."""
    sw = Switch(500)
    up = HttpUpstream(sw)
    p = http_proxy(proxy_factory, [up.addr], cluster={
        "circuit_breaker": {"error_ratio": 0.5, "window": "10s", "min_requests": 3,
                            "open_for": "2s", "half_open_requests": 1}},
        clusters=[{"name": "other", "servers": [up.addr]}])
    assert [get(p.port)[0] for _ in range(4)] == [500, 500, 500, 503]
    opened = time.monotonic()
    # A reload that moves the cluster to another index: "other" first.
    with open(p.path) as f:
        text = f.read()
    i, j = text.index("[[clusters]]"), text.rindex("[[clusters]]")
    _reload(p, 2, text[:i] + text[j:] + "\n" + text[i:j])
    assert get(p.port)[0] == 503
    assert len(up.requests) == 3
    assert clusters(p)["c"]["breaker"] == ["open"]
    sw.status = 200
    time.sleep(max(0.0, 2.1 - (time.monotonic() - opened)))
    assert [get(p.port)[0] for _ in range(3)] == [200] * 3   # the probe closed it
    assert clusters(p)["c"]["breaker"] == ["closed"]
    up.close()
