"""HTTP/1.1 proxying through a real uproxy process, with real clients
(curl, httpx, raw sockets) and real upstreams (tests/lib/http_upstream.py, nginx).
The data-path tests run under both io_uring profiles."""
import hashlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import PROFILES
from http_upstream import HttpUpstream, Response
from support import free_port, pattern, pattern_sha, recv_until_close, wait_for

both_profiles = pytest.mark.parametrize("profile", list(PROFILES))


def http_proxy(proxy_factory, servers, profile="full", listener=None, cluster=None, proxy=None,
               clusters=None, extra=""):
    port = free_port()
    lst = {"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}
    lst.update(listener or {})
    cl = {"name": "c", "servers": servers}
    cl.update(cluster or {})
    p = proxy_factory([lst], [cl] + (clusters or []), proxy=proxy or {"workers": 1},
                      profile=profile, extra=extra)
    p.port = port
    p.url = f"http://127.0.0.1:{port}"
    return p


def raw(port, data: bytes, timeout=5.0, until_close=True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                b = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not b:
                break
            out += b
            if not until_close and b"\r\n\r\n" in out:
                break
        return out


def read_response(f):
    """(status, headers dict (lower-case), body) from a file object; None at EOF."""
    line = f.readline()
    if not line:
        return None
    status = int(line.split()[1])
    headers = {}
    while True:
        l = f.readline()
        if l in (b"\r\n", b""):
            break
        k, v = l.decode("latin-1").split(":", 1)
        headers[k.strip().lower()] = v.strip()
    if status < 200 and status != 101:
        return status, headers, b""
    body = b""
    if "chunked" in headers.get("transfer-encoding", ""):
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                while f.readline() not in (b"\r\n", b""):
                    pass
                break
            body += f.read(size)
            f.read(2)
    elif "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    return status, headers, body


# ---- basics ----------------------------------------------------------------

@both_profiles
def test_get_with_curl_and_forwarded_headers(proxy_factory, profile):
    up = HttpUpstream()
    p = http_proxy(proxy_factory, [up.addr], profile)
    out = subprocess.run(["curl", "-s", "-i", "-H", "X-Forwarded-For: 10.1.2.3",
                          "-H", "X-Forwarded-Proto: https", "-H", "X-Custom: kept",
                          "-H", "Connection: keep-alive, X-Hop", "-H", "X-Hop: secret",
                          "-H", "Keep-Alive: timeout=5", "-H", "TE: trailers",
                          "-H", "Proxy-Connection: keep-alive",
                          f"{p.url}/hello?x=1"], capture_output=True, text=True, timeout=10).stdout
    assert out.startswith("HTTP/1.1 200")
    assert out.endswith("ok /hello?x=1")
    req = up.requests[0]
    assert req.method == "GET" and req.target == "/hello?x=1"
    assert req.header("x-forwarded-for") == "10.1.2.3, 127.0.0.1"
    assert req.header("x-forwarded-proto") == "http"
    assert req.header("x-forwarded-host") == f"127.0.0.1:{p.port}"
    assert req.header("host") == f"127.0.0.1:{p.port}"
    assert req.header("x-custom") == "kept"
    for hop in ("connection", "x-hop", "keep-alive", "te", "proxy-connection"):
        assert req.header(hop) is None, f"hop-by-hop {hop} was forwarded"
    up.close()


@both_profiles
def test_keep_alive_reuses_upstream_connections(proxy_factory, profile):
    up = HttpUpstream()
    p = http_proxy(proxy_factory, [up.addr], profile)
    with httpx.Client(base_url=p.url) as client:
        for i in range(200):
            r = client.get(f"/r{i}")
            assert r.status_code == 200 and r.text == f"ok /r{i}"
    for _ in range(20):                      # new client connections, same pool
        with httpx.Client(base_url=p.url) as client:
            for i in range(5):
                assert client.get("/x").status_code == 200
    assert len(up.requests) == 300
    assert up.connections <= 2, f"{up.connections} upstream connections for 300 requests"
    t = p.stats()["total"]
    assert t["pool_hits"] >= 298 and t["requests"] == 300 and t["resp_2xx"] == 300
    up.close()


@both_profiles
def test_pipelined_requests_answered_in_order(proxy_factory, profile):
    def handler(req):
        # Later requests answer faster: order must come from the proxy.
        n = int(req.target[2:])
        return Response(body=req.target.encode(), delay=0.02 * (5 - n % 5) / 5)
    up = HttpUpstream(handler)
    p = http_proxy(proxy_factory, [up.addr], profile)
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(20))
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(reqs)
        f = s.makefile("rb")
        for i in range(20):
            status, headers, body = read_response(f)
            assert status == 200 and body == b"/p%d" % i
    up.close()


@both_profiles
def test_head_204_304_have_no_body(proxy_factory, profile):
    def handler(req):
        if req.target == "/204":
            return Response(status=204)
        if req.target == "/304":
            return Response(status=304, headers=[("ETag", '"x"')])
        return Response(body=b"x" * 1234)
    up = HttpUpstream(handler)
    p = http_proxy(proxy_factory, [up.addr], profile)
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /304 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        f = s.makefile("rb")
        # HEAD: Content-Length describes the body it does not carry.
        line = f.readline()
        assert line.startswith(b"HTTP/1.1 200")
        hdr = b""
        while (l := f.readline()) != b"\r\n":
            hdr += l
        assert b"Content-Length: 1234" in hdr
        assert read_response(f)[0] == 204
        assert read_response(f)[0] == 304
        status, _, body = read_response(f)
        assert status == 200 and body == b"x" * 1234   # framing stayed in step
    up.close()


@both_profiles
def test_connection_close_from_client_and_from_upstream(proxy_factory, profile):
    def handler(req):
        return Response(body=b"bye", close=req.target == "/upclose")
    up = HttpUpstream(handler)
    p = http_proxy(proxy_factory, [up.addr], profile)
    out = raw(p.port, b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and b"Connection: close\r\n" in out and out.endswith(b"bye")
    # The upstream closing its side does not close the client's connection.
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        f = s.makefile("rb")
        for path in (b"/upclose", b"/b", b"/upclose", b"/c"):
            s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_response(f)
            assert status == 200 and body == b"bye" and "connection" not in headers
    assert up.connections >= 3      # closed upstream connections were not reused
    up.close()


# ---- bodies ----------------------------------------------------------------

@both_profiles
def test_chunked_bodies_both_ways(proxy_factory, profile):
    size = 5 << 20
    body = b"".join(pattern(5, size))

    def handler(req):
        return Response(body=body[::-1], chunked=True, chunk_size=7777)
    up = HttpUpstream(handler)
    p = http_proxy(proxy_factory, [up.addr], profile)
    rng = random.Random(9)
    with socket.create_connection(("127.0.0.1", p.port), timeout=30) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        i = 0
        while i < size:
            n = rng.randint(1, 100000)
            piece = body[i:i + n]
            s.sendall(b"%x;ext=%d\r\n" % (len(piece), n) + piece + b"\r\n")
            i += n
        s.sendall(b"0\r\nX-Trailer: yes\r\n\r\n")
        status, headers, got = read_response(s.makefile("rb"))
    assert status == 200 and "chunked" in headers["transfer-encoding"]
    assert hashlib.sha256(got).digest() == hashlib.sha256(body[::-1]).digest()
    assert up.requests[0].body_sha == hashlib.sha256(body).hexdigest()
    up.close()


@pytest.mark.slow
def test_1gib_bodies_both_ways_intact(proxy_factory):
    size = 1 << 30

    def handler(req):
        def stream(sock):
            for chunk in pattern(22, size):
                sock.sendall(chunk)
        return Response(headers=[("Content-Length", str(size))], stream=stream)
    up = HttpUpstream(handler, keep_body=False)
    p = http_proxy(proxy_factory, [up.addr], "full")
    h = hashlib.sha256()
    got = 0
    with socket.create_connection(("127.0.0.1", p.port), timeout=60) as s:
        s.sendall(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        for chunk in pattern(11, size):
            s.sendall(chunk)
        f = s.makefile("rb")
        line = f.readline()
        assert line.startswith(b"HTTP/1.1 200")
        while f.readline() != b"\r\n":
            pass
        while got < size:
            b = f.read(min(1 << 20, size - got))
            assert b
            h.update(b)
            got += len(b)
    assert up.requests[0].body_len == size
    assert up.requests[0].body_sha == pattern_sha(11, size), "request body damaged"
    assert h.hexdigest() == pattern_sha(22, size), "response body damaged"
    up.close()


@both_profiles
def test_100_continue(proxy_factory, profile):
    up = HttpUpstream(lambda req: Response(body=b"got %d" % len(req.body)))
    p = http_proxy(proxy_factory, [up.addr], profile)
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"PUT /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        f = s.makefile("rb")
        status, _, _ = read_response(f)
        assert status == 100                     # relayed before the body is sent
        s.sendall(b"hello")
        status, _, body = read_response(f)
        assert status == 200 and body == b"got 5"
    out = subprocess.run(["curl", "-s", "-H", "Expect: 100-continue", "--data-binary", "x" * 5000,
                          f"{p.url}/curl"], capture_output=True, text=True, timeout=10).stdout
    assert out == "got 5000"
    up.close()


@both_profiles
@pytest.mark.parametrize("failure,status", [("reset", 502), ("close", 502), ("silence", 504)])
def test_a_final_answer_after_a_1xx_when_the_upstream_fails(proxy_factory, servers, profile,
                                                             failure, status):
    """Issue 16, defect 1: an upstream that sends 100 Continue and then
    resets, closes, or says nothing more. The 100 is relayed, and the
    client still gets a final answer from the proxy (a 1xx answers
    nothing); it used to be closed with no final response at all."""
    def serve(c, _srv):
        buf = b""
        while b"\r\n\r\n" not in buf:
            b = c.recv(65536)
            if not b:
                return
            buf += b
        c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if failure == "reset":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif failure == "silence":
            time.sleep(2)
    srv = servers(serve)
    p = http_proxy(proxy_factory, [srv.addr], profile, cluster={"response_timeout": "500ms"})
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"PUT /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        data = recv_until_close(s)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), data
    final = data[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
    assert final.startswith(b"HTTP/1.1 %d " % status), data
    assert b"Connection: close\r\n" in final


@both_profiles
def test_websocket_upgrade_becomes_a_tunnel(proxy_factory, profile):
    def handler(req):
        assert req.header("upgrade") == "websocket"
        assert "upgrade" in req.header("connection").lower()

        def echo(sock):
            while True:
                b = sock.recv(65536)
                if not b:
                    return
                sock.sendall(b"echo:" + b)
        return Response(status=101, headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                             ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")],
                        stream=echo, close=False)
    up = HttpUpstream(handler)
    p = http_proxy(proxy_factory, [up.addr], profile)
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"Upgrade: websocket" in head and b"Connection: upgrade" in head
        for i in range(20):
            msg = b"frame %d " % i * (i + 1)
            s.sendall(msg)
            got = b""
            while len(got) < len(msg) + 5:
                got += s.recv(65536)
            assert got == b"echo:" + msg
    assert p.total("upgrades") == 1
    up.close()


# ---- failures --------------------------------------------------------------

@both_profiles
def test_upstream_dies_mid_response(proxy_factory, profile):
    def handler(req):
        if req.target == "/cut":
            return Response(body=b"z" * 1_000_000, cut_after=100_000)
        return Response(body=b"fine")
    up = HttpUpstream(handler)
    p = http_proxy(proxy_factory, [up.addr], profile)
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
        data = recv_until_close(s)
    assert data.startswith(b"HTTP/1.1 200") and b"Content-Length: 1000000" in data
    assert len(data.split(b"\r\n\r\n", 1)[1]) == 100_000     # what there was, then a close
    wait_for(lambda: p.total("err_short_body") >= 1, what="short body counted")
    assert httpx.get(f"{p.url}/ok").text == "fine"
    up.close()


@both_profiles
def test_502_for_refused_and_garbage_upstreams(proxy_factory, profile):
    dead = f"127.0.0.1:{free_port()}"
    garbage = HttpUpstream(lambda req: Response(raw=b"HELLO THERE\r\n\r\n"))
    port = free_port()
    p = proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "dead",
                        "routes": [{"path_prefix": "/garbage", "cluster": "garbage"}]}],
                      [{"name": "dead", "servers": [dead], "fail_threshold": 0},
                       {"name": "garbage", "servers": [garbage.addr]}],
                      proxy={"workers": 1}, profile=profile)
    for path in (b"/x", b"/garbage"):
        out = raw(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 502 Bad Gateway"), out
        assert b"Connection: close" in out
    assert p.total("err_bad_gateway") == 2
    garbage.close()


def test_504_when_the_upstream_is_too_slow(proxy_factory):
    up = HttpUpstream(lambda req: Response(body=b"late", delay=2))
    p = http_proxy(proxy_factory, [up.addr], cluster={"response_timeout": "300ms"})
    t0 = time.monotonic()
    out = raw(p.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 504")
    assert time.monotonic() - t0 < 1.5
    assert p.total("err_gateway_timeout") == 1
    up.close()


def test_errors_are_counted_per_server(proxy_factory):
    """HAProxy's backend rows: which server the 5xx, the timeouts and the
    ejections came from, in the segment, `uproxy stats --json` and /metrics."""
    import json
    import httpx
    dead = f"127.0.0.1:{free_port()}"
    err = HttpUpstream(lambda req: Response(status=503, body=b"down"))
    slow = HttpUpstream(lambda req: Response(body=b"late", delay=2))
    port, admin = free_port(), free_port()
    p = proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "err",
                        "routes": [{"path_prefix": "/slow", "cluster": "slow"},
                                   {"path_prefix": "/dead", "cluster": "dead"}]}],
                      [{"name": "err", "servers": [err.addr]},
                       {"name": "slow", "servers": [slow.addr], "response_timeout": "300ms"},
                       {"name": "dead", "servers": [dead], "fail_threshold": 2,
                        "max_attempts": 1}],
                      proxy={"workers": 1}, extra=f'\n[admin]\nbind = "127.0.0.1:{admin}"\n')
    for path, status in ((b"/", b"503"), (b"/", b"503"), (b"/slow", b"504"),
                         (b"/dead", b"502"), (b"/dead", b"502")):
        out = raw(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 " + status), (path, out[:80])

    def by_cluster():
        return {sv["cluster"]: sv for sv in p.stats()["servers"] if sv["in_use"]}
    wait_for(lambda: by_cluster()["dead"]["ejections"] == 1, 5, what="the ejection counted")
    sv = by_cluster()
    assert (sv["err"]["resp_5xx"], sv["err"]["timeouts"], sv["err"]["ejections"]) == (2, 0, 0), sv
    assert (sv["slow"]["resp_5xx"], sv["slow"]["timeouts"]) == (0, 1), sv["slow"]
    assert (sv["dead"]["connect_errors"], sv["dead"]["resp_5xx"]) == (2, 0), sv["dead"]
    r = subprocess.run([sys.executable, "-m", "uproxy", "stats", "--json", "--pid", str(p.pid)],
                       capture_output=True, text=True, timeout=30)
    js = {s["cluster"]: s for s in json.loads(r.stdout)["servers"] if s["in_use"]}
    assert js["err"]["resp_5xx"] == 2 and js["slow"]["timeouts"] == 1 and js["dead"]["ejections"] == 1
    m = httpx.get(f"http://127.0.0.1:{admin}/metrics").text
    assert f'uproxy_server_resp_5xx_total{{address="{err.addr}",cluster="err"}} 2.0' in m, m
    assert f'uproxy_server_timeouts_total{{address="{slow.addr}",cluster="slow"}} 1.0' in m
    assert f'uproxy_server_ejections_total{{address="{dead}",cluster="dead"}} 1.0' in m
    err.close()
    slow.close()


@both_profiles
def test_idempotent_request_retried_after_a_stale_pooled_connection(proxy_factory, profile):
    state = threading.local()

    def handler(req):
        # The second request on any upstream connection meets a server that
        # closes instead of answering, as when an upstream's keep-alive
        # timeout races the proxy's next request.
        state.n = getattr(state, "n", 0) + 1
        if state.n == 2:
            return None
        return Response(body=b"ok")
    up = HttpUpstream(handler)
    p = http_proxy(proxy_factory, [up.addr], profile)
    with httpx.Client(base_url=p.url) as c:
        assert c.get("/1").text == "ok"          # connection A, request 1
        assert c.get("/2").text == "ok"          # A fails; retried on connection B
        assert p.total("retries") == 1
        r = c.post("/3", content=b"data")         # B's second: a POST is not retried
        assert r.status_code == 502
    assert p.total("retries") == 1
    up.close()


def test_header_timeout_gives_408(proxy_factory):
    up = HttpUpstream()
    p = http_proxy(proxy_factory, [up.addr], listener={"header_timeout": "500ms"})
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        t0 = time.monotonic()
        for b in b"GET / HTTP/1.1\r\nHo":
            s.sendall(bytes([b]))
            time.sleep(0.01)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 408")
        assert 0.4 < time.monotonic() - t0 < 2.0
    assert not up.requests and p.total("err_header_timeout") == 1
    up.close()


# ---- the parser's rules, through the proxy ------------------------------------

BAD = [
    ("repeated content-length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("conflicting content-length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("content-length with transfer-encoding", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te not ending in chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("unknown transfer coding", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: zstd9, chunked\r\n\r\n", 501),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    ("bare CR", b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400),
    ("NUL in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
    ("control byte in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x07b\r\n\r\n", 400),
    ("invalid method", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("invalid version", b"GET / HTTX/1.1\r\nHost: x\r\n\r\n", 400),
    ("invalid header name", b"GET / HTTP/1.1\r\nHost: x\r\nX@Y: z\r\n\r\n", 400),
    ("bad chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ("chunk size overflow", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n", 400),
    ("http/1.1 without host", b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
    ("bare LF", b"GET / HTTP/1.1\nHost: x\n\n", 400),
    ("header section over the limit", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ("request target over the limit", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("http/2 version", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
]


@pytest.mark.parametrize("what,request_bytes,status", BAD, ids=[b[0] for b in BAD])
def test_malformed_requests_are_refused_and_closed(proxy_factory, what, request_bytes, status):
    up = HttpUpstream()
    p = http_proxy(proxy_factory, [up.addr])
    out = raw(p.port, request_bytes)
    assert out.startswith(b"HTTP/1.1 %d" % status), f"{what}: {out[:80]!r}"
    assert b"Connection: close" in out
    if b"chunked\r\n\r\n" not in request_bytes:        # chunk errors are found mid-body
        assert not up.requests, f"{what}: reached the upstream"
    up.close()


# ---- routing, balancing, health -------------------------------------------------

def test_routes_by_host_and_path(proxy_factory):
    ups = {n: HttpUpstream(lambda req, n=n: Response(body=n.encode())) for n in
           ("default", "api", "wild", "static")}
    port = free_port()
    p = proxy_factory(
        [{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "default",
          "routes": [{"host": "api.example.com", "cluster": "api"},
                     {"host": "*.example.org", "path_prefix": "/static", "cluster": "static"},
                     {"host": "*.example.org", "cluster": "wild"}]}],
        [{"name": n, "servers": [u.addr]} for n, u in ups.items()], proxy={"workers": 1})

    def get(host, path="/"):
        return httpx.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}).text
    assert get("api.example.com") == "api"
    assert get("API.Example.COM:8080") == "api"
    assert get("www.example.org") == "wild"
    assert get("a.b.example.org", "/static/x.css") == "static"
    assert get("example.org") == "default"          # the wildcard needs a label
    assert get("other.com", "/static/x") == "default"
    for u in ups.values():
        u.close()


def _counts(ups, n, get):
    for _ in range(n):
        get()
    return [len(u.requests) for u in ups]


def test_weighted_round_robin(proxy_factory):
    ups = [HttpUpstream() for _ in range(2)]
    p = http_proxy(proxy_factory, [{"address": ups[0].addr, "weight": 3}, ups[1].addr])
    with httpx.Client(base_url=p.url) as c:
        counts = _counts(ups, 400, lambda: c.get("/"))
    assert counts == [300, 100], counts
    for u in ups:
        u.close()


@pytest.mark.parametrize("balance", ["least_conn", "p2c"])
def test_load_aware_balancing_prefers_the_idle_server(proxy_factory, balance):
    slow = HttpUpstream(lambda req: Response(body=b"slow", delay=0.3))
    fast = HttpUpstream(lambda req: Response(body=b"fast"))
    p = http_proxy(proxy_factory, [slow.addr, fast.addr], cluster={"balance": balance})
    results = []

    def one():
        results.append(httpx.get(p.url + "/", timeout=10).text)
    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    # The slow server keeps requests in flight, so it is chosen less (a busy
    # machine blurs the timing, hence a margin rather than an exact split).
    assert results.count("fast") >= results.count("slow") * 1.5, results
    slow.close()
    fast.close()


def test_hash_balancing_is_sticky_and_spreads(proxy_factory):
    ups = [HttpUpstream(lambda req, i=i: Response(body=b"%d" % i)) for i in range(3)]
    p = http_proxy(proxy_factory, [u.addr for u in ups],
                   cluster={"balance": "hash", "hash_key": "header:X-User"})
    seen = {}
    with httpx.Client(base_url=p.url) as c:
        for user in range(60):
            answers = {c.get("/", headers={"X-User": f"user{user}"}).text for _ in range(3)}
            assert len(answers) == 1, f"user{user} moved between servers: {answers}"
            seen[user] = answers.pop()
    assert len(set(seen.values())) == 3, "all users landed on one server"
    for u in ups:
        u.close()


def test_health_checks_eject_and_restore_a_server(proxy_factory):
    sick = {"on": False}

    def a_handler(req):
        if req.target == "/health":
            return Response(status=503 if sick["on"] else 200, body=b"h")
        return Response(body=b"a")
    a = HttpUpstream(a_handler)
    b = HttpUpstream(lambda req: Response(body=b"b"))
    p = http_proxy(proxy_factory, [a.addr, b.addr],
                   cluster={"health": {"path": "/health", "interval": "100ms", "timeout": "500ms",
                                       "rise": 2, "fall": 2}})

    def spread():
        with httpx.Client(base_url=p.url) as c:
            return {c.get("/").text for _ in range(10)}
    wait_for(lambda: spread() == {"a", "b"}, 5, what="both servers serving")
    sick["on"] = True
    wait_for(lambda: any(s["health"] == "down" for s in p.stats()["servers"]), 5, what="a marked down")
    assert spread() == {"b"}
    sick["on"] = False
    wait_for(lambda: spread() == {"a", "b"}, 5, what="a restored")
    texts = [e["text"] for e in p.stats()["events"]]
    assert any("is down" in t and a.addr in t for t in texts), texts
    assert any("is up" in t and a.addr in t for t in texts), texts
    a.close()
    b.close()


def test_503_when_no_server_is_healthy(proxy_factory):
    up = HttpUpstream(lambda req: Response(status=500))
    p = http_proxy(proxy_factory, [up.addr],
                   cluster={"health": {"path": "/", "interval": "100ms", "fall": 1}})
    wait_for(lambda: p.stats()["servers"][0]["health"] == "down", 5, what="server down")
    out = raw(p.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 503")
    up.close()


# ---- pool limits ---------------------------------------------------------------

def test_pool_limits(proxy_factory):
    up = HttpUpstream()
    p = http_proxy(proxy_factory, [up.addr],
                   cluster={"max_requests": 5, "pool_idle_timeout": "500ms"})
    with httpx.Client(base_url=p.url) as c:
        for _ in range(20):
            assert c.get("/").status_code == 200
    assert up.connections == 4              # five requests each
    wait_for(lambda: p.total("pool_idle") == 0, 3, what="idle connections to time out")


# ---- reload and drain ---------------------------------------------------------

def test_reload_under_load_loses_nothing(proxy_factory, tmp_path):
    a = HttpUpstream(lambda req: Response(body=b"a"))
    b = HttpUpstream(lambda req: Response(body=b"b"))
    p = http_proxy(proxy_factory, [a.addr], proxy={"workers": 2})
    original = open(p.path).read()
    stop = threading.Event()
    failures, done = [], [0]

    def load():
        with httpx.Client(base_url=p.url, timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.get("/")
                    if r.status_code != 200 or r.text not in ("a", "b"):
                        failures.append(r.status_code)
                    done[0] += 1
                except httpx.HTTPError as e:
                    failures.append(repr(e))
    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(30):                      # a reload every 100 ms
        with open(p.path, "w") as f:
            f.write(original.replace(a.addr, b.addr) if i % 2 == 0 else original)
        p.reload()
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    assert done[0] > 100
    # Signals that arrive while a reload runs coalesce into the next one.
    assert p.stats()["reloads"] >= 20
    a.close()
    b.close()


def test_keep_alive_client_keeps_its_listener_when_a_reload_reorders_them(proxy_factory):
    """A client connection finds its listener by index, checked against the
    listener's stable id: a reload that puts another listener first must not
    send its next request to that listener's cluster, and one that removes its
    listener closes it."""
    a = HttpUpstream(lambda req: Response(body=b"a"))
    b = HttpUpstream(lambda req: Response(body=b"b"))
    pa, pb = free_port(), free_port()
    la = {"name": "la", "bind": f"127.0.0.1:{pa}", "mode": "http", "cluster": "ca"}
    lb = {"name": "lb", "bind": f"127.0.0.1:{pb}", "mode": "http", "cluster": "cb"}
    p = proxy_factory([la, lb], [{"name": "ca", "servers": [a.addr]}, {"name": "cb", "servers": [b.addr]}],
                      proxy={"workers": 1})
    original = open(p.path).read()
    with socket.create_connection(("127.0.0.1", pb), timeout=5) as s:
        f = s.makefile("rb")

        def get():
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = f.readline()
            while f.readline() not in (b"\r\n", b""):
                pass
            return head[:12], f.read(1)
        assert get() == (b"HTTP/1.1 200", b"b")
        # The same listeners, lb first: the open connection still belongs to lb.
        i = original.index("[[listeners]]")
        j = original.index("[[listeners]]", i + 1)
        k = original.index("[[clusters]]")
        with open(p.path, "w") as out:
            out.write(original[:i] + original[j:k] + original[i:j] + original[k:])
        p.reload()
        wait_for(lambda: all(w["config_generation"] == 2 for w in p.stats()["workers"]),
                 what="the worker to take the reload")
        for _ in range(3):
            assert get() == (b"HTTP/1.1 200", b"b")
        # lb leaves: its idle client connection is closed, la still answers.
        with open(p.path, "w") as out:
            out.write(original[:j] + original[k:])
        p.reload()
        wait_for(lambda: all(w["config_generation"] == 3 for w in p.stats()["workers"]),
                 what="the worker to take the second reload")
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert f.read() == b""
    assert httpx.get(f"http://127.0.0.1:{pa}/").text == "a"
    a.close()
    b.close()


def test_absolute_form_target_with_a_query_and_no_path_routes_by_its_host(proxy_factory):
    """"http://b.test?x" names host b.test (the query ends the authority, RFC
    3986 3.2): it goes to b.test's route, as redirect_https reads it too."""
    a = HttpUpstream(lambda req: Response(body=b"a"))
    b = HttpUpstream(lambda req: Response(body=b"b " + req.target.encode()))
    p = http_proxy(proxy_factory, [a.addr], listener={"routes": [{"host": "b.test", "cluster": "b"}]},
                   clusters=[{"name": "b", "servers": [b.addr]}])
    out = raw(p.port, b"GET http://b.test?x=1 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.split(b"\r\n\r\n", 1)[1].startswith(b"b "), out
    out = raw(p.port, b"GET http://b.test/p?x HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
    assert out.split(b"\r\n\r\n", 1)[1].startswith(b"b "), out
    a.close()
    b.close()


def test_bad_reload_keeps_the_old_configuration(proxy_factory):
    up = HttpUpstream()
    p = http_proxy(proxy_factory, [up.addr])
    with open(p.path, "a") as f:
        f.write("\n[[listeners]]\nname = 'broken'\n")
    p.reload()
    wait_for(lambda: p.stats()["reload_failures"] == 1, what="the failed reload")
    assert httpx.get(p.url + "/still").text == "ok /still"
    assert "reload failed" in p.output() and "listeners[1].bind" in p.output()
    up.close()


def test_sigterm_finishes_requests_and_closes_idle_connections(proxy_factory):
    up = HttpUpstream(lambda req: Response(body=b"slow done", delay=1.0 if req.target == "/slow" else 0))
    p = http_proxy(proxy_factory, [up.addr], proxy={"workers": 1, "drain_timeout": "10s"})
    idle = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    idle.sendall(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
    read_response(idle.makefile("rb"))
    busy = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    busy.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    p.p.send_signal(signal.SIGTERM)
    assert idle.recv(10) == b""                      # idle keep-alive: closed at once
    status, headers, body = read_response(busy.makefile("rb"))
    assert status == 200 and body == b"slow done"   # in flight: finished...
    assert headers.get("connection") == "close"     # ...and told the connection ends
    assert p.p.wait(10) == 0
    idle.close()
    busy.close()
    up.close()


# ---- nginx as the upstream ----------------------------------------------------

@pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed (scripts/setup --test installs it)")
def test_nginx_upstream_static_files(proxy_factory, tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    files = {"small.txt": b"x" * 64, "big.bin": b"".join(pattern(3, 3 << 20))}
    for n, d in files.items():
        (root / n).write_bytes(d)
    port = free_port()
    conf = tmp_path / "nginx.conf"
    # pytest's temporary directories are private (0700): the worker must be
    # the same user to read them.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(f"""{user} daemon off; worker_processes 1; pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log; events {{ worker_connections 256; }}
http {{ access_log off; server {{ listen 127.0.0.1:{port}; root {root}; }} }}""")
    ng = subprocess.Popen(["nginx", "-c", str(conf)])
    try:
        wait_for(lambda: subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/small.txt"],
                                        capture_output=True).returncode == 0, 10, what="nginx")
        p = http_proxy(proxy_factory, [f"127.0.0.1:{port}"])
        with httpx.Client(base_url=p.url) as c:
            for _ in range(3):
                for n, d in files.items():
                    r = c.get("/" + n)
                    assert r.status_code == 200 and r.content == d
            assert c.get("/missing").status_code == 404
    finally:
        ng.terminate()
        ng.wait(10)


# ---- access log -------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["json", "combined"])
def test_access_log(proxy_factory, tmp_path, fmt):
    import json as _json
    up = HttpUpstream(lambda req: Response(body=b"hello"))
    path = tmp_path / f"access-{fmt}.log"
    p = http_proxy(proxy_factory, [up.addr],
                   listener={"access_log": str(path), "access_log_format": fmt})
    r = httpx.get(p.url + "/page?q=1", headers={"User-Agent": "tester/1.0", "Referer": "http://r/"})
    assert r.status_code == 200
    raw(p.port, b"GET / HTTP/1.1\r\nHost : bad\r\n\r\n")         # a 400, logged too
    wait_for(lambda: path.exists() and len(path.read_text().splitlines()) >= 2, 5, what="log lines")
    lines = path.read_text().splitlines()
    if fmt == "json":
        ok, bad = (_json.loads(l) for l in lines[:2])
        assert ok["method"] == "GET" and ok["target"] == "/page?q=1" and ok["status"] == 200
        assert ok["client"] == "127.0.0.1" and ok["user_agent"] == "tester/1.0"
        assert ok["referer"] == "http://r/" and ok["bytes_out"] == 5
        assert ok["upstream"] == f"c/{up.addr}" and ok["duration_ms"] >= 0
        assert bad["status"] == 400 and bad["upstream"] is None
    else:
        assert '"GET /page?q=1 HTTP/1.1" 200 5 "http://r/" "tester/1.0"' in lines[0]
        assert lines[0].startswith("127.0.0.1 - - [")
        assert '"-" 400 - "-" "-"' in lines[1]
    assert p.total("log_written") == 2 and p.total("log_dropped") == 0
    up.close()


@both_profiles
def test_bodies_over_the_limit_get_413(proxy_factory, profile):
    up = HttpUpstream(lambda req: Response(body=b"took %d" % len(req.body)))
    p = http_proxy(proxy_factory, [up.addr], profile, listener={"max_body_size": "1k"})
    assert httpx.post(p.url + "/ok", content=b"x" * 1024).text == "took 1024"
    out = raw(p.port, b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n" + b"x" * 1025)
    assert out.startswith(b"HTTP/1.1 413")
    chunked = b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + \
        b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
    out = raw(p.port, chunked)
    assert out.startswith(b"HTTP/1.1 413") or b"HTTP/1.1 200" not in out
    assert [r.target for r in up.requests].count("/big") <= 1   # the CL one never reached it
    up.close()


@both_profiles
@pytest.mark.parametrize("splice_min", ["32k", 0])
def test_large_bodies_by_splice_or_buffers(proxy_factory, profile, splice_min):
    size = 3 << 20
    body = b"".join(pattern(8, size))
    up = HttpUpstream(lambda req: Response(body=body[::-1]))
    p = http_proxy(proxy_factory, [up.addr], profile,
                   proxy={"workers": 1, "body_splice_min": splice_min})
    with httpx.Client(base_url=p.url) as c:
        for _ in range(3):
            r = c.post("/s", content=body)
            assert r.status_code == 200 and r.content == body[::-1]
        assert c.get("/after").status_code == 200       # keep-alive still in step
    assert all(q.body == body for q in up.requests[:3])
    spliced = p.total("bodies_spliced")
    assert spliced == (7 if splice_min else 0), spliced   # 3 requests, 4 responses
    up.close()


@both_profiles
def test_keep_alive_after_bodies_that_arrived_before_the_splice(proxy_factory, profile):
    """A body large enough for splice that is already in receive buffers
    when the switch-over would happen goes out buffered, and the pooled
    connection still works afterwards (it used to be left not receiving)."""
    body = b"z" * (64 << 10)
    up = HttpUpstream(lambda req: Response(body=body))
    p = http_proxy(proxy_factory, [up.addr], profile)
    with httpx.Client(base_url=p.url, timeout=5) as c:
        for _ in range(30):
            r = c.get("/x")
            assert r.status_code == 200 and r.content == body
    with httpx.Client(base_url=p.url, timeout=5) as c:      # new client, pooled upstream
        for _ in range(10):
            assert c.get("/y").content == body
    assert up.connections <= 2
    up.close()


@pytest.mark.parametrize("keep", [False, True])
def test_underscore_headers(proxy_factory, keep):
    up = HttpUpstream()
    p = http_proxy(proxy_factory, [up.addr], listener={"underscores_in_headers": keep})
    raw(p.port, b"GET /u HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\nX_Custom: 1\r\n"
                b"X-Normal: 2\r\nConnection: close\r\n\r\n")
    req = up.requests[0]
    assert req.header("x-normal") == "2"
    assert (req.header("transfer_encoding") is not None) == keep
    assert (req.header("x_custom") is not None) == keep
    up.close()


# ---- issue 16: header field limits, methods, CONNECT ------------------------------

def head_with_fields(n, target=b"/f"):
    """A request head with exactly n field lines (Host and Connection among them)."""
    lines = [b"Host: x", b"Connection: close"] + [b"X-Field-%d: v%d" % (i, i) for i in range(n - 2)]
    return b"GET " + target + b" HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"


def test_header_field_count_limit_default_and_per_listener(proxy_factory):
    """Issue 16, defect 2: 100 header fields used to get 431 (a fixed limit
    of 96); nginx forwards them. The default is now 128, and
    max_header_fields sets it per listener (up to 1024)."""
    up = HttpUpstream()
    port2 = free_port()
    p = http_proxy(proxy_factory, [up.addr], extra=f"""
[[listeners]]
name = "many"
bind = "127.0.0.1:{port2}"
mode = "http"
cluster = "c"
max_header_fields = 300
max_header_size = "32k"
""")
    out = raw(p.port, head_with_fields(100, b"/100"))
    assert out.startswith(b"HTTP/1.1 200"), out[:60]
    got = up.requests[-1]
    assert got.target == "/100" and len([k for k, _ in got.headers if k.startswith("X-Field-")]) == 98
    assert raw(p.port, head_with_fields(128, b"/128")).startswith(b"HTTP/1.1 200")
    out = raw(p.port, head_with_fields(129, b"/129"))
    assert out.startswith(b"HTTP/1.1 431") and b"Connection: close" in out
    assert raw(port2, head_with_fields(300, b"/300")).startswith(b"HTTP/1.1 200")
    assert raw(port2, head_with_fields(301, b"/301")).startswith(b"HTTP/1.1 431")
    assert [r.target for r in up.requests] == ["/100", "/128", "/300"]
    up.close()


def test_response_with_many_header_fields_is_relayed(proxy_factory):
    """A response head is held to 16 KiB and to as many fields as the
    parser's arrays hold (1024), not to a client's limit."""
    up = HttpUpstream(lambda req: Response(body=b"ok", headers=[("Set-Cookie", "c%d=v" % i)
                                                                 for i in range(300)]))
    p = http_proxy(proxy_factory, [up.addr], listener={"max_header_fields": 20})
    r = httpx.get(p.url + "/cookies")
    assert r.status_code == 200 and len(r.headers.get_list("set-cookie")) == 300
    up.close()


def test_connect_is_refused_unless_a_route_allows_it(proxy_factory):
    """Issue 16, defect 3: CONNECT used to be forwarded to the origin and
    to become a tunnel on a 2xx. A reverse proxy refuses it (501 and a
    close) unless a route opts in with allow_connect; there it is a tunnel
    both ways."""
    def handler(req):
        if req.method != "CONNECT":
            return Response(body=b"plain")

        def echo(sock):
            while True:
                b = sock.recv(65536)
                if not b:
                    return
                sock.sendall(b"echo:" + b)
        return Response(status=200, stream=echo)
    up = HttpUpstream(handler)
    port = free_port()
    p = proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
                        "routes": [{"host": "tunnel.example", "cluster": "c", "allow_connect": True},
                                   {"host": "other.example", "cluster": "c"}]}],
                      [{"name": "c", "servers": [up.addr]}], proxy={"workers": 1})
    for host in (b"x", b"other.example"):
        out = raw(port, b"CONNECT " + host + b":443 HTTP/1.1\r\nHost: " + host + b":443\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 501 Not Implemented\r\n"), out[:60]
        assert b"Connection: close\r\n" in out
    assert not up.requests
    assert p.total("resp_5xx") == 2
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        for i in range(5):
            msg = b"bytes %d" % i
            s.sendall(msg)
            got = b""
            while len(got) < len(msg) + 5:
                got += s.recv(65536)
            assert got == b"echo:" + msg
    assert [r.method for r in up.requests] == ["CONNECT"]
    assert p.total("upgrades") == 1
    up.close()


def test_methods_allowed_per_route(proxy_factory):
    """Issue 16, defect 3: methods = [...] on a route (or on the listener,
    as the default of its routes and of requests that match no route):
    other methods get 405 with an Allow line and a close. GET brings HEAD
    with it, as nginx's limit_except and HAProxy's METH_GET do."""
    up = HttpUpstream(lambda req: Response(body=b"ok"))
    port = free_port()
    p = proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
                        "methods": ["GET"],
                        "routes": [{"path_prefix": "/api/", "cluster": "c", "methods": ["GET", "POST"]},
                                   {"path_prefix": "/any/", "cluster": "c", "methods": ["GET"],
                                    "allow_connect": True},
                                   {"path_prefix": "/inherit/", "cluster": "c"}]}],
                      [{"name": "c", "servers": [up.addr]}], proxy={"workers": 1})

    def send(method, path):
        body = b"Content-Length: 2\r\n\r\nhi" if method in (b"POST", b"PUT") else b"\r\n"
        return raw(port, method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + body)
    for method in (b"GET", b"HEAD", b"POST"):
        assert send(method, b"/api/x").startswith(b"HTTP/1.1 200"), method
    for method, path in ((b"PUT", b"/api/x"), (b"DELETE", b"/api/x"), (b"PROPFIND", b"/api/x"),
                         (b"get", b"/api/x")):
        out = send(method, path)
        assert out.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n"), (method, out[:60])
        assert b"\r\nAllow: GET, HEAD, POST\r\n" in out and b"Connection: close\r\n" in out
        assert out.endswith(b"\r\n\r\nMethod Not Allowed\n")
    out = send(b"POST", b"/any/x")
    assert b"\r\nAllow: GET, HEAD, CONNECT\r\n" in out
    # The listener's list: inherited by a route without its own, and the
    # policy of a request that matches no route.
    for path in (b"/inherit/x", b"/elsewhere"):
        assert send(b"GET", path).startswith(b"HTTP/1.1 200")
        out = send(b"POST", path)
        assert out.startswith(b"HTTP/1.1 405") and b"\r\nAllow: GET, HEAD\r\n" in out
    assert sorted({r.method for r in up.requests}) == ["GET", "HEAD", "POST"]
    assert len(up.requests) == 5
    up.close()
