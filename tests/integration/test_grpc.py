"""gRPC end to end through the proxy (issue 17): a grpcio client and a
grpcio server (h2c), the proxy between them with an HTTP/2 listener and a
cluster with protocol = "h2". The four kinds of call, over an h2c and a TLS
listener; a server's non-OK status and message reach the client
(trailers); grpc-timeout is honoured with DEADLINE_EXCEEDED from the
proxy; an upstream that is down gives a gRPC error, not a page.

No .proto files: the methods take and give raw bytes (generic handlers)."""
import socket
import subprocess
import time
from concurrent import futures

import pytest

from support import free_port

grpc = pytest.importorskip("grpc", reason="grpcio (pyproject test extras) is not installed")
h2 = pytest.importorskip("h2", reason="Python's h2 (pyproject test extras) is not installed")
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402

IDENT = (lambda b: b, lambda b: b)


def _unary(req, ctx):
    if req == b"fail":
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing here")
    if req.startswith(b"slow"):
        time.sleep(float(req[4:] or b"2"))
    return req[::-1]


def _server_stream(req, ctx):
    for i in range(int(req)):
        yield b"m%d" % i


def _slow_stream(req, ctx):
    yield b"first"
    time.sleep(2)
    yield b"late"


def _client_stream(reqs, ctx):
    return b"+".join(reqs)


def _bidi(reqs, ctx):
    for r in reqs:
        yield b"echo:" + r


@pytest.fixture(scope="module")
def grpc_server():
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler("t.T", {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, *IDENT),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream, *IDENT),
        "SlowStream": grpc.unary_stream_rpc_method_handler(_slow_stream, *IDENT),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream, *IDENT),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi, *IDENT),
    })
    srv.add_generic_rpc_handlers((handler,))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}"
    srv.stop(0)


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpcpki")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
                    "-days", "5", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost"], cwd=d, check=True, capture_output=True)
    return {"cert": str(d / "c.pem"), "key": str(d / "k.pem")}


def grpc_proxy(proxy_factory, server, tls=None, cluster=None):
    port = free_port()
    lst = {"name": "g", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "g",
           "http2": True}
    if tls:
        lst["tls"] = {"certificates": [tls]}
    cl = {"name": "g", "servers": [server], "protocol": "h2"}
    cl.update(cluster or {})
    p = proxy_factory([lst], [cl], proxy={"workers": 1})
    p.port = port
    return p


def stubs(channel):
    return (channel.unary_unary("/t.T/Unary", *IDENT),
            channel.unary_stream("/t.T/ServerStream", *IDENT),
            channel.stream_unary("/t.T/ClientStream", *IDENT),
            channel.stream_stream("/t.T/Bidi", *IDENT))


def all_kinds(channel):
    unary, sstream, cstream, bidi = stubs(channel)
    assert unary(b"hello", timeout=10) == b"olleh"
    assert list(sstream(b"5", timeout=10)) == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert cstream(iter([b"a", b"b", b"c"]), timeout=10) == b"a+b+c"
    # Full duplex: each message goes only after the echo of the one before
    # came back through the proxy, so nothing waits for the request's end.
    import queue
    q = queue.Queue()
    q.put(b"0")

    def requests():
        while True:
            m = q.get()
            if m is None:
                return
            yield m
    got = []
    for r in bidi(requests(), timeout=10):
        got.append(r)
        q.put(str(len(got)).encode() if len(got) < 5 else None)
    assert got == [b"echo:0", b"echo:1", b"echo:2", b"echo:3", b"echo:4"]


def test_grpc_all_kinds_h2c(proxy_factory, grpc_server):
    p = grpc_proxy(proxy_factory, grpc_server)
    with grpc.insecure_channel(f"127.0.0.1:{p.port}") as ch:
        all_kinds(ch)
        # A server's non-OK status and its message reach the client
        # (grpc-status / grpc-message trailers relayed).
        unary = stubs(ch)[0]
        with pytest.raises(grpc.RpcError) as e:
            unary(b"fail", timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert e.value.details() == "no such thing here"
    assert p.total("h2_up_streams") >= 5


def test_grpc_all_kinds_tls_listener(proxy_factory, grpc_server, cert):
    p = grpc_proxy(proxy_factory, grpc_server, tls=cert)
    with open(cert["cert"], "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    with grpc.secure_channel(f"127.0.0.1:{p.port}", creds,
                             options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
        all_kinds(ch)


def raw_call(port, path, body, extra=()):
    """One gRPC call by hand (Python's h2): the client sets no deadline of
    its own, so what comes back is the proxy's doing. Returns (headers,
    trailers, seconds)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", path),
                          (":authority", "localhost"), ("content-type", "application/grpc"),
                          ("te", "trailers"), *extra])
    msg = b"\x00" + len(body).to_bytes(4, "big") + body
    conn.send_data(1, msg, end_stream=True)
    s.sendall(conn.data_to_send())
    t0 = time.monotonic()
    headers, trailers, body_in = {}, {}, b""
    done = False
    while not done:
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                headers = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h2.events.DataReceived):
                body_in += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
        s.sendall(conn.data_to_send())
    s.close()
    raw_call.data = body_in
    return headers, trailers, time.monotonic() - t0


def test_grpc_timeout_honoured(proxy_factory, grpc_server):
    """grpc-timeout shorter than the route's: the proxy answers
    DEADLINE_EXCEEDED (grpc-status 4) when it passes, not the server."""
    p = grpc_proxy(proxy_factory, grpc_server, cluster={"response_timeout": "30s"})
    headers, trailers, took = raw_call(p.port, "/t.T/Unary", b"slow2", [("grpc-timeout", "300m")])
    assert headers.get(":status") == "200" and headers.get("content-type") == "application/grpc"
    assert headers.get("grpc-status") == "4", headers      # trailers-only
    assert 0.25 <= took < 1.5
    # Past the deadline with the response under way: its trailers say
    # DEADLINE_EXCEEDED after what was relayed, the rest is not.
    headers, trailers, took = raw_call(p.port, "/t.T/SlowStream", b"", [("grpc-timeout", "500m")])
    assert headers.get(":status") == "200" and "grpc-status" not in headers, headers
    assert b"first" in raw_call.data and b"late" not in raw_call.data
    assert trailers.get("grpc-status") == "4", trailers
    assert 0.4 <= took < 1.5
    # Without grpc-timeout the same call completes (the route's timeout is longer).
    headers, trailers, took = raw_call(p.port, "/t.T/Unary", b"slow0.2")
    assert trailers.get("grpc-status") == "0", (headers, trailers)


def test_grpc_unavailable_upstream_is_a_grpc_error(proxy_factory):
    """A dead upstream: the client gets UNAVAILABLE with the proxy's message,
    in a trailers-only gRPC response, not an HTML or text page."""
    dead = free_port()
    p = grpc_proxy(proxy_factory, f"127.0.0.1:{dead}", cluster={"max_attempts": 1})
    headers, trailers, _ = raw_call(p.port, "/t.T/Unary", b"x")
    assert headers.get(":status") == "200"
    assert headers.get("content-type") == "application/grpc"
    assert headers.get("grpc-status") == "14", headers
    assert headers.get("grpc-message", "").startswith("uproxy: 50"), headers
    with grpc.insecure_channel(f"127.0.0.1:{p.port}") as ch:
        with pytest.raises(grpc.RpcError) as e:
            stubs(ch)[0](b"x", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.value.details().startswith("uproxy: 50")
