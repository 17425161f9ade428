"""Sockets in the ring's file table (fixed_sockets, native/core/fixed.h):
a connection's receives, sends and polls name its slot of the table
(IOSQE_FIXED_FILE), so the kernel skips fget/fput on each. The slot is
filled by an IORING_OP_FILES_UPDATE request before the connection's first
op and emptied before its close, two requests per connection and none per
request; a slot left filled would keep the socket open after its close
(no FIN: the peer would wait forever). Switched off, no update is made.

Real `uproxy run` processes, h2load and raw sockets; the upstream is the
suite's HTTP/1.1 server."""
import re
import shutil
import socket
import subprocess
import time

import pytest

from http_upstream import HttpUpstream, Response
from support import free_port, wait_for

BODY = b"x" * 64


def proxy(proxy_factory, up, env=None, **keys):
    h2c, h1 = free_port(), free_port()
    listeners = [{"name": "h2", "bind": f"127.0.0.1:{h2c}", "mode": "http", "cluster": "c",
                  "http2": True},
                 {"name": "h1", "bind": f"127.0.0.1:{h1}", "mode": "http", "cluster": "c"}]
    p = proxy_factory(listeners, [{"name": "c", "servers": [f"127.0.0.1:{up.port}"]}],
                      proxy={"workers": 1, **keys}, env=env)
    p.h2c, p.h1 = h2c, h1
    return p


def has_fixed(p) -> bool:
    return "fixed_sockets" in p.stats()["workers"][0]["features"]


def updates(p) -> int:
    return sum(w["ops"].get("files_update", 0) for w in p.stats()["workers"])


def h2load(port, n, clients=4):
    r = subprocess.run(["h2load", "-c", str(clients), "-m", "10", "-n", str(n),
                        f"http://127.0.0.1:{port}/f"], capture_output=True, text=True, timeout=120)
    assert re.search(rf"{n} succeeded, 0 failed", r.stdout), r.stdout[-600:]


def close_wait(port) -> int:
    """Sockets of this listener's port in CLOSE_WAIT: the client closed,
    the proxy's side never did (its FIN was never sent)."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if int(parts[1].split(":")[1], 16) == port and parts[3] == "08":
                        n += 1
        except OSError:
            pass
    return n


def test_updates_are_per_connection_not_per_request(proxy_factory):
    """Twice the requests on as many connections make no more updates: two
    per connection (filled, then emptied), the pooled upstream ones filled
    once."""
    if not shutil.which("h2load"):
        pytest.skip("h2load (Debian's nghttp2-client) is not installed")
    up = HttpUpstream(lambda req: Response(body=BODY))
    p = proxy(proxy_factory, up)
    if not has_fixed(p):
        pytest.skip("fixed_sockets is off on this kernel: it needs a sparse file table with skipped completions (5.19) that lets a removed file go at once (6.13)")
    h2load(p.h2c, 2000)
    first = updates(p)
    assert 0 < first <= 2 * 4 + 2 * 40, first      # 4 clients and at most 40 upstream connections
    h2load(p.h2c, 4000)
    second = updates(p) - first
    assert second <= 2 * 4 + 10, (first, second)   # the upstreams are pooled: filled already
    assert p.total("requests") == 6000
    assert p.total("err_other") == 0              # no update failed
    up.close()


def test_a_closed_connection_is_closed(proxy_factory):
    """The proxy's side of a connection the client closed sends its FIN:
    its slot in the table was emptied before the close (otherwise the
    table's reference keeps the socket in CLOSE_WAIT). HTTP/1.1 and h2c,
    and an HTTP/1.1 request with Connection: close is answered and ended."""
    up = HttpUpstream(lambda req: Response(body=BODY))
    p = proxy(proxy_factory, up)
    if not has_fixed(p):
        pytest.skip("fixed_sockets is off on this kernel: it needs a sparse file table with skipped completions (5.19) that lets a removed file go at once (6.13)")
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", p.h1), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                d = s.recv(65536)             # EOF: the proxy closed its side
                if not d:
                    break
                data += d
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(BODY)
    socks = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", p.h1), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    for s in socks:
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.close()
    wait_for(lambda: close_wait(p.h1) == 0, 5, what="the proxy's sides of 20 closed clients to close")
    assert updates(p) >= 2 * 40
    up.close()


def test_switched_off_no_update(proxy_factory):
    if not shutil.which("h2load"):
        pytest.skip("h2load (Debian's nghttp2-client) is not installed")
    up = HttpUpstream(lambda req: Response(body=BODY))
    p = proxy(proxy_factory, up, env={"UPROXY_DISABLE": "fixed_sockets"})
    assert not has_fixed(p)
    h2load(p.h2c, 1000)
    assert updates(p) == 0
    assert p.total("requests") == 1000
    up.close()
