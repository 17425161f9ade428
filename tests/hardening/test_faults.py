"""Faults on the upstream side and in the proxy's own life, through a real
uproxy process: upstreams that refuse, reset, hang, close in the middle of
a response, answer garbage, die and come back; a reload every 100 ms under
load; a drain under load.

Every request gets an answer (the response, or 502/503/504) or, when the
response was already under way, a cut connection: never a hang, never a
crash. The proxy's open files and resident memory are the same before and
after each fault (after a warm-up, so first-touch pages do not count).
"""
import os
import signal
import socket
import struct
import threading
import time

import pytest

from harden import FastUpstream, Load, fd_count, read_response, rss_kib, settle_fds
from http_upstream import HttpUpstream, Response
from support import free_port, recv_until_close, unanswering_port, wait_for

RSS_SLACK_KIB = 6 * 1024        # Python's own heap moves a little between samples


def http_listener(port, **kw):
    d = {"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}
    d.update(kw)
    return d


def start(proxy_factory, servers, cluster=None, listener=None, proxy=None, extra_listeners=(),
          extra_clusters=()):
    port = free_port()
    cl = {"name": "c", "servers": servers}
    cl.update(cluster or {})
    p = proxy_factory([http_listener(port, **(listener or {}))] + list(extra_listeners),
                      [cl] + list(extra_clusters), proxy=proxy or {"workers": 2})
    p.port = port
    return p


def one(port, path=b"/", timeout=10.0):
    """One request on a new connection: (status, body), or the error."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        status, body, _, _ = read_response(s)
        return status, body


def figures(p):
    return fd_count(p.pid), rss_kib(p.pid)


def assert_no_leak(p, before, what):
    fds0, rss0 = before
    fds1 = settle_fds(p.pid, fds0)
    rss1 = rss_kib(p.pid)
    print(f"{what}: fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB")
    assert fds1 <= fds0, f"{what}: open files {fds0} -> {fds1}"
    assert rss1 - rss0 < RSS_SLACK_KIB, f"{what}: RSS {rss0} -> {rss1} KiB"


def hammer(port, n, path=b"/", threads=4):
    """n requests, each on its own connection, from a few threads: a list
    of statuses, or error strings for requests that got no answer."""
    out, lock = [], threading.Lock()

    def worker(k):
        for _ in range(k):
            try:
                r = one(port, path)[0]
            except socket.timeout:
                r = "hung"
            except OSError as e:
                r = repr(e)
            with lock:
                out.append(r)
    ts = [threading.Thread(target=worker, args=(n // threads,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return out


# ---- upstream faults ------------------------------------------------------------

def test_refusing_upstream(proxy_factory):
    dead = f"127.0.0.1:{free_port()}"
    p = start(proxy_factory, [dead], cluster={"fail_threshold": 0})
    hammer(p.port, 40)
    before = figures(p)
    got = hammer(p.port, 400)
    assert set(got) == {502}, {g for g in got if g != 502}
    assert_no_leak(p, before, "refusing upstream")


def test_refusing_upstream_ejected_gives_503(proxy_factory):
    dead = f"127.0.0.1:{free_port()}"
    p = start(proxy_factory, [dead], cluster={"fail_threshold": 2, "eject_time": "30s"},
              proxy={"workers": 1})
    got = hammer(p.port, 40, threads=1)
    assert set(got) <= {502, 503} and got[-1] == 503, got


def reset_after_request(c, srv):
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = c.recv(4096)
        if not b:
            return
        buf += b
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_resetting_upstream(proxy_factory, servers):
    up = servers(reset_after_request)
    p = start(proxy_factory, [up.addr], cluster={"fail_threshold": 0})
    hammer(p.port, 40)
    before = figures(p)
    got = hammer(p.port, 400)
    assert set(got) == {502}, {g for g in got if g != 502}
    assert_no_leak(p, before, "resetting upstream")


def test_hanging_upstream_gives_504(proxy_factory, servers):
    hold = threading.Event()

    def hang(c, srv):
        c.recv(65536)
        hold.wait(30)
    up = servers(hang)
    p = start(proxy_factory, [up.addr], cluster={"response_timeout": "300ms"})
    hammer(p.port, 8)
    before = figures(p)
    t0 = time.monotonic()
    got = hammer(p.port, 200, threads=50)
    took = time.monotonic() - t0
    assert set(got) == {504}, got
    assert took < 15, took                       # 4 rounds of 300 ms, and Python
    hold.set()
    assert_no_leak(p, before, "hanging upstream")


def test_upstream_that_accepts_nothing_times_out_the_connect(proxy_factory):
    with unanswering_port() as port:
        p = start(proxy_factory, [f"127.0.0.1:{port}"],
                  cluster={"connect_timeout": "300ms", "max_attempts": 1, "fail_threshold": 0})
        before = figures(p)
        got = hammer(p.port, 40, threads=20)
        assert set(got) == {502}, got
        assert p.total("err_connect_timeout") >= 40
        assert_no_leak(p, before, "connect timeout")


def test_upstream_closing_mid_response(proxy_factory):
    up = HttpUpstream(lambda req: Response(body=b"z" * 300_000, cut_after=50_000)
                      if req.target == "/cut" else Response(body=b"fine"))
    p = start(proxy_factory, [up.addr])
    hammer(p.port, 8, b"/cut")
    assert one(p.port, b"/ok") == (200, b"fine")      # one pooled connection, before and after
    before = figures(p)
    cut = 0
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
            data = recv_until_close(s)
        assert data.startswith(b"HTTP/1.1 200"), data[:50]
        assert len(data.split(b"\r\n\r\n", 1)[1]) == 50_000       # what there was, then the cut
        cut += 1
    assert cut == 100
    assert one(p.port, b"/ok") == (200, b"fine")
    assert_no_leak(p, before, "upstream closing mid-response")
    up.close()


@pytest.mark.parametrize("garbage", [b"HELLO\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                                     b"\x00" * 100,
                                     # past the parser's cap on fields (1024, docs/http-parser.md)
                                     b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 1100 + b"\r\n",
                                     b"HTTP/1.1 200 OK\r\nX: " + b"a" * 40000])
def test_garbage_from_the_upstream(proxy_factory, garbage):
    up = HttpUpstream(lambda req: Response(raw=garbage, close=True))
    p = start(proxy_factory, [up.addr], proxy={"workers": 1})
    hammer(p.port, 8)
    before = figures(p)
    got = hammer(p.port, 100)
    assert set(got) == {502}, got
    assert_no_leak(p, before, f"garbage {garbage[:12]!r}")
    up.close()


def test_upstream_dies_and_comes_back(proxy_factory):
    up = FastUpstream()
    p = start(proxy_factory, [up.addr], cluster={"eject_time": "1s", "fail_threshold": 2})
    load = Load(p.port, n=4)
    time.sleep(1.0)
    before = figures(p)
    up.close()                                   # dies: its connections close, the port refuses
    time.sleep(1.5)
    up.restart()                                 # comes back on the same port
    wait_for(lambda: one(p.port)[0] == 200, 10, what="the upstream to be used again")
    time.sleep(1.0)
    load.stop()
    st = load.statuses
    assert not load.errors, load.summary()       # every request was answered
    assert set(st) <= {200, 502, 503}, st
    assert st.get(200, 0) > 50 and (st.get(502, 0) + st.get(503, 0)) > 0, st
    assert_no_leak(p, before, "upstream died and came back")
    up.close()


# ---- the proxy's own life: reloads and drain ------------------------------------

def test_sighup_every_100ms_under_load_http_and_tcp(proxy_factory, tmp_path):
    a, b = FastUpstream(), FastUpstream()
    tcp_port = free_port()
    p = start(proxy_factory, [a.addr],
              extra_listeners=[{"name": "tcp", "bind": f"127.0.0.1:{tcp_port}", "mode": "tcp",
                                "cluster": "t"}],
              extra_clusters=[{"name": "t", "servers": [a.addr]}])
    original = open(p.path).read()
    changed = original.replace(f'servers = ["{a.addr}"]', f'servers = ["{a.addr}", "{b.addr}"]')
    assert changed != original
    http_load, tcp_load = Load(p.port, n=3), Load(tcp_port, n=2)
    time.sleep(1.0)
    before = figures(p)
    for i in range(50):                          # 5 s of reloads, one every 100 ms
        with open(p.path, "w") as f:
            f.write(changed if i % 2 == 0 else original)
        p.reload()
        time.sleep(0.1)
    time.sleep(0.5)
    http_load.stop()
    tcp_load.stop()
    for name, load in (("http", http_load), ("tcp", tcp_load)):
        assert not load.errors, f"{name}: {load.summary()}"
        assert set(load.statuses) == {200}, f"{name}: {load.summary()}"
        assert load.done > 100, f"{name}: {load.summary()}"
    assert p.stats()["reloads"] >= 20
    assert b.requests > 0                        # the new table was used
    print(f"reloads: http {http_load.summary()}, tcp {tcp_load.summary()}")
    assert_no_leak(p, before, "50 reloads under load")
    a.close()
    b.close()


def test_drain_under_load_finishes_what_was_accepted(proxy_factory):
    slow = HttpUpstream(lambda req: Response(body=b"done " + req.target.encode(), delay=0.8))
    p = start(proxy_factory, [slow.addr], proxy={"workers": 2, "drain_timeout": "10s"})
    results = {}

    def client(i):
        try:
            with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
                s.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
                status, body, _, head = read_response(s)
                results[i] = (status, body, b"connection: close" in head.lower())
        except OSError as e:
            results[i] = repr(e)
    fast_load = Load(p.port, n=2, path="/fast")
    ts = [threading.Thread(target=client, args=(i,)) for i in range(40)]
    for t in ts:
        t.start()
    time.sleep(0.3)                              # all 40 are in flight at the upstream
    wait_for(lambda: len(slow.requests) >= 40, 5, what="the requests in flight")
    p.p.send_signal(signal.SIGTERM)
    for t in ts:
        t.join(15)
    fast_load.stop()
    assert p.p.wait(15) == 0, p.output()
    for i in range(40):
        assert results[i] == (200, b"done /%d" % i, True), (i, results[i])
    # The other clients' requests were answered before the drain, or their
    # connections were refused or closed idle: none is left hanging.
    assert not [e for e in fast_load.errors if "timeout" in e], fast_load.summary()
    slow.close()
