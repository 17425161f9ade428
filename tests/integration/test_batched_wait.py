"""The loop's batched wait (batched_wait, native/worker/wait.c): a busy
worker's io_uring_enter asks the kernel for a batch of completions (Linux
6.12's min_wait_usec) instead of returning at the first one, so that the
responses of an HTTP/2 client's streams share sends. It is counted
(uring_batched_waits), switched off by disable_features or by
batch_wait_us = 0, never used for a lone client's requests nor for
HTTP/1.1 (nothing to share a send), and the worker's timers still fire on
time with it on.

Real `uproxy run` processes and real clients (h2load, Python's h2, raw
sockets); the upstream is the suite's HTTP/1.1 server."""
import platform
import re
import shutil
import socket
import subprocess
import time

import pytest

from http_upstream import HttpUpstream, Response
from support import free_port

h2 = pytest.importorskip("h2", reason="Python's h2 (pyproject test extras) is not installed")
from test_upstream_receive import H2Client  # noqa: E402


def kernel_has_min_wait():
    """By the kernel's version, not by the proxy's own probe (whose answer
    is under test): io_uring_enter's min_wait_usec came with Linux 6.12."""
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (6, 12)


def need_batching():
    if not kernel_has_min_wait():
        pytest.skip("this kernel's io_uring_enter has no minimum wait (min_wait_usec, Linux 6.12)")
    if not shutil.which("h2load"):
        pytest.skip("h2load (Debian's nghttp2-client) is not installed")


def proxy(proxy_factory, up, env=None, keepalive=None, **keys):
    h2c, h1 = free_port(), free_port()
    listeners = [{"name": "h2", "bind": f"127.0.0.1:{h2c}", "mode": "http", "cluster": "c",
                  "http2": True},
                 {"name": "h1", "bind": f"127.0.0.1:{h1}", "mode": "http", "cluster": "c",
                  **({"keepalive_timeout": keepalive} if keepalive else {})}]
    p = proxy_factory(listeners, [{"name": "c", "servers": [f"127.0.0.1:{up.port}"]}],
                      proxy={"workers": 1, **keys}, env=env)
    p.h2c, p.h1 = h2c, h1
    return p


def burst(port, n=2000, seconds=None):
    """h2load with 100 streams on each of 2 connections: a client's data
    brings a hundred requests at once, so the worker's turns fill up."""
    args = ["h2load", "-c", "2", "-m", "100"] + (["-D", str(seconds)] if seconds else ["-n", str(n)])
    r = subprocess.run(args + [f"http://127.0.0.1:{port}/b"], capture_output=True, text=True,
                       timeout=60)
    assert re.search(r"\d+ succeeded, 0 failed", r.stdout), r.stdout[-600:]
    return r


def batched(p):
    return p.total("uring_batched_waits")


def test_busy_worker_batches_its_waits_and_the_switches_turn_it_off(proxy_factory):
    """Under a burst of streams the worker asks for batches (counted), and
    every request still succeeds; with the feature switched off, or with
    batch_wait_us = 0, it never does."""
    need_batching()
    up = HttpUpstream(lambda req: Response(body=b"x" * 64))
    on = proxy(proxy_factory, up)
    assert "batched_wait" in on.stats()["workers"][0]["features"]
    burst(on.h2c)
    assert batched(on) > 0
    assert batched(on) <= on.total("uring_enters")
    on.stop()
    for env, keys in (({"UPROXY_DISABLE": "batched_wait"}, {}), (None, {"batch_wait_us": 0})):
        off = proxy(proxy_factory, up, env=env, **keys)
        burst(off.h2c)
        assert off.total("requests") >= 2000
        assert batched(off) == 0, (env, keys)
        if env:
            assert "batched_wait" not in off.stats()["workers"][0]["features"]
        off.stop()
    up.close()


def test_a_lone_client_never_waits_for_a_batch(proxy_factory):
    """One request at a time (an HTTP/2 client, then HTTP/1.1): every turn
    holds a completion or two, so no wait asks for a batch and no request
    waits for one."""
    need_batching()
    up = HttpUpstream(lambda req: Response(body=b"x" * 64))
    p = proxy(proxy_factory, up)
    cl = H2Client(p.h2c)
    for _ in range(200):
        assert cl.get() == (200, b"x" * 64)
    cl.close()
    with socket.create_connection(("127.0.0.1", p.h1), timeout=10) as s:
        f = s.makefile("rb")
        for _ in range(100):
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert f.readline().startswith(b"HTTP/1.1 200")
            while f.readline() not in (b"\r\n", b""):
                pass
            assert f.read(64) == b"x" * 64
    assert p.total("requests") == 300
    assert batched(p) == 0
    up.close()


def test_http1_load_does_not_batch(proxy_factory):
    """64 HTTP/1.1 keep-alive connections at full speed (wrk) fill the
    worker's turns, but one response per connection at a time has nothing
    to share a send with: a batch would only make the worker sleep and wake
    once more (measured ~5% more CPU per request), so no wait asks for one."""
    need_batching()
    if not shutil.which("wrk"):
        pytest.skip("wrk is not installed")
    up = HttpUpstream(lambda req: Response(body=b"x" * 64))
    p = proxy(proxy_factory, up)
    r = subprocess.run(["wrk", "-t", "1", "-c", "64", "-d", "2", f"http://127.0.0.1:{p.h1}/w"],
                       capture_output=True, text=True, timeout=60)
    assert "requests in" in r.stdout, r.stdout + r.stderr
    done = p.total("requests")
    assert done > 500, r.stdout
    assert p.total("uring_cqes") / p.total("uring_enters") > 2, "the turns were not all single"
    assert batched(p) == 0
    up.close()


def idle_conn(port):
    """An HTTP/1.1 client connection, used once and then left idle."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"x" * 64 not in data:
        data += s.recv(4096)
    return s


def test_timers_fire_on_time_with_batching_on(proxy_factory):
    """An idle keep-alive client connection (keepalive_timeout 600ms) is
    closed on time while the worker batches its waits under a burst of
    HTTP/2 streams, and again right after such a burst."""
    need_batching()
    up = HttpUpstream(lambda req: Response(body=b"x" * 64))
    p = proxy(proxy_factory, up, keepalive="600ms")
    for during_load in (True, False):
        before = batched(p)
        if not during_load:
            burst(p.h2c, n=4000)
        load = None
        t0 = time.monotonic()
        s = idle_conn(p.h1)
        if during_load:
            load = subprocess.Popen(["h2load", "-c", "2", "-m", "100", "-D", "2",
                                     f"http://127.0.0.1:{p.h2c}/b"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        s.settimeout(5)
        assert s.recv(1) == b"", "the proxy closes the idle connection"
        took = time.monotonic() - t0
        s.close()
        if load:
            load.wait(30)
        assert batched(p) > before, "the worker batched its waits meanwhile"
        # 600 ms, the wheel's 100 ms tick, and a loaded shared machine's slack
        assert 0.55 <= took <= 1.0, (during_load, took)
    up.close()
