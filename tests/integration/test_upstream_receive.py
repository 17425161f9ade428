"""How an HTTP/1.1 upstream connection is read and written (issue 17, G8
in cleartext): an HTTP/2 stream's upstream keeps one multishot receive
armed, ended by the kernel after a buffer's worth of bytes (the feature
multishot_recv_limit, IORING_RECV_MSHOT_LIM), instead of one receive per
response; a small request head goes out as one piece with a plain send.
The pool's contract holds with the receive armed: an idle pooled
connection the server closes, or on which it sends bytes nobody asked
for, is noticed and closed, never handed to the next request.

Real `uproxy run` processes, real sockets; the HTTP/2 client is Python's
h2, the upstreams are raw sockets whose every byte the test decides."""
import socket
import threading
import time

import pytest

from http_upstream import HttpUpstream, Response
from support import Server, free_port, wait_for

h2 = pytest.importorskip("h2", reason="Python's h2 (pyproject test extras) is not installed")
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402


def h2c_proxy(proxy_factory, server, env=None):
    port = free_port()
    p = proxy_factory([{"name": "h2", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
                        "http2": True}],
                      [{"name": "c", "servers": [server]}], proxy={"workers": 1}, env=env)
    p.port = port
    return p


class H2Client:
    """One HTTP/2 connection (prior knowledge); requests one at a time."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.c.initiate_connection()
        self.s.sendall(self.c.data_to_send())
        self.sid = 1

    def get(self, path="/"):
        sid, self.sid = self.sid, self.sid + 2
        self.c.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":path", path),
                                  (":authority", "localhost")], end_stream=True)
        self.s.sendall(self.c.data_to_send())
        status, body = None, b""
        while True:
            data = self.s.recv(65536)
            assert data, "the proxy closed the connection"
            for ev in self.c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    body += ev.data
                    self.c.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    self.s.sendall(self.c.data_to_send())
                    return status, body
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    return None, body
            self.s.sendall(self.c.data_to_send())

    def close(self):
        self.s.close()


def worker(p):
    return p.stats()["workers"][0]


def kernel_has_limit():
    """By the kernel's version, not by the proxy's own probe (whose answer
    is what is under test): IORING_RECV_MSHOT_LIM came with Linux 6.17."""
    import platform
    import re
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (6, 17)


def test_h2_stream_upstream_keeps_one_receive_armed(proxy_factory):
    """200 requests of one HTTP/2 connection, one at a time, each on the
    same pooled upstream connection: with the kernel's byte limit, the
    receive armed once serves ~70 small responses (a few receive SQEs in
    all); switched off, one receive per response, as before."""
    if not kernel_has_limit():
        pytest.skip("this kernel has no multishot receive with a byte limit "
                    "(IORING_RECV_MSHOT_LIM, Linux 6.17)")
    up = HttpUpstream(lambda req: Response(body=b"x" * 64))
    n = 200
    per_req = {}
    for name, env in (("limit", None), ("off", {"UPROXY_DISABLE": "multishot_recv_limit"})):
        p = h2c_proxy(proxy_factory, f"127.0.0.1:{up.port}", env=env)
        if name == "limit":
            assert "multishot_recv_limit" in worker(p)["features"]
        cl = H2Client(p.port)
        assert cl.get() == (200, b"x" * 64)          # the pooled connection exists
        before = worker(p)["ops"].get("recv", 0)
        for _ in range(n):
            assert cl.get() == (200, b"x" * 64)
        per_req[name] = (worker(p)["ops"].get("recv", 0) - before) / n
        cl.close()
        assert p.total("pool_misses") == 1, "every request after the first reused the connection"
        p.stop()
    assert per_req["limit"] < 0.1, per_req
    assert per_req["off"] > 0.9, per_req
    up.close()


def serve_once_then(after):
    """An upstream that answers one request (64 B, keep-alive), then does
    `after(conn)` to the idle connection; later connections are answered
    normally, one request each, then closed by the proxy or the test."""
    def handle(c, srv):
        f = c.makefile("rb")
        first = srv.connections == 1
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = f.readline()
                if not line:
                    return None
                head += line
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            if first:
                time.sleep(0.3)                       # idle in the proxy's pool by now
                after(c)
                return None
    return handle


def _first_request_then(proxy_factory, servers, after, profile):
    """An h2c proxy (its upstream receive limited, or switched off) in
    front of a server that does `after` to the first connection once it
    idles in the pool; the first request answered."""
    srv = servers(serve_once_then(after))
    env = {"UPROXY_DISABLE": "multishot_recv_limit"} if profile == "off" else None
    p = h2c_proxy(proxy_factory, srv.addr, env=env)
    cl = H2Client(p.port)
    assert cl.get("/1") == (200, b"ok")
    return srv, p, cl


@pytest.mark.parametrize("profile", ["limit", "off"])
def test_idle_pooled_connection_closed_by_server_is_not_reused(proxy_factory, servers, profile):
    """The server closes an idle pooled connection that an HTTP/2 stream
    used: the armed receive sees the end, the pool drops it (pool_stale),
    and the next request goes on a new connection, with no error and no
    retry."""
    def close(c):
        c.shutdown(socket.SHUT_RDWR)
    srv, p, cl = _first_request_then(proxy_factory, servers, close, profile)
    wait_for(lambda: p.total("pool_stale") >= 1, 5, what="the closed idle connection noticed")
    assert p.total("pool_idle") == 0
    assert cl.get("/2") == (200, b"ok")
    assert srv.connections == 2
    assert p.total("retries") == 0
    cl.close()


@pytest.mark.parametrize("profile", ["limit", "off"])
def test_unsolicited_bytes_on_idle_pooled_connection_close_it(proxy_factory, servers, profile):
    """The server sends a response nobody asked for on an idle pooled
    connection: the armed receive takes it, the pool closes the connection
    (pool_stale), and the next request is answered by its own response on
    a new connection, never by the stray one."""
    closed = threading.Event()

    def stray(c):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")
        c.settimeout(10)
        try:
            while c.recv(4096):
                pass
        except OSError:
            pass
        closed.set()                                  # the proxy closed it
    srv, p, cl = _first_request_then(proxy_factory, servers, stray, profile)
    wait_for(lambda: p.total("pool_stale") >= 1, 5, what="the stray bytes noticed")
    assert closed.wait(5), "the proxy kept the connection that spoke out of turn"
    assert cl.get("/2") == (200, b"ok")
    assert srv.connections == 2
    cl.close()


def test_small_request_head_goes_out_in_one_plain_send(proxy_factory):
    """An HTTP/1.1 client's GETs: the upstream's head (kept lines, the
    proxy's added lines, the empty line) goes in one piece with a plain
    send, no sendmsg, and arrives as it did in pieces."""
    up = HttpUpstream(lambda req: Response(body=b"ok"))
    port = free_port()
    p = proxy_factory([{"name": "h", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}],
                      [{"name": "c", "servers": [f"127.0.0.1:{up.port}"]}], proxy={"workers": 1})
    n = 50
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")

    def one(i):
        s.sendall(f"GET /r{i} HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 10.0.0.9\r\n"
                  f"User-Agent: t\r\n\r\n".encode())
        status = f.readline()
        assert status.startswith(b"HTTP/1.1 200"), status
        length = 0
        while (line := f.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        assert f.read(length) == b"ok"
    one(0)
    ops0 = worker(p)["ops"]
    for i in range(1, n + 1):
        one(i)
    ops1 = worker(p)["ops"]
    s.close()
    assert ops1.get("sendmsg", 0) - ops0.get("sendmsg", 0) == 0, (ops0, ops1)
    assert ops1.get("send", 0) - ops0.get("send", 0) >= 2 * n    # the upstream's and the client's
    last = up.requests[-1]
    assert last.target == f"/r{n}"
    assert last.header("x-forwarded-for") == "10.0.0.9, 127.0.0.1"
    assert last.header("x-forwarded-host") == "example.test"
    assert last.head.endswith(b"\r\n\r\n") and last.head.count(b"\r\n\r\n") == 1
    up.close()
